"""Open visualizations in headless Chromium and report what a user's browser would see.

Drives Debian's chromium through Selenium (python3-selenium) and its chromedriver
(chromium-driver). What each check reads:

* console errors (console.error, failed console.assert), uncaught exceptions and
  unhandled promise rejections, and resources that failed to load: the browser log
  (the 'goog:loggingPrefs' capability), every entry at level SEVERE;
* alert / confirm / prompt dialogs, from the page or any of its frames: an open
  dialog makes the next command raise UnexpectedAlertPresentException; its message
  is recorded, it is accepted as a user clicking OK would, and the command runs
  again. (Left to chromedriver, 'accept and notify' reported a frame's dialog twice.)
* broken images: every <img> whose naturalWidth is 0 once the page has loaded;
* screenshots: the whole page, beyond the window, through the DevTools protocol.

    with Browser(tmp_dir) as browser:
        page = browser.open(path_to_index_html, screenshot=tmp_dir / "page.png")
        assert not page.errors and not page.broken_images
"""
import base64
import importlib.util
import os
import pathlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Headless, sandbox-free (containers), and silent on the network: the tests must
# pass offline and not wait on background services.
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
                  "--window-size=1366,900"]
PAGE_TIMEOUT = 30
# Console messages a page writes just after its load event are still collected.
SETTLE_SECONDS = 0.3

IMAGES_JS = """return Array.from(document.images).map(
    image => ({src: image.getAttribute('src'), naturalWidth: image.naturalWidth}));"""


def chromium_available():
    return os.access(CHROMIUM, os.X_OK)


@dataclass
class Page:
    url: str
    errors: list = field(default_factory=list)     # console errors, exceptions, failed loads
    dialogs: list = field(default_factory=list)    # alert/confirm/prompt messages
    images: list = field(default_factory=list)     # [{'src', 'naturalWidth'}]
    text: str = ""                                 # document.body.innerText
    scripts: list = field(default_factory=list)    # text of every inline <script>

    @property
    def broken_images(self):
        return [image["src"] for image in self.images if image["naturalWidth"] <= 0]


class Browser:
    def __init__(self, work_dir=None):
        webdriver, service, self._dialog_open = _selenium()
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=work_dir)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={self._profile}"]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        options.set_capability("unhandledPromptBehavior", "ignore")   # see _script
        try:
            self._driver = webdriver.Chrome(service=service.Service(CHROMEDRIVER),
                                            options=options)
        except BaseException:
            shutil.rmtree(self._profile, ignore_errors=True)
            raise
        self._driver.set_page_load_timeout(PAGE_TIMEOUT)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if getattr(self, "_driver", None) is not None:
            self._driver.quit()
            self._driver = None
        shutil.rmtree(self._profile, ignore_errors=True)

    def open(self, path, screenshot=None) -> Page:
        """Load a local HTML file, wait for it (and its images) to load, and report."""
        url = pathlib.Path(path).resolve().as_uri()
        page = Page(url)
        self._driver.get_log("browser")         # drop what earlier pages logged
        try:
            self._driver.get(url)
        except self._dialog_open:   # not run again: the page would load twice
            pass                    # the dialog stays open for the next command to record
        self._wait_for_load(page)
        page.images = self._script(page, IMAGES_JS)
        page.text = self._script(page, "return document.body.innerText;")
        page.scripts = self._script(page,
                                    "return Array.from(document.scripts, s => s.textContent);")
        time.sleep(SETTLE_SECONDS)
        self._script(page, "return 0;")     # get_log passes an open dialog by: surface it
        page.errors = [f"{entry['source']}: {entry['message']}"
                       for entry in self._driver.get_log("browser")
                       if entry["level"] == "SEVERE"]
        if screenshot is not None:
            self._screenshot(screenshot)
        return page

    def _wait_for_load(self, page):
        # A dialog interrupts the navigation command: the page finishes loading after.
        deadline = time.monotonic() + PAGE_TIMEOUT
        while self._script(page, "return document.readyState;") != "complete":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{page.url}: not loaded within {PAGE_TIMEOUT} s.")
            time.sleep(0.05)

    def _script(self, page, script, max_dialogs=20):
        """Run `script` in the page; a dialog in the way is recorded and accepted, then
        the script runs again."""
        for _ in range(max_dialogs):
            try:
                return self._driver.execute_script(script)
            except self._dialog_open:
                dialog = self._driver.switch_to.alert
                page.dialogs.append(dialog.text)
                dialog.accept()
        raise RuntimeError(f"{page.url} keeps opening dialogs: {page.dialogs[-3:]}")

    def _screenshot(self, path):
        size = self._driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self._driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "clip": clip, "captureBeyondViewport": True})["data"]
        pathlib.Path(path).write_bytes(base64.b64decode(data))


def _selenium():
    """selenium.webdriver, its Chrome service module and the exception of a command
    that met an open dialog; or an error that says what to install."""
    missing = [what for what, present in [
        ("python3-selenium", importlib.util.find_spec("selenium") is not None),
        (f"chromium-driver ({CHROMEDRIVER})", os.access(CHROMEDRIVER, os.X_OK))] if not present]
    if missing:
        raise RuntimeError(f"The browser tests need {' and '.join(missing)}: run `make setup` "
                           "(or apt-get install python3-selenium chromium-driver).")
    from selenium import webdriver
    from selenium.common.exceptions import UnexpectedAlertPresentException
    from selenium.webdriver.chrome import service
    return webdriver, service, UnexpectedAlertPresentException
