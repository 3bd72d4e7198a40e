"""The built documentation, opened in headless Chromium: every image loads, no local link is
broken, and the main pages fit a narrow screen.

Marked ``docs``: excluded from the default run, run after the build (as ``.ci/run`` does):

    python -m sphinx -W -n --keep-going -b html docs docs/_build/html
    python -m pytest -q -m docs tests/test_docs.py

``LVM_PYRO_DOCS_HTML`` points at another build folder; ``LVM_PYRO_SCREENSHOTS=DIR`` keeps
screenshots of the main pages at desktop and phone widths in DIR (for a person to look at).
Chromium is Debian's (``apt-get install chromium chromium-driver``); nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("LVM_PYRO_DOCS_HTML", ROOT / "docs" / "_build" / "html")).resolve()
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
MAIN_PAGES = [
    "index.html",
    "getting_started.html",
    "guide/own_model.html",
    "tutorials/index.html",
    "tutorials/01_gmm_em.html",
    "tutorials/03_vae_digits.html",
    "api/index.html",
    "benchmarks/index.html",
]
DESKTOP, PHONE = (1280, 900), (412, 900)

IMAGES_JS = """
return Array.from(document.images).map(img => [img.currentSrc || img.src, img.complete, img.naturalWidth]);
"""
LINKS_JS = """
const urls = [];
document.querySelectorAll('a[href]').forEach(a => urls.push(a.href));
document.querySelectorAll('link[rel=stylesheet][href]').forEach(l => urls.push(l.href));
document.querySelectorAll('script[src]').forEach(s => urls.push(s.src));
return urls;
"""


def _pages() -> list[Path]:
    return sorted(HTML.rglob("*.html"))


@pytest.fixture(scope="module")
def browser():
    if not (HTML / "index.html").is_file():
        pytest.fail(
            f"no built documentation in {HTML}: build it first with "
            "python -m sphinx -W -n --keep-going -b html docs docs/_build/html"
        )
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("headless Chromium is missing: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _open(driver, page: Path) -> None:
    driver.get(page.as_uri())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if driver.execute_script("return document.readyState") == "complete" and all(
            done for _, done, _ in driver.execute_script(IMAGES_JS)
        ):
            return
        time.sleep(0.1)


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("id", "name") and value:
                self.ids.add(value)


_ID_CACHE: dict[Path, set[str]] = {}


def _ids(page: Path) -> set[str]:
    if page not in _ID_CACHE:
        parser = _Ids()
        parser.feed(page.read_text(errors="replace"))
        _ID_CACHE[page] = parser.ids
    return _ID_CACHE[page]


def test_the_site_has_the_expected_pages():
    pages = {p.relative_to(HTML).as_posix() for p in _pages()}
    assert set(MAIN_PAGES) <= pages, sorted(set(MAIN_PAGES) - pages)
    tutorials = sorted(p.stem for p in (ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
    assert {f"tutorials/{t}.html" for t in tutorials} <= pages, "every tutorial has its page"
    results = sorted(p.stem for p in (ROOT / "benchmarks" / "results").glob("*.md"))
    assert {f"benchmarks/results_{r}.html" for r in results} <= pages, "every benchmark table has its page"


def test_every_image_loads_and_no_local_link_is_broken(browser):
    broken_images, broken_links, images_seen = [], [], 0
    for page in _pages():
        _open(browser, page)
        name = page.relative_to(HTML).as_posix()
        for src, done, width in browser.execute_script(IMAGES_JS):
            images_seen += 1
            if not (done and width > 0):
                broken_images.append(f"{name}: {src}")
        for url in browser.execute_script(LINKS_JS):
            parts = urlsplit(url)
            if parts.scheme != "file":
                continue
            target = Path(unquote(parts.path))
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken_links.append(f"{name}: {url}")
            elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in _ids(target):
                broken_links.append(f"{name}: {url} (no such anchor)")
    assert not broken_images, "images that do not load:\n" + "\n".join(broken_images)
    assert not broken_links, "broken local links:\n" + "\n".join(sorted(set(broken_links)))
    assert images_seen >= len(list((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))), "the tutorials' figures"


@pytest.mark.parametrize("page", [p for p in MAIN_PAGES if p.startswith("tutorials/0")])
def test_a_tutorial_page_shows_its_code_output_and_figures(browser, page):
    _open(browser, HTML / page)
    counts = browser.execute_script("""
        return [document.querySelectorAll('div.cell_input, div.cell .highlight').length,
                document.querySelectorAll('div.cell_output img').length,
                Array.from(document.querySelectorAll('div.cell_output'))
                     .some(out => out.innerText.includes('Key numbers'))];
    """)
    code, figures, numbers = counts
    assert code >= 3 and figures >= 1 and numbers, (page, counts)


@pytest.mark.parametrize("width, height", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_main_pages_fit_the_screen(browser, width, height):
    browser.set_window_size(width, height)
    keep = os.environ.get("LVM_PYRO_SCREENSHOTS")
    overflowing = []
    try:
        for page in MAIN_PAGES:
            _open(browser, HTML / page)
            inner, scroll = browser.execute_script(
                "return [window.innerWidth, document.documentElement.scrollWidth];"
            )
            if scroll > inner + 1:
                overflowing.append(f"{page}: content {scroll}px wide in a {inner}px window")
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                shot = Path(keep) / f"{page.replace('/', '_').removesuffix('.html')}_{width}.png"
                browser.save_screenshot(str(shot))
    finally:
        browser.set_window_size(*DESKTOP)
    assert not overflowing, "pages wider than the screen:\n" + "\n".join(overflowing)
