"""What is wrong in a config-like file, and where: the one problem type of every loader.

Agent configs, device profiles and sim files all report ``file:line: field.path: message``,
the form editors and CI logs link to. This module holds the pieces they share, so that
none of them imports another's loader for them:

- ``Problem``: one problem at its line;
- ``ProblemsError``: a file that cannot be used, carrying every problem found
  (``ConfigError``, ``ProfileError`` and ``SimConfigError`` are its subclasses);
- ``field_path``: a location such as ``("devices", 0, "points", 2)`` as the text
  ``devices[0].points[2]``;
- ``error_message``: one pydantic error as a technician reads it;
- ``load_mapping`` and ``validation_problems``: YAML text read with the line of every key,
  and a pydantic ``ValidationError`` turned into problems at those lines.

It imports nothing of the project but ``yaml_lines``, another leaf.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from edge_agent.config.yaml_lines import (
    Located,
    YamlRefused,
    YamlSyntaxError,
    line_of,
    load_located,
)

if TYPE_CHECKING:
    from pydantic import ValidationError

Loc = tuple[str | int, ...]
"""A location in a file's data: keys and list indexes from the top."""


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"

    @classmethod
    def at(cls, file: str, located: Located, loc: Loc, message: str) -> Problem:
        """The problem at ``loc`` of a file read with its lines (a missing key: its parent's)."""
        return cls(file, line_of(located.lines, loc), field_path(loc), message)


class ProblemsError(Exception):
    """A file could not be used; ``problems`` lists each problem found, at its line."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def field_path(loc: Loc) -> str:
    """``devices[0].points[2]`` for ``("devices", 0, "points", 2)``; ``(file)`` for ``()``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(file)"


def error_message(err: Mapping[str, Any]) -> str:
    """One pydantic error (an item of ``ValidationError.errors()``) in the file's terms."""
    if err["type"] == "extra_forbidden":
        return "unknown key (misspelt, or not valid here)"
    if err["type"] == "missing":
        return "required key is missing"
    return str(err["msg"]).removeprefix("Value error, ")


E = TypeVar("E", bound=ProblemsError)

MAX_FILE_BYTES = 64 * 1024 * 1024
"""The biggest config-like file read: a 20,000-device config is 6 MB; a path to
``/dev/zero`` or a runaway generator gets an answer, not a hang or an exhausted memory."""


def read_file_bytes(path: Path, file: str, error: type[E]) -> bytes:
    """The bytes of a config-like file, or ``error`` saying why not: not there, a folder,
    or bigger than ``MAX_FILE_BYTES``."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise error([Problem(file, 1, "(file)", exc.strerror or str(exc))]) from None
    if len(raw) > MAX_FILE_BYTES:
        message = f"bigger than {MAX_FILE_BYTES // (1024 * 1024)} MB; not a config"
        raise error([Problem(file, 1, "(file)", message)])
    return raw


def read_file_text(path: Path, file: str, error: type[E]) -> str:
    """``read_file_bytes`` as UTF-8 text, or ``error`` if it is not."""
    try:
        return read_file_bytes(path, file, error).decode("utf-8")
    except UnicodeDecodeError:
        raise error([Problem(file, 1, "(file)", "not UTF-8 text")]) from None


def load_mapping(text: str, file: str, error: type[E]) -> tuple[Located, list[Problem]]:
    """YAML text that must be a mapping of keys: the data with the line of every key, and a
    problem for each key given twice (loading goes on, to find the others). Raises ``error``
    if the text is not YAML or not a mapping."""
    try:
        located = load_located(text)
    except YamlSyntaxError as exc:
        raise error(yaml_problems(exc, file)) from None
    problems = [
        Problem(file, line, field_path(loc), "key appears twice; only one can be meant")
        for loc, line in located.duplicates
    ]
    if not isinstance(located.data, dict):
        raise error([*problems, Problem(file, 1, "(file)", "must be a mapping of keys")])
    return located, problems


def yaml_problems(exc: YamlSyntaxError, file: str) -> list[Problem]:
    """A file the YAML loader would not read: the syntax error, or each refusal (an alias,
    a tag, a number too long) at its line and field."""
    if isinstance(exc, YamlRefused):
        return [Problem(file, r.line, field_path(r.loc), r.message) for r in exc.refusals]
    return [Problem(file, exc.line, "(yaml)", exc.message)]


def validation_problems(exc: ValidationError, file: str, located: Located) -> list[Problem]:
    """Each error of a model validated from ``located.data``, at its line."""
    return [
        Problem.at(file, located, tuple(err["loc"]), error_message(err)) for err in exc.errors()
    ]
