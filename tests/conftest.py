import os
import pathlib
import subprocess

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def data_dir() -> pathlib.Path:
    """Benchmark data folder: $ZOO_DATA_DIR, else ../shared/data beside the checkout."""
    return pathlib.Path(os.environ.get("ZOO_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data():
    """The benchmark data folder (:func:`data_dir`), the test skipped with the reason where it lacks
    ``ml-1m.5core.seq.gz``. A test that opens another file of it asks :func:`shared_file` for that file instead, so
    that a folder without it skips the test rather than failing it. Tests using either are marked ``data``."""
    d = data_dir()
    if not (d / "ml-1m.5core.seq.gz").exists():
        pytest.skip(f"benchmark data not found in {d} (set ZOO_DATA_DIR to the folder holding ml-1m.5core.seq.gz)")
    return d


def _shared_file(name: str) -> pathlib.Path:
    """``data_dir() / name``, the benchmark file a test opens; the test skipped, naming the file and the folder,
    where it is absent (the data folder may hold some of the files only)."""
    path = data_dir() / name
    if not path.exists():
        pytest.skip(f"benchmark data file {name} not found in {path.parent} (set ZOO_DATA_DIR to the folder "
                    "holding it)")
    return path


@pytest.fixture
def shared_file():
    """``shared_file("beauty.inter.gz")``: the path of that file of the benchmark data folder, or the test skipped
    with the reason where it is absent (:func:`_shared_file`)."""
    return _shared_file


@pytest.fixture(scope="session")
def redis_url():
    """A real ``redis-server`` on a free loopback port for the session (no persistence; ``bench/benchutil.py``'s
    ``redis_server``), its URL; skipped with the reason where the server binary or the ``redis`` client package is
    missing."""
    import importlib.util
    import shutil

    pytest.importorskip("redis", reason="the redis client package is not installed (pip install -e '.[redis]')")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed here (apt-get install redis-server); the Redis store tests need "
                    "a real server")
    spec = importlib.util.spec_from_file_location("_benchutil", ROOT / "bench" / "benchutil.py")
    benchutil = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchutil)
    with benchutil.redis_server(None) as url:
        yield url


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (``pytestmark = pytest.mark.usefixtures("one_thread")`` in a module): tiny
    models run much faster on one thread than oversubscribing a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _restore_threads():
    """Tests that call ``torch.set_num_threads`` (or CLIs with ``--threads``) leave the next test the count they
    found."""
    n = torch.get_num_threads()
    yield
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


@pytest.fixture
def recorded_popens(monkeypatch):
    """The list of every ``subprocess.Popen`` started during the test, in start order (``subprocess.Popen`` replaced,
    for the test, by a subclass that records each one it makes), so a test can check that what the code under test
    started has ended; any still running when the test ends is killed and reaped then."""
    started: list[subprocess.Popen] = []

    class Recorded(subprocess.Popen):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            started.append(self)

    monkeypatch.setattr(subprocess, "Popen", Recorded)
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


#: fixtures that read the benchmark data folder: a test using one (directly or through another fixture) is marked
#: ``data`` (pyproject.toml), so that ``-m data`` / ``-m "not data"`` select it
DATA_FIXTURES = ("shared_data", "shared_file")


@pytest.hookimpl(tryfirst=True)              # before pytest's own -m selection, which reads the markers added here
def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(f in getattr(item, "fixturenames", ()) for f in DATA_FIXTURES):
            item.add_marker(pytest.mark.data)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine); run on a GPU host to exercise it")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
