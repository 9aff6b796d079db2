"""Serving the app in a background thread and driving it with Debian's headless Chromium (Selenium).

Used by the browser tests and by `workbench.dashboards.screenshots`. The browser starts with a fresh profile and
every background network feature off, so it runs on machines without a network. The helpers below read a
figure's numbers back from the browser's Plotly objects and click on plots at data coordinates.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator

from dash import Dash
from werkzeug.serving import make_server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TIMEOUT = 90  # seconds any one step may take on a loaded 2-core machine
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")


def missing() -> str | None:
    """Why the browser cannot start here (None when Chromium and its driver are installed)."""
    absent = [path for path in (CHROMIUM, CHROMEDRIVER) if shutil.which(path) is None]
    if absent:
        return f"{' and '.join(absent)} not installed (apt-get install chromium chromium-driver)"
    return None


@contextlib.contextmanager
def served(app: Dash) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 at a free port in a background thread; yield its URL; stop it on exit."""
    server = make_server("127.0.0.1", 0, app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[object]:
    """A headless Chromium WebDriver with a fresh profile, quit and its profile removed on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    reason = missing()
    if reason:
        raise RuntimeError(reason)
    profile = tempfile.mkdtemp(prefix="workbench-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # for `server_errors`
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def dom_id(element_id: str | dict) -> str:
    """The DOM id Dash gives a component id (pattern-matching ids are JSON with sorted keys)."""
    return element_id if isinstance(element_id, str) else json.dumps(element_id, sort_keys=True, separators=(",", ":"))


def wait(driver, condition: Callable, timeout: float = TIMEOUT):
    """condition(driver)'s first truthy value, polled every 0.2 s (TimeoutException after `timeout` s)."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def graph_data(driver, element_id: str | dict) -> list[dict] | None:
    """The traces of a dcc.Graph as the browser holds them (name, mode, x, y, z, text); None until it has data."""
    return driver.execute_script("""
        const el = document.getElementById(arguments[0]);
        const gd = el && el.querySelector('.js-plotly-plot');
        if (!gd || !gd.data || !gd.data.length) return null;
        const row = r => (r != null && typeof r === 'object') ? Array.from(r) : r;
        const arr = v => v == null ? null : Array.from(v, row);
        return gd.data.map(t => ({name: t.name, mode: t.mode, x: arr(t.x), y: arr(t.y), z: arr(t.z),
                                  text: t.text ? Array.from(t.text) : null}));""", dom_id(element_id))


def wait_graph(driver, element_id: str | dict, check: Callable = lambda data: True) -> list[dict]:
    """The graph's traces once it has data that passes `check`."""
    return wait(driver, lambda d: (lambda g: g if g and check(g) else None)(graph_data(d, element_id)))


def click_point(driver, element_id: str | dict, x: float, y: float) -> None:
    """Click the plot of a dcc.Graph with the mouse at data coordinates (x, y)."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    px, py = driver.execute_script("""
        const gd = document.getElementById(arguments[0]).querySelector('.js-plotly-plot');
        gd.scrollIntoView({block: 'center'});
        const fl = gd._fullLayout, box = gd.getBoundingClientRect();
        return [box.left + fl._size.l + fl.xaxis.l2p(arguments[1]), box.top + fl._size.t + fl.yaxis.l2p(arguments[2])];
    """, dom_id(element_id), x, y)
    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(int(px), int(py))
    actions.pointer_action.click()
    actions.perform()


def graph_note(driver, element_id: str | dict) -> str | None:
    """The text of a dcc.Graph's first annotation (what an empty figure says), None when it has none."""
    return driver.execute_script("""
        const el = document.getElementById(arguments[0]);
        const gd = el && el.querySelector('.js-plotly-plot');
        const notes = gd && gd.layout && gd.layout.annotations;
        return notes && notes.length ? notes[0].text : null;""", dom_id(element_id))


def server_errors(driver) -> list[str]:
    """The browser's console messages since the last call that report a failed request to the app (an
    exception in a callback answers HTTP 500)."""
    return [entry["message"] for entry in driver.get_log("browser") if "status of 5" in entry["message"]]


def type_text(driver, element_id: str, value: str) -> None:
    """Set the text of the input or textarea `element_id` as typing would (React sees an input event),
    without sending the keys one by one."""
    driver.execute_script("""
        const el = document.getElementById(arguments[0]);
        const proto = el.tagName === 'TEXTAREA' ? HTMLTextAreaElement.prototype : HTMLInputElement.prototype;
        Object.getOwnPropertyDescriptor(proto, 'value').set.call(el, arguments[1]);
        el.dispatchEvent(new Event('input', {bubbles: true}));""", element_id, value)


def click(driver, element_id: str) -> None:
    """Click the element `element_id` once it exists."""
    from selenium.webdriver.common.by import By

    element = wait(driver, lambda d: d.find_element(By.ID, element_id))
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    element.click()


def text(driver, element_id: str) -> str:
    """The visible text of element `element_id` ("" while it does not exist, or while Dash redraws it)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        found = driver.find_elements(By.ID, element_id)
        return found[0].text if found else ""
    except StaleElementReferenceException:
        return ""


def selected_tab(driver) -> str | None:
    """The id of the selected tab (tab-overview, tab-head, ...)."""
    return driver.execute_script("const t = document.querySelector('.tab--selected'); return t ? t.id : null;")


def choose(driver, dropdown_id: str, label: str) -> None:
    """Open the dcc.Dropdown `dropdown_id` and click its first option whose text contains `label`."""
    from selenium.webdriver.common.by import By

    click(driver, dropdown_id)
    options = wait(driver, lambda d: [o for o in d.find_elements(By.CSS_SELECTOR, "[role=option]") if label in o.text])
    options[0].click()
