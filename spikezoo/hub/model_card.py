"""The model card (``README.md``) of a converted model directory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from spikezoo.models import family_of

if TYPE_CHECKING:
    from spikezoo.hub.convert import TrainingRun

__all__ = ["model_card"]


def model_card(
    model: nn.Module, name: str, provenance: dict, trained: TrainingRun | None = None
) -> str:
    """Markdown with Hub front matter: paper, architecture, results, licence, citation and
    where the weights came from (``provenance``: source, sha256, date, version).

    ``trained`` describes weights trained with spikezoo (what their checkpoint says): the card
    then gives their data and measured accuracy instead of the paper's and the authors' terms.
    The input line is the model's own cfg (``input_size``, ``mean``, ``std``).
    """
    cfg = model.pretrained_cfg
    c, h, w = cfg["input_size"]
    parameters = sum(p.numel() for p in model.parameters())
    paper = f"{cfg.get('paper_name', '')} ({cfg.get('paper_ids', '')})"
    if trained is None:
        licence = cfg.get("license") or "unknown"
        origin = (
            f"{paper}, converted from the authors' checkpoint by "
            "[spikezoo](https://pypi.org/project/spikezoo-vit/) for timm."
        )
        top1 = cfg.get("top1")
        accuracy = (
            f"{top1:.2f} % top-1 at {_size(cfg.get('test_input_size') or cfg['input_size'])}, "
            f"T={model.time_steps} (as reported by the paper; not re-measured by spikezoo)"
            if top1 is not None
            else "the paper reports no accuracy for these weights"
        )
        licence_line = f"{licence} (the authors' terms for their weights)"
    else:
        licence = "unknown"
        origin = (
            f"The architecture of {paper}, trained with "
            f"[spikezoo](https://pypi.org/project/spikezoo-vit/) on {trained.dataset} "
            f"({trained.epochs} epoch{'' if trained.epochs == 1 else 's'}); not the authors' "
            "weights."
        )
        accuracy = (
            f"{trained.top1:.2f} % top-1 on the {trained.dataset} evaluation set at "
            f"{_size(cfg['input_size'])}, T={model.time_steps} (measured by spikezoo train)"
            if trained.top1 is not None
            else "not evaluated at the epoch of this checkpoint"
        )
        licence_line = "set by whoever trained these weights (trained with spikezoo)"
    lines = [
        "---",
        "library_name: timm",
        f"license: {'other' if licence == 'unknown' else licence}",
        "tags: [image-classification, timm, spiking-neural-network, spikezoo]",
        "---",
        f"# {name}",
        "",
        origin,
        "",
        "```python",
        "import timm",
        "import spikezoo  # registers the spiking models with timm",
        "",
        f'model = timm.create_model("{_load_name(name, trained)}", pretrained=True).eval()',
        "```",
        "",
        "## Model",
        "",
        f"- architecture: `{cfg['architecture']}` ({type(model).__name__}), "
        f"{parameters / 1e6:.2f}M parameters",
        f"- time steps T: {model.time_steps}; classes: {model.num_classes}",
        f"- input: {c}x{h}x{w}, mean {tuple(cfg['mean'])}, std {tuple(cfg['std'])}, "
        f"crop {cfg.get('crop_pct')}, {cfg.get('interpolation')}",
        f"- accuracy: {accuracy}",
        "- reported energy: not recorded by spikezoo (see the paper)",
        f"- paper: {paper}; code: {cfg.get('origin_url', '')}",
        f"- licence: {licence_line}",
        "",
        "## Provenance",
        "",
        "- trained with spikezoo" if trained else "- converted from the authors' checkpoint",
        f"- source: {provenance['source']}",
        f"- sha256 of the source file: `{provenance['sha256']}`",
        f"- converted: {provenance['converted']} with spikezoo {provenance['spikezoo_version']}",
        "",
    ]
    lines += ["## Citation", "", "```bibtex", family_of(model).citation, "```", ""]
    return "\n".join(lines)


def _load_name(name: str, trained: TrainingRun | None) -> str:
    """What ``timm.create_model`` loads the weights by: the tag, or (weights without a tag)
    the directory."""
    return name if trained is None or "." in name else "local-dir:DIR"


def _size(input_size: tuple[int, int, int]) -> str:
    return f"{input_size[1]}x{input_size[2]}"
