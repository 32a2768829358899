#!/usr/bin/env bash
# benchmarks/bench_models.py on a CUDA GPU, in one go (sized for about 5 minutes on an H100 or
# H200): the four SDT and SpikingResformer models at the CUDA batch sizes, float32 and bf16
# autocast, eager for every implementation and torch.compile for spikezoo on the CIFAR models,
# plus the roofline. (The later families of bench_models.py's MODELS are not in this run: it was
# sized without them.)
# Run from the repository root on a machine with a CUDA GPU, PyTorch and CuPy, without network:
#   - wheels in ./.whl (timm, einops, safetensors, huggingface_hub, spikingjelly 2.x, ... where the
#     machine lacks them) are installed into /tmp/site first;
#   - the authors' peers come from benchmarks/.peers (made by benchmarks/setup_peers.sh on a
#     machine with the mirrors; carry the folder along, about 7 MB), or, if it is absent, are
#     built here from the mirrors (SDT_MIRROR, RESFORMER_MIRROR, ...: see setup_peers.sh),
#     .whl/spikingjelly-0.0.0.0.14-*.whl and .whl/torchinfo-*.whl.
# Results land in $OUT (default ./gpu-results): nvidia-smi.txt, bench_models_cuda.{log,json,md}.
# Render the plots afterwards on any machine:
#   python benchmarks/bench_models.py --from-json gpu-results/bench_models_cuda.json --plots DIR
set -u -o pipefail
out=${OUT:-$PWD/gpu-results}
mkdir -p "$out"
shopt -s nullglob
wheels=()
for wheel in .whl/*.whl; do
  [[ "$wheel" == *spikingjelly-0.0.0.0.14-* || "$wheel" == *torchinfo-* ]] || wheels+=("$wheel")
done
if ((${#wheels[@]})); then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "${wheels[@]}" || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [[ ! -f benchmarks/.peers/sj014/spikingjelly/__init__.py ]]; then
  sj014=(.whl/spikingjelly-0.0.0.0.14-*.whl) torchinfo=(.whl/torchinfo-*.whl)
  SJ014_WHEEL=${sj014[0]:-} TORCHINFO_WHEEL=${torchinfo[0]:-} PYTHON=python3 \
    bash benchmarks/setup_peers.sh ||
    echo "the authors' peers are not set up: their rows will be skipped"
fi
export PYTHONPATH=$PWD:$PWD/benchmarks/torch_compat${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
timeout "${BENCH_TIMEOUT:-420}" python3 benchmarks/bench_models.py --device cuda --threads 8 \
  --models sdt_8_384,sdt_2_512_cifar,spikingresformer_ti,spikingresformer_cifar \
  --compile-models sdt_2_512_cifar,spikingresformer_cifar --compile-impls spikezoo \
  --json "$out/bench_models_cuda.json" --markdown "$out/bench_models_cuda.md" 2>&1 |
  tee "$out/bench_models_cuda.log"
