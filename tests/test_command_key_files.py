"""Key files that are not keys: the center's signing key (``fleet alarms … --key``) and a
gateway's ``central.command_key``. Each is one line naming the file and what it is, never
a traceback from cryptography or ``open``; the agent's is a config problem for ``check``
and ``run`` alike (``run`` died of it after ``check`` had said ok)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner

from cli.fleet import app as fleet_app
from edge_agent.contract.commands import generate_keys
from tests.support import agent_config, free_port, run_cli


def rsa_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture
def not_keys(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Files (and one directory) given as a key, with what the error must say."""
    (tmp_path / "garbage.key").write_text("garbage\n")
    (tmp_path / "rsa.key").write_bytes(rsa_pem())
    (tmp_path / "huge.key").write_bytes(b"-" * 100_000)
    (tmp_path / "a-dir").mkdir()
    generate_keys(tmp_path / "center.key")
    return {
        "garbage": (tmp_path / "garbage.key", "is not a PEM private key (Unable to load PEM file)"),
        "rsa": (tmp_path / "rsa.key", "is not an Ed25519 private key"),
        "huge": (tmp_path / "huge.key", "is larger than 65536 bytes: not a key file"),
        "dir": (tmp_path / "a-dir", ": cannot be read as a key (Is a directory)"),
        "device": (Path("/dev/null"), "is not a PEM private key"),
        "public": (tmp_path / "center.pub", "is not a PEM private key"),
    }


def test_a_signing_key_that_is_not_one_is_a_one_line_error(
    not_keys: dict[str, tuple[Path, str]],
) -> None:
    for name, (key, says) in not_keys.items():
        args = ["alarms", "ack", "d/r", "-g", "gw-1", "--key", str(key)]
        result = CliRunner().invoke(fleet_app, [*args, "--broker", "mqtt://127.0.0.1:1"])
        assert result.exit_code == 1, (name, result.output, result.exception)
        assert isinstance(result.exception, SystemExit), (name, result.exception)
        assert result.output.startswith(f"error: {key}"), (name, result.output)
        assert says in result.output and len(result.output.splitlines()) == 1, result.output


def test_a_command_key_that_is_not_one_is_a_config_problem_for_check_and_run(
    tmp_path: Path,
) -> None:
    key = tmp_path / "center.pub"
    key.write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    config = tmp_path / "agent.yaml"
    text = agent_config(
        gateway="gw-1",
        broker_url=f"mqtt://127.0.0.1:{free_port()}",
        outbox=tmp_path / "outbox.db",
        devices_yaml="  []\n",
    )
    config.write_text(text.replace("central: {", f"central: {{command_key: '{key}', "))
    for command in ("check", "run"):
        out = run_cli("edge-agent", command, "-c", str(config), timeout=30)
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        # the host pass names the line of central.command_key
        assert re.search(
            rf"{re.escape(str(config))}:\d+: central\.command_key: {re.escape(str(key))} is not "
            "a PEM public key",
            out.stderr,
        ), out.stderr
        assert "Traceback" not in out.stderr
    assert not (tmp_path / "outbox.db").exists()  # run stopped before anything was made


def test_central_run_refuses_a_signing_key_that_is_not_one_in_one_line(
    tmp_path: Path, not_keys: dict[str, tuple[Path, str]]
) -> None:
    """``fleet central run --key`` signs every ack with it: a file that is not the
    center's private key stops the start, before a store is made or a broker is tried."""
    db = tmp_path / "central.db"
    for name in ("garbage", "public", "dir"):
        key, says = not_keys[name]
        args = ["central", "run", "--key", str(key), "--db", str(db)]
        out = run_cli("fleet", *args, "--broker", "mqtt://127.0.0.1:1", timeout=30)
        assert out.returncode == 1, (name, out.stdout, out.stderr)
        assert out.stderr.startswith(f"error: {key}") and says in out.stderr, out.stderr
        assert len(out.stderr.splitlines()) == 1, out.stderr
    assert not db.exists()


def test_check_warns_that_acks_are_unauthenticated_without_a_command_key(
    tmp_path: Path,
) -> None:
    generate_keys(tmp_path / "center.key")
    config = tmp_path / "agent.yaml"
    text = agent_config(
        gateway="gw-1",
        broker_url=f"mqtt://127.0.0.1:{free_port()}",
        outbox=tmp_path / "outbox.db",
        devices_yaml="  []\n",
    )
    config.write_text(text)
    out = run_cli("edge-agent", "check", "-c", str(config), timeout=30)
    assert out.returncode == 0, out.stderr
    assert ": ok - gateway gw-1" in out.stdout
    assert re.fullmatch(
        rf"warning: {re.escape(str(config))}:2: central: no command_key: commands are refused, "
        r"and acks are not authenticated \(.*\)\n",
        out.stderr,
    ), out.stderr
    keyed = text.replace("central: {", f"central: {{command_key: '{tmp_path / 'center.pub'}', ")
    config.write_text(keyed)
    out = run_cli("edge-agent", "check", "-c", str(config), timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "", out.stderr
