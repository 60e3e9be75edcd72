"""The dashboard as a person uses it, in a real headless Chromium: the runs list and its statuses, a run's loss
chart with every point, a failed run's error, launching a run and watching it finish without a reload, stopping a
running run, the comparison. Screenshots go to the test's temporary folder."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect
expect.set_options(timeout=30_000)  # a shared, busy machine


def status_cell(page, name: str):
    return page.locator(f'#runs tr[data-name="{name}"] .status')


def wait_for_status(run_dir: Path, status: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if json.loads((run_dir / "status.json").read_text()).get("status") == status:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{run_dir} did not reach {status}")


def test_runs_list_shows_every_run_with_its_status(page, runs_env, tmp_path):
    wait_for_status(runs_env["runs"] / "running", "running")
    page.goto("/")
    expect(status_cell(page, "finished")).to_have_text("finished")
    expect(status_cell(page, "failed")).to_have_text("failed")
    expect(status_cell(page, "running")).to_have_text("running")
    row = page.locator('#runs tr[data-name="finished"]')
    expect(row).to_contain_text("3 / 3")
    expect(row).to_contain_text("accuracy")
    page.fill("#filter", "fail")  # filter
    expect(page.locator("#runs tbody tr")).to_have_count(1)
    page.fill("#filter", "")
    page.click('#runs th[data-key="name"]')  # sort by name, ascending
    names = page.locator("#runs tbody tr").evaluate_all("rows => rows.map(r => r.dataset.name)")
    assert names == sorted(names)
    page.screenshot(path=str(tmp_path / "runs.png"), full_page=True)


def test_run_page_draws_every_point_and_toggles_log_scale(page, tmp_path):
    page.goto("/run/finished")
    expect(page.locator("#status")).to_have_text("finished")
    expect(page.locator('#chart circle[data-series="train loss"]')).to_have_count(3)  # a 3-step run's 3 points
    expect(page.locator('#chart circle[data-series="eval loss"]')).to_have_count(4)  # before + 3 evaluations
    expect(page.locator("#confusion-matrix")).to_be_visible()
    expect(page.locator("#checkpoints .checkpoint").first).to_contain_text("step-0000003")
    expect(page.locator("#config")).to_contain_text("max_steps: 3")
    expect(page.locator("#chart svg")).to_have_attribute("data-log", "false")
    page.check("#logscale")
    expect(page.locator("#chart svg")).to_have_attribute("data-log", "true")
    expect(page.locator('#chart circle[data-series="train loss"]')).to_have_count(3)
    page.screenshot(path=str(tmp_path / "run.png"), full_page=True)


def test_failed_run_shows_its_error_line_and_log(page, tmp_path):
    page.goto("/run/failed")
    expect(page.locator("#status")).to_have_text("failed")
    expect(page.locator("#error-line")).to_contain_text("value cannot be converted to type float without overflow")
    expect(page.locator("#log-tail")).to_contain_text("Traceback")
    page.screenshot(path=str(tmp_path / "failed.png"), full_page=True)


def test_a_bad_launch_is_an_error_in_the_page(page, runs_env):
    page.goto("/")
    page.fill("#config", "/etc/hostname")
    page.click("#launch button[type=submit]")
    expect(page.locator("#error")).to_contain_text("not under an allowed folder")
    page.fill("#config", str(runs_env["tmp"] / "quick.yaml"))
    page.fill("#overrides", "train.lr=abc")
    page.click("#launch button[type=submit]")
    expect(page.locator("#error")).to_contain_text("train.lr")


@pytest.mark.slow
def test_launch_a_run_and_watch_it_finish_without_reloading(page, runs_env, tmp_path):
    page.goto("/")
    page.evaluate("window.notReloaded = true")
    page.fill("#config", str(runs_env["tmp"] / "quick.yaml"))
    page.click("#launch button[type=submit]")
    expect(page.locator("#launches tbody tr").first).to_contain_text("quick.yaml")
    expect(status_cell(page, "launched")).to_have_text("finished", timeout=180_000)
    expect(page.locator('#runs tr[data-name="launched"]')).to_contain_text("3 / 3")
    assert page.evaluate("window.notReloaded") is True
    assert (runs_env["runs"] / "launched" / "adapter").is_dir()


@pytest.mark.slow
def test_stop_a_running_run_then_resume_it(page, runs_env, tmp_path):
    wait_for_status(runs_env["runs"] / "running", "running")
    page.goto("/run/running")
    expect(page.locator("#status")).to_have_text("running")
    expect(page.locator('#chart circle[data-series="train loss"]').first).to_be_attached(timeout=60_000)
    expect(page.locator("#progress-text")).to_contain_text(re.compile(r"of 100000 · about .* left"))
    page.screenshot(path=str(tmp_path / "running.png"), full_page=True)
    page.click("#stop")
    expect(page.locator("#status")).to_have_text("interrupted", timeout=60_000)
    expect(page.locator("#checkpoints .checkpoint").first).to_contain_text("(latest)")
    assert runs_env["running"].wait(timeout=30) == 130
    step = int((runs_env["runs"] / "running" / "checkpoints" / "latest").read_text().strip().removeprefix("step-"))
    page.fill("#max-steps", str(step + 2))  # resume it for two more steps, from the page
    page.click("#resume")
    expect(page.locator("#status")).to_have_text("finished", timeout=180_000)
    expect(page.locator("#progress-text")).to_contain_text(f"step {step + 2} of {step + 2}")


def test_compare_picked_runs(page, tmp_path):
    page.goto("/")
    page.check('#runs tr[data-name="finished"] .pick')
    page.check('#runs tr[data-name="failed"] .pick')
    page.click("#compare-picked")
    expect(page).to_have_url(re.compile(r"/compare\?runs="))
    rows = page.locator("#compare-table tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("#compare-table tbody tr.failed")).to_contain_text("overflow")
    expect(page.locator("#plots img")).to_have_count(4)
    page.wait_for_function("[...document.querySelectorAll('#plots img')].every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)


@pytest.mark.slow
def test_a_launched_run_that_fails_shows_why_in_the_page(page, runs_env):
    tmp = runs_env["tmp"]
    (tmp / "stars.csv").write_text("text,stars\nthe film was good,5\nthe food was bad,1\n" * 10)
    raw = yaml.safe_load((tmp / "quick.yaml").read_text())
    raw["data"]["train"], raw["output_dir"] = str(tmp / "stars.csv"), str(runs_env["runs"] / "broken")
    (tmp / "broken.yaml").write_text(yaml.safe_dump(raw))
    page.goto("/")
    page.fill("#config", str(tmp / "broken.yaml"))
    page.click("#launch button[type=submit]")
    expect(status_cell(page, "broken")).to_have_text("failed", timeout=120_000)
    expect(page.locator("#launches tbody tr").first.locator(".error-line")).to_contain_text("label", timeout=60_000)
    page.click('#runs tr[data-name="broken"] a')
    expect(page.locator("#error-line")).to_contain_text("label")
    expect(page.locator("#log-tail")).to_contain_text("leantune train")  # the launch's own output
