"""Commands from the center, received on ``…/gw/{gw}/cmd``: verified (signature, expiry,
replay), carried out, and answered on the MQTT v5 response topic.

A gateway without ``central.command_key`` refuses every command (and says so once): an
unsigned channel into a building's sirens is not a default anyone should get. A command
signed by any of the keys in that file holds (the new key beside the old while the
center's key is rotated).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent.contract import Channel, Topics
from edge_agent.contract.commands import CommandRejected, encode_reply, verify
from edge_agent.outbox import CommandLedger
from edge_agent.rules.engine import CommandRefused
from edge_agent.uplink import Inbound

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger(__name__)
Handler = Callable[[str, Mapping[str, Any]], Awaitable[dict[str, Any]]]


class CommandUplink(Protocol):
    """What the command channel needs of the MQTT session."""

    def subscribe(self, topic: str, handler: Callable[[Inbound], None]) -> None: ...

    def reply(self, request: Inbound, payload: bytes) -> bool: ...


class CommandChannel:
    def __init__(
        self,
        *,
        gateway: str,
        topics: Topics,
        uplink: CommandUplink,
        ledger: CommandLedger,
        keys: Sequence[Ed25519PublicKey],
        handlers: Mapping[str, Handler],
    ) -> None:
        self._gateway = gateway
        self._uplink = uplink
        self._ledger = ledger
        self._keys = tuple(keys)
        self._handlers = handlers
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned_no_key = False
        self.accepted = 0
        self.rejected = 0
        uplink.subscribe(topics.gw(gateway, Channel.CMD), self._received)

    def _received(self, message: Inbound) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, message: Inbound) -> None:
        cmd_id = "?"
        try:
            if not self._keys:
                if not self._warned_no_key:
                    log.warning("command refused: no central.command_key configured")
                    self._warned_no_key = True
                raise CommandRejected("this gateway has no command key: commands are refused")
            command = verify(message.payload, self._keys, self._gateway)
            cmd_id = command["id"]
            fresh = await self._ledger.remember(cmd_id, command["expires"], time.time())
            if not fresh:
                raise CommandRejected("replayed command")
            handler = self._handlers.get(command["cmd"])
            if handler is None:
                raise CommandRejected(f"unknown command {command['cmd']!r}")
            result = await handler(command["cmd"], command["args"])
        except (CommandRejected, CommandRefused, ValueError, KeyError) as exc:
            self.rejected += 1
            log.info("command %s refused: %s", cmd_id, exc)
            self._uplink.reply(message, encode_reply(cmd_id, False, error=str(exc)))
            return
        except Exception as exc:  # a handler's bug: answered, never an unanswered command
            self.rejected += 1
            log.exception("command %s failed", cmd_id)
            error = f"internal error: {type(exc).__name__}"
            self._uplink.reply(message, encode_reply(cmd_id, False, error=error))
            return
        self.accepted += 1
        log.info("command %s (%s) done", cmd_id, command["cmd"])
        self._uplink.reply(message, encode_reply(cmd_id, True, result))
