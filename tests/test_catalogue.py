"""A catalogue that gains items: ``model.add_items`` / ``resize_items`` and ``zoo.train --init-from --unknown-items``.

Growing the item table keeps every old row, so the old items' logits are unchanged (to the rounding of a wider
matmul; every model, its own output layer, BERT4Rec's [MASK] row moved to the end); the new items start at the mean
item, so they all score what an average item scores. The grown model keeps the central invariant (step == full
forward, or == a forward over the window) on histories that hold the new items, saves and loads with its grown
vocabulary, and exports. Training from a checkpoint on data with new items refuses by default, adds or drops them on
request, and re-indexes data that holds only known items in another order.
"""

from __future__ import annotations

import json

import pytest
import torch

from equivalence import check_step_equivalence, check_window_step_equivalence
from test_losses import MODEL_NAMES, _batch, _model
from test_train import TINY, _markov_file, fake_clock, refused  # noqa: F401  (fake_clock: a fixture)

from zoo.train import main as train_main
from zoo.vocab import ItemVocab

pytestmark = pytest.mark.usefixtures("one_thread")


def _logits(model, batch):
    ids, mask, ts, _ = batch
    with torch.no_grad():
        return model(ids, mask, timestamps=ts).logits


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_growing_keeps_the_old_scores_and_starts_new_items_at_the_mean_item(name):
    model = _model(name)
    V = int(model.config.n_items)
    batch = _batch(model)
    before = _logits(model, batch)
    table = model.get_input_embeddings()
    old_rows = table.weight.detach().clone()
    old_bias = None if model.item_output()[1] is None else model.item_output()[1].detach().clone()
    model.resize_items(V + 7)
    after = _logits(model, batch)
    assert int(model.config.n_items) == V + 7 and after.shape == (before.shape[0], V + 7)
    torch.testing.assert_close(after[:, :V], before, atol=1e-6, rtol=0)    # the same rows; a wider matmul rounds anew
    # every new item scores what the mean real item (rows 1..V-1, with the mean bias) scores
    weight, bias = model.item_output()
    mean_row = old_rows[1:V].mean(0)
    torch.testing.assert_close(weight[V:], mean_row.expand(7, -1), atol=0, rtol=0)
    if old_bias is not None:
        torch.testing.assert_close(bias[V:], old_bias[1:V].mean().expand(7), atol=0, rtol=0)
    assert after[:, V:].std(1).max() < 1e-6                       # all alike, near an average item
    # the rows after the items (BERT4Rec's [MASK]) moved to the end of the table
    extra = old_rows.shape[0] - V
    assert table.weight.shape[0] == V + 7 + extra and table.num_embeddings == V + 7 + extra
    torch.testing.assert_close(table.weight[V + 7:], old_rows[V:], atol=0, rtol=0)
    if name == "bert4rec":
        assert model.mask_token == V + 7
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_the_grown_model_keeps_step_equal_to_the_full_forward_on_histories_of_new_items(name):
    model = _model(name)
    V = int(model.config.n_items)
    model.resize_items(2 * V)                       # histories drawn over 1..2V-1: half of them new items
    with torch.no_grad():                           # new rows apart, so that a mixed-up new item would show
        model.get_input_embeddings().weight[V:2 * V].normal_(0, 1)
    if model.has_exact_step:
        worst = check_step_equivalence(model, [1, 5, 20], timestamps=model.uses_timestamps)
    else:
        worst = check_window_step_equivalence(model, [3, 20], timestamps=model.uses_timestamps)
    assert worst <= 1e-4


def test_add_items_grows_the_vocabulary_in_step_and_round_trips(tmp_path):
    from transformers import AutoModel

    model = _model("lrurec")
    V = int(model.config.n_items)
    model.set_item_vocab(ItemVocab(list(range(100, 100 + V - 1))))
    hist = [[100, 101, 102]]
    before = model.recommend(hist, k=5)
    # known ids and repeats are skipped; int text reads as the int id, in the order given
    added = model.add_items([105, "7000", 7001, 7000, 100])
    assert added == [7000, 7001]
    assert model.item_vocab.items[-2:] == [7000, 7001] and model.item_vocab.encode([7000]) == [V]
    assert int(model.config.n_items) == V + 2 == model.item_vocab.n_items
    assert model.add_items([7001]) == [] and int(model.config.n_items) == V + 2
    after = model.recommend(hist, k=5)
    assert after.items == before.items                        # new items start average: not in anyone's top 5
    model.save_pretrained(tmp_path / "grown")
    loaded = AutoModel.from_pretrained(tmp_path / "grown")
    assert loaded.item_vocab == model.item_vocab and int(loaded.config.n_items) == V + 2
    assert loaded.recommend([[7000, 101]], k=5).items == model.recommend([[7000, 101]], k=5).items
    with pytest.raises(TypeError, match="is not an int id"):
        model.add_items(["sku-1"])
    with pytest.raises(TypeError, match="items must be a sequence of item ids"):
        model.add_items("7002")


def test_resizing_is_refused_where_it_would_go_wrong():
    model = _model("sasrec")
    V = int(model.config.n_items)
    with pytest.raises(ValueError, match=f"n_items must be an int >= {V}"):
        model.resize_items(V - 1)                                   # shrinking would re-index items
    with pytest.raises(NotImplementedError, match=r"add_items\(ids\).*resize_items\(n_items\)"):
        model.resize_token_embeddings(V + 5)                         # HF's would leave config.n_items behind
    model.resize_items(V)                                            # the same size: nothing to do
    assert model.get_input_embeddings().weight.shape[0] == V
    model.set_item_vocab(ItemVocab(list(range(1, V))))
    with pytest.raises(ValueError, match=r"has an item vocabulary: add_items\(ids\)"):
        model.resize_items(V + 1)                                    # rows without ids could not be decoded
    model.set_item_vocab(None)
    with pytest.raises(ValueError, match="has no item vocabulary to add ids to"):
        model.add_items([5])


def test_a_sparse_item_table_stays_sparse_when_it_grows():
    model = _model("gru4rec")
    model.set_sparse_item_grad()
    model.resize_items(int(model.config.n_items) + 3)
    assert model.get_input_embeddings().sparse


def test_a_grown_model_exports_and_verifies(tmp_path):
    from export.onnx import export_model

    model = _model("gru4rec")
    V = int(model.config.n_items)
    model.set_item_vocab(ItemVocab(list(range(1, V))))
    model.add_items([5000, 5001])
    res = export_model(model, tmp_path / "g", verify_kwargs=dict(prime_len=10, n_steps=10, topk_cases=100))
    spec = json.loads((tmp_path / "g" / "state_spec.json").read_text())
    assert spec["n_items"] == V + 2 and res.report.ok
    assert ItemVocab.load(tmp_path / "g").items[-2:] == [5000, 5001]


# ------------------------------------------------------------------------------------------------------ zoo.train
def _with_new_items(src, dst, n_new=8, every=3):
    """``src``'s interactions, every ``every``-th user's items shifted into ``n_new`` items the first file lacks."""
    head, *rows = src.read_text().splitlines()
    out = [head]
    for u, i, t in (r.split("\t") for r in rows):
        if int(u) % every == 0:
            i = str(9000 + int(i) % n_new)
        out.append(f"{u}\t{i}\t{t}")
    dst.write_text("\n".join(out) + "\n")
    return dst


def test_training_from_a_checkpoint_on_a_grown_catalogue(tmp_path, capsys):
    base = ["--model", "gru4rec", "--max-len", "20", "--kcore", "0", "--no-progress", "--epochs", "2",
            "--batch-size", "16", "--lr", "5e-3", "--set", *TINY["gru4rec"]]
    a = _markov_file(tmp_path / "a.tsv", n_users=60)
    train_main(base + ["--data", str(a), "--out", str(tmp_path / "a")])
    old = ItemVocab.load(tmp_path / "a")
    b = _with_new_items(a, tmp_path / "b.tsv")
    n_new_rows = sum(1 for line in b.read_text().splitlines()[1:] if line.split("\t")[1].startswith("900"))
    init = ["--init-from", str(tmp_path / "a")]
    with refused(capsys, r"8 of the data's \d+ items \(%d interactions\) are not in the checkpoint's item vocabulary "
                 r"\(40 items\).*--unknown-items add" % n_new_rows):
        train_main(base + ["--data", str(b), "--out", str(tmp_path / "b"), *init])
    assert not (tmp_path / "b").exists()
    with refused(capsys, "--unknown-items add is for --init-from"):
        train_main(base + ["--data", str(b), "--out", str(tmp_path / "b"), "--unknown-items", "add"])

    log = train_main(base + ["--data", str(b), "--out", str(tmp_path / "b"), *init, "--unknown-items", "add"])
    grown = ItemVocab.load(tmp_path / "b")
    assert grown.items[:40] == old.items and sorted(grown.items[40:]) == list(range(9000, 9008))
    assert log["init_items"]["added"] == 8 and log["init_items"]["dropped_interactions"] == 0
    assert "8 new items added (rows 41..48, starting at the mean item)" in capsys.readouterr().out
    assert log["test"]["HR@10"] > 2 * 10 / 48, log["test"]               # the new items were learnt, not only kept
    from zoo.hub import _stages_markdown, training_stages                 # the card's stages say so

    text = _stages_markdown(training_stages(tmp_path / "b"))
    assert "- stage 2, item vocabulary: the data's 48 items indexed with the checkpoint's 40; 8 new items added" in text

    log = train_main(base + ["--data", str(b), "--out", str(tmp_path / "c"), *init, "--unknown-items", "drop"])
    assert ItemVocab.load(tmp_path / "c") == old
    assert log["init_items"]["dropped_interactions"] == n_new_rows and log["dataset"]["items"] <= 40


def test_data_of_known_items_in_another_order_is_re_indexed_not_refused(tmp_path, capsys):
    """A checkpoint's vocabulary is the order its data first showed the items; other data of the same catalogue
    (fewer users, another order) used to be refused. It now keeps the checkpoint's indices."""
    base = ["--model", "gru4rec", "--max-len", "20", "--kcore", "0", "--no-progress", "--epochs", "1",
            "--set", *TINY["gru4rec"]]
    a = _markov_file(tmp_path / "a.tsv", n_users=30)
    train_main(base + ["--data", str(a), "--out", str(tmp_path / "a")])
    b = _markov_file(tmp_path / "b.tsv", n_users=12, seed=5)               # the same items, other first appearances
    assert ItemVocab.load(tmp_path / "a") != ItemVocab(sorted({int(r.split("\t")[1]) for r in
                                                              b.read_text().splitlines()[1:]}))
    capsys.readouterr()
    log = train_main(base + ["--data", str(b), "--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "a")])
    assert ItemVocab.load(tmp_path / "b") == ItemVocab.load(tmp_path / "a")
    assert log["init_items"]["added"] == 0
    assert "indexed with the checkpoint's 40" in capsys.readouterr().out


def test_a_checkpoint_of_other_items_is_still_refused(tmp_path, capsys):
    """Data none of whose items the checkpoint knows (the same interactions under other ids) is refused by default:
    its rows would be other items."""
    base = ["--model", "gru4rec", "--max-len", "20", "--kcore", "0", "--no-progress", "--epochs", "1",
            "--set", *TINY["gru4rec"]]
    a = _markov_file(tmp_path / "a.tsv", n_users=20, length=(6, 10))
    head, *rows = a.read_text().splitlines()
    b = tmp_path / "b.tsv"
    b.write_text("\n".join([head] + [f"{u}\t{int(i) + 1000}\t{t}" for u, i, t in (r.split("\t") for r in rows)]) + "\n")
    train_main(base + ["--data", str(a), "--out", str(tmp_path / "a")])
    with refused(capsys, r"--init-from .*: 40 of the data's 40 items .* are not in the checkpoint's item vocabulary"):
        train_main(base + ["--data", str(b), "--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "a")])
    assert not (tmp_path / "b").exists()


@pytest.mark.usefixtures("fake_clock")
def test_a_run_that_grew_the_catalogue_resumes(tmp_path, capsys):
    """``--resume`` replays the growth (same rows, same order) before it loads the saved weights of the grown shape."""
    base = ["--model", "gru4rec", "--max-len", "20", "--kcore", "0", "--no-progress", "--set", *TINY["gru4rec"]]
    a = _markov_file(tmp_path / "a.tsv", n_users=30)
    train_main(base + ["--data", str(a), "--out", str(tmp_path / "a"), "--epochs", "1"])
    b = _with_new_items(a, tmp_path / "b.tsv")
    run = base + ["--data", str(b), "--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "a"),
                  "--unknown-items", "add", "--epochs", "2"]
    train_main(run + ["--max-minutes", "0.0001"])                       # the budget ends it after epoch 1
    with refused(capsys, r"these differ: unknown_items: the run has 'add', given 'drop'"):
        train_main([*run[:-4], "--unknown-items", "drop", "--epochs", "2", "--resume", "--max-minutes", "50"])
    log = train_main(run + ["--resume", "--max-minutes", "50"])
    assert [e["epoch"] for e in log["epochs"]] == [1, 2] and log["init_items"]["added"] == 8
    assert len(ItemVocab.load(tmp_path / "b")) == 48
