"""The import tiers of the package, lowest first. They are called tiers here so that they are
not confused with :mod:`spikezoo.layers`.

A module may import from its own tier and from the tiers below it, never from a tier above:

- ground: the weights (reading checkpoint files, the cache, downloads, the Hub, the authors'
  files, the pretrained cfg), the host C kernels (built into the cache), the process-wide
  allocator setting (``runtime``), the profiler's named ranges (``_profiling``) and the
  package's constants. They hand state dicts and kernels up and know no model, layer or
  neuron;
- neurons, then layers (built from neurons), then models (the families, built from layers;
  their weights come from the ground);
- applications: analysis, deploy, hub (converting and publishing, which builds models) and
  train. They use the tiers below and each other; nothing below imports them;
- entry points: the command line, the ``__main__`` modules and the package ``spikezoo``
  itself, whose ``__init__`` imports the subpackages to register the models with timm.

``tests/test_import_layers.py`` checks every ``import`` of the package against this table.
"""

#: Tier name -> the modules it holds, as paths below ``spikezoo`` (a package holds its
#: submodules; the longest path that matches decides; ``""`` is the package ``spikezoo``).
TIERS: dict[str, tuple[str, ...]] = {
    "ground": (
        "_checks",
        "_optional",
        "_profiling",
        "_tiers",
        "_version",
        "native",
        "runtime",
        "weights",
    ),
    "neurons": ("neurons",),
    "layers": ("layers",),
    "models": ("models",),
    "applications": ("analysis", "deploy", "hub", "train"),
    "entry points": ("", "__main__", "cli", "train.__main__"),
}
