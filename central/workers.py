"""Several ingest workers, each its own process, kept up by one supervisor.

``fleet central run --workers N`` (PostgreSQL only) runs this supervisor, which starts
``N`` worker processes, each a ``fleet central run`` of its own with the same options and
its number (``--worker-index k``). Each worker is an ``Ingest`` with its own persistent
sessions (``worker_client_id``: ``<client id>-w<k>`` and ``…-w<k>-alarms``), taking its
share of the fleet's topics through MQTT v5 shared subscriptions, storing, committing
and acking what it took (``central.ingest``). Processes, not threads: one ingest thread
already keeps a core busy decoding and storing, and a process that dies takes only its
own share down.

What the supervisor does:

- a worker that exits by itself (killed, its store failing, anything) is started again
  after a backoff (``RESTART_FIRST_S`` doubling to ``RESTART_CAP_S``, reset once a worker
  has stayed up ``STABLE_S``). Meanwhile the broker keeps the messages of that worker's
  persistent sessions: what it had not PUBACKed is delivered again when it is back, and
  what the gateways had no ack for, they send again; nothing is lost, and the store keeps
  each reading once;
- a worker that dies more than ``RESTARTS_MAX`` times within ``RESTART_WINDOW_S``, or
  that exits with 2 (a usage or config error: starting it again cannot help), ends the
  whole service: every worker is stopped and the supervisor exits 1 (or 2), for its own
  supervisor (systemd) to decide;
- SIGTERM and SIGINT (``stop``) are passed on to every worker as SIGTERM; a worker not
  gone within ``STOP_WAIT_S`` is killed. A worker whose supervisor is gone (killed
  with -9) stops by itself (``watch_parent``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mqttlink.backoff import Backoff

log = logging.getLogger(__name__)

RESTART_FIRST_S = 0.5
RESTART_CAP_S = 10.0
STABLE_S = 30.0
"""A worker up this long has its backoff reset."""
RESTARTS_MAX = 5
RESTART_WINDOW_S = 60.0
STOP_WAIT_S = 10.0
POLL_S = 0.2
EXIT_USAGE = 2
"""A worker's exit status that no restart can cure (a usage or config error)."""
WORKERS_MAX = 64


def worker_client_id(client_id: str, worker: int, workers: int) -> str:
    """A worker's MQTT client id: stable, so that its persistent session is its own after a
    restart. A lone worker keeps the service's own id (and the sessions it always had)."""
    return client_id if workers == 1 else f"{client_id}-w{worker}"


def exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"was killed by {name}"
    return f"exited with status {returncode}"


@dataclass
class _Worker:
    number: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    due: float | None = 0.0
    """When to start it (again); None while it runs."""
    backoff: Backoff = field(
        default_factory=lambda: Backoff(first_s=RESTART_FIRST_S, cap_s=RESTART_CAP_S)
    )
    """Between restarts (``_died``)."""
    deaths: deque[float] = field(default_factory=deque)


class Supervisor:
    """Runs ``workers`` processes, ``command(k)`` each, until ``stop`` is set (0) or they
    cannot be kept up (1, or 2 after a usage error)."""

    def __init__(
        self,
        command: Callable[[int], Sequence[str]],
        workers: int,
        stop: threading.Event,
        env: dict[str, str] | None = None,
        *,
        restart_first_s: float = RESTART_FIRST_S,
        restart_cap_s: float = RESTART_CAP_S,
        stop_wait_s: float = STOP_WAIT_S,
    ) -> None:
        if not 1 <= workers <= WORKERS_MAX:
            raise ValueError(f"workers must be 1 to {WORKERS_MAX}")
        self._command = command
        self._stop = stop
        self._env = env
        self._stop_wait_s = stop_wait_s
        self._workers = [
            _Worker(k, backoff=Backoff(first_s=restart_first_s, cap_s=restart_cap_s))
            for k in range(workers)
        ]

    def pids(self) -> list[int | None]:
        """Each worker's process id (None while it waits to be started again)."""
        return [None if w.proc is None else w.proc.pid for w in self._workers]

    def run(self) -> int:
        code = 0
        try:
            while not self._stop.is_set():
                code = self._tend()
                if code:
                    break
                self._stop.wait(POLL_S)
        finally:
            self._stop_all()
        return code

    def _tend(self) -> int:
        """Notice the workers that ended and start the ones due; non-zero: give up."""
        now = time.monotonic()
        for w in self._workers:
            if w.proc is not None:
                rc = w.proc.poll()
                if rc is None:
                    continue
                code = self._ended(w, rc, now)
                if code:
                    return code
            if w.due is not None and now >= w.due:
                code = self._start(w, now)
                if code:
                    return code
        return 0

    def _ended(self, w: _Worker, rc: int, now: float) -> int:
        pid = w.proc.pid if w.proc is not None else 0
        w.proc = None
        if rc == EXIT_USAGE:
            log.critical(
                "worker %d (pid %d) exited with status 2 (a usage or config error): "
                "stopping the service",
                w.number,
                pid,
            )
            return EXIT_USAGE
        return self._died(w, f"worker {w.number} (pid {pid}) {exit_reason(rc)}", now)

    def _died(self, w: _Worker, what: str, now: float) -> int:
        w.deaths.append(now)
        while w.deaths and now - w.deaths[0] > RESTART_WINDOW_S:
            w.deaths.popleft()
        if len(w.deaths) > RESTARTS_MAX:
            log.critical(
                "%s, %d times within %.0f s: cannot keep it up; stopping the service",
                what,
                len(w.deaths),
                RESTART_WINDOW_S,
            )
            return 1
        if now - w.started >= STABLE_S:
            w.backoff.reset()
        wait = w.backoff.next()
        w.due = now + wait
        log.warning("%s; starting it again in %.1f s", what, wait)
        return 0

    def _start(self, w: _Worker, now: float) -> int:
        argv = list(self._command(w.number))
        w.started = now
        try:
            w.proc = subprocess.Popen(argv, env=self._env)
        except OSError as exc:
            return self._died(w, f"worker {w.number} could not start: {exc}", now)
        w.due = None
        log.info("worker %d started (pid %d)", w.number, w.proc.pid)
        return 0

    def _stop_all(self) -> None:
        running = [w for w in self._workers if w.proc is not None and w.proc.poll() is None]
        for w in running:
            assert w.proc is not None
            w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._stop_wait_s
        for w in running:
            assert w.proc is not None
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d (pid %d) did not stop: killed", w.number, w.proc.pid)
                w.proc.kill()
                w.proc.wait()
        for w in self._workers:
            w.proc = None


def watch_parent(stop: threading.Event, parent: int, every_s: float = 1.0) -> None:
    """Set ``stop`` once this process's parent (the supervisor) is gone: a worker whose
    supervisor was killed with -9 must not run on, unsupervised, holding its sessions."""

    def watch() -> None:
        while not stop.wait(every_s):
            if os.getppid() != parent:
                log.warning("the supervisor (pid %d) is gone: stopping", parent)
                stop.set()

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()
