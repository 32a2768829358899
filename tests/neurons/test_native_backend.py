"""Backend ``"native"``: the C loops against the eager reference loops, its probe and refusals."""

from __future__ import annotations

import copy
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F

from spikezoo.layers import set_bn_neuron_fusion
from spikezoo.neurons import MultiStepLIF, backends, dynamics, multistep_lif, set_backend
from spikezoo.neurons import surrogate as surrogate_module
from spikezoo.neurons.backends import native
from spikezoo.neurons.functional import (
    multistep_input_gradient,
    neuron_config,
    normalised_multistep_neuron,
    reads_normalisation,
)
from tests.models import families

#: Every combination the C source specialises: leak and its form, reset, detach, surrogate.
CONFIGS = [
    neuron_config(
        leaky=leaky,
        decay_input=decay_input,
        v_threshold=threshold,
        v_reset=v_reset,
        surrogate=surrogate,
        alpha=None,
        detach_reset=detach,
    )
    for (leaky, decay_input), (threshold, v_reset), surrogate, detach in itertools.product(
        [(True, True), (True, False), (False, True)],
        # 0.3 and -0.2 are not floats: the C loops must round them as PyTorch does
        [(1.0, 0.0), (0.3, -0.2), (0.5, None)],
        ["sigmoid", "atan"],
        [True, False],
    )
]

#: (T, N): one step; all steps in one pass, tile after tile (with a partial tile); two passes
#: of steps (16 + 1) over two spans of neurons (7,680 + 320).
SHAPES = [(1, 300), (4, 1000), (6, 8300), (17, 8000)]


def _inputs(steps: int, neurons: int, seed: int) -> dict[str, torch.Tensor]:
    """Input around the threshold with exact hits, NaN and infinities, and the other tensors
    of a call, float32."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, neurons, generator=gen) * 1.5 + 0.4
    x[0, :6] = torch.tensor([1.0, 0.3, float("nan"), float("inf"), -float("inf"), 0.5])
    return dict(
        x=x,
        v_init=torch.randn(neurons, generator=gen) * 0.3,
        grad_spikes=torch.randn(steps, neurons, generator=gen),
        grad_v=torch.randn(neurons, generator=gen),
        k=torch.tensor(0.3),
    )


def _assert_same(actual, expected, **tolerance):
    tolerance = tolerance or dict(rtol=0, atol=0)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, equal_nan=True, **tolerance)


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("steps,neurons", SHAPES, ids=str)
def test_forward_gives_the_eager_loops_spikes_and_membranes_bit_for_bit(cfg, steps, neurons):
    t = _inputs(steps, neurons, seed=steps)
    expected = dynamics.forward_sequence(t["x"], t["v_init"], t["k"], cfg, True)
    _assert_same(native.forward(t["x"], t["v_init"], t["k"], cfg, True), expected)
    # one initial membrane for all, and without the tensors nobody asked for
    spikes, charged, v_final = native.forward(t["x"], torch.tensor(0.25), t["k"], cfg, False, False)
    assert charged is None and v_final is None
    reference = dynamics.forward_sequence(t["x"], torch.tensor(0.25), t["k"], cfg, False)
    _assert_same([spikes], [reference[0]])


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("steps,neurons", SHAPES, ids=str)
@pytest.mark.parametrize("saved", ["input", "charged"])
def test_backward_gives_the_eager_loops_gradients(cfg, steps, neurons, saved):
    """To float32 rounding for the sigmoid surrogate (its exponential is computed otherwise);
    ``dL/dx`` bit for bit for ``atan``, whose operations are all the eager loops'."""
    t = _inputs(steps, neurons, seed=steps + 1)
    x, v_init, k = t["x"], t["v_init"], t["k"]
    _, charged, _ = dynamics.forward_sequence(x, v_init, k, cfg, True)
    args = (t["grad_spikes"], t["grad_v"])
    expected = dynamics.backward_sequence(*args, charged, v_init, k, cfg, True)
    if saved == "input":
        actual = native.backward_from_input(*args, x, v_init, k, cfg, True)
    else:
        actual = native.backward(*args, charged, v_init, k, cfg, True)
    # dL/dk is a sum over all neurons and steps: the C loops add in double, the eager ones in
    # float32, so it is compared to the float32 sum's own error. dL/dx: the surrogate's one-ulp
    # differences add up over the steps (an IF neuron carries dL/dv undamped through all 17),
    # and where those terms cancel the difference is an absolute one (1.5e-6 seen at T = 17)
    _assert_same(actual[:2], expected[:2], rtol=2e-5, atol=1e-6 * steps)
    if cfg.leaky:
        torch.testing.assert_close(actual[2], expected[2], rtol=1e-4, atol=1e-4, equal_nan=True)
    if cfg.surrogate == "atan":
        _assert_same(actual[:1], expected[:1])
    # without dL/dv_init and dL/dk, dL/dx is the same
    lean = (native.backward_from_input(*args, x, v_init, k, cfg, False, False) if saved == "input"
            else native.backward(*args, charged, v_init, k, cfg, False, False))  # fmt: skip
    assert lean[1] is None and lean[2] == 0
    _assert_same(lean[:1], actual[:1])


@pytest.mark.parametrize("layout", ["broadcast over time", "rows apart", "column-strided"])
def test_an_input_laid_out_otherwise_is_read_in_place_or_copied(layout):
    """A static image repeated over T (step stride 0) and rows further apart than N are read
    where they lie; a column stride other than 1 is copied first. Same spikes, same
    gradients."""
    cfg, t = CONFIGS[0], _inputs(6, 300, seed=5)
    base = torch.randn(6, 600, generator=torch.Generator().manual_seed(6)) * 1.5 + 0.4
    x = {
        "broadcast over time": base[0, :300].expand(6, 300),
        "rows apart": base[:, :300],
        "column-strided": base[:, ::2],
    }[layout]
    dense = x.contiguous()
    read_in_place = native._rows(x)[0].data_ptr() == x.data_ptr()
    assert read_in_place is (layout != "column-strided")
    _assert_same(
        native.forward(x, t["v_init"], t["k"], cfg, True),
        dynamics.forward_sequence(dense, t["v_init"], t["k"], cfg, True),
    )
    args = (t["grad_spikes"], t["grad_v"])
    _assert_same(
        native.backward_from_input(*args, x, t["v_init"], t["k"], cfg, True),
        native.backward_from_input(*args, dense, t["v_init"], t["k"], cfg, True),
    )


def test_the_exponential_of_the_sigmoid_surrogate_is_within_float32_rounding():
    """dS/du of the sigmoid surrogate, over the range where it is not lost to ``1 - sig``,
    within 3e-7 of the exact value (the eager loops: 2e-7), and 0, not NaN, far from it."""
    cfg = neuron_config(leaky=False, decay_input=True, v_threshold=0.0, v_reset=-1.0,
                        surrogate="sigmoid", alpha=1.0, detach_reset=True)  # fmt: skip
    u = torch.cat([torch.linspace(-80.0, 0.0, 200_001), torch.tensor([-1e4, 1e4])])
    # one step of IF from 0, with no gradient through the membrane: dL/dx = dS/du
    grad_x, _, _ = native.backward(torch.ones(1, len(u)), torch.tensor(0.0), u[None],
                                   torch.tensor(0.0), torch.tensor(1.0), cfg, False)  # fmt: skip
    sig = torch.sigmoid(u.double())
    exact = (1 - sig) * sig
    relative = (grad_x[0, :-2].double() - exact[:-2]).abs() / exact[:-2]
    assert relative.max() < 3e-7
    assert grad_x[0, -2:].tolist() == [0.0, 0.0]


def test_the_gradients_do_not_depend_on_the_number_of_threads():
    cfg = CONFIGS[0]
    t = _inputs(6, 20_000, seed=3)
    args = (t["grad_spikes"], t["grad_v"], t["x"], t["v_init"], t["k"], cfg, True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.backward_from_input(*args)
        torch.set_num_threads(3)
        three = native.backward_from_input(*args)
    finally:
        torch.set_num_threads(threads)
    _assert_same(one, three)


def test_training_saves_the_input_not_the_membranes():
    x = (torch.randn(4, 64) * 2).requires_grad_()
    saved = []

    def pack(t):
        saved.append(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        multistep_lif(x, backend="native")
    assert saved == [x.untyped_storage().data_ptr(), *saved[1:]] and len(saved) == 3


@pytest.mark.parametrize(
    "x, reason",
    [
        (torch.ones(2, dtype=torch.float64), "float32 input only, but the input is torch.float64"),
        (torch.ones(2, 3, device="meta"), "CPU tensors only, but the input is on meta"),
    ],
)
def test_an_input_it_cannot_take_is_refused_by_name_and_skipped_by_auto(x, reason):
    assert native.unavailable_reason(x) == f"it runs on {reason}"
    with pytest.raises(
        RuntimeError, match=f"backend='native' cannot run here: it runs on {reason}"
    ):
        backends.resolve_backend("native", x)
    assert "native" not in backends.resolve_backend("auto", x)


@pytest.mark.parametrize("backend", ["native", "auto"])
def test_under_jit_trace_the_recorded_graph_computes_the_spikes(backend, monkeypatch):
    """``torch.jit.trace`` records operators; a call into C would leave the spikes out of the
    graph (it recorded an empty tensor), so a traced neuron runs the eager loops."""
    monkeypatch.delenv("SPIKEZOO_BACKEND", raising=False)
    lif = MultiStepLIF(backend=backend)
    first, second = torch.randn(4, 2, 8) * 2, torch.randn(4, 2, 8) * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(lif, first)
    assert torch.equal(traced(second), lif(second))
    assert "aten::ge" in str(traced.graph)  # the threshold comparison was recorded


@pytest.fixture
def fresh(monkeypatch):
    """The library and the probe's verdicts looked up again, and "auto"'s failures forgotten."""
    monkeypatch.setattr(backends, "_AUTO_FAILURES", set())
    monkeypatch.delenv("SPIKEZOO_BACKEND", raising=False)
    native._library.cache_clear()
    native._probe_failure.cache_clear()
    yield
    native._library.cache_clear()
    native._probe_failure.cache_clear()


@pytest.mark.usefixtures("fresh")
def test_without_a_c_compiler_it_says_so_and_auto_takes_inductor(monkeypatch):
    monkeypatch.setattr(native.native, "library", lambda name: None)
    x = torch.ones(2, 3)
    assert "no C compiler could build" in native.unavailable_reason(x)
    assert backends.resolve_backend("auto", x) == ("inductor", "torch")


@pytest.mark.usefixtures("fresh")
def test_loops_that_compute_otherwise_are_refused_by_the_probe(monkeypatch):
    """A build whose spikes differ from the eager loops' is not used: named, it raises; under
    "auto", the next backend runs and the result is the reference's (the next is "torch" here:
    inductor's first compile would add about 20 s to the fast suite)."""
    monkeypatch.setattr(backends, "AUTO_PRIORITY", ["native", "torch"])
    exact = native._forward

    def one_spike_off(*args):
        spikes, charged, v_final = exact(*args)
        spikes[0, 9] = 1 - spikes[0, 9]
        return spikes, charged, v_final

    monkeypatch.setattr(native, "_forward", one_spike_off)
    x = torch.randn(3, 50) * 2
    with pytest.raises(RuntimeError, match="backend 'native' does not reproduce the eager loops"):
        multistep_lif(x, backend="native")
    with torch.no_grad():
        assert torch.equal(multistep_lif(x, backend="auto"), multistep_lif(x, backend="torch"))
    assert ("native", "cpu", torch.float32) == next(iter(backends._AUTO_FAILURES))[:3]


@pytest.mark.usefixtures("fresh")
def test_a_wrong_gradient_is_refused_by_the_probe(monkeypatch):
    exact = native._backward

    def doubled(*args):
        grad_x, grad_v, grad_k = exact(*args)
        return grad_x * 2, grad_v, grad_k

    monkeypatch.setattr(native, "_backward", doubled)
    assert "Tensor-likes are not close" in native._probe_failure(CONFIGS[0])


def test_a_registered_surrogate_is_refused_by_name_and_auto_takes_the_next(monkeypatch):
    monkeypatch.setattr(surrogate_module, "_REGISTRY", dict(surrogate_module._REGISTRY))
    monkeypatch.setattr(backends, "_AUTO_FAILURES", set())
    monkeypatch.delenv("SPIKEZOO_BACKEND", raising=False)
    surrogate_module.register_surrogate("box", lambda u, alpha: (u.abs() < alpha).to(u.dtype), 0.5)
    x = torch.randn(3, 7) * 2
    with pytest.raises(
        ValueError,
        match=r"backend 'native' has loops for the surrogates \['atan', 'sigmoid'\], not 'box'",
    ):
        multistep_lif(x, surrogate="box", backend="native")
    monkeypatch.setattr(backends, "AUTO_PRIORITY", ["native", "torch"])
    with torch.no_grad():
        expected = multistep_lif(x, surrogate="box", backend="torch")
        assert torch.equal(multistep_lif(x, surrogate="box", backend="auto"), expected)


def test_no_memory_for_the_decay_sums_is_a_memory_error(monkeypatch):
    class Refusing:
        @staticmethod
        def neurons_backward_f32(*args):
            return 1

    cfg, t = CONFIGS[0], _inputs(2, 10, seed=0)
    with pytest.raises(MemoryError, match="no memory for the dL/dk sums of 10 neurons"):
        native._backward(Refusing, native._neuron(cfg, t["k"]), cfg, t["grad_spikes"],
                         t["grad_v"], None, t["x"], t["v_init"], t["k"], True, True)  # fmt: skip


@pytest.mark.parametrize("family", families.FAMILY_NAMES)
def test_a_training_step_of_every_family_equals_the_eager_loops(family):
    """Same logits bit for bit (the spikes are), and gradients to float32 rounding of the
    model's gradient scale (an untrained tiny Meta-SpikeFormer's reach 1e31; a bias before a
    BatchNorm gets rounding noise alone)."""
    model = families.tiny(family).train()
    images = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([1, families.NUM_CLASSES - 1])
    results = []
    for backend in ("native", "torch"):
        copied = set_backend(copy.deepcopy(model), backend)
        logits = copied(images)
        F.cross_entropy(logits, labels).backward()
        results.append((logits, {n: p.grad for n, p in copied.named_parameters()}))
    (logits, grads), (expected_logits, expected_grads) = results
    assert torch.equal(logits, expected_logits)
    scale = max(grad.abs().max().item() for grad in expected_grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("family", families.FAMILY_NAMES)
def test_inference_of_every_family_equals_the_eager_loops(family, maps_read):
    """The same logits bit for bit: where a neuron reads its BatchNorm's input through the
    BatchNorm's map (the C loops, and the integer neurons' kernel, in evaluation), it reads
    BatchNorm's output, and the model's plain pairs give the same logits."""
    model = families.tiny(family).eval()
    images = torch.randn(2, 3, 32, 32)
    plain = set_backend(copy.deepcopy(model), "torch")
    set_bn_neuron_fusion(plain, False)
    with torch.no_grad():
        logits = set_backend(copy.deepcopy(model), "native")(images)
        # SpikingResformer's BatchNorms all feed sums (GWSFFN's z + u, the blocks' residuals),
        # which read their output: no neuron reads one through its map
        assert bool(maps_read) == (family != "spiking_resformer")
        del maps_read[:]
        expected = plain(images)
    assert maps_read == [] and torch.equal(logits, expected)


#: A LIF neuron's dynamics arguments besides its decay.
SETTINGS = dict(decay_input=True, v_threshold=1.0, v_reset=0.0, surrogate="sigmoid", alpha=None,
                detach_reset=True)  # fmt: skip


def _normalisation(channels: int, inner: int) -> native.Normalisation:
    mean, invstd = torch.zeros(channels), torch.ones(channels)
    return native.Normalisation(None, None, mean, invstd, inner, contract=False)


def test_reading_a_normalised_input_is_refused_where_it_cannot_run():
    """A gradient asked for is an error; another backend or a layout the map cannot follow runs
    nothing (inference: ``None``, for the caller to run the pair) or is an error (a gradient
    of what the neurons read)."""
    x, grad = torch.randn(2, 1, 3, 5), torch.randn(2, 1, 3, 5)
    normalisation = _normalisation(3, 5)
    with pytest.raises(ValueError, match="in inference only"):
        normalised_multistep_neuron(
            x.clone().requires_grad_(), normalisation, decay=0.5, backend="native", **SETTINGS
        )
    for backend, y in [("torch", x), ("inductor", x), ("native", x.transpose(2, 3))]:
        assert not reads_normalisation(y, decay=0.5, backend=backend, **SETTINGS)
        assert (
            normalised_multistep_neuron(y, normalisation, decay=0.5, backend=backend, **SETTINGS)
            is None
        )
        with pytest.raises(ValueError, match=f"backend '{backend}' does not read a normalised"):
            multistep_input_gradient(
                y, grad, decay=0.5, backend=backend, normalisation=normalisation, **SETTINGS
            )
    assert reads_normalisation(x, decay=0.5, backend="native", **SETTINGS)


def test_no_memory_for_the_coefficients_is_a_memory_error():
    class Refusing:
        @staticmethod
        def neurons_forward_f32(*args):
            return 1

    cfg, x = CONFIGS[0], torch.randn(2, 15)
    with pytest.raises(MemoryError, match="per-channel coefficients"):
        native._forward(Refusing, native._neuron(cfg, torch.tensor(0.5)), x, torch.zeros(()),
                        False, False, _normalisation(3, 5))  # fmt: skip
