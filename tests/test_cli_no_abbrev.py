"""No command lets a truncated option silently stand for another one (argparse's prefix matching, ``allow_abbrev``):
an option learned in one command (``zoo.evaluate --window``, ``zoo.recommend --user``, ``export.trt --max-candidates``)
and typed into another whose option merely starts the same way (``zoo.train --window-stride``, ``export.perf_data
--users``, ``export.triton --max-candidate-sequences``) would run with a meaning the user never asked for. Every parser
of the zoo is built with ``allow_abbrev=False``, so such an option is a usage error (exit 2) naming it."""

import ast
import importlib
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("zoo", "export", "plugins", "bench")


def _parser_calls():
    """``(file:line, call)`` of every ``ArgumentParser(...)`` and ``.add_parser(...)`` call in the project's code."""
    for pkg in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, pkg)):
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read(), path)
                for node in ast.walk(tree):
                    if isinstance(node, ast.Call):
                        fn = node.func
                        called = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
                        if called in ("ArgumentParser", "add_parser"):
                            yield f"{os.path.relpath(path, ROOT)}:{node.lineno}", node


def test_every_parser_refuses_abbreviated_options():
    calls = list(_parser_calls())
    assert len(calls) >= 15, calls                                  # the commands' parsers were found
    allowing = [where for where, node in calls
                if not any(k.arg == "allow_abbrev" and isinstance(k.value, ast.Constant) and k.value.value is False
                           for k in node.keywords)]
    assert not allowing, f"parsers that accept abbreviated options (pass allow_abbrev=False): {allowing}"


@pytest.mark.parametrize("module, argv, wrong", [
    # zoo.evaluate's history window is --window; in zoo.train --window matched --window-stride
    ("zoo.train", ["--model", "gru4rec", "--data", "D", "--out", "O", "--window", "3"], "--window"),
    # export.trt --version matched --version-compatible
    ("export.trt", ["--model", "M", "--out", "O", "--version"], "--version"),
    # zoo.recommend picks a user with --user; export.perf_data's --users is a sample size
    ("export.perf_data", ["--repo", "R", "--name", "N", "--data", "D", "--out", "O", "--user", "42"], "--user"),
    # export.trt's --max-candidates is a list width; export.triton's --max-candidate-sequences a batcher setting
    ("export.triton", ["--model", "M", "--repo", "R", "--max-candidate", "10"], "--max-candidate"),
    ("zoo.compare", ["a.csv", "b.csv", "--k", "5"], "--k"),
    ("zoo.hub", ["card", "--run", "R", "--name", "n", "--data", "D", "--repo", "x/y"], "--repo"),
])
def test_an_option_that_only_starts_another_is_a_usage_error(module, argv, wrong, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)                                         # nothing is read or written: refused at parse
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and wrong in err, err
    assert os.listdir(tmp_path) == []
