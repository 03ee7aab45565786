"""EdgeFleet edge agent: polls devices, keeps every reading in a durable outbox, publishes.

- ``config/``: the agent's config models, device profiles and the loader that reports each
  problem at its line (``problems.py``: the one problem type);
- ``contract/``: the wire contract the center shares (topics, payloads, the alarm event
  type and its states, JSON Schemas);
- ``outbox/``: the SQLite outbox, split by what it keeps, behind ``AgentOutbox``, the async
  facade that owns its thread, with one narrow interface per consumer and an in-memory
  implementation of each;
- the runtime: ``devices`` (config to drivers, each protocol's library loaded only when a
  device uses it), ``polling``, ``committer`` (group commit), ``sender`` (lanes, batches,
  acks, resends), ``uplink`` (the session to the center, over ``mqttlink``), ``alarms``
  and ``rules/`` (the ISA-18.2 engine and local actions), ``commands`` (signed commands),
  ``health``, ``runtime`` (runs the parts, and the order of the stop) and ``app`` (only
  wires them together).

It never imports ``sim`` or ``drivers.simulated``, nor anything of ``central`` or ``cli``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgefleet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+src"
