"""identity_pool.Credentials (workload identity federation, OIDC subject tokens) against STS
(google-protocols.md §2.4, §4, §10.4)."""

import json
import time

import pytest

import _support as S


def pool_info(emulator, credential_source, *, audience=S.WORKLOAD_AUDIENCE,
              subject_token_type=S.TT_JWT, impersonate=None, lifetime=None, **extra):
    info = {
        "type": "external_account",
        "audience": audience,
        "subject_token_type": subject_token_type,
        "token_url": f"{emulator.url}/v1/token",
        "credential_source": credential_source,
    }
    if impersonate:
        info["service_account_impersonation_url"] = emulator.iam_url(impersonate)
    if lifetime:
        info["service_account_impersonation"] = {"token_lifetime_seconds": lifetime}
    info.update(extra)
    return info


def from_info(info, scopes=(S.CLOUD_PLATFORM,)):
    from google.auth import identity_pool

    return identity_pool.Credentials.from_info(info, scopes=list(scopes))


def write(tmp_path, text, name="token"):
    p = tmp_path / name
    p.write_text(text)  # no trailing newline: google-auth reads the file raw
    return str(p)


def assert_federated(emulator, creds, subject=S.WORKLOAD_SUBJECT, scopes=(S.CLOUD_PLATFORM,)):
    info = emulator.tokeninfo(creds.token)
    assert info["principal"] == S.workload_principal(subject)
    assert info["grant"] == "sts-exchange"
    assert S.scopes_of(info) == set(scopes)
    S.assert_expiry_matches(creds, info)
    left = S.remaining(creds)
    assert 3000 < left <= 3602, left  # STS: typically 3600, never beyond the subject token
    return info


# ---------------------------------------------------------------- positive flows


@pytest.mark.parametrize("token_type", [S.TT_JWT, S.TT_ID_TOKEN])
def test_file_source_text(emulator, tmp_path, request_, token_type):
    emulator.reset_counters()
    path = write(tmp_path, emulator.workload_oidc_token())
    creds = from_info(pool_info(emulator, {"file": path}, subject_token_type=token_type))
    creds.refresh(request_)
    assert_federated(emulator, creds)
    assert emulator.counter("sts.token") == 1


def test_file_source_json(emulator, tmp_path, request_):
    path = write(tmp_path, json.dumps({"id_token": emulator.workload_oidc_token(), "other": 1}))
    creds = from_info(pool_info(emulator, {"file": path, "format": {
        "type": "json", "subject_token_field_name": "id_token"}}))
    creds.refresh(request_)
    assert_federated(emulator, creds)


def test_file_source_scopes(emulator, tmp_path, request_):
    path = write(tmp_path, emulator.workload_oidc_token())
    creds = from_info(pool_info(emulator, {"file": path}),
                      scopes=[S.DEVSTORAGE_RO, S.USERINFO_EMAIL])
    creds.refresh(request_)
    assert_federated(emulator, creds, scopes=(S.DEVSTORAGE_RO, S.USERINFO_EMAIL))


def test_url_source_text_with_headers(emulator, request_):
    token = emulator.workload_oidc_token()

    def handler(h):
        if h.headers.get("Authorization") != "Bearer local-secret":
            return 401, "text/plain", b"no"
        return 200, "text/plain", token.encode()

    with S.LocalServer(handler) as srv:
        creds = from_info(pool_info(emulator, {
            "url": f"{srv.url}/token", "headers": {"Authorization": "Bearer local-secret"}}))
        creds.refresh(request_)
    assert srv.requests and srv.requests[0]["method"] == "GET"
    assert_federated(emulator, creds)


def test_url_source_json(emulator, request_):
    token = emulator.workload_oidc_token()
    with S.LocalServer(lambda h: (200, "application/json",
                                  json.dumps({"value": token}).encode())) as srv:
        creds = from_info(pool_info(emulator, {"url": f"{srv.url}/token", "format": {
            "type": "json", "subject_token_field_name": "value"}}))
        creds.refresh(request_)
    assert_federated(emulator, creds)


@pytest.mark.parametrize("target", [S.READER, S.WRITER])
def test_with_service_account_impersonation(emulator, tmp_path, request_, target):
    emulator.reset_counters()
    path = write(tmp_path, emulator.workload_oidc_token())
    creds = from_info(pool_info(emulator, {"file": path}, impersonate=target))
    creds.refresh(request_)
    info = emulator.tokeninfo(creds.token)
    assert info["principal"] == f"serviceAccount:{target}"
    assert info["grant"] == "generate-access-token"
    assert S.scopes_of(info) == {S.CLOUD_PLATFORM}
    S.assert_expiry_matches(creds, info)
    S.assert_remaining(creds, 3600)
    c = emulator.counters()
    assert c.get("sts.token") == 1 and c.get("iam.generateAccessToken") == 1


def test_impersonation_lifetime(emulator, tmp_path, request_):
    path = write(tmp_path, emulator.workload_oidc_token())
    creds = from_info(pool_info(emulator, {"file": path}, impersonate=S.READER, lifetime=1800))
    creds.refresh(request_)
    S.assert_remaining(creds, 1800)
    S.assert_expiry_matches(creds, emulator.tokeninfo(creds.token))


def test_sts_accepts_json_bodies(emulator):
    """§4.1: form, JSON camelCase and JSON snake_case."""
    tok = emulator.workload_oidc_token()
    camel = {"grantType": S.TOKEN_EXCHANGE, "audience": S.WORKLOAD_AUDIENCE,
             "scope": S.CLOUD_PLATFORM, "requestedTokenType": S.TT_ACCESS_TOKEN,
             "subjectToken": tok, "subjectTokenType": S.TT_JWT}
    snake = {"grant_type": S.TOKEN_EXCHANGE, "audience": S.WORKLOAD_AUDIENCE,
             "scope": S.CLOUD_PLATFORM, "requested_token_type": S.TT_ACCESS_TOKEN,
             "subject_token": tok, "subject_token_type": S.TT_JWT}
    for r in (emulator.sts(json_body=camel), emulator.sts(json_body=snake), emulator.sts(data=snake)):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["issued_token_type"] == S.TT_ACCESS_TOKEN
        assert body["token_type"] == "Bearer"
        assert isinstance(body["expires_in"], int) and body["expires_in"] > 225
        info = emulator.tokeninfo(body["access_token"])
        assert info["principal"] == S.workload_principal(S.WORKLOAD_SUBJECT)


# ---------------------------------------------------------------- negative cases


def exchange(emulator, subject_token, audience=S.WORKLOAD_AUDIENCE, token_type=S.TT_JWT):
    return emulator.sts(data={
        "grant_type": S.TOKEN_EXCHANGE, "audience": audience, "scope": S.CLOUD_PLATFORM,
        "requested_token_type": S.TT_ACCESS_TOKEN, "subject_token": subject_token,
        "subject_token_type": token_type})


def test_unknown_provider(emulator):
    aud = f"//iam.googleapis.com/{S.POOL_NAME}/providers/ghost"
    body = S.oauth_error(exchange(emulator, emulator.workload_oidc_token(), audience=aud), 400,
                         ("invalid_request", "invalid_grant", "invalid_target"))
    assert body["error_description"]


def test_unknown_pool(emulator):
    aud = (f"//iam.googleapis.com/projects/{S.PROJECT_NUMBER}/locations/global/"
           "workloadIdentityPools/ghost-pool/providers/oidc")
    S.oauth_error(exchange(emulator, emulator.workload_oidc_token(), audience=aud), 400,
                  ("invalid_request", "invalid_grant", "invalid_target"))


def test_malformed_audience(emulator):
    body = S.oauth_error(exchange(emulator, emulator.workload_oidc_token(), audience="not-a-provider"),
                         400, "invalid_request")
    assert "audience" in body["error_description"]


@pytest.mark.parametrize("overrides", [
    pytest.param({"aud": "https://some-other-audience.example"}, id="wrong-aud"),
    pytest.param({"iss": "https://evil.example.com"}, id="wrong-issuer"),
    pytest.param({"iat": -7200, "exp": -3600}, id="expired"),
    pytest.param({"sub": None}, id="no-subject"),
])
def test_rejected_oidc_tokens(emulator, overrides):
    now = int(time.time())
    overrides = {k: (now + v if k in ("iat", "exp") else v) for k, v in overrides.items()}
    S.oauth_error(exchange(emulator, emulator.workload_oidc_token(**overrides)), 400, "invalid_grant")


# google-protocols.md §4.4 files attribute-condition failures under invalid_grant, but real STS
# answers 400 unauthorized_client "The given credential is rejected by the attribute condition."
# (quoted from a google-auth OAuthError in circleci/circleci-docs#8541); the emulator does that.
@pytest.mark.parametrize("overrides", [
    pytest.param({"repo": "org/other"}, id="condition-repo"),
    pytest.param({"sub": "dev-laptop"}, id="condition-subject"),
    pytest.param({"repo": None}, id="condition-missing-claim"),
])
def test_attribute_condition_rejects(emulator, overrides):
    body = S.oauth_error(exchange(emulator, emulator.workload_oidc_token(**overrides)), 400,
                         "unauthorized_client")
    assert "attribute condition" in body["error_description"]


def test_signature_by_unknown_key(emulator):
    """A token signed by the workforce IdP's key but claiming the workload issuer and kid."""
    now = int(time.time())
    tok = emulator.workforce_key.sign({"iss": S.WORKLOAD_ISSUER, "aud": S.WORKLOAD_TOKEN_AUD,
                                       "sub": S.WORKLOAD_SUBJECT, "repo": "org/app",
                                       "iat": now, "exp": now + 3600}, kid=S.WORKLOAD_ISSUER_KID)
    S.oauth_error(exchange(emulator, tok), 400, "invalid_grant")


def test_tampered_oidc_token(emulator):
    S.oauth_error(exchange(emulator, S.tamper(emulator.workload_oidc_token())), 400, "invalid_grant")


def test_garbage_subject_token(emulator):
    S.oauth_error(exchange(emulator, "not-a-jwt"), 400, ("invalid_grant", "invalid_request"))


def test_rejected_via_google_auth(emulator, tmp_path, request_):
    """google-auth raises on the STS error and does not retry it (§4.4)."""
    from google.auth import exceptions

    emulator.reset_counters()
    path = write(tmp_path, emulator.workload_oidc_token(repo="org/other"))
    creds = from_info(pool_info(emulator, {"file": path}))
    with pytest.raises(exceptions.GoogleAuthError) as e:
        creds.refresh(request_)
    assert "unauthorized_client" in str(e.value)  # see test_attribute_condition_rejects
    assert emulator.counter("sts.token") == 1


def test_impersonation_without_token_creator(emulator, tmp_path, request_):
    """The pool's principalSet is Token Creator on reader@/writer@, not on nodwd@."""
    from google.auth import exceptions

    path = write(tmp_path, emulator.workload_oidc_token())
    creds = from_info(pool_info(emulator, {"file": path}, impersonate=S.NODWD))
    with pytest.raises(exceptions.RefreshError) as e:
        creds.refresh(request_)
    body = json.loads(e.value.args[1])
    assert body["error"]["code"] == 403 and body["error"]["status"] == "PERMISSION_DENIED"


def test_impersonation_lifetime_over_an_hour(emulator, tmp_path, request_):
    from google.auth import exceptions

    path = write(tmp_path, emulator.workload_oidc_token())
    creds = from_info(pool_info(emulator, {"file": path}, impersonate=S.READER, lifetime=7200))
    with pytest.raises(exceptions.RefreshError) as e:
        creds.refresh(request_)
    assert json.loads(e.value.args[1])["error"]["status"] == "INVALID_ARGUMENT"


def test_missing_scope(emulator):
    """scope is required for external credentials (§4.1)."""
    r = emulator.sts(data={
        "grant_type": S.TOKEN_EXCHANGE, "audience": S.WORKLOAD_AUDIENCE,
        "requested_token_type": S.TT_ACCESS_TOKEN,
        "subject_token": emulator.workload_oidc_token(), "subject_token_type": S.TT_JWT})
    S.oauth_error(r, 400, ("invalid_request", "invalid_scope"))


def test_wrong_grant_type(emulator):
    r = emulator.sts(data={
        "grant_type": S.JWT_BEARER, "audience": S.WORKLOAD_AUDIENCE, "scope": S.CLOUD_PLATFORM,
        "requested_token_type": S.TT_ACCESS_TOKEN,
        "subject_token": emulator.workload_oidc_token(), "subject_token_type": S.TT_JWT})
    S.oauth_error(r, 400, ("unsupported_grant_type", "invalid_request"))


def test_oidc_token_on_aws_provider(emulator):
    S.oauth_error(exchange(emulator, emulator.workload_oidc_token(), audience=S.AWS_AUDIENCE), 400,
                  ("invalid_grant", "invalid_request"))
