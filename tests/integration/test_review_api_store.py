"""Hostile review of the registry API's metadata store (2026-12-03): what a listing costs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aredis

from services.common import digests, mediatypes
from services.metadata.store import Descriptor, MetadataStore

SUBJECT_BODY = b"subject"
# Referrers with large annotations: what a pusher may store under any subject it can push to.
REFERRERS, ANNOTATION = 12, 200_000


@pytest.fixture()
def store(redis_client: redis.Redis, redis_url: str) -> Iterator[tuple[MetadataStore, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    yield MetadataStore(aredis.Redis.from_url(redis_url)), loop
    loop.close()


def _sent(client: redis.Redis) -> int:
    return int(client.info("stats")["total_net_output_bytes"])


def test_a_page_of_referrers_reads_that_page_not_every_referrer(
        store: tuple[MetadataStore, asyncio.AbstractEventLoop], redis_client: redis.Redis) -> None:
    """Every page (an empty filtered answer too) read the subject's whole referrers hash: 24 pulls of
    a subject with 72 MB of referrers held the metadata service at 900 MB. Now the descriptors are
    read in bounded pieces from the cursor on, so a page costs about what it holds."""
    metadata, loop = store
    config = digests.of(b"{}")
    loop.run_until_complete(metadata.link_blob("repo", config, 2))
    subject = digests.of(SUBJECT_BODY)
    loop.run_until_complete(metadata.put_manifest("repo", subject, mediatypes.OCI_MANIFEST, SUBJECT_BODY, [],
                                                  [config], [], "", None))
    referrers = []
    for i in range(REFERRERS):
        body = b"sig%d" % i
        digest = digests.of(body)
        kind = "application/x.odd" if i % 2 else "application/x.even"
        descriptor = Descriptor(mediatypes.OCI_MANIFEST, digest, len(body), kind, {"k": f"{i}" + "x" * ANNOTATION})
        loop.run_until_complete(metadata.put_manifest("repo", digest, mediatypes.OCI_MANIFEST, body, [], [config],
                                                      [], subject, descriptor))
        referrers.append((digest, kind))
    referrers.sort()

    before = _sent(redis_client)
    page, more = loop.run_until_complete(metadata.list_referrers("repo", subject, "", "", 3 * ANNOTATION))
    read = _sent(redis_client) - before
    assert more and [d.digest for d in page] == [d for d, _ in referrers[:len(page)]] and len(page) >= 1
    assert read < 6 * ANNOTATION, f"one page of ~{len(page)} referrers read {read} bytes out of Redis"

    # Pages, cursors and the filter answer as before.
    for kind in ("", "application/x.odd"):
        seen, after = [], ""
        while True:
            page, more = loop.run_until_complete(metadata.list_referrers("repo", subject, kind, after,
                                                                         3 * ANNOTATION))
            seen += [d.digest for d in page]
            if not more:
                break
            after = page[-1].digest
        assert seen == [d for d, k in referrers if not kind or k == kind]
    last = referrers[-1][0]
    assert loop.run_until_complete(metadata.list_referrers("repo", subject, "", last)) == ([], False)
    middle = referrers[5][0]
    page, more = loop.run_until_complete(metadata.list_referrers("repo", subject, "", middle))
    assert [d.digest for d in page] == [d for d, _ in referrers[6:]] and not more
