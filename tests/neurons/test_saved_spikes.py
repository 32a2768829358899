"""Spikes saved for backward as bits: exact round trips, what is left alone, bad input."""

import collections

import pytest
import torch
import torch.nn.functional as F

from spikezoo.layers import batch_norm, batch_norms
from spikezoo.neurons import (
    IntegerNeuron,
    MultiStepLIF,
    PackedCounts,
    PackedSpikes,
    compact_saved_spikes,
    mark_integer_spikes,
    mark_spikes,
    marked_as_spikes,
    pack_spikes,
    saved_spikes,
)
from spikezoo.neurons.integer import integer_spike

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def spikes(*shape, dtype=torch.float32):
    return (torch.rand(shape) < 0.3).to(dtype)


@pytest.fixture(params=["c kernel", "numpy"])
def host_bits(request, monkeypatch):
    """Which code packs and expands float32 spikes in the CPU's memory: the C kernel
    (``spikezoo/native/spike_bits.c``, built and probed) or NumPy."""
    if request.param == "numpy":
        monkeypatch.setattr(saved_spikes, "_bit_kernels", lambda: None)
    else:
        assert saved_spikes._bit_kernels() is not None
    return request.param


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(4, 2, 8, 5, 5), (3, 7), (1,), (13,), ()])
def test_round_trip_is_bitwise_and_an_eighth_of_a_byte_per_spike(dtype, shape, host_bits):
    x = spikes(*shape, dtype=dtype)
    packed = pack_spikes(x)
    assert isinstance(packed, PackedSpikes)
    assert packed.nbytes == -(-x.numel() // 8)
    back = packed.unpack()
    assert back.dtype == dtype and back.shape == x.shape
    assert torch.equal(back.reshape(-1).view(torch.uint8), x.reshape(-1).view(torch.uint8))


def test_dimension_order_survives_the_round_trip():
    x = spikes(4, 8, 6, 6).to(memory_format=torch.channels_last)
    transposed = spikes(5, 9).t()
    for tensor in (x, transposed):
        back = pack_spikes(tensor).unpack()
        assert back.stride() == tensor.stride()
        assert torch.equal(back, tensor)


@pytest.mark.parametrize(
    "values",
    [[0.0, -0.0, 1.0], [1.0, float("nan")], [0.0, 0.5], [1.0, 2.0], [0.0, float("inf")]],
    ids=["negative zero", "nan", "half", "two", "inf"],
)
@pytest.mark.parametrize("probe", [True, False], ids=["with the probe", "full check alone"])
def test_anything_but_plus_zero_and_one_is_not_packed(values, probe, monkeypatch, host_bits):
    # Past the probe, the whole-tensor check has to catch the values; on CUDA (no probe: see
    # pack_spikes) it has to catch them anywhere.
    if not probe:
        monkeypatch.setattr(saved_spikes, "_PROBE", 0)
    for x in (torch.cat([torch.ones(100), torch.tensor(values)]), torch.tensor(values)):
        assert pack_spikes(x) is None


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("on_host", [True, False], ids=["host", "shifts"])
def test_each_expansion_gives_every_bytes_bits_lowest_first(on_host, dtype, host_bits):
    # the C kernel or NumPy's unpackbits in the CPU's memory, elementwise shifts on a device
    every_byte = torch.arange(256, dtype=torch.uint8)
    bits = [(byte >> i) & 1 for byte in range(256) for i in range(8)]
    if on_host:
        expanded = saved_spikes._expand_on_host(every_byte, 2045, dtype)
        assert torch.equal(expanded, torch.tensor(bits[:2045], dtype=dtype))
        return
    # bit patterns: +0.0 and 1.0, whether a zero poison is added or not
    as_bits = saved_spikes._BITS_DTYPES[dtype]
    expected = torch.tensor(bits, dtype=dtype).view(as_bits)
    for poison in (None, torch.zeros((), dtype=dtype), torch.zeros(())):
        expanded = saved_spikes._expand_on_device(every_byte, dtype, poison)
        assert expanded.dtype == dtype and torch.equal(expanded.view(as_bits), expected)
    poisoned = saved_spikes._expand_on_device(every_byte, dtype, torch.tensor(float("nan")))
    assert poisoned.dtype == dtype and poisoned.isnan().all()


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("on_host", [True, False], ids=["host", "torch"])
def test_both_packings_give_the_same_bytes(on_host, dtype, monkeypatch, host_bits):
    monkeypatch.setattr(saved_spikes, "_on_host", lambda x: on_host)
    x = spikes(3, 7, 5, dtype=dtype)  # 105 spikes: the last byte is padded with zeros
    ones = [int(v) for v in x.reshape(-1).tolist()] + [0] * 7
    expected = [sum(bit << i for i, bit in enumerate(ones[j : j + 8])) for j in range(0, 105, 8)]
    for check in (True, False):
        packed = saved_spikes._pack(x, check)
        assert packed.bits.tolist() == expected
        assert torch.equal(packed.unpack(), x)


@pytest.mark.parametrize("check", [True, False], ids=["checked", "marked"])
def test_the_c_kernel_packs_as_numpy_on_every_thread(check, monkeypatch):
    # 300,001 values: blocks of bits for each of the threads, and a last partial byte
    x = spikes(300_001)
    bits = x.view(torch.int32)
    one = saved_spikes._one_bits(torch.float32)
    by_kernel = saved_spikes._pack_on_host(bits, one, check)
    monkeypatch.setattr(saved_spikes, "_bit_kernels", lambda: None)
    by_numpy = saved_spikes._pack_on_host(bits, one, check)
    assert torch.equal(by_kernel, by_numpy)
    monkeypatch.undo()
    assert torch.equal(saved_spikes._expand_on_host(by_kernel, x.numel(), torch.float32), x)
    # a NaN spike, or any other value, past the probe and far from the start: not packed
    for other in (float("nan"), -0.0, 0.5):
        changed = x.clone()
        changed[-3] = other
        assert saved_spikes._pack_on_host(changed.view(torch.int32), one, check) is None


@pytest.mark.parametrize("failure", ["no compiler", "differs"])
def test_without_the_c_kernel_numpy_packs(failure, monkeypatch, caplog):
    if failure == "no compiler":
        monkeypatch.setattr(saved_spikes.native, "library", lambda name: None)
    else:
        monkeypatch.setattr(saved_spikes, "_bits_reproduce_numpy", lambda kernels: False)
    saved_spikes._bit_kernels.cache_clear()
    try:
        with caplog.at_level("WARNING", logger=saved_spikes.__name__):
            assert saved_spikes._bit_kernels() is None
        warned = "differs from NumPy's; NumPy runs" in caplog.text
        assert warned == (failure == "differs")  # no compiler: native says so once, at INFO
        x = spikes(1000)
        assert torch.equal(pack_spikes(x).unpack(), x)
    finally:
        monkeypatch.undo()
        saved_spikes._bit_kernels.cache_clear()
    assert saved_spikes._bit_kernels() is not None  # probed again: reproduces NumPy


def test_integers_bools_and_strided_views_are_not_packed():
    assert pack_spikes(torch.ones(8, dtype=torch.int64)) is None
    assert pack_spikes(torch.ones(8, dtype=torch.bool)) is None
    assert pack_spikes(spikes(8, 8)[:, ::2]) is None
    assert pack_spikes(torch.empty(0)) is None


def test_pack_spikes_refuses_a_non_tensor():
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor, got list"):
        pack_spikes([0.0, 1.0])


def lif_then_linear(x, weight):
    return (MultiStepLIF(backend="torch")(x) @ weight).square().sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_are_bitwise_those_of_plain_autograd(dtype):
    x = (torch.randn(4, 64, 32, dtype=dtype) * 2).requires_grad_()
    weight = torch.randn(32, 16, dtype=dtype, requires_grad=True)
    plain = torch.autograd.grad(lif_then_linear(x, weight), (x, weight))
    with compact_saved_spikes():
        loss = lif_then_linear(x, weight)
    compacted = torch.autograd.grad(loss, (x, weight))
    for a, b in zip(plain, compacted, strict=True):
        assert torch.equal(a, b)


def lif_spikes(*shape):
    return MultiStepLIF(backend="torch")(torch.randn(*shape, requires_grad=True) * 2)


@pytest.fixture
def checks(monkeypatch):
    """The ``check`` argument of every packing, in order."""
    seen = []
    real = saved_spikes._pack

    def spy(x, check):
        seen.append(check)
        return real(x, check)

    monkeypatch.setattr(saved_spikes, "_pack", spy)
    return seen


def test_a_neurons_spikes_are_marked_and_packed_without_reading_them(checks):
    with compact_saved_spikes() as compaction:
        s = lif_spikes(4, 64)
        assert marked_as_spikes(s) and marked_as_spikes(s.view(256)[8:])
        packed = compaction.pack(s.view(256))
    assert checks == [False]
    assert isinstance(packed, PackedSpikes) and torch.equal(packed.unpack(), s.view(256))
    assert not marked_as_spikes(s)  # the marks end with their block


def test_changed_spikes_and_part_of_a_storage_are_not_marked(checks):
    with compact_saved_spikes() as compaction:
        changed = lif_spikes(4, 64)
        changed.mul_(1.0)
        whole = spikes(2, 64).requires_grad_() * 1.0
        mark_spikes(whole[:1])  # shares its storage with the other row
        assert not marked_as_spikes(changed) and not marked_as_spikes(whole)
        # on the CPU they are still packed, once their values are checked
        assert isinstance(compaction.pack(changed), PackedSpikes)
        assert isinstance(compaction.pack(whole), PackedSpikes)
    assert checks == [True, True]


def test_a_view_of_marked_spikes_in_another_dtype_is_not_marked():
    with compact_saved_spikes():
        s = lif_spikes(4, 64).bfloat16()
        mark_spikes(s)
        assert marked_as_spikes(s)
        assert not marked_as_spikes(s.view(torch.float16))  # 1.0's bits: no float16 spike


def test_where_values_cost_a_wait_only_marked_spikes_are_packed(checks, monkeypatch):
    # a device's policy (not saved_spikes._on_host), on the CPU
    monkeypatch.setattr(saved_spikes, "_on_host", lambda x: False)
    with compact_saved_spikes() as compaction:
        marked = lif_spikes(4, 64)
        unmarked = spikes(4, 64).requires_grad_() * 1.0
        assert isinstance(compaction.pack(marked), PackedSpikes)
        assert not isinstance(compaction.pack(unmarked), PackedSpikes)
    assert checks == [False]


def nan_spikes():
    x = torch.randn(4, 64) * 2
    x[1, 5] = float("nan")  # a NaN membrane fires NaN from that step on
    spikes = MultiStepLIF(backend="torch")(x.requires_grad_())
    assert spikes.isnan().any() and not spikes.isnan().all()
    return spikes


def test_marked_spikes_with_a_nan_stay_unpacked_on_the_cpu():
    with compact_saved_spikes() as compaction:
        spikes = nan_spikes()
        assert marked_as_spikes(spikes)
        assert not isinstance(compaction.pack(spikes), PackedSpikes)
        clean = lif_spikes(4, 64)
        assert isinstance(compaction.pack(clean), PackedSpikes)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["positive nan", "negative nan"])
def test_a_marked_tensor_with_a_nan_of_either_sign_is_not_packed(dtype, sign):
    # marked spikes are searched for NaN by one maximum of their unsigned bit patterns
    with compact_saved_spikes() as compaction:
        spikes = lif_spikes(4, 64).to(dtype)
        as_bits = spikes.detach().view(saved_spikes._BITS_DTYPES[dtype])
        as_bits[2, 9] = torch.tensor(float("nan"), dtype=dtype).view(as_bits.dtype)
        if sign < 0:  # the sign bit set (a conversion to bfloat16 drops the sign of a NaN)
            as_bits[2, 9] |= torch.iinfo(as_bits.dtype).min
        mark_spikes(spikes)
        assert torch.isnan(spikes).sum() == 1 and torch.signbit(spikes[2, 9]) == (sign < 0)
        assert not isinstance(compaction.pack(spikes * 1), PackedSpikes)  # not marked: checked
        assert not isinstance(compaction.pack(spikes), PackedSpikes)
        spikes[2, 9] = 1.0
        mark_spikes(spikes)
        assert isinstance(compaction.pack(spikes), PackedSpikes)


def test_the_probe_rejects_a_convolution_of_spikes_whose_corners_are_silent(monkeypatch):
    # Every channel's first rows are zeros (silent inputs there); a probe of evenly strided
    # positions or of the first values reads only those and passes the tensor on to the
    # whole-tensor check, which the probe is there to spare.
    x = torch.rand(1, 768, 28, 28) + 0.5
    x[:, :, :4] = 0.0
    full_checks = []
    count_nonzero = saved_spikes.np.count_nonzero
    monkeypatch.setattr(
        saved_spikes.np,
        "count_nonzero",
        lambda a: full_checks.append(a.size) or count_nonzero(a),
    )
    assert pack_spikes(x) is None
    assert full_checks == []
    positions = saved_spikes._probe_positions(x.numel(), saved_spikes._PROBE)
    assert len(set((positions % (28 * 28) // 28).tolist())) > 16  # rows of every kind
    assert positions.min() >= 0 and positions.max() < x.numel()


def test_outputs_of_weighted_sums_are_saved_without_reading_their_values(monkeypatch):
    # A convolution, matrix product or BatchNorm of spikes holds other values: its output is
    # not checked, even where it happens to be zeros and ones (a silent layer's). The same
    # values made elementwise are checked.
    checked = []
    monkeypatch.setattr(saved_spikes, "pack_spikes", lambda x: checked.append(x) or None)
    silent = torch.zeros(1, 4, 6, 6)
    weight = torch.randn(3, 4, 3, 3, requires_grad=True)
    matrix = torch.eye(36, requires_grad=True)
    bn = torch.nn.BatchNorm2d(3)
    monkeypatch.setattr(batch_norms, "MIN_VALUES", 0)  # spikezoo's BatchNorm at this size too
    with compact_saved_spikes() as compaction:
        convolved = F.conv2d(silent, weight, padding=1)
        products = (convolved.flatten(2) @ matrix).unflatten(2, (6, 6))
        ours = batch_norm(bn, convolved)
        assert type(ours.grad_fn).__name__ == "_TrainingBatchNormBackward"
        for made in (convolved, convolved.flatten(2), products, bn(convolved), ours):
            assert isinstance(compaction.pack(made), saved_spikes._Unchanged)
        assert checked == []
        elementwise = convolved * 1.0
        compaction.pack(elementwise)
        assert checked == [elementwise]


def test_where_values_cost_a_wait_a_nan_spike_makes_the_whole_unpacked_tensor_nan(monkeypatch):
    # CUDA's policy, on the CPU: the sum that finds a NaN is not read, but added on unpacking
    monkeypatch.setattr(saved_spikes, "_on_host", lambda x: False)
    with compact_saved_spikes() as compaction:
        spikes, clean = nan_spikes(), lif_spikes(4, 64)
        poisoned, packed = compaction.pack(spikes), compaction.pack(clean)
    assert poisoned.unpack().isnan().all()
    assert torch.equal(packed.unpack().view(torch.int32), clean.view(torch.int32))


def test_gradients_with_a_nan_membrane_are_those_of_plain_autograd():
    x = torch.randn(4, 64, 32) * 2
    x[1, 3, 7] = float("nan")
    x.requires_grad_()
    weight = torch.randn(32, 16, requires_grad=True)
    plain = torch.autograd.grad(lif_then_linear(x, weight), (x, weight))
    with compact_saved_spikes():
        loss = lif_then_linear(x, weight)
    compacted = torch.autograd.grad(loss, (x, weight))
    for a, b in zip(plain, compacted, strict=True):
        assert a.isnan().any()
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_a_tensor_saved_twice_is_packed_once():
    s = MultiStepLIF(backend="torch")(torch.randn(4, 64, requires_grad=True))
    with compact_saved_spikes() as compaction:
        packed = [compaction.pack(s.view(4, 64)) for _ in range(3)]
        other_view = compaction.pack(s.view(256))
    assert isinstance(packed[0], PackedSpikes) and packed[0] is packed[1] is packed[2]
    assert isinstance(other_view, PackedSpikes) and other_view is not packed[0]


def test_unchanged_tensors_keep_autograds_inplace_check():
    x = torch.randn(16, requires_grad=True)
    with compact_saved_spikes():
        y = x * 1.5
        z = y * y
    y.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()


def test_parameters_and_inputs_are_never_copied():
    weight = torch.ones(8, 8, requires_grad=True)  # all ones: spikes, but alive anyway
    inputs = spikes(4, 8)
    with compact_saved_spikes() as compaction:
        assert not isinstance(compaction.pack(weight), PackedSpikes)
        assert not isinstance(compaction.pack(inputs), PackedSpikes)


def test_disabled_compaction_leaves_saving_to_the_hooks_outside():
    s = MultiStepLIF(backend="torch")(torch.randn(4, 64, requires_grad=True))
    seen = []

    def record(t):
        seen.append(t)
        return t

    with (
        torch.autograd.graph.saved_tensors_hooks(record, lambda t: t),
        compact_saved_spikes(enabled=False),
    ):
        s @ torch.randn(64, 8, requires_grad=True)
    assert any(t.dtype == torch.float32 and torch.equal(t, s) for t in seen)


def test_enabled_must_be_a_bool():
    with pytest.raises(TypeError, match="enabled must be True or False, got str 'yes'"):
        compact_saved_spikes("yes")


def test_torch_func_transforms_run_without_compaction():
    x = torch.randn(64, 32, dtype=torch.float64)

    def loss(weight):
        with compact_saved_spikes():
            spikes = torch.relu(torch.sign(x * weight.sum()))  # 0 and 1, with a grad_fn
            return (spikes @ weight).square().sum()

    weight = torch.randn(32, 8, dtype=torch.float64, requires_grad=True)
    (expected,) = torch.autograd.grad(loss(weight), weight)
    assert torch.equal(torch.func.grad(loss)(weight.detach()), expected)


# --- integer spikes (E-SpikeFormer): marked by the neuron, kept as one byte per value ---------


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.detach().contiguous().flatten().view(torch.uint8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(
    ("levels", "norm"), [(4, None), (8, None), (4, 1.0), (4, 3.0), (255, None)]
)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_integer_spikes_round_trip_bitwise_in_one_byte_each(dtype, levels, norm, layout):
    torch.manual_seed(0)
    x = (torch.randn(2, 5, 6, 7) * levels).to(dtype).requires_grad_()
    with compact_saved_spikes() as compaction:
        spikes = IntegerNeuron(levels, norm)(x)
        # views of the spikes, as a convolution or a matmul saves them (a copy is not marked)
        view = spikes.permute(0, 2, 3, 1) if layout == "channels_last" else spikes
        saved = [view, spikes.flatten(1)]
        packed = [compaction.pack(t) for t in saved]
    assert len(set(spikes.detach().flatten().tolist())) > 3  # several counts, not bits
    for original, kept in zip(saved, packed, strict=True):
        assert isinstance(kept, PackedCounts) and kept.counts.dtype == torch.uint8
        assert kept.nbytes == original.numel()
        restored = compact_saved_spikes.unpack(kept)
        assert restored.shape == original.shape and restored.dtype == dtype
        assert torch.equal(_bits(restored), _bits(original))


def test_unmarked_or_modified_integer_spikes_are_saved_unchanged():
    x = torch.tensor([0.3, 1.6, 2.5, 9.0]).requires_grad_()
    with compact_saved_spikes() as compaction:
        same_values = x.clamp(0, 4).round() / 4  # not a neuron's output: nothing marked
        assert torch.equal(same_values, integer_spike(x, 4, 4.0))
        assert not isinstance(compaction.pack(same_values), PackedCounts)
        spikes = IntegerNeuron(4)(x)
        spikes.mul_(1)  # changed after the neuron marked it
        assert not isinstance(compaction.pack(spikes), PackedCounts)
    spikes = IntegerNeuron(4)(x)  # outside a compaction: nothing to mark in
    with compact_saved_spikes() as compaction:
        assert not isinstance(compaction.pack(spikes), PackedCounts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_integer_spike_gradients_are_bitwise_those_of_plain_autograd(dtype):
    torch.manual_seed(0)
    neuron = IntegerNeuron(4)
    x = (torch.randn(2, 4, 6, 6, dtype=dtype) * 4).requires_grad_()
    weight = torch.randn(3, 4, 3, 3, dtype=dtype, requires_grad=True)
    other = torch.randn(2, 36, 6, dtype=dtype, requires_grad=True)

    def grads(compact: bool) -> tuple:
        with compact_saved_spikes(enabled=compact):
            spikes = neuron(x)
            out = torch.nn.functional.conv2d(spikes, weight).sum()
            out = out + (spikes.flatten(1).unflatten(1, (6, 24))[..., :6] @ other[:, :6]).sum()
        return torch.autograd.grad(out, [x, weight, other])

    for got, expected in zip(grads(True), grads(False), strict=True):
        assert torch.equal(got, expected)


def test_counts_must_be_bytes_shaped_like_the_spikes():
    spikes = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"counts must be uint8 shaped like the spikes \(2, 3\)"):
        mark_integer_spikes(spikes, torch.zeros(2, 3), 4.0)
    with pytest.raises(ValueError, match=r"got torch.uint8 \(3, 2\)"):
        mark_integer_spikes(spikes, torch.zeros(3, 2, dtype=torch.uint8), 4.0)


def test_a_profiler_names_the_packing_and_unpacking_of_saved_tensors():
    from torch.profiler import ProfilerActivity, profile

    x = (torch.randn(4, 64, 32) * 2).requires_grad_()
    weight = torch.randn(32, 16, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        with compact_saved_spikes():
            loss = lif_then_linear(x, weight)
        profiled = torch.autograd.grad(loss, x)[0]
    counts = collections.Counter(event.name for event in trace.events())
    # the spikes that the matmul saves, among others: packed in forward, unpacked in backward
    assert counts["spikezoo::pack_saved_tensor"] >= 1
    assert counts["spikezoo::unpack_saved_tensor"] >= 1
    with compact_saved_spikes():  # without a profiler: the same gradient
        loss = lif_then_linear(x, weight)
    assert torch.equal(torch.autograd.grad(loss, x)[0], profiled)
