"""hubble's output colours and its terminal-escape filter.

The CLI colours hosts, ports, identities, verdicts and auth types (fatih/color codes), and scrubs
every other ESC and CR out of text output so a crafted DNS name or HTTP URL cannot drive the
user's terminal. Only the CLI's own colour sequences survive, and only when colours are on.
"""

from __future__ import annotations

import os

RED, GREEN, BLUE, CYAN, MAGENTA, YELLOW = 31, 32, 34, 36, 35, 33
RESET = "\x1b[0m"


def colors_by_default(stdout_isatty: bool) -> bool:
    """fatih/color's global default: on for a real terminal unless NO_COLOR or TERM=dumb."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    return stdout_isatty


class Colorer:
    """Wraps text in ANSI colours (or not), following hubble's ``--color`` semantics."""

    def __init__(self, when: str, stdout_isatty: bool) -> None:
        mode = when.lower()
        if mode == "always":
            self.enabled = True
        elif mode == "never":
            self.enabled = False
        else:  # "auto" and anything unrecognised fall back to the library default
            self.enabled = colors_by_default(stdout_isatty)

    def disable(self) -> None:
        self.enabled = False

    def _wrap(self, code: int, text: str) -> str:
        return f"\x1b[{code}m{text}{RESET}" if self.enabled else text

    def port(self, text: str) -> str:
        return self._wrap(YELLOW, text)

    def host(self, text: str) -> str:
        return self._wrap(CYAN, text)

    def identity(self, text: str) -> str:
        return self._wrap(MAGENTA, text)

    def verdict_forwarded(self, text: str) -> str:
        return self._wrap(GREEN, text)

    def verdict_dropped(self, text: str) -> str:
        return self._wrap(RED, text)

    def verdict_audit(self, text: str) -> str:
        return self._wrap(YELLOW, text)

    def verdict_traced(self, text: str) -> str:
        return self._wrap(YELLOW, text)

    def verdict_translated(self, text: str) -> str:
        return self._wrap(YELLOW, text)

    def auth_test_always_fail(self, text: str) -> str:
        return self._wrap(RED, text)

    def auth_enabled(self, text: str) -> str:
        return self._wrap(GREEN, text)

    def sequences(self) -> list[str]:
        """The escape sequences this colorer may emit (allowed through the escaper)."""
        if not self.enabled:
            return []
        return [f"\x1b[{code}m" for code in (RED, GREEN, BLUE, CYAN, MAGENTA, YELLOW)] + [RESET]


class TerminalEscaper:
    """Replaces ESC with ``^[`` and CR with ``\\r``, except for the allowed colour sequences."""

    def __init__(self, allowed: list[str]) -> None:
        self.allowed = allowed

    def __call__(self, text: str) -> str:
        if "\x1b" not in text and "\r" not in text:
            return text
        out: list[str] = []
        i = 0
        n = len(text)
        while i < n:
            ch = text[i]
            if ch == "\x1b":
                seq = next((s for s in self.allowed if text.startswith(s, i)), None)
                if seq is not None:
                    out.append(seq)
                    i += len(seq)
                    continue
                out.append("^[")
            elif ch == "\r":
                out.append("\\r")
            else:
                out.append(ch)
            i += 1
        return "".join(out)
