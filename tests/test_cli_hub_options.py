"""``--revision`` / ``--subfolder`` of every command that loads a pretrained model (``zoo.pretrained.add_hub_options``):
zoo.recommend, zoo.evaluate, zoo.embed, export.onnx, export.triton, export.trt (``--model``) and zoo.train
(``--init-from``). Each must read the checkpoint they name -- in every place it reads the model -- and refuse them
clearly where they cannot apply.

No network: the Hub is a cache built locally in huggingface_hub's layout (``tests/test_pretrained_cache.py``'s
``snapshot``), with ``HF_HUB_OFFLINE=1``. Two tiny Mamba4Rec checkpoints tell the reads apart: ``main`` knows 11 items
(ids 100-110), ``v1`` 8 others (ids 200-207); every command here reports which catalogue it read.
"""

import json
import os
import re

import pytest
import torch

import zoo
from test_pretrained_cache import PROXY_VARS, files_of, snapshot
from tiny_models import TINY
from zoo.models import MODELS

#: the two checkpoints: name -> (n_items, first item id, seed)
CHECKPOINTS = {"main": (12, 100, 0), "v1": (9, 200, 1)}
MAIN_ITEMS, V1_ITEMS = 11, 8
REPO = "acme/tiny-rec"


def save_tiny(folder, n_items: int, first_id: int, seed: int) -> None:
    """A tiny Mamba4Rec (tests/tiny_models.py's fields, ``n_items``) with item ids ``first_id...``, saved in
    ``folder``."""
    cfg_cls, model_cls = MODELS["mamba4rec"]
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(n_items=n_items, max_seq_length=6, **TINY["mamba4rec"])).eval()
    model.set_item_vocab(zoo.ItemVocab(list(range(first_id, first_id + n_items - 1))))
    model.save_pretrained(folder)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``{name: folder}`` of the two checkpoints, and ``"nested"``: a folder holding main's in ``sub/`` only."""
    root = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for name, (n, first, seed) in CHECKPOINTS.items():
        save_tiny(root / name, n, first, seed)
        out[name] = root / name
    save_tiny(root / "nested" / "sub", *CHECKPOINTS["main"])
    out["nested"] = root / "nested"
    return out


@pytest.fixture
def hub(saved, tmp_path, monkeypatch):
    """An offline Hub cache holding ``REPO``: main's weights on ``main``, v1's at the tag ``v1`` and the branch
    ``dev``."""
    import huggingface_hub.constants as c

    cache = tmp_path / "hf"
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in PROXY_VARS + ("HF_ENDPOINT", "ZOO_HUB_PROBE_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    snapshot(cache, REPO, files_of(saved["main"]), rev="a" * 40)
    snapshot(cache, REPO, files_of(saved["v1"]), rev="b" * 40, refs=("v1", "dev"))
    return cache


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Interactions of users of main's items (100-110) and of v1's (200-207): each checkpoint drops the others'."""
    path = tmp_path_factory.mktemp("data") / "d.inter"
    lines = ["user_id\titem_id\ttimestamp"]
    for u in range(1, 7):
        first = 100 if u <= 4 else 200
        for t in range(6):
            lines.append(f"{u}\t{first + (u + t) % 8}\t{1000 + t}")
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------------------- the commands
# each: (module, the flag that names the model, run(argv_of_the_model, tmp, data) -> the number of items it read)
def _recommend(model_argv, tmp, data):
    from zoo.recommend import main

    out = main([*model_argv, "--history", "101", "102", "201", "202", "--unknown-items", "drop", "--k", "3",
                "--json", "--device", "cpu"])
    ids = {int(i) for i in out["items"]}
    assert ids <= set(range(100, 111)) or ids <= set(range(200, 208)), ids     # one checkpoint's items
    return MAIN_ITEMS if ids <= set(range(100, 111)) else V1_ITEMS


def _evaluate(model_argv, tmp, data):
    from zoo.evaluate import main

    out = main([*model_argv, "--data", str(data), "--unknown-items", "drop", "--ks", "1", "3", "--kcore", "none",
                "--no-progress", "--device", "cpu"])
    assert out["n_users"] == (4 if out["n_items"] == MAIN_ITEMS else 2), out      # the data its own items kept
    return out["n_items"]


def _embed(model_argv, tmp, data):
    from zoo.embed import main

    return main([*model_argv, "--out", str(tmp / "vectors.safetensors"), "--device", "cpu"])["items"]


def _spec_items(folder) -> int:
    return int(json.loads((folder / "state_spec.json").read_text())["n_items"]) - 1


def _onnx(model_argv, tmp, data):
    from export.onnx import main

    code = main([*model_argv, "--out", str(tmp / "onnx"), "--no-verify", "--topk", "3"])
    if code:
        raise SystemExit(code)
    return _spec_items(tmp / "onnx")


def _triton(model_argv, tmp, data):
    from export.triton import main

    code = main([*model_argv, "--repo", str(tmp / "repo"), "--name", "m", "--no-verify", "--topk", "3"])
    if code:
        raise SystemExit(code)
    text = (tmp / "repo" / "m" / "config.pbtxt").read_text()
    return int(re.search(r'key:\s*"n_items"\s*value\s*\{\s*string_value:\s*"(\d+)"', text).group(1)) - 1


def _trt(model_argv, tmp, data):
    from export import trt

    # without TensorRT the run exports and verifies the ONNX graph, then says what is missing (4)
    code = trt.main([*model_argv, "--out", str(tmp / "trt"), "--quick", "--no-emulate", "--topk", "3"])
    if code not in (trt.EXIT_OK, trt.EXIT_MISSING):
        raise SystemExit(code)
    return _spec_items(tmp / "trt")


def _train(model_argv, tmp, data):
    from zoo.train import main

    log = main(["--model", "mamba4rec", "--data", str(data), "--out", str(tmp / "run"), "--epochs", "1",
                "--kcore", "0", "--no-progress", "--unknown-items", "drop", "--device", "cpu", *model_argv])
    n = json.loads((tmp / "run" / "config.json").read_text())["n_items"] - 1
    # the data fitted to the checkpoint it started from: its catalogue, the users of its items
    assert log["dataset"]["items"] == n and log["dataset"]["users"] == (4 if n == MAIN_ITEMS else 2), log["dataset"]
    return n


COMMANDS = {"zoo.recommend": ("--model", _recommend), "zoo.evaluate": ("--model", _evaluate),
            "zoo.embed": ("--model", _embed), "export.onnx": ("--model", _onnx),
            "export.triton": ("--model", _triton), "export.trt": ("--model", _trt),
            "zoo.train": ("--init-from", _train)}


def _needs(name):
    if name in ("export.onnx", "export.triton", "export.trt"):
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    if name == "export.triton":
        pytest.importorskip("tritonclient.grpc.model_config_pb2")


def fails(capsys, run, code: int, *said: str) -> str:
    """``run()`` ends with exit status ``code`` (a ``sys.exit("text")`` is 1) and one error line on stderr holding
    each of ``said``, no traceback; returns stderr."""
    try:
        got = run()
    except SystemExit as e:
        got = e.code
    err = capsys.readouterr().err + (got if isinstance(got, str) else "")
    status = 1 if isinstance(got, str) else got
    assert status == code, (status, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line.lower() and not line.startswith("RESULT:")]
    assert len(lines) == 1, err
    for text in said:
        assert text in lines[0], (text, err)
    return err


@pytest.fixture(params=sorted(COMMANDS))
def command(request):
    _needs(request.param)
    torch.set_num_threads(1)
    return COMMANDS[request.param]


# ---------------------------------------------------------------------------------------------- the tests
def test_a_local_folder_with_the_model_in_a_subfolder(command, saved, data, tmp_path, capsys):
    """``--subfolder sub`` loads the model a folder holds in ``sub/``; without it the folder holds no model (exit 1,
    one line); a subfolder that is not there is named (exit 1: a model that cannot be found)."""
    flag, run = command
    folder = str(saved["nested"])
    assert run([flag, folder, "--subfolder", "sub"], tmp_path / "a", data) == MAIN_ITEMS
    fails(capsys, lambda: run([flag, folder], tmp_path / "b", data), 1, flag, "config.json")
    fails(capsys, lambda: run([flag, folder, "--subfolder", "nope"], tmp_path / "c", data), 1, flag,
          "has no subfolder 'nope'")


def test_revision_with_a_local_folder_or_empty_is_a_usage_error(command, saved, data, tmp_path, capsys):
    """A local folder has no revisions, and an empty --revision names none: usage errors (2), nothing written."""
    flag, run = command
    fails(capsys, lambda: run([flag, str(saved["main"]), "--revision", "v1"], tmp_path, data), 2,
          "--revision v1", "is a local folder, which has no revisions")
    fails(capsys, lambda: run([flag, REPO, "--revision", " "], tmp_path, data), 2,
          "--revision needs a branch, tag or commit")
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_revision_selects_that_snapshot_of_a_hub_repo(command, hub, data, tmp_path, capsys):
    """In an offline Hub cache, no --revision reads main's weights; ``--revision`` a tag, a branch or a commit reads
    that snapshot's (another catalogue); a revision the cache lacks is an error naming it (1), never main's or the
    bundled weights."""
    flag, run = command
    assert run([flag, REPO], tmp_path / "main", data) == MAIN_ITEMS
    for i, rev in enumerate(("v1", "dev", "b" * 40)):
        assert run([flag, REPO, "--revision", rev], tmp_path / f"rev{i}", data) == V1_ITEMS, rev
    assert run([flag, REPO, "--revision", "main"], tmp_path / "main2", data) == MAIN_ITEMS
    fails(capsys, lambda: run([flag, REPO, "--revision", "v9"], tmp_path / "v9", data), 1,
          f"cannot load '{REPO}' at revision 'v9'", "not in the local cache")


def test_a_hub_repo_with_the_model_in_a_subfolder(command, hub, saved, data, tmp_path, capsys):
    """``--revision`` and ``--subfolder`` together: the subfolder of that snapshot."""
    flag, run = command
    snapshot(hub, "acme/nested", files_of(saved["main"], "sub/"), rev="c" * 40)
    snapshot(hub, "acme/nested", files_of(saved["v1"], "sub/"), rev="d" * 40, refs=("v1",))
    assert run([flag, "acme/nested", "--subfolder", "sub"], tmp_path / "a", data) == MAIN_ITEMS
    assert run([flag, "acme/nested", "--revision", "v1", "--subfolder", "sub"], tmp_path / "b", data) == V1_ITEMS
    fails(capsys, lambda: run([flag, "acme/nested", "--revision", "v1", "--subfolder", "nope"], tmp_path / "c", data),
          1, "has no subfolder 'nope'")


@pytest.mark.parametrize("argv, message", [
    (["--onnx", "graph", "--revision", "v1"], "--revision says which checkpoint --model names"),
    (["--baseline", "pop", "--subfolder", "sub"], "--subfolder says which checkpoint --model names")])
def test_evaluate_refuses_them_without_a_model(argv, message, data, capsys):
    from zoo.evaluate import main

    fails(capsys, lambda: main([*argv, "--data", str(data)]), 2, message)


def test_triton_refuses_them_with_an_onnx_folder(tmp_path, capsys):
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from export.triton import main

    fails(capsys, lambda: main(["--onnx", str(tmp_path), "--repo", str(tmp_path / "r"), "--subfolder", "x"]), 2,
          "--subfolder says which checkpoint --model names")


def test_train_refuses_them_without_init_from(data, tmp_path, capsys):
    from zoo.train import main

    fails(capsys, lambda: main(["--model", "mamba4rec", "--data", str(data), "--out", str(tmp_path / "o"),
                                "--revision", "v1"]), 2, "--revision says which checkpoint --init-from names")
    assert not (tmp_path / "o").exists()


def test_train_logs_them_and_checks_the_start_against_out(saved, hub, data, tmp_path, capsys):
    """The run's log records which checkpoint it started from (``init_revision`` / ``init_subfolder``, and the
    SHA-256 of those weights, not main's); ``--out`` the very subfolder it starts from is refused (2)."""
    import hashlib

    from zoo.train import main

    base = ["--model", "mamba4rec", "--data", str(data), "--epochs", "1", "--kcore", "0", "--no-progress",
            "--unknown-items", "drop", "--device", "cpu"]
    log = main([*base, "--out", str(tmp_path / "run"), "--init-from", REPO, "--revision", "v1"])
    assert log["init_revision"] == "v1" and "init_subfolder" not in log
    assert log["init_weights_sha256"] == hashlib.sha256((saved["v1"] / "model.safetensors").read_bytes()).hexdigest()
    log = main([*base, "--out", str(tmp_path / "run2"), "--init-from", str(saved["nested"]), "--subfolder", "sub"])
    assert log["init_subfolder"] == "sub" and "init_revision" not in log
    fails(capsys, lambda: main([*base, "--out", str(saved["nested"] / "sub"), "--init-from", str(saved["nested"]),
                                "--subfolder", "sub", "--overwrite"]), 2, "is the --init-from checkpoint")


def test_embed_and_evaluate_record_them(saved, data, tmp_path):
    """What a command writes says which checkpoint it read: zoo.embed's metadata, zoo.evaluate's result."""
    from zoo.embed import load_vectors, main as embed
    from zoo.evaluate import main as evaluate

    folder = str(saved["nested"])
    embed(["--model", folder, "--subfolder", "sub", "--out", str(tmp_path / "v.safetensors"), "--device", "cpu"])
    assert load_vectors(tmp_path / "v.safetensors").metadata["subfolder"] == "sub"
    out = evaluate(["--model", folder, "--subfolder", "sub", "--data", str(data), "--unknown-items", "drop",
                    "--ks", "1", "--kcore", "none", "--no-progress", "--device", "cpu"])
    assert out["subfolder"] == "sub" and "revision" not in out


def test_triton_records_another_source_for_another_revision(saved, tmp_path):
    from export.triton import hub_source

    assert hub_source(REPO) == REPO and hub_source(REPO, "main") == REPO
    assert hub_source(REPO, "v1", "sub") == f"{REPO}@v1/sub"
    assert hub_source(str(saved["nested"]), None, "sub") == os.path.join(str(saved["nested"]), "sub")


def test_every_command_documents_them_and_ends_its_help_with_the_exit_statuses(capsys):
    from zoo.cli import EXIT_CODES

    for name, (flag, run) in COMMANDS.items():
        _main = __import__(name, fromlist=["main"]).main
        with pytest.raises(SystemExit):
            _main(["--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--revision REV" in text and "--subfolder DIR" in text, name
        assert f"the revision (branch, tag or commit) of {flag}" in text, name
        assert text.endswith(" ".join(EXIT_CODES.split())), name


def test_a_card_follows_the_training_history_into_the_subfolder_it_started_from(data, tmp_path, caplog):
    """A run started with ``--init-from X --subfolder S`` started from ``X/S``: the card's training history (and a
    soup's) looks for the earlier stage there, not in ``X``, where it stopped with a warning."""
    from zoo.hub import training_stages
    from zoo.train import main

    base = ["--model", "mamba4rec", "--data", str(data), "--epochs", "1", "--kcore", "0", "--no-progress",
            "--device", "cpu", "--max-len", "6", "--set", "hidden_size=16", "d_state=8"]
    first = main([*base, "--out", str(tmp_path / "x" / "sub")])
    second = main([*base, "--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "x"), "--subfolder", "sub"])
    stages = training_stages(tmp_path / "b")
    assert [s.get("init_from") for s in stages] == [None, str(tmp_path / "x")], (stages, caplog.text)
    assert stages[0]["best_valid_NDCG10"] == first["best_valid_NDCG10"] and stages[1] == second
    assert "training history stops" not in caplog.text
