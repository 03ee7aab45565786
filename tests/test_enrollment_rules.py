"""The center's rules for certificate requests (``central.enrollment``), in-process on a
real CA folder and a real SQLite store: tokens once and until they expire, requests no
token vouches for waiting, renewals only for a live identity, a new key, once an hour."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from central import enrollment
from central.enrollment import EnrollmentError
from central.pki import init_ca
from central.store.sqlite import SqliteStore
from edge_agent.contract.csr import CsrError, EnrollRequest, RenewRequest, Reply
from edge_agent.enroll_token import new_key

BROKER = "mqtts://127.0.0.1:8883"
NONCE = "0" * 32
T0 = 1_800_000_000.0


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca")
    return tmp_path / "ca"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "central.db")
    yield s
    s.close()


def request(gw: str, token: str, csr: str | None = None) -> EnrollRequest:
    return EnrollRequest(gw, token, NONCE, csr or new_key(gw).csr_pem)


def cert_key(reply: Reply) -> bytes:
    pem = reply.cert or (reply.files or {})["gateway.crt"]
    key = x509.load_pem_x509_certificate(pem.encode()).public_key()
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def test_a_token_is_good_once_and_until_it_expires(ca: Path, store: SqliteStore) -> None:
    token = enrollment.new_token(ca, "gw-1", broker=BROKER, ttl_s=60, now=T0)
    late = enrollment.enroll(ca, store, request("gw-1", token), now=T0 + 61)
    assert (late.status, "expired" in late.reason) == ("refused", True)
    token = enrollment.new_token(ca, "gw-1", site="north", broker=BROKER, now=T0)
    first = enrollment.enroll(ca, store, request("gw-1", token), now=T0 + 1)
    assert first.status == "signed" and first.broker == BROKER
    assert "north" in (first.files or {})["agent.yaml"]
    second = enrollment.enroll(ca, store, request("gw-1", token), now=T0 + 2)
    assert (second.status, "used already" in second.reason) == ("refused", True)
    assert [i.gateway for i in store.identities()] == ["gw-1"]
    # another gateway's token is not this one's, and a gateway with none gets nothing
    other = enrollment.new_token(ca, "gw-2", broker=BROKER, now=T0)
    stranger = enrollment.enroll(ca, store, request("gw-3", other), now=T0)
    assert (stranger.status, "no token" in stranger.reason) == ("refused", True)
    assert enrollment.pending(ca) == []
    wrong = enrollment.enroll(ca, store, request("gw-2", "x" * 32), now=T0)
    assert (wrong.status, wrong.reason) == ("refused", "not this gateway's token")


def review_token(ca: Path, gw: str, site: str = "") -> str:
    """A ``--review`` token: its request waits for ``fleet provision approve``."""
    return enrollment.new_token(ca, gw, site=site, broker=BROKER, review=True, now=T0)


def test_a_review_token_waits_and_only_the_approved_key_is_signed(
    ca: Path, store: SqliteStore
) -> None:
    key = new_key("gw-9")
    ask = request("gw-9", review_token(ca, "gw-9"), key.csr_pem)
    assert enrollment.enroll(ca, store, ask, now=T0).status == "pending"
    assert enrollment.enroll(ca, store, ask, now=T0 + 5).status == "pending"
    (waiting,) = enrollment.pending(ca)
    assert (waiting.key_fingerprint, waiting.requests) == (key.fingerprint, 2)
    assert store.identities("gw-9") == []
    with pytest.raises(EnrollmentError):
        enrollment.approve(ca, store, "gw-unknown", key=key.fingerprint, now=T0)
    enrollment.approve(ca, store, "gw-9", key=key.fingerprint, site="south", now=T0 + 5)
    # another key asking with the token after the approval is refused, the approved one
    # signed, with the broker of the token
    stranger = enrollment.enroll(ca, store, request("gw-9", ask.token), now=T0 + 6)
    assert stranger.status == "refused"
    signed = enrollment.enroll(ca, store, ask, now=T0 + 7)
    assert (signed.status, signed.broker) == ("signed", BROKER)
    assert enrollment.pending(ca) == []
    assert [i.gateway for i in store.identities()] == ["gw-9"]


def test_nothing_waits_without_a_token(ca: Path, store: SqliteStore) -> None:
    """Only a token's holder gets a request to wait, one per token (the newest key's):
    no flood of names fills the operator's list or the CA folder."""
    csr = new_key("x").csr_pem
    replies = [enrollment.enroll(ca, store, request(f"gw-{i}", "t" * 32, csr)) for i in range(5)]
    assert {r.status for r in replies} == {"refused"}
    token = review_token(ca, "gw-1")
    for _ in range(3):
        assert enrollment.enroll(ca, store, request("gw-1", token), now=T0).status == "pending"
    (waiting,) = enrollment.pending(ca)
    assert waiting.requests == 3


def test_a_renewal_needs_a_live_identity_a_new_key_and_an_hour(
    ca: Path, store: SqliteStore
) -> None:
    token = enrollment.new_token(ca, "gw-1", broker=BROKER, now=T0)
    assert enrollment.enroll(ca, store, request("gw-1", token), now=T0).status == "signed"
    renewal = RenewRequest("gw-1", new_key("gw-1").csr_pem)
    soon = enrollment.renew(ca, store, "gw-1", renewal, now=T0 + 60)
    assert (soon.status, "an hour" in soon.reason) == ("refused", True)
    later = enrollment.renew(ca, store, "gw-1", renewal, now=T0 + 7200)
    assert later.status == "signed"
    # the same request again (its answer lost): the same certificate, no new identity
    again = enrollment.renew(ca, store, "gw-1", renewal, now=T0 + 7300)
    assert again.status == "signed" and cert_key(again) == cert_key(later)
    assert again.cert == later.cert
    assert len(store.identities("gw-1")) == 2
    # on another gateway's topic, or for a gateway revoked or never seen: refused
    assert enrollment.renew(ca, store, "gw-2", renewal).status == "refused"
    assert enrollment.renew(ca, store, "gw-7", RenewRequest("gw-7", renewal.csr)).status == (
        "refused"
    )
    store.revoke_identities("gw-1", T0 + 8000)
    fresh = RenewRequest("gw-1", new_key("gw-1").csr_pem)
    gone = enrollment.renew(ca, store, "gw-1", fresh, now=T0 + 20000)
    assert (gone.status, "revoked" in gone.reason) == ("refused", True)


def test_the_contract_refuses_what_is_not_a_request() -> None:
    for payload in (
        b"{}",
        b"not json",
        b'{"format": "edgefleet-csr/1", "gw": "a/b", "token": "t", "reply": "0", "csr": ""}',
        b"x" * 100_000,
        # nested past the parser's depth, under the size limit: a RecursionError before
        b'{"format": "edgefleet-csr/1", "gw": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
        b"[1]",
    ):
        with pytest.raises(CsrError):
            EnrollRequest.decode(payload)
        with pytest.raises(CsrError):
            RenewRequest.decode(payload)
    good = request("gw-1", "t" * 32)
    assert EnrollRequest.decode(good.encode()) == good
    with pytest.raises(CsrError):
        EnrollRequest.decode(good.encode().replace(NONCE.encode(), b"../../etc"))


def test_a_request_for_another_key_type_or_not_signed_by_its_key_is_refused(
    ca: Path, store: SqliteStore
) -> None:
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-1")]))
        .sign(rsa_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    token = enrollment.new_token(ca, "gw-1", broker=BROKER)
    refused = enrollment.enroll(ca, store, request("gw-1", token, csr))
    assert (refused.status, "P-256" in refused.reason) == ("refused", True)
    # the token is still good: a refused request does not use it up
    assert enrollment.enroll(ca, store, request("gw-1", token)).status == "signed"
    assert len(store.identities("gw-1")) == 1


def test_a_request_in_the_centers_name_is_refused_not_left_for_an_operator(
    ca: Path, store: SqliteStore
) -> None:
    """The broker's ACL gives the name edgefleet-central the center's rights: no request
    may wait for an operator to sign it (fleet provision refuses those names too)."""
    for name in ("edgefleet-central", "edgefleet-watch"):
        reply = enrollment.enroll(ca, store, request(name, "t" * 32), now=T0)
        assert (reply.status, "center" in reply.reason) == ("refused", True), reply
    assert enrollment.pending(ca) == []
    with pytest.raises(EnrollmentError, match="center"):
        enrollment.approve(ca, store, "edgefleet-central", key="0" * 64, broker=BROKER)
    assert store.identities() == []


def test_approve_signs_only_the_key_the_operator_compared(ca: Path, store: SqliteStore) -> None:
    """Anyone on the enrollment listener may ask in a gateway's name, and the newest
    request waits: one sent between the operator's look and the approval must not be the
    one signed."""
    real, forged = new_key("gw-5"), new_key("gw-5")
    token = review_token(ca, "gw-5")
    enrollment.enroll(ca, store, request("gw-5", token, real.csr_pem), now=T0)
    enrollment.enroll(ca, store, request("gw-5", token, forged.csr_pem), now=T0 + 1)
    with pytest.raises(EnrollmentError, match=forged.fingerprint):
        enrollment.approve(ca, store, "gw-5", key=real.fingerprint, now=T0 + 2)
    assert store.identities("gw-5") == []
    (waiting,) = enrollment.pending(ca)
    assert waiting.approved is None
    # the key it shows is approved (a prefix is enough, if it is 16 hex digits or more)
    enrollment.approve(ca, store, "gw-5", key=forged.fingerprint[:16], now=T0 + 2)
    assert len(store.identities("gw-5")) == 1
    with pytest.raises(EnrollmentError, match="16"):
        enrollment.approve(ca, store, "gw-5", key=forged.fingerprint[:8], now=T0 + 2)


def test_a_request_that_cannot_be_signed_does_not_wait(ca: Path, store: SqliteStore) -> None:
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    other_curve = ec.generate_private_key(ec.SECP384R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-7")]))
        .sign(other_curve, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    token = review_token(ca, "gw-7")
    reply = enrollment.enroll(ca, store, request("gw-7", token, csr), now=T0)
    assert (reply.status, "P-256" in reply.reason) == ("refused", True)
    assert enrollment.pending(ca) == []


def test_fleet_provision_approve_wants_the_key_and_refuses_another(
    ca: Path, store: SqliteStore, tmp_path: Path
) -> None:
    from tests.support import run_cli  # noqa: PLC0415

    real, forged = new_key("gw-6"), new_key("gw-6")
    token = enrollment.new_token(ca, "gw-6", broker=BROKER, review=True)
    enrollment.enroll(ca, store, request("gw-6", token, real.csr_pem))
    enrollment.enroll(ca, store, request("gw-6", token, forged.csr_pem))
    base = ["fleet", "provision", "approve", "gw-6", "--ca-dir", str(ca)]
    base += ["--db", str(tmp_path / "central.db")]
    bare = run_cli(*base)
    assert bare.returncode == 2 and "--key" in bare.stderr, bare.stderr
    wrong = run_cli(*base, "--key", real.fingerprint)
    assert wrong.returncode == 1 and forged.fingerprint in wrong.stderr, wrong.stderr
    assert store.identities("gw-6") == []
    right = run_cli(*base, "--key", forged.fingerprint.upper())
    assert right.returncode == 0 and forged.fingerprint in right.stdout, right.stderr
    assert len(store.identities("gw-6")) == 1


def test_a_token_or_a_request_waiting_does_not_outlive_fleet_revoke(
    ca: Path, tmp_path: Path
) -> None:
    """A token made before the gateway was revoked (for a re-enrollment that did not
    happen) would otherwise enroll a new key after it, and so take the gateway off the
    revoked list: revoking undone by whoever holds the token."""
    from tests.support import run_cli  # noqa: PLC0415

    db = str(tmp_path / "central.db")
    common = ["--ca-dir", str(ca), "--db", db]
    made = run_cli("fleet", "provision", "gw-r", *common, "--out", str(tmp_path / "r.bundle"))
    assert made.returncode == 0, made.stderr
    minted = run_cli("fleet", "provision", "gw-r", "--token", "--ca-dir", str(ca))
    token = minted.stdout.splitlines()[1]
    revoked = run_cli("fleet", "revoke", "gw-r", *common)
    assert revoked.returncode == 0, revoked.stderr
    assert "token" in revoked.stdout, revoked.stdout
    store = SqliteStore(tmp_path / "central.db")
    try:
        late = enrollment.enroll(ca, store, request("gw-r", token))
        assert (late.status, "no token" in late.reason) == ("refused", True), late
        assert len(store.identities("gw-r")) == 1
        assert all(i.revoked is not None for i in store.identities("gw-r"))
    finally:
        store.close()
    assert (ca / "revoked.txt").read_text().splitlines()[-1] == "gw-r"


def test_a_renewal_while_fleet_revoke_runs_is_refused_and_leaves_it_revoked(
    ca: Path, store: SqliteStore
) -> None:
    """fleet revoke puts the gateway on the CRL and the revoked list first, and marks its
    identities in the registry after; its live session may still ask for a renewal in
    between. Signed then, the new certificate would be on no CRL, and taking it as a
    gateway provisioned again would take it off the revoked list."""
    from central.revocation import revoke, revoked_gateways  # noqa: PLC0415

    token = enrollment.new_token(ca, "gw-1", broker=BROKER, now=T0)
    assert enrollment.enroll(ca, store, request("gw-1", token), now=T0).status == "signed"
    revoke(ca, "gw-1")  # the CA folder's part done; the registry's not yet
    renewal = RenewRequest("gw-1", new_key("gw-1").csr_pem)
    late = enrollment.renew(ca, store, "gw-1", renewal, now=T0 + 7200)
    assert (late.status, "revoked" in late.reason) == ("refused", True)
    assert revoked_gateways(ca) == ["gw-1"]
    assert len(store.identities("gw-1")) == 1


def test_a_token_asked_again_for_the_same_key_gets_the_same_answer(
    ca: Path, store: SqliteStore
) -> None:
    """The token is used before the answer goes out; if that answer is lost (the gateway's
    link dropped), the gateway asks again with the same key and must get its certificate,
    not 'used already' (a technician sent back for a new token). Another key is refused."""
    token = enrollment.new_token(ca, "gw-1", site="north", broker=BROKER, now=T0)
    key = new_key("gw-1")
    first = enrollment.enroll(ca, store, request("gw-1", token, key.csr_pem), now=T0 + 1)
    assert first.status == "signed"
    again = enrollment.enroll(ca, store, request("gw-1", token, key.csr_pem), now=T0 + 6)
    assert again.status == "signed", again
    assert again.files == first.files and again.broker == BROKER
    assert len(store.identities("gw-1")) == 1
    other = enrollment.enroll(ca, store, request("gw-1", token), now=T0 + 7)
    assert (other.status, "used already" in other.reason) == ("refused", True)
    # and a wrong token with the right key gets nothing
    wrong = enrollment.enroll(ca, store, request("gw-1", "x" * 32, key.csr_pem), now=T0 + 8)
    assert wrong.status == "refused"


def test_a_revoked_list_edited_by_hand_answers_no_renewal(ca: Path, store: SqliteStore) -> None:
    """Not to be read, the revoked list cannot say the gateway is not on it: no answer
    (the signing service says why; the gateway asks again), and no certificate."""
    token = enrollment.new_token(ca, "gw-1", broker=BROKER, now=T0)
    assert enrollment.enroll(ca, store, request("gw-1", token), now=T0).status == "signed"
    (ca / "revoked.txt").write_text("gw-1 # lost the box\n")
    renewal = RenewRequest("gw-1", new_key("gw-1").csr_pem)
    with pytest.raises(EnrollmentError, match=r"revoked\.txt"):
        enrollment.renew(ca, store, "gw-1", renewal, now=T0 + 7200)
    assert len(store.identities("gw-1")) == 1


def test_an_approved_request_asked_again_for_the_same_key_gets_the_same_answer(
    ca: Path, store: SqliteStore
) -> None:
    """The answer to an approved request can be lost on the way as a token's can: the
    same key asking again must get it again, not wait for a second approval."""
    key = new_key("gw-8")
    ask = request("gw-8", review_token(ca, "gw-8"), key.csr_pem)
    assert enrollment.enroll(ca, store, ask, now=T0).status == "pending"
    enrollment.approve(ca, store, "gw-8", key=key.fingerprint, site="east", now=T0 + 1)
    first = enrollment.enroll(ca, store, ask, now=T0 + 5)
    assert first.status == "signed"
    again = enrollment.enroll(ca, store, ask, now=T0 + 10)
    assert (again.status, again.files) == ("signed", first.files)
    assert enrollment.pending(ca) == []
    assert len(store.identities("gw-8")) == 1
    # another key, with the token now used, is refused
    other = enrollment.enroll(ca, store, request("gw-8", ask.token), now=T0 + 11)
    assert (other.status, "used already" in other.reason) == ("refused", True)
