"""`pcsr serve` end to end in a real headless browser: the system's chromium driven by Selenium.

Starts the command on a free port with the bundled model, loads the page, uploads
examples/coffee.png, waits for the result, moves the k slider (the readout changes and the FLOPs
fall), shows the class map, downloads the result and compares it pixel for pixel with what
`pcsr upscale` writes for the same k. Screenshots go to the test's temporary folder.
Skipped, saying why, where the serve extra, Selenium, chromium or chromedriver is missing
(.ci/run installs chromium where apt-get is available)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
COFFEE = ROOT / "examples" / "coffee.png"

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install 'pcsr[serve]')")
pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install 'pcsr[serve]')")
pytest.importorskip("selenium", reason="selenium is not installed (pip install 'pcsr[test]')")
BROWSER = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
DRIVER = shutil.which("chromedriver")
if BROWSER is None or DRIVER is None:
    pytest.skip("no chromium and chromedriver on PATH (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

FLOPS = re.compile(r"flops: [\d.]+[KMGT]? \(([\d.]+) %\)")


@pytest.fixture
def server():
    proc = subprocess.Popen([sys.executable, "-m", "pcsr", "serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        if not line.startswith("pcsr serve: http://"):
            pytest.fail(f"pcsr serve did not start: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}")
        yield line.split()[2]
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
def browser(tmp_path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = BROWSER
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(arg)
    (tmp_path / "downloads").mkdir()
    opts.add_experimental_option("prefs", {"download.default_directory": str(tmp_path / "downloads"),
                                           "download.prompt_for_download": False})
    try:
        driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    except Exception as err:  # noqa: BLE001 - a browser that cannot start here is a skip, said why
        pytest.skip(f"chromium did not start: {type(err).__name__}: {str(err).splitlines()[0]}")
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def share(driver) -> float:
    found = FLOPS.search(driver.find_element(By.ID, "readout").text)
    return float(found.group(1)) if found else -1.0


def test_page_upload_route_compare_download(server, browser, tmp_path):
    d = browser
    wait = WebDriverWait(d, 120, poll_frequency=0.1)
    d.get(server)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
    d.find_element(By.ID, "file").send_keys(str(COFFEE))
    wait.until(lambda d: share(d) > 0 and "Live view" in d.find_element(By.ID, "status").text)
    assert d.find_element(By.ID, "error").get_attribute("hidden") is not None
    first, text = share(d), d.find_element(By.ID, "readout").text
    assert text.startswith("1024x684  flops: ") and "max_flops: " in text and "heavy pixels: " in text
    d.save_screenshot(str(tmp_path / "1-uploaded.png"))

    slider = d.find_element(By.ID, "k")
    slider.send_keys(*[Keys.ARROW_RIGHT] * 20)  # k 0 -> 1 in the slider's steps of 0.05
    k = float(slider.get_attribute("value"))
    assert k == pytest.approx(1.0)
    wait.until(lambda d: 0 < share(d) < first and not d.find_element(By.ID, "progress").is_displayed())
    time.sleep(0.3)  # the last key's re-route lands after the previous ones
    wait.until(lambda d: not d.find_element(By.ID, "progress").is_displayed())
    assert d.find_element(By.ID, "readout").text != text
    d.save_screenshot(str(tmp_path / "2-k1.png"))

    d.find_element(By.ID, "overlay-toggle").click()
    overlay = d.find_element(By.ID, "overlay")
    assert overlay.is_displayed() and d.execute_script("return arguments[0].naturalWidth", overlay) == 1024
    d.save_screenshot(str(tmp_path / "3-class-map.png"))

    d.find_element(By.ID, "download").click()
    saved = tmp_path / "downloads" / "coffee_x4.png"
    wait.until(lambda d: saved.is_file() and not list(saved.parent.glob("*.crdownload")))
    d.save_screenshot(str(tmp_path / "4-downloaded.png"))

    cli = tmp_path / "cli.png"
    subprocess.run([sys.executable, "-m", "pcsr", "upscale", str(COFFEE), "-o", str(cli), "-k", f"{k:g}", "-q"],
                   check=True, cwd=ROOT)
    got, want = Image.open(saved), Image.open(cli)
    assert got.mode == want.mode and np.array_equal(np.asarray(got), np.asarray(want))
