"""Vectors for retrieval and similar items: ``query_vectors`` / ``user_vectors`` / ``item_vectors`` /
``similar_items``, ``python -m zoo.embed`` and ``python -m zoo.recommend --similar-to``.

The invariant: a user vector dotted with the item vectors is the model's next-item logits, for every model (those
with an item bias through the appended bias column), so maximum-inner-product search over the item vectors ranks
exactly as ``predict``. Similar items are checked against a brute-force cosine on fresh random weights.
"""

from __future__ import annotations

import json
import re
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from test_losses import MODEL_NAMES, _batch, _model
from test_recommend import ITEMS, _data

from zoo.embed import load_vectors, main as embed_main
from zoo.recommend import main as recommend_main
from zoo.vocab import ItemVocab, UnknownItemError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_user_vectors_dot_item_vectors_are_the_models_logits(name):
    model = _model(name)
    ids, mask, ts, _ = _batch(model)
    weight, bias = model.item_output()
    assert model.vector_size == weight.shape[1] + (bias is not None)
    with torch.no_grad():
        logits = model(ids, mask, timestamps=ts).logits                          # [B, V]
    q = model.query_vectors(ids, mask, timestamps=ts)
    iv = model.item_vectors()
    assert q.shape == (ids.shape[0], model.vector_size) and q.dtype == torch.float32 and not q.requires_grad
    assert iv.vectors.shape == (model.config.n_items - 1, model.vector_size) and not iv.vectors.requires_grad
    assert iv.ids == list(range(1, model.config.n_items))                         # no vocabulary: internal indices
    torch.testing.assert_close(q @ iv.vectors.t(), logits[:, 1:], atol=1e-5, rtol=1e-5)
    if bias is not None:        # the bias column: 1 for users, the item's bias for items (a forgotten bias fails above)
        assert torch.equal(q[:, -1], torch.ones(q.shape[0]))
        torch.testing.assert_close(iv.vectors[:, -1], bias[1:].detach(), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["lrurec", "tim4rec_causal", "bert4rec"])
def test_user_vectors_of_external_histories_match_query_vectors_and_keep_the_mode(name):
    model = _model(name)
    V = int(model.config.n_items)
    vocab = ItemVocab([f"i{j}" for j in range(1, V)])
    model.set_item_vocab(vocab)
    rng = random.Random(1)
    hist = [[f"i{rng.randrange(1, V)}" for _ in range(n)] for n in (1, 5, 40)]    # 40 > the window of some models
    ts = [[1000.0 + 60 * t for t in range(len(h))] for h in hist] if model.uses_timestamps else None
    model.train()
    u = model.user_vectors(hist, timestamps=ts, batch_size=2)
    assert model.training                                                           # left as it was
    padded = model.pad_batch(model.encode_histories(hist), timestamps=ts)
    ids, mask = padded[:2]
    torch.testing.assert_close(u, model.query_vectors(ids, mask, timestamps=padded[2] if ts else None),
                               atol=1e-6, rtol=0)
    assert model.item_vectors().ids == [f"i{j}" for j in range(1, V)]
    # the scores of recommend() are these inner products
    rec = model.recommend(hist, k=3, timestamps=ts)
    iv = model.item_vectors()
    scores = u @ iv.vectors.t()                                                     # [B, V - 1]
    for r, items in enumerate(rec.items):
        cols = [iv.ids.index(x) for x in items]
        torch.testing.assert_close(scores[r, cols], rec.scores[r], atol=1e-5, rtol=0)


def test_user_vectors_refuse_bad_input():
    model = _model("gru4rec")
    with pytest.raises(TypeError, match="query_vectors"):
        model.user_vectors(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="no histories"):
        model.user_vectors([])
    with pytest.raises(ValueError, match="history 1 is empty"):
        model.user_vectors([[1], []])
    with pytest.raises(UnknownItemError, match="history 0"):
        model.user_vectors([[int(model.config.n_items)]])
    with pytest.raises(ValueError, match="does not use timestamps.*user_vectors"):
        model.user_vectors([[1, 2]], timestamps=[[1.0, 2.0]])
    with pytest.raises(ValueError, match="batch_size"):
        model.user_vectors([[1, 2]], batch_size=0)
    with pytest.raises(ValueError, match="padding"):                        # the index twin checks its batch
        model.query_vectors(torch.tensor([[0, 1, 2]]))
    timed = _model("tim4rec_causal")
    with pytest.raises(ValueError, match="reads timestamps"):
        timed.user_vectors([[1, 2]])
    with pytest.raises(ValueError, match="decreas|non-decreasing|order"):
        timed.user_vectors([[1, 2]], timestamps=[[5.0, 1.0]])


@pytest.mark.parametrize("name", ["mamba4rec", "lrurec", "bert4rec"])
def test_similar_items_are_the_nearest_by_cosine_without_the_item_itself(name):
    model = _model(name)
    V = int(model.config.n_items)
    with torch.no_grad():                                   # fresh random rows: a wrong metric would rank differently
        model.get_input_embeddings().weight.normal_()
    weight = model.item_output()[0].detach()
    query = [3, 1, V - 1]
    k = 6
    rec = model.similar_items(query, k=k)
    for r, q in enumerate(query):
        cos = F.cosine_similarity(weight[q][None], weight, dim=1)          # brute force: [V]
        cos[0] = cos[q] = -float("inf")
        want = torch.topk(cos, k)
        assert rec.items[r] == want.indices.tolist() and q not in rec.items[r] and 0 not in rec.items[r]
        torch.testing.assert_close(rec.scores[r], want.values, atol=1e-6, rtol=0)
    assert rec.scores.max() <= 1 + 1e-6 and (rec.scores[:, :-1] >= rec.scores[:, 1:]).all()
    # excluded items never come back; the query's own nearest neighbour excluded moves everything up one
    first = rec.items[0][0]
    again = model.similar_items([3], k=k, exclude_items=[first])
    assert again.items[0] == rec.items[0][1:] + again.items[0][-1:] and first not in again.items[0]


def test_similar_items_refuse_bad_input_and_fill_every_item_left():
    model = _model("gru4rec")
    V = int(model.config.n_items)
    model.set_item_vocab(ItemVocab([f"i{j}" for j in range(1, V)]))
    every = model.similar_items(["i1"], k=V - 2)                        # all but padding and the item itself
    assert sorted(every.items[0]) == sorted(f"i{j}" for j in range(2, V)) and torch.isfinite(every.scores).all()
    with pytest.raises(ValueError, match=f"k={V - 1} is more than the {V - 2} items left"):
        model.similar_items(["i1"], k=V - 1)
    with pytest.raises(ValueError, match=f"{V - 4} items left.*2 in exclude_items"):
        model.similar_items(["i1"], k=V - 3, exclude_items=["i2", "i3"])
    assert len(model.similar_items(["i1"], k=V - 3, exclude_items=["i1", "i2"]).items[0]) == V - 3
    # two queries, one of them excluded: the other has one item fewer left, and k must fit it too
    with pytest.raises(ValueError, match=f"{V - 4} items left"):
        model.similar_items(["i1", "i3"], k=V - 3, exclude_items=["i1", "i2"])
    with pytest.raises(UnknownItemError, match="items: .*'nope'"):
        model.similar_items(["nope"])
    with pytest.raises(UnknownItemError, match="exclude_items"):
        model.similar_items(["i1"], exclude_items=["nope"])
    with pytest.raises(ValueError, match="no items"):
        model.similar_items([])
    with pytest.raises(ValueError, match="k must be"):
        model.similar_items(["i1"], k=0)


def _saved(tmp_path, model_type="lrurec", **kw):
    from zoo.models import MODELS

    cfg_cls, cls = MODELS[model_type]
    torch.manual_seed(0)
    model = cls(cfg_cls(n_items=len(ITEMS) + 1, max_seq_length=4, **kw)).eval()
    _, bias = model.item_output()
    if bias is not None:
        with torch.no_grad():
            bias.normal_(0, 0.5)
    model.set_item_vocab(ItemVocab(ITEMS))
    model.save_pretrained(tmp_path / model_type)
    # as a zoo.train run of the unfiltered data logs it: zoo.embed and zoo.recommend read --data so by default
    (tmp_path / model_type / "train_log.json").write_text(json.dumps({"data_options": {"kcore": None}}))
    return model, str(tmp_path / model_type)


@pytest.mark.parametrize("model_type,kw", [("lrurec", {"hidden_size": 16}), ("tim4rec_causal", {"hidden_size": 16})])
def test_embed_writes_vectors_that_score_like_recommend(tmp_path, model_type, kw):
    model, path = _saved(tmp_path, model_type, **kw)
    users = _data(tmp_path / "d.tsv")
    out = tmp_path / "v" / "vectors.safetensors"
    summary = embed_main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--out", str(out), "--no-progress",
                          "--batch-size", "4"])
    assert summary["items"] == len(ITEMS) and summary["users"] == len(users)
    v = load_vectors(out)
    assert v.item_ids == ITEMS and v.user_ids == list(users)
    assert v.metadata["model_type"] == model_type and v.metadata["model"] == path
    assert v.metadata["bias_column"] == ("true" if model.item_output()[1] is not None else "false")
    scores = v.scores()                                                          # [U, items]
    for r, (u, (hist, ts)) in enumerate(users.items()):
        rec = model.recommend([hist], k=5, timestamps=[ts] if model.uses_timestamps else None)
        top = torch.topk(scores[r], 5)
        assert [ITEMS[i] for i in top.indices] == rec.items[0], u
        torch.testing.assert_close(top.values, rec.scores[0], atol=1e-5, rtol=0)


def test_embed_without_data_writes_items_and_keeps_an_old_file_on_failure(tmp_path, capsys):
    model, path = _saved(tmp_path, "gru4rec", embedding_size=16, hidden_size=16)
    out = tmp_path / "vectors.safetensors"
    embed_main(["--model", path, "--out", str(out)])
    v = load_vectors(out)
    assert v.users is None and v.user_ids is None and v.item_ids == ITEMS
    torch.testing.assert_close(v.items, model.item_vectors().vectors, atol=0, rtol=0)
    with pytest.raises(ValueError, match="no user vectors"):
        v.scores()
    before = out.read_bytes()
    _data(tmp_path / "new.tsv", items=ITEMS + [999])                            # an item the model does not know
    with pytest.raises(SystemExit, match="999|unknown"):
        embed_main(["--model", path, "--data", str(tmp_path / "new.tsv"), "--out", str(out), "--no-progress"])
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # the same data with --unknown-items drop is written, without the unknown item
    summary = embed_main(["--model", path, "--data", str(tmp_path / "new.tsv"), "--out", str(out), "--no-progress",
                          "--unknown-items", "drop"])
    assert summary["users"] == 9 and "interactions with items the model does not know dropped" in summary["vocab"]
    assert load_vectors(out).user_ids == [f"u{u}" for u in range(1, 10)]
    with pytest.raises(SystemExit) as e:                                        # a folder where the file goes
        embed_main(["--model", path, "--out", str(tmp_path)])
    assert e.value.code == 2 and "folder" in capsys.readouterr().err
    weights = (Path(path) / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit) as e:                                        # the model's own weights file
        embed_main(["--model", path, "--out", str(Path(path) / "model.safetensors")])
    assert e.value.code == 2 and "is the input --model's model.safetensors" in capsys.readouterr().err
    assert (Path(path) / "model.safetensors").read_bytes() == weights


def test_embed_writes_the_same_bytes_each_time(tmp_path):
    """The QA's finding: two identical zoo.embed runs wrote files that differ in bytes (the tensors equal), as
    safetensors writes the metadata in its hash map's order, which changes from one write to the next. The header
    is written with sorted keys now: the same input gives the same file, which still loads as it did."""
    from safetensors import safe_open

    model, path = _saved(tmp_path, "gru4rec", embedding_size=16, hidden_size=16)
    _data(tmp_path / "d.tsv")
    outs = [tmp_path / f"v{i}.safetensors" for i in range(3)]
    for out in outs:
        embed_main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--out", str(out), "--no-progress"])
    raw = [out.read_bytes() for out in outs]
    assert raw[0] == raw[1] == raw[2]
    n = int.from_bytes(raw[0][:8], "little")
    header = json.loads(raw[0][8:8 + n])
    assert n % 8 == 0 and list(header) == sorted(header) and list(header["__metadata__"]) == sorted(
        header["__metadata__"])
    v = load_vectors(outs[0])
    assert v.item_ids == ITEMS and v.users is not None
    torch.testing.assert_close(v.items, model.item_vectors().vectors, atol=0, rtol=0)
    with safe_open(str(outs[0]), "pt") as f:
        assert f.metadata() == header["__metadata__"] and set(f.keys()) == {"items", "users"}


def test_embed_refuses_user_vectors_that_are_not_finite_naming_them(tmp_path, monkeypatch):
    """A model whose scores overflow (zoo.recommend and zoo.evaluate refuse its NaN scores, naming the rows) gave
    zoo.embed NaN user vectors, written with exit 0: a vector index then got NaN queries. They are refused now,
    naming the users' rows and ids, and nothing is written (an old file stays as it was); so is a NaN in the item
    vectors or in user vectors given to write_vectors."""
    from zoo.embed import write_vectors

    model, path = _saved(tmp_path, "gru4rec", embedding_size=16, hidden_size=16)
    users = list(_data(tmp_path / "d.tsv"))
    cls = type(model)
    real = cls.query_vectors

    def overflowing(self, ids, mask, **kw):
        q = real(self, ids, mask, **kw)
        q[0, 1], q[2, 0] = float("nan"), float("inf")          # rows 0 and 2 of the one batch
        return q

    monkeypatch.setattr(cls, "query_vectors", overflowing)
    out = tmp_path / "v.safetensors"
    out.write_bytes(b"an earlier file")
    with pytest.raises(SystemExit) as e:
        embed_main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--out", str(out), "--no-progress"])
    assert str(e.value.code).startswith(
        f"error: the model's user vectors are NaN or infinite for 2 of {len(users)} users, rows [0, 2] (ids "
        f"{[users[0], users[2]]}) (a numeric overflow"), e.value.code
    assert out.read_bytes() == b"an earlier file"
    monkeypatch.undo()
    vectors = torch.zeros(2, model.vector_size)
    vectors[1, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"user vectors are NaN or infinite in rows \[1\] \(ids \['b'\]\)"):
        write_vectors(out, model, users=(["a", "b"], vectors))
    with torch.no_grad():
        model.item_output()[0][3, 2] = float("nan")            # item index 3: the third item
    with pytest.raises(ValueError, match=rf"item vectors are NaN or infinite in rows \[2\] \(ids \[{ITEMS[2]}\]\)"):
        write_vectors(out, model)
    assert out.read_bytes() == b"an earlier file"


def test_load_vectors_refuses_a_file_holding_non_finite_vectors(tmp_path):
    """load_vectors read a file of NaN user vectors (an older zoo.embed wrote them) without complaint: it names the
    file, the tensor and the rows now."""
    _, path = _saved(tmp_path, "gru4rec", embedding_size=16, hidden_size=16)
    from safetensors import safe_open

    _data(tmp_path / "d.tsv")
    good = tmp_path / "good.safetensors"
    embed_main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--out", str(good), "--no-progress"])

    with safe_open(str(good), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    users = json.loads(meta["user_ids"])
    tensors["users"][[1, 4]] = float("nan")
    bad = tmp_path / "nan.safetensors"
    save_file(tensors, bad, metadata=meta)
    with pytest.raises(ValueError, match=re.escape(
            f"{bad}: the users tensor holds NaN or infinite values in 2 of {len(users)} rows, rows [1, 4] (ids "
            f"{[users[1], users[4]]}): not usable vectors")):
        load_vectors(bad)
    tensors["users"][[1, 4]] = 0.0
    tensors["items"][0, 0] = float("inf")
    save_file(tensors, bad, metadata=meta)
    with pytest.raises(ValueError, match=re.escape(f"{bad}: the items tensor holds NaN or infinite values in 1 of")):
        load_vectors(bad)


def test_embed_shows_its_progress_bar_only_on_a_terminal(tmp_path, capsys, monkeypatch):
    """The user-vector bar went to stderr whatever it was (a CI log, a file), where its carriage returns glued the
    next line to it. It is shown only when stderr is a terminal now (without --no-progress)."""
    import sys

    from zoo.data import load_dataset
    from zoo.embed import user_vectors_of_dataset

    model, path = _saved(tmp_path, "gru4rec", embedding_size=16, hidden_size=16)
    _data(tmp_path / "d.tsv")
    ds = load_dataset(str(tmp_path / "d.tsv"), kcore=None)
    capsys.readouterr()
    user_vectors_of_dataset(model, ds, progress=True)
    assert capsys.readouterr().err == ""                      # stderr is no terminal here
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    user_vectors_of_dataset(model, ds, progress=True)
    assert "user vectors" in capsys.readouterr().err
    user_vectors_of_dataset(model, ds, progress=False)
    assert capsys.readouterr().err == ""


def test_load_vectors_refuses_files_that_are_not_vectors_files(tmp_path):
    _, path = _saved(tmp_path, "gru4rec", embedding_size=16, hidden_size=16)
    with pytest.raises(ValueError, match="not a zoo vectors file"):
        load_vectors(f"{path}/model.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_vectors(tmp_path / "junk.safetensors")
    good = tmp_path / "good.safetensors"
    embed_main(["--model", path, "--out", str(good)])
    meta = load_vectors(good).metadata
    items = load_vectors(good).items

    def write(name, tensors, **changes):
        m = {**meta, "item_ids": json.dumps(ITEMS), **changes}
        save_file(tensors, tmp_path / name, metadata={k: v for k, v in m.items() if v is not None})
        return tmp_path / name

    with pytest.raises(ValueError, match=r"items tensor \[29, 16\] does not match its 30 ids"):
        load_vectors(write("short.safetensors", {"items": items[:-1].contiguous()}))
    with pytest.raises(ValueError, match="item_ids metadata is missing or not JSON"):
        load_vectors(write("noids.safetensors", {"items": items}, item_ids="[1, 2"))
    with pytest.raises(ValueError, match="float32"):
        load_vectors(write("half.safetensors", {"items": items.half()}))
    with pytest.raises(ValueError, match="user_ids but no 'users' tensor"):
        load_vectors(write("nousers.safetensors", {"items": items}, user_ids="[1]"))
    with pytest.raises(ValueError, match="user vectors have 3 columns"):
        load_vectors(write("cols.safetensors", {"items": items, "users": torch.zeros(1, 3)}, user_ids="[1]"))
    with pytest.raises(ValueError, match="version"):
        load_vectors(write("v2.safetensors", {"items": items}, format_version="2"))


def test_recommend_similar_to_prints_similar_items(tmp_path, capsys):
    model, path = _saved(tmp_path, "gru4rec", embedding_size=16, hidden_size=16)
    out = recommend_main(["--model", path, "--similar-to", str(ITEMS[0]), str(ITEMS[5]), "--k", "4"])
    want = model.similar_items([ITEMS[0], ITEMS[5]], k=4)
    assert out["items"] == want.items and out["similar_to"] == [ITEMS[0], ITEMS[5]]
    text = capsys.readouterr().out
    assert f"similar to {ITEMS[0]}:" in text and f"similar to {ITEMS[5]}:" in text
    out = recommend_main(["--model", path, "--similar-to", str(ITEMS[0]), "--k", "4", "--exclude-items",
                          str(want.items[0][0]), "--json"])
    assert out["items"][0] == want.items[0][1:] + out["items"][0][-1:]
    assert json.loads(capsys.readouterr().out)["items"] == out["items"]
    with pytest.raises(SystemExit, match="unknown item id 5"):
        recommend_main(["--model", path, "--similar-to", "5"])
    out = recommend_main(["--model", path, "--similar-to", "5", str(ITEMS[1]), "--unknown-items", "drop", "--k", "2"])
    assert out["similar_to"] == [ITEMS[1]]
    with pytest.raises(SystemExit, match="knows none"):
        recommend_main(["--model", path, "--similar-to", "5", "--unknown-items", "drop"])
    with pytest.raises(SystemExit) as e:
        recommend_main(["--model", path, "--similar-to", str(ITEMS[0]), "--history", str(ITEMS[1])])
    assert e.value.code == 2 and "--similar-to" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- candidates
@pytest.mark.parametrize("name", ["lrurec", "tim4rec_causal", "bert4rec"])
def test_recommend_among_candidates_is_the_full_ranking_restricted_to_them(name):
    """``recommend(candidates=...)``: the top-k of the candidates only, in the order and with the scores of the full
    ranking (shared or per-history lists; the exclusions still apply); what cannot be ranked is refused."""
    model = _model(name)
    V = int(model.config.n_items)
    model.set_item_vocab(ItemVocab([f"i{j}" for j in range(1, V)]))
    rng = random.Random(2)
    hist = [[f"i{rng.randrange(1, V)}" for _ in range(n)] for n in (3, 8)]
    ts = [[1000.0 + 60 * t for t in range(len(h))] for h in hist] if model.uses_timestamps else None
    full = model.recommend(hist, k=V - 1, timestamps=ts)                      # every item, best first
    shared = [f"i{j}" for j in range(1, V, 3)]
    per = [[f"i{j}" for j in range(2, V, 4)], [f"i{j}" for j in range(1, 12)]]
    for cands in (shared, per):
        got = model.recommend(hist, k=4, timestamps=ts, candidates=cands)
        for r in range(2):
            pool = set(cands if cands is shared else cands[r])
            want = [x for x in full.items[r] if x in pool][:4]
            assert got.items[r] == want
            torch.testing.assert_close(got.scores[r], full.scores[r][[full.items[r].index(x) for x in want]])
    seen = model.recommend(hist, k=2, timestamps=ts, candidates=shared, exclude_seen=True,
                           exclude_items=[shared[0]])
    for r in range(2):
        assert not set(seen.items[r]) & (set(hist[r]) | {shared[0]}) and set(seen.items[r]) <= set(shared)
    with pytest.raises(ValueError, match=r"k=3 is more than the 2 items left to recommend for history 0 \(2 candidates"):
        model.recommend(hist, k=3, timestamps=ts, candidates=["i1", "i2"])
    other = next(f"i{j}" for j in range(1, V) if f"i{j}" not in hist[0])
    with pytest.raises(ValueError, match=r"the 1 items left .* \(2 candidates, 1 of them in the history\)"):
        model.recommend(hist[:1], k=2, timestamps=ts[:1] if ts else None, candidates=[hist[0][0], other],
                        exclude_seen=True)
    with pytest.raises(ValueError, match="got 3 candidate lists for 2 histories"):
        model.recommend(hist, k=1, timestamps=ts, candidates=[["i1"], ["i2"], ["i3"]])
    with pytest.raises(ValueError, match="candidates is empty"):
        model.recommend(hist, k=1, timestamps=ts, candidates=[])
    with pytest.raises(ValueError, match="candidates of history 1 are empty"):
        model.recommend(hist, k=1, timestamps=ts, candidates=[["i1"], []])
    with pytest.raises(UnknownItemError, match="candidates of history 0"):
        model.recommend(hist, k=1, timestamps=ts, candidates=[["nope"], ["i1"]])


def test_recommend_cli_candidates(tmp_path, capsys):
    model, path = _saved(tmp_path, "gru4rec", embedding_size=16, hidden_size=16)
    users = _data(tmp_path / "d.tsv")
    cands = ITEMS[::3]
    (tmp_path / "c.txt").write_text("# in stock\n" + "".join(f"{x}\n" for x in cands[5:]))
    out = recommend_main(["--model", path, "--history", str(ITEMS[1]), str(ITEMS[4]), "--k", "3", "--candidates",
                          *map(str, cands[:5]), "--candidates-file", str(tmp_path / "c.txt"), "--stepwise", "--json"])
    assert out["items"] == model.recommend([[ITEMS[1], ITEMS[4]]], k=3, candidates=cands).items[0]
    assert out["stepwise_items"] == out["items"] and out["candidates"] == len(cands)
    capsys.readouterr()
    summary = recommend_main(["--model", path, "--data", str(tmp_path / "d.tsv"), "--all-users", "--out",
                              str(tmp_path / "r.jsonl"), "--k", "4", "--candidates", *map(str, cands),
                              "--exclude-seen", "--no-progress"])
    assert summary["candidates"] == len(cands)
    for line in (tmp_path / "r.jsonl").read_text().splitlines():
        row = json.loads(line)
        hist = users[row["user"]][0]
        want = model.recommend([hist], k=min(4, len(set(cands) - set(hist))), candidates=cands, exclude_seen=True)
        assert row["items"] == want.items[0]
    with pytest.raises(SystemExit, match="--candidates: unknown item id 5"):
        recommend_main(["--model", path, "--candidates", "5"])
    with pytest.raises(SystemExit, match="knows none of the candidates"):
        recommend_main(["--model", path, "--candidates", "5", "--unknown-items", "drop"])


def test_embed_device_threads_and_exit_statuses(tmp_path, capsys, monkeypatch):
    """--device cpu writes the vectors a run without it writes; a malformed --device is a usage error (2), a CUDA
    device this machine lacks exits 4 with one line, before any model is loaded; a --model or --data that cannot be
    read fails the run (1, one line); --threads sets torch's threads."""
    _, path = _saved(tmp_path, "gru4rec", embedding_size=16, hidden_size=16)
    _data(tmp_path / "d.tsv")
    base = ["--model", path, "--data", str(tmp_path / "d.tsv"), "--no-progress"]
    embed_main(base + ["--out", str(tmp_path / "a.safetensors")])
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    embed_main(base + ["--out", str(tmp_path / "b.safetensors"), "--device", "cpu", "--threads", "3"])
    assert calls == [3]
    a, b = load_vectors(tmp_path / "a.safetensors"), load_vectors(tmp_path / "b.safetensors")
    assert a.user_ids == b.user_ids and torch.equal(a.users, b.users) and torch.equal(a.items, b.items)
    capsys.readouterr()
    out = str(tmp_path / "c.safetensors")
    with pytest.raises(SystemExit) as e:
        embed_main(base + ["--out", out, "--device", "gpu"])
    assert e.value.code == 2 and "--device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as e:
            embed_main(base + ["--out", out, "--device", "cuda"])
        err = capsys.readouterr().err
        assert e.value.code == 4 and err.count("\n") == 1 and err.startswith("error: --device: ")
    for argv, said in ((["--model", path + "x", "--out", out], f"error: --model {path}x: "),
                       (["--model", path, "--data", str(tmp_path / "no.tsv"), "--out", out],
                        "error: interaction file not found")):
        with pytest.raises(SystemExit) as e:                  # sys.exit(message): status 1, the message on stderr
            embed_main(argv)
        assert isinstance(e.value.code, str) and e.value.code.startswith(said) and "\n" not in e.value.code
    assert not (tmp_path / "c.safetensors").exists()


def test_recommend_tables_show_an_id_that_would_break_them_by_its_repr(tmp_path, capsys):
    """The QA's finding: an item id holding a tab (a legal id, kept exactly) printed raw in the recommendation and
    --similar-to tables, breaking their columns (the history line already used repr). A row shows such an id by
    its repr now; printable ids (spaces and CJK included) as they are; --json keeps every id exactly."""
    from zoo.models.gru4rec import GRU4RecConfig, GRU4RecModel

    items = ["a\tb", "line\nbreak", "with space", "中文", "plain"]
    torch.manual_seed(0)
    model = GRU4RecModel(GRU4RecConfig(n_items=len(items) + 1, embedding_size=8, hidden_size=8)).eval()
    model.set_item_vocab(ItemVocab(items))
    model.save_pretrained(tmp_path / "m")
    out = recommend_main(["--model", str(tmp_path / "m"), "--history", "plain", "--k", str(len(items))])
    shown = capsys.readouterr().out
    assert "\t" not in shown and sorted(out["items"]) == sorted(items)
    rows = [line for line in shown.splitlines() if re.match(r"^\s+\d+  ", line)]
    assert len(rows) == len(items)
    for item in items:
        assert any((repr(item) if not item.isprintable() else item) in row for row in rows), (item, shown)
    recommend_main(["--model", str(tmp_path / "m"), "--similar-to", "a\tb", "--k", "2"])
    shown = capsys.readouterr().out
    assert "similar to 'a\\tb':" in shown and "\t" not in shown
    out = recommend_main(["--model", str(tmp_path / "m"), "--history", "plain", "--k", "5", "--json"])
    assert json.loads(capsys.readouterr().out)["items"] == out["items"] and "a\tb" in out["items"]
