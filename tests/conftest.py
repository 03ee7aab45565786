from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Broker


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[Broker]:
    """A real Mosquitto on a free loopback port, stopped after the test."""
    d = tmp_path / "broker"
    d.mkdir()
    broker = Broker(d).start()
    yield broker
    broker.stop()
