"""The OpenAPI document (docs/openapi.yaml) against the code: it is what scripts/gen_openapi.py
writes today, it is valid OpenAPI 3.1, and it names exactly the operations the route table
(services/api/routes.py) serves, no more and no fewer."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import tomllib
from typing import Any

import jsonschema
import schemathesis
import yaml
from schemathesis.specs.openapi.definitions import OPENAPI_31

from services.api import routes

ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVED = ROOT / "services" / "api" / "openapi.yaml"
METHODS = ("get", "head", "post", "put", "patch", "delete")
# A value that fits each path parameter, to find the route a documented path reaches.
EXAMPLES = {"digest": "sha256:" + "0" * 64, "reference": "latest", "upload_id": "0" * 32}


def _document() -> dict[str, Any]:
    return dict(yaml.safe_load(SERVED.read_text()))


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, item[method]) for path, item in doc["paths"].items() for method in METHODS
            if method in item]


def test_the_committed_document_is_what_the_generator_writes(tmp_path: pathlib.Path) -> None:
    fresh = tmp_path / "openapi.yaml"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_openapi.py"), "--out", str(fresh)], check=True)
    assert fresh.read_text() == SERVED.read_text(), "run `python scripts/gen_openapi.py` and commit the result"


def test_docs_copy_is_the_served_file_and_the_package_ships_it() -> None:
    assert (ROOT / "docs" / "openapi.yaml").resolve() == SERVED.resolve()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "openapi.yaml" in package_data["services.api"], "the wheel (and so the image) must carry the document"


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = _document()
    assert doc["openapi"].startswith("3.1.")
    jsonschema.validate(doc, OPENAPI_31)
    for name, schema in doc["components"]["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise AssertionError(f"components.schemas.{name}: {exc.message}") from None
    # schemathesis's loader resolves every $ref and builds every operation.
    schema = schemathesis.openapi.from_path(SERVED)
    schema.validate()
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) == len(_operations(doc))
    ids = [operation["operationId"] for _, _, operation in _operations(doc)]
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def _concrete(path: str) -> str:
    """The path with each parameter replaced by a value of its shape."""
    return re.sub(r"\{(\w+)\}", lambda m: EXAMPLES.get(m.group(1), "a"), path)


def test_every_documented_operation_is_served_by_the_route_it_names() -> None:
    for path, method, operation in _operations(_document()):
        found = routes.match(_concrete(path))
        assert found is not None, f"{path} is documented, but no route serves it"
        route, _ = found
        assert route.endpoint == operation["x-wharf-route"], f"{method.upper()} {path} reaches {route.endpoint}"
        assert method.upper() in route.handlers, f"{method.upper()} {path} is documented, but not served"


def test_every_served_route_and_method_is_documented_for_every_name_depth() -> None:
    doc = _document()
    depths = doc["info"]["x-wharf-name-components"]["templated"]
    documented: dict[tuple[str, str], int] = {}
    for _, method, operation in _operations(doc):
        key = (operation["x-wharf-route"], method.upper())
        documented[key] = documented.get(key, 0) + 1
    served = {(route.endpoint, method) for route in routes.ROUTES for method in route.handlers}
    assert set(documented) == served
    for route in routes.ROUTES:
        # A route with a repository name is written out once per name depth; the others once.
        copies = depths if "(?P<name>" in route.pattern.pattern else 1
        for method in route.handlers:
            assert documented[(route.endpoint, method)] == copies, (route.endpoint, method)


def test_operations_answer_the_statuses_of_their_access() -> None:
    """A route that needs a token documents the 401 challenge; a public one does not."""
    by_endpoint = {route.endpoint: route for route in routes.ROUTES}
    for path, method, operation in _operations(_document()):
        access = by_endpoint[operation["x-wharf-route"]].handlers[method.upper()].access
        needs_token = access.kind != "public"
        assert ("401" in operation["responses"]) == needs_token or operation["x-wharf-route"] == "token", path
