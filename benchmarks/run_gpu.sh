#!/usr/bin/env bash
# The GPU checks of the CUDA neuron kernels, in one go (about 5 minutes on an H100):
# the tests marked `cuda`, then benchmarks/bench_cuda.py and bench_memory.py --device cuda. Run
# from the repository root on a machine with a CUDA GPU, PyTorch and CuPy. Everything lands in
# $OUT (default ./gpu-results):
# nvidia-smi.txt, versions.txt, tests.log, bench_cuda.log, bench_cuda.json, bench_memory.log,
# bench_memory.json.
# Wheels in ./.whl (e.g. timm, spikingjelly, loguru where the machine lacks them) are installed
# first into /tmp/site, without network access. TESTS_TIMEOUT and BENCH_TIMEOUT (seconds, default
# 180 and 300) bound the tests and each benchmark.
set -u -o pipefail
out=${OUT:-$PWD/gpu-results}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD:$PWD/benchmarks/torch_compat${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
python3 - >"$out/versions.txt" 2>&1 <<'PY'
import importlib

import torch

print("gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
print("torch", torch.__version__, "cuda", torch.version.cuda)
for name in ("cupy", "timm", "triton", "spikingjelly"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as error:
        print(name, "unavailable:", error)
PY
status=0
timeout "${TESTS_TIMEOUT:-180}" python3 -m pytest -m cuda -p no:cacheprovider -q -rs \
  tests/test_cuda.py tests/neurons/test_cupy_backend.py tests/models/test_spike_compaction.py \
  2>&1 | tee "$out/tests.log" || status=1
timeout "${BENCH_TIMEOUT:-300}" python3 benchmarks/bench_cuda.py --json "$out/bench_cuda.json" 2>&1 \
  | tee "$out/bench_cuda.log" || status=1
timeout "${BENCH_TIMEOUT:-300}" python3 benchmarks/bench_memory.py --device cuda --repeats 1 \
  --json "$out/bench_memory.json" 2>&1 | tee "$out/bench_memory.log" || status=1
exit $status
