"""``zoo.hub push`` and the repo files of an earlier push: the zoo's own files the folder no longer holds (a stale
``item_vocab.json``, an ONNX graph, weight shards, a log) are deleted in the push's commit and named on stderr; files
the zoo does not own (a user's notes or images, ``.gitattributes``) are kept, and named too. No network: the Hub's
calls are :mod:`tests.hub_fakes`' stand-ins, huggingface_hub's own ``upload_folder`` choosing what to commit."""

import fnmatch

import pytest
import torch

from tests.hub_fakes import record_commits
from test_pretrained_cache import tiny
from zoo import hub

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = "me/tiny"

#: the repo as an earlier push and its owner left it
REMOTE = [".gitattributes", "README.md", "config.json", "model.safetensors", "item_vocab.json",
          "model.safetensors.index.json", "model-00001-of-00002.safetensors", "onnx/model.onnx", "onnx/state_spec.json",
          "onnx/item_vocab.json", "soup_log.json", "notes.md", "images/plot.png", "resume/run_log.json"]
OWNED_STALE = ["model-00001-of-00002.safetensors", "model.safetensors.index.json", "onnx/item_vocab.json",
               "onnx/model.onnx", "onnx/state_spec.json", "soup_log.json"]
USERS = ["images/plot.png", "notes.md", "resume/run_log.json"]


def test_a_stale_item_vocabulary_is_among_the_files_a_push_deletes():
    """A repo holding ``item_vocab.json`` that a push no longer uploads would serve the new weights with the old
    vocabulary (their ids): it is deleted; the user's files and ``.gitattributes`` never are."""
    deleted, kept = hub.stale_repo_files(REMOTE, ["README.md", "config.json", "model.safetensors"])
    assert deleted == sorted(OWNED_STALE + ["item_vocab.json"]) and kept == USERS, (deleted, kept)
    deleted, kept = hub.stale_repo_files(REMOTE, REMOTE[1:])                     # everything re-uploaded
    assert deleted == [] and kept == []
    for name in ("soup[1]_log.json", "a*b?_log.json"):                           # delete_patterns match themselves only
        pattern = hub._fnmatch_literal(name)
        assert fnmatch.fnmatchcase(name, pattern) and not fnmatch.fnmatchcase("soup1_log.json", pattern)


def test_push_deletes_the_zoos_stale_files_only_and_says_so(tmp_path, monkeypatch, capsys):
    """push deleted every repo file the folder did not hold (``delete_patterns=["*"]``): a user's notes and images
    uploaded on the Hub went with an earlier push's graph. Now the commit deletes the zoo's stale files only (an
    ONNX folder the card no longer has, a sharded checkpoint's index and shards, a soup log), keeps the others and
    .gitattributes, and stderr names both; the folder's own files are uploaded."""
    folder = tmp_path / "tiny"
    torch.manual_seed(0)
    tiny().save_pretrained(folder)
    (folder / "README.md").write_text("card")
    commits = record_commits(monkeypatch, REMOTE, token_path=tmp_path / "no-token-file")
    hub.main(["push", str(folder), "--repo-id", REPO])
    ((repo, message, ops),) = commits
    assert repo == REPO and message == "Upload tiny"
    assert {p for kind, p in ops if kind == "CommitOperationDelete"} == set(OWNED_STALE), ops
    assert {p for kind, p in ops if kind == "CommitOperationAdd"} == {"README.md", "config.json", "model.safetensors",
                                                                     "item_vocab.json"}, ops
    err = " ".join(capsys.readouterr().err.split())
    assert (f"deleting from {REPO} in the same commit the files of an earlier push that {folder} does not hold: "
            f"{', '.join(OWNED_STALE)}") in err, err
    assert f"keeping {REPO}'s files that are no part of a card ({', '.join(USERS)})" in err, err
    commits = record_commits(monkeypatch, [".gitattributes", "README.md"])       # nothing stale: nothing said
    hub.main(["push", str(folder), "--repo-id", REPO])
    err = capsys.readouterr().err
    assert "deleting from" not in err and "keeping" not in err, err
    assert [kind for kind, _ in commits[0][2]] == ["CommitOperationAdd"] * 4, commits
