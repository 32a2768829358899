"""The benchmarked models and the implementations that run them, all with the same weights."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import timm
import torch
from peers.authors import AUTHORS_CONFIGS, build_authors_model, peers_missing
from torch import nn

import spikezoo  # noqa: F401  (registers the models with timm)
from spikezoo.analysis import set_batchnorm_statistics
from spikezoo.models import (
    qkformer,
    spike_driven_transformer,
    spike_driven_transformer_v2,
    spike_driven_transformer_v3,
    spikformer,
    spiking_resformer,
    spikingformer,
)

TASKS = ("infer", "train")


@dataclasses.dataclass
class ModelSpec:
    """A benchmarked model: timm name, input size and batch size per device kind."""

    name: str
    img_size: int
    batch: dict[str, int]
    family: object
    create_kwargs: dict = dataclasses.field(default_factory=dict)
    authors: bool = True
    timm_name: str = ""  # default: name


MODELS = {
    spec.name: spec
    for spec in (
        ModelSpec("sdt_8_384", 224, {"cpu": 1, "quick": 1, "cuda": 32}, spike_driven_transformer),
        ModelSpec(
            "sdt_2_512_cifar", 32, {"cpu": 4, "quick": 1, "cuda": 128}, spike_driven_transformer
        ),
        ModelSpec(
            "spikingresformer_ti", 224, {"cpu": 1, "quick": 1, "cuda": 32}, spiking_resformer
        ),
        ModelSpec(
            "spikingresformer_cifar", 32, {"cpu": 4, "quick": 1, "cuda": 128}, spiking_resformer
        ),
        # the later families at half the CPU batch of the CIFAR models above, and E-SpikeFormer
        # at 128x128 (fully convolutional, no position embedding: every layer's work scales
        # with the pixels alike), so that a full CPU run stays near 35 minutes
        ModelSpec("spikformer_4_384_cifar", 32, {"cpu": 2, "quick": 1, "cuda": 128}, spikformer),
        ModelSpec(
            "spikingformer_4_384_cifar", 32, {"cpu": 2, "quick": 1, "cuda": 128}, spikingformer
        ),
        ModelSpec("qkformer_4_384_cifar", 32, {"cpu": 2, "quick": 1, "cuda": 128}, qkformer),
        # T=1, the first of the authors' two training stages (train.sh, then
        # train_finetune_from_t1_to_t4.sh): a quarter of the T=4 cost on a CPU
        ModelSpec(
            "sdt_v2_8_384",
            224,
            {"cpu": 1, "quick": 1, "cuda": 32},
            spike_driven_transformer_v2,
            create_kwargs=dict(time_steps=1),
        ),
        ModelSpec("sdt_v3_t", 128, {"cpu": 1, "quick": 1, "cuda": 32}, spike_driven_transformer_v3),
    )
}


class Unavailable(Exception):
    """An implementation that cannot run here; the message says why."""


@dataclasses.dataclass
class Runner:
    """One implementation of one model: a module taking ``[B, C, H, W]`` to logits ``[B, K]``."""

    name: str
    model: nn.Module
    tasks: tuple[str, ...] = TASKS
    compilable: bool = True
    note: str = ""
    #: the fraction of spikes that may differ from spikezoo's, with any logit difference: for a
    #: model whose weights were rewritten in float32 (BatchNorm folding), a membrane within
    #: rounding of its threshold can fire differently
    spike_rounding: float = 0.0


def make_authors(spec: ModelSpec, shared: dict) -> Runner:
    """The authors' model built in :func:`build_weights` (their code, spikingjelly 0.0.0.0.14)."""
    if not spec.authors:
        raise Unavailable("no authors' configuration for this model")
    missing = peers_missing(AUTHORS_CONFIGS[spec.name].source)
    if missing:
        raise Unavailable(missing)
    model, backend = shared["authors"]
    note = backend if backend.startswith("no ") else f"spikingjelly 0.0.0.0.14, {backend} backend"
    return Runner("authors", model, note=note)


def make_spikezoo(spec: ModelSpec, shared: dict) -> Runner:
    """spikezoo's timm model, the reference of every ratio."""
    return Runner("spikezoo", shared["spikezoo"], note="timm.create_model, default neuron backend")


def make_deploy(spec: ModelSpec, shared: dict) -> Runner:
    """A copy of spikezoo's model after ``spikezoo.deploy.optimize`` (inference only)."""
    from spikezoo.deploy import optimize

    return Runner(
        "spikezoo+deploy",
        optimize(shared["spikezoo"]),
        tasks=("infer",),
        compilable=False,
        note="spikezoo.deploy.optimize(model): BatchNorm folded, channels_last, torch.compile",
        spike_rounding=1e-3,
    )


def make_sj2(spec: ModelSpec, shared: dict) -> Runner:
    """The network rebuilt from spikingjelly 2.x layers with spikezoo's weights."""
    try:
        from peers.sj2_models import SJ2_MODEL_CLASSES, build_sj2_model
    except ImportError as error:
        raise Unavailable(f"spikingjelly 2.x is not installed ({error})") from error
    model = shared["spikezoo"]
    if not isinstance(model, SJ2_MODEL_CLASSES):
        written = ", ".join(cls.__name__ for cls in SJ2_MODEL_CLASSES)
        raise Unavailable(
            f"no spikingjelly 2.x network of {type(model).__name__} is written "
            f"(peers/sj2_models.py has {written})"
        )
    import spikingjelly

    version = getattr(spikingjelly, "__version__", "2.x")
    return Runner(
        "spikingjelly2",
        build_sj2_model(model),
        note=f"spikingjelly {version} activation_based layers, step_mode='m', reset_net per batch",
    )


#: name -> factory(spec, shared models) -> Runner; raises Unavailable (row skipped, reason kept).
RUNNERS: dict[str, Callable[[ModelSpec, dict], Runner]] = {
    "spikezoo": make_spikezoo,
    "spikezoo+deploy": make_deploy,
    "authors": make_authors,
    "spikingjelly2": make_sj2,
}


def build_weights(
    spec: ModelSpec, device: torch.device, batch: int, seed: int, with_authors: bool
) -> dict:
    """The shared models: the authors' (if wanted and installed) and spikezoo's, same weights.

    The authors' model gets their seeded initialisation and the BatchNorm statistics of a random
    batch; the family's ``checkpoint_filter_fn`` maps its state dict into spikezoo's model.
    Without it, spikezoo's own model gets those statistics.
    """
    shared: dict = {}
    torch.manual_seed(seed)
    calib = torch.randn(max(batch, 2), 3, spec.img_size, spec.img_size, device=device)
    authors = None
    if with_authors and spec.authors and not peers_missing(AUTHORS_CONFIGS[spec.name].source):
        authors, backend = build_authors_model(spec.name, device)
        set_batchnorm_statistics(authors, calib)
        shared["authors"] = (authors, backend)
    zoo = timm.create_model(spec.timm_name or spec.name, **spec.create_kwargs).to(device)
    if authors is not None:
        zoo.load_state_dict(spec.family.FAMILY.checkpoint_filter_fn(authors.net.state_dict(), zoo))
    else:
        set_batchnorm_statistics(zoo, calib)
    shared["spikezoo"] = zoo.eval()
    return shared


def build_runners(spec: ModelSpec, names: list[str], shared: dict) -> tuple[list[Runner], dict]:
    """The runners of ``names`` that can run here, and the reason for each that cannot."""
    runners, skipped = [], {}
    for name in names:
        try:
            runners.append(RUNNERS[name](spec, shared))
        except Unavailable as reason:
            skipped[name] = str(reason)
            print(f"  [{spec.name}] skipping {name}: {reason}", flush=True)
    return runners, skipped
