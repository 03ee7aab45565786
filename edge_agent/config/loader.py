"""``load_config(path)``: read, validate and freeze an agent config, or say every problem.

This is the schema pass: the file on its own. What the file names on the host (password
files, keys, serial ports) is the host pass, ``host.host_problems``.

Problems print as ``file:line: field.path: message``, the form editors and CI logs
link to. Loading collects all problems rather than stopping at the first, so a
technician fixes a file in one pass.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError

from edge_agent.config.expand import ExpandedConfig, expand_profiles
from edge_agent.config.models import (
    UNION_TAGS,
    AgentConfig,
    cross_checks,
    rule_checks_of_valid_parts,
)
from edge_agent.config.problems import (
    Loc,
    Problem,
    ProblemsError,
    error_message,
    field_path,
    load_mapping,
    read_file_bytes,
)
from edge_agent.config.yaml_lines import Located


class ConfigError(ProblemsError):
    """The file is not a valid agent config; ``problems`` lists each problem found."""


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: AgentConfig
    path: Path
    revision: str
    """First 12 hex digits of the file's SHA-256: which config a gateway runs, at a glance."""
    located: Located | None = None
    """The file's data with its lines, to point a later problem (the host pass) at them."""

    def problem(self, loc: Loc, message: str) -> Problem:
        """A problem found after loading, at ``loc``'s line of the file."""
        if self.located is None:
            return Problem(str(self.path), 1, field_path(loc), message)
        return Problem.at(str(self.path), self.located, loc, message)


def _problems_from_validation(
    exc: ValidationError, name: str, located: Located, expanded: ExpandedConfig
) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = _tag_free(err["loc"])
        message = error_message(err)
        where = expanded.locate(loc)  # devices built from a profile: point at what the file says
        if where is None:
            continue
        loc, inherited = where
        if inherited is not None:
            message = f"{message} (profile point {inherited})"
        problems.append(Problem.at(name, located, loc, message))
    return problems


def _tag_free(loc: tuple[Any, ...]) -> Loc:
    """Remove union tags from an error location: keep only keys of the file.

    In ``("devices", 0, "modbus", "modbus", "host")`` the first "modbus" is pydantic's
    tag for the union member, the second the key in the file; the tag is the one
    that directly follows a list index.
    """
    out: list[str | int] = []
    after_index = False
    for part in loc:
        if after_index and isinstance(part, str) and part in UNION_TAGS:
            after_index = False
            continue
        after_index = isinstance(part, int)
        out.append(part)
    return tuple(out)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off while a config is read: loading a big config makes
    millions of objects and no cycle, and each collection the allocations set off walks
    them all for nothing (on 20,000 devices, more than half of the time)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def parse_config(text: str, name: str, base_dir: Path) -> AgentConfig:
    """The schema pass: the config in ``text`` (read from ``name``, relative paths from
    ``base_dir``) validated on its own, touching nothing of the host but the profiles it
    names; ``ConfigError`` with every problem found. A config pushed from the center can
    be checked this way where it is written; ``host.host_problems`` is the other pass."""
    return parse_located(text, name, base_dir)[0]


def parse_located(text: str, name: str, base_dir: Path) -> tuple[AgentConfig, Located]:
    """``parse_config``, and the file's data with its lines (for later problems)."""
    with _collector_paused():
        return _parse_config(text, name, base_dir)


def _parse_config(text: str, name: str, base_dir: Path) -> tuple[AgentConfig, Located]:
    located, problems = load_mapping(text, name, ConfigError)
    expanded = expand_profiles(located.data, base_dir)
    problems += expanded.profile_problems
    problems += [Problem.at(name, located, loc, message) for loc, message in expanded.problems]
    try:
        cfg = AgentConfig.model_validate(expanded.data)
    except ValidationError as exc:
        problems += _problems_from_validation(exc, name, located, expanded)
        for path, message in rule_checks_of_valid_parts(expanded.data):
            problems.append(Problem.at(name, located, path, message))
        raise ConfigError(_by_line(problems, name)) from None
    if expanded.devices:
        cfg = cfg.model_copy(update={"device_profiles": expanded.device_profiles(cfg.devices)})
    for path, message in cross_checks(cfg):
        problems.append(Problem.at(name, located, path, message))
    if problems:
        raise ConfigError(_by_line(problems, name))
    return anchor_paths(cfg, base_dir), located


def _by_line(problems: list[Problem], name: str) -> list[Problem]:
    """Problems in the order of the file, the config's (``name``) before a profile's, as
    an editor shows them: which pass found each is the tool's business, not the reader's."""
    return sorted(problems, key=lambda p: (p.file != name, p.file, p.line))


M = TypeVar("M")


def anchor_paths(value: M, base_dir: Path) -> M:
    """Every relative path in the config, anywhere, made relative to the config file's
    folder, not to wherever systemd happened to start us."""
    if isinstance(value, Path):
        return value if value.is_absolute() else base_dir / value
    if isinstance(value, BaseModel):
        update = {}
        for name in _path_fields(type(value)):
            old = getattr(value, name)
            new = anchor_paths(old, base_dir)
            if new is not old:
                update[name] = new
        return value.model_copy(update=update) if update else value
    if isinstance(value, list):
        items = [anchor_paths(v, base_dir) for v in value]
        changed = any(a is not b for a, b in zip(items, value, strict=True))
        return items if changed else value  # type: ignore[return-value]
    return value


@cache
def _path_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of ``model`` whose type can hold a path: the only ones ``anchor_paths``
    walks (60,000 Modbus points have none, and are not visited)."""
    return tuple(
        name
        for name, info in model.model_fields.items()
        if _may_hold_path(info.annotation, frozenset({model}))
    )


def _may_hold_path(annotation: object, seen: frozenset[type]) -> bool:
    if annotation is Path:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation in seen:
            return False
        return any(
            _may_hold_path(f.annotation, seen | {annotation})
            for f in annotation.model_fields.values()
        )
    return any(_may_hold_path(arg, seen) for arg in get_args(annotation))


def load_config(path: Path) -> LoadedConfig:
    raw = read_file_bytes(path, str(path), ConfigError)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([Problem(str(path), 1, "(file)", "not UTF-8 text")]) from None
    cfg, located = parse_located(text, str(path), path.resolve().parent)
    return LoadedConfig(cfg, path, hashlib.sha256(raw).hexdigest()[:12], located)
