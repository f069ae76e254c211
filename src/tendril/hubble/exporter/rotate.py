"""Backup naming and pruning for size-rotated files, the way lumberjack (Hubble's exporter) does it.

The active file keeps its name; a rotated file becomes `<stem>-<UTC time>.<ext>` with the time in
lumberjack's layout `2006-01-02T15-04-05.000`, so backups sort by name and tools that tail the
active path never lose it. Only files matching that exact pattern are ever deleted.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

TIME_FORMAT = "%Y-%m-%dT%H-%M-%S"  # + ".mmm"


def backup_name(path: Path, when: dt.datetime) -> Path:
    """hubble/events.log at 2024-05-04 13:23:40.501 UTC -> hubble/events-2024-05-04T13-23-40.501.log"""
    stamp = when.astimezone(dt.UTC).strftime(TIME_FORMAT) + f".{when.microsecond // 1000:03d}"
    return path.with_name(f"{_stem(path)}-{stamp}{path.suffix}")


def free_backup_name(path: Path, when: dt.datetime) -> Path:
    """A backup name later than every existing one, so name order stays age order.

    Rotations within one millisecond (small files, bursts) step the newer one forward by 1 ms.
    """
    existing = backups(path)
    if existing:
        newest = _stamp_time(existing[-1], path) + dt.timedelta(milliseconds=1)
        when = max(when.astimezone(dt.UTC), newest)
    candidate = backup_name(path, when)
    while candidate.exists():
        when += dt.timedelta(milliseconds=1)
        candidate = backup_name(path, when)
    return candidate


def backups(path: Path) -> list[Path]:
    """Existing backups of `path`, oldest first (by the time in their name)."""
    pattern = _pattern(path)
    found: list[tuple[str, Path]] = []
    if path.parent.is_dir():
        for p in path.parent.iterdir():
            m = pattern.match(p.name)
            if m and p.is_file():
                found.append((m.group(1), p))
    return [p for _, p in sorted(found)]


def _pattern(path: Path) -> re.Pattern[str]:
    stamp = r"(\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3})"
    return re.compile(re.escape(_stem(path)) + "-" + stamp + re.escape(path.suffix) + "$")


def _stamp_time(backup: Path, path: Path) -> dt.datetime:
    m = _pattern(path).match(backup.name)
    assert m is not None
    base, _, millis = m.group(1).partition(".")
    when = dt.datetime.strptime(base, TIME_FORMAT).replace(tzinfo=dt.UTC)
    return when + dt.timedelta(milliseconds=int(millis))


def prune(path: Path, max_backups: int) -> list[Path]:
    """Delete the oldest backups beyond `max_backups` (0 keeps all, as lumberjack); returns the deleted."""
    if max_backups <= 0:
        return []
    old = backups(path)
    doomed = old[: max(0, len(old) - max_backups)]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


def _stem(path: Path) -> str:
    return path.name[: len(path.name) - len(path.suffix)] if path.suffix else path.name
