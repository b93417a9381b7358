"""MLflow's own UI on a pertbench store, driven in headless Chromium: the browser test and the compare-view
screenshot (`scripts/screenshot_compare.py`) see what a user sees.

Needs Chromium and its WebDriver (Debian: `apt-get install chromium chromium-driver`; `.ci/run` installs them)
and selenium (the `dev` extra). Nothing here reaches beyond 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmark.core.errors import PertbenchError
from benchmark.tracking import schema

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
"""Headless, and no background connections (without those, Chromium's connections are refused in a closed
network). A fresh --user-data-dir is added per browser."""
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
SERVER_START_S = 180.0
PAGE_S = 60.0
QUIET_UI = {
    "mlflow.assistant.panelOpen_v1": "false",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
}
"""localStorage of the UI: the assistant side panel closed (it opens itself on a first visit)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mlflow_server(store_uri: str, timeout: float = SERVER_START_S) -> Iterator[str]:
    """Serve `store_uri` with `mlflow server` on a free localhost port (one worker, no job runner); yields its
    base URL and stops the server's process group afterwards."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with tempfile.TemporaryDirectory(
        prefix="pertbench-ui-"
    ) as cwd:  # where the server may write its own files
        log = Path(cwd) / "server.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(base, proc, log, timeout)
            yield base
        finally:
            _stop_group(proc)


def _wait_healthy(base: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise PertbenchError(f"mlflow server exited with code {proc.returncode}: {tail[0]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    raise PertbenchError(f"mlflow server did not answer on {base} within {timeout:.0f} s")


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (uvicorn runs as its child), SIGKILL after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def chromium_paths() -> tuple[str, str] | None:
    """The Chromium binary and its chromedriver on PATH, or None when either is missing."""
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextlib.contextmanager
def chromium(width: int = 1600, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium (selenium WebDriver) with a fresh profile, closed afterwards."""
    paths = chromium_paths()
    if paths is None:
        raise PertbenchError(
            "headless Chromium needs chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        raise PertbenchError("selenium is missing: pip install -c constraints.txt -e '.[dev]'") from exc
    with tempfile.TemporaryDirectory(prefix="pertbench-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = paths[0]
        for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(paths[1]), options=options)
        try:
            driver.set_page_load_timeout(PAGE_S)
            yield driver
        finally:
            driver.quit()


def wait_for(driver: Any, script: str, timeout: float = PAGE_S, what: str = "the page") -> Any:
    """Run `script` (a JavaScript function body that returns a value) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise PertbenchError(f"MLflow UI: {what} did not appear within {timeout:.0f} s")
        time.sleep(0.25)


def open_page(driver: Any, base: str, route: str) -> None:
    """Open a UI route (after the address, e.g. `/#/experiments/1/runs`) with the assistant panel kept closed."""
    if not str(driver.current_url).startswith(base):
        driver.get(f"{base}/health")  # same origin, so the UI's localStorage can be set before it loads
        for key, value in QUIET_UI.items():
            driver.execute_script("localStorage.setItem(arguments[0], arguments[1])", key, value)
    driver.get(f"{base}{route}")


ROWS_JS = """
const rows = {};
for (const row of document.querySelectorAll('.ag-row[row-id]')) {
  const cells = rows[row.getAttribute('row-id')] ||= {};
  for (const cell of row.querySelectorAll('.ag-cell[col-id]')) cells[cell.getAttribute('col-id')] = cell.innerText;
}
return rows;
"""


def runs_table(driver: Any, base: str, experiment_id: str, run_ids: list[str]) -> dict[str, dict[str, str]]:
    """The experiment's runs page in the pertbench view: {run id: {column id: cell text}} once every run in
    `run_ids` shows a value in the `r` column."""
    open_page(driver, base, schema.runs_page_path(experiment_id))
    column = f"metrics.`{schema.HEADLINE_METRICS[0]}`"
    check = f"const rows = (function() {{{ROWS_JS}}})(); const ids = {json.dumps(run_ids)};"
    check += (
        f" return ids.every(id => rows[id] && (rows[id][{json.dumps(column)}] || '').trim()) ? rows : null;"
    )
    return wait_for(driver, check, what=f"the runs {', '.join(run_ids)} with their {column}")


def artifact_image_width(driver: Any, base: str, experiment_id: str, run_id: str, path: str) -> int:
    """Open an image artifact in the run's artifact view; its width in pixels as the browser decoded it."""
    open_page(
        driver,
        base,
        f"/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}?{schema.UI_WORKFLOW_QUERY}",
    )
    script = (
        "const img = [...document.querySelectorAll('img')].find(i => i.src.startsWith('blob:') && i.complete);"
        " return img ? img.naturalWidth : null;"
    )
    return int(wait_for(driver, script, what=f"the image artifact {path} of run {run_id}"))


def compare_page_path(experiment_id: str, run_ids: list[str]) -> str:
    """The UI route of MLflow's compare view of `run_ids`."""
    runs = urllib.parse.quote(json.dumps(run_ids, separators=(",", ":")))
    experiments = urllib.parse.quote(json.dumps([experiment_id]))
    return f"/#/compare-runs?runs={runs}&experiments={experiments}&{schema.UI_WORKFLOW_QUERY}"


SELECT = ".du-bois-light-select"
OPTION = ".du-bois-light-select-dropdown:not(.du-bois-light-select-dropdown-hidden) .du-bois-light-select-item-option"


def open_compare(
    driver: Any, base: str, experiment_id: str, run_ids: list[str], params: list[str], metrics: list[str]
) -> None:
    """Open the compare view of `run_ids` with its parallel-coordinates plot on `params` and `metrics` (MLflow picks
    three differing hyperparameters and one metric by itself, and keeps the choice only in the page)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_page(driver, base, compare_page_path(experiment_id, run_ids))
    clear = '[data-testid="clear-button"]'
    wait_for(driver, f"return document.querySelector('{clear}')", what="the compare view's plot controls")
    driver.find_element(By.CSS_SELECTOR, clear).click()
    for index, names in ((0, params), (1, metrics)):
        for name in names:
            driver.find_elements(By.CSS_SELECTOR, f"{SELECT} .du-bois-light-select-selector")[index].click()
            driver.switch_to.active_element.send_keys(name)
            _click_option(driver, name)
            driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    chosen = f"return [...document.querySelectorAll('{SELECT}')].map(s => [...s.querySelectorAll('.du-bois-light-select-selection-item-content')].map(e => e.innerText))"
    wanted = [params, metrics]
    wait_for(
        driver,
        f"const got = (function() {{{chosen}}})(); return JSON.stringify(got) === {json.dumps(json.dumps(wanted, separators=(',', ':')))};",
        what=f"the plot on {params + metrics}",
    )
    wait_for(
        driver,
        "return document.querySelector('.js-plotly-plot .parcoords')",
        what="the parallel-coordinates plot",
    )
    driver.execute_script("document.activeElement.blur()")  # no focus ring in the picture


def _click_option(driver: Any, name: str) -> None:
    """Click the option titled exactly `name` in the open dropdown, scrolling its virtual list to find it."""
    script = f"""
    const option = [...document.querySelectorAll('{OPTION}')].find(o => o.getAttribute('title') === arguments[0]);
    if (option) {{ option.click(); return 'clicked'; }}
    const holder = document.querySelector('.du-bois-light-select-dropdown:not(.du-bois-light-select-dropdown-hidden) .rc-virtual-list-holder');
    if (holder && holder.scrollTop + holder.clientHeight < holder.scrollHeight) holder.scrollTop += holder.clientHeight / 2;
    return null;
    """
    deadline = time.monotonic() + PAGE_S
    while driver.execute_script(script, name) is None:
        if time.monotonic() > deadline:
            raise PertbenchError(f"MLflow UI: the compare view offers no {name!r} to select")
        time.sleep(0.2)
