#!/usr/bin/env bash
# Run timm's own model tests (tests/test_models.py of the installed timm version) against
# spikezoo's entry points, and nothing else.
#
#   tools/run_timm_model_tests.sh                       # every spikezoo entry point
#   SPIKEZOO_BACKEND=torch tools/run_timm_model_tests.sh -k "not torchscript"  # eager neurons:
#                                                       # no kernel compiles (6 min on 2 cores)
#   SPIKEZOO_MODELS="sdt_2_256_cifar spikingresformer_cifar" tools/run_timm_model_tests.sh -k fx
#
# timm's test file comes from the timm sdist on PyPI (pip download), into a temporary
# directory; it is never copied into this repository. Extra arguments go to pytest. The tests
# of pretrained tags download from the Hugging Face Hub; offline, set HF_HUB_OFFLINE=1 so that
# they fail at once instead of retrying.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=$(python -c "import timm; print(timm.__version__)")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python -m pip download --quiet --no-deps --no-binary :all: "timm==$version" -d "$work"
tar -xzf "$work/timm-$version.tar.gz" -C "$work" "timm-$version/tests/test_models.py"
cp "$work/timm-$version/tests/test_models.py" "$work/test_models.py"

# timm's tests take their model names from timm.list_models() at import time; this conftest
# registers spikezoo's models first and keeps only the tests of those models.
cat > "$work/conftest.py" <<'PY'
import os

import spikezoo.models

SELECTED = set(os.environ.get("SPIKEZOO_MODELS", "").split()) or set(spikezoo.models.MODEL_NAMES)


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        name = str(params.get("model_name", "")).split(".")[0]  # "model.tag" for pretrained
        (keep if name in SELECTED else drop).append(item)
    items[:] = keep
    config.hook.pytest_deselected(items=drop)
PY

cd "$work"
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" python -m pytest test_models.py \
    -p no:cacheprovider -W ignore::pytest.PytestUnknownMarkWarning -q -rfEs "$@"
