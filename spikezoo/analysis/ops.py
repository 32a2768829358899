"""Counting operations: synaptic operations (SOPs) on spikes, MACs on real values, and energy.

:class:`OpCounter` hooks the leaf modules that compute (convolutions, linear layers, and the
spike products :class:`~spikezoo.layers.SpikingMatmul`, :class:`~spikezoo.layers.SpikingHadamard`
and :class:`~spikezoo.layers.SpikingSum`) and looks at what each one actually receives:

* an input whose values are all 0 or 1 is **spikes** (checked on every call). The layer costs
  SOPs: the layer applied to its actual input with every weight replaced by 1, summed (the
  definition of SpikingResformer's ``SOPMonitor``). For a product of two tensors the non-spike
  operand is replaced by ones; when both operands are spikes, the product is summed as it is.
* the output of an integer neuron (:class:`~spikezoo.neurons.IntegerNeuron`, values
  ``n / norm``) is **integer spikes**: a value ``n / norm`` counts as ``n`` spikes, so the layer
  costs the SOPs above computed on the counts ``n``, exactly what the same layer costs on the
  ``n`` binary spikes of the binary expansion (:func:`spikezoo.deploy.expand_to_binary`).
  While counting, the integer neurons tag their outputs (:class:`~spikezoo.neurons.IntegerSpikes`)
  so that a layer knows its input's ``norm`` however many reshapes lie in between.
* any other input is **real-valued** and the layer costs its full MAC count, as a dense ANN
  layer would.

BatchNorm is not counted (in inference it folds into the preceding convolution), nor are the
neurons' membrane updates, residual additions and pooling, as in both papers. Energy is
``E_MAC * MACs + E_AC * SOPs`` (:mod:`spikezoo.analysis.energy`). See ``docs/analysis.md`` for
how every layer of both model families is counted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from spikezoo.analysis._batches import HookSession
from spikezoo.analysis.energy import DEFAULT_ENERGY, EnergyModel, get_energy_model
from spikezoo.analysis.report import PerLayerReport, Table
from spikezoo.layers.spike_products import SpikingHadamard, SpikingMatmul, SpikingSum
from spikezoo.neurons import IntegerNeuron, IntegerSpikes

__all__ = [
    "OP_RULES",
    "LayerOps",
    "OpCount",
    "OpCounter",
    "OpReport",
    "is_spike_tensor",
    "register_op_rule",
    "spike_counts",
]


def is_spike_tensor(x: Tensor) -> bool:
    """Whether every value of ``x`` is 0 or 1: the test :class:`OpCounter` applies to each input.

    Example:
        >>> import torch
        >>> is_spike_tensor(torch.tensor([0.0, 1.0, 1.0])), is_spike_tensor(torch.tensor([0.5]))
        (True, False)
    """
    if x.dtype == torch.bool:
        return True
    return bool(((x == 0) | (x == 1)).all())


def spike_counts(x: Tensor) -> Tensor | None:
    """The spikes each value of a layer's input ``x`` stands for, or ``None`` for real values.

    An integer neuron's tagged output (:class:`~spikezoo.neurons.IntegerSpikes`) gives its
    counts ``n``; a tensor of 0s and 1s (:func:`is_spike_tensor`) is its own count.

    Example:
        >>> import torch
        >>> from spikezoo.neurons import IntegerNeuron
        >>> neuron = IntegerNeuron(levels=4)
        >>> spike_counts(neuron.tag(neuron(torch.tensor([0.6, 3.2])))).tolist()
        [1.0, 3.0]
        >>> spike_counts(torch.tensor([0.25, 0.75])) is None  # untagged: real values
        True
    """
    if isinstance(x, IntegerSpikes):
        return x.counts()
    return x if is_spike_tensor(x) else None


@dataclass(frozen=True)
class OpCount:
    """What one call of one layer cost.

    Attributes:
        spikes: whether the layer's input was spikes.
        macs: multiply-accumulates on real-valued input (0 for spike input).
        sops: synaptic operations (accumulates) triggered by spikes (0 for real input).
        dense_macs: the MACs of the same layer run densely, as an ANN would (all time steps).
        rate_sops: the SDT-style estimate ``input firing rate x dense_macs`` (0 for real input).
    """

    spikes: bool
    macs: int
    sops: int
    dense_macs: int
    rate_sops: float


#: A counting rule: ``(module, inputs, output) -> OpCount``, called from a forward hook.
OpRule = Callable[[nn.Module, tuple, Tensor], OpCount]


def _rate(x: Tensor) -> float:
    return x.sum(dtype=torch.float64).item() / x.numel() if x.numel() else 0.0


def _count(x: Tensor) -> int:
    """The number of spikes in a tensor of spike counts, exact (a float64 sum of integers)."""
    return int(x.sum(dtype=torch.float64).item())


def _real_input_cost(dense_macs: int) -> OpCount:
    """A call on real-valued input: it costs its full MAC count."""
    return OpCount(spikes=False, macs=dense_macs, sops=0, dense_macs=dense_macs, rate_sops=0.0)


def _spike_input_cost(sops: int, dense_macs: int, rate: float) -> OpCount:
    """A call on spikes: ``sops`` accumulates; ``rate`` is the input's firing rate."""
    return OpCount(
        spikes=True, macs=0, sops=sops, dense_macs=dense_macs, rate_sops=rate * dense_macs
    )


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _conv_rule(module: nn.modules.conv._ConvNd, inputs: tuple, output: Tensor) -> OpCount:
    """Convolution: SOPs = ``sum(conv(x, ones))``; MACs = outputs x (C_in / groups) x kernel."""
    dense = output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    x = spike_counts(inputs[0])
    if x is None:
        return _real_input_cost(dense)
    if x.dim() == len(module.kernel_size) + 1:  # unbatched input
        x = x.unsqueeze(0)
    groups = module.groups
    if module.padding_mode == "zeros":
        # conv(x, ones) has the same value in every output channel of a group: sum the group's
        # input channels first and convolve once per group instead of once per output channel.
        grouped = x.unflatten(1, (groups, -1)).sum(2)
        ones = x.new_ones(groups, 1, *module.kernel_size)
        conv = _CONV[len(module.kernel_size)]
        per_channel = conv(
            grouped, ones, None, module.stride, module.padding, module.dilation, groups
        )
        sops = int(per_channel.sum(dtype=torch.float64).item()) * (module.out_channels // groups)
    else:
        ones_out = module._conv_forward(x, torch.ones_like(module.weight), None)
        sops = int(ones_out.sum(dtype=torch.float64).item())
    return _spike_input_cost(sops, dense, _rate(x))


def _linear_rule(module: nn.Linear, inputs: tuple, output: Tensor) -> OpCount:
    """Linear: SOPs = ``sum(x @ ones.T)`` = spikes x out_features; MACs = outputs x in_features."""
    dense = output.numel() * module.in_features
    x = spike_counts(inputs[0])
    if x is None:
        return _real_input_cost(dense)
    return _spike_input_cost(_count(x) * module.out_features, dense, _rate(x))


def _matmul_rule(module: nn.Module, inputs: tuple, output: Tensor) -> OpCount:
    """``left [..., M, K] @ right [..., K, N]``: the non-spike operand set to ones, or as is."""
    left, right = inputs
    if left.dim() < 2 or right.dim() < 2:
        raise ValueError(
            f"SpikingMatmul operands must have at least 2 dimensions, got shapes "
            f"{tuple(left.shape)} and {tuple(right.shape)}"
        )
    dense = output.numel() * left.shape[-1]
    left_counts, right_counts = spike_counts(left), spike_counts(right)
    batch = output.shape[:-2]
    if left_counts is not None and right_counts is not None:  # one op per pair of spikes
        sops = _count(left_counts @ right_counts)
        return _spike_input_cost(sops, dense, _rate(left_counts) * _rate(right_counts))
    if right_counts is not None:  # ones [M, K] @ right: every spike reaches the M rows
        spikes = _count(right_counts.expand(*batch, *right.shape[-2:]))
        return _spike_input_cost(spikes * left.shape[-2], dense, _rate(right_counts))
    if left_counts is not None:  # left @ ones [K, N]: every spike reaches the N columns
        spikes = _count(left_counts.expand(*batch, *left.shape[-2:]))
        return _spike_input_cost(spikes * right.shape[-1], dense, _rate(left_counts))
    return _real_input_cost(dense)


def _hadamard_rule(module: nn.Module, inputs: tuple, output: Tensor) -> OpCount:
    """``a * b``: one operation per non-zero product of two spike tensors, per spike otherwise."""
    dense = output.numel()
    a, b = (spike_counts(operand) for operand in inputs)
    if a is not None and b is not None:  # one op per pair of spikes
        return _spike_input_cost(_count(a * b), dense, _rate(a) * _rate(b))
    if a is not None or b is not None:
        spikes = a if a is not None else b
        return _spike_input_cost(_count(spikes.expand(output.shape)), dense, _rate(spikes))
    return _real_input_cost(dense)


def _sum_rule(module: nn.Module, inputs: tuple, output: Tensor) -> OpCount:
    """A sum: one accumulate per spike summed (ones-weight rule); one MAC per real value."""
    x = spike_counts(inputs[0])
    if x is None:
        return _real_input_cost(inputs[0].numel())
    return _spike_input_cost(_count(x), x.numel(), _rate(x))


#: Counting rule per module type; :class:`OpCounter` hooks every module that is an instance of
#: one of these types (the first match wins).
OP_RULES: dict[type[nn.Module], OpRule] = {
    nn.modules.conv._ConvNd: _conv_rule,
    nn.Linear: _linear_rule,
    SpikingMatmul: _matmul_rule,
    SpikingHadamard: _hadamard_rule,
    SpikingSum: _sum_rule,
}


def register_op_rule(module_type: type[nn.Module], rule: OpRule) -> None:
    """Count modules of ``module_type`` with ``rule(module, inputs, output) -> OpCount``.

    For a custom layer that computes (a product, an attention op) without a convolution,
    linear layer or spike-product module inside it.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"module_type must be an nn.Module subclass, got {module_type!r}")
    OP_RULES[module_type] = rule


def _rule_for(module: nn.Module) -> OpRule | None:
    for module_type, rule in OP_RULES.items():
        if isinstance(module, module_type):
            return rule
    return None


@dataclass
class LayerOps:
    """Operations of one layer, summed over every call (all time steps, every sample seen).

    Attributes:
        name: the module's qualified name in the model.
        op: the module's class name.
        input_kinds: ``{"spikes"}``, ``{"real"}`` or both, over the calls.
        calls: how many times the layer ran.
        macs, sops, dense_macs, rate_sops: sums of :class:`OpCount` over the calls.
        classifier: whether the layer belongs to the classifier head.
    """

    name: str
    op: str
    classifier: bool = False
    calls: int = 0
    macs: int = 0
    sops: int = 0
    dense_macs: int = 0
    rate_sops: float = 0.0
    input_kinds: set[str] = field(default_factory=set)

    @property
    def input(self) -> str:
        """``"spikes"``, ``"real"``, or ``"spikes+real"`` if the calls differed."""
        return "+".join(sorted(self.input_kinds, reverse=True)) or "-"

    def add(self, count: OpCount) -> None:
        """Add one call's :class:`OpCount`."""
        self.calls += 1
        self.macs += count.macs
        self.sops += count.sops
        self.dense_macs += count.dense_macs
        self.rate_sops += count.rate_sops
        self.input_kinds.add("spikes" if count.spikes else "real")


class OpReport(PerLayerReport):
    """Per-layer and total operations and energy; everything per sample (input image).

    ``layers`` holds the raw sums over ``samples`` samples; the properties and tables divide
    them by ``samples``. Energies are in millijoules per sample.
    """

    def __init__(self, layers: list[LayerOps], samples: int, energy: EnergyModel) -> None:
        self.layers = layers
        self.samples = samples
        self.energy = energy

    def _sum(self, attr: str, classifier: bool | None = None) -> float:
        total = sum(
            getattr(layer, attr)
            for layer in self.layers
            if classifier is None or layer.classifier == classifier
        )
        return total / max(self.samples, 1)

    def _mj(self, macs: float, sops: float) -> float:
        return self.energy.energy_pj(macs, sops) * 1e-9

    @property
    def macs(self) -> float:
        """MACs per sample (layers with real-valued input)."""
        return self._sum("macs")

    @property
    def sops(self) -> float:
        """SOPs per sample (layers with spike input)."""
        return self._sum("sops")

    @property
    def dense_macs(self) -> float:
        """MACs per sample of the same network run densely (every layer at full cost)."""
        return self._sum("dense_macs")

    @property
    def energy_mj(self) -> float:
        """``E_MAC * MACs + E_AC * SOPs`` per sample, in mJ (classifier included)."""
        return self._mj(self.macs, self.sops)

    @property
    def classifier_energy_mj(self) -> float:
        """The classifier head's share of :attr:`energy_mj`."""
        return self._mj(self._sum("macs", True), self._sum("sops", True))

    @property
    def backbone_energy_mj(self) -> float:
        """:attr:`energy_mj` without the classifier head."""
        return self._mj(self._sum("macs", False), self._sum("sops", False))

    @property
    def rate_energy_mj(self) -> float:
        """The SDT-style figure ``E_MAC * MACs + E_AC * sum(rate x T x FLOPs)`` per sample, mJ.

        ``rate`` is each spike layer's mean input firing rate and ``T x FLOPs`` its dense MAC
        count over all steps. It equals :attr:`energy_mj` for 1x1 convolutions and linear
        layers; for padded convolutions it ignores which inputs sit on the border.
        """
        return self._mj(self.macs, self._sum("rate_sops"))

    def per_layer(self) -> Table:
        """One row per layer: its input kind, MACs, SOPs, dense MACs and energy (per sample)."""
        scale = 1 / max(self.samples, 1)
        rows = [
            [
                layer.name,
                layer.op,
                layer.input,
                layer.classifier,
                layer.macs * scale,
                layer.sops * scale,
                layer.dense_macs * scale,
                self._mj(layer.macs * scale, layer.sops * scale),
            ]
            for layer in self.layers
        ]
        columns = ["layer", "op", "input", "classifier", "macs", "sops", "dense_macs", "energy_mj"]
        return Table(columns, rows)

    def summary(self) -> Table:
        """Totals per sample: MACs, SOPs, dense MACs and the energies, one metric per row."""
        rows = [
            ["macs", self.macs],
            ["sops", self.sops],
            ["dense_macs", self.dense_macs],
            ["energy_mj", self.energy_mj],
            ["backbone_energy_mj", self.backbone_energy_mj],
            ["classifier_energy_mj", self.classifier_energy_mj],
            ["rate_energy_mj", self.rate_energy_mj],
            ["e_mac_pj", self.energy.e_mac],
            ["e_ac_pj", self.energy.e_ac],
        ]
        return Table(["metric", "value"], rows)


class OpCounter(HookSession):
    """Context manager that counts the MACs, SOPs and energy of every forward pass inside it.

    Args:
        model: any ``nn.Module``; a batch-first model (``[B, ...]`` input), so that results are
            per sample. Models without spiking neurons work too (everything is MACs).
        energy: an :class:`~spikezoo.analysis.EnergyModel` or preset name.
        classifier: the head reported separately: ``"auto"`` (timm's ``get_classifier()``),
            a submodule name, a module, or ``None``.

    Example:
        >>> import timm, torch, spikezoo
        >>> model = timm.create_model("sdt_2_256_cifar", time_steps=1).eval()
        >>> with OpCounter(model) as counter:
        ...     _ = model(torch.rand(1, 3, 32, 32))
        >>> report = counter.report()
        >>> report.per_layer().column("input")[0]      # the first conv reads pixels
        'real'
        >>> report.macs == 1 * 3 * 32 * 32 * 32 * 9     # ... at full cost, nothing else does
        True
    """

    def __init__(
        self,
        model: nn.Module,
        energy: str | EnergyModel = DEFAULT_ENERGY,
        classifier: str | nn.Module | None = "auto",
    ) -> None:
        self.model = model
        self.energy = get_energy_model(energy)
        head = _classifier(model, classifier)
        head_modules = {id(m) for m in head.modules()} if head is not None else set()
        self._layers: dict[str, LayerOps] = {}
        self._targets: list[tuple[str, nn.Module, OpRule]] = []
        for name, module in model.named_modules():
            rule = _rule_for(module)
            if rule is not None:
                self._targets.append((name, module, rule))
                self._layers[name] = LayerOps(
                    name, type(module).__name__, classifier=id(module) in head_modules
                )
        self.samples = 0

    def _register_hooks(self) -> list[RemovableHandle]:
        tags = [
            module.register_forward_hook(_tag_integer_spikes)
            for module in self.model.modules()
            if isinstance(module, IntegerNeuron)
        ]
        return tags + [
            module.register_forward_hook(self._hook(name, rule))
            for name, module, rule in self._targets
        ]

    def _hook(self, name: str, rule: OpRule):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            with torch.no_grad():
                self._layers[name].add(rule(module, inputs, output))

        return hook

    def reset(self) -> None:
        """Forget everything counted so far."""
        self._layers = {
            name: LayerOps(layer.name, layer.op, classifier=layer.classifier)
            for name, layer in self._layers.items()
        }
        self.samples = 0

    def run(
        self, data: Tensor | Iterable, progress: bool = True, max_batches: int | None = None
    ) -> OpReport:
        """Count over one batch or a data loader (first ``max_batches`` batches) and report.

        The hooks are attached for the run if the counter is not already open.
        """
        self._run(data, progress, max_batches, "counting operations")
        return self.report()

    def report(self) -> OpReport:
        """The counts so far, per layer (layers that never ran are left out)."""
        layers = [layer for layer in self._layers.values() if layer.calls]
        return OpReport(layers, self.samples, self.energy)


def _tag_integer_spikes(neuron: IntegerNeuron, inputs: tuple, output: Tensor) -> Tensor:
    """Forward hook: the integer neuron's output, tagged with its levels and norm."""
    return neuron.tag(output)


def _classifier(model: nn.Module, classifier: str | nn.Module | None) -> nn.Module | None:
    if classifier is None or isinstance(classifier, nn.Module):
        return classifier
    if classifier == "auto":
        get = getattr(model, "get_classifier", None)
        head = get() if callable(get) else None
        return head if isinstance(head, nn.Module) else None
    try:
        return model.get_submodule(classifier)
    except AttributeError as error:
        raise ValueError(f"classifier {classifier!r} is not a submodule of the model") from error
