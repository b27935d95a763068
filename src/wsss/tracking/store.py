"""The tracking store: which one (`tracking_uri`), opening it with MLflow's requests bounded, and a quick
probe of a tracking server (`check_server`) that says in one line when it does not answer."""

from __future__ import annotations

import logging
import os

from wsss.errors import WsssError
from wsss.settings import TrackingSettings, project_root

PIPELINE_TAG = "wsss.pipeline"

# MLflow reads these at each request (mlflow.environment_variables), so setting them bounds the client
# of this process and of the children it starts (dvc, its stages).
RETRIES, BACKOFF, JITTER, TIMEOUT = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                                     "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "MLFLOW_HTTP_REQUEST_TIMEOUT")


def bound_requests(tracking: TrackingSettings | None = None) -> None:
    """Set MLflow's retry and timeout variables from `tracking` (the defaults when None): MLflow's own
    defaults (7 retries, backoff factor 2, 120 s) hold a stage for minutes per request to a dead server."""
    tracking = tracking or TrackingSettings()
    os.environ.update({RETRIES: str(tracking.retries), BACKOFF: "1", JITTER: "0", TIMEOUT: str(tracking.timeout)})


def tracking_uri(uri: str | None = None) -> str:
    """Explicit uri > MLFLOW_TRACKING_URI > the embedded SQLite store `mlflow.db` in the project root."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{project_root() / 'mlflow.db'}"


class TrackingUnreachable(WsssError):
    """The MLflow tracking server does not answer: said in one line, instead of minutes of MLflow retries."""


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def open_store(uri: str | None = None, tracking: TrackingSettings | None = None):
    """An MLflow client on the tracking store; opening a SQLite store checks its schema (seconds), once
    per process: MLflow keeps the store. A tracking server is probed first (`check_server`), and MLflow's
    retries and timeouts are bounded by `tracking` (`wsss.tracking.outage`)."""
    uri = tracking_uri(uri)
    bound_requests(tracking)
    if is_server(uri):
        check_server(uri)
    quiet_mlflow()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.search_experiments(max_results=1)
    return client


def check_server(uri: str, timeout: float = 3.0) -> None:
    """GET `<uri>/health` (through the same proxy settings as MLflow's client): no connection, a timeout or
    a 5xx (a proxy with nothing behind it) raises `TrackingUnreachable`. Any other answer, TLS errors
    included, means a server is there: MLflow's own client reports what else is wrong."""
    import http.client
    import ssl
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
        return
    except urllib.error.HTTPError as e:
        if e.code < 500:
            return
        reason = f"HTTP {e.code}"
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLError):
            return
        reason = str(e.reason)
    except (OSError, http.client.HTTPException) as e:  # timeouts, resets, a port that does not speak HTTP
        reason = str(e) or type(e).__name__
    raise TrackingUnreachable(f"MLflow tracking server {uri} unreachable ({reason}): start it "
                              "(bash infra/mlflow_server.sh) or unset MLFLOW_TRACKING_URI")


def quiet_mlflow() -> None:
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # urllib3 logs each retry of a request to a dead server; the outage is said once, in our own line
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
