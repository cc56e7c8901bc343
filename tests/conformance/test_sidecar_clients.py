"""Real Google clients, unmodified, get the broker's tokens from the metadata sidecar.

`token-broker dev` (the session's `broker` fixture, conftest.py) also runs the metadata sidecar
(`services/metadata-sidecar`) on loopback, authenticated as the `app` workload, and exports its
address in `DIR/env` as GCE_METADATA_HOST, GCE_METADATA_IP and GCE_METADATA_ROOT. Its accounts
(`DIR/sidecar.toml`): `default` is broker@ (the broker credential `dev`, a service-account
key), and reader@ (`dev-reader`, impersonated) can be named by its email.

Every client runs in a process of its own, with an environment that names only the sidecar
(google-auth reads GCE_METADATA_HOST when it is imported, and this process's google-auth points
at the session's emulator): GCE_METADATA_HOST and GCE_METADATA_IP (gcloud: GCE_METADATA_ROOT)
= the sidecar, GCE_METADATA_MTLS_MODE=none, GOOGLE_API_USE_CLIENT_CERTIFICATE=false, an empty
CLOUDSDK_CONFIG and HOME, no GOOGLE_APPLICATION_CREDENTIALS, no project variables. Each process
also carries a socket-level guard (clients/loopback_guard.py, node/loopback-guard.js; gcloud
gets it through clients/site/sitecustomize.py) that refuses any non-loopback connection and
records it; a test fails on any record, and if the guard did not run.

What proves a token is the broker's, and not the emulator's own metadata server's:
- the broker's emulator's tokeninfo knows it, for the right account, scopes and expiry, and
  reports how it was minted: broker@'s `dev` credential uses its key (`grant: jwt-bearer`),
  reader@'s is IAM generateAccessToken; the emulator's metadata server would say `metadata`;
- the broker holds the same token in its cache: the same request over gRPC as the `app`
  workload is a cache hit that returns that very token (access tokens by credential and
  scopes; ID tokens by credential, audience and include_email, which the sidecar always sets);
- ID tokens verify with google-auth's `id_token.verify_token` against the Google certs the
  broker's emulator publishes.

Clients:
1. Python google-auth (clients/google_auth_metadata.py): `google.auth.default()` plus refresh,
   `compute_engine.Credentials` with explicit scopes and with reader@ as
   `service_account_email` (google-auth refreshes that one from the `default` path: see the
   test), `id_token.fetch_id_token`, and `IDTokenCredentials(use_metadata_identity_endpoint=
   True)`; a scope the policy does not grant fails fast.
2. Node google-auth-library (node/adc.js, the version pinned in node/package-lock.json, which
   run.sh installs with `npm ci`) through ADC: `getAccessToken`, `getProjectId` and
   `getIdTokenClient(aud)` with `idTokenProvider.fetchIdToken(aud)`; a `Compute` client that
   names reader@. gcloud is kept off its PATH, so the project can come from nowhere but the
   metadata server.
3. gcloud (only in the machine image; skipped without it): `auth print-access-token` for the
   default account and for reader@ by email, `auth list` and `config list`, and
   `auth print-identity-token` with `--audiences` and with its default audience, its own
   client ID, which the dev policy allows.
4. google-auth `external_account` credentials whose executable source is `tokenctl`
   (`pluggable.Credentials`; clients/google_auth_external_account.py):
   `tokenctl print-external-account-config` for the emulator's `dev-google` provider (it
   trusts Google-signed ID tokens), loaded with `google.auth.load_credentials_from_file`, gives
   an STS token for the dev-pool principal whose subject is broker@'s unique ID; with
   impersonation, reader@'s token.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

import _support as S

HERE = Path(__file__).resolve().parent
CLIENTS = HERE / "clients"
NODE_DIR = HERE / "node"
T = S.GRPC_TIMEOUT
CLIENT_TIMEOUT = 50  # seconds a client process may take (below pytest-timeout's 60)

BROKER_SA = S.BROKER
READER_SA = S.READER
CLOUD_PLATFORM = S.CLOUD_PLATFORM
STORAGE_RO = S.DEVSTORAGE_RO
GCLOUD_CLIENT_ID = "32555940559.apps.googleusercontent.com"

GOOGLE_PROVIDER = (f"projects/{S.PROJECT_NUMBER}/locations/global/workloadIdentityPools/"
                   "dev-pool/providers/dev-google")
GOOGLE_PROVIDER_AUDIENCE = f"//iam.googleapis.com/{GOOGLE_PROVIDER}"
# The provider lists no allowed audiences: it accepts its own name, and the broker's policy
# allows https:// audiences, so the ID token is asked for with the https: prefix.
GOOGLE_PROVIDER_TOKEN_AUD = f"https://iam.googleapis.com/{GOOGLE_PROVIDER}"
DEV_POOL = f"projects/{S.PROJECT_NUMBER}/locations/global/workloadIdentityPools/dev-pool"

# Variables that must not reach a client: they could send it elsewhere than the sidecar, or
# answer what the test wants the metadata server to answer (the project).
_HIDDEN = {
    "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "gcloud_project",
    "google_cloud_project", "GOOGLE_CLOUD_QUOTA_PROJECT", "CLOUDSDK_CORE_PROJECT",
    "GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "GOOGLE_API_CERTIFICATE_CONFIG",
    "GOOGLE_CLOUD_UNIVERSE_DOMAIN", "METADATA_SERVER_DETECTION", "NO_GCE_CHECK",
    "GCE_METADATA_TIMEOUT", "GCE_METADATA_DETECT_RETRIES", "PYTHONPATH", "PYTHONHOME",
    "CLOUDSDK_PYTHON_SITEPACKAGES", "CLOUDSDK_PYTHON_ARGS", "NODE_OPTIONS", "NODE_PATH",
    "TOKEN_BROKER_ADDR", "TOKEN_BROKER_CA", "TOKEN_BROKER_CERT", "TOKEN_BROKER_KEY",
}


# --------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sidecar(broker) -> str:
    """The sidecar's `127.0.0.1:PORT`, as `DIR/env` exports it; ready (it holds a token for
    its default account)."""
    host = broker.env.get("GCE_METADATA_HOST", "")
    assert host.startswith("127.0.0.1:"), f"DIR/env: GCE_METADATA_HOST={host!r}"
    assert broker.env.get("GCE_METADATA_IP") == host, broker.env
    assert broker.env.get("GCE_METADATA_ROOT") == host, broker.env
    deadline = time.monotonic() + 30
    while True:
        r = requests.get(f"http://{host}/readyz", timeout=S.HTTP_TIMEOUT)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 200, f"the sidecar is not ready: {r.status_code} {r.text}"
    return host


class Client:
    """The environment of one client process, in its own directory under `tmp_path`."""

    def __init__(self, tmp_path: Path, sidecar: str):
        self.dir = tmp_path
        self.guard_log = tmp_path / "guard.log"
        config = tmp_path / "gcloud-config"
        home = tmp_path / "home"
        config.mkdir()
        home.mkdir()
        self.env = {k: v for k, v in os.environ.items()
                    if k not in _HIDDEN and not k.startswith("GCE_METADATA")}
        self.env.update({
            "GCE_METADATA_HOST": sidecar,
            "GCE_METADATA_IP": sidecar,
            "GCE_METADATA_ROOT": sidecar,
            "GCE_METADATA_MTLS_MODE": "none",
            "GOOGLE_API_USE_CLIENT_CERTIFICATE": "false",
            "GOOGLE_API_USE_MTLS_ENDPOINT": "never",
            "CLOUDSDK_CONFIG": str(config),
            "HOME": str(home),
            "NO_PROXY": "*",
            "no_proxy": "*",
            "CONFORMANCE_GUARD_LOG": str(self.guard_log),
        })

    def run(self, argv: list[str], *, cwd: Path | None = None,
            expect_success: bool = True) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run([str(a) for a in argv], env=self.env, cwd=cwd,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=CLIENT_TIMEOUT)
        finally:
            self.check_guard()
        if expect_success:
            assert proc.returncode == 0, (
                f"{argv[0]} exited with {proc.returncode}\nstdout: {proc.stdout[-3000:]}\n"
                f"stderr: {proc.stderr[-5000:]}")
        return proc

    def run_json(self, argv: list[str], **kw) -> dict:
        proc = self.run(argv, **kw)
        lines = proc.stdout.strip().splitlines()
        assert lines, f"no output; stderr: {proc.stderr[-3000:]}"
        return json.loads(lines[-1])

    def check_guard(self) -> None:
        lines = self.guard_log.read_text().splitlines() if self.guard_log.exists() else []
        assert "installed" in lines, "the loopback guard did not run in the client process"
        refused = [line for line in lines if line != "installed"]
        assert not refused, f"the client tried to reach non-loopback addresses: {refused}"


@pytest.fixture
def client(tmp_path, sidecar) -> Client:
    return Client(tmp_path, sidecar)


def python_client(client: Client, *args: str) -> dict:
    return client.run_json([sys.executable, CLIENTS / "google_auth_metadata.py", *args])


def assert_brokers_access_token(broker, token: str, *, email: str, credential: str,
                                scopes: list[str], grant: str, expiry: int | None = None) -> dict:
    """`token` is `email`'s access token for `scopes`, minted by the broker's `credential`
    (tokeninfo's `grant`), and the one the broker holds in its cache."""
    info = broker.tokeninfo(token)
    assert info["email"] == email, info
    assert info["principal"] == f"serviceAccount:{email}", info
    assert S.scopes_of(info) == set(scopes), info
    assert info["grant"] == grant, info
    assert info["grant"] != "metadata", "a token of the emulator's own metadata server"
    # The sidecar never hands out a token Google's clients would treat as stale.
    assert int(info["expires_in"]) > 225, info
    if expiry is not None:
        assert abs(expiry - int(info["exp"])) <= 3, (expiry, info["exp"])
    held = broker.stub().GetAccessToken(
        broker.pb.GetAccessTokenRequest(credential=credential, scopes=scopes), timeout=T)
    assert held.cache_hit, "the broker did not mint this token: its cache holds none"
    assert held.access_token == token, "the broker's cached token is another one"
    assert held.principal == email
    return info


def assert_brokers_id_token(broker, token: str, *, audience: str, email: str = BROKER_SA,
                            credential: str = "dev") -> dict:
    """`token` is a Google ID token of `email` for `audience` that verifies with google-auth,
    and the one the broker holds (the sidecar always asks for the email)."""
    from google.auth.transport.requests import Request
    from google.oauth2 import id_token

    claims = id_token.verify_token(token, Request(), audience=audience,
                                   certs_url=broker.certs_url)
    assert claims["aud"] == audience, claims
    assert claims["iss"] == S.GOOGLE_ISSUER, claims
    assert claims["email"] == email, claims
    assert claims["sub"].isdigit(), claims
    assert claims["exp"] - time.time() > 225, claims
    held = broker.stub().GenerateIdToken(
        broker.pb.GenerateIdTokenRequest(audience=audience, credential=credential,
                                         include_email=True), timeout=T)
    assert held.cache_hit, "the broker did not mint this ID token: its cache holds none"
    assert held.id_token == token, "the broker's cached ID token is another one"
    assert held.principal == email
    return claims


def unique_id(broker, credential: str = "dev") -> str:
    """The numeric unique ID of a credential's service account (tokeninfo's `sub`)."""
    response = broker.stub().GetAccessToken(
        broker.pb.GetAccessTokenRequest(credential=credential, scopes=[CLOUD_PLATFORM]),
        timeout=T)
    sub = broker.tokeninfo(response.access_token)["sub"]
    assert sub.isdigit(), sub
    return sub


# --------------------------------------------------------------------------------------
# 1. Python google-auth
# --------------------------------------------------------------------------------------


def test_the_sidecar_is_what_dev_mode_configured(broker, sidecar):
    config = (broker.root / "sidecar.toml").read_text()
    assert BROKER_SA in config and READER_SA in config, config
    r = requests.get(f"http://{sidecar}/computeMetadata/v1/instance/service-accounts/",
                     headers={"Metadata-Flavor": "Google"}, timeout=S.HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.headers.get("Metadata-Flavor") == "Google", r.headers
    assert set(r.text.split()) == {"default/", f"{BROKER_SA}/", f"{READER_SA}/"}, r.text


def test_python_google_auth_default_credentials(broker, client):
    out = python_client(client, "default")
    assert out["class"] == "google.auth.compute_engine.credentials.Credentials", out
    assert out["project"] == S.PROJECT_ID, "the project did not come from the metadata server"
    assert out["valid"] and out["service_account_email"] == BROKER_SA, out
    assert_brokers_access_token(broker, out["token"], email=BROKER_SA, credential="dev",
                                scopes=[CLOUD_PLATFORM], grant="jwt-bearer",
                                expiry=out["expiry"])


def test_python_compute_engine_credentials_with_explicit_scopes(broker, client):
    out = python_client(client, "access", "--scope", STORAGE_RO)
    assert out["scopes"] == [STORAGE_RO], out
    info = assert_brokers_access_token(broker, out["token"], email=BROKER_SA, credential="dev",
                                       scopes=[STORAGE_RO], grant="jwt-bearer",
                                       expiry=out["expiry"])
    assert info["scope"] == STORAGE_RO, info


def test_python_compute_engine_credentials_of_a_non_default_account(broker, client):
    """`compute_engine.Credentials(service_account_email=reader@)`: google-auth reads the
    account's info by email from the sidecar (`service-accounts/reader@.../?recursive=true`)
    and reports reader@. Its refresh, though, fetches `service-accounts/default/token`
    whatever account it names (upstream google-auth-library-python#1779: a VM has one account),
    so with the pinned google-auth the token is the default account's, broker@'s: a client that
    needs reader@'s token from google-auth must use the account's own token path, which
    google-auth's metadata helper (`_metadata.get_service_account_token(request, email)`, what
    refresh called before that change) fetches, and which the sidecar serves."""
    out = python_client(client, "access", "--account", READER_SA)
    assert out["service_account_email"] == READER_SA, out
    assert_brokers_access_token(broker, out["token"], email=BROKER_SA, credential="dev",
                                scopes=[CLOUD_PLATFORM], grant="jwt-bearer",
                                expiry=out["expiry"])

    out = python_client(client, "account-token", "--account", READER_SA)
    assert_brokers_access_token(broker, out["token"], email=READER_SA, credential="dev-reader",
                                scopes=[CLOUD_PLATFORM], grant="generate-access-token",
                                expiry=out["expiry"])
    out = python_client(client, "account-token", "--account", READER_SA, "--scope", STORAGE_RO)
    assert_brokers_access_token(broker, out["token"], email=READER_SA, credential="dev-reader",
                                scopes=[STORAGE_RO], grant="generate-access-token",
                                expiry=out["expiry"])


def test_python_a_scope_the_policy_does_not_grant_fails_fast(broker, client):
    started = time.monotonic()
    proc = client.run([sys.executable, CLIENTS / "google_auth_metadata.py", "access",
                       "--scope", "https://www.googleapis.com/auth/sqlservice.admin"],
                      expect_success=False)
    assert proc.returncode != 0, proc.stdout
    assert "RefreshError" in proc.stderr, proc.stderr[-3000:]
    assert time.monotonic() - started < 30


def test_python_fetch_id_token(broker, client):
    audience = "https://python-fetch.sidecar.example.com/"
    out = python_client(client, "fetch-id-token", "--audience", audience)
    assert_brokers_id_token(broker, out["token"], audience=audience)


def test_python_id_token_credentials_with_the_metadata_identity_endpoint(broker, client):
    audience = "https://python-idtc.sidecar.example.com/"
    out = python_client(client, "id-token-credentials", "--audience", audience)
    assert out["class"] == "google.auth.compute_engine.credentials.IDTokenCredentials", out
    claims = assert_brokers_id_token(broker, out["token"], audience=audience)
    assert out["expiry"] == claims["exp"], (out["expiry"], claims["exp"])


def test_python_an_id_token_for_the_emulators_function_is_accepted_there(broker, client):
    out = python_client(client, "fetch-id-token", "--audience", broker.function_url)
    assert_brokers_id_token(broker, out["token"], audience=broker.function_url)
    r = broker.call_function(out["token"])
    assert r.status_code == 200, r.text


# --------------------------------------------------------------------------------------
# 2. Node google-auth-library
# --------------------------------------------------------------------------------------


def test_node_google_auth_library_through_adc(broker, client):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on the PATH")
    if not (NODE_DIR / "node_modules" / "google-auth-library").is_dir():
        pytest.skip("google-auth-library is not installed: run tests/conformance/run.sh "
                    "(it runs `npm ci` in tests/conformance/node), or that npm ci yourself")
    pinned = json.loads((NODE_DIR / "package-lock.json").read_text())
    version = pinned["packages"]["node_modules/google-auth-library"]["version"]
    # Only node on the PATH: google-auth-library would otherwise ask `gcloud config
    # config-helper` for the project before it asks the metadata server.
    bin_dir = client.dir / "bin"
    bin_dir.mkdir()
    (bin_dir / "node").symlink_to(Path(node).resolve())
    client.env["PATH"] = str(bin_dir)
    audience = "https://node.sidecar.example.com/"

    out = client.run_json(["node", NODE_DIR / "adc.js", audience, READER_SA], cwd=NODE_DIR)

    assert out["googleAuthLibrary"] == version, out
    assert out["client"] == "Compute", out
    assert out["projectId"] == S.PROJECT_ID, out
    expiry = out["expiryDate"] // 1000 if out.get("expiryDate") else None
    assert_brokers_access_token(broker, out["accessToken"], email=BROKER_SA, credential="dev",
                                scopes=[CLOUD_PLATFORM], grant="jwt-bearer", expiry=expiry)
    assert out["idTokenProvider"] == "Compute", out
    assert_brokers_id_token(broker, out["idToken"], audience=audience)
    assert out["idTokenHeader"] == f"Bearer {out['idToken']}", out
    # A Compute client that names reader@ (serviceAccountEmail) uses the account's own paths.
    reader = out["account"]
    assert_brokers_access_token(broker, reader["accessToken"], email=READER_SA,
                                credential="dev-reader", scopes=[CLOUD_PLATFORM],
                                grant="generate-access-token",
                                expiry=reader["expiryDate"] // 1000)
    assert_brokers_id_token(broker, reader["idToken"], audience=audience, email=READER_SA,
                            credential="dev-reader")


# --------------------------------------------------------------------------------------
# 3. gcloud
# --------------------------------------------------------------------------------------


@pytest.fixture
def gcloud(client) -> Client:
    if shutil.which("gcloud") is None:
        pytest.skip("gcloud is not installed (it comes with the machine image only; no "
                    "package registry provides it)")
    client.env.update({
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
        "CLOUDSDK_SURVEY_DISABLE_PROMPTS": "1",
        "CLOUDSDK_CONTEXT_AWARE_USE_CLIENT_CERTIFICATE": "false",
        # gcloud's launcher passes -S unless this is set; with site enabled, the
        # sitecustomize on PYTHONPATH installs the loopback guard in gcloud's interpreter.
        "CLOUDSDK_PYTHON_SITEPACKAGES": "1",
        "PYTHONPATH": str(CLIENTS / "site"),
    })
    return client


def test_gcloud_print_access_token(broker, gcloud):
    proc = gcloud.run(["gcloud", "auth", "print-access-token"])
    token = proc.stdout.strip()
    assert token and "\n" not in token, proc.stdout
    assert_brokers_access_token(broker, token, email=BROKER_SA, credential="dev",
                                scopes=[CLOUD_PLATFORM], grant="jwt-bearer")


def test_gcloud_print_access_token_of_a_non_default_account(broker, gcloud):
    """gcloud lists the metadata server's accounts and addresses each by email."""
    proc = gcloud.run(["gcloud", "auth", "list", "--format=value(account)"])
    assert sorted(proc.stdout.split()) == sorted([BROKER_SA, READER_SA]), proc.stdout
    proc = gcloud.run(["gcloud", "auth", "print-access-token", READER_SA])
    assert_brokers_access_token(broker, proc.stdout.strip(), email=READER_SA,
                                credential="dev-reader", scopes=[CLOUD_PLATFORM],
                                grant="generate-access-token")


def test_gcloud_takes_account_and_project_from_the_sidecar(gcloud):
    proc = gcloud.run(["gcloud", "config", "list", "--format=json"])
    core = json.loads(proc.stdout)["core"]
    assert core["account"] == BROKER_SA, core
    assert core["project"] == S.PROJECT_ID, core


@pytest.mark.parametrize("audience", ["https://gcloud.sidecar.example.com", None],
                         ids=["audiences", "gcloud-client-id"])
def test_gcloud_print_identity_token(broker, gcloud, audience):
    argv = ["gcloud", "auth", "print-identity-token"]
    if audience is not None:
        argv.append(f"--audiences={audience}")
    proc = gcloud.run(argv)
    token = proc.stdout.strip()
    assert token.count(".") == 2, proc.stdout
    assert_brokers_id_token(broker, token, audience=audience or GCLOUD_CLIENT_ID)


# --------------------------------------------------------------------------------------
# 4. google-auth external_account credentials with tokenctl as the executable source
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenctl() -> Path:
    repo = Path(__file__).resolve().parents[2]
    default = (Path(os.environ["TOKEN_BROKER_BIN"]).parent / "tokenctl"
               if os.environ.get("TOKEN_BROKER_BIN") else repo / "target/debug/tokenctl")
    binary = Path(os.environ.get("TOKENCTL_BIN") or default)
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(f"tokenctl binary not found or not executable: {binary} "
                    "(cargo build -p broker-client --bins, or set TOKENCTL_BIN)")
    return binary


def _broker_connection(broker) -> dict[str, str]:
    return {k: broker.env[k] for k in
            ("TOKEN_BROKER_ADDR", "TOKEN_BROKER_CA", "TOKEN_BROKER_CERT", "TOKEN_BROKER_KEY")}


def _print_config(broker, client: Client, tokenctl: Path, *extra: str) -> dict:
    """Runs `tokenctl print-external-account-config` for the dev-google provider against the
    broker's emulator; returns the configuration it wrote (CONFIG_FILE in the client dir)."""
    path = client.dir / "external-account.json"
    env = {**client.env, **_broker_connection(broker)}
    proc = subprocess.run(
        [str(tokenctl), "print-external-account-config", "--audience", GOOGLE_PROVIDER_AUDIENCE,
         "--id-token-audience", GOOGLE_PROVIDER_TOKEN_AUD,
         "--token-url", f"{broker.emulator}/v1/token",
         "--executable-output-file", str(client.dir / "executable-output.json"),
         "--output", str(path), *extra],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    config = json.loads(path.read_text())
    assert config["type"] == "external_account", config
    assert config["audience"] == GOOGLE_PROVIDER_AUDIENCE, config
    assert config["token_url"] == f"{broker.emulator}/v1/token", config
    executable = config["credential_source"]["executable"]
    assert executable["command"].split()[0] == str(tokenctl.resolve()), executable
    return config


def _load(client: Client, config_dir: Path) -> dict:
    client.env["GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES"] = "1"
    return client.run_json([sys.executable, CLIENTS / "google_auth_external_account.py",
                            config_dir / "external-account.json", CLOUD_PLATFORM])


def _assert_executable_output(broker, client: Client) -> None:
    """The subject token google-auth exchanged (tokenctl's cached executable response) is the
    broker's Google ID token of broker@ for the provider."""
    from google.auth.transport.requests import Request
    from google.oauth2 import id_token

    response = json.loads((client.dir / "executable-output.json").read_text())
    assert response["success"] is True and response["version"] == 1, response
    token = response["id_token"]
    claims = id_token.verify_token(token, Request(), audience=GOOGLE_PROVIDER_TOKEN_AUD,
                                   certs_url=broker.certs_url)
    assert claims["iss"] == S.GOOGLE_ISSUER
    assert response["expiration_time"] == claims["exp"], (response, claims)
    held = broker.stub().GenerateIdToken(
        broker.pb.GenerateIdTokenRequest(audience=GOOGLE_PROVIDER_TOKEN_AUD), timeout=T)
    assert held.cache_hit and held.id_token == token, "not the broker's ID token"
    assert held.principal == BROKER_SA


def test_identity_pool_with_tokenctl_as_executable_source(broker, client, tokenctl):
    config = _print_config(broker, client, tokenctl)
    assert "service_account_impersonation_url" not in config, config
    # No TOKEN_BROKER_* in google-auth's environment: the command carries the connection.
    out = _load(client, client.dir)

    assert out["class"] == "google.auth.pluggable.Credentials", out
    assert out["project"] == S.PROJECT_ID, out
    info = broker.tokeninfo(out["token"])
    assert info["grant"] == "sts-exchange", info
    assert info["principal"] == (f"principal://iam.googleapis.com/{DEV_POOL}/subject/"
                                 f"{unique_id(broker)}"), info
    assert S.scopes_of(info) == {CLOUD_PLATFORM}, info
    assert abs(out["expiry"] - int(info["exp"])) <= 3, (out["expiry"], info["exp"])
    # The project lookup (answered on loopback) was authorized with the federated token.
    lookups = [r for r in out["google_requests"]
               if r["path"] == f"/v1/projects/{S.PROJECT_NUMBER}"]
    assert [r["authorization"] for r in lookups] == [f"Bearer {out['token']}"], out
    _assert_executable_output(broker, client)


def test_identity_pool_with_tokenctl_then_impersonation(broker, client, tokenctl):
    # --impersonate names Google's IAM Credentials URL ...
    google_url = ("https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/"
                  f"{READER_SA}:generateAccessToken")
    assert _print_config(broker, client, tokenctl, "--impersonate", READER_SA)[
        "service_account_impersonation_url"] == google_url
    # ... and --service-account-impersonation-url the emulator's; here the command takes its
    # connection from TOKEN_BROKER_* in google-auth's environment.
    config = _print_config(
        broker, client, tokenctl, "--connection-from-env",
        "--service-account-impersonation-url",
        f"{broker.emulator}/v1/projects/-/serviceAccounts/{READER_SA}:generateAccessToken")
    command = config["credential_source"]["executable"]["command"]
    assert "--addr" not in command and "--cert" not in command, command
    client.env.update(_broker_connection(broker))
    out = _load(client, client.dir)

    assert out["project"] == S.PROJECT_ID, out
    assert out["service_account_email"] == READER_SA, out
    info = broker.tokeninfo(out["token"])
    assert info["email"] == READER_SA, info
    assert info["principal"] == f"serviceAccount:{READER_SA}", info
    assert info["grant"] == "generate-access-token", info
    assert S.scopes_of(info) == {CLOUD_PLATFORM}, info
    _assert_executable_output(broker, client)
