"""Walk an OPC-UA server's address space, for technicians choosing what to configure.

``browse(conn, start=..., depth=...)`` opens a session the way the driver does (same
security, certificate, trust list and user), then walks down hierarchical references
level by level: one Browse call per level (plus BrowseNext while the server has more), and one
Read per level for the values and data types of the variables found. Objects and variables
are listed; the standard ``Server`` object is skipped unless the walk starts inside it.

Each node carries the browse path from the Root folder when the walk starts at Root or
Objects, in the form a point's ``path:`` takes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from asyncua import ua
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaError

from . import codec, pki
from .config import NodeRef, OpcUaConnection
from .session import SessionError, connect, new_client, standard_node, to_node_id, translate

ROOTS = {"i=84": "", "i=85": "0:Objects"}
"""Start nodes whose path from the Root folder is known."""


class BrowseError(Exception):
    """The server could not be reached or walked; the message says what to do."""


@dataclass(slots=True)
class BrowsedNode:
    node_id: str
    browse_name: str
    display_name: str
    node_class: str
    path: str | None = None
    data_type: str | None = None
    value: Any = None
    status: str | None = None
    children: list[BrowsedNode] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "browse_name": self.browse_name,
            "display_name": self.display_name,
            "class": self.node_class,
            "path": self.path,
            "data_type": self.data_type,
            "value": self.value,
            "status": self.status,
            "children": [c.as_json() for c in self.children],
        }


@dataclass(slots=True)
class BrowseResult:
    endpoint: str
    root: BrowsedNode
    nodes: int
    truncated: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "nodes": self.nodes,
            "truncated": self.truncated,
            "tree": self.root.as_json(),
        }


async def browse(
    conn: OpcUaConnection,
    *,
    start: str = "i=85",
    depth: int = 3,
    max_nodes: int = 2000,
) -> BrowseResult:
    """The tree under ``start``, ``depth`` levels deep, at most ``max_nodes`` nodes."""
    identity = None
    try:
        if conn.security.enabled:
            identity = pki.agent_identity(conn)
        password = None
        if conn.password_file is not None:
            password = conn.password_file.read_text().rstrip("\r\n")
    except pki.PkiError as exc:
        raise BrowseError(str(exc)) from None
    except OSError as exc:
        raise BrowseError(f"cannot read {exc.filename}: {exc.strerror}") from None
    client = new_client(conn, identity)
    try:
        await connect(client, conn, identity, pki.TrustList(conn.pki_dir), password)
    except Exception as exc:
        raise BrowseError(str(translate(exc, conn, identity))) from None
    try:
        return await _Walker(client, conn).walk(start, depth, max_nodes)
    except (SessionError, UaError, OSError, TimeoutError) as exc:
        raise BrowseError(f"browsing failed: {exc or type(exc).__name__}") from None
    finally:
        try:
            async with asyncio.timeout(conn.timeout_s):
                await client.disconnect()
        except Exception:  # the answer is what matters; a failed goodbye is not news
            client.disconnect_socket()


class _Walker:
    def __init__(self, client: Any, conn: OpcUaConnection) -> None:
        self.client = client
        self.timeout = conn.timeout_s
        self.endpoint = conn.endpoint
        self.type_names: dict[str, str] = {}

    async def _call(self, request: Any) -> Any:
        async with asyncio.timeout(self.timeout):
            return await request

    async def walk(self, start: str, depth: int, max_nodes: int) -> BrowseResult:
        ref = NodeRef.parse(start)
        if ref.namespace_uri is not None:
            namespaces = await self._call(self.client.get_namespace_array())
            if ref.namespace_uri not in namespaces:
                raise BrowseError(f"namespace {ref.namespace_uri} not on the server")
            start_id = to_node_id(ref, namespaces.index(ref.namespace_uri))
        else:
            start_id = to_node_id(ref, ref.namespace)
        root = await self._describe(start_id)
        root.path = ROOTS.get(start_id.to_string())
        if root.node_class == "Variable":
            await self._fill_variables([root])
        count, truncated = 1, False
        level = [(start_id, root)]
        for _ in range(depth):
            if not level:
                break
            found = await self._children(level)
            next_level: list[tuple[ua.NodeId, BrowsedNode]] = []
            for parent, refs in found:
                for child_id, node in refs:
                    if count >= max_nodes:
                        truncated = True
                        break
                    if parent.path is not None:
                        node.path = f"{parent.path}/{node.browse_name}".lstrip("/")
                    parent.children.append(node)
                    next_level.append((child_id, node))
                    count += 1
            await self._fill_variables([n for _, n in next_level if n.node_class == "Variable"])
            level = next_level
            if truncated:
                break
        return BrowseResult(self.endpoint, root, count, truncated)

    async def _describe(self, node_id: ua.NodeId) -> BrowsedNode:
        attrs = (AttributeIds.BrowseName, AttributeIds.DisplayName, AttributeIds.NodeClass)
        params = ua.ReadParameters()
        params.NodesToRead = [ua.ReadValueId(NodeId=node_id, AttributeId=a) for a in attrs]
        name, display, node_class = await self._call(self.client.uaclient.read(params))
        if name.StatusCode is not None and not name.StatusCode.is_good():
            raise BrowseError(f"start node {node_id.to_string()}: {name.StatusCode.name}")
        qualified = name.Value.Value
        return BrowsedNode(
            node_id.to_string(),
            f"{qualified.NamespaceIndex}:{qualified.Name}",
            str(display.Value.Value.Text or ""),
            ua.NodeClass(node_class.Value.Value).name,
        )

    async def _children(
        self, level: list[tuple[ua.NodeId, BrowsedNode]]
    ) -> list[tuple[BrowsedNode, list[tuple[ua.NodeId, BrowsedNode]]]]:
        params = ua.BrowseParameters()
        params.NodesToBrowse = [
            ua.BrowseDescription(
                NodeId=node_id,
                BrowseDirection=ua.BrowseDirection.Forward,
                ReferenceTypeId=standard_node(ObjectIds.HierarchicalReferences),
                NodeClassMask=ua.UInt32(ua.NodeClass.Object | ua.NodeClass.Variable),
                ResultMask=ua.UInt32(ua.BrowseResultMask.All),
            )
            for node_id, _ in level
        ]
        results = await self._call(self.client.uaclient.browse(params))
        out = []
        for (parent_id, parent), result in zip(level, results, strict=True):
            references = list(result.References)
            continuation = result.ContinuationPoint
            while continuation:
                more = ua.BrowseNextParameters()
                more.ContinuationPoints = [continuation]
                (next_result,) = await self._call(self.client.uaclient.browse_next(more))
                references.extend(next_result.References)
                continuation = next_result.ContinuationPoint
            children = []
            for r in references:
                child = ua.NodeId(r.NodeId.Identifier, r.NodeId.NamespaceIndex, r.NodeId.NodeIdType)
                is_server = child == standard_node(ObjectIds.Server)
                if is_server and parent_id != child:
                    continue  # hundreds of diagnostics nodes nobody configures as points
                node = BrowsedNode(
                    child.to_string(),
                    f"{r.BrowseName.NamespaceIndex}:{r.BrowseName.Name}",
                    str(r.DisplayName.Text or ""),
                    ua.NodeClass(r.NodeClass).name,
                )
                children.append((child, node))
            out.append((parent, children))
        return out

    async def _fill_variables(self, nodes: list[BrowsedNode]) -> None:
        if not nodes:
            return
        params = ua.ReadParameters()
        for node in nodes:
            node_id = ua.NodeId.from_string(node.node_id)
            params.NodesToRead.append(
                ua.ReadValueId(NodeId=node_id, AttributeId=AttributeIds.Value)
            )
            params.NodesToRead.append(
                ua.ReadValueId(NodeId=node_id, AttributeId=AttributeIds.DataType)
            )
        results = await self._call(self.client.uaclient.read(params))
        types: list[str] = []
        for i, node in enumerate(nodes):
            value, dtype = results[2 * i], results[2 * i + 1]
            if value.StatusCode is not None and not value.StatusCode.is_good():
                node.status = value.StatusCode.name
            node.value = _shown(value.Value.Value if value.Value is not None else None)
            if dtype.Value is not None and dtype.Value.Value is not None:
                node.data_type = dtype.Value.Value.to_string()
                types.append(node.data_type)
        await self._name_types(sorted(set(types) - set(self.type_names)))
        for node in nodes:
            if node.data_type is not None:
                node.data_type = self.type_names.get(node.data_type, node.data_type)

    async def _name_types(self, ids: list[str]) -> None:
        if not ids:
            return
        params = ua.ReadParameters()
        params.NodesToRead = [
            ua.ReadValueId(NodeId=ua.NodeId.from_string(i), AttributeId=AttributeIds.BrowseName)
            for i in ids
        ]
        results = await self._call(self.client.uaclient.read(params))
        for type_id, result in zip(ids, results, strict=True):
            if result.Value is not None and result.Value.Value is not None:
                self.type_names[type_id] = str(result.Value.Value.Name)


def _shown(raw: Any) -> Any:
    """A value as JSON can carry it; what a reading could not carry is described instead."""
    if isinstance(raw, list | tuple):
        return [_shown(v) for v in raw]
    try:
        return codec.scalar(raw)
    except ValueError as exc:
        return f"<{exc}>"
