"""Certificate requests over MQTT: a gateway enrolling with a one-time token (it makes its
own key, which never leaves it), and a gateway renewing its certificate before it expires.

Enrollment goes through the broker's enrollment listener, which takes clients without a
certificate. Each logs in as GW's one-time enrollment identity, ``enroll-GW``
(``enrollment_identity``), whose password is GW's token (``fleet provision GW --token``
puts its hash in the broker's password file); the broker makes that name its client id,
so no one there can take another client's id. Its topics are mounted under
``ENROLL_MOUNT`` (nothing it publishes can reach a topic of the fleet), and the broker's
ACL lets it write only its own request topic and read only its own replies::

    edgefleet/v1/enroll/enroll-<gw>/request     gateway -> center
      {"format": "edgefleet-csr/1", "gw": "jingan-0001", "token": "…",
       "reply": "<32 hex digits, random>", "csr": "-----BEGIN CERTIFICATE REQUEST-----…"}
    edgefleet/v1/enroll/enroll-<gw>/reply       center -> gateway
      {"format": "edgefleet-csr/1", "gw": "jingan-0001", "reply": "<the request's>",
       "status": "signed", "broker": "mqtts://…:8883", "files": {"ca.crt": PEM,
       "gateway.crt": PEM, "command.pub": PEM, "agent.yaml": TEXT}}
      or {"format": …, "gw": …, "reply": …, "status": "pending" | "refused",
          "reason": "…"}

The center answers a request only on the topic of the identity that sent it, and only if
that identity is the request's gateway's (``enroll-`` + ``gw``); ``reply`` is the
request's random id, which the gateway matches (an answer to an earlier request of its is
not taken for this one's).

A renewal goes over the gateway's own certificate listener, where the broker knows who
it is (``…/gw/G/csr`` only G may write, ``…/gw/G/cert`` only G may read)::

    edgefleet/v1/gw/<gw>/csr     {"format": "edgefleet-csr/1", "gw": …, "csr": PEM}
    edgefleet/v1/gw/<gw>/cert    {"format": …, "gw": …, "status": "signed", "cert": PEM}
                                 or {"status": "refused", "reason": "…"}

Nothing here is secret but the token, which only the center reads (and keeps a hash of).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from edge_agent.contract.payloads import PayloadError, loads
from edge_agent.contract.topics import ENROLL_PREFIX, Topics, is_gateway_id

FORMAT = "edgefleet-csr/1"
ENROLL_MOUNT = "enrollment/"
"""The enrollment listener's ``mount_point``: its clients' topics live under it."""
CSR_MAX = 16 * 1024
"""A CSR of an EC or Ed25519 key is well under 1 KB."""
REQUEST_MAX = 32 * 1024
REPLY_MAX = 256 * 1024
TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")
NONCE = re.compile(r"[0-9a-f]{32}")
CSR_CHANNEL = "csr"
CERT_CHANNEL = "cert"

Status = Literal["signed", "pending", "refused"]


class CsrError(ValueError):
    """Not a request or reply of this contract; the message says what is wrong."""


def enrollment_identity(gateway: str) -> str:
    """The broker's name (username and client id) of ``gateway``'s enrollment."""
    return ENROLL_PREFIX + _gw(gateway)


def identity_gateway(identity: str) -> str | None:
    """The gateway whose enrollment identity ``identity`` is, or None if it is none."""
    gw = identity.removeprefix(ENROLL_PREFIX)
    return gw if gw != identity and is_gateway_id(gw) else None


def request_topic(topics: Topics, identity: str) -> str:
    """Where enrollment identity ``identity`` sends its request (as it names it, on its
    listener)."""
    return f"{topics.root}/enroll/{_identity(identity)}/request"


def reply_topic(topics: Topics, identity: str) -> str:
    return f"{topics.root}/enroll/{_identity(identity)}/reply"


def acl_patterns(topics: Topics) -> tuple[str, str]:
    """The request and reply topics with Mosquitto's ``%u`` (the client's username) for
    the identity: what the broker's ACL lets each identity write and read."""
    return f"{topics.root}/enroll/%u/request", f"{topics.root}/enroll/%u/reply"


def requests_filter(topics: Topics) -> str:
    """Every identity's request topic (the center's subscription, unmounted)."""
    return f"{topics.root}/enroll/+/request"


def replies_filter(topics: Topics) -> str:
    return f"{topics.root}/enroll/+/reply"


def topic_identity(topics: Topics, topic: str) -> str | None:
    """The enrollment identity a request's topic (as the rest of the broker sees it,
    mounted) names, or None if it is not a request topic of one."""
    prefix = mounted(f"{topics.root}/enroll/")
    if not topic.startswith(prefix):
        return None
    rest = topic[len(prefix) :].split("/")
    if len(rest) != 2 or rest[1] != "request" or identity_gateway(rest[0]) is None:
        return None
    return rest[0]


def _identity(identity: str) -> str:
    if identity_gateway(identity) is None:
        raise CsrError(f"{identity[:80]!r} is not an enrollment identity (enroll-GW)")
    return identity


def mounted(topic: str) -> str:
    """A topic of the enrollment listener as the rest of the broker (the center) sees it."""
    return ENROLL_MOUNT + topic


def renewal_topic(topics: Topics, gateway: str) -> str:
    return f"{topics.root}/gw/{_gw(gateway)}/{CSR_CHANNEL}"


def certificate_topic(topics: Topics, gateway: str) -> str:
    return f"{topics.root}/gw/{_gw(gateway)}/{CERT_CHANNEL}"


def check_nonce(nonce: str) -> str:
    if not NONCE.fullmatch(nonce):
        raise CsrError("reply must be 32 lower-case hex digits")
    return nonce


@dataclass(frozen=True, slots=True)
class EnrollRequest:
    gw: str
    token: str = field(repr=False)
    """The one-time secret: left out of the ``repr`` (tracebacks, test reports, logs)."""
    nonce: str
    csr: str

    def encode(self) -> bytes:
        body = {"format": FORMAT, "gw": self.gw, "token": self.token, "reply": self.nonce}
        return json.dumps(body | {"csr": self.csr}).encode()

    @classmethod
    def decode(cls, payload: bytes) -> EnrollRequest:
        obj = _object(payload, REQUEST_MAX)
        token = _text(obj, "token")
        if not TOKEN.fullmatch(token):
            raise CsrError("token must be 16-128 letters, digits, '-' or '_'")
        return cls(_gw(_text(obj, "gw")), token, check_nonce(_text(obj, "reply")), _csr(obj))


@dataclass(frozen=True, slots=True)
class RenewRequest:
    gw: str
    csr: str

    def encode(self) -> bytes:
        return json.dumps({"format": FORMAT, "gw": self.gw, "csr": self.csr}).encode()

    @classmethod
    def decode(cls, payload: bytes) -> RenewRequest:
        obj = _object(payload, REQUEST_MAX)
        return cls(_gw(_text(obj, "gw")), _csr(obj))


@dataclass(frozen=True, slots=True)
class Reply:
    """The center's answer: ``signed`` with the files (enrollment) or the certificate
    (renewal), or ``pending`` / ``refused`` with why."""

    gw: str
    status: Status
    reason: str = ""
    cert: str = ""
    broker: str = ""
    files: dict[str, str] | None = None
    nonce: str = ""
    """The enrollment request's ``reply`` id it answers (none for a renewal)."""

    def encode(self) -> bytes:
        obj: dict[str, Any] = {"format": FORMAT, "gw": self.gw, "status": self.status}
        if self.nonce:
            obj["reply"] = self.nonce
        if self.reason:
            obj["reason"] = self.reason
        if self.cert:
            obj["cert"] = self.cert
        if self.broker:
            obj["broker"] = self.broker
        if self.files is not None:
            obj["files"] = self.files
        return json.dumps(obj).encode()

    @classmethod
    def decode(cls, payload: bytes) -> Reply:
        obj = _object(payload, REPLY_MAX)
        status = obj.get("status")
        if status not in ("signed", "pending", "refused"):
            raise CsrError("status must be signed, pending or refused")
        files = obj.get("files")
        if files is not None and (
            not isinstance(files, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
        ):
            raise CsrError("files must map file names to their text")
        texts = {k: obj.get(k, "") for k in ("reason", "cert", "broker")}
        if not all(isinstance(v, str) for v in texts.values()):
            raise CsrError("reason, cert and broker must be text")
        nonce = obj.get("reply")
        nonce = "" if nonce is None else check_nonce(nonce if isinstance(nonce, str) else "")
        return cls(_gw(_text(obj, "gw")), status, files=files, nonce=nonce, **texts)


def _object(payload: bytes, limit: int) -> dict[str, Any]:
    if len(payload) > limit:
        raise CsrError(f"larger than {limit} bytes")
    try:
        obj = loads(payload, max_bytes=limit)  # nested past the parser's depth included
    except PayloadError:
        raise CsrError("not JSON") from None
    if obj.get("format") != FORMAT:
        raise CsrError(f"not a message of format {FORMAT}")
    return obj


def _text(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise CsrError(f"field {name!r} must be text")
    return value


def _gw(gateway: str) -> str:
    if not is_gateway_id(gateway):
        raise CsrError(f"{gateway[:80]!r} is not a gateway id")
    return gateway


def _csr(obj: dict[str, Any]) -> str:
    csr = _text(obj, "csr")
    if len(csr) > CSR_MAX or "-----BEGIN CERTIFICATE REQUEST-----" not in csr:
        raise CsrError(f"csr must be one PEM certificate request of at most {CSR_MAX} bytes")
    return csr
