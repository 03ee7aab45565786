"""The gateway commands beside the alarm ones: ``ping``, ``read``, ``write``, ``restart``.

Their names, the shape of their arguments (checked here, as hostile input, by the gateway
that receives them) and of their results, shared by the agent that carries them out and
the center that sends them (``fleet cmd``). They travel as every command does
(``contract/commands.py``: signed, with an expiry, never replayed) and are answered with
``{id, ok, result, error}``.

- ``ping``, args ``{}``: ``{agent_version, uptime_s, outbox_depth, ts}``;
- ``read``, args ``{device, point}``: ``{device, point, value, unit, quality, ts, reason}``;
- ``write``, args ``{device, point, value, by}``: ``{device, point, value, by, ts}``;
- ``restart``, args ``{by}`` (optional): ``{restarting: true, exit_code}``.

``device`` and ``point`` must name a device of the gateway's config and one of its
points; ``value`` is a boolean, a finite number or a text of at most ``VALUE_TEXT_MAX``
characters; ``by`` (who asked, kept in the gateway's log) is a text of at most
``OPERATOR_MAX`` characters, ``"center"`` when absent. An argument not listed is refused
(a misspelt ``valu`` must not write nothing and answer ok).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from edge_agent.contract.limits import ID_MAX, OPERATOR_MAX, VALUE_TEXT_MAX

PING: Final = "ping"
READ: Final = "read"
WRITE: Final = "write"
RESTART: Final = "restart"
GATEWAY_COMMANDS: Final = (PING, READ, WRITE, RESTART)
"""The commands of this module (the alarm ones are ``AlarmService.COMMANDS``)."""

RESTART_EXIT_CODE: Final = 75
"""How ``edge-agent run`` exits after a ``restart`` command, once stopped cleanly:
EX_TEMPFAIL, which the shipped systemd unit (``Restart=always``) restarts. Never 2: that
is ``RestartPreventExitStatus``, a config that would only fail again."""

WriteValue = bool | int | float | str


class BadArguments(ValueError):
    """A command's arguments do not have the shape its name requires; says which."""


@dataclass(frozen=True, slots=True)
class PointRef:
    device: str
    point: str


@dataclass(frozen=True, slots=True)
class WriteArgs:
    device: str
    point: str
    value: WriteValue
    by: str


def _only(args: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    extra = sorted(str(k)[:ID_MAX] for k in args if k not in allowed)
    if extra:
        known = ", ".join(allowed) if allowed else "none"
        raise BadArguments(f"unknown argument(s) {', '.join(extra)}; this command takes {known}")


def _id(args: Mapping[str, Any], name: str) -> str:
    value = args.get(name)
    if value is None:
        raise BadArguments(f"{name} is required")
    if not isinstance(value, str) or not value:
        raise BadArguments(f"{name} must be a non-empty text, not {type(value).__name__}")
    if len(value) > ID_MAX:
        raise BadArguments(f"{name} is {len(value)} characters; at most {ID_MAX}")
    return value


def by_of(args: Mapping[str, Any]) -> str:
    """Who asked: ``by``, a text of at most ``OPERATOR_MAX`` characters; ``center`` if absent."""
    by = args.get("by", "center")
    if not isinstance(by, str):
        raise BadArguments(f"by must be text, not {type(by).__name__}")
    if len(by) > OPERATOR_MAX:
        raise BadArguments(f"by is {len(by)} characters; at most {OPERATOR_MAX}")
    return by


def ping_args(args: Mapping[str, Any]) -> None:
    _only(args, ())


def read_args(args: Mapping[str, Any]) -> PointRef:
    _only(args, ("device", "point"))
    return PointRef(_id(args, "device"), _id(args, "point"))


def write_value(value: object) -> WriteValue:
    """A value a point may be set to: a boolean, a finite number or a bounded text."""
    if isinstance(value, bool | str):
        if isinstance(value, str) and len(value) > VALUE_TEXT_MAX:
            raise BadArguments(f"value is {len(value)} characters; at most {VALUE_TEXT_MAX}")
        return value
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise BadArguments("value must be a finite number")
        return value
    if value is None:
        raise BadArguments("value is required")
    raise BadArguments(f"value must be a boolean, a number or a text, not {type(value).__name__}")


def write_args(args: Mapping[str, Any]) -> WriteArgs:
    _only(args, ("device", "point", "value", "by"))
    ref = read_args({k: args[k] for k in ("device", "point") if k in args})
    return WriteArgs(ref.device, ref.point, write_value(args.get("value")), by_of(args))


def restart_args(args: Mapping[str, Any]) -> str:
    _only(args, ("by",))
    return by_of(args)
