"""``export.state_store.RedisStateStore`` against a real ``redis-server`` (the ``redis_url`` fixture starts one on
loopback; skipped with the reason where none can run): the versioned store's rules as for SQLite -- dict behaviour,
versions, compare-and-set of all a call's users at once -- plus the TTL, foreign keys under the prefix, pickling, and
the recommenders committing through it."""

from __future__ import annotations

import json
import pickle
import uuid

import numpy as np
import pytest

from export.state_store import (FINGERPRINT_KEY, ConcurrentUpdateError, RedisStateStore, forget, is_versioned,
                                tagged, transact)


def _state(seed=0):
    rng = np.random.default_rng(seed)
    return tagged({"h": rng.normal(size=(1, 2, 8)).astype(np.float32),
                   "last_ts": np.array([[1.6e9 + 0.25]], dtype=np.float64)}, "fp")


def _same(a, b):
    return set(a) == set(b) and all(np.array_equal(np.asarray(a[n]), np.asarray(b[n])) for n in a)


@pytest.fixture
def store(redis_url):
    """A store under a prefix of its own (the server is shared by the session)."""
    return RedisStateStore(redis_url, prefix=f"test:{uuid.uuid4().hex}:")


def test_redis_store_is_a_versioned_store(store):
    assert is_versioned(store)
    assert store.get("u") is None and store.get_versioned("u") == (None, 0) and "u" not in store and len(store) == 0
    with pytest.raises(KeyError):
        store["u"]
    a, b = _state(0), _state(1)
    store["u"] = a
    store[7] = b
    assert _same(store["u"], a) and _same(store.get(7), b) and 7 in store and "7" not in store
    first = store.version("u")                                        # a new state: the server's clock (us)
    store["u"] = b
    state, version = store.get_versioned("u")
    assert version == first + 1 and _same(state, b) and str(state[FINGERPRINT_KEY]) == "fp"
    assert sorted(map(str, store)) == ["7", "u"] and len(store) == 2
    again = pickle.loads(pickle.dumps(store))                         # handed to a worker as its URL
    assert again.url == store.url and _same(again[7], b)
    assert _same(again.pop("u"), b) and again.pop("u", "gone") == "gone" and "u" not in store
    for bad in (1.5, True, None, ("a", 1)):
        with pytest.raises(TypeError, match="must be a str or an int"):
            store.get(bad)
    other = RedisStateStore(store.url, prefix=store.prefix + "other:")
    assert len(other) == 0


def test_redis_commit_is_compare_and_set_over_all_its_keys(store):
    a, b, c = (_state(i) for i in range(3))
    assert store.commit([("x", 0, a), ("y", 0, a)])
    vx, vy = store.version("x"), store.version("y")
    assert not store.commit([("x", vx, b), ("y", 0, b)])             # y moved: nothing stored
    assert _same(store["x"], a) and _same(store["y"], a)
    assert store.commit([("x", vx, b), ("y", vy, c)])
    assert _same(store["x"], b) and _same(store["y"], c) and store.get_versioned("y")[1] == vy + 1
    store.pop("x")
    assert not store.commit([("x", vx + 1, c)]) and store.commit([("x", 0, c)])
    rival = RedisStateStore(store.url, prefix=store.prefix)          # another process's handle
    seen = []

    def bump(stored):
        n = int(stored[0]["h"][0, 0, 0]) if stored[0] is not None else 0
        seen.append(n)
        if len(seen) == 1:
            rival["z"] = {"h": np.full((1, 2, 8), 10, np.float32)}
        return n + 1, [{"h": np.full((1, 2, 8), n + 1, np.float32)}]

    store["z"] = {"h": np.full((1, 2, 8), 1, np.float32)}
    assert transact(store, ["z"], bump) == (11, 1) and seen == [1, 10] and store["z"]["h"][0, 0, 0] == 11

    def always_late(stored):
        rival["z"] = {"h": np.zeros((1, 2, 8), np.float32)}
        return None, [{"h": np.ones((1, 2, 8), np.float32)}]

    with pytest.raises(ConcurrentUpdateError):
        transact(store, ["z"], always_late, retries=2)
    assert store["z"]["h"].sum() == 0


def test_redis_ttl_and_foreign_keys(store):
    """Each commit (re)sets the TTL; a key under the prefix that is not a zoo state is refused naming it; the
    options are checked."""
    import redis

    timed = RedisStateStore(store.url, prefix=store.prefix, ttl=3600)
    timed["u"] = _state()
    raw = redis.Redis.from_url(store.url)
    assert 3500 < raw.ttl(store.prefix + '"u"') <= 3600
    raw.persist(store.prefix + '"u"')
    assert timed.commit([("u", timed.version("u"), _state(1))]) and 3500 < raw.ttl(store.prefix + '"u"') <= 3600
    store["forever"] = _state()
    assert raw.ttl(store.prefix + '"forever"') == -1
    raw.set(store.prefix + '"foreign"', b"hello")
    with pytest.raises(ValueError, match=r"holds .*string.*not a stored zoo state"):
        store.get("foreign")
    raw.hset(store.prefix + '"junk"', mapping={"v": 1, "s": b"junk"})
    with pytest.raises(ValueError, match="not a stored zoo state"):
        store.get("junk")
    with pytest.raises(ValueError, match="not a stored zoo state"):
        store.version("foreign")
    with pytest.raises(ValueError, match=r"holds .*string.*not a stored zoo state"):
        store.get_versioned_many(["forever", "foreign"])
    (got, v), (none, zero) = store.get_versioned_many(["forever", "nobody"])     # one round trip
    assert _same(got, _state()) and v > 1e15 and none is None and zero == 0   # a new state: the server's clock, us
    assert store.version("junk") == 1 and store.version("nobody") == 0
    assert transact(store, ["junk"], lambda s: (s, [_state()]), read=False) == ([None], 0)   # a prime overwrites it
    assert store.version("junk") == 2 and _same(store["junk"], _state())
    raw.hset(store.prefix + '"junk"', mapping={"s": b"junk"})
    forget(store, "junk")
    assert "junk" not in store
    with pytest.raises(ValueError, match="decode_responses=True"):
        RedisStateStore(redis.Redis.from_url(store.url, decode_responses=True))
    with pytest.raises(ValueError, match="without glob characters"):
        RedisStateStore(store.url, prefix="zoo:*:")
    with pytest.raises(ValueError, match="ttl must be a positive int"):
        RedisStateStore(store.url, ttl=0)
    with pytest.raises(TypeError, match="does not pickle"):
        pickle.dumps(RedisStateStore(raw))


def test_redis_versions_never_repeat_across_deletes(store):
    """A commit built on a state read before the user was deleted (``pop``, or Redis dropping it at its TTL) is
    refused, also once the user's new state has gone through as many commits again: no event written since is lost.
    A new state's first version is the server's clock in microseconds (above anything an earlier state of the user
    reached), each commit adds 1; every call touches only its users' keys (Redis Cluster shards users)."""
    import time

    import redis

    S = lambda x: {"h": np.full((1, 2, 8), x, np.float32)}            # noqa: E731
    raw = redis.Redis.from_url(store.url)

    def now_us() -> int:                                              # one TIME call: seconds and microseconds
        sec, us = raw.time()
        return int(sec) * 1_000_000 + int(us)

    t0 = now_us()
    assert store.commit([("u", 0, S(1))])
    first = store.version("u")
    assert t0 <= first <= now_us() and raw.hget(store.prefix + '"u"', "v") == str(first).encode()   # exact digits
    assert store.commit([("u", first, S(2))]) and store.version("u") == first + 1           # a commit adds 1
    _, read = store.get_versioned("u")                                # a worker reads version first + 1 ...
    store.pop("u")                                                    # ... the user is deleted ...
    assert store.commit([("u", 0, S(10))]) and store.commit([("u", store.version("u"), S(11))])   # ... anew
    assert store.version("u") > read + 1                             # past anything the earlier state reached
    assert not store.commit([("u", read, S(3))])                     # the late commit: refused
    assert store["u"]["h"][0, 0, 0] == 11
    store.pop("u")
    store["u"] = S(20)                                                # an unconditional write starts anew too
    assert not store.commit([("u", read, S(3))]) and store["u"]["h"][0, 0, 0] == 20
    # the TTL: Redis drops the state unseen; the new state's versions are past the old ones all the same
    timed = RedisStateStore(store.url, prefix=store.prefix, ttl=3600)
    assert timed.commit([("t", 0, S(1))]) and timed.commit([("t", timed.version("t"), S(2))])
    _, read = timed.get_versioned("t")
    raw.pexpire(store.prefix + '"t"', 1)
    while raw.exists(store.prefix + '"t"'):
        time.sleep(0.002)
    assert timed.commit([("t", 0, S(5))]) and timed.version("t") > read
    assert not timed.commit([("t", read, S(3))]) and timed["t"]["h"][0, 0, 0] == 5
    # transact: the worker whose read came before the delete reads again and computes on the new state
    seen = []

    def bump(stored):
        seen.append(int(stored[0]["h"][0, 0, 0]))
        if len(seen) == 1:
            store.pop("t")
            timed.commit([("t", 0, S(100))])
        return None, [S(seen[-1] + 1)]

    assert transact(store, ["t"], bump) == (None, 1) and seen == [5, 100] and store["t"]["h"][0, 0, 0] == 101
    # no key besides the users' own (and the store's marker, written when it was opened): the scripts touch only
    # the call's users
    assert sorted(k.decode() for k in raw.scan_iter(match=store.prefix + "*")) == sorted(
        [store.prefix + json.dumps(u) for u in ("u", "t")] + [store.marker])
    with pytest.raises(TypeError, match="version read of user 'u' must be an int"):
        store.commit([("u", "5", S(0))])
    with pytest.raises(ValueError, match="version read of user 'u' must be >= 0"):
        store.commit([("u", -1, S(0))])
    with pytest.raises(ValueError, match="user 'u' is written twice in one commit"):
        store.commit([("u", 5, S(0)), ("u", 5, S(1))])


def test_redis_stores_under_overlapping_prefixes_see_only_their_own_users(store):
    """A store whose prefix extends another's (``zoo:`` and ``zoo:m2:``) on one server: each counts and lists only its
    own users (not the other's keys, nor keys that are no user id's JSON)."""
    import redis

    inner = RedisStateStore(store.url, prefix=store.prefix + "m2:")
    store["a"] = _state()
    store[7] = _state()
    inner["b"] = _state()
    inner.pop("b")
    inner["c"] = _state()
    raw = redis.Redis.from_url(store.url)
    for junk in ('"unterminated', "1.5", "true", '"\\u0061"', ' "a"'):
        raw.hset(store.prefix + junk, mapping={"v": 1, "s": b"x"})
    assert len(store) == 2 and sorted(map(str, store)) == ["7", "a"] and 7 in list(store)
    assert len(inner) == 1 and list(inner) == ["c"]


def test_redis_write_without_ttl_clears_an_earlier_expiry(store):
    """A store without a ttl writing a user that a store with one wrote (same prefix) keeps the state until popped:
    its commit clears the expiry (Redis's HSET alone would keep it); the store with a ttl sets it again."""
    import redis

    timed = RedisStateStore(store.url, prefix=store.prefix, ttl=3600)
    raw = redis.Redis.from_url(store.url)
    key = store.prefix + '"u"'
    timed["u"] = _state()
    assert 3500 < raw.ttl(key) <= 3600
    assert store.commit([("u", store.version("u"), _state(1))]) and raw.ttl(key) == -1
    timed["u"] = _state()
    store["u"] = _state(2)                                            # an unconditional write too
    assert raw.ttl(key) == -1 and _same(store["u"], _state(2))
    assert timed.commit([("u", timed.version("u"), _state(3))]) and 3500 < raw.ttl(key) <= 3600


def test_user_state_recommender_on_redis_matches_the_full_forward(store, tmp_path):
    """Interleaved users through ``UserStateRecommender`` on the Redis store: every event's top-k is PyTorch's
    forward over the user's whole prefix, and a second recommender (another worker) continues the same users."""
    pytest.importorskip("onnxruntime", reason="the step graphs run with ONNX Runtime")
    import random

    import torch

    from export.onnx import export_model
    from export.runtime import UserStateRecommender
    from zoo.models.gru4rec import GRU4RecConfig, GRU4RecModel

    torch.manual_seed(0)
    model = GRU4RecModel(GRU4RecConfig(n_items=40, hidden_size=16, embedding_size=16, dropout_prob=0.0)).eval()
    with torch.no_grad():
        model.item_embedding.weight.normal_(0, 1.0)
    export_model(model, tmp_path / "g", topk=5, verify=False)
    recs = [UserStateRecommender(tmp_path / "g", store=store),
            UserStateRecommender(tmp_path / "g", store=RedisStateStore(store.url, prefix=store.prefix))]
    rng = random.Random(1)
    hist = {u: [] for u in range(6)}
    for n in range(30):
        u = rng.randrange(6)
        new = [rng.randrange(1, 40) for _ in range(rng.choice([1, 2]))]
        hist[u] += new
        got = recs[n % 2].recommend(u, new)
        with torch.no_grad():
            scores = model.predict(torch.tensor([hist[u]]))[0]
        ref = torch.topk(scores, 5).indices.tolist()
        assert got == ref or np.allclose(scores[got].numpy(), scores[ref].numpy(), atol=1e-4), (n, hist[u])
    assert len(store) == len([u for u in hist if hist[u]])


def _counter(n):
    return {"h": np.full((1, 2, 8), n, np.float32)}


def _bump(stored):
    """A one-event step of a counter state (none: 0): ``(its new value, [the new state])``."""
    n = (0 if stored[0] is None else int(stored[0]["h"][0, 0, 0])) + 1
    return n, [_counter(n)]


@pytest.mark.parametrize("kind", ["client with retries", "url"])
def test_redis_commit_whose_answer_was_lost_is_applied_once(store, monkeypatch, kind):
    """A commit whose answer was lost (the connection dropped after Redis ran the script) was sent again -- by
    redis-py's own retries with a client object -- and found the versions moved by itself: ``transact`` took that for
    another writer's commit and ran the event again on the state holding it (applied twice, no error); a URL-built
    store raised a bare ConnectionError although the event was stored (a caller retrying applies it twice). Now a
    commit carries a token the script keeps in each key: sent again (by redis-py, or by the store itself), it is
    recognised as applied. A commit that never gets an answer raises CommitOutcomeUnknownError, stored once at most.
    The lost answer is forced: the reply is read, then the ConnectionError a dropped connection raises is raised."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from export.state_store import CommitOutcomeUnknownError

    client = store.url if kind == "url" else redis.Redis.from_url(store.url, retry=Retry(NoBackoff(), 3))
    s = RedisStateStore(client, prefix=store.prefix)
    real, lost = s.client.parse_response, []

    def parse_response(connection, command_name, *a, **kw):
        answer = real(connection, command_name, *a, **kw)
        if command_name == "EVALSHA" and (lose[0] == "all" or not lost):
            lost.append(answer)
            raise redis.ConnectionError("Connection closed by server.")
        return answer

    lose = ["one"]
    s["u"] = _counter(1)
    monkeypatch.setattr(s.client, "parse_response", parse_response)
    assert transact(s, ["u"], _bump) == (2, 0)                       # no conflict: the retry found it applied
    assert lost == [1] and s["u"]["h"][0, 0, 0] == 2                 # applied once
    lose[0], lost[:] = "all", []
    with pytest.raises(CommitOutcomeUnknownError, match=r"users \['u'\] got no answer .*may have been stored"):
        transact(s, ["u"], _bump)
    assert lost[0] == 1 and set(lost[1:]) == {2} and s["u"]["h"][0, 0, 0] == 3      # applied once, then recognised
    assert transact(store, ["u"], _bump) == (4, 0)                  # the store goes on


def test_redis_store_that_lost_its_data_says_so(store):
    """Redis losing its data (restarted without persistence, flushed, failed over to an empty replica) left every
    returning user silently starting from an empty history: a missing key looks like a new user. Now the store keeps
    a marker key under its prefix: reading a user without a state checks it, and a marker gone (or written anew by
    another worker) raises StoreDataLostError naming the likely causes, once per store object and loss (counted),
    after which users without a state start afresh. A new user on a server that kept its data raises nothing."""
    import redis

    from export.state_store import StoreDataLostError

    workers = [RedisStateStore(store.url, prefix=store.prefix) for _ in range(2)]
    workers[0]["u"] = _counter(1)
    assert workers[0].get_versioned("new") == (None, 0) and workers[1].get_versioned_many(["new"]) == [(None, 0)]
    assert len(store) == 1 and list(store) == ["u"]                 # the marker is no user
    raw = redis.Redis.from_url(store.url)
    raw.delete(*raw.keys(store.prefix + "*"))                       # what a restart without persistence leaves
    with pytest.raises(StoreDataLostError, match=r"lost this store's data: its marker key .* is gone .*without "
                                                 r"persistence \(appendonly yes / RDB snapshots\).*FLUSHALL"):
        transact(workers[0], ["u"], _bump)
    assert workers[0].data_losses == 1 and "u" not in store          # nothing stored
    assert transact(workers[0], ["u"], _bump) == (1, 0)              # then the user starts afresh
    with pytest.raises(StoreDataLostError, match="written anew by another worker"):
        workers[1].get_versioned_many(["u", "v"])                    # the other worker is told too, once
    assert workers[1].get_versioned("v") == (None, 0) and workers[1].data_losses == 1


def test_redis_unreadable_states_name_their_user(store):
    """A hash under the prefix whose state bytes or version are garbage: the error named neither the user nor the
    key (``invalid literal for int()``); now both, and what replaces it."""
    import redis

    raw = redis.Redis.from_url(store.url)
    store["a"], store["b"] = _state(), _state()
    raw.hset(store.prefix + '"a"', "s", b"\x10\x00\x00\x00garbage")
    raw.hset(store.prefix + '"b"', "v", b"not-a-number")
    key = store.prefix + '"a"'
    for read in (lambda: store.get("a"), lambda: store.get_versioned_many(["a"])):
        with pytest.raises(ValueError, match=rf"stored state of user 'a' \(Redis key '{key}'\) is unreadable: not a "
                                             r"stored zoo state.*prime\(user, history\)"):
            read()
    for read in (lambda: store.get("b"), lambda: store.get_versioned_many(["b"]), lambda: store.version("b")):
        with pytest.raises(ValueError, match=r"stored state of user 'b' .* has the version b'not-a-number', not an "
                                             "int"):
            read()


def test_redis_store_close_releases_the_connections_of_a_store_built_from_a_url(store):
    """A RedisStateStore had no close(): the connection pool of a store built from a URL was released only when the
    garbage collector got to it. close() closes it (the server sees the connection go), idempotent, any later use
    raising ClosedError; ``with`` closes; a client object passed in is the caller's and stays open."""
    import time

    import redis

    from export.state_store import ClosedError

    admin = redis.Redis.from_url(store.url)
    name = f"zoo-close-{uuid.uuid4().hex[:8]}"

    def connected() -> int:
        return sum(c.get("name") == name for c in admin.client_list())

    def gone() -> bool:                               # the server notices a closed socket on its next loop turn
        for _ in range(500):
            if connected() == 0:
                return True
            time.sleep(0.01)
        return False

    url = f"{store.url}{'&' if '?' in store.url else '?'}client_name={name}"
    with RedisStateStore(url, prefix=store.prefix) as mine:
        mine["u"] = _state(0)
        assert connected() == 1 and _same(mine["u"], _state(0))
    assert mine.closed and gone()
    mine.close()                                      # idempotent
    for call in (lambda: mine.get("u"), lambda: mine.__setitem__("u", _state(1)), lambda: mine.pop("u"),
                 lambda: mine.commit([("u", 0, _state(1))]), lambda: len(mine)):
        with pytest.raises(ClosedError, match=r"RedisStateStore\(.*prefix .*\) is closed"):
            call()
    assert "u" in store                               # the data stays on the server
    client = redis.Redis.from_url(url)
    theirs = RedisStateStore(client, prefix=store.prefix)
    assert _same(theirs["u"], _state(0))
    theirs.close()
    assert client.ping() and connected() == 1         # the caller's client: still open
    with pytest.raises(ClosedError):
        theirs.get("u")
    client.close()
    admin.close()
