"""Before any timing: does every implementation compute spikezoo's logits and spikes?"""

from __future__ import annotations

from collections.abc import Callable

import torch
from harness.timing import error_text
from torch import Tensor, nn

from whole_models.zoo import Runner


def count_spikes(model: nn.Module, call: Callable[[], Tensor]) -> tuple[Tensor, int | None]:
    """``call()``'s output and the spikes fired by ``model``'s neuron layers (None: none found).

    A neuron layer is an innermost module whose class name contains ``LIF``, so spikezoo's,
    spikingjelly's and the authors' neurons are all counted.
    """
    total = [0]
    neurons = [m for m in model.modules() if "LIF" in type(m).__name__]
    hooks = [
        module.register_forward_hook(lambda m, i, o: total.__setitem__(0, total[0] + int(o.sum())))
        for module in neurons
        if not any(
            "LIF" in type(child).__name__ for child in module.modules() if child is not module
        )
    ]
    try:
        out = call()
    finally:
        for hook in hooks:
            hook.remove()
    return out, (total[0] if hooks else None)


def check_agreement(runners: list[Runner], x: Tensor, atol: float) -> dict:
    """float32 eval logits and spike counts of every runner against spikezoo's (the first).

    A runner agrees when its logits are within ``atol`` and it fires as many spikes, or, if it
    allows rounding (``Runner.spike_rounding``), when its spike count is within that fraction.
    A runner that raises is reported with the error and does not agree.
    """
    results = {}
    with torch.no_grad():
        ref_out, ref_spikes = count_spikes(runners[0].model, lambda: runners[0].model.eval()(x))
        for runner in runners:
            try:
                out, spikes = count_spikes(runner.model, lambda r=runner: r.model.eval()(x))
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
