"""Whether one unit on a bus answers, and when to ask it again if it does not.

On a shared RS-485 line a unit that does not answer costs the whole bus its timeout (times
its tries) at every poll; three dead units at 1 s each would stall every healthy one. So a
unit that stops answering is backed off: asked again after 1 s, then 2, 4 … up to 60 s,
and in between every request to it fails at once without touching the bus. When the
backoff expires, one request goes out, with a single try: the probe. Its answer brings the
unit back; its silence doubles the wait.

A write is let through even while backed off (single try, no retries): it is rare, asked
for by a person or a rule, and should be tried rather than refused on old news.

No jitter, unlike ``drivers.backoff.Backoff`` for reconnects to the center: jitter spreads a
fleet's gateways apart, while a bus is local to one gateway and a predictable schedule of
probes is easier to read in the field. Pure bookkeeping with the clock passed in, so it is
tested without a bus.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.base import DeviceUnavailable

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0


class UnitBackedOff(DeviceUnavailable):
    """The unit did not answer lately and is not asked again before ``retry_in`` seconds.

    ``reason`` is the last failure (``timeout``, ``exception 11: …``), so the unit's points
    keep the reason they had when the unit stopped answering.
    """

    def __init__(self, reason: str, retry_in: float) -> None:
        super().__init__(reason)
        self.retry_in = retry_in

    def __str__(self) -> str:
        return f"{self.reason} (backed off, next try in {self.retry_in:.1f} s)"


@dataclass(slots=True)
class UnitState:
    unit: int
    reason: str | None = None
    """Why the unit is unavailable; None while it answers."""
    down_since: float = 0.0
    backoff_s: float = 0.0
    retry_at: float = 0.0
    probing: bool = False
    backoffs: int = 0
    """Times a backoff was started or doubled: health data."""
    first_s: float = BACKOFF_FIRST_S
    max_s: float = BACKOFF_MAX_S

    def admit(self, now: float, *, write: bool = False) -> bool:
        """May a request go to the unit now? True if it is a probe (a single try).

        Raises UnitBackedOff while the backoff runs, or while another request probes.
        """
        if self.reason is None:
            return False
        if write:
            return True
        if now < self.retry_at:
            raise UnitBackedOff(self.reason, self.retry_at - now)
        if self.probing:
            raise UnitBackedOff(self.reason, 0.0)
        self.probing = True
        return True

    def failed(self, now: float, reason: str) -> bool:
        """The unit did not answer (or its gateway said so); True if that is news to log."""
        news = reason != self.reason
        if self.reason is None:
            self.down_since = now
            self.backoff_s = self.first_s
        else:
            self.backoff_s = min(2 * self.backoff_s, self.max_s)
        self.reason = reason
        self.retry_at = now + self.backoff_s
        self.backoffs += 1
        return news

    def answered(self, now: float) -> float | None:
        """The unit answered: seconds it had been unavailable, or None if it was not."""
        if self.reason is None:
            return None
        self.reason = None
        self.backoff_s = 0.0
        return now - self.down_since

    def backed_off_for(self, now: float) -> float:
        """Seconds until the next probe; 0 when the unit may be asked now."""
        return max(0.0, self.retry_at - now) if self.reason is not None else 0.0
