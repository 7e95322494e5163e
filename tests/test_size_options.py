"""Size options far beyond what the model, the data or the machine holds: refused early with a usage error (exit 2)
where a natural bound exists -- ``zoo.evaluate --sampled``, ``zoo.train --negatives``, ``zoo.compare --bootstrap``,
``zoo.recommend --k`` -- and otherwise, once an allocation fails, one line on stderr from
:func:`export.fsutil.run_cli` (exit 1) instead of a traceback.

Every huge size here is above 2**47 bytes, more than a process can map at all, so that the old code's allocation
fails at once whatever the machine's overcommit setting (nothing is ever allocated); the subprocess runs under
``prlimit --as`` besides."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from test_evaluate import _random_examples, exits, save_model

from export.fsutil import EXIT_ERROR, EXIT_USAGE, run_cli

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
HUGE = 10**15                                   # elements: petabytes, beyond any address space


# ------------------------------------------------------------------ zoo.evaluate --sampled
@pytest.mark.parametrize("how", ["uni", "pop"])
def test_sample_negatives_refuses_more_than_the_items_before_allocating(how):
    """``[B, n]`` was allocated before the check that a user has ``n`` items left to draw: a MemoryError for an
    absurd ``n`` in place of the ValueError naming the user."""
    from zoo.evaluate import sample_negatives

    ex = _random_examples(n=5, n_items=40)
    counts = np.ones(40, dtype=np.int64) if how == "pop" else None
    with pytest.raises(ValueError, match=rf"user 'u0': \d+ items left to draw as negatives, fewer than {HUGE}"):
        sample_negatives(ex, 40, HUGE, how, counts=counts)
    assert sample_negatives(ex.head(0), 40, HUGE, how, counts=counts).shape == (0, HUGE)     # no rows: nothing to draw


def test_evaluate_cli_sampled_beyond_the_catalogue_is_a_usage_error(tmp_path, capsys):
    d = save_model(tmp_path, [10, 20, 30, 40, 50])
    data = tmp_path / "d.seq"
    data.write_text("user_id\titem_ids_chronological\n3\t20 40 10 50\n1\t10 20 30 40\n2\t50 10 30\n")
    for how in ("uni", "pop"):
        said = exits(capsys, ["--model", str(d), "--data", str(data), "--no-progress", "--sampled", f"{how}{HUGE}"],
                     2, f"--sampled {how}{HUGE}: user ")
        assert "Traceback" not in said and "fewer than" in said


# ------------------------------------------------------------------ run_cli: out of memory in one line
def _numpy_oom():
    return np.empty(HUGE)                               # 8 PB: numpy's _ArrayMemoryError, a MemoryError


def _torch_oom():
    return torch.empty(HUGE)                            # 4 PB: torch's CPU allocator, a RuntimeError


@pytest.mark.parametrize("fails,size", [(_numpy_oom, "7.11 PiB"), (_torch_oom, "3.6 PiB")])
def test_run_cli_turns_out_of_memory_into_one_line(capsys, fails, size):
    def main(argv):
        return fails()

    with pytest.raises(SystemExit) as e:
        run_cli(main, ["--data", "d.tsv", "--max-len", "1000000000", "--seed", "123456789", "--set",
                       "hidden_size=1000000", "--sampled", "uni100"], prog="cmd")
    err = capsys.readouterr().err
    assert e.value.code == EXIT_ERROR and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("cmd: error: out of memory (tried to allocate "), err
    assert size.split()[1] in err                       # the size it tried, in binary units
    # the whole-number options given, largest first; a seed is no size
    assert err.rstrip().endswith("check the size options: --max-len 1000000000, --set hidden_size=1000000, "
                                 "--sampled uni100"), err


def test_run_cli_out_of_memory_without_size_options_or_size(capsys):
    def main(argv):
        raise MemoryError

    with pytest.raises(SystemExit) as e:
        run_cli(main, ["--data", "d.tsv"], prog="cmd")
    assert e.value.code == EXIT_ERROR
    assert capsys.readouterr().err == ("cmd: error: out of memory; check the size options (batch sizes, lengths, "
                                       "counts, model sizes)\n")


def test_run_cli_leaves_other_runtime_errors_alone():
    def main():
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")

    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        run_cli(main, prog="cmd")


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux) to cap the subprocess")
def test_a_model_too_large_for_memory_is_one_line(tmp_path):
    """``zoo.train --max-len 1000000000``: SASRec's position table (64 GB at hidden 16) fails in the model build, a
    torch RuntimeError the command does not catch -- one line naming --max-len, exit 1, and no --out left."""
    from test_train import TINY, _markov_file

    data = _markov_file(tmp_path / "m.tsv", n_users=30)
    out = tmp_path / "run"
    r = subprocess.run(["prlimit", "--as=4000000000", sys.executable, "-m", "zoo.train", "--model", "sasrec",
                        "--data", str(data), "--out", str(out), "--epochs", "1", "--kcore", "0", "--no-progress",
                        "--max-len", "1000000000", "--set", *TINY["sasrec"]],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == EXIT_ERROR and "Traceback" not in r.stderr, r.stderr[-3000:]
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("python -m zoo.train: error: out of memory (tried to allocate "), r.stderr[-3000:]
    assert "check the size options: --max-len 1000000000" in line
    assert not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------------ zoo.train --negatives
def test_train_negatives_above_the_catalogue_is_a_usage_error(tmp_path, capsys):
    """It printed a note that the full cross-entropy is cheaper, then drew that many negatives per batch (8 GB at
    10**9): refused now, before the first epoch, naming the catalogue's size."""
    from test_train import TINY, _markov_file

    from zoo.train import main as train_main

    data = _markov_file(tmp_path / "m.tsv", n_users=30)
    out = tmp_path / "run"
    said = exits(capsys, ["--model", "gru4rec", "--data", str(data), "--out", str(out), "--epochs", "1",
                          "--kcore", "0", "--no-progress", "--set", *TINY["gru4rec"], "--loss", "sampled-softmax",
                          "--negatives", "1000"], EXIT_USAGE, "--negatives 1000: the catalogue holds ", train_main)
    assert "use --negatives <= " in said and "--loss ce" in said
    assert not (out / "model.safetensors").exists()


# ------------------------------------------------------------------ zoo.compare --bootstrap
def test_compare_bootstrap_has_an_upper_bound(tmp_path, capsys):
    """``--bootstrap 1000000000`` held a [metrics, 10**9] array (45 GB); bounded at MAX_BOOTSTRAP, checked with the
    options (exit 2) before the files are read (these do not exist)."""
    from zoo.compare import MAX_BOOTSTRAP, bootstrap_count, main

    assert MAX_BOOTSTRAP == 1_000_000 and bootstrap_count("1000000") == MAX_BOOTSTRAP
    for bad, message in [("1000001", "expected an int from 100 to 1000000"), ("99", "expected an int >= 100")]:
        exits(capsys, [str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--bootstrap", bad], EXIT_USAGE, message,
              main)


# ------------------------------------------------------------------ zoo.recommend --k
@pytest.fixture
def rec_model(tmp_path, monkeypatch):
    """A 30-item model and a data file that must never be read (the --k check comes before it)."""
    from test_recommend import _data, _model

    _, path = _model(tmp_path, embedding_size=16, hidden_size=16)
    _data(tmp_path / "d.tsv")

    def never(*a, **kw):
        raise AssertionError("--data was read before --k was checked")

    monkeypatch.setattr("zoo.data.load_dataset", never)
    return path, str(tmp_path / "d.tsv")


@pytest.mark.parametrize("argv,message", [
    (["--user", "u1", "--k", "31"], "--k 31: the model's catalogue has 30 items; use --k <= 30"),
    (["--all-users", "--out", "OUT", "--k", "1000000000"],
     "--k 1000000000: the model's catalogue has 30 items; use --k <= 30"),
    (["--user", "u1", "--k", "29", "--exclude-items", "100", "107"],
     "--k 29: the model's catalogue has 30 items, 28 left after the 2 of --exclude-items; use --k <= 28"),
    (["--user", "u1", "--k", "3", "--candidates", "100", "107", "114", "--exclude-items", "107"],
     "--k 3: --candidates lists 3 items the model knows, 2 left after the 1 of them in --exclude-items; "
     "use --k <= 2"),
])
def test_recommend_k_is_checked_once_the_model_is_loaded(tmp_path, capsys, rec_model, argv, message):
    """It was checked by model.recommend after --data was read (29 s on a big file), exit 1, naming the API's k."""
    from zoo.recommend import main

    path, data = rec_model
    argv = [str(tmp_path / "r.jsonl") if a == "OUT" else a for a in argv]
    exits(capsys, ["--model", path, "--data", data, *argv], EXIT_USAGE, message, main)


def test_recommend_similar_to_k_is_a_usage_error(capsys, rec_model):
    from zoo.recommend import main

    path, _ = rec_model
    exits(capsys, ["--model", path, "--similar-to", "100", "--k", "30"], EXIT_USAGE,
          "--k 30: the model's catalogue has 30 items, 29 left beside a --similar-to item; use --k <= 29", main)
    exits(capsys, ["--model", path, "--similar-to", "100", "--k", "29", "--exclude-items", "107"], EXIT_USAGE,
          "--k 29: the model's catalogue has 30 items, 28 left beside a --similar-to item and the --exclude-items; "
          "use --k <= 28", main)
    out = main(["--model", path, "--similar-to", "100", "--k", "29", "--json"])
    assert len(out["items"][0]) == 29                   # the bound itself is allowed


def test_recommend_all_users_k_at_the_catalogue_with_exclusions_is_not_refused_early(tmp_path, capsys, rec_model):
    """--all-users gives a user left with fewer than --k items a shorter line: only the catalogue bounds it (the
    guard above then shows the data is read, past the check)."""
    from zoo.recommend import main

    path, data = rec_model
    with pytest.raises(AssertionError, match="--data was read"):
        main(["--model", path, "--data", data, "--all-users", "--out", str(tmp_path / "r.jsonl"), "--k", "30",
              "--exclude-items", "100"])
