#!/usr/bin/env bash
# The GPU checks of this project as ONE prepared run, for a session that is lent a GPU machine (device tool:
# 15 device-minutes per task, one chip, a bare image with nvcc 13, CMake, torch, triton, onnx(runtime), pytest,
# no network, no TensorRT builder). Everything else is verified on CPU by CI; this covers what only a GPU shows:
#
#   1. facts: GPU, driver, nvcc, torch/triton versions            -> $OUT/env.txt
#   2. build libzoo_scan_kernels.so + libzoo_trt_plugins.so (sm_90) -> $OUT/build.log
#   3. kernel parity + timings: plugins/harness.py --check --bench  -> $OUT/harness.log, $OUT/harness.json
#      (the plugins' CUDA kernels vs the PyTorch references, fp32/fp16/bf16, T = 1 and long T, zero/given state;
#      --lib names step 2's library, so a change of the build folder here cannot leave it loading another one)
#   4. the GPU-marked tests of the kernel files (pytest -m gpu -rs; step 5 runs the rest): kernels,
#      SSD/selective-scan GPU paths; the TensorRT-engine tests skip with their reason where the image has no TensorRT
#      builder; the tests reuse step 2's build folder (ZOO_PLUGINS_BUILD_DIR: an incremental no-op build)
#                                                                            -> $OUT/pytest_gpu.log
#   5. the models on CUDA (tests/test_gpu.py, test_losses.py, test_sparse_items.py, test_recommend.py; last: the
#      lowest priority): every model's step == full forward (or window forward) with the CPU tests' tiny models and
#      tolerance, sampled softmax with every item == the full cross-entropy, the sparse item gradient == the dense one
#      (and lazy Adam's first step == Adam's), zoo.train on CUDA with and without --amp and with sampled softmax, its
#      checkpoint re-evaluated on the CPU, and zoo.recommend/zoo.embed --device cuda == the CPU -> $OUT/gpu_models.log
#      (a GPU-marked test file in neither step is named in the summary as NOT RUN)
#      (with ZOO_CPU_KERNEL=0: that CPU re-evaluation of a tiny model runs the reference selective scan instead of
#      JIT-compiling the fused CPU kernel, ~20-40 s of the step's 90 on a fresh machine; the CUDA runs do not read
#      it, and the CPU tests already check the kernel == the reference)
#
# On this (CPU) machine, once, in the repository root (.whl/ is git-ignored; 0.2 MB of the 64 MiB that may travel):
#   python3 -m pip download --no-deps kernel-lens==2.0.1 -d .whl      # TensorRT headers for the plugin library
# then call the device tool with:
#   command="bash bench/gpu_session.sh", carry=[".whl"], timeout_s=540
# Each step has its own time limit (150 + 90 + 150 + 90 s, with set-up about 8.5 minutes: under timeout_s; with the
# machine's start it uses most of the 15 device-minutes, so a rerun is of one step at most; at timeout_s=450 only
# step 5 may be cut), a failed step does not stop the
# later ones, and each step's exit status and time are appended to $OUT/summary.txt as soon as it ends (so a run cut
# by the outer timeout keeps the lines of the steps it finished; a status is the command's -- export.build_plugins and
# plugins/harness.py by the table of every command, export.fsutil.EXIT_CODES: build 1 the build failed, 4 CMake or
# nvcc missing; harness 3 a kernel differs from its reference, 4 no CUDA device, 1 the kernels library does not load;
# pytest's own for the tests -- or 124, the step's time limit). Copy the numbers into plugins/README.md
# ("Timings") and the closing note; give the machine back afterwards. Not here: TensorRT engine builds (the image has no
# TensorRT builder and its wheels are larger than what may travel) and mamba-ssm parity (its wheels need a network
# build); both stay unverified until a machine with them is lent. Flow checked on CPU only (every step then reports
# "no CUDA"); this script has not yet run on a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_session_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 ZOO_DATA_DIR="${ZOO_DATA_DIR:-/nonexistent}"
export PYTHONPATH="$PWD" ZOO_PLUGINS_BUILD_DIR="$PWD/build/plugins"
: > "$OUT/summary.txt"
note() { echo "$1" | tee -a "$OUT/summary.txt"; }
step() {  # step NAME SECONDS LOGFILE -- command...
    local name=$1 limit=$2 log=$3
    shift 4
    local t0=$SECONDS
    echo "=== [$name] $* (limit ${limit}s)" | tee -a "$OUT/$log"
    timeout -k 15 "$limit" "$@" 2>&1 | tee -a "$OUT/$log"      # -k: a step stuck past SIGTERM is killed
    note "$name: exit ${PIPESTATUS[0]}, $((SECONDS - t0)) s"
}

if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    rc=$?
    note "pip install .whl (TensorRT headers): exit $rc"
    [ "$rc" -eq 0 ] && export PYTHONPATH="/tmp/site:$PWD"
else
    note "no .whl/ carried: the plugin library needs TensorRT headers (kernel-lens), only the kernels library is built"
fi

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    nvcc --version | tail -n 2
    cmake --version | head -n 1
    python3 -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0))"
    python3 -c "import triton; print('triton', triton.__version__)" || true
    python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" || true
    python3 -c "import tensorrt as t; print('tensorrt', t.__version__)" || echo "tensorrt: not importable (no builder)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step build 150 build.log -- python3 -m export.build_plugins --build-dir "$ZOO_PLUGINS_BUILD_DIR" --arch 90 -j 16
step harness 90 harness.log -- python3 plugins/harness.py --lib "$ZOO_PLUGINS_BUILD_DIR/libzoo_scan_kernels.so" \
    --check --bench --json "$OUT/harness.json"
step pytest-gpu 150 pytest_gpu.log -- python3 -m pytest -q -rs -m gpu -p no:cacheprovider \
    tests/test_trt_plugins.py tests/test_ops.py tests/test_ssd_ops.py
GPU_MODEL_TESTS="tests/test_gpu.py tests/test_losses.py tests/test_sparse_items.py tests/test_recommend.py"
# shellcheck disable=SC2086
step gpu-models 90 gpu_models.log -- env ZOO_CPU_KERNEL=0 python3 -m pytest -q -rs -s -m gpu -p no:cacheprovider \
    $GPU_MODEL_TESTS
# a GPU-marked test file in neither pytest step would never run on the one GPU session: say so in the summary
for f in $(grep -l "pytest.mark.gpu" tests/*.py 2>/dev/null); do
    case " tests/test_trt_plugins.py tests/test_ops.py tests/test_ssd_ops.py $GPU_MODEL_TESTS " in
        *" $f "*) ;;
        *) note "NOT RUN: $f has GPU-marked tests in neither pytest step (add it to bench/gpu_session.sh)";;
    esac
done

echo "=== summary"
cat "$OUT/summary.txt"
