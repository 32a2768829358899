"""The optimised model under torch.compile: one graph per model, the same outputs.

Compiling is slow on a small CPU, so this module compiles one tiny model once; the graph-break
check only traces (``torch._dynamo.explain`` runs no code generation).
"""

import pytest
import torch

from spikezoo.deploy import optimize
from tests.deploy.test_optimize import randomise_norms, record_spikes, threshold_margin
from tests.models.families import FAMILY_NAMES, tiny, tiny_family
from tests.models.test_behaviour import image

pytestmark = pytest.mark.slow  # whole-model compilation


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    # the families share SpikingVisionModel.forward: each test starts from a clean cache
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_one_graph_without_breaks(family):
    optimised = optimize(tiny(family).double(), compile=False)
    explanation = torch._dynamo.explain(optimised)(image(optimised).double())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_model_gives_the_plain_outputs():
    family = "spike_driven_transformer"
    plain = randomise_norms(tiny(family, **tiny_family(family).shallow)).double().eval()
    compiled = optimize(plain)
    assert compiled.deploy_report.compiled and isinstance(compiled, torch._dynamo.OptimizedModule)
    x = image(plain, batch=1).double()
    logits, inputs, _ = record_spikes(plain, x)
    assert threshold_margin(inputs) > 1e-9, "a membrane sits too close to its threshold"
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), logits, rtol=1e-10, atol=1e-12)
