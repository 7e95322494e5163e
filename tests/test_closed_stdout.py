"""A command started without a stdout (``cmd >&-``, a daemon or orchestrator that closes it): print-based commands
(``zoo.hub list``, ``zoo.recommend``, ``zoo.evaluate``'s table) lost their whole output and exited 0, while ``--json
-`` exited 1. run_cli (export/fsutil.py) fails every command that writes to a missing stdout the same way -- one
line, status 1 -- and a command that writes nothing there still ends with 0; a stdout that is open (``/dev/null``)
is unaffected."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from export.fsutil import EXIT_ERROR, run_cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "ZOO_NO_CACHE_SEED": "1"}
LINE = "{prog}: error: cannot write to standard output (it is closed)"


def _closed(args, **kw) -> subprocess.CompletedProcess:
    """Run ``args`` with descriptor 1 closed, as ``sh -c 'cmd >&-'`` starts it."""
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, timeout=600,
                          preexec_fn=lambda: os.close(1), **kw)


def _devnull(args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV, timeout=600,
                          **kw)


def test_printing_without_a_stdout_fails_the_run_in_one_line(monkeypatch, capsys):
    """In the process: ``sys.stdout`` None (as Python leaves it for ``>&-``) -- a print, a write, writelines or
    ``--help`` fail the run with the line and status 1; writing nothing (``""``, a flush) or nothing at all returns
    the result; ``sys.stdout`` is None again after."""
    monkeypatch.setattr(sys, "stdout", None)

    def ended(main):
        with pytest.raises(SystemExit) as e:
            run_cli(main, prog="cmd")
        assert e.value.code == EXIT_ERROR
        assert capsys.readouterr().err.splitlines() == [LINE.format(prog="cmd")]
        assert sys.stdout is None

    ended(lambda: print("a table row"))
    ended(lambda: sys.stdout.writelines(["a", "b"]))

    def caught():                                   # argparse drops a failed write of --help, and exits 0
        try:
            print("usage: cmd ...")
        except OSError:
            pass
        sys.exit(0)

    ended(caught)
    assert run_cli(lambda: print(end="") or sys.stdout.flush() or "done", prog="cmd") == "done"
    assert run_cli(lambda: 7, prog="cmd") == 7
    assert sys.stdout is None and capsys.readouterr().err == ""


_RUN = "import sys; from export.fsutil import run_cli\nrun_cli({body}, prog='cmd')"


@pytest.mark.parametrize("body,prints", [("lambda: print('rows')", True), ("lambda: None", False),
                                         ("lambda: sys.stdout.write('')", False)])
def test_a_closed_descriptor_1_fails_a_command_that_prints_and_not_one_that_does_not(body, prints):
    code = _RUN.format(body=body)
    p = _closed([sys.executable, "-c", code])
    assert (p.returncode, p.stderr.splitlines()) == ((1, [LINE.format(prog="cmd")]) if prints else (0, [])), p
    p = _devnull([sys.executable, "-c", code])
    assert (p.returncode, p.stderr) == (0, ""), p
    p = subprocess.run(["sh", "-c", '"$0" -c "$1" >&-', sys.executable, code], capture_output=True, text=True,
                       env=ENV, timeout=300)
    assert (p.returncode, p.stderr.splitlines()) == ((1, [LINE.format(prog="cmd")]) if prints else (0, [])), p


def test_a_file_the_command_opens_does_not_become_its_stdout(tmp_path):
    """With descriptor 1 closed, the first file a command opened got descriptor 1, and whatever wrote to descriptor
    1 below Python (C code's printf, ``os.write(1, ...)``) wrote into that file: run_cli points descriptor 1 at
    /dev/null first."""
    out = tmp_path / "out.txt"
    code = (f"import os, sys; from export.fsutil import run_cli\n"
            f"def main():\n"
            f"    with open({str(out)!r}, 'w') as f:\n"
            f"        os.write(1, b'noise from C code ')\n"
            f"        f.write('product')\n"
            f"        return f.fileno()\n"
            f"sys.stderr.write(f'fd {{run_cli(main, prog=\"cmd\")}}')")
    p = _closed([sys.executable, "-c", code])
    assert p.returncode == 0 and p.stderr.startswith("fd ") and p.stderr != "fd 1", p
    assert out.read_text() == "product"


def test_print_based_commands_fail_without_a_stdout_and_pass_with_dev_null(tmp_path):
    """The hunter's reproductions (``zoo.hub list >&-``, ``zoo.recommend ... >&-``: status 0, nothing anywhere):
    one line, status 1; the same commands with stdout /dev/null end with 0."""
    from tiny_models import tiny

    tiny("gru4rec").save_pretrained(tmp_path / "m")
    for module, args in (("zoo.hub", ["list"]),
                         ("zoo.recommend", ["--model", str(tmp_path / "m"), "--history", "3", "4", "--k", "3"])):
        p = _closed([sys.executable, "-m", module, *args], cwd=tmp_path)
        assert (p.returncode, p.stderr.splitlines()[-1:]) == (1, [LINE.format(prog=f"python -m {module}")]), p
        assert "Traceback" not in p.stderr, p.stderr
        p = _devnull([sys.executable, "-m", module, *args], cwd=tmp_path)
        assert p.returncode == 0, p.stderr
