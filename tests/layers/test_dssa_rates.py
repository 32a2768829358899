"""DSSA's firing-rate buffers follow the authors' EMA rules exactly."""

import pytest
import torch

from spikezoo.layers import DSSA, freeze_firing_rates


def make():
    torch.manual_seed(1)
    return DSSA(16, num_heads=2, patch_size=2).double()


def batch(scale=3.0):
    return torch.randn(2, 3, 16, 4, 4, dtype=torch.float64) * scale


def batch_rates(layer, x):
    """The per-head rates of the two spike tensors, computed outside the layer."""
    seen = {}
    layer.in_lif.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o))
    layer.attn_lif.register_forward_hook(lambda m, i, o: seen.__setitem__("attn", o))
    with torch.no_grad():
        DSSA.forward(layer, x)
    rate_x = seen["x"].reshape(2, 3, 2, 8, 16).mean((0, 1, 3, 4), keepdim=True)
    return rate_x, seen["attn"].mean((0, 1, 3, 4), keepdim=True)


def test_buffers_have_the_authors_shape_and_start_at_zero():
    layer = make()
    for name in ("firing_rate_x", "firing_rate_attn"):
        buffer = getattr(layer, name)
        assert buffer.shape == (1, 1, 2, 1, 1) and (buffer == 0).all()
    assert set(layer.state_dict()) >= {"firing_rate_x", "firing_rate_attn"}
    assert not {"_initialised_x", "_initialised_attn"} & set(layer.state_dict())


def test_first_training_batch_initialises_then_momentum_applies():
    layer = make().train()
    x1, x2 = batch(), batch(2.0)
    probe = make().train()
    r1_x, _ = batch_rates(probe, x1)

    layer(x1)
    # first call: set to r, then one EMA step with the same r
    torch.testing.assert_close(layer.firing_rate_x, r1_x * 0.999 + r1_x * (1 - 0.999))
    after_first = layer.firing_rate_x.clone()

    probe.load_state_dict(layer.state_dict())
    probe.eval()  # measures the second batch's input rate without touching the buffers
    layer(x2)
    r2_x = batch_rates(probe, x2)[0]
    torch.testing.assert_close(layer.firing_rate_x, after_first * 0.999 + r2_x * (1 - 0.999))


def test_eval_mode_never_writes():
    layer = make().train()
    layer(batch())
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.eval()
    with torch.no_grad():
        layer(batch(5.0))
    for key, value in layer.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_loaded_rates_are_not_overwritten_by_the_first_batch():
    trained = make().train()
    trained(batch())
    fresh = make().train()
    fresh.load_state_dict(trained.state_dict())
    before = fresh.firing_rate_attn.clone()
    x = batch(2.0)
    fresh(x)
    # an EMA step from the loaded value, not a reset to the batch's rate
    assert (fresh.firing_rate_attn - before).abs().max() < 1e-3
    assert not torch.equal(fresh.firing_rate_attn, before)


def test_state_dict_round_trip_reproduces_outputs():
    layer = make().train()
    layer(batch())
    copy = make()
    copy.load_state_dict(layer.state_dict())
    x = batch()
    layer.eval(), copy.eval()
    torch.testing.assert_close(copy(x), layer(x), rtol=0, atol=0)


def test_freeze_firing_rates_and_restores_the_flag():
    layer = make().train()
    with freeze_firing_rates(layer):
        layer(batch())
        assert layer.update_firing_rates is False
    assert layer.update_firing_rates is True
    assert (layer.firing_rate_x == 0).all()


def test_other_resolutions_take_the_patch_count_from_the_input():
    layer = make().eval()
    layer.firing_rate_x.fill_(0.2)
    layer.firing_rate_attn.fill_(0.2)
    for size in (4, 8, 12):
        assert layer(torch.randn(1, 1, 16, size, size, dtype=torch.float64)).shape[-1] == size


def _silent_head_input(dtype=torch.float32):
    """Head 0's channels (0-7) sit far below threshold: the head can never fire.

    Batch-normalised values are bounded by sqrt(n - 1) = 8 for the 64 values per channel here,
    so no residual branch can lift -50 to the threshold either: this holds on any machine.
    """
    x = torch.randn(2, 2, 16, 4, 4, dtype=dtype) * 3
    x[:, :, :8] = -50.0
    return x.requires_grad_()


def test_a_silent_head_contributes_zero_and_gets_zero_gradient():
    # Two layers in float32: with the authors' infinite scale, the second layer's backward
    # multiplies two ~1e19 scales into an overflow, and the first layer's gradients turn NaN.
    torch.manual_seed(0)
    layers = torch.nn.Sequential(*(DSSA(16, num_heads=2, patch_size=2) for _ in range(2))).train()
    x = _silent_head_input()
    attention_out, attention_grad = [], []
    for layer in layers:
        layer.proj.neuron.register_forward_hook(lambda m, i, o: attention_out.append(i[0]))
        layer.attn_lif.register_full_backward_hook(lambda m, gi, go: attention_grad.append(go[0]))
    out = layers(x)
    out.square().sum().backward()

    for layer in layers:
        assert layer.firing_rate_x[0, 0, 0] == 0 and layer.firing_rate_attn[0, 0, 0] == 0
        assert (layer.firing_rate_x[0, 0, 1] > 0).all()
    for attention in attention_out:  # [T, B, heads * d, H, W]: head 0 contributes 0
        assert (attention[:, :, :8] == 0).all() and (attention[:, :, 8:] != 0).any()
    for grad in attention_grad:  # [T, B, heads, M, H*W]: head 0 passes no gradient back
        assert (grad[:, :, 0] == 0).all() and torch.isfinite(grad).all()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    for name, param in layers.named_parameters():
        assert torch.isfinite(param.grad).all(), name


def _rates_seen(layer, x):
    """Run ``layer(x)``; return its output and the first-training-call rates of its spikes."""
    seen = {}
    hooks = [
        layer.in_lif.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o)),
        layer.attn_lif.register_forward_hook(lambda m, i, o: seen.__setitem__("attn", o)),
    ]
    out = layer(x)
    for hook in hooks:
        hook.remove()
    heads = layer.num_heads
    spikes_x = seen["x"].unflatten(2, (heads, -1)).flatten(-2)  # [T, B, heads, d, H*W]
    rates = [s.mean((0, 1, 3, 4), keepdim=True) for s in (spikes_x, seen["attn"])]
    return out, [r * layer.momentum + r * (1 - layer.momentum) for r in rates]


@pytest.mark.parametrize("mode", ["eval", "frozen_training"])
def test_never_estimated_rates_use_the_batch_rate(mode):
    layer, twin = (make().train(mode == "frozen_training") for _ in range(2))
    for m in (layer, twin):  # a wider y, so that attention fires in eval mode too
        m.patch_proj.bn.weight.data.fill_(4.0)
    x = batch().requires_grad_()
    with freeze_firing_rates(layer):
        out, (rate_x, rate_attn) = _rates_seen(layer, x)
    assert (layer.firing_rate_x == 0).all() and (layer.firing_rate_attn == 0).all()
    assert (rate_x > 0).all() and (rate_attn > 0).all()

    # the same layer with the batch's rates written into its buffers computes the same
    with torch.no_grad():
        twin.firing_rate_x.copy_(rate_x)
        twin.firing_rate_attn.copy_(rate_attn)
    with freeze_firing_rates(twin):
        torch.testing.assert_close(twin(x), out, rtol=0, atol=0)

    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, param in layer.named_parameters():
        assert torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_module_to_memory_format_keeps_the_buffers(memory_format):
    layer = make()
    layer.firing_rate_x.fill_(0.3)
    layer.to(memory_format=memory_format).float()
    assert layer.firing_rate_x.shape == (1, 1, 2, 1, 1)
    assert layer.firing_rate_x.dtype == torch.float32 and (layer.firing_rate_x == 0.3).all()
