"""Before any timing: does every implementation compute spikezoo's logits and spikes?"""

from __future__ import annotations

from collections.abc import Callable

import torch
from harness.timing import error_text
from torch import Tensor, nn

from spikezoo.neurons import SpikingNeuron
from whole_models.zoo import Runner


def spike_counter(module: nn.Module) -> Callable[[Tensor], Tensor] | None:
    """How many spikes each value of ``module``'s output stands for, if ``module`` is a neuron
    layer (else ``None``).

    spikezoo's neurons say it themselves (:meth:`~spikezoo.neurons.SpikingNeuron.spike_counts`);
    a class whose name contains ``LIF`` (spikingjelly's and the authors' binary neurons) fires
    its output; the authors' E-SpikeFormer ``MultiSpike`` / ``Multispike`` output ``n / norm``
    stands for ``n`` spikes.
    """
    if isinstance(module, SpikingNeuron):
        return module.spike_counts
    name = type(module).__name__
    if "LIF" in name:
        return lambda out: out
    if name.lower() == "multispike":
        norm = module.Norm if hasattr(module, "Norm") else module.norm
        return lambda out: out * norm
    return None


def count_spikes(model: nn.Module, call: Callable[[], Tensor]) -> tuple[Tensor, int | None]:
    """``call()``'s output and the spikes fired by ``model``'s neuron layers (None: none found).

    A neuron layer is an innermost module that :func:`spike_counter` recognises, so spikezoo's,
    spikingjelly's and the authors' neurons, binary or integer, are all counted.
    """
    total = [0]

    def add(counter: Callable[[Tensor], Tensor], out: Tensor) -> None:
        total[0] += int(torch.round(counter(out).double().sum()))

    neurons = {m: spike_counter(m) for m in model.modules()}
    hooks = [
        module.register_forward_hook(lambda m, i, o, c=counter: add(c, o))
        for module, counter in neurons.items()
        if counter is not None
        and not any(neurons.get(child) for child in module.modules() if child is not module)
    ]
    try:
        out = call()
    finally:
        for hook in hooks:
            hook.remove()
    return out, (total[0] if hooks else None)


def observe(model: nn.Module, x: Tensor) -> tuple[Tensor, int | None]:
    """``model``'s eval logits for ``x`` and the spikes it fires (:func:`count_spikes`).

    A compiled model's spikes are counted on the module it wraps (``_orig_mod``, the same
    weights), and its logits come from a call without hooks: dynamo does not guard hooks added
    to submodules after compiling (they would not run), and a counting hook present at the
    first call, which reads values (a graph break in the blocks' loop), would make dynamo skip
    the model's frames for good, so that every timed call after ran eagerly.
    """
    model.eval()
    counted = getattr(model, "_orig_mod", model)
    out, spikes = count_spikes(counted, lambda: counted(x))
    return (out if counted is model else model(x)), spikes


def check_agreement(runners: list[Runner], x: Tensor, atol: float) -> dict:
    """float32 eval logits and spike counts of every runner against spikezoo's (the first).

    A runner agrees when its logits are within ``atol`` and it fires as many spikes, or, if it
    allows rounding (``Runner.spike_rounding``), when its spike count is within that fraction.
    A runner that raises is reported with the error and does not agree.
    """
    results = {}
    with torch.no_grad():
        ref_out, ref_spikes = observe(runners[0].model, x)
        for runner in runners:
            try:
                out, spikes = observe(runner.model, x)
            except Exception as error:  # e.g. a peer's CUDA kernel that does not build here
                results[runner.name] = dict(
                    max_abs_logit_diff=None, spikes=None, same_spikes=None, agree=False,
                    error=error_text(error),
                )  # fmt: skip
                continue
            diff = float((out.float() - ref_out.float()).abs().max())
            same_spikes = None if spikes is None or ref_spikes is None else spikes == ref_spikes
            agree = bool(diff <= atol and same_spikes is not False)
            if not agree and runner.spike_rounding and spikes is not None and ref_spikes:
                agree = abs(spikes - ref_spikes) <= runner.spike_rounding * ref_spikes
            results[runner.name] = dict(
                max_abs_logit_diff=diff, spikes=spikes, same_spikes=same_spikes, agree=agree
            )
    return results
