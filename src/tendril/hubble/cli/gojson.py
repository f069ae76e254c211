"""The bits of Go's encoding/json the hubble CLI's output and errors depend on.

``--allowlist``/``--denylist`` values are read with a streaming json.Decoder (several objects may
be concatenated) and its syntax errors are shown to the user verbatim; ``hubble list -o json``
prints json.MarshalIndent output. Both are reproduced here so texts match the Go CLI.
"""

from __future__ import annotations

from tendril.hubble.cli.goquote import go_quote

_WS = b" \t\r\n"


class GoJSONError(ValueError):
    """A JSON syntax error worded like encoding/json's."""


def _quote_char(c: int) -> str:
    if c == ord("'"):
        return "'\\''"
    if c == ord('"'):
        return "'\"'"
    return "'" + go_quote(chr(c))[1:-1] + "'"


class _Scanner:
    def __init__(self, data: bytes) -> None:
        self.b = data
        self.i = 0

    def fail(self, context: str) -> GoJSONError:
        if self.i >= len(self.b):
            return GoJSONError("unexpected EOF")
        return GoJSONError(f"invalid character {_quote_char(self.b[self.i])} {context}")

    def peek(self) -> int | None:
        return self.b[self.i] if self.i < len(self.b) else None

    def skip_ws(self) -> None:
        while self.i < len(self.b) and self.b[self.i] in _WS:
            self.i += 1

    def expect(self, ch: str, context: str) -> None:
        self.skip_ws()
        if self.peek() != ord(ch):
            raise self.fail(context)
        self.i += 1

    def value(self) -> None:
        self.skip_ws()
        c = self.peek()
        if c is None:
            raise GoJSONError("unexpected EOF")
        if c == ord("{"):
            self.i += 1
            self.skip_ws()
            if self.peek() == ord("}"):
                self.i += 1
                return
            while True:
                self.skip_ws()
                if self.peek() != ord('"'):
                    raise self.fail("looking for beginning of object key string")
                self.string()
                self.expect(":", "after object key")
                self.value()
                self.skip_ws()
                c = self.peek()
                if c == ord(","):
                    self.i += 1
                    continue
                if c == ord("}"):
                    self.i += 1
                    return
                raise self.fail("after object key:value pair")
        if c == ord("["):
            self.i += 1
            self.skip_ws()
            if self.peek() == ord("]"):
                self.i += 1
                return
            while True:
                self.value()
                self.skip_ws()
                c = self.peek()
                if c == ord(","):
                    self.i += 1
                    continue
                if c == ord("]"):
                    self.i += 1
                    return
                raise self.fail("after array element")
        if c == ord('"'):
            self.string()
            return
        if c == ord("-") or ord("0") <= c <= ord("9"):
            self.number()
            return
        for word in (b"true", b"false", b"null"):
            if c == word[0]:
                self.literal(word)
                return
        raise self.fail("looking for beginning of value")

    def string(self) -> None:
        self.i += 1  # opening quote
        while True:
            c = self.peek()
            if c is None:
                raise GoJSONError("unexpected EOF")
            if c == ord('"'):
                self.i += 1
                return
            if c == ord("\\"):
                self.i += 1
                e = self.peek()
                if e is None:
                    raise GoJSONError("unexpected EOF")
                if e == ord("u"):
                    self.i += 1
                    for _ in range(4):
                        h = self.peek()
                        if h is None:
                            raise GoJSONError("unexpected EOF")
                        if chr(h) not in "0123456789abcdefABCDEF":
                            raise self.fail("in \\u hexadecimal character escape")
                        self.i += 1
                    continue
                if chr(e) not in '"\\/bfnrt':
                    raise self.fail("in string escape code")
                self.i += 1
                continue
            if c < 0x20:
                raise self.fail("in string literal")
            self.i += 1

    def _digits(self) -> int:
        start = self.i
        while (c := self.peek()) is not None and ord("0") <= c <= ord("9"):
            self.i += 1
        return self.i - start

    def number(self) -> None:
        if self.peek() == ord("-"):
            self.i += 1
            c = self.peek()
            if c is None:
                raise GoJSONError("unexpected EOF")
            if not ord("0") <= c <= ord("9"):
                raise self.fail("in numeric literal")
        if self.peek() == ord("0"):
            self.i += 1
        else:
            self._digits()
        if self.peek() == ord("."):
            self.i += 1
            if self.peek() is None:
                raise GoJSONError("unexpected EOF")
            if not self._digits():
                raise self.fail("after decimal point in numeric literal")
        if self.peek() in (ord("e"), ord("E")):
            self.i += 1
            if self.peek() in (ord("+"), ord("-")):
                self.i += 1
            if self.peek() is None:
                raise GoJSONError("unexpected EOF")
            if not self._digits():
                raise self.fail("in exponent of numeric literal")

    def literal(self, word: bytes) -> None:
        name = word.decode()
        self.i += 1
        for expected in word[1:]:
            c = self.peek()
            if c is None:
                raise GoJSONError("unexpected EOF")
            if c != expected:
                raise self.fail(f"in literal {name} (expecting {_quote_char(expected)})")
            self.i += 1


def split_values(text: str) -> list[str]:
    """The JSON values a json.Decoder reads from ``text`` (concatenated, whitespace-separated)."""
    sc = _Scanner(text.encode())
    values: list[str] = []
    while True:
        sc.skip_ws()
        if sc.peek() is None:
            return values
        start = sc.i
        sc.value()
        values.append(sc.b[start : sc.i].decode())


def indent(compact: str, prefix: str = "", unit: str = "  ") -> str:
    """json.Indent over valid JSON text (keeps number and string literals byte-identical)."""
    out: list[str] = []
    depth = 0
    need_indent = False
    in_string = False
    escaped = False

    def newline() -> None:
        out.append("\n" + prefix + unit * depth)

    for ch in compact:
        if in_string:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch in " \t\r\n":
            continue
        if need_indent and ch not in "]}":
            need_indent = False
            depth += 1
            newline()
        if ch == '"':
            in_string = True
            out.append(ch)
        elif ch in "{[":
            need_indent = True
            out.append(ch)
        elif ch == ",":
            out.append(ch)
            newline()
        elif ch == ":":
            out.append(": ")
        elif ch in "}]":
            if need_indent:
                need_indent = False
            else:
                depth -= 1
                newline()
            out.append(ch)
        else:
            out.append(ch)
    return "".join(out)
