"""The writers' shared file-system logic (QA duplication review): Triton's model-folder swap under Ctrl-C, the stage
of ``save_pretrained`` (liveness, cleanup after a kill, the umask), the one streamed file digest, the one build lock,
the Triton generator's checks merged (the model folder hashed once per CLI run), and the python backend's timestamp
bound."""

from __future__ import annotations

import fcntl
import hashlib
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from export import triton as T  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: a small export.onnx export that ships with the checkout (a bundled card's)
EXPORT = ROOT / "hub_cards" / "mamba4rec-ml1m" / "onnx"


def _files(folder: pathlib.Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _dead_pid() -> int:
    """The pid of a process that has exited (no process runs under it now)."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                              check=True).stdout)


# ============================================================ export.triton: the model folder's swap under Ctrl-C
def _interrupt_after_moving_aside(monkeypatch, final: pathlib.Path, put_back_fails: bool = False) -> None:
    """``os.rename`` that raises KeyboardInterrupt right after the swap's first rename (``final`` moved aside) has
    succeeded -- what Python does when SIGINT arrives during that syscall -- and, with ``put_back_fails``, an OSError
    for the rename that would put the old folder back."""
    real = os.rename

    def rename(src, dst):
        if put_back_fails and pathlib.Path(dst) == final and pathlib.Path(src).name == "replaced":
            raise OSError(5, "Input/output error", str(src))
        real(src, dst)
        if pathlib.Path(src) == final:
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "rename", rename)


def test_triton_swap_interrupted_between_its_renames_keeps_the_old_folder(tmp_path, monkeypatch):
    """A Ctrl-C that landed after the old model folder was moved aside (the swap's first rename) and before the new
    one came in: the first rename sat outside the ``try`` that puts the old folder back, and the ``finally`` then
    deleted it -- the repository was left with neither folder. Both renames are now protected: the old folder is put
    back, and no staging folder is left."""
    final = tmp_path / "repo" / "m"
    final.mkdir(parents=True)
    (final / "config.pbtxt").write_text("OLD")
    _interrupt_after_moving_aside(monkeypatch, final)
    with pytest.raises(KeyboardInterrupt):
        with T._staged_model_folder(final) as new:
            (new / "config.pbtxt").write_text("NEW")
    monkeypatch.undo()
    assert _files(final) == {"config.pbtxt": b"OLD"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"] and sorted(os.listdir(final.parent)) == ["m"]


def test_triton_swap_whose_put_back_fails_keeps_the_old_folder_for_the_next_run(tmp_path, monkeypatch):
    """Were putting the old folder back to fail too, the ``finally`` deleted ``replaced/``, its only copy. The staging
    folder is now kept while the model folder is missing, and the next run (:func:`export.triton.remove_dead_stages`,
    once the writer's lock is free) puts the old folder back."""
    repo = tmp_path / "repo"
    final = repo / "m"
    final.mkdir(parents=True)
    (final / "config.pbtxt").write_text("OLD")
    _interrupt_after_moving_aside(monkeypatch, final, put_back_fails=True)
    with pytest.raises((OSError, KeyboardInterrupt)):    # the put-back's OSError (its cause: the interruption)
        with T._staged_model_folder(final) as new:
            (new / "config.pbtxt").write_text("NEW")
    monkeypatch.undo()
    assert not final.exists()
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".repo.export-triton-")]
    assert len(left) == 1 and _files(left[0] / "replaced") == {"config.pbtxt": b"OLD"}
    assert T.remove_dead_stages(repo) == [left[0].resolve()]
    assert _files(final) == {"config.pbtxt": b"OLD"} and not left[0].exists()


# ============================================================ save_pretrained: its stage and the files' mode
@pytest.fixture
def tiny_gru():
    from tiny_models import tiny

    return tiny("gru4rec")


def test_save_pretrained_removes_the_stages_of_killed_saves_only(tmp_path, tiny_gru, monkeypatch):
    """A save killed mid-way (SIGKILL, the OOM killer: zoo.train saves every new best epoch) left its hidden .save-*
    folder, a model's size, in the checkpoint folder for good. The stage now carries the saver's pid and is locked while
    the save runs; the next save into the folder removes those whose saver is gone (a dead pid, the lock free), never
    a live one's (a running pid, or a lock held by a saver on another machine sharing the folder); a stage named
    without a pid (before they carried one) once it is a day old."""
    from transformers import PreTrainedModel

    from zoo.cli import lock_folder

    out = tmp_path / "ckpt"
    out.mkdir()
    gone = _dead_pid()

    def stage(name):
        d = out / name
        d.mkdir()
        (d / "model.safetensors").write_bytes(bytes(100))
        return d

    killed = stage(f".save-{gone}-abcd1234")
    live_here = stage(f".save-{os.getpid()}-abcd1234")
    live_elsewhere = stage(f".save-{gone}-efgh5678")
    old, young = stage(".save-old1abcd"), stage(".save-new1abcd")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    seen = []
    real = PreTrainedModel.save_pretrained

    def spying(self, folder, *a, **k):                  # the save's own stage: pid-named and locked while it runs
        seen.append((pathlib.Path(folder).name, lock_folder(folder)))
        return real(self, folder, *a, **k)

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", spying)
    fd = os.open(live_elsewhere, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        tiny_gru.save_pretrained(out)
    finally:
        os.close(fd)
    hidden = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert hidden == sorted([live_here.name, live_elsewhere.name, young.name]), hidden
    assert not killed.exists() and not old.exists()
    assert len(seen) == 1 and seen[0][0].startswith(f".save-{os.getpid()}-") and seen[0][1] is None
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["config.json", "model.safetensors"]


def test_save_pretrained_files_follow_the_umask_and_keep_their_mode(tmp_path, tiny_gru):
    """save_pretrained chmod'ed every file 0644 whatever the umask: a user with umask 077 got world-readable weights,
    and a private 0600 checkpoint became readable by all at its next save. A new file now gets 0666 less the umask,
    and a file replaced keeps its mode, as zoo.cli's writers do."""
    def saved(out: pathlib.Path, umask: int | None = None) -> dict:
        """Save into ``out`` (under ``umask`` when given) -> the files' modes."""
        old = os.umask(umask) if umask is not None else None
        try:
            tiny_gru.save_pretrained(out)
        finally:
            if old is not None:
                os.umask(old)
        return {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}

    out = tmp_path / "ckpt"
    assert saved(out, 0o077) == {"config.json": 0o600, "model.safetensors": 0o600}
    (out / "config.json").chmod(0o640)
    assert saved(out) == {"config.json": 0o640, "model.safetensors": 0o600}   # umask 022 here: the old modes kept
    assert saved(tmp_path / "fresh", 0o027) == {"config.json": 0o640, "model.safetensors": 0o640}


# ============================================================ one streamed SHA-256
def test_file_sha256_is_hashlib_s_digest_read_in_blocks(tmp_path, monkeypatch):
    """export.triton's model-folder marks, export.trt's engine check and zoo.pretrained.weights_sha256 share one
    streamed digest (weights_sha256 read the whole model.safetensors into memory): the same hex digests as before,
    so the marks and records on disk stay valid."""
    from export.fsutil import file_sha256
    from zoo.pretrained import weights_sha256

    rng = np.random.default_rng(0)
    for size in (0, 1, 1 << 20, (1 << 20) + 7, 3 * (1 << 20) - 1):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        f = tmp_path / f"f{size}"
        f.write_bytes(data)
        want = hashlib.sha256(data).hexdigest()
        assert file_sha256(f) == file_sha256(str(f), block=4096) == want
    (tmp_path / "model.safetensors").write_bytes(data)

    def whole(self, *a, **k):
        raise AssertionError("read whole")

    monkeypatch.setattr(pathlib.Path, "read_bytes", whole)
    assert weights_sha256(tmp_path) == hashlib.sha256(data).hexdigest()
    assert weights_sha256(tmp_path / "f0") is None
    monkeypatch.undo()
    from export import trt

    assert T.file_sha256 is trt.file_sha256 is file_sha256


# ============================================================ one build lock
def test_both_build_locks_are_one_lock_with_each_caller_s_policy(tmp_path):
    """zoo.ops.selective_scan_cpu and export.build_plugins each had a ``_build_lock`` on ``.zoo-build.flock``: one now
    (export.fsutil.build_lock). The CPU kernel's raises when the folder cannot hold the lock file (is_available()
    turns it into its warning); the plugins' builds on without it."""
    from export import build_plugins as BP
    from export.fsutil import BUILD_LOCK_FILE, build_lock
    from zoo.ops import selective_scan_cpu as ssc

    def held_elsewhere():
        with open(tmp_path / BUILD_LOCK_FILE, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False

    for lock in (lambda: ssc._build_lock(str(tmp_path)), lambda: BP._build_lock(tmp_path),
                 lambda: build_lock(tmp_path)):
        assert not held_elsewhere()
        with lock():
            assert held_elsewhere()
    missing = tmp_path / "no" / "such"
    with pytest.raises(FileNotFoundError):
        with ssc._build_lock(str(missing)):
            pass
    with BP._build_lock(missing):
        pass
    with build_lock(missing, required=False) as held:
        assert held is False


# ============================================================ export.triton: the checks merged, one hash per run
@pytest.fixture
def export_dir():
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    pytest.importorskip("onnx")
    if not (EXPORT / "state_spec.json").is_file():
        pytest.skip(f"no export in {EXPORT}")
    return EXPORT


def _count_model_folder_hashes(monkeypatch) -> dict:
    """``{file name: times hashed}`` by the model-folder check (:func:`export.triton.foreign_model_files`)."""
    import traceback

    counts: dict = {}
    real = T.file_sha256

    def counting(p, *a, **k):
        if traceback.extract_stack()[-2].name != "<dictcomp>":          # the mark of the new folder: not a check
            counts[pathlib.Path(p).name] = counts.get(pathlib.Path(p).name, 0) + 1
        return real(p, *a, **k)

    monkeypatch.setattr(T, "file_sha256", counting)
    return counts


def test_the_triton_cli_hashes_the_old_model_folder_once(export_dir, tmp_path, monkeypatch, capsys):
    """``python -m export.triton --onnx`` hashed every file of the model folder it replaces twice: in the CLI's
    checks, then again in write_repository's, which repeated them. The checks are one function now
    (:func:`export.triton.check_repository`); the CLI hands write_repository the token of its check, made just
    before, so that the folder is hashed once, with or without --name."""
    repo = tmp_path / "r"
    for args in (["--name", "m"], []):
        assert T.main(["--onnx", str(export_dir), "--repo", str(repo), *args]) == 0
        counts = _count_model_folder_hashes(monkeypatch)
        assert T.main(["--onnx", str(export_dir), "--repo", str(repo), *args]) == 0
        monkeypatch.undo()
        assert counts and set(counts.values()) == {1}, counts
    capsys.readouterr()


def test_write_repository_checks_the_model_folder_itself_unless_handed_the_same_folder(export_dir, tmp_path):
    """The API refuses a model folder it did not write on its own; a token of an earlier check spares the hash only
    for the very folder checked (another folder in its place, or one with an entry added, is checked again)."""
    repo = tmp_path / "r"
    mdir = T.write_repository(export_dir, repo, name="m")
    token = T.check_repository(repo, "m")
    assert token is not None and T.check_repository(repo, None) is None
    os.rename(mdir, tmp_path / "aside")                          # (keeps its inode in use: the new folder's differs)
    mdir.mkdir()
    (mdir / "config.pbtxt").write_text('name: "mine"\n')
    with pytest.raises(FileExistsError, match="was not written by python -m export.triton"):
        T.write_repository(export_dir, repo, name="m", _checked=token)
    with pytest.raises(FileExistsError, match="was not written by python -m export.triton"):
        T.write_repository(export_dir, repo, name="m")
    assert _files(mdir) == {"config.pbtxt": b'name: "mine"\n'}
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match=f"--repo {tmp_path / 'afile'} is a file, not a folder"):
        T.check_repository(tmp_path / "afile", None, flags=T.ARG_FLAGS)
    with pytest.raises(ValueError, match="repository .*afile is a file, not a folder"):
        T.check_repository(tmp_path / "afile", "m")


# ============================================================ the python backend's timestamps: the 1e11 s bound
def test_the_python_backend_refuses_timestamps_in_milliseconds():
    """export.runtime, the Triton client and the models refuse timestamps beyond 1e11 s (milliseconds or nanoseconds
    since the epoch, which a time-aware graph would read as seconds); the python-backend model (model.py), which a
    raw tritonclient or curl request reaches directly, took them silently."""
    from export import timestamps
    from export import triton_server as S

    assert S.MAX_SECONDS == timestamps.MAX_SECONDS
    model = S.TritonPythonModel.__new__(S.TritonPythonModel)
    model.np = np
    ok = np.array([1.7e9, 1.7e9 + 60], np.float64)
    assert (model._check_ts(ok, 2) == ok).all()
    with pytest.raises(ValueError, match=r"^timestamps reach 1\.7e\+12 s, beyond 1e\+11 s .*milliseconds"):
        model._check_ts(ok * 1000, 2)
    window = np.array([0, 1.7e12, 1.7e12], np.float64)
    with pytest.raises(ValueError, match=r"pass Unix seconds \(row 1\)$"):
        model._check_ts(window, 3, np.array([0, 1, 1]), " (row 1)")
    assert (model._check_ts(np.array([0, 0, 1e11]), 3, np.array([0, 1, 1])) == [0, 0, 1e11]).all()


# ============================================================ export.triton: repositories of older generators
def _old_repository(repo: pathlib.Path, name: str) -> None:
    """A repository as the generator wrote it before the index README and the model folders' marks (f626793): a
    repository-level README.md that is the last model's README, model folders without README.md or mark."""
    mdir = repo / name
    (mdir / "1").mkdir(parents=True)
    (mdir / "config.pbtxt").write_text(f'name: "{name}"\n')
    (mdir / "1" / "model.onnx").write_bytes((EXPORT / "model.onnx").read_bytes())
    (mdir / "state_spec.json").write_text((EXPORT / "state_spec.json").read_text())
    (repo / "README.md").write_text(f"# Triton model repository: `{name}` (mamba4rec, step graph, backend "
                                    "onnxruntime, implicit state)\n\nGenerated by `python -m export.triton`. Top-10 "
                                    "internal item indices come back as `topk_ids`.\n")


def test_a_repository_of_an_older_generator_is_updated_without_force(tmp_path, capsys):
    """An older generator's repository (its one-model README at the top, model folders without README or mark) is
    the generator's own: a re-export and a new model are written without --force. A mark-less folder of the same
    shape in a repository whose README is not the generator's stays refused, naming the possible older version."""
    repo = tmp_path / "old"
    _old_repository(repo, "m4r_impl")
    assert T.main(["--onnx", str(EXPORT), "--repo", str(repo), "--name", "m4r_impl"]) == 0
    assert (repo / "m4r_impl" / T.MODEL_MARK).is_file() and T.README_MARK in (repo / "README.md").read_text()
    other = tmp_path / "other"
    _old_repository(other, "m4r_impl")
    assert T.main(["--onnx", str(EXPORT), "--repo", str(other), "--name", "brand_new"]) == 0   # a new model beside
    mine = tmp_path / "mine"
    _old_repository(mine, "x")
    (mine / "README.md").write_text("# my repository\n")                   # not the generator's: refused, both
    with pytest.raises(SystemExit) as e:
        T.main(["--onnx", str(EXPORT), "--repo", str(mine), "--name", "x"])
    assert e.value.code == 2 and "README.md: not written by python -m export.triton" in capsys.readouterr().err
    (mine / "README.md").unlink()
    with pytest.raises(FileExistsError, match=r"has no \.export_triton\.json: a folder written by hand .* older than"):
        T.write_repository(EXPORT, mine, name="x")
    (mine / "x" / "state_spec.json").write_text('{"format": "something-else"}')   # with the README, still not ours
    (mine / "README.md").write_text("Generated by `python -m export.triton`. Top-10\n")
    with pytest.raises(FileExistsError, match="was not written"):
        T.write_repository(EXPORT, mine, name="x")


def test_output_folder_lock_refuses_a_second_holder_and_leaves_no_file(tmp_path):
    """Two runs into one output folder: the second fails at once naming the option and the folder (it would mix its
    files with the first's); the lock is on the folder's own descriptor, so nothing is left in or beside it, and it
    dies with its holder (a SIGKILLed run blocks nobody)."""
    from export.fsutil import FolderBusy, output_folder_lock

    out = tmp_path / "out"
    out.mkdir()
    child = ("import sys, time\nfrom export.fsutil import output_folder_lock\n"
             "with output_folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])}
    p = subprocess.Popen([sys.executable, "-c", child, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy, match=rf"--model-out {out}: another run is writing into it now"):
            with output_folder_lock(out, "--model-out"):
                pytest.fail("a second holder got the lock")
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    with output_folder_lock(out) as held:                  # the killed holder's lock is gone
        assert held
    assert list(out.iterdir()) == [] and sorted(x.name for x in tmp_path.iterdir()) == ["out"]


# ============================================================ written_whole_path: temporary files of killed writers
def _writer(path: pathlib.Path) -> subprocess.Popen:
    """A process writing ``path`` through ``zoo.cli.written_whole``, stopped inside the block (its temporary file is
    there) once it has printed ``writing``."""
    child = ("import sys, time\nfrom zoo.cli import written_whole\n"
             "with written_whole(sys.argv[1]) as f:\n    f.write('half')\n    print('writing', flush=True)\n"
             "    time.sleep(300)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    p = subprocess.Popen([sys.executable, "-c", child, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "writing"
    return p


def test_the_next_write_removes_the_temporary_files_of_killed_writers_only(tmp_path):
    """A writer killed mid-write (SIGKILL, the OOM killer: nothing runs after those) left its hidden ``.NAME.XXXXXXXX``
    beside the output for good -- the whole of an embedding file. Its name now carries the writer's pid, and the
    file is locked while it is written: the next write of that path removes those of writers that are gone (a dead
    pid, the lock free), never a live writer's (its pid runs, or its lock is held: a writer in another container or
    on another machine sharing the folder), another path's, or any other file."""
    from zoo.cli import written_whole

    out = tmp_path / "out.json"
    out.write_text("old")
    killed, live = _writer(out), None
    try:
        live = _writer(out)
        killed.kill()
        killed.wait()
        left = {p.name for p in tmp_path.iterdir()} - {"out.json"}
        assert len(left) == 2, left                        # the two writers' temporary files
        (dead_temp,) = [n for n in left if n.startswith(f".out.json.writing-{killed.pid}-")]
        (live_temp,) = [n for n in left if n.startswith(f".out.json.writing-{live.pid}-")]
        gone = _dead_pid()
        keep = [f".out.json.writing-{gone}-elsewhr1",       # locked below: a live writer that this machine cannot see
                f".other.json.writing-{gone}-abcdefgh",     # another output's
                ".out.json.abcdefgh", ".out.json.bak", f".out.json.writing-{gone}-abcdefgh.mine",  # not the writer's
                f".out.json.writing-{10**20}-abcdefgh",    # no pid is that large: not a writer's (and no crash)
                f".out.json.writing-{gone}-link0000"]       # a symbolic link, not a file it made
        for name in keep[:-1]:
            (tmp_path / name).write_text("keep")
        (tmp_path / keep[-1]).symlink_to(tmp_path / ".out.json.bak")
        (tmp_path / f".out.json.writing-{gone}-dir00000").mkdir()     # a folder: kept too
        fd = os.open(tmp_path / keep[0], os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            with written_whole(out) as f:
                f.write("new")
        finally:
            os.close(fd)
        names = {p.name for p in tmp_path.iterdir()}
        assert names == {"out.json", live_temp, *keep, f".out.json.writing-{gone}-dir00000"}, names
        assert dead_temp not in names and out.read_text() == "new"
        assert all((tmp_path / n).read_text() == "keep" for n in keep[:-1])
    finally:
        for p in (killed, live):
            if p is not None:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                p.stdout.close()


# ============================================================ written_whole_folder: an interrupt after the swap
def _old_and_new(tmp_path) -> pathlib.Path:
    d = tmp_path / "d"
    d.mkdir()
    for name in ("model.safetensors", "item_vocab.json", "config.json"):
        (d / name).write_text(f"old {name}")
    return d


def test_an_interrupt_while_the_old_folder_is_removed_keeps_the_new_one_and_removes_the_old_to_the_end(
        tmp_path, monkeypatch):
    """A Ctrl-C (or SIGTERM) that arrived while ``written_whole_folder`` removed the replaced folder, after the new
    one was in place: the removal stopped half-way, leaving ``.d.replaced-*`` (a copy of the old weights) beside the
    new folder. The removal now goes on to the end; the interruption is raised after it (the write is complete, the
    command stops what it would do next)."""
    import shutil

    from zoo import cli

    d = _old_and_new(tmp_path)
    real = shutil.rmtree
    cut = []

    def rmtree(path, *a, **k):
        if ".d.replaced-" in str(path) and not cut:     # one file removed, then the Ctrl-C
            first = sorted(os.listdir(path))[0]
            os.remove(os.path.join(path, first))
            cut.append(first)
            raise KeyboardInterrupt
        return real(path, *a, **k)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        with cli.written_whole_folder(d) as stage:
            (pathlib.Path(stage) / "config.json").write_text("new")
            (pathlib.Path(stage) / "model.safetensors").write_text("new weights")
    assert cut and sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert _files(d) == {"config.json": b"new", "model.safetensors": b"new weights"}


def test_an_interrupt_right_after_the_swap_still_removes_the_old_folder(tmp_path, monkeypatch):
    """A Ctrl-C that landed just after the second rename (the new folder in place, the old one not yet removed) left
    ``.d.replaced-*`` behind: the old folder is removed, the new one stays, and the interruption is raised after."""
    from zoo import cli

    d = _old_and_new(tmp_path)
    real = os.replace

    def replace(src, dst):
        real(src, dst)
        if ".d.staged-" in str(src):
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with cli.written_whole_folder(d) as stage:
            (pathlib.Path(stage) / "config.json").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"] and _files(d) == {"config.json": b"new"}


def test_a_stage_named_with_a_pid_beyond_the_systems_range_is_left_and_staging_goes_on(tmp_path):
    """remove_stale_stages read a stage's pid with os.kill, which raises OverflowError (not an OSError) beyond a C int:
    a folder named so made every later staging in that folder fail. No writer of the project names a folder so: it is
    left (as remove_dead_temps leaves such a file), and staging goes on."""
    from zoo.cli import staging_folder

    odd = tmp_path / ".export-staging-99999999999999999999-x1"
    odd.mkdir()
    with staging_folder(tmp_path, ".export-staging-") as stage:
        assert stage.is_dir()
    assert odd.is_dir() and not stage.exists()


# ============================================================ written_whole_folder(copy_existing): links in the folder
def test_a_folder_copied_whole_refuses_a_link_leading_outside_it(tmp_path):
    """QA (untrusted artifacts, 9): the copy of ``zoo.hub card`` in place followed links, so ``notes -> a folder
    outside`` became real files in the card (which ``zoo.hub push`` would publish), and a link to a big tree copied
    all of it. A link leading outside the folder (a dangling one too) is refused now, before anything is made: one
    line naming the link and its target; the folder and what the link leads to stay as they were."""
    from zoo import cli

    d = _old_and_new(tmp_path)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "id_rsa").write_text("key")
    for name, target in (("notes", secret), ("gone", tmp_path / "nowhere")):
        (d / name).symlink_to(target)
        before = _files(d)
        with pytest.raises(ValueError) as e:                   # zoo.cli.LinkOutsideError
            with cli.written_whole_folder(d, copy_existing=True) as stage:
                (pathlib.Path(stage) / "config.json").write_text("new")
        assert str(e.value).startswith(f"{d / name} is a symbolic link to {target}, outside {d}; "), e.value
        assert "\n" not in str(e.value)
        assert _files(d) == before and (d / name).is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == [
            "d", "secret"]
        (d / name).unlink()
    assert _files(secret) == {"id_rsa": b"key"}


def test_a_folder_copied_whole_keeps_its_inside_links_as_links_a_loop_too(tmp_path):
    """Links that stay inside the folder are copied as links (a loop ``loop -> .`` made the copy fail with a
    shutil.Error listing 40 nested paths); an absolute one, or one through the folder's own name, is pointed at the
    same place inside the new folder (as copied, it would lead into the old folder, removed at the swap)."""
    from zoo import cli

    d = _old_and_new(tmp_path)
    (d / "sub").mkdir()
    (d / "sub" / "r.txt").write_text("r")
    links = {"loop": ".", "self": "self", "rel": "sub/r.txt", "abs": str(d / "sub"), "via_name": "../d/sub/r.txt"}
    for name, text in links.items():
        (d / name).symlink_to(text)
    with cli.written_whole_folder(d, copy_existing=True) as stage:
        (pathlib.Path(stage) / "config.json").write_text("new")
        assert (pathlib.Path(stage) / "abs" / "r.txt").resolve() == pathlib.Path(stage) / "sub" / "r.txt"
    assert {n: os.readlink(d / n) for n in links} == {**links, "abs": "sub", "via_name": "sub/r.txt"}
    assert (d / "config.json").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_a_folder_copied_whole_names_the_first_file_it_cannot_copy_in_one_line(tmp_path):
    """shutil.copytree's error lists every file it could not copy in one huge message; the copy's error names the
    first and counts the others (an OSError, the folder as it was, no stage left)."""
    from zoo import cli

    d = _old_and_new(tmp_path)
    for name in ("a.pipe", "b.pipe"):                  # named pipes: copytree refuses to copy them
        os.mkfifo(d / name)
    with pytest.raises(OSError) as e:
        with cli.written_whole_folder(d, copy_existing=True):
            pass
    assert str(e.value).startswith(f"cannot copy {d / 'a.pipe'} into the new {d}: ") and "(and 1 more)" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"] and (d / "config.json").read_text() == "old config.json"
