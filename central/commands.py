"""Sending signed commands to gateways and waiting for their replies (MQTT v5
request/response: one response topic of our own, correlation data per command).

``send_command`` is one command to one gateway. ``send_many`` sends one command to many
(``fleet cmd --where …``) over a single session: at most ``window`` commands are
outstanding at once, each has its own timeout counted from its own publish, and every
outcome is reported as it comes (``on_outcome``, on the caller's thread: a progress bar,
the command ledger), so that ten thousand gateways neither flood the broker at once nor
wait on the slowest.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edge_agent.contract import Channel, PayloadError, Topics
from edge_agent.contract.commands import decode_reply, load_private_key, new_command, sign
from mqttlink.session import Message, Session, SessionError, Subscription
from mqttlink.url import Broker

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

Result = Literal["ok", "refused", "timeout", "failed"]
"""How a command ended: the gateway did it (``ok``), said no (``refused``: its ``error``),
did not answer in time (``timeout``), or could not be sent (``failed``)."""

WINDOW = 256
"""Commands outstanding at once in ``send_many``."""


class CommandFailed(Exception):
    """No reply in time, or the broker would not take the command."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """One gateway's answer to a command sent by ``send_many``."""

    gateway: str
    command_id: str
    sent: float
    result: Result
    detail: Any
    """The reply's ``result`` (ok) or ``error`` (refused), or why it failed or timed out."""
    replied: float | None
    reply: dict[str, Any] | None
    """The whole reply, as the gateway sent it; None when none came."""


@dataclass(frozen=True, slots=True)
class Sent:
    """A command just published: its id and time, for the ledger."""

    gateway: str
    command_id: str
    cmd: str
    args: dict[str, Any]
    sent: float


def _key(key_path: Path) -> Ed25519PrivateKey:
    try:
        return load_private_key(key_path)
    except ValueError as exc:  # not readable, not a key, not Ed25519: says which
        raise CommandFailed(str(exc)) from None


def _outcome_of(reply: dict[str, Any]) -> tuple[Result, Any]:
    if reply.get("ok") is True:
        return "ok", reply.get("result")
    return "refused", reply.get("error")


@dataclass(slots=True)
class _Pending:
    gateway: str
    command_id: str
    sent: float
    deadline: float


def send_many(
    broker: Broker,
    topics: Topics,
    gateways: Iterable[str],
    cmd: str,
    args: dict[str, Any],
    key_path: Path,
    *,
    timeout_s: float = 10,
    ttl_s: float = 60,
    window: int = WINDOW,
    on_sent: Callable[[Sent], None] = lambda _: None,
    on_outcome: Callable[[Outcome], None] = lambda _: None,
    stop: threading.Event | None = None,
) -> list[Outcome]:
    """Send ``cmd`` to each gateway; return every outcome, in the order they came.

    Raises ``CommandFailed`` only when nothing can be sent at all (no key, no broker); a
    gateway that does not answer is a ``timeout`` outcome, a connection that drops a
    ``failed`` one for each command it took with it. ``stop`` set: what is outstanding
    ends as ``failed`` ("interrupted") and the rest is not sent."""
    key = _key(key_path)
    todo = list(dict.fromkeys(gateways))  # each gateway once, in the given order
    reply_topic = f"{topics.root}/center/reply/{uuid.uuid4().hex}"
    lock = threading.Lock()
    changed = threading.Condition(lock)
    pending: dict[bytes, _Pending] = {}
    outcomes: list[Outcome] = []
    ready: list[Outcome] = []

    def finish(corr: bytes, result: Result, detail: Any, reply: dict[str, Any] | None) -> None:
        p = pending.pop(corr, None)
        if p is None:
            return  # a late or a duplicate reply
        now = time.time()
        outcome = Outcome(
            p.gateway, p.command_id, p.sent, result, detail, now if reply else None, reply
        )
        outcomes.append(outcome)
        ready.append(outcome)
        changed.notify_all()

    def report() -> None:
        """Hand the outcomes that came to ``on_outcome``, on the caller's thread (the
        ledger's connection is that thread's), never the network's."""
        got = ready[:]
        ready.clear()
        lock.release()
        try:
            for outcome in got:
                on_outcome(outcome)
        finally:
            lock.acquire()

    def on_reply(msg: Message) -> None:
        corr = msg.correlation or b""
        try:
            reply = decode_reply(msg.payload)
        except PayloadError as exc:
            reply = {"ok": False, "error": f"unreadable reply: {exc}"}
        with lock:
            p = pending.get(corr)
            # "?": a gateway that could not read the command's id (a bad signature) says so
            if p is None or reply.get("id") not in (None, "?", p.command_id):
                return  # not an answer to a command of ours (or to another one)
            result, detail = _outcome_of(reply)
            finish(corr, result, detail, reply)

    session = Session(broker, name="fleet", keepalive_s=10)
    session.subscribe(Subscription(reply_topic, qos=1), on_reply)
    try:
        session.open(timeout_s=5)  # connected, and the reply subscription granted
    except SessionError as exc:
        raise CommandFailed(f"broker {broker}: {exc}") from None
    try:
        queue = iter(todo)
        exhausted = False
        with lock:
            while True:
                interrupted = stop is not None and stop.is_set()
                while not exhausted and not interrupted and len(pending) < window:
                    gw = next(queue, None)
                    if gw is None:
                        exhausted = True
                        break
                    command = new_command(gw, cmd, args, ttl_s)
                    corr = uuid.uuid4().bytes
                    sent = time.time()
                    # pending before it goes: a quick reply must find it
                    pending[corr] = _Pending(gw, str(command["id"]), sent, sent + timeout_s)
                    delivery = session.publish(
                        topics.gw(gw, Channel.CMD),
                        sign(command, key),
                        qos=1,
                        response_topic=reply_topic,
                        correlation=corr,
                    )
                    lock.release()
                    try:
                        on_sent(Sent(gw, str(command["id"]), cmd, args, sent))
                    finally:
                        lock.acquire()
                    if delivery is None or not delivery.accepted:
                        finish(corr, "failed", "the connection to the broker dropped", None)
                if interrupted:
                    for corr in list(pending):
                        finish(corr, "failed", "interrupted", None)
                report()
                if interrupted or (exhausted and not pending):
                    while ready:  # what came while the last ones were reported
                        report()
                    break
                now = time.time()
                for corr, p in list(pending.items()):
                    if p.deadline <= now:
                        finish(corr, "timeout", f"no reply within {timeout_s:g} s", None)
                if pending:
                    nearest = min(p.deadline for p in pending.values())
                    changed.wait(max(0.01, min(0.25, nearest - time.time())))
    finally:
        session.close()
    return outcomes


def send_command(
    broker: Broker,
    topics: Topics,
    gateway: str,
    cmd: str,
    args: dict[str, Any],
    key_path: Path,
    timeout_s: float = 10,
    ttl_s: float = 60,
    on_sent: Callable[[Sent], None] = lambda _: None,
    on_outcome: Callable[[Outcome], None] = lambda _: None,
) -> dict[str, Any]:
    """Sign ``cmd`` with the center's key, send it to one gateway, return its reply;
    ``CommandFailed`` if none came in ``timeout_s`` or it could not be sent. ``on_sent``
    and ``on_outcome`` as for ``send_many`` (the command ledger)."""
    (outcome,) = send_many(
        broker,
        topics,
        [gateway],
        cmd,
        args,
        key_path,
        timeout_s=timeout_s,
        ttl_s=ttl_s,
        on_sent=on_sent,
        on_outcome=on_outcome,
    )
    if outcome.reply is not None:
        return outcome.reply
    if outcome.result == "timeout":
        raise CommandFailed(
            f"no reply from {gateway} within {timeout_s:g} s "
            "(offline, or no command key configured there?)"
        )
    raise CommandFailed(f"broker {broker}: {outcome.detail}")
