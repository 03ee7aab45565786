"""The agent's ``central: tls: {ca, cert, key}``: paths from the config's folder, and
``edge-agent check`` saying at its line what ``run`` would fail on: a key it cannot read
(tried as an unprivileged user: root reads any file), a certificate of another gateway,
one that expired or is not valid yet. ``run`` refuses the first two and starts with the
last (it polls and alarms locally until the certificate is renewed)."""

from __future__ import annotations

import datetime
import multiprocessing
import os
import pwd
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.agent import app as agent_app
from edge_agent.config import check_host, load_config
from tests.pki import Authority, Issued
from tests.rig import GW
from tests.support import Process, free_port, wait_for

DAY = datetime.timedelta(days=1)


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder every user may enter (tmp_path is root's alone): the unprivileged check
    must reach the config to be refused only the key."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-tls-") as name:
        path = Path(name)
        path.chmod(0o755)
        yield path


def write_config(folder: Path, tls: str, url: str = "mqtts://127.0.0.1:8883") -> Path:
    config = folder / "agent.yaml"
    config.write_text(
        f"gateway: {{id: {GW}}}\n"
        "central:\n"
        f"  url: {url}\n"
        f"{tls}"
        f"outbox: {{path: {folder / 'outbox.db'}}}\n"
        "devices: []\n"
    )
    config.chmod(0o644)
    return config


def gateway_files(
    folder: Path, cn: str = GW, validity: tuple[datetime.timedelta, ...] = ()
) -> Issued:
    ca = Authority(folder / "ca")
    (folder / "ca").chmod(0o755)
    ca.ca_file.chmod(0o644)
    span = (validity[0], validity[1]) if validity else None
    return ca.client(cn, stem="gateway", folder=folder, validity=span)


TLS = "  tls:\n    ca: ca/ca.pem\n    cert: gateway.crt\n    key: gateway.key\n"


def check(config: Path) -> tuple[int, str]:
    result = CliRunner().invoke(agent_app, ["check", "-c", str(config)])
    return result.exit_code, result.output


def test_tls_paths_are_relative_to_the_config_file(folder: Path) -> None:
    gateway_files(folder)
    config = write_config(folder, TLS)
    broker = check_host(load_config(config)).config.central.broker
    assert (broker.ca_file, broker.cert_file, broker.key_file) == (
        folder / "ca" / "ca.pem",
        folder / "gateway.crt",
        folder / "gateway.key",
    )
    assert check(config)[0] == 0


def test_tls_and_the_flat_keys_together_or_on_plain_mqtt_are_refused_at_their_line(
    folder: Path,
) -> None:
    gateway_files(folder)
    both = write_config(folder, TLS + "  ca_file: ca/ca.pem\n")
    code, out = check(both)
    assert code == 2 and "agent.yaml:8: central.ca_file" in out and "one" in out, out
    plain = write_config(folder, TLS, url="mqtt://127.0.0.1:1883")
    code, out = check(plain)
    assert code == 2 and "agent.yaml:5: central.tls.ca" in out and "mqtts://" in out, out


def test_a_certificate_of_another_gateway_is_refused_by_check_and_run(folder: Path) -> None:
    gateway_files(folder, cn="gw-other")
    config = write_config(folder, TLS)
    code, out = check(config)
    assert code == 2, out
    assert "agent.yaml:6: central.tls.cert" in out and "'gw-other'" in out, out
    result = CliRunner().invoke(agent_app, ["run", "-c", str(config)])
    assert result.exit_code == 2 and "'gw-other'" in result.output, result.output


def test_an_expired_certificate_fails_check_and_run_starts_with_it(folder: Path) -> None:
    gateway_files(folder, validity=(-10 * DAY, -DAY))
    config = write_config(folder, TLS, url=f"mqtts://127.0.0.1:{free_port()}")  # no one there
    code, out = check(config)
    assert code == 2 and "agent.yaml:6: central.tls.cert" in out and "expired on" in out, out
    # run starts: it polls and keeps readings (none here) while the center is out of reach
    agent = Process("edge-agent", ["run", "-c", str(config)], folder / "agent.log")
    agent.start()
    try:
        wait_for(lambda: "expired on" in agent.output(), 10, what="the agent's log of it")
        time.sleep(0.5)
        assert agent.running(), agent.output()
    finally:
        agent.stop()


def test_a_certificate_not_valid_yet_says_to_look_at_the_clock(folder: Path) -> None:
    gateway_files(folder, validity=(DAY, 10 * DAY))
    code, out = check(write_config(folder, TLS))
    assert code == 2 and "clock" in out, out


def _check_as(uid: int, gid: int, config: str, out: multiprocessing.Queue[tuple[int, str]]) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    out.put(check(Path(config)))


def test_a_key_the_agents_user_cannot_read_is_refused_at_its_line(folder: Path) -> None:
    issued = gateway_files(folder)
    config = write_config(folder, TLS)
    issued.cert.chmod(0o644)
    issued.key.chmod(0o600)  # root's, as a key copied by hand without --owner would be
    if os.geteuid() != 0:
        issued.key.chmod(0o000)
        code, out = check(config)
    else:
        # root reads any file: the check runs as nobody, in a child process that has
        # every module loaded already (the interpreter itself may be root's alone)
        assert check(config)[0] == 0
        nobody = pwd.getpwnam("nobody")
        ctx = multiprocessing.get_context("fork")
        results: multiprocessing.Queue[tuple[int, str]] = ctx.Queue()
        child = ctx.Process(
            target=_check_as, args=(nobody.pw_uid, nobody.pw_gid, str(config), results)
        )
        child.start()
        code, out = results.get(timeout=30)
        child.join(10)
    assert code == 2, out
    assert "agent.yaml:7: central.tls.key" in out and "permission denied" in out, out


def test_check_takes_a_renewal_a_stop_cut_short_as_run_does(folder: Path) -> None:
    """A stop between the renewal's two renames: the new key in place, the old certificate
    beside the new one's .new file. run finishes the swap and starts; check must not
    refuse the gateway for a key that is not its certificate's (a technician on site
    would enroll it again for nothing)."""
    ca = Authority(folder / "ca")
    (folder / "ca").chmod(0o755)
    ca.ca_file.chmod(0o644)
    old = ca.client(GW, stem="gateway", folder=folder)
    new = ca.client(GW, stem="renewed", folder=folder)
    new.key.replace(old.key)  # the key's rename happened, the certificate's did not
    new.cert.replace(folder / "gateway.crt.new")
    config = write_config(folder, TLS)
    code, out = check(config)
    assert code == 0, out
    assert (folder / "gateway.crt").read_bytes() != b"" and not (
        folder / "gateway.crt.new"
    ).exists()
