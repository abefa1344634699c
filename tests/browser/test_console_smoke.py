"""The console loads, signs in, and every page renders (a quick check of the tier)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from radtrain.stack import Stack
from tests.browser.conftest import Shots

pytestmark = pytest.mark.browser


def test_pages_render(console: tuple[Page, Shots], stack: Stack, datasets: dict[str, str]) -> None:
    page, shot = console
    shot("tasks")
    for link, heading in (("Datasets", "Datasets"), ("Model zoo", "Model zoo"),
                          ("Presets", "Presets"), ("Import a dataset", "Import a dataset")):
        page.get_by_role("navigation").get_by_role("link", name=link, exact=True).click()
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        shot(link.lower().replace(" ", "-"))
    page.get_by_role("navigation").get_by_role("link", name="Create new task").click()
    expect(page.get_by_role("heading", name="Create new task")).to_be_visible()
    shot("wizard")
