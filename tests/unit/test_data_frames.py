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


@pytest.mark.parametrize("size", SIZES)
def test_a_chunk_framed_by_the_blob_store_is_a_chunk_message(size: int) -> None:
    data = bytes(i % 253 for i in range(size))
    framed = data_frames.framer(bpb.Chunk, "data")(data)
    assert framed == bpb.Chunk(data=data).SerializeToString()
    assert data_frames.deserializer(bpb.Chunk, "data")(framed) == data


@pytest.mark.parametrize("message", [
    bpb.Chunk(),  # empty: no frame at all
    bpb.Chunk(data=b"abc", total=9),  # another field after the data
    bpb.Chunk(total=3, data=b"abc"),
    bpb.Chunk(stored=True),
])
def test_anything_but_a_lone_data_frame_is_read_as_protobuf_reads_it(message: bpb.Chunk) -> None:
    raw = message.SerializeToString()
    assert data_frames.deserializer(bpb.Chunk, "data")(raw) == message.data


@pytest.mark.parametrize("raw", [
    b"\x0a\x05abc",  # a length past the end
    b"\x0a\x80",  # a varint cut short
    b"\x0a" + b"\xff" * 11,  # a varint longer than ten bytes
    b"\x0a\x01a\x0a\x01b",  # the field twice: protobuf keeps the last
])
def test_a_malformed_or_repeated_frame_is_left_to_protobuf(raw: bytes) -> None:
    try:
        expected: bytes | type[Exception] = bpb.Chunk.FromString(raw).data
    except Exception as exc:  # whatever protobuf raises, the deserializer raises too
        expected = type(exc)
    if isinstance(expected, bytes):
        assert data_frames.deserializer(bpb.Chunk, "data")(raw) == expected
    else:
        with pytest.raises(expected):
            data_frames.deserializer(bpb.Chunk, "data")(raw)


@pytest.mark.parametrize("message", [bpb.AppendRequest, bpb.PutRequest])
@pytest.mark.parametrize("size", SIZES)
def test_a_pushed_data_piece_arrives_as_its_bytes(message: type, size: int) -> None:
    """The blob store's side of a push: a lone data frame becomes a DataOnly of those bytes."""
    data = bytes(i % 241 for i in range(size))
    got = data_frames.request_deserializer(message)(data_frames.serializer(message, "data")(data))
    assert isinstance(got, data_frames.DataOnly)
    assert got.data == data and type(got.data) is bytes


@pytest.mark.parametrize("sent", [
    bpb.AppendRequest(upload=bpb.UploadRef(upload_id="u", repository="r"), offset=7, data=b"x"),
    bpb.AppendRequest(commit_digest="sha256:" + "0" * 64),
    bpb.AppendRequest(),
    bpb.PutRequest(digest="sha256:" + "1" * 64, data=b"abc"),
])
def test_any_other_pushed_message_is_read_as_protobuf_reads_it(sent: object) -> None:
    raw = sent.SerializeToString()  # type: ignore[attr-defined]
    got = data_frames.request_deserializer(type(sent))(raw)
    assert type(got) is type(sent) and got == sent
