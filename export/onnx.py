"""ONNX export of the zoo's models: stepwise-recurrent graphs with one portable scan node per layer, and
history-window graphs for models without an exact step.

CLI::

    python -m export.onnx --model NAME_OR_PATH (--out DIR | --card-dir CARD_FOLDER) [--kind step|window] [--topk K]
                          [--scores] [--fp16] [--time-input timestamps|gaps] [--exclude-seen] [--data INTERACTIONS]
                          [--no-verify]
                          [--verify-prime 200] [--verify-steps 500] [--verify-cases 2000]

Step graph (``--kind step``, the default for models with ``has_exact_step``)
---------------------------------------------------------------------------
Inputs: ``item_ids [B, T]`` int64 (``T >= 1`` dynamic; one graph serves ``T = 1`` (one event) and ``T = L``
(priming from a history)), ``timestamps [B, T]`` float64 seconds for models that read time (TiM4Rec-causal), then the
recurrent state tensors named exactly as ``model.state_spec()`` names them, each in its declared dtype (float32, batch
first, layers packed in dim 1; TiM4Rec-causal's ``last_ts [B, 1]`` is float64: epoch seconds do not fit float32).
Outputs: ``topk_ids [B, K]`` int64, ``topk_scores [B, K]`` float32 (in-graph ``TopK``, ``K`` fixed at export, the
padding logit of item 0 set to ``-inf`` first), optionally ``scores [B, n_items]`` (raw logits except column 0 =
``-inf``), then the new state tensors ``<state>_out``. ``state_spec.json`` beside the graph lists every tensor.

``--time-input gaps`` (time-aware step models, TiM4Rec-causal): ``time_gaps [B, T]`` float32 (seconds since the row's
previous event, 0 for its first event ever) replaces ``timestamps``, and ``last_ts`` leaves the graph: the caller keeps
it and differences the float64 timestamps (``state_spec.json``: ``time_input``, ``client_state``, ``time_input_doc``;
``export.runtime.OnnxStepSession`` does it). No float64 tensor is left, so TensorRT can build the graph
(``export.trt`` picks this form), and ``--fp16`` works (the gaps and their log feature stay fp32).

The scan is ONE node per layer in the custom domain :data:`export.plugin_spec.ONNX_DOMAIN`
(``SelectiveScan`` for Mamba4Rec, ``LRUScan`` for LRURec, ``SSDScan`` for TiM4Rec-causal, I/O order as in
:mod:`export.plugin_spec`), carrying
``plugin_namespace`` / ``plugin_version`` (TensorRT binds its plugin by these), and the same op is shipped as a
model-local ONNX function made of standard ops (an ONNX ``Scan`` over ``T``), so ONNX Runtime runs the file as is.

``--exclude-seen`` (step and window graphs): the items of the history are ranked after every unseen item (they score
:data:`export.runtime.SEEN_SCORE`, float32's lowest value, in ``scores`` and ``topk_scores``; the padding id stays
``-inf``), the LRURec protocol's history masking done in the graph. A step graph carries the history as one more
state, ``seen [B, n_items]`` float32 (1 = fed before; one ``ScatterElements`` per call), so a stateful server needs no
history of its own; a window graph masks the items of its input window.

Window graph (``--kind window``, models without an exact step, e.g. SASRec)
--------------------------------------------------------------------------
Inputs: ``item_ids [B, L]`` int64 padded with 0 on the model's ``padding_side`` (``L <= max_seq_length``, dynamic)
(+ ``timestamps [B, L]`` for time-aware models). Outputs: ``topk_ids``, ``topk_scores`` (+ ``scores``).

``--fp16`` (:func:`convert_to_fp16`): fp16 weights and activations; the graph I/O (states, scores), the state paths,
the scan nodes (fp32, with ``Cast`` nodes at their activation inputs/outputs) and the score tail stay fp32, so the
I/O table is unchanged (``state_spec.json`` adds ``"precision": "fp16"``).

Every export is verified against PyTorch (:mod:`export.verify`, tolerances per precision); an artefact that fails
verification is deleted and the CLI exits with status 3 (:data:`export.fsutil.EXIT_VERIFY_FAILED`) naming the worst case
on stderr -- a graph ONNX Runtime cannot run at some length too (a case naming the length, ONNX Runtime's message and
the likely cause: a trace fixed to its example length, as a Python loop over the sequence gives); torch's trace warnings
(:func:`trace_graph`) are then shown on stdout, as they are for a ``--no-verify`` export. The other statuses are the
shared table's (:data:`export.fsutil.EXIT_CODES`): 1 a ``--model``, ``--data`` or ``--exclude-items`` that cannot be
found or read, or an export error (``ExportError``: a form the model cannot be exported in); 2 a usage error, a
``--topk`` above the items the loaded model can recommend included (:func:`topk_usage_error`; ``export_model`` raises
``ExportError`` for it). Error and verdict lines go to stderr, the stages of the export to stdout.

One run at a time per output folder: the ``--out`` folder is locked before the model is loaded and until the files
are in (:func:`export.fsutil.held_output_folder`; ``--card-dir``: the card's ``onnx[-window]/``, once the model is
loaded); a second run into it meanwhile fails at once, exit 1 with one line naming the folder, and leaves it as it
is.

Symbolic links: the ``--out`` folder and the ``--card-dir`` folder the user names may be links (written through); the
files an export puts into an ``--out`` folder replace a link planted in their place (its target is left as it was).
Inside a ``--card-dir`` card, nothing outside the card is written through a link: a link leading outside it at
``README.md``, ``onnx[-window]/`` or a file the export writes there is refused before anything is written, exit 1,
one line naming the link and its target (:func:`card_links_refused`, the rule of ``zoo.hub card``'s copy of a card:
:func:`zoo.cli.written_whole_folder`); a link whose target stays inside the card is used.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import pathlib
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .deps import require
from .fsutil import (EXIT_CODES, EXIT_ERROR, EXIT_OK, EXIT_VERIFY_FAILED, FolderBusy, command_prog, exit_with,
                     held_output_folder)

# a missing package: a one-line error when run as `python -m export.onnx`, a MissingDependencyError when imported
onnx = require("onnx", "export.onnx", cli=__name__ == "__main__")
require("onnxruntime", "export.onnx (its verification runs the graph)", cli=__name__ == "__main__")
from onnx import AttributeProto, TensorProto  # noqa: E402
from onnx import helper as oh  # noqa: E402

from . import plugin_spec as ps  # noqa: E402
from .runtime import SEEN_SCORE, SEEN_STATE, USER_VECTOR  # noqa: E402

logger = logging.getLogger(__name__)

OPSET = 18
IR_VERSION = 9
GRAPH_FILE = "model.onnx"
SPEC_FILE = "state_spec.json"
SPEC_FORMAT = "ssm-rec-zoo/onnx/1"
#: largest graph a single ``.onnx`` file holds: protobuf serializes at most 2 GiB
ONNX_PROTOBUF_LIMIT = 2**31 - 1
#: weights above which the graph is written with ONNX's external data: ``model.onnx`` (the graph) beside
#: :data:`EXTERNAL_DATA_FILE` (its tensors), below protobuf's limit by room for the graph's own structure
EXTERNAL_DATA_BYTES = ONNX_PROTOBUF_LIMIT - 2**26
EXTERNAL_DATA_FILE = "model.onnx.data"
#: models whose step graph this exporter knows how to build (their scans become custom nodes; GRU4Rec's GRU is the
#: standard ONNX ``GRU`` op)
STEP_MODEL_TYPES = ("mamba4rec", "lrurec", "gru4rec", "tim4rec_causal")
#: step models whose parallel training-time scan traces to one fixed length: no window graph for them
SCAN_STEP_MODEL_TYPES = ("mamba4rec", "lrurec")
#: the custom scan node of each step model that has one (one node per layer)
SCAN_OP_OF_MODEL = {"mamba4rec": ps.SELECTIVE_SCAN, "lrurec": ps.LRU_SCAN, "tim4rec_causal": ps.SSD_SCAN}
#: graph precisions (``--fp16``; ``state_spec.json``'s ``precision``); graph I/O dtypes are the same for both
PRECISION_DOC = {
    "fp32": "all float tensors float32",
    "fp16": "weights and activations float16; graph I/O (recurrent states, scores), the state paths, the scan nodes "
            "(computed in fp32 with Cast nodes at their activation inputs/outputs) and the score tail (padding mask, "
            "TopK) float32",
    "int8": "dynamic int8 (ONNX Runtime's quantize_dynamic of the verified fp32 graph): the stored weights of the "
            "MatMul/Gemm nodes and the item table int8 per output channel, their activations quantized per call "
            "(one scale for the whole batch, so a row's scores, top-k and new state move with the call's other rows "
            "and with how events are split into calls, within the int8 verification's tolerance); everything else "
            "(graph I/O, recurrent states, the scan nodes, norms, the score tail, MatMuls whose weight the graph "
            "computes) float32",
}
#: ``--int8``: what :func:`quantize_int8` quantizes (stored weights only: a MatMul whose second input is computed in
#: the graph stays fp32 -- attention's two products, LRURec's input projection scaled by its gamma) and how
INT8_OP_TYPES = ("MatMul", "Gemm", "Gather")
INT8_OPTIONS = {"weight_type": "int8", "per_channel": True, "reduce_range": False}
#: how a time-aware step graph takes time (``--time-input``; ``state_spec.json``'s ``time_input``):
#: "timestamps" (default): float64 ``timestamps [B, T]`` + float64 ``last_ts`` state, differenced in the graph;
#: "gaps": float32 ``time_gaps [B, T]``, the float64 differencing and ``last_ts`` moved to the caller (TensorRT-able)
TIME_INPUTS = ("timestamps", "gaps")
TIME_GAPS_INPUT = "time_gaps"
#: states a gaps-form graph leaves to its caller (``state_spec.json``'s ``client_state``)
CLIENT_TIME_STATES = ("last_ts",)
TIME_GAPS_DOC = (
    "the graph takes time_gaps [B, T] float32 = seconds since the row's previous event (0 for the row's first event "
    "ever) instead of float64 timestamps, and has no last_ts state: the caller keeps last_ts [B, 1] float64 (init -1 "
    "= no event yet, see client_state) and computes the gaps in float64 from Unix-second timestamps (finite, "
    "non-negative, non-decreasing per row, not before last_ts): gap_0 = ts_0 - last_ts (0 when last_ts < 0), "
    "gap_i = ts_i - ts_{i-1}; then casts them to float32 and sets last_ts = ts_{T-1}. export.runtime.OnnxStepSession "
    "does this (export.runtime.time_gaps)")
#: the ``seen`` state of an ``--exclude-seen`` step graph (``state_spec.json``)
SEEN_DOC = ("1 = the item is in this sequence's history (every item fed so far), 0 = not; starts at 0 for an empty "
            "history (O(n_items) floats per sequence)")
#: the ``--user-vector`` output (:data:`USER_VECTOR`): the query vector of maximum-inner-product retrieval
USER_VECTOR_DOC = ("the user (query) vector the next item is scored from: user_vector . item_vectors[i] = the raw score "
                   "of item i + 1 (python -m zoo.embed writes the item vectors; with an item bias its last column is "
                   "1 and the items' is their bias), for an approximate-nearest-neighbour index")
#: the ``--candidates`` input: each row's candidate items, the only ones it may recommend
CANDIDATES = "candidates"
CANDIDATES_DOC = ("internal item indices this row may recommend (a retrieval stage's candidates, a page's items), 0 = "
                  "padding; a row with no real candidate (all 0, or C = 0) is not restricted; top-k slots left without "
                  "a candidate hold id 0 and score -inf")
CARD_BEGIN = "<!-- onnx-export:begin -->"
CARD_END = "<!-- onnx-export:end -->"


#: the files that make a folder a model checkpoint (``save_pretrained``): an export never writes into one, since its
#: ``item_vocab.json`` is the model's own (:func:`checkpoint_files`)
CHECKPOINT_FILES = ("config.json", "model.safetensors")
#: the name of the folder an export writes and verifies its files in, inside its output folder, followed by the
#: writer's pid (:func:`staging_folder`)
STAGE_PREFIX = ".export-staging-"
#: a stage named without a pid (written before stages carried one) is removed once it is this old, in seconds: no
#: export runs for a day
STAGE_UNNAMED_MAX_AGE_S = 86400.0


class ExportError(RuntimeError):
    """The model cannot be exported in the requested way."""


class NoStepGraphError(ExportError):
    """A step graph asked of a model that has none (:func:`no_step_graph`): no exact recurrent step (``exact``
    False), or no step exporter for its type (``model_type`` not in :data:`STEP_MODEL_TYPES`). ``str()`` is
    ``export.onnx``'s message; :func:`no_step_graph_message` words it for ``export.triton`` and ``export.trt``, which
    have no ``--kind``."""

    def __init__(self, model_type: str, model_class: str, exact: bool):
        self.model_type, self.model_class, self.exact = model_type, model_class, exact
        super().__init__(no_step_graph_message(self))


def no_step_graph(model) -> NoStepGraphError | None:
    """Why ``model`` has no step graph (the error to raise), or None when it has one."""
    mt = model.config.model_type
    if not getattr(model, "has_exact_step", False):
        return NoStepGraphError(mt, type(model).__name__, False)
    if mt not in STEP_MODEL_TYPES:
        return NoStepGraphError(mt, type(model).__name__, True)
    return None


def no_step_graph_message(e: NoStepGraphError, command: str = "export.onnx", model: str = "MODEL") -> str:
    """The one-line error of :class:`NoStepGraphError` for ``command`` (``"export.onnx"``, ``"export.triton"``,
    ``"export.trt"``; ``model``: its ``--model`` value, for the command lines it suggests): what the command can do
    instead, and for a model with an exact step, what a contributor adds to give it a step graph."""
    if e.exact:
        why = f"no step exporter for model type {e.model_type!r} (known: {', '.join(STEP_MODEL_TYPES)})"
        add = (f"; to give it a step graph, add {e.model_type!r} to STEP_MODEL_TYPES in export/onnx.py, which is "
               "enough when its _step is made of standard ops (a custom scan op needs more: see zoo/models/README.md)")
    else:
        why, add = f"{e.model_class} has no exact recurrent step", ""
    window = f"python -m export.onnx --model {model} --kind window --out DIR"
    if command == "export.triton":
        do = (": export.triton --model serves such a model as a step graph; serve its window graph instead: "
              f"`{window}`, then `python -m export.triton --onnx DIR ...`")
    elif command == "export.trt":
        do = (f": export.trt builds engines of step graphs only; its window graph is exported with `{window}` (served "
              "by ONNX Runtime, or by Triton: `python -m export.triton --onnx DIR`)")
    else:
        do = "; export it with --kind window" if not e.exact else "; export its window graph with --kind window"
    return why + do + add


class VerificationError(RuntimeError):
    """ORT disagrees with PyTorch beyond tolerance; the artefact has been removed."""

    def __init__(self, message: str, report: Any = None):
        super().__init__(message)
        self.report = report


# =============================================================================================== ONNX functions
def _const_ints(name: str, values: Sequence[int]) -> onnx.NodeProto:
    return oh.make_node("Constant", [], [name], value=oh.make_tensor(name + "_v", TensorProto.INT64, [len(values)],
                                                                      list(values)))


def _if_softplus(flag: str, x: str, out: str) -> onnx.NodeProto:
    """``out = softplus(x) if flag else x`` for a scalar bool ``flag`` (from the op's softplus attribute): an ``If``
    computes only the branch it takes, and costs less in ONNX Runtime than a broadcast ``Where`` over both."""
    f = TensorProto.FLOAT
    return oh.make_node(
        "If", [flag], [out],
        then_branch=oh.make_graph([oh.make_node("Softplus", [x], [out + "_sp"])], "softplus", [],
                                  [oh.make_tensor_value_info(out + "_sp", f, None)]),
        else_branch=oh.make_graph([oh.make_node("Identity", [x], [out + "_id"])], "identity", [],
                                  [oh.make_tensor_value_info(out + "_id", f, None)]))


def _if_one_step(x: str, then_nodes: list, outputs: list[str], scan: onnx.NodeProto,
                 axis: int = 2) -> list[onnx.NodeProto]:
    """``If(x.shape[axis] == 1)``: ``then_nodes`` (closed form of one step, producing ``<output>_1``) else ``scan``
    (producing ``<output>_T``), into ``outputs``. ONNX Runtime's ``Scan`` has a fixed per-call cost (subgraph
    set-up, state copies) that dominates a one-event step; both branches compute the same recurrence."""
    f = TensorProto.FLOAT
    branch = lambda nodes, sfx: oh.make_graph(                          # noqa: E731
        nodes, f"T{sfx}", [], [oh.make_tensor_value_info(o + sfx, f, None) for o in outputs])
    return [
        oh.make_node("Shape", [x], [x + "_T"], start=axis, end=axis + 1),
        _const_ints("one_T", [1]),
        oh.make_node("Equal", [x + "_T", "one_T"], ["is_one"]),                   # [1] bool: one element
        oh.make_node("If", ["is_one"], outputs, then_branch=branch(then_nodes, "_1"), else_branch=branch([scan], "_T")),
    ]


def selective_scan_function() -> onnx.FunctionProto:
    """``SelectiveScan`` (see :data:`plugin_spec.SELECTIVE_SCAN`) as a model-local function of standard ops.

    ``dt = softplus(delta + delta_bias)`` (softplus iff the attribute ``delta_softplus`` is 1), then an ONNX ``Scan``
    over ``T`` carries ``h [B, E, N]``: ``h = exp(dt_t A) h + (dt_t u_t) B_t``, ``y_t = sum_n C_t h``; finally
    ``y = (y + D u) * silu(z)``.
    """
    spec = ps.SELECTIVE_SCAN
    u, delta, A, Bm, Cm, D, z, dbias, h0 = spec.input_names
    y, h = spec.output_names
    # body of the scan over t: state h_in [B,E,N]; scan inputs u_t, dt_t [B,E], B_t, C_t [B,N]
    body_nodes = [
        _const_ints("ax_m1", [-1]), _const_ints("ax_1", [1]),
        oh.make_node("Unsqueeze", ["dt_t", "ax_m1"], ["dt3"]),
        oh.make_node("Mul", ["dt3", A], ["dtA"]),                      # A from the function's (outer) scope
        oh.make_node("Exp", ["dtA"], ["dA"]),
        oh.make_node("Mul", ["dA", "h_in"], ["hA"]),
        oh.make_node("Mul", ["dt_t", "u_t"], ["dtu"]),
        oh.make_node("Unsqueeze", ["dtu", "ax_m1"], ["dtu3"]),
        oh.make_node("Unsqueeze", ["B_t", "ax_1"], ["B3"]),
        oh.make_node("Mul", ["dtu3", "B3"], ["dBu"]),
        oh.make_node("Add", ["hA", "dBu"], ["h_out"]),
        oh.make_node("Unsqueeze", ["C_t", "ax_1"], ["C3"]),
        oh.make_node("Mul", ["h_out", "C3"], ["hC"]),
        oh.make_node("ReduceSum", ["hC", "ax_m1"], ["y_t"], keepdims=0),
    ]
    f = TensorProto.FLOAT
    body = oh.make_graph(
        body_nodes, "selective_scan_step",
        [oh.make_tensor_value_info("h_in", f, None), oh.make_tensor_value_info("u_t", f, None),
         oh.make_tensor_value_info("dt_t", f, None), oh.make_tensor_value_info("B_t", f, None),
         oh.make_tensor_value_info("C_t", f, None)],
        [oh.make_tensor_value_info("h_out", f, None), oh.make_tensor_value_info("y_t", f, None)])
    # T == 1 (one event, the serving case): the same update in closed form, without the Scan's per-call setup
    one_step = [
        oh.make_node("Mul", ["dt", A], ["s_dtA"]),                     # [B,E,1] * [E,N] -> [B,E,N]
        oh.make_node("Exp", ["s_dtA"], ["s_dA"]),
        oh.make_node("Mul", ["s_dA", h0], ["s_hA"]),
        oh.make_node("Mul", ["dt", u], ["s_dtu"]),                     # [B,E,1]
        oh.make_node("Transpose", [Bm], ["s_Bt"], perm=[0, 2, 1]),     # [B,1,N]
        oh.make_node("Mul", ["s_dtu", "s_Bt"], ["s_dBu"]),             # [B,E,N]
        oh.make_node("Add", ["s_hA", "s_dBu"], ["h_last_1"]),
        oh.make_node("MatMul", ["h_last_1", Cm], ["y_ssm_1"]),         # [B,E,N] @ [B,N,1] -> [B,E,1]
    ]
    flag = oh.make_node("Constant", [], ["sp_flag"])
    ref = AttributeProto()
    ref.name, ref.ref_attr_name, ref.type = "value_int", "delta_softplus", AttributeProto.INT
    flag.attribute.append(ref)
    nodes = [
        _const_ints("ax_02", [0, 2]),
        oh.make_node("Unsqueeze", [dbias, "ax_02"], ["dbias3"]),
        oh.make_node("Add", [delta, "dbias3"], ["d_biased"]),
        flag,
        oh.make_node("Cast", ["sp_flag"], ["sp_bool"], to=TensorProto.BOOL),
        _if_softplus("sp_bool", "d_biased", "dt"),
        *_if_one_step(u, one_step, ["h_last", "y_ssm"], oh.make_node(
            "Scan", [h0, u, "dt", Bm, Cm], ["h_last_T", "y_ssm_T"], body=body, num_scan_inputs=4,
            scan_input_axes=[2, 2, 2, 2], scan_output_axes=[2])),
        oh.make_node("Unsqueeze", [D, "ax_02"], ["D3"]),
        oh.make_node("Mul", ["D3", u], ["Du"]),
        oh.make_node("Add", ["y_ssm", "Du"], ["y_pre"]),
        oh.make_node("Sigmoid", [z], ["z_sig"]),
        oh.make_node("Mul", [z, "z_sig"], ["z_silu"]),
        oh.make_node("Mul", ["y_pre", "z_silu"], [y]),
        oh.make_node("Identity", ["h_last"], [h]),
    ]
    default = oh.make_attribute("delta_softplus", 1)
    return oh.make_function(ps.ONNX_DOMAIN, spec.op_type, spec.input_names, spec.output_names, nodes,
                            opset_imports=[oh.make_opsetid("", OPSET)], attribute_protos=[default],
                            doc_string=spec.doc)


def lru_scan_function() -> onnx.FunctionProto:
    """``LRUScan`` (see :data:`plugin_spec.LRU_SCAN`): ``h_t = lam h_{t-1} + u_t`` on real/imaginary pairs, as an
    ONNX ``Scan`` over ``T`` returning the state after every step."""
    spec = ps.LRU_SCAN
    u_re, u_im, lam_re, lam_im, h0_re, h0_im = spec.input_names
    h_re, h_im = spec.output_names
    f = TensorProto.FLOAT
    body_nodes = [
        oh.make_node("Mul", [lam_re, "hr"], ["a1"]), oh.make_node("Mul", [lam_im, "hi"], ["a2"]),
        oh.make_node("Sub", ["a1", "a2"], ["a3"]), oh.make_node("Add", ["a3", "ur"], ["hr_new"]),
        oh.make_node("Mul", [lam_re, "hi"], ["b1"]), oh.make_node("Mul", [lam_im, "hr"], ["b2"]),
        oh.make_node("Add", ["b1", "b2"], ["b3"]), oh.make_node("Add", ["b3", "ui"], ["hi_new"]),
        oh.make_node("Identity", ["hr_new"], ["hr_seq"]), oh.make_node("Identity", ["hi_new"], ["hi_seq"]),
    ]
    body = oh.make_graph(
        body_nodes, "lru_step",
        [oh.make_tensor_value_info(n, f, None) for n in ("hr", "hi", "ur", "ui")],
        [oh.make_tensor_value_info(n, f, None) for n in ("hr_new", "hi_new", "hr_seq", "hi_seq")])
    # T == 1 (one event): h = lam h0 + u in closed form, [B, 1, N] (h0 [B, N] -> [B, 1, N] first)
    one_step = [
        _const_ints("ax_1", [1]),
        oh.make_node("Unsqueeze", [h0_re, "ax_1"], ["s_hr"]), oh.make_node("Unsqueeze", [h0_im, "ax_1"], ["s_hi"]),
        oh.make_node("Mul", [lam_re, "s_hr"], ["s_a1"]), oh.make_node("Mul", [lam_im, "s_hi"], ["s_a2"]),
        oh.make_node("Sub", ["s_a1", "s_a2"], ["s_a3"]), oh.make_node("Add", ["s_a3", u_re], [h_re + "_1"]),
        oh.make_node("Mul", [lam_re, "s_hi"], ["s_b1"]), oh.make_node("Mul", [lam_im, "s_hr"], ["s_b2"]),
        oh.make_node("Add", ["s_b1", "s_b2"], ["s_b3"]), oh.make_node("Add", ["s_b3", u_im], [h_im + "_1"]),
    ]
    nodes = _if_one_step(u_re, one_step, [h_re, h_im], oh.make_node(
        "Scan", [h0_re, h0_im, u_re, u_im], ["h_last_re", "h_last_im", h_re + "_T", h_im + "_T"], body=body,
        num_scan_inputs=2, scan_input_axes=[1, 1], scan_output_axes=[1, 1]), axis=1)
    return oh.make_function(ps.ONNX_DOMAIN, spec.op_type, spec.input_names, spec.output_names, nodes,
                            opset_imports=[oh.make_opsetid("", OPSET)], doc_string=spec.doc)


def ssd_scan_function() -> onnx.FunctionProto:
    """``SSDScan`` (see :data:`plugin_spec.SSD_SCAN`, the math of ``plugins/ssdScanPlugin``) as a model-local function
    of standard ops.

    ``dt = softplus(dt + dt_bias)`` (softplus iff the attribute ``dt_softplus`` is 1); ``B``/``C`` ``[B, T, G, N]`` are
    expanded to one row per head (head ``h`` reads group ``h // (H / G)``); then an ONNX ``Scan`` over ``T`` carries
    ``h [B, H, P, N]``: ``h = exp(dt_t A) h + (dt_t x_t) B_t``, ``y_t = sum_n C_t h``; finally ``y = y + D x``.
    """
    spec = ps.SSD_SCAN
    x, dt, A, Bm, Cm, D, dt_bias, h0 = spec.input_names
    y, h = spec.output_names
    # body of the scan over t: state h_in [B,H,P,N]; scan inputs x_t [B,H,P], dt_t [B,H], B_t, C_t [B,H,N]
    body_nodes = [
        _const_ints("ax_m1", [-1]), _const_ints("ax_m2m1", [-2, -1]), _const_ints("ax_2", [2]),
        oh.make_node("Mul", ["dt_t", A], ["dtA"]),                     # A [H] from the function's (outer) scope
        oh.make_node("Exp", ["dtA"], ["dA"]),
        oh.make_node("Unsqueeze", ["dA", "ax_m2m1"], ["dA4"]),         # [B,H,1,1]
        oh.make_node("Mul", ["dA4", "h_in"], ["hA"]),
        oh.make_node("Unsqueeze", ["dt_t", "ax_m1"], ["dt3"]),          # [B,H,1]
        oh.make_node("Mul", ["dt3", "x_t"], ["dtx"]),                   # [B,H,P]
        oh.make_node("Unsqueeze", ["dtx", "ax_m1"], ["dtx4"]),          # [B,H,P,1]
        oh.make_node("Unsqueeze", ["B_t", "ax_2"], ["B4"]),             # [B,H,1,N]
        oh.make_node("Mul", ["dtx4", "B4"], ["dBx"]),
        oh.make_node("Add", ["hA", "dBx"], ["h_out"]),
        oh.make_node("Unsqueeze", ["C_t", "ax_2"], ["C4"]),
        oh.make_node("Mul", ["h_out", "C4"], ["hC"]),
        oh.make_node("ReduceSum", ["hC", "ax_m1"], ["y_t"], keepdims=0),   # [B,H,P]
    ]
    f = TensorProto.FLOAT
    body = oh.make_graph(
        body_nodes, "ssd_scan_step",   # ranks, dims unknown: ORT 1.20-1.23 need a shape on Scan outputs under an If
        [oh.make_tensor_value_info(n, f, [None] * r)
         for n, r in (("h_in", 4), ("x_t", 3), ("dt_t", 2), ("B_t", 3), ("C_t", 3))],
        [oh.make_tensor_value_info("h_out", f, [None] * 4), oh.make_tensor_value_info("y_t", f, [None] * 3)])
    # T == 1 (one event): the same update in closed form; x [B,1,H,P], dt_eff [B,1,H], B/C_heads [B,1,H,N]
    one_step = [
        _const_ints("s_ax1", [1]), _const_ints("s_axm1", [-1]),
        oh.make_node("Mul", ["dt_eff", A], ["s_dtA"]),                           # [B,1,H]
        oh.make_node("Exp", ["s_dtA"], ["s_dA"]),
        oh.make_node("Transpose", ["s_dA"], ["s_dAt"], perm=[0, 2, 1]),         # [B,H,1]
        oh.make_node("Unsqueeze", ["s_dAt", "s_axm1"], ["s_dA4"]),              # [B,H,1,1]
        oh.make_node("Mul", ["s_dA4", h0], ["s_hA"]),                           # [B,H,P,N]
        oh.make_node("Unsqueeze", ["dt_eff", "s_axm1"], ["s_dt4"]),             # [B,1,H,1]
        oh.make_node("Mul", ["s_dt4", x], ["s_dtx"]),                           # [B,1,H,P]
        oh.make_node("Squeeze", ["s_dtx", "s_ax1"], ["s_dtx3"]),                # [B,H,P]
        oh.make_node("Unsqueeze", ["s_dtx3", "s_axm1"], ["s_dtx4"]),            # [B,H,P,1]
        oh.make_node("Transpose", ["B_heads"], ["s_Bt"], perm=[0, 2, 1, 3]),    # [B,H,1,N]
        oh.make_node("Mul", ["s_dtx4", "s_Bt"], ["s_dBx"]),
        oh.make_node("Add", ["s_hA", "s_dBx"], ["h_last_1"]),
        oh.make_node("Transpose", ["C_heads"], ["s_Ct"], perm=[0, 2, 3, 1]),    # [B,H,N,1]
        oh.make_node("MatMul", ["h_last_1", "s_Ct"], ["s_y4"]),                 # [B,H,P,1]
        oh.make_node("Transpose", ["s_y4"], ["y_ssm_1"], perm=[0, 3, 1, 2]),    # [B,1,H,P]
    ]
    flag = oh.make_node("Constant", [], ["sp_flag"])
    ref = AttributeProto()
    ref.name, ref.ref_attr_name, ref.type = "value_int", "dt_softplus", AttributeProto.INT
    flag.attribute.append(ref)
    nodes = [
        oh.make_node("Add", [dt, dt_bias], ["dt_biased"]),             # [B,T,H] + [H]
        flag,
        oh.make_node("Cast", ["sp_flag"], ["sp_bool"], to=TensorProto.BOOL),
        _if_softplus("sp_bool", "dt_biased", "dt_eff"),
        # groups -> heads: [B,T,G,N] -> [B,T,G,1,N] -> Expand [B,T,G,H/G,N] -> Reshape [B,T,H,N]
        oh.make_node("Shape", [x], ["s_H"], start=2, end=3),
        oh.make_node("Shape", [Bm], ["s_BT"], start=0, end=2),
        oh.make_node("Shape", [Bm], ["s_G"], start=2, end=3),
        oh.make_node("Shape", [Bm], ["s_N"], start=3, end=4),
        oh.make_node("Div", ["s_H", "s_G"], ["s_K"]),
        oh.make_node("Concat", ["s_BT", "s_G", "s_K", "s_N"], ["s_exp"], axis=0),
        oh.make_node("Concat", ["s_BT", "s_H", "s_N"], ["s_heads"], axis=0),
        _const_ints("ax_3", [3]),
        oh.make_node("Unsqueeze", [Bm, "ax_3"], ["B5"]),
        oh.make_node("Expand", ["B5", "s_exp"], ["B5x"]),
        oh.make_node("Reshape", ["B5x", "s_heads"], ["B_heads"]),
        oh.make_node("Unsqueeze", [Cm, "ax_3"], ["C5"]),
        oh.make_node("Expand", ["C5", "s_exp"], ["C5x"]),
        oh.make_node("Reshape", ["C5x", "s_heads"], ["C_heads"]),
        *_if_one_step(x, one_step, ["h_last", "y_ssm"], oh.make_node(
            "Scan", [h0, x, "dt_eff", "B_heads", "C_heads"], ["h_last_T", "y_ssm_T"], body=body,
            num_scan_inputs=4, scan_input_axes=[1, 1, 1, 1], scan_output_axes=[1]), axis=1),
        _const_ints("ax_m1o", [-1]),
        oh.make_node("Unsqueeze", [D, "ax_m1o"], ["D2"]),               # [H,1]
        oh.make_node("Mul", ["D2", x], ["Dx"]),
        oh.make_node("Add", ["y_ssm", "Dx"], [y]),
        oh.make_node("Identity", ["h_last"], [h]),
    ]
    default = oh.make_attribute("dt_softplus", 1)
    return oh.make_function(ps.ONNX_DOMAIN, spec.op_type, spec.input_names, spec.output_names, nodes,
                            opset_imports=[oh.make_opsetid("", OPSET)], attribute_protos=[default],
                            doc_string=spec.doc)


SCAN_FUNCTIONS = {"SelectiveScan": selective_scan_function, "LRUScan": lru_scan_function,
                  "SSDScan": ssd_scan_function}


# ============================================================================= torch ops that export as scan nodes
def _node_attrs(spec: ps.ScanOpSpec, **overrides) -> dict:
    """``g.op`` keyword attributes (``name_s`` / ``name_i``) of a scan node, from :func:`plugin_spec.node_attributes`."""
    out = {}
    for k, v in {**ps.node_attributes(spec), **overrides}.items():
        out[f"{k}_s" if isinstance(v, str) else f"{k}_i"] = v
    return out


class _SelectiveScanOp(torch.autograd.Function):
    """Runs the reference selective scan in PyTorch; exports as one ``SelectiveScan`` node."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus: int):
        from zoo.ops.selective_scan import selective_scan_ref

        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), True, h0)

    @staticmethod
    def symbolic(g, u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus):
        spec = ps.SELECTIVE_SCAN
        y, h = g.op(f"{ps.ONNX_DOMAIN}::{spec.op_type}", u, delta, A, B, C, D, z, delta_bias, h0,
                    outputs=len(spec.outputs), **_node_attrs(spec, delta_softplus=int(delta_softplus)))
        y.setType(u.type())
        h.setType(h0.type())
        return y, h


class _LRUScanOp(torch.autograd.Function):
    """Runs the sequential LRU recurrence in PyTorch; exports as one ``LRUScan`` node."""

    @staticmethod
    def forward(ctx, u_re, u_im, lam_re, lam_im, h0_re, h0_im):
        from zoo.ops.lru import lru_scan_ref

        return lru_scan_ref(u_re, u_im, lam_re, lam_im, None, h0_re, h0_im)

    @staticmethod
    def symbolic(g, u_re, u_im, lam_re, lam_im, h0_re, h0_im):
        spec = ps.LRU_SCAN
        h_re, h_im = g.op(f"{ps.ONNX_DOMAIN}::{spec.op_type}", u_re, u_im, lam_re, lam_im, h0_re, h0_im,
                          outputs=len(spec.outputs), **_node_attrs(spec))
        h_re.setType(u_re.type())
        h_im.setType(u_im.type())
        return h_re, h_im


class _SSDScanOp(torch.autograd.Function):
    """Runs the reference SSD scan in PyTorch; exports as one ``SSDScan`` node."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, dt_bias, h0, dt_softplus: int):
        from zoo.ops.ssd import ssd_scan_fn

        return ssd_scan_fn(x, dt, A, B, C, 256, D, dt_bias, bool(dt_softplus), h0)

    @staticmethod
    def symbolic(g, x, dt, A, B, C, D, dt_bias, h0, dt_softplus):
        spec = ps.SSD_SCAN
        y, h = g.op(f"{ps.ONNX_DOMAIN}::{spec.op_type}", x, dt, A, B, C, D, dt_bias, h0,
                    outputs=len(spec.outputs), **_node_attrs(spec, dt_softplus=int(dt_softplus)))
        y.setType(x.type())
        h.setType(h0.type())
        return y, h


def _selective_scan_export(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False, initial_state=None):
    if D is None or z is None or delta_bias is None or initial_state is None:
        raise ExportError("the SelectiveScan node needs D, z, delta_bias and an initial state")
    y, h = _SelectiveScanOp.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, int(bool(delta_softplus)))
    return (y, h) if return_last_state else y


def _causal_conv1d_export(x, weight, bias=None, conv_state=None, activation=None):
    """Depthwise causal conv as K shifted multiply-adds (static slices, any T). Same result as
    ``zoo.ops.conv.causal_conv1d_ref``. A grouped ``Conv`` node is faster on its own in ONNX Runtime (E = 128, K = 4,
    T = 1: 13 vs 19 µs net) but made the whole Mamba4Rec step graph 6–9 µs slower (interleaved A/B, 2026-12-02)."""
    import torch.nn.functional as F

    k = weight.shape[-1]
    if conv_state is None:
        conv_state = torch.zeros(x.shape[0], x.shape[1], k - 1, dtype=x.dtype)
    xp = torch.cat([conv_state.to(x.dtype), x], dim=-1)                      # [B, E, K-1+T]
    out = None
    for j in range(k):
        end = j - (k - 1)
        tap = xp[:, :, j:end] if end < 0 else xp[:, :, j:]                    # [B, E, T]
        term = tap * weight[:, j:j + 1]
        out = term if out is None else out + term
    if bias is not None:
        out = out + bias[:, None]
    if activation == "silu":
        out = F.silu(out)
    elif activation is not None:
        raise ExportError(f"unsupported conv activation {activation!r}")
    return out, xp[:, :, -(k - 1):] if k > 1 else xp[:, :, :0]


def _lru_scan_export(u_re, u_im, lam_re, lam_im, mask=None, h0_re=None, h0_im=None, chunk_size=20):
    if mask is not None or h0_re is None or h0_im is None:
        raise ExportError("the LRUScan node is exported for the stepwise path only (no mask, with a state)")
    return _LRUScanOp.apply(u_re, u_im, lam_re, lam_im, h0_re, h0_im)


def _lru_inputs_export(self, x):
    """``LRULayer.inputs`` as two plain linear maps ``[B, T, D] -> [B, T, N]`` (MatMul + Add): the training code's
    channel-first ``addmm`` on a ``[B T, D]`` reshape traces to ~10 shape-arithmetic nodes per layer. Same math."""
    import torch.nn.functional as F

    gamma = torch.exp(self.params_log[2])
    p = self.in_proj
    return (F.linear(x, gamma[:, None] * p.weight_re, gamma * p.bias_re),
            F.linear(x, gamma[:, None] * p.weight_im, gamma * p.bias_im))


def _lru_lam_export(self):
    """``LRULayer.lam`` as constants of the graph: PyTorch's own float32 values, taken out of the trace (through
    Python floats). Traced, ``exp(-exp(nu_log))`` and ``cos``/``sin(exp(theta_log))`` ran in the runtime, whose float32
    results differ from PyTorch's by several ulps (ONNX's reference evaluator: ~8 ulps), and ``|lam|`` near 1 carries
    such a difference through hundreds of steps: the plugin check of ``export.trt`` (priming 200 + 500 steps) measured
    1.5e-4 > 1e-4 on the bundled LRURec. Constants keep the graph's decay exactly the model's."""
    from zoo.models.lrurec import lru_lambda

    with torch.no_grad():
        lam_re, lam_im = lru_lambda(self.params_log[0], self.params_log[1])
    dtype = lam_re.dtype
    return (torch.tensor(lam_re.cpu().tolist(), dtype=dtype), torch.tensor(lam_im.cpu().tolist(), dtype=dtype))


def _lru_step_export(u_re, u_im, lam_re, lam_im, h_re, h_im):
    hr, hi = _LRUScanOp.apply(u_re.unsqueeze(1), u_im.unsqueeze(1), lam_re, lam_im, h_re, h_im)
    return hr[:, 0], hi[:, 0]


def _ssd_scan_export(x, dt, A, B, C, chunk_size=256, D=None, dt_bias=None, dt_softplus=False, initial_state=None,
                     seq_idx=None):
    """``zoo.ops.ssd.ssd_scan_fn`` as one ``SSDScan`` node (``chunk_size`` only affects PyTorch's rounding)."""
    if D is None or dt_bias is None or initial_state is None or seq_idx is not None:
        raise ExportError("the SSDScan node needs D, dt_bias and an initial state, and no seq_idx")
    y, h = _SSDScanOp.apply(x, dt, A, B, C, D, dt_bias, initial_state.to(torch.float32), int(bool(dt_softplus)))
    return y, h


def _ssd_step_not_traced(*args, **kwargs):
    raise ExportError("SSDCore.scan_and_out took its single-step branch while tracing: the step graph must be traced "
                      "with T > 1 new items (its scan branch) so that one graph serves every T")


def _ssd_one_chunk(x, dt, A, B, C, chunk_size=256, D=None, dt_bias=None, dt_softplus=False, initial_state=None,
                   seq_idx=None):
    """Window graphs: the SSD scan as ONE chunk. The chunk count is a Python int of the traced length, so a chunked
    trace would only serve windows of that length; one chunk is the same math (chunking only tiles the computation)
    and traces with a dynamic length."""
    from zoo.ops.ssd import ssd_scan_fn

    return ssd_scan_fn(x, dt, A, B, C, 1 << 30, D, dt_bias, dt_softplus, initial_state, seq_idx)


#: one trace at a time in this process: torch.onnx.export keeps its state in process-wide globals (a second export
#: while one runs fails with torch's bare ``AssertionError: GLOBALS.in_onnx_export must be False``), and the stand-ins
#: below are swapped into module globals. :func:`trace_graph` holds it around the trace; a second caller waits.
_TRACE_LOCK = threading.RLock()
#: ``threading.get_ident()`` of the thread tracing now (under :data:`_TRACE_LOCK`), else None
_tracing_thread: int | None = None


def _tracing_only(stand_in, original):
    """``stand_in`` in the thread tracing now (:data:`_tracing_thread`), ``original`` in every other one: the swap is
    process-wide, and another thread serving (``recommend``, ``step``) a model of the same type while one exports must
    go on running the zoo's own code. ``torch.onnx.is_in_onnx_export()`` is a process-wide flag, so it cannot tell
    the threads apart."""
    def call(*args, **kwargs):
        if _tracing_thread is not None and _tracing_thread == threading.get_ident():
            return stand_in(*args, **kwargs)
        return original(*args, **kwargs)

    call.__name__, call.__qualname__, call.__doc__ = stand_in.__name__, stand_in.__qualname__, stand_in.__doc__
    call.__wrapped__ = original
    return call


def _swap(target: str, stand_in):
    """``mock.patch`` of ``target`` (``"module.attr"`` or ``"module.Class.attr"``) with :func:`_tracing_only` of
    ``stand_in`` and the attribute found there now (taken as it is stored: a class's plain function stays one)."""
    import importlib
    import inspect
    from unittest import mock

    owner_path, attr = target.rsplit(".", 1)
    try:
        owner = importlib.import_module(owner_path)
    except ImportError:
        module_path, cls = owner_path.rsplit(".", 1)
        owner = getattr(importlib.import_module(module_path), cls)
    return mock.patch.object(owner, attr, _tracing_only(stand_in, inspect.getattr_static(owner, attr)))


@contextlib.contextmanager
def _window_patches():
    """Window graphs of SSD models (TiM4Rec, TiM4Rec-causal, SSD4Rec) trace their scan as one chunk (in the tracing
    thread only: :func:`_tracing_only`)."""
    with _swap("zoo.models.tim4rec.ssd_scan_fn", _ssd_one_chunk):
        yield


@contextlib.contextmanager
def _scan_nodes(model_type: str):
    """Route the model's scan calls through the custom-node ops while tracing (the zoo code itself is unchanged), in
    the tracing thread only (:func:`_tracing_only`): other threads keep the zoo's own functions."""
    patches = []
    if model_type == "mamba4rec":
        patches += [_swap("zoo.models.mamba4rec.selective_scan_fn", _selective_scan_export),
                    _swap("zoo.models.mamba4rec.causal_conv1d", _causal_conv1d_export)]
    elif model_type == "lrurec":
        patches += [_swap("zoo.models.lrurec.lru_scan_ref", _lru_scan_export),
                    _swap("zoo.models.lrurec.lru_step_ref", _lru_step_export),
                    _swap("zoo.models.lrurec.LRULayer.inputs", _lru_inputs_export),
                    _swap("zoo.models.lrurec.LRULayer.lam", _lru_lam_export)]
    elif model_type == "tim4rec_causal":         # SSDCore.scan_and_out (zoo/models/tim4rec.py) runs the SSD
        patches += [_swap("zoo.models.tim4rec.ssd_scan_fn", _ssd_scan_export),
                    _swap("zoo.models.tim4rec.ssd_step_ref", _ssd_step_not_traced)]
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        yield


@contextlib.contextmanager
def _tracing():
    """Hold :data:`_TRACE_LOCK` (waiting for another thread's trace to end) and mark this thread as the one tracing,
    for the block: for the stand-ins (:func:`_tracing_only`) and for the zoo's ops
    (:func:`zoo.ops.conv.exporting_in_this_thread`: their reference paths here, their kernels in the other threads,
    which ``torch.onnx.is_in_onnx_export()``, process-wide, would send to the reference paths too)."""
    from zoo.ops.conv import exporting_in_this_thread

    global _tracing_thread
    with _TRACE_LOCK, exporting_in_this_thread():
        before = _tracing_thread
        _tracing_thread = threading.get_ident()
        try:
            yield
        finally:
            _tracing_thread = before


# ======================================================================================== graph wrappers (torch)
def _pad_mask(n_items: int, excluded: Sequence[int] = ()) -> torch.Tensor:
    """``[n_items]`` additive mask: -inf at the padding id 0 and at the ``excluded`` items (``--exclude-items``), 0
    elsewhere (an initializer in the graph)."""
    pad = torch.zeros(n_items)
    pad[0] = float("-inf")
    pad[list(excluded)] = float("-inf")
    return pad


def _mask_and_topk(scores: torch.Tensor, pad: torch.Tensor, k: int, seen: torch.Tensor | None = None,
                   candidates: torch.Tensor | None = None):
    """Padding logit (column 0) -> -inf, with ``candidates [B, C]`` (``--candidates``) every item a restricted row does
    not list -> -inf too, the items flagged in ``seen [B, n_items]`` (``--exclude-seen``) -> :data:`SEEN_SCORE`
    (never an item already at ``-inf``), then top-k. The ``seen`` mask is the last op before ``TopK`` so it is part of
    the fp32 score tail of an fp16 graph (``SEEN_SCORE`` does not fit float16); the candidates join the additive
    ``-inf`` mask, and :func:`convert_to_fp16` keeps every node they feed in that tail too. With candidates, a top-k
    slot left without an item (a row listing fewer than ``k``) gets id 0 and score ``-inf``."""
    if candidates is not None:
        allowed = torch.zeros_like(scores).scatter(1, candidates, torch.ones_like(candidates, dtype=scores.dtype))
        restricted = (candidates > 0).long().sum(dim=1, keepdim=True) > 0           # a row with a real candidate
        pad = torch.where(restricted & (allowed == 0), torch.full_like(scores, float("-inf")), pad.expand_as(scores))
    scores = scores + pad
    if seen is not None:
        scores = scores.masked_fill((seen > 0) & (pad == 0), SEEN_SCORE)
    vals, ids = torch.topk(scores, k, dim=-1)
    if candidates is not None:
        ids = torch.where(vals == float("-inf"), torch.zeros_like(ids), ids)
    return ids, vals, scores


def _mark_seen(seen: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
    """``seen [B, n_items]`` float32 with 1 at every id of ``item_ids [B, T]`` (one ``ScatterElements``; repeated ids
    in a row write the same 1, so their order does not matter)."""
    return seen.scatter(1, item_ids, torch.ones_like(item_ids, dtype=seen.dtype))


class StepGraph(torch.nn.Module):
    """``(item_ids [B, T], [timestamps], *state) -> (topk_ids, topk_scores, scores, [user_vector], *new_state)`` via
    ``model._step``."""

    def __init__(self, model, k: int, states=None, exclude_seen: bool = False, excluded: Sequence[int] = (),
                 user_vector: bool = False, candidates: bool = False):
        super().__init__()
        self.model = model
        self.k = k
        self.user_vector = bool(user_vector)
        self.candidates = bool(candidates)          # the last input: candidates [B, C]
        states = model.state_spec(1) if states is None else states
        self.exclude_seen = bool(exclude_seen)
        #: the model's states (``model._step``), then the graph's own ``seen`` state with ``exclude_seen``
        self.state_names = [s.name for s in states] + ([SEEN_STATE] if exclude_seen else [])
        #: each new state keeps its declared dtype (float64 ``last_ts`` must not be rounded to float32)
        self.state_dtypes = [s.dtype for s in states] + ([torch.float32] if exclude_seen else [])
        self.uses_timestamps = bool(model.uses_timestamps)
        self.register_buffer("pad", _pad_mask(model.config.n_items, excluded), persistent=False)

    def _split(self, item_ids, rest):
        """``(model state dict, new seen state or None)`` from the state inputs."""
        state = dict(zip(self.state_names, rest, strict=True))
        seen = _mark_seen(state.pop(SEEN_STATE), item_ids) if self.exclude_seen else None
        return state, seen

    def forward(self, item_ids, *rest):
        ts = None
        if self.uses_timestamps:
            ts, rest = rest[0].double(), rest[1:]
        rest, cands = (rest[:-1], rest[-1]) if self.candidates else (rest, None)
        state, seen = self._split(item_ids, rest)
        hidden, new_state = self.model._step(item_ids, state, ts)
        return self._outputs(hidden, new_state, seen, cands)

    def _outputs(self, hidden, new_state, seen=None, candidates=None):
        scores = self.model.score(hidden[:, -1]).float()
        ids, vals, scores = _mask_and_topk(scores, self.pad, self.k, seen, candidates)
        vector = (self.model.vector_of_hidden(hidden[:, -1]),) if self.user_vector else ()
        new_state = {**new_state, **({SEEN_STATE: seen} if seen is not None else {})}
        states = [new_state[n] for n in self.state_names]
        # a Cast only where the dtype changes: a no-op Cast in front of a graph output stays in ORT's plan
        return (ids, vals, scores, *vector,
                *[t if t.dtype == d else t.to(d) for t, d in zip(states, self.state_dtypes, strict=True)])


class GapsStepGraph(StepGraph):
    """``--time-input gaps``: ``(item_ids [B, T], time_gaps [B, T] float32, *state without last_ts) -> ...`` via
    ``model._step_from_gaps`` (the same time features and layers as ``model._step``; the float64 differencing of the
    timestamps and ``last_ts`` are the caller's), so every graph tensor is float32 or int64."""

    def __init__(self, model, k: int, exclude_seen: bool = False, excluded: Sequence[int] = (),
                 user_vector: bool = False, candidates: bool = False):
        super().__init__(model, k, split_time_states(model, "gaps")[0], exclude_seen, excluded, user_vector,
                         candidates)

    def forward(self, item_ids, time_gaps, *rest):
        rest, cands = (rest[:-1], rest[-1]) if self.candidates else (rest, None)
        state, seen = self._split(item_ids, rest)
        hidden, new_state = self.model._step_from_gaps(item_ids, state, time_gaps)
        return self._outputs(hidden, new_state, seen, cands)


class WindowGraph(torch.nn.Module):
    """``(item_ids [B, L] padded with 0, [timestamps]) -> (topk_ids, topk_scores, scores, [user_vector])`` via
    ``model.encode``."""

    def __init__(self, model, k: int, exclude_seen: bool = False, excluded: Sequence[int] = (),
                 user_vector: bool = False, candidates: bool = False):
        super().__init__()
        self.model = model
        self.k = k
        self.user_vector = bool(user_vector)
        self.candidates = bool(candidates)          # the last input: candidates [B, C]
        self.exclude_seen = bool(exclude_seen)
        self.uses_timestamps = bool(model.uses_timestamps)
        self.register_buffer("pad", _pad_mask(model.config.n_items, excluded), persistent=False)

    def forward(self, item_ids, *rest):
        ts = rest[0].double() if self.uses_timestamps else None
        cands = rest[-1] if self.candidates else None
        mask = item_ids != 0
        hidden = self.model.encode(item_ids, mask, ts)                        # [B, L, D]
        if self.model.padding_side == "right":
            last = mask.long().sum(1) - 1
            h = torch.gather(hidden, 1, last.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1]))[:, 0]
        else:
            h = hidden[:, -1]
        scores = self.model.score(h).float()
        # --exclude-seen: the items of the window (the padding id 0 is flagged too, and stays -inf)
        seen = _mark_seen(torch.zeros_like(scores), item_ids) if self.exclude_seen else None
        vector = (self.model.vector_of_hidden(h),) if self.user_vector else ()
        return (*_mask_and_topk(scores, self.pad, self.k, seen, cands), *vector)


# ================================================================================================ the exporter
@dataclass
class ExportResult:
    """What :func:`export_model` wrote."""

    kind: str
    graph_path: str
    spec_path: str
    spec: dict
    report: Any = None                      # export.verify.VerifyReport (None with verify=False)
    files: list = field(default_factory=list)


def resolve_time_input(model, kind: str, time_input: str | None = None) -> str | None:
    """The time form of ``model``'s ``kind`` graph: None for models that do not read time, else ``time_input``
    (default "timestamps"); "gaps" needs a step graph of a model with ``_step_from_gaps`` (TiM4Rec-causal)."""
    if time_input is not None and time_input not in TIME_INPUTS:
        raise ExportError(f"time_input must be one of {', '.join(TIME_INPUTS)}, got {time_input!r}")
    if not model.uses_timestamps:
        if time_input is not None:
            raise ExportError(f"--time-input {time_input}: {model.config.model_type} does not read time")
        return None
    if time_input == "gaps":
        if kind != "step":
            raise ExportError("--time-input gaps is for step graphs (window graphs take float64 timestamps)")
        if not callable(getattr(model, "_step_from_gaps", None)):
            raise ExportError(f"--time-input gaps: {type(model).__name__} has no step from time gaps "
                              "(_step_from_gaps)")
    return time_input or "timestamps"


def gaps_form_available(model) -> bool:
    """Whether ``model``'s step graph can take float32 ``time_gaps`` (``--time-input gaps``)."""
    return bool(model.uses_timestamps and getattr(model, "has_exact_step", False)
                and callable(getattr(model, "_step_from_gaps", None)))


def split_time_states(model, time_input: str | None, batch_size: int = 1) -> tuple[list, list]:
    """``model.state_spec(batch_size)`` split into (graph states, client states): the gaps form leaves
    :data:`CLIENT_TIME_STATES` (``last_ts``) to the caller."""
    states = model.state_spec(batch_size)
    if time_input != "gaps":
        return states, []
    return ([s for s in states if s.name not in CLIENT_TIME_STATES],
            [s for s in states if s.name in CLIENT_TIME_STATES])


def _io_entry(name, shape, dtype, doc=""):
    return {"name": name, "shape": list(shape), "dtype": dtype, "doc": doc}


def _state_entry(s) -> dict:
    return {"name": s.name, "shape": ["B", *s.shape[1:]], "dtype": str(s.dtype).replace("torch.", ""),
            "init": float(s.init), "output": f"{s.name}_out", "doc": s.doc}


def build_spec(model, kind: str, k: int, with_scores: bool, precision: str = "fp32",
               time_input: str | None = None, exclude_seen: bool = False, user_vector: bool = False,
               candidates: bool = False) -> dict:
    """The I/O table written to ``state_spec.json`` (and into the card / README)."""
    c = model.config
    time_input = resolve_time_input(model, kind, time_input)
    inputs, outputs, state = [], [], []
    if kind == "step":
        inputs.append(_io_entry("item_ids", ["B", "T"], "int64",
                                f"T >= 1 new real items per row (1 .. {c.n_items - 1}), oldest first; 0 is not allowed"))
    else:
        inputs.append(_io_entry("item_ids", ["B", "L"], "int64",
                                f"history window, 0-padded on the {model.padding_side}, L <= {c.max_seq_length}"))
    if time_input == "timestamps":
        inputs.append(_io_entry("timestamps", ["B", inputs[0]["shape"][1]], "float64",
                                "seconds, non-decreasing per row (float64: float32 cannot hold epoch seconds exactly)"))
    elif time_input == "gaps":
        inputs.append(_io_entry(TIME_GAPS_INPUT, ["B", "T"], "float32",
                                "seconds since the row's previous event (0 for its first event ever), >= 0; computed "
                                "by the caller in float64 from Unix-second timestamps and its last_ts, then cast to "
                                "float32 (time_input_doc)"))
    graph_states, client_states = split_time_states(model, time_input) if kind == "step" else ([], [])
    for s in graph_states:
        state.append(_state_entry(s))
        inputs.append(_io_entry(s.name, state[-1]["shape"], state[-1]["dtype"], s.doc))
    if exclude_seen and kind == "step":
        state.append({"name": SEEN_STATE, "shape": ["B", int(c.n_items)], "dtype": "float32", "init": 0.0,
                      "output": f"{SEEN_STATE}_out", "doc": SEEN_DOC})
        inputs.append(_io_entry(SEEN_STATE, state[-1]["shape"], "float32", SEEN_DOC))
    if candidates:                              # the last input, after the states
        inputs.append(_io_entry(CANDIDATES, ["B", "C"], "int64", CANDIDATES_DOC))
    seen_note = (f"; items of the history ({'seen state' if kind == 'step' else 'input window'}) score "
                 f"{SEEN_SCORE:.8g} (--exclude-seen)") if exclude_seen else ""
    outputs.append(_io_entry("topk_ids", ["B", k], "int64", "internal item indices, best first (never 0)"
                             + (", unseen items first" if exclude_seen else "")))
    outputs.append(_io_entry("topk_scores", ["B", k], "float32", "raw scores of topk_ids" + seen_note))
    if with_scores:
        outputs.append(_io_entry("scores", ["B", c.n_items], "float32",
                                 "raw next-item scores; column 0 (padding) = -inf" + seen_note))
    if user_vector:
        outputs.append(_io_entry(USER_VECTOR, ["B", model.vector_size], "float32", USER_VECTOR_DOC))
    for s in state:
        outputs.append(_io_entry(s["output"], s["shape"], s["dtype"], f"new {s['name']}"))
    ops = []
    op = SCAN_OP_OF_MODEL.get(c.model_type) if kind == "step" else None
    if op is not None:
        ops.append({"domain": ps.ONNX_DOMAIN, "domain_version": ps.ONNX_DOMAIN_VERSION, "op_type": op.op_type,
                    "count": int(getattr(c, "num_layers", 1)), "attributes": ps.node_attributes(op),
                    "inputs": op.input_names, "outputs": op.output_names, "plugin_library": ps.PLUGIN_LIBRARY})
    return {
        "format": SPEC_FORMAT, "kind": kind, "graph": GRAPH_FILE, "model_type": c.model_type, "opset": OPSET,
        "n_items": int(c.n_items), "max_seq_length": int(c.max_seq_length), "topk": int(k), "padding_id": 0,
        "padding_side": model.padding_side, "uses_timestamps": bool(model.uses_timestamps),
        "time_input": time_input, "inputs": inputs, "outputs": outputs, "state": state,
        # states the caller keeps beside the graph state (gaps form: last_ts); same fields, never fed to the graph
        "client_state": [{key: v for key, v in _state_entry(s).items() if key != "output"} for s in client_states],
        **({"time_input_doc": TIME_GAPS_DOC} if time_input == "gaps" else {}),
        "custom_ops": ops, "precision": precision,
        # --exclude-seen: items of the history are ranked last (score SEEN_SCORE): step graphs keep a `seen` state,
        # window graphs mask the input window
        "exclude_seen": bool(exclude_seen), **({"seen_score": SEEN_SCORE} if exclude_seen else {}),
        # --candidates: a candidates [B, C] input restricts each row's ranking to the items it lists
        "candidates": bool(candidates),
        # --user-vector: the query vector of maximum-inner-product retrieval (zoo.embed's item vectors)
        **({USER_VECTOR: {"size": model.vector_size, "bias_column": model.item_output()[1] is not None}}
           if user_vector else {}),
    }


def _set_value_info(vi: onnx.ValueInfoProto, shape, dtype: str) -> None:
    elem = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64, "float16": TensorProto.FLOAT16,
            "float64": TensorProto.DOUBLE}[dtype]
    vi.type.tensor_type.elem_type = elem
    vi.type.tensor_type.ClearField("shape")
    shp = vi.type.tensor_type.shape
    for d in shape:
        dim = shp.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = int(d)


def _value_ranks(mp: onnx.ModelProto) -> dict[str, int]:
    """The rank of each value of the graph, by ONNX shape inference on a copy without the initializers' data (given as
    typed inputs instead), so that a graph past protobuf's 2 GiB, which shape inference would have to serialize, is
    inferred too."""
    from onnx import shape_inference

    g = mp.graph
    named = {i.name for i in g.input}
    typed = [oh.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.initializer if t.name not in named]
    skeleton = oh.make_model(oh.make_graph(list(g.node), g.name, [*g.input, *typed], list(g.output)),
                             opset_imports=list(mp.opset_import), functions=list(mp.functions),
                             ir_version=mp.ir_version)
    inferred = shape_inference.infer_shapes(skeleton).graph
    return {vi.name: len(vi.type.tensor_type.shape.dim) for vi in [*inferred.value_info, *inferred.input,
                                                                    *inferred.output]
            if vi.type.tensor_type.HasField("shape")}


def _share_tied_weights(mp: onnx.ModelProto) -> int:
    """Score with the item table itself, not a copy of it; returns the copies removed.

    A tied output layer (``hidden @ E^T``, no bias) exports as ``MatMul(hidden, Transpose(E))``, and constant folding
    turns the transpose into a second initializer; BERT4Rec's (``E[:V]``, a [MASK] row past the items, plus a bias)
    exports as ``Gemm(hidden, Slice(E), b, transB=1)`` with the slice folded. Either way the file held the item table
    twice: its largest tensor, so about twice the file and the weights a runtime loads. Each such ``MatMul`` whose
    ``hidden`` is 2-D (as in every zoo graph: the scores of the last position) becomes ``Gemm(hidden, E, transB=1)``,
    which reads ``E`` in place (another rank reads ``Transpose(E)``); leading rows are a ``Slice`` node (folded by the
    runtime when it loads the graph, not stored). Initializers that copy no other are left alone."""
    from onnx import numpy_helper

    g = mp.graph
    inits = {t.name: t for t in g.initializer}
    tables = [t for t in g.initializer if len(t.dims) == 2]

    def values(t) -> np.ndarray:
        """``t``'s values; a read-only view of its bytes when it has them (the item table is not copied per node)."""
        if t.raw_data:
            return np.frombuffer(t.raw_data, dtype=oh.tensor_dtype_to_np_dtype(t.data_type)).reshape(tuple(t.dims))
        return numpy_helper.to_array(t)

    def source_of(copy, transposed: bool):
        """The table ``E [R >= V, D]`` whose first ``V`` rows are ``copy`` (``[D, V]`` when ``transposed``, else
        ``[V, D]``; BERT4Rec's table has a [MASK] row past them), or None."""
        rows_of = values(copy).T if transposed else values(copy)            # [V, D]
        for w in tables:
            if (w.name != copy.name and w.data_type == copy.data_type and w.dims[1] == rows_of.shape[1]
                    and w.dims[0] >= rows_of.shape[0] and np.array_equal(values(w)[:rows_of.shape[0]], rows_of)):
                return w, rows_of.shape[0]
        return None

    def attr(n, name, default=0):
        return next((oh.get_attribute_value(a) for a in n.attribute if a.name == name), default)

    ranks = None
    removed, nodes, added = set(), [], []
    for n in g.node:
        copy = inits.get(n.input[1]) if n.op_type in ("MatMul", "Gemm") and len(n.input) >= 2 else None
        found = None
        if copy is not None and len(copy.dims) == 2 and copy.name not in removed:
            if n.op_type == "MatMul":
                found = source_of(copy, transposed=True)
            elif attr(n, "transB") == 1 and not attr(n, "transA"):
                found = source_of(copy, transposed=False)
                if found is not None and found[0].dims[0] == found[1]:
                    found = None                                           # it reads the table itself already
        if found is None:
            nodes.append(n)
            continue
        source, rows = found
        weight = source.name
        if source.dims[0] != rows:                                         # its leading rows: a Slice, not a copy
            weight = f"{source.name}/rows"
            bounds = [f"{weight}/{k}" for k in ("starts", "ends", "axes")]
            added += [numpy_helper.from_array(np.array([v], dtype=np.int64), name)
                      for v, name in zip((0, rows, 0), bounds)]
            nodes.append(oh.make_node("Slice", [source.name, *bounds], [weight], name=f"{n.name}/rows"))
        if n.op_type == "Gemm":
            n.input[1] = weight
            nodes.append(n)
        else:
            if ranks is None:
                ranks = _value_ranks(mp)
            if ranks.get(n.input[0]) == 2:
                nodes.append(oh.make_node("Gemm", [n.input[0], weight], list(n.output), name=n.name, transB=1))
            else:
                t_out = f"{weight}/transposed"
                nodes += [oh.make_node("Transpose", [weight], [t_out], name=f"{n.name}/Transpose", perm=[1, 0]),
                          oh.make_node("MatMul", [n.input[0], t_out], list(n.output), name=n.name)]
        removed.add(copy.name)
    if removed:
        still_read = {i for n in nodes for i in n.input}
        del g.node[:]
        g.node.extend(nodes)
        keep = [t for t in g.initializer if t.name not in removed or t.name in still_read]
        del g.initializer[:]
        g.initializer.extend(keep + added)
    return len(removed)


def _postprocess(mp: onnx.ModelProto, spec: dict, model) -> onnx.ModelProto:
    """Fix I/O names/shapes, attach the scan functions and the opset of the custom domain, drop unused outputs, and
    read a tied item table in place (:func:`_share_tied_weights`)."""
    want_out = [o["name"] for o in spec["outputs"]]
    by_name = {o["name"]: o for o in spec["inputs"] + spec["outputs"]}
    keep = [o for o in mp.graph.output if o.name in want_out]
    del mp.graph.output[:]
    mp.graph.output.extend(sorted(keep, key=lambda o: want_out.index(o.name)))
    for vi in list(mp.graph.input) + list(mp.graph.output):
        e = by_name[vi.name]
        _set_value_info(vi, e["shape"], e["dtype"])
    del mp.graph.value_info[:]                                     # exporter's guesses; shape inference redoes them
    used = sorted({n.op_type for n in mp.graph.node if n.domain == ps.ONNX_DOMAIN})
    for i, n in enumerate(x for x in mp.graph.node if x.domain == ps.ONNX_DOMAIN):
        n.name = f"layer{i}/{n.op_type}"
    del mp.functions[:]
    mp.functions.extend(SCAN_FUNCTIONS[u]() for u in used)
    others = [o for o in mp.opset_import if o.domain not in ("", "ai.onnx", ps.ONNX_DOMAIN)]
    del mp.opset_import[:]
    mp.opset_import.extend([oh.make_opsetid("", OPSET)] + others)
    if used:
        mp.opset_import.append(oh.make_opsetid(ps.ONNX_DOMAIN, ps.ONNX_DOMAIN_VERSION))
    mp.ir_version = IR_VERSION
    mp.producer_name = "ssm-rec-zoo export.onnx"
    mp.doc_string = f"{model.config.model_type} {spec['kind']} graph; I/O table in {SPEC_FILE}"
    del mp.metadata_props[:]
    for k, v in {"model_type": spec["model_type"], "kind": spec["kind"], "n_items": str(spec["n_items"]),
                 "topk": str(spec["topk"]), "state_spec": json.dumps(spec["state"]),
                 **({"time_input": spec["time_input"]} if spec.get("time_input") else {}),
                 **({"exclude_seen": "1"} if spec.get("exclude_seen") else {}),
                 **({CANDIDATES: "1"} if spec.get(CANDIDATES) else {}),
                 **({USER_VECTOR: str(spec[USER_VECTOR]["size"])} if spec.get(USER_VECTOR) else {})}.items():
        mp.metadata_props.add(key=k, value=v)
    _share_tied_weights(mp)
    return mp


def _example_inputs(model, kind: str, batch: int = 2, length: int = 3, time_input: str | None = None,
                    exclude_seen: bool = False, candidates: bool = False):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, model.config.n_items, (batch, length), generator=g)
    args, names, dyn = [ids], ["item_ids"], {"item_ids": {0: "B", 1: "T" if kind == "step" else "L"}}
    if time_input == "timestamps":
        args.append(1.6e9 + torch.arange(length, dtype=torch.float64).repeat(batch, 1) * 60.0)
        names.append("timestamps")
        dyn["timestamps"] = dyn["item_ids"]
    elif time_input == "gaps":
        args.append(torch.full((batch, length), 60.0))
        names.append(TIME_GAPS_INPUT)
        dyn[TIME_GAPS_INPUT] = dyn["item_ids"]
    if kind == "step":
        for s in split_time_states(model, time_input, batch)[0]:
            args.append(torch.randn(s.shape, generator=g) * 0.1 if s.dtype == torch.float32
                        else torch.full(s.shape, s.init, dtype=s.dtype))
            names.append(s.name)
            dyn[s.name] = {0: "B"}
        if exclude_seen:
            seen = torch.zeros(batch, model.config.n_items)
            seen[:, 1::7] = 1.0
            args.append(seen)
            names.append(SEEN_STATE)
            dyn[SEEN_STATE] = {0: "B"}
    if candidates:
        args.append(torch.tensor([[3, 1, 0, 2], [0, 0, 0, 0]] * (batch // 2) + [[5, 4, 0, 0]] * (batch % 2))[:batch])
        names.append(CANDIDATES)
        dyn[CANDIDATES] = {0: "B", 1: "C"}
    return tuple(args), names, dyn


STATE_FINGERPRINT = "state_fingerprint"
"""Spec key of a step graph's state fingerprint (:func:`state_fingerprint`)."""


def state_fingerprint(model, spec: dict) -> str:
    """``sha256:<hex>`` of what a step graph's recurrent state depends on: the model's weights and buffers (names,
    dtypes, shapes, bytes), its type, the graph's precision and time input, and the state layout (names, shapes,
    dtypes), and its item vocabulary (``model.item_vocab``: the ordered external ids, hashed; none for a model
    without one). Two graphs share it exactly when a state one of them wrote means the same to the other: a re-export
    (another top-k, with or without ``scores``) keeps it, retraining, a grown or reordered catalogue (the same
    weights under another vocabulary: a state holds internal indices, which then name other items), fp16 or another
    state layout change it. Explicit-state clients tag the states they store with it (:class:`export.triton_client.
    ExplicitStateRecommender`, :class:`export.runtime.UserStateRecommender`), so that a state written by an earlier
    model is never fed to a new one. (Exports written before the vocabulary counted carry another fingerprint for the
    same model: re-exported, their stored states are refused as stale once, then primed again.)"""
    import hashlib

    h = hashlib.sha256()
    head = {"model_type": spec["model_type"], "precision": spec.get("precision", "fp32"),
            "time_input": spec.get("time_input"), "exclude_seen": bool(spec.get("exclude_seen")),
            "state": [[st["name"], st["shape"][1:], st["dtype"]] for st in spec["state"]]}
    vocab = getattr(model, "item_vocab", None)
    if vocab is not None:       # the ordered ids: the same weights under another vocabulary mean other items
        head["item_vocab"] = "sha256:" + hashlib.sha256(json.dumps(
            [x if isinstance(x, str) else int(x) for x in vocab.items], ensure_ascii=False).encode()).hexdigest()
    h.update(json.dumps(head, sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def graph_sizes(model) -> tuple[int, int]:
    """``(weights, traced)`` bytes: the graph written holds the weights once; torch's trace holds them plus the copy of
    the output layer its constant folding makes for a tied item table (``hidden @ E^T``; :func:`_postprocess` removes
    it). A trace past :data:`ONNX_PROTOBUF_LIMIT` goes through a file with external data (:func:`trace_graph`); a
    graph whose weights pass :data:`EXTERNAL_DATA_BYTES` is written with external data (:func:`export_model`)."""
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    output = model.item_output()[0]
    return weights, weights + output.numel() * output.element_size()


def trace_graph(model, kind: str, k: int, with_scores: bool = False, precision: str = "fp32",
                time_input: str | None = None, exclude_seen: bool = False,
                exclude_items: Sequence[int] = (), user_vector: bool = False,
                candidates: bool = False, warn: Callable[[str], None] | None = None) -> tuple[onnx.ModelProto, dict]:
    """Trace ``model`` into an ONNX ModelProto (not written) and its I/O spec; ``precision="fp16"`` then converts it
    with :func:`convert_to_fp16` (graph I/O, states, scan nodes and the score tail stay fp32). ``time_input``: see
    :data:`TIME_INPUTS` (time-aware models only; default "timestamps"). ``exclude_seen``: rank the history's items last
    (see :data:`export.runtime.SEEN_SCORE`). ``exclude_items``: internal indices never recommended (their scores are
    ``-inf`` like the padding's, in the graph's constant mask; ``spec["excluded_items"]`` lists them). ``user_vector``:
    also output the query vector :data:`USER_VECTOR` (``model.vector_of_hidden`` of the hidden state scored from).
    ``candidates``: one more input, :data:`CANDIDATES` ``[B, C]``, restricting each row's ranking
    (:data:`CANDIDATES_DOC`). Threads: one trace at a time per process (a second waits, :data:`_TRACE_LOCK`); other
    threads may serve models meanwhile (the trace's stand-ins act in its own thread only, :func:`_tracing_only`).
    ``warn`` (default: this module's logger, at INFO) is told, in one line, of the trace warnings torch gives
    (``torch.jit.TracerWarning``: a value the trace fixed, which the graph may not generalize: every bundled model
    has some, mostly input checks; :func:`export_model` shows the line when the graph is not verified, or fails);
    torch's other warnings during the trace are dropped. ``kind="step"`` for a model with no step graph raises
    :class:`NoStepGraphError` (:func:`no_step_graph`)."""
    excluded = sorted({int(i) for i in exclude_items})
    if excluded and not 1 <= excluded[0] <= excluded[-1] < model.config.n_items:
        raise ExportError(f"exclude_items holds item indices outside 1..{model.config.n_items - 1}")
    if precision == "int8":
        raise ExportError("precision 'int8' is applied to the written, verified fp32 graph by export_model "
                          "(quantize_int8); trace_graph traces fp32 or fp16")
    if precision not in PRECISION_DOC:
        raise ExportError(f"precision must be one of {', '.join(PRECISION_DOC)}, got {precision!r}")
    mt = model.config.model_type
    if kind not in ("step", "window"):
        raise ExportError(f"kind must be 'step' or 'window', got {kind!r}")
    time_input = resolve_time_input(model, kind, time_input)
    if kind == "step":
        refused = no_step_graph(model)
        if refused is not None:
            raise refused
        kw = dict(exclude_seen=exclude_seen, excluded=excluded, user_vector=user_vector, candidates=candidates)
        module = GapsStepGraph(model, k, **kw) if time_input == "gaps" else StepGraph(model, k, **kw)
    elif kind == "window":
        if mt in SCAN_STEP_MODEL_TYPES:
            raise ExportError(f"{mt} exports as a step graph (--kind step): its parallel training-time scan traces to "
                              "one fixed length, and the step graph serves any history length")
        module = WindowGraph(model, k, exclude_seen=exclude_seen, excluded=excluded, user_vector=user_vector,
                             candidates=candidates)
    weights, traced_size = graph_sizes(model)
    if precision == "fp16" and time_input not in (None, "gaps"):
        raise ExportError(f"--fp16 is not supported for time-aware models ({mt}) with float64 timestamps: their time "
                          "features start from raw second differences, far beyond float16's range (65504); export "
                          "them in fp32" + (", or as a step graph with --time-input gaps (float32 gaps, time "
                                            "features in fp32)" if gaps_form_available(model) else ""))
    if not 1 <= k <= model.config.n_items - 1 - len(excluded):
        raise ExportError(f"topk must be in 1..{model.config.n_items - 1 - len(excluded)} (the items left to "
                          f"recommend{f' after {len(excluded)} excluded' if excluded else ''}), got {k}")
    spec = build_spec(model, kind, k, with_scores, precision, time_input, exclude_seen, user_vector, candidates)
    if excluded:
        spec["excluded_items"] = excluded
    length = 3 if kind == "step" else min(5, model.config.max_seq_length)
    args, in_names, dyn = _example_inputs(model, kind, length=length, time_input=time_input,
                                          exclude_seen=exclude_seen and kind == "step", candidates=candidates)
    out_names = (["topk_ids", "topk_scores", "scores"] + ([USER_VECTOR] if user_vector else [])
                 + [s["output"] for s in spec["state"]])
    for o in out_names:
        dyn[o] = {0: "B"}
    was_training = model.training
    model.eval()
    # the trace holds the tied item table twice (see graph_sizes): past protobuf's limit torch writes it to a
    # file with external data, read back whole; _postprocess then drops the copy, and the graph fits one file again
    large = traced_size > ONNX_PROTOBUF_LIMIT
    workdir = tempfile.TemporaryDirectory(prefix="zoo-onnx-trace-") if large else contextlib.nullcontext()
    try:
        with workdir as folder:
            target = os.path.join(folder, "traced.onnx") if large else io.BytesIO()
            patches = _scan_nodes(mt) if kind == "step" else _window_patches()
            with _tracing(), torch.no_grad(), patches, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.onnx.export(module, args, target, dynamo=False, opset_version=OPSET, input_names=in_names,
                                  output_names=out_names, dynamic_axes=dyn, do_constant_folding=True)
            note = _tracer_warning_note(caught, length)
            if note:
                (warn or logger.info)(note)
            traced = onnx.load(target) if large else onnx.load_from_string(target.getvalue())
    finally:
        model.train(was_training)
    mp = _postprocess(traced, spec, model)
    if precision == "fp16":
        mp = convert_to_fp16(mp, spec)
    if weights <= EXTERNAL_DATA_BYTES:       # a larger graph cannot be checked in memory: export_model checks its file
        onnx.checker.check_model(mp, full_check=True)
    return mp, spec


def _tracer_warning_note(caught: Sequence[warnings.WarningMessage], length: int) -> str | None:
    """One line on the ``torch.jit.TracerWarning`` s among ``caught`` (the warnings of a trace at example length
    ``length``; the others are dropped), or None when there is none: how many, and the distinct places that raised
    them (at most four, with what torch converted there: ``zoo/models/x.py:12 (a Python boolean)``)."""
    import re

    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    if not tracer:
        return None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    places: dict[str, str] = {}
    for w in tracer:
        path = str(w.filename)
        path = (os.path.relpath(path, root) if path.startswith(root + os.sep)
                else path.split("site-packages" + os.sep)[-1])
        what = re.search(r"Converting a tensor to (a Python \w+)", str(w.message))
        places.setdefault(f"{path}:{w.lineno}", f" ({what.group(1)})" if what else "")
    shown = [p + what for p, what in list(places.items())[:4]]
    more = f", and {len(places) - 4} more places" if len(places) > 4 else ""
    return (f"warning: torch's tracer warned {len(tracer)} time{'s' * (len(tracer) > 1)} that the trace fixed a "
            f"value which may not generalize beyond its example (length {length}): at {', '.join(shown)}{more}")


# ============================================================================================ fp16 conversion
#: op types that always compute in fp32 in an fp16 graph (besides the scan nodes, the state paths and the score tail)
FP16_BLOCKED_OPS = ("TopK", "Range", "CumSum", "NonMaxSuppression", "RandomNormal", "RandomUniform",
                    "RandomNormalLike", "RandomUniformLike")


def _batch_transposes_into_matmul(nodes) -> set:
    """Indices of the ``Transpose`` nodes that move leading (batch) axes, keep the last axis in place and feed a
    ``MatMul``/``Gemm``. ONNX Runtime 1.32's CPU provider crashes the process (SIGSEGV, while creating the session)
    on such a Transpose in float16 followed by a float16 MatMul with a constant weight (its Transpose + MatMul
    fusion); GRU4Rec's graph has one (the time-major GRU output back to batch-major before ``dense``). They compute
    in fp32 in an fp16 graph, so a Cast separates them from the MatMul (tests/test_export_onnx.py::
    test_fp16_gru4rec_graph_runs)."""
    readers: dict[str, list] = {}
    for n in nodes:
        for t in n.input:
            readers.setdefault(t, []).append(n)
    found = set()
    for i, n in enumerate(nodes):
        if n.op_type != "Transpose":
            continue
        perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), [])
        if (perm and perm[-1] == len(perm) - 1 and perm != sorted(perm)
                and any(r.op_type in ("MatMul", "Gemm") for r in readers.get(n.output[0], []))):
            found.add(i)
    return found


#: ops that only move / select data: the state islands are the paths made of these alone
_MOVE_OPS = {"Identity", "Cast", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Split",
             "Flatten", "Expand"}


def _graph_reach(nodes, srcs: set, forward: bool, ops: set | None = None) -> set:
    """Indices of the nodes reachable from the tensors ``srcs`` (downstream if ``forward``, else upstream; a node is
    reached when one of its inputs (downstream) / outputs (upstream) is reached), through nodes of ``ops`` only when
    given."""
    reached_t, reached_n = set(srcs), set()
    order = range(len(nodes)) if forward else range(len(nodes) - 1, -1, -1)
    changed = True
    while changed:                      # the exporter's node list is topologically sorted: one pass is enough
        changed = False
        for i in order:
            if i in reached_n:
                continue
            n = nodes[i]
            if ops is not None and n.op_type not in ops:
                continue
            if any(t in reached_t for t in (n.input if forward else n.output)):
                reached_n.add(i)
                reached_t.update(n.output if forward else [t for t in n.input if t])
                changed = True
    return reached_n


#: ops between the ``time_gaps`` input and the ``Log`` of the time feature (clamp, / time_unit, 1 + x)
_TIME_FEATURE_OPS = {"Clip", "Max", "Relu", "Div", "Mul", "Add", "Sub", "Cast", "Identity", "Log"}


def _time_feature_nodes(nodes) -> set:
    """Indices of the nodes from the graph input ``time_gaps`` up to and including the ``Log`` of
    ``log1p(gap / time_unit)`` (gap-form time-aware graphs): they stay fp32, since gaps over 65504 s (18 h) are
    infinite in float16; the log-scaled feature after them (<= ~20 for a century) goes on in fp16. Raises
    :class:`ExportError` unless every use of the raw gaps is inside this island and it ends in a ``Log``."""
    island, raw, logs = set(), {TIME_GAPS_INPUT}, []
    for i, n in enumerate(nodes):                      # topologically sorted
        if any(t in raw for t in n.input):
            if n.op_type not in _TIME_FEATURE_OPS:
                raise ExportError(f"fp16: the raw time gaps reach a {n.op_type} node ({n.name}) before their Log; "
                                  "cannot keep the time features in fp32")
            island.add(i)
            if n.op_type == "Log":
                logs.append(i)
            else:
                raw.update(n.output)
    if not logs:
        raise ExportError(f"fp16: no Log of {TIME_GAPS_INPUT} found (the time features must be log-scaled in fp32)")
    return island


def _to_fp16_array(arr: np.ndarray) -> np.ndarray:
    """float32 -> float16, finite values clipped to +-65504 (infinities and NaN kept)."""
    a = arr.astype(np.float64)
    fin = np.isfinite(a)
    a[fin] = np.clip(a[fin], -65504.0, 65504.0)
    return a.astype(np.float16)


def convert_to_fp16(mp: onnx.ModelProto, spec: dict) -> onnx.ModelProto:
    """fp16 weights and activations; fp32 graph I/O (states, scores), state paths, scan nodes and score tail.

    Every node computes either in fp16 or in fp32 (its "mode"); every float tensor gets the dtype of its producer's
    mode, float initializers / ``Constant`` values are stored as fp16 when only fp16 nodes read them, and an explicit
    ``Cast`` is inserted wherever a float tensor meets a node of the other mode. fp32 nodes:

    * the **scan nodes** (so their model-local functions stay fp32 as written): their activation inputs (``u``,
      ``delta``, ``B``, ``C``, ``z`` / ``u_re``, ``u_im``) get a ``Cast(fp16 -> fp32)`` and ``y`` (LRU: ``h_re`` /
      ``h_im`` on their way into the next projection) a ``Cast(fp32 -> fp16)``;
    * the constant-only nodes computing the scan **parameters** (``A = -exp(A_log)``, ``lam = exp(-nu) cos/sin
      theta``, ``D``, ``delta_bias``): fp16 rounding of ``|lam| ~ 0.99`` would change the decay over long histories;
    * the **state islands**: every data-movement node (``Gather``/``Slice``/``Concat``/``Unsqueeze``/...) on a path (of
      such nodes only) from a state input or a scan node's state output to a state output or a scan node's state
      input, so the recurrent state never round-trips through fp16. This includes Mamba's conv window
      ``Concat(conv_state, x)``: the new fp16 conv inputs ``x`` are cast to fp32 explicitly before it (a naive
      conversion meets an fp32 state and fp16 activations in that ``Concat``);
    * the **score tail**: ``scores = logits + padding mask (-inf at item 0)`` and ``TopK`` (the logits are cast to
      fp32 first), so ``scores`` / ``topk_scores`` are fp32 and column 0 stays ``-inf``; with ``--candidates`` every
      node fed by the ``candidates`` input (the candidates' mask) too;
    * a ``Transpose`` of batch axes feeding a ``MatMul`` (:func:`_batch_transposes_into_matmul`: ONNX Runtime's CPU
      provider crashes on it in fp16).

    The graph I/O types are unchanged.
    """
    mp = onnx.ModelProto.FromString(mp.SerializeToString())
    g = mp.graph
    inferred = onnx.shape_inference.infer_shapes(mp)
    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    inits = {i.name: i for i in g.initializer}
    types.update({n: t.data_type for n, t in inits.items()})
    nodes = list(g.node)
    for i, n in enumerate(nodes):
        if not n.name:
            n.name = f"n{i}/{n.op_type}"
        for o in n.output:
            if o and o not in types and n.domain == ps.ONNX_DOMAIN:
                types[o] = FLOAT
    graph_inputs = {i.name for i in g.input}
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}

    # ---- fp32 nodes
    fp32 = set()
    state_in = {s["name"] for s in spec["state"]}
    state_out = {s["output"] for s in spec["state"]}
    scan_state_out, scan_state_in, scan_params = set(), set(), set()
    for i, n in enumerate(nodes):
        if n.domain == ps.ONNX_DOMAIN:
            fp32.add(i)
            op = ps.SCAN_OPS[n.op_type]
            for t, name in zip(op.inputs, n.input, strict=True):
                if t.name.startswith("h0"):
                    scan_state_in.add(name)
                elif "B" not in t.shape.split(","):
                    scan_params.add(name)
            for t, name in zip(op.outputs, n.output, strict=True):
                if t.name.startswith("h"):
                    scan_state_out.add(name)
        elif n.op_type in FP16_BLOCKED_OPS:
            fp32.add(i)
    fp32 |= (_graph_reach(nodes, state_in | scan_state_out, True, _MOVE_OPS)
             & _graph_reach(nodes, state_out | scan_state_in, False, _MOVE_OPS))
    dynamic = _graph_reach(nodes, graph_inputs, True)               # nodes that depend on a graph input
    fp32 |= _graph_reach(nodes, scan_params, False) - dynamic       # constant-only parameter preprocessing
    tail = _graph_reach(nodes, {"scores"}, True) | {i for i, n in enumerate(nodes) if "scores" in n.output}
    if not any(nodes[i].op_type == "TopK" for i in tail):
        raise ExportError("fp16: the score tail (scores + padding mask -> TopK) was not found")
    fp32 |= tail
    fp32 |= _batch_transposes_into_matmul(nodes)
    if CANDIDATES in graph_inputs:              # the candidates' -inf mask joins the fp32 score tail
        fp32 |= _graph_reach(nodes, {CANDIDATES}, True)
    if TIME_GAPS_INPUT in graph_inputs:
        fp32 |= _time_feature_nodes(nodes)

    # ---- Constant nodes and initializers take the mode of their consumers (fp16 only if all consumers are fp16)
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            consumers.setdefault(t, []).append(i)
    graph_outputs = {o.name for o in g.output}
    for i, n in enumerate(nodes):
        if n.op_type == "Constant" and n.output[0] not in graph_outputs and \
                all(c not in fp32 for c in consumers.get(n.output[0], [])):
            attr = n.attribute[0]
            if attr.name == "value" and attr.t.data_type == FLOAT:
                attr.t.CopyFrom(onnx.numpy_helper.from_array(_to_fp16_array(onnx.numpy_helper.to_array(attr.t)),
                                                             attr.t.name))
        elif n.op_type == "Constant":
            fp32.add(i)
    new_dtype = {}                                                  # float tensor -> its dtype after conversion
    for name in graph_inputs:
        if types.get(name) == FLOAT:
            new_dtype[name] = FLOAT
    for name, t in inits.items():
        if t.data_type != FLOAT:
            continue
        users = consumers.get(name, [])
        if users and all(c not in fp32 for c in users):
            t.CopyFrom(onnx.numpy_helper.from_array(_to_fp16_array(onnx.numpy_helper.to_array(t)), name))
            new_dtype[name] = HALF
        else:
            new_dtype[name] = FLOAT
    for i, n in enumerate(nodes):
        for o in n.output:
            if types.get(o) == FLOAT:
                new_dtype[o] = FLOAT if i in fp32 else HALF

    # ---- rewrite: fp16 nodes' float attributes, Casts at every mode boundary
    out_nodes, casts = [], {}

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            casts[key] = f"{name}_as_{'fp16' if to == HALF else 'fp32'}"
            out_nodes.append(oh.make_node("Cast", [name], [casts[key]], to=to,
                                          name=f"fp16/{casts[key]}"))
        return casts[key]

    for i, n in enumerate(nodes):
        want = FLOAT if i in fp32 else HALF
        if n.op_type == "Cast":
            if n.attribute[0].i == FLOAT and want == HALF:
                n.attribute[0].i = HALF
        else:
            for j, t in enumerate(n.input):
                if t in new_dtype and new_dtype[t] != want:
                    n.input[j] = cast(t, want)
        if want == HALF:
            for attr in n.attribute:
                if attr.type == AttributeProto.TENSOR and attr.t.data_type == FLOAT and n.op_type != "Constant":
                    attr.t.CopyFrom(onnx.numpy_helper.from_array(
                        _to_fp16_array(onnx.numpy_helper.to_array(attr.t)), attr.t.name))
                elif attr.name in ("dtype", "to") and attr.type == AttributeProto.INT and attr.i == FLOAT:
                    attr.i = HALF
        out_nodes.append(n)
    # graph outputs keep their declared dtypes
    for o in g.output:
        if types.get(o.name) == FLOAT and new_dtype.get(o.name) == HALF:
            k = producer[o.name]
            n = nodes[k]
            inner = f"{o.name}_fp16"
            for j, t in enumerate(n.output):
                if t == o.name:
                    n.output[j] = inner
            for m in out_nodes:
                for j, t in enumerate(m.input):
                    if t == o.name:
                        m.input[j] = inner
            out_nodes.append(oh.make_node("Cast", [inner], [o.name], to=FLOAT, name=f"fp16/{o.name}"))
    # topological order (a Cast is appended right when first needed, before its consumer; output casts at the end)
    del g.node[:]
    g.node.extend(out_nodes)
    del g.value_info[:]
    _check_fp16_graph(mp, spec)
    return mp


def _check_fp16_graph(mp: onnx.ModelProto, spec: dict) -> None:
    """The contract of an fp16 graph: fp32 graph I/O as in ``spec``, fp32 scan nodes, fp16 weights."""
    inits = {i.name: i for i in mp.graph.initializer}
    n16 = sum(int(np.prod(t.dims)) for t in inits.values() if t.data_type == TensorProto.FLOAT16)
    n32 = sum(int(np.prod(t.dims)) for t in inits.values() if t.data_type == TensorProto.FLOAT)
    if n16 <= n32:
        raise ExportError(f"fp16: only {n16} of {n16 + n32} float weights were converted to float16")


# ============================================================================================ int8 quantization
class _DropQuantizerAdvice(logging.Filter):
    """Drops onnxruntime.quantization's "Please consider to run pre-processing before quantization" warning: the
    pre-processing pass (``quant_pre_process``: symbolic shape inference and graph optimisation) would rewrite the
    traced graph beyond the quantized nodes; the dynamic quantizer reads the weights' shapes from the initializers,
    and the int8 graph is judged by its verification, not by the pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def _graphs_of(g: onnx.GraphProto) -> list[onnx.GraphProto]:
    """``g`` and the subgraphs of its nodes (``If`` branches, ``Loop``/``Scan`` bodies), nested ones included."""
    out = [g]
    for n in g.node:
        for a in n.attribute:
            for sub in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
                out += _graphs_of(sub)
    return out


def _untie_matmul_weights(mp: onnx.ModelProto) -> list[tuple[str, str]]:
    """Give each initializer that a ``MatMul``/``Gemm`` reads as its weight (input 1) and something else reads too
    (a tied item table's input ``Gather``, another node, a graph output) a copy of its own for that node, in place on
    ``mp``; returns the ``(initializer, copy)`` names made (none: ``mp`` is unchanged).

    Why: ONNX Runtime's ``quantize_dynamic`` up to 1.31 turns ``Gemm(x, W, transB=1)`` into ``MatMul(x, W^T)`` by
    replacing ``W`` with ``W^T`` under the same name (it assumes nothing else reads ``W``). A tied item table
    ``E [V, D]`` that the input ``Gather`` reads too becomes ``[D, V]`` for the lookup as well, and the int8 graph
    fails onnx's checker (``DequantizeLinear ... (V) vs (D)``). With copies, each reader's weight is quantized on its
    own, as 1.32 (which transposes into a new initializer) does anyway: the int8 graph holds the item table 8-bit
    twice, behind the lookup and transposed for the output layer, and the fp32 copy is not left in it. A copy of a
    tensor held as external data refers to the same bytes of the same file (nothing is read or written here).
    Nodes of subgraphs count as readers; a copy goes to the graph that holds the initializer."""
    import collections

    graphs = _graphs_of(mp.graph)
    owner = {t.name: (s, t) for s in graphs for t in s.initializer}
    uses = collections.Counter(x for s in graphs for n in s.node for x in n.input if x in owner)
    uses.update(o.name for s in graphs for o in s.output if o.name in owner)
    taken = set(owner) | {x for s in graphs for n in s.node for x in (*n.input, *n.output)} \
        | {v.name for s in graphs for v in (*s.input, *s.output, *s.value_info)}
    made = []
    for s in graphs:
        for n in s.node:
            name = n.input[1] if n.op_type in ("MatMul", "Gemm") and len(n.input) >= 2 else ""
            if uses.get(name, 0) < 2:
                continue
            copy_name, i = f"{name}/untied", 1
            while copy_name in taken:
                i += 1
                copy_name = f"{name}/untied{i}"
            graph, tensor = owner[name]
            copy = graph.initializer.add()
            copy.CopyFrom(tensor)
            copy.name = copy_name
            n.input[1] = copy_name
            uses[name] -= 1
            taken.add(copy_name)
            made.append((name, copy_name))
    return made


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, external: bool = False) -> dict:
    """Quantize the fp32 graph file ``src`` into ``dst`` with ONNX Runtime's dynamic quantization (``--int8``):
    the weight initializers of :data:`INT8_OP_TYPES` nodes become int8 per output channel (``MatMulInteger`` with
    ``DynamicQuantizeLinear`` of its activation input; the item table behind the input ``Gather`` is stored 8-bit
    and dequantized), everything else stays as traced: the scan nodes (their model-local functions are not
    touched), the states, norms and the score tail. ``external``: write the tensors to ``dst``'s sibling
    ``<name>.data`` (the fp32 graph passed protobuf's limit). Returns what was done (``state_spec.json``'s
    ``quantization``).

    A MatMul/Gemm weight that something else reads too (the tied item table: the input ``Gather`` and the output
    ``Gemm``) is given its own copy first (:func:`_untie_matmul_weights`; older ONNX Runtimes transpose a ``Gemm``'s
    weight in place): the quantizer then reads a hidden staging graph beside ``dst`` (its tensors in a sibling
    ``.data`` file), removed afterwards; nothing is written beside ``src``.

    ``DynamicQuantizeLinear`` takes one scale and zero point per call for the whole activation tensor, all rows of
    the batch together: unlike an fp32 or fp16 graph's, an int8 graph's row depends on the other rows of its call
    (a user's scores, top-k and new state differ a little alone and beside other users) and so on how a user's
    events are split into calls (priming a history in one call vs. step by step). The int8 verification bounds
    this like any int8 error (score error relative to the score scale, mean top-k overlap), not row by row."""
    import collections

    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = pathlib.Path(src), pathlib.Path(dst)
    mp = onnx.load(str(src), load_external_data=False)
    before = collections.Counter(n.op_type for n in mp.graph.node)
    staged = None
    root = logging.getLogger()
    quiet = _DropQuantizerAdvice()
    root.addFilter(quiet)
    try:
        if _untie_matmul_weights(mp):
            # staged beside dst, never beside src (a card's or a download's folder: read as it is); src's external
            # tensors are read in, and everything goes out as external data so that the copies cannot take the
            # graph past protobuf's limit
            onnx.load_external_data_for_model(mp, str(src.parent))
            fd, name = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=".untied.onnx", dir=dst.parent)
            os.close(fd)
            staged = pathlib.Path(name)
            onnx.save(mp, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                      location=staged.name + ".data", size_threshold=1024)
        del mp
        quantize_dynamic(str(staged or src), str(dst), op_types_to_quantize=list(INT8_OP_TYPES),
                         weight_type=QuantType.QInt8, per_channel=INT8_OPTIONS["per_channel"],
                         reduce_range=INT8_OPTIONS["reduce_range"], use_external_data_format=external)
    finally:
        root.removeFilter(quiet)
        if staged is not None:          # the graph, its tensors, and the quantizer's shape-inferred sibling of it
            for p in (staged, staged.with_name(staged.name + ".data"),
                      staged.with_name(staged.stem + "-inferred" + staged.suffix)):
                p.unlink(missing_ok=True)
    after = collections.Counter(n.op_type for n in onnx.load(str(dst), load_external_data=False).graph.node)
    if not after["MatMulInteger"]:
        raise ExportError(f"int8 quantization changed nothing in {os.path.basename(src)}: no MatMul/Gemm weight was "
                          "quantized")
    return {"method": "onnxruntime.quantization.quantize_dynamic", "onnxruntime": onnxruntime.__version__,
            **INT8_OPTIONS, "op_types": list(INT8_OP_TYPES),
            "nodes": {"MatMul+Gemm before": before["MatMul"] + before["Gemm"],
                      "MatMulInteger": after["MatMulInteger"], "MatMul left in fp32": after["MatMul"],
                      "DynamicQuantizeLinear": after["DynamicQuantizeLinear"],
                      "DequantizeLinear": after["DequantizeLinear"]}}


def _quantize_staged(model, stage: pathlib.Path, spec: dict, external: bool, verify: bool, real_histories,
                     real_timestamps, verify_kwargs: dict | None, say) -> None:
    """``export_model``'s int8 path: verify the staged fp32 graph under the fp32 row (a failure there is the
    export's, not the quantization's), quantize it in place (:func:`quantize_int8`) and record what was done in
    ``spec["quantization"]`` (written to the staged ``state_spec.json``)."""
    from onnx import shape_inference

    from . import verify as V

    rep32 = None
    if verify:
        say("verifying the fp32 graph against PyTorch before quantizing it (ONNX Runtime, CPU) ...")
        rep32 = V.verify_export(model, str(stage / GRAPH_FILE), spec, real_histories=real_histories,
                                real_timestamps=real_timestamps, progress=say, precision="fp32",
                                **(verify_kwargs or {}))
        if not rep32.ok:
            raise VerificationError("verification FAILED for the fp32 graph the int8 graph is quantized from, nothing "
                                    f"written (earlier files are kept): {rep32.worst_message()}", rep32)
        say(rep32.table())
    say("quantizing to int8 (ONNX Runtime dynamic quantization, int8 weights per output channel) ...")
    qdir = stage / "int8"
    qdir.mkdir()
    info = quantize_int8(stage / GRAPH_FILE, qdir / GRAPH_FILE, external=external)
    try:
        onnx.checker.check_model(str(qdir / GRAPH_FILE), full_check=True)
    except (onnx.checker.ValidationError, shape_inference.InferenceError) as e:
        why = " ".join(str(e).split())
        raise ExportError(f"the int8 graph that onnxruntime {info['onnxruntime']}'s quantize_dynamic wrote fails "
                          f"onnx's checker, nothing written (earlier files are kept): {why}") from None
    os.replace(qdir / GRAPH_FILE, stage / GRAPH_FILE)
    if external:
        os.replace(qdir / EXTERNAL_DATA_FILE, stage / EXTERNAL_DATA_FILE)
    n = info["nodes"]
    say(f"  {n['MatMulInteger']} of {n['MatMul+Gemm before']} MatMul/Gemm nodes int8 ({n['MatMul left in fp32']} left "
        "in fp32: their weight is computed in the graph, not stored), checker full_check OK")
    if rep32 is not None:
        info["fp32_verification"] = rep32.to_dict()
    spec["quantization"] = info
    (stage / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")


# ==================================================================================================== export
def excluded_indices(model, path: str | None) -> list[int]:
    """``--exclude-items FILE`` (one id per line, ``# `` comment lines: ``zoo.recommend.ID_FILE_RULE``; read as
    command-line ids are) -> the model's sorted internal indices (``[]`` without a file); a file that cannot be read
    or an id the model does not know is a ``ValueError`` naming it."""
    if not path:
        return []
    from zoo.cli import cannot, error_text
    from zoo.recommend import read_id_list

    try:
        return model.encode_item_set(read_id_list(path, model), "--exclude-items")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(cannot("--exclude-items", path, e, "read")) from None
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(error_text(e)) from None


def topk_usage_error(model, k: int, excluded: Sequence[int] = ()) -> str | None:
    """The usage error of a ``--topk k`` above the items ``model`` can recommend (its catalogue, ``n_items - 1``
    items, less the ``excluded`` ones), naming the flag, the value and the catalogue's size; ``None`` when ``k`` fits.
    The commands check it once the model is loaded and exit 2 with it (as ``zoo.evaluate --ks`` above the items
    ranked); :func:`export_model` raises ``ExportError`` for such a ``topk``."""
    catalogue = int(model.config.n_items) - 1
    left = catalogue - len(excluded)
    if k <= left:
        return None
    less = f", {left} left after the {len(excluded)} of --exclude-items" if excluded else ""
    return f"--topk {k}: the model's catalogue has {catalogue} items{less}; use --topk <= {left}"


def checkpoint_files(folder: str | os.PathLike) -> list[str]:
    """The :data:`CHECKPOINT_FILES` in ``folder``: not ``[]`` for a model checkpoint, which no export writes into."""
    return [name for name in CHECKPOINT_FILES if os.path.isfile(os.path.join(folder, name))]


def _vocab_of_export(folder: pathlib.Path) -> str | None:
    """The item vocabulary file that the export in ``folder`` uses (its ``state_spec.json`` names it), else None: only
    that file is the export's to replace or remove."""
    try:
        name = json.loads((folder / SPEC_FILE).read_text(encoding="utf-8")).get("item_vocab")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def remove_stale_stages(out: str | os.PathLike) -> list[str]:
    """Remove the stages (:func:`staging_folder`) in ``out`` whose writer is gone -- killed by SIGKILL, the OOM killer
    or a power loss, which nothing cleans up after, and which ``zoo.hub push`` would upload -- and return their names.
    A stage is the writer's while its pid runs a process here or its lock is held (a writer on another machine that
    shares the folder holds it); one named without a pid (written before stages carried one) once it is
    :data:`STAGE_UNNAMED_MAX_AGE_S` old. A stage that cannot be told (no locks on the file system) is left
    (:func:`zoo.cli.remove_stale_stages`)."""
    from zoo.cli import remove_stale_stages as remove

    return remove(out, STAGE_PREFIX, STAGE_UNNAMED_MAX_AGE_S)


def staging_folder(out: str | os.PathLike, say=None):
    """A new folder inside the folder ``out`` for files to be verified there before they are moved into place
    (``os.replace`` on one file system), removed after the block. Named :data:`STAGE_PREFIX` + this process's pid and
    held under an ``flock`` while the block runs, so that a later export tells it from a stage whose writer was killed:
    those in ``out`` are removed first (:func:`remove_stale_stages`; ``say``: told their names). A context manager
    (:func:`zoo.cli.staging_folder`)."""
    from zoo.cli import staging_folder as staged

    tell = None if say is None else (lambda path: say(f"  removed {path}: the stage of an export that was killed"))
    return staged(out, STAGE_PREFIX, STAGE_UNNAMED_MAX_AGE_S, removed=tell)


#: safetensors' names of floating dtypes -> torch's (the note of :func:`_load_model`)
_SAFETENSORS_FLOATS = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
                       "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def _stored_dtypes(name_or_path: str, *, revision: str | None = None, subfolder: str = "") -> list[str]:
    """The floating dtypes (torch's names, sorted: ``["float16"]``) of the weights in the checkpoint's safetensors
    files (``model.safetensors`` or its shards: ``zoo.modeling_utils._weight_files``), read from their headers with
    safetensors' own reader; ``[]`` where they cannot be read (the load has read them already: this only words
    :func:`_load_model`'s note). ``revision`` / ``subfolder``: which checkpoint, as ``resolve_pretrained`` takes
    them."""
    from safetensors import safe_open

    from zoo.modeling_utils import _weight_files
    from zoo.pretrained import resolve_pretrained

    stored = set()
    try:
        for file in _weight_files(resolve_pretrained(name_or_path, revision=revision, subfolder=subfolder)):
            with safe_open(file, framework="pt") as f:
                stored.update(f.get_slice(k).get_dtype() for k in f.keys())  # noqa: SIM118
    except Exception:               # unreadable: the load's own error stands
        return []
    return sorted(_SAFETENSORS_FLOATS[d] for d in stored if d in _SAFETENSORS_FLOATS)


def _load_model(name_or_path: str, *, revision: str | None = None, subfolder: str = ""):
    """The zoo model ``name_or_path`` (a folder or Hub id) for the exporters' ``--model`` (``export.onnx``,
    ``export.triton``, ``export.trt``), loaded in float32 whatever dtype its weights were saved in: the graph's
    precision is the exporter's option (``--fp16``, ``--int8``), and :func:`export_model` takes float32 models only.
    Weights stored in another dtype get a note on stderr. ``revision`` / ``subfolder`` (``--revision``,
    ``--subfolder``) say which checkpoint: it is resolved once (``zoo.pretrained.resolve_pretrained``), and the load
    and the dtype note both read that folder. ``OSError``/``ValueError`` when it cannot be loaded (a
    ``zoo.pretrained.SubfolderNotFound`` for a missing subfolder)."""
    import importlib

    from zoo.modeling_utils import SeqRecPreTrainedModel
    from zoo.pretrained import resolve_pretrained

    importlib.import_module("zoo.models")                   # registers the model classes

    name = os.fspath(name_or_path)
    path = resolve_pretrained(name, revision=revision, subfolder=subfolder)
    shown = path if os.path.isdir(name) else f"{name} ({path})"     # errors name a Hub id as given
    model = SeqRecPreTrainedModel.from_pretrained(path, dtype=torch.float32, _zoo_shown=shown)
    other = [d for d in _stored_dtypes(path) if d != "float32"]
    if other:
        print(f"note: --model {name_or_path} holds {' and '.join(other)} weights: loaded in float32 to be exported "
              "(the graph's precision is set by the exporter's options, such as --fp16, not by the checkpoint's "
              "dtype)", file=sys.stderr, flush=True)
    return model


def _not_float32(model) -> list[str]:
    """The dtypes other than float32 (torch's names, sorted) of ``model``'s floating parameters and buffers; ``[]``
    for a float32 model."""
    tensors = [*model.parameters(), *model.buffers()] if isinstance(model, torch.nn.Module) else []
    return sorted({str(t.dtype).removeprefix("torch.") for t in tensors
                   if t.is_floating_point() and t.dtype != torch.float32})


def export_model(model, out_dir: str | os.PathLike, kind: str | None = None, topk: int = 10,
                 with_scores: bool = False, verify: bool = True, real_histories: Sequence[Sequence[int]] | None = None,
                 real_timestamps: Sequence[Sequence[float]] | None = None,
                 verify_kwargs: dict | None = None, progress=None, precision: str = "fp32",
                 time_input: str | None = None, exclude_seen: bool = False,
                 exclude_items: Sequence[int] = (), user_vector: bool = False,
                 candidates: bool = False, lock: bool = True, stale_files: Sequence[str] = ()) -> ExportResult:
    """Export ``model`` to ``out_dir/model.onnx`` + ``out_dir/state_spec.json`` and verify it against PyTorch.

    ``model`` must be float32: another dtype is a ``ValueError`` naming it, raised before anything is written
    (``model.float()`` converts a model, in place). The graph's precision is ``precision``'s, not the model's dtype.

    Args:
        kind: "step" (default for models with an exact step) or "window".
        topk: ``K`` of the in-graph TopK.
        with_scores: also output ``scores [B, n_items]``.
        verify: run :func:`export.verify.verify_export`; on failure :class:`VerificationError` is raised and
            nothing is written to ``out_dir`` (the files are staged and only moved there once verified).
        real_histories: internal-index histories for the "real" verification cases.
        real_timestamps: their timestamps (seconds, aligned item by item) for time-aware models; without them the
            real cases get synthetic timestamps.
        precision: "fp32", "fp16" (fp16 weights/activations; graph I/O, states and the scans stay fp32; verified
            under the fp16 row of :data:`export.verify.TOLERANCES`) or "int8" (the fp32 graph is traced, verified
            under the fp32 row, then quantized by :func:`quantize_int8` and verified under the int8 row: the score
            error relative to the score scale and the top-k overlap; ``spec["quantization"]`` records both).
        time_input: time-aware models only: "timestamps" (default; float64 ``timestamps`` + ``last_ts`` state) or
            "gaps" (step graphs: float32 ``time_gaps``, ``last_ts`` kept by the caller; see :data:`TIME_GAPS_DOC`).
        exclude_seen: never rank an item of the history above an unseen one: step graphs get a ``seen [B, n_items]``
            state (1 = fed before) and window graphs mask their input window; such items score
            :data:`export.runtime.SEEN_SCORE` (the LRURec protocol's history masking, inside the graph).
        exclude_items: internal item indices never recommended (retired, unavailable): ``-inf`` in the graph's
            constant mask, like the padding; the spec lists them (``excluded_items``) and ``topk`` must fit the items
            left. A changed list needs a new export (the state fingerprint does not change: states stay valid).
        user_vector: also output ``user_vector [B, vector_size]``, the query vector whose inner products with
            ``model.item_vectors()`` (``python -m zoo.embed``) are the raw scores (:data:`USER_VECTOR_DOC`).
        candidates: one more input, ``candidates [B, C]`` int64: each row recommends only the items it lists (0 =
            padding; a row without a real candidate is not restricted; :data:`CANDIDATES_DOC`).
        lock: make ``out_dir`` and hold its lock (:func:`export.fsutil.held_output_folder`) from before the tracing to
            the end, so that a second export into it fails at once (:class:`export.fsutil.FolderBusy`, an
            ``OSError``) instead of mixing its files with this one's; ``False`` when the caller holds it (``python -m
            export.onnx``, ``export.trt``): a second lock on another descriptor of the folder would refuse this very
            process.
        stale_files: names of other files in ``out_dir`` that describe the graph there (``export.trt``'s report):
            removed with the earlier spec, once the new graph is verified and just before it is moved in, so that an
            interruption never leaves one beside a graph it does not describe (a failed or interrupted export before
            that leaves them, with the graph they describe).
    """
    from zoo.cli import made_folder
    from zoo.vocab import VOCAB_FILE

    other = _not_float32(model)
    if other:                   # traced as it is, it fails the checker or ORT, or is verified/labelled as fp32 wrongly
        raise ValueError(f"export_model: the model's weights are {' and '.join(other)}, not float32: export "
                         "model.float() (the graph's precision is set by precision='fp16' or 'int8', --fp16/--int8, "
                         "not by the model's dtype)")
    say = progress or (lambda msg: None)
    kind = kind or ("step" if getattr(model, "has_exact_step", False) else "window")
    out = pathlib.Path(out_dir)
    held = checkpoint_files(out)
    if held:                            # its item_vocab.json is the model's: replaced or removed, it breaks the model
        raise ExportError(f"{out} holds a model checkpoint ({' and '.join(held)}): an export there would replace or "
                          f"remove the model's {VOCAB_FILE}; export into another folder (python -m export.onnx "
                          "--card-dir puts a card's graph in its onnx/ subfolder)")
    graph_path, spec_path = out / GRAPH_FILE, out / SPEC_FILE
    # the folder is locked before any work (a second export into it fails at once, not after minutes of tracing and
    # verification) and until the files are in: what it holds now (the vocabulary the export there owns, an earlier
    # spec) is read and replaced by this export alone
    with held_output_folder(out) if lock else made_folder(out):
        t0 = time.perf_counter()
        ti = resolve_time_input(model, kind, time_input)
        int8 = precision == "int8"
        say(f"tracing {model.config.model_type} ({kind} graph, top-{topk}, {'fp32, then int8' if int8 else precision}"
            + (f", time input: {ti}" if ti else "") + (", history excluded" if exclude_seen else "")
            + (", candidates input" if candidates else "") + ") ...")
        # torch's trace warnings (every bundled model has some, mostly input checks): shown when nothing checks the
        # graph at other lengths (verify=False) or that check fails, where they may tell why
        trace_notes: list[str] = []
        mp, spec = trace_graph(model, kind, topk, with_scores, "fp32" if int8 else precision, ti, exclude_seen,
                               exclude_items, user_vector, candidates, warn=trace_notes.append)

        def say_trace_notes():
            for note in trace_notes:
                say("  " + note)

        if int8:                                # before the fingerprint: an int8 graph's states are its own
            spec["precision"] = "int8"
        if spec["kind"] == "step":              # tags the states an explicit-state store keeps
            spec[STATE_FINGERPRINT] = state_fingerprint(model, spec)
        n_scan = sum(1 for n in mp.graph.node if n.domain == ps.ONNX_DOMAIN)
        say(f"  {len(mp.graph.node)} nodes ({n_scan} scan nodes in {ps.ONNX_DOMAIN}), checker full_check OK "
            f"[{time.perf_counter() - t0:.1f} s]")
        if not verify:
            say_trace_notes()
        # written and verified in a staging folder inside out_dir, moved into place only when verified: a failed
        # export leaves out_dir's earlier files (e.g. a card's verified graph) as they were, and no out_dir it made
        with staging_folder(out, say) as stage:
            external = graph_sizes(model)[0] > EXTERNAL_DATA_BYTES
            owned_vocab = _vocab_of_export(out)     # the item_vocab.json the export in out now uses, if any
            if external:            # past protobuf's 2 GiB: the graph in model.onnx, its tensors in model.onnx.data
                say(f"  writing the tensors to {EXTERNAL_DATA_FILE} (ONNX external data: the weights pass "
                    f"{EXTERNAL_DATA_BYTES / 2**30:.2f} GiB)")
                onnx.save(mp, str(stage / GRAPH_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                          location=EXTERNAL_DATA_FILE, size_threshold=1024)
                # onnx creates the tensor file owner-only; it is read by whoever reads the graph (a server's user)
                os.chmod(stage / EXTERNAL_DATA_FILE, (stage / GRAPH_FILE).stat().st_mode & 0o777)
                onnx.checker.check_model(str(stage / GRAPH_FILE), full_check=True)
                spec["external_data"] = EXTERNAL_DATA_FILE
                names = [GRAPH_FILE, EXTERNAL_DATA_FILE, SPEC_FILE]
            else:
                onnx.save(mp, str(stage / GRAPH_FILE))
                names = [GRAPH_FILE, SPEC_FILE]
            if getattr(model, "item_vocab", None) is not None:          # so the runtime can map the caller's item ids
                names.append(os.path.basename(model.item_vocab.save(str(stage))))
                spec["item_vocab"] = names[-1]
            (stage / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
            if int8:
                try:
                    _quantize_staged(model, stage, spec, external, verify, real_histories, real_timestamps,
                                     verify_kwargs, say)
                except VerificationError:
                    say_trace_notes()
                    raise
            report = None
            if verify:
                from . import verify as V

                say("verifying against PyTorch (ONNX Runtime, CPU) ...")
                report = V.verify_export(model, str(stage / GRAPH_FILE), spec, real_histories=real_histories,
                                         real_timestamps=real_timestamps, progress=say, **(verify_kwargs or {}))
                if not report.ok:
                    say_trace_notes()
                    raise VerificationError(f"verification FAILED, nothing written to {out} (its earlier files are "
                                            f"kept): {report.worst_message()}", report)
                spec["verification"] = report.to_dict()
                (stage / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
            # the spec goes last, and an earlier one first (with what else describes the earlier graph): an
            # interrupted move leaves a folder without a spec (which the runtime refuses), never a new graph beside an
            # earlier export's spec and state fingerprint, or beside a report on the earlier graph
            for name in (SPEC_FILE, *stale_files):
                (out / name).unlink(missing_ok=True)
            for name in sorted(names, key=lambda n: n == SPEC_FILE):
                os.replace(stage / name, out / name)
            if not external and (out / EXTERNAL_DATA_FILE).exists():    # an earlier, larger export's tensors
                (out / EXTERNAL_DATA_FILE).unlink()
            if "item_vocab" not in spec and owned_vocab == VOCAB_FILE and (out / VOCAB_FILE).exists():
                (out / VOCAB_FILE).unlink()         # the earlier export's ids (its spec named them): not this graph's
    files = [str(out / name) for name in names]
    return ExportResult(kind=kind, graph_path=str(graph_path), spec_path=str(spec_path), spec=spec, report=report,
                        files=files)


# =============================================================================================== card section
def io_table_markdown(spec: dict) -> str:
    rows = ["| direction | name | shape | dtype | meaning |", "|---|---|---|---|---|"]
    for d, lst in (("in", spec["inputs"]), ("out", spec["outputs"])):
        for e in lst:
            shape = "[" + ", ".join(str(s) for s in e["shape"]) + "]"
            rows.append(f"| {d} | `{e['name']}` | {shape} | {e['dtype']} | {e['doc']} |")
    return "\n".join(rows)


def card_section(spec: dict, rel_dir: str) -> str:
    lines = [CARD_BEGIN, "## ONNX export", ""]
    if spec["kind"] == "step":
        lines += [f"`{rel_dir}/{GRAPH_FILE}` is a **stepwise** graph: feed `T >= 1` new items and the recurrent state, "
                  "get the top-k next items and the new state (`T = L` primes from a history, `T = 1` is one event). "
                  f"The state layouts and initial values are in `{rel_dir}/{SPEC_FILE}`."]
    else:
        lines += [f"`{rel_dir}/{GRAPH_FILE}` is a **history-window** graph: feed the last "
                  f"`L <= {spec['max_seq_length']}` items ({spec['padding_side']}-padded with 0), get the top-k."]
    for op in spec["custom_ops"]:
        lines += ["", f"Each layer's scan is one `{op['domain']}::{op['op_type']}` node (plugin_namespace "
                      f"`{op['attributes']['plugin_namespace']}`, plugin_version `{op['attributes']['plugin_version']}`, "
                      "bound by TensorRT to the zoo plugin) with a model-local ONNX function of standard ops, so "
                      "ONNX Runtime runs the file as is."]
    if spec.get("exclude_seen"):
        lines += ["", ("Items already in the history are never ranked above an unseen item (`--exclude-seen`): the "
                       "graph keeps a `seen` state (1 per item fed so far) and gives those items the score "
                       f"{SEEN_SCORE:.8g}.") if spec["kind"] == "step" else
                      ("The items of the input window are never ranked above an unseen item (`--exclude-seen`): "
                       f"they get the score {SEEN_SCORE:.8g}.")]
    if spec.get(CANDIDATES):
        lines += ["", "Each row recommends only the items of its `candidates` input (`--candidates`; 0 = padding, a "
                      "row without a real candidate is not restricted)."]
    if spec.get("time_input") == "gaps":
        lines += ["", "Time input: `time_gaps` (float32 seconds since the row's previous event). The caller keeps "
                      "`last_ts` (float64 Unix seconds, -1 = no event yet) and computes the gaps from float64 "
                      "timestamps; `OnnxStepSession` does this and takes timestamps like `model.step`."]
    lines += ["", io_table_markdown(spec), ""]
    v = spec.get("verification")
    if v:
        names = ", ".join(c["name"] + (" with their own timestamps" if "real timestamps" in c.get("detail", "") else "")
                          for c in v.get("cases", []))
        lines += [f"Verified against PyTorch with ONNX Runtime: max abs score error {v['max_abs_err']:.2e}, "
                  f"top-{spec['topk']} agreement {100 * v['topk_agreement']:.2f}% "
                  f"({v['topk_cases']} cases" + (f": {names}" if names else "") + ").", ""]
    lines += ["```python", "from export.runtime import OnnxStepSession" if spec["kind"] == "step"
              else "from export.runtime import OnnxWindowSession",
              f"sess = {'OnnxStepSession' if spec['kind'] == 'step' else 'OnnxWindowSession'}(\"{rel_dir}\")", "```",
              CARD_END]
    return "\n".join(lines) + "\n"


#: what ``--card-dir`` tells of a symbolic link inside the card that leads outside it (:func:`card_links_refused`)
CARD_LINK_HINT = ("export.onnx --card-dir writes nothing outside the card through a link inside it: remove the link, "
                  "or put the file or folder itself there")


def card_links_refused(card_dir: str | os.PathLike, rel_dir: str | None = None) -> None:
    """``--card-dir``'s rule for symbolic links inside the card folder: nothing outside it is written through one. A
    link among the paths the export writes there -- ``README.md`` and, with ``rel_dir``, the graph's subfolder
    ``rel_dir`` and the files it puts in or removes from it (graph, external tensors, spec, vocabulary) -- that
    leads outside ``card_dir`` raises :class:`zoo.cli.LinkOutsideError`, one line naming the link and its target,
    before anything is written; a link whose target stays inside the card is used. ``card_dir`` itself is the path the
    user named: a link there is written through."""
    from zoo.cli import refuse_links_leading_outside
    from zoo.vocab import VOCAB_FILE

    names = ["README.md"]
    if rel_dir is not None:
        names += [rel_dir, *(f"{rel_dir}/{f}" for f in (GRAPH_FILE, EXTERNAL_DATA_FILE, SPEC_FILE, VOCAB_FILE))]
    refuse_links_leading_outside(card_dir, names, CARD_LINK_HINT)


def write_card_section(card_dir: str | os.PathLike, spec: dict, rel_dir: str) -> pathlib.Path:
    """Insert (or replace) the ONNX section of ``card_dir/README.md``, written whole (:func:`zoo.cli.written_whole`: an
    interruption leaves the card's README as it was, never cut short). A ``README.md`` that is a symbolic link leading
    outside ``card_dir`` is neither read nor written: :class:`zoo.cli.LinkOutsideError` (:func:`card_links_refused`);
    one whose target stays inside the card is written through."""
    from zoo.cli import written_whole

    card_links_refused(card_dir)
    readme = pathlib.Path(card_dir) / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.exists() else ""      # written UTF-8 by written_whole
    sec = card_section(spec, rel_dir)
    if CARD_BEGIN in text and CARD_END in text:
        a = text.index(CARD_BEGIN)
        b = text.index(CARD_END) + len(CARD_END)
        text = text[:a] + sec.rstrip("\n") + text[b:]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + sec
    with written_whole(readme) as f:
        f.write(text)
    return readme


# ======================================================================================================== CLI
def load_real_histories(path: str, model, max_users: int = 512, with_timestamps: bool = False,
                        columns: dict | None = None) -> list[list[int]] | tuple[list[list[int]], list | None]:
    """Histories (internal indices) from an interaction file, mapped with the model's vocabulary (items it does not
    know are left out). ``with_timestamps``: return ``(histories, timestamps)``, the float64 seconds of each kept item
    (``None`` when the file has no timestamps), in time order (stable: ties keep the file order). ``columns``: the
    file's header columns by role when not called by the usual names (:func:`zoo.data.read_interactions`)."""
    from zoo.data.readers import read_interactions
    from zoo.data.split import build_sequences
    from zoo.vocab import UnknownItemError

    # per user (in the order of their first row, wherever their rows stand: a file sorted by time interleaves its
    # users), in time order with ties in file order; the file's own ids back through the dataset's vocabulary
    ds = build_sequences(read_interactions(path, columns=columns))
    has_ts = ds.timestamps is not None
    hist, tss = [], []
    for j in range(min(ds.n_users, max_users * 4)):
        items = ds.vocab.decode(ds.sequences[j])
        ts = ds.timestamps[j].tolist() if has_ts else [0.0] * len(items)
        idx, kept = [], []
        for x, t in zip(items, ts, strict=True):
            if model.item_vocab is not None:
                try:
                    idx.append(model.item_vocab.encode([x])[0])
                except UnknownItemError:
                    continue
            elif 1 <= int(x) < model.config.n_items:
                idx.append(int(x))
            else:
                continue
            kept.append(float(t))
        if len(idx) >= 2:
            hist.append(idx)
            tss.append(kept)
        if len(hist) >= max_users:
            break
    if with_timestamps:
        return hist, (tss if has_ts else None)
    return hist


#: the options of a card folder's graph that ``--card-dir`` keeps (:func:`zoo.hub.existing_onnx_exports` reads them
#: back, and ``zoo.hub card`` re-exports the graph with them): argparse destination -> flag
CARD_GRAPH_OPTIONS = {"topk": "--topk", "scores": "--scores", "time_input": "--time-input",
                      "exclude_seen": "--exclude-seen"}


def _card_graph_options(p: argparse.ArgumentParser, args, kind: str, rel: str) -> list[str]:
    """``--card-dir``: the options of the graph already in ``CARD_DIR/rel`` (its ``state_spec.json``, as ``zoo.hub
    card`` reads them to re-export it), set on ``args`` where not given, so that the card's graph keeps reproducing its
    numbers; a usage error naming each given option that differs. Returns the flags of the options it set."""
    from zoo.hub import existing_onnx_exports

    try:
        found = [a for a in existing_onnx_exports(args.card_dir) if a[a.index("--kind") + 1] == kind]
    except (OSError, ValueError, KeyError, TypeError) as e:
        p.error(f"--card-dir {args.card_dir}: unreadable {rel}/{SPEC_FILE} ({type(e).__name__}: {e})")
    if not found:
        return []
    card = p.parse_args(["--model", args.model, "--card-dir", args.card_dir, *found[0]])
    set_here, differ = [], []
    for dest, flag in CARD_GRAPH_OPTIONS.items():
        given, was = getattr(args, dest), getattr(card, dest)
        if given in (None, False):                      # not given: the card graph's
            setattr(args, dest, was)
            set_here += [flag] if was is True else [flag, str(was)] if was not in (None, False) else []
        elif given != was:
            differ.append(f"{flag} (the graph was exported without it)" if given is True else
                          f"{flag} {given} (the graph's: {'none' if was is None else was})")
    if differ:
        p.error(f"--card-dir {args.card_dir}: its {rel}/ graph was exported with other options ({', '.join(differ)}); "
                "a card's graph keeps its options, as zoo.hub card re-exports it, so that it reproduces the card's "
                f"numbers: leave {'them' if len(differ) > 1 else 'it'} out, write the graph elsewhere with --out, or "
                f"remove {os.path.join(args.card_dir, rel)} first")
    return set_here


def main(argv: Sequence[str] | None = None) -> int:
    from zoo.cli import add_columns_option, check_outputs, positive_int, refuse_options_without
    from zoo.pretrained import add_hub_options, hub_options

    p = argparse.ArgumentParser(allow_abbrev=False,
                                prog=command_prog("export.onnx"), description=__doc__.split("\n\n")[0],
                                epilog=EXIT_CODES)
    p.add_argument("--model", required=True, help="model folder or Hub id (from_pretrained)")
    add_hub_options(p)
    p.add_argument("--out", default=None,
                   help="output folder (model.onnx + state_spec.json); not needed with --card-dir, not a model "
                        "checkpoint's folder (--card-dir writes into its onnx/)")
    p.add_argument("--kind", choices=("step", "window"), default=None,
                   help="step (default for models with an exact step) or window")
    p.add_argument("--topk", type=positive_int, default=None, help="K of the in-graph TopK (default 10; with --card-dir, the "
                                                           "card's graph's)")
    p.add_argument("--scores", action="store_true", help="also output all scores [B, n_items]")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true",
                      help="fp16 weights and activations (graph I/O, recurrent states and the scans stay fp32)")
    prec.add_argument("--int8", action="store_true",
                      help="dynamic int8 for CPU serving with ONNX Runtime: the fp32 graph is verified, then its "
                           "MatMul/Gemm weights and item table are quantized to int8 per output channel and the result "
                           "is verified on its score error and top-k overlap (graph I/O, states and the scans stay "
                           "fp32; not for TensorRT). Activations are quantized with one scale per call, so a row's "
                           "scores, top-k and state move a little with the call's other rows and with how a user's "
                           "events are split into calls")
    p.add_argument("--time-input", choices=TIME_INPUTS, default=None,
                   help="time-aware models: 'timestamps' (default: float64 timestamps + float64 last_ts state in the "
                        "graph) or 'gaps' (step graphs: float32 time_gaps, last_ts kept by the caller; TensorRT-able)")
    p.add_argument("--exclude-seen", action="store_true",
                   help="rank the items of the history last (step graphs: a 'seen' state [B, n_items]; window graphs: "
                        "the input window), as the LRURec protocol's history masking")
    p.add_argument("--exclude-items", metavar="FILE", default=None,
                   help="item ids never to recommend (retired, unavailable), one per line (a line of '#' alone or "
                        "'#' then a space is a comment, '#hash' is an id, '\\# x' the id '# x'): they score -inf in "
                        "the graph, like the padding; each must be in the model's vocabulary")
    p.add_argument("--user-vector", action="store_true",
                   help="also output user_vector [B, vector_size], the query vector of maximum-inner-product retrieval "
                        "over the item vectors of python -m zoo.embed (its inner products are the raw scores)")
    p.add_argument("--candidates", action="store_true",
                   help="add a candidates [B, C] input: each row recommends only the items it lists (a retrieval "
                        "stage's candidates, a page's items; 0 = padding, a row without any is not restricted)")
    p.add_argument("--data", default=None, help="interaction file for the 'real histories' verification cases")
    add_columns_option(p)
    p.add_argument("--card-dir", default=None,
                   help="write the graph into CARD_DIR/onnx[-window]/ and add an 'ONNX export' section to its README; "
                        "the options of a graph already there (--topk, --scores, --time-input, --exclude-seen) are "
                        "kept, and a different one given is refused; a symbolic link in the card that leads outside "
                        "it (README.md, onnx[-window]/ or a file there) is refused")
    p.add_argument("--no-verify", action="store_true", help="skip verification (not recommended)")
    p.add_argument("--verify-prime", type=positive_int, default=None,
                   help="step graphs: items in the priming call (200)")
    p.add_argument("--verify-steps", type=positive_int, default=None,
                   help="step graphs: single steps after priming (500)")
    p.add_argument("--verify-cases", type=positive_int, default=None, help="random cases for top-k agreement (2000)")
    args = p.parse_args(argv)
    refuse_options_without(p, args, "data", ["columns"])   # --columns names the columns of --data, nothing else
    try:                                                    # an empty --revision, or one for a local folder
        args.hub = hub_options(args)
    except ValueError as e:
        p.error(str(e))
    if not args.out and not args.card_dir:
        p.error("give --out DIR or --card-dir CARD_FOLDER")
    if args.out and args.card_dir:
        p.error("--card-dir writes into CARD_DIR/onnx[-window]/: give it or --out, not both")
    if (args.int8 or args.fp16) and args.card_dir:
        flag = "--int8" if args.int8 else "--fp16"
        p.error(f"{flag} with --card-dir: the card's ONNX section describes its fp32 graph; write the {flag[2:]} graph "
                f"beside it with --out CARD_DIR/onnx-{flag[2:]}")
    if args.kind == "window" and (args.verify_prime or args.verify_steps):
        p.error("--verify-prime/--verify-steps verify a step graph's priming and single steps; a window graph has "
                "neither (--verify-cases sets its cases)")
    given = [f for f, v in (("--verify-prime", args.verify_prime), ("--verify-steps", args.verify_steps),
                            ("--verify-cases", args.verify_cases)) if v is not None]
    if args.no_verify and given:
        p.error(f"{'/'.join(given)} with --no-verify: there is no verification for "
                f"{'them' if len(given) > 1 else 'it'} to set; drop one or the other")
    if args.out:                                            # a file there or above it, or a place not writable
        try:
            check_outputs({"--out": args.out}, folders=True)
        except ValueError as e:
            p.error(f"{e} (the graph goes into OUT/{GRAPH_FILE})")
        held = checkpoint_files(args.out)
        if held:                                            # a model folder: its item_vocab.json is the model's
            p.error(f"--out {args.out} holds a model checkpoint ({' and '.join(held)}): the export would replace or "
                    "remove the model's item_vocab.json, so that the model no longer loads or maps its item ids "
                    f"wrongly; give --card-dir {args.out} to put the graph in its onnx/ subfolder, or another --out")
    if args.card_dir:                                       # a card folder (zoo.hub card): its weights and config
        lacks = [f for f in ("config.json", "model.safetensors") if not os.path.isfile(os.path.join(args.card_dir, f))]
        if not os.path.isdir(args.card_dir) or lacks:
            p.error(f"--card-dir {args.card_dir} is not a card folder ("
                    + (f"it lacks {' and '.join(lacks)}" if os.path.isdir(args.card_dir) else "no such folder")
                    + "; make one with `python -m zoo.hub card`, or write the graph elsewhere with --out)")
    if args.data and not os.path.isfile(args.data):         # a run that cannot read its input: it fails (1)
        exit_with(EXIT_ERROR, f"error: --data {args.data}: no such file")
    # the output folder is made (if need be) and locked before the model is loaded, and held to the end: a second run
    # into it fails at once (exit 1, one line) instead of after minutes of work, and never mixes its files with this
    # run's. --card-dir: its onnx[-window]/ subfolder, once the model says which (the card folder itself may be a
    # stage that zoo.hub card, this very process, holds locked: zoo.cli.written_whole_folder)
    try:
        with contextlib.ExitStack() as holding:
            if args.out:
                holding.enter_context(held_output_folder(args.out, "--out"))
            return _export(p, args, holding)
    except FolderBusy as e:
        exit_with(EXIT_ERROR, f"error: {e}")


def _export(p: argparse.ArgumentParser, args, holding: contextlib.ExitStack) -> int:
    """:func:`main`'s run once its options are checked and its ``--out`` is held (``--card-dir``: the graph's
    subfolder is taken into ``holding`` here, before anything there is read, once the card's links are checked: a
    symbolic link inside the card that leads outside it, as ``README.md``, the subfolder or a file the export writes
    there, is refused, exit 1, one line naming it and its target: :func:`card_links_refused`)."""
    from zoo.cli import flag_named

    say = lambda m: print(m, flush=True)  # noqa: E731
    # errors and verdicts go to stderr (a run with stdout in a log file still shows them), the stages to stdout
    err = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    say(f"loading {args.model} ...")
    try:
        model = _load_model(args.model, **args.hub)
    except (OSError, ValueError) as e:
        exit_with(EXIT_ERROR, f"error: --model {args.model}: {e}")
    kind = args.kind or ("step" if model.has_exact_step else "window")
    # an option value the loaded model refuses: a usage error (2), before any tracing (as --topk below)
    refused = no_step_graph(model) if args.kind == "step" else None
    if refused is not None:
        p.error(f"--kind step: {no_step_graph_message(refused, 'export.onnx', args.model)}")
    try:
        resolve_time_input(model, kind, args.time_input)   # --time-input gaps for a model that does not read time
    except ExportError as e:
        p.error(str(e))                                     # each of its messages starts with --time-input
    try:
        excluded = excluded_indices(model, args.exclude_items)
    except ValueError as e:
        exit_with(EXIT_ERROR, f"error: {e}")
    out = args.out
    rel = None
    if args.card_dir:
        rel = "onnx" if kind == "step" else "onnx-window"
        out = os.path.join(args.card_dir, rel)
        try:                                # a link planted in the card: refused before anything there is touched
            card_links_refused(args.card_dir, rel)
        except ValueError as e:             # zoo.cli.LinkOutsideError
            exit_with(EXIT_ERROR, f"error: --card-dir {args.card_dir}: {e}")
        holding.enter_context(held_output_folder(out, "--card-dir"))
        kept = _card_graph_options(p, args, kind, rel)
        if kept:
            say(f"  keeping the options of the graph in {out}: {' '.join(kept)} (its {SPEC_FILE})")
    args.topk = 10 if args.topk is None else args.topk
    problem = topk_usage_error(model, args.topk, excluded)  # an option value the model refuses: usage (2), as --ks
    if problem:
        p.error(problem)
    try:
        real, real_ts = (load_real_histories(args.data, model, with_timestamps=True, columns=args.columns)
                         if args.data else (None, None))
    except (OSError, ValueError, TypeError) as e:              # TypeError: the file's ids are not the vocabulary's kind
        exit_with(EXIT_ERROR, f"error: --data {args.data}: {e}")
    if real is not None:
        say(f"  {len(real)} real histories from {args.data}"
            + ("" if not model.uses_timestamps else " with their timestamps" if real_ts is not None
               else " (no timestamps in the file: the real cases get synthetic timestamps)"))
    try:
        vk = {"topk_cases": args.verify_cases or 2000}
        if kind == "step":
            vk.update(prime_len=args.verify_prime or 200, n_steps=args.verify_steps or 500)
        elif args.verify_prime or args.verify_steps:
            raise ExportError(f"--verify-prime/--verify-steps: {model.config.model_type} exports a window graph (no "
                              "exact step), which has no priming or single steps to verify")
        res = export_model(model, out, kind=kind, topk=args.topk, with_scores=args.scores,
                           verify=not args.no_verify, real_histories=real, real_timestamps=real_ts,
                           verify_kwargs=vk, progress=say,
                           precision="fp16" if args.fp16 else "int8" if args.int8 else "fp32",
                           time_input=args.time_input,
                           exclude_seen=args.exclude_seen, exclude_items=excluded, user_vector=args.user_vector,
                           candidates=args.candidates, lock=False)      # held here (main, --card-dir above)
    except VerificationError as e:
        if e.report is not None:
            say(e.report.table())
        err(f"ERROR: {e}")
        return EXIT_VERIFY_FAILED
    except ExportError as e:                                   # a failed run (1); a bad option value is a usage error
        err(f"ERROR: {flag_named(str(e), {'topk': '--topk'})}")      # export_model's topk is the CLI's --topk
        return EXIT_ERROR
    if res.report is not None:
        say(res.report.table())
    if args.card_dir:
        readme = write_card_section(args.card_dir, res.spec, rel)
        say(f"card section written to {readme}")
    size = os.path.getsize(res.graph_path)
    vocab = res.spec.get("item_vocab")                      # the model's item ids, for the runtime to map
    say(f"wrote {res.graph_path} ({size / 1e6:.2f} MB, {res.kind} graph, {res.spec['precision']}, top-{args.topk})"
        + (f", {res.spec_path} and {os.path.join(os.path.dirname(res.spec_path), vocab)}" if vocab else
           f" and {res.spec_path}") + f" in {time.perf_counter() - t0:.1f} s")
    say(io_table_markdown(res.spec))
    return EXIT_OK


if __name__ == "__main__":
    from .fsutil import run_cli

    sys.exit(run_cli(main))
