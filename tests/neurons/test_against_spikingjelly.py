"""spikezoo's neurons against spikingjelly 2.x (``step_mode="m"``), the dynamics they reproduce.

Mostly float64 on random inputs, so the comparison is tight: spikes bit for bit, final membrane
and gradients (input, ``v_init``, PLIF ``w``) to ~1e-9 relative. The configurations cover every
combination of neuron kind, reset mode, ``decay_input``, surrogate (with default and non-default
``alpha``) and ``detach_reset``; dyadic inputs add exact threshold ties (``h == v_threshold``).
A few configurations also run through the compiled ``"inductor"`` backend, in float32 and
float64, and the default ``"auto"`` backend is checked to really compile.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from spikingjelly.activation_based import neuron as sj_neuron
from spikingjelly.activation_based import surrogate as sj_surrogate

from spikezoo.neurons import (
    MultiStepIF,
    MultiStepLIF,
    MultiStepPLIF,
    backends,
    dynamics,
    multistep_if,
    multistep_lif,
    multistep_plif,
)
from spikezoo.neurons.dynamics import NeuronConfig

TAU = 1.7  # not a power of two: 1/tau is inexact, unlike the default 2
INIT_TAU = 3.0  # PLIF: w = -ln 2, not the default 0
V_THRESHOLD = 0.8
V_RESETS = (0.0, None, -0.4)  # hard reset at 0, soft reset, hard reset at a nonzero value
SURROGATES = (("sigmoid", None), ("atan", None), ("sigmoid", 2.5), ("atan", 3.5))
DEFAULT_ALPHA = {"sigmoid": 4.0, "atan": 2.0}
SHAPE = (8, 3, 2, 5)  # [T, ...]


def _sj_surrogate(name: str, alpha: float | None):
    alpha = DEFAULT_ALPHA[name] if alpha is None else alpha
    if name == "sigmoid":
        return sj_surrogate.Sigmoid(alpha=alpha)
    return sj_surrogate.ATan(alpha=alpha)


def make_pair(
    kind,
    v_reset,
    decay_input,
    surrogate,
    alpha,
    detach_reset,
    backend="torch",
    tau=TAU,
    v_threshold=V_THRESHOLD,
):
    """The spikingjelly neuron and the spikezoo neuron for one configuration.

    ``tau`` is LIF's tau; PLIF gets ``init_tau = INIT_TAU`` unless ``tau`` is given (then ``tau``).
    """
    init_tau = INIT_TAU if tau == TAU else tau
    common = dict(v_threshold=v_threshold, v_reset=v_reset, detach_reset=detach_reset)
    sj_common = dict(common, surrogate_function=_sj_surrogate(surrogate, alpha), step_mode="m")
    ours_common = dict(common, surrogate=surrogate, alpha=alpha, backend=backend)
    if kind == "lif":
        ref = sj_neuron.LIFNode(tau=tau, decay_input=decay_input, **sj_common)
        ours = MultiStepLIF(tau=tau, decay_input=decay_input, **ours_common)
    elif kind == "plif":
        ref = sj_neuron.ParametricLIFNode(init_tau=init_tau, decay_input=decay_input, **sj_common)
        ours = MultiStepPLIF(init_tau=init_tau, decay_input=decay_input, **ours_common)
    else:
        ref = sj_neuron.IFNode(**sj_common)
        ours = MultiStepIF(**ours_common)
    return ref, ours


def _random_inputs(seed: int, dtype: torch.dtype, decay_input: bool, shape=SHAPE):
    gen = torch.Generator().manual_seed(seed)
    scale, shift = (1.5, 0.7) if decay_input else (0.6, 0.2)  # keep firing rates moderate
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift
    grad_spikes = torch.randn(shape, generator=gen, dtype=torch.float64)
    grad_v = torch.randn(shape[1:], generator=gen, dtype=torch.float64)
    v_init = torch.randn(shape[1:], generator=gen, dtype=torch.float64) * 0.5
    return x.to(dtype), grad_spikes.to(dtype), grad_v.to(dtype), v_init.to(dtype)


#: Random inputs keep every charged membrane this far from the threshold (see _off_threshold).
MARGIN = 1e-4


def _off_threshold(ours, x, v_init=None):
    """``x`` nudged so that no charged membrane comes within :data:`MARGIN` of the threshold.

    spikingjelly divides by ``tau`` where spikezoo multiplies by ``1/tau``, and compiled
    kernels may fuse a multiply-add: the membranes of the two sides can differ in the last bit,
    so a random membrane a rounding error away from the threshold could fire in one and not in
    the other, depending on the machine. Walking the float64 dynamics once, each such input is
    raised by ``4 * MARGIN`` of membrane; later steps see the nudged history. (The tie tests
    below use exact dyadic arithmetic instead.)
    """
    decay = ours.decay()
    decay = decay.detach() if isinstance(decay, torch.Tensor) else decay
    cfg = NeuronConfig(
        leaky=decay is not None,
        decay_input=ours.decay_input,
        v_threshold=ours.v_threshold,
        v_reset=ours.v_reset,
        surrogate=ours.surrogate,
        alpha=1.0,
        detach_reset=ours.detach_reset,
    )
    k = torch.tensor(0.0 if decay is None else float(decay), dtype=torch.float64)
    per_unit_input = float(k) if cfg.leaky and cfg.decay_input else 1.0
    x = x.clone()
    v = torch.full(x.shape[1:], cfg.charge_reset, dtype=torch.float64)
    if v_init is not None:
        v = v_init.double()
    for t in range(x.shape[0]):
        h = dynamics.charge(x[t].double(), v, k, cfg)
        near = (h - cfg.v_threshold).abs() < MARGIN
        x[t][near] += 4 * MARGIN / per_unit_input
        h = dynamics.charge(x[t].double(), v, k, cfg)
        assert ((h - cfg.v_threshold).abs() >= MARGIN).all()
        v = dynamics.reset(h, h >= cfg.v_threshold, cfg)
    return x


def run_both(ref, ours, x, grad_spikes, grad_v, v_init=None):
    """Forward + backward of ``sum(spikes * grad_spikes) + sum(v_final * grad_v)`` on both.

    Returns ``{name: (spikingjelly value, spikezoo value)}``.
    """
    x_ref = x.clone().requires_grad_()
    x_ours = x.clone().requires_grad_()
    v_ref = v_ours = None
    ref.reset()
    if v_init is not None:
        v_ref = v_init.clone().requires_grad_()
        v_ours = v_init.clone().requires_grad_()
        ref.v = v_ref
    spikes_ref = ref(x_ref)
    v_final_ref = ref.v
    spikes_ours, v_final_ours = ours(x_ours, v_init=v_ours, return_state=True)
    ((spikes_ref * grad_spikes).sum() + (v_final_ref * grad_v).sum()).backward()
    ((spikes_ours * grad_spikes).sum() + (v_final_ours * grad_v).sum()).backward()
    out = {
        "spikes": (spikes_ref, spikes_ours),
        "v_final": (v_final_ref.detach(), v_final_ours.detach()),
        "grad_x": (x_ref.grad, x_ours.grad),
    }
    if v_init is not None:
        out["grad_v_init"] = (v_ref.grad, v_ours.grad)
    if isinstance(ours, MultiStepPLIF):
        out["grad_w"] = (ref.w.grad, ours.w.grad)
    ref.reset()
    return out


def assert_match(results, rtol=1e-9, atol=1e-12):
    spikes_ref, spikes_ours = results["spikes"]
    assert spikes_ours.dtype == spikes_ref.dtype
    rate = spikes_ref.mean().item()
    assert 0.05 < rate < 0.95, f"degenerate test input: firing rate {rate}"
    torch.testing.assert_close(spikes_ours, spikes_ref, rtol=0, atol=0)
    for name, (expected, actual) in results.items():
        if name == "spikes":
            continue
        assert actual is not None, f"{name}: no gradient reached spikezoo's tensor"
        assert expected.abs().max() > 0, f"{name}: trivial reference"
        assert actual.dtype == expected.dtype, name
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=name)


def _all_configs():
    for kind, v_reset, (surrogate, alpha), detach_reset in itertools.product(
        ("lif", "plif", "if"), V_RESETS, SURROGATES, (True, False)
    ):
        for decay_input in (True, False) if kind != "if" else (True,):
            reset = "soft" if v_reset is None else f"hard{v_reset}"
            sg = f"{surrogate}{alpha or ''}"
            name = f"{kind}-{reset}-di{int(decay_input)}-{sg}-dr{int(detach_reset)}"
            yield pytest.param(kind, v_reset, decay_input, surrogate, alpha, detach_reset, id=name)


ALL_CONFIGS = list(_all_configs())


def test_config_grid_is_complete():
    # 2 leaky kinds x 3 resets x 2 decay_input x 4 surrogates x 2 detach + IF's 3 x 4 x 2.
    assert len(ALL_CONFIGS) == 2 * 3 * 2 * 4 * 2 + 3 * 4 * 2


@pytest.mark.parametrize("kind,v_reset,decay_input,surrogate,alpha,detach_reset", ALL_CONFIGS)
def test_matches_spikingjelly(kind, v_reset, decay_input, surrogate, alpha, detach_reset):
    ref, ours = make_pair(kind, v_reset, decay_input, surrogate, alpha, detach_reset)
    ref, ours = ref.double(), ours.double()
    x, grad_spikes, grad_v, _ = _random_inputs(0, torch.float64, decay_input)
    x = _off_threshold(ours, x)
    assert_match(run_both(ref, ours, x, grad_spikes, grad_v))


@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize("v_reset", V_RESETS)
@pytest.mark.parametrize("kind", ["lif", "plif", "if"])
def test_matches_spikingjelly_from_v_init(kind, v_reset, detach_reset):
    """A given initial membrane (spikingjelly: ``node.v = v_init``), with its gradient."""
    ref, ours = make_pair(kind, v_reset, True, "atan", None, detach_reset)
    ref, ours = ref.double(), ours.double()
    x, grad_spikes, grad_v, v_init = _random_inputs(1, torch.float64, True)
    x = _off_threshold(ours, x, v_init)
    assert_match(run_both(ref, ours, x, grad_spikes, grad_v, v_init=v_init))


def _count_ties(kind, x, v_reset, decay_input, v_threshold):
    """How often h == v_threshold exactly (tau = 2, so k = 1/2)."""
    rest = 0.0 if v_reset is None else v_reset
    v = torch.full(x.shape[1:], rest, dtype=x.dtype)
    ties = 0
    for xt in x:
        if kind == "if":
            h = v + xt
        elif decay_input:
            h = v + (xt - (v - rest)) * 0.5
        else:
            h = v - (v - rest) * 0.5 + xt
        ties += int((h == v_threshold).sum())
        fired = h >= v_threshold
        v = h - fired * v_threshold if v_reset is None else torch.where(fired, rest, h)
    return ties


TIE_CONFIGS = [
    pytest.param(
        kind,
        v_reset,
        detach_reset,
        decay_input,
        id=f"{kind}-{v_reset}-dr{detach_reset:d}-di{decay_input:d}",
    )
    for kind in ("lif", "plif", "if")
    for v_reset in (0.0, None, -0.5)  # dyadic, like everything in this test
    for detach_reset in (True, False)
    for decay_input in ((True, False) if kind != "if" else (True,))
]


@pytest.mark.parametrize("kind,v_reset,detach_reset,decay_input", TIE_CONFIGS)
def test_matches_spikingjelly_at_threshold_ties(kind, v_reset, detach_reset, decay_input):
    """Dyadic inputs with tau = 2 make h == v_threshold frequent and exact: a tie fires, and the
    (detached or attached) reset treats it as a spike in the backward pass too."""
    ref, ours = make_pair(
        kind, v_reset, decay_input, "atan", None, detach_reset, tau=2.0, v_threshold=1.0
    )
    ref, ours = ref.double(), ours.double()
    gen = torch.Generator().manual_seed(4)
    if decay_input and kind != "if":  # h = (v + x + v_reset) / 2: a coarse grid, wider range
        x = torch.randint(-1, 7, SHAPE, generator=gen).double() / 2
    else:
        x = torch.randint(-4, 13, SHAPE, generator=gen).double() / 8
    grad_spikes = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    grad_v = torch.randn(SHAPE[1:], generator=gen, dtype=torch.float64)
    assert _count_ties(kind, x, v_reset, decay_input, 1.0) >= 3
    assert_match(run_both(ref, ours, x, grad_spikes, grad_v), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("v_reset", [0.0, None])
@pytest.mark.parametrize("kind", ["lif", "plif", "if"])
def test_functional_forms_match_spikingjelly(kind, v_reset):
    ref, ours = make_pair(kind, v_reset, False, "sigmoid", 3.0, False)
    ref = ref.double()
    x, grad_spikes, grad_v, _ = _random_inputs(2, torch.float64, False)
    x = _off_threshold(ours.double(), x)
    kwargs = dict(
        v_threshold=V_THRESHOLD,
        v_reset=v_reset,
        surrogate="sigmoid",
        alpha=3.0,
        detach_reset=False,
        return_state=True,
        backend="torch",
    )
    x_ours = x.clone().requires_grad_()
    w = None
    if kind == "lif":
        spikes, v_final = multistep_lif(x_ours, tau=TAU, decay_input=False, **kwargs)
    elif kind == "plif":
        w = torch.tensor(-torch.log(torch.tensor(INIT_TAU - 1.0)).item(), dtype=torch.float64)
        w.requires_grad_()
        spikes, v_final = multistep_plif(x_ours, w, decay_input=False, **kwargs)
    else:
        spikes, v_final = multistep_if(x_ours, **kwargs)
    ((spikes * grad_spikes).sum() + (v_final * grad_v).sum()).backward()

    x_ref = x.clone().requires_grad_()
    ref.reset()
    spikes_ref = ref(x_ref)
    ((spikes_ref * grad_spikes).sum() + (ref.v * grad_v).sum()).backward()
    results = {
        "spikes": (spikes_ref, spikes),
        "v_final": (ref.v.detach(), v_final.detach()),
        "grad_x": (x_ref.grad, x_ours.grad),
    }
    if w is not None:
        results["grad_w"] = (ref.w.grad.double(), w.grad)
    assert_match(results)


@pytest.mark.parametrize("dtype,w", [(torch.float32, -90.0), (torch.float64, -800.0)])
def test_plif_w_gradient_is_finite_when_the_decay_underflows(dtype, w):
    ref, ours = make_pair("plif", 0.0, True, "sigmoid", None, True)
    ref, ours = ref.to(dtype), ours.to(dtype)
    with torch.no_grad():
        ref.w.fill_(w)
        ours.w.fill_(w)
    x = torch.full((3, 4), 1e6, dtype=dtype)
    ref(x).sum().backward()
    ours(x).sum().backward()
    assert ref.w.grad == 0
    assert torch.isfinite(ours.w.grad), f"w.grad = {ours.w.grad.item()}"
    torch.testing.assert_close(ours.w.grad, ref.w.grad)


# The compiled loops: each configuration and dtype is a fresh torch.compile (of a 4-step chunk
# and a single step, forward and backward), seconds each on a small CPU, so only a handful, all
# in the slow step (the first inductor compile in a process alone takes 15-20 s here).
INDUCTOR_SHAPE = (6, 4, 2, 5)  # T = 6: a 4-step chunk and two single steps
INDUCTOR_CONFIGS = [
    pytest.param("lif", 0.0, True, "sigmoid", None, True, torch.float32, id="lif-sdt-default-f32"),
    pytest.param(
        "plif", None, False, "atan", 3.5, False, torch.float64, id="plif-soft-nodecay-atan-f64"
    ),
    pytest.param("if", -0.4, True, "sigmoid", 2.5, False, torch.float32, id="if-hard-nonzero-f32"),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind,v_reset,decay_input,surrogate,alpha,detach_reset,dtype", INDUCTOR_CONFIGS
)
def test_inductor_backend_matches_spikingjelly(
    kind, v_reset, decay_input, surrogate, alpha, detach_reset, dtype
):
    ref, ours = make_pair(
        kind, v_reset, decay_input, surrogate, alpha, detach_reset, backend="inductor"
    )
    ref, ours = ref.to(dtype), ours.to(dtype)
    x, grad_spikes, grad_v, v_init = _random_inputs(3, dtype, decay_input, INDUCTOR_SHAPE)
    x = _off_threshold(ours, x, v_init)
    results = run_both(ref, ours, x, grad_spikes, grad_v, v_init=v_init)
    if dtype == torch.float64:
        assert_match(results)
    else:
        assert_match(results, rtol=1e-5, atol=1e-6)


def test_auto_backend_compiles_and_matches_eager():
    """``"auto"`` (every module's default) runs the compiled loops here, not a silent fallback.

    Same configuration, dtype and T as ``lif-sdt-default-f32`` above: no extra compile.
    """
    x, grad_spikes, grad_v, _ = _random_inputs(5, torch.float32, True, INDUCTOR_SHAPE)
    x = _off_threshold(MultiStepLIF(), x)
    results = {}
    for backend in ("auto", "torch"):
        xb = x.clone().requires_grad_()
        spikes, v_final = MultiStepLIF(backend=backend)(xb, return_state=True)
        ((spikes * grad_spikes).sum() + (v_final * grad_v).sum()).backward()
        results[backend] = (spikes, v_final.detach(), xb.grad)
    assert not backends._AUTO_FAILURES, "torch.compile failed; 'auto' fell back to eager"
    spikes, v_final, grad = results["auto"]
    spikes_ref, v_final_ref, grad_ref = results["torch"]
    assert 0 < spikes_ref.mean() < 1
    assert torch.equal(spikes, spikes_ref)
    torch.testing.assert_close(v_final, v_final_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-6)
