"""``load_config(path)``: read, validate and freeze an agent config, or say every problem.

Problems print as ``file:line: field.path: message``, the form editors and CI logs
link to. Loading collects all problems rather than stopping at the first, so a
technician fixes a file in one pass.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from edge_agent.config.expand import ExpandedConfig, expand_profiles
from edge_agent.config.models import UNION_TAGS, AgentConfig, cross_checks
from edge_agent.config.problems import (
    Loc,
    Problem,
    ProblemsError,
    error_message,
    load_mapping,
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


def parse_config(text: str, name: str, base_dir: Path) -> AgentConfig:
    located, problems = load_mapping(text, name, ConfigError)
    expanded = expand_profiles(located.data, base_dir)
    problems += expanded.profile_problems
    problems += [Problem.at(name, located, loc, message) for loc, message in expanded.problems]
    try:
        cfg = AgentConfig.model_validate(expanded.data)
    except ValidationError as exc:
        raise ConfigError(
            problems + _problems_from_validation(exc, name, located, expanded)
        ) from None
    if expanded.devices:
        cfg = cfg.model_copy(update={"device_profiles": expanded.device_profiles(cfg.devices)})
    for path, message in cross_checks(cfg):
        problems.append(Problem.at(name, located, path, message))
    if problems:
        raise ConfigError(problems)
    return anchor_paths(cfg, base_dir)


M = TypeVar("M")


def anchor_paths(value: M, base_dir: Path) -> M:
    """Every relative path in the config, anywhere, made relative to the config file's
    folder, not to wherever systemd happened to start us."""
    if isinstance(value, Path):
        return value if value.is_absolute() else base_dir / value
    if isinstance(value, BaseModel):
        update = {}
        for name in type(value).model_fields:
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


def load_config(path: Path) -> LoadedConfig:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(str(path), 1, "(file)", exc.strerror or str(exc))]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([Problem(str(path), 1, "(file)", "not UTF-8 text")]) from None
    cfg = parse_config(text, str(path), path.resolve().parent)
    return LoadedConfig(cfg, path, hashlib.sha256(raw).hexdigest()[:12])
