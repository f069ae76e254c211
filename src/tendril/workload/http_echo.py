"""A tiny HTTP/1.1 echo server for lab pods: answers every request with JSON describing it.

Built in so demos and tests need no images or downloads; it is deliberately small (one request per
connection read, keep-alive honoured) and uses only the standard library.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, version = (lines[0].split(" ", 2) + ["", ""])[:3]
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0") or 0)
            body = await reader.readexactly(length) if length else b""
            payload = (
                json.dumps(
                    {
                        "pod": os.environ.get("POD_NAME", socket.gethostname()),
                        "namespace": os.environ.get("POD_NAMESPACE", ""),
                        "node": os.environ.get("NODE_NAME", ""),
                        "method": method,
                        "path": path,
                        "client": f"{peer[0]}:{peer[1]}" if peer else "",
                        "body_bytes": len(body),
                    }
                ).encode()
                + b"\n"
            )
            keep = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
            conn = "keep-alive" if keep else "close"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(payload)}\r\nConnection: {conn}\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
            if not keep:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    servers = [await asyncio.start_server(_handle, host="0.0.0.0", port=port, reuse_address=True)]
    with contextlib.suppress(OSError):  # no IPv6 in this namespace
        servers.append(
            await asyncio.start_server(
                _handle, host="::", port=port, reuse_address=True, family=socket.AF_INET6
            )
        )
    print(f"http-echo listening on :{port}", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))
