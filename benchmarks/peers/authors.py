"""The authors' models, from the pinned copies that ``benchmarks/setup_peers.sh`` fetched.

Spike-Driven Transformer V1 and V2 (BICLab), SpikingResformer (xyshi2000), Spikformer
(ZK-Zhou), Spikingformer and QKFormer (zhouchenlin2096) were written for spikingjelly
0.0.0.0.14, whose top-level package name is the same as the spikingjelly 2.x that spikezoo's
environment has; E-SpikeFormer (Spike-Driven Transformer V3, BICLab) needs no spikingjelly.
``setup_peers.sh`` installs 0.0.0.0.14 into its own folder (``pip --target``), and torchinfo,
which the V2 and V3 files import, into another; :func:`isolated_import` imports one authors'
code with those folders first on ``sys.path`` and with no ``spikingjelly``, ``torchinfo`` nor the
authors' generic top-level names (``model``, ``module``, ``models``) in ``sys.modules``, then
moves the modules it loaded out of ``sys.modules`` and puts back what was there. The authors'
classes keep their references to the modules they were loaded with (none imports anything
lazily), so several repositories whose model files are all called ``model`` or ``models`` load
side by side in one process, each with its own copy of spikingjelly 0.0.0.0.14, and ``import
spikingjelly`` elsewhere in the process still gives 2.x.

The spikingjelly codes hard-wire ``backend="cupy"``. Where CuPy cannot run (the CPU), the
neurons are built with the CuPy check switched off for the duration of the constructor and then
set to the ``"torch"`` backend: an attribute change at run time, the authors' files stay as
fetched. Their ``timm.models.registry.register_model`` decorator is made a no-op while their
files are imported, so that ``spikingresformer_ti`` and friends in timm's registry stay
spikezoo's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn

#: Folder that ``setup_peers.sh`` filled (``SPIKEZOO_PEERS_DIR`` overrides it).
PEERS_DIR = Path(
    os.environ.get("SPIKEZOO_PEERS_DIR", Path(__file__).resolve().parents[1] / ".peers")
)


def peers_missing(source: str | None = None) -> str | None:
    """Why the authors' code of ``source`` (default: every source) cannot run (``None``: it
    can)."""
    sources = SOURCES if source is None else {source: SOURCES[source]}
    needed = [PEERS_DIR / "sj014" / "spikingjelly" / "__init__.py"]
    needed += [PEERS_DIR / "deps" / "torchinfo" / "__init__.py"]
    needed += [src.model_file for src in sources.values()]
    absent = [str(path) for path in needed if not path.exists()]
    if absent:
        return f"run benchmarks/setup_peers.sh first (missing {', '.join(absent)})"
    return None


def _top(name: str) -> str:
    return name.partition(".")[0]


@contextlib.contextmanager
def isolated_import(paths: list[Path], names: set[str]) -> Iterator[dict[str, ModuleType]]:
    """Import from ``paths`` with the top-level packages ``names`` unloaded, then restore them.

    Yields a dict that, on exit, holds the modules loaded inside (by full name).
    """
    saved = {key: sys.modules.pop(key) for key in list(sys.modules) if _top(key) in names}
    loaded: dict[str, ModuleType] = {}
    sys.path[:0] = [str(path) for path in paths]
    importlib.invalidate_caches()
    registry = importlib.import_module("timm.models.registry")
    register_model = registry.register_model
    registry.register_model = lambda fn: fn
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield loaded
    finally:
        registry.register_model = register_model
        del sys.path[: len(paths)]
        loaded.update(
            {key: sys.modules.pop(key) for key in list(sys.modules) if _top(key) in names}
        )
        sys.modules.update(saved)
        importlib.invalidate_caches()


def cupy_usable(device: torch.device) -> bool:
    """Whether the authors' CuPy backend can run on ``device``."""
    if device.type != "cuda":
        return False
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _cupy_check_off(modules: dict[str, ModuleType]) -> Iterator[None]:
    """Let the authors' constructors ask for ``backend="cupy"`` without CuPy."""
    patched = []
    for name, attribute in (
        ("spikingjelly.clock_driven.neuron", "check_backend"),
        ("spikingjelly.activation_based.base", "check_backend_library"),
    ):
        module = modules[name]
        patched.append((module, attribute, getattr(module, attribute)))
        setattr(module, attribute, lambda backend: None)
    try:
        yield
    finally:
        for module, attribute, original in patched:
            setattr(module, attribute, original)


def _to_torch_backend(net: nn.Module) -> int:
    """Switch every neuron of ``net`` that asks for CuPy to the torch backend; returns how many."""
    switched = 0
    for module in net.modules():
        if getattr(module, "backend", None) == "cupy":
            module.backend = "torch"
            switched += 1
    return switched


#: What an authors' forward returns: ``(logits, hook)``, per-step logits ``[T, B, K]`` or
#: logits ``[B, K]``.
OUTPUTS = ("tuple", "per_step", "logits")


class AuthorsModel(nn.Module):
    """An authors' network with the calling convention of a spikezoo model.

    ``forward(images [B, C, H, W]) -> logits [B, K]``: resets the neurons first (the authors'
    training and evaluation loops call ``reset_net`` once per batch) and averages per-step
    logits over time where the authors' forward leaves that to the caller.
    """

    def __init__(self, net: nn.Module, reset_net: Callable[[nn.Module], None], output: str):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        self.net = net
        self.reset_net = reset_net
        self.output = output

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C, H, W]`` -> ``[B, K]``."""
        self.reset_net(self.net)
        out = self.net(x)
        if self.output == "tuple":  # SDT: (logits [B, K], hook)
            return out[0]
        if self.output == "per_step":  # SpikingResformer: per-step logits [T, B, K]
            return out.mean(0)
        return out


@dataclasses.dataclass(frozen=True)
class AuthorsSource:
    """One authors' repository, as ``setup_peers.sh`` unpacks it into ``src/<folder>``.

    ``module`` (dotted, e.g. ``model.spikeformer``) is imported with ``src/<folder>/<root>`` on
    ``sys.path``; ``isolated``: the top-level names the repository's imports bring (the
    packages of ``module`` and its siblings), kept out of the rest of the process.
    """

    folder: str
    root: str
    module: str
    isolated: frozenset[str]
    output: str
    #: spikingjelly 0.0.0.0.14's API whose ``functional.reset_net`` resets the neurons
    clock: str = "clock_driven"

    @property
    def model_file(self) -> Path:
        return PEERS_DIR / "src" / self.folder / self.root / (self.module.replace(".", "/") + ".py")


SOURCES: dict[str, AuthorsSource] = {
    "sdt": AuthorsSource("sdt", ".", "model.spikeformer", frozenset({"model", "module"}), "tuple"),
    "spikingresformer": AuthorsSource(
        "spikingresformer",
        ".",
        "models.spikingresformer",
        frozenset({"models"}),
        "per_step",
        clock="activation_based",
    ),
    "sdt2": AuthorsSource("sdt2", "classification", "models", frozenset({"models"}), "logits"),
    "sdt3": AuthorsSource(
        "sdt3", "SDT_V3/Classification/Model_Base", "models", frozenset({"models"}), "logits"
    ),
    "spikformer": AuthorsSource("spikformer", "cifar10", "model", frozenset({"model"}), "logits"),
    "spikingformer": AuthorsSource(
        "spikingformer", "cifar10", "model", frozenset({"model"}), "logits"
    ),
    "qkformer": AuthorsSource("qkformer", "cifar10", "model", frozenset({"model"}), "logits"),
}


@dataclasses.dataclass(frozen=True)
class AuthorsConfig:
    """How the authors' code builds one benchmarked model: ``builder(**kwargs)`` from the
    source's module, then ``attributes`` set on the network (Meta-SpikeFormer's training script
    sets ``model.T`` after construction)."""

    source: str
    builder: str
    kwargs: dict
    attributes: dict = dataclasses.field(default_factory=dict)


# Constructor arguments of the authors' code for the benchmarked models (their configs:
# SDT conf/imagenet/8_384_300E_t4.yml, 8_768_300E_t4.yml and conf/cifar10/2_512_300E_t4.yml;
# SpikingResformer models/spikingresformer.py and configs/; Spikformer, Spikingformer and
# QKFormer cifar10/cifar10.yml as their cifar10/train.py passes it; Meta-SpikeFormer's and
# E-SpikeFormer's named builders; Meta-SpikeFormer at T=1, its first training stage, as
# benchmarks/whole_models/zoo.py builds spikezoo's).
_SDT = dict(patch_size=16, in_channels=3, num_heads=8, mlp_ratios=4, T=4, spike_mode="lif")
_CIFAR = dict(
    img_size_h=32, img_size_w=32, patch_size=4, in_channels=3, num_classes=10, embed_dims=384,
    mlp_ratios=4, qkv_bias=False, depths=4, sr_ratios=1, T=4,
)  # fmt: skip
AUTHORS_CONFIGS: dict[str, AuthorsConfig] = {
    "sdt_8_384": AuthorsConfig(
        "sdt",
        "sdt",
        dict(
            _SDT,
            img_size_h=224,
            img_size_w=224,
            embed_dims=384,
            depths=8,
            num_classes=1000,
            pooling_stat="1111",
        ),
    ),
    "sdt_2_512_cifar": AuthorsConfig(
        "sdt",
        "sdt",
        dict(
            _SDT,
            img_size_h=32,
            img_size_w=32,
            embed_dims=512,
            depths=2,
            num_classes=10,
            pooling_stat="0011",
        ),
    ),
    "sdt_8_768": AuthorsConfig(
        "sdt",
        "sdt",
        dict(
            _SDT,
            img_size_h=224,
            img_size_w=224,
            embed_dims=768,
            depths=8,
            num_classes=1000,
            pooling_stat="1111",
        ),
    ),
    "spikingresformer_s": AuthorsConfig(
        "spikingresformer", "spikingresformer_s", dict(T=4, num_classes=1000, img_size=224)
    ),
    "spikingresformer_ti": AuthorsConfig(
        "spikingresformer", "spikingresformer_ti", dict(T=4, num_classes=1000, img_size=224)
    ),
    "spikingresformer_cifar": AuthorsConfig(
        "spikingresformer", "spikingresformer_cifar", dict(T=4, num_classes=10, img_size=32)
    ),
    "sdt_v2_8_384": AuthorsConfig("sdt2", "metaspikformer_8_384", {}, attributes=dict(T=1)),
    "sdt_v3_t": AuthorsConfig("sdt3", "Efficient_Spiking_Transformer_t", {}),
    "spikformer_4_384_cifar": AuthorsConfig("spikformer", "Spikformer", dict(_CIFAR, num_heads=12)),
    "spikingformer_4_384_cifar": AuthorsConfig(
        "spikingformer", "vit_snn", dict(_CIFAR, num_heads=12)
    ),
    "qkformer_4_384_cifar": AuthorsConfig(
        "qkformer", "spiking_transformer", dict(_CIFAR, num_heads=8)
    ),
}

#: torchinfo: imported at the top of the Meta-SpikeFormer and E-SpikeFormer model files
_ALWAYS_ISOLATED = frozenset({"spikingjelly", "torchinfo"})
_loaded: dict[str, dict[str, ModuleType]] = {}


def _source_modules(source: str) -> dict[str, ModuleType]:
    """The modules of one authors' source, imported once, in isolation (by full name)."""
    import numpy

    if not hasattr(numpy, "int"):  # spikingjelly 0.0.0.0.14's CuPy kernels compare with np.int
        numpy.int = int  # (an alias of int that NumPy 1.24 removed)
    if source not in _loaded:
        src = SOURCES[source]
        paths = [PEERS_DIR / "sj014", PEERS_DIR / "deps", PEERS_DIR / "src" / src.folder / src.root]
        with isolated_import(paths, src.isolated | _ALWAYS_ISOLATED) as loaded:
            importlib.import_module(src.module)
            importlib.import_module(f"spikingjelly.{src.clock}.functional")
            importlib.import_module("spikingjelly.clock_driven.neuron")
            importlib.import_module("spikingjelly.activation_based.base")
        _loaded[source] = loaded
    return _loaded[source]


def authors_module(source: str) -> ModuleType:
    """The model module of the authors' ``source`` (a key of :data:`SOURCES`), imported once,
    in isolation: for a benchmark of one of its layers.

    Raises ``RuntimeError`` naming the setup step if the peers are not installed.
    """
    missing = peers_missing(source)
    if missing:
        raise RuntimeError(missing)
    return _source_modules(source)[SOURCES[source].module]


def build_authors_model(name: str, device: torch.device) -> tuple[AuthorsModel, str]:
    """The authors' ``name`` with random weights (their init), and the neuron backend it runs
    (``"cupy"``, ``"torch"``, or ``"no spikingjelly neurons"``).

    Raises ``RuntimeError`` naming the setup step if the peers are not installed.
    """
    config = AUTHORS_CONFIGS[name]
    missing = peers_missing(config.source)
    if missing:
        raise RuntimeError(missing)
    src = SOURCES[config.source]
    modules = _source_modules(config.source)
    build = getattr(modules[src.module], config.builder)
    reset_net = modules[f"spikingjelly.{src.clock}.functional"].reset_net
    if cupy_usable(device):
        net, backend = build(**config.kwargs), "cupy"
    else:
        with _cupy_check_off(modules):
            net = build(**config.kwargs)
        _to_torch_backend(net)
        backend = "torch"
    if not any(hasattr(module, "backend") for module in net.modules()):
        backend = "no spikingjelly neurons"  # E-SpikeFormer: integer spikes in plain torch
    for attribute, value in config.attributes.items():
        setattr(net, attribute, value)
    return AuthorsModel(net, reset_net, src.output).to(device), backend
