"""Recommend next items with a zoo model: ``python -m zoo.recommend [--model NAME_OR_PATH] [--history ID ...]``.

With no arguments it loads the bundled pretrained Mamba4Rec on ML-1M (``ssm-rec-zoo/mamba4rec-ml1m``; no network
needed) and recommends for a short example history of MovieLens movie ids. Histories may also come from a data
file (``--data FILE --user ID``). ``--stepwise`` shows the recurrent path: the history is primed with one ``step``
call and each further event costs one ``step`` with a fixed-size state.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import torch

DEFAULT_MODEL = "ssm-rec-zoo/mamba4rec-ml1m"
#: Toy Story, Aladdin, Lion King, Beauty and the Beast, Jurassic Park (MovieLens-1M movie ids)
DEFAULT_HISTORY = [1, 588, 364, 595, 480]


def _parse_id(x: str):
    return int(x) if x.lstrip("-").isdigit() else x


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m zoo.recommend", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"folder or Hub id (default {DEFAULT_MODEL}, bundled)")
    p.add_argument("--history", nargs="+", help="item ids, oldest first (default: a short ML-1M example)")
    p.add_argument("--data", help="interaction file to take a user's history from (with --user)")
    p.add_argument("--user", help="user id in --data")
    p.add_argument("--timestamps", nargs="+", type=float, help="seconds, one per history item (time-aware models)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--exclude-seen", action="store_true", help="never recommend an item of the history")
    p.add_argument("--stepwise", action="store_true", help="use init_state/step (recurrent models) and compare")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    # one source of history: a file's user, or ids (and timestamps) on the command line -- never both silently
    if args.data and args.user is None:
        p.error("--data needs --user")
    if args.user is not None and not args.data:
        p.error("--user needs --data (the interaction file the user is in)")
    if args.data and (args.history or args.timestamps):
        p.error("--history/--timestamps and --data/--user are two sources of history: give one")
    if args.timestamps and not args.history:
        p.error("--timestamps needs --history (one timestamp per history item)")

    import zoo  # noqa: F401  (registers the models)
    from transformers import AutoModel

    from .pretrained import resolve_pretrained

    # resolve first: a Hub id that is unreachable *or not published* falls back to the bundled copy
    model = AutoModel.from_pretrained(resolve_pretrained(args.model)).eval()
    if args.data:
        from .data import load_dataset

        ds = load_dataset(args.data)
        uid = _parse_id(args.user)
        if uid not in ds.users:
            sys.exit(f"error: user {args.user!r} not found in {args.data}")
        r = ds.users.index(uid)
        history = ds.vocab.decode(ds.sequences[r].tolist())
        timestamps = ds.timestamps[r].tolist() if ds.timestamps is not None else None
    else:
        history = [_parse_id(x) for x in args.history] if args.history else list(DEFAULT_HISTORY)
        timestamps = args.timestamps
    if args.timestamps and not model.uses_timestamps:
        sys.exit(f"error: {model.config.model_type} does not read timestamps; --timestamps is for time-aware models")
    if model.uses_timestamps and timestamps is None:
        sys.exit(f"error: {model.config.model_type} reads timestamps: pass --timestamps (one per item) or --data/--user")
    try:
        rec = model.recommend([history], k=args.k, exclude_seen=args.exclude_seen,
                              timestamps=[timestamps] if timestamps is not None else None)
    except (KeyError, ValueError, TypeError) as e:
        sys.exit(f"error: {e}")
    out = {"model": args.model, "model_type": model.config.model_type, "history_length": len(history),
           "history_tail": history[-10:], "items": rec.items[0], "scores": [round(float(s), 4) for s in rec.scores[0]]}
    if args.stepwise:
        if not model.has_exact_step:
            sys.exit(f"{model.config.model_type} has no exact recurrent step")
        ids = model.encode_histories([history[-model.config.max_seq_length:]])[0]
        ts = None
        if model.uses_timestamps:
            ts = torch.tensor([timestamps[-model.config.max_seq_length:]], dtype=torch.float64)
        with torch.no_grad():
            state = model.init_state(1)
            logits, state = model.step(torch.tensor([ids]), state, timestamps=ts)   # prime with the whole history
        scores = logits.clone()
        scores[:, 0] = -float("inf")
        if args.exclude_seen:
            scores[0, torch.tensor(ids)] = -float("inf")
        top = torch.topk(scores, args.k, dim=1)
        out["stepwise_items"] = model.decode_items(top.indices[0].tolist())
        out["stepwise_max_abs_diff"] = float((top.values[0] - rec.scores[0]).abs().max())
        out["state_bytes"] = int(sum(t.numel() * t.element_size() for t in state.values()))
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"model: {args.model} ({out['model_type']}); history ({len(history)} items, last 10): {out['history_tail']}")
        print(f"{'rank':>4}  {'item':>8}  {'score':>8}")
        for i, (item, s) in enumerate(zip(out["items"], out["scores"], strict=True), 1):
            print(f"{i:>4}  {item!s:>8}  {s:8.4f}")
        if args.stepwise:
            print(f"stepwise (init_state + one step over the history, state {out['state_bytes']:,} bytes): "
                  f"same top-{args.k}: {out['stepwise_items'] == out['items']}, "
                  f"max |score diff| {out['stepwise_max_abs_diff']:.2e}")
    return out


if __name__ == "__main__":
    main()
