"""A real browser check: JupyterLab headless on 127.0.0.1, notebook 01 run through its UI in headless Chromium.

The test starts ``jupyter lab`` on a free port in a temporary folder holding a copy of notebook 01, opens it in
headless Chromium (selenium + chromedriver; ``.ci/run`` installs the Debian packages ``chromium`` and
``chromium-driver`` when missing), runs every cell from the keyboard (Shift+Enter), waits until a
rendered figure (an ``<img>`` in an output area) appears, and saves a screenshot to
``reports/browser/01_data_inspection.png``. The server is stopped by its PID.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "01_data_inspection.ipynb"
SCREENSHOT = REPO / "reports" / "browser" / "01_data_inspection.png"


def _chrome() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("headless Chromium not found: install the Debian packages chromium and chromium-driver "
                    "(.ci/run does this in CI)")
    return browser, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer {url} within {timeout} s")


def test_notebook_01_renders_a_figure_in_jupyterlab(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = _chrome()
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    env.pop("MPLBACKEND", None)  # the kernel keeps Jupyter's inline backend, so figures render as images
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "getuid") and os.getuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    drv = None
    try:
        _wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", proc)
        opts = webdriver.ChromeOptions()
        opts.binary_location = browser
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--window-size=1400,1000"):
            opts.add_argument(arg)
        drv = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=opts)
        drv.get(f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK.name}?token={token}")
        wait = WebDriverWait(drv, 120)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")))
        # The kernel must be idle before "Run All": the status bar shows it.
        wait.until(lambda d: "Idle" in d.find_element(By.CSS_SELECTOR, "#jp-main-statusbar").text)
        # Run every cell the way a user does: select the first cell, then Shift+Enter through the notebook.
        cells = drv.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")
        cells[0].click()
        keys = ActionChains(drv).send_keys(Keys.ESCAPE)
        for _ in cells:
            keys = keys.key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).pause(0.2)
        keys.perform()
        figure = WebDriverWait(drv, 180).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, ".jp-OutputArea-output img")))
        drv.execute_script("arguments[0].scrollIntoView();", figure)
        assert figure.size["width"] > 100 and figure.size["height"] > 100
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        drv.save_screenshot(str(SCREENSHOT))
        assert SCREENSHOT.stat().st_size > 10_000
        stderr = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
        assert not [e for e in drv.find_elements(By.CSS_SELECTOR, stderr) if "Traceback" in e.text]
    except Exception:
        if drv is not None:  # what the browser showed, for the failure report
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            drv.save_screenshot(str(SCREENSHOT.with_name("failure.png")))
        raise
    finally:
        if drv is not None:
            drv.quit()
        os.kill(proc.pid, signal.SIGTERM)  # stop the server by its PID
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
