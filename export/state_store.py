"""Users' recurrent states kept in a key-value store between events, tagged with the model that wrote them.

Shared by the two explicit-state clients: :class:`export.runtime.UserStateRecommender` (the step graph in this
process, ONNX Runtime) and :class:`export.triton_client.ExplicitStateRecommender` (the same graph behind Triton). Both
store a user's state as ``{state name: np.ndarray [1, ...], FINGERPRINT_KEY: np.array(fingerprint)}``, so one store
serves either, and a state a replaced model wrote is refused, never fed to the new one.

Several processes may share one store when it is *versioned* (:func:`is_versioned`: ``get_versioned`` and
``commit``, a compare-and-set of several keys at once, as :class:`SQLiteStateStore` and :class:`RedisStateStore`
have): both clients then read a user's state with its version, run the model, and commit only if no other process
wrote that user in between, else read and run again (:func:`transact`). A plain store has no such guarantee across
processes (one writer per user).

A user's versions never repeat, also across the deletion of their state (``pop``, :meth:`SQLiteStateStore.expire`, a
Redis TTL), and each commit adds 1: a commit built on a state read before the user was deleted is thus refused, never
applied over the events stored since. :class:`SQLiteStateStore` starts a new state above the store's *version floor*
(the highest version a deleted state had; in a store nothing was deleted from a version counts the user's commits);
:class:`RedisStateStore` starts it at the server's clock in microseconds, above any version an earlier state of that
user reached (one key per user: Redis Cluster keeps sharding users).

NumPy only (no onnxruntime, no tritonclient), so either client imports it without the other's dependencies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import os
import random
import re
import sqlite3
import threading
import time
import weakref
from collections import Counter, OrderedDict
from typing import Any, Callable, Sequence

import numpy as np

from .fsutil import parse_json

logger = logging.getLogger(__name__)

FINGERPRINT_KEY = "state_fingerprint"
"""Key of the fingerprint stored beside a user's state tensors (:func:`export.onnx.state_fingerprint`)."""

ON_STALE = ("error", "restart")
"""What a client does with a stored state another model wrote: refuse it (:class:`StaleStateError`), or start the
user from the initial state (their earlier history is then ignored)."""


class StaleStateError(ValueError):
    """A stored state was written by another model than the one serving now (its fingerprint differs)."""


class ClosedError(RuntimeError):
    """A store, session or client was used after its ``close()``."""


class Closed:
    """Stands in for what a closed object held (a connection, a client, a store): any use of it raises
    :class:`ClosedError` naming ``what`` was closed, so that a call after ``close()`` says so."""

    def __init__(self, what: str):
        self._what = what

    def _refuse(self, *args, **kwargs):
        raise ClosedError(f"{self._what} is closed (close() was called): open a new one")

    def __getattr__(self, name):
        if name.startswith("__"):                          # copy / pickle / repr probes: no such attribute
            raise AttributeError(name)
        self._refuse()

    __call__ = __getitem__ = __setitem__ = __contains__ = __len__ = __iter__ = _refuse

    def __repr__(self) -> str:
        return f"<closed: {self._what}>"


def check_on_stale(on_stale: str) -> str:
    if on_stale not in ON_STALE:
        raise ValueError(f"on_stale must be one of {ON_STALE}, got {on_stale!r}")
    return on_stale


def stored_tag(stored: dict) -> str | None:
    """The fingerprint a stored state carries, or None."""
    tag = stored.get(FINGERPRINT_KEY)
    return None if tag is None else str(np.asarray(tag).reshape(-1)[0])


def usable_state(stored: dict | None, fingerprint: str | None, on_stale: str, user_id: Any, serving: str,
                 error: Callable[[str], Exception] = StaleStateError) -> dict | None:
    """``stored`` when this model may continue from it; None when the user starts from the initial state (nothing
    stored, or a stale state with ``on_stale="restart"``); ``error(message)`` raised for a stale state otherwise.

    A model without a fingerprint (exported before they existed) accepts every stored state unchecked."""
    if not stored:
        return None
    if fingerprint is None:
        return stored
    tag = stored_tag(stored)
    if tag == fingerprint:
        return stored
    if on_stale == "restart":
        return None
    raise error(
        f"the stored state of user {user_id!r} was written by another model than {serving} serves now, or by an "
        "earlier version of the zoo's runtime that tagged states otherwise (time-aware window graphs' states are "
        "stale once after the upgrade that added window-timestamps to their tag) "
        f"({'no fingerprint: stored before states were tagged' if tag is None else tag[:23] + '...'}; this "
        f"model: {fingerprint[:23]}...): fed to it, it would give wrong recommendations. Replay the user's "
        "history (prime(user, history)), or pass on_stale='restart' to start such users afresh")


def tagged(state: dict[str, np.ndarray], fingerprint: str | None) -> dict[str, np.ndarray]:
    """``state`` with the fingerprint entry added (as it goes into the store)."""
    return state if fingerprint is None else {**state, FINGERPRINT_KEY: np.array(fingerprint)}


STATE_FORMAT = "zoo-state/1"
_LEN = 4                                                   # bytes of the header length, little-endian


def to_bytes(state: dict[str, np.ndarray]) -> bytes:
    """A stored state (its tensors and fingerprint) as one bytes value for a key-value store: a JSON header (format,
    fingerprint, each tensor's name, dtype and shape) and the tensors' raw bytes -- no zip, no pickle (``np.savez``
    costs ~0.2 ms a user; ``bench/RESULTS_USER_STATES.md``)."""
    tensors, tag = [], None
    for name, a in state.items():
        if name == FINGERPRINT_KEY:
            tag = str(np.asarray(a).reshape(-1)[0])
            continue
        a = np.ascontiguousarray(a)
        if a.dtype.kind not in "fiub":
            raise TypeError(f"state tensor {name!r} has dtype {a.dtype}; a state holds numbers")
        tensors.append((name, a))
    header = json.dumps({"format": STATE_FORMAT, "fingerprint": tag,
                         "tensors": [[n, a.dtype.str, list(a.shape)] for n, a in tensors]}).encode()
    return b"".join([len(header).to_bytes(_LEN, "little"), header, *(a.tobytes() for _, a in tensors)])


def _shown(x, limit: int = 60) -> str:
    """``repr(x)`` of a header value for an error line, cut to ``limit`` characters (a header may hold megabytes)."""
    try:
        text = repr(x)
    except RecursionError:                                     # a list nested about as deep as json.loads goes
        return f"a deeply nested {type(x).__name__}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def from_bytes(raw: bytes) -> dict[str, np.ndarray]:
    """:func:`to_bytes`'s value back as ``{name: np.ndarray, FINGERPRINT_KEY: ...}`` (read-only arrays); a value
    that is not one is a ``ValueError`` naming what is wrong: another format, a header that is not JSON (nested too
    deeply included), truncated or trailing bytes, and a header :func:`to_bytes` never writes -- a tensor name that is
    no string, listed twice or the fingerprint's, a dtype that is no number type (``|V0``, of item size 0, ``|O``), a
    shape whose dims are not ints >= 0 (a bool, a float, ``-1``) or that no array can have, a fingerprint that is no
    string."""
    raw = bytes(raw)
    if len(raw) < _LEN:
        raise ValueError(f"not a stored zoo state: {len(raw)} bytes")
    n = int.from_bytes(raw[:_LEN], "little")
    head = parse_json(raw[_LEN:_LEN + n], "not a stored zoo state: its header is not JSON")   # [[[...]]] too
    if not isinstance(head, dict) or head.get("format") != STATE_FORMAT:
        raise ValueError(f"not a stored zoo state of format {STATE_FORMAT!r} (header format "
                         f"{head.get('format') if isinstance(head, dict) else None!r})")
    out, at = {}, _LEN + n
    try:
        tensors = [(name, dtype, shape) for name, dtype, shape in head["tensors"]]
    except (KeyError, TypeError, ValueError):
        raise ValueError("not a stored zoo state: its header's tensor list is malformed") from None
    fingerprint = head.get("fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise ValueError(f"not a stored zoo state: its fingerprint is {type(fingerprint).__name__}, not a string")
    seen = set()
    for name, dtype, shape in tensors:
        if not isinstance(name, str) or name in seen or name == FINGERPRINT_KEY:
            why = ("is no string" if not isinstance(name, str) else "is listed twice" if name in seen
                   else "is the fingerprint's name")
            raise ValueError(f"not a stored zoo state: tensor name {_shown(name)} {why}")
        seen.add(name)
        try:
            dt = np.dtype(dtype) if isinstance(dtype, str) else None
        except (TypeError, ValueError):
            dt = None
        if dt is None or dt.kind not in "fiub":               # what to_bytes writes; |V0 (item size 0), |O never
            raise ValueError(f"not a stored zoo state: tensor {_shown(name)} has dtype {_shown(dtype)}; a state holds "
                             "numbers")
        if not isinstance(shape, list) or any(type(d) is not int or d < 0 for d in shape):   # a bool is no dim
            raise ValueError(f"not a stored zoo state: tensor {_shown(name)} has shape {_shown(shape)}; its dims "
                             "must be integers >= 0")
        size = dt.itemsize * math.prod(shape)                 # exact: np.prod would wrap past 2**63
        if at + size > len(raw):
            raise ValueError(f"stored zoo state truncated: tensor {_shown(name)} needs {size} bytes, {len(raw) - at} "
                             "left")
        try:                                                  # [0, 2**70]: no bytes, but no array has that shape
            out[name] = np.frombuffer(raw, dt, count=size // dt.itemsize, offset=at).reshape(shape)
        except (ValueError, OverflowError):
            raise ValueError(f"not a stored zoo state: tensor {_shown(name)} has shape {_shown(shape)}, which no array "
                             "can have") from None
        at += size
    if at != len(raw):
        raise ValueError(f"stored zoo state has {len(raw) - at} bytes after its tensors")
    if fingerprint is not None:
        out[FINGERPRINT_KEY] = np.array(fingerprint)
    return out


def _decoded(raw: bytes, user: Any, where: str) -> dict[str, np.ndarray]:
    """:func:`from_bytes` of ``user``'s stored value; a value that is no state is a ``ValueError`` naming the user
    and where the value lies (``where``: the key and its store), so that the operator knows what to replace."""
    try:
        return from_bytes(raw)
    except ValueError as e:
        raise ValueError(f"the stored state of user {user!r} ({where}) is unreadable: {e}. prime(user, history) "
                         "replaces it, forget(user) drops it") from None


class BytesStore:
    """States kept as :func:`to_bytes` values in ``kv``, any mapping of bytes (a dict; a Redis client behind a small
    adapter with ``get`` / ``__setitem__`` / ``pop``): the ``store`` argument of both explicit-state clients."""

    def __init__(self, kv=None):
        self.kv = {} if kv is None else kv

    def get(self, key, default=None):
        raw = self.kv.get(key)
        return default if raw is None else _decoded(raw, key, "a BytesStore value")

    def __setitem__(self, key, state: dict[str, np.ndarray]) -> None:
        self.kv[key] = to_bytes(state)

    def pop(self, key, default=None):
        raw = self.kv.pop(key, None)
        return default if raw is None else _decoded(raw, key, "a BytesStore value")

    def __contains__(self, key) -> bool:
        return key in self.kv

    def __len__(self) -> int:
        return len(self.kv)


class LRUStore:
    """A bounded in-process store: at most ``max_users`` states, the least recently used (read or written) evicted
    past it (counted in :attr:`evicted`), thread-safe (one lock): the ``store`` argument of both explicit-state clients
    where the default dict, which keeps every user's state for the life of the process, would grow without bound.

    An evicted user is a new user to the recommender: their next event starts from the initial state (the history
    before it ignored, without an error), as after a Redis ``ttl`` or :meth:`SQLiteStateStore.expire`. Size it above
    the users active within the time you want them kept, or :meth:`prime` users who come back."""

    def __init__(self, max_users: int):
        if isinstance(max_users, bool) or not isinstance(max_users, int) or max_users < 1:
            raise ValueError(f"max_users must be a positive int, got {max_users!r}")
        self.max_users = max_users
        #: states evicted so far
        self.evicted = 0
        self._data: "OrderedDict[Any, Any]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            if key not in self._data:
                return default
            self._data.move_to_end(key)
            return self._data[key]

    def __getitem__(self, key):
        with self._lock:
            self._data.move_to_end(key)                    # KeyError when absent
            return self._data[key]

    def __setitem__(self, key, state) -> None:
        with self._lock:
            self._data[key] = state
            self._data.move_to_end(key)
            while len(self._data) > self.max_users:
                self._data.popitem(last=False)
                self.evicted += 1

    def pop(self, key, *default):
        with self._lock:
            return self._data.pop(key, *default)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self):
        with self._lock:
            return iter(list(self._data))


# ---------------------------------------------------------------------------------------- sharing across processes
class ConcurrentUpdateError(RuntimeError):
    """Other writers changed a user's stored state between every read and commit of :func:`transact` (nothing of the
    call was stored)."""


class CommitOutcomeUnknownError(RuntimeError):
    """A commit got no answer from the store (the connection was lost, a timeout), however often it was sent: it may
    have been stored or not. Sending the event again could apply it twice; read the user's state to know."""


class StoreDataLostError(RuntimeError):
    """The store's server lost its data (a Redis restarted without persistence, flushed, or failed over to a replica
    without the data): users it held states for would silently start from an empty history
    (:meth:`RedisStateStore.get_versioned`)."""


RETRIES = 32
"""Commits :func:`transact` tries before :class:`ConcurrentUpdateError` (each failed one means another writer's
commit of the same user went through: the store as a whole always moves on)."""


def is_versioned(store) -> bool:
    """Whether ``store`` offers compare-and-set: ``get_versioned(key) -> (state or None, version)`` and
    ``commit([(key, version read, new state), ...]) -> bool``, which stores every new state, or none when any key's
    version has moved since it was read. A key's versions must never repeat, also across its deletion (else a commit
    read before the delete would go through once the new state reached that version again, losing its events)."""
    return callable(getattr(store, "get_versioned", None)) and callable(getattr(store, "commit", None))


def check_events(events: Sequence[tuple]) -> list:
    """The users of a batch of ``(user_id, new_items[, timestamps])`` events, checked: at least one event, each of
    two or three parts, no user twice (the second event would need the first one's state); ValueError naming the
    problem otherwise."""
    if len(events) == 0:
        raise ValueError("no events given")
    for i, e in enumerate(events):
        if not isinstance(e, (tuple, list)) or len(e) not in (2, 3):
            raise ValueError(f"event {i} must be (user_id, new_items) or (user_id, new_items, timestamps)")
    users = [e[0] for e in events]
    counts = Counter(users)
    dup = next((u for u in users if counts[u] > 1), None)
    if dup is not None:
        raise ValueError(f"user {dup!r} has two events in one call; send the second after the first")
    return users


def check_user_id(user: Any, where: str = "a user id") -> str | int:
    """``user`` as every user-state store keys it, whatever the store (a dict included; the SQLite and Redis stores
    store its JSON, :meth:`_VersionedStore._user`): a str (numpy's str_ too) or an int (numpy integers become int;
    ``42`` and ``"42"`` are two users). A bool, a float (``7.0`` would continue user 7, a NaN never finds its state
    again), None or anything else raises TypeError naming it."""
    if isinstance(user, str):
        return str(user)
    if isinstance(user, numbers.Integral) and not isinstance(user, (bool, np.bool_)):
        return int(user)
    raise TypeError(f"{where} must be a str or an int (as in every user-state store), got {type(user).__name__} "
                    f"{user!r}")


def checked_users(events: Sequence[tuple]) -> list:
    """The users of ``events`` (:func:`check_events`), each checked by :func:`check_user_id` first (before a list or
    a NaN user meets a hash) and returned as a store keys it."""
    for i, e in enumerate(events):
        if isinstance(e, (tuple, list)) and len(e) in (2, 3):
            check_user_id(e[0], f"the user id of event {i}")
    return [check_user_id(u) for u in check_events(events)]


def forget(store, key) -> None:
    """Remove ``key``'s state from ``store`` (nothing stored: nothing to do), also when the stored value is no state
    (a store that decodes what it pops, e.g. :class:`BytesStore`, raises only after removing it)."""
    try:
        store.pop(key, None)
    except ValueError:
        if key in store:
            raise


class UserLocks:
    """Per-user locks for the threads of one process sharing a recommender (both explicit-state clients): ``n`` locks,
    a user taking the one of its stripe (``hash(user) % n``). ``with locks.holding(users):`` holds the locks of every
    user of a call, taken in index order (two calls never deadlock), so that the events of one user take turns --
    their state read, advanced and stored -- while other users' run side by side (those of a shared stripe wait)."""

    def __init__(self, n: int = 64):
        self.stripes = [threading.Lock() for _ in range(n)]

    def stripe(self, user) -> int:
        """The index of ``user``'s lock in :attr:`stripes`."""
        return hash(user) % len(self.stripes)

    @contextlib.contextmanager
    def holding(self, users: Sequence):
        """Hold the locks of ``users`` (each stripe once, in index order) for the ``with`` block."""
        taken = []
        try:
            for i in sorted({self.stripe(u) for u in users}):
                self.stripes[i].acquire()
                taken.append(i)
            yield
        finally:
            for i in reversed(taken):
                self.stripes[i].release()


def transact(store, keys: Sequence, compute: Callable[[list], tuple[Any, list]], retries: int = RETRIES,
             read: bool = True) -> tuple[Any, int]:
    """Read the states of ``keys``, ``compute(stored states) -> (result, new states)``, store the new states: all of
    them or (``compute`` raising) none. Returns ``(result, conflicts)``.

    With a versioned store (:func:`is_versioned`) the new states are committed only if no other writer (another
    process) stored any of these keys since they were read; otherwise they are read again and ``compute`` runs
    again, up to ``retries`` more times (with a short random pause), then :class:`ConcurrentUpdateError`. ``compute``
    must therefore only compute: its result is the one of the states that were committed on. ``conflicts``: the
    commits refused on the way. With a plain store the states are read and written once, unguarded.

    ``read=False``: ``compute`` gets None for every key, whatever is stored (the states are overwritten, even values
    that are no state: a versioned store with a ``version(key)`` method is asked only for the versions)."""
    keys = list(keys)
    if not is_versioned(store):
        result, new = compute([store.get(k) for k in keys] if read else [None] * len(keys))
        for k, state in zip(keys, new):
            store[k] = state
        return result, 0
    versions_only = not read and callable(getattr(store, "version", None))
    for attempt in range(retries + 1):
        if versions_only:
            got = [(None, store.version(k)) for k in keys]
        elif callable(getattr(store, "get_versioned_many", None)):
            got = store.get_versioned_many(keys)                   # one round trip for all the call's users
        else:
            got = [store.get_versioned(k) for k in keys]
        result, new = compute([state if read else None for state, _ in got])
        if store.commit([(k, version, state) for k, (_, version), state in zip(keys, got, new)]):
            return result, attempt
        time.sleep(random.uniform(0, 0.001 * min(attempt + 1, 10)))
    raise ConcurrentUpdateError(
        f"the stored states of {keys[:3]!r}{' ...' if len(keys) > 3 else ''} changed under {retries + 1} commits in "
        "a row (other processes writing the same users); nothing of this call was stored")


_CHECKPOINTERS: dict = {}      # (pid, database path) -> (the live stores of that file in this process, its thread's
                               # wake-up event, the settings it serves: _Shared, the thread)
_CHECKPOINTERS_LOCK = threading.Lock()
#: held by the checkpoint threads (:func:`_checkpointer`) around each of their calls into SQLite, and taken by this
#: process's fork (:func:`os.register_at_fork`) with :data:`_CHECKPOINTERS_LOCK`: a child forked while such a thread
#: was inside SQLite inherited SQLite's mutexes held by a thread it does not have, and hung for good on its first
#: statement (a pthread mutex: no busy timeout reaches it) -- a gunicorn --preload master that opened a store, a fork
#: pool. Now a fork waits for the call of the moment (a checkpoint: milliseconds) and the child finds both free.
_IN_SQLITE = threading.Lock()


def _before_fork() -> None:
    _CHECKPOINTERS_LOCK.acquire()
    _IN_SQLITE.acquire()


def _after_fork() -> None:
    _IN_SQLITE.release()
    _CHECKPOINTERS_LOCK.release()


if hasattr(os, "register_at_fork"):         # POSIX
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)


def _retry_locked(fn, timeout: float, path: str):
    """``fn()``, again after 20 us - 1 ms pauses while the database is locked by another connection, for up to
    ``timeout`` seconds, then ``sqlite3.OperationalError`` naming ``path``. (SQLite's own busy handler sleeps 1 ms and
    more between tries, so workers contending for the write lock, held ~50 us a commit, would mostly sleep.)"""
    deadline, pause = None, 20e-6
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
            now = time.monotonic()
            deadline = deadline or now + timeout
            if now >= deadline:
                raise sqlite3.OperationalError(
                    f"{path}: the database stayed locked for {timeout:g} s (another connection holds "
                    f"a write transaction open): {e}") from None
            time.sleep(pause)
            pause = min(2 * pause, 1e-3)


def _truncate_wal(conn: sqlite3.Connection, wait: float, path: str, guard=contextlib.nullcontext) -> None:
    """``wal_checkpoint(TRUNCATE)``, tried again by :func:`_retry_locked` for up to ``wait`` seconds while the writer
    lock is taken (SQLite's own busy handler misses the short gaps between the commits of busy writers). ``guard``:
    a context manager held around each try (the checkpoint thread's :data:`_IN_SQLITE`), not across the pauses."""
    def attempt():
        with guard():
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        if busy:                            # a writer or reader held on
            raise sqlite3.OperationalError("database is busy: the TRUNCATE checkpoint waits for the writer")

    _retry_locked(attempt, wait, path)


WRITERS_STEP_IN = 4
"""A writer of a store with a checkpoint thread truncates the WAL itself, just after its commit, when the file has
grown past this many times the ``wal_size_limit`` the thread serves (and past 1 MiB, so that a tiny limit does not
make every event checkpoint): the thread fell behind (starved of the CPU, or of the GIL by busy workers of its
process; CI saw a WAL reach 66 times a 256 KiB limit). So the WAL stays bounded whatever the thread's scheduling;
the thread normally truncates long before (``bench/RESULTS_SQLITE_WAL.md``)."""


STEP_IN_WAIT = 1.0
"""Seconds a writer stepping in (:data:`WRITERS_STEP_IN`) waits at most for the checkpoint or write of another
connection (the checkpoint thread's own, most often) to end before its truncation gives up for a while."""


class _Shared:
    """What the stores of one file in a process share with its checkpoint thread: the WAL limit the thread serves
    (:func:`_shared_settings`), for the writers' :data:`WRITERS_STEP_IN`, and their back-off after a truncation
    that could not finish (another connection read or checkpointed at that moment, or it failed: a full disk, an I/O
    error; counted in ``errors``)."""

    def __init__(self, limit: int | None):
        self.limit, self.retry_at, self.backoff, self.truncations, self.errors = limit, 0.0, 0.0, 0, 0


def _shared_settings(stores) -> tuple[float, int | None, float]:
    """``(checkpoint_every, wal_size_limit, timeout)`` the checkpoint thread of a file serves its live ``stores``
    with: the shortest interval, the smallest WAL limit (None when none sets one) and the longest wait, so that no
    store gets less than it asked for."""
    limits = [s.wal_size_limit for s in stores if s.wal_size_limit is not None]
    return (min(s.checkpoint_every for s in stores), min(limits) if limits else None, max(s.timeout for s in stores))


def _checkpointer(store: "SQLiteStateStore") -> None:
    """Count ``store`` among the stores of its file that this process's checkpoint thread serves, starting the thread
    if there is none: every ``checkpoint_every`` seconds it checkpoints the WAL (PASSIVE: never waits for a writer
    or reader), until no store of that file is left in the process.

    Under sustained writes a PASSIVE checkpoint never catches up with the writers (they append while it copies), so
    SQLite never starts the WAL over and the file grows without bound (about 110-130 MB/s at ~4,400 events/s of 18
    KB states: ``bench/RESULTS_SQLITE_WAL.md``). So when the WAL passes ``wal_size_limit`` the thread also runs a
    TRUNCATE checkpoint: it waits up to ``timeout`` seconds for the writer of the moment, holds new writers while it
    copies what PASSIVE left (little, just after a PASSIVE one) and empties the file.

    Several stores of one file in a process share the thread, which serves the strictest of their settings, read
    again every round (:func:`_shared_settings`); a store joining wakes it, so a shorter interval applies at once.
    Should the thread fall behind, the writers truncate the WAL themselves (:data:`WRITERS_STEP_IN`).
    """
    key = (os.getpid(), os.path.realpath(store.path))
    # not the store itself: the thread must not keep it alive
    path, wal = store.path, store.path + "-wal"
    every = store.checkpoint_every

    def loop():
        nonlocal every
        with _IN_SQLITE:                    # every call of this thread into SQLite: see _IN_SQLITE (fork)
            conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        try:
            while True:
                wake.wait(every)
                wake.clear()
                with _CHECKPOINTERS_LOCK:
                    # a snapshot: the garbage collector may drop a store from the WeakSet at any moment (not under
                    # this lock), so a set found non-empty could be empty by the time it is iterated
                    live = list(stores)
                    # the last store closed (SQLiteStateStore.close: the entry is gone, or another thread's since) or
                    # garbage collected: the thread ends, closing its connection
                    if not live or _CHECKPOINTERS.get(key) is not entry:
                        if _CHECKPOINTERS.get(key) is entry:
                            del _CHECKPOINTERS[key]
                        return
                    every, limit, wait = _shared_settings(live)
                    shared.limit = limit
                    del live                                # the thread must not keep the stores alive
                try:
                    with _IN_SQLITE:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    if limit is not None and os.path.exists(wal) and os.path.getsize(wal) > limit:
                        _truncate_wal(conn, wait, path, guard=lambda: _IN_SQLITE)   # timeout=0: no waits
                except sqlite3.OperationalError:            # busy: another process's thread is checkpointing, or
                    pass                                    # the writers did not let the TRUNCATE in: next round
        finally:
            with _IN_SQLITE:
                conn.close()

    with _CHECKPOINTERS_LOCK:
        entry = _CHECKPOINTERS.get(key)
        if entry is not None:
            entry[0].add(store)
            entry[2].limit = _shared_settings(list(entry[0]))[1]     # a stricter limit holds the writers at once
            store._wal_shared, store._checkpoint = entry[2], (key, entry)
            entry[1].set()
            return
        stores, wake = weakref.WeakSet([store]), threading.Event()
        shared = store._wal_shared = _Shared(store.wal_size_limit)
        thread = threading.Thread(target=loop, name=f"zoo-state-checkpoint {path}", daemon=True)
        entry = _CHECKPOINTERS[key] = (stores, wake, shared, thread)
        store._checkpoint = (key, entry)

    thread.start()


def _quoted(name: str) -> str:
    """``name`` as a quoted SQL identifier (a keyword such as ``order`` is then a name too)."""
    return '"' + name.replace('"', '""') + '"'


class _Connection(sqlite3.Connection):
    """A connection of a :class:`SQLiteStateStore`: a weak reference to it can be taken (the store tracks its
    connections weakly, to close them all), and it records the process that opened it (``pid``)."""

    pid = 0


class _VersionedStore:
    """What the versioned stores share: user ids as text, and the dict reads on top of ``get_versioned``."""

    def _user(self, key) -> str:
        """``key`` (a user id, ``str`` or ``int``: ``42`` and ``"42"`` are two users) as the JSON text it is stored
        under; TypeError for any other type."""
        return json.dumps(check_user_id(key, f"a user id in a {type(self).__name__}"))

    def _writes(self, writes: Sequence[tuple[Any, int, dict]]) -> list[tuple[str, int, bytes]]:
        """``commit``'s ``(key, version read, state)`` triples as ``(key text, version, to_bytes(state))``, checked: a
        version is an int >= 0 (:meth:`get_versioned`'s), no key twice; TypeError / ValueError naming the problem."""
        rows, seen = [], set()
        for i, w in enumerate(writes):
            if not isinstance(w, (tuple, list)) or len(w) != 3:
                raise ValueError(f"commit write {i} must be (key, version read, state), got {w!r}")
            key, version, state = w
            text = self._user(key)
            if isinstance(version, bool) or not isinstance(version, numbers.Integral):
                raise TypeError(f"the version read of user {key!r} must be an int (get_versioned's), got "
                                f"{type(version).__name__} {version!r}")
            if version < 0:
                raise ValueError(f"the version read of user {key!r} must be >= 0 (get_versioned's), got {version}")
            if text in seen:
                raise ValueError(f"user {key!r} is written twice in one commit")
            seen.add(text)
            rows.append((text, int(version), to_bytes(state)))
        return rows

    def get(self, key, default=None):
        state, _ = self.get_versioned(key)
        return default if state is None else state

    def __getitem__(self, key) -> dict:
        state, _ = self.get_versioned(key)
        if state is None:
            raise KeyError(key)
        return state


class SQLiteStateStore(_VersionedStore):
    """States in one SQLite file (:func:`to_bytes` values, WAL journal), shared by the threads and processes of a
    machine -- several serving workers -- with compare-and-set commits (:func:`is_versioned`), so no process loses
    another's event of the same user: ``UserStateRecommender(graph, store=SQLiteStateStore("states.db"))``.

    Keys are user ids, ``str`` or ``int`` (``42`` and ``"42"`` are two users). ``get`` / ``__getitem__`` /
    ``__setitem__`` / ``pop`` / ``in`` / ``len`` as a dict (``__setitem__`` overwrites unconditionally; the clients
    commit instead). :meth:`expire` drops the users idle for a given time (Redis's TTL, run when you choose). Each
    thread and process opens its own connection; the object pickles as its path, so it can be handed to worker
    processes. :meth:`close` (or ``with SQLiteStateStore(path) as store:``) closes every connection it opened, in
    any thread, and stops its checkpoint thread.

    The store's version floor (module docstring) is the one row of the table ``"<table>:version_floor"``, raised in
    the transaction of each ``pop`` and :meth:`expire`; a database made before it gets it at 0 when first opened
    (states deleted by hand with SQL bypass it: delete them with ``pop`` or :meth:`expire`).

    Args:
        path: the database file (created with its table if absent).
        table: the table's name (letters, digits, ``_``; quoted in SQL, so a keyword such as ``order`` is one
            too), so one database may hold several models' states.
        timeout: seconds a writer waits for another's commit before ``sqlite3.OperationalError``.
        synchronous: SQLite's ``synchronous`` setting for this store's connections: ``"NORMAL"`` (default; with the
            WAL journal a commit survives the process crashing, and the last commits may be lost if the machine loses
            power -- those users then continue from an older state) or ``"FULL"`` (every commit synced to disk,
            slower; ``bench/RESULTS_USER_STATES.md``).
        checkpoint_every: seconds between the checkpoints (the WAL's pages copied into the database file, synced) that
            one background thread of each process runs; the connections that serve events do not checkpoint (unless
            that thread falls far behind: ``wal_size_limit``), as a checkpoint's sync would stall the event whose
            commit set it off and, through it, the other workers (``bench/RESULTS_SHARED_STORE.md``). The WAL's
            size is bounded by ``wal_size_limit``. None: SQLite's own checkpoints, every 1,000 pages, on the
            committing connection.
        wal_size_limit: bytes the WAL file may hold. Under sustained writes SQLite never starts a WAL over (a PASSIVE
            checkpoint never catches up with the writers), so it would grow without bound; past this size the
            checkpoint thread runs a TRUNCATE checkpoint, which holds the writers while it copies what is left and
            empties the file: the WAL then peaks at the limit plus one ``checkpoint_every`` of writes, and should the
            thread fall behind the writers truncate it at :data:`WRITERS_STEP_IN` (4) times the limit (1 MiB at least)
            (``bench/RESULTS_SQLITE_WAL.md``: 155 MB at 3,950 events/s of 18 KB states, against 2.2 GB after 20 s
            without a limit; the slowest event slower: 51 ms against 17 ms). It is also SQLite's
            ``journal_size_limit``: the size the file is cut back to when the WAL starts over in a quiet moment (SQLite
            otherwise keeps a burst's size on disk for good). None: neither (the WAL may grow until writes pause). With
            ``checkpoint_every=None`` only the ``journal_size_limit`` part applies. Stores of the same file in one
            process share one checkpoint thread, which serves the strictest of their settings (the shortest
            ``checkpoint_every``, the smallest ``wal_size_limit``, the longest ``timeout``).
    """

    def __init__(self, path, table: str = "zoo_states", timeout: float = 30.0, synchronous: str = "NORMAL",
                 checkpoint_every: float | None = 1.0, wal_size_limit: int | None = 64 << 20):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table or ""):
            raise ValueError(f"table must be an identifier (letters, digits, _), got {table!r}")
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        if os.fspath(path) in ("", ":memory:"):
            raise ValueError(f"SQLiteStateStore needs a database file, got {os.fspath(path)!r}: each connection (one "
                             "a thread) would get a database of its own; a dict is the in-memory store")
        if checkpoint_every is not None and not checkpoint_every > 0:
            raise ValueError(f"checkpoint_every must be a positive number of seconds or None, got {checkpoint_every!r}")
        self.path, self.table, self.timeout, self.synchronous = os.fspath(path), table, float(timeout), synchronous
        # quoted identifiers: the table, its index and the table of its version floor
        self._t, self._index = _quoted(table), _quoted(table + "_updated")
        self._floor = _quoted(table + ":version_floor")
        if wal_size_limit is not None and (isinstance(wal_size_limit, bool) or not isinstance(wal_size_limit, int)
                                           or wal_size_limit < 0):
            raise ValueError(f"wal_size_limit must be a number of bytes >= 0 or None, got {wal_size_limit!r}")
        self.checkpoint_every, self.wal_size_limit = checkpoint_every, wal_size_limit
        self._local = threading.local()
        # every connection this store opened, in any thread (close() closes them all); weak: a thread's connection
        # closes when the thread ends, as before
        self._conns: weakref.WeakSet = weakref.WeakSet()
        self._conns_lock = threading.Lock()
        self._closed = False
        self._read("PRAGMA journal_mode=WAL")
        self._write(self._create)

    def _create(self, c):
        """The table (``updated``: Unix seconds of the state's last write, for :meth:`expire`), its index, and the
        one-row table of its version floor (0 in a new one: nothing deleted yet)."""
        t, f = self._t, self._floor
        c.execute(f"CREATE TABLE IF NOT EXISTS {t} (key TEXT PRIMARY KEY, version INTEGER NOT NULL, "
                  "value BLOB NOT NULL, updated REAL NOT NULL DEFAULT 0)")
        if "updated" not in [row[1] for row in c.execute(f"PRAGMA table_info({t})").fetchall()]:
            c.execute(f"ALTER TABLE {t} ADD COLUMN updated REAL NOT NULL DEFAULT 0")     # a table of before
        c.execute(f"CREATE INDEX IF NOT EXISTS {self._index} ON {t} (updated)")
        c.execute(f"CREATE TABLE IF NOT EXISTS {f} (floor INTEGER NOT NULL)")            # new, or a database of before
        c.execute(f"INSERT INTO {f} (floor) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM {f})")
        return True, None

    def _floor_of(self, c) -> int:
        """The version floor, read inside a write transaction on ``c``."""
        row = c.execute(f"SELECT floor FROM {self._floor}").fetchone()
        if row is None:
            raise RuntimeError(f"{self.path}: the version floor table {self._floor} of {self._t} is empty (its row "
                               "was deleted by hand); open the store again to recreate it")
        return int(row[0])

    def _raise_floor(self, c, sql: str, params=()) -> None:
        """Raise the version floor to the highest version ``sql`` selects (the states about to be deleted)."""
        c.execute(f"UPDATE {self._floor} SET floor = max(floor, coalesce(({sql}), 0))", params)

    def __reduce__(self):
        return type(self), (self.path, self.table, self.timeout, self.synchronous, self.checkpoint_every,
                            self.wal_size_limit)

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise ClosedError(f"SQLiteStateStore({self.path!r}) is closed (close() was called): open a new one")
        local = self._local
        if getattr(local, "pid", None) != os.getpid():           # a new thread, or a forked process: its own
            # no SQLite busy handler (it sleeps whole milliseconds): _retry polls for a lock instead. Used by its
            # thread only; check_same_thread=False lets close() close it from another thread
            conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False,
                                   factory=_Connection)
            conn.pid = os.getpid()
            with self._conns_lock:
                if self._closed:                                 # close() ran meanwhile
                    conn.close()
                    return self._conn()
                self._conns.add(conn)
            local.conn, local.pid = conn, conn.pid
            self._retry(lambda: local.conn.execute(f"PRAGMA synchronous={self.synchronous}"))
            if self.wal_size_limit is not None:
                local.conn.execute(f"PRAGMA journal_size_limit={int(self.wal_size_limit)}").fetchall()
            if self.checkpoint_every is not None:
                local.conn.execute("PRAGMA wal_autocheckpoint=0")
                _checkpointer(self)
        return local.conn

    def _retry(self, fn):
        """``fn()`` through :func:`_retry_locked`, for up to this store's ``timeout``."""
        return _retry_locked(fn, self.timeout, self.path)

    def _read(self, sql: str, params=()) -> list:
        return self._retry(lambda: self._conn().execute(sql, params).fetchall())

    def _write(self, body):
        """``body(connection) -> (keep, result)`` inside one write transaction (the database's write lock taken
        first), committed if ``keep`` else rolled back (as on any error); returns ``result``."""
        c = self._conn()
        self._retry(lambda: c.execute("BEGIN IMMEDIATE"))
        try:
            keep, result = body(c)
            c.execute("COMMIT" if keep else "ROLLBACK")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        if keep:
            self._step_in(c)
        return result

    def _step_in(self, c) -> None:
        """After a commit on ``c``: when the WAL has passed :data:`WRITERS_STEP_IN` times the limit the checkpoint
        thread serves, and 1 MiB (the thread fell behind), truncate it here: this event pays for the copy and sync,
        waiting up to :data:`STEP_IN_WAIT` seconds (and the store's ``timeout`` at most) for a checkpoint or write of
        another connection to end. One that could not finish in that time (a reader held on) leaves the writers of
        this process to try again after a back-off that doubles, from 1 s up to a minute.

        The event is committed before this runs, so no error of the truncation leaves it: a ``sqlite3.Error`` other
        than a lock (a full disk, an I/O error) is logged, counted in :attr:`writer_truncation_errors` and backed off
        the same way. Raised, it would tell the caller that the event failed, and a retry would apply it twice."""
        shared = getattr(self, "_wal_shared", None)
        if shared is None or shared.limit is None:
            return
        try:
            if os.path.getsize(self.path + "-wal") <= max(WRITERS_STEP_IN * shared.limit, 1 << 20):
                return
        except OSError:                             # no WAL file at this moment: nothing to truncate
            return
        if time.monotonic() < shared.retry_at:
            return
        try:
            _truncate_wal(c, min(STEP_IN_WAIT, self.timeout), self.path)
        except sqlite3.Error as e:                  # the commit stands: nothing of this may reach the caller
            if not isinstance(e, sqlite3.OperationalError) or ("locked" not in str(e) and "busy" not in str(e)):
                shared.errors += 1
                logger.warning("%s: the WAL truncation after a commit failed (the commit stands; tried again after "
                               "a back-off): %s: %s", self.path, type(e).__name__, e)
            shared.backoff = min(max(2 * shared.backoff, 1.0), 64.0)
            shared.retry_at = time.monotonic() + shared.backoff
        else:
            shared.backoff = 0.0
            shared.truncations += 1

    @property
    def writer_truncations(self) -> int:
        """How many times this process's writers of this file truncated the WAL because the checkpoint thread had
        fallen behind (:data:`WRITERS_STEP_IN`); 0 while the thread keeps up, and without a checkpoint thread."""
        shared = getattr(self, "_wal_shared", None)
        return 0 if shared is None else shared.truncations

    @property
    def writer_truncation_errors(self) -> int:
        """How many of those truncations failed with an error other than a lock (a full disk, an I/O error): the
        events they followed were committed all the same; each failure is logged (``export.state_store``'s logger)
        and the writers try again after the back-off."""
        shared = getattr(self, "_wal_shared", None)
        return 0 if shared is None else shared.errors

    CLOSE_WAIT = 5.0
    """Seconds :meth:`close` waits at most for the checkpoint thread to end (it ends at once unless a checkpoint is
    running; one that waits for another process's writer ends when that is done, closing its connection)."""

    def close(self) -> None:
        """Release what the store holds in this process: close every connection it opened, in any thread (a pool
        thread's too, at once: not when the thread ends or the garbage collector runs), and stop the file's
        checkpoint thread (joined, :attr:`CLOSE_WAIT` at most) unless another open store of the file in this
        process still uses it. Idempotent; afterwards any use raises :class:`ClosedError` (the database is
        untouched: open a new store on it). Call it once no thread is using the store (a call in flight in another
        thread fails). ``with SQLiteStateStore(path) as store:`` closes it at the end of the block."""
        with self._conns_lock:
            if self._closed:
                return
            self._closed = True
            conns = list(self._conns)
            self._conns = weakref.WeakSet()
        self._local = threading.local()
        for conn in conns:
            if conn.pid == os.getpid():                # a forked child leaves its parent's connections alone
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        key, entry = getattr(self, "_checkpoint", (None, None))
        if entry is None or key[0] != os.getpid():
            return
        with _CHECKPOINTERS_LOCK:
            entry[0].discard(self)
            last = not entry[0] and _CHECKPOINTERS.get(key) is entry
            if last:                                   # a store of the file opened from now on starts a new thread
                del _CHECKPOINTERS[key]
        entry[1].set()                                 # the thread ends, or serves the other stores' settings
        if last and entry[3] is not threading.current_thread():
            entry[3].join(self.CLOSE_WAIT)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> "SQLiteStateStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _key(self, key) -> str:
        return self._user(key)

    def _decoded(self, raw: bytes, key) -> dict[str, np.ndarray]:
        """``key``'s stored value decoded (:func:`from_bytes`), an error naming the user, the key and the table."""
        return _decoded(raw, key, f"key {self._key(key)!r} in table {self.table} of {self.path}")

    def get_versioned(self, key) -> tuple[dict | None, int]:
        """``(state, version)``; ``(None, 0)`` when nothing is stored under ``key``."""
        rows = self._read(f"SELECT value, version FROM {self._t} WHERE key = ?", (self._key(key),))
        return (None, 0) if not rows else (self._decoded(rows[0][0], key), int(rows[0][1]))

    def get_versioned_many(self, keys: Sequence) -> list[tuple[dict | None, int]]:
        """:meth:`get_versioned` of each of ``keys`` in one query (one read transaction: a consistent view)."""
        texts = [self._key(k) for k in keys]
        found = {}
        for at in range(0, len(texts), 500):                       # SQLite's bound-parameter limit
            part = texts[at:at + 500]
            found.update((k, (v, n)) for k, v, n in self._read(
                f"SELECT key, value, version FROM {self._t} WHERE key IN ({', '.join('?' * len(part))})", part))
        return [(self._decoded(found[t][0], k), int(found[t][1])) if t in found else (None, 0)
                for k, t in zip(keys, texts)]

    def version(self, key) -> int:
        """The version of ``key``'s state (0: absent), without reading the state."""
        rows = self._read(f"SELECT version FROM {self._t} WHERE key = ?", (self._key(key),))
        return int(rows[0][0]) if rows else 0

    def commit(self, writes: Sequence[tuple[Any, int, dict]]) -> bool:
        """Store each ``(key, version read, state)`` in one transaction if every key still has the version read
        (0: absent); store nothing and return False if any has moved."""
        rows = self._writes(writes)

        def body(c):                                  # under the write lock: no version moves while checked
            for key, version, _ in rows:
                now = c.execute(f"SELECT version FROM {self._t} WHERE key = ?", (key,)).fetchone()
                if (0 if now is None else int(now[0])) != version:
                    return False, False
            # a new state starts above the floor (no version of a deleted one repeats); a stored one adds 1
            first = self._floor_of(c) + 1 if any(version == 0 for _, version, _ in rows) else None
            now = time.time()
            c.executemany(f"INSERT INTO {self._t} (key, version, value, updated) VALUES (?, ?, ?, ?) "
                          "ON CONFLICT(key) DO UPDATE SET version = excluded.version, value = excluded.value, "
                          "updated = excluded.updated",
                          [(key, version + 1 if version else first, raw, now) for key, version, raw in rows])
            return True, True

        return self._write(body)

    def __setitem__(self, key, state: dict[str, np.ndarray]) -> None:
        key, raw = self._key(key), to_bytes(state)
        self._write(lambda c: (True, c.execute(
            f"INSERT INTO {self._t} (key, version, value, updated) VALUES (?, ?, ?, ?) ON CONFLICT(key) "
            "DO UPDATE SET version = version + 1, value = excluded.value, updated = excluded.updated",
            (key, self._floor_of(c) + 1, raw, time.time()))))

    def expire(self, idle_seconds: float) -> int:
        """Delete the states not written for ``idle_seconds`` or more (users who stayed away that long start
        afresh, as a Redis TTL would have them, above the version floor it raises); returns how many. Run it from
        time to time, e.g. a cron job."""
        if isinstance(idle_seconds, bool) or not isinstance(idle_seconds, (int, float)) or not idle_seconds >= 0:
            raise ValueError(f"idle_seconds must be a non-negative number, got {idle_seconds!r}")
        cut = time.time() - idle_seconds

        def body(c):
            self._raise_floor(c, f"SELECT max(version) FROM {self._t} WHERE updated <= ?", (cut,))
            return True, c.execute(f"DELETE FROM {self._t} WHERE updated <= ?", (cut,)).rowcount

        return self._write(body)

    def pop(self, key, default=None):
        key = self._key(key)

        def body(c):
            row = c.execute(f"SELECT value FROM {self._t} WHERE key = ?", (key,)).fetchone()
            if row is not None:
                self._raise_floor(c, f"SELECT version FROM {self._t} WHERE key = ?", (key,))
                c.execute(f"DELETE FROM {self._t} WHERE key = ?", (key,))
            return True, row

        row = self._write(body)
        return default if row is None else self._decoded(row[0], json.loads(key))

    def __contains__(self, key) -> bool:
        return bool(self._read(f"SELECT 1 FROM {self._t} WHERE key = ?", (self._key(key),)))

    def __len__(self) -> int:
        return int(self._read(f"SELECT COUNT(*) FROM {self._t}")[0][0])

    def __iter__(self):
        return (json.loads(k) for (k,) in self._read(f"SELECT key FROM {self._t}"))


class RedisStateStore(_VersionedStore):
    """States in Redis (or a server speaking its protocol: Valkey, KeyDB), shared by the serving workers of many
    machines, with compare-and-set commits (:func:`is_versioned`) run as one Lua script (atomic on the server):
    ``UserStateRecommender(graph, store=RedisStateStore("redis://cache:6379/0", ttl=30 * 86400))``.

    Each user is a hash at ``prefix + json(user id)`` with the state's :func:`to_bytes` value (``s``) and its version
    (``v``). Keys are user ids, ``str`` or ``int`` (``42`` and ``"42"`` are two users); the dict methods as
    :class:`SQLiteStateStore` (``len`` and iteration count only the keys under the prefix that are a user id's JSON,
    so a store whose prefix extends this one's, ``"zoo:"`` and ``"zoo:m2:"``, is not counted in; end prefixes with a
    separator such as ``:``: a prefix followed by digits, ``"zoo:1"``, would hold the keys of ``"zoo:"``'s int
    users). The object pickles as its URL when built from one, so it can be handed to worker processes.

    A new state's first version is the server's clock (``TIME``) in microseconds, each commit adds 1: an earlier
    state of the user, removed by ``pop`` or by the TTL, cannot have reached it (every commit takes longer than a
    microsecond), so a commit read before the removal is refused, and each call touches only its users' keys. This
    relies on the server's clock not stepping back by more than the age of the removed state (NTP slews, it does not
    step, in normal operation). A write with ``ttl=None`` clears an expiry an earlier write with a ``ttl`` set (a state
    is kept as the last write's store says). Use a ``maxmemory-policy`` that does not evict states behind the store's
    back (``noeviction``, or ``volatile-*`` with a ``ttl``).

    **Redis must keep its data**: enable persistence (``appendonly yes``, or RDB snapshots) and fail over only to
    replicas that hold it. A server that lost it (restarted without persistence, flushed, an empty replica promoted)
    holds no state for anyone, and a missing state looks like a new user. So the store writes a marker key under its
    prefix (:attr:`marker`, ``prefix + "store-epoch"``, a random epoch; not a user id, so not counted) when it is
    opened, and checks it whenever a user has no state: a marker gone, or written anew by another worker, raises
    :class:`StoreDataLostError` naming the likely causes, once per store object and loss (counted in
    :attr:`data_losses`); the users then start afresh (prime them from their histories).

    :meth:`close` (or ``with RedisStateStore(url) as store:``) closes the client of a store built from a URL.

    Commits are idempotent (:meth:`commit`): one whose answer was lost is sent again with the same token and found
    applied, never applied twice; one that never gets an answer raises :class:`CommitOutcomeUnknownError`.

    Args:
        client: a ``redis://`` / ``rediss://`` / ``unix://`` URL (needs the ``redis`` package:
            ``pip install 'ssm-rec-zoo[redis]'``), or a ``redis.Redis`` client (``decode_responses=False``).
        prefix: prepended to every key (no glob characters), so one server may hold several models' states. On a
            Redis Cluster a call's users must share a hash slot: put a hash tag in it (``"zoo:{m4r}:"``) or send
            one user a call.
        ttl: seconds after a user's last commit that Redis drops their state (a user who stays away that long
            starts afresh: the store's TTL instead of Triton's idle timeout); None: kept until popped.
    """

    # A new state's first version: the server's clock in microseconds (exact in Lua's doubles until the year 2255),
    # written with %d (tostring would round it to 14 digits); a stored state's version adds 1.
    # (Redis 3.2-4 replicate a script that reads TIME before writing only as its effects: asked for; 5+ always do)
    _VERSION = """
        if redis.replicate_commands then redis.replicate_commands() end
        local function next_version(v)
            if v == 0 then
                local t = redis.call('TIME')
                v = tonumber(t[1]) * 1000000 + tonumber(t[2])
            else
                v = v + 1
            end
            return string.format('%d', v)
        end"""
    # KEYS: the users; ARGV: the versions read, the states, the ttl (0: none: the key's expiry is cleared, PERSIST),
    # the commit's token. Each key keeps the tokens of its last TOKENS_KEPT commits (``n``: "t1,t2,...,"): a commit
    # sent again after its answer was lost (a dropped connection; redis-py's own retries, or the store's) finds the
    # versions moved by itself, and its token in every key: 2, "applied already", instead of 0, "another writer"
    # (which would have the caller run the event again on the state that holds it: applied twice).
    TOKENS_KEPT = 8
    _COMMIT = _VERSION + """
        local n = #KEYS
        local token = ARGV[2 * n + 2]
        local moved = false
        for i = 1, n do
            if tonumber(redis.call('HGET', KEYS[i], 'v') or '0') ~= tonumber(ARGV[i]) then moved = true break end
        end
        if moved then
            for i = 1, n do
                local seen = redis.call('HGET', KEYS[i], 'n') or ''
                if not string.find(',' .. seen, ',' .. token .. ',', 1, true) then return 0 end
            end
            return 2
        end
        local ttl = tonumber(ARGV[2 * n + 1])
        for i = 1, n do
            local seen = token .. ',' .. (redis.call('HGET', KEYS[i], 'n') or '')
            seen = string.sub(seen, 1, """ + str(TOKENS_KEPT * 17) + """)
            redis.call('HSET', KEYS[i], 'v', next_version(tonumber(ARGV[i])), 's', ARGV[n + i], 'n', seen)
            if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) else redis.call('PERSIST', KEYS[i]) end
        end
        return 1"""
    _SET = _VERSION + """
        local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0') or 0
        redis.call('HSET', KEYS[1], 'v', next_version(v), 's', ARGV[1])
        local ttl = tonumber(ARGV[2])
        if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) else redis.call('PERSIST', KEYS[1]) end
        return 1"""
    _POP = """
        local s = redis.call('HGET', KEYS[1], 's')
        redis.call('DEL', KEYS[1])
        return s"""

    def __init__(self, client, prefix: str = "zoo:state:", ttl: int | None = None):
        if not isinstance(prefix, str) or re.search(r"[*?\[\]\\]", prefix):
            raise ValueError(f"prefix must be a str without glob characters (* ? [ ] \\), got {prefix!r}")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1):
            raise ValueError(f"ttl must be a positive int of seconds or None, got {ttl!r}")
        self.url = client if isinstance(client, str) else None
        if self.url is not None:
            from .deps import require

            client = require("redis", "export.state_store.RedisStateStore").Redis.from_url(self.url)
        kwargs = getattr(client, "get_connection_kwargs", None)
        if callable(kwargs) and kwargs().get("decode_responses"):
            raise ValueError("the Redis client decodes responses to str (decode_responses=True); states are bytes: "
                             "give a client with decode_responses=False, or a URL")
        self.client, self.prefix, self.ttl = client, prefix, ttl
        self._commit = client.register_script(self._COMMIT)
        self._set = client.register_script(self._SET)
        self._pop = client.register_script(self._POP)
        try:
            from redis.exceptions import ConnectionError as _Lost, TimeoutError as _Late

            self._no_answer: tuple = (_Lost, _Late)
        except ImportError:                                # a client of another package: its errors pass through
            self._no_answer = ()
        #: the key of the store's marker (:meth:`_check_marker`): not a user id's JSON, so not counted as a user
        self.marker = prefix + "store-epoch"
        #: how many times this object found the server had lost the store's data (:class:`StoreDataLostError`)
        self.data_losses = 0
        self._marker_lock = threading.Lock()
        self._epoch = self._arm()

    def __reduce__(self):
        if self.url is None:
            raise TypeError("a RedisStateStore built from a client object does not pickle; build it from a URL to "
                            "hand it to worker processes")
        return type(self), (self.url, self.prefix, self.ttl)

    def close(self) -> None:
        """Release what the store holds: a store built from a URL closes its client (the sockets of its connection
        pool, at once rather than when the garbage collector gets to them); a client object you passed in is yours
        and stays open. Idempotent; afterwards any use of the store raises :class:`ClosedError`. ``with
        RedisStateStore(url) as store:`` closes it at the end of the block."""
        client = self.client
        if isinstance(client, Closed):
            return
        where = self.url.split("@")[-1] if self.url else "a client object"
        self.client = self._commit = self._set = self._pop = Closed(f"RedisStateStore({where}, prefix "
                                                                      f"{self.prefix!r})")
        if self.url is not None:
            client.close()
            with contextlib.suppress(Exception):       # redis-py versions whose close() keeps the pool's sockets
                client.connection_pool.disconnect()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return isinstance(self.client, Closed)

    def __enter__(self) -> "RedisStateStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _key(self, key) -> str:
        return self.prefix + self._user(key)

    def _ask(self, key: str, fn):
        """``fn()``, a read of ``key``'s hash; a key of another type is a ValueError naming it."""
        try:
            return fn()
        except Exception as e:                             # redis.ResponseError: WRONGTYPE
            raise self._foreign(key, e) from None

    def _foreign(self, key: str, e: Exception) -> Exception:
        """The error to raise for ``e``, a failed read of ``key``: a key of another type named as such."""
        if "WRONGTYPE" not in str(e):
            return e
        return ValueError(f"Redis key {key!r} holds {self.client.type(key)!r}, not a stored zoo state (a hash of "
                          "'v' and 's'): another application's key under this prefix?")

    def _fields(self, key: str) -> list:
        return self._ask(key, lambda: self.client.hmget(key, ["v", "s"]))

    def _arm(self):
        """The store's marker (``SET NX``: a random epoch, written when the server has none, kept otherwise), as it
        is on the server now; None when the server cannot be reached (armed at the next read of an absent user)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self.marker, os.urandom(8).hex(), nx=True)
            pipe.get(self.marker)
            return pipe.execute()[1]
        except self._no_answer:
            return None

    def _check_marker(self, now=...) -> None:
        """Called when a user has no state: raise :class:`StoreDataLostError` when the store's marker is gone from
        the server or was written anew since this object saw it -- the server lost the store's data (restarted without
        persistence, flushed, failed over to a replica without the data), so that this user, and every other, may
        have had a state. Once per loss and object: the marker is then written again and the users start afresh.
        ``now``: the marker's value read with the user (else read here)."""
        if now is not ... and now is not None and now == self._epoch:
            return
        with self._marker_lock:
            now = self.client.get(self.marker)
            if now is not None and now == self._epoch:         # another thread of this object saw it first
                return
            lost, self._epoch = self._epoch is not None, self._arm()
            if not lost:                                        # armed only now (the server was down at first)
                return
            self.data_losses += 1
        where = (self.url.split("@")[-1] if self.url else "the server") + f", prefix {self.prefix!r}"
        raise StoreDataLostError(
            f"Redis ({where}) lost this store's data: its marker key {self.marker!r} "
            f"{'is gone' if now is None else 'was written anew by another worker'} since this store was opened. "
            "The likely cause: Redis restarted without persistence (appendonly yes / RDB snapshots), was flushed "
            "(FLUSHALL / FLUSHDB), or failed over to a replica without the data. Every user's stored state may be "
            "gone, and users would silently start from an empty history: configure persistence, and prime(user, "
            "history) the users from their histories. The marker is written again: the next events go on (users "
            "without a state start afresh)")

    def _decoded(self, raw: bytes, v, key, k: str) -> tuple[dict, int]:
        """The ``(state, version)`` of ``key`` (at Redis key ``k``) from its fields, errors naming the user."""
        return _decoded(raw, key, f"Redis key {k!r}"), self._version_of(v, key, k)

    @staticmethod
    def _version_of(v, key, k: str) -> int:
        """The version field ``v`` of ``key`` (at Redis key ``k``) as an int; an error naming the user otherwise."""
        try:
            return int(v)
        except (TypeError, ValueError):
            raise ValueError(f"the stored state of user {key!r} (Redis key {k!r}) has the version {v!r}, not an "
                             "int: not a hash this store wrote. prime(user, history) replaces it, forget(user) drops "
                             "it") from None

    def get_versioned(self, key) -> tuple[dict | None, int]:
        """``(state, version)``; ``(None, 0)`` when nothing is stored under ``key`` (:class:`StoreDataLostError`
        when the server lost the store's data meanwhile: :meth:`_check_marker`)."""
        k = self._key(key)
        v, raw = self._fields(k)
        if raw is None:
            self._check_marker()
            return None, 0
        return self._decoded(raw, v, key, k)

    def get_versioned_many(self, keys: Sequence) -> list[tuple[dict | None, int]]:
        """:meth:`get_versioned` of each of ``keys`` in one round trip (a pipeline of ``HMGET``, and the store's
        marker)."""
        texts = [self._key(k) for k in keys]
        pipe = self.client.pipeline(transaction=False)
        for k in texts:
            pipe.hmget(k, ["v", "s"])
        pipe.get(self.marker)
        *answers, marker = pipe.execute(raise_on_error=False)
        out = []
        for key, k, a in zip(keys, texts, answers):
            if isinstance(a, Exception):
                raise self._foreign(k, a)
            v, raw = a
            out.append((None, 0) if raw is None else self._decoded(raw, v, key, k))
        if any(state is None for state, _ in out):
            self._check_marker(None if isinstance(marker, Exception) else marker)
        return out

    def version(self, key) -> int:
        """The version of ``key``'s state (0: absent), without reading the state."""
        k = self._key(key)
        v = self._ask(k, lambda: self.client.hget(k, "v"))
        return 0 if v is None else self._version_of(v, key, k)

    COMMIT_TRIES = 3
    """Times :meth:`commit` sends a commit that got no answer (a lost connection, a timeout): the same commit, so
    one that was applied is recognised as such (its token), never applied twice."""

    def commit(self, writes: Sequence[tuple[Any, int, dict]]) -> bool:
        """Store each ``(key, version read, state)`` atomically (one Lua script) if every key still has the version
        read (0: absent); store nothing and return False if any has moved.

        Idempotent: the commit carries a random token that the script keeps in each key, so a commit sent again
        after its answer was lost (by redis-py's retries, or here: up to :attr:`COMMIT_TRIES` times) and found
        applied returns True, not False (which would have :func:`transact` apply the event a second time). When no
        try gets an answer, :class:`CommitOutcomeUnknownError` says that the commit may have been stored."""
        rows = self._writes(writes)
        keys = [self.prefix + key for key, _, _ in rows]
        args = [v for _, v, _ in rows] + [raw for _, _, raw in rows] + [self.ttl or 0, os.urandom(8).hex()]
        for attempt in range(self.COMMIT_TRIES):
            try:
                return bool(self._commit(keys=keys, args=args))
            except self._no_answer as e:
                if attempt == self.COMMIT_TRIES - 1:
                    users = [json.loads(key) for key, _, _ in rows]
                    raise CommitOutcomeUnknownError(
                        f"the commit of users {users[:3]!r}{' ...' if len(users) > 3 else ''} got no answer from "
                        f"Redis in {self.COMMIT_TRIES} tries ({type(e).__name__}: {e}): it may have been stored or "
                        "not. Do not send the event again (it could be applied twice): the users' stored states "
                        "tell (get_versioned), or prime(user, history) restarts them") from e
        raise AssertionError("unreachable")

    def __setitem__(self, key, state: dict[str, np.ndarray]) -> None:
        self._set(keys=[self._key(key)], args=[to_bytes(state), self.ttl or 0])

    def pop(self, key, default=None):
        k = self._key(key)
        raw = self._pop(keys=[k])
        return default if raw is None else _decoded(raw, key, f"Redis key {k!r}")

    def __contains__(self, key) -> bool:
        return bool(self.client.exists(self._key(key)))

    def _users(self):
        """The user ids stored: the keys under the prefix whose rest is the JSON :meth:`_user` writes for a user id
        (not another store's keys under a longer prefix)."""
        n = len(self.prefix)
        for k in self.client.scan_iter(match=self.prefix + "*", count=1000):
            text = (k.decode(errors="replace") if isinstance(k, bytes) else k)[n:]
            try:
                user = json.loads(text)
            except ValueError:
                continue
            if not isinstance(user, bool) and isinstance(user, (str, int)) and json.dumps(user) == text:
                yield user

    def __len__(self) -> int:
        return sum(1 for _ in self._users())

    def __iter__(self):
        return self._users()


__all__ = ["FINGERPRINT_KEY", "ON_STALE", "RETRIES", "STATE_FORMAT", "StaleStateError", "ClosedError", "Closed",
           "ConcurrentUpdateError", "CommitOutcomeUnknownError", "StoreDataLostError", "UserLocks", "BytesStore",
           "LRUStore", "SQLiteStateStore", "RedisStateStore", "check_on_stale", "stored_tag", "usable_state", "tagged",
           "to_bytes", "from_bytes", "is_versioned", "transact", "forget", "check_events", "check_user_id",
           "checked_users"]
