"""The local buffer of runs a tracking server could not take (`tracking.on_outage: buffer`).

An MLflow SQLite store under the project's `.wsss/tracking/` (git-ignored): `mlflow.db` and the runs'
artifacts in `artifacts/`. A stage whose server stops answering moves its run here whole (what it logged
before the outage is replayed, so the buffered run is complete) and goes on; `wsss tracking sync`
(`wsss.tracking.sync`) sends the runs to their server once it answers. Each buffered run and its parent
carry the server they were meant for (`SERVER_TAG`) and, when the server had created it before the outage,
the id of the run there (`SERVER_RUN_TAG`), so the sync completes that run instead of adding another.
"""

from __future__ import annotations

from pathlib import Path

from wsss.settings import project_root

BUFFER_DIR = Path(".wsss/tracking")
SERVER_TAG = "wsss.tracking.server"  # the tracking URI the run belongs to
SERVER_RUN_TAG = "wsss.tracking.server_run"  # its twin on that server, created before the outage ("" if none)
SYNCED_TAG = "wsss.tracking.synced"  # set on a buffered run once sent: the server's run id
BUFFERED_TAG = "wsss.tracking.buffered"  # set on the server's run: the buffered run it came from
INTERNAL = (SERVER_TAG, SERVER_RUN_TAG, SYNCED_TAG, BUFFERED_TAG)


def buffer_dir(root: Path | None = None) -> Path:
    return (root or project_root()) / BUFFER_DIR


def buffer_uri(root: Path | None = None) -> str:
    return f"sqlite:///{buffer_dir(root) / 'mlflow.db'}"


def exists(root: Path | None = None) -> bool:
    return (buffer_dir(root) / "mlflow.db").is_file()


def open_buffer(root: Path | None = None):
    """An MLflow client on the buffer store (created on first use: MLflow sets up its schema, seconds)."""
    from mlflow.tracking import MlflowClient

    from wsss.tracking.store import quiet_mlflow

    folder = buffer_dir(root)
    (folder / "artifacts").mkdir(parents=True, exist_ok=True)
    quiet_mlflow()
    return MlflowClient(tracking_uri=buffer_uri(root))


def experiment_id(client, name: str, root: Path | None = None) -> str:
    """The buffer's experiment `name`, its artifacts under `.wsss/tracking/artifacts/<id>`."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    import uuid

    location = buffer_dir(root) / "artifacts" / uuid.uuid4().hex[:12]
    return client.create_experiment(name, artifact_location=location.as_uri())


def parent_run(client, experiment: str, key: str, server: str, server_parent: str, tags: dict) -> str:
    """The buffer's parent run of pipeline version `key` for `server` (found or created), RUNNING."""
    from wsss.tracking.store import PIPELINE_TAG

    found = client.search_runs([experiment], filter_string=f"tags.`{PIPELINE_TAG}` = '{key}' and "
                               f"tags.`{SERVER_TAG}` = '{server}'", order_by=["attributes.start_time DESC"],
                               max_results=10)
    found = [r for r in found if SYNCED_TAG not in r.data.tags]  # a synced parent is the server's now
    if found:
        run = found[0]
        if server_parent and not run.data.tags.get(SERVER_RUN_TAG):
            client.set_tag(run.info.run_id, SERVER_RUN_TAG, server_parent)
        if run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id
    run = client.create_run(experiment, run_name=key, tags={**tags, PIPELINE_TAG: key, SERVER_TAG: server,
                                                              SERVER_RUN_TAG: server_parent})
    return run.info.run_id
