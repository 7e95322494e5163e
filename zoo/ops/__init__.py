"""Pure-PyTorch reference ops (CPU, exportable) with optional fused kernels behind the same signatures."""

from .conv import causal_conv1d, causal_conv1d_ref, causal_conv1d_update_ref
from .lru import lru_scan_loop, lru_scan_ref, lru_step_ref
from .ssd import rmsnorm_gated_ref, ssd_chunk_scan_ref, ssd_scan_fn, ssd_scan_loop, ssd_step_ref
from .selective_scan import (linear_scan, selective_scan_fn, selective_scan_loop, selective_scan_ref,
                             selective_state_update_ref)

__all__ = ["ssd_chunk_scan_ref", "ssd_scan_fn", "ssd_scan_loop", "ssd_step_ref", "rmsnorm_gated_ref", "lru_scan_ref", "lru_step_ref", "lru_scan_loop", "causal_conv1d", "causal_conv1d_ref", "causal_conv1d_update_ref", "linear_scan", "selective_scan_fn",
           "selective_scan_loop", "selective_scan_ref", "selective_state_update_ref"]
