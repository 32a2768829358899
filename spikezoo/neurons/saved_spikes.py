"""Spikes saved for backward, kept as bits.

A convolution, linear layer or product whose input is spikes saves that input for its
backward pass, in the input's float dtype: 32 bits (float32) for a value that is 0 or 1.
Inside :func:`compact_saved_spikes`, every saved tensor whose values are all exactly ``0.0``
or ``1.0`` (outputs of convolutions and the like aside, see below) is stored instead as one
bit per value (``uint8``, 8 spikes a byte) and expanded back, bit for bit, when backward asks
for it: the float tensor is freed as soon as the forward pass lets go of it, and the
gradients are exactly those computed without compaction.

What is compacted: float tensors (float16, bfloat16, float32, float64) laid out densely in
memory (any dimension order: channels-last works), that some operation produced
(``grad_fn`` set: parameters and inputs, alive anyway, are left alone), and that hold only
spikes. Everything else is saved unchanged. The same tensor saved by several operations
(SDSA's spikes feed three convolutions) is packed once.

Which tensors hold only spikes is known or checked. Known: spikezoo's neurons mark their
outputs (:func:`mark_spikes`), and layers whose output is spikes whenever their inputs are
(:class:`~spikezoo.layers.SpikingHadamard`, the max-pool of :mod:`spikezoo.layers.pooling`)
mark theirs. In the CPU's memory every other tensor is checked: it is packed if its bit
patterns are all those of ``+0.0`` or ``1.0`` (so ``-0.0`` and NaN, which a neuron with a NaN
membrane fires, are kept as they are), after a probe of values spread over it has rejected
most other tensors at once; marked spikes are only searched for NaN. float32 spikes are
checked and packed in one pass, and expanded in one, by a C kernel
(``spikezoo/native/spike_bits.c``, checked against NumPy once per process), which also
refuses a marked tensor holding any value but ``+0.0`` and ``1.0``; other dtypes, and every
dtype where the kernel cannot be built, go through NumPy (a few times faster there than
torch's kernels). Outputs of convolutions, matrix products and normalisations (and
reshapes of them) are not checked: of spikes they give other values (:data:`_WEIGHTED_SUMS`;
an all-zero one, from a silent layer, is saved as it is). On CUDA
nothing is read, because reading values on the host makes it wait for the device, once per
saved tensor: a saved view of marked spikes, unchanged since, is packed after one sum over it,
kept unread, so that a NaN spike makes the whole unpacked tensor NaN instead of 0; other
tensors are saved as they are (in the models, every saved tensor of spikes that the neurons
fired is marked).

Integer spikes (values ``n / norm``, ``n`` in ``0..255``: E-SpikeFormer's
:class:`~spikezoo.neurons.IntegerNeuron`) are not bits: inside the block the neuron also keeps
its counts ``n`` as ``uint8`` and marks its output (:func:`mark_integer_spikes`), and a saved
tensor that is that output, or a view of it, is kept as the same view of the counts and
restored by the neuron's own division ``n / norm``, bit for bit. (A copy, e.g. a ``reshape``
that cannot be a view, is a new tensor and is kept as it is.)

Tensors that are not spikes but can be computed again from tensors autograd keeps anyway are
kept as that computation (:class:`Recomputed`) where a registered recipe says how
(:func:`register_recipe`): :mod:`spikezoo.layers.residual_sums` recomputes residual sums of
BatchNorm outputs, which the neuron after the sum would otherwise keep, from the BatchNorm
inputs and the other summand, bit for bit.

spikezoo's models run their training forward pass inside this context unless told not to
(``model.set_spike_compaction(False)``); any other network can use it directly::

    with compact_saved_spikes():
        loss = criterion(net(x), y)
    loss.backward()

Differences from plain autograd: a compacted spike tensor is a snapshot, so modifying it in
place after the forward pass goes unnoticed instead of raising autograd's "modified by an
inplace operation" error (tensors saved unchanged still raise it). Inside
``torch.compile``'d code, in ``torch.utils.checkpoint`` regions (which save their own way) and
under ``torch.func`` transforms (which refuse saved-tensor hooks) nothing is compacted.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef

from spikezoo import _checks, native
from spikezoo._profiling import ProfiledCall

__all__ = [
    "PackedCounts",
    "PackedSpikes",
    "Recomputed",
    "compact_saved_spikes",
    "compacting",
    "mark_integer_spikes",
    "mark_spikes",
    "marked_as_spikes",
    "pack_spikes",
    "register_recipe",
    "reshaped_from",
]

_log = logging.getLogger(__name__)

#: The integer dtype each float dtype is compared in, bit pattern by bit pattern.
_BITS_DTYPES = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}

#: Values read, spread over the tensor (:func:`_probe_positions`), before the whole of it is
#: checked: most non-spike tensors fail here.
_PROBE = 64

#: Autograd nodes whose outputs are weighted sums or normalisations of their inputs
#: (convolutions, matrix products, normalisations). Of spikes they give other values, so their
#: outputs, and reshapes of those, are saved as they are without a look at their values: in a
#: CPU training step of ``sdt_v2_8_384`` such outputs were 198 of the 271 unmarked tensors the
#: check read, none of them spikes.
_WEIGHTED_SUMS = frozenset(
    {
        "ConvolutionBackward0",
        "AddmmBackward0",
        "MmBackward0",
        "BmmBackward0",
        "NativeBatchNormBackward0",
        "_TrainingBatchNormBackward",  # spikezoo.layers.batch_norm
        "CudnnBatchNormBackward0",
        "NativeLayerNormBackward0",
        "NativeGroupNormBackward0",
    }
)

#: The unsigned integer dtype of each bit-pattern width: NaN patterns, positive or negative,
#: are the ones above that of ``1.0`` among the patterns of marked spikes.
_UNSIGNED = {2: np.uint16, 4: np.uint32, 8: np.uint64}


@dataclass(frozen=True, eq=False)
class PackedSpikes:
    """A spike tensor stored as bits: :meth:`unpack` gives it back bit for bit.

    Attributes:
        bits: ``uint8 [ceil(numel / 8)]``, bit ``i`` of byte ``j`` is element ``8 j + i`` of
            the tensor in memory order.
        shape: the tensor's shape.
        order: its dimensions from the outermost to the innermost in memory.
        dtype: its dtype.
        poison: for marked spikes packed unread (on CUDA), a ``[]`` float32 tensor that is
            ``0.0``, or NaN if a spike was NaN (a NaN membrane fires NaN): added to every
            unpacked value, it makes the whole tensor NaN then rather than its NaN spikes 0.
    """

    bits: Tensor
    shape: torch.Size
    order: tuple[int, ...]
    dtype: torch.dtype
    poison: Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held: one per 8 spikes."""
        return self.bits.nbytes

    def unpack(self) -> Tensor:
        """The spikes as a tensor of :attr:`dtype`, shape and dimension order of the original."""
        if _on_host(self.bits):
            flat = _expand_on_host(self.bits, self.shape.numel(), self.dtype)
            if self.poison is not None:
                flat.add_(self.poison)
        else:
            flat = _expand_on_device(self.bits, self.dtype, self.poison)[: self.shape.numel()]
        in_memory_order = flat.view([self.shape[d] for d in self.order])
        return in_memory_order.permute(_inverse(self.order))


@dataclass(frozen=True, eq=False)
class PackedCounts:
    """Integer spikes ``n / norm`` kept as their counts ``n``: :meth:`unpack` gives them back
    bit for bit.

    Attributes:
        counts: ``uint8``, the counts of the saved tensor, shaped and strided like it (a view
            of the counts the neuron made next to its spikes).
        dtype: the saved tensor's dtype.
        norm: the divisor that made the values from the counts.
    """

    counts: Tensor
    dtype: torch.dtype
    norm: float

    @property
    def nbytes(self) -> int:
        """Bytes held: one per value of the neuron's output."""
        return self.counts.untyped_storage().nbytes()

    def unpack(self) -> Tensor:
        """The values, computed as the neuron computed them: ``n / norm`` in :attr:`dtype`."""
        return self.counts.to(self.dtype).div_(self.norm)


@dataclass(frozen=True, eq=False)
class Recomputed:
    """A saved tensor kept as the computation that gives it again, bit for bit, from tensors
    that autograd keeps for other operations anyway: it holds nothing of its own.

    Attributes:
        compute: returns the tensor; raises autograd's ``RuntimeError`` if a tensor it reads
            was modified in place since.
    """

    compute: Callable[[], Tensor]

    @property
    def nbytes(self) -> int:
        """Bytes held besides tensors kept anyway: none."""
        return 0

    def unpack(self) -> Tensor:
        """The saved tensor, computed again (without recording a graph, like every unpacked
        tensor of :class:`compact_saved_spikes`)."""
        with torch.no_grad():
            return self.compute()


#: Autograd nodes whose output holds their input's values in the same (row-major) order.
_RESHAPE_NODES = frozenset(
    {
        "ViewBackward0",
        "UnsafeViewBackward0",
        "ReshapeAliasBackward0",
        "UnsqueezeBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "SqueezeBackward2",
    }
)


def reshaped_from(node: torch.autograd.graph.Node | None, output_nr: int) -> tuple:
    """The autograd edge ``(node, output_nr)`` that the edge given reshapes: followed down
    through nodes that only reshape (view, reshape, squeeze, unsqueeze), so that the tensor of
    the edge returned holds the same values in the same row-major order."""
    while node is not None and type(node).__name__ in _RESHAPE_NODES:
        node, output_nr = node.next_functions[0]
    return node, output_nr


#: Kept tensors, looked up by autograd edge: what a recipe is given.
KeptTensor = Callable[[torch.autograd.graph.Node, int], Tensor | None]

#: The recipes :meth:`compact_saved_spikes.pack` tries, in order, on a saved tensor in the
#: CPU's memory that holds more than spikes (see :func:`register_recipe`).
_RECIPES: list[Callable[[Tensor, KeptTensor], Recomputed | None]] = []


def register_recipe(recipe: Callable[[Tensor, KeptTensor], Recomputed | None]) -> None:
    """Add a way to keep saved tensors as :class:`Recomputed` instead of as they are.

    ``recipe(x, kept)`` gets a saved tensor ``x`` that is not spikes, in the CPU's memory, and
    ``kept(node, output_nr)``, which returns the tensor saved unchanged so far in the running
    :class:`compact_saved_spikes` whose edge (through reshapes, :func:`reshaped_from`) is that
    one, unmodified since (else ``None``). It returns a :class:`Recomputed` that gives ``x``
    back bit for bit, reading only tensors autograd keeps anyway, or ``None``. A tensor kept as
    :class:`Recomputed` is not itself offered to later recipes through ``kept``, so recipes
    never chain.
    """
    if not callable(recipe):
        raise TypeError(f"recipe must be callable, got {type(recipe).__name__}")
    if recipe not in _RECIPES:
        _RECIPES.append(recipe)


def _memory_order(x: Tensor) -> tuple[tuple[int, ...], Tensor] | None:
    """``x``'s dimensions from the outermost to the innermost in memory, and ``x`` permuted to
    that order, flat and detached; ``None`` unless ``x`` is laid out densely."""
    x = x.detach()
    if x.is_contiguous():  # most saved tensors: no permutation to work out
        return tuple(range(x.dim())), x.view(-1)
    order = tuple(sorted(range(x.dim()), key=lambda d: -x.stride(d)))
    in_memory_order = x.permute(order)
    if not in_memory_order.is_contiguous():
        return None
    return order, in_memory_order.view(-1)


def pack_spikes(x: Tensor) -> PackedSpikes | None:
    """``x`` as :class:`PackedSpikes` if it holds only ``+0.0`` and ``1.0``, else ``None``.

    ``x`` must be a floating-point tensor laid out densely (any dimension order); anything
    else gives ``None`` too, and so does every tensor on a big-endian machine.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    return _pack(x, check=True)


def _pack(x: Tensor, check: bool) -> PackedSpikes | None:
    """:func:`pack_spikes`; without ``check``, ``x`` is marked spikes: ``0.0``, ``1.0`` or NaN
    (from a NaN membrane). In the CPU's memory marked spikes are searched for NaN, and stay
    unpacked if one is found. On a device only the full check reads values
    (a wait for the device); a marked tensor's sum is kept unread as
    :attr:`PackedSpikes.poison`.
    """
    bits_dtype = _BITS_DTYPES.get(x.dtype)
    if bits_dtype is None or x.numel() == 0 or x.is_meta or sys.byteorder != "little":
        return None
    found = _memory_order(x)
    if found is None:
        return None
    order, flat = found
    bits = flat.view(bits_dtype)
    one = _one_bits(x.dtype)
    if _on_host(x):
        packed = _pack_on_host(bits, one, check)
        return None if packed is None else PackedSpikes(packed, x.shape, order, x.dtype)
    ones = bits == one
    poison = None
    if check:
        # every nonzero bit pattern is that of 1.0: the rest are +0.0
        if torch.count_nonzero(bits) != torch.count_nonzero(ones):
            return None
    else:
        poison = flat.sum(dtype=torch.float32) * 0.0  # 0 for 0s and 1s in any number, or NaN
    return PackedSpikes(_pack_on_device(ones), x.shape, order, x.dtype, poison)


def _on_host(x: Tensor) -> bool:
    """Whether ``x`` is in the CPU's memory, where its values are read without waiting for a
    device, and spikes are packed and unpacked with NumPy: its comparisons, ``packbits`` and
    ``unpackbits`` ran 2 to 5 times faster than the same work in torch's CPU kernels (2 cores,
    2026-12-04: 29 against 150 us to pack 300k spikes). Reading a CUDA tensor's values makes
    the host wait for the device to finish everything queued before: on an H200 (2026-12-04)
    an ``sdt_8_768`` training step, batch 36 in bf16, waited so once per saved tensor, 176
    times, and took 309 ms against 176 ms without compaction."""
    return x.device.type == "cpu"


def _pack_on_host(bits: Tensor, one: int, check: bool) -> Tensor | None:
    """The bit patterns ``bits`` (a flat integer view of the values in the CPU's memory)
    packed 8 to a byte, lowest first, as a ``uint8`` tensor, if each is that of ``+0.0`` or
    ``1.0`` (``one``); else ``None``.

    With ``check``, :data:`_PROBE` values spread over the tensor are looked at first, which
    rejects most other tensors at once, then every value. Without it, ``bits`` are marked
    spikes (``+0.0``, ``1.0`` or NaN): NumPy takes one maximum to find a NaN, a pass less than
    the check. float32 values go through the C kernel where it runs
    (``spikezoo/native/spike_bits.c``), which checks every value in the pass that packs them:
    the same bytes, or ``None`` for the same tensors of spikes and NaN.
    """
    values = bits.numpy()
    if check and not set(values[_probe_positions(values.size, _PROBE)].tolist()) <= {0, one}:
        return None
    kernels = _bit_kernels() if bits.dtype == torch.int32 else None
    if kernels is not None:
        packed = torch.empty((bits.numel() + 7) // 8, dtype=torch.uint8)
        every_value_a_spike = kernels.pack(
            bits.data_ptr(), bits.numel(), packed.data_ptr(), native.threads(bits.numel())
        )
        return packed if every_value_a_spike else None
    ones = values == one
    if check:
        # every nonzero bit pattern is that of 1.0: the rest are +0.0
        if np.count_nonzero(values) != np.count_nonzero(ones):
            return None
    elif values.view(_UNSIGNED[values.itemsize]).max() > one:
        return None
    return torch.from_numpy(np.packbits(ones, bitorder="little"))


@functools.lru_cache(maxsize=512)
def _probe_positions(size: int, count: int) -> np.ndarray:
    """``count`` positions among ``size`` values, at steps of the golden ratio of the size
    (modulo it): spread evenly, and out of step with every row and channel. (A probe of evenly
    strided positions, or of the first values, read only the silent corners of a convolution
    of spikes: zeros, so its whole output was checked.)"""
    return (np.arange(count) * 0.6180339887498949 % 1.0 * size).astype(np.int64)


@functools.cache
def _one_bits(dtype: torch.dtype) -> int:
    """The bit pattern of ``1.0`` in ``dtype``, as an integer of its :data:`_BITS_DTYPES`."""
    return torch.ones((), dtype=dtype).view(_BITS_DTYPES[dtype]).item()


def _expand_on_host(bits: Tensor, count: int, dtype: torch.dtype) -> Tensor:
    """``uint8 [n]`` on the CPU -> ``dtype [count]``: the first ``count`` bits, each byte's lowest
    first (float32 by the C kernel where it runs, in one pass)."""
    kernels = _bit_kernels() if dtype == torch.float32 else None
    if kernels is not None:
        spikes = torch.empty(count, dtype=dtype)
        kernels.expand(bits.data_ptr(), count, spikes.data_ptr(), native.threads(count))
        return spikes
    return torch.from_numpy(np.unpackbits(bits.numpy(), count=count, bitorder="little")).to(dtype)


class _BitKernels(NamedTuple):
    pack: native.Kernel
    expand: native.Kernel


@functools.cache
def _bit_kernels() -> _BitKernels | None:
    """The C kernels that pack and expand float32 spikes, once they have given NumPy's bytes
    and values on a probe; else ``None`` (no C compiler, or they differ: NumPy runs)."""
    library = native.library("spike_bits")
    if library is None:
        return None
    pointer, size, flag = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    kernels = _BitKernels(
        native.kernel(library, "pack_spikes_f32", [pointer, size, pointer, flag], flag),
        native.kernel(library, "expand_spikes_f32", [pointer, size, pointer, flag]),
    )
    if _bits_reproduce_numpy(kernels):
        return kernels
    _log.warning("spikezoo: the C kernel that packs spikes differs from NumPy's; NumPy runs")
    return None


def _bits_reproduce_numpy(kernels: _BitKernels) -> bool:
    """Whether ``kernels`` pack spikes into NumPy's ``packbits`` bytes and expand them into
    its ``unpackbits`` values, and refuse a value that is not a spike, on a probe: sizes that
    are and are not multiples of 8, on one thread and on several."""
    generator = torch.Generator().manual_seed(0)
    for count in (1, 13, 3 * (1 << 15) + 5):
        spikes = (torch.rand(count, generator=generator) < 0.3).float()
        values = spikes.view(torch.int32)
        expected = np.packbits(spikes.numpy() == 1.0, bitorder="little")
        packed = torch.empty(expected.size, dtype=torch.uint8)
        for threads in (1, 2):
            if not kernels.pack(values.data_ptr(), count, packed.data_ptr(), threads):
                return False
            if not np.array_equal(packed.numpy(), expected):
                return False
            expanded = torch.full((count,), -1.0)
            kernels.expand(packed.data_ptr(), count, expanded.data_ptr(), threads)
            if not torch.equal(expanded.view(torch.int32), values):
                return False
            for other in (0.5, -0.0, float("nan")):
                changed = spikes.clone()
                changed[count // 2] = other
                bits = changed.view(torch.int32)
                if kernels.pack(bits.data_ptr(), count, packed.data_ptr(), threads):
                    return False
    return True


def _pack_on_device(ones: Tensor) -> Tensor:
    """``bool [N]`` -> ``uint8 [ceil(N / 8)]``, 8 to a byte, lowest first, on a device. (Each
    group of eight shifted into place and summed, two kernels instead of these seven, took 1.7
    against 0.92 ms for 173M bf16 spikes on an H200, 2026-12-04: the sum over groups of eight
    is slow there.)"""
    if ones.numel() % 8:
        ones = torch.nn.functional.pad(ones, (0, -ones.numel() % 8))
    # Eight bools (bytes 0 or 1) read as one little-endian int64 have their spikes at bits
    # 0, 8, ..., 56; three shifts gather them into the low byte.
    spread = ones.view(torch.int64)
    gathered = spread >> 7
    gathered |= spread
    gathered |= gathered >> 14
    gathered |= gathered >> 28
    return gathered.to(torch.uint8)


def _expand_on_device(bits: Tensor, dtype: torch.dtype, poison: Tensor | None) -> Tensor:
    """``uint8 [n]`` -> ``dtype [8 n]``: the bits of each byte, lowest first, by elementwise
    shifts, plus ``poison`` (a ``[]`` float tensor) where given, in the same kernel as the
    conversion: 1.05 against 1.52 ms for 173M bf16 spikes on an H200 (2026-12-04) when
    it was added in place afterwards. (A gather from a 256-row table took 181 ms of an
    ``sdt_8_768`` training step there, batch 36 in bf16, that ran in 193 ms without
    compaction.)"""
    spikes = (bits.unsqueeze(-1) >> _shifts(bits.device)) & 1
    # uint8 + a [] float tensor: the float's dtype (a zero-dimensional tensor of a higher
    # category decides the result's dtype)
    return (spikes.to(dtype) if poison is None else spikes + poison.to(dtype)).view(-1)


@functools.cache
def _shifts(device: torch.device) -> Tensor:
    return torch.arange(8, dtype=torch.uint8, device=device)


def _inverse(order: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sorted(range(len(order)), key=lambda d: order[d]))


#: The compactions whose blocks are running, innermost last: the neurons mark their integer
#: spikes in the innermost one.
_ACTIVE: list[compact_saved_spikes] = []


def compacting() -> bool:
    """Whether a :class:`compact_saved_spikes` block is running (a neuron then marks its
    integer spikes)."""
    return bool(_ACTIVE)


def _owns_storage(t: Tensor) -> bool:
    """Whether ``t`` fills its storage, so that every view of that storage views ``t``."""
    return t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.itemsize


def mark_spikes(spikes: Tensor) -> None:
    """Tell the innermost running :class:`compact_saved_spikes` that ``spikes`` holds only
    ``+0.0`` and ``1.0``, or NaN where a membrane was NaN (spikezoo's neurons mark their
    outputs); outside one, nothing happens. Saved views of ``spikes`` are then packed without
    checking their values one by one, on CUDA too (see :class:`PackedSpikes` for NaN).

    ``spikes`` that share their storage with other data, or whose dtype is not a float, are not
    marked (their views are then treated like any other tensor).
    """
    if (
        _ACTIVE
        and isinstance(spikes, Tensor)  # not a torch.fx proxy
        and spikes.dtype in _BITS_DTYPES
        and _owns_storage(spikes)
    ):
        _ACTIVE[-1]._spikes[StorageWeakRef(spikes.untyped_storage())] = (
            spikes.dtype,
            spikes._version,
        )


def marked_as_spikes(x: Tensor) -> bool:
    """Whether ``x`` views spikes that :func:`mark_spikes` marked in the innermost running
    :class:`compact_saved_spikes`, unchanged since. A layer whose output is spikes whenever its
    inputs are (a product, a max-pool) marks its output where this holds for them."""
    if not _ACTIVE or not isinstance(x, Tensor):  # e.g. a torch.fx proxy
        return False
    return _ACTIVE[-1]._spikes.get(StorageWeakRef(x.untyped_storage())) == (x.dtype, x._version)


def mark_integer_spikes(spikes: Tensor, counts: Tensor, norm: float) -> None:
    """Tell the innermost running :class:`compact_saved_spikes` that ``spikes`` is
    ``counts.to(spikes.dtype).div_(norm)``, ``counts`` a ``uint8`` tensor strided like
    ``spikes``; outside one, nothing happens. Saved views of ``spikes`` are then kept as the
    same views of ``counts``.

    Counts strided otherwise than ``spikes``, or ``spikes`` that view part of a larger storage,
    are not marked (their views are then saved as they are).

    Raises ``ValueError`` if ``counts`` is not ``uint8`` shaped like ``spikes``.
    """
    if counts.dtype != torch.uint8 or counts.shape != spikes.shape:
        raise ValueError(
            f"counts must be uint8 shaped like the spikes {tuple(spikes.shape)}, got "
            f"{counts.dtype} {tuple(counts.shape)}"
        )
    laid_out_alike = (
        counts.stride() == spikes.stride()
        and counts.storage_offset() == 0
        and _owns_storage(spikes)
    )
    if _ACTIVE and laid_out_alike and spikes.dtype in _BITS_DTYPES:
        _ACTIVE[-1]._integer[StorageWeakRef(spikes.untyped_storage())] = (
            spikes.dtype,
            spikes._version,
            counts,
            norm,
        )


@dataclass(frozen=True)
class _Unchanged:
    """A tensor saved as it is, with its version at save time (autograd's in-place check)."""

    tensor: Tensor
    version: int

    def unpack(self) -> Tensor:
        """The tensor, unless it was modified in place since (then autograd's error)."""
        if self.tensor._version != self.version:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an "
                f"inplace operation: a tensor of shape {tuple(self.tensor.shape)} is at version "
                f"{self.tensor._version}; expected version {self.version} instead"
            )
        return self.tensor


class compact_saved_spikes(torch.autograd.graph.saved_tensors_hooks):
    """Within the block, tensors saved for backward that hold only spikes are kept as bits,
    and, in the CPU's memory, tensors that a registered recipe can compute again from tensors
    kept anyway are kept as that computation (:func:`register_recipe`).

    A context manager (``with compact_saved_spikes(): ...``); see the module docstring for
    what is compacted. ``enabled=False`` makes it do nothing, so callers can pass a switch.

    Raises ``TypeError`` if ``enabled`` is not a bool.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = _checks.boolean("enabled", enabled)
        # (storage, offset, shape, strides, dtype, version) -> its packing, for tensors saved
        # twice. The weak reference keeps the storage's address from being reused while cached.
        self._packed: dict[tuple, PackedSpikes | PackedCounts | Recomputed | None] = {}
        # storage -> (dtype, version, counts, norm) of integer spikes (mark_integer_spikes)
        self._integer: dict[StorageWeakRef, tuple[torch.dtype, int, Tensor, float]] = {}
        # storage -> (dtype, version) of spikes (mark_spikes)
        self._spikes: dict[StorageWeakRef, tuple[torch.dtype, int]] = {}
        # (id of an autograd node, output number) -> the first tensor saved unchanged whose edge
        # (through reshapes) that is, weakly, with its version: the recipes' kept tensors. The
        # tensor's graph keeps the node, and so its id, alive while the reference is.
        self._kept: dict[tuple[int, int], tuple[weakref.ref, int]] = {}
        super().__init__(
            ProfiledCall("spikezoo::pack_saved_tensor", self.pack),
            ProfiledCall("spikezoo::unpack_saved_tensor", self.unpack),
        )

    def __enter__(self) -> compact_saved_spikes:
        # torch.func transforms refuse saved-tensor hooks: there, tensors are saved as they are
        self._active = self.enabled and torch._C._autograd._saved_tensors_hooks_is_enabled()
        if self._active:
            super().__enter__()
            _ACTIVE.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._active:
            super().__exit__(*exc_info)
            _ACTIVE.remove(self)
        self._packed.clear()
        self._integer.clear()
        self._spikes.clear()
        self._kept.clear()

    def pack(self, x: Tensor) -> PackedSpikes | PackedCounts | Recomputed | _Unchanged:
        """The pack hook: ``x`` as bits if it holds only spikes, as counts if it holds marked
        integer spikes, as a recipe's :class:`Recomputed` where one recomputes it, else ``x``
        as it is."""
        if x.grad_fn is None or x.dtype not in _BITS_DTYPES:
            return _Unchanged(x, x._version)
        key = (
            StorageWeakRef(x.untyped_storage()),
            x.storage_offset(),
            x.shape,
            x.stride(),
            x.dtype,
            x._version,
        )
        edge = None  # (node, output_nr) of x through reshapes, once looked up
        if key not in self._packed:
            integer = self._integer.get(key[0])
            if integer is not None and integer[:2] == (x.dtype, x._version):
                _, _, counts, norm = integer
                view = counts.as_strided(x.shape, x.stride(), x.storage_offset())
                self._packed[key] = PackedCounts(view, x.dtype, norm)
            elif self._spikes.get(key[0]) == (x.dtype, x._version):  # marked_as_spikes(x)
                self._packed[key] = _pack(x, check=False)
            elif not _on_host(x):
                self._packed[key] = None
            else:
                edge = reshaped_from(x.grad_fn, x.output_nr)
                # the values of a weighted sum's output are not read: they are not spikes
                spikes = None if type(edge[0]).__name__ in _WEIGHTED_SUMS else pack_spikes(x)
                self._packed[key] = spikes or self._recomputed(x)
        cached = self._packed[key]
        if cached is not None:
            return cached
        if _RECIPES and _on_host(x):  # where recipes run: they read the tensors kept unchanged
            node, output_nr = edge or reshaped_from(x.grad_fn, x.output_nr)
            self._kept.setdefault((id(node), output_nr), (weakref.ref(x), x._version))
        return _Unchanged(x, x._version)

    def _recomputed(self, x: Tensor) -> Recomputed | None:
        """``x`` as the first registered recipe that recomputes it gives it, or ``None``."""
        return next(filter(None, (recipe(x, self._kept_tensor) for recipe in _RECIPES)), None)

    def _kept_tensor(self, node: torch.autograd.graph.Node, output_nr: int) -> Tensor | None:
        """The tensor saved unchanged in this block whose edge is ``(node, output_nr)``, if
        it is alive and unmodified since."""
        reference, version = self._kept.get((id(node), output_nr), (None, None))
        tensor = None if reference is None else reference()
        return tensor if tensor is not None and tensor._version == version else None

    @staticmethod
    def unpack(saved: PackedSpikes | PackedCounts | Recomputed | _Unchanged) -> Tensor:
        """The unpack hook: the tensor :meth:`pack` was given, bit for bit."""
        return saved.unpack()
