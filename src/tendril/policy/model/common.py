"""Pieces both policy formats share: strict models, object metadata and label selectors."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tendril.common.manifests import check_name, check_namespace
from tendril.policy.selector import (
    DOES_NOT_EXIST,
    EXISTS,
    OPERATORS,
    Selector,
    label_key_error,
    label_value_error,
    selector_from_k8s,
)


class Strict(BaseModel):
    """Unknown fields are errors, as with `kubectl apply --validate=strict`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ObjectMeta(Strict):
    name: str
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    _name = field_validator("name")(classmethod(lambda cls, v: check_name(v)))
    _namespace = field_validator("namespace")(classmethod(lambda cls, v: check_namespace(v)))


class SelectorRequirement(Strict):
    key: str
    operator: str
    values: list[str] | None = Field(default=None, validate_default=True)

    @field_validator("operator")
    @classmethod
    def _operator(cls, v: str) -> str:
        if v not in OPERATORS:
            raise ValueError(f"unknown operator {v!r} (allowed: {', '.join(OPERATORS)})")
        return v

    @field_validator("values")
    @classmethod
    def _values(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        op = info.data.get("operator")
        if op in (EXISTS, DOES_NOT_EXIST):
            if v:
                raise ValueError(f"must be empty when operator is {op}")
        elif op is not None and not v:
            raise ValueError(f"must be non-empty when operator is {op}")
        for value in v or ():
            if why := label_value_error(value):
                raise ValueError(why)
        return v


class _LabelSelectorBase(Strict):
    matchLabels: dict[str, str] = Field(default_factory=dict)
    matchExpressions: list[SelectorRequirement] = Field(default_factory=list)

    #: whether keys may carry a Cilium source prefix (`k8s:`, `reserved:`, `any:`)
    allow_sources: ClassVar[bool] = True

    @field_validator("matchLabels")
    @classmethod
    def _match_labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if why := label_key_error(key, allow_source=cls.allow_sources) or label_value_error(value):
                raise ValueError(why)
        return v

    @field_validator("matchExpressions")
    @classmethod
    def _match_expressions(cls, v: list[SelectorRequirement]) -> list[SelectorRequirement]:
        for req in v:
            if why := label_key_error(req.key, allow_source=cls.allow_sources):
                raise ValueError(why)
        return v

    def is_empty(self) -> bool:
        return not self.matchLabels and not self.matchExpressions

    def to_selector(self, *, default_source: str, key_prefix: str = "") -> Selector:
        exprs = [(r.key, r.operator, r.values or ()) for r in self.matchExpressions]
        return selector_from_k8s(
            self.matchLabels, exprs, default_source=default_source, key_prefix=key_prefix
        )


class EndpointSelector(_LabelSelectorBase):
    """Cilium's selector: keys may carry a source (`k8s:app`, `reserved:host`); none = any source."""


class LabelSelector(_LabelSelectorBase):
    """Kubernetes' selector: plain label keys."""

    allow_sources: ClassVar[bool] = False
