"""Real input data for Triton's ``perf_analyzer``, from held-out user histories.

CLI::

    python -m export.perf_data --repo DIR --name MODEL --data FILE --out perf.json
                               [--users 256] [--events 10] [--prime 200] [--seed 0] [--unknown-items error|drop]

``perf_analyzer`` sends random or zero tensors unless given ``--input-data FILE``; neither exercises a recommender
(random ids, no history) nor a stateful one (a sequence must start with its history). This writes that file for a
model folder written by :mod:`export.triton`, from the users of an interaction file, in the JSON layout of
perf_analyzer's "Real Input Data" (``{"data": [...]}``, each tensor as ``{"content": [...], "shape": [...]}``, the
shape without the batch dimension):

* **stateful models** (``sequence_batching``: ``--state implicit``, and the python backend's sequences): one
  *stream* per sampled user, which perf_analyzer plays back on one correlation id with ``START`` on its first request
  and ``END`` on its last. The first request primes the state with the user's items before the replayed events (at
  most ``--prime``), then each of the last ``--events`` items of the history is one request of one item -- what the
  server sees in production (a TensorRT model's priming goes in pieces of at most ``max_seq_length`` items: its
  engine's profile). ``perf_analyzer -m MODEL --input-data perf.json`` then needs no ``--sequence-length`` (each
  stream is one sequence of its own length).
* **window models** (stateless, dynamic batching): one request per replayed event, carrying the last
  ``max_seq_length`` items before it (as :class:`export.triton_client.WindowRecommender` sends them).
* ``--candidates`` models get a ``candidates`` input of one 0 in every request (unrestricted: the onnxruntime and
  tensorrt configs require the input).
* **explicit-state models** are refused: perf_analyzer cannot feed a response's state tensors into the next request
  (``bench/bench_triton.py``'s clients do).

Item ids are mapped through the model folder's ``item_vocab.json`` (the ids the data file uses must be the model's:
``--unknown-items drop`` drops the others, as in ``zoo.evaluate``); time-aware models get each request's float64
``timestamps`` (or float32 ``time_gaps``, 0 for a stream's first event, for ``--time-input gaps`` graphs) from the
file. Users are a seeded sample (``--seed``) of those with at least two items. The file is written whole (an
interrupted run leaves an existing one as it was) and the command prints the ``perf_analyzer`` line to run.
``--out -`` writes the JSON on stdout instead, and that line (for the file it is saved to) on stderr.

Exit statuses (the shared table, :data:`export.fsutil.EXIT_CODES`): 1 when the model folder, ``--data`` (missing,
unreadable, items the model does not know) or ``--out`` fails the run; 2 for a usage error.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import Sequence

import numpy as np

from . import triton as T
from .fsutil import EXIT_CODES, EXIT_ERROR, EXIT_OK, STDOUT_PATH, command_prog, exit_with, strict_json


class PerfDataError(ValueError):
    """The model folder or the data cannot give perf_analyzer input data (the message says why)."""


def read_model_folder(model_dir: str | os.PathLike) -> tuple[object, dict, object]:
    """``(config, spec, vocab)`` of a model folder written by :mod:`export.triton`: the parsed ``config.pbtxt``, the
    graph's ``state_spec.json`` (beside the config, or in the served -- highest -- version folder for the python
    backend: a regeneration writes the next version, :func:`export.triton.model_versions`) and its
    ``item_vocab.json`` (``None`` when the folder ships none)."""
    mdir = pathlib.Path(model_dir)
    if not (mdir / "config.pbtxt").is_file():
        raise FileNotFoundError(f"{mdir} holds no config.pbtxt: pass --repo and --name of a model written by "
                                "python -m export.triton")
    cfg = T.validate_config((mdir / "config.pbtxt").read_text(encoding="utf-8"))
    versions = T.model_versions(mdir)
    spec_dir = mdir if (mdir / T.SPEC_FILE).is_file() else mdir / str(versions[-1] if versions else 1)
    if not (spec_dir / T.SPEC_FILE).is_file():
        raise FileNotFoundError(f"{mdir} holds no {T.SPEC_FILE} (beside config.pbtxt or in its version folder "
                                f"{spec_dir.name}/): not a model folder written by python -m export.triton")
    spec = T.read_spec(spec_dir)
    vocab = None
    if (mdir / T.VOCAB_FILE).is_file():
        from zoo.vocab import ItemVocab

        vocab = ItemVocab.load(str(mdir))
    return cfg, spec, vocab


def _tensor(values, dtype) -> dict:
    """One request's tensor in perf_analyzer's JSON: row-major ``content`` and its ``shape`` (no batch dimension)."""
    arr = np.asarray(values, dtype=dtype).reshape(-1)
    return {"content": arr.tolist(), "shape": [int(arr.size)]}


def _time_inputs(spec: dict, ts: np.ndarray, previous: float | None) -> dict:
    """The time input of one request for the events at ``ts`` (float64 seconds): ``timestamps`` as they are, or
    float32 ``time_gaps``, seconds since the event before (``previous``; ``None`` at a stream's start: gap 0)."""
    names = {e["name"] for e in spec["inputs"]}
    if "timestamps" in names:
        return {"timestamps": _tensor(ts, np.float64)}
    if "time_gaps" in names:
        return {"time_gaps": _tensor(np.diff(ts, prepend=ts[0] if previous is None else previous), np.float32)}
    return {}


def perf_input_data(cfg, spec: dict, ds, users: int = 256, events: int = 10, prime: int = 200,
                    seed: int = 0) -> dict:
    """perf_analyzer's ``{"data": [...]}`` for the model (``cfg``, ``spec``) from the :class:`~zoo.data.SequenceDataset`
    ``ds``, already indexed with the model's vocabulary. See the module docstring for what each request holds."""
    for what, v in (("users", users), ("events", events), ("prime", prime)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{what} must be an int >= 1, got {v!r}")
    stateful = cfg.HasField("sequence_batching")
    if spec["kind"] == "step" and not stateful:
        raise PerfDataError(f"model {cfg.name!r} keeps its state in the requests (--state explicit): perf_analyzer "
                            "cannot feed one response's state into the next request; generate an implicit-state "
                            "repository (--state implicit) for perf_analyzer, or time it with bench/bench_triton.py")
    names = {e["name"] for e in spec["inputs"]}
    time_aware = bool(names & {"timestamps", "time_gaps"})
    if time_aware:
        ds.check_timestamps_for(f"model {cfg.name!r}")
    eligible = [u for u, s in enumerate(ds.sequences) if len(s) >= 2]
    if not eligible:
        raise PerfDataError(f"no user of {ds.name or 'the data'} has two items (one to prime with, one event)")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(eligible), size=min(users, len(eligible)), replace=False).tolist())
    max_len = int(spec["max_seq_length"])
    # a TensorRT engine's profile takes at most max_seq_length new items a request (build_engine.sh): a longer
    # priming goes in pieces, as the client sends it
    step_cap = max_len if T.is_tensorrt(cfg) else None
    # a --candidates model: every request carries the input (the onnxruntime/tensorrt configs require it), one 0,
    # which restricts nothing
    cands = {"candidates": _tensor([0], np.int64)} if "candidates" in names else {}
    data = []
    for c in chosen:
        u = eligible[c]
        seq = np.asarray(ds.sequences[u], dtype=np.int64)
        ts = np.asarray(ds.timestamps[u], dtype=np.float64) if time_aware else None
        n = len(seq)
        first_event = n - min(events, n - 1)                        # index of the first replayed event
        if stateful:
            p0 = max(0, first_event - prime)
            stream = []
            for a in range(p0, first_event, step_cap or first_event - p0):
                b = min(first_event, a + (step_cap or first_event - p0))
                stream.append({"item_ids": _tensor(seq[a:b], np.int64),
                               **(_time_inputs(spec, ts[a:b], None if a == p0 else ts[a - 1]) if time_aware else {}),
                               **cands})
            for i in range(first_event, n):
                stream.append({"item_ids": _tensor(seq[i:i + 1], np.int64),
                               **(_time_inputs(spec, ts[i:i + 1], ts[i - 1]) if time_aware else {}), **cands})
            data.append(stream)
        else:
            for i in range(first_event, n):                          # the window before each replayed event
                w0 = max(0, i - max_len)
                data.append({"item_ids": _tensor(seq[w0:i], np.int64),
                             **(_time_inputs(spec, ts[w0:i], None) if time_aware else {}), **cands})
    return {"data": data}


def perf_analyzer_command(cfg, out: str | os.PathLike, n_streams: int) -> str:
    """The ``perf_analyzer`` line for the written file (gRPC on the default port; concurrency sweep 1..64)."""
    cmd = (f"perf_analyzer -m {T._sh(cfg.name)} -i grpc -u localhost:8001 --input-data {T._sh(out)} "
           "--concurrency-range 1:64:2")                       # each value one shell word (a path with a blank)
    if cfg.HasField("sequence_batching"):
        # one correlation id per live sequence: more ids than the concurrency, fewer than the batcher's slots
        cmd += f" --sequence-id-range 1:{max(64, n_streams)}"
    return cmd


def check_out_of_repository(out: str | os.PathLike, repo: str | os.PathLike) -> None:
    """ValueError when ``out`` is a file of the Triton repository ``repo`` that :mod:`export.triton` writes or Triton
    reads: anything inside a folder of the repository (a model's config.pbtxt, graph, vocabulary; a new file there
    would also make export.triton refuse to regenerate the folder), or the repository's README.md / serve.sh. A file
    beside them at the repository's top level (``REPO/perf.json``) is fine: Triton takes folders only."""
    top = os.path.realpath(repo)
    path = os.path.realpath(out)
    if os.path.commonpath([top, path]) != top or path == top:
        return
    rel = os.path.relpath(path, top)
    folder = rel.split(os.sep)[0]
    if os.sep in rel:
        raise ValueError(f"--out {out} is inside the folder {folder!r} of --repo {repo} (a model folder that "
                         "python -m export.triton writes and Triton serves): choose a path outside it")
    if rel in ("README.md", "serve.sh"):
        raise ValueError(f"--out {out} is the repository's {rel} (written by python -m export.triton): choose "
                         "another path")


def main(argv: Sequence[str] | None = None) -> int:
    from zoo.cli import (add_columns_option, add_model_data_options, cannot, check_outputs, error_text,
                         model_data_options, nonnegative_int, positive_int, written_whole)
    from zoo.data import load_dataset

    p = argparse.ArgumentParser(allow_abbrev=False,
                                prog=command_prog("export.perf_data"), description=__doc__.split("\n\n")[0],
                                epilog=EXIT_CODES)
    p.add_argument("--repo", required=True, help="Triton model repository written by python -m export.triton")
    p.add_argument("--name", required=True, help="the model's folder in --repo")
    p.add_argument("--data", required=True, help="interaction file whose users' histories are replayed")
    p.add_argument("--out", required=True,
                   help="JSON file for perf_analyzer --input-data; '-': the JSON on stdout (the perf_analyzer line and "
                        "the summary on stderr)")
    p.add_argument("--users", type=positive_int, default=256,
                   help="users sampled (default 256; one stream each for stateful models)")
    p.add_argument("--events", type=positive_int, default=10,
                   help="last events of each user replayed one by one (default 10; a stateful stream is the "
                        "priming request, then one request per event)")
    p.add_argument("--prime", type=positive_int, default=200,
                   help="stateful models: at most this many items before the events prime the sequence (default 200)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the user sample, >= 0 (default 0)")
    p.add_argument("--unknown-items", choices=["error", "drop"], default="error",
                   help="items of --data the model's vocabulary lacks: refuse (default) or drop their interactions")
    add_model_data_options(p, "sampling users", serving=True)
    add_columns_option(p)
    a = p.parse_args(argv)
    to_stdout = a.out == STDOUT_PATH
    if not to_stdout:                                       # '-' is stdout, never a file of that name
        try:
            check_outputs({"--out": a.out}, {"--data": a.data})
            check_out_of_repository(a.out, a.repo)
        except ValueError as e:
            p.error(str(e))
    if not os.path.exists(a.data):                          # an input that is not there: the run fails (1)
        exit_with(EXIT_ERROR, f"export.perf_data: --data {a.data}: no such file")
    try:
        from zoo.evaluate import align_with_vocab

        cfg, spec, vocab = read_model_folder(pathlib.Path(a.repo) / a.name)
        ds = load_dataset(a.data, **model_data_options(pathlib.Path(a.repo) / a.name, a.kcore, a.time_ties),
                          columns=a.columns)
        ds, note = align_with_vocab(ds, vocab, int(spec["n_items"]), f"model {a.name!r}", a.unknown_items)
        if note.startswith("WARNING"):
            print(note, file=sys.stderr)
        data = perf_input_data(cfg, spec, ds, users=a.users, events=a.events, prime=a.prime, seed=a.seed)
    except (OSError, ValueError, KeyError) as e:                 # UnknownItemError, PerfDataError, config errors
        print(f"export.perf_data: {error_text(e)}", file=sys.stderr)
        return EXIT_ERROR
    stateful = cfg.HasField("sequence_batching")
    n_req = sum(len(s) for s in data["data"]) if stateful else len(data["data"])
    what = (f"{len(data['data'])} {'streams' if stateful else 'requests'}" + (f", {n_req} requests" if stateful else "")
            + f" for model {cfg.name!r}")
    try:                          # strict JSON (perf_analyzer and jq refuse NaN), made whole before any is written
        text = strict_json(data)
    except ValueError as e:
        print(f"export.perf_data: --out {a.out}: not written: {e}", file=sys.stderr)
        return EXIT_ERROR
    if to_stdout:                 # the product on stdout; what would be printed there goes to stderr
        sys.stdout.write(text + "\n")
        print(f"wrote {what} to stdout; save it to a file for perf_analyzer, which reads --input-data from one:",
              file=sys.stderr)
        print(perf_analyzer_command(cfg, "FILE", len(data["data"])), file=sys.stderr)
        return EXIT_OK
    try:
        with written_whole(a.out) as f:
            f.write(text)
    except OSError as e:
        print(f"export.perf_data: {cannot('--out', a.out, e)}", file=sys.stderr)
        return EXIT_ERROR
    print(f"wrote {a.out}: {what}")
    print(perf_analyzer_command(cfg, a.out, len(data["data"])))
    return EXIT_OK


if __name__ == "__main__":
    from .fsutil import run_cli

    sys.exit(run_cli(main))
