"""zoo.evaluate's history window: ``max_len="all"`` (``--window all``) reads each user's whole history, batched by
length, and equals what :meth:`step` serves when it folds in every event; fixed-window models refuse it."""
import json

import numpy as np
import pytest
import torch

from test_evaluate import exits
from tiny_models import tiny
from zoo.data import EvalExamples, eval_batches
from zoo.evaluate import check_window, evaluate_baseline, evaluate_model, main
from zoo.metrics import rank_of_target

UNLIMITED = ["mamba4rec", "lrurec", "gru4rec", "tim4rec_causal", "ssd4rec"]
FIXED = ["sasrec", "bert4rec", "tim4rec"]


def long_examples(n_users=23, seed=0, timestamps=False):
    """Histories of 1..30 items (many longer than the tiny models' window of 6) over items 1..11."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 31, n_users)
    lengths[:3] = [30, 1, 7]                         # the longest first: not in length order
    hist = [rng.integers(1, 12, n).astype(np.int64) for n in lengths]
    ts = [np.cumsum(rng.integers(1, 5000, n)).astype(np.float64) + 1e9 for n in lengths] if timestamps else None
    return EvalExamples(hist, rng.integers(1, 12, n_users).astype(np.int64), [f"u{i}" for i in range(n_users)], ts)


def reference_ranks(model, ex, window=None):
    """Each user alone, no padding: the last ``window`` items (``None``: all) through ``step`` (exact-step models,
    from a fresh state) or ``predict`` (the others); ranks with pessimistic ties."""
    ranks = []
    for i, h in enumerate(ex.histories):
        h = h if window is None else h[-window:]
        ids = torch.as_tensor(h)[None]
        ts = None if ex.history_timestamps is None else torch.as_tensor(
            ex.history_timestamps[i][-len(h):])[None]
        if model.has_exact_step:
            scores, _ = model.step(ids, model.init_state(1), timestamps=ts)
            scores[:, 0] = float("-inf")
        else:
            scores = model.predict(ids, torch.ones_like(ids, dtype=torch.bool), timestamps=ts)
        ranks.append(int(rank_of_target(scores.float(), torch.tensor([int(ex.targets[i])]))[0]))
    return torch.tensor(ranks)


@pytest.mark.parametrize("model_type", UNLIMITED)
def test_whole_history_equals_step_over_every_event(model_type):
    """``max_len="all"`` in float64: the ranks of every user equal those of its whole history stepped alone (the state
    stepwise serving holds), with several users of different lengths padded into one batch (batch_size 2: batches of
    ~12 items); the default window equals the last ``max_seq_length`` items alone."""
    model = tiny(model_type).double()
    ex = long_examples(timestamps=model.uses_timestamps)
    widths = []
    predict = model.predict
    model.predict = lambda ids, *a, **k: widths.append(ids.shape[1]) or predict(ids, *a, **k)
    _, ranks = evaluate_model(model, ex, ks=(1, 5), max_len="all", batch_size=2, progress=False, return_ranks=True,
                              any_ks=True)
    assert torch.equal(ranks, reference_ranks(model, ex))
    assert max(widths) == 30 and len(widths) > 1          # whole histories, in several length batches
    widths.clear()
    _, windowed = evaluate_model(model, ex, ks=(1, 5), batch_size=2, progress=False, return_ranks=True, any_ks=True)
    assert torch.equal(windowed, reference_ranks(model, ex, window=model.config.max_seq_length))
    assert max(widths) == 6
    _, w10 = evaluate_model(model, ex, ks=(1,), max_len=10, batch_size=3, progress=False, return_ranks=True)
    assert torch.equal(w10, reference_ranks(model, ex, window=10))


@pytest.mark.parametrize("model_type", FIXED)
def test_fixed_window_models_refuse_more_than_their_window(model_type):
    model = tiny(model_type)
    ex = long_examples(timestamps=model.uses_timestamps)
    with pytest.raises(ValueError, match=r"reads at most max_seq_length=6 items .*whole history needs a model"):
        evaluate_model(model, ex, ks=(1,), max_len="all", progress=False)
    with pytest.raises(ValueError, match=r"reads at most max_seq_length=6 items \(fixed_window\); got max_len=7"):
        evaluate_model(model, ex, ks=(1,), max_len=7, progress=False)
    _, r4 = evaluate_model(model, ex, ks=(1,), max_len=4, progress=False, return_ranks=True)   # shorter: fine
    assert torch.equal(r4, reference_ranks(model.eval(), ex, window=4))


@pytest.mark.parametrize("bad", [0, -1, "ALL", 2.5, True, "200"])
def test_window_values_refused(bad):
    with pytest.raises(ValueError, match=r"max_len must be an int >= 1, 'all' or None"):
        check_window(tiny("gru4rec"), bad)


def test_length_batches_cover_every_example_once_within_the_token_budget():
    ex = long_examples(n_users=57, seed=3)
    seen = []
    for max_len in (None, 8):
        seen = []
        longest_before = 0
        for b in eval_batches(ex, max_len, "left", batch_size=5, max_tokens=20):
            idx = b["index"].tolist()
            rows, width = b["input_ids"].shape
            cut = [min(len(ex.histories[i]), max_len or 10**9) for i in idx]
            assert width == max(cut) and (rows * width <= 20 or rows == 1)
            assert min(cut) >= longest_before                              # shortest first
            longest_before = max(cut)
            assert cut == sorted(cut)
            for r, i in enumerate(idx):                                    # left-padded, last items kept
                h = ex.histories[i][-cut[r]:]
                assert b["input_ids"][r, width - cut[r]:].tolist() == h.tolist()
                assert b["attention_mask"][r].sum() == cut[r] and int(b["targets"][r]) == ex.targets[i]
            seen += idx
        assert sorted(seen) == list(range(57))
    with pytest.raises(ValueError, match=r"max_tokens must be >= 1 \(or None\), got 0"):
        next(eval_batches(ex, None, "left", max_tokens=0))


def test_baseline_masks_the_whole_history_with_no_window():
    """Most-popular with the history masked: item 1 (the most popular) sits 3 items back in the history, so a window
    of 2 leaves it ranked first, the whole history (None) masks it."""
    train = [np.array([1, 1, 1, 2, 2, 3])]
    ex = EvalExamples([np.array([1, 4, 5])], np.array([2]), ["u"])
    _, r2 = evaluate_baseline("pop", train, ex, 6, ks=(1,), exclude_history=True, max_len=2, return_ranks=True)
    _, rall = evaluate_baseline("pop", train, ex, 6, ks=(1,), exclude_history=True, max_len=None, return_ranks=True)
    assert (int(r2[0]), int(rall[0])) == (2, 1)


@pytest.fixture
def tiny_folder(tmp_path):
    """A tiny GRU4Rec (window 6) saved with a vocabulary of items "1".."11", and a data file whose users have up to
    30 items."""
    from zoo.vocab import ItemVocab

    model = tiny("gru4rec")
    model.set_item_vocab(ItemVocab([str(i) for i in range(1, 12)]))
    model.save_pretrained(tmp_path / "m")
    sasrec = tiny("sasrec")
    sasrec.set_item_vocab(ItemVocab([str(i) for i in range(1, 12)]))
    sasrec.save_pretrained(tmp_path / "s")
    rng = np.random.default_rng(1)
    lines = ["user_id\titem_id\ttimestamp"]
    for u in range(40):
        for t in range(int(rng.integers(4, 31))):
            lines.append(f"{u}\t{int(rng.integers(1, 12))}\t{1000 + t}")
    (tmp_path / "d.tsv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_cli_window_all_is_named_in_the_protocol(tiny_folder, capsys):
    out = tiny_folder / "all.json"
    res = main(["--model", str(tiny_folder / "m"), "--data", str(tiny_folder / "d.tsv"), "--window", "all",
                "--ks", "1", "5", "--json", str(out), "--no-progress", "--kcore", "0"])
    saved = json.loads(out.read_text())
    assert saved["protocol"]["name"] == "recbole-history-all" and saved["protocol"]["history_window"] == "all"
    assert saved["metrics"] == res["metrics"]
    default = main(["--model", str(tiny_folder / "m"), "--data", str(tiny_folder / "d.tsv"), "--ks", "1", "5",
                    "--no-progress", "--kcore", "0"])
    assert default["protocol"]["name"] == "recbole" and "history_window" not in default["protocol"]
    w = main(["--model", str(tiny_folder / "m"), "--data", str(tiny_folder / "d.tsv"), "--window", "6", "--ks", "1",
              "--no-progress", "--kcore", "0", "--exclude-history"])
    assert w["protocol"]["name"] == "lrurec-window6" and w["protocol"]["history_window"] == 6


@pytest.mark.parametrize("argv, message", [
    (["--window", "all", "--model", "{s}"], "--window all: SASRecModel reads at most max_seq_length=6 items"),
    (["--window", "7", "--model", "{s}"], "--window 7: SASRecModel reads at most max_seq_length=6 items"),
    (["--window", "all", "--onnx", "{m}"], "--window all is for --model and --baseline"),
])
def test_cli_window_refusals(tiny_folder, argv, message, capsys):
    """A window the model cannot read, or --window with a graph: usage errors (exit 2)."""
    argv = [a.format(s=tiny_folder / "s", m=tiny_folder / "m") for a in argv]
    exits(capsys, argv + ["--data", str(tiny_folder / "d.tsv"), "--ks", "1", "--no-progress", "--kcore", "0"], 2,
          message)


def test_cli_window_argument_is_checked_at_parse(tiny_folder, capsys):
    exits(capsys, ["--model", str(tiny_folder / "m"), "--data", str(tiny_folder / "d.tsv"), "--window", "whole"], 2,
          "expected a whole number >= 1 or 'all', got 'whole'")


def _ranks_file(path, ranks, protocol):
    head = {"model": path.stem, "split": "test", "protocol": protocol, "max_rank": None, "n_items": 50}
    path.write_text("# zoo.evaluate ranks " + json.dumps(head) + "\nuser,target,rank\n"
                    + "".join(f"u{i},{i % 7 + 1},{r}\n" for i, r in enumerate(ranks)))
    return str(path)


def test_compare_pairs_two_windows_of_one_protocol_only(tmp_path, capsys):
    """A model's window against its whole history is a paired comparison (the window is the input); a window suffix
    does not hide another protocol (history masked or not)."""
    from zoo.compare import main as compare_main

    a = _ranks_file(tmp_path / "a.csv", [1, 3, 12, 2, 40, 7] * 5, "recbole")
    b = _ranks_file(tmp_path / "b.csv", [2, 1, 11, 2, 30, 9] * 5, "recbole-history-all")
    res = compare_main([a, b, "--ks", "10", "--bootstrap", "200"])
    assert res["metrics"]["HR@10"]["a"] == pytest.approx(4 / 6) and res["metrics"]["HR@10"]["b"] == pytest.approx(4 / 6)
    assert "protocols recbole (A), recbole-history-all (B)" in capsys.readouterr().out
    c = _ranks_file(tmp_path / "c.csv", [1] * 30, "lrurec-history-all")
    exits(capsys, [a, c, "--ks", "10"], 1, "A and B differ in protocol ('recbole' vs 'lrurec-history-all')",
          run=compare_main)
