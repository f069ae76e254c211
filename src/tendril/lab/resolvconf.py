"""Per-pod /etc/resolv.conf: the text kubelet writes, and a way to show it to one process only.

Lab pods are processes in their own network namespace that share the host's file system, so by
default they read the host's /etc/resolv.conf.  ``wrap_argv_with_resolvconf`` prefixes a pod's
argv so that the process runs in a private *mount* namespace in which the pod's file is
bind-mounted (read-only) over /etc/resolv.conf.  The host's mount table and file are never
touched: the namespace is created with private propagation, so the bind mount does not leak
back to the host even though the host's ``/`` is a shared mount (systemd's default), and it
disappears with the process.

The wrapper composes with ``nsenter --net=...`` (``runtime.spawn`` puts nsenter first) and keeps
the pid: nsenter, unshare and sh all ``exec`` in turn (no ``--fork``), so the pid returned by
``spawn`` is the workload's own.  It needs util-linux's ``unshare`` and ``mount`` (Debian 12:
util-linux 2.38) and CAP_SYS_ADMIN, i.e. root like the rest of the lab.

Caveats: the file is bind-mounted by inode, so rewrite it in place (not by rename) if a running
pod must see a change -- kubelet, too, writes resolv.conf once at pod start.  If the host resolves
names through nscd or systemd-resolved's NSS module (``hosts: resolve`` in /etc/nsswitch.conf),
glibc asks that daemon instead of reading resolv.conf; lab hosts use ``hosts: files dns``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path

RESOLV_CONF = "/etc/resolv.conf"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
DEFAULT_NDOTS = 5  # what kubelet writes for dnsPolicy ClusterFirst
MAX_NAMESERVERS = 3  # glibc's MAXNS
MAX_SEARCH = 32  # kubelet's MaxDNSSearchPaths
MAX_SEARCH_CHARS = 2048  # kubelet's MaxDNSSearchListChars

_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

# $0 is the file to mount; "$@" is the workload's argv.  `-o ro` with --bind makes mount(8)
# remount the bind read-only (util-linux >= 2.27), so a pod cannot edit the agent's file.
_BIND_SCRIPT = 'mount --bind -o ro -- "$0" "$1" && shift && exec "$@"'


class ResolvConfError(ValueError):
    """Invalid input for a pod's resolv.conf."""


def _check_domain(domain: str, what: str) -> str:
    labels = domain.strip(".").split(".")
    if not domain.strip(".") or not all(_LABEL_RE.match(lab) for lab in labels):
        raise ResolvConfError(f"{what} {domain!r} is not a valid DNS name")
    return domain.strip(".")


def search_domains(namespace: str, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> list[str]:
    """kubelet's search list for a pod in ``namespace``: ns.svc.<d>, svc.<d>, <d>."""
    if not _LABEL_RE.match(namespace):
        raise ResolvConfError(f"namespace {namespace!r} is not a DNS label")
    d = _check_domain(cluster_domain, "cluster domain")
    return [f"{namespace}.svc.{d}", f"svc.{d}", d]


def pod_resolv_conf(
    namespace: str,
    nameservers: str | Sequence[str],
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
    ndots: int = DEFAULT_NDOTS,
    extra_search: Sequence[str] = (),
    extra_options: Sequence[str] = (),
) -> str:
    """The resolv.conf text kubelet writes for a ``dnsPolicy: ClusterFirst`` pod::

        search <ns>.svc.cluster.local svc.cluster.local cluster.local
        nameserver <DNS service VIP>
        options ndots:5

    ``nameservers`` is the DNS service's ClusterIP (or up to three addresses, e.g. its IPv4
    and IPv6 VIPs).  ``extra_search`` is appended to the search list (kubelet appends the
    host's; the sealed lab has none); ``extra_options`` are further ``options`` words.
    """
    servers = [nameservers] if isinstance(nameservers, str) else list(nameservers)
    if not 1 <= len(servers) <= MAX_NAMESERVERS:
        raise ResolvConfError(f"need 1 to {MAX_NAMESERVERS} nameservers, got {len(servers)}")
    for s in servers:
        try:
            ipaddress.ip_address(s)
        except ValueError:
            raise ResolvConfError(f"nameserver {s!r} is not an IP address") from None
    search = search_domains(namespace, cluster_domain)
    search += [_check_domain(d, "search domain") for d in extra_search]
    if len(search) > MAX_SEARCH or len(" ".join(search)) > MAX_SEARCH_CHARS:
        raise ResolvConfError("search list too long")
    if not 0 <= ndots <= 15:
        raise ResolvConfError("ndots must be 0-15")
    options = [f"ndots:{ndots}", *extra_options]
    for opt in options:
        if not opt or any(c.isspace() for c in opt):
            raise ResolvConfError(f"bad resolver option {opt!r}")
    lines = [
        "# written by tendril for a pod in namespace " + namespace,
        "search " + " ".join(search),
        *(f"nameserver {s}" for s in servers),
        "options " + " ".join(options),
    ]
    return "\n".join(lines) + "\n"


def write_resolv_conf(path: str | os.PathLike[str], text: str) -> Path:
    """Write a pod's resolv.conf (temporary file + rename, mode 0644); returns its absolute path.

    Write it before starting the pod: a running pod keeps the inode it has mounted.
    """
    p = Path(path).absolute()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # not narrowed by the umask: every pod user must read it
    os.replace(tmp, p)
    return p


def wrap_argv_with_bind_mount(argv: Sequence[str], source: str | os.PathLike[str], target: str) -> list[str]:
    """argv that runs ``argv`` with ``source`` bind-mounted read-only over ``target``.

    The mount lives in a new, private mount namespace: the caller's view (the host's) is
    unchanged.  Wrappers nest: wrap the result again to mount more files.
    """
    if not argv:
        raise ValueError("empty argv")
    src = os.path.abspath(os.fspath(source))
    if not os.path.isabs(target):
        raise ValueError(f"bind-mount target must be absolute, got {target!r}")
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        _BIND_SCRIPT,
        src,
        target,
        *argv,
    ]


def wrap_argv_with_resolvconf(argv: Sequence[str], resolv_conf_path: str | os.PathLike[str]) -> list[str]:
    """argv that runs ``argv`` seeing ``resolv_conf_path`` as /etc/resolv.conf (host unaffected).

    Use it inside the netns wrapper: ``nsenter_argv(pod_netns, wrap_argv_with_resolvconf(...))``,
    which is what ``runtime.spawn(pod_netns, cgroup, wrap_argv_with_resolvconf(argv, path))``
    builds.  The process fails to start (mount's message on stderr) if the file does not exist.
    """
    return wrap_argv_with_bind_mount(argv, resolv_conf_path, RESOLV_CONF)
