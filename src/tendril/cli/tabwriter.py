"""Column output in the style of Go's text/tabwriter, which cilium-dbg and kubectl use."""

from __future__ import annotations

from collections.abc import Sequence


def render(rows: Sequence[Sequence[str]], padding: int = 3, minwidth: int = 0) -> str:
    """Left-aligned columns; a cell may hold several lines (continuation rows, as cilium prints labels)."""
    expanded: list[list[str]] = []
    for row in rows:
        cells = [str(c).split("\n") for c in row]
        height = max(len(c) for c in cells) if cells else 1
        for i in range(height):
            expanded.append([c[i] if i < len(c) else "" for c in cells])
    if not expanded:
        return ""
    ncols = max(len(r) for r in expanded)
    widths = [minwidth] * ncols
    for r in expanded:
        for j, cell in enumerate(r):
            widths[j] = max(widths[j], len(cell))
    lines = []
    for r in expanded:
        parts = [cell.ljust(widths[j] + padding) if j < len(r) - 1 else cell for j, cell in enumerate(r)]
        lines.append("".join(parts).rstrip())
    return "\n".join(lines)
