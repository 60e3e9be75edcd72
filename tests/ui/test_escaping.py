"""Whatever a run folder holds shows as text in the page, never as markup: a hostile run name, train_log.jsonl
steps, confusion-matrix cells and labels, sample predictions and launch records, in a real headless Chromium."""

from __future__ import annotations

import json

import pytest

playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect
expect.set_options(timeout=30_000)


def xss(n: int) -> str:
    return f"<img src=x onerror=window.__xss={n}>"


@pytest.fixture
def hostile_runs(tmp_path):
    """A finished run whose files carry markup, and a run folder whose name is markup."""
    runs = tmp_path / "runs"
    run = runs / "xss"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text(f"task: classification\nmethod: lora\nmodel: '{xss(1)}'\n")
    rows = [{"step": xss(2), "loss": 0.5}, {"step": xss(3), "eval": {"accuracy": 0.5, "eval_loss": 0.4}}]
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "metrics.json").write_text(json.dumps({"accuracy": 0.5, xss(4): xss(5),
                                                  "confusion_matrix": [[xss(6), 1], [0, 2]]}))
    (run / "labels.json").write_text(json.dumps([xss(7), "neg"]))
    (run / "predictions.jsonl").write_text(json.dumps({"prediction": xss(8), "reference": "ok"}) + "\n")
    named = runs / f'a" {xss(9)}'
    named.mkdir()
    (named / "config.yaml").write_text("task: classification\n")
    (named / "status.json").write_text(json.dumps({"status": "failed", "error": xss(10)}))
    launches = runs / ".ui" / "launches"
    launches.mkdir(parents=True)
    (launches / "x.json").write_text(json.dumps({"id": "x", "argv": ["train", xss(11)], "pid": 0,
                                                 "started": xss(12), "returncode": None}))
    return runs


def no_markup_ran(page) -> None:
    assert page.evaluate("window.__xss") is None
    assert page.locator('img[src="x"]').count() == 0


def test_run_files_show_as_text(browser, serve, hostile_runs):
    pg = browser.new_page(base_url=serve(hostile_runs))
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto("/")
    expect(pg.locator("#runs tbody tr")).to_have_count(2)
    expect(pg.locator('#runs tr[data-name="xss"]')).to_contain_text(xss(1))
    expect(pg.locator("#runs tbody")).to_contain_text(f'a" {xss(9)}')
    expect(pg.locator("#launches tbody")).to_contain_text(xss(11))
    no_markup_ran(pg)
    pg.goto("/run/xss")
    expect(pg.locator("#status")).to_have_text("finished")
    expect(pg.locator("#confusion-matrix")).to_contain_text(xss(6))
    expect(pg.locator("#confusion-matrix")).to_contain_text(xss(7))
    expect(pg.locator("#metrics")).to_contain_text(xss(5))
    expect(pg.locator("#predictions")).to_contain_text(xss(8))
    expect(pg.locator("#what")).to_contain_text(xss(1))
    no_markup_ran(pg)
    pg.goto("/compare?runs=xss")
    expect(pg.locator("#compare-table tbody tr")).to_have_count(1)
    no_markup_ran(pg)
    pg.goto("/playground")
    expect(pg.locator("#serve-choices")).to_contain_text("xss")
    no_markup_ran(pg)
    pg.close()
    assert not errors, errors
