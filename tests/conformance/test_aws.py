"""aws.Credentials (AWS-sourced workload identity federation) against STS
(google-protocols.md §6, §10.4). The signed GetCallerIdentity request is never sent anywhere
by google-auth; the emulator verifies the SigV4 signature offline."""

import json
import urllib.parse

import pytest

import _support as S

VERIFY_URL = "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"


def aws_creds(emulator, audience=S.AWS_AUDIENCE, credential_source=None, impersonate=None):
    from google.auth import aws

    info = {
        "type": "external_account",
        "audience": audience,
        "subject_token_type": S.TT_AWS,
        "token_url": f"{emulator.url}/v1/token",
        "credential_source": credential_source or {
            "environment_id": "aws1", "regional_cred_verification_url": VERIFY_URL},
    }
    if impersonate:
        info["service_account_impersonation_url"] = emulator.iam_url(impersonate)
    return aws.Credentials.from_info(info, scopes=[S.CLOUD_PLATFORM])


@pytest.fixture
def aws_env(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S.AWS_AKID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S.AWS_SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return monkeypatch


def assert_aws_principal(emulator, creds):
    info = emulator.tokeninfo(creds.token)
    assert info["principal"] == S.workload_principal(S.AWS_ARN)
    assert info["grant"] == "sts-exchange"
    assert S.scopes_of(info) == {S.CLOUD_PLATFORM}
    S.assert_expiry_matches(creds, info)
    return info


def test_env_credentials(emulator, aws_env, request_):
    creds = aws_creds(emulator)
    creds.refresh(request_)
    assert_aws_principal(emulator, creds)
    assert 3000 < S.remaining(creds) <= 3602


def test_env_credentials_with_session_token(emulator, aws_env, request_):
    aws_env.setenv("AWS_SESSION_TOKEN", "FQoGZXIvYXdzEXAMPLE//session+token/=")
    aws_env.setenv("AWS_REGION", "eu-west-3")
    creds = aws_creds(emulator)
    subject = json.loads(urllib.parse.unquote(creds.retrieve_subject_token(request_)))
    headers = {h["key"].lower(): h["value"] for h in subject["headers"]}
    assert "x-amz-security-token" in headers
    assert "x-amz-security-token" in headers["authorization"]
    assert subject["url"].startswith("https://sts.eu-west-3.amazonaws.com")
    creds.refresh(request_)
    assert_aws_principal(emulator, creds)


def test_default_region_variable(emulator, aws_env, request_):
    aws_env.delenv("AWS_REGION")
    aws_env.setenv("AWS_DEFAULT_REGION", "ap-southeast-2")
    creds = aws_creds(emulator)
    creds.refresh(request_)
    assert_aws_principal(emulator, creds)


def test_with_impersonation(emulator, aws_env, request_):
    creds = aws_creds(emulator, impersonate=S.WRITER)
    creds.refresh(request_)
    info = emulator.tokeninfo(creds.token)
    assert info["principal"] == f"serviceAccount:{S.WRITER}"
    assert info["grant"] == "generate-access-token"
    S.assert_expiry_matches(creds, info)


def test_imdsv2_on_loopback(emulator, monkeypatch, request_):
    """Credentials and region from a fake EC2 metadata service on 127.0.0.1 (IMDSv2)."""
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
              "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(k, raising=False)

    def handler(h):
        if h.command == "PUT" and h.path == "/latest/api/token":
            return 200, "text/plain", b"imds-session"
        if h.headers.get("X-aws-ec2-metadata-token") != "imds-session":
            return 401, "text/plain", b""
        if h.path == "/latest/meta-data/placement/availability-zone":
            return 200, "text/plain", b"us-east-2b"
        if h.path == "/latest/meta-data/iam/security-credentials":
            return 200, "text/plain", b"ci-role"
        if h.path == "/latest/meta-data/iam/security-credentials/ci-role":
            return 200, "application/json", json.dumps({
                "Code": "Success", "AccessKeyId": S.AWS_AKID,
                "SecretAccessKey": S.AWS_SECRET, "Token": "imds-session-token"}).encode()
        return 404, "text/plain", b""

    with S.LocalServer(handler) as imds:
        creds = aws_creds(emulator, credential_source={
            "environment_id": "aws1",
            "region_url": f"{imds.url}/latest/meta-data/placement/availability-zone",
            "url": f"{imds.url}/latest/meta-data/iam/security-credentials",
            "imdsv2_session_token_url": f"{imds.url}/latest/api/token",
            "regional_cred_verification_url": VERIFY_URL,
        })
        subject = json.loads(urllib.parse.unquote(creds.retrieve_subject_token(request_)))
        assert subject["url"].startswith("https://sts.us-east-2.amazonaws.com")
        creds.refresh(request_)
    assert_aws_principal(emulator, creds)


# ---------------------------------------------------------------- negative cases


def _refresh_error(emulator, creds, request_):
    from google.auth import exceptions

    with pytest.raises(exceptions.GoogleAuthError) as e:
        creds.refresh(request_)
    return str(e.value)


def _exchange(emulator, subject_token, audience=S.AWS_AUDIENCE):
    return emulator.sts(data={
        "grant_type": S.TOKEN_EXCHANGE, "audience": audience, "scope": S.CLOUD_PLATFORM,
        "requested_token_type": S.TT_ACCESS_TOKEN, "subject_token": subject_token,
        "subject_token_type": S.TT_AWS})


def test_bad_signature(emulator, aws_env, request_):
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    creds = aws_creds(emulator)
    S.oauth_error(_exchange(emulator, creds.retrieve_subject_token(request_)), 400, "invalid_grant")
    assert "invalid_grant" in _refresh_error(emulator, creds, request_)


def test_unknown_access_key(emulator, aws_env, request_):
    aws_env.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    creds = aws_creds(emulator)
    S.oauth_error(_exchange(emulator, creds.retrieve_subject_token(request_)), 400, "invalid_grant")


def test_caller_from_untrusted_account(emulator, aws_env, request_):
    aws_env.setenv("AWS_ACCESS_KEY_ID", S.AWS_OTHER_AKID)
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", S.AWS_OTHER_SECRET)
    creds = aws_creds(emulator)
    S.oauth_error(_exchange(emulator, creds.retrieve_subject_token(request_)), 400, "invalid_grant")


def test_target_resource_mismatch(emulator, aws_env, request_):
    """A request signed for another provider (x-goog-cloud-target-resource) is refused."""
    other = f"//iam.googleapis.com/{S.POOL_NAME}/providers/aws-other"
    creds = aws_creds(emulator, audience=other)
    S.oauth_error(_exchange(emulator, creds.retrieve_subject_token(request_)), 400, "invalid_grant")


def test_non_aws_sts_url(emulator, aws_env, request_):
    creds = aws_creds(emulator, credential_source={
        "environment_id": "aws1",
        "regional_cred_verification_url": "https://sts.{region}.example.com?Action=GetCallerIdentity&Version=2011-06-15"})
    S.oauth_error(_exchange(emulator, creds.retrieve_subject_token(request_)), 400, "invalid_grant")


def test_tampered_subject_token_fields(emulator, aws_env, request_):
    """Changing the signed x-amz-date invalidates the signature."""
    creds = aws_creds(emulator)
    subject = json.loads(urllib.parse.unquote(creds.retrieve_subject_token(request_)))
    for h in subject["headers"]:
        if h["key"].lower() == "x-amz-date":
            h["value"] = h["value"][:-3] + ("00Z" if not h["value"].endswith("00Z") else "01Z")
    token = urllib.parse.quote(json.dumps(subject, separators=(",", ":"), sort_keys=True))
    S.oauth_error(_exchange(emulator, token), 400, "invalid_grant")
