"""The zoo's models, one file each, registered with ``AutoConfig`` / ``AutoModel`` on import.

Each model module listed in :data:`MODEL_MODULES` defines ``CONFIG_CLASS`` and ``MODEL_CLASS`` (a
:class:`~zoo.modeling_utils.SeqRecConfig` / :class:`~zoo.modeling_utils.SeqRecPreTrainedModel` pair with a unique
``model_type``), and is registered by :func:`register_model`, which a model of another package calls itself (see
``zoo/models/README.md``, "Adding a model"). A listed module that does not exist is an ``ImportError`` naming it;
a ``model_type`` that another model (of the zoo, or transformers' own) already uses is a ``ValueError`` naming both.

Models of other installed packages are also found through the entry-point group :data:`ENTRY_POINT_GROUP`
(``ssm_rec_zoo.models``), so that the command-line tools know them: each entry point names a module or a callable
that registers its models with :func:`register_model`. They are loaded once, lazily, by the first lookup of
:data:`MODELS` that misses or that needs the full list (iteration, ``len``, ``keys()``, ...): ``import zoo`` itself
reads no package metadata. A broken entry point (an import error, nothing registered, a ``model_type`` already used)
is a :class:`PluginWarning` naming it and its distribution; the other models work, and a lookup of the model type it
would have given names the failure (:func:`get_model_class`).
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
import types
import warnings

from transformers import AutoConfig, AutoModel

#: model modules in the order they are listed to users
MODEL_MODULES = ["mamba4rec", "lrurec", "sasrec", "tim4rec", "tim4rec_causal", "ssd4rec", "bert4rec", "gru4rec"]
#: the entry-point group of models of other installed packages (``[project.entry-points."ssm_rec_zoo.models"]``)
ENTRY_POINT_GROUP = "ssm_rec_zoo.models"


class PluginWarning(UserWarning):
    """An entry point of :data:`ENTRY_POINT_GROUP` that could not be loaded (or registered no model); the zoo goes
    on without it."""


class _Registry(dict):
    """``model_type -> (ConfigClass, ModelClass)``, a dict that loads the models of the installed packages' entry
    points (:func:`load_entry_points`) on its first miss (``in``, ``[]``, ``get``) or full listing (iteration,
    ``len``, ``keys`` / ``values`` / ``items``), then answers as a plain dict. The zoo's own code writes it with
    :func:`register_model` only."""

    def __missing__(self, key):
        load_entry_points()
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        raise KeyError(key)

    def __contains__(self, key) -> bool:
        if dict.__contains__(self, key):
            return True
        load_entry_points()
        return dict.__contains__(self, key)

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __iter__(self):
        load_entry_points()
        return dict.__iter__(self)

    def __len__(self) -> int:
        load_entry_points()
        return dict.__len__(self)

    def keys(self):
        load_entry_points()
        return dict.keys(self)

    def values(self):
        load_entry_points()
        return dict.values(self)

    def items(self):
        load_entry_points()
        return dict.items(self)


MODELS: dict[str, tuple[type, type]] = _Registry()


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
      :data:`~zoo.modeling_utils.MODEL_FAMILIES` (``"ssm"`` or ``"baseline"``: the tag of its model card), or
      ``model_class.training_objective`` not one of :data:`~zoo.modeling_utils.TRAINING_OBJECTIVES`.
    * ``ValueError``: ``model_type`` is missing (the base class's ``"seqrec"``) or already used -- by another zoo
      model (a copied model file whose ``model_type`` was not changed would otherwise replace that model
      process-wide), by one of transformers' own configs (``"mamba"``: ``AutoConfig`` would answer the zoo's class
      for every genuine Mamba checkpoint) or by a config another package registered. The message names both classes.

    Registering the same pair again does nothing; the classes of the same module imported again
    (``importlib.reload``) replace the earlier ones."""
    from ..modeling_utils import MODEL_FAMILIES, TRAINING_OBJECTIVES, SeqRecConfig, SeqRecPreTrainedModel

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
    objective = getattr(model_class, "training_objective", None)
    if objective not in TRAINING_OBJECTIVES:
        raise TypeError(f"{_where(model_class)}.training_objective is {objective!r}: set it to one of "
                        f"{list(TRAINING_OBJECTIVES)} (\"next_item\": forward's labels are per-position targets; "
                        "\"cloze\": a masked-item objective of its own, as BERT4Rec's), what zoo.train reads")
    if dict.__contains__(MODELS, model_type):          # not MODELS' own lookup, which loads the entry points
        old_cfg, old_cls = dict.__getitem__(MODELS, model_type)
        if (old_cfg, old_cls) == (config_class, model_class):
            _note_registered(model_type)
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
    _note_registered(model_type)


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


_ENTRY_POINTS_LOCK = threading.RLock()
#: ``done``: the entry points were loaded (or are being loaded: a lookup inside a plugin's own import is answered
#: from what is registered); ``finished``: loaded (other threads wait on the lock until then); ``failed``: entry
#: point name -> one line saying which one failed and why; ``recording``: the model types registered by the entry
#: point being loaded
_ENTRY_POINTS: dict = {"done": False, "finished": False, "failed": {}, "recording": None}


def _note_registered(model_type: str) -> None:
    """Record that the entry point being loaded (if any) registered ``model_type``."""
    if _ENTRY_POINTS["recording"] is not None:
        _ENTRY_POINTS["recording"].append(model_type)


def _describe_entry_point(ep) -> str:
    """``entry point 'name' (= module:attr) of distribution 'dist' 1.0``: how warnings and errors name it."""
    dist = getattr(ep, "dist", None)
    where = f"distribution {dist.name!r} {dist.version}" if dist is not None else "an unknown distribution"
    return f"{ENTRY_POINT_GROUP} entry point {ep.name!r} (= {ep.value}) of {where}"


def _load_entry_point(ep) -> None:
    """Load one entry point: a module (imported: it calls :func:`register_model`, or ends with ``CONFIG_CLASS`` /
    ``MODEL_CLASS`` as a model module of this folder, which are then registered) or a callable (called with no
    arguments; it calls :func:`register_model`). Raises what the import or registration raised; ``LookupError``
    when nothing was registered."""
    _ENTRY_POINTS["recording"] = registered = []
    try:
        obj = ep.load()
        if isinstance(obj, types.ModuleType):
            if hasattr(obj, "CONFIG_CLASS") and hasattr(obj, "MODEL_CLASS"):
                register_model(obj.CONFIG_CLASS, obj.MODEL_CLASS)
        elif callable(obj):
            obj()
        else:
            raise TypeError(f"it names a {type(obj).__name__}, neither a module nor a callable")
    finally:
        _ENTRY_POINTS["recording"] = None
    if not registered:
        raise LookupError("it registered no model: the module or callable it names must call zoo.register_model "
                          "(or, a module, end with CONFIG_CLASS = ... and MODEL_CLASS = ...)")


def load_entry_points() -> None:
    """Register the models of every entry point of :data:`ENTRY_POINT_GROUP` (installed packages' plugins), once per
    process; :data:`MODELS` calls it on its first miss or listing, so ``import zoo`` reads no package metadata.

    An entry point that fails -- its import raises, it registers nothing, or :func:`register_model` refuses its model
    (a ``model_type`` of the zoo's, of transformers' or of another plugin) -- is a :class:`PluginWarning` naming the
    entry point, its distribution and the error; the models registered before and the other entry points are kept.
    Exceptions other than ``Exception`` (``KeyboardInterrupt``) propagate."""
    if _ENTRY_POINTS["finished"]:
        return
    with _ENTRY_POINTS_LOCK:
        if _ENTRY_POINTS["done"]:
            return
        _ENTRY_POINTS["done"] = True      # first: a lookup made while a plugin loads does not load them again
        try:
            _load_entry_points()
        finally:
            _ENTRY_POINTS["finished"] = True


def _load_entry_points() -> None:
    from importlib.metadata import entry_points

    try:
        found = list(entry_points(group=ENTRY_POINT_GROUP))
    except Exception as e:                # unreadable metadata of some installed distribution
        warnings.warn(f"the {ENTRY_POINT_GROUP} entry points cannot be read ({type(e).__name__}: {e}); only the "
                      "models of zoo/models and those registered with zoo.register_model are known",
                      PluginWarning, stacklevel=3)
        return
    for ep in found:
        try:
            _load_entry_point(ep)
        except Exception as e:
            what = f"{_describe_entry_point(ep)} failed: {type(e).__name__}: {e}"
            _ENTRY_POINTS["failed"][ep.name] = what
            warnings.warn(f"{what}; the zoo goes on without it", PluginWarning, stacklevel=3)


def failed_entry_points_note(model_type: str) -> str:
    """``""``, or what an unknown-``model_type`` error adds: the entry point named ``model_type`` that failed to load
    (the plugin that would have given it), else every entry point that failed."""
    failed = _ENTRY_POINTS["failed"]
    if model_type in failed:
        return f" ({model_type!r} would come from {failed[model_type]})"
    if failed:
        return f" (entry points that failed to load: {'; '.join(failed.values())})"
    return ""


_register_bundled()


def get_model_class(model_type: str):
    """``(ConfigClass, ModelClass)`` for a registered ``model_type`` (e.g. ``"mamba4rec"``); a model of another
    package is found through its entry point (:func:`load_entry_points`). An unknown type is a ``ValueError`` listing
    the zoo's types and naming the entry points that failed to load (first the one named ``model_type``, when one
    is: the plugin that would have given it)."""
    try:
        return MODELS[model_type]
    except KeyError:
        raise ValueError(f"unknown model type {model_type!r}; the zoo has {sorted(MODELS)}"
                         f"{failed_entry_points_note(model_type)}") from None


def build_model_class(cfg_cls: type, model_cls: type, fields: dict, given: dict):
    """``model_cls(cfg_cls(**fields))``; a field of the wrong type (e.g. ``--set num_layers=null``, which the config or
    a layer refuses with ``TypeError``) is a ``ValueError`` listing the values the user ``given``."""
    try:
        return model_cls(cfg_cls(**fields))
    except TypeError as e:
        raise ValueError(f"{model_cls.__name__} cannot be built with these config values "
                         f"({', '.join(f'{k}={v!r}' for k, v in given.items())}): {e}") from None


__all__ = ["ENTRY_POINT_GROUP", "MODELS", "MODEL_MODULES", "PluginWarning", "build_model_class", "get_model_class",
           "load_entry_points", "register_model"]
