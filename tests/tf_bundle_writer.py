"""Test-only writer of TensorFlow V2 checkpoint bundles, to build fixtures the reader must accept or refuse.

It writes the same layout TensorFlow's BundleWriter does (an SSTable ``.index`` plus raw
``.data-*`` shards) with knobs TensorFlow does not expose: tiny data blocks (many index
entries), any shard count, hand-made BundleEntryProtos, a snappy compression flag.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from bigbird_pegasus_hub.conversion.tf_checkpoint import masked_crc32c

# TensorFlow DataType enum values, written out independently of the reader's table.
TF_DTYPES = {
    torch.float32: 1,
    torch.float64: 2,
    torch.int32: 3,
    torch.uint8: 4,
    torch.int16: 5,
    torch.int8: 6,
    torch.complex64: 8,
    torch.int64: 9,
    torch.bool: 10,
    torch.bfloat16: 14,
    torch.complex128: 18,
    torch.float16: 19,
}
DT_STRING = 7

COMPRESSION_NONE, COMPRESSION_SNAPPY = 0, 1
LITTLE_ENDIAN, BIG_ENDIAN = 0, 1
_TABLE_MAGIC = 0xDB4775248B80FB57


# -- protobuf wire format ----------------------------------------------------------------------------


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values use ten bytes, like protobuf
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_bytes(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def field_fixed32(number: int, value: int) -> bytes:
    return varint(number << 3 | 5) + value.to_bytes(4, "little")


def bundle_header(num_shards: int, endianness: int = LITTLE_ENDIAN) -> bytes:
    version = field_varint(1, 1)  # VersionDef.producer
    return field_varint(1, num_shards) + field_varint(2, endianness) + field_bytes(3, version)


def bundle_entry(
    dtype: int,
    shape: tuple[int, ...],
    *,
    shard_id: int = 0,
    offset: int = 0,
    size: int = 0,
    crc: int = 0,
    sliced: bool = False,
) -> bytes:
    """Encode a BundleEntryProto; ``sliced`` adds one TensorSliceProto (a partitioned variable)."""
    shape_proto = b"".join(field_bytes(2, field_varint(1, dim)) for dim in shape)
    entry = (
        field_varint(1, dtype)
        + field_bytes(2, shape_proto)
        + field_varint(3, shard_id)
        + field_varint(4, offset)
        + field_varint(5, size)
        + field_fixed32(6, crc)
    )
    if sliced:
        extent = field_varint(1, 0) + field_varint(2, 1)  # start 0, length 1
        entry += field_bytes(7, field_bytes(1, extent))
    return entry


# -- SSTable -----------------------------------------------------------------------------------------


def block(entries: list[tuple[bytes, bytes]], restart_interval: int = 3) -> bytes:
    """Encode a block: prefix-compressed entries, then the restart offsets and their count."""
    out, restarts, previous_key = bytearray(), [], b""
    for position, (key, value) in enumerate(entries):
        shared = 0
        if position % restart_interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(key), len(previous_key)) and key[shared] == previous_key[shared]:
                shared += 1
        out += varint(shared) + varint(len(key) - shared) + varint(len(value)) + key[shared:] + value
        previous_key = key
    restarts = restarts or [0]
    return bytes(out) + b"".join(r.to_bytes(4, "little") for r in restarts) + len(restarts).to_bytes(4, "little")


def _append_block(table: bytearray, contents: bytes, compression: int) -> bytes:
    """Append a block and its trailer; return its encoded BlockHandle."""
    handle = varint(len(table)) + varint(len(contents))
    type_and_contents = contents + bytes([compression])
    table += type_and_contents + masked_crc32c(type_and_contents).to_bytes(4, "little")
    return handle


def write_table(
    path: Path, entries: list[tuple[bytes, bytes]], *, entries_per_block: int, compression: int = COMPRESSION_NONE
) -> int:
    """Write sorted ``entries`` as an SSTable; return the number of data blocks."""
    table, index_entries = bytearray(), []
    for start in range(0, len(entries), entries_per_block):
        chunk = entries[start : start + entries_per_block]
        handle = _append_block(table, block(chunk), compression)
        index_entries.append((chunk[-1][0], handle))  # the block's last key separates it from the next
    metaindex_handle = _append_block(table, block([]), COMPRESSION_NONE)
    index_handle = _append_block(table, block(index_entries, restart_interval=1), COMPRESSION_NONE)
    table += (metaindex_handle + index_handle).ljust(40, b"\0") + _TABLE_MAGIC.to_bytes(8, "little")
    path.write_bytes(table)
    return len(index_entries)


# -- bundle ------------------------------------------------------------------------------------------


def write_bundle(
    prefix: Path,
    tensors: Mapping[str, torch.Tensor],
    *,
    num_shards: int = 1,
    entries_per_block: int = 1000,
    raw_entries: Mapping[bytes, bytes] | None = None,
    compression: int = COMPRESSION_NONE,
    endianness: int = LITTLE_ENDIAN,
) -> int:
    """Write ``tensors`` round-robin over ``num_shards`` data files plus the index; return its data block count.

    ``raw_entries`` are added to the index as they are (hand-made BundleEntryProtos, slice keys).
    """
    shards = [bytearray() for _ in range(num_shards)]
    entries = {b"": bundle_header(num_shards, endianness), **(raw_entries or {})}
    for position, (name, tensor) in enumerate(sorted(tensors.items())):
        shard_id = position % num_shards
        data = tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        entries[name.encode()] = bundle_entry(
            TF_DTYPES[tensor.dtype],
            tuple(tensor.shape),
            shard_id=shard_id,
            offset=len(shards[shard_id]),
            size=len(data),
            crc=masked_crc32c(data),
        )
        shards[shard_id] += data
    for shard_id, data in enumerate(shards):
        Path(f"{prefix}.data-{shard_id:05d}-of-{num_shards:05d}").write_bytes(data)
    return write_table(
        Path(f"{prefix}.index"), sorted(entries.items()), entries_per_block=entries_per_block, compression=compression
    )
