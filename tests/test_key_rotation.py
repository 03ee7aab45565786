"""``fleet keys rotate``: the center's signing key replaced while a real agent runs on, with
no enrollment again. Between the two steps the agent holds both public keys; acks and
commands signed by either are taken, and after ``--forget-old`` only the new key's."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from edge_agent.contract.commands import load_public_keys
from tests.support import Agent, Broker, Central, ThreadedDevice, run_cli, stored_readings, wait_for
from tests.test_fleet_cmd import config, detector  # noqa: F401 (a fixture)

pytestmark = pytest.mark.hil
GW = "rot-1"


def rotate(key: Path, *args: str) -> tuple[int, str]:
    out = run_cli("fleet", "keys", "rotate", "--key", str(key), *args)
    return out.returncode, out.stdout + out.stderr


def ping(broker: Broker, db: Path, key: Path) -> dict[str, object]:
    out = run_cli(
        "fleet", "cmd", GW, "ping", "--timeout", "3", "--db", str(db), "--broker", broker.url,
        "--key", str(key), "--json",
    )  # fmt: skip
    (result,) = json.loads(out.stdout)
    return dict(result)


def restarted(agent: Agent, broker: Broker, db: Path, key: Path) -> None:
    """The agent started again, and answering commands (subscribed again)."""
    agent.stop()
    agent.start()
    wait_for(lambda: ping(broker, db, key)["result"] != "timeout", 30, what="the agent back")


def test_the_key_rotates_in_two_steps_while_the_gateway_keeps_its_enrollment(
    tmp_path: Path,
    mqtt_broker: Broker,
    detector: ThreadedDevice,  # noqa: F811
) -> None:
    key = tmp_path / "center.key"
    assert run_cli("fleet", "keys", "init", "--key", str(key)).returncode == 0
    old_private = key.read_bytes()
    gw_dir = tmp_path / GW
    gw_dir.mkdir()
    trusted = gw_dir / "command.pub"  # the gateway's own copy of the center's key(s)
    trusted.write_bytes(key.with_suffix(".pub").read_bytes())
    text = config(gw_dir, GW, mqtt_broker.url, detector.port, trusted)
    central = Central(tmp_path, mqtt_broker.url, key=key).start()
    agent = Agent(gw_dir, text).start()
    try:
        store = central.store()
        try:
            wait_for(lambda: stored_readings(store, GW), 20, what="readings, signed acks")
        finally:
            store.close()
        assert ping(mqtt_broker, central.db, key)["result"] == "ok"

        # step 1: a new key beside the old; .pub holds both, and the gateway gets it
        rc, out = rotate(key)
        assert rc == 0, out
        next_key = key.with_name("center.key.next")
        assert stat.S_IMODE(next_key.stat().st_mode) == 0o600
        assert len(load_public_keys(key.with_suffix(".pub"))) == 2
        assert rotate(key)[0] == 1  # one rotation at a time
        trusted.write_bytes(key.with_suffix(".pub").read_bytes())
        restarted(agent, mqtt_broker, central.db, key)  # as a config update would
        # both keys sign commands it takes
        assert ping(mqtt_broker, central.db, key)["result"] == "ok"
        assert ping(mqtt_broker, central.db, next_key)["result"] == "ok"

        # step 2: the new key signs, acks included (the center restarted with it)
        rc, out = rotate(key, "--finish")
        assert rc == 0, out
        assert key.read_bytes() != old_private
        assert key.with_name("center.key.old").read_bytes() == old_private
        central.stop()
        central.start()
        store = central.store()
        try:
            count = len(stored_readings(store, GW, limit=None))
            wait_for(
                lambda: len(stored_readings(store, GW, limit=None)) > count + 5,
                20,
                what="readings stored and acked with the new key",
            )
        finally:
            store.close()
        assert "not the center's" not in agent.output()  # no ack of the new key refused
        assert ping(mqtt_broker, central.db, key)["result"] == "ok"

        # forgetting the old key: .pub holds the new one alone; a gateway given it takes
        # nothing signed by the old key any more
        rc, out = rotate(key, "--forget-old")
        assert rc == 0, out
        assert not key.with_name("center.key.old").exists()
        assert len(load_public_keys(key.with_suffix(".pub"))) == 1
        trusted.write_bytes(key.with_suffix(".pub").read_bytes())
        restarted(agent, mqtt_broker, central.db, key)
        old = tmp_path / "old.key"
        old.write_bytes(old_private)
        old.chmod(0o600)
        assert ping(mqtt_broker, central.db, old)["result"] == "refused"
        assert ping(mqtt_broker, central.db, key)["result"] == "ok"
    finally:
        agent.stop()
        central.stop()


def test_rotate_refuses_what_it_cannot_do_and_changes_nothing(tmp_path: Path) -> None:
    key = tmp_path / "center.key"
    rc, out = rotate(key)
    assert rc == 1 and "fleet keys init" in out and "Traceback" not in out, out
    assert run_cli("fleet", "keys", "init", "--key", str(key)).returncode == 0
    pub = key.with_suffix(".pub").read_bytes()
    rc, out = rotate(key, "--finish")
    assert rc == 1 and "no rotation under way" in out, out
    assert key.with_suffix(".pub").read_bytes() == pub


def test_forget_old_alone_does_not_finish_a_rotation_the_gateways_have_not_got(
    tmp_path: Path,
) -> None:
    """--forget-old after a rotation cleans up the old key; while one is only begun, it
    would make the new key sign alone at once, which the gateways do not know yet."""
    key = tmp_path / "center.key"
    assert run_cli("fleet", "keys", "init", "--key", str(key)).returncode == 0
    current = key.read_bytes()
    assert rotate(key)[0] == 0
    both = key.with_suffix(".pub").read_bytes()
    rc, out = rotate(key, "--forget-old")
    assert rc == 1 and "--finish" in out, out
    assert key.read_bytes() == current
    assert key.with_suffix(".pub").read_bytes() == both
    # with --finish it is asked for: both steps at once
    rc, out = rotate(key, "--finish", "--forget-old")
    assert rc == 0, out
    assert len(load_public_keys(key.with_suffix(".pub"))) == 1


def test_a_finish_cut_between_its_renames_is_finished_by_finish_again(tmp_path: Path) -> None:
    """A stop between KEY -> KEY.old and KEY.next -> KEY leaves no KEY: finish again puts
    the new key in place, and does not send the operator to fleet keys init (a third key,
    which no gateway holds)."""
    key = tmp_path / "center.key"
    assert run_cli("fleet", "keys", "init", "--key", str(key)).returncode == 0
    assert rotate(key)[0] == 0
    new = key.with_name("center.key.next").read_bytes()
    key.replace(key.with_name("center.key.old"))  # the first rename, then the stop
    rc, out = rotate(key, "--finish")
    assert rc == 0 and "fleet keys init" not in out, out
    assert key.read_bytes() == new
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not key.with_name("center.key.next").exists()


def test_finish_refuses_a_new_key_the_public_file_does_not_hold(tmp_path: Path) -> None:
    """A stop in the first step after the new key was written and before KEY.pub was: the
    gateways were never given the new key, and finish would make it sign."""
    key = tmp_path / "center.key"
    assert run_cli("fleet", "keys", "init", "--key", str(key)).returncode == 0
    pub = key.with_suffix(".pub").read_bytes()
    current = key.read_bytes()
    assert rotate(key)[0] == 0
    key.with_suffix(".pub").write_bytes(pub)  # as it was before the first step wrote it
    rc, out = rotate(key, "--finish")
    assert rc == 1 and "center.pub" in out, out
    assert key.read_bytes() == current
    # the first step again completes it: both public keys, and then finish works
    rc, out = rotate(key)
    assert rc == 0, out
    assert len(load_public_keys(key.with_suffix(".pub"))) == 2
    assert rotate(key, "--finish")[0] == 0
