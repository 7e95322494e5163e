"""TensorRT engines for the zoo's stepwise graphs, with the scan nodes bound to the plugins in ``plugins/``.

CLI::

    python -m export.trt --model NAME_OR_PATH --out DIR [--fp16] [--workspace 2G] [--topk K]
                         [--max-batch 2048] [--opt-batch 64] [--max-steps 200] [--version-compatible]
                         [--plugin-lib PATH] [--build-dir build/plugins] [--rebuild-plugins] [--quick] [--no-emulate]
                         [--candidates [--max-candidates 1024]]

What it does, in order, printing a report as it goes:

1. exports the model's step graph to ``DIR/model.onnx`` with :func:`export.onnx.export_model` (one ``SelectiveScan`` /
   ``LRUScan`` / ``SSDScan`` node per layer, attributes from :mod:`export.plugin_spec`) and runs the ONNX-level
   verification against PyTorch (ONNX Runtime, CPU) — always, even when TensorRT is missing. Time-aware step models
   (TiM4Rec-causal) are exported with ``time_input="gaps"`` (``export.onnx --time-input gaps``): float32
   ``time_gaps`` in, no float64 ``last_ts`` state (the client keeps it and differences the float64 timestamps), since
   the default float64 ``timestamps`` form can never become an engine (TensorRT has no float64);
2. builds ``libzoo_trt_plugins.so`` (:mod:`export.build_plugins`; an incremental CMake build) unless the one in the
   build folder was built from the plugin sources as they are now (a digest of them is kept beside it:
   :func:`ensure_plugin_library`; ``--rebuild-plugins`` builds anyway, ``--plugin-lib`` uses a library as it is), and
   loads it into TensorRT's plugin registry;
3. builds the engine: strongly typed network (TensorRT >= 10; precision comes from the graph's dtypes — ``--fp16``
   converts the graph to fp16 weights/activations with export.onnx's fp16 path (:func:`export.onnx.convert_to_fp16`),
   keeping graph I/O, states and the scan nodes in fp32, and verifies that fp16 graph with ONNX Runtime first under
   export.verify's fp16 criteria), TF32 off for fp32, aliased plugin I/O preview feature on, one optimisation
   profile over
   batch ``[1, opt, max]`` and steps ``T in [1, 1, max_steps]``; checks that every scan node became a plugin layer;
4. runs the engine through the shared verifier (:func:`export.verify.verify_export`: priming with a history, then
   many single steps, each side carrying its own state; plus a many-row top-k case) under the tolerance table
   :data:`TOLERANCES` of the engine's precision (with ``--fp16`` also export.verify's fp16 score error of the score
   scale, which the table's row leaves unset; the report says ``fp16``);
5. writes ``DIR/model.engine`` only when that verification passes, and ``DIR/trt_report.json`` always (each whole:
   written beside, then renamed into place, so an interruption never leaves a file cut short; an earlier run's report
   leaves ``DIR`` as step 1 moves the new graph in, so an interrupted run never leaves it beside a graph it does not
   describe). A verified engine
   already in ``DIR`` -- ``DIR``'s report says it was verified and written (exit code 0), and its size and sha256 are
   the report's -- moves with its report to ``DIR/previous/`` when a run that can build starts (replacing the set
   there), with copies of its graph, ``state_spec.json`` and item vocabulary (the report's paths rewritten to them),
   so ``DIR`` never pairs an old engine with a new report and a failed rebuild loses nothing needed to serve the
   earlier engine. Any other engine there (cut short, copied in, left beside another run's report) is set aside as
   ``DIR/model.engine.unverified``, and ``previous/`` is left as it is. The TensorRT/GPU probe and ``--plugin-lib``
   come first: a run that cannot build an engine changes nothing in a ``DIR`` holding a verified one (it stops,
   exit 1, before the export: the export would replace the graph that engine serves with, and nothing could take
   its place), and a missing ``--plugin-lib`` is an error before any work. The model is loaded next, still before
   ``DIR`` is touched: a ``--model`` that cannot be loaded (a typo, a folder that is not a saved zoo model) stops
   the run, exit 1, with ``DIR`` not created, or as it was (its engine and report where they were), and no report
   written; so does an ``--exclude-items`` file that cannot be read or names an item the model does not know, and a
   ``--topk`` above the items the model can recommend is a usage error (2) there. ``DIR`` may not be a model
   checkpoint (``config.json`` / ``model.safetensors``: the export would replace its ``item_vocab.json``). One run
   at a time per ``DIR``: it is made (when missing) and locked before all of this and held to the end
   (:func:`export.fsutil.held_output_folder`; a ``DIR`` made for a run that wrote nothing is removed again); a
   second run into it meanwhile stops at once, exit 1, with ``DIR`` as it was. The report is strict JSON: a failed
   verification's non-finite errors are the strings ``"inf"``/``"nan"`` there (:func:`report_json`).

Exit codes (the shared table of every command, :data:`export.fsutil.EXIT_CODES`; the report's ``exit_code`` is the
same number). The ``ERROR`` lines and a ``RESULT`` line of a run that did not succeed go to stderr, the stages and
their tables to stdout:

* ``0`` engine built and verified, written;
* ``1`` the run failed: a verified engine in ``DIR`` on a machine that cannot build one, before any work, ``DIR``
  untouched; a ``--model`` that cannot be loaded, before ``DIR`` is touched (one ``ERROR: --model ...`` line, no
  report; ``DIR`` not created, or left as it was), and so an ``--exclude-items`` file it cannot use; a model with
  no step graph (no exact step, or a type export.onnx has no step exporter for: the line says how to export its
  window graph, and what gives it a step graph); export /
  plugin build / engine build failure, scan nodes not bound to plugins, a graph with float64 I/O: TensorRT has no
  float64, so a float64-timestamps graph (``run(..., time_input="timestamps")``) stops after the ONNX export +
  verification with a message saying so; a verified engine that could not be written;
* ``2`` usage error (argparse's status), before any work: a bad, missing or conflicting option, an engine setting out
  of range, an ``--out`` that cannot be written or is a model checkpoint, a ``--plugin-lib`` that does not exist, a
  ``--topk`` above the items the loaded model can recommend;
* ``3`` verification failed (the ONNX graph against PyTorch -- ONNX Runtime unable to run it included, as a graph
  traced at one fixed length -- or the engine against PyTorch); nothing is written for the failing artefact;
* ``4`` TensorRT builder or CUDA GPU missing: the ONNX graph was exported and verified, the plugin library was built
  and (when ``tensorrt_lean`` is installed) loaded and checked, and the report names exactly what is missing. The
  graph was also verified against PyTorch with its scan nodes run by the plugins' own code on the CPU (the plugin
  classes and CUDA kernels compiled against ``plugins/emu/``; :mod:`export.emulated_plugins`; ``--no-emulate`` skips
  it, a missing C++ compiler or TensorRT headers skip it with a message); if that fails, the exit code is ``3``. The
  graph runs in a child process for that check, so a plugin that reads or writes out of bounds kills the child, not
  the run: a crash is a failure (exit ``3``) whose report names the signal and the plugin run it happened in; so is
  a hang (the child gives no answer for ``EMULATED_TIMEOUT_S`` seconds and is killed).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import plugin_spec as ps
from .deps import require
from .fsutil import (EXIT_CODES, EXIT_ERROR, EXIT_MISSING, EXIT_OK, EXIT_VERIFY_FAILED, FolderBusy, UsageError,
                     command_prog, file_sha256, held_output_folder, nonfinite_text, strict_json)

ENGINE_FILE = "model.engine"
#: where run() sets aside an engine found in the output folder that its report does not say was verified
UNVERIFIED_ENGINE_FILE = "model.engine.unverified"
#: where run() keeps the engine (and report) of an earlier run while it builds a new one
PREVIOUS_DIR = "previous"
REPORT_FILE = "trt_report.json"

#: ``--candidates``: the largest candidate list (``C``) of the engine's optimisation profile by default
MAX_CANDIDATES = 1024

#: engine vs PyTorch tolerances per precision (max abs score error on every real item, state error, top-k agreement).
#: fp32 uses the ONNX-level tolerance of export.verify for scores (TF32 is disabled); fp16 activations carry ~1e-3
#: relative rounding per op, hence the looser numbers; an fp16 engine is also held to export.verify's fp16 score
#: error of the score scale (``score_rtol``, which these rows leave unset). Not yet calibrated on a real engine (no
#: TensorRT builder was available when this was written): adjust after the first GPU run.
TOLERANCES = {
    "fp32": {"score_atol": 1e-4, "state_atol": 1e-3, "topk_min_agreement": 0.999},
    # fp16: first guess, to be checked on a GPU; ONNX Runtime fp16 on CPU measured 94.5% in-order top-10 agreement
    # (near-tie swaps) on the trained ML-1M models, so the engine row asks for 90% like export.verify's fp16 row
    "fp16": {"score_atol": 5e-2, "state_atol": 5e-2, "topk_min_agreement": 0.90},
}


class TrtError(RuntimeError):
    pass


class SettingError(UsageError):
    """A setting of :func:`run` the loaded model refuses (a ``topk`` above the items it can recommend): raised before
    ``out_dir`` is touched; the CLI's usage error (2), as the settings :func:`check_run_numbers` refuses."""


# ------------------------------------------------------------------------------------------------ environment
@dataclass
class Environment:
    """What this machine has for building / running TensorRT engines."""

    tensorrt: Any = None                 # the full `tensorrt` module (builder + ONNX parser), or None
    tensorrt_version: str | None = None
    tensorrt_error: str | None = None
    lean: Any = None                     # tensorrt_lean_bindings (runtime only), or None
    lean_version: str | None = None
    lean_error: str | None = None        # why an installed lean runtime could not be imported (None: absent or fine)
    gpu: str | None = None               # device name
    gpu_error: str | None = None
    missing: list = field(default_factory=list)

    @property
    def can_build(self) -> bool:
        return self.tensorrt is not None and self.gpu is not None


def probe_environment() -> Environment:
    env = Environment()
    try:
        import tensorrt as trt  # noqa: F401

        if not hasattr(trt, "Builder"):
            raise ImportError("the installed `tensorrt` module has no Builder (runtime-only package)")
        env.tensorrt, env.tensorrt_version = trt, getattr(trt, "__version__", "?")
    except Exception as e:  # ImportError, or OSError for a missing libnvinfer.so / libnvonnxparser.so
        env.tensorrt_error = f"{type(e).__name__}: {e}"
    for mod in ("tensorrt_lean", "tensorrt_lean_bindings"):
        try:
            lean = __import__(mod)
            if hasattr(lean, "get_plugin_registry"):
                env.lean, env.lean_version = lean, getattr(lean, "__version__", "?")
                break
        except ModuleNotFoundError as e:
            if e.name != mod:                  # the module is there but something it needs is not
                env.lean_error = f"{mod}: {type(e).__name__}: {e}"
        except Exception as e:                 # ImportError / OSError for a missing libnvinfer_lean.so, ...
            env.lean_error = f"{mod}: {type(e).__name__}: {e}"
    if env.lean is not None:
        env.lean_error = None
    try:
        import torch

        if torch.cuda.is_available():
            env.gpu = torch.cuda.get_device_name(0)
        else:
            env.gpu_error = (f"torch {torch.__version__} reports no CUDA device"
                             + ("" if torch.version.cuda else " (CPU-only torch build)"))
    except Exception as e:
        env.gpu_error = f"{type(e).__name__}: {e}"
    if env.tensorrt is None:
        env.missing.append("TensorRT builder + ONNX parser: `import tensorrt` failed (" + env.tensorrt_error + "). "
                           "Install the full TensorRT (libnvinfer, libnvonnxparser and the `tensorrt` Python package, "
                           "e.g. NVIDIA's wheels or a TensorRT container); the PyPI `tensorrt-cu13-libs` is only a "
                           "placeholder that downloads from NVIDIA's index at install time"
                           + (f"; the lean runtime {env.lean_version} is installed but cannot build engines"
                              if env.lean is not None else ""))
    if env.gpu is None:
        env.missing.append(f"CUDA GPU: {env.gpu_error}")
    return env


# ------------------------------------------------------------------------------------------------ plugin library
def ensure_plugin_library(plugin_lib: str | None = None, build_dir: str | None = None, rebuild: bool = False,
                          say=print) -> Path:
    """Path of libzoo_trt_plugins.so, current with the plugin sources: a given ``plugin_lib`` (or
    ``$ZOO_TRT_PLUGIN_LIB``) as it is; else the one in the build folder, (re)built with CMake (export.build_plugins,
    incremental) when it is absent, when ``rebuild``, or when the sources changed since it was built
    (export.build_plugins.plugin_sources_digest, recorded beside it by each export.build_plugins build, whether this
    function or ``python -m export.build_plugins`` ran it; a library without that record, built by hand or by an
    older version, is rebuilt too). So an engine never gets other plugin code than the CPU-emulated check
    verified (export.build_plugins.build_emulated, which rebuilds on the same sources). Raises :class:`TrtError`
    when the library cannot be had."""
    from . import build_plugins as BP

    if plugin_lib:
        p = Path(plugin_lib)
        if not p.is_file():
            raise TrtError(f"plugin library {p} does not exist")
        return p
    p = BP.library_path(build_dir)
    if p.is_file() and os.environ.get("ZOO_TRT_PLUGIN_LIB"):      # a library named by the environment: as it is
        return p
    stamp = BP.sources_stamp(p)
    digest = BP.plugin_sources_digest()
    built_from = stamp.read_text(encoding="utf-8").strip() if p.is_file() and stamp.is_file() else None
    if built_from == digest and not rebuild:
        return p
    why = ("absent" if not p.is_file() else "asked to rebuild" if rebuild
           else f"no record of the sources {p.name} was built from" if built_from is None
           else f"the sources in {BP.PLUGINS_DIR} changed since {p.name} was built")
    say(f"building the plugin library ({why}; {BP.PLUGINS_DIR} -> {p.parent}) ...")
    t0 = time.perf_counter()
    stale = "" if not p.is_file() else (f" (the {p.name} there was not used: it may hold other plugin code than "
                                        "plugins/ does; give a library to use as it is with --plugin-lib)")
    try:
        res = BP.build(build_dir, quiet=True)
    except (BP.BuildError, OSError) as e:          # OSError: a build folder that cannot be made or written
        raise TrtError(f"{e}{stale}") from e
    if res["plugins"] is None:
        raise TrtError(f"{ps.PLUGIN_LIBRARY} was not built: {res['tensorrt_headers']}{stale}")
    lib = Path(res["plugins"])
    if res.get("stamp_error"):
        say(f"  {res['stamp_error']}")
    say(f"  built {lib} (TensorRT headers {res['tensorrt_header_version']} from {res['tensorrt_headers']}) "
        f"[{time.perf_counter() - t0:.1f} s]")
    return lib


def _load_plugins(trt_module, lib: Path):
    """Load ``lib`` into the registry once per process (a second load would register the creators twice)."""
    reg = trt_module.get_plugin_registry()
    first = next(iter(ps.SCAN_OPS))
    if reg.get_creator(first, ps.PLUGIN_VERSION, ps.PLUGIN_NAMESPACE) is None:
        if reg.load_library(str(lib)) is None:
            raise TrtError(f"the plugin registry could not load {lib}")
    return reg


def check_registry(trt_module, lib: Path) -> list[dict]:
    """Load ``lib`` into ``trt_module``'s plugin registry and return one row per spec op: the creator found under
    (op_type, PLUGIN_VERSION, PLUGIN_NAMESPACE) and its field names. Raises :class:`TrtError` on any mismatch."""
    reg = _load_plugins(trt_module, lib)
    rows, bad = [], []
    for op in ps.SCAN_OPS.values():
        c = reg.get_creator(op.op_type, ps.PLUGIN_VERSION, ps.PLUGIN_NAMESPACE)
        if c is None:
            bad.append(f"no creator {op.op_type!r} v{ps.PLUGIN_VERSION} in namespace {ps.PLUGIN_NAMESPACE!r}")
            continue
        fields = [f.name for f in c.field_names]
        if fields != list(op.attributes):
            bad.append(f"{op.op_type}: creator fields {fields} != spec attributes {list(op.attributes)}")
        rows.append({"op_type": c.name, "version": c.plugin_version, "namespace": c.plugin_namespace,
                     "fields": fields, "interface": type(c).__name__})
    if bad:
        raise TrtError("; ".join(bad))
    return rows


# ------------------------------------------------------------------------------------------------ engine
def _parse_size(s: str | int) -> int:
    """Bytes from a workspace size: an int (bytes), ``"512M"``, ``"2G"``, ``"64K"`` (also ``"512MB"``, ``"512MiB"``,
    any case; binary units), ``"1048576B"`` (bytes) or a plain number of MiB.

    Raises:
        ValueError: not a size, or not positive.
    """
    if isinstance(s, int):
        n = s
    else:
        # K/M/G, optionally followed by B or iB (binary units all); a B alone is bytes; no unit is MiB
        m = re.fullmatch(r"(.*?)\s*(?:([KMG])(?:I?B)?|(B))?", s.strip().upper())
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m[2]] if m[2] else 1 if m[3] else 1 << 20
        try:
            n = int(float(m[1]) * unit)
        except (ValueError, OverflowError):  # OverflowError: "inf", "1e400" (int() of an infinite float)
            raise ValueError(f"workspace must be a size such as 512M or 2G (a plain number is MiB), got {s!r}") \
                from None
    if n <= 0:
        raise ValueError(f"workspace must be positive, got {s!r}")
    return n


def check_run_numbers(*, workspace: str | int, topk: int, max_batch: int, opt_batch: int, max_steps: int,
                      max_candidates: int = MAX_CANDIDATES) -> None:
    """Raise ``ValueError`` naming every out-of-range engine setting, before :func:`run` touches ``out_dir`` (so a
    typo never deletes the engine already there): workspace a positive size, ``topk``/``max_steps``/
    ``max_candidates`` >= 1, ``1 <= opt_batch <= max_batch`` (the optimisation profile's opt must lie inside
    [1, max])."""
    bad = []
    try:
        _parse_size(workspace)
    except ValueError as e:
        bad.append(str(e))
    bad += [f"{n} must be an int >= 1, got {v}" for n, v in (("topk", topk), ("max_batch", max_batch),
                                                            ("opt_batch", opt_batch), ("max_steps", max_steps),
                                                            ("max_candidates", max_candidates))
            if int(v) != v or v < 1]
    if not bad and opt_batch > max_batch:
        bad.append(f"opt_batch ({opt_batch}) must be <= max_batch ({max_batch}): the profile's opt lies in [1, max]")
    if bad:
        raise ValueError("; ".join(bad))


def to_fp16_graph(graph: bytes, spec: dict) -> bytes:
    """fp16 weights/activations, fp32 graph I/O (item ids, states, scores), state paths and scan nodes: the fp16 path
    of export.onnx (:func:`export.onnx.convert_to_fp16`, which inserts the Casts explicitly)."""
    import onnx

    from . import onnx as E

    return E.convert_to_fp16(onnx.load_from_string(graph), spec).SerializeToString()


@dataclass
class EngineBuild:
    engine: Any
    serialized: bytes
    n_plugin_layers: int
    n_scan_nodes: int
    seconds: float


def profile_shapes(name: str, dims: Sequence[int], *, opt_batch: int = 64, max_batch: int = 2048,
                   max_steps: int = 200, max_candidates: int = MAX_CANDIDATES) -> tuple[list, list, list]:
    """``(min, opt, max)`` of the optimisation profile for network input ``name`` of ``dims`` (-1 = dynamic): fixed
    axes as they are, the batch (axis 0) ``[1, opt_batch, max_batch]``, a ``--candidates`` graph's list axis ``C``
    ``[1, min(64, max_candidates), max_candidates]``, the step axis ``T`` of ``item_ids`` / ``time_gaps``
    ``[1, 1, max_steps]``."""
    lo, opt, hi = [], [], []
    for ax, d in enumerate(dims):
        if d >= 0:
            lo.append(d), opt.append(d), hi.append(d)
        elif ax == 0:
            lo.append(1), opt.append(min(opt_batch, max_batch)), hi.append(max_batch)
        elif name == "candidates":
            lo.append(1), opt.append(min(64, max_candidates)), hi.append(max_candidates)
        else:
            lo.append(1), opt.append(1), hi.append(max_steps)
    return lo, opt, hi


def plugin_graph(graph: bytes) -> bytes:
    """``graph`` (serialized) without the model-local functions that define the scan ops in standard ONNX ops (the
    bodies ONNX Runtime runs): TensorRT's parser before 10.7 imports a node from a local function of its name before
    it asks the plugin registry, so with them the engine would be built from the function bodies and never use the
    plugins; without them every 10.x parser binds the scan nodes to the registered plugins (or fails, naming the op,
    when the plugin library is not loaded). Other functions are kept."""
    import onnx

    mp = onnx.load_from_string(graph)
    keep = [f for f in mp.functions if not (f.domain == ps.ONNX_DOMAIN and f.name in ps.SCAN_OPS)]
    if len(keep) == len(mp.functions):
        return graph
    del mp.functions[:]
    mp.functions.extend(keep)
    return mp.SerializeToString()


def build_engine(trt, graph: bytes, spec: dict, lib: Path, *, precision: str = "fp32", workspace: int = 2 << 30,
                 opt_batch: int = 64, max_batch: int = 2048, max_steps: int = 200,
                 version_compatible: bool = False, max_candidates: int = MAX_CANDIDATES, say=print) -> EngineBuild:
    """Parse ``graph`` with the plugins registered, build and deserialize the engine. Dynamic axes get the profile
    ``[1, opt, max]``: the batch ``[1, opt_batch, max_batch]``, the step axis ``T`` ``[1, 1, max_steps]``, and a
    ``--candidates`` graph's list axis ``C`` ``[1, min(64, max_candidates), max_candidates]`` (at least one column:
    a row of 0s restricts nothing)."""
    import onnx

    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    reg = _load_plugins(trt, lib)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if hasattr(trt, "OnnxParserFlag") and hasattr(trt.OnnxParserFlag, "ENABLE_PLUGIN_OVERRIDE"):
        parser.set_flag(trt.OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE)
    graph = plugin_graph(graph)
    if not parser.parse(graph):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TrtError(f"ONNX parser failed: {errs}")
    mp = onnx.load_from_string(graph)
    n_scan = sum(1 for n in mp.graph.node if n.domain == ps.ONNX_DOMAIN and n.op_type in ps.SCAN_OPS)
    plugin_types = [trt.LayerType.PLUGIN_V3] if hasattr(trt.LayerType, "PLUGIN_V3") else []
    n_plugin = sum(1 for i in range(network.num_layers) if network.get_layer(i).type in plugin_types)
    if n_plugin != n_scan:
        raise TrtError(f"{n_scan} scan nodes in the graph but {n_plugin} IPluginV3 layers in the network: the ONNX "
                       f"parser did not bind every scan node to the {ps.PLUGIN_NAMESPACE}:: plugins (registry has "
                       f"{[c.name for c in reg.all_creators if c.plugin_namespace == ps.PLUGIN_NAMESPACE]})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if hasattr(trt, "PreviewFeature") and hasattr(trt.PreviewFeature, "ALIASED_PLUGIN_IO_10_03"):
        config.set_preview_feature(trt.PreviewFeature.ALIASED_PLUGIN_IO_10_03, True)
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        config.plugins_to_serialize = [str(lib)]
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        profile.set_shape(t.name, *profile_shapes(t.name, list(t.shape), opt_batch=opt_batch, max_batch=max_batch,
                                                  max_steps=max_steps, max_candidates=max_candidates))
    config.add_optimization_profile(profile)
    say(f"  building the engine ({precision}, {n_plugin} plugin layers, batch [1, {opt_batch}, {max_batch}], "
        f"T [1, 1, {max_steps}], workspace {workspace >> 20} MiB) ...")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TrtError("builder.build_serialized_network returned None (see the TensorRT log above)")
    serialized = bytes(serialized)
    runtime = trt.Runtime(logger)
    if version_compatible:
        runtime.engine_host_code_allowed = True
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise TrtError("deserializing the freshly built engine failed")
    return EngineBuild(engine, serialized, n_plugin, n_scan, time.perf_counter() - t0)


class TrtRunner:
    """``run(output_names, feeds) -> list[np.ndarray]`` over a TensorRT engine (ONNX Runtime session signature, so
    :func:`export.verify.verify_export` drives it). Inputs are copied to the GPU, outputs back to the host."""

    def __init__(self, trt, engine):
        import torch

        self.trt, self.engine, self.torch = trt, engine, torch
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dt = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                    trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool}
        if hasattr(trt.DataType, "BF16"):
            self._dt[trt.DataType.BF16] = torch.bfloat16

    def run(self, output_names: Sequence[str], feeds: dict):
        torch = self.torch
        keep = []
        for n in self.inputs:
            t = torch.as_tensor(feeds[n]).to(device="cuda", dtype=self._dt[self.engine.get_tensor_dtype(n)])
            t = t.contiguous()
            keep.append(t)
            if not self.context.set_input_shape(n, tuple(t.shape)):      # outside the engine's profile
                raise TrtError(f"input {n} of shape {list(t.shape)} is outside the engine's optimisation profile")
            self.context.set_tensor_address(n, t.data_ptr())
        outs = {}
        for n in self.outputs:
            shape = tuple(self.context.get_tensor_shape(n))
            o = torch.empty(shape, dtype=self._dt[self.engine.get_tensor_dtype(n)], device="cuda")
            outs[n] = o
            self.context.set_tensor_address(n, o.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise TrtError("execute_async_v3 failed")
        stream.synchronize()
        return [outs[n].float().cpu().numpy() if outs[n].dtype in (torch.float16, torch.bfloat16)
                else outs[n].cpu().numpy() for n in output_names]


# ------------------------------------------------------------------------------------------------ the command
def _load_model(name_or_path: str, *, revision: str | None = None, subfolder: str = ""):
    from .onnx import _load_model as load

    return load(name_or_path, revision=revision, subfolder=subfolder)


#: verification sizes of the CPU-emulated plugin check (every CUDA thread a fiber): the priming and single steps of
#: the engine's own verification (200 + 500, 4 rows), fewer top-k rows (256, not 2,000). About 20 s for the bundled
#: Mamba4Rec on one CPU thread, with the emulator's user-space fiber switch (bench/RESULTS_EMU_SWITCH.md)
EMULATED_VERIFY = dict(prime_len=200, n_steps=500, batch=4, topk_cases=256)
#: ``--quick`` (CI smoke runs): 50 + 20 steps, 2 rows, 32 top-k rows
EMULATED_VERIFY_QUICK = dict(prime_len=50, n_steps=20, batch=2, topk_cases=32)
#: the longest the [4b] check's child may go without an answer (one plugin run, or the evaluator's work between two)
#: before it is killed and the check fails as a hang. The longest wait measured at EMULATED_VERIFY's sizes is 14 s (the
#: bundled Mamba4Rec on one CPU thread of a busy 2-core machine; the other 1,006 answers took under 1.6 s), so this
#: only stops a plugin that never returns
EMULATED_TIMEOUT_S = 300.0


def _emulated_plugin_check(model, res, graph16, precision: str, report: dict, say, build_dir=None,
                           quick: bool = False, max_steps: int = 200, max_batch: int = 2048,
                           max_candidates: int | None = None, say_error=None) -> bool:
    """Without an engine, what the plugins contribute is still checked: the graph runs on ONNX's reference evaluator
    with each scan node handed to the plugin's ``enqueue`` -- the plugin classes and CUDA kernels compiled for the CPU
    against plugins/emu/ (:mod:`export.emulated_plugins`) -- and goes through the shared verifier against PyTorch.
    The graph runs in a child process (:class:`export.emulated_plugins.IsolatedPluginRunner`; this process keeps the
    model and the verification), so a plugin that reads or writes out of bounds kills the child, not this run: a
    crash fails the check with the signal's name. Fills ``report["emulated_plugins"]``; returns True when the
    verification ran and failed or crashed (a C++ compiler or the TensorRT headers missing only skips it, saying
    so). ``say_error``: told the lines of a failure instead of ``say`` (the CLI's stderr)."""
    from . import verify as V
    from .build_plugins import BuildError, build_emulated
    from .emulated_plugins import EmulatedPluginRunner, IsolatedPluginRunner, PluginCrash, PluginError, PluginHang

    err = say_error or say
    say("[4b] the graph with the zoo plugins' code, CPU-emulated (plugin classes + CUDA kernels compiled for the CPU "
        "against plugins/emu/; ONNX reference evaluator for the other nodes), against PyTorch")
    try:
        lib = build_emulated(build_dir, plugins=True)
    except (BuildError, OSError) as e:
        say(f"  skipped: {str(e).splitlines()[0]}")
        report["emulated_plugins"] = {"skipped": str(e)}
        return False

    graph = graph16 if graph16 is not None else V._with_scores_output(res.graph_path)
    kw = fit_profile(EMULATED_VERIFY_QUICK if quick else EMULATED_VERIFY, max_batch=max_batch, max_steps=max_steps,
                     max_candidates=max_candidates)          # the shapes the engine's profile would take
    runner = None
    try:
        # loading the library and making the evaluator run no plugin code: a library that is not an emulated plugin
        # library or a graph the evaluator cannot take is found here, in this process, before a child starts
        EmulatedPluginRunner(graph, lib)
        runner = IsolatedPluginRunner(graph, lib, timeout_s=EMULATED_TIMEOUT_S)
        rep = V.verify_export(model, res.graph_path, res.spec, runner=runner, progress=lambda m: say("  " + m),
                              precision=precision, **kw)
    except PluginCrash as e:                 # the plugin's code killed the child (SIGSEGV, ...): TensorRT's would too
        err(f"  FAILED: {e}")           # (or hung it: PluginHang, the child killed after EMULATED_TIMEOUT_S)
        calls = {k: v for k, v in (runner.calls if runner else {}).items() if v}
        report["emulated_plugins"] = {"library": str(lib), "ok": False, "error": str(e), "signal": e.signal,
                                      "child_exit_code": e.returncode, "plugin_call": e.last_call,
                                      "plugin_calls": calls}
        if isinstance(e, PluginHang):
            report["emulated_plugins"]["hung_after_s"] = e.timeout_s
        return True
    except PluginError as e:                 # a scan node the plugin refuses: TensorRT's engine would fail the same
        err(f"  FAILED: {e}")
        report["emulated_plugins"] = {"library": str(lib), "ok": False, "error": str(e)}
        return True
    except Exception as e:
        calls = {k: v for k, v in (runner.calls if runner else {}).items() if v}
        if calls:                            # after plugin runs: what they returned may be the cause (wrong shapes or
            err(f"  FAILED after {sum(calls.values())} plugin runs: {type(e).__name__}: {str(e)[:500]}")  # dtypes)
            report["emulated_plugins"] = {"library": str(lib), "ok": False, "plugin_calls": calls,
                                          "error": f"the graph failed after the plugins ran: {type(e).__name__}: {e}"}
            return True
        # before any plugin ran: the reference evaluator could not take the graph, not the plugins' say
        say(f"  could not run: {type(e).__name__}: {str(e)[:500]}")
        report["emulated_plugins"] = {"library": str(lib), "skipped": f"{type(e).__name__}: {e}"}
        return False
    finally:
        if runner is not None:
            runner.close()
    say(rep.table())
    calls = {k: v for k, v in runner.calls.items() if v}
    say(f"  plugin runs: {', '.join(f'{k} x{v}' for k, v in calls.items()) or 'none'} (library {lib})")
    report["emulated_plugins"] = {"library": str(lib), "verify_kwargs": kw, "plugin_calls": calls, "ok": rep.ok,
                                  "verification": rep.to_dict(),
                                  "unverified": "TensorRT's own kernels, fusions and precision choices, and the GPU"}
    if not rep.ok:
        err(f"  {rep.worst_message()}")
    return not rep.ok


def _repointed(report, moved: dict):
    """``report`` (a report's JSON) with each string value naming a key of ``moved`` naming its value instead."""
    if isinstance(report, dict):
        return {k: _repointed(v, moved) for k, v in report.items()}
    if isinstance(report, list):
        return [_repointed(v, moved) for v in report]
    return moved.get(report, report) if isinstance(report, str) else report


def report_json(report: dict) -> str:
    """``trt_report.json``'s text: strict JSON (:func:`export.fsutil.strict_json`; jq and ``JSON.parse`` refuse the
    ``Infinity``/``NaN`` Python writes by default), indented, with a final newline. A failed verification's errors
    may be non-finite (:func:`export.verify._errs`: ``inf`` for a graph that masks another set of items or has a
    non-finite score; :func:`export.verify._worst`: ``nan`` when a case's error is NaN); those are written as the
    strings ``"inf"``, ``"-inf"`` and ``"nan"`` (:func:`export.fsutil.nonfinite_text`), which keep them apart and which
    ``float()`` reads back -- a reader sees a string where a number was expected, never a number that passes a
    ``<=`` tolerance check (``null`` would compare below every tolerance in jq). Other objects (paths) are written
    as their ``str``."""
    return strict_json(report, nonfinite_text, indent=2, default=str) + "\n"


def engine_verified(out_dir: str | os.PathLike) -> bool:
    """Whether the engine in ``out_dir`` is the one ``out_dir``'s report says was verified and written: exit code 0,
    and the engine's size and sha256 (when the report has one: older reports record the size only) are the report's.
    An engine cut short by an interruption (a kill, a full disk), copied in by hand or left beside another run's
    report is not."""
    out = Path(out_dir)
    try:
        rep = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
        eng = rep.get("engine") or {}
        if rep.get("exit_code") != EXIT_OK or eng.get("bytes") != (out / ENGINE_FILE).stat().st_size:
            return False
        return "sha256" not in eng or eng["sha256"] == file_sha256(out / ENGINE_FILE)
    except (OSError, ValueError, AttributeError, TypeError):       # no report, not JSON, not a report's shape
        return False


def _keep_previous(out: Path, say) -> None:
    """Move ``out``'s verified engine and its report into ``out/previous/`` (replacing the set there), with copies of
    what serving it needs (its graph, state spec and item vocabulary), which the new export replaces in ``out``; the
    report's paths are rewritten to the copies. The new ``previous/`` is made whole beside ``out``'s files first and
    the engine moved in last: an interruption leaves the engine in ``out`` with its report, as it was."""
    from zoo.cli import written_whole, written_whole_folder
    from zoo.vocab import VOCAB_FILE

    from . import onnx as E

    prev = out / PREVIOUS_DIR
    companions = [n for n in (E.GRAPH_FILE, E.EXTERNAL_DATA_FILE, E.SPEC_FILE, VOCAB_FILE) if (out / n).is_file()]
    report = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
    moved = {str(out / n): str(prev / n) for n in [ENGINE_FILE, *companions]}
    with written_whole_folder(prev) as stage:
        for name in companions:
            shutil.copy2(out / name, Path(stage) / name)
        with written_whole(Path(stage) / REPORT_FILE) as f:
            f.write(report_json(_repointed(report, moved)))
    os.replace(out / ENGINE_FILE, prev / ENGINE_FILE)
    (out / REPORT_FILE).unlink()
    say(f"moved the verified engine of an earlier run (and its report) to {prev}/, with copies of its "
        f"{', '.join(companions) or 'nothing else'}: out keeps an engine only once a new one passes verification")


def check_out(out_dir: str | os.PathLike) -> None:
    """``ValueError`` when ``out_dir`` is a model checkpoint (:func:`export.onnx.checkpoint_files`): the export would
    replace or remove the model's ``item_vocab.json``, and the model would no longer load or would map its ids
    wrongly."""
    from .onnx import checkpoint_files

    held = checkpoint_files(out_dir)
    if held:
        raise ValueError(f"--out {out_dir} holds a model checkpoint ({' and '.join(held)}): the export would replace "
                         "or remove the model's item_vocab.json, so that the model no longer loads or maps its item "
                         "ids wrongly; give another --out (e.g. a subfolder)")


#: :func:`export.verify.verify_export`'s sizes for the ONNX graph and the engine: priming 200 + 500 single steps on 4
#: rows, 2,000 top-k rows (primed with 20 items); ``--quick``: 20 + 20 steps, 2 rows, 64 top-k rows
ENGINE_VERIFY = dict(prime_len=200, n_steps=500, batch=4, topk_cases=2000, topk_prime=20)
ENGINE_VERIFY_QUICK = dict(prime_len=20, n_steps=20, batch=2, topk_cases=64, topk_prime=20)


def fit_profile(sizes: dict, *, max_batch: int, max_steps: int, max_candidates: int | None = None) -> dict:
    """``sizes`` (:func:`export.verify.verify_export`'s ``prime_len``, ``n_steps``, ``batch``, ``topk_cases``,
    ``topk_prime``) with every call inside the engine's profile (:func:`profile_shapes`): rows <= ``max_batch``,
    ``T <= max_steps``, candidate columns <= ``max_candidates`` (a ``--candidates`` graph; None otherwise)."""
    kw = dict(sizes, prime_len=min(sizes["prime_len"], max_steps), batch=min(sizes["batch"], max_batch),
              topk_cases=min(sizes["topk_cases"], max_batch), topk_prime=min(sizes.get("topk_prime", 20), max_steps))
    if max_candidates is not None:
        kw["max_candidates"] = max_candidates
    return kw


def engine_verify_kwargs(quick: bool = False, *, max_batch: int = 2048, max_steps: int = 200,
                         max_candidates: int | None = None) -> dict:
    """:data:`ENGINE_VERIFY` (``quick``: :data:`ENGINE_VERIFY_QUICK`) fitted to the engine's profile
    (:func:`fit_profile`)."""
    return fit_profile(ENGINE_VERIFY_QUICK if quick else ENGINE_VERIFY, max_batch=max_batch, max_steps=max_steps,
                       max_candidates=max_candidates)


def run(model_name: str, out_dir: str, *, fp16: bool = False, workspace: str | int = "2G", topk: int = 10,
        max_batch: int = 2048, opt_batch: int = 64, max_steps: int = 200, version_compatible: bool = False,
        plugin_lib: str | None = None, build_dir: str | None = None, quick: bool = False, model=None,
        time_input: str = "auto", exclude_seen: bool = False, user_vector: bool = False,
        exclude_items: str | None = None, emulate: bool = True, candidates: bool = False,
        max_candidates: int = MAX_CANDIDATES, rebuild_plugins: bool = False, say=print,
        say_error=None, revision: str | None = None, subfolder: str = "") -> tuple[int, dict]:
    """The whole CLI flow; returns ``(exit_code, report)`` and writes ``out_dir/trt_report.json`` -- except when it
    stops before touching ``out_dir`` (exit 1, ``out_dir`` as it was, or not created: another live run holds it
    (:func:`export.fsutil.held_output_folder`, taken before anything else here), a missing ``plugin_lib`` on a
    machine that could build, a verified engine in ``out_dir`` on one that cannot -- both found before the model is
    loaded -- or, when ``model`` is None, a ``model_name`` that cannot be loaded: it is loaded after those checks and
    before anything in ``out_dir`` is written or moved; see the module's step 5). Settings out of range and an
    ``out_dir`` that is a model checkpoint raise ``ValueError`` first (:func:`check_run_numbers`, :func:`check_out`);
    a ``topk`` above the items the loaded model can recommend raises :class:`SettingError` (a ``ValueError``), and an
    ``exclude_items`` file that cannot be read or names an unknown id stops it with exit 1, both before ``out_dir``
    is touched.
    ``model``: the model itself (``model_name`` then only names it in the report and the output). ``revision`` /
    ``subfolder`` (``--revision``, ``--subfolder``): which checkpoint ``model_name`` names, as ``from_pretrained``
    takes them (recorded in the report when given).

    ``time_input``: "auto" (time-aware step models get the float32 gaps form, the only one TensorRT can build; others
    none), or an explicit :data:`export.onnx.TIME_INPUTS` value ("timestamps" ends with the float64 error, exit 1).
    ``emulate``: when no engine can be built, verify the graph with the plugins' code on the CPU emulator
    (:func:`_emulated_plugin_check`). ``candidates``: the graph takes ``candidates [B, C]`` (``export.onnx
    --candidates``), ``C`` up to ``max_candidates`` in the engine's profile. ``rebuild_plugins``: build the plugin
    library even when it is current with its sources (:func:`ensure_plugin_library`). ``say`` is told the stages and
    their tables; ``say_error`` (default ``say``) the error lines and the ``RESULT`` line of a run that did not succeed
    (the CLI's stderr)."""
    from zoo.cli import written_whole

    from . import onnx as E
    from . import verify as V

    check_run_numbers(workspace=workspace, topk=topk, max_batch=max_batch, opt_batch=opt_batch, max_steps=max_steps,
                      max_candidates=max_candidates)
    check_out(out_dir)
    out = Path(out_dir)
    precision = "fp16" if fp16 else "fp32"
    tol = TOLERANCES[precision]
    report: dict = {"model": model_name, "precision": precision, "tolerances": tol, "plugin_spec": {
        "namespace": ps.PLUGIN_NAMESPACE, "version": ps.PLUGIN_VERSION, "ops": list(ps.SCAN_OPS)}}
    if model is None:               # which checkpoint --model names, when the options say more than its name
        report.update({k: v for k, v in (("revision", revision), ("subfolder", subfolder)) if v})
    engine_path = out / ENGINE_FILE
    verify_kwargs = engine_verify_kwargs(quick, max_batch=max_batch, max_steps=max_steps,
                                         max_candidates=max_candidates if candidates else None)
    report["verify_kwargs"] = verify_kwargs
    err = say_error or say

    def finish(code: int, status: str, written: bool = True):
        report["exit_code"], report["status"] = code, status
        if written:                     # whole: a report cut short would leave its engine looking unverified
            with written_whole(out / REPORT_FILE) as f:
                f.write(report_json(report))
        say("")
        (say if code == EXIT_OK else err)(f"RESULT: {status} (exit code {code}); "
            + (f"report: {out / REPORT_FILE}" if written else f"nothing written in {out}"))
        return code, report

    # one run at a time in out: a second run into it fails at once (before the probe, the model load and the
    # minutes of export and verification), touching nothing there; out is held until the report is written, and a
    # folder this run made is removed again when the run leaves it empty (:func:`export.fsutil.held_output_folder`)
    with contextlib.ExitStack() as holding:
        try:
            holding.enter_context(held_output_folder(out, "--out"))
        except FolderBusy as e:
            report["error"] = str(e)
            err(f"ERROR: {e}")
            return finish(EXIT_ERROR, "--out is held by another run", written=False)
        # what this machine can do, before out is touched: a run that cannot build an engine must not move a
        # verified one
        env = probe_environment()
        if plugin_lib and not Path(plugin_lib).is_file() and env.can_build:
            report["plugin_error"] = f"plugin library {plugin_lib} does not exist"
            err(f"ERROR: --plugin-lib {plugin_lib}: no such file")
            return finish(EXIT_ERROR, "plugin library unavailable", written=False)
        held = engine_path.is_file() and engine_verified(out)
        if held and not env.can_build:
            report["missing"] = env.missing
            msg = (f"{out} holds a verified engine ({ENGINE_FILE}) and this machine cannot build one (missing: "
                   f"{'; '.join(env.missing)}): the ONNX export would replace the graph, state spec and vocabulary "
                   "that engine serves with, and no new engine could take its place. Nothing was changed; give "
                   "another --out to check the graph here, or run where TensorRT and a GPU are")
            err(f"ERROR: {msg}")
            report["error"] = msg
            return finish(EXIT_ERROR, f"TensorRT/GPU missing and {out} holds a verified engine: nothing exported",
                          written=False)
        if model is None:       # before out is touched: a mistyped --model leaves out as it was (or not created)
            try:
                model = _load_model(model_name, **{k: v for k, v in (("revision", revision),
                                                                     ("subfolder", subfolder)) if v})
            except Exception as e:          # not found (ValueError/OSError), not a zoo model, weights that do not load
                why = " ".join(str(e).splitlines()) or type(e).__name__
                report["error"] = f"--model {model_name}: {type(e).__name__}: {why}"
                err(f"ERROR: --model {model_name}: {why}")
                return finish(EXIT_ERROR, f"--model {model_name} could not be loaded", written=False)
        try:                    # the model's own refusals, before out is touched too
            excluded = E.excluded_indices(model, exclude_items)    # a file not read, an unknown id: bad data (1)
        except ValueError as e:
            report["error"] = str(e)
            err(f"ERROR: {e}")
            return finish(EXIT_ERROR, "--exclude-items could not be used", written=False)
        problem = E.topk_usage_error(model, topk, excluded)         # above what the model can recommend: a setting
        if problem:
            raise SettingError(problem)
        if held:
            # never leave a stale engine next to a new report, and never lose a verified one: it moves to previous/
            # until a new engine passes verification (:func:`_keep_previous`)
            _keep_previous(out, say)
        elif engine_path.exists():          # no report says it was verified: it must not replace the set in previous/
            note = " (replacing the one there)" if (out / UNVERIFIED_ENGINE_FILE).exists() else ""
            os.replace(engine_path, out / UNVERIFIED_ENGINE_FILE)
            say(f"set the engine in {out} aside as {UNVERIFIED_ENGINE_FILE}{note}: no report in {out} says it was "
                f"verified and written (it may be cut short, or another's); {out / PREVIOUS_DIR} is left as it is")

        # 1. ONNX export + ONNX-level verification (always)
        say(f"[1/4] ONNX export + verification against PyTorch (ONNX Runtime, CPU) of {model_name}")
        try:
            ti = time_input
            if ti == "auto":
                ti = "gaps" if E.gaps_form_available(model) else None
                if ti:
                    say(f"  {model.config.model_type} reads time: exporting the TensorRT-compatible time input "
                        "(--time-input gaps): float32 time_gaps [B, T] in, no last_ts state in the graph; the client "
                        "keeps last_ts (float64) and differences the float64 timestamps "
                        "(export.runtime.OnnxStepSession does). The default float64 timestamps form cannot be built: "
                        "TensorRT has no float64")
            report["time_input"] = ti
            # out's lock is held here (not taken again); an earlier report goes as the new graph comes in: an
            # interruption after that never leaves it beside a graph it does not describe
            res = E.export_model(model, out, kind="step", topk=topk, verify=True, verify_kwargs=verify_kwargs,
                                 progress=lambda m: say("  " + m), time_input=ti, exclude_seen=exclude_seen,
                                 user_vector=user_vector, exclude_items=excluded, candidates=candidates,
                                 lock=False, stale_files=(REPORT_FILE,))
        except E.NoStepGraphError as e:      # worded for export.trt, which has no --kind
            report["error"] = E.no_step_graph_message(e, "export.trt", model_name)
            err(f"  ERROR: {report['error']}")
            return finish(EXIT_ERROR, "no step graph for this model: nothing exported")
        except E.VerificationError as e:
            err(f"  ONNX verification FAILED: {e}")
            if e.report is not None:
                say(e.report.table())
                report["onnx_verification"] = e.report.to_dict()
            return finish(EXIT_VERIFY_FAILED, "ONNX graph verification failed")
        except Exception as e:
            err(f"  ERROR: {type(e).__name__}: {e}")
            report["error"] = f"{type(e).__name__}: {e}"
            return finish(EXIT_ERROR, "ONNX export failed")
        say(res.report.table())
        report["onnx"] = {"graph": res.graph_path, "spec": res.spec_path, "verification": res.report.to_dict()}
        # TensorRT has no float64 tensors; the float64-timestamps form of a time-aware step graph takes epoch-second
        # timestamps and carries the last event's time as float64 (float32 would round them to 64-128 s): no engine for
        # it, say so plainly (time_input="auto" exports the gaps form instead)
        f64 = [e["name"] for e in res.spec["inputs"] + res.spec["outputs"] if e["dtype"] == "float64"]
        if f64:
            msg = (f"TensorRT has no float64 tensor type, and the {res.spec['model_type']} step graph has float64 I/O "
                   f"{f64} (epoch-second timestamps and the last event's time: float32 would round them to 64-128 s "
                   "and change the time gaps the model reads). No TensorRT engine can be built from this graph; the "
                   f"ONNX graph {res.graph_path} is exported and verified: run it with ONNX Runtime "
                   "(export.runtime.OnnxStepSession)"
                   + ("; export.trt's default (time input 'auto') exports the float32 time-gaps form instead, which "
                      "TensorRT can build" if E.gaps_form_available(model) else ""))
            err(f"  ERROR: {msg}")
            report["error"] = msg
            report["float64_io"] = f64
            return finish(EXIT_ERROR, "TensorRT does not support float64 I/O (timestamps/last_ts): ONNX graph "
                                      "verified, engine NOT built")
        if res.spec.get("external_data"):
            msg = (f"the graph's weights pass protobuf's 2 GiB, so they are in ONNX external data "
                   f"({res.spec['external_data']}); export.trt gives TensorRT's parser the graph as bytes, which "
                   "cannot hold them: no engine for it (not supported, and not verified). The ONNX graph "
                   f"{res.graph_path} is exported and verified: run it with ONNX Runtime "
                   "(export.runtime.OnnxStepSession)")
            err(f"  ERROR: {msg}")
            report["error"] = msg
            return finish(EXIT_ERROR, "graph with external data (> 2 GiB): ONNX graph verified, engine NOT built")
        import onnx

        mp = onnx.load(res.graph_path)
        scan_nodes = [{"op_type": n.op_type, "domain": n.domain, "inputs": len(n.input),
                       "attributes": {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}}
                      for n in mp.graph.node if n.domain == ps.ONNX_DOMAIN]
        for n in scan_nodes:
            n["attributes"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in n["attributes"].items()}
        report["onnx"]["scan_nodes"] = scan_nodes
        say(f"  scan nodes: {', '.join(sorted({n['op_type'] for n in scan_nodes}))} x{len(scan_nodes)} "
            f"(plugin_namespace={ps.PLUGIN_NAMESPACE!r}, plugin_version={ps.PLUGIN_VERSION!r})")

        graph16 = None
        if fp16:  # the fp16 graph must itself pass the ONNX-level verification before any engine is built from it
            say("[1b] fp16 graph (export.onnx fp16 path; I/O, states and scan nodes fp32) + verification with ONNX "
                "Runtime")
            try:
                graph16 = to_fp16_graph(V._with_scores_output(res.graph_path).SerializeToString(), res.spec)
                sess = V.ort_session(graph16)
                # the ONNX-level fp16 criteria of export.verify (TOLERANCES["fp16"] above is for the engine)
                rep16 = V.verify_export(model, res.graph_path, res.spec, runner=sess, progress=lambda m: say("  " + m),
                                        precision="fp16", **verify_kwargs)
            except Exception as e:
                err(f"  ERROR: fp16 conversion/run failed: {type(e).__name__}: {str(e)[:500]}")
                report["error"] = f"fp16 graph: {type(e).__name__}: {e}"
                return finish(EXIT_ERROR, "fp16 graph conversion failed (no fp16 engine attempted)")
            say(rep16.table())
            report["onnx_fp16_verification"] = rep16.to_dict()
            if not rep16.ok:
                return finish(EXIT_VERIFY_FAILED, "fp16 ONNX graph verification failed")

        # 2. environment (probed before out was touched) + plugin library
        say("[2/4] TensorRT environment and plugin library")
        report["environment"] = {"tensorrt": env.tensorrt_version, "tensorrt_error": env.tensorrt_error,
                                 "tensorrt_lean": env.lean_version, "tensorrt_lean_error": env.lean_error,
                                 "gpu": env.gpu, "gpu_error": env.gpu_error}
        say(f"  TensorRT builder : {env.tensorrt_version or 'MISSING (' + str(env.tensorrt_error) + ')'}")
        lean_line = env.lean_version or (f"BROKEN ({env.lean_error})" if env.lean_error else "not installed")
        say(f"  TensorRT lean    : {lean_line}")
        say(f"  GPU              : {env.gpu or 'MISSING (' + str(env.gpu_error) + ')'}")
        lib = None
        try:
            lib = ensure_plugin_library(plugin_lib, build_dir, rebuild=rebuild_plugins, say=lambda m: say("  " + m))
            report["plugin_library"] = str(lib)
            say(f"  plugin library   : {lib}")
            reg_mod = env.tensorrt or env.lean
            if reg_mod is not None:
                rows = check_registry(reg_mod, lib)
                report["registry"] = {"runtime": "tensorrt" if env.tensorrt else "tensorrt_lean", "creators": rows}
                for r in rows:
                    say(f"  registered       : {r['namespace']}::{r['op_type']} v{r['version']} fields={r['fields']}")
            else:
                say("  registry check   : skipped (neither tensorrt nor tensorrt_lean is importable)")
        except TrtError as e:
            report["plugin_error"] = str(e)
            err(f"  plugin library   : FAILED: {e}")
            if env.can_build:
                return finish(EXIT_ERROR, "plugin library unavailable")
            env.missing.append(f"{ps.PLUGIN_LIBRARY}: {e}")

        if not env.can_build or lib is None:
            say("[3/4] engine build: NOT POSSIBLE here; missing:")
            for m in env.missing:
                say(f"  - {m}")
            say("[4/4] engine verification: not run (no engine). The ONNX graph above IS verified; no engine was "
                "written.")
            report["missing"] = env.missing
            if emulate:
                failed = _emulated_plugin_check(model, res, graph16, precision, report, say, build_dir, quick,
                                                max_steps, max_batch, max_candidates if candidates else None,
                                                say_error=err)
                if failed:
                    emu = report["emulated_plugins"]
                    crash = emu.get("signal") or ("exit code {}".format(emu["child_exit_code"])
                                                  if "child_exit_code" in emu else None)
                    why = (f" (no answer in {emu['hung_after_s']:g} s: the plugin hangs)" if "hung_after_s" in emu
                           else f" ({crash}: the plugin crashed its process)" if crash else "")
                    return finish(EXIT_VERIFY_FAILED, "the graph with the zoo plugins' code (CPU-emulated) FAILED "
                                                      "verification" + why + "; TensorRT/GPU missing, engine NOT built")
            return finish(EXIT_MISSING, "TensorRT/GPU missing: ONNX verified"
                          + (", plugins verified on the CPU emulator" if report.get("emulated_plugins", {}).get("ok")
                             else "") + ", engine NOT built")

        # 3. engine
        trt = env.tensorrt
        say("[3/4] engine build")
        try:
            # the verifier compares every score
            graph = graph16 if fp16 else V._with_scores_output(res.graph_path).SerializeToString()
            eb = build_engine(trt, graph, res.spec, lib, precision=precision, workspace=_parse_size(workspace),
                              opt_batch=opt_batch, max_batch=max_batch, max_steps=max_steps,
                              version_compatible=version_compatible, max_candidates=max_candidates,
                              say=lambda m: say("  " + m))
        except Exception as e:
            err(f"  ERROR: {type(e).__name__}: {e}")
            report["error"] = f"{type(e).__name__}: {e}"
            return finish(EXIT_ERROR, "engine build failed")
        report["engine"] = {"plugin_layers": eb.n_plugin_layers, "scan_nodes": eb.n_scan_nodes,
                            "build_seconds": eb.seconds, "bytes": len(eb.serialized)}
        say(f"  built: {len(eb.serialized) / 1e6:.2f} MB, {eb.n_plugin_layers} plugin layers [{eb.seconds:.1f} s]")

        # 4. engine vs PyTorch, under the precision's criteria: the engine's row of TOLERANCES, and for what that row
        # leaves unset export.verify's row of the same precision (fp16: its score error of the score scale). res.spec
        # says fp32 (the fp16 conversion comes after the export), so the precision is passed, not read from it
        rtol = V.tolerances(precision)["score_rtol"]
        say(f"[4/4] engine verification against PyTorch ({precision}: score atol {tol['score_atol']:g}"
            + (f", score error <= {rtol:g} of the score scale" if rtol is not None else "")
            + f", state atol {tol['state_atol']:g}, top-k >= {100 * tol['topk_min_agreement']:g}%)")
        try:
            rep = V.verify_export(model, res.graph_path, res.spec, runner=TrtRunner(trt, eb.engine),
                                  progress=lambda m: say("  " + m), precision=precision, **tol, **verify_kwargs)
        except Exception as e:
            err(f"  ERROR while running the engine: {type(e).__name__}: {e}")
            report["error"] = f"{type(e).__name__}: {e}"
            return finish(EXIT_ERROR, "engine execution failed")
        say(rep.table())
        report["engine_verification"] = rep.to_dict()
        if not rep.ok:
            err(f"  {rep.worst_message()}")
            return finish(EXIT_VERIFY_FAILED, "engine verification FAILED: engine NOT written")
        report["engine"]["sha256"] = hashlib.sha256(eb.serialized).hexdigest()     # what the next run checks it by
        try:                                # whole: a kill or a full disk never leaves an engine cut short in out
            with E.staging_folder(out) as stage:
                (stage / ENGINE_FILE).write_bytes(eb.serialized)
                os.replace(stage / ENGINE_FILE, engine_path)
        except OSError as e:
            err(f"  ERROR: writing {engine_path}: {e}")
            report["error"] = f"writing {engine_path}: {type(e).__name__}: {e}"
            return finish(EXIT_ERROR, "engine verified but NOT written (it could not be written)")
        report["engine"]["path"] = str(engine_path)
        return finish(EXIT_OK, f"engine verified and written to {engine_path}")


#: the command-line option of each :func:`run` setting that :func:`check_run_numbers` names
RUN_FLAGS = {"workspace": "--workspace", "topk": "--topk", "max_batch": "--max-batch", "opt_batch": "--opt-batch",
             "max_steps": "--max-steps", "max_candidates": "--max-candidates"}


def main(argv: Sequence[str] | None = None) -> int:
    from zoo.cli import flag_named, positive_int
    from zoo.pretrained import add_hub_options, hub_options

    p = argparse.ArgumentParser(allow_abbrev=False,
                                prog=command_prog("export.trt"), description=__doc__.split("\n\n")[0],
                                epilog=EXIT_CODES)
    p.add_argument("--model", required=True, help="model folder or Hub id (from_pretrained)")
    add_hub_options(p)
    p.add_argument("--out", required=True, help="output folder (model.onnx, state_spec.json, model.engine, report); "
                                                "not a model checkpoint's folder")
    p.add_argument("--fp16", action="store_true", help="fp16 internals (states, graph I/O and scan nodes stay fp32)")
    p.add_argument("--workspace", default="2G", help="builder workspace pool limit, e.g. 512M, 2G (default 2G)")
    p.add_argument("--topk", type=positive_int, default=10, help="K of the graph's in-graph TopK (default 10)")
    p.add_argument("--max-batch", type=positive_int, default=2048,
                   help="largest batch (users per call) of the engine's optimisation profile (default 2048)")
    p.add_argument("--opt-batch", type=positive_int, default=64,
                   help="batch the engine's kernels are tuned for, <= --max-batch (default 64)")
    p.add_argument("--max-steps", type=positive_int, default=200,
                   help="largest T per call (priming length; default 200)")
    p.add_argument("--version-compatible", action="store_true",
                   help="build a version-compatible engine (runs on the lean/dispatch runtime; plugin lib serialized)")
    p.add_argument("--plugin-lib", default=None, help=f"use this {ps.PLUGIN_LIBRARY} instead of building one")
    p.add_argument("--build-dir", default=None,
                   help="CMake build folder for the plugins (default: build/plugins in a checkout, git-ignored; "
                        "~/.cache/ssm-rec-zoo/plugins for an installed package)")
    p.add_argument("--rebuild-plugins", action="store_true",
                   help=f"build {ps.PLUGIN_LIBRARY} even when it is current with plugins/ (it is rebuilt anyway when "
                        "the sources changed since it was built)")
    p.add_argument("--quick", action="store_true", help="small verification (CI smoke runs)")
    p.add_argument("--exclude-seen", action="store_true",
                   help="rank the history's items last (a 'seen' state [B, n_items]; see export.onnx --exclude-seen)")
    p.add_argument("--user-vector", action="store_true",
                   help="also output user_vector, the query vector of retrieval (see export.onnx --user-vector)")
    p.add_argument("--exclude-items", metavar="FILE", default=None,
                   help="item ids never to recommend, one per line (see export.onnx --exclude-items)")
    p.add_argument("--candidates", action="store_true",
                   help="the graph takes candidates [B, C], the items each row may recommend (see export.onnx "
                        "--candidates)")
    p.add_argument("--max-candidates", type=int, default=None,
                   help=f"with --candidates: largest C in the engine's profile (default {MAX_CANDIDATES})")
    p.add_argument("--no-emulate", action="store_true",
                   help="without TensorRT/GPU, skip the check of the graph with the plugins' code on the CPU emulator")
    a = p.parse_args(argv)
    if a.max_candidates is None:
        a.max_candidates = MAX_CANDIDATES
    elif not a.candidates:                        # it sizes the candidates input, which only --candidates adds
        p.error("--max-candidates needs --candidates: it sets the largest candidate list C of the engine's profile, "
                "and the graph takes no candidates without --candidates")
    for module in ("onnx", "onnxruntime"):        # every run exports and verifies the ONNX graph first
        require(module, "python -m export.trt", cli=True)
    try:
        hub = hub_options(a)                              # an empty --revision, or one for a local folder
        check_run_numbers(workspace=a.workspace, topk=a.topk, max_batch=a.max_batch, opt_batch=a.opt_batch,
                          max_steps=a.max_steps, max_candidates=a.max_candidates)
        from zoo.cli import check_outputs                 # a file there, under a file, or a place not writable

        check_outputs({"--out": a.out, "--build-dir": a.build_dir}, folders=True)
        check_out(a.out)                                  # a model checkpoint: its item_vocab.json is the model's
        if a.plugin_lib and not os.path.isfile(a.plugin_lib):   # before the export and before --out is touched
            raise ValueError(f"--plugin-lib {a.plugin_lib}: no such file (give a built {ps.PLUGIN_LIBRARY}, or leave "
                             "the flag out to build one)")
    except ValueError as e:                               # run()'s names as the options are given
        p.error(flag_named(str(e), RUN_FLAGS))
    say = lambda m: print(m, flush=True)  # noqa: E731
    say_error = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    try:
        code, _ = run(a.model, a.out, fp16=a.fp16, workspace=a.workspace, topk=a.topk, max_batch=a.max_batch,
                      opt_batch=a.opt_batch, max_steps=a.max_steps, version_compatible=a.version_compatible,
                      plugin_lib=a.plugin_lib, build_dir=a.build_dir, quick=a.quick, exclude_seen=a.exclude_seen,
                      user_vector=a.user_vector, exclude_items=a.exclude_items, emulate=not a.no_emulate,
                      candidates=a.candidates, max_candidates=a.max_candidates, rebuild_plugins=a.rebuild_plugins,
                      say=say, say_error=say_error, **{k: v for k, v in hub.items() if v})   # given ones only
    except SettingError as e:                     # found once the model is loaded, still before --out is touched
        p.error(str(e))
    return code


if __name__ == "__main__":
    from .fsutil import run_cli

    sys.exit(run_cli(main))
