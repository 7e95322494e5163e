"""The SQLite store's WAL under sustained serving: its size on disk, events per second and event latency, with
``SQLiteStateStore(wal_size_limit=64 MiB)`` (the default: past it the checkpoint thread truncates the WAL) and with
``wal_size_limit=None``, side by side in one run (a measurement, not a test).

Each worker is its own ``python`` process with its own ``UserStateRecommender`` (one ONNX Runtime thread) on one SQLite
file, sending one-item events one per call, round-robin over its own users, for ``--seconds`` seconds without pause,
from one start time sent to all once each said its set-up was done; each row records how far apart the workers' first
events were (start skew), each worker's busy time, and events per second summed over the workers beside the events
per second in all (marked where the skew is over 5% of a worker's busy time).
Under such load a PASSIVE checkpoint never catches up with the writers, so SQLite never starts the WAL over: without a
limit the file holds everything written since the load began. "Truncations by writers" counts the times a worker's
writer truncated the WAL itself because its checkpoint thread had fallen behind (past 4 times the limit).

    python bench/sqlite_wal.py [--card mamba4rec-ml1m] [--seconds 20] [--processes 1 2] [--users 256] [--markdown bench/RESULTS_SQLITE_WAL.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.benchutil import (  # noqa: E402
    SKEW_NOTE, TIMING_ALIGN, TIMING_HEADER, HelpFormatter, card_name, cards_help, command_line, markdown_path,
    run_workers, scratch_folder, timing_cells, wait_for_start, worker_job, worker_times, write_table)
from zoo.cli import EXIT_CODES, positive_float, positive_int, run_cli  # noqa: E402

LIMITS = {"64 MiB (default)": 64 << 20, "None": None}


def worker(graph: str, path: str, limit, seconds: float, users: list, items: list) -> dict:
    """Serve events round-robin over ``users`` for ``seconds`` from the common start once every worker is set up
    (:func:`benchutil.wait_for_start`); the events served, the wall times of the first event and after the last, each
    event's latency (ms)."""
    from export.runtime import UserStateRecommender
    from export.state_store import SQLiteStateStore

    store = SQLiteStateStore(path, wal_size_limit=limit)
    rec = UserStateRecommender(graph, store=store, threads=1)
    rec.recommend_many([(f"warm-up-{os.getpid()}", [items[0]])], start=True)
    wait_for_start()
    lat, t0, j = [], time.time(), 0
    while time.time() - t0 < seconds:
        t = time.perf_counter()
        rec.recommend(users[j % len(users)], [items[j % len(items)]])
        lat.append((time.perf_counter() - t) * 1e3)
        j += 1
    return {"events": j, "start": t0, "end": time.time(), "lat_ms": lat, "step_ins": store.writer_truncations}


def run(graph: str, processes: int, seconds: float, n_users: int, limit, seed: int = 0, keep: bool = False) -> dict:
    """One configuration on a new SQLite file in a scratch folder (``$TMPDIR/bench-wal-*``, gigabytes at the default
    sizes), removed after it unless ``keep``."""
    with scratch_folder("bench-wal-", keep) as tmp:
        return _run(graph, os.path.join(tmp, "states.db"), processes, seconds, n_users, limit, seed)


def _run(graph: str, path: str, processes: int, seconds: float, n_users: int, limit, seed: int) -> dict:
    from export.runtime import UserStateRecommender
    from export.state_store import SQLiteStateStore

    rec = UserStateRecommender(graph, store=SQLiteStateStore(path, wal_size_limit=limit), threads=1)
    sess = rec.session
    catalogue = sess.items if sess.items is not None else list(range(1, sess.n_items))
    rng = np.random.default_rng(seed)
    users = [[f"w{w}-u{i}" for i in range(n_users)] for w in range(processes)]
    for us in users:
        for s in range(0, len(us), 64):
            rec.recommend_many([(u, [catalogue[i] for i in rng.integers(0, len(catalogue), 20)]) for u in us[s:s + 64]],
                               start=True)
    wal, peak, done = path + "-wal", [0], threading.Event()

    def watch():                                      # the WAL's size on disk, every 50 ms
        while not done.is_set():
            if os.path.exists(wal):
                peak[0] = max(peak[0], os.path.getsize(wal))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    jobs = [{"users": us, "items": [catalogue[i] for i in rng.integers(0, len(catalogue), 4096)]} for us in users]
    try:
        outs = run_workers(__file__, [graph, path, limit, seconds], jobs, barrier=True)   # started together
    finally:
        done.set()
        watcher.join()                                # before the folder of the WAL goes
    lat = np.concatenate([o["lat_ms"] for o in outs])
    events = sum(o["events"] for o in outs)
    state_bytes = os.path.getsize(path)
    return {**worker_times(outs, [o["events"] for o in outs]), "events": events, "p50": np.percentile(lat, 50),
            "p99": np.percentile(lat, 99), "p999": np.percentile(lat, 99.9), "max": lat.max(),
            "step_ins": sum(o["step_ins"] for o in outs), "wal_peak": peak[0],
            "wal_end": os.path.getsize(wal) if os.path.exists(wal) else 0, "db": state_bytes}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("--card", type=card_name(["onnx"]), default="mamba4rec-ml1m",
                   help=f"the bundled card whose step graph (onnx/) the workers run, {cards_help(['onnx'])}")
    p.add_argument("--seconds", type=positive_float, default=20.0, help="seconds of sustained load a configuration")
    p.add_argument("--processes", type=positive_int, nargs="+", default=[1, 2],
                   help="worker processes sharing the database, a row each")
    p.add_argument("--users", type=positive_int, default=256, help="users of each worker")
    p.add_argument("--worker", nargs=4, metavar=("GRAPH", "DB", "LIMIT", "SECONDS"), help=argparse.SUPPRESS)
    p.add_argument("--markdown", type=markdown_path, help="also write the table to this file (default: print it only)")
    p.add_argument("--keep-tmp", action="store_true", help="keep each configuration's SQLite database and WAL (in "
                   "$TMPDIR/bench-wal-*, else /tmp; gigabytes each) and print where; by default they are removed")
    args = p.parse_args(argv)
    if args.worker:
        graph, path, limit, seconds = args.worker
        job = worker_job()
        print(json.dumps(worker(graph, path, None if limit == "None" else int(limit), float(seconds), job["users"],
                                job["items"])))
        return
    import onnxruntime

    graph = os.path.join(ROOT, "hub_cards", args.card, "onnx")
    lines = [f"Produced by `{command_line('bench/sqlite_wal.py', argv)}` ({time.strftime('%Y-%m-%d')}, "
             f"{os.cpu_count()} CPUs, ONNX Runtime {onnxruntime.__version__}, one intra-op thread a worker, SQLite "
             f"{__import__('sqlite3').sqlite_version}, synchronous=NORMAL, checkpoint_every=1 s): `{args.card}`'s "
             f"step graph, one-item events one per call without pause for {args.seconds:g} s a configuration, "
             f"{args.users} own users a worker; WAL sizes sampled every 50 ms; the workers start together once all "
             "are set up; start skew: how far apart their first events were; busy: each worker's first event to its "
             "last.", "",
             "| wal_size_limit | workers | events | events/s in all | p50 ms | p99 ms | p99.9 ms | max ms | "
             "WAL peak MB | WAL at the end MB | database MB | truncations by writers |" + TIMING_HEADER,
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + TIMING_ALIGN]
    skewed = False
    for n in args.processes:
        for name, limit in LIMITS.items():
            r = run(graph, n, args.seconds, args.users, limit, keep=args.keep_tmp)
            lines.append(f"| {name} | {n} | {r['events']:,} | {r['events_per_s']:,.0f} | {r['p50']:.3f} | "
                         f"{r['p99']:.3f} | {r['p999']:.2f} | {r['max']:.1f} | {r['wal_peak'] / 1e6:,.0f} | "
                         f"{r['wal_end'] / 1e6:,.0f} | {r['db'] / 1e6:.1f} | {r['step_ins']} |" + timing_cells(r))
            print(lines[-1], flush=True)
            skewed = skewed or r.get("skewed", False)
    if skewed:
        lines += ["", SKEW_NOTE]
    write_table(lines, "The SQLite store's WAL under sustained serving", args.markdown)


if __name__ == "__main__":
    run_cli(main, prog="python bench/sqlite_wal.py")        # SIGTERM too: workers stopped, the database removed
