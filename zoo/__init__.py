"""SSM recommender zoo: state-space-model sequential recommenders as Hugging Face models.

Importing :mod:`zoo` registers every model with ``transformers.AutoConfig`` / ``AutoModel``; a model of another
package is registered with :func:`register_model` (``zoo/models/README.md``, "Adding a model"), which an installed
package's ``ssm_rec_zoo.models`` entry point does for it (found on the first lookup of a model type the zoo lacks, so
the command-line tools know its models).
"""

from .modeling_utils import (ItemVectors, Recommendations, SeqRecConfig, SeqRecOutput, SeqRecPreTrainedModel,
                             StateTensorSpec)
from .models import MODELS, get_model_class, register_model
from .vocab import ItemVocab, UnknownItemError

__version__ = "0.1.0"


def _seed_cache() -> None:
    import os

    if os.environ.get("ZOO_NO_CACHE_SEED", "0") != "1":
        from .pretrained import seed_hf_cache

        seed_hf_cache()


_seed_cache()

__all__ = ["ItemVocab", "UnknownItemError", "ItemVectors", "Recommendations", "SeqRecConfig", "SeqRecOutput",
           "SeqRecPreTrainedModel", "StateTensorSpec", "MODELS", "get_model_class", "register_model", "__version__"]
