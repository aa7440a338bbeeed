"""The playground in a real browser: headless Chromium from the distribution's packages,
driven by Selenium against the farm's gunicorn gateway. Screenshots go to var/screenshots."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import ROOT
from tests.helpers import reference_body, sample_image

SCREENSHOTS = ROOT / "var" / "screenshots"
BROWSER = ("chromium", "chromedriver")


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    found = [shutil.which(name) for name in BROWSER]
    if not all(found):
        message = "chromium and chromium-driver (Debian packages) are needed for the browser tests"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs them: a missing browser is a failure there
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = str(found[0])
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(found[1])), options=options)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def open_playground(browser: webdriver.Chrome, gateway: str) -> WebDriverWait[webdriver.Chrome]:
    browser.get(f"{gateway}/")
    wait = WebDriverWait(browser, 60, poll_frequency=0.05)
    wait.until(lambda b: b.find_elements(By.ID, "field-prompt"))
    return wait


def pick_image(browser: webdriver.Chrome, tmp_path: Path) -> None:
    picture = tmp_path / "input.png"
    picture.write_bytes(sample_image())
    browser.find_element(By.ID, "image-file").send_keys(str(picture))
    WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "preview").is_displayed())


def fill(browser: webdriver.Chrome, **fields: str) -> None:
    for name, value in fields.items():
        element = browser.find_element(By.ID, f"field-{name}")
        if element.tag_name == "select":
            Select(element).select_by_value(value)
        else:
            element.clear()
            element.send_keys(value)


def test_the_form_follows_the_running_schema(browser: webdriver.Chrome, gateway: str) -> None:
    open_playground(browser, gateway)
    scheduler = Select(browser.find_element(By.ID, "field-scheduler"))
    assert [option.text for option in scheduler.options][:2] == ["DDIM", "DPM Multi"]
    assert scheduler.first_selected_option.text == "DDIM"
    steps = browser.find_element(By.ID, "field-num_inference_steps")
    assert (steps.get_attribute("min"), steps.get_attribute("max"), steps.get_attribute("value")) == (
        "20",
        "100",
        "20",
    )
    assert Select(browser.find_element(By.ID, "field-output_format")).first_selected_option.text == "jpeg"


def test_a_job_end_to_end_with_progress_seed_and_download(
    browser: webdriver.Chrome, gateway: str, tmp_path: Path
) -> None:
    wait = open_playground(browser, gateway)
    pick_image(browser, tmp_path)
    fill(
        browser,
        prompt="a lighthouse in a storm",
        num_inference_steps="100",
        strength="1",
        seed="4242",
        samples="2",
    )
    browser.find_element(By.ID, "submit").click()
    # The bar moves while the job runs: some steps done, not all.
    wait.until(lambda b: 0 < float(b.find_element(By.ID, "progress").get_attribute("value") or 0) < 100)
    browser.save_screenshot(str(SCREENSHOTS / "playground-running.png"))
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#gallery figure img")) == 2)
    seeds = [seed.text for seed in browser.find_elements(By.CSS_SELECTOR, "#gallery .seed")]
    assert seeds == ["4242", "4243"]
    assert "succeeded" in browser.find_element(By.ID, "state").text
    links = browser.find_elements(By.CSS_SELECTOR, "#gallery a[download]")
    assert [link.get_attribute("download").rsplit("-", 1)[1] for link in links] == ["0.jpg", "1.jpg"]
    loaded = browser.execute_script(
        "return [...document.querySelectorAll('#gallery img')]"
        ".every(image => image.complete && image.naturalWidth === 512)"
    )
    assert loaded is True
    browser.save_screenshot(str(SCREENSHOTS / "playground.png"))

    browser.find_element(By.ID, "copy-curl").click()
    curl = browser.find_element(By.ID, "snippet").get_attribute("value") or ""
    assert curl.startswith(f"curl -s {gateway}/v1/sd1.5-img2img") and '"seed":4242' in curl
    browser.find_element(By.ID, "copy-python").click()
    assert "requests.post(" in (browser.find_element(By.ID, "snippet").get_attribute("value") or "")


def test_cancel_a_queued_job(browser: webdriver.Chrome, gateway: str, tmp_path: Path) -> None:
    # Another client's long job holds the worker, so the page's job waits in the queue.
    blocker = requests.post(
        f"{gateway}/v1/sd1.5-img2img",
        json=reference_body(num_inference_steps=100, strength=1.0),
        headers={"Prefer": "respond-async"},
        timeout=30,
    ).json()
    wait = open_playground(browser, gateway)
    pick_image(browser, tmp_path)
    fill(browser, prompt="a slow sunrise")
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda b: "queued" in b.find_element(By.ID, "state").text)
    assert "ahead" in browser.find_element(By.ID, "state").text
    browser.save_screenshot(str(SCREENSHOTS / "playground-queued.png"))
    browser.find_element(By.ID, "cancel").click()
    wait.until(lambda b: "canceled" in b.find_element(By.ID, "state").text)
    assert browser.find_elements(By.CSS_SELECTOR, "#gallery figure") == []
    browser.save_screenshot(str(SCREENSHOTS / "playground-canceled.png"))
    requests.post(f"{gateway}/v1/jobs/{blocker['id']}/cancel", timeout=30)


def test_a_bad_field_shows_the_apis_error(browser: webdriver.Chrome, gateway: str, tmp_path: Path) -> None:
    wait = open_playground(browser, gateway)
    pick_image(browser, tmp_path)
    fill(browser, prompt="a harbour", strength="5")
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda b: b.find_element(By.ID, "error").text)
    assert browser.find_element(By.ID, "error").text == "strength: must be between 0.1 and 1"
    browser.save_screenshot(str(SCREENSHOTS / "playground-error.png"))


def test_it_fits_a_phone_screen(browser: webdriver.Chrome, gateway: str) -> None:
    browser.set_window_size(390, 844)
    try:
        open_playground(browser, gateway)
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390
        browser.save_screenshot(str(SCREENSHOTS / "playground-phone.png"))
    finally:
        browser.set_window_size(1280, 900)
