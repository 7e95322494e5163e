"""The zoo's models, one file each, registered with ``AutoConfig`` / ``AutoModel`` on import.

Each model module listed in :data:`MODEL_MODULES` defines ``CONFIG_CLASS`` and ``MODEL_CLASS`` (a
:class:`~zoo.modeling_utils.SeqRecConfig` / :class:`~zoo.modeling_utils.SeqRecPreTrainedModel` pair with a unique
``model_type``), and is registered by :func:`register_model`, which a model of another package calls itself (see
``zoo/models/README.md``, "Adding a model"). A listed module that does not exist is an ``ImportError`` naming it;
a ``model_type`` that another model (of the zoo, or transformers' own) already uses is a ``ValueError`` naming both.
"""

from __future__ import annotations

import importlib
import importlib.util

from transformers import AutoConfig, AutoModel

#: model modules in the order they are listed to users
MODEL_MODULES = ["mamba4rec", "lrurec", "sasrec", "tim4rec", "tim4rec_causal", "ssd4rec", "bert4rec", "gru4rec"]

MODELS: dict[str, tuple[type, type]] = {}


def _where(cls: type) -> str:
    """``module.Class`` of ``cls``: how registration errors name a class and the file it comes from."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _transformers_owner(model_type: str, config_class: type) -> str | None:
    """The config class (``module.Class``) that transformers' ``AutoConfig`` already maps ``model_type`` to, when
    it is not ``config_class``: one of transformers' own (``"mamba"``) or one another package registered."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES

    if model_type in CONFIG_MAPPING_NAMES:             # transformers' own, without importing its module
        return f"transformers' {CONFIG_MAPPING_NAMES[model_type]}"
    if model_type in CONFIG_MAPPING:                  # registered by another package (or an earlier import)
        owner = CONFIG_MAPPING[model_type]
        if _where(owner) != _where(config_class):     # the same class of a module imported again is no other
            return _where(owner)
    return None


def register_model(config_class: type, model_class: type) -> None:
    """Register a zoo model: ``AutoConfig.register(model_type, config_class)``,
    ``AutoModel.register(config_class, model_class)`` and ``MODELS[model_type] = (config_class, model_class)``, so
    that ``AutoModel`` / ``AutoConfig``, ``zoo.SeqRecPreTrainedModel.from_pretrained``, ``get_model_class`` and the
    hub's cards know the ``model_type``. The zoo registers its own models (:data:`MODEL_MODULES`) with it on import;
    a model defined in another package calls it once, after ``import zoo``::

        import zoo
        from mypkg.ema4rec import EMA4RecConfig, EMA4RecModel
        zoo.register_model(EMA4RecConfig, EMA4RecModel)

    Checked before anything is registered (nothing is changed by a refused call):

    * ``TypeError``: ``config_class`` is no :class:`~zoo.modeling_utils.SeqRecConfig` subclass, ``model_class`` no
      :class:`~zoo.modeling_utils.SeqRecPreTrainedModel` subclass, ``model_class.config_class`` is not
      ``config_class``, or ``model_class.model_family`` is not one of
      :data:`~zoo.modeling_utils.MODEL_FAMILIES` (``"ssm"`` or ``"baseline"``: the tag of its model card).
    * ``ValueError``: ``model_type`` is missing (the base class's ``"seqrec"``) or already used -- by another zoo
      model (a copied model file whose ``model_type`` was not changed would otherwise replace that model
      process-wide), by one of transformers' own configs (``"mamba"``: ``AutoConfig`` would answer the zoo's class
      for every genuine Mamba checkpoint) or by a config another package registered. The message names both classes.

    Registering the same pair again does nothing; the classes of the same module imported again
    (``importlib.reload``) replace the earlier ones."""
    from ..modeling_utils import MODEL_FAMILIES, SeqRecConfig, SeqRecPreTrainedModel

    if not (isinstance(config_class, type) and issubclass(config_class, SeqRecConfig)):
        raise TypeError(f"register_model: the config class must subclass zoo.SeqRecConfig, got {config_class!r}")
    if not (isinstance(model_class, type) and issubclass(model_class, SeqRecPreTrainedModel)):
        raise TypeError(f"register_model: the model class must subclass zoo.SeqRecPreTrainedModel, got "
                        f"{model_class!r}")
    model_type = config_class.__dict__.get("model_type")
    if not isinstance(model_type, str) or not model_type or model_type == SeqRecConfig.model_type:
        raise ValueError(f"{_where(config_class)} sets no model_type of its own (got "
                         f"{getattr(config_class, 'model_type', None)!r}): give it a unique "
                         "model_type = \"...\" class attribute")
    if model_class.config_class is not config_class:
        raise TypeError(f"{_where(model_class)}.config_class is {_where(model_class.config_class)}, not "
                        f"{_where(config_class)}: set config_class = {config_class.__name__} on the model class")
    family = getattr(model_class, "model_family", None)
    if family not in MODEL_FAMILIES:
        raise TypeError(f"{_where(model_class)}.model_family is {family!r}: set it to one of {list(MODEL_FAMILIES)} "
                        "(\"ssm\": a state-space / linear-recurrent model; \"baseline\": any other), the tag its "
                        "model card gets")
    if model_type in MODELS:
        old_cfg, old_cls = MODELS[model_type]
        if (old_cfg, old_cls) == (config_class, model_class):
            return
        if (_where(old_cfg), _where(old_cls)) != (_where(config_class), _where(model_class)):   # not a reload
            raise ValueError(f"model_type {model_type!r} of {_where(config_class)} (model {_where(model_class)}) is "
                             f"already the zoo's {_where(old_cfg)} (model {_where(old_cls)}): give the new config "
                             "a model_type of its own")
    owner = _transformers_owner(model_type, config_class)
    if owner is not None:
        raise ValueError(f"model_type {model_type!r} of {_where(config_class)} is already used by {owner}, "
                         "registered with transformers' AutoConfig: give the config a model_type of its own (the "
                         "zoo's would replace it process-wide)")
    AutoConfig.register(model_type, config_class, exist_ok=True)   # checked above; True: a class the user registered
    AutoModel.register(config_class, model_class, exist_ok=True)
    MODELS[model_type] = (config_class, model_class)


def _register_bundled() -> None:
    """Import and register every module of :data:`MODEL_MODULES`, in order."""
    for name in MODEL_MODULES:
        full = f"{__name__}.{name}"
        if importlib.util.find_spec(full) is None:
            raise ImportError(f"zoo.models.MODEL_MODULES lists {name!r} but there is no module {full} "
                              f"(zoo/models/{name}.py): a typo, or a file not added", name=full)
        mod = importlib.import_module(full)
        missing = [a for a in ("CONFIG_CLASS", "MODEL_CLASS") if not hasattr(mod, a)]
        if missing:
            raise ImportError(f"{full} defines no {' or '.join(missing)}: a model module ends with "
                              "CONFIG_CLASS = <its config class> and MODEL_CLASS = <its model class>", name=full)
        register_model(mod.CONFIG_CLASS, mod.MODEL_CLASS)


_register_bundled()


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


__all__ = ["MODELS", "MODEL_MODULES", "build_model_class", "get_model_class", "register_model"]
