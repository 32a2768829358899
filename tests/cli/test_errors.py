"""Every error of the ``spikezoo`` command: one line on stderr, a hint, a non-zero exit code."""

import logging
import sys

import huggingface_hub.constants
import pytest
import timm
import torch

from spikezoo.cli import main
from spikezoo.cli.common import spikezoo_names


def one_line_error(capsys, argv, exit_code):
    """Run ``spikezoo argv``; check the exit code, no stdout and one stderr line; return it."""
    assert main(argv) == exit_code
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "exit_code", "message", "hint"),
    [
        (
            ["demo", "--model", "resnet18"],
            1,
            "spikezoo demo: error: 'resnet18' is a timm model, not a spikezoo model",
            "'spikezoo list' shows the models",
        ),
        (
            ["demo", "--model", "sdt_2_256_cifr"],
            1,
            "spikezoo demo: error: unknown model 'sdt_2_256_cifr'",
            "did you mean sdt_2_256_cifar, sdt_2_512_cifar",
        ),
        (
            ["demo", "--model", "nonexistent"],
            1,
            "spikezoo demo: error: unknown model 'nonexistent'",
            "'spikezoo list' shows the models",
        ),
        (
            ["demo", "--model", "sdt_8_768.imagenet1k"],
            1,
            "spikezoo demo: error: sdt_8_768 has no weights tagged 'imagenet1k'",
            "its tags: sdt_8_768.in1k",
        ),
        (
            ["demo", "--time-steps", "0"],
            2,
            "spikezoo demo: error: argument --time-steps: expected a positive whole number, "
            "got '0'",
            "see 'spikezoo demo --help'",
        ),
        (
            ["demo", "--time-steps", "two"],
            2,
            "spikezoo demo: error: argument --time-steps: expected a positive whole number",
            "see 'spikezoo demo --help'",
        ),
        (
            ["list", "nonexistent"],
            1,
            "spikezoo list: error: no spikezoo model matches 'nonexistent'",
            "'spikezoo list' shows the models",
        ),
        (
            ["list", "sdt_2_256_cifr"],
            1,
            "spikezoo list: error: no spikezoo model matches 'sdt_2_256_cifr'",
            "did you mean sdt_2_256_cifar",
        ),
        (
            ["list", "--pretrained", "sdt_8_768.imagenet*"],
            1,
            "spikezoo list: error: no spikezoo pretrained tag matches",
            "'spikezoo list --pretrained' shows the weight tags",
        ),
        (
            ["frobnicate"],
            2,
            "spikezoo: error: argument COMMAND: invalid choice: 'frobnicate'",
            "see 'spikezoo --help'",
        ),
    ],
)
def test_error_is_one_line_with_a_hint(capsys, argv, exit_code, message, hint):
    line = one_line_error(capsys, argv, exit_code)
    assert line.startswith(message), line
    assert line.endswith(")") and hint in line.rsplit("(", 1)[-1], line


@pytest.fixture
def offline_caches(monkeypatch, tmp_path):
    """No network, and empty spikezoo and Hugging Face caches."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("SPIKEZOO_CACHE", str(tmp_path / "spikezoo"))


def test_pretrained_weights_that_cannot_be_fetched(capsys, offline_caches):
    """Weights that exist somewhere (the authors' file) but cannot be reached: the network."""
    line = one_line_error(capsys, ["demo", "--model", "sdt_8_384.in1k", "--pretrained"], 1)
    assert line.startswith(
        "spikezoo demo: error: could not load the pretrained weights of sdt_8_384.in1k: "
    )
    assert line.endswith(
        "(its weights: the authors' file https://drive.google.com/file/d/"
        "10oH_zkwB4FDtFLgmZ_lI8e0tFjRzrXyD/view; check the network connection, or run without "
        "--pretrained)"
    )


def test_pretrained_weights_that_were_never_released(capsys, offline_caches):
    """A tag without weights anywhere: no network would help, and the error says so."""
    line = one_line_error(capsys, ["demo", "--model", "sdt_2_256_cifar.cifar10", "--pretrained"], 1)
    assert "no weights for sdt_2_256_cifar.cifar10: the authors released none, and none are " in (
        line
    )
    assert "train your own ('spikezoo train')" in line and "network" not in line
    assert line.endswith(
        "('spikezoo list --pretrained' shows the tags that have weights, or run without "
        "--pretrained)"
    )


def test_list_pretrained_shows_only_the_tags_with_weights(capsys, offline_caches):
    assert main(["list", "--pretrained"]) == 0
    captured = capsys.readouterr()
    released = [
        name
        for name in spikezoo_names(pretrained=True)
        if timm.models.get_pretrained_cfg(name).authors_file is not None
    ]
    assert captured.out.split() == released
    assert "sdt_8_768.in1k" in released and "spikingresformer_ti.in1k" in released
    without = sorted(set(spikezoo_names(pretrained=True)) - set(released))
    assert "sdt_2_256_cifar.cifar10" in without and "sdt_v2_8_384.in1k" in without
    note = captured.err.splitlines()
    assert len(note) == 1 and note[0].startswith(
        f"spikezoo list: left out {len(without)} tags without weights ("
    )
    assert all(tag in note[0] for tag in without) and "the authors released none" in note[0]


def test_list_pretrained_of_tags_without_weights_says_so(capsys, offline_caches):
    line = one_line_error(capsys, ["list", "--pretrained", "sdt_2_*"], 1)
    assert line.startswith("spikezoo list: error: no tag matching 'sdt_2_*' has weights (")
    assert "sdt_2_256_cifar.cifar10" in line and "the authors released none" in line


def failing_run(args):
    raise RuntimeError("the kernel\nfailed")


def test_an_unexpected_exception_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.setattr("spikezoo.cli.listing.run", failing_run)
    line = one_line_error(capsys, ["list"], 1)
    assert line == (
        "spikezoo list: error: RuntimeError: the kernel failed "
        "(run again with --debug for the traceback)"
    )
    for argv in (["--debug", "list"], ["list", "--debug"]):
        with pytest.raises(RuntimeError, match="the kernel"):
            main(argv)


def test_debug_prints_the_traceback_of_a_command_error(capsys):
    assert main(["demo", "--model", "resnet18", "--debug"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "CommandError" in err
    assert err.splitlines()[-1].startswith("spikezoo demo: error: 'resnet18' is a timm model")


def test_torch_cuda_home_notice_is_dropped_while_a_command_runs(monkeypatch):
    """torch logs the notice when torch.utils.cpp_extension is imported (by torch.compile)."""
    import torch.utils.cpp_extension

    logger = torch.utils.cpp_extension.logger
    records = []
    handler = logging.Handler()
    handler.emit = records.append

    def run(args):
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local/cuda")
        logger.warning("another warning")
        return 0

    monkeypatch.setattr("spikezoo.cli.listing.run", run)
    logger.addHandler(handler)
    try:
        assert main(["list"]) == 0
        run(None)  # outside a command, torch's logging is left alone
    finally:
        logger.removeHandler(handler)
    assert [record.getMessage() for record in records] == [
        "another warning",
        "No CUDA runtime is found, using CUDA_HOME='/usr/local/cuda'",
        "another warning",
    ]


class Unsafe:
    """A Python object in a checkpoint: reading it would run code from the file."""


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda path: path.write_bytes(bytes(range(256)) * 4), "is not a PyTorch or safetensors"),
        (
            lambda path: torch.save({"state_dict": {"w": torch.ones(1)}, "x": Unsafe()}, path),
            "holds a Python object (tests.cli.test_errors.Unsafe) besides tensors",
        ),
    ],
)
@pytest.mark.parametrize("command", ["validate", "profile"])
def test_every_command_reads_checkpoints_with_the_one_safe_reader(
    capsys, tmp_path, make, reason, command
):
    path = tmp_path / "random.pth"
    make(path)
    argv = (
        ["validate", "--checkpoint", str(path)]
        if command == "validate"
        else ["profile", "sdt_2_256_cifar", "--checkpoint", str(path)]
    )
    line = one_line_error(capsys, argv, 1)
    assert f"checkpoint file '{path}' {reason}" in line
    assert "weights_only" not in line and "Traceback" not in line


def test_validate_a_directory_says_what_it_expected(capsys, tmp_path):
    (tmp_path / "best.pth").touch()
    line = one_line_error(capsys, ["validate", "--checkpoint", f"{tmp_path}/"], 1)
    assert line == (
        f"spikezoo validate: error: checkpoint '{tmp_path}' is a directory; expected a "
        f"checkpoint file written by 'spikezoo train', e.g. '{tmp_path / 'best.pth'}'; it holds "
        "best.pth"
    )


def test_a_missing_optional_dependency_names_the_extra(capsys, monkeypatch, tmp_path):
    for module in ("sklearn", "sklearn.datasets", "sklearn.model_selection"):
        monkeypatch.setitem(sys.modules, module, None)
    line = one_line_error(capsys, ["train", "digits", f"run.output={tmp_path}"], 1)
    assert line == (
        "spikezoo train: error: the digits data set needs scikit-learn, which is not installed: "
        'pip install "spikezoo-vit[train]"'
    )
