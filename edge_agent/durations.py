"""Lengths of time as people write them: ``90s``, ``15m``, ``12h``, ``7d``, or a plain
number of seconds.

The one parser of durations: the config's ``Duration`` fields (``outbox.max_age``) and
the command-line options (``fleet readings --since``, ``fleet alarms shelve --for``) read
the same forms, so a length that works in one place works in the other. A leaf: it
imports nothing of the project, so a command line can use it without loading the config
models.
"""

from __future__ import annotations

import re

UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
"""Seconds per unit; no unit means seconds."""

_FORM = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")

DURATION_FORMS = "a duration: a number with s, m, h or d (90s, 15m, 12h, 7d)"
"""What a duration looks like: the message of the error for anything else."""


def parse_duration(text: str) -> float:
    """Seconds in ``text``; spaces around the number and the unit are allowed.

    Raises ``ValueError`` (with ``DURATION_FORMS`` as its message) for anything else,
    negative numbers included: a length of time is never negative.
    """
    m = _FORM.fullmatch(text)
    if not m:
        raise ValueError(DURATION_FORMS)
    return float(m.group(1)) * UNIT_S[m.group(2)]
