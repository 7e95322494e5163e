"""ONNX Runtime dynamic int8 quantization of the bundled graphs (step and window): what it does to their size, their
latency and their test metrics, side by side with the fp32 graphs in one run (a measurement, not a test).

Each graph is quantized with ``onnxruntime.quantization.quantize_dynamic`` (int8 weights of the MatMul/Gemm nodes,
activations quantized per call) per output channel, as ``python -m export.onnx --int8`` ships it (the same function,
``export.onnx.quantize_int8``; the exporter also verifies it against PyTorch), and per tensor, the alternative it does
not ship. The metrics are ``python -m zoo.evaluate --onnx``'s
on the card's own data and protocol (the test users, full ranking from the in-graph top-10). The latency is the median
of repeated calls of the graph itself (``raw_run``, the feeds a checked call gave it) at batch 1 and 256 on one ONNX
Runtime thread: for a step graph one step of one new item from
primed states, for a window graph (SASRec, BERT4Rec) one full window of ``max_seq_length`` items, which such a model
re-encodes for every event.

``--catalogues N [N ...]`` adds a second table: the bundled Mamba4Rec's architecture with ``N`` items and random
weights (no metrics: there is no data for such a catalogue), fp32 against int8 per channel, for where the item table
dominates the file and the output layer's scoring dominates a call.

    python bench/int8_graphs.py [--cards mamba4rec-ml1m lrurec-ml1m gru4rec-ml1m tim4rec-causal-ml1m-u2999 sasrec-ml1m bert4rec-ml1m] [--catalogues 100000 1000000] [--markdown bench/RESULTS_INT8.md]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.benchutil import HelpFormatter, card_name, cards_help, command_line, markdown_path, write_table  # noqa: E402
from zoo.cli import EXIT_CODES, positive_int, run_cli  # noqa: E402

DATA_DIR = os.environ.get("ZOO_DATA_DIR", os.path.join(ROOT, "..", "shared", "data"))
CARDS = ["mamba4rec-ml1m", "lrurec-ml1m", "gru4rec-ml1m", "tim4rec-causal-ml1m-u2999", "sasrec-ml1m", "bert4rec-ml1m"]
VARIANTS = [("fp32", None), ("int8 per tensor", False), ("int8 per channel", True)]


def card_data(card: str) -> tuple[str, list[str]]:
    """The data file a card was measured on and the ``zoo.evaluate`` flags of its loading options."""
    with open(os.path.join(ROOT, "hub_cards", card, "eval_results.json"), encoding="utf-8") as f:
        res = json.load(f)
    opts = res.get("data_options") or {}
    kcore = opts.get("kcore", "auto")
    flags = [] if kcore == "auto" else ["--kcore", "none" if kcore is None else str(kcore)]
    flags += [] if opts.get("time_ties", "file") == "file" else ["--time-ties", opts["time_ties"]]
    return os.path.join(DATA_DIR, res["data_file"]), flags


class _FeedRecorder:
    """An ONNX Runtime session that keeps the feeds of its last ``run`` (what a checked ``step`` gave the graph)."""

    def __init__(self, session):
        self.session, self.feeds = session, None

    def run(self, output_names, feeds, *args, **kwargs):
        self.feeds = dict(feeds)
        return self.session.run(output_names, feeds, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.session, name)


def _graph_feeds(sess, call) -> dict:
    """The feeds a checked session call (``call()``: a ``step`` or ``run_window``) gives the graph, recorded while it
    runs once (untimed: the warm-up)."""
    sess.session = recorder = _FeedRecorder(sess.session)
    try:
        call()
    finally:
        sess.session = recorder.session
    return recorder.feeds


def _median_ms(sess, feeds: dict, reps: int) -> float:
    """Median milliseconds of ``reps`` calls of the graph itself (``raw_run``: what a server runs, without the checked
    wrapper's NumPy checks, as ``bench_step_latency`` times it)."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.raw_run(feeds, sess.output_names)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def step_latency_ms(folder: str, batch: int, reps: int, threads: int) -> float:
    """Median milliseconds of the step graph on one new item per row, from states primed with 20 items."""
    from export.runtime import OnnxStepSession

    sess = OnnxStepSession(folder, threads=threads)
    rng = np.random.default_rng(0)
    hist = rng.integers(1, sess.n_items, size=(batch, 20))
    ts = 1.6e9 + 60.0 * np.arange(21)[None, :].repeat(batch, 0) if sess.uses_timestamps else None
    state = sess.step(hist, sess.init_state(batch), None if ts is None else ts[:, :20]).state
    new = rng.integers(1, sess.n_items, size=(batch, 1))
    feeds = _graph_feeds(sess, lambda: sess.step(new, state, None if ts is None else ts[:, 20:]))
    return _median_ms(sess, feeds, reps)


def window_latency_ms(folder: str, batch: int, reps: int, threads: int) -> float:
    """Median milliseconds of the window graph on full windows (``max_seq_length`` random items per row)."""
    from export.runtime import OnnxWindowSession

    sess = OnnxWindowSession(folder, threads=threads)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, sess.n_items, size=(batch, int(sess.spec["max_seq_length"])))
    ts = 1.6e9 + 60.0 * np.arange(ids.shape[1])[None, :].repeat(batch, 0) if sess.uses_timestamps else None
    return _median_ms(sess, _graph_feeds(sess, lambda: sess.run_window(ids, ts)), reps)


def measure(card: str, args) -> list[dict]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export.onnx import _untie_matmul_weights, quantize_int8
    from zoo.evaluate import main as eval_main

    data, flags = card_data(card)
    step = os.path.isdir(os.path.join(ROOT, "hub_cards", card, "onnx"))
    src = os.path.join(ROOT, "hub_cards", card, "onnx" if step else "onnx-window")
    latency = step_latency_ms if step else window_latency_ms
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, per_channel in VARIANTS:
            folder = os.path.join(tmp, name.replace(" ", "-"))
            shutil.copytree(src, folder)
            if per_channel:                                   # what export.onnx --int8 writes
                quantize_int8(os.path.join(src, "model.onnx"), os.path.join(folder, "model.onnx"))
            elif per_channel is not None:                     # the tied table untied first, as quantize_int8 does
                untied = onnx.load(os.path.join(src, "model.onnx"))   # (onnxruntime <= 1.31 transposes in place)
                _untie_matmul_weights(untied)
                onnx.save(untied, os.path.join(tmp, "untied.onnx"))
                quantize_dynamic(os.path.join(tmp, "untied.onnx"), os.path.join(folder, "model.onnx"),
                                 weight_type=QuantType.QInt8, per_channel=False)
            res = eval_main(["--onnx", folder, "--data", data, *flags, "--no-progress", "--threads",
                             str(args.threads)])
            rows.append({"card": card, "variant": name, "kind": "step" if step else "window",
                         "mb": os.path.getsize(os.path.join(folder, "model.onnx")) / 2**20,
                         "b1_ms": latency(folder, 1, args.reps, args.threads),
                         "b256_ms": latency(folder, 256, max(5, args.reps // (20 if step else 80)), args.threads),
                         "HR@10": res["metrics"]["HR@10"], "NDCG@10": res["metrics"]["NDCG@10"]})
            print(rows[-1], flush=True)
    return rows


def measure_catalogue(n_items: int, args) -> list[dict]:
    """The bundled Mamba4Rec's config with ``n_items`` items and random weights (seed 0): its fp32 step graph and the
    int8 one ``export.onnx --int8`` would ship (``quantize_int8``): file size and latency."""
    import torch

    from export.onnx import export_model, quantize_int8
    from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel

    cfg = Mamba4RecConfig.from_pretrained(os.path.join(ROOT, "hub_cards", "mamba4rec-ml1m"))
    cfg.n_items = n_items
    cfg.item_vocab_file = None
    torch.manual_seed(0)
    model = Mamba4RecModel(cfg).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = os.path.join(tmp, "fp32")
        export_model(model, fp32, verify=False)
        del model
        int8 = os.path.join(tmp, "int8")
        shutil.copytree(fp32, int8)
        quantize_int8(os.path.join(fp32, "model.onnx"), os.path.join(int8, "model.onnx"))
        for name, folder in (("fp32", fp32), ("int8 per channel", int8)):
            rows.append({"n_items": n_items, "variant": name,
                         "mb": os.path.getsize(os.path.join(folder, "model.onnx")) / 2**20,
                         "b1_ms": step_latency_ms(folder, 1, max(20, args.reps // 10), args.threads),
                         "b256_ms": step_latency_ms(folder, 256, 5, args.threads)})
            print(rows[-1], flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0], epilog=EXIT_CODES, formatter_class=HelpFormatter)
    graphs = ["onnx", "onnx-window"]
    p.add_argument("--cards", nargs="*", type=card_name(graphs), default=CARDS, metavar="CARD",
                   help=f"bundled cards whose ONNX graph (onnx/ or onnx-window/) is quantized and measured, none for "
                        f"the --catalogues table alone; {cards_help(graphs)}")
    p.add_argument("--reps", type=positive_int, default=400,
                   help="timed calls of a batch-1 latency (the median is shown; fewer at batch 256)")
    p.add_argument("--threads", type=positive_int, default=1, help="ONNX Runtime's threads (evaluation and latency)")
    p.add_argument("--catalogues", nargs="*", type=positive_int, default=[],
                   help="also measure the bundled Mamba4Rec's architecture with this many items, random weights "
                        "(default: none, no such table)")
    p.add_argument("--markdown", type=markdown_path,
                   help="also write the tables to this file (default: print them only)")
    args = p.parse_args(argv)
    if not args.cards and not args.catalogues:           # a header and no table, a results file without one
        p.error("nothing to measure: --cards and --catalogues are both empty; give cards, catalogue sizes or both")
    logging.getLogger().setLevel(logging.ERROR)          # quantize_dynamic's "consider pre-processing" warning
    import onnxruntime

    rows = [r for card in args.cards for r in measure(card, args)]
    lines = [f"Produced by `{command_line('bench/int8_graphs.py', argv)}` ({time.strftime('%Y-%m-%d')}, cpu, ONNX "
             f"Runtime {onnxruntime.__version__}, {args.threads} thread(s))."
             + (" Metrics: zoo.evaluate's ONNX mode (`--onnx`) on each card's data and protocol (test users, ranks "
                "from the in-graph top-10)." if rows else "")
             + " Latency: median of one call of the graph itself (ONNX Runtime's run, without the session's input "
               "checks), after one untimed call; a step graph's call is one step of one new item from primed states"
             + (", a window graph's call re-encodes a full window of max_seq_length items." if rows else ".")]
    if rows:
        lines += ["", "| card | graph | model.onnx MiB | call ms, B=1 | call ms, B=256 | B=256 time vs fp32 | "
                  "test HR@10 | test NDCG@10 | NDCG@10 vs fp32 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = next(b for b in rows if b["card"] == r["card"] and b["variant"] == "fp32")
        lines.append(f"| {r['card']} ({r['kind']}) | {r['variant']} | {r['mb']:.2f} | {r['b1_ms']:.3f} | "
                     f"{r['b256_ms']:.2f} | {r['b256_ms'] / base['b256_ms']:.2f}x | {r['HR@10']:.4f} | "
                     f"{r['NDCG@10']:.4f} | {r['NDCG@10'] - base['NDCG@10']:+.4f} |")
    big = [r for n in args.catalogues for r in measure_catalogue(n, args)]
    if big:
        lines += ["", "Larger catalogues: the bundled Mamba4Rec's architecture (hidden 64, 1 layer) with random "
                  "weights and N items, step graphs.", "",
                  "| items | graph | model.onnx MiB | call ms, B=1 | call ms, B=256 | B=1 time vs fp32 | "
                  "B=256 time vs fp32 |", "|---:|---|---:|---:|---:|---:|---:|"]
        for r in big:
            base = next(b for b in big if b["n_items"] == r["n_items"] and b["variant"] == "fp32")
            lines.append(f"| {r['n_items']:,} | {r['variant']} | {r['mb']:.1f} | {r['b1_ms']:.3f} | "
                         f"{r['b256_ms']:.1f} | {r['b1_ms'] / base['b1_ms']:.2f}x | "
                         f"{r['b256_ms'] / base['b256_ms']:.2f}x |")
    write_table(lines, "Dynamic int8 quantization of the bundled graphs (ONNX Runtime)" if rows else
                "Dynamic int8 quantization at larger catalogues (ONNX Runtime)", args.markdown)


if __name__ == "__main__":
    run_cli(main, prog="python bench/int8_graphs.py")
