"""The zoo's models used as any Hugging Face transformers / PyTorch model: ``save_pretrained(push_to_hub=True)``
against the real ``HfApi`` signatures, ``config.return_dict`` / ``output_hidden_states`` as transformers' models read
them, and ``torch.export`` of every model family."""

import inspect
import math
import os

import pytest
import torch
from transformers import AutoModel

import zoo  # registers the models with AutoConfig / AutoModel
from tiny_models import TINY, tiny

pytestmark = pytest.mark.usefixtures("one_thread")

#: the HfApi calls a push may make; each is replaced by a stub that takes only what the real method takes
HUB_CALLS = ("create_repo", "create_commit", "create_branch", "upload_folder", "upload_file")


@pytest.fixture
def strict_hub(monkeypatch):
    """HfApi's upload calls recorded as ``(name, arguments)``, each checked against the real method's signature
    (``inspect.signature(...).bind``: an argument the real method does not take is the TypeError it would raise), and
    offline for anything else (the model card's lookup)."""
    import huggingface_hub

    calls = []

    def stub(name, real):
        def call(self, *args, **kw):
            bound = inspect.signature(real).bind(self, *args, **kw).arguments
            bound.pop("self")
            calls.append((name, bound))
            repo_id = bound.get("repo_id")
            return type("Reply", (), {"repo_id": repo_id, "commit_url": "", "oid": "", "pr_url": None})()
        return call

    for name in HUB_CALLS:
        monkeypatch.setattr(huggingface_hub.HfApi, name, stub(name, getattr(huggingface_hub.HfApi, name)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return calls


def _vocab_model(model_type="sasrec"):
    model = tiny(model_type)
    model.set_item_vocab(zoo.ItemVocab(list(range(100, 111))))
    return model


def _committed(calls):
    commits = [bound for name, bound in calls if name == "create_commit"]
    assert len(commits) == 1, calls
    return commits[0], {op.path_in_repo for op in commits[0]["operations"]}


def test_save_pretrained_push_to_hub_creates_the_repo_and_commits_the_folder(tmp_path, strict_hub):
    """``save_pretrained(dir, push_to_hub=True, repo_id=...)`` failed on every model with ``TypeError:
    HfApi.create_repo() got an unexpected keyword argument 'safe_serialization'``: the zoo's override added it, and
    transformers 5 hands what it does not know to create_repo. Now the repo is created with what transformers passes
    (private=, token=), and one commit holds the saved files, the item vocabulary and the model card."""
    folder = tmp_path / "tiny-sasrec"
    model = _vocab_model()
    model.save_pretrained(folder, push_to_hub=True, repo_id="me/tiny", private=True, token="not-a-real-token",
                          commit_message="first")
    assert [name for name, _ in strict_hub] == ["create_repo", "create_commit"]
    assert strict_hub[0][1] == {"repo_id": "me/tiny", "exist_ok": True, "private": True, "token": "not-a-real-token"}
    commit, files = _committed(strict_hub)
    assert files == {"config.json", "model.safetensors", "item_vocab.json", "README.md"}
    assert (commit["repo_id"], commit["commit_message"], commit["token"]) == ("me/tiny", "first", "not-a-real-token")
    assert sorted(os.listdir(folder)) == sorted(files)                # the local save is the one pushed
    again = AutoModel.from_pretrained(folder)
    assert again.item_vocab == model.item_vocab
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_save_pretrained_push_to_hub_defaults_and_safe_serialization(tmp_path, strict_hub):
    """Without ``repo_id`` the repository is named after the folder, as in transformers; ``safe_serialization=True``
    given by the caller is accepted (and not passed on), ``False`` refused before anything is created or written."""
    model = tiny("gru4rec")
    model.save_pretrained(tmp_path / "my-model", push_to_hub=True, safe_serialization=True)
    assert strict_hub[0] == ("create_repo", {"repo_id": "my-model", "exist_ok": True})
    assert _committed(strict_hub)[1] == {"config.json", "model.safetensors", "README.md"}
    strict_hub.clear()
    with pytest.raises(ValueError, match="safetensors only"):
        model.save_pretrained(tmp_path / "other", push_to_hub=True, safe_serialization=False)
    assert strict_hub == [] and not (tmp_path / "other").exists()


def test_save_pretrained_push_to_hub_offline_fails_before_writing(tmp_path, monkeypatch):
    """Offline, the push stops at transformers' own ``OfflineModeIsEnabled`` from create_repo, before any file is
    written (as a transformers model does), not at a TypeError of the zoo's making."""
    import huggingface_hub
    from huggingface_hub.errors import OfflineModeIsEnabled

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    folder = tmp_path / "x"
    with pytest.raises(OfflineModeIsEnabled):
        tiny("sasrec").save_pretrained(folder, push_to_hub=True, repo_id="me/x")
    assert not folder.exists() or os.listdir(folder) == []


def test_model_push_to_hub_still_uploads_under_the_strict_signatures(strict_hub):
    """transformers' ``model.push_to_hub`` saves through the zoo's ``save_pretrained`` (no push there): the commit
    holds the weights, config and vocabulary, and every Hub call fits the real signatures."""
    _vocab_model("mamba4rec").push_to_hub("me/tiny", token="not-a-real-token")
    assert {"config.json", "model.safetensors", "item_vocab.json"} <= _committed(strict_hub)[1]


def _batch(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    hist = [torch.randint(1, 12, (n,), generator=g).tolist() for n in (5, 3, 1)]
    ts = [sorted(torch.randint(0, 10 ** 6, (len(h),), generator=g).double().add(1e9).tolist()) for h in hist]
    ids, mask, *rest = model.pad_batch(hist, timestamps=ts if model.uses_timestamps else None)
    return ids, mask, ({"timestamps": rest[0]} if rest else {})


@pytest.mark.parametrize("model_type", list(TINY))
def test_config_return_dict_false_gives_tuples(model_type, tmp_path):
    """``from_pretrained(path, return_dict=False)`` (or ``config.return_dict = False``) was accepted and ignored:
    forward still returned a SeqRecOutput. It returns the output's tuple now, as transformers' models do; a call's
    own ``return_dict=True`` wins, and the zoo's own users of forward (predict, recommend, the all-position-label
    paths of BERT4Rec / TiM4Rec) still work."""
    tiny(model_type).save_pretrained(tmp_path)
    ref = AutoModel.from_pretrained(tmp_path).eval()
    model = AutoModel.from_pretrained(tmp_path, return_dict=False).eval()
    assert model.config.return_dict is False
    ids, mask, kw = _batch(model)
    want = ref(ids, mask, **kw)
    got = model(ids, mask, **kw)
    assert isinstance(got, tuple) and len(got) == 2                  # (logits, hidden_states)
    for a, b in zip(got, want.to_tuple()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert type(model(ids, mask, return_dict=True, **kw)).__name__ == "SeqRecOutput"
    torch.testing.assert_close(model.predict(ids, mask, **kw), ref.predict(ids, mask, **kw), rtol=0, atol=0)
    assert model.recommend([[1, 2, 3]], k=3, **({"timestamps": [[1.0, 2.0, 3.0]]} if model.uses_timestamps else {})
                           ).items == ref.recommend([[1, 2, 3]], k=3, **({"timestamps": [[1.0, 2.0, 3.0]]}
                                                                          if ref.uses_timestamps else {})).items
    labels = torch.where(mask, ids.roll(-1, 1).clamp(min=1), torch.zeros_like(ids))
    for lab in (torch.tensor([4, 7, 2]), labels):
        torch.manual_seed(0)
        loss = model(ids, mask, labels=lab, **kw)[0]
        torch.manual_seed(0)
        torch.testing.assert_close(loss, ref(ids, mask, labels=lab, **kw).loss)
    model.config.return_dict = "no"
    with pytest.raises(TypeError, match="config.return_dict must be a bool"):
        model(ids, mask, **kw)


def test_output_hidden_states():
    """``hidden_states`` (the encoder's final [B, L, D]) is returned whatever ``config.output_hidden_states`` says;
    ``output_hidden_states=False`` given to the call leaves it out (it was a TypeError), ``True`` keeps it."""
    model = tiny("sasrec")
    ids, mask, _ = _batch(model)
    assert model.config.output_hidden_states is False
    full = model(ids, mask)
    assert full.hidden_states.shape == (3, 5, 8)
    torch.testing.assert_close(model(ids, mask, output_hidden_states=True).hidden_states, full.hidden_states)
    slim = model(ids, mask, output_hidden_states=False)
    assert slim.hidden_states is None and torch.equal(slim.logits, full.logits)
    assert len(model(ids, mask, output_hidden_states=False, return_dict=False)) == 1
    with pytest.raises(TypeError, match="output_hidden_states must be a bool"):
        model(ids, mask, output_hidden_states="yes")


@pytest.mark.skipif(not hasattr(torch.compiler, "is_exporting"), reason="torch.compiler.is_exporting: torch >= 2.6")
@pytest.mark.parametrize("model_type", list(TINY))
def test_torch_export_matches_eager(model_type):
    """``torch.export.export(model, ...)`` failed on every model with a GuardOnDataDependentSymNode traceback from the
    input value checks (``int(ids.min())``). Those checks are skipped while exporting; the exported program gives
    the eager outputs on fresh inputs of the example's shapes, and the eager model keeps every check."""
    model = tiny(model_type)
    ids, mask, kw = _batch(model, seed=0)
    program = torch.export.export(model, (ids, mask), kw)
    ids2, mask2, kw2 = _batch(model, seed=7)
    assert not torch.equal(ids2, ids)
    got, want = program.module()(ids2, mask2, **kw2), model(ids2, mask2, **kw2)
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.hidden_states, want.hidden_states, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        model(torch.full_like(ids, 12), **kw)
    bad = mask.clone()
    bad[2] = ~bad[2]
    with pytest.raises(ValueError, match="padding|padded"):
        model(ids, bad, **kw)


def test_training_and_trainer_metrics_read_a_return_dict_false_checkpoint(tmp_path):
    """A checkpoint whose config says ``return_dict: false`` (transformers writes the field) makes ``forward`` return
    tuples: ``zoo.train --init-from`` read ``.loss`` of one (an AttributeError), and the Trainer's metrics got
    ``(logits, hidden_states)`` unfiltered (the Trainer filters only a dict's keys)."""
    from transformers import AutoModel

    from test_train import TINY as TRAIN_SET, _markov_file
    from zoo.hf_trainer import logits_to_ranks
    from zoo.train import main as train_main

    torch.set_num_threads(1)
    data = _markov_file(tmp_path / "markov.tsv", n_users=30, length=(8, 14))
    args = ["--model", "gru4rec", "--data", str(data), "--epochs", "1", "--max-len", "12", "--kcore", "0",
            "--no-progress", "--batch-size", "8", "--set", *TRAIN_SET["gru4rec"]]
    train_main(args + ["--out", str(tmp_path / "a")])
    m = AutoModel.from_pretrained(tmp_path / "a", return_dict=False)
    m.save_pretrained(tmp_path / "tuples")
    assert isinstance(AutoModel.from_pretrained(tmp_path / "tuples")(torch.tensor([[1, 2, 3]])), tuple)
    log = train_main(args + ["--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "tuples")])
    assert log["epochs"] and math.isfinite(log["epochs"][0]["loss"])
    logits, hidden = m(torch.tensor([[1, 2, 3], [2, 3, 4]]))
    labels = torch.tensor([4, 5])
    assert torch.equal(logits_to_ranks((logits.clone(), hidden), labels), logits_to_ranks(logits.clone(), labels))
