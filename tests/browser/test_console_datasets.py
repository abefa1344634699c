"""Datasets in the console: the drop list follows the task type, previews follow the CT
window, a hyperparameter out of bounds is named next to its field, a folder uploaded
from the browser is imported, and 401/404 answers leave the console usable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from radtrain.stack import Stack
from tests.browser.conftest import Shots, sign_in
from tests.support.dataset_utils import classification_folder

pytestmark = pytest.mark.browser
DATASET = re.compile(r"^Dataset \(")


def start_general(page: Page, task_type: str) -> None:
    page.get_by_role("navigation").get_by_role("link", name="Create new task").click()
    page.get_by_label("General", exact=True).check()
    page.get_by_role("button", name="Next").click()
    page.get_by_label(task_type, exact=True).check()
    page.get_by_role("button", name="Next").click()


def options(select: Locator) -> list[str]:
    return [v for v in select.locator("option").evaluate_all("os => os.map(o => o.value)") if v]


def test_drop_list_follows_the_task_type(console: tuple[Page, Shots],
                                         datasets: dict[str, str]) -> None:
    page, shot = console
    start_general(page, "classification")
    select = page.get_by_label(DATASET)
    expect(select).to_be_visible()
    classification = options(select)
    assert {datasets["ct"], datasets["ct_new"], datasets["ptx"]} <= set(classification)
    assert datasets["boxes"] not in classification
    shot("classification")
    page.get_by_role("button", name="Back").click()
    page.get_by_label("detection", exact=True).check()
    page.get_by_role("button", name="Next").click()
    expect(page.get_by_label(DATASET)).to_contain_text("boxes")
    detection = options(page.get_by_label(DATASET))
    assert datasets["boxes"] in detection and datasets["ct"] not in detection
    page.get_by_label(DATASET).select_option(datasets["boxes"])
    expect(page.locator(".previews img").first).to_have_attribute("data-loaded", "true")
    shot("detection-with-boxes")


def image_digest(img: Locator) -> str:
    """A digest of the pixels the <img> shows (drawn on a canvas: the page's CSP allows no
    fetch of its blob: URL)."""
    return str(img.evaluate("""(el) => {
        const c = document.createElement("canvas");
        c.width = el.naturalWidth; c.height = el.naturalHeight;
        const ctx = c.getContext("2d"); ctx.drawImage(el, 0, 0);
        const px = ctx.getImageData(0, 0, c.width, c.height).data;
        let h = 0; for (const b of px) h = (h * 31 + b) >>> 0; return `${px.length}:${h}`;
    }"""))


def test_preview_changes_with_the_window(console: tuple[Page, Shots], stack: Stack,
                                         datasets: dict[str, str]) -> None:
    page, shot = console
    page.goto(f"{stack.gateway_url}/console/#/datasets/{datasets['ct']}")
    expect(page.get_by_role("heading", name="Health report")).to_be_visible()
    img = page.locator(".previews img").first
    expect(img).to_have_attribute("data-loaded", "true")
    assert img.evaluate("el => el.naturalWidth") > 0
    before = image_digest(img)
    shot("window-auto")
    page.get_by_label("CT window").select_option("bone")
    expect(img).to_have_attribute("data-src", re.compile(r"window=bone"))
    expect(img).to_have_attribute("data-loaded", "true")
    assert image_digest(img) != before
    shot("window-bone")


def test_out_of_bounds_hyperparameter_is_named_next_to_the_field(
        console: tuple[Page, Shots], datasets: dict[str, str]) -> None:
    page, shot = console
    start_general(page, "classification")
    page.get_by_label(DATASET).select_option(datasets["ct"])
    page.get_by_role("button", name="Next").click()
    page.get_by_role("button", name="Next").click()  # auto-select the network
    page.get_by_label("Full manual").check()
    epochs = page.locator('[data-field="tuning.hyperparameters.epochs"]')
    epochs.fill("5000")
    page.get_by_role("button", name="Next").click()
    error = page.locator(f"#{epochs.get_attribute('id')}-err")
    expect(error).to_contain_text("less than or equal to 1000")  # the API's own message
    expect(epochs).to_have_attribute("aria-invalid", "true")
    expect(epochs).to_be_focused()
    expect(page.get_by_text("Step 5 of 6: Tuning")).to_be_visible()
    shot("epochs-out-of-bounds")
    epochs.fill("1")
    page.get_by_role("button", name="Next").click()
    expect(page.get_by_text("Step 6 of 6: Review and start")).to_be_visible()


def test_upload_and_import_a_folder(console: tuple[Page, Shots], tmp_path: Path) -> None:
    page, shot = console
    folder = classification_folder(tmp_path / "cxr", n=8)
    page.get_by_role("navigation").get_by_role("link", name="Import a dataset").click()
    page.get_by_label("Dataset name").fill("browser upload")
    page.get_by_label("Format").select_option("folder-csv")
    page.get_by_label("Folder").set_input_files(folder)
    shot("picked")
    page.get_by_role("button", name="Upload and import").click()
    report = page.get_by_role("region", name="Import report")
    expect(report).to_contain_text("Import completed", timeout=90_000)
    expect(report).to_contain_text("8 cases")
    expect(page.locator("progress[aria-label='upload and import progress']")).to_have_js_property(
        "value", 1)
    shot("imported")
    report.get_by_role("link").click()
    expect(page.get_by_role("heading", name="browser upload")).to_be_visible()
    expect(page.locator(".previews img").first).to_have_attribute("data-loaded", "true")
    shot("dataset")


def test_refusals_leave_the_console_usable(console: tuple[Page, Shots], stack: Stack) -> None:
    page, shot = console
    page.goto(f"{stack.gateway_url}/console/#/tasks/{'0' * 32}")
    expect(page.get_by_text(re.compile(r"Not found: task"))).to_be_visible()
    shot("404")
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("API key").fill("rt_wrong_key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text(re.compile(r"API key was refused"))).to_be_visible()
    expect(page.get_by_label("API key")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("navigation")).to_be_hidden()  # nothing to reach without a key
    assert page.evaluate("sessionStorage.getItem('radtrain.apiKey')") is None
    shot("401")
    sign_in(page, stack)
    assert "rt_" not in page.url


def test_keyboard_walks_the_wizard(console: tuple[Page, Shots], datasets: dict[str, str]) -> None:
    page, shot = console
    page.get_by_role("navigation").get_by_role("link", name="Create new task").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_text("Step 1 of")).to_be_visible()
    page.get_by_label("General", exact=True).focus()
    page.keyboard.press("Space")
    page.keyboard.press("Enter")  # submits the step: Next
    expect(page.get_by_text("Step 2 of 6: Task type")).to_be_visible()
    expect(page.get_by_role("heading", name="Step 2 of 6: Task type")).to_be_focused()
    page.get_by_label("classification", exact=True).focus()
    page.keyboard.press("Space")
    page.keyboard.press("Enter")
    expect(page.get_by_text("Step 3 of 6: Dataset")).to_be_visible()
    tab_to(page, "Next")
    page.keyboard.press("Enter")  # nothing chosen: the error is named next to the list
    select = page.get_by_label(DATASET)
    expect(select).to_be_focused()
    expect(page.locator(f"#{select.get_attribute('id')}-err")).to_have_text("choose a dataset")
    shot("keyboard-error")
    tab_to(page, "Back")
    page.keyboard.press("Enter")
    expect(page.get_by_text("Step 2 of 6: Task type")).to_be_visible()


def tab_to(page: Page, text: str, limit: int = 30) -> None:
    """Tab through the page until the control reading ``text`` has the focus."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent.trim()") == text:
            return
    raise AssertionError(f"{text!r} not reachable with Tab")
