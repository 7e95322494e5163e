"""export.trt on CPU: the settings checks, the environment probe, the plugin-library / registry checks and the failure
paths of ``run()`` / ``main()``, each with the code's own message. Nothing here needs TensorRT, a GPU or a compiler:
the TensorRT module, the plugin registry and the environment are fakes with the attributes export.trt reads, so the
tests behave the same on every machine (tests/test_trt_plugins.py covers the real library and the lean runtime).
The tests of the CPU-emulated plugin check ([4b], run in a child process) build the emulated plugin library where a
C++ compiler and the TensorRT headers are found, and skip otherwise."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import signal
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from export import build_plugins as BP
from export import plugin_spec as ps
from export import trt as T
from full_disk import full_disk

_RUN = T.run      # the real run(), for its signature (tests below replace T.run)
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize("text,n", [
    ("512M", 512 << 20), ("512MB", 512 << 20), ("512mb", 512 << 20), ("2G", 2 << 30), ("2GB", 2 << 30),
    (" 2g ", 2 << 30), ("64K", 64 << 10), ("1.5G", 3 << 29), ("64", 64 << 20), ("0.5", 1 << 19),
    ("64KiB", 64 << 10), ("512mib", 512 << 20), ("2 GB", 2 << 30),
    ("1024B", 1024), ("1048576 b", 1 << 20),                           # a B after no K/M/G is bytes, not MiB
    (4096, 4096)])                                                      # an int is bytes, not MiB
def test_parse_size_units(text, n):
    assert T._parse_size(text) == n


@pytest.mark.parametrize("text,message", [
    ("0", "workspace must be positive, got '0'"), ("0G", "workspace must be positive, got '0G'"),
    (0, "workspace must be positive, got 0"), ("-1G", "workspace must be positive"),
    ("abc", "workspace must be a size such as 512M or 2G"), ("", "workspace must be a size"),
    ("G", "workspace must be a size"), ("2T", "workspace must be a size"), ("nan", "workspace must be a size"),
    ("inf", "workspace must be a size"), ("1e400G", "workspace must be a size"), ("-inf", "workspace must be a size"),
    ("B", "workspace must be a size"), ("5iB", "workspace must be a size"), ("1024BB", "workspace must be a size"),
    ("KB", "workspace must be a size"), ("0B", "workspace must be positive, got '0B'")])
def test_parse_size_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        T._parse_size(text)


def test_main_refuses_infinite_workspace_as_usage_error(tmp_path, capsys):
    """``--workspace inf`` is a usage error (exit 2, argparse's, as in every command) naming the value, not an
    OverflowError traceback."""
    with pytest.raises(SystemExit) as e:
        T.main(["--model", "m", "--out", str(tmp_path / "out"), "--workspace", "inf"])
    assert e.value.code == 2
    assert "workspace must be a size such as 512M or 2G (a plain number is MiB), got 'inf'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_check_run_numbers_bounds():
    ok = dict(workspace="2G", topk=10, max_batch=2048, opt_batch=64, max_steps=200)
    T.check_run_numbers(**ok)
    T.check_run_numbers(**dict(ok, topk=1, max_batch=1, opt_batch=1, max_steps=1))       # every lower bound
    T.check_run_numbers(**dict(ok, opt_batch=2048))                                       # opt == max is inside
    with pytest.raises(ValueError, match=r"opt_batch \(2049\) must be <= max_batch \(2048\)"):
        T.check_run_numbers(**dict(ok, opt_batch=2049))
    with pytest.raises(ValueError, match=r"topk must be an int >= 1, got 2\.5"):
        T.check_run_numbers(**dict(ok, topk=2.5))
    # every bad setting is named in one message
    with pytest.raises(ValueError, match=r"workspace must be positive.*; topk must be .*; max_steps must be") as e:
        T.check_run_numbers(**dict(ok, workspace="0", topk=0, max_steps=-3))
    assert "max_batch" not in str(e.value) and "opt_batch" not in str(e.value)
    with pytest.raises(ValueError, match=r"max_candidates must be an int >= 1, got 0"):
        T.check_run_numbers(**dict(ok, max_candidates=0))


def test_profile_shapes():
    """The engine's optimisation profile per input: the batch [1, opt, max], T [1, 1, max_steps], a --candidates
    graph's C [1, min(64, max), max] (a request sends at least one column; a row of 0s restricts nothing), fixed
    axes as they are."""
    kw = dict(opt_batch=16, max_batch=512, max_steps=100, max_candidates=300)
    assert T.profile_shapes("item_ids", [-1, -1], **kw) == ([1, 1], [16, 1], [512, 100])
    assert T.profile_shapes("candidates", [-1, -1], **kw) == ([1, 1], [16, 64], [512, 300])
    assert T.profile_shapes("candidates", [-1, -1], **dict(kw, max_candidates=20)) == ([1, 1], [16, 20], [512, 20])
    assert T.profile_shapes("ssm_state", [-1, 1, 128, 32], **kw) == ([1, 1, 128, 32], [16, 1, 128, 32],
                                                                    [512, 1, 128, 32])


# ---------------------------------------------------------------------------------------------------- environment
def test_can_build_needs_builder_and_gpu():
    assert T.Environment(tensorrt=object(), gpu="GPU").can_build
    assert not T.Environment(tensorrt=object(), gpu=None).can_build
    assert not T.Environment(tensorrt=None, gpu="GPU").can_build
    assert not T.Environment().can_build


def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_probe_names_builder_and_gpu_missing(monkeypatch, no_gpu):
    for mod in ("tensorrt", "tensorrt_lean", "tensorrt_lean_bindings"):
        monkeypatch.setitem(sys.modules, mod, None)           # `import mod` raises ImportError
    env = T.probe_environment()
    assert env.tensorrt is None and env.lean is None and env.gpu is None and not env.can_build
    assert "tensorrt" in env.tensorrt_error and "Error" in env.tensorrt_error
    assert len(env.missing) == 2, env.missing
    assert env.missing[0].startswith("TensorRT builder + ONNX parser: `import tensorrt` failed (")
    assert "lean runtime" not in env.missing[0]
    assert env.missing[1].startswith("CUDA GPU: torch ") and "reports no CUDA device" in env.missing[1]


def test_probe_runtime_only_tensorrt_and_lean(monkeypatch, no_gpu):
    """A ``tensorrt`` without Builder is the runtime-only package: not a builder; the lean runtime is found by its
    registry (a module without ``get_plugin_registry`` is passed over) and named in the report."""
    monkeypatch.setitem(sys.modules, "tensorrt", _module("tensorrt", __version__="10.99"))
    monkeypatch.setitem(sys.modules, "tensorrt_lean", _module("tensorrt_lean", __version__="0.0"))
    lean = _module("tensorrt_lean_bindings", __version__="10.98", get_plugin_registry=lambda: None)
    monkeypatch.setitem(sys.modules, "tensorrt_lean_bindings", lean)
    env = T.probe_environment()
    assert env.tensorrt is None and "has no Builder (runtime-only package)" in env.tensorrt_error
    assert env.lean is lean and env.lean_version == "10.98"
    assert "the lean runtime 10.98 is installed but cannot build engines" in env.missing[0]


def test_probe_tells_a_broken_lean_runtime_from_an_absent_one(monkeypatch, tmp_path, no_gpu):
    """An installed lean runtime whose import fails (its shared library missing) is reported with its error, not
    as "not installed"; a module that is not there at all leaves no error."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_lean", None)
    monkeypatch.delitem(sys.modules, "tensorrt_lean_bindings", raising=False)
    (tmp_path / "tensorrt_lean_bindings.py").write_text(
        "raise ImportError('libnvinfer_lean.so.11: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    env = T.probe_environment()
    assert env.lean is None
    assert env.lean_error == ("tensorrt_lean_bindings: ImportError: libnvinfer_lean.so.11: cannot open shared "
                              "object file")
    monkeypatch.setitem(sys.modules, "tensorrt_lean_bindings", None)
    assert T.probe_environment().lean_error is None


def test_probe_builder_and_gpu_present(monkeypatch):
    trt = _module("tensorrt", __version__="10.99", Builder=object)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "FakeGPU")
    env = T.probe_environment()
    assert env.tensorrt is trt and env.tensorrt_version == "10.99" and env.gpu == "FakeGPU"
    assert env.can_build and env.missing == []


# ---------------------------------------------------------------------------------------------------- plugin library
class _FakeBuild:
    """Stands in for BP.build: records its calls and returns ``result(build_dir)``; stamps the library it says it
    built with the sources' digest as BP.build does (tests/test_trt_plugins.py tests that BP.build does)."""

    def __init__(self):
        self.calls = []
        self.result = lambda bdir: {"plugins": BP.library_path(bdir), "tensorrt_headers": "fake headers",
                                    "tensorrt_header_version": "10.99"}

    def __call__(self, build_dir=None, **kw):
        self.calls.append((build_dir, kw))
        res = self.result(build_dir)
        if res["plugins"] is not None:
            BP.sources_stamp(res["plugins"]).write_text(BP.plugin_sources_digest() + "\n")
        return res


@pytest.fixture
def fake_build(monkeypatch):
    monkeypatch.delenv("ZOO_TRT_PLUGIN_LIB", raising=False)
    fb = _FakeBuild()
    monkeypatch.setattr(BP, "build", fb)
    return fb


def test_ensure_plugin_library_given_path(tmp_path, fake_build):
    lib = tmp_path / "given.so"
    with pytest.raises(T.TrtError, match=r"plugin library .*given\.so does not exist"):
        T.ensure_plugin_library(str(lib))
    lib.write_bytes(b"x")
    assert T.ensure_plugin_library(str(lib)) == lib
    assert fake_build.calls == []                                  # a given library is never built


def test_ensure_plugin_library_builds_only_when_absent_or_asked(tmp_path, fake_build):
    said = []
    p = T.ensure_plugin_library(None, str(tmp_path), say=said.append)       # absent: built
    assert p == tmp_path / ps.PLUGIN_LIBRARY and len(fake_build.calls) == 1
    assert any("built" in m and "fake headers" in m for m in said), said
    (tmp_path / ps.PLUGIN_LIBRARY).write_bytes(b"x")
    assert T.ensure_plugin_library(None, str(tmp_path), say=said.append) == tmp_path / ps.PLUGIN_LIBRARY
    assert len(fake_build.calls) == 1                              # present: reused
    T.ensure_plugin_library(None, str(tmp_path), rebuild=True, say=said.append)
    assert len(fake_build.calls) == 2                              # rebuild=True: built again


def _plugin_sources(tmp_path, monkeypatch) -> Path:
    """A copy of plugins/ that export.build_plugins (faked) builds from."""
    import shutil

    src = tmp_path / "plugins"
    shutil.copytree(ROOT / "plugins", src, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(BP, "PLUGINS_DIR", src)
    return src


def test_ensure_plugin_library_rebuilds_a_library_older_than_its_sources(tmp_path, monkeypatch, fake_build):
    """A library in the build folder was reused whatever sources it had been built from, while the CPU-emulated check
    ([4b]) rebuilds from the current ones: an engine could get other plugin code than was verified. Now the
    sources' digest is recorded beside each library built, and a changed source (or no record: a library built by
    hand or by an older export.trt) rebuilds it; files outside the build (docs, the emulator, the harness) do not."""
    src = _plugin_sources(tmp_path, monkeypatch)
    bdir = tmp_path / "build"
    lib = bdir / ps.PLUGIN_LIBRARY
    bdir.mkdir()
    lib.write_bytes(b"built by hand")                              # no record of its sources
    said = []
    assert T.ensure_plugin_library(None, str(bdir), say=said.append) == lib and len(fake_build.calls) == 1
    assert f"no record of the sources {ps.PLUGIN_LIBRARY} was built from" in said[0], said
    stamp = bdir / (ps.PLUGIN_LIBRARY + BP.SOURCES_STAMP_SUFFIX)
    assert stamp.read_text().strip() == BP.plugin_sources_digest()
    T.ensure_plugin_library(None, str(bdir), say=said.append)
    assert len(fake_build.calls) == 1                              # current: reused
    for f in ("README.md", "harness.py", "emu/zooCudaEmu.h", "selectiveScanPlugin/README.md"):
        (src / f).write_text((src / f).read_text() + "\n")
        T.ensure_plugin_library(None, str(bdir), say=said.append)
        assert len(fake_build.calls) == 1, f                       # not a source of the library
    n = 1
    for f in ("selectiveScanPlugin/selectiveScanKernel.cu", "common/zooScanPluginBase.h",
              "lruScanPlugin/CMakeLists.txt", "gen_spec_header.py"):
        (src / f).write_text((src / f).read_text() + "\n")
        said.clear()
        T.ensure_plugin_library(None, str(bdir), say=said.append)
        n += 1
        assert len(fake_build.calls) == n, f                       # a changed source: rebuilt
        assert f"the sources in {src} changed since {ps.PLUGIN_LIBRARY} was built" in said[0], said
        T.ensure_plugin_library(None, str(bdir), say=said.append)
        assert len(fake_build.calls) == n, f                       # and current again
    monkeypatch.setattr(BP, "SPEC_PY", tmp_path / "plugin_spec.py")      # the spec the header comes from
    (tmp_path / "plugin_spec.py").write_text("# another spec\n")
    T.ensure_plugin_library(None, str(bdir), say=said.append)
    assert len(fake_build.calls) == n + 1


def test_a_stale_library_is_not_used_when_its_rebuild_fails(tmp_path, monkeypatch, fake_build):
    _plugin_sources(tmp_path, monkeypatch)
    (tmp_path / ps.PLUGIN_LIBRARY).write_bytes(b"stale")
    (tmp_path / (ps.PLUGIN_LIBRARY + BP.SOURCES_STAMP_SUFFIX)).write_text("0" * 64)

    def broken(*a, **k):
        raise BP.BuildError("nvcc not found on PATH (needed to build the plugins)")

    monkeypatch.setattr(BP, "build", broken)
    with pytest.raises(T.TrtError, match=rf"^nvcc not found .* \(the {ps.PLUGIN_LIBRARY} there was not used: it may "
                                         r"hold other plugin code than plugins/ does; .* --plugin-lib\)$"):
        T.ensure_plugin_library(None, str(tmp_path), say=lambda m: None)


def test_ensure_plugin_library_build_failures(tmp_path, monkeypatch, fake_build):
    fake_build.result = lambda bdir: {"plugins": None, "tensorrt_headers": "no TensorRT headers: none given",
                                      "tensorrt_header_version": None}
    with pytest.raises(T.TrtError, match=f"{ps.PLUGIN_LIBRARY} was not built: no TensorRT headers: none given"):
        T.ensure_plugin_library(None, str(tmp_path), say=lambda m: None)

    def broken(*a, **k):
        raise BP.BuildError("cmake --build failed (exit 2)")

    monkeypatch.setattr(BP, "build", broken)
    with pytest.raises(T.TrtError, match=r"cmake --build failed \(exit 2\)"):
        T.ensure_plugin_library(None, str(tmp_path), say=lambda m: None)


# ---------------------------------------------------------------------------------------------------- registry
class _Creator:
    def __init__(self, name, fields):
        self.name, self.plugin_version, self.plugin_namespace = name, ps.PLUGIN_VERSION, ps.PLUGIN_NAMESPACE
        self.field_names = [types.SimpleNamespace(name=f) for f in fields]


class _Registry:
    """get_creator answers only after load_library (like TensorRT's registry before/after loading the library)."""

    def __init__(self, creators, loads=True):
        self.creators, self.loads, self.loaded = creators, loads, []

    def get_creator(self, name, version, namespace):
        if not self.loaded or (version, namespace) != (ps.PLUGIN_VERSION, ps.PLUGIN_NAMESPACE):
            return None
        return next((c for c in self.creators if c.name == name), None)

    def load_library(self, path):
        if not self.loads:
            return None
        self.loaded.append(path)
        return object()


def _fake_trt(creators, loads=True):
    reg = _Registry(creators, loads)
    return types.SimpleNamespace(get_plugin_registry=lambda: reg), reg


def _good_creators():
    return [_Creator(op.op_type, list(op.attributes)) for op in ps.SCAN_OPS.values()]


def test_check_registry_rows_and_single_load(tmp_path):
    trt, reg = _fake_trt(_good_creators())
    rows = T.check_registry(trt, tmp_path / "lib.so")
    assert [(r["op_type"], r["version"], r["namespace"], r["fields"]) for r in rows] == \
        [(op.op_type, ps.PLUGIN_VERSION, ps.PLUGIN_NAMESPACE, list(op.attributes)) for op in ps.SCAN_OPS.values()]
    assert reg.loaded == [str(tmp_path / "lib.so")]
    T.check_registry(trt, tmp_path / "lib.so")
    assert len(reg.loaded) == 1                  # already registered: a second load would register twice


@pytest.mark.parametrize("fields,message", [
    ([], r"SelectiveScan: creator fields \[\] != spec attributes \['delta_softplus'\]"),
    (["delta_softplus", "extra"], r"SelectiveScan: creator fields \['delta_softplus', 'extra'\] != spec"),
    (["softplus"], r"SelectiveScan: creator fields \['softplus'\] != spec")])
def test_check_registry_refuses_field_mismatch(tmp_path, fields, message):
    creators = _good_creators()
    creators[0] = _Creator("SelectiveScan", fields)
    with pytest.raises(T.TrtError, match=message):
        T.check_registry(_fake_trt(creators)[0], tmp_path / "lib.so")


def test_check_registry_refuses_missing_creator_and_failed_load(tmp_path):
    creators = [c for c in _good_creators() if c.name != "LRUScan"]
    with pytest.raises(T.TrtError, match=r"no creator 'LRUScan' v1 in namespace 'zoo'"):
        T.check_registry(_fake_trt(creators)[0], tmp_path / "lib.so")
    with pytest.raises(T.TrtError, match=r"the plugin registry could not load .*lib\.so"):
        T.check_registry(_fake_trt(_good_creators(), loads=False)[0], tmp_path / "lib.so")


# ---------------------------------------------------------------------------------------------------- main()
def _record_run(monkeypatch, code=T.EXIT_MISSING):
    seen = {}

    def run(model_name, out_dir, **kw):
        seen.update(model_name=model_name, out_dir=out_dir, **kw)
        return code, {}

    monkeypatch.setattr(T, "run", run)
    return seen


def test_main_forwards_every_flag(monkeypatch, tmp_path):
    seen = _record_run(monkeypatch, code=T.EXIT_VERIFY_FAILED)
    lib = tmp_path / "L.so"
    lib.write_bytes(b"")
    assert T.main(["--model", "m", "--out", "o", "--fp16", "--workspace", "512M", "--topk", "5", "--max-batch", "100",
                   "--opt-batch", "10", "--max-steps", "30", "--version-compatible", "--plugin-lib", str(lib),
                   "--build-dir", "B", "--quick", "--exclude-seen", "--user-vector", "--exclude-items", "gone.txt",
                   "--no-emulate", "--candidates", "--max-candidates", "300", "--rebuild-plugins"]) == 3
    seen.pop("say")
    seen.pop("say_error")
    assert seen == dict(model_name="m", out_dir="o", fp16=True, workspace="512M", topk=5, max_batch=100, opt_batch=10,
                        max_steps=30, version_compatible=True, plugin_lib=str(lib), build_dir="B", quick=True,
                        exclude_seen=True, user_vector=True, exclude_items="gone.txt", emulate=False,
                        candidates=True, max_candidates=300, rebuild_plugins=True)


def test_main_defaults_are_run_defaults(monkeypatch):
    seen = _record_run(monkeypatch)
    assert T.main(["--model", "m", "--out", "o"]) == T.EXIT_MISSING
    defaults = {k: p.default for k, p in inspect.signature(_RUN).parameters.items()
                if p.default is not inspect.Parameter.empty}
    for k in ("fp16", "workspace", "topk", "max_batch", "opt_batch", "max_steps", "version_compatible", "plugin_lib",
              "build_dir", "quick", "exclude_seen", "user_vector", "exclude_items", "emulate", "candidates",
              "max_candidates", "rebuild_plugins"):
        assert seen[k] == defaults[k], k


# ---------------------------------------------------------------------------------------------------- run()
EARLIER = b"earlier engine"
#: the report of a run that verified and wrote EARLIER (what T.engine_verified reads)
EARLIER_REPORT = {"status": "earlier", "exit_code": 0, "engine": {"bytes": len(EARLIER),
                                                                 "sha256": hashlib.sha256(EARLIER).hexdigest()}}


def _earlier_engine(out, report=EARLIER_REPORT):
    """``out`` holding an engine of an earlier run and its report (by default one that says it was verified)."""
    out.mkdir(exist_ok=True)
    (out / T.ENGINE_FILE).write_bytes(EARLIER)
    if report is not None:
        (out / T.REPORT_FILE).write_text(json.dumps(report))


def _can_build(monkeypatch):
    """TensorRT's builder and a GPU, faked: a run that starts a build."""
    env = T.Environment(tensorrt=types.SimpleNamespace(), tensorrt_version="fake", gpu="FakeGPU")
    monkeypatch.setattr(T, "probe_environment", lambda: env)
    return env


def _failing_export(monkeypatch) -> list:
    """A run that fails after it has touched --out: the model loads (a stand-in named after --model, read by nothing
    before the export), --out is made and the engine there handled, then the ONNX export raises
    ``RuntimeError("cannot export NAME")``. Returns the folders the export was asked to write (each existed then)."""
    from export import onnx as E

    asked = []

    def export_model(model, out_dir, **kw):
        assert Path(out_dir).is_dir()                       # run() made --out before the export
        asked.append(Path(out_dir))
        raise RuntimeError(f"cannot export {model.name}")

    monkeypatch.setattr(T, "_load_model", lambda name: types.SimpleNamespace(
        name=name, uses_timestamps=False, config=types.SimpleNamespace(n_items=101)))
    monkeypatch.setattr(E, "export_model", export_model)
    return asked


class _ProfileChecked:
    """An ONNX Runtime session that records every feed outside an engine's optimisation profile
    (T.profile_shapes), as TensorRT's set_input_shape would refuse it."""

    def __init__(self, graph, spec, **limits):
        from export import verify as V

        self.sess, self.limits, self.outside = V.scores_session(graph), limits, []
        self.dims = {i.name: [d if isinstance(d, int) else -1 for d in i.shape] for i in self.sess.get_inputs()}

    def run(self, names, feeds):
        for n, x in feeds.items():
            lo, _, hi = T.profile_shapes(n, self.dims[n], **self.limits)
            if any(not a <= d <= b for a, d, b in zip(lo, np.shape(x), hi)):
                self.outside.append((n, np.shape(x), hi))
        return self.sess.run(names, feeds)


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
def test_engine_verification_feeds_fit_the_engines_profile(tmp_path, tiny_mamba, quick):
    """The verification export.trt runs on the engine (and the ONNX graph) stays inside the engine's profile: with
    --max-batch 1 --max-steps 5 --candidates --max-candidates 5 it fed batch 2-4 rows, T = 20 primings and 32
    candidate columns, which TensorRT refuses (set_input_shape, unchecked: execution then failed, exit 1)."""
    from export import onnx as E
    from export import verify as V

    limits = dict(max_batch=1, max_steps=5, max_candidates=5, opt_batch=1)
    res = E.export_model(tiny_mamba, tmp_path / "g", verify=False, candidates=True)
    kw = T.engine_verify_kwargs(quick, max_batch=1, max_steps=5, max_candidates=5)
    if not quick:
        kw.update(n_steps=30, topk_cases=1)                 # the sizes that matter here, kept small
    runner = _ProfileChecked(res.graph_path, res.spec, **limits)
    rep = V.verify_export(tiny_mamba, res.graph_path, res.spec, runner=runner, **kw)
    assert rep.ok, rep.table()
    assert runner.outside == []
    wide = _ProfileChecked(res.graph_path, res.spec, **limits)   # negative control: the sizes of before
    V.verify_export(tiny_mamba, res.graph_path, res.spec, runner=wide, prime_len=5, n_steps=2, batch=2,
                    topk_cases=1, topk_prime=20)
    assert {n for n, *_ in wide.outside} == {"item_ids", "candidates", "conv_state", "ssm_state"}


def test_rerun_keeps_what_serving_the_earlier_engine_needs(tmp_path, monkeypatch):
    """previous/ held only the earlier engine and its report; the new export then replaced model.onnx,
    state_spec.json and item_vocab.json, so the earlier engine had lost its state layout and vocabulary, and its
    report named the new files. Now previous/ holds copies of them, and the report names those."""
    from export import onnx as E

    out = tmp_path / "out"
    out.mkdir()
    files = {"model.onnx": b"earlier graph", "state_spec.json": b'{"model_type": "earlier"}',
             "item_vocab.json": b"earlier vocab", T.ENGINE_FILE: EARLIER}
    for n, b in files.items():
        (out / n).write_bytes(b)
    (out / T.REPORT_FILE).write_text(json.dumps({**EARLIER_REPORT, "onnx": {
        "graph": str(out / "model.onnx"), "spec": str(out / "state_spec.json")}, "engine": {
        **EARLIER_REPORT["engine"], "path": str(out / T.ENGINE_FILE)}, "model": str(out / "elsewhere")}))

    asked = _failing_export(monkeypatch)
    _can_build(monkeypatch)
    code, rep = T.run("nope", str(out), quick=True, say=lambda m: None)
    assert code == T.EXIT_ERROR and rep["error"] == "RuntimeError: cannot export nope" and asked == [out]
    prev = out / T.PREVIOUS_DIR
    assert {n: (prev / n).read_bytes() for n in files} == files
    assert not (out / T.ENGINE_FILE).exists() and (out / "state_spec.json").read_bytes() == files["state_spec.json"]
    rep = json.loads((prev / T.REPORT_FILE).read_text())
    assert rep["onnx"] == {"graph": str(prev / "model.onnx"), "spec": str(prev / "state_spec.json")}
    assert rep["engine"]["path"] == str(prev / T.ENGINE_FILE) and rep["model"] == str(out / "elsewhere")
    assert E.SPEC_FILE == "state_spec.json"


def test_main_usage_errors_exit_2_before_any_work(tmp_path, capsys):
    """Bad arguments exit 2, argparse's status as in every command (export.trt used to exit 1 for them, its 2 being
    "verification failed"), and paths that cannot be used (a file as --out or --build-dir, a place under a file, a
    --plugin-lib that does not exist, a model checkpoint as --out) are refused before the export, not as a traceback
    or an error after it."""
    (tmp_path / "afile").write_text("")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    for args, message in ((["--candidates", "--max-candidates", "0"], "max_candidates must be an int >= 1"),
                          (["--max-candidates", "300"], "--max-candidates needs --candidates"),   # was ignored
                          (["--opt-batch", "9", "--max-batch", "8"], "opt_batch"),
                          (["--bogus"], "unrecognized arguments: --bogus"),
                          (["--out", str(tmp_path / "afile")], "is a file, not a folder"),
                          (["--out", str(tmp_path / "afile" / "x")], "is a file, not a folder"),
                          (["--build-dir", str(tmp_path / "afile")], "--build-dir"),
                          (["--plugin-lib", str(tmp_path / "none.so")],            # found after the export before
                           f"--plugin-lib {tmp_path / 'none.so'}: no such file (give a built {ps.PLUGIN_LIBRARY}"),
                          (["--out", str(tmp_path / "ckpt")],                      # its item_vocab.json was replaced
                           f"--out {tmp_path / 'ckpt'} holds a model checkpoint (config.json): the export would "
                           "replace or remove the model's item_vocab.json")):
        argv = ["--model", "nope", "--out", str(tmp_path / "o"), *args]
        with pytest.raises(SystemExit) as e:
            T.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and "usage: python -m export.trt" in err, (args, err)
    assert not (tmp_path / "o").exists() and os.listdir(tmp_path / "ckpt") == ["config.json"]
    with pytest.raises(ValueError, match="holds a model checkpoint"):            # run() refuses it too
        T.run("nope", str(tmp_path / "ckpt"))


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_run_export_failure_exit_1_keeps_earlier_engine(tmp_path, monkeypatch, fp16):
    _failing_export(monkeypatch)
    _can_build(monkeypatch)
    out = tmp_path / "out"
    _earlier_engine(out)
    said = []
    code, rep = T.run("nope", str(out), fp16=fp16, quick=True, max_steps=5, max_batch=8, opt_batch=8,
                      say=said.append)
    precision = "fp16" if fp16 else "fp32"
    assert code == T.EXIT_ERROR == 1 and rep["status"] == "ONNX export failed"
    assert rep["error"] == "RuntimeError: cannot export nope" and "ERROR: RuntimeError: cannot export nope" in \
        "\n".join(said)
    assert rep["precision"] == precision and rep["tolerances"] == T.TOLERANCES[precision]
    assert rep["verify_kwargs"] == dict(prime_len=5, n_steps=20, batch=2, topk_cases=8,   # quick, capped by the limits
                                        topk_prime=5)
    assert rep["plugin_spec"] == {"namespace": ps.PLUGIN_NAMESPACE, "version": ps.PLUGIN_VERSION,
                                  "ops": list(ps.SCAN_OPS)}
    assert json.loads((out / T.REPORT_FILE).read_text()) == json.loads(json.dumps(rep, default=str))
    assert not (out / T.ENGINE_FILE).exists()
    assert (out / T.PREVIOUS_DIR / T.ENGINE_FILE).read_bytes() == EARLIER
    assert json.loads((out / T.PREVIOUS_DIR / T.REPORT_FILE).read_text()) == EARLIER_REPORT


def _files(folder: Path) -> dict:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("builder", [True, False], ids=["builder+gpu", "no-builder"])
@pytest.mark.parametrize("engine,report", [
    (b"\x8f\x02" * 50, None),                                          # cut short before any report was written
    (b"\x8f\x02" * 50, {"status": "ONNX graph verification failed", "exit_code": 2}),     # another run's report
    (EARLIER[:5], EARLIER_REPORT),                                     # the verified engine, cut short
    (EARLIER.upper(), EARLIER_REPORT),                                 # another engine of the verified one's size
    (EARLIER, "{not json"),
], ids=["no-report", "failed-run", "cut-short", "other-bytes", "not-json"])
def test_an_engine_no_report_says_was_verified_is_set_aside(tmp_path, monkeypatch, engine, report, builder):
    """Every run moved whatever model.engine was in --out into previous/, deleting the verified engine kept there:
    an engine cut short by a Ctrl-C or a full disk (no report: the earlier one had moved away) was promoted to
    "previous" by the next run. Only an engine that out's report says was verified and written (exit code 0, its
    size and sha256) moves to previous/ now; any other is set aside as model.engine.unverified, with or without
    TensorRT, and previous/ keeps the verified set."""
    out = tmp_path / "out"
    prev = out / T.PREVIOUS_DIR
    prev.mkdir(parents=True)
    (prev / T.ENGINE_FILE).write_bytes(b"verified engine E1")
    (prev / T.REPORT_FILE).write_text(json.dumps({"status": "engine verified and written", "exit_code": 0}))
    (prev / "state_spec.json").write_text('{"model_type": "E1"}')
    kept = _files(prev)
    (out / T.ENGINE_FILE).write_bytes(engine)
    if report is not None:
        (out / T.REPORT_FILE).write_text(report if isinstance(report, str) else json.dumps(report))
    assert not T.engine_verified(out)
    if builder:
        _can_build(monkeypatch)
    else:
        monkeypatch.setattr(T, "probe_environment", lambda: T.Environment(**_NO_TRT))
    _failing_export(monkeypatch)
    said = []
    code, rep = T.run("nope", str(out), quick=True, say=said.append)
    assert code == T.EXIT_ERROR and rep["status"] == "ONNX export failed"
    assert _files(prev) == kept
    assert (out / T.UNVERIFIED_ENGINE_FILE).read_bytes() == engine and not (out / T.ENGINE_FILE).exists()
    assert f"set the engine in {out} aside as {T.UNVERIFIED_ENGINE_FILE}: no report in {out} says it was verified" \
        in "\n".join(said)


def test_engine_verified_by_an_older_report_is_by_its_size(tmp_path):
    """Reports written before the engine's sha256 was recorded say only its size: an engine of that size is taken as
    the verified one, any other size not."""
    _earlier_engine(tmp_path, {"exit_code": 0, "engine": {"bytes": len(EARLIER)}})
    assert T.engine_verified(tmp_path)
    (tmp_path / T.ENGINE_FILE).write_bytes(EARLIER[:-1])
    assert not T.engine_verified(tmp_path)


def test_a_run_that_cannot_build_leaves_a_verified_engine_where_it_is(tmp_path, monkeypatch, capsys):
    """Without TensorRT or a GPU, a run demoted the verified engine in --out to previous/ (deleting the set there)
    and replaced its graph, then could build nothing. The probe comes first now: with a verified engine in --out
    such a run changes nothing there (not even its report) and says why, exit 1, before loading the model."""
    monkeypatch.setattr(T, "probe_environment", lambda: T.Environment(**_NO_TRT))
    loaded = []
    monkeypatch.setattr(T, "_load_model", lambda name: loaded.append(name))
    out = tmp_path / "out"
    _earlier_engine(out)
    (out / "model.onnx").write_bytes(b"the graph the engine was built from")
    (out / T.PREVIOUS_DIR).mkdir()
    (out / T.PREVIOUS_DIR / T.ENGINE_FILE).write_bytes(b"the engine before")
    before = _files(out)
    said = []
    code, rep = T.run("m", str(out), quick=True, say=said.append)
    text = "\n".join(said)
    assert code == T.EXIT_ERROR and rep["status"] == (f"TensorRT/GPU missing and {out} holds a verified engine: "
                                                      "nothing exported"), text
    assert f"ERROR: {out} holds a verified engine (model.engine) and this machine cannot build one (missing: " \
           "TensorRT builder: fake; CUDA GPU: fake): the ONNX export would replace" in text
    assert f"nothing written in {out}" in text and rep["missing"] == _NO_TRT["missing"]
    assert _files(out) == before and loaded == []
    assert T.main(["--model", "m", "--out", str(out), "--quick"]) == T.EXIT_ERROR
    printed = capsys.readouterr()                       # the error and the verdict on stderr, not only stdout
    assert "ERROR: " in printed.err and "holds a verified engine" in printed.err and "RESULT: " in printed.err
    assert "ERROR" not in printed.out and "RESULT" not in printed.out
    assert _files(out) == before and loaded == []


def _state(folder: Path) -> dict:
    """``folder`` and everything under it: relative path -> (bytes, or None for a folder; mtime in ns)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in [folder, *sorted(folder.rglob("*"))]}


def _cannot_load(model: Path) -> str:
    """Why the zoo's loader refuses ``model`` (its own message)."""
    with pytest.raises((OSError, ValueError)) as e:
        T._load_model(str(model))
    return str(e.value)


def test_a_model_that_cannot_be_loaded_does_not_create_out(tmp_path, capsys):
    """A mistyped --model made --out (and its parents) and wrote a failed run's trt_report.json there. The model is
    loaded before --out is touched now: exit 1, one ERROR line on stderr naming --model and why, a RESULT line
    saying nothing was written, and no --out."""
    model, out = tmp_path / "mamba4rec-ml1n", tmp_path / "new" / "out"
    code = T.main(["--model", str(model), "--out", str(out), "--quick"])
    printed = capsys.readouterr()
    assert code == T.EXIT_ERROR == 1, printed.out + printed.err
    assert not (tmp_path / "new").exists()
    assert [line for line in printed.err.splitlines() if "ERROR" in line] == [
        f"ERROR: --model {model}: {_cannot_load(model)}"]
    assert f"RESULT: --model {model} could not be loaded (exit code 1); nothing written in {out}" in printed.err
    assert "ERROR" not in printed.out and "RESULT" not in printed.out and "[1/4]" not in printed.out


@pytest.mark.parametrize("verified", [True, False], ids=["verified+builder", "unverified+no-builder"])
def test_a_model_that_cannot_be_loaded_leaves_out_as_it_was(tmp_path, monkeypatch, capsys, verified):
    """With an engine and its report in --out, a mistyped --model moved a verified engine to previous/ (on a machine
    that can build) or set another aside as model.engine.unverified, and replaced the report, before the load failed.
    Now every file and folder there keeps its bytes and its mtime; the run's report is returned, not written."""
    if verified:
        _can_build(monkeypatch)
    else:
        monkeypatch.setattr(T, "probe_environment", lambda: T.Environment(**_NO_TRT))
    out = tmp_path / "out"
    _earlier_engine(out, EARLIER_REPORT if verified else {"status": "engine verification FAILED", "exit_code": 3})
    (out / "model.onnx").write_bytes(b"the graph the engine was built from")
    (out / T.PREVIOUS_DIR).mkdir()
    (out / T.PREVIOUS_DIR / T.ENGINE_FILE).write_bytes(b"the engine before")
    assert T.engine_verified(out) == verified
    for p in [*sorted(out.rglob("*"), reverse=True), out]:      # an hour ago: a rewrite of the same bytes shows too
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns - 3600 * 10**9))
    before = _state(out)
    model = tmp_path / "no-such-model"
    code = T.main(["--model", str(model), "--out", str(out), "--quick"])
    printed = capsys.readouterr()
    assert code == T.EXIT_ERROR, printed.out + printed.err
    assert _state(out) == before
    assert f"ERROR: --model {model}: {_cannot_load(model)}" in printed.err.splitlines()
    assert f"nothing written in {out}" in printed.err and "RESULT" not in printed.out
    said = []
    code, rep = T.run(str(model), str(out), quick=True, say=said.append)
    assert code == T.EXIT_ERROR and rep["exit_code"] == code and rep["status"] == f"--model {model} could not be loaded"
    assert rep["error"].startswith(f"--model {model}: ") and _state(out) == before, "\n".join(said)


def test_the_report_is_written_whole(tmp_path, monkeypatch):
    """trt_report.json, the record that its engine was verified, was written in place: a full disk or a kill left it
    cut short. It is written beside and renamed into place now: the report there stays as it was."""
    _failing_export(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    (out / T.REPORT_FILE).write_text(json.dumps({"status": "ONNX graph verification failed", "exit_code": 2}))
    before = _files(out)
    full_disk(monkeypatch, T.REPORT_FILE)
    with pytest.raises(OSError, match="No space left on device"):
        T.run("nope", str(out), quick=True, say=lambda m: None)
    monkeypatch.undo()
    assert _files(out) == before


def _strict(text: str):
    """``text`` parsed as strict JSON: the ``NaN``/``Infinity`` Python's json writes (and reads) by default are an
    error, as in jq and JavaScript's JSON.parse."""
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_a_failed_verifications_non_finite_errors_are_strict_json_strings(tmp_path, monkeypatch):
    """A verification that fails on a graph masking another item set (export.verify._errs: an infinite error) or on a
    NaN score (_worst: NaN) is what a script reads trt_report.json for (exit 3), and the report said
    ``"max_abs_err": Infinity`` -- not JSON (jq, JSON.parse refuse it). The report is strict JSON now, a non-finite
    number written as the string "inf", "-inf" or "nan" (float() reads them back); a finite one stays a number. An
    earlier report holding ``Infinity`` (an older zoo's) is strict once kept in previous/ too."""
    from export import onnx as E
    from export import verify as V

    inf, nan = float("inf"), float("nan")
    report = V.VerifyReport(kind="step", model_type="mamba4rec", cases=[
        V.CaseResult("masked", inf, inf, 1.0, 4, ok=False, reason="masks another item set"),
        V.CaseResult("nan", nan, nan, 0.5, 4, state_err=-inf, ok=False, reason="non-finite score"),
        V.CaseResult("fine", 1e-6, 2e-6, 1.0, 4)])

    def export_model(model, out_dir, **kw):
        raise E.VerificationError("verification failed", report)

    monkeypatch.setattr(T, "_load_model", lambda name: types.SimpleNamespace(
        name=name, uses_timestamps=False, config=types.SimpleNamespace(n_items=101)))
    monkeypatch.setattr(E, "export_model", export_model)
    out = tmp_path / "out"
    code, _ = T.run("nope", str(out), quick=True, say=lambda m: None)
    assert code == T.EXIT_VERIFY_FAILED
    rep = _strict((out / T.REPORT_FILE).read_text())
    v = rep["onnx_verification"]
    assert (v["max_abs_err"], v["max_rel_err"], v["state_err"], v["passed"]) == ("nan", "nan", "-inf", False)
    assert [(c["max_abs_err"], c["state_err"]) for c in v["cases"]] == [("inf", None), ("nan", "-inf"), (1e-6, None)]
    assert float(v["cases"][0]["max_rel_err"]) == inf and v["topk_agreement"] == 0.5
    strings = json.dumps({"x": ["inf", "-inf", "nan", 1.5]}, indent=2) + "\n"
    assert T.report_json({"x": (inf, -inf, nan, 1.5)}) == strings
    # an earlier verified engine whose report an older zoo wrote with Infinity: kept in previous/, strict there
    out2 = tmp_path / "out2"
    _earlier_engine(out2, {**EARLIER_REPORT, "onnx": {"verification": {"max_abs_err": inf}}})
    assert "Infinity" in (out2 / T.REPORT_FILE).read_text()
    _can_build(monkeypatch)
    code, _ = T.run("nope", str(out2), quick=True, say=lambda m: None)
    assert code == T.EXIT_VERIFY_FAILED
    kept = _strict((out2 / T.PREVIOUS_DIR / T.REPORT_FILE).read_text())
    assert kept["onnx"]["verification"]["max_abs_err"] == "inf" and kept["exit_code"] == 0


@pytest.fixture(scope="module")
def tiny_mamba():
    from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel

    torch.manual_seed(0)
    return Mamba4RecModel(Mamba4RecConfig(n_items=30, hidden_size=8, num_layers=1, d_state=4)).eval()


def test_a_topk_or_exclude_items_the_model_refuses_stops_before_out_is_touched(tmp_path, monkeypatch, capsys,
                                                                                tiny_mamba):
    """A --topk above the model's catalogue went through the export (exit 1 after --out was made and the engine
    there handled) where export.onnx / zoo.evaluate --ks give a usage error; an --exclude-items naming an unknown id
    was found there too. Both are now found once the model is loaded, before --out is touched: 2 with the usage for
    the --topk, naming the catalogue; 1 for the file, naming the id; --out not created."""
    monkeypatch.setattr(T, "_load_model", lambda name: tiny_mamba)
    catalogue = int(tiny_mamba.config.n_items) - 1
    out = tmp_path / "new" / "out"
    with pytest.raises(SystemExit) as e:
        T.main(["--model", "tiny", "--out", str(out), "--quick", "--topk", str(catalogue + 1)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "usage:" in err, err
    assert f"--topk {catalogue + 1}: the model's catalogue has {catalogue} items" in err, err
    assert not (tmp_path / "new").exists()
    with pytest.raises(T.SettingError, match=rf"--topk {catalogue + 1}"):        # the API: a ValueError
        T.run("tiny", str(out), model=tiny_mamba, quick=True, topk=catalogue + 1)
    assert not (tmp_path / "new").exists()
    ids = tmp_path / "ids.txt"
    ids.write_text("999999999\n", encoding="utf-8")
    code = T.main(["--model", "tiny", "--out", str(out), "--quick", "--exclude-items", str(ids)])
    printed = capsys.readouterr()
    assert code == T.EXIT_ERROR == 1, printed.out + printed.err
    assert "999999999" in printed.err and "--exclude-items" in printed.err, printed.err
    assert f"nothing written in {out}" in printed.err and not (tmp_path / "new").exists()


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("builder", [False, True], ids=["no-builder", "builder+gpu"])
def test_run_plugin_library_failure(tmp_path, monkeypatch, tiny_mamba, builder):
    """A plugin library that cannot be had: without builder/GPU it is one more missing item of the exit-4 report;
    with builder and GPU (faked) it is an error (exit 1), never 'TensorRT/GPU missing' -- found before the export,
    and before the output folder is touched (it was found after the export and its verification, the engine already
    moved out of the folder)."""
    env = (T.Environment(tensorrt=types.SimpleNamespace(), tensorrt_version="fake", gpu="FakeGPU") if builder else
           T.Environment(tensorrt_error="ImportError: fake", gpu_error="fake: no GPU",
                         missing=["TensorRT builder: fake", "CUDA GPU: fake"]))
    monkeypatch.setattr(T, "probe_environment", lambda: env)
    missing_lib = tmp_path / "missing" / ps.PLUGIN_LIBRARY
    said = []
    code, rep = T.run("tiny", str(tmp_path / "out"), model=tiny_mamba, quick=True, plugin_lib=str(missing_lib),
                      say=said.append)
    text = "\n".join(said)
    assert rep["plugin_error"] == f"plugin library {missing_lib} does not exist"
    assert "plugin_library" not in rep and "registry" not in rep and "engine" not in rep
    assert not (tmp_path / "out" / T.ENGINE_FILE).exists()
    if builder:
        assert code == T.EXIT_ERROR and rep["status"] == "plugin library unavailable", text
        assert "missing" not in rep and "onnx" not in rep and "[1/4]" not in text      # stopped before the export
        assert f"ERROR: --plugin-lib {missing_lib}: no such file" in text
        assert not (tmp_path / "out").exists()
    else:
        assert rep["onnx"]["verification"]["passed"] is True, text
        assert code == T.EXIT_MISSING and rep["status"].startswith("TensorRT/GPU missing"), text
        assert rep["missing"] == ["TensorRT builder: fake", "CUDA GPU: fake",
                                  f"{ps.PLUGIN_LIBRARY}: plugin library {missing_lib} does not exist"]
        assert "[3/4] engine build: NOT POSSIBLE here; missing:" in text
        # the plugins' code was still checked on the CPU emulator (or skipped, saying why)
        emu = rep["emulated_plugins"]
        assert ("skipped" in emu and "[4b]" in text) or (emu["ok"] is True and emu["plugin_calls"]["SelectiveScan"] > 0
                                                         and "plugins verified on the CPU emulator" in rep["status"])


# ---------------------------------------------------------------------------------------------------- one run per --out
def _hold(folder: Path):
    """Another live run holding ``folder``'s lock (export.fsutil.output_folder_lock), in a child process; kill it
    (SIGKILL: the kernel drops the lock) when done."""
    import subprocess

    child = ("import sys, time\nfrom export.fsutil import output_folder_lock\n"
             "with output_folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-c", child, str(folder)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_run_into_a_held_out_stops_at_once(tmp_path, monkeypatch, capsys):
    """Two export.trt runs into one --out both went ahead, each exporting its graph, moving the other's engine and
    writing its report there. --out is locked for the whole run now (export.onnx's export is told it is held, not
    locked twice): a second run while another holds it stops at once -- exit 1, an ERROR line naming --out and the
    folder, before the probe and the model load -- and every file there keeps its bytes and mtime; once the holder
    is gone a run goes ahead."""
    out = tmp_path / "out"
    _earlier_engine(out)
    (out / "model.onnx").write_bytes(b"the graph the engine was built from")
    before = _state(out)
    probed, loaded = [], []
    monkeypatch.setattr(T, "probe_environment", lambda: probed.append(1) or T.Environment(**_NO_TRT))
    monkeypatch.setattr(T, "_load_model", lambda name: loaded.append(name))
    holder = _hold(out)
    try:
        assert T.main(["--model", "m", "--out", str(out), "--quick"]) == T.EXIT_ERROR == 1
        printed = capsys.readouterr()
        assert [line for line in printed.err.splitlines() if "ERROR" in line] == [
            f"ERROR: --out {out}: another run is writing into it now (it holds the folder's lock); wait for it to "
            "end, or give another folder"]
        assert f"RESULT: --out is held by another run (exit code 1); nothing written in {out}" in printed.err
        assert probed == [] and loaded == [] and _state(out) == before
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    monkeypatch.undo()
    asked = _failing_export(monkeypatch)
    _can_build(monkeypatch)
    code, rep = T.run("m", str(out), quick=True, say=lambda m: None)
    assert code == T.EXIT_ERROR and rep["status"] == "ONNX export failed" and asked == [out]
    assert (out / T.PREVIOUS_DIR / T.ENGINE_FILE).read_bytes() == EARLIER


@pytest.mark.usefixtures("one_thread")
def test_an_earlier_report_leaves_out_as_the_new_graph_comes_in(tmp_path, monkeypatch, tiny_mamba):
    """A run interrupted after its ONNX export (no engine in --out: a CPU machine, or an earlier run that built none)
    left the new graph beside the earlier run's trt_report.json, which named the other model and said its graph was
    verified. The earlier report now leaves --out as the new graph moves in (with the earlier spec); a run
    interrupted before that (during the export's verification) leaves the folder as it was, report included."""
    from export import onnx as E
    from export import verify as V
    from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel

    out = tmp_path / "out"
    other = Mamba4RecModel(Mamba4RecConfig(n_items=20, hidden_size=8, num_layers=1, d_state=4)).eval()
    E.export_model(other, out, verify=False)
    earlier = {"model": "other", "exit_code": 4, "status": "TensorRT/GPU missing: ONNX verified, engine NOT built",
               "onnx": {"graph": str(out / "model.onnx"), "spec": str(out / "state_spec.json")}}
    (out / T.REPORT_FILE).write_text(json.dumps(earlier))
    before = _files(out)
    monkeypatch.setattr(T, "probe_environment", lambda: T.Environment(**_NO_TRT))

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(V, "verify_export", interrupted)             # Ctrl-C while step 1 verifies the graph
    with pytest.raises(KeyboardInterrupt):
        T.run("tiny", str(out), model=tiny_mamba, quick=True, say=lambda m: None)
    assert _files(out) == before
    monkeypatch.undo()
    monkeypatch.setattr(T, "probe_environment", lambda: T.Environment(**_NO_TRT))
    monkeypatch.setattr(T, "ensure_plugin_library", interrupted)     # Ctrl-C right after step 1, at step 2
    with pytest.raises(KeyboardInterrupt):
        T.run("tiny", str(out), model=tiny_mamba, quick=True, say=lambda m: None)
    assert json.loads((out / "state_spec.json").read_text())["n_items"] == 30       # the new graph is in
    assert (out / "model.onnx").read_bytes() != before["model.onnx"]
    assert not (out / T.REPORT_FILE).exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


# ---------------------------------------------------------------------------------------------------- fp16 graph
@pytest.mark.usefixtures("one_thread")
def test_to_fp16_graph_converts_internals_keeps_io(tiny_mamba):
    import onnx
    from onnx import TensorProto

    E = pytest.importorskip("export.onnx")
    mp, spec = E.trace_graph(tiny_mamba, "step", 5)
    m16 = onnx.load_from_string(T.to_fp16_graph(mp.SerializeToString(), spec))
    io = lambda m: [(v.name, v.type.tensor_type.elem_type) for v in (*m.graph.input, *m.graph.output)]  # noqa: E731
    assert io(m16) == io(mp)                                                   # graph I/O types unchanged
    assert any(i.data_type == TensorProto.FLOAT16 for i in m16.graph.initializer)       # fp16 weights
    assert any(n.op_type == "Cast" for n in m16.graph.node)
    scan = [n.op_type for n in m16.graph.node if n.domain == ps.ONNX_DOMAIN]
    assert scan == [n.op_type for n in mp.graph.node if n.domain == ps.ONNX_DOMAIN] and scan


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_engine_is_verified_under_its_own_precision(tmp_path, monkeypatch, tiny_mamba, fp16):
    """The engine's verification was run without the precision, so it read the exported graph's spec, which says
    fp32 (the fp16 conversion comes after the export): an fp16 engine was judged without export.verify's fp16 score
    error of the score scale and reported as fp32. Builder and GPU faked; ONNX Runtime on the graph handed to the
    builder stands in for the engine."""
    from export import verify as V

    env = T.Environment(tensorrt=types.SimpleNamespace(), tensorrt_version="fake", gpu="FakeGPU")
    monkeypatch.setattr(T, "probe_environment", lambda: env)
    monkeypatch.setattr(T, "check_registry", lambda trt, lib: [])
    built = {}

    def build_engine(trt, graph, spec, lib, **kw):
        built.update(graph=graph, **kw)
        return T.EngineBuild(engine=None, serialized=b"engine", n_plugin_layers=1, n_scan_nodes=1, seconds=0.0)

    monkeypatch.setattr(T, "build_engine", build_engine)
    monkeypatch.setattr(T, "TrtRunner", lambda trt, engine: V.ort_session(built["graph"]))
    (tmp_path / "lib.so").write_bytes(b"x")
    said = []
    code, rep = T.run("tiny", str(tmp_path / "out"), model=tiny_mamba, quick=True, fp16=fp16,
                      plugin_lib=str(tmp_path / "lib.so"), say=said.append)
    text = "\n".join(said)
    precision = "fp16" if fp16 else "fp32"
    assert code == T.EXIT_OK and built["precision"] == precision, text
    ev = rep["engine_verification"]
    assert ev["precision"] == precision and ev["passed"] is True
    row = {**V.tolerances(precision), **T.TOLERANCES[precision]}        # the engine's row over export.verify's
    assert {k: ev[k] for k in row} == row
    assert ev["score_rtol"] == (V.FP16_SCORE_RTOL if fp16 else None)
    assert f"verification (step, mamba4rec): PASSED [{precision}: " in text.split("[4/4]", 1)[1]
    assert ("score error <= 0.01 of the score scale" in text.split("[4/4]", 1)[1]) == fp16


@pytest.mark.usefixtures("one_thread")
def test_the_engine_is_written_whole_and_checked_by_its_digest(tmp_path, monkeypatch, tiny_mamba):
    """The engine (hundreds of MB) was written in place: a Ctrl-C or a full disk left a truncated model.engine, which
    the next run promoted to previous/. It is written in a stage and renamed into place now: a full disk leaves no
    engine (exit 1, the report says so; the earlier verified engine stays in previous/), and a written engine's report
    records its sha256, by which the next run knows it as verified and keeps it in previous/. Builder and GPU faked;
    ONNX Runtime on the graph handed to the builder stands in for the engine."""
    from export import verify as V

    _can_build(monkeypatch)
    monkeypatch.setattr(T, "check_registry", lambda trt, lib: [])
    built = {}

    def build_engine(trt, graph, spec, lib, **kw):
        built.update(graph=graph)
        return T.EngineBuild(engine=None, serialized=b"engine %d" % len(built), n_plugin_layers=1, n_scan_nodes=1,
                             seconds=0.0)

    monkeypatch.setattr(T, "build_engine", build_engine)
    monkeypatch.setattr(T, "TrtRunner", lambda trt, engine: V.ort_session(built["graph"]))
    (tmp_path / "lib.so").write_bytes(b"x")
    out = tmp_path / "out"
    _earlier_engine(out)
    kw = dict(model=tiny_mamba, quick=True, plugin_lib=str(tmp_path / "lib.so"), say=lambda m: None)
    with monkeypatch.context() as m:
        full_disk(m, T.ENGINE_FILE)
        code, rep = T.run("tiny", str(out), **kw)
    assert code == T.EXIT_ERROR and rep["status"] == "engine verified but NOT written (it could not be written)"
    assert rep["engine_verification"]["passed"] is True and "No space left on device" in rep["error"]
    assert not (out / T.ENGINE_FILE).exists() and not [p for p in out.iterdir() if p.name.startswith(".")]
    assert json.loads((out / T.REPORT_FILE).read_text())["exit_code"] == T.EXIT_ERROR
    assert (out / T.PREVIOUS_DIR / T.ENGINE_FILE).read_bytes() == EARLIER
    code, rep = T.run("tiny", str(out), **kw)
    assert code == T.EXIT_OK and (out / T.ENGINE_FILE).read_bytes() == b"engine 1"
    assert rep["engine"]["sha256"] == hashlib.sha256(b"engine 1").hexdigest() and T.engine_verified(out)
    assert (out / T.PREVIOUS_DIR / T.ENGINE_FILE).read_bytes() == EARLIER       # out held no engine: kept
    built.clear()
    code, rep = T.run("tiny", str(out), **kw)                   # the engine just written is the one kept now
    assert code == T.EXIT_OK and (out / T.PREVIOUS_DIR / T.ENGINE_FILE).read_bytes() == b"engine 1"
    assert json.loads((out / T.PREVIOUS_DIR / T.REPORT_FILE).read_text())["engine"]["path"] == str(
        out / T.PREVIOUS_DIR / T.ENGINE_FILE)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------------------------------- [4b] in a child
_NO_TRT = dict(tensorrt_error="ImportError: fake", gpu_error="fake: no GPU", missing=["TensorRT builder: fake",
                                                                                     "CUDA GPU: fake"])


def _emulated_plugin_library(build_dir, **kw):
    """The emulated plugin library (``kw`` as for BP.build_emulated), or a skip where it cannot be built here."""
    if BP._cxx() is None:
        pytest.skip("no C++ compiler: the emulated plugin library cannot be built")
    try:
        return BP.build_emulated(build_dir, plugins=True, **kw)
    except BP.BuildError as e:
        pytest.skip(f"the emulated plugin library cannot be built here: {str(e).splitlines()[0]}")


@pytest.mark.usefixtures("one_thread")
def test_run_emulated_check_runs_in_a_child_and_passes(tmp_path, monkeypatch, tiny_mamba):
    """[4b] runs the graph in a child process (this one keeps the model and the verifier): a correct plugin passes
    (exit 4, "plugins verified on the CPU emulator"), the progress lines come as the cases finish, and the child has
    exited cleanly once the check is over."""
    from export import emulated_plugins as EP

    lib = _emulated_plugin_library(tmp_path / "build")
    monkeypatch.setattr(BP, "build_emulated", lambda *a, **k: lib)
    monkeypatch.setattr(T, "probe_environment", lambda: T.Environment(**_NO_TRT))
    made = []

    class Recording(EP.IsolatedPluginRunner):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(EP, "IsolatedPluginRunner", Recording)
    said = []
    code, rep = T.run("tiny", str(tmp_path / "out"), model=tiny_mamba, quick=True,
                      plugin_lib=str(tmp_path / "none.so"), say=said.append)
    text = "\n".join(said)
    assert code == T.EXIT_MISSING, text
    assert rep["status"] == ("TensorRT/GPU missing: ONNX verified, plugins verified on the CPU emulator, engine NOT "
                             "built")
    emu = rep["emulated_plugins"]
    assert emu["ok"] is True and emu["library"] == str(lib) and emu["plugin_calls"]["SelectiveScan"] > 0
    (child,) = made
    assert child.proc.pid != os.getpid() and child.proc.returncode == 0          # its own process, ended cleanly
    assert {k: v for k, v in child.calls.items() if v} == emu["plugin_calls"]
    after = text.split("[4b]", 1)[1]
    assert "random/prime+steps done" in after and "plugin runs: SelectiveScan x" in after


@pytest.mark.usefixtures("one_thread")
def test_emulated_check_sizes_follow_quick_and_max_steps(tmp_path, monkeypatch, tiny_mamba):
    """[4b] verifies with EMULATED_VERIFY (the engine verification's priming and steps) or, with --quick,
    EMULATED_VERIFY_QUICK; its priming never exceeds --max-steps (the engine's profile)."""
    lib = _emulated_plugin_library(tmp_path / "build")
    monkeypatch.setattr(BP, "build_emulated", lambda *a, **k: lib)
    monkeypatch.setattr(T, "probe_environment", lambda: T.Environment(**_NO_TRT))
    assert (T.EMULATED_VERIFY["prime_len"], T.EMULATED_VERIFY["n_steps"]) == (200, 500)
    monkeypatch.setattr(T, "EMULATED_VERIFY", dict(prime_len=12, n_steps=3, batch=2, topk_cases=8))
    monkeypatch.setattr(T, "EMULATED_VERIFY_QUICK", dict(prime_len=6, n_steps=2, batch=2, topk_cases=4))
    for quick, max_steps, want in ((False, 200, 12), (False, 5, 5), (True, 200, 6)):
        code, rep = T.run("tiny", str(tmp_path / f"out{quick}{max_steps}"), model=tiny_mamba, quick=quick,
                          max_steps=max_steps, max_batch=8, opt_batch=8, plugin_lib=str(tmp_path / "none.so"),
                          say=lambda m: None)
        kw = rep["emulated_plugins"]["verify_kwargs"]
        assert code == T.EXIT_MISSING and kw["prime_len"] == want and kw["n_steps"] == (2 if quick else 3), kw


@pytest.mark.usefixtures("one_thread")
def test_run_emulated_check_of_a_candidates_graph(tmp_path, monkeypatch, tiny_mamba):
    """export.trt --candidates: the graph takes candidates [B, C]; its ONNX verification and the [4b] check with the
    plugins' code feed fresh candidate lists, and both pass."""
    lib = _emulated_plugin_library(tmp_path / "build")
    monkeypatch.setattr(BP, "build_emulated", lambda *a, **k: lib)
    monkeypatch.setattr(T, "probe_environment", lambda: T.Environment(**_NO_TRT))
    said = []
    code, rep = T.run("tiny", str(tmp_path / "out"), model=tiny_mamba, quick=True, candidates=True,
                      plugin_lib=str(tmp_path / "none.so"), say=said.append)
    assert code == T.EXIT_MISSING and rep["emulated_plugins"]["ok"] is True, "\n".join(said)
    spec = json.loads((tmp_path / "out" / "state_spec.json").read_text())
    assert spec["candidates"] is True and spec["inputs"][-1]["name"] == "candidates"


@pytest.mark.usefixtures("one_thread")
def _mutant_plugin_run(tmp_path, monkeypatch, file: str, old: str, new: str, name: str) -> Path:
    """export.trt's [4b] check set up with a mutant plugin library (``file`` of plugins/selectiveScanPlugin/ with
    ``old`` replaced by ``new``; TensorRT faked missing) and a tiny saved Mamba4Rec; returns the model folder."""
    from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel

    src = ROOT / "plugins" / "selectiveScanPlugin" / file
    text = src.read_text()
    assert text.count(old) == 1
    (tmp_path / src.name).write_text(text.replace(old, new))
    bad = _emulated_plugin_library(tmp_path / "build", out_name=name, replace={src.name: tmp_path / src.name})
    monkeypatch.setattr(BP, "build_emulated", lambda *a, **k: bad)
    monkeypatch.setattr(T, "probe_environment", lambda: T.Environment(**_NO_TRT))
    (tmp_path / "unused.so").write_bytes(b"")          # a --plugin-lib that exists (not loaded: no TensorRT here)
    torch.manual_seed(0)
    Mamba4RecModel(Mamba4RecConfig(n_items=30, hidden_size=8, num_layers=1, d_state=4)).save_pretrained(
        tmp_path / "model")
    return tmp_path / "model"


def test_main_reports_a_plugin_that_crashes_the_emulated_check(tmp_path, monkeypatch, capsys):
    """A plugin with a wrong dim mapping (SelectiveScan reading the batch from u's channel dim) reads and writes out
    of bounds: the child running the graph dies of the signal, and export.trt -- still alive -- fails the run with
    exit 3, writes the report naming the signal and the plugin run it happened in, and loses nothing written before
    (the ONNX graph; an earlier engine no report says was verified, set aside as model.engine.unverified)."""
    model = _mutant_plugin_run(tmp_path, monkeypatch, "selectiveScanPlugin.cpp",     # B, E of u [B, E, T]: E, E
                               "static_cast<int32_t>(du.d[0]), static_cast<int32_t>(du.d[1])",
                               "static_cast<int32_t>(du.d[1]), static_cast<int32_t>(du.d[1])", "libmut_crash.so")
    out = tmp_path / "out"
    _earlier_engine(out, report=None)
    code = T.main(["--model", str(model), "--out", str(out), "--quick",
                   "--plugin-lib", str(tmp_path / "unused.so")])
    printed = capsys.readouterr()
    stdout, stderr = printed.out, printed.err
    assert code == T.EXIT_VERIFY_FAILED == 3, stdout + stderr
    rep = json.loads((out / T.REPORT_FILE).read_text())
    emu = rep["emulated_plugins"]
    sig = emu["signal"]
    assert sig in ("SIGSEGV", "SIGBUS", "SIGABRT"), emu                 # heap corruption may end in an abort
    assert emu["ok"] is False and emu["child_exit_code"] < 0 and emu["plugin_call"]["op_type"] == "SelectiveScan"
    assert emu["error"].startswith(f"{sig} in the emulated plugin check (during the SelectiveScan plugin's "
                                   "enqueue, float32: u[2, 16, ")
    assert "rerun with ASan: python plugins/harness.py --emulate --plugin --asan --check" in emu["error"]
    assert rep["exit_code"] == 3 and f"FAILED verification ({sig}: the plugin crashed its process)" in rep["status"]
    assert f"  FAILED: {sig} in the emulated plugin check" in stderr and "RESULT: " in stderr
    assert "[4b]" in stdout and "RESULT" not in stdout
    assert rep["onnx"]["verification"]["passed"] is True and (out / "model.onnx").is_file()
    assert not (out / T.ENGINE_FILE).exists() and not (out / T.PREVIOUS_DIR).exists()
    assert (out / T.UNVERIFIED_ENGINE_FILE).read_bytes() == EARLIER


def test_main_reports_a_plugin_that_hangs_the_emulated_check(tmp_path, monkeypatch, capsys):
    """A SelectiveScan kernel whose time loop never advances never returns: the child running the graph gives no
    answer for EMULATED_TIMEOUT_S, is killed, and export.trt fails the run with exit 3 and a report naming the hang
    and the plugin run it happened in -- instead of waiting forever. Nothing written before is lost."""
    model = _mutant_plugin_run(tmp_path, monkeypatch, "selectiveScanKernel.cu", "for (int32_t t = 0; t < T_; ++t)",
                               "for (int32_t t = 0; t < T_; t += 0)", "libmut_hang.so")
    monkeypatch.setattr(T, "EMULATED_TIMEOUT_S", 10.0)        # the child's start (numpy, onnx imports) fits easily
    out = tmp_path / "out"
    _earlier_engine(out, report=None)
    t0 = time.monotonic()
    code = T.main(["--model", str(model), "--out", str(out), "--quick",
                   "--plugin-lib", str(tmp_path / "unused.so")])
    stderr = capsys.readouterr().err
    assert code == T.EXIT_VERIFY_FAILED == 3, stderr
    assert time.monotonic() - t0 < 120
    rep = json.loads((out / T.REPORT_FILE).read_text())
    emu = rep["emulated_plugins"]
    assert emu["ok"] is False and emu["hung_after_s"] == 10.0 and emu["signal"] is None, emu
    assert emu["child_exit_code"] == -signal.SIGKILL and emu["plugin_call"]["op_type"] == "SelectiveScan"
    assert emu["error"].startswith("the emulated plugin check's process gave no answer for 10 s (during the "
                                   "SelectiveScan plugin's enqueue, float32: u[2, 16, ")
    assert "python plugins/harness.py --emulate --plugin --check" in emu["error"]
    assert "FAILED verification (no answer in 10 s: the plugin hangs)" in rep["status"], rep["status"]
    assert "  FAILED: the emulated plugin check's process gave no answer" in stderr
    assert rep["onnx"]["verification"]["passed"] is True and (out / "model.onnx").is_file()
    assert not (out / T.ENGINE_FILE).exists() and not (out / T.PREVIOUS_DIR).exists()
    assert (out / T.UNVERIFIED_ENGINE_FILE).read_bytes() == EARLIER


def test_hang_messages_name_the_plugin_run_or_the_evaluator():
    from export.emulated_plugins import _hang_message

    call = {"op_type": "SSDScan", "dtype": "float16", "inputs": {"x": (2, 3, 4, 5)}}
    assert _hang_message(2.5, call) == (
        "the emulated plugin check's process gave no answer for 2.5 s (during the SSDScan plugin's enqueue, float16: "
        "x[2, 3, 4, 5]) and was killed: the plugin's code does not return (an endless loop, or a loop bound read "
        "from a wrong dim?) — rerun it alone: python plugins/harness.py --emulate --plugin --check")
    assert _hang_message(300, None).endswith("gave no answer for 300 s outside any plugin run (the reference "
                                             "evaluator on the graph's other nodes) and was killed")


@pytest.mark.usefixtures("one_thread")
def test_an_error_after_plugin_runs_fails_the_emulated_check(tmp_path, monkeypatch, tiny_mamba):
    """An error once the plugins have run (e.g. the evaluator refusing what a plugin returned) failed nothing: it was
    reported as "could not run" and the run exited as if the check were merely skipped (now 4). Now it fails the check
    (exit 3); an error before any plugin run (the evaluator cannot take the graph) still skips it."""
    from export import emulated_plugins as EP

    lib = _emulated_plugin_library(tmp_path / "build")
    monkeypatch.setattr(BP, "build_emulated", lambda *a, **k: lib)
    monkeypatch.setattr(T, "probe_environment", lambda: T.Environment(**_NO_TRT))

    class Failing(EP.IsolatedPluginRunner):
        def run(self, names, feeds):
            if not after:                                   # before any plugin run
                raise RuntimeError("the evaluator cannot take this graph")
            out = super().run(names, feeds)
            if sum(self.calls.values()) >= 3:
                raise RuntimeError("shape mismatch in the node after the scan")
            return out

    monkeypatch.setattr(EP, "IsolatedPluginRunner", Failing)
    for after, code, key in ((True, T.EXIT_VERIFY_FAILED, "ok"), (False, T.EXIT_MISSING, "skipped")):
        said = []
        got, rep = T.run("tiny", str(tmp_path / f"out{after}"), model=tiny_mamba, quick=True,
                         plugin_lib=str(tmp_path / "none.so"), say=said.append)
        emu = rep["emulated_plugins"]
        assert got == code and key in emu, ("\n".join(said), emu)
        if after:
            assert emu["ok"] is False and emu["plugin_calls"]["SelectiveScan"] >= 3
            assert emu["error"] == "the graph failed after the plugins ran: RuntimeError: shape mismatch in the node " \
                                   "after the scan"
            assert "FAILED after" in "\n".join(said)


def _harness(monkeypatch):
    """plugins/harness.py imported as its command runs it (plugins/ first on the path)."""
    import importlib

    monkeypatch.syspath_prepend(str(ROOT / "plugins"))
    return importlib.import_module("harness")


def test_harness_refuses_a_case_filter_that_matches_nothing_and_a_zero_long_T(monkeypatch, capsys):
    """--cases NOSUCH checked nothing and passed ("0 passed, 0 failed", exit 0); --long-T 0 died in a traceback."""
    harness = _harness(monkeypatch)
    for args, message in ((["--emulate", "--cases", "NOSUCH"], "--cases 'NOSUCH' matches no case id"),
                          (["--emulate", "--long-T", "0"], "--long-T must be >= 1")):
        with pytest.raises(SystemExit) as e:
            harness.main(args)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_harness_exit_statuses_are_the_shared_tables(tmp_path, monkeypatch, capsys):
    """plugins/harness.py kept its own statuses: 3 for "no CUDA device" (the shared table's "verification failed")
    and 1 for a kernel that differs from its reference. Now: 4 no CUDA device, 3 a check failed, 1 a kernels library
    that does not load (it was a traceback), 0 all passed; --help lists the table. No GPU, compiler or library
    needed: the CUDA probe and the checks are stand-ins."""
    from export.fsutil import EXIT_CODES

    harness = _harness(monkeypatch)
    monkeypatch.setattr(harness.torch.cuda, "is_available", lambda: False)
    assert harness.main(["--check"]) == T.EXIT_MISSING == 4
    assert capsys.readouterr().err.startswith("no CUDA device: the kernels can only be compared")
    with pytest.raises(SystemExit) as e:
        harness.main(["--help"])
    assert e.value.code == 0 and " ".join(EXIT_CODES.split()) in " ".join(capsys.readouterr().out.split())
    for args in (["--check", "--lib", str(tmp_path / "none.so")], ["--emulate", "--lib", str(tmp_path / "none.so")]):
        monkeypatch.setattr(harness.torch.cuda, "is_available", lambda: "--emulate" not in args)
        assert harness.main(args) == T.EXIT_ERROR == 1, args
        err = capsys.readouterr().err
        assert "cannot load the kernels library: " in err and "none.so" in err and len(err.splitlines()) == 1, err
    monkeypatch.setattr(harness.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(harness, "ScanKernels", lambda lib: types.SimpleNamespace(emulated=False))
    for results, code in (([{"ok": True}], T.EXIT_OK), ([{"ok": True}, {"ok": False}], T.EXIT_VERIFY_FAILED)):
        monkeypatch.setattr(harness, "check_all", lambda k, long_T, only=None, plugin=False, _r=results: _r)
        assert harness.main(["--check"]) == code
        assert capsys.readouterr().out.endswith(f"{sum(r['ok'] for r in results)} passed, "
                                                f"{sum(not r['ok'] for r in results)} failed\n")


def test_the_parser_gets_the_graph_without_the_scan_functions(monkeypatch, tiny_mamba):
    """Each scan node has a model-local function of its name (the body ONNX Runtime runs). TensorRT's parser before
    10.7 imports a node from such a function before it asks the plugin registry, so build_engine would have built
    the scan from the function body (or, through export.trt's layer count, failed on those versions): the parser
    gets the graph without them, the nodes and their plugin attributes unchanged."""
    import onnx

    from export import onnx as E

    mp, _ = E.trace_graph(tiny_mamba, "step", 5)
    assert {f.name for f in mp.functions} >= {"SelectiveScan"}
    stripped = onnx.load_from_string(T.plugin_graph(mp.SerializeToString()))
    assert not [f for f in stripped.functions if f.domain == ps.ONNX_DOMAIN]
    assert [(n.op_type, n.domain, list(n.attribute)) for n in stripped.graph.node] == \
        [(n.op_type, n.domain, list(n.attribute)) for n in mp.graph.node]
    plain = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    assert T.plugin_graph(plain.SerializeToString()) == plain.SerializeToString()      # nothing to strip

    parsed = []                                          # what build_engine hands the parser

    class Parser:
        num_errors = 1

        def __init__(self, network, logger):
            pass

        def parse(self, graph):
            parsed.append(graph)
            return False

        def get_error(self, i):
            return "stop here"

    class Logger:
        WARNING = 0

        def __init__(self, level):
            pass

    fake = types.SimpleNamespace(Logger=Logger, NetworkDefinitionCreationFlag=types.SimpleNamespace(),
                                 OnnxParser=Parser,
                                 Builder=lambda logger: types.SimpleNamespace(create_network=lambda flags: None))
    monkeypatch.setattr(T, "_load_plugins", lambda trt, lib: None)
    with pytest.raises(T.TrtError, match="ONNX parser failed: stop here"):
        T.build_engine(fake, mp.SerializeToString(), {}, Path("lib.so"))
    assert parsed and not onnx.load_from_string(parsed[0]).functions


def test_crash_messages_name_the_signal_and_the_plugin_run():
    from export.emulated_plugins import _crash_message

    call = {"op_type": "LRUScan", "dtype": "float32", "inputs": {"u_re": (2, 3, 4), "lam_re": (4,)}}
    msg, name = _crash_message(-signal.SIGSEGV, call)
    assert name == "SIGSEGV" and msg == (
        "SIGSEGV in the emulated plugin check (during the LRUScan plugin's enqueue, float32: u_re[2, 3, 4], "
        "lam_re[4]): the plugin read or wrote out of bounds — rerun with ASan: python plugins/harness.py --emulate "
        "--plugin --asan --check")
    msg, name = _crash_message(-signal.SIGABRT, None)
    assert name == "SIGABRT" and msg.startswith("SIGABRT in the emulated plugin check: the plugin's code aborted")
    assert _crash_message(-signal.SIGKILL, None)[0].endswith("(the kernel's out-of-memory killer sends SIGKILL)")
    msg, name = _crash_message(3, call)
    assert name is None and msg.startswith("the emulated plugin check's process exited with code 3 without an "
                                           "answer (during the LRUScan plugin's enqueue")


def test_isolated_runner_raises_the_childs_error_with_its_type(tmp_path):
    """An error of the runner in the child comes back with its type (PluginError here: a library that is not an
    emulated plugin library), not as a crash, and the child is ended. No compiler needed."""
    import _ctypes

    import onnx
    from onnx import TensorProto, helper

    from export import emulated_plugins as EP

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    graph = helper.make_model(g)
    procs = []

    class Recording(EP.IsolatedPluginRunner):
        def close(self):
            procs.append(self.proc)
            super().close()

    with pytest.raises(EP.PluginError, match=r"is not an emulated plugin library") as e:
        Recording(graph, _ctypes.__file__)
    assert not isinstance(e.value, EP.PluginCrash)
    assert len(procs) == 1 and procs[0].returncode == 0
    onnx.save(graph, tmp_path / "g.onnx")
    with pytest.raises(EP.PluginError, match=r"is not an emulated plugin library"):
        EP.IsolatedPluginRunner(str(tmp_path / "g.onnx"), _ctypes.__file__)
