"""The agent under ``Type=notify``: systemd's notify protocol spoken to a real datagram
socket standing in for the service manager (``NOTIFY_SOCKET``), as ``edge-agent run``
and in-process for the watchdog's pings and a loop blocked on purpose."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.service_notify import Notifier
from tests.rig import devices_yaml
from tests.support import Agent, agent_config, free_port, wait_for


class Manager:
    """The service manager's end: a bound datagram socket keeping each notice and when
    it came (and, for READY, whether the outbox file was there by then)."""

    def __init__(self, address: str, outbox: Path | None = None) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.notices: list[tuple[float, str]] = []
        self.outbox_at_ready: bool | None = None
        self._outbox = outbox
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            text = data.decode()
            if "READY=1" in text.splitlines() and self._outbox is not None:
                self.outbox_at_ready = self._outbox.exists()
            self.notices.append((time.monotonic(), text))

    def times(self, field: str) -> list[float]:
        return [t for t, text in list(self.notices) if field in text.splitlines()]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short folder: a socket's path must fit in 107 bytes, pytest's may not."""
    with tempfile.TemporaryDirectory(prefix="ef-notify-") as folder:
        yield Path(folder)


def test_the_agent_says_ready_after_its_outbox_opens_pings_and_says_stopping(
    tmp_path: Path, socket_dir: Path
) -> None:
    outbox = tmp_path / "outbox.db"
    manager = Manager(str(socket_dir / "notify"), outbox)
    # no device answers and no broker listens: READY is about the agent, not its site
    text = agent_config(
        gateway="gw-notify",
        broker_url=f"mqtt://127.0.0.1:{free_port()}",
        outbox=outbox,
        devices_yaml=devices_yaml(free_port(), poll_s=0.5),
    )
    agent = Agent(tmp_path, text)
    agent.env |= {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "1000000"}
    agent.start()
    try:
        wait_for(lambda: manager.times("READY=1"), 20, what="READY=1")
        assert manager.outbox_at_ready is True
        ready = manager.times("READY=1")[0]
        time.sleep(3.0)
        pings = [t for t in manager.times("WATCHDOG=1") if t >= ready]
        # every half of the watchdog's 1 s: about 6 in 3 s
        assert 4 <= len(pings) <= 9, pings
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) < 1.0, gaps  # never as long as the watchdog's time
        rc = agent.stop(signal.SIGTERM)
        assert rc == 0, agent.output()[-2000:]
        wait_for(lambda: manager.times("STOPPING=1"), 5, what="STOPPING=1")
        assert len(manager.times("READY=1")) == 1
    finally:
        agent.stop()
        manager.close()


def test_a_blocked_event_loop_stops_the_pings_and_they_come_back_after(
    socket_dir: Path,
) -> None:
    manager = Manager(str(socket_dir / "notify"))
    notifier = Notifier(manager.address, watchdog_s=0.2)

    async def scenario() -> tuple[float, float]:
        pinging = asyncio.create_task(notifier.keep_alive())
        await asyncio.sleep(0.6)
        blocked = time.monotonic()
        time.sleep(0.8)  # noqa: ASYNC251 -- the point: a handler that never yields
        unblocked = time.monotonic()
        await asyncio.sleep(0.6)
        pinging.cancel()
        return blocked, unblocked

    try:
        blocked, unblocked = asyncio.run(scenario())
        time.sleep(0.2)  # the last datagrams read
        pings = manager.times("WATCHDOG=1")
        assert len([t for t in pings if t < blocked]) >= 4, pings
        # none while blocked (one sent just before may arrive just after it began)
        assert not [t for t in pings if blocked + 0.05 < t < unblocked - 0.01], pings
        assert len([t for t in pings if t > unblocked]) >= 3, pings
    finally:
        manager.close()


def test_an_abstract_socket_gets_the_notices_and_a_missing_one_stops_nothing(
    socket_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager = Manager(f"@ef-notify-{os.getpid()}-{time.monotonic_ns()}")
    try:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": manager.address})
        assert notifier is not None and notifier.watchdog_s is None
        assert notifier.ready("2 device(s) polled") and notifier.stopping()
        wait_for(lambda: len(manager.notices) == 2, 5, what="both notices")
        assert manager.notices[0][1] == "READY=1\nSTATUS=2 device(s) polled"
        assert manager.notices[1][1] == "STOPPING=1"
    finally:
        manager.close()
    gone = Notifier(str(socket_dir / "nobody-listens"), watchdog_s=1.0)
    assert not gone.ping() and not gone.ping()
    said = [r for r in caplog.records if "not delivered" in r.getMessage()]
    assert len(said) == 1  # said once, not at every ping


@pytest.mark.parametrize(
    ("env", "watchdog"),
    [
        ({"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "30000000"}, 30.0),
        ({"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "0"}, None),
        ({"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "-5"}, None),
        ({"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "1e6"}, None),
        ({"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "5", "WATCHDOG_PID": "1"}, None),
        (
            {
                "NOTIFY_SOCKET": "/run/notify",
                "WATCHDOG_USEC": "5",
                "WATCHDOG_PID": str(os.getpid()),
            },
            5e-6,
        ),
    ],
)
def test_the_watchdog_is_the_one_the_environment_gives_this_process(
    env: dict[str, str], watchdog: float | None
) -> None:
    notifier = Notifier.from_env(env)
    assert notifier is not None and notifier.watchdog_s == watchdog


@pytest.mark.parametrize("address", ["", "relative/notify", "@", "vsock:2:1234"])
def test_no_service_manager_means_no_notifier(address: str) -> None:
    assert Notifier.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}) is None
