"""Many users' events through Triton: one request per event (``recommend``) against the users of a call sent
together (``recommend_many``), for both state placements, side by side on one loopback server (a measurement, not a
test).

A real ``tritonserver`` (nvidia-pytriton, python backend; ``bash export/triton_server_env.sh`` once) serves a bundled
step graph twice (``max_batch_size`` 64): with explicit state, where ``recommend_many`` sends the users of a call as
the rows of one request (states in the client's dict store), and with implicit state behind the sequence batcher,
where it sends one request per sequence, all in flight together from a client thread pool (gRPC). One client
primes ``--users`` users with 20 items each (not timed), then sends ``--events`` one-item events round-robin over
them, ``--batch`` users a call. Reported: events per second and milliseconds per call.

    python bench/triton_many_users.py [--card mamba4rec-ml1m] [--users 256] [--events 2048] [--batch 1 8 64] [--protocol grpc] [--markdown bench/RESULTS_TRITON_MANY_USERS.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.benchutil import (  # noqa: E402
    HelpFormatter, card_name, cards_help, command_line, markdown_path, scratch_folder, write_table)
from zoo.cli import EXIT_CODES, positive_int, run_cli  # noqa: E402


def run(client, users: int, events: int, batch: int, seed: int = 0) -> dict:
    """Prime ``users`` users, then serve ``events`` one-item events ``batch`` users a call; events/s, ms a call."""
    items = client.vocab.items if client.vocab is not None else list(range(1, client.n_items))
    rng = np.random.default_rng(seed)
    if hasattr(client, "store"):                                      # explicit state: the client's store
        client.store.clear()
        for s in range(0, users, 64):
            client.recommend_many([(u, [items[i] for i in rng.integers(0, len(items), 20)])
                                   for u in range(s + 1, min(users, s + 64) + 1)], start=True)
    else:                                                             # implicit: each sequence restarted
        for u in range(1, users + 1):                                 # sequence ids start at 1
            client.prime(u, [items[i] for i in rng.integers(0, len(items), 20)])
    order = [(1 + j % users, items[int(i)]) for j, i in enumerate(rng.integers(0, len(items), events))]
    calls = 0
    t0 = time.perf_counter()
    for s in range(0, len(order), batch):
        chunk = order[s:s + batch]
        if batch == 1:
            client.recommend(chunk[0][0], [chunk[0][1]])
        else:
            client.recommend_many([(u, [item]) for u, item in chunk])
        calls += 1
    dt = time.perf_counter() - t0
    return {"events_per_s": len(order) / dt, "ms_per_call": 1e3 * dt / calls}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("--card", type=card_name(["onnx"]), default="mamba4rec-ml1m",
                   help=f"the bundled card whose step graph (onnx/) the server runs, {cards_help(['onnx'])}")
    p.add_argument("--users", type=positive_int, default=256, help="users primed, over whom the events are drawn")
    p.add_argument("--events", type=positive_int, default=2048, help="timed one-item events per row")
    p.add_argument("--batch", type=positive_int, nargs="+", default=[1, 8, 64],
                   help="users per request, a row each (at most --users)")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc", help="the client's protocol")
    p.add_argument("--markdown", type=markdown_path, help="also write the table to this file (default: print it only)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the model repository the server ran (in "
                   "$TMPDIR/bench-triton-many-*, else /tmp) and print where; by default it is removed")
    args = p.parse_args(argv)
    if max(args.batch) > args.users:        # round-robin: a call's events must be of distinct users
        p.error(f"--batch {max(args.batch)} exceeds --users {args.users}: a call holds one event of each of its users")
    with scratch_folder("bench-triton-many-", args.keep_tmp) as repo:   # removed once the server is stopped
        lines = _measure(args, argv, repo)
    write_table(lines, "Many users a call through Triton", args.markdown)


def _measure(args, argv, repo: str) -> list[str]:
    """The table's lines, from a server on a model repository written in ``repo`` (stopped before this returns)."""
    from export import triton as T
    from export import triton_server as S
    from export.triton_client import ExplicitStateRecommender, TritonRecommender

    graph = os.path.join(ROOT, "hub_cards", args.card, "onnx")
    vocab = os.path.join(graph, "item_vocab.json")
    T.write_repository(graph, repo, name="explicit", backend="python", state="explicit", max_batch_size=64,
                       vocab_path=vocab)
    T.write_repository(graph, repo, name="implicit", backend="python", state="implicit", max_batch_size=64,
                       vocab_path=vocab, idle_timeout_s=600)
    h = S.start_server(repo, timeout=240)
    try:
        url = h.grpc_url if args.protocol == "grpc" else h.http_url
        clients = {"explicit (rows of one request)": ExplicitStateRecommender(
                       url, "explicit", protocol=args.protocol, vocab=vocab, store={}),
                   "implicit (requests in flight together)": TritonRecommender(
                       url, "implicit", protocol=args.protocol, vocab=vocab, threads=64)}
        lines = [f"Produced by `{command_line('bench/triton_many_users.py', argv)}` ({time.strftime('%Y-%m-%d')}, "
                 f"{os.cpu_count()} CPUs shared by server and client, loopback {args.protocol}): `{args.card}`'s step "
                 f"graph behind Triton's python backend (max_batch_size 64, ORT 1 thread; implicit state: sequence "
                 f"batcher, strategy oldest); {args.users} users primed with 20 items, then {args.events} one-item "
                 "events round-robin over them (explicit state: the states in a dict).", "",
                 "| state | users a call | calls | events/s | ms a call | vs one a call |",
                 "|---|---:|---:|---:|---:|---:|"]
        for state, client in clients.items():
            base = None
            for batch in args.batch:
                run(client, args.users, min(args.events, 4 * batch), batch, seed=1)       # warm-up
                r = run(client, args.users, args.events, batch)
                base = base or r["events_per_s"]
                lines.append(f"| {state} | {batch} | {-(-args.events // batch):,} | {r['events_per_s']:,.0f} | "
                             f"{r['ms_per_call']:.2f} | {r['events_per_s'] / base:.1f}x |")
                print(lines[-1], flush=True)
    finally:
        h.stop()
    return lines


if __name__ == "__main__":
    run_cli(main, prog="python bench/triton_many_users.py")
