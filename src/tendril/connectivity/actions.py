"""Running an action's command where its source lives: a pod (its netns and cgroup, as `tendril
exec` does) or a node's host namespace.

The curl is `tendril workload curl`'s own code (tendril.workload.curl.fetch) run by a bare Python,
without the CLI's start-up (about a second per command on a busy machine); ping is the system's
`ping`; DNS lookups are glibc's (`getent`) with the pod's /etc/resolv.conf, like in a container.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field

from tendril.connectivity.model import Action, Host, Pod
from tendril.datapath.netns import nsenter_argv

# cilium-cli's curl output format: who connected to whom, and the HTTP status
CURL_FORMAT = "%{local_ip}:%{local_port} -> %{remote_ip}:%{remote_port} = %{response_code}"
_CURL_OUT = re.compile(r"^(?P<lip>.+):(?P<lport>\d+) -> (?P<rip>.+):(?P<rport>\d+) = (?P<code>\d+)$")
# argv: url, connect timeout, max time, write-out, method, extra headers (JSON)
_CURL_CODE = """\
import http.client, json, sys
from tendril.workload.curl import fetch
a = sys.argv
extra = json.loads(a[6])
if extra:  # curl -H: added to the request's own headers
    orig = http.client.HTTPConnection.request
    def request(self, method, url, body=None, headers={}, **kw):
        return orig(self, method, url, body, {**headers, **extra}, **kw)
    http.client.HTTPConnection.request = request
sys.exit(fetch(a[1], float(a[2]), float(a[3]), True, a[5], a[4], quiet=True))
"""
_JOIN_CGROUP = 'echo 0 > "$1" && shift && exec "$@"'


@dataclass
class CommandResult:
    command: str  # the command as a user would type it
    exit_code: int  # -1 when it had to be killed
    stdout: str = ""
    stderr: str = ""
    started: float = 0.0  # wall clock
    duration: float = 0.0
    local_ip: str = ""
    local_port: int = 0
    http_code: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "command": self.command,
            "exit_code": self.exit_code,
            "duration_s": round(self.duration, 3),
        }
        if self.stdout.strip():
            out["stdout"] = self.stdout.strip()
        if self.stderr.strip():
            out["stderr"] = self.stderr.strip()
        if self.local_port:
            out["local"] = f"{self.local_ip}:{self.local_port}"
        if self.http_code:
            out["http_code"] = self.http_code
        return out


def run_in(source: Pod | Host, argv: list[str], timeout: float, with_dns: bool) -> CommandResult:
    """Run argv in the source's network namespace (and a pod's cgroup, so the socket LB applies
    to it, and its resolv.conf when the command resolves names)."""
    if isinstance(source, Pod):
        inner = argv
        if with_dns and source.resolv_conf:
            from tendril.lab.resolvconf import wrap_argv_with_resolvconf

            inner = wrap_argv_with_resolvconf(argv, source.resolv_conf)
        full = ["/bin/sh", "-c", _JOIN_CGROUP, "sh", f"{source.cgroup}/cgroup.procs"]
        full += nsenter_argv(source.netns, inner)
    else:
        full = nsenter_argv(source.netns, argv)
    started, t0 = time.time(), time.monotonic()
    try:
        p = subprocess.run(full, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        code, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        code = -1
        out = _text(e.stdout)
        err = _text(e.stderr) + f"\nkilled after {timeout:.0f}s"
    return CommandResult(
        command=shlex.join(argv), exit_code=code, stdout=out, stderr=err, started=started,
        duration=time.monotonic() - t0,
    )  # fmt: skip


def _text(b: bytes | str | None) -> str:
    if b is None:
        return ""
    return b if isinstance(b, str) else b.decode(errors="replace")


def execute(action: Action, connect_timeout: float, request_timeout: float) -> CommandResult:
    """Run the action's command (curl for TCP, ping for ICMP, a lookup for DNS)."""
    dst = action.destination
    if action.protocol == "icmp":
        wait = max(1, round(connect_timeout))
        argv = ["ping", "-n", "-c", "1", "-W", str(wait), dst.address]
        return run_in(action.source, argv, wait + 10, with_dns=False)
    if action.protocol == "udp":  # a DNS lookup through the cluster DNS
        argv = ["getent", "ahostsv4", dst.address]
        return run_in(action.source, argv, connect_timeout + request_timeout + 5, with_dns=True)
    host = f"[{dst.address}]" if ":" in dst.address else dst.address
    url = f"http://{host}:{dst.port}"
    if action.path != "/":
        url += action.path
    argv = [
        sys.executable, "-c", _CURL_CODE, url, str(connect_timeout), str(request_timeout), CURL_FORMAT,
        action.method, json.dumps(action.headers),
    ]  # fmt: skip
    res = run_in(
        action.source, argv, connect_timeout + request_timeout + 10, with_dns=not _is_ip(dst.address)
    )
    opts = [] if action.method == "GET" else ["-X", action.method]
    for k, v in action.headers.items():
        opts += ["-H", f"{k}: {v}"]
    res.command = shlex.join(
        ["tendril", "workload", "curl", "-w", CURL_FORMAT, "--silent", "--fail", "--show-error", *opts,
         "--connect-timeout", f"{connect_timeout:g}", "--max-time", f"{request_timeout:g}", url]
    )  # fmt: skip
    m = _CURL_OUT.match(res.stdout.strip().splitlines()[-1] if res.stdout.strip() else "")
    if m:
        res.local_ip, res.local_port = m["lip"].strip("[]"), int(m["lport"])
        res.http_code = int(m["code"])
    return res


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False
