"""The demo page at `GET /` in a real headless Chromium, against a real uvicorn serving the tiny artifact.

Needs Debian's browser and driver (`apt-get update && apt-get install -y chromium chromium-driver`);
without them the test fails and says so, it is never skipped. Selenium is pointed at both binaries,
so Selenium Manager never downloads a browser.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import scene_with_scored_boxes
from tests.handler.http.live_server import live_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_HINT = "apt-get update && apt-get install -y chromium chromium-driver"
WAIT_S = 120


@pytest.fixture(scope="module")
def browser() -> Iterator:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(f"the browser test needs {', '.join(missing)}; install them with: {INSTALL_HINT}")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, read by _console_errors
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_for(driver, condition, what: str, seconds: float = WAIT_S) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, seconds).until(condition, message=f"page never showed {what}")


def _console_errors(driver) -> list[str]:
    """The console's errors since the last call, less the ones Chromium logs for every answer that is
    not a 2xx from `analyze`: the tests provoke those on purpose, and the page shows them itself."""
    provoked = re.compile(
        r"/analyze\?tasks=\S+ - Failed to load resource: the server responded with a status of [45]\d\d"
    )
    entries = driver.get_log("browser")
    return [e["message"] for e in entries if e["level"] == "SEVERE" and not provoked.search(e["message"])]


def _visible_boxes(driver) -> list:
    from selenium.webdriver.common.by import By

    return [box for box in driver.find_elements(By.CSS_SELECTOR, "#stage .box") if box.is_displayed()]


def test_demo_page_shows_caption_scored_boxes_and_the_slider_hides_weak_ones(
    browser, tiny_artifact: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    started = time.perf_counter()
    with live_server(tiny_artifact) as server:
        png, answer = scene_with_scored_boxes(
            lambda body: httpx.post(
                f"{server}/analyze", content=body, headers={"content-type": "image/png"}, timeout=120
            ).json()
        )
        scene = tmp_path / "scene.png"
        scene.write_bytes(png)
        browser.get(server + "/")
        assert "Florence-2" in browser.title
        browser.find_element(By.ID, "file").send_keys(str(scene))
        _wait_for(browser, lambda d: d.find_element(By.ID, "caption").text, "a caption")

        assert browser.find_element(By.ID, "caption").text == answer["caption"]
        assert browser.find_element(By.ID, "sha").text == answer["model_sha"]
        assert "total" in browser.find_element(By.ID, "timings").text
        boxes = _visible_boxes(browser)
        assert [box.get_attribute("data-label") for box in boxes] == [d["label"] for d in answer["detections"]]
        assert [box.text for box in boxes] == [f"{d['label']} {d['score']:.2f}" for d in answer["detections"]]
        # Each box sits where the API put it: its left edge, scaled from image pixels to the shown photo.
        photo = browser.find_element(By.ID, "photo")
        scale = photo.size["width"] / answer["image"]["width"]
        for box, det in zip(boxes, answer["detections"], strict=True):
            shown_left = box.location["x"] - photo.location["x"]
            assert abs(shown_left - det["box"][0] * scale) <= 2
        browser.save_screenshot(str(tmp_path / "demo-all-boxes.png"))

        # Arrow keys move the slider by 0.01; stop just above the weakest box's score.
        scores = sorted(d["score"] for d in answer["detections"])
        steps = math.floor(scores[0] * 100) + 1
        slider = browser.find_element(By.ID, "slider")
        slider.click()
        slider.send_keys(Keys.HOME, *([Keys.ARROW_RIGHT] * steps))
        floor = float(slider.get_attribute("value"))
        assert scores[0] < floor <= scores[-1]
        kept = [d["label"] for d in answer["detections"] if d["score"] >= floor]
        remaining = _visible_boxes(browser)
        assert 0 < len(remaining) < len(answer["detections"])
        assert [box.get_attribute("data-label") for box in remaining] == kept
        assert browser.find_element(By.ID, "shown").text == f"{len(kept)} of {len(answer['detections'])} boxes shown"
        screenshot = tmp_path / "demo.png"
        browser.save_screenshot(str(screenshot))
        slider.send_keys(Keys.END)
        assert _visible_boxes(browser) == []

        not_an_image = tmp_path / "notes.png"
        not_an_image.write_bytes(b"these bytes are not a picture")
        browser.find_element(By.ID, "file").send_keys(str(not_an_image))
        _wait_for(browser, lambda d: d.find_element(By.ID, "error").text, "an error message")
        assert browser.find_element(By.ID, "error").text.startswith("Not an image we can read")
        assert _visible_boxes(browser) == [] and browser.find_element(By.ID, "caption").text == ""

        assert _console_errors(browser) == []

    assert Image.open(screenshot).format == "PNG"
    print(f"browser test: {time.perf_counter() - started:.1f} s, screenshot {screenshot}")


def test_demo_page_calls_the_api_relative_to_an_api_gateway_stage(browser, tmp_path: Path) -> None:
    """Under a stage the page is /v1/ or /v1; either way its calls must go to /v1/analyze, not /analyze."""
    with live_server(tmp_path / "no-artifact-needed") as server:
        browser.get(server + "/")
        resolved = {}
        for page_path in ("/", "/v1/", "/v1", "/prod/v2/"):
            resolved[page_path] = browser.execute_script(
                "history.replaceState(null, '', arguments[0]);"
                "return new URL(apiUrl('analyze'), window.location.href).pathname;",
                page_path,
            )
    assert resolved == {"/": "/analyze", "/v1/": "/v1/analyze", "/v1": "/v1/analyze", "/prod/v2/": "/prod/v2/analyze"}


def test_demo_page_says_when_the_model_is_unavailable(browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with live_server(tmp_path / "no-artifact-here") as server:
        browser.get(server + "/")
        image = tmp_path / "photo.png"
        Image.new("RGB", (64, 48), "white").save(image)
        browser.find_element(By.ID, "file").send_keys(str(image))
        _wait_for(browser, lambda d: d.find_element(By.ID, "error").text, "an error message")
        assert browser.find_element(By.ID, "error").text.startswith("Model unavailable")
        assert _console_errors(browser) == []


def test_demo_page_loads_without_console_errors(browser, tmp_path: Path) -> None:
    """Chromium asks for /favicon.ico, a 404 here: that was a console error on every page load."""
    with live_server(tmp_path / "no-artifact-needed") as server:
        browser.get_log("browser")  # what earlier tests left
        browser.get(server + "/")
        browser.find_element("id", "drop")
        time.sleep(0.5)  # the favicon request follows the load
        assert _console_errors(browser) == []


_FETCH = """
const [url, headers, body, done] = arguments;
fetch(url, {method: "POST", headers, body: new Uint8Array(body)})
  .then(async (r) => done({
    status: r.status,
    body: r.headers.get("content-type") === "application/json" ? await r.json() : null,
    detections: r.headers.get("x-detections"),
  }))
  .catch((e) => done({failed: String(e)}));
"""


def test_a_page_on_another_origin_reads_answers_and_errors_only_when_allowed(
    browser, tiny_artifact: Path, png_bytes: bytes
) -> None:
    """Chromium's own CORS checks: a preflighted POST (x-api-key) from the allowed origin reads a 200
    and a 400's error body; the same page under another origin (localhost, not 127.0.0.1) cannot."""
    with live_server(tiny_artifact) as page:
        port = page.rsplit(":", 1)[1]
        with live_server(tiny_artifact, {"CORS_ALLOW_ORIGINS": page}) as api:
            browser.set_script_timeout(WAIT_S)
            browser.get(page + "/")
            headers = {"content-type": "image/png", "x-api-key": "k"}
            ok = browser.execute_async_script(_FETCH, f"{api}/caption", headers, list(png_bytes))
            assert ok["status"] == 200 and ok["body"]["caption"], ok
            drawn = browser.execute_async_script(_FETCH, f"{api}/detect?format=png", headers, list(png_bytes))
            assert drawn["status"] == 200 and drawn["detections"].isdigit(), drawn  # an exposed header
            bad = browser.execute_async_script(_FETCH, f"{api}/caption", headers, list(b"not an image"))
            assert bad["status"] == 400 and bad["body"]["error"]["code"] == "bad_image", bad  # the body is readable
            browser.get(f"http://localhost:{port}/")
            assert "Florence-2" in browser.title  # the same page, served to another origin
            refused = browser.execute_async_script(_FETCH, f"{api}/caption", headers, list(png_bytes))
            assert "failed" in refused, refused


_DELAY_FIRST_ANSWER = """
// The network, slowed for the first call only: its answer reaches the page 2 s late.
const realFetch = window.fetch;
let calls = 0;
window.lateAnswerArrived = false;
window.fetch = async (...args) => {
  const first = calls++ === 0;
  try {
    return await realFetch(...args);
  } finally {  // answered or failed (a page may abort it), late all the same
    if (first) {
      await new Promise((resolve) => setTimeout(resolve, 2000));
      window.lateAnswerArrived = true;
    }
  }
};
"""


def test_a_slow_answer_to_an_older_upload_never_replaces_the_newer_one(
    browser, tiny_artifact: Path, tmp_path: Path
) -> None:
    """Pick a photo, then at once a file that is not an image: the photo's answer, arriving last,
    used to put its caption and boxes under the second file's name and error."""
    from selenium.webdriver.common.by import By

    with live_server(tiny_artifact) as server:
        browser.get_log("browser")  # what earlier tests left
        browser.get(server + "/")
        browser.execute_script(_DELAY_FIRST_ANSWER)
        photo, not_an_image = tmp_path / "photo.png", tmp_path / "second.png"
        Image.new("RGB", (64, 48), "red").save(photo)
        not_an_image.write_bytes(b"these bytes are not a picture")
        browser.find_element(By.ID, "file").send_keys(str(photo))
        browser.find_element(By.ID, "file").send_keys(str(not_an_image))
        _wait_for(browser, lambda d: d.execute_script("return window.lateAnswerArrived"), "the late answer")
        time.sleep(0.5)  # the page handles it
        assert browser.find_element(By.ID, "error").text.startswith("Not an image we can read")
        assert browser.find_element(By.ID, "caption").text == ""
        assert browser.find_elements(By.CSS_SELECTOR, "#stage .box") == []
        assert browser.find_element(By.ID, "sha").text == "-"
        assert browser.find_element(By.ID, "photo").get_attribute("alt") == "second.png"
        assert _console_errors(browser) == []


_ANSWER_WITH = """
// The network answers `analyze` with this JSON: labels come from fine-tuned data, so any text can be one.
const answer = arguments[0];
window.fetch = async () => new Response(JSON.stringify(answer), {headers: {"content-type": "application/json"}});
"""


def _show_answer(browser, server: str, tmp_path: Path, answer: dict) -> None:
    """Open the page with the network answering `answer`, pick a white image of the answer's size, and
    wait for its caption."""
    from selenium.webdriver.common.by import By

    browser.get_log("browser")
    browser.get(server + "/")
    browser.execute_script(_ANSWER_WITH, answer)
    image = tmp_path / "photo.png"
    Image.new("RGB", (answer["image"]["width"], answer["image"]["height"]), "white").save(image)
    browser.find_element(By.ID, "file").send_keys(str(image))
    _wait_for(browser, lambda d: d.find_element(By.ID, "caption").text, "a caption")


def test_hostile_labels_long_text_and_many_boxes_render_as_text_inside_the_page(browser, tmp_path: Path) -> None:
    """Labels `constructor` and `__proto__` got no colour (`det.label in {}` is true for them, so their
    border was set to a function's text); a 3,000-character caption made the page 35,603 px wide."""
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    labels = ["<img src=x onerror=alert(1)>", "constructor", "__proto__", "toString", "w" * 300, "cat"]
    detections = [
        {"label": labels[i % len(labels)], "box": [i % 10 * 60, i // 10 * 45, i % 10 * 60 + 50, i // 10 * 45 + 40],
         "score": round(i / 100, 4)}
        for i in range(100)
    ]  # fmt: skip
    answer = {
        "model_sha": "0123456789ab",
        "image": {"width": 600, "height": 450, "format": "PNG", "bytes": 1},
        "timings_ms": {"decode": 1.0, "total": 2.0},
        "caption": "<b>bold</b>" + "x" * 3000,
        "caption_score": 0.5,
        "detections": detections,
    }
    with live_server(tmp_path / "no-artifact-needed") as server:
        _show_answer(browser, server, tmp_path, answer)

        assert browser.find_element(By.ID, "caption").get_attribute("textContent") == answer["caption"]
        boxes = browser.find_elements(By.CSS_SELECTOR, "#stage .box")
        assert [box.get_attribute("textContent") for box in boxes] == [
            f"{d['label']} {d['score']:.2f}" for d in detections
        ]
        assert browser.find_elements(By.CSS_SELECTOR, "img") == [browser.find_element(By.ID, "photo")]
        assert browser.find_elements(By.CSS_SELECTOR, "b") == []
        borders = browser.execute_script(
            "return Array.from(document.querySelectorAll('#stage .box'), (box) => box.style.borderColor)"
        )
        assert all(borders) and len(set(borders)) == len(labels), sorted(set(borders))
        assert browser.find_element(By.ID, "shown").text == "100 of 100 boxes shown"
        width, viewport = browser.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert width <= viewport, f"the page is {width} px wide in a {viewport} px window"
        try:
            alert = browser.switch_to.alert.text
        except NoAlertPresentException:
            alert = None
        assert alert is None
        assert _console_errors(browser) == []


_COUNT_CALLS = """
const realFetch = window.fetch;
window.apiCalls = 0;
window.fetch = (...args) => { window.apiCalls += 1; return realFetch(...args); };
"""


def test_a_file_over_the_byte_limit_is_refused_before_it_is_uploaded(browser, tmp_path: Path) -> None:
    """A file over MAX_IMAGE_BYTES was uploaded whole (minutes for a phone's video on a slow link) only to
    get the 413; through API Gateway, past 6 MB, the answer is API Gateway's own and not ours."""
    from selenium.webdriver.common.by import By

    with live_server(tmp_path / "no-artifact-needed", {"MAX_IMAGE_BYTES": "1000"}) as server:
        browser.get_log("browser")
        browser.get(server + "/")
        browser.execute_script(_COUNT_CALLS)
        image = tmp_path / "big photo.bmp"
        Image.new("RGB", (40, 40), "white").save(image)  # 4,854 bytes
        browser.find_element(By.ID, "file").send_keys(str(image))
        _wait_for(browser, lambda d: d.find_element(By.ID, "error").text, "an error message")
        assert browser.find_element(By.ID, "error").text == (
            "Too large: big photo.bmp is 4,854 bytes; this service takes images of at most 1,000 bytes."
        )
        assert browser.execute_script("return window.apiCalls") == 0
        assert _console_errors(browser) == []


_RECORD_PICKER = """
// Opening the OS file chooser would block a headless browser: record that the page asked for it.
window.pickerOpened = 0;
HTMLInputElement.prototype.click = function () { if (this.type === "file") window.pickerOpened += 1; };
document.body.style.minHeight = "3000px";  // a page that can scroll, as on a phone
"""


def test_the_file_picker_is_reached_and_opened_with_the_keyboard_alone(browser, tmp_path: Path) -> None:
    """Tab reaches the drop zone, with a focus ring, and Enter or Space opens the picker. The zone was a
    `generic` element to a screen reader (no role), and Space, besides opening the picker, scrolled the
    page by a screenful (662 px here)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    with live_server(tmp_path / "no-artifact-needed") as server:
        browser.get_log("browser")
        browser.get(server + "/")
        browser.execute_script(_RECORD_PICKER)
        ActionChains(browser).send_keys(Keys.TAB).perform()
        drop = browser.find_element(By.ID, "drop")
        assert browser.switch_to.active_element == drop
        assert drop.aria_role == "button" and "choose" in drop.accessible_name.lower(), (
            drop.aria_role,
            drop.accessible_name,
        )
        assert drop.value_of_css_property("outline-style") not in ("none", ""), "no focus ring"
        ActionChains(browser).send_keys(Keys.ENTER).perform()
        ActionChains(browser).send_keys(Keys.SPACE).perform()
        assert browser.execute_script("return window.pickerOpened") == 2
        time.sleep(0.6)  # Chromium scrolls smoothly: a Space that scrolls has moved the page by now
        assert browser.execute_script("return window.scrollY") == 0, "Space scrolled the page as well"
        assert _console_errors(browser) == []


def test_an_answer_without_boxes_says_so_and_the_slider_still_works(browser, tmp_path: Path) -> None:
    """With no boxes the line beside the slider was empty, the same as before any answer, so a page with
    a caption and no boxes did not say whether detection found nothing."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    answer = {
        "model_sha": "0123456789ab",
        "image": {"width": 64, "height": 48, "format": "PNG", "bytes": 1},
        "timings_ms": {"decode": 1.0, "total": 2.0},
        "caption": "a white square",
        "caption_score": 0.9,
        "detections": [],
    }
    with live_server(tmp_path / "no-artifact-needed") as server:
        _show_answer(browser, server, tmp_path, answer)
        assert browser.find_element(By.ID, "shown").text == "no boxes found"
        slider = browser.find_element(By.ID, "slider")
        slider.click()
        slider.send_keys(Keys.END)
        assert browser.find_element(By.ID, "slider-value").text == "1.00"
        assert browser.find_element(By.ID, "shown").text == "no boxes found"
        assert _console_errors(browser) == []


def test_the_same_file_picked_again_is_sent_again(browser, tmp_path: Path) -> None:
    """After "Not allowed: check the API key", a user types the key and picks the same photo again: the
    input's value had not changed, so no change event came and nothing was sent."""
    from selenium.webdriver.common.by import By

    with live_server(tmp_path / "no-artifact-needed") as server:
        browser.get_log("browser")
        browser.get(server + "/")
        browser.execute_script(_COUNT_CALLS)
        image = tmp_path / "photo.png"
        Image.new("RGB", (64, 48), "white").save(image)
        for attempt in (1, 2):
            browser.find_element(By.ID, "file").send_keys(str(image))
            time.sleep(0.5)  # the change event, if any, has been handled
            assert browser.execute_script("return window.apiCalls") == attempt
            _wait_for(browser, lambda d: d.find_element(By.ID, "error").text, "an error message")
        assert _console_errors(browser) == []


_DROP_ON_BODY = """
// A file dropped just outside the drop zone: the browser's default is to open it in place of the page.
window.apiCalls = 0;
window.fetch = async () => { window.apiCalls += 1; return new Response("{}", {status: 503}); };
const transfer = new DataTransfer();
transfer.items.add(new File([new Uint8Array([137, 80, 78, 71])], "photo.png", {type: "image/png"}));
const over = new DragEvent("dragover", {bubbles: true, cancelable: true, dataTransfer: transfer});
const drop = new DragEvent("drop", {bubbles: true, cancelable: true, dataTransfer: transfer});
const kept = [document.body.dispatchEvent(over), document.body.dispatchEvent(drop)];
return {overDefault: kept[0], dropDefault: kept[1]};
"""


def test_a_file_dropped_beside_the_drop_zone_is_analyzed_not_opened_in_place_of_the_page(
    browser, tmp_path: Path
) -> None:
    """Missing the dashed zone by a pixel let Chromium do its default: open the image in the tab,
    leaving the page (and any answer on it)."""
    from selenium.webdriver.common.by import By

    with live_server(tmp_path / "no-artifact-needed") as server:
        browser.get_log("browser")
        browser.get(server + "/")
        defaults = browser.execute_script(_DROP_ON_BODY)
        assert defaults == {"overDefault": False, "dropDefault": False}, "the browser's default would run"
        assert browser.execute_script("return window.apiCalls") == 1
        assert browser.find_element(By.ID, "photo").get_attribute("alt") == "photo.png"
        _wait_for(browser, lambda d: d.find_element(By.ID, "error").text, "an error message")
        assert _console_errors(browser) == []


def test_a_network_failure_is_reported_and_the_page_stays_usable(browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), "white").save(image)
    with live_server(tmp_path / "no-artifact-needed") as server:
        browser.get_log("browser")
        browser.get(server + "/")
    # The server is gone: the upload cannot connect.
    browser.find_element(By.ID, "file").send_keys(str(image))
    _wait_for(browser, lambda d: d.find_element(By.ID, "error").text, "an error message")
    assert browser.find_element(By.ID, "error").text.startswith("Could not reach the API")
    assert browser.find_element(By.ID, "status").text == ""
    errors = _console_errors(browser)
    assert all("/analyze?tasks=" in e and "ERR_CONNECTION_REFUSED" in e for e in errors), errors


def test_a_file_the_browser_cannot_show_leaves_no_broken_image(browser, tmp_path: Path) -> None:
    """A PDF (or a HEIC, which Chromium does not decode) was shown as a broken-image icon with the file
    name beside the server's "not an image" message."""
    from selenium.webdriver.common.by import By

    with live_server(tmp_path / "no-artifact-needed") as server:
        browser.get_log("browser")
        browser.get(server + "/")
        document = tmp_path / "doc.pdf"
        document.write_bytes(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n")
        browser.find_element(By.ID, "file").send_keys(str(document))
        _wait_for(browser, lambda d: d.find_element(By.ID, "error").text, "an error message")
        assert browser.find_element(By.ID, "error").text.startswith("Unsupported file type")
        _wait_for(browser, lambda d: not d.find_element(By.ID, "photo").is_displayed(), "the photo hidden", 5)
        image = tmp_path / "photo.png"
        Image.new("RGB", (64, 48), "white").save(image)
        browser.find_element(By.ID, "file").send_keys(str(image))
        _wait_for(browser, lambda d: d.find_element(By.ID, "photo").is_displayed(), "the next photo")
        assert _console_errors(browser) == []
