"""The same model asked through its surfaces -- the Python API, ``zoo.recommend`` and the exported graphs run by
``export.runtime`` -- gives the same items in the same order, exactly tied scores included (QA, session 43)."""
import pytest
import torch

from tests.tiny_models import tiny
from zoo.vocab import ItemVocab

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install onnxruntime)")


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """A tiny Mamba4Rec with six items added by add_items -- their rows all start equal, so their scores tie exactly
    -- saved, and exported as a step graph with scores and candidates."""
    from export.onnx import export_model

    folder = tmp_path_factory.mktemp("grown")
    model = tiny("mamba4rec")
    model.set_item_vocab(ItemVocab(list(range(101, 112))))
    model.add_items([201, 202, 203, 204, 205, 206])
    model.save_pretrained(folder / "model")
    export_model(model, folder / "onnx", topk=10, with_scores=True, candidates=True, verify=False)
    return model, folder


def test_tied_new_items_come_in_one_order_on_every_surface(grown):
    """torch.topk gave the tied new items in an order of its own (201 after 202 and 203; a larger k not extending a
    smaller one), the graphs (ONNX TopK) the lower index first: now every surface gives the graphs' order."""
    from export.runtime import OnnxStepSession
    from zoo.recommend import main

    model, folder = grown
    history, candidates = [101, 103, 105], [201, 202, 203, 204, 205, 206, 110]
    session = OnnxStepSession(folder / "onnx")
    out = session.prime(session.encode([history]), candidates=session.encode_candidates([candidates]))
    graph = session.decode(out.topk_ids[:, :4])[0]
    py = model.recommend([history], k=4, candidates=candidates)
    assert py.items[0] == graph
    new = [i for i in py.items[0] if i != 110]
    assert new == sorted(new)                                          # ties: the lower index (= older id) first
    cli = main(["--model", str(folder / "model"), "--history", *map(str, history), "--candidates",
                *map(str, candidates), "--k", "4", "--device", "cpu"])
    assert cli["items"] == graph
    whole = session.decode(session.prime(session.encode([history])).topk_ids)[0]
    assert model.recommend([history], k=10).items[0] == whole
    for k in range(1, 11):                                             # a larger k extends a smaller one
        assert model.recommend([history], k=k).items[0] == whole[:k]


def test_canonical_int_text_is_the_int_id_without_a_vocabulary_too():
    """Without an item vocabulary model.recommend refused '3' (TypeError) where export.runtime's encode read it as
    item 3 (and a model with an int vocabulary reads '3' as 3): one rule now; '03' is another id on both."""
    from zoo.vocab import UnknownItemError

    model = tiny("gru4rec")
    assert model.item_vocab is None
    want = model.recommend([[3, 4]], k=5)
    got = model.recommend([["3", 4]], k=5)
    assert got.items == want.items and torch.equal(got.scores, want.scores)
    with pytest.raises(UnknownItemError, match=r"unknown item id '03': not the canonical spelling of the int id 3"):
        model.recommend([["03", 4]], k=5)
    with pytest.raises(TypeError, match=r"item id 'x' \(str\) is not an int"):
        model.recommend([["x", 4]], k=5)
