"""The playground, in a real headless Chromium: finished runs served by leantune serve's engine (mounted in the
dashboard), a prompt answered in a stream, texts classified, a question answered from a context; and a run's
sample predictions beside their references."""

from __future__ import annotations

import pytest

playwright = pytest.importorskip("playwright.sync_api")
pytest.importorskip("leantune.serve", reason="the playground runs on leantune serve")
expect = playwright.expect
expect.set_options(timeout=60_000)


def test_generative_run_page_shows_sample_predictions(page, generative_runs):
    page.goto("/run/chat")
    expect(page.locator("#status")).to_have_text("finished")
    expect(page.locator("#predictions")).to_contain_text("reference")
    expect(page.locator("#predictions tbody tr").first).to_contain_text("What colour is item")


@pytest.mark.slow
def test_playground_streams_classifies_and_answers(page, generative_runs, tmp_path):
    page.goto("/playground")
    page.check('#serve-choices input[value="finished"]')
    page.check('#serve-choices input[value="chat"]')
    page.check('#serve-choices input[value="qa"]')
    page.click("#serve")
    expect(page.locator("#serving")).to_have_text("serving: chat, finished, qa")
    options = page.locator("#model option").evaluate_all("os => os.map(o => o.value)")
    assert {"finished", "chat", "qa"} <= set(options)

    page.select_option("#model", "chat")
    expect(page.locator("#generate-form")).to_be_visible()
    page.fill("#prompt", "What colour is item 4?")
    page.fill("#max-tokens", "6")
    page.click("#generate-form button[type=submit]")
    expect(page.locator("#output")).to_have_attribute("data-done", "true")
    assert int(page.locator("#output").get_attribute("data-chunks")) >= 1  # streamed, token by token
    assert page.locator("#output").text_content()
    page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)

    page.select_option("#model", "finished")
    expect(page.locator("#classify-form")).to_be_visible()
    page.fill("#texts", "the movie was great\nthe food was awful")
    page.click("#classify-form button[type=submit]")
    expect(page.locator("#classified .label")).to_have_count(2)
    assert set(page.locator("#classified .label").all_text_contents()) <= {"pos", "neg"}

    page.select_option("#model", "qa")
    page.fill("#question", "what is small")
    page.fill("#context", "the red house is big . the blue dog is small .")
    page.click("#answer-form button[type=submit]")
    expect(page.locator("#output")).to_have_attribute("data-done", "true")
    assert page.locator("#output").text_content() in "the red house is big . the blue dog is small ."


def test_playground_errors_show_in_the_page(page, generative_runs):
    page.goto("/playground")
    expect(page.locator('#serve-choices input[value="finished"]')).to_be_attached()
    for box in page.locator("#serve-choices input").all():
        box.uncheck()
    page.click("#serve")  # nothing picked
    expect(page.locator("#error")).to_contain_text("pick at least one finished run")
