"""The authors' files live in each tag's pretrained cfg."""

import pytest
import timm
import torch

from spikezoo.models import MODEL_NAMES
from spikezoo.weights import AuthorsFile, SpikingPretrainedCfg, authors_weights


def _tags_with_authors_files() -> dict[str, AuthorsFile]:
    tags = timm.list_pretrained([f"{name}.*" for name in MODEL_NAMES])
    cfgs = {tag: timm.models.get_pretrained_cfg(tag) for tag in tags}
    return {tag: cfg.authors_file for tag, cfg in cfgs.items() if cfg.authors_file is not None}


def test_the_released_weights_are_the_tags_with_authors_files():
    authors = _tags_with_authors_files()
    downloadable = sorted(tag for tag, file in authors.items() if file.drive_id)
    e_spikeformer_large = [
        f"sdt_v3_12_{width}.in1k_{levels}"
        for width, levels in [
            (512, "1x4"),
            (512, "1x8"),
            (768, "1x4"),
            (768, "1x8"),
            (768, "1x8_384"),
        ]
    ]
    assert downloadable == sorted(
        [
            *(f"sdt_{size}.in1k" for size in ("8_384", "6_512", "8_512", "10_512", "8_768")),
            *(f"sdt_v3_{size}.in1k" for size in "sml"),  # E-SpikeFormer base
            *e_spikeformer_large,
        ]
    )
    by_hand = sorted(tag for tag, file in authors.items() if not file.drive_id)
    resformers = [f"spikingresformer_{size}.in1k" for size in ("ti", "s", "m", "l")]
    # Baidu pages (with their passwords), to be downloaded by hand
    qkformers = [f"qkformer_10_{tag}" for tag in ("384.in1k", "512.in1k", "768.in1k")]
    qkformers += ["qkformer_10_768.in1k_288", "qkformer_10_768.in1k_384"]
    spikingformers = ["spikingformer_8_768.in1k", "spikingformer_4_384_cifar.cifar10"]
    assert by_hand == sorted([*resformers, "sdt_v2_8_512.in1k_kd", *qkformers, *spikingformers])
    for tag in downloadable:
        assert authors[tag].page == f"https://drive.google.com/file/d/{authors[tag].drive_id}/view"


def test_a_cfg_read_back_from_a_model_keeps_its_authors_file():
    with torch.device("meta"):
        model = timm.create_model("sdt_8_384.in1k", embed_dim=64, depth=1, num_heads=4)
    assert isinstance(model.pretrained_cfg["authors_file"], dict)  # timm stores plain dicts
    cfg = SpikingPretrainedCfg(**model.pretrained_cfg)
    assert cfg.authors_file == timm.models.get_pretrained_cfg("sdt_8_384.in1k").authors_file


def test_an_authors_page_is_not_downloaded():
    folder = AuthorsFile(page="https://drive.google.com/drive/folders/x")
    page_only = r"only a page \(https://drive.google.com/drive/folders/x\)"
    with pytest.raises(ValueError, match=page_only), authors_weights("x.in1k", folder):
        pass
