"""IAM Credentials calls that google-auth makes only to the hard-coded iamcredentials host
(google-protocols.md §5.3-§5.5, §10.3 "still hard-coded"). They are reached here by patching
google-auth's module constants (monkeypatch, undone after each test) — the only way short of an
HTTPS-intercepting proxy. Everything else about these flows is the real library code."""

import base64
import json
import time

import pytest
import requests

import _support as S


@pytest.fixture
def iam_on_emulator(emulator, monkeypatch):
    from google.auth import iam, impersonated_credentials

    base = f"{emulator.url}/v1/projects/-/serviceAccounts/{{}}"
    monkeypatch.setattr(iam, "_IAM_ENDPOINT", base + ":generateAccessToken")
    monkeypatch.setattr(iam, "_IAM_SIGN_ENDPOINT", base + ":signBlob")
    monkeypatch.setattr(iam, "_IAM_SIGNJWT_ENDPOINT", base + ":signJwt")
    monkeypatch.setattr(iam, "_IAM_IDTOKEN_ENDPOINT", base + ":generateIdToken")
    monkeypatch.setattr(impersonated_credentials, "_GOOGLE_OAUTH2_TOKEN_ENDPOINT",
                        f"{emulator.url}/token")
    return emulator


def _robot_public_key(emulator, email, kid):
    from cryptography import x509

    r = requests.get(f"{emulator.url}/robot/v1/metadata/x509/{email}", timeout=S.HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    certs = r.json()
    assert kid in certs, f"signing key {kid} not published for {email}: {list(certs)}"
    return x509.load_pem_x509_certificate(certs[kid].encode()).public_key()


def test_sign_blob(iam_on_emulator, broker_creds, request_):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from google.auth import iam

    from cryptography import x509

    emulator = iam_on_emulator
    signer = iam.Signer(request_, broker_creds, S.READER)
    sig = signer.sign(b"hello world")
    assert signer.key_id is None  # google-auth never knows IAM's key id ahead of time
    # the raw call names the key; it is published for the account
    r = emulator.iam(S.READER, "signBlob", {"payload": base64.b64encode(b"hello world").decode()},
                     broker_creds.token)
    assert r.status_code == 200, r.text
    pub = _robot_public_key(emulator, S.READER, r.json()["keyId"])
    pub.verify(base64.b64decode(r.json()["signedBlob"]), b"hello world", padding.PKCS1v15(),
               hashes.SHA256())
    # and the signature google-auth got verifies with one of the published keys
    certs = requests.get(f"{emulator.url}/robot/v1/metadata/x509/{S.READER}", timeout=S.HTTP_TIMEOUT).json()
    ok = 0
    for pem in certs.values():
        try:
            x509.load_pem_x509_certificate(pem.encode()).public_key().verify(
                sig, b"hello world", padding.PKCS1v15(), hashes.SHA256())
            ok += 1
        except Exception:
            pass
    assert ok == 1


def test_sign_blob_denied(iam_on_emulator, request_):
    from google.auth import exceptions
    from google.oauth2 import service_account

    emulator = iam_on_emulator
    c = service_account.Credentials.from_service_account_file(
        str(emulator.key_file("broker")), scopes=[S.IAM_SCOPE])
    c.refresh(request_)
    r = emulator.iam(S.NODWD, "signBlob", {"payload": base64.b64encode(b"x").decode()}, c.token)
    err = S.google_error(r, 403, "PERMISSION_DENIED")
    info = S.error_info(err)
    assert info and info["metadata"]["permission"] == "iam.serviceAccounts.signBlob"


def test_sign_jwt_raw(iam_on_emulator, request_):
    from google.auth import jwt
    from google.oauth2 import service_account

    emulator = iam_on_emulator
    c = service_account.Credentials.from_service_account_file(
        str(emulator.key_file("broker")), scopes=[S.IAM_SCOPE])
    c.refresh(request_)
    now = int(time.time())
    payload = {"iss": S.READER, "sub": S.READER, "aud": "https://x.example", "iat": now, "exp": now + 600}
    r = emulator.iam(S.READER, "signJwt", {"payload": json.dumps(payload)}, c.token)
    assert r.status_code == 200, r.text
    body = r.json()
    certs = requests.get(f"{emulator.url}/robot/v1/metadata/x509/{S.READER}", timeout=S.HTTP_TIMEOUT).json()
    claims = jwt.decode(body["signedJwt"], certs=certs, audience="https://x.example")
    assert claims["iss"] == S.READER
    header, _ = S.decode_jwt_unverified(body["signedJwt"])
    assert header["kid"] == body["keyId"] and header["alg"] == "RS256"
    # exp more than 12 h ahead is refused
    payload["exp"] = now + 13 * 3600
    r = emulator.iam(S.READER, "signJwt", {"payload": json.dumps(payload)}, c.token)
    S.google_error(r, 400, "INVALID_ARGUMENT")


def test_impersonated_id_token(iam_on_emulator, broker_creds, request_):
    from google.auth import impersonated_credentials
    from google.oauth2 import id_token

    emulator = iam_on_emulator
    target = impersonated_credentials.Credentials(
        source_credentials=broker_creds, target_principal=S.READER,
        target_scopes=[S.CLOUD_PLATFORM], iam_endpoint_override=emulator.iam_url(S.READER))
    creds = impersonated_credentials.IDTokenCredentials(
        target, target_audience="https://run.example", include_email=True)
    creds.refresh(request_)
    claims = id_token.verify_token(creds.token, request_, audience="https://run.example",
                                   certs_url=f"{emulator.url}/oauth2/v1/certs")
    assert claims["email"] == S.READER and claims["iss"] == "https://accounts.google.com"
    assert S.epoch(creds.expiry) == claims["exp"]


def test_impersonated_domain_wide_delegation(iam_on_emulator, broker_creds, request_):
    """subject=: signJwt as the target, then the JWT-bearer grant (aud = the token URL)."""
    from google.auth import impersonated_credentials

    emulator = iam_on_emulator
    creds = impersonated_credentials.Credentials(
        source_credentials=broker_creds, target_principal=S.DELEGATED,
        target_scopes=[S.CLOUD_PLATFORM], subject=S.DWD_USER,
        iam_endpoint_override=emulator.iam_url(S.DELEGATED))
    creds.refresh(request_)
    info = emulator.tokeninfo(creds.token)
    assert info["subject"] == S.DWD_USER
    assert info["principal"] == f"user:{S.DWD_USER}"
    assert info["email"] == S.DWD_USER
    assert info["grant"] == "jwt-bearer"
    S.assert_expiry_matches(creds, info)


def test_compute_engine_id_token_default_mode(iam_on_emulator, request_):
    """Default mode: an assertion signed through IAM signBlob by the VM's account, then the
    JWT-bearer grant with target_audience at token_uri (§3.8)."""
    from google.auth import compute_engine
    from google.oauth2 import id_token

    emulator = iam_on_emulator
    creds = compute_engine.IDTokenCredentials(request_, "https://svc.example",
                                              token_uri=f"{emulator.url}/token")
    creds.refresh(request_)
    claims = id_token.verify_token(creds.token, request_, audience="https://svc.example",
                                   certs_url=f"{emulator.url}/oauth2/v1/certs")
    assert claims["email"] == S.BROKER
