"""Item vocabulary: the caller's own item ids <-> the model's internal indices (:mod:`export.item_vocab`, which holds
it torch-free for the serving clients; these are its names)."""

from export.item_vocab import (VOCAB_FILE, ItemVocab, UnknownItemError, check_indices, int_id,  # noqa: F401
                               int_id_value, is_canonical_int_text, is_int_text, other_normalization,
                               unknown_id_hint)

__all__ = ["ItemVocab", "UnknownItemError", "VOCAB_FILE", "check_indices", "int_id", "int_id_value", "is_canonical_int_text",
           "is_int_text", "other_normalization", "unknown_id_hint"]
