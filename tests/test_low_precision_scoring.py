"""Reduced precision (float16 / bfloat16 models): the final item scoring runs in float32 (16-bit logits of a few
thousand items tied, and the pessimistic ties of ``zoo.evaluate`` lowered HR/NDCG with exit 0), ``zoo.evaluate``
records the dtype it measured and the targets tied, LRURec's decay ``lam`` and input scale ``gamma`` are computed
in float32 (in float16 they put 20-40x the other models' error into the logits), a weight that overflows the dtype
it is loaded in is refused at load, and ``step`` refuses NaN / infinite logits as ``predict`` does."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tiny_models import TINY
from zoo.evaluate import evaluate_model, main, stepped_scores, tied_targets
from zoo.data import EvalExamples
from zoo.models import MODELS
from zoo.modeling_utils import ScoreOverflow, SeqRecPreTrainedModel, score_items
from zoo.ops.lru import lru_lambda
from zoo.vocab import ItemVocab

HALF = [torch.float16, torch.bfloat16]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LRUREC_CARD = os.path.join(ROOT, "hub_cards", "lrurec-ml1m")


def _model(model_type, n_items=12, max_seq_length=6, seed=0, **over):
    cfg_cls, model_cls = MODELS[model_type]
    torch.manual_seed(seed)
    return model_cls(cfg_cls(n_items=n_items, max_seq_length=max_seq_length, **{**TINY[model_type], **over})).eval()


# ------------------------------------------------------------------------------------------------ F1: scoring
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("model_type", ["lrurec", "sasrec"])          # with an item bias, and without
def test_a_16_bit_model_scores_in_float32(model_type, dtype):
    """score() of a 16-bit model = the float32 matmul of its upcast hidden state and item table (+ bias): float32
    logits, within float32 rounding (1e-6) of the pure-PyTorch reference and 1e-5 of a float64 one."""
    model = _model(model_type, n_items=300).to(dtype)
    weight, bias = model.item_output()
    torch.manual_seed(1)
    hidden = torch.randn(5, weight.shape[1]).to(dtype)
    got = model.score(hidden)
    assert got.dtype == torch.float32
    ref = hidden.float() @ weight.float().t() + (0 if bias is None else bias.float())
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    ref64 = hidden.double() @ weight.double().t() + (0 if bias is None else bias.double())
    torch.testing.assert_close(got.double(), ref64, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", ["lrurec", "sasrec", "mamba4rec"])
def test_float32_scoring_is_bit_identical(model_type):
    """A float32 model is scored with F.linear in float32 as before: the same logits bit for bit (the bundled cards'
    numbers do not move); float64 stays float64."""
    model = _model(model_type, n_items=300)
    weight, bias = model.item_output()
    hidden = torch.randn(4, weight.shape[1])
    assert torch.equal(model.score(hidden), F.linear(hidden, weight, bias))
    h64, w64 = hidden.double(), weight.double()
    assert score_items(h64, w64).dtype == torch.float64
    assert torch.equal(score_items(h64, w64), F.linear(h64, w64))


@pytest.mark.parametrize("dtype", HALF)
def test_16_bit_scores_of_thousands_of_items_do_not_tie(dtype):
    """The hunter's symptom: bfloat16 logits over 3,416 items took ~1,000 distinct values per user. Scored in
    float32, every row's real items get (almost) all distinct scores; forward, predict and step agree on float32."""
    model = _model("sasrec", n_items=3001, max_seq_length=20, hidden_size=32, inner_size=32).to(dtype)
    torch.manual_seed(2)
    ids = torch.randint(1, 3001, (4, 20))
    with torch.no_grad():
        logits = model(ids).logits
    scores = model.predict(ids)
    step_logits, _ = model.step(ids, model.init_state(4))
    assert logits.dtype == scores.dtype == step_logits.dtype == torch.float32
    for row in scores[:, 1:]:
        distinct = len(torch.unique(row))
        print(f"{dtype}: {distinct} distinct scores of 3000 items")
        assert distinct >= 0.99 * 3000, f"{dtype}: only {distinct} distinct scores of 3000 items (ties)"


def test_tied_targets_counts_targets_equal_to_another_items_score():
    scores = torch.tensor([[-float("inf"), 1.0, 2.0, 2.0, 0.5],          # target 2 ties with item 3
                           [-float("inf"), 1.0, 2.0, 3.0, 0.5],          # no tie
                           [-float("inf"), -float("inf"), 2.0, 3.0, 0.5]])   # target 1 masked: not counted
    targets = torch.tensor([2, 2, 1])
    assert tied_targets(scores, targets).tolist() == [True, False, False]
    negs = torch.tensor([[4, 1], [3, 4], [4, 2]])                       # row 0's tie (item 3) is not a negative
    assert tied_targets(scores, targets, negs).tolist() == [False, False, False]
    assert tied_targets(scores, targets, torch.tensor([[3, 1], [3, 4], [4, 2]])).tolist() == [True, False, False]


def test_evaluate_model_reports_every_target_of_a_constant_model_tied():
    model = _model("sasrec", n_items=30, max_seq_length=8)
    with torch.no_grad():
        model.item_embedding.weight.zero_()                             # every score 0: all tie
    examples = EvalExamples([np.array(h) for h in ([1, 2, 3], [4, 5], [6])], np.array([7, 8, 9]), ["a", "b", "c"])
    stats = {}
    metrics, ranks = evaluate_model(model, examples, ks=(5,), progress=False, return_ranks=True, stats=stats)
    assert stats == {"tied_targets": 3} and ranks.tolist() == [29, 29, 29]       # pessimistic: last
    stats = {}
    model = _model("sasrec", n_items=30, max_seq_length=8)
    evaluate_model(model, examples, ks=(5,), progress=False, stats=stats)
    assert stats == {"tied_targets": 0}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cli_records_the_dtype_measured_and_the_tied_targets(tmp_path, capsys, dtype):
    model = _model("sasrec", n_items=6, max_seq_length=8)
    model.set_item_vocab(ItemVocab([10, 20, 30, 40, 50]))
    model.to(dtype).save_pretrained(tmp_path / "m")
    data = tmp_path / "d.seq"
    data.write_text("user_id\titem_ids_chronological\n1\t10 20 30 40\n2\t50 10 30\n3\t20 40 50 10\n")
    out = tmp_path / "r.json"
    res = main(["--model", str(tmp_path / "m"), "--data", str(data), "--ks", "1", "3", "--json", str(out),
                "--no-progress"])
    name = str(dtype).replace("torch.", "")
    saved = json.loads(out.read_text())
    assert saved["dtype"] == res["dtype"] == name
    assert saved["tied_targets"] == res["tied_targets"] and isinstance(res["tied_targets"], int)
    said = capsys.readouterr()
    assert f"({tmp_path / 'm'}, {name}) on d.seq" in said.out + said.err


# ----------------------------------------------------------------------------------------- F2: LRURec's decay
@pytest.mark.parametrize("dtype", HALF)
def test_lru_lambda_of_16_bit_parameters_is_computed_in_float32(dtype):
    torch.manual_seed(3)
    nu_log, theta_log = (torch.randn(64) - 3).to(dtype), (torch.rand(64) * 1.8).to(dtype)
    lam_re, lam_im = lru_lambda(nu_log, theta_log)
    assert lam_re.dtype == lam_im.dtype == torch.float32
    want_re, want_im = lru_lambda(nu_log.float(), theta_log.float())
    assert torch.equal(lam_re, want_re) and torch.equal(lam_im, want_im)
    lam64 = lru_lambda(torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64))
    assert lam64[0].dtype == torch.float64                                # float64 stays float64


@pytest.mark.parametrize("dtype", HALF)
def test_lrurec_inputs_scale_gamma_in_float32(dtype):
    """u = (gamma W_in) x + gamma b_in with gamma = exp(gamma_log) and its products in float32, rounded once to x's
    dtype: within one 16-bit rounding of the float64 reference of the same (16-bit) parameters and input."""
    model = _model("lrurec", n_items=40, hidden_size=16).to(dtype)
    layer = model.lru_blocks[0].lru_layer
    torch.manual_seed(4)
    x = torch.randn(2, 5, 16).to(dtype)
    u_re, _ = layer.inputs(x)
    p = layer.in_proj
    gamma = torch.exp(layer.params_log[2].double())
    ref = x.double() @ (gamma[:, None] * p.weight_re.double()).t() + gamma * p.bias_re.double()      # [B, L, N]
    err = (u_re.double() - ref).abs().max().item()
    tol = 4 * torch.finfo(dtype).eps * ref.abs().max().item()
    print(f"{dtype}: |u - ref64| = {err:.3g} (tol {tol:.3g})")
    assert err <= tol


@pytest.mark.skipif(not os.path.isdir(LRUREC_CARD), reason="the bundled lrurec-ml1m card is not in this checkout")
@pytest.mark.parametrize("dtype, how, tol", [(torch.float16, "from_pretrained", 0.05),
                                             (torch.bfloat16, "from_pretrained", 0.25),
                                             (torch.float16, "to", 0.25)])
def test_16_bit_lrurec_matches_float32_on_random_histories(dtype, how, tol):
    """The bundled LRURec (trained: |lam| up to 0.987) in 16 bits against itself in float32 on 16 fresh random
    length-200 histories: max |logit error| within ``tol`` (logit scale ~7). Before, lam and gamma were computed in
    16 bits (and loaded in 16 bits): 0.6 (float16) and 1.3 (bfloat16). from_pretrained keeps ``params_log`` in
    float32 (``_keep_in_fp32_modules_strict``); ``model.to(float16)`` rounds them, and lam is then computed in
    float32 from the rounded values."""
    ref_model = SeqRecPreTrainedModel.from_pretrained(LRUREC_CARD)
    model = (SeqRecPreTrainedModel.from_pretrained(LRUREC_CARD, dtype=dtype) if how == "from_pretrained"
             else SeqRecPreTrainedModel.from_pretrained(LRUREC_CARD).to(dtype))
    assert model.dtype == dtype
    if how == "from_pretrained":
        assert all(b.lru_layer.params_log.dtype == torch.float32 for b in model.lru_blocks)
    torch.manual_seed(5)
    ids = torch.randint(1, ref_model.config.n_items, (16, 200))
    ref = ref_model.predict(ids)[:, 1:]
    got = model.predict(ids)[:, 1:]
    err = (got - ref).abs().max().item()
    print(f"lrurec {dtype} ({how}): max |logit error| {err:.4f} (logit std {ref.std():.2f}, tol {tol})")
    assert err <= tol


# ----------------------------------------------------------------------------------- F3: overflow at load, step
def test_a_weight_that_overflows_float16_is_refused_at_load(tmp_path):
    model = _model("mamba4rec", n_items=12)
    with torch.no_grad():
        model.item_embedding.weight[5, 0] = 1e5                        # finite in float32, inf in float16
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=r"weight 'item_embedding\.weight' of .* overflows float16"):
        SeqRecPreTrainedModel.from_pretrained(tmp_path / "m", dtype=torch.float16)
    for dtype in (torch.float32, torch.bfloat16):                       # in range there
        loaded = SeqRecPreTrainedModel.from_pretrained(tmp_path / "m", dtype=dtype)
        assert bool(torch.isfinite(loaded.item_embedding.weight).all())


@pytest.mark.parametrize("all_positions", [False, True])
def test_step_refuses_nan_or_infinite_logits_naming_the_rows(all_positions):
    model = _model("mamba4rec", n_items=12)
    with torch.no_grad():
        model.item_embedding.weight[7] = float("inf")                   # item 7's score: inf / nan for every row
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ScoreOverflow, match=r"step logits are NaN or infinite in batch rows \[0, 1\]") as e:
        model.step(ids, model.init_state(2), all_positions=all_positions)
    assert e.value.rows == [0, 1]
    with pytest.raises(ScoreOverflow, match=r"NaN or infinite for user 'u9'"):      # zoo.evaluate names the user
        stepped_scores(model, ids[:1], torch.ones_like(ids[:1], dtype=torch.bool), ["u9"], chunk=2)


def test_step_of_finite_logits_passes_with_padding_column_ignored():
    model = _model("mamba4rec", n_items=12)
    with torch.no_grad():
        model.item_embedding.weight[0] = float("inf")                   # padding's row: column 0, not a real item
    logits, _ = model.step(torch.tensor([[1, 2]]), model.init_state(1))
    assert bool(torch.isfinite(logits[:, 1:]).all())
