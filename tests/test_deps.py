"""Optional dependencies (export.deps): a missing one is named with the extra that installs it, as a one-line error
from the commands and a MissingDependencyError from the library, before any work."""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from export.deps import OPTIONAL, MissingDependencyError, require
from tests.conftest import ROOT


def test_require_imports_what_is_there_and_names_the_extra_of_what_is_not(monkeypatch, capsys):
    import onnx

    assert require("onnx", "x") is onnx
    monkeypatch.setitem(sys.modules, "onnx", None)            # as if not installed
    with pytest.raises(MissingDependencyError, match=r"^export.onnx needs onnx, which is not installed here: "
                                                     r"pip install 'ssm-rec-zoo\[export\]'") as e:
        require("onnx", "export.onnx")
    assert e.value.name == "onnx" and isinstance(e.value, ImportError)
    with pytest.raises(SystemExit) as e:
        require("onnx", "python -m export.onnx", cli=True)
    assert e.value.code == 4                                        # EXIT_MISSING: the one-line error is on stderr
    assert re.match(r"^error: python -m export.onnx needs onnx, .*\[export\]", capsys.readouterr().err)
    # a package a submodule imports: named as the one missing (tritonclient.grpc needs grpcio)
    monkeypatch.setitem(sys.modules, "grpc", None)
    for name in [m for m in sys.modules if m.startswith("tritonclient.grpc")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(MissingDependencyError, match=r"needs grpcio, .*'ssm-rec-zoo\[triton\]'"):
        require("tritonclient.grpc.model_config_pb2", "validating Triton configs")
    # anything else missing is not ours to reword: a broken installation keeps its own error
    with pytest.raises(ModuleNotFoundError) as e:
        require("zoo_no_such_module", "x")
    assert not isinstance(e.value, MissingDependencyError)
    assert set(OPTIONAL) >= {"onnx", "onnxruntime", "tritonclient", "grpc"}


def test_a_broken_installation_is_not_reported_as_not_installed(tmp_path, monkeypatch):
    """An installed optional package that misses a submodule of its own (onnx without its compiled
    ``onnx.onnx_cpp2py_export``) was reported as "not installed" (the missing name's first part was matched): its
    own error is raised as it is. A package missing under a submodule (tritonclient.grpc without grpcio) and the
    package itself missing are still named with their extra. Fake packages under tmp_path stand in for them."""
    monkeypatch.setitem(OPTIONAL, "zoo_fake_native", ("zoo-fake-native", "fake"))
    monkeypatch.setitem(OPTIONAL, "zoo_fake_client", ("zoo-fake-client", "fake"))
    monkeypatch.setitem(OPTIONAL, "zoo_fake_grpc", ("zoo-fake-grpc", "fake"))
    (tmp_path / "zoo_fake_native").mkdir()
    (tmp_path / "zoo_fake_native" / "__init__.py").write_text(
        "from zoo_fake_native._compiled import version  # the compiled part, missing\n")
    (tmp_path / "zoo_fake_client" / "grpc").mkdir(parents=True)
    (tmp_path / "zoo_fake_client" / "__init__.py").write_text("")
    (tmp_path / "zoo_fake_client" / "grpc" / "__init__.py").write_text(
        "try:\n    import zoo_fake_grpc\nexcept ModuleNotFoundError as e:\n"
        "    raise RuntimeError('this installation has no grpc support') from e\n")
    monkeypatch.setitem(OPTIONAL, "zoo_fake_absent", ("zoo-fake-absent", "fake"))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ModuleNotFoundError) as e:
            require("zoo_fake_native", "x")
        assert not isinstance(e.value, MissingDependencyError) and e.value.name == "zoo_fake_native._compiled"
        with pytest.raises(MissingDependencyError, match=r"^x needs zoo-fake-grpc, .*'ssm-rec-zoo\[fake\]'") as e:
            require("zoo_fake_client.grpc", "x")
        assert e.value.name == "zoo_fake_grpc"
        with pytest.raises(MissingDependencyError, match=r"^x needs zoo-fake-absent, .*'ssm-rec-zoo\[fake\]'"):
            require("zoo_fake_absent.grpc", "x")                      # the package itself not installed
        monkeypatch.setitem(sys.modules, "zoo_fake_client", None)     # or not importable
        with pytest.raises(MissingDependencyError, match=r"^x needs zoo-fake-client, .*'ssm-rec-zoo\[fake\]'"):
            require("zoo_fake_client.grpc", "x")
    finally:
        for name in [m for m in sys.modules if m.startswith("zoo_fake_")]:
            del sys.modules[name]


#: what tritonclient 2.50's generated ``grpc/service_pb2_grpc.py`` raises on import under grpcio 1.60 (verbatim)
GRPC_TOO_OLD = textwrap.dedent("""\
    GRPC_GENERATED_VERSION = '1.66.1'
    GRPC_VERSION = '1.60.0'
    raise RuntimeError(
        f'The grpc package installed is at version {GRPC_VERSION},'
        + f' but the generated code in grpc_service_pb2_grpc.py depends on'
        + f' grpcio>={GRPC_GENERATED_VERSION}.'
        + f' Please upgrade your grpc module to grpcio>={GRPC_GENERATED_VERSION}'
        + f' or downgrade your generated code using grpcio-tools<={GRPC_VERSION}.'
    )
    """)


def fake_tritonclient(root, error=GRPC_TOO_OLD):
    """A stand-in ``tritonclient`` package under ``root`` whose ``tritonclient.grpc`` raises ``error`` on import (as
    the real one does when grpcio is older than its generated code: pip lets that happen)."""
    (root / "tritonclient" / "grpc").mkdir(parents=True)
    (root / "tritonclient" / "__init__.py").write_text("")
    (root / "tritonclient" / "grpc" / "__init__.py").write_text("from tritonclient.grpc import service_pb2_grpc\n")
    (root / "tritonclient" / "grpc" / "service_pb2_grpc.py").write_text(error)
    (root / "tritonclient" / "grpc" / "model_config_pb2.py").write_text("")
    return root


def test_a_grpcio_too_old_for_tritonclient_is_named_with_the_version_it_needs(tmp_path, monkeypatch, capsys):
    """tritonclient's generated gRPC code refuses an older grpcio with a ``RuntimeError`` (tritonclient 2.50 needs
    grpcio>=1.66.1, 2.51 1.67.0, ...; its metadata says >=1.41, so pip installs the pair): a MissingDependencyError
    naming the grpcio it needs, one line and exit 4 from a command. Another RuntimeError stays as it is."""
    monkeypatch.syspath_prepend(str(fake_tritonclient(tmp_path / "fake")))
    for name in [m for m in sys.modules if m == "tritonclient" or m.startswith("tritonclient.")]:
        monkeypatch.delitem(sys.modules, name)
    try:
        want = (r"^validating Triton configs needs grpcio>=1\.66\.1 \(tritonclient's gRPC code\), but grpcio 1\.60\.0 "
                r"is installed here: pip install -U 'grpcio>=1\.66\.1'$")
        with pytest.raises(MissingDependencyError, match=want) as e:
            require("tritonclient.grpc.model_config_pb2", "validating Triton configs")
        assert e.value.name == "grpc"
        with pytest.raises(SystemExit) as e:
            require("tritonclient.grpc", "python -m export.triton", cli=True)
        assert e.value.code == 4
        assert re.fullmatch(r"error: python -m export\.triton needs grpcio>=1\.66\.1 .*\n", capsys.readouterr().err)
        (tmp_path / "fake" / "tritonclient" / "grpc" / "service_pb2_grpc.py").write_text(
            "raise RuntimeError('no channel support on this platform')\n")
        for name in [m for m in sys.modules if m.startswith("tritonclient.")]:
            del sys.modules[name]
        with pytest.raises(RuntimeError, match="no channel support") as e:
            require("tritonclient.grpc", "x")
        assert not isinstance(e.value, MissingDependencyError)
    finally:
        for name in [m for m in sys.modules if m == "tritonclient" or m.startswith("tritonclient.")]:
            del sys.modules[name]


def test_export_triton_with_a_grpcio_too_old_says_so_in_one_line_before_any_work(tmp_path):
    fake = fake_tritonclient(tmp_path / "fake")
    (tmp_path / "run").mkdir()
    p = _run(f"""
        import runpy, sys
        sys.path.insert(0, {str(fake)!r})
        sys.argv = ["export.triton", "--model", "m", "--repo", "o"]
        runpy.run_module("export.triton", run_name="__main__", alter_sys=True)
        """, tmp_path / "run")
    assert p.returncode == 4, p.stdout + p.stderr
    assert p.stderr.strip().splitlines() == [
        "error: python -m export.triton needs grpcio>=1.66.1 (tritonclient's gRPC code), but grpcio 1.60.0 is "
        "installed here: pip install -U 'grpcio>=1.66.1'"], p.stderr
    assert list((tmp_path / "run").iterdir()) == []            # nothing written (no output folder begun)


def _run(code: str, cwd) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter at the repository root (the package as a user imports it)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=str(cwd), timeout=300)


def _command_without(missing: str, module: str, args: list[str], cwd) -> subprocess.CompletedProcess:
    """``python -m module args`` with the package ``missing`` not importable (``sys.modules[missing] = None``)."""
    return _run(f"""
        import runpy, sys
        sys.modules[{missing!r}] = None
        sys.argv = [{module!r}] + {args!r}
        runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
        """, cwd)


@pytest.mark.parametrize("missing, module, args, needed_by, extra", [
    ("onnx", "export.onnx", ["--model", "m", "--out", "o"], "export.onnx", "export"),
    ("onnxruntime", "export.onnx", ["--model", "m", "--out", "o"], "export.onnx (its verification runs the graph)",
     "export"),
    ("onnx", "export.trt", ["--model", "m", "--out", "o"], "python -m export.trt", "export"),
    ("tritonclient", "export.triton", ["--model", "m", "--repo", "o"], "python -m export.triton", "triton"),
    ("onnx", "export.triton", ["--model", "m", "--repo", "o"], "python -m export.triton", "export"),
    ("onnxruntime", "zoo.evaluate", ["--onnx", "g", "--data", "d"], "zoo.evaluate --onnx", "export"),
])
def test_a_command_without_its_optional_package_says_so_in_one_line_before_any_work(tmp_path, missing, module,
                                                                                    args, needed_by, extra):
    p = _command_without(missing, module, args, tmp_path)
    assert p.returncode == 4, p.stdout + p.stderr
    assert p.stderr.strip().splitlines() == [
        f"error: {needed_by} needs {OPTIONAL[missing][0]}, which is not installed here: "
        f"pip install 'ssm-rec-zoo[{extra}]'  (or: pip install '{OPTIONAL[missing][0]}')"], p.stderr
    assert list(tmp_path.iterdir()) == []                      # nothing written (no output folder begun)


def test_the_library_raises_missing_dependency_error_and_the_runtime_stays_torch_free(tmp_path):
    p = _run("""
        import sys
        import export.runtime                                  # onnxruntime + numpy only: not the zoo, not torch
        assert "torch" not in sys.modules and "zoo" not in sys.modules
        sys.modules["onnx"] = None
        from export.deps import MissingDependencyError
        try:
            import export.onnx
        except MissingDependencyError as e:
            assert str(e).startswith("export.onnx needs onnx") and e.name == "onnx", e
            print("OK")
        """, tmp_path)
    assert p.returncode == 0 and p.stdout.strip() == "OK", p.stdout + p.stderr
