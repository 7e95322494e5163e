"""``export.state_store``: the stored-state rules both explicit-state clients share, the bytes codec of a state
(header + raw tensors) for key-value stores, and the versioned SQLite store with the compare-and-set transaction that
lets processes share one. NumPy only."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from export.state_store import (FINGERPRINT_KEY, STATE_FORMAT, BytesStore, ConcurrentUpdateError, SQLiteStateStore,
                                StaleStateError, forget, from_bytes, is_versioned, tagged, to_bytes, transact,
                                usable_state)


def _state(seed=0):
    rng = np.random.default_rng(seed)
    return {"conv_state": rng.normal(size=(1, 2, 8, 3)).astype(np.float32),
            "ssm_state": rng.normal(size=(1, 2, 8, 4)).astype(np.float32),
            "last_ts": np.array([[1.6e9 + 0.25]], dtype=np.float64),
            "seen": np.zeros((1, 7), dtype=np.float32), "count": np.array([[3]], dtype=np.int64)}


def test_bytes_round_trip_keeps_every_tensor_dtype_shape_and_the_fingerprint():
    st = tagged(_state(), "sha256:abc")
    back = from_bytes(to_bytes(st))
    assert set(back) == set(st)
    for name, a in st.items():
        if name == FINGERPRINT_KEY:
            assert str(back[name]) == "sha256:abc"
            continue
        assert back[name].dtype == a.dtype and back[name].shape == a.shape
        np.testing.assert_array_equal(back[name], a)
    assert FINGERPRINT_KEY not in from_bytes(to_bytes(_state()))     # untagged stays untagged


def test_bytes_that_are_not_a_state_are_refused_naming_why():
    raw = to_bytes(tagged(_state(), "sha256:abc"))
    with pytest.raises(ValueError, match="truncated: tensor"):
        from_bytes(raw[:-5])
    with pytest.raises(ValueError, match="bytes after its tensors"):
        from_bytes(raw + b"xx")
    with pytest.raises(ValueError, match="header is not JSON"):
        from_bytes(b"\x05\x00\x00\x00hello")
    with pytest.raises(ValueError, match=f"not a stored zoo state of format {STATE_FORMAT!r}"):
        from_bytes(b"\x0d\x00\x00\x00" + b'{"format": 1}')
    with pytest.raises(ValueError, match="tensor list is malformed"):
        from_bytes(b"\x2a\x00\x00\x00" + b'{"format": "zoo-state/1", "tensors": [1]} ')
    with pytest.raises(ValueError, match="2 bytes"):
        from_bytes(b"ab")
    with pytest.raises(TypeError, match="holds numbers"):
        to_bytes({"x": np.array(["a"])})


def _raw(head: dict, body: bytes) -> bytes:
    header = json.dumps({"format": STATE_FORMAT, **head}).encode()
    return len(header).to_bytes(4, "little") + header + body


#: (what is wrong, the header's fields besides its format, the bytes after it, the problem named): headers to_bytes
#: never writes, each once a ZeroDivisionError / OverflowError / RecursionError (which the "unreadable" wrapper let
#: through as a traceback), a misleading count of trailing bytes, or silently read
_NO_STATES = [
    ("item size 0", {"tensors": [["a", "|V0", [3]]]}, b"", r"tensor 'a' has dtype '\|V0'; a state holds numbers"),
    ("str of size 0", {"tensors": [["a", "<U0", [3]]]}, b"", r"tensor 'a' has dtype '<U0'; a state holds numbers"),
    ("objects", {"tensors": [["a", "|O", [1]]]}, bytes(8), r"tensor 'a' has dtype '\|O'; a state holds numbers"),
    ("complex", {"tensors": [["a", "<c8", [1]]]}, bytes(8), r"tensor 'a' has dtype '<c8'"),
    ("a null dtype", {"tensors": [["a", None, [1]]]}, bytes(8), r"tensor 'a' has dtype None"),
    ("a negative dim", {"tensors": [["a", "<f4", [-1]]]}, bytes(4),
     r"tensor 'a' has shape \[-1\]; its dims must be integers >= 0"),
    ("a float dim", {"tensors": [["a", "<f4", [1.5]]]}, bytes(4), r"tensor 'a' has shape \[1.5\]; its dims must be"),
    ("a whole float dim", {"tensors": [["a", "<f4", [1.0]]]}, bytes(4), r"tensor 'a' has shape \[1.0\]; its dims"),
    ("a bool dim", {"tensors": [["a", "<f4", [True]]]}, bytes(4), r"tensor 'a' has shape \[True\]; its dims"),
    ("a str dim", {"tensors": [["a", "<f4", ["1"]]]}, bytes(4), r"tensor 'a' has shape \['1'\]; its dims"),
    ("no array's shape", {"tensors": [["a", "<f4", [0, 2 ** 70]]]}, b"", r"tensor 'a' has shape \[0, 1180.*\], "
     "which no array can have"),
    ("a name twice", {"tensors": [["a", "<f4", [1]], ["a", "<f4", [1]]]}, bytes(8), r"tensor name 'a' is listed twice"),
    ("a name no str", {"tensors": [[5, "<f4", [1]]]}, bytes(4), r"tensor name 5 is no string"),
    ("the fingerprint's name", {"fingerprint": "fp", "tensors": [[FINGERPRINT_KEY, "<f4", [1]]]}, bytes(4),
     rf"tensor name '{FINGERPRINT_KEY}' is the fingerprint's name"),
    ("a fingerprint no str", {"fingerprint": ["fp"], "tensors": []}, b"", r"its fingerprint is list, not a string"),
]


@pytest.mark.parametrize("what,head,body,problem", _NO_STATES, ids=[c[0] for c in _NO_STATES])
def test_a_header_to_bytes_never_writes_is_not_a_stored_state(what, head, body, problem):
    """from_bytes read item size 0 into a ZeroDivisionError (no ValueError: the store's "stored state of user ... is
    unreadable" line was bypassed), dims -1 into "5 bytes after its tensors", float / bool / str dims, a tensor
    listed twice or a fingerprint that is no string as if fine. Each is "not a stored zoo state" naming the problem,
    and a store read names the user."""
    raw = _raw(head, body)
    with pytest.raises(ValueError, match="^not a stored zoo state: " + problem):
        from_bytes(raw)
    with pytest.raises(ValueError, match=r"^the stored state of user 'u' \(a BytesStore value\) is unreadable: not a "
                                         "stored zoo state: " + problem):
        BytesStore({"u": raw}).get("u")


def test_a_header_past_the_json_depth_or_of_impossible_size_is_refused():
    """A header nested deeper than json goes was a RecursionError; a dim past 2**63 an OverflowError (np.prod): both
    are ValueErrors naming the problem, and a long header value is cut short in the line."""
    deep = b"[" * 100_000
    with pytest.raises(ValueError, match="^not a stored zoo state: its header is not JSON: nested too deeply to read$"):
        from_bytes(len(deep).to_bytes(4, "little") + deep)
    with pytest.raises(ValueError, match=r"^stored zoo state truncated: tensor 'a' needs 4722366482869645213696 bytes, "
                                         "4 left$"):
        from_bytes(_raw({"tensors": [["a", "<f4", [2 ** 70]]]}, bytes(4)))
    with pytest.raises(ValueError, match=r"has dtype 'x+\.\.\.; a state holds numbers$") as e:
        from_bytes(_raw({"tensors": [["a", "x" * 100_000, [1]]]}, bytes(4)))
    assert len(str(e.value)) < 200                          # not the 100 kB dtype
    good = to_bytes(tagged(_state(), "fp"))                  # what to_bytes writes still reads
    assert set(from_bytes(good)) == set(_state()) | {FINGERPRINT_KEY}


def test_bytes_store_is_a_store():
    store = BytesStore()
    assert store.get("u") is None and "u" not in store and len(store) == 0
    store["u"] = tagged(_state(), "fp")
    assert "u" in store and isinstance(store.kv["u"], bytes) and str(store.get("u")[FINGERPRINT_KEY]) == "fp"
    assert store.pop("u") is not None and store.pop("u") is None and len(store) == 0


def test_unreadable_stored_states_name_their_user_and_key(tmp_path):
    """A stored value cut short or no state at all: the error said what was wrong with the bytes but not whose they
    were, so the operator of a many-user call could not tell which user to prime or forget. Now it names the user,
    the key and the store (SQLite: the table and the file), and the remedies; each read path."""
    import re
    import sqlite3

    store = SQLiteStateStore(tmp_path / "s.db")
    store["good"], store["trunc"] = _state(), _state()
    with sqlite3.connect(store.path) as raw:
        value = raw.execute("SELECT value FROM zoo_states WHERE key = ?", ('"trunc"',)).fetchone()[0]
        raw.execute("UPDATE zoo_states SET value = ? WHERE key = ?", (value[:-100], '"trunc"'))
    named = (re.escape(f"""the stored state of user 'trunc' (key '"trunc"' in table zoo_states of {store.path}) is """
                       "unreadable: stored zoo state truncated: tensor") + r".*prime\(user, history\) replaces it, "
             r"forget\(user\) drops it")
    for read in (lambda: store.get("trunc"), lambda: store.get_versioned_many(["good", "trunc"]),
                 lambda: transact(store, ["good", "trunc"], lambda s: (None, s)), lambda: store.pop("trunc")):
        with pytest.raises(ValueError, match=named):
            read()
    assert "trunc" not in store and store.get("good") is not None    # pop removed it (forget's way)
    kv = BytesStore({"junk": b"\x05\x00\x00\x00hello"})
    with pytest.raises(ValueError, match=r"stored state of user 'junk' \(a BytesStore value\) is unreadable: not a "
                                         "stored zoo state: its header is not JSON"):
        kv.get("junk")


def test_usable_state_rules():
    st = tagged(_state(), "A")
    assert usable_state(None, "A", "error", "u", "m") is None                 # nothing stored: initial state
    assert usable_state(st, "A", "error", "u", "m") is st
    assert usable_state(st, None, "error", "u", "m") is st                    # a graph without a fingerprint
    assert usable_state(st, "B", "restart", "u", "m") is None
    with pytest.raises(StaleStateError, match="user 'u' was written by another model than m"):
        usable_state(st, "B", "error", "u", "m")
    with pytest.raises(StaleStateError, match="no fingerprint"):
        usable_state(_state(), "B", "error", "u", "m")


def _same_state(a, b):
    return set(a) == set(b) and all(np.array_equal(np.asarray(a[n]), np.asarray(b[n])) for n in a)


def test_sqlite_store_is_a_versioned_store(tmp_path):
    """Dict behaviour, versions counting the writes, str and int user ids kept apart, and the data there for a new
    handle (another worker) on the same file."""
    store = SQLiteStateStore(tmp_path / "states.db")
    assert is_versioned(store) and not is_versioned({}) and not is_versioned(BytesStore())
    assert store.get("u") is None and store.get_versioned("u") == (None, 0) and "u" not in store and len(store) == 0
    with pytest.raises(KeyError):
        store["u"]
    a, b = tagged(_state(0), "fp"), tagged(_state(1), "fp")
    store["u"] = a
    store[7] = b
    assert _same_state(store["u"], a) and _same_state(store.get(7), b) and "7" not in store and 7 in store
    store["u"] = b
    state, version = store.get_versioned("u")
    assert version == 2 and _same_state(state, b) and str(state[FINGERPRINT_KEY]) == "fp"
    again = SQLiteStateStore(tmp_path / "states.db")
    assert len(again) == 2 and sorted(map(str, again)) == ["7", "u"] and _same_state(again["u"], b)
    assert _same_state(again.pop("u"), b) and again.pop("u", "gone") == "gone" and "u" not in store
    assert np.int64(7) in store                                      # numpy ints are ints
    for bad in (1.5, True, ("a", 1), None):
        with pytest.raises(TypeError, match="must be a str or an int"):
            store.get(bad)
    with pytest.raises(ValueError, match="table must be an identifier"):
        SQLiteStateStore(tmp_path / "x.db", table="states; DROP TABLE x")
    for bad in (":memory:", ""):
        with pytest.raises(ValueError, match="needs a database file"):
            SQLiteStateStore(bad)
    import pickle

    copy = pickle.loads(pickle.dumps(store))                         # handed to a worker process as its path
    assert copy.path == store.path and _same_state(copy[7], store[7])
    other = SQLiteStateStore(tmp_path / "states.db", table="other_model")
    assert len(other) == 0 and len(store) == 1


def test_sqlite_commit_is_compare_and_set_over_all_its_keys(tmp_path):
    """A commit stores every key's new state only if none of their versions moved since read; one stale version
    stores nothing of it (all or nothing), and a row that is not a state is refused naming why."""
    store = SQLiteStateStore(tmp_path / "s.db")
    a, b, c = (tagged(_state(i), "fp") for i in range(3))
    assert store.commit([("x", 0, a), ("y", 0, a)])                  # both absent: version 0
    assert store.get_versioned("x")[1] == 1
    assert not store.commit([("x", 1, b), ("y", 0, b)])              # y moved (0 -> 1): nothing stored
    assert _same_state(store["x"], a) and _same_state(store["y"], a)
    assert store.commit([("x", 1, b), ("y", 1, c)])
    assert _same_state(store["x"], b) and _same_state(store["y"], c) and store.get_versioned("y")[1] == 2
    store.pop("x")
    assert not store.commit([("x", 2, c)]) and store.commit([("x", 0, c)])   # deleted: back to absent
    import sqlite3

    with sqlite3.connect(store.path) as raw:
        raw.execute("UPDATE zoo_states SET value = ? WHERE key = ?", (b"junk", '"y"'))
    with pytest.raises(ValueError, match="not a stored zoo state"):
        store.get("y")
    assert store.version("y") == 2 and store.version("nobody") == 0
    # a prime (read=False) overwrites what is no state, asking only for its version; forget removes one
    assert transact(store, ["y"], lambda stored: (stored, [a]), read=False) == ([None], 0)
    assert _same_state(store["y"], a) and store.version("y") == 3
    with sqlite3.connect(store.path) as raw:
        raw.execute("UPDATE zoo_states SET value = ? WHERE key = ?", (b"junk", '"y"'))
    forget(store, "y")
    forget(store, "nobody")
    assert "y" not in store
    plain = BytesStore({"u": b"junk"})
    forget(plain, "u")
    assert "u" not in plain


def test_transact_runs_again_on_the_newer_state_when_another_writer_got_in_first(tmp_path):
    """``transact`` on a versioned store: a write by another handle (process) between the read and the commit makes
    the commit fail; the computation runs again on the newer state and that result is the one returned and stored.
    A plain store is read and written once; a computation that raises stores nothing; a writer that always gets in
    first ends in ConcurrentUpdateError with nothing stored."""
    path = tmp_path / "s.db"
    store, rival = SQLiteStateStore(path), SQLiteStateStore(path)
    count = lambda n: {"count": np.array([[n]], np.int64)}            # noqa: E731
    store["u"] = count(1)
    seen = []

    def add_one(stored):
        n = int(stored[0]["count"][0, 0])
        seen.append(n)
        if len(seen) == 1:
            rival["u"] = count(10)                                     # another process's event, meanwhile
        return n + 1, [count(n + 1)]

    assert transact(store, ["u"], add_one) == (11, 1)
    assert seen == [1, 10] and int(store["u"]["count"][0, 0]) == 11
    plain = {"u": count(1)}
    assert transact(plain, ["u"], lambda s: (None, [count(int(s[0]["count"][0, 0]) + 1)])) == (None, 0)
    assert int(plain["u"]["count"][0, 0]) == 2
    assert transact(store, ["u"], lambda s: (s[0] is None, [count(0)]), read=False) == (True, 0)   # prime

    def fails(stored):
        raise ValueError("refused event")

    with pytest.raises(ValueError, match="refused event"):
        transact(store, ["u", "v"], fails)
    assert "v" not in store and int(store["u"]["count"][0, 0]) == 0

    def always_late(stored):
        rival["u"] = count(99)
        return None, [count(-1)]

    with pytest.raises(ConcurrentUpdateError, match="changed under 3 commits in a row"):
        transact(store, ["u"], always_late, retries=2)
    assert int(store["u"]["count"][0, 0]) == 99


def test_sqlite_reads_a_call_s_users_in_one_query(tmp_path):
    """``get_versioned_many`` equals ``get_versioned`` key by key (absent keys, more keys than one query binds), and
    ``transact`` reads a call's users through it."""
    store = SQLiteStateStore(tmp_path / "s.db")
    for u in range(0, 1200, 2):
        store[u] = {"h": np.full((1, 2), u, np.float32)}
    store[4] = {"h": np.full((1, 2), 4, np.float32)}                  # version 2
    keys = list(range(1200)) + ["absent"]
    many = store.get_versioned_many(keys)
    assert len(many) == len(keys) and all(
        (a is None and b is None or _same_state(a, b)) and va == vb
        for (a, va), (b, vb) in zip(many, (store.get_versioned(k) for k in keys)))
    assert many[4][1] == 2 and many[3] == (None, 0) and many[-1] == (None, 0)
    calls = []
    real = store.get_versioned_many
    store.get_versioned_many = lambda ks: calls.append(list(ks)) or real(ks)
    assert transact(store, [2, 3], lambda st: ([s is None for s in st], [_state(), _state()]))[0] == [False, True]
    assert calls == [[2, 3]]


def test_sqlite_expire_drops_the_users_idle_that_long(tmp_path):
    """``expire(idle_seconds)`` deletes the states last written at least that long ago and keeps the others; an
    expired user's next commit starts from absent (version 0); a table made before the ``updated`` column gets it."""
    import sqlite3
    import time

    store = SQLiteStateStore(tmp_path / "s.db")
    for u in ("old", "older", "fresh"):
        store[u] = _state()
    with sqlite3.connect(store.path) as raw:
        raw.execute("UPDATE zoo_states SET updated = ? WHERE key IN (?, ?)", (time.time() - 7200, '"old"', '"older"'))
    assert store.expire(3600) == 2 and sorted(store) == ["fresh"]
    assert store.expire(3600) == 0 and store.version("old") == 0 and store.commit([("old", 0, _state(1))])
    assert store.expire(0) == 2 and len(store) == 0
    with pytest.raises(ValueError, match="idle_seconds must be"):
        store.expire(-1)
    with sqlite3.connect(tmp_path / "before.db") as raw:
        raw.execute("CREATE TABLE zoo_states (key TEXT PRIMARY KEY, version INTEGER NOT NULL, value BLOB NOT NULL)")
        raw.execute("INSERT INTO zoo_states VALUES (?, 1, ?)", ('"u"', to_bytes(_state())))
    before = SQLiteStateStore(tmp_path / "before.db")
    assert _same_state(before["u"], _state()) and before.expire(3600) == 1       # written at time 0


def test_sqlite_versions_never_repeat_across_deletes(tmp_path):
    """A commit built on a state read before the user was deleted (``pop``, :meth:`expire`) is refused, also once the
    user's new state has reached the version read again: no event written since is lost. A new state starts above
    the floor (the highest version a deleted state had), on every handle of the file; without deletes a version
    counts the commits."""
    import sqlite3
    import time

    S = lambda x: {"h": np.full((1, 2), x, np.float32)}              # noqa: E731
    store = SQLiteStateStore(tmp_path / "s.db")
    assert store.commit([("u", 0, S(1))]) and store.commit([("u", 1, S(2))])
    _, read = store.get_versioned("u")                                # a worker reads version 2 ...
    store.pop("u")                                                    # ... the user is deleted ...
    assert store.commit([("u", 0, S(10))]) and store.commit([("u", store.version("u"), S(11))])   # ... anew
    assert not store.commit([("u", read, S(3))])                     # the late commit: refused
    assert store["u"]["h"][0, 0] == 11 and store.version("u") == 4     # 3 and 4: above the floor, 2
    other = SQLiteStateStore(tmp_path / "s.db")                       # another process's handle
    other.pop("u")
    store["u"] = S(20)                                                # an unconditional write starts above too
    assert store.version("u") == 5 and not store.commit([("u", 4, S(3))])
    store["v"] = S(0)
    assert store.version("v") == 5                                    # every new user: floor + 1
    # expire raises the floor to the highest version it deletes
    assert store.commit([("v", 5, S(1))]) and store.commit([("v", 6, S(2))])
    with sqlite3.connect(store.path) as raw:
        raw.execute("UPDATE zoo_states SET updated = ? WHERE key = ?", (time.time() - 7200, '"v"'))
    assert store.expire(3600) == 1 and store.commit([("v", 0, S(7))]) and store.version("v") == 8
    assert not store.commit([("v", 7, S(3))])
    # transact: the worker whose read came before the delete reads again and computes on the new state
    seen = []

    def bump(stored):
        seen.append(int(stored[0]["h"][0, 0]))
        if len(seen) == 1:
            other.pop("v")
            other.commit([("v", 0, S(100))])
        return None, [S(seen[-1] + 1)]

    assert transact(store, ["v"], bump) == (None, 1) and seen == [7, 100] and store["v"]["h"][0, 0] == 101
    with pytest.raises(TypeError, match="version read of user 'u' must be an int"):
        store.commit([("u", 5.0, S(0))])
    with pytest.raises(ValueError, match="version read of user 'u' must be >= 0"):
        store.commit([("u", -1, S(0))])
    with pytest.raises(ValueError, match="user 'u' is written twice in one commit"):
        store.commit([("u", 5, S(0)), ("u", 5, S(1))])
    with pytest.raises(ValueError, match=r"commit write 0 must be \(key, version read, state\)"):
        store.commit([("u", 5)])


def test_sqlite_database_of_before_the_version_floor_keeps_working(tmp_path):
    """A database an earlier version wrote (no version floor table) opens with its states and versions as they were;
    the floor table is created (at 0) and from then on a delete's versions do not come back."""
    import sqlite3

    path = tmp_path / "before.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE zoo_states (key TEXT PRIMARY KEY, version INTEGER NOT NULL, value BLOB NOT NULL, "
                    "updated REAL NOT NULL DEFAULT 0)")
        raw.executemany("INSERT INTO zoo_states VALUES (?, ?, ?, 0)",
                        [('"u"', 7, to_bytes(_state(0))), ('"w"', 2, to_bytes(_state(1)))])
    store = SQLiteStateStore(path)
    assert store.get_versioned("u")[1] == 7 and _same_state(store["w"], _state(1)) and len(store) == 2
    with sqlite3.connect(path) as raw:
        assert raw.execute('SELECT floor FROM "zoo_states:version_floor"').fetchall() == [(0,)]
    assert store.commit([("u", 7, _state(2))]) and store.pop("u") is not None
    assert store.commit([("u", 0, _state(3))]) and store.version("u") == 9
    assert SQLiteStateStore(path).version("u") == 9                   # opened again: the floor kept, not reset
    store.pop("u")
    assert store.commit([("fresh", 0, _state())]) and store.version("fresh") == 10


def test_sqlite_table_named_by_a_sql_keyword(tmp_path):
    """A table name that is an SQL keyword (``order``, ``select``) is quoted in every statement: each store works, and
    apart from the others in the file."""
    path = tmp_path / "s.db"
    order, select = SQLiteStateStore(path, table="order"), SQLiteStateStore(path, table="select")
    order["u"] = _state(0)
    assert order.commit([("u", 1, _state(1)), (2, 0, _state(2))]) and select.commit([("u", 0, _state(3))])
    assert len(order) == 2 and sorted(map(str, order)) == ["2", "u"] and "u" in order and 2 not in select
    assert order.get_versioned_many(["u", 2])[0][1] == 2 and _same_state(select["u"], _state(3))
    assert transact(order, [2], lambda st: (None, [_state(4)]), read=False) == (None, 0) and order.version(2) == 2
    assert _same_state(order.pop("u"), _state(1)) and order.expire(0) == 1 and len(order) == 0
    assert len(select) == 1 and SQLiteStateStore(path, table="order").commit([("u", 0, _state())])
    assert order.version("u") == 3                                    # above the floor pop and expire raised


def test_sqlite_checkpoints_run_in_one_background_thread_per_process(tmp_path):
    """The connections serving events never checkpoint (their commits stay in the WAL, the database file does not
    grow); the process's checkpoint thread copies them into the database file within ``checkpoint_every`` seconds,
    and ends once no store of the file is left. ``checkpoint_every=None``: SQLite's own checkpoints."""
    import gc
    import time

    from export import state_store

    big = {"h": np.zeros((1, 8192), np.float32)}                      # 32 KB a state
    idle = SQLiteStateStore(tmp_path / "idle.db", checkpoint_every=3600)
    for u in range(40):
        idle[u] = big
    assert os.path.getsize(tmp_path / "idle.db") < 100_000 < os.path.getsize(tmp_path / "idle.db-wal")
    busy = SQLiteStateStore(tmp_path / "busy.db", checkpoint_every=0.05)
    for u in range(40):
        busy[u] = big
    deadline = time.monotonic() + 10
    while os.path.getsize(tmp_path / "busy.db") < 40 * 32_768 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.getsize(tmp_path / "busy.db") >= 40 * 32_768
    key = (os.getpid(), os.path.realpath(busy.path))
    assert key in state_store._CHECKPOINTERS
    del busy
    gc.collect()
    while key in state_store._CHECKPOINTERS and time.monotonic() < deadline:
        time.sleep(0.05)
    assert key not in state_store._CHECKPOINTERS
    auto = SQLiteStateStore(tmp_path / "auto.db", checkpoint_every=None)
    for u in range(160):                                            # 5 MB: past SQLite's 1,000 pages (4 MB)
        auto[u] = big
    assert os.path.getsize(tmp_path / "auto.db") > 1_000_000
    assert (os.getpid(), os.path.realpath(auto.path)) not in state_store._CHECKPOINTERS
    with pytest.raises(ValueError, match="checkpoint_every must be a positive"):
        SQLiteStateStore(tmp_path / "x.db", checkpoint_every=0)


@pytest.mark.parametrize("limit", [32_768, None])
def test_sqlite_wal_shrinks_back_after_a_burst(tmp_path, limit):
    """SQLite reuses its WAL file without shrinking it: after a 0.8 MB burst (below the 1 MiB where writers
    truncate it themselves, :data:`export.state_store.WRITERS_STEP_IN`) of commits the file keeps that size for
    good, unless ``wal_size_limit`` (``journal_size_limit``) cuts it back when the WAL starts over after a checkpoint.
    The store's settings travel with it (pickled as its arguments) and bad limits are refused. (The checkpoint is run
    here, with the store's thread asleep: a thread waking mid-burst made this test flaky; the thread's own rounds are
    :func:`test_sqlite_checkpoints_run_in_one_background_thread_per_process`'s.)"""
    import pickle
    import sqlite3

    big = {"h": np.zeros((1, 8192), np.float32)}                      # 32 KB a state
    store = SQLiteStateStore(tmp_path / "s.db", checkpoint_every=3600, wal_size_limit=limit)
    for u in range(16):
        store[u] = big
    wal = tmp_path / "s.db-wal"
    assert os.path.getsize(wal) > 16 * 32_768
    checkpointer = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    assert checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0     # copied the whole burst
    checkpointer.close()
    assert os.path.getsize(tmp_path / "s.db") >= 16 * 32_768 and os.path.getsize(wal) > 16 * 32_768
    store["after"] = {"h": np.zeros((1, 4), np.float32)}            # the next writer starts the WAL over
    if limit is None:
        assert os.path.getsize(wal) > 16 * 32_768
    else:
        assert os.path.getsize(wal) <= limit + 2 * 4096 + 32, os.path.getsize(wal)
    assert store["after"]["h"].shape == (1, 4) and len(store) == 17
    assert pickle.loads(pickle.dumps(store)).wal_size_limit == limit
    for bad in (-1, 1.5, True, "64M"):
        with pytest.raises(ValueError, match="wal_size_limit must be a number of bytes"):
            SQLiteStateStore(tmp_path / "x.db", wal_size_limit=bad)


def _sustained_writes(store, wal) -> int:
    """Serving-like writes into ``store`` (a commit, then ~100 us of a model's compute, without pause) until 32 MB
    are written, however long that takes (a slow machine writes them more slowly; no throughput is asserted): the WAL
    file's peak size."""
    import time

    state = {"h": np.zeros((1, 1024), np.float32)}                   # 4 KB a state
    written, peak = 0, 0
    while written < 32e6:
        for u in range(64):
            store[u] = state
            t = time.perf_counter()
            while time.perf_counter() - t < 1e-4:                    # the model's compute between two events
                pass
        written += 64 * 4096
        peak = max(peak, os.path.getsize(wal))
    return peak


@pytest.mark.parametrize("limit", [262_144, None])
def test_sqlite_wal_stays_bounded_under_sustained_writes(tmp_path, limit):
    """Serving-like writes: a PASSIVE checkpoint never catches up with them, so SQLite never starts the WAL over and
    without a limit it holds everything written (tens of MB here; gigabytes an hour when serving). With
    ``wal_size_limit`` the checkpoint thread truncates it once past the limit: it stays within the limit plus a few
    checkpoint intervals of writes."""
    store = SQLiteStateStore(tmp_path / "s.db", checkpoint_every=0.02, wal_size_limit=limit)
    peak = _sustained_writes(store, tmp_path / "s.db-wal")
    if limit is None:
        assert peak > 24e6, peak                 # never started over for most of the run
    else:
        assert peak < _STEP_IN_BOUND, peak
    assert len(store) == 64


# Where writers truncate a WAL whose checkpoint thread fell behind (4 x 256 KiB, and 1 MiB at least; a writer that
# finds the thread checkpointing waits for it, so no more is written meanwhile), plus slack: well below the 24 MB an
# unbounded WAL reaches above. CI saw 17 MB when only the thread truncated (the threshold was 12 MB then), and 6.4 MB
# when writers gave up at once on finding the thread checkpointing and backed off.
_STEP_IN_BOUND = 4e6


def test_sqlite_stores_of_one_file_get_the_strictest_checkpoint_settings(tmp_path):
    """Two stores of one file in a process share a checkpoint thread. It used to keep the first store's settings, so
    a second store's ``wal_size_limit`` (and shorter ``checkpoint_every``) was silently ignored; it now serves the
    strictest of the live stores' settings, from the moment the second store joins (the thread was asleep for the
    first store's 0.5 s, in which the WAL grew to ~45 MB): the WAL stays bounded though the first store set no
    limit."""
    from export import state_store

    loose = SQLiteStateStore(tmp_path / "s.db", checkpoint_every=0.5, wal_size_limit=None, timeout=1.0)
    strict = SQLiteStateStore(tmp_path / "s.db", checkpoint_every=0.02, wal_size_limit=262_144, timeout=5.0)
    strict["x"] = {"h": np.zeros((1, 4), np.float32)}               # opens its connection: joins the thread
    stores = state_store._CHECKPOINTERS[(os.getpid(), os.path.realpath(loose.path))][0]
    assert set(stores) == {loose, strict}
    assert state_store._shared_settings(stores) == (0.02, 262_144, 5.0)
    peak = _sustained_writes(loose, tmp_path / "s.db-wal")              # the writes go through the loose store
    assert peak < _STEP_IN_BOUND, peak
    assert state_store._shared_settings([loose]) == (0.5, None, 1.0)


def test_sqlite_writers_truncate_the_wal_when_the_checkpoint_thread_falls_behind(tmp_path):
    """A checkpoint thread starved of the CPU (here: asleep for an hour) used to leave the WAL to grow until it woke;
    the writers now truncate it themselves once it passes 4 times the limit (1 MiB at least), each right after its
    commit, so it never holds more than that plus one commit's frames (and no more at all once a write returns)."""
    from export import state_store

    store = SQLiteStateStore(tmp_path / "s.db", checkpoint_every=3600, wal_size_limit=262_144)
    wal, state = tmp_path / "s.db-wal", {"h": np.zeros((1, 1024), np.float32)}
    bound = max(state_store.WRITERS_STEP_IN * 262_144, 1 << 20)
    peak = 0
    for i in range(2000):                                            # ~8 MB of states
        store[i % 64] = state
        peak = max(peak, os.path.getsize(wal))
    assert bound - 16_384 < peak <= bound, peak         # up to the bound (a write truncates before it returns)
    assert store.writer_truncations >= 6                             # 8 MB / 1 MiB, each by a writer
    assert len(store) == 64 and store[5]["h"].shape == (1, 1024)


def test_sqlite_writers_back_off_while_the_wal_cannot_be_truncated(tmp_path):
    """A reader holding a read transaction open keeps the WAL from being truncated: the writers' commits still go
    through (the truncation is tried after a commit, waits up to ``min(STEP_IN_WAIT, timeout)`` and its failure is
    not theirs), they try again after a back-off that doubles from 1 s instead of at every commit, and once the
    reader ends the WAL is truncated at the next try."""
    import sqlite3

    store = SQLiteStateStore(tmp_path / "s.db", checkpoint_every=3600, wal_size_limit=0, timeout=0.05)
    state = {"h": np.zeros((1, 1024), np.float32)}
    store["r"] = state
    reader = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM zoo_states").fetchone()     # holds its snapshot: the WAL cannot restart
    tries = []
    real = store._step_in

    def counted(c):
        before = store._wal_shared.retry_at
        real(c)
        if store._wal_shared.retry_at != before:
            tries.append(store._wal_shared.backoff)

    store._step_in = counted
    for i in range(400):                                             # ~1.6 MB: past the 1 MiB floor
        store[i % 64] = state
    assert os.path.getsize(tmp_path / "s.db-wal") > (1 << 20)
    assert tries == [1.0], tries                                     # backed off, not tried at each commit
    store._wal_shared.retry_at = 0.0
    store["y"] = state
    assert tries == [1.0, 2.0]                                       # the reader still holds on: twice as long
    reader.execute("COMMIT")
    reader.close()
    store._wal_shared.retry_at = 0.0                                 # the back-off's wait over
    store["x"] = state
    assert os.path.getsize(tmp_path / "s.db-wal") == 0 and store._wal_shared.backoff == 0.0
    assert store.writer_truncations == 1
    assert len(store) == 67


def test_sqlite_a_failed_wal_truncation_after_a_commit_does_not_fail_the_committed_write(tmp_path, monkeypatch,
                                                                                         caplog):
    """A writer's own WAL truncation runs after its COMMIT. A full disk or an I/O error there used to be raised out of
    the write (``commit``, ``recommend``, ``prime``) although the state was stored, so a caller's retry applied the
    event twice. Now any ``sqlite3.Error`` of the truncation stays in the store: the write returns (``commit``:
    True), the state is stored, the failure is logged, counted in ``writer_truncation_errors`` and backed off like a
    truncation a reader held up."""
    import logging
    import sqlite3

    from export import state_store

    tries = []

    def failing(conn, wait, path):                  # what a full disk (RLIMIT_FSIZE) made the real one raise
        tries.append(path)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(state_store, "_truncate_wal", failing)
    store = SQLiteStateStore(tmp_path / "s.db", checkpoint_every=3600, wal_size_limit=0)
    state = {"h": np.zeros((1, 1024), np.float32)}
    with caplog.at_level(logging.WARNING, logger="export.state_store"):
        for i in range(400):                                         # ~1.6 MB of WAL: past the 1 MiB floor
            store[i % 64] = {"h": np.full((1, 1024), i, np.float32)}
        assert tries, "the WAL never passed the step-in threshold: the test wrote too little"
        assert store.writer_truncation_errors == len(tries) and store._wal_shared.backoff >= 1.0
        assert store.writer_truncations == 0
        store._wal_shared.retry_at = 0.0                             # the back-off over: the next commit tries again
        version = store.version("u")
        assert store.commit([("u", version, state)]) is True         # returned, not raised
    assert len(tries) == store.writer_truncation_errors >= 2
    assert store.version("u") == version + 1 and store["u"]["h"].shape == (1, 1024)
    last = {i % 64: i for i in range(400)}                           # every write stored, the last one wins
    assert all(int(store[key]["h"][0, 0]) == i for key, i in last.items())
    assert any("WAL truncation after a commit failed" in r.getMessage() and "disk I/O error" in r.getMessage()
               for r in caplog.records), caplog.text


def test_sqlite_checkpoint_thread_ends_cleanly_when_its_last_store_goes_while_it_looks(tmp_path, monkeypatch):
    """The garbage collector drops a store from the checkpoint thread's WeakSet at any moment, also between the
    thread's "any store left?" and its reading of their settings. CI caught the thread dying there (ValueError: min()
    of an empty sequence), its file's entry left behind for good; it now works on a snapshot. Here the set answers
    "not empty" and then yields nothing, the way such a race looks to the thread."""
    import threading
    import weakref

    from export import state_store

    class Vanishing(weakref.WeakSet):               # once told to, non-empty when asked but empty when iterated
        vanish = False

        def __iter__(self):
            return iter(()) if self.vanish else super().__iter__()

    monkeypatch.setattr(state_store.weakref, "WeakSet", Vanishing)
    errors = []
    monkeypatch.setattr(threading, "excepthook", lambda a: errors.append(a.exc_value))
    store = SQLiteStateStore(tmp_path / "s.db", checkpoint_every=3600)
    store["u"] = {"h": np.zeros((1, 4), np.float32)}                 # its connection starts the thread
    key = (os.getpid(), os.path.realpath(store.path))
    stores, wake, *_ = state_store._CHECKPOINTERS[key]
    (thread,) = [t for t in threading.enumerate() if t.name == f"zoo-state-checkpoint {store.path}"]
    stores.vanish = True
    wake.set()
    thread.join(10)
    assert not thread.is_alive() and errors == [] and key not in state_store._CHECKPOINTERS, errors


def _fds_on(folder) -> int:
    """Open file descriptors of this process on files under ``folder`` (the database, its -wal and -shm)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder))
        except OSError:                                          # closed meanwhile (the listing's own fd)
            pass
    return n


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in /proc/self/fd (Linux)")
def test_sqlite_close_releases_every_connection_and_the_checkpoint_thread(tmp_path):
    """close() closed only the calling thread's connection: a pool thread's stayed open until the thread ended or
    the garbage collector broke the connection's reference cycle, and the checkpoint thread (with its connection)
    ran until the store object was garbage collected -- a closed store kept in a list held +1 thread and +3 fds
    each, forever. Now close() closes every connection the store opened, in any thread, and stops and joins the
    checkpoint thread (unless another open store of the file uses it), with the object still referenced and the
    garbage collector off; idempotent; any later use raises ClosedError; ``with`` closes."""
    import concurrent.futures
    import gc
    import threading

    from export import state_store
    from export.state_store import ClosedError

    def checkpointers(path):
        return [t for t in threading.enumerate() if t.name == f"zoo-state-checkpoint {path}" and t.is_alive()]

    state = {"h": np.zeros((1, 4), np.float32)}
    gc.disable()
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:        # threads that outlive the store
            kept = []
            for i in range(3):
                store = SQLiteStateStore(tmp_path / f"s{i}.db", checkpoint_every=3600)
                store["main"] = state
                list(pool.map(lambda j: store.__setitem__(f"p{j}", state), range(8)))
                assert checkpointers(store.path) and _fds_on(tmp_path) > 0
                store.close()
                store.close()                                         # idempotent
                kept.append(store)
                assert checkpointers(store.path) == [] and _fds_on(tmp_path) == 0, _fds_on(tmp_path)
                assert (os.getpid(), os.path.realpath(store.path)) not in state_store._CHECKPOINTERS
            for call in (lambda: store.get("main"), lambda: store.__setitem__("x", state), lambda: len(store),
                         lambda: pool.submit(store.get, "main").result()):
                with pytest.raises(ClosedError, match=r"SQLiteStateStore\('.*s2\.db'\) is closed"):
                    call()
            assert store.closed and not any(checkpointers(s.path) for s in kept)
    finally:
        gc.enable()
    # two stores of one file share the thread: closing one leaves it to the other; a store opened later gets one
    path = tmp_path / "shared.db"
    with SQLiteStateStore(path, checkpoint_every=3600) as a, SQLiteStateStore(path, checkpoint_every=3600) as b:
        a["u"] = state
        b["v"] = state
        (thread,) = checkpointers(a.path)
        a.close()
        assert thread.is_alive() and checkpointers(b.path) == [thread] and "u" in b
    assert not thread.is_alive() and _fds_on(tmp_path) == 0 and b.closed
    with SQLiteStateStore(path, checkpoint_every=3600) as c:
        c["w"] = state
        assert len(checkpointers(c.path)) == 1 and sorted(c) == ["u", "v", "w"]
    assert checkpointers(c.path) == [] and _fds_on(tmp_path) == 0


def test_lru_store_keeps_at_most_max_users_evicting_the_least_recently_used():
    """The default dict keeps every user's state for the life of the process (~19 KB a Mamba4Rec user; export/
    README.md): LRUStore bounds it, a read or write making a user the most recent; evictions are counted."""
    import threading

    from export.state_store import LRUStore

    with pytest.raises(ValueError, match="max_users must be a positive int"):
        LRUStore(0)
    store = LRUStore(3)
    for u in "abc":
        store[u] = _state()
    assert store.get("a") is not None                   # a is now the most recent: b goes first
    store["d"] = _state()
    assert sorted(store) == ["a", "c", "d"] and "b" not in store and store.get("b") is None and store.evicted == 1
    assert store["c"] is not None
    with pytest.raises(KeyError):
        store["b"]
    forget(store, "c")
    forget(store, "never")
    assert len(store) == 2 and store.pop("x", "none") == "none"

    def writer(i):
        for j in range(300):
            store[f"{i}-{j}"] = j
            store.get(f"{i}-{j - 1}")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store) == 3 and store.evicted == 1 + 2 + 4 * 300 - 3       # every write kept or counted
