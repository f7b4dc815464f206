"""Messages that carry only a blob's bytes, framed by hand on the bulk paths.

A push streams a blob to the blob store as a first message (the upload, the offset, the digest)
followed by messages that hold nothing but a ``bytes`` field. Built as protobuf messages, each
piece was copied twice before gRPC's own copy: into the message, then into its serialized
form. A data-only message is just the field's tag, the length as a varint and the bytes
(protobuf's wire format: https://protobuf.dev/programming-guides/encoding/), so the serializer
writes that in one copy, and anything else (the first message) is serialized as usual. The
bytes on the wire are the same either way, which ``tests/unit/test_data_frames.py`` checks
against protobuf itself.
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


def serializer(message_class: type[Any], field: str) -> Callable[[Any], bytes]:
    """For a gRPC request stream of ``message_class``: a protobuf message is serialized as
    protobuf does; a bytes-like item is taken as a message with only ``field`` set to it."""
    number = message_class.DESCRIPTOR.fields_by_name[field].number
    tag = _varint(number << 3 | _LENGTH_DELIMITED)

    def serialize(item: Any) -> bytes:
        if isinstance(item, _BUFFERS):
            if not len(item):
                return b""  # proto3 leaves an empty field out: an empty message
            return b"".join((tag, _varint(len(item)), item))
        return item.SerializeToString()  # type: ignore[no-any-return]
    return serialize
