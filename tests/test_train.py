"""End-to-end training on generated data: metrics rise far above random within a few epochs.

Guards against the "HR@10 0.0096" failure official Mamba4Rec users hit (Mamba4Rec#1/#3): a pipeline that trains
but learns nothing.
"""

import contextlib
import itertools
import json
import os
import random
import re

import pytest
import torch

from zoo.train import main as train_main, parse_overrides


@contextlib.contextmanager
def refused(capsys, match, code=2):
    """``python -m zoo.train`` refusing a run before any work: a usage error (exit code 2; ``code`` 1 for an input
    that cannot be read or does not fit the run) whose one line on stderr names the problem, and no traceback."""
    with pytest.raises(SystemExit) as e:
        yield
    err = capsys.readouterr().err
    assert e.value.code == code and re.search(match, err) and "Traceback" not in err, (e.value.code, err)
    assert ("usage:" in err) == (code == 2), err                # the usage line for a bad option only


def _markov_file(path, n_users=150, n_items=40, length=(12, 40), p_follow=0.85, seed=0):
    """Interactions where the next item is usually (item + 1) mod n_items: learnable, far from random."""
    rng = random.Random(seed)
    lines = ["user_id\titem_id\ttimestamp"]
    for u in range(1, n_users + 1):
        item, t = rng.randrange(n_items), 1_000_000 + rng.randrange(10_000)
        for _ in range(rng.randint(*length)):
            lines.append(f"{u}\t{100 + item}\t{t}")
            item = (item + 1) % n_items if rng.random() < p_follow else rng.randrange(n_items)
            t += rng.randint(1, 500)
    path.write_text("\n".join(lines) + "\n")
    return path


def _cluster_file(path, n_users=150, n_items=40, n_clusters=4, length=(12, 40), seed=0):
    """Interactions where every user draws items from one of ``n_clusters`` disjoint item groups (order carries no
    signal): the next item is one of the 10 items of the user's group, so a model that learnt the groups puts it in
    its top 10 (HR@10 -> 1) where a random ranking of the 40 items gets 0.25."""
    rng = random.Random(seed)
    per = n_items // n_clusters
    lines = ["user_id\titem_id\ttimestamp"]
    for u in range(1, n_users + 1):
        c, t = rng.randrange(n_clusters), 1_000_000 + rng.randrange(10_000)
        for _ in range(rng.randint(*length)):
            lines.append(f"{u}\t{100 + c * per + rng.randrange(per)}\t{t}")
            t += rng.randint(1, 500)
    path.write_text("\n".join(lines) + "\n")
    return path


TINY = {"mamba4rec": ["hidden_size=16", "d_state=8"],
        "sasrec": ["hidden_size=16", "inner_size=32", "hidden_dropout=0.1", "attn_dropout=0.1"],
        "lrurec": ["hidden_size=16"],
        "gru4rec": ["embedding_size=16", "hidden_size=32"]}


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_training_beats_random_by_far(tmp_path, model_type):
    torch.set_num_threads(1)
    data = _markov_file(tmp_path / "markov.tsv")
    out = tmp_path / model_type
    log = train_main(["--model", model_type, "--data", str(data), "--out", str(out), "--epochs", "6",
                      "--max-len", "50", "--batch-size", "16", "--lr", "5e-3", "--kcore", "0", "--no-progress",
                      "--set", *TINY[model_type]])
    random_hr10 = 10 / 40
    assert log["test"]["HR@10"] > 2.5 * random_hr10, log["test"]
    assert log["test"]["NDCG@10"] > 0.3, log["test"]
    # far above the most-popular floor the run measured on the same validation examples
    assert log["best_valid_NDCG10"] > 2 * log["popularity_valid_NDCG10"] > 0, log
    saved = json.loads((out / "train_log.json").read_text())
    assert saved["best_epoch"] >= 1 and (out / "model.safetensors").exists() and (out / "item_vocab.json").exists()
    # the checkpoint is a complete model: evaluating it again gives the logged test metrics
    from zoo.evaluate import main as eval_main
    again = eval_main(["--model", str(out), "--data", str(data), "--kcore", "none", "--no-progress"])
    assert abs(again["metrics"]["NDCG@10"] - log["test"]["NDCG@10"]) < 1e-6


def test_bert4rec_training_beats_random_by_far(tmp_path, capsys):
    """BERT4Rec's end-to-end guard (its Cloze objective through ``zoo.train``), on the item-group data rather than the
    Markov chain: the [MASK] slot has no residual path from the item before it, so an item-to-next-item chain must be
    found through the absolute position embeddings, which takes BERT4Rec ~1,500+ steps (measured on the Markov data:
    loss still ~ln(41) after 400 steps of batch 16, HR@10 0.86 after 2,500). Measured on this data (4 data seeds):
    hidden 32 at lr 2e-3 learns the groups in 20 epochs every time (HR@10 1.0); hidden 16, or lr 5e-3 with dropout,
    can stall on a plateau that separates only two of the four groups (loss ~3.0, HR@10 ~0.5) -- a post-LN
    Transformer's optimisation, not the pipeline (without dropout, or at lr 1e-3, the same setting learns)."""
    torch.set_num_threads(1)
    data = _cluster_file(tmp_path / "groups.tsv")
    log = train_main(["--model", "bert4rec", "--data", str(data), "--out", str(tmp_path / "b"), "--epochs", "20",
                      "--max-len", "50", "--batch-size", "8", "--lr", "2e-3", "--kcore", "0", "--no-progress",
                      "--set", "hidden_size=32", "inner_size=64"])
    assert log["test"]["HR@10"] > 2.5 * 10 / 40, log["test"]                  # random: 0.25
    assert log["test"]["NDCG@10"] > 0.3, log["test"]                          # random: 0.11; all 10 group items on top: 0.45
    header = next(line for line in capsys.readouterr().out.splitlines() if "training windows" in line)
    assert "window items (Cloze" in header and " targets (" not in header, header   # not every item is a target


def test_init_from_continues_training(tmp_path):
    torch.set_num_threads(1)
    data = _markov_file(tmp_path / "markov.tsv", n_users=60)
    args = ["--model", "mamba4rec", "--data", str(data), "--epochs", "1", "--max-len", "30", "--kcore", "0",
            "--no-progress", "--set", *TINY["mamba4rec"]]
    first = train_main(args + ["--out", str(tmp_path / "a")])
    second = train_main(args + ["--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "a")])
    assert second["init_from"] == str(tmp_path / "a")
    assert second["epochs"][0]["loss"] < first["epochs"][0]["loss"]
    # which weights it started from (zoo.hub.training_stages follows init_from only into a folder still holding them)
    import hashlib

    assert second["init_weights_sha256"] == hashlib.sha256((tmp_path / "a" / "model.safetensors").read_bytes()).hexdigest()
    assert "init_weights_sha256" not in first
    # the stage starts by validating its checkpoint: the first run's best, measured again
    assert second["init_valid_NDCG10"] == pytest.approx(first["best_valid_NDCG10"], abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_init_from_a_half_precision_checkpoint_trains_in_float32(tmp_path, capsys, dtype):
    """A checkpoint saved after .half() loaded as float16 (transformers keeps the saved dtype): Adam in float16 made
    the weights NaN within an epoch and the run ended in a traceback; a bfloat16 one trained and saved bf16 weights
    without a word. The start is loaded in float32 (with a note), and the run's checkpoint is float32."""
    from safetensors import safe_open
    from transformers import AutoModel

    torch.set_num_threads(1)
    data = _markov_file(tmp_path / "markov.tsv", n_users=60)
    args = ["--model", "gru4rec", "--data", str(data), "--epochs", "1", "--max-len", "30", "--kcore", "0",
            "--no-progress", "--lr", "5e-3", "--set", *TINY["gru4rec"]]
    train_main(args + ["--out", str(tmp_path / "a")])
    AutoModel.from_pretrained(tmp_path / "a").to(dtype).save_pretrained(tmp_path / "half")
    capsys.readouterr()
    log = train_main(args + ["--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "half")])
    name = str(dtype).removeprefix("torch.")
    assert f"holds {name} weights: loaded and trained in float32" in capsys.readouterr().out
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in log["epochs"]) and log["test"]["NDCG@10"] > 0
    with safe_open(str(tmp_path / "b" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}


def test_config_takes_a_checkpoints_config_json(tmp_path, capsys):
    """--config with a saved config.json (the file a user reaches for first) was refused on n_items/item_vocab_file,
    then on architectures, d_inner, dtype, model_type and transformers_version. Its fields are used now, its
    bookkeeping left out and n_items taken from the data (with a note); another model's config.json is refused."""
    from zoo.models.mamba4rec import Mamba4RecConfig

    torch.set_num_threads(1)
    data = _markov_file(tmp_path / "markov.tsv", n_users=40)
    saved = tmp_path / "saved"
    Mamba4RecConfig(n_items=9999, hidden_size=16, d_state=4, expand=1, max_seq_length=30).save_pretrained(saved)
    args = ["--model", "mamba4rec", "--data", str(data), "--epochs", "1", "--kcore", "0", "--no-progress",
            "--config", str(saved / "config.json")]
    log = train_main(args + ["--out", str(tmp_path / "a")])
    assert "its n_items 9999 is not used (the run sets n_items from its data)" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["d_state"], cfg["d_inner"], cfg["max_seq_length"]) == (16, 4, 16, 30)
    assert cfg["n_items"] == 41 and log["test"]["NDCG@10"] > 0
    with refused(capsys, r"--config .*config.json: a 'mamba4rec' config.json, and --model is 'gru4rec'"):
        train_main(["--model", "gru4rec"] + args[2:] + ["--out", str(tmp_path / "b")])
    (tmp_path / "hand.json").write_text(json.dumps({"hidden_size": 16, "dtype": "float32"}))
    with refused(capsys, r"--config .*hand.json: \['dtype'\] not fields of Mamba4RecConfig"):
        train_main(args[:-1] + [str(tmp_path / "hand.json"), "--out", str(tmp_path / "c")])


@pytest.mark.usefixtures("one_thread")
def test_a_stage_that_does_not_beat_its_start_says_so(tmp_path, capsys):
    """With lr 0 no epoch can beat the starting checkpoint: the run says that the checkpoint it started from remains
    the better model."""
    data = _markov_file(tmp_path / "markov.tsv", n_users=40)
    args = ["--model", "gru4rec", "--data", str(data), "--max-len", "20", "--kcore", "0", "--no-progress",
            "--epochs", "1", "--set", *TINY["gru4rec"]]
    train_main(args + ["--out", str(tmp_path / "a")])
    capsys.readouterr()
    log = train_main(args + ["--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "a"), "--lr", "0"])
    assert log["best_valid_NDCG10"] == log["init_valid_NDCG10"]
    assert f"{tmp_path / 'a'} remains the better model" in capsys.readouterr().out


@pytest.mark.usefixtures("one_thread")
def test_out_folder_holding_a_checkpoint_is_refused(tmp_path, monkeypatch, capsys):
    """A run never silently replaces a checkpoint: --out holding one needs --overwrite, and --out equal to
    --init-from is refused even then; both before any work (the existing files are untouched)."""
    data = _markov_file(tmp_path / "markov.tsv", n_users=40)
    args = ["--model", "gru4rec", "--data", str(data), "--max-len", "20", "--kcore", "0", "--no-progress",
            "--epochs", "1", "--set", *TINY["gru4rec"]]
    a = tmp_path / "a"
    train_main(args + ["--out", str(a)])
    before = {f.name: f.read_bytes() for f in a.iterdir()}
    with refused(capsys, r"already holds a checkpoint \(config.json, model.safetensors, train_log"):
        train_main(args + ["--out", str(a)])
    with refused(capsys, "would overwrite the checkpoint it starts from"):
        train_main(args + ["--out", str(a), "--init-from", str(a), "--overwrite"])
    import zoo.pretrained                                           # a Hub id that resolves to the bundled folder `a`
    monkeypatch.setattr(zoo.pretrained, "bundled_models", lambda: {"tiny-gru": a})
    with refused(capsys, "would overwrite the checkpoint it starts from"):
        train_main(args + ["--out", str(a), "--init-from", "ssm-rec-zoo/tiny-gru", "--overwrite"])
    assert {f.name: f.read_bytes() for f in a.iterdir()} == before
    log = train_main(args + ["--out", str(a), "--overwrite", "--seed", "3"])
    assert json.loads((a / "train_log.json").read_text())["seed"] == log["seed"] == 3
    with refused(capsys, "patience must be >= 1"):
        train_main(args + ["--out", str(tmp_path / "c"), "--patience", "0"])
    assert not (tmp_path / "c").exists()


def test_eval_every_validates_every_n_epochs_and_after_the_last(tmp_path, capsys):
    """``--eval-every 3`` over 7 epochs validates after epochs 3, 6 and 7 (the last), keeps the best of those, and
    ``--patience`` counts validations; ``--eval-every 0`` is refused before any work."""
    torch.set_num_threads(1)
    data = _markov_file(tmp_path / "markov.tsv", n_users=40)
    args = ["--model", "gru4rec", "--data", str(data), "--max-len", "20", "--kcore", "0", "--no-progress",
            "--set", *TINY["gru4rec"]]
    log = train_main(args + ["--out", str(tmp_path / "a"), "--epochs", "7", "--eval-every", "3"])
    validated = [r["epoch"] for r in log["epochs"] if "valid_NDCG@10" in r]
    assert [r["epoch"] for r in log["epochs"]] == list(range(1, 8)) and validated == [3, 6, 7]
    assert log["best_epoch"] in validated and log["eval_every"] == 3
    assert log["best_valid_NDCG10"] == max(r["valid_NDCG@10"] for r in log["epochs"] if "valid_NDCG@10" in r)
    # patience 1 with a learning rate that cannot improve: stops after the second validation (epoch 4), not epoch 2
    log = train_main(args + ["--out", str(tmp_path / "b"), "--epochs", "9", "--eval-every", "2", "--patience", "1",
                             "--lr", "1e-12"])
    assert [r["epoch"] for r in log["epochs"] if "valid_NDCG@10" in r][-1] == 4 and len(log["epochs"]) == 4
    assert "no valid NDCG@10 gain for 1 validations (every 2 epochs)" in log["stopped"]
    with refused(capsys, "eval_every must be >= 1"):
        train_main(args + ["--out", str(tmp_path / "c"), "--eval-every", "0"])
    assert not (tmp_path / "c").exists()


def test_a_run_interrupted_while_writing_its_log_keeps_the_last_whole_log(tmp_path, monkeypatch):
    """The run's ``train_log.json`` is rewritten after every epoch: an interruption during the write keeps the
    previous epoch's whole log (which ``zoo.hub card`` reads), never a truncated file or a stray temporary one."""
    import zoo.train

    torch.set_num_threads(1)
    data = _markov_file(tmp_path / "markov.tsv", n_users=40)
    real_written_whole = zoo.train.written_whole

    class HalfWriting:                                       # interrupted half-way through epoch 2's log
        def __init__(self, f):
            self.f = f

        def write(self, text):
            if len(json.loads(text).get("epochs", ())) == 2:
                self.f.write(text[:len(text) // 2])
                raise KeyboardInterrupt
            return self.f.write(text)

    @contextlib.contextmanager
    def written_whole(path, *args, **kwargs):
        with real_written_whole(path, *args, **kwargs) as f:
            yield HalfWriting(f) if os.path.basename(path) == "train_log.json" else f

    monkeypatch.setattr(zoo.train, "written_whole", written_whole)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_main(["--model", "gru4rec", "--data", str(data), "--max-len", "20", "--kcore", "0", "--no-progress",
                    "--set", *TINY["gru4rec"], "--out", str(out), "--epochs", "3"])
    monkeypatch.undo()
    log = json.loads((out / "train_log.json").read_text())
    assert [r["epoch"] for r in log["epochs"]] == [1]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".train_log.json")]


def test_a_nan_in_the_log_is_a_one_line_error_and_leaves_the_log_as_it_was(tmp_path, monkeypatch, capsys):
    """train_log.json is strict JSON (export.fsutil.strict_json): a NaN in the log -- here the popularity floor of
    validation -- ends the run in one line naming where it is (exit 1), never writing ``NaN`` (which jq, JSON.parse
    and zoo.hub's readers refuse) nor a traceback; the file is left as it was (none yet, and no temporary file)."""
    import zoo.evaluate

    torch.set_num_threads(1)
    data = _markov_file(tmp_path / "markov.tsv", n_users=40)
    monkeypatch.setattr(zoo.evaluate, "evaluate_popularity", lambda *a, **k: {"NDCG@10": float("nan")})
    out = tmp_path / "run"
    with refused(capsys, r"error: cannot write .*train_log\.json: popularity_valid_NDCG10 is nan, which is not a "
                         r"JSON number \(strict JSON has no NaN or Infinity\); the file is left as it was\n$", code=1):
        train_main(["--model", "gru4rec", "--data", str(data), "--max-len", "20", "--kcore", "0", "--no-progress",
                    "--set", *TINY["gru4rec"], "--out", str(out), "--epochs", "2"])
    assert not [p.name for p in out.iterdir() if "train_log.json" in p.name]


def test_parse_overrides():
    assert parse_overrides(["num_layers=2", "dropout_prob=0.3", "mamba_init=mamba"]) == {
        "num_layers": 2, "dropout_prob": 0.3, "mamba_init": "mamba"}
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["oops"])


def test_lr_factor_schedules():
    from zoo.train import lr_factor

    assert [lr_factor("constant", p) for p in (0, 0.5, 1)] == [1.0, 1.0, 1.0]
    assert [lr_factor("linear", p) for p in (0, 0.25, 1, 2)] == [1.0, 0.75, 0.0, 0.0]
    assert lr_factor("cosine", 0) == 1.0 and abs(lr_factor("cosine", 0.5) - 0.5) < 1e-12
    assert abs(lr_factor("cosine", 1.0)) < 1e-12
    with pytest.raises(ValueError, match="lr schedule"):
        lr_factor("step", 0.1)


def test_linear_schedule_decays_over_planned_epochs(tmp_path, monkeypatch):
    """Every optimizer step sees lr = base * (1 - done/total): strictly decreasing, from base to ~0 at the end."""
    seen = _recorded_lrs(monkeypatch)
    torch.set_num_threads(1)
    data = _markov_file(tmp_path / "markov.tsv", n_users=40)
    log = train_main(["--model", "mamba4rec", "--data", str(data), "--out", str(tmp_path / "m"), "--epochs", "2",
                      "--max-len", "30", "--kcore", "0", "--batch-size", "8", "--lr", "1e-2", "--lr-schedule",
                      "linear", "--no-progress", "--set", *TINY["mamba4rec"]])
    assert log["train"]["lr_schedule"] == "linear"
    n = len(seen)
    assert n >= 8 and seen[0] == pytest.approx(1e-2)
    assert all(b < a for a, b in itertools.pairwise(seen))
    assert seen[-1] == pytest.approx(1e-2 / n)


def test_window_stride_trains_and_is_logged(tmp_path, capsys):
    torch.set_num_threads(1)
    data = _markov_file(tmp_path / "markov.tsv", n_users=80, length=(30, 60))
    args = ["--data", str(data), "--epochs", "3", "--max-len", "12", "--batch-size", "16", "--lr", "5e-3",
            "--kcore", "0", "--no-progress"]
    log = train_main(args + ["--model", "sasrec", "--out", str(tmp_path / "s"), "--window-stride", "4",
                             "--loss-weighting", "target",
                             "--set", *TINY["sasrec"]])
    assert log["window_stride"] == 4 and log["loss_weighting"] == "target" and "supervising its last 4 positions" in log["objective"]
    assert log["test"]["HR@10"] > 2.5 * 10 / 40, log["test"]
    with refused(capsys, "Cloze"):
        train_main(args + ["--model", "bert4rec", "--out", str(tmp_path / "b"), "--window-stride", "4"])
    with refused(capsys, r"--window-stride: stride must be in \[1, max_len = 12\], got 13"):
        train_main(args + ["--model", "sasrec", "--out", str(tmp_path / "x"), "--window-stride", "13",
                           "--set", *TINY["sasrec"]])


def test_target_loss_weighting_weighs_every_target_the_same():
    from zoo.train import loss_scale

    torch.manual_seed(0)
    # two batches of different target counts (3 and 1): per-target CE values
    ce = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0])]
    labels = [torch.tensor([[5, 6, 7, 0]]), torch.tensor([[0, 0, 0, 9]])]
    per_batch = 2.0                                              # 4 targets over 2 batches
    total = sum(c.mean() * loss_scale(l, per_batch, "target") for c, l in zip(ce, labels, strict=True))
    assert torch.isclose(total, torch.cat(ce).sum() / per_batch)   # == sum over targets / const: uniform weights
    # the default keeps the batch means (the lone target of batch 2 weighs 3x one of batch 1)
    assert sum(c.mean() * loss_scale(l, per_batch, "window") for c, l in zip(ce, labels, strict=True)) == 2.0 + 10.0
    with pytest.raises(ValueError, match="loss weighting"):
        loss_scale(labels[0], per_batch, "user")


def test_objective_is_described_per_model():
    """The log (and so the card) names what was optimised: BERT4Rec's Cloze masking with its own ratios, not the
    next-item cross-entropy of the causal models; overlapping windows say how many positions each supervises."""
    from zoo.train import describe_objective

    b = describe_objective("bert4rec", 200, 200, {"mask_ratio": 0.2, "ft_ratio": 0.5, "ft_prefix_sampling": True})
    assert "Cloze" in b and "mask_ratio = 0.2" in b and "ft_ratio = 0.5" in b and "every position" not in b
    assert describe_objective("sasrec", 200, 200) == "cross-entropy over all items at every position of windows of " \
                                                     "max_seq_length"
    s = describe_objective("mamba4rec", 200, 50)
    assert "last 50 positions" in s and ">= 151 items" in s
    for non_causal in ("tim4rec", "ssd4rec"):                # WindowRecomputeMixin models: one prefix per target
        t = describe_objective(non_causal, 50, 50)
        assert "prefix objective" in t and "every position is its own sample" in t and "every position of" not in t
    assert "each of the last 10 positions" in describe_objective("tim4rec", 50, 10)
    assert "prefix" not in describe_objective("tim4rec_causal", 50, 50)


@pytest.mark.parametrize("model_type", ["lrurec", "sasrec", "bert4rec", "tim4rec"])
def test_adamw_decays_no_bias_or_norm_gain(model_type):
    """AdamW groups: for LRURec exactly its official name rule ("bias" / "layer_norm" in the name: params_log and the
    item table are decayed); for every model no bias and no LayerNorm/RMSNorm gain is decayed (SASRec's and
    BERT4Rec's ``LayerNorm`` and the SSD's ``norm_weight`` would be by the name rule), and every parameter is in
    exactly one group."""
    from zoo.train import build_model, make_optimizer

    small = {"lrurec": dict(hidden_size=16), "sasrec": dict(hidden_size=16, inner_size=32),
             "bert4rec": dict(hidden_size=16, inner_size=32), "tim4rec": dict(hidden_size=16, d_state=8)}
    model = build_model(model_type, 50, small[model_type])
    opt = make_optimizer(model, "adamw", 1e-3, 0.01)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    dec = {names[id(p)] for p in decay["params"]}
    nod = {names[id(p)] for p in no_decay["params"]}
    assert dec | nod == set(names.values()) and not dec & nod
    if model_type == "lrurec":
        assert nod == {n for n in names.values() if "bias" in n or "layer_norm" in n}
        assert any("params_log" in n for n in dec) and "item_embedding.weight" in dec
    norms = {n for n in names.values() if "norm" in n.lower() and n.endswith("weight")}
    assert norms and norms <= nod, norms - nod
    assert not {n for n in dec if "bias" in n}


@pytest.mark.parametrize("model_type", ["mamba4rec", "tim4rec", "tim4rec_causal", "ssd4rec"])
def test_adamw_leaves_the_ssm_parameters_undecayed_also_after_loading(tmp_path, model_type):
    """The SSMs' A_log and D (mamba_ssm marks them _no_weight_decay) were decayed under --optimizer adamw, pulling
    every A = -exp(A_log) towards -1; they are left undecayed, in a fresh model and in one from from_pretrained
    (--init-from: loading replaces the parameter tensors, so the rule is the module's, not a mark on the tensor)."""
    from tests.tiny_models import tiny
    from zoo.models import MODELS
    from zoo.train import make_optimizer

    model = tiny(model_type)
    model.save_pretrained(tmp_path)
    for m in (model, MODELS[model_type][1].from_pretrained(tmp_path)):
        decay, no_decay = make_optimizer(m, "adamw", 1e-3, 0.1).param_groups
        names = {id(p): n for n, p in m.named_parameters()}
        ssm = {n for n in names.values() if n.rsplit(".", 1)[-1] in ("A_log", "D", "dt_bias")}
        assert ssm and ssm <= {names[id(p)] for p in no_decay["params"]}
        assert not ssm & {names[id(p)] for p in decay["params"]}


class _Clock:
    """A fake ``time`` module for zoo.train: every call is one second later (deterministic budgets)."""

    def __init__(self):
        self.t = 1_000.0

    def time(self):
        self.t += 1.0
        return self.t


@pytest.fixture
def fake_clock(monkeypatch):
    """zoo.train on :class:`_Clock` (a second a read): a 6 ms ``--max-minutes 0.0001`` budget ends a run after its
    first epoch for sure (a real clock let a fast machine train a second epoch first)."""
    import zoo.train as T

    monkeypatch.setattr(T, "time", _Clock())


def _recorded_lrs(monkeypatch, clock=None):
    """The learning rate of every optimizer step zoo.train takes (filled as it trains); ``clock``: a fake ``time``."""
    import zoo.train as T

    seen, real = [], T.make_optimizer

    def recording(*a, **kw):
        opt = real(*a, **kw)
        step = opt.step

        def wrapped(*sa, **skw):
            seen.append(opt.param_groups[0]["lr"])
            return step(*sa, **skw)

        opt.step = wrapped
        return opt

    monkeypatch.setattr(T, "make_optimizer", recording)
    if clock is not None:
        monkeypatch.setattr(T, "time", clock)
    return seen


@pytest.mark.parametrize("decay_over", ["epochs", "budget"])
def test_decay_over_budget_ends_the_decay_at_the_time_budget(tmp_path, monkeypatch, capsys, decay_over):
    """A 1-minute budget (fake clock, 1 s per clock read) stops a 50-epoch linear schedule after a few epochs: paced
    by the epochs the learning rate is still near its base there, and the run says so after its first epoch; paced by
    the budget it has decayed to ~0 by the last step."""
    seen = _recorded_lrs(monkeypatch, clock=_Clock())
    torch.set_num_threads(1)
    data = _markov_file(tmp_path / "markov.tsv", n_users=40)
    log = train_main(["--model", "mamba4rec", "--data", str(data), "--out", str(tmp_path / "m"), "--epochs", "50",
                      "--max-len", "30", "--kcore", "0", "--batch-size", "8", "--lr", "1e-2", "--lr-schedule",
                      "linear", "--max-minutes", "1", "--decay-over", decay_over, "--no-progress",
                      "--set", *TINY["mamba4rec"]])
    out = capsys.readouterr().out
    assert log["stopped"].startswith("time budget") and len(log["epochs"]) < 25, log["stopped"]
    assert all(b <= a for a, b in itertools.pairwise(seen)) and seen[0] > 0.9e-2
    if decay_over == "budget":
        assert seen[-1] < 0.1e-2, seen[-5:]
        assert log["train"]["decay_over"] == "time budget of 1.0 minutes" and "note:" not in out
    else:
        assert seen[-1] > 0.5e-2, seen[-5:]
        assert "decay_over" not in log["train"]
        note = next(line for line in out.splitlines() if "note:" in line)
        assert "time budget ends by epoch" in note and "--decay-over budget" in note, note


def test_decay_over_budget_needs_a_budget_and_a_decay(tmp_path, capsys):
    data = _markov_file(tmp_path / "markov.tsv", n_users=20)
    args = ["--model", "mamba4rec", "--data", str(data), "--out", str(tmp_path / "m"), "--kcore", "0",
            "--decay-over", "budget", "--no-progress", "--set", *TINY["mamba4rec"]]
    with refused(capsys, "give --max-minutes"):
        train_main(args + ["--lr-schedule", "linear"])
    with refused(capsys, "constant schedule has no decay"):
        train_main(args + ["--max-minutes", "5"])


def test_schedule_progress_takes_the_limit_reached_first():
    from zoo.train import schedule_progress

    assert schedule_progress(10, 100) == pytest.approx(0.1)
    assert schedule_progress(10, 100, elapsed_s=30, budget_s=60) == pytest.approx(0.5)
    assert schedule_progress(90, 100, elapsed_s=30, budget_s=60) == pytest.approx(0.9)
    assert schedule_progress(10, 100, elapsed_s=90, budget_s=60) == 1.0


@pytest.mark.parametrize("flag, value, message", [
    ("--batch-size", "0", "--batch-size: batch_size must be >= 1"), ("--epochs", "0", "--epochs: epochs must be >= 1"),
    ("--clip", "-1", "--clip: clip .* must be >= 0"), ("--lr", "-0.001", "--lr: lr must be >= 0"),
    ("--weight-decay", "-1", "--weight-decay: weight_decay must be >= 0"),
    ("--max-minutes", "0", "--max-minutes: max_minutes must be > 0"),
    ("--max-minutes", "nan", "--max-minutes: max_minutes must be > 0"),
    # an infinite clip norm or budget (a traceback after training, or an Infinity in the resume state): refused
    ("--clip", "inf", r"--clip: clip .* must be >= 0 and finite, got inf"),
    ("--max-minutes", "inf", r"--max-minutes: max_minutes must be > 0 and finite \(omit it for no budget\), got inf"),
    ("--valid-users", "0", "--valid-users: valid_users must be >= 1"),
    ("--eval-every", "0", "--eval-every: eval_every must be >= 1"), ("--patience", "0", "--patience: patience must be"),
    ("--threads", "0", "argument --threads: expected an int >= 1, got '0'")])
def test_bad_training_numbers_are_refused_before_any_work(tmp_path, flag, value, message, capsys):
    """Numbers that would crash late (batch 0), do nothing (0 epochs), or train silently wrong (a negative clip norm
    flips the gradients' sign; a zero budget or --valid-users 0 would mean 'one epoch' or 'all users') are errors."""
    out = tmp_path / "out"
    with refused(capsys, message):
        train_main(["--model", "gru4rec", "--data", str(tmp_path / "not-read.tsv"), "--out", str(out), flag, value])
    assert not out.exists()


@pytest.mark.parametrize("device, code, message", [("cuda:99", 4, r"CUDA is not available|GPU\(s\) visible"),
                                                    ("tpu", 2, "device 'tpu'")])
def test_a_device_this_machine_lacks_exits_4_and_a_malformed_one_is_a_usage_error(tmp_path, capsys, device, code,
                                                                                 message):
    """``--device`` goes through zoo.cli.cli_device, as in the other commands: a GPU this machine lacks exits 4 (a
    missing GPU, EXIT_MISSING: it was 2, the usage error's), a device torch does not know is a usage error (2); both
    in one line naming the flag, before any work."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        train_main(["--model", "gru4rec", "--data", str(tmp_path / "not-read.tsv"), "--out", str(out),
                    "--device", device])
    err = capsys.readouterr().err
    assert e.value.code == code and re.search(f"error: --device: .*{message}", err) and "Traceback" not in err, err
    assert not out.exists()


@pytest.mark.parametrize("value, hint", [
    ("hub_cards/mamba4rec-ml1m", "--init-from hub_cards/mamba4rec-ml1m --model mamba4rec"),   # a folder
    ("ssm-rec-zoo/sasrec-ml1m", "--init-from ssm-rec-zoo/sasrec-ml1m --model sasrec"),         # a bundled Hub id
    ("sasrec-ml1m", "--init-from ssm-rec-zoo/sasrec-ml1m --model sasrec"),                     # a bundled name
    ("someone/their-model", "--init-from someone/their-model --model TYPE"),                   # another Hub id
    ("mamba4rex", None)])                                                                      # a typo of a type
def test_a_checkpoint_given_as_model_points_at_init_from(tmp_path, capsys, monkeypatch, value, hint):
    """zoo.train's --model is a model type; a checkpoint there (a folder, a Hub id, a bundled model's name) said only
    "unknown model type": it now says to start from a checkpoint with --init-from (and --model its type, where its
    config tells it); a mere typo gets no such hint. A usage error, before any work."""
    import os

    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))     # the checkout: hub_cards/
    with refused(capsys, f"error: --model: unknown model type '{value}'; the zoo has .*"
                         + (f"to start from a checkpoint use {re.escape(hint)}$" if hint else r"\]$")):
        train_main(["--model", value, "--data", str(tmp_path / "not-read.tsv"), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_the_init_from_hint_for_a_folder_that_begins_with_a_dash_runs_as_shown(tmp_path, capsys, monkeypatch):
    """``--model=-ckpt`` (a checkpoint folder whose name begins with '-'): the hint said ``--init-from -ckpt``, which
    argparse reads as two options (shlex.quote leaves a leading dash as it is); it says ``--init-from=-ckpt`` now,
    and the hint parses back to that folder."""
    import shlex

    from zoo.train import build_parser

    (tmp_path / "-ckpt").mkdir()
    (tmp_path / "-ckpt" / "config.json").write_text(json.dumps({"model_type": "gru4rec"}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        train_main(["--model=-ckpt", "--data", str(tmp_path / "not-read.tsv"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.endswith("to start from a checkpoint use --init-from=-ckpt --model gru4rec"), err
    hint = err.rsplit(" use ", 1)[1]
    args = build_parser().parse_args(shlex.split(hint) + ["--data", "d", "--out", "o"])
    assert (args.init_from, args.model) == ("-ckpt", "gru4rec")
    assert not (tmp_path / "o").exists()


def test_an_init_from_checkpoint_that_cannot_be_found_fails_the_run(tmp_path, capsys):
    """--init-from a folder that is not there: the run fails (exit 1, an input that cannot be found, as a missing
    --data), in one line naming the flag, before any work."""
    data = _markov_file(tmp_path / "m.tsv", n_users=20, length=(6, 10))
    with refused(capsys, rf"error: --init-from {re.escape(str(tmp_path / 'nope'))}: ", code=1):
        train_main(["--model", "gru4rec", "--data", str(data), "--out", str(tmp_path / "o"), "--kcore", "0",
                    "--init-from", str(tmp_path / "nope")])
    assert not (tmp_path / "o").exists()


def test_amp_off_cuda_is_refused(tmp_path, capsys):
    """--amp is bfloat16 autocast on CUDA; on the CPU it would be silently ignored, so it is an error."""
    out = tmp_path / "out"
    with refused(capsys, "amp .* is for CUDA; the run is on cpu"):
        train_main(["--model", "gru4rec", "--data", str(tmp_path / "not-read.tsv"), "--out", str(out),
                    "--device", "cpu", "--amp"])
    assert not out.exists()


@pytest.mark.parametrize("value", ["-1", "five"])
def test_bad_kcore_is_a_usage_error(tmp_path, value, capsys):
    """A negative k-core was silently 'no filter', and 'none' (which zoo.evaluate takes) was a ValueError."""
    with pytest.raises(SystemExit) as e:
        train_main(["--model", "gru4rec", "--data", str(tmp_path / "not-read.tsv"), "--out", str(tmp_path / "o"),
                    "--kcore", value])
    assert e.value.code == 2 and "--kcore must be an int >= 1, 'none' (or 0) or 'auto'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_set_names_only_config_fields(tmp_path, capsys):
    """--set of a field the model's config does not have (a typo) is refused before any work; it used to be stored in
    config.json and change nothing."""
    with refused(capsys, r"--set: \['hiden_size'\] not fields of SASRecConfig"):
        train_main(["--model", "sasrec", "--data", str(tmp_path / "not-read.tsv"), "--out", str(tmp_path / "o"),
                    "--set", "hiden_size=128"])
    assert not (tmp_path / "o").exists()


@pytest.mark.usefixtures("one_thread")
def test_init_from_applies_set_or_refuses_it(tmp_path, capsys):
    """With --init-from, --set and --max-len used to be silently ignored (the checkpoint's config won). Now a field
    that keeps the weights' shapes (dropout; Mamba4Rec's window, which has no position table) is applied and logged,
    one that would reshape them (width; SASRec's position table) is an error, and a value equal to the checkpoint's
    changes nothing."""
    import json

    data = _markov_file(tmp_path / "m.tsv", n_users=30, length=(8, 14))
    base = ["--data", str(data), "--epochs", "1", "--kcore", "0", "--no-progress", "--batch-size", "8"]
    train_main(["--model", "sasrec", *base, "--max-len", "20", "--out", str(tmp_path / "a"), "--set",
                "hidden_size=16", "inner_size=32", "hidden_dropout=0.5"])
    train_main(["--model", "sasrec", *base, "--init-from", str(tmp_path / "a"), "--out", str(tmp_path / "b"),
                "--set", "hidden_dropout=0.1", "hidden_size=16"])
    assert "hidden_dropout 0.5 -> 0.1" in capsys.readouterr().out
    log = json.loads((tmp_path / "b" / "train_log.json").read_text())
    assert log["init_config_changes"] == {"hidden_dropout": [0.5, 0.1]}
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["hidden_dropout"] == 0.1 and cfg["max_seq_length"] == 20      # no --max-len: the checkpoint's window
    for extra, what in ((["--set", "hidden_size=32"], "hidden_size=32 changes the checkpoint's weights"),
                        (["--max-len", "30"], "max_seq_length=30 changes the checkpoint's weights")):
        with refused(capsys, what):
            train_main(["--model", "sasrec", *base, "--init-from", str(tmp_path / "a"), "--out", str(tmp_path / "c"),
                        *extra])
    train_main(["--model", "mamba4rec", *base, "--max-len", "20", "--out", str(tmp_path / "m1"), "--set",
                "hidden_size=16", "d_state=4"])
    train_main(["--model", "mamba4rec", *base, "--max-len", "12", "--init-from", str(tmp_path / "m1"), "--out",
                str(tmp_path / "m2")])
    assert json.loads((tmp_path / "m2" / "config.json").read_text())["max_seq_length"] == 12


def test_setup_errors_are_one_line_errors_on_the_command_line_and_value_errors_in_the_api(tmp_path, capsys):
    """A missing or malformed data file and a bad --config are refused with one line naming the problem (no
    traceback, nothing written) and exit status 1 (an input that cannot be read: it was 2, the usage error's, while
    zoo.evaluate gave 1); ``train()`` raises the same as a ``RunSetupError`` (a ``ValueError``) whose cause is the
    original exception."""
    from zoo.train import RunSetupError, train

    out = tmp_path / "out"
    with refused(capsys, f"interaction file not found: {tmp_path / 'missing.tsv'}", code=1):
        train_main(["--model", "gru4rec", "--data", str(tmp_path / "missing.tsv"), "--out", str(out)])
    bad = tmp_path / "bad.tsv"
    bad.write_text("user_id\titem_id\ttimestamp\n1\t5\t100\n1\t6\tlater\n")
    with refused(capsys, r"bad.tsv, line 3, column 'timestamp': timestamp 'later' is not a number", code=1):
        train_main(["--model", "gru4rec", "--data", str(bad), "--out", str(out), "--kcore", "0"])
    for text, what in (("[1, 2]", "expected a JSON object of config fields, got list"), ("{oops", "not valid JSON")):
        (tmp_path / "c.json").write_text(text)
        with refused(capsys, f"--config {tmp_path / 'c.json'}: {re.escape(what)}", code=1):
            train_main(["--model", "gru4rec", "--data", str(bad), "--out", str(out), "--config",
                        str(tmp_path / "c.json")])
    with refused(capsys, f"--config {tmp_path / 'none.json'}: cannot read it", code=1):
        train_main(["--model", "gru4rec", "--data", str(bad), "--out", str(out), "--config", str(tmp_path / "none.json")])
    with pytest.raises(RunSetupError, match="interaction file not found") as e:
        train("gru4rec", str(tmp_path / "missing.tsv"), str(out))
    assert isinstance(e.value, ValueError) and isinstance(e.value.__cause__, FileNotFoundError)
    assert e.value.exit_code == 1
    with pytest.raises(RunSetupError, match="patience must be >= 1") as e:              # a bad setting: usage
        train("gru4rec", str(tmp_path / "missing.tsv"), str(out), patience=0)
    assert e.value.exit_code == 2
    assert not out.exists()


def test_a_data_file_that_cannot_be_read_exits_1_and_a_bad_setting_exits_2(tmp_path, capsys):
    """A --data that cannot be read (a folder: an OSError other than a missing file; a truncated gzip) exits 1 with
    one line naming it; a refused setting exits 2 with the usage, also with such data (settings are checked before
    the data is read). In the API the status is carried by the exception's type: a ``RunInputError`` (a
    ``RunSetupError``, a ``ValueError``) from the original exception for the input, a plain ``RunSetupError`` for the
    setting -- the original exception is not tagged."""
    import gzip

    from zoo.train import RunInputError, RunSetupError, train

    folder = tmp_path / "folder.tsv"
    folder.mkdir()
    trunc = tmp_path / "t.tsv.gz"
    trunc.write_bytes(gzip.compress(b"user_id\titem_id\n" + b"".join(b"%d\t%d\n" % (u, u) for u in range(500)))[:60])
    out = tmp_path / "out"
    base = ["--model", "gru4rec", "--out", str(out), "--kcore", "0"]
    with refused(capsys, "folder.tsv is a directory, expected an interaction file", code=1):
        train_main([*base, "--data", str(folder)])
    with refused(capsys, "t.tsv.gz: corrupt gzip file", code=1):
        train_main([*base, "--data", str(trunc)])
    with refused(capsys, "--patience: patience must be >= 1"):
        train_main([*base, "--data", str(folder), "--patience", "0"])
    with pytest.raises(RunInputError, match="is a directory") as e:
        train("gru4rec", str(folder), str(out), kcore=0)
    assert isinstance(e.value, RunSetupError) and isinstance(e.value, ValueError) and e.value.exit_code == 1
    assert isinstance(e.value.__cause__, IsADirectoryError) and not hasattr(e.value.__cause__, "zoo_exit_code")
    with pytest.raises(RunSetupError, match="patience must be >= 1") as e:
        train("gru4rec", str(folder), str(out), patience=0)
    assert type(e.value) is RunSetupError and e.value.exit_code == 2
    assert not out.exists()


def test_time_aware_model_needs_non_negative_timestamps(tmp_path, capsys):
    """TiM4Rec on order-only data, or on negative timestamps, is refused before training, naming the file (it used
    to fail at the first batch with "TiM4RecModel reads timestamps: pass timestamps"); TiM4Rec without its time
    path (``is_time=false``, the "SSD4Rec*" ablation) reads none, and trains on order-only data (it was refused: the
    check asked the class, whose ``uses_timestamps`` is a property of the config)."""
    seq = tmp_path / "d.seq"
    seq.write_text("user_id\titem_ids_chronological\n1\t1 2 3 4\n2\t2 3 4 5\n")
    base = ["--model", "tim4rec_causal", "--out", str(tmp_path / "o"), "--kcore", "0"]
    with refused(capsys, r"TiM4RecCausalModel reads timestamps, but d.seq has none", code=1):
        train_main(base + ["--data", str(seq)])
    neg = tmp_path / "n.tsv"
    neg.write_text("user_id\titem_id\ttimestamp\n1\t1\t-5\n1\t2\t3\n1\t3\t4\n")
    with refused(capsys, r"n.tsv: 1 negative timestamp \(user 1 starts at -5\)", code=1):
        train_main(base + ["--data", str(neg)])
    assert not (tmp_path / "o").exists()
    out = train_main(["--model", "tim4rec", "--data", str(seq), "--out", str(tmp_path / "t"), "--kcore", "0",
                      "--epochs", "1", "--no-progress", "--set", "is_time=false", "hidden_size=16", "d_state=8",
                      "head_dim=8", "num_layers=1"])
    assert out is not None and (tmp_path / "t" / "model.safetensors").exists()


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("model_type, extra", [
    ("sasrec", ["--set", *TINY["sasrec"], "--lr-schedule", "linear", "--eval-every", "2"]),
    ("bert4rec", ["--set", "hidden_size=16", "inner_size=32", "--optimizer", "adamw", "--weight-decay", "0.01"]),
    # lr 0: no validation gain after epoch 1, so patience 2 stops the run after epoch 3 (one bad epoch before the cut)
    ("gru4rec", ["--set", *TINY["gru4rec"], "--lr", "0", "--patience", "2"]),
    # sampled softmax: the negatives come from torch's generator, which the state keeps
    ("mamba4rec", ["--set", *TINY["mamba4rec"], "--loss", "sampled-softmax", "--negatives", "6",
                   "--negative-sampler", "popularity"]),
    # lazy Adam on a sparse item table beside AdamW (LRURec's preset, with its gradient clipping): both optimizers'
    # moments are kept
    ("lrurec", ["--set", *TINY["lrurec"], "--loss", "sampled-softmax", "--negatives", "6", "--sparse-item-grad"])])
def test_resume_continues_exactly(tmp_path, monkeypatch, capsys, model_type, extra):
    """A run interrupted after epoch 2 of 5 and resumed with --resume ends with the same weights, losses, validation
    numbers and test metrics as the same run left alone: weights, optimizer moments, learning-rate position,
    shuffling, dropout, (BERT4Rec) masking and (sampled softmax) negative draws all continue where they stopped, and
    so does the early-stopping count (a resumed run that restarted it stopped a validation later)."""
    from safetensors.torch import load_file

    import zoo.train_state

    data = _markov_file(tmp_path / "markov.tsv", n_users=40)
    args = ["--model", model_type, "--data", str(data), "--max-len", "20", "--kcore", "0", "--no-progress",
            "--epochs", "5", "--batch-size", "8", "--patience", "10", "--device", "cpu", *extra]   # deterministic
    whole = train_main(args + ["--out", str(tmp_path / "whole")])
    assert not (tmp_path / "whole" / "resume").exists()                 # finished: nothing left to resume
    if "--patience" in extra:
        assert whole["stopped"].startswith("early stopping") and len(whole["epochs"]) == 3, whole["stopped"]

    real_save, calls = zoo.train_state.save, []

    def interrupted(*a, **k):
        real_save(*a, **k)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(zoo.train_state, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_main(args + ["--out", str(tmp_path / "cut")])
    monkeypatch.undo()
    assert (tmp_path / "cut" / "resume" / "state.json").exists()
    capsys.readouterr()
    resumed = train_main(args + ["--out", str(tmp_path / "cut"), "--resume"])
    assert "resuming" in capsys.readouterr().out
    assert [e["loss"] for e in resumed["epochs"]] == [e["loss"] for e in whole["epochs"]]
    assert [e.get("valid_NDCG@10") for e in resumed["epochs"]] == [e.get("valid_NDCG@10") for e in whole["epochs"]]
    assert resumed["test"] == whole["test"] and resumed["best_epoch"] == whole["best_epoch"]
    assert resumed["stopped"] == whole["stopped"] and len(resumed["epochs"]) == len(whole["epochs"])
    assert resumed["resumed"][0]["after_epoch"] == 2
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("whole", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "cut" / "resume").exists()


@pytest.mark.usefixtures("fake_clock")
def test_resume_refusals(tmp_path, capsys):
    """--resume needs a resume state in --out, the run's own settings (a changed one is named), and no --overwrite;
    a run stopped by its budget keeps its state and says how to continue."""
    data = _markov_file(tmp_path / "markov.tsv", n_users=30)
    args = ["--model", "gru4rec", "--data", str(data), "--max-len", "20", "--kcore", "0", "--no-progress",
            "--epochs", "3", "--set", *TINY["gru4rec"], "--out", str(tmp_path / "r")]
    with refused(capsys, r"--resume: .* holds no resume state"):
        train_main(args + ["--resume"])
    train_main(args + ["--max-minutes", "0.0001"])                        # the budget ends it after epoch 1
    assert "state is kept" in capsys.readouterr().out and (tmp_path / "r" / "resume").is_dir()
    with refused(capsys, r"these differ: lr: the run has None, given 0.01"):
        train_main(args + ["--resume", "--lr", "0.01", "--max-minutes", "5"])
    with refused(capsys, "--overwrite would replace it"):
        train_main(args + ["--resume", "--overwrite"])
    # the same file, edited since (its last user gone): not the run's data (it would have continued on it)
    original = data.read_text()
    lines = original.splitlines()
    last_user = lines[-1].split("\t")[0]
    data.write_text("\n".join(x for x in lines if x.split("\t")[0] != last_user) + "\n")
    with refused(capsys, r"--resume: .*markov.tsv is not the data the run trained on \(users: the run's 30, now 29",
                 code=1):
        train_main(args + ["--resume", "--max-minutes", "5"])
    data.write_text(original)
    log = train_main(args + ["--resume", "--max-minutes", "5"])          # a larger budget: the run goes on
    assert len(log["epochs"]) == 3 and log["stopped"] == "max epochs" and not (tmp_path / "r" / "resume").exists()


def test_a_resume_state_saved_before_time_ties_existed_resumes_with_the_default():
    """A run saved before ``time_ties`` was a setting ran with file order: resuming it with the default is allowed,
    with --time-ties item it is refused, naming the setting."""
    from zoo.train_state import check_settings

    saved = {"model_type": "mamba4rec", "kcore": "auto", "max_minutes": 10}
    check_settings(saved, {"model_type": "mamba4rec", "kcore": "auto", "max_minutes": 20, "time_ties": "file"})
    with pytest.raises(ValueError, match="time_ties: the run has 'file', given 'item'"):
        check_settings(saved, {"model_type": "mamba4rec", "kcore": "auto", "max_minutes": 10, "time_ties": "item"})


def test_out_paths_and_config_values_that_would_fail_late_are_refused_before_any_work(tmp_path, capsys):
    """--out that is a file (or under one, or a symbolic link to nothing), a --set value of the wrong type and an
    infinite --lr are usage errors before the first epoch (were FileExistsError/NotADirectoryError and TypeError
    tracebacks, and a run that failed after epoch 1 leaving an empty --out)."""
    data = _markov_file(tmp_path / "m.tsv", n_users=20, length=(6, 10))
    (tmp_path / "afile").write_text("keep")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    base = ["--model", "gru4rec", "--data", str(data), "--kcore", "0", "--epochs", "1", "--no-progress"]
    for out, what in ((tmp_path / "afile", "--out .*afile is a file, not a folder"),
                      (tmp_path / "afile" / "o", "afile is a file, not a folder"),
                      (data, "--out .*m.tsv is the input --data"),
                      (tmp_path / "dangling", "--out .*dangling: a symbolic link to nothing")):
        with refused(capsys, what):
            train_main(base + ["--out", str(out)])
    for extra, what in ((["--set", "num_layers=null"], r"GRU4RecModel cannot be built with these config values "
                                                       r"\(num_layers=None, "),
                        (["--set", "hidden_size=[8]"], r"cannot be built .*hidden_size=\[8\]"),
                        (["--lr", "inf"], "lr must be >= 0 and finite, got inf"),
                        (["--weight-decay", "inf"], "weight_decay must be >= 0 and finite, got inf")):
        with refused(capsys, what):
            train_main(base + ["--out", str(tmp_path / "o"), *extra])
    assert not (tmp_path / "o").exists() and (tmp_path / "afile").read_text() == "keep"
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.usefixtures("fake_clock")
def test_resume_from_a_damaged_state_is_refused_naming_it(tmp_path, capsys):
    """--resume with a truncated resume/model.safetensors or a state.json without its progress: a usage error naming
    the resume folder before any epoch (were a SafetensorError and a KeyError traceback)."""
    import shutil

    data = _markov_file(tmp_path / "markov.tsv", n_users=30)
    args = ["--model", "gru4rec", "--data", str(data), "--max-len", "20", "--kcore", "0", "--no-progress",
            "--epochs", "3", "--set", *TINY["gru4rec"]]
    train_main(args + ["--out", str(tmp_path / "r"), "--max-minutes", "0.0001"])      # budget: state kept
    for name in ("cut", "noprogress"):
        shutil.copytree(tmp_path / "r", tmp_path / name)
    weights = tmp_path / "cut" / "resume" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    state = json.loads((tmp_path / "noprogress" / "resume" / "state.json").read_text())
    del state["progress"]
    (tmp_path / "noprogress" / "resume" / "state.json").write_text(json.dumps(state))
    capsys.readouterr()
    for name, what in (("cut", r"cut.resume: the resume state cannot be restored \(SafetensorError"),
                       ("noprogress", r"noprogress.resume: incomplete resume state \(state.json lacks progress\)")):
        before = (tmp_path / name / "train_log.json").read_text()
        with refused(capsys, what, code=1):
            train_main(args + ["--out", str(tmp_path / name), "--resume", "--max-minutes", "5"])
        assert (tmp_path / name / "train_log.json").read_text() == before


def test_train_applies_target_weighting(tmp_path, monkeypatch):
    """--loss-weighting target reaches the training loop: the per-batch loss scale varies with the batch's targets
    and averages about 1 (a loop that ignored the flag would scale every batch by 1)."""
    import numpy as np

    import zoo.train as T

    real, scales = T.loss_scale, []
    monkeypatch.setattr(T, "loss_scale", lambda *a: scales.append(real(*a)) or scales[-1])
    torch.set_num_threads(1)
    data = _markov_file(tmp_path / "m.tsv", n_users=80, length=(30, 60))
    T.main(["--data", str(data), "--epochs", "1", "--max-len", "12", "--batch-size", "16", "--kcore", "0",
            "--no-progress", "--model", "sasrec", "--out", str(tmp_path / "s"), "--window-stride", "4",
            "--loss-weighting", "target", "--set", *TINY["sasrec"]])
    assert len(set(scales)) > 1 and abs(np.mean(scales) - 1) < 0.2, scales


# --- mutation audit round 6 (D): train loop, train_state and zoo.cli guards -------------------------------------


def test_lr_factor_clamps_a_negative_progress_to_the_start():
    """A progress below 0 (clamped) is the schedule's start: the unclamped linear factor would exceed 1 (a learning
    rate above the base) and the cosine one would come back down."""
    from zoo.train import lr_factor

    assert lr_factor("linear", -0.5) == 1.0 and lr_factor("cosine", -1.0) == 1.0 and lr_factor("constant", -3) == 1.0


def test_adam_applies_its_weight_decay():
    """``--optimizer adam --weight-decay W``: Adam's (L2) decay is W on every parameter, not silently 0."""
    from zoo.train import build_model, make_optimizer

    model = build_model("gru4rec", 30, dict(embedding_size=8, hidden_size=8))
    opt = make_optimizer(model, "adam", 2e-3, 0.25)
    assert isinstance(opt, torch.optim.Adam) and not isinstance(opt, torch.optim.AdamW)
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(2e-3, 0.25)]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        make_optimizer(model, "sgd", 1e-3, 0.0)


@pytest.mark.usefixtures("one_thread")
def test_lrurec_preset_clips_at_every_step(tmp_path, monkeypatch):
    """LRURec's official recipe (AdamW, weight decay 0.01, grad clip 5) applies without flags: the gradient norm is
    clipped to 5 before every optimizer step (a loop reading the wrong key, or a preset without its clip, would
    train unclipped without a word)."""
    seen = _recorded_lrs(monkeypatch)                                   # one entry per optimizer step
    norms, real = [], torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda params, max_norm, *a, **k: norms.append(max_norm) or real(params, max_norm, *a, **k))
    data = _markov_file(tmp_path / "m.tsv", n_users=30, length=(8, 14))
    log = train_main(["--model", "lrurec", "--data", str(data), "--out", str(tmp_path / "l"), "--epochs", "1",
                      "--max-len", "20", "--batch-size", "8", "--kcore", "0", "--no-progress",
                      "--set", "hidden_size=16"])
    assert log["train"] == {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "batch_size": 8, "clip": 5.0,
                            "lr_schedule": "constant"}
    assert len(seen) >= 3 and norms == [5.0] * len(seen)


@pytest.mark.usefixtures("one_thread")
def test_zero_overrides_replace_the_preset(tmp_path, monkeypatch):
    """LRURec's preset clips at 5 with weight decay 0.01: ``--clip 0 --weight-decay 0`` turn both off (a 0 taken for
    'not given' would keep the preset's), and its untouched fields stay its official recipe."""
    norms = []
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: norms.append(a[1]))
    data = _markov_file(tmp_path / "m.tsv", n_users=30, length=(8, 14))
    log = train_main(["--data", str(data), "--epochs", "1", "--max-len", "20", "--kcore", "0", "--no-progress",
                      "--model", "lrurec", "--out", str(tmp_path / "l"), "--clip", "0", "--weight-decay", "0",
                      "--set", "hidden_size=16"])
    assert log["train"] == {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 128, "clip": 0.0,
                            "lr_schedule": "constant"}
    assert norms == []


def _scripted_evaluations(monkeypatch, valid_ndcgs):
    """Replace zoo.train's evaluations: validation ``i`` returns NDCG@10 ``valid_ndcgs[i]``; the final test returns
    0.5 everywhere. Returns the calls, each with a CPU copy of the weights evaluated, the examples' count and the
    keyword arguments."""
    import zoo.evaluate

    calls = []

    def fake(model, examples, ks=(5, 10, 20), **kw):
        calls.append({"weights": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                      "n": len(examples), "ks": tuple(ks), **kw})
        if tuple(ks) == (10,):
            v = valid_ndcgs[sum(c["ks"] == (10,) for c in calls) - 1]
            return {"NDCG@10": v, "HR@10": v}
        return {f"{m}@{k}": 0.5 for m in ("HR", "NDCG") for k in ks}

    monkeypatch.setattr(zoo.evaluate, "evaluate_model", fake)
    return calls


@pytest.mark.usefixtures("one_thread")
def test_early_stopping_counts_from_the_last_gain_and_the_test_uses_the_best_checkpoint(tmp_path, monkeypatch):
    """Scripted validations 0.10, 0.05, 0.20, 0.15, 0.12 with patience 2: the gain at epoch 3 resets the count, so the
    run stops after epoch 5 (not 4); the checkpoint kept, and tested, holds epoch 3's weights (not the last epoch's,
    and not a checkpoint rewritten at every validation)."""
    calls = _scripted_evaluations(monkeypatch, [0.10, 0.05, 0.20, 0.15, 0.12, 0.9, 0.9, 0.9])
    data = _markov_file(tmp_path / "m.tsv", n_users=30, length=(8, 14))
    log = train_main(["--model", "gru4rec", "--data", str(data), "--out", str(tmp_path / "o"), "--epochs", "8",
                      "--patience", "2", "--max-len", "20", "--batch-size", "8", "--kcore", "0", "--no-progress",
                      "--set", *TINY["gru4rec"]])
    assert [r["valid_NDCG@10"] for r in log["epochs"]] == [0.10, 0.05, 0.20, 0.15, 0.12]
    assert log["best_epoch"] == 3 and log["best_valid_NDCG10"] == 0.20
    assert log["stopped"] == "early stopping: no valid NDCG@10 gain for 2 epochs"
    valid, test = calls[:-1], calls[-1]
    assert [c["ks"] for c in valid] == [(10,)] * 5 and test["ks"] == (5, 10, 20)
    best, last = valid[2]["weights"], valid[4]["weights"]
    assert not all(torch.equal(best[k], last[k]) for k in best)              # the weights did move after epoch 3
    assert test["weights"].keys() == best.keys() and all(torch.equal(test["weights"][k], best[k]) for k in best)
    assert log["test"]["NDCG@10"] == 0.5


@pytest.mark.usefixtures("one_thread")
def test_exclude_history_and_valid_users_reach_every_evaluation(tmp_path, monkeypatch):
    """``--exclude-history`` masks the history in every validation and in the final test (and the log says so);
    ``--valid-users N`` validates on the first N users, and the test still ranks every user."""
    calls = _scripted_evaluations(monkeypatch, [0.1, 0.2])
    data = _markov_file(tmp_path / "m.tsv", n_users=30, length=(8, 14))
    log = train_main(["--model", "gru4rec", "--data", str(data), "--out", str(tmp_path / "o"), "--epochs", "2",
                      "--max-len", "20", "--batch-size", "8", "--kcore", "0", "--no-progress", "--exclude-history",
                      "--valid-users", "7", "--set", *TINY["gru4rec"]])
    assert [(c["ks"], c["n"], c.get("exclude_history")) for c in calls] == [
        ((10,), 7, True), ((10,), 7, True), ((5, 10, 20), 30, True)]
    assert log["protocol"]["history_masked"] is True


@pytest.mark.usefixtures("one_thread")
def test_a_time_budget_ending_between_validations_validates_and_stops_there(tmp_path, monkeypatch):
    """``--eval-every 100`` with a 1-minute budget (fake clock, 1 s per read): the epoch on which the budget ends is
    validated and the run stops there, well before its 30 epochs (an epoch skipped as 'not a validation epoch' would
    let the run go on to the last epoch)."""
    import zoo.train as T

    monkeypatch.setattr(T, "time", _Clock())
    data = _markov_file(tmp_path / "m.tsv", n_users=20, length=(6, 10))
    log = train_main(["--model", "gru4rec", "--data", str(data), "--out", str(tmp_path / "o"), "--epochs", "30",
                      "--eval-every", "100", "--max-minutes", "1", "--max-len", "20", "--kcore", "0",
                      "--no-progress", "--set", *TINY["gru4rec"]])
    n = len(log["epochs"])
    assert log["stopped"] == "time budget of 1.0 minutes reached" and 3 < n < 30, (n, log["stopped"])
    assert [r["epoch"] for r in log["epochs"] if "valid_NDCG@10" in r] == [n] and log["best_epoch"] == n


@pytest.mark.usefixtures("one_thread", "fake_clock")
def test_a_resumed_run_counts_the_time_already_used_against_its_budget(tmp_path):
    """The resume state's ``elapsed_s`` (here set to 100 minutes) counts: resumed with a 50-minute budget, the run
    trains one more epoch, stops for its budget and logs >= 100 training minutes (a clock restarted at the resume
    would run to the last epoch)."""
    data = _markov_file(tmp_path / "m.tsv", n_users=20, length=(6, 10))
    out = tmp_path / "r"
    args = ["--model", "gru4rec", "--data", str(data), "--max-len", "20", "--kcore", "0", "--no-progress",
            "--epochs", "4", "--set", *TINY["gru4rec"], "--out", str(out)]
    train_main(args + ["--max-minutes", "0.0001"])                       # the budget ends it after epoch 1
    state_file = out / "resume" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["progress"]["epoch"] == 1
    state["progress"].update(elapsed_s=6000.0, stopped=None)  # as if cut after epoch 1 (a stopped run trains no more)
    state_file.write_text(json.dumps(state))
    log = train_main(args + ["--resume", "--max-minutes", "50"])
    assert [r["epoch"] for r in log["epochs"]] == [1, 2]
    assert log["stopped"] == "time budget of 50.0 minutes reached" and log["train_minutes"] >= 100


@pytest.mark.usefixtures("one_thread")
def test_the_same_seed_trains_the_same_run_twice_and_another_seed_does_not(tmp_path):
    """``--seed`` fixes the initial weights and the batch shuffling: two runs in one process with the same seed are
    identical (a seed that missed torch or the shuffling generator would continue from the previous run's draws)."""
    from safetensors.torch import load_file

    data = _markov_file(tmp_path / "m.tsv", n_users=30, length=(8, 14))
    base = ["--model", "gru4rec", "--data", str(data), "--max-len", "20", "--kcore", "0", "--no-progress",
            "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--set", *TINY["gru4rec"]]
    logs = [train_main(base + ["--out", str(tmp_path / f"r{i}"), "--seed", s]) for i, s in enumerate("556")]
    losses = [[r["loss"] for r in log["epochs"]] for log in logs]
    assert losses[0] == losses[1] and losses[2] != losses[0], losses
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("r0", "r1"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_parse_overrides_keeps_an_equals_sign_in_the_value():
    assert parse_overrides(["note=a=b", " num_layers =2"]) == {"note": "a=b", "num_layers": 2}


def test_set_overrides_the_config_file(tmp_path, monkeypatch):
    """``--config FILE --set k=v``: --set is applied over the file's fields (the file gives the base)."""
    import zoo.train as T

    seen = {}
    monkeypatch.setattr(T, "train", lambda *a, **kw: seen.update(kw) or {})
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"hidden_size": 8, "num_layers": 2}))
    T.main(["--model", "gru4rec", "--data", "d.tsv", "--out", str(tmp_path / "o"), "--config", str(cfg),
            "--set", "hidden_size=16"])
    assert seen["config_overrides"] == {"hidden_size": 16, "num_layers": 2}



def test_repeated_set_flags_add_up_and_a_key_given_twice_is_refused(tmp_path, monkeypatch, capsys):
    """``--set a=1 --set b=2`` applies both (the second --set replaced the first's values, silently: the run trained
    hidden_size 64 while its logged command showed 16); a key given twice with different values is a usage error
    naming it, the same value twice is allowed."""
    import zoo.train as T

    seen = {}
    monkeypatch.setattr(T, "train", lambda *a, **kw: seen.update(kw) or {})
    base = ["--model", "gru4rec", "--data", "d.tsv", "--out", str(tmp_path / "o")]
    T.main(base + ["--set", "hidden_size=16", "--set", "num_layers=1", "embedding_size=8", "--set", "num_layers=1"])
    assert seen["config_overrides"] == {"hidden_size": 16, "num_layers": 1, "embedding_size": 8}
    for twice in (["--set", "hidden_size=16", "--set", "hidden_size=32"],
                  ["--set", "hidden_size=16", "hidden_size=16.0"]):
        with refused(capsys, r"--set gives hidden_size twice, hidden_size=16 and hidden_size=(32|16\.0): give it once"):
            T.main(base + twice)


@pytest.mark.usefixtures("one_thread")
def test_max_len_and_a_config_window_that_disagree_are_refused(tmp_path, capsys):
    """``--max-len`` with a different ``max_seq_length`` in ``--config`` or ``--set`` is a usage error naming both (the
    config's silently won); the same value is allowed, and without --max-len the config's window applies."""
    data = _markov_file(tmp_path / "m.tsv", n_users=20, length=(6, 10))
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"max_seq_length": 12}))
    base = ["--model", "gru4rec", "--data", str(data), "--kcore", "0", "--epochs", "1", "--no-progress",
            "--set", *TINY["gru4rec"]]
    for extra in (["--config", str(cfg)], ["--set", "max_seq_length=12"]):
        with refused(capsys, r"--max-len 20 and max_seq_length=12 \(--set or --config\) disagree"):
            train_main(base + ["--out", str(tmp_path / "x"), "--max-len", "20", *extra])
    assert not (tmp_path / "x").exists()
    train_main(base + ["--out", str(tmp_path / "same"), "--max-len", "12", "--config", str(cfg)])
    train_main(base + ["--out", str(tmp_path / "file"), "--config", str(cfg)])
    for d in ("same", "file"):
        assert json.loads((tmp_path / d / "config.json").read_text())["max_seq_length"] == 12


def test_config_fields_the_run_sets_from_its_data_are_refused(tmp_path, capsys):
    """``n_items`` (the vocabulary's size) and ``item_vocab_file`` in ``--set`` or ``--config`` are a usage error
    naming them and their flag (``--set n_items=2000`` was a TypeError traceback in build_model), and a ValueError in
    the API."""
    import zoo.train as T

    data = _markov_file(tmp_path / "m.tsv", n_users=20, length=(6, 10))
    base = ["--model", "sasrec", "--data", str(data), "--out", str(tmp_path / "o"), "--kcore", "0"]
    with refused(capsys, r"error: --set: n_items is set by the run from its data, not by the model config"):
        train_main(base + ["--set", "n_items=2000"])
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"item_vocab_file": "v.json", "n_items": 5}))
    with refused(capsys, rf"error: --config {re.escape(str(cfg))}: n_items and item_vocab_file are set by the run"):
        train_main(base + ["--config", str(cfg)])
    with pytest.raises(ValueError, match="--set: n_items is set by the run"):
        T.train("sasrec", str(data), str(tmp_path / "o"), kcore=0, config_overrides={"n_items": 2000})
    assert not (tmp_path / "o").exists()


def _cut_in_the_test(monkeypatch):
    """Make the final test evaluation (ks 5, 10, 20) raise KeyboardInterrupt, as a Ctrl-C there."""
    import zoo.evaluate

    real = zoo.evaluate.evaluate_model

    def cut(model, examples, ks=(10,), **kw):
        if tuple(ks) == (5, 10, 20):
            raise KeyboardInterrupt
        return real(model, examples, ks=ks, **kw)
    monkeypatch.setattr(zoo.evaluate, "evaluate_model", cut)


@pytest.mark.usefixtures("one_thread", "fake_clock")
@pytest.mark.parametrize("extra, stopped, n_epochs", [
    (["--lr", "0", "--patience", "2"], "early stopping: no valid NDCG@10 gain for 2 epochs", 3),
    (["--max-minutes", "0.0001"], "time budget of 0.0001 minutes reached", 1),
    ([], "max epochs", 4)])
def test_a_run_cut_in_its_test_evaluation_resumes_straight_to_the_test(tmp_path, monkeypatch, capsys, extra,
                                                                       stopped, n_epochs):
    """A run that stopped (early stopping, its time budget, its last epoch) and was cut (Ctrl-C) while testing its
    best checkpoint: --resume tests that checkpoint and trains no further epoch (it went on with the next epoch, which
    the uncut run never ran), ending as the uncut run did -- same epochs, stop reason, checkpoint and test metrics. A
    state saved before the stop reason was kept, cut after early stopping, does the same."""
    from safetensors.torch import load_file

    data = _markov_file(tmp_path / "m.tsv", n_users=30, length=(8, 14))
    args = ["--model", "gru4rec", "--data", str(data), "--max-len", "20", "--kcore", "0", "--no-progress",
            "--epochs", "4", "--batch-size", "8", "--device", "cpu", "--set", *TINY["gru4rec"], *extra]
    whole = train_main(args + ["--out", str(tmp_path / "whole")])
    assert whole["stopped"] == stopped and len(whole["epochs"]) == n_epochs, whole["stopped"]
    outs = ["cut"] + (["old"] if "--patience" in extra else [])
    for d in outs:
        with monkeypatch.context() as m:
            _cut_in_the_test(m)
            with pytest.raises(KeyboardInterrupt):
                train_main(args + ["--out", str(tmp_path / d)])
    saved = json.loads((tmp_path / "cut" / "resume" / "state.json").read_text())["progress"]
    if "old" in outs:
        state_file = tmp_path / "old" / "resume" / "state.json"
        state = json.loads(state_file.read_text())
        state["progress"].pop("stopped", None)
        state_file.write_text(json.dumps(state))
    for d in outs:
        capsys.readouterr()
        resumed = train_main(args + ["--out", str(tmp_path / d), "--resume"])
        said = capsys.readouterr().out
        assert [r["epoch"] for r in resumed["epochs"]] == [r["epoch"] for r in whole["epochs"]]
        assert resumed["stopped"] == whole["stopped"] and resumed["best_epoch"] == whole["best_epoch"]
        assert resumed["test"] == whole["test"]
        a, b = (load_file(tmp_path / x / "model.safetensors") for x in ("whole", d))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert (tmp_path / d / "resume").exists() == ("--max-minutes" in extra)     # a budget-stopped run keeps it
        assert f"the run had stopped ({stopped}): testing its best checkpoint" in said, said
    assert saved["stopped"] == stopped and saved["epoch"] == n_epochs
    if "--max-minutes" in extra:          # a budget with time left goes on from there, to the last epoch
        log = train_main(args[:-2] + ["--out", str(tmp_path / "cut"), "--resume", "--max-minutes", "5"])
        assert len(log["epochs"]) == 4 and log["stopped"] == "max epochs"


def test_patience_is_documented_against_recboles_stopping_step():
    """RecBole stops at the (stopping_step + 1)-th validation without a gain (``cur_step > max_step``), the zoo at the
    patience-th: the docs say so (they claimed patience counted "as RecBole's stopping_step does")."""
    import zoo.train as T

    doc = " ".join(T.train.__doc__.split())
    assert "as RecBole's ``stopping_step`` does" not in doc
    assert "``patience`` P matches ``stopping_step`` P - 1" in doc
    assert "N = S + 1" in " ".join(T.build_parser().format_help().split())


def test_a_typo_in_the_config_file_is_named_as_the_files(tmp_path, capsys):
    """A field of ``--config FILE`` that the model's config lacks is a usage error naming the file (it was reported
    as a ``--set`` field); an unknown model with a config file is the unknown-model error."""
    import zoo.train as T

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"hiden_size": 8}))
    base = ["--data", "d.tsv", "--out", str(tmp_path / "o"), "--config", str(cfg)]
    with pytest.raises(SystemExit):
        T.main(["--model", "sasrec", *base])
    assert re.search(rf"error: --config {re.escape(str(cfg))}: \['hiden_size'\] not fields of SASRecConfig",
                     capsys.readouterr().err)
    with pytest.raises(SystemExit):
        T.main(["--model", "nosuchrec", *base])
    assert "error: --model: unknown model type 'nosuchrec'" in capsys.readouterr().err


def test_resume_settings_default_only_what_the_state_lacks():
    """A state saved with ``time_ties='item'`` keeps it: resuming with 'item' is allowed and with 'file' refused (the
    default for states saved before the setting existed must not replace a saved value)."""
    from zoo.train_state import check_settings

    saved = {"model_type": "sasrec", "time_ties": "item", "max_minutes": 5}
    check_settings(saved, {"model_type": "sasrec", "time_ties": "item", "max_minutes": 9})
    with pytest.raises(ValueError, match="time_ties: the run has 'item', given 'file'"):
        check_settings(saved, {"model_type": "sasrec", "time_ties": "file", "max_minutes": 5})


def test_resume_dir_prefers_the_current_state_and_falls_back_to_old(tmp_path):
    """``resume/`` is the last epoch's state; ``resume.old/`` (left by a swap cut between its two renames) is used only
    when ``resume/`` holds no state."""
    from zoo.train_state import resume_dir

    assert resume_dir(tmp_path) is None
    (tmp_path / "resume.old").mkdir()
    (tmp_path / "resume.old" / "state.json").write_text("{}")
    assert resume_dir(tmp_path) == str(tmp_path / "resume.old")
    (tmp_path / "resume").mkdir()
    assert resume_dir(tmp_path) == str(tmp_path / "resume.old")            # resume/ without its state.json
    (tmp_path / "resume" / "state.json").write_text("{}")
    assert resume_dir(tmp_path) == str(tmp_path / "resume")


def test_a_resume_state_of_another_format_version_is_refused(tmp_path):
    from safetensors.torch import save_file

    from zoo.train_state import FORMAT_VERSION, load

    save_file({"rng.torch": torch.get_rng_state()}, str(tmp_path / "optimizer.safetensors"))
    state = {k: {} for k in ("settings", "optimizer", "shuffle_generator", "log")}
    state.update(progress={"epoch": 1, "best": 0.1, "best_epoch": 1, "bad": 0, "elapsed_s": 1.0},
                 python_random=[], numpy_global=[])
    for version in (FORMAT_VERSION + 1, None):
        (tmp_path / "state.json").write_text(json.dumps({**state, "format_version": version}))
        with pytest.raises(ValueError, match=f"resume state format {version}, this zoo reads {FORMAT_VERSION}"):
            load(tmp_path)
    (tmp_path / "state.json").write_text(json.dumps({**state, "format_version": FORMAT_VERSION}))
    assert load(tmp_path)[0]["progress"]["epoch"] == 1


def test_written_whole_files_are_readable_by_others(tmp_path):
    """``written_whole`` replaces the file with the umask's mode (0644 under umask 022, not mkstemp's 0600, which hid
    train_log.json and the CLI outputs from other users), creating the folder; an error keeps the old file and leaves
    no temporary one."""
    import os

    from zoo.cli import written_whole

    path = tmp_path / "sub" / "log.json"
    old = os.umask(0o022)
    try:
        with written_whole(path) as f:
            f.write("new")
    finally:
        os.umask(old)
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o644
    with pytest.raises(RuntimeError), written_whole(path) as f:
        f.write("half")
        raise RuntimeError
    assert path.read_text() == "new" and [p.name for p in path.parent.iterdir()] == ["log.json"]


def test_written_whole_keeps_a_files_mode_and_writes_through_a_symbolic_link(tmp_path):
    """A replaced output keeps its own mode (a 0600 file was made 0644, readable by all), a new one gets the umask's
    (0600 under umask 077), and a symbolic link is written through: its target gets the new text, the link stays (it
    was replaced by a regular file, leaving the shared target as it was)."""
    import os

    from zoo.cli import written_whole

    private = tmp_path / "priv.json"
    private.write_text("old")
    private.chmod(0o600)
    with written_whole(private) as f:
        f.write("new")
    assert private.read_text() == "new" and private.stat().st_mode & 0o777 == 0o600
    old = os.umask(0o077)
    try:
        with written_whole(tmp_path / "fresh.json") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "fresh.json").stat().st_mode & 0o777 == 0o600
    (tmp_path / "shared").mkdir()
    target = tmp_path / "shared" / "pop.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    with written_whole(link) as f:
        f.write("new")
    assert link.is_symlink() and target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.json", "link.json", "priv.json", "shared"]
    assert [p.name for p in target.parent.iterdir()] == ["pop.json"]


def test_check_outputs_refuses_an_out_folder_that_cannot_be_written_in():
    """An existing --out folder that cannot be written in (``/proc``, whose parent can) is refused before any work."""
    from zoo.cli import check_outputs

    with pytest.raises(ValueError, match=r"--out /proc: cannot write in /proc \("):
        check_outputs({"--out": "/proc"}, folders=True)


def test_warmup_factor():
    from zoo.train import warmup_factor

    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0 and warmup_factor(0, 1) == 1.0
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        warmup_factor(0, -1)


@pytest.mark.usefixtures("one_thread")
def test_warmup_ramps_the_schedule_then_leaves_it(tmp_path, monkeypatch, capsys):
    """--warmup-steps N: step s runs at base * (s + 1) / N * schedule for s < N, then the schedule alone (a constant
    schedule included); it is logged, stated on the card's optimiser line, part of the settings a --resume must match
    (a state saved before the setting existed ran without warmup), and a negative count is a usage error."""
    from zoo import hub
    from zoo.train_state import check_settings

    data = _markov_file(tmp_path / "markov.tsv", n_users=40)
    args = ["--model", "gru4rec", "--data", str(data), "--max-len", "30", "--kcore", "0", "--batch-size", "8",
            "--lr", "1e-2", "--epochs", "2", "--no-progress", "--set", *TINY["gru4rec"]]
    seen = _recorded_lrs(monkeypatch)
    log = train_main(args + ["--out", str(tmp_path / "c"), "--warmup-steps", "3"])
    assert seen[:4] == pytest.approx([1e-2 / 3, 2e-2 / 3, 1e-2, 1e-2]) and seen[4:] == pytest.approx([1e-2] * (len(seen) - 4))
    assert log["train"]["warmup_steps"] == 3
    seen.clear()
    train_main(args + ["--out", str(tmp_path / "l"), "--warmup-steps", "4", "--lr-schedule", "linear"])
    n = len(seen)
    assert seen == pytest.approx([1e-2 * min(1, (s + 1) / 4) * (1 - s / n) for s in range(n)])
    assert "lr 0.01 (linear warmup over 4 steps, linear decay to 0)" in hub._optimiser_text(
        {"optimizer": "adam", "lr": 0.01, "lr_schedule": "linear", "warmup_steps": 4, "weight_decay": 0,
         "batch_size": 8})
    assert "lr 0.01 (linear warmup over 4 steps)," in hub._optimiser_text(
        {"optimizer": "adam", "lr": 0.01, "lr_schedule": "constant", "warmup_steps": 4, "weight_decay": 0,
         "batch_size": 8})
    old_state = {"model_type": "gru4rec", "time_ties": "file"}                       # saved before warmup existed
    check_settings(old_state, {**old_state, "warmup_steps": 0})
    with pytest.raises(ValueError, match="warmup_steps: the run has 0, given 5"):
        check_settings(old_state, {**old_state, "warmup_steps": 5})
    with refused(capsys, "--warmup-steps: expected an int >= 0, got '-1'"):
        train_main(args + ["--out", str(tmp_path / "x"), "--warmup-steps", "-1"])


def test_a_run_that_does_not_beat_the_most_popular_ranking_says_so(tmp_path, capsys):
    """The "HR@10 0.0096" failure (a model that learnt nothing of order) is named at the end of the run: the log keeps
    the most-popular baseline's validation NDCG@10 and a best epoch at or below it prints a warning."""
    torch.set_num_threads(1)
    data = _markov_file(tmp_path / "markov.tsv", n_users=40, length=(12, 20))
    log = train_main(["--model", "gru4rec", "--data", str(data), "--out", str(tmp_path / "g"), "--epochs", "1",
                      "--max-len", "20", "--lr", "1e-7", "--kcore", "0", "--no-progress",
                      "--set", *TINY["gru4rec"]])
    out = capsys.readouterr().out
    assert f"most-popular baseline: valid NDCG@10 {log['popularity_valid_NDCG10']:.4f}" in out
    assert log["best_valid_NDCG10"] <= log["popularity_valid_NDCG10"], log
    assert "WARNING: the best epoch (valid NDCG@10" in out and "does not beat the most-popular baseline" in out


def test_the_recorded_command_quotes_a_path_with_a_space(tmp_path):
    """The log's command re-runs as given: shlex.split of it gives the argv back (a data path with a space)."""
    import shlex

    data = _markov_file(tmp_path / "my data.tsv", n_users=20)
    argv = ["--model", "gru4rec", "--data", str(data), "--out", str(tmp_path / "run 1"), "--epochs", "1",
            "--max-len", "20", "--kcore", "0", "--no-progress", "--set", *TINY["gru4rec"]]
    log = train_main(argv)
    assert shlex.split(log["command"]) == ["python", "-m", "zoo.train", *argv]


def _cut_at_save(monkeypatch, n, after=True):
    """Interrupt ``zoo.train`` (KeyboardInterrupt) at its ``n``-th resume-state save: after it is written
    (``after``), or before (a cut between a new best checkpoint and the state that goes with it)."""
    import zoo.train_state

    real_save, calls = zoo.train_state.save, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == n and not after:
            raise KeyboardInterrupt
        real_save(*a, **k)
        if len(calls) == n:
            raise KeyboardInterrupt
    monkeypatch.setattr(zoo.train_state, "save", interrupted)


@pytest.mark.usefixtures("one_thread")
def test_a_fresh_run_into_a_folder_holding_an_interrupted_runs_state_is_refused(tmp_path, monkeypatch, capsys):
    """A run cut before its first validation leaves only resume/ in --out (its only product): a new run there without
    a flag is refused, naming --resume and --overwrite, and the state is untouched (it was silently replaced by the
    new run's); --overwrite discards it; the interrupted run itself resumes."""
    data = _markov_file(tmp_path / "markov.tsv", n_users=30)
    out = tmp_path / "r"
    args = ["--model", "gru4rec", "--data", str(data), "--max-len", "20", "--kcore", "0", "--no-progress",
            "--epochs", "3", "--eval-every", "3", "--set", *TINY["gru4rec"], "--out", str(out)]
    _cut_at_save(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train_main(args)
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["resume"]
    state = (out / "resume" / "state.json").read_bytes()
    with refused(capsys, r"--out .*r already holds an interrupted run's resume state \(resume/\): pass --resume "
                         r"with that run's command to continue it, or --overwrite to discard it"):
        train_main(args + ["--lr", "0.01"])
    assert (out / "resume" / "state.json").read_bytes() == state
    (out / "resume").rename(out / "resume.old")                     # a swap cut between its renames: the same
    with refused(capsys, r"already holds an interrupted run's resume state \(resume.old/\)"):
        train_main(args + ["--lr", "0.01"])
    (out / "resume.old").rename(out / "resume")
    log = train_main(args + ["--resume"])
    assert log["resumed"][0]["after_epoch"] == 2 and log["stopped"] == "max epochs"


@pytest.mark.usefixtures("one_thread", "fake_clock")
def test_overwrite_discards_the_old_runs_state_and_resume_checks_the_checkpoint(tmp_path, monkeypatch, capsys):
    """--overwrite: the new run removes the old run's resume state before its first epoch, so a new run cut after its
    first checkpoint (before its own state) is not resumed from the old run's state with the new weights (it was:
    a finished-looking log of the old run's settings, tested on the new weights); --resume then says the run was
    interrupted before its first state and to start it again with --overwrite (it said "the run finished"). A state
    whose checkpoint was replaced since (another run, a copy) is refused, naming both."""
    import shutil

    data = _markov_file(tmp_path / "markov.tsv", n_users=30)
    args = ["--model", "gru4rec", "--data", str(data), "--max-len", "20", "--kcore", "0", "--no-progress",
            "--epochs", "3", "--set", *TINY["gru4rec"]]
    out = str(tmp_path / "ov")
    train_main(args + ["--out", out, "--max-minutes", "0.0001"])                 # budget-stopped: state kept
    assert (tmp_path / "ov" / "resume").is_dir()
    kept = tmp_path / "kept"
    shutil.copytree(tmp_path / "ov", kept)
    _cut_at_save(monkeypatch, 1, after=False)
    with pytest.raises(KeyboardInterrupt):
        train_main(args + ["--out", out, "--overwrite", "--lr", "0.01"])
    monkeypatch.undo()
    assert not (tmp_path / "ov" / "resume").exists()
    with refused(capsys, r"--resume: .*ov holds no resume state: its run was interrupted before its first resume state "
                         r"was saved \(its train_log.json has 1 epoch\(s\) and no \"stopped\"\), so it cannot be "
                         r"continued: start it again with --overwrite"):
        train_main(args + ["--out", out, "--max-minutes", "0.0001", "--resume"])
    # the old state beside the new run's checkpoint (a copy, or a run of an older zoo): refused, naming both
    shutil.copytree(kept / "resume", tmp_path / "ov" / "resume")
    with refused(capsys, r"--resume: .*ov.model.safetensors \(sha256 [0-9a-f]{12}\) is not the checkpoint the resume "
                         r"state .*ov.resume was saved with \(sha256 [0-9a-f]{12}\): another run or a copy", code=1):
        train_main(args + ["--out", out, "--max-minutes", "0.0001", "--resume"])
    # a finished run: nothing to resume
    done = train_main(args + ["--out", str(tmp_path / "done"), "--epochs", "1"])
    with refused(capsys, r"--resume: .*done holds no resume state: its run finished \(max epochs\)"):
        train_main(args + ["--out", str(tmp_path / "done"), "--epochs", "1", "--resume"])
    assert done["stopped"] == "max epochs"
    # the kept run, whose checkpoint is its own, still resumes
    log = train_main(args + ["--out", str(kept), "--max-minutes", "5", "--resume"])
    assert len(log["epochs"]) == 3 and log["stopped"] == "max epochs"


@pytest.mark.usefixtures("one_thread")
def test_a_run_cut_between_a_new_best_checkpoint_and_its_state_resumes(tmp_path, monkeypatch, capsys):
    """The checkpoint check does not refuse the run's own newer checkpoint: cut after epoch 2 wrote its best
    checkpoint but before epoch 2's state was saved, --resume says so, trains epoch 2 again and ends as the run left
    alone."""
    data = _markov_file(tmp_path / "markov.tsv", n_users=40)
    args = ["--model", "gru4rec", "--data", str(data), "--max-len", "20", "--kcore", "0", "--no-progress",
            "--epochs", "3", "--batch-size", "8", "--lr", "5e-3", "--device", "cpu", "--set", *TINY["gru4rec"]]
    whole = train_main(args + ["--out", str(tmp_path / "whole")])
    assert whole["epochs"][1]["valid_NDCG@10"] > whole["epochs"][0]["valid_NDCG@10"]   # epoch 2 writes a checkpoint
    _cut_at_save(monkeypatch, 2, after=False)
    with pytest.raises(KeyboardInterrupt):
        train_main(args + ["--out", str(tmp_path / "cut")])
    monkeypatch.undo()
    capsys.readouterr()
    resumed = train_main(args + ["--out", str(tmp_path / "cut"), "--resume"])
    assert "is the run's epoch 2, written after its state was saved: that epoch is trained again" in \
        capsys.readouterr().out
    assert resumed["test"] == whole["test"] and resumed["best_epoch"] == whole["best_epoch"]
    assert [e["loss"] for e in resumed["epochs"]] == [e["loss"] for e in whole["epochs"]]


@pytest.mark.usefixtures("one_thread")
def test_a_card_folder_is_refused_as_out_even_with_overwrite(tmp_path, capsys):
    """A model card folder (eval_results.json, training_log.json or an ONNX export's state_spec.json) is never trained
    into: --overwrite replaced only the weights, leaving the old card's README, metrics and ONNX graphs beside them
    (its card then showed the new model type with the old metrics); the message points to a new folder + zoo.hub
    card."""
    data = _markov_file(tmp_path / "markov.tsv", n_users=20, length=(6, 10))
    base = ["--model", "gru4rec", "--data", str(data), "--max-len", "20", "--kcore", "0", "--no-progress",
            "--epochs", "1", "--set", *TINY["gru4rec"]]
    for i, marker in enumerate(("eval_results.json", "training_log.json", "onnx-window/state_spec.json")):
        card = tmp_path / f"card{i}"
        (card / marker).parent.mkdir(parents=True, exist_ok=True)
        (card / marker).write_text("{}")
        (card / "README.md").write_text("---\nlicense: apache-2.0\n---\n# card\n")
        before = sorted(p.relative_to(card) for p in card.rglob("*"))
        for extra in ([], ["--overwrite"]):
            with refused(capsys, rf"--out .*card{i} is a model card folder \({marker}\): .*even with --overwrite; "
                                 rf"train into a new folder, then card it with `python -m zoo.hub card --run NEW"):
                train_main(base + ["--out", str(card), *extra])
        assert sorted(p.relative_to(card) for p in card.rglob("*")) == before


def test_a_resume_state_save_after_a_cut_swap_keeps_a_whole_state(tmp_path, monkeypatch):
    """A swap cut between its renames leaves only resume.old/; the next save puts it back before removing anything,
    so a cut in that save's own swap still leaves a whole state (it removed resume.old/ first, leaving only
    resume.new/, which is never read)."""
    import os

    import numpy as np

    from zoo import train_state

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    gen = np.random.default_rng(0)

    def save(epoch):
        train_state.save(tmp_path, model, opt, gen, {"epoch": epoch, "best": 0.0, "best_epoch": 1, "bad": 0,
                                                     "elapsed_s": 1.0, "stopped": None}, {}, {})
    save(1)
    os.replace(tmp_path / "resume", tmp_path / "resume.old")       # the first rename of a swap, then the cut
    real = os.replace

    def cut_before_the_new_state(src, dst):
        if str(src).endswith("resume.new"):
            raise KeyboardInterrupt
        return real(src, dst)
    monkeypatch.setattr(train_state.os, "replace", cut_before_the_new_state)
    with pytest.raises(KeyboardInterrupt):
        save(2)
    monkeypatch.undo()
    folder = train_state.resume_dir(tmp_path)
    assert folder is not None and train_state.load(folder)[0]["progress"]["epoch"] == 1
    save(3)
    assert sorted(os.listdir(tmp_path)) == ["resume"]
    assert train_state.load(train_state.resume_dir(tmp_path))[0]["progress"]["epoch"] == 3


def test_a_catalogue_of_fewer_than_20_items_is_tested_at_the_cut_offs_it_has(tmp_path):
    """The final test of a run measured HR@5/10/20 whatever the catalogue: with 12 items HR@20 was 1 for every
    target; once evaluate_model refused cut-offs above the items ranked, such a run would have died after its
    training. It tests at the cut-offs the catalogue has (5 and 10 here), as zoo.evaluate's defaults do."""
    data = _markov_file(tmp_path / "small.tsv", n_users=40, n_items=12, length=(8, 14))
    log = train_main(["--model", "gru4rec", "--data", str(data), "--out", str(tmp_path / "g"), "--epochs", "1",
                      "--max-len", "20", "--kcore", "0", "--no-progress", "--threads", "1"])
    assert {"HR@5", "HR@10"} <= set(log["test"]) and "HR@20" not in log["test"], log["test"]


@contextlib.contextmanager
def _held_by_another_run(folder):
    """A live process holding ``folder``'s output lock (``export.fsutil.output_folder_lock``), as a run writing into
    it does; killed (SIGKILL) when the block ends."""
    import os
    import pathlib
    import subprocess
    import sys

    child = ("import sys, time\nfrom export.fsutil import output_folder_lock\n"
             "with output_folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)\n")
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])}
    p = subprocess.Popen([sys.executable, "-c", child, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "held"
        yield p
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def _tree(folder):
    """Every file under ``folder`` with its bytes, and every folder (relative paths)."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.mark.usefixtures("one_thread", "fake_clock")
def test_a_second_run_into_a_live_runs_out_is_refused_before_any_work(tmp_path, capsys):
    """Two runs into one --out both trained and exited 0, the last writer's files winning (and racing on resume/).
    A run into a folder another live run holds -- fresh, --overwrite or --resume -- now fails at once with exit 1 and
    one line naming the folder, before it reads its data (a missing --data is not reached) or anything in the folder
    (a live run's resume state is not called an interrupted run's); the live run's files stay byte-identical. Once
    the holder is gone the --resume proceeds. In the API: a RunSetupError (exit code 1) caused by FolderBusy."""
    from export.fsutil import FolderBusy
    from zoo.train import RunSetupError, train

    data = _markov_file(tmp_path / "markov.tsv", n_users=30)
    out = tmp_path / "live"
    args = ["--model", "gru4rec", "--max-len", "20", "--kcore", "0", "--no-progress", "--epochs", "2",
            "--set", *TINY["gru4rec"], "--out", str(out)]
    train_main(args + ["--data", str(data), "--max-minutes", "0.0001"])     # budget-stopped after epoch 1: resume/
    before = _tree(out)
    assert "resume/state.json" in before and "model.safetensors" in before
    capsys.readouterr()
    busy = rf"^python -m zoo\.train: error: --out {re.escape(str(out))}: another run is writing into it now"
    with _held_by_another_run(out):
        for extra in ([], ["--overwrite"], ["--resume", "--max-minutes", "5"]):
            for given in (data, tmp_path / "missing.tsv"):
                with pytest.raises(SystemExit) as e:
                    train_main(args + ["--data", str(given), *extra])
                err = capsys.readouterr().err
                assert e.value.code == 1 and re.search(busy, err), (extra, e.value.code, err)
                assert len(err.strip().splitlines()) == 1 and "resume state" not in err, err
        with pytest.raises(RunSetupError, match="another run is writing into it now") as e:
            train("gru4rec", str(data), str(out), kcore=0, overwrite=True)
        assert e.value.exit_code == 1 and isinstance(e.value.__cause__, FolderBusy)
        assert _tree(out) == before
    log = train_main(args + ["--data", str(data), "--resume", "--max-minutes", "5"])    # the holder is gone
    assert log["stopped"] == "max epochs" and len(log["epochs"]) == 2 and not (out / "resume").exists()


@pytest.mark.usefixtures("one_thread")
def test_a_run_refused_for_the_lock_removes_no_folder_it_made_that_the_live_run_holds(tmp_path, monkeypatch, capsys):
    """Two runs started together into a new --out: this one makes the folder, the other locks it first. This one is
    refused (exit 1) and leaves the folder -- the live run's -- in place (a failed run removed the empty --out it had
    found missing, which would pull it from under the live run); a run that fails holding the lock removes the
    empty folders it made (and none it found)."""
    import os

    import zoo.train as T

    data = _markov_file(tmp_path / "markov.tsv", n_users=30)
    out = tmp_path / "new" / "run"
    real_mkdir, holders = os.mkdir, contextlib.ExitStack()

    def args(data=data, out=out):
        return ["--model", "gru4rec", "--data", str(data), "--max-len", "20", "--kcore", "0", "--no-progress",
                "--epochs", "1", "--set", *TINY["gru4rec"], "--out", str(out)]

    def mkdir_then_the_other_run_locks_it(path, *a, **kw):
        real_mkdir(path, *a, **kw)
        if os.path.abspath(path) == str(out):
            holders.enter_context(_held_by_another_run(out))

    monkeypatch.setattr(T.os, "mkdir", mkdir_then_the_other_run_locks_it)
    with holders:
        with refused(capsys, rf"--out {re.escape(str(out))}: another run is writing into it now", code=1):
            train_main(args())
        assert out.is_dir()
    monkeypatch.undo()
    missing = tmp_path / "missing.tsv"
    with refused(capsys, r"interaction file not found", code=1):      # this run's own folders: removed
        train_main(args(missing, tmp_path / "n2" / "run"))
    assert not (tmp_path / "n2").exists()
    with refused(capsys, r"interaction file not found", code=1):      # the folder it found (empty): kept
        train_main(args(missing))
    assert out.is_dir() and list(out.iterdir()) == []
    log = train_main(args())
    assert log["stopped"] == "max epochs" and (out / "model.safetensors").is_file()


def test_a_folder_removed_or_replaced_between_its_creation_and_the_lock_is_refused(tmp_path, monkeypatch):
    """hold_output_folder: a lock taken on a folder that another run removed (or replaced) a moment before would
    guard nothing: FolderBusy, and nothing is removed or made in its place."""
    import os

    import export.fsutil as F
    from export.fsutil import FolderBusy
    from zoo.train import hold_output_folder

    out, aside = tmp_path / "out", tmp_path / "aside"
    real = F.output_folder_lock

    def removed_first(folder, option="--out"):
        os.rmdir(folder)
        return real(folder, option)

    @contextlib.contextmanager
    def replaced_once_locked(folder, option="--out"):
        with real(folder, option) as held:
            os.rename(folder, aside)
            os.mkdir(folder)
            yield held

    for fake, left in ((removed_first, []), (replaced_once_locked, ["aside", "out"])):
        monkeypatch.setattr(F, "output_folder_lock", fake)
        with pytest.raises(FolderBusy, match=rf"--out {re.escape(str(out))}: another run removed or replaced"):
            with hold_output_folder(out):
                pytest.fail("the run went on")
        assert sorted(p.name for p in tmp_path.iterdir()) == left
    monkeypatch.undo()
    with hold_output_folder(out) as held:
        assert held and out.is_dir()


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("lr, why, clip_hint", [
    ("1e8", r"NaN or infinite scores in validation", True),
    ("1e38", r"the optimizer step overflowed: value cannot be converted to type float without overflow", False)])
def test_a_run_that_diverges_ends_in_one_line_naming_the_epoch_and_the_remedy(tmp_path, capsys, lr, why, clip_hint):
    """An enormous --lr: the scores of validation overflow (NaN), or Adam's step size does (its RuntimeError); both were
    a traceback. One line now, exit 1: the epoch, what overflowed, the remedy (--clip only where it can help), and that
    no checkpoint was written -- the --out the run made is removed, as for any run that fails before writing."""
    data = _markov_file(tmp_path / "m.tsv", n_users=30, length=(8, 14))
    out = tmp_path / "o"
    with refused(capsys, rf"^python -m zoo.train: error: training diverged at epoch 1 \({why}\): lower --lr \(it is "
                         + re.escape(f"{float(lr):g})") + (r" or set --clip \(e.g. 5\)" if clip_hint else "") +
                         r"; no checkpoint was written$", code=1):
        train_main(["--model", "sasrec", "--data", str(data), "--out", str(out), "--epochs", "3", "--lr", lr,
                    "--max-len", "20", "--batch-size", "64", "--kcore", "0", "--no-progress", "--set",
                    *TINY["sasrec"]])                                              # one batch an epoch
    assert not out.exists()


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("at_call, why", [(8, "NaN or infinite scores in validation"),
                                          (5, "the training loss is nan at batch 2")])
def test_a_run_that_diverges_after_a_good_epoch_keeps_its_checkpoint_and_log(tmp_path, monkeypatch, capsys, at_call,
                                                                              why):
    """Weights turned NaN in epoch 2 (4 batches an epoch; at its last step: validation's scores are NaN; at its first:
    the next batch's loss is): the run ends at once in one line naming epoch 2 and what --out keeps -- epoch 1's
    checkpoint, untouched, its train_log.json and its resume state -- exit 1."""
    import zoo.evaluate
    import zoo.train as T
    from safetensors.torch import load_file

    calls, seen = [], []
    clip, evaluate = T.clip_grad_norm, zoo.evaluate.evaluate_model

    def poisoned(parameters, max_norm):
        parameters = list(parameters)
        calls.append(1)
        if len(calls) == at_call:
            with torch.no_grad():
                for p in parameters:
                    p.fill_(float("nan"))
        return clip(parameters, max_norm)

    def recorded(model, examples, **kw):        # the weights each validation scored
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return evaluate(model, examples, **kw)

    monkeypatch.setattr(T, "clip_grad_norm", poisoned)
    monkeypatch.setattr(zoo.evaluate, "evaluate_model", recorded)
    data = _markov_file(tmp_path / "m.tsv", n_users=30, length=(8, 14))
    out = tmp_path / "o"
    with refused(capsys, rf"^python -m zoo.train: error: training diverged at epoch 2 \({why}\): lower --lr \(it is "
                         rf"0.001\); {re.escape(str(out))} keeps the checkpoint of epoch 1 \(valid NDCG@10 0\.\d{{4}}\) "
                         r"and the run's train_log.json$", code=1):
        train_main(["--model", "gru4rec", "--data", str(data), "--out", str(out), "--epochs", "4", "--clip", "5",
                    "--max-len", "20", "--batch-size", "8", "--kcore", "0", "--no-progress", "--set",
                    *TINY["gru4rec"]])
    saved = load_file(out / "model.safetensors")
    assert saved.keys() == seen[0].keys() and all(torch.equal(saved[k], seen[0][k]) for k in saved)
    log = json.loads((out / "train_log.json").read_text())
    assert [r["epoch"] for r in log["epochs"]] == [1] and "test" not in log
    assert (out / "resume").is_dir()


@pytest.mark.usefixtures("one_thread")
def test_a_starting_checkpoint_whose_scores_overflow_is_a_one_line_error(tmp_path, capsys):
    """--init-from a checkpoint with finite weights whose scores overflow (an item's row at 3e38: NaN): its first
    validation refuses it in one line naming the users, exit 1 (a traceback before)."""
    from zoo.models import MODELS

    data = _markov_file(tmp_path / "m.tsv", n_users=20, length=(6, 10))
    args = ["--model", "sasrec", "--data", str(data), "--epochs", "1", "--max-len", "20", "--kcore", "0",
            "--no-progress"]
    train_main(args + ["--out", str(tmp_path / "a"), "--set", *TINY["sasrec"]])
    model = MODELS["sasrec"][1].from_pretrained(tmp_path / "a")
    with torch.no_grad():
        model.get_input_embeddings().weight[3] = 3e38
    model.save_pretrained(tmp_path / "a")
    capsys.readouterr()
    with refused(capsys, r"^python -m zoo.train: error: the model's scores are NaN or infinite for users '?\d+'?, ",
                 code=1):
        train_main(args + ["--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "a")])
    assert not (tmp_path / "b").exists()


# --- --batch-order: length-bucketed (every card's) or plain shuffled batches -----------------------------------


def _recorded_batch_orders(monkeypatch) -> list:
    """``bucket_by_length`` of every ``iterate_batches`` call zoo.train makes (one per epoch), the batches as they are."""
    import zoo.data

    real, seen = zoo.data.iterate_batches, []

    def recording(*a, **kw):
        seen.append(kw.get("bucket_by_length"))
        return real(*a, **kw)

    monkeypatch.setattr(zoo.data, "iterate_batches", recording)
    return seen


@pytest.mark.usefixtures("one_thread")
def test_batch_order_reaches_the_batches_and_is_logged(tmp_path, monkeypatch):
    """By default every epoch's batches are bucketed by length (what the cards were trained with); --batch-order
    random turns the bucketing off in every epoch; both are recorded in the log (returned and train_log.json) beside
    window_stride and loss_weighting, and the random run still learns the chain."""
    seen = _recorded_batch_orders(monkeypatch)
    data = _markov_file(tmp_path / "m.tsv", n_users=60)
    args = ["--model", "sasrec", "--data", str(data), "--epochs", "3", "--max-len", "20", "--batch-size", "8",
            "--lr", "5e-3", "--kcore", "0", "--no-progress", "--set", *TINY["sasrec"]]
    log = train_main(args + ["--out", str(tmp_path / "d")])
    assert seen == [True] * 3 and log["batch_order"] == "by-length"
    seen.clear()
    log = train_main(args + ["--out", str(tmp_path / "r"), "--batch-order", "random"])
    assert seen == [False] * 3 and log["batch_order"] == "random"
    assert json.loads((tmp_path / "r" / "train_log.json").read_text())["batch_order"] == "random"
    assert json.loads((tmp_path / "d" / "train_log.json").read_text())["batch_order"] == "by-length"
    assert log["test"]["HR@10"] > 2.5 * 10 / 40, log["test"]


def test_a_batch_order_other_than_the_two_is_refused_on_the_command_line_and_in_the_api(tmp_path, capsys):
    """``--batch-order shuffled`` is a usage error naming the option and its choices; ``train(batch_order=...)`` a
    ValueError naming the parameter, before --out is made."""
    from zoo.train import train

    data = _markov_file(tmp_path / "m.tsv", n_users=20, length=(6, 10))
    with refused(capsys, r"argument --batch-order: invalid choice: 'shuffled' \(choose from '?by-length'?, "
                         r"'?random'?\)"):
        train_main(["--model", "gru4rec", "--data", str(data), "--out", str(tmp_path / "c"), "--batch-order",
                    "shuffled"])
    with pytest.raises(ValueError, match=r"batch_order must be one of \('by-length', 'random'\), got 'shuffled'"):
        train("gru4rec", str(data), str(tmp_path / "a"), epochs=1, kcore=0, progress=False,
              config_overrides={"embedding_size": 16, "hidden_size": 32}, batch_order="shuffled")
    assert not (tmp_path / "c").exists() and not (tmp_path / "a").exists()


@pytest.mark.usefixtures("one_thread", "fake_clock")
def test_resume_keeps_the_batch_order_and_a_state_saved_before_it_resumes_by_length(tmp_path, monkeypatch, capsys):
    """--resume with another --batch-order than the run's is refused naming it; a resume state saved before the
    setting existed (no batch_order in its settings or log) ran bucketed by length: it resumes with the default,
    batches by length, and logs it; asked for random batches it is refused."""
    data = _markov_file(tmp_path / "m.tsv", n_users=30)
    args = ["--model", "gru4rec", "--data", str(data), "--max-len", "20", "--kcore", "0", "--no-progress",
            "--epochs", "3", "--set", *TINY["gru4rec"]]
    rand = args + ["--out", str(tmp_path / "r")]
    train_main(rand + ["--batch-order", "random", "--max-minutes", "0.0001"])      # the budget ends it after epoch 1
    assert (tmp_path / "r" / "resume").is_dir()
    with refused(capsys, r"these differ: batch_order: the run has 'random', given 'by-length'"):
        train_main(rand + ["--resume", "--max-minutes", "5"])
    old = args + ["--out", str(tmp_path / "o")]
    train_main(old + ["--max-minutes", "0.0001"])
    state_file = tmp_path / "o" / "resume" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["settings"]["batch_order"] == "by-length" and state["log"]["batch_order"] == "by-length"
    del state["settings"]["batch_order"], state["log"]["batch_order"]            # as saved before the option
    state_file.write_text(json.dumps(state))
    with refused(capsys, r"these differ: batch_order: the run has 'by-length', given 'random'"):
        train_main(old + ["--resume", "--max-minutes", "5", "--batch-order", "random"])
    seen = _recorded_batch_orders(monkeypatch)
    log = train_main(old + ["--resume", "--max-minutes", "5"])
    assert len(log["epochs"]) == 3 and log["stopped"] == "max epochs" and seen == [True, True]
    assert log["batch_order"] == "by-length"
    assert json.loads((tmp_path / "o" / "train_log.json").read_text())["batch_order"] == "by-length"
