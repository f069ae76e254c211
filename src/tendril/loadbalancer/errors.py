"""Errors of the load balancer: one line each, naming the file, the Service and the field.

They subclass the common user-facing errors so the CLI prints them as they are and exits non-zero.
"""

from __future__ import annotations

from tendril.common.errors import InvalidInputError, TendrilError


class ServiceValidationError(InvalidInputError):
    """A Service document is invalid; nothing of its file is applied."""


class ServiceAllocationError(InvalidInputError):
    """A valid Service asks for an address or nodePort that is taken, reserved or out of range."""


class ServiceCapacityError(TendrilError):
    """The services need more load-balancer map entries than the datapath's maps hold."""


class FieldError(Exception):
    """Internal: a semantic error at a field path; the parser puts file, kind and name in front."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def invalid(path: str, message: str) -> FieldError:
    return FieldError(f'invalid value for "{path}": {message}')


def missing(path: str, hint: str = "") -> FieldError:
    return FieldError(f'missing required field "{path}"{hint}')
