"""Serving workers in several processes sharing one state store (``export.state_store.SQLiteStateStore``, and
``RedisStateStore`` where a Redis server runs): events per second in all, and the commits refused and run again
(another worker stored the user first), with each worker on its own users or all of them on the same few hot users,
side by side in one run with the ceiling (workers keeping their own users in a dict of their own, sharing nothing) and
with SQLite's own checkpoints (``checkpoint_every=None``: on the committing connection) instead of the store's
background thread (a measurement, not a test).

Each worker is its own ``python`` process with its own ``UserStateRecommender`` (one ONNX Runtime thread) on the same
SQLite file; they start together (each says when its set-up is done, and all are then sent one start time) and send
one-item events one per call. Each row records how far apart the workers' first events were (start skew) and each
worker's busy time, and gives events per second summed over the workers (each one's events over its own busy time)
beside the events per second in all (all events over the span from the first start to the last end); a row whose skew
is over 5% of a worker's busy time is marked. After each configuration every user's stored version is checked
against the events sent to it (a version grows by one per commit from the prime's; with compare-and-set each commit
continues the one before, so equal counts mean no event was lost).

    python bench/shared_store.py [--card mamba4rec-ml1m] [--processes 1 2 4] [--events 1000] [--users 256] [--hot-users 4] [--redis-url URL] [--markdown bench/RESULTS_SHARED_STORE.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.benchutil import (  # noqa: E402
    SKEW_NOTE, TIMING_ALIGN, TIMING_HEADER, HelpFormatter, card_name, cards_help, command_line, markdown_path,
    redis_server, redis_version, run_workers, scratch_folder, timing_cells, wait_for_start, worker_job, worker_times,
    write_table)
from zoo.cli import EXIT_CODES, positive_int, run_cli  # noqa: E402


def make_store(spec: dict):
    """The store a ``spec`` names: ``{"kind": "dict"}``, ``{"kind": "sqlite", "path", "checkpoint_every"}`` or
    ``{"kind": "redis", "url", "prefix"}``."""
    from export.state_store import RedisStateStore, SQLiteStateStore

    if spec["kind"] == "sqlite":
        return SQLiteStateStore(spec["path"], checkpoint_every=spec["checkpoint_every"])
    if spec["kind"] == "redis":
        return RedisStateStore(spec["url"], prefix=spec["prefix"])
    return {}


def worker(graph: str, spec: dict, users: list, items: list) -> dict:
    """Serve ``items[j]`` to ``users[j]`` one event a call, from the common start once every worker is set up
    (:func:`benchutil.wait_for_start`); the wall times of the first event and after the last, and the conflicts. A
    ``dict`` store is this process's own (users primed here first): the ceiling without a shared store."""
    from export.runtime import UserStateRecommender

    rec = UserStateRecommender(graph, store=make_store(spec), threads=1)
    if spec["kind"] == "dict":
        rng = np.random.default_rng(0)
        rec.recommend_many([(u, [items[int(i)] for i in rng.integers(0, len(items), 20)]) for u in sorted(set(users))],
                           start=True)
    rec.recommend_many([(f"warm-up-{os.getpid()}", [items[0]])], start=True)   # not one of the users served
    wait_for_start()
    t0 = time.time()
    for user, item in zip(users, items):
        rec.recommend(user, [item])
    return {"start": t0, "end": time.time(), "conflicts": rec.conflicts}


def run(graph: str, processes: int, events: int, users: list[list], spec: dict, seed: int = 0,
        keep: bool = False) -> dict:
    """``processes`` workers on the store ``spec`` names (:func:`make_store`; a fresh SQLite file, in a scratch folder
    ``$TMPDIR/bench-shared-*`` removed after the run unless ``keep``, or Redis prefix each run), worker ``w`` sending
    ``events`` events round-robin over ``users[w]``, after every user was primed with 20 items; events per second in
    all and summed over the workers, the start skew and each worker's busy time (:func:`benchutil.worker_times`),
    conflicts, and the users whose version is off (a dict store: each worker's own, nothing to check)."""
    spec = dict(spec)
    if spec["kind"] == "sqlite":
        with scratch_folder("bench-shared-", keep) as tmp:
            return _run(graph, processes, events, users, {**spec, "path": os.path.join(tmp, "states.db")}, seed)
    if spec["kind"] == "redis":
        spec["prefix"] = f"bench:{os.getpid()}:{time.time_ns()}:"
    return _run(graph, processes, events, users, spec, seed)


def _run(graph: str, processes: int, events: int, users: list[list], spec: dict, seed: int) -> dict:
    from export.runtime import UserStateRecommender

    shared = spec["kind"] != "dict"
    rec = UserStateRecommender(graph, store=make_store(spec) if shared else {}, threads=1)
    sess = rec.session
    catalogue = sess.items if sess.items is not None else list(range(1, sess.n_items))
    rng = np.random.default_rng(seed)
    everyone = sorted({u for us in users for u in us})
    for s in range(0, len(everyone), 64):
        rec.recommend_many([(u, [catalogue[i] for i in rng.integers(0, len(catalogue), 20)])
                            for u in everyone[s:s + 64]], start=True)
    # each user's version after the prime's commit (SQLite: 1; Redis: the server's clock), then one more per event
    base = {u: rec.store.get_versioned(u)[1] for u in everyone} if shared else {}
    sent = {u: 0 for u in everyone}
    jobs = []
    for w in range(processes):
        order = [users[w][j % len(users[w])] for j in range(events)]
        for u in order:
            sent[u] += 1
        jobs.append({"users": order, "items": [catalogue[i] for i in rng.integers(0, len(catalogue), events)],
                     "spec": spec})
    outs = run_workers(__file__, [graph], jobs, barrier=True)         # started together once all are set up
    off = [u for u in everyone if rec.store.get_versioned(u)[1] != base[u] + sent[u]] if shared else []
    return {**worker_times(outs, [events] * processes), "conflicts": sum(o["conflicts"] for o in outs),
            "events": processes * events, "off": len(off)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("--card", type=card_name(["onnx"]), default="mamba4rec-ml1m",
                   help=f"the bundled card whose step graph (onnx/) the workers run, {cards_help(['onnx'])}")
    p.add_argument("--processes", type=positive_int, nargs="+", default=[1, 2, 4],
                   help="worker processes sharing the store, a row each")
    p.add_argument("--events", type=positive_int, default=1000, help="events per worker")
    p.add_argument("--users", type=positive_int, default=256, help="users of each worker, when each has its own")
    p.add_argument("--hot-users", type=positive_int, default=4,
                   help="users all workers share, in the hot configuration")
    p.add_argument("--redis-url", help="a Redis server for the RedisStateStore rows (default: a redis-server "
                   "started on loopback for the run, when one is installed; else no Redis rows)")
    p.add_argument("--worker", metavar="GRAPH", help=argparse.SUPPRESS)
    p.add_argument("--markdown", type=markdown_path, help="also write the table to this file (default: print it only)")
    p.add_argument("--keep-tmp", action="store_true", help="keep each SQLite configuration's database (in "
                   "$TMPDIR/bench-shared-*, else /tmp) and print where; by default they are removed")
    args = p.parse_args(argv)
    if args.worker:
        job = worker_job()
        print(json.dumps(worker(args.worker, job["spec"], job["users"], job["items"])))
        return
    with redis_server(args.redis_url) as redis_url:
        _measure(args, argv, redis_url)


def _measure(args, argv, redis_url: str | None) -> None:
    import onnxruntime

    graph = os.path.join(ROOT, "hub_cards", args.card, "onnx")
    lines = [f"Produced by `{command_line('bench/shared_store.py', argv)}` ({time.strftime('%Y-%m-%d')}, "
             f"{os.cpu_count()} CPUs, ONNX Runtime {onnxruntime.__version__}, one intra-op thread a worker, SQLite "
             f"{__import__('sqlite3').sqlite_version} (synchronous=NORMAL)"
             + (f", Redis {redis_version(redis_url)} on loopback (no persistence)" if redis_url else "")
             + f"): `{args.card}`'s step graph, "
             f"{args.events} one-item events a worker, one per call; own users: {args.users} users a worker, "
             f"round-robin; hot users: the same {args.hot_users} users for every worker; the workers start together "
             "once all are set up; start skew: how far apart their first events were; busy: each worker's first "
             "event to its last.", "",
             "| store | workers | users | events | events/s in all | vs the first row | commits refused | "
             "per 1,000 events | users with an event lost |" + TIMING_HEADER,
             "|---|---:|---|---:|---:|---:|---:|---:|---:|" + TIMING_ALIGN]
    base, skewed = None, False
    sqlite = {"kind": "sqlite", "checkpoint_every": 1.0}
    stores = [("dict per worker (not shared)", {"kind": "dict"}, "own"), ("SQLiteStateStore", sqlite, "own"),
              ("SQLiteStateStore, checkpoint_every=None", {**sqlite, "checkpoint_every": None}, "own"),
              ("SQLiteStateStore", sqlite, "hot")]
    if redis_url:
        redis_spec = {"kind": "redis", "url": redis_url}
        stores += [("RedisStateStore (loopback)", redis_spec, "own"), ("RedisStateStore (loopback)", redis_spec, "hot")]
    for store, spec, kind in stores:
        for n in args.processes:
            users = ([[f"w{w}-u{i}" for i in range(args.users)] for w in range(n)] if kind == "own"
                     else [[f"hot-{i}" for i in range(args.hot_users)]] * n)
            r = run(graph, n, args.events, users, spec, keep=args.keep_tmp)
            base = base or r["events_per_s"]                 # the first row: the fewest workers, own dicts
            lines.append(f"| {store} | {n} | {'own' if kind == 'own' else 'hot (shared)'} | {r['events']:,} | "
                         f"{r['events_per_s']:,.0f} | {r['events_per_s'] / base:.2f}x | {r['conflicts']:,} | "
                         f"{1000 * r['conflicts'] / r['events']:.1f} | "
                         f"{r['off'] if spec['kind'] != 'dict' else '-'} |" + timing_cells(r))
            print(lines[-1], flush=True)
            skewed = skewed or r.get("skewed", False)
    if skewed:
        lines += ["", SKEW_NOTE]
    write_table(lines, "Serving processes sharing one state store", args.markdown)


if __name__ == "__main__":
    run_cli(main, prog="python bench/shared_store.py")      # SIGTERM too: workers, redis-server, folders stopped
