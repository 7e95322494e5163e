"""Data loading for the zoo: readers, k-core filtering, per-user sequences, leave-one-out split and batching.

Typical use::

    from zoo.data import load_dataset, leave_one_out, training_windows, iterate_batches, eval_batches

    ds = load_dataset("ml-1m.5core.seq.gz")          # 6,040 users, 3,416 items, 999,611 interactions
    split = leave_one_out(ds)                        # train seq[:-2]; valid -> seq[-2]; test -> seq[-1]
    windows = training_windows(split.train, max_len=200, timestamps=split.train_timestamps)
    for batch in iterate_batches(windows, 128, padding_side="left", seed=0):
        ...
"""

from .batching import TrainingWindows, eval_batches, iterate_batches, pad_sequences, training_windows
from .readers import FORMATS, Interactions, detect_format, read_interactions
from .split import (SPLITS, TIME_TIES, EvalExamples, SequenceDataset, Split, build_sequences, factorize, item_counts,
                    kcore_filter, leave_one_out, load_dataset, load_options, parse_kcore, temporal_cuts,
                    temporal_split)

__all__ = ["Interactions", "read_interactions", "detect_format", "FORMATS",
           "TIME_TIES", "SPLITS", "kcore_filter", "build_sequences", "load_dataset", "load_options", "parse_kcore",
           "leave_one_out", "temporal_split", "temporal_cuts", "factorize",
           "item_counts",
           "SequenceDataset", "EvalExamples", "Split",
           "TrainingWindows", "training_windows", "iterate_batches", "eval_batches", "pad_sequences"]
