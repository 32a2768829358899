"""Plain tabular results: a list of rows with named columns, written as Markdown, CSV or pandas."""

from __future__ import annotations

import csv
import io
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from spikezoo._optional import optional_dependency

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PerLayerReport", "Table"]


class Table:
    """Rows of plain Python values (``int``, ``float``, ``str``, ``None``) under named columns.

    Example:
        >>> table = Table(["layer", "rate"], [["blocks.0.attn.q_lif", 0.125]])
        >>> print(table.to_markdown())
        | layer               |  rate |
        |---------------------|-------|
        | blocks.0.attn.q_lif | 0.125 |
        >>> table.to_csv()
        'layer,rate\\r\\nblocks.0.attn.q_lif,0.125\\r\\n'
    """

    def __init__(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.columns = list(columns)
        self.rows = [list(row) for row in rows]
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(
                    f"every row needs {len(self.columns)} values ({self.columns}), got {row}"
                )

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.to_dicts())

    def __repr__(self) -> str:
        return self.to_markdown()

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def column(self, name: str) -> list[Any]:
        """The values of column ``name``, one per row."""
        index = self.columns.index(name)
        return [row[index] for row in self.rows]

    def to_dicts(self) -> list[dict[str, Any]]:
        """One ``{column: value}`` dict per row."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def to_markdown(self, float_format: str = ".4g", max_rows: int | None = None) -> str:
        """A GitHub Markdown table; numbers right-aligned, floats as ``float_format``.

        With ``max_rows``, a longer table keeps its first and last rows (``max_rows`` in all,
        around a row of ``…``) and ends with a line saying how many rows it left out.

        Example:
            >>> table = Table(["step", "rate"], [[t, t / 10] for t in range(5)])
            >>> print(table.to_markdown(max_rows=2))
            | step | rate |
            |------|------|
            |    0 |    0 |
            |    … |    … |
            |    4 |  0.4 |
            <BLANKLINE>
            3 of 5 rows left out.
        """
        if max_rows is not None and (
            isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 2
        ):
            raise ValueError(f"max_rows must be None or an integer >= 2, got {max_rows!r}")
        rows, left_out = self.rows, 0
        if max_rows is not None and len(rows) > max_rows:
            head, tail = max_rows - max_rows // 2, max_rows // 2
            rows, left_out = [*rows[:head], *rows[-tail:]], len(rows) - max_rows
        cells = [[_format(value, float_format) for value in row] for row in rows]
        if left_out:
            cells.insert(head, ["…"] * len(self.columns))
        numeric = [
            all(isinstance(row[i], (int, float)) or row[i] is None for row in self.rows)
            and bool(self.rows)
            for i in range(len(self.columns))
        ]
        widths = [
            max([len(name)] + [len(row[i]) for row in cells]) for i, name in enumerate(self.columns)
        ]

        def line(values: Sequence[str]) -> str:
            padded = (
                value.rjust(width) if right else value.ljust(width)
                for value, width, right in zip(values, widths, numeric, strict=True)
            )
            return "| " + " | ".join(padded) + " |"

        rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
        table = "\n".join([line(self.columns), rule, *(line(row) for row in cells)])
        if left_out:
            table += f"\n\n{left_out} of {len(self.rows)} rows left out."
        return table

    def to_csv(self, path: str | None = None) -> str:
        """The table as CSV text (full float precision); also written to ``path`` if given."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(self.columns)
        writer.writerows(["" if value is None else value for value in row] for row in self.rows)
        text = buffer.getvalue()
        if path is not None:
            with open(path, "w", newline="") as file:
                file.write(text)
        return text

    def to_pandas(self) -> pd.DataFrame:
        """A ``pandas.DataFrame`` of the table (needs pandas, in the ``analysis`` extra)."""
        with optional_dependency("Table.to_pandas"):
            import pandas as pd
        return pd.DataFrame(self.rows, columns=self.columns)


def _format(value: Any, float_format: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, float_format)
    return str(value)


class PerLayerReport(ABC):
    """Base of the analysis results: Markdown, CSV and pandas views of :meth:`per_layer`.

    A subclass defines ``per_layer() -> Table`` and may set ``float_format``.
    """

    #: how :meth:`to_markdown` writes floats unless told otherwise.
    float_format = ".4g"

    @abstractmethod
    def per_layer(self) -> Table:
        """One row per layer."""

    def to_markdown(self, float_format: str | None = None) -> str:
        """:meth:`per_layer` as Markdown."""
        return self.per_layer().to_markdown(float_format or self.float_format)

    def to_csv(self, path: str | None = None) -> str:
        """:meth:`per_layer` as CSV."""
        return self.per_layer().to_csv(path)

    def to_pandas(self) -> pd.DataFrame:
        """:meth:`per_layer` as a ``pandas.DataFrame``."""
        return self.per_layer().to_pandas()
