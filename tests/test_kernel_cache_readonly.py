"""The fused CPU kernel's cache when it cannot be written (zoo/ops/selective_scan_cpu.py): a container image that
built the kernel once and runs with a read-only root, or as another user. A complete build (recorded in its folder,
``zoo-build-complete.json``) is loaded without writing anything and without the build lock; a library a build left
half-written is never loaded; a cache that cannot be written and holds no build says so in one line naming
``TORCH_EXTENSIONS_DIR``. Read-only is simulated in this process (every write under the cache raises ``EROFS``: root
ignores file modes) and, where ``unshare -m`` is permitted, by a real read-only bind mount in a child process."""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from zoo.ops import selective_scan_cpu as ssc

pytest.importorskip("ninja")

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "ZOO_CPU_KERNEL": "1"}

#: loads the kernel from $TORCH_EXTENSIONS_DIR with warnings as errors, and checks it against the reference on fresh
#: random inputs (forward, last state, gradients)
CHECK = textwrap.dedent("""
    import os, sys, warnings, torch
    warnings.simplefilter("error")
    from zoo.ops import selective_scan_cpu as ssc
    from zoo.ops.selective_scan import selective_scan_ref
    ok = ssc.is_available()
    print("available:", ok, ssc._ext.__file__ if ok else ssc.unavailable_reason())
    if ok:
        seed = int.from_bytes(os.urandom(4), "little")
        print("seed:", seed)
        g = torch.Generator().manual_seed(seed)
        b, e, L, n = 2, 5, 37, 4
        u, delta = torch.randn(b, e, L, generator=g), torch.rand(b, e, L, generator=g)
        A, D = -torch.rand(e, n, generator=g), torch.randn(e, generator=g)
        B, C = torch.randn(b, n, L, generator=g), torch.randn(b, n, L, generator=g)
        args = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D)]
        ref = [t.detach().double().requires_grad_() for t in args]
        out, last = ssc.selective_scan_cpu(*args, delta_softplus=True, return_last_state=True)
        rout, rlast = selective_scan_ref(*ref, delta_softplus=True, return_last_state=True)
        (out.sum() + last.sum()).backward()
        (rout.sum() + rlast.sum()).backward()
        tol = lambda r: 1e-5 * (1 + r.abs().max().item())              # float32 kernel vs float64 reference
        assert (out.double() - rout).abs().max().item() <= tol(rout)
        assert (last.double() - rlast).abs().max().item() <= tol(rlast)
        for a, r in zip(args, ref):
            assert (a.grad.double() - r.grad).abs().max().item() <= 10 * tol(r.grad)
        print("kernel == reference")
""")


def _run(env_dir, *prefix, timeout=900):
    return subprocess.run([*prefix, sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=timeout,
                          env={**ENV, "TORCH_EXTENSIONS_DIR": str(env_dir)}, cwd=env_dir)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A cache with the kernel built (once for the module) by a process that could write it."""
    root = tmp_path_factory.mktemp("kernel-cache")
    r = _run(root)
    assert r.returncode == 0 and "kernel == reference" in r.stdout, r.stdout + r.stderr
    (folder,) = [p for p in root.iterdir() if p.name.startswith(ssc._EXT_NAME + "_torch")]
    return root, folder


def _copy(built, dest) -> tuple[pathlib.Path, pathlib.Path]:
    root, folder = built
    shutil.copytree(root, dest, symlinks=True)
    return dest, dest / folder.name


@contextlib.contextmanager
def _read_only(root, monkeypatch):
    """Every write under ``root`` (open for writing, os.open with a write flag, mkdir, replace, remove) raises
    ``EROFS`` as a read-only mount does; yields the list of the writes tried."""
    root = os.path.realpath(root)
    tried = []

    def under(path) -> bool:
        try:
            p = os.path.realpath(os.fspath(path))
        except TypeError:                                   # a descriptor
            return False
        return p == root or p.startswith(root + os.sep)

    def refuse(what, path):
        tried.append((what, os.fspath(path)))
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    real_open, real_os_open = builtins.open, os.open

    def fake_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and under(file):
            refuse("open", file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC) and under(path):
            refuse("os.open", path)
        return real_os_open(path, flags, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", fake_open)
        m.setattr(os, "open", fake_os_open)
        for name in ("makedirs", "mkdir", "replace", "rename", "remove", "unlink"):
            real = getattr(os, name)

            def fake(path, *args, _real=real, _name=name, **kwargs):
                if under(path):
                    refuse(_name, path)
                return _real(path, *args, **kwargs)

            m.setattr(os, name, fake)
        yield tried


@pytest.fixture
def fresh(monkeypatch):
    """The module as in a new process: nothing loaded or tried yet (put back after the test)."""
    monkeypatch.setattr(ssc, "_ext", None)
    monkeypatch.setattr(ssc, "_tried", False)
    monkeypatch.setattr(ssc, "_error", None)
    monkeypatch.setenv("ZOO_CPU_KERNEL", "1")
    monkeypatch.delenv("CXX", raising=False)
    return ssc


def test_a_build_records_itself_complete_readable_by_every_user(built):
    """The record names the library and its SHA-256, and what it was built from; it has the umask's mode (a cache
    built by root at an image's build is read by the user the container runs as)."""
    from export.fsutil import file_sha256

    _, folder = built
    record = json.loads((folder / ssc._COMPLETE_FILE).read_text())
    assert record["library"] == ssc._EXT_NAME + ".so"
    assert record["sha256"] == file_sha256(folder / record["library"])
    assert record["key"] == ssc._build_key(*ssc._VARIANTS[0])
    umask = os.umask(0)
    os.umask(umask)
    assert (folder / ssc._COMPLETE_FILE).stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_complete_build_loads_from_a_read_only_cache_without_writing(built, tmp_path, monkeypatch, fresh):
    """An already built kernel in a cache that cannot be written fell back to the reference scan (~20x slower):
    every load created the folder's flock file first (``Read-only file system: .../.zoo-build.flock``). It is loaded
    now without trying a single write, and computes what the reference computes."""
    root, folder = _copy(built, tmp_path / "ro")
    (folder / ".zoo-build.flock").unlink()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(root))
    imported, real_import = [], ssc._import_library
    # the library imported is named by the path asked for: a process that already imported the extension (an earlier
    # test) gets that same module back from Python for the same module name, whatever the path
    monkeypatch.setattr(ssc, "_import_library", lambda path: imported.append(path) or real_import(path))
    with _read_only(root, monkeypatch) as tried:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert fresh.is_available(), fresh.unavailable_reason()
    assert tried == []
    assert imported == [str(folder / (ssc._EXT_NAME + ".so"))] and fresh._ext is not None
    assert not (folder / ".zoo-build.flock").exists()                 # no lock taken
    g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    u, delta = torch.randn(2, 3, 11, generator=g), torch.rand(2, 3, 11, generator=g)
    A, B, C = -torch.rand(3, 4, generator=g), torch.randn(2, 4, 11, generator=g), torch.randn(2, 4, 11, generator=g)
    from zoo.ops.selective_scan import selective_scan_ref

    torch.testing.assert_close(fresh.selective_scan_cpu(u, delta, A, B, C, delta_softplus=True),
                               selective_scan_ref(u, delta, A, B, C, delta_softplus=True), atol=1e-5, rtol=1e-5)


def test_a_read_only_cache_without_a_build_says_how_to_fix_it_in_one_line(tmp_path, monkeypatch, fresh):
    """No build and no way to make one: one warning line naming the folder, the reason and the fix (a writable
    ``TORCH_EXTENSIONS_DIR``) -- not the library-internal "falling back is up to the caller" -- nothing written."""
    root = tmp_path / "empty"
    root.mkdir()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(root))
    with _read_only(root, monkeypatch):
        with pytest.raises(ssc.KernelCacheError) as e:
            fresh.load_extension()
        with pytest.warns(RuntimeWarning) as caught:
            assert not fresh.is_available()
    (line,) = [str(w.message) for w in caught]
    assert "\n" not in line and str(e.value) in line and "TORCH_EXTENSIONS_DIR" in line, line
    assert f"the kernel cache {root}{os.sep}{ssc._EXT_NAME}_torch" in line and "Read-only file system" in line, line
    assert "runs the pure-PyTorch reference instead" in line and "compiler" not in line, line
    assert list(root.iterdir()) == []


def test_a_library_changed_after_its_build_is_never_loaded_and_is_relinked(built, tmp_path, monkeypatch, fresh):
    """A library cut short (a build killed mid-link, a full disk) or replaced does not match its record: a read-only
    cache does not load it (it says it holds no complete build); a writable one relinks it under the lock, and
    records the new one."""
    from export.fsutil import file_sha256

    root, folder = _copy(built, tmp_path / "cut")
    lib = folder / (ssc._EXT_NAME + ".so")
    with open(lib, "r+b") as f:
        f.truncate(lib.stat().st_size // 3)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(root))
    with _read_only(root, monkeypatch):
        with pytest.raises(ssc.KernelCacheError, match="holds no complete build"):
            fresh.load_extension()
    record = json.loads((folder / ssc._COMPLETE_FILE).read_text())
    record["key"]["source_sha256"] = "0" * 64                  # a record of another source: not this build's
    (folder / ssc._COMPLETE_FILE).write_text(json.dumps(record))
    shutil.copy2(built[1] / lib.name, lib)                      # the library whole again, its record another's
    with _read_only(root, monkeypatch):
        with pytest.raises(ssc.KernelCacheError):
            fresh.load_extension()
    with open(lib, "r+b") as f:
        f.truncate(lib.stat().st_size // 3)
    record["key"] = ssc._build_key(*ssc._VARIANTS[0])
    (folder / ssc._COMPLETE_FILE).write_text(json.dumps(record))
    r = _run(root)                                              # writable: relinked, loaded, recorded
    assert r.returncode == 0 and "kernel == reference" in r.stdout, r.stdout + r.stderr
    assert lib.stat().st_size == (built[1] / lib.name).stat().st_size
    record = json.loads((folder / ssc._COMPLETE_FILE).read_text())
    assert record["sha256"] == file_sha256(lib)


def test_the_no_openmp_marker_is_read_without_writing(built, tmp_path, monkeypatch, fresh):
    """The no-OpenMP marker (a compiler that failed the OpenMP build) is read from a read-only cache without
    creating anything, and then only the build without OpenMP is looked for there."""
    root, folder = _copy(built, tmp_path / "noomp")
    (folder / ssc._NO_OPENMP_FILE).write_text("c++\n")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(root))
    looked = []
    monkeypatch.setattr(ssc, "_load_complete", lambda build_dir, key: looked.append((build_dir, key["name"])))
    with _read_only(root, monkeypatch) as tried:
        assert fresh._openmp_refused()
        with pytest.raises(ssc.KernelCacheError):
            fresh.load_extension()
    name = ssc._VARIANTS[1][0]
    assert looked == [(ssc._build_dir(name, create=False), name)], looked
    assert [what for what, _ in tried] == ["makedirs"], tried          # the build, refused: nothing else tried
    assert not os.path.exists(ssc._build_dir(name, create=False))


def _unshare_ro(paths):
    """The command prefix that runs a command with ``paths`` remounted read-only in a private mount namespace (what
    /tmp/s47/h_ops/ro.sh did), or None and the reason it cannot run here."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return None, "unshare/mount not installed"
    script = ('while [ "$1" != -- ]; do mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" || exit 99; '
              'shift; done; shift; exec "$@"')
    prefix = ["unshare", "-m", "sh", "-c", script, "ro", *map(str, paths), "--"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return None, f"unshare -m with a read-only bind mount is not permitted here ({probe.stderr.strip()})"
    return prefix, None


def test_a_real_read_only_mount_serves_the_built_kernel(built, tmp_path):
    """As a container with a read-only root runs it (``unshare -m`` + a read-only bind mount, as root): the built
    kernel is available under ``-W error`` and equals the reference; an empty read-only cache gives the one line."""
    root, folder = _copy(built, tmp_path / "mnt")
    empty = tmp_path / "empty"
    empty.mkdir()
    prefix, why = _unshare_ro([root, empty])
    if prefix is None:
        print(f"SKIPPED: {why}")
        pytest.skip(why)
    probe = subprocess.run([*prefix, "sh", "-c", f"touch {root}/x"], capture_output=True, text=True)
    assert probe.returncode != 0 and "Read-only" in probe.stderr, probe
    before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    r = subprocess.run([*prefix, sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=600,
                       env={**ENV, "TORCH_EXTENSIONS_DIR": str(root)}, cwd=tmp_path)
    assert r.returncode == 0 and "kernel == reference" in r.stdout, r.stdout + r.stderr
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == before
    r = subprocess.run([*prefix, sys.executable, "-W", "default", "-c",
                        "from zoo.ops import selective_scan_cpu as s; print(s.is_available())"],
                       capture_output=True, text=True, timeout=600, env={**ENV, "TORCH_EXTENSIONS_DIR": str(empty)},
                       cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stdout + r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if "RuntimeWarning" in ln]
    assert "TORCH_EXTENSIONS_DIR" in line and "Read-only file system" in line, r.stderr


def test_each_build_gets_fresh_flag_lists(tmp_path, monkeypatch, fresh):
    """torch's ``load`` appends its own link flags (``-L.../torch/lib -lc10 ...``) to the ``extra_ldflags`` list it is
    given: handed the variant's own list, a second build in the same process (after a failed variant, or a test
    resetting the module) got those flags twice and a record key that no other process computes, so a complete
    build was never found and the kernel was relinked. Each call gets fresh lists, and the variants stay as written."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    given = []

    def fake_load(name, sources, extra_cflags, extra_ldflags, build_directory, verbose):
        given.append((list(extra_cflags), list(extra_ldflags)))
        extra_cflags.append("-DAPPENDED_BY_TORCH")
        extra_ldflags.append("-lappended_by_torch")      # what torch.utils.cpp_extension does to the list given
        return object()

    import torch.utils.cpp_extension as cpp

    monkeypatch.setattr(cpp, "load", fake_load)
    monkeypatch.setattr(ssc, "_record_complete", lambda *a: None)
    variant = ssc._VARIANTS[0]
    before = [list(v) if not isinstance(v, str) else v for v in variant]
    for _ in range(2):
        ssc._build(*variant, ssc._build_key(*variant), False)
    assert given[0] == given[1] == (before[1], before[2])
    assert [list(v) if not isinstance(v, str) else v for v in ssc._VARIANTS[0]] == before
