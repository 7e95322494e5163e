"""Hub-id resolution with bundled copies (no network), card folders, official-checkpoint conversion."""

import contextlib
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel

import zoo
from zoo import hub
from zoo.cli import UsageError
from zoo.convert import convert
from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel
from zoo.pretrained import seed_hf_cache
from zoo.vocab import UnknownItemError


@contextlib.contextmanager
def exits(capsys, code, match):
    """A command ending with exit status ``code`` and one error naming the problem (``match``) on stderr, without a
    traceback (``sys.exit("message")``: status 1, the message printed on stderr); a usage error (2) shows the usage
    line, no other status does."""
    with pytest.raises(SystemExit) as e:
        yield
    said = e.value.code if isinstance(e.value.code, str) else ""
    status = 1 if said else e.value.code
    err = capsys.readouterr().err + said
    assert status == code and re.search(match, err) and "Traceback" not in err, (e.value.code, err)
    assert ("usage:" in err) == (code == 2), err


@pytest.fixture
def bundled(tmp_path, monkeypatch):
    model = Mamba4RecModel(Mamba4RecConfig(n_items=30, hidden_size=16, d_state=4)).eval()
    model.set_item_vocab(zoo.ItemVocab(list(range(100, 129))))
    model.save_pretrained(tmp_path / "bundle" / "tiny-mamba4rec")
    monkeypatch.setenv("ZOO_BUNDLED_DIR", str(tmp_path / "bundle"))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf"))  # empty cache
    assert f"{hub.HUB_ORG}/tiny-mamba4rec" in seed_hf_cache()
    return model


@pytest.mark.parametrize("org", [hub.HUB_ORG, "org"])
def test_offline_mode_uses_bundled_copy(bundled, monkeypatch, org):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.time()
    m = AutoModel.from_pretrained(f"{org}/tiny-mamba4rec")
    assert time.time() - t < 10
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(m.eval()(ids).logits, bundled(ids).logits)
    assert m.item_vocab == bundled.item_vocab


def test_unreachable_hub_falls_back_fast(bundled, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")        # closed port: refused at once
    t = time.time()
    m = Mamba4RecModel.from_pretrained(f"{hub.HUB_ORG}/tiny-mamba4rec")
    assert time.time() - t < 10 and isinstance(m, Mamba4RecModel)
    with pytest.raises(OSError, match="not reachable"):
        Mamba4RecModel.from_pretrained(f"{hub.HUB_ORG}/no-such-model")
    with pytest.raises(OSError, match="connect"):
        AutoModel.from_pretrained(f"{hub.HUB_ORG}/no-such-model")
    for bad in ("not/a/valid/id", "/nonexistent", "./no-such-folder", "org/"):        # not Hub ids: no network call either
        with pytest.raises(ValueError, match=r"neither a local folder \(none exists there\) nor a Hub id"):
            Mamba4RecModel.from_pretrained(bad)


def test_a_hub_id_loaded_into_the_wrong_class_is_named_as_given(bundled, monkeypatch):
    """Loading a bundled Hub id into the wrong class (or with sizes its weights do not have) named only the cache
    snapshot it was resolved to (models--ssm-rec-zoo--.../snapshots/<hash>), not the id the user typed; the id comes
    first now, the folder after it."""
    from zoo.models.gru4rec import GRU4RecModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_id = f"{hub.HUB_ORG}/tiny-mamba4rec"
    with pytest.raises(ValueError, match=rf"^{re.escape(hub_id)} \(\S+snapshots\S+\) holds a 'mamba4rec' checkpoint; "
                                         r"it cannot be loaded into GRU4RecModel"):
        GRU4RecModel.from_pretrained(hub_id)
    with pytest.raises(ValueError, match=rf"^weights in {re.escape(hub_id)} \(\S+\) do not match "
                                         r"Mamba4RecModel\(mamba4rec\): tensor shapes differ"):
        zoo.SeqRecPreTrainedModel.from_pretrained(hub_id, n_items=40)


def test_push_refuses_incomplete_folder_and_missing_credentials(tmp_path, bundled, monkeypatch):
    with pytest.raises(ValueError, match="missing"):
        hub.push(str(tmp_path / "bundle" / "tiny-mamba4rec"), "me/x")
    folder = tmp_path / "bundle" / "tiny-mamba4rec"
    (folder / "README.md").write_text("card")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "nope"))
    with pytest.raises(RuntimeError, match="credentials"):
        hub.push(str(folder), "me/x")


def test_push_refuses_a_link_leading_outside_the_card_before_any_hub_call(tmp_path, bundled, monkeypatch):
    """huggingface_hub's upload_folder uploads a linked file with its target's content: a link planted in a card that
    leads outside it would publish that file. push refuses it, naming the link, before credentials are even looked
    at; a link that stays inside the card is no such problem."""
    from zoo.cli import LinkOutsideError

    folder = tmp_path / "bundle" / "tiny-mamba4rec"
    (folder / "README.md").write_text("card")
    secret = tmp_path / "id_rsa"
    secret.write_text("private")
    (folder / "config.json.bak").symlink_to(secret)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "nope"))
    with pytest.raises(LinkOutsideError, match=r"config\.json\.bak is a symbolic link to .*id_rsa, outside"):
        hub.push(str(folder), "me/x")
    (folder / "config.json.bak").unlink()
    with pytest.raises(RuntimeError, match="credentials"):      # the check passed: the next refusal is reached
        hub.push(str(folder), "me/x")


def test_existing_onnx_exports_names_a_corrupt_spec_in_one_line(tmp_path):
    """A card's onnx/state_spec.json too deep to parse is one ValueError naming the file (json.loads raised
    RecursionError: a traceback from zoo.hub card)."""
    (tmp_path / "onnx").mkdir()
    spec = tmp_path / "onnx" / "state_spec.json"
    spec.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match="corrupt .*state_spec.json: nested too deeply"):
        hub.existing_onnx_exports(tmp_path)


def test_push_uploads_the_card_folder_as_asked_with_credentials_from_the_environment(tmp_path, bundled, monkeypatch,
                                                                                     capsys):
    """With ``HF_TOKEN`` set and no token argument, ``push`` (and ``python -m zoo.hub push``) creates the repo with the
    visibility asked for and uploads that folder, not the one above it (it refused with "no Hugging Face credentials:
    set HF_TOKEN ...": ``HfApi().token`` is only the constructor's argument); a folder that lacks the weights or the
    vocabulary is refused before any Hub call. No network: HfApi's calls are recorded instead."""
    from tests.hub_fakes import record_hub_calls

    calls = record_hub_calls(monkeypatch, token_path=tmp_path / "nope")
    folder = tmp_path / "bundle" / "tiny-mamba4rec"
    (folder / "README.md").write_text("card")
    for private in (True, False):
        calls.clear()
        assert hub.push(str(folder), "me/tiny", private=private) == "commit-info"
        # --private also turns an existing public repo private (create_repo(exist_ok=True) would leave it public)
        assert [c[0] for c in calls] == ["create_repo"] + ["update_repo_settings"] * private + ["upload_folder"], calls
        assert calls[0][1] == "me/tiny" and calls[0][2].get("private") is private, calls[0]
        if private:
            assert calls[1][1] == "me/tiny" and calls[1][2] == {"private": True}, calls[1]
        up = calls[-1][1]
        assert Path(up["folder_path"]).resolve() == folder.resolve() and up["repo_id"] == "me/tiny", up
        # hidden entries -- interrupted writers' stages, at the top or below -- are not published (upload_folder's own
        # defaults let .save-*/model.safetensors through)
        from huggingface_hub.utils import filter_repo_objects

        files = ["README.md", "onnx/model.onnx", ".save-a/model.safetensors", "onnx/.export-staging-b/model.onnx",
                 ".tiny.staged-c/config.json", ".model.safetensors.x1y2"]
        assert list(filter_repo_objects(files, ignore_patterns=up["ignore_patterns"])) == files[:2], up
    calls.clear()
    hub.main(["push", str(folder), "--repo-id", "me/cli", "--private"])
    assert "commit-info" in capsys.readouterr().out
    assert calls[0][1] == "me/cli" and calls[0][2].get("private") is True and calls[-1][1]["repo_id"] == "me/cli"
    for f in ("model.safetensors", "item_vocab.json"):
        calls.clear()
        (folder / f).rename(tmp_path / f)
        with pytest.raises(ValueError, match=rf"is not a complete card folder: missing \['{f}'\]"):
            hub.push(str(folder), "me/tiny")
        (tmp_path / f).rename(folder / f)
        assert calls == []
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[:len(weights) // 2])      # cut short: would load nowhere
    with pytest.raises(ValueError, match=r"does not load, so it is not pushed: corrupt weight file"):
        hub.push(str(folder), "me/tiny")
    assert calls == []                                                        # refused before any Hub call


@pytest.mark.parametrize("cmd", ["card", "push"])
@pytest.mark.parametrize("repo_id", ["me/a/b", "me/my model", "me/x.git", "me/--x", ""])
def test_a_repo_id_the_hub_refuses_is_a_usage_error(cmd, repo_id, tmp_path, monkeypatch, capsys):
    """--repo-id was taken as given: `push` met a bad one only at create_repo, and `card` wrote a card whose example
    loads an id it can never be published as. Now huggingface_hub's own rule refuses it (2) before anything is read,
    measured or written."""
    monkeypatch.setattr(hub, "push", lambda *a, **k: pytest.fail("push ran"))
    monkeypatch.setattr(hub, "build_card_folder", lambda *a, **k: pytest.fail("card ran"))
    argv = (["card", "--run", str(tmp_path / "m"), "--name", "x", "--data", str(tmp_path / "d"),
             "--out", str(tmp_path / "out")] if cmd == "card" else ["push", str(tmp_path / "f")])
    with pytest.raises(SystemExit) as e:
        hub.main(argv + ["--repo-id", repo_id])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --repo-id: not a Hub repository id: " in err, err
    assert not (tmp_path / "out").exists()


def test_list_names_each_bundled_model_by_its_hub_id(bundled, tmp_path, capsys):
    """``python -m zoo.hub list``: a line per bundled model, its Hub id (what from_pretrained takes) and its folder,
    then what its card says (``-`` for a folder without one): model type, dataset, protocol, test HR@10, NDCG@10."""
    import json

    hub.main(["list"])
    lines = capsys.readouterr().out.splitlines()
    assert f"{hub.HUB_ORG}/tiny-mamba4rec\t{tmp_path / 'bundle' / 'tiny-mamba4rec'}\tmamba4rec\t-\t-\t-\t-" in lines
    card = Path(__file__).resolve().parents[1] / "hub_cards" / "mamba4rec-ml1m"
    info = json.loads((card / "eval_results.json").read_text())
    assert hub.card_summary(card) == ["mamba4rec", "MovieLens-1M (5-core)", "RecBole protocol",
                                      f"{info['metrics']['HR@10']:.4f}", f"{info['metrics']['NDCG@10']:.4f}"]


def _official_layout(model):
    sd = model.state_dict()
    out = {}
    for k, v in sd.items():
        k = k.replace("layer_norm.", "LayerNorm.")
        out[k] = v.clone()
    return out


@pytest.mark.parametrize("num_layers", [1, 2])
def test_convert_official_mamba4rec_checkpoint(tmp_path, num_layers):
    src = Mamba4RecModel(Mamba4RecConfig(n_items=40, hidden_size=32, d_state=8, num_layers=num_layers)).eval()
    sd = _official_layout(src)
    assert "LayerNorm.weight" in sd and "mamba_layers.0.ffn.LayerNorm.weight" in sd
    torch.save({"state_dict": sd, "other_parameter": {"epoch": 3}}, tmp_path / "Mamba4Rec.pth")
    (tmp_path / "tokens.txt").write_text("[PAD]\n" + "\n".join(str(1000 + i) for i in range(39)))
    convert("mamba4rec", str(tmp_path / "Mamba4Rec.pth"), str(tmp_path / "out"), str(tmp_path / "tokens.txt"),
            max_seq_length=50)
    m = AutoModel.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(1, 40, (3, 17))
    assert torch.equal(m(ids).logits, src(ids).logits)
    assert m.config.num_layers == num_layers and m.item_vocab.decode([1]) == [1000]


class Config:  # stands in for RecBole's Config object
    pass


class RecBoleConfig:  # stands in for RecBole's Config object, with the settings it keeps
    def __init__(self, settings):
        self.final_config_dict = dict(settings)


RECBOLE_SASREC = Path(__file__).parent / "data" / "recbole_sasrec"


def _score_fixture_histories(model):
    """``(zoo scores, RecBole's scores)`` ``[32, 1350]`` on the fixture's right-padded random histories."""
    z = np.load(RECBOLE_SASREC / "scores.npz")
    ids, lens = torch.from_numpy(z["item_id_list"]), torch.from_numpy(z["item_length"])
    with torch.no_grad():
        ours = model.eval()(ids, torch.arange(ids.shape[1])[None] < lens[:, None]).logits
    return ours, torch.from_numpy(z["scores"])


def test_convert_real_recbole_sasrec_checkpoint(tmp_path):
    """A SASRec trained by RecBole 1.2.0 itself (2 layers, 2 heads, hidden 32, 20 positions, ML-100K; made by
    ``bench/recbole_reference.py``, see ``tests/data/recbole_sasrec/README.md``) converts to the zoo's SASRec with the
    same scores as RecBole's own ``full_sort_predict`` on 32 random right-padded histories (lengths 1..20)."""
    ckpt = str(RECBOLE_SASREC / "state_dict.pth")
    with pytest.raises(UsageError, match="attention heads is not in the weights"):    # a ValueError for the API
        convert("sasrec", ckpt, str(tmp_path / "refused"))
    assert not (tmp_path / "refused").exists()
    convert("sasrec", ckpt, str(tmp_path / "out"), overrides={"num_heads": 2})
    m = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert (m.config.hidden_size, m.config.num_layers, m.config.max_seq_length, m.config.n_items) == (32, 2, 20, 1350)
    ours, theirs = _score_fixture_histories(m)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= 1e-5                                # fp32, RecBole's own forward
    top_ours, top_theirs = ours[:, 1:].topk(10).indices, theirs[:, 1:].topk(10).indices
    assert (top_ours == top_theirs).float().mean() >= 0.99
    # a wrong head count loads and runs but scores differently: the reason the converter asks for it
    convert("sasrec", ckpt, str(tmp_path / "heads4"), overrides={"num_heads": 4})
    wrong, _ = _score_fixture_histories(AutoModel.from_pretrained(tmp_path / "heads4"))
    assert (wrong - theirs).abs().max() > 1e-2
    with pytest.raises(ValueError, match="weights say hidden_size = 32"):
        convert("sasrec", ckpt, str(tmp_path / "x"), overrides={"num_heads": 2, "hidden_size": 64})
    with pytest.raises(ValueError, match="weights say max_seq_length = 20"):
        convert("sasrec", ckpt, str(tmp_path / "x"), overrides={"num_heads": 2, "max_seq_length": 50})
    with pytest.raises(ValueError, match="has 20 positions"):
        convert("sasrec", ckpt, str(tmp_path / "x"), max_seq_length=50, overrides={"num_heads": 2})


def test_convert_cli_reports_a_refusal_as_an_error_line(tmp_path, capsys):
    """``python -m zoo.convert`` turns the converter's refusals into one error line naming the fix (exit status set,
    no traceback) and writes nothing."""
    from zoo.convert import main
    ckpt = str(RECBOLE_SASREC / "state_dict.pth")
    with pytest.raises(SystemExit) as e:          # the --set it needs here: a usage error (2) naming the fix
        main(["--model", "sasrec", "--checkpoint", ckpt, "--out", str(tmp_path / "refused")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "usage:" in err and "error:" in err and "--set num_heads" in err, err
    assert not (tmp_path / "refused").exists()
    with pytest.raises(SystemExit, match="checkpoint .*missing.pth not found"):   # not "probably RecBole's Config"
        main(["--model", "sasrec", "--checkpoint", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "x")])
    # a file that is no checkpoint, an empty one and a truncated one are named as such (were unpickler tracebacks
    # with --trust-pickle, or the advice to trust the file)
    (tmp_path / "notes.pth").write_text("# not weights\n")
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "cut.pth").write_bytes((RECBOLE_SASREC / "state_dict.pth").read_bytes()[:1000])
    for name, msg in (("notes.pth", "is not a PyTorch checkpoint .*neither torch.save's zip archive nor a pickle"),
                      ("empty.pth", r"is not a PyTorch checkpoint \(empty file\)"),
                      ("cut.pth", "is a truncated or corrupt checkpoint")):
        for trust in ([], ["--trust-pickle"]):
            with pytest.raises(SystemExit, match=msg):
                main(["--model", "sasrec", "--checkpoint", str(tmp_path / name), "--out", str(tmp_path / "x"), *trust])
    assert not (tmp_path / "x").exists()
    main(["--model", "sasrec", "--checkpoint", ckpt, "--out", str(tmp_path / "ok"), "--set", "num_heads=2"])
    assert "wrote" in capsys.readouterr().out and (tmp_path / "ok" / "model.safetensors").exists()


def test_convert_applies_every_repeated_set_and_refuses_a_key_given_twice(tmp_path, capsys):
    """``zoo.convert --set a=1 --set b=2`` applies both (the second --set replaced the first's values, silently); a
    key given twice with different values is an error line naming it."""
    from zoo.convert import main

    args = ["--model", "sasrec", "--checkpoint", str(RECBOLE_SASREC / "state_dict.pth")]
    main(args + ["--out", str(tmp_path / "ok"), "--set", "num_heads=2", "--set", "attn_dropout=0.25"])
    cfg = json.loads((tmp_path / "ok" / "config.json").read_text())
    assert cfg["num_heads"] == 2 and cfg["attn_dropout"] == 0.25
    with exits(capsys, 2, "error: --set gives num_heads twice, num_heads=2 and num_heads=1: give it once"):
        main(args + ["--out", str(tmp_path / "x"), "--set", "num_heads=2", "--set", "num_heads=1"])
    assert not (tmp_path / "x").exists()


def test_convert_reads_recbole_settings_from_a_trusted_checkpoint(tmp_path):
    """Fields the weights do not show come from the checkpoint's RecBole Config (with --trust-pickle)."""
    sd = torch.load(RECBOLE_SASREC / "state_dict.pth", weights_only=True)["state_dict"]
    settings = {"n_heads": 4, "hidden_act": "relu", "layer_norm_eps": 1e-5, "hidden_dropout_prob": 0.3,
                "attn_dropout_prob": 0.1, "MAX_ITEM_LIST_LENGTH": 20, "dataset": "ml-100k", "topk": [10]}
    torch.save({"state_dict": sd, "config": RecBoleConfig(settings)}, tmp_path / "SASRec.pth")
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        convert("sasrec", str(tmp_path / "SASRec.pth"), str(tmp_path / "no"))
    m = convert("sasrec", str(tmp_path / "SASRec.pth"), str(tmp_path / "out"), trust_pickle=True)
    c = m.config
    assert (c.num_heads, c.hidden_act, c.layer_norm_eps, c.hidden_dropout, c.attn_dropout) == (4, "relu", 1e-5, 0.3, 0.1)
    m = convert("sasrec", str(tmp_path / "SASRec.pth"), str(tmp_path / "out2"), trust_pickle=True,
                overrides={"num_heads": 2})                                   # --set wins over the checkpoint
    assert m.config.num_heads == 2
    src = Mamba4RecModel(Mamba4RecConfig(n_items=20, hidden_size=16, d_state=4))
    torch.save({"state_dict": _official_layout(src),
                "config": RecBoleConfig({"MAX_ITEM_LIST_LENGTH": 50, "dropout_prob": 0.4})}, tmp_path / "M.pth")
    m = convert("mamba4rec", str(tmp_path / "M.pth"), str(tmp_path / "m"), trust_pickle=True)
    assert (m.config.max_seq_length, m.config.dropout_prob) == (50, 0.4)
    m = convert("mamba4rec", str(tmp_path / "M.pth"), str(tmp_path / "m2"), trust_pickle=True, max_seq_length=200)
    assert m.config.max_seq_length == 200


def test_trusted_checkpoint_converts_without_recbole_installed(tmp_path, monkeypatch):
    """A real RecBole checkpoint pickles RecBole's own classes (Config, enums); with --trust-pickle it converts in an
    environment without RecBole, its settings read off the pickled attributes."""
    import enum
    import sys
    import types

    fake = types.ModuleType("recbole_absent_config")

    class Config:                                  # pickled as recbole_absent_config.Config
        def __init__(self):
            self.final_config_dict = {"n_heads": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
                                      "MAX_ITEM_LIST_LENGTH": 20, "MODEL_TYPE": ModelType.SEQUENTIAL}

    class ModelType(enum.Enum):
        SEQUENTIAL = 2

    for cls in (Config, ModelType):
        cls.__module__, cls.__qualname__ = fake.__name__, cls.__name__
        setattr(fake, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    sd = torch.load(RECBOLE_SASREC / "state_dict.pth", weights_only=True)["state_dict"]
    torch.save({"state_dict": sd, "config": Config(), "other_parameter": None}, tmp_path / "SASRec.pth")
    monkeypatch.delitem(sys.modules, fake.__name__)                             # "RecBole" is gone
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        convert("sasrec", str(tmp_path / "SASRec.pth"), str(tmp_path / "no"))
    m = convert("sasrec", str(tmp_path / "SASRec.pth"), str(tmp_path / "out"), trust_pickle=True)
    assert (m.config.num_heads, m.config.hidden_act, m.config.max_seq_length) == (2, "gelu", 20)
    ours, theirs = _score_fixture_histories(m)
    assert (ours - theirs).abs().max() <= 1e-5


def test_convert_refuses_unsafe_pickle(tmp_path):
    src = Mamba4RecModel(Mamba4RecConfig(n_items=20, hidden_size=16, d_state=4))
    torch.save({"state_dict": _official_layout(src), "config": Config()}, tmp_path / "ckpt.pth")
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        convert("mamba4rec", str(tmp_path / "ckpt.pth"), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="not a Mamba4Rec state dict"):
        torch.save({"foo": torch.zeros(1)}, tmp_path / "other.pth")
        convert("mamba4rec", str(tmp_path / "other.pth"), str(tmp_path / "out2"))


def test_training_stages_follow_init_from_through_card_folders(tmp_path):
    """run a -> run b (--init-from a) -> card c (built from b, keeps every stage) -> run d (--init-from c)."""
    import json

    def log(folder, cmd, init_from=None, epochs=2):
        folder.mkdir()
        (folder / "train_log.json").write_text(json.dumps({
            "command": cmd, "init_from": None if init_from is None else str(init_from), "best_epoch": epochs,
            "best_valid_NDCG10": 0.1 * epochs, "train_minutes": 10.0 * epochs, "stopped": "max epochs",
            "epochs": [{"epoch": i + 1} for i in range(epochs)]}))
        return folder

    a = log(tmp_path / "a", "train a")
    b = log(tmp_path / "b", "train b", a, epochs=3)
    assert [s["command"] for s in hub.training_stages(b)] == ["train a", "train b"]
    card = tmp_path / "card"
    card.mkdir()
    (card / hub.STAGES_FILE).write_text(json.dumps({"stages": hub.training_stages(b)}))
    d = log(tmp_path / "d", "train d", card, epochs=1)
    stages = hub.training_stages(d)
    assert [s["command"] for s in stages] == ["train a", "train b", "train d"]
    md = hub._stages_markdown(stages)
    assert "6 epochs, 60 minutes in all" in md and md.count("\n| ") == 4          # header + 3 stage rows
    assert hub._stages_markdown(stages[:1]) == ""
    # a stage that logged its starting checkpoint's validation shows where it started
    md = hub._stages_markdown([stages[0], {**stages[1], "init_valid_NDCG10": 0.25}])
    assert "| 0.2500 → 0.3000 |" in md and "| 0.2000 |" in md, md
    # re-carding d into the card folder it started from: d's stage is already there, and is not counted twice
    (card / hub.STAGES_FILE).write_text(json.dumps({"stages": stages}))
    assert [s["command"] for s in hub.training_stages(d)] == ["train a", "train b", "train d"]
    e = log(tmp_path / "e", "train e", tmp_path / "missing")                      # broken chain: what is known
    assert [s["command"] for s in hub.training_stages(e)] == ["train e"]


def test_card_says_why_a_checkpoint_misses_its_reference():
    """A run that finished a decaying schedule is not called 'not yet trained to convergence'; any other miss is."""
    finished = {"stopped": "max epochs", "epochs": [{}] * 42, "train": {"lr_schedule": "linear"}}
    assert "complete 42-epoch run" in hub._below_reference_note(finished)
    assert "not yet trained to convergence" not in hub._below_reference_note(finished)
    # a Trainer run that took its max_steps (zoo.hf_trainer.save_run's "max steps") decayed over them too
    assert "complete 42-epoch run" in hub._below_reference_note({**finished, "stopped": "max steps"})
    # --decay-over budget: the decay ends at the time budget, so a run stopped by that budget finished it too
    paced = {"stopped": "time budget of 135.0 minutes reached", "epochs": [{}] * 233,
             "train": {"lr_schedule": "linear", "decay_over": "time budget of 135.0 minutes"}}
    assert "complete 233-epoch run" in hub._below_reference_note(paced)
    unpaced = {**paced, "train": {"lr_schedule": "linear"}}                  # decay planned over epochs: cut short
    assert "not yet trained to convergence" in hub._below_reference_note(unpaced)
    for log in ({"stopped": "time budget of 95 minutes reached", "train": {"lr_schedule": "linear"}},
                {"stopped": "max epochs", "train": {"lr_schedule": "constant"}}, {}):
        assert "not yet trained to convergence" in hub._below_reference_note(log)
    # a partial miss names the metrics on each side; a miss on every metric needs no list
    part = hub._below_reference_note(finished, ["HR@20"], ["HR@10", "NDCG@10"])
    assert part.startswith("**Below the reference numbers** at HR@20 (meets or beats them at HR@10, NDCG@10) after")
    assert hub._below_reference_note(finished, ["HR@10"], []).startswith("**Below the reference numbers** after")


def test_recarding_refreshes_the_cards_onnx_graph(tmp_path):
    """Carding new weights into a folder that holds an ONNX export re-exports (and verifies) that graph, and keeps
    the card's ONNX section; a stale graph of the old weights would otherwise be served silently."""
    import hashlib
    import json

    import numpy as np
    import torch

    from export.onnx import CARD_BEGIN, main as onnx_main
    from tests.test_train import TINY, _markov_file
    from zoo.train import main as train_main

    torch.set_num_threads(1)
    data = str(_markov_file(tmp_path / "markov.tsv", n_users=40, length=(12, 20)))
    common = ["--model", "mamba4rec", "--data", data, "--epochs", "1", "--max-len", "20", "--kcore", "0",
              "--no-progress", "--set", *TINY["mamba4rec"]]
    train_main(common + ["--out", str(tmp_path / "a")])
    train_main(common + ["--out", str(tmp_path / "b"), "--seed", "7"])
    card = tmp_path / "card"
    hub.build_card_folder(str(tmp_path / "a"), "tiny", data, out_dir=str(card))
    assert hub.existing_onnx_exports(card) == []
    assert onnx_main(["--model", str(card), "--card-dir", str(card), "--topk", "5", "--verify-prime", "10",
                      "--verify-steps", "10", "--verify-cases", "50"]) == 0
    assert hub.existing_onnx_exports(card) == [["--kind", "step", "--topk", "5"]]
    digest = lambda: hashlib.sha256((card / "onnx" / "model.onnx").read_bytes()).hexdigest()  # noqa: E731
    before = digest()
    hub.build_card_folder(str(tmp_path / "b"), "tiny", data, out_dir=str(card), overwrite=True)   # another run's
    assert digest() != before
    assert CARD_BEGIN in (card / "README.md").read_text()
    spec = json.loads((card / "onnx" / "state_spec.json").read_text())
    assert spec["topk"] == 5 and spec["verification"]["passed"]
    # the refreshed graph ranks like the new weights (one priming call on one history)
    from transformers import AutoModel

    from export.runtime import OnnxStepSession

    model = AutoModel.from_pretrained(str(card)).eval()
    got = OnnxStepSession(card / "onnx").prime([[1, 2, 3, 4]])
    want = model.predict(torch.tensor([[1, 2, 3, 4]]))[0].topk(5).indices
    assert np.asarray(got.topk_ids)[0].tolist() == want.tolist()


def test_existing_onnx_exports_reads_every_export_flag(tmp_path):
    """Re-carding re-exports a card's graphs with the flags they were made with (read from state_spec.json)."""
    import json

    for rel, spec in (("onnx", {"kind": "step", "topk": 20, "precision": "fp16", "time_input": "gaps",
                                "outputs": [{"name": "topk_ids"}, {"name": "scores"}], "exclude_seen": True}),
                      ("onnx-window", {"kind": "window", "topk": 10, "outputs": [{"name": "topk_ids"}]})):
        (tmp_path / rel).mkdir()
        (tmp_path / rel / "state_spec.json").write_text(json.dumps(spec))
    assert hub.existing_onnx_exports(tmp_path) == [
        ["--kind", "step", "--topk", "20", "--fp16", "--time-input", "gaps", "--scores", "--exclude-seen"],
        ["--kind", "window", "--topk", "10"]]


def test_card_compares_with_the_reference_under_the_references_protocol(tmp_path):
    """BERT4Rec's only published ML-1M number is history-masked (LRURec Table 3): a RecBole-protocol card must
    compare the model's history-masked numbers with it, never numbers of two protocols side by side."""
    import json

    import pytest

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert4rec", "n_items": 3417}))
    recbole = {"HR@10": 0.25, "NDCG@10": 0.13, "HR@20": 0.35, "NDCG@20": 0.16}
    masked = {"HR@10": 0.31, "NDCG@10": 0.17, "HR@20": 0.42, "NDCG@20": 0.20}
    protocol = {"name": "RecBole protocol", "history_masked": False, "command": "python -m zoo.evaluate ..."}
    dataset = {"name": "MovieLens-1M", "type": "ml-1m", "users": 6040, "benchmark": hub.PUBLISHED_ON}
    log = {"stopped": "max epochs", "epochs": [{}] * 3, "train": {"lr_schedule": "linear"}}
    with pytest.raises(ValueError, match="another protocol"):
        hub.make_card(tmp_path, "b4r", recbole, protocol, dataset, log)
    ref_cmd = "python -m zoo.evaluate --model ssm-rec-zoo/b4r --data ml-1m.5core.seq.gz --exclude-history"
    card = Path(hub.make_card(tmp_path, "b4r", recbole, protocol, dataset, log,
                              reference_metrics={"metrics": masked, "command": ref_cmd})).read_text()
    section = card.split("## Against the published numbers")[1]
    assert ref_cmd in section and "| HR@10 | 0.3089 | 0.3100 | +0.0011 |" in section
    assert "**Meets or beats every published number.**" in section
    # the same protocol needs no second measurement, and the headline numbers are compared
    protocol_masked = dict(protocol, name="LRURec protocol", history_masked=True)
    card = Path(hub.make_card(tmp_path, "b4r", recbole, protocol_masked, dataset, log)).read_text()
    assert "| HR@10 | 0.3089 | 0.2500 | -0.0589 |" in card and "Below the reference numbers" in card
    # with the test users' intervals: stated under the table, and which published numbers lie inside them
    iv = {"HR@10": (0.24, 0.26), "NDCG@10": (0.12, 0.17), "MRR@10": (0.09, 0.11)}
    card = Path(hub.make_card(tmp_path, "b4r", recbole, protocol_masked, dataset, log, intervals=iv)).read_text()
    assert "95% intervals over the test users" in card and "HR@10 [0.2400, 0.2600], NDCG@10 [0.1200, 0.1700]" in card
    assert "published inside this model's 95% interval? |" in card
    assert "| HR@10 | 0.3089 | 0.2500 | -0.0589 | no |" in card and "| NDCG@10 | 0.1638 | 0.1300 | -0.0338 | yes |" in card
    hr20 = next(line for line in card.splitlines() if line.startswith("| HR@20 |"))
    assert hr20.endswith("| – |"), hr20                               # no interval at @20: not claimed either way


def test_a_target_reference_is_not_called_published(tmp_path):
    """SASRec's reference is a target, not a published number (its source says so), but the card's table headed it
    "published" (and "published inside this model's 95% interval?"): a target is called a target."""
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "sasrec", "n_items": 3417}))
    metrics = {"HR@10": 0.31, "NDCG@10": 0.18}
    protocol = {"name": "RecBole protocol", "history_masked": False, "command": "python -m zoo.evaluate ..."}
    dataset = {"name": "MovieLens-1M", "type": "ml-1m", "users": 6040, "benchmark": hub.PUBLISHED_ON}
    log = {"stopped": "max epochs", "epochs": [{}] * 3, "train": {"lr_schedule": "linear"}}
    iv = {"HR@10": (0.29, 0.33), "NDCG@10": (0.17, 0.19)}
    card = Path(hub.make_card(tmp_path, "s", metrics, protocol, dataset, log, intervals=iv)).read_text()
    section = card.split("## Against the target numbers")[1]
    assert "| metric | target | this model | difference | target inside this model's 95% interval? |" in section
    assert "**Meets or beats every target number.**" in section and "published |" not in section
    bundled = (Path(__file__).resolve().parents[1] / "hub_cards" / "sasrec-ml1m" / "README.md").read_text()
    assert "## Against the target numbers" in bundled and "| metric | target |" in bundled


def test_card_states_the_optimiser_in_words():
    """The card's Optimiser line is prose, not a Python dict, and names what AdamW leaves undecayed."""
    assert hub._optimiser_text({"optimizer": "adam", "lr": 0.001, "weight_decay": 0.0, "batch_size": 32,
                                "clip": 0.0, "lr_schedule": "linear"}) == \
        "Adam, lr 0.001 (linear decay to 0), weight decay 0, batch 32, no gradient clipping"
    assert hub._optimiser_text({"optimizer": "adamw", "lr": 0.001, "weight_decay": 0.01, "batch_size": 128,
                                "clip": 5.0, "lr_schedule": "constant"}) == \
        ("AdamW (no decay on biases and normalization gains), lr 0.001, weight decay 0.01, batch 128, "
         "gradient clip-norm 5")
    assert hub._optimiser_text({"optimizer": "adam", "lr": 0.001, "weight_decay": 0.0, "batch_size": 32, "clip": 0.0,
                                "lr_schedule": "linear", "decay_over": "time budget of 120.0 minutes"}).startswith(
        "Adam, lr 0.001 (linear decay to 0 over the time budget of 120.0 minutes), ")
    assert hub._threads_text(1) == "1 CPU thread" and hub._threads_text(2) == "2 CPU threads"


def test_build_card_folder_measures_under_the_references_protocol(tmp_path, monkeypatch):
    """Carding a BERT4Rec run (RecBole protocol) also evaluates it with the history masked, as its reference was
    measured; eval_results.json keeps those numbers, and they are what evaluate_model gives under that protocol."""
    import json

    import torch

    from tests.test_train import _markov_file
    from zoo.data import leave_one_out, load_dataset
    from zoo.evaluate import align_with_model, evaluate_model
    from zoo.train import main as train_main

    torch.set_num_threads(1)
    data = str(_markov_file(tmp_path / "markov.tsv", n_users=40, length=(12, 20)))
    _stand_in_for_the_published_benchmark(monkeypatch, data)
    train_main(["--model", "bert4rec", "--data", data, "--epochs", "1", "--max-len", "20", "--kcore", "0",
                "--no-progress", "--out", str(tmp_path / "run"), "--set", "hidden_size=16", "inner_size=32"])
    card = tmp_path / "card"
    hub.build_card_folder(str(tmp_path / "run"), "tiny-b4r", data, out_dir=str(card))
    info = json.loads((card / "eval_results.json").read_text())
    ref = info["reference_protocol"]
    assert info["exclude_history"] is False and ref["exclude_history"] is True
    assert ref["command"].endswith("--exclude-history")
    model = AutoModel.from_pretrained(str(card))
    ds, _ = align_with_model(load_dataset(data), model)
    masked = evaluate_model(model, leave_one_out(ds).test, ks=(5, 10, 20), exclude_history=True, progress=False)
    assert all(abs(masked[k] - v) < 1e-9 for k, v in ref["metrics"].items())
    text = (card / "README.md").read_text()
    assert ref["command"] in text and "Cloze" in text and f"| HR@10 | 0.3089 | {masked['HR@10']:.4f} |" in text
    # re-carding from a second run against data the model cannot rank (unknown items) fails before it replaces
    # anything in the card folder
    train_main(["--model", "bert4rec", "--data", data, "--epochs", "1", "--max-len", "20", "--kcore", "0",
                "--seed", "5", "--no-progress", "--out", str(tmp_path / "run2"), "--set", "hidden_size=16",
                "inner_size=32"])
    other = str(_markov_file(tmp_path / "other.tsv", n_users=40, n_items=60, length=(12, 20)))
    before = {f.name: f.read_bytes() for f in card.iterdir()}
    with pytest.raises(UnknownItemError):
        hub.build_card_folder(str(tmp_path / "run2"), "tiny-b4r", other, out_dir=str(card), overwrite=True)
    assert {f.name: f.read_bytes() for f in card.iterdir()} == before
    # a run folder that is not there, or not a finished run, is named before any evaluation (was a Hub-id error
    # from from_pretrained, or a missing train_log.json after the evaluation)
    (tmp_path / "run2" / "train_log.json").unlink()
    for run, message in ((tmp_path / "nope", "run folder .*nope not found"),
                         (tmp_path / "run2", r".*run2 is neither a finished zoo.train run, a zoo.soup folder nor a card folder: missing \['train_log.json'\]")):
        with pytest.raises(SystemExit, match="card not written: " + message):
            hub.main(["card", "--run", str(run), "--name", "tiny-b4r", "--data", data, "--out", str(card)])
    assert {f.name: f.read_bytes() for f in card.iterdir()} == before


def _stand_in_for_the_published_benchmark(monkeypatch, data):
    """Let generated data (loaded with ``--kcore 0``, as the tiny runs are) stand for the ML-1M 5-core: a card compares
    with the published numbers only on the data they were measured on, recognised by its statistics."""
    from zoo.data import load_dataset

    loaded = load_dataset(data, kcore=None)
    monkeypatch.setitem(hub.BENCHMARKS, hub.PUBLISHED_ON,
                        ((loaded.n_users, loaded.n_items, loaded.n_interactions), "ml-1m", "MovieLens-1M (5-core)"))


def _tiny_gru4rec_run(tmp_path):
    """``(data, common)``: a generated interaction file and a tiny one-epoch GRU4Rec run of it in ``tmp_path / "a"``;
    ``common`` is that run's command line without ``--out``."""
    import torch

    from tests.test_train import TINY, _markov_file
    from zoo.train import main as train_main

    torch.set_num_threads(1)
    data = str(_markov_file(tmp_path / "markov.tsv", n_users=30, length=(12, 20)))
    common = ["--model", "gru4rec", "--data", data, "--epochs", "1", "--max-len", "20", "--kcore", "0",
              "--no-progress", "--set", *TINY["gru4rec"]]
    train_main(common + ["--out", str(tmp_path / "a")])
    return data, common


def test_keep_notes_carries_a_cards_notes_to_the_next_card(tmp_path):
    """--keep-notes: the notes of the card being replaced (between the notes markers) come first in the new card,
    the new --notes after them; a card written before the markers is refused rather than guessed at."""
    from zoo.train import main as train_main

    data, common = _tiny_gru4rec_run(tmp_path)
    card = tmp_path / "card"
    hub.build_card_folder(str(tmp_path / "a"), "tiny", data, out_dir=str(card), notes="## Stage 1 note\n\nfirst")
    assert hub.card_notes(card) == "## Stage 1 note\n\nfirst"
    train_main(common + ["--out", str(tmp_path / "b"), "--init-from", str(card)])
    (tmp_path / "n2.md").write_text("## Stage 2 note\n\nsecond\n")
    hub.main(["card", "--run", str(tmp_path / "b"), "--name", "tiny", "--data", data, "--out", str(card),
              "--keep-notes", "--notes", str(tmp_path / "n2.md")])
    assert hub.card_notes(card) == "## Stage 1 note\n\nfirst\n\n## Stage 2 note\n\nsecond"
    text = (card / "README.md").read_text()
    assert text.count("## Stage 1 note") == 1 and text.index("## Stage 1 note") < text.index("## Stage 2 note")
    (card / "README.md").write_text("# old card\n\n## Some notes\n")          # no markers
    with pytest.raises(SystemExit, match="no <!-- zoo:notes --> markers"):
        hub.main(["card", "--run", str(tmp_path / "b"), "--name", "tiny", "--data", data, "--out", str(card),
                  "--keep-notes"])
    assert (card / "README.md").read_text() == "# old card\n\n## Some notes\n"


def test_card_into_a_folder_of_other_files_needs_overwrite(tmp_path, capsys):
    """``zoo.hub card --out`` a folder holding hand-written notes, another model or a card of another history is
    refused before any measuring, naming what is there, unless --overwrite (it replaced them silently: a mistyped
    --name replaced another card); a later stage of the card in --out (a run --init-from it) and an empty folder need
    no flag."""
    from zoo.train import main as train_main

    data, common = _tiny_gru4rec_run(tmp_path)
    run = ["card", "--run", str(tmp_path / "a"), "--name", "tiny", "--data", data]
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "README.md").write_text("# My project notes - handwritten\n")
    with exits(capsys, 2, r"card not written: --out .*docs already holds files \(README.md\); its README.md is not a "
                          r"model card \(no front matter\): choose another --out \(or --name\), or pass --overwrite"):
        hub.main(run + ["--out", str(docs)])
    assert [p.name for p in docs.iterdir()] == ["README.md"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "sasrec"}')
    with exits(capsys, 2, r"its config.json is a sasrec model, the run's a gru4rec"):
        hub.main(run + ["--out", str(other)])
    assert (other / "config.json").read_text() == '{"model_type": "sasrec"}'
    card = tmp_path / "card"
    hub.main(run + ["--out", str(card)])
    train_main(common + ["--out", str(tmp_path / "b"), "--seed", "7"])                 # not a stage of the card
    before = {p.name: p.read_bytes() for p in card.iterdir() if p.is_file()}
    with exits(capsys, 2, r"it holds a card of another history \(the run does not continue its stages\)"):
        hub.main(["card", "--run", str(tmp_path / "b"), "--name", "tiny", "--data", data, "--out", str(card)])
    assert {p.name: p.read_bytes() for p in card.iterdir() if p.is_file()} == before
    hub.main(["card", "--run", str(tmp_path / "b"), "--name", "tiny", "--data", data, "--out", str(card),
              "--overwrite"])
    assert (card / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    train_main(common + ["--out", str(tmp_path / "c"), "--init-from", str(card)])      # a later stage of it
    hub.main(["card", "--run", str(tmp_path / "c"), "--name", "tiny", "--data", data, "--out", str(card)])
    assert (card / "model.safetensors").read_bytes() == (tmp_path / "c" / "model.safetensors").read_bytes()
    hub.main(run + ["--out", str(docs), "--overwrite"])
    assert (docs / "README.md").read_text().startswith("---\n")


def test_card_overwrite_and_push_refuse_files_that_are_no_part_of_a_card(tmp_path, monkeypatch, capsys):
    """``zoo.hub card --overwrite`` replaced a card's files and kept anything else in --out beside the new card (a
    precious.txt), and ``zoo.hub push`` then published it: --overwrite now refuses a folder holding files no card
    writes (usage error, folder untouched); push lists such files and refuses the folder (usage error, no Hub call)
    unless --allow-extra; the files a card holds (ONNX graphs included) and hidden entries are never listed. Card's
    --no-progress reaches the evaluation. No network: HfApi's calls are recorded instead."""
    import shutil

    import zoo.evaluate

    data, _ = _tiny_gru4rec_run(tmp_path)
    # written for the id it is pushed to below (push refuses a card whose code loads its local folder)
    run = ["card", "--run", str(tmp_path / "a"), "--name", "tiny", "--data", data, "--repo-id", "me/tiny"]
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "README.md").write_text("# notes\n")
    (docs / "precious.txt").write_text("keep")
    with exits(capsys, 2, r"card not written: --out .*docs holds files a card does not write \(precious.txt\): "
                          r"--overwrite replaces a card's files only"):
        hub.main(run + ["--out", str(docs), "--overwrite"])
    assert sorted(p.name for p in docs.iterdir()) == ["README.md", "precious.txt"]
    assert (docs / "README.md").read_text() == "# notes\n"
    # a card, measured without a progress bar when asked
    progress = []
    evaluate = zoo.evaluate.evaluate_model
    monkeypatch.setattr(zoo.evaluate, "evaluate_model", lambda *a, **k: progress.append(k.get("progress", True))
                        or evaluate(*a, **k))
    card = tmp_path / "card"
    hub.main(run + ["--out", str(card), "--no-progress"])
    assert progress == [False]
    hub.main(run + ["--out", str(card)])
    assert progress == [False, True]
    monkeypatch.undo()
    assert hub.extra_files(card) == []
    for rel in ("onnx/model.onnx", "onnx-window/state_spec.json", ".save-x/model.safetensors", ".hidden"):
        (card / rel).parent.mkdir(exist_ok=True)
        (card / rel).write_text("x")
    assert hub.extra_files(card) == []                            # a card's graphs, and hidden leftovers
    for rel in ("onnx", "onnx-window", ".save-x", ".hidden"):
        path = card / rel
        path.unlink() if path.is_file() else shutil.rmtree(path)
    (card / "precious.txt").write_text("keep")
    (card / "notes").mkdir()
    (card / "notes" / "draft.md").write_text("x")
    assert hub.extra_files(card) == ["notes/draft.md", "precious.txt"]
    from tests.hub_fakes import record_hub_calls

    calls = record_hub_calls(monkeypatch)
    with exits(capsys, 2, r"push refused: .*card holds files that are no part of a model card \(notes/draft.md, "
                          r"precious.txt\): .*remove them .*or pass --allow-extra"):
        hub.main(["push", str(card), "--repo-id", "me/tiny"])
    assert calls == []
    hub.main(["push", str(card), "--repo-id", "me/tiny", "--allow-extra"])
    out, err = capsys.readouterr()
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"] and "commit-info" in out
    assert "also uploading files that are no part of a card (notes/draft.md, precious.txt)" in err
    # re-carding the card in place keeps the user's files and says that push refuses them
    hub.main(["card", "--run", str(card), "--name", "tiny", "--data", data, "--out", str(card), "--no-progress"])
    assert (card / "precious.txt").read_text() == "keep"
    assert "zoo.hub push refuses the folder unless --allow-extra" in capsys.readouterr().err


def test_convert_names_a_checkpoint_folder_and_the_file_it_expects(tmp_path, capsys):
    """``zoo.convert --checkpoint FOLDER`` said "checkpoint FOLDER not found" although the folder exists: it says it
    is a folder and what is expected (exit 1, nothing written)."""
    from zoo.convert import main

    with exits(capsys, 1, rf"--checkpoint {re.escape(str(tmp_path))} is a folder: give the checkpoint file inside it"):
        main(["--model", "sasrec", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")])
    with exits(capsys, 1, r"--checkpoint .*missing.pth not found"):
        main(["--model", "sasrec", "--checkpoint", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_a_recard_leaves_interrupted_writers_leftovers_out_of_the_card(tmp_path):
    """Hidden leftovers of killed writers inside a card folder (``.save-*`` of save_pretrained, ``.export-staging-*``
    of export.onnx) are not copied into the re-written card (they were, into every new card, and pushed), and a
    killed card writer's stage beside it (``.NAME.staged-*``, listed as a bundled model) is removed."""
    data, _ = _tiny_gru4rec_run(tmp_path)
    card = tmp_path / "cards" / "tiny"
    hub.build_card_folder(str(tmp_path / "a"), "tiny", data, out_dir=str(card))
    (card / ".save-x").mkdir()
    (card / ".save-x" / "model.safetensors").write_bytes(bytes(1000))
    (card / ".export-staging-y").mkdir()
    dead = card.parent / ".tiny.staged-z"
    dead.mkdir()
    (dead / "config.json").write_text("{}")
    before = sorted(p.name for p in card.iterdir() if not p.name.startswith("."))
    hub.main(["card", "--run", str(card), "--name", "tiny", "--data", data, "--out", str(card)])   # in place
    assert sorted(p.name for p in card.iterdir()) == before
    assert [p.name for p in card.parent.iterdir()] == ["tiny"]


def test_a_card_without_notes_is_written_with_empty_markers_and_recarded_with_keep_notes(tmp_path):
    """A card without notes still gets the notes markers (empty), so --keep-notes re-cards it (it refused every card
    without notes: they were written without markers); a card without markers is refused as before."""
    data, _ = _tiny_gru4rec_run(tmp_path)
    card = tmp_path / "card"
    hub.build_card_folder(str(tmp_path / "a"), "tiny", data, out_dir=str(card))
    text = (card / "README.md").read_text()
    assert f"{hub.NOTES_BEGIN}\n{hub.NOTES_END}" in text and hub.card_notes(card) == ""
    hub.main(["card", "--run", str(card), "--name", "tiny", "--data", data, "--out", str(card), "--keep-notes"])
    assert f"{hub.NOTES_BEGIN}\n{hub.NOTES_END}" in (card / "README.md").read_text() and hub.card_notes(card) == ""
    (card / "README.md").write_text(text.replace(f"{hub.NOTES_BEGIN}\n{hub.NOTES_END}\n", ""))   # as written before
    with pytest.raises(ValueError, match="no <!-- zoo:notes --> markers"):
        hub.card_notes(card)


def test_bundled_cards_notes_are_read_for_keep_notes(tmp_path):
    """Every bundled card has the notes markers (lrurec-ml1m's empty: it has no notes), so ``--keep-notes`` reads each;
    taken out, the notes cannot be told apart from the generated sections and are refused."""
    root = Path(__file__).resolve().parent.parent / "hub_cards"
    assert hub.card_notes(root / "lrurec-ml1m") == ""
    for folder in sorted(p for p in root.iterdir() if (p / "README.md").is_file()):
        text = (folder / "README.md").read_text()
        assert hub.NOTES_BEGIN in text and hub.NOTES_END in text, folder.name
        if folder.name == "lrurec-ml1m":
            continue
        assert hub.card_notes(folder)
        (tmp_path / folder.name).mkdir()
        (tmp_path / folder.name / "README.md").write_text(text.replace(hub.NOTES_BEGIN, "").replace(hub.NOTES_END, ""))
        with pytest.raises(ValueError, match="no <!-- zoo:notes --> markers"):
            hub.card_notes(tmp_path / folder.name)


def test_a_card_folder_is_recarded_in_place(tmp_path):
    """``card --run <card folder>`` into the same folder re-measures and re-writes the card from the folder's own
    stage logs: weights and vocabulary untouched, the dataset's name and the notes kept, the ONNX graph re-exported and
    verified; a protocol other than the card's is refused before anything is written."""
    import hashlib
    import json

    from export.onnx import main as onnx_main

    data, _ = _tiny_gru4rec_run(tmp_path)
    card = tmp_path / "card"
    hub.build_card_folder(str(tmp_path / "a"), "tiny", data, out_dir=str(card), notes="## A note\n\nkept",
                          dataset_type="markov", dataset_name="Markov chain (generated)")
    assert onnx_main(["--model", str(card), "--card-dir", str(card), "--topk", "5", "--verify-prime", "10",
                      "--verify-steps", "10", "--verify-cases", "50"]) == 0
    readme = (card / "README.md").read_text()
    # a card written before intervals existed: take them out, as the cards carded before 2026-12-03 are
    head, rest = readme.split("(HR@K equals Recall@K with one held-out item per user.)", 1)
    (card / "README.md").write_text(head + "(HR@K equals Recall@K with one held-out item per user.)\n\n## Training"
                                    + rest.split("## Training", 1)[1])
    weights = {f: hashlib.sha256((card / f).read_bytes()).hexdigest()
               for f in ("model.safetensors", "config.json", "item_vocab.json")}
    stages = json.loads((card / hub.STAGES_FILE).read_text())
    (card / "onnx" / "model.onnx").unlink()                 # the re-export must write it again
    before = {f.name: f.read_bytes() for f in card.iterdir() if f.is_file()}
    for run in (card, tmp_path / "a"):        # in place, or a run replacing the card: the protocol is the card's
        with pytest.raises(SystemExit, match="without --exclude-history .*drop --exclude-history, or write"):
            hub.main(["card", "--run", str(run), "--name", "tiny", "--data", data, "--out", str(card),
                      "--exclude-history", "--keep-notes"])
    assert {f.name: f.read_bytes() for f in card.iterdir() if f.is_file()} == before
    hub.main(["card", "--run", str(card), "--name", "tiny", "--data", data, "--out", str(card), "--keep-notes"])
    assert {f: hashlib.sha256((card / f).read_bytes()).hexdigest() for f in weights} == weights
    assert json.loads((card / hub.STAGES_FILE).read_text()) == stages
    text = (card / "README.md").read_text()
    assert "95% intervals over the test users" in text and hub.card_notes(card) == "## A note\n\nkept"
    assert hub._card_dataset(card) == {"name": "Markov chain (generated)", "type": "markov"}
    assert f"Command: `{stages['stages'][-1]['command']}`" in text
    assert (card / "onnx" / "model.onnx").exists()
    assert json.loads((card / "onnx" / "state_spec.json").read_text())["verification"]["passed"]
    assert json.loads((card / "eval_results.json").read_text())["intervals_95"]["HR@10"]


def test_a_card_sets_the_model_beside_the_rankings_without_a_model(tmp_path):
    """The card measures the transitions and most-popular rankings on its own test users and protocol; the command it
    prints for each reproduces its numbers, and a model that adds little to the transitions is told so."""
    import json

    from zoo.evaluate import main as evaluate_main

    data, _ = _tiny_gru4rec_run(tmp_path)
    card = tmp_path / "card"
    metrics = hub.build_card_folder(str(tmp_path / "a"), "tiny", data, out_dir=str(card))
    saved = json.loads((card / "eval_results.json").read_text())["baselines"]
    assert list(saved) == ["markov", "pop"]
    text = (card / "README.md").read_text()
    assert "## Against rankings without a model" in text and f"| this model | {metrics['HR@10']:.4f} |" in text
    for kind, b in saved.items():
        assert b["command"].startswith(f"python -m zoo.evaluate --baseline {kind} --data {data} --kcore none")
        assert f"(`{b['command']}`) | {b['metrics']['HR@10']:.4f} | {b['metrics']['NDCG@10']:.4f} |" in text
        argv = b["command"].split()[3:]                          # as written: the data's path as given
        again = evaluate_main(argv + ["--ks", "10", "--no-progress"])["metrics"]
        assert again["HR@10"] == pytest.approx(b["metrics"]["HR@10"]) and again["NDCG@10"] == pytest.approx(
            b["metrics"]["NDCG@10"])
    close = hub._baselines_markdown({"HR@10": 0.07, "NDCG@10": 0.0319}, {"markov": {
        "metrics": {"HR@10": 0.05, "NDCG@10": 0.0301}, "command": "c"}})
    assert "NDCG@10 only +6% against the first-order transitions" in close
    far = hub._baselines_markdown({"HR@10": 0.28, "NDCG@10": 0.16}, {"markov": {
        "metrics": {"HR@10": 0.19, "NDCG@10": 0.11}, "command": "c"}})
    assert "only" not in far and hub._baselines_markdown({"HR@10": 0.1, "NDCG@10": 0.1}, None) == ""
    # below the baselines is said as such, not "only -67% ... adds little"
    base = {"markov": {"metrics": {"HR@10": 0.1, "NDCG@10": 0.0537}, "command": "c"},
            "pop": {"metrics": {"HR@10": 0.05, "NDCG@10": 0.0226}, "command": "p"}}
    below_both = hub._baselines_markdown({"HR@10": 0.03, "NDCG@10": 0.0179}, base)
    assert ("**NDCG@10 below the most popular items (-21%) and the first-order transitions (-67%):** this model ranks "
            "worse than a ranking without a model" in below_both and "only" not in below_both)
    below_markov = hub._baselines_markdown({"HR@10": 0.08, "NDCG@10": 0.0400}, base)
    assert "**NDCG@10 below the first-order transitions (-26%):**" in below_markov and "popular items (" not in below_markov


def test_a_card_is_measured_on_the_sequences_its_run_was_trained_on(tmp_path):
    """A run trained with --time-ties item and --kcore none keeps them in its log's data_options; zoo.hub card then
    evaluates on the same sequences (the order of ties decides the test items), records the options, and gives the
    zoo.evaluate command with their flags, which reproduces the card's numbers."""
    import json
    import random

    from tests.test_train import TINY
    from zoo.evaluate import main as evaluate_main
    from zoo.train import main as train_main

    torch.set_num_threads(1)
    rng = random.Random(0)
    lines = ["user_id\titem_id\ttimestamp"]
    for u in range(1, 31):
        for t in range(1000, 1140, 10):     # pairs of items in one second, the larger id first in the file
            a, b = sorted(rng.sample(range(100, 140), 2))
            lines += [f"{u}\t{b}\t{t}", f"{u}\t{a}\t{t}"]
    data = tmp_path / "ties.tsv"
    data.write_text("\n".join(lines) + "\n")
    train_main(["--model", "gru4rec", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1",
                "--max-len", "20", "--kcore", "none", "--time-ties", "item", "--no-progress",
                "--set", *TINY["gru4rec"]])
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert log["data_options"] == {"kcore": None, "time_ties": "item"}
    card = tmp_path / "card"
    metrics = hub.build_card_folder(str(tmp_path / "run"), "tiny", str(data), out_dir=str(card))
    info = json.loads((card / "eval_results.json").read_text())
    assert info["data_options"] == {"kcore": None, "time_ties": "item"}
    assert info["protocol"]["command"].endswith(f"--data {data} --kcore none --time-ties item")
    assert "--kcore none --time-ties item" in (card / "README.md").read_text()
    flags = ["--model", str(card), "--data", str(data), "--kcore", "none", "--no-progress"]
    same = evaluate_main(flags + ["--time-ties", "item"])
    assert same["metrics"] == metrics and same["protocol"]["time_ties"] == "item"
    assert evaluate_main(flags + ["--time-ties", "file"])["metrics"] != metrics          # file order: other test items
    assert evaluate_main(flags)["metrics"] == metrics          # unless given, the run's (the card's log's) order
    assert hub.data_flags(hub.run_data_options({})) == ""     # a log from before data_options: the defaults
    assert hub.data_flags({"kcore": 3, "time_ties": "file"}) == " --kcore 3"


def test_a_card_measured_with_the_history_masked_gives_that_protocol_and_its_command(tmp_path, monkeypatch):
    """A card measured with --exclude-history names the LRURec protocol and gives the zoo.evaluate command with the
    flag, which reproduces its numbers; GRU4Rec's reference being under the RecBole protocol, the reference
    measurement is made (and its command given) without the flag."""
    import json
    import shlex

    from zoo.evaluate import main as evaluate_main

    data, _ = _tiny_gru4rec_run(tmp_path)
    _stand_in_for_the_published_benchmark(monkeypatch, data)
    card = tmp_path / "card"
    metrics = hub.build_card_folder(str(tmp_path / "a"), "tiny", data, out_dir=str(card), exclude_history=True)
    info = json.loads((card / "eval_results.json").read_text())
    protocol, ref = info["protocol"], info["reference_protocol"]
    assert info["exclude_history"] is True and protocol["history_masked"] is True
    assert protocol["name"] == hub.PROTOCOL_NAMES[True] and "input window masked" in protocol["description"]
    assert protocol["command"].endswith(" --exclude-history") and ref["exclude_history"] is False
    assert ref["command"] == protocol["command"].removesuffix(" --exclude-history")
    text = (card / "README.md").read_text()
    assert f"Measured by `{protocol['command']}`" in text and f"`{ref['command']}`" in text
    flags = shlex.split(protocol["command"])
    flags = flags[flags.index("--data") + 2:]                     # what follows the data file
    again = evaluate_main(["--model", str(card), "--data", data, "--no-progress", *flags])
    assert again["metrics"] == metrics and again["metrics"] != ref["metrics"]
    # the run chose its checkpoint by validation under the RecBole protocol: the card says so
    chosen = f"chosen by validation NDCG@10 under the {hub.PROTOCOL_NAMES[False]}, not the protocol of these numbers"
    assert chosen in protocol["description"] and chosen in text
    same = tmp_path / "card-same"
    hub.build_card_folder(str(tmp_path / "a"), "tiny", data, out_dir=str(same))
    assert "chosen by validation" not in json.loads((same / "eval_results.json").read_text())["protocol"]["description"]


def test_validation_masked_reads_runs_and_soups():
    assert hub.validation_masked({"protocol": {"history_masked": True}}) is True
    assert hub.validation_masked({"protocol": {"history_masked": False}}) is False
    assert hub.validation_masked({"protocol": "lrurec (history excluded)"}) is True
    assert hub.validation_masked({"protocol": "recbole"}) is False
    assert hub.validation_masked({}) is None and hub.validation_masked({"protocol": {"split": "x"}}) is None


def test_a_recard_that_fails_half_way_leaves_the_card_folder_as_it_was(tmp_path, monkeypatch):
    """The new card is written into a staged copy and swapped in whole: when the re-export of the card's ONNX graph
    from the new weights fails (after the weights, card and logs were written), the folder keeps every byte of the
    old card and no staged folder is left beside it; a successful re-card replaces the folder and leaves nothing."""
    import hashlib

    import export.onnx
    from zoo.train import main as train_main

    data, common = _tiny_gru4rec_run(tmp_path)
    card = tmp_path / "cards" / "tiny"
    hub.build_card_folder(str(tmp_path / "a"), "tiny", data, out_dir=str(card))
    assert card.stat().st_mode & 0o777 == 0o755            # a new card is readable by others (not mkdtemp's 0700)
    assert export.onnx.main(["--model", str(card), "--card-dir", str(card), "--topk", "5", "--verify-prime", "5",
                             "--verify-steps", "5", "--verify-cases", "20"]) == 0
    train_main(common + ["--out", str(tmp_path / "b"), "--seed", "7"])

    def snapshot():
        return {str(p.relative_to(card)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(card.rglob("*")) if p.is_file()}

    before = snapshot()
    monkeypatch.setattr(export.onnx, "main", lambda argv: 1)
    with pytest.raises(SystemExit, match=r"card not written: re-export of the ONNX graph .* failed \(exit 1.*was left "
                                         r"as it was"):
        hub.main(["card", "--run", str(tmp_path / "b"), "--name", "tiny", "--data", data, "--out", str(card),
                  "--overwrite"])
    assert snapshot() == before and sorted(p.name for p in card.parent.iterdir()) == ["tiny"]
    monkeypatch.setattr(export.onnx, "main", lambda argv: 3)     # the graph fails verification: status 3 (EXIT_CODES)
    with pytest.raises(SystemExit) as failed:
        hub.main(["card", "--run", str(tmp_path / "b"), "--name", "tiny", "--data", data, "--out", str(card),
                  "--overwrite"])
    assert failed.value.code == 3 and snapshot() == before
    monkeypatch.undo()
    hub.build_card_folder(str(tmp_path / "b"), "tiny", data, out_dir=str(card), overwrite=True)
    after = snapshot()
    assert after["model.safetensors"] != before["model.safetensors"] and after.keys() == before.keys()
    assert after["onnx/model.onnx"] != before["onnx/model.onnx"]
    assert sorted(p.name for p in card.parent.iterdir()) == ["tiny"]


def test_written_whole_folder_whose_swap_fails_leaves_the_target_and_no_staged_folder(tmp_path, monkeypatch):
    """The final swap of ``zoo.cli.written_whole_folder`` failing (a file where the folder goes; the second rename
    refused) raises, leaves the target as it was (a replaced folder is put back) and removes its staged folder; it
    used to leave a stray ``.name.staged-*`` folder beside the target."""
    import os

    from zoo import cli

    (tmp_path / "afile").write_text("keep")
    with pytest.raises(NotADirectoryError):
        with cli.written_whole_folder(tmp_path / "afile") as stage:
            Path(stage, "config.json").write_text("{}")
    assert (tmp_path / "afile").read_text() == "keep" and sorted(os.listdir(tmp_path)) == ["afile"]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old.txt").write_text("old")
    real = os.replace

    def refuse_the_stage(src, dst):
        if ".staged-" in str(src):
            raise PermissionError(13, "Permission denied", str(dst))
        return real(src, dst)
    monkeypatch.setattr(os, "replace", refuse_the_stage)
    with pytest.raises(PermissionError):
        with cli.written_whole_folder(tmp_path / "d") as stage:
            Path(stage, "new.txt").write_text("new")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["afile", "d"] and os.listdir(tmp_path / "d") == ["old.txt"]


def test_written_whole_folder_writes_through_a_symbolic_link_and_keeps_the_folders_mode(tmp_path):
    """An --out that is a symbolic link to a folder: the folder it points to is replaced and the link stays (the link
    was renamed onto an empty folder: IsADirectoryError after all the work). The new folder keeps the replaced one's
    mode (it was forced to 0755), a new one gets the umask's."""
    import os

    from zoo import cli

    target = tmp_path / "target"
    target.mkdir()
    (target / "old.txt").write_text("old")
    target.chmod(0o750)
    link = tmp_path / "link"
    link.symlink_to(target)
    with cli.written_whole_folder(link) as stage:
        Path(stage, "new.txt").write_text("new")
    assert link.is_symlink() and os.listdir(target) == ["new.txt"] and (link / "new.txt").read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o750 and sorted(os.listdir(tmp_path)) == ["link", "target"]
    old = os.umask(0o077)
    try:
        with cli.written_whole_folder(tmp_path / "fresh") as stage:
            Path(stage, "a.txt").write_text("a")
    finally:
        os.umask(old)
    assert (tmp_path / "fresh").stat().st_mode & 0o777 == 0o700


def test_written_whole_folder_removes_dead_writers_stages_and_copies_no_hidden_leftovers(tmp_path):
    """Stages left beside a folder by writers that died (``.d.staged-*``, ``.d.replaced-*``: Triton refused to start
    on one, hub_cards/ listed one as a bundled model) are removed by the next writer of that folder, a live writer's
    (locked) stage and other folders' are not; ``copy_existing`` leaves hidden leftovers inside the folder
    (``.save-*``, ``.export-staging-*``) out of the new folder, keeping a clone's ``.git*``."""
    import fcntl
    import os

    from zoo import cli

    d = tmp_path / "d"
    (d / "onnx" / ".export-staging-x").mkdir(parents=True)
    (d / "onnx" / ".export-staging-x" / "model.onnx").write_text("half")
    (d / "onnx" / "model.onnx").write_text("graph")
    (d / ".save-abc").mkdir()
    (d / ".save-abc" / "model.safetensors").write_text("zeros")
    (d / ".gitattributes").write_text("*.onnx filter=lfs")
    (d / "config.json").write_text("{}")
    for name in (".d.staged-dead1", ".d.replaced-dead2", ".d.staged-live", ".other.staged-x"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    live = os.open(tmp_path / ".d.staged-live", os.O_RDONLY)
    fcntl.flock(live, fcntl.LOCK_EX | fcntl.LOCK_NB)                  # a writer still at work
    try:
        with cli.written_whole_folder(d, copy_existing=True) as stage:
            Path(stage, "README.md").write_text("card")
    finally:
        os.close(live)
    assert sorted(os.listdir(tmp_path)) == [".d.staged-live", ".other.staged-x", "d"]
    assert sorted(str(p.relative_to(d)) for p in d.rglob("*")) == [
        ".gitattributes", "README.md", "config.json", "onnx", "onnx/model.onnx"]


def test_a_dead_writers_replaced_folder_is_put_back_when_the_folder_is_missing(tmp_path):
    """A writer of ``d`` killed between its two renames leaves ``d`` missing and the old folder as ``.d.replaced-*``,
    the only copy of it: the next writer's clean-up put that folder back as ``d`` (it removed it before), and a
    ``.d.replaced-*`` beside an existing ``d`` (the old copy after the swap) is removed as before."""
    import os

    from zoo import cli

    (tmp_path / ".d.replaced-dead").mkdir()
    (tmp_path / ".d.replaced-dead" / "config.json").write_text("the old folder")
    assert cli.remove_dead_stages(tmp_path / "d") == []
    assert (tmp_path / "d" / "config.json").read_text() == "the old folder"
    assert sorted(os.listdir(tmp_path)) == ["d"]
    (tmp_path / ".d.replaced-old").mkdir()
    assert cli.remove_dead_stages(tmp_path / "d") == [str(tmp_path / ".d.replaced-old")]
    assert sorted(os.listdir(tmp_path)) == ["d"]



def test_a_killed_card_writers_stage_is_no_bundled_model(bundled, tmp_path):
    """A ``zoo.hub card`` killed while writing left ``.NAME.staged-*`` (config + weights from its first moment) in the
    bundled folder: ``zoo.hub list`` showed it as a model and ``import zoo`` seeded it into the Hub cache; hidden
    folders are skipped now."""
    import shutil

    from zoo.pretrained import bundled_models

    shutil.copytree(tmp_path / "bundle" / "tiny-mamba4rec", tmp_path / "bundle" / ".tiny-mamba4rec.staged-dead")
    names = bundled_models()
    assert "tiny-mamba4rec" in names and not [n for n in names if n.startswith(".")], sorted(names)
    assert not [r for r in seed_hf_cache() if "staged" in r]


def test_an_empty_ref_left_by_a_killed_seeding_is_seeded_again(bundled, tmp_path, monkeypatch):
    """``seed_hf_cache`` wrote ``refs/main`` in place: a process killed between its truncation and its write left an
    empty ref, which (pointing at no snapshot with the bundled mark) passed for a real Hub download and was never
    seeded again, so the model no longer loaded offline. Such a ref is re-seeded now, and the ref and snapshot are
    written beside and renamed in (nothing of the copy is left behind)."""
    repo = tmp_path / "hf" / f"models--{hub.HUB_ORG}--tiny-mamba4rec"
    (repo / "refs" / "main").write_text("")                                     # what the kill left
    assert f"{hub.HUB_ORG}/tiny-mamba4rec" in seed_hf_cache()
    commit = (repo / "refs" / "main").read_text()
    assert len(commit) == 40 and (repo / "snapshots" / commit / ".zoo-bundled").is_file()
    assert not [p.name for p in repo.rglob(".zoo-seed-*")] and not list((repo / "refs").glob(".main.*"))
    m = Mamba4RecModel.from_pretrained(f"{hub.HUB_ORG}/tiny-mamba4rec").eval()
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(m(ids).logits, bundled(ids).logits)
    assert f"{hub.HUB_ORG}/tiny-mamba4rec" not in seed_hf_cache()                # current: left alone

def test_convert_cli_set_values_the_model_refuses_are_usage_errors(tmp_path, capsys):
    """``zoo.convert --set`` a value the model cannot be built with, a field it does not have or a value its weights
    contradict (and a --max-seq-length other than a SASRec checkpoint's positions) is a usage error (2, the usage line)
    naming the flag, as ``zoo.train --set``: it was 1, a failed run; nothing is written. The checkpoint's own settings
    that fail the model (bad data) stay 1, --set or not; the Python API raises ValueError (zoo.cli.UsageError)."""
    from zoo.convert import main

    ckpt = str(RECBOLE_SASREC / "state_dict.pth")
    args = ["--model", "sasrec", "--checkpoint", ckpt, "--out", str(tmp_path / "o")]
    for sets, msg in ((["num_heads=3"], r"error: --set num_heads=3: hidden_size \(32\) must be a positive multiple "
                                        r"of num_heads \(3\)"),
                      (["num_heads=2", "hidden_act=foo"], r"error: --set num_heads=2 hidden_act='foo': hidden_act "
                                                         "must be one of"),
                      (["num_heads=2", "hiden_size=3"], r"error: --set: \['hiden_size'\] not fields of SASRecConfig"),
                      (["num_heads=2", "hidden_size=64"], r"error: --set hidden_size=64: the checkpoint's weights say "
                                                          "hidden_size = 32")):
        with exits(capsys, 2, msg):
            main(args + ["--set", *sets])
    with exits(capsys, 2, r"error: --max-seq-length 50: this SASRec checkpoint has 20 positions"):
        main(args + ["--set", "num_heads=2", "--max-seq-length", "50"])
    assert not (tmp_path / "o").exists()
    with pytest.raises(UsageError, match=r"^--set num_heads=3: hidden_size \(32\)"):
        convert("sasrec", ckpt, str(tmp_path / "o"), overrides={"num_heads": 3})
    assert issubclass(UsageError, ValueError)
    # the checkpoint's own RecBole settings that the model refuses are bad data (1), whatever --set adds; a --set that
    # fixes them converts
    sd = torch.load(RECBOLE_SASREC / "state_dict.pth", weights_only=True)["state_dict"]
    torch.save({"state_dict": sd, "config": {"n_heads": 3}}, tmp_path / "bad.pth")
    bad = ["--model", "sasrec", "--checkpoint", str(tmp_path / "bad.pth"), "--out", str(tmp_path / "o")]
    for extra in ([], ["--set", "attn_dropout=0.25"]):
        with exits(capsys, 1, r"error: hidden_size \(32\) must be a positive multiple of num_heads \(3\)"):
            main(bad + extra)
    assert not (tmp_path / "o").exists()
    main(bad + ["--set", "num_heads=2"])
    assert json.loads((tmp_path / "o" / "config.json").read_text())["num_heads"] == 2
    capsys.readouterr()


def test_convert_refuses_an_out_folder_with_files_unless_overwrite(tmp_path, capsys):
    """``zoo.convert --out`` a folder that holds files (e.g. another model's card) is refused before any work; with
    --overwrite the folder is replaced whole (nothing of the old folder stays beside the new model). An --out that is
    a file, an --item-tokens folder or a token file int() cannot read are one-line errors naming the path."""
    from zoo.convert import main

    ckpt = str(RECBOLE_SASREC / "state_dict.pth")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "README.md").write_text("# another model")
    (victim / "item_vocab.json").write_text("{}")
    args = ["--model", "sasrec", "--checkpoint", ckpt, "--set", "num_heads=2"]
    with exits(capsys, 2, r"--out .*victim already holds files \(README.md, item_vocab.json\).*--overwrite"):
        main(args + ["--out", str(victim)])
    assert sorted(p.name for p in victim.iterdir()) == ["README.md", "item_vocab.json"]
    # --overwrite replaces a model, never a folder of other files: those are named, and the folder is left as it was
    with exits(capsys, 2, r"--out .*victim holds files that are no model checkpoint's \(README.md\)"):
        main(args + ["--out", str(victim), "--overwrite"])
    assert sorted(p.name for p in victim.iterdir()) == ["README.md", "item_vocab.json"]
    (victim / "README.md").unlink()
    (victim / "convert_log.json").write_text("{}")
    main(args + ["--out", str(victim), "--overwrite"])
    assert sorted(p.name for p in victim.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]           # no staged or replaced folder left
    (tmp_path / "afile").write_text("x")
    (tmp_path / "tokens").mkdir()
    (tmp_path / "sup.txt").write_text("[PAD]\n" + "\n".join(["³"] + [str(i) for i in range(1, 1349)]) + "\n")
    for extra, code, msg in ((["--out", str(tmp_path / "afile")], 2, "--out .*afile is a file, not a folder"),
                             (["--out", str(tmp_path / "o"), "--item-tokens", str(tmp_path / "tokens")], 1,
                              r"--item-tokens .*tokens: cannot read it \(Is a directory\)"),
                             (["--out", str(tmp_path / "o"), "--set", "hidden_dropout=null"], 2,
                              "--set: SASRecModel cannot be built with these config values .*hidden_dropout=None"),
                             (["--out", str(tmp_path / "afile" / "o")], 2, "afile is a file, not a folder")):
        with exits(capsys, code, msg):
            main(args + extra)
    assert not (tmp_path / "o").exists() and (tmp_path / "afile").read_text() == "x"
    # '³' is a digit to str.isdigit but not to int(): such a file is a vocabulary of strings, as any non-int token
    main(args + ["--out", str(tmp_path / "o"), "--item-tokens", str(tmp_path / "sup.txt")])
    assert AutoModel.from_pretrained(tmp_path / "o").item_vocab.decode([1, 2]) == ["³", "1"]
    (tmp_path / "dup.txt").write_text("[PAD]\n" + "\n".join(["5"] + [str(i) for i in range(1, 1349)]) + "\n")
    with pytest.raises(SystemExit, match=r"--item-tokens .*dup.txt: lines 2 and 7 \('5' and '5'\) are both the item "
                                         r"token '5'"):
        main(args + ["--out", str(tmp_path / "o2"), "--item-tokens", str(tmp_path / "dup.txt")])
    (tmp_path / "blanks.txt").write_text("[PAD]\n pad\n" + "\n".join(str(i) for i in range(1, 1348)) + "\npad \n")
    with pytest.raises(SystemExit, match=r"blanks.txt: lines 2 and 1350 \(' pad' and 'pad '\) are both the item token "
                                         r"'pad' \(blanks around a token are not part of it\)"):
        main(args + ["--out", str(tmp_path / "o2"), "--item-tokens", str(tmp_path / "blanks.txt")])
    assert not (tmp_path / "o2").exists()
    capsys.readouterr()


def test_card_refuses_a_notes_folder_and_an_out_file_in_one_line(tmp_path, capsys):
    """``zoo.hub card --notes <folder>`` and ``--out <a file>`` are 'card not written' lines (were IsADirectoryError
    and, after the whole evaluation, NotADirectoryError with a stray staged folder beside the file): an unreadable
    --notes exits 1, an --out that cannot be a folder is a usage error (2)."""
    import os

    run = tmp_path / "run"
    run.mkdir()
    for f in ("config.json", "model.safetensors", "train_log.json"):
        (run / f).write_text("{}")
    (tmp_path / "afile").write_text("keep")
    base = ["card", "--run", str(run), "--name", "tiny", "--data", str(tmp_path / "not-read.tsv")]
    with pytest.raises(SystemExit, match=r"card not written: --notes .*: cannot read it \(Is a directory\)"):
        hub.main(base + ["--out", str(tmp_path / "card"), "--notes", str(tmp_path)])
    with exits(capsys, 2, "card not written: --out .*afile is a file, not a folder"):
        hub.main(base + ["--out", str(tmp_path / "afile")])
    assert sorted(os.listdir(tmp_path)) == ["afile", "run"] and (tmp_path / "afile").read_text() == "keep"


def test_other_org_is_not_served_the_bundled_copy(bundled, monkeypatch):
    """Offline, only our org's ids (and the documented placeholder orgs) resolve to the bundled copy: another
    org's model of the same name is not ours, and is an error, not our weights."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="not reachable"):
        Mamba4RecModel.from_pretrained("someone-else/tiny-mamba4rec")


def test_reseeding_refreshes_a_stale_bundled_snapshot(bundled, monkeypatch, tmp_path):
    """A re-carded bundled folder replaces the snapshot seeded from the old one: offline loads then serve the new
    weights, never the stale cached ones."""
    torch.manual_seed(1)
    new = Mamba4RecModel(Mamba4RecConfig(n_items=30, hidden_size=16, d_state=4)).eval()
    new.set_item_vocab(zoo.ItemVocab(list(range(100, 129))))
    new.save_pretrained(tmp_path / "bundle" / "tiny-mamba4rec")
    assert f"{hub.HUB_ORG}/tiny-mamba4rec" in seed_hf_cache()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = AutoModel.from_pretrained(f"{hub.HUB_ORG}/tiny-mamba4rec").eval()
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(m(ids).logits, new(ids).logits)


def test_model_index_carries_the_metrics(tmp_path):
    """The card's model-index holds the measured metrics as they are (no rescaling, no renaming, no Recall@K twin of
    HR@K), each with its type, the protocol and the dataset; the card's metadata names the library, the dataset, the
    license and the model's tags."""
    import json

    import yaml

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "sasrec", "n_items": 3417}))
    metrics = {"HR@10": 0.254321, "NDCG@10": 0.131234, "HR@20": 0.351117, "NDCG@20": 0.162229, "Recall@10": 0.254321}
    protocol = {"name": "RecBole protocol", "history_masked": False, "command": "x"}
    card = Path(hub.make_card(tmp_path, "s", metrics, protocol, {"name": "ML", "type": "ml-1m", "users": 1},
                              {"epochs": [{}]}, bundled=True)).read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["model-index"][0]["name"] == f"{hub.HUB_ORG}/s"
    result = meta["model-index"][0]["results"][0]
    index = result["metrics"]
    assert {m["name"]: m["value"] for m in index} == {k: v for k, v in metrics.items() if k != "Recall@10"}
    assert {m["name"]: m["type"] for m in index} == {"HR@10": "hr_at_10", "NDCG@10": "ndcg_at_10",
                                                     "HR@20": "hr_at_20", "NDCG@20": "ndcg_at_20"}
    assert all(m.get("config") == "RecBole protocol" for m in index), index
    assert result["dataset"] == {"name": "ML", "type": "ml-1m", "split": "test (leave-one-out)"}, result["dataset"]
    assert result["task"]["type"] == "sequential-recommendation"
    assert meta["library_name"] == "transformers" and meta["datasets"] == ["ml-1m"] and meta["license"] == "apache-2.0"
    assert {"sasrec", "baseline", "ssm-rec-zoo"} <= set(meta["tags"]) and "state-space-model" not in meta["tags"]


# ------------------------------------------------------------------ mutation audit round 6 (G): converter details
def test_convert_reads_every_mamba_shape_field_off_the_weights(tmp_path):
    """expand, d_conv, the bias flags (conv_bias off, proj_bias on) come from the tensors, not the defaults; the window
    is the one given (no default: tests/test_convert_margins.py), and --set max_seq_length (no position table) is
    accepted for Mamba4Rec."""
    torch.manual_seed(0)
    src = Mamba4RecModel(Mamba4RecConfig(n_items=20, hidden_size=16, d_state=4, d_conv=2, expand=4, conv_bias=False,
                                         proj_bias=True)).eval()
    torch.save({"state_dict": _official_layout(src)}, tmp_path / "M.pth")
    m = convert("mamba4rec", str(tmp_path / "M.pth"), str(tmp_path / "out"), max_seq_length=200).eval()
    c = m.config
    assert (c.expand, c.d_conv, c.conv_bias, c.proj_bias, c.d_state, c.max_seq_length) == (4, 2, False, True, 4, 200)
    ids = torch.randint(1, 20, (2, 7))
    assert torch.equal(m(ids).logits, src(ids).logits)
    m = convert("mamba4rec", str(tmp_path / "M.pth"), str(tmp_path / "w"), overrides={"max_seq_length": 64})
    assert m.config.max_seq_length == 64


def test_convert_reads_a_legacy_pickle_checkpoint(tmp_path):
    """A checkpoint saved in torch's legacy (non-zip) format starts with a pickle opcode, not 'PK': it converts."""
    sd = torch.load(RECBOLE_SASREC / "state_dict.pth", weights_only=True)["state_dict"]
    torch.save({"state_dict": sd}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert (tmp_path / "legacy.pth").read_bytes()[:1] == b"\x80"
    m = convert("sasrec", str(tmp_path / "legacy.pth"), str(tmp_path / "out"), overrides={"num_heads": 2})
    ours, theirs = _score_fixture_histories(m)
    assert (ours - theirs).abs().max() <= 1e-5


def test_convert_reads_settings_kept_as_a_plain_dict(tmp_path):
    """RecBole settings saved as a plain dict (loadable with weights_only, so no --trust-pickle) give num_heads etc."""
    sd = torch.load(RECBOLE_SASREC / "state_dict.pth", weights_only=True)["state_dict"]
    torch.save({"state_dict": sd, "config": {"n_heads": 2, "hidden_act": "relu", "topk": [10]}}, tmp_path / "S.pth")
    m = convert("sasrec", str(tmp_path / "S.pth"), str(tmp_path / "out"))
    assert (m.config.num_heads, m.config.hidden_act) == (2, "relu")


def test_convert_accepts_a_set_that_agrees_with_the_weights(tmp_path):
    """--set hidden_size=32 on a hidden-32 checkpoint is no conflict (only a different value is refused)."""
    m = convert("sasrec", str(RECBOLE_SASREC / "state_dict.pth"), str(tmp_path / "out"),
                overrides={"num_heads": 2, "hidden_size": 32, "num_layers": 2})
    assert (m.config.hidden_size, m.config.num_layers) == (32, 2)


def test_convert_refuses_unexpected_keys(tmp_path):
    """A state dict with a tensor the model has no place for is refused naming it, not silently dropped."""
    sd = torch.load(RECBOLE_SASREC / "state_dict.pth", weights_only=True)["state_dict"]
    sd["extra_head.weight"] = torch.zeros(3)
    torch.save({"state_dict": sd}, tmp_path / "S.pth")
    with pytest.raises(ValueError, match=r"does not match SASRecModel: missing \[\], unexpected \['extra_head.weight'\]"):
        convert("sasrec", str(tmp_path / "S.pth"), str(tmp_path / "out"), overrides={"num_heads": 2})
    assert not (tmp_path / "out").exists()


def test_convert_refuses_weights_from_pretrained_would_refuse(tmp_path):
    """A NaN / inf or an integer tensor is refused naming it before anything is written (the folder would fail
    from_pretrained's checks; load_state_dict would cast the integers silently)."""
    from zoo.convert import main
    sd = torch.load(RECBOLE_SASREC / "state_dict.pth", weights_only=True)["state_dict"]
    for name, value, msg in (("nan", float("nan"), "holds NaN or infinite values"),
                             ("inf", float("inf"), "holds NaN or infinite values")):
        bad = {k: v.clone() for k, v in sd.items()}
        bad["item_embedding.weight"][3, 0] = value
        torch.save(bad, tmp_path / f"{name}.pth")
        with pytest.raises(SystemExit, match=rf"error: weight 'item_embedding.weight' in .*{name}.pth {msg}"):
            main(["--model", "sasrec", "--checkpoint", str(tmp_path / f"{name}.pth"), "--out", str(tmp_path / name),
                  "--set", "num_heads=2"])
        assert not (tmp_path / name).exists()
    ints = {**sd, "LayerNorm.bias": sd["LayerNorm.bias"].round().long()}
    torch.save({"state_dict": ints}, tmp_path / "int.pth")
    with pytest.raises(ValueError, match=r"weight 'LayerNorm.bias' in .*int.pth has dtype torch.int64; zoo weights "
                                         "are floating point"):
        convert("sasrec", str(tmp_path / "int.pth"), str(tmp_path / "int"), overrides={"num_heads": 2})
    assert not (tmp_path / "int").exists()


def test_convert_item_tokens_without_pad_and_with_blank_lines(tmp_path):
    """--item-tokens: blank lines are skipped and a file without the [PAD] line keeps its first token (item 1)."""
    src = Mamba4RecModel(Mamba4RecConfig(n_items=6, hidden_size=16, d_state=4))
    torch.save({"state_dict": _official_layout(src)}, tmp_path / "M.pth")
    (tmp_path / "blank.txt").write_text("[PAD]\nb1\n\nb2\nb3\n\nb4\nb5\n\n")
    (tmp_path / "nopad.txt").write_text("11\n12\n13\n14\n15\n")
    m = convert("mamba4rec", str(tmp_path / "M.pth"), str(tmp_path / "a"), str(tmp_path / "blank.txt"),
                max_seq_length=50)
    assert m.item_vocab.items == ["b1", "b2", "b3", "b4", "b5"]
    m = convert("mamba4rec", str(tmp_path / "M.pth"), str(tmp_path / "b"), str(tmp_path / "nopad.txt"),
                max_seq_length=50)
    assert m.item_vocab.items == [11, 12, 13, 14, 15]


def test_convert_item_tokens_drop_a_byte_order_mark(tmp_path):
    r"""--item-tokens read its file as UTF-8 with the byte-order mark a Windows editor writes kept in the first token:
    '\ufeff10' made a str vocabulary in which item 10 could not be named (and '\ufeff[PAD]' was no [PAD] line, so
    the count was off by one). The mark is dropped now, as zoo.data's readers and zoo.recommend's id files drop it."""
    src = Mamba4RecModel(Mamba4RecConfig(n_items=6, hidden_size=16, d_state=4))
    torch.save({"state_dict": _official_layout(src)}, tmp_path / "M.pth")
    (tmp_path / "bom_nopad.txt").write_bytes("\ufeff10\n11\n12\n13\n14\n".encode())
    (tmp_path / "bom_pad.txt").write_bytes("\ufeff[PAD]\nb1\nb2\nb3\nb4\nb5\n".encode())
    m = convert("mamba4rec", str(tmp_path / "M.pth"), str(tmp_path / "a"), str(tmp_path / "bom_nopad.txt"),
                max_seq_length=50)
    assert m.item_vocab.items == [10, 11, 12, 13, 14] and m.item_vocab.id_type == "int"
    m = convert("mamba4rec", str(tmp_path / "M.pth"), str(tmp_path / "b"), str(tmp_path / "bom_pad.txt"),
                max_seq_length=50)
    assert m.item_vocab.items == ["b1", "b2", "b3", "b4", "b5"]


def test_convert_item_tokens_refuse_a_nul_naming_its_line(tmp_path):
    r"""A NUL byte in a token was taken silently ('b\x002'); it is refused naming its line (blank lines counted), as
    zoo.data's readers refuse one, and nothing is written."""
    src = Mamba4RecModel(Mamba4RecConfig(n_items=6, hidden_size=16, d_state=4))
    torch.save({"state_dict": _official_layout(src)}, tmp_path / "M.pth")
    (tmp_path / "nul.txt").write_bytes(b"[PAD]\nb1\n\nb\x002\nb3\nb4\nb5\n")
    with pytest.raises(ValueError, match=r"^--item-tokens .*nul.txt, line 4: a NUL byte \(\\x00\); token files are "
                                         r"UTF-8 text \(is it UTF-16, or binary\?\)$"):
        convert("mamba4rec", str(tmp_path / "M.pth"), str(tmp_path / "c"), str(tmp_path / "nul.txt"), max_seq_length=50)
    assert not (tmp_path / "c").exists()


def test_convert_refuses_the_current_and_the_home_folder_as_out(tmp_path, monkeypatch):
    """--out is replaced whole: the current folder, a folder above it and the home folder are refused (even empty,
    even with --overwrite), before any work."""
    from zoo.convert import check_out_folder

    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    for out, what in ((".", "the current folder"), (str(tmp_path), "a folder above the current folder")):
        with pytest.raises(ValueError, match=f"--out .* is {what}"):
            check_out_folder(out, True, {})
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    with pytest.raises(ValueError, match="is the home folder"):
        check_out_folder(str(tmp_path / "home"), True, {})
    check_out_folder(str(tmp_path / "home" / "new"), False, {})                  # a folder of its own is fine


def test_convert_overwrite_refuses_an_input_inside_the_out_folder(tmp_path):
    """--overwrite replaces --out whole: an --item-tokens or --checkpoint file inside it is refused before any work
    (it would be deleted), and the folder is left as it was."""
    src = Mamba4RecModel(Mamba4RecConfig(n_items=6, hidden_size=16, d_state=4))
    (tmp_path / "out").mkdir()
    torch.save({"state_dict": _official_layout(src)}, tmp_path / "out" / "M.pth")
    (tmp_path / "out" / "tokens.txt").write_text("[PAD]\n" + "\n".join(map(str, range(5))) + "\n")
    torch.save({"state_dict": _official_layout(src)}, tmp_path / "M.pth")
    with pytest.raises(ValueError, match=r"--item-tokens .*tokens.txt is inside --out .*move it out first"):
        convert("mamba4rec", str(tmp_path / "M.pth"), str(tmp_path / "out"), str(tmp_path / "out" / "tokens.txt"),
                overwrite=True)
    with pytest.raises(ValueError, match=r"--checkpoint .*M.pth is inside --out"):
        convert("mamba4rec", str(tmp_path / "out" / "M.pth"), str(tmp_path / "out"), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["M.pth", "tokens.txt"]


def test_training_stages_of_a_run_whose_card_moved_on(tmp_path, caplog):
    """Runs b and c both started from the card (stage a); the card was then replaced by c and by a later stage d.
    c's history is read from the card up to c; b's stops at b, with a warning: the card no longer holds the weights
    b started from (its log's ``init_weights_sha256``), so its stages are not b's history."""
    import json

    from zoo.pretrained import weights_sha256

    card = tmp_path / "card"
    card.mkdir()
    (card / "model.safetensors").write_bytes(b"weights of a")
    a = {"command": "train a", "init_from": None}
    (card / hub.STAGES_FILE).write_text(json.dumps({"stages": [a]}))
    logs = {}
    for name in ("b", "c"):
        (tmp_path / name).mkdir()
        logs[name] = {"command": f"train {name}", "init_from": str(card), "init_weights_sha256": weights_sha256(card)}
        (tmp_path / name / "train_log.json").write_text(json.dumps(logs[name]))
    assert [s["command"] for s in hub.training_stages(tmp_path / "b")] == ["train a", "train b"]
    d = {"command": "train d", "init_from": str(card)}
    (card / hub.STAGES_FILE).write_text(json.dumps({"stages": [a, logs["c"], d]}))
    (card / "model.safetensors").write_bytes(b"weights of d")
    assert [s["command"] for s in hub.training_stages(tmp_path / "c")] == ["train a", "train c"]
    with caplog.at_level("WARNING", logger="zoo.hub"):
        assert [s["command"] for s in hub.training_stages(tmp_path / "b")] == ["train b"]
    assert "the card" in caplog.text and "was replaced since the run started from it" in caplog.text
    # a run folder that no longer holds the weights a later run started from (it was trained again) stops it too
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "train_log.json").write_text(json.dumps(
        {"command": "train e", "init_from": str(tmp_path / "b"), "init_weights_sha256": "0" * 64}))
    (tmp_path / "b" / "model.safetensors").write_bytes(b"weights of b")
    caplog.clear()
    with caplog.at_level("WARNING", logger="zoo.hub"):
        assert [s["command"] for s in hub.training_stages(tmp_path / "e")] == ["train e"]
    assert "no longer holds the weights it started from" in caplog.text
    # without the hash (a log from before it was recorded) the chain is followed as it reads: into b, whose own
    # hash then stops it at the replaced card
    (tmp_path / "e" / "train_log.json").write_text(json.dumps({"command": "train e", "init_from": str(tmp_path / "b")}))
    assert [s["command"] for s in hub.training_stages(tmp_path / "e")] == ["train b", "train e"]


def test_card_names_its_dataset_from_the_data_and_compares_only_on_the_benchmark(tmp_path):
    """A card's dataset is the data it was measured on: a run on other data is never named MovieLens-1M by default,
    and naming it ml-1m does not make the card compare with the ML-1M papers' numbers (they were measured on the
    ML-1M 5-core, which a card recognises by its statistics)."""
    import yaml

    data, _ = _tiny_gru4rec_run(tmp_path)

    def card_meta(card):
        text = (card / "README.md").read_text()
        meta = yaml.safe_load(text.split("---")[1])
        return meta["datasets"], meta["model-index"][0]["results"][0]["dataset"], text

    hub.build_card_folder(str(tmp_path / "a"), "tiny", data, out_dir=str(tmp_path / "c1"))
    datasets, ds, text = card_meta(tmp_path / "c1")
    assert datasets == ["markov"] and (ds["type"], ds["name"]) == ("markov", "markov.tsv"), ds
    assert "Against the published numbers" not in text                    # GRU4Rec's reference is an ML-1M number
    hub.build_card_folder(str(tmp_path / "a"), "tiny", data, out_dir=str(tmp_path / "c2"), dataset_type="ml-1m",
                          dataset_name="MovieLens-1M (5-core)")
    datasets, ds, text = card_meta(tmp_path / "c2")
    assert datasets == ["ml-1m"] and ds["name"] == "MovieLens-1M (5-core)"  # named as asked ...
    assert "Against the published numbers" not in text                    # ... but not the benchmark
    # the names: as given, else the recognised benchmark's, else the replaced card's, else the file's
    ml1m = hub.BENCHMARKS["ml-1m-5core"]
    assert hub._dataset_names(None, None, "ml-1m-5core", {"type": "x", "name": "X"}, "f.tsv") == ml1m[1:]
    assert hub._dataset_names("t", None, "ml-1m-5core", {}, "f.tsv") == ("t", ml1m[2])
    assert hub._dataset_names(None, None, None, {"type": "x", "name": "X"}, "f.tsv") == ("x", "X")
    assert hub._dataset_names(None, "N", None, {}, "my.data.csv.gz") == ("my", "N")


def test_the_benchmarks_are_recognised_by_their_statistics(shared_data):
    """Every benchmark file of the data folder, loaded as the cards load it (k-core auto) and unfiltered, is the
    benchmark BENCHMARKS names; ML-1M's 5-core is the one the published numbers belong to."""
    import json

    from tests.conftest import ROOT
    from zoo.data import load_dataset

    expected = {"ml-1m.5core.seq.gz": ("ml-1m-5core", "ml-1m-5core"),
                "ml-1m.users0001-2999.inter.gz": ("ml-1m-u2999-5core", "ml-1m-u2999"),
                "beauty.inter.gz": ("beauty-5core", "beauty-5core"),
                "sports.inter.gz": ("sports-5core", "sports-5core"),
                "ml-100k.inter.gz": ("ml-100k-5core", "ml-100k")}
    for name, (auto, unfiltered) in expected.items():
        if not (shared_data / name).exists():
            pytest.skip(f"{name} not found in {shared_data}")
        assert hub.recognise_benchmark(load_dataset(shared_data / name)) == auto, name
        assert hub.recognise_benchmark(load_dataset(shared_data / name, kcore=None)) == unfiltered, name
    assert hub.PUBLISHED_ON == "ml-1m-5core"
    # every bundled card names its dataset as the recognition would
    for card in sorted((ROOT / "hub_cards").iterdir()):
        info = json.loads((card / "eval_results.json").read_text())
        loaded = load_dataset(shared_data / info["data_file"], **hub.run_data_options(info))
        key = hub.recognise_benchmark(loaded)
        assert key is not None and hub._card_dataset(card) == dict(zip(("type", "name"), hub.BENCHMARKS[key][1:])), card


def test_recarding_a_folder_with_onnx_graphs_without_onnx_installed_stops_before_measuring(tmp_path, monkeypatch,
                                                                                           capsys):
    """A card folder holding ONNX graphs is re-exported after measuring: without onnx installed, `zoo.hub card`
    says so in one line (naming the extra) before any evaluation, exits 4 (a package missing here) and leaves the
    folder as it was."""
    import json
    import sys

    data, _ = _tiny_gru4rec_run(tmp_path)
    card = tmp_path / "card"
    (card / "onnx").mkdir(parents=True)
    (card / "onnx" / "state_spec.json").write_text(json.dumps({"kind": "step", "topk": 5, "outputs": []}))
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setattr("zoo.evaluate.evaluate_model", lambda *a, **k: pytest.fail("measured before the check"))
    with exits(capsys, 4, rf"^card not written: re-exporting the ONNX graphs of {card} needs onnx, "
                          r".*pip install 'ssm-rec-zoo\[export\]'"):
        hub.main(["card", "--run", str(tmp_path / "a"), "--name", "tiny", "--data", data, "--out", str(card),
                  "--overwrite"])
    assert [p.name for p in card.rglob("*")] == ["onnx", "state_spec.json"]


def test_a_run_on_a_file_with_other_column_names_keeps_them_through_card_evaluate_and_soup(tmp_path, capsys):
    """--columns names a file's user/item/time columns: the run logs them with its data options, its card's
    zoo.evaluate command carries them and reproduces the card's numbers, and zoo.soup reads the same data; a role
    given twice or an unknown role is a usage error."""
    import json
    import shlex

    import torch

    from tests.test_train import TINY, _markov_file
    from zoo.evaluate import main as evaluate_main
    from zoo.soup import main as soup_main
    from zoo.train import main as train_main

    torch.set_num_threads(1)
    data = _markov_file(tmp_path / "shop.csv", n_users=30, length=(12, 20))
    data.write_text("customer\tproduct\twhen\n" + data.read_text().split("\n", 1)[1])
    data = str(data)
    columns = ["--columns", "user=customer", "item=product", "time=when"]
    common = ["--model", "gru4rec", "--data", data, "--epochs", "1", "--max-len", "20", "--kcore", "0",
              "--no-progress", "--set", *TINY["gru4rec"]]
    with pytest.raises(SystemExit):                                   # the usual names are not there
        train_main(common + ["--out", str(tmp_path / "x")])
    train_main(common + ["--out", str(tmp_path / "a")] + columns)
    log = json.loads((tmp_path / "a" / "train_log.json").read_text())
    assert log["data_options"] == {"kcore": None, "time_ties": "file",
                                   "columns": {"user": "customer", "item": "product", "time": "when"}}
    card = tmp_path / "card"
    metrics = hub.build_card_folder(str(tmp_path / "a"), "tiny", data, out_dir=str(card))
    command = json.loads((card / "eval_results.json").read_text())["protocol"]["command"]
    assert command.endswith(" --kcore none --columns user=customer item=product time=when"), command
    flags = shlex.split(command)
    again = evaluate_main(["--model", str(card), "--data", data, "--no-progress", *flags[flags.index("--data") + 2:]])
    assert again["metrics"] == metrics and again["protocol"]["columns"] == log["data_options"]["columns"]
    train_main(common + ["--out", str(tmp_path / "b"), "--seed", "3"] + columns)
    soup_main(["--models", str(tmp_path / "a"), str(tmp_path / "b"), "--data", data, "--kcore", "0",
               "--out", str(tmp_path / "soup"), "--method", "uniform"] + columns)
    assert json.loads((tmp_path / "soup" / hub.SOUP_LOG).read_text())["data_options"] == log["data_options"]
    for bad, message in ((["user=customer", "user=x"], "--columns: user given twice"),
                         (["usr=customer"], "expected ROLE=NAME with ROLE one of user, item, time")):
        capsys.readouterr()
        with pytest.raises(SystemExit):
            evaluate_main(["--model", str(card), "--data", data, "--columns", *bad])
        assert message in capsys.readouterr().err


def test_model_push_to_hub_uploads_the_item_vocabulary(monkeypatch):
    """``model.push_to_hub`` (transformers' own, not ``zoo.hub push``) saves through the zoo's ``save_pretrained``, so
    the uploaded commit holds the item vocabulary beside the weights (the Hub's calls are stubbed: no network)."""
    from tests.hub_fakes import record_commits

    model = Mamba4RecModel(Mamba4RecConfig(n_items=30, hidden_size=16, d_state=4)).eval()
    model.set_item_vocab(zoo.ItemVocab(list(range(100, 129))))
    uploaded = {}
    record_commits(monkeypatch, uploaded=uploaded, offline=True)    # the card lookup must not wait on a network
    model.push_to_hub("me/tiny", token="not-a-real-token")
    assert {"config.json", "model.safetensors", "item_vocab.json"} <= set(uploaded)


def test_card_refuses_an_unfinished_run_in_one_line(tmp_path):
    """An interrupted ``zoo.train`` run (its train_log.json written at its last validation, without the stop reason,
    the best epoch and the test metrics that the end of the run writes) is refused with the command that finishes it;
    one without resume state is told to train again. Nothing is written."""
    import json

    run = tmp_path / "run"
    (run / "resume").mkdir(parents=True)
    (run / "resume" / "state.json").write_text("{}")
    (run / "config.json").write_text("{}")
    (run / "model.safetensors").write_bytes(b"")
    command = "python -m zoo.train --model sasrec --data d.tsv --epochs 4 --out run"
    (run / "train_log.json").write_text(json.dumps({"command": command, "epochs": [{"epoch": 1}, {"epoch": 2}]}))
    argv = ["card", "--run", str(run), "--name", "x", "--data", "d.tsv", "--out", str(tmp_path / "card")]
    with pytest.raises(SystemExit) as e:
        hub.main(argv)
    assert str(e.value) == (f"card not written: {run} is an unfinished zoo.train run (interrupted: its train_log.json, "
                            "with 2 epochs, has no stopped, best_epoch, test): finish it with "
                            f"`{command} --resume` (from the directory it was started in), then card it")
    (run / "resume" / "state.json").unlink()
    with pytest.raises(SystemExit, match=r"has no stopped, best_epoch, test\): it holds no resume state \(resume/\) "
                                         "to continue from: train it again$"):
        hub.main(argv)
    (run / "train_log.json").write_text(json.dumps({"command": command, "stopped": "max epochs", "best_epoch": 2}))
    with pytest.raises(SystemExit, match="has no test"):
        hub.main(argv)
    (run / "train_log.json").write_text("[1, 2")
    with pytest.raises(SystemExit, match=f"card not written: the training log {run / 'train_log.json'}: cannot read"):
        hub.main(argv)
    assert not (tmp_path / "card").exists()


def test_push_that_cannot_reach_the_hub_fails_in_one_line(tmp_path, bundled, monkeypatch):
    """``zoo.hub push`` with a token but no Hub: offline mode (``OfflineModeIsEnabled``) and a refused connection (the
    HTTP client's ``ConnectError``, no ``OSError``) are one ``push failed: ...`` line and a non-zero exit, not a
    traceback; a programming error inside still raises as itself."""
    import huggingface_hub

    folder = tmp_path / "bundle" / "tiny-mamba4rec"
    (folder / "README.md").write_text("card")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    argv = ["push", str(folder), "--repo-id", "me/x"]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SystemExit, match=r"^push failed: OfflineModeIsEnabled: Cannot reach .*offline mode.*; "
                                         r"nothing was committed \(push failed before its upload\)$") as e:
        hub.main(argv)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")     # closed port: refused at once
    with pytest.raises(SystemExit, match=r"^push failed: ConnectError: .*\(reaching the Hub at http://127.0.0.1:9\); "
                                         r"nothing was committed \(push failed before its upload\)$"):
        hub.main(argv)

    def broken(self, repo_id, **kw):
        raise TypeError("a bug")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", broken)
    with pytest.raises(TypeError, match="a bug"):
        hub.main(argv)


def test_training_stages_find_a_relative_or_placeholder_init_from(tmp_path, bundled, monkeypatch, caplog):
    """A run's ``init_from`` is as typed to zoo.train, relative to where it ran: it is looked for under the working
    directory the log records, the run folder's parent, then the current directory (the first holding the weights the
    run started from, when its log has their hash), and a Hub id of the project's or the docs' placeholder
    organisation is the bundled copy; where none is found the warning lists what was tried."""
    import json

    from zoo.pretrained import weights_sha256

    def run(folder, cmd, init_from=None, **extra):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train_log.json").write_text(json.dumps({"command": cmd, "init_from": init_from, **extra}))
        return folder

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run(work / "a", "train a")
    b = run(work / "b", "train b", "a")                         # --out b --init-from a, both in work/
    assert [s["command"] for s in hub.training_stages(b)] == ["train a", "train b"]
    c = run(work / "runs" / "c", "train c", "a", cwd=str(work))     # --out runs/c --init-from a, run from work/
    assert [s["command"] for s in hub.training_stages(c)] == ["train a", "train c"]
    c = run(work / "runs" / "c", "train c", "a")                # without the log's cwd: not found, and said where
    with caplog.at_level("WARNING", logger="zoo.hub"):
        assert [s["command"] for s in hub.training_stages(c)] == ["train c"]
    assert (f"init_from a not found; tried {work / 'runs' / 'a'}, {elsewhere / 'a'}") in caplog.text
    run(elsewhere / "z", "train z")
    assert [s["command"] for s in hub.training_stages(run(work / "d", "train d", "z"))] == ["train z", "train d"]
    # a folder of that name under the parent and another under the current directory: the one with the weights
    for where in (work, elsewhere):
        run(where / "y", f"train y in {where.name}")
        (where / "y" / "model.safetensors").write_bytes(f"weights in {where.name}".encode())
    for where in (work, elsewhere):
        e = run(work / "e", "train e", "y", init_weights_sha256=weights_sha256(where / "y"))
        assert [s["command"] for s in hub.training_stages(e)] == [f"train y in {where.name}", "train e"]
    # the bundled model under the project's organisation and under the docs' placeholder one ("org")
    card = tmp_path / "bundle" / "tiny-mamba4rec"
    (card / hub.STAGES_FILE).write_text(json.dumps({"stages": [{"command": "train bundled"}]}))
    for org in (hub.HUB_ORG, "org"):
        f = run(work / "f", "train f", f"{org}/tiny-mamba4rec", init_weights_sha256=weights_sha256(card))
        assert [s["command"] for s in hub.training_stages(f)] == ["train bundled", "train f"], org
    caplog.clear()
    with caplog.at_level("WARNING", logger="zoo.hub"):
        assert [s["command"] for s in hub.training_stages(run(work / "g", "train g", "someone/tiny-mamba4rec"))] == [
            "train g"]
        assert [s["command"] for s in hub.training_stages(run(work / "h", "train h", "org/no-such-model"))] == [
            "train h"]
    assert "init_from someone/tiny-mamba4rec not found" in caplog.text
    assert f"the bundled copy of {hub.HUB_ORG}/no-such-model (none)" in caplog.text


def test_a_run_that_dropped_unknown_items_is_carded_on_the_data_without_them(tmp_path, monkeypatch):
    """``zoo.train --init-from A --unknown-items drop`` left out the interactions of items A does not know; its card
    leaves them out too (it was refused: "not in the model's item vocabulary"), says how many, gives the zoo.evaluate
    command that reproduces its numbers (with --unknown-items drop) and, the data being no longer the whole benchmark,
    does not compare with the published numbers."""
    import json

    from zoo.evaluate import main as evaluate_main
    from zoo.train import main as train_main

    data, common = _tiny_gru4rec_run(tmp_path)
    lines = Path(data).read_text().splitlines()
    new = [f"{u}\t{300 + u % 4}\t{1}" for u in range(1, 11)]          # 4 items run a never saw, 10 interactions
    grown = tmp_path / "grown.tsv"
    grown.write_text("\n".join(lines[:1] + new + lines[1:]) + "\n")
    argv = [str(grown) if a == data else a for a in common]
    train_main(argv + ["--out", str(tmp_path / "d"), "--init-from", str(tmp_path / "a"), "--unknown-items", "drop"])
    run_log = json.loads((tmp_path / "d" / "train_log.json").read_text())
    assert run_log["init_items"]["dropped_interactions"] == 10
    _stand_in_for_the_published_benchmark(monkeypatch, str(grown))
    card = tmp_path / "card"
    metrics = hub.build_card_folder(str(tmp_path / "d"), "gru4rec-ml1m", str(grown), out_dir=str(card))
    info = json.loads((card / "eval_results.json").read_text())
    assert info["unknown_items"] == "drop" and info["dropped"] == {"items": 4, "interactions": 10, "users": 0}
    assert info["protocol"]["command"] == (f"python -m zoo.evaluate --model {card} --data {grown} "
                                           "--kcore none --unknown-items drop")
    text = (card / "README.md").read_text()
    assert ("As in training (`--unknown-items drop`), the interactions of the 4 items the model's item vocabulary "
            "lacks were dropped before the split: 10 interactions (0 users left with none)") in text
    assert "Against the published numbers" not in text
    again = evaluate_main(["--model", str(card), "--data", str(grown), "--kcore", "none", "--unknown-items", "drop",
                           "--no-progress"])["metrics"]
    assert again == metrics
    assert hub.run_unknown_items({}) == "error" and hub.run_unknown_items({"init_items": {"unknown_items": "add"}}) \
        == "error"


def test_convert_names_missing_and_misshaped_keys_in_one_line(tmp_path):
    """A state dict missing a key the config is read off, or holding a tensor of the wrong shape, is refused with a
    ValueError naming the key (not a KeyError of the bare key, not load_state_dict's RuntimeError traceback); a
    Mamba4Rec d_inner that is no multiple of the hidden size is refused, not rounded into another model."""
    from zoo.models.sasrec import SASRecConfig, SASRecModel

    sd = SASRecModel(SASRecConfig(n_items=6, max_seq_length=5, hidden_size=8, num_layers=2, num_heads=1,
                                  inner_size=8)).state_dict()

    def refused(state, match, model="sasrec", **kw):
        torch.save(state, tmp_path / "S.pth")
        with pytest.raises(ValueError, match=match):
            convert(model, str(tmp_path / "S.pth"), str(tmp_path / "out"), **kw)
        assert not (tmp_path / "out").exists()

    for key in ("position_embedding.weight", "item_embedding.weight",
                "trm_encoder.layer.0.feed_forward.dense_1.weight"):
        refused({k: v for k, v in sd.items() if k != key},
                rf"^not a SASRec state dict in the official key layout: {re.escape(key)} missing$",
                overrides={"num_heads": 1})
    bad = {**sd, "trm_encoder.layer.1.feed_forward.dense_1.weight": torch.zeros(9, 8)}
    refused(bad, r"do not fit SASRecModel .*: trm_encoder\.layer\.1\.feed_forward\.dense_1\.weight \(9, 8\) "
                 r"\(expected \(8, 8\)\)$", overrides={"num_heads": 1})
    msd = _official_layout(Mamba4RecModel(Mamba4RecConfig(n_items=6, max_seq_length=5, hidden_size=8, num_layers=2,
                                                          d_state=4, expand=2, inner_size=8)))
    refused({k: v for k, v in msd.items() if k != "mamba_layers.0.mamba.A_log"},
            r"^not a Mamba4Rec state dict in the official key layout: mamba_layers\.0\.mamba\.A_log missing$",
            "mamba4rec")
    refused({**msd, "mamba_layers.1.mamba.A_log": torch.zeros(16, 8)},
            r"mamba_layers\.1\.mamba\.A_log \(16, 8\) \(expected \(16, 4\)\)", "mamba4rec", max_seq_length=5)
    refused({**msd, "mamba_layers.0.mamba.A_log": torch.zeros(12, 4)},
            r"d_inner 12, not a multiple of hidden size 8", "mamba4rec")


def test_a_run_saved_without_a_vocabulary_is_refused_before_measuring(tmp_path, monkeypatch):
    """A card folder ships item_vocab.json (CARD_FILES, the card text): a run saved without one is refused up front,
    before any evaluation, naming the run and the cause, and no card folder is made."""
    import zoo.evaluate

    data, _ = _tiny_gru4rec_run(tmp_path)
    m = AutoModel.from_pretrained(tmp_path / "a")
    m.set_item_vocab(None)
    m.save_pretrained(tmp_path / "a")
    assert not (tmp_path / "a" / "item_vocab.json").exists()

    def no_evaluation(*a, **kw):
        raise AssertionError("evaluated before refusing")

    monkeypatch.setattr(zoo.evaluate, "evaluate_model", no_evaluation)
    with pytest.raises(ValueError, match=r"a\b.* was saved without an item vocabulary \(config\.json: "
                                         r"item_vocab_file null\)"):
        hub.build_card_folder(str(tmp_path / "a"), "x", data, out_dir=str(tmp_path / "card"))
    assert not (tmp_path / "card").exists()


def test_the_cards_evaluate_command_quotes_a_data_file_name_with_a_space(tmp_path):
    import shlex
    import shutil

    data, _ = _tiny_gru4rec_run(tmp_path)
    spaced = tmp_path / "my data.tsv"
    shutil.copyfile(data, spaced)
    hub.build_card_folder(str(tmp_path / "a"), "g", str(spaced), out_dir=str(tmp_path / "card"))
    cmd = json.loads((tmp_path / "card" / "eval_results.json").read_text())["protocol"]["command"]
    words = shlex.split(cmd)
    assert words[words.index("--data") + 1] == str(spaced)          # the path as given, quoted
    assert f"`{cmd}`" in (tmp_path / "card" / "README.md").read_text()


def test_loading_names_a_missing_config_and_another_architectures_weights(tmp_path):
    """A folder without config.json is named as such; a gru4rec config over SASRec weights is refused naming the
    missing and unexpected keys (as the load's own check words it), before transformers' load report."""
    import os

    from zoo.modeling_utils import SeqRecPreTrainedModel
    from zoo.models.sasrec import SASRecConfig, SASRecModel

    m = SASRecModel(SASRecConfig(n_items=6, max_seq_length=5, hidden_size=8, num_layers=1, num_heads=1,
                                 inner_size=8))
    m.save_pretrained(tmp_path / "noconfig")
    os.remove(tmp_path / "noconfig" / "config.json")
    for cls in (SeqRecPreTrainedModel, SASRecModel):
        with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / 'noconfig' / 'config.json'))} is missing"):
            cls.from_pretrained(tmp_path / "noconfig")
    m.save_pretrained(tmp_path / "gru")
    cfg = json.loads((tmp_path / "gru" / "config.json").read_text())
    cfg.update(model_type="gru4rec", architectures=["GRU4RecModel"])
    (tmp_path / "gru" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"do not match GRU4RecModel\(gru4rec\): missing keys: \[.*\]; unexpected keys: "
                                         r"\['LayerNorm\.bias'"):
        AutoModel.from_pretrained(tmp_path / "gru")


# ------------------------------------------------------- QA SW6 / C2: revision and download arguments, subfolder
def test_a_pinned_revision_is_never_served_the_bundled_copy(bundled, tmp_path, monkeypatch):
    """``from_pretrained(hub_id, revision="v9.9")`` loaded main (or the bundled copy) without a word: pinning a revision
    is a reproducibility contract. Offline (or with the Hub unreachable) only the main revision falls back to the
    bundled copy; another is looked up in the cache and is an error naming it when it is not there."""
    repo = f"{hub.HUB_ORG}/tiny-mamba4rec"
    ids = torch.tensor([[1, 2, 3]])
    commit = (tmp_path / "hf" / f"models--{hub.HUB_ORG}--tiny-mamba4rec" / "refs" / "main").read_text().strip()
    for offline in (True, False):
        if offline:
            monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        else:
            monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
            monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")        # closed port: refused at once
        for revision in (None, "main", commit):                           # the seeded cache holds main's commit
            m = Mamba4RecModel.from_pretrained(repo, revision=revision).eval()
            assert torch.equal(m(ids).logits, bundled(ids).logits)
        with pytest.raises(OSError, match=rf"cannot load '{repo}' at revision 'v9\.9': .*not in the local cache"):
            Mamba4RecModel.from_pretrained(repo, revision="v9.9")
    with pytest.raises(OSError):
        AutoModel.from_pretrained(repo, revision="v9.9")


def test_the_hub_download_gets_the_revision_and_the_download_arguments(bundled, tmp_path, monkeypatch):
    """``revision``, ``subfolder``, ``cache_dir``, ``token``, ``local_files_only`` and ``force_download`` reach
    ``snapshot_download`` (stubbed: no network); a revision the Hub refuses is an error naming it, while main still
    falls back to the bundled copy."""
    import huggingface_hub

    from zoo import pretrained

    bundled.save_pretrained(tmp_path / "snapshot" / "sub")
    calls = []

    def snapshot_download(**kw):
        calls.append(kw)
        if kw.get("revision") != "abc123":                  # stands in for huggingface_hub's RevisionNotFoundError
            raise OSError(f"404 Client Error: Revision Not Found for revision {kw.get('revision')}")
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(pretrained, "hub_reachable", lambda timeout=None: True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    repo = f"{hub.HUB_ORG}/tiny-mamba4rec"
    ids = torch.tensor([[1, 2, 3]])
    m = Mamba4RecModel.from_pretrained(repo, revision="abc123", subfolder="sub", cache_dir=str(tmp_path / "c"),
                                       token="hf_not_a_real_token", force_download=True).eval()
    assert torch.equal(m(ids).logits, bundled(ids).logits)
    assert calls == [dict(repo_id=repo, revision="abc123", cache_dir=str(tmp_path / "c"), token="hf_not_a_real_token",
                          force_download=True, allow_patterns=["sub/*.json", "sub/*.safetensors", "sub/*.md"])]
    with pytest.raises(OSError, match=rf"^cannot load '{repo}' at revision 'v9\.9': 404 Client Error"):
        Mamba4RecModel.from_pretrained(repo, revision="v9.9")
    with pytest.raises(ValueError, match=rf"^'{repo}' at revision 'abc123' has no subfolder 'nope'"):
        Mamba4RecModel.from_pretrained(repo, revision="abc123", subfolder="nope")
    calls.clear()
    assert isinstance(Mamba4RecModel.from_pretrained(repo, local_files_only=True), Mamba4RecModel)   # bundled
    assert calls[0]["local_files_only"] is True and calls[0]["revision"] is None
    for revision in (None, "main"):                                     # main: the bundled copy, as before
        assert isinstance(Mamba4RecModel.from_pretrained(repo, revision=revision), Mamba4RecModel)


def test_subfolder_loads_from_it_and_use_safetensors_false_is_refused(tmp_path):
    """``subfolder="nope"`` and ``use_safetensors=False`` were reported as a "corrupt weight file" (the except clause
    matched "safetensor" in transformers' "no file named model.safetensors"). A subfolder is now where the model is
    loaded from, a missing one an error naming it; ``use_safetensors=False`` is refused up front."""
    model = Mamba4RecModel(Mamba4RecConfig(n_items=30, hidden_size=16, d_state=4)).eval()
    model.save_pretrained(tmp_path / "repo" / "sub")
    ids = torch.tensor([[1, 2, 3]])
    for load in (Mamba4RecModel.from_pretrained, AutoModel.from_pretrained):
        assert torch.equal(load(tmp_path / "repo", subfolder="sub").eval()(ids).logits, model(ids).logits)
        with pytest.raises(ValueError, match=r"^use_safetensors=False: zoo models are saved and loaded as "
                                             r"safetensors only"):
            load(tmp_path / "repo" / "sub", use_safetensors=False)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / 'repo'))} has no subfolder 'nope'"):
        Mamba4RecModel.from_pretrained(tmp_path / "repo", subfolder="nope")
    (tmp_path / "repo" / "sub" / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupt weight file"):                  # real corruption still is one
        Mamba4RecModel.from_pretrained(tmp_path / "repo", subfolder="sub")


def test_card_out_defaults_to_hub_cards_under_the_current_directory(tmp_path, monkeypatch, capsys):
    """``zoo.hub card`` without ``--out`` wrote into the *package's* hub_cards/ from any directory (a user's model
    then listed as a bundled ``ssm-rec-zoo/`` one; a copy of a card "re-measured in place" replaced the bundled card)
    and printed only the paths of its hidden staging folder. The default is ``./hub_cards/<name>`` now: a copy of a
    card re-measured from its own directory is re-written there, ONNX graph included, and the folder written is
    printed, never a stage."""
    import shutil

    from export.onnx import main as onnx_main
    from zoo.evaluate import main as evaluate_main

    data, _ = _tiny_gru4rec_run(tmp_path)
    monkeypatch.setattr(hub, "__file__", str(tmp_path / "pkg" / "zoo" / "hub.py"))   # where the package would be
    monkeypatch.delenv("ZOO_BUNDLED_DIR", raising=False)
    first = tmp_path / "elsewhere"
    first.mkdir()
    monkeypatch.chdir(first)
    hub.main(["card", "--run", str(tmp_path / "a"), "--name", "tiny", "--data", data])
    card = first / "hub_cards" / "tiny"
    assert (card / "README.md").is_file() and not (tmp_path / "pkg").exists()
    assert f"wrote card {card} " in capsys.readouterr().err
    assert onnx_main(["--model", str(card), "--card-dir", str(card), "--topk", "5", "--verify-prime", "10",
                      "--verify-steps", "10", "--verify-cases", "50"]) == 0
    # a copy of the card, re-measured in place from the copy's directory, as README's in-place command does
    copy = tmp_path / "copy"
    shutil.copytree(first / "hub_cards", copy / "hub_cards")
    (copy / "hub_cards" / "tiny" / "onnx" / "model.onnx").unlink()          # the re-export must write it again
    before = {f.relative_to(card): f.read_bytes() for f in card.rglob("*") if f.is_file()}
    monkeypatch.chdir(copy)
    capsys.readouterr()
    hub.main(["card", "--run", "hub_cards/tiny", "--name", "tiny", "--data", data, "--keep-notes"])
    out = capsys.readouterr().err
    assert (copy / "hub_cards" / "tiny" / "onnx" / "model.onnx").is_file()
    assert {f.relative_to(card): f.read_bytes() for f in card.rglob("*") if f.is_file()} == before   # untouched
    assert f"wrote card {copy / 'hub_cards' / 'tiny'} " in out and ".staged-" not in out, out
    assert "python -m export.onnx --model hub_cards/tiny --card-dir hub_cards/tiny" in out
    assert "card section written to hub_cards/tiny/README.md" in out
    assert not (tmp_path / "pkg").exists()
    # the copy's card loads by its folder and says nothing of a bundled copy; its command runs as written there
    info = json.loads((copy / "hub_cards" / "tiny" / "eval_results.json").read_text())
    assert info["protocol"]["command"] == f"python -m zoo.evaluate --model hub_cards/tiny --data {data} --kcore none"
    text = (copy / "hub_cards" / "tiny" / "README.md").read_text()
    assert 'AutoModel.from_pretrained("hub_cards/tiny")' in text and "bundled" not in text.split("## Evaluation")[0]
    assert f"{hub.HUB_ORG}/tiny" not in text
    again = evaluate_main(info["protocol"]["command"].split()[3:] + ["--no-progress"])
    assert again["metrics"] == pytest.approx(info["metrics"])


def test_only_a_card_in_the_bundled_folder_names_the_projects_hub_id(tmp_path, monkeypatch):
    """A card of a user's own model said ``from_pretrained("ssm-rec-zoo/<name>")   # works offline: a copy is bundled``
    and gave a "Measured by" command with that id, which fails for any model not bundled. Only a card written into a
    bundled folder (a checkout's hub_cards/, as README's commands from the repository root write it) says so; another
    names ``--repo-id`` when given, else its folder."""
    import yaml

    data, _ = _tiny_gru4rec_run(tmp_path)
    monkeypatch.setattr(hub, "__file__", str(tmp_path / "pkg" / "zoo" / "hub.py"))   # never the package's cards
    repo = tmp_path / "repo"
    (repo / "hub_cards").mkdir(parents=True)
    monkeypatch.setenv("ZOO_BUNDLED_DIR", str(repo / "hub_cards"))
    monkeypatch.chdir(repo)
    hub.main(["card", "--run", str(tmp_path / "a"), "--name", "tiny", "--data", data])      # from the "root"
    assert hub.is_bundled_card("hub_cards/tiny", "tiny") and not hub.is_bundled_card("hub_cards/tiny", "other")
    text = (repo / "hub_cards" / "tiny" / "README.md").read_text()
    assert f'from_pretrained("{hub.HUB_ORG}/tiny")   # works offline: a copy is bundled with ssm-rec-zoo' in text
    assert f"Measured by `python -m zoo.evaluate --model {hub.HUB_ORG}/tiny --data {data} --kcore none`" in text
    # a user's card with the Hub id it will be pushed to, and one without: never the project's id
    mine = tmp_path / "cards" / "tiny"
    hub.main(["card", "--run", str(tmp_path / "a"), "--name", "tiny", "--data", data, "--out", str(mine),
              "--repo-id", "me/tiny-shop"])
    text = (mine / "README.md").read_text()
    assert 'from_pretrained("me/tiny-shop")   # the Hub id this card is published as' in text
    assert "works offline" not in text and f"{hub.HUB_ORG}/tiny" not in text
    assert "Measured by `python -m zoo.evaluate --model me/tiny-shop --data" in text
    assert yaml.safe_load(text.split("---")[1])["model-index"][0]["name"] == "me/tiny-shop"
    plain = tmp_path / "cards" / "plain"
    hub.build_card_folder(str(tmp_path / "a"), "tiny", data, out_dir=str(plain))
    text = (plain / "README.md").read_text()
    assert f"from_pretrained({json.dumps(str(plain))})" in text and "works offline" not in text
    assert f"--model {plain} --data {data}" in text and f"{hub.HUB_ORG}/tiny" not in text


def test_cards_cite_only_references_a_reader_can_resolve():
    """The cards cited "models.md §7/§8" (a file outside the repository and the Hub) and "issue #3" (of no named
    repository): the reference sources are papers, a named public issue, or a plain statement."""
    for kind, ref in hub.PUBLISHED.items():
        assert "models.md" not in ref["source"] and not re.search(r"(?<!RecBole )issue #?\d", ref["source"]), kind
    for readme in sorted((Path(__file__).resolve().parents[1] / "hub_cards").glob("*/README.md")):
        text = readme.read_text()
        assert "models.md" not in text and not re.search(r"(?<!RecBole )\bissue #?\d", text), readme.parent.name


@pytest.mark.parametrize("name,says", [
    ("runs/sasrec-ml1m", "there is no folder runs/ here"),
    ("hub_cards/no-such-card", "hub_cards/ holds no folder 'no-such-card'"),
])
def test_a_path_like_name_that_does_not_exist_is_a_missing_local_folder(tmp_path, monkeypatch, name, says):
    """``runs/sasrec-ml1m`` (export/README.md's examples: a training run) was taken for a Hub id, and the error
    spoke of the Hub and its cache; a name whose first part is an existing folder or a folder the docs write runs
    into is a local path that does not exist, the Hub never asked."""
    from zoo.pretrained import resolve_pretrained

    (tmp_path / "hub_cards").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("zoo.pretrained.hub_reachable", lambda *a: pytest.fail("the Hub was asked"))
    with pytest.raises(ValueError) as e:
        resolve_pretrained(name)
    assert "is not an existing local folder" in str(e.value) and says in str(e.value), e.value
    assert "Hub" not in str(e.value) and "cache" not in str(e.value)


def test_a_bundled_models_short_name_points_at_its_hub_id():
    """``--model sasrec-ml1m`` (the name ``zoo.hub list`` and the folder show) was refused without pointing at
    ``ssm-rec-zoo/sasrec-ml1m``."""
    from zoo.pretrained import resolve_pretrained

    with pytest.raises(ValueError, match=f"did you mean {hub.HUB_ORG}/sasrec-ml1m, the bundled model"):
        resolve_pretrained("sasrec-ml1m")
    with pytest.raises(ValueError) as e:
        resolve_pretrained("no-such-model")
    assert "did you mean" not in str(e.value)


@pytest.mark.parametrize("flag,value,text", [
    ("--model", "hub_cards/tiny", "--model hub_cards/tiny"),           # the usual form, as the bundled cards have it
    ("--data", "my data.tsv", "--data 'my data.tsv'"),
    ("--model", "-card", "--model=-card"),                            # a leading dash: joined to the option
    ("--data", "-my data.tsv", "'--data=-my data.tsv'"),
    ("--out", "-", "--out=-")])
def test_shell_option_runs_as_shown_for_a_value_that_begins_with_a_dash(flag, value, text):
    """``--model -card`` (shlex.quote leaves a leading dash as it is) is argparse's ``expected one argument``: a value
    that begins with ``-`` is written joined to its option, any other as ``--flag VALUE``."""
    import argparse
    import shlex

    from export.fsutil import shell_option      # one helper: zoo.hub, zoo.train and export.triton's READMEs

    assert shell_option(flag, value) == text
    p = argparse.ArgumentParser()
    p.add_argument(flag)
    assert vars(p.parse_args(shlex.split(text))) == {flag.lstrip("-"): value}


def test_a_card_of_folders_and_data_that_begin_with_a_dash_writes_commands_that_run(tmp_path, monkeypatch, capsys):
    """A run folder ``-dash``, data ``-w.tsv`` and a card folder ``-card`` (given as ``--run=-dash``): the card's
    evaluate commands wrote ``--model -card --data -w.tsv`` (argparse: ``expected one argument``), and re-measuring
    the card with its ONNX graph re-exported it with ``["--data", "-w.tsv"]``, which export.onnx refused (exit 2).
    The commands run as written now, and the re-export works."""
    import shlex
    import shutil

    from export.onnx import main as onnx_main
    from zoo.evaluate import main as evaluate_main

    data, _ = _tiny_gru4rec_run(tmp_path)
    shutil.copytree(tmp_path / "a", tmp_path / "-dash")
    shutil.copyfile(data, tmp_path / "-w.tsv")
    monkeypatch.chdir(tmp_path)
    hub.main(["card", "--run=-dash", "--name", "dash-card", "--data=-w.tsv", "--out=-card", "--no-progress"])
    info = json.loads((tmp_path / "-card" / "eval_results.json").read_text())
    command = info["protocol"]["command"]
    assert command == "python -m zoo.evaluate --model=-card --data=-w.tsv --kcore none", command
    assert f"`{command}`" in (tmp_path / "-card" / "README.md").read_text()
    again = evaluate_main(shlex.split(command)[3:] + ["--no-progress"])
    assert again["metrics"] == pytest.approx(info["metrics"])
    for baseline in info["baselines"].values():
        words = shlex.split(baseline["command"])
        assert words[3:5] == ["--baseline", words[4]] and "--data=-w.tsv" in words, words
        assert evaluate_main(words[3:] + ["--no-progress"])["metrics"]["NDCG@10"] == pytest.approx(
            baseline["metrics"]["NDCG@10"])
    assert onnx_main(["--model=-card", "--card-dir=-card", "--topk", "5", "--verify-prime", "10",
                      "--verify-steps", "10", "--verify-cases", "50"]) == 0
    capsys.readouterr()
    hub.main(["card", "--run=-card", "--name", "dash-card", "--data=-w.tsv", "--out=-card", "--no-progress"])
    out = capsys.readouterr().err
    assert "python -m export.onnx --model=-card --card-dir=-card --kind step --topk 5 --data=-w.tsv" in out, out
    spec = json.loads((tmp_path / "-card" / "onnx" / "state_spec.json").read_text())
    assert spec["verification"]["passed"]


def test_an_unfinished_runs_fallback_command_names_a_dash_folder_as_it_runs(tmp_path, monkeypatch):
    """A log without its command: the ``--resume`` hint for a run folder ``-run`` said ``--out -run``."""
    run = tmp_path / "-run"
    (run / "resume").mkdir(parents=True)
    (run / "resume" / "state.json").write_text("{}")
    (run / "train_log.json").write_text(json.dumps({"epochs": [{"epoch": 1}]}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=re.escape("`python -m zoo.train ... --out=-run --resume`")):
        hub.check_finished("-run")


@pytest.mark.parametrize("name", ["../esc", "/abs/esc", "a/b", "name é 中文", "é中文", "-x", "x-", ".x", "x.", "a--b",
                                  "a..b", "..", "x.git", "a b", "", "x" * 97])
def test_card_refuses_a_name_that_is_no_hub_repository_name(tmp_path, monkeypatch, capsys, name):
    """``--name`` is the default --out's folder name and the Hub name: ``../esc`` wrote outside hub_cards/, an
    absolute name replaced the whole path, ``name é 中文`` was taken though the Hub refuses it. A usage error naming
    --name, before any work (the run and the data are not even looked at); nothing written."""
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    with exits(capsys, 2, re.escape(f"--name {name!r}: ")):
        hub.main(["card", "--run", str(tmp_path / "no-run"), f"--name={name}", "--data", str(tmp_path / "no.tsv")])
    assert [p.name for p in tmp_path.rglob("*")] == ["sub"]


def test_card_names_of_the_bundled_cards_and_the_docs_are_valid():
    """The names the bundled cards, the tests and README use pass the --name check (``x`` * 96 is the longest)."""
    names = [*hub.bundled_models(), "tiny", "tiny-b4r", "g", "x", "dash-card", "mamba4rec-shop", "a_b.c", "x" * 96]
    assert {n: hub.card_name_problem(n) for n in names} == {n: None for n in names}


def test_a_model_only_in_a_subfolder_is_named_with_the_option_that_loads_it(tmp_path, monkeypatch, capsys):
    """A Hub snapshot (or a local folder) holding its model in ``sub/`` only, loaded without ``--subfolder``, was
    called "a partial download (AutoConfig.from_pretrained and ModelCard.load fetch config.json or README.md
    alone)" (a local folder: transformers' missing config.json): the message says where the model files are and
    that ``--subfolder sub`` loads them (zoo.recommend: exit 1, one line); several such folders are all named."""
    import huggingface_hub.constants as c

    from test_pretrained_cache import PROXY_VARS, files_of, snapshot, tiny
    from zoo.pretrained import resolve_pretrained
    from zoo.recommend import main as recommend_main

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in PROXY_VARS + ("HF_ENDPOINT", "ZOO_HUB_PROBE_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    folder = tmp_path / "nested"
    tiny().save_pretrained(folder / "sub")
    snapshot(tmp_path / "hf", "acme/nested", files_of(folder / "sub", "sub/"), rev="c" * 40)
    hint = (r"the model files are in subfolder 'sub': pass --subfolder sub "
            r"\(from_pretrained\(\.\.\., subfolder='sub'\)\)")
    for where in ("acme/nested", str(folder)):
        with pytest.raises(OSError, match=rf"lacks config\.json.*; {hint}$") as e:
            resolve_pretrained(where)
        assert "partial download" not in str(e.value)
        assert resolve_pretrained(where, subfolder="sub").endswith("sub")
    with exits(capsys, 1, rf"^error: --model {re.escape(str(folder))}: cannot load .*{hint}$"):
        recommend_main(["--model", str(folder), "--history", "100"])
    tiny().save_pretrained(folder / "other" / "v2")
    with pytest.raises(OSError, match=r"in subfolders 'other/v2', 'sub': pass --subfolder DIR"):
        resolve_pretrained(str(folder))


def test_an_oversized_item_vocabulary_is_refused_by_its_size_before_it_is_read(tmp_path, monkeypatch):
    """An item_vocab.json far larger than any vocabulary (1.6 GB) was read and parsed whole (10-17 s) before it was
    refused: its size is checked first (os.stat), and the refusal names the file and its size; nothing is read."""
    import export.vocab_format as vocab_format
    from export.vocab_format import read_graph_vocab

    model = Mamba4RecModel(Mamba4RecConfig(n_items=30, hidden_size=16, d_state=4)).eval()
    model.set_item_vocab(zoo.ItemVocab(list(range(100, 129))))
    model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "item_vocab.json"
    size = path.stat().st_size
    assert zoo.ItemVocab.load(path).items == list(range(100, 129))             # under the limit: read as before
    monkeypatch.setattr(vocab_format, "MAX_VOCAB_BYTES", size - 1)
    monkeypatch.setattr(vocab_format, "read_json", lambda p, what: pytest.fail(f"{p} was read"))
    want = rf"^item vocabulary {re.escape(str(path))} is {size:,} bytes, more than the {size - 1:,} an item vocabulary"
    for source in (path, path.parent):
        with pytest.raises(ValueError, match=want):
            zoo.ItemVocab.load(source)
    with pytest.raises(ValueError, match=rf"item vocabulary {re.escape(str(path))} is {size:,} bytes"):
        Mamba4RecModel.from_pretrained(str(tmp_path / "m"))
    with pytest.raises(ValueError, match=want):             # the serving runtime's and Triton generator's reader too
        read_graph_vocab(path, 30)
