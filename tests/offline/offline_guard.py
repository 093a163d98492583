"""Network off for the tests: sockets reach only loopback and Unix sockets (see sitecustomize.py)."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket

MESSAGE = "network access is off in effnet-lab's tests (tests/offline): tried to reach {}"
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


_OWN: set[str] = set()  # this machine's own addresses (its host name may resolve to one that is not loopback)


def _is_local(host: object) -> bool:
    if not isinstance(host, str):
        return True  # a Unix socket path (bytes) or the like
    if host.lower() in _LOCAL_NAMES or host == socket.gethostname() or host in _OWN:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse(where: object) -> OSError:
    return OSError(errno.ENETUNREACH, MESSAGE.format(where))


def install() -> None:
    """Patch the socket module once: connections and name lookups beyond this machine raise ``OSError``."""
    if getattr(socket, "_effnet_offline", False):
        return
    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
    with contextlib.suppress(OSError):
        _OWN.update(info[4][0] for info in real_getaddrinfo(socket.gethostname(), None))

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            raise _refuse(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            return errno.ENETUNREACH
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _is_local(host.decode() if isinstance(host, bytes) else host):
            raise socket.gaierror(socket.EAI_NONAME, MESSAGE.format(host))
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    socket._effnet_offline = True
