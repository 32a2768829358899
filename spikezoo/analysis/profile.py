"""One call that profiles a model on an input: parameters, operations, energy, firing rates and
measured throughput (what ``spikezoo profile`` prints)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from spikezoo.analysis.energy import DEFAULT_ENERGY, EnergyModel
from spikezoo.analysis.monitor import FiringRateMonitor, FiringRates, spiking_neurons
from spikezoo.analysis.ops import OpCounter, OpReport

__all__ = ["ModelProfile", "profile_model"]


@dataclass
class ModelProfile:
    """What :func:`profile_model` measured. Operations and energy are per input sample.

    Attributes:
        parameters: number of parameters.
        input_shape: shape of the input batch.
        time_steps: T the neurons ran for.
        ops: the operation counts (:class:`~spikezoo.analysis.OpReport`).
        rates: the firing rates (:class:`~spikezoo.analysis.FiringRates`).
        seconds_per_batch: median wall time of one forward pass of the batch, unhooked.
        device: where it ran.
    """

    parameters: int
    input_shape: tuple[int, ...]
    time_steps: int
    ops: OpReport
    rates: FiringRates
    seconds_per_batch: float
    device: str

    @property
    def throughput(self) -> float:
        """Samples per second, from :attr:`seconds_per_batch`."""
        return self.input_shape[0] / self.seconds_per_batch

    def summary(self) -> dict[str, Any]:
        """The headline numbers as plain values (what ``--format json`` writes, less layers)."""
        ops = self.ops
        return {
            "parameters": self.parameters,
            "input_shape": list(self.input_shape),
            "time_steps": self.time_steps,
            "macs": ops.macs,
            "sops": ops.sops,
            "dense_macs": ops.dense_macs,
            "energy_mj": ops.energy_mj,
            "backbone_energy_mj": ops.backbone_energy_mj,
            "classifier_energy_mj": ops.classifier_energy_mj,
            "rate_energy_mj": ops.rate_energy_mj,
            "e_mac_pj": ops.energy.e_mac,
            "e_ac_pj": ops.energy.e_ac,
            "mean_firing_rate": self.rates.mean_rate,
            "throughput": self.throughput,
            "device": self.device,
        }

    def to_dict(self) -> dict[str, Any]:
        """:meth:`summary` plus the per-layer operations and firing rates."""
        return {
            **self.summary(),
            "layers": self.ops.per_layer().to_dicts(),
            "firing_rates": self.rates.per_layer().to_dicts(),
        }


def profile_model(
    model: nn.Module,
    inputs: Tensor,
    energy: str | EnergyModel = DEFAULT_ENERGY,
    repeats: int = 3,
) -> ModelProfile:
    """Count operations and firing rates on ``inputs`` and time ``repeats`` plain forward passes.

    Args:
        model: a network with spikezoo neurons, in the mode to profile (usually ``eval()``).
        inputs: one batch, e.g. ``[B, C, H, W]`` or event frames ``[B, T, C, H, W]``.
        energy: energy model or preset name.
        repeats: timed forward passes (after the counted one, which warms up); the median wins.

    Raises ``ValueError`` for a model without spikezoo neurons: it has no spikes to count.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not spiking_neurons(model):
        raise ValueError(
            f"{type(model).__name__} has no spikezoo spiking neurons (SpikingNeuron layers): "
            "there are no spikes, firing rates or SOPs to report"
        )
    with torch.no_grad(), FiringRateMonitor(model) as monitor, OpCounter(model, energy) as counter:
        model(inputs)
    rates, ops = monitor.rates(), counter.report()
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            _synchronize(inputs)
            start = time.perf_counter()
            model(inputs)
            _synchronize(inputs)
            times.append(time.perf_counter() - start)
    return ModelProfile(
        parameters=sum(p.numel() for p in model.parameters()),
        input_shape=tuple(inputs.shape),
        time_steps=max(r.time_steps for r in rates.records),
        ops=ops,
        rates=rates,
        seconds_per_batch=statistics.median(times),
        device=str(inputs.device),
    )


def _synchronize(x: Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
