"""Our Data Docs site: configuration, and page views that compile their templates once.

GX's default Jinja views build a new template Environment for every page, so each page
recompiles the same templates; that was most of a validation run's time. The views
here are the same classes sharing one Environment per class for the process, plugged in
through the site's documented `view` settings (no patching of GX).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from great_expectations.render.view import DefaultJinjaIndexPageView, DefaultJinjaPageView

SITE_NAME = "shortlist_site"  # GX's default site is called local_site
_VIEW = {"module_name": __name__}


class _SharedEnvironment:
    """Mixin: reuse the first instance's Jinja Environment (and its template cache)."""

    _envs: ClassVar[dict[tuple, Any]] = {}

    def __init__(self, custom_styles_directory=None, custom_views_directory=None) -> None:
        key = (type(self), custom_styles_directory, custom_views_directory)
        env = _SharedEnvironment._envs.get(key)
        if env is None:
            super().__init__(custom_styles_directory, custom_views_directory)  # type: ignore[call-arg]
            _SharedEnvironment._envs[key] = self.env
        else:
            self.custom_styles_directory = custom_styles_directory
            self.custom_views_directory = custom_views_directory
            self.env = env


class CachedPageView(_SharedEnvironment, DefaultJinjaPageView):
    """DefaultJinjaPageView with a process-wide template cache."""


class CachedIndexPageView(_SharedEnvironment, DefaultJinjaIndexPageView):
    """DefaultJinjaIndexPageView with a process-wide template cache."""


def site_config(docs_dir: str | Path) -> dict[str, Any]:
    """A local filesystem Data Docs site with validation pages and an index."""
    return {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(docs_dir),
        },
        "site_index_builder": {
            "class_name": "DefaultSiteIndexBuilder",
            "view": {**_VIEW, "class_name": "CachedIndexPageView"},
        },
        "site_section_builders": {
            # Validation pages list every expectation with its result; separate suite
            # pages would double the rendering time and say nothing new.
            "expectations": "0",
            "validations": {"view": {**_VIEW, "class_name": "CachedPageView"}},
        },
    }
