"""``--gateway``, ``--topic-root`` and the texts of the commands that talk to gateways.

Both become topic levels, and the contract refuses a wildcard or a separator in them
(``edge_agent.contract.topics``). Read as options they are checked as they are parsed, so
``-g 'demo-0002/#'`` is a usage error (exit 2) naming the option, before the broker is
connected to, rather than a ``TopicError`` traceback once it has been. The texts a
command carries (``--by``, ``--reason``) are bounded as the gateway bounds them
(``edge_agent.contract.limits``): a longer one would be refused there, after the wait.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge_agent.contract.topics import TopicError, Topics, check_gateway_id


def gateway_option(value: str) -> str:
    """The gateway id as given, if it can be a topic level."""
    try:
        return check_gateway_id(value)
    except TopicError as exc:
        raise typer.BadParameter(str(exc)) from None


def topic_root_option(value: str) -> str:
    """The topic root as given, if it is levels without wildcards."""
    try:
        return Topics(value).root
    except TopicError as exc:
        raise typer.BadParameter(str(exc)) from None


RootOpt = Annotated[
    str,
    typer.Option(
        "--topic-root",
        envvar="EDGEFLEET_TOPIC_ROOT",
        help="root of the fleet's topics",
        callback=topic_root_option,
    ),
]
KeyOpt = Annotated[
    Path,
    typer.Option("--key", envvar="EDGEFLEET_KEY", help="the center's Ed25519 private key"),
]
"""The center's signing key, for the commands that send signed commands."""


# the limits import the drivers' base (pydantic): they load for a command being run, never
# for --help


def by_option(value: str) -> str:
    """``--by``, if a gateway keeps that many characters of who gave a command."""
    from edge_agent.contract.limits import OPERATOR_MAX  # noqa: PLC0415

    return _at_most(value, OPERATOR_MAX)


def reason_option(value: str) -> str:
    """``--reason``, if a gateway keeps that many characters of a shelving's reason."""
    from edge_agent.contract.limits import COMMAND_REASON_MAX  # noqa: PLC0415

    return _at_most(value, COMMAND_REASON_MAX)


def _at_most(value: str, most: int) -> str:
    if len(value) > most:
        raise typer.BadParameter(f"{len(value)} characters; a gateway keeps at most {most}")
    return value
