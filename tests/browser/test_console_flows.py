"""Each of the three flows walked in the console to a started task that reaches completed.

General (classification, a zoo network picked by hand, manual tuning), specialized (the
pneumothorax preset) and a retrain of the general task started from its task page with
"Retrain from this model". Tiny datasets, one or two epochs at 64 px: the runner
finishes each in seconds on a CPU.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from radtrain.cli.client import call
from radtrain.stack import Stack
from tests.browser.conftest import Shots, wait_state

pytestmark = pytest.mark.browser


def next_step(page: Page) -> None:
    page.get_by_role("button", name="Next").click()


def choose_flow(page: Page, flow: str) -> None:
    page.get_by_role("navigation").get_by_role("link", name="Create new task").click()
    expect(page.get_by_role("table", name="What each flow fixes")).to_be_visible()
    page.get_by_label(flow.capitalize(), exact=True).check()
    next_step(page)


def manual_tuning(page: Page, **values: object) -> None:
    page.get_by_label("Full manual").check()
    for name, value in values.items():
        page.locator(f'[data-field="tuning.hyperparameters.{name}"]').fill(str(value))


def review_and_start(page: Page, shot: Shots, name: str) -> str:
    expect(page.get_by_role("heading", name="The task would be accepted")).to_be_visible(
        timeout=30_000)
    expect(page.get_by_text(re.compile(r"images processed"))).to_be_visible()
    page.get_by_label("Task name").fill(name)
    page.get_by_label("Description (optional)").fill("from the browser tests")
    shot("review")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(re.compile(r"#/tasks/[0-9a-f]{32}$"))
    expect(page.get_by_role("heading", name=name)).to_be_visible()
    shot("started")
    return page.url.rsplit("/", 1)[-1]


def finish(page: Page, shot: Shots) -> None:
    wait_state(page, "completed")
    expect(page.get_by_role("table", name="Metrics")).to_be_visible()
    expect(page.get_by_role("table", name="Artifacts")).to_be_visible()
    expect(page.locator("progress[aria-label=progress]")).to_have_js_property("value", 1)
    expect(page.locator(".plots img").last).to_have_attribute("data-loaded", "true")
    expect(page.get_by_label("Model card")).to_contain_text("Model card")
    shot("completed")


def test_general_flow_then_retrain(console: tuple[Page, Shots], datasets: dict[str, str],
                                   stack: Stack) -> None:
    page, shot = console
    choose_flow(page, "general")
    page.get_by_label("classification", exact=True).check()
    shot("task-type")
    next_step(page)
    page.get_by_label(re.compile(r"^Dataset \(")).select_option(datasets["ct"])
    expect(page.locator(".previews img").first).to_have_attribute("data-loaded", "true")
    shot("dataset")
    next_step(page)
    expect(page.get_by_role("list", name="Suggested networks").locator("li").first).to_be_visible()
    shot("model-auto")
    page.get_by_label("Choose from the model zoo").check()
    page.get_by_label("Search the zoo").fill("resnet10t")
    page.locator('details[data-network="resnet10t"] summary').click()
    page.locator('details[data-network="resnet10t"] input[type=radio]').first.check()
    shot("model-manual")
    next_step(page)
    manual_tuning(page, epochs=1, image_size=64, batch_size=8, warmup_epochs=0)
    shot("tuning")
    next_step(page)
    task_id = review_and_start(page, shot, "console general")
    finish(page, shot)
    report = page.get_by_role("table", name="95 % confidence intervals")
    expect(report).to_contain_text("auc")  # issue 15: intervals on the task page
    expect(report.locator("td").nth(1)).to_contain_text(re.compile(r"\d(\.\d+)? – \d|undefined"))
    shot("held-out-report")
    expect(page.get_by_text(re.compile(datasets["ct"] + r" \(sha256 [0-9a-f]{16}"))).to_be_visible()

    # Retrain from this model: the wizard opens on the dataset step with the base chosen.
    page.get_by_role("link", name="Retrain from this model").click()
    expect(page.get_by_text("Step 3 of 6: Dataset")).to_be_visible()
    expect(page.locator(".summary")).to_contain_text(task_id)
    page.get_by_label(re.compile(r"^Dataset \(")).select_option(datasets["ct_new"])
    expect(page.locator(".previews img").first).to_have_attribute("data-loaded", "true")
    shot("retrain-dataset")
    next_step(page)
    expect(page.get_by_text("A retrain keeps the base task's network")).to_be_visible()
    next_step(page)
    manual_tuning(page, epochs=1)
    next_step(page)
    review_and_start(page, shot, "console retrain")
    finish(page, shot)
    expect(page.get_by_role("link", name=task_id)).to_be_visible()  # lineage: retrained from

    page.get_by_role("navigation").get_by_role("link", name="Tasks").click()
    page.get_by_label("Filter by state").select_option("completed")
    table = page.get_by_role("table", name="Tasks")
    expect(table).to_contain_text("console retrain")
    expect(table.locator(f'tr[data-task="{task_id}"] .state')).to_have_text("completed")
    expect(table.locator(f'tr[data-task="{task_id}"] progress')).to_have_js_property("value", 1)
    shot("tasks-completed")


def test_specialized_flow(console: tuple[Page, Shots], datasets: dict[str, str]) -> None:
    page, shot = console
    choose_flow(page, "specialized")
    page.get_by_label("Pneumothorax", exact=False).first.check()
    shot("preset")
    next_step(page)
    select = page.get_by_label(re.compile(r"^Dataset \("))
    expect(select.locator("option")).to_have_count(2)  # the placeholder and the DX dataset
    select.select_option(datasets["ptx"])
    expect(page.locator(".previews img").first).to_have_attribute("data-loaded", "true")
    next_step(page)
    expect(page.get_by_text("The preset fixes the network")).to_be_visible()
    shot("network-fixed")
    next_step(page)
    manual_tuning(page, epochs=1, image_size=64, warmup_epochs=0, freeze_backbone_epochs=0)
    next_step(page)
    review_and_start(page, shot, "console specialized")
    finish(page, shot)
    with page.expect_download() as got:
        page.get_by_role("button", name="Download metrics.json").click()
    metrics = json.loads(Path(got.value.path()).read_text())
    assert got.value.suggested_filename == "metrics.json" and "auc" in json.dumps(metrics)


def test_a_search_shows_its_trials(console: tuple[Page, Shots], datasets: dict[str, str],
                                   stack: Stack) -> None:
    """Issue 18: a search parent's page lists its trials, the best marked, each a link."""
    page, shot = console
    body = {"name": "console search", "flow": "general", "task_type": "classification",
            "dataset_id": datasets["ct"],
            "model": {"mode": "manual", "network": "resnet10t", "pretrained": False},
            "tuning": {"mode": "search", "seed": 3, "objective": "val_loss",
                       "budget": {"trials": 2, "max_parallel": 2, "max_hours": 1},
                       "hyperparameters": {"epochs": 1, "warmup_epochs": 0, "image_size": 64,
                                           "batch_size": 8, "augmentation": "none"},
                       "space": {"learning_rate": {"type": "float", "low": 1e-4,
                                                   "high": 1e-2, "log": True}}}}
    _, accepted, _ = call("POST", f"{stack.gateway_url}/v1/tasks", body, token=stack.api_key)
    parent = accepted["task_id"]
    page.goto(f"{stack.gateway_url}/console/#/tasks/{parent}")
    wait_state(page, "completed", timeout_s=240)
    trials = page.get_by_role("table", name="Search trials")
    expect(trials.locator("tr[data-trial]")).to_have_count(2)
    expect(trials).to_contain_text("(best)")
    expect(trials).to_contain_text("learning_rate")
    shot("search-trials")
    trials.get_by_role("link").first.click()
    expect(page.get_by_role("heading", name=re.compile("console search"))).to_be_visible()
