"""The broker through grpcio, Google's own gRPC library (C core): what a Python workload sees.

`token-broker dev` runs in a temp dir with its own embedded emulator (one for the session: the
`broker` fixture of conftest.py); stubs are generated from proto/ with grpc_tools; errors are
read with grpcio-status as google.rpc details. This checks the broker's contract with a client
it did not write: mutual TLS, tokens Google recognises, ErrorInfo/RetryInfo details, deadlines
answered as DEADLINE_EXCEEDED with details before grpcio's own timer fires, and the dev
policy's rate limit.
"""

from __future__ import annotations

import datetime
import time

import grpc
import pytest
import requests

import _support as S

APP = S.DEV_APP
READER = S.DEV_READER
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
STORAGE_RO = "https://www.googleapis.com/auth/devstorage.read_only"

# `broker` (conftest.py): one `token-broker dev` for the session, shared with the other
# test_broker_* modules.
_details = S.rpc_details


def test_grpcio_gets_a_token_google_recognises(broker):
    response = broker.stub().GetAccessToken(broker.pb.GetAccessTokenRequest(), timeout=10)
    assert response.access_token.startswith("ya29.")
    assert response.principal == "broker@dev-project.iam.gserviceaccount.com"
    assert not response.last_known_good
    info = requests.get(f"{broker.emulator}/tokeninfo",
                        params={"access_token": response.access_token}, timeout=10).json()
    assert info["scope"] == CLOUD_PLATFORM


def test_a_denial_carries_error_info_naming_the_rule(broker):
    with pytest.raises(grpc.RpcError) as raised:
        broker.stub("readonly").GetAccessToken(
            broker.pb.GetAccessTokenRequest(scopes=[CLOUD_PLATFORM]), timeout=10)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = _details(raised.value)["ErrorInfo"]
    assert (info.reason, info.domain) == ("POLICY_DENIED", "tokenbroker.dev")
    assert info.metadata["rule"] == "scopes"
    assert info.metadata["caller"] == READER
    assert info.metadata["value"] == CLOUD_PLATFORM


def test_a_bad_field_carries_a_bad_request(broker):
    with pytest.raises(grpc.RpcError) as raised:
        broker.stub().GetAccessToken(
            broker.pb.GetAccessTokenRequest(scopes=[CLOUD_PLATFORM, "not a scope"]), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = _details(raised.value)
    assert details["ErrorInfo"].reason == "INVALID_SCOPE"
    assert details["BadRequest"].field_violations[0].field == "scopes[1]"


def test_a_callers_deadline_ends_deadline_exceeded_with_details_not_grpcios_own(broker):
    broker.fault({"endpoint": "oauth2.token", "delay_ms": 4000, "times": 1})
    try:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            broker.stub().GetAccessToken(
                broker.pb.GetAccessTokenRequest(
                    scopes=["https://www.googleapis.com/auth/devstorage.read_write"]),
                timeout=1.5)
        took = time.monotonic() - started
    finally:
        broker.clear_faults()
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The broker's answer (with its ErrorInfo) arrived before grpcio gave up by itself.
    info = _details(raised.value)["ErrorInfo"]
    assert info.reason == "UPSTREAM_DEADLINE_EXCEEDED"
    assert info.metadata["upstream"] == broker.emulator.removeprefix("http://")
    assert 1.2 < took < 1.5, took


def test_a_burst_over_the_rate_limit_is_resource_exhausted_with_retry_info(broker):
    stub = broker.stub("readonly")
    request = broker.pb.GetAccessTokenRequest(scopes=[STORAGE_RO])
    refused = None
    for _ in range(200):
        try:
            stub.GetAccessToken(request, timeout=10)
        except grpc.RpcError as error:
            refused = error
            break
    assert refused is not None, "the read-only workload's 10/s (burst 20) limit never applied"
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = _details(refused)
    assert details["ErrorInfo"].reason == "RATE_LIMITED"
    assert details["ErrorInfo"].metadata["limit"] == "caller"
    delay = details["RetryInfo"].retry_delay
    assert datetime.timedelta(0) < delay.ToTimedelta() <= datetime.timedelta(seconds=1)
    # The app, another caller, is not affected.
    broker.stub().GetAccessToken(broker.pb.GetAccessTokenRequest(), timeout=10)


def test_a_feature_of_a_later_release_names_the_feature(broker):
    # ExchangeToken itself is served now (test_broker_exchange.py); client-side Credential
    # Access Boundaries (an intermediate token) are documented as a later release's. The
    # request's fields are checked before anything else, so nothing reaches Google.
    with pytest.raises(grpc.RpcError) as raised:
        broker.stub().ExchangeToken(broker.pb.ExchangeTokenRequest(
            subject_token="ya29.not-read",
            subject_token_type="urn:ietf:params:oauth:token-type:access_token",
            requested_token_type=(
                "urn:ietf:params:oauth:token-type:access_boundary_intermediate_token")),
            timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    info = _details(raised.value)["ErrorInfo"]
    assert info.reason == "FEATURE_NOT_IMPLEMENTED"
    assert "access_boundary_intermediate_token" in info.metadata["feature"], info


def test_a_client_certificate_of_an_untrusted_ca_is_refused(broker):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rogue CA")])
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(APP)]),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(broker.root / "ca.pem").read_bytes(),
        private_key=key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()),
        certificate_chain=cert.public_bytes(serialization.Encoding.PEM),
    )
    stub = broker.pb_grpc.TokenBrokerStub(
        grpc.secure_channel(f"127.0.0.1:{broker.port}", credentials))
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetAccessToken(broker.pb.GetAccessTokenRequest(), timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
