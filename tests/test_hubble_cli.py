"""Golden tests: `tendril observe` against the upstream hubble CLI v1.19.4 fixtures.

Three families from /work/shared/fixtures/hubble-cli: renderings of flows.jsonl (out/, run through
the real `tendril` executable, compared byte for byte), `--print-raw-filters` output and error
texts (filters/), and the GetFlowsRequest each flag set produces (requests.json, compared as
deterministic protobuf bytes).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tendril.hubble.cli.observe import prepare, run_observe
from tendril.hubble.cli.runio import RunIO

FIXTURES = Path(
    os.environ.get("HUBBLE_CLI_FIXTURES", Path(__file__).resolve().parents[2] / "shared/fixtures/hubble-cli")
)

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason="hubble CLI fixtures not available")


def _tendril() -> str:
    exe = Path(sys.executable).parent / "tendril"
    return str(exe) if exe.exists() else (shutil.which("tendril") or "tendril")


def _load(name: str) -> dict:
    path = FIXTURES / name
    return json.loads(path.read_text()) if path.exists() else {}


def _without_logs(stderr: bytes) -> bytes:
    """Drop slog lines, as the fixture authors did for the *-debug renderings."""
    return b"".join(line for line in stderr.splitlines(keepends=True) if not line.startswith(b"time="))


def _args(path: Path) -> list[str]:
    text = path.read_text()
    return text.split("\n")[:-1] if text else []


def _run_inprocess(args: list[str], env: dict[str, str] | None = None) -> tuple[int, bytes, bytes]:
    out, err = io.BytesIO(), io.BytesIO()
    rio = RunIO(stdin=io.StringIO(""), stdout=out, stderr=err, env=env or {"TZ": "UTC"})
    code = run_observe(args, rio)
    return code, out.getvalue(), err.getvalue()


# -- out/: renderings of flows.jsonl ----------------------------------------------------------------

COMMANDS = _load("out/commands.json")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_rendering_matches_hubble(name: str) -> None:
    case = COMMANDS[name]
    env = {"PATH": os.environ.get("PATH", ""), **case["env"]}
    proc = subprocess.run(
        [_tendril(), "observe", *case["args"]], cwd=FIXTURES, env=env, capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr.decode()
    expected_out = (FIXTURES / "out" / case["stdout"]).read_bytes()
    expected_err = (FIXTURES / "out" / case["stderr"]).read_bytes() if case["stderr"] else b""
    assert proc.stdout == expected_out
    assert _without_logs(proc.stderr) == expected_err


# -- filters/: --print-raw-filters and rejected flag combinations ------------------------------------

FILTER_CASES = sorted(p.stem for p in (FIXTURES / "filters").glob("*.args")) if FIXTURES.is_dir() else []


@pytest.mark.parametrize("name", FILTER_CASES)
def test_raw_filters_match_hubble(name: str) -> None:
    args = _args(FIXTURES / "filters" / f"{name}.args")
    code, out, err = _run_inprocess(["--print-raw-filters", *args])
    accepted = FIXTURES / "filters" / f"{name}.json"
    if accepted.exists():
        expected = json.loads(accepted.read_text())
        assert (code, err) == (0, b"")
        assert out.decode() == expected["stdout"]
    else:
        assert code == 1
        assert out == b""
        assert err == (FIXTURES / "filters" / f"{name}.error").read_bytes()


# The click layer must hand hubble's flags through untouched: a sample through the real executable.
CLI_FILTER_SAMPLE = [
    "pod-not-verdict",
    "all-namespaces",
    "type-multi",
    "raw-allowlist-denylist",
    "double-not",
    "trailing-not",
    "type-invalid",
    "allowlist-invalid",
]


@pytest.mark.parametrize("name", [n for n in CLI_FILTER_SAMPLE if n in FILTER_CASES])
def test_raw_filters_through_cli(name: str) -> None:
    args = _args(FIXTURES / "filters" / f"{name}.args")
    proc = subprocess.run(
        [_tendril(), "observe", "--print-raw-filters", *args],
        capture_output=True,
        timeout=60,
        env={"TZ": "UTC"},
    )
    accepted = FIXTURES / "filters" / f"{name}.json"
    if accepted.exists():
        assert proc.returncode == 0
        assert proc.stdout.decode() == json.loads(accepted.read_text())["stdout"]
    else:
        assert proc.returncode == 1
        assert proc.stderr == (FIXTURES / "filters" / f"{name}.error").read_bytes()


# -- requests.json: the GetFlowsRequest on the wire --------------------------------------------------

REQUESTS = _load("requests.json")


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_request_matches_hubble(name: str) -> None:
    case = REQUESTS[name]
    if "request_pb_hex" in case:
        rio = RunIO(stdin=io.StringIO(""), stdout=io.BytesIO(), stderr=io.BytesIO(), env={"TZ": "UTC"})
        _, _, _, req = prepare(["--server", "localhost:1", "--debug", *case["args"]], rio)
        assert req.SerializeToString(deterministic=True).hex() == case["request_pb_hex"]
    else:
        code, out, err = _run_inprocess(["--server", "localhost:1", "--debug", *case["args"]])
        assert code == case["exit_code"]
        assert _without_logs(err).decode() == case["stderr"]


# -- transport ---------------------------------------------------------------------------------------


def test_unreachable_server_fails_with_one_line() -> None:
    proc = subprocess.run(
        [_tendril(), "hubble", "observe", "--server", "unix:///nonexistent.sock"],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stdout == b""
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rpc error: code = Unavailable desc = ")
