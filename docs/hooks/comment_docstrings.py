"""griffe extension: a ``#:`` comment block above an attribute is that attribute's docstring.

spikezoo documents constants the Sphinx way (``#: what it is`` on the lines above the
assignment); griffe reads only a string literal below an assignment, so without this extension
those attributes would show no description and count as undocumented.
"""

from __future__ import annotations

import ast
from typing import Any

import griffe


class CommentDocstrings(griffe.Extension):
    """Turns the ``#:`` lines right above an attribute without docstring into its docstring."""

    def on_attribute_instance(self, *, node: Any, attr: griffe.Attribute, **kwargs: Any) -> None:
        """Set ``attr.docstring`` from its ``#:`` comment block, if it has no docstring."""
        if attr.docstring is not None or not isinstance(node, ast.AST) or attr.lineno is None:
            return
        lines = attr.module.lines  # the whole file
        comment: list[str] = []
        index = attr.lineno - 2  # the line above the assignment, 0-based
        while 0 <= index < len(lines) and lines[index].strip().startswith("#:"):
            comment.insert(0, lines[index].strip()[2:].strip())
            index -= 1
        if comment:
            attr.docstring = griffe.Docstring(
                "\n".join(comment), lineno=index + 2, endlineno=attr.lineno - 1, parent=attr
            )
