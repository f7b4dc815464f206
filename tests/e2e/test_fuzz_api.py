"""schemathesis runs the registry's own OpenAPI document (fetched from GET /openapi.yaml) against
live stacks, with and without token authentication.

Each operation gets a fixed number of positive and negative examples (derandomized: CI sees the
same requests every run), then linked sequences follow the document's links (POST an upload ->
PATCH -> PUT -> GET the blob; PUT a manifest -> GET it, its referrers, its tags). Every answer
must: not be a 5xx; have a documented status, content type, headers and body; and, when it is
a refusal (4xx), leave the registry as it was (tests/support/api_state.py compares the catalog,
the repository's tags, the blob links and manifests the request names, and its upload session,
before and after).

In token mode the names of two or more components live in the namespace of an account that
may push there, and the fuzzer sends that account's token; one-component names are sent
anonymously (the challenge path), so both the granted and the refused paths are fuzzed.

Run it alone: `.venv/bin/python -m pytest tests/e2e/test_fuzz_api.py -q -s` (-s shows the figures).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, strategies
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.common import digests
from tests.support.api_state import Snapshot, Target, left_behind, repository_of, snapshot
from tests.support.stack import RunningStack

pytestmark = pytest.mark.e2e

ADMIN_PASSWORD = "fuzz-admin-secret-1"
USER = ("fuzz", "fuzz-user-secret-1")
SEEDED = "fuzz/seed"  # a repository with a tag, a manifest and blobs, so refusals have state to keep
EXAMPLES = 4  # per operation and generation mode
STATEFUL_EXAMPLES = 15
SEED = 20
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
SETTINGS = hypothesis.settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                               print_blob=False, phases=[Phase.explicit, Phase.generate],
                               suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module", params=["none", "token"])
def target(request: pytest.FixtureRequest, start_stack: Callable[..., RunningStack]) -> Iterator[Target]:
    if request.param == "none":
        found = Target(start_stack(), "none")
    else:
        stack = start_stack(env={"WHARF_AUTH": "token", "WHARF_ADMIN_PASSWORD": ADMIN_PASSWORD,
                                 "WHARF_BCRYPT_ROUNDS": "4"})
        stack.admin(ADMIN_PASSWORD, "user", "add", USER[0], "--password-stdin", stdin=USER[1] + "\n")
        found = Target(stack, "token", user=USER, admin=("admin", ADMIN_PASSWORD))
    _seed(found)
    yield found
    found.session.close()


def _seed(target: Target) -> None:
    """One image in SEEDED: a config blob, a layer blob, a manifest tagged v1."""
    headers = target.headers_as(target.user, SEEDED)
    descriptors = []
    for data, media_type in ((b"{}", "application/vnd.oci.image.config.v1+json"),
                             (b"layer", "application/vnd.oci.image.layer.v1.tar")):
        answer = target.session.post(f"{target.stack.url}/v2/{SEEDED}/blobs/uploads/",
                                     params={"digest": digests.of(data)}, data=data, headers=headers, timeout=10)
        assert answer.status_code == 201, answer.text
        descriptors.append({"mediaType": media_type, "digest": digests.of(data), "size": len(data)})
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": descriptors[0], "layers": descriptors[1:]}
    answer = target.session.put(f"{target.stack.url}/v2/{SEEDED}/manifests/v1", json=manifest,
                                headers={**headers, "Content-Type": str(manifest["mediaType"])}, timeout=10)
    assert answer.status_code == 201, answer.text


def _load(target: Target) -> schemathesis.BaseSchema:
    """The document as the registry serves it, aimed at this registry."""
    config = schemathesis.Config.from_dict({"seed": SEED, "base-url": target.stack.url,
                                            "generation": {"database": "none"}})
    return schemathesis.openapi.from_url(f"{target.stack.url}/openapi.yaml", config=config)


def _caller(target: Target, case: Any) -> tuple[str, str] | None:
    """Who sends this case: in token mode, the pushing account for its own namespace, else nobody."""
    params = case.path_parameters or {}
    return target.user if "c2" in params or "c1" not in params else None


def call_and_check(target: Target, case: Any) -> Any:
    """Sends a case and applies every check; the refusal check compares snapshots."""
    name = repository_of(case.path_parameters)
    before: Snapshot = snapshot(target, case)
    response = case.call(session=target.session, headers=target.headers_as(_caller(target, case), name),
                         allow_redirects=False, timeout=30)
    case.validate_response(response, checks=CHECKS)
    if response.status_code == 201 and "/manifests/" in case.path:
        target.accepted.add(response.headers.get("Docker-Content-Digest", ""))
    if 400 <= response.status_code < 500:
        problems = left_behind(target, case, before, response)
        assert not problems, (f"{case.method} {case.formatted_path} answered {response.status_code} but changed "
                              f"state: {problems}\n{case.as_curl_command()}")
    return response


def _fixed_names(target: Target, operation: Any) -> list[dict[str, str]]:
    """Path parameters pinned for some of an operation's examples (the rest are generated)."""
    names = {p.name for p in operation.path_parameters}
    pinned: list[dict[str, str]] = []
    if "c2" in names and target.mode == "token":
        pinned.append({"c1": "fuzz"})  # the account's namespace; other names would only be refused
    if names >= {"c1", "c2"} and "c3" not in names:
        pinned.append({"c1": "fuzz", "c2": "seed"})
    return pinned


def _strategy(target: Target, operation: Any, mode: GenerationMode) -> Any:
    pinned = _fixed_names(target, operation)
    if not pinned:
        return operation.as_strategy(generation_mode=mode)
    forced = [operation.as_strategy(generation_mode=mode, path_parameters=p) for p in pinned]
    if target.mode == "token" and "c2" in {p.name for p in operation.path_parameters}:
        return strategies.one_of(*forced)
    return strategies.one_of(operation.as_strategy(generation_mode=mode), *forced)


def test_every_operation_conforms_and_refusals_leave_no_state(target: Target) -> None:
    schema = _load(target)
    failures: list[str] = []
    counted = {"examples": 0, "operations": 0}
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        counted["operations"] += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @SETTINGS
            @hypothesis.given(case=_strategy(target, operation, mode))
            def run(case: Any) -> None:
                counted["examples"] += 1
                call_and_check(target, case)

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                continue  # a negative mode with nothing to negate
            except (Exception, BaseExceptionGroup) as exc:  # every operation's failure, not just the first
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    print(f"\n{target.mode}: {counted['operations']} operations, {counted['examples']} examples, "
          f"{time.monotonic() - started:.1f}s")
    assert not failures, "\n\n".join(failures)


def test_linked_operations_conform_and_refusals_leave_no_state(target: Target) -> None:
    schema = _load(target)
    base = schema.as_state_machine()

    class Workflow(base):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {}

        def call(self, case: Any, **kwargs: Any) -> Any:
            return call_and_check(target, case)

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None,
                              **kwargs: Any) -> None:
            return None  # call_and_check has validated it

    started = time.monotonic()
    Workflow.run(settings=hypothesis.settings(SETTINGS, max_examples=STATEFUL_EXAMPLES, stateful_step_count=8))
    print(f"\n{target.mode}: stateful {time.monotonic() - started:.1f}s")


def test_the_document_is_served_publicly_and_cacheably(target: Target) -> None:
    answer = requests.get(f"{target.stack.url}/openapi.yaml", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("application/yaml")
    assert "max-age" in answer.headers["Cache-Control"] and answer.headers["ETag"]
    assert answer.text.count("openapi: 3.1.0") == 1
    again = requests.get(f"{target.stack.url}/openapi.yaml", headers={"If-None-Match": answer.headers["ETag"]},
                         timeout=10)
    assert again.status_code == 304 and not again.content
