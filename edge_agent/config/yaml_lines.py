"""YAML loading that remembers where every key and list item stood in the file, and that
a hostile file cannot blow up.

Validation errors are only useful to a technician with a line number, so the loader
keeps a map from each path (``("devices", 0, "points", 2, "address")``) to its line.

A config may come from the center, so this is the one YAML loader of every config-like
file (agent configs, device profiles, sim files and scenarios), and it refuses, each at
its line, what could make it run out of memory, stack or time:

- aliases (``*name``): ten nested aliases make a billion nodes, and an alias inside its
  own anchor makes a cycle; a config writes its values out;
- explicit tags other than the plain types (``!!binary``, ``!!python/...``), and plain
  scalars YAML would read as anything but text, numbers, booleans and null (dates);
- nesting deeper than ``MAX_DEPTH`` and numbers longer than ``MAX_NUMBER_CHARS``
  (Python refuses to read an int of more than 4,300 digits, with a traceback);
- text with a NUL character, which no name or path has (the OS refuses such a path with
  a ValueError, not an OSError).

The data is built from libyaml's event stream in one loop with its own stack, not from
PyYAML's node graph: no recursion, and no graph to build and walk. The lines are only
needed when there is a problem to report, so a file is read a second time, with its
lines, only then (``Located.lines``); a valid 20,000-device config is read once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

Path = tuple[str | int, ...]

MAX_DEPTH = 64
"""Nested mappings and lists; an agent config needs about eight."""
MAX_NUMBER_CHARS = 64
"""Characters of a number: far more than any port, address or limit, far below the
4,300 digits at which Python refuses to read an int."""
MAX_REFUSALS = 20
"""Refusals said one by one; past them, one line says there are more (no flood)."""

_TAG = "tag:yaml.org,2002:"
PLAIN_TAGS = frozenset(f"{_TAG}{t}" for t in ("str", "int", "float", "bool", "null"))
COLLECTION_TAGS = frozenset({f"{_TAG}map", f"{_TAG}seq"})
_NUMBER_TAGS = frozenset({f"{_TAG}int", f"{_TAG}float"})
_CACHED_CHARS = 64
"""Plain scalars up to this long are resolved once per text (keys repeat by the thousand)."""

# libyaml's parser when PyYAML has it: the same events and marks, several times faster
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlSyntaxError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass(frozen=True, slots=True)
class Refusal:
    """Something the loader will not read, where it stands (line, and its path)."""

    line: int
    loc: Path
    message: str


class YamlRefused(YamlSyntaxError):
    """The text is YAML, but uses what a config may not (``refusals``: each at its line)."""

    def __init__(self, refusals: list[Refusal]) -> None:
        super().__init__(refusals[0].line, "; ".join(r.message for r in refusals))
        self.refusals = refusals


class Located:
    """A file's data, its keys given twice, and (read again when first asked) the line of
    every key and list item."""

    __slots__ = ("_numbers", "_text", "_tracked", "data", "duplicates")

    def __init__(
        self,
        data: Any,
        duplicates: list[tuple[Path, int]],
        text: str,
        tracked: _Result | None = None,
    ) -> None:
        self.data = data
        self.duplicates = duplicates
        self._text = text
        self._tracked = tracked

    @property
    def lines(self) -> dict[Path, int]:
        return self._read_tracked().lines

    def number_text(self, path: Path) -> str | None:
        """A number as the file writes it (``2.10``, which YAML reads as 2.1), for advice
        that quotes the file; None if ``path`` is not a number."""
        return self._read_tracked().numbers.get(path)

    def _read_tracked(self) -> _Result:
        if self._tracked is None:
            self._tracked = _read(self._text, track=True)
        return self._tracked


class _Again(Exception):
    """Reading without lines met a problem: read again with them, to say where."""


class _Open:
    """A mapping or list being built: its value, its path (when tracked), and, for a
    mapping, the key whose value comes next (``awaits_key``: none yet)."""

    __slots__ = ("awaits_key", "is_map", "key", "key_text", "path", "value")

    def __init__(self, value: dict[Any, Any] | list[Any], path: Path) -> None:
        self.value = value
        self.path = path
        self.is_map = isinstance(value, dict)
        self.awaits_key = self.is_map
        self.key: Any = None
        self.key_text = "?"
        """The key as the file writes it: the path of its value."""


@dataclass(slots=True)
class _Result:
    data: Any
    lines: dict[Path, int]
    duplicates: list[tuple[Path, int]]
    refusals: list[Refusal]
    numbers: dict[Path, str]


def _line(event: yaml.Event) -> int:
    mark = event.start_mark
    return mark.line + 1 if mark is not None else 1


def _shown(tag: str) -> str:
    """A tag as the file writes it: ``!!binary`` for YAML's own, else as it is."""
    return f"!!{tag.removeprefix(_TAG)}" if tag.startswith(_TAG) else tag


_SKIP = object()
"""The value of a node that was refused (or of a refused key)."""


def _read(text: str, *, track: bool) -> _Result:
    """Build the one document of ``text``. With ``track``, record the line of each key
    and item and collect every refusal; without, raise ``_Again`` at the first problem
    (the caller reads again with ``track`` to say where). One loop, as it runs once per
    event of a file that may have a million of them."""
    loader: Any = _Loader(text)  # PyYAML's parser methods carry no type hints
    resolve = loader.resolve
    constructors = loader.yaml_constructors
    cache: dict[str, Any] = {}
    lines: dict[Path, int] = {(): 1}
    duplicates: list[tuple[Path, int]] = []
    refusals: list[Refusal] = []
    numbers: dict[Path, str] = {}
    stack: list[_Open] = []
    root: Any = None
    documents = 0

    def refuse(event: yaml.Event, loc: Path, message: str) -> None:
        if not track:
            raise _Again
        if len(refusals) < MAX_REFUSALS:
            refusals.append(Refusal(_line(event), loc, message))
        elif len(refusals) == MAX_REFUSALS:
            refusals.append(Refusal(_line(event), loc, "and more refused from here on"))

    def scalar(event: yaml.ScalarEvent, loc: Path) -> Any:
        value: str = event.value
        given: str | None = event.tag
        explicit = given is not None and given != "!"
        tag: str = (
            given
            if given is not None and explicit
            else resolve(yaml.ScalarNode, value, event.implicit)
        )
        if tag not in PLAIN_TAGS:
            if explicit:
                message = f"tag {_shown(tag)} is not allowed: plain text, numbers, true/false, null"
            else:
                message = f"{value!r} reads as a {tag.removeprefix(_TAG)}: quote it to make it text"
            refuse(event, loc, message)
            return _SKIP
        if event.style == '"' and "\0" in value:  # only a double-quoted "\0" makes one
            refuse(event, loc, "text with a NUL character (\\0): no name or path has one")
            return _SKIP
        if tag in _NUMBER_TAGS:
            if len(value) > MAX_NUMBER_CHARS:
                message = f"a number of {len(value)} characters (at most {MAX_NUMBER_CHARS})"
                refuse(event, loc, message)
                return _SKIP
            if track:
                numbers[loc] = value
        node = yaml.ScalarNode(tag, value, style=event.style)
        try:
            result = constructors[tag](loader, node)
        except (ValueError, yaml.YAMLError) as exc:
            refuse(event, loc, f"{value!r} cannot be read as {tag.removeprefix(_TAG)}: {exc}")
            return _SKIP
        if not explicit and event.implicit[0] and len(value) <= _CACHED_CHARS:
            cache[value] = result
        return result

    try:
        while True:
            event = loader.get_event()
            kind = type(event)
            top = stack[-1] if stack else None
            if kind is yaml.ScalarEvent:
                value = _SKIP
                if event.implicit[0] and event.tag is None:
                    value = cache.get(event.value, _SKIP)
                if top is not None and top.awaits_key:
                    loc = (*top.path, event.value) if track else ()
                    key = scalar(event, loc) if value is _SKIP else value
                    if key in top.value:
                        if not track:
                            raise _Again
                        duplicates.append((loc, _line(event)))
                    if track:
                        lines[loc] = _line(event)
                    top.key, top.key_text, top.awaits_key = key, event.value, False
                    continue
                if track:
                    loc = _child(top, event, lines)
                if value is _SKIP or (track and isinstance(value, int | float)):
                    value = scalar(event, loc if track else ())
            elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                loc = _node_loc(top, event, lines) if track else ()
                if top is not None and top.awaits_key:
                    refuse(event, loc, "a key must be plain text")
                if event.tag not in (None, "!") and event.tag not in COLLECTION_TAGS:
                    message = (
                        f"tag {_shown(event.tag)} is not allowed: plain mappings and lists only"
                    )
                    refuse(event, loc, message)
                if len(stack) >= MAX_DEPTH:
                    refuse(event, loc, f"nested more than {MAX_DEPTH} levels deep")
                    raise YamlRefused(refusals)
                stack.append(_Open({} if kind is yaml.MappingStartEvent else [], loc))
                continue
            elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                value = stack.pop().value
                top = stack[-1] if stack else None
            elif kind is yaml.AliasEvent:
                loc = _node_loc(top, event, lines) if track else ()
                refuse(event, loc, f"alias *{event.anchor} is not allowed: write the value out")
                value = _SKIP
            elif kind is yaml.DocumentStartEvent:
                documents += 1
                if documents > 1:
                    raise YamlSyntaxError(_line(event), "expected a single document in the stream")
                continue
            elif kind is yaml.StreamEndEvent:
                break
            else:
                continue
            # a finished node: into its parent (a refused key's value is dropped with it)
            if top is None:
                root = value
            elif not top.is_map:
                top.value.append(value)  # type: ignore[union-attr]
            elif top.awaits_key:
                # a refused key: its value is next
                top.key, top.key_text, top.awaits_key = _SKIP, "?", False
            else:
                top.value[top.key] = value
                top.awaits_key = True
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise YamlSyntaxError(line, f"{exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(1, str(exc)) from None
    finally:
        loader.dispose()
    return _Result(root, lines, duplicates, refusals, numbers)


def _node_loc(top: _Open | None, event: yaml.Event, lines: dict[Path, int]) -> Path:
    """Where a node that is not a plain scalar stands: where its mapping's key would go
    (a collection or alias used as a key, which is refused there), else as ``_child``."""
    if top is not None and top.awaits_key:
        return top.path
    return _child(top, event, lines)


def _child(top: _Open | None, event: yaml.Event, lines: dict[Path, int]) -> Path:
    """The path of the node ``event`` starts, as the value of the open mapping's key or
    the next item of the open list; a list item's line is recorded."""
    if top is None:
        return ()
    if top.is_map:
        return (*top.path, top.key_text)
    child = (*top.path, len(top.value))
    lines[child] = _line(event)
    return child


def load_located(text: str) -> Located:
    """The one document of ``text``, its keys given twice, and the line of each key and
    item; ``YamlSyntaxError`` if it is not YAML, ``YamlRefused`` (every refusal at its
    line) if it uses what a config may not."""
    try:
        result = _read(text, track=False)
        return Located(result.data, [], text)
    except _Again:
        result = _read(text, track=True)
    if result.refusals:
        raise YamlRefused(result.refusals)
    return Located(result.data, result.duplicates, text, result)


def line_of(lines: dict[Path, int], path: Path) -> int:
    """Line of the longest prefix of ``path`` the file has (a missing key: its parent's)."""
    for end in range(len(path), -1, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return 1
