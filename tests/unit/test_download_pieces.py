"""Downloads that pass through a gateway worker's memory read smaller pieces as more are in
flight, and stop counting once closed or exhausted (services/api/views/blobs.py)."""

from __future__ import annotations

from services.api.request_input import IO_CHUNK
from services.api.views import blobs


def test_pieces_shrink_with_the_downloads_in_flight_and_the_count_comes_back() -> None:
    before = blobs._downloads, blobs._pieces
    cancelled: list[int] = []
    held = [blobs._Download() for _ in range(500)]
    try:
        assert held[0].piece == IO_CHUNK  # alone: full pieces
        assert held[-1].piece == blobs.MIN_DOWNLOAD_PIECE  # 500 at once: the floor
        sizes = [download.piece for download in held]
        assert sizes == sorted(sizes, reverse=True)
        # What they may hold at once (two pieces each) stays within the budget, but for the
        # floor each: the first to arrive took what was free, the rest share what they left.
        assert sum(2 * size for size in sizes) <= blobs.DOWNLOAD_BUDGET + 2 * 500 * blobs.MIN_DOWNLOAD_PIECE
    finally:
        for number, download in enumerate(held):
            download.attach(b"first", iter([b"rest"]), lambda n=number: cancelled.append(n))
            if number % 2:
                assert list(download) == [b"first", b"rest"]  # exhausted: released
            download.close()
            download.close()  # closed twice: released once
    assert (blobs._downloads, blobs._pieces) == before
    alone = blobs._Download()
    assert alone.piece == IO_CHUNK  # all closed: full pieces again
    alone.close()
    assert sorted(cancelled) == list(range(500))
