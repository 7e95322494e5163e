"""Client helpers for the zoo's Triton models (tritonclient, HTTP or gRPC).

Stateful (sequence-batcher) models -- ``export.triton --state implicit`` (onnxruntime / tensorrt backends) and
``--backend python`` (the CPU server of :mod:`export.triton_server`)::

    rec = TritonRecommender("127.0.0.1:8001", "mamba4rec_step_python", protocol="grpc", vocab="repo/<model>/item_vocab.json")
    rec.prime("user-42", history)            # ONE request: sequence_start + the whole history -> top-k
    rec.recommend("user-42", [new_item])     # each event: only the new item(s) -> top-k external ids
    rec.end("user-42")                       # sequence_end: the server frees the state

Sequence ids are Triton correlation ids: ints in ``1 .. 2**63-1`` are used as they are, strings are hashed to a
stable non-zero 63-bit int (:func:`sequence_id`). The first call for an id this client has not seen starts the sequence
(``sequence_start=True``) unless ``start=False`` is given; pass ``start=True`` to restart one.

Explicit-state models (``--state explicit``, dynamic batching) keep no per-user state on the server:
:class:`ExplicitStateRecommender` loads the user's state from a dict-like ``store`` (a dict, a Redis wrapper, ...),
sends it with the new items and stores the returned state -- the recipe for users who pause longer than a Triton
sequence slot lives (``max_sequence_idle_microseconds``).

Errors: unknown external ids raise :class:`zoo.vocab.UnknownItemError` before anything is sent; server-side
rejections (bad item index, a continuation whose state expired, malformed input) raise :class:`TritonRecommendError`
with Triton's message.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any, Sequence

import numpy as np


class TritonRecommendError(RuntimeError):
    """Triton answered a request with an error (the message is Triton's / the model's)."""


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
    if vocab is None:
        return None
    if isinstance(vocab, (str, os.PathLike)):
        from zoo.vocab import ItemVocab

        return ItemVocab.load(str(vocab))
    return vocab


def _module(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as m
    elif protocol == "http":
        import tritonclient.http as m
    else:
        raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
    return m


class _Base:
    def __init__(self, url: str, model_name: str, protocol: str = "grpc", vocab=None, n_items: int | None = None,
                 timeout_s: float = 30.0):
        self.protocol = protocol
        self._m = _module(protocol)
        from tritonclient.utils import InferenceServerException

        self._exc = InferenceServerException
        kw = {"network_timeout": timeout_s, "connection_timeout": timeout_s} if protocol == "http" else {}
        self.client = self._m.InferenceServerClient(url, **kw)
        self.model_name = model_name
        self.vocab = _load_vocab(vocab)
        self.timeout_s = timeout_s
        meta = self._metadata()
        self.inputs = {i["name"]: i for i in meta["inputs"]}
        self.outputs = {o["name"]: o for o in meta["outputs"]}
        if "item_ids" not in self.inputs or "topk_ids" not in self.outputs:
            raise TritonRecommendError(f"model {model_name!r} has no item_ids input / topk_ids output: not a zoo model")
        self.k_max = int(self.outputs["topk_ids"]["shape"][-1])
        self.n_items = n_items or (self.vocab.n_items if self.vocab is not None else None)
        self.uses_timestamps = "timestamps" in self.inputs

    def _metadata(self) -> dict:
        try:
            if self.protocol == "grpc":
                from google.protobuf.json_format import MessageToDict

                md = MessageToDict(self.client.get_model_metadata(self.model_name), preserving_proto_field_name=True)
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

    def _timestamps(self, timestamps, n: int):
        if not self.uses_timestamps:
            return []
        if timestamps is None:
            raise ValueError(f"model {self.model_name!r} reads timestamps: pass one per new item")
        ts = np.asarray(timestamps, dtype=np.float32).reshape(1, -1)
        if ts.shape[1] != n:
            raise ValueError(f"got {ts.shape[1]} timestamps for {n} items")
        return [self._input("timestamps", ts, "FP32")]

    def _check_k(self, k):
        k = self.k_max if k is None else k
        if not isinstance(k, int) or not 1 <= k <= self.k_max:
            raise ValueError(f"k must be an int in 1..{self.k_max} (the model's exported top-K), got {k!r}")
        return k


class TritonRecommender(_Base):
    """Per-event recommendations from a stateful (sequence-batcher) zoo model on Triton.

    Args:
        url: ``host:port`` of Triton's gRPC (default 8001) or HTTP (8000) endpoint.
        model_name: the model's name in the repository.
        protocol: ``"grpc"`` or ``"http"``.
        vocab: ``item_vocab.json`` path or :class:`zoo.vocab.ItemVocab` (None: ids are internal indices).
    Not thread-safe for protocol="http" (tritonclient's HTTP client is not): use one instance per thread.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._live: set[int] = set()
        self._expired: set[int] = set()
        self._lock = threading.Lock()
        self.last_live_sequences: int | None = None

    def _infer(self, sid: int, ids: np.ndarray, start: bool, end: bool, extra=()):
        ins = [self._input("item_ids", ids, "INT64"), *extra]
        outs = [self._m.InferRequestedOutput(n) for n in ("topk_ids", "topk_scores")]
        if "live_sequences" in self.outputs:
            outs.append(self._m.InferRequestedOutput("live_sequences"))
        try:
            r = self.client.infer(self.model_name, ins, outputs=outs, sequence_id=sid, sequence_start=start,
                                  sequence_end=end, timeout=None if self.protocol == "http" else None)
        except self._exc as e:
            msg = str(e.message())
            with self._lock:
                self._live.discard(sid)
                if not start and ("no state" in msg or "START flag" in msg):
                    self._expired.add(sid)     # the server forgot it (idle timeout): the caller must re-prime
            raise TritonRecommendError(msg) from None
        with self._lock:
            (self._live.discard if end else self._live.add)(sid)
            self._expired.discard(sid)
        if "live_sequences" in self.outputs:
            self.last_live_sequences = int(r.as_numpy("live_sequences").reshape(-1)[0])
        return r.as_numpy("topk_ids")[0], r.as_numpy("topk_scores")[0]

    def recommend_with_scores(self, user_or_sequence_id, new_items: Sequence[Any], timestamps=None, k: int | None = None,
                              start: bool | None = None, end: bool = False) -> tuple[list, np.ndarray]:
        """``(top-k external ids, their scores)`` after appending ``new_items`` to the sequence."""
        k = self._check_k(k)
        sid = sequence_id(user_or_sequence_id)
        ids = self._encode(new_items)
        if ids.shape[1] == 0:
            raise ValueError("new_items is empty; to close a sequence call end()")
        if self.n_items is not None:
            bad = ids[(ids < 1) | (ids >= self.n_items)]
            if bad.size:
                raise ValueError(f"item index {int(bad[0])} out of range 1..{self.n_items - 1}")
        if start is None:
            with self._lock:
                if sid in self._expired:
                    raise TritonRecommendError(f"sequence {user_or_sequence_id!r} is gone from the server (idle "
                                               "timeout or server restart): call prime() with its history")
                start = sid not in self._live
        top, sc = self._infer(sid, ids, bool(start), bool(end), self._timestamps(timestamps, ids.shape[1]))
        return self._decode(top[:k]), sc[:k]

    def recommend(self, user_or_sequence_id, new_items: Sequence[Any], timestamps=None, k: int | None = None,
                  start: bool | None = None, end: bool = False) -> list:
        """Top-k external ids after appending ``new_items`` (one event, or several) to the sequence."""
        return self.recommend_with_scores(user_or_sequence_id, new_items, timestamps, k, start, end)[0]

    def prime(self, user_or_sequence_id, history: Sequence[Any], timestamps=None, k: int | None = None) -> list:
        """(Re)start the sequence from a whole history in ONE request; returns the top-k after it."""
        return self.recommend(user_or_sequence_id, history, timestamps, k, start=True)

    def end(self, user_or_sequence_id) -> None:
        """Close the sequence: the server frees its state (an empty END request)."""
        sid = sequence_id(user_or_sequence_id)
        with self._lock:
            if sid not in self._live:
                return
        self._infer(sid, np.zeros((1, 0), np.int64), False, True,
                    self._timestamps(np.zeros((1, 0)), 0) if self.uses_timestamps else ())


class ExplicitStateRecommender(_Base):
    """Recommendations from an explicit-state model (``export.triton --state explicit``): the state travels with each
    request and is kept in ``store`` (dict-like, ``store[key] -> dict name -> np.ndarray``) under the user id.

    Any key-value store works: wrap it so ``get``/``__setitem__``/``pop`` take the user id and (de)serialise the
    arrays (e.g. ``np.savez`` bytes). A missing key means an empty history (zero state).
    """

    def __init__(self, *args, store=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.store = {} if store is None else store
        self.state_names = [n for n in self.inputs if n not in ("item_ids", "timestamps")]
        missing = [f"{n}_out" for n in self.state_names if f"{n}_out" not in self.outputs]
        if not self.state_names or missing:
            raise TritonRecommendError(f"model {self.model_name!r} is not an explicit-state step model "
                                       f"(state inputs {self.state_names}, missing outputs {missing})")

    def _zeros(self):
        out = {}
        for n in self.state_names:
            dt = {"FP32": np.float32, "INT64": np.int64}[self.inputs[n]["datatype"]]
            out[n] = np.zeros([1] + self.inputs[n]["shape"][1:], dt)
        return out

    def recommend_with_scores(self, user_id, new_items, timestamps=None, k: int | None = None):
        k = self._check_k(k)
        ids = self._encode(new_items)
        state = self.store.get(user_id) or self._zeros()
        ins = [self._input("item_ids", ids, "INT64"), *self._timestamps(timestamps, ids.shape[1])]
        ins += [self._input(n, np.ascontiguousarray(state[n]), self.inputs[n]["datatype"]) for n in self.state_names]
        outs = [self._m.InferRequestedOutput(n) for n in ["topk_ids", "topk_scores"] +
                [f"{n}_out" for n in self.state_names]]
        try:
            r = self.client.infer(self.model_name, ins, outputs=outs)
        except self._exc as e:
            raise TritonRecommendError(str(e.message())) from None
        self.store[user_id] = {n: r.as_numpy(f"{n}_out") for n in self.state_names}
        return self._decode(r.as_numpy("topk_ids")[0][:k]), r.as_numpy("topk_scores")[0][:k]

    def recommend(self, user_id, new_items, timestamps=None, k: int | None = None) -> list:
        return self.recommend_with_scores(user_id, new_items, timestamps, k)[0]

    def forget(self, user_id) -> None:
        self.store.pop(user_id, None)


__all__ = ["TritonRecommender", "ExplicitStateRecommender", "TritonRecommendError", "sequence_id"]
