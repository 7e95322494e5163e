"""Sparse item gradients and lazy Adam (``zoo.train --sparse-item-grad``) against the dense path they replace.

The gradient: with the item table's ``sparse`` flag on, a sampled-softmax step gives the table a sparse gradient
whose dense form is exactly the dense path's gradient (every model, its own objective), and every other parameter's
gradient is unchanged. The optimizer: the first lazy-Adam step equals dense Adam's (a row not read has a zero
gradient and zero moments either way), later steps move only the rows read (the negative control: dense Adam keeps
moving the others by their momentum). Clipping, the optimizer's state round trip and the refusals.
"""

from __future__ import annotations

import json

import pytest
import torch

from zoo.losses import NegativeSample, NegativeSampler, sparse_output_table
from zoo.train import SparseItemOptimizer, clip_grad_norm, make_optimizer
from zoo.train_state import _optimizer_state_dict, _optimizer_tensors

from test_losses import MODEL_NAMES, _batch, _model

pytestmark = pytest.mark.usefixtures("one_thread")


def _grads(model, sparse: bool, negatives, seed=0):
    """Gradients of one sampled-softmax forward + backward (dropout and BERT4Rec's masks drawn alike)."""
    model.zero_grad(set_to_none=True)
    model.get_input_embeddings().sparse = sparse
    ids, mask, ts, labels = _batch(model, seed=seed)
    torch.manual_seed(1)
    model(ids, mask, labels=labels, timestamps=ts, negatives=negatives).loss.backward()
    model.get_input_embeddings().sparse = False
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_the_sparse_table_gradient_is_the_dense_one_for_every_model(name):
    model = _model(name).train()
    V = int(model.config.n_items)
    negatives = NegativeSample(torch.tensor([1, 2, 2, V - 1]), torch.full((4,), 0.3))      # a repeat, the last row
    dense, sparse = _grads(model, False, negatives), _grads(model, True, negatives)
    assert dense.keys() == sparse.keys()
    table = sparse["item_embedding.weight"]
    assert table.is_sparse and not dense["item_embedding.weight"].is_sparse
    for n in dense:
        got = sparse[n].to_dense() if sparse[n].is_sparse else sparse[n]
        torch.testing.assert_close(got, dense[n], atol=1e-6, rtol=1e-5, msg=n)
    # it holds only the rows read: inputs, targets, negatives (and BERT4Rec's [MASK] row), not the whole table
    rows = set(table.coalesce().indices()[0].tolist())
    ids, mask, _, labels = _batch(model)
    read = set(ids[mask].tolist()) | set(labels[labels > 0].tolist()) | {1, 2, V - 1}
    assert rows <= read | {V} | {0}, sorted(rows - read)


def test_the_full_cross_entropy_on_a_sparse_table_is_refused():
    model = _model("sasrec").train()
    model.get_input_embeddings().sparse = True
    ids, mask, _, labels = _batch(model)
    with pytest.raises(ValueError, match="sparse gradients .* but the full cross-entropy reads every row"):
        model(ids, mask, labels=labels)


def test_an_output_layer_that_is_not_the_item_table_is_refused():
    table = torch.nn.Parameter(torch.randn(10, 4))
    assert sparse_output_table("M", table, table[:9]) is table                  # BERT4Rec's: leading rows
    for other in (torch.randn(10, 4), table[1:], table.t()):
        with pytest.raises(ValueError, match="M: its output weight is not the leading rows of its item table"):
            sparse_output_table("M", table, other)
    # the model's switch checks it before setting the flag, and turns it off again
    model = _model("bert4rec")
    model.set_sparse_item_grad()
    assert model.get_input_embeddings().sparse
    model.set_sparse_item_grad(False)
    assert not model.get_input_embeddings().sparse
    untied = _model("sasrec")
    untied.item_output = lambda: (torch.randn(int(untied.config.n_items), 16), None)
    with pytest.raises(ValueError, match="SASRecModel: its output weight is not the leading rows"):
        untied.set_sparse_item_grad()
    assert not untied.get_input_embeddings().sparse


def _step(model, opt, negatives, seed, n_rows=4):
    opt.zero_grad(set_to_none=True)
    ids, mask, ts, labels = _batch(model, n_rows=n_rows, seed=seed)
    model(ids, mask, labels=labels, timestamps=ts, negatives=negatives).loss.backward()
    opt.step()


@pytest.mark.parametrize("name, optimizer, weight_decay", [("sasrec", "adam", 0.0), ("lrurec", "adamw", 0.01)])
def test_lazy_adam_equals_adam_on_the_first_step_and_then_moves_only_the_rows_read(name, optimizer, weight_decay):
    torch.manual_seed(0)
    dense_model = _model(name).eval()                   # no dropout: the two paths see the same forward
    sparse_model = _model(name).eval()
    sparse_model.load_state_dict(dense_model.state_dict())
    dense_opt = make_optimizer(dense_model, optimizer, 1e-2, weight_decay)
    sparse_opt = make_optimizer(sparse_model, optimizer, 1e-2, weight_decay, sparse_items=True)
    assert isinstance(sparse_opt, SparseItemOptimizer) and not isinstance(dense_opt, SparseItemOptimizer)
    assert isinstance(sparse_opt.sparse, torch.optim.SparseAdam)
    assert sparse_opt.table is sparse_model.item_embedding.weight
    assert all(sparse_opt.table is not p for g in sparse_opt.dense.param_groups for p in g["params"])
    sparse_model.get_input_embeddings().sparse = True
    neg1 = NegativeSample(torch.tensor([3, 5, 5, 9]), torch.zeros(4))
    start = sparse_model.item_embedding.weight.detach().clone()
    _step(dense_model, dense_opt, neg1, seed=0)
    _step(sparse_model, sparse_opt, neg1, seed=0)
    d, s = dense_model.state_dict(), sparse_model.state_dict()
    for k in d:
        if k != "item_embedding.weight":
            torch.testing.assert_close(s[k], d[k], atol=1e-6, rtol=1e-5, msg=k)
    # the table: the same update, to within eps's place (SparseAdam adds eps to sqrt(v) before the bias correction,
    # Adam after it, so entries whose gradient is near eps move a little differently): 1% of the step lr
    k = "item_embedding.weight"
    moved = (s[k] != start).any(1)
    ref = d[k] / (1 - 1e-2 * weight_decay)          # AdamW decays the whole table (decoupled); lazy Adam does not
    torch.testing.assert_close(s[k][moved], ref[moved], atol=1e-4, rtol=0)
    assert torch.equal(s[k][~moved], start[~moved])
    assert torch.equal(d[k][~moved], start[~moved] * (1 - 1e-2 * weight_decay))   # Adam: no gradient, no move
    # second step, other rows: a row read at step 1 but not now keeps its value under lazy Adam, not under Adam
    after1 = sparse_model.item_embedding.weight.detach().clone()
    neg2 = NegativeSample(torch.tensor([11, 12]), torch.zeros(2))
    ids, mask, _, labels = _batch(sparse_model, n_rows=1, seed=7)
    read2 = set(ids[mask].tolist()) | set(labels[labels > 0].tolist()) | {11, 12}
    only1 = [i for i in moved.nonzero().flatten().tolist() if i not in read2]
    assert only1
    dense_before = dense_model.item_embedding.weight.detach().clone()
    _step(dense_model, dense_opt, neg2, seed=7, n_rows=1)
    _step(sparse_model, sparse_opt, neg2, seed=7, n_rows=1)
    assert torch.equal(sparse_model.item_embedding.weight[only1], after1[only1])
    assert not torch.equal(dense_model.item_embedding.weight[only1], dense_before[only1])
    assert not torch.equal(sparse_model.item_embedding.weight[[11, 12]], after1[[11, 12]])


def test_the_learning_rate_schedule_reaches_both_optimizers():
    model = _model("sasrec")
    opt = make_optimizer(model, "adam", 1e-3, 0.0, sparse_items=True)
    assert len(opt.param_groups) == 2
    for g in opt.param_groups:
        g["lr"] = 5e-4
    assert opt.dense.param_groups[0]["lr"] == opt.sparse.param_groups[0]["lr"] == 5e-4


def test_a_dense_table_gradient_is_refused_by_the_lazy_step():
    model = _model("sasrec")
    opt = make_optimizer(model, "adam", 1e-3, 0.0, sparse_items=True)
    ids, mask, _, labels = _batch(model)
    model(ids, mask, labels=labels).loss.backward()                         # full CE, table not sparse: dense grad
    with pytest.raises(RuntimeError, match="SASRecModel: the item table's gradient is dense"):
        opt.step()


def test_clip_grad_norm_with_a_sparse_gradient_is_torchs_on_its_dense_form():
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(6, 3)), torch.nn.Parameter(torch.randn(4))
    ga = torch.sparse_coo_tensor(torch.tensor([[1, 4, 1]]), torch.randn(3, 3), (6, 3),   # row 1 twice, uncoalesced
                                 check_invariants=True)
    gb = torch.randn(4)
    a2, b2 = torch.nn.Parameter(a.detach().clone()), torch.nn.Parameter(b.detach().clone())
    for max_norm in (0.5, 100.0):                                        # clipped, and left alone
        a.grad, b.grad = ga.clone(), gb.clone()
        a2.grad, b2.grad = ga.to_dense(), gb.clone()
        norm = clip_grad_norm([a, b], max_norm)
        ref = torch.nn.utils.clip_grad_norm_([a2, b2], max_norm)
        torch.testing.assert_close(norm, ref)
        assert a.grad.is_sparse
        torch.testing.assert_close(a.grad.to_dense(), a2.grad)
        torch.testing.assert_close(b.grad, b2.grad)
    # without a sparse gradient it is torch's own
    a2.grad = torch.ones(6, 3)
    torch.testing.assert_close(clip_grad_norm([a2], 1.0), torch.tensor(18.0).sqrt())


def test_the_optimizer_state_round_trips_through_the_resume_files():
    """``state_dict`` in torch's layout (dense parameters first, then the table), saved and restored as the resume
    state does, continues exactly; a dense run's state is refused."""
    torch.manual_seed(0)
    model = _model("lrurec").eval()
    opt = make_optimizer(model, "adamw", 1e-2, 0.01, sparse_items=True)
    model.get_input_embeddings().sparse = True
    sampler = NegativeSampler(int(model.config.n_items), 5)
    _step(model, opt, sampler.sample(), seed=0)
    sd = opt.state_dict()
    n_dense = sum(len(g["params"]) for g in opt.dense.param_groups)
    assert max(sd["state"]) == n_dense and sd["param_groups"][-1]["params"] == [n_dense]   # the table last
    tensors, meta = _optimizer_tensors(opt)
    tensors = {k: v.clone() for k, v in tensors.items()}                   # as the safetensors file keeps them
    meta = json.loads(json.dumps(meta))                                    # as state.json keeps it
    twin = _model("lrurec").eval()
    twin.load_state_dict(model.state_dict())
    twin.get_input_embeddings().sparse = True
    twin_opt = make_optimizer(twin, "adamw", 1e-2, 0.01, sparse_items=True)
    twin_opt.load_state_dict(_optimizer_state_dict(tensors, meta))
    neg = sampler.sample()
    _step(model, opt, neg, seed=3)
    _step(twin, twin_opt, neg, seed=3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, twin.state_dict()[k]), k
    dense_opt = make_optimizer(_model("lrurec"), "adamw", 1e-2, 0.01)
    with pytest.raises(ValueError, match="not of a --sparse-item-grad run"):
        twin_opt.load_state_dict(dense_opt.state_dict())
    with pytest.raises(ValueError):
        dense_opt.load_state_dict(opt.state_dict())


# ---------------------------------------------------------------------------------------------------- zoo.train
def test_sparse_training_beats_random_by_far_and_the_card_says_how(tmp_path, capsys):
    from test_train import TINY, _markov_file

    from zoo.hub import _optimiser_text
    from zoo.train import main as train_main

    data = _markov_file(tmp_path / "markov.tsv")
    out = tmp_path / "m"
    log = train_main(["--model", "lrurec", "--data", str(data), "--out", str(out), "--epochs", "6",
                      "--max-len", "50", "--batch-size", "16", "--lr", "5e-3", "--kcore", "0", "--no-progress",
                      "--set", *TINY["lrurec"], "--loss", "sampled-softmax", "--negatives", "8", "--sparse-item-grad"])
    assert log["test"]["HR@10"] > 2.5 * 10 / 40 and log["test"]["NDCG@10"] > 0.3, log["test"]
    assert log["best_valid_NDCG10"] > 2 * log["popularity_valid_NDCG10"] > 0
    assert log["train"]["sparse_item_grad"] is True
    printed = capsys.readouterr().out
    # LRURec's AdamW decays its item table; under lazy Adam it is not, and the run says so
    assert "item table: sparse gradient" in printed and "it is not decayed (weight decay 0.01" in printed
    text = _optimiser_text(json.loads((out / "train_log.json").read_text())["train"])
    assert "item table: sparse gradient" in text and "lazy Adam" in text and "not weight-decayed" in text
    # the checkpoint is an ordinary model: its table is dense again when loaded
    from transformers import AutoModel

    assert not AutoModel.from_pretrained(out).get_input_embeddings().sparse


def test_sparse_item_grad_without_the_sampled_loss_is_refused(tmp_path, capsys):
    from test_train import _markov_file

    from zoo.train import main as train_main

    data = _markov_file(tmp_path / "markov.tsv", n_users=20)
    with pytest.raises(SystemExit) as e:
        train_main(["--model", "gru4rec", "--data", str(data), "--out", str(tmp_path / "m"), "--no-progress",
                    "--sparse-item-grad"])
    assert e.value.code == 2 and "--sparse-item-grad is for --loss sampled-softmax" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.gpu
def test_the_sparse_table_gradient_is_the_dense_one_on_cuda():
    """The sparse gathers, their backward and lazy Adam on CUDA tensors, against the dense path on the GPU."""
    model = _model("mamba4rec").cuda().eval()
    twin = _model("mamba4rec").cuda().eval()
    twin.load_state_dict(model.state_dict())
    ids, mask, ts, labels = (None if t is None else t.cuda() for t in _batch(model))
    neg = NegativeSample(torch.tensor([1, 2, 2, 7], device="cuda"), torch.zeros(4, device="cuda"))
    opt = make_optimizer(model, "adam", 1e-2, 0.0)
    lazy = make_optimizer(twin, "adam", 1e-2, 0.0, sparse_items=True)
    twin.get_input_embeddings().sparse = True
    for m, o in ((model, opt), (twin, lazy)):
        o.zero_grad()
        m(ids, mask, labels=labels, timestamps=ts, negatives=neg).loss.backward()
    assert twin.item_embedding.weight.grad.is_sparse
    torch.testing.assert_close(twin.item_embedding.weight.grad.to_dense(), model.item_embedding.weight.grad,
                               atol=1e-5, rtol=1e-5)
    opt.step()
    lazy.step()
    for k, v in model.state_dict().items():             # the first step: lazy Adam == Adam (eps's place: 1% of lr)
        tol = 1e-4 if k == "item_embedding.weight" else 1e-5
        torch.testing.assert_close(twin.state_dict()[k], v, atol=tol, rtol=1e-5, msg=k)
