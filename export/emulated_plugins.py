"""An exported graph run with its scan nodes executed by the zoo's TensorRT plugin code, on a CPU, without TensorRT.

A TensorRT engine built from a zoo graph binds every ``ai.ssmrec.zoo`` scan node (``SelectiveScan``, ``SSDScan``,
``LRUScan``) to our plugin: the plugin receives the node's inputs in the node's order, with the node's attributes as
its fields, and launches our CUDA kernel. Engines cannot be built here (no TensorRT builder, no GPU), but everything
the plugin contributes can run:

* the plugin classes and the CUDA kernel sources, compiled for the CPU against the SIMT emulator of ``plugins/emu/``
  and the TensorRT headers (``libzoo_trt_plugins_emu.so``, :func:`export.build_plugins.build_emulated`);
* the graph's other nodes by ONNX's reference evaluator (``onnx.reference``), with every scan node handed to the
  plugin's ``enqueue`` (:class:`EmulatedPluginRunner`), instead of the model-local ONNX function ONNX Runtime inlines.

:func:`export.verify.verify_export` accepts the runner like an ONNX Runtime session, so the same verification as
``export.onnx``'s (priming, many steps, states, top-k) compares "the graph as TensorRT will execute our part of it"
with PyTorch. What stays unverified is TensorRT's own part: its kernels for the standard ops, precision choices and
fusions, and the GPU.

    from export.emulated_plugins import EmulatedPluginRunner
    from export.verify import verify_export
    report = verify_export(model, "model.onnx", spec, runner=EmulatedPluginRunner("model.onnx"),
                           prime_len=20, n_steps=10)
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from . import plugin_spec as ps

#: numpy dtype -> the kernels' ZooDType code (plugins/common/zooScanKernels.h)
ZOO_DTYPE = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}   # numpy has no bfloat16: those graphs stay ORT's
_MAX_DIMS = 8
_LIBS: dict[str, ctypes.CDLL] = {}


class PluginError(RuntimeError):
    """A plugin refused its inputs (creator not found, a failed enqueue, a kernel launch error)."""


def load(path: str | os.PathLike | None = None) -> ctypes.CDLL:
    """The emulated plugin library (built with ``build_emulated(plugins=True)`` when ``path`` is None; needs a C++
    compiler and the TensorRT headers, :class:`export.build_plugins.BuildError` otherwise), loaded once."""
    if path is None:
        from .build_plugins import build_emulated

        path = build_emulated(plugins=True)
    key = str(Path(path).resolve())
    if key not in _LIBS:
        _LIBS[key] = prepare(ctypes.CDLL(key), path)
    return _LIBS[key]


def prepare(lib: ctypes.CDLL, path=None) -> ctypes.CDLL:
    """Checks that ``lib`` is an emulated plugin library and declares the C functions used here."""
    if not hasattr(lib, "zoo_emu_plugin_enqueue"):
        raise PluginError(f"{path or lib._name} is not an emulated plugin library (no zoo_emu_plugin_enqueue; build "
                          "it with export.build_plugins.build_emulated(plugins=True))")
    lib.zoo_emu_last_error.restype = ctypes.c_char_p
    lib.zoo_emu_last_error.argtypes = []
    lib.zoo_emu_reset_error.argtypes = []
    lib.zoo_emu_plugin_enqueue.restype = ctypes.c_int32
    return lib


def enqueue(lib: ctypes.CDLL, op_type: str, fields: dict, inputs: Sequence[tuple[int, Sequence[int], int]],
            outputs: Sequence[tuple[int, Sequence[int], int]]) -> None:
    """Creates the plugin ``op_type`` from ``fields`` (int32 values) through the library's ``getCreators`` and runs its
    ``enqueue``; each input/output is ``(host address, shape, ZooDType code)`` in the spec's order (an output may
    share an input's address: aliased state). Raises :class:`PluginError` with the reason."""
    I32, I64, PP = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p

    def arrays(ts):
        if any(len(shape) > _MAX_DIMS for _, shape, _ in ts):
            raise PluginError(f"{op_type}: a tensor has more than {_MAX_DIMS} dims")
        dims = (I64 * (_MAX_DIMS * max(1, len(ts))))()
        for i, (_, shape, _) in enumerate(ts):
            for j, v in enumerate(shape):
                dims[_MAX_DIMS * i + j] = int(v)
        return ((I32 * max(1, len(ts)))(*[c for _, _, c in ts]), (I32 * max(1, len(ts)))(*[len(s) for _, s, _ in ts]),
                dims, (PP * max(1, len(ts)))(*[a for a, _, _ in ts]))

    names = [str(n).encode() for n in fields]
    err = ctypes.create_string_buffer(256)
    lib.zoo_emu_reset_error()
    rc = lib.zoo_emu_plugin_enqueue(
        op_type.encode(), len(names), (ctypes.c_char_p * max(1, len(names)))(*names),
        (I32 * max(1, len(names)))(*[int(v) for v in fields.values()]), len(inputs), *arrays(inputs), len(outputs),
        *arrays(outputs), err, len(err))
    if rc != 0:
        launch = lib.zoo_emu_last_error().decode()
        raise PluginError(f"{op_type} plugin enqueue: {err.value.decode()} (status {rc})"
                          + (f"; kernel: {launch}" if launch else ""))


def activations() -> dict[str, set[str]]:
    """Per op, the I/O names that take the activation dtype (all others are float32): the table the plugins' type
    checks are generated from (``plugins/gen_spec_header.py``)."""
    global _ACTS
    if _ACTS is None:
        import importlib.util

        from .build_plugins import PLUGINS_DIR

        spec = importlib.util.spec_from_file_location("_zoo_gen_spec_header", PLUGINS_DIR / "gen_spec_header.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _ACTS = {k: set(v) for k, v in mod.ACTIVATIONS.items()}
    return _ACTS


_ACTS: dict[str, set[str]] | None = None


def run_op(lib: ctypes.CDLL, op_type: str, fields: dict, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """One scan node through the plugin on numpy arrays (in the spec's input order); returns its outputs. Output
    shapes and dtypes follow the spec: activations take the first input's dtype, states are float32."""
    spec = ps.SCAN_OPS[op_type]
    if len(inputs) != len(spec.inputs) or any(x is None for x in inputs):
        given = len([x for x in inputs if x is not None])
        raise PluginError(f"{op_type} needs its {len(spec.inputs)} inputs {spec.input_names} (TensorRT hands the "
                          f"plugin every input of the node); the node gives {given}")
    arrs = {t.name: np.ascontiguousarray(x) for t, x in zip(spec.inputs, inputs)}
    act = arrs[spec.inputs[0].name].dtype
    if act not in ZOO_DTYPE:
        raise PluginError(f"{op_type}: activation dtype {act} (the plugins take float32, float16 and bfloat16; "
                          "numpy, and so this runner, has no bfloat16)")
    acts = activations()[op_type]
    outs = []
    for t in spec.outputs:
        like = {"y": spec.inputs[0].name, "h": "h0", "h_re": "u_re", "h_im": "u_im"}[t.name]
        outs.append(np.empty(arrs[like].shape, dtype=act if t.name in acts else np.float32))
    for t in spec.inputs:
        want = act if t.name in acts else np.float32
        if arrs[t.name].dtype != want:
            raise PluginError(f"{op_type}: input {t.name!r} is {arrs[t.name].dtype}, the plugin takes {np.dtype(want)}")

    def desc(a):
        return a.ctypes.data, a.shape, ZOO_DTYPE[a.dtype]

    enqueue(lib, op_type, fields, [desc(arrs[t.name]) for t in spec.inputs], [desc(o) for o in outs])
    return outs


class EmulatedPluginRunner:
    """``run(output_names, feeds)`` like an ONNX Runtime session, on ONNX's reference evaluator with every zoo scan
    node executed by the emulated TensorRT plugin (:func:`run_op`). ``graph``: a path, serialized bytes or a
    ``ModelProto``; ``lib``: the emulated plugin library (built on first use when None). ``calls`` counts the plugin
    runs per op, so a caller can check the plugin ran at all."""

    def __init__(self, graph, lib: str | os.PathLike | ctypes.CDLL | None = None):
        import onnx
        from onnx.reference import ReferenceEvaluator
        from onnx.reference.op_run import OpRun

        self.lib = prepare(lib) if isinstance(lib, ctypes.CDLL) else load(lib)
        self.calls = {op: 0 for op in ps.SCAN_OPS}
        runner = self

        def op_class(op_type: str):
            spec = ps.SCAN_OPS[op_type]

            def _run(self, *inputs, **attrs):
                fields = {a: int(attrs[a]) if attrs.get(a) is not None else spec.attributes[a][1]
                          for a in spec.attributes}
                runner.calls[op_type] += 1
                return tuple(run_op(runner.lib, op_type, fields, list(inputs)))

            return type(op_type, (OpRun,), {"op_domain": ps.ONNX_DOMAIN, "_run": _run})

        if isinstance(graph, onnx.ModelProto):
            model = onnx.ModelProto()
            model.CopyFrom(graph)
        elif isinstance(graph, (bytes, bytearray)):
            model = onnx.load_from_string(bytes(graph))
        else:
            model = onnx.load(str(graph))
        # the scan nodes' model-local functions (ONNX Runtime's path) are replaced by the plugin, so drop them
        keep = [f for f in model.functions if not (f.domain == ps.ONNX_DOMAIN and f.name in ps.SCAN_OPS)]
        del model.functions[:]
        model.functions.extend(keep)
        self.evaluator = ReferenceEvaluator(model, new_ops=[op_class(op) for op in ps.SCAN_OPS])
        self.input_names = list(self.evaluator.input_names)
        self.output_names = list(self.evaluator.output_names)

    def run(self, output_names, feeds):
        return self.evaluator.run(output_names, feeds)
