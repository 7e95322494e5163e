"""Export folders from someone else (``model.onnx`` + ``state_spec.json`` + ``item_vocab.json``, all theirs): what
``export.runtime``, ``export.triton`` and ``zoo.evaluate --onnx`` refuse before they read or write anything else.

* Tensor and state names (spec and graph alike) outside ``[A-Za-z_][A-Za-z0-9_.]*`` are refused by every reader
  (they became a command in ``build_engine.sh``, an ``initial_state`` file written anywhere); ``build_engine.sh``
  quotes its shapes and no initial state is written outside the model folder even when the checks are bypassed.
* ``graph``, ``external_data`` and ``item_vocab`` must be plain file names beside the graph (a ``..`` or absolute
  name copied a file outside the repository, or read a graph or vocabulary from anywhere).
* A graph whose external data lies outside its folder, or a spec nested too deeply to read: one line, exit 1.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="export.triton validates with tritonclient's schema")

from export import runtime as R  # noqa: E402
from export import triton as T  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: a bundled step graph of standard ops only (input item_ids and the state gru_state)
SRC = os.path.join(ROOT, "hub_cards", "gru4rec-ml1m", "onnx")
STATE = "gru_state"
_NAME_ERROR = "is not a tensor name (letters, digits, '_' and '.', starting with a letter or '_'"
_FILE_ERROR = "is not the name of a file beside the graph (no folder, no '..'"


def _copy(dst):
    shutil.copytree(SRC, dst)
    return dst


def _edit_spec(folder, **fields):
    path = folder / "state_spec.json"
    spec = json.loads(path.read_text())
    spec.update(fields)
    path.write_text(json.dumps(spec))
    return path


def _renamed(dst, new, init=None):
    """A copy of the bundled graph folder whose state input ``gru_state`` is called ``new`` in the graph (its input
    and every node reading it) and in the spec (``inputs``, ``state``); ``init``: the state's initial value."""
    _copy(dst)
    m = onnx.load(str(dst / "model.onnx"))
    for i in m.graph.input:
        if i.name == STATE:
            i.name = new
    for n in m.graph.node:
        for k, x in enumerate(n.input):
            if x == STATE:
                n.input[k] = new
    onnx.save(m, str(dst / "model.onnx"))
    spec = json.loads((dst / "state_spec.json").read_text())
    for e in spec["inputs"] + spec["state"]:
        if e["name"] == STATE:
            e["name"] = new
            if init is not None and "init" in e:
                e["init"] = init
    (dst / "state_spec.json").write_text(json.dumps(spec))
    return dst


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.mark.parametrize("name", ["gru_state$(touch${IFS}PWNED)", "gru_state`touch PWNED`", "a b", "x:1x1,y",
                                  "gru\nstate", "../../victim", "1state", "é"])
def test_a_tensor_name_outside_the_safe_set_is_refused_by_every_reader(tmp_path, name, capsys, monkeypatch):
    """A state renamed to a shell command in both files (the graph's names are the folder's author's too) was written
    bare into build_engine.sh's --minShapes (exit 0; the command ran when the script was run). Now the spec is
    refused where it is read, naming it and the field, by export.triton (exit 1, one line, nothing written) and by
    the runtime alike."""
    monkeypatch.chdir(tmp_path)
    export = _renamed(tmp_path / "x", name)
    spec = export / "state_spec.json"
    for backend in ("tensorrt", "onnxruntime"):
        assert T.main(["--onnx", str(export), "--repo", str(tmp_path / "r"), "--backend", backend]) == 1
        _one_line_error(capsys, f"{spec}: inputs[1].name {name!r} {_NAME_ERROR}")
    assert not (tmp_path / "r").exists() and not (tmp_path / "PWNED").exists()
    with pytest.raises(ValueError, match=r"inputs\[1\]\.name .* is not a tensor name"):
        R.OnnxStepSession(export)
    with pytest.raises(ValueError, match=r"inputs\[1\]\.name"):
        T.write_repository(export, tmp_path / "r", backend="tensorrt", name="m")
    assert not (tmp_path / "r" / "m").exists()


@pytest.mark.parametrize("field,entry", [("state", "output"), ("outputs", "name"), ("client_state", "name")])
def test_every_name_the_spec_gives_is_checked(tmp_path, field, entry):
    """State outputs, graph outputs and the client states (the gaps form's last_ts) are names as well."""
    export = _copy(tmp_path / "x")
    spec = json.loads((export / "state_spec.json").read_text())
    bad = "$(reboot)"
    if field == "client_state":
        spec["client_state"] = [{"name": bad, "shape": ["B", 1], "dtype": "float64", "init": -1.0}]
    else:
        spec[field][-1][entry] = bad
    (export / "state_spec.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=rf"state_spec.json: {field}\[\d+\]\.{entry} '\$\(reboot\)' is not a tensor"):
        R.read_spec(export / "state_spec.json")


def test_a_state_named_as_a_path_writes_no_file_outside_the_model_folder(tmp_path, capsys, monkeypatch):
    """A state named ``/abs/victim`` (init 1.0) overwrote ``/abs/victim.bin`` with the attacker's bytes (exit 0). The
    spec is refused now; and were the checks of the spec and graph bypassed, the initial-state file is still never
    written outside the model folder."""
    victim = tmp_path / "victim.bin"
    victim.write_text("IMPORTANT")
    for i, name in enumerate((str(tmp_path / "victim"), "../../../victim")):
        export = _renamed(tmp_path / f"x{i}", name, init=1.0)
        assert T.main(["--onnx", str(export), "--repo", str(tmp_path / "r")]) == 1
        _one_line_error(capsys, f"inputs[1].name {name!r} {_NAME_ERROR}")
        assert victim.read_text() == "IMPORTANT" and not (tmp_path / "r").exists()
    # defence in depth: the spec and the graph taken unchecked
    monkeypatch.setattr(T, "read_spec", lambda d: json.loads((d / "state_spec.json").read_text()))
    monkeypatch.setattr(T, "check_graph", lambda graph, spec: None)
    for i in range(2):
        with pytest.raises(T.TritonConfigError, match="the initial state of .* is not a file name inside"):
            T.write_repository(tmp_path / f"x{i}", tmp_path / "r", name="m")
        assert victim.read_text() == "IMPORTANT" and not (tmp_path / "r" / "m").exists()
    assert list(tmp_path.rglob("victim.bin")) == [victim]


def test_build_engine_sh_quotes_the_shapes_it_takes_from_the_spec(tmp_path):
    """build_engine.sh's --min/opt/maxShapes hold the graph's input names: quoted for the shell, a name that got past
    the checks is one argument of trtexec and never a command."""
    spec = json.loads(pathlib.Path(SRC, "state_spec.json").read_text())
    bad = f"s$(touch {tmp_path}/PWNED)"
    spec["inputs"][1]["name"] = bad
    sh = tmp_path / "build_engine.sh"
    sh.write_text(T._build_engine_sh("m", spec, 8, implicit=False))
    fake = tmp_path / "fake-trtexec"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$(dirname "$0")/args"\n'
                    'for a in "$@"; do case $a in --saveEngine=*) touch "${a#--saveEngine=}";; esac; done\n')
    fake.chmod(0o755)
    (tmp_path / "1").mkdir()
    run = subprocess.run(["bash", str(sh), "/dev/null"], capture_output=True, text=True, check=False,
                         env={**os.environ, "TRTEXEC": str(fake)})
    assert not (tmp_path / "PWNED").exists()
    assert run.returncode == 0, run.stderr
    args = (tmp_path / "args").read_text().splitlines()
    assert any(a.startswith("--minShapes=item_ids:1x1,") and f",{bad}:1x" in a for a in args), args


def test_the_graphs_own_names_are_checked(tmp_path):
    """check_graph reads the graph's names itself: a graph with an input outside the safe set is refused even when
    the spec it is given lists the same names."""
    export = _renamed(tmp_path / "x", "a;b")
    spec = json.loads((export / "state_spec.json").read_text())
    with pytest.raises(ValueError, match=r"the graph's input name 'a;b' is not a tensor name"):
        T.check_graph(export / "model.onnx", spec)


@pytest.mark.parametrize("field", ["graph", "external_data", "item_vocab"])
@pytest.mark.parametrize("where", ["up", "absolute", "sub"])
def test_file_fields_name_files_beside_the_graph_only(tmp_path, field, where, capsys):
    """``"external_data": "../../../../PAY"`` made export.triton copy a file outside the repository; ``graph`` was read
    from anywhere (an absolute path was copied in), ``item_vocab`` by the runtime and zoo.evaluate --onnx. Each is
    refused now where the spec is read, naming the field (a real file lies at the named place)."""
    export = _copy(tmp_path / "a" / "b" / "c" / "onnx")
    real = {"graph": "model.onnx", "external_data": "model.onnx", "item_vocab": "item_vocab.json"}[field]
    name = {"up": f"../../{real}", "absolute": str(tmp_path / "a" / "b" / real), "sub": f"c/{real}"}[where]
    shutil.copy(export / real, tmp_path / "a" / "b" / real)
    spec = _edit_spec(export, **{field: name})
    said = (f"{spec}: {field} '", _FILE_ERROR)                      # (a long name is cut to 80 characters)
    for backend in ("python", "onnxruntime"):
        before = sorted(tmp_path.rglob("*"))
        assert T.main(["--onnx", str(export), "--repo", str(tmp_path / "a" / "r" / "sub"), "--backend", backend]) == 1
        _one_line_error(capsys, *said)
        assert sorted(tmp_path.rglob("*")) == before               # nothing written, inside or outside
    with pytest.raises(ValueError) as e:
        R.OnnxStepSession(export)
    assert all(s in str(e.value) for s in said)


@pytest.mark.parametrize("value", ["", ".", "..", 7])
def test_file_fields_that_are_no_file_name_are_refused(tmp_path, value):
    export = _copy(tmp_path / "x")
    for field in ("graph", "external_data", "item_vocab"):
        spec = _edit_spec(export, **{field: value})
        with pytest.raises(ValueError, match=f"{field} {value!r} is not the name of a file beside the graph"):
            R.read_spec(spec)
        _edit_spec(export, **{field: json.loads(pathlib.Path(SRC, "state_spec.json").read_text()).get(field)})
    assert R.read_spec(spec)["graph"] == "model.onnx"              # null external_data / the original names: fine


def _eval_data(tmp_path):
    items = json.loads(pathlib.Path(SRC, "item_vocab.json").read_text())["items"][:30]
    lines = ["user_id\titem_id\ttimestamp"] + [f"{u}\t{items[(u * 7 + t) % 30]}\t{t}"
                                               for u in range(12) for t in range(6)]
    data = tmp_path / "toy.tsv"
    data.write_text("\n".join(lines) + "\n")
    return data


def test_evaluate_onnx_refuses_a_vocabulary_outside_the_folder(tmp_path):
    """zoo.evaluate --onnx read the vocabulary the spec named wherever it was (``../../v.json``); exit 1 now, with
    the line naming the spec and the field."""
    from zoo.evaluate import main

    export = _copy(tmp_path / "a" / "b" / "onnx")
    shutil.copy(export / "item_vocab.json", tmp_path / "v.json")
    spec = _edit_spec(export, item_vocab="../../v.json")
    with pytest.raises(SystemExit) as e:
        main(["--onnx", str(export), "--data", str(_eval_data(tmp_path)), "--kcore", "none", "--ks", "5",
              "--no-progress"])
    assert isinstance(e.value.code, str) and "\n" not in e.value.code
    assert f"{spec}: item_vocab '../../v.json' {_FILE_ERROR}" in e.value.code


def test_a_spec_nested_too_deeply_is_corrupt(tmp_path, capsys):
    """``[[[...]]]`` 100,000 levels deep: a RecursionError traceback from every reader; the one-line "corrupt" error
    of any bad JSON now (exit 1)."""
    from zoo.evaluate import main

    export = _copy(tmp_path / "x")
    spec = export / "state_spec.json"
    spec.write_text("[" * 100_000 + "]" * 100_000)
    msg = f"corrupt {spec}: nested too deeply"
    with pytest.raises(ValueError, match="nested too deeply"):
        R.read_spec(spec)
    with pytest.raises(ValueError, match="nested too deeply"):
        R.OnnxStepSession(export)
    assert T.main(["--onnx", str(export), "--repo", str(tmp_path / "r")]) == 1
    _one_line_error(capsys, msg)
    with pytest.raises(SystemExit) as e:
        main(["--onnx", str(export), "--data", str(_eval_data(tmp_path)), "--ks", "5", "--no-progress"])
    assert isinstance(e.value.code, str) and msg in e.value.code and "\n" not in e.value.code


def _external_outside(dst, spec_names=None):
    """A copy of the bundled graph whose largest tensor is ONNX external data at ``../outside.bin`` (outside its
    folder); ``spec_names``: the spec's ``external_data``."""
    _copy(dst)
    m = onnx.load(str(dst / "model.onnx"))
    t = max(m.graph.initializer, key=lambda t: len(t.raw_data))
    (dst.parent / "outside.bin").write_bytes(t.raw_data)
    onnx.external_data_helper.set_external_data(t, location="../outside.bin", offset=0, length=len(t.raw_data))
    t.data_location = onnx.TensorProto.EXTERNAL
    t.ClearField("raw_data")
    onnx.save(m, str(dst / "model.onnx"))
    if spec_names:
        _edit_spec(dst, external_data=spec_names)
    return dst


@pytest.mark.parametrize("backend", ["onnxruntime", "python", "tensorrt"])
def test_external_data_outside_the_folder_is_not_a_usable_graph(tmp_path, backend, capsys):
    """onnx's ValidationError ("points outside the directory") was a traceback from export.triton; now one line
    naming the graph, exit 1, before anything is written; the same whether the spec names no tensor file or
    another."""
    for i, names in enumerate((None, "outside.bin")):
        export = _external_outside(tmp_path / f"g{i}" / "onnx", names)
        assert T.main(["--onnx", str(export), "--repo", str(tmp_path / "r"), "--backend", backend]) == 1
        _one_line_error(capsys, f"{export / 'model.onnx'} is not a usable ONNX graph: its tensor ",
                        "lies in '../outside.bin'")
        assert not (tmp_path / "r").exists()


def test_add_sequence_controls_maps_onnxs_errors_to_one_line(tmp_path):
    """add_sequence_controls itself (were check_graph bypassed): onnx's ValidationError about the external data is
    the ValueError "not a usable ONNX graph", naming the graph."""
    export = _external_outside(tmp_path / "g" / "onnx")
    spec = json.loads((export / "state_spec.json").read_text())
    with pytest.raises(ValueError, match=r"model.onnx is not a usable ONNX graph \(ValidationError: "):
        T.add_sequence_controls(export / "model.onnx", tmp_path / "out.onnx", spec)
    assert not (tmp_path / "out.onnx").exists()


_NAMES = [("", False), (".", False), ("..", False), ("a/b", False), ("../x", False), ("/abs", False),
          ("a\\b", False), ("a\0b", False), (7, False), (None, False), ("x.bin", True), ("..x", True),
          (".hidden", True), ("a b", True)]


@pytest.mark.parametrize("name,plain", _NAMES, ids=[repr(n) for n, _ in _NAMES])
def test_inside_holds_a_name_to_the_specs_plain_file_name_rule(tmp_path, name, plain):
    """``export.triton._inside`` (its last check before it writes a file a spec names) repeated
    ``export.runtime.is_plain_file_name`` by hand: it calls it now, so the two agree on every name, and refuses a
    plain name whose link leads out of the folder besides."""
    assert R.is_plain_file_name(name) is plain
    if plain:
        assert T._inside(tmp_path, name, "the file") == tmp_path / name
    else:
        with pytest.raises(T.TritonConfigError, match=rf"^the file: {re.escape(repr(name))} is not a file name inside "
                                                      rf"{re.escape(str(tmp_path))}; re-export the model with"):
            T._inside(tmp_path, name, "the file")
    if name == "x.bin":
        (tmp_path / "out").mkdir()
        os.symlink(tmp_path / "out" / "x.bin", tmp_path / "x.bin")
        with pytest.raises(T.TritonConfigError, match=r"'x.bin' is not a file name inside"):
            T._inside(tmp_path, name, "the file")
