"""Workforce identity federation (identity_pool.Credentials with a workforce audience and
workforce_pool_user_project) against STS (google-protocols.md §2.4, §4.1, §4.2)."""

import json
import time
import urllib.parse

import pytest

import _support as S


def workforce_creds(emulator, tmp_path, token, *, user_project=S.PROJECT_ID, impersonate=None):
    from google.auth import identity_pool

    p = tmp_path / "wf-token"
    p.write_text(token)
    info = {
        "type": "external_account",
        "audience": S.WORKFORCE_AUDIENCE,
        "subject_token_type": S.TT_ID_TOKEN,
        "token_url": f"{emulator.url}/v1/token",
        "credential_source": {"file": str(p)},
    }
    if user_project:
        info["workforce_pool_user_project"] = user_project
    if impersonate:
        info["service_account_impersonation_url"] = emulator.iam_url(impersonate)
    return identity_pool.Credentials.from_info(info, scopes=[S.CLOUD_PLATFORM])


def test_workforce_exchange(emulator, tmp_path, request_):
    creds = workforce_creds(emulator, tmp_path, emulator.workforce_oidc_token())
    assert creds.is_workforce_pool
    creds.refresh(request_)
    info = emulator.tokeninfo(creds.token)
    # subject_claim = "email" for this provider
    assert info["principal"] == S.workforce_principal(S.WORKFORCE_SUBJECT)
    assert info["grant"] == "sts-exchange"
    assert S.scopes_of(info) == {S.CLOUD_PLATFORM}
    # the emulator saw options={"userProject": ...} (Python double-encodes it, §4.1)
    assert info.get("user_project") == S.PROJECT_ID, info
    S.assert_expiry_matches(creds, info)
    assert 3000 < S.remaining(creds) <= 3602


def test_workforce_with_impersonation(emulator, tmp_path, request_):
    creds = workforce_creds(emulator, tmp_path, emulator.workforce_oidc_token(), impersonate=S.READER)
    creds.refresh(request_)
    info = emulator.tokeninfo(creds.token)
    assert info["principal"] == f"serviceAccount:{S.READER}"
    assert info["grant"] == "generate-access-token"
    S.assert_expiry_matches(creds, info)


def test_workforce_impersonation_needs_token_creator(emulator, tmp_path, request_):
    """The workforce principalSet is Token Creator on reader@ only, not writer@."""
    from google.auth import exceptions

    creds = workforce_creds(emulator, tmp_path, emulator.workforce_oidc_token(), impersonate=S.WRITER)
    with pytest.raises(exceptions.RefreshError) as e:
        creds.refresh(request_)
    assert json.loads(e.value.args[1])["error"]["status"] == "PERMISSION_DENIED"


def _form(emulator, token, options):
    data = {"grant_type": S.TOKEN_EXCHANGE, "audience": S.WORKFORCE_AUDIENCE,
            "scope": S.CLOUD_PLATFORM, "requested_token_type": S.TT_ACCESS_TOKEN,
            "subject_token": token, "subject_token_type": S.TT_ID_TOKEN}
    if options is not None:
        data["options"] = options
    return emulator.sts(data=data)


@pytest.mark.parametrize("style", ["python-double-encoded", "go-raw-json"])
def test_options_encodings(emulator, style):
    """§4.1: Python percent-encodes the options JSON before form-encoding; Go does not."""
    options = json.dumps({"userProject": S.PROJECT_ID})
    if style == "python-double-encoded":
        options = urllib.parse.quote(options)
    r = _form(emulator, emulator.workforce_oidc_token(), options)
    assert r.status_code == 200, r.text
    info = emulator.tokeninfo(r.json()["access_token"])
    assert info["principal"] == S.workforce_principal(S.WORKFORCE_SUBJECT)
    assert info.get("user_project") == S.PROJECT_ID, info


@pytest.mark.parametrize("overrides", [
    pytest.param({"aud": S.WORKLOAD_TOKEN_AUD}, id="wrong-aud"),
    pytest.param({"iss": S.WORKLOAD_ISSUER}, id="wrong-issuer"),
    pytest.param({"exp": -3600, "iat": -7200}, id="expired"),
    pytest.param({"email": None}, id="no-subject-claim"),
])
def test_rejected_workforce_tokens(emulator, overrides):
    now = int(time.time())
    overrides = {k: (now + v if k in ("iat", "exp") else v) for k, v in overrides.items()}
    tok = emulator.workforce_oidc_token(**overrides)
    S.oauth_error(_form(emulator, tok, json.dumps({"userProject": S.PROJECT_ID})), 400, "invalid_grant")


def test_workload_token_on_workforce_provider(emulator):
    """Signed by the workload issuer's key: unknown to the workforce provider."""
    tok = emulator.workload_oidc_token(iss=S.WORKFORCE_ISSUER, aud=S.WORKFORCE_TOKEN_AUD,
                                       email=S.WORKFORCE_SUBJECT)
    S.oauth_error(_form(emulator, tok, json.dumps({"userProject": S.PROJECT_ID})), 400, "invalid_grant")


def test_unknown_workforce_provider(emulator):
    data = {"grant_type": S.TOKEN_EXCHANGE,
            "audience": f"//iam.googleapis.com/{S.WORKFORCE_POOL_NAME}/providers/ghost",
            "scope": S.CLOUD_PLATFORM, "requested_token_type": S.TT_ACCESS_TOKEN,
            "subject_token": emulator.workforce_oidc_token(), "subject_token_type": S.TT_ID_TOKEN,
            "options": json.dumps({"userProject": S.PROJECT_ID})}
    S.oauth_error(emulator.sts(data=data), 400, ("invalid_request", "invalid_grant", "invalid_target"))


def test_without_user_project(emulator):
    """Not specified by google-protocols.md: recorded, not asserted beyond a sane answer."""
    r = _form(emulator, emulator.workforce_oidc_token(), None)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert r.json().get("error") in ("invalid_request", "invalid_grant")
