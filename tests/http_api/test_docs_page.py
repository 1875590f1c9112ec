"""The /docs page in a real browser: Debian's chromium, headless, against the running API."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.harness import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Where the README's picture of the page lives; refreshed with UPDATE_SCREENSHOTS=1.
README_SCREENSHOT = ROOT / "docs" / "images" / "http-api-docs.png"
OPERATIONS = [
    ("GET", "/api/v1/similar/{artist}"),
    ("GET", "/api/v1/stats"),
    ("GET", "/api/v1/artists/{artist}/history"),
    ("GET", "/api/v1/artists/{artist}/profile"),
    ("GET", "/api/v1/artists"),
    ("POST", "/api/v1/generations"),
]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="make install brings chromium")


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # the tests may run as root
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            # Lets the page's scripts fetch /openapi.json and render before the dump.
            "--virtual-time-budget=15000",
            "--window-size=1280,2200",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_docs_are_served_from_the_package_not_a_cdn(base_url: str) -> None:
    page = httpx.get(f"{base_url}/docs", timeout=10).text
    assert "/docs/static/swagger-ui-bundle.js" in page and "/docs/static/swagger-ui.css" in page
    assert "cdn" not in page.lower()
    bundle = httpx.get(f"{base_url}/docs/static/swagger-ui-bundle.js", timeout=10)
    assert bundle.status_code == 200 and len(bundle.content) > 500_000


def test_the_browser_renders_every_operation(base_url: str, tmp_path: Path) -> None:
    dom = chromium(tmp_path / "profile", "--dump-dom", f"{base_url}/docs")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'class="swagger-ui"' in html, html[:2000]
    assert "Stylebase HTTP API" in html
    for method, path in OPERATIONS:
        assert f"opblock-{method.lower()}" in html, method
        assert f'data-path="{path}"' in html, path
    screenshot = tmp_path / "docs.png"
    shot = chromium(tmp_path / "profile", f"--screenshot={screenshot}", f"{base_url}/docs")
    assert shot.returncode == 0 and screenshot.stat().st_size > 20_000, shot.stderr[-2000:]
    print(f"screenshot of /docs: {screenshot} ({screenshot.stat().st_size} bytes)")
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, README_SCREENSHOT)
