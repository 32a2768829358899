"""Fold eval-mode BatchNorm into the convolution or linear layer that feeds it.

The pairs are found in the model's ``torch.fx`` graph (traced with timm's notrace registrations,
so every neuron stays one call), not guessed from module names: a BatchNorm is folded only where
the graph proves that it normalises nothing but the output of one convolution, namely

- the BatchNorm is called once, on the output of a single ``Conv1d``/``Conv2d``/``Conv3d`` or
  ``Linear`` call, with nothing else as argument;
- that output goes nowhere else (no residual, no second reader);
- each of the two modules is called once in the whole graph, reads no other module's weights,
  and no code reads their parameters or buffers directly (a layer that pads with the
  BatchNorm's bias, for example, keeps its BatchNorm);
- the BatchNorm has running statistics and the convolution's output channels are its features.

Every other BatchNorm (after an addition, a pooling, a reshape, another BatchNorm...) is left as
it is, with the reason in :class:`FoldReport`. The folded BatchNorm is replaced by a
:class:`FoldedBatchNorm`, which passes its input through in eval mode and refuses to run in
training mode (folded statistics cannot be updated).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import torch
from timm.layers import get_notrace_functions, get_notrace_modules, register_notrace_module
from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

_logger = logging.getLogger(__name__)

__all__ = ["FoldReport", "FoldedBatchNorm", "FoldedPair", "fold_batchnorm", "foldable_pairs"]

#: The layers a BatchNorm can be folded into -> the BatchNorm class and the number of
#: dimensions of its input for which its features are the layer's output channels.
FOLDABLE: dict[type[nn.Module], tuple[type[_BatchNorm], int]] = {
    nn.Conv1d: (nn.BatchNorm1d, 3),
    nn.Conv2d: (nn.BatchNorm2d, 4),
    nn.Conv3d: (nn.BatchNorm3d, 5),
    nn.Linear: (nn.BatchNorm1d, 2),
}


@dataclass(frozen=True)
class FoldedPair:
    """A BatchNorm (``norm``) folded into the layer that feeds it (``layer``), by module name."""

    layer: str
    norm: str


@dataclass
class FoldReport:
    """What :func:`fold_batchnorm` folded, and why each other BatchNorm was left alone.

    Attributes:
        folded: the folded pairs, in graph order.
        skipped: module name -> reason, for every BatchNorm that was not folded.
    """

    folded: list[FoldedPair] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"folded {len(self.folded)} BatchNorm layers, kept {len(self.skipped)}"]
        lines += [f"  folded {p.norm} into {p.layer}" for p in self.folded]
        lines += [f"  kept {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)


@register_notrace_module  # torch.fx cannot branch on its input's shape: it stays one call
class FoldedBatchNorm(nn.Module):
    """What remains of a BatchNorm folded into the preceding layer: an identity for inference.

    It raises ``RuntimeError`` in training mode, where the original BatchNorm would have
    normalised with batch statistics and updated its running ones, and ``ValueError`` for an
    input whose layout differs from the one the fold assumed (``input_dims`` dimensions,
    ``num_features`` channels in dimension 1).

    Args:
        name: the folded BatchNorm's module name, for the error messages.
        layer: the name of the layer it was folded into.
        num_features: the BatchNorm's features.
        input_dims: the number of dimensions of the input it normalised.
    """

    def __init__(self, name: str, layer: str, num_features: int, input_dims: int) -> None:
        super().__init__()
        self.name = name
        self.layer = layer
        self.num_features = num_features
        self.input_dims = input_dims

    def forward(self, x: Tensor) -> Tensor:
        """``x`` unchanged (its normalisation lives in the layer's weights now)."""
        if self.training:
            raise RuntimeError(
                f"BatchNorm {self.name!r} was folded into {self.layer!r} by "
                "spikezoo.deploy.optimize: this model is for inference only and must stay in "
                "eval mode (call .eval()); to train, start again from the original model"
            )
        if x.dim() != self.input_dims or x.shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm {self.name!r} was folded into {self.layer!r} for inputs of "
                f"{self.input_dims} dimensions with {self.num_features} channels in dimension 1, "
                f"got shape {tuple(x.shape)}"
            )
        return x

    def extra_repr(self) -> str:
        """The layer the BatchNorm lives in now, for ``print(module)``."""
        return f"into={self.layer!r}, num_features={self.num_features}"


class _Tracer(fx.Tracer):
    """torch.fx with timm's notrace modules (neurons) and functions (shape checks) kept whole."""

    def __init__(self) -> None:
        super().__init__(autowrap_functions=tuple(get_notrace_functions()))
        self._leaves = tuple(get_notrace_modules())

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, self._leaves) or super().is_leaf_module(module, qualified_name)


def trace(model: nn.Module) -> fx.Graph:
    """``model``'s forward as a ``torch.fx`` graph; neurons and shape checks are single calls."""
    return _Tracer().trace(model)


def foldable_pairs(model: nn.Module) -> FoldReport:
    """Find the BatchNorms of ``model`` that can be folded, without changing anything.

    ``model`` is traced in its current mode; trace it in eval mode, the mode the fold is for.
    Where ``torch.fx`` cannot trace the model, nothing is foldable: the report gives the
    tracer's error as the reason for every BatchNorm (and it is logged as a warning).
    """
    modules = dict(model.named_modules())
    try:
        graph = trace(model)
    except Exception as error:  # torch.fx raises many types for code it cannot follow
        reason = f"torch.fx cannot trace the model ({type(error).__name__}: {error})"
        _logger.warning("no BatchNorm folded: %s", reason)
        return FoldReport(
            skipped={n: reason for n, m in modules.items() if isinstance(m, _BatchNorm)}
        )
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    read_directly = {
        n.target.rpartition(".")[0] for n in graph.nodes if n.op == "get_attr"
    }  # modules whose parameters or buffers the code reads itself
    shared = _modules_with_shared_tensors(model)
    report = FoldReport()
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], _BatchNorm):
            source = node.args[0] if node.args else None
            reason = _why_not(node, modules, calls, read_directly | shared)
            if reason:
                report.skipped[node.target] = reason
            else:
                report.folded.append(FoldedPair(source.target, node.target))
    for name, module in modules.items():
        if isinstance(module, _BatchNorm) and name not in calls:
            report.skipped[name] = "not called as a module of its own in the traced graph"
    return report


def _why_not(
    node: fx.Node, modules: dict[str, nn.Module], calls: Counter, untouchable: set[str]
) -> str | None:
    """Why the BatchNorm call ``node`` cannot be folded into the layer before it (``None``: it
    can). ``untouchable`` names the modules whose tensors are read directly or shared."""
    name, norm = node.target, modules[node.target]
    if len(node.args) != 1 or node.kwargs:
        return "called with more than one argument"
    source = node.args[0]
    is_call = isinstance(source, fx.Node) and source.op == "call_module"
    layer_name = source.target if is_call else None
    layer = modules[layer_name] if is_call else None
    if layer is None or type(layer) not in FOLDABLE:
        return "its input is not the output of a convolution or linear layer"
    if type(norm) is not FOLDABLE[type(layer)][0]:
        return f"{type(norm).__name__} does not match the {type(layer).__name__} before it"
    if len(source.users) != 1:
        return f"the output of {layer_name!r} is also used elsewhere"
    if calls[name] != 1 or calls[layer_name] != 1:
        return f"it or {layer_name!r} is called more than once"
    if name in untouchable or layer_name in untouchable:
        return f"the code reads its or {layer_name!r}'s tensors directly, or shares them"
    if norm.running_mean is None or norm.running_var is None:
        return "it has no running statistics (it normalises with batch statistics)"
    if parametrize.is_parametrized(layer):
        return f"{layer_name!r} is parametrized"
    channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if channels != norm.num_features:
        return f"{layer_name!r} has {channels} output channels, it {norm.num_features} features"
    return None


def _modules_with_shared_tensors(model: nn.Module) -> set[str]:
    """Names of the modules holding a parameter or buffer that another module also holds."""
    owners: dict[int, set[str]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            owners.setdefault(id(tensor), set()).add(module_name)
    counts = Counter(name for names in owners.values() if len(names) > 1 for name in names)
    return set(counts)


@torch.no_grad()
def _fold(layer: nn.Module, norm: _BatchNorm) -> None:
    """Scale ``layer``'s weight and shift its bias so that it computes ``norm(layer(x))``.

    The arithmetic is done in float64 and rounded once to the layer's dtype.
    """
    weight = layer.weight
    scale = torch.rsqrt(norm.running_var.double() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    bias = -norm.running_mean.double() * scale
    if layer.bias is not None:
        bias = bias + layer.bias.double() * scale
    if norm.bias is not None:
        bias = bias + norm.bias.double()
    shape = (-1,) + (1,) * (weight.dim() - 1)
    folded = (weight.double() * scale.view(shape)).to(weight.dtype)
    layer.weight = nn.Parameter(
        folded.contiguous(memory_format=_memory_format(weight)), weight.requires_grad
    )
    layer.bias = nn.Parameter(bias.to(weight.dtype), weight.requires_grad)


def _memory_format(t: Tensor) -> torch.memory_format:
    channels_last = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
    return (
        torch.channels_last if channels_last and not t.is_contiguous() else torch.contiguous_format
    )


def fold_batchnorm(model: nn.Module) -> FoldReport:
    """Fold every provable conv/linear -> BatchNorm pair of ``model``, in place.

    ``model`` is put in eval mode. Each folded BatchNorm is replaced by a
    :class:`FoldedBatchNorm`: the model then computes the same function in eval mode (up to
    rounding: the fold is done in float64 and rounded once), loses the BatchNorms' state-dict
    keys, and gains a bias on the folded layers. Which pairs qualify is described in
    :mod:`spikezoo.deploy.fold`; the report lists the folded pairs and why the others were kept.

    Raises ``TypeError`` for something other than an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model.eval()
    report = foldable_pairs(model)
    for pair in report.folded:
        layer, norm = model.get_submodule(pair.layer), model.get_submodule(pair.norm)
        _fold(layer, norm)
        input_dims = FOLDABLE[type(layer)][1]
        replacement = FoldedBatchNorm(pair.norm, pair.layer, norm.num_features, input_dims)
        model.set_submodule(pair.norm, replacement.eval())
    return report
