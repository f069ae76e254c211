"""The one exception type hubble-style commands report: its message is printed verbatim, exit 1.

The upstream CLI prints bare error texts (no "Error:" prefix); golden tests compare them byte
for byte, so every user-facing failure in this package is raised as a CLIError with hubble's text.
"""

from __future__ import annotations


class CLIError(Exception):
    """A user-facing failure whose message is the complete line hubble would print."""
