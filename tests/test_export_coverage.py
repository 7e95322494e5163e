"""Every model type of the zoo is exported and checked against PyTorch by at least one parity test.

The ONNX / TensorRT parity tests name their models in hand-written lists (``tests/test_export_onnx.py``
``STEP_MODELS``, ``TIME_STEP_MODELS``, the parametrize lists of its window-graph tests; ``tests/test_trt_plugins.py``
``arch``): a model added to ``zoo/models`` and to none of them would ship an exporter no test runs. This file reads
those lists from the test files' source (the ``@pytest.mark.parametrize`` arguments named ``name``, ``model_type`` or
``arch``, with the module-level lists they are built from) and fails naming each zoo model type that is in none.
A test model name stands for the model type it starts with (``"mamba4rec-2l"``, ``"tim4rec_causal-gaps"``).
"""

import ast
import importlib
from pathlib import Path

import pytest

from zoo.models import MODEL_MODULES

TESTS = Path(__file__).resolve().parent
#: the test files whose parametrized tests export a model and verify the graph (or engine) against PyTorch
PARITY_FILES = ("test_export_onnx.py", "test_trt_plugins.py", "test_trt_cli.py")
#: the parametrize argument names that name a model (a model type or a test model name)
MODEL_ARGS = ("name", "model_type", "arch")


class _NotLiteral(Exception):
    """A parametrize argument that is not built of literals and module-level lists (it is skipped)."""


def _evaluate(node: ast.AST, constants: dict, depth: int = 0):
    """The value of ``node``: literals, lists / tuples of them, ``+`` of lists, ``list(...)``, ``pytest.param(...)``
    (its values, as a tuple) and names of module-level assignments (``constants``); ``_NotLiteral`` otherwise."""
    if depth > 20:
        raise _NotLiteral("too deep")
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_evaluate(e, constants, depth + 1) for e in node.elts]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _evaluate(node.left, constants, depth + 1), _evaluate(node.right, constants, depth + 1)
        if isinstance(left, list) and isinstance(right, list):
            return left + right
    if isinstance(node, ast.Name) and node.id in constants:
        return _evaluate(constants[node.id], constants, depth + 1)
    if isinstance(node, ast.Call):
        func = ast.unparse(node.func)
        if func in ("pytest.param", "param"):
            return [_evaluate(a, constants, depth + 1) for a in node.args]
        if func == "list" and len(node.args) == 1:
            return list(_evaluate(node.args[0], constants, depth + 1))
    raise _NotLiteral(ast.unparse(node))


def parametrized_models(source: str) -> dict[str, set[str]]:
    """``{value: {test function, ...}}`` for every value a ``@pytest.mark.parametrize`` of a test function in
    ``source`` gives to an argument of :data:`MODEL_ARGS`."""
    tree = ast.parse(source)
    constants = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name)}
    found: dict[str, set[str]] = {}
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for deco in fn.decorator_list:
            if not (isinstance(deco, ast.Call) and ast.unparse(deco.func).endswith("parametrize")
                    and len(deco.args) >= 2):
                continue
            try:
                names, values = _evaluate(deco.args[0], constants), _evaluate(deco.args[1], constants)
            except _NotLiteral:
                continue
            names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
            for arg in MODEL_ARGS:
                if arg not in names:
                    continue
                i = names.index(arg)
                for value in values:
                    v = value[i] if len(names) > 1 and isinstance(value, list) else value
                    if isinstance(v, list) and len(v) == 1:                 # pytest.param("x")
                        v = v[0]
                    if isinstance(v, str):
                        found.setdefault(v, set()).add(fn.name)
    return found


def model_type_of(name: str, model_types) -> str | None:
    """The model type a test model ``name`` stands for: itself, or the longest type it starts with followed by
    ``-`` (``"mamba4rec-2l"`` -> ``"mamba4rec"``); None when it is no model's."""
    if name in model_types:
        return name
    prefixes = [t for t in model_types if name.startswith(t + "-")]
    return max(prefixes, key=len) if prefixes else None


def coverage(sources: dict[str, str], model_types) -> dict[str, list[str]]:
    """``{model type: ["file::test", ...]}``: the parity tests of each of ``model_types`` (``[]``: none)."""
    covered: dict[str, set[str]] = {t: set() for t in model_types}
    for file, source in sources.items():
        for name, tests in parametrized_models(source).items():
            t = model_type_of(name, model_types)
            if t is not None:
                covered[t] |= {f"{file}::{test}" for test in tests}
    return {t: sorted(tests) for t, tests in covered.items()}


def zoo_model_types() -> list[str]:
    """The model types of the zoo's own model modules (:data:`zoo.models.MODEL_MODULES`), in their order: the
    registry's models less those of other packages (entry points, ``register_model``), which their packages test."""
    return [importlib.import_module(f"zoo.models.{m}").CONFIG_CLASS.model_type for m in MODEL_MODULES]


def test_every_zoo_model_type_is_in_an_export_parity_list():
    """A model type of ``zoo/models`` that no parity test exports is named, with where to add it."""
    sources = {f: (TESTS / f).read_text() for f in PARITY_FILES}
    covered = coverage(sources, zoo_model_types())
    missing = sorted(t for t, tests in covered.items() if not tests)
    assert not missing, (f"model types no export parity test runs: {missing}; add each to a parametrized parity "
                         "test of tests/test_export_onnx.py (STEP_MODELS / TIME_STEP_MODELS for a step graph, "
                         "test_window_graph_other_models for a window graph) or tests/test_trt_plugins.py")


def test_the_zoo_model_types_are_the_registered_ones_of_zoo_models():
    """The guard's list is the registry's (a model listed in MODEL_MODULES is checked without naming it here)."""
    from zoo.models import MODELS

    types = zoo_model_types()
    assert len(types) == len(set(types)) == len(MODEL_MODULES) >= 8
    assert {t for t, (_, cls) in dict.items(MODELS) if cls.__module__.startswith("zoo.models.")} == set(types)


SYNTHETIC = '''
import pytest

STEP = ["alpha-1l", "alpha-2l"]
ALL = STEP + ["beta"]
OTHER = "gamma"


@pytest.mark.parametrize("name", ALL + ["beta-gaps"])
def test_step(name):
    pass


@pytest.mark.parametrize("name,precision", [("delta", "fp32"), pytest.param("epsilon-x", "fp16")])
@pytest.mark.parametrize("fp16", [False, True])
def test_pairs(name, precision, fp16):
    pass


@pytest.mark.parametrize("model_type", [OTHER])
def test_other(model_type):
    pass


@pytest.mark.parametrize("flavour", ["zeta"])
def test_not_a_model_argument(flavour):
    pass


@pytest.mark.parametrize("name", sorted(MODELS))
def test_not_literal(name):
    pass
'''


def test_the_guard_names_a_model_type_missing_from_every_list():
    """Negative control of the guard: lists built with ``+`` from module-level lists, tuples of several arguments,
    ``pytest.param`` and suffixed test model names count; other arguments do not; a type in no list is missing."""
    found = parametrized_models(SYNTHETIC)
    assert set(found) == {"alpha-1l", "alpha-2l", "beta", "beta-gaps", "delta", "epsilon-x", "gamma"}, found
    assert found["delta"] == {"test_pairs"} and found["beta"] == {"test_step"}
    types = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"]
    covered = coverage({"synthetic.py": SYNTHETIC}, types)
    assert sorted(t for t, tests in covered.items() if not tests) == ["eta", "zeta"]
    assert covered["alpha"] == ["synthetic.py::test_step"] and covered["delta"] == ["synthetic.py::test_pairs"]
    assert model_type_of("tim4rec_causal-gaps", ["tim4rec", "tim4rec_causal"]) == "tim4rec_causal"
    assert model_type_of("tim4rec_causalx", ["tim4rec", "tim4rec_causal"]) is None


@pytest.mark.parametrize("model_type", ["bert4rec", "gru4rec", "mamba4rec"])
def test_the_guard_fails_when_a_real_list_loses_a_model(model_type):
    """Negative control on the real files: with every parity test of one model type taken out of their source
    (its names replaced by an unknown one), the guard names it."""
    sources = {f: (TESTS / f).read_text() for f in PARITY_FILES}
    types = zoo_model_types()
    assert coverage(sources, types)[model_type]
    spoiled = {f: s.replace(f'"{model_type}"', '"nomodel"').replace(f'"{model_type}-', '"nomodel-')
               for f, s in sources.items()}
    assert coverage(spoiled, types)[model_type] == []
