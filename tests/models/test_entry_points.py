"""Conformance of every registered entry point with timm's model contract (cf. timm's tests)."""

import copy
import importlib
from pathlib import Path

import pytest
import timm
import torch
from timm.models import model_entrypoint
from torch import nn

import spikezoo.models
from spikezoo.models import FAMILIES, MODEL_NAMES, SpikingVisionModel, families
from spikezoo.models._registry import family_of, timm_module_name
from tests.models.families import FAMILY_NAMES, build, small_and_full_size, tiny

ENTRY_POINTS = list(MODEL_NAMES)
# The full-size models are `slow`; their parameter counts are checked on the meta device.
CASES = small_and_full_size(ENTRY_POINTS)

# The parameter counts of the authors' models, as each family declares them.
REFERENCE_COUNTS = [count for family in families() for count in family.reference_counts]


def test_every_family_module_and_entry_point_is_registered():
    files = {p.stem for p in Path(spikezoo.models.__file__).parent.glob("[!_]*.py")}
    assert files == set(FAMILY_NAMES)  # a family file without its registry line is never imported
    ours = {n for n in timm.list_models() if model_entrypoint(n).__module__.startswith("spikezoo.")}
    assert ours == set(ENTRY_POINTS) and len(ENTRY_POINTS) == len(ours)
    assert {count.entry_point for count in REFERENCE_COUNTS} == set(ENTRY_POINTS)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_module_defines_what_the_shared_code_uses(family):
    module = importlib.import_module(family)
    names = timm.list_models(module=timm_module_name(family))
    assert names, "a family registers at least one entry point"
    for name in names:
        with torch.device("meta"):
            model = timm.create_model(name)
        assert isinstance(model, SpikingVisionModel) and family_of(model) is module.FAMILY
        assert timm.list_pretrained(f"{name}.*"), f"{name} has no tagged default cfg"


@pytest.mark.parametrize(
    "reference",
    REFERENCE_COUNTS,
    ids=lambda count: "-".join([count.entry_point, *(f"{k}={v}" for k, v in count.args.items())]),
)
def test_parameter_count_equals_the_authors_model(reference):
    with torch.device("meta"):
        model = timm.create_model(reference.entry_point, **reference.args)
    built = sum(p.numel() for p in model.parameters())
    assert built + reference.unused == reference.parameters


def _small_input(model, batch=2):
    size = 2 * model.size_multiple
    return torch.randn(batch, model.in_chans, size, size)


def _train_step(model, x):
    out = model(x)
    # away from 0: a randomly initialised deep net may stay silent and output exactly 0
    (out - 1).pow(2).mean().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, "every parameter gets a gradient"
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("case", CASES)
def test_forward_backward_and_grad_checkpointing(case):
    model = build(case, time_steps=2).train()
    twin = copy.deepcopy(model)
    x = _small_input(model, batch=1)

    out, grads = _train_step(model, x)
    assert out.shape == (1, model.num_classes)
    assert torch.isfinite(out).all()
    for param_name, grad in grads.items():
        assert torch.isfinite(grad).all(), param_name
    assert any(g.abs().sum() > 0 for g in grads.values())

    twin.set_grad_checkpointing(True)
    out_ckpt, grads_ckpt = _train_step(twin, x)
    torch.testing.assert_close(out_ckpt, out)
    for param_name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[param_name], grad, msg=param_name)
    twin_state = twin.state_dict()
    for key, value in model.state_dict().items():  # BN and DSSA buffers advanced exactly once
        torch.testing.assert_close(twin_state[key], value, msg=key)


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_default_cfg(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    cfg = model.pretrained_cfg
    assert cfg["hf_hub_id"] == f"spikezoo/{name}.{cfg['tag']}"
    assert cfg["num_classes"] == model.num_classes
    assert "time_steps" not in cfg  # a model argument only (model.time_steps)
    assert cfg["input_size"][0] == model.in_chans
    assert len(cfg["mean"]) == len(cfg["std"]) == model.in_chans
    assert cfg["crop_pct"] > 0 and cfg["interpolation"] in ("bicubic", "bilinear")
    assert cfg["license"] and cfg["paper_ids"].startswith("arXiv:") and cfg["origin_url"]
    first_conv = model.get_submodule(cfg["first_conv"])
    assert isinstance(first_conv, nn.Conv2d) and first_conv.in_channels == model.in_chans
    classifiers = (cfg["classifier"],) if isinstance(cfg["classifier"], str) else cfg["classifier"]
    assert model.get_submodule(classifiers[0]) is model.get_classifier()
    assert set(model.classifier_names) <= set(classifiers)  # e.g. a kd tag's model without kd
    reduction = model.feature_info[-1]["reduction"]
    assert tuple(cfg["pool_size"]) == tuple(s // reduction for s in cfg["input_size"][1:])
    model.check_image_size(*cfg["input_size"][1:])
    for tag in timm.list_pretrained(f"{name}.*"):
        tagged = timm.models.get_pretrained_cfg(tag)
        assert tagged.top1 is None or 50 < tagged.top1 < 100


@pytest.mark.parametrize("case", CASES)
def test_reset_classifier_and_pre_logits(case):
    model = build(case, time_steps=1).eval()
    x = _small_input(model, batch=1)
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape == (1, model.num_features)
        model.reset_classifier(0)
        assert model(x).shape == (1, model.num_features)
        model.reset_classifier(7, global_pool="")
        tokens = (x.shape[-1] // model.feature_info[-1]["reduction"]) ** 2
        assert model(x).shape == (1, tokens, 7)


@pytest.mark.parametrize("case", CASES)
def test_features_only(case):
    model = build(case, features_only=True, time_steps=1, out_indices=(0, -1))
    x = _small_input(model.model, batch=1)
    features = model(x)
    assert len(features) == 2
    for feature, info in zip(features, model.feature_info.get_dicts(), strict=True):
        size = x.shape[-1] // info["reduction"]
        assert feature.shape == (1, info["num_chs"], size, size)


@pytest.mark.parametrize("case", CASES)
def test_in_chans_1(case):
    model = build(case, in_chans=1, time_steps=1)
    out = model(_small_input(model, batch=1))
    assert out.shape == (1, model.num_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_factory_device_and_dtype_reach_every_tensor_and_new_heads(family):
    model = tiny(family, device="meta", dtype=torch.float64).eval()
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    assert all(t.device.type == "meta" for t in tensors.values())
    assert all(t.dtype == torch.float64 for t in tensors.values() if t.is_floating_point())
    model.reset_classifier(3)
    head = model.get_classifier()
    assert (head.weight.device.type, head.weight.dtype, head.training) == (
        "meta",
        torch.float64,
        False,
    )
    with pytest.raises(TypeError, match="not_a_model_arg"):
        tiny(family, device="meta", not_a_model_arg=1)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_training_forward_on_the_meta_device(family):
    # timm's default-cfg test runs forward_features on "meta": spike compaction must let it pass
    model = tiny(family, device="meta").train()
    size = 2 * model.size_multiple
    features = model.forward_features(torch.randn(2, model.in_chans, size, size, device="meta"))
    assert features.device.type == "meta" and features.requires_grad
    assert model.forward_head(features).shape == (2, model.num_classes)
