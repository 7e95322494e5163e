"""The central invariant and training on a CUDA GPU (marked ``gpu``: skipped with the reason on CPU, run by
``bench/gpu_session.sh`` when a GPU is lent).

Every model's CPU tests check full forward == prefix forward + steps (or step == the window's forward); on CUDA the
forward may take other paths than the step (cuDNN convolutions, mamba-ssm's kernels when installed, fused attention),
so the same checks run here with the same tiny models and tolerances, the model on the GPU behind the CPU interface
the checks use (:class:`OnDevice`; its plumbing is checked on the CPU here, so that a failure on a GPU is the GPU's).
TF32 is switched off: the invariant is an fp32 one. Then ``zoo.train`` on CUDA, with and without ``--amp``, and its
checkpoint re-evaluated on the CPU.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from equivalence import check_step_equivalence, check_window_step_equivalence


def _to(x, device):
    """``x`` with every tensor in it (tuples, lists, dicts, model outputs) on ``device``."""
    if torch.is_tensor(x):
        return x.to(device)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):      # transformers' ModelOutput
        return type(x)(**{k: _to(v, device) for k, v in x.items()})
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    return x


class OnDevice:
    """A model on ``device`` behind its CPU interface: tensors going in are moved there, tensors coming out come back,
    so that the CPU equivalence checks run unchanged; everything else is the model's own."""

    def __init__(self, model, device: str = "cuda"):
        object.__setattr__(self, "_model", model.to(device))
        object.__setattr__(self, "_device", device)

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __setattr__(self, name, value):
        setattr(self._model, name, value)

    def _run(self, fn, args, kwargs):
        return _to(fn(*_to(args, self._device), **_to(kwargs, self._device)), "cpu")

    def __call__(self, *args, **kwargs):
        return self._run(self._model, args, kwargs)

    def step(self, *args, **kwargs):
        return self._run(self._model.step, args, kwargs)

    def score(self, *args, **kwargs):
        return self._run(self._model.score, args, kwargs)

    def init_state(self, *args, **kwargs):
        return self._run(self._model.init_state, args, kwargs)


@pytest.fixture(autouse=True)
def _fp32_on_cuda():
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _recurrent():
    from test_gru4rec import small as gru4rec
    from test_lrurec import small_model as lrurec
    from test_mamba4rec import tiny as mamba4rec
    from test_tim4rec import causal

    return {"mamba4rec": lambda: mamba4rec(num_layers=2, initializer_range=0.3),
            "lrurec": lambda: lrurec(initializer_range=0.1, initializer_cutoff=0.2),
            "gru4rec": gru4rec, "tim4rec_causal": lambda: causal(num_layers=2)}


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["mamba4rec", "lrurec", "gru4rec", "tim4rec_causal"])
def test_step_equals_full_forward_on_cuda(name):
    model = OnDevice(_recurrent()[name]())
    worst = check_step_equivalence(model, [1, 2, 5, 37, 213, 600], chunk_plan="mixed", atol=1e-4,
                                   timestamps=name == "tim4rec_causal")
    print(f"[gpu] {name}: step vs full forward on {torch.cuda.get_device_name()}: max abs diff {worst:.2e}")


def _window():
    from test_bert4rec import small as bert4rec
    from test_sasrec import small as sasrec
    from test_ssd4rec import small as ssd4rec
    from test_tim4rec import faithful

    return {"sasrec": (lambda: sasrec(max_seq_length=32), [3, 32, 100], False),
            "bert4rec": (lambda: bert4rec(max_seq_length=16), [3, 16, 40], False),
            "ssd4rec": (ssd4rec, [4, 10, 27], False), "tim4rec": (faithful, [5, 12, 30], True)}


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "ssd4rec", "tim4rec"])
def test_window_step_equals_window_forward_on_cuda(name):
    build, lengths, timestamps = _window()[name]
    model = OnDevice(build())
    worst = check_window_step_equivalence(model, lengths, chunk_plan="mixed", atol=1e-4, timestamps=timestamps)
    print(f"[gpu] {name}: window step vs window forward on {torch.cuda.get_device_name()}: max abs diff {worst:.2e}")


def test_the_device_proxy_runs_the_checks_unchanged(one_thread):
    """On the CPU (``OnDevice(model, "cpu")``): the proxy's moves, outputs and attribute writes let both checks pass as
    they do on the model itself, and a step whose state is lost behind the proxy still fails them."""
    model = _recurrent()["tim4rec_causal"]()
    check_step_equivalence(OnDevice(model, "cpu"), [1, 5, 37], chunk_plan="mixed", atol=1e-4, timestamps=True)
    build, _, timestamps = _window()["tim4rec"]
    check_window_step_equivalence(OnDevice(build(), "cpu"), [5, 12, 30], chunk_plan="mixed", atol=1e-4,
                                  timestamps=timestamps)
    lossy = OnDevice(_recurrent()["gru4rec"](), "cpu")
    real_step = lossy._model.step
    object.__setattr__(lossy, "step", lambda items, state, **kw: lossy._run(
        real_step, (items, lossy.init_state(items.shape[0])), kw))     # forgets the history at every call
    with pytest.raises(AssertionError, match="step vs full forward"):
        check_step_equivalence(lossy, [1, 5, 37], chunk_plan="mixed", atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("amp, loss", [(False, []), (True, []),
                                       (False, ["--loss", "sampled-softmax", "--negatives", "8",
                                                "--negative-sampler", "popularity"])])
def test_training_on_cuda_and_its_checkpoint_on_the_cpu(tmp_path, amp, loss):
    """``zoo.train --device cuda [--amp]`` learns (far above the most-popular floor) and writes a checkpoint that the
    CPU evaluates to the test numbers the run logged (fp32 weights either way; bf16 only inside the autocast); also
    with sampled softmax, whose negatives are drawn on the GPU."""
    from test_train import TINY, _markov_file

    from zoo.evaluate import main as evaluate_main
    from zoo.train import main as train_main

    data = _markov_file(tmp_path / "markov.tsv")
    out = tmp_path / ("amp" if amp else "fp32") / ("sampled" if loss else "ce")
    log = train_main(["--model", "mamba4rec", "--data", str(data), "--out", str(out), "--epochs", "4",
                      "--max-len", "50", "--batch-size", "16", "--lr", "5e-3", "--kcore", "0", "--no-progress",
                      "--device", "cuda", "--set", *TINY["mamba4rec"]] + (["--amp"] if amp else []) + loss)
    assert log["environment"].get("cuda") and log["best_valid_NDCG10"] > 2 * log["popularity_valid_NDCG10"], log
    again = evaluate_main(["--model", str(out), "--data", str(data), "--kcore", "none", "--device", "cpu",
                           "--no-progress"])
    assert abs(again["metrics"]["NDCG@10"] - log["test"]["NDCG@10"]) < 1e-4, (again["metrics"], log["test"])
