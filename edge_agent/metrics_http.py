"""The Prometheus endpoint of the agent (``health.metrics_port``) and of the center
(``fleet central run --metrics-port``): a dedicated registry served over HTTP.

Never prometheus_client's global default registry: what the process exposes is what its
collectors yield, not whatever a library registered there (and a test that starts two
services in one process does not see one's series in the other's endpoint).

The one place both sides bind the port, so that a port in use or an address that is not
this host's is the same one-line ``MetricsUnavailable`` everywhere, never a traceback:

    OSError (address in use, not an address of this host, no permission) -> MetricsUnavailable

This module imports prometheus_client, so importing it costs memory: the agent imports it
only when ``health.metrics_port`` is set.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from edge_agent.bind_address import MetricsUnavailable

__all__ = ["MetricsServer", "MetricsUnavailable"]


class MetricsServer:
    """A registry served on ``http://host:port/metrics`` (any path answers) from a daemon
    thread; ``close()`` stops it and frees the port."""

    def __init__(self, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            reason = exc.strerror.lower() if exc.strerror else str(exc)
            raise MetricsUnavailable(f"cannot serve metrics on {host}:{port}: {reason}") from None
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self._closed = False
        self.host = host
        self.port = int(server.server_address[1])  # the port given, or the one given us for 0

    def close(self) -> None:
        """Stop serving; waits for the request in progress (a scrape is short). Again:
        nothing."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
