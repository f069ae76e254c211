"""UDP echo server for lab pods (IPv4 and IPv6)."""

from __future__ import annotations

import selectors
import socket


def serve(port: int) -> None:
    sel = selectors.DefaultSelector()
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, port))
        sel.register(s, selectors.EVENT_READ)
    print(f"udp-echo listening on :{port}", flush=True)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            data, peer = sock.recvfrom(65535)  # type: ignore[union-attr]
            sock.sendto(data, peer)  # type: ignore[union-attr]
