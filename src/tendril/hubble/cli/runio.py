"""The streams and environment a hubble-style command runs with (injectable for tests).

Output is written as UTF-8 bytes so what reaches a pipe or file is exactly what hubble writes,
independent of the Python locale.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO


@dataclass
class RunIO:
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    stdout: BinaryIO = field(default_factory=lambda: sys.stdout.buffer)
    stderr: BinaryIO = field(default_factory=lambda: sys.stderr.buffer)
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)

    def out(self, text: str) -> None:
        self.stdout.write(text.encode("utf-8", "surrogateescape"))
        self.stdout.flush()

    def err(self, text: str) -> None:
        self.stderr.write(text.encode("utf-8", "surrogateescape"))
        self.stderr.flush()

    def stdout_isatty(self) -> bool:
        try:
            return self.stdout.isatty()
        except (AttributeError, ValueError):
            return False


class _TextErr:
    """A text view of RunIO.stderr for the logger."""

    def __init__(self, io: RunIO) -> None:
        self.io = io

    def write(self, text: str) -> int:
        self.io.err(text)
        return len(text)

    def flush(self) -> None:
        pass


def text_stderr(io: RunIO) -> TextIO:
    return _TextErr(io)  # type: ignore[return-value]


def silence_stdout(io: RunIO) -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush does not fail."""
    try:
        fd = io.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
