"""``python -m zoo.hub push`` that fails says what it left on the Hub: "nothing was committed" where no commit can
have been made (a failure before the upload; a connection refused or a name that does not resolve, before any request
was sent; the Hub's 4xx refusal), and "the commit's outcome is unknown" only where a request may have reached the Hub
(a read timeout or a dropped connection after sending, a gateway's 5xx). No network: a closed local port refuses at
once, and the other failures are the HTTP client's own exception classes raised by stand-ins."""

import importlib

import pytest

import zoo
from zoo import hub
from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = "me/x"
CLOSED = "http://127.0.0.1:9"             # the discard port, closed: a connection to it is refused at once


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A tiny folder that passes push's checks (weights, config, vocabulary, a README without metadata), HF_TOKEN set,
    the Hub's endpoint a closed local port and huggingface_hub online."""
    import huggingface_hub

    model = Mamba4RecModel(Mamba4RecConfig(n_items=30, hidden_size=16, d_state=4)).eval()
    model.set_item_vocab(zoo.ItemVocab(list(range(100, 129))))
    model.save_pretrained(tmp_path / "tiny")
    (tmp_path / "tiny" / "README.md").write_text("card")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", CLOSED)
    return tmp_path / "tiny"


def _client():
    """The HTTP client module huggingface_hub raises the errors of (httpx, or httpx2 in newer releases)."""
    from huggingface_hub.errors import HfHubHTTPError

    base = next(b for b in HfHubHTTPError.__bases__ if b is not OSError)
    return importlib.import_module(base.__module__.split(".")[0])


def _push_fails(folder) -> str:
    with pytest.raises(SystemExit) as e:
        hub.main(["push", str(folder), "--repo-id", REPO])
    message = str(e.value.code)
    assert message.startswith("push failed: ") and "\n" not in message, message
    return message


def _hub_reached_until_upload(monkeypatch, upload=None):
    """create_repo and list_repo_files answered (a repo that exists, empty); ``upload`` replaces upload_folder
    (None: huggingface_hub's own, which then meets the closed port)."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: f"{CLOSED}/{repo_id}")
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, **kw: [".gitattributes"])
    if upload is not None:
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload)


def test_refused_before_the_upload_says_nothing_was_committed(folder):
    """The first call (create_repo) meets a refused connection: the message said only the client's error."""
    message = _push_fails(folder)
    assert message.startswith("push failed: ConnectError: ") and "Connection refused" in message, message
    assert message.endswith(f"(reaching the Hub at {CLOSED}); nothing was committed (push failed before its "
                            "upload)"), message
    assert "unknown" not in message


def test_refused_at_the_upload_says_nothing_was_committed(folder, monkeypatch):
    """huggingface_hub's own upload_folder meets the refused connection: no request was sent, nothing committed."""
    _hub_reached_until_upload(monkeypatch)
    message = _push_fails(folder)
    assert message.startswith("push failed: ConnectError: "), message
    assert message.endswith("; nothing was committed (no request reached the Hub)"), message


@pytest.mark.parametrize("error, said", [
    ("ConnectError", "nothing was committed (no request reached the Hub)"),        # DNS failure: no connection
    ("ConnectTimeout", "nothing was committed (no request reached the Hub)"),
    ("ReadTimeout", "the commit's outcome is unknown"),                             # sent, no answer
    ("RemoteProtocolError", "the commit's outcome is unknown"),                     # sent, connection dropped
    ("WriteError", "the commit's outcome is unknown")])
def test_the_upload_says_whether_a_request_may_have_reached_the_hub(folder, monkeypatch, error, said):
    client = _client()

    def upload(self, **kw):
        raise getattr(client, error)({"ConnectError": "[Errno -2] Name or service not known",
                                      "RemoteProtocolError": "Server disconnected without sending a response.",
                                      "WriteError": "[Errno 32] Broken pipe"}.get(error, "timed out"))

    _hub_reached_until_upload(monkeypatch, upload)
    message = _push_fails(folder)
    assert message.startswith(f"push failed: {error}: ") and f"(reaching the Hub at {CLOSED}); {said}" in message
    if "unknown" in said:
        assert message.endswith(f"see {CLOSED}/{REPO}/commits/main before pushing again"), message
    else:
        assert "unknown" not in message


@pytest.mark.parametrize("status, said", [
    (403, "nothing was committed (the Hub refused the upload: HTTP 403)"),
    (400, "nothing was committed (the Hub refused the upload: HTTP 400)"),          # BadRequestError: a ValueError
    (502, "the commit's outcome is unknown")])                                      # a gateway: the Hub may have it
def test_the_hubs_answer_says_whether_it_committed(folder, monkeypatch, status, said):
    from huggingface_hub.errors import BadRequestError, HfHubHTTPError

    client = _client()

    def upload(self, **kw):
        response = client.Response(status, request=client.Request("POST", f"{CLOSED}/api/models/{REPO}/commit/main"))
        raise (BadRequestError if status == 400 else HfHubHTTPError)(f"{status} answered", response=response)

    _hub_reached_until_upload(monkeypatch, upload)
    message = _push_fails(folder)
    assert f"{status} answered" in message and f"; {said}" in message, message


def test_a_programming_error_in_the_upload_is_no_hub_failure(folder, monkeypatch):
    def upload(self, **kw):
        raise TypeError("a bug")

    _hub_reached_until_upload(monkeypatch, upload)
    with pytest.raises(TypeError, match="a bug"):
        hub.main(["push", str(folder), "--repo-id", REPO])
