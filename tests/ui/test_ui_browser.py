"""GET /ui in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium).

`service serve` runs as a subprocess on a free loopback port over the tiny published artifact,
with SERVICE_IMAGE_ROOT at the tiny sample folder so the photos load. The browser types a query,
sees results with their photos (loaded: naturalWidth > 0), price and category, the request id and
took_ms; turns to page 2 and back; follows more like this; applies a category filter; and sees an
API error body. It also searches by photo: uploads a listing's primary photo through the page's
file control (POST /search/image) and finds that listing first, pages, filters, and sees the 422
of a file that is not a photo. Selenium is told the driver's path, so Selenium Manager never downloads anything;
the browser test skips (with the reason) where chromium or chromedriver is not installed.

UI_SCREENSHOT=docs/img/ui.png writes the README's screenshot (a results page, 1200x800).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import Server, serve

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
K = 10  # results per page in the browser test
WAIT_S = 30.0


@pytest.fixture(scope="module")
def server(tiny_build, tiny_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"SERVICE_IMAGE_ROOT": str(tiny_sample), "SERVICE_RELOAD_POLL_S": "0", "SERVICE_WARMUP_QUERIES": "1",
           "SERVICE_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    with serve(tiny_build.path.parent.parent, tmp_path_factory.mktemp("ui") / "serve.log", env) as s:
        yield s


def browser_missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            return f"{path} not found: apt-get install -y {package} (.ci/run does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -c constraints.txt -e '.[dev]'"
    return None


@pytest.fixture(scope="module")
def driver() -> Iterator:
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,800", "--no-proxy-server", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--hide-scrollbars"):
        options.add_argument(arg)
    # an explicit driver path: Selenium Manager is never run (it would try to download one)
    d = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        # the page's viewport itself 1200x800 (the window's size would include the browser's frame)
        d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                          {"width": 1200, "height": 800, "deviceScaleFactor": 1, "mobile": False})
        yield d
    finally:
        d.quit()


# ------------------------------------------------------------------------------ page helpers

def text(d, css: str) -> str:
    from selenium.webdriver.common.by import By

    return d.find_element(By.CSS_SELECTOR, css).text


def until(d, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(d, WAIT_S, poll_frequency=0.05).until(lambda _: condition(), message=what)


def answered(d, action) -> None:
    """Do `action` and wait for the page's next answer (a new request id, or an error shown)."""
    before = d.execute_script("const e = document.getElementById('request-id'); return e ? e.textContent : null;")
    action()
    until(d, lambda: d.execute_script(
        "const e = document.getElementById('request-id');"
        "const err = document.getElementById('error');"
        "return !document.body.classList.contains('busy') && (!err.hidden || (e && e.textContent !== arguments[0]));",
        before), "an answer from the API")


def hits(d) -> list[dict]:
    return d.execute_script("""
        return [...document.querySelectorAll('#results li.hit')].map(li => ({
            id: li.dataset.id,
            title: li.querySelector('.title').textContent,
            price: li.querySelector('.price').textContent,
            category: li.querySelector('.category').textContent,
        }));""")


def photos_loaded(d) -> bool:
    """Every result has a photo, and each has finished loading with real pixels."""
    return d.execute_script("""
        const items = [...document.querySelectorAll('#results li.hit')];
        const imgs = [...document.querySelectorAll('#results li.hit img')];
        return items.length > 0 && items.every(li => li.querySelector('img.photo'))
            && imgs.every(i => i.complete && i.naturalWidth > 0);""")


def fill(d, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    el = d.find_element(By.ID, element_id)
    el.clear()
    el.send_keys(value)


def click(d, element_id: str) -> None:
    from selenium.webdriver.common.by import By

    d.find_element(By.ID, element_id).click()


def select(d, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(d.find_element(By.ID, element_id)).select_by_value(value)


def shown(d, element_id: str) -> bool:
    from selenium.webdriver.common.by import By

    return d.find_element(By.ID, element_id).is_displayed()


def save_small_png(d, path: Path) -> None:
    """The screenshot as a 256-colour PNG (a few tens of kB for the README)."""
    import io

    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(io.BytesIO(d.get_screenshot_as_png())) as im:
        im.convert("RGB").quantize(colors=256).save(path, optimize=True)


# ------------------------------------------------------------------------------ the tests

def test_the_page_and_its_files_ship_as_package_data() -> None:
    from service.api.ui import ASSETS, PAGE, ui_file

    for name in (PAGE, *ASSETS):
        assert ui_file(name).is_file(), f"service/api/static/ui/{name} is not in the installed package"
    page = ui_file(PAGE).read_text()
    for name in ASSETS:
        assert f"/ui/static/{name}" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere


def test_ui_routes_serve_fixed_files_outside_the_schema(server: Server) -> None:
    r = httpx.get(server.url + "/ui")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert httpx.get(server.url + "/ui/static/ui.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(server.url + "/ui/static/ui.css").headers["content-type"].startswith("text/css")
    for path in ("/ui/static/index.html", "/ui/static/..%2f..%2fui.py", "/ui/static/nope.js"):
        r = httpx.get(server.url + path)
        assert r.status_code == 404 and r.json()["error"] == "NotFound", path
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/ui")]


def test_search_pages_more_like_this_and_filters_in_a_browser(driver, server: Server, tmp_path: Path) -> None:
    d = driver  # first: without a browser the test skips before the server starts
    d.get(server.url + "/ui")
    until(d, lambda: "listings" in text(d, "#served"), "the page to read /readyz")
    assert not shown(d, "answer")

    # fusion controls only while hybrid, and only the chosen fusion's
    select(d, "mode", "dense")
    assert not shown(d, "fusion") and not shown(d, "dense-weight") and not shown(d, "rrf-k")
    select(d, "mode", "hybrid")
    select(d, "fusion", "weighted")
    assert shown(d, "fusion") and shown(d, "dense-weight") and not shown(d, "rrf-k")
    select(d, "fusion", "rrf")
    assert shown(d, "rrf-k") and not shown(d, "dense-weight")
    select(d, "fusion", "")
    select(d, "mode", "")

    # a search: results with loaded photos, price, category, the request id and took_ms
    fill(d, "q", "ceramic mug")
    fill(d, "k", str(K))
    answered(d, lambda: click(d, "search-btn"))
    assert not shown(d, "error"), text(d, "#error")
    page1 = hits(d)
    assert len(page1) == K
    until(d, lambda: photos_loaded(d), "every result's photos loaded")
    for h in page1:
        assert re.fullmatch(r"\d+\.\d\d", h["price"]), h
        assert h["category"] and h["category"] != "no category", h
    # explain: the first hit's panel names the fused score, both lists and its views
    first = d.find_element("css selector", "li.hit details.explain")
    first.find_element("tag name", "summary").click()
    until(d, lambda: first.get_attribute("open") is not None, "the explain panel to open")
    assert "fused score" in first.text and "dense cosine" in first.text and "BM25" in first.text
    views = [r.text for r in first.find_elements("css selector", "tr.view")]
    assert views and any(v.startswith("title") for v in views), views
    request_id = text(d, "#request-id")
    assert request_id and request_id != "none"
    assert float(text(d, "#took-ms")) >= 0
    shot = os.environ.get("UI_SCREENSHOT")
    d.save_screenshot(str(tmp_path / "ui.png"))
    if shot:
        save_small_png(d, Path(shot))

    # pages: next is the following K, previous comes back to the same page
    assert not d.find_element("id", "prev").is_enabled()
    answered(d, lambda: click(d, "next"))
    page2 = hits(d)
    assert page2 and not {h["id"] for h in page1} & {h["id"] for h in page2}
    assert text(d, "#page").startswith(f"results {K + 1}")
    until(d, lambda: photos_loaded(d), "page 2's photos loaded")
    answered(d, lambda: click(d, "prev"))
    assert [h["id"] for h in hits(d)] == [h["id"] for h in page1]

    # more like this: the listing's neighbours, never the listing itself
    first = page1[0]
    answered(d, lambda: d.find_element("css selector", "#results li.hit .more-like-this").click())
    assert not shown(d, "error"), text(d, "#error")
    assert first["title"] in text(d, "#heading") and shown(d, "back")
    similar = hits(d)
    assert similar and first["id"] not in {h["id"] for h in similar}
    until(d, lambda: photos_loaded(d), "similar listings' photos loaded")
    answered(d, lambda: click(d, "back"))
    assert [h["id"] for h in hits(d)] == [h["id"] for h in page1]

    # a category filter: every result is in that category
    category = first["category"]
    fill(d, "category", category)
    answered(d, lambda: click(d, "search-btn"))
    filtered = hits(d)
    assert filtered and all(h["category"] == category for h in filtered), filtered
    answered(d, lambda: d.find_element("css selector", "#results li.hit .more-like-this").click())
    assert all(h["category"] == category for h in hits(d))  # more like this keeps the filters

    # the API's error body is shown as it came
    fill(d, "category", "")
    fill(d, "k", "100000")
    answered(d, lambda: click(d, "search-btn"))
    assert shown(d, "error")
    assert text(d, "#error .error-code") == "422 InvalidRequest"
    assert "k: 100000 is outside" in text(d, "#error .error-message")
    fill(d, "k", str(K))
    fill(d, "attributes", "color")
    click(d, "search-btn")
    until(d, lambda: shown(d, "error") and "not KEY=value" in text(d, "#error"), "the form's own error")


def test_search_by_photo_in_a_browser(driver, server: Server, tiny_sample: Path, tmp_path: Path) -> None:
    import json

    d = driver
    rows = {r["id"]: r for r in map(json.loads, (tiny_sample / "catalog.jsonl").read_text().splitlines())}
    listing = rows["L000004"]  # its primary photo finds it first through the primary head (tests/service)
    d.get(server.url + "/ui")
    until(d, lambda: "listings" in text(d, "#served"), "the page to read /readyz")
    assert not d.find_element("id", "photo-btn").is_enabled()  # nothing chosen yet
    d.find_element("id", "photo").send_keys(str(tiny_sample / listing["images"][0]))  # the file chooser
    select(d, "photo-head", "primary")
    fill(d, "k", str(K))
    answered(d, lambda: click(d, "photo-btn"))
    assert not shown(d, "error"), text(d, "#error")
    assert text(d, "#heading") == "Listings like your photo"
    found = hits(d)
    assert len(found) == K and found[0]["id"] == "L000004", found
    assert text(d, "#mode-used") == "dense" and text(d, "#photo-head-used") == "primary"
    until(d, lambda: photos_loaded(d), "every result's photos loaded")
    until(d, lambda: d.execute_script("const i = document.getElementById('query-photo');"
                                      "return !i.hidden && i.complete && i.naturalWidth > 0;"), "the photo shown")
    assert d.find_elements("css selector", "li.hit details.explain")  # Why here? on photo results too
    # pages continue the photo's ranking
    answered(d, lambda: click(d, "next"))
    page2 = hits(d)
    assert page2 and not {h["id"] for h in found} & {h["id"] for h in page2}
    answered(d, lambda: click(d, "prev"))
    assert [h["id"] for h in hits(d)] == [h["id"] for h in found]
    # more like this from a photo result, and back to the photo's results
    answered(d, lambda: d.find_element("css selector", "#results li.hit .more-like-this").click())
    assert "L000004" not in {h["id"] for h in hits(d)}
    answered(d, lambda: click(d, "back"))
    assert text(d, "#heading") == "Listings like your photo" and [h["id"] for h in hits(d)] == [h["id"] for h in found]
    # the form's category filter applies to the photo search
    fill(d, "category", listing["category"])
    answered(d, lambda: click(d, "photo-btn"))
    filtered = hits(d)
    assert filtered and filtered[0]["id"] == "L000004" and all(h["category"] == listing["category"] for h in filtered)
    # a file that is not a photo: the API's 422 as it came
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"these are not pixels")
    d.find_element("id", "photo").send_keys(str(bad))
    answered(d, lambda: click(d, "photo-btn"))
    assert shown(d, "error") and text(d, "#error .error-code") == "422 InvalidRequest"
    assert "not an image" in text(d, "#error .error-message")
