"""The one duration parser, and the three places that read durations through it: the
config's ``Duration`` fields, ``fleet readings --since`` and ``fleet alarms shelve --for``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cli.durations import length_option, since_option
from cli.fleet import app as fleet_app
from edge_agent.config import ConfigError, parse_config
from edge_agent.durations import CALENDAR_HINT, DURATION_FORMS, LONGEST_HINT, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("12h", 43_200),
        ("7d", 604_800),
        ("2w", 1_209_600),
        ("1.5h", 5400),
        ("90", 90),  # no unit: seconds
        ("0.25", 0.25),
        (" 2 h ", 7200),
        ("0s", 0),
    ],
)
def test_the_forms_people_write(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "2x", "-5m", "1e3s", "2 hours", "1h30m", "five"])
def test_anything_else_is_refused_with_the_forms(text: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_duration(text)
    assert str(refused.value) == DURATION_FORMS
    assert DURATION_FORMS == "a duration: a number with s, m, h, d or w (90s, 15m, 12h, 7d, 2w)"


@pytest.mark.parametrize("text", ["2y", "1 year", "3mo", "0.5 Years", "6 months"])
def test_years_and_months_are_refused_with_a_hint_to_write_days(text: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_duration(text)
    assert str(refused.value) == f"{DURATION_FORMS}; {CALENDAR_HINT}"


def max_age(value: str) -> float:
    text = f"gateway: {{id: gw-1}}\noutbox: {{max_age: {value}}}\n"
    return parse_config(text, "agent.yaml", Path(".")).outbox.max_age


def test_the_config_reads_durations_and_keeps_yaml_numbers_as_seconds() -> None:
    assert max_age("7d") == 604_800
    assert max_age("'90'") == 90  # text without a unit: seconds
    assert max_age("3600") == 3600  # a YAML number: seconds already
    with pytest.raises(ConfigError) as bad:
        max_age("soon")
    assert [str(p) for p in bad.value.problems] == [
        f"agent.yaml:2: outbox.max_age: {DURATION_FORMS}"
    ]
    with pytest.raises(ConfigError) as zero:
        max_age("0s")
    assert "outbox.max_age: Input should be greater than 0" in str(zero.value)


def test_since_is_a_time_and_for_is_a_length() -> None:
    before = time.time()
    since = since_option("10m")
    assert since is not None and before - 600 <= since <= time.time() - 600
    assert since_option(None) is None
    assert length_option("2h", "--for") == 7200


def test_a_wrong_value_names_the_option_it_was_given_to() -> None:
    with pytest.raises(typer.BadParameter) as raised:
        length_option("a while", "--for")
    assert (
        raised.value.format_message()
        == f"Invalid value for --for: 'a while' is not {DURATION_FORMS}"
    )
    with pytest.raises(typer.BadParameter) as raised:
        since_option("soon")
    assert (
        raised.value.format_message()
        == f"Invalid value for --since: 'soon' is not {DURATION_FORMS}"
    )


@pytest.mark.parametrize("text", ["1" + "0" * 400, "36501d", "99999999999999999999w"])
def test_a_length_past_a_century_or_infinite_is_refused_with_the_longest(text: str) -> None:
    """400 digits read as infinity: a shelving for ever, which JSON cannot carry."""
    with pytest.raises(ValueError) as refused:
        parse_duration(text)
    assert str(refused.value) == f"{DURATION_FORMS}; {LONGEST_HINT}"
    assert parse_duration("36500d") == 36_500 * 86_400


def test_shelve_for_ever_is_a_usage_error_before_anything_is_sent() -> None:
    """It was a ValueError traceback from the JSON encoder, after connecting."""
    result = CliRunner().invoke(
        fleet_app,
        [
            *("alarms", "shelve", "det-1/smoke.alarm", "-g", "gw-1", "--reason", "x"),
            *("--for", "1" + "0" * 400, "--broker", "mqtt://127.0.0.1:1"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert LONGEST_HINT in result.output and "Traceback" not in result.output
    assert "unreachable" not in result.output
