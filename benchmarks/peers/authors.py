"""The authors' models, from the pinned copies that ``benchmarks/setup_peers.sh`` fetched.

Spike-Driven Transformer (BICLab) and SpikingResformer (xyshi2000) were written for
spikingjelly 0.0.0.0.14, whose top-level package name is the same as the spikingjelly 2.x that
spikezoo's environment has. ``setup_peers.sh`` installs 0.0.0.0.14 into its own folder
(``pip --target``); :func:`isolated_import` imports the authors' code with that folder first on
``sys.path`` and with no ``spikingjelly`` (nor the authors' generic top-level names ``model``,
``module``, ``models``) in ``sys.modules``, then moves the modules it loaded out of
``sys.modules`` and puts back what was there. The authors' classes keep their references to
the 0.0.0.0.14 modules (neither package imports anything lazily), and ``import spikingjelly``
elsewhere in the process still gives 2.x, so both run in one process.

Both codes hard-wire ``backend="cupy"``. Where CuPy cannot run (the CPU), the neurons are
built with the CuPy check switched off for the duration of the constructor and then set to
the ``"torch"`` backend: an attribute change at run time, the authors' files stay as fetched.
Their ``timm.models.registry.register_model`` decorator is made a no-op while their files are
imported, so that ``spikingresformer_ti`` and friends in timm's registry stay spikezoo's.
"""

from __future__ import annotations

import contextlib
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


def peers_missing() -> str | None:
    """Why the authors' peers cannot run (``None`` if they can)."""
    needed = [
        PEERS_DIR / "sj014" / "spikingjelly" / "__init__.py",
        PEERS_DIR / "src" / "sdt" / "model" / "spikeformer.py",
        PEERS_DIR / "src" / "spikingresformer" / "models" / "spikingresformer.py",
    ]
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


class AuthorsModel(nn.Module):
    """An authors' network with the calling convention of a spikezoo model.

    ``forward(images [B, C, H, W]) -> logits [B, K]``: resets the neurons first (the authors'
    training and evaluation loops call ``reset_net`` once per batch) and averages per-step
    logits over time where the authors' forward leaves that to the caller.
    """

    def __init__(self, net: nn.Module, reset_net: Callable[[nn.Module], None], output: str):
        super().__init__()
        self.net = net
        self.reset_net = reset_net
        self.output = output

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C, H, W]`` -> ``[B, K]``."""
        self.reset_net(self.net)
        out = self.net(x)
        if self.output == "tuple":  # SDT: (logits [B, K], hook)
            return out[0]
        return out.mean(0)  # SpikingResformer: per-step logits [T, B, K]


# Constructor arguments of the authors' code for the benchmarked models (their configs:
# SDT conf/imagenet/8_384_300E_t4.yml, 8_768_300E_t4.yml and conf/cifar10/2_512_300E_t4.yml;
# SpikingResformer models/spikingresformer.py and configs/).
_SDT = dict(patch_size=16, in_channels=3, num_heads=8, mlp_ratios=4, T=4, spike_mode="lif")
AUTHORS_CONFIGS: dict[str, tuple[str, str, dict]] = {
    "sdt_8_384": (
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
    "sdt_2_512_cifar": (
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
    "sdt_8_768": (
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
    "spikingresformer_s": (
        "spikingresformer",
        "spikingresformer_s",
        dict(T=4, num_classes=1000, img_size=224),
    ),
    "spikingresformer_ti": (
        "spikingresformer",
        "spikingresformer_ti",
        dict(T=4, num_classes=1000, img_size=224),
    ),
    "spikingresformer_cifar": (
        "spikingresformer",
        "spikingresformer_cifar",
        dict(T=4, num_classes=10, img_size=32),
    ),
}

_FAMILIES = {
    # source folder: (top-level names to isolate, module with the builders, reset_net's module)
    "sdt": ({"spikingjelly", "model", "module"}, "model.spikeformer", "clock_driven"),
    "spikingresformer": ({"spikingjelly", "models"}, "models.spikingresformer", "activation_based"),
}
_loaded: dict[str, dict[str, ModuleType]] = {}


def _family_modules(source: str) -> dict[str, ModuleType]:
    if source not in _loaded:
        names, builders, clock = _FAMILIES[source]
        with isolated_import([PEERS_DIR / "sj014", PEERS_DIR / "src" / source], names) as loaded:
            importlib.import_module(builders)
            importlib.import_module(f"spikingjelly.{clock}.functional")
            importlib.import_module("spikingjelly.clock_driven.neuron")
            importlib.import_module("spikingjelly.activation_based.base")
        _loaded[source] = loaded
    return _loaded[source]


def build_authors_model(name: str, device: torch.device) -> tuple[AuthorsModel, str]:
    """The authors' ``name`` with random weights (their init), and the neuron backend it runs.

    Raises ``RuntimeError`` naming the setup step if the peers are not installed.
    """
    missing = peers_missing()
    if missing:
        raise RuntimeError(missing)
    source, builder, kwargs = AUTHORS_CONFIGS[name]
    modules = _family_modules(source)
    build = getattr(modules[_FAMILIES[source][1]], builder)
    reset_net = modules[f"spikingjelly.{_FAMILIES[source][2]}.functional"].reset_net
    if cupy_usable(device):
        net, backend = build(**kwargs), "cupy"
    else:
        with _cupy_check_off(modules):
            net = build(**kwargs)
        _to_torch_backend(net)
        backend = "torch"
    output = "tuple" if source == "sdt" else "per_step"
    return AuthorsModel(net, reset_net, output).to(device), backend
