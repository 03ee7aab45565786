"""What ``fleet`` and ``edge-agent`` load to start: ``--help`` and ``--version`` load typer
and our command modules, not the config models, pydantic, YAML, rich, asyncio or ssl; a
query of the store loads the store, not the agent's config or the MQTT layer. How long
that takes is measured by ``bench/cli_start.py``, never here.

Each program runs as its console script runs it (``cli.fleet:main``, ``cli.agent:main``)
in a fresh interpreter, which prints at exit the modules it had loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import edge_agent
from central.store.sqlite import SqliteStore
from tests.support import run_cli

REPO = Path(__file__).resolve().parent.parent
MAINS = {"fleet": "cli.fleet", "edge-agent": "cli.agent"}

DRIVER = """\
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr, flush=True))
program, module, *args = sys.argv[1:]
sys.argv = [program, *args]
main = __import__(module, fromlist=["main"]).main
main()
"""

HEAVY = {
    "pydantic",  # the config models, and the contract's payload types
    "yaml",
    "rich",  # help is click's plain text; rich draws tables of data only
    "markdown_it",
    "asyncio",
    "ssl",
    "sqlite_utils",
    "paho",
    "pymodbus",
    "asyncua",
    "cryptography",
}
OURS_HEAVY = (
    "edge_agent.config",
    "edge_agent.contract.alarms",
    "edge_agent.contract.payloads",
    "drivers",
    "central",
    "mqttlink",
    "sim",
)


def loaded(
    program: str, *args: str, cwd: Path = REPO
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, program, MAINS[program], *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )
    modules = json.loads(done.stderr.strip().splitlines()[-1])
    return done, set(modules)


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in HEAVY or m.startswith(OURS_HEAVY)}


@pytest.mark.parametrize("program", ["fleet", "edge-agent"])
@pytest.mark.parametrize("args", [("--help",), ("--version",)])
def test_help_and_version_load_nothing_heavy(program: str, args: tuple[str, ...]) -> None:
    done, modules = loaded(program, *args)
    assert done.returncode == 0, done.stderr
    assert "typer" in modules and MAINS[program] in modules  # the check ran a real start
    assert heavy(modules) == set()


def test_the_help_of_a_command_loads_nothing_heavy_of_ours() -> None:
    """Typer (0.29, as pinned by the lock of the day) builds a pydantic adapter for each
    option of the command it runs, so pydantic loads here; none of our models, nor what
    they bring, do."""
    for program, args in (
        ("fleet", ("alarms", "shelve", "--help")),
        ("fleet", ("central", "run", "--help")),
        ("edge-agent", ("probe", "modbus", "--help")),
        ("edge-agent", ("browse", "--help")),
        ("edge-agent", ("sim", "run", "--help")),
    ):
        done, modules = loaded(program, *args)
        assert done.returncode == 0, (args, done.stderr)
        assert "Usage:" in done.stdout
        assert {m for m in heavy(modules) if not m.startswith("pydantic")} == set(), args


def test_a_query_loads_the_store_but_not_the_agents_config_nor_mqtt(tmp_path: Path) -> None:
    db = tmp_path / "central.db"
    SqliteStore(db).close()
    done, modules = loaded("fleet", "alarms", "list", "--db", str(db), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    assert "central.store" in modules
    assert {m.split(".")[0] for m in heavy(modules)} <= {
        "central",  # the store,
        "sqlite_utils",
        "edge_agent",  # the contract's types it decodes with,
        "pydantic",  # which the reading's value types bring
        "drivers",
    }
    assert not {m for m in modules if m.startswith(("edge_agent.config", "mqttlink", "yaml"))}
    assert not {"rich", "asyncio", "ssl", "paho"} & {m.split(".")[0] for m in modules}


def test_version_prints_the_package_version_and_edge_agent_the_build() -> None:
    fleet = run_cli("fleet", "--version")
    assert (fleet.returncode, fleet.stdout) == (0, f"fleet {edge_agent.__version__}\n")
    agent = run_cli("edge-agent", "--version")
    assert agent.returncode == 0
    line = agent.stdout.strip()
    assert line.startswith(
        f"edge-agent {edge_agent.__version__} (CPython {sys.version.split()[0]}, "
    )
    assert line.endswith(", installed package)")


def test_shell_completion_is_offered_and_completes_commands() -> None:
    for program in ("fleet", "edge-agent"):
        listed = run_cli(program, "--help")
        assert "--install-completion" in listed.stdout and "--show-completion" in listed.stdout
    script = run_cli("fleet", "--show-completion", "bash")
    assert script.returncode == 0 and "_FLEET_COMPLETE" in script.stdout
    # what the shell runs on <TAB>: the program itself, with the words so far
    env = {"_FLEET_COMPLETE": "complete_bash", "COMP_WORDS": "fleet ala", "COMP_CWORD": "1"}
    completed = run_cli("fleet", env=env)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["alarms"]
    env = {"_FLEET_COMPLETE": "complete_bash", "COMP_WORDS": "fleet alarms s", "COMP_CWORD": "2"}
    assert run_cli("fleet", env=env).stdout.split() == ["show", "shelve"]
