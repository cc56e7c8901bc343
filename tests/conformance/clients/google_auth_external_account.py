"""Python google-auth, unmodified, loading an `external_account` credential configuration
(test_sidecar_clients.py: one `tokenctl print-external-account-config` wrote, whose executable
credential source is `tokenctl executable-source`) and refreshing it.

Usage: google_auth_external_account.py CONFIG_FILE SCOPE...

Runs `google.auth.load_credentials_from_file(CONFIG_FILE, scopes=..., request=...)`, as
Application Default Credentials would. Loading looks the pool's project up at Cloud Resource
Manager, a URL google-auth hard-codes without an override knob (and, after that request, a
Regional Access Boundary lookup may follow in the background); as in
test_broker_exchange.py, the transport passed to it sends every request for a Google host to a
loopback server in this process instead, which answers `projects.get` for the dev project.
Every other URL (the emulator's STS and IAM, on loopback) is left alone. Prints one JSON
object: the credentials, the project, and what the loopback server was asked.
"""

from __future__ import annotations

import calendar
import json
import os
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loopback_guard  # noqa: E402

loopback_guard.install()

import google.auth  # noqa: E402
import google.auth.transport.requests  # noqa: E402

PROJECT_ID = "dev-project"
PROJECT_NUMBER = "123456789012"
RESOURCE_MANAGER_PATH = "/v1/projects/"


class _Google(BaseHTTPRequestHandler):
    """Stands in for Google hosts: Cloud Resource Manager's projects.get; 404 otherwise."""

    seen: list[dict] = []

    def do_GET(self):  # noqa: N802
        type(self).seen.append({"host": self.headers.get("X-Original-Host"), "path": self.path,
                                "authorization": self.headers.get("Authorization")})
        if self.path.startswith(RESOURCE_MANAGER_PATH):
            number = self.path[len(RESOURCE_MANAGER_PATH):].split("?")[0].strip("/")
            if number == PROJECT_NUMBER:
                self._answer(200, {"projectNumber": PROJECT_NUMBER, "projectId": PROJECT_ID})
                return
        self._answer(404, {"error": {"code": 404, "status": "NOT_FOUND",
                                     "message": "not found"}})

    do_POST = do_GET

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class _LoopbackGoogle:
    """A google-auth transport: requests for a non-loopback host go to `base` instead."""

    def __init__(self, inner, base: str):
        self.inner = inner
        self.base = base

    def __call__(self, url, method="GET", headers=None, **kwargs):
        parts = urllib.parse.urlsplit(url)
        if not loopback_guard._loopback(parts.hostname):
            headers = dict(headers or {}, **{"X-Original-Host": parts.hostname or ""})
            url = urllib.parse.urlunsplit(("http", self.base, parts.path, parts.query, ""))
        return self.inner(url, method=method, headers=headers, **kwargs)


def main() -> int:
    path, scopes = sys.argv[1], sys.argv[2:]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Google)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    request = _LoopbackGoogle(google.auth.transport.requests.Request(),
                              f"127.0.0.1:{server.server_address[1]}")
    creds, project = google.auth.load_credentials_from_file(path, scopes=scopes or None,
                                                            request=request)
    if not creds.valid:
        creds.refresh(request)
    expiry = None if creds.expiry is None else calendar.timegm(creds.expiry.utctimetuple())
    print(json.dumps({
        "class": f"{type(creds).__module__}.{type(creds).__name__}",
        "token": creds.token,
        "expiry": expiry,
        "project": project,
        "service_account_email": creds.service_account_email,
        "google_requests": _Google.seen[:],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
