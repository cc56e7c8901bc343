"""ID tokens from every path of the broker, checked by google-auth as a receiving service would.

`token-broker dev` (the session's `broker` fixture, conftest.py) mints them through each flow of
GenerateIdToken: `dev` (a service-account key: the JWT-bearer grant with `target_audience`),
`dev-metadata` (the metadata server's identity endpoint), `dev-reader` (an impersonated
credential: IAM Credentials generateIdToken) and `target_service_account` over `dev` (IAM
generateIdToken too). Each must verify with `google.oauth2.id_token.verify_token` against the
Google OAuth2 certs the broker's emulator publishes, carry the requested `aud`, Google's `iss`
and the right `email`, and expire at the response's `expire_time`. The emulator's
ID-token-protected function (as Cloud Run's front end) accepts a token for its URL only.

The dev world has no delegation chain that Google accepts: broker@ is Token Creator on reader@
and writer@, but neither holds the role on the other. The chains the dev policy allows therefore
fail at Google (PERMISSION_DENIED, UPSTREAM_REJECTED).
"""

from __future__ import annotations

import time

import grpc
import pytest

import _support as S

BROKER_SA = "broker@dev-project.iam.gserviceaccount.com"
READER_SA = "reader@dev-project.iam.gserviceaccount.com"
WRITER_SA = "writer@dev-project.iam.gserviceaccount.com"
T = S.GRPC_TIMEOUT


def _generate(broker, **fields):
    return broker.stub().GenerateIdToken(broker.pb.GenerateIdTokenRequest(**fields), timeout=T)


def _verify(broker, request_, token: str, audience: str) -> dict:
    from google.oauth2 import id_token

    return id_token.verify_token(token, request_, audience=audience, certs_url=broker.certs_url)


# (id, request fields but the audience, expected principal, whether `email` must be present)
PATHS = [
    # The key flow and the metadata server always include the email, whatever was asked.
    ("dev-key", dict(credential="dev"), BROKER_SA, True),
    ("dev-key-include-email", dict(credential="dev", include_email=True), BROKER_SA, True),
    ("default-grant", dict(), BROKER_SA, True),
    ("dev-metadata", dict(credential="dev-metadata"), BROKER_SA, True),
    ("dev-metadata-include-email", dict(credential="dev-metadata", include_email=True),
     BROKER_SA, True),
    # IAM generateIdToken adds the email only when asked.
    ("dev-reader", dict(credential="dev-reader"), READER_SA, False),
    ("dev-reader-include-email", dict(credential="dev-reader", include_email=True),
     READER_SA, True),
    ("target-reader", dict(credential="dev", target_service_account=READER_SA), READER_SA, False),
    ("target-reader-include-email",
     dict(credential="dev", target_service_account=READER_SA, include_email=True),
     READER_SA, True),
    ("target-writer-include-email",
     dict(credential="dev", target_service_account=WRITER_SA, include_email=True),
     WRITER_SA, True),
]


@pytest.mark.parametrize("name,fields,principal,has_email", PATHS, ids=[p[0] for p in PATHS])
def test_an_id_token_of_every_path_verifies_with_google_auth(broker, request_, name, fields,
                                                              principal, has_email):
    audience = f"https://{name}.id-tokens.example.com/"
    before = int(time.time())
    response = _generate(broker, audience=audience, **fields)
    claims = _verify(broker, request_, response.id_token, audience)

    assert claims["aud"] == audience
    assert claims["iss"] == S.GOOGLE_ISSUER
    if has_email:
        assert claims["email"] == principal
        assert claims["email_verified"] in (True, "true")
    else:
        assert "email" not in claims, claims
    # exp is the response's expire_time, in whole seconds; Google fixes the lifetime at 1 hour.
    assert response.expire_time.nanos == 0
    assert claims["exp"] == response.expire_time.seconds
    assert claims["exp"] - claims["iat"] == 3600
    assert before - 5 <= claims["iat"] <= time.time() + 5
    assert claims["sub"].isdigit(), claims  # the account's numeric id, never its email
    assert response.principal == principal
    assert response.credential == fields.get("credential", "dev")
    assert not response.last_known_good


def test_a_repeated_request_is_served_from_the_cache(broker, request_):
    audience = "https://cached.id-tokens.example.com/"
    first = _generate(broker, audience=audience, credential="dev-reader")
    second = _generate(broker, audience=audience, credential="dev-reader")
    assert not first.cache_hit
    assert second.cache_hit
    assert second.id_token == first.id_token
    assert second.expire_time == first.expire_time


def test_include_email_is_part_of_the_cache_key(broker, request_):
    """An ID token without `email` must not answer a request that asks for it (and back)."""
    audience = "https://include-email.id-tokens.example.com/"
    fields = dict(credential="dev", target_service_account=READER_SA)
    without = _generate(broker, audience=audience, **fields)
    with_email = _generate(broker, audience=audience, include_email=True, **fields)
    again_without = _generate(broker, audience=audience, **fields)
    assert "email" not in _verify(broker, request_, without.id_token, audience)
    assert _verify(broker, request_, with_email.id_token, audience)["email"] == READER_SA
    assert not with_email.cache_hit
    assert again_without.cache_hit and again_without.id_token == without.id_token


@pytest.mark.parametrize("fields", [
    dict(credential="dev"),
    dict(credential="dev-metadata"),
    dict(credential="dev-reader"),
    dict(credential="dev", target_service_account=READER_SA),  # no email: the caller is `sub`
], ids=["dev", "dev-metadata", "dev-reader", "target-reader"])
def test_the_emulators_function_accepts_a_token_for_its_url(broker, request_, fields):
    response = _generate(broker, audience=broker.function_url, **fields)
    _verify(broker, request_, response.id_token, broker.function_url)
    r = broker.call_function(response.id_token)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["message"] == "hello"
    assert body["caller"] in (response.principal, S.decode_jwt_unverified(response.id_token)[1]["sub"])


def test_the_function_refuses_a_token_for_another_audience(broker, request_):
    audience = "https://another-service.example.com"
    response = _generate(broker, audience=audience, credential="dev")
    _verify(broker, request_, response.id_token, audience)  # a good token, just not for it
    r = broker.call_function(response.id_token)
    assert r.status_code == 403, r.text
    assert "audience" in r.text
    assert broker.call_function("").status_code == 401


def test_google_auth_refuses_a_token_for_another_audience(broker, request_):
    from google.auth import exceptions

    response = _generate(broker, audience="https://a.example.com", credential="dev-metadata")
    with pytest.raises(exceptions.GoogleAuthError):
        _verify(broker, request_, response.id_token, "https://b.example.com")
    with pytest.raises(exceptions.GoogleAuthError):
        _verify(broker, request_, S.tamper(response.id_token), "https://a.example.com")


@pytest.mark.parametrize("target,delegates", [
    (READER_SA, [WRITER_SA]),  # writer@ holds no Token Creator on reader@
    (WRITER_SA, [READER_SA]),  # nor reader@ on writer@
], ids=["broker-writer-reader", "broker-reader-writer"])
def test_a_chain_google_refuses_is_upstream_rejected(broker, target, delegates):
    with pytest.raises(grpc.RpcError) as raised:
        _generate(broker, audience="https://chain.id-tokens.example.com/", credential="dev",
                  target_service_account=target, delegates=delegates, include_email=True)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED, raised.value
    info = S.rpc_details(raised.value)["ErrorInfo"]
    assert (info.reason, info.domain) == ("UPSTREAM_REJECTED", "tokenbroker.dev"), info
    assert info.metadata["upstream_error"] == "IAM_PERMISSION_DENIED", info


def test_a_user_credential_cannot_mint_id_tokens(broker):
    """dev-user's grant allows GetAccessToken only: the policy answers first."""
    with pytest.raises(grpc.RpcError) as raised:
        _generate(broker, audience="https://user.id-tokens.example.com/", credential="dev-user")
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = S.rpc_details(raised.value)["ErrorInfo"]
    assert info.reason == "POLICY_DENIED"
    assert info.metadata["rule"] == "rpc"


def test_an_audience_outside_the_grant_is_policy_denied(broker):
    with pytest.raises(grpc.RpcError) as raised:
        _generate(broker, audience="http://plain-http.example.com/", credential="dev")
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = S.rpc_details(raised.value)["ErrorInfo"]
    assert (info.reason, info.metadata["rule"]) == ("POLICY_DENIED", "audiences")


def test_delegates_without_a_target_are_invalid(broker):
    with pytest.raises(grpc.RpcError) as raised:
        _generate(broker, audience="https://x.example.com/", credential="dev",
                  delegates=[WRITER_SA])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = S.rpc_details(raised.value)
    assert details["BadRequest"].field_violations[0].field.startswith("delegates")
