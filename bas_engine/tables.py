"""Fixed-width tables of measurement rows (plain Python: the GPU check's orchestrator imports it without torch)."""
from __future__ import annotations

from typing import Callable, Sequence

#: a column: (title, width, the cell's text from a row)
Column = tuple[str, int, Callable[[dict], str]]


def print_rows(label: Column, columns: Sequence[Column], rows: Sequence[dict]) -> None:
    """The header, then per row its label (left-aligned) and its cells (right-aligned); a row with an "error"
    prints the error after its label instead of the cells."""
    title, width, text = label
    print(f"{title:<{width}}" + "".join(f"{t:>{w}}" for t, w, _ in columns))
    for row in rows:
        head = f"{text(row):<{width}}"
        if "error" in row:
            print(f"{head}  {row['error']}")
        else:
            print(head + "".join(f"{cell(row):>{w}}" for _, w, cell in columns))
