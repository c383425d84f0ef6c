"""The UIs of ``loopml up`` in a real browser (Debian's chromium, driven by Playwright).

Uses the closed loop of test_loop.py (same session, started once): a champion, a drifted batch
that went through the inbox and the retraining it triggered. Each test follows links by clicking,
as a user would, and asserts on the page text a user would read. A screenshot of each page
checked goes to ``screenshots/`` at the repository root (git-ignored; ``LOOPML_SCREENSHOTS``
names another folder); their paths are printed.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

try:  # the module pytest imported (tests/e2e has no __init__.py): one stack, not two
    from test_loop import PROJECT, _ledger, _prefect, _triggered_runs, closed_loop  # noqa: F401
except ImportError:  # pragma: no cover - if tests/e2e becomes a package
    from tests.e2e.test_loop import (  # noqa: F401
        PROJECT,
        _ledger,
        _prefect,
        _triggered_runs,
        closed_loop,
    )

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 60_000
IDLE_SECONDS = 300  # issue 14: the runs list after 5 idle minutes holds no empty inbox run


@pytest.fixture(scope="module")
def screenshots() -> Path:
    folder = Path(os.environ.get("LOOPML_SCREENSHOTS") or REPO / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, closed_loop):
    """A page logged in as the user would: MLflow's basic-auth user, Prefect's auth string
    (the Prefect UI keeps what its login page takes in localStorage ``prefect-password``)."""
    credentials = closed_loop.credentials
    context = browser.new_context(
        viewport={"width": 1400, "height": 1000},
        http_credentials={
            "username": credentials["mlflow_username"],
            "password": credentials["mlflow_password"],
        },
    )
    token = base64.b64encode(credentials["prefect_auth_string"].encode()).decode()
    context.add_init_script(f"localStorage.setItem('prefect-password', '{token}')")
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


def _shoot(page, folder: Path, name: str, full_page: bool = False) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    print(f"\nscreenshot: {path}")
    return path


def _click_to_page(page, link):
    """Click ``link``; the page it opens (a new tab for ``target=_blank``, else this one)."""
    if link.get_attribute("target") == "_blank":
        with page.context.expect_page() as opened:
            link.click()
        new_page = opened.value
        new_page.wait_for_load_state("domcontentloaded")
        return new_page
    link.click()
    return page


def _panel(page, title: str):
    """The Evidently dashboard panel (card) whose title is ``title``."""
    return page.locator(
        f"xpath=//h5[normalize-space()='{title}']/ancestor::div[.//*[local-name()='svg']][1]"
    )


def test_prefect_ui_lists_the_loop_flows_and_the_triggered_retraining(
    closed_loop, page, screenshots
) -> None:
    ui = closed_loop.stack["prefect_ui_url"]
    page.goto(f"{ui}/flows", wait_until="domcontentloaded")
    page.get_by_text("retrain", exact=True).first.wait_for()
    _shoot(page, screenshots, "prefect-flows")
    flows_text = page.inner_text("body")
    for flow in ("inbox", "monitor", "retrain", "score", "train"):
        assert flow in flows_text.split(), flow

    with _prefect(closed_loop):
        (retraining,) = _triggered_runs()
    page.goto(f"{ui}/runs/flow-run/{retraining.id}", wait_until="domcontentloaded")
    page.get_by_text(retraining.name).first.wait_for()
    page.get_by_text("Completed").first.wait_for()
    # The run's logs load after its header: wait for its own log line before reading the page.
    page.get_by_text("retraining data:").first.wait_for()
    _shoot(page, screenshots, "prefect-retrain-run")
    text = page.inner_text("body")
    assert f"retrain-{PROJECT}" in text  # the deployment
    assert f"loopml {PROJECT}: retrain on drift or degradation" in text  # started by the automation
    assert "retraining data:" in text  # the run's own log lines


def test_the_monitoring_artifact_report_link_opens_the_evidently_report(
    closed_loop, page, screenshots
) -> None:
    """Artifact -> its report link (served over HTTP by the Evidently UI) -> the report."""
    ui = closed_loop.stack["prefect_ui_url"]
    page.goto(f"{ui}/artifacts/key/{PROJECT}-monitoring", wait_until="domcontentloaded")
    page.locator("a[href*='/artifacts/artifact/']").first.click()
    page.get_by_text("DRIFT DETECTED").first.wait_for()
    _shoot(page, screenshots, "prefect-monitoring-artifact")
    text = page.inner_text("body")
    assert f"Batch {closed_loop.drifted_batch_id}: DRIFT DETECTED" in text
    assert "drifted columns:" in text and "tenure" in text

    link = page.locator("a[href*='/reports/']", has_text=".html").first  # "- report: FILE"
    href = link.get_attribute("href") or ""
    assert href.startswith(closed_loop.stack["evidently_url"]), href  # not file://
    report = _click_to_page(page, link)
    report.get_by_text("Dataset Drift is detected").first.wait_for()
    _shoot(report, screenshots, "evidently-report-from-artifact")
    report_text = report.inner_text("body")
    assert "Drifted Columns" in report_text and "tenure" in report_text
    assert href.rsplit("/", 1)[-1] in report_text  # the snapshot the artifact named


def test_the_evidently_dashboard_shows_a_point_per_monitored_batch(
    closed_loop, page, screenshots
) -> None:
    from evidently.ui.workspace import Workspace

    workspace = Workspace(str(closed_loop.home / "evidently"))
    (project,) = workspace.search_project(PROJECT)
    batches = len(workspace.list_runs(project.id))
    assert batches >= 1  # the drifted batch (the invalid one was quarantined, not monitored)

    page.goto(closed_loop.stack["evidently_url"], wait_until="domcontentloaded")
    page.get_by_text(PROJECT, exact=True).first.click()  # the projects list -> its dashboard
    page.get_by_text("Drift share", exact=True).first.wait_for()
    page.locator("svg circle").first.wait_for()
    _shoot(page, screenshots, "evidently-dashboard", full_page=True)
    series = {
        "Drift share": 1,
        "Weighted drift share": 1,
        "Drifted columns": 1,
        "Prediction drift": 1,
        "Performance: roc_auc": 1,  # the drifted batch came labelled
        "Performance: roc_auc (estimated)": 3,  # estimate, lower, upper
    }
    for title, lines in series.items():
        points = _panel(page, title).locator("svg circle").count()
        assert points == lines * batches, (title, points, batches)


def test_the_mlflow_version_page_shows_the_promotion_reason(closed_loop, page, screenshots) -> None:
    from mlflow.tracking import MlflowClient

    (decision,) = [
        entry
        for entry in _ledger(closed_loop)
        if entry["action"] in ("promoted", "refused")
        and (entry.get("trigger") or {}).get("batch_id") == closed_loop.drifted_batch_id
    ]
    version, action = decision["version"], decision["action"]
    reason = decision["reason"].removeprefix(f"{action}: ")  # the action is said once
    client = MlflowClient(tracking_uri=f"sqlite:///{closed_loop.home / 'mlflow.db'}")
    description = client.get_model_version(PROJECT, version).description
    assert description == f"{action.capitalize()} by the promotion gate: {reason}"

    page.goto(
        f"{closed_loop.stack['mlflow_url']}/#/models/{PROJECT}", wait_until="domcontentloaded"
    )
    page.get_by_role("link", name=f"Version {version}", exact=True).first.click()
    page.get_by_text(f"{action.capitalize()} by the promotion gate").first.wait_for()
    _shoot(page, screenshots, "mlflow-model-version")
    text = " ".join(page.inner_text("body").split())
    assert f"/versions/{version}" in page.url
    assert " ".join(description.split()) in text


def test_mlflow_ui_shows_the_registered_model_and_its_champion(
    closed_loop, page, screenshots
) -> None:
    page.goto(
        f"{closed_loop.stack['mlflow_url']}/#/models/{PROJECT}", wait_until="domcontentloaded"
    )
    page.get_by_text("Version 2").first.wait_for()
    _shoot(page, screenshots, "mlflow-registered-model")
    text = page.inner_text("body")
    assert "Version 1" in text and "Version 2" in text
    assert "champion" in text
    assert closed_loop.drifted_batch_id in text  # the retrained version's lineage tag


def test_the_runs_list_after_five_idle_minutes_holds_no_empty_inbox_run(
    closed_loop, page, screenshots
) -> None:
    """Idle is measured from the stack's last activity (the last flow run that ended), so
    the window overlaps the tests before this one; the inbox deployment's started runs are
    read from the API during the window and must not change. Then the deployment's runs list
    in the Prefect UI shows exactly those runs, each of which scored a batch (no empty poll)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )

    with _prefect(closed_loop), get_client(sync_client=True) as client:
        inbox = client.read_deployment_by_name(f"inbox/inbox-{PROJECT}")

        def inbox_runs() -> list:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[inbox.id]))
            )
            return [run for run in runs if run.start_time is not None]

        def last_activity() -> datetime:
            ended = [run.end_time for run in client.read_flow_runs(limit=200) if run.end_time]
            return max(ended)

        started = inbox_runs()
        idle_since = last_activity()
        idle_until = idle_since + timedelta(seconds=IDLE_SECONDS)
        while (left := (idle_until - datetime.now(UTC)).total_seconds()) > 0:
            assert [run.id for run in inbox_runs()] == [run.id for run in started], (
                "an inbox run started while the stack was idle"
            )
            time.sleep(min(left, 10))
        assert last_activity() == idle_since, "the stack was not idle for 5 minutes"
        final = inbox_runs()
        assert [run.id for run in final] == [run.id for run in started]
        subflows = {
            run.id: client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])
                )
            )
            for run in final
        }
    assert final, "the drifted batch's inbox run is missing"
    for run_id, children in subflows.items():  # an empty poll starts no score run
        assert any(child.name.startswith(f"score-{PROJECT}") for child in children), run_id

    ui = closed_loop.stack["prefect_ui_url"]
    page.goto(f"{ui}/deployments", wait_until="domcontentloaded")
    page.get_by_role("link", name=f"inbox-{PROJECT}", exact=True).first.click()
    count = page.get_by_text(re.compile(r"^\d+ Flow runs?$")).first
    count.wait_for()  # the deployment's runs list ("All except scheduled")
    _shoot(page, screenshots, "prefect-inbox-runs-after-idle")
    assert count.inner_text().split()[0] == str(len(final)), count.inner_text()
