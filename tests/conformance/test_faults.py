"""The emulator's admin API as google-auth sees it: injected faults, counters and the token
lifetime override (services/gcp-emulator/README.md; retry rules of google-protocols.md §1.5,
§3.6, §4.4, §5.6)."""

import json
import time

import pytest
import requests

import _support as S


def sa_refresh(emulator, request_, account_id="broker"):
    from google.oauth2 import service_account

    creds = service_account.Credentials.from_service_account_file(
        str(emulator.key_file(account_id)), scopes=[S.CLOUD_PLATFORM])
    creds.refresh(request_)
    return creds


def test_add_fault_answers_no_content(emulator):
    """README: `POST /_emulator/faults` answers 204 once the rule is in force."""
    r = emulator.add_fault_raw("oauth2.token", status=503, probability=0.0)
    assert r.status_code == 204, f"{r.status_code} {r.text!r}"
    assert r.text == ""


@pytest.mark.parametrize("status", [503, 500, 429])
def test_retryable_status_is_retried(emulator, request_, status):
    emulator.reset_counters()
    emulator.add_fault("oauth2.token", status=status, times=1)
    creds = sa_refresh(emulator, request_)
    assert creds.valid
    assert emulator.counter("oauth2.token") == 2
    assert emulator.tokeninfo(creds.token)["grant"] == "jwt-bearer"


def test_faulted_response_body_is_googles(emulator):
    emulator.add_fault("oauth2.token", status=503, retry_after_secs=2, times=1)
    r = emulator.post_token({"grant_type": S.JWT_BEARER, "assertion": "x"})
    assert r.status_code == 503
    assert r.headers.get("Retry-After") == "2"
    assert isinstance(r.json().get("error"), str)


def test_400_is_not_retried(emulator, request_):
    from google.auth import exceptions

    emulator.reset_counters()
    emulator.add_fault("oauth2.token", status=400, times=1)
    with pytest.raises(exceptions.RefreshError) as e:
        sa_refresh(emulator, request_)
    assert emulator.counter("oauth2.token") == 1
    assert e.value.retryable is False
    # the next call is not faulted any more
    assert sa_refresh(emulator, request_).valid


def test_retries_exhausted(emulator, request_):
    """google-auth makes 3 attempts on the token endpoint (§1.5)."""
    from google.auth import exceptions

    emulator.reset_counters()
    emulator.add_fault("oauth2.token", status=503)
    with pytest.raises(exceptions.RefreshError) as e:
        sa_refresh(emulator, request_)
    assert e.value.retryable is True
    assert emulator.counter("oauth2.token") == 3


def test_probability_zero_never_fires(emulator, request_):
    emulator.add_fault("oauth2.token", status=503, probability=0.0)
    emulator.reset_counters()
    sa_refresh(emulator, request_)
    assert emulator.counter("oauth2.token") == 1


def test_delay(emulator, request_):
    emulator.add_fault("oauth2.token", delay_ms=1200, times=1)
    t0 = time.monotonic()
    creds = sa_refresh(emulator, request_)
    assert time.monotonic() - t0 >= 1.1
    assert creds.valid


def test_malformed_body(emulator, request_):
    emulator.add_fault("oauth2.token", malformed_body=True, times=1)
    r = emulator.post_token({"grant_type": S.JWT_BEARER, "assertion": "x"})
    assert r.status_code == 200
    with pytest.raises(ValueError):
        json.loads(r.text)
    emulator.add_fault("oauth2.token", malformed_body=True, times=1)
    with pytest.raises(Exception):
        sa_refresh(emulator, request_)


def test_drop_connection(emulator, request_):
    from google.auth import exceptions

    emulator.add_fault("oauth2.token", drop_connection=True, times=1)
    with pytest.raises(exceptions.TransportError):
        sa_refresh(emulator, request_)
    assert sa_refresh(emulator, request_).valid


def test_sts_errors_are_not_retried(emulator, tmp_path, request_):
    from google.auth import exceptions, identity_pool

    p = tmp_path / "tok"
    p.write_text(emulator.workload_oidc_token())
    creds = identity_pool.Credentials.from_info({
        "type": "external_account", "audience": S.WORKLOAD_AUDIENCE,
        "subject_token_type": S.TT_JWT, "token_url": f"{emulator.url}/v1/token",
        "credential_source": {"file": str(p)}}, scopes=[S.CLOUD_PLATFORM])
    emulator.reset_counters()
    emulator.add_fault("sts.token", status=503, times=1)
    with pytest.raises(exceptions.GoogleAuthError):
        creds.refresh(request_)
    assert emulator.counter("sts.token") == 1
    creds.refresh(request_)
    assert emulator.counter("sts.token") == 2


def test_generate_access_token_fault(emulator, broker_creds, request_):
    from google.auth import exceptions, impersonated_credentials

    emulator.add_fault("iam.generateAccessToken", status=403, times=1)
    creds = impersonated_credentials.Credentials(
        source_credentials=broker_creds, target_principal=S.READER,
        target_scopes=[S.CLOUD_PLATFORM], iam_endpoint_override=emulator.iam_url(S.READER))
    with pytest.raises(exceptions.RefreshError) as e:
        creds.refresh(request_)
    body = json.loads(e.value.args[1])
    assert body["error"]["code"] == 403 and body["error"]["status"] == "PERMISSION_DENIED"


def test_metadata_retries(emulator, request_):
    """Metadata GETs are retried on 503 (§3.6)."""
    from google.auth import compute_engine

    emulator.reset_counters()
    emulator.add_fault("metadata", status=503, times=2)
    creds = compute_engine.Credentials()
    creds.refresh(request_)
    assert creds.valid
    assert emulator.counter("metadata") >= 4


def test_certs_fault(emulator, url, request_):
    from google.auth import exceptions
    from google.oauth2 import id_token, service_account

    creds = service_account.IDTokenCredentials.from_service_account_file(
        str(emulator.key_file("broker")), target_audience="https://aud.example")
    creds.refresh(request_)
    emulator.add_fault("oauth2.certs", status=500, times=1)
    with pytest.raises(exceptions.TransportError):
        id_token.verify_token(creds.token, request_, audience="https://aud.example",
                              certs_url=f"{url}/oauth2/v1/certs")


def test_tokeninfo_fault(emulator, request_):
    creds = sa_refresh(emulator, request_)
    emulator.add_fault("oauth2.tokeninfo", status=500, times=1)
    assert emulator.tokeninfo_raw(creds.token).status_code == 500
    assert emulator.tokeninfo_raw(creds.token).status_code == 200


def test_fault_list_cleared(emulator, request_):
    emulator.add_fault("oauth2.token", status=503)
    emulator.clear_faults()
    emulator.reset_counters()
    sa_refresh(emulator, request_)
    assert emulator.counter("oauth2.token") == 1


def test_counters_reset(emulator, request_):
    sa_refresh(emulator, request_)
    assert emulator.counter("oauth2.token") >= 1
    emulator.reset_counters()
    assert emulator.counter("oauth2.token") == 0


def test_invalid_fault_refused(emulator, url):
    r = requests.post(f"{url}/_emulator/faults", json={"endpoint": "no.such.endpoint", "status": 500},
                      timeout=S.HTTP_TIMEOUT)
    assert 400 <= r.status_code < 500
    r = requests.post(f"{url}/_emulator/faults", json={"endpoint": "oauth2.token"},
                      timeout=S.HTTP_TIMEOUT)
    assert 400 <= r.status_code < 500  # no effect at all


# ---------------------------------------------------------------- token lifetime


def test_lifetime_override_service_account(emulator, request_):
    emulator.set_token_lifetime(900)
    creds = sa_refresh(emulator, request_)
    S.assert_remaining(creds, 900)
    info = emulator.tokeninfo(creds.token)
    assert int(info["expires_in"]) <= 900
    S.assert_expiry_matches(creds, info)
    emulator.clear_token_lifetime()
    S.assert_remaining(sa_refresh(emulator, request_), 3599)


def test_lifetime_override_metadata(emulator, request_):
    from google.auth import compute_engine

    emulator.set_token_lifetime(1200)
    creds = compute_engine.Credentials()
    creds.refresh(request_)
    S.assert_remaining(creds, 1200)


def test_lifetime_override_authorized_user(emulator, request_):
    from google.oauth2 import credentials

    emulator.set_token_lifetime(600)
    creds = credentials.Credentials(None, refresh_token=S.USER_REFRESH_TOKEN,
                                    client_id=S.USER_CLIENT_ID, client_secret=S.USER_CLIENT_SECRET,
                                    token_uri=f"{emulator.url}/token")
    creds.refresh(request_)
    S.assert_remaining(creds, 600)


def test_lifetime_override_sts(emulator, tmp_path, request_):
    from google.auth import identity_pool

    emulator.set_token_lifetime(1500)
    p = tmp_path / "tok"
    p.write_text(emulator.workload_oidc_token())
    creds = identity_pool.Credentials.from_info({
        "type": "external_account", "audience": S.WORKLOAD_AUDIENCE,
        "subject_token_type": S.TT_JWT, "token_url": f"{emulator.url}/v1/token",
        "credential_source": {"file": str(p)}}, scopes=[S.CLOUD_PLATFORM])
    creds.refresh(request_)
    S.assert_remaining(creds, 1500)


def test_short_lifetime_makes_google_auth_refresh(emulator, request_):
    """≤225 s left: google-auth considers the token stale (§9.3)."""
    emulator.set_token_lifetime(200)
    creds = sa_refresh(emulator, request_)
    assert not creds.valid
    assert creds.token_state.name in ("STALE", "INVALID")


def test_expired_token_tokeninfo(emulator, request_):
    emulator.set_token_lifetime(1)
    creds = sa_refresh(emulator, request_)
    time.sleep(2.2)
    r = emulator.tokeninfo_raw(creds.token)
    S.oauth_error(r, 400, "invalid_token")


@pytest.mark.parametrize("seconds", [0, 43201])
def test_lifetime_out_of_range_refused(emulator, url, seconds):
    r = requests.put(f"{url}/_emulator/token-lifetime", json={"seconds": seconds},
                     timeout=S.HTTP_TIMEOUT)
    assert 400 <= r.status_code < 500
