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
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from spikezoo.neurons import set_backend
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

__all__ = [
    "TrainingError",
    "build_model",
    "evaluate",
    "tet_loss",
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
    if config.model.neuron_backend != "auto":
        set_backend(model, config.model.neuron_backend)
    return model


def _head_classes(path: str | Path) -> int:
    """Classes of a checkpoint's head: its ``num_classes`` entry or ``head.weight`` rows."""
    from spikezoo.models._checkpoint import unwrap_state_dict

    if not Path(path).is_file():
        raise CheckpointError(f"finetune.checkpoint '{path}' does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = " ".join(str(error).split())[:200]
        raise CheckpointError(f"checkpoint '{path}' is unreadable: {reason}") from error
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("num_classes"), int):
        return checkpoint["num_classes"]
    head = unwrap_state_dict(checkpoint).get("head.weight")
    if head is None:
        raise CheckpointError(
            f"checkpoint '{path}' has no head.weight; set finetune.num_classes to its head size"
        )
    return head.shape[0]


def tet_loss(
    criterion: Callable[[Tensor, Tensor], Tensor],
    outputs: Tensor,
    targets: Tensor,
    lam: float,
    phi: float,
) -> Tensor:
    """TET (Deng et al., ICLR 2022): ``criterion`` averaged over the steps of ``[T, B, K]``.

    ``(1 - lam) * mean_t criterion(outputs[t], targets) + lam * MSE(outputs, phi)``.
    """
    per_step = torch.stack([criterion(step, targets) for step in outputs]).mean()
    if lam == 0:
        return per_step
    return (1 - lam) * per_step + lam * nn.functional.mse_loss(
        outputs, torch.full_like(outputs, phi)
    )


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


def _loss(config: Config, num_classes: int) -> tuple[Any, Callable[[Tensor, Tensor], Tensor]]:
    """timm's ``Mixup`` (or ``None``) and the training loss of ``(outputs, targets)``."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    loss = config.loss
    mixup = None
    if loss.mixup > 0 or loss.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=loss.mixup,
            cutmix_alpha=loss.cutmix,
            prob=loss.mixup_prob,
            switch_prob=loss.mixup_switch_prob,
            label_smoothing=loss.smoothing,
            num_classes=num_classes,
        )
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif loss.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(loss.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()
    if loss.tet:
        return mixup, partial(tet_loss, criterion, lam=loss.tet_lambda, phi=loss.tet_phi)
    return mixup, criterion


def _train(config: Config, context: DistributedContext) -> dict[str, float]:
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3
    from tqdm import tqdm

    run = config.run
    if config.model.sync_bn and context.device.type != "cuda":
        raise RecipeError("model.sync_bn=true needs CUDA devices (SyncBatchNorm has no CPU kernel)")
    output = Path(run.output)
    resume_path = _resume_path(config)
    # Read (and reject) the checkpoint before anything is built or written.
    resumed = read_training_checkpoint(resume_path) if resume_path is not None else None
    if run.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    datasets = build_datasets(config.data)
    _seed_everything(run.seed)
    model = build_model(config, datasets).to(context.device)
    if config.model.sync_bn and context.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ema = ModelEmaV3(model, decay=config.model.ema_decay) if config.model.ema else None
    optimizer = create_optimizer_v2(
        model,
        opt=config.optim.opt,
        lr=config.optim.lr,
        weight_decay=config.optim.weight_decay,
        momentum=config.optim.momentum,
    )
    train_loader, eval_loader, sampler = build_loaders(datasets, config.data, context, run.seed)
    scheduler, epochs = create_scheduler_v2(
        optimizer,
        sched=config.sched.sched,
        num_epochs=run.epochs,
        decay_epochs=config.sched.decay_epochs,
        decay_rate=config.sched.decay_rate,
        min_lr=config.sched.min_lr,
        warmup_lr=config.sched.warmup_lr,
        warmup_epochs=config.sched.warmup_epochs,
        cooldown_epochs=config.sched.cooldown_epochs,
        updates_per_epoch=len(train_loader),
    )
    scaler = torch.amp.GradScaler("cuda", enabled=run.amp and context.device.type == "cuda")

    start_epoch, best_top1 = 0, -math.inf
    if resumed is not None:
        try:
            model.load_state_dict(resumed["state_dict"])
            optimizer.load_state_dict(resumed["optimizer"])
            if ema is not None:
                ema.module.load_state_dict(resumed["state_dict_ema"])
        except (RuntimeError, KeyError, ValueError) as error:
            reason = " ".join(str(error).split())[:200]
            raise CheckpointError(
                f"checkpoint '{resume_path}' does not fit this recipe: {reason}"
            ) from error
        if scheduler is not None and resumed["scheduler"] is not None:
            scheduler.load_state_dict(resumed["scheduler"])
        if "scaler" in resumed:
            scaler.load_state_dict(resumed["scaler"])
        start_epoch, best_top1 = resumed["epoch"], resumed.get("best_top1", -math.inf)
        rng = resumed["rng"]
        restore_rng_state(rng[context.rank] if len(rng) == context.world_size else rng[0])
    else:
        _seed_everything(run.seed + context.rank)

    network = model
    if context.distributed:
        device_ids = [context.local_rank] if context.device.type == "cuda" else None
        network = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    mixup, loss_of = _loss(config, datasets.num_classes)

    log = None
    if context.is_main:
        output.mkdir(parents=True, exist_ok=True)
        _write_recipe(config, output / "config.yaml")
        log = RunLog(output, run.tensorboard, append=resumed is not None, start_epoch=start_epoch)
    last_path = output / "last.pth"
    metrics: dict[str, float] = {}
    updates = start_epoch * len(train_loader)
    stop = epochs if run.stop_after is None else min(epochs, run.stop_after)
    for epoch in range(start_epoch, stop):
        network.train()
        sampler.set_epoch(epoch)
        if mixup is not None and config.loss.mixup_off_epoch:
            mixup.mixup_enabled = epoch < config.loss.mixup_off_epoch
        loss_sum = torch.zeros(2, dtype=torch.float64)
        bar = tqdm(
            train_loader,
            desc=f"epoch {epoch + 1}/{epochs}",
            disable=not (run.progress and context.is_main),
            leave=False,
        )
        for step, (images, targets) in enumerate(bar):
            images, targets = images.to(context.device), targets.to(context.device)
            if mixup is not None:
                images, targets = mixup(images, targets)
            with _autocast(context, run.amp):
                loss = loss_of(network(images), targets)
            finite = reduce_sum(torch.isfinite(loss.detach()).float().view(1), context)
            if finite.item() < context.world_size:
                kept = (
                    f"the last good checkpoint '{last_path}' is kept"
                    if last_path.exists()
                    else "no checkpoint was written yet"
                )
                raise TrainingError(
                    f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                    f"(update {updates + 1}); training stopped and {kept}"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.optim.clip_grad is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), config.optim.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            updates += 1
            if ema is not None:
                ema.update(model, step=updates)
            if scheduler is not None:
                scheduler.step_update(num_updates=updates)
            loss_sum += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}")
        if scheduler is not None:
            scheduler.step(epoch + 1)
        synchronize_buffers(model, context)
        if ema is not None:
            synchronize_buffers(ema.module, context)
        total, count = reduce_sum(loss_sum, context).tolist()
        metrics = dict(train_loss=total / count, lr=optimizer.param_groups[0]["lr"])
        if (epoch + 1) % run.eval_every == 0 or epoch + 1 == epochs:
            evaluated = evaluate(model, eval_loader, context, run.amp)
            metrics.update({f"eval_{k}": v for k, v in evaluated.items()})
            selected = evaluated["top1"]
            if ema is not None:
                ema_metrics = evaluate(ema.module, eval_loader, context, run.amp)
                metrics.update({f"ema_{k}": v for k, v in ema_metrics.items()})
                selected = ema_metrics["top1"]
            is_best = selected > best_top1
            best_top1 = max(best_top1, selected)
        else:
            is_best = False
        # Every rank joins the gather; only rank 0 writes.
        rng = all_gather_objects(capture_rng_state(), context)
        fingerprints = all_gather_objects(weights_fingerprint(model), context)
        if context.is_main:
            checkpoint = dict(
                format=CHECKPOINT_FORMAT,
                state_dict=model.state_dict(),
                optimizer=optimizer.state_dict(),
                scheduler=None if scheduler is None else scheduler.state_dict(),
                scaler=scaler.state_dict(),
                epoch=epoch + 1,
                best_top1=best_top1,
                metrics=metrics,
                model_name=config.model.name,
                num_classes=datasets.num_classes,
                config=config_to_dict(config),
                rng=rng,
                world_size=context.world_size,
                rank_fingerprints=fingerprints,
            )
            if ema is not None:
                checkpoint["state_dict_ema"] = ema.module.state_dict()
            save_atomic(checkpoint, last_path)
            if is_best:
                save_atomic(checkpoint, output / "best.pth")
            log.log(epoch + 1, metrics)
            if run.progress:
                summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                print(f"epoch {epoch + 1}/{epochs}: {summary}", flush=True)
    if context.is_main:
        log.close()
        if run.plot and log.rows and importlib.util.find_spec("matplotlib") is not None:
            plot_curves(log.path, output / "curves.png")
    return dict(metrics, best_top1=best_top1)


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer's bytes: equal on all DDP ranks if in sync."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _write_recipe(config: Config, path: Path) -> None:
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
        return evaluate(model, eval_loader, context, config.run.amp)
    finally:
        if context.distributed:
            torch.distributed.destroy_process_group()
