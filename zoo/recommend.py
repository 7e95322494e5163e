"""Recommend next items with a zoo model: ``python -m zoo.recommend [--model NAME_OR_PATH] [--history ID ...]``.

With no arguments it loads the bundled pretrained Mamba4Rec on ML-1M (``ssm-rec-zoo/mamba4rec-ml1m``; no network
needed) and recommends for a short example history of MovieLens movie ids. Histories may also come from a data
file (``--data FILE --user ID``). ``--stepwise`` shows the recurrent path: the window the model reads is primed with
one ``step`` call over all but its last few items, which then go in one ``step`` each (each further event costs one
``step`` with a fixed-size state), and the scores are compared with the full forward's.

Batch mode (``--data FILE --all-users --out RECS.jsonl``): the top-``k`` next items of every user of the file, scored
from the last ``max_seq_length`` items of the user's history (the window the model reads), one JSON line per user in
the file's order: ``{"user": ..., "items": [...], "scores": [...]}``. ``--exclude-seen`` (in either mode) excludes
every item of the history, not only the window; a user with fewer than ``k`` items left gets a shorter line (for one
history, such a ``--k`` is an error). The file is written beside ``--out`` and moved there once complete.

``--data`` is read whole, each user's every row whoever else is in the file (no k-core unless ``--kcore`` is given;
the model's vocabulary decides which items are known, ``--unknown-items`` what becomes of the others); ``--all-users``
says how many of the file's users it wrote and why the others got no line (the ``--kcore`` filter, or no item the
model knows), and ``--user`` of a user the filter removed says so, not "not found".

Scores are written with :data:`SCORE_DECIMALS` decimals in every mode (``--json``, ``--all-users``,
``--similar-to``), as strict JSON: a model whose scores are NaN or infinite for a history (a numeric overflow, or
NaN weights; NaN and ``+inf`` would rank first) is refused in one line naming the user
(:class:`zoo.evaluate.ScoreOverflow`), never written.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Sequence

from export.fsutil import strict_json

from .metrics import top_k
from .vocab import UnknownItemError, is_canonical_int_text, is_int_text

import numpy as np
import torch

DEFAULT_MODEL = "ssm-rec-zoo/mamba4rec-ml1m"
#: Toy Story, Aladdin, Lion King, Beauty and the Beast, Jurassic Park (MovieLens-1M movie ids)
DEFAULT_HISTORY = [1, 588, 364, 595, 480]
#: decimals of the scores in every JSON output (one history, ``--all-users``, ``--similar-to``)
SCORE_DECIMALS = 6


def _parse_id(x: str):
    """A command-line id: an int when written as one canonically in ASCII digits (``588``, ``-3``; not ``-0``), else
    the string itself (``007``, ``u1``, ``³`` stay strings: a string-id model or data file has them as they are
    written)."""
    return int(x) if is_canonical_int_text(x) else x


def _find_user(users: list, x: str):
    """The entry of ``users`` the command-line ``--user x`` names: ``x`` parsed as :func:`_parse_id` does, else ``x``
    as written, else (``007`` for int user ids) its ASCII integer value; ``None`` when none is there."""
    tries = [_parse_id(x), x]
    if is_int_text(x):
        tries.append(int(x))
    known = set(users)
    return next((u for u in tries if u in known), None)


def _history_id(x: str, model):
    """A command-line item id for ``model`` (``--history``, ``--similar-to``, ``--candidates``, ``--exclude-items``
    and their id files), read by the rule of the data files and the vocabulary (:mod:`zoo.data.readers`,
    :meth:`zoo.vocab.ItemVocab.encode`): kept as written for a string-id vocabulary (``007`` is not ``7``), else an
    int only when written canonically (``100``, ``-3``); any other text stays a string -- ``0100`` is another id than
    100, which an int vocabulary refuses as unknown, naming the canonical spelling (reading it as 100 would recommend
    for an item the data files keep apart)."""
    if model.item_vocab is not None and model.item_vocab.id_type == "str":
        return x
    return int(x) if is_canonical_int_text(x) else x


def _json_value(x):
    """JSON for an id: numpy scalars become Python ones."""
    return x.item() if isinstance(x, np.generic) else x


ID_FILE_RULE = ("one item id per line, spaces around it ignored; blank lines and comment lines -- '#' alone or "
                "'#' then a space -- skipped: '#hash' is an id, and a line starting with backslashes then '#' loses "
                "one backslash ('\\# x' is the id '# x')")


def id_of_line(line: str) -> str | None:
    """The item id a line of an id file holds (:data:`ID_FILE_RULE`), or ``None`` for a blank or comment line. Only
    ``#`` alone or ``#`` followed by whitespace starts a comment, so an id that begins with ``#`` (``#hash``) is an
    id; one that a comment would swallow (``# x``) is written with a backslash first (``\\# x``), and any line
    of backslashes then ``#`` loses its first backslash."""
    text = line.strip()
    if not text or text == "#" or (text[0] == "#" and text[1].isspace()):
        return None
    if text.startswith("\\") and text.lstrip("\\").startswith("#"):
        return text[1:]
    return text


def read_id_list(path: str | os.PathLike, model) -> list:
    """Item ids from a text file (:data:`ID_FILE_RULE`: one per line; blank lines and ``#`` comment lines -- ``#``
    then a space -- skipped, ``#hash`` being an id), read as command-line history ids are for ``model``
    (:func:`_history_id`): ``--exclude-items-file`` / ``--candidates-file`` here, ``export.onnx --exclude-items``. A
    UTF-8 byte-order mark (Windows editors write one) is not part of the first id, as in the interaction readers."""
    with open(path, encoding="utf-8-sig") as f:
        return [_history_id(x, model) for x in map(id_of_line, f) if x is not None]


def _drop_unknown(ids: list, args, model, flag: str | None = None, needed: bool = False) -> list:
    """``ids`` without those the model does not know with ``--unknown-items drop``; as they are otherwise (the model
    refuses them, naming them). With ``flag`` (the option they came from, ``"--exclude-items"``), the dropped ones
    are named in a ``WARNING`` line on stderr (:func:`_dropped_ids_note`) -- but when none is left and the caller
    ``needed`` some (``--candidates``, ``--similar-to``: its error says so)."""
    if args.unknown_items == "drop" and model.item_vocab is not None:
        kept = [x for x in ids if x in model.item_vocab]
        dropped = list(dict.fromkeys(x for x in ids if x not in model.item_vocab))   # each once, in order
        if flag and dropped and (kept or not needed):
            print(_dropped_ids_note(dropped, flag), file=sys.stderr)
        return kept
    return ids


def _id_option(args, model, flag: str) -> list:
    """The ids of ``--<flag>`` and ``--<flag>-file`` (read as history ids are); with ``--unknown-items drop`` the
    ids the model does not know are left out, named in a stderr ``WARNING`` (:func:`_drop_unknown`), else they are
    refused, naming them."""
    dest = flag.replace("-", "_")
    ids = [_history_id(x, model) for x in getattr(args, dest)]
    if getattr(args, f"{dest}_file"):
        ids += read_id_list(getattr(args, f"{dest}_file"), model)
    given = [f"--{flag}"] if getattr(args, dest) else []
    given += [f"--{flag}-file"] if getattr(args, f"{dest}_file") else []
    ids = _drop_unknown(ids, args, model, "/".join(given), needed=flag == "candidates")
    model.encode_item_set(ids, f"--{flag}")                       # refuses an unknown id, naming it
    return ids


def _excluded_items(args, model) -> list:
    """``--exclude-items`` / ``--exclude-items-file``: items never to recommend (an unknown one cannot be recommended
    anyway: dropped with ``--unknown-items drop``)."""
    return _id_option(args, model, "exclude-items")


def _file_given_as_ids(args, model) -> str | None:
    """The usage error of an ``--exclude-items`` / ``--candidates`` value (item ids) that names an existing file and
    is no item id the model knows, naming the ``-file`` option meant (``export.onnx --exclude-items`` takes a file):
    read as an id, such a path is refused as unknown -- or, with ``--unknown-items drop``, dropped without a word,
    excluding nothing. ``None`` when every value is an id (a file named like a known id is that id)."""
    for flag in ("exclude-items", "candidates"):
        for x in getattr(args, flag.replace("-", "_")):
            if not os.path.isfile(x):
                continue
            try:
                model.encode_item_set([_history_id(x, model)], f"--{flag}")
            except (KeyError, ValueError, TypeError):
                return (f"--{flag} {x} names a file: --{flag} takes item ids; use --{flag}-file {x} for a file of "
                        "ids (one per line)")
    return None


def _dropped_note(dropped: list, left: int, shown: int = 8) -> str:
    """The stderr line of one history's items that ``--unknown-items drop`` left out (``dropped``, in history order;
    the first ``shown`` named, `` ...`` when there are more; ``left``: the items kept), a ``WARNING`` as
    ``--all-users`` and ``zoo.embed`` give for the interactions they drop (:func:`zoo.evaluate.align_with_vocab`)."""
    more = " ..." if len(dropped) > shown else ""
    named = ", ".join(repr(_json_value(x)) for x in dropped[:shown])
    return (f"WARNING: {len(dropped)} history item{'s' if len(dropped) != 1 else ''} the model does not know dropped "
            f"({named}{more}): recommending from the {left} left")


def _dropped_ids_note(dropped: list, flag: str, shown: int = 8) -> str:
    """The stderr line of the ids of an id option (``flag``: ``--exclude-items``, ``--candidates``, ``--similar-to``)
    that ``--unknown-items drop`` left out (``dropped``: each once; the first ``shown`` named, `` ...`` when there are
    more), a ``WARNING`` as :func:`_dropped_note` gives for a history's."""
    more = " ..." if len(dropped) > shown else ""
    named = ", ".join(repr(_json_value(x)) for x in dropped[:shown])
    return (f"WARNING: {len(dropped)} {flag} id{'s' if len(dropped) != 1 else ''} the model does not know dropped "
            f"({named}{more})")


#: ``--stepwise`` feeds the last this many items of the window one ``step`` each (after one ``step`` over the rest)
STEPWISE_SINGLE_STEPS = 3


def stepwise_plan(n: int) -> tuple[int, int]:
    """``(primed, singles)`` for ``--stepwise`` over a window of ``n >= 1`` items: one ``step`` over the first
    ``primed`` items, then ``singles = n - primed`` one-item steps, each from the state the last returned, so that the
    logits compared with the forward's pass through a state carried between calls (a step primed once from a zero
    state would hide a lost or mixed-up state). ``singles`` is :data:`STEPWISE_SINGLE_STEPS`, fewer for a short window
    (at least one, and a prefix of at least one item when ``n >= 2``)."""
    singles = min(STEPWISE_SINGLE_STEPS, max(n - 1, 1))
    return n - singles, singles


def histories_for(model, ds, unknown: str = "error") -> tuple:
    """``(aligned dataset, vocabulary note, histories, timestamps)`` of every user of the
    :class:`~zoo.data.SequenceDataset` ``ds`` for ``model``: ids mapped through its vocabulary (``unknown``: ``"error"``
    refuses items it does not know, ``"drop"`` removes their interactions, and users left with none), each user's
    whole history as a list of internal indices, and its timestamps (a list per user) for a model that reads them,
    else None. ``ValueError`` when no user is left or a time-aware model gets unusable timestamps."""
    from .evaluate import align_with_model

    aligned, note = align_with_model(ds, model, unknown)
    if len(aligned) == 0:
        raise ValueError(f"no user of {ds.name or 'the data'} has an item the model knows")
    if model.uses_timestamps:
        aligned.check_timestamps_for(type(model).__name__)
    ts = [t.tolist() for t in aligned.timestamps] if model.uses_timestamps else None
    return aligned, note, [q.tolist() for q in aligned.sequences], ts


@torch.no_grad()
def recommend_all_users(model, ds, out: str | os.PathLike, k: int = 10, exclude_seen: bool = False,
                        unknown: str = "error", batch_size: int = 256, progress: bool = True,
                        exclude_items: Sequence | None = None, candidates: Sequence | None = None) -> dict:
    """Top-``k`` next items of every user of the :class:`~zoo.data.SequenceDataset` ``ds``, as JSON Lines at ``out``.

    Each user's whole history is mapped through the model's item vocabulary (``unknown``: ``"error"`` refuses data
    with items the model does not know, ``"drop"`` removes those interactions, and users left with none) and scored
    from its last ``max_seq_length`` items; ``exclude_seen`` sets every item of the whole history to ``-inf`` (a row
    then lists fewer than ``k`` items only when fewer remain); ``exclude_items`` (external ids) are recommended to
    nobody; with ``candidates`` (external ids) only those are ranked (a user left with fewer than ``k`` of them gets
    fewer). The lines go to a temporary file beside ``out`` that replaces it once complete, so an interrupted run
    leaves an existing ``out`` as it was; ``out`` ``"-"`` (:data:`zoo.cli.STDOUT_PATH`) streams them to stdout, the
    lines of each batch of ``batch_size`` users written (and flushed) as soon as it is scored, the same bytes as the
    file would hold; a run that fails or is cut after some batches has printed their lines, each line whole (a
    reader gone, ``| head``, raises ``BrokenPipeError`` out of here).

    Returns a summary: ``users`` written, ``dropped_users``, ``vocab`` note, ``excluded_items`` (how many),
    ``candidates`` (how many, when given), ``seconds``, ``out``.
    """
    from tqdm.auto import tqdm

    from .cli import STDOUT_PATH, written_whole
    from .evaluate import predict_scores
    from .modeling_utils import _as_count

    k = _as_count(k, "k", 1, model.config.n_items - 1)
    batch_size = _as_count(batch_size, "batch_size")
    excluded = model.encode_item_set(exclude_items) if exclude_items is not None else []
    pool = model.encode_item_set(candidates, "candidates") if candidates is not None else None
    if pool is not None and not pool:
        raise ValueError("candidates is empty: give the items to rank")
    t0 = time.time()
    aligned, note, seqs, ts = histories_for(model, ds, unknown)
    model.eval()
    outside = None                                                             # [V] True where not a candidate
    if pool is not None:
        outside = torch.ones(model.config.n_items, dtype=torch.bool, device=next(model.parameters()).device)
        outside[torch.tensor(pool, device=outside.device)] = False
    users = list(aligned.users)
    done = 0                                                                   # users scored so far
    to_stdout = os.fspath(out) == STDOUT_PATH
    with (contextlib.nullcontext(sys.stdout) if to_stdout else written_whole(out)) as f, \
            tqdm(total=len(aligned), desc="recommend", unit="user", leave=False,
                 disable=None if progress else True) as bar:                 # None: a bar on a terminal only
        for chunk, ids, mask, t in model.padded_batches(seqs, ts, batch_size):   # [B, L]: last L items of each
            who = users[done:done + len(chunk)]
            done += len(chunk)
            # excluded: to nobody; NaN / infinite scores refused naming the users, as for one history
            scores = predict_scores(model, ids, mask, who, timestamps=t, exclude_items=excluded)
            if exclude_seen:                                                   # the whole history, not the window
                for r, q in enumerate(chunk):
                    scores[r, torch.tensor(q, device=scores.device)] = float("-inf")
            if outside is not None:                                            # only the candidates are ranked
                scores[:, outside] = float("-inf")
            top = top_k(scores, k, dim=1)      # ties: the lower item index first, as the graphs
            lines = []                                                         # the batch's, written at once
            for user, vals, idx in zip(who, top.values.cpu(), top.indices.cpu(), strict=True):
                keep = vals > float("-inf")                          # the masked slots (an overflow is refused)
                lines.append(strict_json({"user": _json_value(user),
                                          "items": [_json_value(x) for x in model.decode_items(idx[keep].tolist())],
                                          "scores": [round(float(v), SCORE_DECIMALS) for v in vals[keep]]})
                             + "\n")
            if to_stdout:                   # streamed: the bar (stderr) cleared around them, so a terminal shows both
                with tqdm.external_write_mode(file=f) if progress else contextlib.nullcontext():
                    f.write("".join(lines))
                    f.flush()
            else:
                f.write("".join(lines))
            bar.update(len(chunk))
    return {"out": STDOUT_PATH if to_stdout else os.path.abspath(out), "users": len(aligned),
            "dropped_users": ds.n_users - aligned.n_users, "vocab": note, "excluded_items": len(excluded),
            **({"candidates": len(pool)} if pool is not None else {}), "seconds": round(time.time() - t0, 2)}


def _similar(args, model, exclude: list, hub: dict | None = None) -> dict:
    """``--similar-to``: :meth:`~zoo.SeqRecPreTrainedModel.similar_items` of the given ids, printed (``hub``: the
    ``--revision`` / ``--subfolder`` the model was read at, recorded beside ``model`` when given)."""
    from .cli import error_text

    query = _drop_unknown([_history_id(x, model) for x in args.similar_to], args, model, "--similar-to", needed=True)
    if not query:
        sys.exit("error: the model knows none of the --similar-to items")
    try:
        rec = model.similar_items(query, k=args.k, exclude_items=exclude)
    except (KeyError, ValueError, TypeError) as e:
        sys.exit(f"error: {error_text(e)}")
    out = {"model": args.model, **{k: v for k, v in (hub or {}).items() if v},    # --revision / --subfolder
           "model_type": model.config.model_type, "similar_to": query, "items": rec.items,
           "scores": [[round(float(x), SCORE_DECIMALS) for x in row] for row in rec.scores],
           "excluded_items": len(set(exclude))}
    if args.json:
        print(strict_json(out, indent=1, default=_json_value))
        return out
    print(f"model: {args.model} ({out['model_type']}); items nearest by cosine similarity of the item embeddings")
    for q, items, scores in zip(query, out["items"], out["scores"], strict=True):
        print(f"similar to {_table_id(q)}:")
        print(f"{'rank':>4}  {'item':>8}  {'cosine':>8}")
        for i, (item, c) in enumerate(zip(items, scores, strict=True), 1):
            print(f"{i:>4}  {_table_id(item):>8}  {c:8.4f}")
    return out


def _k_usage_error(args, model, exclude: list, candidates: list | None) -> str | None:
    """The usage error of a ``--k`` above the items the loaded ``model`` can return, naming the flag, the value and
    the bound (``None`` when it fits), checked before ``--data`` is read and exit 2, as ``zoo.evaluate --ks`` and
    ``export.onnx --topk`` are: the catalogue (``n_items - 1`` items); for one history, the ``--candidates`` in its
    place, less the ``--exclude-items`` (``--all-users`` gives a user left with fewer a shorter line); for
    ``--similar-to``, the catalogue less the query item and the ``--exclude-items``. ``--exclude-seen``'s bound
    depends on the history, checked with it (exit 1)."""
    k, catalogue = args.k, int(model.config.n_items) - 1
    try:
        excluded = set(model.encode_item_set(exclude))
        if args.similar_to:
            query = model.encode_item_set(_drop_unknown([_history_id(x, model) for x in args.similar_to], args, model),
                                          "--similar-to")
            left = min((catalogue - len(excluded | {q}) for q in query), default=catalogue)
            if k <= left:
                return None
            after = " and the --exclude-items" if excluded else ""
            return (f"--k {k}: the model's catalogue has {catalogue} items, {left} left beside a --similar-to item"
                    f"{after}; use --k <= {left}")
        if candidates and not args.all_users:
            pool = set(model.encode_item_set(candidates, "--candidates"))
            left = len(pool - excluded)
            less = f", {left} left after the {len(pool) - left} of them in --exclude-items" if left < len(pool) else ""
            return None if k <= left else (f"--k {k}: --candidates lists {len(pool)} items the model knows{less}; "
                                           f"use --k <= {left}")
    except (KeyError, ValueError, TypeError):       # an id the model refuses: named where it is used
        return None
    left = catalogue if args.all_users else catalogue - len(excluded)
    if k <= left:
        return None
    less = f", {left} left after the {len(excluded)} of --exclude-items" if left < catalogue else ""
    return f"--k {k}: the model's catalogue has {catalogue} items{less}; use --k <= {left}"


def _no_timestamps(data: str, model) -> str:
    """The error of ``--data`` read without timestamps for a time-aware ``model``: the file has no time column found
    (an order-only file, a time column under another name, or ``--columns time=none``)."""
    return (f"{data} has no timestamps (order-only data, as a .seq file is, or no time column found in its header: "
            f"name it with --columns time=NAME); {model.config.model_type} reads them: give --data an interaction "
            "file with a time column (e.g. ml-1m.users0001-2999.inter.gz), or --history with --timestamps")


def _users_left_out(summary: dict) -> str:
    """``--all-users``' words for the users of the file it wrote no line for (``summary``: its counts): those the
    ``--kcore`` filter removed and those left with no item the model knows (``--unknown-items drop``); ``""`` when
    every user has a line."""
    parts = []
    if summary["kcore_dropped_interactions"]:
        k, n, u = summary["kcore"] or [0, 0], summary["kcore_dropped_interactions"], summary["kcore_dropped_users"]
        parts.append(f"the --kcore {k[0]}/{k[1]} filter removed {n:,} interaction{'s' if n != 1 else ''}"
                     + (f" and {u:,} user{'s' if u != 1 else ''}" if u else ""))
    if summary["dropped_users"]:
        n = summary["dropped_users"]
        parts.append(f"{n:,} user{'s' if n != 1 else ''} had no item the model knows (--unknown-items drop)")
    return "".join(f"; {p}" for p in parts)


def _user_not_in(user: str, data: str, inter, ds) -> str:
    """The error of ``--user`` not among the users of ``ds`` (``--data`` read and filtered): why, when the file
    (``inter``, its rows before any filter) has the user -- the ``--kcore`` filter removed all of its interactions --
    else that the file does not hold it."""
    uid = _find_user(np.unique(inter.user).tolist(), user)
    if uid is None:
        return f"user {user!r} not found in {data}"
    n = int((inter.user == uid).sum())
    k = ds.kcore or (0, 0)
    return (f"user {user!r} has {n:,} interaction{'s' if n != 1 else ''} in {data}, all removed by the --kcore "
            f"{k[0]}/{k[1]} filter (its own count, or its items' too few users): no history is left; without --kcore "
            "the whole file is read")


def _table_id(item) -> str:
    """An id as a table row shows it: as it is, or its ``repr`` when it holds a tab, a line break or another
    character that is not printable (which would break the columns or the line; ``--json`` gives it exactly)."""
    text = str(item)
    return text if text.isprintable() else repr(text)


def main(argv: Sequence[str] | None = None) -> dict:
    from .cli import EXIT_CODES, STDOUT_PATH, add_columns_option, add_device_option, add_model_data_options
    from .cli import command_prog, text_stream
    from .cli import add_threads_option, apply_threads, cannot, check_outputs, cli_device, error_text, folder_inputs
    from .cli import model_data_options, positive_int, refuse_options_without, unknown_items_hint
    from .pretrained import add_hub_options, hub_options

    p = argparse.ArgumentParser(allow_abbrev=False,
                                prog=command_prog("zoo.recommend"), description=__doc__.split("\n\n")[0],
                                epilog=EXIT_CODES)
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"folder or Hub id (default {DEFAULT_MODEL}, bundled)")
    add_hub_options(p)
    p.add_argument("--history", nargs="+", metavar="ID",
                   help="item ids, oldest first, written as in the data files ('0100' is not the int id 100) "
                        f"(default: a short ML-1M example, {' '.join(map(str, DEFAULT_HISTORY))})")
    p.add_argument("--data", help="interaction file to take a user's history from (with --user), or every user's "
                                  "(with --all-users)")
    p.add_argument("--user", help="user id in --data (an int user id may be written with leading zeros)")
    p.add_argument("--timestamps", nargs="+", type=float, help="seconds, one per history item (time-aware models)")
    p.add_argument("--k", type=positive_int, default=10, help="how many items to recommend (default 10)")
    p.add_argument("--exclude-seen", action="store_true",
                   help="never recommend an item of the history, all of it (also items older than the model's "
                        "window); for one history a --k above the items left is an error, with --all-users such a "
                        "user's line lists fewer (default: off, only --exclude-items are never recommended)")
    p.add_argument("--exclude-items", nargs="+", metavar="ID", default=[],
                   help="item ids never to recommend (retired, unavailable); each must be known to the model "
                        "(default: none)")
    p.add_argument("--exclude-items-file", metavar="FILE",
                   help="the same from a file: " + ID_FILE_RULE.replace("%", "%%"))
    p.add_argument("--candidates", nargs="+", metavar="ID", default=[],
                   help="rank only these item ids (e.g. the items an index retrieved, or those in stock) instead of "
                        "the whole catalogue; each must be known to the model (default: the whole catalogue)")
    p.add_argument("--candidates-file", metavar="FILE",
                   help="the same from a file: " + ID_FILE_RULE.replace("%", "%%"))
    p.add_argument("--similar-to", nargs="+", metavar="ID",
                   help="instead of next items: the --k items nearest to each of these items by cosine similarity "
                        "of the model's item embeddings (model.similar_items; default: off, next items)")
    p.add_argument("--stepwise", action="store_true",
                   help="also score with init_state/step (models with an exact recurrent step): one step over all "
                        "but the last few items of the window, then one step per item; and compare (default: off)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (default: a table)")
    p.add_argument("--all-users", action="store_true",
                   help="batch mode: recommend for every user of --data, one JSON line each, into --out (scored "
                        "from the last max_seq_length items of each history; --exclude-seen excludes all of it; "
                        "default: off, one history)")
    p.add_argument("--out", help="JSON Lines file for --all-users (required with it); '-' prints the lines on stdout "
                                 "(the summary then goes to stderr)")
    p.add_argument("--unknown-items", choices=["error", "drop"], default="error",
                   help="history (and --exclude-items, --candidates, --similar-to) ids the model does not know: "
                        "refuse (default) or leave them out")
    add_model_data_options(p, "picking users", serving=True)
    add_columns_option(p)
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="users per forward pass (--all-users; default 256)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (--all-users; default: a bar on stderr while it is a terminal)")
    add_device_option(p, "the model")
    add_threads_option(p)
    args = p.parse_args(argv)
    refuse_options_without(p, args, "data", ["kcore", "time_ties", "columns"])
    try:                                        # an empty --revision, or one for a local folder
        hub = hub_options(args)
    except ValueError as e:
        p.error(str(e))
    # one source of history: a file's user(s), or ids (and timestamps) on the command line -- never both silently
    if args.all_users:
        if not args.data or not args.out:
            p.error("--all-users needs --data (the users' interactions) and --out (the JSON Lines file)")
        if args.user is not None or args.stepwise:
            p.error("--all-users recommends for every user of --data: --user and --stepwise are for one history")
    elif args.out:
        p.error("--out is the file of --all-users")
    elif args.batch_size != p.get_default("batch_size") or args.no_progress:
        p.error("--batch-size and --no-progress are for --all-users (one history is one forward pass, without a bar)")
    elif args.data and args.user is None:
        p.error("--data needs --user (or --all-users)")
    if args.similar_to and (args.history or args.timestamps or args.data or args.stepwise or args.exclude_seen
                            or args.candidates or args.candidates_file):
        p.error("--similar-to lists items like the given ones; --history/--timestamps/--data/--user/--all-users/"
                "--stepwise/--exclude-seen/--candidates are for next-item recommendations")
    if args.user is not None and not args.data:
        p.error("--user needs --data (the interaction file the user is in)")
    if args.data and (args.history or args.timestamps):
        p.error("--history/--timestamps and --data/--user are two sources of history: give one")
    if args.timestamps and not args.history:
        p.error("--timestamps needs --history (one timestamp per history item)")
    if args.timestamps and len(args.timestamps) != len(args.history):
        from .data.split import _count
        p.error(f"--timestamps gives {_count(len(args.timestamps), 'timestamp')} for "
                f"{_count(len(args.history), '--history item')}: give one per item, oldest first")
    if args.out and args.out != STDOUT_PATH:
        try:                                # before any work: a folder, an unwritable place, or the --data file
            check_outputs({"--out": args.out}, {"--data": args.data, "--exclude-items-file": args.exclude_items_file,
                                                "--candidates-file": args.candidates_file,
                                                **folder_inputs("--model", args.model)})
        except ValueError as e:
            p.error(str(e))
    device = cli_device(args.device)            # before any work: a malformed device exits 2, a missing GPU 4
    apply_threads(args.threads)

    from .modeling_utils import SeqRecPreTrainedModel
    from .pretrained import resolve_pretrained

    # resolve first: a Hub id that is unreachable *or not published* falls back to the bundled copy; the zoo's own
    # loader (what AutoModel calls) names a model_type the zoo does not have in one line
    try:
        path = resolve_pretrained(args.model, **hub)        # --revision / --subfolder: which checkpoint
        model = SeqRecPreTrainedModel.from_pretrained(path).eval()
    except (OSError, ValueError) as e:
        sys.exit(f"error: --model {args.model}: {e}")
    model.to(device)                        # its inputs follow it (padded_batches); the outputs come back on the CPU
    options = model_data_options(path, args.kcore, args.time_ties)
    # an option value the loaded model refuses: a usage error (2), before any id or --data is read (as --k below)
    if args.timestamps and not model.uses_timestamps:
        p.error(f"{model.config.model_type} does not read timestamps; --timestamps is for time-aware models")
    if args.stepwise and not model.has_exact_step:
        p.error(f"--stepwise: {model.config.model_type} has no exact recurrent step")
    if model.uses_timestamps and not (args.timestamps or args.data or args.similar_to):
        p.error(f"{model.config.model_type} reads timestamps: pass --timestamps (one per --history item) or "
                "--data/--user")
    problem = _file_given_as_ids(args, model)       # --exclude-items FILE: the -file option was meant (exit 2)
    if problem:
        p.error(problem)
    try:
        exclude = _excluded_items(args, model)
    except (OSError, UnicodeDecodeError) as e:
        sys.exit(f"error: {cannot('--exclude-items-file', args.exclude_items_file, e, 'read')}")
    except (KeyError, ValueError, TypeError) as e:
        sys.exit(f"error: {error_text(e)}")
    candidates = None
    if args.candidates or args.candidates_file:
        try:
            candidates = _id_option(args, model, "candidates")
        except (OSError, UnicodeDecodeError) as e:
            sys.exit(f"error: {cannot('--candidates-file', args.candidates_file, e, 'read')}")
        except (KeyError, ValueError, TypeError) as e:
            sys.exit(f"error: {error_text(e)}")
        if not candidates:
            sys.exit("error: --candidates: the model knows none of the candidates")
    problem = _k_usage_error(args, model, exclude, candidates)      # before --data is read: a usage error (2)
    if problem:
        p.error(problem)
    if args.similar_to:
        return _similar(args, model, exclude, hub)
    if args.data:
        from .data import load_dataset, read_interactions

        try:
            inter = read_interactions(args.data, columns=args.columns)     # the file as it is, for the counts
            ds = load_dataset(inter, **options)
        except (OSError, ValueError) as e:
            sys.exit(f"error: {e}")
    if args.all_users:
        try:
            summary = recommend_all_users(model, ds, args.out, k=args.k, exclude_seen=args.exclude_seen,
                                          unknown=args.unknown_items, batch_size=args.batch_size,
                                          progress=not args.no_progress, exclude_items=exclude,
                                          candidates=candidates)
        except (KeyError, ValueError) as e:
            hint = ("; if a column of the file holds the times, name it: --columns time=NAME"
                    if model.uses_timestamps and ds.timestamps is None and "timestamp" in str(e) else "")
            sys.exit(f"error: {unknown_items_hint(e, options, serving=True)}{hint}")
        except OSError as e:                # writing --out (its place was checked before any work)
            if isinstance(e, BrokenPipeError) and args.out == STDOUT_PATH:
                raise                       # stdout's reader went away (| head): run_cli ends quietly with 141
            sys.exit(f"error: {cannot('--out', args.out, e)}")
        summary = {"model": args.model, **{k: v for k, v in hub.items() if v},      # --revision / --subfolder
                   "model_type": model.config.model_type, "data": args.data, "k": args.k,
                   "exclude_seen": args.exclude_seen, "file_users": inter.n_users,
                   "kcore": list(ds.kcore) if ds.kcore else None, "kcore_dropped_users": inter.n_users - ds.n_users,
                   "kcore_dropped_interactions": len(inter) - ds.n_interactions, **summary}
        said = text_stream(args.out)                                        # stdout may hold the lines themselves
        if args.json:
            print(strict_json(summary, indent=1), file=said)
        else:
            print(f"wrote top-{args.k} for {summary['users']:,} of {inter.n_users:,} user"
                  f"{'s' if inter.n_users != 1 else ''} of {args.data} to "
                  f"{'stdout' if args.out == STDOUT_PATH else summary['out']}{_users_left_out(summary)} "
                  f"({summary['seconds']:.1f} s; {summary['vocab']}"
                  + (f"; {summary['excluded_items']:,} items excluded" if summary["excluded_items"] else "") + ")",
                  file=said)
        return summary
    uid = None                                  # the user --data --user names (None: --history's)
    if args.data:
        uid = _find_user(ds.users, args.user)
        if uid is None:
            sys.exit(f"error: {_user_not_in(args.user, args.data, inter, ds)}")
        r = ds.users.index(uid)
        history = ds.vocab.decode(ds.sequences[r].tolist())
        timestamps = ds.timestamps[r].tolist() if ds.timestamps is not None else None
    else:
        history = [_history_id(x, model) for x in args.history] if args.history else list(DEFAULT_HISTORY)
        timestamps = args.timestamps
    dropped = []                                # history items --unknown-items drop left out
    if args.unknown_items == "drop" and model.item_vocab is not None:
        keep = [x in model.item_vocab for x in history]
        dropped = [x for x, ok in zip(history, keep, strict=True) if not ok]
        history = [x for x, ok in zip(history, keep, strict=True) if ok]
        if timestamps is not None and len(timestamps) == len(keep):
            timestamps = [t for t, ok in zip(timestamps, keep, strict=True) if ok]
        if not history:
            whose = "" if uid is None else f" (user {args.user!r}: {len(dropped)} interaction" \
                f"{'s' if len(dropped) != 1 else ''} in {args.data})"
            sys.exit(f"error: the model knows none of the history's items{whose}: no history is left to recommend "
                     "from")
        if dropped:                             # said as --all-users says its dropped interactions
            print(_dropped_note(dropped, len(history)), file=sys.stderr)
    if model.uses_timestamps and timestamps is None:
        if args.data:                   # the user's history came from a file without a time column
            sys.exit(f"error: {_no_timestamps(args.data, model)}")
        sys.exit(f"error: {model.config.model_type} reads timestamps: pass --timestamps (one per item) or --data/--user")
    from .evaluate import ScoreOverflow, overflow_error, overflowed_rows

    try:
        rec = model.recommend([history], k=args.k, exclude_seen=args.exclude_seen,
                              timestamps=[timestamps] if model.uses_timestamps else None, exclude_items=exclude,
                              candidates=candidates)
    except UnknownItemError as e:
        sys.exit(f"error: {e} (--unknown-items drop leaves such items out of the history)")
    except (KeyError, ValueError, TypeError) as e:
        if isinstance(e, ScoreOverflow) and e.rows is not None:     # predict's (batch rows): named as --all-users does
            e = overflow_error(None if uid is None else [uid], model.dtype)
        sys.exit(f"error: {e}")
    out = {"model": args.model, **{k: v for k, v in hub.items() if v},              # --revision / --subfolder
           "model_type": model.config.model_type, "history_length": len(history),
           "history_tail": history[-10:], "dropped_history_items": len(dropped), "items": rec.items[0],
           "scores": [round(float(s), SCORE_DECIMALS) for s in rec.scores[0]],
           "excluded_items": len(set(exclude)), **({"candidates": len(set(candidates))} if candidates else {})}
    if args.stepwise:                                            # a model without an exact step: refused above
        encoded = model.encode_histories([history])[0]               # the whole history (--exclude-seen masks it)
        ids = encoded[-model.config.max_seq_length:]                 # the window the model reads
        x = torch.tensor([ids], device=device)                      # [1, n]
        ts = None
        if model.uses_timestamps:
            ts = torch.tensor([timestamps[-model.config.max_seq_length:]], dtype=torch.float64, device=device)
        primed, singles = stepwise_plan(len(ids))
        try:
            with torch.no_grad():
                state = model.init_state(1)                          # on the model's device
                if primed:                                           # one step over the prefix
                    _, state = model.step(x[:, :primed], state, timestamps=None if ts is None else ts[:, :primed])
                for pos in range(primed, len(ids)):                  # then one step per item, from the state carried
                    logits, state = model.step(x[:, pos:pos + 1], state,
                                               timestamps=None if ts is None else ts[:, pos:pos + 1])
        except ScoreOverflow:                             # step() refuses NaN / +-inf logits (at any step)
            sys.exit(f"error: --stepwise: {overflow_error(None if uid is None else [uid], model.dtype)}")
        scores = logits.clone()
        scores[:, 0] = -float("inf")
        if exclude:
            scores[:, torch.tensor(model.encode_item_set(exclude), device=device)] = -float("inf")
        if args.exclude_seen:                             # the whole history, as recommend() does
            scores[0, torch.tensor(encoded, device=device)] = -float("inf")
        if candidates is not None:                        # only the candidates, as recommend() does
            keep = torch.zeros(scores.shape[1], dtype=torch.bool, device=device)
            keep[torch.tensor(model.encode_item_set(candidates), device=device)] = True
            scores[:, ~keep] = -float("inf")
        if overflowed_rows(logits[:, 1:].float()):        # the step's own NaN / +-inf: no difference to report
            sys.exit(f"error: --stepwise: {overflow_error(None if uid is None else [uid], model.dtype)}")
        top = top_k(scores, args.k, dim=1)
        values, indices = top.values.cpu(), top.indices.cpu()
        out["stepwise_items"] = model.decode_items(indices[0].tolist())
        out["stepwise_max_abs_diff"] = float((values[0] - rec.scores[0]).abs().max())
        out["state_bytes"] = int(sum(t.numel() * t.element_size() for t in state.values()))
    if args.json:
        print(strict_json(out, indent=1))                 # strict JSON (scores checked above)
    else:
        print(f"model: {args.model} ({out['model_type']}); history ({len(history)} items, last 10): {out['history_tail']}")
        print(f"{'rank':>4}  {'item':>8}  {'score':>8}")
        for i, (item, s) in enumerate(zip(out["items"], out["scores"], strict=True), 1):
            print(f"{i:>4}  {_table_id(item):>8}  {s:8.4f}")
        if args.stepwise:
            print(f"stepwise (init_state, one step over the first {primed} items, then {singles} one-item "
                  f"step{'s' if singles != 1 else ''}; state {out['state_bytes']:,} bytes): "
                  f"same top-{args.k}: {out['stepwise_items'] == out['items']}, "
                  f"max |score diff| {out['stepwise_max_abs_diff']:.2e}")
    return out


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
