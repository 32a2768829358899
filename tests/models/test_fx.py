"""timm's torch.fx feature extraction traces every family, forward and backward."""

import copy
import sys

import pytest
import torch
from timm.models import get_notrace_functions, get_notrace_modules
from timm.models._features_fx import create_feature_extractor, get_graph_node_names
from torchvision.models import feature_extraction

from spikezoo.layers import conv_layout
from spikezoo.neurons import MultiStepNeuron
from tests.models.families import FAMILY_NAMES, tiny

# DSSA writes its rate buffers in training mode only, so the two graphs differ, as they should
pytestmark = pytest.mark.filterwarnings("ignore:The nodes obtained by tracing the model in train")

# One small model per family, and SDT's event input as (family, entry point) (float64: a traced
# graph runs the same kernels, and no last-bit difference may flip a spike either way)
EXTRA_CASES = {"sdt_dvs": ("spike_driven_transformer", "sdt_2_256_dvs128")}
CASES = [*FAMILY_NAMES, *EXTRA_CASES]


def build(case, **overrides):
    family, entry_point = EXTRA_CASES.get(case, (case, None))
    return tiny(family, entry_point, **overrides).double()


def image(model, batch=2):
    size = 2 * model.size_multiple
    return torch.randn(batch, model.in_chans, size, size, dtype=torch.float64) * 2


def output_nodes(model):
    """The nodes that feed the graph's output in training and in eval mode, as timm's own FX
    tests choose them (each mode is one trace of the model)."""
    train_nodes, eval_nodes = get_graph_node_names(model)
    return train_nodes[-1], eval_nodes[-1]


def test_neurons_and_shape_checks_are_registered():
    assert MultiStepNeuron in get_notrace_modules()
    names = {getattr(f, "__name__", f) for f in get_notrace_functions()}
    assert {"check_tbchw", "check_dssa_input", "check_sps_input", "time_major_input"} <= names
    assert "pad_with_bn_of_zero" in names
    assert {"rearrange", "reduce"} <= names


@pytest.mark.parametrize("case", CASES)
def test_traced_forward_equals_eager(case):
    model = build(case).eval()
    x = image(model)
    traced = create_feature_extractor(model, [output_nodes(model)[1]])
    with torch.no_grad():
        (out,) = traced(x).values()
        torch.testing.assert_close(out, model(x), rtol=0, atol=0)
    # the graph is a graph: no neuron was traced into, every neuron is one call
    calls = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    assert {name for name, _ in model.spiking_neurons()} <= calls


@pytest.mark.parametrize("case", CASES)
def test_traced_backward_equals_eager(case, monkeypatch):
    model = build(case).train()
    eager = copy.deepcopy(model)
    # a traced graph runs the stem at every step (no hooks) and its depthwise convolutions in
    # the layout it is called with (spikezoo.layers.conv_layout): the eager model too, so that
    # a gradient that is rounding noise (a bias before a training-mode BatchNorm) is the same
    # noise
    eager.set_static_encoding(False)
    monkeypatch.setattr(conv_layout, "MIN_KERNEL", sys.maxsize)
    x = image(model)
    train_node, eval_node = output_nodes(model)
    # as timm's tests/test_models.py does: torchvision's extractor with timm's registrations
    traced = feature_extraction.create_feature_extractor(
        model,
        train_return_nodes=[train_node],
        eval_return_nodes=[eval_node],
        tracer_kwargs=dict(
            leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions()
        ),
    )
    (out,) = traced(x).values()
    expected = eager(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out.square().sum().backward()
    expected.square().sum().backward()
    eager_params = dict(eager.named_parameters())
    for name, param in traced.named_parameters():
        assert param.grad is not None, name
        torch.testing.assert_close(param.grad, eager_params[name].grad, msg=name)
    eager_state = eager.state_dict()
    for key, value in traced.state_dict().items():  # BN statistics and DSSA rates advanced alike
        torch.testing.assert_close(value, eager_state[key], msg=key)


@pytest.mark.parametrize("case", CASES)
def test_features_only_with_the_fx_feature_class(case):
    torch.manual_seed(0)
    features = build(case, features_only=True, feature_cls="fx", out_indices=(0, 1)).eval()
    torch.manual_seed(0)
    model = build(case).eval()
    x = image(model)
    with torch.no_grad():
        maps = features(x)
        # FX returns each unit's own output: time-major [T, B, C, H, W]
        _, expected = model.forward_intermediates(x, indices=[0, 1], time_reduction="none")
    assert len(maps) == 2
    for traced_map, eager_map in zip(maps, expected, strict=True):
        torch.testing.assert_close(traced_map, eager_map.transpose(0, 1), rtol=0, atol=0)
