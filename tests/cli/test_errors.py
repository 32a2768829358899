"""Every error of the ``spikezoo`` command: one line on stderr, a hint, a non-zero exit code."""

import logging

import huggingface_hub.constants
import pytest

from spikezoo.cli import main


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


def test_pretrained_weights_that_cannot_be_fetched(capsys, monkeypatch, tmp_path):
    """Whatever the loader raises (here: the Hub is offline, the cache empty) is one line."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    line = one_line_error(capsys, ["demo", "--model", "sdt_2_256_cifar.cifar10", "--pretrained"], 1)
    assert line.startswith(
        "spikezoo demo: error: could not load the pretrained weights of sdt_2_256_cifar.cifar10: "
    )
    assert line.endswith("(check the network connection, or run without --pretrained)")


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
