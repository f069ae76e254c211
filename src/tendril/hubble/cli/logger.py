"""hubble's log lines on stderr (Go slog text format), for --debug and warnings.

Kept separate from command output: golden comparisons drop lines that start with ``time=``,
exactly as the fixtures' authors did with the Go CLI's logs.
"""

from __future__ import annotations

import datetime as _dt
import sys
from typing import TextIO


def _value(v: object) -> str:
    text = str(v)
    if text and all(c.isprintable() and c not in ' ="' for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class Logger:
    """Writes ``time=... level=... msg=... k=v`` lines; DEBUG only when debug is on."""

    def __init__(self, debug: bool = False, stream: TextIO | None = None) -> None:
        self.debug_enabled = debug
        self.stream = stream

    def _log(self, level: str, msg: str, **attrs: object) -> None:
        stream = self.stream or sys.stderr
        now = _dt.datetime.now().astimezone().isoformat(timespec="milliseconds").replace("+00:00", "Z")
        parts = [f"time={now}", f"level={level}", f"msg={_value(msg)}"]
        parts += [f"{k}={_value(v)}" for k, v in attrs.items()]
        stream.write(" ".join(parts) + "\n")
        stream.flush()

    def debug(self, msg: str, **attrs: object) -> None:
        if self.debug_enabled:
            self._log("DEBUG", msg, **attrs)

    def warn(self, msg: str, **attrs: object) -> None:
        self._log("WARN", msg, **attrs)
