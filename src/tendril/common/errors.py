"""User-facing errors: one clear line that names the problem; the CLI prints it and exits non-zero."""

from __future__ import annotations


class TendrilError(Exception):
    """An error whose message is meant for the user as it is."""


class NotFoundError(TendrilError):
    pass


class InvalidInputError(TendrilError):
    pass


def require_root(action: str) -> None:
    import os

    if os.geteuid() != 0:
        raise TendrilError(
            f"tendril {action} needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN): run it with sudo"
        )
