"""What a long-running client says while its broker is away: once, then now and then.

A service that keeps retrying in silence looks, to whoever reads its log, exactly like a
service that works: ``fleet central run`` pointed at a broker that was down said nothing
for as long as it waited after the first loss. Every retry at warning level would bury
the log instead. So, for one connection:

- lost (it was connected): a warning, once;
- the first failed attempt of an outage: "cannot reach ...; retrying", once;
- while it lasts, a reminder every ``remind_s`` with how long and how many attempts;
- every attempt at debug level;
- back: "reached ... again after N s", once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class OutageLog:
    def __init__(
        self,
        log: logging.Logger,
        who: str,
        remind_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``who`` starts every line: the client and its broker."""
        self._log = log
        self._who = who
        self.remind_s = remind_s
        self._clock = clock
        self._since: float | None = None  # the outage's start; None while connected
        self._next_reminder = 0.0
        self._told_unreachable = False
        self.attempts = 0
        """Failed attempts in the current outage."""

    def up(self) -> None:
        if self._since is not None:
            self._log.info(
                "%s: reached again after %.0f s (%d failed attempts)",
                self._who,
                self._clock() - self._since,
                self.attempts,
            )
        self._since = None
        self._told_unreachable = False
        self.attempts = 0

    def lost(self, reason: str) -> None:
        """The connection it had is gone."""
        self._log.warning("%s: lost the broker: %s; reconnecting", self._who, reason)
        self._start()

    def failed(self, reason: str) -> None:
        """One attempt to connect failed."""
        if self._since is None:
            self._start()
        self.attempts += 1
        now = self._clock()
        if not self._told_unreachable:
            self._told_unreachable = True
            self._log.warning("%s: cannot reach the broker: %s; retrying", self._who, reason)
        elif now >= self._next_reminder:
            assert self._since is not None
            self._log.warning(
                "%s: still cannot reach the broker after %.0f s (%d attempts), last: %s; retrying",
                self._who,
                now - self._since,
                self.attempts,
                reason,
            )
        else:
            self._log.debug("%s: attempt %d failed: %s", self._who, self.attempts, reason)
            return
        self._next_reminder = now + self.remind_s

    def _start(self) -> None:
        self._since = self._clock()
        self._told_unreachable = False
        self.attempts = 0
