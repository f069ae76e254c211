"""Connecting to a Hubble server like the hubble CLI: target resolution, TLS, auth, timeouts.

Plaintext gRPC unless ``--tls`` or a ``tls://`` address; basic auth refused on plaintext (as Go's
per-RPC credentials do); ``--request-timeout`` applies to unary calls only. Without an explicit
server, Tendril points the CLI at the local agent's Observer socket, so `tendril hubble observe`
works on a lab node with no flags at all.
"""

from __future__ import annotations

import base64
import socket
import ssl
from dataclasses import dataclass, field

import grpc

from tendril.common import paths
from tendril.common.errors import TendrilError
from tendril.hubble.cli.errors import CLIError
from tendril.hubble.cli.flagdefs import DEFAULT_SERVER
from tendril.hubble.cli.settings import Settings

TLS_PREFIX = "tls://"
OBSERVER_SERVICE_NAME = "hubble.server.Observer"

# grpc-go's codes.Code String() names, used in "rpc error: code = X desc = Y".
GO_CODE_NAMES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}


def rpc_error_text(err: grpc.RpcError) -> str:
    """grpc-go's status error string: ``rpc error: code = Unavailable desc = ...``."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    return f"rpc error: code = {GO_CODE_NAMES.get(code, str(code))} desc = {details or ''}"


def _os_error_text(e: OSError) -> str:
    reason = (e.strerror or str(e)).strip()
    return reason[:1].lower() + reason[1:]


def local_agent_target(lab: str, node: str | None = None) -> str | None:
    """``unix://`` address of the (given, else first) lab node whose agent serves the Observer."""
    from tendril.cli.client import resolve_nodes

    try:
        nodes = resolve_nodes(lab, node or None)
    except TendrilError:
        return None
    for node in nodes:
        sock = paths.hubble_socket(node)
        if sock.exists():
            return f"unix://{sock}"
    return None


def resolve_server(settings: Settings) -> str:
    """--server, else HUBBLE_SERVER / config ``server:``, else the local agent, else localhost:4245.

    ``--node`` picks the node of a multi-node lab (each node's agent serves its own flows).
    """
    flag = settings.fs.lookup("server")
    assert flag is not None
    if flag.changed:
        return str(flag.value)
    if "HUBBLE_SERVER" in settings.env:
        return settings.env["HUBBLE_SERVER"]
    configured = settings.config().get("server")
    if configured:
        return str(configured)
    node = str(settings.get("node") or "")
    target = local_agent_target(str(settings.get("lab")), node)
    if target is None and node:
        raise CLIError(
            f"no Hubble socket for node {node!r} at {paths.hubble_socket(node)}: is its agent running?"
        )
    return target or DEFAULT_SERVER


@dataclass
class Connection:
    """An open channel plus what every call needs (auth metadata, unary deadline)."""

    target: str  # what `hubble status` calls the server (the address without tls://)
    channel: grpc.Channel
    metadata: list[tuple[str, str]] = field(default_factory=list)
    request_timeout: float | None = None

    def close(self) -> None:
        self.channel.close()


def _read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as e:
        raise CLIError(f"cannot load {what} '{path}': open {path}: {_os_error_text(e)}") from None


def _server_certificate(target: str, server_name: str) -> bytes:
    """The certificate the server presents (used as trust anchor for --tls-allow-insecure)."""
    host, _, port = target.rpartition(":")
    host = host.strip("[]") or "localhost"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, int(port or 443)), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=server_name or host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError) as e:
        raise CLIError(f"failed to create gRPC client to '{target}': {e}") from None
    return ssl.DER_cert_to_PEM_cert(der).encode() if der else b""


def _tls_credentials(
    settings: Settings, target: str
) -> tuple[grpc.ChannelCredentials, list[tuple[str, str]]]:
    options: list[tuple[str, str]] = []
    server_name = str(settings.get("tls-server-name") or "")
    root: bytes | None = None
    ca_files = list(settings.get("tls-ca-cert-files") or [])
    if ca_files:
        pems = []
        for path in ca_files:
            pem = _read_file(path, "cert")
            if b"-----BEGIN CERTIFICATE-----" not in pem:
                raise CLIError(f"cannot process cert '{path}': must be a PEM encoded certificate")
            pems.append(pem)
        root = b"\n".join(pems)
    if settings.get("tls-allow-insecure"):
        root = _server_certificate(target, server_name)
    cert_file = str(settings.get("tls-client-cert-file") or "")
    key_file = str(settings.get("tls-client-key-file") or "")
    key = chain = None
    if cert_file and key_file:
        chain = _read_file(cert_file, "client certificate")
        key = _read_file(key_file, "client key")
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=chain
    ), options


def connect(settings: Settings, server: str | None = None) -> Connection:
    """Open a (lazy) channel to ``server`` with hubble's transport and auth settings."""
    address = server if server is not None else resolve_server(settings)
    target = address.removeprefix(TLS_PREFIX)
    use_tls = bool(settings.get("tls")) or address.startswith(TLS_PREFIX)
    if settings.get("port-forward"):
        raise CLIError("--port-forward is Kubernetes-only and not supported by Tendril")
    metadata: list[tuple[str, str]] = []
    user = str(settings.get("basic-auth-username") or "")
    password = str(settings.get("basic-auth-password") or "")
    if user or password:
        if not use_tls:
            raise CLIError(
                f"failed to create gRPC client to '{address}': grpc: the credentials require transport "
                "level security (use grpc.WithTransportCredentials() to set)"
            )
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        metadata.append(("authorization", f"Basic {token}"))
    options: list[tuple[str, object]] = [("grpc.max_receive_message_length", 64 << 20)]
    if use_tls:
        creds, tls_options = _tls_credentials(settings, target)
        options.extend(tls_options)
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    timeout_ns = settings.get("request-timeout")
    timeout = timeout_ns / 1e9 if timeout_ns and timeout_ns > 0 else None
    return Connection(target=target, channel=channel, metadata=metadata, request_timeout=timeout)
