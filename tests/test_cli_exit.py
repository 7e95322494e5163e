"""How every command ends when its reader goes away (a closed stdout: status 141, quietly), on Ctrl-C (status 130, one
line) and without a stdout at all: :func:`export.fsutil.run_cli`, the one wrapper of every ``python -m`` entry and
console script."""
from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from export.fsutil import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, run_cli

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
    """Each ``if __name__ == "__main__":`` of zoo/ and export/ calls ``run_cli(main)``, and the console scripts'
    entries go through it too."""
    mains = []
    for path in sorted([*ROOT.glob("zoo/**/*.py"), *ROOT.glob("export/*.py")]):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                mains.append(path.relative_to(ROOT).as_posix())
                assert "run_cli(main)" in ast.unparse(node), path
    assert len(mains) >= 15 and "zoo/train.py" in mains and "export/triton_server.py" in mains
    assert "run_cli(importlib.import_module" in (ROOT / "zoo" / "cli.py").read_text()


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


def _interrupted_train(tmp_path, out, pre: str = "") -> subprocess.CompletedProcess:
    """``zoo.train`` run as its console script would, SIGINT sent to itself at a known point: once the run has made
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
            os.kill(os.getpid(), signal.SIGINT)
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
    assert p.stderr.splitlines()[-1] == "python -m zoo.train: interrupted" and "Traceback" not in p.stderr, p.stderr
    assert not out.exists()                               # the folder it made (still empty) is gone


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
    assert not hasattr(e.value, "zoo_hint") and not new.exists()


def test_triton_server_without_pytriton_is_a_one_line_error(tmp_path):
    code = ("import sys, runpy; sys.modules['pytriton'] = None; sys.argv = ['x', '--repo', 'r']; "
            "runpy.run_module('export.triton_server', run_name='__main__', alter_sys=True)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120, cwd=tmp_path)
    assert p.returncode == 1 and p.stderr.strip().splitlines() == [
        "error: python -m export.triton_server needs nvidia-pytriton, which is not installed here: pip install "
        "'nvidia-pytriton' in a virtualenv of its own (export/triton_server_env.sh makes one)"], p.stderr


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
    """export.perf_data's --kcore/--time-ties default to the model's run's, as zoo.evaluate's (not auto/file)."""
    from export.perf_data import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.count("default: the model's run's") == 2, text
