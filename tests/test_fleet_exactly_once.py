"""Five agents, a central service, and kill -9 again and again, on both backends: every
``(gateway, stream, seq)`` an agent produced is in the store, and exactly once.

Every part is a real process or server: pymodbus device → five ``edge-agent run`` →
Mosquitto → ``fleet central run`` → SQLite, or PostgreSQL with two ingest workers on shared
subscriptions. The chaos: in each of a few rounds, one agent and one ingest worker are
killed with SIGKILL (no goodbye, no last commit) and started again (the worker by its
supervisor; on SQLite, whose one worker is the service, as systemd would). Then, once every
reading produced before a mark is at the center, agents and center are stopped cleanly and
the store is counted at rest: rows equal distinct keys (PostgreSQL has no unique key on
them: ``readings_stored`` keeps exactly-once, and this is where it would show), nothing
produced before the mark is missing, nothing stored was never produced.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from pathlib import Path

import pytest

from central.store import is_postgres, open_store
from tests.rig import devices_yaml
from tests.support import Agent, Broker, Process, ThreadedDevice, produced_keys, wait_for

pytestmark = pytest.mark.hil

AGENTS = 5
ROUNDS = 3
DOWN_S = 1.0


class CentralAt(Process):
    """``fleet central run`` on a store at any address (a file, or ``postgresql://``),
    with ``workers`` ingest worker processes."""

    def __init__(self, workdir: Path, broker_url: str, db: str, workers: int) -> None:
        self.db = db
        self.workers = workers
        args = ["central", "run", "--broker", broker_url, "--db", db, "--workers", str(workers)]
        super().__init__("fleet", args, workdir / "central.log")

    def worker_pids(self) -> dict[int, int]:
        """Each worker's latest pid, from the supervisor's ``worker K started (pid P)``."""
        found = re.findall(r"worker (\d+) started \(pid (\d+)\)", self.output())
        return {int(k): int(pid) for k, pid in found}


def stored(db: str, gateways: list[str]) -> dict[str, set[tuple[str, int]]]:
    store = open_store(db)
    try:
        return {gw: store.sequence_keys(gw) for gw in gateways}
    finally:
        store.close()


def kill_an_ingest_worker(central: CentralAt, rng: random.Random) -> None:
    """SIGKILL one ingest worker: on PostgreSQL one of the two worker processes (their
    supervisor starts it again), on SQLite the service itself (its one worker), which the
    test starts again as systemd would."""
    if central.workers == 1:
        central.kill()
        time.sleep(DOWN_S)
        central.start()
        return
    before = central.worker_pids()
    k = rng.randrange(central.workers)
    os.kill(before[k], signal.SIGKILL)
    wait_for(
        lambda: central.worker_pids().get(k) not in (None, before[k]),
        15,
        what=f"worker {k} started again by its supervisor",
    )


def test_kill_9_of_agents_and_ingest_loses_and_duplicates_nothing(
    tmp_path: Path, mqtt_broker: Broker, modbus_server: ThreadedDevice, store_address: str
) -> None:
    rng = random.Random(13)
    workers = 2 if is_postgres(store_address) else 1  # SQLite has one writer
    central = CentralAt(tmp_path, mqtt_broker.url, store_address, workers).start()
    agents: list[Agent] = []
    outboxes: list[Path] = []
    gateways = [f"gw-{i}" for i in range(AGENTS)]
    for gw in gateways:
        work = tmp_path / gw
        work.mkdir()
        outboxes.append(work / "outbox.db")
        yaml = devices_yaml(modbus_server.port, 0.2)
        agents.append(Agent.for_devices(work, mqtt_broker.url, yaml, gw, outbox=outboxes[-1]))
    try:
        for agent in agents:
            agent.start()
        wait_for(
            lambda: all(len(keys) > 20 for keys in stored(store_address, gateways).values()),
            30,
            what="readings of every gateway at the center",
        )
        for _ in range(ROUNDS):
            victim = rng.randrange(AGENTS)
            agents[victim].kill()
            kill_an_ingest_worker(central, rng)
            agents[victim].start()
            time.sleep(2 * DOWN_S)

        mark = {gw: produced_keys(box) for gw, box in zip(gateways, outboxes, strict=True)}
        wait_for(
            lambda: all(mark[gw] <= keys for gw, keys in stored(store_address, gateways).items()),
            60,
            what="every reading produced before the mark at the center",
        )
    finally:
        for agent in agents:
            agent.stop()
        central.stop()

    # at rest: nothing is in flight, nothing is being written
    final = {gw: produced_keys(box) for gw, box in zip(gateways, outboxes, strict=True)}
    keys = stored(store_address, gateways)
    store = open_store(store_address)
    try:
        rows = store.count_readings()
    finally:
        store.close()
    for gw in gateways:
        assert mark[gw] <= keys[gw], f"{gw}: readings produced before the mark are missing"
        assert keys[gw] <= final[gw], f"{gw}: the store has readings the agent never produced"
    assert rows == sum(len(k) for k in keys.values()), "a reading is stored more than once"
    assert sum(len(m) for m in mark.values()) > AGENTS * 50
