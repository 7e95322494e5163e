"""ONNX Runtime sessions for the verification, and the child process that probes a graph before it runs in-process.

ONNX Runtime can abort the whole process (SIGABRT, "terminate called without an active exception") instead of raising
on some graphs fed another sequence length than the one they were traced at (a GRU run step by step in a Python loop
over the sequence, traced at 3 items, aborts at 1). :mod:`export.verify` therefore first runs the graph once per input
shape it will use in a fresh child process (:func:`main`, run as ``python -c`` by ``export.verify._probe``): a crash
there is a failed case, not a dead ``export.onnx``.

This module imports numpy, onnx and onnxruntime only (lazily), never torch, so that the child starts in well under a
second. :func:`ort_session` and :func:`scores_session` (re-exported by :mod:`export.verify`) make the sessions of both
sides, so the child opens the graph exactly as the in-process verification does.

The child's protocol (``main([graph, folder])``): ``folder/calls.json`` lists the calls, each
``{"where": str, "arrays": [input names], "fill": {name: {"shape": [...], "value": v, "dtype": str}}}``; the arrays
are ``folder/feeds.npz``'s ``"<call index>.<name>"``, the filled inputs (the states, which can be large) are made in
the child with ``np.full``. The child prints, flushed, ``load`` / ``loaded`` around the session's creation and
``start i`` / ``done i`` around call ``i``; an error ONNX Runtime raises (``raised`` instead of ``loaded`` /
``done i``) is left to the in-process verification, which reports it as a failed case. It exits 0 unless it cannot
read its input; a crash shows as the signal that ended it, after the last ``start i``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Sequence

#: the files the parent writes in the child's private folder
CALLS_FILE = "calls.json"
FEEDS_FILE = "feeds.npz"


def ort_session(graph: str | bytes, threads: int = 1):
    """An ONNX Runtime CPU session (``threads`` intra-op threads) for a graph path or serialized bytes. It logs
    fatal errors only: a node that fails to run reaches the caller as the exception ONNX Runtime raises (which the
    verification reports in one line), not also as ONNX Runtime's own log line on stderr."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 4
    return ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])


def _with_scores_output(graph_path: str, load_external_data: bool = True):
    """The graph (``ModelProto``) with the internal ``scores`` tensor exposed as an output (for full-score
    comparison); ``load_external_data=False`` keeps the tensors of an external-data graph in their file."""
    import onnx

    mp = onnx.load(graph_path, load_external_data=load_external_data)
    if "scores" not in [o.name for o in mp.graph.output] and any("scores" in n.output for n in mp.graph.node):
        n_items = int(next(p.value for p in mp.metadata_props if p.key == "n_items"))
        mp.graph.output.append(onnx.helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["B", n_items]))
    return mp


def scores_session(graph_path: str, threads: int = 1):
    """An :func:`ort_session` of the graph with ``scores`` exposed. A graph with external data (past protobuf's
    2 GiB, so it cannot be passed as bytes) is given to ONNX Runtime as a sibling file that refers to the same
    tensor file, removed once the session is made."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    mp = _with_scores_output(graph_path, load_external_data=False)
    if not any(uses_external_data(t) for t in mp.graph.initializer):      # then it holds every tensor already
        return ort_session(mp.SerializeToString(), threads)
    folder = os.path.dirname(os.path.abspath(graph_path))
    fd, sibling = tempfile.mkstemp(prefix=".scores-", suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        onnx.save(mp, sibling)
        return ort_session(sibling, threads)
    finally:
        os.unlink(sibling)


def write_calls(folder: str, calls: Sequence[tuple[str, dict, dict]]) -> None:
    """Write the child's input into ``folder``: ``calls`` = ``(where, arrays {name: ndarray}, fill {name: (shape,
    value, dtype name)})`` per call, in order (see the module docstring)."""
    import numpy as np

    arrays, listed = {}, []
    for i, (where, arr, fill) in enumerate(calls):
        arrays.update({f"{i}.{name}": a for name, a in arr.items()})
        listed.append({"where": where, "arrays": list(arr),
                       "fill": {n: {"shape": [int(d) for d in s], "value": float(v), "dtype": str(dt)}
                                for n, (s, v, dt) in fill.items()}})
    np.savez(os.path.join(folder, FEEDS_FILE), **arrays)
    with open(os.path.join(folder, CALLS_FILE), "w", encoding="utf-8") as f:
        json.dump({"calls": listed}, f)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str]) -> int:
    """The child: ``argv = [graph path, folder]``; opens the graph as :func:`scores_session` does and runs each call
    of ``folder`` once, all outputs, printing its progress (see the module docstring). Returns 0."""
    import numpy as np

    graph, folder = argv
    with open(os.path.join(folder, CALLS_FILE), encoding="utf-8") as f:
        calls = json.load(f)["calls"]
    arrays = np.load(os.path.join(folder, FEEDS_FILE))
    _say("load")
    try:
        sess = scores_session(graph)
    except Exception:                       # ONNX Runtime's own error: the in-process verification reports it
        _say("raised")
        return 0
    _say("loaded")
    for i, call in enumerate(calls):
        feeds = {n: arrays[f"{i}.{n}"] for n in call["arrays"]}
        feeds.update({n: np.full(f["shape"], f["value"], dtype=f["dtype"]) for n, f in call["fill"].items()})
        _say(f"start {i}")
        try:
            sess.run(None, feeds)
        except Exception:                   # raised, not crashed: the in-process verification reports it
            _say(f"raised {i}")
            continue
        _say(f"done {i}")
    return 0


__all__ = ["ort_session", "scores_session", "write_calls", "main"]
