import os
import pathlib

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def data_dir() -> pathlib.Path:
    """Benchmark data folder: $ZOO_DATA_DIR, else ../shared/data beside the checkout."""
    return pathlib.Path(os.environ.get("ZOO_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data():
    d = data_dir()
    if not (d / "ml-1m.5core.seq.gz").exists():
        pytest.skip(f"benchmark data not found in {d} (set ZOO_DATA_DIR to the folder holding ml-1m.5core.seq.gz)")
    return d


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


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine); run on a GPU host to exercise it")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
