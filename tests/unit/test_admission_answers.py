"""Admission policies that answer oddly, or late, refuse the push (fail closed)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gevent
import pytest

from services.api import admission
from services.api.admission import Admission, AdmissionPolicy, Candidate, _Rule


class _Answers(AdmissionPolicy):
    def __init__(self, answer: Any, wait: float = 0.0) -> None:
        self.answer, self.wait = answer, wait

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> AdmissionPolicy:
        return cls(None)

    def admit(self, candidate: Candidate) -> Any:
        if self.wait:
            gevent.sleep(self.wait)  # a wait on a peer, as gevent's sockets wait
        return self.answer


def _refusal(policy: AdmissionPolicy) -> str | None:
    candidate = Candidate(repository="team/app", digest="sha256:" + "0" * 64, media_type="", artifact_type="",
                          size=2, tags=(), annotations={}, referenced_bytes=0, subject="",
                          account="")
    return Admission((_Rule("odd", policy, ()),)).refusal(candidate)


@pytest.mark.parametrize("answer", [False, 0, "", [], b"no"])
def test_an_answer_that_is_neither_none_nor_a_message_refuses(answer: Any) -> None:
    refusal = _refusal(_Answers(answer))
    assert refusal is not None and "odd" in refusal and "refused" in refusal


def test_none_admits_and_a_message_refuses_with_it() -> None:
    assert _refusal(_Answers(None)) is None
    assert _refusal(_Answers("needs a signature")) == "odd: needs a signature"


def test_a_policy_that_does_not_answer_in_time_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission, "ADMIT_SECONDS", 0.2)
    refusal = _refusal(_Answers(None, wait=30))
    assert refusal is not None and "did not answer within 0.2 s" in refusal
