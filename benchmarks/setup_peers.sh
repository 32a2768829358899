#!/usr/bin/env bash
# Benchmark-only environment for the authors' peers of benchmarks/bench_models.py.
#
# Puts, under $SPIKEZOO_PEERS_DIR (default benchmarks/.peers, which git ignores; never part of
# the package; benchmarks/peers/authors.py reads the same variable):
#   src/sdt/              BICLab/Spike-Driven-Transformer at SDT_COMMIT
#   src/spikingresformer/ xyshi2000/SpikingResformer at RESFORMER_COMMIT
#   sj014/spikingjelly/   spikingjelly 0.0.0.0.14 (the version both codes were written for),
#                         installed with `pip --target`, so it cannot replace spikingjelly 2.x
#                         in the environment: bench_models.py imports it under its own
#                         sys.modules entries (see benchmarks/peers/authors.py).
#
# Sources: git clone from GitHub, or from local mirrors without network:
#   SDT_MIRROR=/path/to/Spike-Driven-Transformer(.git)  RESFORMER_MIRROR=/path/to/SpikingResformer
# (a clone or a bare git directory holding the pinned commit). The wheel comes from PyPI, or
# from a local file: SJ014_WHEEL=/path/to/spikingjelly-0.0.0.0.14-py3-none-any.whl.
# The authors' code needs nothing else that spikezoo's environment lacks (torch, timm, numpy).
set -euo pipefail

SDT_REPO=https://github.com/BICLab/Spike-Driven-Transformer
SDT_COMMIT=3faa82272eb499e4d56ea77707d4536e7c69a54b
RESFORMER_REPO=https://github.com/xyshi2000/SpikingResformer
RESFORMER_COMMIT=3f751275dedfda8b0a4ed0bf50e85e02a4335f3e
SJ014=spikingjelly==0.0.0.0.14

here=$(cd "$(dirname "$0")" && pwd)
peers=${SPIKEZOO_PEERS_DIR:-$here/.peers}
python=${PYTHON:-python3}
mkdir -p "$peers/src"

# checkout NAME URL COMMIT MIRROR: the files of COMMIT (no .git) in $peers/src/NAME
checkout() {
  local name=$1 url=$2 commit=$3 mirror=$4 dest=$peers/src/$1
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
  git --git-dir "$gitdir/repo.git" archive "$commit" | tar -x -C "$dest"
  echo "$commit" >"$dest/.commit"
  rm -rf "$gitdir"
  echo "$name: $commit from ${mirror:-$url}"
}

checkout sdt "$SDT_REPO" "$SDT_COMMIT" "${SDT_MIRROR:-}"
checkout spikingresformer "$RESFORMER_REPO" "$RESFORMER_COMMIT" "${RESFORMER_MIRROR:-}"

if [[ -f "$peers/sj014/spikingjelly/__init__.py" ]]; then
  echo "spikingjelly 0.0.0.0.14 already in $peers/sj014"
else
  "$python" -m pip install --quiet --no-deps --no-compile --target "$peers/sj014" \
    "${SJ014_WHEEL:-$SJ014}"
  echo "spikingjelly 0.0.0.0.14 in $peers/sj014"
fi
echo "peers ready in $peers"
