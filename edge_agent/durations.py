"""Lengths of time as people write them: ``90s``, ``15m``, ``12h``, ``7d``, ``2w``, or a
plain number of seconds.

The units are those of a fixed length. Months and years are not among them (their length
varies, and a year's shelving or retention is a decision to write out in days): ``2y`` is
refused with a hint to write days.

The one parser of durations: the config's ``Duration`` fields (``outbox.max_age``) and
the command-line options (``fleet readings --since``, ``fleet alarms shelve --for``) read
the same forms, so a length that works in one place works in the other. A leaf: it
imports nothing of the project, so a command line can use it without loading the config
models.
"""

from __future__ import annotations

import re

UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
"""Seconds per unit; no unit means seconds."""

_FORM = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")
_CALENDAR = re.compile(r"\s*\d+(?:\.\d+)?\s*(?:y|yr|years?|mo|months?)\s*", re.IGNORECASE)

DURATION_FORMS = "a duration: a number with s, m, h, d or w (90s, 15m, 12h, 7d, 2w)"
"""What a duration looks like: the message of the error for anything else."""

CALENDAR_HINT = "months and years vary in length: write days (365d)"

MAX_S = 36_500 * 86400
"""The longest duration: 36500 days, a century. Longer ones are typos (a digit too many,
or enough digits to read as infinity); they would end after every calendar a time is
shown in, and an infinite one is not a number JSON can carry to a gateway."""

LONGEST_HINT = "at most 36500d (a century)"


def parse_duration(text: str) -> float:
    """Seconds in ``text``; spaces around the number and the unit are allowed.

    Raises ``ValueError`` (with ``DURATION_FORMS`` as its message, and ``CALENDAR_HINT``
    after it for ``2y`` or ``3mo``, ``LONGEST_HINT`` for more than ``MAX_S``) for anything
    else, negative numbers included: a length of time is never negative.
    """
    m = _FORM.fullmatch(text)
    if not m:
        if _CALENDAR.fullmatch(text):
            raise ValueError(f"{DURATION_FORMS}; {CALENDAR_HINT}")
        raise ValueError(DURATION_FORMS)
    seconds = float(m.group(1)) * UNIT_S[m.group(2)]
    if not seconds <= MAX_S:  # also the infinity that 400 digits read as
        raise ValueError(f"{DURATION_FORMS}; {LONGEST_HINT}")
    return seconds
