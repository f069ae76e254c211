"""The policy repository: add/replace by (kind, namespace, name), delete, list, revision, persistence."""

from __future__ import annotations

import pytest

from tendril.common.errors import InvalidInputError, NotFoundError
from tendril.policy import CCNP, CNP, KNP, PolicyRepository, normalize_kind, parse_policy_documents


def doc(kind: str, name: str, ns: str | None = "shop", port: int = 80) -> str:
    meta = f"{{name: {name}, namespace: {ns}}}" if ns else f"{{name: {name}}}"
    if kind == KNP:
        return (
            f"apiVersion: networking.k8s.io/v1\nkind: {kind}\nmetadata: {meta}\n"
            f"spec: {{podSelector: {{}}, ingress: [{{ports: [{{port: {port}}}]}}]}}\n"
        )
    return (
        f"apiVersion: cilium.io/v2\nkind: {kind}\nmetadata: {meta}\n"
        "spec: {endpointSelector: {}, egress: [{toCIDR: [192.0.2.0/24], "
        f"toPorts: [{{ports: [{{port: '{port}'}}]}}]}}]}}\n"
    )


def load(*texts: str) -> list:
    return parse_policy_documents("---\n".join(texts), "p.yaml")


def test_apply_replace_delete_and_revision() -> None:
    repo = PolicyRepository()
    actions = repo.apply(load(doc(CNP, "a"), doc(KNP, "a"), doc(CCNP, "a", ns=None)))
    assert [a for a, _ in actions] == ["created"] * 3 and repo.revision == 1 and len(repo) == 3
    assert [a for a, _ in repo.apply(load(doc(CNP, "a")))] == ["unchanged"] and repo.revision == 1
    assert [a for a, _ in repo.apply(load(doc(CNP, "a", port=81)))] == ["configured"] and repo.revision == 2
    assert [a for a, _ in repo.apply(load(doc(CNP, "a", ns="lab")))] == ["created"]  # another namespace
    assert len(repo) == 4
    assert repo.get(CNP, "shop", "a") is not None and repo.get(CCNP, None, "a") is not None
    assert [p.key for p in repo.policies()] == [
        (CCNP, "", "a"),
        (CNP, "lab", "a"),
        (CNP, "shop", "a"),
        (KNP, "shop", "a"),
    ]
    assert [p.key for p in repo.list(namespace="lab")] == [(CCNP, "", "a"), (CNP, "lab", "a")]
    assert [p.key for p in repo.list(kind=KNP)] == [(KNP, "shop", "a")]
    removed = repo.delete(CNP, "shop", "a")
    assert removed.name == "a" and repo.revision == 4 and len(repo) == 3
    with pytest.raises(NotFoundError, match="CiliumNetworkPolicy 'a' not found in namespace 'shop'"):
        repo.delete(CNP, "shop", "a")
    with pytest.raises(NotFoundError, match="CiliumClusterwideNetworkPolicy 'b' not found$"):
        repo.delete(CCNP, None, "b")


def test_default_namespace() -> None:
    repo = PolicyRepository()
    repo.apply(load(doc(KNP, "np", ns=None)))
    assert repo.get(KNP, None, "np") is not None and repo.get(KNP, "default", "np") is not None


def test_required_prefixes_and_rule_refs() -> None:
    repo = PolicyRepository()
    repo.apply(load(doc(CNP, "a")))
    assert repo.required_cidr_prefixes() == {"192.0.2.0/24"}
    ref = "CiliumNetworkPolicy/shop/a:spec.egress[0]"
    n = repo.rule_ref_id(ref)
    assert n == 1 and repo.rule_ref_id(ref) == 1 and repo.rule_ref_id("allow-localhost") == 2
    assert repo.rule_ref_name(1) == ref and repo.rule_ref_name(0) is None and repo.rule_ref_name(99) is None


def test_persistence_revalidates() -> None:
    repo = PolicyRepository()
    repo.apply(load(doc(CNP, "a"), doc(KNP, "b")))
    again = PolicyRepository.from_dict(repo.to_dict())
    assert [p.key for p in again.policies()] == [p.key for p in repo.policies()]
    assert again.revision == repo.revision
    data = repo.to_dict()
    data["policies"][0]["document"]["spec"]["egress"][0]["toPorts"][0]["ports"][0]["port"] = "0"
    with pytest.raises(InvalidInputError, match="port 0 is out of range"):
        PolicyRepository.from_dict(data)


def test_kind_aliases() -> None:
    assert normalize_kind("cnp") == CNP and normalize_kind("CiliumNetworkPolicy") == CNP
    assert normalize_kind("ccnp") == CCNP and normalize_kind("netpol") == KNP
    assert normalize_kind("networkpolicies") == KNP
    with pytest.raises(InvalidInputError, match="unknown policy kind 'pod'"):
        normalize_kind("pod")
