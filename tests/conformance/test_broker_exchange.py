"""ExchangeToken and `external_account` credentials, held against google-auth.

`token-broker dev` (the session's `broker` fixture, conftest.py) federates with its embedded
emulator's default world: `dev-pool`'s OIDC and AWS providers, the `dev-workforce` pool's
OIDC provider. It writes what a client needs to federate with them to `DIR/federation.json`
(issuer keys, AWS credentials of the emulated EC2 instance) and configures two
`external_account` credentials from the same files google-auth reads:
`DIR/federation/dev-federated.json` (an OIDC token file, then reader@ by impersonation) and
`DIR/federation/dev-aws.json` (the emulated instance's role through IMDSv2).

What is checked:

1. Subject tokens made by google-auth's own `identity_pool.Credentials` (file and URL
   sources) and `aws.Credentials` (AWS environment variables, and the emulator's IMDSv2) are
   accepted by a plain ExchangeToken, and the issued token is what the emulator's tokeninfo
   says it is; a workforce exchange carries `options.user_project` through.
2. ExchangeToken with `credential="dev-federated"` turns a caller's own OIDC token into
   reader@'s token.
3. The broker's own flows for `dev-federated` and `dev-aws` send Google the same requests as
   google-auth loading the same files: the emulator records both (`/_emulator/requests`,
   normalized, credentials reduced to fingerprints) and they are compared field by field.
4. Errors as grpcio sees them: Google's refusal of an expired subject token, the policy's
   audiences, subject-token types and access boundaries; downscoping with `DIR/boundary.json`.

google-auth talks only to the broker's emulator (on loopback); GCE_METADATA_HOST/IP stay on
the session's emulator (conftest.py). `load_credentials_from_file` looks the project up at
Cloud Resource Manager, a URL google-auth hard-codes without an override knob: a transport
wrapper answers that one call from a loopback server instead (`_LocalResourceManager`).
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from pathlib import Path

import grpc
import pytest
import requests

import _support as S

T = S.GRPC_TIMEOUT
READER_SA = "reader@dev-project.iam.gserviceaccount.com"
CLOUD_PLATFORM = S.CLOUD_PLATFORM
STORAGE_RO = S.DEVSTORAGE_RO
IAM_SCOPE = S.IAM_SCOPE
# The scope of the google-auth vs broker comparisons: no other test asks the broker for it, so
# the broker's GetAccessToken is sure to be a cache miss whose requests can be compared.
COMPARED_SCOPE = "https://www.googleapis.com/auth/devstorage.full_control"
DEV_BUCKET = "//storage.googleapis.com/projects/_/buckets/dev-bucket"
RESOURCE_MANAGER = "https://cloudresourcemanager.googleapis.com/"


# --------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fed(broker) -> dict:
    """`DIR/federation.json`, as dev mode wrote it."""
    return json.loads((broker.root / "federation.json").read_text())


@pytest.fixture(scope="module")
def providers(broker) -> dict:
    """The emulator's own description of its providers (`/_emulator/federation`), by
    audience: principal prefixes and subject claims."""
    r = requests.get(f"{broker.emulator}/_emulator/federation", timeout=S.HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    body = r.json()
    return {p["audience"]: p for p in body["oidc"] + body["aws"]}


def _mint(provider: dict, subject: str = "conformance-caller", **overrides) -> str:
    """An OIDC token of `provider` (a federation.json section) signed with its issuer key."""
    from google.auth import crypt, jwt

    now = int(time.time())
    claims = {"iss": provider["issuer"], "aud": provider["token_audience"], "sub": subject,
              "email": subject, "iat": now, "exp": now + 3600}
    claims.update({k: (now + v if k in ("iat", "exp") else v) for k, v in overrides.items()})
    signer = crypt.RSASigner.from_string(Path(provider["key_file"]).read_bytes(),
                                         provider["key_id"])
    token = jwt.encode(signer, claims)
    return token.decode() if isinstance(token, bytes) else token


def _exchange(broker, stub: str = "client", **fields):
    return broker.stub(stub).ExchangeToken(broker.pb.ExchangeTokenRequest(**fields), timeout=T)


def _refused(broker, code: grpc.StatusCode, **fields):
    with pytest.raises(grpc.RpcError) as raised:
        _exchange(broker, **fields)
    assert raised.value.code() == code, (raised.value.code(), raised.value.details())
    return S.rpc_details(raised.value)


def _options(broker, boundary: dict | None = None, **fields):
    """ExchangeTokenOptions; `boundary` in Google's JSON (`{"accessBoundaryRules": [...]}`)."""
    from google.protobuf import json_format

    options = broker.pb.ExchangeTokenOptions(**fields)
    if boundary is not None:
        json_format.ParseDict({"accessBoundary": boundary}, options)
    return options


def _clear_requests(broker) -> None:
    requests.delete(f"{broker.emulator}/_emulator/requests",
                    timeout=S.HTTP_TIMEOUT).raise_for_status()


def _recorded(broker, endpoint: str) -> list[dict]:
    r = requests.get(f"{broker.emulator}/_emulator/requests", params={"endpoint": endpoint},
                     timeout=S.HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()


def _only(records: list[dict], what: str) -> dict:
    assert len(records) == 1, f"expected one {what} request, got {len(records)}: {records}"
    return records[0]


def _pool_info(broker, provider: dict, credential_source: dict, **extra) -> dict:
    """An `external_account` file for `provider`, against the broker's emulator."""
    return {"type": "external_account", "audience": provider["audience"],
            "subject_token_type": provider["subject_token_type"],
            "token_url": f"{broker.emulator}/v1/token", "credential_source": credential_source,
            **extra}


def _assert_federated(broker, token: str, principal: str, scopes=(CLOUD_PLATFORM,)) -> dict:
    info = broker.tokeninfo(token)
    assert info["principal"] == principal, info
    assert info["grant"] == "sts-exchange", info
    assert S.scopes_of(info) == set(scopes), info
    return info


def _assert_expire_time(response, info: dict) -> None:
    """The response's expire_time is the token's (tokeninfo `exp`), to a few seconds."""
    assert response.expire_time.nanos == 0
    assert abs(response.expire_time.seconds - int(info["exp"])) <= 3, (
        response.expire_time, info["exp"])


class _LocalResourceManager:
    """A google-auth transport that answers Cloud Resource Manager's `projects.get` (which
    `load_credentials_from_file` calls for a pool's project number) from a loopback server
    and passes everything else to the real transport unchanged."""

    def __init__(self, inner, server: S.LocalServer):
        self.inner = inner
        self.server = server

    def __call__(self, url, method="GET", **kwargs):
        if url.startswith(RESOURCE_MANAGER):
            url = f"{self.server.url}/{url[len(RESOURCE_MANAGER):]}"
        return self.inner(url, method=method, **kwargs)


def _resource_manager(h):
    number = h.path.rstrip("/").rsplit("/", 1)[-1]
    if number != S.PROJECT_NUMBER:
        return 404, "application/json", b'{"error": {"code": 404, "status": "NOT_FOUND"}}'
    return 200, "application/json", json.dumps(
        {"projectNumber": S.PROJECT_NUMBER, "projectId": S.PROJECT_ID}).encode()


# --------------------------------------------------------------------------------------
# 1. google-auth's subject tokens through a plain ExchangeToken
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("token_type", [S.TT_JWT, S.TT_ID_TOKEN], ids=["jwt", "id_token"])
def test_identity_pool_file_source_token_is_exchanged(broker, fed, providers, tmp_path,
                                                      request_, token_type):
    from google.auth import identity_pool

    oidc = fed["oidc"]
    path = tmp_path / "subject.jwt"
    path.write_text(_mint(oidc, subject="file-caller"))
    creds = identity_pool.Credentials.from_info(
        _pool_info(broker, oidc, {"file": str(path)}, subject_token_type=token_type),
        scopes=[CLOUD_PLATFORM])
    subject_token = creds.retrieve_subject_token(request_)
    assert subject_token == path.read_text()

    response = _exchange(broker, subject_token=subject_token, subject_token_type=token_type,
                         audience=oidc["audience"])
    assert response.access_token
    assert response.issued_token_type == S.TT_ACCESS_TOKEN
    assert response.token_type == "Bearer"
    assert response.credential == ""
    prefix = providers[oidc["audience"]]["principal_prefix"]
    # A plain exchange names the pool (the broker does not read the subject token).
    assert response.principal == "principalSet://" + prefix.removeprefix(
        "principal://").removesuffix("subject/") + "*"
    info = _assert_federated(broker, response.access_token, prefix + "file-caller")
    _assert_expire_time(response, info)


def test_identity_pool_url_source_token_is_exchanged(broker, fed, providers, request_):
    from google.auth import identity_pool

    oidc = fed["oidc"]
    token = _mint(oidc, subject="url-caller")

    def handler(h):
        if h.headers.get("Metadata") != "True":
            return 400, "text/plain", b"missing header"
        return 200, "application/json", json.dumps({"id_token": token}).encode()

    with S.LocalServer(handler) as srv:
        creds = identity_pool.Credentials.from_info(_pool_info(broker, oidc, {
            "url": f"{srv.url}/token", "headers": {"Metadata": "True"},
            "format": {"type": "json", "subject_token_field_name": "id_token"}}),
            scopes=[CLOUD_PLATFORM])
        subject_token = creds.retrieve_subject_token(request_)
    assert subject_token == token
    assert [r["method"] for r in srv.requests] == ["GET"]

    response = _exchange(broker, subject_token=subject_token, subject_token_type=S.TT_JWT,
                         audience=oidc["audience"], scopes=[STORAGE_RO])
    _assert_federated(broker, response.access_token,
                      providers[oidc["audience"]]["principal_prefix"] + "url-caller",
                      scopes=[STORAGE_RO])


def _aws_info(broker, aws: dict, credential_source: dict) -> dict:
    return {"type": "external_account", "audience": aws["audience"],
            "subject_token_type": aws["subject_token_type"],
            "token_url": f"{broker.emulator}/v1/token", "credential_source": credential_source}


def _aws_principal(providers, aws: dict) -> str:
    provider = providers[aws["audience"]]
    return provider["principal_prefix"] + provider["arn"]


def test_aws_environment_credentials_token_is_exchanged(broker, fed, providers, monkeypatch,
                                                        request_):
    from google.auth import aws as google_aws

    aws = fed["aws"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", aws["access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws["secret_access_key"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", aws["session_token"])
    monkeypatch.setenv("AWS_REGION", aws["region"])
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    creds = google_aws.Credentials.from_info(_aws_info(broker, aws, {
        "environment_id": "aws1",
        "regional_cred_verification_url":
            "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
    }), scopes=[CLOUD_PLATFORM])
    _clear_requests(broker)
    subject_token = creds.retrieve_subject_token(request_)
    assert not _recorded(broker, "aws.imds"), "the environment's credentials need no IMDS"
    signed = json.loads(urllib.parse.unquote(subject_token))
    assert signed["url"] == aws["regional_cred_verification_url"]

    response = _exchange(broker, subject_token=subject_token, subject_token_type=S.TT_AWS,
                         audience=aws["audience"])
    info = _assert_federated(broker, response.access_token, _aws_principal(providers, aws))
    _assert_expire_time(response, info)


def test_aws_imds_credential_source_token_is_exchanged(broker, fed, providers, request_):
    from google.auth import aws as google_aws

    aws = fed["aws"]
    source = aws["credential_source"]
    assert source["imdsv2_session_token_url"].startswith(broker.emulator), source
    creds = google_aws.Credentials.from_info(_aws_info(broker, aws, source),
                                             scopes=[CLOUD_PLATFORM])
    _clear_requests(broker)
    subject_token = creds.retrieve_subject_token(request_)
    assert _recorded(broker, "aws.imds"), "google-auth did not use the emulator's IMDSv2"
    assert json.loads(urllib.parse.unquote(subject_token))["url"] == \
        aws["regional_cred_verification_url"]

    response = _exchange(broker, subject_token=subject_token, subject_token_type=S.TT_AWS,
                         audience=aws["audience"], scopes=[STORAGE_RO, CLOUD_PLATFORM])
    _assert_federated(broker, response.access_token, _aws_principal(providers, aws),
                      scopes=[STORAGE_RO, CLOUD_PLATFORM])


def test_workforce_exchange_carries_user_project(broker, fed, providers, tmp_path, request_):
    from google.auth import identity_pool

    wf = fed["workforce"]
    assert wf["user_project"] == S.PROJECT_ID, wf
    provider = providers[wf["audience"]]
    path = tmp_path / "workforce.jwt"
    path.write_text(_mint(wf, subject="alice@example.com"))
    creds = identity_pool.Credentials.from_info(
        _pool_info(broker, wf, {"file": str(path)},
                   workforce_pool_user_project=wf["user_project"]),
        scopes=[CLOUD_PLATFORM])
    assert creds.is_workforce_pool
    subject_token = creds.retrieve_subject_token(request_)

    _clear_requests(broker)
    response = _exchange(broker, subject_token=subject_token,
                         subject_token_type=wf["subject_token_type"], audience=wf["audience"],
                         options=_options(broker, user_project=wf["user_project"]))
    info = _assert_federated(broker, response.access_token,
                             provider["principal_prefix"] + "alice@example.com")
    assert info["user_project"] == S.PROJECT_ID, info
    sts = _only(_recorded(broker, "sts.token"), "STS")
    assert sts["fields"]["options"] == {"userProject": S.PROJECT_ID}
    assert sts["client_auth"] is None  # a plain exchange adds no client authentication


def test_a_plain_exchange_is_never_cached(broker, fed):
    oidc = fed["oidc"]
    token = _mint(oidc)
    _clear_requests(broker)
    first = _exchange(broker, subject_token=token, subject_token_type=S.TT_JWT,
                      audience=oidc["audience"])
    second = _exchange(broker, subject_token=token, subject_token_type=S.TT_JWT,
                       audience=oidc["audience"])
    assert first.access_token != second.access_token
    assert len(_recorded(broker, "sts.token")) == 2


# --------------------------------------------------------------------------------------
# 2. ExchangeToken shaped by an external_account credential
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("audience", ["", "credential's"], ids=["audience-empty",
                                                                "audience-equal"])
def test_credential_mode_turns_a_callers_oidc_token_into_readers_token(broker, fed, audience):
    oidc = fed["oidc"]
    _clear_requests(broker)
    response = _exchange(broker, subject_token=_mint(oidc, subject="shaped-caller"),
                         subject_token_type=S.TT_JWT, credential="dev-federated",
                         audience=oidc["audience"] if audience else "")
    assert response.credential == "dev-federated"
    assert response.principal == READER_SA
    info = broker.tokeninfo(response.access_token)
    assert info["principal"] == f"serviceAccount:{READER_SA}", info
    assert info["grant"] == "generate-access-token", info
    assert S.scopes_of(info) == {CLOUD_PLATFORM}
    _assert_expire_time(response, info)

    # The caller's token went to STS (not dev-federated's own file), then IAM impersonated.
    sts = _only(_recorded(broker, "sts.token"), "STS")
    claims = sts["fields"]["subject_token"]["jwt"]["claims"]
    assert claims["sub"] == "shaped-caller"
    assert sts["fields"]["audience"] == oidc["audience"]
    assert sts["fields"]["scope"] == IAM_SCOPE
    iam = _only(_recorded(broker, "iam.generateAccessToken"), "generateAccessToken")
    assert iam["path"].endswith(f"/{READER_SA}:generateAccessToken")


def test_credential_mode_with_an_audience_its_grant_does_not_list_is_denied(broker, fed):
    # An audience named with the credential is the policy's first (the dev grant of
    # dev-federated allows only its own provider), then it must be the credential's.
    details = _refused(broker, grpc.StatusCode.PERMISSION_DENIED,
                       subject_token=_mint(fed["oidc"]), subject_token_type=S.TT_JWT,
                       credential="dev-federated", audience=fed["aws"]["audience"])
    info = details["ErrorInfo"]
    assert (info.reason, info.metadata["rule"]) == ("POLICY_DENIED", "audiences")
    assert info.metadata["value"] == fed["aws"]["audience"]


def test_credential_mode_with_a_token_type_the_grant_does_not_list_is_denied(broker, fed):
    details = _refused(broker, grpc.StatusCode.PERMISSION_DENIED,
                       subject_token=_mint(fed["oidc"]), subject_token_type=S.TT_AWS,
                       credential="dev-federated")
    info = details["ErrorInfo"]
    assert (info.reason, info.metadata["rule"]) == ("POLICY_DENIED", "subject_token_types")


def test_credential_mode_with_dev_aws_and_google_auths_signed_request(broker, fed, providers,
                                                                      request_):
    from google.auth import aws as google_aws

    aws = fed["aws"]
    creds = google_aws.Credentials.from_info(_aws_info(broker, aws, aws["credential_source"]),
                                             scopes=[CLOUD_PLATFORM])
    response = _exchange(broker, subject_token=creds.retrieve_subject_token(request_),
                         subject_token_type=S.TT_AWS, credential="dev-aws")
    assert response.credential == "dev-aws"
    info = _assert_federated(broker, response.access_token, _aws_principal(providers, aws))
    _assert_expire_time(response, info)


# --------------------------------------------------------------------------------------
# 3. The broker's external_account flows send what google-auth sends
# --------------------------------------------------------------------------------------


def _google_auth_refresh(broker, name: str) -> tuple[object, str | None]:
    """Loads `DIR/federation/<name>.json` with google-auth (scopes COMPARED_SCOPE) with an
    empty request log. Loading refreshes the credentials: it looks the pool's project up at
    Cloud Resource Manager with a token (`before_request`), here from a loopback server.
    (A second `refresh()` would not repeat the flow: google-auth's impersonated credentials
    keep their still-valid STS token and call only IAM.) Returns the credentials and the
    project google-auth found."""
    import google.auth
    import google.auth.transport.requests

    with S.LocalServer(_resource_manager) as rm:
        request = _LocalResourceManager(google.auth.transport.requests.Request(), rm)
        _clear_requests(broker)
        creds, project = google.auth.load_credentials_from_file(
            str(broker.root / "federation" / f"{name}.json"), scopes=[COMPARED_SCOPE],
            request=request)
    assert creds.valid and creds.token
    # The project lookup was authorized with the token of the one refresh recorded.
    assert [r["headers"].get("authorization") for r in rm.requests] == \
        [f"Bearer {creds.token}"]
    return creds, project


def _broker_get(broker, credential: str):
    _clear_requests(broker)
    response = broker.stub().GetAccessToken(
        broker.pb.GetAccessTokenRequest(credential=credential, scopes=[COMPARED_SCOPE]),
        timeout=T)
    assert not response.cache_hit, (
        f"{credential} with {COMPARED_SCOPE} was cached already: no request to compare")
    return response


def _sts_shape(record: dict) -> dict:
    """What must be equal in two STS requests: everything but the subject token (compared
    separately) and the `options` encoding (see the workforce test). Not compared either:
    `user-agent` and `x-goog-api-client`, which name the client (google-auth sends its
    `google-byoid-sdk source/... sa-impersonation/...` metrics there; Google does not read
    them to decide anything)."""
    fields = record["fields"]
    assert isinstance(fields.get("subject_token"), dict), record  # a summary, never a token
    content_type = (record["content_type"] or "").split(";")[0].strip().lower()
    return {
        "method": record["method"],
        "path": record["path"],
        "query": record["query"],
        "body_format": record["body_format"],
        "content_type": content_type,
        "field_names": sorted(fields),
        "grant_type": fields.get("grant_type"),
        "audience": fields.get("audience"),
        # a space-delimited list: order is not meaningful
        "scope": sorted((fields.get("scope") or "").split()),
        "requested_token_type": fields.get("requested_token_type"),
        "subject_token_type": fields.get("subject_token_type"),
        "options": fields.get("options"),
        "client_auth": record["client_auth"],
        "authorization": record["authorization"],
        "x-goog-user-project": record["headers"].get("x-goog-user-project"),
        "status": record["status"],
    }


def _iam_shape(record: dict) -> dict:
    fields = record["fields"]
    auth = record["authorization"] or {}
    content_type = (record["content_type"] or "").split(";")[0].strip().lower()
    return {
        "method": record["method"],
        "path": record["path"],
        "body_format": record["body_format"],
        "content_type": content_type,
        "scope": sorted(fields.get("scope") or []),
        "lifetime": fields.get("lifetime"),
        # google-auth sends "delegates": null, an absent or empty list means the same to IAM
        "delegates": fields.get("delegates") or [],
        "authorization_scheme": auth.get("scheme"),
        "x-goog-user-project": record["headers"].get("x-goog-user-project"),
        "status": record["status"],
    }


def test_dev_federated_sends_what_google_auth_sends(broker, request_):
    creds, project = _google_auth_refresh(broker, "dev-federated")
    assert project == S.PROJECT_ID
    g_sts = _only(_recorded(broker, "sts.token"), "google-auth STS")
    g_iam = _only(_recorded(broker, "iam.generateAccessToken"), "google-auth IAM")
    g_info = broker.tokeninfo(creds.token)

    response = _broker_get(broker, "dev-federated")
    b_sts = _only(_recorded(broker, "sts.token"), "broker STS")
    b_iam = _only(_recorded(broker, "iam.generateAccessToken"), "broker IAM")
    b_info = broker.tokeninfo(response.access_token)

    assert _sts_shape(b_sts) == _sts_shape(g_sts)
    # Both asked STS for the IAM scope only, then IAM for the requested scopes (google-auth's
    # impersonated_credentials rescopes its source to .../auth/iam).
    assert _sts_shape(b_sts)["scope"] == [IAM_SCOPE]
    assert b_sts["fields"]["subject_token_type"] == S.TT_JWT
    # The same file, read by both: the very same subject token.
    g_subject, b_subject = g_sts["fields"]["subject_token"], b_sts["fields"]["subject_token"]
    assert (b_subject["sha256"], b_subject["length"], b_subject["format"]) == \
        (g_subject["sha256"], g_subject["length"], g_subject["format"]) != (None, None, None)
    assert "options" not in b_sts["fields"] and b_sts["options_encoding"] is None

    assert _iam_shape(b_iam) == _iam_shape(g_iam)
    assert _iam_shape(b_iam)["scope"] == [COMPARED_SCOPE]
    assert _iam_shape(b_iam)["authorization_scheme"] == "Bearer"
    assert b_iam["path"] == f"/v1/projects/-/serviceAccounts/{READER_SA}:generateAccessToken"
    # Each side called IAM with the token its own STS exchange issued (different tokens).
    assert b_iam["authorization"]["sha256"] != g_iam["authorization"]["sha256"]

    # And the results are the same kind of token.
    for info in (g_info, b_info):
        assert info["principal"] == f"serviceAccount:{READER_SA}", info
        assert info["grant"] == "generate-access-token", info
        assert S.scopes_of(info) == {COMPARED_SCOPE}
    assert response.principal == READER_SA
    assert abs(response.expire_time.seconds - S.epoch(creds.expiry)) <= 5


_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<akid>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[^,]+), ?"
    r"Signature=REDACTED$")


def _aws_request_shape(summary: dict) -> dict:
    """The signed GetCallerIdentity request of an `aws4_request` subject token, without what
    differs between two signatures (date, signature) or between two URL-encoders."""
    assert summary["format"] == "aws4_request", summary
    aws = summary["aws"]
    headers = {h["key"].lower(): h["value"] for h in aws["headers"]}
    auth = _AUTH_RE.match(headers["authorization"])
    assert auth, headers["authorization"]
    date = headers["x-amz-date"]
    assert re.fullmatch(r"\d{8}T\d{6}Z", date), date
    assert auth["date"] == date[:8]
    return {
        "url": aws["url"],
        "method": aws["method"],
        "header_names": sorted(headers),
        "host": headers.get("host"),
        "x-goog-cloud-target-resource": headers.get("x-goog-cloud-target-resource"),
        "x-amz-security-token": headers.get("x-amz-security-token"),  # REDACTED by the log
        "credential": (auth["akid"], auth["region"], auth["service"]),
        "signed_headers": auth["signed"].split(";"),
        "body": aws.get("body"),
    }


def _imds_shape(records: list[dict]) -> dict:
    """What an IMDSv2 client did: the resources it read and how it authenticated each."""
    puts = [r for r in records if r["method"] == "PUT"]
    gets = [r for r in records if r["method"] == "GET"]
    assert puts and gets, records
    return {
        "put_paths": sorted({r["path"] for r in puts}),
        "put_ttl": sorted({r["headers"].get("x-aws-ec2-metadata-token-ttl-seconds")
                           for r in puts}),
        "get_paths": sorted({r["path"] for r in gets}),
        # every read carried an IMDSv2 session token
        "gets_with_session_token": all("x-aws-ec2-metadata-token" in r["headers"]
                                       for r in gets),
        "statuses": sorted({r["status"] for r in records}),
    }


def test_dev_aws_sends_what_google_auth_sends(broker, fed, request_):
    aws = fed["aws"]
    creds, project = _google_auth_refresh(broker, "dev-aws")
    assert project == S.PROJECT_ID
    g_sts = _only(_recorded(broker, "sts.token"), "google-auth STS")
    g_imds = _recorded(broker, "aws.imds")
    assert not _recorded(broker, "iam.generateAccessToken")

    response = _broker_get(broker, "dev-aws")
    b_sts = _only(_recorded(broker, "sts.token"), "broker STS")
    b_imds = _recorded(broker, "aws.imds")
    assert not _recorded(broker, "iam.generateAccessToken")

    assert _sts_shape(b_sts) == _sts_shape(g_sts)
    assert _sts_shape(b_sts)["scope"] == [COMPARED_SCOPE]
    assert b_sts["fields"]["subject_token_type"] == S.TT_AWS
    assert b_sts["fields"]["audience"] == aws["audience"]

    g_signed = _aws_request_shape(g_sts["fields"]["subject_token"])
    b_signed = _aws_request_shape(b_sts["fields"]["subject_token"])
    assert b_signed == g_signed
    assert b_signed["url"] == aws["regional_cred_verification_url"]
    assert b_signed["method"] == "POST"
    assert b_signed["credential"] == (aws["access_key_id"], aws["region"], "sts")
    assert b_signed["x-goog-cloud-target-resource"] == aws["audience"]
    assert b_signed["x-amz-security-token"] == "REDACTED"  # the session token was signed in
    assert "x-amz-security-token" in b_signed["signed_headers"]
    # Not compared: the order of the headers list (google-auth sorts it by name; STS reads a
    # list of key/value pairs), the signature and date, and the URL-encoding of the token
    # (url_encoding: `+` or `%20` for spaces, `/` escaped or not), which STS decodes either way.

    # Both read the emulated instance's role the same way (IMDSv2). google-auth asks for a
    # new session token before each group of reads; the broker may keep its own: counts are
    # not compared, the resources and how they were read are.
    assert _imds_shape(b_imds) == _imds_shape(g_imds)
    assert _imds_shape(b_imds)["put_ttl"] == ["300"]

    for token in (creds.token, response.access_token):
        info = broker.tokeninfo(token)
        assert info["grant"] == "sts-exchange", info
        assert S.scopes_of(info) == {COMPARED_SCOPE}
    assert broker.tokeninfo(creds.token)["principal"] == \
        broker.tokeninfo(response.access_token)["principal"]


def test_a_workforce_exchange_sends_what_google_auth_sends(broker, fed, tmp_path, request_):
    """A plain workforce ExchangeToken against google-auth's identity_pool refresh for the
    same token, audience and user project: the same request but for `options`' encoding."""
    from google.auth import identity_pool

    wf = fed["workforce"]
    token = _mint(wf, subject="bob@example.com")
    path = tmp_path / "workforce.jwt"
    path.write_text(token)
    creds = identity_pool.Credentials.from_info(
        _pool_info(broker, wf, {"file": str(path)},
                   workforce_pool_user_project=wf["user_project"]),
        scopes=[CLOUD_PLATFORM])
    _clear_requests(broker)
    creds.refresh(request_)
    g_sts = _only(_recorded(broker, "sts.token"), "google-auth STS")

    _clear_requests(broker)
    _exchange(broker, subject_token=token, subject_token_type=wf["subject_token_type"],
              audience=wf["audience"], options=_options(broker, user_project=wf["user_project"]))
    b_sts = _only(_recorded(broker, "sts.token"), "broker STS")

    assert _sts_shape(b_sts) == _sts_shape(g_sts)
    assert _sts_shape(b_sts)["options"] == {"userProject": S.PROJECT_ID}
    assert b_sts["fields"]["subject_token"]["sha256"] == g_sts["fields"]["subject_token"]["sha256"]
    # The one legitimate difference: Python google-auth percent-encodes the options JSON once
    # more before form-encoding it (`quote(json.dumps(options))`); the broker puts the JSON in
    # the form once, as Go's client does. STS decodes both (test_workforce.py:
    # test_options_encodings); the decoded options above are equal.
    assert g_sts["options_encoding"] == "percent-encoded"
    assert b_sts["options_encoding"] == "json"


def test_a_workload_exchange_sends_what_google_auth_sends(broker, fed, tmp_path, request_):
    """A plain ExchangeToken against google-auth's identity_pool refresh (no impersonation)
    of the same OIDC token: the same STS request, token included."""
    from google.auth import identity_pool

    oidc = fed["oidc"]
    token = _mint(oidc, subject="same-caller")
    path = tmp_path / "subject.jwt"
    path.write_text(token)
    creds = identity_pool.Credentials.from_info(
        _pool_info(broker, oidc, {"file": str(path)}), scopes=[STORAGE_RO])
    _clear_requests(broker)
    creds.refresh(request_)
    g_sts = _only(_recorded(broker, "sts.token"), "google-auth STS")

    _clear_requests(broker)
    _exchange(broker, subject_token=token, subject_token_type=oidc["subject_token_type"],
              audience=oidc["audience"], scopes=[STORAGE_RO])
    b_sts = _only(_recorded(broker, "sts.token"), "broker STS")

    assert _sts_shape(b_sts) == _sts_shape(g_sts)
    assert b_sts["fields"]["subject_token"] == g_sts["fields"]["subject_token"]
    assert b_sts["options_encoding"] is None and g_sts["options_encoding"] is None


# --------------------------------------------------------------------------------------
# 4. Errors through grpcio; downscoping
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("credential", ["", "dev-federated"], ids=["plain", "dev-federated"])
def test_an_expired_subject_token_is_upstream_rejected_invalid_grant(broker, fed, credential):
    oidc = fed["oidc"]
    _clear_requests(broker)
    details = _refused(broker, grpc.StatusCode.INVALID_ARGUMENT,
                       subject_token=_mint(oidc, iat=-7200, exp=-3600),
                       subject_token_type=S.TT_JWT, audience=oidc["audience"],
                       credential=credential)
    info = details["ErrorInfo"]
    assert (info.reason, info.domain) == ("UPSTREAM_REJECTED", "tokenbroker.dev"), info
    assert info.metadata["upstream_error"] == "invalid_grant", info
    sts = _only(_recorded(broker, "sts.token"), "STS")
    assert sts["status"] == 400
    assert not _recorded(broker, "iam.generateAccessToken")  # nothing after the refusal


@pytest.mark.parametrize("audience", [
    # a provider of the emulator the dev grant does not list (X.509)
    "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/"
    "dev-pool/providers/dev-x509",
    "//iam.googleapis.com/projects/999999999999/locations/global/workloadIdentityPools/"
    "other-pool/providers/oidc",
    "//iam.googleapis.com/locations/global/workforcePools/other-workforce/providers/oidc",
], ids=["x509-provider", "other-pool", "other-workforce-pool"])
def test_an_audience_the_grant_does_not_list_is_policy_denied(broker, fed, audience):
    _clear_requests(broker)
    details = _refused(broker, grpc.StatusCode.PERMISSION_DENIED,
                       subject_token=_mint(fed["oidc"]), subject_token_type=S.TT_JWT,
                       audience=audience)
    info = details["ErrorInfo"]
    assert (info.reason, info.metadata["rule"]) == ("POLICY_DENIED", "audiences"), info
    assert info.metadata["caller"] == S.DEV_APP
    assert not _recorded(broker, "sts.token")  # the policy answered, Google was not asked


def _boundary_file(broker) -> dict:
    return json.loads((broker.root / "boundary.json").read_text())["accessBoundary"]


def _google_token(broker) -> str:
    return broker.stub().GetAccessToken(broker.pb.GetAccessTokenRequest(), timeout=T).access_token


def test_downscoping_with_the_dev_boundary(broker):
    boundary = _boundary_file(broker)
    assert boundary["accessBoundaryRules"][0]["availableResource"] == DEV_BUCKET
    subject = _google_token(broker)
    _clear_requests(broker)
    response = _exchange(broker, subject_token=subject, subject_token_type=S.TT_ACCESS_TOKEN,
                         options=_options(broker, boundary))
    assert response.access_token and response.access_token != subject
    assert response.issued_token_type == S.TT_ACCESS_TOKEN
    assert response.token_type == "Bearer"
    assert not response.HasField("expire_time")  # expires with the subject token
    assert response.principal == "" and response.credential == ""

    sts = _only(_recorded(broker, "sts.token"), "STS")
    assert sts["fields"]["subject_token_type"] == S.TT_ACCESS_TOKEN
    assert "audience" not in sts["fields"] and "scope" not in sts["fields"]
    assert sts["fields"]["options"] == {"accessBoundary": boundary}

    info = broker.tokeninfo(response.access_token)
    original = broker.tokeninfo(subject)
    assert info["principal"] == original["principal"]
    assert info["exp"] == original["exp"]
    assert info["access_boundary"] == boundary, info
    assert original["access_boundary"] is None


@pytest.mark.parametrize("rule", [
    {"availableResource": DEV_BUCKET,
     "availablePermissions": ["inRole:roles/storage.objectAdmin"]},
    {"availableResource": "//storage.googleapis.com/projects/_/buckets/other-bucket",
     "availablePermissions": ["inRole:roles/storage.objectViewer"]},
], ids=["wider-role", "other-bucket"])
def test_a_boundary_wider_than_the_grants_is_policy_denied(broker, rule):
    subject = _google_token(broker)
    _clear_requests(broker)
    details = _refused(broker, grpc.StatusCode.PERMISSION_DENIED, subject_token=subject,
                       subject_token_type=S.TT_ACCESS_TOKEN,
                       options=_options(broker, {"accessBoundaryRules": [rule]}))
    info = details["ErrorInfo"]
    assert (info.reason, info.metadata["rule"]) == ("POLICY_DENIED", "access_boundary"), info
    assert not _recorded(broker, "sts.token")


def test_downscoping_without_a_boundary_is_invalid(broker):
    details = _refused(broker, grpc.StatusCode.INVALID_ARGUMENT,
                       subject_token=_google_token(broker), subject_token_type=S.TT_ACCESS_TOKEN)
    assert details["ErrorInfo"].reason == "INVALID_ACCESS_BOUNDARY"
    assert details["BadRequest"].field_violations[0].field == "options.access_boundary"

