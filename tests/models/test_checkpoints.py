"""Loading the authors' checkpoint files safely, converting keys, and explaining mismatches."""

import pickle

import pytest
import timm
import torch

import spikezoo  # noqa: F401
from spikezoo.models import CheckpointMismatchError, guess_architecture
from spikezoo.models import spike_driven_transformer as sdt
from spikezoo.models import spike_driven_transformer_v2 as sdt_v2
from spikezoo.models import spiking_resformer as resformer
from spikezoo.models._registry import family_of
from spikezoo.weights import CheckpointFileError
from tests.models.families import FAMILY_NAMES, tiny
from tests.reference import REFERENCE_DIR, load_case

ORIGINAL_FILES = [
    ("sdt_imagenet_tiny", "sdt_imagenet_tiny.pth.tar"),
    ("resformer_imagenet_tiny", "resformer_imagenet_tiny.pth"),
    ("v2/sdt2_tiny", "v2/sdt2_tiny.pth"),  # main_finetune.py: {"model", "args", ...}
    # timm train.py CheckpointSaver: {"state_dict", "epoch", "arch", "optimizer", "args", ...}
    ("families/spikformer_tiny", "families/spikformer_tiny.pth.tar"),
]


@pytest.mark.parametrize(("case_name", "file_name"), ORIGINAL_FILES)
def test_original_checkpoint_loads_through_create_model(case_name, file_name):
    case = load_case(case_name)
    entry, args = case.model_args()
    overlay = dict(file=str(REFERENCE_DIR / file_name), num_classes=args["num_classes"])
    model = timm.create_model(entry, pretrained=True, pretrained_cfg_overlay=overlay, **args)

    expected = family_of(model).checkpoint_filter_fn(case.state, model)
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        # the .pth files hold the same weights in float32
        torch.testing.assert_close(
            loaded[key], value.to(loaded[key].dtype), rtol=0, atol=0, msg=key
        )


def test_original_checkpoint_layout_is_refused_by_plain_weights_only_load():
    with pytest.raises(pickle.UnpicklingError):
        torch.load(REFERENCE_DIR / "sdt_imagenet_tiny.pth.tar", weights_only=True)


class _Exploit:
    """Unpickling this would run code; a safe loader must refuse it."""

    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    _Exploit.ran = True
    return {}


def test_a_checkpoint_that_runs_code_is_never_unpickled(tmp_path):
    model = timm.create_model("sdt_2_256_cifar", embed_dim=64)
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": model.state_dict(), "args": _Exploit()}, path)
    with pytest.raises(CheckpointFileError, match="does not run code") as info:
        timm.create_model(
            "sdt_2_256_cifar",
            embed_dim=64,
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(path)),
        )
    assert "weights_only" not in str(info.value)
    assert not _Exploit.ran


def test_filter_unwraps_training_checkpoints_and_drops_unused_authors_tensors():
    case = load_case("sdt_imagenet_tiny")
    model = case.build()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in case.state.items()}, "epoch": 3}
    mapped = sdt.FAMILY.checkpoint_filter_fn(wrapped, model)
    assert mapped.keys() == model.state_dict().keys()
    assert not any("talking_heads." in k for k in mapped)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_filter_passes_spikezoo_state_dicts_through(family):
    model = tiny(family, neuron="plif")
    state = model.state_dict()
    mapped = family_of(model).checkpoint_filter_fn(state, model)
    assert list(mapped) == list(state)
    assert all(mapped[k] is state[k] for k in state)


@pytest.mark.parametrize(
    ("tag", "classes", "in_chans"),
    [
        ("sdt_2_512_cifar.cifar100", 100, 3),
        ("spikingresformer_cifar.cifar100", 100, 3),
        ("sdt_2_256_dvs128.dvs128_gesture", 11, 2),
    ],
)
def test_pretrained_tags_set_classes_and_channels(tag, classes, in_chans):
    with torch.device("meta"):
        model = timm.create_model(tag)
    assert (model.num_classes, model.in_chans) == (classes, in_chans)


def test_the_meta_spikeformer_kd_tag_builds_the_distillation_head():
    with torch.device("meta"):
        tagged = timm.create_model("sdt_v2_8_512.in1k_kd")
        plain = timm.create_model("sdt_v2_8_512")
        overridden = timm.create_model("sdt_v2_8_512.in1k_kd", kd=False)
    assert tagged.head_kd is not None and tagged.time_steps == 4
    assert plain.head_kd is None and overridden.head_kd is None
    assert tagged.pretrained_cfg["top1"] == 80.0


def test_fine_tuning_the_kd_weights_to_10_classes_resets_both_heads(tmp_path):
    # the tiny kd net's weights with the tag's 1000-class heads, in main_finetune.py's layout
    case = load_case("v2/sdt2_kd_tiny")
    _, args = case.model_args()
    state = dict(case.state)
    for head in ("head", "head_kd"):
        state[f"{head}.weight"] = torch.randn(1000, args["embed_dims"][-1], dtype=torch.float64)
        state[f"{head}.bias"] = torch.randn(1000, dtype=torch.float64)
    torch.save({"model": state, "epoch": 299}, tmp_path / "kd.pth")
    architecture = {k: v for k, v in args.items() if k not in ("num_classes", "kd")}

    model = timm.create_model(
        "sdt_v2_8_512.in1k_kd",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "kd.pth")),
        num_classes=10,
        **architecture,
    )
    assert model.pretrained_cfg["classifier"] == ("head", "head_kd")
    assert model.head.out_features == model.head_kd.out_features == 10
    expected = sdt_v2.FAMILY.checkpoint_filter_fn(state, model)
    for key, value in model.state_dict().items():
        if not key.startswith(("head.", "head_kd.")):
            exact = expected[key].to(value.dtype)
            torch.testing.assert_close(value, exact, rtol=0, atol=0, msg=key)
    logits, logits_kd = model.train()(torch.rand(2, 3, 48, 48))
    assert logits.shape == logits_kd.shape == (2, 10)

    model.reset_classifier(3)
    assert model.head.out_features == model.head_kd.out_features == 3


def test_checkpoint_of_another_architecture_names_the_problems_and_the_likely_model():
    small = timm.create_model("sdt_2_256_cifar").state_dict()
    target = timm.create_model("sdt_2_512_cifar")
    with pytest.raises(CheckpointMismatchError) as info:
        sdt.FAMILY.checkpoint_filter_fn(small, target)
    error = info.value
    assert "blocks.0.attn.q.conv.weight: checkpoint (256, 256, 1, 1) vs model (512, 512, 1, 1)" in (
        error.mismatched
    )
    assert not error.missing and not error.unexpected
    assert error.likely_model == "sdt_2_256_cifar"
    message = str(error)
    assert f"{len(error.mismatched)} shape mismatches: blocks.0.attn.k.bn.bias" in message
    assert "most likely belongs to 'sdt_2_256_cifar'" in message


def test_authors_checkpoint_loaded_into_the_wrong_family_lists_missing_and_unexpected_keys():
    case = load_case("sdt_cifar_tiny")
    model = load_case("resformer_cifar_tiny").build()
    with pytest.raises(CheckpointMismatchError) as info:
        resformer.FAMILY.checkpoint_filter_fn(case.state, model)
    error = info.value
    assert "stages.0.0.patch_proj.conv.weight" in error.missing
    assert "block.0.attn.q_conv.weight" in error.unexpected
    assert f"{len(error.missing)} missing keys: " in str(error)
    assert f"{len(error.unexpected)} unexpected keys: block.0.attn.k_bn.bias" in str(error)


def test_guess_architecture_recognises_authors_layouts():
    full = timm.create_model("spikingresformer_dvsg").state_dict()
    assert guess_architecture(full) == "spikingresformer_dvsg"
    assert guess_architecture({"unrelated.weight": torch.zeros(3)}) is None


def test_sdt_checkpoint_loaded_into_meta_spikeformer_names_the_likely_model():
    v1 = timm.create_model("sdt_2_256_cifar").state_dict()
    model = load_case("v2/sdt2_tiny").build()
    with pytest.raises(CheckpointMismatchError) as info:
        sdt_v2.FAMILY.checkpoint_filter_fn(v1, model)
    assert info.value.likely_model == "sdt_2_256_cifar"
    assert "stages.3.1.attn.q.0.conv1x1.weight" in info.value.missing
    assert "most likely belongs to 'sdt_2_256_cifar'" in str(info.value)


def test_guess_architecture_recognises_meta_spikeformer():
    with torch.device("meta"):
        state = timm.create_model("sdt_v2_8_512").state_dict()
    assert guess_architecture(state) == "sdt_v2_8_512"


@pytest.mark.parametrize(("case_name", "kd"), [("v2/sdt2_tiny", True), ("v2/sdt2_kd_tiny", False)])
def test_distillation_head_must_match_kd(case_name, kd):
    case = load_case(case_name)
    model = case.build(kd=kd)
    expected = "create the model with kd=False" if kd else "create the model with kd=True"
    with pytest.raises(ValueError, match=expected):
        sdt_v2.FAMILY.checkpoint_filter_fn(case.state, model)
