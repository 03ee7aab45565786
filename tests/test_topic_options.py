"""``-g`` and ``--topic-root`` become topic levels: one that cannot be is a usage error
(exit 2) naming the option, before the broker is connected to. It was a ``TopicError``
traceback after connecting (``fleet alarms ack det-1/smoke.alarm -g 'demo-0002/#'``)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.fleet import app as fleet_app

NOWHERE = ("--broker", "mqtt://127.0.0.1:1")  # refused at once: reaching it would say so


@pytest.mark.parametrize("gateway", ["demo-0002/#", "+", "gw 1", "gw-1\n", ""])
def test_a_gateway_id_that_cannot_be_a_topic_level_is_a_usage_error(gateway: str) -> None:
    for args in (
        ("alarms", "ack", "det-1/smoke.alarm", "-g", gateway, *NOWHERE),
        ("alarms", "shelve", "det-1/smoke.alarm", "-g", gateway, "--reason", "r", *NOWHERE),
    ):
        result = CliRunner().invoke(fleet_app, list(args))
        assert result.exit_code == 2, result.output
        assert "Invalid value for '--gateway'" in result.output
        assert "must be 1-64 letters, digits" in result.output
        assert "unreachable" not in result.output


@pytest.mark.parametrize("root", ["edgefleet/#", "a/+/b", "a//b", "$SYS"])
def test_a_topic_root_with_wildcards_is_a_usage_error(root: str) -> None:
    args = ["alarms", "reset", "d/r", "-g", "gw-1", "--topic-root", root, *NOWHERE]
    result = CliRunner().invoke(fleet_app, args)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--topic-root'" in result.output
    assert "must be levels without wildcards" in result.output
    assert "unreachable" not in result.output


@pytest.mark.parametrize(("option", "length", "most"), [("--by", 65, 64), ("--reason", 513, 512)])
def test_a_text_longer_than_a_gateway_keeps_is_a_usage_error(
    option: str, length: int, most: int
) -> None:
    """``--by`` and ``--reason`` are bounded as the gateway bounds them; a longer one was
    sent, refused there (or dropped by the broker past its packet size) after the wait."""
    args = ["alarms", "shelve", "d/r", "-g", "gw-1", "--reason", "r", *NOWHERE]
    result = CliRunner().invoke(fleet_app, [*args, option, "x" * length])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output
    assert f"{length} characters; a gateway keeps at most {most}" in result.output
    assert "unreachable" not in result.output
