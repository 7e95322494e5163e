"""The zoo's models, one file each, registered with ``AutoConfig`` / ``AutoModel`` on import.

Each model module defines ``CONFIG_CLASS`` and ``MODEL_CLASS`` (a :class:`~zoo.modeling_utils.SeqRecConfig` /
:class:`~zoo.modeling_utils.SeqRecPreTrainedModel` pair with a unique ``model_type``).
"""

from __future__ import annotations

import importlib
import os

from transformers import AutoConfig, AutoModel

#: model modules in the order they are listed to users
MODEL_MODULES = ["mamba4rec", "lrurec", "sasrec", "tim4rec", "tim4rec_causal", "ssd4rec", "bert4rec", "gru4rec"]

MODELS: dict[str, tuple[type, type]] = {}
_here = os.path.dirname(__file__)
for _name in MODEL_MODULES:
    if not os.path.exists(os.path.join(_here, f"{_name}.py")):
        continue  # not written yet (see the issues); nothing is imported silently-failing
    _mod = importlib.import_module(f".{_name}", __name__)
    _cfg, _cls = _mod.CONFIG_CLASS, _mod.MODEL_CLASS
    AutoConfig.register(_cfg.model_type, _cfg, exist_ok=True)
    AutoModel.register(_cfg, _cls, exist_ok=True)
    MODELS[_cfg.model_type] = (_cfg, _cls)


def get_model_class(model_type: str):
    """``(ConfigClass, ModelClass)`` for a registered ``model_type`` (e.g. ``"mamba4rec"``)."""
    try:
        return MODELS[model_type]
    except KeyError:
        raise ValueError(f"unknown model type {model_type!r}; the zoo has {sorted(MODELS)}") from None


def build_model_class(cfg_cls: type, model_cls: type, fields: dict, given: dict):
    """``model_cls(cfg_cls(**fields))``; a field of the wrong type (e.g. ``--set num_layers=null``, which the config or
    a layer refuses with ``TypeError``) is a ``ValueError`` listing the values the user ``given``."""
    try:
        return model_cls(cfg_cls(**fields))
    except TypeError as e:
        raise ValueError(f"{model_cls.__name__} cannot be built with these config values "
                         f"({', '.join(f'{k}={v!r}' for k, v in given.items())}): {e}") from None


__all__ = ["MODELS", "MODEL_MODULES", "build_model_class", "get_model_class"]
