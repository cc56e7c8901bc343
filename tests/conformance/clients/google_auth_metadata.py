"""Python google-auth, unmodified, against whatever metadata server GCE_METADATA_HOST and
GCE_METADATA_IP name (test_sidecar_clients.py: the broker's metadata sidecar).

Run in a process of its own: google-auth reads those variables when it is imported. Prints one
JSON object on standard output. Usage:

  google_auth_metadata.py default
      google.auth.default(), then refresh()
  google_auth_metadata.py access [--scope S ...] [--account EMAIL]
      compute_engine.Credentials(scopes=..., service_account_email=...), then refresh()
  google_auth_metadata.py account-token --account EMAIL [--scope S ...]
      google.auth.compute_engine._metadata.get_service_account_token(request, EMAIL, scopes):
      the account's own token path, service-accounts/EMAIL/token (compute_engine.Credentials
      fetches service-accounts/default/token whatever account it names)
  google_auth_metadata.py fetch-id-token --audience A
      google.oauth2.id_token.fetch_id_token(request, A)
  google_auth_metadata.py id-token-credentials --audience A
      compute_engine.IDTokenCredentials(request, A, use_metadata_identity_endpoint=True),
      then refresh()

The only addition is loopback_guard: a socket-level guard that refuses (and records) any
connection that is not loopback.
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loopback_guard  # noqa: E402

loopback_guard.install()

import google.auth  # noqa: E402
import google.auth.transport.requests  # noqa: E402
from google.auth import compute_engine  # noqa: E402
from google.oauth2 import id_token  # noqa: E402


def _epoch(dt) -> int | None:
    return None if dt is None else calendar.timegm(dt.utctimetuple())


def _describe(creds) -> dict:
    return {
        "class": f"{type(creds).__module__}.{type(creds).__name__}",
        "token": creds.token,
        "expiry": _epoch(creds.expiry),
        "valid": creds.valid,
        "service_account_email": getattr(creds, "service_account_email", None),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("case", choices=["default", "access", "account-token",
                                         "fetch-id-token", "id-token-credentials"])
    parser.add_argument("--scope", action="append", dest="scopes")
    parser.add_argument("--account")
    parser.add_argument("--audience")
    args = parser.parse_args()

    request = google.auth.transport.requests.Request()
    out: dict = {"google_auth": google.auth.__version__}
    if args.case == "default":
        creds, project = google.auth.default()
        creds.refresh(request)
        out.update(_describe(creds), project=project)
    elif args.case == "access":
        kwargs = {}
        if args.account:
            kwargs["service_account_email"] = args.account
        creds = compute_engine.Credentials(scopes=args.scopes, **kwargs)
        creds.refresh(request)
        out.update(_describe(creds), scopes=creds.scopes)
    elif args.case == "account-token":
        from google.auth.compute_engine import _metadata

        token, expiry = _metadata.get_service_account_token(
            request, service_account=args.account, scopes=args.scopes)
        out.update(token=token, expiry=_epoch(expiry))
    elif args.case == "fetch-id-token":
        out["token"] = id_token.fetch_id_token(request, args.audience)
    else:
        creds = compute_engine.IDTokenCredentials(request, args.audience,
                                                  use_metadata_identity_endpoint=True)
        creds.refresh(request)
        out.update(_describe(creds))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
