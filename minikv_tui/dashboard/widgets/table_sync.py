"""Incremental DataTable updates: only cells whose content changed are touched.

Rebuilding a table every refresh costs a full re-layout and makes the cursor jump; at 4 Hz on a
16-shard cluster that is most of the dashboard's CPU. Here a refresh compares each cell with
what was last written and updates only the differences; rows appear and disappear by key.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from rich.text import Text
from textual.widgets import DataTable


def _fingerprint(cell: Text) -> tuple[object, ...]:
    # Text.__eq__ ignores the base style, which is exactly what flashes change.
    return (cell.plain, str(cell.style), tuple(cell.spans))


Columns = Sequence[tuple[str, int]]
"""(label, width) per column. Widths are fixed: auto widths would depend on when the table
processed which update (flaky snapshots) and re-measure every column on every change."""


class TableSync:
    """Keeps a DataTable equal to `rows` (row key -> cells, in display order)."""

    def __init__(self, table: DataTable[Text], columns: Columns) -> None:
        self.table = table
        self.columns = [label for label, _ in columns]
        self._cells: dict[Hashable, list[tuple[object, ...]]] = {}
        self._order: list[Hashable] = []
        self._cursor_row: int | None = None

    def reset(self, columns: Columns) -> None:
        """New columns (a layout change, or the table resized): the one time the table is
        rebuilt. The cursor comes back to its row with the next `sync`: the person's
        selected shard survives a resize."""
        table = self.table
        if table.row_count and table.cursor_type != "none" and self._cursor_row is None:
            self._cursor_row = table.cursor_row
        self.columns = [label for label, _ in columns]
        self.table.clear(columns=True)
        for label, width in columns:
            self.table.add_column(label, key=label, width=width)
        self._cells.clear()
        self._order = []

    def sync(self, rows: Mapping[Any, Sequence[Text]]) -> None:
        table = self.table
        order = list(rows)
        kept = [key for key in self._order if key in rows]
        if kept + [key for key in order if key not in self._cells] != order:
            # A row must go in the middle (a new segment, a node added): DataTable only
            # appends, so rebuild the rows once, keeping the cursor where it was.
            cursor = table.cursor_coordinate
            table.clear()
            self._cells.clear()
            self._order = []
            for key, cells in rows.items():
                table.add_row(*cells, key=str(key))
                self._cells[key] = [_fingerprint(cell) for cell in cells]
            self._order = order
            if table.row_count:
                table.move_cursor(row=min(cursor.row, table.row_count - 1), column=cursor.column)
            return
        for key in [k for k in self._order if k not in rows]:
            table.remove_row(str(key))
            del self._cells[key]
        for key, cells in rows.items():
            assert len(cells) == len(self.columns), (key, len(cells), self.columns)
            prints = [_fingerprint(cell) for cell in cells]
            before = self._cells.get(key)
            if before is None:
                table.add_row(*cells, key=str(key))
            else:
                for index, (old, new) in enumerate(zip(before, prints, strict=True)):
                    if old != new:
                        table.update_cell(str(key), self.columns[index], cells[index])
            self._cells[key] = prints
        self._order = order
        if self._cursor_row is not None and table.row_count:
            table.move_cursor(row=min(self._cursor_row, table.row_count - 1))
            self._cursor_row = None
