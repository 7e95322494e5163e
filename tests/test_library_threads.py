"""The zoo used as a library from several threads, and its process-wide side effects: an export tracing in one thread
while another serves a model of the same type, two exports in two threads, ``eval_mode`` on a model in training
mode shared by threads, the global RNG around ``export_model``, and huggingface_hub's progress-bar settings around
``from_pretrained`` / ``save_pretrained``."""
import copy
import pickle
import sys
import threading

import pytest
import torch

pytest.importorskip("onnx")

import export.onnx as E  # noqa: E402
from tests.tiny_models import tiny, tiny_config  # noqa: E402
from zoo.models import MODELS  # noqa: E402

#: per step model type: a stand-in the trace calls (held there to keep the trace inside its patches), and a module
#: global the trace swaps (``zoo.models.<module>.<name>``) with the function it normally holds
STAND_INS = {"lrurec": ("_lru_lam_export", "lrurec", "lru_scan_ref", "zoo.ops.lru"),
             "tim4rec_causal": ("_ssd_scan_export", "tim4rec", "ssd_scan_fn", "zoo.ops.ssd")}


def _serve(model):
    """``(recommend items, recommend scores, step logits, step state)`` of ``model`` on a fixed history."""
    ts = [[10.0, 20.0, 30.0]] if model.uses_timestamps else None
    r = model.recommend([[1, 2, 3]], k=3, timestamps=ts)
    kw = dict(timestamps=torch.tensor([[40.0]], dtype=torch.float64)) if model.uses_timestamps else {}
    logits, state = model.step(torch.tensor([[4]]), model.init_state(1), **kw)
    return r.items, r.scores, logits, state


class _HeldTrace:
    """Runs ``export_model(model, out, verify=False)`` in a thread, held inside its trace (so inside the stand-in
    patches) at the first call of the stand-in ``hold_at`` from that thread, until :meth:`release`."""

    def __init__(self, monkeypatch, hold_at: str, model, out):
        self.inside, self.go, self.errors = threading.Event(), threading.Event(), []
        stand_in = getattr(E, hold_at)

        def held(*args, **kwargs):
            if threading.current_thread() is self.thread and not self.inside.is_set():
                self.inside.set()
                self.go.wait(60)
            return stand_in(*args, **kwargs)

        monkeypatch.setattr(E, hold_at, held)

        def run():
            try:
                E.export_model(model, out, verify=False)
            except BaseException as e:      # noqa: BLE001 -- reported by the test
                self.errors.append(e)
            finally:
                self.inside.set()

        self.thread = threading.Thread(target=run, daemon=True)

    def start(self):
        self.thread.start()
        assert self.inside.wait(120), "the export never reached its trace"
        return self

    def release(self):
        self.go.set()
        self.thread.join(120)
        assert not self.thread.is_alive()


@pytest.mark.parametrize("model_type", sorted(STAND_INS))
def test_other_threads_keep_the_zoo_functions_while_a_trace_is_inside_its_patches(model_type, monkeypatch, tmp_path):
    import importlib

    hold_at, module, name, ops = STAND_INS[model_type]
    served = tiny(model_type)
    ref = _serve(served)
    trace = _HeldTrace(monkeypatch, hold_at, tiny(model_type), tmp_path / "graph").start()
    try:
        zoo_module = importlib.import_module(f"zoo.models.{module}")
        assert getattr(zoo_module, name) is not getattr(importlib.import_module(ops), name), \
            "the trace is not inside its patches: the test proves nothing"
        got = _serve(served)                            # this (main) thread, while the other one traces
    finally:
        trace.release()
    assert not trace.errors, trace.errors
    assert got[0] == ref[0]
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=0)
    torch.testing.assert_close(got[2], ref[2], rtol=0, atol=0)
    for k in ref[3]:
        torch.testing.assert_close(got[3][k], ref[3][k], rtol=0, atol=0)
    assert (tmp_path / "graph" / "model.onnx").exists()
    assert getattr(zoo_module, name) is getattr(importlib.import_module(ops), name)     # patches undone


def test_two_exports_in_two_threads_both_succeed(monkeypatch, tmp_path):
    """The second export waits for the first one's trace (torch's exporter state is process-wide: overlapping, the
    second failed with a bare ``AssertionError: GLOBALS.in_onnx_export must be False``)."""
    import zoo.models.lrurec as L
    import zoo.ops.lru as ops

    first = _HeldTrace(monkeypatch, "_lru_lam_export", tiny("lrurec"), tmp_path / "a").start()
    before_trace = threading.Event()
    example_inputs = E._example_inputs

    def marked(*args, **kwargs):            # called by trace_graph just before it traces
        if threading.current_thread() is not first.thread:
            before_trace.set()
        return example_inputs(*args, **kwargs)

    monkeypatch.setattr(E, "_example_inputs", marked)
    errors = []

    def second():
        try:
            E.export_model(tiny("lrurec"), tmp_path / "b", verify=False)
        except BaseException as e:          # noqa: BLE001 -- reported by the test
            errors.append(e)

    t = threading.Thread(target=second, daemon=True)
    try:
        t.start()
        assert before_trace.wait(120)
        t.join(1.0)                         # time to run into the first trace (it waits for it now)
    finally:
        first.release()
        t.join(120)
    assert not t.is_alive()
    assert not first.errors and not errors, (first.errors, errors)
    for d in ("a", "b"):
        assert (tmp_path / d / "model.onnx").exists()
    assert L.lru_scan_ref is ops.lru_scan_ref and L.lru_step_ref is ops.lru_step_ref
    assert E._tracing_thread is None


@pytest.mark.parametrize("model_type", ["gru4rec", "lrurec", "sasrec"])      # step, step, window graph
def test_export_model_leaves_the_global_rng_alone(model_type, tmp_path):
    model = tiny(model_type)
    torch.manual_seed(123)
    first = torch.rand(3)
    torch.manual_seed(123)
    E.export_model(model, tmp_path, verify=False)
    torch.testing.assert_close(torch.rand(3), first, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ eval_mode
def _dropout_model():
    cfg = tiny_config("sasrec")
    cfg.hidden_dropout_prob = cfg.attn_dropout_prob = 0.5
    torch.manual_seed(0)
    return MODELS["sasrec"][1](cfg).train()       # a model being trained


def test_eval_mode_shared_by_threads_keeps_eval_until_the_last_one_leaves():
    """Thread A enters eval_mode; B's recommend starts its forward; A leaves. B must go on in eval mode (no dropout),
    and the model must be back in training mode after B."""
    model = _dropout_model()
    ref = model.recommend([[1, 2, 3]], k=5)
    drop = next(m for m in model.modules() if isinstance(m, torch.nn.Dropout))
    inside, go, seen, out = threading.Event(), threading.Event(), [], []

    def pre_hook(module, args):
        if threading.current_thread() is b and not inside.is_set():
            inside.set()
            go.wait(60)
            seen.append(module.training)

    handle = drop.register_forward_pre_hook(pre_hook)
    b = threading.Thread(target=lambda: out.append(model.recommend([[1, 2, 3]], k=5)), daemon=True)
    try:
        with model.eval_mode():                             # thread A (this one)
            assert not model.training
            b.start()
            assert inside.wait(60)
        assert not model.training, "A left while B was inside: the model went back to training mode"
    finally:
        go.set()
        b.join(60)
        handle.remove()
    assert seen == [False]
    assert out[0].items == ref.items
    torch.testing.assert_close(out[0].scores, ref.scores, rtol=0, atol=0)
    assert all(m.training for m in model.modules()), "left in eval mode"


def test_eval_mode_nests_restores_on_error_and_model_still_copies():
    model = _dropout_model()
    with model.eval_mode():
        with model.eval_mode():
            assert not model.training
            clone = copy.deepcopy(model)                    # copies, pickles while inside a section
            pickled = pickle.loads(pickle.dumps(model))
        assert not model.training
    assert model.training and all(m.training for m in model.modules())
    with pytest.raises(RuntimeError):
        with model.eval_mode():
            raise RuntimeError("boom")
    assert model.training
    for other in (clone, pickled):                          # eval-mode copies, with sections of their own
        assert not other.training
        other.train()
        with other.eval_mode():
            assert not other.training and model.training
        assert other.training
    model.eval()
    with model.eval_mode():
        pass
    assert not model.training                               # a model in eval mode stays there


# ---------------------------------------------------------------------------------------------- progress bars
@pytest.fixture
def hub_bars():
    """huggingface_hub's progress-bar settings dict and transformers' switch, restored after the test."""
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    hub = sys.modules[hub_utils.enable_progress_bars.__module__]
    if getattr(hub, "HF_HUB_DISABLE_PROGRESS_BARS", None) is not None:
        pytest.skip("HF_HUB_DISABLE_PROGRESS_BARS is set: the settings cannot change")
    states, active = dict(hub.progress_bar_states), hf_logging.is_progress_bar_enabled()
    yield hub_utils
    hub.progress_bar_states.clear()
    hub.progress_bar_states.update(states)
    hf_logging._tqdm_active = active


@pytest.mark.parametrize("global_off", [True, False])
def test_load_and_save_keep_huggingface_hub_progress_bar_settings(global_off, hub_bars, tmp_path):
    from transformers.utils import logging as hf_logging

    from zoo.modeling_utils import SeqRecPreTrainedModel

    group = "huggingface_hub.http_get"
    hub_bars.enable_progress_bars()
    if global_off:
        hub_bars.disable_progress_bars()
    hub_bars.disable_progress_bars(group)
    hub_bars.enable_progress_bars("huggingface_hub.lfs_upload")
    assert hf_logging.is_progress_bar_enabled()                # transformers' own switch on: the zoo's acts
    tiny("gru4rec").save_pretrained(tmp_path)
    SeqRecPreTrainedModel.from_pretrained(tmp_path)
    assert hub_bars.are_progress_bars_disabled() is global_off
    assert hub_bars.are_progress_bars_disabled(group)
    assert not hub_bars.are_progress_bars_disabled("huggingface_hub.lfs_upload")
    assert hf_logging.is_progress_bar_enabled()
