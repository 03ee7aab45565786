"""Config models of an OPC-UA device, and the node id and browse path syntax they accept.

Nothing here imports asyncua: loading a config (the central service does too, and so does a
Modbus-only gateway) must not pay for it. Node ids and browse paths are therefore parsed here,
into small value objects, and turned into asyncua's types by the driver.

Node ids use the OPC-UA string form (Part 6, 5.3.1.10)::

    ns=2;s=Pump1.Level      string         i=85            numeric, namespace 0
    ns=2;i=1042             numeric        ns=2;g=<guid>   GUID
    ns=2;b=<base64>         opaque         nsu=<uri>;s=..  namespace by URI, resolved per session

A browse path starts at the Root folder and names each step ``<namespace index>:<name>``:
``0:Objects/2:Pump1/2:Level``.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from drivers.base import DeviceBase, Frozen, PointBase, Violation, reject
from drivers.host_files import (
    certificate_problem,
    folder_problem,
    password_file_problem,
    private_key_problem,
)
from mqttlink.url import shown_url

MAX_UINT32 = 2**32 - 1
MAX_NAMESPACE = 65535
NODE_ID_HELP = (
    "expected [ns=<index>;]i=<number> | s=<string> | g=<guid> | b=<base64> "
    "(or nsu=<namespace uri>; instead of ns=), e.g. ns=2;s=Pump1.Level"
)
PATH_HELP = "expected <ns>:<name> steps from the Root folder, e.g. 0:Objects/2:Pump1/2:Level"


IdKind = Literal["i", "s", "g", "b"]
_NODE_ID = re.compile(
    r"^(?:ns=(?P<ns>\d+);|nsu=(?P<nsu>[^;]+);)?(?P<kind>[isgb])=(?P<id>.*)$", re.DOTALL
)


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A parsed node id: the namespace (by index, or by URI) and the typed identifier."""

    kind: IdKind
    identifier: int | str | uuid.UUID | bytes
    namespace: int = 0
    namespace_uri: str | None = None

    @classmethod
    def parse(cls, text: str) -> NodeRef:
        m = _NODE_ID.match(text.strip())
        if m is None:
            raise ValueError(f"bad node id {text!r}: {NODE_ID_HELP}")
        kind: IdKind = m["kind"]  # type: ignore[assignment]  # the regex allows only these
        raw = m["id"]
        namespace = int(m["ns"]) if m["ns"] is not None else 0
        if namespace > MAX_NAMESPACE:
            raise ValueError(f"bad node id {text!r}: namespace index {namespace} is over 65535")
        identifier: int | str | uuid.UUID | bytes
        if kind == "i":
            if not raw.isdigit() or int(raw) > MAX_UINT32:
                raise ValueError(f"bad node id {text!r}: i= takes a number from 0 to {MAX_UINT32}")
            identifier = int(raw)
        elif kind == "s":
            if not raw:
                raise ValueError(f"bad node id {text!r}: s= needs a string")
            identifier = raw
        elif kind == "g":
            try:
                identifier = uuid.UUID(raw)
            except ValueError:
                raise ValueError(
                    f"bad node id {text!r}: g= takes a GUID like "
                    "09087e75-8e5e-499b-954f-f2a9603db28a"
                ) from None
        else:
            try:
                identifier = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"bad node id {text!r}: b= takes base64 text") from None
            if not identifier:
                raise ValueError(f"bad node id {text!r}: b= needs at least one byte")
        return cls(kind, identifier, namespace, m["nsu"])

    def __str__(self) -> str:
        ns = f"nsu={self.namespace_uri};" if self.namespace_uri else f"ns={self.namespace};"
        if self.kind == "b":
            assert isinstance(self.identifier, bytes)
            ident = base64.b64encode(self.identifier).decode()
        else:
            ident = str(self.identifier)
        return f"{'' if ns == 'ns=0;' else ns}{self.kind}={ident}"


@dataclass(frozen=True, slots=True)
class BrowsePath:
    """Steps from the Root folder, each a (namespace index, browse name)."""

    steps: tuple[tuple[int, str], ...]

    @classmethod
    def parse(cls, text: str) -> BrowsePath:
        steps: list[tuple[int, str]] = []
        for step in text.strip().strip("/").split("/"):
            ns, sep, name = step.partition(":")
            if not sep or not ns.isdigit() or not name or int(ns) > MAX_NAMESPACE:
                raise ValueError(f"bad browse path {text!r} at {step!r}: {PATH_HELP}")
            steps.append((int(ns), name))
        return cls(tuple(steps))

    def __str__(self) -> str:
        return "/".join(f"{ns}:{name}" for ns, name in self.steps)


SecurityPolicy = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
SecurityMode = Literal["None", "Sign", "SignAndEncrypt"]


class OpcUaSecurity(Frozen):
    policy: SecurityPolicy = "None"
    mode: SecurityMode = "None"

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.policy == "None") != (self.mode == "None"):
            raise ValueError(
                f"policy {self.policy} with mode {self.mode}: policy None goes with mode None, "
                "and a signing policy with Sign or SignAndEncrypt"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.policy != "None"

    def __str__(self) -> str:
        return "None" if not self.enabled else f"{self.policy}/{self.mode}"


class OpcUaCertificate(Frozen):
    """The agent's own application instance certificate (DER or PEM) and its private key."""

    cert: Path
    key: Path


class OpcUaConnection(Frozen):
    endpoint: str = Field(description="opc.tcp://host[:port][/path]")
    mode: Literal["subscribe", "poll"] = "subscribe"
    security: OpcUaSecurity = OpcUaSecurity()
    username: str | None = Field(default=None, min_length=1)
    password_file: Path | None = Field(default=None, description="file holding the password")
    certificate: OpcUaCertificate | None = Field(
        default=None, description="the agent's certificate; generated under pki_dir if absent"
    )
    pki_dir: Path = Field(
        default=Path("pki"), description="own/ certificate, trusted/ and rejected/ server certs"
    )
    application_uri: str | None = Field(
        default=None,
        description="the agent's application URI; default urn:edgefleet:agent:<hostname>",
    )
    timeout_s: float = Field(default=5.0, gt=0, le=120, description="per request and connect")
    keepalive_s: float = Field(
        default=5.0, gt=0, le=600, description="silence after which the session is dead"
    )
    reconnect_min_s: float = Field(default=0.5, gt=0, le=600)
    reconnect_max_s: float = Field(default=10.0, gt=0, le=3600)
    queue_max: int = Field(
        default=10_000, ge=1, le=1_000_000, description="changes buffered between two reads"
    )
    max_nodes_per_request: int = Field(
        default=1000, ge=1, le=100_000, description="nodes per Read or CreateMonitoredItems"
    )
    timestamps: Literal["source", "edge"] = Field(
        default="source", description="subscribe mode: the server's SourceTimestamp, or arrival"
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        shown = repr(shown_url(v))  # a password put in the URL by mistake is not echoed
        try:
            parts = urlsplit(v)
        except ValueError:  # an unclosed [ of an IPv6 address
            raise ValueError(f"{shown}: expected opc.tcp://host[:port][/path]") from None
        if parts.scheme != "opc.tcp" or not parts.hostname:
            raise ValueError(f"{shown}: expected opc.tcp://host[:port][/path]")
        try:
            parts.port  # noqa: B018  # urlsplit checks the port only when asked
        except ValueError:
            raise ValueError(f"{shown}: port must be a number from 1 to 65535") from None
        if parts.username or parts.password:
            raise ValueError(f"{shown}: put credentials in username and password_file, not the URL")
        return v

    @model_validator(mode="after")
    def _fits(self) -> Self:
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be below reconnect_min_s")
        return self


ARRAY_MAX = 1000
"""Elements a flattened array may have; the index is appended to the point name."""


class Deadband(Frozen):
    """A data change filter: report only changes bigger than this (subscribe mode)."""

    abs: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    percent: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.abs is None) == (self.percent is None):
            raise ValueError("a deadband is either {abs: <value>} or {percent: <0..100>}")
        return self


class OpcUaPoint(PointBase):
    node: str | None = Field(default=None, description="node id, e.g. ns=2;s=Pump1.Level")
    path: str | None = Field(default=None, description="browse path from the Root folder")
    deadband: Deadband | None = None
    sampling_ms: float | None = Field(
        default=None, ge=0, le=86_400_000, description="default: the device's poll_s"
    )
    queue_size: int = Field(default=1, ge=1, le=1000, description="server-side, per item")
    array: Literal["refuse", "flatten"] = Field(
        default="refuse", description="flatten: one reading per element, named <name>.<index>"
    )

    @field_validator("node")
    @classmethod
    def _node(cls, v: str | None) -> str | None:
        if v is not None:
            NodeRef.parse(v)
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None:
            BrowsePath.parse(v)
        return v

    @model_validator(mode="after")
    def _where(self) -> Self:
        if (self.node is None) == (self.path is None):
            raise ValueError("a point needs exactly one of node (a node id) or path")
        if self.array == "flatten" and len(self.name) + 1 + len(str(ARRAY_MAX - 1)) > 64:
            message = f"name too long to flatten: {self.name}.<index> must fit 64 characters"
            reject(type(self).__name__, [(("name",), message, self.name)])
        return self

    @property
    def ref(self) -> NodeRef | BrowsePath:
        """Where the point lives: a node id, or a browse path resolved once per session."""
        if self.node is not None:
            return NodeRef.parse(self.node)
        return BrowsePath.parse(self.path or "")


class OpcUaDevice(DeviceBase):
    opcua: OpcUaConnection
    points: list[OpcUaPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        problems: list[Violation] = []
        first: dict[str, int] = {}
        for i, point in enumerate(self.points):
            if point.name in first:
                where = f"first at points[{first[point.name]}]"
                message = f"duplicate point name {point.name!r} ({where})"
                problems.append((("points", i, "name"), message, point.name))
            first.setdefault(point.name, i)
        reject(type(self).__name__, problems)
        return self

    def host_problems(self) -> list[Violation]:
        conn = self.opcua
        found: list[tuple[tuple[str, ...], str | None]] = []
        if conn.password_file is not None:
            found.append((("password_file",), password_file_problem(conn.password_file)))
        if conn.certificate is not None:
            found.append((("certificate", "cert"), certificate_problem(conn.certificate.cert)))
            found.append((("certificate", "key"), private_key_problem(conn.certificate.key)))
        if conn.security.enabled:  # its own certificate and the trust list live here
            found.append((("pki_dir",), folder_problem(conn.pki_dir, may_be_made=True)))
        return [(("opcua", *loc), problem, None) for loc, problem in found if problem is not None]

    def sampling_ms(self, point: OpcUaPoint) -> float:
        return point.sampling_ms if point.sampling_ms is not None else self.poll_s * 1000
