"""A new model family is one declarative file plus one line in the registry, and everything
picks it up.

The tests add two toy families the way a contributor would: they write each family module into
a copy of the package and add its line to ``FAMILIES``; a fresh interpreter then finds each new
entry point in ``MODEL_NAMES``, ``spikezoo list``, ``spikezoo profile``, the model card and the
checkpoint mismatch hints, and loads an "authors'" checkpoint through the family's
``checkpoint_filter_fn``. The second toy's attention layer declares its heads through the
:class:`~spikezoo.layers.SpikingAttention` protocol, so it also gets per-head firing rates. The
copy keeps timm's global registry of this process free of the toys; one interpreter checks
both (it starts in seconds, importing torch and timm).
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from torch import nn

import spikezoo
import spikezoo.layers
import spikezoo_cli
from spikezoo.models import MODEL_NAMES, SpikeDrivenTransformer, _registry, family_of
from spikezoo.models import spike_driven_transformer as sdt

TOY_FAMILY = '''"""A toy family: a convolutional stem, then spiking blocks."""

from timm.models import register_model
from torch import nn

from spikezoo.layers import ConvBN
from spikezoo.models import ModelFamily, ReferenceCount, SpikingVisionModel, TinyConfig
from spikezoo.models._family import rename_passes
from spikezoo.models._pretrained import IMAGENET_CFG, spikezoo_default_cfgs
from spikezoo.weights import AuthorsFile

{block}

class {cls}(SpikingVisionModel):
    feature_units = "blocks"
    paper = "spike_driven_transformer"
    head_neuron = False
    size_multiple = 1

    def build_features(self, neuron, drop_path_rate, dim=8):
        self.num_features = self.head_hidden_size = dim
        self.stem = ConvBN(self.in_chans, dim, 3)
        self.blocks = nn.Sequential(*(ToyBlock(dim, neuron) for _ in range(2)))
        self.feature_info = [dict(num_chs=dim, reduction=1, module=f"blocks.{{i}}") for i in [0, 1]]

    def forward_stem(self, x):
        return self.stem(x)


default_cfgs = spikezoo_default_cfgs(
    dict(IMAGENET_CFG, first_conv="stem.conv", paper_name="Toy", paper_ids="arXiv:0000.00000"),
    {{
        "{name}.toy": dict(
            num_classes=10,
            input_size=(3, 8, 8),
            pool_size=(8, 8),
            authors_file=AuthorsFile(page="https://example.org/toy"),  # listed as having weights
        )
    }},
)

FAMILY = ModelFamily(
    model_cls={cls},
    default_cfgs=default_cfgs,
    authors_keys=rename_passes([(r"^conv_stem\\.", "stem.")]),
    citation="@misc{{toy2026, title = {{A toy family}}}}",
    reference_counts=(ReferenceCount("{name}", {parameters}),),
    tiny=TinyConfig("{name}", dict(dim=4, num_classes=5, time_steps=2)),
)


@register_model
def {name}(pretrained=False, **kwargs):
    return FAMILY.create("{name}", pretrained, **kwargs)
'''

#: Blocks without attention: a spiking conv.
CONV_BLOCK = """
class ToyBlock(ConvBN):
    def __init__(self, dim, neuron):
        super().__init__(dim, dim, 3, neuron=neuron)
"""

#: Blocks with one new attention layer: a spiking gate per head, as the protocol declares it.
ATTENTION_BLOCK = """
from spikezoo.layers import SpikingAttention


class ToyBlock(SpikingAttention):
    head_layout = {"gate_lif": "channels"}
    attention_map = ("gate_lif", 3)  # [T, B, heads, d, H, W]: average d

    def __init__(self, dim, neuron):
        super().__init__()
        self.num_heads = 2
        self.proj = ConvBN(dim, dim, 1, neuron=neuron)
        self.gate_lif = neuron()

    def forward(self, x):
        return x + self.proj(x) * self.gate_lif(x)
"""

CHECKS = """
import contextlib, io, json, sys
import timm, torch
from spikezoo.analysis import FiringRateMonitor
from spikezoo.cli import main
from spikezoo.hub.model_card import model_card
from spikezoo.models import CheckpointMismatchError, MODEL_NAMES, family_of, guess_architecture


def check(name):
    model = timm.create_model(name).eval()
    authors = {k.replace("stem.", "conv_stem.", 1): v for k, v in model.state_dict().items()}
    torch.save({"model": authors, "epoch": 3}, f"{name}.pth")
    overlay = dict(file=f"{name}.pth")
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay).eval()
    state = loaded.state_dict()
    same = all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    other = timm.create_model("sdt_2_256_cifar")
    try:
        family_of(other).checkpoint_filter_fn(authors, other)
    except CheckpointMismatchError as error:
        hint = error.likely_model
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        codes = [main(["list", f"{name}*"]), main(["list", "--pretrained", f"{name}*"])]
    listed = out.getvalue().split()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        args = [name, "--format", "json", "--repeats", "1", "--device", "cpu"]
        codes.append(main(["profile", *args]))
    profile = json.loads(out.getvalue())
    with FiringRateMonitor(loaded) as monitor:
        loaded(torch.rand(1, 3, 8, 8))
    provenance = dict(source="toy.pth", sha256="0", converted="today", spikezoo_version="0")
    card = model_card(loaded, f"{name}.toy", provenance)
    return dict(
        model_names=list(MODEL_NAMES),
        listed=listed,
        codes=codes,
        profiled=profile["model"],
        guess=guess_architecture(authors),
        hint=hint,
        loaded=same,
        logits=list(loaded(torch.rand(1, 3, 8, 8)).shape),
        parameters=sum(p.numel() for p in model.parameters()),
        declared=[count.parameters for count in family_of(model).reference_counts],
        heads=sorted({row[0] for row in monitor.rates().per_head().rows}),
        cited="@misc{toy2026, title = {A toy family}}" in card,
    )


print(json.dumps({name: check(name) for name in sys.argv[1:]}))
"""

#: ToyNet's parameter count at its default width (stem 3->8, two 8->8 3x3 conv blocks, head).
TOY_PARAMETERS = 8 * 3 * 9 + 2 * 8 + 2 * (8 * 8 * 9 + 2 * 8) + 10 * 8 + 10
#: The same with the attention blocks (1x1 projections instead of 3x3 convs).
TOY_ATTENTION_PARAMETERS = 8 * 3 * 9 + 2 * 8 + 2 * (8 * 8 + 2 * 8) + 10 * 8 + 10


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


#: The toy families: module name -> (entry point, class name, blocks, parameter count).
TOYS = {
    "toy_family": ("toy_net", "ToyNet", CONV_BLOCK, TOY_PARAMETERS),
    "toy_attention_family": (
        "toy_attention_net",
        "ToyAttentionNet",
        ATTENTION_BLOCK,
        TOY_ATTENTION_PARAMETERS,
    ),
}


@pytest.fixture(scope="module")
def found(tmp_path_factory) -> dict:
    """Both toy families added to one copy of the package; :data:`CHECKS` run on each."""
    root = tmp_path_factory.mktemp("toys")
    package = root / "spikezoo"
    shutil.copytree(Path(spikezoo.__file__).parent, package)
    shutil.copy(Path(spikezoo_cli.__file__), root)  # the console script the CLI imports
    for module, (name, cls, block, parameters) in TOYS.items():
        source = TOY_FAMILY.format(name=name, cls=cls, block=block, parameters=parameters)
        add_family(package, module, source)
    result = subprocess.run(
        [sys.executable, "-c", CHECKS, *(name for name, *_ in TOYS.values())],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def check_everywhere(found: dict, name: str, parameters: int) -> None:
    assert found["model_names"] == [*MODEL_NAMES, "toy_net", "toy_attention_net"]
    assert found["codes"] == [0, 0, 0] and found["listed"] == [name, f"{name}.toy"]
    assert found["profiled"] == name
    assert found["guess"] == name  # through the toy's own key mapping
    assert found["hint"] == name  # an error loading the toy's file elsewhere names it
    assert found["loaded"] and found["logits"] == [1, 10]
    assert found["parameters"] == parameters and found["declared"] == [parameters]
    assert found["cited"]


def test_a_family_added_by_one_file_and_one_registry_line_shows_up_everywhere(found):
    check_everywhere(found["toy_net"], "toy_net", TOY_PARAMETERS)
    assert found["toy_net"]["heads"] == []


def test_a_family_with_a_new_attention_layer_gets_per_head_rates(found):
    check_everywhere(found["toy_attention_net"], "toy_attention_net", TOY_ATTENTION_PARAMETERS)
    assert found["toy_attention_net"]["heads"] == ["blocks.0.gate_lif", "blocks.1.gate_lif"]


def test_family_of_finds_the_declaration_through_subclasses_and_refuses_other_models():
    class Subclassed(SpikeDrivenTransformer):
        pass

    assert family_of(Subclassed) is sdt.FAMILY
    with pytest.raises(LookupError, match="Linear belongs to no spikezoo model family"):
        family_of(nn.Linear(2, 2))


def test_a_registered_module_without_a_declaration_is_named(monkeypatch):
    bare = ModuleType("spikezoo.models.bare_family")
    monkeypatch.setattr(_registry, "family_modules", lambda: [bare])
    with pytest.raises(TypeError, match="bare_family must declare FAMILY = ModelFamily"):
        _registry.families()
