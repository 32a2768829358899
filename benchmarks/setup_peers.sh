#!/usr/bin/env bash
# Benchmark-only environment for the authors' peers of benchmarks/bench_models.py.
#
# Puts, under $SPIKEZOO_PEERS_DIR (default benchmarks/.peers, which git ignores; never part of
# the package; benchmarks/peers/authors.py reads the same variable):
#   src/sdt/              BICLab/Spike-Driven-Transformer at SDT_COMMIT
#   src/spikingresformer/ xyshi2000/SpikingResformer at RESFORMER_COMMIT
#   src/sdt2/             BICLab/Spike-Driven-Transformer-V2 (Meta-SpikeFormer) at SDT2_COMMIT
#   src/sdt3/             BICLab/Spike-Driven-Transformer-V3 (E-SpikeFormer) at SDT3_COMMIT
#   src/spikformer/       ZK-Zhou/spikformer at SPIKFORMER_COMMIT
#   src/spikingformer/    zhouchenlin2096/Spikingformer at SPIKINGFORMER_COMMIT
#   src/qkformer/         zhouchenlin2096/QKFormer at QKFORMER_COMMIT
#                         (of these five, only the folder of the model file that
#                         benchmarks/peers/authors.py imports, and the licence where there is one)
#   sj014/spikingjelly/   spikingjelly 0.0.0.0.14 (the version these codes were written for),
#                         installed with `pip --target`, so it cannot replace spikingjelly 2.x
#                         in the environment: bench_models.py imports it under its own
#                         sys.modules entries (see benchmarks/peers/authors.py).
#   deps/torchinfo/       torchinfo, which the Meta-SpikeFormer and E-SpikeFormer model files
#                         import at the top (for their `__main__` summaries), also `pip --target`.
#
# Sources: git clone from GitHub, or from local mirrors without network, e.g.
#   SDT_MIRROR=/path/to/Spike-Driven-Transformer(.git)  RESFORMER_MIRROR=/path/to/SpikingResformer
#   SDT2_MIRROR=...  SDT3_MIRROR=...  SPIKFORMER_MIRROR=...  SPIKINGFORMER_MIRROR=...
#   QKFORMER_MIRROR=...
# (a clone or a bare git directory holding the pinned commit). The wheels come from PyPI, or from
# local files: SJ014_WHEEL=/path/to/spikingjelly-0.0.0.0.14-py3-none-any.whl,
# TORCHINFO_WHEEL=/path/to/torchinfo-1.8.0-py3-none-any.whl.
# The authors' code needs nothing else that spikezoo's environment lacks (torch, timm, einops,
# numpy).
set -euo pipefail

SDT_REPO=https://github.com/BICLab/Spike-Driven-Transformer
SDT_COMMIT=3faa82272eb499e4d56ea77707d4536e7c69a54b
RESFORMER_REPO=https://github.com/xyshi2000/SpikingResformer
RESFORMER_COMMIT=3f751275dedfda8b0a4ed0bf50e85e02a4335f3e
SDT2_REPO=https://github.com/BICLab/Spike-Driven-Transformer-V2
SDT2_COMMIT=35f245f4f79acf1a2b3ef22698c58ab05c1ede33
SDT3_REPO=https://github.com/BICLab/Spike-Driven-Transformer-V3
SDT3_COMMIT=00fcd1fd5d9c65fe9a26579ed512a20c6a303deb
SPIKFORMER_REPO=https://github.com/ZK-Zhou/spikformer
SPIKFORMER_COMMIT=621268981827af47aa666c1b5f774de4281d90ad
SPIKINGFORMER_REPO=https://github.com/zhouchenlin2096/Spikingformer
SPIKINGFORMER_COMMIT=4378623b82bb1999b137244950ad648566e148fd
QKFORMER_REPO=https://github.com/zhouchenlin2096/QKFormer
QKFORMER_COMMIT=c2a00e8e54538e76f5954614a60c1d53824bbee9
SJ014=spikingjelly==0.0.0.0.14
TORCHINFO=torchinfo==1.8.0

here=$(cd "$(dirname "$0")" && pwd)
peers=${SPIKEZOO_PEERS_DIR:-$here/.peers}
python=${PYTHON:-python3}
mkdir -p "$peers/src"

# checkout NAME URL COMMIT MIRROR [PATH...]: the files of COMMIT (no .git; only the folders
# PATH... where given, those that peers/authors.py imports) in $peers/src/NAME
checkout() {
  local name=$1 url=$2 commit=$3 mirror=$4 dest=$peers/src/$1
  shift 4
  if [[ -f "$dest/.commit" && "$(cat "$dest/.commit")" == "$commit" ]]; then
    echo "$name: $commit already in place"
    return
  fi
  local gitdir
  gitdir=$(mktemp -d)
  if [[ -n "$mirror" ]]; then
    git clone --quiet --bare --no-hardlinks "$mirror" "$gitdir/repo.git"
  else
    git clone --quiet --bare "$url" "$gitdir/repo.git"
  fi
  rm -rf "$dest"
  mkdir -p "$dest"
  git --git-dir "$gitdir/repo.git" archive "$commit" -- "$@" | tar -x -C "$dest"
  echo "$commit" >"$dest/.commit"
  rm -rf "$gitdir"
  echo "$name: $commit from ${mirror:-$url}"
}

# install FOLDER PACKAGE WHEEL: PACKAGE (or the local WHEEL) with `pip --target $peers/FOLDER`
install() {
  local folder=$1 package=$2 wheel=$3 module=${2%%=*}
  if [[ -f "$peers/$folder/$module/__init__.py" ]]; then
    echo "$package already in $peers/$folder"
    return
  fi
  "$python" -m pip install --quiet --no-deps --no-compile --target "$peers/$folder" \
    "${wheel:-$package}"
  echo "$package in $peers/$folder"
}

checkout sdt "$SDT_REPO" "$SDT_COMMIT" "${SDT_MIRROR:-}"
checkout spikingresformer "$RESFORMER_REPO" "$RESFORMER_COMMIT" "${RESFORMER_MIRROR:-}"
checkout sdt2 "$SDT2_REPO" "$SDT2_COMMIT" "${SDT2_MIRROR:-}" classification
checkout sdt3 "$SDT3_REPO" "$SDT3_COMMIT" "${SDT3_MIRROR:-}" SDT_V3/Classification/Model_Base
checkout spikformer "$SPIKFORMER_REPO" "$SPIKFORMER_COMMIT" "${SPIKFORMER_MIRROR:-}" \
  cifar10 LICENSE
checkout spikingformer "$SPIKINGFORMER_REPO" "$SPIKINGFORMER_COMMIT" "${SPIKINGFORMER_MIRROR:-}" \
  cifar10 LICENSE
checkout qkformer "$QKFORMER_REPO" "$QKFORMER_COMMIT" "${QKFORMER_MIRROR:-}" cifar10
install sj014 "$SJ014" "${SJ014_WHEEL:-}"
install deps "$TORCHINFO" "${TORCHINFO_WHEEL:-}"
echo "peers ready in $peers"
