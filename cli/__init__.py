"""Command-line front ends: ``fleet`` for operators, ``edge-agent`` for technicians.

Thin: a command parses its options, calls the library, renders the result and turns the
library's error into a one-line message and an exit code. ``fleet.py`` and ``agent.py``
are the two programs; ``probe``, ``browse``, ``rules``, ``profiles`` and ``sim`` hold
``edge-agent``'s further commands. What they share: ``output`` (JSON or tables; rich only when a
table is drawn), ``problems`` (a file's problems and exit 2), ``durations`` (``--since``,
``--for``) and ``store_options`` (``--db``).
"""
