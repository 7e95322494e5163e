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

A plugin bug such as a wrong dim mapping reads and writes out of bounds, which kills the process it runs in.
:class:`IsolatedPluginRunner` is the same runner in a child process (numpy and onnx only; the caller keeps the model
and the verifier): a crash there raises :class:`PluginCrash` in the caller, naming the signal and the plugin run in
progress (``python -m export.trt`` uses it).
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


def activations() -> dict[str, frozenset[str]]:
    """Per op, the I/O names that take the activation dtype (all others are float32): ``ScanOpSpec.activations`` of
    :mod:`export.plugin_spec`, the table the plugins' type checks are generated from
    (``plugins/gen_spec_header.py``)."""
    return {op: spec.activations for op, spec in ps.SCAN_OPS.items()}


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
    acts = spec.activations
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

    def __init__(self, graph, lib: str | os.PathLike | ctypes.CDLL | None = None, on_call=None):
        """``on_call(op_type, fields, inputs)``, when given, is called before each plugin run (what was about to run
        when a plugin crashes the process: :class:`IsolatedPluginRunner` reports it)."""
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
                if on_call is not None:
                    on_call(op_type, fields, inputs)
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
        """The graph's ``output_names`` for ``feeds``. numpy's overflow/invalid/divide warnings are silenced: ONNX's
        reference ops evaluate fp16 graphs in fp16 (its Sigmoid computes both branches of a ``where``, and one
        overflows to inf or inf/inf for large inputs: four warnings with source paths per fp16 run, none of them an
        error in the result); a NaN or inf that does reach an output fails the verification that reads it."""
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self.evaluator.run(output_names, feeds)


# ---------------------------------------------------------------------------------------------------- in a child
class PluginCrash(PluginError):
    """The process running the plugins' code died (a signal such as SIGSEGV: the plugin or its kernel read or wrote
    out of bounds; or an exit without an answer). ``returncode`` is the child's (negative: the signal), ``signal``
    its name (None for an exit), ``last_call`` the plugin run in progress ``{"op_type", "inputs": {name: shape},
    "dtype"}`` (None when no plugin had started)."""

    def __init__(self, message: str, returncode: int | None = None, signal: str | None = None,
                 last_call: dict | None = None):
        super().__init__(message)
        self.returncode, self.signal, self.last_call = returncode, signal, last_call


class PluginHang(PluginCrash):
    """The process running the plugins' code gave no answer for ``timeout_s`` seconds (a plugin or kernel that never
    returns: an endless loop, a loop bound read from a wrong dim) and was killed. ``signal`` is None; ``returncode``
    the killed child's."""

    def __init__(self, message: str, returncode: int | None, last_call: dict | None, timeout_s: float):
        super().__init__(message, returncode, None, last_call)
        self.timeout_s = timeout_s


#: what each fatal signal of the child most likely means (the rest get the generic line)
_ASAN_HINT = "rerun with ASan: python plugins/harness.py --emulate --plugin --asan --check"
_SIGNAL_CAUSES = {
    "SIGSEGV": f"the plugin read or wrote out of bounds — {_ASAN_HINT}",
    "SIGBUS": f"the plugin read or wrote out of bounds — {_ASAN_HINT}",
    "SIGABRT": f"the plugin's code aborted (a failed check, std::terminate, or heap corruption glibc detected: an "
               f"out-of-bounds write) — {_ASAN_HINT}",
    "SIGFPE": "an arithmetic fault in the plugin's code (an integer division by zero: a dim read as 0?)",
    "SIGILL": "an illegal instruction in the plugin's code (undefined behaviour, or a build for another CPU)",
    "SIGKILL": "killed from outside (the kernel's out-of-memory killer sends SIGKILL)",
}


def _where(last_call: dict | None) -> str:
    if last_call is None:
        return ""
    shapes = ", ".join(f"{k}{list(v)}" for k, v in last_call["inputs"].items())
    return f" (during the {last_call['op_type']} plugin's enqueue, {last_call['dtype']}: {shapes})"


def _hang_message(timeout_s: float, last_call: dict | None) -> str:
    if last_call is None:
        return (f"the emulated plugin check's process gave no answer for {timeout_s:g} s outside any plugin run "
                f"(the reference evaluator on the graph's other nodes) and was killed")
    return (f"the emulated plugin check's process gave no answer for {timeout_s:g} s{_where(last_call)} and was "
            f"killed: the plugin's code does not return (an endless loop, or a loop bound read from a wrong dim?) — "
            f"rerun it alone: python plugins/harness.py --emulate --plugin --check")


def _crash_message(returncode: int | None, last_call: dict | None) -> tuple[str, str | None]:
    """``(message, signal name or None)`` for a child that died with ``returncode`` during ``last_call``."""
    import signal

    where = _where(last_call)
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        cause = _SIGNAL_CAUSES.get(name, "the process running the plugins' code was killed by it")
        return f"{name} in the emulated plugin check{where}: {cause}", name
    return (f"the emulated plugin check's process exited with code {returncode} without an answer{where} (a plugin "
            f"or the emulator called exit(), or the process could not start; its stderr is above)"), None


class IsolatedPluginRunner:
    """:class:`EmulatedPluginRunner` in a child process: ``run(output_names, feeds)`` sends the feeds over a pipe and
    returns the child's outputs, so a plugin that reads or writes out of bounds kills the child, not the caller: the
    next ``run`` raises :class:`PluginCrash` naming the signal and the plugin run in progress. The child imports only
    numpy, onnx and this module (no torch, no model): the caller keeps the model and the verification. An error the
    runner raises in the child (:class:`PluginError`, an evaluator limit) is raised again here with its type.

    ``graph``: a path, serialized bytes or a ``ModelProto``; ``lib``: the emulated plugin library (a path or a loaded
    library; built here when None); ``timeout_s``: the longest the child may go without an answer (one plugin run,
    or the evaluator's work between two) before it is killed and :class:`PluginHang` is raised (None: no limit).
    Use it as a context manager, or call :meth:`close`. ``calls`` counts the plugin runs per op."""

    def __init__(self, graph, lib: str | os.PathLike | ctypes.CDLL | None = None, timeout_s: float | None = None):
        import subprocess
        import sys
        from multiprocessing import Pipe

        if lib is None:
            from .build_plugins import build_emulated

            lib = build_emulated(plugins=True)
        elif isinstance(lib, ctypes.CDLL):
            lib = lib._name
        if not isinstance(graph, (bytes, bytearray)):
            graph = graph.SerializeToString() if hasattr(graph, "SerializeToString") else Path(graph).read_bytes()
        self.calls = {op: 0 for op in ps.SCAN_OPS}
        self.last_call: dict | None = None
        self.timeout_s = timeout_s
        self.proc = None
        self._conn, child_end = Pipe(duplex=True)
        fd = child_end.fileno()
        root = str(Path(__file__).resolve().parent.parent)         # the folder holding this `export` package
        code = f"import sys; sys.path.insert(0, {root!r}); from export.emulated_plugins import _serve; _serve({fd})"
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(fd,), stdin=subprocess.DEVNULL)
        except BaseException:
            self._conn.close()
            raise
        finally:
            child_end.close()
        try:
            self.input_names, self.output_names = self._ask(("init", bytes(graph), str(lib)))
        except BaseException:
            self.close()
            raise

    def run(self, output_names, feeds):
        return self._ask(("run", None if output_names is None else list(output_names), dict(feeds)))

    def _ask(self, request):
        try:
            self._conn.send(request)
            kind, *msg = self._recv()
            while kind == "call":                       # a plugin run starts (what a crash would happen in)
                op_type, shapes, dtype = msg
                self.calls[op_type] += 1
                self.last_call = {"op_type": op_type, "dtype": dtype,
                                  "inputs": dict(zip(ps.SCAN_OPS[op_type].input_names, shapes))}
                kind, *msg = self._recv()
        except (EOFError, OSError):                     # the child is gone: why?
            raise self._crash() from None
        self.last_call = None
        if kind == "error":
            raise _unpickle_error(*msg)
        return msg[0] if kind == "done" else tuple(msg)      # "done": the outputs; "ready": the I/O names

    def _recv(self):
        if self.timeout_s is not None and not self._conn.poll(self.timeout_s):
            self._conn.close()                          # no answer in time: the child hangs; stop it
            self.proc.kill()
            rc = self.proc.wait()
            raise PluginHang(_hang_message(self.timeout_s, self.last_call), rc, self.last_call, self.timeout_s)
        return self._conn.recv()

    def _crash(self) -> PluginCrash:
        import subprocess

        self._conn.close()
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:              # the pipe broke but the child lives on: stop it
            self.proc.kill()
            rc = self.proc.wait()
        message, name = _crash_message(rc, self.last_call)
        return PluginCrash(message, rc, name, self.last_call)

    def close(self) -> None:
        """Ends the child (it exits when the pipe closes; killed after 10 s)."""
        import subprocess

        self._conn.close()
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _unpickle_error(payload: bytes | None, type_name: str, message: str) -> Exception:
    import pickle

    if payload is not None:
        try:
            return pickle.loads(payload)
        except Exception:  # noqa: BLE001 - an exception type this process cannot rebuild: keep its name and message
            pass
    return RuntimeError(f"{type_name}: {message}")


class _PipeGone(BaseException):
    """The caller closed the pipe (BaseException: it must pass through the evaluator's own error handling)."""


def _serve(fd: int) -> None:
    """The child of :class:`IsolatedPluginRunner`: answers ``("init", graph, lib)`` with the runner's I/O names and
    each ``("run", output_names, feeds)`` with the outputs, sending ``("call", op_type, shapes, dtype)`` before each
    plugin run; an exception goes back as ``("error", pickled or None, type name, message)``. Ends when the pipe
    closes. A fatal signal kills it (faulthandler prints the Python stack to stderr first)."""
    import faulthandler
    import pickle
    import signal
    from multiprocessing.connection import Connection

    faulthandler.enable()
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the caller's to handle: it closes the pipe
    conn = Connection(fd)

    def send(msg):
        try:
            conn.send(msg)
        except OSError:
            raise _PipeGone from None

    def on_call(op_type, fields, inputs):
        send(("call", op_type, [tuple(np.shape(x)) for x in inputs], str(np.asarray(inputs[0]).dtype)))

    runner = None
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        try:
            try:
                if request[0] == "init":
                    runner = EmulatedPluginRunner(request[1], request[2], on_call=on_call)
                    send(("ready", runner.input_names, runner.output_names))
                else:
                    send(("done", [np.asarray(o) for o in runner.run(request[1], request[2])]))
            except Exception as e:  # noqa: BLE001 - sent back to the caller, which raises it
                try:
                    payload = pickle.dumps(e)
                except Exception:  # noqa: BLE001
                    payload = None
                send(("error", payload, type(e).__name__, str(e)))
        except _PipeGone:
            return
