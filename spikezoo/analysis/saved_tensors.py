"""What a forward pass keeps alive for backward, layer by layer.

:func:`measure_saved_tensors` runs one forward pass with autograd's saved-tensor hooks
installed and attributes every tensor saved for backward to the leaf module that was running
when it was saved. Each storage is counted once (the first module to save it gets it), so the
total is the activation memory backward holds on to, apart from parameters and the model's
inputs, which are alive anyway and are left out. A tensor is a spike tensor when every value
is exactly ``0.0`` or ``1.0``.

With compaction (:func:`spikezoo.neurons.compact_saved_spikes`, what spikezoo's models do in
training), the report also gives the bytes each tensor occupies once compacted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef

from spikezoo.analysis._batches import refuse_compiled
from spikezoo.analysis.report import PerLayerReport, Table
from spikezoo.layers.batch_norms import _FUSABLE_BATCH_NORMS
from spikezoo.neurons.saved_spikes import (
    PackedCounts,
    PackedSpikes,
    Recomputed,
    compact_saved_spikes,
)

__all__ = ["SavedTensor", "SavedTensorReport", "measure_saved_tensors"]

MiB = 2**20


@dataclass(frozen=True)
class SavedTensor:
    """One storage saved for backward.

    Attributes:
        module: qualified name of the leaf module that saved it first (``""``: the model's
            own code outside any submodule); a BatchNorm's saved tensors count under the
            module that calls it (``ConvBN``), so that it runs as in training.
        shape: shape of the saved tensor (the first view saved, for a storage saved as views).
        dtype: its dtype as a string (``"float32"``).
        nbytes: bytes of its storage.
        spikes: whether every value is ``0.0`` or ``1.0``.
        kept_nbytes: bytes backward keeps: ``nbytes``, or the packed size where compaction
            packed it.
    """

    module: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    spikes: bool
    kept_nbytes: int


class SavedTensorReport(PerLayerReport):
    """The tensors one forward pass saved for backward, with per-module and per-block sums.

    Attributes:
        tensors: one :class:`SavedTensor` per distinct storage, in the order saved.
        compacted: whether the pass ran with spike compaction.
    """

    float_format = ".2f"

    def __init__(self, tensors: list[SavedTensor], compacted: bool) -> None:
        self.tensors = tensors
        self.compacted = compacted

    @property
    def nbytes(self) -> int:
        """Bytes of every saved storage, as computed (before compaction)."""
        return sum(t.nbytes for t in self.tensors)

    @property
    def kept_nbytes(self) -> int:
        """Bytes backward keeps (after compaction, where it ran)."""
        return sum(t.kept_nbytes for t in self.tensors)

    @property
    def spike_nbytes(self) -> int:
        """Bytes of the saved spike tensors, as computed."""
        return sum(t.nbytes for t in self.tensors if t.spikes)

    def per_layer(self) -> Table:
        """One row per leaf module that saved something, in the order they ran."""
        return self._table(lambda name: name)

    def per_block(self, depth: int = 2) -> Table:
        """Rows summed over modules sharing the first ``depth`` parts of their name.

        ``depth=2`` gives ``blocks.0``, ``patch_embed.proj`` or ``stages.1``; ``depth=1``
        ``blocks``, ``patch_embed``. Raises ``ValueError`` for ``depth < 1``.
        """
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        return self._table(lambda name: ".".join(name.split(".")[:depth]))

    def _table(self, group_of) -> Table:
        groups: dict[str, list[SavedTensor]] = {}
        for saved in self.tensors:
            groups.setdefault(group_of(saved.module), []).append(saved)
        rows = []
        for name, members in groups.items():
            dtypes = sorted({t.dtype for t in members})
            rows.append(
                [
                    name or "(model)",
                    len(members),
                    sum(t.nbytes for t in members) / MiB,
                    sum(t.nbytes for t in members if t.spikes) / MiB,
                    sum(t.kept_nbytes for t in members) / MiB,
                    ", ".join(dtypes),
                ]
            )
        total = [
            "total",
            len(self.tensors),
            self.nbytes / MiB,
            self.spike_nbytes / MiB,
            self.kept_nbytes / MiB,
            ", ".join(sorted({t.dtype for t in self.tensors})),
        ]
        columns = ["module", "tensors", "saved MiB", "spikes MiB", "kept MiB", "dtypes"]
        return Table(columns, [*rows, total])


def measure_saved_tensors(
    model: nn.Module, *inputs: Tensor, compact: bool = False
) -> SavedTensorReport:
    """Run ``model(*inputs)`` once and report what it saved for backward.

    The pass runs in the model's current mode (call ``model.train()`` first to see a training
    step) with gradients enabled; buffers it updates (BatchNorm statistics, DSSA firing rates)
    are restored afterwards, so the model is left as it was. ``compact=True`` runs it inside
    :func:`spikezoo.neurons.compact_saved_spikes` and reports the packed sizes; spikezoo's
    models are measured with their own compaction switched off, so that ``compact`` alone
    decides.

    Raises ``TypeError`` if ``model`` is not an ``nn.Module``, is ``torch.compile``'d (pass
    ``model._orig_mod``) or an input is not a tensor.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    refuse_compiled(model, "measure_saved_tensors")
    for i, x in enumerate(inputs):
        if not isinstance(x, Tensor):
            raise TypeError(f"inputs[{i}] must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(compact, bool):
        raise TypeError(f"compact must be True or False, got {type(compact).__name__}")
    recorder = _Recorder(model, inputs, compact)
    with (
        _restored_buffers(model),
        _own_compaction_off(model),
        recorder.hooks(),
        torch.enable_grad(),
        # running, so that integer neurons mark their spikes in it; the recorder's hooks on top
        recorder.compactor or contextlib.nullcontext(),
        torch.autograd.graph.saved_tensors_hooks(recorder.pack, recorder.unpack),
    ):
        model(*inputs)
    return SavedTensorReport(recorder.tensors, compact)


class _Recorder:
    """Saved-tensor hooks that record each storage once, with the module running at the time."""

    def __init__(self, model: nn.Module, inputs: tuple[Tensor, ...], compact: bool) -> None:
        self.model = model
        self.compactor = compact_saved_spikes() if compact else None
        self.stack: list[str] = []
        self.tensors: list[SavedTensor] = []
        self.seen: set[StorageWeakRef] = set()
        self.alive_anyway = {
            StorageWeakRef(t.untyped_storage())
            for t in (*model.parameters(), *model.buffers(), *inputs)
        }

    @contextlib.contextmanager
    def hooks(self) -> Iterator[None]:
        handles = []
        for name, module in self.model.named_modules():
            # a hooked BatchNorm runs as a module call in a fused BatchNorm + neuron pair, which
            # then keeps no batch statistics, and a residual sum of its output is kept instead
            # of recomputed: what it saves is counted under the module around it instead
            if type(module) in _FUSABLE_BATCH_NORMS:
                continue
            handles.append(module.register_forward_pre_hook(self._enter(name)))
            handles.append(module.register_forward_hook(self._leave, always_call=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _enter(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            self.stack.append(name)

        return hook

    def _leave(self, module: nn.Module, args: tuple, output: object) -> None:
        self.stack.pop()

    def pack(self, x: Tensor) -> object:
        kept = x if self.compactor is None else self.compactor.pack(x)
        storage = StorageWeakRef(x.untyped_storage())
        if storage in self.alive_anyway:
            return kept
        if storage not in self.seen:
            self.seen.add(storage)
            packed = kept if isinstance(kept, (PackedSpikes, PackedCounts, Recomputed)) else None
            self.tensors.append(
                SavedTensor(
                    module=self.stack[-1] if self.stack else "",
                    shape=tuple(x.shape),
                    dtype=str(x.dtype).removeprefix("torch."),
                    nbytes=x.untyped_storage().nbytes(),
                    spikes=_all_spikes(x),
                    kept_nbytes=x.untyped_storage().nbytes() if packed is None else packed.nbytes,
                )
            )
        return kept

    def unpack(self, saved: object) -> Tensor:
        return saved if self.compactor is None else self.compactor.unpack(saved)


def _all_spikes(x: Tensor) -> bool:
    if not x.is_floating_point() or x.numel() == 0:
        return False
    return bool(((x == 0) | (x == 1)).all())


@contextlib.contextmanager
def _restored_buffers(model: nn.Module) -> Iterator[None]:
    saved = [b.clone() for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(model.buffers(), saved, strict=True):
                buffer.copy_(value)


@contextlib.contextmanager
def _own_compaction_off(model: nn.Module) -> Iterator[None]:
    switch = getattr(model, "set_spike_compaction", None)
    if switch is None:
        yield
        return
    before = model.spike_compaction
    switch(False)
    try:
        yield
    finally:
        switch(before)
