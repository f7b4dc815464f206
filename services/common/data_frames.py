"""Messages that carry only a blob's bytes, framed by hand on the bulk paths.

A push streams a blob to the blob store as a first message (the upload, the offset, the digest)
followed by messages that hold nothing but a ``bytes`` field. Built as protobuf messages, each
piece was copied twice before gRPC's own copy: into the message, then into its serialized
form. A data-only message is just the field's tag, the length as a varint and the bytes
(protobuf's wire format: https://protobuf.dev/programming-guides/encoding/), so the serializer
writes that in one copy, and anything else (the first message) is serialized as usual. The
bytes on the wire are the same either way, which ``tests/unit/test_data_frames.py`` checks
against protobuf itself.

The receiving side takes a data-only message's bytes out in one copy too
(``request_deserializer``), instead of building a message around them.

Downloads go the other way: the blob store frames each chunk of a Read once, in its storage
thread, and the gateway takes the bytes back out of the frame in one copy. A chunk that waits for
a slow reader is then held twice (the frame, gRPC's copy of it) instead of four times, which is
what a thousand stalled downloads cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_LENGTH_DELIMITED = 2
_BUFFERS = (bytes, bytearray, memoryview)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(message_class: type[Any], field: str) -> bytes:
    return _varint(message_class.DESCRIPTOR.fields_by_name[field].number << 3 | _LENGTH_DELIMITED)


def framer(message_class: type[Any], field: str) -> Callable[[bytes | bytearray | memoryview], bytes]:
    """Bytes to the serialized ``message_class`` with only ``field`` set to them."""
    tag = _tag(message_class, field)

    def frame(data: bytes | bytearray | memoryview) -> bytes:
        if not len(data):
            return b""  # proto3 leaves an empty field out: an empty message
        return b"".join((tag, _varint(len(data)), data))
    return frame


def serializer(message_class: type[Any], field: str) -> Callable[[Any], bytes]:
    """For a gRPC request stream of ``message_class``: a protobuf message is serialized as
    protobuf does; a bytes-like item is taken as a message with only ``field`` set to it."""
    frame = framer(message_class, field)

    def serialize(item: Any) -> bytes:
        if isinstance(item, _BUFFERS):
            return frame(item)
        return item.SerializeToString()  # type: ignore[no-any-return]
    return serialize


def _read_varint(raw: bytes, start: int) -> tuple[int, int]:
    """The varint at ``start`` and where it ends; (-1, 0) when there is none (cut short, or longer
    than the 10 bytes a 64-bit value takes)."""
    value = shift = 0
    for index in range(start, min(len(raw), start + 10)):
        value |= (raw[index] & 0x7F) << shift
        if raw[index] < 0x80:
            return value, index + 1
        shift += 7
    return -1, 0


def _lone_frame(raw: bytes, tag: bytes) -> int:
    """Where the bytes of ``raw`` start when it is one frame of the field ``tag`` names, else -1."""
    if raw.startswith(tag):
        length, start = _read_varint(raw, len(tag))
        if start + length == len(raw):
            return start
    return -1


def deserializer(message_class: type[Any], field: str) -> Callable[[bytes], bytes]:
    """For a gRPC response stream of ``message_class`` messages that carry ``field`` alone: that
    field's bytes, sliced out of a lone frame in one copy. Anything else (other fields, a repeated
    frame, an empty message) is parsed by protobuf, so the answer is what protobuf would give."""
    tag = _tag(message_class, field)

    def deserialize(raw: bytes) -> bytes:
        start = _lone_frame(raw, tag)
        if start >= 0:
            return raw[start:]
        return getattr(message_class.FromString(raw), field)  # type: ignore[no-any-return]
    return deserialize


class DataOnly:
    """A request-stream message that carried its ``data`` field alone, as those bytes without a
    protobuf message around them (``request_deserializer``)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def request_deserializer(message_class: type[Any]) -> Callable[[bytes], Any]:
    """For a gRPC request stream of ``message_class`` (a push's pieces, on the receiving side):
    a lone ``data`` frame becomes a :class:`DataOnly` holding the bytes, sliced out in one copy
    (protobuf copied them twice, into the message and out of it again, and kept both while the
    piece was written); any other message is parsed by protobuf."""
    tag = _tag(message_class, "data")

    def deserialize(raw: bytes) -> Any:
        start = _lone_frame(raw, tag)
        if start >= 0:
            return DataOnly(raw[start:])
        return message_class.FromString(raw)
    return deserialize
