"""Defaults for Prefect's settings, which Prefect reads from the environment once, when it is imported.

With no `PREFECT_API_URL` every stage starts a temporary local API server. Its first start on a new
machine creates and migrates `~/.prefect/prefect.db`, which took over Prefect's 20 s start-up limit on a
2-core VM ("Timed out while attempting to connect to ephemeral Prefect API server"); later starts take a
few seconds. An explicit environment variable still wins.
"""

from __future__ import annotations

import os

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


def apply_prefect_defaults() -> None:
    """Set the defaults the environment does not set; call before the first `import prefect`."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
