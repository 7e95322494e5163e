"""The deployment path's optional dependencies: import one by name, or stop with an error naming the extra that
installs it.

``pip install ssm-rec-zoo`` installs what the models, training, evaluation and cards need; the exporters and the
Triton client need an extra (``pyproject.toml``). A missing one is named with the command that installs it, never
left to a bare ``ModuleNotFoundError`` traceback. This module imports nothing of the zoo (nor torch), so that
``export.runtime`` and ``export.triton_client`` stay light::

    onnx = require("onnx", "export.onnx")
    # MissingDependencyError: export.onnx needs onnx, which is not installed here:
    #     pip install 'ssm-rec-zoo[export]'  (or: pip install onnx)
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from types import ModuleType

#: top-level import name -> (what pip installs, the ``ssm-rec-zoo`` extra that brings it, or None)
OPTIONAL = {
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
    "tritonclient": ("tritonclient[http]", "triton"),
    "grpc": ("grpcio", "triton"),
    "matplotlib": ("matplotlib", "bench"),
    "redis": ("redis", "redis"),
    # no extra: nvidia-pytriton pins its own numpy, so it lives in a virtualenv of its own (triton_server_env.sh)
    "pytriton": ("nvidia-pytriton", None),
}


class MissingDependencyError(ImportError):
    """An optional package that a feature needs is not installed; the message says how to install it."""


def require(module: str, needed_by: str, *, cli: bool = False) -> ModuleType:
    """Import and return ``module`` (e.g. ``"onnx"``, ``"tritonclient.grpc"``) for ``needed_by`` (what needs it, as the
    user calls it: ``"python -m export.onnx"``).

    When an optional package of :data:`OPTIONAL` is missing (``module`` itself or one it imports, e.g. ``grpc`` under
    ``tritonclient.grpc``, which re-raises that as a ``RuntimeError``): :class:`MissingDependencyError` naming it and
    its extra. When grpcio is older than tritonclient's generated gRPC code needs (its ``RuntimeError`` "The grpc
    package installed is at version X, but the generated code ... depends on grpcio>=Y"; pip does not catch this,
    tritonclient declares an older floor): :class:`MissingDependencyError` naming ``grpcio>=Y``. With ``cli`` (a
    command's own check, or a module run as ``python -m``) the same text as a one-line ``error: ...`` and exit status
    4 (:data:`export.fsutil.EXIT_MISSING`) instead of a traceback. Any other import failure (a broken installation) is
    raised as it is."""
    try:
        return importlib.import_module(module)
    except (ImportError, RuntimeError) as e:
        missing = _missing_optional(e)
        too_old = _grpc_too_old(e) if missing is None else None
        if missing is None and too_old is None:
            raise
        if too_old is not None:
            have, need = too_old
            err = MissingDependencyError(f"{needed_by} needs grpcio>={need} (tritonclient's gRPC code), but grpcio "
                                         f"{have} is installed here: pip install -U 'grpcio>={need}'", name="grpc")
        else:
            dist, extra = OPTIONAL[missing]
            how = (f"pip install 'ssm-rec-zoo[{extra}]'  (or: pip install '{dist}')" if extra else
                   f"pip install '{dist}' in a virtualenv of its own (export/triton_server_env.sh makes one)")
            err = MissingDependencyError(f"{needed_by} needs {dist}, which is not installed here: {how}", name=missing)
    if cli:
        from .fsutil import EXIT_MISSING, exit_with

        exit_with(EXIT_MISSING, f"error: {err}")
    raise err


def _missing_optional(e: BaseException | None) -> str | None:
    """The :data:`OPTIONAL` package whose absence ``e`` (or an error it was raised from) reports, else None: the
    package itself not found (``e.name`` is the package, or a submodule of a package that cannot be found at all, as
    Python names ``tritonclient.grpc`` when ``sys.modules["tritonclient"]`` is None). A missing submodule of an
    installed package (``onnx.onnx_cpp2py_export``, the compiled part of a broken onnx) is a broken installation,
    not a missing package: None."""
    while e is not None:
        name = (e.name or "") if isinstance(e, ModuleNotFoundError) else ""
        top = name.split(".")[0]
        if top in OPTIONAL and (name == top or _not_found(top)):
            return top
        e = e.__cause__ or e.__context__
    return None


#: the ``RuntimeError`` of grpcio-tools' generated ``*_pb2_grpc.py`` when the installed grpcio is too old for it
_GRPC_TOO_OLD = re.compile(r"grpc package installed is at version (\S+?),.*?depends on grpcio>=(\d+(?:\.\d+)*)",
                           re.DOTALL)


def _grpc_too_old(e: BaseException | None) -> tuple[str, str] | None:
    """``(installed, needed)`` grpcio versions when ``e`` (or an error it was raised from) is the generated gRPC code's
    refusal of too old a grpcio, else None."""
    while e is not None:
        m = _GRPC_TOO_OLD.search(str(e)) if isinstance(e, RuntimeError) else None
        if m:
            return m.group(1), m.group(2)
        e = e.__cause__ or e.__context__
    return None


def _not_found(top: str) -> bool:
    """True when the top-level package ``top`` cannot be found (imports nothing)."""
    try:
        return importlib.util.find_spec(top) is None
    except (ImportError, ValueError):
        return False
