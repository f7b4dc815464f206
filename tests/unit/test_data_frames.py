"""Hand-framed data messages are byte for byte what protobuf writes (services/common/data_frames.py)."""

from __future__ import annotations

import pytest

from services.common import data_frames
from services.gen.wharf.blobstore.v1 import blobstore_pb2 as bpb

SIZES = [1, 127, 128, 16_383, 16_384, 1024 * 1024, 2_097_151, 2_097_152 + 5]


@pytest.mark.parametrize("message", [bpb.AppendRequest, bpb.PutRequest])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_a_data_piece_is_framed_as_protobuf_frames_it(message: type, size: int, kind: type) -> None:
    data = bytes(i % 251 for i in range(size))
    framed = data_frames.serializer(message, "data")(kind(data))
    assert type(framed) is bytes
    assert framed == message(data=data).SerializeToString()
    assert message.FromString(framed).data == data


def test_an_empty_piece_is_an_empty_message() -> None:
    assert data_frames.serializer(bpb.AppendRequest, "data")(b"") == b""
    assert bpb.AppendRequest.FromString(b"") == bpb.AppendRequest()


def test_a_message_is_serialized_by_protobuf() -> None:
    first = bpb.AppendRequest(upload=bpb.UploadRef(upload_id="u", repository="r"), offset=7, commit_digest="d",
                              data=b"x")
    assert data_frames.serializer(bpb.AppendRequest, "data")(first) == first.SerializeToString()
