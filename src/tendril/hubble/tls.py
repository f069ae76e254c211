"""Certificates for Hubble's node-to-relay mTLS, and loading them for gRPC.

Hubble secures :4244 with one CA per cluster: every node's server certificate names
``<node>.<cluster>.hubble-grpc.cilium.io`` (which the Peer service hands to Relay as the TLS server
name), and Relay dials with a client certificate from the same CA. `ensure_certs` builds that set
in a directory, idempotently, so `tendril hubble enable` and `lab up` can run it on every start
without invalidating what running agents and relays already loaded.

Layout (paths on `TlsLayout`)::

    ca.crt  ca.key                      the cluster CA
    nodes/<node>.crt  nodes/<node>.key  a node's Observer server certificate
    relay/client.crt  relay/client.key  Relay's client certificate towards the nodes
    relay/server.crt  relay/server.key  Relay's own TLS listener (localhost, 127.0.0.1)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tendril.common import paths
from tendril.hubble.peer.source import tls_server_name

__all__ = ["ClientTls", "ServerTls", "TlsLayout", "ensure_certs", "lab_tls_dir", "tls_server_name"]

CA_VALIDITY = dt.timedelta(days=3 * 365)  # cilium-cli's CA lifetime
CERT_VALIDITY = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)  # reissue rather than hand out a certificate about to expire
RELAY_COMMON_NAME = "*.hubble-relay.cilium.io"  # the name upstream's certgen gives Relay's certificates
RELAY_SERVER_DNS = ("localhost",)
RELAY_SERVER_IPS = ("127.0.0.1",)


def lab_tls_dir(lab: str) -> Path:
    """Where a lab's Hubble certificates live (next to the lab record, gone on reboot like the lab)."""
    return paths.labs_dir() / f"{lab}-tls"


@dataclass(frozen=True)
class ServerTls:
    """A server certificate and key, and the CA that client certificates must chain to (mTLS)."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None  # None: no client certificates asked for

    @classmethod
    def load(cls, cert: Path, key: Path, client_ca: Path | None = None) -> ServerTls:
        return cls(cert.read_bytes(), key.read_bytes(), client_ca.read_bytes() if client_ca else None)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


@dataclass(frozen=True)
class ClientTls:
    """The CA that server certificates must chain to, and an optional client certificate (mTLS)."""

    ca_cert: bytes
    cert_chain: bytes | None = None
    private_key: bytes | None = None

    @classmethod
    def load(cls, ca: Path, cert: Path | None = None, key: Path | None = None) -> ClientTls:
        return cls(
            ca.read_bytes(),
            cert.read_bytes() if cert else None,
            key.read_bytes() if key else None,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_cert, private_key=self.private_key, certificate_chain=self.cert_chain
        )


@dataclass(frozen=True)
class TlsLayout:
    """Paths of the certificates in a directory made by `ensure_certs` (which fills `created`)."""

    directory: Path
    created: tuple[Path, ...] = field(default=(), compare=False)

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    def node_cert(self, node: str) -> Path:
        return self.directory / "nodes" / f"{node}.crt"

    def node_key(self, node: str) -> Path:
        return self.directory / "nodes" / f"{node}.key"

    @property
    def relay_client_cert(self) -> Path:
        return self.directory / "relay" / "client.crt"

    @property
    def relay_client_key(self) -> Path:
        return self.directory / "relay" / "client.key"

    @property
    def relay_server_cert(self) -> Path:
        return self.directory / "relay" / "server.crt"

    @property
    def relay_server_key(self) -> Path:
        return self.directory / "relay" / "server.key"

    def node_server_tls(self, node: str) -> ServerTls:
        """A node's Observer listener: its certificate, client certificates required from the CA."""
        return ServerTls.load(self.node_cert(node), self.node_key(node), self.ca_cert)

    def relay_client_tls(self) -> ClientTls:
        return ClientTls.load(self.ca_cert, self.relay_client_cert, self.relay_client_key)

    def relay_server_tls(self) -> ServerTls:
        """Relay's own listener: server-side TLS only, as Hubble Relay's default (no client certs)."""
        return ServerTls.load(self.relay_server_cert, self.relay_server_key)


@dataclass(frozen=True)
class _Want:
    """What a leaf certificate must say; an existing certificate saying anything else is reissued."""

    common_name: str
    dns: tuple[str, ...]
    ips: tuple[str, ...]
    usages: tuple[x509.ObjectIdentifier, ...]


def ensure_certs(
    directory: Path, cluster: str, nodes: Iterable[str], node_ips: dict[str, str] | None = None
) -> TlsLayout:
    """Create what is missing or no longer valid: the CA, each node's server certificate (SAN =
    its TLS server name, plus its IP if given), and Relay's client and server certificates.

    Valid certificates are kept, so running this again changes nothing; a new CA (missing,
    unreadable or expiring) reissues every certificate, since the old ones would no longer verify.
    """
    layout = TlsLayout(Path(directory))
    layout.directory.mkdir(parents=True, exist_ok=True)
    created: list[Path] = []
    ca = _load_ca(layout)
    if ca is None:
        ca = _new_ca(cluster)
        _write_pair(layout.ca_cert, layout.ca_key, *ca)
        created.append(layout.ca_cert)
    ca_cert, ca_key = ca
    leaves: list[tuple[Path, Path, _Want]] = []
    for node in nodes:
        ip = (node_ips or {}).get(node)
        want = _Want(
            tls_server_name(node, cluster),
            (tls_server_name(node, cluster),),
            (ip,) if ip else (),
            # Hubble's server certificates are also usable as client certificates (certgen does so).
            (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
        )
        leaves.append((layout.node_cert(node), layout.node_key(node), want))
    leaves.append(
        (
            layout.relay_client_cert,
            layout.relay_client_key,
            _Want(RELAY_COMMON_NAME, (), (), (ExtendedKeyUsageOID.CLIENT_AUTH,)),
        )
    )
    leaves.append(
        (
            layout.relay_server_cert,
            layout.relay_server_key,
            _Want(RELAY_COMMON_NAME, RELAY_SERVER_DNS, RELAY_SERVER_IPS, (ExtendedKeyUsageOID.SERVER_AUTH,)),
        )
    )
    for cert_path, key_path, want in leaves:
        if not _leaf_ok(cert_path, key_path, want, ca_cert):
            _write_pair(cert_path, key_path, *_new_leaf(want, ca_cert, ca_key))
            created.append(cert_path)
    return TlsLayout(layout.directory, tuple(created))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fresh(cert: x509.Certificate) -> bool:
    now = _now()
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - RENEW_BEFORE > now


def _load_pair(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return None
    return cert, key


def _load_ca(layout: TlsLayout) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    pair = _load_pair(layout.ca_cert, layout.ca_key)
    if pair is None or not _fresh(pair[0]):
        return None
    try:
        if not pair[0].extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return None
    except x509.ExtensionNotFound:
        return None
    return pair


def _leaf_ok(cert_path: Path, key_path: Path, want: _Want, ca_cert: x509.Certificate) -> bool:
    pair = _load_pair(cert_path, key_path)
    if pair is None:
        return False
    cert = pair[0]
    try:
        cert.verify_directly_issued_by(ca_cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    ips = tuple(str(a) for a in san.get_values_for_type(x509.IPAddress))
    return (
        _fresh(cert)
        and tuple(san.get_values_for_type(x509.DNSName)) == want.dns
        and ips == want.ips
        and tuple(eku) == want.usages
    )


def _new_ca(cluster: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tendril"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Tendril Hubble CA ({cluster})"),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _new_leaf(
    want: _Want, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in want.dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in want.ips]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, want.common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + CERT_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(want.usages)), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    return builder.sign(ca_key, hashes.SHA256()), key


def _write_pair(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    """Key first (0600 from creation, never world-readable even briefly), then the certificate."""
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _atomic_write(key_path, key_pem, 0o600)
    _atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write to a temporary file and rename, so a reader (an agent starting) never sees half a PEM."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # the umask may have narrowed it, or a stale temp file widened it
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
