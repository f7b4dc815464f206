"""``no-latest``: refuses the tag ``latest`` (release pipelines should push versions).

    policies:
      - name: no-latest
        repositories: ["prod/**"]
        options: {tags: [latest, dev]}     # optional: the tags refused (default: latest)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.api.admission import INTERFACE, AdmissionPolicy, Candidate


class NoLatest(AdmissionPolicy):
    wharf_interface = INTERFACE

    def __init__(self, tags: frozenset[str]) -> None:
        self._tags = tags

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> NoLatest:
        tags = options.get("tags", ["latest"])
        if not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags):
            raise ValueError("tags: a list of tag names")
        return cls(frozenset(tags))

    def admit(self, candidate: Candidate) -> str | None:
        refused = sorted(self._tags & set(candidate.tags))
        return f"the tag {refused[0]} is not accepted here; push a version" if refused else None
