"""The model registry (:mod:`zoo.models`): a ``model_type`` another model already uses is refused at registration,
naming both (a copied model file replaced the zoo's model process-wide; ``"mamba"`` replaced transformers' own); a
listed module that does not exist is an ``ImportError`` naming it; :func:`zoo.register_model` registers a model of
another package, and a model class loads its own ``model_type``; the keys transformers writes into ``config.json``
(``auto_map``, ``custom_pipelines``) are not warned about; the card's family tag comes from the model class's
``model_family``; and a push deletes the repo's stale vocabulary and weight files in its one commit."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_MAPPING

import zoo
from tiny_models import tiny
from zoo import hub
from zoo.modeling_utils import SeqRecConfig, SeqRecPreTrainedModel, StateTensorSpec, config_rate
from zoo.models import MODELS
from zoo.models.gru4rec import GRU4RecConfig, GRU4RecModel

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
#: the bundled models that are state-space / linear-recurrent models (the list zoo/hub.py held before model_family)
SSM = {"mamba4rec", "lrurec", "tim4rec", "tim4rec_causal", "ssd4rec"}


class EMAConfig(SeqRecConfig):
    """A contributor's model (the QA hunter's EMA4Rec): ``h_t = a h_{t-1} + (1 - a) W x_t``, right padding."""

    model_type = "test_registry_ema"

    def __init__(self, n_items: int = 12, max_seq_length: int = 6, hidden_size: int = 8, dropout_prob: float = 0.0,
                 initializer_range: float = 0.02, **kwargs):
        self.dropout_prob = config_rate(dropout_prob, "dropout_prob")
        super().__init__(n_items=n_items, max_seq_length=max_seq_length, hidden_size=hidden_size,
                         initializer_range=initializer_range, **kwargs)


class EMAModel(SeqRecPreTrainedModel):
    """``input_ids [B, L]`` -> hidden ``[B, L, D]``; exact step with state ``ema_state [B, D]``."""

    config_class = EMAConfig
    model_family = "ssm"
    has_exact_step = True

    def __init__(self, config: EMAConfig):
        super().__init__(config)
        D = config.hidden_size
        self.item_embedding = nn.Embedding(config.n_items, D, padding_idx=0)
        self.proj = nn.Linear(D, D)
        self.decay_logit = nn.Parameter(torch.full((D,), 2.0))
        self.post_init()

    def _run(self, item_ids, h):
        x = self.proj(self.item_embedding(item_ids))                              # [B, T, D]
        a = torch.sigmoid(self.decay_logit)
        out = []
        for t in range(x.shape[1]):
            h = a * h + (1 - a) * x[:, t]
            out.append(h)
        return torch.stack(out, 1), h

    def encode(self, input_ids, attention_mask, timestamps=None):
        return self._run(input_ids, self.proj.weight.new_zeros(input_ids.shape[0], self.config.hidden_size))[0]

    def item_output(self):
        return self.item_embedding.weight, None

    def state_spec(self, batch_size):
        return [StateTensorSpec("ema_state", (batch_size, self.config.hidden_size), torch.float32, 0.0, "EMA")]

    def _step(self, item_ids, state, timestamps):
        hidden, h = self._run(item_ids, state["ema_state"].to(self.proj.weight.dtype))
        return hidden, {"ema_state": h.float()}


@pytest.fixture
def registry():
    """The registrations a test makes (``MODELS``, ``AutoConfig``, ``AutoModel``) undone at its end: other tests
    run over ``sorted(MODELS)``."""
    saved = dict(MODELS), dict(CONFIG_MAPPING._extra_content), dict(MODEL_MAPPING._extra_content)
    yield
    for now, before in zip((MODELS, CONFIG_MAPPING._extra_content, MODEL_MAPPING._extra_content), saved):
        now.clear()
        now.update(before)


def _variant(name: str, base: type, **attrs) -> type:
    """A subclass of ``base`` named ``name`` in this module (as a contributor's copied class); a config's runs its
    base's ``__init__`` (transformers 5 makes a config subclass without an ``__init__`` of its own a dataclass)."""
    ns = {"__module__": __name__, "__qualname__": name, **attrs}
    if issubclass(base, SeqRecConfig):
        def __init__(self, **kwargs):
            base.__init__(self, **kwargs)
        ns["__init__"] = __init__
    return type(name, (base,), ns)


def _saved_ema(folder: Path) -> EMAModel:
    torch.manual_seed(0)
    model = EMAModel(EMAConfig()).eval()
    model.save_pretrained(folder)
    return model


# ----------------------------------------------------------------------------------- (2) duplicate model types
def test_a_model_type_another_zoo_model_uses_is_refused_naming_both(registry):
    """``exist_ok=True`` let a copy of gru4rec.py whose ``model_type`` was not changed replace GRU4Rec process-wide
    (``MODELS['gru4rec']`` and ``AutoModel`` gave the copy). Now it is refused, naming both classes, and nothing
    is registered."""
    cfg = _variant("GRU4RecV2Config", GRU4RecConfig, model_type="gru4rec")
    cls = _variant("GRU4RecV2Model", GRU4RecModel, config_class=cfg)
    with pytest.raises(ValueError, match=r"model_type 'gru4rec' of test_registry\.GRU4RecV2Config \(model "
                                         r"test_registry\.GRU4RecV2Model\) is already the zoo's "
                                         r"zoo\.models\.gru4rec\.GRU4RecConfig \(model zoo\.models\.gru4rec\."
                                         r"GRU4RecModel\)"):
        zoo.register_model(cfg, cls)
    assert MODELS["gru4rec"] == (GRU4RecConfig, GRU4RecModel)
    assert CONFIG_MAPPING["gru4rec"] is GRU4RecConfig and AutoModel.from_config(GRU4RecConfig(n_items=5)).__class__ \
        is GRU4RecModel


def test_a_model_type_of_transformers_or_another_package_is_refused(registry):
    """``model_type = "mamba"`` made ``AutoConfig.for_model('mamba')`` answer the zoo's class for every genuine Mamba
    checkpoint: refused, naming transformers' MambaConfig; so is a type another package registered first."""
    cfg = _variant("MyMambaConfig", EMAConfig, model_type="mamba")
    with pytest.raises(ValueError, match=r"model_type 'mamba' of test_registry\.MyMambaConfig is already used by "
                                         r"transformers' MambaConfig"):
        zoo.register_model(cfg, _variant("MyMambaModel", EMAModel, config_class=cfg))
    assert AutoConfig.for_model("mamba").__class__.__name__ == "MambaConfig" and "mamba" not in MODELS
    theirs = _variant("TheirConfig", EMAConfig, model_type="test_registry_theirs")
    AutoConfig.register("test_registry_theirs", theirs)
    mine = _variant("MineConfig", EMAConfig, model_type="test_registry_theirs")
    with pytest.raises(ValueError, match=r"'test_registry_theirs' of test_registry\.MineConfig is already used by "
                                         r"test_registry\.TheirConfig"):
        zoo.register_model(mine, _variant("MineModel", EMAModel, config_class=mine))
    assert CONFIG_MAPPING["test_registry_theirs"] is theirs


@pytest.mark.parametrize("attrs, error, message", [
    ({"cfg": {"model_type": "seqrec"}}, ValueError, "sets no model_type of its own"),
    ({"model": {"model_family": None}}, TypeError, r"model_family is None: set it to one of \['ssm', 'baseline'\]"),
    ({"model": {"model_family": "rnn"}}, TypeError, r"model_family is 'rnn'"),
    ({"model": {"config_class": GRU4RecConfig}}, TypeError,
     r"config_class is zoo\.models\.gru4rec\.GRU4RecConfig, not test_registry\.\w+Config"),
])
def test_register_model_refuses_an_incomplete_model(registry, attrs, error, message):
    """A config without a ``model_type`` of its own, a model without a family (its card's tag) or whose
    ``config_class`` is another config: refused at registration with what to set, nothing registered."""
    cfg = _variant("BadConfig", EMAConfig, **attrs.get("cfg", {"model_type": "test_registry_bad"}))
    cls = _variant("BadModel", EMAModel, **{"config_class": cfg, **attrs.get("model", {})})
    before = dict(MODELS)
    with pytest.raises(error, match=message):
        zoo.register_model(cfg, cls)
    assert MODELS == before and "test_registry_bad" not in CONFIG_MAPPING


def _zoo_copy(tmp_path: Path, module: str | None, source: str | None, listed: str) -> subprocess.Popen:
    """``import zoo`` in a fresh interpreter from a copy of the package whose ``MODEL_MODULES`` also lists
    ``listed``, with ``zoo/models/<module>.py`` holding ``source`` (None: no file)."""
    pkg = tmp_path / "zoo"
    shutil.copytree(ROOT / "zoo", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    init = pkg / "models" / "__init__.py"
    text = init.read_text()
    assert '"bert4rec", "gru4rec"]' in text
    init.write_text(text.replace('"bert4rec", "gru4rec"]', f'"bert4rec", "gru4rec", "{listed}"]', 1))
    if module is not None:
        (pkg / "models" / f"{module}.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "ZOO_NO_CACHE_SEED": "1",
           "HF_HUB_OFFLINE": "1"}
    code = "import zoo; print(zoo.__file__, sorted(zoo.MODELS))"
    return subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


COPIED_GRU = '''from .gru4rec import GRU4RecConfig, GRU4RecModel


class GRU4RecV2Config(GRU4RecConfig):
    model_type = "gru4rec"          # copied, not changed


class GRU4RecV2Model(GRU4RecModel):
    config_class = GRU4RecV2Config


CONFIG_CLASS, MODEL_CLASS = GRU4RecV2Config, GRU4RecV2Model
'''
MAMBA_NAMED = COPIED_GRU.replace('"gru4rec"          # copied, not changed', '"mamba"')


def test_import_of_zoo_refuses_a_listed_module_that_is_missing_or_takes_a_used_model_type(tmp_path):
    """At ``import zoo``: a name in ``MODEL_MODULES`` without its file (a typo) was skipped silently, and a module
    reusing ``model_type`` "gru4rec" or transformers' "mamba" replaced that model. Each is now an error of the import
    naming the module, or both classes."""
    cases = {"typo": (None, None, "ema_4rec"), "copy": ("gru4rec_v2", COPIED_GRU, "gru4rec_v2"),
             "mamba": ("mamba_v2", MAMBA_NAMED, "mamba_v2")}
    runs = {}
    for name, (module, source, listed) in cases.items():
        (tmp_path / name).mkdir()
        runs[name] = _zoo_copy(tmp_path / name, module, source, listed)
    said = {}
    for name, run in runs.items():
        out, err = run.communicate(timeout=300)
        assert run.returncode != 0, (name, out, err)
        said[name] = err.strip().splitlines()[-1]
    assert said["typo"] == ("ImportError: zoo.models.MODEL_MODULES lists 'ema_4rec' but there is no module "
                            "zoo.models.ema_4rec (zoo/models/ema_4rec.py): a typo, or a file not added"), said
    assert said["copy"].startswith("ValueError: model_type 'gru4rec' of zoo.models.gru4rec_v2.GRU4RecV2Config (model "
                                   "zoo.models.gru4rec_v2.GRU4RecV2Model) is already the zoo's "
                                   "zoo.models.gru4rec.GRU4RecConfig"), said
    assert said["mamba"].startswith("ValueError: model_type 'mamba' of zoo.models.mamba_v2.GRU4RecV2Config is "
                                    "already used by transformers' MambaConfig"), said


# ---------------------------------------------------------------------- (6) a model of the contributor's package
def test_a_model_class_loads_its_own_model_type_unregistered(tmp_path, registry):
    """``EMA4RecModel.from_pretrained`` of its own save raised "model_type ... is not a zoo model" (only the
    hard-coded registry was asked). The class now loads its own type, exactly; the base class, which must pick a
    class, still refuses an unregistered type."""
    model = _saved_ema(tmp_path / "ema")
    again = EMAModel.from_pretrained(tmp_path / "ema")
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="model_type 'test_registry_ema' is not a zoo model"):
        SeqRecPreTrainedModel.from_pretrained(tmp_path / "ema")
    with pytest.raises(ValueError, match="holds a 'gru4rec' checkpoint; it cannot be loaded into EMAModel"):
        tiny("gru4rec").save_pretrained(tmp_path / "gru")
        EMAModel.from_pretrained(tmp_path / "gru")


def test_register_model_makes_a_model_of_another_package_a_zoo_model(tmp_path, registry):
    """``zoo.register_model`` (the documented way; ``zoo.MODELS`` was a plain dict and nothing else registered a
    model from outside ``zoo/models/``): the model is then loaded by ``AutoModel`` and the zoo's base class, listed
    by ``get_model_class`` and its card tagged by its family; registering it again changes nothing."""
    model = _saved_ema(tmp_path / "ema")
    zoo.register_model(EMAConfig, EMAModel)
    zoo.register_model(EMAConfig, EMAModel)
    assert zoo.get_model_class("test_registry_ema") == (EMAConfig, EMAModel)
    ids = torch.tensor([[1, 2, 3, 0]])
    for load in (AutoModel.from_pretrained, SeqRecPreTrainedModel.from_pretrained):
        again = load(tmp_path / "ema")
        assert type(again) is EMAModel
        torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)
    card = tmp_path / "card"
    card.mkdir()
    shutil.copyfile(tmp_path / "ema" / "config.json", card / "config.json")
    text = Path(hub.make_card(card, "ema", {"HR@10": 0.1}, {"name": "p", "command": "x"},
                              {"name": "ML", "type": "ml-1m", "users": 1}, {"epochs": [{}]})).read_text()
    tags = text.split("---")[1].split("tags:")[1].split(":")[0]
    assert "- state-space-model" in tags and "- baseline" not in tags, tags


# ------------------------------------------------------------------- (7) the keys transformers writes itself
def test_keys_transformers_writes_into_config_json_are_not_warned_about(tmp_path, caplog):
    """``register_for_auto_class`` + ``save_pretrained`` writes ``auto_map`` (transformers' trust_remote_code
    route), a custom pipeline ``custom_pipelines``, a quantizer ``quantization_config``: loading such a config said
    "auto_map is not a field ... kept in the config, but no code reads it", which transformers does. A key nothing
    reads is still warned about."""
    cfg_cls = _variant("AutoMapConfig", EMAConfig)
    cfg_cls.register_for_auto_class()
    cfg_cls().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"] == {"AutoConfig": "test_registry.AutoMapConfig"}, saved
    saved["custom_pipelines"] = {"next-item": {"impl": "x.NextItemPipeline", "pt": ["AutoModel"]}}
    saved["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}     # a quantizer's
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING, logger="zoo.modeling_utils"):
        config = cfg_cls.from_pretrained(tmp_path)
    assert caplog.records == [], caplog.text
    assert config.auto_map == saved["auto_map"] and config.custom_pipelines == saved["custom_pipelines"]
    assert config.quantization_config == saved["quantization_config"]
    (tmp_path / "config.json").write_text(json.dumps({**saved, "hiden_size": 8}))
    with caplog.at_level(logging.WARNING, logger="zoo.modeling_utils"):
        cfg_cls.from_pretrained(tmp_path)
    assert "hiden_size is not a field of AutoMapConfig (did you mean hidden_size?)" in caplog.text, caplog.text


# -------------------------------------------------------------------------------- (8) the card's family tag
def test_every_model_states_its_family_and_the_cards_tag_follows_it():
    """The card's ``state-space-model`` / ``baseline`` tag came from a list of names in zoo/hub.py (a new SSM was
    tagged ``baseline`` without a word). Each model class now says its family; the tags of the bundled models are
    the ones the list gave, and every bundled card carries its model's."""
    from zoo.modeling_utils import MODEL_FAMILIES

    assert all(cls.model_family in MODEL_FAMILIES for _, cls in MODELS.values()), MODELS
    assert {t: hub.family_tag(t) for t in MODELS} == {t: "state-space-model" if t in SSM else "baseline"
                                                      for t in MODELS}
    assert not hasattr(hub, "SSM_MODELS")
    for readme in sorted(ROOT.glob("hub_cards/*/README.md")):
        model_type = json.loads((readme.parent / "config.json").read_text())["model_type"]
        tags = readme.read_text().split("---")[1].split("tags:\n")[1].split("\n")
        assert f"- {hub.family_tag(model_type)}" in tags, (readme, tags)


# --------------------------------------------------------------------------- a push deletes stale zoo files
#: a repo an earlier push of a model with a vocabulary and sharded weights left, plus a user's own file
REMOTE = [".gitattributes", "README.md", "config.json", "model.safetensors", "item_vocab.json",
          "model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
          "notes.md", "onnx/model.onnx"]
STALE = {"item_vocab.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
         "model-00002-of-00002.safetensors"}


@pytest.mark.parametrize("how", ["push_to_hub", "save_pretrained"])
def test_a_push_deletes_the_stale_vocabulary_and_weight_files_in_its_commit(how, tmp_path, monkeypatch, caplog):
    """transformers' push only adds files: a model saved without a vocabulary left the repo's ``item_vocab.json``
    (and an earlier sharded save's index and shards), and ``from_pretrained`` then refused the repo. The one commit
    now also deletes them, says so, and leaves the user's files; a file the save holds is never deleted."""
    from tests.hub_fakes import record_commits

    commits = record_commits(monkeypatch, REMOTE, offline=True)
    model = tiny("gru4rec")
    with caplog.at_level(logging.WARNING, logger="zoo.modeling_utils"):
        if how == "push_to_hub":
            model.push_to_hub("me/tiny", token="not-a-real-token")
        else:
            model.save_pretrained(tmp_path / "tiny", push_to_hub=True, repo_id="me/tiny", token="not-a-real-token")
    ((repo, message, ops),) = commits
    assert (repo, message) == ("me/tiny", "Upload model")
    assert {p for kind, p in ops if kind == "CommitOperationDelete"} == STALE, ops
    assert {p for kind, p in ops if kind == "CommitOperationAdd"} == {"README.md", "config.json", "model.safetensors"}
    assert "me/tiny: the commit also deletes item_vocab.json, model-00001-of-00002.safetensors" in caplog.text
    model.set_item_vocab(zoo.ItemVocab(list(range(100, 111))))                  # now the save has one
    commits = record_commits(monkeypatch, REMOTE, offline=True)
    model.push_to_hub("me/tiny", token="not-a-real-token")
    ((_, _, ops),) = commits
    assert {p for kind, p in ops if kind == "CommitOperationDelete"} == STALE - {"item_vocab.json"}, ops
    assert ("CommitOperationAdd", "item_vocab.json") in ops


def test_a_push_to_a_branch_deletes_what_that_branch_holds(monkeypatch):
    """``push_to_hub(revision="dev")``: the branch is made (as transformers does) and the stale files are those of
    that branch, not of the default one; a branch that could not be made (a pull request on a repo one may not branch)
    is compared with the default branch, its base."""
    import huggingface_hub
    from huggingface_hub.errors import RevisionNotFoundError

    from tests.hub_fakes import record_commits

    commits = record_commits(monkeypatch, REMOTE, offline=True)
    branches, listed = [], []

    def list_repo_files(self, repo_id, revision=None, **kw):
        listed.append(revision)
        if revision == "new":
            raise RevisionNotFoundError.__new__(RevisionNotFoundError)
        return {"dev": [".gitattributes", "item_vocab.json", "model.safetensors"], None: REMOTE}[revision]

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch",
                        lambda self, repo_id, branch, **kw: branches.append(branch))
    model = tiny("gru4rec")
    model.push_to_hub("me/tiny", token="not-a-real-token", revision="dev")
    model.push_to_hub("me/tiny", token="not-a-real-token", revision="new")
    assert branches == ["dev", "new"] and listed == ["dev", "new", None], (branches, listed)
    deleted = [{p for kind, p in ops if kind == "CommitOperationDelete"} for _, _, ops in commits]
    assert deleted == [{"item_vocab.json"}, STALE], deleted
