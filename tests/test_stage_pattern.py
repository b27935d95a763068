"""The stage pattern: a stage body becomes a Prefect flow with one MLflow run; user errors fail cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from stages.common import stage
from wsss.errors import DataError
from wsss.interrupt import Interrupted
from wsss.settings import parse_settings
from wsss.tracking import flatten, start_stage_run, tracking_uri
from wsss.tracking.runs import mark_stale_runs, metric_name

SETTINGS = parse_settings({"toyworld": {"num_train": 3, "size_range": [0.2, 0.3]},
                           "tracking": {"experiment": "stage-pattern-test"}})


def _runs(stage: str):
    client = MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name("stage-pattern-test")
    return client, client.search_runs([exp.experiment_id], filter_string=f"tags.`dvc.stage` = '{stage}'")


def test_flatten_and_metric_names():
    assert flatten({"a": {"b": {"c": 1}}, "l": [1, 2]}) == {"a.b.c": "1", "l": "[1, 2]"}
    assert metric_name("ablation.+ CAA α=2") == "ablation.plus_CAA_alpha2"


def test_stage_flow_logs_one_finished_run_with_the_typed_settings(prefect_harness):
    @stage("demo_ok", ["toyworld"])
    def demo_ok(settings, run):
        run.log_metrics({"images": 7, "nested": {"miou": 0.5}})
        return settings.toyworld.num_train * 2

    state = demo_ok.flow(SETTINGS)(SETTINGS, return_state=True)
    assert state.is_completed() and state.result() == 6
    client, runs = _runs("demo_ok")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name.endswith(":demo_ok")
    params = run.data.params
    assert params["toyworld.num_train"] == "3" and params["toyworld.size_range"] == "[0.2, 0.3]"
    assert params["toyworld.num_val"] == "100"  # a default the file left out is what ran, so it is logged
    assert set(params) == {f"toyworld.{k}" for k in SETTINGS.toyworld.as_dict()}
    assert run.data.metrics == {"images": 7.0, "nested.miou": 0.5}
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["wsss.pipeline"] == run.info.run_name.split(":")[0]
    assert parent.info.status == "FINISHED"  # a pipeline version ends with its last stage


def test_user_error_fails_the_flow_without_traceback_or_retry(prefect_harness):
    calls = []

    def shard():
        calls.append(1)
        raise DataError("data/raw/x/JPEGImages/1.jpg: cannot decode image")

    @stage("demo_bad", ["toyworld"])
    def demo_bad(settings, run):
        from prefect import task

        from stages.common import no_retry_on_user_error

        task(shard, retries=2, retry_condition_fn=no_retry_on_user_error)()

    state = demo_bad.flow(SETTINGS)(SETTINGS, return_state=True)
    assert state.is_failed()
    assert state.message == "data/raw/x/JPEGImages/1.jpg: cannot decode image"
    assert calls == [1]  # a user error is not retried
    _, runs = _runs("demo_bad")
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.mark.parametrize("error", [KeyboardInterrupt, Interrupted])
def test_interrupt_ends_the_run_and_its_parent_killed(error):
    with pytest.raises(error):
        with start_stage_run(f"stop_{error.__name__}", {}, experiment="stage-pattern-test"):
            raise error()
    client, runs = _runs(f"stop_{error.__name__}")
    assert runs[0].info.status == "KILLED"
    assert client.get_run(runs[0].data.tags["mlflow.parentRunId"]).info.status == "KILLED"


def test_runs_of_dead_processes_are_marked_killed_at_the_next_start():
    """`kill -9` cannot end a run: the next start on this host ends those whose process is gone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    client = MlflowClient(tracking_uri())
    exp_id = client.get_experiment_by_name("stage-pattern-test").experiment_id
    with start_stage_run("orphan", {}, experiment="stage-pattern-test") as run:
        orphan = run.run_id
        alive = client.create_run(exp_id, tags=dict(client.get_run(orphan).data.tags, **{"dvc.stage": "alive"}))
    client.update_run(orphan, status="RUNNING")  # as if killed mid-run: never ended
    client.set_tag(orphan, "wsss.pid", str(dead.pid))
    assert mark_stale_runs(client, exp_id) == [orphan]
    assert client.get_run(orphan).info.status == "KILLED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"  # this process: still alive
    client.set_terminated(alive.info.run_id)


def test_flow_runs_of_dead_stage_processes_are_marked_crashed(prefect_harness):
    """`kill -9` leaves a stage's flow run RUNNING on a server that outlives it: the next stage on this
    host sets it (and its unfinished task runs) CRASHED; live owners, other hosts and untagged runs stay."""
    import socket

    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from wsss.pids import boot_id, started
    from wsss.prefect_runs import HOST_TAG, MESSAGE, OWNER_TAG, STAGE_TAG, mark_crashed_runs, owner_tags

    gone = subprocess.Popen(["sleep", "30"])
    gone_tags = [STAGE_TAG, f"{HOST_TAG}{socket.gethostname()}",
                 f"{OWNER_TAG}{boot_id()}/{gone.pid}/{started(gone.pid)}"]
    gone.kill()
    gone.wait()
    other_host = [STAGE_TAG, f"{HOST_TAG}elsewhere", gone_tags[2]]
    earlier_boot = gone_tags[:2] + [f"{OWNER_TAG}an-earlier-boot/{os.getpid()}/{started(os.getpid())}"]

    @flow(name="orphan-probe")
    def probe():
        pass

    with get_client(sync_client=True) as client:
        runs = {name: client.create_flow_run(probe, tags=tags, state=Running()).id for name, tags in
                [("gone", gone_tags), ("alive", owner_tags()), ("other host", other_host),
                 ("earlier boot", earlier_boot), ("untagged", [STAGE_TAG, gone_tags[1]])]}
        shard = client.create_task_run(task(lambda: None, name="shard"), runs["gone"], "0", state=Running())
        assert sorted(mark_crashed_runs()) == sorted(str(runs[n]) for n in ("gone", "earlier boot"))
        states = {name: client.read_flow_run(i).state for name, i in runs.items()}
        assert {n: s.type.value for n, s in states.items()} == {"gone": "CRASHED", "alive": "RUNNING",
                                                                "other host": "RUNNING", "earlier boot": "CRASHED",
                                                                "untagged": "RUNNING"}
        assert states["gone"].message == MESSAGE and client.read_task_run(shard.id).state.type.value == "CRASHED"
        assert mark_crashed_runs() == []  # once


def test_stage_runs_share_the_parent_of_their_pipeline_version():
    ids = []
    for name in ("a", "b"):
        with start_stage_run(name, {}, experiment="stage-pattern-test") as run:
            ids.append(run.client.get_run(run.run_id).data.tags["mlflow.parentRunId"])
    assert ids[0] == ids[1]


def test_bug_marks_run_failed_and_propagates():
    with pytest.raises(ZeroDivisionError):
        with start_stage_run("boom", {}, experiment="stage-pattern-test"):
            1 / 0
    _, runs = _runs("boom")
    assert runs[0].info.status == "FAILED"


@pytest.mark.parametrize("env, expected", [({}, "180"),
                                           ({"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "33"}, "33")])
def test_stages_set_prefect_defaults_before_prefect_reads_them(env, expected):
    """Prefect reads its settings once, at import: the stage package's defaults must already be there
    (a new machine's first temporary API server outlasted Prefect's own 20 s start-up limit)."""
    code = ("import stages.cams\n"
            "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as s\n"
            "print(s.value())")
    clean = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split()[-1] == expected
