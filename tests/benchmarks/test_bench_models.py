"""benchmarks/bench_models.py: its spikingjelly 2.x peer and its report, on tiny networks.

Nothing here times anything: the peer must compute what spikezoo computes, and the command must
produce its JSON, markdown and plots. Neurons run on the eager backend (no compilation), so the
whole file takes seconds.
"""

from __future__ import annotations

import importlib
import json
import re

import pytest
import torch

from tests.analysis.tiny_models import RESFORMER, SDT, eager
from tests.models.families import tiny, tiny_family

pytest.importorskip("spikingjelly.activation_based")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def bench(benchmarks_path):
    """The command module, ``benchmarks/bench_models.py``."""
    return importlib.import_module("bench_models")


@pytest.fixture(scope="module")
def zoo(benchmarks_path):
    return importlib.import_module("whole_models.zoo")


@pytest.fixture(scope="module")
def agreement(benchmarks_path):
    return importlib.import_module("whole_models.agreement")


def spike_count(
    model: torch.nn.Module, images: torch.Tensor, agreement
) -> tuple[torch.Tensor, int]:
    return agreement.count_spikes(model, lambda: model(images))


@pytest.mark.parametrize("family", [SDT, RESFORMER])
def test_spikingjelly2_peer_computes_what_spikezoo_computes(family, zoo, agreement):
    from peers.sj2_models import build_sj2_model

    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    model = eager(tiny(family)).double()
    zoo.set_batchnorm_statistics(model, images)
    peer = build_sj2_model(model)
    with torch.no_grad():
        for mode in ("eval", "train"):  # train: batch statistics and the DSSA rate updates
            model.train(mode == "train")
            peer.train(mode == "train")
            expected, zoo_spikes = spike_count(model, images, agreement)
            got, peer_spikes = spike_count(peer, images, agreement)
            assert zoo_spikes > 0, "the tiny network must spike for the comparison to mean anything"
            assert peer_spikes == zoo_spikes
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    for name, buffer in model.named_buffers():
        if "firing_rate" in name:
            torch.testing.assert_close(peer.get_buffer(name), buffer)


def test_sj2_peer_refuses_other_models(benchmarks_path):
    from peers.sj2_models import build_sj2_model

    with pytest.raises(TypeError, match="SpikeDrivenTransformer or SpikingResformer"):
        build_sj2_model(torch.nn.Linear(2, 2))


FAKE_LIMITS = dict(
    bandwidth_copy_Bps=1e10, bandwidth_add_Bps=1.2e10, bandwidth_Bps=1.2e10,
    matmul_fp32_flops=1e11, matmul_bf16_flops=2e11, conv_fp32_flops=8e10, conv_bf16_flops=1.6e11,
)  # fmt: skip


@pytest.fixture
def tiny_sdt(zoo, monkeypatch):
    """A tiny SDT at 32x32 registered as the benchmark's model ``tiny_sdt``, on eager neurons,
    with made-up machine limits (nothing measured twice)."""
    from spikezoo.models import spike_driven_transformer

    tiny = zoo.ModelSpec(
        "tiny_sdt", 32, {"cpu": 1, "quick": 1}, spike_driven_transformer,
        create_kwargs=dict(tiny_family(SDT).args, time_steps=2, num_classes=10),
        authors=False, timm_name="sdt_2_512_cifar",
    )  # fmt: skip
    monkeypatch.setitem(zoo.MODELS, "tiny_sdt", tiny)
    create_model = zoo.timm.create_model
    monkeypatch.setattr(zoo.timm, "create_model", lambda *a, **k: eager(create_model(*a, **k)))
    monkeypatch.setattr(
        importlib.import_module("whole_models.measure"),
        "machine_limits",
        lambda device, quick, threads: dict(FAKE_LIMITS),
    )
    return tiny


def test_command_writes_json_markdown_and_plots(bench, tiny_sdt, tmp_path):
    from harness.markdown import markers

    begin, end = markers("bench_models")
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Title\n\nbefore\n\n{begin}\nold table\n{end}\n\nafter\n")
    # every leaf in the roofline table: among the 8 heaviest (the default), a tiny model's
    # convolutions can be outranked by its neurons and pools, timing noise deciding
    argv = [
        "--models", "tiny_sdt", "--impls", "spikezoo,authors,spikingjelly2", "--dtypes", "fp32",
        "--modes", "eager", "--repeats", "2", "--threads", "1", "--top-layers", "1000",
        "--json", str(tmp_path / "r.json"), "--markdown", str(doc), "--plots", str(tmp_path / "p"),
    ]  # fmt: skip
    bench.main(argv)

    report = json.loads((tmp_path / "r.json").read_text())
    (model,) = report["models"]
    assert model["wall_s"] > 0
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
        assert len(peer["times_s"]) == len(zoo["times_s"]) == 2
        assert peer["first_call_s"] > 0 and peer["calls_per_round"] >= 1
        assert peer["speedup_of_spikezoo"] == pytest.approx(peer["median_s"] / zoo["median_s"])
        assert zoo["peak_bytes"] > 0
        for entry in (peer, zoo):  # profiled: some time in convolutions, some outside
            assert 0 < entry["profile"]["conv_matmul_s"] < entry["profile"]["wall_s"]
            assert 0 < entry["profile"]["share_outside"] < 1
            assert 0 <= entry["profile"]["share_outside_timed"] < 1
            assert entry["profile"]["split"]["data_bytes"] > 0
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
    assert "| spikingjelly2 | fp32 | eager | train |" in re.sub(" +", " ", text)
    assert "load average" in text and report["environment"]["load_after"] is not None
    assert "outside conv/matmul" in text
    assert "Freed memory: glibc's defaults (a large fresh buffer" in text
    assert "Time outside convolutions and matmuls, spikezoo (eager): infer fp32 " in text
    assert "(largest outside, self time: `" in text
    assert "spikezoo's time outside convolutions and matmuls by kind" in text
    assert re.search(r"\| train fp32 +(\| [\d.]+ +){4}\| \d+ +\| [\d.]+ ", text)
    assert "![tiny_sdt_roofline](p/tiny_sdt_roofline.png)" in text
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "tiny_sdt.png",
        "tiny_sdt_roofline.png",
    ]

    again = tmp_path / "again.md"
    report_json, plots = str(tmp_path / "r.json"), str(tmp_path / "p")
    bench.main(["--from-json", report_json, "--markdown", str(again), "--plots", plots])
    block = text[text.index(begin) : text.index(end) + len(end)]
    assert again.read_text() == block + "\n"  # the same tables, rendered from the saved report


def test_bad_options_name_what_is_allowed(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "resnet50"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--impls", "authors"])
    for option in ("--batch", "--img-size"):
        with pytest.raises(SystemExit):
            bench.parse_args([option, "0"])
        assert f"{option} must be >= 1, got 0" in capsys.readouterr().err


def test_one_input_size_for_every_model(bench, tiny_sdt, tmp_path):
    argv = [
        "--models", "tiny_sdt", "--impls", "spikezoo", "--dtypes", "fp32", "--modes", "eager",
        "--repeats", "1", "--no-memory", "--no-roofline", "--img-size", "16",
        "--json", str(tmp_path / "r.json"),
    ]  # fmt: skip
    report = bench.main(argv)
    (model,) = report["models"]
    assert model["img_size"] == report["settings"]["img_size"] == 16
    assert tiny_sdt.img_size == 32  # the registered model keeps its own size
    assert model["agreement"]["spikezoo"]["spikes"] > 0
    assert "### tiny_sdt (16x16, batch 1)" in bench.markdown(report)


class _Shifted(torch.nn.Module):
    """A peer that computes the reference plus ``shift``, or raises."""

    def __init__(self, reference: torch.nn.Module, shift: float | None) -> None:
        super().__init__()
        self.reference, self.shift = reference, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shift is None:
            raise RuntimeError("kernel failed\nsecond line")
        return self.reference(x) + self.shift


def test_agreement_flags_a_differing_or_failing_peer(zoo, agreement):
    model = eager(tiny(SDT))
    images = torch.randn(1, 3, 32, 32)
    zoo.set_batchnorm_statistics(model, images)
    runners = [zoo.Runner("spikezoo", model)] + [
        zoo.Runner(name, _Shifted(model, shift))
        for name, shift in (("same", 0.0), ("off", 1e-3), ("broken", None))
    ]
    runners.append(zoo.Runner("rounding", _Shifted(model, 1e-3), spike_rounding=1e-5))
    verdicts = agreement.check_agreement(runners, images, atol=1e-4)
    # a runner allowed rounding flips agrees on its spikes whatever its logits
    assert verdicts["rounding"]["agree"] and verdicts["rounding"]["same_spikes"]
    assert verdicts["same"]["agree"] and verdicts["same"]["same_spikes"]
    assert not verdicts["off"]["agree"]
    assert verdicts["off"]["max_abs_logit_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert verdicts["broken"] == dict(
        max_abs_logit_diff=None, spikes=None, same_spikes=None, agree=False,
        error="RuntimeError: kernel failed",
    )  # fmt: skip


def test_share_outside_counts_convolutions_and_matmuls_once(benchmarks_path):
    from whole_models.share import time_outside_conv_matmul

    x = torch.randn(8, 16, 32, 32)
    conv = torch.nn.Conv2d(16, 16, 3, padding=1)
    elementwise = time_outside_conv_matmul(lambda: (x * 2).relu(), median_s=1.0)
    assert elementwise["conv_matmul_s"] == 0 and elementwise["share_outside"] == 1
    assert elementwise["share_outside_timed"] == 1
    both = time_outside_conv_matmul(
        lambda: conv(x).relu().flatten(1) @ torch.ones(16384, 4), median_s=1.0
    )
    # conv2d -> convolution -> ... nest: counted once, so never more than the call itself
    assert 0 < both["conv_matmul_s"] < both["wall_s"]
    assert 0 < both["share_outside"] < 1
    # against an unprofiled median of 1 s (far longer than the call): the rest of that second
    assert both["share_outside_timed"] == pytest.approx(1 - both["conv_matmul_s"])
    # a median shorter than the convolutions' profiled time leaves nothing outside, not less
    short = time_outside_conv_matmul(lambda: conv(x), median_s=1e-9)
    assert short["share_outside_timed"] == 0
    # what is outside, by operator: the relu and the flatten, never the conv or what it calls
    names = [name for name, _ in both["top_outside"]]
    assert "aten::relu" in names
    assert not any("conv" in name or name == "aten::mm" for name in names)
    assert all(seconds >= 0 for _, seconds in both["top_outside"])


def test_time_outside_is_split_by_kind_and_adds_up(benchmarks_path):
    from whole_models.share import KINDS, time_outside_conv_matmul

    x = torch.randn(8, 16, 32, 32)
    conv = torch.nn.Conv2d(16, 16, 3, padding=1)

    class Twice(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * 2

    def call():
        y = conv(x).relu()  # relu calls clamp_min: one read, one write of 8 * 16 * 32 * 32
        z = Twice.apply(y.view(8, -1))  # a view; an autograd function, whose mul moves data
        z.add_(1)  # in place: reads z and 1 (a scalar, no tensor), writes z

    profile = time_outside_conv_matmul(call, median_s=1.0)
    split = profile["split"]
    outside = profile["wall_s"] - profile["conv_matmul_s"]
    assert sum(split[f"{k}_s"] for k in KINDS) + split["between_s"] == pytest.approx(outside)
    assert split["kernels_s"] == split["kernels_calls"] == split["compaction_calls"] == 0
    assert split["data_operators_calls"] >= 4  # relu, clamp_min, mul, add_
    assert split["metadata_operators_calls"] >= 1 and split["metadata_operators_s"] > 0
    assert split["ranges_calls"] >= 1 and split["ranges_s"] > 0  # Twice
    values = 4 * x.numel()
    assert split["data_bytes"] == 2 * values + 2 * values + 2 * values


def test_spikezoo_kernels_and_spike_compaction_are_kinds_of_their_own(benchmarks_path):
    from whole_models.share import time_outside_conv_matmul

    from spikezoo.layers import max_pool2d
    from spikezoo.neurons import compact_saved_spikes

    spikes = (torch.rand(2, 8, 64, 64) > 0.5).float().requires_grad_()
    max_pool2d(spikes, 3, 2, 1)  # the first call builds the kernel and probes it

    def step():
        with compact_saved_spikes():  # saves the pool's output, spikes, as bits
            loss = max_pool2d(spikes, 3, 2, 1).square().sum()
        loss.backward()

    split = time_outside_conv_matmul(step, median_s=1.0)["split"]
    # the pool's forward and backward, the packing and the expansion of its output
    assert split["kernels_calls"] == 4 and split["kernels_s"] > 0
    assert split["compaction_calls"] >= 2 and split["compaction_s"] > 0  # packed, unpacked


class MultiSpike(torch.nn.Module):
    """The computation of E-SpikeFormer's integer neuron, ``round(clamp(x, 0, 4)) / Norm``,
    under the authors' class name and attribute, as the agreement check meets it."""

    def __init__(self, norm: float) -> None:
        super().__init__()
        self.Norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x.clamp(0, 4)) / self.Norm


def test_agreement_counts_integer_spikes_as_their_counts(agreement):
    from spikezoo.neurons import IntegerNeuron

    x = torch.tensor([-1.0, 0.4, 0.6, 1.5, 2.6, 9.0])  # counts 0, 0, 1, 2, 3, 4: 10 spikes
    for neuron in (IntegerNeuron(levels=4), IntegerNeuron(levels=4, norm=1), MultiSpike(4)):
        model = torch.nn.Sequential(torch.nn.Identity(), neuron)
        _, spikes = agreement.count_spikes(model, lambda m=model: m(x))
        assert spikes == 10, neuron
    _, none = agreement.count_spikes(torch.nn.Identity(), lambda: x)
    assert none is None


@pytest.mark.parametrize("family", ["spikformer", "spike_driven_transformer_v3"])
def test_families_without_a_spikingjelly2_network_skip_that_peer(family, zoo):
    spec = zoo.ModelSpec("tiny", 32, {"cpu": 1}, None, authors=False)
    runners, skipped = zoo.build_runners(
        spec, ["spikezoo", "authors", "spikingjelly2"], {"spikezoo": tiny(family)}
    )
    assert [r.name for r in runners] == ["spikezoo"]
    assert skipped["authors"] == "no authors' configuration for this model"
    assert skipped["spikingjelly2"].startswith(
        f"no spikingjelly 2.x network of {type(runners[0].model).__name__} is written"
    )


@pytest.mark.slow  # a whole-model trace by dynamo: about 11 s on 2 cores
def test_a_compiled_model_is_counted_on_the_module_it_wraps_and_first_called_without_hooks(
    agreement,
):
    """The counting hooks read values: on a compiled model's first call they would be a graph
    break in the blocks' loop, and dynamo would skip the model's frames for every call after."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = eager(tiny("spike_driven_transformer_v3")).eval()
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected, expected_spikes = spike_count(model, images, agreement)
        torch._dynamo.reset()
        counters.clear()
        out, spikes = agreement.observe(torch.compile(model, backend="eager"), images)
    assert spikes == expected_spikes > 0
    assert torch.equal(out, expected)
    assert not counters["graph_break"]  # the compiled call ran without the hooks
