"""google.auth.downscoped.Credentials (Credential Access Boundary) against STS
(google-protocols.md §4.2, §4.3, §4.5, §10.5). The STS URL is hard-coded in google-auth; the
private _sts_client is replaced by one pointing at the emulator."""

import json

import pytest

import _support as S

BUCKET = "//storage.googleapis.com/projects/_/buckets/example-bucket"
CONDITION = "resource.name.startsWith('projects/_/buckets/example-bucket/objects/reports/')"


def cab():
    from google.auth import downscoped

    rule = downscoped.AccessBoundaryRule(
        available_resource=BUCKET,
        available_permissions=["inRole:roles/storage.objectViewer"],
        availability_condition=downscoped.AvailabilityCondition(
            expression=CONDITION, title="reports", description="reports only"),
    )
    return downscoped.CredentialAccessBoundary(rules=[rule])


def downscope(emulator, source):
    from google.auth import downscoped
    from google.oauth2 import sts

    creds = downscoped.Credentials(source_credentials=source, credential_access_boundary=cab())
    creds._sts_client = sts.Client(f"{emulator.url}/v1/token")
    return creds


def _rules(boundary):
    if isinstance(boundary, str):
        boundary = json.loads(boundary)
    if "accessBoundary" in boundary:
        boundary = boundary["accessBoundary"]
    return boundary["accessBoundaryRules"]


def test_downscope_service_account_token(emulator, broker_creds, request_):
    emulator.reset_counters()
    creds = downscope(emulator, broker_creds)
    creds.refresh(request_)
    assert creds.token and creds.token != broker_creds.token
    # no expires_in from STS: google-auth copies the source's expiry (§4.3)
    assert creds.expiry == broker_creds.expiry
    info = emulator.tokeninfo(creds.token)
    assert info["grant"] == "sts-downscope"
    assert info["principal"] == f"serviceAccount:{S.BROKER}"
    rules = _rules(info["access_boundary"])
    assert len(rules) == 1
    assert rules[0]["availableResource"] == BUCKET
    assert rules[0]["availablePermissions"] == ["inRole:roles/storage.objectViewer"]
    assert rules[0]["availabilityCondition"]["expression"] == CONDITION
    # the downscoped token never outlives its source
    src = emulator.tokeninfo(broker_creds.token)
    assert abs(int(info["exp"]) - int(src["exp"])) <= 1
    S.assert_expiry_matches(creds, info)
    c = emulator.counters()
    assert c.get("oauth2.token") == 1 and c.get("sts.token") == 1


def test_downscope_response_has_no_expires_in(emulator, broker_creds, request_):
    broker_creds.refresh(request_)
    r = emulator.sts(data={
        "grant_type": S.TOKEN_EXCHANGE, "subject_token_type": S.TT_ACCESS_TOKEN,
        "requested_token_type": S.TT_ACCESS_TOKEN, "subject_token": broker_creds.token,
        "options": json.dumps(cab().to_json())})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "expires_in" not in body
    assert body["issued_token_type"] == S.TT_ACCESS_TOKEN
    assert body["token_type"] == "Bearer"


def test_downscope_metadata_token(emulator, request_):
    from google.auth import compute_engine

    source = compute_engine.Credentials()
    creds = downscope(emulator, source)
    creds.refresh(request_)
    info = emulator.tokeninfo(creds.token)
    assert info["grant"] == "sts-downscope"
    assert creds.expiry == source.expiry


def test_downscope_federated_token(emulator, tmp_path, request_):
    from google.auth import identity_pool

    p = tmp_path / "tok"
    p.write_text(emulator.workload_oidc_token())
    source = identity_pool.Credentials.from_info({
        "type": "external_account", "audience": S.WORKLOAD_AUDIENCE,
        "subject_token_type": S.TT_JWT, "token_url": f"{emulator.url}/v1/token",
        "credential_source": {"file": str(p)}}, scopes=[S.CLOUD_PLATFORM])
    creds = downscope(emulator, source)
    creds.refresh(request_)
    info = emulator.tokeninfo(creds.token)
    assert info["grant"] == "sts-downscope"
    assert info["principal"] == S.workload_principal(S.WORKLOAD_SUBJECT)


# ---------------------------------------------------------------- negative cases


def _downscope_raw(emulator, token, boundary):
    return emulator.sts(data={
        "grant_type": S.TOKEN_EXCHANGE, "subject_token_type": S.TT_ACCESS_TOKEN,
        "requested_token_type": S.TT_ACCESS_TOKEN, "subject_token": token,
        "options": json.dumps(boundary)})


def test_unknown_subject_token(emulator):
    S.oauth_error(_downscope_raw(emulator, "ya29.not-a-token", cab().to_json()), 400,
                  ("invalid_grant", "invalid_request"))


def test_too_many_rules(emulator, broker_creds, request_):
    broker_creds.refresh(request_)
    rule = cab().to_json()["accessBoundary"]["accessBoundaryRules"][0]
    boundary = {"accessBoundary": {"accessBoundaryRules": [rule] * 11}}
    r = _downscope_raw(emulator, broker_creds.token, boundary)
    assert r.status_code == 400, r.text


def test_workforce_token_cannot_be_downscoped(emulator, request_):
    """§4.5: workforce-pool tokens cannot be downscoped [DOC]."""
    r = emulator.sts(data={
        "grant_type": S.TOKEN_EXCHANGE, "audience": S.WORKFORCE_AUDIENCE, "scope": S.CLOUD_PLATFORM,
        "requested_token_type": S.TT_ACCESS_TOKEN, "subject_token": emulator.workforce_oidc_token(),
        "subject_token_type": S.TT_ID_TOKEN, "options": json.dumps({"userProject": S.PROJECT_ID})})
    assert r.status_code == 200, r.text
    r = _downscope_raw(emulator, r.json()["access_token"], cab().to_json())
    assert r.status_code == 400, r.text


def test_downscoped_token_cannot_be_downscoped_again(emulator, broker_creds, request_):
    """§4.5: a token that already has security attributes cannot get more [DOC]."""
    creds = downscope(emulator, broker_creds)
    creds.refresh(request_)
    r = _downscope_raw(emulator, creds.token, cab().to_json())
    assert r.status_code == 400, r.text
