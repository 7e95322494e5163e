"""What ``pip install ssm-rec-zoo`` gets: the wheel built from the tracked sources, unpacked as pip installs it, then
used from outside the checkout -- the bundled model answers ``zoo.recommend``, and the TensorRT plugin sources (shipped
as ``export/plugins/``) build with ``python -m export.build_plugins`` into the user's cache, not site-packages (from a
wheel, CMake found no ``plugins/`` folder and the build failed)."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: what the wheel is built from (pyproject's packages, package-dirs and readme)
SOURCES = ("pyproject.toml", "README.md", "zoo", "export", "plugins", "hub_cards")


def build_backend_problem() -> str | None:
    """Why this interpreter cannot build the wheel without build isolation, or None. pyproject's build system asks
    for setuptools>=68 and wheel (``bdist_wheel``; setuptools 70.1+ has it built in); the dev extra installs them. A
    fresh Python 3.11 venv has setuptools 65.5 and no wheel, where the build fails with "invalid command
    'bdist_wheel'"."""
    try:
        import setuptools
    except ImportError:
        return "building the wheel needs setuptools>=68, which is not installed (pip install 'ssm-rec-zoo[dev]')"
    version = tuple(int(x) for x in re.findall(r"\d+", setuptools.__version__)[:2])
    if version < (68, 0):
        return (f"building the wheel needs setuptools>=68; setuptools {setuptools.__version__} is installed "
                "(pip install 'ssm-rec-zoo[dev]')")
    if version < (70, 1) and importlib.util.find_spec("wheel") is None:
        return (f"building the wheel with setuptools {setuptools.__version__} needs the wheel package, which is not "
                "installed (pip install 'ssm-rec-zoo[dev]')")
    return None


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel's files unpacked into a fresh folder (what pip writes into site-packages); skipped with the reason
    when this interpreter's setuptools cannot build it."""
    problem = build_backend_problem()
    if problem:
        pytest.skip(problem)
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "*.pyc")
    for name in SOURCES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, src / name, **(
            {"ignore": junk} if (ROOT / name).is_dir() else {}))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp / "dist")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("ssm_rec_zoo-*.whl")
    site = tmp / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    return site


def _run(site: Path, cwd: Path, *args, **env):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", **env})


def test_wheel_ships_the_plugin_sources_and_the_bundled_models(installed, tmp_path):
    """Every plugin source file (CMake lists, headers, kernels, plugin configs, READMEs, the spec-header generator)
    is in the wheel under ``export/plugins/``, every card under ``zoo/bundled/``; the installed package resolves the
    bundled Mamba4Rec and recommends from a folder that is not the checkout."""
    sources = {p.relative_to(ROOT / "plugins") for p in (ROOT / "plugins").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    shipped = {p.relative_to(installed / "export" / "plugins") for p in (installed / "export" / "plugins").rglob("*")
               if p.is_file()}
    assert sources and sources <= shipped, sorted(sources - shipped)
    for card in (ROOT / "hub_cards").iterdir():
        if (card / "config.json").is_file():
            for f in ("config.json", "model.safetensors", "item_vocab.json", "README.md"):
                assert (installed / "zoo" / "bundled" / card.name / f).is_file(), (card.name, f)
    r = _run(installed, tmp_path, "-c", "import zoo.pretrained as p, export.build_plugins as b; "
             "print(sorted(p.bundled_models())); print(p.bundled_models()['mamba4rec-ml1m']); print(b.PLUGINS_DIR); "
             "print(b.DEFAULT_BUILD_DIR)", XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr
    names, mamba, plugins_dir, build_dir = r.stdout.splitlines()
    assert "'mamba4rec-ml1m'" in names
    assert Path(mamba) == installed / "zoo" / "bundled" / "mamba4rec-ml1m"
    assert Path(plugins_dir) == installed / "export" / "plugins"
    assert Path(build_dir) == tmp_path / "cache" / "ssm-rec-zoo" / "plugins"
    r = _run(installed, tmp_path, "-m", "zoo.recommend", "--history", "1", "588", "364")
    assert r.returncode == 0 and "588" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


def test_plugins_build_from_the_installed_package(installed, tmp_path):
    """``python -m export.build_plugins`` of an installed wheel: CMake runs on ``export/plugins/``, finds
    ``plugin_spec.py`` beside it, and builds the kernels library (and the plugin library where TensorRT headers are
    found, as in the checkout) into the user's cache folder."""
    missing = [t for t in ("cmake", "nvcc") if shutil.which(t) is None and not Path(f"/usr/local/cuda/bin/{t}").exists()]
    if missing:
        pytest.skip(f"cannot compile the plugins: {', '.join(missing)} not found")
    cache = tmp_path / "cache"
    r = _run(installed, tmp_path, "-m", "export.build_plugins", "--arch", "80", "-j", str(os.cpu_count() or 2),
             XDG_CACHE_HOME=str(cache))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    out = cache / "ssm-rec-zoo" / "plugins"
    assert (out / "libzoo_scan_kernels.so").is_file()
    assert f"kernels library : {out / 'libzoo_scan_kernels.so'}" in r.stdout
    assert ("plugin library  : NOT built" in r.stdout) != (out / "libzoo_trt_plugins.so").is_file()
    assert not (installed / "build").exists()                            # nothing written into site-packages


#: pyproject's console scripts (export.fsutil.SCRIPTS): ``zoo-<name>`` runs ``python -m zoo.<name>``
ZOO_SCRIPTS = ("train", "evaluate", "recommend", "embed", "compare", "soup", "hub", "convert", "download")
#: ``export-<name>`` runs ``python -m export.<name with _>``
EXPORT_SCRIPTS = ("onnx", "trt", "triton", "perf-data", "build-plugins", "triton-server")


def test_every_command_has_a_console_script_whose_help_names_it(installed, tmp_path):
    """pyproject's ``[project.scripts]`` had zoo-train/-evaluate/-recommend/-embed only: every zoo command and every
    exporter now has its ``zoo-<name>`` / ``export-<name>`` script in the wheel, each loads and prints its ``--help``
    (exit 0), and its usage line names the script as typed (``usage: zoo-hub``), where ``python -m zoo.hub`` shows
    ``usage: python -m zoo.hub``."""
    import json
    import re

    code = ("import contextlib, io, json, sys, importlib.metadata as md\n"
            f"(dist,) = [d for d in md.distributions(path=[{str(installed)!r}])\n"
            "           if d.metadata['Name'] == 'ssm-rec-zoo']\n"
            "out = {}\n"
            "for ep in dist.entry_points.select(group='console_scripts'):\n"
            "    sys.argv, buf = [ep.name, '--help'], io.StringIO()\n"
            "    with contextlib.redirect_stdout(buf):\n"
            "        try:\n"
            "            ep.load()()\n"
            "            rc = 0\n"
            "        except SystemExit as e:\n"
            "            rc = e.code\n"
            "    out[ep.name] = [ep.value, rc, buf.getvalue().splitlines()[0] if buf.getvalue() else '']\n"
            "print(json.dumps(out))\n")
    r = _run(installed, tmp_path, "-c", code, ZOO_NO_CACHE_SEED="1")
    assert r.returncode == 0, r.stderr[-3000:]
    scripts = json.loads(r.stdout.splitlines()[-1])
    expected = {f"zoo-{n}": f"zoo.cli:{n}_script" for n in ZOO_SCRIPTS}
    expected.update({f"export-{n}": f"export.fsutil:{n.replace('-', '_')}_script" for n in EXPORT_SCRIPTS})
    assert set(scripts) == set(expected), sorted(scripts)
    for name, target in expected.items():
        value, rc, usage = scripts[name]
        assert value == target and rc in (0, None), (name, value, rc)
        assert re.match(rf"usage: {name} ", usage), (name, usage)
    r = _run(installed, tmp_path, "-m", "zoo.hub", "push", "--help", ZOO_NO_CACHE_SEED="1")
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m zoo.hub push "), r.stdout[:200] + r.stderr


def _parsers(main, argv=()) -> list:
    """The argument parsers of a command's ``main``: the one it parses its arguments with, and its subcommands'."""
    import argparse

    class Caught(Exception):
        pass

    found = []

    def catch(self, args=None, namespace=None):
        found.append(self)
        raise Caught

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "parse_args", catch)
        with pytest.raises(Caught):
            main(list(argv))
    subs = [a for a in found[0]._actions if isinstance(a, argparse._SubParsersAction)]
    return found + [p for a in subs for p in a.choices.values()]


@pytest.mark.parametrize("module", ["zoo.train", "zoo.hub", "zoo.convert", "zoo.download"])
def test_every_option_has_help_and_every_help_ends_with_the_exit_statuses(module):
    """Every option and argument of zoo.train, zoo.hub (list, card, push), zoo.convert and zoo.download has a help
    text (zoo.hub card's --name/--data/--description, push's folder/--repo-id/--private, convert's --trust-pickle ...
    had none), and every ``--help`` (each subcommand's too) ends with the one exit-status table (EXIT_CODES);
    ``python -m`` names the command in the usage line."""
    import importlib

    from export.fsutil import EXIT_CODES

    parsers = _parsers(importlib.import_module(module).main)
    assert parsers[0].prog == f"python -m {module}"
    for p in parsers:
        assert p.epilog and p.epilog.endswith(EXIT_CODES), (p.prog, p.epilog)
        bare = [a.dest for a in p._actions if not (a.help or "").strip()]
        assert not bare, (p.prog, bare)
    text = {p.prog: {a.dest: a.help for a in p._actions} for p in parsers}
    if module == "zoo.train":
        for dest in ("optimizer", "weight_decay", "lr", "batch_size", "clip"):
            assert "default: the model's preset" in text["python -m zoo.train"][dest], dest
        assert "--init-from" in text["python -m zoo.train"]["model"]
    if module == "zoo.hub":
        assert "no progress bar" in text["python -m zoo.hub card"]["no_progress"]
        assert "no part of a card" in text["python -m zoo.hub push"]["allow_extra"]
    if module == "zoo.convert":
        assert "runs any code the file holds" in text["python -m zoo.convert"]["trust_pickle"]
    if module == "zoo.download":
        assert "$ZOO_DATA_DIR" in text["python -m zoo.download"]["dir"]
