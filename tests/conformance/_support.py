"""Shared pieces of the conformance suite: the world the emulator runs, keys for the
emulated identity providers, the admin-API client and small helpers.

Nothing here imports google.auth at module level: conftest.py sets the environment
(GCE_METADATA_HOST, ...) before any google.auth module is imported.
"""

from __future__ import annotations

import base64
import calendar
import datetime
import ipaddress
import json
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

# --------------------------------------------------------------------------------------
# The world
# --------------------------------------------------------------------------------------

PROJECT_ID = "dev-project"
PROJECT_NUMBER = "123456789012"


def sa(account_id: str) -> str:
    return f"{account_id}@{PROJECT_ID}.iam.gserviceaccount.com"


BROKER = sa("broker")  # key, DWD limited to DWD_SCOPES, metadata default account
READER = sa("reader")  # no key; token creators: broker@, writer@, both pools
WRITER = sa("writer")  # no key; token creators: broker@, workload pool
DEEP = sa("deep")  # no key; token creator: writer@ only (strict delegation chain)
NODWD = sa("nodwd")  # key, no DWD, no token creators
LONGLIVED = sa("longlived")  # no key; broker@ is token creator; extended lifetime
DELEGATED = sa("delegated")  # no key; DWD (any scope); broker@ is token creator
DISABLED = sa("disabled")  # key, disabled

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
IAM_SCOPE = "https://www.googleapis.com/auth/iam"
USERINFO_EMAIL = "https://www.googleapis.com/auth/userinfo.email"
DEVSTORAGE_RO = "https://www.googleapis.com/auth/devstorage.read_only"
DIRECTORY_RO = "https://www.googleapis.com/auth/admin.directory.user.readonly"
DWD_SCOPES = [DEVSTORAGE_RO, DIRECTORY_RO]
DWD_USER = "alice@example.com"

METADATA_SCOPES = [CLOUD_PLATFORM, USERINFO_EMAIL]
ZONE = "us-central1-a"
INSTANCE_NAME = "dev-instance"
INSTANCE_ID = "4520031799277581759"

USER_EMAIL = "dev-user@example.com"
USER_CLIENT_ID = "dev-client.apps.googleusercontent.com"
USER_CLIENT_SECRET = "dev-secret"
USER_REFRESH_TOKEN = "1//dev-refresh-token"
USER_SCOPES = [CLOUD_PLATFORM, USERINFO_EMAIL, "openid"]

# The Workspace directory: domain-wide delegation to anyone else is invalid_grant, as on Google.
WORKSPACE_USERS = [DWD_USER, USER_EMAIL]

AWS_ACCOUNT = "111122223333"
AWS_AKID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_ARN = f"arn:aws:sts::{AWS_ACCOUNT}:assumed-role/ci-role/session"
# a caller the emulated AWS knows, but in an account no provider trusts
AWS_OTHER_AKID = "AKIAOTHERACCOUNT0001"
AWS_OTHER_SECRET = "otherSecretKeyForAnotherAccount0000000000"
AWS_OTHER_ARN = "arn:aws:sts::444455556666:assumed-role/other-role/session"

POOL = "dev-pool"
OIDC_PROVIDER = "oidc"
AWS_PROVIDER = "aws"
WORKLOAD_ISSUER = "https://issuer.example.com"
WORKLOAD_ISSUER_KID = "workload-issuer-1"
POOL_NAME = f"projects/{PROJECT_NUMBER}/locations/global/workloadIdentityPools/{POOL}"
OIDC_PROVIDER_NAME = f"{POOL_NAME}/providers/{OIDC_PROVIDER}"
WORKLOAD_AUDIENCE = f"//iam.googleapis.com/{OIDC_PROVIDER_NAME}"
# the provider's default allowed audience (allowed_audiences empty in the world)
WORKLOAD_TOKEN_AUD = f"https://iam.googleapis.com/{OIDC_PROVIDER_NAME}"
AWS_AUDIENCE = f"//iam.googleapis.com/{POOL_NAME}/providers/{AWS_PROVIDER}"
WORKLOAD_CONDITION = "assertion.repo == 'org/app' && google.subject.startsWith('ci-')"
WORKLOAD_SUBJECT = "ci-runner"
WORKLOAD_PRINCIPAL_SET = f"principalSet://iam.googleapis.com/{POOL_NAME}/*"


def workload_principal(subject: str) -> str:
    return f"principal://iam.googleapis.com/{POOL_NAME}/subject/{subject}"


WORKFORCE_POOL = "dev-workforce"
WORKFORCE_PROVIDER = "oidc"
WORKFORCE_ISSUER = "https://idp.example.com"
WORKFORCE_ISSUER_KID = "workforce-idp-1"
WORKFORCE_POOL_NAME = f"locations/global/workforcePools/{WORKFORCE_POOL}"
WORKFORCE_AUDIENCE = f"//iam.googleapis.com/{WORKFORCE_POOL_NAME}/providers/{WORKFORCE_PROVIDER}"
WORKFORCE_TOKEN_AUD = "dev-workforce-client"
WORKFORCE_PRINCIPAL_SET = f"principalSet://iam.googleapis.com/{WORKFORCE_POOL_NAME}/*"
WORKFORCE_SUBJECT = "alice@example.com"


def workforce_principal(subject: str) -> str:
    return f"principal://iam.googleapis.com/{WORKFORCE_POOL_NAME}/subject/{subject}"


JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TT_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
TT_JWT = "urn:ietf:params:oauth:token-type:jwt"
TT_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
TT_AWS = "urn:ietf:params:aws:token-type:aws4_request"
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"


def _b64u_uint(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class IssuerKey:
    """An RSA key of an emulated external identity provider."""

    kid: str
    pem: bytes = field(repr=False)
    jwk: dict[str, str]

    @classmethod
    def generate(cls, kid: str) -> "IssuerKey":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        nums = key.public_key().public_numbers()
        jwk = {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
               "n": _b64u_uint(nums.n), "e": _b64u_uint(nums.e)}
        return cls(kid=kid, pem=pem, jwk=jwk)

    def sign(self, claims: dict[str, Any], kid: str | None = None) -> str:
        from google.auth import crypt, jwt

        signer = crypt.RSASigner.from_string(self.pem, kid or self.kid)
        token = jwt.encode(signer, claims)
        return token.decode() if isinstance(token, bytes) else token


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(_toml_str(i) for i in items) + "]"


def world_toml(workload_key: IssuerKey, workforce_key: IssuerKey) -> str:
    """One world covering every flow the suite drives."""

    def account(email: str, *, key: bool, dwd: bool = False, dwd_scopes=(), creators=(),
                extended: bool = False, disabled: bool = False) -> str:
        return (
            "[[service_accounts]]\n"
            f"email = {_toml_str(email)}\n"
            f"key = {str(key).lower()}\n"
            f"dwd = {str(dwd).lower()}\n"
            f"dwd_scopes = {_toml_list(list(dwd_scopes))}\n"
            f"token_creators = {_toml_list(list(creators))}\n"
            f"allow_extended_lifetime = {str(extended).lower()}\n"
            f"disabled = {str(disabled).lower()}\n\n"
        )

    broker_member = f"serviceAccount:{BROKER}"
    writer_member = f"serviceAccount:{WRITER}"
    parts = [
        f"[[projects]]\nid = {_toml_str(PROJECT_ID)}\nnumber = {_toml_str(PROJECT_NUMBER)}\n\n",
        # broker@ is Token Creator on itself: signBlob on itself (compute_engine ID tokens
        # in their default mode) needs it, as on real Google.
        account(BROKER, key=True, dwd=True, dwd_scopes=DWD_SCOPES, creators=[broker_member]),
        account(READER, key=False, creators=[broker_member, writer_member,
                                             WORKLOAD_PRINCIPAL_SET, WORKFORCE_PRINCIPAL_SET]),
        account(WRITER, key=False, creators=[broker_member, WORKLOAD_PRINCIPAL_SET]),
        account(DEEP, key=False, creators=[writer_member]),
        account(NODWD, key=True),
        account(LONGLIVED, key=False, creators=[broker_member], extended=True),
        account(DELEGATED, key=False, dwd=True, creators=[broker_member]),
        account(DISABLED, key=True, disabled=True),
        "[metadata]\n"
        f"service_account = {_toml_str(BROKER)}\n"
        f"scopes = {_toml_list(METADATA_SCOPES)}\n"
        f"zone = {_toml_str(ZONE)}\n"
        f"instance_name = {_toml_str(INSTANCE_NAME)}\n"
        f"instance_id = {_toml_str(INSTANCE_ID)}\n\n",
        "".join(f"[[workspace_users]]\nemail = {_toml_str(u)}\n\n" for u in WORKSPACE_USERS),
        "[[authorized_users]]\n"
        f"email = {_toml_str(USER_EMAIL)}\n"
        f"client_id = {_toml_str(USER_CLIENT_ID)}\n"
        f"client_secret = {_toml_str(USER_CLIENT_SECRET)}\n"
        f"refresh_token = {_toml_str(USER_REFRESH_TOKEN)}\n"
        f"scopes = {_toml_list(USER_SCOPES)}\n\n",
        "[[aws_credentials]]\n"
        f"access_key_id = {_toml_str(AWS_AKID)}\n"
        f"secret_access_key = {_toml_str(AWS_SECRET)}\n"
        f"arn = {_toml_str(AWS_ARN)}\n\n",
        "[[aws_credentials]]\n"
        f"access_key_id = {_toml_str(AWS_OTHER_AKID)}\n"
        f"secret_access_key = {_toml_str(AWS_OTHER_SECRET)}\n"
        f"arn = {_toml_str(AWS_OTHER_ARN)}\n\n",
        "[[workload_identity_pools]]\n"
        f"project_number = {_toml_str(PROJECT_NUMBER)}\n"
        f"pool = {_toml_str(POOL)}\n\n",
        "[[workload_identity_pools.providers]]\n"
        f"id = {_toml_str(OIDC_PROVIDER)}\n"
        f"issuer = {_toml_str(WORKLOAD_ISSUER)}\n"
        f"jwks_json = {_toml_str(json.dumps({'keys': [workload_key.jwk]}))}\n"
        "allowed_audiences = []\n"
        f"attribute_condition = {_toml_str(WORKLOAD_CONDITION)}\n"
        'subject_claim = "sub"\n\n',
        "[[workload_identity_pools.providers]]\n"
        f"id = {_toml_str(AWS_PROVIDER)}\n"
        f"aws_account_id = {_toml_str(AWS_ACCOUNT)}\n\n",
        "[[workforce_pools]]\n"
        f"pool = {_toml_str(WORKFORCE_POOL)}\n\n",
        "[[workforce_pools.providers]]\n"
        f"id = {_toml_str(WORKFORCE_PROVIDER)}\n"
        f"issuer = {_toml_str(WORKFORCE_ISSUER)}\n"
        f"jwks_json = {_toml_str(json.dumps({'keys': [workforce_key.jwk]}))}\n"
        f"allowed_audiences = {_toml_list([WORKFORCE_TOKEN_AUD])}\n"
        'subject_claim = "email"\n\n',
    ]
    return "".join(parts)


# --------------------------------------------------------------------------------------
# The running emulator
# --------------------------------------------------------------------------------------

HTTP_TIMEOUT = 15  # seconds, for every direct HTTP call of the suite


@dataclass
class Emulator:
    url: str
    data_dir: Path
    workload_key: IssuerKey
    workforce_key: IssuerKey
    log_path: Path

    # ---- key files ----
    def key_file(self, account_id: str) -> Path:
        return self.data_dir / "keys" / f"{account_id}.json"

    def key_info(self, account_id: str) -> dict[str, Any]:
        return json.loads(self.key_file(account_id).read_text())

    # ---- admin API ----
    def _admin(self, method: str, path: str, **kw) -> requests.Response:
        r = requests.request(method, f"{self.url}/_emulator/{path}", timeout=HTTP_TIMEOUT, **kw)
        assert r.status_code < 300, f"admin {method} {path}: {r.status_code} {r.text}"
        return r

    def add_fault_raw(self, endpoint: str, **effects: Any) -> requests.Response:
        return self._admin("POST", "faults", json={"endpoint": endpoint, **effects})

    def add_fault(self, endpoint: str, **effects: Any) -> int | None:
        """Adds a fault; the README promises {"id": N} (test_add_fault_answers_id checks
        it), the helper tolerates an empty answer so the other fault tests still run."""
        r = self.add_fault_raw(endpoint, **effects)
        try:
            return r.json()["id"]
        except ValueError:
            return None

    def clear_faults(self) -> None:
        self._admin("DELETE", "faults")

    def counters(self) -> dict[str, int]:
        return self._admin("GET", "counters").json()

    def counter(self, endpoint: str) -> int:
        return int(self.counters().get(endpoint, 0))

    def reset_counters(self) -> None:
        self._admin("DELETE", "counters")

    def set_token_lifetime(self, seconds: int) -> None:
        self._admin("PUT", "token-lifetime", json={"seconds": seconds})

    def clear_token_lifetime(self) -> None:
        self._admin("DELETE", "token-lifetime")

    def rotate_signing_key(self) -> None:
        self._admin("POST", "rotate-signing-key")

    # ---- Google endpoints, called directly ----
    def tokeninfo_raw(self, token: str) -> requests.Response:
        return requests.get(f"{self.url}/tokeninfo", params={"access_token": token},
                            timeout=HTTP_TIMEOUT)

    def tokeninfo(self, token: str) -> dict[str, Any]:
        r = self.tokeninfo_raw(token)
        assert r.status_code == 200, f"tokeninfo: {r.status_code} {r.text}"
        return r.json()

    def post_token(self, data: dict[str, str], path: str = "/token") -> requests.Response:
        return requests.post(f"{self.url}{path}", data=data, timeout=HTTP_TIMEOUT)

    def sts(self, data: dict[str, str] | None = None, json_body: dict | None = None,
            headers: dict | None = None) -> requests.Response:
        return requests.post(f"{self.url}/v1/token", data=data, json=json_body, headers=headers,
                             timeout=HTTP_TIMEOUT)

    def iam(self, target: str, method: str, body: Any, token: str | None) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.post(f"{self.url}/v1/projects/-/serviceAccounts/{target}:{method}",
                             json=body, headers=headers, timeout=HTTP_TIMEOUT)

    def metadata(self, path: str, headers: dict | None = None, **params) -> requests.Response:
        h = {"Metadata-Flavor": "Google"} if headers is None else headers
        return requests.get(f"{self.url}/computeMetadata/v1/{path}", headers=h, params=params,
                            timeout=HTTP_TIMEOUT, allow_redirects=False)

    def iam_url(self, target: str, method: str = "generateAccessToken") -> str:
        return f"{self.url}/v1/projects/-/serviceAccounts/{target}:{method}"

    # ---- subject tokens ----
    def workload_oidc_token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims = {"iss": WORKLOAD_ISSUER, "aud": WORKLOAD_TOKEN_AUD, "sub": WORKLOAD_SUBJECT,
                  "repo": "org/app", "iat": now, "exp": now + 3600}
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return self.workload_key.sign(claims)

    def workforce_oidc_token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims = {"iss": WORKFORCE_ISSUER, "aud": WORKFORCE_TOKEN_AUD, "sub": "idp-user-42",
                  "email": WORKFORCE_SUBJECT, "iat": now, "exp": now + 3600}
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return self.workforce_key.sign(claims)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def epoch(dt: datetime.datetime) -> int:
    """google-auth's expiry is a naive UTC datetime."""
    if dt.tzinfo is not None:
        return int(dt.timestamp())
    return calendar.timegm(dt.timetuple())


def remaining(creds) -> float:
    return epoch(creds.expiry) - time.time()


def scopes_of(info: dict[str, Any]) -> set[str]:
    return set((info.get("scope") or "").split())


def assert_expiry_matches(creds, info: dict[str, Any], tolerance: int = 3) -> None:
    """The expiry google-auth computed equals the token's real expiry (tokeninfo exp)."""
    assert abs(epoch(creds.expiry) - int(info["exp"])) <= tolerance, (
        f"google-auth expiry {creds.expiry} vs tokeninfo exp {info['exp']}")


def assert_remaining(creds, expected: float, tolerance: float = 15) -> None:
    left = remaining(creds)
    assert expected - tolerance <= left <= expected + 2, (
        f"token lives {left:.0f}s more, expected about {expected}s")


def oauth_error(r: requests.Response, status, error) -> dict[str, Any]:
    """Asserts an OAuth-style error body {"error": ..., "error_description": ...}."""
    statuses = status if isinstance(status, (tuple, set, list)) else (status,)
    errors = error if isinstance(error, (tuple, set, list)) else (error,)
    assert r.status_code in statuses, f"status {r.status_code} not in {statuses}: {r.text}"
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    body = r.json()
    assert body.get("error") in errors, f"error {body.get('error')!r} not in {errors}: {body}"
    assert isinstance(body.get("error_description", ""), str)
    return body


def google_error(r: requests.Response, code: int, status: str) -> dict[str, Any]:
    """Asserts a Google API error envelope {"error": {"code", "message", "status"}}."""
    assert r.status_code == code, f"status {r.status_code} != {code}: {r.text}"
    body = r.json()
    err = body.get("error")
    assert isinstance(err, dict), body
    assert err.get("code") == code, body
    assert err.get("status") == status, body
    assert isinstance(err.get("message"), str) and err["message"], body
    return err


def error_info(err: dict[str, Any]) -> dict[str, Any] | None:
    for d in err.get("details", []) or []:
        if d.get("@type") == "type.googleapis.com/google.rpc.ErrorInfo":
            return d
    return None


def decode_jwt_unverified(token: str) -> tuple[dict, dict]:
    def part(p: str) -> dict:
        return json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))

    h, c, _ = token.split(".")
    return part(h), part(c)


def tamper(token: str) -> str:
    """Flips one bit in the middle of the signature of a compact JWS."""
    h, c, s = token.split(".")
    sig = bytearray(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
    sig[len(sig) // 2] ^= 0x01
    return ".".join([h, c, base64.urlsafe_b64encode(bytes(sig)).rstrip(b"=").decode()])


class LocalServer:
    """A tiny HTTP server on 127.0.0.1 (url-sourced subject tokens, fake AWS IMDS)."""

    def __init__(self, handler: Callable[[BaseHTTPRequestHandler], tuple[int, str, bytes]]):
        self.requests: list[dict[str, Any]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def _serve(self):
                outer.requests.append({"method": self.command, "path": self.path,
                                       "headers": {k.lower(): v for k, v in self.headers.items()}})
                status, ctype, body = handler(self)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = _serve

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "LocalServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------------------
# Loopback-only network guard
# --------------------------------------------------------------------------------------

BLOCKED: list[str] = []


def _loopback_host(host: Any) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    host = str(host)
    if host in ("localhost", "localhost.", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def install_network_guard() -> None:
    """Refuses, inside this process, every connection and name lookup that is not loopback.

    A second line of defence behind the environment variables: if google-auth ever tried a
    hard-coded Google host, the attempt fails here (and is recorded) instead of leaving the
    machine.
    """
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0] if isinstance(address, tuple) else address
            if not _loopback_host(host):
                BLOCKED.append(f"connect {address!r}")
                raise OSError(101, f"conformance guard: non-loopback connect to {address!r} refused")

    def connect(self, address):
        check(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _loopback_host(host):
            BLOCKED.append(f"getaddrinfo {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, f"conformance guard: lookup of {host!r} refused")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo


# --------------------------------------------------------------------------------------
# The broker: `token-broker dev` (its own embedded emulator, default world) over grpcio
# --------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
DEV_APP = "spiffe://dev.token-broker.local/workload/app"
DEV_READER = "spiffe://dev.token-broker.local/workload/reader"
GRPC_TIMEOUT = 10  # seconds, the deadline of every broker call of the suite
GOOGLE_ISSUER = "https://accounts.google.com"


def broker_stubs(out: Path):
    """Generates the Python stubs of tokenbroker.v1 with grpc_tools (its bundled protoc)."""
    import importlib.resources
    import sys

    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    protos = sorted(str(p.relative_to(REPO / "proto"))
                    for p in (REPO / "proto/tokenbroker/v1").glob("*.proto"))
    code = protoc.main(["protoc", f"-I{REPO / 'proto'}", f"-I{well_known}",
                        f"--python_out={out}", f"--grpc_python_out={out}", *protos])
    assert code == 0, f"protoc failed with {code}"
    sys.path.insert(0, str(out))
    from tokenbroker.v1 import token_broker_pb2, token_broker_pb2_grpc

    return token_broker_pb2, token_broker_pb2_grpc


class Broker:
    """A running `token-broker dev`: its files, its emulator, stubs and helpers."""

    def __init__(self, root: Path, env: dict[str, str], pb, pb_grpc, proc, log_path: Path):
        self.root = root
        self.env = env
        self.pb = pb
        self.pb_grpc = pb_grpc
        self.proc = proc
        self.log_path = log_path
        self.port = env["TOKEN_BROKER_ADDR"].rsplit(":", 1)[1]
        self.emulator = env["GCP_EMULATOR_URL"].rstrip("/")
        self.function_url = env["GCP_FUNCTION_URL"]
        # Google's OAuth2 certs (ID-token keys) as the broker's emulator publishes them.
        self.certs_url = f"{self.emulator}/oauth2/v1/certs"
        self._channels: dict[str, Any] = {}

    def stub(self, name: str = "client"):
        """A stub over a grpcio mTLS channel with the dev workload `name`'s certificate
        (`client`: the app; `readonly`: the read-only workload). One channel per workload."""
        import grpc

        channel = self._channels.get(name)
        if channel is None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=(self.root / "ca.pem").read_bytes(),
                private_key=(self.root / f"{name}-key.pem").read_bytes(),
                certificate_chain=(self.root / f"{name}.pem").read_bytes(),
            )
            channel = grpc.secure_channel(f"127.0.0.1:{self.port}", credentials)
            self._channels[name] = channel
        return self.pb_grpc.TokenBrokerStub(channel)

    # ---- the broker's emulator ----
    def fault(self, rule: dict) -> None:
        requests.post(f"{self.emulator}/_emulator/faults", json=rule,
                      timeout=HTTP_TIMEOUT).raise_for_status()

    def clear_faults(self) -> None:
        requests.delete(f"{self.emulator}/_emulator/faults", timeout=HTTP_TIMEOUT).raise_for_status()

    def counter(self, endpoint: str) -> int:
        r = requests.get(f"{self.emulator}/_emulator/counters", timeout=HTTP_TIMEOUT)
        r.raise_for_status()
        return int(r.json().get(endpoint, 0))

    def tokeninfo_raw(self, token: str) -> requests.Response:
        return requests.get(f"{self.emulator}/tokeninfo", params={"access_token": token},
                            timeout=HTTP_TIMEOUT)

    def tokeninfo(self, token: str) -> dict[str, Any]:
        r = self.tokeninfo_raw(token)
        assert r.status_code == 200, f"tokeninfo: {r.status_code} {r.text}"
        return r.json()

    def robot_certs(self, email: str) -> dict[str, str]:
        """A service account's public certificates by key id (/robot/v1/metadata/x509/)."""
        r = requests.get(f"{self.emulator}/robot/v1/metadata/x509/{email}", timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, f"x509 certs of {email}: {r.status_code} {r.text}"
        return r.json()

    def call_function(self, id_token: str) -> requests.Response:
        return requests.get(self.function_url, headers={"Authorization": f"Bearer {id_token}"},
                            timeout=HTTP_TIMEOUT)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_broker(binary: Path, root: Path, env: dict[str, str]) -> Broker:
    """Starts `token-broker dev --dir root --listen 127.0.0.1:0` and waits for `root/env`."""
    log_path = root / "broker.log"
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [str(binary), "dev", "--dir", str(root), "--listen", "127.0.0.1:0"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**env, "NO_COLOR": "1"})
    try:
        env_file = root / "env"
        deadline = time.monotonic() + 60
        while not env_file.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"token-broker dev exited with {proc.returncode}:\n"
                                   + log_path.read_text(errors="replace")[-4000:])
            if time.monotonic() > deadline:
                raise RuntimeError("token-broker dev wrote no env file in 60 s:\n"
                                   + log_path.read_text(errors="replace")[-4000:])
            time.sleep(0.05)
        values = {}
        for line in env_file.read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            values[key] = value
        for key in ("TOKEN_BROKER_ADDR", "GCP_EMULATOR_URL", "GCP_FUNCTION_URL"):
            assert key in values, f"{env_file} lacks {key}: {values}"
        assert values["GCP_EMULATOR_URL"].startswith("http://127.0.0.1:"), values
        assert values["GCP_FUNCTION_URL"].startswith(values["GCP_EMULATOR_URL"]), values
        pb, pb_grpc = broker_stubs(root / "stubs")
        return Broker(root, values, pb, pb_grpc, proc, log_path)
    except BaseException:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=20)
        raise


def rpc_details(error) -> dict:
    """The google.rpc details of a failed call (a grpc.RpcError), by message name: ErrorInfo,
    RetryInfo, BadRequest."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status in {error!r}"
    out = {}
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo,
                     error_details_pb2.BadRequest):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                out[kind.__name__] = message
    return out
