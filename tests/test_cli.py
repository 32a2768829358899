"""The ``spikezoo`` command."""

import subprocess
import sys

import pytest
import torch

import spikezoo
from spikezoo.cli import default_image, main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"spikezoo {spikezoo.__version__}"


def test_list_shows_both_families_and_tags(capsys):
    assert main(["list"]) == 0
    names = capsys.readouterr().out.split()
    assert names == sorted(spikezoo.models.MODEL_NAMES, key=names.index)
    assert len(names) == 15 and "sdt_8_768" in names and "spikingresformer_dvsg" in names
    assert main(["list", "--pretrained", "spikingresformer*"]) == 0
    tags = capsys.readouterr().out.split()
    assert "spikingresformer_s.in1k" in tags and all(t.startswith("spikingresformer") for t in tags)


def test_demo_runs_on_the_built_in_input(capsys):
    assert main(["demo", "--model", "sdt_2_256_cifar", "--time-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "sdt_2_256_cifar: 2.57M parameters, T=2" in out
    assert "top-5 classes:" in out
    rates = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("  blocks.")]
    assert len(rates) == 14 and any(r > 0 for r in rates) and all(0 <= r <= 1 for r in rates)


def test_demo_reports_an_unknown_model(capsys):
    assert main(["demo", "--model", "resnet_spiking_9000"]) == 1
    assert "Unknown model (resnet_spiking_9000)" in capsys.readouterr().err


def test_default_image_is_deterministic_and_in_range():
    image = default_image(2, 16, 24)
    assert image.shape == (2, 16, 24) and image.min() >= 0 and image.max() <= 1
    assert torch.equal(image, default_image(2, 16, 24))


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "spikezoo", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == f"spikezoo {spikezoo.__version__}"
