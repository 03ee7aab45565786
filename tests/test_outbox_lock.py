"""One agent per outbox: a second agent on the same ``outbox.path`` (another config naming
the file, or the service started twice) is refused at once and touches nothing; the lock
goes with the agent, kill -9 included.

Before the lock both agents ran: one stream id, two gateways sending its rows, each
deleting what the center acked to the other.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from edge_agent.outbox import Lane, Outbox, OutboxUnavailable
from tests.support import Agent, agent_config, free_port, run_cli, wait_for

DEVICES = (
    "  - id: d1\n"
    "    modbus: {host: 127.0.0.1, port: 1, unit: 1}\n"
    "    points: [{name: p, table: holding, address: 0, type: uint16}]\n"
)


def test_a_second_open_of_an_outbox_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    first = Outbox(path, max_bytes=10**8)
    first.append(Lane.TELEMETRY, [(1.0, '{"i":1}')] * 3)
    before = path.read_bytes()
    with pytest.raises(OutboxUnavailable) as refused:
        Outbox(path, max_bytes=10**8)
    assert f"the outbox {path} is in use by another agent (pid {os.getpid()})" in str(refused.value)
    assert path.read_bytes() == before  # not opened, not checked, not marked
    assert first.stats().depth == 3
    stream = first.stream_id
    first.close()
    again = Outbox(path, max_bytes=10**8)  # closed: the lock went with it
    assert (again.stream_id, again.stats().depth) == (stream, 3)
    again.close()


def agent(workdir: Path, gateway: str, outbox: Path) -> Agent:
    workdir.mkdir()
    broker = f"mqtt://127.0.0.1:{free_port()}"  # none there: the agent runs on, offline
    return Agent(
        workdir,
        agent_config(gateway=gateway, broker_url=broker, outbox=outbox, devices_yaml=DEVICES),
    )


def test_a_second_agent_on_the_same_outbox_exits_1_and_the_first_runs_on(tmp_path: Path) -> None:
    outbox = tmp_path / "shared" / "outbox.db"
    first = agent(tmp_path / "a", "gw-a", outbox).start()
    try:
        wait_for(
            lambda: "outbox" in first.output() and "stream" in first.output(), 20, what="agent a up"
        )
        assert first.proc is not None
        holder = first.proc.pid
        second = agent(tmp_path / "b", "gw-b", outbox)
        out = run_cli("edge-agent", "run", "-c", str(second.config), timeout=30)
        assert out.returncode == 1, out.stderr  # not 2: systemd tries again later
        assert f"the outbox {outbox} is in use by another agent (pid {holder})" in out.stderr
        assert "Traceback" not in out.stderr
        assert first.running()
        # kill -9 leaves the lock file, but not the lock: the next agent starts
        first.stop(signal.SIGKILL)
        third = agent(tmp_path / "c", "gw-a", outbox).start()
        try:
            wait_for(lambda: "stream" in third.output(), 20, what="agent c up")
            assert third.running() and "in use" not in third.output()
        finally:
            assert third.stop() == 0
    finally:
        first.stop()
