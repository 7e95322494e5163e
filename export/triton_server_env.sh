#!/usr/bin/env bash
# Create (idempotently) the server-side virtualenv used by export/triton_server.py and tests/test_triton.py.
#
# nvidia-pytriton bundles a real tritonserver (2.51, python backend only) that runs on a CPU box without Docker,
# but it needs numpy < 2, which must not enter the main environment. So the server runs from its own venv:
#
#     bash export/triton_server_env.sh            # -> .venv-triton/ (git-ignored)
#     ZOO_TRITON_VENV=/elsewhere bash export/triton_server_env.sh
#
# Re-running is cheap: a stamp file records the installed requirement set; nothing is re-installed when it matches.
# Prints the venv's python path on the last line.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ZOO_TRITON_VENV:-$here/.venv-triton}"
py="${ZOO_TRITON_BASE_PYTHON:-python3}"
reqs=("nvidia-pytriton>=0.7,<0.8" "numpy<2" "onnxruntime>=1.20")
stamp="$venv/.zoo-triton-stamp"
want="$(printf '%s\n' "${reqs[@]}")"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "triton server env up to date: $venv" >&2
    echo "$venv/bin/python"
    exit 0
fi
echo "creating triton server env in $venv (python: $("$py" -c 'import sys; print(sys.version.split()[0])'))" >&2
"$py" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${reqs[@]}"
# smoke: the bundled server binary exists and numpy is 1.x
"$venv/bin/python" - <<'PY'
import os, numpy, onnxruntime, pytriton
assert numpy.__version__.split(".")[0] == "1", numpy.__version__
srv = os.path.join(os.path.dirname(pytriton.__file__), "tritonserver", "bin", "tritonserver")
assert os.path.exists(srv), srv
print(f"pytriton ok: numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}, server {srv}", flush=True)
PY
printf '%s' "$want" > "$stamp"
echo "$venv/bin/python"
