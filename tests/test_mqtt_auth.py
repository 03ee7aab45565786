"""Username and password, each read from its file: a real Mosquitto that lets no one in
anonymously (``password_file`` made with ``mosquitto_passwd -b``) takes the agent, the
central service and ``fleet`` with the right password, and refuses each with a wrong one."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqttlink.session import Refused, Session
from mqttlink.url import Broker as BrokerSettings
from mqttlink.url import BrokerUrl
from tests.rig import GW, devices_yaml
from tests.support import (
    Agent,
    Broker,
    Central,
    ThreadedDevice,
    run_cli,
    secret,
    stored_readings,
    wait_for,
)

pytestmark = pytest.mark.hil

USERS = {GW: secret("gw-secret"), "center": secret("center-secret")}
WRONG = secret("not-the-password")


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[Broker]:
    passwd = shutil.which("mosquitto_passwd")
    assert passwd is not None, "mosquitto_passwd is missing (apt-get install mosquitto)"
    d = tmp_path / "broker"
    d.mkdir()
    users = d / "passwd"
    for name, password in USERS.items():
        create = ["-c"] if not users.exists() else []
        subprocess.run([passwd, *create, "-b", str(users), name, password], check=True)
    users.chmod(0o644)
    # the later allow_anonymous wins over the test broker's default (true)
    conf = f"allow_anonymous false\npassword_file {users}\nuser root\n"
    broker = Broker(d, extra_conf=conf).start()
    yield broker
    broker.stop()


def password_file(folder: Path, name: str, password: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pass"
    path.write_text(password + "\n")  # a trailing newline, as editors leave one
    return path


def test_a_session_with_a_wrong_password_is_refused(tmp_path: Path, auth_broker: Broker) -> None:
    def session(user: str | None, password: str) -> Session:
        pw = password_file(tmp_path / "s", "x", password) if user else None
        return Session(
            BrokerSettings(url=BrokerUrl.parse(auth_broker.url), username=user, password_file=pw)
        )

    good = session(GW, USERS[GW])
    good.open(10)
    good.close()
    with pytest.raises(Refused, match=r"refused the connection: (Not authorized|Bad user name)"):
        session(GW, "wrong").open(10)
    with pytest.raises(Refused, match="refused the connection"):
        session(None, "").open(10)  # anonymous


def test_agent_center_and_fleet_log_in_with_the_right_password_and_not_a_wrong_one(
    tmp_path: Path, auth_broker: Broker, modbus_server: ThreadedDevice
) -> None:
    key = tmp_path / "keys" / "center.key"
    assert run_cli("fleet", "keys", "init", "--key", str(key)).returncode == 0
    secrets = tmp_path / "secrets"
    center_pw = password_file(secrets, "center", USERS["center"])
    wrong_pw = password_file(secrets, "wrong", WRONG)

    center_dir = tmp_path / "center"
    center_dir.mkdir()
    central = Central(center_dir, auth_broker.url, key=key)
    central.args += ["--username", "center", "--password-file", str(center_pw)]
    wrong_dir = tmp_path / "wrong-center"
    wrong_dir.mkdir()
    wrong_center = Central(wrong_dir, auth_broker.url)
    wrong_center.args += ["--username", "center", "--password-file", str(wrong_pw)]

    def agent(folder: Path, gw: str, password: str) -> Agent:
        folder.mkdir()
        password_file(folder, "broker", password)  # beside the config: a relative password_file
        text = (
            f"gateway: {{id: {gw}}}\n"
            f"central: {{url: '{auth_broker.url}', keepalive_s: 2, username: {GW}, "
            f"password_file: broker.pass, command_key: '{key.with_suffix('.pub')}'}}\n"
            f"outbox: {{path: '{folder / 'outbox.db'}', ack_timeout_s: 2}}\n"
            "health: {interval_s: 1}\n"
            f"devices:\n{devices_yaml(modbus_server.port, 0.2)}"
        )
        return Agent(folder, text)

    good = agent(tmp_path / "gw", GW, USERS[GW])
    bad = agent(tmp_path / "gw-wrong", "gw-wrong", WRONG)
    try:
        central.start()
        wrong_center.start()
        good.start()
        bad.start()
        store = central.store()
        try:
            wait_for(
                lambda: stored_readings(store, GW, "tank-1", "level", None, 5),
                30,
                what="a reading of the gateway that logged in, in the center's store",
            )
        finally:
            store.close()

        def ack(password_file: Path) -> subprocess.CompletedProcess[str]:
            return run_cli(
                "fleet",
                "alarms",
                "ack",
                "tank-1/no.such.alarm",
                "-g",
                GW,
                "--broker",
                auth_broker.url,
                "--key",
                str(key),
                "--json",
                env={
                    "EDGEFLEET_BROKER_USERNAME": "center",
                    "EDGEFLEET_BROKER_PASSWORD_FILE": str(password_file),
                },
            )

        answered = ack(center_pw)  # the gateway answers: there is no such alarm
        assert answered.returncode == 1 and "error" in json.loads(answered.stdout), answered
        refused = ack(wrong_pw)
        assert refused.returncode == 1 and refused.stdout == "", refused
        assert "refused the connection" in refused.stderr, refused.stderr
        assert WRONG not in refused.stderr + refused.stdout

        wait_for(
            lambda: "refused the connection" in bad.output(),
            10,
            what="the gateway with a wrong password saying why",
        )
        wait_for(
            lambda: "refused the connection" in wrong_center.output(),
            10,
            what="the center with a wrong password saying why",
        )
        for proc in (bad, wrong_center, good, central):
            assert WRONG not in proc.output()
            assert USERS[GW] not in proc.output() and USERS["center"] not in proc.output()
        wrong_store = wrong_center.store()
        try:
            assert stored_readings(wrong_store, None, None, None, None, 5) == []
        finally:
            wrong_store.close()
        store = central.store()
        try:
            assert stored_readings(store, "gw-wrong", None, None, None, 5) == []
        finally:
            store.close()
    finally:
        bad.stop()
        good.stop()
        wrong_center.stop()
        central.stop()


def test_fleet_refuses_a_password_file_that_is_not_there(tmp_path: Path) -> None:
    out = run_cli(
        "fleet",
        "alarms",
        "ack",
        "a/b",
        "-g",
        GW,
        "--username",
        "center",
        "--password-file",
        str(tmp_path / "missing.pass"),
    )
    assert out.returncode == 2 and "--password-file" in out.stderr, out.stderr
