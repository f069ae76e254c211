"""FileExporter: Hubble's flow export to a JSON-lines file, rotated by size.

Why a file: the ring buffer forgets (users asked for retention and were pointed at
`hubble-export-file-path`, cilium#40539). Each line is a GetFlowsResponse in `hubble observe -o
json` form, so `hubble observe --input-file` replays it. Writes are buffered and never fsynced:
export must not slow the event pipeline; `flush()` pushes the buffer to the OS.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from tendril.hubble.exporter import rotate
from tendril.hubble.record import Tables

DEFAULT_MAX_SIZE = 10 * 1024 * 1024  # Hubble's hubble-export-file-max-size-mb default: 10
DEFAULT_MAX_BACKUPS = 5  # hubble-export-file-max-backups default
BUFFER_SIZE = 1 << 16


class ExporterError(OSError):
    """The export file cannot be created or written; the message names the path and the fix."""


class FileExporter:
    """Append JSON lines to `path`; past `max_size_bytes` the file is rotated, keeping `max_backups`."""

    def __init__(
        self, path: str | Path, max_size_bytes: int = DEFAULT_MAX_SIZE, max_backups: int = DEFAULT_MAX_BACKUPS
    ) -> None:
        if max_size_bytes <= 0:
            raise ValueError(f"hubble exporter: max_size_bytes must be positive, got {max_size_bytes}")
        self.path = Path(path)
        self.max_size = max_size_bytes
        self.max_backups = max_backups
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        self._size = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._error("cannot create the directory", e) from e
        self._open()

    # ---- writing -------------------------------------------------------------------------------
    def write(self, lines: Iterable[str]) -> int:
        """Append one line per string (a newline is added); returns the bytes written."""
        written = 0
        with self._lock:
            if self._file is None:
                raise ExporterError(f"hubble exporter: {self.path} is closed")
            for line in lines:
                data = line.encode()
                if not data.endswith(b"\n"):
                    data += b"\n"
                if self._size and self._size + len(data) > self.max_size:
                    self._rotate()
                self._write(data)
                written += len(data)
        return written

    def write_rows(self, rows: np.ndarray, tables: Tables, to_json: Callable[[np.void, Tables], str]) -> int:
        """Convenience: one line per stored flow row, built by `to_json(row, tables)`."""
        return self.write(to_json(row, tables) for row in rows)

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def backups(self) -> list[Path]:
        """Rotated files still kept, oldest first."""
        return rotate.backups(self.path)

    def __enter__(self) -> FileExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals -----------------------------------------------------------------------------
    def _open(self) -> None:
        try:
            f = open(self.path, "ab", buffering=BUFFER_SIZE)  # noqa: SIM115 - lives until close()
        except OSError as e:
            raise self._error("cannot open the file for appending", e) from e
        self._file = f
        self._size = os.fstat(f.fileno()).st_size

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        try:
            self._file.write(data)
        except OSError as e:
            raise self._error("write failed", e) from e
        self._size += len(data)

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        try:
            os.rename(self.path, rotate.free_backup_name(self.path, dt.datetime.now(dt.UTC)))
        except OSError as e:
            raise self._error("cannot rotate", e) from e
        self._open()
        rotate.prune(self.path, self.max_backups)

    def _error(self, what: str, e: OSError) -> ExporterError:
        return ExporterError(
            e.errno,
            f"hubble exporter: {what} {self.path}: {e.strerror or e}; "
            "set the export file path to a writable location (hubble-export-file-path)",
        )
