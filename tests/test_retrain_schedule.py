"""One retrain cron: `params.yaml` `ops.schedule` / `ops.timezone` (what `wsss serve` serves) is the source;
`prefect.yaml`'s deployment (what `prefect deploy` and `wsss infra dev-up` apply) must say the same."""

from __future__ import annotations

import yaml

from conftest import REPO
from wsss.settings import OpsSettings, load_settings


def test_prefect_yaml_schedule_is_ops_schedule():
    ops = load_settings(REPO / "params.yaml").ops
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    [retrain] = [d for d in deployments if d["entrypoint"] == "flows/retrain.py:retrain"]
    assert [(s["cron"], s["timezone"]) for s in retrain["schedules"]] == [(ops.schedule, ops.timezone)]
    assert (ops.schedule, ops.timezone) == (OpsSettings().schedule, OpsSettings().timezone)


def test_wsss_serve_builds_its_deployment_on_ops_schedule():
    from dataclasses import replace

    from flows.retrain import deployment

    settings = load_settings(REPO / "params.yaml")
    settings = replace(settings, ops=replace(settings.ops, schedule="15 4 * * *", timezone="Europe/Paris"))
    [schedule] = deployment(settings).schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("15 4 * * *", "Europe/Paris")
