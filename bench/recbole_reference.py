"""RecBole v1.2.0 (the framework behind Mamba4Rec, TiM4Rec, SSD4Rec and the RecBole baselines) side by side with the zoo.

RecBole is *not* a project dependency; this script runs in an environment that has it, e.g.::

    python -m venv --system-site-packages /tmp/rbenv            # sees torch and the zoo from the main environment
    /tmp/rbenv/bin/pip install recbole==1.2.0 kmeans_pytorch     # kmeans_pytorch: imported by RecBole's model registry

RecBole 1.2.0 predates NumPy 2: :func:`_numpy2_shims` restores the removed aliases it uses (``np.float_``,
``np.complex_``, ``np.unicode_``, ``np.NaN``, ``np.Inf``, and ``np.float`` / ``np.int`` for its metrics).

Subcommands (all print what they measured; nothing here is a test):

``order-probe``
    How RecBole orders one user's events. Its float fields become ``torch.FloatTensor`` before the (stable) sort by
    (user, timestamp), so Unix times around 1e9 s are compared at float32 resolution (64 s): events less than a
    float32 step apart tie and keep the *file* order. Writes a 3-user file whose first six events per user are 5 s
    apart and written newest first, and prints the histories RecBole builds from it.
``train``
    Trains RecBole's own SASRec with its own trainer (prefix augmentation, CE over all items, Adam, early stopping on
    valid NDCG@10) and writes ``--out``: the best checkpoint RecBole saved, ``state_dict.pth`` (tensors only, RecBole's
    key layout, for ``python -m zoo.convert --model sasrec``), ``recbole_config.json`` (its plain settings, e.g.
    ``n_heads``), ``item_tokens.txt`` / ``user_tokens.txt`` (RecBole's
    internal order), ``recbole_result.json`` (RecBole's own valid/test metrics) and ``test_inputs.npz`` (RecBole's test
    windows, lengths, targets and its full-sort scores).
``fixture``
    From a RecBole SASRec checkpoint, writes the zoo's test fixture: ``state_dict.pth`` (``{"state_dict": ...}``, tensors
    only) and ``scores.npz`` (seeded random right-padded histories, their lengths and RecBole's ``full_sort_predict``
    scores). ``tests/test_hub_convert.py`` converts the state dict with ``zoo.convert`` and compares.
``compare``
    (zoo side; RecBole not needed) Converts ``--run``'s ``state_dict.pth`` with ``zoo.convert`` and scores RecBole's own
    test inputs with the zoo's SASRec: max score difference, target ranks, HR/NDCG@K and ``Hist@K`` (share of the top-K
    taken by the input window's items) of the RecBole-trained model.

Results: ``bench/RECBOLE_SIDE_BY_SIDE.md`` (SASRec on ML-100K, RecBole's trainer against ``zoo.train``).

Note: RecBole maps the dataset name ``ml-100k`` to the copy bundled inside the package (``recbole/dataset_example``,
the same 100,000 ratings in the original ``u.data`` row order, with ``normalize_all: True`` from its ``ml-100k.yaml``),
whatever ``--data-dir`` says; any other name is read from ``--data-dir/NAME/NAME.inter``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the zoo, for `compare`

from export.fsutil import (  # noqa: E402  (the standard library only: no zoo, no torch)
    EXIT_CODES, EXIT_ERROR, EXIT_MISSING, exit_with, positive_int, run_cli)


def _numpy2_shims() -> None:
    """The NumPy aliases RecBole 1.2.0 still uses (removed in NumPy 2.0); no-ops where they exist."""
    for name, value in [("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_),
                        ("NaN", np.nan), ("Inf", np.inf)]:
        if name not in np.__dict__:
            setattr(np, name, value)


@contextlib.contextmanager
def _scratch():
    """A scratch folder for a subcommand that runs RecBole (its working folder, see :func:`_recbole`), removed with
    what RecBole wrote there when the subcommand ends, on an error or Ctrl-C too; the working folder is restored."""
    cwd, path = os.getcwd(), tempfile.mkdtemp(prefix="recbole-cwd-")
    try:
        yield path
    finally:
        os.chdir(cwd)
        shutil.rmtree(path, ignore_errors=True)


def _recbole(scratch: str):
    """RecBole's pieces, its working folder ``scratch`` (:func:`_scratch`)."""
    _numpy2_shims()
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")   # RecBole reloads its own pickled checkpoints
    os.chdir(scratch)                                                  # RecBole writes log/ and log_tensorboard/ here
    del sys.argv[1:]                                                   # RecBole's Config also parses --key=value argv
    try:
        from recbole.config import Config
        from recbole.data import create_dataset, data_preparation
        from recbole.model.sequential_recommender import SASRec
        from recbole.trainer import Trainer
        from recbole.utils import init_logger, init_seed
    except ImportError as e:
        exit_with(EXIT_MISSING, f"error: RecBole is not importable here ({e}); see this script's docstring for the "
                                "environment it needs")                # a package it needs is missing: exit 4
    np.float, np.int = np.float64, int                                  # used by RecBole's metrics at run time
    return Config, create_dataset, data_preparation, SASRec, Trainer, init_logger, init_seed


def _config(args, **extra) -> dict:
    cfg = {
        "data_path": args.data_dir, "checkpoint_dir": getattr(args, "out", tempfile.gettempdir()),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": "[5,inf)", "item_inter_num_interval": "[5,inf)",
        "MAX_ITEM_LIST_LENGTH": args.max_len, "train_neg_sample_args": None, "loss_type": "CE",
        "hidden_size": args.hidden_size, "inner_size": args.inner_size, "n_layers": args.layers, "n_heads": args.heads,
        "hidden_dropout_prob": args.hidden_dropout, "attn_dropout_prob": args.attn_dropout,
        "epochs": args.epochs, "stopping_step": args.stopping_step, "train_batch_size": args.batch_size,
        "eval_batch_size": 4096, "learning_rate": args.lr,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["Hit", "NDCG", "MRR"], "topk": [5, 10, 20], "valid_metric": "NDCG@10",
        "use_gpu": False, "device": "cpu", "seed": args.seed, "reproducibility": True, "show_progress": False,
    }
    cfg.update(extra)
    return cfg


def order_probe(args) -> int:
    Config, create_dataset, data_preparation, SASRec, *_ = _recbole(args.scratch)
    root = os.path.join(args.scratch, "order-probe")                   # its data file
    os.makedirs(os.path.join(root, "tieprobe"))
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(1, 4):
        for k in reversed(range(6)):                                   # written newest first, 5 s apart
            rows.append(f"{u}\t{10 * u + k}\t{970000000 + 5 * k}")
        rows.append(f"{u}\t{10 * u + 9}\t{970000000 + 1000}")          # 1,000 s later: the true last event
    with open(os.path.join(root, "tieprobe", "tieprobe.inter"), "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    ns = argparse.Namespace(**{**vars(args), "data_dir": root})
    config = Config(model=SASRec, dataset="tieprobe", config_dict=_config(
        ns, user_inter_num_interval=None, item_inter_num_interval=None, normalize_all=None, normalize_field=None))
    ds = create_dataset(config)
    _, valid, test = data_preparation(config, ds)
    inter = test.dataset.inter_feat
    print(f"timestamps after loading: {inter['timestamp'].dtype} (float32 step at 9.7e8 s: "
          f"{float(np.spacing(np.float32(9.7e8))):.0f} s)")
    print("true time order per user: 10 11 12 13 14 15 (5 s apart), then 19 (1,000 s later); file order 15 14 ... 10, 19")
    reversed_users = 0
    for u, n, seq, t in zip(inter["user_id"], inter["item_length"], inter["item_id_list"], inter["item_id"],
                            strict=True):
        hist = [str(x) for x in ds.id2token("item_id", seq[:n].numpy())]
        print(f"  user {ds.id2token('user_id', [int(u)])[0]}: RecBole test history {' '.join(hist)} -> "
              f"{ds.id2token('item_id', [int(t)])[0]}")
        reversed_users += hist == sorted(hist, key=int, reverse=True)
    print(f"{reversed_users} of {len(inter)} users keep the file order inside the 64-s float32 step "
          "(i.e. RecBole's order there is the file's, not the timestamps')")
    return 0


def _export(model, ds, test, config, out: str) -> None:
    import torch

    from zoo.convert import recbole_settings

    # RecBole's settings, plain values only
    with open(os.path.join(out, "recbole_config.json"), "w", encoding="utf-8") as f:
        json.dump(recbole_settings(config), f, indent=1, sort_keys=True)

    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
               os.path.join(out, "state_dict.pth"))
    for field, name in (("item_id", "item_tokens.txt"), ("user_id", "user_tokens.txt")):
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.write("\n".join(str(t) for t in ds.field2id_token[field]) + "\n")
    rows, lens, targets, users, scores = [], [], [], [], []
    model.eval()
    with torch.no_grad():
        for batched in test:
            inter = batched[0]
            rows.append(inter["item_id_list"])
            lens.append(inter["item_length"])
            targets.append(inter["item_id"])
            users.append(inter["user_id"])
            scores.append(model.full_sort_predict(inter).view(len(inter), -1))
    np.savez_compressed(os.path.join(out, "test_inputs.npz"), item_id_list=torch.cat(rows).numpy(),
                        item_length=torch.cat(lens).numpy(), target=torch.cat(targets).numpy(),
                        user=torch.cat(users).numpy(), scores=torch.cat(scores).numpy())


def _write_result(out: str, result: dict) -> None:
    with open(os.path.join(out, "recbole_result.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, default=float)
    print(json.dumps(result, indent=1, default=float))


def train(args) -> int:
    Config, create_dataset, data_preparation, SASRec, Trainer, init_logger, init_seed = _recbole(args.scratch)
    import torch

    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    config = Config(model=SASRec, dataset=args.dataset, config_dict=_config(args))
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    ds = create_dataset(config)
    print(ds)
    stats = {"users": ds.user_num - 1, "items": ds.item_num - 1, "interactions": ds.inter_num}
    train_data, valid, test = data_preparation(config, ds)
    model = SASRec(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)
    t0 = time.time()
    _, best_valid = trainer.fit(train_data, valid, saved=True, show_progress=False, verbose=True)
    test_result = trainer.evaluate(test, load_best_model=True, show_progress=False)
    result = {"recbole_valid": dict(best_valid), "recbole_test": dict(test_result),
              "minutes": round((time.time() - t0) / 60, 1), "checkpoint": trainer.saved_model_file,
              **stats, "command": args.command}
    _export(trainer.model, ds, test, config, args.out)
    _write_result(args.out, result)
    return 0


def export(args) -> int:
    """RecBole's own metrics and test inputs for a checkpoint written by ``train`` (e.g. while it still runs)."""
    Config, create_dataset, data_preparation, SASRec, Trainer, init_logger, init_seed = _recbole(args.scratch)
    import torch

    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)   # our own RecBole run's file
    config = ckpt["config"]
    config["device"] = torch.device("cpu")
    init_seed(config["seed"], config["reproducibility"])
    ds = create_dataset(config)
    train_data, valid, test = data_preparation(config, ds)
    model = SASRec(config, train_data.dataset)
    model.load_state_dict(ckpt["state_dict"])
    trainer = Trainer(config, model)
    os.makedirs(args.out, exist_ok=True)
    result = {"epoch": ckpt.get("cur_epoch"), "checkpoint": args.checkpoint,
              "recbole_valid": dict(trainer.evaluate(valid, load_best_model=False, show_progress=False)),
              "recbole_test": dict(trainer.evaluate(test, load_best_model=False, show_progress=False))}
    _export(model, ds, test, config, args.out)
    _write_result(args.out, result)
    return 0


def fixture(args) -> int:
    _, _, _, SASRec, *_ = _recbole(args.scratch)
    import torch

    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)   # our own RecBole run's file
    config = ckpt["config"]
    sd = {k: v.contiguous() for k, v in ckpt["state_dict"].items()}
    n_items, max_len = sd["item_embedding.weight"].shape[0], sd["position_embedding.weight"].shape[0]

    class _Data:                                                       # what SASRec.__init__ reads off a dataset
        def num(self, field):
            return n_items

        def fields(self, *a, **k):
            return []

    config["device"] = torch.device("cpu")
    model = SASRec(config, _Data())
    model.load_state_dict(sd)
    model.eval()
    g = torch.Generator().manual_seed(args.seed)
    lengths = torch.cat([torch.tensor([1, 2, max_len, max_len]), torch.randint(1, max_len + 1, (args.rows - 4,),
                                                                                 generator=g)])
    ids = torch.randint(1, n_items, (args.rows, max_len), generator=g)
    ids[torch.arange(max_len)[None] >= lengths[:, None]] = 0           # RecBole's right padding
    from recbole.data.interaction import Interaction

    with torch.no_grad():
        scores = model.full_sort_predict(Interaction({"item_id_list": ids, "item_length": lengths}))
    os.makedirs(args.out, exist_ok=True)
    torch.save({"state_dict": sd}, os.path.join(args.out, "state_dict.pth"))
    np.savez_compressed(os.path.join(args.out, "scores.npz"), item_id_list=ids.numpy(), item_length=lengths.numpy(),
                        scores=scores.view(args.rows, -1).numpy())
    print(f"wrote {args.out}: RecBole SASRec ({sum(v.numel() for v in sd.values()):,} parameters, n_items {n_items}, "
          f"max_len {max_len}) and its scores for {args.rows} random histories")
    return 0


#: the files of a ``train``/``export`` folder that ``compare`` reads
RUN_FILES = ("recbole_config.json", "state_dict.pth", "item_tokens.txt", "test_inputs.npz", "recbole_result.json")


def compare(args) -> int:
    """The ``compare`` subcommand (see the module's docstring); a ``--run`` that is no folder, or lacks one of
    :data:`RUN_FILES`, exits 1 naming it before the zoo is loaded or anything is written."""
    missing = [name for name in RUN_FILES if not os.path.isfile(os.path.join(args.run, name))]
    if not os.path.isdir(args.run):                                    # before the zoo is loaded or zoo/ is written
        exit_with(EXIT_ERROR, f"error: compare --run {args.run}: no such folder")
    if missing:
        exit_with(EXIT_ERROR, f"error: compare --run {args.run}: no {', '.join(missing)} (not a folder that train or "
                              "export wrote)")
    import torch
    from transformers import AutoModel

    import zoo  # noqa: F401  (registers the models)
    from zoo.convert import convert, recbole_fields
    from zoo.metrics import compute_metrics, history_in_top_k, rank_of_target

    with open(os.path.join(args.run, "recbole_config.json"), encoding="utf-8") as f:
        settings = json.load(f)
    zdir = os.path.join(args.run, "zoo")
    convert("sasrec", os.path.join(args.run, "state_dict.pth"), zdir,
            item_tokens=os.path.join(args.run, "item_tokens.txt"), overrides=recbole_fields("sasrec", settings))
    model = AutoModel.from_pretrained(zdir).eval()
    z = np.load(os.path.join(args.run, "test_inputs.npz"))
    ids, lens = torch.from_numpy(z["item_id_list"]), torch.from_numpy(z["item_length"])
    with torch.no_grad():
        ours = model(ids, torch.arange(ids.shape[1])[None] < lens[:, None]).logits
    theirs = torch.from_numpy(z["scores"])
    print(f"{len(ids)} RecBole test inputs: max |zoo - RecBole| score {(ours - theirs).abs().max().item():.2e}")
    ours[:, 0] = theirs[:, 0] = -torch.inf                             # the padding item is never ranked
    target = torch.from_numpy(z["target"])
    r_zoo, r_rb = rank_of_target(ours, target), rank_of_target(theirs, target)
    print(f"target rank differs for {int((r_zoo != r_rb).sum())} users")
    m = compute_metrics(r_zoo, ks=args.ks, metrics=("HR", "NDCG"), recall_alias=False)
    with open(os.path.join(args.run, "recbole_result.json"), encoding="utf-8") as f:
        rb = json.load(f)["recbole_test"]
    print("| K | HR@K (zoo) | HR@K (RecBole) | NDCG@K (zoo) | NDCG@K (RecBole) | Hist@K (zoo) |\n|---|---|---|---|---|---|")
    for k in args.ks:
        hist = history_in_top_k(ours, ids, k).double() / k
        print(f"| {k} | {m[f'HR@{k}']:.4f} | {rb.get(f'hit@{k}', float('nan')):.4f} | {m[f'NDCG@{k}']:.4f} | "
              f"{rb.get(f'ndcg@{k}', float('nan')):.4f} | {hist.mean():.4f} |")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0], epilog=EXIT_CODES)
    sub = p.add_subparsers(dest="cmd", required=True)
    about = {"order-probe": "how RecBole orders one user's events (a 3-user probe file)",
             "train": "train RecBole's SASRec with its own trainer and write --out",
             "export": "write --out as train does, from a RecBole SASRec checkpoint (no training)",
             "fixture": "write the zoo's test fixture from a RecBole SASRec checkpoint",
             "compare": "(zoo side, no RecBole) score RecBole's test inputs with the converted model of --run"}
    tmp = tempfile.gettempdir()
    for name in ("order-probe", "train"):
        q = sub.add_parser(name, allow_abbrev=False, help=about[name], description=about[name], epilog=EXIT_CODES)
        q.add_argument("--dataset", default="ml-100k", help="RecBole's dataset name: ml-100k is RecBole's bundled "
                       "copy; another NAME is read from --data-dir/NAME/NAME.inter (default: %(default)s)")
        q.add_argument("--data-dir", default=tmp, help="the folder of the datasets other than ml-100k (default: "
                                                       "the temporary folder, %(default)s)")
        q.add_argument("--out", default=os.path.join(tmp, "recbole-sasrec"),
                       help="the folder train writes (RecBole's checkpoint folder too) (default: %(default)s)")
        for flag, kind, value, what in [
                ("--max-len", positive_int, 50, "SASRec's MAX_ITEM_LIST_LENGTH (window length)"),
                ("--hidden-size", positive_int, 64, "SASRec's hidden_size"),
                ("--inner-size", positive_int, 256, "SASRec's inner_size (feed-forward width)"),
                ("--layers", positive_int, 2, "SASRec's n_layers"),
                ("--heads", positive_int, 2, "SASRec's n_heads"),
                ("--hidden-dropout", float, 0.2, "SASRec's hidden_dropout_prob"),
                ("--attn-dropout", float, 0.2, "SASRec's attn_dropout_prob"),
                ("--epochs", positive_int, 200, "the most epochs RecBole trains"),
                ("--stopping-step", positive_int, 10,
                 "RecBole's early stopping: epochs without a better valid NDCG@10"),
                ("--batch-size", positive_int, 2048, "RecBole's train_batch_size"),
                ("--lr", float, 1e-3, "Adam's learning rate"),
                ("--seed", int, 2020, "RecBole's seed"),
                ("--threads", positive_int, 1, "torch's CPU threads")]:
            q.add_argument(flag, type=kind, default=value, help=f"{what} (default: %(default)s)")
    for name in ("export", "fixture"):
        q = sub.add_parser(name, allow_abbrev=False, help=about[name], description=about[name], epilog=EXIT_CODES)
        q.add_argument("--checkpoint", required=True, help="the RecBole SASRec checkpoint (.pth) RecBole saved")
        q.add_argument("--out", required=True, help="the folder to write")
    # fixture's own options (q: the loop's last parser, fixture's)
    q.add_argument("--rows", type=positive_int, default=32,
                   help="random histories scored (at least 4: the first four are of lengths 1, 2, max, max) "
                        "(default: %(default)s)")
    q.add_argument("--seed", type=int, default=0, help="seed of the random histories (default: %(default)s)")
    q = sub.add_parser("compare", allow_abbrev=False, help=about["compare"], description=about["compare"],
                       epilog=EXIT_CODES)
    q.add_argument("--run", required=True, help="a folder written by train or export")
    q.add_argument("--ks", type=positive_int, nargs="+", default=[5, 10, 20],
                   help="cut-offs K of the metrics (default: 5 10 20)")
    args = p.parse_args(argv)
    if args.cmd == "fixture" and args.rows < 4:
        p.error(f"fixture --rows must be >= 4 (its first four histories are of lengths 1, 2, max, max), got "
                f"{args.rows}")
    if getattr(args, "checkpoint", None) and not os.path.isfile(args.checkpoint):   # export, fixture: before RecBole
        exit_with(EXIT_ERROR, f"error: {args.cmd} --checkpoint {args.checkpoint}: no such file")
    args.command = "python bench/recbole_reference.py " + " ".join(sys.argv[1:] if argv is None else argv)
    for name in ("out", "data_dir", "checkpoint", "run"):              # absolute: RecBole runs in a scratch cwd
        if getattr(args, name, None):
            setattr(args, name, os.path.abspath(getattr(args, name)))
    run = {"order-probe": order_probe, "train": train, "export": export, "fixture": fixture,
           "compare": compare}[args.cmd]
    if run is compare:                                                 # the zoo side: no RecBole, no scratch folder
        return run(args)
    with _scratch() as args.scratch:
        return run(args)


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python bench/recbole_reference.py"))
