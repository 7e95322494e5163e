"""Every zoo config refuses sizes below 1 and dropout rates outside [0, 1), naming the field -- whether the check is
the model config's own or the shared one in ``SeqRecConfig``."""

import pytest

from zoo.modeling_utils import _SIZE_FIELDS
from zoo.models import MODELS
from zoo.train import config_fields

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
