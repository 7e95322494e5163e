#!/usr/bin/env bash
# Create (idempotently) the virtualenv in which tests/test_mamba_ssm_interp.py runs mamba-ssm's Triton kernels in
# Triton's CPU interpreter (TRITON_INTERPRET=1): no GPU, and Triton never enters the main environment.
#
#     bash tests/mamba_ssm_env.sh                 # -> .venv-mamba-interp/ (git-ignored)
#     ZOO_MAMBA_INTERP_VENV=/elsewhere bash tests/mamba_ssm_env.sh
#
# The venv sees the main environment's packages (torch, the zoo) and adds triton + einops. mamba-ssm itself is the
# PyPI sdist's Python sources (mamba-ssm-src/): its wheel build and its package __init__ need the CUDA extension
# selective_scan_cuda, which a CPU machine has no use for; the Triton kernels are plain Python. Re-running is cheap:
# a stamp records what was installed. Prints the venv's python path on the last line.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ZOO_MAMBA_INTERP_VENV:-$here/.venv-mamba-interp}"
py="${ZOO_MAMBA_INTERP_BASE_PYTHON:-python3}"
reqs=("triton==3.9.0" "einops>=0.7" "wheel")
mamba="mamba-ssm==2.3.2.post1"
stamp="$venv/.zoo-mamba-interp-stamp"
want="$(printf '%s\n' "${reqs[@]}" "$mamba")"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "mamba-ssm interpreter env up to date: $venv" >&2
    echo "$venv/bin/python"
    exit 0
fi
echo "creating mamba-ssm interpreter env in $venv" >&2
"$py" -m venv --system-site-packages "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${reqs[@]}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# MAMBA_SKIP_CUDA_BUILD: the sdist's setup.py would otherwise look for nvcc / a prebuilt wheel just to read metadata
MAMBA_SKIP_CUDA_BUILD=TRUE "$venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation "$mamba" -d "$tmp"
tar xzf "$tmp"/mamba_ssm-*.tar.gz -C "$tmp"
rm -rf "$venv/mamba-ssm-src"
mkdir -p "$venv/mamba-ssm-src"
cp -r "$tmp"/mamba_ssm-*/mamba_ssm "$venv/mamba-ssm-src/"
"$venv/bin/python" -c "import triton, einops; print('triton', triton.__version__)" >&2
printf '%s' "$want" > "$stamp"
echo "$venv/bin/python"
