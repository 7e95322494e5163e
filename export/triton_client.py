"""Client helpers for the zoo's Triton models (tritonclient, HTTP or gRPC).

Stateful (sequence-batcher) models -- ``export.triton --state implicit`` (onnxruntime / tensorrt backends) and
``--backend python`` (the CPU server of :mod:`export.triton_server`)::

    rec = TritonRecommender("127.0.0.1:8001", "mamba4rec_step_python", protocol="grpc", vocab="repo/<model>/item_vocab.json")
    rec.prime("user-42", history)            # ONE request: sequence_start + the whole history -> top-k (*)
    rec.recommend("user-42", [new_item])     # each event: only the new item(s) -> top-k external ids
    rec.end("user-42")                       # sequence_end: the server frees the state (see end())

(*) A TensorRT engine takes at most ``max_seq_length`` new items a request (its optimisation profile): for a
``tensorrt`` model whose config has the ``max_seq_length`` parameter (:attr:`TritonRecommender.max_new_items`), a
longer history or event goes as consecutive requests of at most that many items, one sequence, with the same answer.

Sequence ids are Triton correlation ids: ints in ``1 .. 2**63-1`` are used as they are, strings are hashed to a
stable non-zero 63-bit int (:func:`sequence_id`). The first call for an id this client has not seen starts the sequence
(``sequence_start=True``) unless ``start=False`` is given; pass ``start=True`` to restart one. So a second client
(another worker, this process after a restart) sending an event of a sequence that is live on the server restarts it,
dropping its history without an error: route each user's events to one client, ``prime()`` the users a client takes
over, or pass ``start=False`` to continue a sequence another client started (refused, saying to prime it, when the
server holds none). Threads sharing a client (gRPC) may send events of one sequence at once: they take turns, each
from deciding START and reading the sequence's last timestamp until its answer.

Explicit-state models (``--state explicit``, dynamic batching) keep no per-user state on the server:
:class:`ExplicitStateRecommender` loads the user's state from a dict-like ``store`` (a dict, a Redis wrapper, ...),
sends it with the new items and stores the returned state -- the recipe for users who pause longer than a Triton
sequence slot lives (``max_sequence_idle_microseconds``). A user it has no state for starts from the model's initial
state: each tensor in its own dtype (from the model's metadata) filled with its initial value (the config's
``state_init`` parameter: 0, and -1.0 for TiM4Rec-causal's float64 ``last_ts``).
An event longer than a ``tensorrt`` model's cap (:attr:`ExplicitStateRecommender.max_new_items`, the same
``max_seq_length`` parameter) goes as consecutive requests of at most the cap, each carrying the previous one's
returned states; the final state is stored once, after the last (a failure part-way stores nothing).

Window models (models without an exact step, e.g. SASRec, TiM4Rec) are stateless: :class:`WindowRecommender` sends
the history's last ``max_seq_length`` items with each call.

Time-aware models (TiM4Rec, TiM4Rec-causal) take ``timestamps=`` (one per item, Unix seconds): they are sent as
float64 (``FP64``; float32 cannot hold epoch seconds) after a check that they are finite, non-negative and
non-decreasing, and not before the sequence's last event (for an explicit state, the stored ``last_ts``; for a
sequence this client continues, the last timestamp it sent). A ``--time-input gaps`` model (float32 ``time_gaps``,
no ``last_ts`` in the graph: what ``export.trt`` builds) takes the same ``timestamps=``: the client keeps ``last_ts``
-- :class:`TritonRecommender` per live sequence (so a sequence continues through the client that sent its previous
event), :class:`ExplicitStateRecommender` in the stored state -- and sends the gaps, computed in float64 as
``export.timestamps.time_gaps`` does, as float32.

Errors: unknown external ids raise :class:`zoo.vocab.UnknownItemError` before anything is sent (a ``KeyError``; the
class lives in ``export.ids``, so a ``vocab=`` path is read without importing ``zoo``); server-side rejections (bad item index, a continuation whose state
expired, malformed input) raise :class:`TritonRecommendError` with Triton's message. A request that gets no answer
(``timeout_s`` passed, a gRPC deadline, a lost connection) raises :class:`TritonRecommendError` too, but the server
usually applied it (or still will): an event is **not idempotent** -- resent, it is applied twice (the state then
holds the item twice). :class:`TritonRecommender` therefore marks such a sequence uncertain: its next event is
refused, naming why, until :meth:`TritonRecommender.prime` restarts it from the history, and
:meth:`TritonRecommender.end` still sends its END. :class:`ExplicitStateRecommender` and
:class:`WindowRecommender` keep nothing on the server (the explicit client stores the new states only once every call
has answered): their error says the call can be sent again.

A replaced model: every client pins the model version it read when it was created (``model_version=`` on each request
and config read: the highest READY version of the model's metadata; ``python -m export.triton`` writes each
regeneration as the next version, served alone), together with the vocabulary, ``n_items`` and state fingerprint
that go with it. Once the server serves another version, the client's calls raise :class:`ModelReplacedError`
("model 'm' was replaced on the server (version 1 -> 2): create a new client ...") and send or store nothing more:
create a new client (with the new ``item_vocab.json``). A ``vocab=`` of another size than the config's ``n_items``
parameter is refused at construction (ValueError naming both sizes).

Sequence slots: the sequence batcher (``oldest`` strategy) holds at most ``max_candidate_sequences`` live sequences
(``export.triton --max-candidate-sequences``, 1024 by default); the requests of a further sequence wait until a live
one ends or stays idle for ``max_sequence_idle_microseconds`` (``--idle-timeout-s``). ``end()`` frees a slot at once,
from any client (it always sends the END; a sequence the server does not hold is no error).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np

from . import state_store
from .ids import UnknownItemError
from .item_vocab import ItemVocab
from .timestamps import seconds, time_gaps
from .deps import require

#: the vocabulary's file name in a model's folder (``zoo.vocab.VOCAB_FILE``)
VOCAB_FILE = "item_vocab.json"

#: :data:`export.runtime.SEEN_SCORE` (not imported: that module needs onnxruntime): the score an ``--exclude-seen``
#: graph gives the items of the history, float32's lowest finite value
SEEN_SCORE = float(np.finfo(np.float32).min)


class TritonRecommendError(RuntimeError):
    """Triton answered a request with an error (the message is Triton's / the model's)."""


class ModelReplacedError(TritonRecommendError):
    """The model this client read at construction (its version, config, vocabulary, state fingerprint) was replaced
    on the server by another version (``python -m export.triton`` over the model folder writes the next version and
    the config serves the latest only): the client's requests, pinned to its version, are refused. Create a new
    client (with the repository's new ``item_vocab.json``); the states the old model wrote are stale for the new one.
    Attributes ``old`` / ``new``: the version read at construction, the one served now."""

    def __init__(self, message: str, old: str | None = None, new: str | None = None):
        super().__init__(message)
        self.old, self.new = old, new


def _latest_version(metadata: dict) -> str | None:
    """The highest version a model's metadata lists (Triton lists the versions that are READY), as a string; None
    when it lists none (a server or stand-in that does not say)."""
    vs = [str(v) for v in metadata.get("versions") or [] if str(v).isdigit()]
    return max(vs, key=int) if vs else None


def _answered_version(result) -> str | None:
    """The ``model_version`` an infer result says answered it (tritonclient's ``get_response()``: a dict over http,
    a ``ModelInferResponse`` over grpc); None when it does not say."""
    try:
        resp = result.get_response()
    except Exception:                       # a stand-in result, or one without a response body
        return None
    v = resp.get("model_version") if isinstance(resp, dict) else getattr(resp, "model_version", None)
    return str(v) if v not in (None, "") else None



def sequence_id(user_or_sequence_id: Any) -> int:
    """Correlation id for a user/sequence id: positive ints < 2**63 as is (0 is not allowed), strings hashed."""
    if isinstance(user_or_sequence_id, bool):
        raise TypeError("sequence id must be an int or a str, not a bool")
    if isinstance(user_or_sequence_id, (int, np.integer)):
        v = int(user_or_sequence_id)
        if not 1 <= v < 2 ** 63:
            raise ValueError(f"integer sequence ids must be in 1 .. 2**63-1 (0 means 'no sequence'; tritonclient "
                             f"sends them as int64), got {v}")
        return v
    if isinstance(user_or_sequence_id, str):
        v = int.from_bytes(hashlib.blake2b(user_or_sequence_id.encode(), digest_size=8).digest(), "little")
        return (v & (2 ** 63 - 1)) or 1
    raise TypeError(f"sequence id must be an int or a str, got {type(user_or_sequence_id).__name__}")


def _load_vocab(vocab):
    """``vocab=`` of the clients: None; a path (``item_vocab.json`` or its folder) -> :class:`export.item_vocab.
    ItemVocab` (``zoo.vocab.ItemVocab``, read without importing ``zoo``: torch, transformers); anything else (an
    ``ItemVocab``) as it is."""
    if vocab is None:
        return None
    if isinstance(vocab, (str, os.PathLike)):
        return ItemVocab.load(vocab)
    return vocab


def _module(protocol: str):
    if protocol not in ("grpc", "http"):
        raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
    return require(f"tritonclient.{protocol}", f"export.triton_client ({protocol})")


class _Base:
    def __init__(self, url: str, model_name: str, protocol: str = "grpc", vocab=None, n_items: int | None = None,
                 timeout_s: float = 30.0):
        self.protocol = protocol
        self._m = _module(protocol)
        from tritonclient.utils import InferenceServerException

        self._exc = InferenceServerException
        kw = {"network_timeout": timeout_s, "connection_timeout": timeout_s} if protocol == "http" else {}
        # gRPC has no client-wide timeout: each call gets it as a deadline (else a hung server blocks forever)
        self._rpc = {"client_timeout": timeout_s} if protocol == "grpc" else {}
        self.client = self._m.InferenceServerClient(url, **kw)
        self.model_name = model_name
        self.vocab = _load_vocab(vocab)
        self.timeout_s = timeout_s
        meta = self._metadata()
        #: the model version this client serves from (str; None when the server lists none): the highest READY one
        #: when it was created. Every request and config read is pinned to it, so that a model replaced on the
        #: server (a new version: :func:`export.triton.write_repository`) is refused (:class:`ModelReplacedError`)
        #: rather than served with what this client read of the old one (vocabulary, n_items, state fingerprint)
        self.model_version = _latest_version(meta)
        self.inputs = {i["name"]: i for i in meta["inputs"]}
        self.outputs = {o["name"]: o for o in meta["outputs"]}
        if "item_ids" not in self.inputs or "topk_ids" not in self.outputs:
            raise TritonRecommendError(f"model {model_name!r} has no item_ids input / topk_ids output: not a zoo model")
        self.k_max = int(self.outputs["topk_ids"]["shape"][-1])
        #: ``[vector_size]`` float32 query vector of the last event of the last call to finish, for a model exported
        #: with ``--user-vector`` (None otherwise): its inner products with ``python -m zoo.embed``'s item vectors are
        #: the raw scores. For one thread only: a call of another thread may replace it before this one reads it;
        #: with threads (or for every event's vector) pass ``return_vector(s)=True``, which returns the call's own
        self.last_user_vector: np.ndarray | None = None
        self.n_items = n_items or (self.vocab.n_items if self.vocab is not None else None)
        if self.vocab is not None:
            self._check_vocab_size()
        #: a ``--time-input gaps`` model: it takes float32 ``time_gaps`` and the client keeps ``last_ts``
        self.time_gaps = "time_gaps" in self.inputs
        self.uses_timestamps = "timestamps" in self.inputs or self.time_gaps
        #: the model takes ``candidates`` (``export.onnx --candidates``): recommendations among given items
        self.has_candidates = "candidates" in self.inputs

    def _candidates(self, lists: Sequence | None, rows: int = 1, where: Sequence[str] | None = None) -> list:
        """``[]``, or the ``candidates [B, C]`` input for one list of the caller's item ids per row (None or empty:
        the row is not restricted; ``lists=None``: ``rows`` rows, none restricted); every id checked like the
        events' (an unknown one sends nothing; ``where``: what each row is, for the messages). A model without the
        input refuses candidates."""
        return self._candidates_input(self._encode_candidates(lists, where), rows)

    def _encode_candidates(self, lists: Sequence | None, where: Sequence[str] | None = None) -> list | None:
        """Each list of the caller's item ids as internal indices (an empty array: the row is not restricted), every
        id checked (an error names the row as ``where[i]`` says, e.g. ``"event 2 (user 'u')"``; default ``"row i"``);
        None when no row is restricted. A model without the ``candidates`` input refuses candidates."""
        if lists is None or all(c is None or len(c) == 0 for c in lists):
            return None
        if not self.has_candidates:
            raise ValueError(f"model {self.model_name!r} has no candidates input: export it with python -m "
                             "export.onnx --candidates (or python -m export.triton --candidates)")
        rows = []
        for i, c in enumerate(lists):
            if c is None or len(c) == 0:
                rows.append(np.zeros(0, np.int64))
                continue
            of = f"candidates of {where[i] if where is not None else f'row {i}'}"
            if isinstance(c, (str, bytes)) or not hasattr(c, "__iter__"):
                raise TypeError(f"{of}: a sequence of item ids (or None), got {c!r}")
            ids = self._encode(c)[0]
            if self.n_items is not None:
                bad = ids[(ids < 1) | (ids >= self.n_items)]
                if bad.size:
                    raise ValueError(f"{of}: item index {int(bad[0])} out of range 1..{self.n_items - 1}")
            rows.append(ids)
        return rows

    def _candidates_input(self, encoded: list | None, rows: int) -> list:
        """``[]`` for a model without the input, else ``candidates [B, C]`` from :meth:`_encode_candidates`' rows
        (None: ``rows`` rows, none restricted), 0-padded."""
        if not self.has_candidates:
            return []
        if encoded is None:
            encoded = [np.zeros(0, np.int64)] * rows
        arr = np.zeros((len(encoded), max(1, max(len(r) for r in encoded))), np.int64)  # a row of 0s: unrestricted
        for i, r in enumerate(encoded):
            arr[i, :len(r)] = r
        return [self._input("candidates", arr, "INT64")]

    def _pick(self, top: np.ndarray, scores: np.ndarray, k: int) -> tuple[list, np.ndarray]:
        """The first ``k`` of a top-k row as (external ids, scores), without the empty slots (id 0, score ``-inf``)
        a ``--candidates`` model leaves when a row lists fewer items, nor the items of the history an
        ``--exclude-seen`` model ranks last (score :data:`SEEN_SCORE`) when fewer than ``k`` unseen items are left.
        The config does not say whether a model excludes the history; only such a model gives that score (float32's
        lowest finite value, which no real score reaches), so those slots are dropped whatever the model."""
        top, scores = np.asarray(top)[:k], np.asarray(scores)[:k]
        keep = (top > 0) & ~(scores <= np.float32(SEEN_SCORE))
        return self._decode(top[keep]), scores[keep].copy()

    def _check_vectors_wanted(self, wanted: bool, name: str) -> None:
        """A ValueError, before anything is sent, when ``wanted`` and the model has no ``user_vector`` output."""
        if wanted and "user_vector" not in self.outputs:
            raise ValueError(f"{name}=True: model {self.model_name!r} has no user_vector output; export it with "
                             "--user-vector (python -m export.onnx / export.triton)")

    def _outputs_for(self, names: Sequence[str]) -> list:
        """The outputs to request: ``names``, and ``user_vector`` when the model has it."""
        return [self._m.InferRequestedOutput(n) for n in [*names, *(["user_vector"] if "user_vector" in self.outputs
                                                                     else [])]]

    def _check_vocab_size(self) -> None:
        """Refuse (ValueError) a ``vocab=`` of another size than the model's ``n_items`` config parameter (when the
        config has one): its indices would name other items, or reach past the model's table."""
        raw = self._param("n_items")
        try:
            want = int(raw) if raw is not None else None
        except ValueError:
            want = None
        if want is not None and want != self.vocab.n_items:
            raise ValueError(
                f"vocab= holds {self.vocab.n_items - 1} item ids (n_items {self.vocab.n_items}), but model "
                f"{self.model_name!r} serves {want - 1} items (its config's n_items parameter: {want}): pass the "
                f"item_vocab.json of the model folder it is served from (was the model replaced on the server, or "
                "the vocabulary, without the other?)")

    def _replaced_hint(self) -> str:
        """What :class:`ModelReplacedError`'s message adds for this kind of client."""
        return "" if self.vocab is None else " with the model folder's new item_vocab.json"

    def _replaced(self, now: str | None = None) -> ModelReplacedError | None:
        """A :class:`ModelReplacedError` when the server now serves another version than :attr:`model_version`
        (``now``: the version that answered; else the highest READY one its metadata lists now), else None (no
        pinned version, or the server's metadata cannot be read: then the caller's own error stands)."""
        if self.model_version is None:
            return None
        if now is None:
            try:
                now = _latest_version(self._metadata())
            except (TritonRecommendError, self._exc, OSError):
                return None
        if now is None or now == self.model_version:
            return None
        return ModelReplacedError(
            f"model {self.model_name!r} was replaced on the server (version {self.model_version} -> {now}): create "
            f"a new client{self._replaced_hint()}", self.model_version, now)

    def _send(self, ins: list, outs: list, **kw):
        """``client.infer`` of this model, pinned to :attr:`model_version`. A request the server refuses because
        the pinned version is gone (the model was replaced), or an answer from another version, raises
        :class:`ModelReplacedError`; any other error is tritonclient's, for the caller to translate."""
        if self.model_version is not None:
            kw["model_version"] = self.model_version
        try:
            r = self.client.infer(self.model_name, ins, outputs=outs, **kw, **self._rpc)
        except (self._exc, OSError) as e:
            if not _outcome_unknown(e):
                replaced = self._replaced()
                if replaced is not None:
                    raise replaced from None
            raise
        got = _answered_version(r)
        if self.model_version is not None and got is not None and got != self.model_version:
            raise self._replaced(got)
        return r

    def _metadata(self) -> dict:
        try:
            if self.protocol == "grpc":
                from google.protobuf.json_format import MessageToDict

                md = MessageToDict(self.client.get_model_metadata(self.model_name, **self._rpc),
                                   preserving_proto_field_name=True)
            else:
                md = self.client.get_model_metadata(self.model_name)
        except self._exc as e:
            raise TritonRecommendError(f"cannot read metadata of model {self.model_name!r}: {e.message()}") from None
        for io in md.get("inputs", []) + md.get("outputs", []):
            io["shape"] = [int(d) for d in io.get("shape", [])]
        return md

    def _encode(self, items: Sequence[Any]) -> np.ndarray:
        if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
            raise TypeError(f"new_items must be a sequence of item ids, got {type(items).__name__}")
        items = list(items)
        if self.vocab is not None:
            idx = self.vocab.encode(items)                       # raises UnknownItemError naming the id
        else:
            idx = []
            for x in items:
                if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
                    raise TypeError(f"item id {x!r} is not an int (no vocabulary given, ids are internal indices)")
                idx.append(int(x))
        return np.asarray(idx, dtype=np.int64).reshape(1, -1)

    def _decode(self, idx) -> list:
        idx = [int(i) for i in idx]
        return self.vocab.decode(idx) if self.vocab is not None else idx

    def _input(self, name: str, arr: np.ndarray, dtype: str):
        t = self._m.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        return t

    @functools.cached_property
    def max_batch(self) -> int:
        """Rows a request may carry: the config's ``max_batch_size`` (0, no batching: one row)."""
        return max(1, int(self._model_config().get("max_batch_size") or 0))

    def _model_config(self) -> dict:
        try:
            pin = {} if getattr(self, "model_version", None) is None else {"model_version": self.model_version}
            if self.protocol == "grpc":
                return self.client.get_model_config(self.model_name, as_json=True, **pin, **self._rpc).get("config",
                                                                                                            {})
            return self.client.get_model_config(self.model_name, **pin)
        except self._exc as e:
            replaced = self._replaced()
            if replaced is not None:
                raise replaced from None
            raise TritonRecommendError(f"cannot read the config of model {self.model_name!r}: {e.message()}") from None

    def _param(self, key: str, default=None):
        p = (self._model_config().get("parameters") or {}).get(key)
        return default if p is None else p.get("string_value", default)

    def close(self) -> None:
        """Release what the client holds, at once rather than when the garbage collector gets to it: tritonclient's
        connection (the gRPC channel, the HTTP connection pool). Idempotent; afterwards any call raises
        :class:`export.state_store.ClosedError`. ``with TritonRecommender(...) as rec:`` closes it at the end of the
        block."""
        client = self.client
        if isinstance(client, state_store.Closed):
            return
        self.client = state_store.Closed(f"{type(self).__name__} of model {self.model_name!r}")
        client.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return isinstance(self.client, state_store.Closed)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _event_ts(self, timestamps, n: int, where: str = "") -> np.ndarray | None:
        """:meth:`_check_ts` for a model that reads time; None for one that does not, which refuses timestamps given
        (as ``model.step`` and ``export.runtime`` do: they would be dropped without a word)."""
        if self.uses_timestamps:
            return self._check_ts(timestamps, n)
        if timestamps is not None:
            raise ValueError(f"{where}model {self.model_name!r} does not use timestamps; send the items without them")
        return None

    def _check_ts(self, timestamps, n: int) -> np.ndarray:
        """The caller's ``n`` timestamps as float64 Unix seconds ``[1, n]``: finite, non-negative, non-decreasing."""
        if timestamps is None:
            raise ValueError(f"model {self.model_name!r} reads timestamps: pass one per item (Unix seconds)")
        name, want = ("time_gaps", "FP32") if self.time_gaps else ("timestamps", "FP64")
        declared = self.inputs[name]["datatype"]
        if declared != want:
            raise TritonRecommendError(f"model {self.model_name!r} declares {name} as {declared}; the zoo's graphs "
                                       f"take {want}" + ("" if self.time_gaps else " (float32 cannot hold Unix "
                                                                                   "seconds)")
                                       + ": regenerate its repository with python -m export.triton")
        ts = seconds(timestamps).reshape(1, -1)
        if ts.shape[1] != n:
            # singular for 1 as zoo.data.split._count writes it; not imported: importing zoo imports torch
            raise ValueError(f"got {ts.shape[1]} timestamp{'' if ts.shape[1] == 1 else 's'} for {n} "
                             f"item{'' if n == 1 else 's'}")
        if not np.isfinite(ts).all() or (ts < 0).any():
            raise ValueError("timestamps must be finite and non-negative (Unix seconds)")
        if (ts[0, 1:] < ts[0, :-1]).any():
            i = int(np.argmax(ts[0, 1:] < ts[0, :-1]))
            raise ValueError(f"timestamps decrease ({ts[0, i + 1].item()!r} after {ts[0, i].item()!r}); "
                             "events must be in time order")
        return ts

    def _time_input(self, ts: np.ndarray, last_ts: np.ndarray) -> list:
        """``[]`` for models without time, else the time input of the rows ``ts [B, T]`` (checked float64 seconds):
        ``timestamps`` as they are, or, for a gaps model, float32 ``time_gaps`` computed in float64 from ``ts`` and
        the rows' last timestamps ``last_ts [B, 1]`` (-1: no event yet) as ``export.timestamps.time_gaps`` does:
        ``gap_0 = ts_0 - last_ts`` (0 when ``last_ts < 0``), ``gap_i = ts_i - ts_(i-1)``."""
        if not self.uses_timestamps:
            return []
        if not self.time_gaps:
            return [self._input("timestamps", ts, "FP64")]
        with np.errstate(over="ignore"):
            gaps = time_gaps(ts, last_ts)[0].astype(np.float32)
        if not np.isfinite(gaps).all():                         # > 3.4e38 s: not a time gap
            raise ValueError("time gaps between the timestamps do not fit float32")
        return [self._input("time_gaps", gaps, "FP32")]

    @staticmethod
    def _check_after(ts: np.ndarray, last: float | None, who: str) -> None:
        """The first of the new timestamps ``ts [1, T]`` is not before ``last`` (the previous event's; None or < 0:
        none yet)."""
        if last is not None and last >= 0 and ts[0, 0] < last:
            raise ValueError(f"timestamps of {who} go back in time relative to their last event ({ts[0, 0].item()!r} "
                             f"< last_ts {last!r})")

    def _check_k(self, k):
        k = self.k_max if k is None else k
        if not isinstance(k, int) or not 1 <= k <= self.k_max:
            raise ValueError(f"k must be an int in 1..{self.k_max} (the model's exported top-K), got {k!r}")
        return k


#: gRPC statuses of a call that got no answer: the server may have applied the request or not
_NO_ANSWER = ("StatusCode.DEADLINE_EXCEEDED", "StatusCode.UNAVAILABLE", "StatusCode.CANCELLED")


def _outcome_unknown(e: Exception) -> bool:
    """The call raising ``e`` got no answer (a transport error, a client-side timeout or deadline): whether the
    server applied the request is unknown. An error the server answered (a refused request) is not such a case."""
    return isinstance(e, OSError) or str(e.status() or "") in _NO_ANSWER


def _describe(e: Exception) -> str:
    """What a call without an answer raised, for the message."""
    if isinstance(e, OSError):
        return f"{type(e).__name__}: {e}"
    return f"{e.status()}: {e.message()}"


def _stateless_error(e: Exception, why: str) -> TritonRecommendError:
    """The error of a failed call of a client that keeps no state on the server (explicit state, windows): Triton's
    message, or for a call without an answer (a timeout, a lost connection: :func:`_outcome_unknown`) one that says
    so and that sending it again is safe (``why``), unlike a :class:`TritonRecommender` event."""
    if _outcome_unknown(e):
        return TritonRecommendError(f"no answer from the server ({_describe(e)}); {why}, so the call can be sent "
                                    "again")
    return TritonRecommendError(str(e.message()))


def _gone(msg: str) -> bool:
    """The server's answer says it holds no such sequence: Triton's sequence batcher ("must specify the START flag
    on the first request of the sequence") or the python model ("has no state on the server")."""
    return "no state" in msg or "START flag" in msg


def _backend_of(config: dict) -> str:
    """A model config's Triton backend: its ``backend``, else its ``platform`` ("" when it names neither)."""
    return str(config.get("backend") or config.get("platform") or "")


def _new_items_cap(client: _Base, backend: str) -> int | None:
    """The most new items one request of ``client``'s step model may carry (None: no cap), shared by
    :attr:`TritonRecommender.max_new_items` and :attr:`ExplicitStateRecommender.max_new_items`: for a ``tensorrt``
    model (backend ``tensorrt`` or platform ``tensorrt_plan``) the config's ``max_seq_length`` parameter (None when
    the config has none); None for any other backend. A parameter that is no positive int raises
    :class:`TritonRecommendError`."""
    if backend not in ("tensorrt", "tensorrt_plan"):
        return None
    raw = client._param("max_seq_length")
    if raw is None:
        return None
    try:
        cap = int(raw)
    except ValueError:
        cap = 0
    if cap < 1:
        raise TritonRecommendError(f"model {client.model_name!r}: its config's max_seq_length parameter is "
                                   f"{raw!r}, not a positive int: regenerate its repository with python -m "
                                   "export.triton")
    return cap


class TritonRecommender(_Base):
    """Per-event recommendations from a stateful (sequence-batcher) zoo model on Triton.

    Args:
        url: ``host:port`` of Triton's gRPC (default 8001) or HTTP (8000) endpoint.
        model_name: the model's name in the repository.
        protocol: ``"grpc"`` or ``"http"``.
        vocab: ``item_vocab.json`` path (or its folder; read as :class:`export.item_vocab.ItemVocab`, the ids and errors of
            :class:`zoo.vocab.ItemVocab` without importing ``zoo``: torch, transformers) or a
            :class:`zoo.vocab.ItemVocab` (None: ids are internal indices).
        threads: requests :meth:`recommend_many` sends at once (gRPC).
        max_expired: sequences that idled out (or the server said are gone) that the client remembers (1,000,000
            by default: ~110 MB at most), so that their next event goes without START and a dropped one is refused,
            saying to :meth:`prime` it, rather than sent with START, which would restart it from that event alone
            (its history dropped without an error); past it the oldest are forgotten. None: all of them (the client
            then grows by one entry per sequence that idles out without :meth:`end`).
    Not thread-safe for protocol="http" (tritonclient's HTTP client is not): use one instance per thread.

    A request without an answer (``timeout_s``, a lost connection) leaves its sequence uncertain: the server may have
    applied it, so its next event is refused until :meth:`prime` restarts it (do not resend the event: a step is not
    idempotent, a resent one is applied twice); :meth:`end` still closes it.

    The client's memory is bounded: it keeps a sequence as live (~130 bytes; a time-aware model's last timestamp
    ~80 more) until :meth:`end` or until it stays idle longer than the server keeps it (:attr:`sequence_idle_s`,
    the config's ``max_sequence_idle_microseconds``, counted from the last answer, which comes after the server's
    timer restarted), then among at most ``max_expired`` idled-out sequences (~110 bytes each): the next event of
    one still goes without START (the server decides: it refuses a sequence it dropped, and the client then refuses
    the sequence's events, saying to prime it, without sending them). One forgotten past that bound is new to this
    client again: its next event with ``start=None`` starts it, from that event alone. Callers that must never
    restart a returning user that way, however long it was away, decide the start themselves: :meth:`prime`
    (``start=True``) new and returning users, and send a session's events with ``start=False`` (the server refuses
    a sequence it dropped; the error says to prime it).
    :meth:`close` (or ``with``) releases the thread pool and the connection.
    """

    def __init__(self, *args, threads: int = 16, max_expired: int | None = 1_000_000, **kwargs):
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        if max_expired is not None and (isinstance(max_expired, bool) or not isinstance(max_expired, int)
                                        or max_expired < 0):
            raise ValueError(f"max_expired must be an int >= 0 or None, got {max_expired!r}")
        super().__init__(*args, **kwargs)
        #: requests :meth:`recommend_many` has in flight at once (gRPC)
        self.threads = threads
        #: sequences gone from the server (idled out, or refused as gone) this client remembers, to refuse their next
        #: event (prime() them) instead of starting them anew: the oldest are forgotten past it (None: none is)
        self.max_expired = max_expired
        self._pool = None
        # the client's bookkeeping, bounded (see the class docstring), each table in the order its sequences were
        # last touched, so that pruning pops from the front. _live: sequence -> monotonic time of its last answer;
        # one idle longer than the server keeps a sequence (sequence_idle_s) moves to _expired as False (idled out
        # by the client's clock: its next event still goes without START, the server decides), True: gone (the
        # server said so, or it idled out uncertain): its next event is refused. At most max_expired entries
        self._live: OrderedDict[int, float] = OrderedDict()
        self._expired: OrderedDict[int, bool] = OrderedDict()
        #: sequences whose last request got no answer (timeout, lost connection): applied or not, nobody knows
        self._uncertain: OrderedDict[int, float] = OrderedDict()
        self._last_ts: dict[int, float] = {}        # live sequence -> its last timestamp (time-aware models)
        self._clock = time.monotonic
        self._lock = threading.Lock()
        # sequence -> [its turn's lock, threads holding or waiting for it]: one event of a sequence at a time
        self._turns: dict[int, list] = {}
        self.last_live_sequences: int | None = None

    @contextlib.contextmanager
    def _turn(self, sid: int):
        """Hold sequence ``sid``'s turn for the ``with`` block: the events of one sequence (threads sharing this
        client) go one at a time, each from deciding whether it starts the sequence, and reading its last timestamp,
        until its answer has updated them. Without it, concurrent first events of a sequence all went with START
        (each restarting it: the earlier ones lost), and concurrent events of a gaps model all took their first gap
        from the same last timestamp. Other sequences' events go side by side."""
        with self._lock:
            turn = self._turns.setdefault(sid, [threading.Lock(), 0])
            turn[1] += 1
        try:
            with turn[0]:
                yield
        finally:
            with self._lock:
                turn[1] -= 1
                if not turn[1]:
                    del self._turns[sid]

    @functools.cached_property
    def backend(self) -> str:
        """The model's Triton backend (its config's ``backend``, else ``platform``; "" when the config names none):
        ``python`` takes an END without items, the others run their graph on every request (see :meth:`end`)."""
        return _backend_of(self._model_config())

    @functools.cached_property
    def max_new_items(self) -> int | None:
        """Most new items one request may carry (None: no cap). A TensorRT engine takes what its optimisation profile
        spans: new items ``T`` in ``[1, max_seq_length]`` (:func:`export.trt.profile_shapes`, the profile
        ``build_engine.sh`` builds), so for a ``tensorrt`` model (backend ``tensorrt`` or platform
        ``tensorrt_plan``) it is the config's ``max_seq_length`` parameter; a tensorrt config without that parameter
        has no cap the client can read (None: its events go whole, and the server refuses one past the profile).
        The onnxruntime and python backends take any ``T``: None. An event of more items is split into requests of at
        most this many (see :meth:`recommend_with_scores`)."""
        return _new_items_cap(self, self.backend)

    @functools.cached_property
    def sequence_idle_s(self) -> float | None:
        """Seconds the server keeps a sequence that gets no request: the config's ``sequence_batching.
        max_sequence_idle_microseconds`` (Triton's default, 1 s, when it is unset); None for a config without a
        sequence batcher (then the client never takes a sequence for idled out)."""
        seq = self._model_config().get("sequence_batching")
        if seq is None:
            return None
        us = int((seq or {}).get("max_sequence_idle_microseconds") or 0)
        return us / 1e6 if us > 0 else 1.0

    def _replaced_hint(self) -> str:
        return (super()._replaced_hint() + "; the sequences live on the old version ended with it: prime() them "
                "through the new client")

    def _remember(self, sid: int, gone: bool) -> None:
        """Keep ``sid`` among the sequences that idled out (``gone=False``: its next event goes without START, the
        server decides) or are gone (``True``: its next event is refused; its last timestamp dropped), forgetting
        the oldest past :attr:`max_expired` (with ``self._lock`` held)."""
        self._expired[sid] = gone
        self._expired.move_to_end(sid)
        if gone:
            self._last_ts.pop(sid, None)
        while self.max_expired is not None and len(self._expired) > self.max_expired:
            self._last_ts.pop(self._expired.popitem(last=False)[0], None)

    def _prune(self, idle: float | None) -> None:
        """Move the sequences this client touched last more than ``idle`` seconds ago (by then the server has
        dropped them: its idle timer restarted before the answer came back) out of the live ones into
        :attr:`_expired`, as idled out, and the uncertain ones as gone (their state was unknown: they still need a
        prime) (with ``self._lock`` held). Amortised O(1) an event: the tables are in touch order."""
        if idle is None:
            return
        cut = self._clock() - idle
        for table, gone in ((self._live, False), (self._uncertain, True)):
            while table:
                sid, touched = next(iter(table.items()))
                if touched >= cut:
                    break
                del table[sid]
                self._remember(sid, gone)

    @staticmethod
    def _touch(table: OrderedDict, sid: int, now: float) -> None:
        table[sid] = now
        table.move_to_end(sid)

    def close(self) -> None:
        """Release what the client holds: the thread pool of :meth:`recommend_many` (shut down, its threads
        joined), tritonclient's connection, and the per-sequence bookkeeping. Idempotent; afterwards any call raises
        :class:`export.state_store.ClosedError`. The sequences stay on the server until they end or idle out:
        :meth:`end` them first when they are done."""
        with self._lock:
            pool, self._pool = self._pool, state_store.Closed(f"TritonRecommender of model {self.model_name!r}")
            for table in (self._live, self._expired, self._uncertain, self._last_ts):
                table.clear()
        if pool is not None and not isinstance(pool, state_store.Closed):
            pool.shutdown(wait=True)
        super().close()

    def _infer(self, sid: int, ids: np.ndarray, start: bool, end: bool, extra=(), last_ts: float | None = None,
               discard: bool = False, who=None):
        """One request of sequence ``sid`` (``who``: the caller's id of it, for the messages); ``last_ts``: the
        event's last timestamp (kept for :meth:`end`); ``discard``: no answer is read (None comes back)."""
        ins = [self._input("item_ids", ids, "INT64"), *extra]
        live = ["live_sequences"] if "live_sequences" in self.outputs else []
        outs = ([self._m.InferRequestedOutput(n) for n in live or ["topk_ids"]] if discard
                else self._outputs_for(["topk_ids", "topk_scores", *live]))
        try:
            r = self._send(ins, outs, sequence_id=sid, sequence_start=start, sequence_end=end)
        except (self._exc, OSError) as e:
            if _outcome_unknown(e):
                # no answer (client timeout, gRPC deadline, connection lost): the server usually got the request and
                # applied it, or may still. Neither continuing (a retry would apply the event twice) nor forgetting
                # the sequence (end() would leave its state and slot on the server) is right: it must be primed
                with self._lock:
                    self._live.pop(sid, None)
                    self._last_ts.pop(sid, None)
                    self._expired.pop(sid, None)
                    self._touch(self._uncertain, sid, self._clock())
                raise TritonRecommendError(
                    f"no answer from the server for sequence {sid} ({_describe(e)}): the request may have been "
                    "applied or not, so the sequence's server-side state is unknown; prime() it with its history "
                    "(a retried event is not idempotent: it could be applied twice), or end() it") from None
            msg = str(e.message())
            gone = _gone(msg)
            with self._lock:
                # a rejected continuation (bad item, timestamps going back in time, ...) leaves the server-side
                # state as it was: the sequence stays live; a failed start or a forgotten sequence does not, nor
                # does a failed END (the caller closed it: its next event starts it anew)
                if start or gone or end:
                    self._live.pop(sid, None)
                    self._last_ts.pop(sid, None)
                    self._uncertain.pop(sid, None)
                if not start and not end and gone:
                    self._remember(sid, True)     # the server forgot it (idle timeout): the caller must re-prime
                elif end:
                    self._expired.pop(sid, None)
            if gone and not start and not end:     # as the next event would say, with the server's own words
                raise TritonRecommendError(
                    f"sequence {sid if who is None else who!r} is gone from the server (idle timeout or server "
                    f"restart): call prime() with its history (the server: {msg})") from None
            raise TritonRecommendError(msg) from None
        with self._lock:
            if end:
                self._live.pop(sid, None)
                self._last_ts.pop(sid, None)
            else:
                self._touch(self._live, sid, self._clock())
                if last_ts is not None:
                    self._last_ts[sid] = last_ts
            self._expired.pop(sid, None)
            self._uncertain.pop(sid, None)
        if "live_sequences" in self.outputs:
            self.last_live_sequences = int(r.as_numpy("live_sequences").reshape(-1)[0])
        if discard:
            return None
        vector = r.as_numpy("user_vector")[0].copy() if "user_vector" in self.outputs else None
        return r.as_numpy("topk_ids")[0], r.as_numpy("topk_scores")[0], vector

    def recommend_with_scores(self, user_or_sequence_id, new_items: Sequence[Any], timestamps=None, k: int | None = None,
                              start: bool | None = None, end: bool = False,
                              candidates: Sequence[Any] | None = None, *, return_vector: bool = False) -> tuple:
        """``(top-k external ids, their scores)`` after appending ``new_items`` to the sequence; ``candidates``: the
        item ids to choose from (a ``--candidates`` model; fewer than ``k`` ids come back when it lists fewer).
        ``return_vector`` (a ``--user-vector`` model; another refuses it, ValueError, sending nothing):
        ``(ids, scores, vector)``, the sequence's ``[vector_size]`` float32 query vector after the event -- this
        call's own, unlike :attr:`last_user_vector`, which the calls of other threads also set.

        One request, unless the model caps the new items a request may carry (:attr:`max_new_items`: a TensorRT
        engine's profile) below ``len(new_items)``: then consecutive requests of at most the cap, in order, within
        the sequence's turn -- the first with START when the event starts the sequence, the others continuing it,
        END (``end=True``) on the last only; the timestamps split with the items; the candidates go with the last,
        whose answer comes back. A step model gives the same answer either way (its state after a prefix, stepped
        through the rest, is the state after the whole). Should a later request be refused, the earlier ones stay
        applied: the sequence then needs :meth:`prime` (its next event is refused until then)."""
        k = self._check_k(k)
        self._check_vectors_wanted(return_vector, "return_vector")
        extra = self._candidates(None if candidates is None else [candidates])
        top, sc, vector = self._event(user_or_sequence_id, self._event_ids(new_items), timestamps, start, end, extra)
        if vector is not None:
            self.last_user_vector = vector
        return (*self._pick(top, sc, k), vector) if return_vector else self._pick(top, sc, k)

    def _event_ids(self, new_items, where: str = "") -> np.ndarray:
        """``new_items`` as internal indices ``[1, T]``, checked: not empty, each in the model's range."""
        ids = self._encode(new_items)
        if ids.shape[1] == 0:
            raise ValueError(f"{where}new_items is empty; to close a sequence call end()")
        if self.n_items is not None:
            bad = ids[(ids < 1) | (ids >= self.n_items)]
            if bad.size:
                raise ValueError(f"{where}item index {int(bad[0])} out of range 1..{self.n_items - 1}")
        return ids

    def _event(self, user_or_sequence_id, ids: np.ndarray, timestamps, start, end, extra=()):
        """One event's request (or requests, of at most :attr:`max_new_items` items each, as
        :meth:`recommend_with_scores` says): ``(top-k indices, scores, user vector or None)`` of the last. A
        time-aware event continuing a sequence of this client is checked against the sequence's last timestamp (the
        graph would clamp a gap going back in time to 0 without a word), from which a gaps model's first time gap is
        computed."""
        sid = sequence_id(user_or_sequence_id)
        ts = self._event_ts(timestamps, ids.shape[1])
        idle = self.sequence_idle_s                 # read from the config once (not under the lock)
        cap = self.max_new_items
        with self._turn(sid):                       # the sequence's other events wait for this one's answer
            with self._lock:
                self._prune(idle)
                self._check_continuable(sid, user_or_sequence_id, start)
                if start is None:               # a sequence that idled out is continued: the server decides
                    start = sid not in self._live and sid not in self._expired
                last = None if start else self._last_ts.get(sid)
            if ts is not None:
                if self.time_gaps and not start and last is None:
                    raise TritonRecommendError(
                        f"sequence {user_or_sequence_id!r}: this client did not send its previous event, so it does "
                        "not know the sequence's last timestamp, from which the first time gap of this --time-input "
                        "gaps model is computed: prime() it with its history (or continue it from the client that "
                        "started it)")
                self._check_after(ts, last, f"sequence {user_or_sequence_id!r}")
            n = ids.shape[1]
            step = n if cap is None or cap >= n else cap
            reqs = []                               # every request's inputs built (and checked) before any is sent
            for a in range(0, n, step):
                b, time_in = min(a + step, n), []
                if ts is not None:                  # a gaps model's first gap: from the previous request's last
                    prev = last if a == 0 else float(ts[0, a - 1])
                    time_in = self._time_input(ts[:, a:b], np.array([[-1.0 if prev is None else prev]]))
                reqs.append((a, b, [*time_in, *(extra if b == n else self._candidates(None))]))
            for a, b, ins in reqs:
                try:
                    answer = self._infer(sid, ids[:, a:b], bool(start) and a == 0, bool(end) and b == n, ins,
                                         None if ts is None else float(ts[0, b - 1]), discard=b < n,
                                         who=user_or_sequence_id)
                except ModelReplacedError:
                    raise
                except TritonRecommendError as e:
                    if a == 0 or (end and b == n):   # nothing applied yet / the caller closed the sequence anyway
                        raise
                    with self._lock:                 # the first a items are applied: the state is not the caller's
                        if sid in self._live:        # (an unanswered or "gone" request was marked by _infer)
                            self._live.pop(sid, None)
                            self._last_ts.pop(sid, None)
                            self._touch(self._uncertain, sid, self._clock())
                    raise TritonRecommendError(
                        f"sequence {user_or_sequence_id!r}: the event's {n} items went in requests of at most {step} "
                        f"(the model's cap); the first {a} were applied, then: {e} -- prime() the sequence with its "
                        "history, or end() it") from None
            return answer

    def _check_continuable(self, sid: int, who, start) -> None:
        """Raise :class:`TritonRecommendError` when an event of sequence ``sid`` without ``start=True`` cannot be sent:
        the server forgot the sequence, or an earlier request of it got no answer or an event split into requests was
        refused part way (call with ``self._lock`` held)."""
        if start:
            return
        if sid in self._uncertain:
            raise TritonRecommendError(
                f"sequence {who!r}: an earlier request of it got no answer (timeout or lost connection), or an event "
                "split into requests was refused part way, so the sequence's state on the server is unknown or "
                "holds part of that event: call prime() with its history "
                "(resending the event could apply it twice), or end() it")
        if start is None and self._expired.get(sid):
            raise TritonRecommendError(f"sequence {who!r} is gone from the server (idle timeout or server restart): "
                                       "call prime() with its history")

    def recommend_many(self, events: Sequence[tuple], k: int | None = None,
                       candidates: Sequence[Sequence[Any] | None] | None = None, *,
                       return_vectors: bool = False) -> list[tuple]:
        """``(top-k external ids, their scores)`` of each event, in order: ``events`` are ``(user_or_sequence_id,
        new_items)`` or ``(user_or_sequence_id, new_items, timestamps)``, one per sequence (a sequence's events must
        reach the server in order); ``candidates``: one list of item ids per event (None: not restricted). With
        gRPC the requests go out together from a thread pool (at most ``threads``), so Triton's sequence batcher
        can run them as one batch; tritonclient's HTTP client is not thread-safe, so with HTTP they go one after
        another. A sequence that is not live is started, as by :meth:`recommend`. An event of more items than the
        model takes a request (:attr:`max_new_items`) goes in pieces, as :meth:`recommend_with_scores` sends it.

        Every event is checked before any is sent (an unknown id or an empty event sends nothing). The states live on
        the server, so a request the server refuses does not undo the others: the first refusal is raised once every
        request has answered, the other sequences having advanced. ``return_vectors`` (a ``--user-vector`` model):
        ``(ids, scores, vector)`` per event instead, as :meth:`recommend_with_scores` returns it."""
        k = self._check_k(k)
        self._check_vectors_wanted(return_vectors, "return_vectors")
        users = state_store.check_events(events)
        sids = [sequence_id(u) for u in users]
        if len(set(sids)) < len(sids):
            raise ValueError("two events of one call map to the same sequence id; send the second after the first")
        if candidates is not None and len(candidates) != len(events):
            raise ValueError(f"candidates: one list per event ({len(events)} events), got {len(candidates)}")
        checked, idle = [], self.sequence_idle_s
        for i, e in enumerate(events):
            ids = self._event_ids(e[1], f"event {i} (sequence {e[0]!r}): ")
            ts = self._event_ts(e[2] if len(e) == 3 else None, ids.shape[1], f"event {i} (sequence {e[0]!r}): ")
            with self._lock:
                self._prune(idle)
                self._check_continuable(sids[i], e[0], None)
                last = self._last_ts.get(sids[i])        # kept for a sequence it continues only
            if ts is not None:
                self._check_after(ts, last, f"sequence {e[0]!r}")
            extra = self._candidates(None if candidates is None else [candidates[i]],
                                     where=[f"event {i} (sequence {e[0]!r})"])
            checked.append((e[0], ids, e[2] if len(e) == 3 else None, extra))

        def one(event):
            user, ids, ts, extra = event
            return self._event(user, ids, ts, None, False, extra)

        if self.protocol != "grpc" or len(events) == 1:
            calls = [lambda e=e: one(e) for e in checked]              # one after another (HTTP: not thread-safe)
        else:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="zoo-triton")
            calls = [self._pool.submit(one, e).result for e in checked]
        answers, first_error = [], None
        for call in calls:                                 # every event is sent, over either protocol
            try:
                answers.append(call())
            except Exception as err:                       # raised below, once every request has answered
                answers.append(None)
                first_error = first_error or err
        if first_error is not None:
            raise first_error
        if answers[-1][2] is not None:
            self.last_user_vector = answers[-1][2]
        if return_vectors:
            return [(*self._pick(top, sc, k), vector) for top, sc, vector in answers]
        return [self._pick(top, sc, k) for top, sc, _ in answers]

    def recommend(self, user_or_sequence_id, new_items: Sequence[Any], timestamps=None, k: int | None = None,
                  start: bool | None = None, end: bool = False, candidates: Sequence[Any] | None = None) -> list:
        """Top-k external ids after appending ``new_items`` (one event, or several) to the sequence."""
        return self.recommend_with_scores(user_or_sequence_id, new_items, timestamps, k, start, end, candidates)[0]

    def prime(self, user_or_sequence_id, history: Sequence[Any], timestamps=None, k: int | None = None,
              candidates: Sequence[Any] | None = None) -> list:
        """(Re)start the sequence from a whole history; returns the top-k after it. ONE request (START + the
        history), or, for a model that caps the new items a request carries (:attr:`max_new_items`: a TensorRT
        engine's profile, ``max_seq_length``) below ``len(history)``, consecutive requests of at most the cap (START
        on the first; ``timestamps`` split with the items; ``candidates`` and ``k`` apply to the last, whose top-k
        comes back): the same top-k, a step model's state after a prefix stepped through the rest being the state
        after the whole history."""
        return self.recommend(user_or_sequence_id, history, timestamps, k, start=True, candidates=candidates)

    def end(self, user_or_sequence_id) -> None:
        """Close the sequence: the server frees its state and its sequence slot. The END is sent whether or not this
        client started the sequence (another client, or this process before a restart, may have: the oldest
        batcher holds at most ``max_candidate_sequences`` live sequences, and a slot not ended is held until the
        idle timeout), and for a sequence whose last request got no answer; a server that holds no such sequence
        (Triton's "must specify the START flag" answer, or the model's "no state") means it is gone already, which
        is no error. The python backend takes an END without items; the onnxruntime and tensorrt models run their
        graph on every request, and no graph runs without a new item, so they get an END with one item (index 1;
        for a time-aware model at the sequence's last timestamp this client knows again, a time gap of 0; 0 for a
        sequence it does not know), whose answer is dropped with the state. Either way no recommendation comes back,
        so ``last_user_vector`` stays the vector after the sequence's last event. The sequence is closed for this
        client even when the END fails (any other error is raised): its next event starts it anew."""
        sid = sequence_id(user_or_sequence_id)
        n = 0 if self.backend == "python" else 1
        with self._turn(sid):                       # after this client's event of the sequence in flight, if any
            with self._lock:
                last = self._last_ts.get(sid, 0.0)
            time_in = self._time_input(np.full((1, n), last), np.array([[last]])) if self.uses_timestamps else []
            try:
                self._infer(sid, np.ones((1, n), np.int64), False, True, [*time_in, *self._candidates(None)],
                            discard=True, who=user_or_sequence_id)
            except TritonRecommendError as e:
                if not _gone(str(e)):
                    raise


def _pieces(lengths: Sequence[int], cap: int | None) -> list[list[tuple[int, int]]]:
    """Each event's pieces, for events of ``lengths`` new items and a per-request ``cap`` (None: no cap): the
    ``(start, stop)`` column ranges of at most ``cap`` items, in order, the last one the rest (one whole piece
    when the event fits)."""
    out = []
    for n in lengths:
        step = n if cap is None or cap >= n else cap
        out.append([(a, min(a + step, n)) for a in range(0, n, step)])
    return out


def _piece_error(e: Exception, rnd: int, cap: int | None) -> TritonRecommendError:
    """:func:`_stateless_error` for a failed request of :meth:`ExplicitStateRecommender.recommend_many`; past the
    first piece (``rnd`` > 0) it says that the pieces already answered were dropped and nothing was stored."""
    if rnd == 0:
        return _stateless_error(e, "the users' states travel with the request and none was stored (all or nothing)")
    why = (f"the events went in pieces of at most {cap} items (the model's cap) and piece {rnd + 1} failed: the "
           "states of the pieces already answered were dropped and none was stored (all or nothing)")
    if _outcome_unknown(e):
        return _stateless_error(e, why)
    return TritonRecommendError(f"{e.message()} ({why}; the call can be sent again once the problem is fixed)")


class StaleStateError(TritonRecommendError, state_store.StaleStateError):
    """A stored state was written by another model than the one serving now (its fingerprint differs)."""


FINGERPRINT_KEY = state_store.FINGERPRINT_KEY
"""Key of the fingerprint :class:`ExplicitStateRecommender` stores beside a user's state tensors."""

ON_STALE = state_store.ON_STALE


class ExplicitStateRecommender(_Base):
    """Recommendations from an explicit-state model (``export.triton --state explicit``): the state travels with each
    request and is kept in ``store`` (dict-like, ``store[key] -> dict name -> np.ndarray``) under the user id: a str
    or an int whatever the store (:func:`export.state_store.check_user_id`, the SQLite store's rule; a float, a bool
    or None is a TypeError, so a dict cannot merge user 7.0 with 7).

    Any key-value store works: wrap it so ``get``/``__setitem__``/``pop`` take the user id and (de)serialise the
    arrays (:class:`export.state_store.BytesStore` wraps any mapping of bytes). A missing key means an empty history:
    the model's initial state (:meth:`initial_state`; not all zeros for TiM4Rec-causal, whose float64 ``last_ts``
    starts at -1). ``state_init`` (name -> value) overrides the initial values read from the model's config. A
    ``--time-input gaps`` model keeps no ``last_ts``: this client stores it ([1, 1] float64, from the config's
    ``client_state``: -1) beside the graph's states, and sends the float32 ``time_gaps`` computed from it.

    **A state belongs to the model that wrote it.** A state is the model's summary of a history, so after the model
    is replaced (retrained, its catalogue grown, exported in fp16) a stored state means nothing to the new one: fed to
    it, it gives wrong recommendations without any error. The model's config carries the graph's state fingerprint
    (``state_fingerprint``: :func:`export.onnx.state_fingerprint`); every stored state gets it as one more entry
    (``FINGERPRINT_KEY``, a string array), and a stored state with another fingerprint, or none, is refused with
    :class:`StaleStateError` before anything is sent. Replay that user's history (:meth:`prime`: one request, or
    pieces of at most the model's cap, :attr:`max_new_items`), or
    pass ``on_stale="restart"`` to start such users from the initial state (their earlier history is then ignored).
    Repositories written before the fingerprint existed have none, and their states are not checked.

    Several client processes may share a *versioned* store (:class:`export.state_store.SQLiteStateStore`,
    :class:`export.state_store.RedisStateStore`, or any store with ``get_versioned`` / ``commit``): the new state is
    committed only if no other process stored the user since it was read, else the request is sent again from the
    newer state (counted in ``conflicts``). Threads may share one client (gRPC): the events of one user take turns
    (read, send, store under the user's lock, :class:`export.state_store.UserLocks`, as
    :class:`export.runtime.UserStateRecommender`), others go side by side.

    A stored state is checked before anything is sent: besides its fingerprint, every state input must be there, in
    the model's datatype and shape, else :class:`StaleStateError` naming the user and the tensor (or, with
    ``on_stale="restart"``, the initial state).
    """

    _NP = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32}

    def __init__(self, *args, store=None, state_init: dict | None = None, on_stale: str = "error", **kwargs):
        super().__init__(*args, **kwargs)
        self.on_stale = state_store.check_on_stale(on_stale)
        self.store = {} if store is None else store
        self.state_names = [n for n in self.inputs if n not in ("item_ids", "timestamps", "time_gaps", "candidates")]
        missing = [f"{n}_out" for n in self.state_names if f"{n}_out" not in self.outputs]
        if not self.state_names or missing:
            raise TritonRecommendError(f"model {self.model_name!r} is not an explicit-state step model "
                                       f"(state inputs {self.state_names}, missing outputs {missing})")
        if state_init is None:
            raw = self._param("state_init")
            # repositories written before the parameter existed only had zero-initialised states
            state_init = json.loads(raw) if raw else {n: 0.0 for n in self.state_names}
        unknown = sorted(set(self.state_names) - set(state_init))
        if unknown:
            raise TritonRecommendError(f"no initial value for the states {unknown} of model {self.model_name!r}")
        self.state_init = {n: float(state_init[n]) for n in self.state_names}
        #: states this client keeps beside the graph's (a gaps model's float64 ``last_ts``) -> initial value
        self.client_init = {}
        if self.time_gaps:
            raw = self._param("client_state")
            self.client_init = {n: float(state_init.get(n, v)) for n, v in (json.loads(raw) if raw else
                                                                            {"last_ts": -1.0}).items()}
        bad = {n: self.inputs[n]["datatype"] for n in self.state_names if self.inputs[n]["datatype"] not in self._NP}
        if bad:
            raise TritonRecommendError(f"unsupported state datatypes {bad}")
        self.fingerprint = self._param(FINGERPRINT_KEY)      # None: a repository written before it existed
        if self.n_items is None and self._param("n_items"):  # the item range every event is checked against
            self.n_items = int(self._param("n_items"))
        self.restarted = 0                                     # users started afresh by on_stale="restart"
        self.conflicts = 0             # commits a versioned store refused (another process wrote the user first)
        # threads sharing this client: the events of one user take turns (read, send, store), as in
        # export.runtime.UserStateRecommender; the counters are added to under their own lock
        self._locks = state_store.UserLocks()
        self._count_lock = threading.Lock()

    def _replaced_hint(self) -> str:
        return (super()._replaced_hint() + "; states stored by the old model are stale (the new client refuses "
                "them: prime() the users from their histories; during a rollout keep one store per model version)")

    def _stored_state(self, user_id, stored: dict | None) -> tuple[dict[str, np.ndarray], bool]:
        """The state to continue from ``stored`` (None: nothing stored), checked to be this model's
        (:func:`export.state_store.usable_state`, then every state tensor there, in the model's datatype and shape):
        the initial state for a user without one (or a stale one, with ``on_stale="restart"``); and whether a stale
        one was restarted."""
        state = state_store.usable_state(stored, self.fingerprint, self.on_stale, user_id, repr(self.model_name),
                                         StaleStateError)
        if state is None:
            return self.initial_state(), bool(stored)
        wrong = self._layout_problems(state)
        if wrong:                     # another layout under this tag (a repository without fingerprint): stale too
            if self.on_stale == "restart":
                return self.initial_state(), True
            raise StaleStateError(
                f"the stored state of user {user_id!r} {'; '.join(wrong)}: it is not a state of model "
                f"{self.model_name!r}. Replay the user's history (prime(user, history)), or pass on_stale='restart' "
                "to start such users afresh")
        return state, False

    def _layout_problems(self, state: dict) -> list[str]:
        """What of a stored ``state`` is not this model's layout: a state input missing, or of another dtype than the
        model declares, or of another shape than its ``[1, ...]`` (or ``[...]``). Empty when it fits."""
        missing = [n for n in self.state_names if n not in state]
        if missing:
            return [f"lacks {missing}"]
        wrong = []
        for n in self.state_names:
            a, dims = np.asarray(state[n]), tuple(self.inputs[n]["shape"][1:])
            want = np.dtype(self._NP[self.inputs[n]["datatype"]])
            if a.dtype != want:
                wrong.append(f"has {n!r} of dtype {a.dtype}, not {want} ({self.inputs[n]['datatype']})")
            fits = [shape for shape in ((1, *dims), dims) if len(a.shape) == len(shape) and all(
                d < 0 or d == got for d, got in zip(shape, a.shape))]
            if not fits:
                wrong.append(f"has {n!r} of shape {list(a.shape)}, not {[1, *dims]}")
        return wrong

    def initial_state(self) -> dict[str, np.ndarray]:
        """A new user's state: each tensor ``[1, ...]`` in its declared dtype, filled with its initial value (and a
        gaps model's ``last_ts`` [1, 1] float64)."""
        return {**{n: np.full([1] + self.inputs[n]["shape"][1:], self.state_init[n],
                              self._NP[self.inputs[n]["datatype"]]) for n in self.state_names},
                **{n: np.full((1, 1), v, np.float64) for n, v in self.client_init.items()}}

    @functools.cached_property
    def backend(self) -> str:
        """The model's Triton backend (its config's ``backend``, else ``platform``; "" when the config names
        none), as :attr:`TritonRecommender.backend`."""
        return _backend_of(self._model_config())

    @functools.cached_property
    def max_new_items(self) -> int | None:
        """Most new items one request may carry (None: no cap), as :attr:`TritonRecommender.max_new_items`: for a
        ``tensorrt`` model the config's ``max_seq_length`` parameter (a TensorRT engine's profile takes new items
        ``T`` in ``[1, max_seq_length]``); None for the onnxruntime and python backends. An event of more items goes
        in pieces of at most this many (see :meth:`recommend_many`)."""
        return _new_items_cap(self, self.backend)

    def recommend_with_scores(self, user_id, new_items, timestamps=None, k: int | None = None,
                              start: bool = False, candidates: Sequence[Any] | None = None, *,
                              return_vector: bool = False) -> tuple:
        """``(top-k ids, their scores)`` after ``new_items`` (and their ``timestamps``), from the user's stored state
        (``start``: from the initial state, whatever is stored); the new state replaces the stored one.
        ``candidates``: the item ids to choose from (a ``--candidates`` model). An event of more items than the
        model takes a request (:attr:`max_new_items`) goes in pieces, all or nothing, as :meth:`recommend_many` says.
        ``return_vector`` (a ``--user-vector`` model; another refuses it, ValueError, sending nothing):
        ``(ids, scores, vector)``, the user's ``[vector_size]`` float32 query vector after the event -- this call's
        own, unlike :attr:`last_user_vector`, which the calls of other threads also set."""
        self._check_vectors_wanted(return_vector, "return_vector")
        event = (user_id, new_items) if timestamps is None else (user_id, new_items, timestamps)
        return self.recommend_many([event], k, start, None if candidates is None else [candidates],
                                   return_vectors=return_vector)[0]

    def recommend_many(self, events: Sequence[tuple], k: int | None = None, start: bool = False,
                       candidates: Sequence[Sequence[Any] | None] | None = None, *,
                       return_vectors: bool = False) -> list[tuple]:
        """``(top-k ids, their scores)`` of each event, in order: ``events`` are ``(user_id, new_items)`` or
        ``(user_id, new_items, timestamps)``, one per user (a user twice in one call would need the first event's
        state for the second). Events with as many new items go in one request, a batch of users (up to the model's
        ``max_batch_size`` rows), their states stacked row for row. The users' new states replace the stored ones once
        every request has answered: all or nothing (a refused event -- an unknown id, timestamps going back -- sends
        and stores nothing); with a versioned store they are committed together, or sent again from the newer states
        if another process stored one of these users meanwhile. ``start``: every user from the initial state.
        ``candidates``: one list of item ids per event (None: not restricted; a ``--candidates`` model).
        ``return_vectors`` (a ``--user-vector`` model): ``(ids, scores, vector)`` per event instead, as
        :meth:`recommend_with_scores` returns it.

        An event of more items than the model takes a request (:attr:`max_new_items`: a TensorRT engine's profile,
        the config's ``max_seq_length``) goes as consecutive pieces of at most that many items (the last one the
        rest), in order: each piece's ``*_out`` states are the next piece's state inputs (a gaps model's first gap
        of a piece comes from the previous piece's last timestamp); the timestamps split with their items; the
        candidates (and ``k``) apply to the last piece, whose answer comes back (the earlier pieces' answers are
        dropped; they carry an unrestricted candidates row). Piece ``j`` of every event goes before piece ``j + 1``
        of any; a round's pieces of as many items go as the rows of one request. A step model answers the same
        either way (its state after a prefix, stepped through the rest, is the state after the whole). The final
        states are stored only once, at the end, as for an unsplit call: a piece refused or unanswered part-way
        stores nothing (the states of the pieces already answered are dropped), so what was stored before the call
        is kept and the whole call can be sent again."""
        k = self._check_k(k)
        self._check_vectors_wanted(return_vectors, "return_vectors")
        users = state_store.checked_users(events)      # str or int, whatever the store
        if candidates is not None and len(candidates) != len(events):
            raise ValueError(f"candidates: one list per event ({len(events)} events), got {len(candidates)}")
        cands = self._encode_candidates(candidates, [f"event {i} (user {e[0]!r})" for i, e in enumerate(events)])
        encoded = []                                  # every event and candidate checked before anything is sent
        for i, e in enumerate(events):
            ids = self._encode(e[1])
            if ids.shape[1] == 0:
                raise ValueError(f"event {i} (user {e[0]!r}): new_items is empty")
            if self.n_items is not None:
                bad = ids[(ids < 1) | (ids >= self.n_items)]
                if bad.size:
                    raise ValueError(f"event {i} (user {e[0]!r}): item index {int(bad[0])} out of range "
                                     f"1..{self.n_items - 1}")
            ts = self._event_ts(e[2] if len(e) == 3 else None, ids.shape[1], f"event {i} (user {e[0]!r}): ")
            encoded.append((ids, ts))
        pieces = _pieces([ids.shape[1] for ids, _ in encoded], self.max_new_items)
        outs = self._outputs_for(["topk_ids", "topk_scores"] + [f"{n}_out" for n in self.state_names])
        vector = "user_vector" in self.outputs
        unrestricted = np.zeros(0, np.int64)

        def compute(stored):
            states, restarted = [], 0
            for i, (user, s) in enumerate(zip(users, stored)):
                state, again = self._stored_state(user, s)
                restarted += again
                ts = encoded[i][1]
                missing = [n for n in self.client_init if n not in state]
                if missing:
                    raise ValueError(f"the stored state of user {user!r} has no {missing} (this --time-input gaps "
                                     "model's client keeps it beside the graph's states): prime() the user")
                if ts is not None and "last_ts" in state:
                    self._check_after(ts, float(np.asarray(state["last_ts"]).reshape(-1)[0]), f"user {user!r}")
                states.append(state)
            results, new, vectors = [None] * len(users), [None] * len(users), [None] * len(users)
            for rnd in range(max(map(len, pieces))):   # piece rnd of every event, then piece rnd + 1
                groups: dict[int, list[int]] = {}      # this round's pieces by their number of items
                for i, p in enumerate(pieces):
                    if rnd < len(p):
                        groups.setdefault(p[rnd][1] - p[rnd][0], []).append(i)
                for rows in groups.values():
                    for at in range(0, len(rows), self.max_batch):
                        chunk = rows[at:at + self.max_batch]
                        cols = [slice(*pieces[i][rnd]) for i in chunk]
                        last = [rnd == len(pieces[i]) - 1 for i in chunk]
                        ins = [self._input("item_ids", np.concatenate(
                            [encoded[i][0][:, c] for i, c in zip(chunk, cols)]), "INT64")]
                        if self.uses_timestamps:     # timestamps, or the gaps from them and each row's last_ts
                            ins += self._time_input(
                                np.concatenate([encoded[i][1][:, c] for i, c in zip(chunk, cols)]),
                                np.concatenate([np.asarray(states[i].get("last_ts", -1.0), np.float64).reshape(1, 1)
                                                for i in chunk]))
                        ins += [self._input(n, np.ascontiguousarray(np.concatenate(
                            [np.asarray(states[i][n]).reshape(self.inputs[n]["shape"][1:])[None] for i in chunk])),
                            self.inputs[n]["datatype"]) for n in self.state_names]
                        ins += self._candidates_input(None if cands is None else [
                            cands[i] if end else unrestricted for i, end in zip(chunk, last)], len(chunk))
                        try:
                            r = self._send(ins, outs)
                        except (self._exc, OSError) as e:
                            raise _piece_error(e, rnd, self.max_new_items) from None
                        top, scores = r.as_numpy("topk_ids"), r.as_numpy("topk_scores")
                        for row, (i, c, end) in enumerate(zip(chunk, cols, last)):
                            state = {**{n: r.as_numpy(f"{n}_out")[row:row + 1].copy() for n in self.state_names},
                                     **({"last_ts": encoded[i][1][:, c.stop - 1:c.stop].copy()}
                                        if self.client_init else {})}
                            if end:
                                results[i] = self._pick(top[row], scores[row], k)
                                new[i] = state_store.tagged(state, self.fingerprint)
                                if vector:
                                    vectors[i] = r.as_numpy("user_vector")[row].copy()
                            else:                    # the next piece's state inputs; stored only after the last
                                states[i] = state
            return (results, restarted, vectors), new

        # with a versioned store, committed only if no other process stored these users meanwhile (else sent again);
        # under the users' locks: no other thread's event of these users between the read and the store
        with self._locks.holding(users):
            (results, restarted, vectors), conflicts = state_store.transact(self.store, users, compute,
                                                                            read=not start)
        with self._count_lock:
            self.restarted += restarted
            self.conflicts += conflicts
        if vector:
            self.last_user_vector = vectors[-1]
        if return_vectors:
            return [(ids, scores, v) for (ids, scores), v in zip(results, vectors)]
        return results

    def recommend(self, user_id, new_items, timestamps=None, k: int | None = None,
                  candidates: Sequence[Any] | None = None) -> list:
        return self.recommend_with_scores(user_id, new_items, timestamps, k, candidates=candidates)[0]

    def prime(self, user_id, history: Sequence[Any], timestamps=None, k: int | None = None,
              candidates: Sequence[Any] | None = None) -> list:
        """(Re)start the user from a whole history, whatever state is stored (a new user, or one whose state a
        replaced model wrote: :class:`StaleStateError`); returns the top-k after it. ONE request, or, for a model
        that caps the new items a request carries (:attr:`max_new_items`: a TensorRT engine's profile,
        ``max_seq_length``) below ``len(history)``, consecutive requests of at most the cap from the initial state,
        each piece's returned states the next one's inputs (``timestamps`` split with the items; ``candidates`` and
        ``k`` apply to the last piece, whose top-k comes back): the same top-k and state. The final state is stored
        once, after the last piece: a piece refused or unanswered part-way stores nothing, so the state stored
        before (if any) is kept and the prime can be sent again."""
        return self.recommend_with_scores(user_id, history, timestamps, k, start=True, candidates=candidates)[0]

    def forget(self, user_id) -> None:
        """Drop the user's stored state (also one that is no state: a corrupt value), under the user's lock: an event
        of that user in flight in this client stores its state first, not after the deletion."""
        user_id = state_store.check_user_id(user_id)
        with self._locks.holding([user_id]):
            state_store.forget(self.store, user_id)

    def close(self) -> None:
        """Close tritonclient's connection (:meth:`_Base.close`) and drop this client's reference to the store (the
        default dict's states are then freed; a store you passed in is yours to close: ``store.close()``).
        Idempotent; afterwards any call raises :class:`export.state_store.ClosedError`."""
        super().close()
        if not isinstance(self.store, state_store.Closed):
            self.store = state_store.Closed(f"the store of ExplicitStateRecommender of model {self.model_name!r}")


class WindowRecommender(_Base):
    """Recommendations from a stateless window model (models without an exact step: SASRec, TiM4Rec, ...): each call
    sends the history's last ``max_seq_length`` items (``max_seq_length`` from the model's config parameters) and,
    for time-aware models, their float64 timestamps."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_len = int(self._param("max_seq_length", 0) or 0)
        if self.max_len < 1 or self._param("kind") != "window":
            raise TritonRecommendError(f"model {self.model_name!r} is not a window model written by "
                                       "python -m export.triton (no kind=window / max_seq_length parameters)")
        self.padding_side = self._param("padding_side", "right")

    def recommend_with_scores(self, history, timestamps=None, k: int | None = None,
                              candidates: Sequence[Any] | None = None, *, return_vector: bool = False) -> tuple:
        """``(top-k external ids, their scores)`` after ``history`` (oldest first), among ``candidates`` when
        given; ``return_vector`` (a ``--user-vector`` model): ``(ids, scores, vector)``, the history's
        ``[vector_size]`` float32 query vector -- this call's own, unlike :attr:`last_user_vector`."""
        self._check_vectors_wanted(return_vector, "return_vector")
        return self.recommend_many([history], None if timestamps is None else [timestamps], k,
                                   None if candidates is None else [candidates], return_vectors=return_vector)[0]

    def recommend_many(self, histories: Sequence, timestamps: Sequence | None = None, k: int | None = None,
                       candidates: Sequence[Sequence[Any] | None] | None = None, *,
                       return_vectors: bool = False) -> list[tuple]:
        """``(top-k external ids, their scores)`` after each of ``histories`` (oldest first; only the last
        ``max_seq_length`` items are sent), and their ``timestamps`` for time-aware models: the histories go as the
        rows of one request (up to the model's ``max_batch_size``), 0-padded to the longest on the model's side.
        ``candidates``: one list of item ids per history (None: not restricted; a ``--candidates`` model).
        ``return_vectors`` (a ``--user-vector`` model): ``(ids, scores, vector)`` per history instead."""
        k = self._check_k(k)
        self._check_vectors_wanted(return_vectors, "return_vectors")
        if len(histories) == 0:
            raise ValueError("no histories given")
        if candidates is not None and len(candidates) != len(histories):
            raise ValueError(f"candidates: one list per history ({len(histories)}), got {len(candidates)}")
        cands = self._encode_candidates(candidates, [f"history {i}" for i in range(len(histories))])
        if self.uses_timestamps and (timestamps is None or len(timestamps) != len(histories)):
            raise ValueError(f"model {self.model_name!r} reads timestamps: give one list per history")
        if not self.uses_timestamps and timestamps is not None:
            self._event_ts(timestamps, 0)                               # refused: the model reads none
        rows = []
        for i, history in enumerate(histories):
            ids = self._encode(history)
            if ids.shape[1] == 0:
                raise ValueError("history is empty" if len(histories) == 1 else f"history {i} is empty")
            if self.n_items is not None:
                bad = ids[(ids < 1) | (ids >= self.n_items)]
                if bad.size:
                    raise ValueError(f"item index {int(bad[0])} out of range 1..{self.n_items - 1}")
            ts = self._check_ts(timestamps[i], ids.shape[1])[0, -self.max_len:] if self.uses_timestamps else None
            rows.append((ids[0, -self.max_len:], ts))
        outs = self._outputs_for(["topk_ids", "topk_scores"])
        results, vectors = [], []
        for at in range(0, len(rows), self.max_batch):
            chunk = rows[at:at + self.max_batch]
            L = max(len(ids) for ids, _ in chunk)
            ids = np.zeros((len(chunk), L), np.int64)
            ts = np.zeros((len(chunk), L), np.float64)
            for b, (row, stamps) in enumerate(chunk):
                cols = slice(0, len(row)) if self.padding_side == "right" else slice(L - len(row), L)
                ids[b, cols] = row
                if stamps is not None:
                    ts[b, cols] = stamps
            ins = [self._input("item_ids", ids, "INT64")]
            if self.uses_timestamps:
                ins.append(self._input("timestamps", ts, "FP64"))
            ins += self._candidates_input(None if cands is None else cands[at:at + self.max_batch], len(chunk))
            try:
                r = self._send(ins, outs)
            except (self._exc, OSError) as e:
                raise _stateless_error(e, "a window request keeps nothing on the server") from None
            top, scores = r.as_numpy("topk_ids"), r.as_numpy("topk_scores")
            results += [self._pick(top[b], scores[b], k) for b in range(len(chunk))]
            if "user_vector" in self.outputs:
                vectors += [v.copy() for v in r.as_numpy("user_vector")[:len(chunk)]]
        if vectors:
            self.last_user_vector = vectors[-1]
        if return_vectors:
            return [(ids, scores, v) for (ids, scores), v in zip(results, vectors, strict=True)]
        return results

    def recommend(self, history, timestamps=None, k: int | None = None,
                  candidates: Sequence[Any] | None = None) -> list:
        """Top-k external ids after ``history`` (oldest first; only the last ``max_seq_length`` items are sent)."""
        return self.recommend_with_scores(history, timestamps, k, candidates)[0]


__all__ = ["TritonRecommender", "ExplicitStateRecommender", "WindowRecommender", "TritonRecommendError",
           "ModelReplacedError", "UnknownItemError", "sequence_id"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m export.triton_client``: this module is a library (the Python client of a served Triton model),
    not a command -- no client command pairs with ``export.triton_server``. It ran nothing and exited 0 whatever it
    was given (``--help`` too): say so in one line on stderr and exit 2 (a usage error, whatever ``argv`` holds), as
    ``python -m export.verify`` does."""
    from .fsutil import EXIT_USAGE, exit_with

    exit_with(EXIT_USAGE, "python -m export.triton_client: a library (the Python client of a served Triton model: "
                          "from export.triton_client import TritonRecommender), not a command; run python -m "
                          "export.triton to write a model repository, or python -m export.triton_server to serve one")


if __name__ == "__main__":
    import sys

    from .fsutil import run_cli

    sys.exit(run_cli(main))
