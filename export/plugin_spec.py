"""The single source of truth for the scan nodes shared by the ONNX exporter, the TensorRT plugins and Triton.

The ONNX exporter writes one node per layer with ``op_type = ScanOpSpec.op_type`` in the custom domain
``ONNX_DOMAIN``, carrying the attributes ``plugin_namespace`` / ``plugin_version`` that TensorRT's ONNX parser uses to
bind the node to a registered plugin creator of the same name. The same op is also emitted as a model-local ONNX
function (standard ops only) so ONNX Runtime runs the graph as is. The TensorRT plugins in ``plugins/`` register
creators with exactly these names, versions, namespace and field names; a test checks that they cannot drift apart.

Shapes use ``B`` batch, ``T`` new steps (>= 1), ``E`` channels, ``N`` state size, ``H`` heads, ``P`` head dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: custom ONNX domain of the scan nodes (and of their model-local functions)
ONNX_DOMAIN = "ai.ssmrec.zoo"
ONNX_DOMAIN_VERSION = 1
#: TensorRT plugin namespace / version carried as node attributes
PLUGIN_NAMESPACE = "zoo"
PLUGIN_VERSION = "1"
#: the shared library built from plugins/
PLUGIN_LIBRARY = "libzoo_trt_plugins.so"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: str          # symbolic, e.g. "B,E,T"
    dtype: str          # "float32" (fp16/bf16 allowed for activations where noted) or "int64"
    doc: str = ""


@dataclass(frozen=True)
class ScanOpSpec:
    op_type: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    attributes: dict = field(default_factory=dict)   # name -> (type, default, doc)
    doc: str = ""
    #: the I/O names that take the activation dtype (fp32 / fp16 / bf16, the dtype of input 0); all others are fp32.
    #: The plugins' type checks (``kIsActivation`` of the generated header) and the emulated runner's dtypes follow it
    activations: frozenset = frozenset()

    def __post_init__(self):
        object.__setattr__(self, "activations", frozenset(self.activations))
        unknown = set(self.activations) - {t.name for t in (*self.inputs, *self.outputs)}
        if unknown:
            raise ValueError(f"{self.op_type}: activations {sorted(unknown)} are not among its inputs/outputs")

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


SELECTIVE_SCAN = ScanOpSpec(
    op_type="SelectiveScan",
    doc="Mamba-1 selective scan over T >= 1 steps from an initial state, with D skip and SiLU(z) gating.",
    inputs=(
        TensorSpec("u", "B,E,T", "float32", "post-conv activations x"),
        TensorSpec("delta", "B,E,T", "float32", "dt before bias and softplus"),
        TensorSpec("A", "E,N", "float32", "-exp(A_log)"),
        TensorSpec("B", "B,N,T", "float32", "input matrix, shared across channels"),
        TensorSpec("C", "B,N,T", "float32", "output matrix, shared across channels"),
        TensorSpec("D", "E", "float32", "skip"),
        TensorSpec("z", "B,E,T", "float32", "gate"),
        TensorSpec("delta_bias", "E", "float32", "dt_proj bias"),
        TensorSpec("h0", "B,E,N", "float32", "initial state (always fp32)"),
    ),
    outputs=(
        TensorSpec("y", "B,E,T", "float32", "(sum_n C h + D u) * silu(z)"),
        TensorSpec("h", "B,E,N", "float32", "final state (fp32; may alias h0)"),
    ),
    attributes={"delta_softplus": ("int", 1, "apply softplus to delta + delta_bias")},
    activations=frozenset({"u", "delta", "B", "C", "z", "y"}),
)

LRU_SCAN = ScanOpSpec(
    op_type="LRUScan",
    doc="Diagonal complex linear recurrence h_t = lam * h_{t-1} + u_t over T >= 1 steps, as real/imag pairs.",
    inputs=(
        TensorSpec("u_re", "B,T,N", "float32", "real part of the gamma-scaled input"),
        TensorSpec("u_im", "B,T,N", "float32", "imaginary part"),
        TensorSpec("lam_re", "N", "float32", "Re(lambda) = exp(-nu) cos(theta)"),
        TensorSpec("lam_im", "N", "float32", "Im(lambda) = exp(-nu) sin(theta)"),
        TensorSpec("h0_re", "B,N", "float32", "initial state, real"),
        TensorSpec("h0_im", "B,N", "float32", "initial state, imaginary"),
    ),
    outputs=(
        TensorSpec("h_re", "B,T,N", "float32", "states after each step, real"),
        TensorSpec("h_im", "B,T,N", "float32", "states after each step, imaginary"),
    ),
    activations=frozenset({"u_re", "u_im", "h_re", "h_im"}),
)

SSD_SCAN = ScanOpSpec(
    op_type="SSDScan",
    doc="Mamba-2 / SSD scan with one scalar decay per head and a time-scaled dt input (TiM4Rec-causal).",
    inputs=(
        TensorSpec("x", "B,T,H,P", "float32", "inputs per head"),
        TensorSpec("dt", "B,T,H", "float32", "dt before bias and softplus (already time-scaled)"),
        TensorSpec("A", "H", "float32", "-exp(A_log), one scalar per head"),
        TensorSpec("B", "B,T,G,N", "float32", "input matrix per group"),
        TensorSpec("C", "B,T,G,N", "float32", "output matrix per group"),
        TensorSpec("D", "H", "float32", "skip per head"),
        TensorSpec("dt_bias", "H", "float32", "dt bias"),
        TensorSpec("h0", "B,H,P,N", "float32", "initial state"),
    ),
    outputs=(
        TensorSpec("y", "B,T,H,P", "float32", "outputs"),
        TensorSpec("h", "B,H,P,N", "float32", "final state"),
    ),
    attributes={"dt_softplus": ("int", 1, "apply softplus to dt + dt_bias")},
    activations=frozenset({"x", "dt", "B", "C", "y"}),
)

SCAN_OPS = {s.op_type: s for s in (SELECTIVE_SCAN, LRU_SCAN, SSD_SCAN)}


def node_attributes(op: ScanOpSpec) -> dict:
    """Attributes every exported scan node carries (TensorRT binding + the op's own attributes' defaults)."""
    attrs = {"plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION}
    attrs.update({k: v[1] for k, v in op.attributes.items()})
    return attrs


__all__ = ["ONNX_DOMAIN", "ONNX_DOMAIN_VERSION", "PLUGIN_NAMESPACE", "PLUGIN_VERSION", "PLUGIN_LIBRARY",
           "TensorSpec", "ScanOpSpec", "SELECTIVE_SCAN", "LRU_SCAN", "SSD_SCAN", "SCAN_OPS", "node_attributes"]
