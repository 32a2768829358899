"""The model card (``README.md``) of a converted model directory."""

from __future__ import annotations

from torch import nn

from spikezoo.models import family_of

__all__ = ["model_card"]


def model_card(model: nn.Module, name: str, provenance: dict) -> str:
    """Markdown with Hub front matter: paper, architecture, reported results, licence,
    citation and where the weights came from (``provenance``: source, sha256, date, version)."""
    cfg = model.pretrained_cfg
    licence = cfg.get("license") or "unknown"
    c, h, w = cfg["input_size"]
    parameters = sum(p.numel() for p in model.parameters())
    top1 = cfg.get("top1")
    reported = (
        f"{top1:.2f} % top-1 at {_size(cfg.get('test_input_size') or cfg['input_size'])}, "
        f"T={model.time_steps} (as reported by the paper; not re-measured by spikezoo)"
        if top1 is not None
        else "the paper reports no accuracy for these weights"
    )
    citation = family_of(model).citation
    lines = [
        "---",
        "library_name: timm",
        f"license: {'other' if licence == 'unknown' else licence}",
        "tags: [image-classification, timm, spiking-neural-network, spikezoo]",
        "---",
        f"# {name}",
        "",
        f"{cfg.get('paper_name', '')} ({cfg.get('paper_ids', '')}), converted from the authors' "
        f"checkpoint by [spikezoo](https://pypi.org/project/spikezoo-vit/) for timm.",
        "",
        "```python",
        "import timm",
        "import spikezoo  # registers the spiking models with timm",
        "",
        f'model = timm.create_model("{name}", pretrained=True).eval()',
        "```",
        "",
        "## Model",
        "",
        f"- architecture: `{cfg['architecture']}` ({type(model).__name__}), "
        f"{parameters / 1e6:.2f}M parameters",
        f"- time steps T: {model.time_steps}; classes: {model.num_classes}",
        f"- input: {c}x{h}x{w}, mean {tuple(cfg['mean'])}, std {tuple(cfg['std'])}, "
        f"crop {cfg.get('crop_pct')}, {cfg.get('interpolation')}",
        f"- reported accuracy: {reported}",
        "- reported energy: not recorded by spikezoo (see the paper)",
        f"- paper: {cfg.get('paper_name', '')} ({cfg.get('paper_ids', '')}); "
        f"code: {cfg.get('origin_url', '')}",
        f"- licence: {licence} (the authors' terms for their weights)",
        "",
        "## Provenance",
        "",
        f"- source: {provenance['source']}",
        f"- sha256 of the source file: `{provenance['sha256']}`",
        f"- converted: {provenance['converted']} with spikezoo {provenance['spikezoo_version']}",
        "",
    ]
    lines += ["## Citation", "", "```bibtex", citation, "```", ""]
    return "\n".join(lines)


def _size(input_size: tuple[int, int, int]) -> str:
    return f"{input_size[1]}x{input_size[2]}"
