"""A real browser check: JupyterLab headless on 127.0.0.1, the four notebooks run through its UI in headless Chromium.

One JupyterLab server (a free port, a token, a temporary folder) and one headless Chromium (selenium +
chromedriver; ``.ci/run`` installs the Debian packages ``chromium`` and ``chromium-driver`` when missing) serve all
four notebooks. Each notebook is copied there with the quick suite's parameters injected (the ``make demo`` runs),
opened, and run from the keyboard (Shift+Enter through every cell), the way a student runs it. The test waits for
its ``metrics.json`` (written by the last cell), then checks that a figure rendered (an ``<img>`` in an output
area), that no cell shows a traceback, and drives the notebook's widget: it picks another entry of the widget's
dropdown twice and waits until the picture the widget shows has changed each time. Screenshots of the figure and
of the widget after the change are kept under ``reports/browser/`` (``NN_name.png``, ``NN_name_widget.png``).
The server is stopped by its PID.
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
SCREENSHOTS = REPO / "reports" / "browser"
NOTEBOOKS = ("01_data_inspection", "02_pha_versions", "03_retrieval_training", "04_hash_evaluation")
RUN_TIMEOUT_S = 900  # the slowest notebook runs in 1-3 min on 2 idle cores; a busy machine or a lost keystroke: longer


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


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 and a headless Chromium: ``(driver, base_url, token, root)``."""
    webdriver = pytest.importorskip("selenium.webdriver")
    browser, driver_path = _chrome()
    tmp = tmp_path_factory.mktemp("browser")
    root = tmp / "lab"
    root.mkdir()
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp / "cfg"), "JUPYTER_RUNTIME_DIR": str(tmp / "rt"),
           "RSWB_CACHE_DIR": str(tmp / "cache")}
    env.pop("MPLBACKEND", None)  # the kernel keeps Jupyter's inline backend, so figures render as images
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "getuid") and os.getuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp / "lab.log", "w")
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
        yield drv, f"http://127.0.0.1:{port}", token, root
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


def _prepare(name: str, root: Path) -> Path:
    """Copy notebook ``name`` into the lab folder with the quick suite's parameters injected; its OUTPUT_DIR."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from rswb.notebooks import PROFILES

    output_dir = root / "out" / name
    nb = load_notebook_node(str(REPO / "notebooks" / f"{name}.ipynb"))  # papermill's reader adds the cells' tags
    nb = parameterize_notebook(nb, {**PROFILES["quick"][name], "OUTPUT_DIR": str(output_dir)})
    nbformat.write(nb, root / f"{name}.ipynb")
    return output_dir


def _pictures(drv, select) -> list[str]:
    """The ``src`` of every image in the output that holds the widget of ``select`` (its picture).

    Read in one script, not element by element: a redraw replaces the images while they are read, and a Python-side
    loop over elements then meets stale references.
    """
    return drv.execute_script("return Array.from(arguments[0].closest('.jp-OutputArea-output')"
                              ".querySelectorAll('img'), img => img.src);", select)


def _tracebacks(drv) -> list[str]:
    """The text of every stderr output showing a traceback, read in one script (outputs redraw as they are read)."""
    stderr = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
    texts = drv.execute_script(f"return Array.from(document.querySelectorAll('{stderr}'), e => e.innerText);")
    return [t for t in texts if "Traceback" in t]


def _first_unrun_cell(drv) -> int:
    """Index (among all cells) of the first code cell never run, once nothing runs or waits (-1 otherwise)."""
    return drv.execute_script(
        "const cells = Array.from(document.querySelectorAll('.jp-Notebook .jp-Cell'));"
        "const prompts = cells.filter(c => c.classList.contains('jp-CodeCell'))"
        "  .map(c => c.querySelector('.jp-InputPrompt').innerText.trim());"
        "if (prompts.some(p => p.includes('*'))) return -1;"
        "return cells.findIndex(c => c.classList.contains('jp-CodeCell')"
        "  && c.querySelector('.jp-InputPrompt').innerText.trim() === '[ ]:');")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_renders_and_its_widget_redraws_in_jupyterlab(lab, name):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    drv, base, token, root = lab
    output_dir = _prepare(name, root)
    shot = SCREENSHOTS / f"{name}.png"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        # A workspace of its own per notebook: the page holds this notebook only (no tabs of the earlier ones).
        drv.get(f"{base}/lab/workspaces/nb{name[:2]}/tree/{name}.ipynb?token={token}")
        wait = WebDriverWait(drv, 120)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")))
        # The kernel must be idle before the cells run: the status bar shows it.
        wait.until(lambda d: "Idle" in d.find_element(By.CSS_SELECTOR, "#jp-main-statusbar").text)
        # Run every cell the way a user does: select the first cell, then Shift+Enter through the notebook.
        cells = drv.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")
        cells[0].click()
        keys = ActionChains(drv).send_keys(Keys.ESCAPE)
        for _ in cells:
            keys = keys.key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).pause(0.2)
        keys.perform()
        # Done when the last cell wrote metrics.json (a failing cell stops the queue: fail fast on its traceback).
        # A keystroke the page dropped while it rendered leaves cells never run once the queue is empty: run them
        # from the keyboard too, from the first one (twice at most), instead of waiting out the timeout.
        for _attempt in range(3):
            state = WebDriverWait(drv, RUN_TIMEOUT_S, poll_frequency=2).until(
                lambda d: "done" if (output_dir / "metrics.json").exists() or _tracebacks(d)
                else ("missed" if _first_unrun_cell(d) >= 0 else None))
            if state == "done":
                break
            cells = drv.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")
            first = _first_unrun_cell(drv)
            cells[first].click()
            keys = ActionChains(drv).send_keys(Keys.ESCAPE)
            for _ in cells[first:]:
                keys = keys.key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).pause(0.2)
            keys.perform()
        assert (output_dir / "metrics.json").exists() or _tracebacks(drv), f"{name}: the notebook did not finish"
        assert _tracebacks(drv) == [], f"{name}: a cell failed in the browser"
        figure = drv.find_element(By.CSS_SELECTOR, ".jp-OutputArea-output img")
        drv.execute_script("arguments[0].scrollIntoView();", figure)
        assert figure.size["width"] > 100 and figure.size["height"] > 100
        drv.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        # The widget: pick two other entries of its dropdown; the picture it controls must change each time.
        select = WebDriverWait(drv, 60).until(ec.presence_of_element_located(
            (By.CSS_SELECTOR, ".jp-OutputArea-output .widget-dropdown select")))
        drv.execute_script("arguments[0].scrollIntoView();", select)
        options = Select(select).options
        assert len(options) >= 3, f"{name}: the widget's dropdown has {len(options)} entries"
        seen = _pictures(drv, select)
        current = Select(select).first_selected_option.get_attribute("index")
        for index in [i for i in range(len(options)) if str(i) != current][:2]:
            Select(select).select_by_index(index)
            WebDriverWait(drv, 120).until(lambda d: _pictures(d, select) and _pictures(d, select) != seen)  # noqa: B023
            seen = _pictures(drv, select)
        drv.save_screenshot(str(SCREENSHOTS / f"{name}_widget.png"))
        assert _tracebacks(drv) == []
    except Exception:
        drv.save_screenshot(str(SCREENSHOTS / f"{name}_failure.png"))  # what the browser showed, for the report
        raise
