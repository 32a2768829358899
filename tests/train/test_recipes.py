"""Recipes and overrides: every key checked, unknown ones answered with the closest."""

from __future__ import annotations

import pytest
import timm
import torch

import spikezoo.models  # noqa: F401
from spikezoo.cli import main
from spikezoo.train import (
    Config,
    RecipeError,
    apply_overrides,
    config_from_dict,
    list_recipes,
    load_recipe,
)
from spikezoo.train.config import config_to_dict
from spikezoo.train.data import InputSpec, build_datasets, input_spec


def test_defaults_and_overrides_parse_as_yaml():
    config = load_recipe(None, ["optim.lr=2e-3", "run.amp=true", "model.kwargs.depth=3"])
    assert config.optim.lr == 2e-3
    assert config.run.amp is True
    assert config.model.kwargs == {"depth": 3}
    assert config.data.dataset == Config().data.dataset == "digits"


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("optim.lrr=1", "optim.lr"),
        ("run.epoch=3", "run.epochs"),
        ("shed.sched=step", "sched.sched"),
    ],
)
def test_unknown_override_suggests_the_closest_key(override, suggestion):
    with pytest.raises(RecipeError, match=f"unknown recipe key .*did you mean '{suggestion}'"):
        load_recipe(None, [override])


def test_unknown_key_in_a_recipe_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  weight_decya: 0.1\n")
    with pytest.raises(RecipeError, match=r"'optim.weight_decya' .*'optim.weight_decay'"):
        load_recipe(recipe)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("run.epochs=many", "recipe key 'run.epochs' expects int >= 1, got 'many' (str)"),
        ("run.epochs=2.5", "recipe key 'run.epochs' expects int >= 1, got 2.5 (float)"),
        ("run.epochs=true", "recipe key 'run.epochs' expects int >= 1, got True (bool)"),
        ("optim.lr=[1]", "recipe key 'optim.lr' expects float >= 0, got [1] (list)"),
        ("optim.lr=fast", "recipe key 'optim.lr' expects float >= 0, got 'fast' (str)"),
        ("run.amp=3", "recipe key 'run.amp' expects bool, got 3 (int)"),
        ("run.output=3", "recipe key 'run.output' expects str, got 3 (int)"),
        ("model.kwargs=3", "recipe key 'model.kwargs' expects a mapping, got 3 (int)"),
        (
            "data.scale=[1, a]",
            "recipe key 'data.scale' expects a list of float of length 2, got [1, 'a'] (list)",
        ),
        (
            "data.classes=[1, 2.5]",
            "recipe key 'data.classes' expects a list of int or null, got [1, 2.5] (list)",
        ),
        ("optim=3", "recipe section 'optim' expects a mapping, got 3"),
        (
            "run.epochs.x=1",
            "recipe key 'run.epochs' holds a value, not entries (got 'run.epochs.x')",
        ),
        ("novalue", "an override is 'section.key=value', got 'novalue'"),
    ],
)
def test_wrong_types_name_the_key_the_expected_type_and_what_came(override, message):
    with pytest.raises(RecipeError) as error:
        load_recipe(None, [override])
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("run.epochs=0", "recipe key 'run.epochs' expects int >= 1, got 0 (int)"),
        ("run.epochs=-1", "recipe key 'run.epochs' expects int >= 1, got -1 (int)"),
        ("run.stop_after=0", "recipe key 'run.stop_after' expects int >= 1 or null, got 0 (int)"),
        ("run.eval_every=0", "recipe key 'run.eval_every' expects int >= 1, got 0 (int)"),
        ("data.subset=0", "recipe key 'data.subset' expects int >= 1 or null, got 0 (int)"),
        ("loss.smoothing=1", "recipe key 'loss.smoothing' expects float in [0, 1), got 1 (int)"),
        (
            "model.ema_decay=1.5",
            "recipe key 'model.ema_decay' expects float in [0, 1], got 1.5 (float)",
        ),
        (
            "optim.clip_grad=0",
            "recipe key 'optim.clip_grad' expects float > 0 or null, got 0 (int)",
        ),
        ("data.scale=[1.0]", "recipe key 'data.scale' expects a list of float of length 2"),
    ],
)
def test_values_out_of_range_name_the_allowed_range(override, message):
    with pytest.raises(RecipeError) as error:
        load_recipe(None, [override])
    assert str(error.value).startswith(message)


def test_a_wrong_value_in_a_recipe_file_is_named(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("run: {epochs: 0}\n")
    with pytest.raises(RecipeError, match=r"^recipe key 'run.epochs' expects int >= 1, got 0"):
        load_recipe(recipe)
    recipe.write_text("- a list\n")
    with pytest.raises(RecipeError, match="a recipe is a mapping of sections, got list"):
        load_recipe(recipe)


def test_cli_zero_epochs_is_one_line_naming_the_range(capsys, tmp_path):
    assert main(["train", "digits", "run.epochs=0", f"run.output={tmp_path / 'out'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("spikezoo train: error: recipe key 'run.epochs' expects int >= 1, got 0")
    assert not (tmp_path / "out").exists()


def test_numbers_convert_only_where_the_field_is_a_float():
    # YAML 1.1 reads 1e-3 (no dot) as a string; a float field reads it, an int one does not
    config = load_recipe(None, ["optim.lr=1e-3", "data.scale=[1, 1]", "sched.decay_epochs=30"])
    assert config.optim.lr == 1e-3
    assert config.data.scale == [1.0, 1.0]
    assert all(type(value) is float for value in (*config.data.scale, config.sched.decay_epochs))
    with pytest.raises(RecipeError, match=r"'run.epochs' expects int >= 1, got '1e1' \(str\)"):
        load_recipe(None, ["run.epochs=1e1"])


def test_sections_merge_mapping_values_replace_and_dotted_keys_reach_into_them():
    config = load_recipe(
        "digits",
        ["model={ema: true}", "model.kwargs={depth: 2}", "model.kwargs.drop_path_rate=0.1"],
    )
    assert config.model.ema is True
    assert config.model.name == "sdt_2_256_cifar"  # the rest of the section is the recipe's
    assert config.model.kwargs == {"depth": 2, "drop_path_rate": 0.1}


def test_overrides_leave_the_given_config_alone():
    base = load_recipe("digits")
    changed = apply_overrides(base, ["optim.lr=0.5"])
    assert (base.optim.lr, changed.optim.lr) == (0.002, 0.5)
    assert config_from_dict(config_to_dict(changed)) == changed


def test_assignments_are_checked_too():
    config = Config()
    with pytest.raises(ValueError, match=r"epochs\n.*greater than or equal to 1"):
        config.run.epochs = 0
    assert config.run.epochs == 10


def test_unknown_recipe_name_suggests_a_committed_one():
    with pytest.raises(RecipeError, match=r"no recipe named 'sdt_cifar1' .*did you mean"):
        load_recipe("sdt_cifar1")


@pytest.mark.parametrize("name", list_recipes())
def test_every_committed_recipe_is_valid_and_cites_its_source(name):
    config = load_recipe(name)
    assert config.source.strip(), f"recipe {name} does not cite where its values come from"
    assert timm.is_model(config.model.name)
    with torch.device("meta"):  # the model takes the recipe's arguments (no memory, no time)
        timm.create_model(config.model.name, **config.model.kwargs)


def test_committed_recipes_cover_the_papers():
    recipes = set(list_recipes())
    assert {
        "digits",
        "sdt_cifar10",
        "sdt_cifar100",
        "sdt_imagenet",
        "resformer_imagenet",
        "resformer_cifar10",
        "resformer_cifar100",
        "sdt_finetune",
        "sdt_dvs128_gesture",
        "sdt_cifar10_dvs",
        "resformer_dvs128_gesture",
        "spikformer_cifar10",
        "spikingformer_cifar10",
        "spikingformer_cifar100",
    } <= recipes


def test_cli_unknown_key_is_one_line(capsys):
    assert main(["train", "optim.lrr=0.1"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "did you mean 'optim.lr'" in err
    assert err.startswith("spikezoo train: error: unknown recipe key 'optim.lrr'")


def test_cli_set_flag_goes_through_the_same_check(capsys):
    assert main(["train", "digits", "--set", "data.batchsize=8"]) == 1
    assert "did you mean 'data.batch_size'" in capsys.readouterr().err


def test_cli_lists_the_recipes(capsys):
    assert main(["train", "--list"]) == 0
    assert "sdt_cifar10" in capsys.readouterr().out.split()


def test_cli_missing_dataset_path_is_one_line(capsys, tmp_path):
    missing = tmp_path / "nowhere"
    code = main(["train", "sdt_cifar10", f"data.root={missing}", f"run.output={tmp_path}/out"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1
    assert f"dataset path '{missing}' does not exist" in err
    assert not (tmp_path / "out").exists()


def test_imagefolder_needs_train_and_val(capsys, tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    code = main(["validate", "--checkpoint", str(tmp_path / "x.pth"), "data.dataset=imagefolder"])
    assert code == 1
    assert "checkpoint" in capsys.readouterr().err
    from spikezoo.train import DatasetError
    from spikezoo.train.data import build_datasets

    config = load_recipe(None, ["data.dataset=imagefolder", f"data.root={tmp_path}"])
    with pytest.raises(DatasetError, match=r"'.*val' does not exist"):
        build_datasets(config.data)


def test_cli_unknown_device_is_one_line(capsys, tmp_path):
    assert main(["train", "run.device=tpu", f"run.output={tmp_path}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "spikezoo train: error: run.device must be 'auto', 'cpu' or 'cuda', got 'tpu'"


def test_a_non_spiking_baseline_builds_with_the_recipes_neuron_backend():
    """The digits recipe names ``neuron_backend: torch``; a plain timm model has no neurons."""
    from spikezoo.train import build_model
    from spikezoo.train.data import Datasets

    config = load_recipe("digits", ["model.name=resnet10t", "model.kwargs={}"])
    assert config.model.neuron_backend == "torch"
    datasets = Datasets(train=[], eval=[], num_classes=10, in_chans=1)
    model = build_model(config, datasets)
    assert model.get_classifier().out_features == 10


def test_a_training_set_smaller_than_one_batch_is_one_line(capsys, tmp_path):
    argv = ["train", "digits", "data.subset=8", "data.batch_size=32", f"run.output={tmp_path}"]
    assert main(argv) == 1
    assert capsys.readouterr().err.splitlines() == [
        "spikezoo train: error: the training set has 8 samples, fewer than one batch "
        "(data.batch_size=32), and the incomplete batch is dropped, so no step would run: lower "
        "data.batch_size or raise data.subset"
    ]


def test_the_input_spec_is_what_the_loaders_give():
    digits = load_recipe("digits", ["data.img_size=8"]).data
    spec = input_spec(digits)
    images, _ = build_datasets(digits).train[0]
    assert (spec.in_chans, spec.img_size) == tuple(images.shape[:2]) == (1, 8)
    assert (spec.mean, spec.std) == ((0.5,), (0.5,))
    cifar = load_recipe("digits", ["data.dataset=cifar10", "data.mean=[0.1, 0.2, 0.3]"]).data
    assert input_spec(cifar) == InputSpec(3, 16, (0.1, 0.2, 0.3), (0.2470, 0.2435, 0.2616))
    assert input_spec(load_recipe("digits", ["data.dataset=dvs128_gesture"]).data).in_chans == 2
