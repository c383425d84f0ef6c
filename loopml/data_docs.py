"""Great Expectations Data Docs that open without internet.

GX 1.x writes pages that load Bootstrap, jQuery, bootstrap-table, Font Awesome and Vega from
CDNs (and its logo from S3): offline they open unstyled and their tables stay empty. The same
files ship with loopml (``loopml/data/data_docs_assets``, see its README for versions and
licenses); :func:`localize_data_docs` copies them beside the site and rewrites each page's
references to relative paths.
"""

from __future__ import annotations

import re
import shutil
from functools import partial
from pathlib import Path

ASSETS_DIR = Path(__file__).parent / "data" / "data_docs_assets"
# Where the bundled files go inside a site (beside GX's own ``static/`` styles and images).
SITE_ASSETS = Path("static") / "loopml"

# The CDN address GX writes (without query string) -> the bundled file (relative to ASSETS_DIR,
# or, for ``gx:`` entries, to the site's own ``static/`` folder that GX fills).
_CDNJS = "https://cdnjs.cloudflare.com/ajax/libs"
_JSDELIVR = "https://cdn.jsdelivr.net/npm"
_TABLE = "https://unpkg.com/bootstrap-table@1.19.1/dist"
_FILTER = "dist/extensions/filter-control/bootstrap-table-filter-control"
CDN_FILES = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": (
        "bootstrap/bootstrap.min.css"
    ),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": (
        "bootstrap/bootstrap.min.js"
    ),
    f"{_JSDELIVR}/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css": (
        "bootstrap-dark/bootstrap-prefers-dark.min.css"
    ),
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/jquery.min.js",
    f"{_CDNJS}/popper.js/1.12.9/umd/popper.min.js": "popper/popper.min.js",
    f"{_TABLE}/bootstrap-table.min.css": "bootstrap-table/bootstrap-table.min.css",
    f"{_TABLE}/bootstrap-table.min.js": "bootstrap-table/bootstrap-table.min.js",
    f"https://unpkg.com/bootstrap-table@1.19.1/{_FILTER}.min.js": (
        "bootstrap-table/bootstrap-table-filter-control.min.js"
    ),
    f"https://unpkg.com/bootstrap-table@1.19.0/{_FILTER}.css": (
        "bootstrap-table/bootstrap-table-filter-control.min.css"
    ),
    f"https://unpkg.com/bootstrap-table@1.19.0/{_FILTER}.min.css": (
        "bootstrap-table/bootstrap-table-filter-control.min.css"
    ),
    f"{_CDNJS}/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css": (
        "bootstrap-datepicker/bootstrap-datepicker.min.css"
    ),
    f"{_CDNJS}/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js": (
        "bootstrap-datepicker/bootstrap-datepicker.min.js"
    ),
    f"{_CDNJS}/font-awesome/6.6.0/css/all.min.css": "fontawesome/css/all.min.css",
    f"{_JSDELIVR}/vega@5": "vega/vega.min.js",
    f"{_JSDELIVR}/vega-lite@5": "vega/vega-lite.min.js",
    f"{_JSDELIVR}/vega-embed@6": "vega/vega-embed.min.js",
    "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png": (
        "gx:images/logo-long.png"
    ),
}
# A src or href attribute of a <script>, <link> or <img> tag.
_ASSET_REFERENCE = re.compile(
    r"""(<(?:script|link|img)\b[^>]*?\b(?:src|href)=)(["'])(https?://[^"']+)\2""",
    re.IGNORECASE,
)


def localize_data_docs(site_dir: str | Path, *, since: float | None = None) -> list[Path]:
    """Copy the bundled assets into ``site_dir`` and point the site's pages at them.

    Idempotent: assets already there are not copied again, pages already rewritten are left
    as they are. A CDN reference this module does not know (a newer GX) is left in place, so a
    test that looks for remote references fails.

    Args:
        site_dir: the Data Docs site (where ``index.html`` is).
        since: only pages written at or after this time (``time.time()``) are read: a site
            grows by a page per validation, and the earlier ones were rewritten then.

    Returns:
        The HTML pages that were rewritten.
    """
    site_dir = Path(site_dir)
    shutil.copytree(
        ASSETS_DIR, site_dir / SITE_ASSETS, dirs_exist_ok=True, copy_function=_copy_if_changed
    )
    rewritten = []
    for page in site_dir.rglob("*.html"):
        if since is not None and page.stat().st_mtime < since:
            continue
        html = page.read_text(encoding="utf-8")
        # Pages sit at different depths (index.html, validations/<suite>/<run>/.../x.html).
        to_root = Path(*[".."] * (len(page.relative_to(site_dir).parts) - 1))
        localized = _ASSET_REFERENCE.sub(partial(_local, to_root=to_root), html)
        if localized != html:
            page.write_text(localized, encoding="utf-8")
            rewritten.append(page)
    return rewritten


def _copy_if_changed(source: str, target: str) -> str:
    if Path(target).is_file() and Path(target).stat().st_size == Path(source).stat().st_size:
        return target
    return shutil.copy2(source, target)


def _local(match: re.Match[str], to_root: Path) -> str:
    prefix, quote, url = match.groups()
    bundled = CDN_FILES.get(url.split("?", 1)[0])
    if bundled is None:
        return match.group(0)
    if bundled.startswith("gx:"):
        target = Path("static") / bundled.removeprefix("gx:")
    else:
        target = SITE_ASSETS / bundled
    return f"{prefix}{quote}{(to_root / target).as_posix()}{quote}"


def remote_asset_references(html: str) -> list[str]:
    """The http(s) addresses a page's ``<script>``, ``<link>`` and ``<img>`` tags load."""
    return [match.group(3) for match in _ASSET_REFERENCE.finditer(html)]
