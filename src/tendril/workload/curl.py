"""A curl-like HTTP client for lab pods, with curl's exit codes (7 connect failed, 28 timeout, 22 --fail)."""

from __future__ import annotations

import http.client
import socket
import sys
import time
import urllib.parse


def fetch(
    url: str,
    connect_timeout: float,
    max_time: float,
    fail: bool,
    method: str = "GET",
    write_out: str | None = None,
    quiet: bool = False,
) -> int:
    u = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    host = u.hostname or ""
    port = u.port or 80
    started = time.monotonic()
    try:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
    except TimeoutError:
        print(
            f"curl: (28) Connection timed out after {int(connect_timeout * 1000)} milliseconds",
            file=sys.stderr,
        )
        return 28
    except OSError as e:
        print(f"curl: (7) Failed to connect to {host} port {port}: {e.strerror or e}", file=sys.stderr)
        return 7
    local = sock.getsockname()
    remote = sock.getpeername()  # with the socket LB this is the service address, as in Cilium
    sock.settimeout(max(0.1, max_time - (time.monotonic() - started)))
    conn = http.client.HTTPConnection(host, port)
    conn.sock = sock
    try:
        conn.request(
            method, u.path or "/" + (f"?{u.query}" if u.query else ""), headers={"User-Agent": "tendril-curl"}
        )
        resp = conn.getresponse()
        body = resp.read()
    except TimeoutError:
        print(f"curl: (28) Operation timed out after {int(max_time * 1000)} milliseconds", file=sys.stderr)
        return 28
    except OSError as e:
        print(f"curl: (56) Failure when receiving data from the peer: {e}", file=sys.stderr)
        return 56
    finally:
        conn.close()
    if not quiet:
        sys.stdout.write(body.decode(errors="replace"))
    if write_out:
        out = (
            write_out.replace("%{http_code}", str(resp.status))
            .replace("%{response_code}", str(resp.status))
            .replace("%{local_ip}", local[0])
            .replace("%{local_port}", str(local[1]))
            .replace("%{remote_ip}", remote[0])
            .replace("%{remote_port}", str(remote[1]))
        )
        sys.stdout.write(out.replace("\\n", "\n"))
    sys.stdout.flush()
    if fail and resp.status >= 400:
        print(f"curl: (22) The requested URL returned error: {resp.status}", file=sys.stderr)
        return 22
    return 0
