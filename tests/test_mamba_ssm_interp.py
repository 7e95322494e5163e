"""mamba-ssm parity without a GPU: its Triton kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``).

The zoo dispatches the SSD scan to mamba-ssm's ``mamba_chunk_scan_combined`` on CUDA (``zoo.ops.ssd.ssd_scan_kernel``),
and its step and gated-RMSNorm references follow mamba-ssm's ``selective_state_update`` and ``rmsnorm_fn``. The GPU
tests (``tests/test_ssd_ops.py``, marker ``gpu``) compare them on CUDA; here the very same Triton kernels run on the
CPU, in a separate venv (``bash tests/mamba_ssm_env.sh``: triton + mamba-ssm's sources over the main environment), so
the zoo's call of the kernel -- argument layouts, dtypes, dt_bias and softplus, initial and final states, packed
sequences -- and the references' math are checked against mamba-ssm's own code in CI. Tolerance: max abs error /
max(1, max |ref|) <= 1e-5 in fp32, 2e-3 in fp16. A negative control replays the mapping mistakes that matter (dt_bias
dropped, softplus flipped, the gate on the other side of the norm) and must fail.

Not shown here: the kernels' GPU numerics (tensor cores, fp16/bf16 accumulation) and speed; those stay GPU tests.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("ZOO_MAMBA_INTERP_VENV") or ROOT / ".venv-mamba-interp")
TOL = {"float32": 1e-5, "float16": 2e-3}


def _run(negative: bool = False) -> dict:
    py, src = VENV / "bin" / "python", VENV / "mamba-ssm-src"
    if not py.exists() or not (src / "mamba_ssm" / "ops" / "triton" / "ssd_combined.py").is_file():
        pytest.skip(f"no mamba-ssm interpreter venv at {VENV} (create it with: bash tests/mamba_ssm_env.sh)")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               ZOO_MAMBA_INTERP_NEGATIVE="1" if negative else "0")
    r = subprocess.run([str(py), str(ROOT / "tests" / "mamba_ssm_interp.py"), str(src)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results():
    return _run()


def test_mamba_ssm_triton_kernels_match_the_zoo_in_the_interpreter(results):
    print(results["versions"])
    kernels = {c["kernel"] for c in results["cases"]}
    assert kernels == {"mamba_chunk_scan_combined", "selective_state_update", "rmsnorm_fn"}
    assert len(results["cases"]) == 13
    for c in results["cases"]:
        tol = TOL["float16" if "float16" in c["case"] else "float32"]
        print(f"{c['kernel']:<26} {c['case']:<90} " + " ".join(f"{k} {v:.1e}" for k, v in c["errors"].items()))
        assert all(v <= tol for v in c["errors"].values()), c


def test_a_wrong_mapping_fails_the_interpreter_check():
    """Negative control: dt_bias dropped from the SSD call, softplus flipped in the step, the gate on the other side
    of the norm -- each kernel's comparison fails where that argument matters."""
    res = _run(negative=True)
    worst = {}
    for c in res["cases"]:
        worst[c["kernel"]] = max(worst.get(c["kernel"], 0.0), *c["errors"].values())
        if c["kernel"] == "mamba_chunk_scan_combined" and "D=True" in c["case"]:
            assert max(c["errors"].values()) > 1e-2, c
    assert min(worst.values()) > 1e-2, worst
