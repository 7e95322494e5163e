"""Stand-ins for ``huggingface_hub.HfApi``'s network calls, shared by the Hub tests (test_hub_push, test_hub_convert,
test_hub_stale_files): a plain module the tests import, not a fixture file. No network: each stand-in is installed
with pytest's ``monkeypatch`` on the ``HfApi`` class (every ``HfApi()`` the code under test makes gets it) and is
undone at the test's end.

Two depths:

- :func:`record_hub_calls`: ``create_repo``, ``update_repo_settings`` and ``upload_folder`` recorded as
  ``(name, repo_id, keywords)`` / ``("upload_folder", keywords)``; ``upload_folder`` returns :data:`COMMIT_INFO`.
- :func:`record_commits`: only ``create_commit`` is replaced (recorded as ``(repo_id, commit_message, sorted
  (operation type, path) pairs)``), so that huggingface_hub's own ``upload_folder`` selects the files to add and
  to delete and ``model.push_to_hub`` builds its own commit.

Both answer ``list_repo_files`` with the given remote files (not recorded) and give credentials through
``HF_TOKEN``.
"""

from __future__ import annotations

#: what the recorded ``upload_folder`` and ``create_commit`` return (``str()`` of it, for ``create_commit``)
COMMIT_INFO = "commit-info"


class _Commit:
    """What the recorded ``create_commit`` returns: the attributes transformers' ``push_to_hub`` reads, and
    :data:`COMMIT_INFO` as its text (what ``zoo.hub push`` prints)."""
    commit_url, oid, pr_url = "", "", None

    def __str__(self) -> str:
        return COMMIT_INFO


class _RepoUrl(str):
    """What ``create_repo`` returns: the repo's URL text with its ``repo_id`` (transformers reads ``.repo_id``)."""

    def __new__(cls, repo_id: str):
        url = super().__new__(cls, f"https://huggingface.co/{repo_id}")
        url.repo_id = repo_id
        return url


def _common(monkeypatch, remote_files, token_path) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, **kw: list(remote_files))
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    if token_path is not None:                         # no login's token file is read instead of HF_TOKEN's absence
        monkeypatch.setenv("HF_TOKEN_PATH", str(token_path))


def record_hub_calls(monkeypatch, token_path=None, remote_files=(".gitattributes",)) -> list:
    """Replace ``HfApi.create_repo``, ``update_repo_settings`` and ``upload_folder`` by recorders and return the list
    they append to, in call order: ``("create_repo", repo_id, kw)``, ``("update_repo_settings", repo_id, kw)``,
    ``("upload_folder", kw)``. ``list_repo_files`` answers ``remote_files`` (default: a new repo's), unrecorded.
    ``token_path``: where ``HF_TOKEN_PATH`` points (a file that does not exist: no login)."""
    import huggingface_hub

    calls: list = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))
        return _RepoUrl(repo_id)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "update_repo_settings",
                        lambda self, repo_id, **kw: calls.append(("update_repo_settings", repo_id, kw)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, **kw: calls.append(("upload_folder", kw)) or COMMIT_INFO)
    _common(monkeypatch, remote_files, token_path)
    return calls


def record_commits(monkeypatch, remote_files=(".gitattributes",), token_path=None, uploaded: dict | None = None,
                   offline: bool = False) -> list:
    """Replace ``HfApi.create_commit`` (and ``create_repo``, the Hub's YAML check) so that huggingface_hub's own
    ``upload_folder`` runs up to the commit, which is recorded: the returned list gets ``(repo_id, commit_message,
    sorted((operation type name, path_in_repo), ...))`` per commit. ``uploaded``: a dict that also gets each added
    path's ``path_or_fileobj``. ``list_repo_files`` answers ``remote_files``. The one-commit path is taken (no xet
    pipeline). ``offline``: huggingface_hub's offline mode (the model card lookup of ``model.push_to_hub`` must not
    wait on a network)."""
    import huggingface_hub
    import huggingface_hub.hf_api as hf_api

    commits: list = []

    def create_commit(self, repo_id, operations, commit_message=None, **kw):
        commits.append((repo_id, commit_message, sorted((type(op).__name__, op.path_in_repo) for op in operations)))
        if uploaded is not None:
            uploaded.update({op.path_in_repo: op.path_or_fileobj for op in operations
                             if type(op).__name__ == "CommitOperationAdd"})
        return _Commit()

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: _RepoUrl(repo_id))
    monkeypatch.setattr(huggingface_hub.HfApi, "_validate_yaml", lambda self, content, **kw: None)   # the Hub's check
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    monkeypatch.setattr(hf_api, "is_xet_available", lambda: False)        # the one-commit path, recorded above
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    _common(monkeypatch, remote_files, token_path)
    return commits
