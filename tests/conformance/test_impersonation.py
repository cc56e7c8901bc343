"""impersonated_credentials.Credentials against IAM generateAccessToken
(google-protocols.md §5.1, §5.2, §5.6, §10.3)."""

import json
import re

import pytest

import _support as S


def impersonated(emulator, broker_creds, target, *, delegates=None, lifetime=3600,
                 scopes=(S.CLOUD_PLATFORM,)):
    from google.auth import impersonated_credentials

    return impersonated_credentials.Credentials(
        source_credentials=broker_creds,
        target_principal=target,
        target_scopes=list(scopes),
        delegates=delegates,
        lifetime=lifetime,
        iam_endpoint_override=emulator.iam_url(target),
    )


def source_token(emulator, request_, account_id="broker", scopes=(S.IAM_SCOPE,)):
    from google.oauth2 import service_account

    c = service_account.Credentials.from_service_account_file(
        str(emulator.key_file(account_id)), scopes=list(scopes))
    c.refresh(request_)
    return c.token


def test_impersonate(emulator, broker_creds, request_):
    emulator.reset_counters()
    creds = impersonated(emulator, broker_creds, S.READER)
    creds.refresh(request_)
    info = emulator.tokeninfo(creds.token)
    assert info["principal"] == f"serviceAccount:{S.READER}"
    assert info["email"] == S.READER
    assert info["grant"] == "generate-access-token"
    assert info["delegates"] == []
    assert info["subject"] is None
    assert S.scopes_of(info) == {S.CLOUD_PLATFORM}
    S.assert_expiry_matches(creds, info)
    S.assert_remaining(creds, 3600)
    counters = emulator.counters()
    assert counters.get("oauth2.token") == 1  # the source refresh (scope .../auth/iam)
    assert counters.get("iam.generateAccessToken") == 1
    # the source was re-scoped to the iam scope by google-auth, and accepted
    src = emulator.tokeninfo(creds._source_credentials.token)
    assert S.scopes_of(src) == {S.IAM_SCOPE}


@pytest.mark.parametrize("lifetime", [600, 1800])
def test_lifetime_honoured(emulator, broker_creds, request_, lifetime):
    creds = impersonated(emulator, broker_creds, S.WRITER, lifetime=lifetime)
    creds.refresh(request_)
    S.assert_remaining(creds, lifetime)
    info = emulator.tokeninfo(creds.token)
    S.assert_expiry_matches(creds, info)
    assert int(info["expires_in"]) <= lifetime


def test_extended_lifetime_allowed(emulator, broker_creds, request_):
    creds = impersonated(emulator, broker_creds, S.LONGLIVED, lifetime=7200)
    creds.refresh(request_)
    S.assert_remaining(creds, 7200)
    S.assert_expiry_matches(creds, emulator.tokeninfo(creds.token))


def test_multiple_scopes(emulator, broker_creds, request_):
    creds = impersonated(emulator, broker_creds, S.READER, scopes=[S.DEVSTORAGE_RO, S.USERINFO_EMAIL])
    creds.refresh(request_)
    assert S.scopes_of(emulator.tokeninfo(creds.token)) == {S.DEVSTORAGE_RO, S.USERINFO_EMAIL}


def test_delegation_chain_writer_to_reader(emulator, broker_creds, request_):
    creds = impersonated(emulator, broker_creds, S.READER, delegates=[S.WRITER])
    creds.refresh(request_)
    info = emulator.tokeninfo(creds.token)
    assert info["principal"] == f"serviceAccount:{S.READER}"
    assert len(info["delegates"]) == 1 and S.WRITER in info["delegates"][0]
    S.assert_expiry_matches(creds, info)


@pytest.mark.parametrize("form", ["email", "resource"])
def test_strict_delegation_chain(emulator, broker_creds, request_, form):
    """deep@ trusts only writer@: broker@ -> writer@ -> deep@ works, with raw emails
    (what Python passes through) and with projects/-/serviceAccounts/ names (the docs)."""
    d = S.WRITER if form == "email" else f"projects/-/serviceAccounts/{S.WRITER}"
    creds = impersonated(emulator, broker_creds, S.DEEP, delegates=[d])
    creds.refresh(request_)
    info = emulator.tokeninfo(creds.token)
    assert info["principal"] == f"serviceAccount:{S.DEEP}"
    assert len(info["delegates"]) == 1 and S.WRITER in info["delegates"][0]


def test_expire_time_format(emulator, request_):
    tok = source_token(emulator, request_)
    r = emulator.iam(S.READER, "generateAccessToken",
                     {"delegates": None, "scope": [S.CLOUD_PLATFORM], "lifetime": "3600s"}, tok)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"accessToken", "expireTime"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["expireTime"]), body["expireTime"]


def test_cloud_platform_source_scope_accepted(emulator, request_):
    tok = source_token(emulator, request_, scopes=[S.CLOUD_PLATFORM])
    r = emulator.iam(S.READER, "generateAccessToken", {"scope": [S.CLOUD_PLATFORM]}, tok)
    assert r.status_code == 200, r.text


def test_fractional_lifetime_accepted(emulator, request_):
    tok = source_token(emulator, request_)
    r = emulator.iam(S.READER, "generateAccessToken",
                     {"scope": [S.CLOUD_PLATFORM], "lifetime": "900.5s"}, tok)
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------- negative cases


def _permission_denied(r, permission="iam.serviceAccounts.getAccessToken"):
    err = S.google_error(r, 403, "PERMISSION_DENIED")
    info = S.error_info(err)
    assert info is not None, err
    assert info["reason"] == "IAM_PERMISSION_DENIED"
    assert info["domain"] == "iam.googleapis.com"
    assert info["metadata"]["permission"] == permission
    return err


def test_no_token_creator(emulator, broker_creds, request_):
    from google.auth import exceptions

    tok = source_token(emulator, request_)
    r = emulator.iam(S.NODWD, "generateAccessToken", {"scope": [S.CLOUD_PLATFORM]}, tok)
    _permission_denied(r)
    creds = impersonated(emulator, broker_creds, S.NODWD)
    with pytest.raises(exceptions.RefreshError) as e:
        creds.refresh(request_)
    # google-auth passes the raw body along
    assert json.loads(e.value.args[1])["error"]["status"] == "PERMISSION_DENIED"


def test_direct_impersonation_of_deep_refused(emulator, request_):
    tok = source_token(emulator, request_)
    r = emulator.iam(S.DEEP, "generateAccessToken", {"scope": [S.CLOUD_PLATFORM]}, tok)
    _permission_denied(r)


def test_broken_delegation_chain_refused(emulator, request_):
    """reader@ is not Token Creator on deep@: broker@ -> reader@ -> deep@ fails."""
    tok = source_token(emulator, request_)
    r = emulator.iam(S.DEEP, "generateAccessToken",
                     {"scope": [S.CLOUD_PLATFORM], "delegates": [S.READER]}, tok)
    assert r.status_code == 403, r.text
    S.google_error(r, 403, "PERMISSION_DENIED")


def test_lifetime_over_an_hour_refused(emulator, broker_creds, request_):
    from google.auth import exceptions

    tok = source_token(emulator, request_)
    r = emulator.iam(S.READER, "generateAccessToken",
                     {"scope": [S.CLOUD_PLATFORM], "lifetime": "7200s"}, tok)
    S.google_error(r, 400, "INVALID_ARGUMENT")
    creds = impersonated(emulator, broker_creds, S.READER, lifetime=7200)
    with pytest.raises(exceptions.RefreshError):
        creds.refresh(request_)


def test_lifetime_over_twelve_hours_refused_even_extended(emulator, request_):
    tok = source_token(emulator, request_)
    r = emulator.iam(S.LONGLIVED, "generateAccessToken",
                     {"scope": [S.CLOUD_PLATFORM], "lifetime": "43201s"}, tok)
    S.google_error(r, 400, "INVALID_ARGUMENT")


@pytest.mark.parametrize("body", [
    {"scope": []},
    {"lifetime": "3600s"},
    {"scope": [S.CLOUD_PLATFORM], "lifetime": "an hour"},
])
def test_bad_request_bodies(emulator, request_, body):
    tok = source_token(emulator, request_)
    S.google_error(emulator.iam(S.READER, "generateAccessToken", body, tok), 400, "INVALID_ARGUMENT")


@pytest.mark.parametrize("token", [None, "ya29.garbage"])
def test_unauthenticated(emulator, token):
    r = emulator.iam(S.READER, "generateAccessToken", {"scope": [S.CLOUD_PLATFORM]}, token)
    S.google_error(r, 401, "UNAUTHENTICATED")


def test_unknown_target(emulator, request_):
    """Nonexistent SA: 404 NOT_FOUND observed on generateAccessToken; 403 is also Google's."""
    tok = source_token(emulator, request_)
    r = emulator.iam(S.sa("ghost"), "generateAccessToken", {"scope": [S.CLOUD_PLATFORM]}, tok)
    assert r.status_code in (403, 404), r.text
    S.google_error(r, r.status_code, "NOT_FOUND" if r.status_code == 404 else "PERMISSION_DENIED")


def test_project_in_path_refused(emulator, request_):
    """The '-' is required; a project id there is invalid (§5.1)."""
    import requests

    tok = source_token(emulator, request_)
    r = requests.post(f"{emulator.url}/v1/projects/{S.PROJECT_ID}/serviceAccounts/{S.READER}:generateAccessToken",
                      json={"scope": [S.CLOUD_PLATFORM]}, headers={"Authorization": f"Bearer {tok}"},
                      timeout=S.HTTP_TIMEOUT)
    assert r.status_code in (400, 404), r.text


def test_expired_source_token(emulator, request_):
    import time

    emulator.set_token_lifetime(1)
    tok = source_token(emulator, request_)
    emulator.clear_token_lifetime()
    time.sleep(2.2)
    r = emulator.iam(S.READER, "generateAccessToken", {"scope": [S.CLOUD_PLATFORM]}, tok)
    S.google_error(r, 401, "UNAUTHENTICATED")


def test_target_by_unique_id(emulator, request_):
    """The path takes the account's email or its numeric unique id (§5.1)."""
    tok = source_token(emulator, request_)
    r = emulator.iam(S.READER, "generateIdToken", {"audience": "https://x.example"}, tok)
    assert r.status_code == 200, r.text
    uid = S.decode_jwt_unverified(r.json()["token"])[1]["sub"]
    assert uid.isdigit() and len(uid) == 21
    r = emulator.iam(uid, "generateAccessToken", {"scope": [S.CLOUD_PLATFORM]}, tok)
    assert r.status_code == 200, r.text
    assert emulator.tokeninfo(r.json()["accessToken"])["email"] == S.READER


def test_unknown_delegate(emulator, request_):
    tok = source_token(emulator, request_)
    r = emulator.iam(S.READER, "generateAccessToken",
                     {"scope": [S.CLOUD_PLATFORM], "delegates": [S.sa("ghost")]}, tok)
    assert r.status_code in (403, 404), r.text


def test_generate_id_token_raw(emulator, request_):
    """Python's SA IAM path sends includeEmail / useEmailAzp as the strings "true" (§5.3)."""
    tok = source_token(emulator, request_)
    for body in ({"audience": "https://x.example", "includeEmail": True, "delegates": None},
                 {"audience": "https://x.example", "includeEmail": "true", "useEmailAzp": "true"}):
        r = emulator.iam(S.READER, "generateIdToken", body, tok)
        assert r.status_code == 200, r.text
        claims = S.decode_jwt_unverified(r.json()["token"])[1]
        assert claims["email"] == S.READER and claims["aud"] == "https://x.example"
        assert claims["iss"] == "https://accounts.google.com"
        assert claims["exp"] - claims["iat"] == 3600
    r = emulator.iam(S.READER, "generateIdToken", {"audience": "https://x.example"}, tok)
    assert "email" not in S.decode_jwt_unverified(r.json()["token"])[1]
    S.google_error(emulator.iam(S.READER, "generateIdToken", {}, tok), 400, "INVALID_ARGUMENT")
    r = emulator.iam(S.NODWD, "generateIdToken", {"audience": "https://x.example"}, tok)
    err = S.google_error(r, 403, "PERMISSION_DENIED")
    assert S.error_info(err)["metadata"]["permission"] == "iam.serviceAccounts.getOpenIdToken"
