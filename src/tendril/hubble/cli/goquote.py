"""Go's strconv.Quote (also what ``%q`` prints), used in hubble's error and status texts.

hubble error messages quote user input with Go rules (``invalid argument "x" for "--pod" flag``)
and dict output quotes node status messages; Python's repr/json quoting differs for control and
non-ASCII characters, so the Go rules are reproduced here.
"""

from __future__ import annotations

import unicodedata

_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}

# Unicode categories Go's unicode.IsPrint rejects (it accepts letters, marks, numbers,
# punctuation, symbols and the ASCII space only).
_NON_PRINT_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"}


def _is_print(ch: str) -> bool:
    if ch == " ":
        return True
    return unicodedata.category(ch) not in _NON_PRINT_CATEGORIES


def go_quote(s: str) -> str:
    """strconv.Quote: double-quoted, Go escapes, printable non-ASCII kept as is."""
    out = ['"']
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif _is_print(ch):
            out.append(ch)
        else:
            cp = ord(ch)
            if cp < 0x80:
                out.append(f"\\x{cp:02x}")
            elif cp <= 0xFFFF:
                out.append(f"\\u{cp:04x}")
            else:
                out.append(f"\\U{cp:08x}")
    out.append('"')
    return "".join(out)
