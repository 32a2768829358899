"""``pretrained=True``: the Hub, then the authors' Drive file, cache first; each failure one
line naming the repository or file and what to do, and nothing left in the cache to trust."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from spikezoo.hub import convert_checkpoint, push_folder
from spikezoo.models import CheckpointMismatchError, SpikingVisionModel
from spikezoo.weights import AuthorsFile, DownloadError, WeightsNotFoundError, file_sha256
from tests.hub.hub_helpers import (
    assert_same_state,
    cache_entries,
    logits,
    point_hub_at,
    tiny_authors_file,
)
from tests.models.families import tiny_family

FAMILIES = ["sdt", "resformer", "spikformer"]
DRIVE_ID = "tiny-authors-file"


def _serve_authors_file(drive, tiny, sha256=None) -> dict:
    """Serve the tiny file as the tag's authors' Drive file; returns the cfg overlay that
    points the tag at it."""
    drive.files[DRIVE_ID] = tiny.file.read_bytes()
    page = f"https://drive.google.com/file/d/{DRIVE_ID}/view"
    return dict(authors_file=AuthorsFile(page, DRIVE_ID, sha256))


@pytest.mark.parametrize("family", FAMILIES)
def test_authors_file_is_downloaded_and_cached(weights_env, family):
    hub, drive = weights_env
    tiny = tiny_authors_file(family)
    served = _serve_authors_file(drive, tiny, sha256=file_sha256(tiny.file))

    model = tiny.create(pretrained_cfg_overlay=served)

    assert_same_state(model, tiny.expected_state())
    assert "state_dict" not in model.pretrained_cfg
    # the Hub was asked once per missing repository, then Drive with its confirmation page
    assert _file_requests(hub) == [("HEAD", f"/spikezoo/{tiny.tag}/resolve/main/config.json")]
    # one HEAD: the 404 is final (no retries)
    assert [path.split("?")[0] for _, path in drive.requests] == ["/uc", "/download"]
    kept = Path(os.environ["SPIKEZOO_CACHE"]) / "authors" / tiny.tag
    provenance = json.loads((kept / "provenance.json").read_text())
    assert provenance["source"] == f"{drive.url}/uc?export=download&id={DRIVE_ID}"
    assert provenance["sha256"] == file_sha256(tiny.file)
    assert provenance["downloaded"] and provenance["spikezoo_version"]
    assert cache_entries(Path(os.environ["SPIKEZOO_CACHE"])) == [
        "authors",
        f"authors/{tiny.tag}",
        f"authors/{tiny.tag}/model.safetensors",
        f"authors/{tiny.tag}/provenance.json",
    ]

    drive.files.clear()  # the second call needs no network, nor the overlay: the tag is cached
    assert_same_state(tiny.create(), tiny.expected_state())
    assert len(drive.requests) == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_authors_file_is_mapped_onto_the_one_model_being_built(
    weights_env, monkeypatch, tmp_path, family
):
    _, drive = weights_env
    tiny = tiny_authors_file(family)
    served = _serve_authors_file(drive, tiny)
    built = []
    build_one = SpikingVisionModel.__init__

    def counted(model, *args, **kwargs):
        built.append(type(model).__name__)
        build_one(model, *args, **kwargs)

    monkeypatch.setattr(SpikingVisionModel, "__init__", counted)
    overlay = dict(served, num_classes=tiny.num_classes)
    model = timm.create_model(
        tiny.tag, pretrained=True, pretrained_cfg_overlay=overlay, **tiny.args
    )
    assert built == [type(model).__name__]
    assert model.training  # the check's forward pass left the mode as timm builds it
    monkeypatch.undo()

    # the same tensors as the converter gives (what pretrained=True loaded before)
    convert_checkpoint(tiny.file, tiny.tag, tmp_path / "converted", model_args=tiny.model_args())
    converted = timm.create_model(f"local-dir:{tmp_path / 'converted'}", pretrained=True)
    assert_same_state(model, converted.state_dict())
    assert torch.equal(logits(model), logits(converted))


def test_features_only_model_takes_a_fresh_download(weights_env):
    _, drive = weights_env
    tiny = tiny_authors_file("sdt")
    served = _serve_authors_file(drive, tiny)
    features = tiny.create(pretrained_cfg_overlay=served, features_only=True)
    expected = {f"model.{k}": v for k, v in tiny.expected_state().items()}
    for key, value in features.state_dict().items():
        assert torch.equal(value, expected[key]), key
    kept = _spikezoo_cache() / "authors" / tiny.tag / "model.safetensors"
    assert kept.is_file()


def _with_nan_head(tiny, tmp_path) -> Path:
    checkpoint = torch.load(tiny.file, map_location="cpu", weights_only=False)
    head = next(k for k in checkpoint["state_dict"] if k.endswith("head.weight"))
    checkpoint["state_dict"][head] = torch.full_like(checkpoint["state_dict"][head], torch.nan)
    path = tmp_path / "nan_head.pth"
    torch.save(dict(state_dict=checkpoint["state_dict"]), path)
    return path


@pytest.mark.parametrize("rejection", ["non-finite", "another architecture"])
def test_download_the_model_rejects_is_not_cached(weights_env, tmp_path, rejection):
    _, drive = weights_env
    tiny = tiny_authors_file("sdt")
    served = _serve_authors_file(drive, tiny)
    if rejection == "non-finite":
        drive.files[DRIVE_ID] = _with_nan_head(tiny, tmp_path).read_bytes()
        error, message = ValueError, f"the weights of {drive.url}/uc.* are not finite"
    else:
        drive.files[DRIVE_ID] = tiny_authors_file("resformer").file.read_bytes()
        error, message = CheckpointMismatchError, "does not fit SpikeDrivenTransformer"
    with pytest.raises(error, match=message):
        tiny.create(pretrained_cfg_overlay=served)
    assert cache_entries(_spikezoo_cache()) == []


def test_second_run_with_hf_hub_offline_loads_from_the_cache(weights_env, tmp_path):
    _, drive = weights_env
    tiny = tiny_authors_file("sdt")
    served = _serve_authors_file(drive, tiny)
    expected = logits(tiny.create(pretrained_cfg_overlay=served))
    torch.save(expected, tmp_path / "expected.pt")
    script = f"""
import timm
import torch
from tests.hub.hub_helpers import logits, tiny_authors_file
assert timm.models.get_pretrained_cfg("{tiny.tag}").authors_file.drive_id != "{DRIVE_ID}"
out = logits(tiny_authors_file("sdt").create())
assert torch.equal(out, torch.load({str(tmp_path / "expected.pt")!r})), "different logits"
print("loaded offline")
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    env["SPIKEZOO_DRIVE_ENDPOINT"] = "http://127.0.0.1:9"
    env["PYTHONPATH"] = str(Path(__file__).parents[2])
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "loaded offline" in result.stdout


@pytest.mark.parametrize("family", FAMILIES)
def test_convert_push_and_load_round_trip(weights_env, tmp_path, family):
    hub, _ = weights_env
    tiny = tiny_authors_file(family)
    out = tmp_path / "converted"
    convert_checkpoint(tiny.file, tiny.tag, out, model_args=tiny.model_args())
    config = json.loads((out / "config.json").read_text())
    timm.models.PretrainedCfg(**config["pretrained_cfg"])  # plain timm accepts it
    assert config["model_args"]["time_steps"] == tiny.args["time_steps"]
    card = (out / "README.md").read_text()
    assert "## Citation" in card and file_sha256(tiny.file) in card and "paper" in card

    repo_id = f"spikezoo/{tiny.tag}"
    url = push_folder(out, repo_id, token="hf_test")
    first_commit = url.rsplit("/", 1)[-1]
    assert set(hub.files(repo_id)) == {
        "config.json",
        "model.safetensors",
        "README.md",
        "provenance.json",
    }
    assert hub.lfs  # the weights went over LFS

    expected = tiny.expected_state()
    from_local = timm.create_model(f"local-dir:{out}", pretrained=True)
    from_repo = timm.create_model(f"hf-hub:{repo_id}", pretrained=True)
    from_tag = tiny.create()
    for model in (from_local, from_repo, from_tag):
        assert_same_state(model, expected)
        assert model.time_steps == tiny.args["time_steps"]
    assert torch.equal(logits(from_tag), logits(from_local))
    assert torch.equal(logits(from_repo), logits(from_local))

    # a revision pins the weights: push different ones, load the first commit
    changed = tmp_path / "changed"
    convert_checkpoint(tiny.file, tiny.tag, changed, model_args=dict(tiny.model_args()))
    state = timm.models.load_state_dict(str(changed / "model.safetensors"))
    key = next(k for k in state if k.endswith("conv.weight"))
    state[key] = state[key] + 1
    from safetensors.torch import save_file

    save_file(state, changed / "model.safetensors")
    push_folder(changed, repo_id, token="hf_test")
    pinned = tiny.create(pretrained_cfg_overlay=dict(hf_hub_id=f"{repo_id}@{first_commit}"))
    assert_same_state(pinned, expected)


def _file_requests(hub):
    return [r for r in hub.requests if "/resolve/" in r[1]]


def _one_line(error) -> str:
    message = str(error)
    assert "\n" not in message
    return message


def _spikezoo_cache() -> Path:
    return Path(os.environ["SPIKEZOO_CACHE"])


CIFAR_TAG = "sdt_2_256_cifar.cifar10"
TINY_SDT = tiny_family("spike_driven_transformer").args


def test_hub_unreachable(monkeypatch, tmp_path):
    point_hub_at(monkeypatch, "http://127.0.0.1:9", tmp_path)  # nothing listens on port 9
    monkeypatch.setenv("SPIKEZOO_CACHE", str(tmp_path / "spikezoo"))
    with pytest.raises(WeightsNotFoundError) as info:
        timm.create_model(CIFAR_TAG, pretrained=True, **TINY_SDT)
    message = _one_line(info.value)
    assert "cannot reach the Hub for spikezoo/sdt_2_256_cifar.cifar10/config.json (" in message
    assert "no weights for sdt_2_256_cifar.cifar10: the authors released none" in message
    assert "'spikezoo convert FILE --model sdt_2_256_cifar.cifar10 --out DIR --install'" in message


def test_hub_404_means_not_published_and_is_asked_once(weights_env):
    hub, _ = weights_env
    with pytest.raises(WeightsNotFoundError) as info:
        timm.create_model(CIFAR_TAG, pretrained=True, **TINY_SDT)
    message = _one_line(info.value)
    assert "Hub repository spikezoo/sdt_2_256_cifar.cifar10 does not exist (not published)" in (
        message
    )
    assert len(_file_requests(hub)) == 1  # no retries
    assert cache_entries(_spikezoo_cache()) == []


def test_sdt_tag_error_says_where_the_authors_file_is(weights_env):
    with pytest.raises(WeightsNotFoundError) as info:
        timm.create_model("sdt_8_768.in1k", pretrained=True, **TINY_SDT)
    message = _one_line(info.value)
    assert "https://drive.google.com/file/d/1R-MaeFV8d2Y0pIGBSjklOGWhaF8dLHf4/view" in message
    assert "authors' file: " in message and "answered HTTP 404" in message


def test_meta_spikeformer_error_names_the_drive_folder_and_the_convert_command(weights_env):
    tiny = dict(tiny_family("spike_driven_transformer_v2").args, kd=True)
    with pytest.raises(WeightsNotFoundError) as info:
        timm.create_model("sdt_v2_8_512.in1k_kd", pretrained=True, **tiny)
    message = _one_line(info.value)
    assert "https://drive.google.com/drive/folders/12JcIRG8BF6JcgPsXIetSS14udtHXeSSx" in message
    assert "'spikezoo convert FILE --model sdt_v2_8_512.in1k_kd --out DIR --install'" in message


def test_spikingformer_error_names_the_baidu_page_its_password_and_the_convert_command(
    weights_env,
):
    tiny = tiny_family("spikingformer").args
    with pytest.raises(WeightsNotFoundError) as info:
        timm.create_model("spikingformer_8_768.in1k", pretrained=True, **tiny)
    message = _one_line(info.value)
    assert "https://pan.baidu.com/s/1LsECpFOxh30O3vHWow8OGQ (password abcd)" in message
    assert "'spikezoo convert FILE --model spikingformer_8_768.in1k --out DIR --install'" in message


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("html", "returned an HTML page instead of the file"),
        ("truncate", "is truncated: "),
        ("corrupt", "is not a PyTorch or safetensors checkpoint"),
        ("sha256", "differs from the expected 000000"),
    ],
)
def test_bad_drive_download_fails_in_one_line_and_leaves_no_cache(weights_env, breakage, expected):
    _, drive = weights_env
    tiny = tiny_authors_file("sdt")
    served = _serve_authors_file(drive, tiny, sha256="0" * 64 if breakage == "sha256" else None)
    if breakage == "corrupt":
        drive.files[DRIVE_ID] = os.urandom(len(drive.files[DRIVE_ID]))
    elif breakage != "sha256":
        drive.mode = breakage
    with pytest.raises(WeightsNotFoundError) as info:
        tiny.create(pretrained_cfg_overlay=served)
    message = _one_line(info.value)
    assert expected in message and f"id={DRIVE_ID}" in message
    assert f"no weights for {tiny.tag}" in message
    assert cache_entries(_spikezoo_cache()) == []  # no weights, no staging leftovers

    drive.mode = "ok"  # a later call downloads again and succeeds
    drive.files[DRIVE_ID] = tiny.file.read_bytes()
    fixed = dict(authors_file=AuthorsFile("page", DRIVE_ID))
    assert_same_state(tiny.create(pretrained_cfg_overlay=fixed), tiny.expected_state())


def test_config_for_another_architecture(weights_env, tmp_path):
    hub, _ = weights_env
    tiny = tiny_authors_file("sdt")
    convert_checkpoint(tiny.file, tiny.tag, tmp_path / "out", model_args=tiny.model_args())
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    config["architecture"] = "spikingresformer_ti"
    files = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    hub.commit(f"spikezoo/{tiny.tag}", dict(files, **{"config.json": json.dumps(config).encode()}))
    with pytest.raises(WeightsNotFoundError) as info:
        tiny.create()
    message = _one_line(info.value)
    assert (
        f"spikezoo/{tiny.tag}/config.json is for architecture 'spikingresformer_ti', "
        "not 'sdt_8_384'" in message
    )


def test_damaged_hub_file_is_removed_from_the_cache(weights_env, tmp_path):
    hub, _ = weights_env
    tiny = tiny_authors_file("sdt")
    convert_checkpoint(tiny.file, tiny.tag, tmp_path / "out", model_args=tiny.model_args())
    files = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    good = files["model.safetensors"]
    repo_id = f"spikezoo/{tiny.tag}"
    hub.commit(repo_id, dict(files, **{"model.safetensors": good[: len(good) // 2]}))
    with pytest.raises(WeightsNotFoundError) as info:
        tiny.create()
    message = _one_line(info.value)
    assert f"{repo_id}/model.safetensors is a truncated or corrupted safetensors file" in message
    assert "removed from the cache" in message
    hub_cache = Path(os.environ["HF_HUB_CACHE"])
    assert not list(hub_cache.rglob("model.safetensors"))

    hub.commit(repo_id, {"model.safetensors": good})
    assert_same_state(tiny.create(), tiny.expected_state())


def test_offline_without_cache_fails_at_once(weights_env, monkeypatch):
    import huggingface_hub.constants as hf_constants

    hub, _ = weights_env
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsNotFoundError) as info:
        timm.create_model(CIFAR_TAG, pretrained=True, **TINY_SDT)
    assert "not cached, and HF_HUB_OFFLINE=1 forbids downloads" in _one_line(info.value)
    assert _file_requests(hub) == []


def test_push_without_token_says_how_to_log_in(weights_env, tmp_path):
    tiny = tiny_authors_file("sdt")
    convert_checkpoint(tiny.file, tiny.tag, tmp_path / "out", model_args=tiny.model_args())
    from spikezoo.hub import PublishError

    with pytest.raises(PublishError, match="run 'hf auth login' or set HF_TOKEN"):
        push_folder(tmp_path / "out", "spikezoo/x")
    with pytest.raises(PublishError, match="is not a converted model directory"):
        push_folder(tmp_path, "spikezoo/x", token="hf_test")


def test_download_error_is_a_weights_error():
    assert issubclass(DownloadError, RuntimeError)
