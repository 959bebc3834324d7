"""The playground page in a real browser: Debian's headless Chromium driven by Selenium, against
a ``fractal-flood serve`` process on 127.0.0.1. Types a prompt, presses Enter, waits for the
flood, checks the root spans, the hover detail and the speed line, the bench chart, and a
narrow screen; saves screenshots. Skipped (with the reason) where Chromium is not installed;
CI installs it (``.ci/run``).

``FRACTAL_FLOOD_SCREENSHOT=PATH`` also writes the playground screenshot there, and
``FRACTAL_FLOOD_PLAYGROUND_MODEL=DIR`` serves that model instead of the tiny one (the README's
screenshot uses the shipped model: ``=shipped``).
"""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): "
                "apt-get install chromium chromium-driver", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
httpx = pytest.importorskip("httpx")

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from serve_process import serve  # noqa: E402

BENCH_JSON = Path(__file__).resolve().parents[1] / "docs" / "bench" / "cpu" / "bench.json"
WAIT_S = 180


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    model = os.environ.get("FRACTAL_FLOOD_PLAYGROUND_MODEL", str(tiny_model_dir))
    args = ["--device", "cpu", "--block", "16", "--log-level", "warning"]
    if model != "shipped":
        args += ["--model", model]
    if BENCH_JSON.is_file():
        args += ["--bench-json", str(BENCH_JSON)]
    log = tmp_path_factory.mktemp("playground") / "serve.log"
    with serve(args, log, {**os.environ, "OMP_NUM_THREADS": "1"}) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def test_type_a_prompt_and_watch_the_flood(server, browser, tmp_path):
    browser.get(server + "/")
    box = browser.find_element(By.ID, "prompt")
    for field, value in (("max_tokens", "60"), ("seed", "4")):
        el = browser.find_element(By.ID, field)
        el.clear()
        el.send_keys(value)
    box.clear()
    box.send_keys("ROMEO:")
    box.send_keys(Keys.SHIFT, Keys.ENTER)  # a new line, not a send
    assert browser.find_element(By.ID, "prompt").get_attribute("value") == "ROMEO:\n"
    box.send_keys(Keys.ENTER)  # sends
    speed = browser.find_element(By.ID, "speed")
    WebDriverWait(browser, WAIT_S).until(lambda d: "seed 4" in speed.text)
    line = speed.text
    for words in ("tokens/s", "chars/s", "manager", "flood", "60 roots"):
        assert words in line, line
    spans = browser.find_elements(By.CSS_SELECTOR, "#output .root")
    assert len(spans) == 60
    classes = [s.get_attribute("class").split() for s in spans[:4]]
    assert ["a" in c for c in classes] == [True, False, True, False]  # alternating shades
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
    ActionChains(browser).move_to_element(spans[3]).perform()
    detail = browser.find_element(By.ID, "detail")
    WebDriverWait(browser, 10).until(lambda d: detail.is_displayed())
    assert "root" in detail.text and "energy" in detail.text and "chunk" in detail.text
    label = spans[5].get_attribute("aria-label")  # "root ID: text"
    browser.execute_script("arguments[0].focus()", spans[5])  # keyboard focus shows it too
    WebDriverWait(browser, 10).until(lambda d: label.split(":")[0] + " " in detail.text + " ")
    shot = tmp_path / "playground.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    target = os.environ.get("FRACTAL_FLOOD_SCREENSHOT")
    if target:
        shutil.copy(shot, target)


def test_bad_prompt_shows_the_error(server, browser):
    browser.get(server + "/")
    box = browser.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys("caf\u00e9", Keys.ENTER)
    err = browser.find_element(By.ID, "error")
    WebDriverWait(browser, 30).until(lambda d: err.is_displayed())
    assert "unknown character" in err.text and "position 3" in err.text


def test_bench_view_draws_the_chart(server, browser, tmp_path):
    if not BENCH_JSON.is_file():
        pytest.skip(f"no {BENCH_JSON}")
    browser.get(server + "/")
    browser.find_element(By.ID, "tab-bench").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart svg circle"))
    svg = browser.find_element(By.CSS_SELECTOR, "#chart svg").text
    assert "tokens per second" in svg and "bits per character" in svg
    assert len(browser.find_elements(By.CSS_SELECTOR, ".bench-table tbody tr")) > 5
    browser.save_screenshot(str(tmp_path / "bench.png"))


def test_narrow_screen(server, browser):
    browser.set_window_size(380, 900)
    try:
        browser.get(server + "/")
        width = browser.execute_script("return document.documentElement.scrollWidth")
        inner = browser.execute_script("return window.innerWidth")
        assert width <= inner, (width, inner)  # nothing sticks out sideways
        assert browser.find_element(By.ID, "send").is_displayed()
    finally:
        browser.set_window_size(1100, 1000)
