"""``spikezoo profile`` on every registered model, its output formats, and bad input."""

import csv
import io
import json

import pytest
import timm
import torch
from PIL import Image
from torch import nn

import spikezoo
from spikezoo.analysis.inputs import (
    events_from_image,
    image_input,
    is_event_model,
    load_image,
    sample_image_path,
)
from spikezoo.analysis.profile import profile_model
from spikezoo.cli import main
from spikezoo.models import families
from tests.models.families import FAMILY_NAMES

# The smallest model of each family by default, every other one under `slow`.
#: the authors' parameter count of every entry point, from the families' declarations
PARAMETERS = {
    c.entry_point: c.parameters for f in families() for c in f.reference_counts if not c.args
}
SMALLEST = {min(timm.list_models(module=family), key=PARAMETERS.get) for family in FAMILY_NAMES}
MODELS = [
    name if name in SMALLEST else pytest.param(name, marks=pytest.mark.slow)
    for name in spikezoo.models.MODEL_NAMES
]
FAST = ["--input-size", "32", "--time-steps", "1", "--backend", "torch", "--repeats", "1"]
FAST += ["--device", "cpu"]


def profile(capsys, *args):
    code = main(["profile", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("name", MODELS)
def test_profile_runs_on_every_registered_model(name, capsys):
    code, out, err = profile(capsys, name, *FAST, "--format", "json")
    assert code == 0, err
    result = json.loads(out)
    with torch.device("meta"):
        model = timm.create_model(name)
    assert result["model"] == name and result["weights"] == "random"
    assert result["parameters"] == sum(p.numel() for p in model.parameters())
    assert result["input_shape"][-2:] == [32, 32] and result["time_steps"] == 1
    assert result["energy_mj"] == pytest.approx(
        (4.6 * result["macs"] + 0.9 * result["sops"]) * 1e-9, rel=1e-9
    )
    assert result["sops"] > 0 and result["throughput"] > 0
    # The first convolution reads pixels at full cost, or event frames (spikes) by the spike.
    first = result["layers"][0]
    assert first["input"] == ("spikes" if is_event_model(model) else "real")
    assert (first["macs"] > 0) == (first["input"] == "real")
    neurons = [n for n, m in model.named_modules() if isinstance(m, spikezoo.neurons.SpikingNeuron)]
    products = [
        n for n, m in model.named_modules() if isinstance(m, spikezoo.layers.SpikingHadamard)
    ]
    kinds = {row["layer"]: row["neuron"] for row in result["firing_rates"]}
    assert [layer for layer, kind in kinds.items() if not kind.startswith("spike product")] == (
        neurons
    )
    assert [layer for layer, kind in kinds.items() if kind.startswith("spike product")] == products
    assert any(row["rate"] > 0 for row in result["firing_rates"])  # BN calibrated: it spikes


def test_table_output_of_the_default_image(capsys):
    args = ["--time-steps", "2", "--batch-size", "2", "--backend", "torch", "--repeats", "1"]
    code, out, _ = profile(capsys, "sdt_2_256_cifar", *args)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("sdt_2_256_cifar: random weights")
    assert lines[1] == "input       chelsea.jpg (built-in) -> [2, 3, 32, 32], T=2"
    assert lines[2] == "parameters  2.567 M"
    # only the first conv (3x3, 3 -> 32 channels) reads real values: T x 32x32 x 32 x 27
    # the stem runs once for the static image (static encoding), so its MACs count once
    assert lines[3] == "MACs        884.736 k  (real-valued inputs, full cost)"
    assert "pJ x MACs + 0.9 pJ x SOPs (45nm-fp32)" in lines[5]
    assert "(batch 2, cpu, median of 1)" in lines[9]
    assert lines[-1].startswith("| head_lif ") and " t1 |" in out


def test_csv_output_holds_summary_ops_and_rates(capsys):
    code, out, _ = profile(capsys, "spikingresformer_cifar", *FAST, "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    sections = {row["section"] for row in rows}
    assert sections == {"summary", "ops", "firing_rate"}
    summary = {row["metric"]: row["value"] for row in rows if row["section"] == "summary"}
    assert summary["model"] == "spikingresformer_cifar" and float(summary["energy_mj"]) > 0
    head = {r["metric"]: r["value"] for r in rows if r["section"] == "ops" and r["layer"] == "head"}
    assert head["input"] == "real" and head["classifier"] == "True"


def test_profile_model_refuses_a_network_without_spiking_neurons():
    with pytest.raises(ValueError, match="no spikezoo spiking neurons"):
        profile_model(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        profile_model(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.rand(1, 3, 8, 8), repeats=0)


def one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_bad_input_is_one_line_naming_the_problem(tmp_path, capsys, monkeypatch):
    garbage = tmp_path / "broken.png"
    garbage.write_bytes(b"not an image")
    code, out, err = profile(capsys, "sdt_2_256_cifar", "--image", str(garbage))
    assert code == 1 and not out
    assert f"cannot read image '{garbage}'" in one_error_line(err)

    code, _, err = profile(capsys, "sdt_2_256_cifar", "--image", str(tmp_path / "missing.jpg"))
    assert code == 1 and "No such file or directory" in one_error_line(err)

    code, _, err = profile(capsys, "sdt_8_38")
    assert code == 1 and "unknown model 'sdt_8_38'" in one_error_line(err)
    assert "did you mean sdt_8_384" in err

    grey, rgba = tmp_path / "grey.png", tmp_path / "rgba.png"
    Image.new("L", (40, 40), 128).save(grey)
    Image.new("RGBA", (40, 40), (1, 2, 3, 4)).save(rgba)
    code, out, err = profile(capsys, "sdt_2_256_cifar", "--image", str(grey))
    assert code == 1 and not out
    line = one_error_line(err)
    assert "takes 3-channel images, the image has 1 (mode L)" in line and str(grey) in line
    code, _, err = profile(capsys, "sdt_2_256_cifar", "--image", str(rgba))
    assert "the image has 4 (mode RGBA)" in one_error_line(err)

    code, _, err = profile(capsys, "sdt_8_384", "--input-size", "40")
    assert code == 1 and "multiples of 16, got 40x40" in one_error_line(err)
    code, _, err = profile(capsys, "sdt_2_256_cifar", "--energy", "7nm")
    assert code == 1 and "unknown energy preset '7nm'" in one_error_line(err)
    code, _, err = profile(capsys, "sdt_2_256_cifar", "--device", "tpu:x")
    assert code == 1 and "unknown device 'tpu:x'" in one_error_line(err)
    if not torch.cuda.is_available():
        code, _, err = profile(capsys, "sdt_2_256_cifar", "--device", "cuda")
        assert code == 1 and "CUDA is not available" in one_error_line(err)
    code, _, err = profile(capsys, "sdt_2_256_cifar", "--backend", "gpu")
    assert code == 1 and "unknown backend 'gpu'" in one_error_line(err)
    code, _, err = profile(capsys, "sdt_2_256_cifar", "--checkpoint", str(tmp_path))
    assert code == 1 and "is not a file" in one_error_line(err)

    code, _, err = profile(capsys, "resnet18")
    assert code == 1 and "not a spikezoo model" in one_error_line(err)
    # A network without spiking layers says so instead of printing zeros.
    monkeypatch.setattr(
        "spikezoo.cli.profile._create_model",
        lambda name, args: timm.create_model("resnet10t", num_classes=10).eval(),
    )
    code, out, err = profile(capsys, "sdt_2_256_cifar")
    assert code == 1 and not out
    assert "has no spikezoo spiking neurons" in one_error_line(err)


def test_event_models_get_a_simulated_saccade_of_the_image():
    image = load_image(sample_image_path())
    assert image.size == (224, 224) and image.mode == "RGB"
    frames = events_from_image(image, time_steps=3, channels=3, size=(16, 24))
    assert frames.shape == (3, 3, 16, 24)
    assert set(frames.unique().tolist()) <= {0.0, 1.0} and frames[:, :2].sum() > 0
    assert torch.equal(frames[:, 2], frames[:, 0] + frames[:, 1])  # ON + OFF: no pixel is both
    model = timm.create_model("sdt_2_256_dvs128", time_steps=5)
    assert image_input(model, image, input_size=32).shape == (1, 5, 2, 32, 32)
    with pytest.raises(ValueError, match="at least 2 channels"):
        events_from_image(image, 1, 1, (8, 8))
    with pytest.raises(ValueError, match="time_steps must be >= 1, got 0"):
        events_from_image(image, 0, 2, (8, 8))


def test_checkpoint_weights_are_the_ones_profiled(tmp_path, capsys):
    from safetensors.torch import save_file

    from spikezoo.analysis import calibrate_batchnorm

    model = timm.create_model("sdt_2_256_cifar", time_steps=1, num_classes=10).eval()
    spikezoo.neurons.set_backend(model, "torch")
    inputs = image_input(model, load_image(sample_image_path()))
    calibrate_batchnorm(model, inputs)  # trained-like statistics, saved with the weights
    path = tmp_path / "weights.safetensors"
    save_file(model.state_dict(), str(path))
    expected = profile_model(model, inputs, repeats=1)

    code, out, err = profile(
        capsys, "sdt_2_256_cifar", "--checkpoint", str(path), *FAST[2:], "--format", "json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["weights"] == f"checkpoint {path}"
    assert (result["macs"], result["sops"]) == (expected.ops.macs, expected.ops.sops)
    assert result["sops"] > 0
