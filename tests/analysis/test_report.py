"""Table.to_markdown with a row limit: the first and last rows, and a count of the rest."""

import pytest

from spikezoo.analysis import Table


def table(rows: int) -> Table:
    return Table(["layer", "rate"], [[f"blocks.{i}", i / 8] for i in range(rows)])


def test_long_table_keeps_its_first_and_last_rows_and_counts_the_rest():
    lines = table(10).to_markdown(max_rows=5).splitlines()
    body, note = lines[2:8], lines[-1]
    assert [line.split("|")[1].strip() for line in body] == [
        "blocks.0",
        "blocks.1",
        "blocks.2",
        "…",
        "blocks.8",
        "blocks.9",
    ]
    assert lines[8] == "" and note == "5 of 10 rows left out."


@pytest.mark.parametrize("rows", [0, 3, 4])
def test_table_within_the_limit_is_whole(rows):
    assert table(rows).to_markdown(max_rows=4) == table(rows).to_markdown()


@pytest.mark.parametrize("max_rows", [1, 0, 2.5, True, "3"])
def test_max_rows_must_be_an_integer_of_two_or_more(max_rows):
    with pytest.raises(
        ValueError, match=rf"max_rows must be None or an integer >= 2, got {max_rows!r}"
    ):
        table(5).to_markdown(max_rows=max_rows)
