"""The shared base of every zoo model (``zoo.modeling_utils``) and model-name resolution (``zoo.pretrained``), tested
directly on tiny GRU4Rec / SASRec / LRURec models: input and state validation, batch building, the loss, ``predict`` /
``recommend``, the window-state helpers and the strict save/load."""

import datetime
import json
import os
import pathlib
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoo import pretrained  # importing zoo registers the models with AutoConfig / AutoModel
from zoo.modeling_utils import SeqRecConfig, SeqRecPreTrainedModel, window_append, window_state
from zoo.models import MODELS
from zoo.models.gru4rec import GRU4RecConfig, GRU4RecModel
from zoo.models.lrurec import LRURecConfig, LRURecModel
from zoo.models.sasrec import SASRecConfig, SASRecModel
from zoo.vocab import ItemVocab, UnknownItemError
from net_fakes import record_connections
from tiny_models import TINY, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def gru(**kw) -> GRU4RecModel:
    cfg = dict(n_items=12, max_seq_length=6, embedding_size=8, hidden_size=8, num_layers=1, dropout_prob=0.0)
    cfg.update(kw)
    torch.manual_seed(0)
    return GRU4RecModel(GRU4RecConfig(**cfg)).eval()


class TimedGRU(GRU4RecModel):
    """A GRU4Rec that declares it reads timestamps and records the ones its encoder is given (the base class's
    timestamp plumbing, without a time-aware model's cost)."""

    uses_timestamps = True

    def __init__(self, config):
        super().__init__(config)
        self.seen_timestamps = []

    def encode(self, input_ids, attention_mask, timestamps=None):
        self.seen_timestamps.append(timestamps[attention_mask].tolist())
        return super().encode(input_ids, attention_mask, timestamps)


# ------------------------------------------------------------------------------------------ input validation
def test_empty_batches_are_a_value_error_not_a_torch_crash():
    """A [B, 0] or [0, L] batch is refused naming the problem (``min()`` of an empty tensor raised RuntimeError)."""
    model = gru()
    for shape in ((2, 0), (0, 3)):
        message = f"input_ids is empty (shape {list(shape)}): every row needs at least one item"
        with pytest.raises(ValueError, match=re.escape(message)):
            model(torch.zeros(*shape, dtype=torch.long))
    with pytest.raises(ValueError, match=r"item_ids is empty \(shape \[1, 0\]\)"):
        model.step(torch.zeros(1, 0, dtype=torch.long), model.init_state(1))


def test_real_ids_under_masked_positions_are_refused_naming_the_row():
    """An attention mask that hides real item ids (padding must be 0) is an error naming the row, not a batch whose
    masked ids are silently scored."""
    model = gru()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="batch row 1 has non-zero item ids at masked \\(padding\\) positions"):
        model(ids, attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]))
    with pytest.raises(ValueError, match="batch row 0 has padding index 0 inside its real items"):
        model(torch.tensor([[1, 0, 3]]), attention_mask=torch.tensor([[1, 1, 1]]))
    with pytest.raises(ValueError, match=r"attention_mask must be a tensor of the same shape as input_ids \[2, 3\], "
                                         r"got \[2, 2\]"):
        model(ids, attention_mask=torch.ones(2, 2))


def test_padding_side_is_checked_per_model_and_last_positions_follow_it():
    """Right-padded models refuse left padding and vice versa, naming the row; the last real position is the row's
    length - 1 for right padding and always L - 1 for left padding."""
    right, left = gru(), LRURecModel(LRURecConfig(n_items=12, max_seq_length=6, hidden_size=8, num_layers=1)).eval()
    mask_r = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    assert right.last_positions(mask_r).tolist() == [1, 3, 0]
    assert left.last_positions(mask_r.flip(1)).tolist() == [3, 3, 3]
    ids_r = torch.where(mask_r, torch.arange(1, 5).expand(3, 4), torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"batch row 0 is not left-padded: padding first, then real items "
                                         r"\(LRURecModel expects left padding\)"):
        left(ids_r)
    with pytest.raises(ValueError, match=r"batch row 0 is not right-padded: real items first, then padding "
                                         r"\(GRU4RecModel expects right padding\)"):
        right(ids_r.flip(1))


def test_check_timestamps_accepts_ties_and_padding_and_refuses_negative_nan_and_decreasing():
    """Same-second items are in time order (only a decrease is refused); the zeros pad_batch puts after a right-padded
    row are not a decrease; a single negative or non-finite value is refused, as is a missing or misshapen tensor."""
    model = gru()
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    ts = torch.tensor([[5.0, 5.0, 9.0, 0.0], [1.0, 2.0, 2.0, 2.0]])
    assert torch.equal(model.check_timestamps(ts, mask), ts.double())
    for bad, message in [([[-1.0, 2.0, 3.0, 0.0], [1.0, 2.0, 3.0, 4.0]], "timestamps contain negative values"),
                         ([[1.0, float("nan"), 3.0, 0.0], [1.0, 2.0, 3.0, 4.0]], "NaN or infinite"),
                         ([[1.0, 2.0, 3.0, 0.0], [1.0, 2.0, float("inf"), 4.0]], "NaN or infinite"),
                         ([[1.0, 2.0, 3.0, 0.0], [1.0, 3.0, 2.0, 4.0]], "timestamps of batch row 1 decrease")]:
        with pytest.raises(ValueError, match=message):
            model.check_timestamps(torch.tensor(bad), mask)
    assert torch.equal(model.check_timestamps(torch.tensor([[-1.0, 2.0, 3.0, 0.0], [1.0, 2.0, 3.0, 4.0]]),
                                              torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool))[1],
                       torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))     # negative only at a padding slot
    with pytest.raises(ValueError, match="GRU4RecModel reads timestamps: pass timestamps"):
        model.check_timestamps(None, mask)
    with pytest.raises(ValueError, match=r"timestamps must have the shape of input_ids \[2, 4\], got \[2, 3\]"):
        model.check_timestamps(torch.zeros(2, 3), mask)


# ----------------------------------------------------------------------------------------------- pad_batch
def test_pad_batch_keeps_the_most_recent_items_and_their_own_timestamps():
    """Truncation keeps the last max_length items and the timestamps of those items (not the first ones), padded on
    the model's side with 0."""
    hists, times = [[1, 2, 3, 4, 5], [6]], [[10.0, 20.0, 30.0, 40.0, 50.0], [7.0]]
    ids, mask, ts = gru().pad_batch(hists, max_length=3, timestamps=times)
    assert ids.tolist() == [[3, 4, 5], [6, 0, 0]] and mask.tolist() == [[True] * 3, [True, False, False]]
    assert ts.dtype == torch.float64 and ts.tolist() == [[30.0, 40.0, 50.0], [7.0, 0.0, 0.0]]
    left = LRURecModel(LRURecConfig(n_items=12, max_seq_length=4, hidden_size=8, num_layers=1))
    ids, mask, ts = left.pad_batch(hists, timestamps=times)                   # default: config.max_seq_length = 4
    assert ids.tolist() == [[2, 3, 4, 5], [0, 0, 0, 6]] and mask.tolist() == [[True] * 4, [False] * 3 + [True]]
    assert ts.tolist() == [[20.0, 30.0, 40.0, 50.0], [0.0, 0.0, 0.0, 7.0]]


def test_pad_batch_refuses_timestamp_lists_that_do_not_match_their_history():
    """One timestamp per item of the whole history: a list longer or shorter than the history is refused even when
    truncation to max_length would hide the difference."""
    model = gru()
    with pytest.raises(ValueError, match="history 0 has 5 items but 6 timestamps"):
        model.pad_batch([[1, 2, 3, 4, 5]], max_length=3, timestamps=[[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    with pytest.raises(ValueError, match="history 1 has 5 items but 4 timestamps"):
        model.pad_batch([[1], [1, 2, 3, 4, 5]], max_length=3, timestamps=[[1.0], [2.0, 3.0, 4.0, 5.0]])
    with pytest.raises(ValueError, match="got 1 timestamp lists for 2 histories"):
        model.pad_batch([[1], [2]], timestamps=[[1.0]])
    with pytest.raises(ValueError, match="history 1 is empty"):
        model.pad_batch([[1], []])


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_pad_batch_refuses_a_window_that_is_not_a_positive_int(bad):
    """max_length -1 dropped each history's oldest item and 0 fell back to the config's window, both silently."""
    with pytest.raises(ValueError, match=rf"pad_batch max_length must be an int >= 1, got {bad!r}"):
        gru().pad_batch([[5, 6], [7, 8]], max_length=bad)


# -------------------------------------------------------------------------------------------------- loss
def test_all_position_loss_is_cross_entropy_over_the_labelled_positions_only():
    """[B, L] labels: cross-entropy over the positions with a label > 0 (0 = no target), the padding class never a
    target; labels with no target at all are refused (the mean over nothing was NaN)."""
    model = gru()
    ids, mask = model.pad_batch([[1, 2, 3], [4, 5]])
    labels = torch.tensor([[2, 3, 7], [5, 9, 0]])
    out = model(ids, mask, labels=labels)
    hidden = out.hidden_states
    pos = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    logits = torch.stack([model.score(hidden[r, t]) for r, t in pos])
    want = F.cross_entropy(logits, torch.tensor([labels[r, t] for r, t in pos]))
    assert torch.allclose(out.loss, want, atol=1e-6)
    last = model(ids, mask, labels=torch.tensor([7, 9]))
    assert torch.allclose(last.loss, F.cross_entropy(out.logits, torch.tensor([7, 9])), atol=1e-6)
    with pytest.raises(ValueError, match=r"labels hold no target \(all 0\)"):
        model(ids, mask, labels=torch.zeros(2, 3, dtype=torch.long))


# --------------------------------------------------------------------------------------- predict / recommend
def test_predict_masks_padding_and_the_given_window_and_restores_training_mode():
    """predict: the padding logit and (exclude_seen) each row's own items are -inf, everything else is the raw logit;
    it runs in eval mode and leaves a model in training mode in training mode."""
    model = gru()
    ids, mask = model.pad_batch([[3, 4, 3], [5]])
    raw = model(ids, mask).logits
    plain = model.predict(ids, mask)
    assert torch.isneginf(plain[:, 0]).all() and torch.equal(plain[:, 1:], raw[:, 1:])
    seen = model.predict(ids, mask, exclude_seen=True)
    inf = torch.isneginf(seen)
    assert inf[0].nonzero().flatten().tolist() == [0, 3, 4] and inf[1].nonzero().flatten().tolist() == [0, 5]
    assert torch.equal(seen[~inf], raw[~inf])
    model.train()
    model.predict(ids, mask)
    assert model.training
    model.eval()
    model.predict(ids, mask)
    assert not model.training


def test_predict_checks_the_internal_indices_of_exclude_items():
    """predict's exclude_items are internal indices of real items (1..n_items-1): a -1 (which would exclude the last
    item), n_items (an IndexError), the padding 0, a float or a bool are refused naming the index and the range."""
    model = gru()
    ids, mask = model.pad_batch([[3, 4], [5]])
    raw = model(ids, mask).logits
    for gone in ([2, 11], (2, 11), torch.tensor([2, 11]), {11, 2}):
        sc = model.predict(ids, mask, exclude_items=gone)
        assert torch.isneginf(sc).nonzero()[:, 1].unique().tolist() == [0, 2, 11]
        assert torch.equal(sc[:, [1, 3]], raw[:, [1, 3]])
    assert torch.equal(model.predict(ids, mask, exclude_items=[]), model.predict(ids, mask))
    for bad in (-1, 12, 0):
        with pytest.raises(ValueError, match=rf"exclude_items holds item index {bad}, out of range 1..11 \(n_items=12"):
            model.predict(ids, mask, exclude_items=[2, bad])
    for bad, kind in ((1.7, "float"), (True, "bool"), ("3", "str")):
        with pytest.raises(TypeError, match=rf"exclude_items: item index {re.escape(repr(bad))} \({kind}\) is not an "
                                            "int"):
            model.predict(ids, mask, exclude_items=[bad])
    with pytest.raises(TypeError, match="exclude_items must be a sequence of internal item indices, got str"):
        model.predict(ids, mask, exclude_items="3")


def test_recommend_without_vocabulary_takes_internal_indices_and_refuses_padding_and_out_of_range():
    """A model without a vocabulary reads internal indices 1..n_items-1: the padding index 0 and n_items are unknown
    items naming the history (not a ValueError about padding inside the batch), and results are Python ints."""
    model = gru()
    rec = model.recommend([[1, 11], [4]], k=3)
    assert all(type(x) is int for row in rec.items for x in row) and rec.scores.shape == (2, 3)
    assert rec.items[0] == model.predict(*model.pad_batch([[1, 11]])).topk(3).indices[0].tolist()
    for bad in (0, 12, -1):
        with pytest.raises(UnknownItemError, match=rf"history 1: item index {bad} out of range 1..11"):
            model.recommend([[1], [2, bad]], k=3)


def test_recommend_gives_each_batch_its_own_timestamps():
    """A time-aware model scored over several forward passes (batch_size 1) gets each history's own timestamps (the
    last max_seq_length of them), the same as one pass."""
    torch.manual_seed(0)
    model = TimedGRU(GRU4RecConfig(n_items=12, max_seq_length=3, embedding_size=8, hidden_size=8,
                                   dropout_prob=0.0)).eval()
    hs, ts = [[1, 2], [3, 4, 5, 6], [7]], [[1.0, 2.0], [10.0, 20.0, 30.0, 40.0], [5.0]]
    one = model.recommend(hs, k=4, timestamps=ts)
    assert model.seen_timestamps == [[1.0, 2.0, 20.0, 30.0, 40.0, 5.0]]
    model.seen_timestamps.clear()
    batched = model.recommend(hs, k=4, timestamps=ts, batch_size=1)
    assert model.seen_timestamps == [[1.0, 2.0], [20.0, 30.0, 40.0], [5.0]]
    assert batched.items == one.items
    with pytest.raises(ValueError, match=r"TimedGRU reads timestamps: pass timestamps=\[\[\.\.\.\], \.\.\.\]"):
        model.recommend(hs, k=4)


# ---------------------------------------------------------------------------------------------------- state
def test_check_state_refuses_unexpected_tensors():
    """A state with a tensor the model does not have (a typo, another model's state) is refused naming it."""
    model = gru()
    st = model.init_state(2)
    with pytest.raises(ValueError, match=r"state has wrong tensors: missing \[\], unexpected \['conv_state'\]"):
        model.step(torch.tensor([[1], [2]]), {**st, "conv_state": torch.zeros(2, 3)})
    with pytest.raises(TypeError, match="state must be a dict of named tensors"):
        model.step(torch.tensor([[1], [2]]), list(st.values()))


def test_window_helpers_keep_the_last_max_len_items_and_check_the_ids():
    """window_append puts the new items right after each row's window; window_state keeps the last max_len of them
    (zero-padded on the right); window ids outside 0..n_items-1 are refused, n_items itself included."""
    state = {"window_ids": torch.tensor([[4, 5, 6], [7, 0, 0], [0, 0, 0]]), "window_len": torch.tensor([[3], [1], [0]])}
    combined, p, total = window_append(state, torch.tensor([[1, 2], [3, 9], [8, 10]]), 3, 11)
    assert combined.tolist() == [[4, 5, 6, 1, 2], [7, 3, 9, 0, 0], [8, 10, 0, 0, 0]]
    assert p.tolist() == [[3, 4], [1, 2], [0, 1]] and total.tolist() == [5, 3, 2]
    new = window_state(combined, total, 3)
    assert new["window_ids"].tolist() == [[6, 1, 2], [7, 3, 9], [8, 10, 0]]
    assert new["window_len"].tolist() == [[3], [3], [2]]
    for bad in (11, -1):
        wrong = {**state, "window_ids": torch.tensor([[4, 5, bad], [7, 0, 0], [0, 0, 0]])}
        with pytest.raises(ValueError, match=r"state\['window_ids'\] holds item indices out of range"):
            window_append(wrong, torch.tensor([[1], [2], [3]]), 3, 11)
    sas = SASRecModel(SASRecConfig(n_items=11, max_seq_length=3, hidden_size=8, num_heads=2, inner_size=8,
                                   num_layers=1)).eval()
    st = sas.init_state(1)
    st["window_ids"][0, 0], st["window_len"][0, 0] = 11, 1
    with pytest.raises(ValueError, match="out of range"):
        sas.step(torch.tensor([[1]]), st)


# ------------------------------------------------------------------------------------------------- config
def test_config_needs_padding_and_one_item():
    for n in (1, 0):
        with pytest.raises(ValueError, match=rf"n_items must be >= 2 \(padding \+ at least one item\), got {n}"):
            GRU4RecConfig(n_items=n)
    assert SeqRecConfig(n_items=2).n_items == 2


# ------------------------------------------------------------------------------------------------ save/load
def test_save_pretrained_refuses_pickles(tmp_path):
    """safe_serialization=False is refused before anything is written (zoo checkpoints never hold pickles)."""
    with pytest.raises(ValueError, match=r"zoo models are saved as safetensors only \(no pickles\)"):
        gru().save_pretrained(tmp_path / "out", safe_serialization=False)
    assert not (tmp_path / "out").exists()


def test_an_interrupted_save_keeps_the_earlier_checkpoint_whole(tmp_path, monkeypatch):
    """save_pretrained wrote model.safetensors in place: Ctrl-C while zoo.train saved a new best checkpoint left a
    truncated weight file and lost the earlier best. The files are staged and moved in whole now: an interrupted
    save keeps the earlier checkpoint loadable and leaves no staging folder."""
    import transformers.modeling_utils as tmu

    first = gru()
    first.save_pretrained(tmp_path)
    before = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}
    real = tmu.safe_save_file

    def killed(tensors, filename, *a, **k):
        with open(filename, "wb") as f:
            f.write(b"half a file")                      # the write had begun
        raise KeyboardInterrupt

    monkeypatch.setattr(tmu, "safe_save_file", killed)
    second = gru()
    with torch.no_grad():
        second.item_embedding.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        second.save_pretrained(tmp_path)
    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == before      # nothing else left either
    loaded = GRU4RecModel.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.item_embedding.weight, first.item_embedding.weight)
    monkeypatch.setattr(tmu, "safe_save_file", real)
    second.save_pretrained(tmp_path)                     # and a save that completes replaces it
    torch.testing.assert_close(GRU4RecModel.from_pretrained(tmp_path).item_embedding.weight,
                               second.item_embedding.weight)
    assert sorted(os.listdir(tmp_path)) == sorted(before)
    # every file readable by other users (a serving process of another user): safetensors wrote the weights 0600
    assert {f: oct(os.stat(tmp_path / f).st_mode & 0o777) for f in os.listdir(tmp_path)} == {
        f: "0o644" for f in os.listdir(tmp_path)}


def test_a_checkpoint_saved_before_item_vocab_file_existed_loads_its_vocabulary(tmp_path):
    """config.json without the ``item_vocab_file`` field (older checkpoints) and an item_vocab.json beside it: the
    vocabulary is loaded, not refused as foreign."""
    model = gru()
    model.set_item_vocab(ItemVocab(list(range(500, 511))))
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg.pop("item_vocab_file") == "item_vocab.json"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    for load in (GRU4RecModel.from_pretrained, SeqRecPreTrainedModel.from_pretrained):
        loaded = load(tmp_path)
        assert loaded.item_vocab == model.item_vocab
        assert loaded.recommend([[500, 510]], k=3).items == model.recommend([[500, 510]], k=3).items


def test_sharded_checkpoints_load_and_every_shard_is_checked(tmp_path):
    """A checkpoint saved in shards (model.safetensors.index.json) loads, and a NaN in any shard is refused naming
    the tensor; a corrupt index is one line naming it."""
    from safetensors.torch import load_file, save_file

    model = gru(n_items=200, embedding_size=16, hidden_size=16)
    model.save_pretrained(tmp_path, max_shard_size="8KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and not (tmp_path / "model.safetensors").exists()
    ids, mask = model.pad_batch([[1, 2, 3]])
    assert torch.equal(GRU4RecModel.from_pretrained(tmp_path).eval()(ids, mask).logits, model(ids, mask).logits)
    name = "dense.weight"
    f = tmp_path / index["weight_map"][name]
    w = load_file(f)
    w[name][0, 0] = float("inf")
    save_file(w, f, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"weight '{name}' in .*{f.name} holds NaN or infinite values"):
        GRU4RecModel.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt weight index .*model.safetensors.index.json"):
        GRU4RecModel.from_pretrained(tmp_path)


def test_base_class_loading_keeps_a_given_config(tmp_path):
    """SeqRecPreTrainedModel.from_pretrained(path, config=...) loads the concrete class with that config (it was
    dropped and the folder's read again)."""
    model = gru()
    model.save_pretrained(tmp_path)
    cfg = GRU4RecConfig.from_pretrained(tmp_path)
    cfg.dropout_prob = 0.25
    loaded = SeqRecPreTrainedModel.from_pretrained(tmp_path, config=cfg)
    assert type(loaded) is GRU4RecModel and loaded.config.dropout_prob == 0.25 and loaded.emb_dropout.p == 0.25
    assert SeqRecPreTrainedModel.from_pretrained(tmp_path).config.dropout_prob == 0.0


# ----------------------------------------------------------------------------------------------- pretrained
def test_resolve_pretrained_names_a_file_given_for_a_folder(tmp_path):
    gru().save_pretrained(tmp_path)
    for f in ("config.json", "model.safetensors"):
        with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path / f))} is a file; from_pretrained expects a"):
            GRU4RecModel.from_pretrained(tmp_path / f)
    assert pretrained.resolve_pretrained(tmp_path) == str(tmp_path)


def test_bundled_models_need_weights_and_the_env_folder_comes_first(tmp_path, monkeypatch):
    """Only folders holding config.json and model.safetensors are bundled models; a folder of the same name under
    $ZOO_BUNDLED_DIR takes precedence over the checkout's hub_cards/."""
    gru().save_pretrained(tmp_path / "tiny-gru")
    gru().save_pretrained(tmp_path / "sasrec-ml1m")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text((tmp_path / "tiny-gru" / "config.json").read_text())
    monkeypatch.setenv("ZOO_BUNDLED_DIR", str(tmp_path))
    found = pretrained.bundled_models()
    assert found["tiny-gru"] == tmp_path / "tiny-gru" and "half" not in found
    assert found["sasrec-ml1m"] == tmp_path / "sasrec-ml1m"


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes"])
def test_offline_mode_is_honoured_in_every_spelling_without_a_probe(monkeypatch, value):
    """HF_HUB_OFFLINE=1/true/yes (any case) means unreachable without opening a connection."""
    probes = record_connections(monkeypatch, pretrained)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert pretrained.hub_reachable() is False and probes == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert pretrained.hub_reachable() is True and len(probes) == 1           # the probe itself is reached


def test_seeding_leaves_a_real_hub_download_alone(tmp_path, monkeypatch):
    """A cached repo whose refs/main points at a real download (no .zoo-bundled marker) is not replaced by the
    bundled copy; a cache without the repo is seeded."""
    gru().save_pretrained(tmp_path / "bundle" / "tiny-gru")
    monkeypatch.setattr(pretrained, "bundled_models", lambda: {"tiny-gru": tmp_path / "bundle" / "tiny-gru"})
    cache = tmp_path / "hf"
    repo = cache / f"models--{pretrained.HUB_ORG}--tiny-gru"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("realcommit")
    (repo / "snapshots" / "realcommit").mkdir(parents=True)
    (repo / "snapshots" / "realcommit" / "config.json").write_text("{}")
    written = pretrained.seed_hf_cache(cache)
    assert f"{pretrained.HUB_ORG}/tiny-gru" not in written and "org/tiny-gru" in written
    assert (repo / "refs" / "main").read_text() == "realcommit"
    assert sorted(os.listdir(repo / "snapshots")) == ["realcommit"]


# --------------------------------------------------------------------------------- QA fixes: save, inputs, labels
@pytest.mark.parametrize("first, second", [("plain", "sharded"), ("sharded", "plain"), ("sharded", "sharded")])
def test_a_save_removes_the_weight_files_of_an_earlier_save(tmp_path, first, second):
    """A folder that holds an earlier save: the files of that save which the new one does not overwrite are removed
    once the new ones are in place -- an old model.safetensors beside a new sharded index was what loaded (the first
    weights, silently), and stale shards (or a stale index beside a new single file) lingered. Other files stay."""
    shard = {"plain": {}, "sharded": {"max_shard_size": "2KB"}}
    old, new = gru(n_items=60), gru(n_items=60)
    with torch.no_grad():
        new.item_embedding.weight.add_(1.0)
    old.save_pretrained(tmp_path, **({"max_shard_size": "1KB"} if first == "sharded" else {}))
    (tmp_path / "notes.txt").write_text("mine")
    before = set(os.listdir(tmp_path))
    new.save_pretrained(tmp_path, **shard[second])
    files = set(os.listdir(tmp_path))
    weights = {f for f in files if f.endswith(".safetensors") or f.endswith(".index.json")}
    if second == "plain":
        assert weights == {"model.safetensors"}
    else:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert weights == set(index["weight_map"].values()) | {"model.safetensors.index.json"}
        assert len(weights) >= 3
    if first == "sharded":
        assert before - files, "the earlier save's shards should have been stale here"
    assert "notes.txt" in files and not any(f.startswith(".save-") for f in files)
    for load in (GRU4RecModel.from_pretrained, SeqRecPreTrainedModel.from_pretrained):
        torch.testing.assert_close(load(tmp_path).item_embedding.weight, new.item_embedding.weight)


@pytest.mark.parametrize("history, bad", [([1.7, 2.2], "1.7 (float)"), ([True, 2], "True (bool)"),
                                          ([3, 2.0], "2.0 (float)"), (torch.tensor([1.0, 2.0]), "1.0 (float)")])
def test_pad_batch_refuses_ids_that_are_not_ints(history, bad):
    """pad_batch cut float ids to ints ([[1.7, 2.2]] -> [[1, 2]]) and read True as item 1; it takes ints only now,
    with the check of recommend() (numpy / torch integer ids, and integer arrays, still accepted)."""
    import numpy as np

    model = gru()
    with pytest.raises(TypeError, match=rf"history 0: item index {re.escape(bad)} is not an int"):
        model.pad_batch([[4], history][::-1])
    want = model.pad_batch([[3, 4], [5]])[0]
    for ok in ([np.int64(3), 4], np.array([3, 4]), torch.tensor([3, 4]), (torch.tensor(3), np.int32(4))):
        assert torch.equal(model.pad_batch([ok, [5]])[0], want)


def test_labels_must_be_integer_item_indices_in_range():
    """Float labels were cut to ints, a label >= n_items was torch's bare IndexError, a [B] label 0 trained the
    padding logit: labels are an integer tensor of 0 .. n_items - 1 now (1 .. n_items - 1 in [B] mode, where every row
    has its next item), checked with one min/max, errors naming the index."""
    model = gru()
    ids, mask = model.pad_batch([[1, 2, 3], [4, 5]])
    with pytest.raises(TypeError, match=r"labels must be an integer tensor .* got dtype torch.float32"):
        model(ids, mask, labels=torch.tensor([1.7, 2.2]))
    with pytest.raises(TypeError, match="labels must be an integer tensor .* got dtype torch.bool"):
        model(ids, mask, labels=torch.ones(2, 3, dtype=torch.bool))
    for labels, index, first in [([1, 12], 12, 1), ([1, -1], -1, 1), ([0, 3], 0, 1), ([[2, 12, 0], [0, 0, 0]], 12, 0),
                                 ([[2, -5, 0], [0, 0, 0]], -5, 0)]:
        with pytest.raises(ValueError, match=rf"labels hold item index {index}, out of range \[{first}, 11\]"):
            model(ids, mask, labels=torch.tensor(labels))
    with pytest.raises(ValueError, match=r"labels must be \[batch\] or \[batch, seq_len\] = \[2, 3\], got \[3\]"):
        model(ids, mask, labels=torch.tensor([1, 2, 3]))
    for dtype in (torch.int32, torch.uint8):               # any integer dtype is fine
        torch.testing.assert_close(model(ids, mask, labels=torch.tensor([4, 7], dtype=dtype)).loss,
                                   model(ids, mask, labels=torch.tensor([4, 7])).loss)


@pytest.mark.parametrize("model_type", ["gru4rec", "lrurec", "ssd4rec", "tim4rec_causal"])
def test_a_label_under_a_padded_slot_is_no_target_in_every_family(model_type):
    """[B, L] labels: the base class counted a label under a padded slot as a target (the TiM4Rec / SSD4Rec prefix
    objective did not): every family selects (labels > 0) & attention_mask now."""
    cfg_cls, cls = MODELS[model_type]
    kw = {"gru4rec": dict(embedding_size=8, hidden_size=8), "lrurec": dict(hidden_size=8, num_layers=1),
          "ssd4rec": dict(hidden_size=8, d_state=4, head_dim=4, mask_ratio=0.0),
          "tim4rec_causal": dict(hidden_size=8, d_state=4, head_dim=4, num_layers=1)}[model_type]
    torch.manual_seed(0)
    model = cls(cfg_cls(n_items=12, max_seq_length=6, **kw)).eval()
    hist = [[1, 2, 3], [4, 5]]
    ts = [[0.0, 60.0, 120.0], [5.0, 6.0]] if model.uses_timestamps else None
    ids, mask, *rest = model.pad_batch(hist, timestamps=ts) if ts else model.pad_batch(hist)
    kwargs = {"timestamps": rest[0]} if ts else {}
    labels = torch.zeros_like(ids)
    labels[mask] = torch.tensor([2, 3, 7, 5, 9])
    stale = labels.clone()
    stale[~mask] = 11                                       # a target where there is no item
    with torch.no_grad():
        clean = model(ids, mask, labels=labels, **kwargs).loss
        torch.testing.assert_close(model(ids, mask, labels=stale, **kwargs).loss, clean)
        with pytest.raises(ValueError, match=r"labels hold no target \(all 0\) at the real positions"):
            model(ids, mask, labels=torch.where(mask, 0, stale), **kwargs)


def test_timestamps_given_to_a_model_that_reads_none_are_refused_everywhere():
    """forward / predict / query_vectors / step of a model without a time input ignored timestamps silently (even
    NaN or decreasing ones) where recommend() refused them: they are refused the same way now."""
    model = gru()
    ids, mask = model.pad_batch([[1, 2, 3]])
    ts = torch.tensor([[9.0, 5.0, float("nan")]])
    message = "GRU4RecModel does not use timestamps; call it without timestamps"
    for call in (lambda: model(ids, mask, timestamps=ts), lambda: model.predict(ids, mask, timestamps=ts),
                 lambda: model.query_vectors(ids, mask, timestamps=ts),
                 lambda: model.step(ids, model.init_state(1), timestamps=torch.zeros(1, 3))):
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(ValueError, match="does not use timestamps; call recommend"):
        model.recommend([[1, 2, 3]], timestamps=[[0.0, 1.0, 2.0]])


@pytest.mark.parametrize("dtype", [torch.bool, torch.complex64])
def test_check_timestamps_refuses_bool_and_complex_dtypes(dtype):
    """Bool timestamps were read as 0/1 seconds and complex ones lost their imaginary part with a warning."""
    model = TimedGRU(GRU4RecConfig(n_items=12, max_seq_length=6, embedding_size=8, hidden_size=8))
    ids, mask = model.pad_batch([[1, 2, 3]])[:2]
    bad = torch.tensor([[1, 2, 3]]).to(dtype)
    with pytest.raises(TypeError, match=rf"timestamps must be real seconds .* got dtype {dtype}"):
        model(ids, mask, timestamps=bad)
    with pytest.raises(TypeError, match=rf"got dtype {dtype}"):
        model.step(ids, model.init_state(1), timestamps=bad)


def test_step_runs_in_eval_mode_like_predict():
    """step() on a model in training mode (fresh from its constructor) ran with dropout: its logits changed from call
    to call and differed from predict()'s. It runs in eval mode now, and leaves the model's mode as it was."""
    model = gru(dropout_prob=0.5).train()
    ids = torch.tensor([[3, 4, 5], [6, 7, 8]])
    a, sa = model.step(ids, model.init_state(2))
    b, sb = model.step(ids, model.init_state(2))
    assert torch.equal(a, b) and torch.equal(sa["gru_state"], sb["gru_state"]) and model.training
    torch.testing.assert_close(a[:, 1:], model.predict(ids)[:, 1:])
    model.eval()
    model.step(ids, model.init_state(2))
    assert not model.training


# ---------------------------------------------------------------------------- QA: input checks of the public API
def timed() -> TimedGRU:
    torch.manual_seed(0)
    return TimedGRU(GRU4RecConfig(n_items=12, max_seq_length=6, embedding_size=8, hidden_size=8,
                                  dropout_prob=0.0)).eval()


UNIX = [1.39e9 + 50 * i for i in range(3)]      # Unix seconds 50 s apart: float32 rounds them to 128-s steps


@pytest.mark.parametrize("row", [
    pytest.param(lambda: np.array(UNIX, dtype=np.float32), id="numpy-float32"),
    pytest.param(lambda: torch.tensor(UNIX, dtype=torch.float32), id="torch-float32"),
    pytest.param(lambda: [np.float32(x) for x in UNIX], id="list-of-np.float32")])
def test_recommend_refuses_float32_timestamp_rows_before_widening_them(row):
    """recommend / user_vectors / pad_batch made every timestamp row float64 before the float32 check of
    check_timestamps, so a float32 row of Unix seconds (rounded to 128-s steps) was used and moved the scores; each row
    is read in its own dtype now and refused naming the history, as forward refuses a float32 tensor."""
    model = timed()
    hs, good = [[1, 2, 3], [4, 5, 6]], [UNIX, UNIX]
    message = r"timestamps of history 1 are torch.float32 and reach \d+ s, beyond the 16777216 s"
    for call in (lambda ts: model.recommend(hs, k=3, timestamps=ts), lambda ts: model.user_vectors(hs, timestamps=ts),
                 lambda ts: model.pad_batch(hs, timestamps=ts)):
        call(good)
        with pytest.raises(ValueError, match=message):
            call([UNIX, row()])
    with pytest.raises(ValueError, match=r"timestamps of history 0 are torch.float32"):    # a 2-D float32 tensor
        model.recommend(hs, k=3, timestamps=torch.tensor(good, dtype=torch.float32))
    small = [[0.0, 50.0, 100.0], np.array([0.0, 50.0, 100.0], dtype=np.float32)]      # exact in float32: accepted
    assert model.pad_batch(hs, timestamps=small)[2].tolist() == [[0.0, 50.0, 100.0]] * 2


@pytest.mark.parametrize("row, error, message", [
    ([False, True, True], TypeError, r"timestamps of history 1 must be real seconds .* got dtype bool"),
    (torch.tensor([0, 1, 1], dtype=torch.bool), TypeError, r"timestamps of history 1 must be real .* dtype torch.bool"),
    ({1.0, 2.0, 3.0}, TypeError, r"timestamps of history 1 must be a sequence of seconds, .* got set"),
    ("123", TypeError, r"timestamps of history 1 must be a sequence of seconds, .* got str"),
    (5.0, TypeError, r"timestamps of history 1 must be a sequence of seconds, .* got float"),
    (["1", "2", "3"], TypeError, r"timestamps of history 1 must be real seconds .* got dtype <U1 such as '1'"),
    ([1.0, None, 3.0], TypeError, r"timestamps of history 1 must be numbers \(Unix seconds\), got None \(NoneType\)"),
    ([datetime.datetime(2024, 1, 1)] * 3, TypeError, r"history 1 must be numbers .* \(pass Unix seconds, e.g\. dt"),
    ([[1.0], [2.0], [3.0]], ValueError, r"timestamps of history 1 must be one number per item \(1-D\), got shape"),
    ([1.0, 2.0], ValueError, r"^history 1 has 3 items but 2 timestamps$")])
def test_recommend_refuses_timestamp_rows_that_are_not_seconds_naming_the_history(row, error, message):
    """Bool rows were read as 0 / 1 s and set rows (no order) were accepted; strings, None and datetimes failed with
    torch's conversion errors ("too many dimensions 'str'", "must be real number, not NoneType") that named neither
    the argument nor the row. Each is refused naming the history, in recommend and pad_batch alike."""
    model = timed()
    hs = [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(error, match=message):
        model.recommend(hs, k=3, timestamps=[UNIX, row])
    with pytest.raises(error, match=message):
        model.pad_batch(hs, timestamps=[UNIX, row])


def test_numpy_datetime64_timestamps_are_read_as_seconds_of_any_unit():
    """datetime64 rows (of any unit) are Unix seconds, as export.timestamps.seconds reads them; NaT is refused."""
    model = timed()
    days = np.array(["2024-01-01", "2024-01-02", "2024-01-02T00:00:01"], dtype="datetime64[ms]")
    want = model.recommend([[1, 2, 3]], k=3, timestamps=[[1704067200, 1704153600, 1704153601]])
    for row in (days, days.astype("datetime64[s]"), days.astype("datetime64[ns]")):
        got = model.recommend([[1, 2, 3]], k=3, timestamps=[row])
        assert got.items == want.items and torch.equal(got.scores, want.scores)
    with pytest.raises(ValueError, match=r"timestamps of history 0 hold NaT"):
        model.recommend([[1, 2, 3]], k=3, timestamps=[np.array(["2024-01-01", "NaT", "NaT"], dtype="datetime64[s]")])


def test_a_python_list_of_float_seconds_is_float64_in_forward_and_step():
    """check_timestamps made a list of Python floats float32 (torch.as_tensor's default) and then refused the float32
    it had made, blaming the caller; a list is read as numpy reads it now (float64), while a float32 array is still
    refused."""
    model = timed()
    ids = torch.tensor([[1, 2, 3]])
    floats = [[1.7e9, 1.7e9 + 10, 1.7e9 + 20]]
    want = model(ids, timestamps=torch.tensor(floats, dtype=torch.float64)).logits
    torch.testing.assert_close(model(ids, timestamps=floats).logits, want, rtol=0, atol=0)
    step, _ = model.step(ids, model.init_state(1), timestamps=floats)
    torch.testing.assert_close(step, want, rtol=0, atol=0)
    assert model.check_timestamps(floats, torch.ones(1, 3, dtype=torch.bool)).tolist() == floats
    with pytest.raises(ValueError, match=r"timestamps are torch.float32 and reach"):
        model(ids, timestamps=np.array(floats, dtype=np.float32))


@pytest.mark.parametrize("scale, dtype", [(1e3, torch.float64), (1e3, torch.int64), (1e9, torch.int64)])
def test_timestamps_in_milliseconds_or_nanoseconds_are_refused(scale, dtype):
    """Epoch milliseconds (~1.7e12) and nanoseconds (~1.7e18, also beyond 2**53 where .double() rounded int64
    silently) were read as seconds of the year ~55,000 and changed TiM4Rec-causal's ranking: timestamps beyond 1e11 s
    (the year ~5000) are refused, saying what they look like; 1e11 itself is still seconds."""
    from zoo.modeling_utils import MAX_TIMESTAMP_S

    model = timed()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    secs = [[1.0, 2.0, 3.0], [1_700_000_000, 1_700_000_001, 1_700_000_060]]
    big = torch.tensor([[round(x * scale) for x in row] for row in secs], dtype=torch.float64).to(dtype)
    big[0] = torch.tensor([1, 2, 3])
    message = r"reach 1\.7e\+\d+ s, beyond 1e\+11 s \(the year ~5000\): they look like milliseconds or nanoseconds"
    for call in (lambda: model(ids, timestamps=big), lambda: model.step(ids, model.init_state(2), timestamps=big)):
        with pytest.raises(ValueError, match=rf"^timestamps of batch row 1 {message}"):
            call()
    for call in (lambda: model.recommend(ids.tolist(), k=3, timestamps=big.tolist(), batch_size=1),
                 lambda: model.user_vectors(ids.tolist(), timestamps=list(big.numpy()), batch_size=1),
                 lambda: model.pad_batch(ids.tolist(), timestamps=big)):
        with pytest.raises(ValueError, match=rf"^timestamps of history 1 {message}"):        # not row 0 of batch 1
            call()
    assert MAX_TIMESTAMP_S == 1e11
    model(ids, timestamps=torch.tensor([[1.0, 2.0, 3.0], [1e11 - 2, 1e11 - 1, 1e11]], dtype=torch.float64))


@pytest.mark.data
def test_no_timestamp_of_the_repository_data_is_beyond_the_seconds_bound():
    """The bundled data (Amazon days, MovieLens seconds) is read as seconds: the new bound refuses none of it."""
    from zoo.data import read_interactions
    from zoo.modeling_utils import MAX_TIMESTAMP_S

    data = os.environ.get("ZOO_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    files = [f for f in sorted(os.listdir(data)) if ".inter" in f] if os.path.isdir(data) else []
    if not files:
        pytest.skip("no data folder")
    for f in files:
        ts = read_interactions(os.path.join(data, f)).timestamp
        assert ts is not None and 5e8 < ts.max() < MAX_TIMESTAMP_S, f


@pytest.mark.parametrize("model_type", list(TINY))
def test_forward_refuses_unknown_keyword_arguments_and_honours_return_dict(model_type):
    """forward(**kwargs) swallowed everything: label= (a typo of labels) gave loss None, return_dict=False still gave
    a SeqRecOutput. A keyword other than what the Trainer passes (num_items_in_batch, zoo.hf_trainer's history) is a
    TypeError naming it now, in every family and on the all-position-label paths of BERT4Rec / TiM4Rec / SSD4Rec;
    return_dict=False returns the output's tuple, as Hugging Face models do."""
    model = tiny(model_type)
    ids, mask, *rest = model.pad_batch([[1, 2, 3], [4, 5]], timestamps=[[0.0, 60.0, 120.0], [5.0, 6.0]]
                                       if model.uses_timestamps else None)
    kw = {"timestamps": rest[0]} if rest else {}
    labels = {"[B]": torch.tensor([4, 7]), "[B, L]": torch.where(mask, 3, torch.zeros_like(ids))}
    for lab in labels.values():
        with pytest.raises(TypeError, match=r"forward\(\) got unexpected keyword argument\(s\) \['label'\]"):
            model(ids, mask, label=lab, **kw)
        with pytest.raises(TypeError, match=r"return_dict must be a bool .* got 'no'"):
            model(ids, mask, labels=lab, return_dict="no", **kw)
        torch.manual_seed(0)
        out = model(ids, mask, labels=lab, **kw)
        torch.manual_seed(0)
        tup = model(ids, mask, labels=lab, return_dict=False, num_items_in_batch=5, history=ids, **kw)
        assert isinstance(tup, tuple) and len(tup) == len(out.to_tuple())
        for a, b in zip(tup, out.to_tuple()):
            torch.testing.assert_close(a, b)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['attention'\]"):
        model(ids, attention=mask, **kw)


def test_exclude_seen_must_be_a_bool():
    """predict / recommend(exclude_seen="no") excluded the history (the string is truthy): a bool is required."""
    model = gru()
    ids = torch.tensor([[1, 2, 3]])
    for bad in ("no", "False", 2, None):
        message = rf"exclude_seen must be a bool \(true or false\), got {re.escape(repr(bad))}"
        with pytest.raises(TypeError, match=message):
            model.predict(ids, exclude_seen=bad)
        with pytest.raises(TypeError, match=r"exclude_seen must be a bool"):
            model.recommend([[1, 2, 3]], k=3, exclude_seen=bad)
    assert torch.equal(model.predict(ids, exclude_seen=np.bool_(True)), model.predict(ids, exclude_seen=True))


def test_int8_item_ids_are_accepted_like_int16_and_meta_ids_are_refused_by_name():
    """int8 ids were refused as "not an integer tensor" while int16 / uint8 ids and int8 labels were accepted: any
    signed integer dtype is read now (a negative id is refused by the range check). Meta-device ids failed inside
    Tensor.item(); they are refused naming the argument, as check_state refuses meta states."""
    model = gru()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    want = model(ids).logits
    for dtype in (torch.int8, torch.int16, torch.uint8):
        torch.testing.assert_close(model(ids.to(dtype)).logits, want)
        torch.testing.assert_close(model.step(ids.to(dtype), model.init_state(2))[0], want)
    with pytest.raises(ValueError, match=r"input_ids holds item index -3, out of range \[0, 11\]"):
        model(torch.tensor([[1, -3]], dtype=torch.int8))
    with pytest.raises(TypeError, match=r"input_ids must be an integer tensor \(int64, int32, int16, int8 or uint8\)"):
        model(ids.float())
    with pytest.raises(ValueError, match=r"^input_ids is on the meta device \(a tensor without data\)$"):
        model(ids.to("meta"))
    with pytest.raises(ValueError, match=r"^item_ids is on the meta device"):
        model.step(ids.to("meta"), model.init_state(2))


@pytest.mark.parametrize("model_type", list(TINY))
def test_step_keeps_no_autograd_graph(model_type):
    """step() ran with gradients: its logits required grad and the exact-step models' state held the autograd graph
    of every step before it, so a serving loop grew in memory without bound. It runs under no_grad like predict."""
    model = tiny(model_type)
    st = model.init_state(2)
    for t in range(3):
        kw = {"timestamps": torch.full((2, 1), float(t), dtype=torch.float64)} if model.uses_timestamps else {}
        logits, st = model.step(torch.tensor([[1 + t], [5 + t]]), st, **kw)
        assert not logits.requires_grad and logits.grad_fn is None
        assert all(not v.requires_grad and v.grad_fn is None for v in st.values())
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("model_type", ["sasrec", "bert4rec", "ssd4rec", "tim4rec"])
def test_window_states_with_padding_among_their_items_are_refused(model_type):
    """A window state with padding 0 among its window_len items (or a window_len counting zeros) was re-encoded with
    the padding as an item (for SSD4Rec its mask token), a history forward refuses: refused naming the row."""
    model = tiny(model_type)
    kw = (lambda n: {"timestamps": torch.arange(n, dtype=torch.float64).repeat(2, 1)}) if model.uses_timestamps \
        else (lambda n: {})
    _, st = model.step(torch.tensor([[1, 2, 3], [4, 5, 6]]), model.init_state(2), **kw(3))
    model.step(torch.tensor([[7], [8]]), st, **{k: v + 3 for k, v in kw(1).items()})          # a valid state steps
    for edit in ("hole", "len"):
        bad = {k: v.clone() for k, v in st.items()}
        if edit == "hole":
            bad["window_ids"][1, 1] = 0
        else:
            bad["window_len"][1, 0] = 5
        n = 3 if edit == "hole" else 5
        with pytest.raises(ValueError, match=rf"state\['window_ids'\] row 1 holds padding 0 among its window_len={n} "):
            model.step(torch.tensor([[7], [8]]), bad, **{k: v + 3 for k, v in kw(1).items()})
    state = {"window_ids": torch.tensor([[4, 0, 6]]), "window_len": torch.tensor([[3]])}
    with pytest.raises(ValueError, match=r"state\['window_ids'\] row 0 holds padding 0 among its window_len=3"):
        window_append(state, torch.tensor([[1]]), 3, 11)


@pytest.mark.parametrize("model_type", ["mamba4rec", "sasrec", "gru4rec"])
def test_nan_scores_are_refused_not_ranked_first(model_type):
    """torch.topk ranks NaN above every number, so an item whose score was NaN (a numeric overflow, NaN weights of a
    model changed in memory) was recommended first to every user without a word, while the evaluation's
    rank_of_target refuses NaN; predict (and so recommend) refuses it now, naming the rows."""
    model = tiny(model_type)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert torch.isfinite(model.predict(ids)[:, 1:]).all()                      # the control: finite before
    with torch.no_grad():
        model.get_input_embeddings().weight[7] = float("nan")                  # item 7's score: NaN for every row
    with pytest.raises(ValueError, match=r"scores are NaN or infinite in batch rows \[0, 1\].*recommended first"):
        model.predict(ids)
    with pytest.raises(ValueError, match=r"scores are NaN"):
        model.recommend([[1, 2, 3]], k=3)
    with torch.no_grad():
        model.get_input_embeddings().weight[7] = 0.0
        model.get_input_embeddings().weight[7, 0] = float("inf")               # its score: +-inf (h[0] != 0)
    with pytest.raises(ValueError, match=r"scores are NaN or infinite in batch rows"):
        model.predict(ids)


def test_the_python_api_names_what_the_qa_found_it_took_or_misnamed():
    """The QA pass on the Python API (session 40): a NaN, negative or decreasing timestamp older than the model's
    window passed (only the window was checked, though that part's item ids were); a generator of histories raised
    "object of type 'generator' has no len()", naming no argument; step(all_positions="yes") was read as True; a
    time-aware model took a flat list of ids for a timestamp-count mismatch. Each is named now."""
    from transformers import AutoModel

    m = AutoModel.from_pretrained(str(pathlib.Path(__file__).resolve().parents[1] / "hub_cards" /
                                      "tim4rec-causal-beauty"))
    window = int(m.config.max_seq_length)
    h = m.item_vocab.items[:window + 10]                      # 10 items older than the window
    ts = [1e9 + 100.0 * i for i in range(len(h))]
    m.recommend([h], k=3, timestamps=[ts])
    for bad, message in ((float("nan"), r"hold nan at position 0: timestamps must be finite"),
                         (-5.0, r"hold a negative value \(-5\) at position 0"),
                         (2e9, r"decrease at position 1 \(2e\+09 -> 1e\+09\)")):
        with pytest.raises(ValueError, match=r"timestamps of history 0 " + message):
            m.recommend([h], k=3, timestamps=[[bad] + ts[1:]])
    with pytest.raises(TypeError, match=r"histories must be .*got generator \(an iterator: pass list\(\.\.\.\) "
                                        r"of it\)"):
        m.recommend((x for x in [h]), k=3, timestamps=[ts])
    with pytest.raises(TypeError, match=r"history 0 must be a sequence of item ids"):
        m.recommend(h[:5], k=3, timestamps=[ts[:5]])            # a flat list: named as such, not as a count
    ids = torch.tensor([[1, 2]])
    with pytest.raises(TypeError, match=r"all_positions must be a bool \(true or false\), got 'yes'"):
        m.step(ids, m.init_state(1), timestamps=torch.tensor([[1e9, 1e9 + 1]], dtype=torch.float64),
               all_positions="yes")


# ------------------------------------------------------------------- QA fixes (session 41): the HF save/load surface
def _files(folder) -> dict:
    return {f: (folder / f).read_bytes() for f in os.listdir(folder) if (folder / f).is_file()}


def test_a_variant_or_a_save_without_weights_is_refused_and_the_folders_weights_stay(tmp_path, monkeypatch):
    """save_pretrained(folder, variant="fp16") wrote model.fp16.safetensors, which no zoo loader reads, and removed
    the folder's model.safetensors as the weights of an earlier save; state_dict={} removed them and wrote none;
    is_main_process=False (the other processes of a distributed run) removed them too. Each is refused (or, for the
    latter, writes nothing) before anything is written or removed; from_pretrained(variant=) is refused alike."""
    from transformers import PreTrainedModel

    model = gru()
    model.save_pretrained(tmp_path)
    before = _files(tmp_path)
    with pytest.raises(ValueError, match=r"^variant='fp16': zoo models are saved as model\.safetensors only"):
        model.save_pretrained(tmp_path, variant="fp16")
    with pytest.raises(ValueError, match=r"^state_dict is empty: the save would write no weights"):
        model.save_pretrained(tmp_path, state_dict={})
    model.save_pretrained(tmp_path, is_main_process=False)
    assert _files(tmp_path) == before
    with pytest.raises(ValueError, match=r"^variant='fp16': zoo checkpoints hold model\.safetensors only"):
        GRU4RecModel.from_pretrained(tmp_path, variant="fp16")

    def config_only(self, save_directory, *args, **kwargs):     # a transformers save that writes no weight file
        self.config.save_pretrained(save_directory)

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", config_only)
    with pytest.raises(ValueError, match=r"save_pretrained wrote no weight file \(only \['config\.json'\]\); .* is "
                                         r"left as it was$"):
        model.save_pretrained(tmp_path)
    assert _files(tmp_path) == before and sorted(os.listdir(tmp_path)) == sorted(before)   # no staging folder left
    torch.testing.assert_close(GRU4RecModel.from_pretrained(tmp_path).item_embedding.weight,
                               model.item_embedding.weight)


@pytest.mark.parametrize("field, value", [("max_seq_length", True), ("num_layers", None), ("hidden_size", "8")])
def test_a_config_json_value_of_the_wrong_type_is_one_value_error_naming_the_file_and_field(tmp_path, capsys,
                                                                                            field, value):
    """The configs raise TypeError for a value of the wrong type; every CLI catches only OSError/ValueError, so a
    hand-edited config.json gave a traceback. It is a ValueError naming the file and the field on every entry point;
    a bad override (the caller's own keyword) keeps its own error, and a good one mends a bad file value."""
    from transformers import AutoConfig, AutoModel

    from zoo import recommend

    gru().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, field: value}))
    named = re.escape(f"{tmp_path / 'config.json'}: {field} must be")
    for load, message in ((SeqRecPreTrainedModel.from_pretrained, named), (GRU4RecModel.from_pretrained, named),
                          (GRU4RecConfig.from_pretrained, named), (AutoModel.from_pretrained, f"config.json: {field}"),
                          (AutoConfig.from_pretrained, f"config.json: {field}")):
        with pytest.raises(ValueError, match=message):
            load(tmp_path)
    with pytest.raises(SystemExit) as e:
        recommend.main(["--model", str(tmp_path), "--history", "1", "2", "--device", "cpu"])
    assert re.fullmatch(rf"error: --model .*: {named} .*", str(e.value.code)), e.value.code
    assert "Traceback" not in capsys.readouterr().err
    assert GRU4RecModel.from_pretrained(tmp_path, **{field: cfg[field]}).config.to_dict()[field] == cfg[field]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TypeError, match=rf"^{field} must be"):
        GRU4RecModel.from_pretrained(tmp_path, **{field: value})


def test_output_loading_info_returns_the_model_and_its_empty_loading_info(tmp_path):
    """output_loading_info=True was dropped: ``model, info = AutoModel.from_pretrained(d, output_loading_info=True)``
    raised "cannot unpack non-iterable". It returns (model, info) as transformers does, with empty lists (any
    problem they would hold is an error in the zoo)."""
    from transformers import AutoModel

    model = gru()
    model.save_pretrained(tmp_path)
    for load in (AutoModel.from_pretrained, GRU4RecModel.from_pretrained, SeqRecPreTrainedModel.from_pretrained):
        loaded, info = load(tmp_path, output_loading_info=True)
        assert type(loaded) is GRU4RecModel
        torch.testing.assert_close(loaded.item_embedding.weight, model.item_embedding.weight)
        assert {k: len(info[k]) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")} == {
            "missing_keys": 0, "unexpected_keys": 0, "mismatched_keys": 0, "error_msgs": 0}
    assert type(GRU4RecModel.from_pretrained(tmp_path, output_loading_info=False)) is GRU4RecModel


def test_a_config_class_refuses_the_config_json_of_another_zoo_model(tmp_path, capfd):
    """Mamba4RecConfig.from_pretrained(a SASRec folder) only warned and built a mixed config (model_type 'sasrec'
    on a Mamba4RecConfig, SASRec's fields as strays) that a Mamba model would save. Refused in one line naming both
    types, before transformers' warning; AutoConfig and the right class still load it."""
    from transformers import AutoConfig

    from zoo.models.mamba4rec import Mamba4RecConfig

    tiny("sasrec").save_pretrained(tmp_path)
    capfd.readouterr()
    message = r"model_type 'sasrec' is a SASRecConfig, not a Mamba4RecConfig \(model_type 'mamba4rec'\)"
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "config.json")) + ": " + message):
        Mamba4RecConfig.from_pretrained(tmp_path)
    assert "You are using a model of type" not in capfd.readouterr().err
    with pytest.raises(ValueError, match="^config.json: " + message):
        Mamba4RecConfig.from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert type(AutoConfig.from_pretrained(tmp_path)) is SASRecConfig
    assert SASRecConfig.from_pretrained(tmp_path).num_heads == 2
    assert SeqRecConfig.from_dict({"model_type": "sasrec", "n_items": 12}).n_items == 12    # the base takes any


def test_a_shape_mismatch_names_the_tensors_and_shapes_in_one_line(tmp_path, capfd):
    """A config whose sizes are not the file's (an override, or config= of another width) printed transformers'
    multi-line LOAD REPORT on stderr and then an error pointing to it. The shapes of the safetensors header are
    compared with the model's before the load: one line naming the tensors and both shapes, nothing on stderr."""
    from transformers import AutoModel

    tiny("sasrec").save_pretrained(tmp_path)
    capfd.readouterr()
    for kw, detail in (({"max_seq_length": 10}, "position_embedding.weight [6, 8] in the file vs [10, 8] in the model"),
                       ({"n_items": 20}, "item_embedding.weight [12, 8] in the file vs [20, 8] in the model")):
        for load in (AutoModel.from_pretrained, SASRecModel.from_pretrained):
            with pytest.raises(ValueError, match=rf"^weights in {re.escape(str(tmp_path))} do not match "
                                                 r"SASRecModel\(sasrec\): tensor shapes differ from the config "
                                                 rf"\(n_items=\d+, max_seq_length=\d+, hidden_size=8\): .*"
                                                 rf"{re.escape(detail)}"):
                load(tmp_path, **kw)
    wide = SASRecConfig(n_items=12, max_seq_length=6, hidden_size=16, num_heads=2, inner_size=8, num_layers=1)
    with pytest.raises(ValueError, match=r"tensor shapes differ .* \(and \d+ more\)$"):
        SASRecModel.from_pretrained(tmp_path, config=wide)
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "MISMATCH" not in err, err


# ------------------------------------------------- QA session 42: absurd config.json sizes, deeply nested JSON
def _refuse_big_builds(monkeypatch, model_cls, most=2):
    """Make building ``model_cls`` with more than ``most`` layers an error the load cannot turn into a refusal of
    its own: the layer check must refuse before any such model is built (meta or real), as 10**9 layers would run
    for hours."""
    init = model_cls.__init__

    def guarded(self, config, *args, **kwargs):
        if getattr(config, "num_layers", 0) > most:
            raise AssertionError(f"{model_cls.__name__} built with num_layers={config.num_layers}")
        init(self, config, *args, **kwargs)

    monkeypatch.setattr(model_cls, "__init__", guarded)


@pytest.mark.parametrize("model_type", list(TINY))
def test_a_num_layers_the_weight_file_does_not_hold_is_refused_before_any_model_is_built(tmp_path, monkeypatch,
                                                                                         model_type):
    """A config.json with ``num_layers`` 10**9 over a file of 2 layers built the model on the meta device and then
    for real (minutes per 10000 layers, then out of memory). The layers the file holds are told from its tensor names
    (each model's layer keys found from a 1- and a 2-layer build), and the mismatch is one line naming the field,
    the file and the first missing (or unexpected) keys, before any model of more layers is built."""
    import ast

    from safetensors import safe_open
    from transformers import AutoModel

    from zoo.train import config_fields

    cfg_cls, model_cls = MODELS[model_type]
    if "num_layers" not in config_fields(cfg_cls):      # the library treats num_layers as optional
        pytest.skip(f"{cfg_cls.__name__} has no num_layers field: no layer count to hold against the weight file")
    torch.manual_seed(0)
    model_cls(cfg_cls(n_items=12, max_seq_length=6, **{**TINY[model_type], "num_layers": 2})).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    torch.manual_seed(0)
    five = set(model_cls(cfg_cls(n_items=12, max_seq_length=6, **{**TINY[model_type], "num_layers": 5})).state_dict())
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        held = set(f.keys())
    _refuse_big_builds(monkeypatch, model_cls)
    head = rf"^weights in {re.escape(str(tmp_path))} do not match {model_cls.__name__}\({model_type}\): "
    (tmp_path / "config.json").write_text(json.dumps({**saved, "num_layers": 10**9}))
    config_json = re.escape(str(tmp_path / "config.json"))
    for load in (SeqRecPreTrainedModel.from_pretrained, model_cls.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(ValueError, match=head + rf"num_layers=1000000000 in {config_json} but model.safetensors "
                                                  r"holds 2 layers; missing keys: (\[.*\]) \(and \d+ more\)$") as e:
            load(tmp_path)
        keys = ast.literal_eval(re.search(r"missing keys: (\[.*?\])", str(e.value)).group(1))
        assert len(keys) == 5 and set(keys) <= five - held, keys    # keys of layers 3.., as a real build has them
    (tmp_path / "config.json").write_text(json.dumps({**saved, "num_layers": 1}))
    with pytest.raises(ValueError, match=head + rf"num_layers=1 in {config_json} but model.safetensors holds 2 "
                                                r"layers; unexpected keys: \[.*\]"):
        model_cls.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=head + r"num_layers=100000 \(given\) but model.safetensors holds 2 layers"):
        model_cls.from_pretrained(tmp_path, num_layers=100000)
    assert model_cls.from_pretrained(tmp_path).config.num_layers == 2


def test_a_num_layers_beyond_a_sharded_checkpoint_is_one_line_from_zoo_recommend(tmp_path, monkeypatch, capsys):
    """The layers of a sharded checkpoint are read from the headers of all its shards; zoo.recommend prints the
    refusal as its one error line."""
    from zoo import recommend

    gru(num_layers=2, n_items=200, embedding_size=16, hidden_size=16).save_pretrained(tmp_path, max_shard_size="8KB")
    shards = len(set(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"].values()))
    assert shards >= 2
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "num_layers": 10**6}))
    _refuse_big_builds(monkeypatch, GRU4RecModel)
    with pytest.raises(SystemExit) as e:
        recommend.main(["--model", str(tmp_path), "--history", "1", "2", "--device", "cpu"])
    assert re.fullmatch(rf"error: --model .*: weights in .* do not match GRU4RecModel\(gru4rec\): num_layers=1000000 "
                        rf"in .*config.json but the {shards} shards of its index hold 2 layers; missing keys: "
                        r"\['gru_layers.weight_hh_l2', 'gru_layers.weight_ih_l2', 'gru_layers.weight_hh_l3', .*\] "
                        r"\(and 1999991 more\)", str(e.value.code)), e.value.code
    assert "Traceback" not in capsys.readouterr().err


def test_a_weight_file_cannot_make_the_check_build_layers_it_does_not_hold(tmp_path, monkeypatch):
    """The layer count must be what the file holds, whole: a file with layers 0 and 999999 under ``num_layers``
    10**6 holds 2 layers, not 10**6 (refused naming the first missing keys), and a layer tensor of another shape is
    refused from the header before the model is built with all the layers."""
    from safetensors.torch import load_file, save_file

    gru(num_layers=3).save_pretrained(tmp_path)
    weights, saved = load_file(tmp_path / "model.safetensors"), json.loads((tmp_path / "config.json").read_text())
    _refuse_big_builds(monkeypatch, GRU4RecModel)
    save_file({**weights, "gru_layers.weight_hh_l2": torch.zeros(1, 1)}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"do not match GRU4RecModel\(gru4rec\): tensor shapes differ from the config "
                                         r"\(.*\): gru_layers.weight_hh_l2 \[1, 1\] in the file vs \[24, 8\] in the "
                                         r"model$"):
        GRU4RecModel.from_pretrained(tmp_path)
    gapped = {k: v for k, v in weights.items() if not k.endswith(("l1", "l2"))}
    gapped.update({"gru_layers.weight_ih_l999999": weights["gru_layers.weight_ih_l1"],
                   "gru_layers.weight_hh_l999999": weights["gru_layers.weight_hh_l1"]})
    save_file(gapped, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps({**saved, "num_layers": 10**6}))
    with pytest.raises(ValueError, match=r"num_layers=1000000 in .*config.json but model.safetensors holds 2 layers; "
                                         r"missing keys: \['gru_layers.weight_hh_l1', 'gru_layers.weight_ih_l1', "
                                         r"'gru_layers.weight_hh_l2', .*\] \(and 1999991 more\)$"):
        GRU4RecModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("field, detail", [
    ("n_items", r"n_items x hidden_size \(\[4611686018427387904, 8\]\) overflows torch's tensor size limit \(2\*\*63 "
                r"bytes\)"),
    ("d_state", r"a tensor size computed from it overflows torch's int64 sizes")])
def test_config_sizes_beyond_what_torch_can_hold_are_one_line_naming_the_field(tmp_path, monkeypatch, field, detail):
    """``n_items`` 2**62 (more than 2**63 bytes of item table) gave torch's RuntimeError "Storage size calculation
    overflowed" (and ``d_state`` 2**62 a TypeError with a C++ stack in its message) as a traceback: the meta-device
    check swallowed it and the real build raised it. One ValueError naming the field and the config.json, from the
    check and (should the check be passed by) from the load itself."""
    from zoo import modeling_utils
    from zoo.models.mamba4rec import Mamba4RecModel

    tiny("mamba4rec").save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, field: 2**62}))
    message = rf"^{field}=4611686018427387904 in {re.escape(str(tmp_path / 'config.json'))} is too large: {detail}, " \
              r"so Mamba4RecModel\(mamba4rec\) cannot be built$"
    with pytest.raises(ValueError, match=message):
        SeqRecPreTrainedModel.from_pretrained(tmp_path)
    monkeypatch.setattr(modeling_utils, "_check_weight_names", lambda *a, **k: None)
    with pytest.raises(ValueError, match=message):
        Mamba4RecModel.from_pretrained(tmp_path)


def _nest(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [600, 100_000])
def test_a_config_json_nested_too_deeply_is_the_one_line_invalid_json_error(tmp_path, capsys, depth):
    """A config.json nested 100000 levels deep made Python's JSON reader raise RecursionError (a traceback from
    every CLI); 600 levels were read but copying the config recursed too deep. Refused as transformers refuses other
    invalid JSON: one OSError naming the file. So is a weight index nested so (corrupt weight index)."""
    from zoo import recommend

    gru().save_pretrained(tmp_path / "ok")
    saved = (tmp_path / "ok" / "config.json").read_text()
    (tmp_path / "ok" / "config.json").write_text(saved.rstrip()[:-1] + f', "notes": {_nest(50)}}}')
    assert GRU4RecModel.from_pretrained(tmp_path / "ok").config.n_items == 12       # 50 levels are read
    gru().save_pretrained(tmp_path / "deep")
    (tmp_path / "deep" / "config.json").write_text(saved.rstrip()[:-1] + f', "notes": {_nest(depth)}}}')
    message = re.escape(f"It looks like the config file at '{tmp_path / 'deep' / 'config.json'}' is not a valid JSON "
                        "file: nested too deeply to read (more than 100 levels)")
    for load in (SeqRecPreTrainedModel.from_pretrained, GRU4RecModel.from_pretrained, GRU4RecConfig.from_pretrained):
        with pytest.raises(OSError, match=f"^{message}$"):
            load(tmp_path / "deep")
    with pytest.raises(OSError, match=r"^It looks like the config file at 'config.json' is not a valid JSON file"):
        GRU4RecConfig.from_dict({"n_items": 12, "notes": json.loads(_nest(200))})
    with pytest.raises(SystemExit) as e:
        recommend.main(["--model", str(tmp_path / "deep"), "--history", "1", "2", "--device", "cpu"])
    assert str(e.value.code) == f"error: --model {tmp_path / 'deep'}: " + re.sub(r"\\(.)", r"\1", message)
    assert "Traceback" not in capsys.readouterr().err
    gru().save_pretrained(tmp_path / "index", max_shard_size="1KB")
    (tmp_path / "index" / "model.safetensors.index.json").write_text(_nest(depth))
    with pytest.raises(ValueError, match="^corrupt weight index .*model.safetensors.index.json: "):
        GRU4RecModel.from_pretrained(tmp_path / "index")


# ------------------------------------------------- session 43: the init pass after a load, for every model
def _plain_init(self, module: torch.nn.Module) -> None:
    """An ``_init_weights`` that writes every floating-point tensor of ``module`` in place itself (``fill_``), past
    transformers' guarded init helpers -- as a model's own init code may."""
    with torch.no_grad():
        for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
            if t is not None and t.is_floating_point():
                t.fill_(0.125)


def _batch(model):
    """``(ids, mask, kwargs)``: two histories (one padded), with timestamps for a model that reads them."""
    ids, mask, *rest = model.pad_batch([[1, 2, 3], [4, 5]], timestamps=[[0.0, 60.0, 120.0], [5.0, 6.0]]
                                       if model.uses_timestamps else None)
    return ids, mask, ({"timestamps": rest[0]} if rest else {})


@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_save_then_load_gives_the_same_weights_and_outputs_in_every_model(tmp_path, monkeypatch, model_type):
    """save_pretrained then from_pretrained gives every tensor of the state dict bit for bit and the same outputs, in
    every model -- also when the init pass that from_pretrained runs after loading would write loaded tensors
    itself: on transformers 5.6 (which did not skip a loaded module for code it does not count as custom, as
    ``is_custom_code`` False makes it here) loaded weights were re-initialised without a word, and only TiM4Rec
    skipped a module whose tensors were all loaded; the base class does, for every model."""
    cls = MODELS[model_type][1]
    model = tiny(model_type)
    model.save_pretrained(tmp_path)
    want = model.state_dict()
    ids, mask, kw = _batch(model)
    with torch.no_grad():
        logits = model(ids, mask, **kw).logits
    monkeypatch.setattr(cls, "is_custom_code", classmethod(lambda c: False), raising=False)
    for init in (None, _plain_init):
        if init is not None:
            monkeypatch.setattr(cls, "_init_weights", init)
        loaded = cls.from_pretrained(tmp_path).eval()
        got = loaded.state_dict()
        assert list(got) == list(want)
        changed = [k for k in want if got[k].dtype != want[k].dtype or not torch.equal(got[k], want[k])]
        assert not changed, (init, changed)
        with torch.no_grad():
            assert torch.equal(loaded(ids, mask, **kw).logits, logits)


@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_the_init_pass_skips_exactly_the_modules_whose_tensors_were_all_loaded(monkeypatch, model_type):
    """The rule of :meth:`SeqRecPreTrainedModel._initialize_weights`, for every model: a module whose own parameters
    and buffers are all flagged loaded (``_is_hf_initialized``, as transformers' loader flags them) is not
    initialised again; a module with one tensor not loaded is (here: the module of the last parameter)."""
    model = tiny(model_type)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for m in model.modules():
        m.__dict__.pop("_is_hf_initialized", None)
    missing = [n for n, _ in model.named_parameters()][-1]
    owner = model.get_submodule(missing.rpartition(".")[0])
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if name != missing:
            t._is_hf_initialized = True
    monkeypatch.setattr(type(model), "is_custom_code", classmethod(lambda c: False), raising=False)
    monkeypatch.setattr(type(model), "_init_weights", _plain_init)
    model.init_weights()                                                  # from_pretrained's init pass
    after = model.state_dict(keep_vars=True)                              # the tensors themselves (tied: one)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    mine = {id(t) for t in (*owner.parameters(recurse=False), *owner.buffers(recurse=False))}
    assert missing in changed and {k for k in changed if id(after[k]) not in mine} == set(), changed
