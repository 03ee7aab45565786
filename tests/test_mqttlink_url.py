"""The broker URL and the broker settings validate themselves; the agent's ``central``
section, the MQTT driver's section and ``fleet``'s options all build the same value."""

from __future__ import annotations

import ast
import ssl
from pathlib import Path

import pytest
import typer

from cli.broker_options import broker_settings
from drivers.mqtt.config import MqttConnection
from edge_agent.config import ConfigError, load_config
from mqttlink.url import Broker, BrokerFileError, BrokerUrl

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("mqtt://broker.local", ("mqtt", "broker.local", 1883)),
        ("mqtts://broker.local", ("mqtts", "broker.local", 8883)),
        ("mqtt://10.0.0.7:1884", ("mqtt", "10.0.0.7", 1884)),
        ("mqtts://[::1]:8884/", ("mqtts", "::1", 8884)),
    ],
)
def test_good_urls(url: str, parsed: tuple[str, str, int]) -> None:
    got = BrokerUrl.parse(url)
    assert (got.scheme, got.host, got.port) == parsed
    assert BrokerUrl.parse(str(got)) == got  # str() is a URL that parses to the same


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://broker", "expected mqtt://host"),
        ("broker:1883", "expected mqtt://host"),
        ("mqtt://", "expected mqtt://host"),
        ("mqtt://broker:0", "port must be a number from 1 to 65535"),
        ("mqtt://broker:65536", "port must be a number from 1 to 65535"),
        ("mqtt://broker:x", "port must be a number from 1 to 65535"),
        ("mqtt://user:secret@broker", "not the URL"),
        ("mqtt://user@broker", "not the URL"),
        ("mqtt://broker/edgefleet", "no path"),
        ("mqtt://broker?tls=1", "no path"),
    ],
)
def test_bad_urls_are_refused_with_a_reason(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BrokerUrl.parse(url)


def test_a_credential_in_the_url_is_not_echoed() -> None:
    with pytest.raises(ValueError) as caught:
        BrokerUrl.parse("mqtt://user:hunter2@broker")
    assert "credentials" in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"url": "mqtt://b", "ca_file": Path("ca.pem")}, "ca_file needs an mqtts:// url"),
        ({"url": "mqtt://b", "cert_file": Path("c"), "key_file": Path("k")}, "needs an mqtts"),
        ({"url": "mqtts://b", "cert_file": Path("c")}, "cert_file and key_file go together"),
        ({"url": "mqtts://b", "key_file": Path("k")}, "cert_file and key_file go together"),
        ({"url": "mqtt://b", "password_file": Path("p")}, "password_file needs a username"),
        ({"url": "mqtt://b", "username": ""}, "username cannot be empty"),
    ],
)
def test_settings_that_do_not_fit_together_are_refused(
    fields: dict[str, object], message: str
) -> None:
    url = BrokerUrl.parse(str(fields.pop("url")))
    with pytest.raises(ValueError, match=message):
        Broker(url=url, **fields)  # type: ignore[arg-type]


def test_the_password_is_read_from_its_file_and_never_kept_or_shown(tmp_path: Path) -> None:
    pw = tmp_path / "broker.pass"
    pw.write_text("  s3cret-pass\n")
    broker = Broker(url=BrokerUrl.parse("mqtt://b"), username="gw-1", password_file=pw)
    assert broker.password() == "s3cret-pass"
    assert "s3cret" not in repr(broker) and "s3cret" not in str(broker)
    pw.write_text("rotated\n")  # read again at the next connect
    assert broker.password() == "rotated"
    assert Broker.plain("mqtt://b").password() is None


def test_missing_files_are_named_with_their_key(tmp_path: Path) -> None:
    missing = Broker(
        url=BrokerUrl.parse("mqtts://b"),
        ca_file=tmp_path / "ca.pem",
        cert_file=tmp_path / "gw.pem",
        key_file=tmp_path / "gw.key",
        username="gw-1",
        password_file=tmp_path / "gw.pass",
    )
    assert [key for key, _ in missing.missing_files()] == [
        "ca_file",
        "cert_file",
        "key_file",
        "password_file",
    ]
    with pytest.raises(BrokerFileError, match=r"password_file .*gw.pass: no such file") as err:
        missing.password()
    assert err.value.key == "password_file"
    with pytest.raises(BrokerFileError, match=r"ca_file .*ca.pem") as err:
        missing.ssl_context()
    assert err.value.key == "ca_file"
    (tmp_path / "ca.pem").write_text("not a certificate")
    with pytest.raises(BrokerFileError, match="ca_file"):
        missing.ssl_context()


def test_a_tls_context_checks_the_server_name_and_its_certificate() -> None:
    context = Broker.plain("mqtts://broker.example").ssl_context()
    assert context is not None
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert Broker.plain("mqtt://broker.example").ssl_context() is None


def write(tmp_path: Path, central: str) -> Path:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"gateway: {{id: gw-1}}\ncentral: {{{central}}}\n")
    return cfg


def test_the_agents_central_section_builds_the_settings_with_paths_beside_the_config(
    tmp_path: Path,
) -> None:
    cfg = write(
        tmp_path,
        "url: 'mqtts://c.example:8884', ca_file: tls/ca.pem, cert_file: tls/gw.pem, "
        "key_file: tls/gw.key, username: gw-1, password_file: gw.pass",
    )
    broker = load_config(cfg).config.central.broker
    assert broker == Broker(
        url=BrokerUrl("mqtts", "c.example", 8884),
        ca_file=tmp_path / "tls" / "ca.pem",
        cert_file=tmp_path / "tls" / "gw.pem",
        key_file=tmp_path / "tls" / "gw.key",
        username="gw-1",
        password_file=tmp_path / "gw.pass",
    )


@pytest.mark.parametrize(
    ("central", "field", "message"),
    [
        ("url: 'mqtt://c', ca_file: ca.pem", "central.ca_file", "needs an mqtts:// url"),
        ("url: 'mqtts://c', cert_file: gw.pem", "central.cert_file", "go together"),
        ("url: 'mqtt://u:p@c'", "central.url", "not the URL"),
        ("url: 'mqtt://c:70000'", "central.url", "1 to 65535"),
        ("password_file: p", "central.username", "needs a username"),
    ],
)
def test_the_agents_central_section_refuses_what_would_not_work(
    tmp_path: Path, central: str, field: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, central))
    assert any(p.field == field and message in p.message for p in err.value.problems), [
        str(p) for p in err.value.problems
    ]


def test_the_mqtt_driver_builds_the_same_settings() -> None:
    conn = MqttConnection.model_validate(
        {
            "url": "mqtts://127.0.0.1",
            "topic": "s/+",
            "ca_file": "/etc/ca.pem",
            "username": "u",
            "password_file": "/etc/p",
        }
    )
    assert conn.broker == Broker(
        url=BrokerUrl("mqtts", "127.0.0.1", 8883),
        ca_file=Path("/etc/ca.pem"),
        username="u",
        password_file=Path("/etc/p"),
    )


def test_fleet_options_build_the_settings_and_name_the_option_that_is_wrong(
    tmp_path: Path,
) -> None:
    ca = tmp_path / "ca.pem"
    assert broker_settings("mqtts://c", ca_file=ca) == Broker(
        url=BrokerUrl.parse("mqtts://c"), ca_file=ca
    )
    with pytest.raises(typer.BadParameter) as bad_url:
        broker_settings("tcp://c")
    assert bad_url.value.param_hint == "--broker"
    with pytest.raises(typer.BadParameter) as bad_tls:
        broker_settings("mqtt://c", ca_file=ca)
    assert bad_tls.value.param_hint == "--ca-file"


def test_only_the_session_module_imports_paho() -> None:
    """Tests may play a stock client, and bench may measure bare paho on purpose."""
    importers = []
    for package in ("edge_agent", "drivers", "central", "cli", "mqttlink", "scripts"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                if any(n == "paho" or n.startswith("paho.") for n in names):
                    importers.append(str(path.relative_to(ROOT)))
    assert sorted(set(importers)) == ["mqttlink/session.py"]
