"""The ``spikezoo`` command: what each command prints, in-process."""

import pytest
import timm
import torch

import spikezoo
from spikezoo import runtime
from spikezoo.cli import main
from spikezoo.cli.common import COMPILE_NOTE, note_compilation
from spikezoo.cli.demo import default_image
from spikezoo.models._registry import timm_module_name
from spikezoo.neurons import set_backend
from spikezoo.neurons.backends import native


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"spikezoo-vit {spikezoo.__version__}"


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "list the registered models" in out and "classify the built-in input" in out


def test_list_shows_every_family_and_tags(capsys):
    assert main(["list"]) == 0
    names = capsys.readouterr().out.split()
    assert names == list(spikezoo.models.MODEL_NAMES) and "sdt_8_768" in names
    for family in spikezoo.models.FAMILIES:
        assert set(timm.list_models(module=timm_module_name(family))) <= set(names), family
    assert main(["list", "--pretrained", "spikingresformer*"]) == 0
    tags = capsys.readouterr().out.split()
    assert "spikingresformer_s.in1k" in tags and all(t.startswith("spikingresformer") for t in tags)


@pytest.mark.usefixtures("auto_backend_as_users_have_it")
def test_demo_runs_on_the_built_in_input(capsys):
    assert main(["demo", "--model", "sdt_2_256_cifar", "--time-steps", "2"]) == 0
    captured = capsys.readouterr()
    assert "sdt_2_256_cifar: 2.57M parameters, T=2" in captured.out
    assert "top-5 classes:" in captured.out
    lines = captured.out.splitlines()
    rates = [float(line.split()[-1]) for line in lines if line.startswith("  blocks.")]
    assert len(rates) == 14 and any(r > 0 for r in rates) and all(0 <= r <= 1 for r in rates)
    # Two forward passes: the C loops, or eagerly where they cannot be built; no compile note.
    expected = "native" if native.unavailable_reason(torch.ones(1)) is None else "torch"
    assert f"neurons on the {expected} backend" in captured.out
    assert COMPILE_NOTE not in captured.err


def test_default_image_is_deterministic_and_in_range():
    image = default_image(2, 16, 24)
    assert image.shape == (2, 16, 24) and image.min() >= 0 and image.max() <= 1
    assert torch.equal(image, default_image(2, 16, 24))


@pytest.mark.usefixtures("auto_backend_as_users_have_it")
def test_the_compile_note_is_said_where_a_neuron_compiles_with_inductor(capsys):
    model = set_backend(timm.create_model("sdt_2_256_cifar"), "inductor")
    note_compilation("profile", model)
    assert capsys.readouterr().err == f"spikezoo profile: {COMPILE_NOTE}\n"
    for backend in ("torch", "native"):
        note_compilation("profile", set_backend(model, backend))
        assert capsys.readouterr().err == ""
    # "auto" says it only where it resolves to inductor: float64 (the C loops are float32)
    note_compilation("profile", set_backend(model, "auto"))
    assert capsys.readouterr().err == ""
    note_compilation("profile", model.double())
    assert capsys.readouterr().err == f"spikezoo profile: {COMPILE_NOTE}\n"


@pytest.mark.parametrize(("value", "kept"), [(None, True), ("1", True), ("0", False)])
def test_a_command_keeps_freed_memory_unless_told_not_to(monkeypatch, capsys, value, kept):
    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(1) or True)
    if value is None:
        monkeypatch.delenv(runtime.KEEP_FREED_MEMORY_ENV, raising=False)
    else:
        monkeypatch.setenv(runtime.KEEP_FREED_MEMORY_ENV, value)
    assert main(["list", "sdt_8_3*"]) == 0
    assert capsys.readouterr().out.split() == ["sdt_8_384"]
    assert calls == ([1] if kept else [])


def test_a_wrong_keep_freed_memory_setting_is_named_and_nothing_runs(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setenv(runtime.KEEP_FREED_MEMORY_ENV, "yes")
    assert main(["list"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and calls == []
    assert "SPIKEZOO_KEEP_FREED_MEMORY='yes': expected 1" in captured.err
    assert "or 0" in captured.err and "set it to 0 or 1, or unset it" in captured.err
