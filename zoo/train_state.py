"""Resumable training state for ``python -m zoo.train --resume``: everything an interrupted run needs to continue
exactly where it stopped, as if it had never stopped.

After every epoch :func:`save` writes ``OUT/resume/``:

* ``model.safetensors`` -- the current weights (not the best: those are ``OUT/model.safetensors``);
* ``optimizer.safetensors`` -- the optimizer's per-parameter tensors (Adam's moments and step counts) and torch's
  random-number-generator states (CPU, and CUDA when used: dropout and BERT4Rec's masking draw from them);
* ``state.json`` -- the epoch, the early-stopping counters, the time used so far, the batch-shuffling generator's and
  Python's/NumPy's global generator states, the optimizer's hyper-parameters, the run's settings and its log.

No pickles: tensors in safetensors, the rest in JSON. The folder is written as ``resume.new/`` and swapped in, so an
interruption while saving leaves the previous epoch's state whole (``resume.old/`` is used when the swap itself was
cut, and put back in place by the next save before anything is removed). One writer at a time: ``resume.new/`` is
one name for every save, so two processes saving into one ``OUT`` at once would remove each other's files;
``zoo.train`` holds ``OUT``'s lock from its start to its last write (:func:`zoo.train.hold_output_folder`), and a
second run there is refused before it reads or writes anything.

The state belongs to the checkpoint beside it: ``progress["checkpoint_sha256"]`` is the SHA-256 of
``OUT/model.safetensors`` when it was saved (``None``: none yet), and a run about to write a new best checkpoint says so
first (:func:`note_checkpoint`), so that :func:`check_checkpoint` tells the run's own newer checkpoint (cut before the
next save of the state) from weights another run or a copy put there, which a resume would test under this run's
log. A run that ends by early stopping or by its last epoch removes the folder after its test evaluation (there is
nothing left to resume; one cut in that evaluation resumes straight to it, training no further epoch); one stopped by
its time budget keeps it, so ``--resume --max-minutes M`` can give it more time (with no time left, a resume only
tests the best checkpoint again).
"""

from __future__ import annotations

import json
import os
import random
import shutil

import numpy as np
import torch

RESUME_DIR = "resume"
STATE_FILE = "state.json"
FORMAT_VERSION = 1
#: settings that may change when a run is resumed (the rest must match the interrupted run's)
RESUMABLE_CHANGES = ("max_minutes", "device", "progress", "command")
#: settings added after runs were saved: a state without one ran with this value
SETTING_DEFAULTS = {"time_ties": "file", "warmup_steps": 0, "columns": None, "loss": "ce", "negatives": None,
                    "negative_sampler": "uniform", "sparse_item_grad": False,
                    "unknown_items": "error", "temporal_split": None, "batch_order": "by-length"}


def resume_dir(out: str | os.PathLike) -> str | None:
    """The resume state folder of the run in ``out`` (``resume/``, else a ``resume.old/`` left by a cut swap), or
    ``None`` when there is none."""
    for name in (RESUME_DIR, RESUME_DIR + ".old"):
        path = os.path.join(out, name)
        if os.path.isfile(os.path.join(path, STATE_FILE)):
            return path
    return None


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """``(tensors, meta)``: the optimizer state's tensors by ``state.<param>.<key>`` and its JSON part."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state_dict(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for name, value in tensors.items():
        if name.startswith("state."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save(out: str | os.PathLike, model: torch.nn.Module, opt: torch.optim.Optimizer, gen: np.random.Generator,
         progress: dict, settings: dict, log: dict) -> None:
    """Write ``out/resume/`` (see the module doc). ``progress``: ``epoch`` (last completed), ``best``,
    ``best_epoch``, ``bad`` (validations without a gain), ``elapsed_s`` (time used, data loading included),
    ``stopped`` (the log's stop reason when the run stopped after this epoch, else ``None``: a run cut in its test
    evaluation resumes straight to it)."""
    from safetensors.torch import save_file, save_model

    from .cli import _umask

    new, old, final = (os.path.join(out, RESUME_DIR + s) for s in (".new", ".old", ""))
    shutil.rmtree(new, ignore_errors=True)
    os.makedirs(new)
    save_model(model, os.path.join(new, "model.safetensors"))          # handles tied weights (shared tensors)
    tensors, opt_meta = _optimizer_tensors(opt)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    save_file(tensors, os.path.join(new, "optimizer.safetensors"))
    for name in ("model.safetensors", "optimizer.safetensors"):     # safetensors makes them 0600; state.json (open),
        os.chmod(os.path.join(new, name), 0o666 & ~_umask())        # the folders and the checkpoint get the umask's
    np_state = np.random.get_state()
    state = {"format_version": FORMAT_VERSION, "progress": progress, "settings": settings, "optimizer": opt_meta,
             "shuffle_generator": gen.bit_generator.state, "python_random": random.getstate(),
             "numpy_global": [np_state[0], np_state[1].tolist(), *np_state[2:]], "log": log}
    with open(os.path.join(new, STATE_FILE), "w", encoding="utf-8") as f:
        json.dump(state, f)
    if resume_dir(out) == old:              # an earlier swap was cut: its state is the only whole one, put it back
        shutil.rmtree(final, ignore_errors=True)
        os.replace(old, final)
    shutil.rmtree(old, ignore_errors=True)
    if os.path.isdir(final):
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


#: the note a run leaves in its resume state before it writes a new best checkpoint (:func:`note_checkpoint`)
PENDING_FILE = "checkpoint_pending.json"


def note_checkpoint(out: str | os.PathLike, epoch: int) -> None:
    """Before the run in ``out`` replaces its best checkpoint with epoch ``epoch``'s weights: note it in its resume
    state (when there is one), so that a resume after a cut between that write and the next :func:`save` knows the
    new checkpoint as the run's own (:func:`check_checkpoint`). A new run removes the state first, so no other run's
    checkpoint is ever noted there."""
    from .cli import written_whole

    folder = resume_dir(out)
    if folder is not None:
        with written_whole(os.path.join(folder, PENDING_FILE)) as f:
            json.dump({"epoch": int(epoch)}, f)


def check_checkpoint(out: str | os.PathLike, folder: str | os.PathLike, state: dict) -> str | None:
    """``ValueError`` naming both when ``out/model.safetensors`` is not the checkpoint the resume state in ``folder``
    belongs to (``state``'s ``progress["checkpoint_sha256"]``): another run (``--overwrite``) or a copy replaced it,
    and a resume would train on and test weights of another model under this run's log. The run's own checkpoint of
    the epoch after the state (noted by :func:`note_checkpoint`, then cut before the state's save) is accepted:
    returns a note saying so (the epoch is trained again), else ``None``. A state saved before the digest was kept
    is not checked."""
    from .pretrained import weights_sha256

    progress = state.get("progress") or {}
    if "checkpoint_sha256" not in progress:
        return None
    recorded, now = progress["checkpoint_sha256"], weights_sha256(out)
    if now == recorded:
        return None
    try:
        with open(os.path.join(folder, PENDING_FILE), encoding="utf-8") as f:
            pending = json.load(f).get("epoch")
    except (OSError, ValueError, AttributeError):
        pending = None
    if now is not None and pending == progress.get("epoch", -1) + 1:
        return (f"the checkpoint in {out} is the run's epoch {pending}, written after its state was saved: that epoch "
                "is trained again")
    weights = os.path.join(out, "model.safetensors")
    raise ValueError(f"--resume: {weights} ({_digest_text(now)}) is not the checkpoint the resume state {folder} was "
                     f"saved with ({_digest_text(recorded)}): another run or a copy replaced it since, and the state "
                     "cannot continue other weights; start a new run (--overwrite discards this one's state)")


def _digest_text(digest: str | None) -> str:
    return "none" if digest is None else f"sha256 {digest[:12]}"


def load(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(state, tensors)`` of a resume folder; ``ValueError`` naming the folder when it is unreadable or of another
    format version."""
    from safetensors.torch import load_file

    try:
        with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
            state = json.load(f)
        tensors = load_file(os.path.join(path, "optimizer.safetensors"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable resume state ({e})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: resume state format "
                         f"{state.get('format_version') if isinstance(state, dict) else state!r}, this zoo reads "
                         f"{FORMAT_VERSION}")
    missing = [k for k in STATE_KEYS if k not in state]
    missing += [f"progress.{k}" for k in PROGRESS_KEYS
                if "progress" not in missing
                and (not isinstance(state["progress"], dict) or k not in state["progress"])]
    if missing or "rng.torch" not in tensors:
        raise ValueError(f"{path}: incomplete resume state ({STATE_FILE} lacks {', '.join(missing)})" if missing else
                         f"{path}: incomplete resume state (optimizer.safetensors lacks rng.torch)")
    return state, tensors


#: what :func:`save` writes in ``state.json`` (and ``progress``) and :func:`restore` reads
STATE_KEYS = ("progress", "settings", "optimizer", "shuffle_generator", "python_random", "numpy_global", "log")
PROGRESS_KEYS = ("epoch", "best", "best_epoch", "bad", "elapsed_s")


def check_settings(saved: dict, given: dict) -> None:
    """``ValueError`` listing every setting (other than :data:`RESUMABLE_CHANGES`) that differs from the run's."""
    saved, given = {**SETTING_DEFAULTS, **saved}, {**SETTING_DEFAULTS, **given}   # absent: the default either side
    diff = [f"{k}: the run has {saved.get(k)!r}, given {given.get(k)!r}" for k in sorted(set(saved) | set(given))
            if k not in RESUMABLE_CHANGES and saved.get(k) != given.get(k)]
    if diff:
        raise ValueError("--resume continues a run with its own settings; these differ: " + "; ".join(diff)
                         + f" (only {', '.join(RESUMABLE_CHANGES[:2])} may change)")


def restore(path: str | os.PathLike, state: dict, tensors: dict, model: torch.nn.Module,
            opt: torch.optim.Optimizer, gen: np.random.Generator) -> None:
    """Load the saved weights, optimizer state and generator states into ``model``, ``opt`` and ``gen`` (in place);
    ``ValueError`` naming the folder when any of them cannot be restored (a truncated or foreign file)."""
    try:
        _restore(path, state, tensors, model, opt, gen)
    except Exception as e:                   # safetensors' own errors, a state of another model or optimizer, ...
        raise ValueError(f"{path}: the resume state cannot be restored ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from e


def _restore(path, state, tensors, model, opt, gen) -> None:
    from safetensors.torch import load_model

    load_model(model, os.path.join(path, "model.safetensors"), strict=True, device=str(next(model.parameters()).device))
    opt.load_state_dict(_optimizer_state_dict({k: v for k, v in tensors.items() if k.startswith("state.")},
                                              state["optimizer"]))
    gen.bit_generator.state = state["shuffle_generator"]
    version, internal, gauss = state["python_random"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy_global"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda_keys = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    cuda = [tensors[k] for k in cuda_keys]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def remove(out: str | os.PathLike) -> None:
    """Drop the resume state of a run that has finished (nothing left to resume)."""
    for s in ("", ".new", ".old"):
        shutil.rmtree(os.path.join(out, RESUME_DIR + s), ignore_errors=True)
