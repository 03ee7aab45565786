"""Capped exponential backoff with jitter, for the reconnect loop of every MQTT session.

Jitter matters at city scale: after a central outage tens of thousands of gateways would
otherwise reconnect in the same instant, and again at each doubling. Each wait is drawn
uniformly from the upper half of the current step, so the first retry still comes soon
and a fleet spreads out over the step.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, first_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        if not 0 < first_s <= cap_s:
            raise ValueError("backoff needs 0 < first_s <= cap_s")
        self.first_s = first_s
        self.cap_s = cap_s
        self._rng = rng or random.Random()
        self._step = first_s
        self.failures = 0

    def next(self) -> float:
        """The wait before the next attempt; each call doubles the step up to the cap."""
        step = self._step
        self._step = min(self.cap_s, self._step * 2)
        self.failures += 1
        return self._rng.uniform(step / 2, step)

    def reset(self) -> None:
        self._step = self.first_s
        self.failures = 0
