"""services/ui/image.py against hostile pushed content: JSON nested past the parser, and the
worker-wide memo of tag rows staying bounded."""

from __future__ import annotations

from services.ui import image


def test_json_nested_past_the_parser_is_no_error() -> None:
    deep = b"[" * 100000 + b"]" * 100000
    assert image.parse(b'{"a":' + deep + b"}") == {}
    assert image.pretty(deep) == deep.decode()
    nested: list[object] = []
    for _ in range(100000):
        nested = [nested]
    assert image.text(nested) == "(nested too deeply to show)"
    assert image.config_summary({"config": {"Entrypoint": [nested], "Labels": {"a": nested}}})["entrypoint"] == [
        "(nested too deeply to show)"]


def test_row_summaries_keep_the_most_recently_used_within_their_bound() -> None:
    memo = image.Summaries(limit=3)
    for number in range(5):
        memo.put("a/b", image.Summary(f"sha256:{number}", "t", number, ()))
    assert memo.get("a/b", "sha256:0") is None and memo.get("a/b", "sha256:1") is None
    assert memo.get("a/b", "sha256:2") is not None  # now the most recently used
    memo.put("a/b", image.Summary("sha256:9", "t", 9, ()))
    assert memo.get("a/b", "sha256:3") is None and memo.get("a/b", "sha256:2") is not None
    assert memo.get("c/d", "sha256:2") is None  # per repository
