"""SDSA and DSSA dropped into a small custom CNN learn scikit-learn's digits."""

import functools

import torch
from sklearn.datasets import load_digits
from torch import nn

from spikezoo.layers import DSSA, SDSA, ConvBN
from spikezoo.neurons import MultiStepLIF


class TinySpikingNet(nn.Module):
    """[B, 1, 8, 8] images -> [B, 10] logits, through T=2 steps of spiking attention."""

    def __init__(self, time_steps: int = 2):
        super().__init__()
        neuron = functools.partial(MultiStepLIF, surrogate="atan", backend="torch")
        self.time_steps = time_steps
        self.stem = ConvBN(1, 16, 3)
        self.sdsa = SDSA(16, num_heads=2, neuron=neuron)
        self.dssa = DSSA(16, num_heads=2, patch_size=2, neuron=neuron)
        self.head = nn.Linear(16, 10)

    def forward(self, images):
        x = images.unsqueeze(0).repeat(self.time_steps, 1, 1, 1, 1)  # [T, B, 1, 8, 8]
        x = self.dssa(self.sdsa(self.stem(x)))
        return self.head(x.mean((-2, -1))).mean(0)


def test_custom_cnn_trains_on_digits():
    torch.manual_seed(0)
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target)
    model = TinySpikingNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        index = torch.randint(0, 1200, (64,))
        loss = nn.functional.cross_entropy(model(images[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    model.eval()
    with torch.no_grad():
        accuracy = (model(images[1200:]).argmax(-1) == labels[1200:]).float().mean()
    assert accuracy > 0.6  # held-out digits; chance is 0.1
    assert (model.dssa.firing_rate_x > 0).all()
