"""``--gateway`` and ``--topic-root`` of the commands that talk to gateways over MQTT.

Both become topic levels, and the contract refuses a wildcard or a separator in them
(``edge_agent.contract.topics``). Read as options they are checked as they are parsed, so
``-g 'demo-0002/#'`` is a usage error (exit 2) naming the option, before the broker is
connected to, rather than a ``TopicError`` traceback once it has been.
"""

from __future__ import annotations

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
