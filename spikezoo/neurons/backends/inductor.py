"""Backend ``"inductor"``: the eager loops fused by ``torch.compile``, chunk by chunk.

``torch.compile`` unrolls a Python loop, so compiling a whole sequence would cost time in
proportion to T and recompile for every new T. Instead the loops of
:mod:`spikezoo.neurons.dynamics` are compiled for the chunk lengths of :data:`CHUNKS` only
(16, 4 and 1 steps), and a sequence runs as consecutive chunks, longest first (``T = 4`` and
``T = 16`` are one chunk each, ``T = 6`` is 4 + 1 + 1, ``T = 1024`` is 64 chunks of 16). Each
chunk compiles into one kernel (C++/OpenMP on the CPU, Triton on CUDA) that reads every
input and writes every output once, with the membrane in registers between its steps; it
compiles once per configuration, chunk length, dtype and device, with the number of neurons
dynamic, and PyTorch caches the kernels on disk. So a configuration compiles at most nine
graphs per loop, whatever the sequence lengths: three chunk lengths, each in at most three
variants (a sequence of one chunk, which takes the initial membrane without a copy; the
first chunk of a longer sequence, at storage offset 0, which dynamo may specialise; the
other chunks), and the forward loop's last chunk once more for the neurons that do not return
their final membrane (``final_needed=False``: its graph writes no ``[N]`` tensor for it). The
models' usual T (4, 8 with two chunks, 16) pay no concatenation or only one.

In training, the forward pass writes the spikes alone and autograd keeps the input ``x``;
:func:`backward_from_input` recharges the membranes from ``x`` inside the backward kernel, so
they never reach memory. Against keeping them, a training step moves five ``[T, N]`` tensors
instead of six and allocates two instead of three. What autograd keeps is no larger than the
membranes (half their size for a bfloat16 input), and it is often held anyway (a residual
input, the fused BatchNorm's recomputation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from spikezoo.neurons import dynamics
from spikezoo.neurons.dynamics import NeuronConfig

__all__ = [
    "CHUNKS",
    "backward",
    "backward_from_input",
    "chunk_lengths",
    "forward",
    "unavailable_reason",
]

#: Inductor's options for the loops. With the number of neurons dynamic, inductor decides
#: whether a C++ kernel runs on several threads from the number it was first compiled for, and
#: its disk cache keeps that kernel for every later size: a backward kernel first compiled for
#: 480 neurons ran on one thread at 600k (614 against 331 us on 2 cores). ``dynamic_threads``
#: opens a parallel region in every kernel and lets OpenMP split it at run time.
_INDUCTOR_OPTIONS = {"cpp.dynamic_threads": True}

#: The chunk lengths compiled as one graph each, longest first: the models' usual T (4, 16)
#: run as one kernel, with no concatenation of chunk outputs.
CHUNKS = (16, 4, 1)


def chunk_lengths(steps: int) -> list[int]:
    """Split ``steps`` into chunks of :data:`CHUNKS`' lengths, longest first.

    >>> chunk_lengths(4), chunk_lengths(6), chunk_lengths(2), chunk_lengths(21)
    ([4], [4, 1, 1], [1, 1], [16, 4, 1])
    """
    lengths = []
    for length in CHUNKS:
        count, steps = divmod(steps, length)
        lengths += [length] * count
    return lengths


@functools.cache
def _compiled(loop: Callable, cfg: NeuronConfig, steps: int, **switch: bool) -> Callable:
    """``loop`` compiled for chunks of ``steps`` steps, one compile region per argument set.

    ``switch`` holds the loop's boolean arguments by name: ``keep_charged`` and
    ``final_needed`` for the forward loop, ``grad_k_needed`` and ``grad_v_needed`` for the
    backward loops. Recompiles happen only for a new dtype or device (and the single-neuron
    case, which dynamo specialises).
    """
    return torch.compile(
        loop,
        dynamic=True,
        fullgraph=True,
        isolate_recompiles=True,
        recompile_limit=32,
        options=_INDUCTOR_OPTIONS,
    )


def _run_chunk(loop: Callable, cfg: NeuronConfig, *tensors: Tensor, **switch: bool) -> tuple:
    """Run ``loop(*tensors, cfg, **switch)`` compiled for the chunk length ``len(tensors[0])``.

    The tensors are passed detached: a view's base (a slice, or an earlier chunk's output)
    would put its shape into dynamo's guards and recompile.
    """
    compiled = _compiled(loop, cfg, tensors[0].shape[0], **switch)
    return compiled(*(t.detach() for t in tensors), cfg, **switch)


def _cat(chunks: list[Tensor]) -> Tensor:
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def _per_neuron(t: Tensor, neurons: int, lengths: list[int]) -> Tensor:
    """``t`` (``[]`` or ``[N]``) as a contiguous ``[N]`` tensor when the sequence has several
    chunks, so that every chunk sees one layout and shares a graph; a single chunk takes ``t``
    as it is (no copy)."""
    return t if len(lengths) == 1 else t.expand(neurons).contiguous()


def forward(
    x: Tensor,
    v_init: Tensor,
    k: Tensor,
    cfg: NeuronConfig,
    keep_charged: bool,
    final_needed: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """:func:`spikezoo.neurons.dynamics.forward_sequence`, compiled chunk by chunk."""
    lengths = chunk_lengths(x.shape[0])
    v = _per_neuron(v_init, x.shape[1], lengths)
    spikes, charged = [], []
    start = 0
    for index, steps in enumerate(lengths):
        spikes_chunk, charged_chunk, v = _run_chunk(
            dynamics.forward_sequence,
            cfg,
            x[start : start + steps],
            v,
            k,
            keep_charged=keep_charged,
            # every chunk but the last passes its final membrane on to the next
            final_needed=final_needed or index < len(lengths) - 1,
        )
        spikes.append(spikes_chunk)
        charged.append(charged_chunk)
        start += steps
    return _cat(spikes), _cat(charged) if keep_charged else None, v


def backward(
    grad_spikes: Tensor,
    grad_v: Tensor,
    charged: Tensor,
    v_init: Tensor,
    k: Tensor,
    cfg: NeuronConfig,
    grad_k_needed: bool,
    grad_v_needed: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """:func:`spikezoo.neurons.dynamics.backward_sequence`, compiled chunk by chunk."""
    neurons, lengths = charged.shape[1], chunk_lengths(charged.shape[0])
    v_init = _per_neuron(v_init, neurons, lengths)
    chunks, start = [], 0
    for steps in lengths:
        v_before = v_init
        if grad_k_needed and start > 0:  # only dL/dk reads the membrane before the chunk
            h_before = charged[start - 1]
            v_before = dynamics.reset(h_before, h_before >= cfg.v_threshold, cfg)
        chunks.append((start, steps, v_before))
        start += steps
    return _walk_back(
        dynamics.backward_steps,
        grad_spikes,
        grad_v,
        charged,
        chunks,
        k,
        cfg,
        grad_k_needed,
        grad_v_needed,
    )


def backward_from_input(
    grad_spikes: Tensor,
    grad_v: Tensor,
    x: Tensor,
    v_init: Tensor,
    k: Tensor,
    cfg: NeuronConfig,
    grad_k_needed: bool,
    grad_v_needed: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """:func:`backward` with the charged membranes recomputed from the input ``x [T, N]``.

    Each chunk is one kernel that charges its membranes from ``x`` in registers and walks them
    back, so a training step moves five ``[T, N]`` tensors instead of six and writes two fresh
    ones instead of three (forward: spikes; backward: ``dL/dx``). A sequence of several chunks
    first runs the forward chunks again, all but the last, for the membrane at the start of
    each: the graphs the forward pass compiled, so nothing new is compiled (their spikes are
    written and dropped).
    """
    lengths = chunk_lengths(x.shape[0])
    v = _per_neuron(v_init, x.shape[1], lengths)
    chunks, start = [], 0
    for index, steps in enumerate(lengths):
        chunks.append((start, steps, v))
        if index < len(lengths) - 1:
            _, _, v = _run_chunk(
                dynamics.forward_sequence,
                cfg,
                x[start : start + steps],
                v,
                k,
                keep_charged=False,
                final_needed=True,  # named as forward names it: the same compiled graph
            )
        start += steps
    return _walk_back(
        dynamics.backward_steps_from_input,
        grad_spikes,
        grad_v,
        x,
        chunks,
        k,
        cfg,
        grad_k_needed,
        grad_v_needed,
    )


def _walk_back(
    loop: Callable,
    grad_spikes: Tensor,
    grad_v: Tensor,
    saved: Tensor,
    chunks: list[tuple[int, int, Tensor]],
    k: Tensor,
    cfg: NeuronConfig,
    grad_k_needed: bool,
    grad_v_needed: bool,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Run the backward ``loop`` over ``chunks`` (``(start, steps, membrane before)``), last
    chunk first: ``dL/dx [T, N]``, ``dL/dv_init`` (``None`` unless ``grad_v_needed``) and
    ``dL/dk``. ``saved [T, N]`` is what the loop reads, the charged membranes or the input."""
    v_init = chunks[0][2]
    grad_v = _per_neuron(grad_v, saved.shape[1], [steps for _, steps, _ in chunks])
    grad_k = torch.zeros((), dtype=v_init.dtype, device=saved.device)
    grad_x = []
    for start, steps, v_before in reversed(chunks):
        end = start + steps
        grad_x_chunk, grad_v, grad_k = _run_chunk(
            loop,
            cfg,
            grad_spikes[start:end],
            grad_v,
            grad_k,
            saved[start:end],
            v_before,
            k,
            grad_k_needed=grad_k_needed,
            # every chunk but the first passes dL/dv on to the chunk before it
            grad_v_needed=grad_v_needed or start > 0,
        )
        grad_x.append(grad_x_chunk)
    grad_x.reverse()
    if grad_k_needed and cfg.leaky:
        grad_k = dynamics.finish_grad_k(grad_k, k, cfg)
    return _cat(grad_x), grad_v, grad_k


def unavailable_reason(x: Tensor) -> str | None:
    """``None`` where ``torch.compile`` is supported; it may still fail to compile."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile is not supported on this Python version"
    return None
