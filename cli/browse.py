"""``edge-agent browse``: a technician's look into an OPC-UA server before configuring it.

Thin: build the connection settings, walk with ``drivers.opcua.browse``, render. asyncua
and rich are imported only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.output import JsonOpt, Part, Styled, print_json, print_rich, shown, text

if TYPE_CHECKING:
    from rich.text import Text
    from rich.tree import Tree

    from drivers.opcua.browse import BrowsedNode

EXIT_USAGE = 2


def browse(
    endpoint: Annotated[str, typer.Argument(help="server URL, opc.tcp://host:port/path")],
    node: Annotated[
        str, typer.Option("--node", help="node id to start from (default: the Objects folder)")
    ] = "i=85",
    depth: Annotated[int, typer.Option(min=1, max=20, help="levels below the start node")] = 3,
    as_json: JsonOpt = False,
    security: Annotated[
        str,
        typer.Option(help="POLICY[,MODE], e.g. Basic256Sha256,Sign (mode default SignAndEncrypt)"),
    ] = "None",
    username: Annotated[str | None, typer.Option(help="user name, with --password-file")] = None,
    password_file: Annotated[
        Path | None, typer.Option(help="file holding the password (never on the command line)")
    ] = None,
    pki_dir: Annotated[
        Path, typer.Option(help="the agent's certificates and trust list, as in its config")
    ] = Path("pki"),
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds per request")] = 5.0,
    max_nodes: Annotated[int, typer.Option(min=1, help="stop after this many nodes")] = 2000,
) -> None:
    """Walk an OPC-UA server's address space: variables with node ids, data types and values."""
    # the config models (pydantic) load only when browsing: edge-agent --help stays quick
    from pydantic import ValidationError  # noqa: PLC0415

    from drivers.opcua.config import NodeRef, OpcUaConnection  # noqa: PLC0415

    policy, _, mode = security.partition(",")
    try:
        NodeRef.parse(node)
        conn = OpcUaConnection.model_validate(
            {
                "endpoint": endpoint,
                "security": {"policy": policy, "mode": mode or _default_mode(policy)},
                "username": username,
                "password_file": password_file,
                "pki_dir": pki_dir,
                "timeout_s": timeout,
            }
        )
    except (ValidationError, ValueError) as exc:
        typer.echo(f"error: {_first_problem(exc)}", err=True)
        raise typer.Exit(EXIT_USAGE) from None

    # asyncua, asyncio and rich load only when browsing
    import asyncio  # noqa: PLC0415

    from drivers.opcua.browse import BrowseError  # noqa: PLC0415
    from drivers.opcua.browse import browse as walk  # noqa: PLC0415

    try:
        result = asyncio.run(walk(conn, start=node, depth=depth, max_nodes=max_nodes))
    except BrowseError as exc:
        typer.echo(f"error: {endpoint}: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        print_json(result.as_json())
        return
    # asyncua and rich load only when browsing
    from rich.tree import Tree  # noqa: PLC0415

    tree = Tree(_label(result.root))
    _grow(tree, result.root)
    more = " (truncated: raise --max-nodes or start lower with --node)" if result.truncated else ""
    print_rich(tree, text(f"{result.nodes} node(s) on {result.endpoint}{more}"))


def _default_mode(policy: str) -> str:
    return "None" if policy == "None" else "SignAndEncrypt"


def _first_problem(exc: Exception) -> str:
    # pydantic is loaded by now (browse validated the connection with it)
    from pydantic import ValidationError  # noqa: PLC0415

    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        return f"{where}: {message}" if where else message
    return str(exc)


def _grow(tree: Tree, node: BrowsedNode) -> None:
    for child in node.children:
        _grow(tree.add(_label(child)), child)


def _label(node: BrowsedNode) -> Text:
    # names, types, values and status come from the server: text, never markup
    parts: list[Part] = [
        Styled(node.display_name or node.browse_name, "bold"),
        "  ",
        Styled(node.node_id, "dim"),
    ]
    if node.node_class == "Variable":
        parts += ["  ", Styled(node.data_type or "?", "cyan"), " = ", _value(node.value)]
        if node.status:
            parts += ["  ", Styled(node.status, "red")]
    return text(*parts)


def _value(value: Any) -> str:
    if isinstance(value, list) and len(value) > 8:
        return f"[{', '.join(map(_value, value[:8]))}, … ({len(value)} elements)]"
    if isinstance(value, list):
        return f"[{', '.join(map(_value, value))}]"
    return repr(value) if isinstance(value, str) else shown(value)
