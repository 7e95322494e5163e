"""Vectors for retrieval: ``python -m zoo.embed [--model NAME] --out VECTORS.safetensors [--data FILE]``.

Writes one safetensors file with the model's item vectors (tensor ``items``, ``[n_items - 1, vector_size]``) and,
with ``--data``, a user vector for every user of the file from the last ``max_seq_length`` items of the user's
history (the window the model reads; tensor ``users``, ``[n_users, vector_size]``). A user vector dotted with the item
vectors gives the model's next-item scores of those items (:meth:`~zoo.SeqRecPreTrainedModel.query_vectors`), so an
approximate-nearest-neighbour index (FAISS, ScaNN, a vector database) with maximum-inner-product search serves the
model's recommendations from precomputed user vectors.

The external ids of the rows are in the file's metadata (``item_ids``, ``user_ids``: JSON lists), beside ``model``,
``model_type``, ``vector_size`` and ``bias_column`` (``"true"`` when the last column carries the item bias: 1 in every
user vector). :func:`load_vectors` reads such a file back and checks it (ids, shapes, finite values). The file is
written beside ``--out`` and moved there once complete; vectors holding a NaN or an infinite value (a numeric
overflow) are refused, naming their rows, and nothing is written.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import struct
import sys
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from export.fsutil import strict_json

#: the ``format`` metadata value of a vectors file
FORMAT = "ssm-rec-zoo/vectors"
FORMAT_VERSION = "1"


@dataclass
class Vectors:
    """A vectors file read back by :func:`load_vectors`.

    Args:
        items: ``[n_items - 1, vector_size]`` float32 item vectors; ``item_ids`` their external ids, in row order.
        users: ``[n_users, vector_size]`` float32 user vectors (None when the file has none); ``user_ids`` likewise.
        metadata: the file's other metadata (``model``, ``model_type``, ``bias_column``, ...).
    """

    items: torch.Tensor
    item_ids: list
    users: torch.Tensor | None
    user_ids: list | None
    metadata: dict

    def scores(self, users: torch.Tensor | None = None) -> torch.Tensor:
        """``[U, n_items - 1]`` the model's next-item scores of every item (columns in ``item_ids`` order) for the
        file's user vectors, or for ``users [U, vector_size]``."""
        users = self.users if users is None else users
        if users is None:
            raise ValueError("the file holds no user vectors (written without --data): pass users=")
        return users @ self.items.t()


def nonfinite_rows(vectors: torch.Tensor) -> list[int]:
    """The rows of ``[N, D]`` ``vectors`` that hold a NaN or an infinite value (in any column), in order."""
    return (~torch.isfinite(vectors)).any(dim=1).nonzero().flatten().tolist() if vectors.numel() else []


def _rows_named(rows: list[int], ids: Sequence, n: int = 8) -> str:
    """``"rows [0, 2] (ids ['a', 'c'])"``: the first ``n`` of ``rows`` and their ids, `` ...`` when there are more."""
    more = " ..." if len(rows) > n else ""
    return f"rows {rows[:n]}{more} (ids {[ids[r] for r in rows[:n]]}{more})"


def user_vectors_of_dataset(model, ds, unknown: str = "error", batch_size: int = 256,
                            progress: bool = True) -> tuple[list, torch.Tensor, str]:
    """``(user ids, [U, vector_size] user vectors, vocabulary note)`` of every user of the
    :class:`~zoo.data.SequenceDataset` ``ds`` from the last ``max_seq_length`` items of the user's history
    (``unknown`` as in :func:`zoo.recommend.recommend_all_users`). A user vector holding a NaN or an infinite value
    (a numeric overflow, as :meth:`~zoo.SeqRecPreTrainedModel.predict` refuses NaN scores) is a ``ValueError``
    naming the users' rows and ids: an index would rank every item against a NaN query. ``progress``: a bar on
    stderr, shown only when stderr is a terminal."""
    from tqdm.auto import tqdm

    from .modeling_utils import _as_count
    from .recommend import histories_for

    batch_size = _as_count(batch_size, "batch_size")
    aligned, note, seqs, ts = histories_for(model, ds, unknown)
    out = []
    # disable=None: no bar when stderr is not a terminal (a log file, CI), where it would garble the lines after it
    with tqdm(total=len(aligned), desc="user vectors", unit="user", leave=False,
              disable=None if progress else True) as bar:
        for chunk, ids, mask, t in model.padded_batches(seqs, ts, batch_size):
            out.append(model.query_vectors(ids, mask, timestamps=t).cpu())
            bar.update(len(chunk))
    users, vectors = list(aligned.users), torch.cat(out)
    bad = nonfinite_rows(vectors)
    if bad:
        raise ValueError(f"the model's user vectors are NaN or infinite for {len(bad):,} of {len(users):,} users, "
                         f"{_rows_named(bad, users)} (a numeric overflow or NaN weights, e.g. in {model.dtype}): an "
                         "index would get NaN queries, so no vectors are written")
    return users, vectors, note


def _json_ids(ids: Sequence) -> str:
    from .recommend import _json_value

    return json.dumps([_json_value(x) for x in ids])


def write_vectors(path: str | os.PathLike, model, users: tuple[list, torch.Tensor] | None = None,
                  metadata: dict | None = None) -> dict:
    """Write ``model``'s item vectors (and ``users = (ids, vectors)``) to the safetensors file ``path``: written
    beside it and moved there once complete, so an error leaves an existing ``path`` as it was. Returns the
    metadata written (without the id lists). Vectors holding a NaN or an infinite value are a ``ValueError`` naming
    their rows and ids, before anything is written (:func:`load_vectors` refuses such a file)."""
    from safetensors.torch import save_file

    from .cli import written_whole_path

    iv = model.item_vectors()
    bias = model.item_output()[1] is not None
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_type": model.config.model_type,
            "vector_size": str(model.vector_size), "bias_column": "true" if bias else "false",
            "n_items": str(len(iv.ids)),
            "score": "users @ items.T = the model's next-item logits of the items (maximum inner product search)",
            **{k: str(v) for k, v in (metadata or {}).items()}}
    tensors = {"items": iv.vectors.contiguous()}
    ids = {"item_ids": _json_ids(iv.ids)}
    bad = nonfinite_rows(tensors["items"])
    if bad:
        raise ValueError(f"the model's item vectors are NaN or infinite in {_rows_named(bad, list(iv.ids))}: not "
                         "written")
    if users is not None:
        user_ids, user_vecs = users
        if user_vecs.shape != (len(user_ids), model.vector_size):
            raise ValueError(f"user vectors {list(user_vecs.shape)} do not match {len(user_ids)} user ids x "
                             f"vector_size {model.vector_size}")
        bad = nonfinite_rows(user_vecs)
        if bad:
            raise ValueError(f"user vectors are NaN or infinite in {_rows_named(bad, list(user_ids))}: not written")
        tensors["users"] = user_vecs.float().contiguous()
        ids["user_ids"] = _json_ids(user_ids)
        meta["n_users"] = str(len(user_ids))
    with written_whole_path(path) as tmp:
        save_file(tensors, tmp, metadata={**meta, **ids})
        _sort_header(tmp)
    return meta


def _sort_header(path: str | os.PathLike) -> None:
    """Rewrite the safetensors file ``path`` with its JSON header's keys sorted: safetensors writes the metadata in
    its hash map's order, which changes from run to run, so two identical runs wrote files that differ in bytes. The
    tensors' bytes and offsets (relative to the end of the header) are unchanged; the header is padded with spaces to
    a multiple of 8 bytes, as safetensors pads it."""
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.dumps(json.loads(raw[8:8 + n]), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + raw[8 + n:])


def load_vectors(path: str | os.PathLike) -> Vectors:
    """Read a file written by :func:`write_vectors` / ``python -m zoo.embed``; a file that is not one (another
    safetensors file, missing or mismatched ids, wrong shapes) is a ``ValueError`` naming the problem, and so is one
    whose vectors hold a NaN or an infinite value (written by an older zoo, or by another tool), naming the file,
    the tensor and its rows and ids."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            names = set(f.keys())
            tensors = {k: f.get_tensor(k) for k in names & {"items", "users"}}
    except SafetensorError as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a zoo vectors file (metadata format {meta.get('format')!r}, expected "
                         f"{FORMAT!r}; write one with python -m zoo.embed)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: vectors format version {meta.get('format_version')!r}; this zoo reads "
                         f"{FORMAT_VERSION!r}")

    def ids_of(kind: str) -> list | None:
        if kind not in tensors:
            if f"{kind[:-1]}_ids" in meta:
                raise ValueError(f"{path}: has {kind[:-1]}_ids but no {kind!r} tensor")
            return None
        try:
            ids = json.loads(meta[f"{kind[:-1]}_ids"])
        except (KeyError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: the {kind[:-1]}_ids metadata is missing or not JSON ({e})") from None
        t = tensors[kind]
        if not isinstance(ids, list) or t.dim() != 2 or t.shape[0] != len(ids):
            raise ValueError(f"{path}: {kind} tensor {list(t.shape)} does not match its "
                             f"{len(ids) if isinstance(ids, list) else 'non-list'} ids")
        if t.dtype != torch.float32:
            raise ValueError(f"{path}: {kind} tensor is {t.dtype}, expected float32")
        bad = nonfinite_rows(t)
        if bad:
            raise ValueError(f"{path}: the {kind} tensor holds NaN or infinite values in {len(bad):,} of {len(ids):,} "
                             f"rows, {_rows_named(bad, ids)}: not usable vectors (write the file again with python "
                             "-m zoo.embed, which refuses them)")
        return ids

    item_ids = ids_of("items")
    if item_ids is None:
        raise ValueError(f"{path}: holds no 'items' tensor")
    user_ids = ids_of("users")
    if user_ids is not None and tensors["users"].shape[1] != tensors["items"].shape[1]:
        raise ValueError(f"{path}: user vectors have {tensors['users'].shape[1]} columns, item vectors "
                         f"{tensors['items'].shape[1]}")
    rest = {k: v for k, v in meta.items() if k not in ("item_ids", "user_ids")}
    return Vectors(items=tensors["items"], item_ids=item_ids, users=tensors.get("users"), user_ids=user_ids,
                   metadata=rest)


def main(argv: Sequence[str] | None = None) -> dict:
    from .cli import EXIT_CODES, STDOUT_PATH, add_columns_option, add_device_option, add_model_data_options
    from .cli import add_threads_option, apply_threads, check_outputs, cli_device, folder_inputs, model_data_options
    from .cli import command_prog
    from .cli import positive_int, refuse_options_without, unknown_items_hint
    from .pretrained import add_hub_options, hub_options
    from .recommend import DEFAULT_MODEL

    p = argparse.ArgumentParser(allow_abbrev=False,
                                prog=command_prog("zoo.embed"), description=__doc__.split("\n\n")[0], epilog=EXIT_CODES)
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"folder or Hub id (default {DEFAULT_MODEL}, bundled)")
    add_hub_options(p)
    p.add_argument("--out", required=True, help="the safetensors file to write (items, and users with --data)")
    p.add_argument("--data", help="interaction file: also a user vector for every user, from the last "
                                  "max_seq_length items of their history (the window the model reads); default: "
                                  "item vectors only")
    p.add_argument("--unknown-items", choices=["error", "drop"], default="error",
                   help="--data items the model does not know: refuse (default) or leave those interactions out")
    add_model_data_options(p, "taking users", serving=True)
    add_columns_option(p)
    p.add_argument("--batch-size", type=positive_int, default=256, help="users per forward pass (--data; default 256)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar over the users (--data; default: a bar on stderr when stderr is a terminal)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (default: one line of text)")
    add_device_option(p, "the model")
    add_threads_option(p)
    args = p.parse_args(argv)
    # what reads --data's users (and only that): refused without it, as zoo.recommend refuses them without --all-users
    refuse_options_without(p, args, "data", ["kcore", "time_ties", "columns", "unknown_items", "batch_size",
                                             "no_progress"])
    try:                                    # an empty --revision, or one for a local folder
        hub = hub_options(args)
    except ValueError as e:
        p.error(str(e))
    if args.out == STDOUT_PATH:             # never a file named '-'; a binary file is no product for a terminal
        p.error("--out -: the vectors are a safetensors file, which is not written to stdout; give a file path")
    try:                                    # before any work: a folder, an unwritable place, or the --data file
        check_outputs({"--out": args.out}, {"--data": args.data, **folder_inputs("--model", args.model)})
    except ValueError as e:
        p.error(str(e))
    device = cli_device(args.device)            # before any work: a malformed device exits 2, a missing GPU 4
    apply_threads(args.threads)

    importlib.import_module("zoo")     # registers the zoo models with AutoModel

    from .modeling_utils import SeqRecPreTrainedModel
    from .pretrained import resolve_pretrained

    t0 = time.time()
    try:
        path = resolve_pretrained(args.model, **hub)        # --revision / --subfolder: which checkpoint
        model = SeqRecPreTrainedModel.from_pretrained(path).eval()
    except (OSError, ValueError) as e:
        sys.exit(f"error: --model {args.model}: {e}")
    model.to(device)            # the batches follow it (padded_batches); the vectors come back on the CPU to be written
    users, note, file_users = None, None, None
    if args.data:
        from .data import load_dataset, read_interactions

        options = model_data_options(path, args.kcore, args.time_ties)
        try:
            inter = read_interactions(args.data, columns=args.columns)     # the file as it is, for the counts
            file_users = inter.n_users
            ds = load_dataset(inter, **options)
            user_ids, user_vecs, note = user_vectors_of_dataset(model, ds, unknown=args.unknown_items,
                                                                batch_size=args.batch_size,
                                                                progress=not args.no_progress)
        except (OSError, KeyError, ValueError) as e:
            sys.exit(f"error: {unknown_items_hint(e, options, serving=True)}")
        users = (user_ids, user_vecs)
    try:
        meta = write_vectors(args.out, model, users=users,
                             metadata={"model": args.model, **({"data": args.data} if args.data else {}),
                                       **{k: v for k, v in hub.items() if v}})      # --revision / --subfolder
    except OSError as e:
        from .cli import cannot

        sys.exit(f"error: {cannot('--out', args.out, e)}")
    except ValueError as e:                     # vectors that are not finite: nothing written
        sys.exit(f"error: --out {args.out}: {e}")
    summary = {"out": os.path.abspath(args.out), "model": args.model, "model_type": meta["model_type"],
               "items": int(meta["n_items"]), "users": int(meta.get("n_users", 0)),
               "vector_size": int(meta["vector_size"]), "bias_column": meta["bias_column"] == "true",
               "vocab": note, "seconds": round(time.time() - t0, 2),
               **({"file_users": file_users} if file_users is not None else {})}
    if args.json:
        print(strict_json(summary, indent=1))
    else:
        bias = "the last column holds the item bias (1 for users)" if summary["bias_column"] else "no bias column"
        left_out = ""
        if file_users is not None and summary["users"] != file_users:    # --kcore, or no item the model knows
            left_out = (f"; {summary['users']:,} of the {file_users:,} users of {args.data}: the others have no "
                        "history left after --kcore or --unknown-items drop")
        print(f"wrote {summary['items']:,} item" + (f" and {summary['users']:,} user" if summary["users"] else "")
              + f" vectors of size {summary['vector_size']} ({bias}) to {summary['out']} ({summary['seconds']:.1f} s"
              + left_out + (f"; {note}" if note else "") + ")")
    return summary


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
