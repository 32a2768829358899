"""Residual sums of BatchNorm outputs: kept as their computation, the same gradients bit for bit."""

from __future__ import annotations

import contextlib
import copy
import functools

import pytest
import torch
from torch import nn

from spikezoo.analysis import measure_saved_tensors
from spikezoo.layers import GWSFFN, batch_norm, batch_norm_fire, batch_norms
from spikezoo.neurons import MultiStepLIF, Recomputed, compact_saved_spikes, saved_spikes


class _Recording(compact_saved_spikes):
    """Compaction that records what each saved tensor was kept as, by the tensor's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[tuple[tuple[int, ...], object]] = []

    def pack(self, x):
        kept = super().pack(x)
        self.kept.append((tuple(x.shape), kept))
        return kept

    def kinds(self) -> set[str]:
        return {type(kept).__name__ for _, kept in self.kept}

    def sum_kept_as(self) -> object:
        """What the sum (saved by ``sin`` with the summands' shape, last) was kept as."""
        return [kept for shape, kept in self.kept if shape == (4, 6, 5, 7)][-1]


class _Sum(nn.Module):
    """``sin(a + b)`` over ``x [N, 6, 5, 7]``, ``a`` and ``b`` made as ``kinds`` say:
    ``"bn"`` a training BatchNorm's output, ``"spikezoo-bn"`` the same through
    :func:`~spikezoo.layers.batch_norm`, ``"fused"`` a fused pair's normalised output,
    ``"kept"`` a tensor that ``sin`` saves. ``sin`` keeps the sum (its input)."""

    def __init__(self, kinds: tuple[str, str]) -> None:
        super().__init__()
        self.kinds = kinds
        self.convs = nn.ModuleList(nn.Conv2d(6, 6, 3, padding=1) for _ in kinds)
        self.bns = nn.ModuleList(nn.BatchNorm2d(6) for _ in kinds)
        self.neuron = MultiStepLIF(backend="torch")

    def summand(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The summand and a term of the loss that keeps every branch differentiated."""
        kind, conv, bn = self.kinds[i], self.convs[i], self.bns[i]
        if kind == "kept":
            self.kept = conv(x) * 2
            return self.kept, torch.sin(self.kept).sum()
        if kind == "bn":
            self.bn_input = conv(x)
            return bn(self.bn_input), 0
        if kind == "spikezoo-bn":
            return batch_norm(bn, conv(x)), 0
        spikes, normalised = batch_norm_fire(conv(x).unflatten(0, (2, -1)), bn, self.neuron, True)
        return normalised.flatten(0, 1), spikes.sum()

    def forward(self, x: torch.Tensor, add=torch.add) -> torch.Tensor:
        (a, extra_a), (b, extra_b) = self.summand(0, x), self.summand(1, x)
        return torch.sin(add(a, b)).sum() + extra_a + extra_b


def _gradients(module: nn.Module, x: torch.Tensor, compaction=None, loss=None) -> list:
    """The loss, the input's and the parameters' gradients of ``loss(module, x)`` (by default
    ``module(x)``), in ``compaction`` if given."""
    module.zero_grad(set_to_none=True)
    leaf = x.clone().requires_grad_()
    with compaction or contextlib.nullcontext():
        value = module(leaf) if loss is None else loss(module, leaf)
    value.backward()
    return [value.detach(), leaf.grad, *(p.grad for p in module.parameters())]


def _assert_bitwise(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x is None) == (y is None)
        assert x is None or torch.equal(x, y)


def _under_bf16_autocast(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return module(x).float()


@pytest.mark.parametrize("precision", ["float32", "float64", "bf16-autocast"])
@pytest.mark.parametrize(
    "kinds",
    [
        ("kept", "bn"),
        ("bn", "kept"),
        ("bn", "bn"),
        ("bn", "fused"),
        ("fused", "kept"),
        ("kept", "spikezoo-bn"),
        ("spikezoo-bn", "bn"),
    ],
)
def test_a_saved_sum_of_batch_norm_outputs_is_recomputed_bit_for_bit(kinds, precision, monkeypatch):
    monkeypatch.setattr(batch_norms, "MIN_VALUES", 0)  # spikezoo's BatchNorm at this size too
    torch.manual_seed(0)
    dtype = torch.float64 if precision == "float64" else torch.float32
    module = _Sum(kinds).to(dtype).train()
    x = torch.randn(4, 6, 5, 7, dtype=dtype) * 2
    loss = _under_bf16_autocast if precision == "bf16-autocast" else None
    plain = _gradients(copy.deepcopy(module), x, loss=loss)
    recording = _Recording()
    _assert_bitwise(_gradients(module, x, recording, loss), plain)
    assert isinstance(recording.sum_kept_as(), Recomputed)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda m: m.bns[1].bias.requires_grad_(False), "a frozen bias: no edge leads to it"),
        (lambda m: m.bns[1].eval(), "running statistics: another kernel path"),
        (
            lambda m: setattr(m.bns[1], "weight", None) or setattr(m.bns[1], "bias", None),
            "no affine",
        ),
    ],
    ids=["frozen-bias", "eval", "no-affine"],
)
def test_a_sum_whose_batch_norm_is_not_known_for_sure_is_kept(change, why):
    torch.manual_seed(0)
    module = _Sum(("kept", "bn")).train()
    change(module)
    x = torch.randn(4, 6, 5, 7)
    plain = _gradients(copy.deepcopy(module), x)
    recording = _Recording()
    _assert_bitwise(_gradients(module, x, recording), plain)
    assert not isinstance(recording.sum_kept_as(), Recomputed), why


@pytest.mark.parametrize(
    "add",
    [
        functools.partial(torch.add, alpha=2.0),
        lambda a, b: a + b.mean((0, 2, 3), keepdim=True),  # broadcast
        lambda a, b: a.double() + b,  # promoted to another dtype
    ],
    ids=["alpha", "broadcast", "promoted"],
)
def test_a_sum_other_than_a_plain_add_of_the_same_shape_is_kept(add):
    torch.manual_seed(0)
    module = _Sum(("kept", "bn")).train()
    recording = _Recording()
    _gradients(module, torch.randn(4, 6, 5, 7), recording, lambda m, x: m(x, add))
    assert "Recomputed" not in recording.kinds()


def test_on_cuda_and_where_the_affine_map_misses_the_kernel_the_sum_is_kept(monkeypatch):
    torch.manual_seed(0)
    module = _Sum(("bn", "bn")).train()
    x = torch.randn(4, 6, 5, 7)
    plain = _gradients(copy.deepcopy(module), x)
    monkeypatch.setattr(saved_spikes, "_on_host", lambda x: False)  # CUDA's policy
    recording = _Recording()
    _assert_bitwise(_gradients(module, x, recording), plain)
    assert not isinstance(recording.sum_kept_as(), Recomputed)

    monkeypatch.undo()
    monkeypatch.setattr(batch_norms, "_affine_normalisation", lambda frames, *args: frames * 0)
    monkeypatch.setattr(
        "spikezoo.layers.residual_sums._affine_reproduces_kernel",
        functools.cache(batch_norms._affine_reproduces_kernel.__wrapped__),
    )
    recording = _Recording()
    _assert_bitwise(_gradients(module, x, recording), plain)
    assert not isinstance(recording.sum_kept_as(), Recomputed)


@pytest.mark.parametrize("target", ["kept", "bn_input", "bias"])
def test_a_summand_changed_in_place_after_the_forward_pass_raises_autograds_error(target):
    torch.manual_seed(0)
    module = _Sum(("kept", "bn")).train()
    x = torch.randn(4, 6, 5, 7)
    with _Recording() as recording:
        loss = module(x.requires_grad_())
    recomputed = recording.sum_kept_as()
    assert isinstance(recomputed, Recomputed)
    assert torch.equal(recomputed.unpack(), module.kept + module.bns[1](module.bn_input))
    changed = getattr(module, target) if target != "bias" else module.bns[1].bias
    with torch.no_grad():
        changed.mul_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        recomputed.unpack()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


# the inductor neurons compile their loops (seconds): the slow step checks them
@pytest.mark.parametrize("backend", ["native", pytest.param("inductor", marks=pytest.mark.slow)])
def test_gwsffn_keeps_its_sums_as_their_computation(backend):
    """SpikingResformer's feed-forward block on a backend whose neurons keep their input (the C
    loops, the CPU's default, and inductor's): the sums ``z + u`` (of two BatchNorm outputs,
    one of them a fused pair's) and ``x + down(...)`` are recomputed; the gradients are the
    same."""
    torch.manual_seed(0)
    neuron = functools.partial(MultiStepLIF, backend=backend)
    block = GWSFFN(8, ratio=2, group_size=8, neuron=neuron).train()
    x = torch.randn(2, 2, 8, 6, 6) * 2

    def loss(module, x):
        return module(x).sin().sum()  # sin keeps the block's output, x + down(z + u)

    plain = _gradients(copy.deepcopy(block), x, loss=loss)
    recording = _Recording()
    _assert_bitwise(_gradients(block, x, recording, loss), plain)
    sums = [shape for shape, kept in recording.kept if isinstance(kept, Recomputed)]
    assert sums == [(2, 2 * 16 * 6 * 6), (2, 2, 8, 6, 6)]


def test_a_recomputed_tensor_holds_no_bytes_of_its_own():
    assert Recomputed(lambda: torch.ones(3)).nbytes == 0
    assert torch.equal(Recomputed(lambda: torch.ones(3)).unpack(), torch.ones(3))


def test_register_recipe_takes_a_callable():
    with pytest.raises(TypeError, match="recipe must be callable, got int"):
        saved_spikes.register_recipe(3)


def test_measure_saved_tensors_counts_the_sums_as_training_keeps_them():
    """Its module hooks leave the BatchNorms alone, so the fused pair keeps its statistics and
    ``z + u`` is recomputed under measurement as in training: it keeps no bytes."""
    torch.manual_seed(0)
    neuron = functools.partial(MultiStepLIF, backend="native")
    block = GWSFFN(8, ratio=2, group_size=8, neuron=neuron).train()
    report = measure_saved_tensors(block, torch.randn(2, 2, 8, 6, 6) * 2, compact=True)
    inner_sum = [t for t in report.tensors if t.module == "down.neuron" and t.shape]
    assert [(t.shape, t.kept_nbytes) for t in inner_sum] == [((2, 2 * 16 * 6 * 6), 0)]


def test_a_sum_laid_out_otherwise_than_row_major_is_kept():
    """A channels-last sum: the recomputation would give it row-major strides."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(6).train()
    x = torch.randn(4, 6, 5, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    with _Recording() as recording:
        kept = x * 2
        loss = torch.sin(kept).sum()
        total = kept + bn(x * 3)
        loss = loss + torch.sin(total).sum()  # saves the sum last
    assert total.is_contiguous(memory_format=torch.channels_last) and not total.is_contiguous()
    assert not isinstance(recording.sum_kept_as(), Recomputed)
    loss.backward()


def test_a_recomputed_sum_records_no_graph_even_when_backward_does():
    torch.manual_seed(0)
    module = _Sum(("bn", "bn")).train()
    with _Recording() as recording:
        module(torch.randn(4, 6, 5, 7, requires_grad=True))
    with torch.enable_grad():  # as in backward with create_graph=True
        total = recording.sum_kept_as().unpack()
    assert total.grad_fn is None and not total.requires_grad
