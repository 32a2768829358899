"""mkdocs hook: the build fails while a public name has no docstring.

The public names are the ``__all__`` of every public subpackage of spikezoo (a direct submodule
whose name has no leading underscore and that defines ``__all__``). Each such subpackage must
have an API page that renders it (``::: spikezoo.<name>`` in ``docs/api/<name>.md``), and each
name in the ``__all__`` of a rendered module must have a docstring (for a constant: a ``#:``
comment above it, see ``comment_docstrings.py``). griffe, which mkdocstrings uses to read the
code, does not report a missing docstring itself.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import griffe
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError

HOOKS = Path(__file__).parent
PACKAGE = "spikezoo"
#: The console-script module beside the package: ``spikezoo.cli`` re-exports its ``COMMANDS``.
CONSOLE_SCRIPT = "spikezoo_cli"
API_PAGES = "api"
RENDERED = re.compile(r"^::: *(\w+(?:\.\w+)*) *$", re.MULTILINE)


def load_modules(root: Path) -> griffe.ModulesCollection:
    """spikezoo and its console script as mkdocstrings sees them, with the ``#:`` comments as
    docstrings."""
    loader = griffe.GriffeLoader(
        search_paths=[str(root)],
        extensions=griffe.load_extensions(str(HOOKS / "comment_docstrings.py")),
    )
    loader.load(CONSOLE_SCRIPT)
    loader.load(PACKAGE)
    loader.resolve_aliases()
    return loader.modules_collection


def rendered_modules(docs_dir: Path) -> set[str]:
    """The modules the API pages render with ``::: module``."""
    return {
        name
        for page in (docs_dir / API_PAGES).glob("*.md")
        for name in RENDERED.findall(page.read_text(encoding="utf-8"))
    }


def undocumented(module: griffe.Module) -> list[str]:
    """The names in ``module.__all__`` whose object has no docstring."""
    missing = []
    for name in module.exports or ():
        member = module[str(name)]
        if not (member.final_target if member.is_alias else member).has_docstring:
            missing.append(f"{module.path}.{name}")
    return missing


def documentation_problems(root: Path, docs_dir: Path) -> list[str]:
    """One line per public subpackage without API page and per public name without docstring."""
    modules = load_modules(root)
    package = modules[PACKAGE]
    rendered = rendered_modules(docs_dir)
    problems = [
        f"{module.path} has no API page (add docs/{API_PAGES}/{name}.md with '::: {module.path}')"
        for name, module in package.modules.items()
        if not name.startswith("_") and module.exports is not None and module.path not in rendered
    ]
    for path in sorted(rendered):
        problems += [f"{name} has no docstring" for name in undocumented(modules[path])]
    return problems


def on_config(config: MkDocsConfig) -> None:
    """Tutorials import spikezoo from this checkout, as mkdocstrings reads it (``paths: [.]``)."""
    root = str(Path(config.config_file_path).parent)
    if root not in sys.path:
        sys.path.insert(0, root)


def on_pre_build(config: MkDocsConfig) -> None:
    """Fail the build while :func:`documentation_problems` finds any."""
    problems = documentation_problems(Path(config.config_file_path).parent, Path(config.docs_dir))
    if problems:
        raise PluginError("public API without documentation:\n  " + "\n  ".join(problems))
