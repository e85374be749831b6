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
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})   # every request the page makes
    for flag in CHROME_FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(driver, xpath: str, timeout: float = 20.0):
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from selenium.common.exceptions import TimeoutException

    try:
        return WebDriverWait(driver, timeout).until(ec.visibility_of_element_located(("xpath", xpath)))
    except TimeoutException:
        screenshot(driver, "timed_out", top=False)   # what the page showed instead
        raise AssertionError(f"not shown within {timeout:g} s: {xpath}") from None


def click(driver, xpath: str, timeout: float = 20.0) -> None:
    """Click the element at `xpath`, found again if a rerun replaced it meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException

    for attempt in range(3):
        try:
            wait_for(driver, xpath, timeout).click()
            return
        except StaleElementReferenceException:
            if attempt == 2:
                raise
            time.sleep(0.5)


def settle(driver, timeout: float = 20.0) -> None:
    """Wait until Streamlit has finished running the script (no 'running' indicator)."""
    from selenium.webdriver.support.ui import WebDriverWait

    time.sleep(0.3)
    WebDriverWait(driver, timeout).until(lambda d: not d.find_elements(
        "css selector", '[data-testid="stStatusWidget"]'))


def text(value: str) -> str:
    """An XPath test for an element whose own text contains `value`."""
    return f"contains(normalize-space(.), {value!r})"


def no_errors(driver, where: str) -> None:
    """The page shows no exception and no error message."""
    shown = driver.find_elements("css selector", '[data-testid="stException"], [data-testid="stAlertContentError"]')
    assert not shown, f"{where}: " + " | ".join(e.text for e in shown)


def requested_hosts(driver) -> set[str]:
    """The hosts of every request the pages made since the last call (Chrome's network log)."""
    import json
    from urllib.parse import urlsplit

    hosts = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = urlsplit(message["params"]["request"]["url"])
            if url.scheme in ("http", "https", "ws", "wss"):   # not data:, blob:, chrome://
                hosts.add(url.hostname)
    return hosts


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
    click(browser, f"//button[{text('Sign in')}]")
    wait_for(browser, f"//h1[{text('Overview')}]")
    settle(browser)
    wait_for(browser, "//*[@data-testid='stPlotlyChart']//*[contains(@class, 'main-svg')]")
    screenshot(browser, "1_overview")

    no_errors(browser, "Overview")

    # Sidebar links by their address (their text holds the icon's name too).
    pages = {"Chats": "chats", "Errors": "errors", "Review": "review", "Search by photo": "search",
             "Person": "person", "Persons": "gallery"}
    for number, (page, path) in enumerate(pages.items(), start=2):
        click(browser, f"//a[@data-testid='stSidebarNavLink'][substring(@href, string-length(@href) - "
                       f"{len(path)})='/{path}']")
        wait_for(browser, f"//h1[{text(page)}]")
        settle(browser)
        if page == "Search by photo":
            upload = browser.find_element("xpath", "//input[@type='file']")
            upload.send_keys(str(FACES_DIR / "group_obama_biden_composite.jpg"))
            wait_for(browser, f"//*[{text('2 faces found')}]", timeout=30)
            settle(browser)
        no_errors(browser, page)
        screenshot(browser, f"{number}_{page.split()[0].lower()}")

    # The gallery shows the persons the pipeline made; open the one with the most faces.
    click(browser, f"//a[{text(biden[1])}]")
    wait_for(browser, f"//h1[{text(biden[1])}]")
    settle(browser)
    no_errors(browser, "a person")
    screenshot(browser, "8_person")
    name = wait_for(browser, "//input[@aria-label='Name']")
    name.send_keys("Joe Biden\n")
    wait_for(browser, f"//*[{text('On Telegram')}]")
    settle(browser)
    screenshot(browser, "9_person_rename_preview", top=False)
    click(browser, f"//button[{text('Rename to «Joe Biden»')}]")
    wait_for(browser, f"//*[{text('Renamed to «Joe Biden».')}]")
    settle(browser)
    wait_for(browser, f"//h1[{text('Joe Biden')}]")
    screenshot(browser, "10_person_renamed")

    # Every page, a search and a change, and no request left the machine: not for the favicon,
    # fonts or icons (a third party would learn when the operator opens a biometric archive).
    hosts = requested_hosts(browser)
    assert hosts == {"127.0.0.1"}, f"requests to other hosts: {sorted(hosts - {'127.0.0.1'})}"

    with psycopg.connect(filled_db) as conn:
        assert conn.execute("SELECT label, label_is_manual FROM telegram_topics WHERE id = %s",
                            (biden[0],)).fetchone() == ("Joe Biden", True)
        assert conn.execute("SELECT action, payload, status FROM dashboard_actions").fetchall() == [
            ("rename_topic", {"person_id": biden[0], "title": "Joe Biden"}, "pending")]


def test_a_wrong_password_gets_nothing(dashboard_url, browser, filled_db):  # noqa: F811
    with psycopg.connect(filled_db) as conn:
        labels = [r[0] for r in conn.execute("SELECT label FROM telegram_topics")]
        person = conn.execute("SELECT min(id) FROM telegram_topics").fetchone()[0]
    # Straight to a person's page, as a bookmark would: the sign-in form and nothing else.
    browser.get(f"{dashboard_url}/person?person={person}")
    password = wait_for(browser, "//input[@type='password']")
    password.send_keys("correct horse battery stapler\n")
    wait_for(browser, f"//*[{text('Wrong password.')}]")
    settle(browser)
    screenshot(browser, "wrong_password")
    page = browser.find_element("tag name", "body").text
    assert not browser.find_elements("css selector", '[data-testid="stSidebarNavLink"], img, '
                                     '[data-testid="stMetric"], [data-testid="stDataFrame"]')
    assert "Overview" not in page and not [label for label in labels if label in page]
    assert browser.find_elements("xpath", "//input[@type='password']")   # asked again


def click_cell(driver, after_heading: str, row: int, column: int, *, shift: bool = False) -> None:
    """Click a cell of the first table after the heading `after_heading` (a table is a canvas:
    the click goes to the cell's place). Picture cells: person.py's row height, Streamlit's
    "small" column width, one header row."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    grid = wait_for(driver, f"//h3[{text(after_heading)}]/following::*[@data-testid='stDataFrame'][1]"
                            "//*[@data-testid='data-grid-canvas']")
    width, height = grid.size["width"], grid.size["height"]
    x, y = 75 * column + 37, 35 + 96 * row + 48
    actions = ActionChains(driver).move_to_element_with_offset(grid, x - width // 2, y - height // 2)
    if shift:
        actions = actions.key_down(Keys.SHIFT).click().key_up(Keys.SHIFT)
    else:
        actions = actions.click()
    actions.perform()
    settle(driver)


def select_option(driver, label: str, option: str) -> None:
    """Choose `option` in the selectbox labelled `label`."""
    # One XPath for box and field, so that `click` finds both again if a rerun replaced them.
    click(driver, f"//*[@data-testid='stSelectbox'][.//label[{text(label)}]]"
                  "//*[@role='combobox' or @data-baseweb='select']")
    click(driver, f"//*[@role='option'][{text(option)}]")
    settle(driver)


def test_move_a_face_out_and_merge_in_the_browser(dashboard_url, browser, filled_db):  # noqa: F811
    """"Not this person" on a posted face, then a merge: what the database and the pending
    Telegram actions say afterwards."""
    with psycopg.connect(filled_db, autocommit=True) as conn:
        # Two persons with two faces each; one face's photo is already posted in its topic.
        (first, first_label), (second, second_label) = conn.execute(
            """SELECT t.id, t.label FROM telegram_topics t JOIN face_embeddings f ON f.topic_id = t.id
               WHERE t.merged_into IS NULL GROUP BY t.id ORDER BY count(*), t.id LIMIT 2""").fetchall()
        face, media = conn.execute("""SELECT id, media_item_id FROM face_embeddings WHERE topic_id = %s
                                      ORDER BY low_quality, quality_score DESC, id LIMIT 1""", (second,)).fetchone()
        [(posted,)] = conn.execute("""UPDATE uploaded_media SET status = 'posted', uploaded_message_id = 4242,
                                          uploaded_at = now()
                                      WHERE topic_id = %s AND media_item_id = %s RETURNING id""",
                                   (second, media)).fetchall()
    browser.get(f"{dashboard_url}/person?person={second}")
    wait_for(browser, "//input[@type='password']").send_keys(PASSWORD + "\n")
    wait_for(browser, f"//h1[{text(second_label)}]")
    settle(browser)

    # Click the face (the first picture of the grid), say it is somebody new: the form next to
    # the faces says its post is deleted from the topic.
    click_cell(browser, "Faces", row=0, column=0)
    wait_for(browser, f"//*[{text('1 of 2 selected')}]")
    wait_for(browser, f"//*[{text('1 post in «' + second_label + '»')}]")
    screenshot(browser, "move_preview", top=False)
    click(browser, f"//button[{text('Move 1 face')}]")
    wait_for(browser, f"//*[{text('Moved the faces to a new person')}]")
    settle(browser)
    no_errors(browser, "after moving a face")

    # Merge it with the other person: the bigger one (two faces to this one's one left) is the
    # one kept by default.
    click(browser, f"//*[@role='tab'][{text('Merge')}]")
    settle(browser)                                    # choosing a tab reruns the page
    select_option(browser, "Same person as", first_label)
    wait_for(browser, f"//*[{text('has no topic: nothing to close.')}]")
    screenshot(browser, "merge_preview", top=False)
    click(browser, f"//button[{text(f'Merge «{second_label}» into «{first_label}»')}]")
    wait_for(browser, f"//*[{text(f'Merged «{second_label}» into «{first_label}».')}]")
    settle(browser)
    no_errors(browser, "after the merge")
    screenshot(browser, "merged")
    with psycopg.connect(filled_db) as conn:
        merged = conn.execute("SELECT action, payload FROM dashboard_actions WHERE status = 'pending' ORDER BY id"
                              ).fetchall()

    # Undo it, next to the message: the merge's request for Telegram is withdrawn, both are back.
    click(browser, f"//button[{text('Undo')}]")
    wait_for(browser, f"//*[{text(f'Undone: Merged «{second_label}» into «{first_label}».')}]")
    settle(browser)
    no_errors(browser, "after the undo")
    with psycopg.connect(filled_db) as conn:
        assert conn.execute("SELECT merged_into FROM telegram_topics WHERE id = %s", (second,)).fetchone() == (None,)
        assert conn.execute("SELECT action FROM dashboard_actions WHERE status = 'pending' ORDER BY id"
                            ).fetchall() == [("delete_posts",)]

    with psycopg.connect(filled_db) as conn:
        new = conn.execute("SELECT topic_id FROM face_embeddings WHERE id = %s", (face,)).fetchone()[0]
        assert new not in (None, first, second)
    assert merged == [
            ("delete_posts", {"person_id": second, "uploaded_media_ids": [posted]}),
            ("merge_persons", {"survivor_id": first, "absorbed_id": second,
                               "title": f"→ merged into {first_label}",
                               "note": f"Merged into {first_label}: its posts continue there."})]


HOSTILE = "x [news](https://example.com) **bold** <b>tag</b>"


def test_a_strangers_chat_title_and_names_stay_text_in_the_browser(dashboard_url, browser, filled_db):  # noqa: F811
    """Chat titles, labels and file names with Markdown and HTML in them, on the pages and in
    the messages after a change: no link to the stranger's address, no bold, no HTML element."""
    with psycopg.connect(filled_db, autocommit=True) as conn:
        conn.execute("UPDATE telegram_topics SET label = %s || ' ' || id", (HOSTILE,))
        conn.execute("UPDATE scan_checkpoints SET chat_title = %s || ' ' || id", (HOSTILE,))
        conn.execute("UPDATE processing_errors SET error_message = error_message || %s", (f" {HOSTILE}.jpg",))
        person, other = [r[0] for r in conn.execute(
            "SELECT id FROM telegram_topics WHERE merged_into IS NULL ORDER BY id LIMIT 2")]

    def literal_only(where: str, shown: bool = True) -> None:
        no_errors(browser, where)
        links = browser.find_elements("css selector", "a[href*='example.com']")
        assert not links, f"{where}: a live link in " + " | ".join(
            browser.execute_script("return arguments[0].parentElement.parentElement.outerHTML", a)[:600]
            for a in links)
        page = browser.find_element("tag name", "body").text.replace("\u2060", "")   # the word joiner
        assert not shown or "**bold**" in page, f"{where}: the name is not shown"
        assert not [e for e in browser.find_elements("tag name", "b") if e.text == "tag"], f"{where}: HTML rendered"

    browser.get(f"{dashboard_url}/person?person={person}")
    wait_for(browser, "//input[@type='password']").send_keys(PASSWORD + "\n")
    wait_for(browser, f"//h1[{text('[news](https:')}]")
    settle(browser)
    literal_only("a person's page")
    screenshot(browser, "hostile_person")

    # The merge: the choice in the select box, the preview, the button, and the message after it.
    click(browser, f"//*[@role='tab'][{text('Merge')}]")
    settle(browser)
    click(browser, "//*[@data-testid='stSelectbox'][.//label[contains(., 'Same person as')]]"
                   "//*[@role='combobox' or @data-baseweb='select']")
    options = browser.find_elements("xpath", "//*[@role='option']")
    assert options and not browser.find_elements("css selector", "[role='option'] a, [role='option'] b")
    click(browser, f"//*[@role='option'][{text(f'{other}')}]")
    settle(browser)
    wait_for(browser, f"//*[{text('On Telegram')}]")
    literal_only("the merge preview")
    click(browser, "//button[starts-with(normalize-space(.), 'Merge «')]")
    wait_for(browser, "//*[@data-testid='stAlertContentSuccess']")
    settle(browser)
    literal_only("after the merge")
    screenshot(browser, "hostile_merged")

    for path in ("gallery", "review", "chats", "errors"):
        click(browser, f"//a[@data-testid='stSidebarNavLink'][substring(@href, string-length(@href) - "
                       f"{len(path)})='/{path}']")
        settle(browser)
        if path == "errors":   # the error's context, its expander label holding the file name
            # (the first expander is the open "Failed for good" one with its retry buttons)
            click(browser, "//*[@data-testid='stExpander']//summary[contains(., 'corrupt')]")
            settle(browser)
        if path == "gallery":  # the tiles, each linking to its person by name
            wait_for(browser, f"//*[@data-testid='stPageLink']//*[{text('**bold**')}]")
        if path == "review":   # the face to decide, its buttons named after the candidates
            wait_for(browser, "//button[contains(., 'It’s') or contains(., \"It's\")]")
        literal_only(path, shown=path != "chats")   # chats: names are in the table (a canvas)
    hosts = requested_hosts(browser)
    assert hosts == {"127.0.0.1"}, f"requests to other hosts: {sorted(hosts - {'127.0.0.1'})}"
