"""Policy errors: one line for the user, naming the file, the object and the field."""

from __future__ import annotations

from tendril.common.errors import InvalidInputError, TendrilError


class PolicyValidationError(InvalidInputError):
    """A policy document is invalid; nothing of its file is applied."""


class PolicyMapFull(TendrilError):
    """An endpoint's resolved policy needs more entries than its policy map holds."""

    def __init__(self, endpoint_id: int, endpoint_name: str, needed: int, capacity: int) -> None:
        self.endpoint_id, self.needed, self.capacity = endpoint_id, needed, capacity
        who = f"endpoint {endpoint_id}" + (f" ({endpoint_name})" if endpoint_name else "")
        super().__init__(
            f"{who}: policy needs {needed} policy-map entries but the map holds {capacity} "
            "(bpf-policy-map-max); narrow the policies that select it (fewer peers, CIDRs or port ranges)"
        )


class FieldError(Exception):
    """Internal: a semantic error at a field path; the parser puts file, kind and name in front."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def invalid(path: str, message: str) -> FieldError:
    return FieldError(f'invalid value for "{path}": {message}')


def missing(path: str, hint: str = "") -> FieldError:
    return FieldError(f'missing required field "{path}"{hint}')
