"""Bad checkpoint files: each gets one line naming the file and what is wrong, never a hint to
unpickle it; good files of every layout load."""

import os

import pytest
import timm
import torch
from safetensors.torch import save_file

from spikezoo.weights import CheckpointFileError, read_checkpoint, save_state_dict
from tests.models.families import tiny_family
from tests.reference import REFERENCE_DIR

TINY = tiny_family("spike_driven_transformer").args


def _random_bytes(path):
    path.write_bytes(os.urandom(4096))


def _text(path):
    path.write_text("epoch 3: loss 0.51\nepoch 4: loss 0.49\n")


def _html(path):
    path.write_text("<!DOCTYPE html><html><head><title>Google Drive</title></head></html>")


def _empty(path):
    path.write_bytes(b"")


def _directory(path):
    path.mkdir()


def _bare_tensor(path):
    torch.save(torch.zeros(3), path)


def _list(path):
    torch.save([torch.zeros(3), torch.ones(2)], path)


def _dict_without_tensors(path):
    torch.save({"epoch": 3, "lr": 0.1}, path)


def _truncated_zip(path):
    torch.save({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:2000])


def _truncated_legacy(path):
    torch.save({"w": torch.zeros(1000)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:200])


def _truncated_safetensors(path):
    save_file({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])


BAD_FILES = {
    "random bytes": (_random_bytes, "is not a PyTorch or safetensors checkpoint"),
    "text": (_text, "is a text file (it starts with 'epoch 3: loss 0.51'), not a checkpoint"),
    "html": (_html, "is an HTML page, not a checkpoint"),
    "missing": (None, "does not exist"),
    "empty": (_empty, "is empty (0 bytes)"),
    "directory": (_directory, "is a directory, not a file"),
    "bare tensor": (_bare_tensor, "holds a single tensor, not a state dict"),
    "list": (_list, "holds a list, not a state dict"),
    "dict without tensors": (_dict_without_tensors, "2 of its 2 entries are not tensors"),
    "truncated zip": (_truncated_zip, "is truncated or corrupted"),
    "truncated legacy": (_truncated_legacy, "is truncated or corrupted"),
    "truncated safetensors": (_truncated_safetensors, "truncated or corrupted safetensors"),
}


def _check_message(error, path, expected):
    message = str(error)
    assert message.startswith(f"checkpoint file {str(path)!r} ")
    assert expected in message
    assert "\n" not in message
    assert "weights_only" not in message and "unpickl" not in message.replace("not unpickl", "")
    assert error.path == path


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_gives_one_line_naming_the_file_and_the_problem(tmp_path, case):
    write, expected = BAD_FILES[case]
    path = tmp_path / "weights.pth"
    if write:
        write(path)
    with pytest.raises(CheckpointFileError) as info:
        read_checkpoint(path)
    _check_message(info.value, path, expected)


@pytest.mark.parametrize("case", ["random bytes", "text", "missing", "empty", "directory"])
def test_create_model_with_a_bad_file_raises_the_same_error(tmp_path, case):
    write, expected = BAD_FILES[case]
    path = tmp_path / "weights.pth"
    if write:
        write(path)
    with pytest.raises(CheckpointFileError) as info:
        timm.create_model(
            "sdt_2_256_cifar", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY
        )
    _check_message(info.value, path, expected)


@pytest.mark.parametrize(
    "layout", ["state_dict", "model", "bare", "safetensors", "legacy", "state_dict_ema"]
)
def test_good_layouts_give_the_same_tensors(tmp_path, layout):
    state = timm.create_model("sdt_2_256_cifar", **TINY).state_dict()
    path = tmp_path / "weights"
    if layout == "safetensors":
        save_file(state, path)
    elif layout == "legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    elif layout == "bare":
        torch.save(state, path)
    elif layout == "state_dict_ema":
        ignored = {k: torch.zeros_like(v) for k, v in state.items()}
        torch.save({"state_dict": ignored, "state_dict_ema": state}, path)
    else:
        torch.save({layout: {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    loaded = read_checkpoint(path)
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("name", ["sdt_imagenet_tiny.pth.tar", "resformer_imagenet_tiny.pth"])
def test_authors_training_checkpoints_are_read_with_their_namespace(name):
    state = read_checkpoint(REFERENCE_DIR / name)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    assert not any(k.startswith("module.") for k in state)


def test_saved_state_dict_keeps_tensors_that_share_memory(tmp_path):
    base = torch.arange(6.0)
    state = {"weight": base, "tied": base, "first_half": base[:3], "stride": base[::2]}
    save_state_dict(state, tmp_path / "model.safetensors")
    loaded = read_checkpoint(tmp_path / "model.safetensors")
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
