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
(a wrong index, a stray write, an out-of-bounds read) caught -- so a pass means something.

What only a GPU shows (its expf within 2 ulp, scheduling, memory coalescing, timings) stays in the ``gpu`` tests.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
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


@pytest.fixture(scope="session")
def selftest(emu_dir):
    lib = ctypes.CDLL(str(BP.build_emulated(emu_dir, kernels=[SELFTEST], out_name="libemu_selftest.so")))
    lib.zoo_emu_last_error.restype = ctypes.c_char_p
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


def test_run_op_refuses_what_a_plugin_cannot_take(emulated_plugins):
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
    # a state larger than the kernels take: the plugin's enqueue refuses, and says so
    with pytest.raises(PluginError, match=r"SelectiveScan plugin enqueue: enqueue failed .*status -1"):
        run_op(lib, "SelectiveScan", {"delta_softplus": 1},
               [z(1, 2, 3), z(1, 2, 3), z(2, 300), z(1, 300, 3), z(1, 300, 3), z(2), z(1, 2, 3), z(2), z(1, 2, 300)])
    out = run_op(lib, "LRUScan", {}, [z(1, 2, 3), z(1, 2, 3), z(3), z(3), z(1, 3) + 1, z(1, 3)])
    assert [o.shape for o in out] == [(1, 2, 3), (1, 2, 3)] and out[0][0, 0, 0] == 0.0


def test_export_trt_exits_2_when_the_emulated_plugin_check_fails(tmp_path, monkeypatch, emu_dir):
    """export.trt without TensorRT: a plugin that computes wrong makes the run fail verification (exit 2) instead of
    'TensorRT/GPU missing' (exit 3); nothing is written as an engine."""
    from export import trt as T

    src = ROOT / "plugins" / "selectiveScanPlugin" / "selectiveScanPlugin.cpp"
    (tmp_path / src.name).write_text(src.read_text().replace("mDeltaSoftplus, stream);", "0, stream);"))
    bad = BP.build_emulated(emu_dir, plugins=True, out_name="libmut_trt.so", replace={src.name: tmp_path / src.name})
    monkeypatch.setattr(BP, "build_emulated", lambda *a, **k: bad)
    monkeypatch.setattr(T, "probe_environment", lambda: T.Environment(
        tensorrt_error="ImportError: fake", gpu_error="fake: no GPU", missing=["TensorRT builder: fake", "GPU: fake"]))
    monkeypatch.setattr(T, "EMULATED_VERIFY", dict(prime_len=8, n_steps=2, batch=2, topk_cases=4))
    said = []
    code, rep = T.run("tiny", str(tmp_path / "out"), model=_tiny_step_model("mamba4rec"), quick=True,
                      plugin_lib=str(tmp_path / "none.so"), say=said.append)
    assert code == T.EXIT_VERIFY_FAILED, "\n".join(said)
    assert rep["emulated_plugins"]["ok"] is False and "FAILED verification" in rep["status"]
    assert rep["onnx"]["verification"]["passed"] is True
    assert not (tmp_path / "out" / T.ENGINE_FILE).exists()


@pytest.mark.parametrize("error,code", [("plugin", 2), ("evaluator", 3)])
def test_export_trt_tells_a_refused_node_from_an_evaluator_limit(tmp_path, monkeypatch, emu_dir, error, code):
    """A scan node the plugin refuses (PluginError: TensorRT's engine would fail the same) fails the run, exit 2; a
    graph ONNX's reference evaluator cannot run is not the plugins' fault: the check is recorded as skipped, exit 3."""
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
