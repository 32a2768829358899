"""The backend registry, ``"auto"``'s choice and fallback, and the chunked ``"inductor"`` loops."""

from __future__ import annotations

import dataclasses
from unittest import mock

import pytest
import torch
from torch._dynamo.utils import counters

from spikezoo.neurons import MultiStepLIF, backends, dynamics, multistep_lif, multistep_plif
from spikezoo.neurons.backends import Backend, eager, inductor

# these tests are about what "auto" chooses (tests/conftest.py sets SPIKEZOO_BACKEND)
pytestmark = pytest.mark.usefixtures("auto_backend_as_users_have_it")


@pytest.fixture
def registry(monkeypatch):
    """Private copies of the registry, the "auto" order and the failure memory."""
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    monkeypatch.setattr(backends, "AUTO_PRIORITY", list(backends.AUTO_PRIORITY))
    monkeypatch.setattr(backends, "_AUTO_FAILURES", set())


def _broken(*args):
    raise RuntimeError("this backend always fails")


def _spy_on_inductor(loop: str) -> list:
    """Replace the ``"inductor"`` backend's ``loop`` (a :class:`Backend` field) in the private
    registry by one that records its last argument (the ``..._needed`` switch) in the list
    returned, then runs."""
    asked = []
    inductor_backend = backends.get_backend("inductor")
    run = getattr(inductor_backend, loop)

    def spy(*args):
        asked.append(args[-1])
        return run(*args)

    backends._REGISTRY["inductor"] = dataclasses.replace(inductor_backend, **{loop: spy})
    return asked


def _counting(calls: list[str], name: str, loop):
    def run(*args):
        calls.append(name)
        return loop(*args)

    return run


def test_builtin_backends_and_auto_order():
    assert backends.BACKENDS == ("auto", "cupy", "native", "inductor", "torch")
    assert backends.backend_names() == ["auto", "cupy", "native", "inductor", "torch"]
    assert backends.AUTO_PRIORITY == ["cupy", "native", "inductor", "torch"]
    assert backends.resolve_backend("auto", torch.ones(2, 3)) == ("native", "inductor", "torch")
    float64 = torch.ones(2, 3, dtype=torch.float64)
    assert backends.resolve_backend("auto", float64) == ("inductor", "torch")
    assert backends.get_backend("torch").forward is eager.forward


@pytest.mark.usefixtures("registry")
def test_auto_falls_back_to_the_next_backend_and_remembers_the_failure():
    calls = []
    backends.register_backend(
        Backend("flaky", _counting(calls, "flaky", _broken), _broken, lambda x: None)
    )
    backends.AUTO_PRIORITY[:] = ["flaky", "torch"]
    x = torch.randn(3, 5) * 2
    expected = multistep_lif(x, backend="torch")
    assert torch.equal(multistep_lif(x, backend="auto"), expected)
    assert torch.equal(multistep_lif(x, backend="auto"), expected)
    assert calls == ["flaky"]  # tried once, then skipped for this device, dtype and config
    assert ("flaky", "cpu", torch.float32) == next(iter(backends._AUTO_FAILURES))[:3]
    with pytest.raises(RuntimeError, match="this backend always fails"):
        multistep_lif(x, backend="flaky")  # named explicitly: never replaced


@pytest.mark.usefixtures("registry")
def test_auto_backward_runs_on_the_backend_that_ran_forward():
    calls = []
    torch_backend = backends.get_backend("torch")
    backends.register_backend(
        Backend(
            "counted",
            _counting(calls, "forward", torch_backend.forward),
            _counting(calls, "backward", torch_backend.backward),
            lambda x: None,
        )
    )
    backends.AUTO_PRIORITY[:] = ["counted", "torch"]
    x = (torch.randn(3, 5) * 2).requires_grad_()
    multistep_plif(x, torch.zeros((), requires_grad=True)).sum().backward()
    assert calls == ["forward", "backward"]


@pytest.mark.usefixtures("registry")
def test_auto_skips_an_unavailable_backend_and_naming_it_says_why():
    backends.register_backend(
        Backend("gpu-only", _broken, _broken, lambda x: "needs a GPU; use backend='auto'")
    )
    backends.AUTO_PRIORITY.insert(0, "gpu-only")
    x = torch.ones(2, 3)
    assert backends.resolve_backend("auto", x) == ("native", "inductor", "torch")
    with pytest.raises(RuntimeError, match=r"backend='gpu-only' cannot run here: needs a GPU"):
        MultiStepLIF(backend="gpu-only")(x)


@pytest.mark.usefixtures("registry")
def test_registering_a_taken_name_raises():
    for name in ("torch", "auto"):
        with pytest.raises(ValueError, match=f"backend '{name}' is already registered"):
            backends.register_backend(Backend(name, _broken, _broken, lambda x: None))
    assert backends.get_backend("torch").forward is eager.forward


@pytest.mark.usefixtures("registry")
def test_a_backend_registered_without_auto_is_only_used_by_name():
    calls = []
    torch_backend = backends.get_backend("torch")
    backends.register_backend(
        Backend(
            "manual", _counting(calls, "manual", torch_backend.forward), _broken, lambda x: None
        ),
        auto=False,
    )
    assert "manual" in backends.backend_names() and "manual" not in backends.AUTO_PRIORITY
    with torch.no_grad():
        multistep_lif(torch.ones(2, 3), backend="auto")
        assert calls == []
        multistep_lif(torch.ones(2, 3), backend="manual")
    assert calls == ["manual"]


@pytest.mark.parametrize(
    "steps,lengths",
    [(1, [1]), (3, [1, 1, 1]), (4, [4]), (6, [4, 1, 1]), (12, [4, 4, 4]), (16, [16]),
     (37, [16, 16, 4, 1])],
)  # fmt: skip
def test_chunk_lengths(steps, lengths):
    assert inductor.CHUNKS == (16, 4, 1)
    assert inductor.chunk_lengths(steps) == lengths


@pytest.mark.slow  # compiles every chunk graph
def test_a_hundred_sequence_lengths_compile_a_bounded_number_of_graphs():
    """T = 1..100 through ``"inductor"``, forward and backward: a handful of graphs in all.

    The loops compile for chunks of 16, 4 and 1 steps, forward and backward, whatever T,
    each in at most three variants (see ``spikezoo.neurons.backends.inductor``). An unrolled
    loop would compile 100 graphs per loop, and dynamo stops at 64.
    """
    graphs_before = counters["stats"]["unique_graphs"]
    for steps in range(1, 101):
        x = torch.randn(steps, 3, dtype=torch.float64) * 1.5 + 0.7
        grad_spikes = torch.randn(steps, 3, dtype=torch.float64)
        results = {}
        for backend in ("inductor", "torch"):
            xb = x.clone().requires_grad_()
            w = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
            spikes, v_final = multistep_plif(xb, w, backend=backend, return_state=True)
            ((spikes * grad_spikes).sum() + v_final.sum()).backward()
            results[backend] = spikes.detach(), v_final.detach(), xb.grad, w.grad
        assert torch.equal(results["inductor"][0], results["torch"][0]), f"T={steps}"
        for name, actual, expected in zip(
            ("v_final", "grad_x", "grad_w"),
            results["inductor"][1:],
            results["torch"][1:],
            strict=True,
        ):
            torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12, msg=name)
    assert counters["stats"]["unique_graphs"] - graphs_before <= len(inductor.CHUNKS) * 2 * 3


def _saved_storages(backend: str, x: torch.Tensor) -> list[int]:
    """The data pointers of the tensors a training forward of a LIF saves for backward."""
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        multistep_lif(x, backend=backend)
    return saved


@pytest.mark.slow  # inductor compiles the loops (seconds)
def test_inductor_training_saves_the_input_and_torch_the_membranes():
    x = (torch.randn(4, 64) * 2).requires_grad_()
    assert x.untyped_storage().data_ptr() in _saved_storages("inductor", x)
    assert x.untyped_storage().data_ptr() not in _saved_storages("torch", x)


@pytest.mark.slow  # inductor compiles the loops (seconds)
def test_inductor_kernels_run_on_every_thread_whatever_size_compiled_first():
    """The loops compile for a dynamic number of neurons. Compiled first for a few (a test, a
    tiny layer), inductor would make single-threaded kernels, and its disk cache would keep them
    for every size after: each kernel must open a parallel region whatever that first size."""
    from torch._inductor.graph import GraphLowering

    sources = []
    x = torch.randn(2, 16, requires_grad=True)
    with (
        mock.patch.object(GraphLowering, "save_output_code", sources.append),
        torch._inductor.config.patch(fx_graph_cache=False),
    ):
        # a threshold no other test uses: graphs of their own, compiled here for 16 neurons
        multistep_lif(x, v_threshold=0.8125, backend="inductor").sum().backward()
    kernels = [code for source in sources for code in source.split('extern "C"')[1:]]
    assert len(kernels) >= 2  # the forward and the backward loop
    for kernel in kernels:
        assert "#pragma omp parallel" in kernel


LIF_4_1_1 = (dynamics.NeuronConfig(True, True, 1.0, 0.0, "sigmoid", 4.0, True), 6)
SOFT_4_1 = (dynamics.NeuronConfig(True, False, 1.0, None, "atan", 2.0, False), 5)


@pytest.mark.parametrize(
    "saved,cfg,steps",
    [
        # each compiles graphs of its own (seconds): the slow step checks them
        pytest.param("input", *SOFT_4_1, marks=pytest.mark.slow),
        pytest.param("input", *LIF_4_1_1, marks=pytest.mark.slow),
        pytest.param("charged", *SOFT_4_1, marks=pytest.mark.slow),
        pytest.param("charged", *LIF_4_1_1, marks=pytest.mark.slow),
    ],
)
def test_inductor_backward_equals_the_reference_backward(saved, cfg, steps):
    """The compiled backward, from the input (membranes recharged) or from the charged
    membranes, gives the reference's gradients across chunk boundaries (4+1 and 4+1+1 steps),
    with ``dL/dk`` (PLIF) and a per-neuron initial membrane."""
    gen = torch.Generator().manual_seed(steps)
    x = torch.randn(steps, 37, generator=gen, dtype=torch.float64) * 1.5 + 0.6
    grad_spikes, grad_v, v_init = (
        torch.randn(*shape, generator=gen, dtype=torch.float64)
        for shape in ((steps, 37), (37,), (37,))
    )
    k = torch.tensor(0.4, dtype=torch.float64)
    _, charged, _ = dynamics.forward_sequence(x, v_init, k, cfg, keep_charged=True)
    expected = dynamics.backward_sequence(grad_spikes, grad_v, charged, v_init, k, cfg, True)
    if saved == "input":
        actual = inductor.backward_from_input(grad_spikes, grad_v, x, v_init, k, cfg, True)
    else:
        actual = inductor.backward(grad_spikes, grad_v, charged, v_init, k, cfg, True)
    for name, a, e in zip(("grad_x", "grad_v_init", "grad_k"), actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-14, msg=name)
    # without dL/dv_init, the first chunk's graph writes no [N] tensor for it; the rest is equal
    if saved == "input":
        lean = inductor.backward_from_input(grad_spikes, grad_v, x, v_init, k, cfg, True, False)
    else:
        lean = inductor.backward(grad_spikes, grad_v, charged, v_init, k, cfg, True, False)
    assert lean[1] is None
    assert torch.equal(lean[0], actual[0]) and torch.equal(lean[2], actual[2])


@pytest.mark.slow  # inductor compiles the loops (seconds)
@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("v_init_grad", [False, True])
def test_training_asks_for_the_initial_membrane_gradient_only_when_it_is_wanted(v_init_grad):
    asked = _spy_on_inductor("backward_from_input")  # grad_v_needed
    x = (torch.randn(4, 2, 3) * 2).requires_grad_()
    v_init = torch.randn(2, 3).requires_grad_() if v_init_grad else None
    multistep_lif(x, v_init=v_init, backend="inductor").sum().backward()
    assert asked == [v_init_grad]
    assert (v_init is None) or v_init.grad is not None


@pytest.mark.slow  # inductor compiles the loops (seconds)
@pytest.mark.parametrize("steps", [1, 6], ids=["one chunk", "4+1+1 chunks"])
def test_inductor_forward_writes_the_final_membrane_only_when_asked(steps):
    """Without the final membrane the last chunk's graph writes no ``[N]`` tensor for it; the
    spikes (and the membranes kept for backward) are those of the reference, and with it the
    final membrane is the reference's too."""
    cfg = SOFT_4_1[0]
    gen = torch.Generator().manual_seed(steps)
    x = torch.randn(steps, 37, generator=gen, dtype=torch.float64) * 1.5 + 0.6
    v_init = torch.randn(37, generator=gen, dtype=torch.float64)
    k = torch.tensor(0.4, dtype=torch.float64)
    expected = dynamics.forward_sequence(x, v_init, k, cfg, keep_charged=True)
    full = inductor.forward(x, v_init, k, cfg, True)
    lean = inductor.forward(x, v_init, k, cfg, True, False)
    assert lean[2] is None
    for a, b, e in zip(full, lean[:2], expected[:2], strict=False):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-14)
        assert torch.equal(a, b)
    torch.testing.assert_close(full[2], expected[2], rtol=1e-12, atol=1e-14)


@pytest.mark.slow  # inductor compiles the loops (seconds)
@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("return_state", [False, True])
def test_a_neuron_asks_for_the_final_membrane_only_when_it_returns_it(grad, return_state):
    asked = _spy_on_inductor("forward")  # final_needed
    x = (torch.randn(4, 2, 3) * 2).requires_grad_(grad)
    out = MultiStepLIF(backend="inductor")(x, return_state=return_state)
    assert asked == [return_state]
    if return_state:
        spikes, v_final = out
        expected = MultiStepLIF(backend="torch")(x.detach(), return_state=True)
        assert torch.equal(spikes, expected[0])
        torch.testing.assert_close(v_final, expected[1], rtol=0, atol=0)
        if grad:  # the final membrane's gradient flows back into x
            v_final.sum().backward()
            assert x.grad is not None and x.grad.abs().sum() > 0
    else:
        assert isinstance(out, torch.Tensor) and out.shape == x.shape


@pytest.mark.usefixtures("registry")
def test_a_failed_backward_from_input_falls_back_to_recharging_on_the_next_backend():
    calls = []
    torch_backend = backends.get_backend("torch")
    backends.register_backend(
        Backend(
            "recomputing",
            _counting(calls, "forward", torch_backend.forward),
            _broken,
            lambda x: None,
            _counting(calls, "backward_from_input", _broken),
        )
    )
    backends.AUTO_PRIORITY[:] = ["recomputing", "torch"]
    x = (torch.randn(3, 5, dtype=torch.float64) * 2).requires_grad_()
    w = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    multistep_plif(x, w, backend="auto").sum().backward()
    expected_x, expected_w = (
        x.detach().clone().requires_grad_(),
        w.detach().clone().requires_grad_(),
    )
    multistep_plif(expected_x, expected_w, backend="torch").sum().backward()
    assert calls == ["forward", "backward_from_input"]
    torch.testing.assert_close(x.grad, expected_x.grad, rtol=1e-12, atol=0)
    torch.testing.assert_close(w.grad, expected_w.grad, rtol=1e-12, atol=0)
