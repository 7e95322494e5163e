"""The public benchmarks the zoo knows: recognised by their statistics, and where two of them are published.

A loaded dataset is a known benchmark when its (users, items, interactions) are that benchmark's
(:func:`recognise_benchmark`); a card names its dataset that way and compares with published numbers only on the
data they were measured on. :data:`SOURCES` are the archives ``python -m zoo.download`` fetches (their owners' own
sites; the MovieLens terms apply), and the statistics are what a download must load as before it is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

#: key -> ((users, items, interactions) as loaded, model-index dataset type, dataset name); the statistics are those
#: of ``../shared/data`` (its README), loaded with k-core ``auto`` (5 for interaction files) or unfiltered
BENCHMARKS = {
    "ml-1m-5core": ((6040, 3416, 999611), "ml-1m", "MovieLens-1M (5-core)"),
    "ml-1m-u2999-5core": ((2999, 3266, 486907), "ml-1m", "MovieLens-1M users 1-2999 (5-core, with timestamps)"),
    "ml-1m-u2999": ((2999, 3615, 487650), "ml-1m", "MovieLens-1M users 1-2999 (with timestamps)"),
    "beauty-5core": ((22363, 12101, 198502), "amazon-beauty", "Amazon Beauty (5-core)"),
    "sports-5core": ((35598, 18357, 296337), "amazon-sports", "Amazon Sports (5-core)"),
    "ml-100k-5core": ((943, 1349, 99287), "ml-100k", "MovieLens-100K (5-core)"),
    "ml-100k": ((943, 1682, 100000), "ml-100k", "MovieLens-100K"),
}


def recognise_benchmark(ds) -> str | None:
    """The :data:`BENCHMARKS` key of a loaded dataset (a :class:`~zoo.data.SequenceDataset`), by its statistics;
    None for any other data."""
    stats = (ds.n_users, ds.n_items, ds.n_interactions)
    return next((key for key, (known, _, _) in BENCHMARKS.items() if known == stats), None)


@dataclass(frozen=True)
class Source:
    """Where a benchmark's interactions are published, and what a download must load as.

    Args:
        url: the archive (a zip).
        member: the interaction file inside it.
        filename: the file written (the member's rows, after ``header`` when it has none of its own).
        header: a header line for a member without one (tab-separated ``user_id item_id ...``), or None.
        benchmark: the :data:`BENCHMARKS` key the written file loads as, with ``kcore``.
        kcore: the k-core filter of that check (``"auto"``: 5 for interaction files; None: unfiltered).
        hint: printed after a download: how the zoo uses the file.
    """

    url: str
    member: str
    filename: str
    header: str | None
    benchmark: str
    kcore: int | str | None
    hint: str = ""


SOURCES = {
    "ml-1m": Source("https://files.grouplens.org/datasets/movielens/ml-1m.zip", "ml-1m/ratings.dat",
                    "ml-1m.ratings.dat", None, "ml-1m-5core", "auto",
                    "the 5-core of this file is ml-1m.5core.seq.gz's data; the zoo's ML-1M models were trained with "
                    "same-second ratings ordered by item id, as LRURec: train and evaluate with --time-ties item "
                    "(README: Same-second ratings)"),
    "ml-100k": Source("https://files.grouplens.org/datasets/movielens/ml-100k.zip", "ml-100k/u.data",
                      "ml-100k.inter", "user_id\titem_id\trating\ttimestamp", "ml-100k", None,
                      "RecBole's ml-100k.inter content; the commands 5-core it by default (--kcore auto)"),
}

__all__ = ["BENCHMARKS", "SOURCES", "Source", "recognise_benchmark"]
