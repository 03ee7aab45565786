"""docs/rules.md is the project's own account of its rules' numbers: every number a shipped
pack or profile rule uses stands in that rule's row, and nothing points at a document
outside the project any more."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_agent.config.profiles import ProfileLibrary
from edge_agent.rules.compile import PACKS, load_pack
from edge_agent.rules.model import Rule

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "rules.md").read_text(encoding="utf-8")
SHIPPED = ["edge_agent", "drivers", "firmware_profiles", "sim", "cli", "central", "mqttlink"]
SHIPPED += ["scripts", "packaging", "bench", "docs"]
OUTSIDE = re.compile(r"DOMAIN(\.md| §)")


def shipped_rules() -> list[tuple[str, Rule]]:
    rules = [(f"pack {name}", rule) for name in PACKS for rule in load_pack(name)]
    loaded, problems = ProfileLibrary([]).load_all()
    assert not problems, problems
    for profile in loaded:
        rules += [(f"profile {profile.profile.ref()}", rule) for rule in profile.profile.rules]
    return rules


def numbers(rule: Rule) -> set[str]:
    """The numbers a rule uses, as written: literals of its conditions, and its delays,
    deadband and rate when set."""
    found = set()
    for text in (rule.when, rule.clear_when):
        found |= set(re.findall(r"(?<![\w.])\d+(?:\.\d+)?", text or ""))
    for value in (rule.on_delay_s, rule.off_delay_s, rule.deadband, rule.stale_s, rule.stuck_s):
        if value:
            found.add(f"{value:g}")
    if rule.rate is not None:
        found.add(f"{rule.rate.per_min or rule.rate.per_s:g}")
    return found


def rows(rule_id: str) -> list[str]:
    """The lines of docs/rules.md that name the rule (or its family: ``*.offline``)."""
    named = [line for line in DOC.splitlines() if f"`{rule_id}`" in line]
    if named:
        return named
    family = "*." + rule_id.rsplit(".", 1)[-1]
    return [line for line in DOC.splitlines() if f"`{family}`" in line]


RULES = shipped_rules()


@pytest.mark.parametrize(("where", "rule"), RULES, ids=[f"{w}:{r.id}" for w, r in RULES])
def test_each_number_of_a_shipped_rule_is_in_its_row_of_docs_rules(where: str, rule: Rule) -> None:
    lines = rows(rule.id)
    assert lines, f"{where}: {rule.id} has no row in docs/rules.md"
    text = "\n".join(lines)
    missing = [
        n for n in sorted(numbers(rule)) if not re.search(rf"(?<![\d.]){re.escape(n)}(?!\d)", text)
    ]
    assert not missing, f"{where}: {rule.id} uses {missing}, not in its docs/rules.md row"


def test_the_shipped_rules_are_the_ones_documented() -> None:
    """A sanity check of the collection above: packs and profiles were read."""
    ids = {rule.id for _, rule in RULES}
    assert {"smoke.alarm", "water.underpass_close", "lift.trapped", "pt420.loop_fault"} <= ids


def test_nothing_points_at_a_document_outside_the_project() -> None:
    files = [ROOT / "README.md"]
    for folder in SHIPPED:
        files += [
            p
            for p in (ROOT / folder).rglob("*")
            if p.is_file()
            and p.suffix in {".py", ".md", ".yaml", ".yml", ".toml", ""}
            and "__pycache__" not in p.parts
            and "node_modules" not in p.parts
        ]
    files += [p for p in (ROOT / "tests").rglob("*.py") if p.name != Path(__file__).name]
    cited = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in files
        for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not cited, f"cite docs/rules.md instead: {', '.join(cited)}"
