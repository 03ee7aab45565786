"""The service manager's notify protocol (systemd's ``sd_notify``), spoken by the agent.

Under ``Type=notify`` systemd sets ``NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract
namespace) and waits for ``READY=1`` before it calls the service started; with
``WatchdogSec=`` it also sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, the process it means)
and restarts a service whose ``WATCHDOG=1`` pings stop for that long. ``STOPPING=1`` says a
stop has begun. Each is one datagram of ``KEY=value`` lines.

The pings come from a task on the agent's event loop (``keep_alive``), so they stop when the
loop is wedged (a blocking call, a handler that never yields) and go on while it is merely
busy: each poll, commit and send yields. They come every half of the watchdog's time, as
systemd recommends. Nothing here may stop the agent: a socket that is gone or full makes a
notice undelivered, said once in the log, and the agent runs on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Notices to the service manager at ``address``; see the module docstring."""

    def __init__(self, address: str, watchdog_s: float | None = None) -> None:
        """``address``: ``NOTIFY_SOCKET``'s value. ``watchdog_s``: the watchdog's time (None:
        no watchdog), pinged every half of it by ``keep_alive``."""
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_s = watchdog_s
        self._failed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier | None:
        """The notifier the environment asks for; None when not run by a service manager
        that listens (no ``NOTIFY_SOCKET``, or one that is neither a path nor ``@name``).
        A ``WATCHDOG_USEC`` that is not a positive integer, or a ``WATCHDOG_PID`` that is
        another process's, means no watchdog."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if not address.startswith(("/", "@")) or len(address) < 2:
            return None
        return cls(address, _watchdog_s(env))

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``KEY=value`` each) as one datagram; whether it went out."""
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # a full queue drops this notice, not the loop
                sock.sendto(message, self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("service manager: notice not delivered (%s); running on", exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def ping(self) -> bool:
        return self.notify("WATCHDOG=1")

    async def keep_alive(self) -> None:
        """Ping every half of the watchdog's time until cancelled (returns at once without
        a watchdog)."""
        if self.watchdog_s is None:
            return
        while True:
            self.ping()
            await asyncio.sleep(self.watchdog_s / 2)


def _watchdog_s(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None  # meant for another process (a parent that exec'd us would say so)
    return int(usec) / 1_000_000
