"""How every command ends when its reader goes away (a closed stdout: status 141, quietly), on Ctrl-C (status 130, one
line), on SIGTERM (status 143, one line) and without a stdout at all: :func:`export.fsutil.run_cli`, the one wrapper
of every ``python -m`` entry and console script."""
from __future__ import annotations

import argparse
import ast
import errno
import importlib
import inspect
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types

import pytest

from export.fsutil import (EXIT_BROKEN_PIPE, EXIT_CODES, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_MISSING,
                           EXIT_TERMINATED, EXIT_USAGE, run_cli)

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def _with_closed_stdout(args, **kw) -> subprocess.CompletedProcess:
    """Run ``args`` with stdout a pipe whose reading end is closed before it starts (``| head -0``, deterministic)."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run(args, stdout=w, stderr=subprocess.PIPE, text=True, env=ENV, timeout=300, **kw)
    finally:
        os.close(w)


def test_every_main_and_console_script_runs_through_run_cli():
    """Each ``if __name__ == "__main__":`` of zoo/ and export/ calls ``run_cli(main)`` -- or, in a library module that
    is no command, refuses to run with a usage error (``sys.exit(2)``) -- and the console scripts' entries go through
    it too."""
    mains = []
    for path in sorted([*ROOT.glob("zoo/**/*.py"), *ROOT.glob("export/*.py")]):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                mains.append(path.relative_to(ROOT).as_posix())
                assert "run_cli(main)" in ast.unparse(node) or "sys.exit(2)" in ast.unparse(node), path
    assert len(mains) >= 15 and "zoo/train.py" in mains and "export/triton_server.py" in mains
    assert "return loaded.main()" in (ROOT / "export" / "fsutil.py").read_text(encoding="utf-8")   # run_script
    import export.fsutil
    import zoo.cli

    entries = {name for module in (zoo.cli, export.fsutil) for name in dir(module)
               if name.endswith("_script") and name not in ("run_script", "_running_script")}
    assert len(entries) == len(export.fsutil.SCRIPTS), sorted(entries)
    for name in entries:                                     # each console script's entry is run_script(its module)
        entry = getattr(zoo.cli, name, None) or getattr(export.fsutil, name)
        assert "run_script(" in ast.unparse(ast.parse(inspect.getsource(entry))), name


def test_run_cli_in_process(capsys):
    def interrupted():
        e = KeyboardInterrupt()
        e.zoo_hint = "continue with --resume"
        raise e

    with pytest.raises(SystemExit) as e:
        run_cli(interrupted)
    assert e.value.code == EXIT_INTERRUPTED == 130
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(": interrupted; continue with --resume"), line
    assert run_cli(lambda x: x + 1, 1) == 2


def test_sigterm_ends_a_command_as_ctrl_c_does_with_143(capsys):
    """SIGTERM (kill, timeout, a scheduler's stop) killed a command on the spot: no cleanup ran (every temporary file
    and stage stayed), no line was printed. Under run_cli it raises a KeyboardInterrupt (``Terminated``) in the main
    thread, so the command's cleanups run and its hint is kept: one line ``PROG: terminated; HINT``, status 143. The
    handler is run_cli's for the call only; a handler of the calling program's stays its own, and run_cli runs in
    another thread too (where no handler can be set)."""
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    cleaned = []

    def stopped():
        # the handler must be set, or the SIGTERM below ends the test run itself
        assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(60)                               # the handler raises here at the latest
        except KeyboardInterrupt as e:
            e.zoo_hint = "continue with --resume"
            raise
        finally:
            cleaned.append(True)

    with pytest.raises(SystemExit) as e:
        run_cli(stopped)
    assert e.value.code == EXIT_TERMINATED == 143 and cleaned == [True]
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(": terminated; continue with --resume"), line
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL      # put back
    got = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        def own_handler():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
            return "went on"

        assert run_cli(own_handler) == "went on" and got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
    results = []
    thread = threading.Thread(target=lambda: results.append(run_cli(lambda: "in a thread")))
    thread.start()
    thread.join(60)
    assert results == ["in a thread"] and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_console_script_interrupted_while_importing_its_command_is_one_line(monkeypatch, capsys):
    """A console script imported its command (torch, onnx: seconds) before run_cli: a Ctrl-C then was a traceback. The
    import now runs inside run_cli: one line naming the script, status 130."""
    import export.fsutil

    monkeypatch.setattr(export.fsutil, "_running_script", None)
    real = importlib.import_module

    def interrupted(name, *a, **k):
        if name == "export.onnx":
            raise KeyboardInterrupt
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", interrupted)
    try:
        with pytest.raises(SystemExit) as e:
            export.fsutil.onnx_script()
    except KeyboardInterrupt:
        pytest.fail("the interruption of the import reached the script's caller (a traceback)")
    assert e.value.code == EXIT_INTERRUPTED
    assert capsys.readouterr().err.splitlines() == ["export-onnx: interrupted"]


def test_sigterm_mid_write_leaves_the_old_output_and_no_temporary_file(tmp_path):
    """``zoo.recommend --all-users --out F`` stopped by SIGTERM while it writes F (a real process, the signal from
    outside, as ``kill`` sends it): F as it was before, byte for byte, no hidden temporary file beside it (SIGTERM left
    ``.F.XXXXXXXX`` for good), one line on stderr, status 143."""
    from tiny_models import tiny

    tiny("gru4rec").save_pretrained(tmp_path / "m")
    data = tmp_path / "d.seq"
    data.write_text("user_id\titem_ids_chronological\n" + "".join(f"{u}\t{u % 5 + 1} {u % 7 + 2} 3 {u % 11 + 1} 4\n"
                                                                   for u in range(1, 30)))
    out = tmp_path / "recs" / "out.jsonl"
    out.parent.mkdir()
    out.write_bytes(b'{"user": 1, "items": [2]}\n')
    before = out.read_bytes()
    code = textwrap.dedent(f"""
        import runpy, sys, time
        import zoo.modeling_utils as mu
        real = mu.SeqRecPreTrainedModel.predict
        def predict(self, *a, **k):      # called inside the write of --out: its temporary file is there
            print("SCORING", flush=True)
            time.sleep(300)
            return real(self, *a, **k)
        mu.SeqRecPreTrainedModel.predict = predict
        sys.argv = ["zoo.recommend", "--model", {str(tmp_path / "m")!r}, "--data", {str(data)!r}, "--all-users",
                    "--out", {str(out)!r}, "--no-progress"]
        runpy.run_module("zoo.recommend", run_name="__main__", alter_sys=True)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=ENV, cwd=tmp_path)
    try:
        marked = False
        for line in p.stdout:                            # until the marker, or the end of a process that failed
            if line.strip() == "SCORING":
                marked = True
                break
        temps = [x.name for x in out.parent.iterdir() if x.name != out.name]
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert marked, err
    assert len(temps) == 1 and temps[0].startswith(".out.jsonl."), temps          # it was writing
    assert (p.returncode, err.splitlines()) == (EXIT_TERMINATED, ["python -m zoo.recommend: terminated"]), err
    assert sorted(x.name for x in out.parent.iterdir()) == ["out.jsonl"] and out.read_bytes() == before


class _FullStdout(io.TextIOBase):
    """A stdout on a full disk: every write fails with ENOSPC. No descriptor (``fileno`` raises), so run_cli's
    pointing of stdout's descriptor at /dev/null never reaches the test run's own."""

    def writable(self):
        return True

    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fileno(self):
        raise io.UnsupportedOperation("no descriptor")


def test_a_stdout_that_cannot_be_written_is_one_line_and_status_1_other_errors_stay_theirs(monkeypatch, capsys):
    """A full disk under ``--json - > results.json`` (or EIO, or no stdout at all: ``>&-``) was a traceback ending
    ``OSError: [Errno 28]`` (or ``AttributeError: 'NoneType' object has no attribute 'write'``) in every command.
    run_cli ends it with one line naming standard output and the OS error, status 1 -- also when the command caught
    the error and went on (argparse's --help drops it) -- while an OSError or AttributeError of anything else (a data
    file that cannot be read) goes on up as it was, even with such a stdout; print() without a stdout fails the same
    way (it dropped the output with status 0), a command that writes nothing there does not fail."""
    line = "cmd: error: cannot write to standard output ({})"

    def product():
        json.dump({"metrics": {"HR@10": 0.5}}, sys.stdout)

    def ended(main, code=EXIT_ERROR):
        with pytest.raises(SystemExit) as e:
            run_cli(main, prog="cmd")
        assert e.value.code == code
        return capsys.readouterr().err.splitlines()

    monkeypatch.setattr(sys, "stdout", _FullStdout())
    assert ended(product) == [line.format("No space left on device")]
    data_error = OSError(errno.EIO, os.strerror(errno.EIO), "data.csv")

    def reads_data():
        raise data_error

    with pytest.raises(OSError) as e:
        run_cli(reads_data, prog="cmd")
    assert e.value is data_error and capsys.readouterr().err == ""

    def caught(then=None):
        try:
            print("usage: cmd ...")
        except OSError:
            pass
        if then is not None:
            sys.exit(then)

    assert ended(caught) == ended(lambda: caught(0)) == [line.format("No space left on device")]
    # a command that failed and said why keeps its own message and status
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: caught("error: --out -: cannot write it (No space left on device)"), prog="cmd")
    assert e.value.code == "error: --out -: cannot write it (No space left on device)"
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys, "stdout", None)                # >&-
    assert ended(product) == [line.format("it is closed")]
    assert ended(lambda: print("a note")) == [line.format("it is closed")]    # not dropped with status 0
    assert run_cli(lambda: "done", prog="cmd") == "done"     # nothing written to it: no failure
    with pytest.raises(AttributeError, match="missing"):
        run_cli(lambda: types.SimpleNamespace().missing, prog="cmd")


#: runs ``python -m MODULE ARGS`` for each ``[module, args, closed]`` of argv[1] (JSON) in this one process (one
#: start of torch for them all), each with stdout a full disk (/dev/full; ``closed``: no stdout, as ``>&-`` leaves
#: it), and prints ``=== STATUS`` on stderr after each
_FULL_STDOUT_RUNNER = """
import json, os, runpy, sys, traceback
full = os.open("/dev/full", os.O_WRONLY)
stdout = sys.stdout
for module, args, closed in json.loads(sys.argv[1]):
    os.dup2(full, 1)                                  # run_cli points it at /dev/null after a failure
    sys.stdout = None if closed else stdout
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        status = "traceback"
    print(f"=== {status}", file=sys.stderr, flush=True)
"""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_every_product_on_a_full_stdout_is_one_line_and_status_1(tmp_path):
    """Each command that writes its product on stdout (``--json -``, ``--ranks-out -``, ``zoo.hub list``) ended in a
    traceback (``OSError: [Errno 28] No space left on device``; without a stdout ``AttributeError``) when stdout
    could not be written: one line naming standard output and the error now, status 1; an error of --data keeps its
    own line; a --json file is never touched by it."""
    from tiny_models import tiny

    from zoo.evaluate import main as evaluate_main

    tiny("gru4rec").save_pretrained(tmp_path / "m")
    data = tmp_path / "d.seq"
    data.write_text("user_id\titem_ids_chronological\n" + "".join(f"{u}\t{u % 5 + 1} {u % 7 + 2} 3 {u % 11 + 1} 4\n"
                                                                   for u in range(1, 30)))
    model = str(tmp_path / "m")
    evaluate_main(["--model", model, "--data", str(data), "--ranks-out", str(tmp_path / "r.csv"), "--no-progress"])
    ev = ["--model", model, "--data", str(data), "--no-progress"]
    runs = [("zoo.evaluate", [*ev, "--json", "-"], False), ("zoo.evaluate", [*ev, "--ranks-out", "-"], False),
            ("zoo.evaluate", [*ev, "--json", "-"], True),
            ("zoo.compare", [str(tmp_path / "r.csv")] * 2 + ["--ks", "5", "--bootstrap", "100", "--json", "-"], False),
            ("zoo.compare", [str(tmp_path / "r.csv")] * 2 + ["--ks", "5", "--bootstrap", "100", "--json", "-"], True),
            ("zoo.recommend", ["--model", model, "--history", "3", "4", "--json"], False),
            ("zoo.recommend", ["--model", model, "--similar-to", "3", "--json"], False),
            ("zoo.embed", ["--model", model, "--out", str(tmp_path / "v.safetensors"), "--json"], False),
            ("zoo.hub", ["list"], False), ("zoo.compare", ["--help"], False)]
    data_error = ("zoo.evaluate", ["--model", model, "--data", str(tmp_path), "--json", "-", "--no-progress"], False)
    p = subprocess.run([sys.executable, "-c", _FULL_STDOUT_RUNNER, json.dumps([*runs, data_error])],
                       capture_output=True, text=True, env=ENV, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    said = p.stderr.split("=== ")
    ends = [(part.strip().splitlines() or [""])[-1] for part in said[:-1]]
    statuses = [part.split("\n", 1)[0] for part in said[1:]]
    for (module, args, closed), end, status in zip(runs, ends, statuses):
        why = "it is closed" if closed else "No space left on device"
        assert (status, end) == ("1", f"python -m {module}: error: cannot write to standard output ({why})"), (
            module, args, closed, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    assert statuses[-1] == "1" and ends[-1].startswith("error: ") and "is a directory" in ends[-1], p.stderr
    assert (tmp_path / "v.safetensors").is_file()           # the file output is written whole before the summary


def test_a_closed_stdout_ends_a_listing_quietly_with_141():
    p = _with_closed_stdout([sys.executable, "-m", "zoo.hub", "list"], cwd=ROOT)
    assert (p.returncode, p.stderr) == (EXIT_BROKEN_PIPE, ""), p.stderr


def test_evaluate_writes_its_files_before_the_table_a_closed_pipe_cannot_lose_them(tmp_path, monkeypatch):
    """The table is printed once --json and --ranks-out are written: a reader gone at the table (``| head -1``
    closes the pipe after the first line) loses no result."""
    import zoo.evaluate
    from tiny_models import tiny

    tiny("sasrec").save_pretrained(tmp_path / "m")
    data = tmp_path / "d.seq"
    data.write_text("user_id\titem_ids_chronological\n" + "".join(f"{u}\t{u % 5 + 1} {u % 7 + 2} 3 {u % 11 + 1} 4\n"
                                                                   for u in range(1, 30)))
    out, ranks = tmp_path / "r.json", tmp_path / "r.csv"

    def reader_gone(*a, **k):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(zoo.evaluate, "format_table", reader_gone)
    with pytest.raises(BrokenPipeError):
        zoo.evaluate.main(["--model", str(tmp_path / "m"), "--data", str(data), "--json", str(out),
                           "--ranks-out", str(ranks), "--by-length", "2", "--no-progress"])
    assert out.is_file() and ranks.is_file()


def _interrupted_train(tmp_path, out, pre: str = "", sig: str = "SIGINT") -> subprocess.CompletedProcess:
    """``zoo.train`` run as its console script would, ``sig`` sent to itself at a known point: once the run has made
    its --out folder (``zoo.train.environment``, called before any file is written there)."""
    from test_train import _markov_file

    data = _markov_file(tmp_path / "d.tsv", n_users=20)
    code = textwrap.dedent(f"""
        import os, signal, sys, time
        # a shell without job control starts background commands with SIGINT ignored (CI does), and Python keeps
        # an ignored SIGINT ignored: restore Python's own handler, as an interactive terminal's process has it
        signal.signal(signal.SIGINT, signal.default_int_handler)
        {pre}
        import zoo.train
        def sigint(*a, **k):
            os.kill(os.getpid(), signal.{sig})
            time.sleep(30)
        zoo.train.environment = sigint
        sys.argv = ["zoo-train", "--model", "gru4rec", "--data", {str(data)!r}, "--out", {str(out)!r},
                    "--epochs", "1", "--no-progress", "--kcore", "0", "--set", "embedding_size=4", "hidden_size=4"]
        from zoo.cli import train_script
        train_script()
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300,
                          cwd=tmp_path)


def test_ctrl_c_in_train_is_one_line_status_130_and_no_empty_out_folder(tmp_path):
    out = tmp_path / "new" / "run"
    p = _interrupted_train(tmp_path, out)
    assert p.returncode == EXIT_INTERRUPTED, p.stderr
    assert p.stderr.splitlines()[-1] == "zoo-train: interrupted" and "Traceback" not in p.stderr, p.stderr
    assert not out.exists()                               # the folder it made (still empty) is gone


def test_sigterm_in_train_is_one_line_status_143_and_no_empty_out_folder(tmp_path):
    """SIGTERM runs zoo.train's cleanup as Ctrl-C does (it killed the process, leaving the new --out behind)."""
    out = tmp_path / "new" / "run"
    p = _interrupted_train(tmp_path, out, sig="SIGTERM")
    assert p.returncode == EXIT_TERMINATED, p.stderr
    assert p.stderr.splitlines()[-1] == "zoo-train: terminated" and "Traceback" not in p.stderr, p.stderr
    assert not out.exists()


def test_an_interrupted_train_with_a_resume_state_says_to_resume(tmp_path, monkeypatch):
    import zoo.train
    from zoo.train_state import RESUME_DIR, STATE_FILE

    out = tmp_path / "run"
    (out / RESUME_DIR).mkdir(parents=True)
    (out / RESUME_DIR / STATE_FILE).write_text("{}")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo.train, "train", interrupted)
    with pytest.raises(KeyboardInterrupt) as e:
        zoo.train.main(["--model", "gru4rec", "--data", "d", "--out", str(out)])
    assert "--resume" in e.value.zoo_hint and out.is_dir()
    new = tmp_path / "new"

    def made_then_interrupted(*a, **k):
        new.mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo.train, "train", made_then_interrupted)
    with pytest.raises(KeyboardInterrupt) as e:
        zoo.train.main(["--model", "gru4rec", "--data", "d", "--out", str(new)])
    # no resume state: no hint. The folder a cut run made is removed by train() itself, under its lock (main no
    # longer removes it: that could pull a folder from under a live run): test_ctrl_c_in_train_... checks it
    assert not hasattr(e.value, "zoo_hint")


def test_triton_server_without_pytriton_is_a_one_line_error(tmp_path):
    code = ("import sys, runpy; sys.modules['pytriton'] = None; sys.argv = ['x', '--repo', 'r']; "
            "runpy.run_module('export.triton_server', run_name='__main__', alter_sys=True)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120, cwd=tmp_path)
    assert p.returncode == EXIT_MISSING == 4 and p.stderr.strip().splitlines() == [
        "error: python -m export.triton_server needs nvidia-pytriton, which is not installed here: pip install "
        "'nvidia-pytriton' in a virtualenv of its own (export/triton_server_env.sh makes one)"], p.stderr


#: the export package's commands (``python -m export.X``)
EXPORT_COMMANDS = ("export.onnx", "export.trt", "export.triton", "export.perf_data", "export.triton_server",
                   "export.build_plugins")


class _Built(Exception):
    """Raised from ``parse_args`` with the parser a command's ``main`` built (:func:`_parser_of`)."""

    def __init__(self, parser):
        super().__init__()
        self.parser = parser


def _parser_of(module: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``module``'s ``main`` builds, stopped before it parses anything."""
    def stop(self, args=None, namespace=None):
        raise _Built(self)

    main = importlib.import_module(module).main
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(_Built) as built:
        main([])
    return built.value.parser


@pytest.mark.parametrize("module", EXPORT_COMMANDS)
def test_export_commands_help_names_them_and_ends_with_the_exit_status_table(module, monkeypatch, capsys):
    """Every export command's ``--help`` starts ``usage: python -m MODULE`` (export.triton_server's showed
    ``triton_server.py``), says what each option does (several had no text, their defaults unsaid), and ends with the
    exit-status table all commands share (export.fsutil.EXIT_CODES; export.trt's own numbers meant other things)."""
    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).main(["--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and text.startswith(f"usage: python -m {module} "), text[:200]
    assert "".join(EXIT_CODES.split()) in "".join(text.split()), text[-800:]       # as argparse wrapped it
    parser = _parser_of(module, monkeypatch)
    bare = [a.option_strings for a in parser._actions if a.option_strings and not a.help and a.dest != "help"]
    assert bare == [], bare
    for action in parser._actions:                         # a default that is a number is said in the help
        if isinstance(action.default, int) and not isinstance(action.default, bool) and action.default != 0:
            assert str(action.default) in action.help, (action.option_strings, action.help)


def test_export_verify_is_a_library_and_says_so(tmp_path):
    """``python -m export.verify`` (a library module) printed nothing and exited 0 whatever it was given, which a
    script could take for a passed verification: one line on stderr naming the commands to run, status 2."""
    for args in (["--help"], ["--model", "m", "--onnx", "o"]):
        p = subprocess.run([sys.executable, "-m", "export.verify", *args], capture_output=True, text=True, env=ENV,
                           timeout=300, cwd=tmp_path)
        assert p.returncode == EXIT_USAGE == 2 and p.stdout == "", (p.returncode, p.stdout, p.stderr)
        (line,) = p.stderr.splitlines()
        assert "library" in line and "python -m export.onnx" in line and "python -m export.trt" in line, line


def test_the_fused_cpu_kernel_loads_without_a_stdout(tmp_path):
    """``sys.stdout`` is None in a process started with ``>&-``: the extension still loads (it fell back)."""
    pytest.importorskip("ninja")
    code = ("import sys, warnings; warnings.simplefilter('error'); sys.stdout = None\n"
            "from zoo.ops import selective_scan_cpu as s\n"
            "s.load_extension(); assert sys.stdout is None; sys.stderr.write('loaded')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=600,
                       cwd=tmp_path)
    assert p.returncode == 0 and p.stderr.endswith("loaded"), p.stderr


def test_perf_data_reads_data_as_the_models_run(capsys):
    """export.perf_data's --time-ties defaults to the model's run's, as zoo.evaluate's (not file); its --kcore, a
    serving command's, to none: each sampled user's whole history, whoever else is in the file."""
    from export.perf_data import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.count("default: the model's run's") == 1, text
    assert "--kcore KCORE k-core filter of --data before sampling users: int, 'none' or 'auto' (default: none, each " \
           "user's whole history" in text, text


@pytest.mark.parametrize("module,argv", [
    ("zoo.train", ["--model", "gru4rec", "--data", "d.inter", "--out", "-"]),
    ("zoo.soup", ["--models", "ssm-rec-zoo/gru4rec-ml1m", "ssm-rec-zoo/sasrec-ml1m", "--data", "d.inter",
                  "--out", "-"]),
    ("zoo.hub", ["card", "--run", str(ROOT / "hub_cards" / "gru4rec-ml1m"), "--name", "x", "--data", "d.inter",
                 "--out", "-"]),
    ("zoo.embed", ["--model", "ssm-rec-zoo/gru4rec-ml1m", "--out", "-"]),
    ("export.onnx", ["--model", "ssm-rec-zoo/gru4rec-ml1m", "--out", "-", "--no-verify"]),
    ("export.trt", ["--model", "ssm-rec-zoo/gru4rec-ml1m", "--out", "-"]),
    ("export.triton", ["--model", "ssm-rec-zoo/gru4rec-ml1m", "--repo", "-", "--no-verify"]),
])
def test_an_output_that_cannot_go_to_stdout_refuses_dash_and_makes_no_folder_named_dash(module, argv, tmp_path,
                                                                                         monkeypatch, capsys):
    """``-`` means standard output (export.fsutil.STDOUT_PATH): outputs that are folders or binary files refuse it
    as a usage error (2) before any work, instead of writing a folder or file named ``-`` in the current folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t1\t1\n1\t2\t2\n",
                                      encoding="utf-8")
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == EXIT_USAGE and ("'-' means standard output" in err or "not written to stdout" in err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.inter"]
