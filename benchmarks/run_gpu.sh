#!/usr/bin/env bash
# Issue 20's GPU checks in one go, sized for under 8 minutes on one H100/H200:
#   tests:    the tests marked `cuda` (CuPy kernels, spike compaction, fused BN)    timeout  90 s
#   lif:      bench_gpu.py --part lif: LIF at T = 4, 16 vs copy bandwidth           timeout  90 s
#   training: bench_gpu.py --part training: sdt_8_768, spikingresformer_s, spikezoo
#             bf16 autocast vs the authors' float32 CuPy code, images/s             timeout 150 s
#   profile:  bench_gpu.py --part profile: the same steps under torch.profiler      timeout 120 s
# (seen on an H200, 2026-12-04, three runs: 51-77, 34-37, 19-29 and, with five profiled
# implementations where there are seven now, 42-48 s; 160-172 s in all). STEPS names the steps to
# run (default all four, in this order); each has its own timeout (STEP_TIMEOUT_<NAME>, e.g.
# STEP_TIMEOUT_TRAINING, overrides it) and the run a total budget (TOTAL_BUDGET, default 460 s,
# which also covers up to 60 s of setting up the authors' code): a step starts only if its
# timeout fits in what is left of the budget, else it is skipped with a message, so the run
# ends in time and keeps what it measured.
# Run from the repository root on a machine with a CUDA GPU, PyTorch and CuPy, without network:
#   - wheels in ./.whl (timm, einops, spikingjelly, ... where the machine lacks them) are
#     installed into /tmp/site first;
#   - the authors' code comes from benchmarks/.peers (made by benchmarks/setup_peers.sh; carry
#     the folder along), or is built here from SDT_MIRROR / RESFORMER_MIRROR and
#     .whl/spikingjelly-0.0.0.0.14-*.whl; without it the authors' rows say why.
#   - On a torch older than 2.14, benchmarks/torch_compat adapts torch.compile's keywords.
# Results land in $OUT (default ./gpu-results): steps.log, versions.txt, nvidia-smi.txt,
# tests.log and {lif,training,profile}.{log,json,md}.
# PYTHON names the interpreter (default python3).
# DRY_RUN=1 runs the same steps on the CPU, tiny (bench_gpu.py --dry-run), and skips the tests
# that need a GPU: it checks the script without one.
set -u -o pipefail
out=${OUT:-$PWD/gpu-results}
budget=${TOTAL_BUDGET:-460}
dry_run=${DRY_RUN:-0}
python=${PYTHON:-python3}
steps=" ${STEPS:-tests lif training profile} "
mkdir -p "$out"
start=$SECONDS
status=0
log() { echo "[run_gpu $((SECONDS - start))s] $*" | tee -a "$out/steps.log"; }

# step NAME TIMEOUT COMMAND...: run COMMAND under TIMEOUT if it fits in the budget left
step() {
  local name=$1 limit=$2
  shift 2
  [[ "$steps" == *" $name "* ]] || return 0
  local left=$((budget - (SECONDS - start)))
  if ((limit > left)); then
    log "$name: skipped, its timeout ${limit}s exceeds the ${left}s left of the ${budget}s budget"
    status=1
    return
  fi
  log "$name: start (timeout ${limit}s)"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  ((rc == 124)) && log "$name: timed out after ${limit}s"
  ((rc != 0)) && status=1
  log "$name: done, exit $rc"
}

shopt -s nullglob
wheels=()
for wheel in .whl/*.whl; do
  [[ "$wheel" == *spikingjelly-0.0.0.0.14-* ]] || wheels+=("$wheel")
done
if ((${#wheels[@]})); then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "${wheels[@]}" || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [[ "$dry_run" != 1 && ! -f benchmarks/.peers/sj014/spikingjelly/__init__.py ]]; then
  sj014=(.whl/spikingjelly-0.0.0.0.14-*.whl)
  SJ014_WHEEL=${sj014[0]:-} PYTHON=$python timeout 60 bash benchmarks/setup_peers.sh ||
    log "the authors' peers are not set up: their rows will say why"
fi
export PYTHONPATH=$PWD:$PWD/benchmarks/torch_compat${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
"$python" - >"$out/versions.txt" 2>&1 <<'PY'
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

bench=("$python" benchmarks/bench_gpu.py)
if [[ "$dry_run" == 1 ]]; then
  bench+=(--dry-run)
  steps=${steps/ tests / }
  log "tests: skipped in a dry run (they need a GPU)"
else
  nvidia-smi >"$out/nvidia-smi.txt" 2>&1
fi
declare -A timeouts=([tests]=90 [lif]=90 [training]=150 [profile]=120)
for name in tests lif training profile; do
  override=STEP_TIMEOUT_${name^^}
  limit=${!override:-${timeouts[$name]}}
  if [[ $name == tests ]]; then
    step tests "$limit" "$python" -m pytest -m cuda -p no:cacheprovider -q -rs \
      tests/test_cuda.py tests/neurons/test_cupy_backend.py tests/models/test_spike_compaction.py \
      tests/layers/test_bn_neuron.py
  else
    step "$name" "$limit" "${bench[@]}" --part "$name" \
      --json "$out/$name.json" --markdown "$out/$name.md"
  fi
done
log "finished in $((SECONDS - start))s of the ${budget}s budget, status $status"
exit $status
