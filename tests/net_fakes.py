"""Stand-ins for the network, for the tests of ``zoo.pretrained``'s Hub probe (tests/test_modeling_utils.py,
tests/test_pretrained_cache.py): the probe is answered at once, nothing is sent, and each address it would connect
to is recorded."""


class FakeConnection:
    """What the stand-in ``socket.create_connection`` returns: a context manager that holds no socket."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def record_connections(monkeypatch, module) -> list:
    """``module.socket.create_connection`` replaced, for the test, by a stand-in taking ``(address, timeout=None)``
    as the real one does, recording ``address`` (a ``(host, port)`` tuple) and returning a :class:`FakeConnection`
    (a connection that succeeded). Returns the list of recorded addresses, in call order."""
    probes = []

    def create_connection(address, timeout=None):
        probes.append(address)
        return FakeConnection()

    monkeypatch.setattr(module.socket, "create_connection", create_connection)
    return probes
