"""The dashboard in a real browser: `streamlit run dashboard.py` driven by headless Chromium.

Debian's `chromium` and `chromium-driver` (apt-get install -y chromium chromium-driver) and
Selenium drive it; the test signs in, opens every page (a screenshot of each goes to
test-artifacts/), searches by photo, opens a person from the gallery, renames them, and checks
that the database and the pending Telegram action say so.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from conftest import FACES_DIR
from test_dashboard_support import PASSWORD, dashboard_environment, filled_db, filled_template  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1440,1100"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None or not Path(CHROMEDRIVER).exists(),
                       reason="needs Debian's chromium and chromium-driver "
                              "(apt-get install -y chromium chromium-driver)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dashboard_url(clean_env, filled_db, tmp_path):  # noqa: F811
    """`streamlit run dashboard.py` on a free localhost port against a copy of the filled database,
    from a working directory with the project's .streamlit/config.toml and no .env."""
    dashboard_environment(clean_env, filled_db, tmp_path)
    workdir = tmp_path / "run"
    shutil.copytree(ROOT / ".streamlit", workdir / ".streamlit")
    port = free_port()
    log = open(tmp_path / "streamlit.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard.py"),
         "--server.port", str(port), "--server.address", "127.0.0.1"],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as response:
                    if response.read() == b"ok":
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"streamlit did not start:\n{log.read()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.seek(0)
        output = log.read()
        log.close()
        assert "Traceback" not in output, output


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(driver, xpath: str, timeout: float = 20.0):
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(ec.visibility_of_element_located(("xpath", xpath)))


def settle(driver, timeout: float = 20.0) -> None:
    """Wait until Streamlit has finished running the script (no 'running' indicator)."""
    from selenium.webdriver.support.ui import WebDriverWait

    time.sleep(0.3)
    WebDriverWait(driver, timeout).until(lambda d: not d.find_elements(
        "css selector", '[data-testid="stStatusWidget"]'))


def text(value: str) -> str:
    """An XPath test for an element whose own text contains `value`."""
    return f"contains(normalize-space(.), {value!r})"


def screenshot(driver, name: str, *, top: bool = True) -> None:
    """Save the window as test-artifacts/dashboard_<name>.png (scrolled to the top if `top`)."""
    if top:
        driver.execute_script("""document.querySelectorAll('[data-testid="stMain"], section.main')
                                 .forEach(e => e.scrollTo(0, 0)); window.scrollTo(0, 0);""")
        time.sleep(0.2)
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"dashboard_{name}.png"))


def test_sign_in_browse_and_rename_a_person(dashboard_url, browser, filled_db):  # noqa: F811
    with psycopg.connect(filled_db) as conn:
        biden = conn.execute("""SELECT t.id, t.label FROM telegram_topics t
                                JOIN face_embeddings f ON f.topic_id = t.id
                                GROUP BY t.id ORDER BY count(*) DESC LIMIT 1""").fetchone()
    browser.get(dashboard_url)
    password = wait_for(browser, "//input[@type='password']")
    screenshot(browser, "0_sign_in")
    password.send_keys(PASSWORD)
    wait_for(browser, f"//button[{text('Sign in')}]").click()
    wait_for(browser, f"//h1[{text('Overview')}]")
    settle(browser)
    wait_for(browser, "//*[@data-testid='stPlotlyChart']//*[contains(@class, 'main-svg')]")
    screenshot(browser, "1_overview")

    for number, page in enumerate(["Chats", "Errors", "Review", "Search by photo", "Persons"], start=2):
        wait_for(browser, f"//a[@data-testid='stSidebarNavLink'][{text(page)}]").click()
        wait_for(browser, f"//h1[{text(page)}]")
        settle(browser)
        if page == "Search by photo":
            upload = browser.find_element("xpath", "//input[@type='file']")
            upload.send_keys(str(FACES_DIR / "group_obama_biden_composite.jpg"))
            wait_for(browser, f"//*[{text('2 faces found')}]", timeout=30)
            settle(browser)
        screenshot(browser, f"{number}_{page.split()[0].lower()}")

    # The gallery shows the persons the pipeline made; open the one with the most faces.
    wait_for(browser, f"//a[{text(biden[1])}]").click()
    wait_for(browser, f"//h1[{text(biden[1])}]")
    settle(browser)
    screenshot(browser, "7_person")
    name = wait_for(browser, "//input[@aria-label='Name']")
    name.send_keys("Joe Biden\n")
    wait_for(browser, f"//*[{text('On Telegram')}]")
    settle(browser)
    screenshot(browser, "8_person_rename_preview", top=False)
    wait_for(browser, f"//button[{text('Rename to «Joe Biden»')}]").click()
    wait_for(browser, f"//*[{text('Renamed to «Joe Biden».')}]")
    settle(browser)
    wait_for(browser, f"//h1[{text('Joe Biden')}]")
    screenshot(browser, "9_person_renamed")

    with psycopg.connect(filled_db) as conn:
        assert conn.execute("SELECT label, label_is_manual FROM telegram_topics WHERE id = %s",
                            (biden[0],)).fetchone() == ("Joe Biden", True)
        assert conn.execute("SELECT action, payload, status FROM dashboard_actions").fetchall() == [
            ("rename_topic", {"person_id": biden[0], "title": "Joe Biden"}, "pending")]
