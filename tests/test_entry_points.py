"""Models of other installed packages found through the entry-point group ``ssm_rec_zoo.models``
(:func:`zoo.models.load_entry_points`), and the training objective read from the model class
(``training_objective``), not from ``model_type == "bert4rec"``.

Every test builds real distributions on disk (a ``*.dist-info`` folder with ``METADATA`` and ``entry_points.txt``
next to the plugin's module) on a ``sys.path`` entry of its ``tmp_path``; ``importlib.metadata`` finds them as it
finds an installed package. Before, a model of another package was known only to a process that called
``zoo.register_model`` itself: the command-line tools never knew it.
"""

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_MAPPING

import zoo
import zoo.models as registry
from zoo.models import MODELS, PluginWarning, get_model_class

ROOT = Path(__file__).resolve().parents[1]
GROUP = "ssm_rec_zoo.models"

#: a contributor's model module: a causal running mean of the item embeddings; ``register()`` registers it
PLUGIN = '''
import torch
from torch import nn

import zoo
from zoo.modeling_utils import SeqRecConfig, SeqRecPreTrainedModel

print("{module} imported", flush=True)


class {name}Config(SeqRecConfig):
    model_type = "{model_type}"

    def __init__(self, n_items=12, max_seq_length=6, hidden_size=8, initializer_range=0.02, **kwargs):
        super().__init__(n_items=n_items, max_seq_length=max_seq_length, hidden_size=hidden_size,
                         initializer_range=initializer_range, **kwargs)


class {name}Model(SeqRecPreTrainedModel):
    """input_ids [B, L] -> hidden [B, L, D], the mean of the item embeddings up to each position."""

    config_class = {name}Config
    model_family = "baseline"
    training_objective = "{objective}"

    def __init__(self, config):
        super().__init__(config)
        self.item_embedding = nn.Embedding(config.n_items, config.hidden_size, padding_idx=0)
        self.post_init()

    def encode(self, input_ids, attention_mask, timestamps=None):
        x = self.item_embedding(input_ids)
        return x.cumsum(1) / torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[:, None]

    def item_output(self):
        return self.item_embedding.weight, None


CONFIG_CLASS, MODEL_CLASS = {name}Config, {name}Model


def register():
    assert "{model_type}_is_not_here" not in zoo.MODELS   # a lookup while the entry points load does not recurse
    zoo.register_model({name}Config, {name}Model)
'''
#: entry points that fail: an import error, nothing registered, a built-in's model_type, neither module nor callable
BROKEN_MODULES = {
    "zooplug_nothing": "VALUE = 3\n\n\ndef noop():\n    pass\n",
    "zooplug_clash": PLUGIN.format(module="zooplug_clash", name="Clash", model_type="sasrec", objective="next_item"),
}
BROKEN_ENTRY_POINTS = {"plug_missing": "zooplug_not_installed:register", "plug_nothing": "zooplug_nothing:noop",
                       "sasrec": "zooplug_clash:register", "plug_value": "zooplug_nothing:VALUE"}


def plugin_source(module: str, name: str, model_type: str, objective: str = "next_item") -> str:
    return PLUGIN.format(module=module, name=name, model_type=model_type, objective=objective)


def make_dist(site: Path, dist: str, version: str, entry_points: dict, modules: dict) -> Path:
    """A distribution ``dist`` ``version`` as pip installs one in ``site``: its modules, and a dist-info folder
    whose ``entry_points.txt`` lists ``entry_points`` (name -> ``module:attr``) in the group of the zoo."""
    site.mkdir(parents=True, exist_ok=True)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    for name, source in modules.items():
        (site / f"{name}.py").write_text(source)
    return site


def good_and_broken(site: Path) -> Path:
    """``site`` holding a working plugin (``plug_ema``, a callable; ``plug_mod``, a module naming its classes; and
    ``plug_cloze``, a masked-item model) and a broken one (:data:`BROKEN_ENTRY_POINTS`)."""
    make_dist(site, "zoo-plugin-good", "1.0",
              {"plug_ema": "zooplug_ema:register", "plug_mod": "zooplug_mod", "plug_cloze": "zooplug_cloze:register"},
              {"zooplug_ema": plugin_source("zooplug_ema", "PlugEma", "plug_ema"),
               "zooplug_mod": plugin_source("zooplug_mod", "PlugMod", "plug_mod"),
               "zooplug_cloze": plugin_source("zooplug_cloze", "PlugCloze", "plug_cloze", "cloze")})
    make_dist(site, "zoo-plugin-broken", "2.0", BROKEN_ENTRY_POINTS, BROKEN_MODULES)
    return site


@pytest.fixture
def fresh(monkeypatch):
    """The registry as a process that has not looked up its entry points yet; its registrations (``MODELS``,
    ``AutoConfig``, ``AutoModel``), its entry-point state and the plugin modules undone at the end."""
    saved = dict.copy(MODELS), dict(CONFIG_MAPPING._extra_content), dict(MODEL_MAPPING._extra_content)
    monkeypatch.setattr(registry, "_ENTRY_POINTS", {"done": False, "finished": False, "failed": {},
                                                    "recording": None})
    yield
    for now, before in zip((MODELS, CONFIG_MAPPING._extra_content, MODEL_MAPPING._extra_content), saved):
        dict.clear(now)
        dict.update(now, before)
    for name in [m for m in sys.modules if m.startswith("zooplug_")]:
        del sys.modules[name]


def test_a_plugin_model_is_registered_on_the_first_miss_and_the_entry_points_are_read_once(tmp_path, fresh,
                                                                                           monkeypatch):
    """Nothing is read while the lookups hit; the first miss loads every entry point (a callable that registers, a
    module that ends with CONFIG_CLASS / MODEL_CLASS), after which ``MODELS``, ``get_model_class`` and ``AutoConfig``
    know the plugin's types; later misses do not read the metadata again."""
    make_dist(tmp_path / "site", "zoo-plugin-good", "1.0",
              {"plug_ema": "zooplug_ema:register", "plug_mod": "zooplug_mod"},
              {"zooplug_ema": plugin_source("zooplug_ema", "PlugEma", "plug_ema"),
               "zooplug_mod": plugin_source("zooplug_mod", "PlugMod", "plug_mod")})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    reads = []
    real = importlib.metadata.entry_points

    def counted(**kwargs):
        reads.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(importlib.metadata, "entry_points", counted)
    assert get_model_class("sasrec") == MODELS["sasrec"] and "gru4rec" in MODELS
    assert reads == [] and "zooplug_ema" not in sys.modules
    assert "plug_ema" in MODELS
    assert reads == [{"group": GROUP}]
    cfg_cls, model_cls = get_model_class("plug_ema")
    assert (cfg_cls.__module__, model_cls.__name__) == ("zooplug_ema", "PlugEmaModel")
    assert get_model_class("plug_mod")[1].__name__ == "PlugModModel"
    assert type(AutoConfig.for_model("plug_ema")) is cfg_cls
    assert {"plug_ema", "plug_mod"} <= set(sorted(MODELS)) and MODELS.get("no_such_type") is None
    with pytest.raises(ValueError, match=r"unknown model type 'no_such_type'; the zoo has \[.*'plug_ema'"):
        get_model_class("no_such_type")
    assert len(reads) == 1


def test_a_plugin_model_loads_through_the_zoos_base_class_in_a_new_process_lookup(tmp_path, fresh, monkeypatch):
    """A saved checkpoint of a plugin's ``model_type`` (the lookup that misses is the base class's
    ``from_pretrained``, as in every CLI that takes a model folder) loads as the plugin's class."""
    make_dist(tmp_path / "site", "zoo-plugin-good", "1.0", {"plug_ema": "zooplug_ema:register"},
              {"zooplug_ema": plugin_source("zooplug_ema", "PlugEma", "plug_ema")})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    import zooplug_ema                      # the class, for saving only: nothing registered yet

    torch.manual_seed(0)
    model = zooplug_ema.PlugEmaModel(zooplug_ema.PlugEmaConfig()).eval()
    model.save_pretrained(tmp_path / "ckpt")
    assert not registry._ENTRY_POINTS["done"] and "plug_ema" not in dict.keys(MODELS)
    again = zoo.SeqRecPreTrainedModel.from_pretrained(tmp_path / "ckpt")
    assert type(again) is zooplug_ema.PlugEmaModel
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor, rtol=0, atol=0)


def test_broken_entry_points_warn_naming_entry_point_and_distribution_and_the_rest_works(tmp_path, fresh,
                                                                                        monkeypatch):
    """An entry point whose import fails, that registers nothing, that takes a built-in's ``model_type`` or names a
    plain value: a PluginWarning each, naming the entry point and its distribution; the good plugin and the built-ins
    work, and a lookup of the type only the broken plugin would give says why it is missing."""
    monkeypatch.syspath_prepend(str(good_and_broken(tmp_path / "site")))
    with pytest.warns(PluginWarning) as caught:
        assert get_model_class("plug_ema")[1].__name__ == "PlugEmaModel"
    said = {str(w.message) for w in caught if issubclass(w.category, PluginWarning)}
    assert len(said) == 4, said
    for name, value in BROKEN_ENTRY_POINTS.items():
        line = next(s for s in said if f"entry point {name!r} (= {value})" in s)
        assert "of distribution 'zoo-plugin-broken' 2.0 failed: " in line and "the zoo goes on without it" in line
    assert any("ModuleNotFoundError: No module named 'zooplug_not_installed'" in s for s in said)
    assert any("LookupError: it registered no model" in s for s in said)
    assert any("TypeError: it names a int, neither a module nor a callable" in s for s in said)
    assert any("ValueError: model_type 'sasrec' of zooplug_clash.ClashConfig" in s and
               "already the zoo's zoo.models.sasrec.SASRecConfig" in s for s in said)
    from zoo.models.sasrec import SASRecConfig, SASRecModel

    assert MODELS["sasrec"] == (SASRecConfig, SASRecModel)
    assert {"plug_ema", "plug_mod", "plug_cloze"} <= set(MODELS) and "plug_missing" not in MODELS
    with pytest.raises(ValueError) as e:
        get_model_class("plug_missing")
    assert "unknown model type 'plug_missing'" in str(e.value)
    assert ("('plug_missing' would come from ssm_rec_zoo.models entry point 'plug_missing' (= "
            "zooplug_not_installed:register) of distribution 'zoo-plugin-broken' 2.0 failed: ModuleNotFoundError"
            in str(e.value)), e.value
    with pytest.raises(ValueError, match="entry points that failed to load: .*'plug_nothing'"):
        get_model_class("plug_other")


def test_a_checkpoint_of_a_broken_plugins_type_names_the_failed_entry_point(tmp_path, fresh, monkeypatch):
    """A saved model whose ``model_type`` only a broken plugin would register: loading it is the one-line "not a zoo
    model" error, which now also names the entry point that failed (not only the PluginWarning before it)."""
    monkeypatch.syspath_prepend(str(good_and_broken(tmp_path / "site")))
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"model_type": "plug_missing", "n_items": 12}))
    with pytest.warns(PluginWarning), pytest.raises(ValueError) as e:
        zoo.SeqRecPreTrainedModel.from_pretrained(tmp_path / "ckpt")
    assert "model_type 'plug_missing' is not a zoo model" in str(e.value)
    assert "'plug_missing' would come from ssm_rec_zoo.models entry point 'plug_missing'" in str(e.value), e.value


def test_hf_trainer_reads_the_training_objective_not_the_model_type(tmp_path, fresh, monkeypatch):
    """zoo.hf_trainer refuses overlapping windows for any Cloze model (as zoo.train does), naming its class."""
    from zoo.data import leave_one_out, load_dataset
    from zoo.hf_trainer import trainer_kwargs

    monkeypatch.syspath_prepend(str(good_and_broken(tmp_path / "site")))
    with pytest.warns(PluginWarning):
        cfg_cls, model_cls = get_model_class("plug_cloze")
    rows = [f"{u}\t{(u + t) % 9 + 1}\t{t}" for u in range(1, 7) for t in range(8)]
    (tmp_path / "log.tsv").write_text("user_id\titem_id\ttimestamp\n" + "\n".join(rows) + "\n")
    ds = load_dataset(str(tmp_path / "log.tsv"), kcore=None)
    model = model_cls(cfg_cls(n_items=ds.vocab.n_items, max_seq_length=6))
    model.set_item_vocab(ds.vocab)
    split = leave_one_out(ds)
    with pytest.raises(ValueError, match=r"stride=1: PlugCloze's Cloze objective does not use per-position targets"):
        trainer_kwargs(model, split, stride=1)
    assert len(trainer_kwargs(model, split)["train_dataset"]) > 0


def test_training_objective_is_the_model_classes(tmp_path, fresh, monkeypatch):
    """zoo.train picks the Cloze checks and description from ``training_objective``: BERT4Rec's is ``"cloze"``, the
    other built-ins' ``"next_item"``, and a contributed masked-item model gets the Cloze treatment under its own
    name; a value outside TRAINING_OBJECTIVES is refused at registration."""
    from zoo.modeling_utils import TRAINING_OBJECTIVES
    from zoo.train import describe_objective, training_objective

    assert TRAINING_OBJECTIVES == ("next_item", "cloze")
    builtin = {t: cls.training_objective for t, (_, cls) in dict.items(MODELS)}
    assert builtin.pop("bert4rec") == "cloze" and set(builtin.values()) == {"next_item"}, builtin
    monkeypatch.syspath_prepend(str(good_and_broken(tmp_path / "site")))
    with pytest.warns(PluginWarning):
        assert training_objective("plug_cloze") == "cloze"
    assert training_objective("plug_ema") == "next_item" and training_objective("not_registered") == "next_item"
    text = describe_objective("plug_cloze", 50, 50)
    assert text == ("PlugCloze's masked-item (Cloze) objective (its own forward), on non-overlapping windows of "
                    "max_seq_length = 50; cross-entropy over all items at the masked positions it predicts")
    assert describe_objective("plug_ema", 50, 50) == describe_objective("sasrec", 50, 50)
    import zooplug_cloze

    bad = type("PlugMlmModel", (zooplug_cloze.PlugClozeModel,), {"training_objective": "mlm"})
    with pytest.raises(TypeError, match=r"PlugMlmModel.training_objective is 'mlm': set it to one of "
                                        r"\['next_item', 'cloze'\]"):
        zoo.register_model(zooplug_cloze.PlugClozeConfig, bad)


def _cli(site: Path, *args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "ZOO_NO_CACHE_SEED": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_the_command_line_tools_know_the_plugin_models(tmp_path):
    """Real CLI runs with the fake distributions on PYTHONPATH: ``zoo.train --help`` lists the plugin types (and
    warns about the broken distribution), ``--model plug_cloze --window-stride 2`` is refused as BERT4Rec's Cloze
    model would be (so the plugin model was found and its class read), ``--model plug_missing`` names the entry
    point that failed; ``zoo.recommend`` serves a saved checkpoint of the plugin's type; and ``import zoo`` alone
    reads no entry point."""
    site = good_and_broken(tmp_path / "site")
    sys.path.insert(0, str(site))
    try:
        import zooplug_ema

        torch.manual_seed(0)
        zooplug_ema.PlugEmaModel(zooplug_ema.PlugEmaConfig(n_items=12)).save_pretrained(tmp_path / "ckpt")
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("zooplug_ema", None)
    runs = {"help": _cli(site, "-m", "zoo.train", "--help", cwd=tmp_path),
            "cloze": _cli(site, "-m", "zoo.train", "--model", "plug_cloze", "--data", "none.seq", "--out", "out",
                          "--window-stride", "2", cwd=tmp_path),
            "missing": _cli(site, "-m", "zoo.train", "--model", "plug_missing", "--data", "none.seq", "--out", "out",
                            cwd=tmp_path),
            "recommend": _cli(site, "-m", "zoo.recommend", "--model", str(tmp_path / "ckpt"), "--history", "1", "2",
                              "3", "--k", "3", "--json", "--threads", "1", cwd=tmp_path),
            "import": _cli(site, "-c", "import zoo, zoo.models as m; zoo.get_model_class('sasrec'); "
                                       "print(m._ENTRY_POINTS['done'], 'sasrec' in m.MODELS)", cwd=tmp_path)}
    done = {name: (run.communicate(timeout=600), run.returncode) for name, run in runs.items()}
    (out, err), rc = done["help"]
    assert rc == 0 and "plug_cloze" in out and "plug_ema" in out and "plug_mod" in out, (out, err)
    assert "PluginWarning" in err and "'zoo-plugin-broken' 2.0" in err and "'plug_missing'" in err, err
    (out, err), rc = done["cloze"]
    assert rc == 2 and err.strip().splitlines()[-1].endswith(
        "--window-stride: PlugCloze's Cloze objective does not use per-position targets, so overlapping windows "
        "would only repeat masked items; use the default non-overlapping windows"), err
    (out, err), rc = done["missing"]
    assert rc == 2 and "--model: unknown model type 'plug_missing'" in err, err
    assert "'plug_missing' would come from ssm_rec_zoo.models entry point 'plug_missing'" in err, err
    (out, err), rc = done["recommend"]
    assert rc == 0 and "zooplug_ema imported\n" in out, (out, err)
    answer = json.loads(out[out.index("{"):])
    assert answer["model_type"] == "plug_ema" and len(answer["items"]) == 3, answer
    (out, err), rc = done["import"]
    assert rc == 0 and out.split() == ["False", "True"] and "imported" not in out, (out, err)


def test_the_readme_documents_the_group_with_a_pyproject_snippet():
    text = (ROOT / "zoo" / "models" / "README.md").read_text()
    assert f'[project.entry-points."{GROUP}"]' in text and registry.ENTRY_POINT_GROUP == GROUP
    assert "training_objective" in text
    assert textwrap.dedent(text).count("```toml") >= 1
