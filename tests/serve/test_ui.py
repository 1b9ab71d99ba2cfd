"""The web chat in a real headless browser (Debian's chromium + chromium-driver, driven by selenium).

Skipped only when chromium is not installed locally; ``.ci/run`` installs it and sets
``EXGRA_REQUIRE_BROWSER=1``, which turns the skip into a failure. The screenshots are saved under
``test-artifacts/`` (git-ignored) and pytest's tmp dir.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.serve.conftest import API_KEY
from tests.serve.helpers import data_url

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _browser_paths() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or shutil.which("chromium-driver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser():
    paths = _browser_paths()
    if paths is None or importlib_missing("selenium"):
        if os.environ.get("EXGRA_REQUIRE_BROWSER"):
            pytest.fail("chromium, chromium-driver and selenium are required here (EXGRA_REQUIRE_BROWSER=1)")
        pytest.skip(
            "chromium / chromium-driver / selenium not installed: apt-get install chromium chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(paths[1]), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def _text(driver, element) -> str:
    # .text normalises whitespace (a random model writes "\r"); the DOM text is what the page sent on.
    return driver.execute_script("return arguments[0].textContent", element)


def _save(driver, name: str, tmp_path: Path) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    shutil.copy(path, tmp_path / name)
    return path


def test_chat_page_uploads_an_image_and_streams_an_answer(
    browser, server, serve_setup, client, model_name, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    question, image = serve_setup["questions"][7]
    browser.get(f"{server.url}/ui")
    wait = WebDriverWait(browser, 90)
    assert "Research use only" in browser.find_element(By.ID, "banner").text
    browser.find_element(By.ID, "apikey").send_keys(API_KEY)
    browser.find_element(By.ID, "file").send_keys(str(image))
    wait.until(lambda d: d.find_element(By.ID, "preview").get_attribute("src").startswith("data:image/"))
    browser.find_element(By.ID, "question").send_keys(question)
    browser.find_element(By.ID, "send").click()
    bubble = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".msg.assistant.done .text")))
    answer = _text(browser, bubble)
    # The page sends the file's bytes as a data: URL at temperature 0: the API answers the same.
    expected = client.chat.completions.create(
        model=model_name,
        temperature=0,
        messages=[{"role": "user", "content": [
            {"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": data_url(image)}},
        ]}],
    )  # fmt: skip
    assert answer and answer == expected.choices[0].message.content
    # A second turn: the page sends the history; the answer matches the API's multi-turn answer.
    follow_up = "And what else?"
    browser.find_element(By.ID, "question").send_keys(follow_up)
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant.done")) == 2)
    second = _text(browser, browser.find_elements(By.CSS_SELECTOR, ".msg.assistant.done .text")[1])
    messages = [
        {"role": "user", "content": [
            {"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": data_url(image)}},
        ]},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": [{"type": "text", "text": follow_up}]},
    ]  # fmt: skip
    expected_second = client.chat.completions.create(model=model_name, temperature=0, messages=messages)
    assert second == expected_second.choices[0].message.content
    assert _save(browser, "serve-ui-chat.png", tmp_path).stat().st_size > 10_000


def test_chat_page_shows_errors_as_text(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server.url}/ui")
    wait = WebDriverWait(browser, 60)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello, not a picture")
    browser.find_element(By.ID, "apikey").send_keys(API_KEY)
    browser.find_element(By.ID, "file").send_keys(str(not_an_image))
    wait.until(lambda d: d.find_element(By.ID, "preview").get_attribute("src"))
    browser.find_element(By.ID, "question").send_keys("What is it?")
    browser.find_element(By.ID, "send").click()
    error = wait.until(lambda d: d.find_element(By.ID, "error").text or None)
    assert "not a readable image" in error and "Traceback" not in error
    # A wrong key is reported the same way.
    browser.find_element(By.ID, "apikey").clear()
    browser.find_element(By.ID, "apikey").send_keys("wrong")
    browser.find_element(By.ID, "question").send_keys("Hello?")
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: "invalid API key" in d.find_element(By.ID, "error").text)
    _save(browser, "serve-ui-error.png", tmp_path)
    # The example images of the demo set are offered.
    assert browser.find_elements(By.CSS_SELECTOR, "#examples button.example")
