"""evaluate_model and the zoo-evaluate CLI on a tiny deterministic model with known ranks."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel

from zoo.data import EvalExamples, build_sequences, leave_one_out, Interactions
from zoo.evaluate import evaluate_model, main
from zoo.modeling_utils import SeqRecConfig, SeqRecPreTrainedModel
from zoo.vocab import ItemVocab

M = 5  # real items 1..5


class NextItemConfig(SeqRecConfig):
    model_type = "test_next_item"

    def __init__(self, **kwargs):  # transformers 5: a config subclass needs its own __init__ to run the parent's
        super().__init__(**kwargs)


class NextItemModel(SeqRecPreTrainedModel):
    """After last item x the preference order is x+1, x+2, ... (cyclic over 1..M): rank(t | x) = (t - x - 1) % M + 1.

    Scores are a fixed table lookup of the last item (hidden = table row, score = identity), so no ties.
    """

    config_class = NextItemConfig

    def __init__(self, config):
        super().__init__(config)
        self.table = torch.nn.Embedding(config.n_items, config.n_items)
        self.post_init()
        with torch.no_grad():
            for x in range(1, config.n_items):
                for j in range(1, config.n_items):
                    self.table.weight[x, j] = -float((j - x - 1) % (config.n_items - 1))
                self.table.weight[x, 0] = 100.0          # padding logit: predict() must mask it

    def encode(self, input_ids, attention_mask, timestamps=None):
        return self.table(input_ids)

    def score(self, hidden):
        return hidden


class LeftNextItemModel(NextItemModel):
    padding_side = "left"


AutoConfig.register(NextItemConfig.model_type, NextItemConfig, exist_ok=True)
AutoModel.register(NextItemConfig, NextItemModel, exist_ok=True)


def exits(capsys, argv, code, message, run=main):
    """``run(argv)`` (zoo.evaluate's main, or another command's) ends with exit status ``code`` and says ``message`` on
    stderr: a usage error's line (2), ``sys.exit("...")``'s text (1), ``exit_with``'s line (4). Returns what it said.
    """
    with pytest.raises(SystemExit) as e:
        run(argv)
    got = e.value.code
    said = capsys.readouterr().err + (got if isinstance(got, str) else "")   # sys.exit("text") exits 1 with it
    status = 1 if isinstance(got, str) else got
    assert status == code and message in said, (status, said)
    return said


def expected_rank(hist, target, exclude=(), n=M):
    x = hist[-1]
    order = [(x + d) % n + 1 for d in range(n)]       # x+1, x+2, ... cyclic in 1..n
    order = [i for i in order if i not in exclude or i == target]
    return order.index(target) + 1 if target not in exclude else None


# internal-index sequences: test ranks 1, 2, 4 (see expected_rank)
SEQS = [[1, 2, 3, 4], [5, 1, 3], [2, 4, 1, 5]]


def examples():
    x = Interactions(np.repeat([1, 2, 3], [len(s) for s in SEQS]), np.concatenate(SEQS))
    ds = build_sequences(x)
    ds = ds.reencode(ItemVocab(list(range(1, M + 1))))       # internal index == external id
    return leave_one_out(ds)


def metrics_of(ranks, ks):
    r = np.asarray(ranks, float)
    out = {}
    for k in ks:
        out[f"HR@{k}"] = float(np.mean(r <= k))
        out[f"NDCG@{k}"] = float(np.mean(np.where(r <= k, 1 / np.log2(r + 1), 0)))
        out[f"MRR@{k}"] = float(np.mean(np.where(r <= k, 1 / r, 0)))
    return out


@pytest.mark.parametrize("cls", [NextItemModel, LeftNextItemModel])
def test_evaluate_model_known_ranks(cls):
    model = cls(NextItemConfig(n_items=M + 1, max_seq_length=10, hidden_size=M + 1))
    sp = examples()
    assert [expected_rank(list(h), t) for h, t in zip(sp.test.histories, sp.test.targets, strict=True)] == [1, 2, 4]
    m, ranks = evaluate_model(model, sp.test, ks=(1, 3), progress=False, return_ranks=True)
    assert ranks.tolist() == [1, 2, 4]
    for k, v in metrics_of([1, 2, 4], (1, 3)).items():
        assert m[k] == pytest.approx(v), k
    assert m["NDCG@3"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    # batch size does not change anything
    assert evaluate_model(model, sp.test, ks=(1, 3), progress=False, batch_size=1) == m
    # valid split: histories [1,2]->3, [5]->1, [2,4]->1
    _, vr = evaluate_model(model, sp.valid, ks=(1,), progress=False, return_ranks=True)
    assert vr.tolist() == [1, 1, 2]


@pytest.mark.parametrize("cls", [NextItemModel, LeftNextItemModel])
def test_history_share(cls):
    # test histories [1,2,3], [5,1], [2,4,1]; preference after x: x+1, x+2, ... -> top-2 {4,5}, {2,3}, {2,3}:
    # history items among them 0, 0, 1 (item 2 of user 3); top-3 adds 1, 4, 4: 1, 0, 2
    model = cls(NextItemConfig(n_items=M + 1, max_seq_length=10, hidden_size=M + 1))
    sp = examples()
    m = evaluate_model(model, sp.test, ks=(1, 2, 3), progress=False, history_share=True)
    assert m["Hist@1"] == pytest.approx(1 / 3) and m["Hist@2"] == pytest.approx(1 / 6)
    assert m["Hist@3"] == pytest.approx(3 / 9)
    assert m["HR@3"] == pytest.approx(2 / 3)                 # the ranking metrics are unchanged
    assert "Hist@3" not in evaluate_model(model, sp.test, ks=(3,), progress=False)
    masked = evaluate_model(model, sp.test, ks=(1, 3), progress=False, history_share=True, exclude_history=True)
    assert masked["Hist@1"] == 0.0 and masked["Hist@3"] == 0.0
    # only the window counts: with a window of 1 user 3's history is [1] alone, so item 2 is no longer history
    small = cls(NextItemConfig(n_items=M + 1, max_seq_length=1, hidden_size=M + 1))
    assert evaluate_model(small, sp.test, ks=(1,), progress=False, history_share=True)["Hist@1"] == 0.0


def test_exclude_history_uses_the_window():
    sp = examples()
    model = NextItemModel(NextItemConfig(n_items=M + 1, max_seq_length=10, hidden_size=M + 1))
    _, r = evaluate_model(model, sp.test, ks=(1,), exclude_history=True, progress=False, return_ranks=True)
    assert r.tolist() == [1, 2, 2]        # user 3: items 2 and 4 above target 5 are in the history
    # window of 2: user 3's window is [4, 1], so item 2 is no longer excluded -> rank 3
    small = NextItemModel(NextItemConfig(n_items=M + 1, max_seq_length=2, hidden_size=M + 1))
    _, r2 = evaluate_model(small, sp.test, ks=(1,), exclude_history=True, progress=False, return_ranks=True)
    assert r2.tolist() == [1, 2, 3]


def test_evaluate_errors():
    model = NextItemModel(NextItemConfig(n_items=M + 1, max_seq_length=10, hidden_size=M + 1))
    bad = EvalExamples([np.array([1])], np.array([M + 3]), ["u"])
    with pytest.raises(ValueError, match="out of range"):
        evaluate_model(model, bad, progress=False)
    with pytest.raises(ValueError, match="no evaluation examples"):
        evaluate_model(model, EvalExamples([], np.zeros(0, np.int64), []), progress=False)


def save_model(tmp_path, vocab_items):
    model = NextItemModel(NextItemConfig(n_items=M + 1, max_seq_length=10, hidden_size=M + 1))
    model.set_item_vocab(ItemVocab(vocab_items))
    d = tmp_path / "model"
    model.save_pretrained(d)
    return d


def test_cli_maps_ids_through_model_vocab(tmp_path, capsys):
    d = save_model(tmp_path, [10, 20, 30, 40, 50])           # external 10*i -> internal i
    # the file's first-appearance order (20, 40, 10, 50, 30) differs from the model's vocabulary
    data = tmp_path / "d.seq"
    data.write_text("user_id\titem_ids_chronological\n3\t20 40 10 50\n1\t10 20 30 40\n2\t50 10 30\n")
    out = tmp_path / "res" / "r.json"
    res = main(["--model", str(d), "--data", str(data), "--ks", "1", "3", "--json", str(out), "--no-progress"])
    want = metrics_of([4, 1, 2], (1, 3))
    for k, v in want.items():
        assert res["metrics"][k] == pytest.approx(v)
    saved = json.loads(out.read_text())
    assert saved["n_users"] == 3 and saved["protocol"]["split"] == "test" and saved["protocol"]["kcore"] is None
    assert saved["model_type"] == "test_next_item" and saved["data"].endswith("d.seq")
    text = capsys.readouterr().out
    assert "HR" in text and "NDCG" in text and "@3" in text and "Hist" not in text
    res = main(["--model", str(d), "--data", str(data), "--ks", "1", "3", "--history-share", "--no-progress"])
    assert res["metrics"]["Hist@1"] == pytest.approx(1 / 3) and "Hist" in capsys.readouterr().out
    # valid split, history exclusion, first user only
    res = main(["--model", str(d), "--data", str(data), "--split", "valid", "--exclude-history", "--max-users", "1",
                "--ks", "1", "--no-progress"])
    assert res["n_users"] == 1 and res["protocol"]["name"] == "lrurec"


def test_cli_inter_file_and_unknown_items(tmp_path):
    d = save_model(tmp_path, [10, 20, 30, 40, 50])
    data = tmp_path / "d.inter"
    data.write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                    "1\t10\t1\n1\t20\t2\n1\t30\t3\n1\t40\t4\n")
    res = main(["--model", str(d), "--data", str(data), "--kcore", "none", "--ks", "1", "--no-progress"])
    assert res["metrics"]["HR@1"] == 1.0
    data.write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                    "1\t10\t1\n1\t60\t2\n1\t70\t3\n1\t40\t4\n")
    with pytest.raises(SystemExit, match=r"2 of the 4 items .*not in the model's item vocabulary.*--unknown-items"):
        main(["--model", str(d), "--data", str(data), "--kcore", "none", "--no-progress"])
    # --unknown-items drop: the unknown interactions go, the evaluation runs on the rest and says so
    data.write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                    "1\t10\t1\n1\t60\t2\n1\t20\t3\n1\t30\t4\n1\t40\t5\n")
    res = main(["--model", str(d), "--data", str(data), "--kcore", "none", "--ks", "1", "--no-progress",
                "--unknown-items", "drop"])
    assert res["metrics"]["HR@1"] == 1.0 and res["protocol"]["unknown_items"] == "drop"
    assert "1 interaction with items the model does not know dropped" in res["vocab"]


@pytest.mark.parametrize("argv,message", [
    (["--ks", "0"], "--ks: expected an int >= 1, got '0'"), (["--batch-size", "0"], "--batch-size: expected an int"),
    (["--max-users", "-5"], "--max-users: expected an int"), (["--kcore", "-1"], "--kcore must be an int >= 1"),
    (["--kcore", "x"], "--kcore must be an int >= 1")])
def test_cli_refuses_bad_numbers_before_loading(tmp_path, argv, message, capsys):
    """Cut-offs, batch size, user count and k-core are checked by the parser (usage error, exit 2), not by a
    traceback from deep inside the evaluation -- and a negative k-core is not silently 'no filter'."""
    with pytest.raises(SystemExit) as e:
        main(["--model", str(tmp_path / "not-read"), "--data", str(tmp_path / "not-read.seq"), *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_cli_duplicate_cutoffs_and_unavailable_device(tmp_path, capsys):
    d = save_model(tmp_path, [10, 20, 30, 40, 50])
    data = tmp_path / "d.seq"
    data.write_text("user_id\titem_ids_chronological\n1\t10 20 30 40\n2\t50 10 30\n")
    res = main(["--model", str(d), "--data", str(data), "--ks", "3", "1", "3", "--no-progress"])
    assert res["protocol"]["ks"] == [1, 3]
    assert {k.split("@")[1] for k in res["metrics"]} == {"1", "3"}
    assert capsys.readouterr().out.count("@3") == 1                      # one column per cut-off
    # a GPU missing here exits 4 (zoo.cli.cli_device), a device torch does not know is a usage error
    said = exits(capsys, ["--model", str(d), "--data", str(data), "--device", "cuda:99", "--no-progress"], 4,
                 "error: --device: device 'cuda:99': ")
    assert "CUDA is not available" in said or "GPU(s) visible" in said
    exits(capsys, ["--model", str(d), "--data", str(data), "--device", "gpu", "--no-progress"], 2,
          "error: --device: device 'gpu'")


def test_kcore_filter_refuses_negative_thresholds():
    from zoo.data import kcore_filter, parse_kcore

    with pytest.raises(ValueError, match="k-core thresholds must be >= 0"):
        kcore_filter(Interactions(np.array([1, 1]), np.array([2, 3])), -1, 5)
    assert [parse_kcore(v) for v in ("auto", "AUTO", "none", "0", "5")] == ["auto", "auto", None, None, 5]


# ------------------------------------------------------------------------------------ exported graphs (--onnx)
def _tiny(name, n_items=40, max_len=12):
    from zoo.models.gru4rec import GRU4RecConfig, GRU4RecModel
    from zoo.models.lrurec import LRURecConfig, LRURecModel
    from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel
    from zoo.models.sasrec import SASRecConfig, SASRecModel

    torch.manual_seed(0)
    model = {"mamba4rec": lambda: Mamba4RecModel(Mamba4RecConfig(n_items=n_items, hidden_size=16, num_layers=1,
                                                                 d_state=8, max_seq_length=max_len)),
             "lrurec": lambda: LRURecModel(LRURecConfig(n_items=n_items, hidden_size=16, num_layers=2,
                                                        max_seq_length=max_len)),
             "gru4rec": lambda: GRU4RecModel(GRU4RecConfig(n_items=n_items, embedding_size=16, hidden_size=16,
                                                           max_seq_length=max_len)),
             "sasrec": lambda: SASRecModel(SASRecConfig(n_items=n_items, hidden_size=16,
                                                        max_seq_length=max_len))}[name]()
    with torch.no_grad():
        model.item_embedding.weight.normal_(0, 1.0)     # spread the scores: no near-ties in the top-k
    return model.eval()


def _random_examples(n=80, n_items=40, seed=0):
    rng = np.random.default_rng(seed)
    hists = [rng.integers(1, n_items, size=int(rng.integers(1, 25))) for _ in range(n)]   # windows cut at 12
    targets = rng.integers(1, n_items, size=n)
    targets[:20] = [h[-1] for h in hists[:20]]          # some targets inside the window (masked under LRURec's)
    return EvalExamples(hists, targets.astype(np.int64), [f"u{i}" for i in range(n)])


@pytest.mark.parametrize("name,exclude", [("mamba4rec", False), ("gru4rec", False), ("lrurec", True),
                                          ("sasrec", False), ("sasrec", True)])
def test_evaluate_onnx_equals_evaluate_model(tmp_path, name, exclude):
    """The exported graph, evaluated with ONNX Runtime alone, gives the PyTorch model's metrics and ranks (within its
    top-K): step graphs primed with each window (rows grouped by length), window graphs padded; an --exclude-seen
    graph under the LRURec protocol."""
    from export.onnx import export_model
    from zoo.evaluate import evaluate_onnx

    torch.set_num_threads(1)
    model = _tiny(name)
    export_model(model, tmp_path, topk=10, exclude_seen=exclude, verify=False)
    ex = _random_examples()
    ref, ref_ranks = evaluate_model(model, ex, ks=(1, 5, 10), exclude_history=exclude, progress=False,
                                    return_ranks=True)
    got, ranks = evaluate_onnx(tmp_path, ex, ks=(1, 5, 10), batch_size=7, threads=1, progress=False,
                               return_ranks=True)
    assert got == pytest.approx(ref, abs=1e-9)
    np.testing.assert_array_equal(ranks.numpy(), np.minimum(ref_ranks.numpy(), 11))
    assert (ref_ranks <= 10).sum() > 10                   # the check is not vacuous
    if exclude:
        assert (ranks[:20] == 11).all()                   # targets inside the window are never hits


def test_evaluate_onnx_full_scores_and_errors(tmp_path):
    from export.onnx import export_model
    from zoo.evaluate import evaluate_onnx

    torch.set_num_threads(1)
    model = _tiny("lrurec")
    export_model(model, tmp_path / "k5", topk=5, verify=False)
    export_model(model, tmp_path / "scores", topk=5, with_scores=True, verify=False)
    ex = _random_examples()
    with pytest.raises(ValueError, match=r"@10 is above the graph's in-graph top-5.*--scores"):
        evaluate_onnx(tmp_path / "k5", ex, ks=(5, 10), progress=False)
    ref, ref_ranks = evaluate_model(model, ex, ks=(5, 10, 20), progress=False, return_ranks=True)
    got, ranks = evaluate_onnx(tmp_path / "scores", ex, ks=(5, 10, 20), progress=False, return_ranks=True)
    assert got == pytest.approx(ref, abs=1e-9) and ranks.tolist() == ref_ranks.tolist()      # full ranking
    bad = EvalExamples([np.array([1, 2])], np.array([40]), ["u"])
    with pytest.raises(ValueError, match="target item index 40 out of range 1..39"):
        evaluate_onnx(tmp_path / "k5", bad, ks=(5,), progress=False)
    with pytest.raises(ValueError, match="empty history"):
        evaluate_onnx(tmp_path / "k5", EvalExamples([np.array([], np.int64)], np.array([3]), ["u"]), ks=(5,),
                      progress=False)


def test_cli_onnx(tmp_path, capsys):
    """``--onnx DIR``: data ids through the graph's item_vocab.json, protocol from the graph, JSON written; asking
    for the LRURec protocol from a graph that cannot mask is refused."""
    from export.onnx import export_model

    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    items = [str(1000 + i) for i in range(1, 40)]
    lines = ["user_id\titem_id\ttimestamp"]
    for u in range(30):
        for t, x in enumerate(rng.choice(items, size=int(rng.integers(4, 15)))):
            lines.append(f"{u}\t{x}\t{t}")
    data = tmp_path / "toy.tsv"
    data.write_text("\n".join(lines) + "\n")
    model = _tiny("lrurec")
    model.set_item_vocab(ItemVocab(items))
    export_model(model, tmp_path / "g", topk=10, exclude_seen=True, verify=False)
    export_model(model, tmp_path / "plain", topk=10, verify=False)
    out = main(["--onnx", str(tmp_path / "g"), "--data", str(data), "--kcore", "none", "--ks", "5", "10",
                "--no-progress", "--json", str(tmp_path / "r.json")])
    text = capsys.readouterr().out
    assert "protocol lrurec (history excluded by the graph)" in text and "NDCG" in text
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["metrics"] == out["metrics"] and saved["protocol"]["exclude_history"] is True
    assert saved["graph"]["exclude_seen"] is True and "the graph's vocabulary (39 items)" in saved["vocab"]
    # the same numbers as the PyTorch model under the LRURec protocol (ids mapped the same way)
    ref = main(["--model", str(_save(model, tmp_path / "m")), "--data", str(data), "--kcore", "none", "--ks", "5",
                "10", "--exclude-history", "--no-progress"])
    assert out["metrics"] == pytest.approx(ref["metrics"], abs=1e-9)
    # without --ks, a top-10 graph with no scores output answers the default cut-offs it can (5, 10; not 20)
    default = main(["--onnx", str(tmp_path / "g"), "--data", str(data), "--kcore", "none", "--no-progress"])
    assert default["protocol"]["ks"] == [5, 10] and default["metrics"] == out["metrics"]
    capsys.readouterr()
    # options the graph cannot honour, or that conflict, are usage errors (exit 2)
    exits(capsys, ["--onnx", str(tmp_path / "g"), "--data", str(data), "--kcore", "none", "--ks", "20",
                   "--no-progress"], 2, "--ks 20: cut-off @20 is above the graph's in-graph top-10")
    exits(capsys, ["--onnx", str(tmp_path / "g"), "--data", str(data), "--history-share", "--ks", "5"], 2,
          "--history-share is measured on a --model")
    exits(capsys, ["--onnx", str(tmp_path / "plain"), "--data", str(data), "--exclude-history", "--ks", "5"], 2,
          "exported without --exclude-seen")
    exits(capsys, ["--onnx", str(tmp_path / "g"), "--data", str(data), "--threads", "0"], 2,
          "argument --threads: expected an int >= 1, got '0'")
    # --device: the CPU provider for cpu (as by default); cuda needs onnxruntime's CUDA provider, which the CPU
    # package lacks (exit 4, naming it; it ran on the CPU provider without a word); another device is a usage error
    on_cpu = main(["--onnx", str(tmp_path / "g"), "--data", str(data), "--kcore", "none", "--ks", "5", "10",
                   "--no-progress", "--device", "cpu", "--threads", "1"])
    assert on_cpu["metrics"] == out["metrics"]
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        said = exits(capsys, ["--onnx", str(tmp_path / "g"), "--data", str(data), "--kcore", "none", "--ks", "5",
                              "--no-progress", "--device", "cuda"], 4, "error: --device: device 'cuda': this "
                     "onnxruntime (")
        assert "has no CUDAExecutionProvider" in said and "install onnxruntime-gpu" in said
    for device in ("mps", "gpu"):
        exits(capsys, ["--onnx", str(tmp_path / "g"), "--data", str(data), "--ks", "5", "--device", device], 2,
              f"--device: device '{device}'")


def _save(model, path):
    model.save_pretrained(path)
    return path


def test_cli_threads_are_torchs_for_a_model_and_onnx_runtimes_for_a_graph(tmp_path, monkeypatch):
    """--threads sets torch's CPU threads for --model and --baseline (it was refused with --model), and ONNX Runtime's
    intra-op threads for --onnx, leaving torch's as they were; --device cpu gives the graph the CPU provider."""
    import export.runtime
    from export.onnx import export_model

    d = save_model(tmp_path, [10, 20, 30, 40, 50])
    data = tmp_path / "d.seq"
    data.write_text("user_id\titem_ids_chronological\n1\t10 20 30 40\n2\t50 10 30\n")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        main(["--model", str(d), "--data", str(data), "--ks", "1", "--no-progress", "--threads", "2"])
        assert torch.get_num_threads() == 2
        main(["--baseline", "pop", "--data", str(data), "--ks", "1", "--threads", "1"])
        assert torch.get_num_threads() == 1
        model = _tiny("gru4rec")
        model.set_item_vocab(ItemVocab([str(x) for x in range(1, 40)]))
        export_model(model, tmp_path / "g", topk=5, verify=False)
        (tmp_path / "g.seq").write_text("user_id\titem_ids_chronological\n1\t1 2 3 4\n2\t5 6 7\n")
        sessions = []
        init = export.runtime._Base.__init__

        def spy(self, path, threads=None, providers=None, session_options=None):
            sessions.append((threads, providers))
            init(self, path, threads, providers, session_options)

        monkeypatch.setattr(export.runtime._Base, "__init__", spy)
        main(["--onnx", str(tmp_path / "g"), "--data", str(tmp_path / "g.seq"), "--ks", "1", "--no-progress",
              "--threads", "3", "--device", "cpu"])
        assert sessions == [(3, ["CPUExecutionProvider"])] and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cli_time_aware_model_on_data_without_usable_timestamps(tmp_path):
    """A time-aware model evaluated on order-only data or on negative timestamps: a one-line error naming the file."""
    from zoo.models import MODELS

    cfg_cls, cls = MODELS["tim4rec_causal"]
    model = cls(cfg_cls(n_items=6, hidden_size=16, max_seq_length=8))
    model.set_item_vocab(ItemVocab([10, 20, 30, 40, 50]))
    model.save_pretrained(tmp_path / "m")
    seq = tmp_path / "d.seq"
    seq.write_text("user_id\titem_ids_chronological\n1\t10 20 30 40\n")
    with pytest.raises(SystemExit, match="TiM4RecCausalModel reads timestamps, but d.seq has none"):
        main(["--model", str(tmp_path / "m"), "--data", str(seq), "--no-progress"])
    neg = tmp_path / "n.tsv"
    neg.write_text("user_id\titem_id\ttimestamp\n1\t10\t-9\n1\t20\t3\n1\t30\t4\n")
    with pytest.raises(SystemExit, match=r"n.tsv: 1 negative timestamp \(user 1 starts at -9\)"):
        main(["--model", str(tmp_path / "m"), "--data", str(neg), "--kcore", "none", "--no-progress"])


def test_cli_intervals(tmp_path, capsys):
    """--intervals: every metric gets a 95% bootstrap interval over users that holds the metric, printed as its
    half-width under the metric's row and kept exactly in the JSON."""
    d = save_model(tmp_path, [10, 20, 30, 40, 50])
    rng = np.random.default_rng(0)
    lines = ["user_id\titem_ids_chronological"] + [f"{u}\t" + " ".join(map(str, rng.choice([10, 20, 30, 40, 50], 6)))
                                                  for u in range(60)]
    (tmp_path / "d.seq").write_text("\n".join(lines) + "\n")
    res = main(["--model", str(d), "--data", str(tmp_path / "d.seq"), "--ks", "1", "3", "--intervals",
                "--no-progress"])
    assert set(res["intervals_95"]) == {"HR@1", "HR@3", "NDCG@1", "NDCG@3", "MRR@1", "MRR@3"}
    for name, (lo, hi) in res["intervals_95"].items():
        assert lo <= res["metrics"][name] <= hi and hi > lo, name
    assert capsys.readouterr().out.count("95% ±") == 3


def test_cli_missing_model_or_data_is_a_one_line_error(tmp_path):
    d = save_model(tmp_path, [10, 20, 30, 40, 50])
    with pytest.raises(SystemExit, match=f"error: interaction file not found: {tmp_path / 'none.seq'}"):
        main(["--model", str(d), "--data", str(tmp_path / "none.seq"), "--no-progress"])
    with pytest.raises(SystemExit, match=r"error: --model .*no-model: .* neither a local folder \(none exists there\)"):
        main(["--model", str(tmp_path / "a" / "no-model"), "--data", str(tmp_path / "none.seq"), "--no-progress"])


def test_cli_refuses_outputs_it_cannot_write_before_evaluating(tmp_path, capsys):
    """--json/--ranks-out that name the --data file or each other, a folder, or a path under a file are usage errors
    (exit 2) before the evaluation (they failed after it with a traceback, or replaced the input or the other
    output); the data file is left as it was."""
    d = save_model(tmp_path, [10, 20, 30, 40, 50])
    data = tmp_path / "d.seq"
    data.write_text("user_id\titem_ids_chronological\n1\t10 20 30 40\n2\t50 10 30\n")
    (tmp_path / "afile").write_text("")
    base = ["--model", str(d), "--data", str(data), "--ks", "1", "--no-progress"]
    r = str(tmp_path / "r.json")
    for extra, message in ((["--json", r, "--ranks-out", r], f"--ranks-out {r} is also --json"),
                           (["--ranks-out", str(data)], f"--ranks-out {data} is the input --data"),
                           (["--json", str(tmp_path)], f"--json {tmp_path} is a folder"),
                           (["--ranks-out", str(tmp_path / "afile" / "r.csv")],
                            f"--ranks-out {tmp_path / 'afile' / 'r.csv'}: {tmp_path / 'afile'} is a file, not a "
                            "folder")):
        with pytest.raises(SystemExit) as e:
            main(base + extra)
        said = capsys.readouterr()
        assert e.value.code == 2 and f"error: {message}" in said.err, said.err
        assert "HR" not in said.out                                 # refused before the evaluation
    assert data.read_text().startswith("user_id") and not (tmp_path / "r.json").exists()


def test_cli_dash_writes_the_json_or_the_ranks_on_stdout_and_the_table_on_stderr(tmp_path, capsys, monkeypatch):
    """--json - / --ranks-out -: the product on stdout (JSON that parses, the ranks file zoo.compare reads) and the
    table, the model's line and the other output's "wrote" line on stderr; no file named "-" (one was created); both
    on "-" is a usage error."""
    from zoo.compare import read_ranks

    monkeypatch.chdir(tmp_path)
    d = save_model(tmp_path, [10, 20, 30, 40, 50])
    data = tmp_path / "d.seq"
    data.write_text("user_id\titem_ids_chronological\n3\t20 40 10 50\n1\t10 20 30 40\n2\t50 10 30\n")
    base = ["--model", str(d), "--data", str(data), "--ks", "1", "3", "--no-progress"]
    res = main(base + ["--json", "-", "--ranks-out", "r.csv"])
    said = capsys.readouterr()
    assert json.loads(said.out) == json.loads(json.dumps(res))
    assert "NextItemModel" in said.err and "HR" in said.err and f"wrote {tmp_path / 'r.csv'}" in said.err
    main(base + ["--ranks-out", "-", "--json", "r.json"])
    said = capsys.readouterr()
    (tmp_path / "out.csv").write_text(said.out)
    assert said.out.startswith("# zoo.evaluate ranks ") and "HR" in said.err
    assert f"wrote {tmp_path / 'r.json'}" in said.err
    assert read_ranks(tmp_path / "out.csv")[3].tolist() == read_ranks(tmp_path / "r.csv")[3].tolist() == [4, 1, 2]
    exits(capsys, base + ["--json", "-", "--ranks-out", "-"], 2, "--json and --ranks-out are both - (standard output)")
    assert not (tmp_path / "-").exists()


def test_cli_refuses_outputs_that_replace_a_file_of_the_model_or_graph_folder(tmp_path, capsys):
    """--json / --ranks-out naming a file of the --model folder (or of the --onnx folder) is refused before the
    evaluation: the metrics replaced the model's config, and the model no longer loaded."""
    d = save_model(tmp_path, [10, 20, 30, 40, 50])
    data = tmp_path / "d.seq"
    data.write_text("user_id\titem_ids_chronological\n1\t10 20 30 40\n2\t50 10 30\n")
    config = (Path(d) / "config.json").read_bytes()
    for flag in ("--json", "--ranks-out"):
        exits(capsys, ["--model", str(d), "--data", str(data), "--no-progress", flag, str(Path(d) / "config.json")],
              2, f"{flag} {Path(d) / 'config.json'} is the input --model's config.json")
    assert (Path(d) / "config.json").read_bytes() == config
    onnx_dir = tmp_path / "g"
    onnx_dir.mkdir()
    (onnx_dir / "state_spec.json").write_text("{}")
    exits(capsys, ["--onnx", str(onnx_dir), "--data", str(data), "--no-progress", "--json",
                   str(onnx_dir / "state_spec.json")], 2, "is the input --onnx's state_spec.json")
    assert (onnx_dir / "state_spec.json").read_text() == "{}"


def re_escape(text):
    import re

    return re.escape(text)


def test_cli_data_without_examples_and_cutoffs_above_the_items_are_one_line_errors(tmp_path, capsys):
    """Data in which no user has 3 items (or none is left by --unknown-items drop) was a ValueError traceback (now a
    failed run, exit 1); a cut-off above the number of items ranked reported HR@K = 1 for every model (now a usage
    error, exit 2)."""
    d = save_model(tmp_path, [10, 20, 30, 40, 50])
    data = tmp_path / "d.seq"
    data.write_text("user_id\titem_ids_chronological\n1\t10 20\n2\t50 10\n")
    with pytest.raises(SystemExit, match=f"error: --data {re_escape(str(data))}: .*no user has >= 3 items"):
        main(["--model", str(d), "--data", str(data), "--ks", "1", "--no-progress"])
    data.write_text("user_id\titem_ids_chronological\n1\t60 70 80 90\n")
    # the user has 4 items: the message says the drop took them (it said only "no user has >= 3 items")
    with pytest.raises(SystemExit, match=f"error: --data {re_escape(str(data))}: .*no user has >= 3 items.* "
                                         r"\(WARNING: 4 interactions with items the model does not know dropped"):
        main(["--model", str(d), "--data", str(data), "--ks", "1", "--no-progress", "--unknown-items", "drop"])
    data.write_text("user_id\titem_ids_chronological\n1\t10 20 30 40\n")
    exits(capsys, ["--model", str(d), "--data", str(data), "--ks", "1", "6", "--no-progress"], 2,
          "error: --ks 6: the model ranks 5 items; use cut-offs <= 5")
    assert main(["--model", str(d), "--data", str(data), "--ks", "5", "--no-progress"])["protocol"]["ks"] == [5]


def _toy_lrurec_graph(tmp_path, users: int, user_step: int, topk: int, time_step: int = 1, **export_kw):
    """A tiny LRURec over 39 string items exported to ``tmp_path / "g"`` (unverified) and a TSV of ``users`` users
    with 6 events each (item ``(user_step * u + time_step * t) % 39`` at time t); returns ``(tsv path, model)``."""
    from export.onnx import export_model

    torch.set_num_threads(1)
    items = [str(1000 + i) for i in range(1, 40)]
    data = tmp_path / "toy.tsv"
    data.write_text("user_id\titem_id\ttimestamp\n" + "".join(
        f"{u}\t{items[(user_step * u + time_step * t) % 39]}\t{t}\n" for u in range(users) for t in range(6)))
    model = _tiny("lrurec")
    model.set_item_vocab(ItemVocab(items))
    export_model(model, tmp_path / "g", topk=topk, verify=False, **export_kw)
    return data, model


def test_cli_onnx_unreadable_export_files_are_one_line_errors(tmp_path, capsys):
    """--onnx with a corrupt state_spec.json or item_vocab.json, or a truncated model.onnx: one line naming the file
    (were a JSONDecodeError without the file, a ValueError traceback, an InvalidProtobuf traceback)."""
    import shutil

    data, _ = _toy_lrurec_graph(tmp_path, users=5, user_step=1, topk=10)
    base = ["--data", str(data), "--kcore", "none", "--ks", "5", "--no-progress"]
    assert main(["--onnx", str(tmp_path / "g"), *base])["n_users"] == 5
    for name, broken, message in (
            ("spec", "state_spec.json", r"error: --onnx .*spec: unreadable .*spec.state_spec.json"),
            ("vocab", "item_vocab.json", r"error: --onnx .*vocab: corrupt item vocabulary .*vocab.item_vocab.json"),
            ("graph", "model.onnx", r"error: .*ONNX Runtime cannot load .*graph.model.onnx")):
        shutil.copytree(tmp_path / "g", tmp_path / name)
        text = (tmp_path / name / broken).read_bytes()
        (tmp_path / name / broken).write_bytes(text[:len(text) // 2])
        with pytest.raises(SystemExit, match=message):
            main(["--onnx", str(tmp_path / name), *base])
    exits(capsys, ["--onnx", str(tmp_path / "g"), *base[:-3], "--ks", "40", "--no-progress"], 2,
          "error: --ks 40: the graph ranks 39 items")


# ------------------------------------------------------------------ mutation audit, round 6 (B): guards found missing
class TimeNextItemModel(NextItemModel):
    """NextItemModel that reads timestamps: each real item ``x`` at time ``s`` counts as item ``(x - 1 + s) % M + 1``,
    so a rank depends on the timestamp of the last real item of the window (timestamps 0: NextItemModel's ranks)."""

    uses_timestamps = True

    def encode(self, input_ids, attention_mask, timestamps=None):
        if timestamps is None:
            raise ValueError("TimeNextItemModel got no timestamps")
        shifted = (input_ids - 1 + timestamps.long()) % (self.config.n_items - 1) + 1
        return self.table(torch.where(attention_mask, shifted, torch.zeros_like(shifted)))


class LeftTimeNextItemModel(TimeNextItemModel):
    padding_side = "left"


@pytest.mark.parametrize("cls", [TimeNextItemModel, LeftTimeNextItemModel])
def test_evaluate_model_passes_each_window_its_own_timestamps(cls):
    """A time-aware model gets the batch's timestamps, aligned with the window on the model's padding side (they were
    dropped: the model got None), and examples without timestamps are refused before any batch, naming the model."""
    model = cls(NextItemConfig(n_items=M + 1, max_seq_length=10, hidden_size=M + 1))
    sp = examples()                                          # test histories [1,2,3]->4, [5,1]->3, [2,4,1]->5
    ts = [np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.0]), np.array([0.0, 2.0, 2.0])]
    ex = EvalExamples(sp.test.histories, sp.test.targets, sp.test.users, ts)
    # last items count as 4, 1, 3 -> ranks of targets 4, 3, 5: 5, 2, 2
    _, r = evaluate_model(model, ex, ks=(1,), progress=False, return_ranks=True, batch_size=2)
    assert r.tolist() == [5, 2, 2]
    zero = EvalExamples(sp.test.histories, sp.test.targets, sp.test.users, [np.zeros(len(h)) for h in ts])
    assert evaluate_model(model, zero, ks=(1,), progress=False, return_ranks=True)[1].tolist() == [1, 2, 4]
    with pytest.raises(ValueError, match=f"{cls.__name__} reads timestamps but the evaluation data has none"):
        evaluate_model(model, sp.test, ks=(1,), progress=False)


def test_evaluate_model_refuses_the_padding_target_and_keeps_the_training_mode():
    """A target 0 (the padding row, never rankable: it is at -inf) is refused like one past the end (only the upper
    bound was tested); a model in training mode is evaluated in eval mode and handed back in training mode."""
    model = NextItemModel(NextItemConfig(n_items=M + 1, max_seq_length=10, hidden_size=M + 1))
    with pytest.raises(ValueError, match=r"target item index 0 out of range 1\.\.5 \(model n_items=6\)"):
        evaluate_model(model, EvalExamples([np.array([1, 2])], np.array([0]), ["u"]), progress=False)
    with pytest.raises(ValueError, match=r"target item index 6 out of range 1\.\.5 \(model n_items=6\)"):
        evaluate_model(model, EvalExamples([np.array([1, 2])], np.array([6]), ["u"]), progress=False)
    seen = []
    model.table.register_forward_hook(lambda mod, args, out: seen.append(mod.training))   # predict calls forward
    model.train()
    evaluate_model(model, examples().test, ks=(1,), progress=False)
    assert seen and not any(seen) and model.training
    model.eval()
    evaluate_model(model, examples().test, ks=(1,), progress=False)
    assert not model.training


def test_evaluate_model_max_len_overrides_the_config_window():
    """``max_len`` cuts the windows (it was ignored for ``config.max_seq_length``): with a window of 2 user 3's window
    is [4, 1], so under the LRURec protocol item 2 is not masked (rank 3, not 2), and with a window of 1 no top-1 item
    is history."""
    model = NextItemModel(NextItemConfig(n_items=M + 1, max_seq_length=10, hidden_size=M + 1))
    sp = examples()
    _, r = evaluate_model(model, sp.test, ks=(1,), exclude_history=True, progress=False, return_ranks=True, max_len=2)
    assert r.tolist() == [1, 2, 3]
    assert evaluate_model(model, sp.test, ks=(1,), progress=False, history_share=True)["Hist@1"] == pytest.approx(1 / 3)
    assert evaluate_model(model, sp.test, ks=(1,), progress=False, history_share=True, max_len=1)["Hist@1"] == 0.0


def test_align_with_vocab_without_vocabulary_checks_the_model_rows():
    """A model without an item vocabulary takes the data's first-appearance indices 1..n: n items need n + 1 rows
    (padding row 0); a data file with as many items as the model has rows is refused (item n would be out of range)."""
    from zoo.evaluate import align_with_vocab

    ds = build_sequences(Interactions(np.array([1, 1, 1, 2, 2, 2]), np.array([7, 8, 9, 10, 11, 12])))
    assert ds.n_items == 6
    with pytest.raises(ValueError, match=r"the data has 6 items but the model \(no item vocabulary\) has only "
                                         r"n_items=6 rows"):
        align_with_vocab(ds, None, 6)
    same, note = align_with_vocab(ds, None, 7)
    assert same is ds and note.startswith("WARNING: the model has no item vocabulary")


def test_cli_valid_split_ranks_file_and_item_count(tmp_path):
    """--split valid evaluates seq[:-2] -> seq[-2] (the test examples were used instead), and the result and the
    --ranks-out header give the number of items ranked, n_items - 1 (the padding row is not an item)."""
    from zoo.compare import read_ranks

    d = save_model(tmp_path, [10, 20, 30, 40, 50])
    data = tmp_path / "d.seq"
    data.write_text("user_id\titem_ids_chronological\n3\t20 40 10 50\n1\t10 20 30 40\n2\t50 10 30\n")
    # valid examples (internal): [2, 4] -> 1, [1, 2] -> 3, [5] -> 1: ranks 2, 1, 1
    res = main(["--model", str(d), "--data", str(data), "--split", "valid", "--ks", "1", "--no-progress",
                "--ranks-out", str(tmp_path / "v.csv")])
    assert res["n_items"] == 5 and res["metrics"]["HR@1"] == pytest.approx(2 / 3)
    meta, users, targets, ranks = read_ranks(tmp_path / "v.csv")
    assert meta["split"] == "valid" and meta["n_items"] == 5 and meta["max_rank"] is None
    assert users == ["3", "1", "2"] and targets == ["10", "30", "10"] and ranks.tolist() == [2, 1, 1]
    res = main(["--model", str(d), "--data", str(data), "--ks", "1", "--no-progress", "--exclude-history",
                "--json", str(tmp_path / "t.json")])
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["n_items"] == 5
    assert saved["protocol"]["ranking"] == "full (all items), padding masked; history window masked"


def test_cli_onnx_scores_graph_default_cutoffs_and_uncensored_ranks(tmp_path):
    """A graph with a scores output ranks every item: without --ks it gets the default 5, 10, 20 (not cut at its
    top-K, 5), pessimistic ties, and its --ranks-out header says the ranks are not censored (max_rank null)."""
    from zoo.compare import read_ranks

    data, model = _toy_lrurec_graph(tmp_path, users=12, user_step=3, time_step=7, topk=5, with_scores=True)
    out = main(["--onnx", str(tmp_path / "g"), "--data", str(data), "--kcore", "none", "--no-progress",
                "--ranks-out", str(tmp_path / "g.csv")])
    assert out["protocol"]["ks"] == [5, 10, 20] and out["protocol"]["ties"] == "pessimistic"
    assert set(out["metrics"]) >= {"HR@20", "NDCG@20", "MRR@20"}
    meta, _, _, ranks = read_ranks(tmp_path / "g.csv")
    assert meta["max_rank"] is None and meta["n_items"] == 39
    ref = main(["--model", str(_save(model, tmp_path / "m")), "--data", str(data), "--kcore", "none", "--no-progress",
                "--ranks-out", str(tmp_path / "m.csv")])
    assert ranks.tolist() == read_ranks(tmp_path / "m.csv")[3].tolist() and (ranks > 5).any()
    assert ref["metrics"] == pytest.approx(out["metrics"], abs=1e-12)


def test_format_table_prints_the_half_width_of_each_interval():
    """The ``95% ±`` row under a metric is half the interval's width (the full width doubled every printed ±), one
    value per cut-off with an interval; a metric without an interval gets no such row, a cut-off without one is blank
    (the value stays in the later column)."""
    from zoo.evaluate import format_table

    text = format_table({"HR@1": 0.5, "HR@3": 0.75, "NDCG@1": 0.5, "NDCG@3": 0.6, "MRR@1": 1.0, "MRR@3": 1.0}, [1, 3],
                        intervals={"HR@1": (0.25, 0.75), "HR@3": (0.5, 0.9), "NDCG@3": (0.4, 0.7)})
    lines = text.splitlines()
    assert [line.split()[0] for line in lines] == ["metric", "-" * 28, "HR", "95%", "NDCG", "95%", "MRR"]
    assert lines[2].split()[1:] == ["0.5000", "0.7500"] and lines[3].split()[2:] == ["0.2500", "0.2000"]
    assert lines[5].split()[2:] == ["0.1500"] and lines[5].index("0.1500") > len("metric          @1")
    # each half-width is right-aligned under its value (the row was 2 characters short, every ± under the wrong column)
    assert len(lines[3]) == len(lines[2]) and lines[3].rindex("0.2000") == lines[2].rindex("0.7500")
    assert len(lines[5]) == len(lines[4]) and lines[5].rindex("0.1500") == lines[4].rindex("0.6000")


@pytest.mark.parametrize("name,kind", [("tim4rec", "window"), ("tim4rec_causal", "step")])
def test_evaluate_onnx_time_aware_graphs_get_the_window_timestamps(tmp_path, name, kind):
    """evaluate_onnx gives a time-aware graph (window or step) the timestamps of each window: the last max_seq_length
    ones, aligned with its items (no test evaluated a time-aware graph); the PyTorch model's ranks within the top-K."""
    from export.onnx import export_model
    from zoo.evaluate import evaluate_onnx
    from zoo.models import MODELS

    torch.set_num_threads(1)
    cfg_cls, cls = MODELS[name]
    torch.manual_seed(0)
    model = cls(cfg_cls(n_items=30, hidden_size=16, max_seq_length=6)).eval()
    with torch.no_grad():                               # at init the time branch hardly moves a rank: strengthen it
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        if name == "tim4rec_causal":
            model.time_in_weight.mul_(10.0)
        model.item_embedding.weight.normal_(0, 1.0)     # spread the scores: no near-ties in the top-k
    export_model(model, tmp_path, kind=kind, topk=10, verify=False)
    rng = np.random.default_rng(0)
    hists = [rng.integers(1, 30, size=int(rng.integers(1, 12))) for _ in range(40)]      # windows cut at 6
    tss = [np.cumsum(10 ** rng.uniform(0, 7, size=len(h))).round() for h in hists]      # gaps of 1 s to 4 months
    ex = EvalExamples(hists, rng.integers(1, 30, size=40).astype(np.int64), [f"u{i}" for i in range(40)],
                      tss if model.uses_timestamps else None)
    _, ref = evaluate_model(model, ex, ks=(10,), progress=False, return_ranks=True)
    _, got = evaluate_onnx(tmp_path, ex, ks=(10,), batch_size=7, threads=1, progress=False, return_ranks=True)
    np.testing.assert_array_equal(got.numpy(), np.minimum(ref.numpy(), 11))
    assert (ref <= 10).sum() > 5                           # the check is not vacuous
    # ... and the time matters: the windows' first timestamps instead of their last ones move some ranks
    first = EvalExamples(hists, ex.targets, ex.users, [np.sort(np.r_[t[:-6], t[:6]]) for t in tss])
    assert (evaluate_model(model, first, ks=(10,), progress=False, return_ranks=True)[1] != ref).any()


def test_most_popular_baseline_on_hand_counted_data(tmp_path, capsys):
    """--baseline pop ranks every item by its count in the training sequences (seq[:-2]); ties are pessimistic, the
    window is masked under --exclude-history, and its ranks pair with a model's in zoo.compare."""
    from zoo.evaluate import evaluate_popularity, popularity_scores

    data = tmp_path / "d.seq"
    # training parts (seq[:-2]): [1, 2, 3], [2, 3], [3, 4]: counts 1:1, 2:2, 3:3, 4:1
    data.write_text("user_id\titem_ids_chronological\nu1\t1 2 3 2 4\nu2\t2 3 4 1\nu3\t3 4 3 2\n")
    ds = build_sequences_from(data)
    split = leave_one_out(ds)
    idx = {x: i for i, x in enumerate(ds.vocab.decode(list(range(1, ds.n_items + 1))), start=1)}
    train = [ds.vocab.decode(s.tolist()) for s in split.train]
    assert train == [[1, 2, 3], [2, 3], [3, 4]]
    scores = popularity_scores(split.train, ds.n_items + 1)
    assert scores[0] == float("-inf") and [scores[idx[i]].item() for i in (1, 2, 3, 4)] == [1, 2, 3, 1]
    # test targets: u1 -> 4 (count 1, tied with item 1: pessimistic rank 4), u2 -> 1 (rank 4), u3 -> 2 (rank 2)
    metrics, ranks = evaluate_popularity(split.train, split.test, ds.n_items + 1, ks=(1, 2, 4), return_ranks=True)
    assert ranks.tolist() == [4, 4, 2] and metrics["HR@2"] == pytest.approx(1 / 3)
    # history masked: u1's window {1, 2, 3} -> 4 is first; u2's {2, 3, 4} -> 1; u3's {3, 4} -> 2; with a window of
    # one item only the last is masked: u1 (2) -> 4 below 3 and tied with 1; u2 (4) -> 1 below 3, 2; u3 (3) -> 2 first
    _, masked = evaluate_popularity(split.train, split.test, ds.n_items + 1, ks=(1,), exclude_history=True,
                                    return_ranks=True)
    assert masked.tolist() == [1, 1, 1]
    _, last = evaluate_popularity(split.train, split.test, ds.n_items + 1, ks=(1,), exclude_history=True, max_len=1,
                                  return_ranks=True)
    assert last.tolist() == [3, 3, 1]
    res = main(["--baseline", "pop", "--data", str(data), "--ks", "1", "2", "--ranks-out", str(tmp_path / "p.csv")])
    assert res["metrics"]["HR@2"] == pytest.approx(1 / 3) and res["baseline"] == "pop"
    assert capsys.readouterr().out.startswith("most-popular baseline on d.seq: test, 3 users, protocol recbole")
    from zoo.compare import main as compare_main

    compare_main([str(tmp_path / "p.csv"), str(tmp_path / "p.csv"), "--ks", "1"])
    capsys.readouterr()
    exits(capsys, ["--baseline", "pop", "--data", str(data), "--history-share"], 2,
          "--history-share is for a --model evaluation")


def test_transitions_baseline_on_hand_counted_data(tmp_path, capsys):
    """--baseline markov ranks the items by how often each directly followed the history's last item in the training
    sequences (seq[:-2]), ties (and items that never followed it) by training count, pessimistically."""
    from zoo.evaluate import TransitionCounts, evaluate_baseline

    data = tmp_path / "d.seq"
    # training parts: [1, 2, 3, 2, 4, 2, 3], [2, 3, 4], [3, 4, 1]: transitions 1->2, 2->3 (x3), 3->2, 2->4, 4->2,
    # 3->4 (x2), 4->1; counts 1:2, 2:4, 3:4, 4:3
    data.write_text("user_id\titem_ids_chronological\nu1\t1 2 3 2 4 2 3 1 4\nu2\t2 3 4 1 2\nu3\t3 4 1 3 2\n")
    ds = build_sequences_from(data)
    split = leave_one_out(ds)
    idx = {x: i for i, x in enumerate(ds.vocab.decode(list(range(1, ds.n_items + 1))), start=1)}
    assert [ds.vocab.decode(q.tolist()) for q in split.train] == [[1, 2, 3, 2, 4, 2, 3], [2, 3, 4], [3, 4, 1]]
    t = TransitionCounts(split.train, ds.n_items + 1)
    rows = t.rows(np.array([idx[2], idx[3], idx[1]]))
    assert [rows[0, idx[j]].item() for j in (1, 2, 3, 4)] == [0, 0, 3, 1]           # after 2: 3 three times, 4 once
    assert [rows[1, idx[j]].item() for j in (1, 2, 3, 4)] == [0, 1, 0, 2]
    assert [rows[2, idx[j]].item() for j in (1, 2, 3, 4)] == [0, 1, 0, 0]
    # test examples: u1 [.. 3, 1] -> 4: after 1 only 2 (count 1); then by popularity 3 (4) tied with 2... 2 is first
    # (transition), then 3 (pop 4), 4 (pop 3) -> rank 3; u2 [2, 3, 4, 1] -> 2: after 1, 2 first -> rank 1;
    # u3 [3, 4, 1, 3] -> 2: after 3, 4 (x2) then 2 (x1) -> rank 2
    metrics, ranks = evaluate_baseline("markov", split.train, split.test, ds.n_items + 1, ks=(1, 2),
                                       return_ranks=True)
    assert ranks.tolist() == [3, 1, 2] and metrics["HR@2"] == pytest.approx(2 / 3)
    _, masked = evaluate_baseline("markov", split.train, split.test, ds.n_items + 1, ks=(1,), exclude_history=True,
                                  return_ranks=True)
    assert masked.tolist() == [5, 5, 1]             # u1's and u2's targets are in their windows: masked, ranked last
    #                                                 (behind the padding column); u3's 2 is all that is left
    res = main(["--baseline", "markov", "--data", str(data), "--ks", "1", "2"])
    assert res["metrics"]["HR@2"] == pytest.approx(2 / 3) and res["baseline"] == "markov"
    assert "first-order transitions" in res["protocol"]["ranking"]
    assert capsys.readouterr().out.startswith("first-order transitions (markov) baseline on d.seq")
    with pytest.raises(ValueError, match="kind must be one of pop, markov"):
        evaluate_baseline("knn", split.train, split.test, ds.n_items + 1)
    with pytest.raises(ValueError, match="outside"):
        TransitionCounts([[1, 9]], 5)


def build_sequences_from(path):
    from zoo.data import load_dataset

    return load_dataset(path, kcore=None)


def test_metrics_by_history_length(tmp_path, capsys):
    """--by-length cuts the users by the length of their whole history at the given edges; each bucket's metrics
    are those of its users' ranks, an empty bucket says so, and bad edges are refused before any evaluation."""
    from zoo.evaluate import metrics_by_length
    from zoo.metrics import compute_metrics

    ex = EvalExamples([np.arange(1, n + 1) for n in (1, 3, 4, 9)], np.array([1, 1, 1, 1]), ["a", "b", "c", "d"])
    ranks = torch.tensor([1, 3, 12, 2])
    rows = metrics_by_length(ex, ranks, [3, 5, 8], ks=(1, 10))
    assert [(r["lengths"], r["users"]) for r in rows] == [([1, 3], 2), ([4, 5], 1), ([6, 8], 0), ([9, None], 1)]
    assert rows[0]["metrics"] == compute_metrics(torch.tensor([1, 3]), (1, 10)) and rows[2]["metrics"] is None
    assert rows[1]["metrics"]["HR@10"] == 0.0 and rows[3]["metrics"]["HR@1"] == 0.0
    with pytest.raises(ValueError, match="increasing ints >= 1"):
        metrics_by_length(ex, ranks, [5, 5], ks=(1,))
    data = tmp_path / "d.seq"
    data.write_text("user_id\titem_ids_chronological\nu1\t1 2 3 2 4\nu2\t2 3 4 1\nu3\t3 4 3 2 1 4 2\n")
    res = main(["--baseline", "pop", "--data", str(data), "--ks", "1", "--by-length", "3", "4",
                "--json", str(tmp_path / "r.json")])
    assert [r["users"] for r in res["by_length"]] == [1, 1, 1]
    assert json.loads((tmp_path / "r.json").read_text())["by_length"] == res["by_length"]
    out = capsys.readouterr().out
    assert "history length    users      HR@1    NDCG@1" in out and "\n> 4" in out
    exits(capsys, ["--baseline", "pop", "--data", str(data), "--by-length", "4", "3"], 2,
          "--by-length: the edges must increase, got 4 3")


def test_metrics_by_target_popularity(tmp_path, capsys):
    """--by-popularity cuts the users by their target's count in the training sequences (the leave-one-out train
    part: every sequence less its last two items), from 0 (an item never trained on) up; each bucket's metrics are
    those of its users' ranks, with the distinct targets counted; bad edges are refused before any evaluation."""
    from zoo.evaluate import metrics_by_popularity
    from zoo.metrics import compute_metrics

    train = [np.array([1, 1, 2]), np.array([2, 2, 3]), np.array([1, 2])]       # counts: 1 -> 3, 2 -> 4, 3 -> 1, 4 -> 0
    ex = EvalExamples([np.array([1])] * 5, np.array([4, 3, 1, 2, 2]), list("abcde"))
    ranks = torch.tensor([7, 1, 2, 30, 4])
    from zoo.data import item_counts

    counts = item_counts(train, 5)
    rows = metrics_by_popularity(ex, ranks, counts, [0, 1, 3], ks=(1, 10))
    assert [(r["counts"], r["users"], r["items"]) for r in rows] == [
        ([0, 0], 1, 1), ([1, 1], 1, 1), ([2, 3], 1, 1), ([4, None], 2, 1)]
    assert rows[3]["metrics"] == compute_metrics(torch.tensor([30, 4]), (1, 10))
    assert rows[0]["metrics"]["HR@10"] == 1.0 and rows[1]["metrics"]["HR@1"] == 1.0
    with pytest.raises(ValueError, match=r"--by-popularity edges must be increasing ints >= 0"):
        metrics_by_popularity(ex, ranks, counts, [3, 3], ks=(1,))
    data = tmp_path / "d.seq"                   # train parts: u1 1 2 3, u2 2 3, u3 3 4 3 2 1 (1 -> 2, 2 -> 3, 3 -> 4)
    data.write_text("user_id\titem_ids_chronological\nu1\t1 2 3 2 4\nu2\t2 3 4 1\nu3\t3 4 3 2 1 4 2\n")
    res = main(["--baseline", "pop", "--data", str(data), "--ks", "1", "--by-popularity", "2", "3",
                "--json", str(tmp_path / "r.json")])
    # test targets: u1 -> 4 (count 1), u2 -> 1 (2), u3 -> 2 (3)
    assert [(r["counts"], r["users"]) for r in res["by_popularity"]] == [([0, 2], 2), ([3, 3], 1), ([4, None], 0)]
    assert json.loads((tmp_path / "r.json").read_text())["by_popularity"] == res["by_popularity"]
    out = capsys.readouterr().out
    assert "target count      users      HR@1    NDCG@1" in out and "\n3 " in out and "\n> 3" in out
    exits(capsys, ["--baseline", "pop", "--data", str(data), "--by-popularity", "4", "3"], 2,
          "--by-popularity: the edges must increase, got 4 3")


def test_a_folder_without_config_json_is_named_and_a_baseline_refuses_unknown_items(tmp_path, capsys):
    """--model of an export.onnx folder (no config.json) is zoo.recommend's one line, pointing to --onnx, not
    transformers' "Unrecognized model"; --unknown-items with a --baseline (which has no vocabulary to drop items by)
    is refused (a usage error) as --device and --history-share are, instead of doing nothing."""
    data = tmp_path / "d.seq"
    data.write_text("user_id\titem_id_list\n1\t1 2 3 4\n2\t5 1 3\n3\t2 4 1 5\n")
    (tmp_path / "graph").mkdir()
    (tmp_path / "graph" / "state_spec.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"graph/config.json is missing: .*graph is not a saved zoo model folder .*; "
                                         r"for an export.onnx folder use --onnx$"):
        main(["--model", str(tmp_path / "graph"), "--data", str(data), "--no-progress"])
    for kind in ("markov", "pop"):
        exits(capsys, ["--baseline", kind, "--data", str(data), "--unknown-items", "drop", "--no-progress"], 2,
              "--unknown-items drop is for a --model or --onnx evaluation: a --base")
        exits(capsys, ["--baseline", kind, "--data", str(data), "--device", "cuda", "--no-progress"], 2,
              "--device cuda is for --model and --onnx")


# ------------------------------------------------------------- numerics QA (findings 2 and 7): top-K ties, cut-offs
@pytest.mark.parametrize("name,exclude", [("gru4rec", False), ("sasrec", True)])
def test_evaluate_onnx_gives_a_constant_score_model_the_worst_rank_as_evaluate_model(tmp_path, name, exclude):
    """Every item scored the same: evaluate_model ranks each target last among the ties (pessimistic, HR = 0), and so
    must the top-K graph, whose TopK lists exactly tied items by index (the target's slot gave the targets among the
    K lowest indices a hit: HR@10 0.0099 against 0.0000 for the bundled GRU4Rec made constant). A step graph, and a
    window graph masking the history itself (--exclude-seen)."""
    from export.onnx import export_model
    from zoo.evaluate import evaluate_onnx

    torch.set_num_threads(1)
    model = _tiny(name)
    with torch.no_grad():
        model.item_embedding.weight[1:] = model.item_embedding.weight[1:].mean(0)    # every item the same row
    export_model(model, tmp_path, topk=10, exclude_seen=exclude, verify=False)
    ex = _random_examples()
    assert (ex.targets <= 10).sum() > 10                  # targets the index order would list in the top-10
    ref, ref_ranks = evaluate_model(model, ex, ks=(1, 5, 10), exclude_history=exclude, progress=False,
                                    return_ranks=True)
    got, ranks = evaluate_onnx(tmp_path, ex, ks=(1, 5, 10), batch_size=7, threads=1, progress=False,
                               return_ranks=True)
    assert ref["HR@10"] == 0.0 and got == pytest.approx(ref, abs=1e-12)
    assert ranks.tolist() == [11] * len(ex)


@pytest.mark.parametrize("name", ["lrurec", "sasrec"])
def test_evaluate_onnx_never_counts_a_history_item_of_an_exclude_seen_graph_a_hit(tmp_path, name):
    """A catalogue of 7 items and a top-7 --exclude-seen graph: with fewer than K unseen items the list reaches the
    history items (SEEN_SCORE), but a target among them is masked as evaluate_model masks it (-inf, ranked last), so
    never a hit, top-K or scores graph; the other ranks are evaluate_model's."""
    from export.onnx import export_model
    from zoo.evaluate import evaluate_onnx

    torch.set_num_threads(1)
    model = _tiny(name, n_items=8)
    export_model(model, tmp_path / "k", topk=7, exclude_seen=True, verify=False)
    export_model(model, tmp_path / "s", topk=7, exclude_seen=True, with_scores=True, verify=False)
    rng = np.random.default_rng(3)
    hists = [rng.permutation(np.arange(1, 8))[:int(rng.integers(2, 6))] for _ in range(40)]
    targets = np.array([h[int(rng.integers(len(h)))] if i % 2 else rng.integers(1, 8) for i, h in enumerate(hists)])
    ex = EvalExamples(hists, targets.astype(np.int64), [f"u{i}" for i in range(40)])
    ref, ref_ranks = evaluate_model(model, ex, ks=(1, 5, 7), exclude_history=True, progress=False, return_ranks=True)
    assert (ref_ranks == 8).sum() >= 20                   # the targets in the window: ranked last of all 8 rows
    for graph in ("k", "s"):
        got, ranks = evaluate_onnx(tmp_path / graph, ex, ks=(1, 5, 7), threads=1, progress=False, return_ranks=True)
        assert ranks.tolist() == ref_ranks.tolist(), graph
        assert got == pytest.approx(ref, abs=1e-12), graph


def test_the_python_api_refuses_cutoffs_above_the_items_ranked(tmp_path):
    """evaluate_model, evaluate_baseline and evaluate_onnx refuse a cut-off above the items a target is ranked among
    (a model's or graph's n_items - 1, or the target and its sampled negatives), naming both as zoo.evaluate --ks does:
    they reported HR@K = 1.0 for every model."""
    from export.onnx import export_model
    from zoo.evaluate import evaluate_baseline, evaluate_onnx

    model = NextItemModel(NextItemConfig(n_items=M + 1, max_seq_length=10, hidden_size=M + 1))
    sp = examples()
    assert evaluate_model(model, sp.test, ks=(M,), progress=False)[f"HR@{M}"] == 1.0
    with pytest.raises(ValueError, match=r"cut-off @6: the model ranks 5 items; use cut-offs <= 5"):
        evaluate_model(model, sp.test, ks=(1, 6), progress=False)
    with pytest.raises(ValueError, match=r"cut-off @4: the sampled protocol \(the target and 2 negatives\) ranks 3 "
                                         r"items; use cut-offs <= 3"):
        evaluate_model(model, sp.test, ks=(4,), progress=False, negatives=np.array([[1, 2], [2, 4], [2, 4]]))
    with pytest.raises(ValueError, match=r"cut-off @20: the baseline ranks 5 items; use cut-offs <= 5"):
        evaluate_baseline("pop", sp.train, sp.test, M + 1)                  # the default 5, 10, 20
    # any_ks: the fixed NDCG@10 of a run's validation / popularity floor / soup on a catalogue under 10 items (a run
    # on a 5-item file died at its popularity floor): the NDCG over all the items, as computed before the check
    full = evaluate_model(model, sp.test, ks=(M,), progress=False)
    assert evaluate_model(model, sp.test, ks=(10,), progress=False, any_ks=True)["NDCG@10"] == full[f"NDCG@{M}"]
    assert evaluate_baseline("pop", sp.train, sp.test, M + 1, ks=(10,), any_ks=True)["HR@10"] == 1.0
    torch.set_num_threads(1)
    export_model(_tiny("gru4rec"), tmp_path, topk=5, with_scores=True, verify=False)
    with pytest.raises(ValueError, match=r"cut-off @40: the graph ranks 39 items; use cut-offs <= 39"):
        evaluate_onnx(tmp_path, _random_examples(), ks=(10, 40), progress=False)


def test_onnx_given_a_card_folder_names_its_graph_subfolders(tmp_path):
    """``--onnx hub_cards/<card>`` (the card folder, whose graphs are in onnx/ and onnx-window/) said only "no
    state_spec.json there"; it names the subfolders that hold one."""
    data = tmp_path / "d.tsv"
    data.write_text("user_id\titem_id\ttimestamp\n" + "".join(f"u{u}\t{i}\t{i}\n" for u in range(3) for i in range(5)))
    card = tmp_path / "card"
    for sub in ("onnx", "onnx-window"):
        (card / sub).mkdir(parents=True)
        (card / sub / "state_spec.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        main(["--onnx", str(card), "--data", str(data), "--no-progress"])
    said = str(e.value.code)
    assert "no state_spec.json there" in said and f"did you mean --onnx {card / 'onnx'}?" in said, said
    assert str(card / "onnx-window") in said
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        main(["--onnx", str(tmp_path / "empty"), "--data", str(data), "--no-progress"])
    assert "did you mean" not in str(e.value.code)


def test_every_option_of_evaluate_and_compare_has_a_help_text_and_the_exit_statuses(capsys, monkeypatch):
    """--split and --batch-size had no help (nor their defaults); every option of both commands says what it does,
    and each --help ends with the exit statuses (export.fsutil.EXIT_CODES)."""
    import argparse

    from export.fsutil import EXIT_CODES
    from zoo.compare import main as compare_main

    parsers = []
    parse = argparse.ArgumentParser.parse_args

    def kept(self, *args, **kwargs):                  # the parser each command builds inside its main
        parsers.append(self)
        return parse(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", kept)
    for run in (main, compare_main):
        with pytest.raises(SystemExit) as e:
            run(["--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert e.value.code == 0 and text.endswith(EXIT_CODES)
        helps = {a.dest: a.help for a in parsers[-1]._actions}
        assert all(helps.values()), [dest for dest, said in helps.items() if not said]
    evaluate_helps = {a.dest: a.help for a in parsers[0]._actions}
    assert "default)" in evaluate_helps["split"] and "default 256" in evaluate_helps["batch_size"]


def _overflowing(model, history=None):
    """``model`` (real items 1..) with finite weights whose scores overflow float32: item 3's row at +-3e38 --
    aligned with the user vector of ``history`` (internal indices): that history's score of item 3 is ``+inf``; by
    default all of it at 3e38: most histories' scores are NaN (``inf - inf``), those holding item 3 too."""
    with torch.no_grad():
        table = model.get_input_embeddings().weight
        if history is None:
            table[3] = 3e38
        else:
            ids = torch.tensor([history])
            table[3] = torch.sign(model.query_vectors(ids, torch.ones_like(ids, dtype=torch.bool))[0]) * 3e38
    return model


def test_scores_that_overflow_are_refused_naming_the_users():
    """evaluate_model refuses NaN scores (predict's error) and infinite ones (which predict lets through; an item at
    +inf ranks first for that user), naming the users whose rows hold them -- not the rows of a batch -- with a
    ScoreOverflow (a ValueError)."""
    from zoo.evaluate import ScoreOverflow

    from zoo.data.batching import eval_batches

    ex = _random_examples(n=6)
    model = _overflowing(_tiny("sasrec"))
    batch = next(eval_batches(ex, 12, model.padding_side, 6))
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"]).logits
    bad = [f"'u{r}'" for r in range(6) if not logits[r, 1:].isfinite().all()]     # column 0: padding
    assert bad
    with pytest.raises(ScoreOverflow, match=r"the model's scores are NaN or infinite for users "
                                            + ", ".join(bad) + r" \(a numeric overflow"):
        evaluate_model(model, ex, ks=(5,), progress=False)
    hist = [int(x) for x in ex.histories[2][-12:]]
    model = _overflowing(_tiny("gru4rec"), hist)
    with pytest.raises(ScoreOverflow, match=r"NaN or infinite for user 'u2' \("):
        evaluate_model(model, EvalExamples(ex.histories[2:3], ex.targets[2:3], ["u2"]), ks=(5,), progress=False)


def test_cli_a_model_whose_scores_overflow_is_a_one_line_error(tmp_path, capsys):
    """zoo.evaluate on a model whose scores come out NaN ends as zoo.recommend does: one line naming the users, exit
    1, nothing on stdout -- it was predict's traceback."""
    model = _overflowing(_tiny("sasrec"))
    model.set_item_vocab(ItemVocab(list(range(1, 40))))
    _save(model, tmp_path / "m")
    (tmp_path / "d.seq").write_text("user_id\titem_ids_chronological\n7\t1 2 4 5\n8\t2 4 6 8 9\n")
    said = exits(capsys, ["--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.seq"), "--ks", "5", "--json",
                          "-", "--no-progress"], 1, "error: the model's scores are NaN or infinite for users 7, 8 (")
    assert "Traceback" not in said and said.count("\n") <= 1 and capsys.readouterr().out == ""



@pytest.mark.parametrize("name", ["sasrec", "mamba4rec"])        # a window graph, a step graph
def test_evaluate_onnx_refuses_scores_that_overflow_naming_the_users_as_evaluate_model(tmp_path, name):
    """An exported graph whose scores are +-inf at a real item is refused as evaluate_model refuses the model: a
    ScoreOverflow naming the users (not batch rows). Item 3 (in no history) holds +inf in one dimension, so each
    user's score of it is +inf or -inf by the sign of that query component: a scores graph names every user, as
    evaluate_model does; a top-K graph only those at +inf (ranked first; a -inf item is never in its top-K). A graph
    whose --exclude-items are -inf on purpose is not refused."""
    from export.onnx import export_model
    from zoo.evaluate import ScoreOverflow, evaluate_onnx

    torch.set_num_threads(1)
    rng = np.random.default_rng(3)
    ex = EvalExamples([rng.integers(4, 40, size=14) for _ in range(8)], rng.integers(4, 40, size=8),
                      [f"u{i}" for i in range(8)])
    model = _tiny(name)
    ids = torch.from_numpy(np.stack([h[-12:] for h in ex.histories]))
    with torch.no_grad():
        q = model.query_vectors(ids, torch.ones_like(ids, dtype=torch.bool))
        d = int(q.abs().min(dim=0).values.argmax())          # the dimension no user's query is near 0 in
        model.get_input_embeddings().weight[3, d] = float("inf")
        logits = model(ids, torch.ones_like(ids, dtype=torch.bool)).logits[:, 1:]
    first = [f"'u{r}'" for r in range(8) if bool((logits[r] == float("inf")).any() | logits[r].isnan().any())]
    assert 0 < len(first) < 8 and not logits.isfinite().all(dim=1).any()      # some users at +inf, some at -inf only
    with pytest.raises(ScoreOverflow) as ref:
        evaluate_model(model, ex, ks=(5,), progress=False)
    assert f"for users {', '.join(repr(f'u{r}') for r in range(8))} (" in str(ref.value)
    export_model(model, tmp_path / "scores", topk=5, with_scores=True, verify=False)
    export_model(model, tmp_path / "k5", topk=5, verify=False)
    with pytest.raises(ScoreOverflow) as got:
        evaluate_onnx(tmp_path / "scores", ex, ks=(5,), progress=False)
    assert str(got.value) == str(ref.value).replace("torch.float32", "fp32")
    with pytest.raises(ScoreOverflow, match=r"the model's scores are NaN or infinite for users? "
                                            + ", ".join(first) + r" \(a numeric overflow or NaN weights, e\.g\. in "
                                            r"fp32\)"):
        evaluate_onnx(tmp_path / "k5", ex, ks=(5,), progress=False)
    # the padding id 0 and --exclude-items are -inf in a scores graph on purpose: not an overflow
    clean = _tiny(name)
    export_model(clean, tmp_path / "excluded", topk=5, with_scores=True, exclude_items=[5, 9], verify=False)
    ranks = evaluate_onnx(tmp_path / "excluded", ex, ks=(5,), progress=False, return_ranks=True)[1]
    assert len(ranks) == 8


def test_cli_onnx_a_graph_whose_scores_overflow_is_the_models_one_line_error(tmp_path, capsys):
    """zoo.evaluate --onnx on a graph whose scores overflow ends as --model on its model does: the same line naming
    the users (the graph's precision for the model's dtype), exit 1, nothing on stdout -- it went on ranking NaN
    first. So does a graph exported with a NaN weight (item 5's: every user's score of item 5 is NaN; such a
    checkpoint is refused at --model's load)."""
    from export.onnx import export_model

    torch.set_num_threads(1)
    model = _overflowing(_tiny("sasrec"))
    model.set_item_vocab(ItemVocab(list(range(1, 40))))
    _save(model, tmp_path / "m")
    export_model(model, tmp_path / "g", topk=5, with_scores=True, verify=False)
    (tmp_path / "d.seq").write_text("user_id\titem_ids_chronological\n7\t1 2 4 5\n8\t2 4 6 8 9\n")
    argv = ["--data", str(tmp_path / "d.seq"), "--ks", "5", "--json", "-", "--no-progress"]
    want = "error: the model's scores are NaN or infinite for users 7, 8 ("
    by_model = exits(capsys, ["--model", str(tmp_path / "m"), *argv], 1, want)
    capsys.readouterr()
    said = exits(capsys, ["--onnx", str(tmp_path / "g"), *argv], 1, want)
    assert "Traceback" not in said and said.count("\n") <= 1 and capsys.readouterr().out == ""
    assert said == by_model.replace("torch.float32", "fp32")
    nan = _tiny("sasrec")
    with torch.no_grad():
        nan.get_input_embeddings().weight[5, 0] = float("nan")
    nan.set_item_vocab(ItemVocab(list(range(1, 40))))
    export_model(nan, tmp_path / "nan", topk=5, verify=False)
    assert exits(capsys, ["--onnx", str(tmp_path / "nan"), *argv], 1, want) == said
    assert capsys.readouterr().out == ""

def test_cli_ranks_file_has_one_line_ending(tmp_path):
    """--ranks-out: the '# zoo.evaluate ranks' line and every CSV row end in \\n alone (csv.writer's default \\r\\n
    mixed both: `cut`/`awk` fields ended in \\r), on stdout as in a file; the rows skip the first line, whatever '#'
    an id holds."""
    import csv

    d = save_model(tmp_path, ["#hash", "b", "c", "d", "e"])
    data = tmp_path / "d.csv"
    data.write_text("user_id,item_id,timestamp\n#u,#hash,1\n#u,b,2\n#u,#hash,3\nv,c,1\nv,d,2\nv,#hash,3\n")
    main(["--model", str(d), "--data", str(data), "--kcore", "0", "--ks", "1", "--no-progress", "--ranks-out",
          str(tmp_path / "r.csv")])
    raw = (tmp_path / "r.csv").read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n") and raw.count(b"\n") == 4, raw
    rows = list(csv.reader(raw.decode().splitlines()[1:]))
    assert rows[0] == ["user", "target", "rank", "history", "target_count"]
    assert [r[:2] for r in rows[1:]] == [["#u", "#hash"], ["v", "#hash"]]


def test_cli_a_config_json_nested_too_deeply_is_one_line(tmp_path):
    """transformers' AutoConfig parses config.json before any zoo code: a file like [[[...]]] raised RecursionError
    through zoo.evaluate (a traceback); it is one line naming the option."""
    d = save_model(tmp_path, ["a", "b", "c", "d", "e"])
    (d / "config.json").write_text("[" * 100000 + "]" * 100000)
    data = tmp_path / "d.csv"
    data.write_text("user_id,item_id,timestamp\nu,a,1\nu,b,2\nu,c,3\n")
    with pytest.raises(SystemExit, match="config.json: nested too deeply to read"):
        main(["--model", str(d), "--data", str(data), "--kcore", "0", "--ks", "1", "--no-progress"])


def test_intervals_cover_hr_ndcg_and_mrr_as_the_help_says(capsys, monkeypatch):
    """--intervals' help said 'for every metric' while intervals_95 holds HR, NDCG and MRR only (test_cli_intervals):
    the help names them, and why Recall@K and Hist@K have none."""
    import argparse

    parsers = []
    parse = argparse.ArgumentParser.parse_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", lambda self, *a, **k: parsers.append(self) or
                        parse(self, *a, **k))
    with pytest.raises(SystemExit):
        main(["--help"])
    said = {a.dest: a.help for a in parsers[0]._actions}["intervals"]
    assert "every metric" not in said and "HR, NDCG and MRR" in said and "Recall@K is HR@K" in said
    assert "Hist@K" in said


def test_the_progress_bar_shows_only_on_a_terminal(tmp_path, capsys, monkeypatch):
    """Without --no-progress, the bar goes to stderr only while it is a terminal: a log or `2> file` got its \r
    fragments glued to the first line of text."""
    import sys

    d = save_model(tmp_path, [10, 20, 30, 40, 50])
    data = tmp_path / "d.seq"
    data.write_text("user_id\titem_ids_chronological\n3\t20 40 10 50\n1\t10 20 30 40\n2\t50 10 30\n")
    for tty in (False, True):
        monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
        main(["--model", str(d), "--data", str(data), "--ks", "1", "--json", "-"])
        err = capsys.readouterr().err
        assert ("evaluate:" in err) == tty and ("\r" in err) == tty, err
        assert tty or err.startswith("NextItemModel")
