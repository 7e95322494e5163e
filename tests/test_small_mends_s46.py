"""Small mends of session 46, each with what it fixes:

1. ``zoo.hub card`` takes ``zoo.evaluate``'s ``--device`` / ``--threads`` / ``--batch-size`` (same names, types and
   defaults), passed through to the card's evaluation; bad values exit 2 naming the option.
2. ``export.triton_server`` has its console script, ``export-triton-server``, as every other command has one.
3. ``pad_sequences`` with a float dtype (timestamps) refuses bool / string / complex / object rows (a ``TypeError``
   naming the row and the dtype), where it cast True to 1.0 and '5' to 5.0.
4. ``temporal_cuts`` takes any real share (``np.float32(0.1)`` was "must be a fraction") and says why a share is
   refused (not a real number, NaN, out of (0, 1)).
5. A card's ``eval_results.json`` and ``zoo.evaluate --json`` record the SHA-256 of the ``model.safetensors``
   measured (``weights_sha256``); ``zoo.hub push`` refuses a card whose weights are not those (exit 1, no Hub call).
"""

import hashlib
import json
import re
import sys

import numpy as np
import pytest
import torch

from export import fsutil
from tests.test_hub_convert import _tiny_gru4rec_run, exits
from zoo import hub
from zoo.data import Interactions, load_dataset
from zoo.data.batching import pad_sequences
from zoo.data.split import temporal_cuts


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``(data, run folder)``: a generated interaction file and a tiny one-epoch GRU4Rec run of it."""
    root = tmp_path_factory.mktemp("run")
    data, _ = _tiny_gru4rec_run(root)
    return data, root / "a"


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------- 1. card's evaluation options
def _card_parser():
    from tests.test_packaging import _parsers

    return next(p for p in _parsers(hub.main, ["card"]) if p.prog.endswith(" card"))


def test_card_has_evaluates_device_threads_and_batch_size_with_the_same_types_and_defaults():
    """zoo.hub card had none of them: it always measured on the model's device (the CPU), with torch's threads and
    256 users per pass. Its options are zoo.evaluate's: same names, same argparse types, same defaults."""
    from zoo.evaluate import build_parser

    card = {a.dest: a for a in _card_parser()._actions}
    evaluate = {a.dest: a for a in build_parser()._actions}
    for dest, flag in (("device", "--device"), ("threads", "--threads"), ("batch_size", "--batch-size")):
        assert dest in card, f"zoo.hub card has no {flag}"
        assert card[dest].option_strings == evaluate[dest].option_strings == [flag]
        assert card[dest].type is evaluate[dest].type and card[dest].default == evaluate[dest].default, dest
        assert card[dest].help and "as zoo.evaluate" in card[dest].help
    assert card["batch_size"].type is fsutil.positive_int and card["batch_size"].default == 256


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], r"argument --batch-size: expected an int >= 1, got '0'"),
    (["--batch-size", "x"], r"argument --batch-size: expected an int >= 1, got 'x'"),
    (["--threads", "0"], r"argument --threads: expected an int >= 1, got '0'"),
    (["--device", "gpu"], r"--device: device 'gpu' is not a device torch knows"),
])
def test_card_refuses_bad_evaluation_options_naming_them_before_reading_anything(argv, message, tmp_path, capsys):
    """Exit 2, one line naming the option, before the run or the data is read (neither exists here)."""
    with pytest.raises(SystemExit) as e:
        hub.main(["card", "--run", str(tmp_path / "no-run"), "--name", "tiny", "--data", str(tmp_path / "no.tsv"),
                  "--out", str(tmp_path / "card"), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and re.search(message, err) and "Traceback" not in err, (e.value.code, err)
    assert not (tmp_path / "card").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible here: --device cuda is no missing GPU")
def test_card_device_cuda_without_a_gpu_exits_4(tmp_path, capsys):
    with exits(capsys, 4, r"--device: device 'cuda': CUDA is not available here"):
        hub.main(["card", "--run", str(tmp_path), "--name", "tiny", "--data", str(tmp_path / "x.tsv"),
                  "--device", "cuda"])


def test_card_passes_device_threads_and_batch_size_to_its_evaluation(tiny_run, tmp_path, monkeypatch):
    """Each evaluation of the card (its protocol's) gets --batch-size and --device; --threads sets torch's threads
    before it. Without them: 256 users per pass, zoo.evaluate's default device, torch's threads left alone."""
    import zoo.evaluate

    data, run = tiny_run
    seen, threads = [], []
    evaluate = zoo.evaluate.evaluate_model
    monkeypatch.setattr(zoo.evaluate, "evaluate_model", lambda *a, **k: seen.append(
        (k.get("batch_size"), k.get("device"))) or evaluate(*a, **k))
    monkeypatch.setattr(torch, "set_num_threads", threads.append)     # recorded, not applied to this process
    argv = ["card", "--run", str(run), "--name", "tiny", "--data", data, "--out", str(tmp_path / "card"),
            "--no-progress"]
    hub.main(argv + ["--batch-size", "7", "--threads", "3", "--device", "cpu"])
    assert seen == [(7, torch.device("cpu"))] and threads == [3]
    hub.main(argv)
    assert seen[1] == (256, torch.device("cuda" if torch.cuda.is_available() else "cpu")) and threads == [3]
    assert json.loads((tmp_path / "card" / "eval_results.json").read_text())["metrics"]


# ---------------------------------------------------------------------------------- 2. export-triton-server script
def test_triton_server_has_its_console_script_named_in_its_usage(monkeypatch, capsys):
    """Every command but export.triton_server had a console script: ``export-triton-server`` runs it (its --help
    names the script, exit 0, before pytriton is looked for); ``python -m`` keeps its own name."""
    try:
        import tomllib
    except ImportError:
        tomllib = pytest.importorskip("tomli")
    from pathlib import Path

    scripts = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get("export-triton-server") == "export.fsutil:triton_server_script"
    assert fsutil.SCRIPTS["export.triton_server"] == "export-triton-server"
    import export.triton_server as server

    assert server.build_parser().prog == "python -m export.triton_server"
    monkeypatch.setattr(fsutil, "_running_script", None)              # restored after the script has set it
    monkeypatch.setattr(sys, "argv", ["export-triton-server", "--help"])
    with pytest.raises(SystemExit) as e:
        fsutil.triton_server_script()
    assert e.value.code in (0, None) and capsys.readouterr().out.startswith("usage: export-triton-server [-h] --repo")
    monkeypatch.setattr(sys, "argv", ["export-triton-server", "--repo", "r", "--http-port", "0"])
    with pytest.raises(SystemExit) as e:
        fsutil.triton_server_script()
    err = capsys.readouterr().err
    assert e.value.code == 2 and "export-triton-server: error: argument --http-port" in err, err
    import importlib.util

    if importlib.util.find_spec("pytriton") is None:                  # the missing package names the script too
        monkeypatch.setattr(sys, "argv", ["export-triton-server", "--repo", "r"])
        with pytest.raises(SystemExit) as e:
            fsutil.triton_server_script()
        err = capsys.readouterr().err
        assert e.value.code == 4 and err.startswith("error: export-triton-server needs nvidia-pytriton"), err


# ---------------------------------------------------------------------------------- 3. pad_sequences, float rows
@pytest.mark.parametrize("row, dtype", [
    (np.array([True, False]), "bool"), (np.array(["5", "6"]), "<U1"), (np.array([1 + 2j]), "complex128"),
    (np.array([None, 1.0], dtype=object), "object"), (np.array(["2020-01-01"], dtype="datetime64[s]"),
                                                      "datetime64[s]"),
])
def test_pad_sequences_with_a_float_dtype_refuses_rows_that_are_no_numbers(row, dtype):
    """The float cast read True as 1.0 and '5' as 5.0: a TypeError names the row and its dtype now (the int dtype's
    message, "numbers" for "int ids")."""
    good = np.array([1.5, 2.0])
    with pytest.raises(TypeError, match=rf"^row 1 must be a 1-D array of numbers, got {re.escape(dtype)} values "):
        pad_sequences([good, row], "right", dtype=np.float64, fill=0.0)
    with pytest.raises(TypeError, match=rf"^row 0 must be a 1-D array of numbers, got {re.escape(dtype)} values "):
        pad_sequences([row], "left", dtype=np.float32)


def test_pad_sequences_with_a_float_dtype_takes_ints_floats_and_empty_rows():
    values, mask = pad_sequences([np.array([1, 2]), np.array([2.5], np.float32), np.array([], dtype="<U1")], "left",
                                 dtype=np.float64, fill=0.0)
    assert values.dtype == np.float64 and values.tolist() == [[1.0, 2.0], [0.0, 2.5], [0.0, 0.0]]
    assert mask.tolist() == [[True, True], [False, True], [False, False]]
    with pytest.raises(ValueError, match=r"row 0 must be a 1-D array of numbers, got a 2-D float64 array"):
        pad_sequences([np.ones((2, 2))], "left", dtype=np.float64)
    with pytest.raises(ValueError, match=r"row 0 must be a 1-D array of int ids, got bool values"):   # as before
        pad_sequences([np.array([True])], "left")


# ------------------------------------------------------------------------------------- 4. temporal_cuts' shares
def _timed(n: int = 10):
    return load_dataset(Interactions(np.zeros(n, np.int64), np.arange(n), np.arange(n, dtype=float)), kcore=None)


def test_temporal_cuts_take_any_real_share_as_written():
    """np.float32(0.1) was refused ("must be a fraction"); numpy's floats and Fractions are shares like Python's, each
    counted as written: np.float32(0.7) is 0.699999988, whose floor(share * 10) would put 6 interactions, not 7, at
    or after the test cut."""
    from fractions import Fraction

    ds = _timed(10)
    want = temporal_cuts(ds, 0.1, 0.2)
    for test, valid in ((np.float32(0.1), np.float32(0.2)), (np.float64(0.1), 0.2), (Fraction(1, 10), np.float16(0.2))):
        assert temporal_cuts(ds, test, valid) == want, (test, valid)
    assert temporal_cuts(_timed(10), np.float32(0.7), np.float32(0.1)) == temporal_cuts(_timed(10), 0.7, 0.1)


@pytest.mark.parametrize("test, message", [
    (True, r"test_share must be a real number in \(0, 1\) \(a share of the interactions\), got bool True"),
    ("0.1", r"test_share must be a real number .*got str '0.1'"),
    (0.1 + 0j, r"test_share must be a real number .*got complex"),
    (float("nan"), r"test_share must be a share of the interactions in \(0, 1\), got nan \(not a number\)"),
    (np.float32("nan"), r"got np.float32\(nan\) \(not a number\)|got nan \(not a number\)"),
    (1.5, r"test_share must be a share of the interactions in \(0, 1\), got 1.5 \(out of range: >= 1\)"),
    (np.float32(0.0), r"got (np.float32\()?0.0\)? \(out of range: <= 0\)"),
])
def test_temporal_cuts_say_why_a_share_is_refused(test, message):
    with pytest.raises(ValueError, match=message):
        temporal_cuts(_timed(), test, 0.1)
    with pytest.raises(ValueError, match=message.replace("test_share", "valid_share")):
        temporal_cuts(_timed(), 0.1, test)


# ------------------------------------------------------------------------------------- 5. the weights' SHA-256
def test_eval_results_record_the_weights_measured_and_push_refuses_other_weights(tiny_run, tmp_path, monkeypatch,
                                                                                   capsys):
    """A card's eval_results.json carried no trace of the weights its numbers were measured on: weights replaced in
    the folder (same shapes, other values) were pushed with the old numbers. It records their SHA-256 now, push
    checks it (exit 1, nothing uploaded), and zoo.evaluate --json records it too."""
    from transformers import AutoModel

    from tests.hub_fakes import record_hub_calls
    from zoo.evaluate import main as evaluate_main

    data, run = tiny_run
    card = tmp_path / "card"
    hub.main(["card", "--run", str(run), "--name", "tiny", "--data", data, "--out", str(card), "--repo-id", "me/tiny",
              "--no-progress"])
    recorded = json.loads((card / "eval_results.json").read_text()).get("weights_sha256")
    assert recorded == _sha(card / "model.safetensors") == _sha(run / "model.safetensors")
    out = tmp_path / "eval.json"
    evaluate_main(["--model", str(card), "--data", data, "--kcore", "0", "--no-progress", "--json", str(out)])
    assert json.loads(out.read_text())["weights_sha256"] == recorded
    calls = record_hub_calls(monkeypatch)
    hub.main(["push", str(card), "--repo-id", "me/tiny"])               # the weights measured: pushed
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    capsys.readouterr()
    model = AutoModel.from_pretrained(card)                            # other values, same shapes and vocabulary
    with torch.no_grad():
        next(model.parameters()).add_(0.5)
    model.save_pretrained(card)
    assert _sha(card / "model.safetensors") != recorded
    with exits(capsys, 1, rf"push failed: .*eval_results.json was measured on other weights \(sha256 "
                          rf"{recorded[:12]}\.\.\.\) than the folder's model.safetensors .*re-card"):
        hub.main(["push", str(card), "--repo-id", "me/tiny"])
    assert len(calls) == 2                                             # no Hub call for the refused folder
    results = json.loads((card / "eval_results.json").read_text())
    results["weights_sha256"] = "not-a-hash"
    (card / "eval_results.json").write_text(json.dumps(results))
    with exits(capsys, 1, r"eval_results.json's weights_sha256 is not a SHA-256 \(64 hex digits\): 'not-a-hash'"):
        hub.main(["push", str(card), "--repo-id", "me/tiny"])
    del results["weights_sha256"]                                      # a card written before: nothing to check
    (card / "eval_results.json").write_text(json.dumps(results))
    hub.main(["push", str(card), "--repo-id", "me/tiny"])
    assert len(calls) == 4
    # re-carding measures the folder's weights again and records them
    hub.main(["card", "--run", str(card), "--name", "tiny", "--data", data, "--out", str(card), "--repo-id",
              "me/tiny", "--no-progress"])
    assert json.loads((card / "eval_results.json").read_text())["weights_sha256"] == _sha(card / "model.safetensors")
