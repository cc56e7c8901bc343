"""SignJwt and SignBlob through the broker, checked with google-auth's own verifiers; and the
access tokens of the broker's other flows, recognised by Google and used by a Google client.

`token-broker dev` (the session's `broker` fixture, conftest.py) signs as broker@ and reader@
with their Google-managed keys (IAM Credentials signJwt/signBlob over `dev`). Verifiers fetch
the public certificates from the broker's emulator at `/robot/v1/metadata/x509/{email}` (keyed
by key id), as they would from https://www.googleapis.com/service_accounts/v1/metadata/x509/.
"""

from __future__ import annotations

import datetime
import json
import os
import time

import grpc
import pytest

import _support as S

BROKER_SA = "broker@dev-project.iam.gserviceaccount.com"
READER_SA = "reader@dev-project.iam.gserviceaccount.com"
WRITER_SA = "writer@dev-project.iam.gserviceaccount.com"
USER_EMAIL = "dev-user@example.com"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
STORAGE_RO = "https://www.googleapis.com/auth/devstorage.read_only"
T = S.GRPC_TIMEOUT
SIGNERS = [BROKER_SA, READER_SA]

def _sign_jwt(broker, **fields):
    return broker.stub().SignJwt(broker.pb.SignJwtRequest(**fields), timeout=T)


def _sign_blob(broker, **fields):
    return broker.stub().SignBlob(broker.pb.SignBlobRequest(**fields), timeout=T)


def _invalid_argument(raised, field: str) -> None:
    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    details = S.rpc_details(error)
    fields = [v.field for v in details["BadRequest"].field_violations]
    assert fields == [field], (fields, error.details())
    assert details["ErrorInfo"].reason == "INVALID_FIELD", details["ErrorInfo"]


# --------------------------------------------------------------------------------------
# SignJwt
# --------------------------------------------------------------------------------------


def _claims(kind: str, signer: str) -> dict:
    now = int(time.time())
    base = {"iss": signer, "sub": "demo", "aud": f"https://{kind}.signing.example.com"}
    if kind == "with-exp":
        return {**base, "iat": now, "exp": now + 600}
    if kind == "exp-12h":  # the furthest exp Google accepts, minus a margin for clocks
        return {**base, "iat": now, "exp": now + 12 * 3600 - 60}
    if kind == "rich":  # claims of every JSON type, passed unchanged
        return {**base, "iat": now, "exp": now + 300, "nested": {"a": [1, 2, {"b": None}]},
                "flag": False, "ratio": 0.25, "text": "h\u00e9llo \u2603 \"quoted\" \\ </script>",
                "empty": "", "list": []}
    if kind == "without-exp":
        return base
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["with-exp", "exp-12h", "rich", "without-exp"])
@pytest.mark.parametrize("signer", SIGNERS, ids=["broker", "reader"])
def test_a_signed_jwt_verifies_with_google_auth(broker, signer, kind):
    from google.auth import crypt, jwt

    claims = _claims(kind, signer)
    response = _sign_jwt(broker, service_account=signer, payload=json.dumps(claims),
                         credential="dev")
    certs = broker.robot_certs(signer)
    assert response.key_id in certs, (response.key_id, list(certs))
    assert response.credential == "dev"

    header, unverified = S.decode_jwt_unverified(response.signed_jwt)
    assert header["kid"] == response.key_id
    assert header["alg"] == "RS256"
    assert unverified == claims  # passed unchanged, nothing added

    if "exp" in claims:
        verified = jwt.decode(response.signed_jwt, certs=certs, audience=claims["aud"])
        assert verified == claims
        with pytest.raises(ValueError):  # google-auth's errors are ValueErrors
            jwt.decode(S.tamper(response.signed_jwt), certs=certs, audience=claims["aud"])
    else:
        # google-auth's jwt.decode insists on iat and exp, which these claims do not have:
        # it checks the signature first, so "no exp" (not "Could not verify") means it held.
        with pytest.raises(ValueError, match="required claim"):
            jwt.decode(response.signed_jwt, certs=certs, audience=claims["aud"])
        with pytest.raises(ValueError, match="Could not verify token signature"):
            jwt.decode(S.tamper(response.signed_jwt), certs=certs, audience=claims["aud"])
        signed, _, signature = response.signed_jwt.rpartition(".")
        verifier = crypt.RSAVerifier.from_string(certs[response.key_id])
        from google.auth import _helpers

        assert verifier.verify(signed.encode(), _helpers.padded_urlsafe_b64decode(signature))


def test_the_payload_may_use_the_default_grant(broker):
    """No credential: the app's default grant (dev) calls IAM."""
    claims = _claims("with-exp", READER_SA)
    response = _sign_jwt(broker, service_account=READER_SA, payload=json.dumps(claims))
    assert response.credential == "dev"
    from google.auth import jwt

    assert jwt.decode(response.signed_jwt, certs=broker.robot_certs(READER_SA),
                      audience=claims["aud"]) == claims


@pytest.mark.parametrize("size", [
    60000,
    pytest.param(65536, id="65536"),  # the largest payload the proto allows
])
def test_a_large_payload_is_signed(broker, size):
    from google.auth import jwt

    now = int(time.time())
    claims = {"aud": "https://large.signing.example.com", "iat": now, "exp": now + 600}
    claims["pad"] = ""
    claims["pad"] = "a" * (size - len(json.dumps(claims)))
    payload = json.dumps(claims)
    assert len(payload) == size
    response = _sign_jwt(broker, service_account=READER_SA, payload=payload, credential="dev")
    assert jwt.decode(response.signed_jwt, certs=broker.robot_certs(READER_SA),
                      audience=claims["aud"]) == claims


def _bad_payloads():
    now = int(time.time())
    return {
        "empty": "",
        "one-byte": "{",
        "not-json": "not json",
        "array": "[1, 2]",
        "string": '"a string"',
        "number": "42",
        "null": "null",
        "trailing-garbage": '{"sub": "x"} trailing',
        "exp-past": json.dumps({"sub": "x", "exp": now - 600}),
        "exp-beyond-12h": json.dumps({"sub": "x", "exp": now + 12 * 3600 + 600}),
        "exp-string": json.dumps({"sub": "x", "exp": str(now + 600)}),
        "exp-fraction": json.dumps({"sub": "x", "exp": now + 600.5}),
        "exp-bool": json.dumps({"sub": "x", "exp": True}),
        "exp-null": json.dumps({"sub": "x", "exp": None}),
        "too-large": json.dumps({"sub": "x", "pad": "a" * 65536}),
    }


@pytest.mark.parametrize("name", list(_bad_payloads()))
def test_an_invalid_payload_is_refused_before_google(broker, name):
    payload = _bad_payloads()[name]
    calls = broker.counter("iam.signJwt")
    with pytest.raises(grpc.RpcError) as raised:
        _sign_jwt(broker, service_account=READER_SA, payload=payload, credential="dev")
    _invalid_argument(raised, "payload")
    assert broker.counter("iam.signJwt") == calls, "the broker sent an invalid payload to Google"


def test_signing_as_an_account_outside_the_grant_is_policy_denied(broker):
    with pytest.raises(grpc.RpcError) as raised:
        _sign_jwt(broker, service_account=WRITER_SA, payload='{"sub":"x"}', credential="dev")
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = S.rpc_details(raised.value)["ErrorInfo"]
    assert (info.reason, info.metadata["rule"]) == ("POLICY_DENIED", "service_accounts")


# --------------------------------------------------------------------------------------
# SignBlob
# --------------------------------------------------------------------------------------

BLOBS = {
    "text": b"hello world\n",
    "one-byte": b"\x00",
    "binary": bytes(range(256)) * 4,
    "60000-bytes": os.urandom(60000),
    "64KiB": os.urandom(65536),  # the largest payload the proto allows
}


@pytest.mark.parametrize("name", list(BLOBS))
@pytest.mark.parametrize("signer", SIGNERS, ids=["broker", "reader"])
def test_a_blob_signature_verifies_with_google_auth(broker, signer, name):
    from google.auth import crypt

    payload = BLOBS[name]
    response = _sign_blob(broker, service_account=signer, payload=payload, credential="dev")
    assert response.credential == "dev"
    assert len(response.signature) == 256  # raw RSA-2048 signature, not base64
    certs = broker.robot_certs(signer)
    assert response.key_id in certs, (response.key_id, list(certs))
    verifier = crypt.RSAVerifier.from_string(certs[response.key_id])
    assert verifier.verify(payload, response.signature)

    tampered = bytearray(payload)
    tampered[len(tampered) // 2] ^= 0x01
    assert not verifier.verify(bytes(tampered), response.signature)
    assert not verifier.verify(payload + b"x", response.signature)
    bad_signature = bytearray(response.signature)
    bad_signature[0] ^= 0x80
    assert not verifier.verify(payload, bytes(bad_signature))


def test_a_signature_does_not_verify_with_another_accounts_key(broker):
    from google.auth import crypt

    response = _sign_blob(broker, service_account=READER_SA, payload=b"whose key?",
                          credential="dev")
    for kid, pem in broker.robot_certs(BROKER_SA).items():
        assert not crypt.RSAVerifier.from_string(pem).verify(b"whose key?", response.signature)


@pytest.mark.parametrize("payload", [
    pytest.param(b"", id="empty"),
    pytest.param(b"a" * 65537, id="over-64KiB"),
])
def test_an_invalid_blob_is_refused_before_google(broker, payload):
    calls = broker.counter("iam.signBlob")
    with pytest.raises(grpc.RpcError) as raised:
        _sign_blob(broker, service_account=BROKER_SA, payload=payload, credential="dev")
    _invalid_argument(raised, "payload")
    assert broker.counter("iam.signBlob") == calls


# --------------------------------------------------------------------------------------
# Access tokens of the other flows: tokeninfo, and a Google client using them
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("credential,email,principal,grant", [
    ("dev-metadata", BROKER_SA, f"serviceAccount:{BROKER_SA}", "metadata"),
    ("dev-user", USER_EMAIL, f"user:{USER_EMAIL}", "refresh-token"),
    ("dev-reader", READER_SA, f"serviceAccount:{READER_SA}", "generate-access-token"),
])
def test_access_tokens_of_each_credential_are_recognised(broker, credential, email, principal,
                                                         grant):
    response = broker.stub().GetAccessToken(
        broker.pb.GetAccessTokenRequest(credential=credential), timeout=T)
    assert response.principal == email
    assert response.credential == credential
    assert list(response.granted_scopes) == [CLOUD_PLATFORM]
    info = broker.tokeninfo(response.access_token)
    assert info["email"] == email
    assert info["principal"] == principal
    assert info["grant"] == grant
    assert S.scopes_of(info) == {CLOUD_PLATFORM}
    assert abs(int(info["exp"]) - response.expire_time.seconds) <= 2, (info, response.expire_time)


@pytest.mark.parametrize("target", [READER_SA, WRITER_SA], ids=["reader", "writer"])
def test_impersonated_tokens_are_recognised(broker, target):
    response = broker.stub().ImpersonateServiceAccount(
        broker.pb.ImpersonateServiceAccountRequest(
            target_service_account=target, scopes=[STORAGE_RO], credential="dev"), timeout=T)
    assert response.principal == target
    assert response.token_type == "Bearer"
    info = broker.tokeninfo(response.access_token)
    assert info["email"] == target
    assert info["principal"] == f"serviceAccount:{target}"
    assert info["grant"] == "generate-access-token"
    assert info["delegates"] == []
    assert S.scopes_of(info) == {STORAGE_RO}
    # generateAccessToken reports expireTime itself: the response carries it unchanged.
    assert int(info["exp"]) == response.expire_time.seconds


def test_an_impersonation_chain_google_refuses_is_upstream_rejected(broker):
    with pytest.raises(grpc.RpcError) as raised:
        broker.stub().ImpersonateServiceAccount(
            broker.pb.ImpersonateServiceAccountRequest(
                target_service_account=READER_SA, delegates=[WRITER_SA], credential="dev"),
            timeout=T)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = S.rpc_details(raised.value)["ErrorInfo"]
    assert info.reason == "UPSTREAM_REJECTED"
    assert info.metadata["upstream_error"] == "IAM_PERMISSION_DENIED"


def _session(token: str, expire_time):
    """google-auth's AuthorizedSession around a bare access token. It cannot refresh (no
    refresh token), so it must not retry a 401 with a refresh."""
    from google.auth.transport.requests import AuthorizedSession
    from google.oauth2 import credentials

    expiry = datetime.datetime.fromtimestamp(expire_time.seconds, datetime.timezone.utc)
    creds = credentials.Credentials(token, expiry=expiry.replace(tzinfo=None))
    assert creds.valid
    return AuthorizedSession(creds, refresh_status_codes=())


def test_google_auth_uses_an_impersonated_token(broker):
    """A real client: google.oauth2.credentials.Credentials around the broker's token, sent by
    AuthorizedSession as `Authorization: Bearer` to the (emulated) Google APIs."""
    response = broker.stub().ImpersonateServiceAccount(
        broker.pb.ImpersonateServiceAccountRequest(target_service_account=READER_SA,
                                                   credential="dev"), timeout=T)
    with _session(response.access_token, response.expire_time) as session:
        r = session.get(f"{broker.emulator}/tokeninfo",
                        params={"access_token": response.access_token}, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["email"] == READER_SA
        # IAM authenticates the bearer as reader@ (403: reader@ holds no Token Creator on
        # itself), where an unknown token is 401.
        url = f"{broker.emulator}/v1/projects/-/serviceAccounts/{READER_SA}:signBlob"
        r = session.post(url, json={"payload": "aGVsbG8="}, timeout=10)
        assert r.status_code == 403, r.text
        assert S.error_info(r.json()["error"])["reason"] == "IAM_PERMISSION_DENIED"
    with _session("ya29.not-a-token", response.expire_time) as session:
        r = session.post(url, json={"payload": "aGVsbG8="}, timeout=10)
        assert r.status_code == 401, r.text


def test_google_auth_uses_a_broker_token_where_it_is_allowed(broker):
    """broker@'s token from GetAccessToken signs through IAM as itself, via AuthorizedSession."""
    import base64

    from google.auth import crypt

    response = broker.stub().GetAccessToken(broker.pb.GetAccessTokenRequest(), timeout=T)
    with _session(response.access_token, response.expire_time) as session:
        url = f"{broker.emulator}/v1/projects/-/serviceAccounts/{BROKER_SA}:signBlob"
        r = session.post(url, json={"payload": base64.b64encode(b"hi").decode()}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    pem = broker.robot_certs(BROKER_SA)[body["keyId"]]
    assert crypt.RSAVerifier.from_string(pem).verify(b"hi", base64.b64decode(body["signedBlob"]))
