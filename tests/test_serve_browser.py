"""The page at / of tresnet-ft serve in a real headless Chromium (Debian's, driven through its own
chromedriver; Selenium Manager never downloads anything): choose an image, see the predicted
label, and for multi-label the tags' thresholds."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.classifier_builders import multi_label_checkpoint, single_label_checkpoint, write_photo_folder
from tresnet_ft.inference.predict import predict_to_file
from tresnet_ft.serve import BackgroundServer

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"),
]


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def _shown_labels(browser, url: str, image: Path) -> list:
    browser.get(url)
    browser.find_element(By.ID, "file").send_keys(str(image))
    WebDriverWait(browser, 60).until(
        lambda driver: driver.find_elements(By.CSS_SELECTOR, "#predictions .row")
        or "error" in driver.find_element(By.ID, "status").get_attribute("class"))
    assert browser.find_element(By.ID, "status").text == image.name
    _check_stacked(browser, ["model", "drop", "preview", "status", "predictions"])
    return browser.find_elements(By.CSS_SELECTOR, "#predictions .row")


def _check_stacked(browser, ids: list[str]) -> None:
    """Each element starts below the previous one ends: nothing on the page overlaps."""
    boxes = [browser.find_element(By.ID, name).rect for name in ids]
    for (above, box_above), (below, box_below) in zip(zip(ids, boxes), zip(ids[1:], boxes[1:])):
        assert box_below["y"] >= box_above["y"] + box_above["height"] - 0.5, (above, box_above, below, box_below)


def _predicted(checkpoint: Path, images: list[Path], folder: Path) -> list[dict]:
    output = folder / "rows.jsonl"
    predict_to_file(checkpoint, images, output, top_k=5, num_workers=0, progress=False)
    return [json.loads(line) for line in output.read_text().splitlines()]


def test_choosing_an_image_shows_the_predicted_labels(browser, tmp_path):
    image = write_photo_folder(tmp_path / "photos")[0][0]
    [expected] = _predicted(single_label_checkpoint(), [image], tmp_path)
    with BackgroundServer(single_label_checkpoint()) as server:
        rows = _shown_labels(browser, server.url, image)
    assert [row.find_element(By.CLASS_NAME, "label").text for row in rows] == expected["labels"]
    assert rows[0].find_element(By.CLASS_NAME, "score").text == f"{expected['probabilities'][0]:.3f}"


def test_multi_label_tags_show_their_thresholds(browser, tmp_path):
    photos = write_photo_folder(tmp_path / "photos")[0]
    rows = _predicted(multi_label_checkpoint(), photos, tmp_path)
    image, expected = next((photo, row) for photo, row in zip(photos, rows) if row["tags"])
    with BackgroundServer(multi_label_checkpoint()) as server:
        rows = _shown_labels(browser, server.url, image)
        assert [row.find_element(By.CLASS_NAME, "label").text for row in rows] == expected["tags"]
        assert all("(> 0." in row.find_element(By.CLASS_NAME, "score").text for row in rows)
        assert len(browser.find_elements(By.CSS_SELECTOR, "#predictions .threshold")) == len(expected["tags"])
