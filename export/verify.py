"""Verification of an exported graph against the PyTorch model (used by ``export.onnx``; reusable by the TensorRT
path: pass any ``runner`` with the ONNX Runtime session's ``run(output_names, feeds)`` signature).

Step graphs (cases, each run side by side in PyTorch (``model.step``) and in the runtime, every side carrying its
own state, so errors accumulate as they would in production):

* ``random/prime+steps``: ``batch`` random histories, primed with ``prime_len`` items in one call (``T = L``), then
  ``n_steps`` single-item calls (``T = 1``); scores compared after the priming and after every step, states compared
  after the last step;
* ``random/topk``: ``topk_cases`` rows (one batch) from random states reached by priming random histories, then one
  ``T = 1`` step: top-k agreement (identical ordered lists) and score error;
* ``real/prime+steps``: the same as the first case on real histories (when given): the first half primes, the rest
  is stepped one item at a time.

Time-aware graphs get the real timestamps with the real histories when they are given (``real_timestamps``, e.g.
``export.onnx --data`` with a file that has timestamps), otherwise, and in the random cases, float64 Unix-second
timestamps (:func:`_rand_ts`: gaps from 0 s to 5 years, some with milliseconds). PyTorch always gets them as they are
(``model.step``); a gaps-form graph (``spec["time_input"] == "gaps"``) gets float32 ``time_gaps`` computed from them
by the client code of ``export.runtime`` (:func:`export.runtime.time_gaps`, ``last_ts`` kept beside the graph state),
so the comparison includes the float32 rounding of the gaps.

Window graphs: ``random/windows`` (``topk_cases`` random padded windows of random lengths, several padded widths) and
``real/windows``; compared with ``model.forward``.

Graphs exported with ``--exclude-seen`` (``spec["exclude_seen"]``): the PyTorch side keeps its own record of each
row's history (every id fed so far; for window graphs the ids of the window) and gives those items
:data:`export.runtime.SEEN_SCORE`; the graph's masked entries must equal it exactly (a mask that differs is an infinite
score error), the score errors are measured over the other entries, and the graph's ``seen`` state is compared with
the record.

Graphs exported with ``--candidates`` (``spec["candidates"]``): every call gets fresh candidate lists
(:func:`_rand_candidates`: most rows restricted to ``k .. 3k`` items, some to fewer than ``k``, some not restricted);
the reference gives every item a restricted row does not list ``-inf``, the graph's ``scores`` must hold ``-inf``
exactly there, and its top-k must match, empty slots (id 0) included.

Pass criteria, per graph precision (``spec["precision"]``, see :data:`TOLERANCES`; the same metrics are reported
for both):

* fp32: ``max |score_ort - score_torch| <= SCORE_ATOL`` on every real item's score, top-k agreement
  ``>= TOPK_MIN_AGREEMENT`` (identical ordered lists, up to swaps of items whose PyTorch scores are within
  ``SCORE_ATOL``: see :func:`_rows_agree`), state error ``<= STATE_ATOL`` (module constants, read at call time,
  so a caller can tighten them);
* fp16: the max abs score error relative to the score scale (``max_rel_err = max |d| / max |score_torch|``)
  ``<= score_rtol``, top-k agreement and state error as in the fp16 row of :data:`TOLERANCES`;
* int8 (``export.onnx --int8``, dynamic int8 weights): the score error relative to the score scale ``<= score_rtol``
  and the **top-k overlap** (``topk_overlap``: the mean fraction of PyTorch's top-k items found in the graph's top-k,
  order aside, an item tied with PyTorch's k-th one counting as found: :func:`_rows_overlap`)
  ``>= topk_min_overlap``; the ordered top-k agreement and the state error are reported, not judged (int8 rounding
  reorders near items on most rows and moves the states, and what a client sees of both is the ranking the overlap
  judges after hundreds of steps on the carried state).

Every case reports the top-k overlap beside the ordered agreement, whatever the precision.

A graph that ONNX Runtime cannot run on some call (its own error: ``InvalidArgument``, ``Fail``, ...; not out of
memory) fails its case instead of ending the verification with ONNX Runtime's traceback: the case's ``error`` says
which call (``T`` new items of a step graph, a window graph's width), ONNX Runtime's message on one line and the likely
cause (:data:`FIXED_LENGTH_HINT`: a graph traced at one fixed length, as a Python loop over the sequence is), and its
errors are infinite; the other cases still run. A graph ONNX Runtime cannot load fails a ``load`` case the same way.
Other runners (``export.trt``'s engine, the emulated plugins) raise their errors as before.

ONNX Runtime can also abort the process instead of raising (SIGABRT, "terminate called without an active exception":
a GRU run step by step in a Python loop, traced at 3 items and fed 1). So before running the graph here, the
verification runs it once per input shape it will use (``(B, T)`` of a step graph's calls, ``(B, width)`` of a window
graph's) in a fresh child process that imports no torch (:func:`_probe`, :mod:`export.ort_probe`; ``isolate=False``
skips it, a ``runner`` is never probed). A child that dies by a signal fails the only case, ``probe``, naming the
signal and the call (e.g. "ONNX Runtime crashed (SIGABRT) running the graph on T=1 new items (B=4) in a child
process; the graph cannot be served at this length"), and so does one that exits non-zero, cannot start, or runs
past :data:`PROBE_TIMEOUT_S`; the graph is then not run in this process. An error the child's ONNX Runtime raises is
left to the in-process verification, which reports it as above.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import ort_probe as _ort
from .runtime import SEEN_SCORE, SEEN_STATE, USER_VECTOR

#: the sessions of the verification (defined torch-free in :mod:`export.ort_probe`, whose child process opens the
#: graph the same way)
ort_session, scores_session, _with_scores_output = (_ort.ort_session, _ort.scores_session,
                                                  _ort._with_scores_output)

_NP_DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16, "int64": np.int64}

SCORE_ATOL = 1e-4
STATE_ATOL = 1e-3
TOPK_MIN_AGREEMENT = 0.999

#: fp16 graphs (``export.onnx --fp16``): fp16 weights/activations (the scans and the states stay fp32). Measured
#: (ORT 1.32 CPU, 200-item priming + 500 steps, 2,000 top-k rows; see export/README.md): score error <= 1.2e-3 of the
#: score scale, state error <= 5e-3, identical ordered top-10 on 94.5-99.7% of the rows (the misses are order swaps of
#: near-tied items whose scores differ by less than fp16's resolution). Set with margin: 8x on the score error,
#: 10x on the state error, 90% top-10 agreement.
FP16_SCORE_RTOL = 1e-2
FP16_STATE_ATOL = 5e-2
FP16_TOPK_MIN_AGREEMENT = 0.90


#: int8 graphs (``export.onnx --int8``: ONNX Runtime's dynamic quantization, int8 weights per output channel,
#: activations quantized per call; the scans, states and score tail stay fp32). Measured (ORT 1.32 CPU, 200-item
#: priming + 500 steps, 2,000 top-k rows, the bundled ML-1M step graphs): score error <= 9.3e-2 of the score scale
#: (Mamba4Rec; LRURec 4.9e-2, GRU4Rec 3.2e-2), mean top-10 overlap 0.94-0.97 (worst row 6 of 10), while the ordered
#: top-10 is identical on only 3-18% of the rows (int8 reorders near items) and states move by up to 0.67. Their test
#: metrics stay inside the cards' 95% intervals (bench/RESULTS_INT8.md). Set with margin: 2.7x on the score error,
#: 0.85 on the overlap; the ordered agreement and the states are not judged (see the module docstring).
INT8_SCORE_RTOL = 0.25
INT8_TOPK_MIN_OVERLAP = 0.85

#: graph precisions with a row of pass criteria (``spec["precision"]``)
PRECISIONS = ("fp32", "fp16", "int8")

#: the likely cause of a graph that ONNX Runtime loads but cannot run at another length than its example's:
#: ``export.onnx`` traces at one example length (3 new items, a 5-item window), and a Python loop over the sequence
#: (``for t in range(x.shape[1])``) is unrolled to that length (its ``Gather`` indices fixed)
FIXED_LENGTH_HINT = "likely cause: the graph was traced at one fixed length (a Python loop over the sequence?)"


def tolerances(precision: str = "fp32") -> dict:
    """The pass criteria for a graph precision: ``score_atol`` (abs, None = not checked), ``score_rtol`` (relative to
    the score scale, None = not checked), ``state_atol`` (None = not checked), ``topk_min_agreement`` (ordered lists),
    ``topk_min_overlap`` (top-k sets; None = not checked). fp32 reads the module constants."""
    if precision == "fp32":
        return {"score_atol": SCORE_ATOL, "score_rtol": None, "state_atol": STATE_ATOL,
                "topk_min_agreement": TOPK_MIN_AGREEMENT, "topk_min_overlap": None}
    if precision == "fp16":
        return {"score_atol": None, "score_rtol": FP16_SCORE_RTOL, "state_atol": FP16_STATE_ATOL,
                "topk_min_agreement": FP16_TOPK_MIN_AGREEMENT, "topk_min_overlap": None}
    if precision == "int8":
        return {"score_atol": None, "score_rtol": INT8_SCORE_RTOL, "state_atol": None,
                "topk_min_agreement": 0.0, "topk_min_overlap": INT8_TOPK_MIN_OVERLAP}
    raise ValueError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")


#: the per-precision table (a snapshot at import; :func:`tolerances` reads the constants at call time)
TOLERANCES = {p: tolerances(p) for p in PRECISIONS}


@dataclass
class CaseResult:
    name: str
    max_abs_err: float
    max_rel_err: float
    topk_agreement: float
    topk_cases: int
    state_err: float | None = None
    detail: str = ""
    ok: bool = True
    reason: str = ""
    #: mean fraction of PyTorch's top-k items found in the graph's top-k (order aside), over the compared rows
    topk_overlap: float | None = None
    #: the runtime could not run (or load) the graph: which call, its message and the likely cause (one line); the
    #: case fails whatever its numbers say (:func:`_judge`)
    error: str = ""


@dataclass
class VerifyReport:
    kind: str
    model_type: str
    cases: list[CaseResult] = field(default_factory=list)
    seconds: float = 0.0
    score_atol: float | None = SCORE_ATOL
    topk_min_agreement: float = TOPK_MIN_AGREEMENT
    precision: str = "fp32"
    score_rtol: float | None = None
    state_atol: float | None = STATE_ATOL
    topk_min_overlap: float | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cases)

    @property
    def worst(self) -> CaseResult:
        bad = [c for c in self.cases if not c.ok]
        pool = bad or self.cases
        if self.score_atol is not None:
            return max(pool, key=lambda c: (c.max_abs_err / max(self.score_atol, 1e-30), -c.topk_agreement))
        return max(pool, key=lambda c: (c.max_rel_err, -(c.topk_overlap or 0.0), -c.topk_agreement))

    def worst_message(self) -> str:
        w = self.worst
        if w.error:                         # no numbers to give: the graph did not run
            return f"case {w.name!r}: {w.reason}"
        return (f"worst case {w.name!r}: {w.reason or 'ok'} (max abs err {w.max_abs_err:.3e}, max rel err "
                f"{w.max_rel_err:.3e}, top-k agreement {100 * w.topk_agreement:.3f}% of {w.topk_cases}"
                + (f", top-k overlap {w.topk_overlap:.3f}" if w.topk_overlap is not None else "")
                + (f", state err {w.state_err:.3e}" if w.state_err is not None else "") + f"; {w.detail})")

    def table(self) -> str:
        tol = []
        if self.score_atol is not None:
            tol.append(f"{self.score_atol:g} abs")
        if self.score_rtol is not None:
            tol.append(f"{self.score_rtol:g} of the score scale")
        crit = [f"tolerance {', '.join(tol)}"]
        if self.topk_min_agreement > 0:
            crit.append(f"top-k >= {100 * self.topk_min_agreement:g}%")
        if self.topk_min_overlap is not None:
            crit.append(f"top-k overlap >= {self.topk_min_overlap:g}")
        if self.state_atol is not None:
            crit.append(f"state {self.state_atol:g}")
        rows = [f"verification ({self.kind}, {self.model_type}): {'PASSED' if self.ok else 'FAILED'} "
                f"[{self.precision}: {', '.join(crit)}; {self.seconds:.1f} s]",
                f"  {'case':22s} {'max abs':>10s} {'max rel':>10s} {'top-k agree':>12s} {'overlap':>8s} {'cases':>6s} "
                f"{'state err':>10s}  detail"]
        for c in self.cases:
            st = f"{c.state_err:.2e}" if c.state_err is not None else "-"
            ov = f"{c.topk_overlap:.4f}" if c.topk_overlap is not None else "-"
            rows.append(f"  {c.name:22s} {c.max_abs_err:10.2e} {c.max_rel_err:10.2e} {100 * c.topk_agreement:11.3f}% "
                        f"{ov:>8s} {c.topk_cases:6d} {st:>10s}  {c.detail}{'' if c.ok else '  <-- FAIL: ' + c.reason}")
        return "\n".join(rows)

    def to_dict(self) -> dict:
        return {"passed": self.ok, "max_abs_err": _worst(max, (c.max_abs_err for c in self.cases), 0.0),
                "max_rel_err": _worst(max, (c.max_rel_err for c in self.cases), 0.0),
                "topk_agreement": _worst(min, (c.topk_agreement for c in self.cases), 1.0),
                "topk_cases": sum(c.topk_cases for c in self.cases),
                "topk_overlap": _worst(min, (c.topk_overlap for c in self.cases if c.topk_overlap is not None), None),
                "state_err": _worst(max, (c.state_err for c in self.cases if c.state_err is not None), None),
                "precision": self.precision, "score_atol": self.score_atol, "score_rtol": self.score_rtol,
                "state_atol": self.state_atol, "topk_min_agreement": self.topk_min_agreement,
                "topk_min_overlap": self.topk_min_overlap,
                # a case's error only when it has one: a passed graph's spec reads as before
                "cases": [{k: v for k, v in asdict(c).items() if k != "error" or v} for c in self.cases]}


# ---------------------------------------------------------------------------------------------------- helpers
def _worst(pick: Callable, values, default):
    """``pick(values)`` (max or min), or NaN when any value is NaN, or ``default`` when there is none. Python's
    max() and min() keep whichever of a NaN and a number comes first, so a NaN after the first value was dropped."""
    values = [float(v) for v in values]
    if not values:
        return default
    return float("nan") if any(v != v for v in values) else pick(values)


class GraphRunError(Exception):
    """ONNX Runtime could not run the graph on one call (``where``: which call, e.g. ``"at width 7 (B=50)"``);
    ``message``: its error on one line. Raised by :func:`_run`, turned into a failed case by the verifiers."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message


def _runtime_error(e: BaseException) -> bool:
    """``e`` is ONNX Runtime's own error (its exception classes: ``InvalidArgument``, ``Fail``, ...), not its
    allocator running out of memory (which :func:`export.fsutil.run_cli` reports as such)."""
    from .fsutil import _out_of_memory

    return type(e).__module__.startswith("onnxruntime") and _out_of_memory(e) is None


def _one_line(e: BaseException, limit: int = 400) -> str:
    """ONNX Runtime's message on one line, without its ``[ONNXRuntimeError] : 2 : INVALID_ARGUMENT :`` prefix (the
    exception's class, which the callers name, says the same), at most ``limit`` characters."""
    import re

    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", " ".join(str(e).split())) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _run(run: Callable, names: list, feeds: dict, where: str) -> list:
    """``run(names, feeds)``; ONNX Runtime's own error (:func:`_runtime_error`) becomes :class:`GraphRunError`
    naming ``where``; any other goes on up as it was."""
    try:
        return run(names, feeds)
    except Exception as e:
        if not _runtime_error(e):
            raise
        raise GraphRunError(where, f"{type(e).__name__}: {_one_line(e)}") from None


def _run_failed(name: str, e: GraphRunError, detail: str = "") -> CaseResult:
    """The failed case of a graph that could not run: infinite errors, nothing compared, ``error`` set."""
    return CaseResult(name, float("inf"), float("inf"), 0.0, 0, None, detail or e.where,
                      error=f"ONNX Runtime cannot run the graph {e.where}: {e.message}; {FIXED_LENGTH_HINT}")


def _session_or_failed(graph: str, runner: Any) -> tuple[Callable | None, CaseResult | None]:
    """``(runner.run, None)``, or an ONNX Runtime session's ``run`` on ``graph`` with ``scores`` exposed; ``(None,
    the failed "load" case)`` when ONNX Runtime cannot load the graph (its own error, :func:`_runtime_error`)."""
    if runner is not None:
        return runner.run, None
    try:
        return scores_session(graph).run, None
    except Exception as e:
        if not _runtime_error(e):
            raise
        return None, CaseResult("load", float("inf"), float("inf"), 0.0, 0, None, "the session was not made",
                                error=f"ONNX Runtime cannot load the graph: {type(e).__name__}: {_one_line(e)}")


# ------------------------------------------------------------------------------------------ the child probe
#: seconds the probe's child process (:func:`_probe`) may run before it counts as hung (it is killed and the
#: verification fails): generous, it loads the graph and runs once each input shape of the verification, the
#: 2,000-row top-k priming included
PROBE_TIMEOUT_S = 600.0
#: the most characters of the child's last stderr line a failed probe case quotes
_PROBE_STDERR_CHARS = 200


def _probe_child_command(graph: str, folder: str) -> list[str]:
    """The probe child's command line: this interpreter running :func:`export.ort_probe.main` on ``graph`` and the
    calls in ``folder``, ``export`` imported from where this process imported it (not torch: it starts cheaply)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from export.ort_probe import main; "
            "sys.exit(main(sys.argv[2:]))")
    return [sys.executable, "-c", code, root, graph, folder]


def _text(data) -> str:
    """A child's captured output as text (a ``TimeoutExpired`` may hold bytes, or None)."""
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def _probe_stage(out: str, calls: Sequence[tuple]) -> tuple[str, int | None]:
    """What the child was doing when it stopped, from its progress lines (:mod:`export.ort_probe`): ``(words, index
    of the call it was running or None)``."""
    stage: tuple[str, int | None] = ("before loading the graph", None)
    for line in out.split("\n"):
        word, _, i = line.strip().partition(" ")
        if word == "load":
            stage = ("loading the graph", None)
        elif word in ("loaded", "raised", "done") and not i:
            stage = ("after loading the graph", None)
        elif word == "start" and i.isdigit() and int(i) < len(calls):
            stage = (f"running the graph {calls[int(i)][0]}", int(i))
        elif word in ("done", "raised") and i.isdigit() and int(i) < len(calls):
            stage = (f"after running the graph {calls[int(i)][0]}", None)
    return stage


def _probe(graph: str, calls: Sequence[tuple[str, dict, dict]], unit: str, say) -> CaseResult | None:
    """Run ``graph`` once per call of ``calls`` (``(where, arrays, fill)``, :func:`export.ort_probe.write_calls`) in
    a fresh child process (:func:`_probe_child_command`; the feeds in a private temporary folder, removed after),
    before the verification runs it in this process, where an ONNX Runtime abort (SIGABRT: "terminate called
    without an active exception") would end the process with no report.

    None when the child exits 0 (an error ONNX Runtime raises there is left to the in-process verification, which
    reports it as today). Otherwise the failed ``probe`` case (infinite errors, ``error`` set) saying what happened:
    the signal and the call (``unit``: "length" or "width", the graph cannot be served there), the exit status, a
    child not done in :data:`PROBE_TIMEOUT_S` (killed) or one that could not start; the child's last stderr line
    when it has one."""
    timeout = float(PROBE_TIMEOUT_S)
    t0 = time.perf_counter()
    rc = None
    with tempfile.TemporaryDirectory(prefix="zoo-verify-probe-") as folder:
        _ort.write_calls(folder, calls)
        cmd = _probe_child_command(graph, folder)
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out, err = _text(e.stdout), _text(e.stderr)
        except OSError as e:
            return _probe_failed(calls, f"cannot start the child process that probes the graph ({cmd[0]}): "
                                        f"{' '.join(str(e).split())}")
        else:
            rc, out, err = p.returncode, _text(p.stdout), _text(p.stderr)
    if rc == 0:
        say(f"  probe: the graph ran at {len(calls)} input shape(s) in a child process "
            f"[{time.perf_counter() - t0:.1f} s]")
        return None
    stage, at = _probe_stage(out, calls)
    last = next((" ".join(x.split()) for x in reversed(err.splitlines()) if x.strip()), "")
    if len(last) > _PROBE_STDERR_CHARS:
        last = last[:_PROBE_STDERR_CHARS - 3] + "..."
    last = f" (its last stderr line: {last})" if last else ""
    if rc is None:
        msg = f"the child process that probes the graph did not finish in {timeout:g} s ({stage}) and was stopped"
    elif rc > 0:
        msg = f"the child process that probes the graph ({cmd[0]}) exited with status {rc} ({stage}){last}"
    else:
        try:
            sig = signal.Signals(-rc).name
        except ValueError:
            sig = f"signal {-rc}"
        msg = f"ONNX Runtime crashed ({sig}) {stage} in a child process{last}"
        if at is not None:
            msg += f"; the graph cannot be served at this {unit}; {FIXED_LENGTH_HINT}"
    return _probe_failed(calls, msg)


def _probe_failed(calls: Sequence[tuple], error: str) -> CaseResult:
    return CaseResult("probe", float("inf"), float("inf"), 0.0, 0, None,
                      f"{len(calls)} call(s) in a child process, one per input shape", error=error)


def _probe_feeds(spec: dict, rng, B: int, T: int | None = None, ids: np.ndarray | None = None,
                 ts: np.ndarray | None = None, max_candidates: int | None = None) -> tuple[dict, dict]:
    """One probe call's feeds, of the kind the verification feeds: ``(arrays, fill)`` for
    :func:`export.ort_probe.write_calls`. ``ids [B, T]`` int64 (default: random real items), ``ts [B, T]`` float64
    Unix seconds for a time-aware graph (default :func:`_rand_ts`; a gaps-form graph gets their float32 gaps), random
    candidate lists (:func:`_rand_candidates`), the states filled with their initial values (made by the child)."""
    if ids is None:
        ids = rng.integers(1, spec["n_items"], size=(B, T))
    states = {s["name"]: s for s in spec["state"]}
    arrays, fill = {}, {}
    for inp in spec["inputs"]:
        name = inp["name"]
        if name == "item_ids":
            arrays[name] = np.asarray(ids, dtype=np.int64)
        elif name in states:
            fill[name] = ([B, *states[name]["shape"][1:]], states[name]["init"], states[name]["dtype"])
        elif name in ("timestamps", "time_gaps"):
            t = _rand_ts(rng, *ids.shape) if ts is None else np.asarray(ts, dtype=np.float64)
            if name == "time_gaps":
                from .runtime import time_gaps

                t = time_gaps(t, np.full((B, 1), -1.0))[0]
            arrays[name] = t.astype(_NP_DTYPES[inp["dtype"]])
        elif name == "candidates":
            arrays[name] = _rand_candidates(rng, B, spec["n_items"], spec["topk"], max_candidates)
        else:                                               # an input this module does not know: zeros
            fill[name] = ([B if d == "B" else ids.shape[1] if d in ("T", "L") else d if isinstance(d, int) else 1
                           for d in inp["shape"]], 0.0, inp["dtype"])
    return arrays, fill


def _step_probe_calls(spec: dict, seed: int, prime_len: int, n_steps: int, batch: int, topk_cases: int,
                      topk_prime: int, real_histories, max_candidates: int | None) -> list[tuple[str, dict, dict]]:
    """The probe calls of :func:`verify_step`: one per distinct ``(B, T)`` it feeds (the random priming and its
    single steps, the top-k priming and its step, the real histories' priming and steps), random feeds drawn from
    their own stream (the verification's draws are unchanged)."""
    shapes = [(batch, prime_len)] + ([(batch, 1)] if n_steps > 0 else []) + [(topk_cases, topk_prime),
                                                                             (topk_cases, 1)]
    real = _real_step_rows(real_histories, batch, prime_len, n_steps)
    if real is not None:
        keep, L, n_prime = real
        shapes += [(len(keep), n_prime)] + ([(len(keep), 1)] if L > n_prime else [])
    rng = np.random.default_rng([seed, 7])
    return [(f"on T={T} new items (B={B})", *_probe_feeds(spec, rng, B, T=T, max_candidates=max_candidates))
            for B, T in dict.fromkeys(shapes)]


def _window_probe_calls(model, spec: dict, seed: int, widths: Sequence[int], topk_cases: int, real_histories,
                        real_timestamps, batch_chunk: int,
                        max_candidates: int | None) -> list[tuple[str, dict, dict]]:
    """The probe calls of :func:`verify_window`: one per distinct ``(B, width)`` of its calls (the same random
    windows, replayed from ``seed``, and the real ones), padded as it pads them; timestamps and candidates drawn
    from their own stream."""
    M = spec["max_seq_length"]
    chunks = [(c, None) for c in _chunks(_window_groups(np.random.default_rng(seed), widths, topk_cases,
                                                        spec["n_items"]), batch_chunk)]
    real = _real_windows(real_histories, real_timestamps, topk_cases, M)
    if real is not None:
        hs, tss = real
        chunks += [(hs[s:s + batch_chunk], None if tss is None else tss[s:s + batch_chunk])
                   for s in range(0, len(hs), batch_chunk)]
    rng = np.random.default_rng([seed, 7])
    calls, seen = [], set()
    for chunk, tss in chunks:
        shape = (len(chunk), min(M, max(len(h) for h in chunk)))
        if shape in seen:
            continue
        seen.add(shape)
        if spec["uses_timestamps"]:
            tss = tss or [(1.6e9 + np.cumsum(rng.integers(0, 86400, size=len(h)))).tolist() for h in chunk]
            ids, _, ts = model.pad_batch(chunk, max_length=M, timestamps=tss)
            ts = ts.numpy()
        else:
            ids, ts = model.pad_batch(chunk, max_length=M)[0], None
        calls.append((f"at width {ids.shape[1]} (B={len(chunk)})",
                      *_probe_feeds(spec, rng, len(chunk), ids=ids.numpy(), ts=ts, max_candidates=max_candidates)))
    return calls


def _errs(ort_scores: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Max abs / rel error over the real items (column 0, padding, is -inf in the graph and excluded). Items the
    reference excludes as seen (:data:`SEEN_SCORE`) must hold exactly that score in the graph, and items it masks to
    ``-inf`` (``--exclude-items``) must be ``-inf`` in the graph; both are left out of the error and of the score
    scale. A graph that masks another set of items, or holds any other non-finite score, gets an infinite error."""
    a, b = ort_scores[..., 1:].astype(np.float64), ref[..., 1:].astype(np.float64)
    gone_ref, gone_ort = np.isneginf(b), np.isneginf(a)
    if np.any(gone_ref != gone_ort) or not np.all(np.isfinite(a[~gone_ort])):
        return float("inf"), float("inf")
    seen_ref, seen_ort = b == SEEN_SCORE, a == SEEN_SCORE
    if np.any(seen_ref != seen_ort):
        return float("inf"), float("inf")
    live = ~seen_ref & ~gone_ref
    if not live.any():
        return 0.0, 0.0
    d = np.abs(a[live] - b[live])
    scale = max(float(np.abs(b[live]).max()), 1e-12)
    return float(d.max()), float(d.max() / scale)


def _item_vectors(model, spec: dict) -> np.ndarray | None:
    """``[n_items - 1, vector_size]`` the model's item vectors when the graph has a ``user_vector`` output, else
    None."""
    return model.item_vectors().vectors.numpy() if spec.get(USER_VECTOR) else None


def _add_vector_scores(res: dict, ref: np.ndarray, items: np.ndarray | None) -> dict:
    """With a ``user_vector`` output (``items``: :func:`_item_vectors`): ``res["vector_scores"]`` = the scores its
    inner products with the model's item vectors give, ``[B, n_items]``, masked where ``ref`` is (the padding, and
    the items the score path excludes: the vector is the raw query, the masks are the score path's)."""
    if items is not None:
        v = np.full(ref.shape, -np.inf, dtype=np.float32)
        v[:, 1:] = res[USER_VECTOR].astype(np.float32) @ items.T
        res["vector_scores"] = np.where(np.isneginf(ref) | (ref == SEEN_SCORE), ref, v)
    return res


def _vector_note(items: np.ndarray | None) -> str:
    return "; user_vector . item vectors compared too" if items is not None else ""


def _exclude(ref: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """The reference scores with the items flagged in ``seen [B, n_items]`` (bool) set to :data:`SEEN_SCORE`
    (never column 0, the padding, which the comparisons leave out)."""
    seen = seen.copy()
    seen[:, 0] = False
    return np.where(seen, np.float32(SEEN_SCORE), ref.astype(np.float32))


def _mask_excluded(ref: np.ndarray, spec: dict) -> np.ndarray:
    """The reference scores ``[B, n_items]`` with the graph's ``excluded_items`` (``--exclude-items``) at ``-inf``."""
    excluded = spec.get("excluded_items") or []
    if excluded:
        ref = ref.astype(np.float32, copy=True)
        ref[:, excluded] = -np.inf
    return ref


def _topk_ref(ref: np.ndarray, k: int) -> np.ndarray:
    """PyTorch's top-k ids; a slot whose score is ``-inf`` (a ``--candidates`` row listing fewer than ``k`` items)
    holds id 0, as the graph gives it. Exactly tied scores: the lower item index first, as ONNX's ``TopK``
    (:func:`zoo.metrics.top_k`)."""
    from zoo.metrics import top_k

    t = torch.from_numpy(ref.astype(np.float32)).clone()
    t[:, 0] = -float("inf")
    vals, ids = top_k(t, k, dim=1)
    return np.where(np.isneginf(vals.numpy()), 0, ids.numpy())


def _rand_candidates(rng, B: int, n_items: int, k: int, max_c: int | None = None) -> np.ndarray:
    """``[B, 3k + 2]`` int64 candidate lists for a ``--candidates`` graph, drawn to exercise its rules: most rows list
    ``k .. 3k`` distinct items scattered among 0-padding (some with one item twice), 1 in 8 lists fewer than ``k``
    (empty top-k slots: id 0, score ``-inf``), 1 in 8 lists none (the row is not restricted). ``max_c``: at most that
    many columns (an engine's profile), the lists cut to fit."""
    C = 3 * k + 2 if max_c is None else max(1, min(3 * k + 2, max_c))
    out = np.zeros((B, C), np.int64)
    kind = rng.random(B)
    for b in range(B):
        if kind[b] < 0.125:
            continue
        m = int(rng.integers(1, k)) if kind[b] < 0.25 and k > 1 else int(rng.integers(k, 3 * k + 1))
        items = rng.choice(np.arange(1, n_items), size=min(m, n_items - 1, C), replace=False)
        if len(items) >= 3 and rng.random() < 0.25:
            items[-1] = items[0]                                    # a repeat
        out[b, rng.choice(C, size=len(items), replace=False)] = items
    return out


def _mask_candidates(ref: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """The reference scores with every item a restricted row of ``cands [B, C]`` does not list at ``-inf`` (a row
    without a real candidate is not restricted)."""
    allowed = np.zeros(ref.shape, dtype=bool)
    np.put_along_axis(allowed, cands, True, axis=1)
    allowed[:, 0] = False                                          # 0 pads the lists; the padding id is no item
    drop = (cands > 0).any(axis=1)[:, None] & ~allowed
    return np.where(drop, np.float32(-np.inf), ref.astype(np.float32))


def _scores_at(ref_scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``[B, k]`` float64: PyTorch's scores ``ref_scores [B, n]`` of the items ``ids [B, k]`` (an id outside
    ``[0, n)`` reads the padding id's score: the callers count such a slot as a disagreement by its id)."""
    rows = np.arange(len(ids))[:, None]
    return ref_scores[rows, np.clip(ids.astype(np.int64), 0, ref_scores.shape[1] - 1)].astype(np.float64)


def _rows_agree(ort_ids: np.ndarray, ref_scores: np.ndarray, k: int, ref_ids: np.ndarray | None = None) -> np.ndarray:
    """``[B]`` bool: the graph's ordered top-k equals PyTorch's, up to order swaps of near-tied items.

    A row agrees when the ids are identical, or when the PyTorch scores of the graph's ids, position by position,
    are within ``SCORE_ATOL`` of PyTorch's own top-k scores: items whose reference scores differ by less than the
    allowed score error have no defined order under that tolerance (on real 3,416-item models about 1 row in 700 of
    random histories has such a near-tie at some rank; with ``--exclude-seen`` and ``--candidates`` the history's
    candidates all tie at :data:`SEEN_SCORE`). An empty slot (id 0: a ``--candidates`` row listing fewer than ``k``
    items) must be empty in both. ``ref_ids``: :func:`_topk_ref` of ``ref_scores``, when the caller has it.
    """
    ref_ids = _topk_ref(ref_scores, k) if ref_ids is None else ref_ids
    real = (ort_ids > 0) & (ref_ids > 0)
    with np.errstate(invalid="ignore"):                             # -inf - -inf where a slot is empty
        gap = np.abs(_scores_at(ref_scores, ort_ids) - _scores_at(ref_scores, ref_ids))
    return np.all((ort_ids == ref_ids) | (real & (gap <= SCORE_ATOL)), axis=1)


def _rows_overlap(ort_ids: np.ndarray, ref_scores: np.ndarray, k: int,
                  ref_ids: np.ndarray | None = None) -> np.ndarray:
    """``[B]`` float: the fraction of PyTorch's top-k items that are in the graph's top-k, order aside (``ref_ids``:
    :func:`_topk_ref` of ``ref_scores``, when the caller has it).

    Ties at the k-th score are treated as :func:`_rows_agree` treats them: a graph id outside PyTorch's top-k counts
    as found when its reference score is at least PyTorch's k-th score minus ``SCORE_ATOL`` (and finite), since which
    of the items tied across the boundary fill the last slots is not defined. Without this, items of the history
    tied at :data:`SEEN_SCORE` across the boundary (``--exclude-seen``, a row with fewer than ``k`` unseen items)
    counted as misses, and an exact fp32 graph scored 0.96-0.99 at 100% ordered agreement."""
    ref_ids = _topk_ref(ref_scores, k) if ref_ids is None else ref_ids
    ids = ort_ids.astype(np.int64)
    same = ids[:, :, None] == ref_ids[:, None, :]                                    # [B, graph slot, ref slot]
    hit = same.any(axis=1)                                                           # [B, k] PyTorch's items found
    # PyTorch's k-th score; -inf when its last slot is empty (a --candidates row listing fewer than k items)
    kth = np.where(ref_ids[:, -1] > 0, _scores_at(ref_scores, ref_ids[:, -1:])[:, 0], -np.inf)
    got = _scores_at(ref_scores, ids)                                               # [B, k]
    with np.errstate(invalid="ignore"):
        tied = (ids > 0) & ~same.any(axis=2) & np.isfinite(got) & (got >= kth[:, None] - SCORE_ATOL)
    return np.minimum(hit.sum(axis=1) + tied.sum(axis=1), k) / k


class _Acc:
    def __init__(self):
        self.abs = 0.0
        self.rel = 0.0
        self.agree = []
        self.overlap = []
        self.where = ""

    def add(self, out: dict, ref: np.ndarray, k: int, where: str):
        a, r = _errs(out["scores"], ref)
        if "vector_scores" in out:                 # a --user-vector graph: its vectors must give the scores too
            a, r = (max(x, y) for x, y in zip((a, r), _errs(out["vector_scores"], ref), strict=True))
        if a > self.abs or not np.isfinite(a):
            self.where = where
        self.abs, self.rel = max(self.abs, a), max(self.rel, r)
        ref_ids = _topk_ref(ref, k)                       # PyTorch's top-k, once for both measures
        self.agree.append(_rows_agree(out["topk_ids"], ref, k, ref_ids))
        self.overlap.append(_rows_overlap(out["topk_ids"], ref, k, ref_ids))

    def overlap_mean(self) -> float:
        return float(np.concatenate(self.overlap).mean())


def _judge(c: CaseResult, score_atol: float | None, min_agree: float, state_atol: float | None,
           score_rtol: float | None = None, min_overlap: float | None = None) -> CaseResult:
    if c.error:                              # the graph did not run: nothing else to judge
        c.ok, c.reason = False, c.error
        return c
    reasons = []
    if score_atol is not None and not c.max_abs_err <= score_atol:
        reasons.append(f"score error {c.max_abs_err:.3e} > {score_atol:g}")
    if score_rtol is not None and not c.max_rel_err <= score_rtol:
        reasons.append(f"score error {c.max_rel_err:.3e} of the score scale > {score_rtol:g}")
    if not c.topk_agreement >= min_agree:
        reasons.append(f"top-k agreement {100 * c.topk_agreement:.3f}% < {100 * min_agree:g}%")
    if min_overlap is not None and not (c.topk_overlap is not None and c.topk_overlap >= min_overlap):
        reasons.append(f"top-k overlap {c.topk_overlap if c.topk_overlap is not None else float('nan'):.4f} < "
                       f"{min_overlap:g}")
    if state_atol is not None and c.state_err is not None and not c.state_err <= state_atol:
        reasons.append(f"state error {c.state_err:.3e} > {state_atol:g}")
    c.ok = not reasons
    c.reason = "; ".join(reasons)
    return c


# ------------------------------------------------------------------------------------------------- step graphs
class _StepPair:
    """Runs the same events through ``model.step`` and the runtime, each side with its own state.

    Gaps-form graphs (``spec["time_input"] == "gaps"``): the runtime side is driven like a client would drive it
    (``export.runtime.OnnxStepSession``): it keeps the client state ``last_ts`` (float64) itself, differences the
    float64 timestamps with :func:`export.runtime.time_gaps` and feeds float32 ``time_gaps``; PyTorch gets the float64
    timestamps, so the comparison includes the float32 rounding of the gaps."""

    def __init__(self, model, run: Callable, spec: dict, batch: int, max_candidates: int | None = None):
        self.model, self.run, self.spec = model, run, spec
        self.max_candidates = max_candidates
        self.gaps = spec.get("time_input") == "gaps"
        self.graph_names = [s["name"] for s in spec["state"]]
        self.client_names = [s["name"] for s in spec.get("client_state", [])]
        self.names = self.graph_names + self.client_names
        self.t_state = model.init_state(batch, device="cpu")
        # each state in its declared dtype (float32; float64 for TiM4Rec-causal's last_ts), initial value from the spec
        self.o_state = {s["name"]: np.full([batch, *s["shape"][1:]], s["init"], dtype=_NP_DTYPES[s["dtype"]])
                        for s in list(spec["state"]) + list(spec.get("client_state", []))}
        self.items = _item_vectors(model, spec)
        self.out_names = (["topk_ids", "topk_scores", "scores"] + ([USER_VECTOR] if self.items is not None else [])
                          + [s["output"] for s in spec["state"]])
        #: --exclude-seen graphs: the PyTorch side's own record of every id fed to each row (the reference mask)
        self.exclude_seen = bool(spec.get("exclude_seen"))
        self.t_seen = np.zeros((batch, spec["n_items"]), dtype=bool) if self.exclude_seen else None
        #: gaps-form graphs: the largest gap fed so far and how many gaps float32 rounded (not exactly representable)
        self.max_gap, self.rounded_gaps = 0.0, 0
        #: --candidates graphs: fresh candidate lists every call (:func:`_rand_candidates`), from their own stream
        self.cand_rng = np.random.default_rng([17, batch]) if spec.get("candidates") else None

    def step(self, ids: np.ndarray, ts: np.ndarray | None = None, where: str = ""):
        """One call on both sides: ``ids [B, T]`` (``ts [B, T]`` float64 when the model reads time) -> (the graph's
        outputs by name, the reference scores ``[B, n_items]``); ``where`` names the call in a
        :class:`GraphRunError` (ONNX Runtime could not run it)."""
        tid = torch.from_numpy(ids)
        with torch.no_grad():
            logits, self.t_state = self.model.step(tid, self.t_state, None if ts is None else torch.from_numpy(ts))
        feeds = {"item_ids": ids}
        client = {}
        if ts is not None and self.gaps:
            from .runtime import time_gaps

            gaps, client["last_ts"] = time_gaps(ts, self.o_state["last_ts"])
            feeds["time_gaps"] = gaps.astype(np.float32)
            self.max_gap = max(self.max_gap, float(gaps.max()))
            self.rounded_gaps += int((feeds["time_gaps"].astype(np.float64) != gaps).sum())
        elif ts is not None:
            feeds["timestamps"] = ts.astype(np.float64)
        feeds.update({n: self.o_state[n] for n in self.graph_names})
        if self.cand_rng is not None:
            feeds["candidates"] = _rand_candidates(self.cand_rng, ids.shape[0], self.spec["n_items"],
                                                   self.spec["topk"], self.max_candidates)
        call = f"on T={ids.shape[1]} new items (B={ids.shape[0]}{', ' + where if where else ''})"
        res = dict(zip(self.out_names, _run(self.run, self.out_names, feeds, call), strict=True))
        self.o_state = {**{n: res[f"{n}_out"] for n in self.graph_names}, **client}
        ref = logits.float().numpy()
        if self.exclude_seen:
            np.put_along_axis(self.t_seen, ids.astype(np.int64), True, axis=1)
            ref = _exclude(ref, self.t_seen)
        ref = _mask_excluded(ref, self.spec)
        if self.cand_rng is not None:
            ref = _mask_candidates(ref, feeds["candidates"])
        return _add_vector_scores(res, ref, self.items), ref

    def state_err(self) -> float:
        """Max abs difference over every state tensor, compared in float64 (a float64 state such as ``last_ts``
        must come back exactly: any rounding to float32 shows up as an error of up to 64 s at epoch seconds). NaN when
        any state element on either side is NaN, whichever state holds it (NaN fails every tolerance)."""
        ref = {n: self.t_state[n].double().numpy() for n in self.names if n != SEEN_STATE}
        if self.exclude_seen:
            ref[SEEN_STATE] = self.t_seen.astype(np.float64)
        return _worst(max, (np.abs(np.asarray(self.o_state[n], dtype=np.float64) - ref[n]).max() for n in self.names),
                      0.0)


#: gap mixture of the random timestamps (seconds): same second, seconds, minutes, hours, days, months, and (1 in 20)
#: 0.5..5 years: gaps over 2^24 s (194 days) are not integers in float32, so gaps-form graphs get rounded gaps too
_GAP_RANGES = ((0, 1), (1, 60), (60, 3600), (3600, 86400), (86400, 30 * 86400), (2 ** 24, 5 * 365 * 86400))
_GAP_WEIGHTS = (0.19, 0.19, 0.19, 0.19, 0.19, 0.05)
#: 1 in 10 gaps gets a random millisecond part (millisecond timestamps: float64 differences that are not integers)
_GAP_MS_SHARE = 0.1


def _rand_ts(rng, B, T, start=None):
    """``[B, T]`` float64 non-decreasing Unix seconds (each row starting in 2001..2023), gaps drawn from
    :data:`_GAP_RANGES` (0 included: several events in the same second; up to 5 years; some with milliseconds), so the
    verification exercises the whole time-feature range, would catch timestamps or ``last_ts`` rounded to float32
    (64-128 s resolution here) and includes gaps that float32 rounds (over 2^24 s, or fractional)."""
    base = rng.integers(1_000_000_000, 1_700_000_000, size=(B, 1)) if start is None else start
    which = rng.choice(len(_GAP_RANGES), size=(B, T), p=_GAP_WEIGHTS)
    lo = np.array([r[0] for r in _GAP_RANGES])[which]
    hi = np.array([r[1] for r in _GAP_RANGES])[which]
    gaps = lo + np.floor(rng.random((B, T)) * (hi - lo)).astype(np.int64)
    ms = np.where(rng.random((B, T)) < _GAP_MS_SHARE, rng.integers(1, 1000, size=(B, T)), 0)
    return (base + np.cumsum(gaps, axis=1) + np.cumsum(ms, axis=1) / 1000.0).astype(np.float64)


def _gaps_note(pair: _StepPair) -> str:
    if not pair.gaps:
        return ""
    return (f"; float32 time_gaps from float64 timestamps (client last_ts): max gap {pair.max_gap / 86400:.0f} days, "
            f"{pair.rounded_gaps} gaps rounded by float32")


def verify_step(model, graph: str, spec: dict, *, prime_len: int = 200, n_steps: int = 500, batch: int = 4,
                topk_cases: int = 2000, topk_prime: int = 20, real_histories: Sequence[Sequence[int]] | None = None,
                real_timestamps: Sequence[Sequence[float]] | None = None, seed: int = 0, runner: Any = None,
                progress=None, max_candidates: int | None = None, isolate: bool = True) -> list[CaseResult]:
    """The step graph against ``model.step``: priming + single steps on random histories (``batch`` rows), top-k
    agreement on ``topk_cases`` random states (primed with ``topk_prime`` items), and the real histories' priming
    + steps (``max(batch, 8)`` rows) when given. ``max_candidates``: the widest candidate lists to feed a
    ``--candidates`` graph (an engine's profile; default ``3k + 2``). A call ONNX Runtime cannot run fails its case
    (see the module docstring); the next case still runs. ``isolate`` (without a ``runner``): first run the graph
    once per ``(B, T)`` of these calls in a child process (:func:`_probe`); if ONNX Runtime crashes there, the
    only case is the failed ``probe`` and the graph is not run in this process."""
    say = progress or (lambda m: None)
    k = spec["topk"]
    n_items = spec["n_items"]
    rng = np.random.default_rng(seed)
    if isolate and runner is None:
        failed = _probe(graph, _step_probe_calls(spec, seed, prime_len, n_steps, batch, topk_cases, topk_prime,
                                                 real_histories, max_candidates), "length", say)
        if failed is not None:
            return [failed]
    run, failed = _session_or_failed(graph, runner)
    if failed is not None:
        return [failed]
    uses_ts = spec["uses_timestamps"]
    cases = []

    def prime_and_step(name, hist: np.ndarray, n_prime: int, ts: np.ndarray | None = None):
        B, Ltot = hist.shape
        ts_note = "; real timestamps" if uses_ts and ts is not None else ""
        if not uses_ts:
            ts = None                               # a model that reads no time gets none, real or not
        elif ts is None:
            ts = _rand_ts(rng, B, Ltot)
        pair = _StepPair(model, run, spec, B, max_candidates)
        acc = _Acc()
        try:
            out, ref = pair.step(hist[:, :n_prime], None if ts is None else ts[:, :n_prime], "priming")
            acc.add(out, ref, k, f"after priming with {n_prime} items")
            for t in range(n_prime, Ltot):
                out, ref = pair.step(hist[:, t:t + 1], None if ts is None else ts[:, t:t + 1],
                                     f"single step {t - n_prime + 1}")
                acc.add(out, ref, k, f"single step {t - n_prime + 1}")
        except GraphRunError as e:
            return _run_failed(name, e, f"B={B}, prime {n_prime} + {Ltot - n_prime} single steps")
        agree = np.concatenate(acc.agree)
        return CaseResult(name, acc.abs, acc.rel, float(agree.mean()), int(agree.size), pair.state_err(),
                          f"B={B}, prime {n_prime} + {Ltot - n_prime} single steps; worst at {acc.where}"
                          + ts_note + _gaps_note(pair) + _vector_note(pair.items), topk_overlap=acc.overlap_mean())

    t0 = time.perf_counter()
    hist = rng.integers(1, n_items, size=(batch, prime_len + n_steps))
    cases.append(prime_and_step("random/prime+steps", hist, prime_len))
    say(f"  random/prime+steps done [{time.perf_counter() - t0:.1f} s]")

    # top-k agreement on many independent cases: one batch of random states, then one T = 1 step
    t0 = time.perf_counter()
    hist = rng.integers(1, n_items, size=(topk_cases, topk_prime + 1))
    ts = _rand_ts(rng, topk_cases, topk_prime + 1) if uses_ts else None
    pair = _StepPair(model, run, spec, topk_cases, max_candidates)
    try:
        pair.step(hist[:, :topk_prime], None if ts is None else ts[:, :topk_prime], "priming")
        out, ref = pair.step(hist[:, topk_prime:], None if ts is None else ts[:, topk_prime:], "the step after it")
    except GraphRunError as e:
        cases.append(_run_failed("random/topk", e, f"B={topk_cases} random states (prime {topk_prime}) + 1 step"))
    else:
        a, r = _errs(out["scores"], ref)
        ref_ids = _topk_ref(ref, k)
        rows = _rows_agree(out["topk_ids"], ref, k, ref_ids)       # one entry per row actually compared
        cases.append(CaseResult("random/topk", a, r, float(rows.mean()), int(rows.size), pair.state_err(),
                                f"B={int(rows.size)} random states (prime {topk_prime}) + 1 step" + _gaps_note(pair)
                                + _vector_note(pair.items),
                                topk_overlap=float(_rows_overlap(out["topk_ids"], ref, k, ref_ids).mean())))
    say(f"  random/topk done [{time.perf_counter() - t0:.1f} s]")

    if real_histories:
        t0 = time.perf_counter()
        tss = _check_real_timestamps(real_histories, real_timestamps)
        real = _real_step_rows(real_histories, batch, prime_len, n_steps)
        if real is not None:
            keep, L, n_prime = real
            arr = np.array([list(real_histories[j])[:L] for j in keep], dtype=np.int64)
            ts = np.array([list(tss[j])[:L] for j in keep], dtype=np.float64) if tss is not None else None
            cases.append(prime_and_step("real/prime+steps", arr, n_prime, ts))
            say(f"  real/prime+steps done [{time.perf_counter() - t0:.1f} s]")
    return cases


def _real_step_rows(real_histories, batch: int, prime_len: int, n_steps: int) -> tuple[list, int, int] | None:
    """The real histories :func:`verify_step` primes and steps: ``(their indices (the ``max(batch, 8)`` longest of
    at least 4 items), the length L each is cut to, the priming length)``, or None when there is none."""
    keep = [j for j, h in enumerate(real_histories or []) if len(h) >= 4]
    if not keep:
        return None
    keep = sorted(keep, key=lambda j: len(real_histories[j]), reverse=True)[:max(batch, 8)]
    L = min(min(len(real_histories[j]) for j in keep), prime_len + n_steps)
    return keep, L, max(1, min(prime_len, L // 2))


def _check_real_timestamps(histories, timestamps):
    """``timestamps`` aligned with ``histories`` (one float per item, finite, non-decreasing per history), or None."""
    if timestamps is None:
        return None
    if len(timestamps) != len(histories):
        raise ValueError(f"real_timestamps has {len(timestamps)} rows, real_histories {len(histories)}")
    for j, (h, t) in enumerate(zip(histories, timestamps, strict=True)):
        t = np.asarray(t, dtype=np.float64)
        if len(t) != len(h):
            raise ValueError(f"real history {j}: {len(h)} items but {len(t)} timestamps")
        if not np.all(np.isfinite(t)) or np.any(np.diff(t) < 0):
            raise ValueError(f"real history {j}: timestamps must be finite and non-decreasing")
    return timestamps


# ----------------------------------------------------------------------------------------------- window graphs
def verify_window(model, graph: str, spec: dict, *, topk_cases: int = 2000, widths: Sequence[int] | None = None,
                  real_histories: Sequence[Sequence[int]] | None = None,
                  real_timestamps: Sequence[Sequence[float]] | None = None, seed: int = 0, runner: Any = None,
                  batch_chunk: int = 500, progress=None, max_candidates: int | None = None,
                  isolate: bool = True) -> list[CaseResult]:
    """The window graph against ``model.predict`` on windows of ``widths`` (and the real histories when given), in
    calls of ``batch_chunk`` rows; ``max_candidates`` as for :func:`verify_step`. A call ONNX Runtime cannot run
    fails its case, naming the width (see the module docstring). ``isolate`` (without a ``runner``): first run the
    graph once per ``(B, width)`` of these calls in a child process (:func:`_probe`), as :func:`verify_step` does."""
    say = progress or (lambda m: None)
    k, n_items, M = spec["topk"], spec["n_items"], spec["max_seq_length"]
    rng = np.random.default_rng(seed)
    widths = list(widths or sorted({M, max(1, M // 2), min(M, 7)}))
    if isolate and runner is None:
        failed = _probe(graph, _window_probe_calls(model, spec, seed, widths, topk_cases, real_histories,
                                                   real_timestamps, batch_chunk, max_candidates), "width", say)
        if failed is not None:
            return [failed]
    run, failed = _session_or_failed(graph, runner)
    if failed is not None:
        return [failed]
    items = _item_vectors(model, spec)
    out_names = ["topk_ids", "topk_scores", "scores"] + ([USER_VECTOR] if items is not None else [])

    uses_ts = spec["uses_timestamps"]

    def compare(name, groups, given_ts=None):
        acc = _Acc()
        n = 0
        chunks = _chunks(groups, batch_chunk)
        ts_chunks = ([given_ts[s:s + batch_chunk] for s in range(0, len(given_ts), batch_chunk)]
                     if given_ts is not None else None)
        for ci, chunk in enumerate(chunks):
            s = n
            if uses_ts:
                tss = (ts_chunks[ci] if ts_chunks is not None else
                       [(1.6e9 + np.cumsum(rng.integers(0, 86400, size=len(h)))).tolist() for h in chunk])
                ids, mask, ts = model.pad_batch(chunk, max_length=M, timestamps=tss)
                feeds = {"item_ids": ids.numpy(), "timestamps": ts.numpy().astype(np.float64)}
            else:
                ids, mask = model.pad_batch(chunk, max_length=M)[:2]
                ts, feeds = None, {"item_ids": ids.numpy()}
            with torch.no_grad():
                ref = model.predict(ids, mask, timestamps=ts).numpy()
            if spec.get("exclude_seen"):                       # the items of each row's window
                seen = np.zeros(ref.shape, dtype=bool)
                np.put_along_axis(seen, ids.numpy(), True, axis=1)
                ref = _exclude(ref, seen)
            ref = _mask_excluded(ref, spec)
            if spec.get("candidates"):
                feeds["candidates"] = _rand_candidates(rng, len(chunk), n_items, k, max_candidates)
                ref = _mask_candidates(ref, feeds["candidates"])
            try:
                got = _run(run, out_names, feeds, f"at width {ids.shape[1]} (B={len(chunk)})")
            except GraphRunError as e:
                return _run_failed(name, e, f"{sum(map(len, groups))} windows")
            res = _add_vector_scores(dict(zip(out_names, got, strict=True)), ref, items)
            acc.add(res, ref, k, f"rows {s}..{s + len(chunk) - 1}, width {ids.shape[1]}")
            n += len(chunk)
        agree = np.concatenate(acc.agree)
        return CaseResult(name, acc.abs, acc.rel, float(agree.mean()), int(agree.size), None,
                          f"{n} windows; worst at {acc.where}"
                          + ("; real timestamps" if uses_ts and given_ts is not None else "") + _vector_note(items),
                          topk_overlap=acc.overlap_mean())

    t0 = time.perf_counter()
    cases = [compare("random/windows", _window_groups(rng, widths, topk_cases, n_items))]
    say(f"  random/windows done [{time.perf_counter() - t0:.1f} s]")
    real = _real_windows(real_histories, real_timestamps, topk_cases, M)
    if real is not None:
        cases.append(compare("real/windows", [real[0]], real[1]))
    return cases


def _window_groups(rng, widths: Sequence[int], topk_cases: int, n_items: int) -> list[list[list[int]]]:
    """:func:`verify_window`'s random windows: per width ``w``, ``ceil(topk_cases / len(widths))`` histories of
    1..w random real items, the first exactly ``w`` (each group is padded to width w: several graph lengths)."""
    groups = []
    per = -(-topk_cases // len(widths))
    for w in widths:
        lens = rng.integers(1, w + 1, size=per)
        lens[0] = w
        groups.append([rng.integers(1, n_items, size=int(n)).tolist() for n in lens])
    return groups


def _chunks(groups, batch_chunk: int) -> list:
    """The calls of :func:`verify_window`: each group cut into runs of at most ``batch_chunk`` rows."""
    return [g[s:s + batch_chunk] for g in groups for s in range(0, len(g), batch_chunk)]


def _real_windows(real_histories, real_timestamps, topk_cases: int, M: int) -> tuple[list, list | None] | None:
    """:func:`verify_window`'s real windows: ``(the last M items of the first topk_cases non-empty histories, their
    timestamps or None)``, or None when there is none; the timestamps are checked (:func:`_check_real_timestamps`)."""
    if not real_histories:
        return None
    tss = _check_real_timestamps(real_histories, real_timestamps)
    keep = [j for j, h in enumerate(real_histories) if len(h) >= 1][:topk_cases]
    if not keep:
        return None
    return ([list(real_histories[j])[-M:] for j in keep],
            [list(tss[j])[-M:] for j in keep] if tss is not None else None)


# ---------------------------------------------------------------------------------------------------- entry
def verify_export(model, graph: str, spec: dict, *, real_histories=None, real_timestamps=None, runner=None,
                  progress=None,
                  score_atol: float | None = None, topk_min_agreement: float | None = None,
                  state_atol: float | None = None, score_rtol: float | None = None, precision: str | None = None,
                  topk_min_overlap: float | None = None, isolate: bool = True, **kwargs) -> VerifyReport:
    """Verify ``graph`` (described by ``spec``, see ``export.onnx.build_spec``) against ``model``.

    Tolerances default to :func:`tolerances` of the graph's precision (``precision``, else ``spec["precision"]``,
    else fp32; fp32 reads the module constants :data:`SCORE_ATOL`, :data:`TOPK_MIN_AGREEMENT`, :data:`STATE_ATOL` at
    call time); explicit arguments override single entries. ``kwargs`` go to :func:`verify_step` /
    :func:`verify_window`. ``isolate`` (default): without a ``runner``, the graph first runs once per input shape
    of the verification in a child process (:func:`_probe`), so that ONNX Runtime aborting (SIGABRT) fails a
    ``probe`` case instead of ending this process; a ``runner`` (TensorRT, emulated plugins) is never probed.
    """
    precision = precision or spec.get("precision", "fp32")
    tol = tolerances(precision)
    score_atol = tol["score_atol"] if score_atol is None else score_atol
    score_rtol = tol["score_rtol"] if score_rtol is None else score_rtol
    min_agree = tol["topk_min_agreement"] if topk_min_agreement is None else topk_min_agreement
    state_atol = tol["state_atol"] if state_atol is None else state_atol
    min_overlap = tol["topk_min_overlap"] if topk_min_overlap is None else topk_min_overlap
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        fn = verify_step if spec["kind"] == "step" else verify_window
        cases = fn(model, graph, spec, real_histories=real_histories, real_timestamps=real_timestamps, runner=runner,
                   progress=progress, isolate=isolate, **kwargs)
    finally:
        model.train(was_training)
    rep = VerifyReport(spec["kind"], spec["model_type"],
                       [_judge(c, score_atol, min_agree, state_atol, score_rtol, min_overlap) for c in cases],
                       time.perf_counter() - t0, score_atol, min_agree, precision, score_rtol, state_atol, min_overlap)
    return rep


__all__ = ["SCORE_ATOL", "STATE_ATOL", "TOPK_MIN_AGREEMENT", "FP16_SCORE_RTOL", "FP16_STATE_ATOL",
           "FP16_TOPK_MIN_AGREEMENT", "INT8_SCORE_RTOL", "INT8_TOPK_MIN_OVERLAP", "PRECISIONS", "TOLERANCES",
           "tolerances", "CaseResult", "VerifyReport", "verify_export", "verify_step", "verify_window", "ort_session"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m export.verify``: this module is a library (the checks :mod:`export.onnx` and :mod:`export.trt` run
    on every graph they write), not a command. It ran nothing and exited 0 whatever it was given, which a script
    could take for a passed verification: say so in one line on stderr, and exit 2 (a usage error, whatever
    ``argv`` holds)."""
    from .fsutil import EXIT_USAGE, exit_with

    exit_with(EXIT_USAGE, "python -m export.verify: a library (the verification export.onnx and export.trt run on each "
                          "graph they write), not a command; run python -m export.onnx or python -m export.trt")


if __name__ == "__main__":
    from .fsutil import run_cli

    sys.exit(run_cli(main))
