"""docs/api.md's endpoint table and the route table (services/api/routes.py) list the same
methods on the same paths, so the docs and the server agree."""

from __future__ import annotations

import pathlib
import re

from services.api import routes

ROOT = pathlib.Path(__file__).resolve().parents[2]
# How the docs write each route's path.
DOC_PATHS = {
    "base": "/v2/", "catalog": "/v2/_catalog", "tags": "/v2/<name>/tags/list",
    "uploads": "/v2/<name>/blobs/uploads/", "upload": "/v2/<name>/blobs/uploads/<id>",
    "blob": "/v2/<name>/blobs/<digest>", "manifest": "/v2/<name>/manifests/<reference>",
    "referrers": "/v2/<name>/referrers/<digest>", "token": "/token", "openapi": "/openapi.yaml",
    "ui_home": "/", "ui_repositories": "/ui/repositories", "ui_repository": "/ui/repository",
    "ui_manifest": "/ui/manifest", "ui_delete": "/ui/delete", "ui_login": "/ui/login", "ui_logout": "/ui/logout",
    "ui_static": "/ui/static/<file>", "ui_usage": "/ui/usage", "ui_activity": "/ui/activity",
}


def _documented() -> dict[str, set[str]]:
    text = (ROOT / "docs" / "api.md").read_text()
    table = text.split("## Endpoints at a glance", 1)[1].split("\n\n", 2)[1]
    found: dict[str, set[str]] = {}
    for line in table.splitlines()[2:]:
        methods, path = (cell.strip() for cell in line.strip("|").split("|")[:2])
        path = re.sub(r"\?.*$", "", path.strip("`").split("`")[0])
        found.setdefault(path, set()).update(m.strip() for m in methods.split(","))
    return found


def test_every_route_and_method_is_documented_and_nothing_else() -> None:
    served = {DOC_PATHS[route.endpoint]: set(route.handlers) for route in routes.ROUTES}
    assert _documented() == served
