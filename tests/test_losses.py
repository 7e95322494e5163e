"""Sampled softmax (``zoo.losses``, ``zoo.train --loss sampled-softmax``) against the full cross-entropy.

The tie between the two: drawing every item once, uncorrected, must give the full cross-entropy exactly, through
every model's own training forward (its objective: all-position, prefix, Cloze). The estimator: with the logQ
correction the loss tends to the full cross-entropy as the number of draws grows, under a skewed proposal too, and
without it it does not (the negative control).
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoo.losses import LOSSES, NegativeSample, NegativeSampler, describe_loss, sampled_softmax_loss
from zoo.modeling_utils import SeqRecPreTrainedModel

pytestmark = pytest.mark.usefixtures("one_thread")


def _builders():
    from test_bert4rec import small as bert4rec
    from test_gru4rec import small as gru4rec
    from test_lrurec import small_model as lrurec
    from test_mamba4rec import tiny as mamba4rec
    from test_sasrec import small as sasrec
    from test_ssd4rec import small as ssd4rec
    from test_tim4rec import causal, faithful

    return {"mamba4rec": mamba4rec, "sasrec": lambda: sasrec(max_seq_length=32), "lrurec": lrurec,
            "gru4rec": gru4rec, "bert4rec": lambda: bert4rec(max_seq_length=16), "ssd4rec": ssd4rec,
            "tim4rec": faithful, "tim4rec_causal": causal}


MODEL_NAMES = sorted(_builders())


def _model(name):
    model = _builders()[name]().eval()
    _, bias = model.item_output()
    if bias is not None:            # a bias of some size, so that a loss that forgets it fails
        with torch.no_grad():
            bias.normal_(0, 0.5)
    return model


def _batch(model, n_rows=4, seed=0):
    """A padded batch of histories of several lengths (``<= max_seq_length``) with all-position labels, timestamps
    for the models that read them."""
    rng = random.Random(seed)
    V = int(model.config.n_items)
    lengths = [min(n, int(model.config.max_seq_length)) for n in (3, 9, 12, 7)][:n_rows]
    hist = [[rng.randrange(1, V) for _ in range(n)] for n in lengths]
    ts = [list(np.cumsum([rng.randint(1, 10_000) for _ in range(n)]).astype(float)) for n in lengths]
    if model.uses_timestamps:
        ids, mask, stamps = model.pad_batch(hist, timestamps=ts)
    else:
        (ids, mask), stamps = model.pad_batch(hist), None
    labels = torch.where(mask, torch.randint(1, V, ids.shape, generator=torch.Generator().manual_seed(seed)), 0)
    return ids, mask, stamps, labels


# ------------------------------------------------------------------------------------------------- the models
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_ranks_and_trains_through_one_output_layer(name):
    """``score`` is the base class's ``hidden @ weight^T + bias`` of ``item_output``: no model scores the catalogue
    some other way than the sampled loss reads it."""
    model = _model(name)
    assert type(model).score is SeqRecPreTrainedModel.score
    weight, bias = model.item_output()
    V = int(model.config.n_items)
    assert weight.shape[0] == V and (bias is None or bias.shape == (V,))
    h = torch.randn(5, weight.shape[1])
    ref = h @ weight.t() + (0 if bias is None else bias)
    torch.testing.assert_close(model.score(h), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("all_positions", [True, False])
def test_every_item_once_is_the_full_cross_entropy_through_each_models_forward(name, all_positions):
    model = _model(name)
    ids, mask, ts, labels = _batch(model)
    if not all_positions:       # RecBole's labels [B]: the next item after each row's last position
        labels = labels[torch.arange(ids.shape[0]), model.last_positions(mask)]
    every = NegativeSample.every_item(int(model.config.n_items))
    torch.manual_seed(1)        # BERT4Rec draws its masks: the same draws for both losses
    full = model(ids, mask, labels=labels, timestamps=ts)
    torch.manual_seed(1)
    sampled = model(ids, mask, labels=labels, timestamps=ts, negatives=every)
    assert torch.isfinite(full.loss) and full.loss > 0
    torch.testing.assert_close(sampled.loss, full.loss, atol=1e-5, rtol=1e-5)
    assert sampled.logits is None               # the full catalogue is not scored in sampled training
    # the loss reaches the output layer (the item embeddings) and every layer of the encoder
    sampled.loss.backward()
    assert float(model.item_embedding.weight.grad.abs().sum()) > 0
    layers = [n for n, p in model.named_parameters() if "layer" in n and p.requires_grad]
    assert layers and any(float(p.grad.abs().sum()) > 0 for n, p in model.named_parameters() if n in layers)


@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "tim4rec"])
def test_negatives_without_labels_are_refused(name):
    model = _model(name)
    ids, mask, ts, _ = _batch(model)
    with pytest.raises(ValueError, match="negatives are the sampled loss's: give them with labels"):
        model(ids, mask, timestamps=ts, negatives=NegativeSample.every_item(int(model.config.n_items)))


def test_a_real_sample_changes_the_loss_and_trains_only_the_rows_it_reads():
    """With a few negatives the loss differs from the full one, and the output rows outside targets and negatives get
    no gradient (what makes the step cheap on a large catalogue, apart from the optimizer's dense update)."""
    model = _model("sasrec")
    ids, mask, _, labels = _batch(model)
    full = model(ids, mask, labels=labels).loss
    sample = NegativeSample(torch.tensor([3, 5, 5, 9]), torch.zeros(4))
    loss = model(ids, mask, labels=labels, negatives=sample).loss
    assert abs(loss.item() - full.item()) > 0.1
    model.zero_grad()
    loss.backward()
    read = set(labels[labels > 0].tolist()) | {3, 5, 9} | set(ids[mask].tolist())      # input rows: the embedding
    grad = model.item_embedding.weight.grad
    untouched = [i for i in range(int(model.config.n_items)) if i not in read]
    assert untouched and float(grad[untouched].abs().max()) == 0.0
    assert float(grad[[3, 5, 9]].abs().sum()) > 0


# ---------------------------------------------------------------------------------------------- the function
def test_sampled_softmax_by_hand():
    # D = 1, items 0..3 with weights 0, 1, 2, 3 and bias 0, 0, 0, 1; hidden 1 -> logits o = [0, 1, 2, 4]
    weight = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    bias = torch.tensor([0.0, 0.0, 0.0, 1.0])
    h, t = torch.tensor([[1.0]]), torch.tensor([2])
    # negatives 1 and 3 with log counts log 2 and log 0.5: loss = -2 + log(e^2 + e^(1 - log 2) + e^(4 - log 0.5))
    sample = NegativeSample(torch.tensor([1, 3]), torch.log(torch.tensor([2.0, 0.5])))
    expected = -2 + math.log(math.exp(2) + math.exp(1) / 2 + math.exp(4) * 2)
    assert float(sampled_softmax_loss(h, t, weight, bias, sample)) == pytest.approx(expected, abs=1e-6)
    # the target drawn as a negative (an accidental hit) is left out of the denominator, every time it is drawn
    hit = NegativeSample(torch.tensor([2, 1, 2]), torch.zeros(3))
    assert float(sampled_softmax_loss(h, t, weight, bias, hit)) == pytest.approx(
        -2 + math.log(math.exp(2) + math.exp(1)), abs=1e-6)
    only_hits = NegativeSample(torch.tensor([2, 2]), torch.zeros(2))
    assert float(sampled_softmax_loss(h, t, weight, bias, only_hits)) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match=r"hidden must be \[M, D\] and targets \[M\]"):
        sampled_softmax_loss(h[0], t, weight, bias, sample)


@pytest.mark.parametrize("kind", ["uniform", "popularity"])
def test_the_logq_corrected_loss_tends_to_the_full_cross_entropy(kind):
    """Importance sampling: ``sum_k exp(o_s) / (K Q(s))`` estimates ``sum_j exp(o_j)``, so with many draws the sampled
    loss is the full one (here within 1%) whatever the proposal. Negative control: the same draws from the skewed
    popularity proposal, corrected as if they were uniform, miss it by far."""
    g = torch.Generator().manual_seed(0)
    V, D, M, K = 60, 8, 16, 200_000
    weight, bias = torch.randn(V, D, generator=g), torch.randn(V, generator=g)
    h, t = torch.randn(M, D, generator=g), torch.randint(1, V, (M,), generator=g)
    counts = np.r_[0, np.geomspace(1000, 1, V - 1)].round()                  # a long tail, as real catalogues have
    torch.manual_seed(0)
    sampler = NegativeSampler(V, K, kind, counts if kind == "popularity" else None)
    sample = sampler.sample()
    # the full cross-entropy over the real items (the sampler never draws padding 0)
    full = F.cross_entropy(h @ weight[1:].t() + bias[1:], t - 1)
    est = sampled_softmax_loss(h, t, weight, bias, sample)
    assert float(est) == pytest.approx(float(full), rel=0.01)
    if kind == "popularity":
        as_if_uniform = NegativeSample(sample.items, torch.full((K,), math.log(K / (V - 1))))
        wrong = sampled_softmax_loss(h, t, weight, bias, as_if_uniform)
        assert abs(float(wrong) - float(full)) > 10 * abs(float(est) - float(full))


def test_the_sampler_draws_real_items_by_its_proposal():
    counts = np.array([0, 10, 0, 30, 60])
    torch.manual_seed(0)
    pop = NegativeSampler(5, 100_000, "popularity", counts)
    draws = np.bincount(pop.sample().items.numpy(), minlength=5) / 100_000
    expected = np.array([0, 11, 1, 31, 61]) / 104                                       # counts + 1, padding never
    np.testing.assert_allclose(draws, expected, atol=0.005)
    assert draws[0] == 0 and draws[2] > 0                                               # unseen items can be drawn
    s = pop.sample()
    torch.testing.assert_close(s.log_count, torch.log(100_000 * torch.tensor(expected, dtype=torch.float32))[s.items])
    uni = NegativeSampler(5, 40_000, "uniform").sample()
    np.testing.assert_allclose(np.bincount(uni.items.numpy(), minlength=5) / 40_000, [0, .25, .25, .25, .25], atol=0.01)
    torch.testing.assert_close(uni.log_count, torch.full((40_000,), math.log(10_000.0)))


@pytest.mark.parametrize("args, message", [
    ((5, 4, "zipf"), "negative sampler must be one of"),
    ((5, 0, "uniform"), "number of negatives must be an int >= 1"),
    ((1, 4, "uniform"), "n_items must be >= 2"),
    ((5, 4, "popularity"), "needs the items' training counts"),
    ((5, 4, "popularity", [1, 2, 3]), r"one entry per item index \(5\)"),
    ((5, 4, "popularity", [0, 1, -1, 2, 3]), "finite and >= 0"),
])
def test_the_sampler_refuses_bad_settings(args, message):
    with pytest.raises(ValueError, match=message):
        NegativeSampler(*args)


def test_describe_loss():
    assert describe_loss(None) is None and describe_loss({"type": "ce"}) is None
    s = describe_loss({"type": "sampled-softmax", "negatives": 64, "sampler": "popularity"})
    assert "64 negatives" in s and "training counts" in s and "logQ-corrected" in s
    with pytest.raises(ValueError, match="unknown loss 'bpr'"):
        describe_loss({"type": "bpr"})
    assert LOSSES == ("ce", "sampled-softmax")


# ---------------------------------------------------------------------------------------------------- zoo.train
@pytest.mark.parametrize("model_type, sampler", [("mamba4rec", "uniform"), ("sasrec", "popularity")])
def test_sampled_training_beats_random_by_far_and_says_so(tmp_path, model_type, sampler):
    from test_train import TINY, _markov_file

    from zoo.train import main as train_main

    data = _markov_file(tmp_path / "markov.tsv")
    out = tmp_path / model_type
    log = train_main(["--model", model_type, "--data", str(data), "--out", str(out), "--epochs", "6",
                      "--max-len", "50", "--batch-size", "16", "--lr", "5e-3", "--kcore", "0", "--no-progress",
                      "--set", *TINY[model_type], "--loss", "sampled-softmax", "--negatives", "8",
                      "--negative-sampler", sampler])
    assert log["test"]["HR@10"] > 2.5 * 10 / 40 and log["test"]["NDCG@10"] > 0.3, log["test"]
    assert log["best_valid_NDCG10"] > 2 * log["popularity_valid_NDCG10"] > 0
    assert log["loss"] == {"type": "sampled-softmax", "negatives": 8, "sampler": sampler}
    assert log["objective"].startswith("sampled softmax (each target against 8 negatives")
    saved = json.loads((out / "train_log.json").read_text())
    assert saved["loss"] == log["loss"]
    # the card says how the model was trained (its objective line is rebuilt from the log)
    from zoo.hub import _objective

    cfg = json.loads((out / "config.json").read_text())
    assert _objective(cfg, saved) == log["objective"]


def test_full_cross_entropy_logs_its_loss_and_keeps_its_objective(tmp_path):
    from test_train import TINY, _markov_file

    from zoo.train import main as train_main

    data = _markov_file(tmp_path / "markov.tsv", n_users=40)
    log = train_main(["--model", "gru4rec", "--data", str(data), "--out", str(tmp_path / "m"), "--epochs", "1",
                      "--max-len", "20", "--kcore", "0", "--no-progress", "--set", *TINY["gru4rec"]])
    assert log["loss"] == {"type": "ce"}
    assert log["objective"].startswith("cross-entropy over all items")


def test_a_large_catalogue_under_the_full_cross_entropy_points_at_sampled_softmax(tmp_path, capsys, monkeypatch):
    """The note's size is targets per batch x items x 4 bytes; here the threshold is lowered to this tiny data's."""
    from test_train import TINY, _markov_file

    import zoo.train as T

    data = _markov_file(tmp_path / "markov.tsv", n_users=40)
    monkeypatch.setattr(T, "LARGE_LOGITS_BYTES", 1000)
    common = ["--model", "gru4rec", "--data", str(data), "--epochs", "1", "--max-len", "20", "--kcore", "0",
              "--batch-size", "4", "--no-progress", "--set", *TINY["gru4rec"]]
    T.main(common + ["--out", str(tmp_path / "ce")])
    out = capsys.readouterr().out
    assert "note: the full cross-entropy scores 40 items at every target" in out and "--loss sampled-softmax" in out
    T.main(common + ["--out", str(tmp_path / "ss"), "--loss", "sampled-softmax", "--negatives", "8"])
    assert "note: the full cross-entropy" not in capsys.readouterr().out
    monkeypatch.setattr(T, "LARGE_LOGITS_BYTES", 2**30)
    T.main(common + ["--out", str(tmp_path / "ce2")])
    assert "note: the full cross-entropy" not in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--negatives", "8"], "are for --loss sampled-softmax"),
    (["--negative-sampler", "popularity"], "are for --loss sampled-softmax"),
])
def test_sampling_options_without_the_sampled_loss_are_refused(tmp_path, capsys, extra, message):
    from test_train import _markov_file

    from zoo.train import main as train_main

    data = _markov_file(tmp_path / "markov.tsv", n_users=20)
    with pytest.raises(SystemExit) as e:
        train_main(["--model", "gru4rec", "--data", str(data), "--out", str(tmp_path / "m"), "--no-progress", *extra])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["mamba4rec", "bert4rec"])
def test_every_item_once_is_the_full_cross_entropy_on_cuda(name):
    """The tie of the two losses on the GPU (the sampled loss's gathers and masked fill on CUDA tensors)."""
    model = _model(name).cuda()
    ids, mask, ts, labels = (None if t is None else t.cuda() for t in _batch(model))
    every = NegativeSample.every_item(int(model.config.n_items), device="cuda")
    torch.manual_seed(1)
    full = model(ids, mask, labels=labels, timestamps=ts).loss
    torch.manual_seed(1)
    sampled = model(ids, mask, labels=labels, timestamps=ts, negatives=every).loss
    torch.testing.assert_close(sampled, full, atol=1e-5, rtol=1e-5)
