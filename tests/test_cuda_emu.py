"""The plugins' CUDA kernels run on the CPU (plugins/emu/, ``python -m export.build_plugins --emulated``).

No GPU has been lent to most sessions, so the kernel sources the TensorRT plugins launch are also compiled for the
CPU against a small SIMT emulator (each CUDA thread a fiber, warp shuffles resolved per warp) and compared with the
PyTorch references on the very cases the GPU test runs (``harness.cases``: shapes x fp32/fp16/bf16 x T = 1 and 200 x
zero/given initial state, plus in-place state), with the same tolerances. Outputs start as a NaN pattern between
guard words (an unwritten element or a stray write fails), and an AddressSanitizer build runs the matrix again so a
read outside any input fails too.

The TensorRT plugin classes are compiled against the same emulated kernels too (with the TensorRT headers, no
TensorRT library): each case then runs through the creator, the plugin's fields and its ``enqueue``, so the mapping of
tensor dims to kernel arguments is checked with numbers.

The emulator is tested first: fp16/bf16 conversions against torch on every bit pattern, team sums and PTX's
segment rule for ``__shfl_xor_sync``, each undefined use of a shuffle refused with its reason, and mutated kernels
(a wrong index, a stray write, an out-of-bounds read) caught -- so a pass means something. Its fiber switch
(``plugins/emu/zooFiber.h``: user space on x86-64 and aarch64, ucontext with ``-DZOO_EMU_UCONTEXT``) is tested in both
builds: the same outputs bit for bit, callee-saved registers and floating-point control state kept per thread (with
mutated switches as negative controls), no system call per switch, and the aarch64 one under qemu where a cross
compiler is installed.

What only a GPU shows (its expf within 2 ulp, scheduling, memory coalescing, timings) stays in the ``gpu`` tests.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from export import build_plugins as BP

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "plugins" / "harness.py"


def _harness():
    mod = sys.modules.get("zoo_scan_harness")
    if mod is None:
        spec = importlib.util.spec_from_file_location("zoo_scan_harness", HARNESS)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["zoo_scan_harness"] = mod
        spec.loader.exec_module(mod)
    return mod


harness = _harness()
KERNEL_CASES = list(harness.cases(long_T=200))
SELFTEST = ROOT / "plugins" / "emu" / "emuSelfTest.cu"


def _need_cxx():
    if BP._cxx() is None:
        pytest.skip("no C++ compiler ($CXX, c++, g++, clang++): the emulated kernels cannot be built")


@pytest.fixture(scope="session")
def emu_dir(tmp_path_factory):
    _need_cxx()
    return tmp_path_factory.mktemp("emu_build")


@pytest.fixture(scope="session")
def emulated(emu_dir):
    return harness.ScanKernels(BP.build_emulated(emu_dir))


#: the emulator's fiber switches (plugins/emu/zooFiber.h): the default (user space on x86-64 and aarch64) and the
#: ucontext fallback, each a build of the same sources
SWITCHES = {"default": (), "ucontext": ("-DZOO_EMU_UCONTEXT",)}
#: what zoo_emu_fiber_switch() names the default here
FAST_SWITCH = {"x86_64": "x86-64 (user-space switch)", "aarch64": "aarch64 (user-space switch)"}.get(
    platform.machine(), "ucontext (swapcontext)")


@pytest.fixture(scope="session", params=list(SWITCHES))
def selftest(request, emu_dir):
    """The emulator's own test kernels (emuSelfTest.cu), once with each fiber switch."""
    lib = ctypes.CDLL(str(BP.build_emulated(emu_dir, kernels=[SELFTEST], out_name=f"libemu_selftest_{request.param}.so",
                                            extra_flags=SWITCHES[request.param])))
    lib.zoo_emu_last_error.restype = ctypes.c_char_p
    lib.zoo_emu_fiber_switch.restype = ctypes.c_char_p
    lib.switch = request.param
    return lib


def _p(t):
    return ctypes.c_void_p(t.data_ptr())


# ---------------------------------------------------------------------------------------------------- the kernels
@pytest.mark.parametrize("case", KERNEL_CASES, ids=[c.id for c in KERNEL_CASES])
def test_emulated_kernel_matches_reference(emulated, case):
    """The kernel sources of plugins/*Plugin/*Kernel.cu, run by the emulator, equal the float64 PyTorch reference
    under the GPU test's tolerances (fp32: 1e-4 absolute on outputs and states; fp16/bf16: 2 ulp of the dtype),
    out of place and with the state updated in place."""
    for res in harness.check_case(emulated, case, seed=zlib.crc32(case.id.encode()) % 10_000):
        assert res["ok"], res
        if case.dtype == torch.float32:
            assert res["act_err"] <= 1e-4, res


def test_emulated_library_exports_the_kernels_abi(emulated):
    """Same C ABI as libzoo_scan_kernels.so (the harness binds both the same way), same spec constants, and host
    tensors only: a CUDA-looking call is refused before the kernel runs."""
    from export import plugin_spec as ps

    assert emulated.emulated and emulated.device == "cpu"
    assert emulated.max_state() == 256
    spec = emulated.spec()
    assert set(spec["ops"]) == set(ps.SCAN_OPS) and spec["namespace"] == ps.PLUGIN_NAMESPACE
    case = harness.Case("LRUScan", torch.float32, 3, False, dict(B=1, N=4))
    d = harness.make_inputs(case, device="cpu")
    with pytest.raises(ValueError, match="contiguous CPU tensors"):
        emulated.lru_scan(d["u_re"].transpose(1, 2), d["u_im"], d["lam_re"], d["lam_im"])
    # a state larger than the kernels take: the launcher's own check, reported as a CUDA error
    case = harness.Case("SelectiveScan", torch.float32, 2, False, dict(B=1, E=2, N=257))
    d = harness.make_inputs(case, device="cpu")
    with pytest.raises(RuntimeError, match="zoo_selective_scan: CUDA error 1"):
        harness.run_kernel(emulated, case, d)


@pytest.mark.parametrize("case", [c for c in harness.cases(long_T=12) if c.with_h0 and c.dtype != torch.float32
                                  or c.id.endswith(("N5", "N7", "N33"))], ids=lambda c: c.id)
def test_emulated_kernels_do_not_depend_on_thread_order(emulated, case):
    """Blocks and threads run in order, reversed and in two random orders: every output equals the in-order run bit
    for bit, in place too. A kernel reading another thread's write without synchronisation (a race on a GPU) would
    differ (negative control: test_emulator_schedules_expose_a_race)."""
    d = harness.make_inputs(case, device="cpu", seed=7)
    try:
        runs = []
        for mode, seed in (("in-order", 0), ("reversed", 0), ("random", 1), ("random", 2)):
            emulated.set_schedule(mode, seed)
            for in_place in (False, True) if case.op != "LRUScan" else (False,):
                runs.append((mode, seed, in_place, harness.run_kernel(emulated, case, d, in_place=in_place)))
    finally:
        emulated.set_schedule("in-order")
    first = {ip: out for m, _, ip, out in runs if m == "in-order"}
    for mode, seed, in_place, (acts, states) in runs:
        ref_acts, ref_states = first[in_place]
        for a, b in zip(acts + states, ref_acts + ref_states):
            assert torch.equal(a, b), (mode, seed, in_place)


@pytest.mark.parametrize("op", ["SelectiveScan", "SSDScan"])
def test_emulated_state_chunks_compose(emulated, op):
    """The central invariant at the kernel level: one call over T steps equals a call over a prefix followed by single
    steps, each continuing from the state the previous call wrote in place (how the stepwise engine uses the plugin)."""
    shape = dict(B=2, E=12, N=16) if op == "SelectiveScan" else dict(B=2, H=3, P=4, G=1, N=16)
    case = harness.Case(op, torch.float32, 9, True, shape)
    d = harness.make_inputs(case, device="cpu", seed=3)
    full, _ = harness.run_kernel(emulated, case, d)
    h = d["h0"].clone()
    ys = []
    t_axis = 2 if op == "SelectiveScan" else 1
    for lo, hi in ((0, 5), (5, 6), (6, 7), (7, 8), (8, 9)):
        part = {k: v for k, v in d.items()}
        for k in ("u", "delta", "B", "C", "z") if op == "SelectiveScan" else ("x", "dt", "B", "C"):
            part[k] = d[k].narrow(t_axis, lo, hi - lo).contiguous()
        part["h0"] = h
        sub = harness.Case(op, torch.float32, hi - lo, True, shape)
        ys_, hs = harness.run_kernel(emulated, sub, part, in_place=True)   # writes the new state over a copy of h
        ys.append(ys_[0])
        h = hs[0]
    torch.testing.assert_close(torch.cat(ys, t_axis), full[0], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- the plugins
PLUGIN_CASES = list(harness.cases(long_T=16))


@pytest.fixture(scope="session")
def emulated_plugins(emu_dir):
    try:
        return harness.ScanKernels(BP.build_emulated(emu_dir, plugins=True))
    except BP.BuildError as e:
        if "TensorRT headers" in str(e):
            pytest.skip(f"the emulated plugin library needs the TensorRT headers: {e}")
        raise


@pytest.mark.parametrize("case", PLUGIN_CASES, ids=[c.id for c in PLUGIN_CASES])
def test_emulated_plugin_enqueue_matches_reference(emulated_plugins, case):
    """The TensorRT plugins' runtime path without TensorRT: the creator found through getCreators makes the plugin
    from its fields (runtime phase), and its enqueue -- the mapping of the tensors' dims and types to the kernel's
    arguments -- runs the emulated kernel on the case's tensors in the spec's I/O order; out of place and with the
    state output aliased to the h0 input. Same references and tolerances as the kernel test."""
    for res in harness.check_case(emulated_plugins, case, seed=zlib.crc32(case.id.encode()) % 10_000, plugin=True):
        assert res["ok"], res


@pytest.mark.parametrize("op,field", [("SelectiveScan", "delta_softplus"), ("SSDScan", "dt_softplus")])
def test_emulated_plugin_fields_reach_the_kernel(emulated_plugins, op, field):
    """A plugin created with its softplus field 0 computes what the kernel computes without softplus (bit for bit),
    and something else than with it: the creator reads the field and the plugin passes it on."""
    shape = dict(B=2, E=8, N=16) if op == "SelectiveScan" else dict(B=2, H=4, P=4, G=2, N=8)
    case = harness.Case(op, torch.float32, 5, True, shape)
    d = harness.make_inputs(case, device="cpu", seed=5)
    k = emulated_plugins
    if op == "SelectiveScan":
        want = k.selective_scan(d["u"], d["delta"], d["A"], d["B"], d["C"], d["D"], d["z"], d["delta_bias"], d["h0"],
                                delta_softplus=False)
    else:
        want = k.ssd_scan(d["x"], d["dt"], d["A"], d["B"], d["C"], d["D"], d["dt_bias"], d["h0"], dt_softplus=False)
    got = harness.run_plugin(k, case, d, fields={field: 0})
    assert torch.equal(got[0][0], want[0]) and torch.equal(got[1][0], want[1])
    default = harness.run_plugin(k, case, d)
    assert not torch.equal(default[0][0], want[0])


def test_emulated_plugin_enqueue_names_unknown_ops(emulated_plugins):
    with pytest.raises(RuntimeError, match=r"Nope plugin enqueue: no creator of that name \(status -2\)"):
        emulated_plugins.plugin_enqueue("Nope", {}, [torch.zeros(1)], [torch.zeros(1)])


@pytest.mark.parametrize("rel,old,new,op,shape", [
    # A is [E, N]: N read from its first dim
    ("selectiveScanPlugin/selectiveScanPlugin.cpp", "static_cast<int32_t>(dA.d[1])", "static_cast<int32_t>(dA.d[0])",
     "SelectiveScan", dict(B=2, E=8, N=16)),
    # B is [B, T, G, N]: G and N swapped
    ("ssdScanPlugin/ssdScanPlugin.cpp", "static_cast<int32_t>(dB.d[2]), static_cast<int32_t>(dB.d[3])",
     "static_cast<int32_t>(dB.d[3]), static_cast<int32_t>(dB.d[2])", "SSDScan", dict(B=1, H=4, P=3, G=1, N=4)),
])
def test_emulated_plugin_check_catches_a_wrong_shape_mapping(tmp_path, emulated_plugins, emu_dir, rel, old, new, op,
                                                             shape):
    """Negative control: a plugin that maps one dim wrongly onto the kernel's arguments fails the plugin check."""
    src = ROOT / "plugins" / rel
    text = src.read_text()
    assert text.count(old) == 1
    (tmp_path / src.name).write_text(text.replace(old, new))
    lib = BP.build_emulated(emu_dir, plugins=True, out_name=f"libmut_plugin_{op}.so",
                            replace={src.name: tmp_path / src.name})
    k = harness.ScanKernels(lib)
    case = harness.Case(op, torch.float32, 4, True, shape)
    assert all(r["ok"] for r in harness.check_case(emulated_plugins, case, seed=2, plugin=True))
    assert not any(r["ok"] for r in harness.check_case(k, case, seed=2, plugin=True))


# ---------------------------------------------------------------------------------------------------- whole graphs
def _tiny_step_model(name: str):
    """Tiny step models with each kind of scan node (the sizes of tests/test_export_onnx.py)."""
    from zoo.models.lrurec import LRURecConfig, LRURecModel
    from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel
    from zoo.models.tim4rec_causal import TiM4RecCausalConfig, TiM4RecCausalModel

    torch.manual_seed(0)
    if name == "mamba4rec":
        m = Mamba4RecModel(Mamba4RecConfig(n_items=60, hidden_size=16, num_layers=2, d_state=8,
                                           initializer_range=0.1))
    elif name == "lrurec":
        m = LRURecModel(LRURecConfig(n_items=60, hidden_size=16, num_layers=2))
    else:
        m = TiM4RecCausalModel(TiM4RecCausalConfig(n_items=60, hidden_size=16, num_layers=2, d_state=8, head_dim=8,
                                                   max_seq_length=50))
    with torch.no_grad():
        m.item_embedding.weight.normal_(0, 1.0)
    return m.eval()


STEP_GRAPHS = {"mamba4rec": "SelectiveScan", "lrurec": "LRUScan", "tim4rec_causal": "SSDScan"}


def _export(tmp_path, name):
    from export import onnx as E

    model = _tiny_step_model(name)
    ti = "gaps" if name == "tim4rec_causal" else None      # the form export.trt builds engines from
    res = E.export_model(model, tmp_path / name, kind="step", topk=10, with_scores=True, verify=False, time_input=ti)
    return model, res


@pytest.mark.parametrize("name", list(STEP_GRAPHS))
def test_step_graph_verifies_with_its_scan_nodes_run_by_the_plugin(tmp_path, emulated_plugins, name):
    """An exported step graph run as a TensorRT engine would run our part of it: every scan node handed, with the
    node's own inputs and attributes, to the plugin's enqueue (CPU-emulated), the other nodes by ONNX's reference
    evaluator -- through export.verify's verifier against PyTorch (priming, single steps carrying the state, top-k
    on many rows), under the fp32 tolerances."""
    from export import verify as V
    from export.emulated_plugins import EmulatedPluginRunner

    model, res = _export(tmp_path, name)
    runner = EmulatedPluginRunner(res.graph_path, emulated_plugins.lib)
    rep = V.verify_export(model, res.graph_path, res.spec, runner=runner, prime_len=16, n_steps=6, batch=2,
                          topk_cases=16)
    assert rep.ok, rep.table()
    assert runner.calls[STEP_GRAPHS[name]] >= 2 * 2 and sum(runner.calls.values()) == runner.calls[STEP_GRAPHS[name]]


def test_emulated_graph_check_catches_a_wrong_plugin(tmp_path, emulated_plugins, emu_dir):
    """Negative control: the same graph with a plugin that drops its delta_softplus field (always 0) fails the
    verification. (A wrong dim mapping would fail too, but by reading and writing out of bounds: a crash here, an
    illegal address on a GPU; the ASan test covers that class.)"""
    from export import verify as V
    from export.emulated_plugins import EmulatedPluginRunner

    src = ROOT / "plugins" / "selectiveScanPlugin" / "selectiveScanPlugin.cpp"
    (tmp_path / src.name).write_text(src.read_text().replace("mDeltaSoftplus, stream);", "0, stream);"))
    lib = BP.build_emulated(emu_dir, plugins=True, out_name="libmut_graph.so", replace={src.name: tmp_path / src.name})
    model, res = _export(tmp_path, "mamba4rec")
    rep = V.verify_export(model, res.graph_path, res.spec, runner=EmulatedPluginRunner(res.graph_path, lib),
                          prime_len=8, n_steps=2, batch=2, topk_cases=4)
    assert not rep.ok


def test_run_op_refuses_what_a_plugin_cannot_take(emulated_plugins, capfd):
    import numpy as np

    from export.emulated_plugins import PluginError, run_op

    lib = emulated_plugins.lib
    z = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    with pytest.raises(PluginError, match=r"LRUScan needs its 6 inputs \['u_re', 'u_im', 'lam_re', 'lam_im', 'h0_re', "
                                          r"'h0_im'\] .*; the node gives 5"):
        run_op(lib, "LRUScan", {}, [z(1, 2, 3), z(1, 2, 3), z(3), z(3), z(1, 3), None])
    with pytest.raises(PluginError, match=r"LRUScan: input 'lam_re' is float16, the plugin takes float32"):
        run_op(lib, "LRUScan", {}, [z(1, 2, 3), z(1, 2, 3), z(3).astype(np.float16), z(3), z(1, 3), z(1, 3)])
    with pytest.raises(PluginError, match=r"activation dtype float64"):
        run_op(lib, "LRUScan", {}, [np.zeros((1, 2, 3)), np.zeros((1, 2, 3)), z(3), z(3), z(1, 3), z(1, 3)])
    # shapes the kernels cannot take are refused by configurePlugin, as TensorRT's builder calls it: such an engine
    # failed every enqueue instead of failing to build (the builder may never time a plugin with one tactic)
    build_fails = r"plugin enqueue: configurePlugin failed: the engine build would fail .*\(status -6\)"
    with pytest.raises(PluginError, match="SelectiveScan " + build_fails):        # N = 300 > 256
        run_op(lib, "SelectiveScan", {"delta_softplus": 1},
               [z(1, 2, 3), z(1, 2, 3), z(2, 300), z(1, 300, 3), z(1, 300, 3), z(2), z(1, 2, 3), z(2), z(1, 2, 300)])
    assert "SelectiveScan: the state size N (A's dim 1) must be in 1..zoo_scan_max_state() (256)" in \
        capfd.readouterr().err
    ssd = lambda H, G, N: [z(1, 2, H, 4), z(1, 2, H), z(H), z(1, 2, G, N), z(1, 2, G, N), z(H), z(H),  # noqa: E731
                           z(1, H, 4, N)]
    with pytest.raises(PluginError, match="SSDScan " + build_fails):
        run_op(lib, "SSDScan", {"dt_softplus": 1}, ssd(2, 1, 300))
    assert "SSDScan: the state size N (B's dim 3) must be in 1..zoo_scan_max_state()" in capfd.readouterr().err
    with pytest.raises(PluginError, match="SSDScan " + build_fails):
        run_op(lib, "SSDScan", {"dt_softplus": 1}, ssd(3, 2, 8))
    assert "SSDScan: the heads H (x's dim 2) must be a multiple of the groups G" in capfd.readouterr().err
    assert [o.shape for o in run_op(lib, "SSDScan", {"dt_softplus": 1}, ssd(4, 2, 8))] == [(1, 2, 4, 4), (1, 4, 4, 8)]
    out = run_op(lib, "LRUScan", {}, [z(1, 2, 3), z(1, 2, 3), z(3), z(3), z(1, 3) + 1, z(1, 3)])
    assert [o.shape for o in out] == [(1, 2, 3), (1, 2, 3)] and out[0][0, 0, 0] == 0.0


@pytest.mark.parametrize("op,shape,abi,dim", [
    ("SelectiveScan", dict(B=1, E=2, N=4), "zoo_selective_scan", "u's dim 2"),
    ("SSDScan", dict(B=1, H=2, P=2, G=1, N=4), "zoo_ssd_scan", "x's dim 1"),
    ("LRUScan", dict(B=1, N=4), "zoo_lru_scan", "u_re's dim 1")])
def test_a_scan_over_no_step_is_refused(emulated, emulated_plugins, capfd, op, shape, abi, dim):
    """T = 0 returned success from the kernels' C ABI and the plugins' enqueue without writing the state output (h
    held whatever its buffer held, here the emulator's NaN pattern): now the C ABI refuses it as an invalid value
    (cudaErrorInvalidValue, 1) and the plugin at configurePlugin (the engine build), naming T."""
    case = harness.Case(op, torch.float32, 0, True, shape)
    d = harness.make_inputs(case, device="cpu")
    with pytest.raises(RuntimeError, match=rf"^{abi}: CUDA error 1\b"):
        harness.run_kernel(emulated, case, d)
    with pytest.raises(RuntimeError, match=rf"{op} plugin enqueue: configurePlugin failed: .*\(status -6\)"):
        harness.run_plugin(emulated_plugins, case, d)
    assert f"{op}: the steps T ({dim}) must be >= 1" in capfd.readouterr().err
    one = harness.Case(op, torch.float32, 1, True, shape)       # the same shapes with one step run
    assert all(r["ok"] for r in harness.check_case(emulated_plugins, one, seed=0, plugin=True))


def test_export_trt_exits_3_when_the_emulated_plugin_check_fails(tmp_path, monkeypatch, emu_dir):
    """export.trt without TensorRT: a plugin that computes wrong makes the run fail verification (exit 3) instead of
    'TensorRT/GPU missing' (exit 4); nothing is written as an engine."""
    from export import trt as T

    src = ROOT / "plugins" / "selectiveScanPlugin" / "selectiveScanPlugin.cpp"
    (tmp_path / src.name).write_text(src.read_text().replace("mDeltaSoftplus, stream);", "0, stream);"))
    bad = BP.build_emulated(emu_dir, plugins=True, out_name="libmut_trt.so", replace={src.name: tmp_path / src.name})
    monkeypatch.setattr(BP, "build_emulated", lambda *a, **k: bad)
    monkeypatch.setattr(T, "probe_environment", lambda: T.Environment(
        tensorrt_error="ImportError: fake", gpu_error="fake: no GPU", missing=["TensorRT builder: fake", "GPU: fake"]))
    monkeypatch.setattr(T, "EMULATED_VERIFY_QUICK", dict(prime_len=8, n_steps=2, batch=2, topk_cases=4))
    said = []
    code, rep = T.run("tiny", str(tmp_path / "out"), model=_tiny_step_model("mamba4rec"), quick=True,
                      plugin_lib=str(tmp_path / "none.so"), say=said.append)
    assert code == T.EXIT_VERIFY_FAILED == 3, "\n".join(said)
    assert rep["emulated_plugins"]["ok"] is False and "FAILED verification" in rep["status"]
    assert rep["onnx"]["verification"]["passed"] is True
    assert not (tmp_path / "out" / T.ENGINE_FILE).exists()


@pytest.mark.parametrize("error,code", [("plugin", 3), ("evaluator", 4)])
def test_export_trt_tells_a_refused_node_from_an_evaluator_limit(tmp_path, monkeypatch, emu_dir, error, code):
    """A scan node the plugin refuses (PluginError: TensorRT's engine would fail the same) fails the run, exit 3; a
    graph ONNX's reference evaluator cannot run is not the plugins' fault: the check is recorded as skipped, exit 4."""
    from export import emulated_plugins as EP
    from export import trt as T

    lib = BP.build_emulated(emu_dir, plugins=True)
    monkeypatch.setattr(BP, "build_emulated", lambda *a, **k: lib)

    class Broken:
        def __init__(self, *a, **k):
            if error == "plugin":
                raise EP.PluginError("SelectiveScan needs its 9 inputs; the node gives 8")
            raise NotImplementedError("Scan is not implemented for other input axes than 0.")

    monkeypatch.setattr(EP, "EmulatedPluginRunner", Broken)
    monkeypatch.setattr(T, "probe_environment", lambda: T.Environment(
        tensorrt_error="ImportError: fake", gpu_error="fake: no GPU", missing=["TensorRT builder: fake", "GPU: fake"]))
    said = []
    got, rep = T.run("tiny", str(tmp_path / "out"), model=_tiny_step_model("mamba4rec"), quick=True,
                     plugin_lib=str(tmp_path / "none.so"), say=said.append)
    text = "\n".join(said)
    assert got == code, text
    if error == "plugin":
        assert rep["emulated_plugins"]["ok"] is False and "the node gives 8" in rep["emulated_plugins"]["error"]
        assert "FAILED: SelectiveScan needs its 9 inputs" in text
    else:
        assert "NotImplementedError" in rep["emulated_plugins"]["skipped"] and "could not run" in text
        assert rep["status"] == "TensorRT/GPU missing: ONNX verified, engine NOT built"


# ---------------------------------------------------------------------------------------------------- the emulator
def test_rewrite_launches_keeps_lines_and_refuses_what_it_cannot_read():
    src = ("x;\nfoo<T><<<static_cast<uint32_t>(blocks), kBlock,\n 0, stream>>>(a,\n b);\n"
           "bar<<<1, 32, 0, nullptr>>>(out);\n")
    out = BP.rewrite_launches(src)
    assert out.count("\n") == src.count("\n")
    assert "::zoo_emu::Launch(static_cast<uint32_t>(blocks), kBlock,\n 0, stream)(&foo<T>, a,\n b);" in out
    assert "::zoo_emu::Launch(1, 32, 0, nullptr)(&bar, out);" in out
    with pytest.raises(BP.BuildError, match=r"k\.cu:2: a kernel launch the emulator's rewrite does not understand"):
        BP.rewrite_launches("x;\n(*ptr)<<<1, 1>>>(a);\n", "k.cu")


def test_emulator_conversions_equal_torch(selftest):
    """fp16 / bf16 -> float on all 65,536 bit patterns, and float -> fp16 / bf16 (round to nearest even) on edge
    values (ties, subnormals, overflow boundaries, inf, NaN) and 2^20 random floats over the whole exponent range,
    bit for bit equal to torch's conversions (any NaN for a NaN)."""
    bits = torch.arange(65536, dtype=torch.int32).to(torch.int16)
    g = torch.Generator().manual_seed(0)
    rnd = (torch.randint(0, 2**32, (1 << 20,), generator=g, dtype=torch.int64) - 2**31).to(torch.int32).view(torch.float32)
    edge = torch.tensor([0.0, -0.0, 1.0, 65504.0, 65519.99, 65520.0, 65536.0, 2.0**-24, 2.0**-25, 1.5 * 2.0**-25,
                         2.0**-14, 2.0**-14 - 2.0**-25, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 1.0 + 2.0**-8,
                         1.0 + 3 * 2.0**-8, 3.3895e38, 3.4e38, float("inf"), -float("inf"), float("nan")])
    floats = torch.cat([edge, -edge, rnd])
    for dt, to_f, from_f in ((torch.float16, "zoo_emu_half_to_float", "zoo_emu_float_to_half"),
                             (torch.bfloat16, "zoo_emu_bfloat16_to_float", "zoo_emu_float_to_bfloat16")):
        got = torch.empty(65536, dtype=torch.float32)
        getattr(selftest, to_f)(_p(bits), _p(got), ctypes.c_int64(65536))
        want = bits.view(dt).float()
        nan = torch.isnan(want)
        assert torch.equal(torch.isnan(got), nan) and torch.equal(got[~nan].view(torch.int32), want[~nan].view(torch.int32))
        out = torch.empty(floats.numel(), dtype=torch.int16)
        getattr(selftest, from_f)(_p(floats), _p(out), ctypes.c_int64(floats.numel()))
        want = floats.to(dt)
        got16 = out.view(dt)
        nan = torch.isnan(want)
        assert torch.equal(torch.isnan(got16), nan)
        assert torch.equal(out[~nan], want.view(torch.int16)[~nan]), dt


@pytest.mark.parametrize("n,width,block", [(100, 8, 128), (37, 32, 128), (5, 4, 128), (64, 1, 32), (96, 16, 96),
                                           (40, 2, 20)])
def test_emulator_team_sums(selftest, n, width, block):
    """zoo::teamSum (zooCudaUtils.cuh, the scan kernels' reduction) over teams of ``width`` lanes, the last team
    partly padded, whole teams past the end exiting early, blocks that split warps: every lane gets its team's sum."""
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    teams = (n + width - 1) // width
    out = torch.full((teams * width,), float("nan"))
    assert selftest.emu_team_sum(_p(x), _p(out), n, width, block) == 0, selftest.zoo_emu_last_error()
    want = torch.nn.functional.pad(x, (0, teams * width - n)).view(teams, width).sum(1).repeat_interleave(width)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)


def test_emulator_shuffle_segments_follow_ptx(selftest):
    """__shfl_xor_sync(width < 32): a lane reads lane ^ laneMask within or before its own segment of ``width`` lanes,
    never a later one (PTX shfl.bfly: j > maxLane -> own value)."""
    out = torch.zeros(32)
    for width in (1, 2, 4, 8, 16, 32):
        for lane_mask in range(32):
            assert selftest.emu_segment(_p(out), lane_mask, width) == 0
            want = []
            for lane in range(32):
                src = lane ^ lane_mask
                want.append(lane if src > (lane & ~(width - 1)) | (width - 1) else src)
            assert out.int().tolist() == want, (width, lane_mask)


def test_emulator_schedules_expose_a_race(selftest):
    """Negative control of the schedule test: a kernel that reads its neighbour's write without synchronisation gives
    one answer in order and another reversed."""
    selftest.zoo_emu_set_schedule.argtypes = [ctypes.c_int32, ctypes.c_uint64]
    outs = []
    try:
        for mode in (0, 1):
            selftest.zoo_emu_set_schedule(mode, 0)
            buf, out = torch.full((70,), -1.0), torch.zeros(70)
            assert selftest.emu_racy(_p(buf), _p(out), 70) == 0
            outs.append(out)
    finally:
        selftest.zoo_emu_set_schedule(0, 0)
    assert outs[0][5].item() == -1.0 and outs[1][5].item() == 6.0       # in order: not yet written; reversed: written
    assert not torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("which,message", [
    (0, r"lane 0 calls __shfl_xor_sync with mask 0xfffffffe, which excludes itself"),
    (1, r"mask 0xffffffff names lane 3, which has exited the kernel"),
    (2, r"lane 0 \(shuffle #0 at emuSelfTest\.cu:\d+, mask 0xffffffff\) and lane 16 of its mask \(shuffle #0 at "
        r"emuSelfTest\.cu:\d+, mask 0xffffffff\) are at different warp shuffles"),
    (3, r"lane 0 reads lane 16, outside its mask 0x0000ffff"),
    (4, r"mask 0xffffffff names lane 20, which does not exist in this block's last warp"),
])
def test_emulator_refuses_undefined_shuffles(selftest, which, message):
    """Each use of a warp shuffle that CUDA leaves undefined (on a GPU: garbage or a hang) fails the launch with
    cudaErrorLaunchFailure and a message naming the block, warp, lanes and masks; the next launch is unaffected."""
    out = torch.zeros(32)
    assert selftest.emu_undefined(which, _p(out)) == 719
    msg = selftest.zoo_emu_last_error().decode()
    assert re.search(message, msg) and msg.startswith("block (0,0,0) warp 0"), msg
    assert selftest.emu_segment(_p(out), 1, 32) == 0


# ---------------------------------------------------------------------------------------------------- mutations
def _mutant(tmp_path: Path, rel: str, old: str, new: str) -> list[Path]:
    """The kernel sources with one edit in ``rel`` (the others unchanged)."""
    ks = sorted((ROOT / "plugins").glob("*Plugin/*Kernel.cu"))
    src = ROOT / "plugins" / rel
    text = src.read_text()
    assert text.count(old) == 1, (rel, old)
    dst = tmp_path / src.name
    dst.write_text(text.replace(old, new))
    return [dst if k.name == src.name else k for k in ks]


@pytest.mark.parametrize("rel,old,new,op,expect", [
    # the decay of state n taken from row 0 of A instead of row e: a wrong number
    ("selectiveScanPlugin/selectiveScanKernel.cu", "A[static_cast<int64_t>(e) * N + n]", "A[n]", "SelectiveScan",
     "ok False"),
    # y of step t written one element further: a stray write past the output (guard words) and a hole (NaN)
    ("lruScanPlugin/lruScanKernel.cu", "hRe[o] = fromF<T>(sr);", "hRe[o + 1] = fromF<T>(sr);", "LRUScan",
     "wrote outside its"),
    # a team mask of the whole warp although teams exit separately: undefined shuffle, refused by the emulator
    ("ssdScanPlugin/ssdScanKernel.cu", "uint32_t const mask = teamMask(S);", "uint32_t const mask = 0xffffffffu;",
     "SSDScan", "which has exited the kernel"),
])
def test_emulated_check_catches_mutated_kernels(tmp_path, emu_dir, rel, old, new, op, expect):
    """Negative controls: one wrong line in a kernel makes the emulated check fail, each in its own way."""
    lib = BP.build_emulated(emu_dir, kernels=_mutant(tmp_path, rel, old, new), out_name=f"libmut_{op}.so")
    k = harness.ScanKernels(lib)
    shapes = {"SelectiveScan": dict(B=2, E=8, N=16), "LRUScan": dict(B=2, N=8),
              "SSDScan": dict(B=1, H=3, P=5, G=1, N=8)}
    case = harness.Case(op, torch.float32, 6, True, shapes[op])
    try:
        res = harness.check_case(k, case, seed=1)
        outcome = "ok " + str(all(r["ok"] for r in res))
    except RuntimeError as e:
        outcome = str(e)
    assert expect in outcome, outcome


# ---------------------------------------------------------------------------------------------------- ASan
def _asan():
    _need_cxx()
    try:
        return BP.asan_runtime()
    except BP.BuildError as e:
        pytest.skip(f"no AddressSanitizer runtime, the ASan run of the emulated kernels is skipped: {e}")


def _harness_asan(*args, timeout=600):
    return subprocess.run([sys.executable, str(HARNESS), "--emulate", "--asan", "--check", *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_emulated_kernels_under_address_sanitizer():
    """Every case of the matrix (T = 1 and 16) with the kernels built with -fsanitize=address: no read or write
    outside the tensors the harness allocates (torch's CPU allocator goes through ASan's malloc)."""
    _asan()
    r = _harness_asan("--long-T", "16")
    n = len(list(harness.cases(16)))
    assert r.returncode == 0 and "ERROR: AddressSanitizer" not in r.stdout, r.stdout[-4000:]
    assert re.search(r"^(\d+) passed, 0 failed$", r.stdout, re.M), r.stdout[-2000:]
    assert int(re.search(r"^(\d+) passed", r.stdout, re.M).group(1)) >= n


def test_emulated_plugins_under_address_sanitizer():
    """The plugin path under AddressSanitizer too: every case (T = 1 and 4) through the plugin classes' creator,
    field parsing, descriptors and enqueue (compiled with -fsanitize=address with the kernels), no memory error."""
    _asan()
    from export.build_plugins import find_tensorrt_include

    if find_tensorrt_include()[0] is None:
        pytest.skip("the emulated plugin library needs the TensorRT headers (pip install --no-deps kernel-lens)")
    r = _harness_asan("--plugin", "--long-T", "4")
    assert r.returncode == 0 and "ERROR: AddressSanitizer" not in r.stdout, r.stdout[-4000:]
    assert re.search(r"^(\d+) passed, 0 failed$", r.stdout, re.M), r.stdout[-2000:]


def test_address_sanitizer_catches_an_out_of_bounds_read(tmp_path, emu_dir):
    """Negative control of the ASan run: a kernel that reads one element past its input (and discards it, so the
    numbers stay right and the plain emulated check passes) is reported by AddressSanitizer."""
    _asan()
    ks = _mutant(tmp_path, "lruScanPlugin/lruScanKernel.cu", "toF(uRe[o]);", "toF(uRe[o]) + 0.f * toF(uRe[o + 1]);")
    plain = harness.ScanKernels(BP.build_emulated(emu_dir, kernels=ks, out_name="libmut_read.so"))
    case = harness.Case("LRUScan", torch.float32, 4, True, dict(B=1, N=8))
    assert all(r["ok"] for r in harness.check_case(plain, case, seed=0))
    lib = BP.build_emulated(emu_dir, kernels=ks, out_name="libmut_read_asan.so", extra_flags=BP.ASAN_FLAGS)
    r = _harness_asan("--long-T", "4", "--cases", "LRUScan-float32-T4-h0-B2xN64", "--lib", str(lib))
    assert r.returncode != 0 and "AddressSanitizer: heap-buffer-overflow" in r.stdout, r.stdout[-3000:]
    assert "lruScanKernel.cu" in r.stdout


def test_harness_refuses_timings_and_asan_without_emulation():
    for args, msg in ((["--emulate", "--bench"], "--bench needs a GPU"), (["--asan", "--check"], "--asan needs --emulate"),
                      (["--plugin", "--check"], "--plugin needs --emulate")):
        r = subprocess.run([sys.executable, str(HARNESS), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert r.returncode == 2 and msg in r.stdout, r.stdout


# ---------------------------------------------------------------------------------------------------- fiber switch
@pytest.fixture(scope="session")
def emulated_ucontext(emu_dir):
    return harness.ScanKernels(BP.build_emulated(emu_dir, out_name="libzoo_scan_kernels_emu_ucontext.so",
                                                 extra_flags=SWITCHES["ucontext"]))


def _switch_name(k) -> str:
    k.lib.zoo_emu_fiber_switch.restype = ctypes.c_char_p
    return k.lib.zoo_emu_fiber_switch().decode()


def test_builds_name_their_fiber_switch(emulated, emulated_ucontext, selftest):
    """The default build switches fibers in user space on x86-64 and aarch64; -DZOO_EMU_UCONTEXT builds the ucontext
    fallback (so the comparisons below compare two switches, not one twice)."""
    assert _switch_name(emulated) == FAST_SWITCH
    assert _switch_name(emulated_ucontext) == "ucontext (swapcontext)"
    want = FAST_SWITCH if selftest.switch == "default" else "ucontext (swapcontext)"
    assert selftest.zoo_emu_fiber_switch().decode() == want


SWITCH_CASES = [c for c in harness.cases(long_T=24) if c.T == 24 and c.id in (
    "SelectiveScan-float32-T24-h0-B3xE40xN32", "SelectiveScan-bfloat16-T24-zero-B1xE8xN5",
    "SSDScan-float16-T24-h0-B1xH6xP8xG2xN32", "SSDScan-float32-T24-h0-B2xH2xP4xG2xN7",
    "LRUScan-bfloat16-T24-h0-B3xN33")]


@pytest.mark.parametrize("case", SWITCH_CASES, ids=lambda c: c.id)
def test_ucontext_fallback_gives_identical_outputs(emulated, emulated_ucontext, case):
    """Only the switching between fibers differs between the two builds, so every output is equal bit for bit, in
    order, in a random order and in place."""
    assert len(SWITCH_CASES) == 5
    d = harness.make_inputs(case, device="cpu", seed=11)
    try:
        for mode, seed in (("in-order", 0), ("random", 3)):
            runs = []
            for k in (emulated, emulated_ucontext):
                k.set_schedule(mode, seed)
                runs.append([harness.run_kernel(k, case, d, in_place=ip)
                             for ip in ((False, True) if case.op != "LRUScan" else (False,))])
            for (acts, states), (acts_u, states_u) in zip(*runs):
                for a, b in zip(acts + states, acts_u + states_u):
                    assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), (case.id, mode)
    finally:
        emulated.set_schedule("in-order")
        emulated_ucontext.set_schedule("in-order")


LIVE_BLOCKS, LIVE_ROUNDS = 3, 40


def _live_values_expected(blocks: int, rounds: int) -> tuple[list[int], list[float]]:
    """What liveValuesKernel (emuSelfTest.cu) leaves in outA / outD: per thread 8 LCG chains and 8 exact sums."""
    m, mask = 6364136223846793005, (1 << 64) - 1
    want_a, want_d = [], []
    for t in range(blocks * 64):
        a = [t * 8 + k + 1 for k in range(8)]
        d = [t + k + 0.5 for k in range(8)]
        for r in range(rounds):             # x = r: every lane's shuffle returns its neighbour's r
            a = [(a[k] * m + r + k) & mask for k in range(8)]
            d = [d[k] + (k + 1) * r for k in range(8)]
        want_a += a
        want_d += d
    return want_a, want_d


def _live_values(lib, blocks: int, rounds: int) -> tuple[int, list[int], list[float]]:
    n = blocks * 64 * 8
    a, d = (ctypes.c_uint64 * n)(), (ctypes.c_double * n)()
    lib.emu_live_values.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32]
    rc = lib.emu_live_values(a, d, rounds, blocks)
    return rc, list(a), list(d)


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_fiber_switch_keeps_callee_saved_registers(selftest, mode):
    """64-thread blocks whose threads keep 8 integers and 8 doubles live across 40 shuffles -- in the callee-saved
    registers (x86-64: the kernel uses rbx, rbp and r12-r15; aarch64: x19-x28, d8-d15) or spilled on each fiber's
    stack -- every value its own thread's, in order, reversed and in a random order (negative control:
    test_fiber_switch_check_catches_a_broken_switch)."""
    selftest.zoo_emu_set_schedule.argtypes = [ctypes.c_int32, ctypes.c_uint64]
    try:
        selftest.zoo_emu_set_schedule(mode, 5)
        rc, a, d = _live_values(selftest, LIVE_BLOCKS, LIVE_ROUNDS)
    finally:
        selftest.zoo_emu_set_schedule(0, 0)
    assert rc == 0, selftest.zoo_emu_last_error()
    assert (a, d) == _live_values_expected(LIVE_BLOCKS, LIVE_ROUNDS)


#: (1/3, -1/3) as float bits in each rounding mode: the pair tells the four modes apart
QUOTIENTS = {"nearest": (0x3EAAAAAB, 0xBEAAAAAB), "upward": (0x3EAAAAAB, 0xBEAAAAAA),
             "downward": (0x3EAAAAAA, 0xBEAAAAAB), "toward zero": (0x3EAAAAAA, 0xBEAAAAAA)}
FP_ROUNDS = 5


def _fe_modes(lib) -> dict[str, int]:
    out = (ctypes.c_int32 * 4)()
    lib.emu_fe_modes(out)
    return dict(zip(QUOTIENTS, out))


def _fp_control(lib, host_mode: int) -> dict:
    modes, q = (ctypes.c_int32 * (32 * FP_ROUNDS))(), (ctypes.c_uint32 * (64 * FP_ROUNDS))()
    host = (ctypes.c_int32 * 2)()
    lib.emu_fp_control.argtypes = [ctypes.c_int32] + [ctypes.c_void_p] * 2 + [ctypes.c_int32, ctypes.c_void_p]
    rc = lib.emu_fp_control(host_mode, modes, q, FP_ROUNDS, host)
    return {"rc": rc, "modes": list(modes), "q": list(q), "host": [host[0], host[1] & 0xFFFFFFFF]}


def _fp_control_expected(fe: dict[str, int], host: str) -> dict:
    """fpControlKernel: thread t in mode t % 5 (0: the launching thread's), after every shuffle; the launching thread
    back in its own mode after the launch."""
    names = [host, "nearest", "upward", "downward", "toward zero"]
    want = {"rc": 0, "modes": [], "q": [], "host": [fe[host], QUOTIENTS[host][0]]}
    for t in range(32):
        want["modes"] += [fe[names[t % 5]]] * FP_ROUNDS
        want["q"] += list(QUOTIENTS[names[t % 5]]) * FP_ROUNDS
    return want


@pytest.mark.parametrize("host", ["toward zero", "upward"])
def test_fiber_switch_keeps_floating_point_control_per_thread(selftest, host):
    """Each thread of a warp sets its own rounding mode (or keeps the launching thread's) and finds it unchanged after
    every shuffle, in the mode fegetround reports (x86-64: the x87 control word) and in how float division rounds
    (x86-64: MXCSR); the launching thread has its own mode back afterwards (negative control: the same with a switch
    that does not restore them)."""
    fe = _fe_modes(selftest)
    assert _fp_control(selftest, fe[host]) == _fp_control_expected(fe, host)


#: one line of the user-space switch changed: (what, old, new) per architecture
BROKEN_SWITCHES = {
    "x86_64": [("fp control not restored", "    ldmxcsr (%rsp)\n    fldcw 4(%rsp)\n", ""),
               ("rbx not restored", "    popq %rbx\n", "    popq %rax\n"),
               ("r15 not restored", "    popq %r15\n", "    popq %rax\n")],
    "aarch64": [("fpcr not restored", "    msr fpcr, x9\n", ""),
                ("x19, x20 not restored", "    ldp x19, x20, [sp, #0]\n", "    ldp x9, x10, [sp, #0]\n"),
                ("d8, d9 not restored", "    ldp d8, d9, [sp, #96]\n", "    ldp d16, d17, [sp, #96]\n")],
}

#: run in a fresh interpreter (a broken switch may crash it): liveValuesKernel's outputs as JSON
_LIVE_VALUES_SCRIPT = """
import ctypes, json, sys
lib = ctypes.CDLL(sys.argv[1])
blocks, rounds = int(sys.argv[2]), int(sys.argv[3])
n = blocks * 64 * 8
a, d = (ctypes.c_uint64 * n)(), (ctypes.c_double * n)()
rc = lib.emu_live_values(a, d, rounds, blocks) if rounds else 0
print(json.dumps({"rc": rc, "a": list(a), "d": list(d)}))
"""


def _live_values_isolated(lib: Path, blocks: int, rounds: int, prefix: list[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-c", _LIVE_VALUES_SCRIPT, str(lib), str(blocks), str(rounds)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)


def _broken_switch(tmp_path: Path, old: str, new: str) -> dict[str, Path]:
    """build_emulated's ``replace`` for zooCudaEmu.cpp compiled with zooFiber.h edited (old -> new)."""
    text = (ROOT / "plugins" / "emu" / "zooFiber.h").read_text()
    assert text.count(old) == 1, old
    (tmp_path / "zooFiber.h").write_text(text.replace(old, new))       # found first: beside the copy including it
    shutil.copy(ROOT / "plugins" / "emu" / "zooCudaEmu.cpp", tmp_path / "zooCudaEmu.cpp")
    return {"zooCudaEmu.cpp": tmp_path / "zooCudaEmu.cpp"}


@pytest.mark.parametrize("what,old,new", BROKEN_SWITCHES.get(platform.machine(), []),
                         ids=[w for w, _, _ in BROKEN_SWITCHES.get(platform.machine(), [])])
def test_fiber_switch_check_catches_a_broken_switch(tmp_path, emu_dir, what, old, new):
    """Negative controls: a switch that forgets the FP control state runs every thread in one rounding mode; one that
    forgets a callee-saved register hands threads each other's values or crashes (run in its own process)."""
    lib = BP.build_emulated(emu_dir, kernels=[SELFTEST], replace=_broken_switch(tmp_path, old, new),
                            out_name=f"libemu_selftest_broken_{zlib.crc32(old.encode())}.so")
    if "fp" in what:
        mut = ctypes.CDLL(str(lib))
        fe = _fe_modes(mut)
        got = _fp_control(mut, fe["upward"])
        assert got["rc"] == 0 and got != _fp_control_expected(fe, "upward")
    else:
        r = _live_values_isolated(lib, LIVE_BLOCKS, LIVE_ROUNDS)
        if r.returncode == 0:
            got = json.loads(r.stdout)
            assert (got["a"], got["d"]) != _live_values_expected(LIVE_BLOCKS, LIVE_ROUNDS), what
        else:
            assert r.returncode < 0, r.stderr[-2000:]                 # killed by a signal: the scheduler's registers


def test_fiber_switch_makes_no_system_call(emu_dir):
    """The point of the user-space switch: the ucontext build makes an rt_sigprocmask system call at every switch
    (glibc's swapcontext restores the signal mask), the default build none (counted by strace over a launch with
    192 threads x 201 switches there and back, against the same interpreter without the launch)."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    if FAST_SWITCH.startswith("ucontext"):
        pytest.skip(f"no user-space switch on {platform.machine()}")
    counts = {}
    for name, flags in SWITCHES.items():
        lib = BP.build_emulated(emu_dir, kernels=[SELFTEST], out_name=f"libemu_selftest_{name}.so", extra_flags=flags)
        for rounds in (0, 200):
            log = emu_dir / f"strace-{name}-{rounds}.txt"
            r = _live_values_isolated(lib, 3, rounds,
                                      [strace, "-f", "-qq", "-e", "trace=rt_sigprocmask", "-o", str(log)])
            if r.returncode != 0 and "ptrace" in r.stderr:
                pytest.skip(f"strace cannot trace here: {r.stderr.strip()[-300:]}")
            assert r.returncode == 0, r.stderr[-2000:]
            counts[name, rounds] = sum("rt_sigprocmask(" in line for line in log.read_text().splitlines())
    switches = 3 * 64 * (200 + 1) * 2
    assert counts["ucontext", 200] - counts["ucontext", 0] >= switches, counts
    assert counts["default", 200] - counts["default", 0] <= 2, counts


AARCH64_DRIVER = r"""
#include <cstdint>
#include <cstdio>
#include <vector>
extern "C" {
char const* zoo_emu_fiber_switch();
char const* zoo_emu_last_error();
void zoo_emu_set_schedule(int32_t mode, uint64_t seed);
int32_t emu_live_values(uint64_t* a, double* d, int32_t rounds, int32_t blocks);
int32_t emu_fe_modes(int32_t* out);
int32_t emu_fp_control(int32_t hostMode, int32_t* modes, float* q, int32_t rounds, int32_t* host);
int32_t emu_undefined(int32_t which, float* out);
}
int main()
{
    int32_t const blocks = BLOCKS, rounds = ROUNDS, fpRounds = FP_ROUNDS;
    std::printf("{\"switch\": \"%s\", \"live\": [", zoo_emu_fiber_switch());
    for (int32_t mode = 0; mode < 3; ++mode)
    {
        zoo_emu_set_schedule(mode, 5);
        std::vector<uint64_t> a(blocks * 64 * 8);
        std::vector<double> d(a.size());
        int32_t const rc = emu_live_values(a.data(), d.data(), rounds, blocks);
        std::printf("%s{\"rc\": %d, \"a\": [", mode ? ", " : "", rc);
        for (size_t i = 0; i < a.size(); ++i) std::printf("%s%llu", i ? ", " : "", (unsigned long long) a[i]);
        std::printf("], \"d\": [");
        for (size_t i = 0; i < d.size(); ++i) std::printf("%s%.17g", i ? ", " : "", d[i]);
        std::printf("]}");
    }
    zoo_emu_set_schedule(0, 0);
    int32_t fe[4];
    emu_fe_modes(fe);
    std::printf("], \"fe\": [%d, %d, %d, %d], \"fp\": [", fe[0], fe[1], fe[2], fe[3]);
    for (int32_t h = 0; h < 4; ++h)
    {
        std::vector<int32_t> modes(32 * fpRounds);
        std::vector<float> q(64 * fpRounds);
        int32_t host[2];
        int32_t const rc = emu_fp_control(fe[h], modes.data(), q.data(), fpRounds, host);
        std::printf("%s{\"rc\": %d, \"modes\": [", h ? ", " : "", rc);
        for (size_t i = 0; i < modes.size(); ++i) std::printf("%s%d", i ? ", " : "", modes[i]);
        std::printf("], \"q\": [");
        for (size_t i = 0; i < q.size(); ++i)
        {
            uint32_t b;
            __builtin_memcpy(&b, &q[i], 4);
            std::printf("%s%u", i ? ", " : "", b);
        }
        std::printf("], \"host\": [%d, %u]}", host[0], (uint32_t) host[1]);
    }
    std::printf("], \"undefined\": [");
    for (int32_t which = 0; which < 5; ++which)
    {
        float out[32];
        int32_t const rc = emu_undefined(which, out);
        std::printf("%s[%d, \"%s\"]", which ? ", " : "", rc, zoo_emu_last_error());
    }
    std::printf("]}\n");
}
"""


def _run_aarch64(tmp_path: Path, monkeypatch, flags=(), replace=None) -> subprocess.CompletedProcess:
    """emuSelfTest.cu and AARCH64_DRIVER cross-compiled for aarch64 and run under qemu-user (skips without the tools;
    Debian: g++-aarch64-linux-gnu qemu-user-static)."""
    cxx = shutil.which("aarch64-linux-gnu-g++")
    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    sysroot = Path("/usr/aarch64-linux-gnu")
    if cxx is None or qemu is None or not sysroot.is_dir():
        pytest.skip("no aarch64 cross compiler (aarch64-linux-gnu-g++) or qemu-aarch64 here")
    monkeypatch.setenv("CXX", cxx)                                              # build_emulated's compiler
    lib = BP.build_emulated(tmp_path / "build", kernels=[SELFTEST], out_name="libemu_selftest.so", extra_flags=flags,
                            replace=replace)
    driver = tmp_path / "driver.cpp"
    driver.write_text(AARCH64_DRIVER.replace("BLOCKS", str(LIVE_BLOCKS)).replace("FP_ROUNDS", str(FP_ROUNDS))
                      .replace("ROUNDS", str(LIVE_ROUNDS)))
    exe = tmp_path / "driver"
    subprocess.run([cxx, "-O2", str(driver), str(lib), f"-Wl,-rpath,{lib.parent}", "-o", str(exe)], check=True)
    return subprocess.run([qemu, "-L", str(sysroot), str(exe)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=300)


def _aarch64_outputs_right(got: dict) -> bool:
    want_a, want_d = _live_values_expected(LIVE_BLOCKS, LIVE_ROUNDS)
    fe = dict(zip(QUOTIENTS, got["fe"]))
    return (all(run["rc"] == 0 and run["a"] == want_a and run["d"] == want_d for run in got["live"])
            and got["fp"] == [_fp_control_expected(fe, host) for host in QUOTIENTS])


def test_aarch64_switch_under_qemu(tmp_path, monkeypatch, selftest):
    """The aarch64 switch, cross-compiled and run under qemu-user where the tools are installed: the live values (in
    order, reversed, random), the rounding modes of every thread and the launching one, and the shuffle errors, the
    same as this machine's build of the same switch (and the ucontext fallback there too)."""
    r = _run_aarch64(tmp_path, monkeypatch, SWITCHES[selftest.switch])
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    want = "aarch64 (user-space switch)" if selftest.switch == "default" else "ucontext (swapcontext)"
    assert got["switch"] == want
    assert _aarch64_outputs_right(got)
    for which, (rc, msg) in enumerate(got["undefined"]):                      # the same messages as here
        assert rc == selftest.emu_undefined(which, _p(torch.zeros(32))) == 719
        assert msg == selftest.zoo_emu_last_error().decode(), which


@pytest.mark.parametrize("what,old,new", BROKEN_SWITCHES["aarch64"], ids=[w for w, _, _ in BROKEN_SWITCHES["aarch64"]])
def test_aarch64_switch_check_catches_a_broken_switch(tmp_path, monkeypatch, what, old, new):
    """Negative controls of the qemu run (and a check that BROKEN_SWITCHES still matches the aarch64 switch): fpcr,
    two general or two FP callee-saved registers not restored give wrong outputs or a crash."""
    r = _run_aarch64(tmp_path, monkeypatch, replace=_broken_switch(tmp_path, old, new))
    assert r.returncode < 0 if r.returncode != 0 else not _aarch64_outputs_right(json.loads(r.stdout)), r.stderr[-2000:]
