"""The benchmark scripts of ``bench/`` keep running, and their tables say what their numbers say.

Benchmarks are never asserted on their timings (they are measured, not tested). What is tested: each CPU benchmark
runs end to end in a tiny configuration (a script that rots would otherwise fail only when someone re-measures),
its table arithmetic (ratios, throughputs, state sizes) on hand-made timings, and the ML-1M tie-order statistics that
the README quotes, recomputed from the data. (``bench/paired_table.py``: ``tests/test_compare.py``; the GPU scripts:
``tests/test_trt_plugins.py``.)
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_docs import load_script  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _bench(name: str, monkeypatch):
    """``bench/<name>.py`` loaded as ``python bench/<name>.py`` runs it."""
    return load_script(f"bench/{name}.py", monkeypatch)


def _rows(md: str) -> dict[str, list[str]]:
    """Markdown table rows by their first cell."""
    return {cells[0]: cells[1:] for line in md.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}


@pytest.fixture
def own_tmp(tmp_path, monkeypatch):
    """A fresh empty folder as the temporary folder of the test (``tempfile`` here, ``$TMPDIR`` in the processes it
    starts), for a test to assert that a bench removed the scratch folders it made there (:func:`_left_in`)."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def _left_in(tmp: Path) -> list[str]:
    """What is left in the test's temporary folder (:func:`own_tmp`), less what libraries keep there of their own
    accord, not a bench's scratch files: torch's compile cache (``torchinductor_*``) and ONNX Runtime's session id
    file (``.ses``)."""
    return sorted(p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor_") and p.name != ".ses")


def test_step_latency_table_arithmetic(monkeypatch):
    """Each cell is latency · B / latency events per second; the ratio rows divide SASRec's re-encode by each ORT
    step, from the best-of-N times and from the medians."""
    b = _bench("bench_step_latency", monkeypatch)
    times = {"ORT step Mamba4Rec": 100e-6, "ORT step LRURec": 50e-6, "torch step Mamba4Rec": 1e-3,
             "torch step LRURec": 2.5e-3, "torch re-encode SASRec": 5e-3, "torch re-encode Mamba4Rec": 1.5}
    results = {(m, L, B): t * L / 50 * B for m, t in times.items() for L in (50, 200) for B in (1, 4)}
    monkeypatch.setattr(b, "MEDIANS", {k: v * (3 if "SASRec" in k[0] else 2) for k, v in results.items()})
    md = b.markdown(results, [50, 200], [1, 4], scaled={("torch re-encode Mamba4Rec", 200, 4): 2})
    first, second = md.split("**B = 4**")
    rows = _rows(first)
    assert rows["ORT step Mamba4Rec"] == ["100 µs · 10,000 ev/s", "400 µs · 2,500 ev/s"]
    assert rows["torch step LRURec"] == ["2.50 ms · 400 ev/s", "10.00 ms · 100 ev/s"]
    assert rows["torch re-encode Mamba4Rec"] == ["1.50 s · 1 ev/s", "6.00 s · 0 ev/s"]
    assert rows["*SASRec re-encode ÷ ORT step (Mamba4Rec / LRURec)*"] == ["50× / 100×", "50× / 100×"]
    assert rows["*same ratio from medians instead of best-of-N*"] == ["75× / 150×", "75× / 150×"]
    rows4 = _rows(second)
    assert rows4["ORT step LRURec"] == ["200 µs · 20,000 ev/s", "800 µs · 5,000 ev/s"]     # B rows per call
    assert rows4["torch re-encode Mamba4Rec"][1] == "24.00 s · 0 ev/s †"
    assert "† timed on a sub-batch (Mamba4Rec at L = 200, B = 4: 2 rows)" in second       # the rows it timed
    assert _rows(b.markdown({}, [50], [1]))["ORT step Mamba4Rec"] == ["-"]                 # a cell not timed
    legend = b.mermaid(results, [50, 200], 1).splitlines()[-1]                               # ordered at the last L
    assert legend == ("Lines, top to bottom at L = 200: torch re-encode Mamba4Rec, torch re-encode SASRec, torch step "
                      "LRURec, torch step Mamba4Rec, ORT step Mamba4Rec, ORT step LRURec")


def test_step_latency_bench_runs(monkeypatch, tmp_path, capsys, own_tmp):
    """A tiny sweep end to end: every method timed at every length, the file written with the command that made it;
    the graphs it exported are removed."""
    b = _bench("bench_step_latency", monkeypatch)
    out = tmp_path / "r.md"
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # unset: not written as set (it said OMP_NUM_THREADS=1)
    b.main(["--lengths", "5", "9", "--batches", "1", "--min-time", "0.002", "--markdown", str(out)])
    assert _left_in(own_tmp) == []
    text = out.read_text()
    assert text.startswith("# Stepwise inference vs re-encoding")
    assert "Produced by `python bench/bench_step_latency.py --lengths 5 9" in text
    rows = _rows(text)
    for m in b.METHODS:
        assert len(rows[m]) == 2 and all(re.fullmatch(r"[\d,.]+ (µs|ms|s) · [\d,]+ ev/s", c) for c in rows[m]), m
    assert all(re.fullmatch(r"\d+× / \d+×", c) for c in rows["*SASRec re-encode ÷ ORT step (Mamba4Rec / LRURec)*"])
    assert "```mermaid" in text


def test_exclude_seen_table_arithmetic(monkeypatch):
    b = _bench("bench_exclude_seen", monkeypatch)
    md = b.markdown([{"model": "LRURec", "n_items": 3417, "B": 256, "plain": 2e-4, "seen": 3e-4, "plain_med": 4e-4,
                      "seen_med": 5e-4, "state_bytes": 2048}])
    assert _rows(md)["LRURec"] == ["3,417", "256", "200 µs", "300 µs", "1.50× / 1.25×", "2.0 KiB + 13.3 KiB"]


def test_exclude_seen_bench_alternates_the_two_graphs(monkeypatch):
    """Each row's plain and --exclude-seen graphs are timed in alternating rounds (a burst of load hits both), and a
    cell is the best round (times) and the lowest round median."""
    b = _bench("bench_exclude_seen", monkeypatch)
    calls, fake = [], iter([5.0, 9.0, 3.0, 8.0, 4.0, 7.0] * 4)

    def timeit(fn, min_time, key=None):
        calls.append(key[-1])
        b.MEDIANS[key] = 2 * (t := next(fake))
        return t
    monkeypatch.setattr(b, "timeit", timeit)
    rows = b.bench([300], [1], 0.003, lambda m: None)
    assert calls == [False, True] * b.ROUNDS * 2 and b.ROUNDS >= 2                  # 2 models x ROUNDS x 2 graphs
    assert [(r["plain"], r["seen"], r["plain_med"], r["seen_med"]) for r in rows] == [(3.0, 7.0, 6.0, 14.0)] * 2


def test_exclude_seen_bench_runs(monkeypatch, tmp_path, own_tmp):
    """Both models, both graphs, per batch size; the state sizes are the ML-1M configs' (Mamba4Rec 1 layer: conv
    128 x 3 + SSM 128 x 32 floats = 17.5 KiB; LRURec: 2 blocks x 2 x 128 floats = 2 KiB) plus 4 bytes per item. The
    graphs it exported are removed."""
    b = _bench("bench_exclude_seen", monkeypatch)
    out = tmp_path / "s.md"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")           # recorded as it was (the header said 1 whatever it was)
    b.main(["--items", "300", "--batches", "1", "2", "--min-time", "0.002", "--markdown", str(out)])
    assert _left_in(own_tmp) == []
    assert "Produced by `OMP_NUM_THREADS=3 python bench/bench_exclude_seen.py --items 300 " in out.read_text()
    lines = [line for line in out.read_text().splitlines() if line.startswith("| Mamba4Rec") or line.startswith("| LRURec")]
    assert len(lines) == 4
    assert all("17.5 KiB + 1.2 KiB" in x for x in lines if "Mamba4Rec" in x)
    assert all("2.0 KiB + 1.2 KiB" in x for x in lines if "LRURec" in x)


def test_selective_scan_cpu_bench_runs(monkeypatch, capsys):
    """Every implementation timed forward and forward+backward; the first row of each length is the 1.0 reference."""
    b = _bench("bench_selective_scan_cpu", monkeypatch)
    monkeypatch.setattr(sys, "argv", ["bench_selective_scan_cpu.py", "--batch", "2", "--dim", "8", "--state", "4",
                                      "--lens", "16", "8", "--repeat", "1"])
    b.main()
    table = capsys.readouterr().out.split("fwd+bwd x")[1]
    rows = [line.split() for line in table.splitlines() if re.match(r"\s+\d+\s", line)]
    assert {r[0] for r in rows} == {"16", "8"} and len(rows) % 2 == 0 and len(rows) >= 4
    for L in ("16", "8"):
        first = next(r for r in rows if r[0] == L)
        assert first[-2:] == ["1.0", "1.0"]
    assert any("naive_loop" in " ".join(r) for r in rows)


def test_tie_statistics_on_hand_made_histories(monkeypatch):
    """Three users: same-second last two ratings whose order flips the test and valid items; no ties; and three
    distinct seconds of which two fall in one float32 step (64 s around 1e9)."""
    b = _bench("eval_tie_order", monkeypatch)
    by = {1: [(10.0, 0, 5), (20.0, 1, 7), (20.0, 2, 3)],
          2: [(100.0, 3, 1), (200.0, 4, 2), (300.0, 5, 3)],
          3: [(1_000_000_000.0, 6, 9), (1_000_000_010.0, 7, 8), (1_000_000_100.0, 8, 4)]}
    st = b.tie_stats(by)
    assert st == {"users": 3, "last two in the same second": 1 / 3, "test item shares its float32 step": 1 / 3,
                  "valid item shares its second": 1 / 3, "valid item shares its float32 step": 2 / 3,
                  "test item differs": 1 / 3, "valid item differs": 1 / 3}


def test_tie_statistics_quoted_in_the_readme_are_the_datas(monkeypatch, shared_data):
    """The README's same-second figures (42.3% of users' last two ratings share a second, the test item differs for
    26.9%, the validation item for 37.5%, 60.5% share a float32 step) are what ``bench/eval_tie_order.py`` computes
    from ``ml-1m.users0001-2999.inter.gz``."""
    path = shared_data / "ml-1m.users0001-2999.inter.gz"
    if not path.exists():
        pytest.skip(f"{path} not found (the ML-1M users 1-2999 file with timestamps)")
    b = _bench("eval_tie_order", monkeypatch)
    st = b.tie_stats(b.events_by_user(str(path)))
    readme = (ROOT / "README.md").read_text()
    assert st["users"] == 2999
    for key in ("last two in the same second", "test item differs", "valid item differs",
                "test item shares its float32 step"):
        assert f"{st[key]:.1%}" in readme, (key, f"{st[key]:.1%}")


def test_prefix_objective_bench_runs(monkeypatch, tmp_path):
    """Both computations of TiM4Rec's prefix objective timed on a tiny config (one window length shorter than the
    window, one as long): a row per length, the speed-up is the ratio of the two timings, and the two losses agree
    (the script refuses a row whose losses differ by more than 1e-5)."""
    b = _bench("bench_prefix_objective", monkeypatch)
    tiny = dict(n_items=40, max_seq_length=8, hidden_size=16, num_layers=1, d_state=8, head_dim=8, chunk_size=4)
    monkeypatch.setattr(b, "CONFIGS", {"tiny": (tiny, 2, (3, 8))})
    out = tmp_path / "p.md"
    b.main(["--repeats", "1", "--markdown", str(out)])
    rows = [r[1:] for r in ([c.strip() for c in line.strip("|").split("|")] for line in out.read_text().splitlines()
                            if line.startswith("| tiny"))]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [("8", "2", "3", "6"), ("8", "2", "8", "16")]
    for r in rows:
        slow, fast, ratio, diff = float(r[4]), float(r[5]), r[6], float(r[7])
        # the timings are printed to 3 decimals, the speed-up from the unrounded ones (to 1 decimal)
        lo, hi = (slow - 5e-4) / (fast + 5e-4), (slow + 5e-4) / max(fast - 5e-4, 1e-9)
        assert ratio.endswith("x") and lo - 0.05 <= float(ratio[:-1]) <= hi + 0.05, r
        assert diff <= 1e-5


def test_train_cost_bench_runs(monkeypatch, tmp_path):
    """A tiny run end to end: each model's supervised targets (every position of a causal model, the last --prefixes
    of a prefix-objective one), its time per target relative to Mamba4Rec's, and the memory of its step measured in a
    fresh interpreter; the file says the command that made it."""
    b = _bench("bench_train_cost", monkeypatch)
    out = tmp_path / "cost.md"
    b.main(["--batch", "2", "--seq-len", "12", "--prefixes", "3", "--repeats", "1",
            "--models", "mamba4rec", "sasrec", "tim4rec", "--markdown", str(out)])
    text = out.read_text()
    assert text.startswith("# Training cost per step and per target") and "--seq-len 12 --prefixes 3" in text
    rows = _rows(text)
    assert [rows[m][2] for m in ("mamba4rec", "sasrec", "tim4rec")] == ["24", "24", "6"]
    assert rows["mamba4rec"][0] == "card mamba4rec-ml1m" and rows["tim4rec"][0] == "defaults (official ML-1M)"
    assert rows["mamba4rec"][5] == "1.0x"
    for m, cells in rows.items():
        if m in ("model", "---"):
            continue
        seconds, ms, ratio = float(cells[3]), float(cells[4]), float(cells[5].rstrip("x"))
        # both printed rounded: seconds to 1e-4, milliseconds to 1e-3
        assert ms == pytest.approx(seconds * 1e3 / int(cells[2]), abs=0.05 / int(cells[2]) + 0.0005 + 1e-9), m
        assert ratio == pytest.approx(ms / float(rows["mamba4rec"][4]), rel=0.06, abs=0.06), m
        assert float(cells[6]) >= 0, m


def test_sampled_softmax_bench_runs(monkeypatch, tmp_path):
    """A tiny run end to end: a full cross-entropy row and two sampled rows (dense and sparse item gradient) per
    catalogue, each row's time per target the sum of its two timings over the targets, the full row the 1.00x
    reference, the logits column targets x items x 4 bytes, and the memory of each row measured in a fresh
    interpreter."""
    b = _bench("bench_sampled_softmax", monkeypatch)
    out = tmp_path / "ss.md"
    b.main(["--catalogues", "50", "400", "--negatives", "8", "--batch", "2", "--seq-len", "5", "--repeats", "1",
            "--markdown", str(out)])
    text = out.read_text()
    assert text.startswith("# Full cross-entropy vs sampled softmax") and "--negatives 8 --batch 2" in text
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| 50 ") or line.startswith("| 400 ")]
    dense, sparse = "dense, Adam", "sparse, lazy Adam on the table"
    assert [tuple(r[:3]) for r in rows] == [
        (n, loss, grad) for n in ("50", "400") for loss, grad in (
            ("full cross-entropy", dense), ("sampled softmax, 8 negatives", dense),
            ("sampled softmax, 8 negatives", sparse))]
    for r in rows:
        fb, opt, per_target = float(r[3]), float(r[4]), float(r[5])
        assert per_target == pytest.approx((fb + opt) / 10, abs=0.011), r      # 10 targets; cells rounded
        assert float(r[7]) >= 0 and r[8] == f"{10 * int(r[0]) * 4 / 2**20:.0f}"
    assert rows[0][6] == rows[3][6] == "1.00x"


def test_eval_memory_bench_runs(monkeypatch, tmp_path):
    """A tiny run end to end: a row per catalogue, each measured in its own interpreter; the scores column is
    batch x catalogue x 4 bytes, and the old whole-matrix count gives the same ranks as rank_of_target."""
    import torch

    from zoo.metrics import rank_of_target

    b = _bench("bench_eval_memory", monkeypatch)
    out = tmp_path / "e.md"
    b.main(["--catalogues", "50", "400", "--batch", "4", "--seq-len", "5", "--markdown", str(out)])
    text = out.read_text()
    assert text.startswith("# Full-ranking evaluation as the catalogue grows") and "--batch 4" in text
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| 50 ") or line.startswith("| 400 ")]
    assert [r[0] for r in rows] == ["50", "400"]
    for r in rows:
        assert r[1] == f"{4 * int(r[0]) * 4 / 2**20:.0f}" and float(r[2]) > 0 and float(r[3]) >= 0
        assert all(float(x) >= 0 for cell in r[4:] for x in cell.split(" / "))
    scores, targets = torch.randn(6, 30), torch.randint(1, 30, (6,))
    assert torch.equal(b.whole_matrix_rank(scores, targets), rank_of_target(scores, targets))


def test_the_bench_sets_up_the_sparse_optimizer_as_zoo_train_does(monkeypatch):
    import torch

    from zoo.train import SparseItemOptimizer

    b = _bench("bench_sampled_softmax", monkeypatch)

    model = b.build(30)
    opt = b.optimizer(model, True)
    assert isinstance(opt, SparseItemOptimizer) and model.get_input_embeddings().sparse
    assert isinstance(b.optimizer(b.build(30), False), torch.optim.Adam)


def _run_log(tmp_path, name, loss, seed, ndcg, data="d.tsv", model="sasrec", finished=True, sparse=False):
    """A finished zoo.train run folder with the fields bench/loss_table.py reads."""
    log = {"model_type": model, "data": f"/x/{data}", "seed": seed,
           "protocol": {"split": "leave-one-out by time (RecBole LS valid_and_test)", "history_masked": False},
           "train": {"optimizer": "adam", **({"sparse_item_grad": True} if sparse else {})},
           "loss": loss, "best_valid_NDCG10": ndcg + 0.01, "best_epoch": 2, "train_minutes": 1.5,
           "epochs": [{"epoch": 1, "seconds": 10.0}, {"epoch": 2, "seconds": 20.0}, {"epoch": 3, "seconds": 30.0}]}
    if finished:
        log["test"] = {"HR@10": 2 * ndcg, "NDCG@10": ndcg, "MRR@10": ndcg / 2}
    folder = tmp_path / name
    folder.mkdir()
    (folder / "train_log.json").write_text(json.dumps(log))
    return str(folder)


def test_loss_table_groups_runs_by_loss_with_their_means(monkeypatch, tmp_path, capsys):
    b = _bench("loss_table", monkeypatch)
    sampled = {"type": "sampled-softmax", "negatives": 64, "sampler": "uniform"}
    runs = [_run_log(tmp_path, "ce-1", {"type": "ce"}, 1, 0.10), _run_log(tmp_path, "ce-2", None, 2, 0.20),
            _run_log(tmp_path, "ss-1", sampled, 1, 0.30), _run_log(tmp_path, "sp-1", sampled, 1, 0.25, sparse=True)]
    out = tmp_path / "t.md"
    b.main([*runs, "--markdown", str(out)])
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| loss")]
    assert [r[:3] for r in rows] == [["full cross-entropy", "`ce-1`", "1"], ["full cross-entropy", "`ce-2`", "2"],
                                     ["**full cross-entropy**", "mean of 2", ""],
                                     ["sampled softmax, 64 uniform", "`ss-1`", "1"],   # a log without "loss" is CE
                                     # the same loss with the lazy item optimizer is its own group
                                     ["sampled softmax, 64 uniform + sparse item gradient", "`sp-1`", "1"]]
    assert rows[2][3:] == ["0.1600", "0.3000", "0.1500", "0.0750", "3.0 (2.0)", "20", "1.5"]
    assert rows[3][3:8] == ["0.3100", "0.6000", "0.3000", "0.1500", "3 (2)"]
    # runs that differ in more than the loss, or one unfinished, are refused (test_loss_table_exit_statuses)
    other = _run_log(tmp_path, "other", {"type": "ce"}, 1, 0.1, data="e.tsv")
    unfinished = _run_log(tmp_path, "cut", {"type": "ce"}, 3, 0.1, finished=False)
    for bad, message in [([runs[0], other], "differ in data"),
                         ([runs[0], unfinished], "has not finished"), ([str(tmp_path)], "no train_log.json")]:
        with pytest.raises(SystemExit):
            b.main(bad)
        assert message in capsys.readouterr().err


def test_loss_table_exit_statuses(monkeypatch, tmp_path, capsys):
    """Runs that cannot be tabled together -- one unfinished, one of another model, data file or protocol, a log
    that is not a zoo.train log -- are bad input: status 1 (the table of exit statuses: the run failed; they were
    a usage error, 2, though no option of the bench was wrong), one line naming the run, nothing written. One run
    named twice (``A``, ``A/``), which its group's mean would count twice, is the one usage error: 2."""
    b = _bench("loss_table", monkeypatch)
    ok = _run_log(tmp_path, "ok", {"type": "ce"}, 1, 0.1)
    bad_log = tmp_path / "list"
    bad_log.mkdir()
    (bad_log / "train_log.json").write_text("[]")
    half = tmp_path / "half"
    half.mkdir()
    (half / "train_log.json").write_text(json.dumps({"model_type": "sasrec", "data": "/x/d.tsv"}))
    out = tmp_path / "t.md"
    cases = [([ok, _run_log(tmp_path, "cut", {"type": "ce"}, 2, 0.1, finished=False)], 1,
              f"error: {tmp_path / 'cut'}: the run has not finished"),
             ([ok, _run_log(tmp_path, "gru", {"type": "ce"}, 2, 0.1, model="gru4rec")], 1,
              f"error: {tmp_path / 'gru'} and {ok} differ in model (gru4rec vs sasrec)"),
             ([ok, _run_log(tmp_path, "e", {"type": "ce"}, 2, 0.1, data="e.tsv")], 1,
              f"error: {tmp_path / 'e'} and {ok} differ in data (e.tsv vs d.tsv)"),
             ([ok, str(bad_log)], 1, f"error: {bad_log}: its train_log.json is not a zoo.train log ("),
             ([ok, str(half)], 1, f"error: {half}: its train_log.json is not a zoo.train log (no 'protocol')"),
             ([ok, ok + "/"], 2, f"error: {ok} and {ok}/ are the same run; name each run once"),
             ([ok, ok], 2, f"error: {ok} and {ok} are the same run")]
    for runs, code, says in cases:
        with pytest.raises(SystemExit) as e:
            b.main([*runs, "--markdown", str(out)])
        err = capsys.readouterr().err
        assert e.value.code == code and says in err and not out.exists(), (runs, err)
        assert err.count("\n") == 1 if code == 1 else err.startswith("usage:")


@pytest.mark.parametrize("protocol, says", [
    ({"history_masked": True}, "history masked)"),
    ({"history_masked": False}, "history not masked)"),
    ({"split": "leave-one-out"}, "history masking unknown (not in the logs))"),          # a log from before the entry
    ("recbole", "history masking unknown (not in the logs))"),                           # no JSON object at all
    ({"history_masked": "no"}, 'history masking unknown (the logs say "no"))'),          # not read as true
    ({"history_masked": 1}, "history masking unknown (the logs say 1))")])
def test_loss_table_header_says_how_the_history_was_treated(monkeypatch, tmp_path, capsys, protocol, says):
    """The header's protocol words come from the logs' ``protocol.history_masked``: a log without it (older logs)
    was a KeyError traceback after the table was built, and a value that is not true/false was read by its truth
    ("no" printed "history masked"); both now say the masking is unknown, the second with the value the logs hold."""
    b = _bench("loss_table", monkeypatch)
    runs = [_run_log(tmp_path, f"ce-{seed}", {"type": "ce"}, seed, 0.1) for seed in (1, 2)]
    for run in runs:                                    # the runs share their protocol (the table refuses others)
        path = Path(run) / "train_log.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "protocol": protocol}))
    out = tmp_path / "t.md"
    b.main([*runs, "--markdown", str(out)])
    head = out.read_text().splitlines()[0]
    assert head.startswith("Produced by `python bench/loss_table.py ") and head.endswith(
        f" (full ranking, {says}."), head               # the split's words: test_loss_table_header_says_the_split
    assert capsys.readouterr().out.startswith(head + "\n")


#: ``protocol.split`` as zoo.train's log writer records it: leave-one-out, and a temporal split with its cuts
LOO = "leave-one-out by time (RecBole LS valid_and_test)"
CUTS = {"valid_from": 1_000_000_000.0, "test_from": 1_000_500_000.0, "test_share": 0.1, "valid_share": 0.05}


@pytest.mark.parametrize("protocol, split, says", [
    ({"split": LOO, "history_masked": False}, {"kind": "leave-one-out"},
     "test on the leave-one-out split (full ranking, history not masked)."),
    ({"split": f"temporal: {CUTS}", "history_masked": True}, {"kind": "temporal", "cuts": CUTS},
     "test on the temporal split at test share 0.1, validation share 0.05 (full ranking, history masked)."),
    ({"split": f"temporal: {CUTS}", "history_masked": False}, None,                  # no split record of its own
     "test on the temporal split (full ranking, history not masked)."),
    ({"history_masked": False}, None, "test on an unknown split, not in the logs (full ranking, history not masked)."),
    ("recbole", None, "test on an unknown split, not in the logs (full ranking, history masking unknown (not in the "
                      "logs))."),
    ({"split": 3, "history_masked": True}, None, "test on an unknown split, the logs say 3 (full ranking, history "
                                                 "masked).")])
def test_loss_table_header_says_the_split(monkeypatch, tmp_path, capsys, protocol, split, says):
    """The header said "test on the leave-one-out split" whatever the runs were tested on; runs of ``zoo.train
    --temporal-split`` record ``protocol.split`` as ``temporal: {cuts}`` (and the shares in the log's ``split``):
    the header now says the split the logs record, ``unknown`` where they do not."""
    b = _bench("loss_table", monkeypatch)
    runs = [_run_log(tmp_path, f"ce-{seed}", {"type": "ce"}, seed, 0.1) for seed in (1, 2)]
    for run in runs:
        path = Path(run) / "train_log.json"
        log = {**json.loads(path.read_text()), "protocol": protocol}
        path.write_text(json.dumps({**log, **({"split": split} if split is not None else {})}))
    out = tmp_path / "t.md"
    b.main([*runs, "--markdown", str(out)])
    head = out.read_text().splitlines()[0]
    assert head.startswith("Produced by `python bench/loss_table.py ") and head.endswith(
        f"sasrec on `d.tsv`, {says}"), head
    assert capsys.readouterr().out.startswith(head + "\n")


def _shop_lines(seed: int, users: int, lengths: tuple[int, int], old_items: int, new_items: int) -> list[str]:
    """A TSV's lines: each user walks the items ``100, 101, ...`` in a cycle of ``old_items`` from a random start and
    time, a few minutes a step; after ``1_000_006_000`` only the ``new_items`` after them (none: the old cycle on)."""
    import random

    rng = random.Random(seed)
    lines = ["user_id\titem_id\ttimestamp"]
    for u in range(1, users + 1):
        t, item = rng.randrange(5_000), rng.randrange(old_items)
        for _ in range(rng.randint(*lengths)):
            lines.append(f"{u}\t{100 + item}\t{1_000_000_000 + t}")
            t += rng.randint(100, 600)
            item = ((item + 1) % old_items if t < 6_000 or not new_items
                    else old_items + (item + 1) % new_items)                   # after the cut: new items only
    return lines


def test_catalogue_growth_bench_runs(monkeypatch, tmp_path):
    """A tiny run end to end on a file whose items 140..149 appear only after the cut: the old model knows 40 items,
    the continued runs add the 10 others, and the table counts the test targets that are new items."""
    lines = _shop_lines(seed=0, users=60, lengths=(12, 20), old_items=40, new_items=10)
    data = tmp_path / "shop.tsv"
    data.write_text("\n".join(lines) + "\n")
    b = _bench("catalogue_growth", monkeypatch)
    out = tmp_path / "g.md"
    b.main(["--data", str(data), "--before", str(1_000_006_000), "--work", str(tmp_path / "w"), "--old-kcore", "0",
            "--train-args",
            "--max-len 20 --epochs 2 --batch-size 16 --lr 5e-3 --kcore 0 --set hidden_size=16 inner_size=32",
            "--short-epochs", "1", "--markdown", str(out)])
    text = out.read_text()
    old_items = {int(r.split("\t")[1]) for r in lines[1:] if int(r.split("\t")[2]) < 1_000_006_000}
    assert old_items == set(range(100, 140))
    assert "(0-core: 40 items" in text and "the continued runs add 10 items to it" in text
    last = {}
    for r in lines[1:]:
        u, i, _ = r.split("\t")
        last[u] = int(i)                                             # each user's test target: the last item
    assert f"{sum(i >= 140 for i in last.values())} of 60 test targets are items the old model did not know" in text
    rows = _rows(text)
    assert {"`continued`", "`fresh`", "`continued-1`", "`fresh-1`"} <= rows.keys()
    assert rows["`continued-1`"][0] == "1 (1)" and rows["`fresh`"][0].startswith("2 (")
    assert "`continued` − `fresh`, new-item targets" in rows


def test_item_similarity_bench_runs(monkeypatch, tmp_path, shared_data):
    """One bundled model on ML-1M: the rows of the table, and the retrieval vectors reproducing its ranks."""
    b = _bench("item_similarity", monkeypatch)
    out = tmp_path / "s.md"
    b.main(["--models", "gru4rec-ml1m", "--threads", "2", "--markdown", str(out)])
    text = out.read_text()
    card = json.loads((ROOT / "hub_cards" / "gru4rec-ml1m" / "eval_results.json").read_text())["metrics"]
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| gru4rec-ml1m")]
    by = {r[1].strip(): [c.strip() for c in r[2:]] for r in rows if len(r) == 5}
    assert set(by) == {"full", "last item", "cosine"}
    assert by["full"][0] == f"{card['HR@10']:.4f}"                     # the card's number
    vec = [r for r in rows if len(r) == 7][0]
    assert vec[3].strip() == "yes" and float(vec[2]) < 1e-4
    assert "| (no model) | transitions |" in text and "| (no model) | popularity |" in text


def test_sampled_metrics_bench_runs(monkeypatch, tmp_path, shared_data):
    """Two bundled models on the first 300 ML-1M test users: the full-ranking row is what zoo.evaluate measures on them,
    the sampled ones are ranks among the same shared negatives, and the ordering table counts flipped pairs."""
    from transformers import AutoModel

    from zoo.data import leave_one_out, load_dataset
    from zoo.evaluate import align_with_model, evaluate_model

    b = _bench("sampled_metrics", monkeypatch)
    out = tmp_path / "s.md"
    res = b.main(["--models", "gru4rec-ml1m", "lrurec-ml1m", "--max-users", "300", "--markdown", str(out)])
    model = AutoModel.from_pretrained(ROOT / "hub_cards" / "gru4rec-ml1m")
    ds, _ = align_with_model(load_dataset(shared_data / "ml-1m.5core.seq.gz"), model)
    full = evaluate_model(model, leave_one_out(ds).test.head(300), ks=(10,), progress=False)
    assert res["results"]["gru4rec-ml1m"]["full"]["HR@10"] == pytest.approx(full["HR@10"], abs=1e-9)
    for name in ("gru4rec-ml1m", "lrurec-ml1m", "(popularity)"):
        r = res["results"][name]
        assert r["uni100"]["HR@10"] > r["full"]["HR@10"] and len(res["spread"][name]) == 5
    assert b.flips({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 3.0, "b": 2.0, "c": 1.0}) == 3
    assert b.flips({"a": 1.0, "b": 2.0}, {"a": 1.5, "b": 2.5}) == 0
    text = out.read_text()
    assert "| full |" in text and "| uni100 |" in text and "of 3 |" in text and "300 test users" in text


def test_day_ties_bench_on_a_file_with_same_day_reviews(monkeypatch, tmp_path):
    """A generated file whose users review two items on their last day in descending id order: the item order
    moves every test item, the tie shares count it, and the baselines and a given run are evaluated under both."""
    import random

    from zoo.train import main as train_main

    rng = random.Random(0)
    lines = ["user_id\titem_id\ttimestamp"]
    for u in range(1, 41):
        day = 86400 * rng.randrange(1, 50)
        items = rng.sample(range(100, 130), 6)
        for j, i in enumerate(items[:4]):
            lines.append(f"{u}\t{i}\t{day + 86400 * j}")
        a, b = sorted(items[4:], reverse=True)                # the last day: two reviews, higher id first
        lines += [f"{u}\t{a}\t{day + 86400 * 9}", f"{u}\t{b}\t{day + 86400 * 9}"]
    data = tmp_path / "days.tsv"
    data.write_text("\n".join(lines) + "\n")
    train_main(["--model", "gru4rec", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1",
                "--kcore", "0", "--no-progress", "--set", "embedding_size=8", "hidden_size=8"])
    b = _bench("day_ties", monkeypatch)
    out = tmp_path / "t.md"
    res = b.main(["--data", str(data), "--models", str(tmp_path / "run"), "--labels", "tiny run", "--kcore", "0",
                  "--markdown", str(out)])["days.tsv"]
    assert res["test_tied"] == 1.0 and res["valid_tied"] == 0.0 and res["test_item_moved"] == 1.0
    assert set(res["rows"]) == {"most popular (`--baseline pop`)", "first-order transitions (`--baseline markov`)",
                                "tiny run"}
    text = out.read_text()
    assert "the test item shares its day with the item before it for 100.0%" in text and "| tiny run |" in text


def test_hf_trainer_bench_runs(monkeypatch, tmp_path):
    """``zoo.train`` and the ``Trainer`` side by side on a small generated file, one epoch, one seed: a row per loop,
    the means and the time ratio; both learn the chain far above random (40 items: HR@10 0.25)."""
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate (pip install -e '.[train]')")
    from test_train import _markov_file

    b = _bench("hf_trainer", monkeypatch)
    out = tmp_path / "t.md"
    b.main(["--data", str(_markov_file(tmp_path / "m.tsv")), "--epochs", "3", "--seeds", "0", "--max-len", "30",
            "--batch-size", "16", "--lr", "5e-3", "--markdown", str(out)])
    text = out.read_text()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
             if line.startswith(("| zoo.train |", "| Trainer |"))]
    rows = [r for r in cells if len(r) == 8]                                       # the per-seed table's rows
    assert [r[0] for r in rows] == ["zoo.train", "Trainer"] and [r[1] for r in rows] == ["0", "0"], text
    assert all(float(r[5]) > 2.5 * 10 / 40 for r in rows), rows        # test HR@10
    assert re.search(r"Trainer / zoo.train wall time: \d+\.\d\dx", text)


def test_user_states_bench_runs(monkeypatch, tmp_path, own_tmp):
    """One bundled step graph, few users and events: a row per store and batch, the one-per-call rows at 1.0x, and
    the state size the graph's spec gives; its SQLite files (and the Redis server's folder) are removed."""
    pytest.importorskip("onnxruntime", reason="the step graphs run with ONNX Runtime")
    b = _bench("bench_user_states", monkeypatch)
    out = tmp_path / "u.md"
    b.main(["--cards", "gru4rec-ml1m", "--users", "16", "--events", "64", "--batch", "8", "--markdown", str(out)])
    assert _left_in(own_tmp) == []
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.read_text().splitlines()
            if line.startswith("| gru4rec-ml1m |")]
    stores = ["dict", "bytes (np.savez)", "bytes (state_store.BytesStore)",
              "SQLite file (state_store.SQLiteStateStore)", "SQLite file, synchronous=FULL"]
    if shutil.which("redis-server") and importlib.util.find_spec("redis"):     # the bench starts a server of its own
        stores.append("Redis on loopback (state_store.RedisStateStore)")
    assert [(r[1], r[2]) for r in rows] == [(s, n) for s in stores for n in ("1", "8")]
    assert all(r[5] == "1.0x" for r in rows if r[2] == "1")
    spec = json.loads((ROOT / "hub_cards" / "gru4rec-ml1m" / "onnx" / "state_spec.json").read_text())
    size = sum(4 * int(np.prod(s["shape"][1:])) for s in spec["state"])          # float32 tensors, batch of 1
    assert {r[6] for r in rows} == {f"{size:,}"}


def test_shared_store_bench_runs(monkeypatch, tmp_path, own_tmp):
    """Two worker processes with dicts of their own, then on one SQLite file, each on its own users and then on the
    same two: a row per configuration, no event lost in any, and no commit refused while the workers have users of
    their own. The SQLite files (and the Redis server's folder) are removed."""
    pytest.importorskip("onnxruntime", reason="the step graphs run with ONNX Runtime")
    b = _bench("shared_store", monkeypatch)
    out = tmp_path / "s.md"
    b.main(["--card", "gru4rec-ml1m", "--processes", "2", "--events", "40", "--users", "8", "--hot-users", "2",
            "--markdown", str(out)])
    assert _left_in(own_tmp) == []
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.read_text().splitlines()
            if line.startswith(("| dict", "| SQLite", "| Redis"))]
    want = [("dict per worker (not shared)", "2", "own"), ("SQLiteStateStore", "2", "own"),
            ("SQLiteStateStore, checkpoint_every=None", "2", "own"), ("SQLiteStateStore", "2", "hot (shared)")]
    if shutil.which("redis-server") and importlib.util.find_spec("redis"):     # the bench starts a server of its own
        want += [("RedisStateStore (loopback)", "2", "own"), ("RedisStateStore (loopback)", "2", "hot (shared)")]
    assert [(r[0], r[1], r[2]) for r in rows] == want, rows
    assert all(r[3] == "80" for r in rows) and rows[0][5] == "1.00x", rows
    assert all(r[6] == "0" for r in rows if r[2] == "own"), rows                  # commits refused: own users
    assert [r[8] for r in rows] == ["-"] + ["0"] * (len(want) - 1), rows
    # the start skew (barrier), each worker's busy time and the events/s summed over the workers (found at the end)
    assert all(float(r[-3].rstrip(" †")) >= 0 and len(r[-2].split()) == 2 and float(r[-1].replace(",", "")) > 0
               for r in rows), rows


def test_sqlite_wal_bench_runs(monkeypatch, tmp_path, own_tmp):
    """One worker process, one second of load a configuration: a row for the default limit and for None, with the
    events served, latency percentiles in order and WAL sizes; the databases are removed."""
    pytest.importorskip("onnxruntime", reason="the step graphs run with ONNX Runtime")
    b = _bench("sqlite_wal", monkeypatch)
    out = tmp_path / "w.md"
    b.main(["--card", "gru4rec-ml1m", "--seconds", "1", "--processes", "1", "--users", "8", "--markdown", str(out)])
    assert _left_in(own_tmp) == []
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.read_text().splitlines()
            if line.startswith(("| 64 MiB", "| None"))]
    assert [(r[0], r[1]) for r in rows] == [("64 MiB (default)", "1"), ("None", "1")], rows
    for r in rows:
        assert int(r[2].replace(",", "")) > 0
        p50, p99, p999, mx = map(float, r[4:8])          # printed to 3, 3, 2 and 1 decimals: in order up to that
        assert 0 < p50 <= p99 <= p999 + 0.005 and p999 <= mx + 0.05, r   # (p99.9 32.41 and max 32.4 were in order)
        assert len(r) == 15 and int(r[11]) >= 0, r                                # truncations by writers
        assert float(r[12].rstrip(" †")) >= 0 and len(r[13].split()) == 1 and float(r[14].replace(",", "")) > 0, r


def test_int8_graphs_bench_runs(monkeypatch, tmp_path, shared_data):
    """One bundled step graph: the fp32 row reproduces the card's ONNX metrics, and both int8 rows are written, smaller
    than fp32."""
    pytest.importorskip("onnxruntime.quantization", reason="ONNX Runtime's quantization tools")
    b = _bench("int8_graphs", monkeypatch)
    out = tmp_path / "q.md"
    b.main(["--cards", "gru4rec-ml1m", "--reps", "5", "--markdown", str(out)])
    rows = {r[1]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in out.read_text().splitlines()
                              if line.startswith("| gru4rec-ml1m (step) |"))}
    assert set(rows) == {"fp32", "int8 per tensor", "int8 per channel"}
    card = json.loads((ROOT / "hub_cards" / "gru4rec-ml1m" / "eval_results.json").read_text())["metrics"]
    assert rows["fp32"][6] == f"{card['HR@10']:.4f}" and rows["fp32"][8] == "+0.0000" and rows["fp32"][5] == "1.00x"
    assert all(float(rows[v][2]) < float(rows["fp32"][2]) for v in ("int8 per tensor", "int8 per channel"))
    # the window graphs' latency path (their metrics rows run the same zoo.evaluate --onnx as the step graphs')
    assert b.window_latency_ms(str(ROOT / "hub_cards" / "sasrec-ml1m" / "onnx-window"), 2, 2, 1) > 0


def test_int8_graphs_bench_larger_catalogue_runs(monkeypatch, tmp_path):
    """--catalogues: the bundled Mamba4Rec's architecture with N random-weight items, fp32 and int8 rows side by side
    (no data needed); the int8 graph is the smaller."""
    pytest.importorskip("onnxruntime.quantization", reason="ONNX Runtime's quantization tools")
    b = _bench("int8_graphs", monkeypatch)
    out = tmp_path / "q.md"
    b.main(["--cards", "--catalogues", "3000", "--reps", "2", "--markdown", str(out)])
    text = out.read_text()
    assert "| card |" not in text                      # no card asked for: no card table
    rows = {r[1]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
                              if line.startswith("| 3,000 |"))}
    assert set(rows) == {"fp32", "int8 per channel"}
    assert rows["fp32"][5] == rows["fp32"][6] == "1.00x"
    assert 0 < float(rows["int8 per channel"][2]) < float(rows["fp32"][2])


def test_temporal_split_bench_runs(monkeypatch, tmp_path):
    """Both splits of a generated file: leave-one-out trains on some of the future, the temporal split on none."""
    from test_train import _markov_file

    b = _bench("temporal_split", monkeypatch)
    out = tmp_path / "t.md"
    b.main(["--data", str(_markov_file(tmp_path / "m.tsv")), "--markdown", str(out)])
    rows = {r[1]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in out.read_text().splitlines()
                              if line.startswith("| m.tsv |"))}
    assert set(rows) == {"leave-one-out", "temporal"}
    assert float(rows["leave-one-out"][4]) > 0.1 and rows["temporal"][4] == "0.000"


def _triton_server_or_skip():
    from export import triton_server as S

    try:
        S.server_python()
    except RuntimeError as e:
        pytest.skip(str(e))


def test_triton_bench_runs(monkeypatch, tmp_path):
    """The loopback load test on a real server, one client, a few events: a row per level, every event answered."""
    pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed")
    _triton_server_or_skip()
    b = _bench("bench_triton", monkeypatch)
    out = tmp_path / "t.md"
    b.main(["--concurrency", "1", "--events", "10", "--events-per-seq", "5", "--history", "5", "--max-seconds", "20",
            "--out", str(out)])
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.read_text().splitlines()
            if line.startswith("| 1 |")]
    assert len(rows) == 1 and rows[0][1] == "10" and float(rows[0][2]) > 0, rows


def test_triton_many_users_bench_runs(monkeypatch, tmp_path, own_tmp):
    """One user a call against four, explicit and implicit state: a row per batch, the first of each at 1.0x, as many
    calls as the events need; the model repository is removed."""
    pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed")
    _triton_server_or_skip()
    b = _bench("triton_many_users", monkeypatch)
    out = tmp_path / "m.md"
    b.main(["--users", "8", "--events", "16", "--batch", "1", "4", "--markdown", str(out)])
    assert _left_in(own_tmp) == []
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.read_text().splitlines()
            if line.startswith(("| explicit", "| implicit"))]
    assert [(r[0].split()[0], r[1], r[2]) for r in rows] == [
        (s, n, c) for s in ("explicit", "implicit") for n, c in (("1", "16"), ("4", "4"))], rows
    assert rows[0][5] == rows[2][5] == "1.0x", rows


def test_emu_switch_bench_runs(monkeypatch, tmp_path):
    """Both fiber switches of the CUDA emulator built and timed on one op's fp32 cases of each check (the kernel
    matrix, the kernels alone, the plugin path and the ASan run where their headers / runtime are here): a row each,
    with the runs checked, two times and the speed-up (never asserted: a measurement)."""
    from export import build_plugins as BP

    if BP._cxx() is None:
        pytest.skip("no C++ compiler: the emulated kernels cannot be built")
    b = _bench("emu_switch", monkeypatch)
    out = tmp_path / "e.md"
    b.main(["--long-T", "4", "--plugin-T", "4", "--asan-T", "4", "--repeat", "1", "--cases", "LRUScan-float32",
            "--markdown", str(out)])
    text = out.read_text()
    assert text.startswith("# The CUDA emulator's fiber switch") and "bench/emu_switch.py --long-T 4" in text
    rows = _rows(text)
    want = ["harness check, matrix at T = 4", "kernels alone, matrix at T = 4"]
    if BP.find_tensorrt_include()[0] is not None:
        want.append("plugin check (`--plugin`), matrix at T = 4")
    try:
        BP.asan_runtime()
        want += ["ASan: the command's start alone (interpreter, torch, the library; no case)",
                 "ASan check (`--asan`, own process), matrix at T = 4"]
    except BP.BuildError:
        pass
    assert [r for r in rows if r != "check" and "not run" not in r] == want, rows
    for r in want:
        runs, fast, slow, ratio = rows[r]
        assert runs == ("0" if "start alone" in r else "8"), (r, rows[r])
        assert float(fast) > 0 and float(slow) > 0 and re.fullmatch(r"\d+\.\dx", ratio), (r, rows[r])


def test_a_rerun_keeps_what_was_written_by_hand_below_the_tables(tmp_path, capsys):
    """``--markdown`` of a file that exists: the tables above the keep line are replaced, the reading written by hand
    below it stays; a file without the line (not written by a bench) is kept whole as ``.prev``."""
    sys.path.insert(0, str(ROOT / "bench"))
    from benchutil import KEEP, write_markdown, write_table

    out = tmp_path / "r.md"
    write_table(["| a | 1 |"], "T", str(out))
    assert out.read_text() == f"# T\n\n| a | 1 |\n\n{KEEP}\n"
    out.write_text(out.read_text() + "\nReading: a is one.\n")                  # the analysis, added by hand
    write_table(["| a | 2 |"], "T", str(out))
    assert out.read_text() == f"# T\n\n| a | 2 |\n\n{KEEP}\n\nReading: a is one.\n"
    mine = tmp_path / "notes.md"
    mine.write_text("my own notes\n")
    write_markdown(str(mine), "# T\n")
    assert (tmp_path / "notes.md.prev").read_text() == "my own notes\n" and mine.read_text() == f"# T\n\n{KEEP}\n"
    assert "its old contents are kept as" in capsys.readouterr().out


@pytest.mark.parametrize("script, argv", [
    ("bench_exclude_seen", ["--items", "10"]),          # top-10 of 9 items: an ExportError traceback in the sweep
    ("int8_graphs", ["--cards", "--catalogues"]),       # nothing to measure: a header and no table, exit 0
    ("bench_prefix_objective", ["--lengths", "51", "--configs", "beauty"]),     # beyond the window M = 50
    ("bench_train_cost", ["--repeats", "0"]),
    ("bench_sampled_softmax", ["--repeats", "0"]),
    ("bench_prefix_objective", ["--repeats", "0"]),
    ("bench_step_latency", ["--rounds", "0"]),
    ("bench_step_latency", ["--min-time", "0"]),
    ("emu_switch", ["--repeat", "0"]),
    ("int8_graphs", ["--reps", "0"]),
    ("bench_eval_memory", ["--batch", "-1"]),
    ("sqlite_wal", ["--seconds", "nan"]),
    ("bench_user_states", ["--users", "4", "--batch", "8"]),
    ("triton_many_users", ["--users", "4", "--batch", "1", "8"]),
    ("bench_train_cost", ["--device", "tpu"]),
    ("temporal_split", ["--test-share", "1.5"]),
    ("temporal_split", ["--test-share", "0.6", "--valid-share", "0.5"]),
    ("day_ties", ["--kcore", "x"]),
    ("catalogue_growth", ["--old-kcore", "x"]),
    ("recbole_reference", ["fixture", "--checkpoint", "c.pth", "--out", "o", "--rows", "2"]),
])
def test_a_count_that_cannot_be_measured_is_a_usage_error(monkeypatch, capsys, script, argv):
    """Zero repeats (inf/nan tables, or a crash after the work), a negative size, a batch of more users than there are
    (one call would hold a user twice): refused before anything runs, naming the option."""
    b = _bench(script, monkeypatch)
    with pytest.raises(SystemExit) as e:
        b.main(argv)
    assert e.value.code == 2 and argv[0] in capsys.readouterr().err


def test_selective_scan_bench_refuses_zero_repeats(monkeypatch, capsys):
    b = _bench("bench_selective_scan_cpu", monkeypatch)
    monkeypatch.setattr(sys, "argv", ["bench_selective_scan_cpu.py", "--repeat", "0"])
    with pytest.raises(SystemExit) as e:
        b.main()
    assert e.value.code == 2 and "--repeat" in capsys.readouterr().err


def test_day_ties_refuses_a_model_it_cannot_place(monkeypatch, tmp_path, capsys):
    """A ``--models`` folder that says no data, or data not among ``--data``, was dropped from the table silently."""
    b = _bench("day_ties", monkeypatch)
    (tmp_path / "none").mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "train_log.json").write_text(json.dumps({"data": "/x/sports.inter.gz"}))
    for folder, says in ((tmp_path / "none", "says no data"), (other, "measured on sports.inter.gz")):
        with pytest.raises(SystemExit) as e:
            b.main(["--data", "beauty.inter.gz", "--models", str(folder)])
        assert e.value.code == 2 and says in capsys.readouterr().err


def test_hf_trainer_bench_gives_zoo_train_the_trainers_optimiser(monkeypatch):
    """The side-by-side claims Adam, no weight decay, no clipping for both loops: ``zoo.train`` is told so, whatever
    the model's preset (LRURec's is AdamW with weight decay and clipping)."""
    import argparse

    import zoo.train

    b = _bench("hf_trainer", monkeypatch)
    seen = {}

    def fake_main(argv):
        seen["argv"] = argv
        return {"best_epoch": 1, "best_valid_NDCG10": 0.1, "test": {m: 0.1 for m in b.METRICS}}

    monkeypatch.setattr(zoo.train, "main", fake_main)
    args = argparse.Namespace(model="lrurec", data="d.tsv", max_len=30, epochs=1, batch_size=16, lr=1e-3, threads=1)
    b.run_zoo_train(args, 0, "out")
    flags = dict(zip(seen["argv"][::2], seen["argv"][1::2]))
    assert (flags["--optimizer"], flags["--weight-decay"], flags["--clip"]) == ("adam", "0", "0")


def test_train_cost_counts_the_targets_bert4rec_predicts_in_the_timed_step(monkeypatch):
    """BERT4Rec's supervised targets are the positions its timed step predicts (the masks drawn under the step's
    seed), not the expectation of a formula; the timed step predicts exactly those, every repeat."""
    import torch

    b = _bench("bench_train_cost", monkeypatch)
    model, _ = b.build("bert4rec", 12)
    ids, mask, ts, labels, targets = b.inputs(model, 4, 12, 3, "cpu")
    seen, mask_items = [], model.mask_items

    def counted(seq, seq_mask):
        out = mask_items(seq, seq_mask)
        seen.append(int((out[1] > 0).sum()))
        return out

    model.mask_items = counted
    for _ in range(2):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(b.STEP_SEED)
            b.step(model, ids, mask, ts, labels)
    assert seen == [targets, targets] and targets > 0


#: a stand-in for ``python`` (``-m zoo.train ...`` / ``-m zoo.evaluate ...``): prints, as JSON, the module it was to
#: run, the parent-death signal the kernel holds for it (``prctl(PR_GET_PDEATHSIG)``) and whether it runs in a
#: session of its own; as zoo.evaluate, also writes that to ``--ranks-out``.json and a one-user ranks file there
FAKE_PYTHON = """\
#!{python}
import ctypes, json, os, sys
sig = ctypes.c_int(-1)
ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)              # PR_GET_PDEATHSIG
said = json.dumps({{"module": sys.argv[2], "pdeathsig": sig.value, "own_session": os.getsid(0) == os.getpid()}})
print(said)
if sys.argv[2] == "zoo.evaluate":
    path = sys.argv[sys.argv.index("--ranks-out") + 1]
    with open(path + ".json", "w") as f:
        f.write(said)
    with open(path, "w") as f:
        f.write('# zoo.evaluate ranks {{"model": "m", "split": "s", "protocol": "p"}}\\nuser,target,rank\\nu1,7,3\\n')
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG (die_with_parent) is Linux's")
def test_catalogue_growth_children_die_with_the_bench(monkeypatch, tmp_path, recorded_popens):
    """The bench's ``zoo.train`` runs (two at a time, for hours) and its ``zoo.evaluate`` calls are started as the
    other benches start their workers (``benchutil.spawn``): with SIGKILL as their parent-death signal -- they had
    none, and a bench SIGKILLed left them training -- and in a session of their own (a Ctrl-C at the terminal
    reaches the bench, which stops them). Each is reaped once done (``recorded_popens``)."""
    b = _bench("catalogue_growth", monkeypatch)
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    work = tmp_path / "w"
    work.mkdir()
    b.run_all([("old", ["--data", "x"]), ("fresh", ["--data", "y"])], str(work), 2, False)
    targets, ranks = b.ranks_of(str(work), "fresh", "y")
    assert (targets, ranks.tolist()) == (["7"], [3])
    said = [json.loads((work / f"{n}.log").read_text()) for n in ("old", "fresh")]
    said.append(json.loads((work / "fresh.ranks.csv.json").read_text()))
    assert said == [{"module": m, "pdeathsig": int(signal.SIGKILL), "own_session": True}
                    for m in ("zoo.train", "zoo.train", "zoo.evaluate")], said
    assert len(recorded_popens) == 3 and all(p.poll() == 0 for p in recorded_popens)


#: a measurement script of ``benchutil.fresh_run``: prints a line, then, last, as JSON its parent-death signal
#: (``prctl(PR_GET_PDEATHSIG)``), whether it runs in a session of its own, its OpenMP threads and its arguments;
#: ``fail`` as its first argument: a message on stderr and status 1; ``sleep``: waits (to be stopped)
FRESH_SCRIPT = """\
import ctypes, json, os, sys, time
if sys.argv[1:2] == ["fail"]:
    sys.exit("no measurement here")
if sys.argv[1:2] == ["sleep"]:
    print("sleeping", flush=True)
    time.sleep(600)
sig = ctypes.c_int(-1)
ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)              # PR_GET_PDEATHSIG
print("a line before the measurement")
print(json.dumps({"pdeathsig": sig.value, "own_session": os.getsid(0) == os.getpid(),
                  "omp": os.environ.get("OMP_NUM_THREADS"), "args": sys.argv[1:]}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG (die_with_parent) is Linux's")
def test_a_fresh_run_dies_with_the_bench_and_is_reaped(monkeypatch, tmp_path, recorded_popens):
    """``fresh_run`` (the memory benches' measurement in a fresh interpreter) started its child with
    ``subprocess.run``: no parent-death signal, so a bench SIGKILLed left it measuring. It is now started as every
    bench child (``spawn``): SIGKILL as its parent-death signal, a session of its own, one OpenMP thread; its last
    line is returned, a failure is ``CalledProcessError`` with its stderr, each child is reaped, and one still
    running when the bench is interrupted is stopped first."""
    bu = _benchutil(monkeypatch)
    script = tmp_path / "measure.py"
    script.write_text(FRESH_SCRIPT)
    said = json.loads(bu.fresh_run(str(script), ["--of", 2]))
    assert said == {"pdeathsig": int(signal.SIGKILL), "own_session": True, "omp": "1", "args": ["--of", "2"]}, said
    with pytest.raises(subprocess.CalledProcessError) as e:
        bu.fresh_run(str(script), ["fail"])
    assert e.value.returncode == 1 and "no measurement here" in e.value.stderr
    assert len(recorded_popens) == 2 and all(p.poll() is not None for p in recorded_popens)

    # a Ctrl-C (or run_cli's SIGTERM) in the bench while it waits: the child, in its own session, hears none of it,
    # so fresh_run stops and reaps it before the interrupt goes on
    def interrupted(self, *a, **k):
        assert self.stdout.readline() == "sleeping\n"                 # the child runs, and waits
        raise KeyboardInterrupt

    monkeypatch.setattr(subprocess.Popen, "communicate", interrupted)   # the recording class of recorded_popens
    with pytest.raises(KeyboardInterrupt):
        bu.fresh_run(str(script), ["sleep"])
    assert len(recorded_popens) == 3 and recorded_popens[2].poll() is not None


def test_catalogue_growth_with_no_new_item_among_the_test_targets(monkeypatch, tmp_path):
    """No test target is a new item (the cut's items are all there is): the new-item cells say so instead of the
    table ending in NaN and a crash of the paired comparison after all the training."""
    lines = _shop_lines(seed=1, users=40, lengths=(10, 14), old_items=30, new_items=0)
    data = tmp_path / "shop.tsv"
    data.write_text("\n".join(lines) + "\n")
    b = _bench("catalogue_growth", monkeypatch)
    out = tmp_path / "g.md"
    b.main(["--data", str(data), "--before", str(1_000_004_000), "--work", str(tmp_path / "w"), "--old-kcore", "0",
            "--train-args", "--max-len 10 --epochs 1 --batch-size 16 --kcore 0 --set hidden_size=8 inner_size=16",
            "--short-epochs", "0", "--markdown", str(out)])
    text = out.read_text()
    assert "0 of 40 test targets are items the old model did not know" in text
    rows = _rows(text)
    assert rows["`fresh`"][-1] == "– (none)"
    assert rows["`continued` − `fresh`, new-item targets"] == ["0", "–", "–", "–"]
    assert rows["`continued` − `fresh`, all"][0] == "40"


def test_tie_order_bench_finds_its_data_through_the_data_setting(monkeypatch, tmp_path, capsys):
    """``--data``'s default is ``$ZOO_DATA_DIR/ml-1m.users0001-2999.inter.gz``, like every other bench's (it was fixed
    to ``../shared/data`` beside the checkout)."""
    import gzip

    with gzip.open(tmp_path / "ml-1m.users0001-2999.inter.gz", "wt") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        f.write("".join(f"{u}\t{i}\t{100 * i + (i == 3)}\n" for u in (1, 2) for i in (1, 2, 3, 4)))
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path))
    b = _bench("eval_tie_order", monkeypatch)
    b.main(["--stats-only"])
    assert capsys.readouterr().out.startswith("Users 2: the last two ratings share a second for 0.0%")


def test_gpu_session_loads_its_own_build_and_spares_the_models_step_the_cpu_kernel_build(tmp_path):
    """``bench/gpu_session.sh``'s step commands, recorded by a stand-in ``python3`` (nothing runs or builds): the
    harness loads the kernels library in the folder the build step built (``--lib``; it read only
    ``$ZOO_SCAN_KERNELS_LIB`` or the default folder, equal to the script's today by chance), and the models step runs
    with ``ZOO_CPU_KERNEL=0`` (its CPU re-evaluation of a checkpoint JIT-compiled the fused CPU selective scan inside
    the 90 s step), the kernel tests without it."""
    import os
    import subprocess

    from export.build_plugins import KERNELS_LIBRARY

    repo, bin_dir, calls = tmp_path / "repo", tmp_path / "bin", tmp_path / "calls"
    (repo / "bench").mkdir(parents=True)
    shutil.copy(ROOT / "bench" / "gpu_session.sh", repo / "bench")
    bin_dir.mkdir()
    fake = bin_dir / "python3"                  # a line per call: ZOO_CPU_KERNEL, then the arguments, \037-separated
    fake.write_text('#!/bin/sh\nprintf "%s" "${ZOO_CPU_KERNEL-unset}" >> "$CALLS"\n'
                    'for a in "$@"; do printf "\\037%s" "$a" >> "$CALLS"; done\necho >> "$CALLS"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("ZOO_CPU_KERNEL", "ZOO_SCAN_KERNELS_LIB")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", OUT=str(tmp_path / "out"), CALLS=str(calls))
    r = subprocess.run(["bash", str(repo / "bench" / "gpu_session.sh")], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    runs = [(line.split("\037")[0], line.split("\037")[1:]) for line in calls.read_text().splitlines()]

    def run(marker):
        (found,) = [(k, a) for k, a in runs if marker in a]
        return found

    _, build = run("export.build_plugins")
    _, harness = run("plugins/harness.py")
    build_dir = build[build.index("--build-dir") + 1]
    assert harness[harness.index("--lib") + 1] == f"{build_dir}/{KERNELS_LIBRARY}", harness
    assert run("tests/test_gpu.py")[0] == "0"
    assert run("tests/test_ops.py")[0] == "unset" and run("plugins/harness.py")[0] == "unset"
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert all(f"{step}: exit 0" in summary for step in ("build", "harness", "pytest-gpu", "gpu-models")), summary


def _benchutil(monkeypatch):
    """``bench/benchutil.py``, as the benches import it."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import benchutil

    return benchutil


def test_a_scratch_folder_goes_on_an_error_and_stays_on_request(monkeypatch, own_tmp, capsys):
    """``scratch_folder``: removed with its files when the block ends, on an error or Ctrl-C too; ``keep`` (a bench's
    ``--keep-tmp``) keeps it and says where."""
    bu = _benchutil(monkeypatch)
    for error in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(error):
            with bu.scratch_folder("bench-x-") as tmp:
                (Path(tmp) / "states.db").write_text("x")
                raise error
    assert _left_in(own_tmp) == []
    with bu.scratch_folder("bench-x-", keep=True) as tmp:
        (Path(tmp) / "states.db").write_text("x")
    assert _left_in(own_tmp) == [Path(tmp).name] and f"kept {tmp}" in capsys.readouterr().out


@pytest.mark.parametrize("script", ["sqlite_wal", "shared_store"])
def test_the_store_benches_remove_their_databases_unless_told_to_keep_them(monkeypatch, own_tmp, capsys, script):
    """Each SQLite configuration's database lives in a folder of its own while it is measured (the workers, stopped
    by then, used it), removed after it, on an error too; ``--keep-tmp`` keeps them and says where."""
    pytest.importorskip("onnxruntime", reason="the benches note ONNX Runtime's version")
    b = _bench(script, monkeypatch)
    seen = []

    def fake_run(graph, *a):
        path = a[0] if script == "sqlite_wal" else a[3].get("path")
        if path:
            assert os.path.isdir(os.path.dirname(path))                     # there while it is measured
            seen.append(os.path.dirname(path))
        if fail:
            raise KeyboardInterrupt
        return {"events_per_s": 1.0, "events": 1, "p50": 1.0, "p99": 1.0, "p999": 1.0, "max": 1.0, "step_ins": 0,
                "wal_peak": 0, "wal_end": 0, "db": 0, "conflicts": 0, "off": 0}

    monkeypatch.setattr(b, "_run", fake_run)
    if script == "shared_store":                                            # no Redis rows
        monkeypatch.setattr(b, "redis_server", lambda url: contextlib.nullcontext(None))
    argv = ["--card", "gru4rec-ml1m", "--processes", "1"]
    configurations = 2 if script == "sqlite_wal" else 3                      # the SQLite ones
    fail = False
    b.main(argv)
    assert len(seen) == configurations and _left_in(own_tmp) == []
    b.main([*argv, "--keep-tmp"])
    kept = seen[configurations:]
    out = capsys.readouterr().out
    assert _left_in(own_tmp) == sorted(os.path.basename(d) for d in kept) and all(f"kept {d}" in out for d in kept)
    for d in kept:
        shutil.rmtree(d)
    fail = True
    with pytest.raises(KeyboardInterrupt):
        b.main(argv)
    assert _left_in(own_tmp) == []


def test_recbole_reference_removes_its_scratch_folder(monkeypatch, own_tmp, capsys):
    """The working folder RecBole writes its logs in is removed when the subcommand ends (here: RecBole is not
    importable: exit 4, a package it needs is missing), and the process's working folder is restored. (The
    checkpoint is there: one that is not is refused before RecBole is loaded, exit 1.)"""
    monkeypatch.setitem(sys.modules, "recbole", None)                      # not importable, even where installed
    monkeypatch.setattr(sys, "argv", ["recbole_reference.py"])              # RecBole's loader empties it
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")              # set by it: undone after the test
    b = _bench("recbole_reference", monkeypatch)
    monkeypatch.setattr(b, "_numpy2_shims", lambda: None)                   # NumPy left as it is
    cwd = os.getcwd()
    try:
        checkpoint = own_tmp.parent / "c.pth"
        checkpoint.write_bytes(b"")
        for cmd in (["order-probe"], ["fixture", "--checkpoint", str(checkpoint), "--out", "o"]):
            with pytest.raises(SystemExit) as e:
                b.main(cmd)
            assert e.value.code == 4 and "error: RecBole is not importable" in capsys.readouterr().err
            assert os.getcwd() == cwd and _left_in(own_tmp) == []
    finally:
        os.chdir(cwd)


def test_the_redis_server_of_a_bench_leaves_no_folder(monkeypatch, own_tmp):
    """``redis_server`` (the benches' server and the tests' ``redis_url``) removes its working folder after it
    stops the server."""
    pytest.importorskip("redis", reason="the redis client package is not installed")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed here")
    bu = _benchutil(monkeypatch)
    with bu.redis_server(None) as url:
        assert url.startswith("redis://") and [n[:12] for n in _left_in(own_tmp)] == ["bench-redis-"]
    assert _left_in(own_tmp) == []


@pytest.mark.parametrize("failing", [0, 1])
def test_a_failed_worker_stops_the_others(monkeypatch, tmp_path, recorded_popens, failing):
    """``run_workers``: a worker that fails ends the run at once, whichever it is, and the others (here one that
    would sleep for minutes) are stopped and reaped before the error, not left running (``recorded_popens``: the
    workers it started, any left killed after the test)."""
    bu = _benchutil(monkeypatch)
    script = tmp_path / "worker.py"
    script.write_text("import json, sys, time\njob = json.loads(sys.stdin.read())\n"
                      "if job['fail']:\n    sys.exit(3)\ntime.sleep(300)\nprint(json.dumps(job))\n")
    jobs = [{"fail": i == failing} for i in range(2)]
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"worker.py failed \(status 3\)") as e:
        bu.run_workers(str(script), [], jobs)
    assert time.monotonic() - t0 < 120                                      # not the sleeper's 300 s
    assert len(recorded_popens) == 2 and all(p.poll() is not None for p in recorded_popens)   # none running
    assert f"worker {failing + 1} of 2" in str(e.value)                     # which one failed


def test_run_workers_returns_each_workers_last_line_in_job_order(monkeypatch, tmp_path):
    bu = _benchutil(monkeypatch)
    script = tmp_path / "worker.py"
    script.write_text("import json, sys, time\njob = json.loads(sys.stdin.read())\ntime.sleep(job['sleep'])\n"
                      "print('noise')\nprint(json.dumps({'n': job['n'], 'args': sys.argv[1:]}))\n")
    outs = bu.run_workers(str(script), ["a", 1], [{"n": 0, "sleep": 0.5}, {"n": 1, "sleep": 0}])
    assert outs == [{"n": 0, "args": ["--worker", "a", "1"]}, {"n": 1, "args": ["--worker", "a", "1"]}]


#: every bench with a markdown output (``--markdown``; bench_triton: ``--out``)
MARKDOWN_BENCHES = ["batch_order", "bench_eval_memory", "bench_exclude_seen", "bench_prefix_objective", "bench_rank",
                    "bench_sampled_softmax",
                    "bench_step_latency", "bench_train_cost", "bench_triton", "bench_user_states", "catalogue_growth",
                    "day_ties", "emu_switch", "eval_tie_order", "hf_trainer", "int8_graphs", "item_similarity",
                    "loss_table", "sampled_metrics", "shared_store", "sqlite_wal", "temporal_split",
                    "triton_many_users"]


def test_every_bench_with_a_markdown_option_is_listed():
    found = {p.stem for p in (ROOT / "bench").glob("*.py") if p.stem != "benchutil"
             and re.search(r'add_argument\("--markdown"|cards_parser\(', p.read_text(encoding="utf-8"))}
    assert found == set(MARKDOWN_BENCHES) - {"bench_triton"}


@pytest.mark.parametrize("script", MARKDOWN_BENCHES)
def test_a_folder_as_markdown_is_refused_before_any_work(monkeypatch, tmp_path, capsys, script):
    """``--markdown`` is checked as the options are parsed (it was checked only when the results were written, after
    the measuring: hours for some): a folder is a usage error, and parsing never returns to start the work."""
    b = _bench(script, monkeypatch)
    parse = argparse.ArgumentParser.parse_args

    def parse_args(self, *a, **k):
        ns = parse(self, *a, **k)
        pytest.fail(f"{script} accepted {ns}: its work would start")

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    flag = "--out" if script == "bench_triton" else "--markdown"
    with pytest.raises(SystemExit) as e:
        b.main([flag, str(tmp_path)])
    assert e.value.code == 2 and f"argument {flag}: {tmp_path} is a folder; give a file path" in capsys.readouterr().err


@pytest.mark.parametrize("script, argv, measuring", [
    ("bench_eval_memory", ["--catalogues", "50", "--batch", "2", "--seq-len", "3"], ["fresh_run", "measure"]),
    ("sqlite_wal", ["--card", "gru4rec-ml1m", "--seconds", "1", "--processes", "1"], ["run", "run_workers"]),
    ("shared_store", ["--card", "gru4rec-ml1m", "--processes", "1"], ["run", "run_workers", "redis_server"]),
    ("item_similarity", ["--models", "gru4rec-ml1m"], ["cards_data"]),
])
def test_a_bad_markdown_path_stops_a_bench_before_it_measures(monkeypatch, tmp_path, capsys, script, argv, measuring):
    """The QA's case (``bench_eval_memory`` measured for 24 s, then said the folder given as ``--markdown`` is a
    folder), a path under a file, and a file that cannot be read back (``write_markdown`` keeps what is below its
    tables): refused before the measuring functions are called."""
    b = _bench(script, monkeypatch)
    for name in measuring:
        monkeypatch.setattr(b, name, lambda *a, **k: pytest.fail(f"{script} measured before checking --markdown"))
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    (tmp_path / "binary.md").write_bytes(b"\xff\xfe\x00 not text")
    for path, says in [(tmp_path / "adir", "is a folder"), (tmp_path / "afile" / "r.md", "is a file, not a folder"),
                       (tmp_path / "binary.md", "cannot read the existing file")]:
        with pytest.raises(SystemExit) as e:
            b.main([*argv, "--markdown", str(path)])
        assert e.value.code == 2 and says in capsys.readouterr().err, path


#: every bench script (``bench/*.py`` less the helpers' module)
BENCHES = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem != "benchutil")


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and its sub-commands' parsers."""
    subs = [q for a in parser._actions if isinstance(a, argparse._SubParsersAction) for q in a.choices.values()]
    return [parser, *(p for q in subs for p in _parsers(q))]


@pytest.mark.parametrize("script", BENCHES)
def test_every_bench_option_has_a_help_text_that_gives_its_default(monkeypatch, script):
    """``--help`` of each bench: every option says what it is, and, when it has a default to show, what that is
    (the text as ``--help`` prints it: ``(default: ...)`` added by ``benchutil.HelpFormatter`` or written out)."""
    from test_docs import _run_parser

    parser = _run_parser(f"bench/{script}.py", [], False, monkeypatch).parser
    for p in _parsers(parser):
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) \
                    or action.help is argparse.SUPPRESS:
                continue
            name = "/".join(action.option_strings) or action.dest
            assert action.help, f"{script} {p.prog}: {name} has no help text"
            shown = p._get_formatter()._expand_help(action)
            if action.option_strings and action.default is not None and action.default is not False:
                assert re.search(r"\bdefault\b", shown), f"{script} {p.prog}: {name}'s help hides its default: {shown}"


#: each bench option naming bundled cards, and a card it runs
CARD_OPTIONS = [("item_similarity", "--models", "gru4rec-ml1m"), ("sampled_metrics", "--models", "gru4rec-ml1m"),
                ("eval_tie_order", "--models", "gru4rec-ml1m"), ("day_ties", "--models", "tim4rec-causal-beauty"),
                ("int8_graphs", "--cards", "sasrec-ml1m"), ("bench_user_states", "--cards", "gru4rec-ml1m"),
                ("shared_store", "--card", "gru4rec-ml1m"), ("sqlite_wal", "--card", "gru4rec-ml1m"),
                ("triton_many_users", "--card", "gru4rec-ml1m")]


@pytest.mark.parametrize("script, flag, card", CARD_OPTIONS)
def test_a_bench_takes_a_bundled_card_as_the_zoo_names_it_and_refuses_a_typo(monkeypatch, capsys, script, flag,
                                                                             card):
    """The QA's case: ``--models mamba4rec-ml1mx`` was a transformers OSError traceback once the bench had started,
    and the zoo's own name (``ssm-rec-zoo/NAME``) was not taken. Now both forms give the card, and a typo is a usage
    error naming the option and the value, with the closest card and the choices; the help lists them too."""
    from test_docs import _run_parser

    from zoo.pretrained import HUB_ORG

    target = f"bench/{script}.py"
    for given in (card, f"{HUB_ORG}/{card}"):
        parsed = getattr(_run_parser(target, [flag, given], True, monkeypatch).namespace, flag.lstrip("-"))
        assert parsed in ([card], card, [str(ROOT / "hub_cards" / card)]), (given, parsed)   # day_ties: the folder
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _run_parser(target, [flag, card + "x"], True, monkeypatch)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert f"argument {flag}: '{card}x' is not a bundled card" in err and f"(did you mean {card}?)" in err, err
    assert re.search(rf"choose from: [^\n]*\b{card}\b", err), err
    parser = _run_parser(target, [], False, monkeypatch).parser
    help_text = " ".join(parser._get_formatter()._expand_help(parser._option_string_actions[flag]).split())
    assert f"{HUB_ORG}/NAME" in help_text and card in help_text and re.search(r"\bdefault\b", help_text), help_text


@pytest.mark.parametrize("script", ["day_ties", "eval_tie_order"])
def test_a_run_folder_that_is_not_there_parses_and_the_bench_exits_1_naming_it(monkeypatch, capsys, tmp_path,
                                                                              script):
    """A results file's "Produced by" line names its author's run folders (``bench/DAY_TIES.md``): it must parse on
    a machine without them (a fresh CI machine has none; the parse-time folder check failed the docs test there).
    A path is a folder for the bench to check: one that is not there exits 1 (a model that cannot be found, the
    table's failed run) naming it, before any work; a bare typo stays a usage error (the test above)."""
    from test_docs import _entry_point, _run_parser

    gone = str(tmp_path / "runs" / "gone")
    parsed = _run_parser(f"bench/{script}.py", ["--models", gone], True, monkeypatch).namespace
    assert parsed.models == [gone]
    monkeypatch.undo()
    with pytest.raises(SystemExit) as e:
        _entry_point(f"bench/{script}.py", monkeypatch)(["--models", gone])
    assert e.value.code == 1
    assert f"error: --models {gone}: no such folder" in capsys.readouterr().err


def test_a_bench_refuses_a_card_without_the_graph_it_runs(monkeypatch, capsys):
    """The serving benches run a card's step graph (``onnx/``): a card without one (SASRec: a window graph) is a usage
    error saying so, and is not among the choices; another organisation's name is not a bundled card."""
    from test_docs import _run_parser

    for script in ("shared_store", "sqlite_wal", "triton_many_users", "bench_user_states"):
        flag = "--cards" if script == "bench_user_states" else "--card"
        for value, says in [("sasrec-ml1m", "bundled card 'sasrec-ml1m' has no onnx/ folder, which this bench runs"),
                            ("other/gru4rec-ml1m", "'other/gru4rec-ml1m' is not a bundled card (those are ")]:
            with pytest.raises(SystemExit) as e:
                _run_parser(f"bench/{script}.py", [flag, value], True, monkeypatch)
            err = capsys.readouterr().err
            assert e.value.code == 2 and f"argument {flag}: {says}" in err, err
            assert "gru4rec-ml1m" in err.split("choose from:")[1] and "sasrec" not in err.split("choose from:")[1]


@pytest.mark.parametrize("script", BENCHES)
def test_every_bench_help_ends_with_the_exit_statuses_and_it_runs_through_run_cli(monkeypatch, capsys, script):
    """Each bench's ``--help`` (and each sub-command's) ends with the zoo's exit-status table, and the bench runs
    through ``run_cli`` (it was two of 24: the others' SIGTERM left workers and scratch folders behind, Ctrl-C printed
    a traceback), which gives the table's last three statuses, under the name the bench is run by."""
    from test_docs import _run_parser

    from export.fsutil import EXIT_CODES

    for parser in _parsers(_run_parser(f"bench/{script}.py", [], False, monkeypatch).parser):
        assert parser.epilog == EXIT_CODES, parser.prog                   # --help prints it last
    main_block = (ROOT / "bench" / f"{script}.py").read_text(encoding="utf-8").split('if __name__ == "__main__":')[1]
    assert f'run_cli(main, prog="python bench/{script}.py")' in main_block


def test_the_eval_tie_order_and_catalogue_growth_benches_refuse_missing_data_before_making_folders(
        monkeypatch, tmp_path, capsys):
    """The QA's cases: a ``--data`` that is not there was a FileNotFoundError traceback (catalogue_growth after making
    ``--work``); now exit 1, one line naming it, and no folder made."""
    gone = str(tmp_path / "gone.gz")
    for script, argv, folder in [("eval_tie_order", ["--stats-only"], None),
                                 ("eval_tie_order", ["--write-seq", str(tmp_path / "seq")], tmp_path / "seq"),
                                 ("catalogue_growth", ["--before", "2014-01-01", "--work", str(tmp_path / "w")],
                                  tmp_path / "w")]:
        with pytest.raises(SystemExit) as e:
            _bench(script, monkeypatch).main(["--data", gone, *argv])
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith(f"error: --data {gone}: no such file") and err.count("\n") == 1
        assert folder is None or not folder.exists()


def test_missing_runs_and_files_exit_1_naming_them(monkeypatch, tmp_path, capsys):
    """A run, a folder or a data file that is not there is a failed run (1), one line naming it -- it was a
    FileNotFoundError traceback (``recbole_reference compare``) or a usage error (2: ``paired_table --data``,
    ``loss_table``) -- and nothing is evaluated or written first."""
    gone = str(tmp_path / "gone")
    half = tmp_path / "half"                                  # a run folder that holds one of compare's five files
    half.mkdir()
    (half / "recbole_config.json").write_text("{}")
    for script, argv, says in [("recbole_reference", ["compare", "--run", gone],
                                f"compare --run {gone}: no such folder"),
                               ("recbole_reference", ["compare", "--run", str(half)],
                                f"compare --run {half}: no state_dict.pth, item_tokens.txt, test_inputs.npz, "
                                "recbole_result.json"),
                               ("recbole_reference", ["fixture", "--checkpoint", gone, "--out", str(tmp_path / "o")],
                                f"fixture --checkpoint {gone}: no such file"),
                               ("paired_table", ["--data", gone], f"--data {gone}: no such file"),
                               ("loss_table", [gone], f"{gone}: no such folder"),
                               ("loss_table", [str(half)], f"{half}: no train_log.json")]:
        b = _bench(script, monkeypatch)
        with pytest.raises(SystemExit) as e:
            b.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith(f"error: {says}") and err.count("\n") == 1, (script, argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half"] and not (half / "zoo").exists()


def test_user_states_refuses_a_redis_url_where_no_server_answers(monkeypatch, capsys, own_tmp):
    """``--redis-url`` where nothing listens: exit 1, one line naming it, before any store is measured (it was a
    redis ConnectionError traceback after the dict and bytes rows); a URL redis cannot parse is a usage error."""
    pytest.importorskip("redis", reason="the redis client package is not installed (pip install -e '.[redis]')")
    b = _bench("bench_user_states", monkeypatch)
    monkeypatch.setattr(b, "run", lambda *a, **k: pytest.fail("measured before checking --redis-url"))
    argv = ["--cards", "gru4rec-ml1m", "--users", "4", "--events", "8", "--batch", "2", "--redis-url"]
    for url, code in [("redis://127.0.0.1:1/0", 1), ("nosuch://x", 2)]:
        with pytest.raises(SystemExit) as e:
            b.main([*argv, url])
        err = capsys.readouterr().err
        assert e.value.code == code and err.startswith(f"error: --redis-url {url}: ") and err.count("\n") == 1, err
    assert _left_in(own_tmp) == []


@pytest.mark.parametrize("argv, says", [
    (["--models", "bert4rec", "--batch", "1", "--seq-len", "4"], "--batch 1 --seq-len 4 give bert4rec no supervised "
                                                                  "target"),
    (["--models", "ssd4rec", "--seq-len", "3", "--prefixes", "4"], "--prefixes 4 exceeds --seq-len 3"),
    (["--models", "sasrec", "gru4rec", "sasrec"], "--models names sasrec more than once"),
])
def test_train_cost_refuses_sizes_it_cannot_measure_before_measuring(monkeypatch, capsys, argv, says):
    """The QA's case: BERT4Rec's Cloze mask picks no position of one 4-item window, and the table divided by those
    zero targets -- a ZeroDivisionError after the whole measurement. That, more prefixes than items per window, and a
    model named twice (one shared best time) are usage errors before any step is timed."""
    b = _bench("bench_train_cost", monkeypatch)
    for name in ("step", "fresh_run"):
        monkeypatch.setattr(b, name, lambda *a, **k: pytest.fail("measured before refusing the sizes"))
    with pytest.raises(SystemExit) as e:
        b.main([*argv, "--repeats", "1"])
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_prefix_objective_exits_3_when_the_two_computations_disagree(monkeypatch, tmp_path, capsys):
    """A loss disagreement between the two computations is a failed verification (3, the zoo's table), not a failed
    run (1); one line naming the row, and no results file written."""
    b = _bench("bench_prefix_objective", monkeypatch)
    tiny = dict(n_items=40, max_seq_length=8, hidden_size=16, num_layers=1, d_state=8, head_dim=8, chunk_size=4)
    monkeypatch.setattr(b, "CONFIGS", {"tiny": (tiny, 2, (3,))})

    class Wrong(b.PaddedTiM4Rec):
        def encode(self, *a, **k):
            return 2 * super().encode(*a, **k)

    monkeypatch.setattr(b, "PaddedTiM4Rec", Wrong)
    out = tmp_path / "p.md"
    with pytest.raises(SystemExit) as e:
        b.main(["--repeats", "1", "--markdown", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 3 and err.startswith("error: tiny n=3: the two computations disagree") and not out.exists()


def _paired_readme(path, b, rows):
    """A README holding a paired table with ``rows`` (their first two cells) between the markers."""
    body = "\n".join(f"| {r} | +0.0 [−0.1, +0.1] | 0.5 | +0.0 [−0.1, +0.1] | 0.5 |" for r in rows)
    path.write_text(f"# R\n{b.BEGIN}\nMeasured ...\n\n| a − b | protocol | HR@10 | p | NDCG@10 | p |\n"
                    f"|---|---|---|---|---|---|\n{body}\n{b.END}\ntail\n")
    return path.read_text()


def test_paired_table_update_refuses_to_drop_rows_and_records_its_command(monkeypatch, tmp_path, capsys):
    """The QA's case: ``--update README.md`` with one ``--pairs`` replaced the README's nine rows by one, under a line
    that named no option. Now an update that would drop rows is a usage error naming them, before any evaluation,
    the file as it was; ``--replace-table`` allows it; the line written records the command that made the table."""
    b = _bench("paired_table", monkeypatch)
    data = tmp_path / "d.tsv"
    data.write_text("user_id\titem_id\n")
    readme = tmp_path / "README.md"
    before = _paired_readme(readme, b, ["mamba4rec − sasrec | LRURec", "lrurec − gru4rec | RecBole"])
    monkeypatch.setattr(b, "table", lambda *a, **k: pytest.fail("evaluated before refusing the update"))
    argv = ["--data", str(data), "--pairs", "lrurec:mamba4rec-ml1m:sasrec-ml1m", "--bootstrap", "100",
            "--update", str(readme)]
    with pytest.raises(SystemExit) as e:
        b.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "would drop 1 row(s) of its table (lrurec − gru4rec | RecBole)" in err, err
    assert readme.read_text() == before
    monkeypatch.setattr(b, "table", lambda *a, **k: ("| a − b | protocol |\n| mamba4rec − sasrec | LRURec | x |", 40))
    b.main([*argv, "--replace-table"])
    text = readme.read_text()
    assert "| mamba4rec − sasrec | LRURec | x |" in text and "lrurec − gru4rec" not in text
    assert (f"by `python bench/paired_table.py --data {data} --pairs lrurec:mamba4rec-ml1m:sasrec-ml1m --bootstrap "
            f"100 --update {readme} --replace-table` from the cards") in text
    # the same rows, or more, need no flag
    _paired_readme(readme, b, ["mamba4rec − sasrec | LRURec"])
    b.main(argv)
    assert "| mamba4rec − sasrec | LRURec | x |" in readme.read_text()


def test_a_plot_path_is_checked_before_the_sweep(monkeypatch, tmp_path, capsys):
    """``--plot`` is checked as ``--markdown`` is, when the options are parsed (it failed in ``savefig`` after the
    whole sweep, with a traceback): a folder, a path under a file and a format it does not write are usage errors; a
    path without an extension gets ``.png`` -- the file it writes, not the one matplotlib would have named."""
    from test_docs import _run_parser

    b = _bench("bench_step_latency", monkeypatch)
    monkeypatch.setattr(b, "bench", lambda *a, **k: pytest.fail("measured before checking --plot"))
    (tmp_path / "afile").write_text("x")
    for path, says in [(tmp_path, "is a folder"), (tmp_path / "afile" / "p.png", "is a file, not a folder"),
                       (tmp_path / "p.txt", "give a .png, .svg, .pdf file")]:
        with pytest.raises(SystemExit) as e:
            b.main(["--plot", str(path)])
        assert e.value.code == 2 and says in capsys.readouterr().err, path
    for given, parsed in [("p", "p.png"), ("p.svg", "p.svg"), ("p.PDF", "p.PDF")]:
        ns = _run_parser("bench/bench_step_latency.py", ["--plot", str(tmp_path / given)], True, monkeypatch).namespace
        assert ns.plot == str(tmp_path / parsed)


def test_a_plot_is_written_whole_in_the_format_of_its_name(monkeypatch, tmp_path):
    """The figure goes to a temporary file beside the plot, moved into place once complete (a stop mid-write leaves
    the old plot), in the format its extension names (the temporary name has none matplotlib could read)."""
    import types
    from unittest import mock

    b = _bench("bench_step_latency", monkeypatch)
    saved = []

    def savefig(path, **kw):
        saved.append((path, kw.get("format")))
        Path(path).write_bytes(b"<svg/>")

    fig = mock.MagicMock(savefig=savefig)
    pyplot = types.SimpleNamespace(subplots=lambda *a, **k: (fig, [[mock.MagicMock()]]), close=lambda f: None)
    matplotlib = types.ModuleType("matplotlib")
    matplotlib.use, matplotlib.pyplot = (lambda backend: None), pyplot
    monkeypatch.setitem(sys.modules, "matplotlib", matplotlib)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", pyplot)
    out = tmp_path / "p.svg"
    out.write_bytes(b"old")
    b.plot({("ORT step LRURec", 5, 1): 1e-4}, [5], [1], str(out))
    assert [fmt for _, fmt in saved] == ["svg"] and saved[0][0] != str(out)
    assert out.read_bytes() == b"<svg/>" and sorted(p.name for p in tmp_path.iterdir()) == ["p.svg"]


def test_a_bench_stopped_by_sigterm_removes_its_scratch_folder_and_says_so_in_one_line(tmp_path, own_tmp):
    """SIGTERM (``kill``, ``timeout``, a scheduler's stop) killed a bench on the spot: its scratch folder (here the
    exported graphs of ``bench_exclude_seen``) stayed. Under ``run_cli`` it runs the same cleanups as Ctrl-C and
    ends with status 143 and one line, no traceback."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    # a sweep far longer than the test: the stop lands inside it, once the first graph is being exported
    p = subprocess.Popen([sys.executable, str(ROOT / "bench" / "bench_exclude_seen.py"), "--items", "100001",
                          "--batches", "256", "--min-time", "600"], cwd=tmp_path, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not any(d.is_dir() for s in own_tmp.glob("bench_seen_*") for d in s.iterdir()):
            assert p.poll() is None and time.monotonic() < deadline, "the bench ended before its sweep began"
            time.sleep(0.1)
        p.terminate()
        err = p.communicate(timeout=300)[1]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 143, (p.returncode, err)
    assert err.endswith("python bench/bench_exclude_seen.py: terminated\n") and "Traceback" not in err, err
    assert _left_in(own_tmp) == []


def test_a_plot_without_matplotlib_is_a_missing_package_before_the_sweep(monkeypatch, capsys):
    """``bench_step_latency --plot`` where matplotlib is not installed: exit 4 (a package it needs is missing, the
    zoo's table), not 2 (the options are right), and before any measuring."""
    b = _bench("bench_step_latency", monkeypatch)
    monkeypatch.setitem(sys.modules, "matplotlib", None)                   # find_spec: not installed
    monkeypatch.setattr(b, "bench", lambda *a, **k: pytest.fail("measured before checking --plot"))
    with pytest.raises(SystemExit) as e:
        b.main(["--plot", "latency.png"])
    assert e.value.code == 4 and "--plot needs matplotlib" in capsys.readouterr().err


def test_batch_order_bench_runs(monkeypatch, tmp_path):
    """bench/batch_order.py on a tiny file: both orders and both seeds are run and tabled, and the paired differences
    are the runs' own differences."""
    from test_train import _markov_file

    b = _bench("batch_order", monkeypatch)
    out = tmp_path / "o.md"
    b.main(["--data", str(_markov_file(tmp_path / "m.tsv")), "--epochs", "2", "--seeds", "0", "1", "--max-len", "20",
            "--batch-size", "16", "--markdown", str(out)])
    text = out.read_text()
    assert text.startswith("# Batches by length") and "Produced by `python bench/batch_order.py --data " in text
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
             if line.startswith("| sasrec | 20 |")]
    runs = {(r[2], r[3]): r for r in cells if len(r) == 10}
    assert set(runs) == {(o, s) for o in ("by-length", "random") for s in ("0", "1")}
    pairs = {r[2]: r for r in cells if len(r) == 7 and r[3].endswith("x")}
    for s in ("0", "1"):
        assert float(pairs[s][5]) == pytest.approx(float(runs[("random", s)][8]) - float(runs[("by-length", s)][8]),
                                                   abs=1e-4)
