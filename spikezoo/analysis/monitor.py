"""Firing rates of every spikezoo neuron layer: per layer, per time step, and per head."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from einops import reduce
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from spikezoo.analysis._batches import HookSession
from spikezoo.analysis.report import PerLayerReport, Table
from spikezoo.layers import DSSA, SDSA
from spikezoo.neurons import MultiStepNeuron

if TYPE_CHECKING:
    pass

__all__ = ["HEAD_LAYOUTS", "FiringRateMonitor", "FiringRates", "NeuronRecord", "spiking_neurons"]

#: Where the attention heads sit in the output of the neurons inside an attention layer:
#: ``"channels"``: ``[T, B, heads * d, ...]`` (head-major channels); ``"axis"``:
#: ``[T, B, heads, ...]``. Keys are neuron names relative to the attention module.
HEAD_LAYOUTS: dict[type[nn.Module], dict[str, str]] = {
    SDSA: {"q_lif": "channels", "k_lif": "channels", "v_lif": "channels", "kv_lif": "axis"},
    DSSA: {"in_lif": "channels", "attn_lif": "axis", "proj.neuron": "channels"},
}


def spiking_neurons(model: nn.Module) -> list[tuple[str, MultiStepNeuron]]:
    """Every spikezoo neuron layer (:class:`~spikezoo.neurons.MultiStepNeuron`) with its name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MultiStepNeuron)]


@dataclass
class NeuronRecord:
    """Spike counts of one neuron layer, summed over every call.

    Attributes:
        name: the layer's qualified name.
        neuron: the layer's class name.
        spikes: ``[T]`` spikes per time step (float64, exact counts).
        neurons: neurons per time step summed over calls (batch x features).
        head_spikes: ``[T, heads]`` spikes per step and head, or ``None`` outside attention.
    """

    name: str
    neuron: str
    spikes: Tensor | None = None
    neurons: int = 0
    head_spikes: Tensor | None = None

    @property
    def time_steps(self) -> int:
        """T, the number of time steps recorded (0 before any call)."""
        return 0 if self.spikes is None else self.spikes.numel()

    @property
    def rate(self) -> float:
        """Spikes per neuron and step, averaged over T, the batch and the layer."""
        return self.spikes.sum().item() / (self.neurons * self.time_steps)

    def step_rates(self) -> list[float]:
        """The rate at each time step."""
        return (self.spikes / self.neurons).tolist()

    def head_rates(self) -> Tensor | None:
        """``[T, heads]`` rates (each head holds ``1/heads`` of the neurons), or ``None``."""
        if self.head_spikes is None:
            return None
        return self.head_spikes / (self.neurons / self.head_spikes.shape[1])


class FiringRates(PerLayerReport):
    """Recorded firing rates; tables per layer (with one column per step) and per head."""

    float_format = ".4f"

    def __init__(self, records: list[NeuronRecord], samples: int) -> None:
        self.records = records
        self.samples = samples

    def __getitem__(self, name: str) -> NeuronRecord:
        for record in self.records:
            if record.name == name:
                return record
        raise KeyError(f"no neuron layer named {name!r} was recorded")

    @property
    def mean_rate(self) -> float:
        """The rate over every neuron of every recorded layer and step."""
        spikes = sum(r.spikes.sum().item() for r in self.records)
        return spikes / sum(r.neurons * r.time_steps for r in self.records)

    def per_layer(self) -> Table:
        """``layer, neuron, rate, t0, t1, ...``: mean rate and the rate at each step."""
        steps = max(r.time_steps for r in self.records)
        rows = [
            [r.name, r.neuron, r.rate, *r.step_rates(), *[None] * (steps - r.time_steps)]
            for r in self.records
        ]
        return Table(["layer", "neuron", "rate", *(f"t{t}" for t in range(steps))], rows)

    def per_step(self) -> Table:
        """``layer, step, rate``: one row per layer and time step."""
        rows = [[r.name, t, rate] for r in self.records for t, rate in enumerate(r.step_rates())]
        return Table(["layer", "step", "rate"], rows)

    def per_head(self) -> Table:
        """``layer, head, step, rate`` for the neurons inside SDSA / DSSA attention."""
        rows = []
        for r in self.records:
            rates = r.head_rates()
            if rates is None:
                continue
            for t, step in enumerate(rates.tolist()):
                rows.extend([r.name, head, t, rate] for head, rate in enumerate(step))
        return Table(["layer", "head", "step", "rate"], rows)


class FiringRateMonitor(HookSession):
    """Context manager recording the spikes of every spikezoo neuron layer of ``model``.

    Works for any model that contains :class:`~spikezoo.neurons.MultiStepNeuron` layers; inside
    :class:`~spikezoo.layers.SDSA` and :class:`~spikezoo.layers.DSSA` it also splits the counts
    by attention head (see :data:`HEAD_LAYOUTS`). Counting never changes the model's outputs.

    Args:
        model: the network.
        layers: names of the neuron layers to record (default: all).

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
    """

    def __init__(self, model: nn.Module, layers: Iterable[str] | None = None) -> None:
        neurons = dict(spiking_neurons(model))
        if not neurons:
            raise ValueError(
                f"{type(model).__name__} has no spikezoo spiking neurons (MultiStepNeuron "
                "layers): there are no firing rates to record"
            )
        if layers is not None:
            layers = list(layers)
            unknown = [name for name in layers if name not in neurons]
            if unknown:
                raise ValueError(f"not spikezoo neuron layers of the model: {unknown}")
            neurons = {name: neurons[name] for name in layers}
        self.model = model
        self._neurons = neurons
        self._heads = _head_layouts(model)
        self._records: dict[str, NeuronRecord] = {}
        self.samples = 0
        self.reset()

    def _register_hooks(self) -> list[RemovableHandle]:
        return [
            neuron.register_forward_hook(self._hook(name)) for name, neuron in self._neurons.items()
        ]

    def reset(self) -> None:
        """Forget every spike recorded so far."""
        self._records = {
            name: NeuronRecord(name, type(neuron).__name__)
            for name, neuron in self._neurons.items()
        }
        self.samples = 0

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor | tuple) -> None:
            spikes = output[0] if isinstance(output, tuple) else output
            with torch.no_grad():
                self._add(name, spikes.detach())

        return hook

    def _add(self, name: str, spikes: Tensor) -> None:
        record = self._records[name]
        per_step = spikes.flatten(1).sum(1, dtype=torch.float64).cpu()
        heads = None
        if name in self._heads:
            layout, num_heads = self._heads[name]
            if layout == "channels":
                spikes = spikes.unflatten(2, (num_heads, -1))
            heads = reduce(spikes.double(), "t b h ... -> t h", "sum").cpu()
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
        """The firing rates recorded so far (layers that never ran are left out)."""
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


def _head_layouts(model: nn.Module) -> dict[str, tuple[str, int]]:
    layouts = {}
    for prefix, module in model.named_modules():
        for relative, layout in HEAD_LAYOUTS.get(type(module), {}).items():
            name = f"{prefix}.{relative}" if prefix else relative
            layouts[name] = (layout, module.num_heads)
    return layouts
