"""zoo.convert at its margins: truncated or corrupt checkpoints, --max-seq-length bounds, the returned model's mode,
Mamba4Rec's window without a source, torch's pickle-protocol warning, and checkpoints of models it does not convert.
(The main converter tests are in tests/test_hub_convert.py.)"""

import contextlib
import enum
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from zoo.cli import UsageError
from zoo.convert import convert, main
from zoo.models.mamba4rec import Mamba4RecConfig, Mamba4RecModel

FIXTURE = Path(__file__).parent / "data" / "recbole_sasrec" / "state_dict.pth"


class PickledConfig:  # stands in for RecBole's Config object: a class weights_only refuses
    def __init__(self, settings):
        self.final_config_dict = dict(settings)


class Kind(enum.Enum):  # stands in for RecBole's ModelType
    SEQUENTIAL = 2


@contextlib.contextmanager
def exits(capsys, code, match):
    """A command ending with exit status ``code``, ``match`` on stderr, no traceback; the usage line only for 2."""
    with pytest.raises(SystemExit) as e:
        yield
    said = e.value.code if isinstance(e.value.code, str) else ""
    status = 1 if said else e.value.code
    err = capsys.readouterr().err + said
    assert status == code and re.search(match, err) and "Traceback" not in err, (e.value.code, err)
    assert ("usage:" in err) == (code == 2), err


def _fixture_sd():
    return torch.load(FIXTURE, weights_only=True)["state_dict"]


def _mamba_official(n_items=12):
    """A Mamba4Rec state dict in the official (RecBole) key layout."""
    torch.manual_seed(0)
    src = Mamba4RecModel(Mamba4RecConfig(n_items=n_items, hidden_size=16, d_state=4)).eval()
    return src, {k.replace("layer_norm.", "LayerNorm."): v.clone() for k, v in src.state_dict().items()}


# ------------------------------------------------------------------------------- 1. truncated or corrupt files
def test_truncated_checkpoints_are_named_as_such_never_sent_to_trust_pickle(tmp_path, capsys):
    """A checkpoint cut short -- a zip with less than ~64 KB missing (torch then says "[Errno 22] Invalid argument",
    not "central directory") or a legacy pickle cut anywhere -- was refused as "cannot be loaded safely ... re-run
    with --trust-pickle", pushing the user to turn the safety off. The file is checked whole first: it is "a
    truncated or corrupt checkpoint" (exit 1), with or without --trust-pickle, and --trust-pickle is not suggested."""
    whole = FIXTURE.read_bytes()
    torch.save({"state_dict": _fixture_sd()}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    legacy = (tmp_path / "legacy.pth").read_bytes()
    cuts = {f"zip{n}": whole[:n] for n in (1000, 25000, 100000, 200000, len(whole) - 10)}
    cuts.update({f"legacy{n}": legacy[:n] for n in (2, 100, 5000, 60000, 200000, len(legacy) - 1)})
    for name, data in cuts.items():
        (tmp_path / f"{name}.pth").write_bytes(data)
        for trust in (False, True):
            with pytest.raises(ValueError, match=r"is a truncated or corrupt checkpoint: ") as e:
                convert("sasrec", str(tmp_path / f"{name}.pth"), str(tmp_path / "out"), trust_pickle=trust,
                        overrides={"num_heads": 2})
            assert "trust" not in str(e.value), (name, str(e.value))
    with exits(capsys, 1, r"zip25000\.pth is a truncated or corrupt checkpoint: its zip archive cannot be read"):
        main(["--model", "sasrec", "--checkpoint", str(tmp_path / "zip25000.pth"), "--out", str(tmp_path / "out"),
              "--set", "num_heads=2"])
    with exits(capsys, 1, r"legacy60000\.pth is a truncated or corrupt checkpoint: its tensor data ends early"):
        main(["--model", "sasrec", "--checkpoint", str(tmp_path / "legacy60000.pth"), "--out",
              str(tmp_path / "out"), "--set", "num_heads=2"])
    assert not (tmp_path / "out").exists()
    # the whole legacy file converts; a whole file holding a pickled class is the one told about --trust-pickle
    assert convert("sasrec", str(tmp_path / "legacy.pth"), str(tmp_path / "ok"), overrides={"num_heads": 2})
    torch.save({"state_dict": _fixture_sd(), "config": PickledConfig({"n_heads": 2})}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match=r"cannot be loaded safely .*re-run with --trust-pickle"):
        convert("sasrec", str(tmp_path / "pickled.pth"), str(tmp_path / "out"))


def test_whole_checkpoints_of_any_content_pass_the_check_and_every_cut_fails_it(tmp_path):
    """The whole-file check runs no code of the file and takes no whole checkpoint for a damaged one: a pickled
    class, an enum, a set, a whole nn.Module (legacy: its class saved as a persistent id), shared storages and
    non-float dtypes, in both formats and pickle protocols 2 and 4; every cut of them (past the first 4 bytes, which
    tell the format) is refused."""
    from zoo.convert import check_checkpoint_file

    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    base = torch.arange(6.0)
    obj = {"state_dict": module.state_dict(), "config": PickledConfig({"n_heads": 2, "topk": {10}}),
           "kind": Kind.SEQUENTIAL, "shared": (base, base[1:]),
           "dtypes": [torch.ones(2, dtype=t) for t in (torch.bfloat16, torch.int8, torch.complex64, torch.bool)]}
    for what in (obj, module):
        for legacy in (False, True):
            for protocol in (2, 4):
                path = tmp_path / "c.pth"
                torch.save(what, path, _use_new_zipfile_serialization=not legacy, pickle_protocol=protocol)
                check_checkpoint_file(str(path))
                data = path.read_bytes()
                for n in range(4, len(data), max(1, len(data) // 40)):     # 4: past the 'PK\x03\x04' head
                    (tmp_path / "cut.pth").write_bytes(data[:n])
                    with pytest.raises(ValueError, match="is a truncated or corrupt checkpoint"):
                        check_checkpoint_file(str(tmp_path / "cut.pth"))


def test_a_damaged_zip_member_is_refused_by_its_crc(tmp_path):
    """torch's zip reader checks no CRC: one byte flipped in a weight converted "successfully" into other weights.
    Each member is read against its CRC-32 first; a checkpoint saved without CRCs
    (``torch.serialization.set_crc32_options(False)`` records 0) is not taken for a damaged one."""
    data = bytearray(FIXTURE.read_bytes())
    with zipfile.ZipFile(FIXTURE) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)                  # the item embedding's storage
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0x40
    (tmp_path / "flipped.pth").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"flipped\.pth is a truncated or corrupt checkpoint: .*Bad CRC-32 for file "
                                         rf"'{re.escape(info.filename)}'"):
        convert("sasrec", str(tmp_path / "flipped.pth"), str(tmp_path / "out"), overrides={"num_heads": 2})
    assert not (tmp_path / "out").exists()
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"state_dict": _fixture_sd()}, tmp_path / "nocrc.pth")
    finally:
        torch.serialization.set_crc32_options(True)
    with zipfile.ZipFile(tmp_path / "nocrc.pth") as zf:
        assert {i.CRC for i in zf.infolist()} == {0}
    m = convert("sasrec", str(tmp_path / "nocrc.pth"), str(tmp_path / "nocrc"), overrides={"num_heads": 2})
    assert torch.equal(m.item_embedding.weight, _fixture_sd()["item_embedding.weight"])


def test_a_zip_or_pickle_that_torch_save_did_not_write_is_no_checkpoint(tmp_path):
    """A plain zip archive (no data.pkl) or a pickle.dump'ed dict (no torch magic number) is not a PyTorch
    checkpoint: said so, not "cannot be loaded safely ... --trust-pickle" nor "truncated"."""
    with zipfile.ZipFile(tmp_path / "plain.pth", "w") as zf:
        zf.writestr("weights.bin", b"\0" * 64)
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": [1.0, 2.0]}, protocol=2))
    for name, msg in (("plain.pth", r"a zip archive without the data\.pkl that torch\.save writes"),
                      ("plain.pkl", r"a pickle, but not one torch\.save wrote")):
        for trust in (False, True):
            with pytest.raises(ValueError, match=rf"{re.escape(name)} is not a PyTorch checkpoint \({msg}"):
                convert("sasrec", str(tmp_path / name), str(tmp_path / "out"), trust_pickle=trust)


# ------------------------------------------------------------------------------------ 2. --max-seq-length bounds
def test_max_seq_length_below_one_is_a_usage_error(tmp_path, capsys):
    """``--max-seq-length 0`` / ``-5`` exited 1 (a failed run) with no usage line: it is a bad option (2, argparse's
    usage line, nothing written); the Python API raises UsageError for it."""
    _, sd = _mamba_official()
    torch.save({"state_dict": sd}, tmp_path / "M.pth")
    for value in ("0", "-5", "x"):
        with exits(capsys, 2, rf"argument --max-seq-length: expected an int >= 1, got '{value}'"):
            main(["--model", "mamba4rec", "--checkpoint", str(tmp_path / "M.pth"), "--out", str(tmp_path / "o"),
                  "--max-seq-length", value])
    for value in (0, -5, 2.5, True):
        with pytest.raises(UsageError, match=rf"^--max-seq-length {value!r}: expected an int >= 1$"):
            convert("mamba4rec", str(tmp_path / "M.pth"), str(tmp_path / "o"), max_seq_length=value,
                    overrides={"dropout_prob": 0.1})
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------- 3. eval mode
def test_convert_returns_the_model_in_eval_mode(tmp_path):
    """``convert()`` returned the model in training mode: dropout on, so two calls scored the same history
    differently. It is in eval mode, as ``from_pretrained`` returns the written folder's."""
    m = convert("sasrec", str(FIXTURE), str(tmp_path / "out"), overrides={"num_heads": 2})
    assert not m.training and not any(mod.training for mod in m.modules())
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(m(ids).logits, m(ids).logits)


# ------------------------------------------------------------------------ 4. Mamba4Rec's window needs a source
def test_mamba4rec_without_a_window_is_refused_until_one_is_given(tmp_path, capsys):
    """A Mamba4Rec checkpoint without RecBole settings (a state dict alone, or no --trust-pickle) got the window 200
    silently: one trained with another MAX_ITEM_LIST_LENGTH then scores long histories differently. It is refused as
    SASRec without num_heads is (a usage error naming --max-seq-length, nothing written); --max-seq-length,
    --set max_seq_length or the checkpoint's plain-dict settings give it."""
    src, sd = _mamba_official()
    torch.save({"state_dict": sd}, tmp_path / "M.pth")
    with pytest.raises(UsageError, match=r"^Mamba4Rec's history window \(max_seq_length\) is not in the weights and "
                                         r"this checkpoint carries no RecBole config .*--max-seq-length 50"):
        convert("mamba4rec", str(tmp_path / "M.pth"), str(tmp_path / "o"))
    args = ["--model", "mamba4rec", "--checkpoint", str(tmp_path / "M.pth")]
    with exits(capsys, 2, r"error: Mamba4Rec's history window .* pass the MAX_ITEM_LIST_LENGTH it was trained with"):
        main(args + ["--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
    main(args + ["--out", str(tmp_path / "a"), "--max-seq-length", "50"])
    capsys.readouterr()
    assert convert("mamba4rec", str(tmp_path / "M.pth"), str(tmp_path / "b"),
                   overrides={"max_seq_length": 64}).config.max_seq_length == 64
    torch.save({"state_dict": sd, "config": {"MAX_ITEM_LIST_LENGTH": 30}}, tmp_path / "S.pth")
    m = convert("mamba4rec", str(tmp_path / "S.pth"), str(tmp_path / "c"))
    assert m.config.max_seq_length == 30
    from transformers import AutoModel

    assert AutoModel.from_pretrained(tmp_path / "a").config.max_seq_length == 50
    ids = torch.randint(1, 12, (2, 7))
    with torch.no_grad():
        assert torch.equal(m(ids).logits, src(ids).logits)


# ----------------------------------------------------------------------------- 5. the pickle-protocol warning
def test_recbole_pickle_protocol_warning_is_silenced_other_warnings_kept(tmp_path, monkeypatch):
    """RecBole saves with ``pickle_protocol=4``: torch warned "Detected pickle protocol 4 in the checkpoint ..."
    (2 lines of stderr) on every conversion of a real RecBole checkpoint, on success too. That warning is silenced
    around the loads; any other warning still shows."""
    _, sd = _mamba_official()
    torch.save({"state_dict": sd, "config": {"MAX_ITEM_LIST_LENGTH": 20}}, tmp_path / "R.pth", pickle_protocol=4)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="re-run with --trust-pickle"):   # torch's weights_only reads protocol 2
            convert("mamba4rec", str(tmp_path / "R.pth"), str(tmp_path / "no"))
        m = convert("mamba4rec", str(tmp_path / "R.pth"), str(tmp_path / "out"), trust_pickle=True)
    assert m.config.max_seq_length == 20
    assert not [w for w in seen if "pickle protocol" in str(w.message)], [str(w.message) for w in seen]
    load = torch.load

    def noisy_load(*args, **kwargs):
        warnings.warn("another torch warning", UserWarning)
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", noisy_load)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        convert("mamba4rec", str(tmp_path / "R.pth"), str(tmp_path / "out2"), trust_pickle=True)
    assert "another torch warning" in [str(w.message) for w in seen]


# ----------------------------------------------------------------- 7. models the command does not convert
def _official_lrurec():
    """An official LRURec (yueqirex/LRURec) state dict with its complex projections, and the zoo model it is."""
    from zoo.models.lrurec import LRURecConfig, LRURecModel

    model = LRURecModel(LRURecConfig(n_items=9, hidden_size=8, num_layers=1, max_seq_length=8)).eval()
    sd = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k == "item_embedding.weight":
            out["embedding.token.weight"] = v
        elif k.startswith("emb_layer_norm."):
            out["embedding.layer_norm." + k[len("emb_layer_norm."):]] = v
        elif k == "item_bias":
            out["model.bias"] = v
        elif k.endswith("_re"):
            out["model." + k[:-3]] = torch.complex(v, sd[k[:-3] + "_im"])
        elif not k.endswith("_im"):
            out["model." + k] = v
    return model, out


def test_checkpoints_of_other_models_are_refused_naming_how_to_import_them(tmp_path, capsys):
    """An official LRURec checkpoint got "has dtype torch.complex64; zoo weights are floating point" (or, in its
    trainer's {'model_state_dict', 'optimizer_state_dict'} file, "does not hold a state dict of tensors"), with no
    pointer; RecBole BERT4Rec / GRU4Rec state dicts a missing/unexpected-key error. Each is named, with how to import
    it (the pointer for LRURec works), and --help says which model types the command converts."""
    from zoo.models.bert4rec import BERT4RecConfig, BERT4RecModel
    from zoo.models.gru4rec import GRU4RecConfig, GRU4RecModel
    from zoo.models.lrurec import convert_official_state_dict

    model, lru = _official_lrurec()
    torch.save({"model_state_dict": lru, "optimizer_state_dict": {}}, tmp_path / "lru.pth")
    torch.save(lru, tmp_path / "lru_sd.pth")
    torch.save(BERT4RecModel(BERT4RecConfig(n_items=9, hidden_size=8, num_heads=1)).state_dict(), tmp_path / "b.pth")
    torch.save({"state_dict": GRU4RecModel(GRU4RecConfig(n_items=9, hidden_size=8)).state_dict()}, tmp_path / "g.pth")
    only = "zoo.convert converts mamba4rec and sasrec checkpoints only; "
    lru_what = r"an official LRURec state dict \(yueqirex/LRURec\) \('model\.lru_blocks\.0\."
    cases = (("lru.pth", lru_what, r"zoo\.models\.lrurec\.convert_official_state_dict"),
             ("lru_sd.pth", lru_what, r"zoo\.models\.lrurec\.convert_official_state_dict"),
             ("b.pth", r"a RecBole BERT4Rec state dict \('output_ffn\.weight'\)", r"zoo\.models\.bert4rec\.BERT4Rec"),
             ("g.pth", r"a RecBole GRU4Rec state dict \('gru_layers\.", r"zoo\.models\.gru4rec\.GRU4RecModel"))
    for name, what, how in cases:
        for model_type in ("mamba4rec", "sasrec"):
            with pytest.raises(ValueError, match=rf"{re.escape(name)} holds ({what}).*, not a {model_type} one: "
                                                 rf"{re.escape(only)}.*{how}"):
                convert(model_type, str(tmp_path / name), str(tmp_path / "out"), max_seq_length=8,
                        overrides={"num_heads": 1} if model_type == "sasrec" else None)
    with exits(capsys, 1, r"lru\.pth holds an official LRURec state dict .*convert_official_state_dict"):
        main(["--model", "mamba4rec", "--checkpoint", str(tmp_path / "lru.pth"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    copy = type(model)(model.config).eval()                         # the pointer works: a strict load, same scores
    copy.load_state_dict(convert_official_state_dict(torch.load(tmp_path / "lru.pth")["model_state_dict"]))
    ids = torch.randint(1, 9, (2, 8))
    with torch.no_grad():
        assert torch.equal(copy(ids).logits, model(ids).logits)
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0
    assert "the two this command converts; LRURec, BERT4Rec and GRU4Rec checkpoints are imported with the Python " \
           "API (LRURec: zoo.models.lrurec.convert_official_state_dict" in text, text
