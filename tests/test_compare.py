"""Paired comparison of two models: ``zoo.evaluate --ranks-out`` files, ``zoo.metrics.paired_bootstrap`` and
``python -m zoo.compare``."""

import csv
import json

import numpy as np
import pytest
import torch

from test_evaluate import exits
from zoo.compare import main as compare_main
from zoo.compare import read_ranks
from zoo.evaluate import main as evaluate_main
from zoo.metrics import compute_metrics, paired_bootstrap
from zoo.models import MODELS
from zoo.vocab import ItemVocab


def test_paired_bootstrap_against_closed_forms():
    """The observed difference is the difference of the means; the interval's width is the normal one from the
    per-user differences' standard error (within 10%); identical models give 0, [0, 0], p = 1; a model better for
    every user gives p below 1/n_boot."""
    rng = np.random.default_rng(0)
    a = rng.integers(1, 40, 3000)
    b = np.maximum(1, a + rng.integers(-6, 5, 3000))
    res = paired_bootstrap(a, b, ks=(10,), n_boot=4000, seed=1)["NDCG@10"]
    ma, mb = compute_metrics(a, (10,))["NDCG@10"], compute_metrics(b, (10,))["NDCG@10"]
    assert res["a"] == pytest.approx(ma) and res["b"] == pytest.approx(mb) and res["diff"] == pytest.approx(mb - ma)
    d = np.where(b <= 10, 1 / np.log2(b + 1), 0) - np.where(a <= 10, 1 / np.log2(a + 1), 0)
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert (res["ci_high"] - res["ci_low"]) == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert res["ci_low"] < res["diff"] < res["ci_high"]
    same = paired_bootstrap(a, a, ks=(5, 10), n_boot=200)
    assert all(v["diff"] == 0 and v["ci_low"] == v["ci_high"] == 0 and v["p"] == 1 for v in same.values())
    better = paired_bootstrap(a + 5, a, ks=(10,), metrics=("MRR",), n_boot=500)["MRR@10"]
    assert better["p"] < 1 / 500 and better["ci_low"] > 0
    with pytest.raises(ValueError, match="same, non-zero number of examples"):
        paired_bootstrap(a, a[:-1])
    with pytest.raises(ValueError, match="n_boot must be >= 100"):
        paired_bootstrap(a, a, n_boot=10)


def _toy(tmp_path, n_users=40):
    rng = np.random.default_rng(3)
    items = [str(1000 + i) for i in range(1, 30)]
    lines = ["user_id\titem_id\ttimestamp"]
    for u in range(n_users):
        for t, x in enumerate(rng.choice(items, size=int(rng.integers(4, 15)))):
            lines.append(f"{u}\t{x}\t{t}")
    (tmp_path / "toy.tsv").write_text("\n".join(lines) + "\n")
    return items, str(tmp_path / "toy.tsv")


def _lru(items, seed, path):
    cfg_cls, cls = MODELS["lrurec"]
    torch.manual_seed(seed)
    model = cls(cfg_cls(n_items=len(items) + 1, hidden_size=16, max_seq_length=10))
    model.set_item_vocab(ItemVocab(items))
    model.save_pretrained(path)
    return model


def test_ranks_out_and_compare(tmp_path, capsys):
    """--ranks-out holds every user's target (the data's own id) and rank, from which the printed metrics follow; the
    comparison of A with itself is 0 everywhere; A against B gives the difference of the two evaluations' metrics."""
    items, data = _toy(tmp_path)
    for name, seed in (("a", 0), ("b", 1)):
        _lru(items, seed, tmp_path / name)
    common = ["--data", data, "--kcore", "none", "--no-progress", "--ks", "5", "10"]
    res = {n: evaluate_main(["--model", str(tmp_path / n), *common, "--ranks-out", str(tmp_path / f"{n}.csv")])
           for n in "ab"}
    meta, users, targets, ranks = read_ranks(tmp_path / "a.csv")
    assert meta["split"] == "test" and meta["protocol"] == "recbole" and meta["max_rank"] is None
    assert users == [str(u) for u in range(40)] and set(targets) <= set(items)
    assert compute_metrics(ranks, (5, 10)) == pytest.approx(res["a"]["metrics"])
    capsys.readouterr()
    same = compare_main([str(tmp_path / "a.csv"), str(tmp_path / "a.csv"), "--bootstrap", "200"])
    assert all(m["diff"] == 0 and m["p"] == 1 for m in same["metrics"].values())
    out = compare_main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--ks", "10", "5", "--bootstrap", "300",
                        "--json", str(tmp_path / "c.json")])
    for name, m in out["metrics"].items():
        assert m["diff"] == pytest.approx(res["b"]["metrics"][name] - res["a"]["metrics"][name])
    text = capsys.readouterr().out
    assert "paired bootstrap over users, 300 resamples" in text and "NDCG@10" in text and "95% interval" in text
    assert json.loads((tmp_path / "c.json").read_text())["n_users"] == 40


def test_compare_refuses_what_is_not_a_paired_comparison(tmp_path, capsys):
    """Another split or protocol, other users or targets, and a file that is not a --ranks-out file fail the run
    (exit 1), a cut-off above a top-K-only graph's K is a usage error (exit 2), each naming the problem."""
    from export.onnx import export_model

    items, data = _toy(tmp_path)
    model = _lru(items, 0, tmp_path / "m")
    common = ["--data", data, "--kcore", "none", "--no-progress", "--ks", "5"]
    files = {"test": [], "valid": ["--split", "valid"], "lrurec": ["--exclude-history"], "head": ["--max-users", "30"]}
    for name, extra in files.items():
        evaluate_main(["--model", str(tmp_path / "m"), *common, *extra, "--ranks-out", str(tmp_path / f"{name}.csv")])
    export_model(model, tmp_path / "g", topk=10, verify=False)
    evaluate_main(["--onnx", str(tmp_path / "g"), *common, "--ranks-out", str(tmp_path / "graph.csv")])
    assert read_ranks(tmp_path / "graph.csv")[0]["max_rank"] == 10
    # a changed target: same users, another held-out item for the first one
    rows = (tmp_path / "test.csv").read_text().splitlines()
    first = next(csv.reader([rows[2]]))
    other = next(x for x in items if x != first[1])
    (tmp_path / "moved.csv").write_text("\n".join([*rows[:2], ",".join([first[0], other, *first[2:]]), *rows[3:]])
                                        + "\n")
    (tmp_path / "plain.csv").write_text("user,target,rank\n1,2,3\n")
    (tmp_path / "bad.csv").write_text("\n".join([*rows[:3], "7,1005,zero"]) + "\n")
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00garbage")
    for b, extra, code, message in (
            ("valid", [], 1, "A and B differ in split ('test' vs 'valid')"),
            ("lrurec", [], 1, "A and B differ in protocol ('recbole' vs 'lrurec')"),
            ("head", [], 1, "A has 40 users, B 30"),
            ("moved", [], 1, f"user {first[0]}: target {first[1]} in A, {other} in B"),
            ("graph", ["--ks", "20"], 2, "--ks 20: a file holds ranks censored above 10 (a top-10 graph without "
                                         "scores)"),
            ("plain", [], 1, "not a zoo.evaluate --ranks-out file"),
            ("binary", [], 1, f"{tmp_path / 'binary.csv'}: not a zoo.evaluate --ranks-out file (not UTF-8 text)"),
            ("bad", [], 1, "bad.csv, line 4: expected user,target,rank,history,target_count with a rank (and a "
                           "history length) >= 1 and a target count >= 0")):
        exits(capsys, [str(tmp_path / "test.csv"), str(tmp_path / f"{b}.csv"), "--bootstrap", "100", *extra], code,
              message, run=compare_main)
    with pytest.raises(SystemExit) as e:                      # was numpy's "expected non-negative integer"
        compare_main([str(tmp_path / "test.csv"), str(tmp_path / "test.csv"), "--seed", "-1"])
    assert e.value.code == 2 and "argument --seed: expected an int >= 0, got '-1'" in capsys.readouterr().err
    ok = compare_main([str(tmp_path / "test.csv"), str(tmp_path / "graph.csv"), "--ks", "5", "10", "--bootstrap", "100"])
    assert ok["metrics"]["HR@10"]["diff"] == pytest.approx(0, abs=1e-9)     # the graph ranks as the model does
    capsys.readouterr()
    # the same users with another held-out item for one of them (e.g. another order of ties): paired on request
    moved = compare_main([str(tmp_path / "test.csv"), str(tmp_path / "moved.csv"), "--ks", "5", "--bootstrap", "100",
                          "--other-targets"])
    assert moved["targets_differ"] == 1 and moved["n_users"] == 40
    assert "100 resamples (seed 0); the held-out items differ for 1 of them" in capsys.readouterr().out
    assert moved["metrics"]["HR@5"]["diff"] == pytest.approx(0, abs=1e-9)     # the ranks were kept, only the id moved


def test_compare_refuses_impossible_ranks_files_naming_the_line(tmp_path, capsys):
    """A rank above what the file's header allows (n_items + 1 for a full ranking, max_rank + 1 for a top-K graph), a
    user listed twice, and a header that is not zoo.evaluate's (not an object, lacking its keys, a max_rank that is no
    int) fail the run (exit 1) naming the file and the line; they were accepted (or AttributeError/KeyError/
    TypeError)."""
    head = "# zoo.evaluate ranks "
    meta = {"model": "m", "split": "test", "protocol": "recbole", "max_rank": None, "n_items": 30}
    ok = tmp_path / "ok.csv"
    ok.write_text(head + json.dumps(meta) + "\nuser,target,rank\n1,5,1\n2,6,31\n")
    assert read_ranks(ok)[3].tolist() == [1, 31]                    # a masked target ranks behind the padding row
    files = {
        "big": (head + json.dumps(meta) + "\nuser,target,rank\n1,5,1\n2,6,99999999\n",
                "big.csv, line 4: rank 99999999 is above the largest possible, 31 = the file's n_items 30 + 1"),
        "cap": (head + json.dumps({**meta, "max_rank": 5}) + "\nuser,target,rank\n1,5,6\n2,6,30\n",
                "cap.csv, line 4: rank 30 is above the largest possible, 6 = the file's max_rank 5 + 1"),
        "dup": (head + json.dumps(meta) + "\nuser,target,rank\n1,5,1\n2,6,3\n1,5,1\n",
                "dup.csv, line 5: user 1 again (first on line 3)"),
        "list": (head + "[]\nuser,target,rank\n1,5,1\n", "list.csv, line 1: the header should be a JSON object"),
        "empty": (head + "{}\nuser,target,rank\n1,5,1\n", "empty.csv, line 1: the header lacks model, split, protocol"),
        "str": (head + json.dumps({**meta, "max_rank": "10"}) + "\nuser,target,rank\n1,5,1\n",
                "str.csv, line 1: max_rank should be an int >= 1 or null, got '10'"),
        "sup": (head + json.dumps(meta) + "\nuser,target,rank\n1,5,³\n", "sup.csv, line 3: expected user,target,rank")}
    for name, (text, message) in files.items():
        (tmp_path / f"{name}.csv").write_text(text)
        exits(capsys, [str(ok), str(tmp_path / f"{name}.csv"), "--bootstrap", "100"], 1, message, run=compare_main)


def test_compare_refuses_outputs_it_cannot_write_before_any_work(tmp_path, capsys):
    """--json naming an input (it would replace the ranks file), a folder, or a path under a file is a usage error
    before the comparison, and the input is left as it was."""
    head = "# zoo.evaluate ranks " + json.dumps({"model": "m", "split": "test", "protocol": "recbole"})
    a = tmp_path / "a.csv"
    a.write_text(head + "\nuser,target,rank\n1,5,1\n2,6,3\n")
    before = a.read_text()
    (tmp_path / "afile").write_text("")
    for out, message in ((a, "--json " + str(a) + " is the input A: writing it would replace that file"),
                         (tmp_path, f"--json {tmp_path} is a folder"),
                         (tmp_path / "afile" / "c.json", f"{tmp_path / 'afile'} is a file, not a folder")):
        with pytest.raises(SystemExit) as e:
            compare_main([str(a), str(a), "--bootstrap", "100", "--json", str(out)])
        err = capsys.readouterr()
        assert e.value.code == 2 and message in err.err and "paired bootstrap" not in err.out, (out, err)
    assert a.read_text() == before


def test_compare_names_the_input_it_cannot_read(tmp_path, capsys):
    """A ranks file that is missing, or a folder, fails the run (exit 1) naming the argument and the path, as the other
    commands do (it printed a raw "[Errno 2] No such file or directory: 'nosuch.csv'")."""
    ok = _ranks_file(tmp_path / "ok.csv", [(1, 5, 1), (2, 6, 3)])
    missing = str(tmp_path / "nosuch.csv")
    for argv, message in (([missing, ok], f"A {missing}: cannot read it (No such file or directory)"),
                          ([ok, missing], f"B {missing}: cannot read it (No such file or directory)"),
                          ([ok, str(tmp_path)], f"B {tmp_path}: cannot read it (Is a directory)")):
        said = exits(capsys, argv + ["--bootstrap", "100"], 1, f"python -m zoo.compare: error: {message}",
                     run=compare_main)
        assert "Errno" not in said


def test_compare_json_dash_is_stdout(tmp_path, capsys, monkeypatch):
    """--json -: the comparison as JSON on stdout, the tables on stderr, and no file named "-" (one was created)."""
    monkeypatch.chdir(tmp_path)
    ok = _ranks_file(tmp_path / "ok.csv", [(1, 5, 1), (2, 6, 3), (3, 7, 12)])
    res = compare_main([ok, ok, "--bootstrap", "100", "--json", "-"])
    said = capsys.readouterr()
    assert json.loads(said.out) == json.loads(json.dumps(res))
    assert "paired bootstrap over users" in said.err and "HR@10" in said.err
    assert not (tmp_path / "-").exists()


def _strict(text: str):
    """``text`` parsed as strict JSON (``NaN``/``Infinity``, which Python's json reads and writes by default, refused
    as jq and JavaScript's JSON.parse refuse them)."""
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_compare_json_is_strict_and_a_non_finite_number_is_refused_naming_it(tmp_path, capsys, monkeypatch):
    """--json wrote Python's NaN/Infinity, which is not JSON (jq and JSON.parse refuse it), and on stdout ``json.dump``
    streamed the document, stopping at a bad number with its first part written. The document is strict JSON; a
    non-finite number in it fails the run (exit 1) naming where it is, with nothing on stdout and the --json file
    left as it was."""
    import zoo.compare

    monkeypatch.chdir(tmp_path)
    ok = _ranks_file(tmp_path / "ok.csv", [(1, 5, 1), (2, 6, 3), (3, 7, 12)])
    compare_main([ok, ok, "--bootstrap", "100", "--json", "c.json"])
    assert _strict((tmp_path / "c.json").read_text())["n_users"] == 3
    before = (tmp_path / "c.json").read_bytes()
    real = zoo.compare.compare

    def non_finite(*a, **k):
        result = real(*a, **k)
        result["metrics"]["HR@10"]["p_value"] = float("nan")
        return result

    monkeypatch.setattr(zoo.compare, "compare", non_finite)
    capsys.readouterr()
    for out in ("-", "c.json"):
        with pytest.raises(SystemExit) as e:
            compare_main([ok, ok, "--bootstrap", "100", "--json", out])
        said = capsys.readouterr()
        assert e.value.code == 1 and said.out == "", (e.value.code, said.out)
        assert said.err.splitlines()[-1] == (f"python -m zoo.compare: error: --json {out}: not written: "
                                             "metrics.HR@10.p_value is nan, which is not a JSON number (strict JSON "
                                             "has no NaN or Infinity)"), said.err
    assert (tmp_path / "c.json").read_bytes() == before


def _paired_table():
    """``bench/paired_table.py`` (a script, not a package module) loaded as a module."""
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location("paired_table", os.path.join(os.path.dirname(__file__), "..",
                                                                                 "bench", "paired_table.py"))
    paired = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paired)
    return paired


def test_paired_table_measures_the_pairs_and_rewrites_only_the_marked_table(tmp_path, capsys):
    """``bench/paired_table.py`` evaluates each card with the data options its eval_results.json records, prints a - b
    (= zoo.compare's B - A with the files swapped) and, with --update, replaces only the text between the markers;
    a file without the markers is refused, before any evaluation, and left as it was; a cached ranks file of the card is re-used."""
    import os

    paired = _paired_table()
    items, data = _toy(tmp_path)
    cards = tmp_path / "cards"
    for name, seed in (("x-ml1m", 0), ("y-ml1m", 1)):
        _lru(items, seed, cards / name)
        (cards / name / "eval_results.json").write_text(json.dumps({"data_options": {"kcore": None}}))
    readme = tmp_path / "README.md"
    readme.write_text(f"head\n{paired.BEGIN}\nold table\n{paired.END}\ntail\n")
    argv = ["--data", data, "--cards", str(cards), "--pairs", "recbole:x-ml1m:y-ml1m", "lrurec:y-ml1m:x-ml1m",
            "--ranks-dir", str(tmp_path / "ranks"), "--bootstrap", "200"]
    block = paired.main([*argv, "--update", str(readme)])
    ref = compare_main([str(tmp_path / "ranks" / "y-ml1m.recbole.csv"), str(tmp_path / "ranks" / "x-ml1m.recbole.csv"),
                        "--ks", "10", "--bootstrap", "200"])["metrics"]["HR@10"]
    row = next(line for line in block.splitlines() if line.startswith("| x − y | RecBole"))
    assert row.split(" | ")[2] == (f"{paired.signed(ref['diff'])} [{paired.signed(ref['ci_low'])}, "
                                   f"{paired.signed(ref['ci_high'])}]")
    assert "| y − x | LRURec |" in block and "over the 40 test users, 200 resamples" in block
    for card in ("x-ml1m", "y-ml1m"):                 # each file measured under the protocol it is named after
        for protocol in ("recbole", "lrurec"):
            assert read_ranks(tmp_path / "ranks" / f"{card}.{protocol}.csv")[0]["protocol"] == protocol
    text = readme.read_text()
    assert text.startswith(f"head\n{paired.BEGIN}\n") and text.endswith(f"{paired.END}\ntail\n")
    assert "old table" not in text and row in text
    mtime = os.path.getmtime(tmp_path / "ranks" / "x-ml1m.lrurec.csv")
    capsys.readouterr()
    paired.main(argv)
    assert "evaluated" not in capsys.readouterr().err
    assert os.path.getmtime(tmp_path / "ranks" / "x-ml1m.lrurec.csv") == mtime
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    os.remove(tmp_path / "ranks" / "x-ml1m.lrurec.csv")
    with pytest.raises(SystemExit, match="paired-table:begin"):
        paired.main([*argv, "--update", str(plain)])
    assert plain.read_text() == "no markers\n"
    assert not (tmp_path / "ranks" / "x-ml1m.lrurec.csv").exists()      # refused before any evaluation


def test_paired_table_evaluates_a_recarded_card_and_other_data_again(tmp_path, capsys):
    """A cached ranks file is re-used only when it is of the same --data and newer than the card's weights: the card
    whose weights were replaced after it (a re-card) is evaluated again, the other one is not, and another data file
    evaluates both; a README whose end marker comes before its begin marker is refused, before any evaluation."""
    import os
    import shutil

    paired = _paired_table()
    items, data = _toy(tmp_path)
    cards, ranks = tmp_path / "cards", tmp_path / "ranks"
    for name, seed in (("x-ml1m", 0), ("y-ml1m", 1)):
        _lru(items, seed, cards / name)
        (cards / name / "eval_results.json").write_text(json.dumps({"data_options": {"kcore": None}}))
    argv = ["--cards", str(cards), "--pairs", "lrurec:x-ml1m:y-ml1m", "--ranks-dir", str(ranks), "--bootstrap", "100"]

    def evaluated(data_file):
        capsys.readouterr()
        paired.main(["--data", data_file, *argv])
        return sorted(line.split()[2] for line in capsys.readouterr().err.splitlines() if "evaluated" in line)

    assert evaluated(data) == ["x-ml1m", "y-ml1m"]
    assert evaluated(data) == []
    later = os.path.getmtime(ranks / "x-ml1m.lrurec.csv") + 60
    os.utime(cards / "x-ml1m" / "model.safetensors", (later, later))          # x re-carded after its ranks file
    assert evaluated(data) == ["x-ml1m"]
    other = shutil.copy(data, tmp_path / "other.tsv")
    assert evaluated(str(other)) == ["x-ml1m", "y-ml1m"]
    assert read_ranks(ranks / "y-ml1m.lrurec.csv")[0]["data"] == os.path.abspath(other)
    readme = tmp_path / "README.md"
    readme.write_text(f"{paired.END}\nold\n{paired.BEGIN}\n")
    shutil.rmtree(ranks)
    with pytest.raises(SystemExit, match=f"needs one {paired.BEGIN} followed by one {paired.END}"):
        paired.main(["--data", data, *argv, "--update", str(readme)])
    assert readme.read_text() == f"{paired.END}\nold\n{paired.BEGIN}\n" and not ranks.exists()


def test_paired_table_p_values_keep_their_digits():
    """A p between the bootstrap's floor and 0.001 keeps its digits (it printed ``0.000``); below the floor it is
    ``<1e-4`` for 10,000 resamples."""
    paired = _paired_table()
    got = [paired.fmt_p(p, 10_000) for p in (0.00005, 0.0002, 0.004, 0.0043, 0.05, 0.44)]
    assert got == ["<1e-4", "0.0002", "0.004", "0.0043", "0.05", "0.44"]
    assert paired.fmt_p(0.0005, 1_000) == "<1e-3"


# ------------------------------------------------------------------ mutation audit, round 6 (B): guards found missing
def _ranks_file(path, rows, **meta):
    head = {"model": path.stem, "split": "test", "protocol": "recbole", "max_rank": None, "n_items": 50, **meta}
    path.write_text("# zoo.evaluate ranks " + json.dumps(head) + "\nuser,target,rank\n"
                    + "".join(f"{u},{t},{r}\n" for u, t, r in rows))
    return str(path)


def test_compare_refuses_rank_zero_bad_caps_other_orders_and_empty_files(tmp_path, capsys):
    """Errors naming the problem, each of which was accepted or another error: a rank 0 (ranks are 1-based), a
    max_rank or n_items of 0 or true (a bool is not an int), the same users in another order (pairing row by row
    would compare different users), a file without rows (exit 1), and fewer than 100 resamples (a usage error)."""
    ok = _ranks_file(tmp_path / "ok.csv", [(1, 5, 1), (2, 6, 3)])
    files = {
        "zero": ([(1, 5, 1), (2, 6, 0)], {}, "zero.csv, line 4: expected user,target,rank with a rank (and a history "
                                             "length) >= 1, got ['2', '6', '0']"),
        "cap0": ([(1, 5, 1), (2, 6, 3)], {"max_rank": 0}, "cap0.csv, line 1: max_rank should be an int >= 1 or null, "
                                                         "got 0"),
        "items0": ([(1, 5, 1), (2, 6, 3)], {"n_items": 0}, "items0.csv, line 1: n_items should be an int >= 1 or "
                                                          "null, got 0"),
        "captrue": ([(1, 5, 1), (2, 6, 3)], {"max_rank": True}, "captrue.csv, line 1: max_rank should be an int >= 1 "
                                                               "or null, got True"),
        "order": ([(2, 6, 3), (1, 5, 1)], {}, "A has 2 users, B 2; the same users in another order"),
        "empty": ([], {}, "empty.csv: no examples")}
    for name, (rows, meta, message) in files.items():
        b = _ranks_file(tmp_path / f"{name}.csv", rows, **meta)
        exits(capsys, [ok, b, "--bootstrap", "100"], 1, message, run=compare_main)
    with pytest.raises(SystemExit) as e:
        compare_main([ok, ok, "--bootstrap", "50"])
    assert e.value.code == 2 and "argument --bootstrap: expected an int >= 100, got '50'" in capsys.readouterr().err


def test_compare_cutoff_is_checked_against_the_smaller_top_k(tmp_path, capsys):
    """Two top-K-only graphs (K = 5 and 10): a cut-off of 10 is above the first one's K, whose misses were written as
    6 (only the larger K was checked, so HR@10 of the top-5 graph counted its misses as non-hits silently)."""
    rows = [(1, 5, 1), (2, 6, 3)]
    a = _ranks_file(tmp_path / "a.csv", rows, max_rank=5)
    b = _ranks_file(tmp_path / "b.csv", rows, max_rank=10)
    for x, y in ((a, b), (b, a)):
        exits(capsys, [x, y, "--ks", "10", "--bootstrap", "100"], 2, "--ks 10: a file holds ranks censored above 5",
              run=compare_main)
    assert set(compare_main([a, b, "--ks", "5", "--bootstrap", "100"])["metrics"]) == {"HR@5", "NDCG@5", "MRR@5"}


def test_compare_cutoff_is_checked_against_the_items_ranked(tmp_path, capsys):
    """A cut-off above a file's n_items (the items each target was ranked among) counts every target a hit (HR@K = 1):
    refused as zoo.evaluate refuses it, naming the smaller catalogue; K = n_items is still a cut-off."""
    rows = [(1, 5, 1), (2, 6, 30), (3, 7, 50)]
    a = _ranks_file(tmp_path / "a.csv", rows, n_items=50)
    b = _ranks_file(tmp_path / "b.csv", rows, n_items=101)        # e.g. a --sampled uni100 protocol
    for x, y, name in ((a, b, "A"), (b, a, "B")):
        exits(capsys, [x, y, "--ks", "10", "60", "--bootstrap", "100"], 2,
              f"--ks 60: {name} ranks 50 items (its n_items); use cut-offs <= 50", run=compare_main)
    assert compare_main([a, a, "--ks", "50", "--bootstrap", "100"])["metrics"]["HR@50"]["a"] == 1.0
    older = _ranks_file(tmp_path / "older.csv", rows, n_items=None)   # no n_items in the header: nothing to check
    assert "HR@60" in compare_main([older, older, "--ks", "60", "--bootstrap", "100"])["metrics"]


def test_compare_uses_the_seed_and_confidence_it_is_given(tmp_path, capsys):
    """``--seed`` / ``seed`` and ``confidence`` reach the bootstrap: the result is paired_bootstrap's with them (a fixed
    seed 0 or confidence 0.95 was used instead), and another seed moves the interval."""
    from zoo.compare import compare

    rng = np.random.default_rng(4)
    ra, rb = rng.integers(1, 30, 200), rng.integers(1, 30, 200)
    a = _ranks_file(tmp_path / "a.csv", [(u, 1, r) for u, r in enumerate(ra)])
    b = _ranks_file(tmp_path / "b.csv", [(u, 1, r) for u, r in enumerate(rb)])
    got = compare_main([a, b, "--seed", "7", "--bootstrap", "300"])
    assert got["seed"] == 7
    assert got["metrics"] == paired_bootstrap(ra, rb, ks=(10, 20), n_boot=300, seed=7)
    assert got["metrics"] != paired_bootstrap(ra, rb, ks=(10, 20), n_boot=300, seed=0)
    half = compare(a, b, ks=(10,), n_boot=300, seed=1, confidence=0.5)
    assert half["confidence"] == 0.5
    assert half["metrics"] == paired_bootstrap(ra, rb, ks=(10,), n_boot=300, seed=1, confidence=0.5)
    wide = paired_bootstrap(ra, rb, ks=(10,), n_boot=300, seed=1)["HR@10"]
    assert half["metrics"]["HR@10"]["ci_high"] - half["metrics"]["HR@10"]["ci_low"] < wide["ci_high"] - wide["ci_low"]


def _two_ranks_files(tmp_path):
    """Two random LRURec models evaluated on the toy data with ``--ranks-out`` into ``a.csv`` and ``b.csv``: ``(data,
    targets, ranks of a, ranks of b, a's optional columns)``."""
    from zoo.compare import _read

    items, data = _toy(tmp_path)
    for name, seed in (("a", 0), ("b", 1)):
        _lru(items, seed, tmp_path / name)
        evaluate_main(["--model", str(tmp_path / name), "--data", data, "--kcore", "none", "--no-progress", "--ks",
                       "5", "--ranks-out", str(tmp_path / f"{name}.csv")])
    _, _, targets, ranks_a, cols = _read(tmp_path / "a.csv")
    return data, targets, ranks_a, _read(tmp_path / "b.csv")[3], cols


def test_compare_by_target_popularity(tmp_path, capsys):
    """--by-popularity pairs the users of each bucket of their target's training count (the ranks files'
    target_count column, the count in the leave-one-out training sequences); a file without the column (written
    before it existed) or with other counts is refused, naming why."""
    from zoo.data import item_counts, leave_one_out, load_dataset

    data, targets, ranks_a, ranks_b, cols = _two_ranks_files(tmp_path)
    ds = load_dataset(data, kcore=None)
    split = leave_one_out(ds)
    want_counts = item_counts(split.train, ds.vocab.n_items)[np.asarray(split.test.targets)]
    assert cols["target_count"].tolist() == want_counts.tolist() and targets == [str(t) for t in
                                                                                 ds.vocab.decode(split.test.targets)]
    res = compare_main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--ks", "5", "--bootstrap", "200",
                        "--by-popularity", "8", "12"])
    buckets = res["by_popularity"]
    assert [b["counts"] for b in buckets] == [[0, 8], [9, 12], [13, None]] and sum(b["users"] for b in buckets) == 40
    for b in buckets:
        low, high = b["counts"]
        inside = (want_counts >= low) & (want_counts <= (high or 10**9))
        want = paired_bootstrap(ranks_a[inside], ranks_b[inside], ks=(5,), n_boot=200, seed=0)
        assert b["users"] == int(inside.sum()) and (b["metrics"] == want if inside.any() else b["metrics"] is None)
    assert "target's training count 0-8:" in capsys.readouterr().out
    rows = (tmp_path / "b.csv").read_text().splitlines()
    (tmp_path / "older.csv").write_text("\n".join([rows[0], "user,target,rank,history"]
                                                  + [",".join(r.split(",")[:4]) for r in rows[2:]]) + "\n")
    assert compare_main([str(tmp_path / "a.csv"), str(tmp_path / "older.csv"), "--ks", "5", "--bootstrap", "100",
                         "--by-length", "6"])["by_length"]                      # a file with history still pairs by it
    first = rows[2].split(",")
    (tmp_path / "more.csv").write_text("\n".join(rows[:2] + [",".join(first[:4] + [str(int(first[4]) + 1)])]
                                                 + rows[3:]) + "\n")
    # an option the file cannot honour is a usage error (2), files of other data fail the run (1)
    for other, code, message in (("older", 2, "--by-popularity: B has no target_count column (a ranks file from "
                                              "before it existed)"),
                                 ("more", 1, f"--by-popularity: user {first[0]} has a target with a training count "
                                             f"of {first[4]} in A")):
        exits(capsys, [str(tmp_path / "a.csv"), str(tmp_path / f"{other}.csv"), "--ks", "5", "--bootstrap", "100",
                       "--by-popularity", "6"], code, message, run=compare_main)


def test_compare_by_popularity_rows_count_their_distinct_targets(tmp_path, capsys):
    """Each ``by_popularity`` row holds ``items``, the distinct held-out items of its users, as zoo.evaluate's rows of
    the same buckets do (the rows had only counts, users and metrics), in the JSON written and in the printed
    bucket line; with --other-targets the items of A and B are counted together."""
    data, _, _, _, _ = _two_ranks_files(tmp_path)
    own = evaluate_main(["--model", str(tmp_path / "a"), "--data", data, "--kcore", "none", "--no-progress", "--ks",
                         "5", "--by-popularity", "8", "12"])["by_popularity"]
    res = compare_main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--ks", "5", "--bootstrap", "100",
                        "--by-popularity", "8", "12", "--json", str(tmp_path / "c.json")])
    rows = res["by_popularity"]
    assert [list(r) for r in rows] == [list(r) for r in own] == [["counts", "users", "items", "metrics"]] * 3
    assert [(r["counts"], r["users"], r["items"]) for r in rows] == [(r["counts"], r["users"], r["items"])
                                                                    for r in own]
    assert any(r["items"] < r["users"] for r in rows)                 # distinct items, not users
    assert json.loads((tmp_path / "c.json").read_text())["by_popularity"] == rows
    printed = capsys.readouterr().out
    for r in rows:
        assert f": {r['users']:,} users, {r['items']:,} distinct targets\n" in printed
    by_length = compare_main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--ks", "5", "--bootstrap", "100",
                              "--by-length", "6"])["by_length"]
    assert list(by_length[0]) == ["lengths", "users", "metrics"]       # as zoo.evaluate's by_length rows
    assert "distinct targets" not in capsys.readouterr().out
    # hand-made: users 1-3 in the bucket 0-5, users 4-5 above; B's user 2 has another target of the same count
    a = [(1, 7, 1, 4, 2), (2, 7, 2, 4, 2), (3, 8, 3, 4, 5), (4, 9, 1, 4, 9), (5, 9, 4, 4, 9)]
    b = [(1, 7, 2, 4, 2), (2, 6, 1, 4, 2), (3, 8, 3, 4, 5), (4, 9, 2, 4, 9), (5, 9, 1, 4, 9)]
    files = []
    for name, rows in (("ha", a), ("hb", b)):
        path = tmp_path / f"{name}.csv"
        path.write_text("# zoo.evaluate ranks " + json.dumps({"model": name, "split": "test", "protocol": "recbole"})
                        + "\nuser,target,rank,history,target_count\n" + "".join(",".join(map(str, r)) + "\n"
                                                                               for r in rows))
        files.append(str(path))
    rows = compare_main([*files, "--ks", "5", "--bootstrap", "100", "--other-targets", "--by-popularity", "5"])
    assert [(r["counts"], r["users"], r["items"]) for r in rows["by_popularity"]] == [([0, 5], 3, 3),
                                                                                      ([6, None], 2, 1)]


def test_compare_by_history_length(tmp_path, capsys):
    """--by-length pairs the users of each history-length bucket (the ranks files' history column, each user's whole
    history): every bucket's numbers are the paired bootstrap of its users alone; files without the column (written
    before it existed) or with other history lengths are refused, naming why."""
    data, _, ranks_a, ranks_b, cols = _two_ranks_files(tmp_path)
    history = cols["history"]
    from zoo.data import leave_one_out, load_dataset

    ds = load_dataset(data, kcore=None)
    assert history.tolist() == [len(h) for h in leave_one_out(ds).test.histories]      # the whole history
    res = compare_main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--ks", "5", "--bootstrap", "200",
                        "--by-length", "6", "10"])
    buckets = res["by_length"]
    assert [b["lengths"] for b in buckets] == [[1, 6], [7, 10], [11, None]]
    assert sum(b["users"] for b in buckets) == 40
    for b in buckets:
        low, high = b["lengths"]
        inside = (history >= low) & (history <= (high or 10**9))
        assert b["users"] == int(inside.sum())
        want = paired_bootstrap(ranks_a[inside], ranks_b[inside], ks=(5,), n_boot=200, seed=0)
        assert b["metrics"] == want if inside.any() else b["metrics"] is None
    assert "history 1-6 items:" in capsys.readouterr().out
    rows = (tmp_path / "b.csv").read_text().splitlines()
    (tmp_path / "old.csv").write_text("\n".join([rows[0], "user,target,rank"]
                                                + [",".join(r.split(",")[:3]) for r in rows[2:]]) + "\n")
    assert compare_main([str(tmp_path / "a.csv"), str(tmp_path / "old.csv"), "--ks", "5", "--bootstrap", "100"])
    first = rows[2].split(",")
    longer = ",".join(first[:3] + [str(int(first[3]) + 1)] + first[4:])          # one more history item
    (tmp_path / "longer.csv").write_text("\n".join(rows[:2] + [longer] + rows[3:]) + "\n")
    for other, code, message in (("old", 2, "--by-length: B has no history column (a ranks file from before "
                                            "2026-12-05)"),
                                 ("longer", 1, f"--by-length: user {first[0]} has a history of {first[3]} items in A")):
        exits(capsys, [str(tmp_path / "a.csv"), str(tmp_path / f"{other}.csv"), "--ks", "5", "--bootstrap", "100",
                       "--by-length", "6"], code, message, run=compare_main)
