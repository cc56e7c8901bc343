"""compute_engine.Credentials, ADC and metadata ID tokens against the emulated GCE metadata
server (google-protocols.md §3, §10.2). GCE_METADATA_HOST/IP point at the emulator (conftest)."""

import requests

import pytest

import _support as S


def test_google_auth_points_at_emulator(emulator):
    from google.auth.compute_engine import _metadata

    hostport = emulator.url[len("http://"):]
    assert _metadata._GCE_METADATA_HOST == hostport
    assert _metadata._get_metadata_ip_root(False) == f"http://{hostport}"


def test_ping(emulator, request_):
    from google.auth.compute_engine import _metadata

    assert _metadata.ping(request_) is True
    assert _metadata.is_on_gce(request_) is True
    r = requests.get(emulator.url + "/", headers={"Metadata-Flavor": "Google"}, timeout=S.HTTP_TIMEOUT)
    assert r.status_code == 200 and r.headers.get("Metadata-Flavor") == "Google"


def test_default_credentials(emulator, request_):
    from google.auth import compute_engine

    emulator.reset_counters()
    creds = compute_engine.Credentials()
    creds.refresh(request_)
    assert creds.service_account_email == S.BROKER
    info = emulator.tokeninfo(creds.token)
    assert info["principal"] == f"serviceAccount:{S.BROKER}"
    assert info["email"] == S.BROKER
    assert info["grant"] == "metadata"
    assert S.scopes_of(info) == set(S.METADATA_SCOPES)
    S.assert_expiry_matches(creds, info)
    assert 225 < S.remaining(creds) <= 3600
    assert emulator.counter("metadata") >= 2


def test_requested_scopes(emulator, request_):
    """GCE ignores requested scopes; Cloud Run honours them (§3.4). Either is Google's."""
    from google.auth import compute_engine

    creds = compute_engine.Credentials(scopes=[S.DEVSTORAGE_RO])
    creds.refresh(request_)
    info = emulator.tokeninfo(creds.token)
    assert S.scopes_of(info) in ({S.DEVSTORAGE_RO}, set(S.METADATA_SCOPES)), info["scope"]
    assert info["grant"] == "metadata"
    S.assert_expiry_matches(creds, info)


def test_credentials_by_email(emulator, request_):
    from google.auth import compute_engine

    creds = compute_engine.Credentials(service_account_email=S.BROKER)
    creds.refresh(request_)
    assert emulator.tokeninfo(creds.token)["email"] == S.BROKER


def test_adc_picks_gce(emulator, request_):
    import google.auth
    from google.auth import compute_engine

    creds, project = google.auth.default(scopes=[S.CLOUD_PLATFORM])
    assert isinstance(creds, compute_engine.Credentials)
    assert project == S.PROJECT_ID
    creds.refresh(request_)
    assert emulator.tokeninfo(creds.token)["principal"] == f"serviceAccount:{S.BROKER}"


def test_adc_project_from_metadata(emulator, monkeypatch):
    import google.auth

    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")
    _, project = google.auth.default()
    assert project == S.PROJECT_ID


def test_universe_domain(emulator, request_):
    from google.auth import compute_engine

    creds = compute_engine.Credentials()
    assert creds.universe_domain == "googleapis.com"


# ---------------------------------------------------------------- ID tokens


def _verify(emulator, request_, token, aud):
    from google.oauth2 import id_token

    return id_token.verify_token(token, request_, audience=aud,
                                 certs_url=f"{emulator.url}/oauth2/v1/certs")


def test_id_token_credentials_metadata_endpoint(emulator, request_):
    from google.auth import compute_engine

    aud = "https://service.example.com"
    creds = compute_engine.IDTokenCredentials(request_, aud, use_metadata_identity_endpoint=True)
    creds.refresh(request_)
    claims = _verify(emulator, request_, creds.token, aud)
    assert claims["iss"] == "https://accounts.google.com"
    assert claims["aud"] == aud
    assert claims["email"] == S.BROKER and claims["email_verified"] is True
    assert claims["sub"].isdigit() and len(claims["sub"]) == 21
    assert S.epoch(creds.expiry) == claims["exp"]
    # google-auth asks for format=full (§3.4)
    ce = claims["google"]["compute_engine"]
    assert ce["project_id"] == S.PROJECT_ID
    assert ce["project_number"] == int(S.PROJECT_NUMBER)
    assert ce["zone"] == S.ZONE
    assert ce["instance_id"] == S.INSTANCE_ID
    assert ce["instance_name"] == S.INSTANCE_NAME


def test_fetch_id_token(emulator, request_):
    from google.oauth2 import id_token

    aud = "https://other.example.com"
    token = id_token.fetch_id_token(request_, aud)
    claims = _verify(emulator, request_, token, aud)
    assert claims["email"] == S.BROKER


def test_identity_standard_format(emulator):
    r = emulator.metadata("instance/service-accounts/default/identity", audience="https://a.example")
    assert r.status_code == 200, r.text
    assert not r.headers["Content-Type"].startswith("application/json")
    _, claims = S.decode_jwt_unverified(r.text)
    assert "google" not in claims and claims["aud"] == "https://a.example"


# ---------------------------------------------------------------- the metadata server's wire format


@pytest.mark.parametrize("path,expected", [
    ("project/project-id", S.PROJECT_ID),
    ("project/numeric-project-id", S.PROJECT_NUMBER),
    ("instance/zone", f"projects/{S.PROJECT_NUMBER}/zones/{S.ZONE}"),
    ("instance/id", S.INSTANCE_ID),
    ("instance/name", S.INSTANCE_NAME),
    ("instance/service-accounts/default/email", S.BROKER),
    (f"instance/service-accounts/{S.BROKER}/email", S.BROKER),
    ("instance/service-accounts/default/aliases", "default"),
])
def test_scalars(emulator, path, expected):
    r = emulator.metadata(path)
    assert r.status_code == 200, r.text
    assert r.headers.get("Metadata-Flavor") == "Google"
    ctype = r.headers.get("Content-Type", "")
    assert ctype and not ctype.startswith("application/json"), ctype
    assert r.text.strip() == expected


def test_scopes_listing(emulator):
    r = emulator.metadata("instance/service-accounts/default/scopes")
    assert r.status_code == 200
    assert r.text.split() == S.METADATA_SCOPES


def test_service_accounts_listing(emulator):
    r = emulator.metadata("instance/service-accounts/")
    assert r.status_code == 200
    assert set(r.text.split()) == {"default/", f"{S.BROKER}/"}


@pytest.mark.parametrize("acct", ["default", S.BROKER])
def test_recursive_account_info(emulator, acct):
    r = emulator.metadata(f"instance/service-accounts/{acct}/", recursive="true")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["email"] == S.BROKER
    assert body["scopes"] == S.METADATA_SCOPES
    assert "default" in body["aliases"]


@pytest.mark.parametrize("acct", ["default", S.BROKER])
def test_token_shape(emulator, acct):
    r = emulator.metadata(f"instance/service-accounts/{acct}/token")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert isinstance(body["expires_in"], int) and 225 < body["expires_in"] <= 3600
    assert emulator.tokeninfo(body["access_token"])["grant"] == "metadata"


@pytest.mark.parametrize("path", ["universe/universe-domain", "universe/universe_domain"])
def test_universe_domain_paths(emulator, path):
    r = emulator.metadata(path)
    assert r.status_code == 404 or (r.status_code == 200 and r.text.strip() == "googleapis.com")


def test_directory_without_slash_redirects(emulator):
    r = emulator.metadata("instance/service-accounts")
    assert r.status_code == 301, r.status_code
    assert r.headers["Location"].endswith("instance/service-accounts/")


# ---------------------------------------------------------------- negative cases


def test_missing_metadata_flavor(emulator):
    r = emulator.metadata("instance/service-accounts/default/token", headers={})
    assert r.status_code == 403, r.text
    assert r.headers.get("Metadata-Flavor") == "Google"


def test_wrong_metadata_flavor(emulator):
    r = emulator.metadata("project/project-id", headers={"Metadata-Flavor": "Amazon"})
    assert r.status_code == 403, r.text


def test_x_forwarded_for(emulator):
    r = emulator.metadata("instance/service-accounts/default/token",
                          headers={"Metadata-Flavor": "Google", "X-Forwarded-For": "10.0.0.1"})
    assert r.status_code == 403, r.text
    assert r.headers.get("Metadata-Flavor") == "Google"


def test_unknown_path(emulator):
    r = emulator.metadata("instance/no-such-thing")
    assert r.status_code == 404
    assert r.headers["Content-Type"].startswith("text/html")
    assert r.headers.get("Metadata-Flavor") == "Google"


def test_unknown_account(emulator):
    r = emulator.metadata(f"instance/service-accounts/{S.READER}/token")
    assert r.status_code == 404, r.text


def test_identity_without_audience(emulator):
    r = emulator.metadata("instance/service-accounts/default/identity")
    assert r.status_code == 400, r.text


def test_x_forwarded_for_seen_by_google_auth(emulator, request_):
    """google-auth turns the 403 into a TransportError/RefreshError."""
    from google.auth import exceptions
    from google.auth.compute_engine import _metadata

    with pytest.raises(exceptions.TransportError):
        _metadata.get(request_, "instance/service-accounts/default/token",
                      headers={"X-Forwarded-For": "10.0.0.1"})
