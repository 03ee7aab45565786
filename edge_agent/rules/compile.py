"""From rule definitions to rule instances bound to devices, checked and compiled once.

Rules come from three places: inline in the agent config (each names its ``device``),
named packs shipped with the agent (``rule_packs: [smoke, water, elevator]``), and device
profiles. A pack rule applies to every device that has all the points it reads, so one
pack serves every smoke detector whatever its make.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml
from pydantic import TypeAdapter, ValidationError

from edge_agent.rules.expr import Expr, ExprError, check_template, compile_expr, deadband_clear
from edge_agent.rules.model import Rule

Loc = tuple[str | int, ...]
PACKS = ("smoke", "water", "elevator")


class RuleError(ValueError):
    """A rule that cannot be used: ``loc`` is where in the config it stands."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


class RuleErrors(ValueError):
    """Every rule problem found in one pass, so a technician fixes a file at once."""

    def __init__(self, errors: list[RuleError]) -> None:
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class CompiledRule:
    rule: Rule
    device: str
    when: Expr | None
    clear: Expr | None
    points: frozenset[str]
    primary: str | None
    """The point whose value an event reports: the watched point, or the condition's first."""
    source: str

    @property
    def key(self) -> str:
        return f"{self.device}/{self.rule.id}"

    def on(self, device: str) -> CompiledRule:
        """The same rule bound to another device with the same points: its compiled
        conditions are shared (they are only read, and evaluated one at a time)."""
        return CompiledRule(
            self.rule, device, self.when, self.clear, self.points, self.primary, self.source
        )

    @property
    def kind(self) -> str:
        return self.rule.kind


def compile_rule(
    rule: Rule, device: str, points: frozenset[str], loc: Loc, source: str
) -> CompiledRule:
    """Bind ``rule`` to a device with ``points``; RuleError (at ``loc``) if it cannot."""
    try:
        when = compile_expr(rule.when, points) if rule.when is not None else None
        clear: Expr | None = None
        if rule.clear_when is not None:
            clear = compile_expr(rule.clear_when, points)
        elif rule.deadband is not None and when is not None:
            clear = deadband_clear(when, rule.deadband)
        if rule.message is not None and source == "config":
            # shipped packs and profiles may name points some devices lack: shown as "?"
            check_template(rule.message, points)
    except ExprError as exc:
        field = "when"
        if rule.clear_when is not None and rule.clear_when in str(exc):
            field = "clear_when"
        elif rule.message is not None and "template" in str(exc):
            field = "message"
        raise RuleError((*loc, field), str(exc)) from None
    if rule.point is not None and rule.point not in points:
        raise RuleError((*loc, "point"), f"unknown point {rule.point!r} on device {device!r}")
    for i, action in enumerate((*rule.actions.on_active, *rule.actions.on_cleared)):
        if not action.write.point:
            raise RuleError((*loc, "actions", i), "a write needs a point")
    read = set(when.names if when else ()) | set(clear.names if clear else ())
    if rule.point is not None:
        read.add(rule.point)
    if rule.kind in ("stale", "offline") and rule.point is None:
        read = set(points)
    primary = rule.point or (when.first_name if when else None)
    return CompiledRule(rule, device, when, clear, frozenset(read), primary, source)


@cache
def load_pack(name: str) -> tuple[Rule, ...]:
    text = resources.files("edge_agent.rules").joinpath(f"packs/{name}.yaml").read_text()
    raw = yaml.safe_load(text) or []
    try:
        return tuple(TypeAdapter(list[Rule]).validate_python(raw))
    except ValidationError as exc:  # a shipped pack is broken: a bug, say so plainly
        raise RuntimeError(f"rule pack {name} is invalid: {exc}") from exc


def pack_applies(rule: Rule, points: frozenset[str]) -> bool:
    """Whether a pack's or profile's rule is for a device with ``points``: it has every
    point the rule reads and none that the rule leaves to the device
    (``unless_device_has``)."""
    return applies(rule, rule_needs(rule), points)


def applies(rule: Rule, needed: frozenset[str], points: frozenset[str]) -> bool:
    """``pack_applies`` with the rule's needs worked out once (``rule_needs``)."""
    return bool(needed) and needed <= points and not points.intersection(rule.unless_device_has)


def rule_needs(rule: Rule) -> frozenset[str]:
    """The points a device needs for a pack or profile rule to apply to it (none: a rule
    whose condition does not parse applies nowhere). Asked once per rule, not per device."""
    needed: set[str] = set()
    for text in (rule.when, rule.clear_when):
        if text is not None:
            try:
                needed |= compile_expr(text).names
            except ExprError:
                return frozenset()
    if rule.point is not None:
        needed.add(rule.point)
    return frozenset(needed)


def compile_rules(
    devices: Mapping[str, frozenset[str]],
    inline: Sequence[Rule],
    packs: Sequence[str],
    profile_rules: Mapping[str, Sequence[Rule]] | None = None,
    writable: Mapping[str, frozenset[str]] | None = None,
) -> list[CompiledRule]:
    """All rule instances of a gateway. ``devices`` maps each device to its point names;
    ``writable`` (same shape) checks that action targets exist."""
    out: list[CompiledRule] = []
    seen: dict[str, Loc] = {}
    errors: list[RuleError] = []

    def add(c: CompiledRule, loc: Loc) -> None:
        if c.key in seen:
            if seen[c.key][0] == "rules" and loc[0] != "rules":
                return  # an inline rule overrides the pack's or profile's of the same id
            raise RuleError((*loc, "id"), f"rule {c.rule.id!r} on {c.device!r} is defined twice")
        seen[c.key] = loc
        out.append(c)

    for i, rule in enumerate(inline):
        loc: Loc = ("rules", i)
        try:
            if rule.device is None:
                raise RuleError((*loc, "device"), "an inline rule names its device")
            if rule.device not in devices:
                raise RuleError((*loc, "device"), f"no device {rule.device!r} in this config")
            if rule.unless_device_has:
                raise RuleError(
                    (*loc, "unless_device_has"),
                    "unless_device_has is for packs and profiles: an inline rule names its device",
                )
            _check_actions(rule, loc, devices, writable)
            add(compile_rule(rule, rule.device, devices[rule.device], loc, "config"), loc)
        except RuleError as exc:
            errors.append(exc)
    for device, rules in (profile_rules or {}).items():
        for rule in rules:
            if pack_applies(rule, devices[device]) or rule.kind in ("stale", "offline"):
                add(
                    compile_rule(rule, device, devices[device], ("profile", device), "profile"),
                    ("profile", device),
                )
    for j, name in enumerate(packs):
        if name not in PACKS:
            errors.append(
                RuleError(
                    ("rule_packs", j), f"unknown rule pack {name!r}; known: {', '.join(PACKS)}"
                )
            )
            continue
        # a pack rule compiled once per set of point names, not once per device: 20,000
        # smoke detectors of one make are one compile and 20,000 bindings
        bound: dict[frozenset[str], CompiledRule] = {}
        for rule in load_pack(name):
            needed = rule_needs(rule)
            bound.clear()
            for device, points in devices.items():
                if applies(rule, needed, points):
                    try:
                        loc = ("rule_packs", j)
                        same = bound.get(points)
                        if same is None:
                            same = compile_rule(rule, device, points, loc, f"pack {name}")
                            bound[points] = same
                        add(same.on(device), loc)
                    except RuleError as exc:
                        errors.append(exc)
    if errors:
        raise RuleErrors(errors)
    return out


def _check_actions(
    rule: Rule,
    loc: Loc,
    devices: Mapping[str, frozenset[str]],
    writable: Mapping[str, frozenset[str]] | None,
) -> None:
    for when, actions in (
        ("on_active", rule.actions.on_active),
        ("on_cleared", rule.actions.on_cleared),
    ):
        for k, action in enumerate(actions):
            target = action.write
            where = (*loc, "actions", when, k, "write")
            if target.device not in devices:
                raise RuleError((*where, "device"), f"no device {target.device!r} to write to")
            points = (writable or devices)[target.device]
            if target.point not in points:
                raise RuleError(
                    (*where, "point"),
                    f"device {target.device!r} has no writable point {target.point!r}",
                )


def rule_ids(rules: Iterable[CompiledRule]) -> list[str]:
    return sorted(c.key for c in rules)
