"""Triton Inference Server model repositories for the zoo's exported graphs.

CLI::

    python -m export.triton --model NAME_OR_PATH --repo DIR [--backend onnxruntime|tensorrt|python]
                            [--state implicit|explicit] [--name NAME] [--topk K] [--idle-timeout-s S]
                            [--max-batch-size N] [--onnx EXPORT_DIR [--vocab FILE]] [--plan ENGINE]
                            [--plugin-lib SO] [--force]

``--model`` is exported with :func:`export.onnx.export_model` (step graph for models with an exact step, window graph
otherwise); ``--onnx DIR`` reuses an export (``model.onnx`` + ``state_spec.json``) instead.

What is written (``DIR/<name>/config.pbtxt``, ``DIR/<name>/<version>/...`` (``1/`` first; each regeneration writes
the next version and keeps the one before, see below), ``DIR/<name>/item_vocab.json``,
``DIR/<name>/initial_state/`` when a state starts at a non-zero value, ``DIR/<name>/README.md`` (how to serve and call
it), ``DIR/<name>/.export_triton.json`` (the checksum of every file written there, and the model it serves: its type,
source and config hash), ``DIR/README.md`` (an index of
every model folder in DIR, rewritten each time but for the text written below its :data:`README_KEEP` line; a
README.md or serve.sh that this generator did not write is refused unless ``--force``))
-----------------------------------------------------------------------------------------------------------------
* ``--backend onnxruntime --state implicit`` (default): the step graph behind Triton's **sequence batcher**
  (``oldest`` strategy, ``START``/``READY``/``CORRID`` control inputs, one ``state`` entry per recurrent tensor mapped
  by name ``<s>`` -> ``<s>_out``, ``max_sequence_idle_microseconds`` from ``--idle-timeout-s``). Each state starts
  at its initial value from ``state_spec.json``: ``initial_state { zero_data: true }`` for the zero states,
  ``initial_state { data_file: "<s>.bin" }`` (raw row-major bytes in the state's dtype under
  ``<name>/initial_state/``) for the others, e.g. TiM4Rec-causal's float64 ``last_ts`` = -1 ("no event yet").
  Clients send only the new item(s) of each event. The graph gets the three control inputs added; ``START`` also
  resets the incoming state to its initial value inside the graph (``Where(START, init, state)``), so a restarted
  sequence never sees an old (or uninitialised) state.
* ``--state explicit``: the plain step graph with the state tensors as ordinary inputs/outputs and **dynamic
  batching**: the client keeps each user's state (see the README recipe and :class:`export.triton_client.
  ExplicitStateRecommender`, which starts a new user at the initial values the config's ``state_init`` parameter
  lists) -- for users who pause longer than a sequence slot lives.
* ``--backend tensorrt``: same configs with ``backend: "tensorrt"`` (``model.plan``), ``KIND_GPU``; the engine is built
  from the ONNX graph with the zoo's scan plugins (``libzoo_trt_plugins.so``) by ``DIR/<name>/build_engine.sh``, and
  ``DIR/serve.sh`` (written for every TensorRT model in DIR) runs each missing build, then starts Triton with
  ``--backend-config=tensorrt,plugins=...`` and ``ZOO_TRT_PLUGINS_AUTOREGISTER=1`` (the plugin library registers its
  creators on a plain ``dlopen`` only then). ``build_engine.sh`` builds with the settings :mod:`export.trt` builds and
  verifies with (strongly typed, TF32 off for fp32, the aliased plugin I/O preview feature, a 2 GiB workspace) and
  its optimisation profile (:func:`export.trt.profile_shapes`: batch ``[1, min(64, max_batch_size),
  max_batch_size]``, new items ``T`` ``[1, 1, max_seq_length]``, ``--candidates`` lists ``C`` ``[1, 64, 1024]``).
  Graphs with float64 tensors (time-aware models: ``timestamps``, ``last_ts``) are refused with a
  :class:`TritonConfigError` naming them: TensorRT has no float64 type (a time-aware step graph's ``--time-input
  gaps`` form has none, see below).
* ``--backend python``: the step graph run by ONNX Runtime inside Triton's python backend, state kept per correlation
  id by :mod:`export.triton_server` (``START``/``END``/``CORRID`` controls; the config carries the same ``state``
  block as the onnxruntime variant, and the model starts each sequence from the initial state Triton hands it); with
  ``--state explicit`` the same model serves the explicit-state I/O with dynamic batching, and window graphs are
  served statelessly. This is what the CPU tests serve through the ``tritonserver`` bundled with nvidia-pytriton
  (which has only the python backend).
* Window graphs (models without an exact step, e.g. SASRec, TiM4Rec) become **stateless dynamic-batching** models
  whatever ``--state`` says: the client sends the padded history window (and, for TiM4Rec, its float64 timestamps)
  each time.

float64 I/O (TiM4Rec's ``timestamps``, TiM4Rec-causal's ``timestamps`` and ``last_ts``/``last_ts_out``) is declared
``TYPE_FP64``: float32 cannot hold Unix seconds. A ``--time-input gaps`` step graph (TiM4Rec-causal as ``export.trt``
builds it: float32 ``time_gaps``, no ``last_ts`` state) is served on every backend, TensorRT included, with
``time_gaps`` ``TYPE_FP32``; its caller keeps ``last_ts`` (config parameters ``time_input`` and ``client_state``):
:class:`export.triton_client.TritonRecommender` per live sequence, :class:`export.triton_client.
ExplicitStateRecommender` in the stored state beside the graph's states; both take float64 ``timestamps`` as for the
other form and send the gaps.

Every ``config.pbtxt`` is parsed with Triton's own schema (``tritonclient.grpc.model_config_pb2``) and checked
against the graph's I/O (names, dtypes -- the sequence batcher's control inputs' too --, state dims, initial
states) before it is written; a config that does not validate is never written.

The model folder is assembled in a hidden folder beside DIR (Triton takes every folder inside DIR for a model, a
half-written or hidden one included, and refuses to start) and renamed into DIR once complete; a run killed meanwhile
leaves it there, and the next run removes it (once the lock its writer held is free). An existing ``DIR/<name>/`` is
replaced whole, so one that this generator did not write, or whose files were changed or added to since (another
version folder, an edited config), is refused before anything is exported or written, unless ``--force``; one that
served another model (another source, model type or config, as its ``.export_triton.json`` records -- or, for a folder
of an earlier version, its ``config.pbtxt``) is replaced with a note on stderr naming both. A replaced folder's graph
goes into the next version folder (``N+1/``; ``N/`` is kept for a rollback, older ones removed) and every config
serves only the latest (``version_policy: { latest: { num_versions: 1 } }``): a client of
:mod:`export.triton_client` pins the version it read, so after Triton loads the new one its requests fail with
``ModelReplacedError`` (create a new client) instead of mixing the old model's vocabulary and states with the new
graph. The ``<version>/model.plan``
that ``build_engine.sh`` built in a TensorRT folder is kept when the graph, plugin library and build settings it was
built from are byte-identical (e.g. a new ``--queue-delay-us``); otherwise the output says it was
dropped (``serve.sh`` builds it again); a plugin library put into ``plugins/`` by hand (the generator had none to
copy) is carried over too. The repository's ``README.md`` and ``serve.sh`` are written whole (a temporary
file renamed over them), and ``build_engine.sh`` saves the engine under a temporary name, renamed to ``model.plan``
once trtexec succeeds (it skips the build when ``model.plan`` exists, so a plan cut short must never bear that name).

Exit statuses (the shared table, :data:`export.fsutil.EXIT_CODES`): 1 the run failed (a ``--model`` that cannot be
loaded, an ``--onnx`` export or a ``--vocab`` file that cannot be found, read or served, an export error -- such as a
``--model`` with an exact step whose type export.onnx has no step exporter for: the message says how to serve its
window graph with ``--onnx`` --, a write error); 2 a usage error (a flag that does not apply, a number out of range, a
``--topk`` above the items the ``--model`` can recommend, repository files this generator did not write without
``--force``); 3 the ``--model`` export failed its verification, ONNX Runtime unable to run its graph included
(nothing written); 4 a package it needs is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import hashlib
import json
import math
import os
import pathlib
import re
import shlex
import shutil
import sys
import tempfile
import time
from typing import Sequence

try:
    import fcntl
except ImportError:     # not POSIX (Windows): no stage locks, so no stage is taken for dead (as zoo.cli.lock_folder)
    fcntl = None

from . import plugin_spec as ps
from .deps import require
from .fsutil import (EXIT_CODES, EXIT_ERROR, EXIT_OK, EXIT_VERIFY_FAILED, command_prog, exit_with, file_sha256,
                     shell_option)

SPEC_FILE = "state_spec.json"
GRAPH_FILE = "model.onnx"
PLAN_FILE = "model.plan"
VOCAB_FILE = "item_vocab.json"
BACKENDS = ("onnxruntime", "tensorrt", "python")
STATES = ("implicit", "explicit")
MODEL_NAME = re.compile(r"[A-Za-z0-9_.\-]+")          # one folder of the repository
#: Triton container the README/serve.sh commands name (any release >= 24.01 with the ORT/TRT backends works)
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:25.01-py3"
#: Triton folder (under the model folder) holding the ``initial_state`` data files
INIT_DIR = "initial_state"
_DT = {"int64": "TYPE_INT64", "float32": "TYPE_FP32", "int32": "TYPE_INT32", "float16": "TYPE_FP16",
       "float64": "TYPE_FP64"}
#: little-endian numpy dtypes of the initial-state data files (Triton reads them as raw host-order bytes)
_NP = {"int64": "<i8", "float32": "<f4", "int32": "<i4", "float16": "<f2", "float64": "<f8"}


class TritonConfigError(ValueError):
    """A generated config that Triton's schema (or the graph's I/O) rejects."""


# ================================================================================================= validation
def _model_config_pb2():
    return require("tritonclient.grpc.model_config_pb2", "validating Triton configs (tritonclient's protobuf schema)")


def float64_tensors(spec: dict) -> list[str]:
    """Names of the graph's float64 inputs and outputs (states included), inputs first."""
    return [e["name"] for e in list(spec["inputs"]) + list(spec["outputs"]) if e["dtype"] == "float64"]


def _tensorrt_float64_error(names) -> TritonConfigError:
    return TritonConfigError(
        f"TensorRT has no float64 tensor type, and this graph has float64 tensors {list(names)} (Unix-second "
        "timestamps do not fit float32): there is no TensorRT engine for it. Serve it with --backend onnxruntime "
        "(or --backend python); for TensorRT, export a time-aware step graph with python -m export.onnx "
        "--time-input gaps (float32 time_gaps, what python -m export.trt builds), which has none.")


def _tensorrt_int8_error() -> TritonConfigError:
    return TritonConfigError(
        "this graph is dynamic int8 (export.onnx --int8: ONNX Runtime's DynamicQuantizeLinear + MatMulInteger), which "
        "TensorRT does not take (it quantizes through explicit QuantizeLinear/DequantizeLinear pairs): there is no "
        "TensorRT engine for it. Serve it with --backend onnxruntime (or --backend python), or build the engine from "
        "the fp32 or fp16 export.")


def is_tensorrt(cfg) -> bool:
    """Whether the model config ``cfg`` is served by Triton's TensorRT backend."""
    return cfg.backend == "tensorrt" or cfg.platform == "tensorrt_plan"


def validate_config(text: str, spec: dict | None = None):
    """Parse ``text`` with Triton's ``ModelConfig`` schema; with ``spec`` also check it against the graph's I/O.

    Returns the parsed ``model_config_pb2.ModelConfig``; raises :class:`TritonConfigError` naming the problem.
    """
    from google.protobuf import text_format

    mc = _model_config_pb2()
    cfg = mc.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as e:
        raise TritonConfigError(f"config.pbtxt does not parse with Triton's schema: {e}") from None
    if not cfg.name:
        raise TritonConfigError("config has no name")
    if not (cfg.backend or cfg.platform):
        raise TritonConfigError("config names no backend/platform")
    dt_name = mc.DataType.Name
    seq = cfg.sequence_batching if cfg.HasField("sequence_batching") else None
    if seq is not None and cfg.HasField("dynamic_batching"):
        raise TritonConfigError("a model cannot have both sequence_batching and dynamic_batching")
    if seq is not None:
        kinds = {c.kind for ci in seq.control_input for c in ci.control}
        if mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START not in kinds:
            raise TritonConfigError("sequence_batching without a CONTROL_SEQUENCE_START control input")
        if seq.WhichOneof("strategy_choice") == "oldest" and \
                mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_CORRID not in kinds:
            raise TritonConfigError("the oldest strategy needs a CONTROL_SEQUENCE_CORRID control input")
        ins, outs = [s.input_name for s in seq.state], [s.output_name for s in seq.state]
        # triton-inference-server/server#8586: several states are paired by sorted position
        if sorted(range(len(ins)), key=lambda i: ins[i]) != sorted(range(len(outs)), key=lambda i: outs[i]):
            raise TritonConfigError(f"state input names {ins} and output names {outs} sort differently "
                                    "(Triton would pair them by sorted position)")
        for s in seq.state:
            if not s.dims:
                raise TritonConfigError(f"state {s.input_name!r} has no dims (0-d states are not supported)")
            if len(s.initial_state) == 0:
                raise TritonConfigError(f"state {s.input_name!r} has no initial_state")
            for init in s.initial_state:
                if not init.name:
                    raise TritonConfigError(f"initial_state of state {s.input_name!r} has no name (Triton needs one)")
                if init.data_type != s.data_type:
                    raise TritonConfigError(f"initial_state of state {s.input_name!r} is {dt_name(init.data_type)}, "
                                            f"the state is {dt_name(s.data_type)}")
                if list(init.dims) != list(s.dims) or any(d < 0 for d in init.dims):
                    raise TritonConfigError(f"initial_state of state {s.input_name!r} has dims {list(init.dims)}, "
                                            f"expected the state's fixed dims {list(s.dims)}")
                src = init.WhichOneof("state_data")
                if src is None or (src == "data_file" and not init.data_file):
                    raise TritonConfigError(f"initial_state of state {s.input_name!r} sets neither zero_data nor a "
                                            "data_file")
    if is_tensorrt(cfg):
        f64 = [t.name for t in list(cfg.input) + list(cfg.output) if t.data_type == mc.TYPE_FP64]
        f64 += [x for s in (seq.state if seq is not None else []) if s.data_type == mc.TYPE_FP64
                for x in (s.input_name, s.output_name)]
        if f64:
            raise _tensorrt_float64_error(f64)
        if spec is not None and spec.get("precision") == "int8":
            raise _tensorrt_int8_error()
    if spec is not None:
        g_in = {e["name"]: e for e in spec["inputs"]}
        g_out = {e["name"]: e for e in spec["outputs"]}
        declared_in = [i.name for i in cfg.input] + ([ci.name for ci in seq.control_input] if seq is not None else [])
        declared_out = [o.name for o in cfg.output]
        state_in = {s.input_name: s for s in seq.state} if seq is not None else {}
        state_out = {s.output_name: s for s in seq.state} if seq is not None else {}
        for n in state_in:
            if n not in g_in:
                raise TritonConfigError(f"config state {n!r} is not a graph input")
        for n in state_out:
            if n not in g_out:
                raise TritonConfigError(f"config state output {n!r} is not a graph output")
        if cfg.backend != "python":
            missing = [n for n in g_in if n not in declared_in and n not in state_in]
            if missing:
                raise TritonConfigError(f"graph inputs {missing} are neither config inputs nor states")
            for n in declared_in:
                if n not in g_in:
                    raise TritonConfigError(f"config input/state {n!r} is not a graph input")
            for n in declared_out:
                if n not in g_out:
                    raise TritonConfigError(f"config output/state {n!r} is not a graph output")
        for s in state_in.values():
            want = [int(d) for d in g_in[s.input_name]["shape"][1:]]
            if list(s.dims) != want:
                raise TritonConfigError(f"state {s.input_name!r} dims {list(s.dims)} != graph {want} (batch dim "
                                        "excluded)")
            for n, e in ((s.input_name, g_in[s.input_name]), (s.output_name, g_out[s.output_name])):
                if _DT.get(e["dtype"]) != dt_name(s.data_type):
                    raise TritonConfigError(f"state {n!r} has {dt_name(s.data_type)}, graph has {e['dtype']}")
        for ci in (seq.control_input if seq is not None else []):       # START/READY/CORRID the graph declares
            if ci.name in g_in:
                dts = {_control_dtype(mc, c) for c in ci.control}
                if dts != {_DT.get(g_in[ci.name]["dtype"])}:
                    raise TritonConfigError(f"control input {ci.name!r} has {', '.join(sorted(map(str, dts)))}, "
                                            f"graph has {g_in[ci.name]['dtype']}")
        for ios, graph_io, what in ((cfg.input, g_in, "input"), (cfg.output, g_out, "output")):
            for i in ios:
                if i.name in graph_io and _DT.get(graph_io[i.name]["dtype"]) != dt_name(i.data_type):
                    raise TritonConfigError(f"{what} {i.name!r} has {dt_name(i.data_type)}, graph has "
                                            f"{graph_io[i.name]['dtype']}")
    return cfg


def _control_dtype(mc, c) -> str:
    """The Triton type of the tensor a sequence-batcher control fills: ``data_type`` for CORRID, else the type of
    its ``*_false_true`` values (``int32_false_true`` -> TYPE_INT32, ...)."""
    if c.kind == mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_CORRID:
        return mc.DataType.Name(c.data_type)
    if c.fp32_false_true:
        return "TYPE_FP32"
    if c.bool_false_true:
        return "TYPE_BOOL"
    return "TYPE_INT32"


# ================================================================================================ config text
def _dims(shape) -> str:
    return "[ " + ", ".join(str(-1 if isinstance(d, str) else int(d)) for d in shape) + " ]"


def _dt(dtype: str, what: str) -> str:
    if dtype not in _DT:
        raise TritonConfigError(f"{what} has dtype {dtype!r}, which has no Triton type here (supported: "
                                f"{', '.join(_DT)})")
    return _DT[dtype]


def _io(entries, indent="  ") -> str:
    return ",\n".join(f'{indent}{{ name: "{e["name"]}" data_type: {_dt(e["dtype"], repr(e["name"]))} '
                      f'dims: {_dims(e["shape"][1:])}{" optional: true" if e.get("optional") else ""} }}'
                      for e in entries)


def _optional_candidates(entries) -> list:
    """The python backend's inputs: a ``--candidates`` graph's ``candidates`` may be left out (not restricted)."""
    return [{**e, "optional": True} if e["name"] == "candidates" else e for e in entries]


def _pbtxt_str(v) -> str:
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _params(d: dict) -> str:
    return "".join(f'parameters {{ key: "{k}" value {{ string_value: {_pbtxt_str(v)} }} }}\n' for k, v in d.items())


def _oldest(max_batch: int, max_candidates: int, delay_us: int) -> str:
    pref = sorted({b for b in (max(1, max_batch // 4), max_batch) if b >= 1})
    return (f"  oldest {{ max_candidate_sequences: {max_candidates} "
            f"preferred_batch_size: [ {', '.join(map(str, pref))} ] max_queue_delay_microseconds: {delay_us} }}\n")


def _controls(names: Sequence[str], corrid_type: str) -> str:
    ctl = {
        "START": 'control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ]',
        "READY": 'control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ]',
        "END": 'control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ]',
        "CORRID": f'control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: {corrid_type} }} ]',
    }
    rows = ",\n".join(f'    {{ name: "{n}" {ctl[n]} }}' for n in names)
    return f"  control_input [\n{rows}\n  ]\n"


def _state_init(s: dict) -> float:
    init = float(s.get("init", 0.0))
    if init != init or init in (float("inf"), float("-inf")):
        raise TritonConfigError(f"state {s['name']!r} has a non-finite initial value {init!r}")
    return init


def initial_state_file(s: dict) -> str | None:
    """``initial_state/`` file name of a state that starts at a non-zero value (None for zero states)."""
    return f"{s['name']}.bin" if _state_init(s) != 0.0 else None


def initial_state_bytes(s: dict) -> bytes:
    """What Triton reads from the data file: ``prod(dims)`` values ``init`` in the state's dtype, row-major."""
    import numpy as np

    dims = [int(d) for d in s["shape"][1:]]
    return np.full(dims, _state_init(s), dtype=np.dtype(_NP[s["dtype"]])).tobytes()


def _state_block(spec: dict) -> str:
    """Sequence-batcher ``state`` entries, each starting at its ``state_spec.json`` initial value: zero states with
    ``zero_data``, the others (TiM4Rec-causal's float64 ``last_ts`` = -1) from a data file in ``initial_state/``."""
    rows = []
    for s in spec["state"]:
        if any(isinstance(x, str) for x in s["shape"][1:]):
            raise TritonConfigError(f"state {s['name']!r} has a variable dim {s['shape']}: Triton's initial_state "
                                    "needs fixed dims")
        d = _dims(s["shape"][1:])
        t = _dt(s["dtype"], f"state {s['name']!r}")
        f = initial_state_file(s)
        src = f'zero_data: true name: "{s["name"]}_zero"' if f is None else \
            f'data_file: "{f}" name: "{s["name"]}_init"'
        rows.append(f'    {{ input_name: "{s["name"]}" output_name: "{s["output"]}" data_type: {t} dims: {d}\n'
                    f'      initial_state: {{ data_type: {t} dims: {d} {src} }} }}')
    return "  state [\n" + ",\n".join(rows) + "\n  ]\n"


def _model_inputs(spec):
    states = {s["name"] for s in spec["state"]}
    return [e for e in spec["inputs"] if e["name"] not in states]


def _model_outputs(spec, with_states: bool):
    outs = {s["output"] for s in spec["state"]}
    return [e for e in spec["outputs"] if with_states or e["name"] not in outs]


INT32_MAX, UINT64_MAX = 2 ** 31 - 1, 2 ** 64 - 1
#: the CLI flag of each serving number (error messages name it)
NUMBER_FLAGS = {"max_batch_size": "--max-batch-size", "idle_timeout_s": "--idle-timeout-s",
                "max_candidate_sequences": "--max-candidate-sequences", "queue_delay_us": "--queue-delay-us",
                "instances": "--instances"}


def _whole(v) -> bool:
    try:
        return int(v) == v
    except (TypeError, ValueError, OverflowError):          # None, a string, inf/NaN
        return False


def config_number_problems(max_batch_size: int = 64, idle_timeout_s: float = 600.0,
                           max_candidate_sequences: int = 1024, queue_delay_us: int = 500, instances: int = 1,
                           ort_threads: int = 1) -> list[tuple[str, str]]:
    """``(name, message)`` for every serving number out of range: below its minimum (batch size, instances, threads
    and candidate sequences >= 1, queue delay >= 0, idle timeout >= 1 microsecond) or above what its field of Triton's
    ``model_config.proto`` holds (int32 ``max_batch_size`` / ``max_candidate_sequences`` / instance ``count``, uint64
    ``max_queue_delay_microseconds`` / ``max_sequence_idle_microseconds``; ONNX Runtime's int thread count)."""
    bad = []
    for n, v, lo, hi, field in (
            ("max_batch_size", max_batch_size, 1, INT32_MAX, "int32 max_batch_size"),
            ("max_candidate_sequences", max_candidate_sequences, 1, INT32_MAX, "int32 max_candidate_sequences"),
            ("queue_delay_us", queue_delay_us, 0, UINT64_MAX, "uint64 max_queue_delay_microseconds"),
            ("instances", instances, 1, INT32_MAX, "int32 instance_group count"),
            ("ort_threads", ort_threads, 1, INT32_MAX, "ONNX Runtime's int intra_op_num_threads")):
        if not _whole(v) or v < lo:
            bad.append((n, f"{n} must be an int >= {lo}, got {v}"))
        elif v > hi:
            bad.append((n, f"{n} must be at most {hi} (Triton's config holds it as {field}), got {v}"))
    try:
        idle = float(idle_timeout_s)
    except (TypeError, ValueError):
        idle = math.nan
    if not (math.isfinite(idle) and idle > 0):
        bad.append(("idle_timeout_s", f"idle_timeout_s must be a positive number of seconds, got {idle_timeout_s}"))
    elif round(idle * 1e6) < 1:                             # would write max_sequence_idle_microseconds: 0
        bad.append(("idle_timeout_s", "idle_timeout_s must be at least 1e-06 s (Triton counts whole microseconds), "
                                      f"got {idle_timeout_s}"))
    elif round(idle * 1e6) > UINT64_MAX:
        bad.append(("idle_timeout_s", f"idle_timeout_s must be at most {UINT64_MAX // 10 ** 6} s (Triton's config "
                                      f"holds it as uint64 max_sequence_idle_microseconds), got {idle_timeout_s}"))
    return bad


def check_config_numbers(max_batch_size: int = 64, idle_timeout_s: float = 600.0, max_candidate_sequences: int = 1024,
                         queue_delay_us: int = 500, instances: int = 1, ort_threads: int = 1) -> None:
    """Raise ``ValueError`` naming every serving number out of range (:func:`config_number_problems`), before any
    export or file is written."""
    bad = config_number_problems(max_batch_size, idle_timeout_s, max_candidate_sequences, queue_delay_us, instances,
                                 ort_threads)
    if bad:
        raise ValueError("; ".join(m for _, m in bad))


#: the config's version policy: Triton serves the highest version folder only (a regeneration writes the next one and
#: keeps the one before for a rollback, :func:`write_repository`), so that a client pinned to the version it read
#: (:mod:`export.triton_client`) is refused once the model is replaced instead of feeding it the old model's states
VERSION_POLICY = "version_policy: { latest: { num_versions: 1 } }\n"


def make_config(spec: dict, name: str, backend: str = "onnxruntime", state: str = "implicit", max_batch_size: int = 64,
                idle_timeout_s: float = 600.0, max_candidate_sequences: int = 1024, queue_delay_us: int = 500,
                instances: int = 1, ort_threads: int = 1) -> str:
    """The ``config.pbtxt`` text for one variant (not validated; :func:`write_repository` validates).

    Raises :class:`TritonConfigError` for ``backend="tensorrt"`` when the graph has float64 tensors (named) or is a
    dynamic int8 graph (``export.onnx --int8``)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, got {state!r}")
    if backend == "tensorrt" and float64_tensors(spec):
        raise _tensorrt_float64_error(float64_tensors(spec))
    if backend == "tensorrt" and spec.get("precision") == "int8":
        raise _tensorrt_int8_error()
    check_config_numbers(max_batch_size=max_batch_size, idle_timeout_s=idle_timeout_s,
                         max_candidate_sequences=max_candidate_sequences, queue_delay_us=queue_delay_us,
                         instances=instances, ort_threads=ort_threads)
    window = spec["kind"] != "step"
    kind = "KIND_GPU" if backend == "tensorrt" else "KIND_CPU"
    idle_us = int(round(idle_timeout_s * 1e6))
    head = f'name: "{name}"\nbackend: "{backend}"\nmax_batch_size: {max_batch_size}\n' + VERSION_POLICY
    if backend == "tensorrt":
        head += f'default_model_filename: "{PLAN_FILE}"\n'
    elif backend == "onnxruntime":
        head += f'default_model_filename: "{GRAPH_FILE}"\n'
    inst = f"instance_group [ {{ kind: {kind} count: {instances} }} ]\n"
    params = {"model_type": spec["model_type"], "n_items": spec["n_items"], "topk": spec["topk"],
              "kind": spec["kind"], "uses_timestamps": int(bool(spec.get("uses_timestamps")))}
    if spec.get("time_input"):
        params["time_input"] = spec["time_input"]
    if spec.get("client_state"):            # the gaps form: what the client keeps (last_ts) and where it starts
        params["client_state"] = json.dumps({s["name"]: _state_init(s) for s in spec["client_state"]})
    params["max_seq_length"] = spec["max_seq_length"]   # a window's length; a tensorrt step engine's cap on new items
    if window:
        params["padding_side"] = spec["padding_side"]
    else:       # what a new sequence / an unknown user starts from (ExplicitStateRecommender reads it)
        params["state_init"] = json.dumps({s["name"]: _state_init(s) for s in spec["state"]})
        if spec.get("state_fingerprint"):   # what the states mean (ExplicitStateRecommender tags stored states)
            params["state_fingerprint"] = spec["state_fingerprint"]
    dynamic = f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}\n"
    if backend == "python":
        params["ort_intra_op_threads"] = ort_threads
        if window or state == "explicit":
            return (head + dynamic + "input [\n" + _io(_optional_candidates(spec["inputs"])) + "\n]\n"
                    + "output [\n" + _io(_model_outputs(spec, with_states=True)) + "\n]\n" + inst + _params(params))
        # the python backend cannot hand output states back to Triton: the model keeps them per correlation id,
        # and takes each sequence's initial state from Triton's `state` block (the same one as the onnxruntime model)
        outs = _model_outputs(spec, with_states=False) + [{"name": "live_sequences", "shape": ["B", 1],
                                                           "dtype": "int64"}]
        return (head + "sequence_batching {\n" + f"  max_sequence_idle_microseconds: {idle_us}\n"
                + _oldest(max_batch_size, max_candidate_sequences, queue_delay_us)
                + _controls(["START", "END", "CORRID"], "TYPE_UINT64") + _state_block(spec) + "}\n"
                + "input [\n" + _io(_optional_candidates(_model_inputs(spec))) + "\n]\n"
                + "output [\n" + _io(outs) + "\n]\n" + inst + _params(params))
    if window or state == "explicit":
        ins = spec["inputs"]
        outs = _model_outputs(spec, with_states=True)
        return (head + dynamic + "input [\n" + _io(ins) + "\n]\n" + "output [\n" + _io(outs) + "\n]\n" + inst
                + _params(params))
    # implicit state
    extra = ""
    if backend == "tensorrt":
        extra = 'parameters { key: "execution_context_allocation_strategy" value { string_value: "STATIC" } }\n'
    return (head + "sequence_batching {\n" + f"  max_sequence_idle_microseconds: {idle_us}\n"
            + _oldest(max_batch_size, max_candidate_sequences, queue_delay_us)
            + _controls(["START", "READY", "CORRID"], "TYPE_INT64") + _state_block(spec) + "}\n"
            + "input [\n" + _io(_model_inputs(spec)) + "\n]\n"
            + "output [\n" + _io(_model_outputs(spec, with_states=False)) + "\n]\n" + inst + extra + _params(params))


# ========================================================================================= implicit-state graph
def _inside(folder: str | os.PathLike, name: str, what: str) -> pathlib.Path:
    """``folder / name`` when ``name`` is a plain file name (:func:`export.runtime.is_plain_file_name`, the rule
    :func:`read_spec` holds the spec's file names to) whose path, links resolved, lies in ``folder`` itself;
    TritonConfigError naming ``what`` otherwise (a name from an export folder never leads a write outside the model
    folder, whatever let it through: :func:`read_spec` refuses such names first)."""
    from .runtime import is_plain_file_name

    folder = pathlib.Path(folder)
    if not is_plain_file_name(name) or (folder / name).resolve().parent != folder.resolve():
        raise TritonConfigError(f"{what}: {name!r} is not a file name inside {folder}; re-export the model with "
                                "`python -m export.onnx`")
    return folder / name


def copy_graph_data(graph_path: str | os.PathLike, out_path: str | os.PathLike, spec: dict) -> None:
    """The tensor file of an external-data graph (``spec["external_data"]``, past protobuf's 2 GiB) into the folder of
    ``out_path``, where the copied graph refers to it by name; nothing for a graph that holds its tensors. The name
    must be a plain file name, read beside the graph and written beside ``out_path`` (TritonConfigError otherwise)."""
    name = spec.get("external_data")
    if name:
        what = f"the external_data of {graph_path}"
        dest = _inside(pathlib.Path(out_path).parent, name, what)
        if not dest.exists():
            shutil.copy(pathlib.Path(graph_path).parent / name, dest)  # a plain name (_inside): beside the graph


def copy_graph(graph_path: str | os.PathLike, out_path: str | os.PathLike, spec: dict) -> None:
    """Copy an exported graph, with its tensor file when it has one (:func:`copy_graph_data`)."""
    shutil.copy(graph_path, out_path)
    copy_graph_data(graph_path, out_path, spec)


def add_sequence_controls(graph_path: str | os.PathLike, out_path: str | os.PathLike, spec: dict) -> None:
    """Copy the step graph adding Triton's control inputs ``START``/``READY`` (int32 [B, 1]) and ``CORRID``
    (int64 [B, 1]); every incoming state goes through ``Where(START, init, state)`` (``init`` = the state's initial
    value from ``state_spec.json`` in its dtype: 0, or -1 for a float64 ``last_ts``), so a (re)started sequence
    begins from its initial state even if the server handed it a stale or uninitialised buffer (NaN included).
    ``READY``/``CORRID`` are declared for the sequence batcher only."""
    import numpy as np
    import onnx
    from onnx import TensorProto
    from onnx import helper as oh
    from onnx import numpy_helper

    def unusable(e: Exception) -> ValueError:           # onnx's checker (external data outside the folder) or I/O
        return ValueError(f"{graph_path} is not a usable ONNX graph ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); re-export it with `python -m export.onnx`")

    external = spec.get("external_data")       # tensors in a file beside the graph: they stay there, copied along
    try:
        mp = onnx.load(str(graph_path), load_external_data=not external)
    except (onnx.checker.ValidationError, OSError) as e:
        raise unusable(e) from None
    g = mp.graph
    names = {i.name for i in g.input}
    for c in ("START", "READY", "CORRID"):
        if c in names:
            raise TritonConfigError(f"{graph_path} already has an input named {c}")
    g.input.extend([oh.make_tensor_value_info("START", TensorProto.INT32, ["B", 1]),
                    oh.make_tensor_value_info("READY", TensorProto.INT32, ["B", 1]),
                    oh.make_tensor_value_info("CORRID", TensorProto.INT64, ["B", 1])])
    new_nodes = [oh.make_node("Cast", ["START"], ["__zoo_start_b"], to=TensorProto.BOOL)]
    rename = {}
    for s in spec["state"]:
        rank = len(s["shape"])
        shp = f"__zoo_shape_r{rank}"
        if not any(n.output and n.output[0] == shp for n in new_nodes):
            new_nodes.append(oh.make_node("Constant", [], [shp], value=oh.make_tensor(
                "v", TensorProto.INT64, [rank], [-1] + [1] * (rank - 1))))
        start_r = f"__zoo_start_r{rank}"
        if not any(n.output and n.output[0] == start_r for n in new_nodes):
            new_nodes.append(oh.make_node("Reshape", ["__zoo_start_b", shp], [start_r]))
        init = f"{s['name']}__init"
        new_nodes.append(oh.make_node("Constant", [], [init], value=numpy_helper.from_array(
            np.array(_state_init(s), dtype=np.dtype(_NP[s["dtype"]])), "v")))
        gated = f"{s['name']}__gated"
        new_nodes.append(oh.make_node("Where", [start_r, init, s["name"]], [gated]))
        rename[s["name"]] = gated

    def _rewire(graph):
        for n in graph.node:
            for k, x in enumerate(n.input):
                if x in rename:
                    n.input[k] = rename[x]
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    _rewire(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sg in a.graphs:
                        _rewire(sg)

    _rewire(g)
    for o in g.output:                                      # a state passed straight through (never in practice)
        if o.name in rename:
            raise TritonConfigError(f"graph output {o.name} is a state input")
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(new_nodes + nodes)
    if external:
        copy_graph_data(graph_path, out_path, spec)
        onnx.save(mp, str(out_path))
        try:
            onnx.checker.check_model(str(out_path), full_check=False)
        except onnx.checker.ValidationError as e:
            raise unusable(e) from None
    else:
        try:
            onnx.checker.check_model(mp, full_check=False)
        except onnx.checker.ValidationError as e:
            raise unusable(e) from None
        onnx.save(mp, str(out_path))


def implicit_spec(spec: dict) -> dict:
    """``spec`` with the control inputs the implicit-state graph gains (for validation)."""
    s = json.loads(json.dumps(spec))
    s["inputs"] += [{"name": "START", "shape": ["B", 1], "dtype": "int32"},
                    {"name": "READY", "shape": ["B", 1], "dtype": "int32"},
                    {"name": "CORRID", "shape": ["B", 1], "dtype": "int64"}]
    return s


# ============================================================================================== repository
def _events_example(uses_ts: bool) -> str:
    """The README's ``recommend_many`` events: ``(user, new_items)``, or ``(user, new_items, timestamps)``."""
    if uses_ts:
        return '("user-7", [item_a], [ts_a]), ("user-42", [item_b], [ts_b])'
    return '("user-7", [item_a]), ("user-42", [item_b])'


def _sh(path) -> str:
    """``path`` as one shell word for a command the READMEs print (``shlex.quote``: unchanged when it holds no blank or
    shell character), with ``./`` before a relative path that begins with '-' (else taken for an option)."""
    s = str(path)
    return shlex.quote("./" + s if s.startswith("-") else s)


def _py_str(text: str) -> str:
    """``text`` as a Python string literal for the READMEs' code: ``"text"`` when that is one, else ``repr``."""
    return f'"{text}"' if text.isprintable() and not any(c in text for c in '"\\') else repr(text)


def _readme(repo: pathlib.Path, name: str, backend: str, state: str, spec: dict, max_batch: int = 64,
            vocab: bool = True, sequences: tuple[float, int] | None = None) -> str:
    """The model folder's README (``vocab``: an ``item_vocab.json`` is shipped beside the config; ``sequences``: the
    sequence batcher's ``(idle timeout in s, max_candidate_sequences)``)."""
    window = spec["kind"] != "step"
    uses_ts = bool(spec.get("uses_timestamps"))
    states = ", ".join(f"`{s['name']}` {s['shape']} {s['dtype']}" + (f" (starts at {_state_init(s):g})"
                                                                   if _state_init(s) != 0.0 else "")
                       for s in spec["state"]) or "none"
    lines = [f"# `{name}` — {spec['model_type']}, {spec['kind']} graph, backend {backend}"
             + ("" if window else f", {state} state"), "",
             f"Generated by `python -m export.triton`. Top-{spec['topk']} internal item indices come back as "
             + ("`topk_ids`; `item_vocab.json` (beside `config.pbtxt`) maps them to your ids "
                "(`export.triton_client` does it for you)." if vocab else
                f"`topk_ids`. No item vocabulary was shipped: requests and answers use the graph's internal item "
                f"indices (1..{int(spec['n_items']) - 1}, 0 being padding), and mapping your ids to them is yours "
                "(the vocabulary the model was trained with; `--vocab FILE` with `--onnx` ships one)."),
             "", f"State tensors: {states}."
             + (" The others start at 0." if any(_state_init(s) != 0.0 for s in spec["state"]) else ""), ""]
    if spec.get("exclude_seen"):
        lines += [("History excluded (`--exclude-seen`): the `seen` state records every item the sequence has fed, "
                   "so no response ranks one of them above an unseen item (they score "
                   f"{spec['seen_score']:.8g}, the padding id never comes back). "
                   f"It costs {4 * int(spec['n_items']):,} bytes per live sequence.") if not window else
                  "History excluded (`--exclude-seen`): the items of the request's window are never ranked above an "
                  "unseen item.", ""]
    if spec.get("user_vector"):
        lines += [f"User vector (`--user-vector`): every response also carries `user_vector` "
                  f"[{spec['user_vector']['size']}] float32, the query vector whose inner products with the item "
                  "vectors of `python -m zoo.embed` are the raw scores (for an approximate-nearest-neighbour index "
                  "over a catalogue larger than the graph's own top-k serves)"
                  + ("; its last column is 1, the items' last column their bias" if spec["user_vector"]["bias_column"]
                     else "") + ".", ""]
    if any(e["name"] == "scores" for e in spec["outputs"]):
        lines += ["All scores (`export.onnx --scores`): every answer to an event also carries `scores` "
                  f"[{spec['n_items']}] float32, the raw score of each internal item index (index 0, the padding, "
                  "-inf); request only the outputs you read (tritonclient's `outputs=`), the clients of "
                  "`export.triton_client` leave it out.", ""]
    if spec.get("candidates"):
        lines += ["Candidates (`--candidates`): a request may carry `candidates` (int64 internal indices, 0 = "
                  "padding): its top-k is then taken among those items only, slots left empty holding id 0 and "
                  "score -inf (`export.triton_client` drops them); a request without a real candidate is not "
                  "restricted" + (" (the python backend also takes requests without the input)." if backend == "python"
                                  else "; every request must carry the input (a row of 0s restricts nothing)."), ""]
    if spec.get("excluded_items"):
        lines += [f"Excluded items (`export.onnx --exclude-items`): {len(spec['excluded_items']):,} items are never "
                  "recommended (their scores are -inf in the graph, like the padding's; `excluded_items` in "
                  "`state_spec.json` lists their indices). A new list needs a new export.", ""]
    gaps = spec.get("time_input") == "gaps"
    if gaps:
        lines += ["Time-aware model, float32 gaps form (`export.onnx --time-input gaps`, what `export.trt` builds): "
                  "every request carries `time_gaps` (one per item, **float32** `TYPE_FP32`: seconds since the "
                  "sequence's previous event, 0 for its first event ever, >= 0), and the graph keeps no `last_ts`: "
                  "the caller keeps it (float64 Unix seconds of the sequence's last event, -1 before the first; the "
                  "config's `client_state` parameter) and computes the gaps in float64 from the timestamps, then casts "
                  "them (`gap_0 = ts_0 - last_ts`, 0 when `last_ts < 0`; `gap_i = ts_i - ts_(i-1)`; then "
                  "`last_ts = ts_(T-1)`). The `export.triton_client` helpers take float64 `timestamps=` as for the "
                  "other form, check them and do this: " + (
                      "`TritonRecommender` keeps each live sequence's `last_ts` (so a sequence continues only through "
                      "the client that sent its previous event; another one must `prime` it)." if state == "implicit"
                      else "`ExplicitStateRecommender` stores `last_ts` with the graph's states."), ""]
    elif uses_ts:
        lines += ["Time-aware model: every request carries `timestamps` (one per item, Unix seconds) as **float64** "
                  "(`TYPE_FP64`; float32 cannot hold epoch seconds), non-decreasing, never before the sequence's "
                  "previous event; the `export.triton_client` helpers send float64.", ""]
    lines += ["## Serve", ""]
    mount = _sh(f"{repo}:/models")          # docker's -v HOST:/models, one shell word (as every path of a command)
    if backend == "python":
        lines += ["CPU, no Docker (nvidia-pytriton's tritonserver, python backend):", "", "```bash",
                  "bash export/triton_server_env.sh          # once: .venv-triton with nvidia-pytriton, numpy<2",
                  f".venv-triton/bin/python export/triton_server.py --repo {_sh(repo)} "
                  "--http-port 8000 --grpc-port 8001",
                  "```", "", "Or in a Triton container (the python backend needs numpy + onnxruntime there):", "",
                  "```bash", f"docker run --rm -p8000:8000 -p8001:8001 -v {mount} {TRITON_IMAGE} "
                  "bash -c 'pip install onnxruntime && tritonserver --model-repository=/models'", "```"]
    elif backend == "tensorrt":
        L, max_c = _profile_limits(spec)
        lines += ["```bash", f"bash {_sh(f'{repo}/serve.sh')}      # builds 1/model.plan with trtexec + the scan "
                  "plugins if missing, then starts Triton", "```", "",
                  f"`serve.sh` runs `{TRITON_IMAGE}`: `{name}/{ENGINE_SCRIPT}` builds the engine there with trtexec "
                  "and the settings `python -m export.trt` builds and verifies its engines with (`--stronglyTyped`"
                  + (", `--noTF32`" if spec.get("precision", "fp32") == "fp32" else "")
                  + f", `--preview=+aliasedPluginIO1003`, `--memPoolSize=workspace:{TRT_WORKSPACE_MIB}`; the plugins "
                  "through `--dynamicPlugins`; these flags were checked against trtexec's sources, not run here), "
                  "then Triton starts with `ZOO_TRT_PLUGINS_AUTOREGISTER=1` and "
                  "`--backend-config=tensorrt,plugins=...` (the plugin library of the repository's first TensorRT "
                  f"model, `plugins/{ps.PLUGIN_LIBRARY}`, which registers its scan plugins on Triton's plain `dlopen` "
                  "only with that variable set). The engine and the plugin library must come from the TensorRT "
                  "version of that container (`python -m export.build_plugins` builds the library).", "",
                  f"The engine takes what its optimisation profile spans (`export.trt`'s numbers): 1..{max_batch} rows "
                  "a request (`max_batch_size`), "
                  + (f"windows of 1..{L} items" if window else
                     f"1..{L} new items a request (a longer history goes in pieces of at most {L}: "
                     "`export.triton_client`'s `TritonRecommender` and `ExplicitStateRecommender` split a longer `prime` or "
                     "`recommend` themselves, from "
                     "the config's `max_seq_length` parameter)")
                  + (f", 1..{max_c:,} candidates a request (`export.trt --max-candidates`' default; the shapes in "
                     f"`{ENGINE_SCRIPT}` set it)" if spec.get("candidates") else "")
                  + "; Triton refuses a request outside it."]
    else:
        lines += ["```bash", f"docker run --rm -p8000:8000 -p8001:8001 -v {mount} {TRITON_IMAGE} "
                  "tritonserver --model-repository=/models", "```"]
    lines += ["", "## Call it", ""]
    vocab = f", vocab={_py_str(f'{repo}/{name}/{VOCAB_FILE}')}" if vocab else ""     # without one: internal indices
    if window:
        lines += ["Stateless (dynamic batching): each request carries the history window `item_ids [rows, L]`, "
                  f"`L <= {spec['max_seq_length']}` (several rows: 0-padded on the {spec['padding_side']})"
                  + (", and its float64 `timestamps [rows, L]` (0 on padding)" if uses_ts else "") + ":", "",
                  "```python", "from export.triton_client import WindowRecommender",
                  f'rec = WindowRecommender("127.0.0.1:8001", "{name}", protocol="grpc"{vocab})',
                  "top = rec.recommend(history" + (", timestamps=history_ts)   # float64 Unix seconds, one per item"
                                                   if uses_ts else ")   # sends the last max_seq_length items"),
                  "many = rec.recommend_many(histories" + (", histories_ts" if uses_ts else "")
                  + ")   # one request, a row per history", "```"]
    elif state == "implicit":
        ts1, ts2 = (", timestamps=history_ts", ", timestamps=[ts]") if uses_ts else ("", "")
        lines += ["```python", "from export.triton_client import TritonRecommender",
                  f'rec = TritonRecommender("127.0.0.1:8001", "{name}", protocol="grpc"{vocab})',
                  f'rec.prime("user-42", history{ts1})          # one request: START + the whole history',
                  f'top = rec.recommend("user-42", [new_item]{ts2})  # each event: only the new item(s)',
                  f'many = rec.recommend_many([{_events_example(uses_ts)}])  # in flight together (gRPC)',
                  'rec.end("user-42")                       # frees the server-side state', "```", "",
                  "Sequence ids are Triton correlation ids (uint64; strings are hashed). A sequence idle for longer "
                  "than `max_sequence_idle_microseconds` is dropped by Triton: re-prime it from the history, or use "
                  "the explicit-state variant."]
        if sequences:
            idle_s, slots = sequences
            lines += ["", f"Sequence slots: the sequence batcher holds at most {slots:,} live sequences "
                      "(`max_candidate_sequences`, `--max-candidate-sequences`); the requests of one more wait, "
                      "unanswered, until a live sequence ends or stays idle for "
                      f"{idle_s:g} s (`max_sequence_idle_microseconds`, `--idle-timeout-s`), so end every sequence "
                      "you are done with: `rec.end(user)` sends the END from any client (also one that did not "
                      "start the sequence, or after a restart; a sequence the server does not hold is no error). A "
                      "request that times out may have been applied: the client then refuses the sequence's next "
                      "event until `prime` restarts it (an event is not idempotent: resent, it is applied twice)."]
    else:
        ts2 = ", timestamps=[ts]" if uses_ts else ""
        lines += ["Explicit state (for users who come back after minutes or days): the request carries the state, "
                  "the response returns the new one; keep it in any key-value store:", "", "```python",
                  "from export.triton_client import ExplicitStateRecommender",
                  f'rec = ExplicitStateRecommender("127.0.0.1:8001", "{name}", protocol="grpc"'
                  f'{vocab}, store={{}})  # store: dict-like; state_store.RedisStateStore(url) for many clients',
                  f'top = rec.recommend("user-42", [new_item]{ts2})   # loads the state (initial state if new), '
                  "stores the new one",
                  f'many = rec.recommend_many([{_events_example(uses_ts)}])   # users as the rows of one request',
                  "```", "",
                  "Store recipe: key = user id, value = the state tensors' raw bytes, each in its own dtype "
                  "(float32" + (", float64 `last_ts`" if any(x["dtype"] == "float64" for x in spec["state"]) else "")
                  + (" and the client's float64 `last_ts`" if gaps else "")
                  + "; `export.state_store.BytesStore` keeps them as a JSON header + raw tensors, 2-5x faster "
                  "than `np.savez`), a few KB per user; a missing key means an empty "
                  "history, whose state is the config's `state_init` parameter ("
                  + ", ".join(f"`{x['name']}` = {_state_init(x):g}" for x in spec["state"])
                  + (" and, from `client_state`, " + ", ".join(f"`{x['name']}` = {_state_init(x):g}"
                                                              for x in spec.get("client_state") or [])
                     if gaps else "") + "); "
                  "expire keys with the store's TTL instead of Triton's idle timeout. Several client processes "
                  "(serving workers) sharing one store need a versioned one, so that none loses another's event of "
                  "the same user: `export.state_store.SQLiteStateStore(path)` on one machine, "
                  "`export.state_store.RedisStateStore(url, ttl=...)` across machines, or any store with "
                  "`get_versioned` / `commit` (compare-and-set)."
                  + ("" if not spec.get("state_fingerprint") else
                     " Keep the `state_fingerprint` string the client adds to each state (the config parameter of "
                     "the same name): a state is the model's own summary of a history, so after this model is "
                     "replaced (retrained, catalogue grown or reordered) a client created afterwards refuses the "
                     "states the old one wrote (`StaleStateError`) -- replay such a user's history with "
                     "`rec.prime(user, history)` (one request), or pass `on_stale=\"restart\"`.")]
    lines += ["", "## After a refresh", "", "Writing this model again (`python -m export.triton` over this folder) "
              "puts the new graph into the next version folder and keeps the one before (a rollback's graph); the "
              "config serves the latest version only. Every client (`export.triton_client`) pins the version it "
              "read when it was created, so once Triton has loaded the new one (poll mode, a `load` call or a "
              "restart) an existing client's calls fail with `ModelReplacedError` (nothing stored, no answer from "
              "the new model through the old client's vocabulary): create a new client"
              + (" with the new `item_vocab.json`." if vocab else ".") + ("" if window or state == "implicit" else
                                     " Its states of the old model are stale: keep them in another store (Redis "
                                     "`prefix=`, SQLite `table=`) per model version during a rollout and prime "
                                     "the users into the new one from their histories.")]
    if window or state == "implicit":
        lines += ["", "## Benchmark it", "", "perf_analyzer (Triton's SDK container) with real histories instead of "
                  "random ids" + ("" if window else ": one stream per user, primed with its history, then one "
                                  "request per event") + ":", "", "```bash",
                  f"python -m export.perf_data --repo {_sh(repo)} {shell_option('--name', name)} "
                  "--data YOUR_INTERACTIONS --out perf.json",
                  "```", "", "It prints the `perf_analyzer` command to run."]
    return "\n".join(lines) + "\n"


ENGINE_SCRIPT = "build_engine.sh"
SERVE_SH_MARK = "Serve this model repository with Triton (one command), written by python -m export.triton."


#: builder workspace pool of build_engine.sh, MiB: export.trt's default ``--workspace 2G``
TRT_WORKSPACE_MIB = 2048


def _profile_limits(spec: dict) -> tuple[int, int]:
    """``(largest T / window length, largest candidate list C)`` of the engine profile build_engine.sh builds: the
    graph's ``max_seq_length`` and ``export.trt``'s default ``--max-candidates``."""
    from .trt import MAX_CANDIDATES         # export.trt imports TensorRT / torch only inside its functions

    return int(spec.get("max_seq_length", 200)), MAX_CANDIDATES


def _profile(spec: dict, max_batch: int) -> tuple[str, str, str]:
    """trtexec's ``--minShapes`` / ``--optShapes`` / ``--maxShapes`` values for the graph's inputs: the profile
    ``export.trt`` builds (:func:`export.trt.profile_shapes`: batch ``[1, min(64, max_batch), max_batch]``, ``T``
    ``[1, 1, L]``, a ``--candidates`` graph's ``C`` ``[1, min(64, N), N]``), with the config's ``max_batch_size`` as
    the largest batch and the graph's ``max_seq_length`` as ``L``."""
    from .trt import profile_shapes

    L, max_c = _profile_limits(spec)
    out = ([], [], [])
    for e in spec["inputs"]:
        dims = [-1 if isinstance(d, str) else int(d) for d in e["shape"]]
        for acc, shape in zip(out, profile_shapes(e["name"], dims, max_batch=max_batch, max_steps=L,
                                                  max_candidates=max_c), strict=True):
            acc.append(f'{e["name"]}:' + "x".join(map(str, shape)))
    return tuple(",".join(x) for x in out)


def _build_engine_sh(name: str, spec: dict, max_batch: int, implicit: bool) -> str:
    """``<name>/build_engine.sh``: builds ``<version>/model.plan`` (the highest version folder, found when it runs)
    from the folder's ONNX graph (``onnx/model_implicit.onnx`` for an ``implicit`` state model, whose ``spec`` lists
    the control inputs; else ``onnx/model.onnx``) with trtexec and the scan plugins, inside a TensorRT or Triton
    container (the engine must come from the serving TensorRT version),
    with the builder settings and optimisation profile of :func:`export.trt.build_engine`. The shapes, which hold the
    graph's input names, are quoted for the shell (:func:`read_spec` refuses names outside
    :data:`export.runtime.TENSOR_NAME`, which need no quotes: a spec from elsewhere still runs no command here)."""
    import textwrap

    lo, opt, hi = _profile(spec, max_batch)
    onnx_name = "model_implicit.onnx" if implicit else GRAPH_FILE
    fp32 = spec.get("precision", "fp32") == "fp32"
    L, max_c = _profile_limits(spec)
    about = (
        "The settings are those python -m export.trt builds and verifies its engines with: a strongly typed network "
        "(--stronglyTyped: precision from the graph's dtypes)"
        + (", TF32 off (--noTF32: an fp32 graph)" if fp32 else "")
        + f", the aliased plugin I/O preview feature (--preview=+aliasedPluginIO1003), a {TRT_WORKSPACE_MIB} MiB "
        f"workspace, and its optimisation profile (export.trt.profile_shapes): batch [1, {min(64, max_batch)}, "
        f"{max_batch}] (max_batch_size), " + ("window length" if spec["kind"] != "step" else "new items T")
        + f" [1, 1, {L}] (max_seq_length)"
        + (f", candidates C [1, {min(64, max_c)}, {max_c}] (export.trt --max-candidates' default)"
           if spec.get("candidates") else "")
        + ". The scan nodes carry plugin_namespace, so the ONNX parser binds them to the plugins without a parser "
        "flag. These trtexec flags were checked against trtexec's sources, not run here.")
    about = textwrap.fill(about, 117, initial_indent="# ", subsequent_indent="# ")
    return f"""#!/usr/bin/env bash
# Build {name}/<version>/{PLAN_FILE} (the highest version folder: the one the config serves) from onnx/{onnx_name}
# with trtexec and the zoo's scan plugins (run inside the TensorRT or Triton container that will serve it: an engine
# only loads in the TensorRT version that built it). Does nothing when
# the plan exists: trtexec saves it as {PLAN_FILE}.tmp, renamed to {PLAN_FILE} once the build succeeded, so a build
# cut short (a killed container, a full disk) leaves no {PLAN_FILE} and the next run builds it again.
# Usage: bash build_engine.sh [PLUGIN_LIBRARY] (default: plugins/{ps.PLUGIN_LIBRARY} beside this file)
#
{about}
set -euo pipefail
here="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
plugin="${{1:-$here/plugins/{ps.PLUGIN_LIBRARY}}}"
version="$(ls -1 "$here" | grep -E '^[0-9]+$' | sort -n | tail -n 1 || true)"
if [ -z "$version" ]; then
  echo "$here holds no version folder (1/, 2/, ...): regenerate it with python -m export.triton" >&2
  exit 1
fi
vdir="$here/$version"
if [ -f "$vdir/{PLAN_FILE}" ]; then
  echo "$vdir/{PLAN_FILE} exists"
  exit 0
fi
rm -f "$vdir/{PLAN_FILE}.tmp"
# --dynamicPlugins registers the creators itself: the library's own registration (for tritonserver) would repeat it
unset ZOO_TRT_PLUGINS_AUTOREGISTER
"${{TRTEXEC:-/usr/src/tensorrt/bin/trtexec}}" --onnx="$here/onnx/{onnx_name}" --saveEngine="$vdir/{PLAN_FILE}.tmp" \\
  --dynamicPlugins="$plugin" --stronglyTyped{" --noTF32" if fp32 else ""} --preview=+aliasedPluginIO1003 \\
  --memPoolSize=workspace:{TRT_WORKSPACE_MIB} --skipInference \\
  --minShapes={shlex.quote(lo)} \\
  --optShapes={shlex.quote(opt)} \\
  --maxShapes={shlex.quote(hi)}
mv -f "$vdir/{PLAN_FILE}.tmp" "$vdir/{PLAN_FILE}"
"""


def _printable(name: str) -> str:
    """``name`` as it is, or ``ascii(name)`` when it holds a line break or another unprintable character (in a
    comment line of a script, a line break would start a command)."""
    return name if name.isprintable() else ascii(name)


def _serve_sh(names: Sequence[str]) -> str:
    """``DIR/serve.sh`` for the repository's TensorRT models ``names`` (sorted): builds each missing plan with its
    ``build_engine.sh``, then starts Triton with ``ZOO_TRT_PLUGINS_AUTOREGISTER=1`` (the plugin library registers its
    creators on Triton's plain ``dlopen`` only then; the builds run without it); the server and every engine build
    load one plugin library, the first model's (engines built with one library and served with another would not
    deserialise). A folder renamed by hand (blanks, quotes, ``$``) is quoted for the container's shell, then escaped
    for the double-quoted ``bash -c`` text (the generator's own names are ``[A-Za-z0-9_.-]+``: written bare)."""
    def inner(path: str) -> str:                   # quoted for the container's bash, escaped for the "..." around it
        return re.sub(r'([\\"$`])', r"\\\1", shlex.quote(path))

    plugin = inner(f"/models/{names[0]}/plugins/{ps.PLUGIN_LIBRARY}")    # $plugin: expanded into the bash -c text
    builds = "".join(f"  bash {inner(f'/models/{n}/{ENGINE_SCRIPT}')} $plugin\n" for n in names)
    return f"""#!/usr/bin/env bash
# {SERVE_SH_MARK} Builds the missing TensorRT plans first ({', '.join(map(_printable, names))}).
# Triton's tensorrt backend only dlopens the plugin library: ZOO_TRT_PLUGINS_AUTOREGISTER=1 makes it register its
# creators into the server's TensorRT (of the major version it was built for), after the builds (trtexec loads it
# itself).
set -euo pipefail
here="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
image="${{TRITON_IMAGE:-{TRITON_IMAGE}}}"
plugin="{plugin}"
docker run --rm --gpus all -p8000:8000 -p8001:8001 -p8002:8002 -v "$here":/models "$image" bash -c "
  set -e
{builds}  export ZOO_TRT_PLUGINS_AUTOREGISTER=1
  exec tritonserver --model-repository=/models --backend-config=tensorrt,plugins=$plugin"
"""


#: the line that marks a repository-level README.md as this generator's (rewritten at each write; another is kept)
README_MARK = "Generated by `python -m export.triton`; one folder per model"
#: the line of the README.md that older versions of the generator wrote at the repository level (one model's README,
#: rewritten at each write, before the repository got an index) and now write in each model folder
LEGACY_README_LINE = "Generated by `python -m export.triton`."
#: the last generated line of the repository's index README.md: what stands below it was written by hand and is kept
#: when the index is rewritten (as ``bench/benchutil.py``'s ``KEEP`` line keeps a bench's notes)
README_KEEP = "<!-- written by hand below this line: kept when python -m export.triton rewrites what is above -->"


def _generator_readme(path: pathlib.Path, marks: tuple[str, ...]) -> bool:
    """Whether ``path`` is a README.md file holding one of ``marks`` (a line only this generator writes)."""
    try:
        text = path.read_text(errors="replace") if path.is_file() else ""
    except OSError:
        return False
    return any(m in text for m in marks)


def foreign_repository_files(repo: str | os.PathLike, tensorrt: bool = False, name: str | None = None
                             ) -> list[pathlib.Path]:
    """The repository-level files of ``repo`` that writing a model would overwrite but this generator did not write
    (they lack its mark): ``README.md``, and ``serve.sh`` when the repository will hold a TensorRT model (``tensorrt``:
    the model written is one; else another model folder than ``name`` is)."""
    repo = pathlib.Path(repo)
    if not repo.is_dir():
        return []
    out = []
    readme, sh = repo / "README.md", repo / "serve.sh"
    if readme.is_file() and not _generator_readme(readme, (README_MARK, LEGACY_README_LINE)):
        out.append(readme)                  # the index, or an older generator's one-model README: its own
    trt = tensorrt or any(d.is_dir() and d.name != name and not d.name.startswith(".") and (d / ENGINE_SCRIPT).is_file()
                          and (d / "config.pbtxt").is_file() for d in repo.iterdir())
    if trt and sh.is_file() and SERVE_SH_MARK not in sh.read_text(errors="replace"):
        out.append(sh)
    return out


def _foreign_files_error(paths) -> FileExistsError:
    return FileExistsError(
        f"{', '.join(map(str, paths))}: not written by python -m export.triton (no generator's mark), and writing "
        "this model would overwrite " + ("them" if len(paths) > 1 else "it") + " (the repository's index README.md / "
        "the TensorRT serve.sh); move " + ("them" if len(paths) > 1 else "it") + " away or pass --force (force=True)")


def _write_whole(path: pathlib.Path, text: str, executable: bool = False) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path`` (mode ``0o666``, or ``0o777``
    when ``executable``, less the umask, as ``open`` would give): an interrupted write leaves the previous file whole
    (a cut-short README.md would lack the generator's mark and be refused as foreign next time) and no temporary file
    but a hidden one a kill left (Triton takes folders only for models). UTF-8, with the bytes of text read by
    :func:`_kept_text` that are not UTF-8 written back as they were."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, (0o777 if executable else 0o666) & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _kept_text(readme: pathlib.Path) -> str:
    """What stands below the :data:`README_KEEP` line of the index ``readme`` (from the newline that ends that line;
    ``"\n"`` when there is no such line or no file): text written by hand, which a rewrite of the index keeps. Read as
    UTF-8, any other bytes kept as they are (:func:`_write_whole` writes them back)."""
    try:
        old = readme.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:                                         # none yet (or not a file): nothing to keep
        return "\n"
    return old.split(README_KEEP, 1)[1] if README_KEEP in old else "\n"


def _repository_files(repo: pathlib.Path) -> None:
    """(Re)write the repository-level files from every model folder in ``repo``: ``README.md`` (an index of the
    models, each with the title of its own ``<name>/README.md``, then the :data:`README_KEEP` line and the text
    written by hand below it in the README.md there, kept: :func:`_kept_text`) and, when any folder holds a TensorRT
    model, ``serve.sh`` (removed when none does)."""
    models = sorted(d for d in repo.iterdir() if d.is_dir() and not d.name.startswith(".")
                    and (d / "config.pbtxt").is_file())
    lines = ["# Triton model repository", "",
             f"{README_MARK}, each with a README that says how to serve and call it:", ""]
    for d in models:
        readme = d / "README.md"
        if not readme.is_file():
            lines.append(f"- `{d.name}` (no README: not written by `python -m export.triton`)")
            continue
        title = readme.read_text(encoding="utf-8").partition("\n")[0].partition(" — ")[2]
        lines.append(f"- [`{d.name}`]({d.name}/README.md)" + (f": {title}" if title else ""))
    trt = [d.name for d in models if (d / ENGINE_SCRIPT).is_file()]
    if trt:
        lines += ["", f"`bash serve.sh` builds the missing TensorRT plans ({', '.join(trt)}) and starts Triton "
                  "on this folder."]
    lines += ["", "`python -m export.triton` rewrites this file each time it writes a model here: put notes of your "
                  "own below the comment line that ends it (not shown when rendered), where they are kept; what is "
                  "above that line is replaced.", "", README_KEEP]
    _write_whole(repo / "README.md", "\n".join(lines) + _kept_text(repo / "README.md"))
    sh = repo / "serve.sh"
    if trt:
        _write_whole(sh, _serve_sh(trt), executable=True)
    elif sh.is_file() and SERVE_SH_MARK in sh.read_text(encoding="utf-8"):   # ours, for TensorRT models no longer here
        sh.unlink()


def check_initial_state_files(mdir: str | os.PathLike, cfg) -> None:
    """Every ``initial_state { data_file }`` of the parsed config ``cfg`` exists under ``mdir/initial_state/`` and
    holds exactly ``prod(dims)`` values of the state's dtype (Triton refuses to load a shorter file and would ignore
    the excess of a longer one)."""
    mc = _model_config_pb2()
    sizes = {mc.TYPE_FP64: 8, mc.TYPE_FP32: 4, mc.TYPE_FP16: 2, mc.TYPE_INT64: 8, mc.TYPE_INT32: 4}
    for st in cfg.sequence_batching.state:
        for init in st.initial_state:
            if init.WhichOneof("state_data") != "data_file":
                continue
            path = pathlib.Path(mdir) / INIT_DIR / init.data_file
            n = 1
            for d in init.dims:
                n *= int(d)
            want = n * sizes[init.data_type]
            if not path.is_file():
                raise TritonConfigError(f"initial state of {st.input_name!r}: {path} does not exist")
            if path.stat().st_size != want:
                raise TritonConfigError(f"initial state of {st.input_name!r}: {path} has {path.stat().st_size} bytes, "
                                        f"expected {want} ({n} x {mc.DataType.Name(init.data_type)})")


def read_spec(export_dir: str | os.PathLike) -> dict:
    """``export_dir/state_spec.json`` (an :mod:`export.onnx` folder); FileNotFoundError when it is not there, ValueError
    naming the file when it is not JSON, not an object, lacks a field the repository is built from, or names a tensor
    or a file outside the safe sets (:func:`export.runtime.read_spec`: names go into file names, config.pbtxt and
    build_engine.sh)."""
    from .runtime import read_spec as read_spec_file

    path = pathlib.Path(export_dir) / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{export_dir} holds no {SPEC_FILE}: pass a folder written by `python -m export.onnx`")
    return read_spec_file(path)


def _graph_tensors(model):
    """Every tensor a loaded ONNX model holds: the initializers (sparse ones' values and indices) and node attributes
    of its graph, its subgraphs (Scan, If, Loop bodies) and its local functions."""
    def of_graph(g):
        yield from g.initializer
        for sp in g.sparse_initializer:
            yield from (sp.values, sp.indices)
        yield from of_nodes(g.node)

    def of_nodes(nodes):
        for n in nodes:
            for a in n.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("g"):
                    yield from of_graph(a.g)
                for sg in a.graphs:
                    yield from of_graph(sg)

    yield from of_graph(model.graph)
    for f in model.functions:
        yield from of_nodes(f.node)


def check_graph(graph: str | os.PathLike, spec: dict) -> None:
    """``graph`` parses as an ONNX model whose inputs and outputs are those ``state_spec.json`` lists, named within
    :data:`export.runtime.TENSOR_NAME`'s safe set (the names go into config.pbtxt and build_engine.sh), whose
    tensors kept outside it (ONNX external data) all lie in the file the spec names (``external_data``: a file
    beside the graph, which is copied along); ValueError naming the file otherwise (a truncated copy, another
    export's graph, a graph made or edited elsewhere)."""
    import onnx

    from .runtime import _shown, is_tensor_name

    try:
        mp = onnx.load(str(graph), load_external_data=False)
        g = mp.graph
    except Exception as e:                                  # protobuf's DecodeError for a truncated file
        raise ValueError(f"{graph} is not a readable ONNX graph ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); re-export it with `python -m export.onnx`"
                         ) from None
    for what, have in (("input", g.input), ("output", g.output)):
        bad = next((t.name for t in have if not is_tensor_name(t.name)), None)
        if bad is not None:
            raise ValueError(f"{graph}: the graph's {what} name {_shown(bad)} is not a tensor name export.triton "
                             "accepts (letters, digits, '_' and '.', starting with a letter or '_', as python -m "
                             "export.onnx names them); re-export it with `python -m export.onnx`")
    wanted = spec.get("external_data")
    for t in _graph_tensors(mp):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        where = {e.key: e.value for e in t.external_data}.get("location")
        if where != wanted:
            raise ValueError(f"{graph} is not a usable ONNX graph: its tensor {_shown(t.name)} lies in "
                             f"{_shown(where)}, not in the file its {SPEC_FILE} names beside it (external_data: "
                             f"{_shown(wanted)}); re-export it with `python -m export.onnx`")
    for what, have, want in (("inputs", g.input, spec["inputs"]), ("outputs", g.output, spec["outputs"])):
        have, want = sorted(t.name for t in have), sorted(e["name"] for e in want)
        if have != want:
            raise ValueError(f"{graph} has {what} {have}, but its {SPEC_FILE} lists {want}: the two files do not "
                             "belong together (re-export with `python -m export.onnx`)")


def _served_vocab_fingerprint(spec: dict, export_dir: pathlib.Path, vocab_path) -> dict:
    """``spec`` with the ``state_fingerprint`` the served model's states get: the export's own when the vocabulary
    shipped (``vocab_path``) maps the same ids in the same order as the export's ``item_vocab.json`` (or the export
    names none), else one derived from it and the shipped ids (:func:`export.onnx.state_fingerprint` covers the
    model's own vocabulary: the same graph served under another vocabulary must refuse the states stored under the
    first, whose indices name other items)."""
    from .vocab_format import read_graph_vocab

    fp, own = spec.get("state_fingerprint"), spec.get("item_vocab")
    if not fp or not own or not (export_dir / own).is_file():
        return spec
    n = int(spec["n_items"])
    try:
        mine = read_graph_vocab(export_dir / own, n)[0]
    except (OSError, ValueError):
        mine = None
    served = read_graph_vocab(vocab_path, n)[0]
    if mine is not None and list(mine) == list(served):
        return spec
    ids = json.dumps([x if isinstance(x, str) else int(x) for x in served], ensure_ascii=False)
    return {**spec, "state_fingerprint": "sha256:" + hashlib.sha256(
        f"{fp}|served item_vocab|{ids}".encode()).hexdigest()}


def check_vocab(vocab_path: str | os.PathLike, spec: dict) -> None:
    """``vocab_path`` is a zoo item vocabulary with one id per item of the graph (``n_items - 1``), read as the
    serving runtime and the models read it (:func:`export.vocab_format.read_graph_vocab`; no torch); ValueError
    naming the file and the problem otherwise."""
    from .vocab_format import read_graph_vocab

    read_graph_vocab(vocab_path, int(spec["n_items"]))


# ======================================================================================== model folders on disk
#: the file in each model folder that records what python -m export.triton wrote there: ``{"written_by": ...,
#: "files": {relative path: sha256}}``; a folder without it (or with other files) is not replaced without --force
MODEL_MARK = ".export_triton.json"
_GENERATOR = "python -m export.triton"
#: files a model folder gains after it is written and that are still the generator's to replace: the engine that
#: build_engine.sh builds in a version folder (kept when its inputs are unchanged: :func:`_carry_plan`) and an
#: interrupted build's temporary engine (paths relative to the model folder; ``__pycache__`` folders, which the python
#: backend's import of ``<version>/model.py`` may leave, are not the user's either)
_BUILT_LATER_RE = re.compile(r"[0-9]+/" + re.escape(PLAN_FILE) + r"(\.tmp)?")


def _built_later(rel: str) -> bool:
    """Whether the path ``rel`` (relative to a model folder) is an engine build_engine.sh builds, in any version
    folder (:data:`_BUILT_LATER_RE`)."""
    return bool(_BUILT_LATER_RE.fullmatch(rel))


def model_versions(mdir: str | os.PathLike) -> list[int]:
    """The version folders of the model folder ``mdir`` (folders named by a positive int), ascending; ``[]`` when
    there is none (or no folder)."""
    try:
        names = os.listdir(mdir)
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit() and int(n) > 0 and n == str(int(n))
                  and os.path.isdir(os.path.join(mdir, n)))
#: the parts of a TensorRT model folder its engine is built from (build_engine.sh: graph, plugins, trtexec's flags)
_BUILD_INPUTS = ("onnx/", "plugins/", ENGINE_SCRIPT)
#: the repository-level flags of write_repository's own arguments (messages from main name the flag)
ARG_FLAGS = {"name": "--name", "plan": "--plan", "plugin_lib": "--plugin-lib", "vocab_path": "--vocab",
             "repo": "--repo"}


def default_model_name(model_type: str, kind: str, backend: str, state: str) -> str:
    """The model's folder name when none is given: ``<model_type>_<kind>_<backend>[_<state>]``."""
    return f"{model_type}_{kind}_{backend}" + (
        f"_{state}" if kind == "step" and (backend != "python" or state == "explicit") else "")


def check_repository_args(name: str | None, backend: str, plan: str | None = None, plugin_lib: str | None = None,
                          vocab_path: str | None = None, flags: dict | None = None) -> None:
    """The checks of :func:`write_repository`'s own arguments, which need no export: a name that is one folder name,
    ``plan``/``plugin_lib`` only for the tensorrt backend, the files given exist. ``flags`` names each argument in
    the messages (``ARG_FLAGS`` for the CLI; default: the argument's name). Raises ValueError / FileNotFoundError."""
    label = (flags or {}).get
    for what, path in (("vocab_path", vocab_path), ("plan", plan), ("plugin_lib", plugin_lib)):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"{label(what, what)} {path} not found")
    for what, path in (("plan", plan), ("plugin_lib", plugin_lib)):
        if path and backend != "tensorrt":
            raise ValueError(f"{label(what, what)} is for the tensorrt backend; backend {backend!r} would not use "
                             f"{path}")
    if name is not None and (not MODEL_NAME.fullmatch(name) or name in (".", "..")):
        raise ValueError(f"{label('name', 'model name')} {name!r}: Triton serves each model from one folder of the "
                         "repository; use letters, digits, '_', '-' and '.' (no path separators)")


def _folder_files(mdir: pathlib.Path) -> dict[str, pathlib.Path]:
    """``{path relative to mdir (with /): path}`` of the files under ``mdir``, but the mark and ``__pycache__``."""
    out = {}
    for root, dirs, files in os.walk(mdir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            rel = pathlib.Path(root, f).relative_to(mdir).as_posix()
            if rel != MODEL_MARK:
                out[rel] = pathlib.Path(root, f)
    return out


def _write_model_mark(mdir: pathlib.Path, provenance: dict | None = None) -> None:
    """``mdir/.export_triton.json``: the checksum of every file written into the model folder (the last file), and
    the model it serves (``provenance``: :func:`model_provenance`)."""
    files = {rel: file_sha256(p) for rel, p in _folder_files(mdir).items() if not _built_later(rel)}
    mark = {"written_by": _GENERATOR, **({"model": provenance} if provenance else {}), "files": files}
    (mdir / MODEL_MARK).write_text(json.dumps(mark, indent=1) + "\n", encoding="utf-8")


#: config keys that say where, and with which transformers, a config was saved: not what the model is
_CONFIG_BOOKKEEPING = frozenset({"_name_or_path", "name_or_path", "transformers_version", "_commit_hash"})
#: the ``state_spec.json`` keys that describe the model an export.onnx folder holds (not the graph's options)
_SPEC_MODEL_KEYS = ("model_type", "kind", "n_items", "max_seq_length", "padding_side", "uses_timestamps")


def _sha256_json(obj) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def model_provenance(model, source: str | None = None) -> dict:
    """What a model folder written from the zoo model ``model`` serves, as its :data:`MODEL_MARK` records it:
    ``{"model_type", "n_items", "via": "model", "source", "config"}`` -- ``source`` the name or folder it was loaded
    from (default ``model.name_or_path``; a folder resolved, links and all, so that any path to it names it alike;
    ``None`` for a model built in memory), ``config`` the SHA-256 of its config (but the keys saying where and with
    which transformers it was saved). Retrained weights under the same source and config are the same model; another
    source, type or config is another (:func:`_replaced_model_note`)."""
    config = {k: v for k, v in model.config.to_dict().items() if k not in _CONFIG_BOOKKEEPING}
    source = os.fspath(source or getattr(model, "name_or_path", None) or "") or None
    return {"model_type": str(model.config.model_type), "n_items": int(model.config.n_items), "via": "model",
            "source": os.path.realpath(source) if source and os.path.isdir(source) else source,
            "config": _sha256_json(config)}


def _export_provenance(export_dir: pathlib.Path, spec: dict) -> dict:
    """:func:`model_provenance` of an export.onnx folder (``--onnx``), which records no model source or config: the
    folder stands for the source, and the ``state_spec.json`` fields that describe the model for its config."""
    return {"model_type": str(spec["model_type"]), "n_items": int(spec["n_items"]), "via": "onnx",
            "source": str(export_dir.resolve()), "config": _sha256_json({k: spec.get(k) for k in _SPEC_MODEL_KEYS})}


def _recorded_provenance(mdir: pathlib.Path) -> dict | None:
    """What the model folder ``mdir`` records it serves: its mark's ``model``; for a folder an earlier version wrote
    (no such record) its ``config.pbtxt``'s ``model_type`` and ``n_items`` parameters (``{"model_type", "n_items"}``
    only); ``None`` when neither says."""
    try:
        rec = json.loads((mdir / MODEL_MARK).read_text(encoding="utf-8")).get("model")
        if isinstance(rec, dict) and isinstance(rec.get("model_type"), str):
            return rec
    except (OSError, ValueError, AttributeError):
        pass
    try:
        text = (mdir / "config.pbtxt").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    params = dict(re.findall(r'key:\s*"(model_type|n_items)"\s*value\s*\{\s*string_value:\s*"([^"\\]*)"', text))
    if "model_type" not in params:
        return None
    return {"model_type": params["model_type"], "n_items": params.get("n_items")}


def _served(rec: dict, config: bool) -> str:
    """``rec`` (:func:`model_provenance`) in words; ``config``: with its config hash (cut to 12 digits)."""
    what = rec.get("model_type")
    if "via" not in rec:                                    # an earlier version's folder: its config.pbtxt says
        return f"{what} (n_items {rec.get('n_items')}; its source was not recorded)"
    src = rec.get("source")
    what += (f" from {src}" if rec.get("via") == "model" and src else
             f" from the export.onnx folder {src}" if src else " built in memory")
    return what + (f" (config {str(rec.get('config'))[:19]})" if config else "")


def _replaced_model_note(mdir: pathlib.Path, old: dict | None, new: dict) -> str | None:
    """The note that the model folder ``mdir``, which served the model ``old`` (:func:`_recorded_provenance`), now
    serves another, ``new``; ``None`` when it is the same model (or ``old`` is unknown)."""
    if old is None:
        return None
    if "via" not in old:                                    # what an earlier version's config.pbtxt tells
        same = (old["model_type"], str(old.get("n_items"))) == (new["model_type"], str(new["n_items"]))
    else:
        same = all(old.get(k) == new.get(k) for k in ("model_type", "via", "source", "config"))
    if same:
        return None
    config = all(old.get(k) == new.get(k) for k in ("model_type", "via", "source"))    # only the config differs
    return f"{mdir} served {_served(old, config)}; it now serves {_served(new, config)}"


def foreign_model_files(mdir: str | os.PathLike) -> list[pathlib.Path]:
    """What replacing the model folder ``mdir`` would lose that this generator did not write: ``[mdir]`` when it has
    no :data:`MODEL_MARK` (a folder written by hand or by another tool, or a file); else the files changed or added
    since it was written (an edited ``config.pbtxt``, another version folder), but the engine build_engine.sh builds
    (:func:`_built_later`). ``[]`` when there is nothing there. A folder from before the mark, whose README.md
    carries the generator's line, counts as the generator's. The plugin library put into ``plugins/`` by hand where
    the generator had none to copy (what ``plugins/README.md`` asks for) is carried over (:func:`_carry_plugins`)."""
    mdir = pathlib.Path(mdir)
    if not os.path.lexists(mdir):
        return []
    if not mdir.is_dir():
        return [mdir]
    try:
        recorded = json.loads((mdir / MODEL_MARK).read_text(encoding="utf-8"))["files"]
        if not isinstance(recorded, dict):
            raise TypeError
    except FileNotFoundError:
        return [] if _legacy_model_folder(mdir) else [mdir]
    except (OSError, ValueError, KeyError, TypeError):     # a mark cut short or edited: nothing can be vouched for
        return [mdir]
    placed = f"plugins/{ps.PLUGIN_LIBRARY}"                 # put there as plugins/README.md says: carried over
    return sorted(p for rel, p in _folder_files(mdir).items()
                  if not _built_later(rel) and not (rel == placed and rel not in recorded)
                  and recorded.get(rel) != file_sha256(p))


def _legacy_model_folder(mdir: pathlib.Path) -> bool:
    """Whether the model folder ``mdir`` without :data:`MODEL_MARK` was written by an older version of this
    generator (before the mark): its README.md carries the generator's line; or, from the versions that wrote no
    README into model folders, it holds a ``config.pbtxt`` and an ``export.onnx`` spec (``state_spec.json``, there
    or in ``1/``) in a repository whose README.md is such a version's one-model README."""
    if _generator_readme(mdir / "README.md", (LEGACY_README_LINE,)):
        return True
    if os.path.lexists(mdir / "README.md") or not (mdir / "config.pbtxt").is_file():
        return False
    if not _generator_readme(mdir.parent / "README.md", (LEGACY_README_LINE,)):
        return False
    for spec in (mdir / SPEC_FILE, mdir / "1" / SPEC_FILE):
        try:
            fmt = json.loads(spec.read_text(encoding="utf-8")).get("format")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(fmt, str) and fmt.startswith("ssm-rec-zoo/onnx/"):
            return True
    return False


def _foreign_model_error(mdir: pathlib.Path, paths: list[pathlib.Path]) -> FileExistsError:
    if paths == [mdir]:
        what = (f"{mdir} was not written by {_GENERATOR} (it has no {MODEL_MARK}: a folder written by hand or by "
                "another tool -- or by a version of the generator older than the mark whose folder was edited since)"
                if mdir.is_dir() else
                f"{mdir} is a file, not a model folder {_GENERATOR} wrote")
    else:
        shown = ", ".join(str(p.relative_to(mdir)) for p in paths[:8]) + (", ..." if len(paths) > 8 else "")
        what = f"{mdir} holds files changed or added since {_GENERATOR} wrote it ({shown})"
    return FileExistsError(f"{what}, and writing the model replaces that folder whole: move it away, choose another "
                           "--name (name=...), or pass --force (force=True) to replace it")


def _folder_identity(path: pathlib.Path) -> tuple | None:
    """Which folder ``path`` is (device, inode), and when an entry was last added, removed or renamed in it
    (an editor saving by rename, a version folder added); ``None`` when nothing is there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns)


def _check_model_folder(final: pathlib.Path, force: bool = False, checked: tuple | None = None) -> tuple:
    """Refuse (``FileExistsError``) a model folder ``final`` that replacing would lose files of which this generator
    did not write (:func:`foreign_model_files`), unless ``force``. Returns the token of the check. Given one
    (``checked``), the folder is not hashed again while it is the same folder with no entry added, removed or renamed
    in it: the CLI hands :func:`write_repository` its token for ``--onnx`` only, where nothing runs between the two
    checks (not for ``--model``, whose export runs for minutes in between: an edit meanwhile must be seen)."""
    final = pathlib.Path(final)
    token = (str(final), _folder_identity(final))           # before hashing: a change while it hashes is seen
    if checked is not None and checked == token:
        return token
    lost = [] if force else foreign_model_files(final)
    if lost:
        raise _foreign_model_error(final, lost)
    return token


def check_repository(repo: str | os.PathLike, name: str | None, backend: str = "onnxruntime", force: bool = False,
                     plan: str | None = None, plugin_lib: str | None = None, vocab_path: str | None = None,
                     flags: dict | None = None, _checked: tuple | None = None) -> tuple | None:
    """The checks :func:`write_repository` makes before it writes, but those of the export: its own arguments
    (:func:`check_repository_args`), a ``repo`` that is a file or lies under one, and, once the staging folders of
    killed runs are cleaned up (a model folder one had moved aside is put back before it is checked:
    :func:`remove_dead_stages`), the repository's files (:func:`foreign_repository_files`) and the model folder
    ``repo/<name>`` (:func:`_check_model_folder`; not while ``name`` is None, unknown yet) that this generator did
    not write, unless ``force``. ``flags`` names each argument in the messages (``ARG_FLAGS`` for the CLI, which
    calls it before any export). Returns the token of the model folder's check (``None`` without a ``name``);
    ``_checked``: such a token, whose folder is not hashed again (:func:`_check_model_folder`).

    Raises:
        ValueError / FileNotFoundError: as :func:`check_repository_args`; a ``repo`` that is a file, or under one.
        FileExistsError: repository files or a model folder this generator did not write (without ``force``).
    """
    check_repository_args(name, backend, plan, plugin_lib, vocab_path, flags)
    path = pathlib.Path(repo).resolve()
    flag = (flags or {}).get("repo", "repository")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {repo} is a file, not a folder (the Triton model repository to write into)")
    where = path.parent                     # the nearest existing folder above it (the rest is made): not a file
    while not where.exists() and where != where.parent:
        where = where.parent
    if not path.exists() and not where.is_dir():    # zoo.cli.check_outputs' words (not imported: it loads torch)
        raise ValueError(f"{flag} {repo}: {where} is a file, not a folder")
    _clean_up_after_killed_runs(path)       # a killed run's model folder, moved aside, goes back before the checks
    foreign = [] if force else foreign_repository_files(path, backend == "tensorrt", name)
    if foreign:
        raise _foreign_files_error(foreign)
    return None if name is None else _check_model_folder(path / name, force, _checked)


def _link_or_copy(src, dst) -> None:
    """A file of the model folder being replaced into the new one: a hard link where the file system allows (the old
    folder is removed after the swap), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _carry_plugins(old: pathlib.Path, new: pathlib.Path) -> str | None:
    """Put the plugin library that was put into the old folder's ``plugins/`` by hand (not one the generator wrote,
    which its mark records) into the new folder when the generator had none to put there; returns the note to print
    (``None``: nothing to carry)."""
    rel = f"plugins/{ps.PLUGIN_LIBRARY}"
    src, dst = old / rel, new / rel
    try:
        recorded = json.loads((old / MODEL_MARK).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not src.is_file() or rel in recorded or dst.exists() or not dst.parent.is_dir():
        return None
    _link_or_copy(src, dst)
    return f"kept {src}, put there by hand (the generator had no plugin library to copy)"


def _carry_plan(old: pathlib.Path, new: pathlib.Path, plan_given: bool) -> str | None:
    """Put the old folder's ``<version>/model.plan`` (its highest version) into the new one's highest version
    folder when it was built from byte-identical inputs (the ONNX graphs, the plugin library and build_engine.sh,
    which holds trtexec's flags and profile); returns the note to print about it (``None``: there was none, or
    ``plan_given`` replaces it)."""
    old_v, new_v = model_versions(old), model_versions(new)
    if plan_given or not old_v or not new_v:
        return None
    src = old / str(old_v[-1]) / PLAN_FILE
    if not src.is_file():
        return None

    def inputs(d):
        return {r: p for r, p in _folder_files(d).items() if r.startswith(_BUILD_INPUTS)}

    a, b = inputs(old), inputs(new)
    if ENGINE_SCRIPT in b and a.keys() == b.keys() and all(filecmp.cmp(a[r], b[r], shallow=False) for r in a):
        dst = new / str(new_v[-1]) / PLAN_FILE
        _link_or_copy(src, dst)
        return f"kept {src}: the graph, plugin library and build settings it was built from are unchanged"
    why = ("the graph, plugin library or build settings (build_engine.sh) it was built from changed; serve.sh builds "
           "a new one" if ENGINE_SCRIPT in b else "the model is no longer served by TensorRT")
    return f"dropped {src}: {why}"


#: the hidden staging folder of a model folder: beside the repository (``.<repo>.export-triton-*``, the same file
#: system, outside what Triton scans), or inside it (``.export-triton-*``) where the parent cannot hold it
_STAGE_PREFIX = ".export-triton-"
_STAGE_LOCK = "writer.lock"
#: a staging folder without its lock file this old (its writer died removing it) is removed
_STAGE_UNLOCKED_AGE_S = 600.0


def _stage_places(repo: pathlib.Path) -> list[tuple[pathlib.Path, str]]:
    return [(repo.parent, f".{repo.name}{_STAGE_PREFIX}"), (repo, _STAGE_PREFIX)]


def _remove_dead_stage(stage: pathlib.Path) -> bool:
    """Remove the staging folder ``stage`` if its writer is dead (the lock it held while alive can be taken), first
    putting back the model folder a writer killed between the swap's two renames had moved aside. Returns whether
    it was removed. Where there are no locks (no ``fcntl``: Windows) a stage with its lock file is never taken for
    dead: it is left."""
    try:
        fd = os.open(stage / _STAGE_LOCK, os.O_RDWR)
    except FileNotFoundError:          # a writer's first instant (the lock comes next) or one killed removing it
        try:
            old_enough = time.time() - stage.stat().st_mtime > _STAGE_UNLOCKED_AGE_S
        except OSError:
            return False
        if old_enough:
            shutil.rmtree(stage, ignore_errors=True)
        return old_enough
    except OSError:
        return False
    with os.fdopen(fd, "r+") as f:
        if fcntl is None:                                   # no locks here: a live writer's cannot be told apart
            return False
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:                                     # held: a live writer's
            return False
        try:
            target = json.loads(f.read() or "{}").get("target")
        except ValueError:
            target = None
        moved = stage / "replaced"
        if target and os.path.lexists(moved) and not os.path.lexists(target):
            os.replace(moved, target)
        shutil.rmtree(stage, ignore_errors=True)
    return True


def remove_dead_stages(repo: str | os.PathLike) -> list[pathlib.Path]:
    """Remove the staging folders that killed ``export.triton`` runs on ``repo`` left (SIGKILL, the OOM killer, a
    power loss; an exception or Ctrl-C removes its own): only those whose writer's lock is free, never a live
    writer's. Returns the folders removed."""
    repo = pathlib.Path(repo).resolve()
    removed = []
    for where, prefix in _stage_places(repo):
        try:
            stages = [d for d in where.iterdir() if d.name.startswith(prefix) and d.is_dir() and not d.is_symlink()]
        except OSError:
            continue
        removed += [d for d in sorted(stages) if _remove_dead_stage(d)]
    return removed


def _clean_up_after_killed_runs(repo: pathlib.Path) -> None:
    """:func:`remove_dead_stages`, saying on stderr what it removed."""
    for d in remove_dead_stages(repo):
        print(f"note: removed {d}, left by an export.triton that was killed", file=sys.stderr)


def _legacy_stages(repo: pathlib.Path) -> list[pathlib.Path]:
    """Staging folders of the generator before :func:`_staged_model_folder` (``.<name>.staged-*``/``.replaced-*``
    inside the repository): their writer cannot be told dead, so they are named, not removed."""
    if not repo.is_dir():
        return []
    return sorted(d for d in repo.iterdir() if d.is_dir() and re.fullmatch(r"\..+\.(staged|replaced)-\w+", d.name))


@contextlib.contextmanager
def _staged_model_folder(final: pathlib.Path):
    """Yield an empty folder to assemble the model folder ``final`` in; once the block completes it replaces
    ``final`` (two renames: ``final`` aside, the new folder in; the old one is removed after). The folder lives in a
    hidden staging folder beside the repository, on its file system, or inside it when the parent cannot hold it;
    the staging folder holds a lock file (flock'ed while the writer lives, naming ``final``) so that
    :func:`remove_dead_stages` removes it only once its writer is dead. An error or an interruption leaves ``final``
    as it was and no staging folder (should the old folder's put-back itself fail, the staging folder keeps it, and
    the next :func:`remove_dead_stages` puts it back as ``final``: it is never removed while ``final`` is missing)."""
    repo = final.parent
    repo.mkdir(parents=True, exist_ok=True)
    stage = None
    try:
        cand = pathlib.Path(tempfile.mkdtemp(prefix=_stage_places(repo)[0][1], dir=repo.parent))
        if cand.stat().st_dev == repo.stat().st_dev:
            stage = cand
        else:                                               # the repository is a mount point: no rename across
            cand.rmdir()
    except OSError:                                         # a parent this user cannot write in
        pass
    if stage is None:
        stage = pathlib.Path(tempfile.mkdtemp(prefix=_STAGE_PREFIX, dir=repo))
    lock = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".lock-", dir=stage)
        lock = os.fdopen(fd, "w", encoding="utf-8")
        if fcntl is not None:                               # not POSIX: no lock, and no stage is taken for dead
            fcntl.flock(lock, fcntl.LOCK_EX)                # before it bears its name: never seen unlocked
        lock.write(json.dumps({"target": str(final), "pid": os.getpid()}))
        lock.flush()
        os.rename(tmp, stage / _STAGE_LOCK)
        new, moved = stage / "model", stage / "replaced"
        new.mkdir()
        yield new
        try:                                                # both renames: a Ctrl-C between them is caught too
            if os.path.lexists(final):
                os.rename(final, moved)
            os.rename(new, final)
        except BaseException:                               # put back what was there
            if os.path.lexists(moved) and not os.path.lexists(final):
                os.rename(moved, final)
            raise
    finally:
        # a replaced/ without final is the only copy of the old folder (its put-back failed or was interrupted): the
        # staging folder stays, and remove_dead_stages puts it back once this writer's lock is released
        if not (os.path.lexists(stage / "replaced") and not os.path.lexists(final)):
            for part in ("model", "replaced"):
                if os.path.lexists(stage / part):
                    shutil.rmtree(stage / part, ignore_errors=True)
            shutil.rmtree(stage, ignore_errors=True)        # the lock file last (its writer still holds it)
        if lock is not None:
            lock.close()


def write_repository(export_dir: str | os.PathLike, repo: str | os.PathLike, name: str | None = None,
                     backend: str = "onnxruntime", state: str = "implicit", vocab_path: str | None = None,
                     plan: str | None = None, plugin_lib: str | None = None, force: bool = False,
                     provenance: dict | None = None, _checked: tuple | None = None, **config_kwargs) -> pathlib.Path:
    """Write ``repo/<name>/`` from an :mod:`export.onnx` export folder (``model.onnx`` + ``state_spec.json``).

    Returns the model folder. The config is validated (schema + graph I/O) and every input file checked before
    anything is written; the folder is assembled in a hidden staging folder beside the repository
    (:func:`_staged_model_folder`; those that killed runs left are removed first, :func:`remove_dead_stages`) and
    replaces an existing ``repo/<name>/`` only once complete (a failure leaves the previous one as it was). An
    existing ``repo/<name>`` that this generator did not write, or whose files were changed or added to since
    (:func:`foreign_model_files`), is refused with ``FileExistsError`` before anything is written, unless ``force``;
    its ``<version>/model.plan`` is kept when the engine's inputs are unchanged, and its removal noted on stderr
    otherwise (:func:`_carry_plan`).

    Versions: a first write puts the graph into version folder ``1/``; writing over an existing model folder puts it
    into the next version (``N+1/``, N its highest) and keeps version ``N/`` as it was (a rollback's graph; the
    versions before it are removed), while ``config.pbtxt``, the vocabulary and the README are the new model's. The
    config's ``version_policy`` (:data:`VERSION_POLICY`) makes Triton serve only the highest version, so the
    clients of :mod:`export.triton_client`, pinned to the version they read, are refused after a reload
    (``ModelReplacedError``) instead of mixing the old model's vocabulary and states with the new one.

    The repository's ``README.md`` (its index) and, with a TensorRT model, ``serve.sh`` are rewritten too: one that
    this generator did not write (it lacks the mark) is refused likewise, unless ``force``.
    Those checks of the repository are :func:`check_repository`'s, made once the export is checked (``_checked``:
    the token of the CLI's check of the model folder just before, which is then not hashed again). The folder's mark
    records the model it serves (``provenance``: :func:`model_provenance`; default: the export folder's,
    :func:`_export_provenance`); replacing a folder that served another model (another source, type or config, as its
    mark or, for an earlier version's folder, its ``config.pbtxt`` says) prints one note on stderr naming both.

    Raises:
        ValueError: a name that is not one folder name, ``plan``/``plugin_lib`` with a backend other than tensorrt,
            a config out of range, a ``repo`` that is a file, a corrupt ``state_spec.json``, a graph that does not
            parse or does not match it, a ``vocab_path`` that is not a zoo item vocabulary of ``n_items - 1`` ids.
        FileNotFoundError: the export, ``vocab_path``, ``plan`` or ``plugin_lib`` does not exist.
        FileExistsError: repository files or a model folder this generator did not write (without ``force``).
    """
    export_dir, repo = pathlib.Path(export_dir), pathlib.Path(repo).resolve()
    check_repository_args(name, backend, plan, plugin_lib, vocab_path)        # the arguments first, then the export
    spec = read_spec(export_dir)
    graph = export_dir / spec.get("graph", GRAPH_FILE)
    if not graph.exists():
        raise FileNotFoundError(f"{graph} not found (export the model with `python -m export.onnx` first)")
    check_graph(graph, spec)
    if vocab_path:
        check_vocab(vocab_path, spec)
        spec = _served_vocab_fingerprint(spec, export_dir, vocab_path)
    name = name or default_model_name(spec["model_type"], spec["kind"], backend, state)
    text = make_config(spec, name, backend, state, **config_kwargs)
    implicit = spec["kind"] == "step" and backend != "python" and state == "implicit"
    cfg = validate_config(text, implicit_spec(spec) if implicit else spec)
    final = repo / name
    check_repository(repo, name, backend, force, plan, plugin_lib, vocab_path, _checked=_checked)
    provenance = provenance or _export_provenance(export_dir, spec)
    replaced = _replaced_model_note(final, _recorded_provenance(final), provenance) if final.is_dir() else None
    versions = model_versions(final) if final.is_dir() else []
    version = versions[-1] + 1 if versions else 1            # a regeneration: the next version (see the docstring)
    with _staged_model_folder(final) as mdir:                # a failed write keeps the folder that was there
        _write_model_folder(mdir, text, cfg, spec, graph, export_dir, backend, implicit, vocab_path, plan, plugin_lib,
                            version)
        if versions and (final / MODEL_MARK).is_file() and not (force and foreign_model_files(final)):
            _keep_version(final / str(versions[-1]), mdir / str(versions[-1]))     # for a rollback (older ones go)
        seq = cfg.sequence_batching if cfg.HasField("sequence_batching") else None
        (mdir / "README.md").write_text(_readme(
            repo, name, backend, state, spec, cfg.max_batch_size, vocab=bool(vocab_path),
            sequences=None if seq is None else (seq.max_sequence_idle_microseconds / 1e6,
                                                seq.oldest.max_candidate_sequences)), encoding="utf-8")
        _write_model_mark(mdir, provenance)
        notes = [replaced] + ([_carry_plugins(final, mdir), _carry_plan(final, mdir, bool(plan))]
                              if final.is_dir() else [])
    for note in filter(None, notes):
        print(f"note: {note}", file=sys.stderr)
    _repository_files(repo)
    left = _legacy_stages(repo)
    if left:
        print(f"note: {', '.join(map(str, left))}: left by an interrupted export.triton of an earlier version; Triton "
              "refuses to start on a repository holding such a folder: remove it once no export.triton runs on "
              f"{repo}", file=sys.stderr)
    return final


def _keep_version(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Copy the version folder ``src`` of the model folder being replaced to ``dst`` in the new one (hard links where
    the file system allows: :func:`_link_or_copy`), ``__pycache__`` left out."""
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"), copy_function=_link_or_copy)


def _write_model_folder(mdir: pathlib.Path, text: str, cfg, spec: dict, graph: pathlib.Path, export_dir: pathlib.Path,
                        backend: str, implicit: bool, vocab_path, plan, plugin_lib, version: int = 1) -> None:
    """The files of one model folder (config, initial states, vocabulary, graph or plan, plugins) into ``mdir``, the
    graph (plan, python model) into the version folder ``mdir/<version>``."""
    vdir = mdir / str(version)
    vdir.mkdir(parents=True)
    (mdir / "config.pbtxt").write_text(text, encoding="utf-8")
    if cfg.HasField("sequence_batching"):
        by_name = {s["name"]: s for s in spec["state"]}
        for st in cfg.sequence_batching.state:
            f = initial_state_file(by_name[st.input_name])
            if f is not None:
                (mdir / INIT_DIR).mkdir(exist_ok=True)
                (_inside(mdir / INIT_DIR, f, f"the initial state of {st.input_name!r}")
                 .write_bytes(initial_state_bytes(by_name[st.input_name])))
        check_initial_state_files(mdir, cfg)
    if vocab_path:
        shutil.copy(vocab_path, mdir / VOCAB_FILE)
    if backend == "python":
        copy_graph(graph, vdir / GRAPH_FILE, spec)
        shutil.copy(export_dir / SPEC_FILE, vdir / SPEC_FILE)
        shutil.copy(pathlib.Path(__file__).with_name("triton_server.py"), vdir / "model.py")
    elif backend == "onnxruntime":
        if implicit:
            add_sequence_controls(graph, vdir / GRAPH_FILE, spec)
        else:
            copy_graph(graph, vdir / GRAPH_FILE, spec)
        shutil.copy(export_dir / SPEC_FILE, mdir / SPEC_FILE)
    else:  # tensorrt: keep the ONNX beside the version folder, build the plan in the container (serve.sh)
        from .trt import plugin_graph

        odir = mdir / "onnx"
        odir.mkdir()
        copy_graph(graph, odir / GRAPH_FILE, spec)
        if implicit:
            add_sequence_controls(graph, odir / "model_implicit.onnx", spec)
        # trtexec's graphs without the scan ops' local functions: TensorRT's parser before 10.7 would build the scan
        # from those standard-op bodies instead of the plugins (export.trt.plugin_graph)
        for f in odir.glob("*.onnx"):
            f.write_bytes(plugin_graph(f.read_bytes()))
        shutil.copy(export_dir / SPEC_FILE, mdir / SPEC_FILE)
        if plan:
            shutil.copy(plan, vdir / PLAN_FILE)
        sh = mdir / ENGINE_SCRIPT
        sh.write_text(_build_engine_sh(cfg.name, implicit_spec(spec) if implicit else spec, cfg.max_batch_size,
                                       implicit), encoding="utf-8")
        sh.chmod(0o755)
        pdir = mdir / "plugins"
        pdir.mkdir()
        if not plugin_lib:                                  # one built by `python -m export.build_plugins`, if any
            try:
                from .build_plugins import library_path

                cand = library_path()
                plugin_lib = str(cand) if cand.exists() else None
            except Exception:
                plugin_lib = None
        if plugin_lib:
            shutil.copy(plugin_lib, pdir / ps.PLUGIN_LIBRARY)
        else:
            (pdir / "README.md").write_text(f"Put {ps.PLUGIN_LIBRARY} (built for the container's TensorRT by "
                                            "`python -m export.build_plugins`) here.\n", encoding="utf-8")


def export_and_write(model, repo: str | os.PathLike, topk: int = 10, work_dir: str | None = None,
                     exclude_seen: bool = False, user_vector: bool = False, exclude_items: Sequence[int] = (),
                     candidates: bool = False, source: str | None = None, **kwargs) -> pathlib.Path:
    """Export a zoo model with :func:`export.onnx.export_model` (verified) and write its Triton repository
    (``exclude_seen``: the graph ranks the history's items last, step graphs keep a ``seen`` state; ``user_vector``:
    the graph also outputs the query vector of retrieval; ``exclude_items``: internal indices never recommended;
    ``candidates``: a ``candidates`` input restricts each request's ranking; ``source``: the name or folder the
    model was loaded from, recorded in the model folder, default ``model.name_or_path``: :func:`model_provenance`)."""
    from .onnx import export_model

    with tempfile.TemporaryDirectory(prefix="zoo-triton-export-") as tmp:
        out = pathlib.Path(work_dir or tmp)
        export_model(model, out, topk=topk, verify=kwargs.pop("verify", True), exclude_seen=exclude_seen,
                     user_vector=user_vector, exclude_items=exclude_items, candidates=candidates)
        vocab = None
        if getattr(model, "item_vocab", None) is not None:
            model.item_vocab.save(str(out))
            vocab = str(out / VOCAB_FILE)
        return write_repository(out, repo, vocab_path=vocab, provenance=model_provenance(model, source), **kwargs)


def _unreadable(path: str) -> str | None:
    """Why the file ``path`` cannot be read (``"no such file"``, ``"cannot read it (Permission denied)"``), or
    ``None`` when it can."""
    if not os.path.exists(path):                            # a dangling link too
        return "no such file"
    if os.path.isdir(path):
        return "is a folder, not a file"
    try:
        with open(path, "rb"):
            return None
    except OSError as e:
        return f"cannot read it ({e.strerror or e})"


_NUMBERS = ("max_batch_size", "idle_timeout_s", "max_candidate_sequences", "queue_delay_us", "instances")


def hub_source(model: str, revision: str | None = None, subfolder: str = "") -> str:
    """The ``source`` a model folder records (:func:`model_provenance`) for ``--model model`` with ``--revision`` /
    ``--subfolder``: a local folder's ``subfolder`` joined to it (``runs/a/best``); a Hub id with them appended
    (``org/name@v1/best``; ``@`` and the revision only for one other than main, the default): another revision or
    subfolder is another source. ``model`` itself when neither is given."""
    if os.path.isdir(model):
        return os.path.join(model, subfolder) if subfolder else model
    return (model + (f"@{revision}" if revision not in (None, "main") else "")
            + (f"/{subfolder.strip('/')}" if subfolder else ""))


def main(argv: Sequence[str] | None = None) -> int:
    from zoo.pretrained import add_hub_options, hub_options

    p = argparse.ArgumentParser(allow_abbrev=False,
                                prog=command_prog("export.triton"), description=__doc__.split("\n\n")[0],
                                epilog=EXIT_CODES)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="zoo model name (bundled/Hub) or folder")
    src.add_argument("--onnx", help="an export.onnx output folder (model.onnx + state_spec.json) to reuse")
    add_hub_options(p)
    p.add_argument("--repo", required=True, help="Triton model repository folder to write into")
    p.add_argument("--backend", choices=BACKENDS, default="onnxruntime",
                   help="Triton backend that serves the graph: onnxruntime (default), tensorrt (an engine built with "
                        "the zoo's plugins, GPU) or python (ONNX Runtime in Triton's python backend)")
    p.add_argument("--state", choices=STATES, default=None,
                   help="step graphs: implicit (the sequence batcher keeps each sequence's state; default) or explicit "
                        "(the client keeps it); window graphs are served stateless and take no --state")
    p.add_argument("--name", help="model name in the repository (default <model_type>_<kind>_<backend>[_<state>])")
    p.add_argument("--topk", type=int, default=None,
                   help="with --model: top-k of the exported graph, 1 to the items the model can recommend (default "
                        "10)")
    p.add_argument("--exclude-seen", action="store_true",
                   help="with --model: export the graph with the history's items ranked last (a 'seen' state per "
                        "sequence; see export.onnx --exclude-seen)")
    p.add_argument("--exclude-items", metavar="FILE",
                   help="with --model: item ids never to recommend, one per line (see export.onnx --exclude-items)")
    p.add_argument("--user-vector", action="store_true",
                   help="with --model: the graph also outputs user_vector, the query vector of retrieval over the "
                        "item vectors of python -m zoo.embed (see export.onnx --user-vector)")
    p.add_argument("--candidates", action="store_true",
                   help="with --model: requests may carry candidates, the items to choose from (see export.onnx "
                        "--candidates)")
    p.add_argument("--idle-timeout-s", type=float, default=None,
                   help="max_sequence_idle_microseconds / 1e6: how long an idle sequence keeps its slot (default "
                        "600; sequence batcher only: implicit state of a step graph)")
    p.add_argument("--max-batch-size", type=int, default=64,
                   help="the config's max_batch_size: most requests Triton batches into one call (default 64)")
    p.add_argument("--max-candidate-sequences", type=int, default=None,
                   help="live sequences the sequence batcher holds at once (default 1024; sequence batcher only)")
    p.add_argument("--queue-delay-us", type=int, default=500,
                   help="how long Triton waits to fill a batch, in microseconds (the batcher's "
                        "max_queue_delay_microseconds; default 500)")
    p.add_argument("--instances", type=int, default=1,
                   help="model instances Triton runs side by side (instance_group count; default 1)")
    p.add_argument("--vocab", help="item_vocab.json to ship (with --onnx; --model ships the model's own)")
    p.add_argument("--force", action="store_true",
                   help="overwrite the repository's README.md / serve.sh, and replace the model folder --name names, "
                        "even when python -m export.triton did not write them (or its files changed since). With or "
                        "without it, the index README.md is regenerated at each run: only the text written below its "
                        "closing 'written by hand below this line' comment is kept")
    p.add_argument("--plan", help="prebuilt TensorRT engine to copy to 1/model.plan")
    p.add_argument("--plugin-lib", help=f"{ps.PLUGIN_LIBRARY} to copy into <name>/plugins/ (default: the one "
                   "`python -m export.build_plugins` built, when present)")
    p.add_argument("--no-verify", action="store_true", help="skip export.verify when exporting --model")
    a = p.parse_args(argv)
    # the sequence batcher's flags, None when not given (refused below for a variant without a sequence batcher)
    given = {flag: v for flag, v in (("--state", a.state), ("--idle-timeout-s", a.idle_timeout_s),
                                     ("--max-candidate-sequences", a.max_candidate_sequences)) if v is not None}
    kw = dict(name=a.name, backend=a.backend, state=a.state or "implicit", plan=a.plan, plugin_lib=a.plugin_lib,
              max_batch_size=a.max_batch_size, idle_timeout_s=600.0 if a.idle_timeout_s is None else a.idle_timeout_s,
              max_candidate_sequences=1024 if a.max_candidate_sequences is None else a.max_candidate_sequences,
              queue_delay_us=a.queue_delay_us, instances=a.instances, force=a.force)
    if a.onnx and (a.revision is not None or a.subfolder):
        p.error(f"{'--revision' if a.revision is not None else '--subfolder'} says which checkpoint --model names; "
                "an --onnx folder is an export, read as it is")
    try:                                                    # an empty --revision, or one for a local folder
        hub = hub_options(a)
    except ValueError as e:
        p.error(str(e))
    if a.onnx and a.topk is not None:
        p.error("--topk is fixed by the graph in --onnx (export.onnx --topk); it applies to --model")
    if a.onnx and a.exclude_items:
        p.error("--exclude-items is fixed by the graph in --onnx (export.onnx --exclude-items); it applies to --model")
    if a.model and a.vocab:
        p.error("--vocab applies to --onnx: --model ships the model's own item vocabulary (none for a model "
                "without one; export it with python -m export.onnx and pass --onnx DIR --vocab FILE to ship one)")
    if a.topk is not None and a.topk < 1:                   # above the catalogue: once the model is loaded
        p.error(f"--topk: expected an int >= 1, got {a.topk}")
    bad = config_number_problems(**{k: v for k, v in kw.items() if k in _NUMBERS})
    if bad:                                                 # before any export: name each flag
        p.error("; ".join(f"{NUMBER_FLAGS.get(n, n)}: {m}" for n, m in bad))
    if a.repo == "-":                                       # never a folder named '-' by accident
        p.error("--repo -: '-' means standard output, where a repository cannot go; name a folder (./- for one "
                "named '-')")
    try:                                                    # write_repository's own checks, before any export
        checked = check_repository(a.repo, a.name, a.backend, a.force, a.plan, a.plugin_lib, flags=ARG_FLAGS)
    except (ValueError, OSError) as e:
        p.error(str(e))

    def check_model_folder(name: str) -> tuple:
        """Usage error for a model folder that writing would replace but this generator did not write."""
        try:
            return _check_model_folder(pathlib.Path(a.repo).resolve() / name, a.force)
        except FileExistsError as e:
            p.error(str(e))

    if not a.name and a.onnx:                               # the default name (a broken export: reported below)
        with contextlib.suppress(OSError, ValueError, KeyError):
            spec = read_spec(a.onnx)
            checked = check_model_folder(default_model_name(spec["model_type"], spec["kind"], a.backend,
                                                            kw["state"]))
    # what the run needs, before any export: the schema every config is validated with, and ONNX to export --model
    for module in ("tritonclient.grpc.model_config_pb2",) + (() if a.onnx else ("onnx", "onnxruntime")):
        require(module, "python -m export.triton", cli=True)
    errors: tuple = (TritonConfigError, OSError, ValueError)
    verification_error = None                               # export.onnx's, once imported (--model: torch)

    def sequence_flags(kind: str, where: str) -> None:
        """Usage error for a sequence-batcher flag given where the variant has no sequence batcher."""
        if kind != "step":
            bad = list(given)
            why = (f"{where} is a window graph (no exact step), served stateless with dynamic batching whatever "
                   "--state says: there is no sequence state")
        else:
            bad = [f for f in given if f != "--state"] if kw["state"] == "explicit" else []
            why = "--state explicit serves with dynamic batching: the client keeps each user's state, Triton none"
        if bad:
            p.error(f"{', '.join(bad)}: {why}, so {'they do' if len(bad) > 1 else 'it does'} not apply; leave "
                    f"{'them' if len(bad) > 1 else 'it'} out")

    try:
        if a.onnx:
            sequence_flags(read_spec(a.onnx)["kind"], f"the graph in {a.onnx}")
            for flag, key in (("--exclude-seen", "exclude_seen"), ("--user-vector", "user_vector"),
                              ("--candidates", "candidates")):
                if getattr(a, key) and not read_spec(a.onnx).get(key):
                    raise ValueError(f"{flag}: the graph in {a.onnx} was exported without it; re-export it with "
                                     f"`python -m export.onnx {flag}` or pass --model")
            if a.vocab:                                     # an input that cannot be read: the run fails (1)
                problem = _unreadable(a.vocab)
                if problem:                                 # named by its flag (write_repository names vocab_path)
                    exit_with(EXIT_ERROR, f"error: --vocab {a.vocab}: {problem}")
            vocab = a.vocab or (os.path.join(a.onnx, VOCAB_FILE) if os.path.exists(os.path.join(a.onnx, VOCAB_FILE))
                                else None)
            # the model folder checked above, nothing run since: write_repository does not hash it again
            mdir = write_repository(a.onnx, a.repo, vocab_path=vocab, _checked=checked, **kw)
        else:
            from .onnx import (ExportError, VerificationError, _load_model, excluded_indices, no_step_graph,
                               no_step_graph_message, topk_usage_error)

            errors += (ExportError, VerificationError)
            verification_error = VerificationError
            try:
                model = _load_model(a.model, **hub)
            except (OSError, ValueError) as e:                  # named by its flag, as in the other commands
                exit_with(EXIT_ERROR, f"error: --model {a.model}: {e}")
            kind = "step" if getattr(model, "has_exact_step", False) else "window"
            refused = no_step_graph(model) if kind == "step" else None
            if refused is not None:                         # an exact step but no step exporter: no --kind here
                raise ExportError(no_step_graph_message(refused, "export.triton", a.model))
            sequence_flags(kind, f"--model {a.model}")
            if not a.name:                                  # the default name is known now: before the export
                check_model_folder(default_model_name(model.config.model_type, kind, a.backend, kw["state"]))
            excluded = excluded_indices(model, a.exclude_items)         # an unknown id: bad data in the file (1)
            topk = 10 if a.topk is None else a.topk
            problem = topk_usage_error(model, topk, excluded)
            if problem:                                     # an option value the model refuses: usage (2)
                p.error(problem)
            mdir = export_and_write(model, a.repo, topk=topk, verify=not a.no_verify,
                                    exclude_seen=a.exclude_seen, user_vector=a.user_vector, candidates=a.candidates,
                                    exclude_items=excluded, source=hub_source(a.model, **hub), **kw)
    except errors as e:
        failed = verification_error is not None and isinstance(e, verification_error)
        report = getattr(e, "report", None) if failed else None
        # export_model's message names the temporary folder it exported into: name the repository instead
        print(f"error: verification FAILED, nothing written to {a.repo}: {report.worst_message()}" if report is not None
              else f"error: {e}", file=sys.stderr)
        return EXIT_VERIFY_FAILED if failed else EXIT_ERROR
    print(f"wrote {mdir} (config validated with tritonclient's model_config_pb2); see {mdir / 'README.md'}")
    return EXIT_OK


if __name__ == "__main__":
    from .fsutil import run_cli

    sys.exit(run_cli(main))
