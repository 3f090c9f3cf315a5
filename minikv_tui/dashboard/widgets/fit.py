"""Choosing a table's columns for the width it has, so a panel never scrolls sideways.

A panel is a third of the screen on a wide terminal and about half of it on a narrow one: the
same table gets 37 columns at 120x36 and 50 at 160x48. Each table describes its columns with
the order in which they may go, and gets the richest set that fits. Tables here are drawn
without cell padding; every column carries one blank column on its right instead (`GAP`), and
the panel stylesheet gives the table one column of left padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from rich.text import Text
from textual.widgets import DataTable

GAP = 1
"""Blank columns after each column's content."""
SPREAD_MAX = 3
"""Spare width handed to each column at most: wider than this, columns drift apart and the
eye loses the row."""


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int
    """Characters of content; the widest value the column's format can produce."""
    drop: int | None = None
    """Order of removal when the table is too wide (lowest first); None: always shown."""

    def __post_init__(self) -> None:
        assert self.width >= len(self.label), f"{self.label!r} is wider than {self.width}"


def total_width(columns: Sequence[Column]) -> int:
    return sum(column.width + GAP for column in columns)


def fit(columns: Sequence[Column], available: int) -> tuple[Column, ...]:
    """The columns that fit in `available` characters, dropping the droppable ones in their
    order; if even the kept ones do not fit, those (the table then scrolls: better than
    hiding a column that is never droppable)."""
    chosen = list(columns)
    for column in sorted((c for c in columns if c.drop is not None), key=lambda c: c.drop or 0):
        if total_width(chosen) <= available:
            break
        chosen.remove(column)
    return tuple(chosen)


def spread(columns: Sequence[Column], available: int) -> tuple[Column, ...]:
    """The same columns, each given an equal share (at most `SPREAD_MAX`) of the spare width:
    a wide panel reads as a grid, not a clump."""
    if not columns:
        return ()
    share = min(SPREAD_MAX, max(0, available - total_width(columns)) // len(columns))
    return tuple(replace(column, width=column.width + share) for column in columns)


def usable_width(table: DataTable[Any], rows: int) -> int:
    """Width for the columns of `table` holding `rows` rows: its content width, less the
    vertical scrollbar when the rows will not all fit (the header takes a line)."""
    width, height = table.size
    if rows + (1 if table.show_header else 0) > height:
        width -= table.styles.scrollbar_size_vertical
    return max(0, width)


def flash(cell: Text, width: int, style: str) -> Text:
    """`cell` as one block of `width` characters in `style` alone: a flashing row reads as
    one bar and a flashing cell as one block, where per-span colours reversed would be a
    patchwork."""
    return Text(cell.plain.ljust(width), style)


def layout(columns: Sequence[Column]) -> list[tuple[str, int]]:
    """(label, width) pairs as `TableSync.reset` takes them, the gap included."""
    return [(column.label, column.width + GAP) for column in columns]
