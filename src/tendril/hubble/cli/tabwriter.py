"""Go's text/tabwriter (the subset hubble uses: space padding, no flags), output-identical.

hubble's ``-o table`` and ``hubble list`` align tab-terminated cells with tabwriter; the exact
column widths (per column *block*, padding even after empty trailing cells) only come out right
with the same algorithm, so it is ported rather than approximated.
"""

from __future__ import annotations


class TabWriter:
    """Buffers text and aligns tab-terminated cells.

    Equivalent to ``tabwriter.NewWriter(w, minwidth, 0, padding, ' ', 0)``.
    """

    def __init__(self, minwidth: int = 0, padding: int = 1) -> None:
        self.minwidth = minwidth
        self.padding = padding
        self._lines: list[list[str]] = [[]]
        self._cell = ""
        self._out: list[str] = []

    def write(self, text: str) -> None:
        for ch in text:
            if ch == "\t":
                self._lines[-1].append(self._cell)
                self._cell = ""
            elif ch == "\n":
                self._lines[-1].append(self._cell)
                self._cell = ""
                ncells = len(self._lines[-1])
                self._lines.append([])
                if ncells == 1:
                    # a line without tabs ends every column block: format what we have
                    self._flush_lines()
            else:
                self._cell += ch

    def _flush_lines(self) -> None:
        if self._cell:
            self._lines[-1].append(self._cell)
            self._cell = ""
        self._widths: list[int] = []
        self._format(0, len(self._lines))
        self._lines = [[]]

    def flush(self) -> str:
        """Format everything buffered and return all output produced so far."""
        self._flush_lines()
        out = "".join(self._out)
        self._out = []
        return out

    def take(self) -> str:
        """Return output already formatted (by single-cell lines) without forcing a flush."""
        out = "".join(self._out)
        self._out = []
        return out

    def _format(self, line0: int, line1: int) -> None:
        column = len(self._widths)
        this = line0
        while this < line1:
            line = self._lines[this]
            if column >= len(line) - 1:
                this += 1
                continue
            self._write_lines(line0, this)
            line0 = this
            width = self.minwidth
            while this < line1:
                line = self._lines[this]
                if column >= len(line) - 1:
                    break
                width = max(width, len(line[column]) + self.padding)
                this += 1
            self._widths.append(width)
            self._format(line0, this)
            self._widths.pop()
            line0 = this
        self._write_lines(line0, line1)

    def _write_lines(self, line0: int, line1: int) -> None:
        for i in range(line0, line1):
            line = self._lines[i]
            for j, cell in enumerate(line):
                self._out.append(cell)
                if j < len(self._widths):
                    self._out.append(" " * (self._widths[j] - len(cell)))
            if i + 1 < len(self._lines):
                self._out.append("\n")
