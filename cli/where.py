"""``--where``: which gateways a command is about, as the registry knows them.

``--where site=jingan,tag.district=north,state=offline,version=0.2.0`` keeps the gateways
that match every clause (``id=GW`` names one; repeat ``id=`` for several). Values are
compared exactly, in the store (SQL), never by listing the fleet here. A clause that is
not one of these is a usage error (exit 2) naming them: a misspelt ``stat=offline`` must
not quietly mean every gateway, nor must an empty ``--where ""`` (an unset variable), nor
a field given twice with two values (``tag.a=x,tag.a=y``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from central.store.api import GatewayFilter

KEYS = ("id", "site", "tag.NAME", "state", "version")
STATES = ("online", "offline")

WhereOpt = Annotated[
    str | None,
    typer.Option(
        "--where",
        "-w",
        help="only gateways matching all of: id=GW, site=S, tag.NAME=V, state=online|offline, "
        "version=V (comma-separated)",
    ),
]


def parse_where(text: str | None) -> GatewayFilter:
    """The filter ``text`` says; a bad clause is a ``typer.BadParameter`` (exit 2)."""
    # loaded by the command that uses it: fleet --help loads nothing of central
    from central.store.api import GatewayFilter  # noqa: PLC0415

    if text is None:
        return GatewayFilter()
    try:
        text.encode()
    except UnicodeEncodeError:  # a byte that is not UTF-8 came as a lone surrogate
        raise _bad(f"{text.encode(errors='surrogateescape')!r} is not UTF-8 text") from None
    ids: list[str] = []
    tags: list[tuple[str, str]] = []
    fields: dict[str, str] = {}
    for clause in (c.strip() for c in text.split(",")):
        if not clause:
            continue
        key, eq, value = clause.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            raise _bad(f"{clause!r} is not KEY=VALUE")
        if key == "id":
            ids.append(value)
        elif key.startswith("tag.") and len(key) > len("tag."):
            name = key[len("tag.") :]
            said = next((v for k, v in tags if k == name), value)
            if said != value:  # no gateway has both; a store must not pick one
                raise _bad(f"{key} is given twice ({said!r} and {value!r})")
            tags.append((name, value))
        elif key in ("site", "state", "version"):
            if key in fields and fields[key] != value:
                raise _bad(f"{key} is given twice ({fields[key]!r} and {value!r})")
            fields[key] = value
        else:
            raise _bad(f"{key!r} is not a gateway field; use one of {', '.join(KEYS)}")
    if not ids and not tags and not fields:
        # ``--where "$SELECTION"`` with the variable unset: not the whole fleet
        raise _bad(f"{text!r} names no gateway field; use one of {', '.join(KEYS)}")
    state = fields.get("state")
    if state is not None and state not in STATES:
        raise _bad(f"state is {' or '.join(STATES)}, not {state!r}")
    return GatewayFilter(
        ids=tuple(dict.fromkeys(ids)),
        site=fields.get("site"),
        tags=tuple(tags),
        online=None if state is None else state == "online",
        version=fields.get("version"),
    )


def _bad(why: str) -> typer.BadParameter:
    return typer.BadParameter(why, param_hint="--where")
