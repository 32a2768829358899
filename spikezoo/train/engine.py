"""The training and evaluation loops behind ``spikezoo train`` / ``spikezoo validate``."""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import importlib.util
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from spikezoo._optional import optional_dependency
from spikezoo.neurons import MultiStepNeuron, set_backend
from spikezoo.neurons.model_backend import backend_for_work
from spikezoo.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    capture_rng_state,
    read_training_checkpoint,
    restore_rng_state,
    save_atomic,
)
from spikezoo.train.config import Config, RecipeError, config_to_dict
from spikezoo.train.data import Datasets, build_datasets, build_loaders
from spikezoo.train.distributed import (
    DistributedContext,
    all_gather_objects,
    init_distributed,
    reduce_sum,
    synchronize_buffers,
)
from spikezoo.train.logs import RunLog, plot_curves
from spikezoo.train.losses import build_loss
from spikezoo.weights import CheckpointFileError, read_checkpoint_contents, state_dict_in

if TYPE_CHECKING:
    from timm.data import Mixup
    from timm.scheduler.scheduler import Scheduler
    from timm.utils import ModelEmaV3

__all__ = [
    "TrainingError",
    "build_model",
    "evaluate",
    "train",
    "validate",
    "weights_fingerprint",
]


class TrainingError(RuntimeError):
    """Training stopped: a non-finite loss (the step is named; checkpoints are kept)."""


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(config: Config, datasets: Datasets) -> nn.Module:
    """``timm.create_model`` for the recipe: classes and channels from the dataset.

    With ``finetune.checkpoint`` the weights come from that file through timm's
    ``pretrained_cfg_overlay=dict(file=...)``; a head of another size is left freshly
    initialised.
    """
    import timm

    import spikezoo.models  # noqa: F401  (registers the models)

    name = config.model.name
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        hint = f"did you mean '{close[0]}'?" if close else "'spikezoo list' shows the models"
        raise RecipeError(f"model.name '{name}' is not a registered model ({hint})")
    kwargs: dict[str, Any] = dict(num_classes=datasets.num_classes, in_chans=datasets.in_chans)
    kwargs.update(config.model.kwargs)
    if config.loss.tet:
        kwargs["per_step_logits"] = True
    finetune = config.finetune
    if finetune.checkpoint is None:
        model = timm.create_model(name, **kwargs)
    else:
        classes = finetune.num_classes or _head_classes(finetune.checkpoint)
        size = config.data.img_size
        overlay = dict(
            file=str(finetune.checkpoint),
            num_classes=classes,
            input_size=(kwargs["in_chans"], size, size),
        )
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    if config.model.neuron_backend != "auto" and _is_spiking(model):
        set_backend(model, config.model.neuron_backend)
    return model


def _is_spiking(model: nn.Module) -> bool:
    """Whether ``model`` has spikezoo neurons (a non-spiking baseline has none)."""
    return any(isinstance(module, MultiStepNeuron) for module in model.modules())


def _head_classes(path: str | Path) -> int:
    """Classes of a checkpoint's head: its ``num_classes`` entry or ``head.weight`` rows."""
    try:
        checkpoint = read_checkpoint_contents(path)
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get("num_classes"), int):
            return checkpoint["num_classes"]
        head = state_dict_in(checkpoint, path).get("head.weight")
    except CheckpointFileError as error:
        raise CheckpointError(f"finetune.checkpoint: {error}") from None
    if head is None:
        raise CheckpointError(
            f"checkpoint '{path}' has no head.weight; set finetune.num_classes to its head size"
        )
    return head.shape[0]


def _autocast(context: DistributedContext, enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.float16 if context.device.type == "cuda" else torch.bfloat16
    return torch.autocast(context.device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, context: DistributedContext, amp: bool = False
) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (%) over the whole evaluation set, summed over ranks."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)
    for images, targets in loader:
        images, targets = images.to(context.device), targets.to(context.device)
        with _autocast(context, amp):
            outputs = model(images)
        outputs = outputs.float()
        if outputs.dim() == 3:
            outputs = outputs.mean(0)
        top = outputs.topk(min(5, outputs.shape[-1]), dim=-1).indices
        hits = top == targets[:, None]
        sums += torch.tensor(
            [
                nn.functional.cross_entropy(outputs, targets, reduction="sum").item(),
                hits[:, 0].sum().item(),
                hits.any(dim=-1).sum().item(),
                len(targets),
            ],
            dtype=torch.float64,
        )
    loss, top1, top5, count = reduce_sum(sums, context).tolist()
    return dict(loss=loss / count, top1=100 * top1 / count, top5=100 * top5 / count)


def _resume_path(config: Config) -> Path | None:
    resume = config.run.resume
    if resume == "auto":
        last = Path(config.run.output) / "last.pth"
        return last if last.exists() else None
    return None if resume is None else Path(resume)


def train(config: Config) -> dict[str, float]:
    """Train as ``config`` says; the final epoch's metrics plus ``best_top1``.

    Under torchrun (``WORLD_SIZE`` > 1) each process trains a shard through
    ``DistributedDataParallel``; rank 0 writes ``last.pth`` / ``best.pth`` (atomically),
    ``log.csv``, ``config.yaml`` and ``curves.png`` into ``run.output``. Raises
    :class:`RecipeError`, :class:`~spikezoo.train.data.DatasetError`,
    :class:`~spikezoo.train.checkpoint.CheckpointError` or :class:`TrainingError` (a
    non-finite loss) with a one-line message.
    """
    context = init_distributed(config.run.device)
    try:
        return _train(config, context)
    finally:
        if context.distributed:
            torch.distributed.destroy_process_group()


def _train(config: Config, context: DistributedContext) -> dict[str, float]:
    """The run on one rank: build, restore or seed, then train, evaluate, save per epoch."""
    if config.model.sync_bn and context.device.type != "cuda":
        raise RecipeError("model.sync_bn=true needs CUDA devices (SyncBatchNorm has no CPU kernel)")
    resume_path = _resume_path(config)
    # Read (and reject) the checkpoint before anything is built or written.
    resumed = read_training_checkpoint(resume_path) if resume_path is not None else None
    if config.run.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    run = _build_run(config, context)
    progress = _restore(run, resumed, resume_path)
    network = _distributed(run.model, context)
    log = _open_log(run, resumed is not None, progress.epoch)
    stop = run.epochs if config.run.stop_after is None else min(run.epochs, config.run.stop_after)
    metrics: dict[str, float] = {}
    for epoch in range(progress.epoch, stop):
        metrics = _train_epoch(run, network, progress, epoch)
        evaluated, is_best = _evaluate_epoch(run, progress, epoch)
        metrics.update(evaluated)
        progress.epoch = epoch + 1
        _save_checkpoint(run, progress, metrics, is_best)
        _log_epoch(run, log, epoch, metrics)
    _close_log(run, log)
    return dict(metrics, best_top1=progress.best_top1)


@dataclass
class _Run:
    """Everything one training run is made of; built once by :func:`_build_run`.

    ``epochs`` is the schedule's length (cool-down included); ``mixup`` is timm's ``Mixup``
    or ``None``; ``loss_of`` maps ``(outputs, targets)`` to the training loss.
    """

    config: Config
    context: DistributedContext
    datasets: Datasets
    model: nn.Module
    ema: ModelEmaV3 | None
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler | None
    scaler: torch.amp.GradScaler
    train_loader: DataLoader
    eval_loader: DataLoader
    sampler: DistributedSampler
    epochs: int
    mixup: Mixup | None
    loss_of: Callable[[Tensor, Tensor], Tensor]

    @property
    def output(self) -> Path:
        """The run folder (``run.output``)."""
        return Path(self.config.run.output)


@dataclass
class _Progress:
    """How far a run is: epochs and optimizer updates done, the best top-1 so far."""

    epoch: int = 0
    updates: int = 0
    best_top1: float = -math.inf


def _build_run(config: Config, context: DistributedContext) -> _Run:
    """Data, model (seeded with ``run.seed``), EMA, optimizer, loaders, schedule and loss."""
    from timm.utils import ModelEmaV3

    datasets = build_datasets(config.data)
    _seed_everything(config.run.seed)
    model = build_model(config, datasets).to(context.device)
    if config.model.sync_bn and context.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ema = ModelEmaV3(model, decay=config.model.ema_decay) if config.model.ema else None
    optimizer = _optimizer(config, model)
    train_loader, eval_loader, sampler = build_loaders(
        datasets, config.data, context, config.run.seed
    )
    scheduler, epochs = _schedule(config, optimizer, len(train_loader))
    mixup, loss_of = build_loss(config.loss, datasets.num_classes)
    return _Run(
        config=config,
        context=context,
        datasets=datasets,
        model=model,
        ema=ema,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(
            "cuda", enabled=config.run.amp and context.device.type == "cuda"
        ),
        train_loader=train_loader,
        eval_loader=eval_loader,
        sampler=sampler,
        epochs=epochs,
        mixup=mixup,
        loss_of=loss_of,
    )


def _optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` with the recipe's ``optim`` section."""
    from timm.optim import create_optimizer_v2

    optim = config.optim
    return create_optimizer_v2(
        model, opt=optim.opt, lr=optim.lr, weight_decay=optim.weight_decay, momentum=optim.momentum
    )


def _schedule(
    config: Config, optimizer: torch.optim.Optimizer, updates_per_epoch: int
) -> tuple[Scheduler | None, int]:
    """timm's ``create_scheduler_v2`` (stepped per update) and the epochs it spans."""
    from timm.scheduler import create_scheduler_v2

    sched = config.sched
    return create_scheduler_v2(
        optimizer,
        sched=sched.sched,
        num_epochs=config.run.epochs,
        decay_epochs=sched.decay_epochs,
        decay_rate=sched.decay_rate,
        min_lr=sched.min_lr,
        warmup_lr=sched.warmup_lr,
        warmup_epochs=sched.warmup_epochs,
        cooldown_epochs=sched.cooldown_epochs,
        updates_per_epoch=updates_per_epoch,
    )


def _restore(run: _Run, resumed: dict[str, Any] | None, path: Path | None) -> _Progress:
    """Load a checkpoint's weights, optimizer, schedule, scaler and this rank's RNG state.

    Without a checkpoint, seeds every RNG with ``run.seed + rank`` instead.
    """
    if resumed is None:
        _seed_everything(run.config.run.seed + run.context.rank)
        return _Progress()
    try:
        run.model.load_state_dict(resumed["state_dict"])
        run.optimizer.load_state_dict(resumed["optimizer"])
        if run.ema is not None:
            run.ema.module.load_state_dict(resumed["state_dict_ema"])
    except (RuntimeError, KeyError, ValueError) as error:
        reason = " ".join(str(error).split())[:200]
        raise CheckpointError(f"checkpoint '{path}' does not fit this recipe: {reason}") from error
    if run.scheduler is not None and resumed["scheduler"] is not None:
        run.scheduler.load_state_dict(resumed["scheduler"])
    if "scaler" in resumed:
        run.scaler.load_state_dict(resumed["scaler"])
    rng, context = resumed["rng"], run.context
    restore_rng_state(rng[context.rank] if len(rng) == context.world_size else rng[0])
    epoch = resumed["epoch"]
    return _Progress(epoch, epoch * len(run.train_loader), resumed.get("best_top1", -math.inf))


def _distributed(model: nn.Module, context: DistributedContext) -> nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` under torchrun, else ``model``."""
    if not context.distributed:
        return model
    device_ids = [context.local_rank] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _train_epoch(run: _Run, network: nn.Module, progress: _Progress, epoch: int) -> dict:
    """One pass over this rank's training shard: ``train_loss`` (mean over ranks) and ``lr``."""
    from tqdm import tqdm

    config, context = run.config, run.context
    network.train()
    run.sampler.set_epoch(epoch)
    if run.mixup is not None and config.loss.mixup_off_epoch:
        run.mixup.mixup_enabled = epoch < config.loss.mixup_off_epoch
    loss_sum = torch.zeros(2, dtype=torch.float64)
    bar = tqdm(
        run.train_loader,
        desc=f"epoch {epoch + 1}/{run.epochs}",
        disable=not (config.run.progress and context.is_main),
        leave=False,
    )
    for step, (images, targets) in enumerate(bar):
        loss = _update(
            run, network, progress, images, targets, f"epoch {epoch + 1}, step {step + 1}"
        )
        loss_sum += torch.tensor([loss, 1.0], dtype=torch.float64)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{run.optimizer.param_groups[0]['lr']:.3g}")
    if run.scheduler is not None:
        run.scheduler.step(epoch + 1)
    synchronize_buffers(run.model, context)
    if run.ema is not None:
        synchronize_buffers(run.ema.module, context)
    total, count = reduce_sum(loss_sum, context).tolist()
    return dict(train_loss=total / count, lr=run.optimizer.param_groups[0]["lr"])


def _update(
    run: _Run, network: nn.Module, progress: _Progress, images: Tensor, targets: Tensor, where: str
) -> float:
    """One optimizer update on a batch; its loss. A non-finite loss on any rank stops the run.

    ``where`` (``"epoch E, step S"``) names the step in the :class:`TrainingError`.
    """
    context, optimizer = run.context, run.optimizer
    images, targets = images.to(context.device), targets.to(context.device)
    if run.mixup is not None:
        images, targets = run.mixup(images, targets)
    with _autocast(context, run.config.run.amp):
        loss = run.loss_of(network(images), targets)
    finite = reduce_sum(torch.isfinite(loss.detach()).float().view(1), context)
    if finite.item() < context.world_size:
        last = run.output / "last.pth"
        kept = (
            f"the last good checkpoint '{last}' is kept"
            if last.exists()
            else "no checkpoint was written yet"
        )
        raise TrainingError(
            f"loss is {loss.item()} at {where} (update {progress.updates + 1}); "
            f"training stopped and {kept}"
        )
    optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.config.optim.clip_grad is not None:
        run.scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), run.config.optim.clip_grad)
    run.scaler.step(optimizer)
    run.scaler.update()
    progress.updates += 1
    if run.ema is not None:
        run.ema.update(run.model, step=progress.updates)
    if run.scheduler is not None:
        run.scheduler.step_update(num_updates=progress.updates)
    return loss.item()


def _evaluate_epoch(run: _Run, progress: _Progress, epoch: int) -> tuple[dict, bool]:
    """Validation metrics (``eval_*``, ``ema_*``) when ``epoch`` is due; whether it is the best.

    Due every ``run.eval_every`` epochs and after the last; the EMA's top-1 selects the best
    when EMA is on.
    """
    if (epoch + 1) % run.config.run.eval_every and epoch + 1 != run.epochs:
        return {}, False
    amp = run.config.run.amp
    evaluated = evaluate(run.model, run.eval_loader, run.context, amp)
    metrics = {f"eval_{k}": v for k, v in evaluated.items()}
    selected = evaluated["top1"]
    if run.ema is not None:
        ema_metrics = evaluate(run.ema.module, run.eval_loader, run.context, amp)
        metrics.update({f"ema_{k}": v for k, v in ema_metrics.items()})
        selected = ema_metrics["top1"]
    is_best = selected > progress.best_top1
    progress.best_top1 = max(progress.best_top1, selected)
    return metrics, is_best


def _save_checkpoint(run: _Run, progress: _Progress, metrics: dict, is_best: bool) -> None:
    """``last.pth`` (and ``best.pth``) on rank 0, atomically; every rank joins the gathers."""
    rng = all_gather_objects(capture_rng_state(), run.context)
    fingerprints = all_gather_objects(weights_fingerprint(run.model), run.context)
    if not run.context.is_main:
        return
    checkpoint = dict(
        format=CHECKPOINT_FORMAT,
        state_dict=run.model.state_dict(),
        optimizer=run.optimizer.state_dict(),
        scheduler=None if run.scheduler is None else run.scheduler.state_dict(),
        scaler=run.scaler.state_dict(),
        epoch=progress.epoch,
        best_top1=progress.best_top1,
        metrics=metrics,
        model_name=run.config.model.name,
        num_classes=run.datasets.num_classes,
        config=config_to_dict(run.config),
        rng=rng,
        world_size=run.context.world_size,
        rank_fingerprints=fingerprints,
    )
    if run.ema is not None:
        checkpoint["state_dict_ema"] = run.ema.module.state_dict()
    save_atomic(checkpoint, run.output / "last.pth")
    if is_best:
        save_atomic(checkpoint, run.output / "best.pth")


def _open_log(run: _Run, resumed: bool, start_epoch: int) -> RunLog | None:
    """Rank 0's ``log.csv`` (and TensorBoard) plus ``config.yaml``; ``None`` on other ranks."""
    if not run.context.is_main:
        return None
    run.output.mkdir(parents=True, exist_ok=True)
    _write_recipe(run.config, run.output / "config.yaml")
    return RunLog(run.output, run.config.run.tensorboard, append=resumed, start_epoch=start_epoch)


def _log_epoch(run: _Run, log: RunLog | None, epoch: int, metrics: dict) -> None:
    """Rank 0: a ``log.csv`` row and a summary line on stdout, with or without ``run.progress``."""
    if log is None:
        return
    log.log(epoch + 1, metrics)
    summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    print(f"epoch {epoch + 1}/{run.epochs}: {summary}", flush=True)


def _close_log(run: _Run, log: RunLog | None) -> None:
    """Rank 0: close the log and plot ``curves.png`` (``run.plot`` and matplotlib)."""
    if log is None:
        return
    log.close()
    if run.config.run.plot and log.rows and importlib.util.find_spec("matplotlib") is not None:
        plot_curves(log.path, run.output / "curves.png")


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer's bytes: equal on all DDP ranks if in sync."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _write_recipe(config: Config, path: Path) -> None:
    with optional_dependency("writing the run's config.yaml"):
        import yaml

    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def validate(config: Config, checkpoint: str | Path) -> dict[str, float]:
    """Evaluate ``checkpoint`` on the recipe's evaluation set: ``loss``, ``top1``, ``top5``.

    The weights load through timm's ``pretrained_cfg_overlay=dict(file=checkpoint)`` (the
    EMA weights when the file has them). Runs under torchrun as well (metrics summed over
    the ranks' shards).
    """
    source = read_training_checkpoint(checkpoint)
    context = init_distributed(config.run.device)
    try:
        datasets = build_datasets(config.data)
        if source.get("num_classes") not in (None, datasets.num_classes):
            raise CheckpointError(
                f"checkpoint '{checkpoint}' has {source['num_classes']} classes, "
                f"data.dataset={config.data.dataset!r} has {datasets.num_classes}"
            )
        config = copy.deepcopy(config)
        config.finetune.checkpoint = str(checkpoint)
        model = build_model(config, datasets).to(context.device)
        _, eval_loader, _ = build_loaders(datasets, config.data, context, config.run.seed)
        if config.model.neuron_backend == "auto" and _is_spiking(model):
            # A few batches run faster eagerly than after compiling the neurons' kernels.
            set_backend(model, backend_for_work(len(eval_loader), context.device))
        return evaluate(model, eval_loader, context, config.run.amp)
    finally:
        if context.distributed:
            torch.distributed.destroy_process_group()
