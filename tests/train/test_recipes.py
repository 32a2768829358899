"""Recipes and overrides: every key checked, unknown ones answered with the closest."""

from __future__ import annotations

import pytest
import timm
import torch

import spikezoo.models  # noqa: F401
from spikezoo.cli import main
from spikezoo.train import Config, RecipeError, list_recipes, load_recipe


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
        ("run.epochs=many", "expects int"),
        ("optim.lr=[1]", "expects float"),
        ("run.amp=3", "expects bool"),
        ("optim=3", "expects a mapping"),
        ("novalue", "'section.key=value'"),
    ],
)
def test_wrong_values_are_named(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(None, [override])


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
