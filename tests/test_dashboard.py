"""The dashboard in headless Chromium, against `servomesh serve` on simulated boards.

Needs the Debian packages chromium and chromium-driver (`.ci/run` installs them); without them
the test is skipped and says so. Selenium drives the system's chromedriver and never downloads one.
"""

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from apiserver import free_port

from servomesh.host.sim import Simulator, write_fleet_config

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / ".build" / "artifacts"
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
MISSING = (
    "no Chromium and chromedriver on this machine: `make test` installs them, or "
    "`apt-get install chromium chromium-driver`"
)
SERVER_START_S = 30.0
WAIT_S = 10.0
JOINT = "sim1_c0"

# A pose and a sequence beyond the simulator's `home`, so that the page shows their buttons.
EXTRA_CONFIG = """
[poses.wide]
sim1_c0 = -45
sim2_c0 = 45

[sequences.sweep]
keyframes = [
  { at_ms = 0, joints = { sim2_c1 = -30 } },
  { at_ms = 800, joints = { sim2_c1 = 30 } },
]
"""


def first_existing(paths: tuple[str, ...]) -> str | None:
    return next((path for path in paths if shutil.which(path)), None)


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    """Poll `check` until it returns something true; AssertionError naming `what` if it never
    does within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("%s: not within %.0f s" % (what, timeout_s))
        time.sleep(0.05)


@pytest.fixture(scope="module")
def browser_paths() -> tuple[str, str]:
    chromium = first_existing(CHROMIUM)
    driver = first_existing(CHROMEDRIVER)
    if chromium is None or driver is None:
        pytest.fail(MISSING)  # `make test` installs them (system-deps)
    return chromium, driver


@pytest.fixture(scope="module")
def server(
    browser_paths: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`servomesh serve` on two simulated boards; yields its base URL."""
    folder = tmp_path_factory.mktemp("dashboard")
    with Simulator(nodes=2, folder=folder / "boards") as sim:
        sim.wait_all_running(10)
        config = write_fleet_config(sim, folder / "fleet.toml")
        config.write_text(config.read_text() + EXTRA_CONFIG)
        port = free_port()
        command = [sys.executable, "-m", "servomesh.host.cli", "serve", "--config", str(config)]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        base = "http://127.0.0.1:%d" % port
        with (folder / "serve.log").open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
            try:

                def ready() -> bool:
                    if process.poll() is not None:
                        raise AssertionError("serve exited: %s" % _tail(folder / "serve.log"))
                    try:
                        return httpx.get(base + "/readyz", timeout=1).status_code == 200
                    except httpx.TransportError:
                        return False

                wait_for(ready, "servomesh serve ready", SERVER_START_S)
                yield base
            finally:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


@pytest.fixture
def browser(
    browser_paths: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not fetch a driver
    chromium, driver_path = browser_paths
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        # No network but the server: any other host name fails to resolve.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def assert_only_from(driver: Any, server: str) -> None:
    """Every URL the page asked for since the last call (HTTP and WebSocket, from the DevTools
    network events) is the server's, or inline data."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
        elif message["method"] == "Network.webSocketCreated":
            urls.append(message["params"]["url"])
    assert urls
    for url in urls:
        parts = urlsplit(url)
        assert parts.scheme == "data" or parts.netloc == urlsplit(server).netloc, url


def joint_position(http: httpx.Client, name: str) -> float | None:
    reply = http.get("/api/joints/" + name)
    reply.raise_for_status()
    return reply.json()["position_deg"]  # type: ignore[no-any-return]


def near(http: httpx.Client, name: str, deg: float) -> bool:
    position = joint_position(http, name)
    return position is not None and abs(position - deg) < 1.0


def is_stopped(http: httpx.Client) -> bool:
    return bool(http.get("/api/status").json()["stopped"])


def save_screenshot(driver: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    assert driver.save_screenshot(str(path))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, ARTIFACTS / name)


def test_dashboard_moves_stops_and_clears(server: str, browser: Any, tmp_path: Path) -> None:
    http = httpx.Client(base_url=server, timeout=5)
    try:
        drive_dashboard(server, browser, http, tmp_path)
    except BaseException:
        save_screenshot(browser, tmp_path, "dashboard-failure.png")
        print("browser console:", *browser.get_log("browser"), sep="\n")
        raise
    finally:
        http.close()


def drive_dashboard(server: str, browser: Any, http: httpx.Client, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def find(css: str) -> Any:
        return browser.find_element(By.CSS_SELECTOR, css)

    def until(check: Callable[[], Any], what: str) -> Any:
        return WebDriverWait(browser, WAIT_S).until(lambda _: check(), message=what)

    browser.get(server + "/")
    until(lambda: find("#link").get_attribute("data-state") == "live", "telemetry connected")
    slider = until(lambda: find('input[type=range][data-joint="%s"]' % JOINT), "a slider")
    ready = "#nodes .state-ready"
    until(lambda: len(browser.find_elements(By.CSS_SELECTOR, ready)) == 2, "both nodes ready")
    until(lambda: find("#poses button[data-name=wide]"), "the pose button")
    until(lambda: find("#sequences button[data-name=sweep]"), "the sequence button")
    assert find("#stop").is_displayed()
    assert not find("#clear").is_enabled()

    assert_only_from(browser, server)  # works offline: it fetches nothing from anywhere else

    # The slider moves the joint: End goes to the top of its range, then four steps of 0.5 back.
    # The final value is always sent, whatever the throttle dropped on the way.
    slider.send_keys(Keys.END, *[Keys.ARROW_LEFT] * 4)
    assert float(slider.get_attribute("value")) == 88.0
    wait_for(lambda: near(http, JOINT, 88.0), "%s at 88 deg" % JOINT)
    until(lambda: "88" in find("#joints output.actual").text, "the page showing 88 deg")
    time.sleep(0.5)  # a little history in the plot, for the screenshot
    save_screenshot(browser, tmp_path, "dashboard.png")

    # STOP latches: from the button, then from the keyboard; CLEAR clears it.
    for how, press in (
        ("button", lambda: find("#stop").click()),
        ("Escape key", lambda: slider.send_keys(Keys.ESCAPE)),
    ):
        press()
        wait_for(lambda: is_stopped(http), "stopped by the STOP %s" % how)
        until(lambda: not slider.is_enabled(), "the slider disabled")
        assert find("#stopped-banner").is_displayed()
        assert find("#state").text == "STOPPED"
        reply = http.put("/api/joints/" + JOINT, json={"deg": 10, "ms": 100})
        assert (reply.status_code, reply.json()["error"]) == (409, "stopped")
        save_screenshot(browser, tmp_path, "dashboard-stopped.png")
        until(lambda: find("#clear").is_enabled(), "CLEAR enabled")
        find("#clear").click()
        wait_for(lambda: not is_stopped(http), "running after CLEAR")
        until(slider.is_enabled, "the slider enabled again")
        assert not find("#stopped-banner").is_displayed()

    # A pose button moves the joints it names, and the log shows it, newest first.
    find("#poses button[data-name=wide]").click()
    wait_for(lambda: near(http, JOINT, -45.0), "%s at the pose" % JOINT)
    until(lambda: "%s=-45" % JOINT in find("#log tr").text, "the pose in the log")
    assert_only_from(browser, server)
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe
