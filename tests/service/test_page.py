"""The page at / in a real browser: Debian's headless Chromium driven by Selenium.

Upload a photo and see the product itself first, filter by a brand, click a result to search
by it. Screenshots are saved in the test's tmp folder (and to $FAISS_BUILDER_SCREENSHOT when
set: that is how docs/service.png was made).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import Running

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        if os.environ.get("CI"):
            pytest.fail("chromium / chromium-driver missing: run scripts/browser/install.sh")
        pytest.skip("chromium / chromium-driver not installed (scripts/browser/install.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-dev-shm-usage", "--window-size=1200,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _cards(driver: object) -> list[tuple[str, str]]:
    """(id, brand) of each result card, read in one script (the grid may be replaced meanwhile)."""
    rows = driver.execute_script(  # type: ignore[attr-defined]
        "return [...document.querySelectorAll('#results .hit')]"
        ".map(c => [c.dataset.id, c.dataset.brand])"
    )
    return [(str(pid), str(brand)) for pid, brand in rows]


def test_upload_filter_and_click_through(
    browser: object, histogram_service: Running, demo_catalog: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    driver: object = browser
    wait = WebDriverWait(driver, 30)  # type: ignore[arg-type]
    driver.get(histogram_service.url + "/")  # type: ignore[attr-defined]
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "ready"))
    assert "commit" in driver.find_element(By.ID, "commit").text  # type: ignore[attr-defined]

    photo = demo_catalog.parent / "images" / "00009.jpg"
    driver.find_element(By.ID, "file").send_keys(str(photo))  # type: ignore[attr-defined]
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "results for 00009.jpg"))
    cards = _cards(driver)
    assert len(cards) == 12 and cards[0][0] == "9"
    wait.until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
    ))  # fmt: skip
    driver.save_screenshot(str(tmp_path / "1-upload.png"))  # type: ignore[attr-defined]
    if target := os.environ.get("FAISS_BUILDER_SCREENSHOT"):
        shutil.copyfile(tmp_path / "1-upload.png", target)

    Select(driver.find_element(By.ID, "brand")).select_by_visible_text("Northwind")  # type: ignore[attr-defined]
    wait.until(lambda d: {brand for _, brand in _cards(d)} == {"Northwind"})
    filtered = _cards(driver)
    # Northwind is 2 of every 7 products (8 of 24): all 8 come back, not those of a top 12.
    assert len(filtered) == 8
    driver.save_screenshot(str(tmp_path / "2-brand.png"))  # type: ignore[attr-defined]

    clicked = filtered[3][0]
    driver.find_elements(By.CSS_SELECTOR, "#results .hit")[3].click()  # type: ignore[attr-defined]
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), f"results for id {clicked}"))
    after = _cards(driver)
    assert after[0][0] == clicked and {brand for _, brand in after} == {"Northwind"}
    driver.save_screenshot(str(tmp_path / "3-click.png"))  # type: ignore[attr-defined]
    assert (tmp_path / "3-click.png").stat().st_size > 10_000


def test_text_and_errors_show_on_the_page(browser: object, histogram_service: Running) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver: object = browser
    wait = WebDriverWait(driver, 30)  # type: ignore[arg-type]
    driver.get(histogram_service.url + "/")  # type: ignore[attr-defined]
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "ready"))
    driver.find_element(By.ID, "text").send_keys("red bag")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "text-search").click()  # type: ignore[attr-defined]
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "no text tower"))
    status = driver.find_element(By.ID, "status")  # type: ignore[attr-defined]
    assert status.get_attribute("class") == "error"
