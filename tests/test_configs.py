"""Every zoo config refuses sizes below 1 and dropout rates outside [0, 1), naming the field -- whether the check is
the model config's own or the shared one in ``SeqRecConfig``."""

import json
import math
import pathlib
import re

import pytest
import torch
from transformers import AutoConfig

from zoo.modeling_utils import _SIZE_FIELDS, SeqRecConfig
from zoo.models import MODELS
from zoo.train import config_fields
from tiny_models import tiny, tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]

CASES = []
for model_type, (cfg_cls, _) in sorted(MODELS.items()):
    fields = config_fields(cfg_cls)
    defaults = cfg_cls()
    for f in sorted(fields & (set(_SIZE_FIELDS) | {"hidden_size", "max_seq_length"})):
        if not isinstance(getattr(defaults, f, None), int) or isinstance(getattr(defaults, f), bool):
            continue
        CASES.append((model_type, f, 0, f"{f}\\b.*must be|must be.*\\b{f}\\b"))
    for f in sorted(x for x in fields if "dropout" in x):
        if isinstance(getattr(defaults, f, None), float):
            CASES += [(model_type, f, 1.0, f"{f} must be in \\[0, 1\\)"), (model_type, f, -0.1, f"{f} must be in")]


@pytest.mark.parametrize("model_type, field, value, message", CASES, ids=[f"{m}-{f}={v}" for m, f, v, _ in CASES])
def test_config_refuses_out_of_range_field(model_type, field, value, message):
    cfg_cls, _ = MODELS[model_type]
    with pytest.raises(ValueError, match=message):
        cfg_cls(**{field: value})


def test_every_model_has_cases():
    assert {m for m, *_ in CASES} == set(MODELS) and len(CASES) > 40


# ------------------------------------------------------------------------ QA fixes: types, finite values, derived
INT_CASES = []
for model_type, (cfg_cls, _) in sorted(MODELS.items()):
    fields = config_fields(cfg_cls)
    defaults = cfg_cls()
    for f in sorted(fields & (set(_SIZE_FIELDS) | {"hidden_size", "max_seq_length", "n_items"})):
        if isinstance(getattr(defaults, f, None), int) and not isinstance(getattr(defaults, f), bool):
            INT_CASES += [(model_type, f, 16.9), (model_type, f, True), (model_type, f, "8")]


@pytest.mark.parametrize("model_type, field, value", INT_CASES, ids=[f"{m}-{f}={v!r}" for m, f, v in INT_CASES])
def test_config_refuses_size_fields_that_are_not_ints(model_type, field, value):
    """``int()`` cut ``hidden_size=16.9`` to 16 and read ``max_seq_length=True`` as 1: refused, naming the field (a
    fraction is a ``ValueError``, what is no number a ``TypeError``, which ``zoo.train`` reports with the values)."""
    cfg_cls, _ = MODELS[model_type]
    with pytest.raises(ValueError if isinstance(value, float) else TypeError,
                       match=rf"{field} must be an int\b.*, got {value!r}"):
        cfg_cls(**{field: value})


def test_config_accepts_whole_floats_and_numpy_ints_for_sizes():
    import numpy as np

    from zoo.models.mamba4rec import Mamba4RecConfig

    c = Mamba4RecConfig(hidden_size=np.int64(32), num_layers=2.0, d_state=np.int32(8))
    assert (c.hidden_size, c.num_layers, c.d_state) == (32, 2, 8) and all(
        type(v) is int for v in (c.hidden_size, c.num_layers, c.d_state))


NAN = float("nan")
FLOAT_CASES = [  # (model_type, {field: bad value}, message)
    *[(m, {"layer_norm_eps": v}, "layer_norm_eps must be a finite number > 0")
      for m in ("mamba4rec", "sasrec", "bert4rec", "lrurec", "ssd4rec") for v in (0.0, -1.0, NAN)],
    *[(m, {"norm_eps": v}, "norm_eps must be a finite number > 0")
      for m in ("tim4rec", "tim4rec_causal") for v in (0.0, NAN, float("inf"))],
    ("ssd4rec", {"rmsnorm_eps": NAN}, "rmsnorm_eps must be a finite number > 0"),
    ("ssd4rec", {"rmsnorm_eps": 0.0}, "rmsnorm_eps must be a finite number > 0"),
    ("ssd4rec", {"beta": NAN}, "beta must be a finite number >= 0"),
    ("tim4rec_causal", {"time_unit": NAN}, "time_unit must be a finite number > 0"),
    ("tim4rec_causal", {"time_unit": 0.0}, "time_unit must be a finite number > 0"),
    ("tim4rec_causal", {"time_scale": float("inf")}, "time_scale must be a finite number > 0"),
    ("lrurec", {"initializer_cutoff": NAN}, "initializer_cutoff must be a finite number > 0"),
    ("lrurec", {"initializer_range": NAN}, "initializer_range must be a finite number"),
    ("lrurec", {"r_min": NAN}, "r_min must be a finite number > 0 and < 1"),
    ("sasrec", {"initializer_range": -1.0}, "initializer_range must be a finite number >= 0"),
    ("gru4rec", {"initializer_range": NAN}, "initializer_range must be a finite number >= 0"),
    *[(m, kw, msg) for m in ("mamba4rec", "tim4rec", "tim4rec_causal", "ssd4rec") for kw, msg in [
        ({"dt_min": 0.0}, "dt_min must be a finite number > 0"),           # was 'math domain error' (or nothing)
        ({"dt_min": NAN}, "dt_min must be a finite number > 0"),
        ({"dt_max": -1.0}, "dt_max must be a finite number > 0"),
        ({"dt_min": 0.2, "dt_max": 0.1}, "dt_min must be <= dt_max, got dt_min=0.2, dt_max=0.1"),
        ({"dt_init_floor": -1e-4}, "dt_init_floor must be a finite number >= 0")]],
    *[(m, {"A_init_range": v}, r"A_init_range must be a pair \(lo, hi\) of finite numbers with 0 < lo <= hi")
      for m in ("tim4rec", "tim4rec_causal", "ssd4rec") for v in ((-1.0, 1.0), (0.0, 0.0), (16.0, 1.0), (16.0,),
                                                                   (1.0, NAN))],
    *[(m, {f: "no"}, f"{f} must be a bool") for m, f in (("tim4rec", "float32_timestamps"), ("tim4rec", "is_time"),
                                                         ("mamba4rec", "conv_bias"), ("ssd4rec", "norm_embedding"),
                                                         ("bert4rec", "append_last_label"))],
]


@pytest.mark.parametrize("model_type, kw, message", FLOAT_CASES,
                         ids=[f"{m}-{'-'.join(f'{k}={v!r}' for k, v in kw.items())}" for m, kw, _ in FLOAT_CASES])
def test_config_refuses_non_finite_or_out_of_range_numbers(model_type, kw, message):
    """``x <= 0`` checks let NaN through (time_unit=NaN made every score NaN), dt_min=0 was a 'math domain error',
    A_init_range (-1, 1) gave NaN weights, an eps <= 0 divides by zero: each refused, naming the field."""
    cfg_cls, _ = MODELS[model_type]
    with pytest.raises(TypeError if "no" in kw.values() else ValueError, match=message):
        cfg_cls(**kw)


def test_dt_and_a_init_bounds_that_are_equal_are_fine():
    from zoo.models.tim4rec import TiM4RecConfig, TiM4RecModel

    model = TiM4RecModel(TiM4RecConfig(n_items=9, max_seq_length=4, hidden_size=8, head_dim=4, d_state=4,
                                       A_init_range=(2, 2), dt_min=0.01, dt_max=0.01))
    assert torch.allclose(model.layers[0].mixer.A_log, torch.full((4,), math.log(2.0)))


DERIVED = [("mamba4rec", {}, ["d_inner"]), ("tim4rec", {"head_dim": 8}, ["d_inner", "n_heads"]),
           ("tim4rec_causal", {"head_dim": 8}, ["d_inner", "n_heads"]), ("ssd4rec", {"head_dim": 8},
                                                                          ["d_inner", "n_heads"])]


@pytest.mark.parametrize("model_type, kw, derived", DERIVED, ids=[m for m, *_ in DERIVED])
def test_derived_fields_are_recomputed_from_their_sources(tmp_path, model_type, kw, derived):
    """d_inner / n_heads were saved in config.json and then won over the fields they are computed from:
    ``AutoConfig.from_pretrained(path, expand=4)`` kept the old d_inner (a model of the wrong width), a config.json
    edited to another hidden_size kept the old one. They are recomputed now; a value that disagrees is refused naming
    both fields, one that agrees (every saved config) loads as before."""
    cfg_cls, _ = MODELS[model_type]
    c = cfg_cls(hidden_size=16, **kw)
    c.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert all(saved[f] == getattr(c, f) for f in derived)                    # still written, for its readers
    assert AutoConfig.from_pretrained(tmp_path).to_diff_dict() == c.to_diff_dict()   # an agreeing value reads back
    wide = AutoConfig.from_pretrained(tmp_path, expand=4)
    assert wide.d_inner == 64 and (wide.n_heads == 8 if "n_heads" in derived else True)
    saved["hidden_size"] = 32
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"d_inner=32 contradicts expand \* hidden_size = 64 .*hidden_size=32"):
        AutoConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="d_inner=7 contradicts expand"):
        cfg_cls(hidden_size=16, d_inner=7, **kw)
    with pytest.raises(ValueError, match="d_inner=7 contradicts"):
        c.d_inner = 7


@pytest.mark.parametrize("model_type", ["tim4rec", "tim4rec_causal", "ssd4rec"])
def test_a_head_count_that_disagrees_is_a_config_error_not_a_reshape_error(model_type):
    """``TiM4RecConfig(hidden_size=16, head_dim=8, n_heads=3)`` built a model whose forward failed with "shape
    '[1, 2, 3, 8]' is invalid"."""
    cfg_cls, _ = MODELS[model_type]
    with pytest.raises(ValueError, match=r"n_heads=3 contradicts expand \* hidden_size // head_dim = 4 "
                                         r"\(expand=2, hidden_size=16, head_dim=8\)"):
        cfg_cls(hidden_size=16, head_dim=8, n_heads=3)
    assert cfg_cls(hidden_size=16, head_dim=8, n_heads=4, d_inner=32).n_heads == 4


def test_ssd4rec_norm_eps_and_activation_follow_their_sources():
    """SSD4Rec's norm_eps (read by the shared SSD core) is rmsnorm_eps and its activation SiLU: a norm_eps given
    beside them was set after them and won, unsaved."""
    from zoo.models.ssd4rec import SSD4RecConfig

    with pytest.raises(ValueError, match=r"norm_eps=0.001 contradicts rmsnorm_eps = 1e-05"):
        SSD4RecConfig(norm_eps=1e-3)
    with pytest.raises(ValueError, match="activation='relu' given, but activation is always 'silu'"):
        SSD4RecConfig(activation="relu")
    c = SSD4RecConfig(rmsnorm_eps=1e-6)
    assert c.norm_eps == 1e-6 and "norm_eps" not in c.to_dict() and "activation" not in c.to_dict()


@pytest.mark.parametrize("card", sorted(p.name for p in (ROOT / "hub_cards").iterdir() if (p / "config.json").exists()))
def test_bundled_card_configs_read_back_unchanged(card):
    """Every bundled card's config.json (which holds d_inner / n_heads) loads, every value as written."""
    saved = json.loads((ROOT / "hub_cards" / card / "config.json").read_text())
    got = AutoConfig.from_pretrained(ROOT / "hub_cards" / card).to_dict()
    assert {k: got[k] for k in saved if k not in ("transformers_version", "dtype")} == {
        k: v for k, v in saved.items() if k not in ("transformers_version", "dtype")}


# ------------------------------------------------- QA SW1 / SW2: overrides and fields set by hand, unknown fields
def _saved(tmp_path, model_type):
    """A tiny ``model_type`` model saved in ``tmp_path / model_type``: ``(folder, model class)``."""
    folder = tmp_path / model_type
    tiny(model_type).save_pretrained(folder)
    return folder, MODELS[model_type][1]


OVERRIDES = [  # (model_type, {field: bad value}, error, message): the QA table of overrides that went unchecked
    ("tim4rec_causal", {"time_unit": -1.0}, ValueError, "time_unit must be a finite number > 0"),   # NaN scores
    ("bert4rec", {"inference_mask": "foo"}, ValueError, "inference_mask must be one of"),          # ran "append"
    ("tim4rec", {"is_time": "no"}, TypeError, "is_time must be a bool"),                          # read as True
    ("ssd4rec", {"beta": -1.0}, ValueError, "beta must be"),
    ("ssd4rec", {"mask_ratio": 5.0}, ValueError, "mask_ratio must be"),
    ("bert4rec", {"mask_ratio": 0.0}, ValueError, "mask_ratio must be"),
    ("lrurec", {"r_min": 2.0}, ValueError, "r_min must be"),
    ("mamba4rec", {"mamba_init": "xavier"}, ValueError, "mamba_init must be"),
    ("sasrec", {"hidden_act": "foo"}, ValueError, "hidden_act must be"),                        # was KeyError: 'foo'
    ("gru4rec", {"num_layers": 0}, ValueError, "num_layers must be >= 1"),
]


@pytest.mark.parametrize("model_type, kw, error, message", OVERRIDES, ids=[f"{m}-{k}" for m, k, *_ in OVERRIDES])
def test_from_pretrained_overrides_are_checked_as_the_constructor_checks_them(tmp_path, model_type, kw, error,
                                                                               message):
    """Transformers sets ``from_pretrained(path, field=value)`` overrides with ``setattr`` after the config's
    ``__init__``, past every check: ``time_unit=-1`` ranked NaN scores, ``inference_mask="foo"`` ran "append", a
    model saved so could not be reloaded. :meth:`SeqRecConfig.from_dict` merges them before ``__init__``, so the
    constructor's own error names the field on every entry point."""
    from transformers import AutoModel

    folder, cls = _saved(tmp_path, model_type)
    for load in (AutoConfig.from_pretrained, AutoModel.from_pretrained, cls.from_pretrained):
        with pytest.raises(error, match=message):
            load(folder, **kw)


def test_valid_overrides_apply_and_transformers_unused_kwargs_semantics_hold(tmp_path):
    from transformers import AutoModel

    folder, cls = _saved(tmp_path, "tim4rec_causal")
    assert AutoModel.from_pretrained(folder, time_unit=5.0).config.time_unit == 5.0
    assert cls.from_pretrained(folder, time_unit=7.0, num_layers=1).config.time_unit == 7.0
    cfg, unused = AutoConfig.from_pretrained(folder, time_unit=2.0, output_hidden_states=True, foo=1,
                                             return_unused_kwargs=True)
    assert (cfg.time_unit, cfg.output_hidden_states, unused) == (2.0, True, {"foo": 1})
    assert AutoConfig.from_pretrained(folder, expand=4).d_inner == 32       # a derived field follows its source


@pytest.mark.parametrize("model_type, field, value, error, message", [
    ("tim4rec_causal", "time_unit", -1.0, ValueError, "time_unit must be a finite number > 0, got -1.0"),
    ("ssd4rec", "beta", -1.0, ValueError, "beta must be"),
    ("bert4rec", "inference_mask", "foo", ValueError, "inference_mask must be one of"),
    ("tim4rec", "is_time", "no", TypeError, "is_time must be a bool"),
    ("sasrec", "hidden_act", "foo", ValueError, "hidden_act must be one of"),
])
def test_a_field_set_by_hand_is_checked_when_the_model_is_built(model_type, field, value, error, message):
    """``cfg.time_unit = -1.0; Model(cfg)`` built a model that scored NaN: the model's ``__init__`` checks its config
    again, naming the model and the field."""
    cls = MODELS[model_type][1]
    cfg = tiny_config(model_type)
    setattr(cfg, field, value)
    with pytest.raises(error, match=rf"^{cls.__name__} config: {message}"):
        cls(cfg)


def test_the_model_builds_on_the_values_the_constructor_makes():
    """A whole float set by hand is the int the constructor would make of it (``num_layers = 2.0`` built no layers
    list), ``inner_size = None`` its default."""
    from zoo.models.sasrec import SASRecConfig, SASRecModel

    cfg = SASRecConfig(n_items=12, max_seq_length=6, hidden_size=8, num_heads=2)
    cfg.num_layers = 3.0
    SASRecModel(cfg)
    assert type(cfg.num_layers) is int and cfg.num_layers == 3


@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_an_unknown_config_keyword_is_refused_naming_the_closest_field(model_type):
    """``SASRecConfig(n_layers=4)`` (RecBole's name) was stored and built 2 layers; a typo changed nothing either.
    Refused now, as ``zoo.train --set`` refuses it, naming the closest field and mapping RecBole's names. RecBole's
    ``n_layers`` is checked on the models that have ``num_layers`` (a model without layers, which the library allows,
    is skipped for that part, with the reason)."""
    cfg_cls, _ = MODELS[model_type]
    has_layers = "num_layers" in config_fields(cfg_cls)
    with pytest.raises(ValueError, match=rf"^hiden_size is not a field of {cfg_cls.__name__} \(did you mean "
                                         r"hidden_size\?\); the fields of .* are \[.*'"
                                         + ("num_layers" if has_layers else "hidden_size") + "'"):
        cfg_cls(hiden_size=16)
    # what transformers and the zoo write into config.json is no typo
    cfg_cls(**cfg_cls().to_dict())
    cfg_cls(item_vocab_file="item_vocab.json", output_hidden_states=True, torch_dtype="float32", return_dict=True)
    if not has_layers:
        pytest.skip(f"{cfg_cls.__name__} has no num_layers field: RecBole's n_layers has no zoo field to map to")
    with pytest.raises(ValueError, match=rf"n_layers is not a field of {cfg_cls.__name__} \(did you mean num_layers\? "
                                         r"RecBole's n_layers is num_layers in the zoo\)"):
        cfg_cls(n_layers=4)


def test_recbole_names_are_mapped_where_the_zoo_has_the_field():
    from zoo.models.sasrec import SASRecConfig

    with pytest.raises(ValueError) as e:
        SASRecConfig(n_items=12, n_layers=4, n_heads=4, hidden_dropout_prob=0.1, attn_dropout_prob=0.1)
    for theirs, ours in [("n_layers", "num_layers"), ("n_heads", "num_heads"), ("hidden_dropout_prob",
                                                                                 "hidden_dropout"),
                         ("attn_dropout_prob", "attn_dropout")]:
        assert f"{theirs} is not a field of SASRecConfig (did you mean {ours}? RecBole's {theirs} is {ours}" in str(
            e.value)


def test_bookkeeping_fields_are_known_keys():
    from zoo.modeling_utils import ZOO_CONFIG_KEYS, transformers_config_keys
    from zoo.soup import BOOKKEEPING_FIELDS

    assert BOOKKEEPING_FIELDS <= transformers_config_keys() | ZOO_CONFIG_KEYS


def test_a_config_json_with_unknown_keys_still_loads_with_a_warning(tmp_path, caplog):
    """A ``config.json`` key that is no field (written by another version, or by hand) is kept with a warning when the
    file is read, never refused; the keys transformers 4 wrote are not even warned about. The model loads."""
    from transformers import AutoModel

    folder, cls = _saved(tmp_path, "sasrec")
    saved = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**saved, "n_heads": 4, "torch_dtype": "float32",
                                                    "pad_token_id": 0, "use_cache": True}))
    with caplog.at_level("WARNING", logger="zoo.modeling_utils"):
        for load in (AutoConfig.from_pretrained, AutoModel.from_pretrained, cls.from_pretrained):
            caplog.clear()
            loaded = load(folder)
            assert [r.getMessage() for r in caplog.records if r.name == "zoo.modeling_utils"] == [
                caplog.records[0].getMessage()] and "n_heads is not a field of SASRecConfig (did you mean num_heads?" \
                in caplog.records[0].getMessage()
            assert "torch_dtype" not in caplog.text and "pad_token_id" not in caplog.text
    assert loaded.config.num_heads == 2


def test_an_unknown_override_is_named(tmp_path, caplog):
    """``AutoConfig.from_pretrained(path, num_layer=3)`` dropped the typo silently (warned now: transformers drops
    unused keywords there); the model loaders refuse it (it was transformers' "__init__() got an unexpected keyword
    argument")."""
    from transformers import AutoModel

    folder, cls = _saved(tmp_path, "sasrec")
    with caplog.at_level("WARNING", logger="zoo.modeling_utils"):
        assert AutoConfig.from_pretrained(folder, num_layer=3).num_layers == 1
    assert "num_layer is not a field of SASRecConfig (did you mean num_layers?" in caplog.text
    for load in (AutoModel.from_pretrained, cls.from_pretrained):
        with pytest.raises(ValueError, match=r"^num_layer is not a field of SASRecConfig \(did you mean num_layers\?\)"
                                             r".*; nor is num_layer an argument of from_pretrained$"):
            load(folder, num_layer=3)


# ------------------------------------------------- QA cfg 4: rates through config_float, naming the field
RATE_INTERVALS = {"mask_ratio": {"bert4rec": "(0, 1]", "ssd4rec": "[0, 1)"}, "ft_ratio": {"bert4rec": "[0, 1]"}}
RATE_FIELDS = sorted((m, f) for m, (cfg_cls, _) in MODELS.items() for f in config_fields(cfg_cls)
                     if ("dropout" in f or f.endswith("_ratio")) and type(getattr(cfg_cls(), f, None)) is float)
RATE_CASES = [(m, f, v) for m, f in RATE_FIELDS for v in (None, "abc", "0.1", True, NAN, float("inf"))]


def _interval(model_type, field):
    return RATE_INTERVALS.get(field, {}).get(model_type, "[0, 1)")


def test_every_rate_field_of_every_model_is_covered():
    assert {m for m, _ in RATE_FIELDS} == set(MODELS)
    assert {f for _, f in RATE_FIELDS} == {"dropout_prob", "time_dropout_prob", "hidden_dropout", "attn_dropout",
                                           "mask_ratio", "ft_ratio"}
    assert {(m, f) for f, by in RATE_INTERVALS.items() for m in by} <= set(RATE_FIELDS)


@pytest.mark.parametrize("model_type, field, value", RATE_CASES, ids=[f"{m}-{f}={v!r}" for m, f, v in RATE_CASES])
def test_a_rate_that_is_no_number_or_not_finite_is_refused_naming_the_field(model_type, field, value):
    """A bare ``float()`` said "float() argument must be a string or a real number, not 'NoneType'" for
    ``dropout_prob=None`` and "could not convert string to float: 'abc'" (a ``ValueError``), naming no field, and
    read ``True`` as 1.0 (BERT4Rec's ``ft_ratio=True``, ``mask_ratio=True``) and ``"0.1"`` as 0.1. What is no number
    is a ``TypeError`` now, NaN / inf a ``ValueError``, as every other field reports, each naming field and interval."""
    cfg_cls, _ = MODELS[model_type]
    interval = re.escape(_interval(model_type, field))
    if isinstance(value, float):
        with pytest.raises(ValueError, match=rf"^{field} must be in {interval}, got {value!r}$"):
            cfg_cls(**{field: value})
    else:
        with pytest.raises(TypeError, match=rf"^{field} must be a number in {interval}, got {re.escape(repr(value))}$"):
            cfg_cls(**{field: value})


@pytest.mark.parametrize("model_type, field", RATE_FIELDS, ids=[f"{m}-{f}" for m, f in RATE_FIELDS])
def test_rates_at_the_edges_of_their_interval(model_type, field):
    """Each rate's interval is what its use needs: a dropout of 1 zeroes its input and SSD4Rec's ``mask_ratio`` 1
    masks every item (refused, 0 fine); BERT4Rec's ``mask_ratio`` 0 leaves nothing to predict (refused, 1 fine) and
    its ``ft_ratio`` is a per-batch probability (0 and 1 both fine). Ints, numpy and torch scalars are read as
    Python floats."""
    import numpy as np

    cfg_cls, _ = MODELS[model_type]
    interval = _interval(model_type, field)
    for value, ok in ((0, interval[0] == "["), (1, interval[-1] == "]"), (-0.01, False), (1.01, False)):
        if ok:
            assert type(getattr(cfg_cls(**{field: value}), field)) is float
        else:
            with pytest.raises(ValueError, match=rf"^{field} must be in {re.escape(interval)}, got {value!r}$"):
                cfg_cls(**{field: value})
    for value in (np.float32(0.25), torch.tensor(0.25, dtype=torch.float64), 0.25):
        got = getattr(cfg_cls(**{field: value}), field)
        assert type(got) is float and got == 0.25


@pytest.mark.parametrize("model_type, field, value, error", [
    ("mamba4rec", "dropout_prob", None, TypeError), ("sasrec", "hidden_dropout", "abc", TypeError),
    ("bert4rec", "ft_ratio", True, TypeError), ("tim4rec", "time_dropout_prob", NAN, ValueError)])
def test_a_bad_rate_in_config_json_or_an_override_names_the_field(tmp_path, model_type, field, value, error):
    """A ``from_pretrained(path, dropout_prob=None)`` override gives the constructor's error, naming the field; so
    does a hand-edited ``config.json`` (``"dropout_prob": null``; its error type is the loader's: it may name the
    file as bad data)."""
    from transformers import AutoModel

    folder, cls = _saved(tmp_path, model_type)
    message = rf"^{field} must be (a number )?in "
    for load in (AutoConfig.from_pretrained, AutoModel.from_pretrained, cls.from_pretrained):
        with pytest.raises(error, match=message):
            load(folder, **{field: value})
    saved = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**saved, field: value}))
    with pytest.raises((TypeError, ValueError), match=message.replace("^", r"(^|: )")):
        AutoConfig.from_pretrained(folder)


# ------------------------------------------------- QA cfg 8: BERT4Rec's window holds the [MASK] and an item
def test_bert4rec_refuses_a_window_of_one_position():
    """With ``max_seq_length=1`` the window held only the [MASK]: ``recommend`` gave the same scores for every
    history (under both ``inference_mask`` modes), silently. Refused in one line, at construction, as an override
    and when set by hand; with 2 positions the history reaches the scores in both modes."""
    from zoo.models.bert4rec import BERT4RecConfig, BERT4RecModel

    small = dict(n_items=12, hidden_size=8, num_heads=2, inner_size=8, num_layers=1)
    message = r"^max_seq_length must be >= 2 \(the window holds the \[MASK\] and at least one item\), got 1$"
    with pytest.raises(ValueError, match=message):
        BERT4RecConfig(max_seq_length=1, **small)
    cfg = BERT4RecConfig(max_seq_length=6, **small)
    cfg.max_seq_length = 1
    with pytest.raises(ValueError, match=r"^BERT4RecModel config: max_seq_length must be >= 2"):
        BERT4RecModel(cfg)
    for mode in ("recbole", "append"):
        torch.manual_seed(0)
        model = BERT4RecModel(BERT4RecConfig(max_seq_length=2, inference_mask=mode, **small)).eval()
        with torch.no_grad():
            model.get_input_embeddings().weight.normal_()           # spread the items apart
            a, b = (model.predict(torch.tensor([h]), torch.ones(1, len(h), dtype=torch.bool)) for h in ([3, 9], [2, 7]))
        assert (a[:, 1:] - b[:, 1:]).abs().max() > 1e-3, mode


def test_bert4rec_window_of_one_is_refused_as_an_override(tmp_path):
    folder, cls = _saved(tmp_path, "bert4rec")
    with pytest.raises(ValueError, match=r"^max_seq_length must be >= 2"):
        AutoConfig.from_pretrained(folder, max_seq_length=1)


# ------------------------------------------------- QA cfg 11: positional arguments mean the same in every config
@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_the_first_positional_arguments_are_n_items_and_max_seq_length(model_type):
    """``TiM4RecCausalConfig(100, 50)`` gave ``n_items=3417, time_unit=100.0`` without a word; every other config
    reads ``(n_items, max_seq_length, ...)``. Its ``time_unit`` / ``time_scale`` are keyword-only now, and its
    positional arguments are TiM4RecConfig's, in its order."""
    cfg_cls, _ = MODELS[model_type]
    c = cfg_cls(100, 50)
    assert (c.n_items, c.max_seq_length) == (100, 50)


def test_tim4rec_causal_takes_tim4recs_positional_arguments_and_its_own_by_keyword():
    from zoo.models.tim4rec import TiM4RecConfig
    from zoo.models.tim4rec_causal import TiM4RecCausalConfig

    args = (100, 50, 16, 1, 8, 2, 2, 8)
    causal, plain = TiM4RecCausalConfig(*args, time_unit=5.0), TiM4RecConfig(*args)
    shared = TiM4RecConfig.init_fields() | set(TiM4RecConfig.derived_fields)
    assert {f: getattr(causal, f) for f in shared} == {f: getattr(plain, f) for f in shared}
    assert (causal.hidden_size, causal.head_dim, causal.time_unit, causal.time_scale) == (16, 8, 5.0, 10.0)
    assert {"time_unit", "time_scale"} <= TiM4RecCausalConfig.init_fields() <= config_fields(TiM4RecCausalConfig)


def test_tim4rec_causal_names_a_field_given_both_positionally_and_by_keyword():
    """``TiM4RecCausalConfig(100, n_items=3)`` raised Python's "TiM4RecConfig.__init__() got multiple values for
    argument 'n_items'" (another class than the one called); too many positional arguments were counted against
    TiM4RecConfig too. Both are a ``TypeError`` naming the field (each field) and the config now."""
    from zoo.models.tim4rec import TiM4RecConfig
    from zoo.models.tim4rec_causal import TiM4RecCausalConfig

    with pytest.raises(TypeError, match=r"^n_items given twice, as positional argument 1 \(100\) and as n_items=3: "
                                        r"give it once$"):
        TiM4RecCausalConfig(100, n_items=3)
    with pytest.raises(TypeError, match=r"^n_items given twice, .*; max_seq_length given twice, as positional "
                                        r"argument 2 \(50\) and as max_seq_length=8: give each once$"):
        TiM4RecCausalConfig(100, 50, n_items=3, max_seq_length=8)
    n = len(TiM4RecConfig.init_fields())
    with pytest.raises(TypeError, match=rf"^TiM4RecCausalConfig takes at most {n} positional arguments "
                                        r"\(TiM4RecConfig's fields n_items, max_seq_length, \.\.\. in order; "
                                        rf"time_unit and time_scale are keyword-only\), got {n + 1}$"):
        TiM4RecCausalConfig(*range(n + 1))
    assert TiM4RecCausalConfig(100, max_seq_length=8, time_unit=5).max_seq_length == 8


def test_lrurec_dropout_alias_errors_name_the_alias(tmp_path):
    """``LRURecConfig(dropout=1.5)`` said "hidden_dropout must be in [0, 1)", a keyword the caller never wrote: a bad
    value given through the alias is named as it was spelled, from a ``config.json`` too."""
    from zoo.models.lrurec import LRURecConfig

    with pytest.raises(ValueError, match=r"^dropout must be in \[0, 1\), got 1.5$"):
        LRURecConfig(dropout=1.5)
    with pytest.raises(TypeError, match=r"^dropout must be a number in \[0, 1\), got 'x'$"):
        LRURecConfig(dropout="x")
    LRURecConfig(n_items=12, hidden_size=8).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["hidden_dropout"]
    (tmp_path / "config.json").write_text(json.dumps({**saved, "dropout": 1.5}))
    with pytest.raises(ValueError, match=r"config.json: dropout must be in \[0, 1\), got 1.5$"):
        AutoConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**saved, "dropout": 0.3}))
    assert AutoConfig.from_pretrained(tmp_path).hidden_dropout == 0.3


def test_a_typo_of_a_fields_alias_is_told_the_alias(tmp_path, caplog):
    """``LRURecConfig(dropuot=0.1)`` (and ``from_pretrained(path, dropuot=)``) hinted ``attn_dropout``, the closest
    field, though the caller meant LRURec's ``dropout`` (:attr:`SeqRecConfig.field_aliases`): the hint weighs the
    aliases too, names the alias as one, and the message lists the aliases after the fields; a typo of a field still
    gets the field, and a config without aliases lists none."""
    from transformers import AutoModel

    from zoo.models.lrurec import LRURecConfig, LRURecModel
    from zoo.models.sasrec import SASRecConfig

    hint = r"dropuot is not a field of LRURecConfig \(did you mean dropout\? an alias of hidden_dropout\); the fields "
    with pytest.raises(ValueError, match=rf"^{hint}.*'attn_dropout'.*\]; dropout is an alias of hidden_dropout$"):
        LRURecConfig(dropuot=0.1)
    with pytest.raises(ValueError, match=r"^hiden_dropout is not a field of LRURecConfig \(did you mean "
                                         r"hidden_dropout\?\); "):
        LRURecConfig(hiden_dropout=0.1)
    with pytest.raises(ValueError, match=r"^dropuot is not a field of SASRecConfig \(did you mean (?!dropout\?)\w+\?\)"
                                         r"; the fields of SASRecConfig \(sasrec\) are \[[^]]*\]$"):
        SASRecConfig(dropuot=0.1)                       # no alias there: the closest field, and no alias listed
    folder, _ = _saved(tmp_path, "lrurec")
    for load in (LRURecModel.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(ValueError, match=rf"^{hint}.*; nor is dropuot an argument of from_pretrained$"):
            load(folder, dropuot=0.5)
    with caplog.at_level("WARNING", logger="zoo.modeling_utils"):
        AutoConfig.from_pretrained(folder, dropuot=0.5)                 # transformers drops it: warned, with the hint
    assert re.search(hint, caplog.text), caplog.text


@pytest.mark.parametrize("hidden_dropout", [0.3, 0.2])
def test_lrurec_dropout_alias_and_hidden_dropout_that_disagree_are_refused(hidden_dropout):
    """``LRURecConfig(dropout=0.1, hidden_dropout=0.3)`` kept 0.1 without a word (the alias won): two values for one
    field are refused naming both -- ``hidden_dropout=0.2``, its default value, given by hand included. The same
    value twice is accepted."""
    from zoo.models.lrurec import LRURecConfig

    with pytest.raises(ValueError, match=rf"^dropout=0.1 contradicts hidden_dropout={hidden_dropout}: dropout is an "
                                         r"alias of hidden_dropout; give one of them$"):
        LRURecConfig(dropout=0.1, hidden_dropout=hidden_dropout)
    assert LRURecConfig(dropout=hidden_dropout, hidden_dropout=hidden_dropout).hidden_dropout == hidden_dropout
    assert LRURecConfig(dropout=0.1).hidden_dropout == 0.1 and LRURecConfig().hidden_dropout == 0.2


# ------------------------------------------------- QA cfg 12: inner_size=None / dt_rank="auto" resolved when built
@pytest.mark.parametrize("model_type", ["mamba4rec", "tim4rec", "tim4rec_causal", "ssd4rec"])
def test_inner_size_none_and_dt_rank_auto_are_resolved_when_the_config_is_built(tmp_path, model_type):
    """As the config docstrings say: ``None`` / ``"auto"`` become ints at construction, are saved so, and a later
    ``hidden_size`` override does not re-derive them (unlike the derived fields, e.g. ``d_inner``)."""
    cfg_cls, _ = MODELS[model_type]
    c = cfg_cls(hidden_size=8, **({"head_dim": 4} if "head_dim" in config_fields(cfg_cls) else {}))
    resolved = {"inner_size": 32, **({"dt_rank": 1} if model_type == "mamba4rec" else {})}
    assert {f: getattr(c, f) for f in resolved} == resolved
    c.save_pretrained(tmp_path)
    assert {f: json.loads((tmp_path / "config.json").read_text())[f] for f in resolved} == resolved
    wide = AutoConfig.from_pretrained(tmp_path, hidden_size=32)
    assert {f: getattr(wide, f) for f in resolved} == resolved and wide.d_inner == 64
    doc = " ".join(" ".join(k.__doc__.split()) for k in cfg_cls.__mro__ if issubclass(k, SeqRecConfig))
    for f in resolved:
        assert re.search(rf"{f} \(`int` or [^)]*\): [^:]*? resolved to that int when the config is built", doc), f
