"""``morphzoo view`` in a real headless Chromium (Debian's chromium + chromedriver, driven by selenium): the page loads,
the mesh renders (not blank), a dragged slider reaches the model and changes the picture, the error map's colour bar
is in mm, and Ctrl-C stops the server cleanly. Skipped, saying why, where Chromium is missing."""

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from matplotlib import image

import morphzoo
from morphzoo.explorer import ExplorerSession
from morphzoo.mesh.io import write_mesh

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is missing: pip install -e '.[dev]'")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="Debian's chromium and chromium-driver are "
                                "missing: apt-get install chromium chromium-driver (scripts/install.sh --dev does)")
# the flags a root, offline machine needs (no sandbox, no background networking); WebGL through SwiftShader
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update", "--enable-unsafe-swiftshader",
         "--use-angle=swiftshader", "--window-size=1100,700"]


@pytest.fixture(scope="module")
def model():
    return morphzoo.load("pca-anny-face")


@pytest.fixture(scope="module")
def meshes(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("meshes")
    generator = torch.Generator().manual_seed(5)
    # off the model's span (PCA would reconstruct its own samples exactly): a 1 mm jitter per coordinate
    samples = model.sample(2, generator=generator) + 0.001 * torch.randn(2, model.num_vertices, 3, generator=generator)
    for name, vertices in zip("ab", samples, strict=True):
        write_mesh(folder / f"{name}.ply", vertices.numpy(), model.template.faces)
    return [folder / "a.ply", folder / "b.ply"], samples


@pytest.fixture(scope="module")
def server(meshes):
    process = subprocess.Popen([sys.executable, "-m", "morphzoo", "view", "pca-anny-face", "--port", "0", "--meshes",
                                *map(str, meshes[0])], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    line = process.stdout.readline()
    url = re.search(r"http://\S+", line)
    assert url, f"morphzoo view printed no URL: {line}{process.stdout.read() if process.poll() is not None else ''}"
    yield process, url.group(0)
    if process.poll() is None:
        process.kill()


@pytest.fixture(scope="module")
def browser(server):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    driver.get(server[1])
    yield driver
    driver.quit()


def _settle(driver, timeout=30.0):
    """Wait until the page is ready and every request it sent has its reply."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.execute_script("const e = window.explorer; return Boolean(e && e.ready && e.requests == e.replies)"):
            return
        time.sleep(0.05)
    raise AssertionError(f"the page did not settle: {driver.find_element('id', 'status').text}")


def _canvas_pixels(driver) -> np.ndarray:
    pixels = image.imread(io.BytesIO(driver.get_screenshot_as_png()))[..., :3]
    box = driver.find_element("id", "canvas").rect
    return pixels[int(box["y"]):int(box["y"] + box["height"]), int(box["x"]):int(box["x"] + box["width"])]


def test_the_page_renders_the_mesh_and_a_slider_reaches_the_model(browser, model):
    _settle(browser)
    assert browser.find_element("id", "title").text == "pca-anny-face"
    before = _canvas_pixels(browser)
    covered = (before < 0.97).any(axis=-1).mean()  # the background is white
    assert 0.05 < covered < 0.9, f"the mesh covers {covered:.1%} of the canvas"

    slider = browser.find_element("css selector", "#sliders input[data-column='0']")
    webdriver.ActionChains(browser).click_and_hold(slider).move_by_offset(slider.size["width"] // 2 - 2, 0) \
        .release().perform()
    _settle(browser)
    coordinates = browser.execute_script("return window.explorer.state.coordinates")
    assert coordinates[0] > 1.0 and not any(coordinates[1:])
    # what the page shows is what the model decodes at those coordinates
    expected = ExplorerSession(model).decode(coordinates).numpy().ravel()
    np.testing.assert_allclose(browser.execute_script("return window.explorer.vertices()"), expected, atol=1e-6)
    after = _canvas_pixels(browser)
    assert np.abs(after - before).max(axis=-1).mean() > 0.005, "moving the slider did not change the picture"


def test_the_error_map_shows_the_reconstruction_error_in_mm(browser, model, meshes):
    _settle(browser)
    browser.find_element("id", "error").click()
    _settle(browser)
    assert browser.find_element("id", "colourbar").is_displayed()
    error = (model(meshes[1][0]) - meshes[1][0]).norm(dim=-1) * 1000
    assert error.max() > 1.0
    assert browser.find_element("id", "tick-max").text == f"{float(error.max()):.2f}"
    assert "mean error" in browser.find_element("id", "status").text


def test_ctrl_c_stops_the_server_cleanly(server, browser):
    process, _ = server
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0 and "stopped" in output
