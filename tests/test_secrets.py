"""No secret in a message, a ``repr`` or a log (issue 14): a URL refused for holding a
password is quoted with it masked; values that hold a key or a token leave it out of
their ``repr``. The session-wide check of every log and store is ``tests.secret_scan``."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from central.store import StoreError, open_store
from drivers.opcua import OpcUaConnection
from edge_agent.config import ConfigError, load_config
from edge_agent.contract.csr import EnrollRequest
from edge_agent.contract.enrollment import FILES, KEY_FILE, Bundle
from mqttlink.url import BrokerUrl, shown_url
from tests.support import Broker, PgCentral, run_cli, secret

PW = secret("hunter2-5e61b0")
KEY = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIFake\n-----END EC PRIVATE KEY-----\n"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"mqtt://gw-1:{PW}@broker:1883", "mqtt://gw-1:***@broker:1883"),
        (f"mqtts://:{PW}@broker", "mqtts://:***@broker"),
        ("mqtt://gw-1@broker", "mqtt://gw-1@broker"),  # a user name is not a secret
        ("mqtt://broker:1883", "mqtt://broker:1883"),
        (f"postgresql://ops:p@ss/{PW}@db:5432/c", "postgresql://ops:***@db:5432/c"),
        (
            f"postgresql://ops@db/c?sslmode=require&password={PW}",
            "postgresql://ops@db/c?sslmode=require&password=***",
        ),
        (f"PostgreSQL://ops:{PW}@[::1/c", "PostgreSQL://ops:***@[::1/c"),  # unparseable
        ("central.db", "central.db"),
    ],
)
def test_shown_url_masks_the_password_wherever_it_is(url: str, shown: str) -> None:
    assert shown_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        f"mqtt://gw-1:{PW}@broker:1883",
        f"mqtt://gw-1:{PW}@broker:99999",
        f"mqtt://gw-1:{PW}@",
        f"mqtt://gw-1:{PW}@[::1",
        f"http://gw-1:{PW}@broker",
        f"mqtt://gw-1:{PW}@broker/path",
    ],
)
def test_a_broker_url_refused_never_quotes_its_password(url: str) -> None:
    with pytest.raises(ValueError, match="gw-1:\\*\\*\\*@") as caught:
        BrokerUrl.parse(url)
    assert PW not in str(caught.value)


def test_an_agent_config_with_a_password_in_its_url_is_refused_without_it(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"gateway: {{id: gw-1}}\ncentral: {{url: 'mqtt://gw-1:{PW}@broker'}}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(cfg)
    assert "put credentials in username" in str(caught.value) and PW not in str(caught.value)


def test_an_opcua_endpoint_with_a_password_is_refused_without_it() -> None:
    with pytest.raises(ValidationError) as caught:
        OpcUaConnection.model_validate({"endpoint": f"opc.tcp://ops:{PW}@plc:4840"})
    (error,) = caught.value.errors()
    assert "ops:***@plc" in error["msg"] and PW not in error["msg"]


def test_fleet_refuses_a_broker_url_with_a_password_without_showing_it(tmp_path: Path) -> None:
    out = run_cli(
        "fleet",
        "provision",
        "gw-1",
        "--ca-dir",
        str(tmp_path / "ca"),
        "--db",
        str(tmp_path / "central.db"),
        "--broker",
        f"mqtts://gw-1:{PW}@broker:8883",
    )
    assert out.returncode == 2 and "gw-1:***@broker" in out.stderr, out.stderr
    assert PW not in out.stdout + out.stderr


@pytest.mark.parametrize("scheme", ["PostgreSQL", "POSTGRES", "mysql"])
def test_a_store_url_of_another_scheme_is_refused_not_made_a_file(
    scheme: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taken for an SQLite path, it was made into folders, and its errors (on the terminal
    and in the central log) quoted the password."""
    monkeypatch.chdir(tmp_path)
    url = f"{scheme}://ops:{PW}@127.0.0.1:1/central"
    with pytest.raises(StoreError, match="is not a store address") as caught:
        open_store(url)
    assert PW not in str(caught.value) and "ops:***@127.0.0.1" in str(caught.value)
    assert list(tmp_path.iterdir()) == []
    out = run_cli("fleet", "gateways", "list", "--db", url)
    assert out.returncode == 1 and "is not a store address" in out.stderr, out.stderr
    assert PW not in out.stdout + out.stderr


def test_a_bundle_and_an_enrollment_request_keep_their_secrets_out_of_their_repr() -> None:
    bundle = Bundle("gw-1", "mqtts://broker:8883", {name: KEY for name in FILES})
    assert bundle.files[KEY_FILE] == KEY and "PRIVATE KEY" not in repr(bundle)
    assert "gw-1" in repr(bundle)
    token = secret("tok-3f0c9d1b2a7e4f60")
    request = EnrollRequest("gw-1", token, "0" * 32, "-----BEGIN CERTIFICATE REQUEST-----")
    assert request.token == token and token not in repr(request) and "gw-1" in repr(request)


@pytest.mark.hil
def test_a_store_password_from_the_environment_is_in_no_log_and_no_worker_command_line(
    tmp_path: Path, mqtt_broker: Broker, pg_url: str
) -> None:
    """The supervisor hands its workers its own command line and environment: a password
    given in ``EDGEFLEET_DB`` stays out of every ``ps``, and the log names the store
    without it. (The test server trusts loopback: the password is carried, never asked.)"""
    pw = secret("pg-pass-8c2e71d0")
    url = pg_url.replace("@", f":{pw}@", 1)
    central = PgCentral(tmp_path, mqtt_broker.url, url, "--workers", "2")
    at = central.args.index("--db")
    del central.args[at : at + 2]
    central.env["EDGEFLEET_DB"] = url
    central.start(sessions=4)
    try:
        pids = [central.proc.pid if central.proc else 0, *central.worker_pids().values()]
        assert len(pids) == 3
        for pid in pids:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert b"central" in argv and not any(pw.encode() in a for a in argv), argv
    finally:
        code = central.stop()
    out = central.output()
    assert code == 0 and out.count(f"store {pg_url.split(':', 1)[0]}://") >= 2, out
    assert pw not in out


def test_a_crash_of_either_program_shows_no_local_variables() -> None:
    """A traceback's locals could hold a password read from its file, a URL with one or a
    loaded key; older typer releases (pyproject.toml allows them) show them by default."""
    from cli.agent import app as agent_app  # noqa: PLC0415
    from cli.fleet import app as fleet_app  # noqa: PLC0415

    assert fleet_app.pretty_exceptions_show_locals is False
    assert agent_app.pretty_exceptions_show_locals is False
