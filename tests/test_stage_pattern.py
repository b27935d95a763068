"""The stage pattern: a stage body becomes a Prefect flow with one MLflow run; user errors fail cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from stages.common import stage_flow
from wsss.errors import DataError
from wsss.tracking import flatten, start_stage_run, tracking_uri
from wsss.tracking.runs import metric_name

PARAMS = {"demo": {"size": 3, "nested": {"rate": 0.5}, "splits": ["train", "val"]},
          "tracking": {"experiment": "stage-pattern-test"}}


def _runs(stage: str):
    client = MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name("stage-pattern-test")
    return client, client.search_runs([exp.experiment_id], filter_string=f"tags.`dvc.stage` = '{stage}'")


def test_flatten_and_metric_names():
    assert flatten({"a": {"b": {"c": 1}}, "l": [1, 2]}) == {"a.b.c": "1", "l": "[1, 2]"}
    assert metric_name("ablation.+ CAA α=2") == "ablation.plus_CAA_alpha2"


def test_stage_flow_logs_one_finished_run(prefect_harness):
    @stage_flow("demo_ok", ["demo"])
    def demo_ok(params, run):
        run.log_metrics({"images": 7, "nested": {"miou": 0.5}})
        return params["demo"]["size"] * 2

    state = demo_ok(PARAMS, return_state=True)
    assert state.is_completed() and state.result() == 6
    client, runs = _runs("demo_ok")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name.endswith(":demo_ok")
    assert run.data.params == {"demo.size": "3", "demo.nested.rate": "0.5", "demo.splits": '["train", "val"]'}
    assert run.data.metrics == {"images": 7.0, "nested.miou": 0.5}
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["wsss.pipeline"] == run.info.run_name.split(":")[0]


def test_user_error_fails_the_flow_without_traceback(prefect_harness):
    @stage_flow("demo_bad", ["demo"])
    def demo_bad(params, run):
        raise DataError("data/raw/x/JPEGImages/1.jpg: cannot decode image")

    state = demo_bad(PARAMS, return_state=True)
    assert state.is_failed()
    assert state.message == "data/raw/x/JPEGImages/1.jpg: cannot decode image"
    _, runs = _runs("demo_bad")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_stage_runs_share_the_parent_of_their_pipeline_version():
    ids = []
    for stage in ("a", "b"):
        with start_stage_run(stage, {}, experiment="stage-pattern-test") as run:
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
