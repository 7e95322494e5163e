"""Training and evaluating zoo models with 🤗 transformers' ``Trainer`` (``zoo.hf_trainer``).

The ties to the zoo's own pipeline: the collated batches are ``zoo.train``'s batches (same windows, padding, labels and
timestamps), the ``Trainer``'s evaluation metrics are ``zoo.evaluate``'s for the same weights (and its ``eval_loss``
the next-item cross-entropy), for every model; gradient accumulation averages the micro-batches' gradients; a run
learns far above random, and its best checkpoint loads with its item vocabulary.
"""

from __future__ import annotations

import dataclasses
import re
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate (pip install -e '.[train]')")

from transformers import AutoModel, Trainer, TrainingArguments   # noqa: E402

from test_train import _markov_file                               # noqa: E402
from zoo.data import (EvalExamples, eval_batches, iterate_batches, leave_one_out, load_dataset,   # noqa: E402
                      training_windows)
from zoo.evaluate import evaluate_model                           # noqa: E402
from zoo.hf_trainer import (HISTORY_LABELS, HistoryDataset, SeqRecCollator, WindowDataset,      # noqa: E402
                            logits_to_ranks, ranking_metrics, save_run, trainer_kwargs)
from zoo.models import MODEL_MODULES                              # noqa: E402
from zoo.train import build_model                                 # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

#: small configs (hidden 16) that train in a second or two on the generated data
TINY = {"hidden_size": 16, "max_seq_length": 30}


def _args(tmp_path, **kw) -> TrainingArguments:
    base = dict(use_cpu=True, report_to=[], disable_tqdm=True, seed=0, save_strategy="no", logging_strategy="no")
    return TrainingArguments(str(tmp_path / "trainer"), **{**base, **kw})


def _data(tmp_path, **kw):
    ds = load_dataset(_markov_file(tmp_path / "markov.tsv", **kw), kcore=None)
    return ds, leave_one_out(ds)


def _model(model_type, ds, **overrides):
    model = build_model(model_type, ds.vocab.n_items, {**TINY, **overrides})
    model.set_item_vocab(ds.vocab)
    return model


def _random_sequences(n=9, seed=0):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(1, 50, size=int(rng.integers(1, 23))) for _ in range(n)]
    ts = [np.cumsum(rng.integers(0, 100, size=len(s))).astype(np.float64) + 1e9 for s in seqs]
    return seqs, ts


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("stride", [None, 3])
def test_collated_windows_are_zoo_train_batches(side, stride):
    seqs, ts = _random_sequences()
    w = training_windows(seqs, 8, ts, stride=stride)
    got = SeqRecCollator(side)([WindowDataset(w)[i] for i in range(len(w))])
    want = next(iterate_batches(w, len(w), side, shuffle=False))
    assert sorted(got) == sorted(want) == ["attention_mask", "input_ids", "labels", "timestamps"]
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
    if stride is not None:           # overlapping windows: context positions carry no target, each target once
        assert int((got["labels"] > 0).sum()) == w.n_positions < w.n_computed


@pytest.mark.parametrize("side", ["right", "left"])
def test_collated_histories_are_evaluation_batches(side):
    seqs, ts = _random_sequences(seed=1)
    ex = EvalExamples([s[:-1] for s in seqs if len(s) > 1], np.array([s[-1] for s in seqs if len(s) > 1]),
                      [f"u{i}" for i, s in enumerate(seqs) if len(s) > 1], [t[:-1] for t in ts if len(t) > 1])
    got = SeqRecCollator(side)([HistoryDataset(ex, 6)[i] for i in range(len(ex))])
    want = next(eval_batches(ex, 6, side, batch_size=len(ex)))
    assert torch.equal(got["labels"], want["targets"])
    for key in ("input_ids", "attention_mask", "timestamps"):
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("model_type", MODEL_MODULES)
def test_trainer_evaluation_is_zoo_evaluate_and_one_step_trains(tmp_path, model_type):
    """For every model: ``Trainer.evaluate`` gives ``zoo.evaluate``'s full-ranking metrics on the same weights, and
    its ``eval_loss`` the next-item cross-entropy of the users; one ``Trainer`` step (the model's own objective:
    Cloze for BERT4Rec, timestamps for the time-aware models) gives a finite loss and moves the weights."""
    ds, split = _data(tmp_path, n_users=40)
    model = _model(model_type, ds)
    kw = trainer_kwargs(model, split, ks=(1, 5, 10))
    trainer = Trainer(model=model, args=_args(tmp_path, per_device_eval_batch_size=7, max_steps=1,
                                              per_device_train_batch_size=8, learning_rate=1e-2), **kw)
    got = trainer.evaluate()
    want = evaluate_model(model, split.valid, ks=(1, 5, 10), progress=False)
    for name in ("HR", "NDCG", "MRR"):
        for k in (1, 5, 10):
            assert got[f"eval_{name}@{k}"] == pytest.approx(want[f"{name}@{k}"], abs=1e-9), (name, k)
    batch = SeqRecCollator.for_model(model)([kw["eval_dataset"][i] for i in range(len(split.valid))])
    model.eval()
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"], timestamps=batch.get("timestamps")).logits
    assert got["eval_loss"] == pytest.approx(float(F.cross_entropy(logits, batch["labels"])), rel=1e-5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = trainer.train()
    assert out.global_step == 1 and np.isfinite(out.training_loss) and out.training_loss > 0
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("model_type", ["lrurec", "sasrec"])
def test_trainer_evaluation_under_lrurecs_protocol_is_zoo_evaluate_exclude_history(tmp_path, model_type):
    """``exclude_history=True`` with ``label_names=HISTORY_LABELS``: the ``Trainer``'s metrics are ``zoo.evaluate
    --exclude-history``'s (the window's items never ranked; left- and right-padded windows), which differ from the
    RecBole protocol's on this data (the chain revisits items); without the label names it is an error naming them,
    never the other protocol's numbers."""
    ds, split = _data(tmp_path, n_users=60)
    model = _model(model_type, ds)
    kw = trainer_kwargs(model, split, ks=(5, 10), exclude_history=True)
    got = Trainer(model=model, args=_args(tmp_path, label_names=HISTORY_LABELS, per_device_eval_batch_size=16),
                  **kw).evaluate()
    want = evaluate_model(model, split.valid, ks=(5, 10), exclude_history=True, progress=False)
    plain = evaluate_model(model, split.valid, ks=(5, 10), progress=False)
    assert any(abs(want[m] - plain[m]) > 1e-3 for m in want), "the two protocols agree here: the test shows nothing"
    for m in ("HR@5", "NDCG@5", "MRR@5", "HR@10", "NDCG@10", "MRR@10"):
        assert got[f"eval_{m}"] == pytest.approx(want[m], abs=1e-9), m
    with pytest.raises(ValueError, match="label_names=zoo.hf_trainer.HISTORY_LABELS"):
        Trainer(model=model, args=_args(tmp_path), **kw).evaluate()
    with pytest.raises(ValueError, match="lack one of the Trainer's label_names .*exclude_history=True"):
        Trainer(model=model, args=_args(tmp_path, label_names=HISTORY_LABELS),
                **trainer_kwargs(model, split, ks=(10,))).evaluate()
    with pytest.raises(ValueError, match="got 2 label tensors"):
        logits_to_ranks(torch.zeros(2, 5), (torch.ones(2, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)))


class _EveryItem:
    """A "sampler" that draws every item once, uncorrected: the sampled-softmax loss is then the full cross-entropy."""

    def __init__(self, n_items):
        self.n_items = n_items

    def sample(self):
        from zoo.losses import NegativeSample

        return NegativeSample.every_item(self.n_items)


@pytest.mark.parametrize("model_type", ["sasrec", "bert4rec", "tim4rec_causal"])
def test_a_collator_with_a_sampler_trains_with_sampled_softmax_and_never_evaluates_with_it(tmp_path, model_type):
    """Training windows carry the sampler's negatives into the model's own objective: with every item drawn once,
    uncorrected, the loss is the full cross-entropy's (BERT4Rec's Cloze too, under the same masks); evaluation batches
    carry none, so the ``Trainer``'s metrics stay ``zoo.evaluate``'s; ``trainer_kwargs(negatives=N)`` trains."""
    ds, split = _data(tmp_path, n_users=30)
    model = _model(model_type, ds).eval()                     # no dropout: two forwards see the same network
    n = int(model.config.n_items)
    # timestamps only for the model that reads them (as trainer_kwargs builds windows): the others refuse them
    windows = WindowDataset(training_windows(split.train, 30,
                                             split.train_timestamps if model.uses_timestamps else None))
    full = SeqRecCollator.for_model(model)([windows[i] for i in range(6)])
    sampled = SeqRecCollator.for_model(model, _EveryItem(n))([windows[i] for i in range(6)])
    assert "negatives" in sampled and "negatives" not in full
    torch.manual_seed(3)
    want = model(**full).loss.detach()
    torch.manual_seed(3)                                      # BERT4Rec draws its masks: the same ones again
    got = model(**sampled).loss.detach()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    from zoo.losses import NegativeSampler

    torch.manual_seed(3)                                      # a real draw of 8 reaches the loss: another number
    few = model(**SeqRecCollator.for_model(model, NegativeSampler(n, 8))([windows[i] for i in range(6)])).loss.detach()
    assert abs(few.item() - want.item()) > 1e-3
    ex = HistoryDataset(split.valid, 30)
    assert "negatives" not in SeqRecCollator.for_model(model, _EveryItem(n))([ex[0], ex[1]])
    kw = trainer_kwargs(model, split, ks=(10,), negatives=8, negative_sampler="popularity")
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=2, per_device_train_batch_size=8), **kw)
    out = trainer.train()
    assert np.isfinite(out.training_loss) and out.training_loss > 0
    assert trainer.evaluate()["eval_NDCG@10"] == pytest.approx(
        evaluate_model(model, split.valid, ks=(10,), progress=False)["NDCG@10"], abs=1e-9)
    with pytest.raises(TypeError, match="sampler must have a sample\\(\\) method"):
        SeqRecCollator("right", sampler=8)


def test_gradient_accumulation_averages_the_micro_batches(tmp_path):
    """Two windows, one per micro-batch, two accumulation steps: one SGD step along the mean of their gradients (a
    forward taking loss kwargs would make the ``Trainer`` skip its division: twice the step)."""
    ds, split = _data(tmp_path, n_users=2, length=(12, 14))
    model = _model("gru4rec", ds, dropout_prob=0.0)
    kw = trainer_kwargs(model, split)
    train = kw["train_dataset"]
    assert len(train) == 2
    collate = kw["data_collator"]
    grads = []
    for i in range(2):
        model.zero_grad()
        model(**collate([train[i]])).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lr = 0.5
    Trainer(model=model, args=_args(tmp_path, optim="sgd", learning_rate=lr, lr_scheduler_type="constant",
                                    weight_decay=0.0, max_grad_norm=0.0, per_device_train_batch_size=1,
                                    gradient_accumulation_steps=2, max_steps=1), **kw).train()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[n] - lr * (grads[0][n] + grads[1][n]) / 2, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("model_type", ["sasrec", "lrurec"])
def test_trainer_learns_far_above_random_and_its_best_checkpoint_loads(tmp_path, model_type):
    """``load_best_model_at_end`` on validation NDCG@10, as ``zoo.train``'s early stopping: the run learns the chain
    far above random (40 items: HR@10 0.25) and the best checkpoint is a complete model (config, weights, item
    vocabulary) that ranks as the trained one, in the data's own item ids."""
    ds, split = _data(tmp_path)
    model = _model(model_type, ds)
    trainer = Trainer(model=model, args=_args(tmp_path, num_train_epochs=6, per_device_train_batch_size=16,
                                              learning_rate=5e-3, eval_strategy="epoch", save_strategy="epoch",
                                              metric_for_best_model="NDCG@10", load_best_model_at_end=True,
                                              save_total_limit=1), **trainer_kwargs(model, split, ks=(10,)))
    trainer.train()
    test = trainer.evaluate(trainer_kwargs(model, split, eval_on="test")["eval_dataset"], metric_key_prefix="test")
    assert test["test_HR@10"] > 2.5 * 10 / 40 and test["test_NDCG@10"] > 0.3, test
    # the "test" numbers are the test split's (bench/hf_trainer.py reports them so), not validation's again
    assert test["test_NDCG@10"] == pytest.approx(
        evaluate_model(model, split.test, ks=(10,), progress=False)["NDCG@10"], abs=1e-9)
    best = trainer.state.best_model_checkpoint
    loaded = AutoModel.from_pretrained(best)
    assert type(loaded) is type(model) and loaded.item_vocab.items == ds.vocab.items
    history = [[100, 101, 102, 103]]                            # the file's own ids: 100 + item
    assert loaded.recommend(history, k=5).items == model.recommend(history, k=5).items
    assert trainer.state.best_metric == max(e["eval_NDCG@10"] for e in trainer.state.log_history
                                            if "eval_NDCG@10" in e)


def test_trainer_kwargs_eval_on_stride_and_negative_sampler_reach_the_trainer(tmp_path):
    """``trainer_kwargs``' arguments are the ones used: ``eval_on="test"`` evaluates on ``split.test`` (the
    ``Trainer``'s metrics ``zoo.evaluate``'s on the test split, which differ from validation's here: reporting
    validation as test would show), ``stride`` makes ``training_windows(..., stride=...)``'s windows (more than
    without it), and ``negatives`` with ``negative_sampler="popularity"`` gives the collator a popularity sampler whose
    proposal follows the training counts (add-one smoothed, padding never drawn)."""
    from zoo.data.split import item_counts

    ds, split = _data(tmp_path, n_users=40)
    model = _model("sasrec", ds)
    L = int(model.config.max_seq_length)
    ex = trainer_kwargs(model, split, ks=(10,), eval_on="test")["eval_dataset"]
    assert np.array_equal(ex.examples.targets, split.test.targets) and list(ex.examples.users) == list(split.test.users)
    assert all(np.array_equal(a, b) for a, b in zip(ex.examples.histories, split.test.histories, strict=True))
    got = Trainer(model=model, args=_args(tmp_path, per_device_eval_batch_size=16),
                  **trainer_kwargs(model, split, ks=(10,))).evaluate(ex, metric_key_prefix="test")
    want = evaluate_model(model, split.test, ks=(10,), progress=False)
    valid = evaluate_model(model, split.valid, ks=(10,), progress=False)
    assert abs(want["NDCG@10"] - valid["NDCG@10"]) > 1e-3, "valid and test agree here: the test shows nothing"
    for m in ("HR@10", "NDCG@10", "MRR@10"):
        assert got[f"test_{m}"] == pytest.approx(want[m], abs=1e-9), m

    plain = trainer_kwargs(model, split)["train_dataset"]
    strided = trainer_kwargs(model, split, stride=3)["train_dataset"]
    want_w = training_windows(split.train, L, None, stride=3)
    assert len(strided) == len(want_w) > len(plain) == len(training_windows(split.train, L, None))
    assert strided.windows.stride == 3 and np.array_equal(strided.windows.inputs, want_w.inputs)
    assert np.array_equal(strided.windows.labels, want_w.labels)

    n = int(model.config.n_items)
    assert trainer_kwargs(model, split)["data_collator"].sampler is None
    uniform = trainer_kwargs(model, split, negatives=8)["data_collator"].sampler
    assert uniform.kind == "uniform" and uniform.num == 8
    sampler = trainer_kwargs(model, split, negatives=8, negative_sampler="popularity")["data_collator"].sampler
    assert sampler.kind == "popularity" and sampler.num == 8
    weights = item_counts(split.train, n) + 1.0
    weights[0] = 0.0
    torch.testing.assert_close(sampler.probs, torch.tensor(weights / weights.sum(), dtype=torch.float32))
    assert not torch.allclose(sampler.probs, uniform.probs), "uniform counts here: the test shows nothing"


def test_save_run_makes_a_trainer_run_a_card(tmp_path):
    """A ``Trainer`` run under LRURec's protocol, saved with ``save_run``, is carded by ``zoo.hub card`` like a
    ``zoo.train`` run: the card's test metrics are the ones ``save_run`` measured (the best checkpoint's, on the
    protocol it validated with), its training section names the ``Trainer`` and the optimiser it ran (the
    ``TrainingArguments``' clipping and warmup included), and the log keeps every ``TrainingArguments`` field."""
    import json

    from zoo.hub import build_card_folder

    data = _markov_file(tmp_path / "markov.tsv", n_users=60)
    ds = load_dataset(data)
    split = leave_one_out(ds)
    model = _model("lrurec", ds)
    trainer = Trainer(model=model, args=_args(tmp_path, num_train_epochs=2, per_device_train_batch_size=16,
                                              learning_rate=5e-3, eval_strategy="epoch", save_strategy="epoch",
                                              metric_for_best_model="NDCG@10", load_best_model_at_end=True,
                                              label_names=HISTORY_LABELS, warmup_steps=3, save_total_limit=1),
                      **trainer_kwargs(model, split, exclude_history=True))
    trainer.train()
    log = save_run(trainer, tmp_path / "run", str(data), command="python train_lrurec.py")
    assert log["protocol"]["history_masked"] is True and len(log["epochs"]) == 2
    assert log["best_valid_NDCG10"] == pytest.approx(trainer.state.best_metric, abs=1e-9)
    assert log["train"] == {"optimizer": "adam", "lr": 5e-3, "weight_decay": 0.0, "batch_size": 16, "clip": 1.0,
                            "lr_schedule": "linear", "warmup_steps": 3}
    assert log["trainer"]["training_arguments"]["metric_for_best_model"] == "NDCG@10"
    metrics = build_card_folder(str(tmp_path / "run"), "lrurec-markov", str(data), out_dir=str(tmp_path / "card"),
                                exclude_history=True)
    for k in ("HR@10", "NDCG@10", "MRR@10"):
        assert metrics[k] == pytest.approx(log["test"][k], abs=1e-9), k
    card = (tmp_path / "card" / "README.md").read_text()
    assert "trained with transformers' `Trainer`" in card and "`python train_lrurec.py`" in card
    assert "linear warmup over 3 steps" in card and "gradient clip-norm 1" in card
    assert json.loads((tmp_path / "card" / "training_log.json").read_text())["stages"][0]["trainer"]
    loaded = AutoModel.from_pretrained(tmp_path / "card")
    assert loaded.recommend([[100, 101]], k=3).items == model.recommend([[100, 101]], k=3).items


def test_save_run_refuses_other_data_an_occupied_folder_and_foreign_trainers(tmp_path):
    ds, split = _data(tmp_path, n_users=20)
    model = _model("sasrec", ds)
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=1), **trainer_kwargs(model, split))
    with pytest.raises(ValueError, match="has taken no training step"):
        save_run(trainer, tmp_path / "a", str(tmp_path / "markov.tsv"), data_options={"kcore": None})
    trainer.train()
    other = _markov_file(tmp_path / "other.tsv", n_users=20, seed=5)
    with pytest.raises(ValueError, match="is not the data the Trainer trained on"):
        save_run(trainer, tmp_path / "a", str(other), data_options={"kcore": None})
    data = str(tmp_path / "markov.tsv")
    save_run(trainer, tmp_path / "a", data, data_options={"kcore": None})
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        save_run(trainer, tmp_path / "a", data, data_options={"kcore": None})
    save_run(trainer, tmp_path / "a", data, data_options={"kcore": None}, overwrite=True)
    bare = Trainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=trainer.train_dataset,
                   data_collator=trainer.data_collator)
    with pytest.raises(ValueError, match="built with zoo.hf_trainer.trainer_kwargs"):
        save_run(bare, tmp_path / "b", data)
    # a folder another run is writing into now (zoo.train holds its --out so): refused, nothing written into it
    import os
    import pathlib
    import subprocess
    import sys

    from export.fsutil import FolderBusy

    held = tmp_path / "held"
    held.mkdir()
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom export.fsutil import output_folder_lock\n"
                              "with output_folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n",
                              str(held)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])})
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy, match=f"out {held}: another run is writing into it now"):
            save_run(trainer, held, data, data_options={"kcore": None})
        assert list(held.iterdir()) == []
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


def test_trainer_kwargs_refuse_data_that_does_not_fit_the_model(tmp_path):
    ds, split = _data(tmp_path, n_users=20)
    bare = build_model("sasrec", ds.vocab.n_items, TINY)
    with pytest.raises(ValueError, match="has no item vocabulary: call model.set_item_vocab"):
        trainer_kwargs(bare, split)
    other = _model("sasrec", ds)
    other.set_item_vocab(type(ds.vocab)(list(reversed(ds.vocab.items))))
    with pytest.raises(ValueError, match="another vocabulary than SASRecModel's.*align_with_model"):
        trainer_kwargs(other, split)
    small = build_model("sasrec", 10, TINY)
    with pytest.raises(ValueError, match=r"item index \d+ but SASRecModel has n_items=10"):
        trainer_kwargs(small, dataclasses.replace(split, dataset=None))
    with pytest.raises(ValueError, match="reads timestamps, but the data has none"):
        trainer_kwargs(_model("tim4rec_causal", ds), dataclasses.replace(split, train_timestamps=None))
    with pytest.raises(ValueError, match="eval_on must be one of"):
        trainer_kwargs(_model("sasrec", ds), split, eval_on="train")
    with pytest.raises(TypeError, match="split must be zoo.data.Split"):
        trainer_kwargs(_model("sasrec", ds), split.valid)


def test_bad_batches_and_predictions_are_refused_naming_the_problem():
    seqs, ts = _random_sequences()
    w = training_windows(seqs, 8, ts)
    ex = EvalExamples([s for s in seqs], np.array([1] * len(seqs)), list(range(len(seqs))))
    collate = SeqRecCollator("right")
    with pytest.raises(ValueError, match="example 1 has the fields .*one batch mixes"):
        collate([WindowDataset(w)[0], HistoryDataset(ex, 8)[0]])
    item = dict(WindowDataset(w)[0])
    item["labels"] = item["labels"][:-1]
    with pytest.raises(ValueError, match="example 0 has \\d+ input_ids but \\d+ labels"):
        collate([item])
    with pytest.raises(ValueError, match="input_ids must be a non-empty 1-D sequence of ints"):
        collate([{"input_ids": np.array([1.5, 2.0]), "labels": 3}])
    with pytest.raises(ValueError, match="padding_side must be"):
        SeqRecCollator("middle")
    for bad in (np.array([True, False]), np.array(["5", "6"])):       # were cast: True as 1.0 s, '5' as 5.0 s
        with pytest.raises(TypeError, match=r"row 0 must be a 1-D array of numbers, got (bool|<U1) values"):
            collate([{"input_ids": np.array([3, 4]), "labels": np.array([4, 5]), "timestamps": bad}])
    ok = collate([{"input_ids": np.array([3, 4]), "labels": np.array([4, 5]), "timestamps": [10, 20]}])
    assert ok["timestamps"].dtype == torch.float64 and ok["timestamps"].tolist() == [[10.0, 20.0]]
    empty = EvalExamples([np.array([3]), np.array([], dtype=np.int64)], np.array([1, 2]), ["a", "b"])
    with pytest.raises(ValueError, match="example 1 \\(user 'b'\\) has an empty history"):
        HistoryDataset(empty, 8)
    with pytest.raises(ValueError, match="one next item per history"):
        logits_to_ranks(torch.zeros(2, 5), torch.ones(2, 3, dtype=torch.long))
    # (logits, hidden_states): what the Trainer hands on from a tuple output (a config with return_dict=False) or
    # from a dict whose keys_to_ignore_at_inference lacks hidden_states -- the logits are read from it
    scores = torch.randn(2, 5)
    assert torch.equal(logits_to_ranks((scores.clone(), torch.zeros(2, 3, 4)), torch.ones(2, dtype=torch.long)),
                       logits_to_ranks(scores.clone(), torch.ones(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="keys_to_ignore_at_inference"):
        logits_to_ranks((torch.zeros(2, 5), torch.zeros(2, 3, 4), torch.zeros(2)), torch.ones(2, dtype=torch.long))
    compute = ranking_metrics((10,))
    with pytest.raises(ValueError, match="preprocess_logits_for_metrics"):
        compute(type("P", (), {"predictions": np.zeros((2, 5))})())
    with pytest.raises(ValueError, match="cut-offs must be ints >= 1"):
        ranking_metrics((0,))


def test_logits_to_ranks_never_ranks_the_padding_item():
    logits = torch.tensor([[9.0, 1.0, 2.0, 3.0], [9.0, 3.0, 2.0, 1.0]])
    assert logits_to_ranks(logits.clone(), torch.tensor([3, 3])).tolist() == [1, 3]
    assert ranking_metrics((1,))(type("P", (), {"predictions": np.array([1, 3])})()) == {
        "HR@1": 0.5, "NDCG@1": 0.5, "MRR@1": 0.5}


def test_readme_trainer_example_runs(tmp_path, monkeypatch, shared_file):
    """README's Trainer block as written, on the shared ML-100K file, but for one epoch (not twenty) into a temporary
    folder: it trains, keeps the best checkpoint and reports test metrics."""
    blocks = re.findall(r"^```python\n(.*?)^```", (__import__("conftest").ROOT / "README.md").read_text(),
                        re.S | re.M)
    found = [b for b in blocks if "trainer_kwargs" in b]
    assert len(found) == 1, "README.md: expected one python block with trainer_kwargs"
    code = found[0]
    assert "num_train_epochs=20" in code and '"../shared/data/ml-100k.inter.gz"' in code
    code = code.replace("num_train_epochs=20", "num_train_epochs=1").replace(
        '"../shared/data/ml-100k.inter.gz"', repr(str(shared_file("ml-100k.inter.gz"))))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md:python (Trainer)", "exec"), namespace)
    test = namespace["test"]
    assert 0 < test["test_NDCG@10"] < test["test_HR@10"] < 1, test
    assert (tmp_path / "runs" / "sasrec-ml100k").is_dir()


def test_save_run_records_an_early_stop(tmp_path):
    """With transformers' ``EarlyStoppingCallback`` and nothing to learn (lr 0: validation never improves), the run
    stops after its patience and ``save_run``'s log says so, with the best epoch the first."""
    from transformers import EarlyStoppingCallback

    ds, split = _data(tmp_path, n_users=20)
    model = _model("gru4rec", ds)
    trainer = Trainer(model=model, args=_args(tmp_path, num_train_epochs=6, learning_rate=0.0, eval_strategy="epoch",
                                              save_strategy="epoch", metric_for_best_model="NDCG@10",
                                              load_best_model_at_end=True, save_total_limit=1,
                                              per_device_train_batch_size=16),
                      callbacks=[EarlyStoppingCallback(early_stopping_patience=2)], **trainer_kwargs(model, split))
    trainer.train()
    log = save_run(trainer, tmp_path / "run", str(tmp_path / "markov.tsv"), data_options={"kcore": None})
    assert log["stopped"] == "early stopping: no valid NDCG@10 gain for 2 epochs"
    assert log["best_epoch"] == 1 and len(log["epochs"]) == 3, log["epochs"]


@pytest.mark.parametrize("logging_steps", [2, 5])
def test_save_run_gives_each_epoch_the_losses_logged_within_it(tmp_path, logging_steps):
    """4 optimizer steps an epoch, 3 epochs. Logged every 2 steps (at epochs 0.5, 1.0 | 1.5, 2.0 | 2.5, 3.0), epoch N's
    loss is the mean of the two logs within it (not the next epoch's log, not a later log overwriting an earlier one,
    not 1.5 and 2.5 rounded to the even 2); logged every 5 (at 1.25, 2.5), epoch 1 has no log and no loss, epoch 2
    the log at 1.25, epoch 3 the one at 2.5. The log says what the loss is."""
    from zoo.hf_trainer import EPOCH_LOSS, epoch_losses, epoch_of

    ds, split = _data(tmp_path, n_users=20)
    model = _model("sasrec", ds)
    kw = trainer_kwargs(model, split)
    batch = -(-len(kw["train_dataset"]) // 4)                  # 4 batches (optimizer steps) an epoch
    assert -(-len(kw["train_dataset"]) // batch) == 4
    trainer = Trainer(model=model, args=_args(tmp_path, num_train_epochs=3, per_device_train_batch_size=batch,
                                              learning_rate=5e-3, eval_strategy="epoch",
                                              logging_strategy="steps", logging_steps=logging_steps), **kw)
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["epoch"] for e in logs] == ([0.5, 1.0, 1.5, 2.0, 2.5, 3.0] if logging_steps == 2 else [1.25, 2.5])
    log = save_run(trainer, tmp_path / "run", str(tmp_path / "markov.tsv"), data_options={"kcore": None})
    rows = {r["epoch"]: r for r in log["epochs"]}
    assert sorted(rows) == [1, 2, 3] and log["epoch_loss"] == EPOCH_LOSS
    if logging_steps == 2:
        for n in (1, 2, 3):
            assert rows[n]["loss"] == pytest.approx((logs[2 * n - 2]["loss"] + logs[2 * n - 1]["loss"]) / 2), n
    else:
        assert "loss" not in rows[1] and rows[2]["loss"] == logs[0]["loss"] and rows[3]["loss"] == logs[1]["loss"]
    assert [epoch_of(x) for x in (0.25, 1.0, 1.0000000001, 1.15, 1.5, 2.5, 3.0)] == [1, 1, 1, 2, 2, 3, 3]
    # a log weighs as many steps as it covers (logging_first_step: the first log is one step, the next nine)
    assert epoch_losses([{"loss": 4.0, "epoch": 0.1, "step": 1}, {"loss": 2.0, "epoch": 1.0, "step": 10},
                         {"train_loss": 9.0, "epoch": 1.0, "step": 10}]) == {1: pytest.approx((4.0 + 9 * 2.0) / 10)}


def _saved(tmp_path, name, trainer):
    return save_run(trainer, tmp_path / name, str(tmp_path / "markov.tsv"), data_options={"kcore": None})


def test_save_run_records_how_the_trainer_stopped_and_refuses_an_interrupted_run(tmp_path):
    """A run cut before its planned steps (an interruption) is refused, not saved as early stopping; a max_steps run
    is "max steps"; early stopping is recorded only when an EarlyStoppingCallback stopped the run."""
    from transformers import EarlyStoppingCallback, TrainerCallback

    ds, split = _data(tmp_path, n_users=30)

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise KeyboardInterrupt

    model = _model("sasrec", ds)
    trainer = Trainer(model=model, args=_args(tmp_path, num_train_epochs=5, per_device_train_batch_size=8),
                      callbacks=[Interrupt()], **trainer_kwargs(model, split))
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    with pytest.raises(ValueError, match=r"stopped at step 3 of its planned \d+ without early stopping"):
        _saved(tmp_path, "cut", trainer)
    assert not (tmp_path / "cut").exists()
    model = _model("sasrec", ds)
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=3), **trainer_kwargs(model, split))
    trainer.train()
    assert _saved(tmp_path, "steps", trainer)["stopped"].startswith("max steps; ")
    model = _model("sasrec", ds, hidden_dropout=0.0, attn_dropout=0.0)
    trainer = Trainer(model=model, args=_args(tmp_path, num_train_epochs=30, learning_rate=1e-9, eval_strategy="epoch",
                                              save_strategy="epoch", metric_for_best_model="NDCG@10",
                                              load_best_model_at_end=True, per_device_train_batch_size=8),
                      callbacks=[EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=1e-3)],
                      **trainer_kwargs(model, split))
    trainer.train()
    assert trainer.state.global_step < trainer.state.max_steps
    log = _saved(tmp_path, "early", trainer)
    assert log["stopped"] == "early stopping: no valid NDCG@10 gain for 1 epochs"


def test_save_run_keeps_one_record_per_epoch_when_evaluating_by_steps(tmp_path):
    """eval_strategy="steps" evaluates several times an epoch: the log keeps one record per epoch (its last
    evaluation), so the card's "best epoch X of N" counts epochs."""
    ds, split = _data(tmp_path, n_users=30)
    model = _model("sasrec", ds)
    trainer = Trainer(model=model, args=_args(tmp_path, num_train_epochs=2, eval_strategy="steps", eval_steps=2,
                                              save_strategy="steps", save_steps=2, metric_for_best_model="NDCG@10",
                                              load_best_model_at_end=True, per_device_train_batch_size=8),
                      **trainer_kwargs(model, split))
    trainer.train()
    evals = [e for e in trainer.state.log_history if "eval_NDCG@10" in e]
    assert len(evals) > 2
    log = _saved(tmp_path, "run", trainer)
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    last_of_first = [e for e in evals if e["epoch"] <= 1.0][-1]
    assert log["epochs"][0]["valid_NDCG@10"] == last_of_first["eval_NDCG@10"]
    assert log["best_epoch"] in (1, 2)


def test_trainer_kwargs_cut_offs_follow_the_catalogue(tmp_path):
    """``trainer_kwargs``' cut-offs: by default 5, 10, 20 where the catalogue has them (as zoo.train and zoo.evaluate
    report), and a cut-off above the model's real items is refused before any training: the Trainer's metrics
    reported HR@K = 1 for every checkpoint."""
    ds, split = _data(tmp_path, n_users=40)
    model = _model("sasrec", ds)
    n_real = int(model.config.n_items) - 1
    metrics = trainer_kwargs(model, split)["compute_metrics"]
    ranks = np.arange(1, 8)
    got = metrics(types.SimpleNamespace(predictions=ranks))
    assert {f"NDCG@{k}" for k in (5, 10, 20) if k <= n_real} == {k for k in got if k.startswith("NDCG@")}
    with pytest.raises(ValueError, match=rf"cut-off @{n_real + 1}: the model ranks {n_real} items"):
        trainer_kwargs(model, split, ks=(10, n_real + 1))


def test_running_the_library_module_says_what_it_is_and_what_to_run():
    """``python -m zoo.hf_trainer --help`` printed nothing and exited 0: it is a library module, so running it says so
    on stderr, with the command that trains from the command line, and exits 2 (a usage error)."""
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "zoo.hf_trainer", "--help"], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "ZOO_NO_CACHE_SEED": "1"})
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    assert "zoo.hf_trainer is a library module, not a command" in r.stderr and "python -m zoo.train" in r.stderr


def test_bert4rec_takes_no_overlapping_windows_as_zoo_train_refuses_them(tmp_path):
    """trainer_kwargs(bert4rec, split, stride=1) trained on overlapping windows without a word, which zoo.train
    --window-stride refuses for BERT4Rec (its Cloze objective would only repeat masked items)."""
    ds, split = _data(tmp_path)
    model = _model("bert4rec", ds)
    L = int(model.config.max_seq_length)
    with pytest.raises(ValueError, match=r"stride=1: BERT4Rec's Cloze objective .* leave stride at None"):
        trainer_kwargs(model, split, stride=1)
    assert len(trainer_kwargs(model, split, stride=L)["train_dataset"]) == len(trainer_kwargs(model, split)
                                                                                ["train_dataset"])
    assert len(trainer_kwargs(_model("sasrec", ds), split, stride=1)["train_dataset"]) > 0   # the others take it
