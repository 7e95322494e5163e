"""TensorRT scan plugins (plugins/, export/build_plugins.py, export/trt.py).

CPU CI (no GPU, no TensorRT builder):
* the plugins compile with nvcc (one arch, ``ZOO_TRT_TEST_ARCH``, default 80) into libzoo_trt_plugins.so and
  libzoo_scan_kernels.so; the constants compiled in equal export/plugin_spec.py (generated header + JSON probe);
* the C++ self-test exercises every plugin class (types, formats, shapes, aliasing, field serialization);
* the library loads into TensorRT's lean runtime plugin registry (``tensorrt-lean-cu13``), every creator is found
  under (op type, version, namespace) with the spec's fields, and plugins are created in both phases;
* the exported ONNX graphs' scan nodes carry exactly the op types / attributes / arity those creators answer to;
* ``python -m export.trt`` without TensorRT/GPU verifies the ONNX graph, writes no engine and exits with code 4.

GPU (marker ``gpu``): every kernel vs the PyTorch reference (shapes x fp32/fp16/bf16 x T = 1 and long T x with and
without initial state, plus in-place state); timings vs reference and the bandwidth floor.
GPU + TensorRT (markers ``gpu`` and ``tensorrt``): engine build + verification against PyTorch through export.trt.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from export import build_plugins as BP
from export import plugin_spec as ps
from export.trt import TOLERANCES as T_TOL

ROOT = Path(__file__).resolve().parent.parent
CUDA = torch.cuda.is_available()


def _load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


harness = _load_by_path("zoo_scan_harness", ROOT / "plugins" / "harness.py")
gen_header = _load_by_path("zoo_gen_spec_header", ROOT / "plugins" / "gen_spec_header.py")


_TRT_PROBE: list = []      # [(module or None, why not)] once probed


def _probe_tensorrt():
    """``(tensorrt module with a Builder, None)``, or ``(None, why not)``. Only "not installed" (ImportError) and the
    runtime-only package (no ``Builder``) mean "absent"; any other failure of ``import tensorrt`` (an OSError for a
    missing libnvinfer.so, a crash in its ``__init__``, ...) is a broken install, reported as such (see
    :func:`_need_builder`), never read as "needs the TensorRT builder"."""
    if not _TRT_PROBE:
        try:
            import tensorrt as trt
        except ImportError as e:
            _TRT_PROBE.append((None, f"`import tensorrt` failed: {type(e).__name__}: {e}"))
        except Exception as e:  # noqa: BLE001 - classified and reported, not swallowed
            _TRT_PROBE.append((None, f"BROKEN TensorRT install: `import tensorrt` raised {type(e).__name__}: {e}"))
        else:
            if hasattr(trt, "Builder"):
                _TRT_PROBE.append((trt, None))
            else:
                _TRT_PROBE.append((None, f"`tensorrt` {getattr(trt, '__version__', '?')} ({trt.__file__}) has no "
                                         f"Builder (runtime-only package)"))
    return _TRT_PROBE[0]


def _full_tensorrt():
    """The full ``tensorrt`` module (builder + ONNX parser), or None (the reason: ``_probe_tensorrt()[1]``)."""
    return _probe_tensorrt()[0]


def _need_builder():
    """Skip (with the reason) unless the TensorRT builder and a CUDA GPU are present; on a GPU machine a broken
    TensorRT install fails instead of skipping."""
    trt, why = _probe_tensorrt()
    if trt is not None and CUDA:
        return trt
    if why is not None and why.startswith("BROKEN") and CUDA:
        pytest.fail(why)
    pytest.skip("needs the TensorRT builder (`import tensorrt` with libnvinfer) and a CUDA GPU; here: "
                + (why or "TensorRT builder present") + "; " + ("CUDA GPU present" if CUDA else "no CUDA GPU"))


_LEAN_MODULES = ("tensorrt_lean", "tensorrt_lean_bindings")


def _lean_probe(import_module=importlib.import_module):
    """``(lean runtime module with a plugin registry, None)`` or ``(None, why absent)``. Only ImportError means "not
    installed"; any other failure of the import (a missing libnvinfer_lean.so read as OSError, a crash in its
    ``__init__``) is a broken install and fails the calling test with the error instead of reading as "absent"."""
    why = []
    for mod in _LEAN_MODULES:
        try:
            m = import_module(mod)
        except ImportError as e:
            why.append(f"`import {mod}`: {type(e).__name__}: {e}")
            continue
        except Exception as e:  # noqa: BLE001 - a broken install is a failure, not an absence
            pytest.fail(f"BROKEN TensorRT lean runtime: `import {mod}` raised {type(e).__name__}: {e}")
        if hasattr(m, "get_plugin_registry"):
            return m, None
        why.append(f"`{mod}` ({getattr(m, '__file__', '?')}) has no get_plugin_registry")
    return None, "no TensorRT lean runtime (`pip install tensorrt-lean-cu13`): " + "; ".join(why)


def _lean():
    """The lean runtime module, or None when it is not installed (a broken install fails the test)."""
    return _lean_probe()[0]


def test_lean_probe_tells_absent_from_broken():
    def absent(mod):
        raise ModuleNotFoundError(f"No module named {mod!r}")

    m, why = _lean_probe(absent)
    assert m is None and "No module named 'tensorrt_lean'" in why and "No module named 'tensorrt_lean_bindings'" in why

    def broken(mod):
        raise OSError("libnvinfer_lean.so.10: cannot open shared object file")

    with pytest.raises(pytest.fail.Exception, match=r"BROKEN TensorRT lean runtime: `import tensorrt_lean` raised "
                                                    r"OSError: libnvinfer_lean\.so\.10"):
        _lean_probe(broken)
    fake = type(sys)("tensorrt_lean_bindings")
    fake.get_plugin_registry = lambda: None
    assert _lean_probe(lambda mod: fake if mod == "tensorrt_lean_bindings" else absent(mod)) == (fake, None)


# ---------------------------------------------------------------------------------------------------- build
@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """Build both libraries once per session (CMake, -j2). On a GPU, for that GPU's arch. ``ZOO_PLUGINS_BUILD_DIR``
    names a build folder to reuse (bench/gpu_session.sh's, built just before: CMake then only checks it is current)."""
    missing = [t for t in ("cmake", "nvcc") if shutil.which(t) is None and not Path(f"/usr/local/cuda/bin/{t}").exists()]
    if missing:
        pytest.skip(f"cannot compile the plugins: {', '.join(missing)} not found")
    arch = os.environ.get("ZOO_TRT_TEST_ARCH")
    if arch is None:
        if CUDA:
            major, minor = torch.cuda.get_device_capability(0)
            arch = f"{major}{minor}"
        else:
            arch = "80"
    bdir = os.environ.get("ZOO_PLUGINS_BUILD_DIR") or tmp_path_factory.mktemp("plugins_build")
    res = BP.build(bdir, arch=arch, jobs=os.cpu_count() or 2, quiet=True)
    assert res["kernels"].is_file(), res["log"][-3000:]
    return res


@pytest.fixture(scope="session")
def plugin_lib(built):
    if built["plugins"] is None:
        pytest.skip(f"{ps.PLUGIN_LIBRARY} not built (the plugin classes need TensorRT headers): "
                    f"{built['tensorrt_headers']}; the kernels were compiled")
    return built["plugins"]


def test_generated_header_follows_spec():
    text = gen_header.render(gen_header.load_spec(str(ROOT / "export" / "plugin_spec.py")))
    assert f'kPluginNamespace = "{ps.PLUGIN_NAMESPACE}"' in text
    assert f'kPluginVersion = "{ps.PLUGIN_VERSION}"' in text
    for op in ps.SCAN_OPS.values():
        assert f'kOpType = "{op.op_type}"' in text
        for i, t in enumerate(op.inputs):
            assert f"kIn_{t.name} = {i};" in text
        for i, t in enumerate(op.outputs):
            assert f"kOut_{t.name} = {i};" in text
        for k, (_typ, default, _doc) in op.attributes.items():
            assert f'kField_{k} = "{k}";' in text and f"kDefault_{k} = {default};" in text


def test_library_name_matches_spec():
    assert BP.PLUGIN_LIBRARY == ps.PLUGIN_LIBRARY


def test_plugins_compile(built):
    print(f"TensorRT headers: {built['tensorrt_headers']} (version {built['tensorrt_header_version']})")
    assert built["kernels"].is_file()
    if built["plugins"] is None:
        print(f"NOTE: {ps.PLUGIN_LIBRARY} skipped: {built['tensorrt_headers']}")


def _spec_as_json() -> dict:
    return {"namespace": ps.PLUGIN_NAMESPACE, "version": ps.PLUGIN_VERSION, "library": ps.PLUGIN_LIBRARY,
            "ops": {op.op_type: {"inputs": op.input_names, "outputs": op.output_names, "fields": list(op.attributes)}
                    for op in ps.SCAN_OPS.values()}}


@pytest.mark.parametrize("which", ["kernels", "plugins"])
def test_compiled_constants_equal_plugin_spec(built, which):
    """The names/positions compiled into the libraries cannot drift from export/plugin_spec.py."""
    path = built[which]
    if path is None:
        pytest.skip(f"{which} library not built: {built['tensorrt_headers']}")
    k = harness.ScanKernels(path)  # dlopen works without a GPU (static cudart, no CUDA call)
    assert k.spec() == _spec_as_json()
    assert k.max_state() == 256


def test_plugin_library_is_self_contained(plugin_lib):
    """No libnvinfer / libcudart dependency: loads into the full, lean and dispatch runtimes and Triton alike."""
    if shutil.which("readelf") is None:
        pytest.skip("readelf not available")
    dyn = subprocess.run(["readelf", "-d", str(plugin_lib)], capture_output=True, text=True).stdout
    needed = [ln.split("[")[1].rstrip("]") for ln in dyn.splitlines() if "(NEEDED)" in ln]
    assert not [n for n in needed if "nvinfer" in n or "cudart" in n], needed
    # what plugins/README.md lists: libstdc++, libgcc_s, libc and the dynamic loader, nothing else
    assert {n.split(".so")[0] for n in needed if not n.startswith("ld-linux")} <= {"libstdc++", "libgcc_s", "libc"}, \
        needed
    syms = subprocess.run(["nm", "-D", "--defined-only", str(plugin_lib)], capture_output=True, text=True).stdout
    exported = {ln.split()[-1] for ln in syms.splitlines() if " T " in ln}
    assert {"getCreators", "setLoggerFinder"} <= exported


def test_plugin_cpp_selftest(built, plugin_lib):
    exe = Path(plugin_lib).parent / "zoo_plugin_selftest"
    r = subprocess.run([str(exe), str(plugin_lib)], capture_output=True, text=True, timeout=60)
    print(r.stdout[-4000:])
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failed" in r.stdout


# ---------------------------------------------------------------------------------------------------- registry
@pytest.fixture(scope="session")
def registry(plugin_lib):
    trt = _full_tensorrt() or _lean()
    if trt is None:
        pytest.skip("neither `tensorrt` nor the lean runtime (`pip install tensorrt-lean-cu13`) is installed ("
                    f"{_probe_tensorrt()[1]}; {_lean_probe()[1]})")
    reg = trt.get_plugin_registry()
    first = next(iter(ps.SCAN_OPS))
    if reg.get_creator(first, ps.PLUGIN_VERSION, ps.PLUGIN_NAMESPACE) is not None:
        # an earlier test in this process (export.trt's registry check) loaded it: the process-wide registry returns
        # None for a second load of the same library, and test_export_trt_without_tensorrt loads it afresh
        print(f"plugin library already in this process's registry (creator {first!r} found)")
    else:
        assert reg.load_library(str(plugin_lib)) is not None
    return trt, reg


def test_registry_finds_every_creator(registry):
    trt, reg = registry
    ours = {(c.name, c.plugin_version, c.plugin_namespace) for c in reg.all_creators
            if c.plugin_namespace == ps.PLUGIN_NAMESPACE}
    assert ours == {(op, ps.PLUGIN_VERSION, ps.PLUGIN_NAMESPACE) for op in ps.SCAN_OPS}
    for op in ps.SCAN_OPS.values():
        c = reg.get_creator(op.op_type, ps.PLUGIN_VERSION, ps.PLUGIN_NAMESPACE)
        assert c is not None and isinstance(c, trt.IPluginCreatorV3One), op.op_type
        fields = [(f.name, f.type) for f in c.field_names]
        assert fields == [(k, trt.PluginFieldType.INT32) for k in op.attributes], op.op_type


@pytest.mark.parametrize("op_type", list(ps.SCAN_OPS))
def test_registry_creates_plugins(registry, op_type):
    import numpy as np

    trt, reg = registry
    op = ps.SCAN_OPS[op_type]
    c = reg.get_creator(op_type, ps.PLUGIN_VERSION, ps.PLUGIN_NAMESPACE)
    fc = trt.PluginFieldCollection([trt.PluginField(k, np.array([0], dtype=np.int32), trt.PluginFieldType.INT32)
                                    for k in op.attributes])
    for phase in (trt.TensorRTPhase.BUILD, trt.TensorRTPhase.RUNTIME):
        p = c.create_plugin(f"{op_type}_0", fc, phase)
        assert isinstance(p, trt.IPluginV3)
        core = p.get_capability_interface(trt.PluginCapabilityType.CORE)
        assert (core.plugin_name, core.plugin_version, core.plugin_namespace) == \
            (op_type, ps.PLUGIN_VERSION, ps.PLUGIN_NAMESPACE)
        build = p.get_capability_interface(trt.PluginCapabilityType.BUILD)
        assert type(build).__name__ == "IPluginV3OneBuildV2"  # aliased (in-place) state I/O
        assert build.num_outputs == len(op.outputs)
        assert type(p.get_capability_interface(trt.PluginCapabilityType.RUNTIME)).__name__ == "IPluginV3OneRuntime"


# ---------------------------------------------------------------------------------------------------- ONNX nodes
@pytest.fixture(scope="module")
def scan_nodes():
    """Scan nodes of freshly traced step graphs (Mamba4Rec -> SelectiveScan, LRURec -> LRUScan)."""
    E = pytest.importorskip("export.onnx")
    from zoo.models.lrurec import LRURecConfig, LRURecModel
    from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel

    torch.manual_seed(0)
    nodes = []
    for model in (Mamba4RecModel(Mamba4RecConfig(n_items=40, hidden_size=16, num_layers=2, d_state=8)),
                  LRURecModel(LRURecConfig(n_items=40, hidden_size=16, num_layers=1))):
        mp, _spec = E.trace_graph(model.eval(), "step", 5)
        nodes += [n for n in mp.graph.node if n.domain == ps.ONNX_DOMAIN]
    assert {n.op_type for n in nodes} == {"SelectiveScan", "LRUScan"}
    return nodes


def _attrs(node) -> dict:
    import onnx

    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def test_onnx_scan_nodes_match_spec(scan_nodes):
    for n in scan_nodes:
        op = ps.SCAN_OPS[n.op_type]
        a = _attrs(n)
        assert a.pop("plugin_namespace") == ps.PLUGIN_NAMESPACE
        assert a.pop("plugin_version") == ps.PLUGIN_VERSION
        assert set(a) == set(op.attributes), n.op_type      # every other attribute becomes a plugin field
        assert len(n.input) == len(op.inputs) and len(n.output) == len(op.outputs)


def test_onnx_scan_nodes_bind_to_registered_creators(scan_nodes, registry):
    """What TensorRT's ONNX parser does: creator lookup by (op_type, plugin_version, plugin_namespace), then node
    attributes passed as fields only when the creator lists them."""
    _trt, reg = registry
    for n in scan_nodes:
        a = _attrs(n)
        c = reg.get_creator(n.op_type, a["plugin_version"], a["plugin_namespace"])
        assert c is not None, f"no creator for {n.op_type} v{a['plugin_version']} ns {a['plugin_namespace']}"
        fields = {f.name for f in c.field_names}
        assert fields == set(a) - {"plugin_namespace", "plugin_version"}, n.op_type


# ---------------------------------------------------------------------------------------------------- export.trt
def test_export_trt_without_tensorrt_reports_and_exits_4(tmp_path, plugin_lib):
    if _full_tensorrt() is not None and CUDA:
        pytest.skip("TensorRT and a GPU are present: the engine tests cover export.trt")
    from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel

    torch.manual_seed(0)
    mdir = tmp_path / "m"
    Mamba4RecModel(Mamba4RecConfig(n_items=40, hidden_size=16, num_layers=1, d_state=8)).save_pretrained(mdir)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.engine").write_bytes(b"engine of an earlier run")          # no report says it was verified:
    (out / "trt_report.json").write_text('{"status": "earlier"}')            # set aside, previous/ left alone
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "export.trt", "--model", str(mdir), "--out", str(out), "--quick",
                        "--plugin-lib", str(plugin_lib)], capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=600)
    print(r.stdout[-5000:], r.stderr[-3000:])
    assert r.returncode == 4, r.stdout + r.stderr
    assert "verification (step, mamba4rec): PASSED" in r.stdout        # ONNX-level verification still ran
    assert "engine build: NOT POSSIBLE here; missing:" in r.stdout
    assert not (out / "model.engine").exists() and not (out / "previous").exists()
    assert (out / "model.engine.unverified").read_bytes() == b"engine of an earlier run"
    rep = json.loads((out / "trt_report.json").read_text())
    assert rep["exit_code"] == 4 and rep["missing"]
    assert "RESULT: TensorRT/GPU missing" in r.stderr and "RESULT" not in r.stdout   # the verdict: on stderr
    assert rep["onnx"]["verification"]["passed"] is True
    assert rep["precision"] == "fp32" and rep["tolerances"] == T_TOL["fp32"]
    # the graph also ran with its scan node through the plugin's code on the CPU emulator, and passed
    assert "[4b] the graph with the zoo plugins' code, CPU-emulated" in r.stdout
    assert rep["emulated_plugins"]["ok"] is True and rep["emulated_plugins"]["plugin_calls"]["SelectiveScan"] > 0
    assert "plugins verified on the CPU emulator" in rep["status"]
    if _lean() is not None:
        assert {c["op_type"] for c in rep["registry"]["creators"]} == set(ps.SCAN_OPS)
        assert rep["registry"]["runtime"] == "tensorrt_lean"
    else:
        assert "registry" not in rep and "registry check   : skipped" in r.stdout


@pytest.mark.parametrize("flags,message", [
    (["--max-batch", "0"], "max_batch must be an int >= 1"), (["--max-steps", "0"], "max_steps must be an int >= 1"),
    (["--opt-batch", "5000"], "opt_batch (5000) must be <= max_batch (2048)"), (["--topk", "0"], "topk must be"),
    (["--workspace", "abc"], "workspace must be a size"), (["--workspace=-1G"], "workspace must be positive")])
def test_export_trt_refuses_bad_settings_before_touching_out(tmp_path, flags, message, capsys):
    """Engine settings are checked before any work and before ``--out`` is touched: a typo is a usage error (exit
    2, argparse's), and the engine already in ``--out`` stays (run() moves it to ``previous/`` only
    once it starts a build)."""
    from export import trt as T

    out = tmp_path / "out"
    out.mkdir()
    (out / T.ENGINE_FILE).write_bytes(b"earlier engine")
    with pytest.raises(SystemExit) as e:
        T.main(["--model", str(tmp_path / "not-read"), "--out", str(out), *flags])
    # counts are refused at parse, naming the option as given; the other settings by run()'s check, named too
    counts = ("--max-batch", "--max-steps", "--topk")
    said = f"argument {flags[0]}: expected an int >= 1, got '0'" if flags[0] in counts else message
    assert e.value.code == 2 and said in capsys.readouterr().err
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        T.run(str(tmp_path / "not-read"), str(out), **T_KW[flags[0].split("=")[0]](flags))
    assert (out / T.ENGINE_FILE).read_bytes() == b"earlier engine" and sorted(os.listdir(out)) == [T.ENGINE_FILE]
    assert T._parse_size("512M") == 512 << 20 and T._parse_size("2g") == 2 << 30 and T._parse_size("64") == 64 << 20


def _kw(name, cast=int):
    return lambda flags: {name: cast(flags[-1].split("=")[-1])}


T_KW = {"--max-batch": _kw("max_batch"), "--max-steps": _kw("max_steps"), "--opt-batch": _kw("opt_batch"),
        "--topk": _kw("topk"), "--workspace": _kw("workspace", str)}


# ---------------------------------------------------------------------------------------------------- GPU: kernels
KERNEL_CASES = list(harness.cases(long_T=200))


@pytest.fixture(scope="session")
def kernels(built):
    if not CUDA:
        pytest.skip("needs a CUDA GPU")
    return harness.ScanKernels(built["kernels"])


@pytest.mark.gpu
@pytest.mark.parametrize("case", KERNEL_CASES, ids=[c.id for c in KERNEL_CASES])
def test_kernel_matches_reference(kernels, case):
    d = harness.make_inputs(case, seed=zlib.crc32(case.id.encode()) % 10_000)
    ref = harness.reference(case, {k: (v.cpu() if v is not None else None) for k, v in d.items()})
    ref = ([r.cuda() for r in ref[0]], [r.cuda() for r in ref[1]])
    for in_place in harness.in_place_runs(case):
        got = harness.run_kernel(kernels, case, d, in_place=in_place)
        torch.cuda.synchronize()
        res = harness.compare(case, got, ref)
        assert res["ok"], res
        if case.dtype == torch.float32:
            assert res["act_err"] <= 1e-4 and res["state_err"] <= 1e-4 * max(1.0, max(r.abs().max().item()
                                                                                   for r in ref[1])), res


@pytest.mark.gpu
def test_kernel_timings(kernels):
    """The timing table is sane (every kernel took some time; the measured bandwidth is positive and not above the
    device's peak, which would be a wrong byte count or clock): a check of the measurement, not of the speed, which
    the project measures and never asserts."""
    rows = harness.bench(kernels, iters=10)
    assert all(r["kernel_ms"] > 0 for r in rows)
    bw, peak = rows[0]["measured_bytes_per_s"], rows[0]["peak_bytes_per_s"]
    assert bw > 0 and (peak != peak or bw <= 1.05 * peak), (bw, peak, rows[0]["peak_source"])


def test_bandwidth_floor_names_its_peak():
    """The timing table prints the device's peak bandwidth beside the measured one (its floor): from torch's memory
    clock where exposed, else the published figure for the device by name (an H200 is not taken for an H100), and
    NaN for an unknown device."""
    from types import SimpleNamespace as NS

    assert harness.peak_bandwidth(NS(name="x", memory_clock_rate=2_619_000, memory_bus_width=6144))[0] == \
        pytest.approx(4.0228e12, rel=1e-4)
    for name, peak in (("NVIDIA H200", 4.8e12), ("NVIDIA H100 80GB HBM3", 3.35e12), ("NVIDIA H100 PCIe", 2.0e12),
                       ("NVIDIA A100-SXM4-80GB", 2.039e12), ("NVIDIA A100 80GB PCIe", 1.935e12)):
        value, source = harness.peak_bandwidth(NS(name=name))
        assert value == peak and "published figure" in source, (name, value, source)
    value, source = harness.peak_bandwidth(NS(name="Tesla T4", memory_clock_rate=0, memory_bus_width=0))
    assert value != value and "unknown" in source                        # NaN: no made-up figure


# ---------------------------------------------------------------------------------------------------- GPU + TRT: engines
@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("arch", ["mamba4rec", "lrurec"])
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_engine_build_and_verify(tmp_path, plugin_lib, arch, fp16):
    _need_builder()
    from export import trt as T
    from zoo.models.lrurec import LRURecConfig, LRURecModel
    from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel

    torch.manual_seed(0)
    if arch == "mamba4rec":
        model = Mamba4RecModel(Mamba4RecConfig(n_items=200, hidden_size=32, num_layers=2, d_state=16))
    else:
        model = LRURecModel(LRURecConfig(n_items=200, hidden_size=32, num_layers=2))
    with torch.no_grad():
        model.item_embedding.weight.normal_(0, 1.0)
    model.eval()
    code, rep = T.run(arch, str(tmp_path), fp16=fp16, plugin_lib=str(plugin_lib), model=model, max_batch=2048)
    assert code == T.EXIT_OK, rep
    assert (tmp_path / T.ENGINE_FILE).is_file()
    assert rep["engine"]["plugin_layers"] == rep["engine"]["scan_nodes"] > 0
    assert rep["engine_verification"]["passed"]


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_engine_build_exclude_seen(tmp_path, plugin_lib):
    """An --exclude-seen LRURec step graph (``seen [B, n_items]`` state, one ScatterElements) builds and matches
    PyTorch's history-masked scores on the GPU."""
    _need_builder()
    from export import trt as T
    from zoo.models.lrurec import LRURecConfig, LRURecModel

    torch.manual_seed(0)
    model = LRURecModel(LRURecConfig(n_items=200, hidden_size=32, num_layers=2))
    with torch.no_grad():
        model.item_embedding.weight.normal_(0, 1.0)
    model.eval()
    code, rep = T.run("lrurec", str(tmp_path), plugin_lib=str(plugin_lib), model=model, max_batch=512,
                      exclude_seen=True)
    assert code == T.EXIT_OK, rep
    assert rep["engine_verification"]["passed"]
    assert json.loads((tmp_path / "state_spec.json").read_text())["exclude_seen"] is True


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_engine_build_candidates(tmp_path, plugin_lib):
    """A --candidates Mamba4Rec step graph (candidates [B, C], C in the profile [1, 64, max_candidates]) builds and
    matches PyTorch's candidate-masked scores on the GPU, empty top-k slots included."""
    _need_builder()
    from export import trt as T
    from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel

    torch.manual_seed(0)
    model = Mamba4RecModel(Mamba4RecConfig(n_items=200, hidden_size=32, num_layers=2, d_state=16))
    with torch.no_grad():
        model.item_embedding.weight.normal_(0, 1.0)
    model.eval()
    code, rep = T.run("mamba4rec", str(tmp_path), plugin_lib=str(plugin_lib), model=model, max_batch=512,
                      candidates=True, max_candidates=128)
    assert code == T.EXIT_OK, rep
    assert rep["engine_verification"]["passed"]
    assert json.loads((tmp_path / "state_spec.json").read_text())["candidates"] is True


def test_plugin_docs_are_current():
    """*_PluginConfig.yaml and the README I/O tables are generated from plugin_spec (python plugins/gen_spec_header.py
    --docs rewrites them)."""
    stale = gen_header.write_docs(gen_header.load_spec(str(ROOT / "export" / "plugin_spec.py")), check=True)
    assert not stale, f"regenerate with `python plugins/gen_spec_header.py --docs`: {stale}"
    import yaml

    for op in ps.SCAN_OPS.values():
        y = yaml.safe_load((ROOT / "plugins" / gen_header.PLUGIN_DIRS[op.op_type]
                            / f"{op.op_type}_PluginConfig.yaml").read_text())
        v = y["versions"][ps.PLUGIN_VERSION]
        assert (y["name"], y["namespace"], v["inputs"], v["outputs"]) == \
            (op.op_type, ps.PLUGIN_NAMESPACE, op.input_names, op.output_names)
        assert v["attributes"] == list(op.attributes)


def test_autoregister_is_opt_in_and_says_when_no_tensorrt(plugin_lib):
    """ZOO_TRT_PLUGINS_AUTOREGISTER=1 (for dlopen-only loaders such as Triton): without TensorRT in the process the
    library still loads and says that nothing was registered."""
    env = dict(os.environ, ZOO_TRT_PLUGINS_AUTOREGISTER="1")
    code = f"import ctypes; ctypes.CDLL({str(plugin_lib)!r}); print('loaded')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "loaded" in r.stdout
    assert "no TensorRT library is loaded" in r.stderr


def test_autoregister_is_version_guarded(plugin_lib):
    """With the lean runtime in the process, auto-registration never registers into a TensorRT of another major
    version than the headers', and says so; with the same major it registers every creator."""
    lean, why = _lean_probe()
    if lean is None:
        pytest.skip(why)
    env = dict(os.environ, ZOO_TRT_PLUGINS_AUTOREGISTER="1")
    hdr = BP.tensorrt_header_version(Path(BP.find_tensorrt_include()[0]))
    rt_major = lean.__version__.split(".")[0]
    code = (f"import {lean.__name__} as trt, ctypes; ctypes.CDLL({str(plugin_lib)!r}); "
            f"print(sorted(c.name for c in trt.get_plugin_registry().all_creators if c.plugin_namespace == 'zoo'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    if hdr is not None and hdr.split(".")[0] != rt_major:
        assert "not auto-registering" in r.stderr and r.stdout.strip().endswith("[]")
    else:
        assert r.stdout.strip().endswith(str(sorted(ps.SCAN_OPS)))


def test_ssd_reference_agrees_with_selective_scan():
    """The harness's SSD reference (used against the SSDScan kernel on a GPU) equals the Mamba-1 loop when every head
    is one channel (P = 1, one group) with A broadcast over the state."""
    from zoo.ops.selective_scan import selective_scan_loop

    g = torch.Generator().manual_seed(0)
    b, T, E, N = 2, 9, 5, 4
    x, dt = torch.randn(b, T, E, 1, generator=g), torch.randn(b, T, E, generator=g)
    A, D, db = -torch.rand(E, generator=g), torch.randn(E, generator=g), torch.randn(E, generator=g)
    Bm, Cm = torch.randn(b, T, 1, N, generator=g), torch.randn(b, T, 1, N, generator=g)
    h0 = torch.randn(b, E, 1, N, generator=g)
    y, h = harness.ssd_scan_ref(x, dt, A, Bm, Cm, D, db, h0)
    y2, h2 = selective_scan_loop(x[..., 0].transpose(1, 2), dt.transpose(1, 2), A[:, None].expand(E, N), Bm[:, :, 0]
                                 .transpose(1, 2), Cm[:, :, 0].transpose(1, 2), D, None, db, True, True, h0[:, :, 0])
    torch.testing.assert_close(y[..., 0], y2.transpose(1, 2))
    torch.testing.assert_close(h[:, :, 0], h2)
    # groups: G = H (each head its own B/C) equals running each head separately with G = 1
    H, P, G = 4, 3, 4
    x, dt = torch.randn(b, T, H, P, generator=g), torch.randn(b, T, H, generator=g)
    A, D, db = -torch.rand(H, generator=g), torch.randn(H, generator=g), torch.randn(H, generator=g)
    Bm, Cm = torch.randn(b, T, G, N, generator=g), torch.randn(b, T, G, N, generator=g)
    h0 = torch.randn(b, H, P, N, generator=g)
    y, h = harness.ssd_scan_ref(x, dt, A, Bm, Cm, D, db, h0)
    for hd in range(H):
        yh, hh = harness.ssd_scan_ref(x[:, :, hd:hd + 1], dt[:, :, hd:hd + 1], A[hd:hd + 1], Bm[:, :, hd:hd + 1],
                                      Cm[:, :, hd:hd + 1], D[hd:hd + 1], db[hd:hd + 1], h0[:, hd:hd + 1])
        torch.testing.assert_close(y[:, :, hd:hd + 1], yh)
        torch.testing.assert_close(h[:, hd:hd + 1], hh)


def test_kernel_cases_cover_the_matrix():
    ids = [c.id for c in KERNEL_CASES]
    assert len(ids) == len(set(ids))
    for op in ps.SCAN_OPS:
        cs = [c for c in KERNEL_CASES if c.op == op]
        assert {c.dtype for c in cs} == {torch.float32, torch.float16, torch.bfloat16}
        assert {c.T for c in cs} == {1, 200} and {c.with_h0 for c in cs} == {False, True}


def test_ssd_reference_agrees_with_zoo_ssd_ops():
    ssd = pytest.importorskip("zoo.ops.ssd")
    g = torch.Generator().manual_seed(1)
    b, T, H, P, G, N = 2, 13, 4, 3, 2, 5
    x, dt = torch.randn(b, T, H, P, generator=g), torch.randn(b, T, H, generator=g)
    A, D, db = -torch.rand(H, generator=g), torch.randn(H, generator=g), torch.randn(H, generator=g)
    Bm, Cm = torch.randn(b, T, G, N, generator=g), torch.randn(b, T, G, N, generator=g)
    h0 = torch.randn(b, H, P, N, generator=g)
    y, h = harness.ssd_scan_ref(x, dt, A, Bm, Cm, D, db, h0, dt_softplus=True)
    y2, h2 = ssd.ssd_scan_fn(x, dt, A, Bm, Cm, D=D, dt_bias=db, dt_softplus=True, initial_state=h0)
    torch.testing.assert_close(y, y2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, h2, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------- generated header
def _header_blocks(text: str) -> dict:
    """{op_type: {constant: value}} of the generated header: ints as int, ``kOut_x``-style references resolved,
    arrays as lists (strings unquoted, true/false as bool)."""
    import re

    out = {}
    for op in ps.SCAN_OPS:
        body = text.split(f"namespace {op}\n{{\n", 1)[1].split(f"}} // namespace {op}", 1)[0]
        consts: dict = {}
        for name, arr, val in re.findall(r"constexpr [\w ]+?\*? ?(k\w+)(\[\])? = ([^;]+);", body):
            val = val.strip()
            if arr:
                items = [v.strip() for v in val.strip("{}").split(",") if v.strip()]
                consts[name] = [v.strip('"') if v.startswith('"') else {"true": True, "false": False}.get(v, v)
                                for v in items]
            elif val.startswith('"'):
                consts[name] = val.strip('"')
            else:
                consts[name] = consts[val] if val in consts else int(val)
        out[op] = consts
    return out


def test_generated_header_blocks_follow_spec():
    """Per op: counts, names, field list, activation flags and the aliased (in-place) state pair the plugins compile
    in, against plugin_spec: the state output aliases the state input of the same shape, both fp32."""
    blocks = _header_blocks(gen_header.render(gen_header.load_spec(str(ROOT / "export" / "plugin_spec.py"))))
    for op in ps.SCAN_OPS.values():
        b = blocks[op.op_type]
        assert (b["kNbInputs"], b["kNbOutputs"], b["kNbFields"]) == (len(op.inputs), len(op.outputs),
                                                                     len(op.attributes)), op.op_type
        assert b["kInputNames"] == op.input_names and b["kOutputNames"] == op.output_names
        assert b["kFieldNames"] == (list(op.attributes) or ["nullptr"])
        acts = op.activations
        assert acts <= set(op.input_names) | set(op.output_names), op.op_type
        assert b["kIsActivation"] == [t.name in acts for t in (*op.inputs, *op.outputs)]
        assert b["kIsActivation"][0], "ZooScanPluginBase expects an activation at I/O position 0"
        alias = gen_header.ALIASES[op.op_type]
        if not alias:
            assert (b["kAliasedOutput"], b["kAliasedInput"]) == (-1, -1)
            continue
        (o, i), = alias.items()
        assert (b["kAliasedOutput"], b["kAliasedInput"]) == (op.output_names.index(o), op.input_names.index(i))
        to, ti = op.outputs[op.output_names.index(o)], op.inputs[op.input_names.index(i)]
        assert to.shape == ti.shape and to.dtype == ti.dtype == "float32" and o not in acts and i not in acts


def test_generator_tables_cover_every_spec_op():
    assert set(gen_header.PLUGIN_DIRS) == set(gen_header.ALIASES) == set(ps.SCAN_OPS)
    assert not hasattr(gen_header, "ACTIVATIONS")          # one table: ScanOpSpec.activations in export/plugin_spec.py
    from export.emulated_plugins import activations

    assert activations() == {k: op.activations for k, op in ps.SCAN_OPS.items()}        # what the emulated runner uses
    for op in ps.SCAN_OPS.values():
        assert (ROOT / "plugins" / gen_header.PLUGIN_DIRS[op.op_type]).is_dir()
        assert op.input_names[0] in op.activations, op.op_type       # the activation dtype is input 0's
        for k, (typ, default, _doc) in op.attributes.items():
            assert typ == "int" and default in (0, 1), (op.op_type, k)     # the yaml lists options 0 / 1


def test_scan_op_spec_refuses_activations_outside_its_io():
    with pytest.raises(ValueError, match=r"SelectiveScan: activations \['v'\] are not among its inputs/outputs"):
        ps.ScanOpSpec("SelectiveScan", (ps.TensorSpec("u", "B", "float32"),), (ps.TensorSpec("y", "B", "float32"),),
                      activations={"u", "y", "v"})
    assert ps.ScanOpSpec("X", (ps.TensorSpec("u", "B", "float32"),), (), activations=["u"]).activations == {"u"}


def test_gen_header_refuses_bad_spec_names_and_types():
    spec = gen_header.load_spec(str(ROOT / "export" / "plugin_spec.py"))
    bad = ps.ScanOpSpec("SelectiveScan", (ps.TensorSpec("u-x", "B", "float32"),), (ps.TensorSpec("y", "B", "float32"),))
    with pytest.raises(ValueError, match=r"plugin_spec name 'u-x' is not a valid C\+\+ identifier"):
        gen_header.render(_spec_with(spec, SCAN_OPS={"SelectiveScan": bad}))
    flt = ps.ScanOpSpec("SelectiveScan", (ps.TensorSpec("u", "B", "float32"),), (ps.TensorSpec("y", "B", "float32"),),
                        attributes={"eps": ("float", 0.5, "")})
    with pytest.raises(ValueError, match=r"SelectiveScan\.eps: only int attributes are supported by the plugins, "
                                         r"got float"):
        gen_header.render(_spec_with(spec, SCAN_OPS={"SelectiveScan": flt}))


def _spec_with(mod, **over):
    """The spec module's constants with some replaced (what gen_header.render reads)."""
    import types

    base = {k: getattr(mod, k) for k in ("PLUGIN_NAMESPACE", "PLUGIN_VERSION", "ONNX_DOMAIN", "PLUGIN_LIBRARY",
                                         "SCAN_OPS")}
    return types.SimpleNamespace(**{**base, **over})


def test_gen_header_main_writes_only_on_change(tmp_path):
    out = tmp_path / "gen" / "zooPluginSpec.h"
    assert gen_header.main([str(out), "--spec", str(ROOT / "export" / "plugin_spec.py")]) == 0
    text = out.read_text()
    assert text == gen_header.render(gen_header.load_spec(str(ROOT / "export" / "plugin_spec.py")))
    os.utime(out, (1, 1))
    assert gen_header.main([str(out)]) == 0 and out.stat().st_mtime == 1      # unchanged: not rewritten
    out.write_text("stale")
    assert gen_header.main([str(out)]) == 0 and out.read_text() == text


def test_write_docs_check_mode_writes_nothing(tmp_path):
    """``write_docs(check=True)`` (the docs test) only reports stale files; without check it rewrites them."""
    spec = gen_header.load_spec(str(ROOT / "export" / "plugin_spec.py"))
    for d in gen_header.PLUGIN_DIRS.values():
        shutil.copytree(ROOT / "plugins" / d, tmp_path / d, ignore=shutil.ignore_patterns("*.cu", "*.cpp", "*.h",
                                                                                           "CMakeLists.txt"))
    assert gen_header.write_docs(spec, str(tmp_path), check=True) == []
    y = tmp_path / "lruScanPlugin" / "LRUScan_PluginConfig.yaml"
    r = tmp_path / "ssdScanPlugin" / "README.md"
    good_y, good_r = y.read_text(), r.read_text()
    y.write_text(good_y.replace("u_im", "u_imag"))
    r.write_text(good_r.replace("| 0 | in |", "| 9 | in |", 1))
    assert sorted(gen_header.write_docs(spec, str(tmp_path), check=True)) == sorted([str(y), str(r)])
    assert y.read_text() != good_y and r.read_text() != good_r                 # check mode wrote nothing
    assert sorted(gen_header.write_docs(spec, str(tmp_path))) == sorted([str(y), str(r)])
    assert (y.read_text(), r.read_text()) == (good_y, good_r)                  # rewritten
    assert gen_header.write_docs(spec, str(tmp_path), check=True) == []
    r.write_text("# no table markers\n")                                       # never guessed where a table goes
    assert gen_header.write_docs(spec, str(tmp_path)) == [str(r)] and r.read_text() == "# no table markers\n"


# ---------------------------------------------------------------------------------------------------- build_plugins
def test_find_tensorrt_include_precedence(tmp_path, monkeypatch):
    def hdrs(p):
        p.mkdir(parents=True)
        (p / "NvInferRuntime.h").write_text("")
        return p

    inc, root, envroot = hdrs(tmp_path / "inc"), tmp_path / "root", tmp_path / "envroot"
    hdrs(root / "include"), hdrs(envroot / "include")
    (root / "NvInferRuntime.h").write_text("")          # a root's headers are in <root>/include, not the root itself
    monkeypatch.delenv("TENSORRT_ROOT", raising=False)
    monkeypatch.setenv("TensorRT_ROOT", str(envroot))
    assert BP.find_tensorrt_include(str(inc), str(root)) == (inc, f"--tensorrt-include: {inc}")
    assert BP.find_tensorrt_include(None, str(root)) == (root / "include", f"--tensorrt-root: {root / 'include'}")
    assert BP.find_tensorrt_include() == (envroot / "include", f"$TensorRT_ROOT: {envroot / 'include'}")
    monkeypatch.delenv("TensorRT_ROOT")
    monkeypatch.setenv("TENSORRT_ROOT", str(envroot))
    assert BP.find_tensorrt_include()[1] == f"$TENSORRT_ROOT: {envroot / 'include'}"


@pytest.mark.parametrize("lines,version", [
    (["#define NV_TENSORRT_MAJOR 10", "#define NV_TENSORRT_MINOR 14", "#define NV_TENSORRT_PATCH 1"], "10.14.1"),
    (["#define TRT_MAJOR_ENTERPRISE 10", "#define TRT_MINOR_ENTERPRISE 3", "#define TRT_PATCH_ENTERPRISE 0",
      "#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE", "#define NV_TENSORRT_LWS_MAJOR 0"], "10.3.0"),
    (["#define NV_TENSORRT_MINOR 2"], "?.2.?"), (["// nothing"], None)])
def test_tensorrt_header_version(tmp_path, lines, version):
    (tmp_path / "NvInferVersion.h").write_text("\n".join(lines) + "\n")
    assert BP.tensorrt_header_version(tmp_path) == version
    assert BP.tensorrt_header_version(tmp_path / "absent") is None


def test_library_path_env_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("ZOO_TRT_PLUGIN_LIB", raising=False)
    monkeypatch.delenv("ZOO_SCAN_KERNELS_LIB", raising=False)
    assert BP.library_path(tmp_path) == tmp_path / ps.PLUGIN_LIBRARY
    assert BP.library_path(tmp_path, "kernels") == tmp_path / BP.KERNELS_LIBRARY
    assert BP.library_path() == BP.DEFAULT_BUILD_DIR / ps.PLUGIN_LIBRARY
    monkeypatch.setenv("ZOO_TRT_PLUGIN_LIB", "/x/plugins.so")
    monkeypatch.setenv("ZOO_SCAN_KERNELS_LIB", "/x/kernels.so")
    assert BP.library_path(tmp_path) == Path("/x/plugins.so")
    assert BP.library_path(tmp_path, "kernels") == Path("/x/kernels.so")


def _fake_cmake(monkeypatch, tmp_path, rc=(0, 0), tools=("cmake", "nvcc"), inc="/hdrs"):
    """BP.build with CMake, the tools lookup and the header search replaced: returns the commands run."""
    import types

    cmds = []

    def run(cmd, stdout=None, stderr=None, text=None):
        cmds.append(cmd)
        if cmd[:2] == ["cmake", "--build"]:
            (tmp_path / ps.PLUGIN_LIBRARY).write_bytes(b"so")
        return types.SimpleNamespace(returncode=rc[len(cmds) - 1], stdout=f"output of step {len(cmds)}\n")

    monkeypatch.setattr(BP, "subprocess", types.SimpleNamespace(run=run, PIPE=subprocess.PIPE, STDOUT=subprocess.STDOUT))
    monkeypatch.setattr(BP, "shutil", types.SimpleNamespace(which=lambda t: f"/bin/{t}" if t in tools else None))
    monkeypatch.setattr(BP, "find_tensorrt_include",
                        lambda i=None, r=None: (Path(inc), "given") if inc else (None, "no TensorRT headers: none"))
    return cmds


def test_build_configures_cmake(tmp_path, monkeypatch):
    cmds = _fake_cmake(monkeypatch, tmp_path)
    res = BP.build(tmp_path, arch="86", jobs=3, quiet=True)
    cfg, bld = cmds
    assert cfg[:5] == ["cmake", "-S", str(BP.PLUGINS_DIR), "-B", str(tmp_path)]
    assert {"-DCMAKE_CUDA_ARCHITECTURES=86", "-DZOO_REQUIRE_TENSORRT=OFF", "-DTensorRT_INCLUDE_DIR=/hdrs",
            f"-DPython3_EXECUTABLE={sys.executable}"} <= set(cfg)
    assert bld == ["cmake", "--build", str(tmp_path), "-j", "3"]
    assert res["plugins"] == tmp_path / ps.PLUGIN_LIBRARY and res["kernels"] == tmp_path / BP.KERNELS_LIBRARY
    assert res["log"] == "output of step 1\noutput of step 2\n"
    cmds.clear()
    BP.build(tmp_path, require_tensorrt=True, quiet=True)
    assert "-DZOO_REQUIRE_TENSORRT=ON" in cmds[0] and "-DZOO_REQUIRE_TENSORRT=OFF" not in cmds[0]


def test_build_stamps_the_library_with_its_sources_digest(tmp_path, monkeypatch):
    """The digest of the sources was recorded only by export.trt's own builds: a library made by
    ``python -m export.build_plugins`` (plugins/README's build step) had none, and export.trt rebuilt it ("no record of
    the sources"). BP.build records it now -- the digest taken before CMake runs -- and export.trt reuses that build."""
    from export import trt as T

    monkeypatch.delenv("ZOO_TRT_PLUGIN_LIB", raising=False)
    cmds = _fake_cmake(monkeypatch, tmp_path)
    digest = BP.plugin_sources_digest()
    res = BP.build(tmp_path, quiet=True)
    stamp = tmp_path / (ps.PLUGIN_LIBRARY + BP.SOURCES_STAMP_SUFFIX)
    assert BP.sources_stamp(res["plugins"]) == stamp and stamp.read_text() == digest + "\n"
    assert res["stamp_error"] is None
    cmds.clear()
    said = []
    assert T.ensure_plugin_library(None, str(tmp_path), say=said.append) == res["plugins"]
    assert cmds == [] and said == []                               # current: not built again
    stamp.write_text("0" * 64 + "\n")                             # sources changed since: rebuilt, stamped anew
    T.ensure_plugin_library(None, str(tmp_path), say=said.append)
    assert len(cmds) == 2 and stamp.read_text() == digest + "\n"


def test_build_interrupted_leaves_no_stamp_beside_a_half_built_library(tmp_path, monkeypatch):
    """The stamp of the last build stayed beside the library while CMake rebuilt it: a build killed while linking
    left the old record beside a half-linked library, which export.trt loaded once the sources were back as they were
    (a git checkout). The stamp goes before CMake runs now, and a library found without one is removed first (make
    would take a half-linked one as current), so that CMake links it again."""
    cmds = _fake_cmake(monkeypatch, tmp_path)
    plug = BP.build(tmp_path, quiet=True)["plugins"]
    stamp = BP.sources_stamp(plug)
    assert stamp.is_file()
    fake, seen = BP.subprocess.run, []

    def killed_while_linking(cmd, **kw):
        if cmd[:2] == ["cmake", "--build"]:
            seen.append((plug.exists(), stamp.exists()))
            plug.write_bytes(b"half-linked")
            raise KeyboardInterrupt
        return fake(cmd, **kw)

    monkeypatch.setattr(BP.subprocess, "run", killed_while_linking)
    cmds.clear()
    with pytest.raises(KeyboardInterrupt):
        BP.build(tmp_path, quiet=True)
    assert seen == [(True, False)] and not stamp.exists()          # the library stayed for make; its record did not

    def recorded(cmd, **kw):
        if cmd[:2] == ["cmake", "--build"]:
            seen.append((plug.exists(), stamp.exists()))
        return fake(cmd, **kw)

    monkeypatch.setattr(BP.subprocess, "run", recorded)
    cmds.clear()
    BP.build(tmp_path, quiet=True)
    assert seen[-1] == (False, False) and plug.read_bytes() == b"so"       # linked again, then stamped
    assert stamp.read_text() == BP.plugin_sources_digest() + "\n"


def test_build_emulated_links_under_a_temporary_name_under_a_lock(tmp_path, monkeypatch):
    """build_emulated linked ``g++ -o LIB`` in place and wrote its stamp after, with no lock: an interrupted rebuild
    left a half-linked library beside the stamp of the sources before (loaded as current once they were back), and a
    concurrent test worker could dlopen a library still being written. It links to a temporary name under the build
    folder's flock now, renames it into place, and writes the stamp after, having removed it first. The compiler is
    faked (it writes its -o file); the spec header generator runs."""
    import types

    import fcntl

    real, links = subprocess.run, []

    def run(cmd, **kw):
        if cmd[0] == sys.executable:                                    # gen_spec_header.py
            return real(cmd, **kw)
        out = Path(cmd[cmd.index("-o") + 1])
        with open(tmp_path / "emu" / ".zoo-build.flock") as f:          # the lock is held while it links
            with pytest.raises(BlockingIOError):
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        links.append(out)
        out.write_bytes(b"half" if "-DKILLED" in cmd else b"library %d" % len(links))
        if "-DKILLED" in cmd:
            raise KeyboardInterrupt
        return types.SimpleNamespace(returncode=0, stdout="")

    monkeypatch.setattr(BP, "subprocess", types.SimpleNamespace(run=run, PIPE=subprocess.PIPE,
                                                                STDOUT=subprocess.STDOUT))
    monkeypatch.setattr(BP, "_cxx", lambda: "/usr/bin/c++")
    lib = BP.build_emulated(tmp_path)
    stamp = lib.with_name(lib.name + ".sha256")
    assert lib.read_bytes() == b"library 1" and stamp.is_file() and links[0] != lib
    assert BP.build_emulated(tmp_path) == lib and len(links) == 1                  # current: not linked again
    with pytest.raises(KeyboardInterrupt):                                          # a rebuild killed while linking
        BP.build_emulated(tmp_path, extra_flags=("-DKILLED",))
    assert lib.read_bytes() == b"library 1" and not stamp.exists()                  # as it was, with no record
    assert sorted(p.name for p in lib.parent.iterdir() if p.name.startswith(".") and p.suffix == ".tmp") == []
    assert BP.build_emulated(tmp_path) == lib and lib.read_bytes() == b"library 3"  # no record: linked again
    assert stamp.is_file()


def test_build_removes_a_cmake_cache_of_another_checkout(tmp_path, monkeypatch, capsys):
    """A checkout copied or moved with its build/ failed to rebuild the plugins with CMake's "The current
    CMakeCache.txt directory ... is different than the directory ... where CMakeCache.txt was created" (and had
    already removed the library's stamp, so export.trt failed the same way next time). The stale cache (and its
    CMakeFiles/) is removed before configuring, with a note; a cache of this folder is kept."""
    cmds = _fake_cmake(monkeypatch, tmp_path, rc=(0,) * 6)

    def cache(home, build):
        (tmp_path / "CMakeCache.txt").write_text(f"# This is the CMakeCache file.\n"
                                                 f"CMAKE_CACHEFILE_DIR:INTERNAL={build}\n"
                                                 f"CMAKE_HOME_DIRECTORY:INTERNAL={home}\n")
        (tmp_path / "CMakeFiles").mkdir(exist_ok=True)
        (tmp_path / "CMakeFiles" / "x.o").write_bytes(b"o")

    cache(BP.PLUGINS_DIR, tmp_path)                                      # this checkout's: kept
    assert BP.stale_cmake_cache(tmp_path) is None
    res = BP.build(tmp_path, quiet=False)
    assert (tmp_path / "CMakeCache.txt").exists() and (tmp_path / "CMakeFiles" / "x.o").exists()
    assert "note: removed the CMake cache" not in capsys.readouterr().out and len(cmds) == 2
    for home, build in ((BP.PLUGINS_DIR, "/elsewhere/build/plugins"), ("/elsewhere/plugins", tmp_path)):
        cache(home, build)
        assert BP.stale_cmake_cache(tmp_path).startswith("it was made for the ")
        res = BP.build(tmp_path, quiet=False)
        out = capsys.readouterr().out
        assert f"note: removed the CMake cache in {tmp_path} (it was made for the " in out and "/elsewhere/" in out
        assert not (tmp_path / "CMakeCache.txt").exists() and not (tmp_path / "CMakeFiles").exists()
        assert res["plugins"] == tmp_path / ps.PLUGIN_LIBRARY and res["log"].startswith("note: removed")
    assert BP.stale_cmake_cache(tmp_path / "none") is None                # no cache: nothing to say


def test_build_reports_a_stamp_it_cannot_write(tmp_path, monkeypatch):
    _fake_cmake(monkeypatch, tmp_path)
    (tmp_path / (ps.PLUGIN_LIBRARY + BP.SOURCES_STAMP_SUFFIX)).mkdir()      # a folder where the stamp goes
    res = BP.build(tmp_path, quiet=True)
    assert res["plugins"] == tmp_path / ps.PLUGIN_LIBRARY
    assert res["stamp_error"].startswith(f"could not record the sources' digest beside {res['plugins']}: ")


def test_build_without_headers_reports_no_plugin_library(tmp_path, monkeypatch):
    cmds = _fake_cmake(monkeypatch, tmp_path, inc=None)
    res = BP.build(tmp_path, quiet=True)
    assert not [c for c in cmds[0] if c.startswith("-DTensorRT_INCLUDE_DIR")]
    assert res["plugins"] is None and res["tensorrt_headers"] == "no TensorRT headers: none"
    assert not (tmp_path / (ps.PLUGIN_LIBRARY + BP.SOURCES_STAMP_SUFFIX)).exists()      # no library, no stamp
    assert res["tensorrt_header_version"] is None


@pytest.mark.parametrize("rc,failed", [((1, 0), "cmake -S"), ((0, 2), "cmake --build")])
def test_build_failure_raises_with_output(tmp_path, monkeypatch, rc, failed):
    _fake_cmake(monkeypatch, tmp_path, rc=rc)
    with pytest.raises(BP.BuildError, match=f"{failed} .*failed \\(exit {max(rc)}\\):\noutput of step"):
        BP.build(tmp_path, quiet=True)


def test_build_needs_cmake(tmp_path, monkeypatch):
    _fake_cmake(monkeypatch, tmp_path, tools=("nvcc",))
    with pytest.raises(BP.BuildError, match="cmake not found on PATH"):
        BP.build(tmp_path, quiet=True)


def test_build_plugins_print_include(capsys, monkeypatch, tmp_path):
    """No TensorRT headers here: status 4, a TensorRT missing (the shared table); CMake takes any status but 0 so."""
    monkeypatch.setattr(BP, "find_tensorrt_include", lambda i=None, r=None: (None, "no TensorRT headers: none"))
    assert BP.main(["--print-trt-include"]) == BP.EXIT_MISSING == 4 and "no TensorRT headers" in capsys.readouterr().err
    monkeypatch.setattr(BP, "find_tensorrt_include", lambda i=None, r=None: (tmp_path, "given"))
    assert BP.main(["--print-trt-include"]) == 0 and capsys.readouterr().out.strip() == str(tmp_path)


def test_build_plugins_exit_statuses(tmp_path, monkeypatch, capsys):
    """``python -m export.build_plugins`` exits by the shared table: 1 for a build that ran and failed, 4 for what is
    missing here -- CMake or nvcc, or the TensorRT headers that ``--require-tensorrt`` asks for (CMakeLists.txt's
    FATAL_ERROR) -- each saying why on stderr."""
    import types

    _fake_cmake(monkeypatch, tmp_path, rc=(0, 2))
    assert BP.main(["--build-dir", str(tmp_path)]) == 1
    assert "build failed: cmake --build" in capsys.readouterr().err
    _fake_cmake(monkeypatch, tmp_path, tools=("nvcc",))
    assert BP.main(["--build-dir", str(tmp_path)]) == 4
    assert "build failed: cmake not found on PATH" in capsys.readouterr().err
    _fake_cmake(monkeypatch, tmp_path, inc=None)
    said = f"CMake Error at CMakeLists.txt:105 (message):\n  {BP._NO_TRT_HEADERS}: libzoo_trt_plugins.so is NOT built\n"
    monkeypatch.setattr(BP.subprocess, "run", lambda cmd, **kw: types.SimpleNamespace(returncode=1, stdout=said))
    assert BP.main(["--build-dir", str(tmp_path), "--require-tensorrt"]) == 4
    assert BP._NO_TRT_HEADERS in capsys.readouterr().err
    assert BP.main(["--build-dir", str(tmp_path)]) == 1              # not asked for: CMake failing so is a failed build


def test_what_the_emulated_builds_lack_here_is_a_missing_tool(tmp_path, monkeypatch):
    """The emulated builds' missing pieces -- a C++ compiler, its AddressSanitizer runtime, TensorRT's headers for the
    emulated plugin library -- raised a plain BuildError, which the harness and export.trt read as a build that ran
    and failed (1); they are ToolMissing now (4 by the shared table), as CMake and nvcc are."""
    import types

    monkeypatch.setattr(BP, "_cxx", lambda: None)
    with pytest.raises(BP.ToolMissing, match="no C\\+\\+ compiler"):
        BP.asan_runtime()
    monkeypatch.setattr(BP, "_cxx", lambda: "c++")
    monkeypatch.setattr(BP.subprocess, "run", lambda cmd, **kw: types.SimpleNamespace(returncode=0,
                                                                                     stdout="libasan.so\n"))
    with pytest.raises(BP.ToolMissing, match="has no AddressSanitizer runtime"):
        BP.asan_runtime()
    monkeypatch.undo()
    monkeypatch.setattr(BP, "find_tensorrt_include", lambda i=None, r=None: (None, "no TensorRT headers: none"))
    with pytest.raises(BP.ToolMissing, match="the emulated plugin library needs the TensorRT headers"):
        BP.build_emulated(tmp_path, plugins=True)


def test_build_plugins_runs_by_path(tmp_path):
    """CMake runs ``build_plugins.py --print-trt-include`` by path (no package): it must not die on its imports of
    export.fsutil (an ImportError traceback, status 1, made CMake take the headers for missing)."""
    r = subprocess.run([sys.executable, str(ROOT / "export" / "build_plugins.py"), "--print-trt-include"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert "Traceback" not in r.stderr and r.returncode in (0, 4), r.stderr
    assert (r.returncode == 0) == bool(r.stdout.strip()), (r.returncode, r.stdout, r.stderr)


# ---------------------------------------------------------------------------------------------------- harness on CPU
def _dims(case, T):
    return dict(case.shape, T=T)


@pytest.mark.parametrize("op", list(ps.SCAN_OPS))
@pytest.mark.parametrize("dtype", list(harness.DTYPE_CODE), ids=str)
def test_harness_inputs_follow_plugin_spec(op, dtype):
    """make_inputs gives every spec input (by name, in the spec's shape) with the activation dtype exactly where the
    plugin takes it (plugin_spec's ScanOpSpec.activations, what the generated header's kIsActivation is made from)
    and fp32 elsewhere; h0 only for with_h0 cases."""
    spec = ps.SCAN_OPS[op]
    acts = spec.activations
    for with_h0 in (False, True):
        case = harness.Case(op, dtype, 3, with_h0, harness.SHAPES[op][-1])
        d = harness.make_inputs(case, device="cpu")
        assert list(d) == spec.input_names
        for t in spec.inputs:
            v = d[t.name]
            if t.name.startswith("h0"):
                assert (v is not None) == with_h0, t.name
                if v is None:
                    continue
            assert v.dtype == (dtype if t.name in acts else torch.float32), (t.name, v.dtype)
            assert list(v.shape) == [_dims(case, 3)[a] for a in t.shape.split(",")], (t.name, t.shape)
            assert v.is_contiguous()


@pytest.mark.parametrize("op", list(ps.SCAN_OPS))
def test_harness_reference_matches_zoo_references(op):
    """harness.reference (float64 from the very inputs) equals the zoo's parallel references; the state outputs are
    the final states (LRU: the last step's row)."""
    from zoo.ops.lru import lru_scan_ref
    from zoo.ops.selective_scan import selective_scan_ref

    case = harness.Case(op, torch.float16, 7, True, harness.SHAPES[op][1])     # SSD: 2 groups of 3 heads
    d = harness.make_inputs(case, device="cpu", seed=3)
    acts, states = harness.reference(case, d)
    assert all(t.dtype == torch.float32 for t in (*acts, *states))
    x = {k: v.double() for k, v in d.items()}
    if op == "SelectiveScan":
        want = selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"],
                                  delta_softplus=True, return_last_state=True, initial_state=x["h0"])
        want = [want[0]], [want[1]]
    elif op == "SSDScan":
        y, h = harness.ssd_scan_ref(x["x"], x["dt"], x["A"], x["B"], x["C"], x["D"], x["dt_bias"], x["h0"])
        want = [y], [h]
    else:
        h_re, h_im = lru_scan_ref(x["u_re"], x["u_im"], x["lam_re"], x["lam_im"], None, x["h0_re"], x["h0_im"])
        want = [h_re, h_im], [h_re[:, -1], h_im[:, -1]]
    for got, w in zip((*acts, *states), (*want[0], *want[1]), strict=True):
        torch.testing.assert_close(got, w.float(), atol=1e-5, rtol=1e-5)


def test_harness_compare_tolerances():
    """compare() fails a case on an activation or a state beyond its tolerance, in every precision."""
    def check(op, dtype, act_err, state_err, scale=1.0):
        case = harness.Case(op, dtype, 2, True, {})
        r = torch.full((2, 3), scale)
        n = 2 if op == "LRUScan" else 1
        got = ([r + act_err] * n, [r + state_err] * n)
        return harness.compare(case, got, ([r] * n, [r] * n))

    ok = check("SelectiveScan", torch.float32, 5e-5, 5e-5)
    assert ok["ok"] and ok["act_err"] == pytest.approx(5e-5, rel=1e-2) and ok["case"].startswith("SelectiveScan")
    assert not check("SelectiveScan", torch.float32, 2e-4, 0.0)["ok"]               # activation beyond 1e-4
    bad_state = check("SelectiveScan", torch.float32, 0.0, 1e-2)
    assert not bad_state["ok"] and bad_state["state_err"] == pytest.approx(1e-2, rel=1e-3)
    assert check("SSDScan", torch.float32, 0.0, 5e-4, scale=10.0)["ok"]             # state tol scales with |ref|
    assert not check("SSDScan", torch.float32, 0.0, 2e-3, scale=10.0)["ok"]
    assert check("SelectiveScan", torch.float16, 2e-3, 0.0)["ok"]                   # 1e-3 + 2e-3 * 1
    assert not check("SelectiveScan", torch.float16, 4e-3, 0.0)["ok"]
    assert not check("SelectiveScan", torch.bfloat16, 0.0, 1e-3)["ok"]             # Mamba states are fp32
    assert check("LRUScan", torch.bfloat16, 0.0, 2e-2)["ok"]                        # LRU "states": act dtype
    assert not check("LRUScan", torch.bfloat16, 0.0, 3e-2)["ok"]


def _c_prototypes(header: str) -> dict:
    """{function: [param C types]} of the ZOO_API declarations."""
    import re

    out = {}
    for name, params in re.findall(r"ZOO_API\s+[\w\s\*]+?\b(zoo_\w+)\(([^)]*)\)", header):
        out[name] = [" ".join(p.split()[:-1]) if len(p.split()) > 1 else p for p in
                     (q.strip() for q in params.split(",")) if p]
    return out


def test_harness_dtype_codes_match_kernels_abi():
    import re

    header = (ROOT / "plugins" / "common" / "zooScanKernels.h").read_text()
    enum = {k: int(v) for k, v in re.findall(r"kZOO_(\w+)\s*=\s*(\d+)", header)}
    assert enum == {"FLOAT32": 0, "FLOAT16": 1, "BFLOAT16": 2}
    assert harness.DTYPE_CODE == {torch.float32: enum["FLOAT32"], torch.float16: enum["FLOAT16"],
                                  torch.bfloat16: enum["BFLOAT16"]}


def test_harness_ctypes_signatures_match_kernels_abi(monkeypatch):
    """The ctypes argtypes of ScanKernels equal the C prototypes of zooScanKernels.h position by position (pointer
    vs int32), so a launcher change cannot silently shift the arguments."""
    import ctypes

    import types

    class FakeCDLL:  # records what ScanKernels declares; no library, compiler or GPU needed
        def __init__(self, path):
            self.path = path

        def __getattr__(self, name):
            f = types.SimpleNamespace(argtypes=None, restype=None)
            setattr(self, name, f)
            return f

    monkeypatch.setattr(harness.ctypes, "CDLL", FakeCDLL)
    protos = _c_prototypes((ROOT / "plugins" / "common" / "zooScanKernels.h").read_text())
    assert set(protos) >= {"zoo_selective_scan", "zoo_ssd_scan", "zoo_lru_scan", "zoo_scan_max_state",
                           "zoo_trt_plugins_spec_json"}, protos
    k = harness.ScanKernels("/nonexistent/libzoo_scan_kernels.so")
    for fn in ("zoo_selective_scan", "zoo_ssd_scan", "zoo_lru_scan"):
        assert all(p == "int32_t" or "*" in p or p == "cudaStream_t" for p in protos[fn]), protos[fn]
        want = [ctypes.c_int32 if p == "int32_t" else ctypes.c_void_p for p in protos[fn]]
        assert list(getattr(k.lib, fn).argtypes) == want, fn
        assert getattr(k.lib, fn).restype == ctypes.c_int32, fn


def test_harness_refuses_host_and_strided_tensors():
    """The GPU library takes contiguous CUDA tensors only; the CPU-emulated one contiguous CPU tensors only."""
    k = object.__new__(harness.ScanKernels)     # the pointer check alone: no library loaded
    k.emulated, k.device = False, "cuda"
    assert k._p(None) is None
    with pytest.raises(ValueError, match="kernel inputs must be contiguous CUDA tensors"):
        k._p(torch.zeros(4))
    if CUDA:
        with pytest.raises(ValueError, match="kernel inputs must be contiguous CUDA tensors"):
            k._p(torch.zeros(4, 4, device="cuda").t())
    k.emulated, k.device = True, "cpu"
    assert k._p(torch.zeros(4)) is not None
    with pytest.raises(ValueError, match=r"contiguous CPU tensors \(this is the CPU-emulated kernels library\)"):
        k._p(torch.zeros(4, 4).t())
