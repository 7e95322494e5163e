"""A full disk for the tests of writers that must leave nothing cut short (export.onnx's card README, export.trt's
report and engine)."""
import os


def full_disk(monkeypatch, name: str) -> None:
    """Each file opened for writing whose name holds ``name`` takes half of a write, then fails as a full disk does
    (both ``open`` and pathlib's ``io.open``)."""
    import builtins
    import errno
    import io

    real = io.open

    class Full:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            self._f.write(data[:len(data) // 2])
            self._f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, attr):
            return getattr(self._f, attr)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def opened(file, mode="r", *a, **k):
        f = real(file, mode, *a, **k)
        named = isinstance(file, (str, os.PathLike)) and name in os.path.basename(os.fspath(file))
        return Full(f) if named and any(c in mode for c in "wax") else f

    monkeypatch.setattr(io, "open", opened)
    monkeypatch.setattr(builtins, "open", opened)
