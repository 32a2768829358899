"""What every model family shares: the constructor arguments, time-major input, the spiking
classification head(s), timm's model API (intermediates, classifier reset, grad checkpointing,
parameter groups, weight-decay lists), the stochastic-depth schedule and the truncated-normal
initialisation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any, ClassVar

import torch
from einops import rearrange, reduce
from timm.layers import register_notrace_function, to_2tuple, trunc_normal_
from timm.models._features import feature_take_indices
from torch import Tensor, nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torch.utils.checkpoint import checkpoint

from spikezoo import _checks
from spikezoo.layers import NeuronFactory, freeze_firing_rates
from spikezoo.layers.defaults import neuron_factory
from spikezoo.models._static_input import encode_static_input_once
from spikezoo.neurons import SpikingNeuron
from spikezoo.neurons.saved_spikes import compact_saved_spikes

__all__ = [
    "TIME_REDUCTIONS",
    "SpikingVisionModel",
    "drop_path_rates",
    "neuron_factory",
    "trunc_normal_init",
]

#: How ``forward_intermediates`` turns ``[T, B, C, H, W]`` into a batch-first map.
TIME_REDUCTIONS = ("mean", "last", "none")


def drop_path_rates(drop_path_rate: float, count: int) -> list[float]:
    """Stochastic depth rising linearly from 0 to ``drop_path_rate`` over ``count`` units.

    Raises ``ValueError`` unless ``drop_path_rate`` is in [0, 1). The rates are computed in
    Python floats, ``rate * i / (count - 1)``; timm's ``calculate_drop_path_rates`` rounds them
    through a float32 ``torch.linspace`` instead, which differs in the last bits.
    """
    _checks.fraction("drop_path_rate", drop_path_rate, upper_closed=False)
    return [drop_path_rate * i / max(count - 1, 1) for i in range(count)]


def trunc_normal_init(
    module: nn.Module, layer_types: tuple[type[nn.Module], ...] = (nn.Conv2d,), std: float = 0.02
) -> None:
    """Weights of ``layer_types`` truncated-normal(``std``), their biases zero; for ``apply``.

    Other modules keep PyTorch's initialisation (BatchNorm weight 1 and bias 0). Tensors on the
    ``meta`` device hold no values, so they are left alone (a meta build is about shapes).
    """
    if isinstance(module, layer_types) and not module.weight.is_meta:
        trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class SpikingVisionModel(nn.Module):
    """Base of the spikezoo classifiers: builds what every family shares around the family's
    own feature extractor.

    Input is a static batch ``[B, C, H, W]`` (repeated ``time_steps`` times) or event frames
    ``[B, T, C, H, W]``. Output is ``[B, num_classes]``, the mean of the per-step logits, or
    the per-step logits ``[T, B, num_classes]`` when ``per_step_logits`` is set (TET losses).

    Args (every family; keyword only):
        img_size: nominal input size; must be a multiple of :attr:`size_multiple` (any such
            size works at run time: there is no position embedding).
        in_chans: input channels (3 for images, 2 for DVS event frames).
        num_classes: classes of the linear head(s) (0: no head).
        time_steps: T for static images (event input brings its own T).
        neuron: ``"lif"``, ``"plif"`` (with the paper's surrogate, see
            :data:`~spikezoo.layers.defaults.PAPER_NEURONS`) or a neuron factory.
        drop_path_rate: stochastic depth, in [0, 1); how it is spread over the feature units
            is the family's.
        global_pool: ``"avg"`` or ``""`` (per-token logits).
        per_step_logits: return ``[T, B, K]`` instead of the time average.
        feature_time_reduction: default ``time_reduction`` of ``forward_intermediates``.
        device: device the parameters and buffers are created on (timm's factory argument).
        dtype: floating-point dtype of the parameters and buffers (timm's factory argument).
        **architecture: the family's own arguments, passed to :meth:`build_features`.

    A family subclass defines :meth:`build_features` (which creates the stem and the feature
    units, the ``nn.Sequential`` named by ``feature_units``, and sets ``num_features``,
    ``feature_info`` and ``size_multiple``), :meth:`forward_stem` and the class attributes
    below. The base then adds the head neuron, the classifier(s) named by
    ``classifier_names``, and initialises the weights of ``init_layer_types``.
    """

    #: the attribute holding the feature units that ``forward_intermediates`` indexes
    feature_units: ClassVar[str]
    #: key of the family's neuron settings in :data:`~spikezoo.layers.defaults.PAPER_NEURONS`
    paper: ClassVar[str]
    #: whether a neuron fires on the pooled features before the linear head
    head_neuron: ClassVar[bool] = True
    #: whether the linear classifier has a bias
    head_bias: ClassVar[bool] = True
    #: the layers initialised truncated-normal(0.02) with zero bias (the authors' init); the
    #: others keep PyTorch's
    init_layer_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Conv2d,)
    #: the prefix of the stem's parameters, for :meth:`group_matcher`
    stem_prefix: ClassVar[str] = "stem"
    #: whether the feature units are stages of blocks (``units.<stage>.<block>``) rather than
    #: blocks, for :meth:`group_matcher`
    units_are_stages: ClassVar[bool] = True
    #: the stem's leading modules that act on each step alone (convolution, BatchNorm, pooling:
    #: no neuron), by attribute path in the order :meth:`forward_stem` runs them; for a static
    #: image they run once and their output is broadcast over T (see :meth:`set_static_encoding`)
    static_stem: ClassVar[tuple[str, ...]] = ()
    #: Keep the spikes saved for backward as bits, integer spikes as bytes (see
    #: :meth:`set_spike_compaction`); a family may set it off where it costs more time than it
    #: is worth (E-SpikeFormer's integer spikes).
    spike_compaction: bool = True
    #: Run :attr:`static_stem` once for a static image (see :meth:`set_static_encoding`).
    static_encoding: bool = True
    #: the linear heads (timm's cfg ``classifier``): ``head``, with extra ones in some families
    classifier_names: tuple[str, ...] = ("head",)
    #: H and W must be multiples of this number
    size_multiple: int
    num_features: int
    head_lif: nn.Module
    head: nn.Module
    feature_info: list[dict]

    def __init__(
        self,
        *,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        time_steps: int = 4,
        neuron: str | NeuronFactory = "lif",
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        per_step_logits: bool = False,
        feature_time_reduction: str = "mean",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **architecture: Any,
    ) -> None:
        super().__init__()
        _checks.choice("global_pool", global_pool, ("avg", ""))
        _checks.choice("feature_time_reduction", feature_time_reduction, TIME_REDUCTIONS)
        self.in_chans = _checks.positive_int("in_chans", in_chans)
        self.num_classes = _checks.num_classes(num_classes)
        self.time_steps = _checks.positive_int("time_steps", time_steps)
        self.global_pool = global_pool
        self.per_step_logits = per_step_logits
        self.feature_time_reduction = feature_time_reduction
        self.grad_checkpointing = False
        _checks.fraction("drop_path_rate", drop_path_rate, upper_closed=False)
        make_neuron = neuron_factory(neuron, self.paper)
        # created where they live: a large model is never allocated on the CPU first
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self.build_features(neuron=make_neuron, drop_path_rate=drop_path_rate, **architecture)
            self.check_image_size(*to_2tuple(img_size))
            self.head_lif = make_neuron() if self.head_neuron else nn.Identity()
            for name in self.classifier_names:
                setattr(self, name, self._make_head(self.num_features, num_classes))
            self.apply(partial(trunc_normal_init, layer_types=self.init_layer_types))
        encode_static_input_once(self, self.static_stem)
        if dtype is not None:
            self.to(dtype=dtype)

    def build_features(
        self, neuron: NeuronFactory, drop_path_rate: float, **architecture: Any
    ) -> None:
        """Create the stem and the feature units from the family's own arguments."""
        raise NotImplementedError

    # --- input -------------------------------------------------------------------------------

    def to_time_major(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` (repeated ``time_steps`` times) or ``[B, T, C, H, W]`` -> time-major.

        A static image becomes an expanded view (stride 0 along T, no copy) where
        :attr:`static_stem` runs it once, else a copy per step. Raises ``ValueError`` for
        another shape, channel count or size, and ``TypeError`` for an integer image or one of
        another dtype than the weights (outside autocast).
        """
        # An FX graph would keep the dtype it was traced with (and reading a parameter there
        # would keep deploy from folding it): traced graphs check the layout only.
        dtype = None if is_fx_symbolic_tracing() else next(self.parameters()).dtype
        return time_major_input(
            x,
            self.in_chans,
            self.time_steps,
            self.size_multiple,
            type(self).__name__,
            dtype,
            expand=self._encodes_static_input_once(),
        )

    def _encodes_static_input_once(self) -> bool:
        # A compiled training step runs every step: the BatchNorm hooks swap buffers during the
        # call, which dynamo cannot trace. A compiled inference graph takes the hooks in.
        compiled_training = torch.compiler.is_compiling() and self.training
        return bool(self.static_stem) and self.static_encoding and not compiled_training

    def check_image_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` for a size the network cannot divide evenly."""
        _checks.image_size(height, width, self.size_multiple, type(self).__name__)

    def forward_stem(self, x: Tensor) -> Tensor:
        """``[T, B, C, H, W]`` input -> the first feature map, the input of the feature units."""
        raise NotImplementedError

    @property
    def units(self) -> nn.Sequential:
        """The feature units that ``forward_intermediates`` indexes."""
        return getattr(self, self.feature_units)

    # --- features ----------------------------------------------------------------------------

    def _run_unit(self, unit: nn.Module, x: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(
                unit,
                x,
                use_reentrant=False,
                context_fn=lambda: _recompute_in_the_same_state(unit),
            )
        return unit(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """Input -> the last feature map ``[T, B, num_features, H', W']`` (membrane potentials)."""
        with self._compaction():
            x = self.forward_stem(self.to_time_major(x))
            for unit in self.units:
                x = self._run_unit(unit, x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """``[T, B, C, H, W]`` -> logits ``[B, K]`` (``[T, B, K]`` with ``per_step_logits``).

        The map is averaged over space (``global_pool="avg"``) or kept as tokens
        (``global_pool=""``: ``[B, H*W, K]``), fed to the head neuron (SDT) and to the linear
        head at every step. ``pre_logits=True`` returns the head's input instead, averaged over
        time unless ``per_step_logits`` is set.
        """
        with self._compaction():
            x = self.head_input(x)
            if not pre_logits:
                x = self.head(x)
        return x if self.per_step_logits else x.mean(0)

    def head_input(self, x: Tensor) -> Tensor:
        """``[T, B, C, H, W]`` -> what the linear head reads at every step.

        ``[T, B, C]`` averaged over space (``global_pool="avg"``) or ``[T, B, H*W, C]`` tokens,
        through the head neuron.
        """
        if self.global_pool == "avg":
            x = x.flatten(3).mean(3)
        else:
            x = rearrange(x, "t b c h w -> t b (h w) c")
        return self.head_lif(x)

    def forward(self, x: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` or event frames ``[B, T, C, H, W]`` -> ``[B, num_classes]``."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        time_reduction: str | None = None,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Run the network and collect the output maps of the chosen feature units.

        Args:
            indices: last ``n`` units if an int, all if ``None``, else the listed indices.
            stop_early: stop after the last requested unit.
            output_fmt: only ``"NCHW"``.
            intermediates_only: return only the list of maps.
            time_reduction: ``"mean"`` (firing-rate-like average over T, ``[B, C, H, W]``),
                ``"last"`` (the last step, ``[B, C, H, W]``) or ``"none"`` (``[B, T, C, H, W]``);
                defaults to the model's ``feature_time_reduction``.

        Returns the intermediates, or ``(final features [T, B, C, H, W], intermediates)``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        reduction = time_reduction or self.feature_time_reduction
        _checks.choice("time_reduction", reduction, TIME_REDUCTIONS)
        take_indices, max_index = self._take_indices(indices)
        units = self.units[: max_index + 1] if stop_early else self.units

        intermediates = []
        with self._compaction():
            x = self.forward_stem(self.to_time_major(x))
            for i, unit in enumerate(units):
                x = self._run_unit(unit, x)
                if i in take_indices:
                    intermediates.append(_reduce_time(x, reduction))
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the units after the last of ``indices`` (and the head); returns the kept indices."""
        take_indices, max_index = self._take_indices(indices)
        setattr(self, self.feature_units, self.units[: max_index + 1])
        self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or max_index < len(self.feature_info) - 1:
            self.reset_classifier(0, "")
        return take_indices

    def _take_indices(self, indices: int | Sequence[int] | None) -> tuple[list[int], int]:
        """timm's absolute feature indices, with a ``ValueError`` that says what is valid."""
        count = len(self.units)
        if isinstance(indices, bool) or not (
            indices is None
            or isinstance(indices, int)
            or (isinstance(indices, Sequence) and all(isinstance(i, int) for i in indices))
        ):
            raise ValueError(f"indices must be an int or a sequence of ints, got {indices!r}")
        if isinstance(indices, int) and not 0 < indices <= count:
            raise ValueError(
                f"indices (out_indices) as an int takes the last n of the {count} feature units, "
                f"so 1 <= n <= {count}; got {indices}"
            )
        if isinstance(indices, Sequence):
            if not indices:
                raise ValueError(
                    "indices (out_indices) must name at least one feature unit, got ()"
                )
            wrong = [i for i in indices if not -count <= i < count]
            if wrong:
                raise ValueError(
                    f"indices (out_indices) {tuple(indices)} name no feature unit: {wrong}; "
                    f"{type(self).__name__} has {count} ({list(range(count))} or "
                    f"{list(range(-count, 0))} from the end)"
                )
        return feature_take_indices(count, indices)

    # --- classifier --------------------------------------------------------------------------

    def get_classifier(self) -> nn.Module:
        """The linear head (``nn.Identity`` when ``num_classes`` is 0)."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace every linear head of ``classifier_names`` (``num_classes=0``: none) and
        optionally the pooling.

        The new heads take the device, dtype and training mode of the model.
        """
        num_classes = _checks.num_classes(num_classes)
        if global_pool is not None:
            _checks.choice("global_pool", global_pool, ("avg", ""))
            self.global_pool = global_pool
        self.num_classes = num_classes
        like = next(self.parameters())
        for name in self.classifier_names:
            head = self._make_head(self.num_features, num_classes)
            setattr(self, name, head.to(device=like.device, dtype=like.dtype).train(self.training))

    def _make_head(self, num_features: int, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        return nn.Linear(num_features, num_classes, bias=self.head_bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups (stem, blocks) for layer-wise learning-rate decay."""
        units = self.feature_units
        if self.units_are_stages:
            blocks = rf"^{units}\.(\d+)" if coarse else rf"^{units}\.(\d+)\.(\d+)"
            return dict(stem=rf"^{self.stem_prefix}", blocks=blocks)
        return dict(
            stem=rf"^{self.stem_prefix}",
            blocks=[(rf"^{units}\.(\d+)", None), (r"^head_lif", (99999,))],
        )

    # --- training helpers --------------------------------------------------------------------

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each feature unit in backward: less memory, same outputs, gradients and
        buffer updates (the recomputation leaves BN statistics and DSSA rates alone)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def set_spike_compaction(self, enable: bool = True) -> None:
        """Keep the spikes saved for backward as bits, and integer spikes (E-SpikeFormer's) as
        one byte each (on by default, except in E-SpikeFormer's families, where it costs about
        a sixth of a small training step): less memory, the same outputs and gradients bit for
        bit. See :func:`spikezoo.neurons.compact_saved_spikes`.

        Raises ``TypeError`` if ``enable`` is not a bool.
        """
        if not isinstance(enable, bool):
            raise TypeError(
                f"enable must be True or False, got {type(enable).__name__} {enable!r:.60}"
            )
        self.spike_compaction = enable

    @torch.jit.ignore
    def set_static_encoding(self, enable: bool = True) -> None:
        """Run the stem's time-independent part (:attr:`static_stem`) once for a static image
        and broadcast its output over the T steps (on by default): the same outputs, gradients
        and BatchNorm statistics, to rounding, as running it on every step (``False``).

        Raises ``TypeError`` if ``enable`` is not a bool.
        """
        if not isinstance(enable, bool):
            raise TypeError(
                f"enable must be True or False, got {type(enable).__name__} {enable!r:.60}"
            )
        self.static_encoding = enable

    def _compaction(self) -> contextlib.AbstractContextManager:
        """Spike compaction where it applies: gradients enabled, eager (not compiling)."""
        active = (
            self.spike_compaction and torch.is_grad_enabled() and not torch.compiler.is_compiling()
        )
        return compact_saved_spikes() if active else contextlib.nullcontext()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The learnable neuron time constants (PLIF ``w``), by parameter name."""
        return {
            f"{name}.{param_name}" if name else param_name
            for name, module in self.named_modules()
            if isinstance(module, SpikingNeuron)
            for param_name, _ in module.named_parameters(recurse=False)
        }

    def spiking_neurons(self) -> list[tuple[str, SpikingNeuron]]:
        """Every neuron layer with its name: the places to hook for firing-rate analysis."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, SpikingNeuron)]


def _recompute_in_the_same_state(
    module: nn.Module,
) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    """Checkpointing contexts: recompute ``module`` from the state its forward pass saw, and
    leave its BN statistics and DSSA rates as that pass left them (advanced once).

    BatchNorm runs the same kernels as in the original pass (checkpointing checks what is
    saved), so its running statistics are reset to their values before the forward pass for
    the recomputation (Meta-SpikeFormer's :class:`~spikezoo.layers.BNAndPad` reads them), then
    restored.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    before: list[list[Tensor]] = []

    @contextlib.contextmanager
    def forward() -> Iterator[None]:
        before[:] = _buffers(norms)
        yield

    @contextlib.contextmanager
    def recompute() -> Iterator[None]:
        after = _buffers(norms)
        _load_buffers(norms, before)
        try:
            with freeze_firing_rates(module):
                yield
        finally:
            _load_buffers(norms, after)

    return forward(), recompute()


def _buffers(modules: list[nn.Module]) -> list[list[Tensor]]:
    return [[b.clone() for b in m.buffers(recurse=False)] for m in modules]


def _load_buffers(modules: list[nn.Module], values: list[list[Tensor]]) -> None:
    with torch.no_grad():
        for m, buffers in zip(modules, values, strict=True):
            for buffer, value in zip(m.buffers(recurse=False), buffers, strict=True):
                buffer.copy_(value)


@register_notrace_function  # torch.fx cannot branch on the shape of its proxies
def time_major_input(
    x: Tensor,
    in_chans: int,
    time_steps: int,
    size_multiple: int,
    model: str,
    weights_dtype: torch.dtype | None = None,
    expand: bool = False,
) -> Tensor:
    """Check a model's input and lay it out time-major: ``[T, B, C, H, W]``.

    ``x`` is a static batch ``[B, C, H, W]`` (repeated ``time_steps`` times: a copy, or with
    ``expand`` a view with stride 0 along T) or event frames ``[B, T, C, H, W]``. ``model``
    names the model in the error messages. ``weights_dtype`` (the model's parameters') must be
    ``x``'s dtype unless autocast is on for ``x``'s device.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{model} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (4, 5):
        raise ValueError(
            f"{model} expects images [B, C, H, W] or event frames [B, T, C, H, W], "
            f"got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{model} expects a floating-point image, got dtype {x.dtype}; convert it first, "
            "e.g. x.float() / 255 for 8-bit pixels, then normalise as the model's "
            "pretrained_cfg (mean, std) says"
        )
    if (
        weights_dtype is not None
        and x.dtype != weights_dtype
        and not torch.is_autocast_enabled(x.device.type)
    ):
        raise TypeError(
            f"{model} has {weights_dtype} weights, got a {x.dtype} input; give both one dtype "
            f"(e.g. model.to({x.dtype}), or x.to({weights_dtype})), or run under "
            "torch.autocast for mixed precision"
        )
    if x.shape[-3] != in_chans:
        raise ValueError(
            f"{model} was built for in_chans={in_chans}, got {x.shape[-3]} channels "
            f"(shape {tuple(x.shape)}, expected [B, {in_chans}, H, W] or [B, T, {in_chans}, H, W])"
        )
    _checks.image_size(x.shape[-2], x.shape[-1], size_multiple, model)
    if x.dim() == 4:
        if expand:
            return x.unsqueeze(0).expand(time_steps, -1, -1, -1, -1)
        return x.unsqueeze(0).repeat(time_steps, 1, 1, 1, 1)
    return x.transpose(0, 1)


def _reduce_time(x: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return reduce(x, "t b c h w -> b c h w", "mean")
    if reduction == "last":
        return x[-1]
    return rearrange(x, "t b c h w -> b t c h w")
