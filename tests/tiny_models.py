"""Tiny models of every family (n_items=12, max_seq_length=6) for the tests of configs and of the public API."""
import torch

from zoo.models import MODELS

#: the config fields, beyond ``n_items`` and ``max_seq_length``, of a tiny model of each family
TINY = {"gru4rec": dict(embedding_size=8, hidden_size=8), "lrurec": dict(hidden_size=8, num_layers=1),
        "mamba4rec": dict(hidden_size=8, d_state=4, num_layers=1),
        "sasrec": dict(hidden_size=8, num_heads=2, inner_size=8, num_layers=1),
        "bert4rec": dict(hidden_size=8, num_heads=2, inner_size=8, num_layers=1),
        "ssd4rec": dict(hidden_size=8, d_state=4, head_dim=4, mask_ratio=0.0),
        "tim4rec": dict(hidden_size=8, d_state=4, head_dim=4, num_layers=1),
        "tim4rec_causal": dict(hidden_size=8, d_state=4, head_dim=4, num_layers=1)}


def tiny_config(model_type: str):
    """The config of a tiny ``model_type`` model (n_items=12, max_seq_length=6)."""
    cfg_cls, _ = MODELS[model_type]
    return cfg_cls(n_items=12, max_seq_length=6, **TINY[model_type])


def tiny(model_type: str):
    """A tiny ``model_type`` model, its weights drawn under seed 0, in eval mode."""
    torch.manual_seed(0)
    return MODELS[model_type][1](tiny_config(model_type)).eval()
