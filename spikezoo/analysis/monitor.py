"""Firing rates of every spikezoo neuron layer and spike product: per layer, per step, per head."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from einops import reduce
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from spikezoo.analysis._batches import HookSession
from spikezoo.analysis.report import PerLayerReport, Table
from spikezoo.layers.attention import SpikingAttention
from spikezoo.layers.spike_products import SpikingHadamard
from spikezoo.neurons import SpikingNeuron

__all__ = [
    "FiringRateMonitor",
    "FiringRates",
    "NeuronRecord",
    "spike_products",
    "spiking_neurons",
]


def spiking_neurons(model: nn.Module) -> list[tuple[str, SpikingNeuron]]:
    """Every spikezoo neuron layer (:class:`~spikezoo.neurons.SpikingNeuron`) with its name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SpikingNeuron)]


def spike_products(model: nn.Module) -> list[tuple[str, SpikingHadamard]]:
    """Every element-wise spike product (:class:`~spikezoo.layers.SpikingHadamard`) with its name.

    Their outputs are spikes that no neuron fires, such as SDSA's ``k * v`` and ``q * kv``.
    """
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SpikingHadamard)]


@dataclass
class NeuronRecord:
    """Spike counts of one neuron layer or spike product, summed over every call.

    Attributes:
        name: the module's qualified name.
        neuron: the module's class name.
        spikes: ``[T]`` spikes per time step (float64, exact counts; an integer neuron's value
            ``n / norm`` counts ``n`` spikes); for a spike product, its non-zero outputs (its
            spikes when both operands are spikes).
        neurons: neurons (outputs) per time step summed over calls (batch x features).
        head_spikes: ``[T, heads]`` spikes per step and head, or ``None`` for a neuron that its
            attention layer does not split into heads, and for spike products.
        product: whether the module is a spike product rather than a neuron layer.
    """

    name: str
    neuron: str
    spikes: Tensor | None = None
    neurons: int = 0
    head_spikes: Tensor | None = None
    product: bool = False

    @property
    def time_steps(self) -> int:
        """T, the number of time steps recorded (0 before any call)."""
        return 0 if self.spikes is None else self.spikes.numel()

    @property
    def rate(self) -> float:
        """Spikes per neuron and step, averaged over T, the batch and the layer (up to ``D``
        for an integer neuron of ``D`` levels)."""
        return self.spikes.sum().item() / (self.neurons * self.time_steps)

    @property
    def kind(self) -> str:
        """What the per-layer table shows in its ``neuron`` column: the class name of a neuron
        layer, ``"spike product (SpikingHadamard)"`` for a product."""
        return f"spike product ({self.neuron})" if self.product else self.neuron

    def step_rates(self) -> list[float]:
        """The rate at each time step."""
        return (self.spikes / self.neurons).tolist()

    def head_rates(self) -> Tensor | None:
        """``[T, heads]`` rates (each head holds ``1/heads`` of the neurons), or ``None``."""
        if self.head_spikes is None:
            return None
        return self.head_spikes / (self.neurons / self.head_spikes.shape[1])


class FiringRates(PerLayerReport):
    """Recorded firing rates; tables per layer (with one column per step) and per head.

    Args:
        records: the recorded neuron layers and spike products, in the model's order.
        samples: the samples (images) they were recorded over.
    """

    float_format = ".4f"

    def __init__(self, records: list[NeuronRecord], samples: int) -> None:
        self.layers = records
        self.samples = samples

    @property
    def records(self) -> list[NeuronRecord]:
        """The neuron layers, in the model's order."""
        return [r for r in self.layers if not r.product]

    @property
    def products(self) -> list[NeuronRecord]:
        """The spike products, in the model's order."""
        return [r for r in self.layers if r.product]

    def __getitem__(self, name: str) -> NeuronRecord:
        for record in self.layers:
            if record.name == name:
                return record
        raise KeyError(f"no neuron layer or spike product named {name!r} was recorded")

    @property
    def mean_rate(self) -> float:
        """The rate over every neuron of every recorded neuron layer and step (no products)."""
        records = self.records
        spikes = sum(r.spikes.sum().item() for r in records)
        return spikes / sum(r.neurons * r.time_steps for r in records)

    def per_layer(self) -> Table:
        """``layer, neuron, rate, t0, t1, ...``: mean rate and the rate at each step.

        Neuron layers and spike products in the model's order; the ``neuron`` column says
        which a row is (:attr:`NeuronRecord.kind`).
        """
        steps = max(r.time_steps for r in self.layers)
        rows = [
            [r.name, r.kind, r.rate, *r.step_rates(), *[None] * (steps - r.time_steps)]
            for r in self.layers
        ]
        return Table(["layer", "neuron", "rate", *(f"t{t}" for t in range(steps))], rows)

    def per_step(self) -> Table:
        """``layer, step, rate``: one row per layer (or spike product) and time step."""
        rows = [[r.name, t, rate] for r in self.layers for t, rate in enumerate(r.step_rates())]
        return Table(["layer", "step", "rate"], rows)

    def per_head(self) -> Table:
        """``layer, head, step, rate`` for the neurons that attention layers split into heads
        (their :attr:`~spikezoo.layers.SpikingAttention.head_layout`)."""
        rows = []
        for r in self.records:
            rates = r.head_rates()
            if rates is None:
                continue
            for t, step in enumerate(rates.tolist()):
                rows.extend([r.name, head, t, rate] for head, rate in enumerate(step))
        return Table(["layer", "head", "step", "rate"], rows)


class FiringRateMonitor(HookSession):
    """Context manager recording the spikes of every spikezoo neuron layer and spike product.

    Works for any model that contains spikezoo neuron layers
    (:class:`~spikezoo.neurons.SpikingNeuron`); an integer neuron's value ``n / norm`` counts as
    ``n`` spikes (:meth:`~spikezoo.neurons.SpikingNeuron.spike_counts`). It also
    records the spike products (:func:`spike_products`), the spikes that attention computes by
    multiplying spikes, and inside every :class:`~spikezoo.layers.SpikingAttention` it splits
    the counts of the neurons its ``head_layout`` names by head. Counting never changes the
    model's outputs.

    Args:
        model: the network.
        layers: names of the neuron layers and spike products to record (default: all).

    Example:
        >>> import timm, torch, spikezoo
        >>> model = timm.create_model("sdt_2_256_cifar", time_steps=2).eval()
        >>> with FiringRateMonitor(model) as monitor:
        ...     _ = model(torch.rand(1, 3, 32, 32))
        >>> rates = monitor.rates()
        >>> rates.per_layer().columns == ["layer", "neuron", "rate", "t0", "t1"]
        True
        >>> 0 <= rates["blocks.0.attn.q_lif"].rate <= 1
        True
        >>> rates["blocks.0.attn.q_mask"].kind
        'spike product (SpikingHadamard)'
    """

    def __init__(self, model: nn.Module, layers: Iterable[str] | None = None) -> None:
        neurons = dict(spiking_neurons(model))
        if not neurons:
            raise ValueError(
                f"{type(model).__name__} has no spikezoo spiking neurons (SpikingNeuron "
                "layers): there are no firing rates to record"
            )
        products = dict(spike_products(model))
        recordable = {
            name: module
            for name, module in model.named_modules()
            if name in neurons or name in products
        }
        if layers is not None:
            layers = list(layers)
            unknown = [name for name in layers if name not in recordable]
            if unknown:
                raise ValueError(
                    f"not spikezoo neuron layers of the model: {unknown} (nor spike products; "
                    f"it has {len(neurons)} neuron layers and {len(products)} spike products)"
                )
            recordable = {name: module for name, module in recordable.items() if name in layers}
        self.model = model
        self._modules = recordable
        self._products = set(products)
        self._heads = _head_splitters(model)
        self._records: dict[str, NeuronRecord] = {}
        self.samples = 0
        self.reset()

    def _register_hooks(self) -> list[RemovableHandle]:
        return [
            module.register_forward_hook(self._hook(name)) for name, module in self._modules.items()
        ]

    def reset(self) -> None:
        """Forget every spike recorded so far."""
        self._records = {
            name: NeuronRecord(name, type(module).__name__, product=name in self._products)
            for name, module in self._modules.items()
        }
        self.samples = 0

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor | tuple) -> None:
            spikes = output[0] if isinstance(output, tuple) else output
            with torch.no_grad():
                spikes = spikes.detach()
                if isinstance(module, SpikingNeuron):
                    spikes = module.spike_counts(spikes)
                self._add(name, spikes)

        return hook

    def _add(self, name: str, spikes: Tensor) -> None:
        record = self._records[name]
        counted = spikes != 0 if record.product else spikes
        per_step = counted.flatten(1).sum(1, dtype=torch.float64).cpu()
        heads = None
        if name in self._heads:
            layer, relative = self._heads[name]
            per_head = layer.split_heads(relative, spikes).double()
            heads = reduce(per_head, "t b heads ... -> t heads", "sum").cpu()
        if record.spikes is None:
            record.spikes, record.head_spikes = per_step, heads
        elif record.spikes.numel() != per_step.numel():
            raise ValueError(
                f"{name}: recorded {record.spikes.numel()} time steps so far, this call has "
                f"{per_step.numel()}; reset() the monitor between different T"
            )
        else:
            record.spikes += per_step
            if heads is not None:
                record.head_spikes += heads
        record.neurons += spikes[0].numel()

    def rates(self) -> FiringRates:
        """The firing rates recorded so far (modules that never ran are left out)."""
        records = [r for r in self._records.values() if r.spikes is not None]
        if not records:
            raise RuntimeError("no forward pass was recorded; run the model inside the monitor")
        return FiringRates(records, self.samples)

    def run(
        self, data: Tensor | Iterable, progress: bool = True, max_batches: int | None = None
    ) -> FiringRates:
        """Record over one batch or a data loader (first ``max_batches`` batches).

        Items of a loader may be tensors or ``(inputs, targets)`` tuples. The hooks are attached
        for the run if the monitor is not already open.
        """
        self._run(data, progress, max_batches, "recording spikes")
        return self.rates()


def _head_splitters(model: nn.Module) -> dict[str, tuple[SpikingAttention, str]]:
    """Qualified neuron name -> (its attention layer, its name there), from the head layouts."""
    splitters = {}
    for prefix, layer in model.named_modules():
        if not isinstance(layer, SpikingAttention):
            continue
        for relative in layer.head_layout:
            neuron = layer.declared_submodule(relative)
            name = f"{prefix}.{relative}" if prefix else relative
            if not isinstance(neuron, SpikingNeuron):
                raise ValueError(
                    f"{type(layer).__name__}.head_layout names neuron layers; {name} is a "
                    f"{type(neuron).__name__}"
                )
            splitters[name] = (layer, relative)
    return splitters
