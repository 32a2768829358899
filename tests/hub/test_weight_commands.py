"""``spikezoo convert``, ``push`` and ``publish`` against the local Hub and Drive."""

import json
import os
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from spikezoo.cli import main
from spikezoo.hub import read_manifest
from spikezoo.train import load_recipe, read_training_checkpoint, train
from spikezoo.train.checkpoint import CHECKPOINT_FORMAT
from spikezoo.train.config import config_to_dict
from spikezoo.weights import file_sha256
from tests.hub.hub_helpers import assert_same_state, cache_entries, tiny_authors_file
from tests.train.conftest import tiny_recipe

REPO_ROOT = Path(__file__).parents[2]


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _convert_args(tiny, out):
    args = json.dumps(tiny.model_args())
    return ["convert", tiny.file, "--model", tiny.tag, "--out", out, "--model-args", args]


def test_convert_install_then_pretrained_needs_no_network(weights_env, tmp_path, capsys):
    hub, _ = weights_env
    tiny = tiny_authors_file("resformer")
    out = tmp_path / "converted"
    code, printed, err = _run(capsys, *_convert_args(tiny, out), "--install")
    assert code == 0, err
    assert f"source sha256 {file_sha256(tiny.file)}" in printed
    assert sorted(os.listdir(out)) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "provenance.json",
    ]
    assert_same_state(tiny.create(), tiny.expected_state())
    assert hub.requests == []  # the installed copy came first


def test_convert_a_spikezoo_checkpoint(tmp_path, capsys):
    tiny = tiny_authors_file("sdt")
    spikezoo_file = tmp_path / "spikezoo.safetensors"
    save_file(tiny.expected_state(), spikezoo_file)
    out = tmp_path / "converted"
    argv = _convert_args(tiny, out)
    argv[1] = spikezoo_file
    code, _, err = _run(capsys, *argv)
    assert code == 0, err
    assert load_file(out / "model.safetensors").keys() == tiny.expected_state().keys()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--model", "sdt_8_384.in1k"], "is a text file"),
        (["--model", "nonexistent_model"], "unknown model 'nonexistent_model'"),
        (["--model", "sdt_8_384.in1k", "--model-args", "[1]"], "expected a JSON object"),
    ],
)
def test_convert_errors_are_one_line_with_a_hint(tmp_path, capsys, argv, expected):
    source = tmp_path / "notes.txt"
    source.write_text("not a checkpoint\n")
    code, _, err = _run(capsys, "convert", source, "--out", tmp_path / "out", *argv)
    assert code != 0
    assert err.count("\n") == 1 and expected in err and "(" in err
    assert not (tmp_path / "out").exists()


def test_convert_for_the_wrong_architecture_names_the_likely_model(tmp_path, capsys):
    tiny = tiny_authors_file("sdt")
    argv = ["convert", tiny.file, "--model", "spikingresformer_ti.in1k", "--out", tmp_path / "o"]
    code, _, err = _run(capsys, *argv)
    assert code == 1 and err.count("\n") == 1
    assert "the checkpoint does not fit the model (" in err and "missing" in err


def test_push_needs_a_token_then_uploads(weights_env, tmp_path, capsys, monkeypatch):
    hub, _ = weights_env
    tiny = tiny_authors_file("sdt")
    out = tmp_path / "converted"
    assert _run(capsys, *_convert_args(tiny, out))[0] == 0
    code, _, err = _run(capsys, "push", out, "--repo-id", "spikezoo/test")
    assert code == 1 and err.count("\n") == 1
    assert "no Hugging Face token to push spikezoo/test: run 'hf auth login' or set HF_TOKEN" in err

    monkeypatch.setenv("HF_TOKEN", "hf_test")
    code, printed, err = _run(capsys, "push", out, "--repo-id", "spikezoo/test")
    assert code == 0, err
    assert f"{hub.url}/spikezoo/test/commit/" in printed
    assert (
        (hub.files("spikezoo/test")["model.safetensors"])
        == (out / "model.safetensors").read_bytes()
    )


def _manifest(tmp_path, entries, organisation="spikezoo-test"):
    lines = [f'organisation = "{organisation}"']
    for entry in entries:
        lines.append("[[weights]]")
        for key, value in entry.items():
            lines.append(f"{key} = {json.dumps(value) if key != 'model_args' else _toml(value)}")
    path = tmp_path / "manifest.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(table: dict) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in table.items()) + " }"


def test_publish_converts_and_pushes_every_entry(weights_env, tmp_path, capsys, monkeypatch):
    hub, drive = weights_env
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    sdt, resformer = tiny_authors_file("sdt"), tiny_authors_file("resformer")
    drive.files["resformer-id"] = resformer.file.read_bytes()
    manifest = _manifest(
        tmp_path,
        [
            dict(
                model=sdt.tag,
                source=str(sdt.file),
                sha256=file_sha256(sdt.file),
                top1=72.28,
                model_args=sdt.model_args(),
            ),
            dict(
                model=resformer.tag, source="drive:resformer-id", model_args=resformer.model_args()
            ),
        ],
    )
    code, printed, err = _run(capsys, "publish", manifest, "--org", "elsewhere")
    assert code == 0, err
    assert sorted(hub.repos) == [f"elsewhere/{sdt.tag}", f"elsewhere/{resformer.tag}"]
    assert printed.count("pushed ") == 2
    for tiny in (sdt, resformer):
        name = f"hf-hub:elsewhere/{tiny.tag}"
        import timm

        assert_same_state(timm.create_model(name, pretrained=True), tiny.expected_state())


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (dict(sha256="0" * 64), "the manifest expects 000000"),
        (dict(top1=99.9), "the manifest's top1 99.9 differs from the registry's 74.34"),
        (dict(source="drive:missing-id"), "answered HTTP 404"),
    ],
)
def test_publish_stops_at_the_first_mismatch_with_nothing_pushed(
    weights_env, tmp_path, capsys, monkeypatch, broken, expected
):
    hub, _ = weights_env
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    sdt, resformer = tiny_authors_file("sdt"), tiny_authors_file("resformer")
    good = dict(model=sdt.tag, source=str(sdt.file), model_args=sdt.model_args())
    bad = dict(dict(model=resformer.tag, source=str(resformer.file)), **broken)
    code, _, err = _run(capsys, "publish", _manifest(tmp_path, [good, bad]))
    assert code == 1 and err.count("\n") == 1
    assert resformer.tag in err and expected in err and "nothing was pushed" in err
    assert hub.repos == {} and not [r for r in hub.requests if r[0] != "GET"]


def test_committed_manifest_lists_the_authors_drive_files():
    import timm

    manifest = read_manifest(REPO_ROOT / "weights" / "manifest.toml")
    assert manifest.organisation == "spikezoo"
    for entry in manifest.entries:
        cfg = timm.models.get_pretrained_cfg(entry.model)
        assert entry.source == f"drive:{cfg.authors_file.drive_id}"
        assert entry.top1 == cfg.top1


def test_manifest_errors_name_the_entry(tmp_path):
    path = _manifest(tmp_path, [dict(model="sdt_8_384.in1k", source="x", colour="red")])
    with pytest.raises(ValueError, match=r"entry 1 has unknown fields \['colour'\]"):
        read_manifest(path)


# --- checkpoints written by 'spikezoo train' -------------------------------------------------


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory) -> Path:
    """``last.pth`` of a one-epoch run of the tiny digits recipe (a 1x8x8 input, 10 classes)."""
    output = tmp_path_factory.mktemp("digits")
    train(tiny_recipe(output, "run.epochs=1"))
    return output / "last.pth"


def test_convert_a_training_checkpoint_describes_the_model_trained(
    digits_checkpoint, tmp_path, capsys
):
    out = tmp_path / "digits"
    code, printed, err = _run(capsys, "convert", digits_checkpoint, "--out", out)
    assert code == 0, err
    assert printed.startswith(f"sdt_2_256_cifar: wrote {out}")  # no tag
    config = json.loads((out / "config.json").read_text())
    assert config["model_args"]["in_chans"] == 1 and config["model_args"]["embed_dim"] == 16
    cfg = config["pretrained_cfg"]
    assert (cfg["input_size"], cfg["mean"], cfg["std"]) == ([1, 8, 8], [0.5], [0.5])
    assert "hf_hub_id" not in cfg and config["spikezoo"] == {}  # not the paper's, not the Hub's
    card = (out / "README.md").read_text()
    assert card.splitlines()[5] == "# sdt_2_256_cifar"
    assert "trained with [spikezoo]" in card and "on digits (1 epoch)" in card
    assert "- input: 1x8x8, mean (0.5,), std (0.5,)" in card
    assert "top-1 on the digits evaluation set" in card and "authors' checkpoint" not in card
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert model.pretrained_cfg["input_size"] == (1, 8, 8)
    assert_same_state(model, read_training_checkpoint(digits_checkpoint)["state_dict"])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--model", "sdt_2_256_cifar.cifar10", "--install"],
            "sdt_2_256_cifar.cifar10 is for (3x32x32 input, mean (0.4914, 0.4822, 0.4465), std "
            "(0.247, 0.2435, 0.2616), 10 classes), but {source} was trained on digits (1x8x8 "
            "input, mean (0.5,), std (0.5,), 10 classes) (they differ in input_size, mean, std); "
            "convert it without the tag (--model sdt_2_256_cifar)",
        ),
        (
            ["--model", "sdt_2_512_cifar"],
            "{source} was trained as sdt_2_256_cifar with {{'num_classes': 10, 'in_chans': 1, "
            "'embed_dim': 16,",
        ),
        (
            ["--model-args", '{"embed_dim": 32}'],
            "(0 missing, 0 unexpected, 57 mismatched tensors); the checkpoint says it is "
            "sdt_2_256_cifar with {{'num_classes': 10, 'in_chans': 1, 'embed_dim': 16,",
        ),
    ],
)
def test_convert_a_training_checkpoint_refuses_what_it_is_not(
    digits_checkpoint, weights_env, tmp_path, capsys, argv, expected
):
    out = tmp_path / "out"
    code, _, err = _run(capsys, "convert", digits_checkpoint, "--out", out, *argv)
    assert code == 1 and err.count("\n") == 1
    assert expected.format(source=digits_checkpoint) in err
    assert not out.exists() and cache_entries(tmp_path / "spikezoo") == []


def test_convert_install_needs_a_tag_that_matches(digits_checkpoint, weights_env, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(capsys, "convert", digits_checkpoint, "--out", out, "--install")
    assert code == 1 and err.count("\n") == 1
    assert f"wrote {out}, but did not install it: sdt_2_256_cifar has no tag whose data" in err
    assert f"timm.create_model('local-dir:{out}', pretrained=True)" in err
    assert (out / "model.safetensors").is_file() and cache_entries(tmp_path / "spikezoo") == []


TINY_CIFAR = dict(embed_dim=16, depth=1, num_heads=2, img_size=32, time_steps=1)


def _cifar10_training_checkpoint(path: Path) -> dict:
    """A checkpoint holding what the trainer writes (``format``, ``state_dict``, ``model_name``,
    ``num_classes``, ``config``, ``epoch``, ``metrics``) for a tiny SDT on CIFAR-10."""
    recipe = load_recipe(
        "digits",
        ["model.kwargs=" + json.dumps(TINY_CIFAR), "data.dataset=cifar10", "data.img_size=32"],
    )
    model = timm.create_model("sdt_2_256_cifar", num_classes=10, **TINY_CIFAR)
    torch.save(
        dict(
            format=CHECKPOINT_FORMAT,
            state_dict=model.state_dict(),
            model_name="sdt_2_256_cifar",
            num_classes=10,
            config=config_to_dict(recipe),
            epoch=3,
            metrics=dict(eval_top1=41.5),
        ),
        path,
    )
    return model.state_dict()


def test_convert_a_training_checkpoint_under_the_tag_of_its_data(weights_env, tmp_path, capsys):
    source = tmp_path / "cifar10.pth"
    state = _cifar10_training_checkpoint(source)
    out = tmp_path / "out"
    argv = ["convert", source, "--model", "sdt_2_256_cifar.cifar10", "--out", out, "--install"]
    code, printed, err = _run(capsys, *argv)
    assert code == 0, err
    assert "installed as" in printed
    card = (out / "README.md").read_text()
    assert "# sdt_2_256_cifar.cifar10" in card and "on cifar10 (3 epochs)" in card
    assert "41.50 % top-1 on the cifar10 evaluation set" in card
    assert_same_state(
        timm.create_model("sdt_2_256_cifar.cifar10", pretrained=True, **TINY_CIFAR), state
    )
    assert main(["list", "--pretrained", "sdt_2_256_cifar.*"]) == 0  # it has weights now
    assert capsys.readouterr().out.split() == ["sdt_2_256_cifar.cifar10"]


def test_convert_refuses_a_tag_for_other_input_channels(tmp_path, capsys):
    tiny = tiny_authors_file("sdt")
    args = json.dumps(dict(tiny.model_args(), in_chans=1))
    argv = [
        "convert",
        tiny.file,
        "--model",
        tiny.tag,
        "--out",
        tmp_path / "o",
        "--model-args",
        args,
    ]
    code, _, err = _run(capsys, *argv)
    assert code == 1 and err.count("\n") == 1
    assert f"{tiny.tag} is for (3x224x224 input" in err and "has in_chans=1" in err


def test_convert_without_model_needs_a_training_checkpoint(tmp_path, capsys):
    tiny = tiny_authors_file("sdt")
    code, _, err = _run(capsys, "convert", tiny.file, "--out", tmp_path / "o")
    assert code == 1
    assert "is not a checkpoint written by 'spikezoo train'" in err and "--model NAME" in err
