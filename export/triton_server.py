"""A real Triton Inference Server on a CPU box: the zoo's stepwise ONNX graph behind Triton's sequence batcher.

This one file plays two roles.

1. **Triton python-backend model** (``export.triton --backend python`` copies it to ``<repo>/<model>/1/model.py``).
   :class:`TritonPythonModel` runs ``model.onnx`` (the step graph of :mod:`export.onnx`) with ONNX Runtime and keeps
   the recurrent state **per correlation id** (the python backend has no implicit state: Triton does not feed a
   python model's output state back, see ``deploy.md`` §6.1):

   * ``START`` resets the sequence's state to its initial state. The config's sequence batcher declares the same
     ``state`` block as the onnxruntime variant (``initial_state``: ``zero_data``, or a ``data_file`` under
     ``initial_state/`` for non-zero values such as TiM4Rec-causal's float64 ``last_ts`` = -1), so Triton hands the
     model each state's initial value as an input: the model starts the sequence from those tensors, after checking
     them against ``state_spec.json`` (a mismatch is an error response naming the state). Triton keeps handing the
     same initial values afterwards -- the python backend has no API to return an output state to Triton -- and
     the model ignores them for a continuing sequence, whose state it keeps itself. (A config without a ``state``
     block, from an older generator, starts from ``state_spec.json``'s initial values.);
   * ``END`` frees it after the request is answered; states of sequences that stay idle longer than the config's
     ``max_sequence_idle_microseconds`` are freed too (Triton forgets such a sequence; so do we: the idle time runs
     from the sequence's last request, refused ones included, as Triton's timer does). An END with no
     items (``TritonRecommender.end``) is no event: its response has no recommendation (``topk_ids`` 0, the padding
     index, with scores ``-inf``, and no ``scores`` / ``user_vector``) and only ``live_sequences`` means anything;
   * requests from different sequences that Triton batches together (``oldest`` strategy) run as one ORT call per
     distinct number of new items ``T``; the sequence's state never mixes with another one's;
   * time-aware graphs (TiM4Rec-causal) take ``timestamps`` as float64 Unix seconds (``TYPE_FP64``), checked like
     :mod:`export.runtime` does: finite, non-negative, at most 1e11 s (not milliseconds), non-decreasing, not before
     the sequence's ``last_ts``; a ``--time-input gaps`` graph takes float32 ``time_gaps`` (``TYPE_FP32``, finite
     and non-negative) instead, its caller keeping ``last_ts`` and checking the time order
     (:mod:`export.triton_client` does);
   * a bad request (item index outside ``1 .. n_items-1``, a continuation whose state is gone, timestamps going back
     in time, ...) gets an error response naming the problem (and the row, in a batched explicit-state or window
     request), the other requests of the batch are answered normally and the model keeps serving; a refused START or
     END drops its sequence's state in the request's turn among the batch's requests of that sequence.

   With ``dynamic_batching`` instead of a sequence batcher the same class serves the explicit-state I/O (the state
   tensors in and ``<state>_out`` out, nothing kept) and, for window graphs (``state_spec.json`` kind ``window``),
   the stateless history-window I/O (``item_ids [L]`` 0-padded on the model's side, + float64 ``timestamps [L]``
   for TiM4Rec).

   A graph exported with ``--candidates`` takes an optional ``candidates [C]`` input (``[B, C]`` in the batched
   forms; int64 internal indices, 0 = padding): the request's top-k among those items, slots left empty holding id 0
   and score ``-inf``; a request without it, or without a real candidate, is not restricted.

   Outputs: ``topk_ids [K]`` (internal indices; :mod:`export.triton_client` maps them to external ids),
   ``topk_scores [K]``, ``live_sequences [1]`` (how many sequence states the model holds after this request), and
   the graph's ``scores [n_items]`` (``--scores``) and ``user_vector`` (``--user-vector``) when it has them.
   This module imports only the standard library at top level (numpy / onnxruntime / triton_python_backend_utils are
   imported inside the stub), so it also runs as a script from the server virtualenv.

2. **Launcher** for the ``tritonserver`` binary bundled in ``nvidia-pytriton`` (2.51, python backend only), run with
   the server virtualenv made by ``export/triton_server_env.sh`` (numpy < 2 lives there only)::

       .venv-triton/bin/python export/triton_server.py --repo REPO [--http-port 8000] [--grpc-port 8001]

   It lays out a backend directory with the python stub of the running interpreter, sets ``LD_LIBRARY_PATH`` (the
   server's own libs + this Python's ``libpython``) and ``PATH`` (the venv first, so the stub imports the venv's
   numpy 1.x / onnxruntime), listens on 127.0.0.1 only, forwards SIGTERM/SIGINT to ``tritonserver`` and waits for
   it to exit. From the main environment (tests, bench) use :func:`start_server` which runs that command as a
   subprocess and waits until the server is ready; ``stop()`` ends it cleanly. On Linux neither outlives the process
   that started it, even one killed outright (SIGKILL): each is sent SIGTERM when its parent ends
   (:func:`die_with_parent`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

STATE_SPEC_FILE = "state_spec.json"
GRAPH_FILE = "model.onnx"
DEFAULT_IDLE_S = 60.0
#: the largest timestamp taken as Unix seconds (1e11 s: the year ~5000); beyond it they are milliseconds or
#: nanoseconds since the epoch. :data:`export.timestamps.MAX_SECONDS`, copied: this file runs on its own as model.py
MAX_SECONDS = 1e11


# ==================================================================================== the python-backend model
class _Fatal(Exception):
    pass


class TritonPythonModel:
    """Stateful step model for Triton's python backend (see the module docstring)."""

    def initialize(self, args):
        import numpy as np
        import onnxruntime as ort

        self.np = np
        cfg = json.loads(args["model_config"])
        self.name = cfg.get("name", "zoo")
        here = pathlib.Path(args["model_repository"]) / str(args["model_version"])
        params = {k: v.get("string_value", "") for k, v in (cfg.get("parameters") or {}).items()}
        spec = json.loads((here / STATE_SPEC_FILE).read_text(encoding="utf-8"))
        self.spec = spec
        self.n_items = int(spec["n_items"])
        self.k = int(spec["topk"])
        self.states = [(s["name"], tuple(int(d) for d in s["shape"][1:]), s.get("dtype", "float32"),
                        float(s.get("init", 0.0))) for s in spec.get("state", [])]
        self.window = spec.get("kind") == "window"
        seq = cfg.get("sequence_batching") or {}
        if self.window and seq:
            raise _Fatal(f"{here / STATE_SPEC_FILE} describes a window graph: serve it with dynamic batching "
                         "(stateless), not with the sequence batcher")
        if not self.window and not self.states:
            raise _Fatal(f"{here / STATE_SPEC_FILE} lists no state tensors for a {spec.get('kind')!r} graph")
        self.state_out = [s.get("output", s["name"] + "_out") for s in spec.get("state", [])]
        self.uses_timestamps = bool(spec.get("uses_timestamps", False))
        #: a --time-input gaps graph: float32 time_gaps in, last_ts kept by the caller (not by this model)
        self.gaps = spec.get("time_input") == "gaps"
        self.time_name = "time_gaps" if self.gaps else "timestamps"
        self.max_len = int(spec.get("max_seq_length") or 0)
        self.padding_side = spec.get("padding_side", "right")
        self.explicit = not seq            # dynamic batching: the state travels with each request (client-side store)
        # states Triton's sequence batcher hands over (its `state` block): the initial state of each sequence
        self.triton_states = [st.get("input_name") for st in (seq.get("state") or [])]
        if self.triton_states and sorted(self.triton_states) != sorted(n for n, *_ in self.states):
            raise _Fatal(f"the config's sequence_batching states {self.triton_states} are not the graph's state "
                         f"tensors {[n for n, *_ in self.states]}")
        self.i_last_ts = next((j for j, (n, *_) in enumerate(self.states) if n == "last_ts"), None)
        idle_us = int(seq.get("max_sequence_idle_microseconds") or 0)
        self.idle_s = idle_us / 1e6 if idle_us > 0 else DEFAULT_IDLE_S
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(params.get("ort_intra_op_threads") or 1)
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(here / spec.get("graph", GRAPH_FILE)), so,
                                         providers=["CPUExecutionProvider"])
        self.out_names = [o.name for o in self.sess.get_outputs()]
        #: outputs served beside topk_*: all scores (--scores) and the query vector (--user-vector), when exported
        self.extra_out = [n for n in ("scores", "user_vector") if n in self.out_names]
        #: a graph exported with --candidates: each request may send its rows' candidate items (optional input)
        self.candidates = bool(spec.get("candidates"))
        self.store = {}            # corrid -> (tuple of per-sequence state arrays, last-touch monotonic time)
        self._last_sweep = time.monotonic()

    # ------------------------------------------------------------------------------------------ helpers
    def _fresh(self):
        np = self.np
        return tuple(np.full(shape, init, dtype=np.dtype(dt)) for _, shape, dt, init in self.states)

    def _sweep(self, now):
        if now - self._last_sweep < min(1.0, self.idle_s / 4):
            return
        self._last_sweep = now
        dead = [c for c, (_, t) in self.store.items() if now - t > self.idle_s]
        for c in dead:
            del self.store[c]

    def _parse(self, pb, r):
        """-> dict(corrid, start, end, ids [T], ts [T] | None) or raises ValueError with the client-facing message."""
        np = self.np

        def get(name, required=True):
            return self._get(pb, r, name, required)

        corrid, start, end = self._controls(pb, r)
        ids = get("item_ids")
        if ids.dtype != np.int64:
            raise ValueError(f"item_ids must be INT64, got {ids.dtype}")
        ids = ids.reshape(-1)
        if ids.size == 0 and not end:
            raise ValueError("item_ids is empty: send at least one new item (an empty request is only allowed "
                             "with sequence_end to close the sequence)")
        bad = ids[(ids < 1) | (ids >= self.n_items)]
        if bad.size:
            raise ValueError(f"item index {int(bad[0])} is out of range 1..{self.n_items - 1} (0 is padding; "
                             f"map external ids with the model's item vocabulary)")
        ts = None
        if self.uses_timestamps:
            ts = self._check_gaps(get("time_gaps"), ids.size) if self.gaps else \
                self._check_ts(get("timestamps"), ids.size)
        cands = self._candidates(get("candidates", required=False), 1)[0] if self.candidates else None
        init = None
        if start and self.triton_states and ids.size:
            init = tuple(self._initial_from_triton(get(name), name, shape, dt, value)
                         for name, shape, dt, value in self.states)
        return {"corrid": corrid, "start": start, "end": end, "ids": ids, "ts": ts, "init": init, "cands": cands}

    @staticmethod
    def _get(pb, r, name, required=True):
        """Input ``name`` of request ``r`` as numpy (None when absent and not ``required``; ValueError when absent)."""
        t = pb.get_input_tensor_by_name(r, name)
        if t is None:
            if required:
                raise ValueError(f"request has no input {name!r}")
            return None
        return t.as_numpy()

    def _controls(self, pb, r):
        """``(corrid, start, end)`` of a sequence request (the sequence batcher's control inputs)."""
        corr = self._get(pb, r, "CORRID").reshape(-1)
        corrid = corr[0].item() if corr.size else 0
        if isinstance(corrid, bytes):
            corrid = corrid.decode("utf-8", "replace")
        return corrid, bool(self._get(pb, r, "START").reshape(-1)[0]), bool(self._get(pb, r, "END").reshape(-1)[0])

    def _candidates(self, arr, B):
        """The optional ``candidates`` input of a request: ``[B, C]`` int64 internal indices (0 = padding; a row
        without a real candidate, or no input at all, is not restricted), checked; ValueError otherwise."""
        np = self.np
        if arr is None:
            return [np.zeros(0, np.int64)] * B
        if arr.dtype != np.int64:
            raise ValueError(f"candidates must be INT64, got {arr.dtype}")
        if arr.ndim != 2 or arr.shape[0] != B:
            raise ValueError(f"candidates must be [{B}, C] (one row per item_ids row), got shape {list(arr.shape)}")
        bad = arr[(arr < 0) | (arr >= self.n_items)]
        if bad.size:
            raise ValueError(f"candidate index {int(bad[0])} is out of range 0..{self.n_items - 1} (0 is padding; "
                             "map external ids with the model's item vocabulary)")
        return list(arr)

    def _stack_candidates(self, rows):
        """Candidate rows of different lengths -> ``[B, C]`` 0-padded (0 is padding: it restricts nothing)."""
        np = self.np
        out = np.zeros((len(rows), max(len(r) for r in rows)), np.int64)
        for i, r in enumerate(rows):
            out[i, :len(r)] = r
        return out

    def _times(self, arr, n, name, dtype, unit, range_note, of=""):
        """``arr`` as ``[n]`` values of ``dtype`` (``unit``: what they count), finite and non-negative
        (``range_note``: the message's note on what is allowed); ValueError naming ``name`` otherwise."""
        np = self.np
        if arr.dtype != np.dtype(dtype):
            raise ValueError(f"{name} must be {'FP64' if dtype == 'float64' else 'FP32'} ({dtype} {unit}), got "
                             f"{arr.dtype}")
        arr = arr.reshape(-1)
        if arr.size != n:
            raise ValueError(f"{name} has {arr.size} values for {of}{n} items")
        if not np.isfinite(arr).all() or (arr < 0).any():
            raise ValueError(f"{name} must be finite and non-negative ({range_note})")
        return arr

    def _check_ts(self, ts, n, real=None, where=""):
        """float64 ``[n]`` Unix seconds: finite, non-negative, at most :data:`MAX_SECONDS` and non-decreasing along
        the events, as export.runtime checks them; for a padded window, along its ``real`` items (``[n]`` 0/1;
        ``where`` names the row)."""
        np = self.np
        window = real is not None
        ts = self._times(ts, n, "timestamps", "float64", "Unix seconds",
                         "Unix seconds; 0 on padding" if window else "Unix seconds", "a window of " if window else "")
        if ts.size and ts.max() > MAX_SECONDS:             # as export.timestamps.seconds refuses them (a raw client)
            raise ValueError(f"timestamps reach {float(ts.max()):.6g} s, beyond {MAX_SECONDS:.0e} s (the year "
                             f"~5000): they look like milliseconds or nanoseconds since the epoch; pass Unix "
                             f"seconds{where}")
        dec = ts[1:] < ts[:-1]
        if window:
            dec &= (real[1:] & real[:-1]).astype(bool)     # along the real items (padding aside)
        if dec.any():
            i = int(np.argmax(dec))
            raise ValueError(f"timestamps decrease ({ts[i + 1].item()!r} after {ts[i].item()!r}); "
                             + (f"a window's events must be in time order{where}" if window else
                                "events must be in time order"))
        return ts

    def _check_gaps(self, gaps, n):
        """float32 ``[n]`` seconds since each event's predecessor (``time_gaps`` of a gaps-form graph): finite and
        non-negative (the time order itself is the caller's to check: it keeps ``last_ts``)."""
        return self._times(gaps, n, "time_gaps", "float32", "seconds since the previous event",
                           "seconds since the previous event, 0 for the sequence's first")

    def _check_after_last(self, ts, state):
        """The first new timestamp is not before the state's ``last_ts`` (when the state has seen an event); a
        ``last_ts`` that is neither ``>= 0`` nor -1 (no event yet) is refused, as :mod:`export.runtime` does."""
        if ts is None or self.i_last_ts is None or ts.size == 0:
            return
        last = float(state[self.i_last_ts].reshape(-1)[0])
        if last < 0 and last != -1:
            raise ValueError(f"state last_ts is {last!r}: it must be the last event's timestamp (>= 0) or -1 (no "
                             "event yet)")
        if last >= 0 and ts[0] < last:
            raise ValueError(f"timestamps go back in time relative to the sequence's last event ({ts[0].item()!r} < "
                             f"last_ts {last!r})")

    def _initial_from_triton(self, arr, name, shape, dt, value):
        """The initial state Triton handed over for a starting sequence, checked against state_spec.json."""
        np = self.np
        if arr.dtype != np.dtype(dt):
            raise ValueError(f"Triton handed over the initial state {name!r} as {arr.dtype}, the graph takes {dt}")
        arr = arr.reshape(shape)
        if not (arr == value).all():
            bad = arr.reshape(-1)[np.argmax(arr.reshape(-1) != value)]
            raise ValueError(f"the initial state {name!r} Triton handed over (sequence_batching.state initial_state) "
                             f"holds {bad.item()!r}, but state_spec.json says {value!r}: the repository's "
                             "initial_state does not match the graph (regenerate it with python -m export.triton)")
        return np.ascontiguousarray(arr)

    # ------------------------------------------------------------------------------------------ execute
    def execute(self, requests):
        import triton_python_backend_utils as pb

        if self.window:
            return self._execute_window(pb, requests)
        if self.explicit:
            return self._execute_explicit(pb, requests)
        now = time.monotonic()
        self._sweep(now)
        responses = [None] * len(requests)
        work = []                              # (request index, parsed; or its controls and the parse error)
        for i, r in enumerate(requests):
            try:
                corrid, start, end = self._controls(pb, r)
            except ValueError as e:                          # no sequence to name: nothing else to do
                self._fail(pb, responses, i, e, r)
                continue
            if corrid in self.store:        # Triton restarts a sequence's idle timer on every request, refused or not
                self.store[corrid] = (self.store[corrid][0], now)
            try:
                work.append((i, self._parse(pb, r)))
            except ValueError as e:          # answered in its turn: earlier requests of the sequence run first
                work.append((i, {"corrid": corrid, "start": start, "end": end, "error": e}))
        # one ORT call per group of equal T with distinct correlation ids (a sequence appears once per call, in order);
        # a continuation is checked against its sequence's state when its turn comes (an earlier request of the batch
        # may start or end the sequence), and a request refused while parsing drops its sequence's state (a refused
        # START or END, see _fail) in its turn too, after the sequence's earlier requests of the batch
        pending = work
        while pending:
            groups, rest, seen = {}, [], set()
            for i, p in pending:
                if p["corrid"] in seen:
                    rest.append((i, p))
                    continue
                seen.add(p["corrid"])
                if "error" in p:
                    self._fail(pb, responses, i, p["error"], parsed=p)
                    continue
                try:
                    if not p["start"] and p["corrid"] not in self.store:
                        raise ValueError(f"sequence {p['corrid']!r} has no state on the server (it was never started, "
                                         f"was ended, or stayed idle longer than {self.idle_s:g} s); "
                                         "restart it with sequence_start=True and its history")
                    if not p["start"]:
                        self._check_after_last(p["ts"], self.store[p["corrid"]][0])
                except ValueError as e:
                    self._fail(pb, responses, i, e, parsed=p)
                    continue
                groups.setdefault(int(p["ids"].size), []).append((i, p))
            for T, members in groups.items():
                self._run_group(pb, T, members, responses, now)
            pending = rest
        return responses

    def _fail(self, pb, responses, i, error, request=None, parsed=None):
        """Request ``i`` answers ``error``. A failed START or END still drops the sequence's stored state: Triton
        counts the sequence as (re)started or ended all the same, and its next request must not continue the old
        history (a refused restart was followed by a continuation of the old one). :meth:`execute` calls it in the
        request's turn among its sequence's requests of the batch (a refused restart after a valid START of the same
        batch drops the state that START made; a continuation before the refused request still runs first)."""
        try:
            corrid, start, end = ((parsed["corrid"], parsed["start"], parsed["end"]) if parsed is not None
                                  else self._controls(pb, request))
        except ValueError:
            corrid, start, end = None, False, False
        if start or end:
            self.store.pop(corrid, None)
        responses[i] = pb.InferenceResponse(output_tensors=[], error=pb.TritonError(f"{self.name}: {error}"))

    def _batch_input(self, pb, r, name, dtype, B=None):
        """Input ``name`` of request ``r`` as ``[batch, ...]`` (the first axis is the batch: ``max_batch_size`` > 0),
        checked to hold ``B`` rows of ``dtype`` when given; ValueError naming the problem otherwise."""
        np = self.np
        a = self._get(pb, r, name)
        if a.ndim < 2 or a.shape[0] == 0:
            raise ValueError(f"{name} must be [batch, ...] with at least one row, got shape {list(a.shape)}")
        if a.dtype != np.dtype(dtype):
            raise ValueError(f"{name} must be {np.dtype(dtype).name}, got {a.dtype}")
        if B is not None and a.shape[0] != B:
            raise ValueError(f"{name} has {a.shape[0]} rows, item_ids {B}: one row per user")
        return a

    def _check_rows_items(self, all_ids, lo, note):
        """Every item index of the rows ``all_ids [B, ...]`` is in ``lo .. n_items-1``; ValueError naming the first
        one outside it (``note``: what the range means) and, for ``B > 1``, its row."""
        np = self.np
        B = all_ids.shape[0]
        rows, cols = np.nonzero(((all_ids < lo) | (all_ids >= self.n_items)).reshape(B, -1))
        if rows.size:
            b = int(rows[0])
            raise ValueError(f"item index {int(all_ids.reshape(B, -1)[b, cols[0]])} is out of range "
                             f"{lo}..{self.n_items - 1} {note}" + (f" (row {b})" if B > 1 else ""))

    def _execute_explicit(self, pb, requests):
        """Explicit state: ``item_ids [B, T]`` + the state tensors ``[B, ...]`` in (``B`` users a request, each row
        its own), ``topk_*`` + ``<state>_out`` out, row for row; nothing kept."""
        np = self.np
        responses = [None] * len(requests)
        groups = {}
        for i, r in enumerate(requests):
            try:
                all_ids = self._batch_input(pb, r, "item_ids", np.int64)
                B, T = all_ids.shape[0], int(all_ids[0].size)
                if T == 0:
                    raise ValueError("item_ids is empty: send at least one new item")
                self._check_rows_items(all_ids, 1, "(0 is padding; map external ids with the model's item "
                                       "vocabulary)")
                all_ts = self._batch_input(pb, r, self.time_name, np.float32 if self.gaps else np.float64, B) \
                    if self.uses_timestamps else None
                all_cands = self._request_candidates(pb, r, B)
                all_states = {}
                for name, shape, dt, _ in self.states:
                    st = self._batch_input(pb, r, name, dt, B)
                    if st[0].size != int(np.prod(shape)):
                        raise ValueError(f"state {name!r} rows hold {st[0].size} values, the graph's "
                                         f"{int(np.prod(shape))} (shape {list(shape)})")
                    if not np.isfinite(st).all():
                        raise ValueError(f"state {name!r} holds NaN/inf")
                    all_states[name] = st.reshape((B, *shape))
                rows = []
                for b in range(B):
                    feeds = {"item_ids": all_ids[b].reshape(-1)}
                    for name, *_ in self.states:
                        feeds[name] = all_states[name][b]
                    if all_cands is not None:
                        feeds["candidates"] = all_cands[b]
                    try:
                        if self.gaps:
                            feeds["time_gaps"] = self._check_gaps(all_ts[b], T)
                        elif self.uses_timestamps:
                            feeds["timestamps"] = self._check_ts(all_ts[b], T)
                        self._check_after_last(feeds.get("timestamps"), [feeds[n] for n, *_ in self.states])
                    except ValueError as e:
                        raise ValueError(f"{e} (row {b})" if B > 1 else str(e)) from None
                    rows.append(feeds)
                groups.setdefault(T, []).append((i, rows))
            except ValueError as e:
                responses[i] = pb.InferenceResponse(output_tensors=[], error=pb.TritonError(f"{self.name}: {e}"))
        return self._run_groups(pb, groups, responses, ["topk_ids", "topk_scores"] + self.extra_out + self.state_out)

    def _execute_window(self, pb, requests):
        """Window graphs: ``item_ids [B, L]`` (``B`` windows a request, each 0-padded on the model's side,
        ``L <= max_seq_length``) + float64 ``timestamps [B, L]`` for time-aware models -> ``topk_*`` row for row; one
        ORT call per distinct ``L``; nothing kept."""
        np = self.np
        responses = [None] * len(requests)
        groups = {}
        for i, r in enumerate(requests):
            try:
                all_ids = self._batch_input(pb, r, "item_ids", np.int64)
                B, L = all_ids.shape[0], int(all_ids[0].size)
                if L == 0:
                    raise ValueError("item_ids is empty: send the history window")
                if self.max_len and L > self.max_len:
                    raise ValueError(f"window length {L} exceeds max_seq_length {self.max_len}")
                self._check_rows_items(all_ids, 0, "(0 = padding)")
                all_ts = self._batch_input(pb, r, "timestamps", np.float64, B) if self.uses_timestamps else None
                all_cands = self._request_candidates(pb, r, B)
                rows = []
                for b in range(B):
                    ids = all_ids[b].reshape(-1)
                    where = f" (row {b})" if B > 1 else ""
                    real = (ids != 0).astype(np.int8)
                    if not real.any():
                        raise ValueError(f"the window has no real item{where}")
                    if (real[1:] > real[:-1]).any() if self.padding_side == "right" else (real[1:] < real[:-1]).any():
                        raise ValueError(f"the window is not {self.padding_side}-padded (padding must be contiguous "
                                         f"on the {self.padding_side}){where}")
                    feeds = {"item_ids": ids}
                    if self.uses_timestamps:
                        feeds["timestamps"] = self._check_ts(all_ts[b], L, real, where)
                    if all_cands is not None:
                        feeds["candidates"] = all_cands[b]
                    rows.append(feeds)
                groups.setdefault(L, []).append((i, rows))
            except ValueError as e:
                responses[i] = pb.InferenceResponse(output_tensors=[], error=pb.TritonError(f"{self.name}: {e}"))
        return self._run_groups(pb, groups, responses, ["topk_ids", "topk_scores"] + self.extra_out)

    def _request_candidates(self, pb, r, B):
        """A batched request's candidate rows (``[B, C]``; None for a graph without the input)."""
        if not self.candidates:
            return None
        return self._candidates(self._get(pb, r, "candidates", required=False), B)

    def _run_groups(self, pb, groups, responses, out_names):
        """One ORT call per group of same-shape requests (``{key: [(request index, [feeds of each row])]}``, every
        row on the batch axis); fills ``responses`` with each request's rows of ``out_names`` (or the ORT error for
        every request of the group)."""
        np = self.np
        for members in groups.values():
            rows = [f for _, fs in members for f in fs]
            feeds = {k: (self._stack_candidates([f[k] for f in rows]) if k == "candidates" else
                         np.stack([f[k] for f in rows])) for k in rows[0]}
            try:
                outs = dict(zip(self.out_names, self.sess.run(None, feeds), strict=True))
            except Exception as e:
                for i, _ in members:
                    responses[i] = pb.InferenceResponse(output_tensors=[], error=pb.TritonError(
                        f"{self.name}: onnxruntime failed: {e}"))
                continue
            at = 0
            for i, fs in members:
                responses[i] = pb.InferenceResponse(output_tensors=[
                    pb.Tensor(n, np.ascontiguousarray(outs[n][at:at + len(fs)])) for n in out_names])
                at += len(fs)
        return responses

    def _run_group(self, pb, T, members, responses, now):
        np = self.np
        if T == 0:                                          # END without items: just free the state
            for i, p in members:
                self.store.pop(p["corrid"], None)
                responses[i] = self._response(pb, np.zeros(self.k, np.int64),
                                              np.full(self.k, -np.inf, np.float32))
            return
        states = []
        for _, p in members:
            if p["start"]:
                states.append(p["init"] if p["init"] is not None else self._fresh())
            else:
                states.append(self.store[p["corrid"]][0])
        feeds = {"item_ids": np.stack([p["ids"] for _, p in members])}
        if self.uses_timestamps:
            feeds[self.time_name] = np.stack([p["ts"] for _, p in members])
        for j, (name, _, _, _) in enumerate(self.states):
            feeds[name] = np.stack([s[j] for s in states])
        if self.candidates:
            feeds["candidates"] = self._stack_candidates([p["cands"] for _, p in members])
        try:
            outs = dict(zip(self.out_names, self.sess.run(None, feeds), strict=True))
        except Exception as e:                              # keep serving; report to every request of the group
            for i, p in members:
                self._fail(pb, responses, i, f"onnxruntime failed: {e}", parsed=p)
            return
        for row, (i, p) in enumerate(members):
            if p["end"]:
                self.store.pop(p["corrid"], None)
            else:
                self.store[p["corrid"]] = (tuple(np.ascontiguousarray(outs[o][row]) for o in self.state_out), now)
            responses[i] = self._response(pb, outs["topk_ids"][row], outs["topk_scores"][row],
                                          {n: outs[n][row] for n in self.extra_out})

    def _response(self, pb, ids, scores, extra=None):
        np = self.np
        return pb.InferenceResponse(output_tensors=[
            pb.Tensor("topk_ids", np.ascontiguousarray(ids, dtype=np.int64).reshape(1, -1)),
            pb.Tensor("topk_scores", np.ascontiguousarray(scores, dtype=np.float32).reshape(1, -1)),
            pb.Tensor("live_sequences", np.array([[len(self.store)]], dtype=np.int64)),
            *[pb.Tensor(n, np.ascontiguousarray(v, dtype=np.float32).reshape(1, -1)) for n, v in (extra or {}).items()],
        ])

    def finalize(self):
        self.store.clear()


# ================================================================================================ the launcher
#: ``prctl`` option (``<linux/prctl.h>``): the signal a process is sent when the thread that started it ends
PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM):
    """The ``preexec_fn`` of a process that must not outlive the one that starts it -- the launcher that
    :func:`start_server` starts, the ``tritonserver`` that :func:`serve` starts: on Linux the child asks the kernel
    (``prctl(PR_SET_PDEATHSIG, sig)``) for ``sig`` when its parent ends. A caller or launcher killed outright
    (SIGKILL, the OOM killer, a crash) can stop nothing, and the launcher -- in a session of its own, which no group
    signal reaches -- and ``tritonserver`` ran on, holding their ports, until someone killed them. SIGTERM by default:
    the usual stop of both (the launcher forwards it to ``tritonserver``, waits for it and removes its workspace;
    ``tritonserver`` unloads its models and ends their python stubs within ``--exit-timeout-secs``). ``sig`` is set
    to its default action in the child first (an inherited ignore or Python handler would swallow it before
    ``exec``), and a parent that died before the ``prctl`` -- the child already adopted, its ``getppid()`` no longer
    the starter -- ends the child there (status 128 + ``sig``) instead of letting it run on unwatched.

    ``bench/benchutil.py``'s ``die_with_parent`` (SIGKILL by default there), copied: export/ does not import bench/,
    and this file also runs on its own in the server's virtualenv (standard library only). Only ``ctypes`` calls and
    ``os.getppid`` run between ``fork`` and ``exec`` (libc and its functions are looked up here, in the parent). Linux
    sends the signal when the *thread* that started the child ends, not the whole process: start the server from a
    thread that outlives it (the main thread). Returns None elsewhere (macOS, the BSDs have no such request)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    prctl, c_signal = libc.prctl, libc.signal
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    c_signal.argtypes, c_signal.restype = [ctypes.c_int, ctypes.c_void_p], ctypes.c_void_p
    parent, sig = os.getpid(), int(sig)

    def preexec() -> None:
        if sig != signal.SIGKILL:                # SIG_DFL (0): an inherited handler would not end the child
            c_signal(sig, None)
        if prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
        if os.getppid() != parent:               # the starter died before the prctl: no signal will come
            os._exit(128 + sig)

    return preexec


@contextlib.contextmanager
def signals_deferred(signals=(signal.SIGINT, signal.SIGTERM)):
    """Hold back ``signals`` for the block: one that comes meanwhile is noted by a handler that raises nothing, and
    raised again (``signal.raise_signal``) under the handlers put back as the block ends -- so it raises (or, under
    its default action, kills) right after the block, never inside. Handlers, not a signal mask: a process-directed
    signal blocked in this thread goes to another thread of the process (a library's worker thread), whose C handler
    has Python raise in this thread at its next instruction wherever it is -- inside a fork hook too, where the
    exception is printed and dropped. Outside the main thread (no handler can be set there), or where a handler was
    not set from Python, the block runs as is."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in signals}
    if any(h is None for h in previous.values()):
        yield
        return
    came: list[int] = []
    for s in signals:
        signal.signal(s, lambda signum, frame: came.append(signum))
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for s in dict.fromkeys(came):
            signal.raise_signal(s)


def _spawn(args: list[str], sig: int = signal.SIGTERM, **kwargs) -> subprocess.Popen:
    """``subprocess.Popen(args, **kwargs)`` for a child that must not outlive this process (:func:`die_with_parent`
    ``(sig)``). A ``preexec_fn`` makes Python run its fork hooks (``logging``'s among them) around the fork, where an
    exception -- a caller's Ctrl-C, a SIGTERM handler that raises -- is printed and dropped, and the caller ran on: so
    SIGINT and SIGTERM are held back while the child is started (:func:`signals_deferred`) and raised once ``Popen``
    has returned, the child (never handed back) stopped and reaped first: SIGTERM, SIGKILL after 10 s. (A signal mask
    was not enough: a signal blocked in this thread went to another thread of the process, and Python raised it
    inside the fork hook all the same.)"""
    preexec = die_with_parent(sig)
    if preexec is None:
        return subprocess.Popen(args, **kwargs)
    proc = None
    try:
        with signals_deferred():
            proc = subprocess.Popen(args, preexec_fn=preexec, **kwargs)
    except BaseException:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    return proc


def _pytriton_paths():
    from pytriton.utils.distribution import (get_libs_path, get_root_module_path,  # only in the server venv
                                             get_stub_path)

    root = pathlib.Path(get_root_module_path()) / "tritonserver"
    stub = pathlib.Path(get_stub_path(f"{sys.version_info[0]}.{sys.version_info[1]}"))
    return root, pathlib.Path(get_libs_path()), stub


def _prepare_workspace(ws: pathlib.Path) -> tuple[pathlib.Path, dict]:
    """Backend dir with the stub for this Python + the environment tritonserver needs. Returns (binary, env)."""
    import sysconfig

    root, libs, stub = _pytriton_paths()
    backends = ws / "backends"
    shutil.copytree(root / "backends", backends)
    shutil.copy(stub, backends / "python" / "triton_python_backend_stub")
    env = os.environ.copy()
    pylib = sysconfig.get_config_var("LIBDIR") or ""
    ld = [str(libs)] + ([pylib] if pylib else []) + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else [])
    env["LD_LIBRARY_PATH"] = ":".join(ld)
    env["PATH"] = f"{pathlib.Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    env.setdefault("OMP_NUM_THREADS", "1")
    return root / "bin" / "tritonserver", env


def serve(repo: str, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int | None = None,
          log_verbose: int = 0, exit_timeout_s: int = 10) -> int:
    """Run tritonserver on ``repo`` (127.0.0.1 only) until SIGTERM/SIGINT; returns its exit status (1, a failed run in
    the commands' shared table :data:`export.fsutil.EXIT_CODES`, when ``repo`` is not a folder: nothing is started).
    On Linux tritonserver is sent SIGTERM when this launcher ends, a launcher killed outright (SIGKILL) included
    (:func:`die_with_parent`): it stops instead of serving on, unwatched."""
    if not os.path.isdir(repo):
        print(f"error: --repo {repo}: no such folder (a model repository written by python -m export.triton "
              "--backend python)", file=sys.stderr)
        return 1
    repo = os.path.abspath(repo)
    signals, proc = [], None

    def forward(signum, _frame):
        """SIGTERM/SIGINT: passed on to tritonserver, or (before it runs) it is not started."""
        signals.append(signum)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)        # from the start: a stop while the workspace is laid out is kept
    signal.signal(signal.SIGINT, forward)
    ws = pathlib.Path(tempfile.mkdtemp(prefix="zoo-tritonserver-"))
    try:
        binary, env = _prepare_workspace(ws)
        cmd = [str(binary), f"--model-repository={repo}", f"--backend-directory={ws / 'backends'}",
               f"--cache-directory={binary.parent.parent / 'caches'}",
               "--http-address=127.0.0.1", f"--http-port={http_port}",
               "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
               f"--allow-metrics={'true' if metrics_port else 'false'}", "--allow-gpu-metrics=false",
               f"--exit-timeout-secs={exit_timeout_s}", "--strict-readiness=true", "--exit-on-error=true",
               f"--log-verbose={log_verbose}"]
        if metrics_port:
            cmd += ["--metrics-address=127.0.0.1", f"--metrics-port={metrics_port}"]
        if signals:
            return 128 + signals[0]
        print("+ " + " ".join(cmd), flush=True)
        proc = _spawn(cmd, env=env)             # ends with the launcher, even one killed outright (SIGKILL)
        if signals and proc.poll() is None:     # one that came while it was being started
            proc.send_signal(signal.SIGINT if signals[0] == signal.SIGINT else signal.SIGTERM)
        return proc.wait()
    finally:
        shutil.rmtree(ws, ignore_errors=True)


# ============================================================================ start/stop from the main environment
def default_venv() -> pathlib.Path:
    here = pathlib.Path(__file__).resolve().parent.parent
    return pathlib.Path(os.environ.get("ZOO_TRITON_VENV", here / ".venv-triton"))


def server_python(venv: str | os.PathLike | None = None) -> pathlib.Path:
    """The server venv's python, or raises RuntimeError saying how to create it."""
    py = pathlib.Path(venv or default_venv()) / "bin" / "python"
    if not py.exists():
        raise RuntimeError(f"no Triton server environment at {py.parent.parent}: run `bash export/triton_server_env.sh`"
                           " (creates a venv with nvidia-pytriton and numpy<2; ~1 min)")
    return py


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerHandle:
    """A running tritonserver started by :func:`start_server`; use as a context manager or call :meth:`stop`.

    ``own_log``: the log file is a temporary one :func:`start_server` made (the caller gave no ``log_path``), which
    :meth:`stop` removes."""

    def __init__(self, proc, http_port, grpc_port, log_path, own_log: bool = False):
        self.proc, self.http_port, self.grpc_port, self.log_path = proc, http_port, grpc_port, log_path
        self.own_log = own_log

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        try:
            return pathlib.Path(self.log_path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0, keep_log: bool = False) -> int:
        """SIGTERM the launcher (it stops tritonserver and waits for it); SIGKILL its process group on timeout, and
        what the group holds once the launcher is gone. Then remove the log file when it is :func:`start_server`'s own
        temporary one, unless ``keep_log``."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)    # the group this handle created (start_new_session)
                    self.proc.wait(10)
            # what the launcher's group still holds: a python backend stub whose tritonserver was stopped while it
            # loaded its model lives on (in this session's group: the group's id stays taken while it lives)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        finally:
            if self.own_log and not keep_log:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.log_path)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _ready(http_port: int, models: list[str]) -> bool:
    import urllib.request

    try:
        for path in ["/v2/health/ready"] + [f"/v2/models/{m}/ready" for m in models]:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}{path}", timeout=2) as r:
                if r.status != 200:
                    return False
        return True
    except Exception:
        return False


def start_server(repo: str | os.PathLike, venv: str | os.PathLike | None = None, http_port: int | None = None,
                 grpc_port: int | None = None, timeout: float = 180.0, log_path: str | None = None) -> ServerHandle:
    """Start tritonserver on ``repo`` from the server venv (loopback only) and wait until every model is ready.

    The server runs in a session of its own (a terminal's Ctrl-C reaches the caller only): an exception or an
    interruption (KeyboardInterrupt) while waiting stops it before it propagates. On Linux it is sent SIGTERM when
    the thread that called this ends -- a caller killed outright (SIGKILL, a crash), which can stop nothing, included
    (:func:`die_with_parent`; the launcher then stops tritonserver as :meth:`ServerHandle.stop` has it do): call this
    from a thread that outlives the server (the main thread). Without ``log_path`` the server's
    output goes to a temporary file that :meth:`ServerHandle.stop` removes; when the server fails to start, the file is
    kept and the error names it. Hidden folders of ``repo`` (a killed ``export.triton``'s staging folder) are no
    models to wait for.

    Raises RuntimeError with the server log's tail when it exits or is not ready within ``timeout`` seconds.
    """
    py = server_python(venv)
    http_port = http_port or free_port()
    grpc_port = grpc_port or free_port()
    models = sorted(d.name for d in pathlib.Path(repo).iterdir()
                    if not d.name.startswith(".") and (d / "config.pbtxt").exists())
    own_log = not log_path
    if own_log:
        fd, log_path = tempfile.mkstemp(prefix="zoo-tritonserver-", suffix=".log")
        log = os.fdopen(fd, "w", encoding="utf-8")
    else:
        log = open(log_path, "w", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    try:
        proc = _spawn([str(py), os.path.abspath(__file__), "--repo", str(repo), "--http-port", str(http_port),
                       "--grpc-port", str(grpc_port)], stdout=log, stderr=subprocess.STDOUT, env=env,
                      start_new_session=True)
    except BaseException:
        log.close()
        if own_log:
            os.unlink(log_path)
        raise
    log.close()
    h = ServerHandle(proc, http_port, grpc_port, log_path, own_log=own_log)
    failed = False                              # the server did not start: its log is kept for the error
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if proc.poll() is not None:
                failed = True
                raise RuntimeError(f"tritonserver exited with status {proc.returncode} while starting (full log: "
                                   f"{log_path}); log tail:\n" + h.log()[-4000:])
            if _ready(http_port, models):
                return h
            time.sleep(0.5)
        failed = True
        raise RuntimeError(f"tritonserver not ready after {timeout:.0f} s (full log: {log_path}); log tail:\n"
                           + h.log()[-4000:])
    except BaseException:                       # that, Ctrl-C or an error while waiting: no server left running
        h.stop(keep_log=failed)
        raise


#: the largest TCP port number
PORT_MAX = 65535


def _int_in(low: int, high: int | None = None, what: str = "an int"):
    """An argparse ``type=``: an int in ``low .. high`` (no upper bound when ``high`` is None), refused at parse
    (exit 2) in the words of :mod:`zoo.cli`'s types ("expected an int >= 1, got '0'") -- which this module cannot
    import: it runs on the standard library alone, as a script of the server's virtualenv."""
    import argparse

    bound = f">= {low}" if high is None else f"in {low}..{high}"

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {value!r}") from None
        if n < low or (high is not None and n > high):
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {value!r}")
        return n

    parse.__name__ = f"{what} {bound}"
    return parse


def build_parser():
    """The parser of ``python -m export.triton_server``: every number checked at parse (a usage error, exit 2, before
    pytriton is looked for): the HTTP and gRPC ports in ``1 .. 65535`` (the client must know the port, which 0 --
    "any free port" -- would leave to the server), the metrics port in ``0 .. 65535`` (0: no metrics endpoint, the
    default) and ``--log-verbose >= 0``."""
    import argparse

    try:                              # the console script export-triton-server names itself (command_prog)
        from export.fsutil import EXIT_CODES, command_prog
    except ImportError:               # run as a file of its own (the server's virtualenv): no package to import
        EXIT_CODES, command_prog = None, lambda module: f"python -m {module}"
    p = argparse.ArgumentParser(allow_abbrev=False, prog=command_prog("export.triton_server"),
                                description="Run the nvidia-pytriton tritonserver (python backend) on a model "
                                            "repository written by `python -m export.triton --backend python`.",
                                epilog=(EXIT_CODES and f"{EXIT_CODES}; once the server ran, its own exit status"))
    p.add_argument("--repo", required=True, help="Triton model repository")
    p.add_argument("--http-port", type=_int_in(1, PORT_MAX, "a port"), default=8000,
                   help=f"port of Triton's HTTP/REST endpoint, on 127.0.0.1: 1..{PORT_MAX} (default 8000)")
    p.add_argument("--grpc-port", type=_int_in(1, PORT_MAX, "a port"), default=8001,
                   help=f"port of Triton's gRPC endpoint, on 127.0.0.1: 1..{PORT_MAX} (default 8001)")
    p.add_argument("--metrics-port", type=_int_in(0, PORT_MAX, "a port"), default=0,
                   help=f"port of Triton's Prometheus metrics endpoint, on 127.0.0.1: 1..{PORT_MAX}, or 0 for no "
                        "metrics endpoint (default 0: metrics off)")
    p.add_argument("--log-verbose", type=_int_in(0), default=0,
                   help="tritonserver's --log-verbose level: 0 quiet (default), 1 and up more detail per request")
    return p


def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    ports = [(flag, n) for flag, n in (("--http-port", a.http_port), ("--grpc-port", a.grpc_port),
                                       ("--metrics-port", a.metrics_port)) if n]
    for i, (flag, n) in enumerate(ports):
        same = [f for f, m in ports[:i] if m == n]
        if same:
            p.error(f"{flag} {n} is also the port of {same[0]}: each endpoint needs a port of its own")
    try:
        from export.deps import require
    except ImportError:               # run as a file of its own (the server's virtualenv, which has pytriton)
        require = None
    if require is not None:
        require("pytriton", p.prog, cli=True)          # the command as typed: export-triton-server or python -m
    return serve(a.repo, a.http_port, a.grpc_port, a.metrics_port or None, a.log_verbose)


if __name__ == "__main__":
    try:
        from export.fsutil import run_cli
    except ImportError:               # run as a file of its own (the server's virtualenv): no package to import
        def run_cli(main):
            return main()

    sys.exit(run_cli(main))
