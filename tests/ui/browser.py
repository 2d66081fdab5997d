"""Debian's Chromium driven by Playwright, and screenshots kept as test artifacts.

Playwright's own browser download cannot be used here: the tests launch the system
`chromium` (installed by `.ci/run`) through `executable_path`, headless, without a
sandbox (CI runs as root) and without background network traffic.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
    "--disable-gpu",
]
VIEWPORT = {"width": 1280, "height": 860}


def chromium_path() -> str | None:
    """The system Chromium, or None when it is not installed."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def launch(playwright: Any, executable: str) -> Any:
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)


class Shots:
    """Numbered screenshots of each step into `folder`. The fixture deletes them when
    the test passes and keeps them (and says where) when it fails; names listed in
    `publish` are also copied to a docs folder when one is given."""

    def __init__(self, folder: Path, publish_to: Path | None = None) -> None:
        self.folder = folder
        self.publish_to = publish_to
        self.taken: list[Path] = []
        folder.mkdir(parents=True, exist_ok=True)

    def take(self, page: Any, name: str, *, publish: bool = False, full_page: bool = False) -> Path:
        path = self.folder / f"{len(self.taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        self.taken.append(path)
        if publish and self.publish_to is not None:
            self.publish_to.mkdir(parents=True, exist_ok=True)
            small(path, self.publish_to / f"{name}.png")
        return path


def small(source: Path, dest: Path) -> None:
    """A 256-colour copy of a screenshot: a third of the size, still sharp text."""
    from PIL import Image

    with Image.open(source) as img:
        img.convert("RGB").quantize(colors=256).save(dest, optimize=True)
