"""zoo.soup: weight averages of checkpoints of one model, chosen on validation."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import TINY, _markov_file  # noqa: E402

from zoo.soup import average_state_dicts, check_ingredients, main, make_soup  # noqa: E402
from zoo.train import main as train_main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_average_state_dicts():
    a = {"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([1.0], dtype=torch.float16), "i": torch.tensor([3, 4])}
    b = {"w": torch.tensor([3.0, 6.0]), "h": torch.tensor([2.0], dtype=torch.float16), "i": torch.tensor([3, 4])}
    avg = average_state_dicts([a, b])
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0])) and avg["h"].dtype == torch.float16
    assert float(avg["h"]) == 1.5 and torch.equal(avg["i"], a["i"])
    with pytest.raises(ValueError, match="non-floating tensor 'i' differs"):
        average_state_dicts([a, {**b, "i": torch.tensor([3, 5])}])
    with pytest.raises(ValueError, match="no state dicts"):
        average_state_dicts([])


def test_greedy_keeps_an_ingredient_only_if_the_soup_does_not_drop():
    """Ingredients scored alone, sorted best first; each next one is kept only if the soup's score does not drop.
    Scores here: the mean weight itself (the best soup is the one with the highest average)."""
    sds = {n: {"w": torch.tensor([v])} for n, v in (("a", 5.0), ("b", 9.0), ("c", 1.0), ("d", 8.0))}
    score = lambda sd: float(sd["w"])                                   # noqa: E731
    soup, rows, best = make_soup(sds, score, "greedy")
    assert [(r["path"], r["in_soup"]) for r in rows] == [("b", True), ("d", False), ("a", False), ("c", False)]
    assert best == 9.0 and float(soup["w"]) == 9.0
    sds["d"]["w"] = torch.tensor([9.0])                                  # a tie keeps the ingredient
    soup, rows, best = make_soup(sds, score, "greedy")
    assert [r["path"] for r in rows if r["in_soup"]] == ["b", "d"] and best == 9.0
    soup, rows, best = make_soup(sds, score, "uniform")
    assert all(r["in_soup"] for r in rows) and best == float(soup["w"]) == (5 + 9 + 1 + 9) / 4
    with pytest.raises(ValueError, match="method must be one of"):
        make_soup(sds, score, "best")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny SASRec runs on the same data (different seeds) and a GRU4Rec run."""
    tmp = tmp_path_factory.mktemp("soup")
    data = _markov_file(tmp / "markov.tsv", n_users=60)
    args = ["--data", str(data), "--epochs", "2", "--max-len", "20", "--batch-size", "16", "--lr", "5e-3",
            "--kcore", "0", "--no-progress"]
    for seed in (1, 2):
        train_main(args + ["--model", "sasrec", "--out", str(tmp / f"s{seed}"), "--seed", str(seed),
                           "--set", *TINY["sasrec"]])
    train_main(args + ["--model", "gru4rec", "--out", str(tmp / "g"), "--set", *TINY["gru4rec"]])
    return tmp, data


def test_soup_writes_the_average_and_its_log(runs, capsys):
    """The soup folder loads with from_pretrained; its weights are the mean of the kept ingredients' (each copied
    before scoring: a state_dict() holds the model's own tensors, which scoring overwrites); the log lists every
    ingredient with its validation NDCG@10, and the soup's score is the folder's validation NDCG@10."""
    from transformers import AutoModel

    from zoo.data import leave_one_out, load_dataset
    from zoo.evaluate import align_with_model, evaluate_model

    tmp, data = runs
    out = tmp / "soup"
    log = main(["--models", str(tmp / "s1"), str(tmp / "s2"), "--data", str(data), "--out", str(out), "--kcore", "0",
                "--method", "uniform"])
    assert "uniform soup of 2 of 2 checkpoints" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "item_vocab.json", "model.safetensors",
                                                      "soup_log.json"]
    assert json.loads((out / "soup_log.json").read_text()) == log
    assert [r["in_soup"] for r in log["ingredients"]] == [True, True]
    a, b, soup = (load_file(p / "model.safetensors") for p in (tmp / "s1", tmp / "s2", out))
    assert soup.keys() == a.keys()
    for k in a:
        torch.testing.assert_close(soup[k], (a[k] + b[k]) / 2, atol=1e-7, rtol=0)
    model = AutoModel.from_pretrained(str(out)).eval()
    ds, _ = align_with_model(load_dataset(str(data), kcore=0), model)
    valid = evaluate_model(model, leave_one_out(ds).valid, ks=(10,), progress=False)["NDCG@10"]
    assert valid == pytest.approx(log["valid_NDCG@10"], abs=1e-12)
    own = {r["path"]: r["valid_NDCG@10"] for r in log["ingredients"]}
    for name in ("s1", "s2"):
        m = AutoModel.from_pretrained(str(tmp / name)).eval()
        assert own[str(tmp / name)] == pytest.approx(
            evaluate_model(m, leave_one_out(ds).valid, ks=(10,), progress=False)["NDCG@10"], abs=1e-12)


def test_soup_scores_under_the_protocol_and_the_tie_order_it_is_given(runs, tmp_path):
    """``--exclude-history`` scores every ingredient (and the soup) under LRURec's protocol, as its log says, not the
    RecBole protocol's numbers (which differ on this data: the chain revisits items); ``--time-ties item`` scores on
    the data loaded with ``time_ties="item"``: on a file with same-second ties in reversed file order, not the file
    order's numbers. Either option ignored would pick the soup on another validation than the one recorded."""
    from transformers import AutoModel

    from zoo.data import leave_one_out, load_dataset
    from zoo.evaluate import align_with_model, evaluate_model

    tmp, data = runs
    models = {str(tmp / n): AutoModel.from_pretrained(str(tmp / n)).eval() for n in ("s1", "s2")}

    def ndcg(model, valid, masked=False):
        return evaluate_model(model, valid, ks=(10,), exclude_history=masked, progress=False)["NDCG@10"]

    ds, _ = align_with_model(load_dataset(str(data), kcore=0), models[str(tmp / "s1")])
    valid = leave_one_out(ds).valid
    log = main(["--models", *models, "--data", str(data), "--out", str(tmp_path / "masked"), "--kcore", "0",
                "--method", "uniform", "--exclude-history"])
    assert log["protocol"] == "lrurec (history excluded)"
    for r in log["ingredients"]:
        want, plain = ndcg(models[r["path"]], valid, True), ndcg(models[r["path"]], valid)
        assert abs(want - plain) > 1e-3, "the two protocols agree here: the test shows nothing"
        assert r["valid_NDCG@10"] == pytest.approx(want, abs=1e-12), r["path"]
    soup = AutoModel.from_pretrained(str(tmp_path / "masked")).eval()
    assert log["valid_NDCG@10"] == pytest.approx(ndcg(soup, valid, True), abs=1e-12)

    # the same interactions, timestamps coarsened to 3000 s (several same-second rows per user), rows reversed
    header, *rows = Path(data).read_text().splitlines()
    ties = tmp_path / "ties.tsv"
    ties.write_text("\n".join([header] + [f"{u}\t{i}\t{int(t) // 3000 * 3000}"
                                          for u, i, t in (r.split("\t") for r in reversed(rows))]) + "\n")
    by_item = leave_one_out(align_with_model(load_dataset(str(ties), kcore=0, time_ties="item"),
                                             models[str(tmp / "s1")])[0]).valid
    by_file = leave_one_out(align_with_model(load_dataset(str(ties), kcore=0), models[str(tmp / "s1")])[0]).valid
    log = main(["--models", *models, "--data", str(ties), "--out", str(tmp_path / "ties"), "--kcore", "0",
                "--method", "uniform", "--time-ties", "item"])
    assert log["data_options"]["time_ties"] == "item"
    for r in log["ingredients"]:
        want, other = ndcg(models[r["path"]], by_item), ndcg(models[r["path"]], by_file)
        assert abs(want - other) > 1e-3, "the two tie orders agree here: the test shows nothing"
        assert r["valid_NDCG@10"] == pytest.approx(want, abs=1e-12), r["path"]


def _refused(capsys, match, argv, code=2):
    """``main(argv)`` exits with ``code`` (2: usage error, 1: the run failed) and a message matching ``match``."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == code and re.search(match, err), err


def test_soup_refusals(runs, capsys, tmp_path):
    """Checkpoints of different models or shapes, one checkpoint, an --out that holds files: refused, naming why; an
    --out refused keeps its files."""
    tmp, data = runs
    base = ["--data", str(data), "--kcore", "0"]
    _refused(capsys, "is a gru4rec model, .* a sasrec: a soup averages checkpoints of one model",
             ["--models", str(tmp / "s1"), str(tmp / "g"), "--out", str(tmp_path / "x"), *base], code=1)
    _refused(capsys, "at least two different checkpoints",
             ["--models", str(tmp / "s1"), str(tmp / "s1"), "--out", str(tmp_path / "x"), *base])
    (tmp_path / "graph").mkdir()                      # an export.onnx folder: no config.json
    (tmp_path / "graph" / "state_spec.json").write_text("{}")
    _refused(capsys, "^error: --models .*graph: .*graph/config.json is missing: .*graph is not a saved zoo model "
                     "folder", ["--models", str(tmp / "s1"), str(tmp_path / "graph"), "--out", str(tmp_path / "x"),
                                *base], code=1)
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "f.txt").write_text("mine")
    _refused(capsys, "already holds files .*--overwrite",
             ["--models", str(tmp / "s1"), str(tmp / "s2"), "--out", str(keep), *base])
    assert (keep / "f.txt").read_text() == "mine"


def test_soup_overwrite_replaces_a_model_never_other_files(runs, capsys, tmp_path, monkeypatch):
    """--overwrite replaces an --out that holds a checkpoint; one that holds anything else is refused even so,
    naming those files, and so are the current folder and a folder holding an ingredient."""
    tmp, data = runs
    base = ["--models", str(tmp / "s1"), str(tmp / "s2"), "--data", str(data), "--kcore", "0", "--overwrite"]
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    (keep / "results").mkdir()
    (keep / "config.json").write_text("{}")
    _refused(capsys, r"--out .*keep holds files that are no model checkpoint's \(notes.txt, results\)",
             [*base, "--out", str(keep)])
    assert sorted(p.name for p in keep.iterdir()) == ["config.json", "notes.txt", "results"]
    monkeypatch.chdir(keep)
    _refused(capsys, r"--out \. is the current folder", [*base, "--out", "."])
    _refused(capsys, r"(--data|--models) .* is inside --out", [*base, "--out", str(tmp)])
    assert (keep / "notes.txt").read_text() == "mine"


def test_soup_reads_data_as_its_ingredients_runs_did(runs, capsys, tmp_path):
    """--kcore/--time-ties default to the ingredients' runs' (their logs); ingredients whose runs read their data
    otherwise are refused unless they are given."""
    import shutil

    tmp, data = runs
    log = main(["--models", str(tmp / "s1"), str(tmp / "s2"), "--data", str(data), "--out", str(tmp_path / "a"),
                "--method", "uniform"])
    trained = json.loads((tmp / "s1" / "train_log.json").read_text())["data_options"]
    assert trained["kcore"] in (None, 0, "none") and log["data_options"] == trained
    shutil.copytree(tmp / "s2", tmp_path / "s3")
    other = json.loads((tmp_path / "s3" / "train_log.json").read_text())
    other["data_options"] = {**other["data_options"], "kcore": "auto"}
    (tmp_path / "s3" / "train_log.json").write_text(json.dumps(other))
    _refused(capsys, "--kcore: the ingredients' runs read their data otherwise .*give --kcore",
             ["--models", str(tmp / "s1"), str(tmp_path / "s3"), "--data", str(data), "--out", str(tmp_path / "b")])
    assert not (tmp_path / "b").exists()


def test_soup_refuses_one_checkpoint_spelled_two_ways(runs, capsys, tmp_path, monkeypatch):
    """A, A/, ./A or a link to A are one checkpoint, which the soup would count twice (double weight in a uniform
    soup): refused naming both spellings, before any scoring; --out is not written."""
    tmp, data = runs
    base = ["--data", str(data), "--kcore", "0", "--out", str(tmp_path / "x")]
    link = tmp_path / "link"
    link.symlink_to(tmp / "s1", target_is_directory=True)
    monkeypatch.chdir(tmp)
    for other in (f"{tmp / 's1'}/", "./s1", "s1/.", str(link)):
        _refused(capsys, rf"--models: {re.escape(str(tmp / 's1'))} and {re.escape(other)} are the same checkpoint "
                         rf"\({re.escape(str((tmp / 's1').resolve()))}\)",
                 ["--models", str(tmp / "s1"), str(tmp / "s2"), other, *base])
    _refused(capsys, r"--models: s2 and \./s2 are the same checkpoint", ["--models", "s2", "./s2", *base])
    assert not (tmp_path / "x").exists()


def test_check_ingredients_names_shape_and_vocabulary_differences(runs):
    from transformers import AutoModel

    from zoo.models.sasrec import SASRecConfig, SASRecModel
    from zoo.vocab import ItemVocab

    tmp, _ = runs
    s1 = AutoModel.from_pretrained(str(tmp / "s1"))
    wide = SASRecModel(SASRecConfig(**{**s1.config.to_dict(), "hidden_size": 32, "inner_size": 32}))
    with pytest.raises(ValueError, match="differ in the shape of"):
        check_ingredients([s1, wide], ["s1", "wide"])
    other = AutoModel.from_pretrained(str(tmp / "s2"))
    other.set_item_vocab(ItemVocab(list(reversed(s1.item_vocab.items))))
    with pytest.raises(ValueError, match="different item vocabularies"):
        check_ingredients([s1, other], ["s1", "other"])
    drop = AutoModel.from_pretrained(str(tmp / "s2"))
    drop.config.hidden_dropout = 0.3
    assert check_ingredients([s1, drop], ["s1", "s2"]) == ["s2: hidden_dropout = 0.3 (s1: 0.1); the soup keeps 0.1"]


def test_soup_lineage_shares_common_stages_and_lists_each_later_stage_once(tmp_path):
    """Runs a -> b, then c and d restarted from b, e from c: a soup of (c, d, e, b) shares a and b; c, d, e are
    listed once each, e's own stages are c's and its own; b, which ends the shared stages, has none of its own."""
    from zoo.soup import soup_lineage

    def log(name, init_from=None):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "train_log.json").write_text(json.dumps({
            "command": f"train {name}", "init_from": None if init_from is None else str(tmp_path / init_from)}))
        return folder

    log("a")
    b = log("b", "a")
    c, d, e = log("c", "b"), log("d", "b"), log("e", "c")
    shared, stages, own = soup_lineage([c, d, e, b])
    assert [s["command"] for s in shared] == ["train a", "train b"]
    assert [s["command"] for s in stages] == ["train c", "train d", "train e"]
    assert own == [[0], [1], [0, 2], []]
    shared, stages, own = soup_lineage([c, d])
    assert len(shared) == 2 and own == [[0], [1]]


def test_a_soup_is_carded_with_its_ingredients_and_their_stages(runs, tmp_path, capsys):
    """Two runs restarted from a common run, souped, then carded with ``zoo.hub card``: the card's Training section
    says how the weights were made (the soup's recipe and command), its stages table holds the shared stage, each
    ingredient's own stage and the soup, the ingredients table marks which are in the soup; the card folder's
    ``training_log.json`` keeps them, and a run restarted from the card carries the soup in its history."""
    from zoo import hub

    tmp, data = runs
    args = ["--data", str(data), "--epochs", "1", "--max-len", "20", "--batch-size", "16", "--lr", "1e-3",
            "--kcore", "0", "--no-progress", "--model", "sasrec", "--init-from", str(tmp / "s1")]
    for seed in (3, 4):
        train_main(args + ["--out", str(tmp_path / f"r{seed}"), "--seed", str(seed)])
    soup = tmp_path / "soup"
    log = main(["--models", str(tmp_path / "r3"), str(tmp_path / "r4"), str(tmp / "s1"), "--data", str(data),
                "--out", str(soup), "--kcore", "0", "--method", "uniform"])
    assert [s["command"].split("--out ")[1].split()[0] for s in log["stages"]] == [str(tmp / "s1")]
    assert len(log["ingredient_stages"]) == 2
    assert {r["path"]: r["stages"] for r in log["ingredients"]} == {
        str(tmp_path / "r3"): [0], str(tmp_path / "r4"): [1], str(tmp / "s1"): []}
    card = tmp_path / "card"
    metrics = hub.build_card_folder(str(soup), "tiny-soup", str(data), out_dir=str(card))
    assert 0 <= metrics["NDCG@10"] <= 1
    text = (card / "README.md").read_text()
    assert "Weights: a uniform soup of 3 of 3 checkpoints (`zoo.soup`" in text
    assert f"Command: `{log['command']}`" in text
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ \| `python -m zoo\.", line)]
    assert [r.split("`")[1].split()[2] for r in rows] == ["zoo.train"] * 3 + ["zoo.soup"], rows
    assert f"| {log['init_valid_NDCG10']:.4f} → {log['best_valid_NDCG10']:.4f} |" in rows[-1]
    assert "uniform soup of 3 of 3 checkpoints |" in rows[-1]
    assert f"| `{tmp_path / 'r4'}` |" in text and f"| `{tmp / 's1'}` |" in text and "none after stage 1 |" in text
    stages = json.loads((card / hub.STAGES_FILE).read_text())["stages"]
    assert [s.get("kind") for s in stages] == [None, "soup"] and "stages" not in stages[-1]
    # a run restarted from the card: the soup is one stage of its history, and its table shows it in the middle
    train_main(args[:-1] + [str(card), "--out", str(tmp_path / "after"), "--seed", "5"])
    after = hub.training_stages(tmp_path / "after")
    assert [s.get("kind") for s in after] == [None, "soup", None]
    md = hub._stages_markdown(after)
    assert md.count("\n| ") == (1 + 5) + (1 + 3) and "Ingredients of stage 4" in md, md   # stages, ingredients


def _strict(text: str):
    """``text`` parsed as strict JSON (jq and JSON.parse refuse the NaN/Infinity Python's json accepts)."""
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_a_soups_log_and_card_are_strict_json_and_the_cards_stdout_is_its_metrics_alone(runs, tmp_path, capsys,
                                                                                        monkeypatch):
    """soup_log.json is strict JSON, and a non-finite score (a NaN validation NDCG) fails the soup naming it, with
    nothing written (Python's json wrote ``NaN``, which jq and JSON.parse refuse). ``zoo.hub card`` of the soup prints
    its metrics JSON alone on stdout (``| jq .`` read it): its ``wrote card`` line, notes and re-exports go to
    stderr."""
    from zoo import hub

    tmp, data = runs
    soup = tmp_path / "soup"
    base = ["--models", str(tmp / "s1"), str(tmp / "s2"), "--data", str(data), "--kcore", "0", "--method", "uniform"]
    log = main([*base, "--out", str(soup)])
    assert _strict((soup / "soup_log.json").read_text()) == log
    capsys.readouterr()
    hub.main(["card", "--run", str(soup), "--name", "tiny-soup", "--data", str(data), "--out", str(tmp_path / "card"),
              "--no-progress"])
    said = capsys.readouterr()
    metrics = _strict(said.out)
    assert 0 <= metrics["NDCG@10"] <= 1 and said.out == json.dumps(metrics, indent=1) + "\n"
    assert f"wrote card {tmp_path / 'card'} (README.md" in said.err
    assert _strict((tmp_path / "card" / "eval_results.json").read_text())["metrics"] == metrics
    import zoo.evaluate

    monkeypatch.setattr(zoo.evaluate, "evaluate_model", lambda *a, **k: {"NDCG@10": float("nan")})
    with pytest.raises(SystemExit) as e:
        main([*base, "--out", str(tmp_path / "nan")])
    assert e.value.code == 1 and not (tmp_path / "nan").exists()
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: --out {tmp_path / 'nan'}: not written: soup_log.json ingredients[0].valid_NDCG@10 is nan, which is "
        "not a JSON number (strict JSON has no NaN or Infinity)")


def test_a_soup_without_its_ingredients_history_is_not_carded(runs, tmp_path, capsys):
    """A soup_log.json without the ingredients' stages (written before they were recorded) is refused by name, and
    the card folder is not touched."""
    from zoo import hub

    tmp, data = runs
    soup = tmp_path / "soup"
    main(["--models", str(tmp / "s1"), str(tmp / "s2"), "--data", str(data), "--out", str(soup), "--kcore", "0"])
    log = json.loads((soup / "soup_log.json").read_text())
    del log["ingredient_stages"]
    (soup / "soup_log.json").write_text(json.dumps(log))
    with pytest.raises(ValueError, match="without the ingredients' training history"):
        hub.build_card_folder(str(soup), "tiny-soup", str(data), out_dir=str(tmp_path / "card"))
    assert not (tmp_path / "card").exists()


def test_a_soup_of_sampled_softmax_runs_says_so(tmp_path):
    """The soup log keeps the loss its best ingredient was trained with, so that its card's objective names it."""
    from zoo.hub import _objective

    data = _markov_file(tmp_path / "markov.tsv", n_users=40)
    args = ["--model", "sasrec", "--data", str(data), "--epochs", "1", "--max-len", "20", "--kcore", "0",
            "--no-progress", "--set", *TINY["sasrec"], "--loss", "sampled-softmax", "--negatives", "8"]
    for seed in (1, 2):
        train_main(args + ["--out", str(tmp_path / f"s{seed}"), "--seed", str(seed)])
    log = main(["--models", str(tmp_path / "s1"), str(tmp_path / "s2"), "--data", str(data),
                "--out", str(tmp_path / "soup"), "--kcore", "0"])
    assert log["loss"] == {"type": "sampled-softmax", "negatives": 8, "sampler": "uniform"}
    cfg = json.loads((tmp_path / "soup" / "config.json").read_text())
    assert _objective(cfg, log).startswith("sampled softmax (each target against 8 negatives")


def test_check_ingredients_refuses_a_config_field_that_changes_the_function(runs):
    """Same weight shapes, another activation (or eps, head count, ...): averaging them would give a model neither
    was: refused naming the field. Training-only fields (dropouts) are only noted."""
    from transformers import AutoModel

    tmp, _ = runs
    s1 = AutoModel.from_pretrained(str(tmp / "s1"))
    for field, value in (("hidden_act", "relu"), ("layer_norm_eps", 1e-5), ("num_heads", 1)):
        other = AutoModel.from_pretrained(str(tmp / "s2"))
        setattr(other.config, field, value)
        with pytest.raises(ValueError, match=rf"^s2 and s1 differ in config field {field} \("):
            check_ingredients([s1, other], ["s1", "s2"])
    other = AutoModel.from_pretrained(str(tmp / "s2"))
    other.config.attn_dropout = 0.05
    assert check_ingredients([s1, other], ["s1", "s2"])[0].startswith("s2: attn_dropout = 0.05")


def test_the_soups_recorded_command_quotes_its_arguments(runs, tmp_path):
    import shlex

    tmp, data = runs
    argv = ["--models", str(tmp / "s1"), str(tmp / "s2"), "--data", str(data), "--out", str(tmp_path / "my soup"),
            "--kcore", "0", "--method", "uniform"]
    log = main(argv)
    assert shlex.split(log["command"]) == ["python", "-m", "zoo.soup", *argv]


def test_soup_exit_statuses_device_and_threads(runs, capsys, tmp_path, monkeypatch):
    """A --models entry or a --data that cannot be read fails the run (status 1, one line naming it, no usage), as a
    --model typo does in the other commands; --device cpu scores there and writes the soup a run without it writes, a
    malformed --device is a usage error (2), a CUDA device this machine lacks exits 4; --threads sets torch's
    threads."""
    tmp, data = runs
    base = ["--data", str(data), "--kcore", "0", "--out", str(tmp_path / "x")]
    _refused(capsys, rf"^error: --models {re.escape(str(tmp / 's9'))}: .*neither a local folder",
             ["--models", str(tmp / "s1"), str(tmp / "s9"), *base], code=1)
    _refused(capsys, r"^error: .*interaction file not found: .*nosuch\.tsv",
             ["--models", str(tmp / "s1"), str(tmp / "s2"), *base, "--data", str(tmp_path / "nosuch.tsv")], code=1)
    _refused(capsys, "--device", ["--models", str(tmp / "s1"), str(tmp / "s2"), *base, "--device", "gpu"])
    if not torch.cuda.is_available():
        _refused(capsys, "^error: --device: .*CUDA is not available[^\\n]*\\n$",
                 ["--models", str(tmp / "s1"), str(tmp / "s2"), *base, "--device", "cuda"], code=4)
    assert not (tmp_path / "x").exists()
    args = ["--models", str(tmp / "s1"), str(tmp / "s2"), "--data", str(data), "--kcore", "0", "--method", "uniform"]
    want = main(args + ["--out", str(tmp_path / "a")])
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    got = main(args + ["--out", str(tmp_path / "b"), "--device", "cpu", "--threads", "1"])
    assert calls == [1] and got["valid_NDCG@10"] == want["valid_NDCG@10"]
    weights = [load_file(tmp_path / name / "model.safetensors") for name in ("a", "b")]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
