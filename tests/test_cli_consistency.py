"""One option, one meaning, one refusal across the command-line tools (session 45's comparison of the commands):
``zoo.recommend``'s id options given a file, its one-history ``--unknown-items drop``, ``zoo.download --dir``,
``zoo.train``'s ``--seed`` / ``--max-len``, ``zoo.embed``'s ``--data`` options, the build and server numbers,
``zoo.soup``'s ``--revision`` / ``--subfolder`` and the library modules run as commands."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from export.fsutil import EXIT_USAGE

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
ITEMS = [100 + 7 * i for i in range(12)]          # external ids of the tiny model


def _usage_error(capsys, main, argv) -> str:
    """``main(argv)`` exits 2 (a usage error); its stderr."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == EXIT_USAGE, (e.value.code, err)
    return err


@pytest.fixture
def gru(tmp_path):
    """A tiny GRU4Rec with an item vocabulary (ITEMS), saved as a run of unfiltered data; its folder."""
    from zoo.models import MODELS
    from zoo.vocab import ItemVocab

    cfg_cls, cls = MODELS["gru4rec"]
    torch.manual_seed(0)
    model = cls(cfg_cls(n_items=len(ITEMS) + 1, max_seq_length=4, embedding_size=8, hidden_size=8)).eval()
    model.set_item_vocab(ItemVocab(ITEMS))
    model.save_pretrained(tmp_path / "gru")
    (tmp_path / "gru" / "train_log.json").write_text(json.dumps({"data_options": {"kcore": None}}))
    return str(tmp_path / "gru")


# ------------------------------------------------------------------ zoo.recommend
@pytest.mark.parametrize("flag", ["--exclude-items", "--candidates"])
@pytest.mark.parametrize("unknown", ["error", "drop"])
def test_recommend_id_option_given_a_file_is_refused_naming_the_file_option(gru, tmp_path, capsys, flag, unknown):
    """``--exclude-items FILE`` (export.onnx's meaning) was read as an item id: refused as unknown without a hint, or,
    with ``--unknown-items drop``, dropped without a word -- the retired items recommended. Now a usage error
    naming the ``-file`` option, with nothing printed on stdout."""
    from zoo.recommend import main

    ids = tmp_path / "retired.txt"
    ids.write_text(f"{ITEMS[3]}\n{ITEMS[5]}\n")
    err = _usage_error(capsys, main, ["--model", gru, "--history", str(ITEMS[0]), str(ITEMS[1]), flag, str(ids),
                                      "--unknown-items", unknown, "--json"])
    assert f"{flag} {ids} names a file" in err and f"use {flag}-file {ids}" in err, err
    assert capsys.readouterr().out == ""


def test_recommend_a_file_named_like_a_known_id_is_that_id(gru, tmp_path, capsys, monkeypatch):
    """Only a file that is no id the model knows is refused: ``--exclude-items 107`` beside a file named ``107``
    excludes the item 107."""
    from zoo.recommend import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / str(ITEMS[1])).write_text("not ids\n")
    out = main(["--model", gru, "--history", str(ITEMS[0]), "--exclude-items", str(ITEMS[1]), "--json"])
    assert out["excluded_items"] == 1 and ITEMS[1] not in out["items"]


def test_recommend_one_history_drop_warns_with_the_count_and_the_ids(gru, tmp_path, capsys):
    """``--unknown-items drop`` for one history (``--history``, or ``--data --user``) dropped items silently --
    the user's most recent event among them -- where ``--all-users`` and zoo.embed warn: a WARNING on stderr with
    the count and the ids (the first 8, then ``...``), and the count in the JSON (0 when none was dropped)."""
    from zoo.recommend import main

    out = main(["--model", gru, "--history", str(ITEMS[0]), "999", str(ITEMS[1]), "u9", "--unknown-items", "drop",
                "--json"])
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith("WARNING: 2 history items the model does not know dropped (999, 'u9')"), line
    assert out["dropped_history_items"] == 2 and out["history_length"] == 2
    assert json.loads(captured.out)["dropped_history_items"] == 2          # stdout: the JSON alone

    unknown = [str(9000 + i) for i in range(10)]
    out = main(["--model", gru, "--history", *unknown, str(ITEMS[2]), "--unknown-items", "drop", "--json"])
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"WARNING: 10 history items the model does not know dropped ({', '.join(unknown[:8])} "
                           "...)"), line
    assert "9008" not in line and out["dropped_history_items"] == 10

    data = tmp_path / "d.tsv"
    data.write_text("user_id\titem_id\ttimestamp\n" + "".join(f"1\t{x}\t{t}\n" for t, x in
                                                             enumerate([ITEMS[0], ITEMS[1], ITEMS[2], 99], 1)))
    out = main(["--model", gru, "--data", str(data), "--user", "1", "--unknown-items", "drop", "--json"])
    assert "WARNING: 1 history item the model does not know dropped (99)" in capsys.readouterr().err
    assert out["dropped_history_items"] == 1 and out["history_length"] == 3

    out = main(["--model", gru, "--history", str(ITEMS[0]), "--unknown-items", "drop", "--json"])
    assert capsys.readouterr().err == "" and out["dropped_history_items"] == 0


# ------------------------------------------------------------------ zoo.download
def test_download_dir_through_a_file_or_dash_is_a_usage_error_before_any_work(tmp_path, capsys, monkeypatch):
    """``--dir afile/x`` ended in a NotADirectoryError traceback (status 1) and ``--dir -`` went on to read the
    archive into a folder named ``-``: both are usage errors now, in the words every folder output uses, before the
    archive is looked at (a missing one would be a 1) and with nothing made."""
    from zoo.download import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    err = _usage_error(capsys, main, ["ml-100k", "--dir", "afile/x", "--from-zip", "missing.zip"])
    assert f"--dir afile/x: {tmp_path / 'afile'} is a file, not a folder" in err, err
    err = _usage_error(capsys, main, ["ml-100k", "--dir", "-", "--from-zip", "missing.zip"])
    assert "--dir -: '-' means standard output, where a folder cannot go" in err, err
    monkeypatch.setenv("ZOO_DATA_DIR", "afile/y")                # the default of --dir, said so
    err = _usage_error(capsys, main, ["ml-100k", "--from-zip", "missing.zip"])
    assert "is a file, not a folder ($ZOO_DATA_DIR, the default of --dir)" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# ------------------------------------------------------------------ zoo.train (its options)
@pytest.mark.parametrize("argv,named", [(["--seed", "-1"], "argument --seed: expected an int >= 0, got '-1'"),
                                        (["--seed", str(2**32)], "argument --seed: expected an int in 0..4294967295"),
                                        (["--seed", "99999999999999999999"], "argument --seed: expected an int in"),
                                        (["--max-len", "0"], "argument --max-len: expected an int >= 1, got '0'")])
def test_train_seed_and_max_len_are_refused_at_parse_naming_the_option(tmp_path, capsys, argv, named):
    """``--seed -1`` / ``2**64`` were refused by NumPy's "Seed must be between 0 and 2**32 - 1" and ``--max-len 0``
    by "max_seq_length must be >= 1": neither named the option. Both are refused at parse now, naming it, before the
    data is read (a missing --data would be a 1)."""
    from zoo.train import build_parser, main

    err = _usage_error(capsys, main, ["--model", "gru4rec", "--data", str(tmp_path / "none.tsv"),
                                      "--out", str(tmp_path / "run"), *argv])
    assert named in err, err
    assert not (tmp_path / "run").exists()
    assert build_parser().parse_args(["--model", "gru4rec", "--data", "d", "--out", "o", "--seed",
                                      str(2**32 - 1), "--max-len", "1"]).seed == 2**32 - 1


# ------------------------------------------------------------------ zoo.embed
@pytest.mark.parametrize("argv,flag", [(["--batch-size", "8"], "--batch-size"), (["--no-progress"], "--no-progress"),
                                       (["--unknown-items", "drop"], "--unknown-items")])
def test_embed_refuses_data_options_without_data(gru, tmp_path, capsys, argv, flag):
    """zoo.embed ran (exit 0) with ``--batch-size``, ``--no-progress`` or ``--unknown-items`` and no ``--data``,
    where they do nothing; zoo.recommend refuses its equivalents, and embed its ``--kcore``/``--columns``: a usage
    error naming the option, nothing written."""
    from zoo.embed import main

    out = tmp_path / "e.st"
    err = _usage_error(capsys, main, ["--model", gru, "--out", str(out), *argv])
    assert f"{flag} applies to --data: give --data or leave it out" in err, err
    assert not out.exists()


# ------------------------------------------------------------------ export.build_plugins, export.triton_server
@pytest.mark.parametrize("jobs", ["0", "-1", "two"])
def test_build_plugins_jobs_below_one_is_refused_at_parse(tmp_path, capsys, monkeypatch, jobs):
    """``-j 0`` / ``-j -1`` ran CMake's configure (~10 s), then ``cmake --build -j 0`` failed with status 1: a usage
    error at parse now, as every other count (zoo.cli.positive_int's words), before any build starts."""
    import export.build_plugins as B

    def no_build(*a, **k):
        raise RuntimeError("a build started")

    monkeypatch.setattr(B, "build", no_build)
    monkeypatch.setattr(B, "build_emulated", no_build)
    err = _usage_error(capsys, B.main, ["-j", jobs, "--build-dir", str(tmp_path / "b")])
    assert f"argument --jobs/-j: expected an int >= 1, got '{jobs}'" in err, err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("argv,named", [
    (["--http-port", "0"], "argument --http-port: expected a port in 1..65535, got '0'"),
    (["--grpc-port", "65536"], "argument --grpc-port: expected a port in 1..65535, got '65536'"),
    (["--metrics-port", "-1"], "argument --metrics-port: expected a port in 0..65535, got '-1'"),
    (["--log-verbose", "-1"], "argument --log-verbose: expected an int >= 0, got '-1'"),
    (["--grpc-port", "8000"], "--grpc-port 8000 is also the port of --http-port"),
    (["--metrics-port", "8001"], "--metrics-port 8001 is also the port of --grpc-port")])
def test_triton_server_numbers_are_checked_at_parse(capsys, argv, named):
    """The server's ports and verbosity were plain ints, handed to tritonserver unchecked: each is refused at parse
    (exit 2, before pytriton is looked for, which a machine without it answers with 4), and two endpoints on one
    port too."""
    from export.triton_server import main

    err = _usage_error(capsys, main, ["--repo", "r", *argv])
    assert named in err, err


def test_triton_server_accepts_the_port_bounds_and_says_what_metrics_port_0_means():
    """0 is "no metrics endpoint" for --metrics-port alone (the default, which its help now gives)."""
    from export.triton_server import build_parser

    p = build_parser()
    a = p.parse_args(["--repo", "r", "--http-port", "1", "--grpc-port", "65535", "--metrics-port", "0"])
    assert (a.http_port, a.grpc_port, a.metrics_port) == (1, 65535, 0)
    (metrics,) = [x for x in p._actions if "--metrics-port" in x.option_strings]
    assert metrics.default == 0 and "default 0" in metrics.help and "metrics off" in metrics.help


# ------------------------------------------------------------------ zoo.soup --revision / --subfolder
@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny GRU4Rec runs (seeds 1, 2) on one file, each in the subfolder ``sub`` of its own folder."""
    from test_train import TINY, _markov_file

    from zoo.train import main as train_main

    tmp = tmp_path_factory.mktemp("soup_hub")
    data = _markov_file(tmp / "markov.tsv", n_users=40)
    for seed in (1, 2):
        train_main(["--model", "gru4rec", "--data", str(data), "--out", str(tmp / f"r{seed}" / "sub"), "--epochs",
                    "1", "--max-len", "10", "--batch-size", "16", "--kcore", "0", "--no-progress", "--seed",
                    str(seed), "--set", *TINY["gru4rec"]])
    return tmp, data


def test_soup_reads_models_at_a_revision_and_subfolder_and_logs_them(two_runs, tmp_path, capsys, monkeypatch):
    """README: every command that reads a checkpoint takes --revision / --subfolder; zoo.soup's --models (folders or
    Hub ids) had neither. One of each applies to every --models entry, and the soup's log records them as
    zoo.evaluate / zoo.recommend record theirs; a --revision of a local folder is refused as elsewhere."""
    import zoo.pretrained
    from zoo.soup import main

    tmp, data = two_runs
    base = ["--data", str(data), "--kcore", "0", "--method", "uniform"]
    log = main(["--models", str(tmp / "r1"), str(tmp / "r2"), "--subfolder", "sub", "--out", str(tmp_path / "s1"),
                *base])
    assert log["subfolder"] == "sub" and "revision" not in log
    assert json.loads((tmp_path / "s1" / "soup_log.json").read_text())["subfolder"] == "sub"

    asked = []
    real = zoo.pretrained.resolve_pretrained

    def resolve(name, **kw):                   # the Hub ids org/r1, org/r2 at revision v1 -> the two runs
        if not str(name).startswith("org/"):    # the runs' own folders, read for their logs
            return real(name, **kw)
        asked.append((name, kw.get("revision"), kw.get("subfolder")))
        return real(str(tmp / name.split("/")[1]), subfolder=kw.get("subfolder"))

    monkeypatch.setattr(zoo.pretrained, "resolve_pretrained", resolve)
    log = main(["--models", "org/r1", "org/r2", "--revision", "v1", "--subfolder", "sub", "--out",
                str(tmp_path / "s2"), *base])
    assert asked == [("org/r1", "v1", "sub"), ("org/r2", "v1", "sub")]
    assert (log["revision"], log["subfolder"]) == ("v1", "sub")

    err = _usage_error(capsys, main, ["--models", str(tmp / "r1"), "org/r2", "--revision", "v1", "--out",
                                      str(tmp_path / "s3"), *base])
    assert f"--revision v1: --models {tmp / 'r1'} is a local folder, which has no revisions" in err, err
    assert not (tmp_path / "s3").exists()


# ------------------------------------------------------------------ library modules run as commands
@pytest.mark.parametrize("module", ["export.runtime", "export.triton_client"])
def test_library_modules_say_so_as_export_verify_does(tmp_path, module):
    """``python -m export.runtime --help`` and ``python -m export.triton_client --help`` printed nothing and exited
    0; export.verify and zoo.hf_trainer say they are libraries and exit 2: one stderr line in export.verify's form
    (``python -m MODULE: a library (...), not a command; run ...``), status 2, whatever the arguments."""
    for args in (["--help"], []):
        p = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=ENV,
                           timeout=300, cwd=tmp_path)
        assert p.returncode == EXIT_USAGE and p.stdout == "", (p.returncode, p.stdout, p.stderr)
        (line,) = p.stderr.splitlines()
        assert line.startswith(f"python -m {module}: a library (") and "not a command; run python -m " in line, line


# ------------------------------------------------------------------ an option value the loaded model refuses
@pytest.fixture
def sas(tmp_path):
    """A tiny SASRec (no exact recurrent step) with the item vocabulary ITEMS; its folder."""
    from tiny_models import TINY

    from zoo.models import MODELS
    from zoo.vocab import ItemVocab

    cfg_cls, cls = MODELS["sasrec"]
    torch.manual_seed(0)
    model = cls(cfg_cls(n_items=len(ITEMS) + 1, max_seq_length=4, **TINY["sasrec"])).eval()
    model.set_item_vocab(ItemVocab(ITEMS))
    model.save_pretrained(tmp_path / "sas")
    return str(tmp_path / "sas")


def test_export_onnx_kind_step_without_an_exact_step_is_refused_before_tracing(sas, tmp_path, capsys):
    """``export.onnx --kind step`` on SASRec failed with status 1 after the "tracing ... (step graph)" line: an option
    value the loaded model refuses is a usage error (export/README), refused once the model is loaded, before any
    tracing, naming the option; nothing left in --out."""
    from export.onnx import main

    out = tmp_path / "o"
    err = _usage_error(capsys, main, ["--model", sas, "--out", str(out), "--kind", "step"])
    assert "--kind step: SASRecModel has no exact recurrent step; export it with --kind window" in err, err
    assert "tracing" not in capsys.readouterr().out + err
    assert not out.exists() or os.listdir(out) == []


def test_export_onnx_time_input_for_a_model_that_does_not_read_time_is_a_usage_error(gru, tmp_path, capsys):
    """``export.onnx --time-input gaps`` on GRU4Rec exited 1 ("ERROR: --time-input gaps: gru4rec does not read
    time") after tracing had begun: a usage error (2) now, before any tracing."""
    from export.onnx import main

    err = _usage_error(capsys, main, ["--model", gru, "--out", str(tmp_path / "o"), "--time-input", "gaps"])
    assert "error: --time-input gaps: gru4rec does not read time" in err, err
    assert "tracing" not in err


@pytest.mark.parametrize("which", ["timestamps", "stepwise"])
def test_recommend_option_the_model_refuses_is_a_usage_error_before_the_data_is_read(gru, sas, tmp_path, capsys,
                                                                                    which):
    """``zoo.recommend --timestamps`` on a model that does not read time and ``--stepwise`` on one without an exact
    step ended with ``sys.exit(str)`` (status 1), after ``--data`` was read: a usage error now, the same words, once
    the model is loaded (a missing --data file, a 1, is not reached)."""
    from zoo.recommend import main

    if which == "timestamps":
        argv, said = (["--model", gru, "--history", str(ITEMS[0]), str(ITEMS[1]), "--timestamps", "1", "2"],
                      "gru4rec does not read timestamps; --timestamps is for time-aware models")
    else:
        argv, said = (["--model", sas, "--data", str(tmp_path / "none.tsv"), "--user", "1", "--stepwise"],
                      "--stepwise: sasrec has no exact recurrent step")
    err = _usage_error(capsys, main, argv)
    assert f"python -m zoo.recommend: error: {said}" in err and "usage:" in err, err
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------ export.triton --repo
@pytest.mark.parametrize("source", ["--model", "--onnx"])
def test_triton_repo_under_a_file_is_a_usage_error_before_any_work(gru, tmp_path, capsys, source):
    """``export.triton --repo afile/x`` ended with status 1 and a raw "[Errno 20] Not a directory" line (after the
    export, for --model): the shared "is a file, not a folder" usage error now, as ``--repo afile`` gets and every
    other folder output, before any work (--onnx: the folder need not even exist)."""
    from export.triton import main

    (tmp_path / "afile").write_text("")
    repo = tmp_path / "afile" / "x"
    err = _usage_error(capsys, main, [source, gru if source == "--model" else str(tmp_path / "none"),
                                      "--repo", str(repo)])
    assert f"error: --repo {repo}: {tmp_path / 'afile'} is a file, not a folder" in err, err
    assert "Errno" not in err and (tmp_path / "afile").read_text() == ""


# ------------------------------------------------------------------ export.trt's numbers
@pytest.mark.parametrize("flag", ["--topk", "--max-batch", "--opt-batch", "--max-steps"])
@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_trt_numbers_are_refused_at_parse_naming_the_option(tmp_path, capsys, flag, value):
    """``export.trt --topk 0`` (and --max-batch, --opt-batch, --max-steps) said "topk must be an int >= 1, got 0",
    without the option; refused at parse now with zoo.cli's words, naming the option as given, as export.onnx and
    export.triton do (a non-number too), before anything is exported."""
    from export.trt import main

    out = tmp_path / "o"
    err = _usage_error(capsys, main, ["--model", "m", "--out", str(out), flag, value])
    assert f"argument {flag}: expected an int >= 1, got '{value}'" in err, err
    assert not out.exists()


@pytest.mark.parametrize("argv,named", [(["--opt-batch", "9", "--max-batch", "8"], "--opt-batch: opt_batch (9)"),
                                        (["--workspace", "0"], "--workspace: workspace must be positive"),
                                        (["--candidates", "--max-candidates", "0"],
                                         "--max-candidates: max_candidates must be an int >= 1, got 0")])
def test_trt_checks_of_run_name_the_option(tmp_path, capsys, argv, named):
    """The settings export.trt checks together (check_run_numbers' words) are named by their options too."""
    from export.trt import main

    err = _usage_error(capsys, main, ["--model", "m", "--out", str(tmp_path / "o"), *argv])
    assert named in err, err


# ------------------------------------------------------------------ zoo.recommend: id options under drop
def test_recommend_drop_names_the_unknown_ids_of_id_options_in_every_mode(gru, tmp_path, capsys):
    """With ``--unknown-items drop``, the unknown ids of --exclude-items, --candidates and --similar-to were
    dropped without a word (one history, --all-users, --similar-to) while a history's dropped items get a WARNING:
    one WARNING line each on stderr, naming the option and the ids (the first 8, each once); stdout keeps the JSON
    alone; no line when nothing is dropped."""
    from zoo.recommend import main

    known = [str(x) for x in ITEMS]
    drop = ["--unknown-items", "drop", "--json", "--k", "2"]
    out = main(["--model", gru, "--history", known[0], "--exclude-items", known[1], "999", "998", "999",
                "--candidates", *known[2:6], "u7", *drop])
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "WARNING: 2 --exclude-items ids the model does not know dropped (999, 998)",
        "WARNING: 1 --candidates id the model does not know dropped ('u7')"], captured.err
    assert json.loads(captured.out)["excluded_items"] == 1 and out["candidates"] == 4

    many = [str(9000 + i) for i in range(10)]
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(many) + "\n")
    main(["--model", gru, "--history", known[0], "--exclude-items-file", str(ids), *drop])
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"WARNING: 10 --exclude-items-file ids the model does not know dropped ({', '.join(many[:8])} ...)"

    main(["--model", gru, "--similar-to", known[0], "5", *drop])
    assert capsys.readouterr().err.splitlines() == ["WARNING: 1 --similar-to id the model does not know dropped (5)"]

    data = tmp_path / "d.tsv"
    data.write_text("user_id\titem_id\ttimestamp\n" + "".join(f"1\t{x}\t{t}\n" for t, x in enumerate(ITEMS[:3], 1)))
    main(["--model", gru, "--data", str(data), "--all-users", "--out", str(tmp_path / "r.jsonl"),
          "--exclude-items", known[4], "42", *drop])
    assert "WARNING: 1 --exclude-items id the model does not know dropped (42)" in capsys.readouterr().err

    main(["--model", gru, "--history", known[0], "--exclude-items", known[1], "--candidates", *known[2:6], *drop])
    assert capsys.readouterr().err == ""
