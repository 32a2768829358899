"""A new model family is one file plus one line in the registry, and everything picks it up.

The test adds a toy family the way a contributor would: it writes the family module into a
copy of the package and adds its line to ``FAMILIES``; a fresh interpreter then finds the new
entry point in ``MODEL_NAMES``, ``spikezoo list`` and ``guess_architecture``, and loads an
"authors'" checkpoint through the family's ``checkpoint_filter_fn``. The copy keeps timm's
global registry of this process free of the toy.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import spikezoo
from spikezoo.models import MODEL_NAMES

TOY_FAMILY = '''"""A toy family: a convolutional stem, then spiking conv blocks."""

from timm.models import register_model
from torch import nn

from spikezoo.layers import ConvBN
from spikezoo.models._base import SpikingVisionModel, neuron_factory, trunc_normal_init
from spikezoo.models._checkpoint import filter_checkpoint, rename_keys, unwrap_state_dict
from spikezoo.models._pretrained import IMAGENET_CFG, build_spiking_model, spikezoo_default_cfgs


class ToyNet(SpikingVisionModel):
    feature_units = "blocks"
    size_multiple = 1

    def __init__(self, in_chans=3, num_classes=10, dim=8, time_steps=2, neuron="lif",
                 global_pool="avg", per_step_logits=False, feature_time_reduction="mean",
                 device=None, dtype=None):
        super().__init__(
            in_chans, num_classes, time_steps, global_pool, per_step_logits, feature_time_reduction
        )
        make_neuron = neuron_factory(neuron, surrogate="sigmoid")
        self.num_features = self.head_hidden_size = dim
        self.stem = ConvBN(in_chans, dim, 3)
        self.blocks = nn.Sequential(*(ConvBN(dim, dim, 3, neuron=make_neuron) for _ in [0, 1]))
        self.feature_info = [dict(num_chs=dim, reduction=1, module=f"blocks.{i}") for i in [0, 1]]
        self.head_lif = nn.Identity()
        self.head = self._make_head(dim, num_classes)
        self.apply(trunc_normal_init)
        self.to(device=device, dtype=dtype)

    def forward_stem(self, x):
        return self.stem(x)


def remap_state_dict(state_dict, model):
    return rename_keys(unwrap_state_dict(state_dict), [(r"^conv_stem\\.", "stem.")])


def checkpoint_filter_fn(state_dict, model):
    return filter_checkpoint(state_dict, model, remap_state_dict, exempt=("head.",))


default_cfgs = spikezoo_default_cfgs(
    dict(IMAGENET_CFG, first_conv="stem.conv"),
    {"toy_net.toy": dict(num_classes=10, input_size=(3, 8, 8), pool_size=(8, 8))},
)


@register_model
def toy_net(pretrained=False, **kwargs):
    return build_spiking_model(ToyNet, "toy_net", pretrained, num_feature_units=2, **kwargs)
'''

CHECKS = """
import contextlib, io, json
import timm, torch
from spikezoo.cli import main
from spikezoo.models import MODEL_NAMES, guess_architecture

model = timm.create_model("toy_net").eval()
authors = {k.replace("stem.", "conv_stem.", 1): v for k, v in model.state_dict().items()}
torch.save({"model": authors, "epoch": 3}, "toy.pth")
loaded = timm.create_model("toy_net", pretrained=True, pretrained_cfg_overlay=dict(file="toy.pth"))
listed = io.StringIO()
with contextlib.redirect_stdout(listed):
    codes = [main(["list", "toy_*"]), main(["list", "--pretrained", "toy_*"])]
print(json.dumps(dict(
    model_names=list(MODEL_NAMES),
    listed=listed.getvalue().split(),
    codes=codes,
    guess=guess_architecture(authors),
    loaded=all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items()),
    logits=list(loaded.eval()(torch.rand(1, 3, 8, 8)).shape),
)))
"""


def add_family(package: Path, name: str, source: str) -> None:
    """What a contributor does: the family's file, and its line at the end of FAMILIES."""
    (package / "models" / f"{name}.py").write_text(source)
    registry = package / "models" / "_registry.py"
    text, count = re.subn(
        r"(\nFAMILIES: tuple\[str, \.\.\.\] = \(\n(?:    .*\n)*)\)",
        rf'\1    "spikezoo.models.{name}",\n)',
        registry.read_text(),
    )
    assert count == 1, "the registry's FAMILIES tuple was not found"
    registry.write_text(text)


def test_a_family_added_by_one_file_and_one_registry_line_shows_up_everywhere(tmp_path):
    package = tmp_path / "spikezoo"
    shutil.copytree(
        Path(spikezoo.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    add_family(package, "toy_family", TOY_FAMILY)
    result = subprocess.run(
        [sys.executable, "-c", CHECKS],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.splitlines()[-1])
    assert found["model_names"] == [*MODEL_NAMES, "toy_net"]
    assert found["codes"] == [0, 0] and found["listed"] == ["toy_net", "toy_net.toy"]
    assert found["guess"] == "toy_net"  # through the toy's own key mapping
    assert found["loaded"] and found["logits"] == [1, 10]
