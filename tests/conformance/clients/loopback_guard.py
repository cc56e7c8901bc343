"""A loopback-only network guard for the client processes of test_sidecar_clients.py.

Dependency-free (it also runs inside gcloud's own interpreter, see site/sitecustomize.py).
Every connect and name lookup that is not loopback is refused inside the process and, when
CONFORMANCE_GUARD_LOG names a file, recorded there one line each; `install` writes an
`installed` line, so the test can tell that the guard ran. The test fails on any other line.
The clients themselves are not modified; this only watches their sockets.
"""

from __future__ import annotations

import ipaddress
import os
import socket

_INSTALLED = False


def _loopback(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host)
    if host in ("", "localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _record(what: str) -> None:
    path = os.environ.get("CONFORMANCE_GUARD_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(what + "\n")


def install() -> None:
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    _record("installed")
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0] if isinstance(address, tuple) else address
            if not _loopback(host):
                _record(f"connect {address!r}")
                raise OSError(101, f"loopback guard: connect to {address!r} refused")

    def connect(self, address):
        check(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _loopback(host):
            _record(f"getaddrinfo {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, f"loopback guard: lookup of {host!r} refused")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo
