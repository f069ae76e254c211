"""Hubble certificates: what ensure_certs creates, that it is idempotent, and that the files work
for a real mTLS handshake between a node's Observer listener and Relay's client."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tendril.common import paths
from tendril.hubble.api import observer_pb2, observer_pb2_grpc
from tendril.hubble.container import FlowRing
from tendril.hubble.observer.service import ObserverContext, start_observer
from tendril.hubble.record import Tables
from tendril.hubble.tls import ClientTls, ensure_certs, lab_tls_dir, tls_server_name

TENDRIL = str(Path(sys.executable).parent / "tendril")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName), [str(a) for a in san.get_values_for_type(x509.IPAddress)]


def _all_files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def test_server_name_follows_hubble() -> None:
    assert tls_server_name("node1", "default") == "node1.default.hubble-grpc.cilium.io"
    assert tls_server_name("k8s.node.1", "lab") == "k8s-node-1.lab.hubble-grpc.cilium.io"


def test_creates_ca_node_and_relay_certificates(tmp_path: Path) -> None:
    layout = ensure_certs(tmp_path, "lab", ["n1", "n2"], {"n1": "198.18.0.11"})
    ca = _cert(layout.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert set(layout.created) == {
        layout.ca_cert,
        layout.node_cert("n1"),
        layout.node_cert("n2"),
        layout.relay_client_cert,
        layout.relay_server_cert,
    }
    n1 = _cert(layout.node_cert("n1"))
    assert _sans(n1) == (["n1.lab.hubble-grpc.cilium.io"], ["198.18.0.11"])
    assert _sans(_cert(layout.node_cert("n2"))) == (["n2.lab.hubble-grpc.cilium.io"], [])
    assert _sans(_cert(layout.relay_server_cert)) == (["localhost"], ["127.0.0.1"])
    client_eku = _cert(layout.relay_client_cert).extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(client_eku.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    for cert_path in (layout.node_cert("n1"), layout.relay_client_cert, layout.relay_server_cert):
        cert = _cert(cert_path)
        cert.verify_directly_issued_by(ca)
        assert cert.public_key().curve.name == "secp256r1"
        assert (
            dt.timedelta(days=300)
            < cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
            < dt.timedelta(days=400)
        )
    for key in (layout.ca_key, layout.node_key("n1"), layout.relay_client_key, layout.relay_server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE(layout.ca_cert.stat().st_mode) == 0o644


def test_idempotent_and_adds_only_what_is_missing(tmp_path: Path) -> None:
    ensure_certs(tmp_path, "lab", ["n1", "n2"])
    before = _all_files(tmp_path)
    again = ensure_certs(tmp_path, "lab", ["n1", "n2"])
    assert again.created == ()
    assert _all_files(tmp_path) == before
    more = ensure_certs(tmp_path, "lab", ["n1", "n2", "n3"])
    assert more.created == (more.node_cert("n3"),)
    after = _all_files(tmp_path)
    assert {k: v for k, v in after.items() if "n3" not in k} == before


def test_reissues_what_is_invalid(tmp_path: Path) -> None:
    layout = ensure_certs(tmp_path, "lab", ["n1", "n2"])
    layout.node_cert("n1").write_text("garbage")
    assert ensure_certs(tmp_path, "lab", ["n1", "n2"]).created == (layout.node_cert("n1"),)
    # A changed node IP changes the SANs: only that certificate is reissued.
    again = ensure_certs(tmp_path, "lab", ["n1", "n2"], {"n2": "198.18.0.12"})
    assert again.created == (layout.node_cert("n2"),)
    # A new CA makes every old certificate useless: all are reissued under it.
    old_ca = layout.ca_cert.read_bytes()
    layout.ca_key.unlink()
    renewed = ensure_certs(tmp_path, "lab", ["n1", "n2"], {"n2": "198.18.0.12"})
    assert len(renewed.created) == 5
    assert layout.ca_cert.read_bytes() != old_ca
    _cert(layout.node_cert("n2")).verify_directly_issued_by(_cert(layout.ca_cert))


def test_lab_tls_dir_is_next_to_the_lab_record() -> None:
    assert lab_tls_dir("demo") == paths.labs_dir() / "demo-tls"


async def _status(port: int, tls: ClientTls | None, server_name: str) -> observer_pb2.ServerStatusResponse:
    options = [("grpc.ssl_target_name_override", server_name)]
    if tls is None:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    else:
        channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", tls.credentials(), options=options)
    async with channel:
        return await observer_pb2_grpc.ObserverStub(channel).ServerStatus(
            observer_pb2.ServerStatusRequest(), timeout=5
        )


def test_mtls_handshake_with_the_generated_files(tmp_path: Path) -> None:
    layout = ensure_certs(tmp_path / "a", "lab", ["n1"])
    other = ensure_certs(tmp_path / "b", "lab", ["n1"])
    name = tls_server_name("n1", "lab")

    port = free_port()

    async def run() -> None:
        ctx = ObserverContext("n1", FlowRing(63), Tables())
        sock = str(tmp_path / "hubble.sock")
        server = await start_observer(ctx, sock, f"127.0.0.1:{port}", tls=layout.node_server_tls("n1"))
        try:
            ok = await _status(port, layout.relay_client_tls(), name)
            assert ok.max_flows == 63
            # The Unix socket stays plaintext.
            async with grpc.aio.insecure_channel(f"unix://{sock}") as ch:
                await observer_pb2_grpc.ObserverStub(ch).ServerStatus(
                    observer_pb2.ServerStatusRequest(), timeout=5
                )
            # No client certificate, a certificate from another CA, plaintext: all refused.
            for tls in (ClientTls(layout.ca_cert.read_bytes()), other.relay_client_tls(), None):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await _status(port, tls, name)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            # Verifying the node against the wrong CA names the TLS failure.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _status(port, ClientTls(other.ca_cert.read_bytes()), name)
            assert "CERTIFICATE_VERIFY_FAILED" in (err.value.details() or "")
        finally:
            await server.stop(0)

    asyncio.run(run())


def test_enable_command_creates_lab_certificates(tmp_path: Path) -> None:
    labs = tmp_path / "labs"
    labs.mkdir()
    record = {"nodes": [{"name": "t1-node1", "underlay_ip": "198.18.0.11"}, {"name": "t1-node2"}]}
    (labs / "t1.json").write_text(json.dumps(record))
    env = {**os.environ, "TENDRIL_RUN_DIR": str(tmp_path)}
    r = subprocess.run(
        [TENDRIL, "hubble", "enable", "--lab", "t1"], capture_output=True, text=True, env=env, timeout=30
    )
    assert r.returncode == 0, r.stderr
    tls_dir = labs / "t1-tls"
    assert "created ca.crt" in r.stdout
    assert "created nodes/t1-node1.crt" in r.stdout
    assert "t1-node2.t1.hubble-grpc.cilium.io" in r.stdout
    n1 = _cert(tls_dir / "nodes" / "t1-node1.crt")
    assert _sans(n1) == (["t1-node1.t1.hubble-grpc.cilium.io"], ["198.18.0.11"])
    r2 = subprocess.run(
        [TENDRIL, "hubble", "enable", "--lab", "t1"], capture_output=True, text=True, env=env, timeout=30
    )
    assert r2.returncode == 0 and "nothing created" in r2.stdout
    missing = subprocess.run(
        [TENDRIL, "hubble", "enable", "--lab", "nope"], capture_output=True, text=True, env=env, timeout=30
    )
    assert missing.returncode == 1 and "lab 'nope' not found" in missing.stderr
