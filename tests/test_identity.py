"""Identities: labels -> identity, shared by every pod with the same labels, freed when unused."""

from __future__ import annotations

import pytest

from tendril.common.errors import InvalidInputError, TendrilError
from tendril.identity import (
    CLUSTER_ID_MIN,
    LOCAL_ID_MIN,
    IdentityAllocator,
    Label,
    ReservedIdentity,
    identity_labels,
    is_identity_pod_label,
)
from tendril.identity import allocator as allocator_mod


def test_identity_labels_are_ciliums_label_set() -> None:
    labels = identity_labels(
        "shop",
        {"app": "web", "pod-template-hash": "5d8c7", "tier": ""},
        {"team": "a"},
        serviceaccount="web-sa",
        cluster="c1",
    )
    assert labels == {
        "k8s:app=web",
        "k8s:tier",
        "k8s:io.kubernetes.pod.namespace=shop",
        "k8s:io.cilium.k8s.namespace.labels.team=a",
        "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop",
        "k8s:io.cilium.k8s.policy.cluster=c1",
        "k8s:io.cilium.k8s.policy.serviceaccount=web-sa",
    }


def test_rollout_and_spoofing_labels_are_not_identity_labels() -> None:
    for key in (
        "pod-template-hash",
        "controller-revision-hash",
        "statefulset.kubernetes.io/pod-name",
        "io.kubernetes.pod.namespace",
        "kubernetes.io/hostname",
        "batch.kubernetes.io/controller-uid",
    ):
        assert not is_identity_pod_label(key), key
    for key in ("app", "app.kubernetes.io/name", "k8s-app", "team"):
        assert is_identity_pod_label(key), key
    # a pod cannot claim another namespace through its own labels
    labels = identity_labels("a", {"io.kubernetes.pod.namespace": "kube-system"})
    assert "k8s:io.kubernetes.pod.namespace=a" in labels
    assert "k8s:io.kubernetes.pod.namespace=kube-system" not in labels


def test_label_parse_and_format() -> None:
    assert Label.parse("k8s:app=web") == Label("k8s", "app", "web")
    assert Label.parse("reserved:world") == Label("reserved", "world", "")
    assert Label.parse("app=web") == Label("unspec", "app", "web")
    assert Label.parse("cidr:2001:db8::/32") == Label("cidr", "2001:db8::/32", "")
    assert str(Label("k8s", "app", "web")) == "k8s:app=web"
    assert str(Label("reserved", "host")) == "reserved:host"
    with pytest.raises(ValueError):
        Label.parse("k8s:=x")


def test_reserved_identities() -> None:
    alloc = IdentityAllocator()
    assert [int(r) for r in ReservedIdentity] == list(range(9))
    assert ReservedIdentity.REMOTE_NODE.label == "reserved:remote-node"
    assert alloc.lookup(1) == {"reserved:host"}
    assert alloc.lookup(2) == {"reserved:world"}
    assert alloc.lookup(7) == {"reserved:kube-apiserver"}
    assert alloc.acquire(["reserved:health"]) == 4
    assert alloc.release(["reserved:health"]) is False
    assert alloc.lookup(0) is None
    with pytest.raises(ValueError, match="reserved labels cannot be combined"):
        alloc.acquire(["reserved:host", "k8s:app=x"])


def test_same_labels_same_identity_refcounted_and_freed() -> None:
    alloc = IdentityAllocator()
    web = identity_labels("default", {"app": "web"})
    db = identity_labels("default", {"app": "db"})
    a = alloc.acquire(web)
    assert a == CLUSTER_ID_MIN
    assert alloc.acquire(sorted(web, reverse=True)) == a  # order does not matter
    b = alloc.acquire(db)
    assert b == CLUSTER_ID_MIN + 1
    assert alloc.refcount(a) == 2 and alloc.lookup(a) == web
    assert alloc.identity_of(web) == a
    assert alloc.release(web) is False
    assert alloc.release(web) is True
    assert alloc.lookup(a) is None and alloc.identity_of(web) is None
    with pytest.raises(KeyError):
        alloc.release(web)
    # the lowest free number is reused
    c = alloc.acquire(identity_labels("default", {"app": "cache"}))
    assert c == a
    assert alloc.acquire(identity_labels("x", {})) == CLUSTER_ID_MIN + 2


def test_empty_and_cidr_labels_rejected() -> None:
    alloc = IdentityAllocator()
    with pytest.raises(ValueError, match="at least one label"):
        alloc.acquire([])
    with pytest.raises(ValueError, match="cidr_identity"):
        alloc.acquire(["cidr:10.0.0.0/8"])


def test_exhaustion_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator_mod, "CLUSTER_ID_MAX", CLUSTER_ID_MIN + 1)
    alloc = IdentityAllocator()
    alloc.acquire(["k8s:a=1"])
    alloc.acquire(["k8s:a=2"])
    with pytest.raises(TendrilError, match=r"no free cluster identity left in 256\.\.257"):
        alloc.acquire(["k8s:a=3"])


def test_cidr_identities() -> None:
    alloc = IdentityAllocator()
    n = alloc.cidr_identity("10.0.0.0/8")
    assert n == LOCAL_ID_MIN
    assert alloc.lookup(n) == {"cidr:10.0.0.0/8", "reserved:world"}
    assert alloc.cidr_identity("10.0.0.0/8") == n  # refcounted per prefix
    host = alloc.cidr_identity("192.0.2.1")
    assert alloc.cidr_prefix(host) == "192.0.2.1/32"
    v6 = alloc.cidr_identity("2001:db8::/32")
    assert alloc.lookup(v6) == {"cidr:2001:db8::/32", "reserved:world"}
    assert alloc.cidr_identity("0.0.0.0/0") == ReservedIdentity.WORLD
    assert alloc.release_cidr("0.0.0.0/0") is False
    with pytest.raises(ValueError):
        alloc.cidr_identity("10.0.0.1/8")  # host bits
    assert alloc.release_cidr("10.0.0.0/8") is False
    assert alloc.release_cidr("10.0.0.0/8") is True
    assert alloc.lookup(n) is None
    assert alloc.cidr_identity("172.16.0.0/12") == n  # lowest free again
    ids = alloc.identities()
    assert ids[1] == {"reserved:host"} and ids[host] == {"cidr:192.0.2.1/32", "reserved:world"}


def test_persistence_round_trip() -> None:
    alloc = IdentityAllocator()
    web = identity_labels("default", {"app": "web"})
    a = alloc.acquire(web)
    alloc.acquire(web)
    b = alloc.acquire(identity_labels("default", {"app": "db"}))
    c = alloc.acquire(identity_labels("default", {"app": "gone"}))
    alloc.release(identity_labels("default", {"app": "gone"}))
    cidr = alloc.cidr_identity("10.0.0.0/8")
    data = alloc.to_dict()
    again = IdentityAllocator.from_dict(data)
    assert again.to_dict() == data
    assert again.identity_of(web) == a and again.refcount(a) == 2 and again.lookup(b)
    assert again.cidr_identity("10.0.0.0/8") == cidr
    # the gap left by the freed identity is the next one handed out
    assert again.acquire(["k8s:app=new"]) == c


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"version": 9}, "unsupported version 9"),
        ({"version": 1, "cluster": [{"id": 5, "labels": ["k8s:a=b"], "refs": 1}]}, r"cluster\[0\]: id 5"),
        (
            {"version": 1, "cluster": [{"id": 300, "labels": [], "refs": 1}]},
            r"cluster\[0\]: an identity needs",
        ),
        ({"version": 1, "cidr": [{"id": 16777216, "prefix": "10.0.0.1/8", "refs": 1}]}, r"cidr\[0\]"),
        ({"version": 1, "cluster": [{"id": 300, "refs": 1}]}, r"cluster\[0\]: 'labels'"),
    ],
)
def test_damaged_state_is_rejected(data: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        IdentityAllocator.from_dict(data)
