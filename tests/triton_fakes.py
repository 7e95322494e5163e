"""Stand-ins for tritonclient's ``InferenceServerClient`` (``tritonclient.http`` and ``tritonclient.grpc``), shared by
the tests of ``export.triton_client`` (tests/test_triton.py, tests/test_user_vector_threads.py): a client that
reaches no server, serves one model's metadata and config, and answers each infer call with the test's function.

Imports numpy only at import time (tritonclient when a grpc client class is made or a client is installed), so that a
fresh process checking what the client library imports may use it too."""

import numpy as np

DTYPES = {"INT64": np.int64, "FP32": np.float32, "FP64": np.float64, "INT32": np.int32}


class FakeResult:
    """Stand-in for tritonclient's ``InferResult``: ``as_numpy(name)`` is ``answer[name]`` where ``answer`` is a
    dict of arrays, else ``answer(name)``."""

    def __init__(self, answer):
        self.answer = answer

    def as_numpy(self, name):
        return self.answer[name] if isinstance(self.answer, dict) else self.answer(name)


def sent_arrays(protocol: str, inputs) -> dict:
    """name -> the array each ``InferInput`` of ``inputs`` carries, read from its binary data (``_raw_data`` over
    http, ``_raw_content`` over grpc; an input sent otherwise fails here) in its datatype (:data:`DTYPES`) and
    shape."""
    raw = "_raw_content" if protocol == "grpc" else "_raw_data"
    return {i.name(): np.frombuffer(getattr(i, raw), DTYPES[i.datatype()]).reshape(i.shape()) for i in inputs}


def fake_client(protocol: str, inputs: dict, outputs: dict, config: dict, infer, close=None) -> type:
    """A stand-in class for ``tritonclient.<protocol>.InferenceServerClient`` serving one model, with that
    protocol's method signatures; its constructor takes ``(url, **kw)`` and connects nowhere.

    - ``get_model_metadata(name)``: the model's metadata, ``inputs`` and ``outputs`` (name -> (datatype, shape)),
      as tritonclient returns it: a dict over http, a ``ModelMetadataResponse`` over grpc (which also takes the
      per-call keywords, e.g. ``client_timeout``);
    - ``get_model_config(name)``: ``config`` over http; over grpc ``{"config": config}``, what
      ``get_model_config(name, as_json=True, ...)`` returns;
    - ``infer(model_name, inputs, outputs=None, **kw)``: ``infer(model_name, inputs, outputs, **kw)``'s value
      (a :class:`FakeResult`, or what it raises);
    - ``close()``: calls ``close()`` where given."""
    if protocol == "grpc":
        from tritonclient.grpc import service_pb2
    elif protocol != "http":
        raise ValueError(f"protocol {protocol!r}: http or grpc")

    class Client:
        def __init__(self, url, **kw):
            pass

        if protocol == "grpc":
            def get_model_metadata(self, name, **kw):
                io = lambda d: [service_pb2.ModelMetadataResponse.TensorMetadata(  # noqa: E731
                    name=n, datatype=t, shape=list(sh)) for n, (t, sh) in d.items()]
                return service_pb2.ModelMetadataResponse(name=name, inputs=io(inputs), outputs=io(outputs))

            def get_model_config(self, name, as_json=False, **kw):
                return {"config": config}
        else:
            def get_model_metadata(self, name):
                io = lambda d: [{"name": n, "datatype": t, "shape": list(s)} for n, (t, s) in d.items()]  # noqa: E731
                return {"name": name, "inputs": io(inputs), "outputs": io(outputs)}

            def get_model_config(self, name):
                return config

        def infer(self, model_name, ins, outputs=None, **kw):
            return infer(model_name, ins, outputs, **kw)

        def close(self):
            if close is not None:
                close()

    return Client


def install_client(monkeypatch, protocol: str, *args, **kw) -> type:
    """:func:`fake_client` ``(protocol, *args, **kw)`` put in place of ``tritonclient.<protocol>.
    InferenceServerClient`` for the test (``monkeypatch`` restores it); returns the class."""
    import importlib

    client = fake_client(protocol, *args, **kw)
    monkeypatch.setattr(importlib.import_module(f"tritonclient.{protocol}"), "InferenceServerClient", client)
    return client
