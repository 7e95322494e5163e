"""``python -m zoo.hub push``: what it publishes, under which visibility, and the card folders it refuses before any
Hub call. No network: HfApi's calls are replaced by recorders (the deepest ones keep huggingface_hub's own
``upload_folder``, so that its file selection and its deletions are what is checked)."""

import json
import shutil

import pytest
import torch
from transformers import AutoModel

from tests.hub_fakes import record_commits, record_hub_calls
from tests.test_hub_convert import _tiny_gru4rec_run, exits
from zoo import hub

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = "me/tiny"


@pytest.fixture(scope="module")
def built_card(tmp_path_factory):
    """A tiny GRU4Rec card folder written for :data:`REPO` (``zoo.hub card --repo-id``) with its step graph
    (``export.onnx --card-dir``), and the same run carded without ``--repo-id`` (its code loads the folder): built
    once, copied by :func:`card`."""
    from export.onnx import main as onnx_main

    pytest.importorskip("onnxruntime")
    tmp = tmp_path_factory.mktemp("push")
    torch.set_num_threads(1)
    data, _ = _tiny_gru4rec_run(tmp)
    hub.build_card_folder(str(tmp / "a"), "tiny", data, out_dir=str(tmp / "tiny"), repo_id=REPO, progress=False)
    assert onnx_main(["--model", str(tmp / "tiny"), "--card-dir", str(tmp / "tiny")]) == 0
    hub.build_card_folder(str(tmp / "a"), "tiny", data, out_dir=str(tmp / "local" / "tiny"), progress=False)
    return tmp


@pytest.fixture
def card(built_card, tmp_path):
    """A fresh copy of the card of :func:`built_card`, as ``tmp_path / "tiny"``."""
    return shutil.copytree(built_card / "tiny", tmp_path / "tiny")


@pytest.fixture
def hub_calls(monkeypatch, tmp_path):
    """HfApi's calls recorded (credentials from HF_TOKEN; :func:`tests.hub_fakes.record_hub_calls`): ``create_repo``,
    ``update_repo_settings`` and ``upload_folder`` (its arguments); ``upload_folder`` returns ``"commit-info"``."""
    return record_hub_calls(monkeypatch, token_path=tmp_path / "no-token-file")


def test_a_new_repo_gets_its_owners_default_visibility_unless_private(card, hub_calls, capsys):
    """push passed ``create_repo(private=False)`` always, which overrides an organisation's private-by-default: a new
    repo in such an organisation was created public. Without --private it passes ``private=None`` now (huggingface_hub:
    public unless the owner's default is private); --private still makes it (and an existing repo) private."""
    hub.main(["push", str(card), "--repo-id", REPO])
    assert hub_calls[0] == ("create_repo", REPO, {"private": None, "exist_ok": True}), hub_calls
    assert [c[0] for c in hub_calls] == ["create_repo", "upload_folder"]
    hub_calls.clear()
    assert hub.push(str(card), REPO) == "commit-info"              # the Python default too
    assert hub_calls[0][2]["private"] is None
    hub_calls.clear()
    hub.main(["push", str(card), "--repo-id", REPO, "--private"])
    assert hub_calls[0][2]["private"] is True and hub_calls[1] == ("update_repo_settings", REPO, {"private": True})
    assert "gets its owner's default visibility" in _push_help(capsys)


def _push_help(capsys) -> str:
    """``python -m zoo.hub push --help``, its lines joined (argparse wraps them to the terminal's width)."""
    with pytest.raises(SystemExit):
        hub.main(["push", "--help"])
    return " ".join(capsys.readouterr().out.split())


def _push_refused(capsys, folder, status, *patterns, repo=REPO):
    """``zoo.hub push FOLDER --repo-id REPO`` exits with ``status`` and one stderr line matching every pattern."""
    import re

    with pytest.raises(SystemExit) as e:
        hub.main(["push", str(folder), "--repo-id", repo])
    said = e.value.code if isinstance(e.value.code, str) else ""
    err = capsys.readouterr().err + said
    line = [x for x in err.splitlines() if "push " in x and ("refused" in x or "failed" in x)]
    assert (1 if said else e.value.code) == status and len(line) == 1, (e.value.code, err)
    for pat in patterns:
        assert re.search(pat, line[0]), (pat, line[0])
    assert "Traceback" not in err
    return line[0]


def test_a_card_whose_weights_were_replaced_in_its_folder_is_not_pushed(card, hub_calls, capsys):
    """push checked only that the weights load: after ``add_items`` + ``save_pretrained`` into the card folder (the
    README's "catalogue that gains items" flow) it published the new weights beside a README and training log of the
    old ones and an ONNX graph, vocabulary and state fingerprint of the old weights. Each disagreement is named on one
    line now (exit 1), and nothing reaches the Hub: no repo is created."""
    model = AutoModel.from_pretrained(str(card))
    n = model.config.n_items - 1
    model.add_items([900001, 900002])
    model.save_pretrained(str(card))
    line = _push_refused(capsys, card, 1, r"push failed: .*tiny is not pushed: ",
                         rf"README.md reports numbers ranked over {n} items, the weights rank {n + 2}",
                         r"training_log.json's last stage trained [\d,]+ parameters, the weights have [\d,]+",
                         rf"onnx/ holds a gru4rec graph of {n} items, the weights are a gru4rec model of {n + 2}: "
                         r"re-export it \(python -m export.onnx",
                         r"re-carding it: python -m zoo.hub card --run \S+tiny --out \S+tiny")
    assert hub_calls == [], line


def test_a_graph_or_results_of_other_weights_of_the_same_size_are_named(card, hub_calls, capsys):
    """Weights changed in place at the same size (fine-tuned, then saved into the card) leave every count as it was:
    the step graph's ``state_fingerprint`` (export.onnx.state_fingerprint of the weights) tells, and so do an ONNX item
    vocabulary that maps other ids, README numbers that are not eval_results.json's, and a graph folder without its
    spec (an interrupted export)."""
    model = AutoModel.from_pretrained(str(card))
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    model.save_pretrained(str(card))
    _push_refused(capsys, card, 1, r"onnx/ was exported from other weights \(its state_fingerprint is not the weights'")
    assert hub_calls == []
    vocab_path = card / "onnx" / "item_vocab.json"
    vocab = json.loads(vocab_path.read_text())
    key = next(k for k, v in vocab.items() if isinstance(v, list))
    vocab[key][0], vocab[key][1] = vocab[key][1], vocab[key][0]
    vocab_path.write_text(json.dumps(vocab))
    results = json.loads((card / "eval_results.json").read_text())
    results["metrics"]["HR@10"] += 0.01
    (card / "eval_results.json").write_text(json.dumps(results))
    _push_refused(capsys, card, 1, r"onnx/item_vocab.json maps other item ids than the weights' item_vocab.json",
                  r"README.md's model-index and eval_results.json give other numbers \(HR@10 ")
    (card / "onnx" / "state_spec.json").unlink()
    _push_refused(capsys, card, 1, r"onnx/ holds no state_spec.json \(an interrupted export\?\)")
    shutil.rmtree(card / "onnx")                    # removed by hand: the README still describes it
    _push_refused(capsys, card, 1, r"README.md's ONNX section describes onnx/, which the folder does not hold: "
                                   r"export it again \(python -m export.onnx --model \S+ --card-dir \S+\), or re-card")
    assert hub_calls == []


def test_the_unchanged_card_is_pushed_and_the_bundled_cards_pass_the_checks(card, hub_calls, monkeypatch):
    """The checks refuse nothing that belongs together: the tiny card as written, and every bundled card under its own
    id (their step graphs' fingerprints recomputed from their weights)."""
    assert hub.push(str(card), REPO) == "commit-info"
    from zoo.pretrained import bundled_models

    for name, path in bundled_models().items():
        model = AutoModel.from_pretrained(str(path))
        text, meta, parsed, problems = hub.card_metadata(path)
        assert problems == [] and meta is not None, (name, problems)
        assert hub.card_weights_problems(path, model, text, parsed) == [], name
        assert hub.card_id_problems(path, f"{hub.HUB_ORG}/{name}", text, parsed) == [], name


def test_a_card_written_for_another_id_or_its_local_folder_is_refused(built_card, card, hub_calls, capsys):
    """push published whatever id the README named: a card written without --repo-id (its code loads an absolute
    path on the author's machine, its model-index is named ``tiny``), or the bundled card under someone else's id
    (its code loads ssm-rec-zoo/<name>). Each is a usage error (exit 2) naming what differs and how to re-card it."""
    local = built_card / "local" / "tiny"
    _push_refused(capsys, local, 2, rf"push refused: README.md was written for another model than --repo-id {REPO}: ",
                  r"its model-index names tiny;", rf"its code loads the local folder {local}",
                  rf"--model {local}", rf"re-card it for this id: python -m zoo.hub card --run {local} --out {local} "
                  rf"--name NAME --data DATA --repo-id {REPO}")
    _push_refused(capsys, card, 2, r"its model-index names me/tiny; its code loads me/tiny", repo="me/other")
    from zoo.pretrained import bundled_models

    name, path = next(iter(bundled_models().items()))
    _push_refused(capsys, path, 2, rf"its model-index names {hub.HUB_ORG}/{name}",
                  r"--run COPY --out COPY .*COPY: a copy of it outside", repo="alice/x")
    assert hub_calls == []


def test_push_mirrors_the_folder_deleting_what_it_no_longer_holds(card, monkeypatch, tmp_path, capsys):
    """upload_folder ran without delete_patterns: a graph or log the card no longer holds stayed published beside the
    new weights. One commit adds the folder's files and deletes the repo's other card files (huggingface_hub's own
    delete_patterns; a file re-uploaded is not deleted; .gitattributes and a user's files are kept). Hidden
    stages are not uploaded, the Hub's .eval_results/*.yaml is. The commit is named after the folder, also when it
    is given with a trailing slash or as ``.`` (it said "Upload " or "Upload .")."""
    commits = record_commits(monkeypatch, [".gitattributes", "README.md", "model.safetensors",
                                           "onnx-window/model.onnx", "soup_log.json", ".eval_results/old.yaml"])
    (card / ".eval_results").mkdir()
    (card / ".eval_results" / "ml.yaml").write_text("- dataset: {id: me/data, task_id: default}\n  value: 0.3\n")
    (card / ".save-x").mkdir()
    (card / ".save-x" / "model.safetensors").write_bytes(b"x")
    hub.main(["push", str(card) + "/", "--repo-id", REPO])
    ((repo, message, ops),) = commits
    added = {p for kind, p in ops if kind == "CommitOperationAdd"}
    deleted = {p for kind, p in ops if kind == "CommitOperationDelete"}
    assert repo == REPO and message == "Upload tiny", commits
    assert deleted == {"onnx-window/model.onnx", "soup_log.json", ".eval_results/old.yaml"}, ops
    assert added == {"README.md", "config.json", "model.safetensors", "item_vocab.json", "eval_results.json",
                     "training_log.json", "onnx/model.onnx", "onnx/state_spec.json", "onnx/item_vocab.json",
                     ".eval_results/ml.yaml"}, ops
    commits.clear()
    monkeypatch.chdir(card)
    hub.main(["push", ".", "--repo-id", REPO])
    assert commits[0][1] == "Upload tiny", commits
    assert "deletes the card files of the repository the folder does not hold" in _push_help(capsys)


def test_card_metadata_the_hub_would_reject_is_refused_before_the_repo_is_created(card, hub_calls, capsys,
                                                                                  monkeypatch):
    """A card whose metadata huggingface_hub cannot read was met only by the Hub, after create_repo (an empty repo
    left), and its three-line message was printed as is. The metadata is read locally first now (ModelCard, the
    model-index round trip, .eval_results/*.yaml), and any push error is one line, the Hub's rejection included."""
    import huggingface_hub

    readme = card / "README.md"
    good = readme.read_text()
    readme.write_text(good.replace("      type: ", "      kind: ", 1))          # task: type -> kind
    _push_refused(capsys, card, 1, r"README.md: huggingface_hub cannot read its metadata \(Invalid `model_index`")
    readme.write_text(good.replace("license: apache-2.0", "license: [apache-2.0]"))
    _push_refused(capsys, card, 1, r"README.md: its metadata's license is a YAML list, not text")
    readme.write_text(good.replace("---\n", "---\n[\n", 1))
    _push_refused(capsys, card, 1, r"README.md: its metadata block is not YAML")
    readme.write_text(good)
    (card / ".eval_results").mkdir()
    (card / ".eval_results" / "x.yaml").write_text("dataset: me/data\n")
    _push_refused(capsys, card, 1, r"\.eval_results/x\.yaml is not the Hub's evaluation results format")
    assert hub_calls == []
    (card / ".eval_results" / "x.yaml").unlink()

    def rejected(self, **kw):
        raise ValueError('Invalid metadata in README.md.\n- "model-index[0].results[0]" is invalid\n- "license" is '
                         "invalid")
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", rejected)
    _push_refused(capsys, card, 1, r'^push failed: Invalid metadata in README.md. - "model-index\[0\]\.results\[0\]" '
                                   r'is invalid - "license" is invalid$')


def test_a_log_below_the_top_is_no_part_of_a_card(card, hub_calls, capsys):
    """``*_log.json`` (a run or soup folder's own log, carded in place) matched at any depth (fnmatch's ``*`` crosses
    ``/``): resume/run_log.json or onnx/sub/x_log.json were published without --allow-extra and without a note. The
    card's patterns match at their own depth now; the Hub's .eval_results/*.yaml is card content, anything else
    there is not."""
    for rel in ("resume/run_log.json", "onnx/sub/x_log.json", "train_log.json", ".eval_results/ok.yaml",
                ".eval_results/notes.txt", ".eval_results/.hidden"):
        (card / rel).parent.mkdir(parents=True, exist_ok=True)
        (card / rel).write_text("[]" if rel.endswith(".yaml") else "{}")
    assert hub.extra_files(card) == [".eval_results/notes.txt", "onnx/sub/x_log.json", "resume/run_log.json"]
    with exits(capsys, 2, r"push refused: .*no part of a model card \(.eval_results/notes.txt, onnx/sub/x_log.json, "
                          r"resume/run_log.json\)"):
        hub.main(["push", str(card), "--repo-id", REPO])
    assert hub_calls == []
    from huggingface_hub.utils import filter_repo_objects

    files = [".eval_results/ok.yaml", ".eval_results/.hidden", ".eval_resultsx/a", ".eval_results", ".e", ".git/x",
             ".save-a/model.safetensors", "onnx/.export-staging-b/model.onnx", "README.md"]
    assert list(filter_repo_objects(files, ignore_patterns=list(hub.PUSH_IGNORE))) == [".eval_results/ok.yaml",
                                                                                        "README.md"]


def test_graphs_that_cannot_be_checked_here_are_a_missing_package(card, hub_calls, capsys, monkeypatch):
    """A card's ONNX graphs are checked against its weights with onnx and onnxruntime: where they are missing, push
    says which package to install (exit 4) rather than publishing graphs it could not check."""
    import export.deps
    from export.deps import MissingDependencyError

    def missing(module, needed_by, **kw):
        raise MissingDependencyError(f"{module} is not installed; {needed_by} needs it: pip install onnx")
    monkeypatch.setattr(export.deps, "require", missing)
    with exits(capsys, 4, r"push failed: onnx is not installed; zoo.hub push \(checking the ONNX graphs of \S+tiny "
                          r"against its weights\) needs it"):
        hub.main(["push", str(card), "--repo-id", REPO])
    assert hub_calls == []


def test_every_card_says_what_to_install():
    """The cards began with `import zoo` and named `ssm-rec-zoo` but never said what to install; plain transformers
    answers a zoo model type with "upgrade transformers" (and PyPI's `zoo` is another project): every card, and the
    card template, says which package registers the model type."""
    import json
    from pathlib import Path

    for readme in sorted((Path(__file__).resolve().parents[1] / "hub_cards").glob("*/README.md")):
        model_type = json.loads((readme.parent / "config.json").read_text())["model_type"]
        text = readme.read_text()
        assert "Loading it needs this project's package, `ssm-rec-zoo`" in text, readme.parent.name
        assert f"registers the model type `{model_type}` with transformers' Auto classes" in text, readme.parent.name
