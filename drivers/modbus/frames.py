"""What makes a received Modbus TCP frame malformed, read from its MBAP header alone.

pymodbus' socket framer trusts the header: a wrong protocol id or an impossible length
makes it wait for bytes that never come (the request then times out), and a length too
short for its function makes its decoder raise inside ``data_received``, where asyncio
logs a traceback and drops the connection. ``Link`` asks this module first and turns
such a frame into a wrong answer at once, like any other answer that is not one.
"""

from __future__ import annotations

MBAP_HEADER = 7
"""Transaction id, protocol id, length (2 bytes each) and unit id."""

MBAP_LENGTH_MIN = 2
"""The unit id and a function code: nothing shorter is a Modbus answer."""

MBAP_LENGTH_MAX = 254
"""The unit id and the largest PDU, 253 bytes (the Modbus application protocol, 4.1)."""


def mbap_problem(received: bytes) -> str | None:
    """Why the frame at the start of ``received`` cannot be a Modbus TCP answer; None
    if it may be one (or too little of it has come to tell)."""
    if len(received) < MBAP_HEADER:
        return None
    protocol = int.from_bytes(received[2:4], "big")
    if protocol != 0:
        return f"protocol id {protocol}, not 0 (Modbus)"
    length = int.from_bytes(received[4:6], "big")
    if not MBAP_LENGTH_MIN <= length <= MBAP_LENGTH_MAX:
        return f"MBAP length {length}, not {MBAP_LENGTH_MIN}..{MBAP_LENGTH_MAX}"
    return None
