"""Model inputs from an image file: the built-in sample photo, frames for image models and
event frames (a simulated DVS saccade) for event-camera models."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "SAMPLE_IMAGE",
    "events_from_image",
    "image_input",
    "is_event_model",
    "load_image",
    "sample_image_path",
]

#: File name of the built-in sample image in ``spikezoo/assets`` (CC0, see its README there).
SAMPLE_IMAGE = "chelsea.jpg"

#: Pixel shifts of the simulated saccade, one per time step (cycled): a small triangle, as the
#: N-MNIST / N-Caltech101 recordings moved a DVS camera in front of still images.
_SACCADE = ((0, 0), (1, 2), (2, 0), (0, 0), (-1, 2), (-2, 0))


def sample_image_path() -> Path:
    """Path of the built-in sample image (a 224x224 CC0 photo of a cat)."""
    return Path(str(resources.files("spikezoo").joinpath("assets", SAMPLE_IMAGE)))


def load_image(path: str | Path) -> Image.Image:
    """Open ``path`` as a ``PIL.Image`` (palette images as RGB); ``ValueError`` if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, UnidentifiedImageError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise ValueError(f"cannot read image {str(path)!r}: {reason}") from error
    return image.convert("RGB") if image.mode == "P" else image


def is_event_model(model: nn.Module) -> bool:
    """Whether ``model`` takes event frames: its pretrained config has no normalisation.

    spikezoo's event-camera models (``*_dvs128``, ``*_cifar10dvs``, ``*_dvsg``) have mean 0 and
    std 1 for every channel; every image model normalises its pixels.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    return mean is not None and all(m == 0 for m in mean) and all(s == 1 for s in std)


def image_input(
    model: nn.Module,
    image: Image.Image,
    input_size: int | None = None,
    time_steps: int | None = None,
) -> Tensor:
    """The input ``model`` takes, made from a ``PIL.Image``.

    * Image models: ``[1, C, H, W]`` through timm's evaluation transform (resize, centre crop,
      normalisation of the model's pretrained config). The image must have ``C`` channels.
    * Event models (:func:`is_event_model`): ``[1, T, C, H, W]`` event frames from
      :func:`events_from_image`, with ``T = time_steps`` or the model's ``time_steps``.

    ``input_size`` replaces the config's square side (the model must accept it).
    """
    from timm.data import create_transform, resolve_data_config

    channels, height, width = resolve_data_config({}, model=model)["input_size"]
    if input_size is not None:
        height = width = input_size
    if is_event_model(model):
        steps = time_steps or getattr(model, "time_steps", 1)
        return events_from_image(image, steps, channels, (height, width)).unsqueeze(0)
    bands = len(image.getbands())
    if bands != channels:
        raise ValueError(
            f"the model takes {channels}-channel images, the image has {bands} (mode {image.mode})"
        )
    config = resolve_data_config({"input_size": (channels, height, width)}, model=model)
    return create_transform(**config)(image).unsqueeze(0)


def events_from_image(
    image: Image.Image,
    time_steps: int,
    channels: int,
    size: tuple[int, int],
    threshold: float = 0.15,
) -> Tensor:
    """Event frames ``[T, channels, H, W]`` of 0/1 values: a DVS camera saccading over ``image``.

    The grey-level image (resized to ``size``) is shifted by a few pixels per step; a pixel emits
    an ON event (channel 0) where its log intensity rose by more than ``threshold`` since the
    previous step and an OFF event (channel 1) where it fell. Any further channel holds ON + OFF,
    SpikingResformer's third DVS128 Gesture channel.
    """
    from PIL import Image

    if channels < 2:
        raise ValueError(f"event frames need at least 2 channels (ON, OFF), got {channels}")
    if time_steps < 1:
        raise ValueError(f"time_steps must be >= 1, got {time_steps}")
    grey = image.convert("L").resize(size[::-1], Image.Resampling.BICUBIC)
    pixels = torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8).view(size)
    log_intensity = torch.log(pixels.float() / 255 + 0.05)
    shifts = [_SACCADE[t % len(_SACCADE)] for t in range(time_steps + 1)]
    views = torch.stack([log_intensity.roll(shift, dims=(0, 1)) for shift in shifts])
    change = views[1:] - views[:-1]
    on, off = (change > threshold).float(), (change < -threshold).float()
    extra = [on + off] * (channels - 2)
    return torch.stack([on, off, *extra], dim=1)
