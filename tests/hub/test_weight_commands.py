"""``spikezoo convert``, ``push`` and ``publish`` against the local Hub and Drive."""

import json
import os
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from spikezoo.cli import main
from spikezoo.hub import read_manifest
from spikezoo.weights import file_sha256
from tests.hub.hub_helpers import assert_same_state, tiny_authors_file

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
