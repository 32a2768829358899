"""SDSA is linear in the number of tokens: no N x N tensor is ever allocated."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from spikezoo.layers import SDSA


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements any operation produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_quadratic_tensor_for_a_large_token_count():
    attn = SDSA(dim=8, num_heads=2, neuron=lambda **kw: _torch_lif(**kw))
    x = torch.randn(1, 1, 8, 96, 96, requires_grad=True)  # N = 9216 tokens
    n = 96 * 96
    with LargestTensor() as mode:
        attn(x).sum().backward()
    assert mode.largest <= 8 * n  # T*B*C*N: the activations themselves
    assert mode.largest < n * n // 1000


def test_cost_grows_linearly_with_tokens():
    attn = SDSA(dim=8, num_heads=2, neuron=lambda **kw: _torch_lif(**kw))
    sizes = {}
    for side in (16, 32):
        with LargestTensor() as mode:
            attn(torch.randn(1, 1, 8, side, side))
        sizes[side] = mode.largest
    assert sizes[32] == 4 * sizes[16]


def _torch_lif(**kwargs):
    from spikezoo.neurons import MultiStepLIF

    return MultiStepLIF(backend="torch", **kwargs)
