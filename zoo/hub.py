"""Model cards and publishing: build a Hub-ready card folder from a training run, list the bundled models, push a
folder to the Hub. (Resolving ``from_pretrained`` names and the bundled copies is :mod:`zoo.pretrained`.)

CLI::

    python -m zoo.hub list
    python -m zoo.hub card --run runs/mamba4rec-ml1m --name mamba4rec-ml1m --data ../shared/data/ml-1m.5core.seq.gz
    python -m zoo.hub card --run hub_cards/mamba4rec-ml1m --name mamba4rec-ml1m --data ... --keep-notes   # in place
    python -m zoo.hub card --run runs/soup --name bert4rec-ml1m --data ... --exclude-history   # a zoo.soup folder
    python -m zoo.hub push hub_cards/mamba4rec-ml1m --repo-id ssm-rec-zoo/mamba4rec-ml1m
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pathlib
import re
import shlex
import shutil
import sys
from typing import Sequence

from export.fsutil import JSONReadError, json_depth_guard, read_json, strict_json

from .cli import (apply_threads, cannot, check_outputs, cli_device, columns_argv, error_text, positive_int,
                  refuse_links_leading_outside, shell_option, written_whole, written_whole_folder)
from .data.benchmarks import BENCHMARKS, recognise_benchmark
from .data.split import _count
from .pretrained import HUB_ORG, PLACEHOLDER_ORGS, bundled_models, weights_sha256

logger = logging.getLogger(__name__)


#: a card name (``zoo.hub card --name``): the folder name of the default ``--out`` and the name part of a Hub repo id,
#: so what the Hub accepts as one (huggingface_hub's ``validate_repo_id`` for a single component, ASCII only): letters,
#: digits, ``-``, ``_`` and ``.``, 1 to 96 of them, beginning and ending with a letter, digit or ``_``
CARD_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")


def card_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a card's name (:data:`CARD_NAME`; also no ``--`` or ``..``, no ``.git`` end, as the Hub
    forbids), or None for a valid one: it is used as a path component and as a Hub repository name, so a name with a
    ``/``, a ``..`` or a leading ``/`` would write outside ``hub_cards/``."""
    if not CARD_NAME.fullmatch(name):
        return ("a card's name is a Hub repository name and a folder name: 1 to 96 ASCII letters, digits, '-', '_' or "
                "'.', beginning and ending with a letter, digit or '_'")
    if "--" in name or ".." in name:
        return "a Hub repository name may not hold '--' or '..'"
    if name.endswith(".git"):
        return "a Hub repository name may not end with '.git'"
    return None


def hub_repo_id(value: str) -> str:
    """argparse type of ``--repo-id``: a Hub repository id as huggingface_hub's ``validate_repo_id`` accepts it
    (``NAME`` or ``OWNER/NAME``), else a usage error naming the rule -- before a card is measured or a folder read (a
    card written for a bad id could never be pushed under it; ``push`` met it only at ``create_repo``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError as e:
        raise argparse.ArgumentTypeError(f"not a Hub repository id: {e}") from None
    return value


#: the card tag of each :attr:`~zoo.modeling_utils.SeqRecPreTrainedModel.model_family` (the model class says which)
FAMILY_TAGS = {"ssm": "state-space-model", "baseline": "baseline"}


def family_tag(model_type: str) -> str:
    """The tag a card of ``model_type`` gets for its family: ``FAMILY_TAGS[model_class.model_family]`` of the
    registered model class (``ValueError`` for a ``model_type`` the zoo does not have, or a class without a family)."""
    from .models import get_model_class

    cls = get_model_class(model_type)[1]
    family = getattr(cls, "model_family", None)
    if family not in FAMILY_TAGS:
        raise ValueError(f"{cls.__name__}.model_family is {family!r}, not one of {sorted(FAMILY_TAGS)}: the model "
                         "class must say which family its card is tagged with")
    return FAMILY_TAGS[family]


#: the reference numbers the cards compare against, each with a source a card's reader can look up (a paper, a public
#: issue) or, for a target that no publication gives, a plain statement of what it is
PUBLISHED = {
    "mamba4rec": {"source": "Mamba4Rec paper (1 layer), RecBole protocol", "history_masked": False, "HR@10": 0.3121,
                  "NDCG@10": 0.1822, "MRR@10": 0.1425},
    "sasrec": {"source": "a target, not a published number: HR@10 0.30 and NDCG@10 0.17 under the RecBole protocol, "
                         "the low end of what well-tuned SASRec-type models reach on ML-1M (no published number for "
                         "a RecBole-style SASRec under this protocol is known)", "history_masked": False,
               "target": True, "HR@10": 0.30, "NDCG@10": 0.17},
    "lrurec": {"source": "LRURec paper Table 3, LRURec protocol (history masked)", "history_masked": True,
               "HR@10": 0.32636, "NDCG@10": 0.19298, "HR@20": 0.43313, "NDCG@20": 0.21990},
    "gru4rec": {"source": "RecBole issue #945 (github.com/RUCAIBox/RecBole/issues/945), RecBole GRU4Rec with "
                          "default parameters under the RecBole protocol (a third-party run: a sanity range, not a "
                          "paper's number)", "history_masked": False, "HR@10": 0.2548,
                "NDCG@10": 0.1406, "MRR@10": 0.1059},
    "bert4rec": {"source": "LRURec paper Table 3, BERT4Rec row (CE, AdamW lr 1e-3, batch 128), LRURec protocol "
                           "(history masked); no RecBole-protocol number for BERT4Rec on ML-1M is known",
                 "history_masked": True, "HR@10": 0.30894, "NDCG@10": 0.16377, "HR@20": 0.41738, "NDCG@20": 0.19118},
}
#: keys of a PUBLISHED entry that are not metrics
_REF_META = ("source", "history_masked", "target")
#: the benchmark PUBLISHED's numbers were measured on: a card compares with them only on this data
PUBLISHED_ON = "ml-1m-5core"
#: a card's protocol name, by whether the history was masked
PROTOCOL_NAMES = {False: "RecBole protocol", True: "LRURec protocol (history items masked)"}
CARD_FILES = ("config.json", "model.safetensors", "item_vocab.json", "README.md")
#: the folders of a card's ONNX graphs (``export.onnx --card-dir``: a step graph, a window graph)
ONNX_FOLDERS = ("onnx", "onnx-window")
#: the Hub's own folder of evaluation results (``.eval_results/*.yaml``, huggingface_hub's ``EvalResultEntry``
#: format, which feeds the model page and the benchmarks' leaderboards): the one hidden folder a card may hold and
#: ``push`` uploads
EVAL_RESULTS_DIR = ".eval_results"
#: what a card folder holds (``zoo.hub card`` writes it, ``export.onnx --card-dir`` adds its graphs), as ``fnmatch``
#: patterns of paths relative to the folder, each matching at its own depth only (:func:`_card_path`; fnmatch's
#: ``*`` alone would match across ``/``): :data:`CARD_FILES`, the card's ``training_log.json`` and
#: ``eval_results.json``, run logs at the top (``*_log.json``: a run or soup folder carded in place keeps its own), in
#: :data:`ONNX_FOLDERS` export.onnx's graph, its external tensors, its I/O spec and the item vocabulary it maps, and
#: the Hub's evaluation results (:data:`EVAL_RESULTS_DIR`)
CARD_CONTENT = (*CARD_FILES, "training_log.json", "eval_results.json", "*_log.json",
                *(f"{d}/{f}" for d in ONNX_FOLDERS for f in ("model.onnx", "model.onnx.data", "state_spec.json",
                                                          "item_vocab.json")),
                f"{EVAL_RESULTS_DIR}/*.yaml")


def _card_path(rel: str) -> bool:
    """Whether ``rel`` (a ``/``-separated path inside a card folder) is card content (:data:`CARD_CONTENT`): a pattern
    matches only paths of as many components (``*_log.json`` is a top-level run log, never ``resume/x_log.json``)."""
    import fnmatch

    return any(rel.count("/") == pat.count("/") and fnmatch.fnmatchcase(rel, pat) for pat in CARD_CONTENT)


def extra_files(folder: str | os.PathLike) -> list[str]:
    """The files in ``folder`` (relative paths, nested ones too) that are no part of a model card
    (:data:`CARD_CONTENT`): what ``zoo.hub push`` would publish beside the card -- hand-written notes, another run's
    files, a log nested below the top, anything copied in. Hidden entries (interrupted writers' stages, a clone's
    ``.git``) are left out, as ``push`` never uploads them (:data:`PUSH_IGNORE`); the Hub's
    :data:`EVAL_RESULTS_DIR` is the exception: ``push`` uploads it, so what it holds besides ``*.yaml`` files is
    listed."""
    found, folder = [], os.fspath(folder)
    for root, dirs, files in os.walk(folder):
        top = root == folder                    # os.walk gives the top as given, the folders below it joined to it
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") or (top and d == EVAL_RESULTS_DIR))
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
            if not name.startswith(".") and not _card_path(rel):
                found.append(rel)
    return sorted(found)


def _listed(names: list[str], most: int = 4) -> str:
    """``a, b, c, d, ... (7 in all)``: the first names of a list, for a one-line message."""
    return ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")


class OutFolderError(ValueError):
    """``zoo.hub card``'s ``--out`` cannot take the card as asked (a file, a place that cannot be written, a folder
    holding other files: choose another ``--out`` or pass ``--overwrite``): a usage error (exit 2) on the command
    line."""


class ExtraFilesError(ValueError):
    """``zoo.hub push`` of a folder holding files that are no part of a card (:func:`extra_files`), without
    ``allow_extra``: a usage error (exit 2) on the command line (remove them, or pass ``--allow-extra``)."""


# ------------------------------------------------------------------------------------------------- cards
#: the example history of a card's code (ML-1M movie ids), when the model's vocabulary has these items
EXAMPLE_ITEMS = [1, 48, 150]
#: Unix seconds of the example history, for models that read time
EXAMPLE_TIMESTAMPS = [978300760, 978302109, 978824268]


def _usage_example(folder: str | os.PathLike, cfg: dict) -> str:
    """The card's ``recommend`` line, runnable as written: :data:`EXAMPLE_ITEMS` if the model's vocabulary holds them
    (else its first three items: ids of the model's own dataset), and their timestamps for a model that reads time
    (the model class's own ``uses_timestamps``: a class constant, or for TiM4Rec a property of its config, read here
    from the card's config without building the model)."""
    from types import SimpleNamespace

    from .models import get_model_class
    from .vocab import VOCAB_FILE, ItemVocab

    items = EXAMPLE_ITEMS
    if os.path.exists(os.path.join(folder, VOCAB_FILE)):
        vocab = ItemVocab.load(str(folder))
        if not all(x in vocab for x in items):
            items = list(vocab.items[:3])
    config_cls, model_cls = get_model_class(cfg["model_type"])
    uses_time = getattr(model_cls, "uses_timestamps", False)
    if isinstance(uses_time, property):
        uses_time = bool(uses_time.fget(SimpleNamespace(config=config_cls.from_dict(cfg))))
    history = json.dumps([items])
    if uses_time:
        return (f"print(model.recommend({history}, timestamps={json.dumps([EXAMPLE_TIMESTAMPS])}, k=10).items)  "
                "# the dataset's item ids and their Unix seconds")
    return f"print(model.recommend({history}, k=10).items)   # item ids are the dataset's own ids"


def card_loading_line(name: str, repo_id: str | None = None, bundled: bool = False,
                      load_from: str | os.PathLike | None = None) -> str:
    """The card example's ``from_pretrained`` line. Only a card of the project's own (``bundled``: the folder that
    ``ssm-rec-zoo/<name>`` resolves to, :func:`is_bundled_card`) loads by that id and says it works offline; another
    loads by the Hub id it is published as (``repo_id``), else by its folder (``load_from``)."""
    if bundled:
        return (f'model = AutoModel.from_pretrained("{repo_id or f"{HUB_ORG}/{name}"}")   '
                "# works offline: a copy is bundled with ssm-rec-zoo")
    if repo_id:
        return f'model = AutoModel.from_pretrained("{repo_id}")   # the Hub id this card is published as'
    return (f"model = AutoModel.from_pretrained({json.dumps(os.fspath(load_from or name))})   "
            "# this card's folder (its Hub id once published: python -m zoo.hub push)")


#: the folder of the zoo team's own copies of the benchmarks (``../shared/data``, read by the tests and bench scripts
#: through ``$ZOO_DATA_DIR``): a card made from one says that its commands' path is the team's copy
TEAM_DATA = ("shared", "data")
#: the 2014 Amazon review data's 5-core file of each Amazon benchmark of :data:`BENCHMARKS` (Julian McAuley's
#: ``reviews_<category>_5.json.gz``, whose counts are those of the benchmark)
AMAZON_5CORE = {"beauty-5core": ("Beauty", "reviews_Beauty_5.json.gz"),
                "sports-5core": ("Sports and Outdoors", "reviews_Sports_and_Outdoors_5.json.gz")}


def _counts(key: str, what: str = "interactions") -> str:
    """``6,040 users, 3,416 items, 999,611 interactions``: the counts of benchmark ``key`` (:data:`BENCHMARKS`)."""
    users, items, rows = BENCHMARKS[key][0]
    return f"{users:,} users, {items:,} items, {rows:,} {what}"


def _is_team_copy(path: str) -> bool:
    """Whether ``path`` is a file of the team's data folder (:data:`TEAM_DATA`, as ``../shared/data/X``)."""
    parts = pathlib.PurePosixPath(path.replace(os.sep, "/")).parent.parts
    return tuple(parts[-2:]) == TEAM_DATA


def _data_replacement(path: str | None, options: dict, new_file: str, kcore=None, time_ties=None) -> tuple[str, str]:
    """``(old, new)``: the card's ``--data`` words (the path and its data flags, :func:`data_flags`) and the words
    that read ``new_file`` as the same data in their place (``kcore``/``time_ties``: the flags it needs, else the
    run's; never the run's ``--columns``, which named another file's columns)."""
    old = (shell_option("--data", path) if path else "--data FILE") + data_flags(options)
    kept = {"kcore": options.get("kcore", "auto") if kcore is None else kcore,
            "time_ties": time_ties or options.get("time_ties", "file")}
    return old, shell_option("--data", new_file) + data_flags(kept)


def card_data_texts(dataset: dict) -> tuple[str, str]:
    """``(section, pointer)`` of a card (:func:`make_card`): its ``## Data`` section -- where the data comes from, how a
    reader gets it and what to pass to the card's commands in place of the data they name -- and the sentence at the
    top of its evaluation section that says what the commands' path is (``""`` when there is nothing to explain).

    ``dataset`` keys read: ``source`` (the :data:`BENCHMARKS` key the data file loads as, before any items were left
    out; else ``benchmark``), ``path`` (the ``--data`` of the card's commands), ``timed`` (whether the file has
    timestamps: ML-1M's 5-core sequence file has none, and ``ratings.dat`` read in its place needs ``--time-ties
    item``, the order of same-second ratings in that file), ``options`` (the run's data options,
    :func:`run_data_options`), ``item_id_type`` (the item vocabulary's, ``"int"`` or ``"str"``), ``name`` and
    ``description``. Data that is no known benchmark gets a section that says so. The ``zoo.download`` files are
    those of :data:`zoo.data.benchmarks.SOURCES`."""
    from .data.benchmarks import SOURCES

    key = dataset.get("source", dataset.get("benchmark"))
    path, options = dataset.get("path"), dataset.get("options") or {}
    if key in ("ml-1m-5core", "ml-1m-u2999-5core", "ml-1m-u2999"):
        src = SOURCES["ml-1m"]
        got = (f"`python -m zoo.download ml-1m --dir data/` fetches GroupLens' `{src.url}` and writes its "
               f"`ratings.dat` as `data/{src.filename}` (kept only when its 5-core has ML-1M's counts; "
               "`--from-zip ml-1m.zip` reads an archive downloaded by hand)")
        if key == "ml-1m-5core":
            timed = dataset.get("timed", True)
            k = options.get("kcore", "auto")
            # a k-core of the 5-core is that k-core of the whole file for k >= 5, the 5-core itself below
            old, new = _data_replacement(path, options, f"data/{src.filename}", time_ties=None if timed else "item",
                                         kcore=None if timed else "auto" if k in (None, "auto") or k <= 5 else k)
            by_item = "--time-ties item" in new
            text = ("MovieLens-1M (under GroupLens' usage license): the 5-core of its `ratings.dat` (users and items "
                    f"with at least 5 ratings: {_counts(key)}), each user's ratings in time order, same-second "
                    + ("ratings ordered by item id" if by_item else "ratings in the file's order") + f". {got}. "
                    f"`{new}` in place of `{old}` reads it as this card's data: the commands 5-core an interaction "
                    "file by default" + (", and `--time-ties item` orders same-second ratings by item id." if by_item
                                         else "."))
        else:
            cut = "data/ml-1m.users0001-2999.ratings.dat"
            old, new = _data_replacement(path, options, cut)
            text = ("MovieLens-1M users 1-2999 (under GroupLens' usage license): every rating in MovieLens-1M's "
                    f"`ratings.dat` of the users with ids 1 to 2999 ({_counts('ml-1m-u2999', 'ratings')}, "
                    "timestamps in Unix seconds)" + (f", 5-core as the commands read it: {_counts(key)}"
                                                      if key.endswith("5core") else "")
                    + f". No option of the zoo cuts it from the whole file: {got}, `awk -F:: '$1 <= 2999' "
                    f"data/{src.filename} > {cut}` keeps the lines of users 1 to 2999, and `{new}` in place of "
                    f"`{old}` reads them as this card's data.")
        pointer = (f"`{new}` reads the same data from GroupLens' file in its place" + (
            "" if key == "ml-1m-5core" else ", once cut") + " (see *Data*).")
    elif key in ("ml-100k-5core", "ml-100k"):
        src = SOURCES["ml-100k"]
        old, new = _data_replacement(path, options, f"data/{src.filename}")
        text = (f"MovieLens-100K (under GroupLens' usage license): its `u.data`, {_counts('ml-100k', 'ratings')}"
                + (f", 5-core as the commands read it: {_counts(key)}" if key.endswith("5core") else "")
                + f". `python -m zoo.download ml-100k --dir data/` fetches GroupLens' `{src.url}` and writes `u.data` "
                f"with a header line as `data/{src.filename}` (RecBole's `ml-100k.inter` content; kept only when it "
                f"has these ratings), and `{new}` in place of `{old}` reads it as this card's data.")
        pointer = f"`{new}` reads the same data from GroupLens' file in its place (see *Data*)."
    elif key in AMAZON_5CORE:
        category, public = AMAZON_5CORE[key]
        table = key.split("-")[0] + ".tsv"
        renumbered = dataset.get("item_id_type", "int") == "int"
        text = (f"Amazon {category}, 5-core: the {category} reviews of Julian McAuley's 2014 Amazon review data in "
                f"their 5-core form, `{public}` ({_counts(key, 'reviews')}, the counts of this card's data), the "
                "set used across the sequential-recommendation literature (S3-Rec, CoSeRec, TiM4Rec), each review "
                "timed by its day (`unixReviewTime`). The zoo does not download it (the data stays under its "
                "owners' terms). " + (
                    "This card's data numbers the users and items 1, 2, ... as the copy it was taken from did, and "
                    "the model knows its items only by those numbers, not by Amazon's `asin`: that numbering is not "
                    "published with the card, so the card's numbers cannot be re-measured from the public file. "
                    if renumbered else "")
                + "A model is trained on the public file as a table with a header, e.g. `python -c \"import gzip, "
                "json; print('user_id\\titem_id\\ttimestamp'); [print(r['reviewerID'], r['asin'], "
                f"r['unixReviewTime'], sep='\\t') for r in map(json.loads, gzip.open('{public}'))]\" > {table}` "
                f"and `--data {table}`; same-day reviews then keep that file's order, which decides the test item "
                "of many users.")
        pointer = ("the public file has other item ids and another order of same-day reviews (see *Data*)."
                   if renumbered else "see *Data* for the public file it holds.")
    else:
        described = dataset.get("description") or f"`{dataset.get('name', 'dataset')}`"
        text = (f"{described.rstrip('.')}. It is not one of the public benchmarks the zoo recognises by their counts "
                "(`zoo.data.benchmarks`), so this card does not say where to get it.")
        return f"## Data\n\n{text}\n", ""
    if not path:
        return f"## Data\n\n{text}\n", ""
    whose = "the zoo team's copy of this data" if _is_team_copy(path) else "the file this card was made with"
    return f"## Data\n\n{text}\n", f"`{path}` in this card's commands is {whose}; {pointer}"


def make_card(folder: str | os.PathLike, name: str, metrics: dict, protocol: dict, dataset: dict, train_log: dict,
              repo_id: str | None = None, extra_sections: str = "", reference_metrics: dict | None = None,
              intervals: dict | None = None, baselines: dict | None = None, bundled: bool = False,
              load_from: str | os.PathLike | None = None) -> str:
    """Write ``folder/README.md``: a Hub model card (huggingface_hub ``ModelCard``) with ``model-index`` metrics.

    ``bundled``: a card of the project's own (``ssm-rec-zoo/<name>`` resolves to its folder), named by that id and
    said to work offline; any other card is named ``repo_id`` (the Hub id it will be published as) or ``name``, and its
    example loads ``repo_id``, else its folder ``load_from`` (:func:`card_loading_line`).

    ``protocol["history_masked"]`` says how ``metrics`` were measured. When the model's published reference
    (``PUBLISHED``) was measured under the other protocol, ``reference_metrics = {"metrics": ..., "command": ...}``
    must hold this model's numbers under the reference's protocol; the comparison uses them, never numbers of
    different protocols side by side. ``intervals`` (:func:`zoo.metrics.bootstrap_interval` of the test ranks,
    ``{"HR@10": (low, high), ...}``) are stated under the table, and the comparison says which published numbers
    lie inside them (a difference the test users do not resolve). ``baselines`` (``{"markov": {"metrics", "command"},
    "pop": ...}``, measured on the same users under the same protocol) are set beside the model's numbers.

    A ``## Data`` section before the evaluation says where the data comes from and how a reader gets it and passes
    it to the card's commands, and the evaluation's first lines say what the path of those commands is
    (:func:`card_data_texts`, from ``dataset``'s ``source``, ``path``, ``timed``, ``options`` and ``item_id_type``;
    without them, what ``benchmark``, ``name`` and ``description`` say)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    import zoo

    loading = card_loading_line(name, repo_id, bundled, load_from)
    repo_id = repo_id or (f"{HUB_ORG}/{name}" if bundled else name)
    cfg = read_json_object(os.path.join(folder, "config.json"), "the model config")
    model_type = cfg["model_type"]
    ds_name, ds_type = dataset.get("name", "dataset"), dataset.get("type", "dataset")
    split = "test (leave-one-out)"
    results = [EvalResult(task_type="sequential-recommendation", task_name="Sequential recommendation (next item)",
                          dataset_type=ds_type, dataset_name=ds_name, dataset_split=split,
                          metric_type=k.split("@")[0].lower() + "_at_" + k.split("@")[1], metric_name=k,
                          metric_value=round(float(v), 6), metric_config=protocol.get("name"))
               for k, v in metrics.items() if not k.startswith("Recall")]
    data = ModelCardData(library_name="transformers", license="apache-2.0", model_name=repo_id, eval_results=results,
                         tags=["recommendation", "sequential-recommendation", model_type, "ssm-rec-zoo"]
                         + [family_tag(model_type)],
                         datasets=[ds_type], pipeline_tag="other")
    env = train_log.get("environment", {})
    data_section, data_pointer = card_data_texts(dataset)       # where the data comes from; what the path is
    data_pointer = f"\n{data_pointer}\n" if data_pointer else ""
    table = "| metric | @5 | @10 | @20 |\n|---|---|---|---|\n" + "\n".join(
        f"| {m} | " + " | ".join(f"{metrics.get(f'{m}@{k}', float('nan')):.4f}" for k in (5, 10, 20)) + " |"
        for m in ("HR", "NDCG", "MRR"))
    body = f"""
# {name}

A **{model_type}** sequential recommender trained by the SSM recommender zoo (`ssm-rec-zoo` {zoo.__version__}).
It predicts the next item of a user's history over the full item catalogue.
Loading it needs this project's package, `ssm-rec-zoo` (not on PyPI yet: `pip install .` in a checkout of the project): `import zoo` registers the model type `{model_type}` with transformers' Auto classes; transformers alone does not know it (it answers with an "upgrade transformers" error).

```python
import zoo                                   # registers the zoo's models with transformers' Auto classes
from transformers import AutoModel

{loading}
{_usage_example(folder, cfg)}
```

{data_section}
## Evaluation ({protocol.get('name', '')})

Full ranking over all {cfg['n_items'] - 1:,} items (no sampled negatives), {protocol.get('description', '')}
Measured by `{protocol.get('command', '')}` on {dataset.get('users', '?'):,} test users.
{data_pointer}
{table}

(HR@K equals Recall@K with one held-out item per user.){_intervals_text(intervals)}
{_baselines_markdown(metrics, baselines)}
## Training

- Data: {dataset.get('description', ds_name)}
- Objective: {_objective(cfg, train_log)}{_weighting_note(train_log)}
- {_how_trained(train_log)}
- Command: `{train_log.get('command', '')}`
- Software: python {env.get('python')}, torch {env.get('torch')}, transformers {env.get('transformers')}, numpy {env.get('numpy')}.
- Parameters: {train_log.get('n_parameters', 0):,}. Config: see `config.json`; item vocabulary: `item_vocab.json`.
{extra_sections}
"""
    ref = PUBLISHED.get(model_type)
    if ref and dataset.get("benchmark") == PUBLISHED_ON:
        # compare under the reference's own protocol: a card under the RecBole protocol whose reference was measured
        # with the history masked carries a second measurement (``reference_metrics``) made under that protocol
        same = bool(ref["history_masked"]) == bool(protocol.get("history_masked", False))
        if not same and reference_metrics is None:
            raise ValueError(f"{model_type}'s published reference is under another protocol (history masked: "
                             f"{ref['history_masked']}): pass reference_metrics measured under it")
        cmp = metrics if same else reference_metrics["metrics"]
        inside = {} if not (same and intervals) else {
            k: "yes" if intervals[_hr(k)][0] <= v <= intervals[_hr(k)][1] else "no"
            for k, v in ref.items() if k not in _REF_META and _hr(k) in intervals}
        rows = "\n".join(f"| {k} | {v:.4f} | {cmp.get(k, float('nan')):.4f} | {cmp.get(k, 0) - v:+.4f} |"
                         + (f" {inside.get(k, '–')} |" if inside else "")
                         for k, v in ref.items() if k not in _REF_META)
        below = [k for k, v in ref.items() if k not in _REF_META and cmp.get(k, 0) < v]
        met = not below
        measured_note = "" if same else (
            f"The reference was measured under the {PROTOCOL_NAMES[bool(ref['history_masked'])]}, "
            f"so this model is compared after the same measurement: `{reference_metrics['command']}` "
            f"(the numbers at the top of this card are under the {protocol.get('name', 'card')}).\n\n")
        word = "target" if ref.get("target") else "published"      # a target is no published number: not called one
        head = (f"| metric | {word} | this model | difference |"
                + (f" {word} inside this model's 95% interval? |\n|---|---|---|---|---|" if inside else
                   "\n|---|---|---|---|"))
        body += (f"\n## Against the {word} numbers\n\nReference: {ref['source']}.\n\n{measured_note}{head}\n"
                 f"{rows}\n\n"
                 + (f"**Meets or beats every {word} number.**\n" if met else _below_reference_note(
                     train_log, below, [k for k in ref if k not in _REF_META and k not in below])))
    card = ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body)
    path = os.path.join(folder, "README.md")
    card.save(path)
    return path


#: how a card names the baselines of :data:`zoo.evaluate.BASELINES`
BASELINE_ROWS = {"markov": "first-order transitions: what most often directly followed the user's last item in the "
                           "training sequences",
                 "pop": "most popular in the training sequences"}
#: below this ratio of NDCG@10 to the transitions baseline's, a card says the model adds little to it
BASELINE_MARGIN = 1.25


def _baselines_markdown(metrics: dict, baselines: dict | None) -> str:
    """The card's section setting the model beside the rankings that need no model (empty without ``baselines``)."""
    if not baselines:
        return ""
    rows = [f"| this model | {metrics['HR@10']:.4f} | {metrics['NDCG@10']:.4f} |"]
    rows += [f"| {BASELINE_ROWS[k]} (`{b['command']}`) | {b['metrics']['HR@10']:.4f} | {b['metrics']['NDCG@10']:.4f} |"
             for k, b in baselines.items()]
    text = ("\n## Against rankings without a model\n\nThe same test users and protocol. A sequential model must clear "
            "the first-order transitions far (the order signal of the last item alone), the most popular items very "
            "far.\n\n| ranking | HR@10 | NDCG@10 |\n|---|---|---|\n" + "\n".join(rows) + "\n")
    ndcg = metrics["NDCG@10"]
    markov = baselines.get("markov", {}).get("metrics", {}).get("NDCG@10")
    pop = baselines.get("pop", {}).get("metrics", {}).get("NDCG@10")
    if pop and ndcg < pop:
        text += (f"\n**NDCG@10 below the most popular items ({100 * (ndcg / pop - 1):+.0f}%)"
                 + (f" and the first-order transitions ({100 * (ndcg / markov - 1):+.0f}%)" if markov else "")
                 + ":** this model ranks worse than a ranking without a model; it is not fit to recommend.\n")
    elif markov and ndcg < markov:
        text += (f"\n**NDCG@10 below the first-order transitions ({100 * (ndcg / markov - 1):+.0f}%):** the last "
                 "item's transitions alone rank better than this model.\n")
    elif markov and ndcg < BASELINE_MARGIN * markov:
        text += (f"\n**NDCG@10 only {100 * (ndcg / markov - 1):+.0f}% against the first-order "
                 "transitions:** this model adds little to what the last item's transitions already say.\n")
    return text


def _how_trained(log: dict) -> str:
    """The card's line on how the weights were made: the optimiser and run of a training stage, or a soup's recipe."""
    env = log.get("environment", {})
    where = (f"on {env.get('platform', '?')}\n  ({_threads_text(env.get('cpu_threads'))}"
             f"{', GPU ' + env['cuda'] if env.get('cuda') else ''})")
    if _is_soup(log):
        return (f"Weights: a {_soup_text(log)} (`zoo.soup`; Wortsman et al., 2022, *Model soups*): the element-wise "
                "average of the weights of the checkpoints of this model's lineage marked below, chosen by validation "
                f"NDCG@10 alone (best checkpoint {log['init_valid_NDCG10']:.4f}, soup {log['best_valid_NDCG10']:.4f}; "
                "the test split is not read to choose); how each was trained is in Training stages. Averaged in "
                f"{log.get('soup_minutes', 0):.0f} minutes {where}.")
    loop = ("; trained with transformers' `Trainer` (`zoo.hf_trainer`; all its `TrainingArguments` are in "
            f"`{STAGES_FILE}`)" if log.get("trainer") else "")
    return (f"Optimiser: {_optimiser_text(log.get('train', {}))}; seed {log.get('seed')}{loop}; best epoch "
            f"{log.get('best_epoch')} of\n  {len(log.get('epochs', []))} ({log.get('stopped', '')}); "
            f"{log.get('train_minutes', 0):.0f} minutes {where}.")


def _hr(name: str) -> str:
    """``Recall@K`` (the LRURec paper's name) is ``HR@K`` with one held-out item."""
    return name.replace("Recall@", "HR@")


def _intervals_text(intervals: dict | None) -> str:
    if not intervals:
        return ""
    return ("\n\n95% intervals over the test users (percentile bootstrap, 10,000 resamples; another draw of as many "
            "users, not another training seed): " + ", ".join(f"{k} [{lo:.4f}, {hi:.4f}]"
                                                             for k, (lo, hi) in intervals.items()) + ".")


def _objective(cfg: dict, train_log: dict) -> str:
    """The card's objective line, derived from the model and the run (``zoo.train.describe_objective``) rather than
    copied from the log's text (logs written before BERT4Rec had its own sentence describe next-item CE)."""
    from .losses import describe_loss
    from .train import describe_objective

    max_len = int(cfg.get("max_seq_length", 0))
    return describe_objective(cfg["model_type"], max_len, int(train_log.get("window_stride") or max_len), cfg,
                              describe_loss(train_log.get("loss")))


def _weighting_note(train_log: dict) -> str:
    """How the batch loss weighs targets (``zoo.train --loss-weighting``), for the card's objective line."""
    w = train_log.get("loss_weighting")
    if w == "target":
        return "; every target weighs the same (`--loss-weighting target`, RecBole's weighting)"
    if w == "window":
        return "; each batch's loss is the mean over its targets (`--loss-weighting window`)"
    return ""


def _below_reference_note(train_log: dict, below: list[str] | tuple = (), met: list[str] | tuple = ()) -> str:
    """What the card says when the checkpoint misses its reference numbers: which ones (when only some are missed)
    and why, from the run's own log."""
    train = train_log.get("train") or {}
    schedule = train.get("lr_schedule", "constant")
    where = f" at {', '.join(below)} (meets or beats them at {', '.join(met)})" if below and met else ""
    if _is_soup(train_log):
        return (f"**Below the reference numbers**{where}: this checkpoint averages checkpoints of runs sized to a CPU "
                "time budget (see Training); a longer schedule is the next step; training continues with "
                "`--init-from` and the card will be replaced.\n")
    from .train import TIME_BUDGET

    stopped = str(train_log.get("stopped", ""))
    # the decay ran its course: to the last epoch (a Trainer run's: its max_steps), or (--decay-over budget) to the time budget that stopped the run
    decayed = schedule != "constant" and (stopped in ("max epochs", "max steps") or (
        str(train.get("decay_over", "")).startswith(TIME_BUDGET) and stopped.startswith(TIME_BUDGET)))
    if decayed:
        return (f"**Below the reference numbers**{where} after a complete {len(train_log.get('epochs', []))}-epoch run whose "
                f"learning rate decayed ({schedule}) to 0, sized to a CPU time budget (see Training): a longer "
                "schedule is the next step; training continues with `--init-from` and the card will be replaced.\n")
    return (f"**Below the reference numbers**{where}: this checkpoint is not yet trained to convergence (see Training); "
            "training continues with `--init-from` and the card will be replaced.\n")


NOTES_BEGIN, NOTES_END = "<!-- zoo:notes -->", "<!-- /zoo:notes -->"


def _marked_notes(notes: str) -> str:
    """The card's free-form notes between markers (empty markers for none), so that the next card of the folder can
    carry them over (``--keep-notes``), whether it has notes or not."""
    return f"\n{NOTES_BEGIN}\n" + (f"{notes.strip()}\n" if notes.strip() else "") + f"{NOTES_END}\n"


def card_notes(card_dir: str | os.PathLike) -> str:
    """The notes of the card in ``card_dir`` (what ``--notes`` added, between the notes markers, which every card has
    since they are written empty too); ``""`` when the folder has no card. ``ValueError`` for a card written before
    the markers existed, whose notes cannot be told apart from the generated sections."""
    readme = pathlib.Path(card_dir) / "README.md"
    if not readme.is_file():
        return ""
    text = readme.read_text(encoding="utf-8")
    if NOTES_BEGIN in text and NOTES_END in text:
        return text.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0].strip()
    raise ValueError(f"{readme} has no {NOTES_BEGIN} markers (a card written before they existed): pass its notes "
                     "with --notes instead of --keep-notes")


STAGES_FILE = "training_log.json"


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """The JSON object in the file ``path`` (a run's log, a card's history or results, a model config), read with
    the project's one reader (:func:`export.fsutil.read_json`). A file that cannot be read -- not UTF-8, not JSON,
    nested too deeply (``[[[...]]]``), no JSON object, or refused by the file system -- is a one-line ``ValueError``
    naming ``what`` and the file: ``"the training log PATH: cannot read it (REASON)"`` (:func:`zoo.cli.cannot`)."""
    try:
        value = read_json(path)
    except (OSError, JSONReadError) as e:
        raise ValueError(cannot(what, os.fspath(path), e.reason if isinstance(e, JSONReadError) else e,
                                "read")) from None
    if not isinstance(value, dict):
        raise ValueError(cannot(what, os.fspath(path), f"a JSON {type(value).__name__}, not a JSON object", "read"))
    return value


def _stages_of(path: pathlib.Path) -> list[dict]:
    """The stages of a card's ``training_log.json`` (``{"stages": [log, ...]}``); a ``ValueError`` naming the file
    when it cannot be read (:func:`read_json_object`) or holds no non-empty list of stage logs."""
    stages = read_json_object(path, "the card's training history").get("stages")
    if not isinstance(stages, list) or not stages or not all(isinstance(st, dict) for st in stages):
        raise ValueError(cannot("the card's training history", os.fspath(path),
                                'no "stages" list of stage logs (JSON objects)', "read"))
    return stages


def training_stages(run_dir: str | os.PathLike) -> list[dict]:
    """The training history of a run as a list of stage logs, oldest first: a run started with ``--init-from`` is
    preceded by the stages of the checkpoint it started from (a run folder's ``train_log.json``, followed further,
    a card folder's ``training_log.json``, which already holds every earlier stage, or a ``zoo.soup`` folder's
    ``soup_log.json``: :func:`soup_stages`). A card folder that already holds the run's stage (carded from it, then
    from later stages) gives its stages before it. A run that logged the weights it started from
    (``init_weights_sha256``) is followed only into a folder that still holds them: a card replaced since (by a
    sibling run, or a soup) would tell another history, so the history stops there, with a warning. A log on the
    way that cannot be read (not UTF-8, not JSON, ``[[[...]]]``, no JSON object) is a one-line ``ValueError`` naming
    it (:func:`read_json_object`)."""
    stages: list[dict] = []
    seen = set()
    folder = pathlib.Path(run_dir)
    expect = None       # the SHA-256 of the weights the stage after ``folder`` started from, when its log has it
    while True:
        key = folder.resolve()
        if key in seen:
            raise ValueError(f"training logs form a cycle at {folder}")
        seen.add(key)
        if (folder / "train_log.json").exists():
            if expect and weights_sha256(folder) != expect:
                logger.warning("training history stops at %s: %s no longer holds the weights it started from",
                               run_dir, folder)
                return stages
            log = read_json_object(folder / "train_log.json", "the training log")
            stages.insert(0, log)
            prev = log.get("init_from")
            if not prev:
                return stages
            expect = log.get("init_weights_sha256")
            found, tried = init_from_folder(str(prev), folder, log, expect)
            if found is None:
                logger.warning("training history stops at %s (init_from %s not found; tried %s)", run_dir, prev,
                               ", ".join(tried))
                return stages
            folder = found
        elif (folder / STAGES_FILE).exists():
            earlier = _stages_of(folder / STAGES_FILE)
            if stages and stages[0] in earlier:         # the card holds this run (re-carded from it, or later stages)
                return earlier[:earlier.index(stages[0])] + stages
            if expect and weights_sha256(folder) != expect:   # the card was replaced since the run started from it
                logger.warning("training history stops at %s: the card %s was replaced since the run started from it",
                               run_dir, folder)
                return stages
            return earlier + stages
        elif (folder / SOUP_LOG).exists():              # a zoo.soup folder: the stages its ingredients share, then it
            return soup_stages(read_json_object(folder / SOUP_LOG, "the soup log")) + stages
        else:
            logger.warning("training history stops at %s (no train_log.json or %s)", folder, STAGES_FILE)
            return stages


SOUP_LOG = "soup_log.json"


def init_from_folder(init_from: str, run_folder: str | os.PathLike, log: dict,
                     expect: str | None = None) -> tuple[pathlib.Path | None, list[str]]:
    """``(folder, tried)``: the folder a run in ``run_folder`` (its ``train_log.json``: ``log``) started from, as its
    ``init_from`` names it (``zoo.train --init-from`` as typed, relative to where it ran), or None; ``tried`` lists the
    places looked at, for the message.

    An absolute path is taken as it is. A relative one is looked for, in this order, under the working directory the
    run recorded (its log's ``cwd``, when it has one), under the run folder's parent (a run and its starting run made
    side by side, ``--out B --init-from A``), then under the current directory. A Hub id of the project's organisation
    or of a placeholder organisation the docs use (``org/<name>``, :data:`zoo.pretrained.PLACEHOLDER_ORGS`) is then
    its bundled copy, as ``from_pretrained`` finds it offline (not for a run started from another revision, the
    log's ``init_revision``). A run started from a subfolder (``--subfolder``, the log's ``init_subfolder``) is looked
    for in that subfolder of each place. When ``expect`` (the SHA-256 of the weights the run
    started from) is given, the first place that holds those weights is chosen, else the first that exists (whose
    other weights then stop the history, with a warning)."""
    path = pathlib.Path(init_from)
    if path.is_absolute():
        candidates = [path]
    else:
        bases = ([pathlib.Path(log["cwd"])] if isinstance(log.get("cwd"), str) and log["cwd"] else []) + [
            pathlib.Path(os.path.abspath(run_folder)).parent, pathlib.Path.cwd()]
        candidates = list(dict.fromkeys(base / path for base in bases))
    tried = [str(c) for c in candidates]
    org, _, name = init_from.partition("/")
    revision = log.get("init_revision")             # the bundled copy stands in for main only
    if not path.is_absolute() and name and "/" not in name and org in (HUB_ORG, *PLACEHOLDER_ORGS) \
            and revision in (None, "main"):
        bundled = bundled_models().get(name)
        candidates += [pathlib.Path(bundled)] if bundled is not None else []
        tried.append(f"the bundled copy of {HUB_ORG}/{name} ({bundled or 'none'})")
    sub = log.get("init_subfolder") or ""           # zoo.train --init-from X --subfolder S: the weights are in X/S
    if isinstance(sub, str) and sub:
        candidates, tried = [c / sub for c in candidates], [os.path.join(t, sub) if not t.startswith("the ") else t
                                                            for t in tried]
    existing = [c for c in candidates if c.is_dir()]
    match = next((c for c in existing if expect and weights_sha256(c) == expect), None)
    return (match or (existing[0] if existing else None)), tried


def check_leave_one_out(stages: list[dict], where: str) -> None:
    """``ValueError`` when a stage of this history trained on a temporal split (``zoo.train --temporal-split``):
    cards and soups report and choose on leave-one-out, and such a checkpoint has never seen the last periods'
    interactions that leave-one-out trains on."""
    temporal = [st for st in stages if (st.get("split") or {}).get("kind") == "temporal"]
    if temporal:
        raise ValueError(f"{where} was trained on a temporal split ({temporal[0]['split'].get('cuts')}): cards and "
                         "soups are measured on leave-one-out, which that run's checkpoint cannot be compared on; "
                         "evaluate it with python -m zoo.evaluate --temporal-split instead")


def soup_stages(soup_log: dict) -> list[dict]:
    """A ``zoo.soup`` folder's history as stages: those every ingredient shares, then the soup itself as one stage
    (``kind: "soup"``: the soup log less the shared stages; its ``ingredient_stages`` hold each ingredient's own
    stages once, its ``ingredients`` their indices)."""
    if soup_log.get("kind") != "soup" or "ingredient_stages" not in soup_log:
        raise ValueError(f"{SOUP_LOG} was written by a zoo.soup without the ingredients' training history: "
                         "make the soup again with this version")
    return list(soup_log["stages"]) + [{k: v for k, v in soup_log.items() if k != "stages"}]


def _is_soup(stage: dict) -> bool:
    return stage.get("kind") == "soup"


def _optimiser_text(train: dict) -> str:
    """``{'optimizer': 'adam', 'lr': 0.001, ...}`` (a training log's ``train``) as card prose:
    ``Adam, lr 0.001 (linear decay to 0), weight decay 0, batch 32, no gradient clipping``."""
    if not train:
        return "not recorded"
    names = {"adam": "Adam", "adamw": "AdamW (no decay on biases and normalization gains)"}
    opt = names.get(train.get("optimizer"), str(train.get("optimizer")))
    sched = train.get("lr_schedule", "constant")
    horizon = f" over the {train['decay_over']}" if train.get("decay_over") else ""
    warmup = f"linear warmup over {train['warmup_steps']} steps" if train.get("warmup_steps") else ""
    shape = ", ".join(x for x in (warmup, "" if sched == "constant" else f"{sched} decay to 0{horizon}") if x)
    parts = [opt, f"lr {train.get('lr')}" + (f" ({shape})" if shape else ""),
             f"weight decay {train.get('weight_decay', 0):g}", f"batch {train.get('batch_size')}"]
    clip = train.get("clip") or 0
    parts.append(f"gradient clip-norm {clip:g}" if clip else "no gradient clipping")
    if train.get("sparse_item_grad"):
        from .train import SPARSE_ITEMS_TEXT

        parts.append(f"item table: {SPARSE_ITEMS_TEXT}" + (", not weight-decayed" if train.get("weight_decay") else ""))
    return ", ".join(parts)


def _threads_text(n) -> str:
    if n is None:
        return "CPU threads not recorded"
    return f"{n} CPU thread" + ("" if n == 1 else "s")


def _stage_row(i: int, st: dict) -> str:
    """A row of the stages table: a training run, or a soup (no epochs of its own; start → best: its best
    ingredient's validation, then its own)."""
    best, start = st.get("best_valid_NDCG10"), st.get("init_valid_NDCG10")
    valid = "" if best is None else f"{best:.4f}" if start is None else f"{start:.4f} → {best:.4f}"
    if _is_soup(st):
        return f"| {i} | `{st['command']}` | – | – | {valid} | {st.get('soup_minutes', 0):.0f} | {_soup_text(st)} |"
    return (f"| {i} | `{st.get('command', '')}` | {len(st.get('epochs', []))} | {st.get('best_epoch', '?')} | "
            f"{valid} | {st.get('train_minutes', 0):.0f} | {st.get('stopped', '')} |")


def _soup_text(st: dict) -> str:
    """``greedy soup of 4 of 8 checkpoints``."""
    kept = sum(1 for r in st["ingredients"] if r["in_soup"])
    return f"{st['method']} soup of {kept} of {len(st['ingredients'])} checkpoints"


def _stages_markdown(stages: list[dict]) -> str:
    """Card lines for a multi-stage training history (empty for a single stage). A soup stage (``zoo.soup``) is
    preceded by its ingredients' own stages and followed by a table of the ingredients."""
    if len(stages) < 2 and not any(_is_soup(st) for st in stages):
        return ""
    rows, trained, ingredient_tables, items = [], [], [], []

    def add(st: dict) -> None:
        trained.append(st)
        rows.append(_stage_row(len(rows) + 1, st))
        if st.get("init_items"):                    # data of other items than its checkpoint's (zoo.train)
            items.append(f"- stage {len(rows)}, item vocabulary: {st['init_items']['note']}\n")

    for st in stages:
        if not _is_soup(st):
            add(st)
            continue
        first = len(rows) + 1                       # the ingredients' own stages are numbered from here
        for own in st["ingredient_stages"]:
            add(own)
        rows.append(_stage_row(len(rows) + 1, st))
        lines = [f"| `{r['path']}` | {r['valid_NDCG@10']:.4f} | {'yes' if r['in_soup'] else 'no'} | "
                 + (", ".join(str(first + i) for i in r["stages"]) if r["stages"] else f"none after stage {first - 1}")
                 + " |" for r in st["ingredients"]]
        ingredient_tables.append(
            f"\nIngredients of stage {len(rows)} ({_soup_text(st)}, scored by validation NDCG@10 alone, best first; "
            "the soup averages the weights of those marked yes):\n\n| checkpoint | valid NDCG@10 | in the soup | "
            "its own stages |\n|---|---|---|---|\n" + "\n".join(lines) + "\n")
    total_ep = sum(len(st.get("epochs", [])) for st in trained)
    total_min = sum(st.get("train_minutes", 0) for st in trained)
    how = ("each continuing from the best checkpoint of the one before (`--init-from`)" if not ingredient_tables else
           "each continuing from the checkpoint its `--init-from` names; a `zoo.soup` stage averages the weights of "
           "checkpoints of this lineage (Wortsman et al., 2022, *Model soups*), chosen on validation")
    return (f"\n### Training stages\n\nThis checkpoint was trained in stages, {how}: {total_ep} epochs, "
            f"{total_min:.0f} minutes in all. The full logs (per-epoch loss and validation) are in "
            f"`{STAGES_FILE}`.\n\n| stage | command | epochs | best epoch | "
            "valid NDCG@10 (start → best) | minutes | stopped |\n|---|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n" + ("\n" + "".join(items) if items else "") + "".join(ingredient_tables))


def _visible_entries(folder: str | os.PathLike) -> list[str]:
    """The names in ``folder`` that are its content: hidden entries (interrupted writers' stages) left out."""
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))


def _card_stages(card_dir: str | os.PathLike) -> list | None:
    """The stages of the card in ``card_dir`` (its ``training_log.json``), or ``None`` when it has none readable."""
    try:
        stages = read_json(pathlib.Path(card_dir) / STAGES_FILE).get("stages")
    except (OSError, ValueError, AttributeError):          # JSONReadError: not UTF-8 JSON, [[[...]]]
        return None
    return stages if isinstance(stages, list) and stages else None


def _foreign_files(out_dir: str | os.PathLike, run_dir: str | os.PathLike) -> list[str]:
    """What in ``out_dir`` is plainly not a card of the run in ``run_dir``: a ``README.md`` without a model card's
    front matter (hand-written notes), a ``config.json`` of another model type (another model's card)."""
    found = []
    readme = pathlib.Path(out_dir) / "README.md"
    try:
        if readme.is_file() and not readme.read_text(encoding="utf-8").startswith("---\n"):
            found.append("its README.md is not a model card (no front matter)")
    except (OSError, UnicodeDecodeError):
        found.append("its README.md cannot be read as a model card")

    def model_type(folder) -> str | None:
        try:
            return read_json(pathlib.Path(folder) / "config.json").get("model_type")
        except (OSError, ValueError, AttributeError):      # JSONReadError: not UTF-8 JSON, [[[...]]]
            return None
    there, ours = model_type(out_dir), model_type(run_dir)
    if there and ours and there != ours:
        found.append(f"its config.json is a {there} model, the run's a {ours}")
    return found


def check_card_out(out_dir: str | os.PathLike, run_dir: str | os.PathLike, stages: list[dict],
                   overwrite: bool = False) -> None:
    """Refuse, before any measuring, to write a card into a folder that holds files the card would replace unasked
    (``zoo.train``, ``zoo.convert`` and ``zoo.soup`` refuse a non-empty ``--out`` likewise): ``ValueError`` unless
    ``overwrite``, the folder is empty or new, it is the run's own folder (re-measured in place), or it holds the card
    this run continues (its ``training_log.json`` stages are where the run's ``stages`` start: a later stage or a soup
    of that card, whose history the new card keeps). A mistyped ``--name`` that matches another card, or an ``--out``
    holding hand-written notes or another model, is named instead of replaced. ``overwrite`` replaces a card's files
    only: a folder that also holds files no card writes (:func:`extra_files`) is refused even then (they would stay
    beside the new card, and ``zoo.hub push`` would publish them). The refusals are :class:`OutFolderError`."""
    if not os.path.isdir(out_dir) or os.path.samefile(run_dir, out_dir):
        return
    names = _visible_entries(out_dir)
    if not names:
        return
    card = _card_stages(out_dir)
    if card and stages[:len(card)] == card:
        return
    if overwrite:
        extra = extra_files(out_dir)
        if extra:
            raise OutFolderError(f"--out {out_dir} holds files a card does not write ({_listed(extra)}): --overwrite "
                                 "replaces a card's files only, and these would stay beside the new card (zoo.hub "
                                 f"push would publish them); move them out of {out_dir}, or choose another --out")
        return
    why = _foreign_files(out_dir, run_dir) or [
        "it holds a card of another history (the run does not continue its stages)" if card else
        "it is not a card this run continues"]
    raise OutFolderError(f"--out {out_dir} already holds files ({_listed(names)}); {'; '.join(why)}: choose another "
                         "--out (or --name), or pass --overwrite to write the card over them")


def default_card_out(name: str) -> str:
    """Where ``zoo.hub card`` writes a card without ``--out``: ``hub_cards/<name>`` under the current directory (from
    a checkout's root, the bundled card's own folder; from anywhere else, never the package's cards)."""
    return os.path.join("hub_cards", name)


def is_bundled_card(out_dir: str | os.PathLike, name: str) -> bool:
    """Whether ``out_dir`` is the folder that ``ssm-rec-zoo/<name>`` resolves to offline (``<name>`` in a folder of
    :func:`zoo.pretrained.bundled_dirs`): a card of the project's own, which may say so; a user's card, or a copy of a
    bundled card elsewhere, is not."""
    from .pretrained import bundled_dirs

    if os.path.basename(os.path.normpath(os.fspath(out_dir))) != name:
        return False
    parent = os.path.realpath(os.path.dirname(os.path.abspath(out_dir)))
    return any(os.path.realpath(d) == parent for d in bundled_dirs())


class _Shown:
    """A text stream that writes to ``stream`` with ``staged`` replaced by ``final``: the paths a writer prints inside
    a staged folder, shown where they will be once the folder is renamed in."""

    def __init__(self, stream, staged: str, final: str):
        self.stream, self.staged, self.final = stream, staged, final

    def write(self, text: str) -> int:
        self.stream.write(text.replace(self.staged, self.final))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, attr):
        return getattr(self.stream, attr)


def build_card_folder(run_dir: str, name: str, data: str, out_dir: str | None = None, exclude_history: bool = False,
                      description: str | None = None, dataset_type: str | None = None,
                      dataset_name: str | None = None, notes: str = "", keep_notes: bool = False,
                      overwrite: bool = False, repo_id: str | None = None, progress: bool = True,
                      batch_size: int = 256, device=None) -> dict:
    """Evaluate a training run's best checkpoint on the test split, then copy it into ``out_dir`` (default
    ``./hub_cards/<name>``, :func:`default_card_out`) and write its card, re-exporting the folder's ONNX graphs from
    the new weights. Returns the measured metrics (``progress``: the evaluation's progress bar, on stderr). The new
    card is written into a staged copy of the folder and swapped in whole: when any step fails (the evaluation, a
    graph that no longer verifies) the folder is left as it was. ``batch_size`` and ``device`` are the evaluation's
    (:func:`zoo.evaluate.evaluate_model`: users per forward pass; where it runs, a ``str`` or ``torch.device``,
    default the model's device, the CPU).
    ``eval_results.json["weights_sha256"]`` is the SHA-256 of the ``model.safetensors`` measured (the run's, which
    the card copies: a copy that differs is a ``RuntimeError``), which ``push`` checks against the weights it
    uploads (:func:`card_weights_problems`).

    ``run_dir`` may also be a ``zoo.soup`` folder (the card lists its ingredients and their stages) or a card folder
    (its ``training_log.json`` holds every stage); given as its own ``out_dir``
    the card is re-measured and re-written in place (same weights: new card sections, intervals, re-verified ONNX
    graphs). The card's commands name the data as given (``data``, a path that works from where the card was made)
    and the model as ``ssm-rec-zoo/<name>`` only for a card of the project's own (:func:`is_bundled_card`); any
    other card names ``repo_id`` (the Hub id it will be published as), else ``out_dir``; its Data section says where
    that data comes from and what a reader passes in its place (:func:`card_data_texts`). A card replaced in its
    folder keeps the protocol it was measured with (``exclude_history`` must match).
    ``dataset_type``/``dataset_name`` name the data in the card; by default a recognised benchmark names itself
    (:data:`BENCHMARKS`, by its statistics), other data keeps the names of the card being replaced, else is named
    by its file. The card compares with the published numbers only when the data is the benchmark they were
    measured on (:data:`PUBLISHED_ON`), whatever its names. An ``out_dir`` that holds files other than the card this
    run continues is refused before any measuring unless ``overwrite`` (:func:`check_card_out`).

    When the model's published reference was measured under the other protocol (BERT4Rec: LRURec's history-masked
    numbers), the model is evaluated under that protocol too; ``eval_results.json["reference_protocol"]`` keeps
    those numbers and the command that reproduces them, and the card compares like with like."""
    from transformers import AutoModel

    from .data import leave_one_out, load_dataset
    from .evaluate import BASELINES, align_with_model, evaluate_baseline, evaluate_model
    from .metrics import default_ks
    from .metrics import bootstrap_interval

    out_dir = os.fspath(out_dir or default_card_out(name))
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run folder {run_dir} not found (a `python -m zoo.train --out` folder)")
    history = next((f for f in ("train_log.json", SOUP_LOG, STAGES_FILE) if os.path.exists(os.path.join(run_dir, f))),
                   "train_log.json")
    missing = [f for f in ("config.json", "model.safetensors", history) if not os.path.exists(os.path.join(run_dir, f))]
    if missing:
        raise FileNotFoundError(f"{run_dir} is neither a finished zoo.train run, a zoo.soup folder nor a card folder: "
                                f"missing {missing}")
    try:
        check_outputs({"--out": out_dir}, folders=True)        # a file there, or a place that cannot be written
    except ValueError as e:
        raise OutFolderError(str(e)) from None
    if history == "train_log.json":
        check_finished(run_dir)                                 # an interrupted run: not its best checkpoint yet
    check_card_vocabulary(run_dir)                              # before any measuring: a card ships item_vocab.json
    in_place = os.path.isdir(out_dir) and os.path.samefile(run_dir, out_dir)
    stages = training_stages(run_dir)
    check_card_out(out_dir, run_dir, stages, overwrite)       # another card, notes, another model: not unasked
    extra = extra_files(out_dir) if os.path.isdir(out_dir) else []
    if extra:                   # the user's own files in the card this run continues: kept, but push refuses them
        print(f"[zoo.hub] note: {out_dir} holds files a card does not write ({_listed(extra)}): they stay beside the "
              "card, and zoo.hub push refuses the folder unless --allow-extra", file=sys.stderr, flush=True)
    _check_same_protocol(out_dir, exclude_history)
    replaced = _card_dataset(out_dir)       # the replaced card's names: unreadable metadata refused before measuring
    kept_notes = card_notes(out_dir) if keep_notes else ""     # refused (no markers) before any measuring
    exports = existing_onnx_exports(out_dir)            # graphs of the weights about to be replaced: re-exported below
    if exports:                                         # with what re-exports them, or refused before any measuring
        from export.deps import require

        for module in ("onnx", "onnxruntime"):
            require(module, f"re-exporting the ONNX graphs of {out_dir}")
    # everything is measured on the run's checkpoint first: an error (wrong data, a vocabulary that does not fit)
    # leaves an existing card folder as it was
    measured_sha = weights_sha256(run_dir)  # the weights the numbers are measured on, recorded in eval_results.json
    with json_depth_guard(os.path.join(run_dir, "config.json")):   # [[[...]]] in transformers' reader: one line
        model = AutoModel.from_pretrained(run_dir)
    check_leave_one_out(stages, run_dir)
    log = stages[-1]                        # the run's own train_log.json, a soup, or a card folder's last stage
    data_options = run_data_options(log)    # the sequences it was trained on: same k-core, same order of ties
    loaded = load_dataset(data, **data_options)
    data_file = os.path.basename(data)
    benchmark = source = recognise_benchmark(loaded)      # source: what the file is, whatever is left out below
    dataset_type, dataset_name = _dataset_names(dataset_type, dataset_name, benchmark, replaced, data_file)
    # a run that left out the interactions of items its checkpoint lacked (--init-from X --unknown-items drop) is
    # measured on the data without them too, and its card says how many
    unknown_items = run_unknown_items(log)
    ds, _ = align_with_model(loaded, model, unknown=unknown_items)
    dropped = None
    if ds.n_interactions != loaded.n_interactions:
        dropped = {"items": sum(1 for x in loaded.vocab.items if x not in model.item_vocab),
                   "interactions": loaded.n_interactions - ds.n_interactions, "users": loaded.n_users - ds.n_users}
        benchmark = None                    # not the whole benchmark: no comparison with its published numbers
    split = leave_one_out(ds)
    test = split.test
    metrics, ranks = evaluate_model(model, test, ks=default_ks(model.config.n_items - 1),
                                    exclude_history=exclude_history, return_ranks=True, progress=progress,
                                    batch_size=batch_size, device=device)
    intervals = bootstrap_interval(ranks, ks=(10,))

    bundled = is_bundled_card(out_dir, name)
    model_ref = f"{HUB_ORG}/{name}" if bundled else (repo_id or out_dir)   # what the card's commands load

    def evaluate_command(masked: bool, source: str = shell_option("--model", model_ref)) -> str:
        # the data as given (a bare file name fails from anywhere but its folder; the CLIs read no data folder)
        return f"python -m zoo.evaluate {source} {shell_option('--data', data)}" + data_flags(data_options) + (
            " --unknown-items drop" if unknown_items == "drop" and not source.startswith("--baseline") else "") + (
            " --exclude-history" if masked else "")

    baselines = {kind: {"metrics": evaluate_baseline(kind, split.train, test, int(model.config.n_items), ks=(10,),
                                                     exclude_history=exclude_history, any_ks=True),
                        "command": evaluate_command(exclude_history, f"--baseline {kind}")}
                 for kind in ("markov", "pop") if kind in BASELINES}

    protocol = {"name": PROTOCOL_NAMES[exclude_history],
                "description": ("leave-one-out by time (last item = test, second-to-last = validation), "
                                + ("items of the input window masked before ranking (LRURec's protocol)."
                                   if exclude_history else "history items not masked (RecBole's protocol).")),
                "command": evaluate_command(exclude_history), "history_masked": exclude_history}
    validated = validation_masked(log)
    if validated is not None and validated != exclude_history:   # allowed, but the card and the console say so
        chosen = (f"The checkpoint was chosen by validation NDCG@10 under the {PROTOCOL_NAMES[validated]}, not the "
                  "protocol of these numbers.")
        protocol["description"] += " " + chosen
        print(f"[zoo.hub] note: {chosen} (`zoo.train{' --exclude-history' if exclude_history else ''}` validates "
              "under the card's protocol)", flush=True)
    ref = PUBLISHED.get(model.config.model_type)
    reference = None
    if ref and benchmark == PUBLISHED_ON and bool(ref["history_masked"]) != exclude_history:
        # the published number was measured under the other protocol: measure this model under it too
        masked = bool(ref["history_masked"])
        reference = {"exclude_history": masked, "command": evaluate_command(masked),
                     "metrics": evaluate_model(model, test, ks=default_ks(model.config.n_items - 1),
                                               exclude_history=masked, progress=progress, batch_size=batch_size,
                                               device=device)}
    dataset = {"name": dataset_name, "type": dataset_type, "users": len(ds.sequences), "benchmark": benchmark,
               "source": source, "path": data, "timed": loaded.timestamps is not None, "options": data_options,
               "item_id_type": loaded.vocab.id_type,
               "description": _with_dropped(description or _data_description(data_file, loaded, ds), dropped)}
    notes = "\n\n".join(n for n in (kept_notes, notes.strip()) if n)   # the replaced card's notes first
    # the new card is written into a staged copy of the folder and swapped in whole: a failure on the way (an ONNX
    # graph that no longer verifies, a full disk) leaves the card folder as it was
    try:
        with written_whole_folder(out_dir, copy_existing=True) as stage:
            for f in () if in_place else ("config.json", "model.safetensors", "item_vocab.json"):
                shutil.copyfile(os.path.join(run_dir, f), os.path.join(stage, f))
            if weights_sha256(stage) != measured_sha:       # replaced while it was measured: not these numbers'
                raise RuntimeError(f"{os.path.join(run_dir, 'model.safetensors')} changed while the card was being "
                                   "measured: run the card again once nothing writes it")
            make_card(stage, name, metrics, protocol, dataset, log, repo_id=None if bundled else repo_id,
                      extra_sections=_stages_markdown(stages) + _marked_notes(notes),
                      reference_metrics=reference, intervals=intervals, baselines=baselines, bundled=bundled,
                      load_from=out_dir)
            # strict JSON (jq refuses NaN): a non-finite number is a ValueError naming it, and no card is written
            with written_whole(os.path.join(stage, STAGES_FILE)) as f:
                f.write(strict_json({"stages": stages}, indent=1))
            with written_whole(os.path.join(stage, "eval_results.json")) as f:
                f.write(strict_json({"metrics": metrics, "intervals_95": {k: list(v) for k, v in intervals.items()},
                                     "protocol": protocol, "data_file": data_file, "data_options": data_options,
                                     "dataset": ds.stats(),     # counts as read, the k-core applied, what it removed
                                     "unknown_items": unknown_items, **({"dropped": dropped} if dropped else {}),
                                     "exclude_history": exclude_history, "baselines": baselines,
                                     **({"reference_protocol": reference} if reference else {}),
                                     "weights_sha256": measured_sha}, indent=1))
            for args in exports:
                refresh_onnx_export(stage, args, data, data_options.get("columns"), shown_as=out_dir)
    except RuntimeError as e:                   # a VerificationError stays the cause (exit 3)
        raise RuntimeError(f"{e}; {out_dir} was left as it was") from e
    return metrics


#: what ``zoo.train`` writes into a run's ``train_log.json`` when the run ends (an interrupted run's log lacks them)
FINISHED_KEYS = ("stopped", "best_epoch", "test")


def check_finished(run_dir: str | os.PathLike) -> None:
    """``ValueError`` for a ``zoo.train`` run that did not finish (interrupted: its ``train_log.json`` lacks
    :data:`FINISHED_KEYS`): its folder holds the best weights so far, not the run's, and no test measurement. The
    message gives the command that finishes it (``--resume``), or says it cannot be resumed."""
    from .train_state import RESUME_DIR, resume_dir

    path = os.path.join(run_dir, "train_log.json")
    try:
        log = read_json(path)
    except (OSError, ValueError) as e:                      # JSONReadError: not UTF-8 JSON, [[[...]]]
        raise ValueError(cannot("the training log", path, e.reason if isinstance(e, JSONReadError) else e,
                                "read")) from e
    if not isinstance(log, dict):
        raise ValueError(f"{path} is not a zoo.train log (a JSON object), got a JSON {type(log).__name__}")
    missing = [k for k in FINISHED_KEYS if k not in log]
    if not missing:
        return
    command = str(log.get("command") or "python -m zoo.train ... " + shell_option("--out", str(run_dir)))
    how = (f"finish it with `{command}{'' if '--resume' in command.split() else ' --resume'}` (from the directory it "
           "was started in), then card it" if resume_dir(run_dir) else
           f"it holds no resume state ({RESUME_DIR}/) to continue from: train it again")
    raise ValueError(f"{run_dir} is an unfinished zoo.train run (interrupted: its train_log.json, with "
                     f"{len(log.get('epochs') or [])} epochs, has no {', '.join(missing)}): {how}")


def check_card_vocabulary(run_dir: str | os.PathLike) -> None:
    """``ValueError`` for a checkpoint saved without an item vocabulary (its config's ``item_vocab_file`` null, or
    no ``item_vocab.json``): a card folder holds one (:data:`CARD_FILES`; its ids are what the card's model ranks)."""
    path = os.path.join(run_dir, "config.json")
    try:
        recorded = read_json(path).get("item_vocab_file", "unrecorded")
    except (OSError, ValueError, AttributeError) as e:      # JSONReadError: not UTF-8 JSON, [[[...]]]
        raise ValueError(cannot("the model config", path, e.reason if isinstance(e, JSONReadError) else e,
                                "read")) from e
    if recorded is None:
        raise ValueError(f"{run_dir} was saved without an item vocabulary (config.json: item_vocab_file null): a card "
                         "folder ships item_vocab.json; save the model after model.set_item_vocab(dataset.vocab)")
    if not os.path.exists(os.path.join(run_dir, "item_vocab.json")):
        raise ValueError(f"{run_dir}/item_vocab.json is missing" + (
            "" if recorded == "unrecorded" else f" (config.json records item_vocab_file {recorded!r})")
            + ": a card folder ships the run's item vocabulary")


def run_data_options(log: dict) -> dict:
    """The :func:`zoo.data.load_dataset` options (``kcore``, ``time_ties``, ``columns``) a run's checkpoint was trained
    with, from its log's ``data_options``; a log from before they were recorded ran with the defaults (``"auto"``,
    ``"file"``, the usual column names)."""
    from .data import load_options

    given = log.get("data_options") or {}
    return load_options(given.get("kcore", "auto"), given.get("time_ties", "file"), given.get("columns"))


def checkpoint_log(folder: str | os.PathLike) -> dict | None:
    """The log of the stage that made the checkpoint in ``folder``: a ``zoo.train`` run's ``train_log.json``, a
    ``zoo.soup`` folder's soup log, or a card folder's last stage (its ``training_log.json``); None for a folder
    without one (a converted or hand-saved checkpoint, a Hub id that is not a folder) or a log that cannot be read."""
    folder = pathlib.Path(folder)
    try:
        for name in ("train_log.json", SOUP_LOG):
            if (folder / name).is_file():
                log = read_json(folder / name)
                return log if isinstance(log, dict) else None
        if (folder / STAGES_FILE).is_file():
            stages = read_json(folder / STAGES_FILE).get("stages")
            return stages[-1] if stages and isinstance(stages[-1], dict) else None
    except (OSError, ValueError, AttributeError):          # JSONReadError: not UTF-8 JSON, [[[...]]]
        return None
    return None


def run_unknown_items(log: dict) -> str:
    """How the items of the data that the model's vocabulary lacks are treated when the run's checkpoint is measured:
    ``"drop"`` (their interactions left out) for a run that dropped them from its training data (``zoo.train
    --init-from X --unknown-items drop``: its log's ``init_items``), else ``"error"`` (every item must be known)."""
    return "drop" if (log.get("init_items") or {}).get("unknown_items") == "drop" else "error"


def _data_description(data_file: str, loaded, ds) -> str:
    """The card's data line by default: the file's counts as read and what the run's k-core filter left of them
    (``loaded``: :func:`zoo.data.load_dataset`'s dataset, :meth:`~zoo.data.SequenceDataset.load_note`), e.g.
    ``"`shop.csv`: 19,747 rows of 200 users and 1,420 items; after the 5-core filter (1,115 rows, 0 users and 540
    items removed) 18,632 interactions, 200 users, 880 items"``; unfiltered data keeps the counts of ``ds`` (the
    sequences measured) as ``"`f.csv`: U users, I items, N interactions"``. Rows that repeat an earlier (user, item,
    time) row are counted after either (kept, as RecBole keeps them)."""
    note = loaded.load_note()
    if loaded.kcore and note:
        return f"`{data_file}`: {note}"
    return (f"`{data_file}`: {ds.n_users:,} users, {ds.n_items:,} items, {ds.n_interactions:,} interactions"
            + (f"; {note}" if note else ""))


def _with_dropped(description: str, dropped: dict | None) -> str:
    """The card's data line: ``description``, then what was left out as the run left it out (``dropped``: counts of
    items, interactions and users left with none; None when nothing was)."""
    if not dropped:
        return description

    def counted(key: str, word: str) -> str:        # _count's words with the card's thousands separator
        return f"{dropped[key]:,}{_count(dropped[key], word)[len(str(dropped[key])):]}"

    return (f"{description.rstrip().rstrip('.')}. As in training (`--unknown-items drop`), the interactions of the "
            f"{counted('items', 'item')} the model's item vocabulary lacks were dropped before the split: "
            f"{counted('interactions', 'interaction')} ({counted('users', 'user')} left with none). The numbers of "
            "this card are on the data without them (`zoo.evaluate --unknown-items drop` drops them too; "
            "`zoo.evaluate --baseline`, which has no vocabulary to drop them by, measures the whole file).")


def data_flags(options: dict) -> str:
    """The ``zoo.evaluate`` flags that load the data as ``options`` (:func:`run_data_options`) say: ``""`` for the
    defaults."""
    kcore, ties, columns = options.get("kcore", "auto"), options.get("time_ties", "file"), options.get("columns")
    return ("" if kcore == "auto" else f" --kcore {'none' if kcore is None else kcore}") + (
        "" if ties == "file" else f" --time-ties {ties}") + "".join(" " + shlex.quote(w) for w in columns_argv(columns))


def _dataset_names(given_type: str | None, given_name: str | None, benchmark: str | None, replaced: dict,
                   data_file: str) -> tuple[str, str]:
    """``(type, name)`` of a card's dataset: each as given, else the recognised benchmark's (:data:`BENCHMARKS`),
    else the replaced card's (``replaced``: :func:`_card_dataset`), else the data file's (its name up to the first
    dot, and the file name), never another dataset's."""
    if benchmark is not None:
        _, known_type, known_name = BENCHMARKS[benchmark]
    else:
        known_type = replaced.get("type") or data_file.split(".")[0]
        known_name = replaced.get("name") or data_file
    return given_type or known_type, given_name or known_name


def _card_dataset(card_dir: str | os.PathLike) -> dict:
    """``{"name", "type"}`` of the dataset in the model-index of the card in ``card_dir`` (``{}`` when there is none;
    an entry that is not text is left out), so that a card re-written into its folder keeps them without repeating
    ``--dataset-name``/``--dataset-type``. A README that cannot be read (not UTF-8), whose metadata block is not a
    YAML mapping (:func:`_front_matter`) or whose metadata huggingface_hub cannot read (a malformed model-index) is
    a one-line ``ValueError`` naming it, in :func:`card_metadata`'s words (``zoo.hub push``'s)."""
    from huggingface_hub import ModelCard

    readme = pathlib.Path(card_dir) / "README.md"
    if not readme.is_file():
        return {}
    try:
        with open(readme, encoding="utf-8", newline="") as f:         # as ModelCard.load reads it
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(cannot("the card", readme, e, "read")) from None
    try:
        _front_matter(text)                     # the block is YAML, and a mapping: else a ValueError saying which
    except ValueError as e:
        raise ValueError(f"{readme}: {e}") from None
    try:
        results = ModelCard(text).data.eval_results or []   # the model-index parsed strictly, as push reads it
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"{readme}: huggingface_hub cannot read its metadata ({_one_line(e)})") from None
    found = {"name": results[0].dataset_name, "type": results[0].dataset_type} if results else {}
    return {k: v for k, v in found.items() if isinstance(v, str)}


def validation_masked(log: dict) -> bool | None:
    """Whether the run (``zoo.train``'s log) or soup chose its checkpoint by validation under the history-masked
    protocol; None when its log does not say (written before the entry existed)."""
    protocol = log.get("protocol")
    if isinstance(protocol, dict) and "history_masked" in protocol:
        return bool(protocol["history_masked"])
    if isinstance(protocol, str):                                      # zoo.soup's "recbole" / "lrurec (...)"
        return protocol.startswith("lrurec")
    return None


def _check_same_protocol(card_dir: str | os.PathLike, exclude_history: bool) -> None:
    """A card replaced in its folder (in place, or by a new stage) keeps its protocol: ``ValueError`` when
    ``--exclude-history`` differs from the one its ``eval_results.json`` was measured with (a forgotten flag would
    otherwise switch the card's numbers to the other protocol); a ``ValueError`` naming the file when it cannot be
    read (:func:`read_json_object`)."""
    path = pathlib.Path(card_dir) / "eval_results.json"
    if not path.is_file():
        return
    was = bool(read_json_object(path, "the card's eval results").get("exclude_history", False))
    if was != exclude_history:
        raise ValueError(f"{card_dir} was measured {'with' if was else 'without'} --exclude-history "
                         f"({PROTOCOL_NAMES[was]}); a card replaced in its folder keeps its protocol: "
                         f"{'add' if was else 'drop'} --exclude-history, or write the card to a new folder")


def existing_onnx_exports(card_dir: str | os.PathLike) -> list[list[str]]:
    """``python -m export.onnx`` arguments that reproduce the ONNX graphs already in a card folder.

    A card folder may hold ``onnx/`` (step graph) and ``onnx-window/`` exported from its weights; when the weights are
    replaced (a new training stage carded into the same folder) those graphs would silently serve the old model, and
    the regenerated README would lose their section. Read from each graph's ``state_spec.json``: kind, top-k,
    precision, time input, whether all scores are an output and whether the history is excluded.
    """
    found = []
    for rel in ONNX_FOLDERS:
        spec_path = pathlib.Path(card_dir) / rel / "state_spec.json"
        if not spec_path.exists():
            continue
        spec = read_json(spec_path, f"corrupt {spec_path}")       # a corrupt spec, [[[...]]] too: one line naming it
        args = ["--kind", spec["kind"], "--topk", str(spec["topk"])]
        if spec.get("precision") == "fp16":
            args.append("--fp16")
        if spec.get("time_input"):
            args += ["--time-input", spec["time_input"]]
        if any(o["name"] == "scores" for o in spec["outputs"]):
            args.append("--scores")
        if spec.get("exclude_seen"):
            args.append("--exclude-seen")
        found.append(args)
    return found


def refresh_onnx_export(card_dir: str | os.PathLike, args: list[str], data: str | None = None,
                        columns: dict | None = None, shown_as: str | os.PathLike | None = None) -> None:
    """Re-export (and verify) one ONNX graph of a card folder from its current weights (``data``, read with
    ``columns``: real histories for the verification); raises when that fails. ``shown_as``: the folder that
    ``card_dir`` (a staged copy) becomes, named instead of the stage in what is printed."""
    from export.onnx import main as onnx_main

    staged, final = str(card_dir), str(shown_as or card_dir)
    # a path is joined to its option (``--data=-x.csv``): argparse reads a separate value that begins with '-' as an
    # option; the words of ``args`` (:func:`existing_onnx_exports`: flags, ``--kind step``, ``--topk 10``) never do
    before = [("--model", staged), ("--card-dir", staged)]
    after = [("--data", os.fspath(data))] if data else []
    argv = [f"{o}={v}" for o, v in before] + list(args) + [f"{o}={v}" for o, v in after] + columns_argv(columns)
    shown = [shell_option(o, v.replace(staged, final)) for o, v in before] + [shlex.quote(w) for w in args] + \
        [shell_option(o, v.replace(staged, final)) for o, v in after] + [shlex.quote(w) for w in columns_argv(columns)]
    print("[zoo.hub] re-exporting (and verifying) the card's ONNX graph from its weights"
          + (f" (into a staged copy of {final}, renamed to it once the whole card is written)" if shown_as else "")
          + f": python -m export.onnx {' '.join(shown)}", flush=True)
    with contextlib.redirect_stdout(_Shown(sys.stdout, staged, final)), \
            contextlib.redirect_stderr(_Shown(sys.stderr, staged, final)):
        rc = onnx_main(argv)
    if rc != 0:
        from export.fsutil import EXIT_VERIFY_FAILED
        from export.onnx import VerificationError

        raise (VerificationError if rc == EXIT_VERIFY_FAILED else RuntimeError)(
            f"re-export of the ONNX graph {args} from the new weights failed (exit {rc}; its report above says why)")


def card_summary(folder: str | os.PathLike) -> list[str]:
    """``[model type, dataset name, protocol, HR@10, NDCG@10]`` of a card folder, as text (``-`` for what the folder
    does not say: a model folder without a measured card, an entry that is not text or a number). A ``config.json``
    or ``eval_results.json`` that cannot be read (not UTF-8, not JSON, ``[[[...]]]``, no JSON object) is a one-line
    ``ValueError`` naming it (:func:`read_json_object`), and so is a ``README.md`` whose metadata cannot be read
    (:func:`_card_dataset`)."""
    folder = pathlib.Path(folder)
    model_type = read_json_object(folder / "config.json", "the model config").get("model_type")
    results = folder / "eval_results.json"
    info = read_json_object(results, "the card's eval results") if results.is_file() else {}
    metrics = info.get("metrics") if isinstance(info.get("metrics"), dict) else {}
    protocol = info.get("protocol").get("name") if isinstance(info.get("protocol"), dict) else None

    def number(v) -> str:
        return f"{v:.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"
    return [model_type if isinstance(model_type, str) else "-", _card_dataset(folder).get("name") or "-",
            protocol if isinstance(protocol, str) else "-", *(number(metrics.get(k)) for k in ("HR@10", "NDCG@10"))]


# --------------------------------------------------------------------------------------------------- push
def _hidden_except(keep: str) -> tuple[str, ...]:
    """``fnmatch`` patterns, as huggingface_hub's ``filter_repo_objects`` applies them (``*`` matches ``/`` too), of
    every path whose first component is hidden (begins with ``.``) except the paths under the hidden folder ``keep``:
    for each proper prefix of ``keep + "/"``, the path that is that prefix, and those that leave ``keep + "/"`` right
    after it (``.[!e]*``, ``.e[!v]*``, ... for ``.eval_results``)."""
    path = keep + "/"
    return tuple(pat for i in range(1, len(path)) for pat in (path[:i], f"{path[:i]}[!{path[i]}]*"))


#: what ``push`` never uploads: hidden files and folders, at the top and below (huggingface_hub adds its own defaults),
#: except the Hub's evaluation results at the top (:data:`EVAL_RESULTS_DIR`)
PUSH_IGNORE = (*_hidden_except(EVAL_RESULTS_DIR), "**/.*")
#: the repo files ``push`` owns (paths as in :data:`CARD_CONTENT`, each pattern matching at its own depth): the card's
#: files, and the weight files a save writes instead of ``model.safetensors`` (a sharded index and its shards, which
#: a transformers or ``model.push_to_hub`` upload may have left). An owned file the folder does not upload is deleted
#: in the push's commit (:func:`stale_repo_files`); a file the zoo does not own (a user's notes or images uploaded on
#: the Hub, ``.gitattributes``) is never deleted
PUSH_OWNED = (*CARD_CONTENT, "model.safetensors.index.json", "model-*-of-*.safetensors")


def _owned_path(rel: str) -> bool:
    """Whether the repo path ``rel`` is a file ``push`` owns (:data:`PUSH_OWNED`, each pattern at its own depth)."""
    import fnmatch

    return any(rel.count("/") == pat.count("/") and fnmatch.fnmatchcase(rel, pat) for pat in PUSH_OWNED)


def uploaded_files(folder: str | os.PathLike) -> list[str]:
    """The repo paths (``/``-separated, sorted) ``push`` uploads from ``folder``: every file but those
    :data:`PUSH_IGNORE` leaves out (which covers huggingface_hub's own defaults, ``.git`` and ``.cache``: hidden), as
    ``upload_folder`` selects them."""
    from huggingface_hub.utils import filter_repo_objects

    folder = os.fspath(folder)
    found = [os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
             for root, _, files in os.walk(folder) for name in files]
    return sorted(filter_repo_objects(found, ignore_patterns=list(PUSH_IGNORE)))


def stale_repo_files(remote: Sequence[str], uploaded: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(deleted, kept)`` of the repo's files ``remote`` that a push uploading ``uploaded`` does not replace:
    ``deleted`` the files the zoo owns (:data:`PUSH_OWNED`: an earlier push's ``item_vocab.json``, ONNX graph, soup
    log, weight shards -- left, the repo would serve them beside the new weights), ``kept`` the others but
    ``.gitattributes`` (a user's files: never deleted). Both sorted."""
    new = set(uploaded)
    left = sorted(f for f in set(remote) if f not in new and f != ".gitattributes")
    return [f for f in left if _owned_path(f)], [f for f in left if not _owned_path(f)]


def _fnmatch_literal(path: str) -> str:
    """``path`` as an ``fnmatch`` pattern that matches itself alone (``*``, ``?``, ``[`` each in brackets)."""
    return re.sub(r"([*?\[])", r"[\1]", path)


#: the README's statement of the catalogue its numbers were ranked over (:func:`make_card`)
_RANKED_ITEMS = re.compile(r"Full ranking over all ([\d,]+) items")
#: the argument of a ``from_pretrained(...)`` call in a card's code: a string literal (:func:`card_loading_line`
#: writes a JSON string)
_LOADS = re.compile(r"""from_pretrained\(\s*("(?:[^"\\]|\\.)*"|'[^'\\]*')""")
#: the graph folder the README's ONNX section describes (``export.onnx --card-dir``'s section, between its markers)
_ONNX_SECTION = re.compile(r"<!-- onnx-export:begin -->\s*## ONNX export\s*`([^`\s/]+)/[^`\s/]+`")
#: the card's first Python code block: its loading example (:func:`make_card`; notes and the ONNX section come after)
_FIRST_CODE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
#: the ``python -m zoo.evaluate`` commands that measured the card (:func:`build_card_folder`: its protocol's and,
#: when the published reference's protocol differs, that one's), between backticks; not the commands of its notes
_EVALUATE = re.compile(r"(?:Measured by|compared after the same measurement:) `(python -m zoo\.evaluate [^`]*)`")


class CardMismatchError(ValueError):
    """``zoo.hub push`` of a folder whose parts do not describe the weights it holds (a README, ``eval_results.json``,
    ``training_log.json`` or ONNX graph of other weights) or whose card the Hub's own reader cannot read: nothing is
    uploaded (exit 1)."""


class RepoIdMismatchError(ValueError):
    """``zoo.hub push --repo-id ID`` of a card written for another id (its model-index name, the ``from_pretrained``
    line of its code, its ``zoo.evaluate`` commands): a usage error (exit 2); nothing is uploaded."""


def _one_line(e: BaseException | str) -> str:
    """An error's text on one line (a YAML parser's or the Hub's message spans several)."""
    return " ".join(str(e).split())


def _front_matter(text: str) -> dict | None:
    """The YAML metadata block of a README (as huggingface_hub finds it: ``REGEX_YAML_BLOCK``), or None when it has
    none; ``ValueError`` (one line) for a block that is not YAML or not a mapping."""
    import yaml
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    match = REGEX_YAML_BLOCK.search(text)
    if match is None:
        return None
    try:
        meta = yaml.safe_load(match.group(2))
    except yaml.YAMLError as e:
        raise ValueError(f"its metadata block is not YAML ({_one_line(e)})") from None
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise ValueError(f"its metadata block is a YAML {type(meta).__name__}, not a mapping")
    return meta


def card_metadata(folder: str | os.PathLike) -> tuple[str, dict | None, object | None, list[str]]:
    """``(text, metadata, card, problems)`` of the README of a card folder, read offline as the Hub would take it:
    its text, its raw YAML metadata (None without a block), huggingface_hub's ``ModelCard`` of it (None when it cannot
    be read), and the problems found, one line each: a README that is not UTF-8, metadata that is not a YAML mapping,
    a ``model-index`` huggingface_hub cannot parse (``ModelCard``, strictly) or does not read back as written
    (``model_index_to_eval_results`` then ``eval_results_to_model_index``), ``license``/``library_name``/
    ``pipeline_tag`` that are not text, ``tags``/``datasets`` that are not text or lists of text; and each
    ``.eval_results/*.yaml`` (:data:`EVAL_RESULTS_DIR`) that is not a YAML list huggingface_hub's
    ``parse_eval_result_entries`` reads. What only the Hub can say (a license id it does not know) is left to it."""
    import yaml
    from huggingface_hub import ModelCard, parse_eval_result_entries
    from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

    folder = pathlib.Path(folder)
    readme = folder / "README.md"
    problems: list[str] = []
    text, meta, card = "", None, None
    try:
        text = readme.read_text(encoding="utf-8")
        meta = _front_matter(text)
    except (OSError, UnicodeDecodeError) as e:
        problems.append(cannot("the card", readme, e, "read"))
    except ValueError as e:
        problems.append(f"README.md: {e}")
    if meta is not None:
        try:
            card = ModelCard(text)                  # the model-index parsed strictly (ignore_metadata_errors=False)
        except (ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError) as e:
            problems.append(f"README.md: huggingface_hub cannot read its metadata ({_one_line(e)})")
        index = meta.get("model-index")
        if card is not None and index:
            try:
                back = eval_results_to_model_index(*model_index_to_eval_results(index))
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                back = _one_line(e)
            if back != index:
                problems.append("README.md: its model-index does not read back as written through huggingface_hub "
                                "(model_index_to_eval_results, eval_results_to_model_index): entries the Hub would "
                                "not show")
        for key in ("license", "library_name", "pipeline_tag"):
            if key in meta and not isinstance(meta[key], str):
                problems.append(f"README.md: its metadata's {key} is a YAML {type(meta[key]).__name__}, not text")
        for key in ("tags", "datasets"):
            value = meta.get(key)
            if value is not None and not isinstance(value, str) and not (
                    isinstance(value, list) and all(isinstance(v, str) for v in value)):
                problems.append(f"README.md: its metadata's {key} is not text or a list of text")
    results = folder / EVAL_RESULTS_DIR
    for path in sorted(results.glob("*.yaml")) if results.is_dir() else ():
        rel = f"{EVAL_RESULTS_DIR}/{path.name}"
        try:
            entries = yaml.safe_load(path.read_text(encoding="utf-8"))
            if not isinstance(entries, list) or not all(isinstance(x, dict) for x in entries):
                raise TypeError(f"a YAML {type(entries).__name__}, not a list of entries")
            parse_eval_result_entries(entries)
        except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError, TypeError, KeyError, AttributeError) as e:
            problems.append(f"{rel} is not the Hub's evaluation results format (a list of {{dataset: {{id, task_id}}, "
                            f"value}} entries): {_one_line(e) or type(e).__name__}")
    return text, meta, card, problems


def card_weights_problems(folder: str | os.PathLike, model, text: str, card) -> list[str]:
    """What in a card folder describes other weights than the ``model`` loaded from it, one line each: the README's
    catalogue (its "Full ranking over all N items") against ``config.json``'s ``n_items``, its model-index numbers
    (``card``: huggingface_hub's ``ModelCard`` of ``text``) against ``eval_results.json``, the SHA-256 of the weights
    ``eval_results.json`` was measured on (its ``weights_sha256``: :func:`build_card_folder`; a card written before
    it records none and is not checked) against the folder's ``model.safetensors``, the last stage of
    ``training_log.json`` (its ``n_parameters``) against the weights, and each ONNX folder (:data:`ONNX_FOLDERS`):
    a ``state_spec.json`` there (:func:`export.runtime.read_spec`) of another model type or ``n_items``, a graph file
    it names that is missing, an item vocabulary other than the weights' (:func:`export.runtime.read_vocab`), or, for
    a step graph, a ``state_fingerprint`` other than the weights' (:func:`export.onnx.state_fingerprint`: export/
    README.md, "A state belongs to the weights that wrote it"); a graph without its spec, and a README whose ONNX
    section describes a graph folder the card does not hold (removed by hand). Such a card arises when the
    weights are replaced in the folder (``model.add_items(...)`` then ``save_pretrained`` into it) without re-carding
    it. ONNX graphs need onnx and onnxruntime to be checked (:class:`export.deps.MissingDependencyError`). A
    model-index value that is not a finite number (a quoted number, ``.nan``, ``.inf``) is a problem too, naming it."""
    import math

    folder = pathlib.Path(folder)
    n_items = int(model.config.n_items)
    problems = []
    ranked = _RANKED_ITEMS.search(text)
    if ranked and int(ranked.group(1).replace(",", "")) != n_items - 1:
        problems.append(f"README.md reports numbers ranked over {ranked.group(1)} items, the weights rank "
                        f"{n_items - 1:,} (config.json n_items {n_items})")
    results = folder / "eval_results.json"
    if card is not None and card.data.eval_results and results.is_file():
        measured = read_json_object(results, "the card's eval results").get("metrics")
        measured = measured if isinstance(measured, dict) else {}
        differ = []
        for r in card.data.eval_results:
            v, shown = measured.get(r.metric_name), r.metric_value      # huggingface_hub keeps the YAML value as is
            if not isinstance(shown, (int, float)) or isinstance(shown, bool) or not math.isfinite(shown):
                problems.append(f"README.md's model-index {r.metric_name} value {shown!r} is not a finite number")
                continue
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            # make_card rounds to 6 places; written `not <=` so that a NaN in eval_results.json differs too
            if not number or not abs(round(float(v), 6) - shown) <= 1e-6:
                differ.append(f"{r.metric_name} {shown} against {v if v is not None else 'none'}")
        if differ:
            problems.append(f"README.md's model-index and eval_results.json give other numbers ({_listed(differ, 3)})")
    if results.is_file():
        recorded = read_json_object(results, "the card's eval results").get("weights_sha256")
        if recorded is not None and not (isinstance(recorded, str) and re.fullmatch(r"[0-9a-f]{64}", recorded)):
            problems.append(f"eval_results.json's weights_sha256 is not a SHA-256 (64 hex digits): {recorded!r}")
        elif recorded is not None and recorded != (have := weights_sha256(folder) or "none"):
            problems.append(f"eval_results.json was measured on other weights (sha256 {recorded[:12]}...) than the "
                            f"folder's model.safetensors (sha256 {have[:12]}...)")
    stages = _card_stages(folder)
    logged = stages[-1].get("n_parameters") if stages and isinstance(stages[-1], dict) else None
    if isinstance(logged, int) and not isinstance(logged, bool):
        have = sum(p.numel() for p in model.parameters())
        if have != logged:
            problems.append(f"{STAGES_FILE}'s last stage trained {logged:,} parameters, the weights have {have:,}")
    section = _ONNX_SECTION.search(text)
    if section and not (folder / section.group(1) / "state_spec.json").is_file():
        problems.append(f"README.md's ONNX section describes {section.group(1)}/, which the folder does not hold: "
                        f"export it again (python -m export.onnx --model {folder} --card-dir {folder}), or re-card "
                        "the folder, which writes its README without the section")
    for rel in ONNX_FOLDERS:
        where = folder / rel
        if not where.is_dir():
            continue
        spec_path = where / "state_spec.json"
        if not spec_path.is_file():
            if _visible_entries(where):
                problems.append(f"{rel}/ holds no state_spec.json (an interrupted export?): its graph can be neither "
                                "checked against the weights nor served")
            continue
        from export.deps import require

        for module in ("onnx", "onnxruntime"):
            require(module, f"zoo.hub push (checking the ONNX graphs of {folder} against its weights)")
        from export.onnx import STATE_FINGERPRINT, state_fingerprint
        from export.runtime import read_spec, read_vocab

        try:
            spec = read_spec(spec_path)
        except ValueError as e:                         # JSONReadError included
            problems.append(_one_line(e))
            continue
        redo = f"re-export it (python -m export.onnx --model {folder} --card-dir {folder}) or remove {rel}/"
        if spec.get("model_type") != model.config.model_type or spec["n_items"] != n_items:
            problems.append(f"{rel}/ holds a {spec.get('model_type')} graph of {spec['n_items'] - 1:,} items, the "
                            f"weights are a {model.config.model_type} model of {n_items - 1:,}: {redo}")
            continue
        if not (where / str(spec.get("graph", ""))).is_file():
            problems.append(f"{rel}/state_spec.json names the graph {spec.get('graph')}, which is missing: {redo}")
        vocab = getattr(model, "item_vocab", None)
        if spec.get("item_vocab") and vocab is not None:
            try:
                items, _ = read_vocab(where / spec["item_vocab"], spec["n_items"])
            except (OSError, ValueError) as e:
                problems.append(_one_line(e))
            else:
                if list(items) != list(vocab.items):
                    problems.append(f"{rel}/{spec['item_vocab']} maps other item ids than the weights' "
                                    f"item_vocab.json: {redo}")
        recorded = spec.get(STATE_FINGERPRINT)
        if spec["kind"] == "step" and recorded and recorded != state_fingerprint(model, spec):
            problems.append(f"{rel}/ was exported from other weights (its {STATE_FINGERPRINT} is not the weights'; "
                            "an export made before the fingerprint covered the item vocabulary differs too): "
                            f"{redo}")
    return problems


def card_id_problems(folder: str | os.PathLike, repo_id: str, text: str, card) -> list[str]:
    """What in a card's README names another model than ``repo_id``, the id it is about to be published as, one line
    each: its model-index name (``card``: huggingface_hub's ``ModelCard``), the argument of each ``from_pretrained``
    call of its first Python code block (the loading example; a local folder -- what ``zoo.hub card`` writes without
    ``--repo-id`` -- named as such), and the ``--model`` of the ``python -m zoo.evaluate`` commands that measured it
    (:data:`_EVALUATE`; the commands of its notes may name other models). A README that names no model (no
    model-index, no code) has nothing to compare."""
    said = []
    name = getattr(getattr(card, "data", None), "model_name", None)
    if name and name != repo_id:
        said.append(f"its model-index names {name}")
    loads, code = [], _FIRST_CODE.search(text)
    for literal in _LOADS.findall(code.group(1) if code else ""):
        try:
            loads.append(json.loads(literal) if literal.startswith('"') else literal[1:-1])
        except ValueError:
            loads.append(literal)
    for target in dict.fromkeys(loads):
        if target != repo_id:
            local = os.path.isabs(target) or target.startswith(("~", "./", "../"))
            said.append(f"its code loads {'the local folder ' if local else ''}{target}")
    models = []
    for command in _EVALUATE.findall(text):
        try:
            words = shlex.split(command)
        except ValueError:
            continue
        models += [w.split("=", 1)[1] for w in words if w.startswith("--model=")]
        models += [b for a, b in zip(words, words[1:]) if a == "--model"]
    said += [f"its zoo.evaluate commands measure --model {m}" for m in dict.fromkeys(models) if m != repo_id]
    if not said:
        return []
    run = folder
    if is_bundled_card(folder, os.path.basename(os.path.abspath(folder))):     # its card names ssm-rec-zoo/<name>
        run = "COPY"
    hint = (f"re-card it for this id: python -m zoo.hub card --run {run} --out {run} --name NAME --data DATA "
            f"--repo-id {repo_id}" + (f" (COPY: a copy of it outside {os.path.dirname(os.path.abspath(folder))}, "
                                      f"whose cards name {HUB_ORG}/<name>)" if run != folder else ""))
    return [f"README.md was written for another model than --repo-id {repo_id}: {'; '.join(said)}; {hint}"]


def push(folder: str, repo_id: str, private: bool | None = None, token: str | None = None,
         allow_extra: bool = False) -> str:
    """Publish a card folder to the Hub with ``huggingface_hub`` (needs credentials: ``HF_TOKEN`` or a login), as the
    card of the repo: one commit uploads the folder and deletes the files of the repo that the zoo owns and the folder
    does not hold (:func:`stale_repo_files`: an earlier push's ``item_vocab.json``, ONNX graph, soup log or weight
    shards), named on stderr; files the zoo does not own (a user's, ``.gitattributes``) are kept, also named there.

    ``private``: True makes the repo private (an existing public one too); None (the default) creates a new repo with
    its owner's default visibility (public unless the organisation makes new repos private); False creates a new repo
    public even there. An existing repo keeps its visibility unless ``private``.

    Before any Hub call (no repo is created for a folder refused): the folder must load as the zoo loads it
    (strictly: weights that fit the config, a vocabulary that fits the weights), its parts must describe those weights
    (:func:`card_weights_problems`: a README, eval_results.json, training log or ONNX graph of other weights is a
    :class:`CardMismatchError`), its card must be readable by huggingface_hub as the Hub reads it
    (:func:`card_metadata`; also a :class:`CardMismatchError`), and it must name ``repo_id`` and no other model
    (:func:`card_id_problems`: :class:`RepoIdMismatchError`). Files that are no part of a card (:func:`extra_files`:
    notes, a copied file, a log below the top) are refused, naming them, unless ``allow_extra`` (the whole folder is
    uploaded: they would be published). Hidden entries (:data:`PUSH_IGNORE`: interrupted writers' stages) are not
    uploaded, except the Hub's ``.eval_results/`` folder (:data:`EVAL_RESULTS_DIR`). A symbolic link in the folder
    that leads outside it is refused, naming it (:class:`zoo.cli.LinkOutsideError`: its target's content would be
    published). The commit is named after the folder (its resolved name: ``.`` or a trailing ``/`` say nothing)."""
    from huggingface_hub import HfApi, get_token

    missing = [f for f in CARD_FILES if not os.path.exists(os.path.join(folder, f))]
    if missing:
        raise ValueError(f"{folder} is not a complete card folder: missing {missing}")
    # upload_folder uploads a linked file with its target's content: nothing outside the card is published through one
    refuse_links_leading_outside(folder, hint="push would publish what it leads to; remove the link, or put the file "
                                              "itself there")
    extra = extra_files(folder)
    if extra and not allow_extra:
        raise ExtraFilesError(f"{folder} holds files that are no part of a model card ({_listed(extra)}): push "
                              "uploads the whole folder, so they would be published; remove them (or move them out), "
                              "or pass --allow-extra to publish them too")
    import importlib

    from transformers import AutoModel

    importlib.import_module("zoo")     # registers the zoo models with AutoModel

    try:
        with json_depth_guard(os.path.join(folder, "config.json")):    # [[[...]]] in transformers' reader
            model = AutoModel.from_pretrained(folder)
    except (OSError, ValueError) as e:                                 # JSONNestedTooDeep included
        raise ValueError(f"{folder} does not load, so it is not pushed: {e}") from None
    text, _, card, unreadable = card_metadata(folder)
    other_weights = card_weights_problems(folder, model, text, card)
    if unreadable or other_weights:
        raise CardMismatchError(f"{folder} is not pushed: {'; '.join(unreadable + other_weights)}" + (
            f" (a card whose weights were replaced is re-measured and its graphs re-exported by re-carding it: "
            f"python -m zoo.hub card --run {folder} --out {folder} --name NAME --data DATA)" if other_weights else ""))
    problems = card_id_problems(folder, repo_id, text, card)
    if problems:
        raise RepoIdMismatchError("; ".join(problems))
    api = HfApi(token=token)
    if not (token or get_token()):     # HF_TOKEN or `hf auth login`'s token file (HfApi().token is only the argument)
        raise RuntimeError("no Hugging Face credentials: set HF_TOKEN or run `hf auth login` first")
    # private=None: a new repo gets its owner's default visibility (an organisation may make new repos private)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if private:                        # create_repo leaves an existing repo's visibility as it was
        api.update_repo_settings(repo_id, private=True)
    # the zoo's files of an earlier push that the folder does not upload are deleted from the repo in the same commit,
    # so that no file of earlier weights (a stale item_vocab.json, an ONNX graph) stays beside them; a user's are kept
    deleted, kept = stale_repo_files(api.list_repo_files(repo_id), uploaded_files(folder))
    if deleted:
        print(f"[zoo.hub] deleting from {repo_id} in the same commit the files of an earlier push that {folder} does "
              f"not hold: {_listed(deleted, 8)}", file=sys.stderr, flush=True)
    if kept:
        print(f"[zoo.hub] note: keeping {repo_id}'s files that are no part of a card ({_listed(kept)}): push deletes "
              "only the files a card holds", file=sys.stderr, flush=True)
    # hidden entries are no part of a card: the stages of interrupted writers (.save-*, .export-staging-*,
    # .NAME.staged-*) would be published with it (and downloaded by ``*.safetensors`` patterns)
    try:
        info = api.upload_folder(folder_path=folder, repo_id=repo_id,
                                 commit_message=f"Upload {os.path.basename(os.path.abspath(folder))}",
                                 ignore_patterns=list(PUSH_IGNORE),
                                 delete_patterns=[_fnmatch_literal(f) for f in deleted] or None)
    except hub_errors() as e:          # the commit is this call's last request: push_outcome says if it can be made
        setattr(e, PUSH_COMMITTING, True)
        raise
    return str(info)


#: the attribute :func:`push` sets (True) on a Hub error raised by its upload, whose last request is the commit
#: (:func:`push_outcome`); an error raised before it has none
PUSH_COMMITTING = "zoo_push_committing"
#: the HTTP client's errors (httpx's names) raised before a request was sent: no connection (refused, DNS failure,
#: connect timeout, proxy), none free in the pool, or a request the client would not send
_NOT_SENT = ("ConnectError", "ConnectTimeout", "PoolTimeout", "ProxyError", "UnsupportedProtocol", "LocalProtocolError")


def push_outcome(e: BaseException, repo_id: str) -> str:
    """What a failed :func:`push` left on the Hub, for its error message: nothing committed when it failed before
    its upload (:data:`PUSH_COMMITTING` unset: the commit request is the upload's last), before any request was
    sent (offline mode; the HTTP client's :data:`_NOT_SENT` errors: connection refused, DNS failure, ...) or when the
    Hub answered with a refusal (an HTTP 4xx); otherwise -- an upload whose request may have reached the Hub before
    its answer failed (a read timeout, a dropped connection, a 5xx from a gateway) -- the commit's outcome is
    unknown, and the message says where to look."""
    from huggingface_hub import constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    if not getattr(e, PUSH_COMMITTING, False):
        return "nothing was committed (push failed before its upload)"
    if isinstance(e, OfflineModeIsEnabled) or any(c.__name__ in _NOT_SENT for c in type(e).__mro__):
        return "nothing was committed (no request reached the Hub)"
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(status, int) and 400 <= status < 500:
        return f"nothing was committed (the Hub refused the upload: HTTP {status})"
    return (f"the commit's outcome is unknown (a request may have reached the Hub before its answer failed): see "
            f"{constants.ENDPOINT}/{repo_id}/commits/main before pushing again")


def hub_errors() -> tuple[type[Exception], ...]:
    """What a Hub call raises when it cannot reach the Hub or the Hub refuses it, for ``push`` to report in one line:
    ``OSError`` (``huggingface_hub``'s ``OfflineModeIsEnabled`` and ``HfHubHTTPError``, a file that cannot be read)
    and the HTTP client's own error base that ``HfHubHTTPError`` derives from (httpx's ``HTTPError``, whose
    ``ConnectError`` and timeouts are no ``OSError``; requests' errors are ``OSError``). Programming errors
    (``TypeError``, ``AttributeError``, ...) are none of these."""
    from huggingface_hub.errors import HfHubHTTPError

    return (OSError, *(b for b in HfHubHTTPError.__bases__ if issubclass(b, Exception)))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m zoo.hub``: ``list``, ``card``, ``push``. Exit statuses (:data:`EXIT_CODES`): 2 for a
    bad option, an ``--out`` that cannot take the card, files no card holds in a folder to push without
    ``--allow-extra``, or a card to push that names another model than ``--repo-id``; 1 for a card or a push that
    failed (a run, data or Hub that cannot be read or reached; a card folder whose parts describe other weights) and
    for a ``list`` that met a bundled folder it cannot read (one line naming it; the others are listed); 4 for a
    package the card or the push needs that is missing here."""
    from .cli import EXIT_CODES, EXIT_ERROR, EXIT_MISSING, command_prog, exit_with
    from export.fsutil import EXIT_VERIFY_FAILED

    p = argparse.ArgumentParser(allow_abbrev=False,
                                prog=command_prog("zoo.hub"), description="Bundled models, model cards, publishing.",
                                epilog=EXIT_CODES)
    sub = p.add_subparsers(dest="cmd", required=True, help="what to do (each command has its own --help)")
    sub.add_parser("list", allow_abbrev=False,
                   help="list bundled models: Hub id, folder, model type, dataset, protocol, test HR@10 and "
                        "NDCG@10 (tab-separated; - where a folder has no card)",
                   description="List the bundled models, one tab-separated line each: Hub id, folder, model type, "
                               "dataset, protocol, test HR@10 and NDCG@10 (- where a folder has no card).",
                   epilog=EXIT_CODES)
    c = sub.add_parser("card", allow_abbrev=False,
                       help="turn a training run into a card folder with a measured card (--out, default "
                            "./hub_cards/<name>)",
                       description="Measure a training run's checkpoint on the test split and write a card folder: "
                                   "weights, config, item vocabulary, README.md (a Hub model card), eval_results.json "
                                   "and training_log.json. Prints the test metrics as JSON on stdout (alone: "
                                   "the notes, the re-exports' reports and the folder written go to stderr).",
                       epilog=EXIT_CODES)
    c.add_argument("--run", required=True, help="a zoo.train --out folder, or a card folder (the card's own folder "
                                                 "re-measures and re-writes it in place)")
    c.add_argument("--name", required=True,
                   help="the model's name: the card's title, and the folder name of the default --out "
                        "(hub_cards/<name>); a bundled card's Hub id is ssm-rec-zoo/<name>; a valid Hub repository "
                        "name: ASCII letters, digits, '-', '_', '.' (at most 96, no '--' or '..', not beginning or "
                        "ending with '-' or '.')")
    c.add_argument("--data", required=True,
                   help="the interaction file the run was trained on, read as its log says (k-core, order of ties, "
                        "columns); the card's test metrics are measured on its leave-one-out test split")
    c.add_argument("--out", help="the card folder (default: hub_cards/<name> under the current directory; from the "
                                 "repository root that is the bundled card's folder, whose card alone names "
                                 f"{HUB_ORG}/<name>); the folder written is printed at the end, on stderr")
    c.add_argument("--repo-id", type=hub_repo_id,
                   help="the Hub id the card will be published as (zoo.hub push), NAME or OWNER/NAME: its example and "
                        f"commands load it (default: the --out folder; a bundled card: {HUB_ORG}/<name>)")
    c.add_argument("--exclude-history", action="store_true",
                   help="measure under the LRURec protocol (the input window's items are never ranked); default: the "
                        "RecBole protocol (nothing masked); a card re-written in its folder keeps its protocol")
    c.add_argument("--dataset-type", help="the model-index dataset type (default: a recognised benchmark's, e.g. "
                                          "ml-1m; else the replaced card's; else the data file's name)")
    c.add_argument("--dataset-name", help="default: a recognised benchmark's, e.g. 'MovieLens-1M (5-core)'; else the "
                                          "replaced card's; else the data file")
    c.add_argument("--description",
                   help="the card's data line, markdown (default: the data file's name, its rows, users and items "
                        "as read and the interactions, users and items its k-core filter left)")
    c.add_argument("--notes", help="markdown file appended to the card, e.g. an ablation or a data caveat (default: "
                                   "none)")
    c.add_argument("--keep-notes", action="store_true",
                   help="carry over the notes of the card being replaced (before --notes, when both are given)")
    c.add_argument("--overwrite", action="store_true",
                   help="write the card into an --out folder that holds other files than the card this run "
                        "continues (another card, notes, another model): its README.md, weights, config and "
                        "vocabulary are replaced, its ONNX graphs re-exported; a folder that also holds files no card "
                        "writes is refused even so; not needed to re-measure a card in place or to card a later "
                        "stage of the card in --out")
    c.add_argument("--batch-size", type=positive_int, default=256,
                   help="users scored per forward pass of the card's evaluation (default 256), as zoo.evaluate's")
    c.add_argument("--threads", type=positive_int, default=None,
                   help="torch's CPU threads for the card's evaluation and the re-export of its ONNX graphs "
                        "(default: torch's own, from OMP_NUM_THREADS or the cores), as zoo.evaluate's")
    c.add_argument("--device", default=None,
                   help="where the card's evaluation runs: cpu, cuda or cuda:N (default: cuda when available, else "
                        "cpu), as zoo.evaluate --model's")
    c.add_argument("--no-progress", action="store_true",
                   help="no progress bar during the evaluation (default: a bar on stderr when stderr is a terminal)")
    u = sub.add_parser("push", allow_abbrev=False, help="publish a card folder to the Hub",
                       description="Publish a card folder to the Hugging Face Hub (needs HF_TOKEN or `hf auth "
                                   "login`): one commit uploads the folder and deletes the card files of the "
                                   "repository the folder does not hold (an earlier push's item vocabulary, ONNX "
                                   "graph, log or weight shards), naming them on stderr; other files (a user's, "
                                   ".gitattributes) are kept. Refused before any Hub call (no repository is "
                                   "created): a folder that does not load as a zoo model, holds files no card holds, "
                                   "whose README, eval_results.json, training log or ONNX graphs describe other "
                                   "weights, whose card metadata huggingface_hub cannot read, or whose card names "
                                   "another model than --repo-id.",
                       epilog=EXIT_CODES)
    u.add_argument("folder", help="the card folder to upload (a zoo.hub card --out folder), whole: hidden entries "
                                  "are left out, except the Hub's evaluation results (.eval_results/*.yaml)")
    u.add_argument("--repo-id", required=True, type=hub_repo_id,
                   help="the Hub repository to create or update, as OWNER/NAME (e.g. ssm-rec-zoo/mamba4rec-ml1m): "
                        "the id the card was written for (zoo.hub card --repo-id), which its code loads")
    u.add_argument("--private", action="store_true",
                   help="make the repository private (an existing public one too); default: a new repository gets "
                        "its owner's default visibility (public unless an organisation makes new ones private), an "
                        "existing one keeps its visibility")
    u.add_argument("--allow-extra", action="store_true",
                   help="also upload files that are no part of a card (anything but the card's README.md, weights, "
                        "config, vocabulary, top-level logs, eval_results.json, ONNX graphs and .eval_results/*.yaml); "
                        "default: refuse the folder, naming them")
    args = p.parse_args(argv)
    if args.cmd == "list":
        failed = False
        for name, path in bundled_models().items():
            try:
                row = card_summary(path)
            except (OSError, ValueError) as e:  # a corrupt card: one line naming it; the others are still listed
                print(f"cannot list {HUB_ORG}/{name}: {error_text(e)}", file=sys.stderr, flush=True)
                failed = True
                continue
            print("\t".join([f"{HUB_ORG}/{name}", str(path), *row]), flush=True)
        if failed:
            raise SystemExit(EXIT_ERROR)                                                  # status 1
    elif args.cmd == "card":
        from export.deps import MissingDependencyError

        problem = card_name_problem(args.name)   # a path component and a Hub name: '../x', '/x', 'a b' are neither
        if problem:
            c.error(f"--name {args.name!r}: {problem}")
        device = cli_device(args.device)         # as zoo.evaluate's: malformed exits 2, a GPU missing here 4
        apply_threads(args.threads)
        try:
            notes = pathlib.Path(args.notes).read_text(encoding="utf-8") if args.notes else ""
        except (OSError, UnicodeDecodeError) as e:
            sys.exit(f"card not written: {cannot('--notes', args.notes, e, 'read')}")       # status 1
        out = args.out or default_card_out(args.name)
        try:                # stdout holds the metrics JSON alone: what the build prints (notes, re-exports) is stderr's
            with contextlib.redirect_stdout(sys.stderr):
                m = build_card_folder(args.run, args.name, args.data, out, args.exclude_history, args.description,
                                      args.dataset_type, args.dataset_name, notes, keep_notes=args.keep_notes,
                                      overwrite=args.overwrite, repo_id=args.repo_id, progress=not args.no_progress,
                                      batch_size=args.batch_size, device=device)
        except OutFolderError as e:     # the --out given (or its default) cannot take the card as asked
            c.error(f"card not written: {e}")
        except MissingDependencyError as e:
            exit_with(EXIT_MISSING, f"card not written: {e}")
        except RuntimeError as e:       # a re-exported graph that fails verification raised export.onnx's (loaded)
            onnx_module = sys.modules.get("export.onnx")
            if onnx_module is not None and isinstance(e.__cause__ or e, onnx_module.VerificationError):
                exit_with(EXIT_VERIFY_FAILED, f"card not written: {error_text(e)}")       # status 3
            sys.exit(f"card not written: {error_text(e)}")                               # status 1
        except (OSError, KeyError, ValueError) as e:                # they name what failed
            sys.exit(f"card not written: {error_text(e)}")                               # status 1
        print(strict_json(m, indent=1), flush=True)                 # written: eval_results.json is strict too
        print(f"wrote card {os.path.abspath(out)} (README.md, weights, eval_results.json)", file=sys.stderr, flush=True)
    elif args.cmd == "push":
        extra = extra_files(args.folder) if args.allow_extra and os.path.isdir(args.folder) else []
        if extra:
            print(f"[zoo.hub] note: --allow-extra: also uploading files that are no part of a card ({_listed(extra)})",
                  file=sys.stderr, flush=True)
        from export.deps import MissingDependencyError

        try:
            print(push(args.folder, args.repo_id, True if args.private else None, allow_extra=args.allow_extra))
        except (ExtraFilesError, RepoIdMismatchError) as e:
            u.error(f"push refused: {_one_line(e)}")
        except MissingDependencyError as e:                 # onnx/onnxruntime, to check the card's ONNX graphs
            exit_with(EXIT_MISSING, f"push failed: {_one_line(e)}")
        except (RuntimeError, ValueError) as e:             # the Hub's metadata rejection spans several lines
            # the Hub's HTTP 400 (BadRequestError) is a ValueError too: it says what was committed (nothing)
            sys.exit(f"push failed: {_one_line(e)}"
                     + (f"; {push_outcome(e, args.repo_id)}" if isinstance(e, hub_errors()) else ""))
        except hub_errors() as e:       # the Hub not reached (offline mode, no network) or refusing (HTTP errors)
            from huggingface_hub import constants

            # the HTTP client's own errors (ConnectError: "[Errno 111] Connection refused") do not say what was called
            where = "" if isinstance(e, OSError) else f" (reaching the Hub at {constants.ENDPOINT})"
            sys.exit(f"push failed: {type(e).__name__}: {' '.join(str(e).split()) or 'no message'}{where}; "
                     f"{push_outcome(e, args.repo_id)}")


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
