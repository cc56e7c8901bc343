"""google.oauth2.credentials.Credentials (authorized_user, refresh_token grant) against the
token endpoint (google-protocols.md §1.3, §1.5, §2.2, §10.5)."""

import pytest

import _support as S


def user_info():
    return {"type": "authorized_user", "client_id": S.USER_CLIENT_ID,
            "client_secret": S.USER_CLIENT_SECRET, "refresh_token": S.USER_REFRESH_TOKEN,
            "quota_project_id": S.PROJECT_ID}


def assert_user_token(emulator, creds, scopes=None):
    info = emulator.tokeninfo(creds.token)
    assert info["principal"] == f"user:{S.USER_EMAIL}"
    assert info["email"] == S.USER_EMAIL
    assert info["grant"] == "refresh-token"
    if scopes is not None:
        assert S.scopes_of(info) == set(scopes)
    S.assert_expiry_matches(creds, info)
    S.assert_remaining(creds, 3599)
    return info


def test_from_authorized_user_info_with_token_uri(emulator, request_):
    from google.oauth2 import credentials

    creds = credentials.Credentials.from_authorized_user_info(user_info(), scopes=[S.CLOUD_PLATFORM])
    assert creds.token_uri == S.GOOGLE_TOKEN_URL  # google-auth forces Google's URL (§1.3)
    creds = creds.with_token_uri(f"{emulator.url}/token")
    creds.refresh(request_)
    assert_user_token(emulator, creds, scopes=[S.CLOUD_PLATFORM])
    assert creds.refresh_token == S.USER_REFRESH_TOKEN


def test_constructed_directly_without_scopes(emulator, request_):
    """No scope requested: the token carries the consented scopes."""
    from google.oauth2 import credentials

    creds = credentials.Credentials(None, refresh_token=S.USER_REFRESH_TOKEN,
                                    client_id=S.USER_CLIENT_ID, client_secret=S.USER_CLIENT_SECRET,
                                    token_uri=f"{emulator.url}/token")
    creds.refresh(request_)
    info = assert_user_token(emulator, creds)
    assert S.scopes_of(info) <= set(S.USER_SCOPES) and S.scopes_of(info)


def test_response_shape(emulator):
    r = emulator.post_token({"grant_type": "refresh_token", "client_id": S.USER_CLIENT_ID,
                             "client_secret": S.USER_CLIENT_SECRET,
                             "refresh_token": S.USER_REFRESH_TOKEN,
                             "scope": f"{S.CLOUD_PLATFORM} {S.USERINFO_EMAIL}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 225
    assert set(body["scope"].split()) == {S.CLOUD_PLATFORM, S.USERINFO_EMAIL}


def test_openid_scope_returns_id_token(emulator, request_):
    """§1.4: the refresh grant returns an id_token when openid was granted."""
    from google.oauth2 import credentials, id_token

    creds = credentials.Credentials(None, refresh_token=S.USER_REFRESH_TOKEN,
                                    client_id=S.USER_CLIENT_ID, client_secret=S.USER_CLIENT_SECRET,
                                    token_uri=f"{emulator.url}/token",
                                    scopes=["openid", S.USERINFO_EMAIL])
    creds.refresh(request_)
    assert creds.id_token, "no id_token for an openid refresh"
    claims = id_token.verify_token(creds.id_token, request_, audience=S.USER_CLIENT_ID,
                                   certs_url=f"{emulator.url}/oauth2/v1/certs")
    assert claims["email"] == S.USER_EMAIL


# ---------------------------------------------------------------- negative cases


def _refresh(emulator, **overrides):
    data = {"grant_type": "refresh_token", "client_id": S.USER_CLIENT_ID,
            "client_secret": S.USER_CLIENT_SECRET, "refresh_token": S.USER_REFRESH_TOKEN}
    data.update(overrides)
    return emulator.post_token({k: v for k, v in data.items() if v is not None})


def test_unknown_refresh_token(emulator, request_):
    from google.auth import exceptions
    from google.oauth2 import credentials

    S.oauth_error(_refresh(emulator, refresh_token="1//revoked"), 400, "invalid_grant")
    emulator.reset_counters()
    creds = credentials.Credentials(None, refresh_token="1//revoked", client_id=S.USER_CLIENT_ID,
                                    client_secret=S.USER_CLIENT_SECRET,
                                    token_uri=f"{emulator.url}/token")
    with pytest.raises(exceptions.RefreshError) as e:
        creds.refresh(request_)
    assert "invalid_grant" in str(e.value)
    assert emulator.counter("oauth2.token") == 1


def test_wrong_client_secret(emulator):
    S.oauth_error(_refresh(emulator, client_secret="wrong"), 401, "invalid_client")


def test_unknown_client(emulator):
    S.oauth_error(_refresh(emulator, client_id="ghost.apps.googleusercontent.com"), 401,
                  "invalid_client")


def test_scope_not_consented(emulator):
    S.oauth_error(_refresh(emulator, scope=S.DIRECTORY_RO), 400, "invalid_scope")
