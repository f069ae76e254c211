"""Command-line flags with spf13/pflag semantics.

hubble's filter flags are order-sensitive (``--not`` applies to the *next* filter flag, conflicts
are detected while flags are set) and its error texts name flags the pflag way
(``invalid argument "x" for "-t, --type" flag: ...``). click processes options per parameter, not
in command-line order, so hubble-compatible commands take their raw arguments and parse them
here: every flag is applied, in order, as pflag would.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tendril.hubble.cli.errors import CLIError
from tendril.hubble.cli.goquote import go_quote
from tendril.hubble.cli.gotime import parse_duration

BOOL = "bool"
STRING = "string"
UINT64 = "uint64"
DURATION = "duration"
STRING_SLICE = "stringSlice"
STRING_ARRAY = "stringArray"
FUNC = "func"

_MAX_UINT64 = (1 << 64) - 1


class FlagError(CLIError):
    """A flag could not be parsed or applied; the message is hubble's, printed as is."""


class HelpRequested(Exception):
    """-h/--help was given."""


@dataclass
class Flag:
    name: str
    kind: str
    default: Any = None
    shorthand: str = ""
    help: str = ""
    # value used when the flag is given without "=value" (pflag's NoOptDefVal)
    no_opt_default: str | None = None
    setter: Callable[[str], None] | None = None
    group: str = ""
    value: Any = None
    changed: bool = False

    def display_name(self) -> str:
        return f"-{self.shorthand}, --{self.name}" if self.shorthand else f"--{self.name}"


def parse_bool(text: str) -> bool:
    """strconv.ParseBool."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(f"strconv.ParseBool: parsing {go_quote(text)}: invalid syntax")


def parse_uint(text: str, bits: int = 64, base: int = 0) -> int:
    """strconv.ParseUint with Go's base-0 prefixes (0x, 0o, 0b, leading 0 = octal, underscores)."""
    syntax = ValueError(f"strconv.ParseUint: parsing {go_quote(text)}: invalid syntax")
    s = text
    if not s:
        raise syntax
    if base == 0:
        lower = s.lower()
        if lower.startswith(("0x", "0o", "0b")):
            base, digits = {"x": 16, "o": 8, "b": 2}[lower[1]], s[2:]
        elif s.startswith("0") and len(s) > 1:
            base, digits = 8, s[1:]
        else:
            base, digits = 10, s
        if "_" in digits:
            if digits.startswith("_") or digits.endswith("_") or "__" in digits:
                raise syntax
            digits = digits.replace("_", "")
    else:
        digits = s
    if not digits or not all(c.isascii() and c.isalnum() for c in digits):
        raise syntax
    try:
        value = int(digits, base)
    except ValueError:
        raise syntax from None
    if value > (1 << bits) - 1:
        raise ValueError(f"strconv.ParseUint: parsing {go_quote(text)}: value out of range")
    return value


def _csv_values(text: str) -> list[str]:
    if text == "":
        return []
    return next(csv.reader(io.StringIO(text)))


@dataclass
class FlagSet:
    """An ordered set of flags; ``parse`` applies them like pflag.FlagSet.Parse."""

    flags: list[Flag] = field(default_factory=list)

    def add(self, flag: Flag) -> Flag:
        if flag.kind == BOOL and flag.no_opt_default is None:
            flag.no_opt_default = "true"
        if flag.kind in (STRING_SLICE, STRING_ARRAY):
            flag.value = list(flag.default or [])
        else:
            flag.value = flag.default
        self.flags.append(flag)
        return flag

    def lookup(self, name: str) -> Flag | None:
        return next((f for f in self.flags if f.name == name), None)

    def lookup_short(self, short: str) -> Flag | None:
        return next((f for f in self.flags if f.shorthand == short), None)

    def __getitem__(self, name: str) -> Any:
        flag = self.lookup(name)
        if flag is None:
            raise KeyError(name)
        return flag.value

    def changed(self, name: str) -> bool:
        flag = self.lookup(name)
        return bool(flag and flag.changed)

    def set(self, flag: Flag, value: str) -> None:
        try:
            self._apply(flag, value)
        except (ValueError, FlagError) as e:
            raise FlagError(
                f"invalid argument {go_quote(value)} for {go_quote(flag.display_name())} flag: {e}"
            ) from None
        flag.changed = True

    def _apply(self, flag: Flag, value: str) -> None:
        if flag.kind == BOOL:
            flag.value = parse_bool(value)
        elif flag.kind == STRING:
            flag.value = value
        elif flag.kind == UINT64:
            flag.value = parse_uint(value)
        elif flag.kind == DURATION:
            flag.value = parse_duration(value)
        elif flag.kind == STRING_SLICE:
            values = _csv_values(value)
            flag.value = values if not flag.changed else flag.value + values
        elif flag.kind == STRING_ARRAY:
            flag.value = [value] if not flag.changed else flag.value + [value]
        elif flag.kind == FUNC:
            assert flag.setter is not None
            flag.setter(value)
        else:  # pragma: no cover - programming error
            raise AssertionError(flag.kind)

    def parse(self, args: Sequence[str]) -> list[str]:
        """Apply the flags in ``args`` in order; returns the positional arguments."""
        rest = list(args)
        positionals: list[str] = []
        while rest:
            s = rest.pop(0)
            if len(s) < 2 or s[0] != "-":
                positionals.append(s)
            elif s == "--":
                positionals.extend(rest)
                break
            elif s[1] == "-":
                self._parse_long(s, rest)
            else:
                self._parse_short(s, rest)
        return positionals

    def _parse_long(self, s: str, rest: list[str]) -> None:
        name = s[2:]
        if not name or name[0] in "-=":
            raise FlagError(f"bad flag syntax: {s}")
        name, eq, inline = name.partition("=")
        flag = self.lookup(name)
        if flag is None:
            if name == "help":
                raise HelpRequested
            raise FlagError(f"unknown flag: --{name}")
        if eq:
            value = inline
        elif flag.no_opt_default is not None:
            value = flag.no_opt_default
        elif rest:
            value = rest.pop(0)
        else:
            raise FlagError(f"flag needs an argument: {s}")
        self.set(flag, value)

    def _parse_short(self, s: str, rest: list[str]) -> None:
        shorthands = s[1:]
        while shorthands:
            c = shorthands[0]
            flag = self.lookup_short(c)
            if flag is None:
                if c == "h":
                    raise HelpRequested
                raise FlagError(f"unknown shorthand flag: '{c}' in -{shorthands}")
            if len(shorthands) > 2 and shorthands[1] == "=":
                value, shorthands = shorthands[2:], ""
            elif flag.no_opt_default is not None:
                value, shorthands = flag.no_opt_default, shorthands[1:]
            elif len(shorthands) > 1:
                value, shorthands = shorthands[1:], ""
            elif rest:
                value, shorthands = rest.pop(0), ""
            else:
                raise FlagError(f"flag needs an argument: '{c}' in -{shorthands}")
            self.set(flag, value)

    def usage(self, groups: Sequence[str] | None = None) -> str:
        """Flag help in cobra's layout, grouped like hubble's help template."""
        lines: list[str] = []
        order = list(groups) if groups else sorted({f.group for f in self.flags})
        for group in order:
            members = [f for f in self.flags if f.group == group]
            if not members:
                continue
            lines.append(f"{group} Flags:" if group else "Flags:")
            cells = []
            for f in members:
                short = f"-{f.shorthand}, " if f.shorthand else "    "
                arg = "" if f.kind == BOOL or f.no_opt_default is not None else f" {_arg_name(f)}"
                cells.append((f"  {short}--{f.name}{arg}", f.help.splitlines()[0] if f.help else ""))
            width = max(len(c[0]) for c in cells) + 3
            lines.extend(f"{left.ljust(width)}{text}".rstrip() for left, text in cells)
            lines.append("")
        return "\n".join(lines)


def _arg_name(flag: Flag) -> str:
    return {
        STRING: "string",
        UINT64: "uint",
        DURATION: "duration",
        STRING_SLICE: "strings",
        STRING_ARRAY: "stringArray",
        FUNC: "filter",
    }.get(flag.kind, "value")
