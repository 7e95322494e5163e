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
def redis_url(tmp_path_factory):
    """A real ``redis-server`` on a free loopback port for the session (no persistence), its URL; skipped with the
    reason where the server binary or the ``redis`` client package is missing."""
    import shutil
    import socket
    import subprocess
    import time

    pytest.importorskip("redis", reason="the redis client package is not installed (pip install -e '.[redis]')")
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed here (apt-get install redis-server); the Redis store tests need "
                    "a real server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    work = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    import redis

    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"redis-server did not start on port {port} (status {proc.poll()})")
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


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
