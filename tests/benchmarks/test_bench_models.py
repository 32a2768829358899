"""benchmarks/bench_models.py: its spikingjelly 2.x peer and its report, on tiny networks.

Nothing here times anything: the peer must compute what spikezoo computes, and the command must
produce its JSON, markdown and plots. Neurons run on the eager backend (no compilation), so the
whole file takes seconds.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from tests.analysis.tiny_models import RESFORMER, SDT, eager
from tests.models.families import tiny, tiny_family

pytest.importorskip("spikingjelly.activation_based")
pytest.importorskip("matplotlib")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_models", BENCHMARKS / "bench_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_models"] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_models", None)


def spike_count(model: torch.nn.Module, images: torch.Tensor, bench) -> tuple[torch.Tensor, int]:
    return bench.count_spikes(model, lambda: model(images))


@pytest.mark.parametrize("family", [SDT, RESFORMER])
def test_spikingjelly2_peer_computes_what_spikezoo_computes(family, bench):
    from peers.sj2_models import build_sj2_model

    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    zoo = eager(tiny(family)).double()
    bench.set_batchnorm_statistics(zoo, images)
    peer = build_sj2_model(zoo)
    with torch.no_grad():
        for mode in ("eval", "train"):  # train: batch statistics and the DSSA rate updates
            zoo.train(mode == "train")
            peer.train(mode == "train")
            expected, zoo_spikes = spike_count(zoo, images, bench)
            got, peer_spikes = spike_count(peer, images, bench)
            assert zoo_spikes > 0, "the tiny network must spike for the comparison to mean anything"
            assert peer_spikes == zoo_spikes
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    for name, buffer in zoo.named_buffers():
        if "firing_rate" in name:
            torch.testing.assert_close(peer.get_buffer(name), buffer)


def test_sj2_peer_refuses_other_models():
    from peers.sj2_models import build_sj2_model

    with pytest.raises(TypeError, match="SpikeDrivenTransformer or SpikingResformer"):
        build_sj2_model(torch.nn.Linear(2, 2))


FAKE_LIMITS = dict(
    bandwidth_copy_Bps=1e10, bandwidth_add_Bps=1.2e10, bandwidth_Bps=1.2e10,
    matmul_fp32_flops=1e11, matmul_bf16_flops=2e11, conv_fp32_flops=8e10, conv_bf16_flops=1.6e11,
)  # fmt: skip


def test_command_writes_json_markdown_and_plots(bench, tmp_path, monkeypatch):
    tiny = bench.ModelSpec(
        "tiny_sdt", 32, {"cpu": 1, "quick": 1}, bench.spike_driven_transformer,
        create_kwargs=dict(tiny_family(SDT).args, time_steps=2, num_classes=10),
        authors=False, timm_name="sdt_2_512_cifar",
    )  # fmt: skip
    monkeypatch.setitem(bench.MODELS, "tiny_sdt", tiny)
    create_model = bench.timm.create_model
    monkeypatch.setattr(bench.timm, "create_model", lambda *a, **k: eager(create_model(*a, **k)))
    monkeypatch.setattr(bench, "machine_limits", lambda device, quick: dict(FAKE_LIMITS))
    doc = tmp_path / "doc.md"
    doc.write_text(
        f"# Title\n\nbefore\n\n{bench.MARK_BEGIN}\nold table\n{bench.MARK_END}\n\nafter\n"
    )
    argv = [
        "--models", "tiny_sdt", "--impls", "spikezoo,authors,spikingjelly2", "--dtypes", "fp32",
        "--modes", "eager", "--repeats", "1", "--warmup", "1", "--threads", "1",
        "--json", str(tmp_path / "r.json"), "--markdown", str(doc), "--plots", str(tmp_path / "p"),
    ]  # fmt: skip
    bench.main(argv)

    report = json.loads((tmp_path / "r.json").read_text())
    (model,) = report["models"]
    assert model["skipped"]["authors"] == "no authors' configuration for this model"
    assert model["agreement"]["spikingjelly2"]["agree"] is True
    assert (
        model["agreement"]["spikingjelly2"]["spikes"]
        == model["agreement"]["spikezoo"]["spikes"]
        > 0
    )
    assert [(v["task"], v["dtype"], v["mode"]) for v in model["variants"]] == [
        ("infer", "fp32", "eager"),
        ("train", "fp32", "eager"),
    ]
    for variant in model["variants"]:
        assert set(variant["results"]) == {"spikezoo", "spikingjelly2"}
        peer, zoo = variant["results"]["spikingjelly2"], variant["results"]["spikezoo"]
        assert len(peer["times_s"]) == 1
        assert peer["speedup_of_spikezoo"] == pytest.approx(peer["median_s"] / zoo["median_s"])
        assert zoo["peak_bytes"] > 0
        assert peer["spikezoo_memory_ratio"] == pytest.approx(
            zoo["peak_bytes"] / peer["peak_bytes"]
        )
    layers = model["roofline"]["fp32"]["layers"]
    convs = [row for row in layers if row["type"] == "Conv2d"]
    assert convs and all(row["flops"] > 0 and row["fraction_of_roof"] > 0 for row in convs)

    text = doc.read_text()
    assert text.startswith("# Title\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert "old table" not in text
    assert "### tiny_sdt (32x32, batch 1)" in text
    assert "| spikingjelly2 | fp32 | eager | train |" in text
    assert "![tiny_sdt_roofline](p/tiny_sdt_roofline.png)" in text
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "tiny_sdt.png",
        "tiny_sdt_roofline.png",
    ]

    again = tmp_path / "again.md"
    report_json, plots = str(tmp_path / "r.json"), str(tmp_path / "p")
    bench.main(["--from-json", report_json, "--markdown", str(again), "--plots", plots])
    block = text[text.index(bench.MARK_BEGIN) : text.index(bench.MARK_END) + len(bench.MARK_END)]
    assert again.read_text() == block + "\n"  # the same tables, rendered from the saved report


def test_bad_options_name_what_is_allowed(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "resnet50"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--impls", "authors"])


class _Shifted(torch.nn.Module):
    """A peer that computes the reference plus ``shift``, or raises."""

    def __init__(self, reference: torch.nn.Module, shift: float | None) -> None:
        super().__init__()
        self.reference, self.shift = reference, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shift is None:
            raise RuntimeError("kernel failed\nsecond line")
        return self.reference(x) + self.shift


def test_agreement_flags_a_differing_or_failing_peer(bench):
    zoo = eager(tiny(SDT))
    images = torch.randn(1, 3, 32, 32)
    bench.set_batchnorm_statistics(zoo, images)
    runners = [bench.Runner("spikezoo", zoo)] + [
        bench.Runner(name, _Shifted(zoo, shift))
        for name, shift in (("same", 0.0), ("off", 1e-3), ("broken", None))
    ]
    runners.append(bench.Runner("rounding", _Shifted(zoo, 1e-3), spike_rounding=1e-5))
    verdicts = bench.check_agreement(runners, images, atol=1e-4)
    # a runner allowed rounding flips agrees on its spikes whatever its logits
    assert verdicts["rounding"]["agree"] and verdicts["rounding"]["same_spikes"]
    assert verdicts["same"]["agree"] and verdicts["same"]["same_spikes"]
    assert not verdicts["off"]["agree"]
    assert verdicts["off"]["max_abs_logit_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert verdicts["broken"] == dict(
        max_abs_logit_diff=None, spikes=None, same_spikes=None, agree=False,
        error="RuntimeError: kernel failed",
    )  # fmt: skip
