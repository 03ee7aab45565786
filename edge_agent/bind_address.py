"""The address a metrics endpoint binds to (``health.metrics_host``, ``fleet central run
--metrics-host``): an IP address of this host or a host name, checked the same way on
both sides. A leaf: it imports nothing of the project (nor prometheus_client), so the
config models and a command line can use it at no cost."""

from __future__ import annotations

import ipaddress
import re
import socket

DEFAULT_HOST = "127.0.0.1"
"""Loopback unless asked: the figures name devices and gateways."""

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class MetricsUnavailable(RuntimeError):
    """A metrics endpoint could not be served (the message says where and why)."""


def bind_host_problem(host: str) -> str | None:
    """What is wrong with ``host`` as an address to listen on; None if nothing is. Whether
    it is an address of this host is known only when it is bound (``MetricsUnavailable``)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return None
    if _HOSTNAME.match(host) and not host.replace(".", "").isdigit():
        return None
    return f"{host!r} is not an IP address (127.0.0.1, 0.0.0.0, ::1) or a host name"


def local_address_problem(host: str) -> str | None:
    """What keeps ``host`` from being listened on here (not an address of this host, a name
    that does not resolve); None if it can be. Tried on a port the system picks, so the
    port the service will take (held by the running service, maybe) is not asked for."""
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return f"{host} does not resolve: {exc.strerror or exc}"
    family, _, _, _, address = infos[0]
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind(address)
    except OSError as exc:
        reason = exc.strerror.lower() if exc.strerror else str(exc)
        return f"{host} is not an address of this host ({reason})"
    return None
