"""``--metrics-port`` and ``--metrics-host`` of ``fleet central run``: the center's
Prometheus endpoint, off unless a port is given."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from edge_agent.bind_address import DEFAULT_HOST, MetricsUnavailable, bind_host_problem

if TYPE_CHECKING:
    from central.metrics import CentralMetrics

DEFAULT_METRICS_HOST = DEFAULT_HOST


def _host_option(value: str) -> str:
    problem = bind_host_problem(value)
    if problem is not None:
        raise typer.BadParameter(problem)
    return value


MetricsPortOpt = Annotated[
    int,
    typer.Option(
        min=0,
        max=65535,
        help="serve Prometheus metrics on this port (http://HOST:PORT/metrics); 0: off",
    ),
]
MetricsHostOpt = Annotated[
    str,
    typer.Option(
        help="address the metrics are served on (0.0.0.0: every interface)",
        callback=_host_option,
    ),
]


def serve_metrics(host: str, port: int) -> CentralMetrics | None:
    """The endpoint, serving (None for port 0); a port in use, or an address that is not
    this host's, is a one-line error and exit 1."""
    if not port:
        return None
    # prometheus_client loads only when metrics are asked for
    from central.metrics import CentralMetrics  # noqa: PLC0415

    try:
        return CentralMetrics(host, port)
    except MetricsUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
