"""Command-line front ends: ``fleet`` for operators, ``edge-agent`` for technicians.

Thin: a command parses its options, calls the library, renders the result and turns the
library's error into a one-line message and an exit code. ``fleet.py`` and ``agent.py``
are the two programs; ``probe`` (its work in ``modbus_probe``), ``browse``, ``rules``,
``profiles`` and ``sim`` hold ``edge-agent``'s further commands, ``alarm_history`` the
alarm states and history of ``fleet alarms``. What they share: ``apps`` (plain help,
completion, ``--version``), ``output`` (JSON or tables; rich only when a table is
drawn), ``problems`` (a file's problems and exit 2), ``durations`` (``--since``,
``--for``) and ``store_options`` (``--db``).

A module a command needs only when it runs (the config models, a driver, the store,
asyncio) is imported inside that command, so that ``--help`` and ``--version`` stay quick
(``tests/test_cli_start.py``, ``bench/cli_start.py``).
"""
