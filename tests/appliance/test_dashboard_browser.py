"""The dashboard in headless Chromium while the demo pipeline runs and after it delivered a result."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from tests.appliance._demo_run import demo_run

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dashboard_shows_job_progress_and_delivered_result(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed (scripts/setup.sh installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    from PIL import Image

    from appliance.demo._scanner import send_study, write_dce_study
    from appliance.demo.run import running_demo, wait_for_results

    run = demo_run(tmp_path_factory)  # makes (or reuses) the demo engines
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data_dir = tmp_path / "var"
    shutil.copytree(run.data_dir / "engines", data_dir / "engines")
    shutil.copytree(run.data_dir / "trusted_keys", data_dir / "trusted_keys")
    study = write_dce_study(tmp_path / "scan")
    with running_demo(data_dir, stable_seconds=2.0) as (service, pacs, url), sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            cfg = service.config
            sender = threading.Thread(target=send_study, args=(study, cfg.node.host, cfg.node.port, cfg.node.ae_title))
            sender.start()
            page.goto(url)
            assert page.title() == "Appliance dashboard" or "Appliance" in page.content()
            seen_job = False
            running_rows: list[str] = []  # the job's row in the "Jobs" table while queued or running

            def look(current: list) -> None:  # type: ignore[type-arg]
                nonlocal seen_job
                job_id = current[0].job_id if current else ""
                if job_id.startswith("J") and not running_rows:
                    page.reload()
                    seen_job = seen_job or job_id in page.inner_text("body")
                    running_rows.extend(r for r in page.inner_text("#jobs").splitlines() if job_id in r)

            sender.join(timeout=120)
            rows, problem = wait_for_results(service, pacs, [study], timeout=180, on_update=look)
            assert not problem, problem
            page.reload()
            body = page.inner_text("body")
            job_id = rows[0].job_id
            assert seen_job, "the dashboard listed the job before its report was in the PACS"
            assert all(("queued" in r or "running" in r) for r in running_rows), running_rows
            results = page.inner_text("#results")
            assert job_id in results and "succeeded" in results and "(demo)" in results, results
            deliveries = page.inner_text("#deliveries")
            assert "pacs" in deliveries and "SYNTH" not in body
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    with Image.open(shot) as image:
        assert image.width >= 800 and image.height >= 600
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 10, "the screenshot is blank"
