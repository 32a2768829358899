"""Training end to end on digits: accuracy, exact resume, fine-tuning, bad input."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil

import pytest
import timm
import torch

from spikezoo.cli import main
from spikezoo.train import (
    CheckpointError,
    TrainingError,
    build_model,
    read_training_checkpoint,
    train,
    validate,
)
from spikezoo.train.data import build_datasets

from .conftest import tiny_recipe


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow  # the committed recipe's ten epochs: 25 s
def test_digits_reach_90_percent_and_the_checkpoint_validates(digits_run, capsys):
    output, metrics = digits_run
    assert metrics["best_top1"] > 90
    rows = (output / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,lr,eval_loss,eval_top1")
    assert len(rows) == 1 + 10
    assert (output / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = read_training_checkpoint(output / "best.pth")
    assert best["best_top1"] == metrics["best_top1"]

    # the checkpoint evaluates to what training logged for that epoch, through timm's loader
    from spikezoo.train import load_recipe

    config = load_recipe(output / "config.yaml")
    assert validate(config, output / "best.pth")["top1"] == pytest.approx(best["best_top1"])

    assert (
        main(["validate", "--checkpoint", str(output / "best.pth"), str(output / "config.yaml")])
        == 0
    )
    assert f"top-1 {best['best_top1']:.2f}%" in capsys.readouterr().out


def test_checkpoint_is_weights_only_and_loads_through_timm(digits_backbone):
    output, _ = digits_backbone
    checkpoint = torch.load(output / "last.pth", weights_only=True)
    kwargs = dict(checkpoint["config"]["model"]["kwargs"], num_classes=10, in_chans=1)
    model = timm.create_model(
        checkpoint["model_name"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(output / "last.pth"), num_classes=10),
        **kwargs,
    )
    for key, value in model.state_dict().items():
        assert torch.equal(value, checkpoint["state_dict"][key]), key


def test_resume_continues_exactly(tmp_path):
    # EMA, Mixup (NumPy RNG) and stochastic depth (torch RNG) all depend on restored state.
    extra = [
        "run.epochs=4",
        "model.ema=true",
        "model.ema_decay=0.9",
        "loss.mixup=0.2",
        "loss.smoothing=0.1",
        "model.kwargs.drop_path_rate=0.2",
        "model.kwargs.depth=2",
        "data.subset=128",
    ]
    whole = tmp_path / "whole"
    train(tiny_recipe(whole, *extra))
    parts = tmp_path / "parts"
    train(tiny_recipe(parts, *extra, "run.stop_after=2"))
    assert read_training_checkpoint(parts / "last.pth")["epoch"] == 2
    train(tiny_recipe(parts, *extra, "run.resume=auto"))

    a = read_training_checkpoint(whole / "last.pth")
    b = read_training_checkpoint(parts / "last.pth")
    assert a["epoch"] == b["epoch"] == 4
    for key in ("state_dict", "state_dict_ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name}"
    assert a["metrics"] == b["metrics"]
    assert a["scheduler"] == b["scheduler"]
    assert (whole / "log.csv").read_text() == (parts / "log.csv").read_text()


def test_corrupted_checkpoint_on_resume_keeps_the_good_one(tmp_path, capsys):
    train(tiny_recipe(tmp_path, "run.epochs=1"))
    good = tmp_path / "last.pth"
    before = _digest(good)
    corrupted = tmp_path / "corrupted.pth"
    corrupted.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match=r"corrupted.pth' is (truncated or )?corrupted"):
        train(tiny_recipe(tmp_path, "run.epochs=2", f"run.resume={corrupted}"))
    assert _digest(good) == before

    # the good checkpoint itself truncated: resume=auto refuses and leaves the file alone
    good.write_bytes(good.read_bytes()[:100])
    broken = _digest(good)
    code = main(["train", "digits", *_tiny_cli(tmp_path), "run.epochs=2", "run.resume=auto"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1
    assert "last.pth' is truncated or corrupted" in err
    assert _digest(good) == broken


def _tiny_cli(output) -> list[str]:
    from .conftest import TINY

    return [*TINY, f"run.output={output}"]


def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path, capsys):
    # lr becomes inf at epoch 2: its first step makes the weights inf, the second loss is NaN
    diverging = [
        "run.epochs=2",
        "sched.sched=step",
        "sched.decay_epochs=1",
        "sched.decay_rate=.inf",
    ]
    with pytest.raises(
        TrainingError, match=r"loss is (nan|inf) at epoch 2, step 2 .*last.pth' is kept"
    ):
        train(tiny_recipe(tmp_path, *diverging))
    kept = read_training_checkpoint(tmp_path / "last.pth")
    assert kept["epoch"] == 1
    assert all(
        torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point()
    )
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 2

    shutil.rmtree(tmp_path)
    assert main(["train", "digits", *_tiny_cli(tmp_path), *diverging]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "step 2" in err


def test_finetune_into_a_new_head(digits_backbone, tmp_path):
    source, _ = digits_backbone
    checkpoint = read_training_checkpoint(source / "best.pth")
    recipe = [
        f"finetune.checkpoint={source / 'best.pth'}",
        "data.classes=[3, 5, 8]",
        "optim.lr=0.001",
        "run.epochs=1",
        f"run.output={tmp_path}",
        "run.progress=false",
    ]
    from spikezoo.train import load_recipe

    config = load_recipe("digits", recipe)
    model = build_model(config, build_datasets(config.data))
    assert model.head.weight.shape == (3, checkpoint["state_dict"]["head.weight"].shape[1])
    for name, value in model.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(value, checkpoint["state_dict"][name]), name

    metrics = train(config)
    # Three classes (chance: 33 %), one epoch on a trained backbone. How far above the margin
    # it lands depends on the machine's thread count and rounding, so the bound is loose.
    assert metrics["eval_top1"] > 60
    assert read_training_checkpoint(tmp_path / "last.pth")["num_classes"] == 3


def test_amp_progress_and_tensorboard(tmp_path, capsys):
    metrics = train(
        tiny_recipe(
            tmp_path, "run.epochs=1", "run.amp=true", "run.progress=true", "run.tensorboard=true"
        )
    )
    assert metrics["train_loss"] == pytest.approx(metrics["train_loss"])  # finite, not NaN
    captured = capsys.readouterr()
    assert "epoch 1/1: train_loss" in captured.out
    assert "epoch 1/1" in captured.err  # the progress bar
    if importlib.util.find_spec("tensorboard") is not None:
        assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_finetune_from_a_bare_state_dict(digits_backbone, tmp_path):
    source, _ = digits_backbone
    bare = tmp_path / "bare.pth"
    torch.save(read_training_checkpoint(source / "best.pth")["state_dict"], bare)
    from spikezoo.train import load_recipe

    config = load_recipe("digits", [f"finetune.checkpoint={bare}", "data.classes=[0, 1]"])
    model = build_model(config, build_datasets(config.data))
    assert model.head.weight.shape[0] == 2
    missing = load_recipe("digits", [f"finetune.checkpoint={tmp_path / 'none.pth'}"])
    with pytest.raises(CheckpointError, match=r"none\.pth' does not exist"):
        build_model(missing, build_datasets(missing.data))


def test_eval_every_leaves_gaps_in_the_log_and_the_plot_copes(tmp_path):
    train(tiny_recipe(tmp_path, "run.epochs=3", "run.eval_every=2", "run.plot=true"))
    import csv

    with (tmp_path / "log.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["eval_top1"] != "" for row in rows] == [False, True, True]  # and the last
    assert (tmp_path / "curves.png").stat().st_size > 0
