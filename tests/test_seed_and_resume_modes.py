"""File modes and pruning of what the zoo writes outside a command's own output (QA s47 h_ops findings 2 and 6).

* ``seed_hf_cache`` (``import zoo``) staged each snapshot with ``tempfile.mkdtemp`` (0700) and renamed it in: a shared
  ``HF_HOME`` was unreadable to every other user, whose ``AutoModel.from_pretrained("ssm-rec-zoo/...")`` then failed
  with "couldn't connect". Its folders now get the umask's mode; a 0700 copy an earlier release left is opened up.
* The seed never pruned: every change of a bundled card left another ~2 MB snapshot per model and organisation.
  Copies the seed wrote for earlier versions are removed by a later seed, once the ref has left them for an hour
  (a reader may still be loading one); a Hub download and anything the seed cannot tell as its own are kept.
* ``zoo.train``'s resume state: safetensors creates files 0600, so ``resume/*.safetensors`` were private while the
  rest of ``--out`` followed the umask.
"""

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from zoo import pretrained, train_state
from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel

HOUR = 3600.0
#: how far back the tests age a ref or a copy: past the seed's grace (an hour)
AGED = 2 * max(HOUR, getattr(pretrained, "SEED_PRUNE_AFTER_S", HOUR))


@pytest.fixture
def umask():
    """Set the process's umask for the test (``umask(0o022)``), restored afterwards."""
    before = os.umask(0o022)
    os.umask(before)

    def set_to(mask: int) -> None:
        os.umask(mask)

    yield set_to
    os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def tiny(seed: int = 0) -> Mamba4RecModel:
    torch.manual_seed(seed)
    model = Mamba4RecModel(Mamba4RecConfig(n_items=20, hidden_size=16, d_state=4)).eval()
    model.set_item_vocab(zoo.ItemVocab(list(range(100, 119))))
    return model


@pytest.fixture
def bundle(tmp_path, monkeypatch):
    """One bundled model ``tiny-m`` (the only one), and the cache folder ``tmp_path/hf`` (empty)."""
    folder = tmp_path / "bundle" / "tiny-m"
    tiny().save_pretrained(folder)
    monkeypatch.setattr(pretrained, "bundled_models", lambda: {"tiny-m": folder})
    return folder, tmp_path / "hf"


def repo_of(cache: Path, org: str = pretrained.HUB_ORG) -> Path:
    return cache / f"models--{org}--tiny-m"


def ref_of(repo: Path) -> str:
    return (repo / "refs" / "main").read_text()


def age(path: Path, seconds: float = AGED) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def new_version(folder: Path, seed: int) -> None:
    """The bundled card changed (a new release): other weights in the same folder."""
    tiny(seed).save_pretrained(folder)


# ------------------------------------------------------------------------------------------------ modes
@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_the_seeded_folders_get_the_umasks_mode(bundle, umask, mask):
    """Every folder the seed makes (the repo, snapshots/, refs/, the snapshot itself) has ``0o777 & ~umask``, every
    file ``0o666 & ~umask``, under both organisations: the snapshot was mkdtemp's 0700 whatever the umask."""
    folder, cache = bundle
    umask(mask)
    written = pretrained.seed_hf_cache(cache)
    assert sorted(written) == sorted(f"{o}/tiny-m" for o in (pretrained.HUB_ORG, *pretrained.PLACEHOLDER_ORGS))
    for org in (pretrained.HUB_ORG, *pretrained.PLACEHOLDER_ORGS):
        repo = repo_of(cache, org)
        snap = repo / "snapshots" / ref_of(repo)
        assert (snap / ".zoo-bundled").is_file()
        folders = [repo, *(p for p in repo.rglob("*") if p.is_dir())]
        files = [p for p in repo.rglob("*") if p.is_file()]
        assert snap in folders and len(files) > 3
        assert {str(p.relative_to(cache)): oct(mode(p)) for p in folders if mode(p) != 0o777 & ~mask} == {}
        assert {str(p.relative_to(cache)): oct(mode(p)) for p in files if mode(p) != 0o666 & ~mask} == {}
        assert not [p.name for p in repo.iterdir() if p.name.startswith(".zoo-seed-")]       # no stage left


def test_a_private_copy_an_earlier_release_seeded_is_opened_up(bundle, umask):
    """A cache seeded by the earlier release holds 0700 snapshots, and the copy is current, so nothing is written:
    the next seed gives it the umask's mode (it is this user's, with the seed's mark)."""
    folder, cache = bundle
    umask(0o022)
    pretrained.seed_hf_cache(cache)
    snap = repo_of(cache) / "snapshots" / ref_of(repo_of(cache))
    os.chmod(snap, 0o700)                                       # what mkdtemp left
    assert pretrained.seed_hf_cache(cache) == []                # current: nothing written
    assert mode(snap) == 0o755


def test_another_user_can_load_a_seeded_model_with_automodel(bundle, umask, tmp_path):
    """The reported failure itself: the cache seeded under umask 022, then handed to another user (chown to 65534),
    and ``AutoModel.from_pretrained(id, cache_dir=...)`` run offline by a process that does not own it (root without
    its capabilities, through ``setpriv``, as the QA report did) loads the model; with the 0700 snapshot it was
    "couldn't connect to 'https://huggingface.co'". Needs root and setpriv (else skipped, saying so)."""
    import shutil

    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root (to chown the cache) and setpriv (to drop root's capabilities)")
    folder, cache = bundle
    umask(0o022)
    pretrained.seed_hf_cache(cache)
    for p in [cache, *cache.rglob("*")]:
        os.chown(p, 65534, 65534, follow_symlinks=False)
    code = ("import sys; from transformers import AutoModel; import zoo; "
            f"m = AutoModel.from_pretrained('{pretrained.HUB_ORG}/tiny-m', cache_dir=sys.argv[1]); "
            "print(type(m).__name__)")
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ZOO_NO_CACHE_SEED": "1", "PYTHONPATH": root,
           "HF_HOME": str(tmp_path / "hf_home")}
    r = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-c", code, str(cache)],
                       env=env, capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "Mamba4RecModel"


# ------------------------------------------------------------------------------------------------ pruning
def test_a_copy_of_an_earlier_version_is_removed_once_the_ref_has_left_it_for_an_hour(bundle):
    """A new release (the bundled card changed): the seed writes the new copy and points the ref at it, but keeps the
    copy it has just left (a process may be loading it by its commit); a seed an hour later removes it. The current
    copy is whole and loads."""
    folder, cache = bundle
    pretrained.seed_hf_cache(cache)
    repo = repo_of(cache)
    first = ref_of(repo)
    new_version(folder, 1)
    assert f"{pretrained.HUB_ORG}/tiny-m" in pretrained.seed_hf_cache(cache)
    second = ref_of(repo)
    assert second != first
    assert sorted(os.listdir(repo / "snapshots")) == sorted([first, second])       # the one just left is kept
    assert pretrained.seed_hf_cache(cache) == []
    assert sorted(os.listdir(repo / "snapshots")) == sorted([first, second])       # still within the hour
    age(repo / "refs" / "main")
    age(repo / "snapshots" / first)
    assert pretrained.seed_hf_cache(cache) == []
    assert os.listdir(repo / "snapshots") == [second]
    assert not [p.name for p in repo.iterdir() if p.name.startswith(".zoo-seed-")]
    m = Mamba4RecModel.from_pretrained(str(repo / "snapshots" / second)).eval()
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(m(ids).logits, tiny(1)(ids).logits)
    for org in pretrained.PLACEHOLDER_ORGS:                     # the other organisation's repo keeps its own pace
        assert sorted(os.listdir(repo_of(cache, org) / "snapshots")) == sorted([first, second])


def test_earlier_copies_the_ref_left_long_ago_go_when_a_newer_one_is_written(bundle):
    """Three versions: when the third is written, the first (left by the ref over an hour ago) is removed at once;
    the second (the one the ref leaves now) is kept for a later seed."""
    folder, cache = bundle
    pretrained.seed_hf_cache(cache)
    repo = repo_of(cache)
    first = ref_of(repo)
    new_version(folder, 1)
    pretrained.seed_hf_cache(cache)
    second = ref_of(repo)
    age(repo / "refs" / "main")
    age(repo / "snapshots" / first)
    age(repo / "snapshots" / second)
    new_version(folder, 2)
    assert f"{pretrained.HUB_ORG}/tiny-m" in pretrained.seed_hf_cache(cache)
    third = ref_of(repo)
    assert sorted(os.listdir(repo / "snapshots")) == sorted([second, third])


def test_a_fresh_copy_is_kept_even_when_the_ref_is_old(bundle):
    """A copy made within the hour is kept though the ref is old: a seed of another version may have just written it
    and be about to point the ref at it."""
    folder, cache = bundle
    pretrained.seed_hf_cache(cache)
    repo = repo_of(cache)
    first = ref_of(repo)
    new_version(folder, 1)
    pretrained.seed_hf_cache(cache)
    age(repo / "refs" / "main")                                 # the ref is old, the left copy is not
    assert pretrained.seed_hf_cache(cache) == []
    assert first in os.listdir(repo / "snapshots")


def hub_download(repo: Path, rev: str, files: dict) -> Path:
    """A snapshot as huggingface_hub leaves it (files linked to blobs), no ref pointing at it (a pinned revision)."""
    import hashlib

    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    return snap


def seed_like_copy(repo: Path, version: Path, mark: bytes) -> Path:
    """A copy of the bundled folder ``version`` in ``repo/snapshots`` as the seed writes one (plain files, the mark),
    named by its content as the seed names it."""
    snap = repo / "snapshots" / pretrained._content_commit(version)
    snap.mkdir()
    for f in version.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (snap / ".zoo-bundled").write_bytes(mark)
    return snap


def test_only_the_seeds_own_copies_are_pruned(bundle, tmp_path):
    """Beside the seed's copies in a repo whose ref is the seed's, all older than the hour: a Hub download of a
    pinned revision (links, even one carrying a ``.zoo-bundled`` file), a folder of plain files with the mark named
    otherwise than by its content, a seed's copy changed by hand since, and one whose mark has another text are all
    kept; only the seed's own unchanged copy of the earlier version goes."""
    folder, cache = bundle
    pretrained.seed_hf_cache(cache)
    repo = repo_of(cache)
    first = ref_of(repo)
    files = {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}
    mark = (repo / "snapshots" / first / ".zoo-bundled").read_bytes()
    kept = [hub_download(repo, "a" * 40, {**files, ".zoo-bundled": mark})]
    plain = repo / "snapshots" / ("b" * 40)
    plain.mkdir()
    for name, data in {**files, ".zoo-bundled": mark}.items():
        (plain / name).write_bytes(data)
    kept.append(plain)
    versions = []
    for seed in (7, 8):
        versions.append(tmp_path / f"v{seed}")
        tiny(seed).save_pretrained(versions[-1])
    edited = seed_like_copy(repo, versions[0], mark)
    (edited / "config.json").write_text("{}")
    kept += [edited, seed_like_copy(repo, versions[1], b"mine\n")]
    new_version(folder, 1)
    pretrained.seed_hf_cache(cache)
    second = ref_of(repo)
    for p in [*kept, repo / "snapshots" / first, repo / "refs" / "main"]:
        age(p)
    assert pretrained.seed_hf_cache(cache) == []
    assert sorted(os.listdir(repo / "snapshots")) == sorted([second, *(p.name for p in kept)])


def test_a_repo_whose_ref_is_a_hub_download_is_never_pruned(bundle):
    """A repo the Hub filled (its ref points at a download) is left wholly alone, even old copies of the seed in it
    (the user downloaded the real model after an earlier seed): the seed does not touch that repo."""
    folder, cache = bundle
    pretrained.seed_hf_cache(cache)
    repo = repo_of(cache)
    first = ref_of(repo)
    files = {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}
    hub_download(repo, "d" * 40, files)
    (repo / "refs" / "main").write_text("d" * 40)
    for p in (repo / "snapshots" / first, repo / "refs" / "main"):
        age(p)
    new_version(folder, 1)
    assert f"{pretrained.HUB_ORG}/tiny-m" not in pretrained.seed_hf_cache(cache)
    assert sorted(os.listdir(repo / "snapshots")) == sorted([first, "d" * 40]) and ref_of(repo) == "d" * 40


def test_a_stage_left_by_a_killed_seed_is_removed_by_the_next_write(bundle):
    """A seed killed while copying left ``.zoo-seed-*`` (2 MB) beside the snapshots, which nothing removed: the next
    seed that writes there removes those of processes that are gone, never a live one's."""
    folder, cache = bundle
    pretrained.seed_hf_cache(cache)
    repo = repo_of(cache)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = repo / f".zoo-seed-{dead.pid}-abcd1234"
    live = repo / f".zoo-seed-{os.getpid()}-live5678"
    for p in (stale, live):
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"x" * 100)
    new_version(folder, 1)
    assert f"{pretrained.HUB_ORG}/tiny-m" in pretrained.seed_hf_cache(cache)
    assert not stale.exists() and live.exists()


# ------------------------------------------------------------------------------------------------ resume state
def resume_save(out: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    progress = {"epoch": 0, "best": 0.1, "best_epoch": 0, "bad": 0, "elapsed_s": 1.0, "stopped": None}
    train_state.save(out, model, opt, np.random.default_rng(0), progress, {"lr": 1e-3}, {"epochs": []})


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_the_resume_state_follows_the_umask(tmp_path, umask, mask):
    """``resume/model.safetensors`` and ``resume/optimizer.safetensors`` were 0600 whatever the umask (safetensors
    creates them so) while ``state.json``, the folders and the checkpoint follow it: a teammate could not resume or
    inspect a group-shared run. Saved twice (the second save swaps a new folder in); read back whole."""
    umask(mask)
    out = tmp_path / "run"
    out.mkdir()
    for _ in range(2):
        resume_save(out)
        folder = out / train_state.RESUME_DIR
        got = {p.name: oct(mode(p)) for p in folder.iterdir()}
        assert got == {n: oct(0o666 & ~mask) for n in ("model.safetensors", "optimizer.safetensors", "state.json")}
        assert mode(folder) == 0o777 & ~mask
    state, tensors = train_state.load(str(out / train_state.RESUME_DIR))
    assert state["progress"]["epoch"] == 0 and "rng.torch" in tensors
