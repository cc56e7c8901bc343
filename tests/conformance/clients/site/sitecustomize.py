"""Imported by any Python started with this directory on PYTHONPATH (and site enabled): it
installs the loopback guard before the program runs. test_sidecar_clients.py starts gcloud this
way (CLOUDSDK_PYTHON_SITEPACKAGES=1 keeps gcloud's launcher from passing -S)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    import loopback_guard
finally:
    sys.path.pop(0)
loopback_guard.install()
