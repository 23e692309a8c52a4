"""The web chat page in a real headless Chromium (Debian's, never a downloaded one)."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from redis import Redis
from test_api_fixtures import MODEL, FakeWorker, ServerThread

from shared.contract import Turn
from shared.settings import Settings
from shared.turnqueue import enqueue_turn

pytest_plugins = ["test_api_fixtures"]

T = TypeVar("T")

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

MARKDOWN_REPLY = (
    "Here is **bold** and `x<y`:\n\n```python\nprint('<b>hi</b>')\n```\n\n"
    '<img src=x onerror="window.pwned=1"> <script>window.pwned=2</script> '
    "[bad](javascript:window.pwned=3) [good](https://example.com/a?b=1&c=2)"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        )
    profile = tempfile.mkdtemp(prefix="corral-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    # Both paths given, so Selenium never tries to download a browser or driver.
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(15)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait(driver: WebDriver, condition: Callable[[WebDriver], T], timeout: float = 10) -> T:
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


def ask(driver: WebDriver, text: str) -> None:
    box = wait(driver, lambda d: d.find_element(By.ID, "input"))
    box.send_keys(text + Keys.ENTER)


def test_page_streams_markdown_and_escapes_html(
    browser: WebDriver, api: ServerThread, fake_worker: FakeWorker
) -> None:
    fake_worker.reply = MARKDOWN_REPLY
    fake_worker.delay = 0.15
    browser.get(api.url + "/")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
    ask(browser, "<b>show</b> me")

    # Part of the answer is on screen while the rest is still coming.
    partial = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant.streaming"))
    wait(browser, lambda d: "bold" in partial[0].text)
    assert "example.com" not in partial[0].text
    wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, ".msg.streaming"))

    user = browser.find_element(By.CSS_SELECTOR, ".msg.user")
    assert user.text == "<b>show</b> me"
    assert not user.find_elements(By.TAG_NAME, "b")
    answer = browser.find_element(By.CSS_SELECTOR, ".msg.assistant")
    assert answer.find_element(By.TAG_NAME, "strong").text == "bold"
    code = answer.find_element(By.CSS_SELECTOR, "pre code.language-python")
    assert code.text == "print('<b>hi</b>')"
    assert answer.find_element(By.CSS_SELECTOR, "p code").text == "x<y"
    assert '<img src=x onerror="window.pwned=1">' in answer.text
    assert not browser.find_elements(
        By.CSS_SELECTOR, "#messages img, #messages script, #messages b"
    )
    links = answer.find_elements(By.TAG_NAME, "a")
    assert [a.get_attribute("href") for a in links] == ["https://example.com/a?b=1&c=2"]
    assert browser.execute_script("return window.pwned") is None

    # The conversation was sent whole and survives a reload (localStorage).
    assert fake_worker.turns[0].messages[-1].content == "<b>show</b> me"
    browser.refresh()
    items = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#conversations li"))
    assert items[0].text.startswith("<b>show</b> me")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg")) == 2)

    # A follow-up carries the earlier exchange along.
    fake_worker.reply, fake_worker.delay = "Second answer.", 0.0
    ask(browser, "and again")
    wait(browser, lambda d: "Second answer." in d.find_element(By.ID, "messages").text)
    roles = [m.role for m in fake_worker.turns[1].messages]
    assert roles == ["user", "assistant", "user"]


def test_stop_button_stops_the_answer_and_the_turn(
    browser: WebDriver, api: ServerThread, fake_worker: FakeWorker
) -> None:
    fake_worker.reply = " ".join(f"w{i}" for i in range(300))
    fake_worker.delay = 0.05  # fifteen seconds unless stopped
    browser.get(api.url + "/")
    ask(browser, "talk a lot")
    answer = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".msg.assistant"))
    wait(browser, lambda d: "w3" in answer.text)
    stop = browser.find_element(By.ID, "stop")
    assert stop.is_displayed()
    stop.click()
    wait(browser, lambda d: "(stopped)" in answer.text)
    assert browser.find_element(By.ID, "send").is_displayed()
    # The server noticed the closed connection and flagged the job for the worker.
    deadline = time.monotonic() + 5
    while not fake_worker.cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_worker.cancelled
    assert "w299" not in answer.text
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None


def status_text(driver: WebDriver, state: str) -> str:
    """The header's worker status once it shows ``state`` (polled by the page every 5 s)."""
    found = wait(
        driver,
        lambda d: d.find_element(By.CSS_SELECTOR, f'#status[data-state="{state}"]'),
        timeout=15,
    )
    return str(found.text)


def test_header_says_product_model_and_that_no_worker_is_up(
    browser: WebDriver, api: ServerThread
) -> None:
    browser.get(api.url + "/")
    assert browser.find_element(By.ID, "product").text == "corral"
    assert "corral" in browser.title
    assert "no worker running" in status_text(browser, "down")
    assert "Ask corral anything" in browser.find_element(By.ID, "empty").text  # not a blank page
    # /api/tags names the configured model even before a worker serves it.
    wait(browser, lambda d: d.find_element(By.ID, "model-name").text == f"model: {MODEL}")


def test_header_shows_the_model_a_live_worker_and_the_queue(
    browser: WebDriver,
    api: ServerThread,
    fake_worker: FakeWorker,
    redis_conn: Redis,
    settings: Settings,
) -> None:
    browser.get(api.url + "/")
    assert status_text(browser, "up") == "worker up"  # one process, however many slots
    model = wait(browser, lambda d: d.find_element(By.ID, "model-name").text)
    assert model == f"model: {MODEL}" and browser.title == f"corral — {MODEL}"

    # The worker is busy with a long answer; two more turns wait behind it.
    fake_worker.reply = " ".join(f"w{i}" for i in range(200))
    fake_worker.delay = 0.05
    ask(browser, "talk a lot")
    wait(browser, lambda d: "w3" in d.find_element(By.CSS_SELECTOR, ".msg.assistant").text)
    assert not browser.find_elements(By.ID, "empty")
    for n in range(2):
        waiting = Turn(platform="local", channel=f"c{n}", user=f"u{n}", message_id="m", text="x")
        enqueue_turn(redis_conn, settings, waiting)
    wait(browser, lambda d: "2 waiting in the queue" in d.find_element(By.ID, "status").text, 15)
    assert browser.find_element(By.ID, "status").get_attribute("data-state") == "up"
