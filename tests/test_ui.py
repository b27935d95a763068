"""UI: the user's path through the local stack's web UIs in a real browser — Playwright driving Debian's
Chromium (/usr/bin/chromium; `bash scripts/run.sh test` installs it with apt-get when it can).

A real `prefect server start` (API + UI) with `retrain/gpu-pool` deployed from prefect.yaml onto the `gpu`
pool, and an MLflow server (infra/mlflow_server.sh) whose registry holds `wsss-segmenter` with the alias
`champion`, all on 127.0.0.1. In the Prefect UI: Deployments → `gpu-pool` of flow `retrain` → its
schedule's menu → Edit → a new cron → Save; the server then holds that cron. In the MLflow UI: the
model's page shows `champion` on its version. A failing step leaves a screenshot and the page's HTML in
the test's tmp dir. Skipped, saying why, where there is no Chromium."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # a Prefect and an MLflow server, a browser

CHROMIUM = Path("/usr/bin/chromium")
INSTALL_LOG = REPO / ".venv" / "chromium-install.log"  # scripts/run.sh's browser(): why it is missing
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STARTUP = 180  # seconds a server may take (the first Prefect start creates its database: slow on 2 cores)
UI_WAIT = 30_000  # ms Playwright waits for an element (the UI's first load compiles a large bundle)
MODEL, ALIAS = "wsss-segmenter", "champion"
OLD_CRON, OLD_TEXT = "0 3 * * 1", "At 03:00 AM, only on Monday"  # prefect.yaml's schedule, as the UI words it
NEW_CRON, NEW_TEXT = "30 5 * * 2", "At 05:30 AM, only on Tuesday"
LOOPBACK = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def _no_chromium() -> str | None:
    """Why the test cannot run its browser, or None."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        why = "not installed"
        with contextlib.suppress(OSError, IndexError):
            why = INSTALL_LOG.read_text(errors="replace").strip().splitlines()[-1]
        return (f"no Chromium at {CHROMIUM} ({why}); `bash scripts/run.sh test` installs Debian's chromium with "
                "apt-get as root or with passwordless sudo")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        return f"playwright is not importable ({err}): bash scripts/run.sh setup"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _up(url: str) -> bool:
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def _wait(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP
    while not _up(url):
        assert proc.poll() is None, f"{url}: its server exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{url} not up after {STARTUP} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _register_champion(url: str) -> str:
    """A tiny version of the registered model (a run with one artifact) holding the alias."""
    from mlflow import MlflowClient

    client = MlflowClient(url, registry_uri=url)
    run = client.create_run(client.create_experiment("ui-test"))
    client.log_text(run.info.run_id, "tiny", "model/MLmodel")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, f"{run.info.artifact_uri}/model", run_id=run.info.run_id).version
    client.set_registered_model_alias(MODEL, ALIAS, version)
    return str(version)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Prefect (API + UI, retrain/gpu-pool deployed) and MLflow (the champion registered), started together."""
    if reason := _no_chromium():
        pytest.skip(reason)
    from wsss.prefect_env import stop_process

    tmp = tmp_path_factory.mktemp("ui-stack")
    prefect_url, mlflow_url = f"http://127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))} | LOOPBACK
    # PREFECT_API_URL is also where the served UI sends its requests (else :4200, whatever --port says)
    prefect_env = base | {"PREFECT_HOME": str(tmp / "prefect"), "PREFECT_API_URL": f"{prefect_url}/api",
                          "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
    procs = []
    with contextlib.ExitStack() as cleanup:
        mp = cleanup.enter_context(pytest.MonkeyPatch.context())
        for key, value in LOOPBACK.items():  # this process's MLflow and Prefect clients: never through a proxy
            mp.setenv(key, value)
        cleanup.callback(lambda: [stop_process(proc) for proc in reversed(procs)])  # last started, first stopped
        procs.append(prefect := _spawn(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", prefect_url.rsplit(":", 1)[1], "--no-services"], prefect_env, tmp / "prefect.log"))
        procs.append(mlflow := _spawn(
            ["bash", str(REPO / "infra/mlflow_server.sh")],
            base | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{base['PATH']}",
                    "MLFLOW_BACKEND": f"sqlite:///{tmp / 'mlflow.db'}", "MLFLOW_ARTIFACTS": str(tmp / "artifacts"),
                    "MLFLOW_PORT": mlflow_url.rsplit(":", 1)[1], "MLFLOW_WORKERS": "1",
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, tmp / "mlflow.log"))

        def deploy() -> None:  # as `wsss infra dev-up` does
            _wait(f"{prefect_url}/api/health", prefect, tmp / "prefect.log")
            for args in (["work-pool", "create", "gpu", "--type", "process", "--base-job-template",
                          str(REPO / "infra/gpu-pool.json")], ["--no-prompt", "deploy", "--all"]):
                done = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, capture_output=True,
                                      text=True, env=prefect_env | {"WSSS_WORKDIR": str(REPO)}, timeout=300,
                                      stdin=subprocess.DEVNULL)
                assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"

        def register() -> str:
            _wait(f"{mlflow_url}/health", mlflow, tmp / "mlflow.log")
            return _register_champion(mlflow_url)

        with ThreadPoolExecutor(2) as pool:  # whichever server answers first is set up first
            deployed, registered = pool.submit(deploy), pool.submit(register)
            deployed.result()
            version = registered.result()
        yield {"prefect": prefect_url, "mlflow": mlflow_url, "version": version}


@pytest.fixture(scope="module")
def browser(stack):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, tmp_path):
    """A fresh page, wide enough for the Prefect UI's side panel (its schedules)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(UI_WAIT)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


@contextlib.contextmanager
def shots_on_failure(page, tmp_path: Path, name: str):
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
            (tmp_path / f"{name}.html").write_text(page.content())
        print(f"{name}: screenshot and HTML in {tmp_path} (page {page.url})")
        raise


def _deployment(prefect_url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: f"{prefect_url}/api"}), get_client(sync_client=True) as client:
        return client.read_deployment_by_name("retrain/gpu-pool")


def test_prefect_ui_changes_the_retrain_schedule(stack, page, tmp_path):
    from playwright.sync_api import expect

    before = _deployment(stack["prefect"])
    assert [(s.schedule.cron, s.active) for s in before.schedules] == [(OLD_CRON, True)]
    with shots_on_failure(page, tmp_path, "prefect"):
        page.goto(stack["prefect"])
        page.get_by_role("link", name="Deployments", exact=True).click()
        page.get_by_placeholder("Search deployments").fill("gpu-pool")
        # the search reaches the URL after a debounce, which takes a click made before it back to the list
        expect(page).to_have_url(re.compile(r"[?&]flowOrDeploymentName=gpu-pool(&|$)"))
        gpu_pool = page.get_by_role("link", name="gpu-pool", exact=True)
        page.get_by_role("row").filter(has_text="retrain").filter(has=gpu_pool).get_by_role(
            "link", name="gpu-pool", exact=True).click()
        expect(page).to_have_url(re.compile(f"/deployments/deployment/{before.id}"))
        schedule = page.locator("[data-slot=card]").filter(has_text=OLD_TEXT)
        schedule.get_by_role("button", name="Open menu").click()
        page.get_by_role("menuitem", name="Edit").click()
        dialog = page.get_by_role("dialog", name="Edit Schedule")
        expect(dialog.get_by_role("tab", name="Cron")).to_have_attribute("aria-selected", "true")
        cron = dialog.get_by_label("Value", exact=True)
        expect(cron).to_have_value(OLD_CRON)
        cron.fill(NEW_CRON)
        expect(dialog.get_by_text(NEW_TEXT)).to_be_visible()  # the UI read the new cron
        dialog.get_by_role("button", name="Save").click()
        expect(dialog).to_be_hidden()
        expect(page.locator("[data-slot=card]").filter(has_text=NEW_TEXT)).to_be_visible()

    after = _deployment(stack["prefect"])
    assert [(s.id, s.schedule.cron, s.schedule.timezone, s.active) for s in after.schedules] == [
        (before.schedules[0].id, NEW_CRON, "UTC", True)]


def test_mlflow_ui_shows_the_champion_alias(stack, page, tmp_path):
    from playwright.sync_api import expect

    with shots_on_failure(page, tmp_path, "mlflow"):
        page.goto(f"{stack['mlflow']}/#/models/{MODEL}")
        expect(page.get_by_role("heading", name=MODEL)).to_be_visible()
        row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"Version {stack['version']}"))
        expect(row.get_by_title(ALIAS, exact=True)).to_be_visible()
