"""benchmarks/peers/authors.py: the authors' configurations, and several authors' codes loaded
side by side in one process.

The authors' repositories are not fetched here: two stand-in repositories, both with a
top-level ``model`` module (as Spikformer's, Spikingformer's and QKFormer's are), and a
stand-in spikingjelly 0.0.0.0.14 whose neurons refuse ``backend="cupy"`` without CuPy, are
written to a temporary peers folder.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch

from spikezoo.models._registry import timm_module_name

STAND_IN_FILES = {
    "sj014/spikingjelly/__init__.py": "",
    "sj014/spikingjelly/clock_driven/__init__.py": "",
    "sj014/spikingjelly/clock_driven/functional.py": """
        def reset_net(net):
            net.resets = getattr(net, "resets", 0) + 1
    """,
    "sj014/spikingjelly/clock_driven/neuron.py": """
        import torch

        def check_backend(backend):
            if backend == "cupy":
                raise ImportError("CuPy is not installed")

        class MultiStepLIFNode(torch.nn.Module):
            def __init__(self, backend="torch"):
                super().__init__()
                check_backend(backend)
                self.backend = backend

            def forward(self, x):
                return (x >= 1).to(x.dtype)
    """,
    "sj014/spikingjelly/activation_based/__init__.py": "",
    "sj014/spikingjelly/activation_based/base.py": """
        def check_backend_library(backend):
            if backend == "cupy":
                raise ImportError("CuPy is not installed")
    """,
    "sj014/spikingjelly/activation_based/functional.py": "def reset_net(net):\n    pass\n",
    "deps/torchinfo/__init__.py": "",
}

MODEL_FILE = """
    import spikingjelly
    import torch
    import torchinfo
    from spikingjelly.clock_driven.neuron import MultiStepLIFNode

    class Net(torch.nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.neuron = MultiStepLIFNode(backend="cupy")
            self.scale = scale

        def forward(self, x):
            return self.neuron(x * self.scale).flatten(1)

    class Plain(torch.nn.Module):  # no spikingjelly neuron, as E-SpikeFormer
        def forward(self, x):
            return torch.round(x.clamp(0, 4))
"""


@pytest.fixture(scope="module")
def authors(benchmarks_path):
    return importlib.import_module("peers.authors")


@pytest.fixture
def stand_ins(authors, tmp_path, monkeypatch):
    """Two stand-in repositories ``a`` and ``b`` (``cifar10/model.py`` each, scaling their
    input by 1 and 2) and the models ``net_a`` and ``net_b`` built from them."""
    files = dict(STAND_IN_FILES)
    files["src/a/cifar10/model.py"] = MODEL_FILE
    files["src/b/cifar10/model.py"] = MODEL_FILE
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    sources = {
        folder: authors.AuthorsSource(folder, "cifar10", "model", frozenset({"model"}), "logits")
        for folder in ("a", "b")
    }
    configs = {
        "net_a": authors.AuthorsConfig("a", "Net", dict(scale=1.0)),
        "net_b": authors.AuthorsConfig("b", "Net", dict(scale=2.0), attributes=dict(T=3)),
        "plain": authors.AuthorsConfig("a", "Plain", {}),
    }
    monkeypatch.setattr(authors, "PEERS_DIR", tmp_path)
    monkeypatch.setattr(authors, "SOURCES", sources)
    monkeypatch.setattr(authors, "AUTHORS_CONFIGS", configs)
    monkeypatch.setattr(authors, "_loaded", {})
    return tmp_path


def test_two_repositories_with_the_same_module_names_load_side_by_side(authors, stand_ins):
    import spikingjelly  # 2.x, which the authors' copies must not replace

    before = {name: sys.modules.get(name) for name in ("spikingjelly", "model", "torchinfo")}
    net_a, backend_a = authors.build_authors_model("net_a", torch.device("cpu"))
    net_b, backend_b = authors.build_authors_model("net_b", torch.device("cpu"))

    assert {name: sys.modules.get(name) for name in before} == before
    assert sys.modules["spikingjelly"] is spikingjelly
    class_a, class_b = type(net_a.net), type(net_b.net)
    assert class_a is not class_b
    # each repository keeps the stand-in spikingjelly it was imported with, its own copy
    sj_a, sj_b = (
        class_a.forward.__globals__["spikingjelly"],
        class_b.forward.__globals__["spikingjelly"],
    )
    assert sj_a is not sj_b and sj_a is not spikingjelly
    assert Path(sj_a.__file__).is_relative_to(stand_ins / "sj014")
    # neurons asked for CuPy: built with the check off, then run on the torch backend
    assert backend_a == backend_b == "torch"
    assert net_a.net.neuron.backend == net_b.net.neuron.backend == "torch"
    with pytest.raises(ImportError, match="CuPy is not installed"):
        sj_a.clock_driven.neuron.check_backend("cupy")  # the check is back on
    assert net_b.net.T == 3 and not hasattr(net_a.net, "T")

    x = torch.tensor([[0.6, 1.2]])
    torch.testing.assert_close(net_a(x), torch.tensor([[0.0, 1.0]]))
    torch.testing.assert_close(net_b(x), torch.tensor([[1.0, 1.0]]))
    assert net_a.net.resets == net_b.net.resets == 1  # reset_net once per batch
    plain, backend = authors.build_authors_model("plain", torch.device("cpu"))
    assert backend == "no spikingjelly neurons" and type(plain.net).__module__ == "model"


def test_missing_peers_name_the_files(authors, stand_ins):
    assert authors.peers_missing() is None
    (stand_ins / "src/b/cifar10/model.py").unlink()
    assert authors.peers_missing("a") is None
    missing = authors.peers_missing("b")
    assert missing.startswith("run benchmarks/setup_peers.sh first (missing ")
    assert str(stand_ins / "src/b/cifar10/model.py") in missing
    with pytest.raises(RuntimeError, match=r"setup_peers\.sh"):
        authors.build_authors_model("net_b", torch.device("cpu"))


def test_authors_model_output_conventions(authors):
    logits = torch.arange(6.0).reshape(3, 2)
    cases = {"tuple": (logits, None), "per_step": logits[None].expand(4, 3, 2), "logits": logits}
    for output, returned in cases.items():
        model = authors.AuthorsModel(lambda x, r=returned: r, lambda net: None, output)
        torch.testing.assert_close(model(torch.zeros(3, 1)), logits)
    with pytest.raises(ValueError, match="output must be one of tuple, per_step, logits, got 'x'"):
        authors.AuthorsModel(torch.nn.Identity(), lambda net: None, "x")


def test_every_benchmarked_model_is_registered_and_has_its_authors_config(authors, benchmarks_path):
    zoo = importlib.import_module("whole_models.zoo")
    for name, spec in zoo.MODELS.items():
        architecture = spec.timm_name or name
        assert timm.is_model(architecture), name
        module = timm.models.model_entrypoint(architecture).__module__
        assert timm_module_name(module) == timm_module_name(spec.family), name
        if spec.authors:
            assert name in authors.AUTHORS_CONFIGS, name
    for name, config in authors.AUTHORS_CONFIGS.items():
        assert timm.is_model(name), name
        source = authors.SOURCES[config.source]
        assert source.output in authors.OUTPUTS
        # the authors' module's top-level package is kept out of the rest of the process
        assert source.module.partition(".")[0] in source.isolated
