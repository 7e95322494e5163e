"""Small helpers shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from export.triton_server import die_with_parent as _die_with_parent, signals_deferred  # noqa: E402
from zoo.cli import EXIT_CODES, check_outputs, positive_int, written_whole  # noqa: E402
from zoo.pretrained import HUB_ORG, PLACEHOLDER_ORGS, bundled_models  # noqa: E402

#: ML-1M as the bundled cards were measured on it: ``$ZOO_DATA_DIR``, else ``../shared/data`` beside the checkout
ML1M_DATA = os.path.join(os.environ.get("ZOO_DATA_DIR", os.path.join(_ROOT, "..", "shared", "data")),
                         "ml-1m.5core.seq.gz")
#: the bundled cards trained on it
ML1M_CARDS = ["mamba4rec-ml1m", "sasrec-ml1m", "lrurec-ml1m", "gru4rec-ml1m", "bert4rec-ml1m"]


#: the folder of the bundled cards the benches read (``hub_cards/<card>``)
CARDS_DIR = os.path.join(_ROOT, "hub_cards")


def bundled_cards(holding: Sequence[str] = ()) -> list[str]:
    """The bundled cards a bench can run, sorted: the models :func:`zoo.pretrained.bundled_models` lists that are
    folders of this checkout's ``hub_cards/`` (what the benches read); with ``holding`` (``["onnx"]``: the step
    graph), only those holding one of these subfolders too."""
    return sorted(name for name in bundled_models() if os.path.isfile(os.path.join(CARDS_DIR, name, "config.json"))
                  and (not holding or any(os.path.isdir(os.path.join(CARDS_DIR, name, h)) for h in holding)))


def cards_help(holding: Sequence[str] = ()) -> str:
    """The part of a card option's help that says how a card is named and which there are (:func:`card_name`)."""
    return f"as NAME or {HUB_ORG}/NAME, NAME one of: {', '.join(bundled_cards(holding))}"


def card_name(holding: Sequence[str] = (), folders: bool = False):
    """The argparse ``type`` of an option naming bundled cards (``--models``, ``--card``): ``NAME`` or ``ORG/NAME`` as
    the zoo's commands name them (``ssm-rec-zoo/mamba4rec-ml1m``; ORG also the docs' placeholder ``org``), given back
    as the bare NAME the bench reads from ``hub_cards/NAME``; with ``folders``, a folder (a training run) is taken
    too, as given: an existing one, or a path (``runs/x``, ``/abs/x``: anything with a ``/`` that is not ORG/NAME),
    which the bench checks once parsed (:func:`missing_folders`: a folder that is not there is a failed run, 1, as
    a ``--model`` that cannot be found in the zoo's commands; and a results file's "Produced by" line naming the
    author's run folders still parses). Any other value -- a typo, a card without the ``holding`` subfolder the
    bench runs (:func:`bundled_cards`) -- is a usage error naming it, with the closest name and the choices, instead
    of a transformers traceback once the bench has started."""
    def card(value: str) -> str:
        if folders and os.path.isdir(value):
            return value
        choices = bundled_cards(holding)
        org, sep, name = value.rpartition("/")
        nor = " nor an existing folder" if folders else ""
        if sep and org not in (HUB_ORG, *PLACEHOLDER_ORGS):
            if folders:
                return value                    # a folder's path: missing_folders() names it if it is not there
            why = f"{value!r} is not a bundled card{nor} (those are {HUB_ORG}/NAME, not {org}/NAME)"
        elif name in choices:
            return name
        elif name in bundled_cards():
            why = f"bundled card {name!r} has no {' or '.join(h + '/' for h in holding)} folder, which this bench runs"
        else:
            close = difflib.get_close_matches(name, choices, n=1)
            why = f"{value!r} is not a bundled card{nor}" + (f" (did you mean {close[0]}?)" if close else "")
        raise argparse.ArgumentTypeError(f"{why}; choose from: {', '.join(choices)} (as NAME or {HUB_ORG}/NAME)")

    card.__name__ = "bundled card"           # argparse's name for the type
    return card


def missing_folders(flag: str, values: Sequence[str]) -> None:
    """After parsing an option of :func:`card_name` ``(folders=True)``: exit 1 (:data:`zoo.cli.EXIT_ERROR`, the run
    failed: a model that cannot be found) naming the first value that is a path (holds a ``/``) but no folder."""
    from zoo.cli import EXIT_ERROR, exit_with

    for value in values:
        if "/" in value and not os.path.isdir(value):
            exit_with(EXIT_ERROR, f"error: {flag} {value}: no such folder (a card or run folder; bundled cards are "
                                  f"named {cards_help()})")


class HelpFormatter(argparse.HelpFormatter):
    """The bench scripts' ``--help`` layout: each option's default appended to its help text as ``(default: X)`` (a
    list's items space-separated, as they are typed), so that the defaults shown are the ones the code uses; an
    option whose text says its default itself (``default``), or has none to show (None, a flag's False), is left
    as it is."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default is None or default is False or default is argparse.SUPPRESS
                or text is argparse.SUPPRESS or re.search(r"\bdefault\b|%\(default\)", text)):
            return text
        shown = (" ".join(map(str, default)) or "none") if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class RawDescriptionHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """:class:`HelpFormatter` for a bench whose description is its whole docstring, kept as it is laid out."""


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """The command that produced a results file, as typed: ``python <script> <arguments>`` (``argv``: the arguments
    ``main`` was given, or ``sys.argv[1:]``), for the file's header, so that a rerun with other options says so."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", script, *map(shlex.quote, args)])


def status_kb(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (VmRSS: resident now; VmHWM: the peak since the last reset)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak_rss() -> int:
    """Linux: reset the process's peak resident set (VmHWM) to the current one; returns the resident set (kB)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_kb("VmRSS")


def card_config(card: str) -> dict:
    """The config fields of the bundled card ``hub_cards/<card>`` as config-class keyword arguments (its
    ``config.json`` without what ``save_pretrained`` adds: architectures, vocabulary file, versions, type, dtype)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "hub_cards", card, "config.json"), encoding="utf-8") as f:
        fields = json.load(f)
    return {k: v for k, v in fields.items() if k not in ("architectures", "item_vocab_file", "transformers_version",
                                                          "model_type", "dtype")}


def fresh_run(script: str, args: Sequence[str]) -> str:
    """Run ``python <script> <args>`` in a fresh interpreter (one OpenMP thread), for a measurement that must be its
    own process (a peak resident set); returns the last line it printed (stdout and stderr are captured). Started
    as every bench child is (:func:`spawn`): in a session of its own, and on Linux killed with the bench where that
    is killed outright (SIGKILL, a crash: :func:`die_with_parent`); on an error, Ctrl-C or SIGTERM while it runs it
    is stopped (terminated, killed after 10 s) and reaped before that goes on. A child that fails is
    ``subprocess.CalledProcessError`` (its output and stderr kept), as ``subprocess.run(check=True)`` gave; one that
    printed nothing is a ``RuntimeError`` saying so."""
    proc = spawn([sys.executable, os.path.abspath(script), *map(str, args)], stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        out, err = proc.communicate()
    except BaseException:                       # Ctrl-C, SIGTERM (run_cli), ...: its own session heard none of it
        _stop([proc])
        raise
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, out, err)
    lines = out.strip().splitlines()
    if not lines:
        raise RuntimeError(f"{' '.join(map(str, proc.args))} printed nothing (a measurement prints it last)")
    return lines[-1]


#: the line a worker of :func:`run_workers` (``barrier=True``) prints once it is set up (:func:`wait_for_start`)
READY = "bench-worker-ready"
#: how far ahead of the moment every worker was ready the common start time is set (seconds): time for each to read it
START_LEAD = 0.25


def run_workers(script: str, args: Sequence[str], jobs: Sequence[dict], barrier: bool = False) -> list[dict]:
    """One ``python script --worker *args`` process per job, started together (``OMP_NUM_THREADS=1``), each sent its
    job as one line of JSON on stdin (:func:`worker_job`); returns the JSON each printed last, in job order.

    ``barrier``: a real common start. Each worker, once its imports and set-up are done, calls :func:`wait_for_start`,
    which prints :data:`READY` and waits; when every worker has said so, each is sent the same start time
    (:data:`START_LEAD` seconds ahead) as a second line on stdin, and sleeps until it. Start-up (an interpreter, its
    imports, a model loaded), however long it takes each, then no longer staggers their starts; what is left (a
    worker scheduled late on a busy machine) is measured by the bench from the times the workers return
    (:func:`worker_times`). Without ``barrier`` stdin is closed after the job.

    A worker that fails -- or ends before it said it was ready -- raises RuntimeError as soon as it exits, once the
    other workers are stopped (terminated, then killed after 10 s) and reaped: none runs on after this returns or
    raises (an error, Ctrl-C, or SIGTERM under :func:`export.fsutil.run_cli` included), so the files they use can be
    removed then. The workers run in a session of their own: a Ctrl-C at the terminal (or a signal to the whole
    process group) reaches the bench alone, which stops them as said, instead of each worker dying with a traceback
    of its own while the bench still counts on it. A bench killed outright (SIGKILL, a crash), which can stop nothing,
    takes them with it on Linux (:func:`spawn`)."""
    procs: list[subprocess.Popen] = []
    readers: list[threading.Thread] = []
    ready = [threading.Event() for _ in jobs]
    try:
        for _ in jobs:
            procs.append(spawn([sys.executable, os.path.abspath(script), "--worker", *map(str, args)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1")))
        outs = [""] * len(procs)

        def drain(i: int) -> None:               # read as they run: a pipe left full would block a worker
            kept = []
            for line in procs[i].stdout:
                if barrier and line.rstrip("\n") == READY and not ready[i].is_set():
                    ready[i].set()
                else:
                    kept.append(line)
            outs[i] = "".join(kept)

        readers += [threading.Thread(target=drain, args=(i,), daemon=True) for i in range(len(procs))]
        with _signals_deferred():                # a SIGTERM/Ctrl-C here would leave a reader half-started, which
            for t in readers:                    # the clean-up below cannot join: it is taken once they all run
                t.start()
        for p, job in zip(procs, jobs):
            _send(p, json.dumps(job) + "\n", close=not barrier)

        def check(waiting_for_ready: bool) -> bool:
            """Raise on the first worker that failed (or ended unready); whether every worker is done (ready)."""
            codes = [p.poll() for p in procs]
            failed = next(((i, c) for i, c in enumerate(codes) if c not in (None, 0)), None)
            if failed:
                raise RuntimeError(f"worker {failed[0] + 1} of {len(procs)} of {os.path.basename(script)} failed "
                                   f"(status {failed[1]}); the others were stopped")
            if waiting_for_ready:
                for i, c in enumerate(codes):
                    if c == 0 and not ready[i].is_set():
                        readers[i].join(timeout=1)       # its READY line may still be in the pipe
                        if not ready[i].is_set():
                            raise RuntimeError(f"worker {i + 1} of {len(procs)} of {os.path.basename(script)} ended "
                                               "before it said it was ready; the others were stopped")
                return all(e.is_set() for e in ready)
            return all(c == 0 for c in codes)

        if barrier:
            while not check(True):
                time.sleep(0.01)
            start_at = time.time() + START_LEAD
            for p in procs:
                _send(p, f"{start_at!r}\n", close=True)
        while not check(False):                  # the first failure, in whichever worker, ends the run
            time.sleep(0.05)
        for t in readers:
            t.join()
        return [json.loads(out.strip().splitlines()[-1]) for out in outs]
    finally:
        _stop(procs)
        for t in readers:                         # at the end of their pipes now that the workers are gone
            t.join(timeout=10)
        for p in procs:
            for pipe in (p.stdin, p.stdout):
                with contextlib.suppress(OSError):
                    pipe.close()


#: hold back SIGINT/SIGTERM for a block, raised right after it (a reader thread's start, a child's start):
#: :func:`export.triton_server.signals_deferred`
_signals_deferred = signals_deferred


def die_with_parent(sig: int | None = None):
    """The ``preexec_fn`` of a process the bench starts (a worker, ``redis-server``) that must not outlive it: on
    Linux the child asks the kernel (``prctl(PR_SET_PDEATHSIG, sig)``) for ``sig`` when its parent ends -- a bench
    killed by SIGKILL or a crash, which cannot stop what it started as :func:`run_workers` and :func:`redis_server`
    do on an error, Ctrl-C or SIGTERM, and whose children, in sessions of their own, no group signal reaches either.
    SIGKILL by default: what is left cannot catch it (a worker under ``run_cli``'s SIGTERM handler, one deep in a
    C call), and has nothing to finish for a bench that is gone. The mechanism, and the races it closes, are
    :func:`export.triton_server.die_with_parent`'s (the Triton launcher's, SIGTERM there): Linux sends the signal when
    the *thread* that started the child ends (the benches start them from the thread that then waits for them). Start
    such a child with :func:`spawn`, not ``Popen`` alone (a signal may be lost there). Returns None elsewhere (macOS,
    the BSDs have no such request): there a bench killed outright still leaves its workers to end on their own (a
    worker's stdin/stdout pipes are then closed). ``sig`` None: SIGKILL, read at the call (Windows has none, and a
    default argument read at import made every bench that imports this module fail there; SIGTERM stands in)."""
    if sig is None:
        sig = getattr(signal, "SIGKILL", signal.SIGTERM)
    return _die_with_parent(sig)


def spawn(args: Sequence[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen(args, **kwargs)`` for a process the bench starts and must stop (a worker, ``redis-server``):
    in a session of its own (``start_new_session``: a Ctrl-C at the terminal, or a signal to the whole process group,
    reaches the bench alone, which stops its children itself) and, on Linux, killed with the bench where that is
    killed outright (:func:`die_with_parent`). A ``preexec_fn`` makes Python fork without ``vfork`` and run the
    ``os.register_at_fork`` hooks (``logging``'s among them) around the fork, where an exception is printed and
    dropped: a SIGTERM (``run_cli``: it raises) or Ctrl-C landing there was lost, and the bench ran on. So SIGINT and
    SIGTERM are held back while the child is started (:func:`_signals_deferred`) and raised once ``Popen`` has
    returned, the child first stopped (terminated, killed after 10 s, reaped) as the caller would have: it never
    got it."""
    proc = None
    try:
        with _signals_deferred():
            proc = subprocess.Popen(args, start_new_session=True, preexec_fn=die_with_parent(), **kwargs)
    except BaseException:
        if proc is not None:
            _stop([proc])
        raise
    return proc


def _send(proc: subprocess.Popen, text: str, close: bool) -> None:
    """Write ``text`` to a worker's stdin (and close it); one that died first is left to its status."""
    try:
        proc.stdin.write(text)
        proc.stdin.flush()
        if close:
            proc.stdin.close()
    except (BrokenPipeError, OSError):            # it died before reading: its status says so
        pass


def worker_job() -> dict:
    """In a worker process of :func:`run_workers`: its job (the first line of stdin). SIGTERM is given back its default
    action here (the bench's ``run_cli`` set it to raise): the bench stops its workers with SIGTERM, and a worker
    then ends at once, quietly, instead of each printing a ``terminated`` line."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    line = sys.stdin.readline()
    if not line:
        sys.exit("error: this is a worker of a bench (--worker): its job comes on stdin from the bench")
    return json.loads(line)


def wait_for_start() -> float:
    """In a worker of :func:`run_workers` (``barrier=True``), once its set-up is done: print :data:`READY`, wait for
    the common start time the bench sends when every worker is ready, and sleep until it; returns that time
    (``time.time()`` seconds). A bench that went away (stdin closed without a time) ends the worker (status 1)."""
    print(READY, flush=True)
    line = sys.stdin.readline()
    if not line.strip():
        sys.exit("error: the bench sent no start time (it stopped); this worker ends")
    start_at = float(line)
    time.sleep(max(0.0, start_at - time.time()))
    return start_at


#: a row whose workers' start skew is above this share of the shortest worker's busy time is marked (:data:`SKEWED`)
SKEW_SHARE = 0.05
#: the mark of such a row's "start skew" cell, and the note under the table that explains it
SKEWED = "†"
SKEW_NOTE = (f"{SKEWED} The workers' first events were further apart than {SKEW_SHARE:.0%} of a worker's busy time: "
             "the row's \"events/s in all\" (events over the span from the first start to the last end) reads low by "
             "up to that share, and \"summed over workers\" (each worker's events over its own busy time) high where "
             "the workers did not overlap; where the two agree, what the row shows is the store, not the start.")
#: the header cells of :func:`timing_cells`, and their alignment row
TIMING_HEADER = " start skew ms | busy s per worker | events/s summed over workers |"
TIMING_ALIGN = "---:|---|---:|"


def worker_times(outs: Sequence[dict], events: Sequence[int]) -> dict:
    """How the workers of one configuration ran, from each one's ``"start"`` and ``"end"`` (``time.time()`` of its
    first event and after its last) and ``events`` (each one's count, in the same order): ``span_s`` (max end - min
    start), ``events_per_s`` (all events over that span: the throughput the workers gave together), ``skew_s``
    (max start - min start: how far apart they began), ``busy_s`` (each one's end - start), ``summed_per_s`` (the
    sum over workers of events / busy: what they served, each in its own time, unaffected by the skew) and
    ``skewed`` (the skew is over :data:`SKEW_SHARE` of the shortest busy time: the row is marked)."""
    starts, ends = [o["start"] for o in outs], [o["end"] for o in outs]
    busy = [e - s for s, e in zip(starts, ends)]
    span, skew = max(ends) - min(starts), max(starts) - min(starts)
    return {"span_s": span, "events_per_s": sum(events) / span, "skew_s": skew, "busy_s": busy,
            "summed_per_s": sum(n / b for n, b in zip(events, busy)), "skewed": skew > SKEW_SHARE * min(busy)}


def timing_cells(r: dict) -> str:
    """A row's cells under :data:`TIMING_HEADER` from :func:`worker_times`'s figures in ``r`` (``-`` where the row has
    none): the start skew in ms (marked :data:`SKEWED` when over the share), each worker's busy time in seconds, and
    events/s summed over the workers."""
    if "skew_s" not in r:
        return " - | - | - |"
    mark = f" {SKEWED}" if r["skewed"] else ""
    return (f" {1e3 * r['skew_s']:.1f}{mark} | {' '.join(f'{b:.3f}' for b in r['busy_s'])} | "
            f"{r['summed_per_s']:,.0f} |")


def _stop(procs: Sequence[subprocess.Popen], grace: float = 10.0) -> None:
    """Terminate the processes still running, kill those still there after ``grace`` seconds, and reap them all."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextlib.contextmanager
def scratch_folder(prefix: str, keep: bool = False):
    """A new folder ``$TMPDIR/<prefix>*`` (``/tmp`` without ``TMPDIR``) for a bench's scratch files, removed with what
    it holds when the block ends, on an error or Ctrl-C too; ``keep`` (a bench's ``--keep-tmp``) keeps it and prints
    where it is. Whatever uses its files (workers, a server) must be stopped inside the block."""
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}", flush=True)
        else:
            shutil.rmtree(path, ignore_errors=True)


#: the line a results file's generated tables end with: what stands below it (the "Reading" written by hand after a
#: run) is kept when the bench writes the file again
KEEP = "<!-- written by hand below this line: kept when the bench rewrites what is above -->"


def markdown_path(path: str) -> str:
    """The ``type`` of a bench's ``--markdown PATH`` option: ``path`` checked when the options are parsed, before any
    measuring, as :func:`write_markdown` will need it at the end (a file, not a folder; a place it can be written; an
    existing file it can read), so that a bad path is a usage error at once, not after hours of measuring."""
    try:
        check_outputs({"--markdown": path})
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--markdown ")) from None
    if os.path.isfile(path):                    # write_markdown keeps what was written by hand below its tables
        try:
            with open(path, encoding="utf-8") as f:
                f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise argparse.ArgumentTypeError(f"{path}: cannot read the existing file ({e})") from None
    return path


def write_markdown(path: str, text: str) -> None:
    """Write a bench's generated ``text`` to ``path``, followed by :data:`KEEP` and what stood below that line in the
    file already (nothing is lost on a rerun of the recorded command). An existing file without the line (not one a
    bench wrote) is kept as ``path.prev``, and said. The new file replaces the old one only once it is whole."""
    tail, prev = "\n", None
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise SystemExit(f"error: --markdown {path}: cannot read the existing file ({e}); nothing written")
        if KEEP in old:
            tail = old.split(KEEP, 1)[1]
        else:
            prev = path + ".prev"
    if prev:
        shutil.copy2(path, prev)
        print(f"{path} held no '{KEEP}' line: its old contents are kept as {prev}")
    with written_whole(path) as f:
        f.write(text.rstrip("\n") + "\n\n" + KEEP + tail)
    print(f"wrote {path}")


def write_table(lines: Sequence[str], title: str, markdown: str | None) -> None:
    """Print a bench's table, and write it under ``# title`` to ``markdown`` when given (:func:`write_markdown`)."""
    print("\n".join(lines))
    if markdown:
        write_markdown(markdown, f"# {title}\n\n" + "\n".join(lines) + "\n")


def cards_parser(description: str) -> argparse.ArgumentParser:
    """The options of a bench over the bundled ML-1M cards: ``--models``, ``--data``, ``--threads``, ``--markdown``;
    its ``--help`` ends with the exit statuses (:data:`export.fsutil.EXIT_CODES`: run it with
    :func:`export.fsutil.run_cli`, which gives the last two)."""
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=description, epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("--models", nargs="+", type=card_name(), default=ML1M_CARDS, metavar="CARD",
                   help=f"the bundled cards to measure, trained on the data of --data, {cards_help()}")
    p.add_argument("--data", default=ML1M_DATA, help="the interaction file the cards are measured on (default: "
                                                    "$ZOO_DATA_DIR/ml-1m.5core.seq.gz, the data they were trained on)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch's CPU threads")
    p.add_argument("--markdown", type=markdown_path, help="also write the tables to this file (default: print them "
                                                          "only)")
    return p


def cards_data(args):
    """For :func:`cards_parser`'s ``args``: torch's threads set, and ``--data`` loaded (an exit naming it when it is
    not there)."""
    import torch

    from zoo.data import load_dataset

    torch.set_num_threads(args.threads)
    if not os.path.exists(args.data):
        sys.exit(f"data not found: {args.data} (set ZOO_DATA_DIR)")
    return load_dataset(args.data)


def check_redis(url: str) -> None:
    """``--redis-url``, checked before any work: exit 4 without the ``redis`` package, 2 for a URL it cannot parse, 1
    (one line) for a server that does not answer a ping within 5 s (none there, a wrong password)."""
    from export.fsutil import EXIT_ERROR, EXIT_MISSING, EXIT_USAGE, exit_with

    try:
        import redis
    except ImportError:
        exit_with(EXIT_MISSING, "error: --redis-url needs the redis package, which is not installed here")
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    except ValueError as e:
        exit_with(EXIT_USAGE, f"error: --redis-url {url}: {e}")
    try:
        client.ping()
    except redis.RedisError as e:
        exit_with(EXIT_ERROR, f"error: --redis-url {url}: cannot use a Redis server there ({e})")
    finally:
        client.close()


def omp_prefix() -> str:
    """``OMP_NUM_THREADS=N `` as this process's environment has it (nothing when it is unset), for a results file's
    command line: what the run had, not what a docstring recommends."""
    value = os.environ.get("OMP_NUM_THREADS")
    return "" if value is None else f"OMP_NUM_THREADS={shlex.quote(value)} "


@contextlib.contextmanager
def redis_server(url: str | None):
    """``url``, or a ``redis-server`` started on a free loopback port for the run (no persistence; stopped after, and
    its working folder removed, on an error, Ctrl-C or SIGTERM under :func:`export.fsutil.run_cli` too; in a session
    of its own, so that a Ctrl-C at the terminal or a ``timeout`` that signals the whole process group stops the bench
    alone, which then stops the server, instead of the server dying under the bench's feet with a connection-error
    traceback; killed with the bench where that is killed outright, on Linux: :func:`spawn`; RuntimeError
    if it does not answer within 30 s), or None (with a printed note) when the server or the ``redis`` package is not
    installed. Also the tests' ``redis_url`` fixture (``tests/conftest.py``). A given ``url`` is checked first
    (:func:`check_redis`)."""
    if url:
        check_redis(url)
        yield url
        return
    server = shutil.which("redis-server")
    try:
        import redis
    except ImportError:
        redis = None
    if server is None or redis is None:
        print(f"no RedisStateStore rows: {'redis-server' if server is None else 'the redis package'} is not "
              "installed (or pass --redis-url)", flush=True)
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with scratch_folder("bench-redis-") as work:              # its working folder (nothing persisted), removed after
        proc = spawn([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                      "--dir", work], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    redis.Redis.from_url(url).ping()
                    break
                except redis.ConnectionError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not start on port {port} "
                                           f"(status {proc.poll()})") from None
                    time.sleep(0.05)
            yield url
        finally:
            _stop([proc])


def redis_version(url: str) -> str:
    import redis

    return str(redis.Redis.from_url(url).info("server")["redis_version"])
