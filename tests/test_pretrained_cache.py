"""How ``from_pretrained("org/name")`` uses the Hugging Face cache, the bundled copies and the network: partial
snapshots, the connection probe behind a proxy, ``force_download``, the seeded cache, the command-line options.

No network: every Hub cache here is built locally in huggingface_hub's layout (``models--org--name/{blobs,refs,
snapshots/<rev>}``, files linked into blobs), and every download is a stub.
"""

import argparse
import hashlib
import json
import os
import re
import socket
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

import zoo
from zoo import pretrained
from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel
from net_fakes import record_connections

ORG = pretrained.HUB_ORG
IDS = torch.tensor([[1, 2, 3]])
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
              "no_proxy", "REQUEST_METHOD")


def tiny(seed: int = 0, n_items: int = 30) -> Mamba4RecModel:
    torch.manual_seed(seed)
    model = Mamba4RecModel(Mamba4RecConfig(n_items=n_items, hidden_size=16, d_state=4)).eval()
    model.set_item_vocab(zoo.ItemVocab(list(range(100, 100 + n_items - 1))))
    return model


def snapshot(cache: Path, repo_id: str, files: dict, rev: str = "f" * 40, refs=("main",)) -> Path:
    """A snapshot of ``repo_id`` at commit ``rev`` in huggingface_hub's cache layout (what a real download leaves):
    ``files`` (``{relative path: bytes}``) stored as blobs and linked from ``snapshots/<rev>``; ``refs`` point at it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / rev
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        dst = snap / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(os.path.relpath(blob, dst.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for r in refs:
        (repo / "refs" / r).write_text(rev)
    return snap


def files_of(folder: Path, prefix: str = "", only=None) -> dict:
    return {prefix + f.name: f.read_bytes() for f in sorted(folder.iterdir())
            if f.is_file() and (only is None or f.name in only)}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty default HF cache (``tmp_path/hf``), the Hub offline, no proxy in the environment."""
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in PROXY_VARS + ("HF_ENDPOINT", "ZOO_HUB_PROBE_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "hf"


@pytest.fixture
def bundled(tmp_path, monkeypatch, cache):
    """A bundled model ``tiny-mamba4rec`` (``$ZOO_BUNDLED_DIR``), seeded into the empty default cache."""
    model = tiny()
    model.save_pretrained(tmp_path / "bundle" / "tiny-mamba4rec")
    monkeypatch.setenv("ZOO_BUNDLED_DIR", str(tmp_path / "bundle"))
    assert f"{ORG}/tiny-mamba4rec" in pretrained.seed_hf_cache()
    return model


def logits(model) -> torch.Tensor:
    return model.eval()(IDS).logits


# ------------------------------------------------------------------------------ 7: partial cached snapshots
@pytest.mark.parametrize("org", [ORG, "org"])
def test_a_config_only_snapshot_does_not_shadow_the_bundled_copy(bundled, cache, tmp_path, org):
    """What an online ``AutoConfig.from_pretrained(id)`` leaves: a real snapshot holding config.json alone, refs/main
    pointing at it (seeding leaves a real download alone). Offline, it shadowed the bundled copy ("... has no weights:
    model.safetensors is missing"); now the bundled copy stands in, its config being the snapshot's."""
    repo = f"{org}/tiny-mamba4rec"
    snap = snapshot(cache, repo, files_of(tmp_path / "bundle" / "tiny-mamba4rec", only={"config.json"}))
    assert repo not in pretrained.seed_hf_cache() and sorted(os.listdir(snap)) == ["config.json"]   # left alone
    for load in (AutoModel.from_pretrained, zoo.SeqRecPreTrainedModel.from_pretrained, Mamba4RecModel.from_pretrained):
        assert torch.equal(logits(load(repo)), logits(bundled))
    assert torch.equal(logits(Mamba4RecModel.from_pretrained(repo, local_files_only=True)), logits(bundled))
    assert pretrained.resolve_pretrained(repo) == str(tmp_path / "bundle" / "tiny-mamba4rec")
    assert sorted(os.listdir(snap)) == ["config.json"]                  # the snapshot itself is never written to


def test_a_readme_only_snapshot_does_not_shadow_the_bundled_copy(bundled, cache, tmp_path):
    """What ``ModelCard.load(id)`` leaves (README.md alone): the zoo's loaders use the bundled copy."""
    repo = f"{ORG}/tiny-mamba4rec"
    snapshot(cache, repo, {"README.md": b"---\nlicense: apache-2.0\n---\n# card\n"})
    assert torch.equal(logits(zoo.SeqRecPreTrainedModel.from_pretrained(repo)), logits(bundled))


def test_a_partial_snapshot_of_another_config_is_an_error_not_the_bundled_weights(bundled, cache, tmp_path):
    """A config-only snapshot whose config.json is not the bundled one's (the Hub's main moved on): AutoModel would
    build that config around the bundled weights, so it is an error saying what to do, for every loader."""
    repo = f"{ORG}/tiny-mamba4rec"
    cfg = json.loads((tmp_path / "bundle" / "tiny-mamba4rec" / "config.json").read_text())
    cfg["dropout_prob"] = 0.3
    snapshot(cache, repo, {"config.json": json.dumps(cfg).encode()})
    want = (rf"^cannot load '{repo}': its cached snapshot \S+snapshots/f{{40}} lacks model\.safetensors and "
            r"item_vocab\.json, which cannot be downloaded now \(the Hugging Face Hub is not reachable \(offline "
            r"mode: HF_HUB_OFFLINE=1\)\); its config\.json is not the bundled copy's .* delete that snapshot "
            rf"\(hf cache rm model/{repo}\) to use the bundled copy$")
    for load in (AutoModel.from_pretrained, zoo.SeqRecPreTrainedModel.from_pretrained):
        with pytest.raises(OSError, match=want):
            load(repo)


def test_a_partial_snapshot_of_another_repo_names_what_is_missing(cache, tmp_path):
    """A repo with no bundled copy: a snapshot without its weights, its vocabulary or one of its weight shards is an
    ``OSError`` naming the missing file and why it was not fetched (it was handed to the loader, which said "has no
    weights" or failed on the shard); a whole snapshot loads."""
    model = tiny(seed=3)
    model.save_pretrained(tmp_path / "src")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="4KB")
    src = files_of(tmp_path / "src")
    cases = {"acme/config-only": ({"config.json": src["config.json"]}, "model.safetensors and item_vocab.json"),
             "acme/no-vocab": ({k: v for k, v in src.items() if k != "item_vocab.json"}, "item_vocab.json")}
    shards = files_of(tmp_path / "sharded")
    lost = sorted(k for k in shards if k.startswith("model-"))[-1]
    cases["acme/lost-shard"] = ({k: v for k, v in shards.items() if k != lost}, f"weight shards {lost}")
    for repo, (files, missing) in cases.items():
        snapshot(cache, repo, files)
        want = rf"^cannot load '{repo}': its cached snapshot \S+ lacks {re.escape(missing)}, which cannot be downloaded"
        with pytest.raises(OSError, match=want + r" now \(the Hugging Face Hub is not reachable \(offline mode"):
            zoo.SeqRecPreTrainedModel.from_pretrained(repo)
    snapshot(cache, "acme/whole", src)
    assert torch.equal(logits(zoo.SeqRecPreTrainedModel.from_pretrained("acme/whole")), logits(model))


def test_a_whole_snapshot_of_the_hub_still_wins_over_the_bundled_copy(bundled, cache):
    """The fix does not turn every cached download into the bundled copy: a whole snapshot (other weights) loads."""
    hub = tiny(seed=7)
    hub.save_pretrained(cache.parent / "hubcopy")
    snapshot(cache, f"{ORG}/tiny-mamba4rec", files_of(cache.parent / "hubcopy"))
    m = Mamba4RecModel.from_pretrained(f"{ORG}/tiny-mamba4rec")
    assert torch.equal(logits(m), logits(hub)) and not torch.equal(logits(m), logits(bundled))


def test_a_partial_download_answered_from_the_cache_online_falls_back_too(bundled, cache, tmp_path, monkeypatch):
    """Online, huggingface_hub answers from the cache when the Hub fails mid-way: a config-only folder it returns is
    judged the same way (bundled copy for ours, an error naming the file for another repo)."""
    import huggingface_hub

    snap = snapshot(cache, "acme/x", files_of(tmp_path / "bundle" / "tiny-mamba4rec", only={"config.json"}))
    monkeypatch.setattr(pretrained, "hub_reachable", lambda timeout=None: True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: str(snap))
    assert torch.equal(logits(Mamba4RecModel.from_pretrained(f"{ORG}/tiny-mamba4rec")), logits(bundled))
    with pytest.raises(OSError, match=r"^cannot load 'acme/x': its cached snapshot \S+ lacks model\.safetensors and "
                                      r"item_vocab\.json, which the download did not bring"):
        Mamba4RecModel.from_pretrained("acme/x")


def test_a_transport_error_of_the_download_is_the_bundled_copy_or_one_oserror(bundled, monkeypatch):
    """huggingface_hub re-raises a proxy error (httpx's, no ``OSError``) as is: it escaped the bundled fallback and
    the commands' ``except OSError``; now the bundled copy stands in, and another repo is one ``OSError`` line."""
    httpx2 = pytest.importorskip("httpx2")
    import huggingface_hub

    def refused(**kw):
        raise httpx2.ProxyError("407 Proxy Authentication Required\nsecond line")

    monkeypatch.setattr(pretrained, "hub_reachable", lambda timeout=None: True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refused)
    assert torch.equal(logits(Mamba4RecModel.from_pretrained(f"{ORG}/tiny-mamba4rec")), logits(bundled))
    with pytest.raises(OSError, match=r"^cannot load 'acme/x': ProxyError: 407 Proxy Authentication Required "
                                      r"second line$"):
        Mamba4RecModel.from_pretrained("acme/x")


# ---------------------------------------------------------------------------------- 7: the probe and proxies
@pytest.mark.parametrize("env, target", [
    ({}, ("huggingface.co", 443)),
    ({"HTTPS_PROXY": "http://proxy.example:3128"}, ("proxy.example", 3128)),
    ({"https_proxy": "http://proxy.example:3128"}, ("proxy.example", 3128)),
    ({"HTTPS_PROXY": "proxy.example"}, ("proxy.example", 80)),
    ({"ALL_PROXY": "socks5://socks.example:1080"}, ("socks.example", 1080)),
    ({"HTTP_PROXY": "http://proxy.example:3128"}, ("huggingface.co", 443)),          # for http URLs only
    ({"HTTPS_PROXY": "http://proxy.example:3128", "NO_PROXY": "huggingface.co"}, ("huggingface.co", 443)),
    ({"HTTPS_PROXY": "http://proxy.example:3128", "no_proxy": ".huggingface.co"}, ("huggingface.co", 443)),
    ({"HTTPS_PROXY": "http://proxy.example:3128", "NO_PROXY": "*"}, ("huggingface.co", 443)),
    ({"HF_ENDPOINT": "http://hub.internal:8080", "HTTPS_PROXY": "http://proxy.example:3128"}, ("hub.internal", 8080)),
    ({"HF_ENDPOINT": "http://hub.internal:8080", "HTTP_PROXY": "http://proxy.example:3128"}, ("proxy.example", 3128)),
])
def test_the_probe_connects_where_the_hub_requests_would_go(cache, monkeypatch, env, target):
    """The probe was a raw connection to huggingface.co:443 whatever the environment said: behind a mandatory proxy
    the Hub read as unreachable (then a config-only snapshot fetched by transformers through the proxy shadowed the
    bundled copy). It now connects to the proxy HTTPS_PROXY / HTTP_PROXY / ALL_PROXY names for the endpoint, unless
    NO_PROXY exempts it, as huggingface_hub's httpx client does."""
    probes = record_connections(monkeypatch, pretrained)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert pretrained.hub_reachable() is True and probes == [target]


def test_the_probe_reaches_a_local_proxy_and_fails_on_a_closed_one(cache, monkeypatch):
    """End to end on the loopback (no network): a listening proxy makes the Hub reachable; a closed proxy port makes
    it unreachable even where huggingface.co itself could be reached, and the force_download error names the proxy."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{listener.getsockname()[1]}")
        assert pretrained.hub_reachable() is True
    with socket.socket() as s:                          # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{closed}")
    assert pretrained.hub_reachable() is False
    with pytest.raises(OSError, match=rf"force_download=True needs the Hub, and the Hugging Face Hub is "
                                      rf"not reachable \(no connection to the proxy http://127\.0\.0\.1:{closed} "
                                      r"\(HTTPS_PROXY\) within 1\.5 s"):
        pretrained.resolve_pretrained("acme/x", force_download=True)


# ----------------------------------------------------------------------------------------- 8: force_download
def test_force_download_is_refused_when_the_hub_cannot_be_reached(bundled, cache, tmp_path, monkeypatch):
    """``force_download=True`` with the Hub unreachable loaded the cached snapshot (or the bundled copy) without a
    word; AutoModel refuses it. Now: offline mode or local_files_only=True is a ValueError naming both, a failed
    probe an OSError naming force_download and the unreachable Hub; nothing is downloaded or loaded instead."""
    import huggingface_hub

    calls, real = [], huggingface_hub.snapshot_download
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: calls.append(kw) or real(**kw))
    snapshot(cache, "acme/whole", files_of(tmp_path / "bundle" / "tiny-mamba4rec"))
    for repo in (f"{ORG}/tiny-mamba4rec", "acme/whole"):
        with pytest.raises(ValueError, match=rf"^cannot load '{repo}': force_download=True needs the Hub, and the "
                                             r"Hugging Face Hub is not reachable \(offline mode: HF_HUB_OFFLINE=1\); "
                                             "leave force_download out to load the cached"):
            Mamba4RecModel.from_pretrained(repo, force_download=True)
        with pytest.raises(ValueError, match=r"force_download=True downloads from the Hub, local_files_only=True "
                                             "forbids it"):
            zoo.SeqRecPreTrainedModel.from_pretrained(repo, force_download=True, local_files_only=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(pretrained, "hub_reachable", lambda timeout=None: False)
    with pytest.raises(OSError, match=r"^cannot load 'acme/whole' at revision 'v1': force_download=True needs the "
                                      r"Hub, and the Hugging Face Hub is not reachable \(no connection to "
                                      r"huggingface\.co:443 within 1\.5 s; ZOO_HUB_PROBE_TIMEOUT"):
        Mamba4RecModel.from_pretrained("acme/whole", revision="v1", force_download=True)
    assert calls == []
    m = Mamba4RecModel.from_pretrained("acme/whole")                  # without it: the cache, as before
    assert torch.equal(logits(m), logits(bundled)) and calls[0]["local_files_only"] is True


def test_a_failed_forced_download_is_an_error_not_the_bundled_copy(bundled, monkeypatch):
    """Online, a forced download that fails fell back to the bundled copy like any failed download: the user asked
    for fresh files, so it is an error now (without force_download the bundled copy still stands in)."""
    import huggingface_hub

    def down(**kw):
        raise OSError("Connection reset by peer")

    monkeypatch.setattr(pretrained, "hub_reachable", lambda timeout=None: True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", down)
    repo = f"{ORG}/tiny-mamba4rec"
    with pytest.raises(OSError, match=rf"^cannot load '{repo}': force_download=True, and the download failed: "
                                      "Connection reset by peer$"):
        Mamba4RecModel.from_pretrained(repo, force_download=True)
    assert torch.equal(logits(Mamba4RecModel.from_pretrained(repo)), logits(bundled))


# ------------------------------------------------------------------------------ 13: the seeded cache, cache_dir
def test_the_module_docstring_documents_the_seeding_as_it_is():
    """``import zoo`` writes every bundled model into the user's HF cache under two organisations; where, how much,
    the opt-out and what to do with cache_dir= were documented nowhere. The docstring's sizes are the real ones."""
    doc = " ".join(pretrained.__doc__.split())
    for needed in ("ZOO_NO_CACHE_SEED=1", "HF_HUB_CACHE", "~/.cache/huggingface/hub", "seed_hf_cache", "cache_dir=",
                   ".zoo-bundled", "ssm-rec-zoo/<name>", "org/<name>", "HTTPS_PROXY", "NO_PROXY",
                   "force_download=True", "``config.json`` alone"):
        assert needed in doc, needed
    models = pretrained.bundled_models()
    sizes = [sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) for folder in models.values()]
    orgs = 1 + len(pretrained.PLACEHOLDER_ORGS)
    said = re.search(r"about (\d+) MB per model and organisation, about (\d+) MB for the (\d+) models", doc)
    assert said, "the docstring gives the seeded size"
    per, total, n = map(int, said.groups())
    assert n == len(models)
    assert 0.75 <= total * 1e6 / (orgs * sum(sizes)) <= 1.25
    assert 0.5 <= per * 1e6 / (sum(sizes) / len(sizes)) <= 1.5


def test_automodel_finds_a_bundled_model_in_another_cache_once_it_is_seeded(bundled, tmp_path):
    """AutoModel reads config.json through huggingface_hub before any zoo code runs: with ``cache_dir=`` (or the
    opt-out) it finds a bundled model offline only in a seeded cache. The documented way out works: the zoo's
    classes load the bundled copy for any cache_dir, and ``seed_hf_cache(DIR)`` makes AutoModel find it in DIR."""
    other = tmp_path / "other-cache"
    repo = f"{ORG}/tiny-mamba4rec"
    with pytest.raises(OSError):
        AutoModel.from_pretrained(repo, cache_dir=str(other))
    assert torch.equal(logits(zoo.SeqRecPreTrainedModel.from_pretrained(repo, cache_dir=str(other))), logits(bundled))
    assert repo in pretrained.seed_hf_cache(other)
    assert torch.equal(logits(AutoModel.from_pretrained(repo, cache_dir=str(other))), logits(bundled))


# --------------------------------------------------------------------------- 14: --revision / --subfolder helper
def test_the_command_line_hub_options_reach_the_resolution(cache, tmp_path):
    """The helper the commands can share: ``--revision`` (a branch, tag or commit) and ``--subfolder`` parsed and
    handed to :func:`resolve_pretrained`; an empty ``--revision`` or one given for a local folder is a usage error."""
    main, tagged = tiny(seed=1), tiny(seed=2)
    main.save_pretrained(tmp_path / "main")
    tagged.save_pretrained(tmp_path / "tagged")
    snapshot(cache, "acme/m", files_of(tmp_path / "main", "sub/"), rev="a" * 40)
    snapshot(cache, "acme/m", files_of(tmp_path / "tagged", "sub/"), rev="b" * 40, refs=("v1",))
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    pretrained.add_hub_options(p)
    for argv, want in ((["--subfolder", "sub"], main), (["--revision", "v1", "--subfolder", "sub"], tagged),
                       (["--revision", "b" * 40, "--subfolder", "sub"], tagged)):
        args = p.parse_args(["--model", "acme/m", *argv])
        path = pretrained.resolve_pretrained(args.model, **pretrained.hub_options(args))
        assert torch.equal(logits(zoo.SeqRecPreTrainedModel.from_pretrained(path)), logits(want))
    args = p.parse_args(["--model", "acme/m"])
    assert pretrained.hub_options(args) == {"revision": None, "subfolder": ""}
    with pytest.raises(OSError, match=r"lacks config\.json"):          # the model is in sub/ only
        pretrained.resolve_pretrained(args.model, **pretrained.hub_options(args))
    with pytest.raises(ValueError, match=r"^--revision v1: --model \S+main is a local folder, which has no "
                                         r"revisions"):
        pretrained.hub_options(p.parse_args(["--model", str(tmp_path / "main"), "--revision", "v1"]))
    with pytest.raises(ValueError, match="^--revision needs a branch, tag or commit"):
        pretrained.hub_options(p.parse_args(["--model", "acme/m", "--revision", " "]))
    help_text = p.format_help()
    assert "--revision REV" in help_text and "--subfolder DIR" in help_text
