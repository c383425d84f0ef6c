"""The UIs of ``loopml up`` in a real browser (Debian's chromium, driven by Playwright).

Uses the closed loop of test_loop.py (same session, started once): a champion, a drifted batch
that went through the inbox and the retraining it triggered. Screenshots go to the test's tmp
folder (their paths are printed); each test asserts on the page text a user would read.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

try:  # the module pytest imported (tests/e2e has no __init__.py): one stack, not two
    from test_loop import PROJECT, _prefect, _triggered_runs, closed_loop  # noqa: F401
except ImportError:  # pragma: no cover - if tests/e2e becomes a package
    from tests.e2e.test_loop import PROJECT, _prefect, _triggered_runs, closed_loop  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(1200)]

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


def _shoot(page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    print(f"\nscreenshot: {path}")
    return path


def test_prefect_ui_lists_the_loop_flows_and_the_triggered_retraining(
    closed_loop, page, tmp_path
) -> None:
    ui = closed_loop.stack["prefect_ui_url"]
    page.goto(f"{ui}/flows", wait_until="domcontentloaded")
    page.get_by_text("retrain", exact=True).first.wait_for()
    _shoot(page, tmp_path, "prefect-flows")
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
    _shoot(page, tmp_path, "prefect-retrain-run")
    text = page.inner_text("body")
    assert f"retrain-{PROJECT}" in text  # the deployment
    assert f"loopml {PROJECT}: retrain on drift or degradation" in text  # started by the automation
    assert "retraining data:" in text  # the run's own log lines


def test_prefect_ui_shows_the_monitoring_artifact_of_the_drifted_batch(
    closed_loop, page, tmp_path
) -> None:
    ui = closed_loop.stack["prefect_ui_url"]
    page.goto(f"{ui}/artifacts/key/{PROJECT}-monitoring", wait_until="domcontentloaded")
    page.locator("a[href*='/artifacts/artifact/']").first.click()
    page.get_by_text("DRIFT DETECTED").first.wait_for()
    _shoot(page, tmp_path, "prefect-monitoring-artifact")
    text = page.inner_text("body")
    assert f"Batch {closed_loop.drifted_batch_id}: DRIFT DETECTED" in text
    assert "drifted columns:" in text and "tenure" in text


def test_mlflow_ui_shows_the_registered_model_and_its_champion(closed_loop, page, tmp_path) -> None:
    page.goto(
        f"{closed_loop.stack['mlflow_url']}/#/models/{PROJECT}", wait_until="domcontentloaded"
    )
    page.get_by_text("Version 2").first.wait_for()
    _shoot(page, tmp_path, "mlflow-registered-model")
    text = page.inner_text("body")
    assert "Version 1" in text and "Version 2" in text
    assert "champion" in text
    assert closed_loop.drifted_batch_id in text  # the retrained version's lineage tag
