"""Model soups: the weight average of checkpoints of one model, chosen on validation (Wortsman et al., "Model soups:
averaging weights of multiple fine-tuned models improves accuracy without increasing inference time", ICML 2022).

CLI::

    python -m zoo.soup --models CKPT [CKPT ...] --data FILE --out DIR [--method greedy|uniform] [--exclude-history]
                       [--revision REV] [--subfolder DIR]

The ingredients are checkpoints of the same model -- same type, same weight names and shapes, same item vocabulary --
typically the stages and side runs of one lineage (``zoo.train --init-from`` restarts of a card), the setting in which
the paper finds averaging to work (measured here on ML-1M: +0.0003 to +0.0015 validation NDCG@10, test changes inside
the test users' resolution; the Mamba4Rec, SASRec and BERT4Rec cards are soups). Each ingredient is scored by
validation NDCG@10 on ``FILE`` (the leave-one-out validation item; ``--exclude-history`` for LRURec's protocol).
``uniform`` averages them all; ``greedy`` (the paper's recipe) starts from the best ingredient and adds the others in
order of their own score, keeping each one only if the soup's validation NDCG@10 does not drop. The test split is
never read.

``DIR`` receives a normal model folder (``config.json`` of the first checkpoint listed, ``model.safetensors``,
``item_vocab.json``), loadable with ``from_pretrained`` and evaluated or exported like any checkpoint, and
``soup_log.json``: the method, every ingredient with its validation score and whether it is in the soup, the soup's
score, the data, the protocol, the command, the ``--revision`` / ``--subfolder`` the ``--models`` were read at (when
given: one of each, for every entry) and the ingredients' training history (:func:`soup_lineage`: the stages they
share, then each one's own stages). An ``--out`` that holds files is refused unless ``--overwrite`` (replaced
whole, once complete). ``python -m zoo.hub card --run DIR`` cards a soup folder like a training run: its card lists
the ingredients and every stage that made them.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import time
from typing import Callable, NoReturn, Sequence

import torch

from export.fsutil import strict_json

from .hub import SOUP_LOG
METHODS = ("greedy", "uniform")


def average_state_dicts(state_dicts: Sequence[dict]) -> dict:
    """The element-wise mean of ``state_dicts`` (same keys and shapes), computed in float64 and cast back to each
    tensor's dtype; non-floating tensors (buffers such as indices) must be equal and are kept."""
    if not state_dicts:
        raise ValueError("no state dicts to average")
    first = state_dicts[0]
    out = {}
    for k, v in first.items():
        if v.is_floating_point():
            out[k] = (sum(sd[k].double() for sd in state_dicts) / len(state_dicts)).to(v.dtype)
        else:
            if any(not torch.equal(sd[k], v) for sd in state_dicts[1:]):
                raise ValueError(f"non-floating tensor {k!r} differs between the checkpoints: they cannot be averaged")
            out[k] = v.clone()
    return out


def check_ingredients(models: Sequence, names: Sequence[str]) -> list[str]:
    """``ValueError`` naming the first checkpoint that cannot be averaged with the first one: another model type,
    other weight names or shapes, another item vocabulary, another value of a config field that changes what the
    weights compute (any but :data:`TRAINING_ONLY_FIELDS` and :data:`BOOKKEEPING_FIELDS`). Returns notes on the
    training-only fields that differ (dropout, say),
    which the soup takes from the first checkpoint (it scores every ingredient and writes the soup with that config)."""
    ref, ref_name = models[0], names[0]
    ref_sd = ref.state_dict()
    ref_vocab = getattr(ref, "item_vocab", None)
    notes = []
    for m, name in zip(models[1:], names[1:], strict=True):
        if m.config.model_type != ref.config.model_type:
            raise ValueError(f"{name} is a {m.config.model_type} model, {ref_name} a {ref.config.model_type}: a soup "
                             "averages checkpoints of one model")
        sd = m.state_dict()
        if set(sd) != set(ref_sd):
            diff = sorted(set(sd) ^ set(ref_sd))[:4]
            raise ValueError(f"{name} and {ref_name} have different weights (e.g. {diff}): not the same architecture")
        shapes = [k for k in ref_sd if sd[k].shape != ref_sd[k].shape]
        if shapes:
            raise ValueError(f"{name} and {ref_name} differ in the shape of {shapes[:4]}: not the same architecture")
        if getattr(m, "item_vocab", None) != ref_vocab:                # ItemVocab equality: the same ids in order
            raise ValueError(f"{name} and {ref_name} have different item vocabularies: their item rows do not "
                             "mean the same items")
        a, b = ref.config.to_dict(), m.config.to_dict()
        for k in sorted(set(a) | set(b)):
            if k in BOOKKEEPING_FIELDS or a.get(k) == b.get(k):
                continue
            if k not in TRAINING_ONLY_FIELDS:       # the same weights compute another function under it
                raise ValueError(f"{name} and {ref_name} differ in config field {k} ({b.get(k)!r} against "
                                 f"{a.get(k)!r}): it changes what the weights compute, so they cannot be averaged")
            notes.append(f"{name}: {k} = {b.get(k)!r} ({ref_name}: {a.get(k)!r}); the soup keeps {a.get(k)!r}")
    return notes


#: config fields that do not describe the model (transformers' and the zoo's bookkeeping): ignored by a soup
BOOKKEEPING_FIELDS = frozenset({
    "_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype", "output_attentions",
    "output_hidden_states", "return_dict", "id2label", "label2id", "problem_type", "chunk_size_feed_forward",
    "is_encoder_decoder", "item_vocab_file"})
#: config fields that act only in training or at initialisation (dropouts, masking, init ranges): ingredients may
#: differ in them (noted; the soup keeps the first's). Any other difference is refused.
TRAINING_ONLY_FIELDS = frozenset({
    "hidden_dropout", "attn_dropout", "dropout_prob", "time_dropout_prob", "initializer_range",
    "initializer_cutoff", "A_init_range", "dt_min", "dt_max", "dt_init_floor", "mamba_init", "kaiming_init",
    "mask_ratio", "ft_ratio", "ft_prefix_sampling", "append_last_label"})


def soup_lineage(folders: Sequence[str | os.PathLike]) -> tuple[list[dict], list[dict], list[list[int]]]:
    """The training history of the ingredients in ``folders``, each one's as :func:`zoo.hub.training_stages` reads
    it (its ``--init-from`` chain): ``(shared, stages, own)``. ``shared``: the stages every ingredient went through
    (the longest common prefix); ``stages``: every later stage, once each, in order of first appearance (two
    ingredients restarted from the same checkpoint share its stages); ``own[i]``: the indices into ``stages`` of the
    stages ingredient ``i`` went through after ``shared`` (empty for the checkpoint that ends ``shared``)."""
    from .hub import training_stages

    chains = [training_stages(f) for f in folders]
    n = 0
    while all(len(c) > n for c in chains) and all(c[n] == chains[0][n] for c in chains[1:]):
        n += 1
    stages: list[dict] = []
    own = []
    for chain in chains:
        idx = []
        for st in chain[n:]:
            if st not in stages:
                stages.append(st)
            idx.append(stages.index(st))
        own.append(idx)
    return chains[0][:n], stages, own


def make_soup(state_dicts: dict, score: Callable[[dict], float], method: str = "greedy",
              log: Callable[[str], None] = lambda m: None) -> tuple[dict, list[dict], float]:
    """Average the ``{name: state_dict}`` ingredients by ``method``; ``score(state_dict)`` is the validation metric
    (higher is better). Returns ``(soup state dict, [{"path", "valid_NDCG@10", "in_soup"}] best first, soup score)``.
    Greedy: the best ingredient, then each next one kept only if the soup's score does not drop."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    own = {}
    for name, sd in state_dicts.items():
        own[name] = score(sd)
        log(f"{name}: valid NDCG@10 {own[name]:.5f}")
    order = sorted(state_dicts, key=lambda n: -own[n])
    if method == "uniform":
        chosen = list(order)
        best_sd = average_state_dicts([state_dicts[n] for n in chosen])
        best = score(best_sd)
    else:
        chosen, best_sd, best = [order[0]], state_dicts[order[0]], own[order[0]]
        for name in order[1:]:
            cand = average_state_dicts([state_dicts[n] for n in chosen + [name]])
            s = score(cand)
            keep = s >= best
            log(f"+ {name}: soup valid NDCG@10 {s:.5f} ({'kept' if keep else 'left out'}; best {best:.5f})")
            if keep:
                chosen, best_sd, best = chosen + [name], cand, s
    rows = [{"path": n, "valid_NDCG@10": own[n], "in_soup": n in chosen} for n in order]
    return best_sd, rows, best


def _same_folder(folders: Sequence[str]) -> tuple[int, int] | None:
    """``(i, j)``, ``i < j``, of the first two of ``folders`` that are one folder however spelled (a trailing ``/``,
    ``./``, a symbolic link), else None."""
    for j in range(1, len(folders)):
        for i in range(j):
            if os.path.samefile(folders[i], folders[j]):
                return i, j
    return None


def _data_options(folders: Sequence[str], names: Sequence[str], kcore, time_ties) -> tuple:
    """``(kcore, time_ties)`` to read ``--data`` with: each as given, else (:data:`zoo.cli.FROM_RUN`) as the
    ingredients' runs read their data (:func:`zoo.cli.model_data_options`, from their logs) -- ``ValueError`` when
    they disagree, as their validation would be scored on other data than some of them were trained on."""
    from .cli import model_data_options

    opts = [model_data_options(f, kcore, time_ties) for f in folders]
    for flag, key in (("--kcore", "kcore"), ("--time-ties", "time_ties")):
        for o, name in zip(opts[1:], names[1:]):
            if o[key] != opts[0][key]:
                def text(v):
                    return "none" if v is None else str(v)

                raise ValueError(f"{flag}: the ingredients' runs read their data otherwise ({names[0]}: "
                                 f"{text(opts[0][key])}, {name}: {text(o[key])}); give {flag} to score them all on "
                                 "one reading of --data")
    return opts[0]["kcore"], opts[0]["time_ties"]


def main(argv: Sequence[str] | None = None) -> dict:
    """Entry point of ``python -m zoo.soup``; returns the soup log."""
    from .cli import EXIT_CODES, EXIT_ERROR, add_columns_option, add_device_option, add_model_data_options
    from .cli import add_threads_option, apply_threads, cannot, cli_device, error_text, exit_with, written_whole_folder
    from .cli import command_prog
    from .pretrained import add_hub_options, hub_options

    p = argparse.ArgumentParser(allow_abbrev=False,
                                prog=command_prog("zoo.soup"), description=__doc__.split("\n\n")[0], epilog=EXIT_CODES)
    p.add_argument("--models", nargs="+", required=True,
                   help="checkpoints (folders or bundled Hub ids) to average, at least two (required)")
    add_hub_options(p, "each of --models")
    p.add_argument("--data", required=True,
                   help="interaction file whose validation split scores the ingredients (required)")
    p.add_argument("--out", required=True,
                   help="model folder to write (required; refused if it holds files, unless --overwrite)")
    p.add_argument("--method", choices=METHODS, default="greedy",
                   help="greedy (default; the paper's recipe): from the best ingredient, add each other one only if "
                        "the soup's validation NDCG@10 does not drop; uniform: average them all")
    p.add_argument("--exclude-history", action="store_true",
                   help="LRURec protocol: history items masked (default: off, RecBole's full ranking)")
    add_model_data_options(p, "scoring the ingredients (ingredients whose runs read their data otherwise are "
                              "refused unless it is given)")
    add_columns_option(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an --out folder that holds a model checkpoint, whole (a folder holding other files is "
                        "refused even so; default: off, an --out holding files is refused)")
    add_device_option(p, "the scoring of the ingredients and soups")
    add_threads_option(p, "the scoring")
    a = p.parse_args(argv)
    if len(a.models) < 2 or len(set(a.models)) != len(a.models):
        p.error("--models: give at least two different checkpoints")
    try:                                        # an empty --revision, or one for a local folder among --models
        hub = [hub_options(argparse.Namespace(models=m, revision=a.revision, subfolder=a.subfolder), "--models")
               for m in a.models][0]
    except ValueError as e:
        p.error(str(e))
    try:
        from .convert import check_out_folder

        check_out_folder(a.out, a.overwrite, {"--data": a.data, **{f"--models {m}": m for m in a.models}})
    except ValueError as e:
        p.error(str(e))
    device = cli_device(a.device)               # before any work: a malformed device exits 2, a missing GPU 4
    apply_threads(a.threads)
    importlib.import_module("zoo")     # registers the zoo models with AutoModel

    from .data import leave_one_out, load_dataset, load_options
    from .evaluate import align_with_model, evaluate_model
    from .modeling_utils import SeqRecPreTrainedModel
    from .pretrained import resolve_pretrained

    def failed(message: str) -> NoReturn:
        """The run failed (status 1, :data:`zoo.cli.EXIT_ERROR`): a checkpoint or the data that cannot be read or
        used; the options themselves were right (those are ``p.error``'s, status 2)."""
        exit_with(EXIT_ERROR, f"error: {message}")

    started = time.perf_counter()
    folders = []
    for m in a.models:                          # a --models typo fails as a --model one does in the other commands
        try:
            folders.append(resolve_pretrained(m, **hub))          # --revision / --subfolder: which checkpoint
        except (OSError, ValueError) as e:
            failed(f"--models {m}: {error_text(e)}")
    same = _same_folder(folders)
    if same:                    # A, A/, ./A or a link to A: one checkpoint, which a soup would count twice
        i, j = same
        p.error(f"--models: {a.models[i]} and {a.models[j]} are the same checkpoint "
                f"({os.path.realpath(folders[i])}); give at least two different checkpoints")
    try:                                        # runs that read their data otherwise: --kcore/--time-ties is missing
        a.kcore, a.time_ties = _data_options(folders, a.models, a.kcore, a.time_ties)
    except ValueError as e:
        p.error(error_text(e))
    models = []
    for f, m in zip(folders, a.models, strict=True):
        try:                    # the zoo's loader, as zoo.recommend's: a folder that is no model in one line
            models.append(SeqRecPreTrainedModel.from_pretrained(f).eval())
        except (OSError, ValueError) as e:
            failed(f"--models {m}: {error_text(e)}")
    try:
        notes = check_ingredients(models, a.models)
        shared, stages, own = soup_lineage(folders)     # before the scoring: a broken history fails fast
        from .hub import check_leave_one_out, training_stages

        for f, m in zip(folders, a.models):
            check_leave_one_out(training_stages(f), m)
    except (OSError, ValueError, KeyError) as e:
        failed(error_text(e))
    try:
        ds = load_dataset(a.data, kcore=a.kcore, time_ties=a.time_ties, columns=a.columns)
        ds, vocab_note = align_with_model(ds, models[0])
        if models[0].uses_timestamps:
            ds.check_timestamps_for(type(models[0]).__name__)
        valid = leave_one_out(ds).valid
    except (OSError, ValueError, KeyError) as e:        # KeyError: UnknownItemError (data the models do not know)
        failed(error_text(e))
    for n in notes:
        print(f"[zoo.soup] note: {n}", flush=True)
    # copies on the CPU: a state_dict() holds the model's own parameters, which scoring loads the other ingredients
    # into; the averages are taken there too, and only the scored model sits on --device
    ingredients = {n: {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
                   for n, m in zip(a.models, models, strict=True)}
    model = models[0].to(device)

    def score(sd: dict) -> float:
        model.load_state_dict(sd)                                       # copied onto the model's device
        return float(evaluate_model(model, valid, ks=(10,), exclude_history=a.exclude_history, device=device,
                                    progress=False, any_ks=True)["NDCG@10"])

    soup_sd, rows, best = make_soup(ingredients, score,
                                    a.method, lambda m: print(f"[zoo.soup] {m}", flush=True))
    model.load_state_dict(soup_sd)                                      # config and vocabulary: the first listed
    model.cpu()                                                         # written from the CPU, as it was read
    from .train import environment

    own_of = dict(zip(a.models, own, strict=True))
    for r in rows:
        r["stages"] = own_of[r["path"]]
    # the objective the soup's weights were trained with: the best ingredient's last stage (a card describes it)
    first = rows[0]["path"]
    trained = stages[own_of[first][-1]] if own_of[first] else (shared[-1] if shared else {})
    log = {"kind": "soup", "method": a.method, "ingredients": rows, "valid_NDCG@10": best,
           "init_valid_NDCG10": rows[0]["valid_NDCG@10"], "best_valid_NDCG10": best,
           **{k: v for k, v in hub.items() if v},        # --revision / --subfolder of --models, when given
           "data": os.path.abspath(a.data), "data_options": load_options(a.kcore, a.time_ties, a.columns),
           "protocol": "lrurec (history excluded)" if a.exclude_history else "recbole",
           "config_notes": notes, "vocab": vocab_note,
           "command": "python -m zoo.soup " + shlex.join(sys.argv[1:] if argv is None else argv),
           "environment": environment(), "n_parameters": sum(p.numel() for p in model.parameters()),
           **{k: trained[k] for k in ("window_stride", "loss_weighting", "loss", "batch_order") if k in trained},
           "soup_minutes": (time.perf_counter() - started) / 60,
           "stages": shared, "ingredient_stages": stages}
    try:                                        # strict JSON (jq refuses NaN), checked before the folder is made
        log_text = strict_json(log, indent=1)
    except ValueError as e:
        failed(f"--out {a.out}: not written: {SOUP_LOG} {e}")
    try:
        with written_whole_folder(a.out) as staged:
            model.save_pretrained(staged)
            with open(os.path.join(staged, SOUP_LOG), "w", encoding="utf-8") as f:
                f.write(log_text)
    except OSError as e:                        # its place was checked before any work (a full disk, say)
        failed(cannot("--out", a.out, e))
    kept = [r["path"] for r in rows if r["in_soup"]]
    print(f"[zoo.soup] wrote {a.out}: {a.method} soup of {len(kept)} of {len(rows)} checkpoints ({', '.join(kept)}), "
          f"valid NDCG@10 {best:.5f} (best ingredient {rows[0]['valid_NDCG@10']:.5f})", flush=True)
    return log


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
