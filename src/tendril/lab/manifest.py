"""Kubernetes-style manifests the lab accepts: Namespace, Pod, Deployment.

Parsed strictly (unknown fields are errors, as `kubectl apply --validate=strict` does), and every
document of a file is validated before anything is applied, so a bad file changes nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tendril.common.errors import InvalidInputError
from tendril.common.manifests import check_name, check_namespace, pydantic_message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _check_annotations(v: dict[str, str]) -> dict[str, str]:
    """Annotations Tendril reads are checked at parse time, so a bad value applies nothing."""
    from tendril.agent.visibility import ANNOTATION, annotation_choice

    try:
        annotation_choice(v)
    except InvalidInputError:
        raise ValueError(f'{ANNOTATION}: {v[ANNOTATION]!r} is not "true" or "false"') from None
    return v


class ObjectMeta(_Strict):
    name: str
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    _name = field_validator("name")(classmethod(lambda cls, v: check_name(v)))
    _namespace = field_validator("namespace")(classmethod(lambda cls, v: check_namespace(v)))
    _annotations = field_validator("annotations")(classmethod(lambda cls, v: _check_annotations(v)))


class TemplateMeta(_Strict):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    _annotations = field_validator("annotations")(classmethod(lambda cls, v: _check_annotations(v)))


class EnvVar(_Strict):
    name: str
    value: str = ""


class ContainerPort(_Strict):
    containerPort: int = Field(ge=1, le=65535)
    name: str | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


class Container(_Strict):
    name: str
    image: str | None = None  # accepted for familiarity; the lab runs commands, not images
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)
    ports: list[ContainerPort] = Field(default_factory=list)

    def argv(self) -> list[str]:
        """What runs in the pod: command + args, or an idle process when neither is given."""
        argv = [*self.command, *self.args]
        return argv or ["tendril", "workload", "pause"]


class PodSpec(_Strict):
    containers: list[Container] = Field(min_length=1)
    nodeName: str | None = None
    restartPolicy: Literal["Always", "OnFailure", "Never"] = "Always"


class Namespace(_Strict):
    apiVersion: Literal["v1"]
    kind: Literal["Namespace"]
    metadata: ObjectMeta


class Pod(_Strict):
    apiVersion: Literal["v1"]
    kind: Literal["Pod"]
    metadata: ObjectMeta
    spec: PodSpec


class LabelSelector(_Strict):
    matchLabels: dict[str, str] = Field(default_factory=dict)


class PodTemplate(_Strict):
    metadata: TemplateMeta = Field(default_factory=TemplateMeta)
    spec: PodSpec


class DeploymentSpec(_Strict):
    replicas: int = Field(default=1, ge=0, le=256)
    selector: LabelSelector
    template: PodTemplate


class Deployment(_Strict):
    apiVersion: Literal["apps/v1"]
    kind: Literal["Deployment"]
    metadata: ObjectMeta
    spec: DeploymentSpec


KINDS: dict[str, type[_Strict]] = {"Namespace": Namespace, "Pod": Pod, "Deployment": Deployment}
Manifest = Namespace | Pod | Deployment


def parse_documents(text: str, source: str = "<stdin>") -> list[Manifest]:
    """Parse and validate every document; raise one InvalidInputError naming file, object and field."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise InvalidInputError(f"{source}: malformed YAML: {e}".replace("\n", " ")) from None
    out: list[Manifest] = []
    for i, doc in enumerate(docs):
        where = f"{source}: document {i + 1}"
        if not isinstance(doc, dict):
            raise InvalidInputError(
                f"{where}: expected a mapping with apiVersion/kind, got {type(doc).__name__}"
            )
        kind = doc.get("kind")
        name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
        if name:
            where = f"{source}: {kind} {name!r}"
        from tendril.policy import PolicyValidationError, is_policy_document, parse_policy_object

        if is_policy_document(doc):  # CiliumNetworkPolicy & co. may share a file with pods
            try:
                out.append(parse_policy_object(doc, source, i))  # type: ignore[arg-type]
            except PolicyValidationError as e:
                raise InvalidInputError(str(e)) from None
            continue
        from tendril.loadbalancer import is_service_document, parse_service

        if is_service_document(doc):
            out.append(parse_service(doc, source, i))  # type: ignore[arg-type]
            continue
        if kind not in KINDS:
            supported = ", ".join(
                [*KINDS, "Service", "CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy", "NetworkPolicy"]
            )
            raise InvalidInputError(f"{where}: unsupported kind {kind!r} (supported: {supported})")
        try:
            obj = KINDS[kind].model_validate(doc)
        except ValidationError as e:
            raise InvalidInputError(f"{where}: {pydantic_message(e)}") from None
        if isinstance(obj, Deployment):
            sel = obj.spec.selector.matchLabels
            tmpl = obj.spec.template.metadata.labels
            if not sel or any(tmpl.get(k) != v for k, v in sel.items()):
                raise InvalidInputError(
                    f'{where}: "spec.selector.matchLabels" must be non-empty and match '
                    '"spec.template.metadata.labels"'
                )
        out.append(obj)  # type: ignore[arg-type]
    return out


def load_file(path: str) -> list[Manifest]:
    if path == "-":
        import sys

        return parse_documents(sys.stdin.read(), "<stdin>")
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"{path}: no such file")
    return parse_documents(p.read_text(), path)


def pod_template_hash(dep: Deployment) -> str:
    """Stable per template, like Kubernetes' pod-template-hash, so re-applying is a no-op."""
    blob = dep.spec.template.model_dump_json().encode()
    digest = hashlib.sha256(blob).hexdigest()
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    n = int(digest[:16], 16)
    chars = []
    for _ in range(10):
        n, r = divmod(n, len(alphabet))
        chars.append(alphabet[r])
    return "".join(chars)


def deployment_pod_names(dep: Deployment) -> list[str]:
    """Replica names `<deploy>-<template hash>-<5 chars>`, deterministic per replica index."""
    h = pod_template_hash(dep)
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    names = []
    for i in range(dep.spec.replicas):
        n = int(hashlib.sha256(f"{dep.metadata.name}/{h}/{i}".encode()).hexdigest()[:12], 16)
        suffix = ""
        for _ in range(5):
            n, r = divmod(n, len(alphabet))
            suffix += alphabet[r]
        names.append(f"{dep.metadata.name}-{h}-{suffix}")
    return names
