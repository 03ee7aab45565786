"""EdgeFleet edge agent: polls devices, keeps every reading in a durable outbox, publishes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgefleet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+src"
