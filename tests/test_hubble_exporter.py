"""Hubble flow export to a size-rotated JSON-lines file (lumberjack-style names and pruning)."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pytest

from tendril.hubble import record
from tendril.hubble.exporter import ExporterError, FileExporter, backup_name
from tendril.hubble.record import Tables

BACKUP = re.compile(r"^flows-\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3}\.json$")


def line(i: int) -> str:
    """A GetFlowsResponse-shaped line, ~100 bytes."""
    return json.dumps({"flow": {"uuid": f"{i:08d}", "verdict": "FORWARDED"}, "node_name": "node1"})


def read_all(exporter: FileExporter) -> list[str]:
    """Every kept line, oldest first: backups in name order, then the active file."""
    out: list[str] = []
    for p in [*exporter.backups(), exporter.path]:
        out += p.read_text().splitlines()
    return out


def test_rotation_keeps_the_active_name_and_loses_no_line(tmp_path: Path) -> None:
    path = tmp_path / "flows.json"
    size = len(line(0)) + 1
    with FileExporter(path, max_size_bytes=3 * size, max_backups=100) as ex:
        for i in range(0, 20, 4):  # several write() calls, several lines each
            ex.write(line(j) for j in range(i, i + 4))
        ex.flush()
        backups = ex.backups()
        assert len(backups) == 6  # 20 lines, 3 per file: 6 full backups + 2 lines active
        assert all(BACKUP.match(p.name) for p in backups), [p.name for p in backups]
        assert all(p.stat().st_size <= 3 * size for p in backups)
        assert path.read_text().splitlines() == [line(18), line(19)]
        assert read_all(ex) == [line(i) for i in range(20)]
        assert all(json.loads(x)["node_name"] == "node1" for x in read_all(ex))


def test_old_backups_are_pruned_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "flows.json"
    size = len(line(0)) + 1
    unrelated = tmp_path / "flows-notes.json"
    unrelated.write_text("keep me\n")
    with FileExporter(path, max_size_bytes=2 * size, max_backups=2) as ex:
        ex.write(line(i) for i in range(11))
        ex.flush()
        assert len(ex.backups()) == 2
        assert read_all(ex) == [line(i) for i in range(6, 11)]  # newest 2 backups (2 lines each) + active
    assert unrelated.read_text() == "keep me\n"


def test_zero_max_backups_keeps_every_backup_like_lumberjack(tmp_path: Path) -> None:
    with FileExporter(tmp_path / "flows.json", max_size_bytes=1, max_backups=0) as ex:
        ex.write(line(i) for i in range(5))
        ex.flush()
        assert len(ex.backups()) == 4 and len(read_all(ex)) == 5


def test_reopening_appends_and_counts_the_existing_size(tmp_path: Path) -> None:
    path = tmp_path / "flows.json"
    size = len(line(0)) + 1
    with FileExporter(path, max_size_bytes=2 * size) as ex:
        ex.write([line(0)])
    with FileExporter(path, max_size_bytes=2 * size) as ex:
        ex.write([line(1), line(2)])  # line 2 no longer fits next to lines 0 and 1
        ex.flush()
        assert len(ex.backups()) == 1
        assert read_all(ex) == [line(0), line(1), line(2)]


def test_missing_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "hubble" / "events.log"
    with FileExporter(path) as ex:
        ex.write(['{"flow":{}}'])
    assert path.read_text() == '{"flow":{}}\n'


def test_unwritable_location_fails_once_at_construction_with_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(
        ExporterError, match=r"cannot create the directory .*not-a-dir.*hubble-export-file-path"
    ):
        FileExporter(blocker / "flows.json")
    with pytest.raises(ExporterError, match="cannot open the file for appending"):
        FileExporter(tmp_path)  # a directory where the file should be


def test_writes_are_buffered_until_flush_and_close_is_final(tmp_path: Path) -> None:
    path = tmp_path / "flows.json"
    ex = FileExporter(path)
    ex.write([line(1)])
    assert path.read_text() == ""  # buffered: no syscall per line
    ex.flush()
    assert path.read_text() == line(1) + "\n"
    ex.close()
    ex.close()
    with pytest.raises(ExporterError, match="closed"):
        ex.write([line(2)])


def test_write_rows_builds_one_line_per_row(tmp_path: Path) -> None:
    tables = Tables()
    node = tables.strings.intern("node1")
    rows = record.empty(3)
    rows["node"] = node
    rows["dst_port"] = [80, 443, 8080]

    def to_json(row: np.void, t: Tables) -> str:
        return json.dumps(
            {"flow": {"destination_port": int(row["dst_port"])}, "node_name": t.string(row["node"])}
        )

    with FileExporter(tmp_path / "flows.json") as ex:
        ex.write_rows(rows, tables, to_json)
    got = [json.loads(x) for x in (tmp_path / "flows.json").read_text().splitlines()]
    assert [g["flow"]["destination_port"] for g in got] == [80, 443, 8080]
    assert {g["node_name"] for g in got} == {"node1"}


def test_backup_names_follow_lumberjack() -> None:
    when = dt.datetime(2024, 5, 4, 13, 23, 40, 501000, tzinfo=dt.UTC)
    assert backup_name(Path("/var/run/cilium/hubble/events.log"), when) == Path(
        "/var/run/cilium/hubble/events-2024-05-04T13-23-40.501.log"
    )
    assert backup_name(Path("flows"), when).name == "flows-2024-05-04T13-23-40.501"
