"""Events per second of ``export.runtime.UserStateRecommender`` on the bundled step graphs: one event per call against
many users' events in one call (``recommend_many``), with the states kept in a dict, in two bytes stores (what
Redis & co. would hold: ``np.savez`` per user, and ``export.state_store.BytesStore``'s header + raw tensors) and in a
SQLite file (``export.state_store.SQLiteStateStore``: the versioned store processes share, each call a
compare-and-set commit) and, where a Redis server runs, in Redis (``RedisStateStore``), side by side in one run (a
measurement, not a test).

Each configuration first primes ``--users`` users with 20 items each (not timed), then times ``--events`` one-item
events drawn over those users (round-robin, so a batch holds distinct users); every configuration serves the same
events. Time-aware graphs get one timestamp per event, an hour after the user's last.

    python bench/bench_user_states.py [--cards mamba4rec-ml1m lrurec-ml1m gru4rec-ml1m] [--users 512] [--events 4096] [--batch 64 256] [--redis-url URL] [--markdown bench/RESULTS_USER_STATES.md]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.benchutil import (  # noqa: E402
    HelpFormatter, card_name, cards_help, command_line, markdown_path, redis_server, redis_version, scratch_folder,
    write_table)
from zoo.cli import EXIT_CODES, positive_int, run_cli  # noqa: E402

CARDS = ["mamba4rec-ml1m", "lrurec-ml1m", "gru4rec-ml1m", "tim4rec-causal-ml1m-u2999"]


class BytesStore:
    """A user's state as ``np.savez`` bytes, as a key-value store would hold it."""

    def __init__(self):
        self.kv: dict = {}

    def get(self, key):
        raw = self.kv.get(key)
        if raw is None:
            return None
        with np.load(io.BytesIO(raw)) as z:
            return {k: z[k] for k in z.files}

    def __setitem__(self, key, arrays):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        self.kv[key] = buf.getvalue()

    def pop(self, key, default=None):
        return self.kv.pop(key, default)


def run(graph: str, store, users: int, events: int, batch: int, threads: int, seed: int = 0) -> dict:
    """Prime ``users`` users, then serve ``events`` one-item events ``batch`` at a time; events per second."""
    from export.runtime import UserStateRecommender

    rec = UserStateRecommender(graph, store=store, threads=threads)
    sess = rec.session
    rng = np.random.default_rng(seed)
    items = sess.items if sess.items is not None else list(range(1, sess.n_items))
    t_now = {}
    for s in range(0, users, 64):                           # primed 64 users a call (all 20 items long)
        group = list(range(s, min(users, s + 64)))
        evs = []
        for u in group:
            hist = [items[i] for i in rng.integers(0, len(items), 20)]
            if sess.uses_timestamps:
                ts = 1.6e9 + 3600.0 * np.arange(20)
                t_now[u] = float(ts[-1])
                evs.append((u, hist, ts))
            else:
                evs.append((u, hist))
        rec.recommend_many(evs, start=True)
    order = [(u % users, items[int(i)]) for u, i in enumerate(rng.integers(0, len(items), events))]
    t0 = time.perf_counter()
    for s in range(0, len(order), batch):
        evs = []
        for u, item in order[s:s + batch]:
            if sess.uses_timestamps:
                t_now[u] += 3600.0
                evs.append((u, [item], [t_now[u]]))
            else:
                evs.append((u, [item]))
        rec.recommend_many(evs)
    dt = time.perf_counter() - t0
    state_bytes = sum(a.nbytes for n, a in store.get(0).items() if n != "state_fingerprint")
    return {"events_per_s": len(order) / dt, "us_per_event": 1e6 * dt / len(order), "state_bytes": state_bytes}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("--cards", nargs="+", type=card_name(["onnx"]), default=CARDS, metavar="CARD",
                   help=f"bundled cards whose step graph (onnx/) is run, {cards_help(['onnx'])}")
    p.add_argument("--users", type=positive_int, default=512, help="users primed, over whom the events are drawn")
    p.add_argument("--events", type=positive_int, default=4096, help="timed one-item events per configuration")
    p.add_argument("--batch", type=positive_int, nargs="+", default=[64, 256],
                   help="users per recommend_many call, a row each (at most --users)")
    p.add_argument("--threads", type=positive_int, default=1, help="ONNX Runtime's intra-op threads")
    p.add_argument("--redis-url", help="a Redis server for the RedisStateStore rows (default: a redis-server "
                   "started on loopback for the run, when one is installed; else no Redis rows)")
    p.add_argument("--markdown", type=markdown_path, help="also write the table to this file (default: print it only)")
    args = p.parse_args(argv)
    if max(args.batch) > args.users:        # round-robin: a call's events must be of distinct users
        p.error(f"--batch {max(args.batch)} exceeds --users {args.users}: a call holds one event of each of its users")
    with redis_server(args.redis_url) as redis_url, scratch_folder("bench-states-") as tmp:
        _measure(args, argv, redis_url, tmp)


def _measure(args, argv, redis_url: str | None, tmp: str) -> None:
    """The table; the SQLite files in ``tmp`` (removed after the run)."""
    import onnxruntime

    lines = [f"Produced by `{command_line('bench/bench_user_states.py', argv)}` ({time.strftime('%Y-%m-%d')}, cpu, "
             f"ONNX Runtime {onnxruntime.__version__}, {args.threads} intra-op thread(s)"
             + (f", Redis {redis_version(redis_url)} on loopback" if redis_url else "")
             + f"): {args.users} users primed "
             f"with 20 items, then {args.events} one-item events served round-robin over them; the same events for "
             "every configuration.", "",
             "| card | store | events per call | events/s | us per event | vs one per call | state per user (bytes) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    files = iter(range(10**6))
    for card in args.cards:
        graph = os.path.join(ROOT, "hub_cards", card, "onnx")
        from export.state_store import BytesStore as ZooBytes
        from export.state_store import RedisStateStore, SQLiteStateStore

        def sqlite(synchronous):                                  # a fresh file for every configuration
            return lambda: SQLiteStateStore(os.path.join(tmp, f"{next(files)}.db"), synchronous=synchronous)

        def redis():                                              # a fresh prefix for every configuration
            return RedisStateStore(redis_url, prefix=f"bench:{os.getpid()}:{next(files)}:")

        stores = [("dict", dict), ("bytes (np.savez)", BytesStore), ("bytes (state_store.BytesStore)", ZooBytes),
                  ("SQLite file (state_store.SQLiteStateStore)", sqlite("NORMAL")),
                  ("SQLite file, synchronous=FULL", sqlite("FULL"))]
        if redis_url:
            stores.append(("Redis on loopback (state_store.RedisStateStore)", redis))
        for store_name, make in stores:
            base = None
            for batch in [1, *args.batch]:
                r = run(graph, make(), args.users, args.events, batch, args.threads)
                base = base or r["events_per_s"]
                lines.append(f"| {card} | {store_name} | {batch} | {r['events_per_s']:,.0f} | "
                             f"{r['us_per_event']:.0f} | "
                             f"{r['events_per_s'] / base:.1f}x | {r['state_bytes']:,} |")
                print(lines[-1], flush=True)
    write_table(lines, "Per-user states in this process (export.runtime.UserStateRecommender)", args.markdown)


if __name__ == "__main__":
    run_cli(main, prog="python bench/bench_user_states.py")
