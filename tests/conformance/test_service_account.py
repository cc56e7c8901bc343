"""service_account.Credentials / IDTokenCredentials against the OAuth2 token endpoint
(google-protocols.md §1, §8, §10.1), plus the hand-built negative cases of §1.2 / §1.5."""

import time

import pytest
import requests

import _support as S


def sa_creds(emulator, account_id="broker", scopes=(S.CLOUD_PLATFORM,), subject=None):
    from google.oauth2 import service_account

    creds = service_account.Credentials.from_service_account_file(
        str(emulator.key_file(account_id)), scopes=list(scopes))
    return creds.with_subject(subject) if subject else creds


def assertion(emulator, account_id="broker", **overrides):
    """A JWT-bearer assertion signed with the account's key file, like google-auth builds it."""
    from google.auth import crypt, jwt

    info = emulator.key_info(account_id)
    now = int(time.time())
    claims = {"iss": info["client_email"], "scope": S.CLOUD_PLATFORM, "aud": S.GOOGLE_TOKEN_URL,
              "iat": now, "exp": now + 3600}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    signer = crypt.RSASigner.from_service_account_info(info)
    tok = jwt.encode(signer, claims)
    return tok.decode() if isinstance(tok, bytes) else tok


def grant(emulator, a):
    return emulator.post_token({"grant_type": S.JWT_BEARER, "assertion": a})


# ---------------------------------------------------------------- key files


def test_key_files_are_google_format(emulator, url):
    for account_id, email in [("broker", S.BROKER), ("nodwd", S.NODWD)]:
        info = emulator.key_info(account_id)
        assert info["type"] == "service_account"
        assert info["client_email"] == email
        assert info["project_id"] == S.PROJECT_ID
        assert info["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
        assert info["private_key_id"]
        assert info["client_id"].isdigit() and len(info["client_id"]) == 21
        assert info["token_uri"] == f"{url}/token"
    for keyless in ("reader", "writer", "deep", "longlived"):
        assert not emulator.key_file(keyless).exists(), keyless


# ---------------------------------------------------------------- positive flows


def test_access_token_with_scopes(emulator, request_):
    creds = sa_creds(emulator, scopes=[S.CLOUD_PLATFORM, S.USERINFO_EMAIL])
    creds.refresh(request_)
    assert creds.token and creds.valid
    info = emulator.tokeninfo(creds.token)
    assert info["principal"] == f"serviceAccount:{S.BROKER}"
    assert info["email"] == S.BROKER
    assert info["grant"] == "jwt-bearer"
    assert info["subject"] is None
    assert info["delegates"] == []
    assert info["access_boundary"] is None
    assert S.scopes_of(info) == {S.CLOUD_PLATFORM, S.USERINFO_EMAIL}
    assert info["expires_in"].isdigit()  # a string, as Google sends it
    assert isinstance(info["exp"], str) and info["exp"].isdigit()  # Google sends a string
    assert info["email_verified"] == "true"
    assert info["azp"] and info["aud"]
    S.assert_expiry_matches(creds, info)
    S.assert_remaining(creds, 3599)  # Google's expires_in for the token endpoint


def test_token_response_shape(emulator):
    r = grant(emulator, assertion(emulator))
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 225
    assert isinstance(body["access_token"], str) and body["access_token"]


def test_single_scope_other_account(emulator, request_):
    creds = sa_creds(emulator, "nodwd", scopes=[S.DEVSTORAGE_RO])
    creds.refresh(request_)
    info = emulator.tokeninfo(creds.token)
    assert info["principal"] == f"serviceAccount:{S.NODWD}"
    assert S.scopes_of(info) == {S.DEVSTORAGE_RO}
    S.assert_expiry_matches(creds, info)


def test_domain_wide_delegation(emulator, request_):
    creds = sa_creds(emulator, scopes=[S.DEVSTORAGE_RO], subject=S.DWD_USER)
    creds.refresh(request_)
    info = emulator.tokeninfo(creds.token)
    assert info["subject"] == S.DWD_USER
    assert info["grant"] == "jwt-bearer"
    # README: a domain-wide-delegation token is the user's
    assert info["principal"] == f"user:{S.DWD_USER}"
    assert S.scopes_of(info) == {S.DEVSTORAGE_RO}
    S.assert_expiry_matches(creds, info)


@pytest.mark.parametrize("aud", ["{url}/token", "https://www.googleapis.com/oauth2/v4/token"])
def test_assertion_audiences_accepted(emulator, url, aud):
    """§10.1: Google's URL (what Python sends), the emulator's own URL (Go), the v4 URL."""
    r = grant(emulator, assertion(emulator, aud=aud.format(url=url)))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path", ["/oauth2/v4/token", "/o/oauth2/token"])
def test_token_endpoint_aliases(emulator, path):
    r = emulator.post_token({"grant_type": S.JWT_BEARER, "assertion": assertion(emulator)}, path)
    assert r.status_code == 200, r.text


def test_assertion_with_kid_missing_is_accepted(emulator):
    """kid is optional for the verifier (§1.2): it finds the key by iss."""
    from google.auth import crypt, jwt

    info = emulator.key_info("broker")
    signer = crypt.RSASigner.from_string(info["private_key"])  # no key id
    now = int(time.time())
    a = jwt.encode(signer, {"iss": S.BROKER, "scope": S.CLOUD_PLATFORM,
                            "aud": S.GOOGLE_TOKEN_URL, "iat": now - 10, "exp": now + 3590})
    r = grant(emulator, a.decode())
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------- ID tokens


def test_id_token_and_verification(emulator, url, request_):
    from google.oauth2 import id_token, service_account

    aud = "https://my-service.example.com"
    creds = service_account.IDTokenCredentials.from_service_account_file(
        str(emulator.key_file("broker")), target_audience=aud)
    creds.refresh(request_)
    claims = id_token.verify_token(creds.token, request_, audience=aud,
                                   certs_url=f"{url}/oauth2/v1/certs")
    assert claims["iss"] == "https://accounts.google.com"
    assert claims["aud"] == aud
    assert claims["email"] == S.BROKER
    assert claims["email_verified"] is True
    uid = emulator.key_info("broker")["client_id"]
    assert claims["sub"] == uid
    assert claims["azp"] in (uid, S.BROKER)
    assert isinstance(claims["exp"], int) and claims["exp"] - claims["iat"] == 3600
    assert S.epoch(creds.expiry) == claims["exp"]
    header, _ = S.decode_jwt_unverified(creds.token)
    assert header["alg"] == "RS256" and header["kid"]


def test_id_token_response_is_only_id_token(emulator):
    r = grant(emulator, assertion(emulator, scope=None, target_audience="https://aud.example"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert "id_token" in body and "access_token" not in body


def _verify_with_jwks(jwks, token):
    """Verifies an RS256 JWT against a JWKS with cryptography only (no PyJWT)."""
    import base64

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    def b64(s):
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

    header, claims = S.decode_jwt_unverified(token)
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    assert key["kty"] == "RSA" and key.get("alg", "RS256") == "RS256"
    pub = rsa.RSAPublicNumbers(int.from_bytes(b64(key["e"]), "big"),
                               int.from_bytes(b64(key["n"]), "big")).public_key()
    h, c, s = token.split(".")
    pub.verify(b64(s), f"{h}.{c}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return claims


def test_id_token_verifies_against_v3_jwks(emulator, url, request_):
    from google.oauth2 import service_account

    creds = service_account.IDTokenCredentials.from_service_account_file(
        str(emulator.key_file("broker")), target_audience="https://aud.example")
    creds.refresh(request_)
    r = requests.get(f"{url}/oauth2/v3/certs", timeout=S.HTTP_TIMEOUT)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    claims = _verify_with_jwks(r.json(), creds.token)
    assert claims["aud"] == "https://aud.example"


def test_id_token_google_auth_jwks_path(emulator, url, request_):
    """google-auth verifies against a JWKS URL only with PyJWT installed (§8.2)."""
    pytest.importorskip("jwt")
    from google.oauth2 import id_token, service_account

    creds = service_account.IDTokenCredentials.from_service_account_file(
        str(emulator.key_file("broker")), target_audience="https://aud.example")
    creds.refresh(request_)
    id_token.verify_token(creds.token, request_, audience="https://aud.example",
                          certs_url=f"{url}/oauth2/v3/certs")


def test_openid_configuration(url):
    r = requests.get(f"{url}/.well-known/openid-configuration", timeout=S.HTTP_TIMEOUT)
    assert r.status_code == 200
    doc = r.json()
    assert doc["issuer"] == "https://accounts.google.com"
    assert doc["jwks_uri"].startswith("http://127.0.0.1:") and doc["jwks_uri"].endswith("/oauth2/v3/certs")


def test_signing_key_rotation_keeps_previous_key(emulator, url, request_):
    from google.oauth2 import id_token, service_account

    def mint():
        c = service_account.IDTokenCredentials.from_service_account_file(
            str(emulator.key_file("broker")), target_audience="https://aud.example")
        c.refresh(request_)
        return c.token

    before = mint()
    emulator.rotate_signing_key()
    after = mint()
    kid_before = S.decode_jwt_unverified(before)[0]["kid"]
    kid_after = S.decode_jwt_unverified(after)[0]["kid"]
    assert kid_before != kid_after
    certs = requests.get(f"{url}/oauth2/v1/certs", timeout=S.HTTP_TIMEOUT).json()
    assert {kid_before, kid_after} <= set(certs)
    jwks = requests.get(f"{url}/oauth2/v3/certs", timeout=S.HTTP_TIMEOUT).json()
    assert {kid_before, kid_after} <= {k["kid"] for k in jwks["keys"]}
    for tok in (before, after):
        id_token.verify_token(tok, request_, audience="https://aud.example",
                              certs_url=f"{url}/oauth2/v1/certs")


def test_robot_x509_certs_verify_self_signed_jwt(emulator, url):
    """§8.3: /robot/v1/metadata/x509/{email} is keyed by private_key_id and verifies
    google-auth's self-signed JWTs (which make no network call)."""
    from google.auth import jwt
    from google.auth.transport.requests import Request

    info = emulator.key_info("broker")
    r = requests.get(f"{url}/robot/v1/metadata/x509/{S.BROKER}", timeout=S.HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    certs = r.json()
    assert info["private_key_id"] in certs
    creds = jwt.Credentials.from_service_account_info(info, audience="https://pubsub.googleapis.com/")
    creds.refresh(Request())
    claims = jwt.decode(creds.token, certs=certs, audience="https://pubsub.googleapis.com/")
    assert claims["iss"] == S.BROKER and claims["sub"] == S.BROKER


# ---------------------------------------------------------------- negative cases


def test_tampered_assertion(emulator):
    body = S.oauth_error(grant(emulator, S.tamper(assertion(emulator))), 400, "invalid_grant")
    assert body.get("error_description")


def test_tampered_assertion_via_google_auth(emulator, request_):
    """google-auth surfaces the OAuth error and does not retry invalid_grant."""
    from google.auth import exceptions
    from google.oauth2 import _client

    emulator.reset_counters()
    with pytest.raises(exceptions.RefreshError) as e:
        _client.jwt_grant(request_, f"{emulator.url}/token", S.tamper(assertion(emulator)))
    assert "invalid_grant" in str(e.value)
    assert emulator.counter("oauth2.token") == 1


def test_wrong_audience(emulator):
    S.oauth_error(grant(emulator, assertion(emulator, aud="https://example.com/token")),
                  400, "invalid_grant")


def test_expired_assertion(emulator):
    now = int(time.time())
    S.oauth_error(grant(emulator, assertion(emulator, iat=now - 7200, exp=now - 3600)),
                  400, "invalid_grant")


def test_assertion_longer_than_an_hour(emulator):
    now = int(time.time())
    S.oauth_error(grant(emulator, assertion(emulator, iat=now, exp=now + 7200)),
                  400, "invalid_grant")


def test_assertion_from_the_future(emulator):
    now = int(time.time())
    S.oauth_error(grant(emulator, assertion(emulator, iat=now + 1800, exp=now + 3600)),
                  400, "invalid_grant")


def test_unknown_issuer(emulator):
    S.oauth_error(grant(emulator, assertion(emulator, iss=S.sa("ghost"))), 400, "invalid_grant")


def test_assertion_signed_by_another_accounts_key(emulator):
    """nodwd@'s key signing an assertion for broker@."""
    from google.auth import crypt, jwt

    other = emulator.key_info("nodwd")
    now = int(time.time())
    a = jwt.encode(crypt.RSASigner.from_service_account_info(other),
                   {"iss": S.BROKER, "scope": S.CLOUD_PLATFORM, "aud": S.GOOGLE_TOKEN_URL,
                    "iat": now, "exp": now + 3600})
    S.oauth_error(grant(emulator, a.decode()), 400, "invalid_grant")


def test_disabled_account(emulator, request_):
    if not emulator.key_file("disabled").exists():
        pytest.skip("emulator wrote no key file for the disabled account")
    S.oauth_error(grant(emulator, assertion(emulator, "disabled")), 400, "invalid_grant")


def test_missing_scope(emulator):
    """§1.2: scope is required for access tokens; empty or missing gives invalid_scope."""
    S.oauth_error(grant(emulator, assertion(emulator, scope=None)), 400, "invalid_scope")


def test_unsupported_grant_type(emulator):
    S.oauth_error(emulator.post_token({"grant_type": "password", "username": "x"}), 400,
                  "unsupported_grant_type")


def test_dwd_on_account_without_dwd(emulator, request_):
    from google.auth import exceptions

    r = grant(emulator, assertion(emulator, "nodwd", sub=S.DWD_USER))
    S.oauth_error(r, (400, 401), "unauthorized_client")
    creds = sa_creds(emulator, "nodwd", subject=S.DWD_USER)
    with pytest.raises(exceptions.RefreshError) as e:
        creds.refresh(request_)
    assert "unauthorized_client" in str(e.value)


def test_dwd_scope_not_allowed(emulator, request_):
    from google.auth import exceptions

    r = grant(emulator, assertion(emulator, sub=S.DWD_USER, scope=S.CLOUD_PLATFORM))
    S.oauth_error(r, (400, 401), "unauthorized_client")
    # one allowed and one not: still refused
    r = grant(emulator, assertion(emulator, sub=S.DWD_USER,
                                  scope=f"{S.DEVSTORAGE_RO} {S.CLOUD_PLATFORM}"))
    S.oauth_error(r, (400, 401), "unauthorized_client")
    creds = sa_creds(emulator, scopes=[S.CLOUD_PLATFORM], subject=S.DWD_USER)
    with pytest.raises(exceptions.RefreshError) as e:
        creds.refresh(request_)
    assert "unauthorized_client" in str(e.value)


def test_tokeninfo_unknown_token(emulator, url):
    r = emulator.tokeninfo_raw("ya29.not-a-token")
    S.oauth_error(r, 400, "invalid_token")
    assert r.json()["error_description"] == "Invalid Value"


def test_tokeninfo_aliases(emulator, url, request_):
    creds = sa_creds(emulator)
    creds.refresh(request_)
    r = requests.get(f"{url}/oauth2/v3/tokeninfo", params={"access_token": creds.token},
                     timeout=S.HTTP_TIMEOUT)
    assert r.status_code == 200 and r.json()["email"] == S.BROKER
    r = requests.post(f"{url}/tokeninfo", params={"access_token": creds.token},
                      timeout=S.HTTP_TIMEOUT)
    assert r.status_code == 200 and r.json()["email"] == S.BROKER
