"""When is the tracking server gone?

MLflow gives up on a server within the bound that the `tracking` settings give its own retry variables
(`wsss.tracking.store.bound_requests`: with the defaults a stopped server, connection refused, in about
2 s; one that accepts connections but never answers in `TrackingSettings.give_up_seconds()`, 26 s).

`is_outage` tells a server that is gone (no connection, timeouts, 5xx after the retries, an artifact
store that cannot be reached) from a request MLflow refused (a bad parameter, a missing run): only the
first may be buffered; the second is a bug or a user error and is raised as it is.
"""

from __future__ import annotations

from wsss.tracking.store import TrackingUnreachable, check_server, is_server


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


_GONE = ("ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "MaxRetryError", "RetryError",
         "NewConnectionError", "ProtocolError", "RemoteDisconnected", "EndpointConnectionError",
         "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError", "ConnectionRefusedError",
         "ConnectionResetError", "BrokenPipeError", "TimeoutError", "S3UploadFailedError")


def is_outage(error: BaseException, uri: str) -> bool:
    """Did `error` (raised by an MLflow call) come from the server or its artifact store being gone?
    Network failures anywhere in the exception chain say so at once; otherwise the server is probed
    (`check_server`): a refused request on a live server is not an outage."""
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        return False
    for e in _chain(error):
        if isinstance(e, TrackingUnreachable) or type(e).__name__ in _GONE:
            return True
        if "failed with exception" in str(e) and str(e).startswith("API request to "):
            return True  # MLflow's own wrapping of a requests failure (its cause is not chained)
    if not is_server(uri):
        return False
    try:
        check_server(uri, timeout=2.0)
    except TrackingUnreachable:
        return True
    return False


def reason(error: BaseException) -> str:
    """The first line of the innermost cause, shortened: what a one-line warning says."""
    causes = list(_chain(error))
    text = next((str(e) for e in reversed(causes) if str(e).strip()), type(error).__name__)
    text = text.strip().splitlines()[0]
    return text if len(text) <= 160 else text[:157] + "..."
