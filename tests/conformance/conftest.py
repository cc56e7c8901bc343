"""Starts the gcp-emulator for the session and points google-auth at it.

Everything happens in pytest_configure, which runs before any test module (and so before any
google.auth module) is imported: google-auth reads GCE_METADATA_HOST at import time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import _support as S

_STATE: dict = {}

# Variables that could send a Google client somewhere else than the emulator.
_UNSET = [
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_AUTH_TRUST_BOUNDARY_ENABLED",
    "GOOGLE_API_CERTIFICATE_CONFIG",
    "GOOGLE_API_ENABLE_RUNTIME_BOUND_TOKEN",
    "GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES",
    "GOOGLE_CLOUD_QUOTA_PROJECT",
    "GCLOUD_PROJECT",
    "GCE_METADATA_ROOT",
    "NO_GCE_CHECK",
    "GCE_METADATA_TIMEOUT",
    "GCE_METADATA_DETECT_RETRIES",
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
    "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
    "AWS_DEFAULT_REGION", "AWS_PROFILE",
    "CLOUDSDK_CORE_PROJECT",
]


def _fail(msg: str) -> None:
    raise pytest.UsageError(msg)


def pytest_configure(config: pytest.Config) -> None:
    if "emulator" in _STATE:
        return
    repo = Path(__file__).resolve().parents[2]
    binary = Path(os.environ.get("GCP_EMULATOR_BIN") or repo / "target/debug/gcp-emulator")
    if not binary.is_file() or not os.access(binary, os.X_OK):
        _fail(f"gcp-emulator binary not found or not executable: {binary} "
              "(build it with `cargo build -p gcp-emulator`, or set GCP_EMULATOR_BIN)")

    root = Path(tempfile.mkdtemp(prefix="gcp-conformance-"))
    data_dir = root / "data"
    gcloud_dir = root / "gcloud"  # empty CLOUDSDK_CONFIG: no gcloud ADC file
    data_dir.mkdir()
    gcloud_dir.mkdir()

    workload_key = S.IssuerKey.generate(S.WORKLOAD_ISSUER_KID)
    workforce_key = S.IssuerKey.generate(S.WORKFORCE_ISSUER_KID)
    world = root / "world.toml"
    world.write_text(S.world_toml(workload_key, workforce_key))

    log_path = root / "emulator.log"
    log = open(log_path, "wb")
    env = {k: v for k, v in os.environ.items() if k not in _UNSET}
    env.setdefault("RUST_LOG", "info")
    env["NO_COLOR"] = "1"
    proc = subprocess.Popen(
        [str(binary), "--listen", "127.0.0.1:0", "--data-dir", str(data_dir),
         "--config", str(world)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
    )
    _STATE.update(proc=proc, root=root, log=log, log_path=log_path)

    env_file = data_dir / "emulator.env"
    deadline = time.monotonic() + 60
    url = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _stop()
            _fail(f"gcp-emulator exited with {proc.returncode} before it was ready:\n"
                  + log_path.read_text(errors="replace")[-4000:])
        if env_file.exists():
            for line in env_file.read_text().splitlines():
                if line.startswith("GCP_EMULATOR_URL="):
                    url = line.split("=", 1)[1].strip().rstrip("/")
            if url:
                break
        time.sleep(0.05)
    if not url:
        _stop()
        _fail("gcp-emulator did not write emulator.env within 60 s:\n"
              + log_path.read_text(errors="replace")[-4000:])
    if not url.startswith("http://127.0.0.1:"):
        _stop()
        _fail(f"gcp-emulator is not on loopback: {url}")
    hostport = url[len("http://"):]

    # Safety: nothing but the emulator, on loopback, before google.auth is imported.
    for k in _UNSET:
        os.environ.pop(k, None)
    os.environ.update({
        "GCE_METADATA_HOST": hostport,
        "GCE_METADATA_IP": hostport,
        "GCE_METADATA_MTLS_MODE": "none",
        "GOOGLE_API_USE_CLIENT_CERTIFICATE": "false",
        "GOOGLE_API_USE_MTLS_ENDPOINT": "never",
        "CLOUDSDK_CONFIG": str(gcloud_dir),
        "GOOGLE_CLOUD_PROJECT": S.PROJECT_ID,
        "NO_PROXY": "*",
        "no_proxy": "*",
        "HOME": str(root),  # no ~/.config/gcloud, ~/.aws of the real user
    })
    S.install_network_guard()

    import google.auth  # noqa: F401  (first import: after the environment is set)
    from google.auth import _regional_access_boundary_utils as rab
    from google.auth.compute_engine import _metadata

    assert _metadata._GCE_METADATA_HOST == hostport, "google.auth was imported too early"
    # google-auth >= 2.49 starts a background "Regional Access Boundary" lookup against the
    # hard-coded iamcredentials.googleapis.com after before_request(). It has nothing to do
    # with minting tokens; switch it off (the network guard would refuse it anyway).
    rab._RegionalAccessBoundaryManager.maybe_start_refresh = lambda *a, **k: None

    _STATE["emulator"] = S.Emulator(url=url, data_dir=data_dir, workload_key=workload_key,
                                    workforce_key=workforce_key, log_path=log_path)


def _stop() -> None:
    proc = _STATE.get("proc")
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    log = _STATE.get("log")
    if log is not None and not log.closed:
        log.close()


def pytest_unconfigure(config: pytest.Config) -> None:
    _stop()
    root = _STATE.get("root")
    if root is not None and os.environ.get("CONFORMANCE_KEEP_TMP") != "1":
        shutil.rmtree(root, ignore_errors=True)


def pytest_report_header(config: pytest.Config) -> list[str]:
    em = _STATE.get("emulator")
    if em is None:
        return []
    import google.auth

    return [f"gcp-emulator: {em.url} (data {em.data_dir})",
            f"google-auth: {google.auth.__version__}"]


def pytest_runtest_makereport(item, call):
    """On failure, attach the tail of the emulator log (and of the broker's, if it ran)."""
    if call.when == "call" and call.excinfo is not None and "emulator" in _STATE:
        try:
            tail = _STATE["emulator"].log_path.read_text(errors="replace")[-3000:]
            item.add_report_section("call", "emulator log (tail)", tail)
        except OSError:
            pass
        if "broker" in _STATE and "broker" in getattr(item, "fixturenames", ()):
            try:
                item.add_report_section("call", "token-broker dev log (tail)",
                                        _STATE["broker"].log_tail())
            except OSError:
                pass


@pytest.fixture(scope="session")
def emulator() -> S.Emulator:
    return _STATE["emulator"]


@pytest.fixture(scope="session")
def url(emulator: S.Emulator) -> str:
    return emulator.url


@pytest.fixture(scope="session")
def data_dir(emulator: S.Emulator) -> Path:
    return emulator.data_dir


@pytest.fixture(scope="session")
def tokeninfo(emulator: S.Emulator):
    return emulator.tokeninfo


@pytest.fixture
def request_():
    """A google-auth transport request (requests-based)."""
    import google.auth.transport.requests

    return google.auth.transport.requests.Request()


@pytest.fixture(autouse=True)
def _clean_emulator(emulator: S.Emulator):
    """Each test starts without faults or lifetime override, and must not try the Internet."""
    emulator.clear_faults()
    emulator.clear_token_lifetime()
    blocked_before = len(S.BLOCKED)
    yield
    emulator.clear_faults()
    emulator.clear_token_lifetime()
    new = S.BLOCKED[blocked_before:]
    assert not new, f"test tried to reach non-loopback addresses: {new}"


@pytest.fixture
def broker_creds(emulator: S.Emulator):
    from google.oauth2 import service_account

    return service_account.Credentials.from_service_account_file(
        str(emulator.key_file("broker")), scopes=[S.CLOUD_PLATFORM])


@pytest.fixture(scope="session")
def broker(emulator: S.Emulator) -> S.Broker:
    """One `token-broker dev` for the whole session (its own embedded emulator, in
    `<tmp>/broker`), shared by every test_broker_* module. Depends on `emulator` so that the
    safe environment (GCE_METADATA_HOST, ...) is in place before it starts."""
    repo = Path(__file__).resolve().parents[2]
    binary = Path(os.environ.get("TOKEN_BROKER_BIN") or repo / "target/debug/token-broker")
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(f"token-broker binary not found or not executable: {binary} "
                    "(cargo build -p token-broker, or set TOKEN_BROKER_BIN)")
    root = _STATE["root"] / "broker"
    root.mkdir()
    running = S.start_broker(binary, root, dict(os.environ))
    _STATE["broker"] = running
    try:
        yield running
    finally:
        _STATE.pop("broker", None)
        running.stop()
