"""The pretrained models bundled in hub_cards/: complete, loadable by Hub id offline, and their cards' numbers
reproduced by evaluating them on ../shared/data (skipped with the reason when the data folder is absent)."""

import json
import pathlib

import pytest
import torch
import yaml
from transformers import AutoModel

from zoo import hub

CARDS = pathlib.Path(__file__).resolve().parents[1] / "hub_cards"
FOLDERS = sorted(p for p in CARDS.iterdir() if (p / "config.json").exists()) if CARDS.exists() else []


def test_there_are_bundled_models():
    names = {p.name for p in FOLDERS}
    assert {"mamba4rec-ml1m", "lrurec-ml1m", "sasrec-ml1m"} <= names, names


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_folder_is_complete_and_small(folder):
    for f in ("config.json", "model.safetensors", "item_vocab.json", "README.md", "eval_results.json"):
        assert (folder / f).exists(), f"{folder.name}: {f} missing"
    assert not [f for f in folder.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".pkl")]
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 8 * 2**20, f"{folder.name} is {size / 2**20:.1f} MiB"
    card = (folder / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "transformers" and "sequential-recommendation" in meta["tags"]
    results = meta["model-index"][0]["results"][0]["metrics"]
    measured = json.loads((folder / "eval_results.json").read_text())["metrics"]
    for m in results:
        assert abs(m["value"] - measured[m["name"]]) < 1e-6, m["name"]


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_a_copy_without_its_vocabulary_is_refused_not_read_by_internal_index(folder, tmp_path):
    """The QA's finding: four cards' config.json (saved before save_pretrained recorded ``item_vocab_file``) did not
    say a vocabulary belongs to the weights, so a copy without item_vocab.json loaded and read the caller's ids as
    internal indices (MovieLens 2687 recommended as 255, silently). Every card records it now, so such a copy is a
    clear error."""
    import shutil

    assert json.loads((folder / "config.json").read_text(encoding="utf-8")).get("item_vocab_file") == "item_vocab.json"
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("onnx", "item_vocab.json"))
    with pytest.raises(ValueError, match="item_vocab.json"):
        AutoModel.from_pretrained(str(copy))


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_loads_by_hub_id_offline(folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = AutoModel.from_pretrained(f"{hub.HUB_ORG}/{folder.name}")
    assert m.item_vocab is not None and m.config.n_items == m.item_vocab.n_items


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_card_numbers_reproduced(folder, shared_file):
    from zoo.data import leave_one_out, load_dataset
    from zoo.evaluate import align_with_model, evaluate_model
    from zoo.metrics import bootstrap_interval

    torch.set_num_threads(2)
    info = json.loads((folder / "eval_results.json").read_text())
    model = AutoModel.from_pretrained(folder)
    ds, _ = align_with_model(load_dataset(shared_file(info["data_file"]), **info.get("data_options", {})), model)
    got, ranks = evaluate_model(model, leave_one_out(ds).test, ks=(5, 10, 20), exclude_history=info["exclude_history"],
                                progress=False, return_ranks=True)
    for k, v in info["metrics"].items():
        assert abs(got[k] - v) <= 1e-4, f"{folder.name} {k}: card {v:.6f}, measured now {got[k]:.6f}"
    # the rankings without a model the card sets the model beside, on the same users and protocol
    from zoo.evaluate import evaluate_baseline

    split = leave_one_out(ds)
    assert set(info["baselines"]) == {"markov", "pop"}, folder.name
    for kind, b in info["baselines"].items():
        base = evaluate_baseline(kind, split.train, split.test, int(model.config.n_items), ks=(10,),
                                 exclude_history=info["exclude_history"])
        for k, v in b["metrics"].items():
            assert abs(base[k] - v) <= 1e-4, f"{folder.name} {kind} {k}: card {v:.6f}, measured now {base[k]:.6f}"
    print(f"{folder.name}: " + " ".join(f"{k} {got[k]:.4f}" for k in ("HR@10", "NDCG@10", "MRR@10")))
    # the card's 95% intervals (a fixed-seed bootstrap of these ranks), in eval_results.json and in its text
    assert "intervals_95" in info, f"{folder.name}: no intervals; re-card it (python -m zoo.hub card --run {folder})"
    now = bootstrap_interval(ranks, ks=(10,))
    card = (folder / "README.md").read_text()
    for k, (lo, hi) in info["intervals_95"].items():
        assert abs(now[k][0] - lo) <= 1e-3 and abs(now[k][1] - hi) <= 1e-3, f"{folder.name} {k}: {(lo, hi)} vs {now[k]}"
        assert f"{k} [{lo:.4f}, {hi:.4f}]" in card, f"{folder.name}: the card does not state its {k} interval"
    ref = info.get("reference_protocol")      # numbers under the published reference's protocol, when it differs
    if ref:
        assert ref["exclude_history"] != info["exclude_history"]
        got = evaluate_model(model, leave_one_out(ds).test, ks=(5, 10, 20), exclude_history=ref["exclude_history"],
                             progress=False)
        for k, v in ref["metrics"].items():
            assert abs(got[k] - v) <= 1e-4, f"{folder.name} ({ref['command']}) {k}: card {v:.6f}, now {got[k]:.6f}"
        print(f"{folder.name} under the reference's protocol: "
              + " ".join(f"{k} {got[k]:.4f}" for k in ("HR@10", "NDCG@10")))


def test_readme_main_command_runs_on_the_bundled_default(capsys):
    from zoo.recommend import main

    out = main(["--stepwise"])
    assert out["model_type"] == "mamba4rec" and len(out["items"]) == 10
    assert out["stepwise_items"] == out["items"] and out["stepwise_max_abs_diff"] < 1e-4


@pytest.mark.parametrize("argv,message", [
    (["--user", "5"], "--user needs --data"),
    (["--data", "x.seq", "--user", "5", "--history", "1", "2"], "two sources of history"),
    (["--data", "x.seq", "--user", "5", "--timestamps", "1"], "two sources of history"),
    (["--timestamps", "1", "2"], "--timestamps needs --history"),
    (["--data", "x.seq"], "--data needs --user"),
])
def test_recommend_refuses_ambiguous_history_sources(argv, message, capsys):
    """A history option the command would ignore (``--user`` without a file, ``--history`` beside ``--data``) is a
    usage error before any model is loaded, not a recommendation for some other history."""
    from zoo.recommend import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_recommend_refuses_timestamps_for_a_model_that_ignores_them(capsys):
    from zoo.recommend import main

    with pytest.raises(SystemExit) as e:                # an option value the model refuses: a usage error (2)
        main(["--history", "1", "2", "3", "--timestamps", "1", "2", "3"])
    assert e.value.code == 2 and "mamba4rec does not read timestamps" in capsys.readouterr().err


EXPORTS = [(f, rel) for f in FOLDERS for rel in ("onnx", "onnx-window") if (f / rel / "state_spec.json").exists()]


@pytest.mark.parametrize("folder", [f for f, rel in EXPORTS if rel == "onnx"], ids=lambda x: x.name)
def test_card_step_graph_carries_the_fingerprint_of_the_cards_weights(folder):
    """A card's step graph names the weights its states come from (``state_fingerprint``, the tag an explicit-state
    store keeps): the card's own, so a state stored from its graph is accepted and one from other weights is not."""
    from export.onnx import state_fingerprint

    spec = json.loads((folder / "onnx" / "state_spec.json").read_text())
    assert spec["state_fingerprint"] == state_fingerprint(AutoModel.from_pretrained(folder), spec)


@pytest.mark.parametrize("folder,rel", EXPORTS, ids=lambda x: x if isinstance(x, str) else x.name)
def test_card_onnx_graph_serves_the_cards_weights(folder, rel):
    """An ONNX graph shipped in a card answers like the card's safetensors (a graph left over from earlier weights
    fails): 16 random histories of random lengths, top-k ids equal and scores within 1e-4 (a graph exported with
    --exclude-seen against the scores with the history masked)."""
    import numpy as np

    from export.runtime import SEEN_SCORE, OnnxStepSession, OnnxWindowSession

    model = AutoModel.from_pretrained(folder).eval()
    sess = (OnnxStepSession if rel == "onnx" else OnnxWindowSession)(folder / rel, threads=1)
    k = int(sess.spec["topk"])
    rng = np.random.default_rng(0)
    n_items, L = model.config.n_items, model.config.max_seq_length
    hists = [rng.integers(1, n_items, size=int(rng.integers(1, L + 1))).tolist() for _ in range(16)]
    window = sess.recommend(hists) if rel == "onnx-window" else None
    if sess.uses_timestamps and rel == "onnx-window":
        raise NotImplementedError("time-aware window graphs in a card: give this test their timestamps")
    for r, h in enumerate(hists):
        ts = (9.7e8 + np.cumsum(rng.integers(0, 86400, size=len(h)))).astype(np.float64) if sess.uses_timestamps \
            else None
        got = (sess.prime([h], None if ts is None else [ts]) if rel == "onnx" else window)   # one priming call per row
        row = 0 if rel == "onnx" else r
        sc = model.predict(torch.tensor([h]), timestamps=None if ts is None else torch.from_numpy(ts)[None])[0]
        if sess.spec.get("exclude_seen"):                                  # --exclude-seen: the history ranks last
            sc[h] = SEEN_SCORE
        want = sc.topk(k)
        assert np.asarray(got.topk_ids)[row].tolist() == want.indices.tolist(), (folder.name, rel, r)
        assert np.allclose(np.asarray(got.topk_scores)[row], want.values.numpy(), atol=1e-4), (folder.name, rel, r)


@pytest.mark.parametrize("folder,rel", EXPORTS, ids=lambda x: x if isinstance(x, str) else x.name)
def test_card_onnx_graph_reproduces_the_cards_numbers(folder, rel, shared_file):
    """The deployed artefact's numbers: the card's ONNX graph run with ONNX Runtime on the test split (step graphs
    primed with each user's window in one call, window graphs padded) gives the card's @5/@10 metrics (1e-4), under
    the card's protocol (an LRURec-protocol card's graph masks the history itself: --exclude-seen)."""
    from zoo.data import leave_one_out, load_dataset
    from zoo.evaluate import evaluate_onnx
    from zoo.vocab import ItemVocab

    info = json.loads((folder / "eval_results.json").read_text())
    spec = json.loads((folder / rel / "state_spec.json").read_text())
    assert bool(spec.get("exclude_seen")) == bool(info["exclude_history"]), (
        f"{folder.name}/{rel}: the card's protocol {'masks' if info['exclude_history'] else 'does not mask'} the "
        f"history, the graph {'does' if spec.get('exclude_seen') else 'does not'}")
    ds = load_dataset(shared_file(info["data_file"])).reencode(ItemVocab.load(folder / rel), unknown="error")
    got = evaluate_onnx(folder / rel, leave_one_out(ds).test, ks=(5, 10), threads=2, progress=False)
    for k, v in got.items():
        card = info["metrics"][k]
        assert abs(v - card) <= 1e-4, f"{folder.name}/{rel} {k}: card {card:.6f}, graph {v:.6f}"
    print(f"{folder.name}/{rel}: " + " ".join(f"{k} {got[k]:.4f}" for k in ("HR@10", "NDCG@10", "MRR@10")))
