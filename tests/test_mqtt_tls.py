"""The agent, the central service and ``fleet`` over mqtts:// to a real Mosquitto that
requires a client certificate, every certificate made here by a CA of the test; and what
each of them is refused with: a CA that did not sign the broker's certificate, no client
certificate, or one from another CA."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from mqttlink.session import Lost, Session, SessionError, Unreachable
from mqttlink.url import Broker as BrokerSettings
from mqttlink.url import BrokerUrl
from tests.pki import Authority, Issued
from tests.rig import GW, devices_yaml
from tests.support import Agent, Broker, Central, ThreadedDevice, run_cli, stored_readings, wait_for

pytestmark = pytest.mark.hil


class Pki:
    def __init__(self, folder: Path) -> None:
        self.ca = Authority(folder / "ca")
        self.server = self.ca.server()
        self.gateway = self.ca.client(GW)
        self.center = self.ca.client("center")
        self.rogue = Authority(folder / "rogue", "Someone else's CA")
        self.rogue_client = self.rogue.client(GW)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[Broker]:
    """Mosquitto with one TLS listener that requires a client certificate from our CA."""
    d = tmp_path / "broker"
    d.mkdir()
    broker = Broker(
        d,
        extra_conf=(
            f"cafile {pki.ca.ca_file}\n"
            f"certfile {pki.server.cert}\n"
            f"keyfile {pki.server.key}\n"
            "require_certificate true\n" + readable_by_broker()
        ),
    ).start()
    yield broker
    broker.stop()


def readable_by_broker() -> str:
    """Mosquitto started as root drops to its own user, which cannot read files in a test's
    private folder: keep root (outside root, the setting does nothing)."""
    return "user root\n" if os.geteuid() == 0 else ""


def url(broker: Broker) -> str:
    return f"mqtts://127.0.0.1:{broker.port}"


def settings(broker: Broker, ca: Path | None, client: Issued | None) -> BrokerSettings:
    return BrokerSettings(
        url=BrokerUrl.parse(url(broker)),
        ca_file=ca,
        cert_file=client.cert if client else None,
        key_file=client.key if client else None,
    )


def test_a_session_connects_only_with_the_right_ca_and_a_client_certificate(
    tls_broker: Broker, pki: Pki
) -> None:
    good = Session(settings(tls_broker, pki.ca.ca_file, pki.gateway), name="good")
    good.open(10)
    try:
        assert good.connected
    finally:
        good.close()
    # the broker's certificate checked against the system's CAs, or another CA: refused
    for ca in (None, pki.rogue.ca_file):
        with pytest.raises(Unreachable, match="CERTIFICATE_VERIFY_FAILED"):
            Session(settings(tls_broker, ca, pki.gateway), name="bad-ca").open(10)
    # the right CA, but no client certificate, or one another CA signed: the broker hangs up
    for client in (None, pki.rogue_client):
        with pytest.raises((Unreachable, Lost)):
            Session(settings(tls_broker, pki.ca.ca_file, client), name="bad-cert").open(10)


def test_the_server_name_is_checked(tls_broker: Broker, pki: Pki) -> None:
    """A certificate for 127.0.0.1 and localhost does not pass for another name."""
    other = Authority(pki.ca.folder.parent / "named")
    issued = other.issue(
        "wrong-name", ExtendedKeyUsageOID.SERVER_AUTH, [x509.DNSName("broker.example")]
    )
    d = pki.ca.folder.parent / "broker-wrong-name"
    d.mkdir()
    broker = Broker(
        d,
        extra_conf=f"cafile {other.ca_file}\ncertfile {issued.cert}\nkeyfile {issued.key}\n"
        + readable_by_broker(),
    ).start()
    try:
        with pytest.raises(Unreachable, match=r"IP address mismatch|hostname mismatch"):
            Session(settings(broker, other.ca_file, None), name="name-check").open(10)
    finally:
        broker.stop()


def agent_text(tmp: Path, broker: Broker, port: int, central: str, gw: str) -> str:
    return (
        f"gateway: {{id: {gw}, site: test bench}}\n"
        f"central: {{url: '{url(broker)}', keepalive_s: 2, {central}}}\n"
        f"outbox: {{path: '{tmp / 'outbox.db'}', ack_timeout_s: 2}}\n"
        "health: {interval_s: 1}\n"
        f"devices:\n{devices_yaml(port, 0.2)}"
    )


def test_agent_center_and_fleet_work_over_mqtts_and_are_refused_without_the_right_files(
    tmp_path: Path, tls_broker: Broker, pki: Pki, modbus_server: ThreadedDevice
) -> None:
    key = tmp_path / "keys" / "center.key"
    assert run_cli("fleet", "keys", "init", "--key", str(key)).returncode == 0
    tls_env = {
        "EDGEFLEET_BROKER_CA_FILE": str(pki.ca.ca_file),
        "EDGEFLEET_BROKER_CERT_FILE": str(pki.center.cert),
        "EDGEFLEET_BROKER_KEY_FILE": str(pki.center.key),
    }
    center_dir = tmp_path / "center"
    center_dir.mkdir()
    central = Central(center_dir, url(tls_broker), key=key)
    central.env.update(tls_env)
    # a second center with a client certificate from another CA: it never gets in
    rogue_dir = tmp_path / "rogue-center"
    rogue_dir.mkdir()
    rogue_center = Central(rogue_dir, url(tls_broker))
    rogue_center.env.update(
        {
            **tls_env,
            "EDGEFLEET_BROKER_CERT_FILE": str(pki.rogue_client.cert),
            "EDGEFLEET_BROKER_KEY_FILE": str(pki.rogue_client.key),
        }
    )
    # the gateway's files relative to its config file, as the agent resolves every path
    gw_dir = tmp_path / "gw"
    gw_dir.mkdir()
    for src, name in ((pki.ca.ca_file, "ca.pem"), (pki.gateway.cert, "gw.pem")):
        (gw_dir / name).write_bytes(src.read_bytes())
    (gw_dir / "gw.key").write_bytes(pki.gateway.key.read_bytes())
    files = "ca_file: ca.pem, cert_file: gw.pem, key_file: gw.key"
    agent = Agent(
        gw_dir,
        agent_text(
            gw_dir,
            tls_broker,
            modbus_server.port,
            f"{files}, command_key: '{key.with_suffix('.pub')}'",
            GW,
        ),
    )
    # a gateway that trusts another CA: it never connects, and says why
    lost_dir = tmp_path / "gw-wrong-ca"
    lost_dir.mkdir()
    lost_cert = pki.ca.client("gw-wrong-ca", folder=lost_dir)  # its own: the CA is what is wrong
    lost = Agent(
        lost_dir,
        agent_text(
            lost_dir,
            tls_broker,
            modbus_server.port,
            f"ca_file: '{pki.rogue.ca_file}', cert_file: '{lost_cert.cert}', "
            f"key_file: '{lost_cert.key}'",
            "gw-wrong-ca",
        ),
    )
    checked = run_cli("edge-agent", "check", "-c", str(agent.config))
    assert checked.returncode == 0, checked.stderr
    try:
        central.start()
        rogue_center.start()
        agent.start()
        lost.start()
        store = central.store()
        try:
            wait_for(
                lambda: stored_readings(store, GW, "tank-1", "level", None, 5),
                30,
                what="a reading from the gateway in the center's store, over mqtts",
            )
        finally:
            store.close()

        def fleet_ack(*extra: str, env: dict[str, str] | None = None) -> dict[str, object]:
            out = run_cli(
                "fleet",
                "alarms",
                "ack",
                "tank-1/no.such.alarm",
                "-g",
                GW,
                "--broker",
                url(tls_broker),
                "--key",
                str(key),
                "--json",
                *extra,
                env=env,
            )
            return {"rc": out.returncode, "out": out.stdout, "err": out.stderr}

        # the session holds over TLS: publishes from the agent's event loop must not write
        # the SSL socket beside paho's own thread (they tore it down within a second of
        # every connect, and a command could find the gateway away)
        time.sleep(2.5)
        assert "lost the broker" not in (gw_dir / "agent.log").read_text()

        # the command reaches the gateway over mqtts, and its reply comes back
        ok = fleet_ack(env=tls_env)
        assert ok["rc"] == 1, ok  # there is no such alarm: the gateway says so
        assert "error" in json.loads(str(ok["out"])), ok
        # without the CA (system CAs only), or without a client certificate: refused
        no_ca = fleet_ack("--cert-file", str(pki.center.cert), "--key-file", str(pki.center.key))
        assert no_ca["rc"] == 1 and "CERTIFICATE_VERIFY_FAILED" in str(no_ca["err"]), no_ca
        no_cert = fleet_ack("--ca-file", str(pki.ca.ca_file))
        assert no_cert["rc"] == 1 and str(no_cert["out"]) == "", no_cert
        assert "broker mqtts://" in str(no_cert["err"]), no_cert

        wait_for(
            lambda: "CERTIFICATE_VERIFY_FAILED" in lost.output(),
            10,
            what="the gateway with the wrong CA saying why",
        )
        store = central.store()
        try:
            assert stored_readings(store, "gw-wrong-ca", None, None, None, 5) == []
        finally:
            store.close()
        rogue_store = rogue_center.store()
        try:
            assert stored_readings(rogue_store, None, None, None, None, 5) == []
        finally:
            rogue_store.close()
        assert "retrying" in rogue_center.output(), rogue_center.output()
    finally:
        lost.stop()
        agent.stop()
        rogue_center.stop()
        central.stop()


def test_a_session_that_cannot_read_its_files_says_which(tmp_path: Path) -> None:
    settings = BrokerSettings(
        url=BrokerUrl.parse("mqtts://127.0.0.1:9"), ca_file=tmp_path / "missing-ca.pem"
    )
    with pytest.raises(SessionError, match=r"cannot start: ca_file .*missing-ca.pem"):
        Session(settings).open(5)
