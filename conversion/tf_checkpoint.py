"""Read TensorFlow V2 checkpoint bundles without TensorFlow.

A V2 checkpoint ``PREFIX`` (for example ``model.ckpt-1000``) is a set of files:

* ``PREFIX.index``: an SSTable (LevelDB "table" format) that maps every tensor name to a
  ``BundleEntryProto`` (dtype, shape, data shard, byte offset, byte size, masked crc32c); the empty
  key holds a ``BundleHeaderProto`` (number of shards, endianness).
* ``PREFIX.data-00000-of-0000N``: the raw little-endian tensor bytes, concatenated.

This module decodes both by hand (SSTable blocks, protobuf wire format), so converting a Google
checkpoint needs no TensorFlow.  Tensors are read one at a time by seek + read, never whole
shards.  Example::

    ckpt = TFCheckpoint("bigbird-pegasus-large-arxiv/model.ckpt-300000")
    for name in ckpt.keys():
        print(name, ckpt.shape(name), ckpt.dtype(name))
    embeddings = ckpt.read("pegasus/embeddings/word_embeddings")

Not supported, each refused with a :class:`TFCheckpointError`: snappy-compressed index blocks,
partitioned (sliced) variables, big-endian bundles, string/resource/variant tensors.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import torch

__all__ = ["TFCheckpoint", "TFCheckpointError", "UnknownTensorError", "crc32c", "masked_crc32c"]


class TFCheckpointError(ValueError):
    """A checkpoint cannot be read; the message names the file, the problem and a way out."""


class UnknownTensorError(TFCheckpointError, KeyError):
    """The checkpoint holds no tensor of the requested name (also a ``KeyError``)."""

    def __str__(self) -> str:
        # KeyError would print the message quoted, as if it were a key.
        return str(self.args[0])


# --------------------------------------------------------------------------------------------------
# crc32c (Castagnoli), as TensorFlow stores it: masked so that a crc of data containing crcs stays
# well distributed. google-crc32c computes it in C (GB/s).

_CRC_MASK_DELTA = 0xA282EAD8


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """Return the CRC-32C (Castagnoli) of ``data``."""
    return google_crc32c.value(bytes(data))


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """Return the crc32c of ``data`` masked the way LevelDB and TensorFlow store it."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


# --------------------------------------------------------------------------------------------------
# Byte-level decoding shared by the SSTable and protobuf readers.


class _CorruptError(Exception):
    """Malformed bytes; converted to a TFCheckpointError that names the file."""


class _Cursor:
    """Sequential reader over a byte buffer; reading past its end raises _CorruptError."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._position = 0

    def at_end(self) -> bool:
        return self._position >= len(self._data)

    def varint(self) -> int:
        result = 0
        for shift in range(0, 70, 7):
            byte = self.take(1)[0]
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
        raise _CorruptError("varint longer than 10 bytes")

    def fixed32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def take(self, count: int) -> bytes:
        end = self._position + count
        if end > len(self._data):
            raise _CorruptError(f"record needs {count} bytes at offset {self._position}, past the end")
        chunk = self._data[self._position : end]
        self._position = end
        return chunk


# --------------------------------------------------------------------------------------------------
# SSTable ("table" format): footer -> index block -> data blocks -> prefix-compressed entries.

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48  # two padded BlockHandles (40 bytes) + fixed64 magic
_BLOCK_TRAILER_SIZE = 5  # compression type byte + masked crc32c of contents and type
_COMPRESSION_NONE = 0
_COMPRESSION_SNAPPY = 1


@dataclass(frozen=True)
class _BlockHandle:
    offset: int
    size: int


def _parse_block_handle(cursor: _Cursor) -> _BlockHandle:
    return _BlockHandle(offset=cursor.varint(), size=cursor.varint())


def _index_block_handle(table: bytes) -> _BlockHandle:
    if len(table) < _FOOTER_SIZE:
        raise _CorruptError(f"{len(table)} bytes is shorter than a table footer ({_FOOTER_SIZE} bytes)")
    footer = table[-_FOOTER_SIZE:]
    if int.from_bytes(footer[-8:], "little") != _TABLE_MAGIC:
        raise _CorruptError("no SSTable magic number at the end")
    cursor = _Cursor(footer[:-8])
    _parse_block_handle(cursor)  # metaindex: TensorFlow writes no filter or stats blocks we need
    return _parse_block_handle(cursor)


def _block_contents(table: bytes, handle: _BlockHandle) -> bytes:
    end = handle.offset + handle.size
    if end + _BLOCK_TRAILER_SIZE > len(table) - _FOOTER_SIZE:
        raise _CorruptError(f"block [{handle.offset}, {end}) lies outside the file")
    contents = table[handle.offset : end]
    compression = table[end]
    stored_crc = int.from_bytes(table[end + 1 : end + _BLOCK_TRAILER_SIZE], "little")
    if masked_crc32c(table[handle.offset : end + 1]) != stored_crc:
        raise _CorruptError(f"block at offset {handle.offset} fails its crc32c check")
    if compression == _COMPRESSION_SNAPPY:
        raise TFCheckpointError(
            "snappy-compressed block, which this reader cannot decompress (TensorFlow writes checkpoint "
            "indexes uncompressed); re-save the checkpoint with TensorFlow"
        )
    if compression != _COMPRESSION_NONE:
        raise _CorruptError(f"unknown block compression type {compression}")
    return contents


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield (key, value) pairs; each key shares a prefix with the previous one."""
    if len(block) < 4:
        raise _CorruptError("block shorter than its restart count")
    restart_count = int.from_bytes(block[-4:], "little")
    entries_end = len(block) - 4 - 4 * restart_count
    if entries_end < 0:
        raise _CorruptError(f"block claims {restart_count} restart points, more than fit")
    cursor = _Cursor(block[:entries_end])
    key = b""
    while not cursor.at_end():
        shared, unshared, value_size = cursor.varint(), cursor.varint(), cursor.varint()
        if shared > len(key):
            raise _CorruptError(f"entry shares {shared} bytes with a {len(key)}-byte key")
        key = key[:shared] + cursor.take(unshared)
        yield key, cursor.take(value_size)


def _table_entries(table: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield every (key, value) of an SSTable, in key order, across all its data blocks."""
    index_block = _block_contents(table, _index_block_handle(table))
    for _, handle_bytes in _block_entries(index_block):
        data_block = _block_contents(table, _parse_block_handle(_Cursor(handle_bytes)))
        yield from _block_entries(data_block)


# --------------------------------------------------------------------------------------------------
# Protobuf wire format, just enough for BundleHeaderProto and BundleEntryProto.

_WIRE_VARINT, _WIRE_FIXED64, _WIRE_LENGTH_DELIMITED, _WIRE_FIXED32 = 0, 1, 2, 5


def _proto_fields(message: bytes) -> Iterator[tuple[int, int | bytes]]:
    """Yield (field number, value): ints for varint/fixed fields, bytes for length-delimited ones."""
    cursor = _Cursor(message)
    while not cursor.at_end():
        tag = cursor.varint()
        field_number, wire_type = tag >> 3, tag & 7
        if wire_type == _WIRE_VARINT:
            yield field_number, cursor.varint()
        elif wire_type == _WIRE_FIXED64:
            yield field_number, int.from_bytes(cursor.take(8), "little")
        elif wire_type == _WIRE_LENGTH_DELIMITED:
            yield field_number, cursor.take(cursor.varint())
        elif wire_type == _WIRE_FIXED32:
            yield field_number, cursor.fixed32()
        else:
            raise _CorruptError(f"unsupported protobuf wire type {wire_type}")


def _as_int64(value: int) -> int:
    """Reinterpret a decoded varint as a signed int64 (negative numbers use all 64 bits)."""
    return value - (1 << 64) if value >= 1 << 63 else value


_ENDIANNESS_BIG = 1


def _parse_bundle_header(message: bytes) -> int:
    """Return the shard count of a BundleHeaderProto; refuse big-endian bundles."""
    num_shards, endianness = 0, 0
    for field_number, value in _proto_fields(message):
        if field_number == 1:
            num_shards = value
        elif field_number == 2:
            endianness = value
    if endianness == _ENDIANNESS_BIG:
        raise TFCheckpointError("the bundle was written big-endian; only little-endian bundles are supported")
    if num_shards < 1:
        raise _CorruptError(f"header declares {num_shards} data shards")
    return num_shards


def _parse_dim_size(message: bytes) -> int:
    size = 0
    for field_number, value in _proto_fields(message):
        if field_number == 1:
            size = _as_int64(value)
    return size


def _parse_tensor_shape(message: bytes) -> tuple[int, ...]:
    dims = []
    for field_number, value in _proto_fields(message):
        if field_number == 2:  # dim
            dims.append(_parse_dim_size(value))
        elif field_number == 3 and value:  # unknown_rank
            raise _CorruptError("a saved tensor has unknown rank")
    if any(size < 0 for size in dims):
        raise _CorruptError(f"a saved tensor has unknown dimensions {dims}")
    return tuple(dims)


@dataclass(frozen=True)
class _BundleEntry:
    """Where one tensor's bytes are and how to decode them (a BundleEntryProto)."""

    dtype_enum: int = 0
    shape: tuple[int, ...] = ()
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    masked_crc32c: int = 0
    is_sliced: bool = False


def _parse_bundle_entry(message: bytes) -> _BundleEntry:
    fields: dict[str, object] = {}
    for field_number, value in _proto_fields(message):
        if field_number == 1:
            fields["dtype_enum"] = value
        elif field_number == 2:
            fields["shape"] = _parse_tensor_shape(value)
        elif field_number == 3:
            fields["shard_id"] = value
        elif field_number == 4:
            fields["offset"] = _as_int64(value)
        elif field_number == 5:
            fields["size"] = _as_int64(value)
        elif field_number == 6:
            fields["masked_crc32c"] = value
        elif field_number == 7:
            fields["is_sliced"] = True
    return _BundleEntry(**fields)


def _check_entry_location(name: str, entry: _BundleEntry, num_shards: int) -> None:
    if not 0 <= entry.shard_id < num_shards:
        raise _CorruptError(f"tensor {name!r} is in shard {entry.shard_id} of {num_shards}")
    if entry.offset < 0 or entry.size < 0:
        raise _CorruptError(f"tensor {name!r} has offset {entry.offset} and size {entry.size}")


# --------------------------------------------------------------------------------------------------
# TensorFlow DataType enum -> torch dtype.

_TORCH_DTYPES: dict[int, torch.dtype] = {
    1: torch.float32,
    2: torch.float64,
    3: torch.int32,
    4: torch.uint8,
    5: torch.int16,
    6: torch.int8,
    8: torch.complex64,
    9: torch.int64,
    10: torch.bool,
    14: torch.bfloat16,
    18: torch.complex128,
    19: torch.float16,
}
_UNSUPPORTED_DTYPE_NAMES = {7: "string", 17: "uint16", 20: "resource", 21: "variant", 22: "uint32", 23: "uint64"}


# --------------------------------------------------------------------------------------------------
# Locating the files of a checkpoint.

_INDEX_SUFFIX = ".index"
_DATA_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")
_STATE_FILE_NAME = "checkpoint"
_LATEST_CHECKPOINT_LINE = re.compile(r'^\s*model_checkpoint_path:\s*"(?P<path>[^"]*)"\s*$', re.MULTILINE)


def _resolve_prefix(path: Path) -> Path:
    """Map a prefix, one of its files or a training directory to the checkpoint prefix."""
    if path.is_dir():
        return _prefix_from_state_file(path)
    if path.name.endswith(_INDEX_SUFFIX):
        return path.with_name(path.name[: -len(_INDEX_SUFFIX)])
    return path.with_name(_DATA_SUFFIX.sub("", path.name))


def _prefix_from_state_file(directory: Path) -> Path:
    state_file = directory / _STATE_FILE_NAME
    if not state_file.is_file():
        candidates = sorted(p.name[: -len(_INDEX_SUFFIX)] for p in directory.glob(f"*{_INDEX_SUFFIX}"))
        raise TFCheckpointError(
            f"{directory} is a directory without a '{_STATE_FILE_NAME}' state file; pass a checkpoint "
            f"prefix such as {directory / (candidates[-1] if candidates else 'model.ckpt-1000')}"
        )
    match = _LATEST_CHECKPOINT_LINE.search(state_file.read_text(encoding="utf-8"))
    if match is None:
        raise TFCheckpointError(f"{state_file} has no model_checkpoint_path line; pass the checkpoint prefix instead")
    # Relative paths (Saver(save_relative_paths=True)) are relative to the state file's directory.
    return directory / match["path"]


# --------------------------------------------------------------------------------------------------


class TFCheckpoint:
    """Lazy, read-only view of a TensorFlow V2 checkpoint bundle.

    Args:
        prefix: the checkpoint prefix (``dir/model.ckpt-1000``), its ``.index`` or a ``.data-*``
            file, or a directory whose ``checkpoint`` state file names the checkpoint (the latest one).
        verify: check each tensor's crc32c when it is read (cheap: google-crc32c runs in C).

    The index is read and validated on construction (including that every data shard exists and
    is long enough); tensor bytes are read only by :meth:`read`.

    Raises:
        TFCheckpointError: the files are missing, truncated, corrupt or in an unsupported variant.
    """

    def __init__(self, prefix: str | os.PathLike[str], *, verify: bool = True) -> None:
        self.prefix: Path = _resolve_prefix(Path(prefix))
        self.verify = verify
        self._index_path = self.prefix.with_name(self.prefix.name + _INDEX_SUFFIX)
        self._num_shards, self._entries = self._read_index()
        self._check_data_shards()

    @property
    def num_shards(self) -> int:
        """Number of ``.data-*`` files, from the bundle header."""
        return self._num_shards

    def keys(self) -> list[str]:
        """Tensor names, sorted."""
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor ``name`` (``()`` for scalars)."""
        return self._entry(name).shape

    def dtype(self, name: str) -> torch.dtype:
        """torch dtype that :meth:`read` returns for tensor ``name`` (bfloat16 stays bfloat16)."""
        entry = self._entry(name)
        if entry.dtype_enum not in _TORCH_DTYPES:
            dtype_name = _UNSUPPORTED_DTYPE_NAMES.get(entry.dtype_enum, "unknown")
            raise TFCheckpointError(
                f"tensor {name!r} in {self._index_path} has TensorFlow DataType {entry.dtype_enum} "
                f"({dtype_name}), which this reader cannot decode; skip it or read it with TensorFlow"
            )
        return _TORCH_DTYPES[entry.dtype_enum]

    def read(self, name: str) -> torch.Tensor:
        """Read tensor ``name`` from its data shard (only its own bytes) into a new torch tensor."""
        entry = self._entry(name)
        if entry.is_sliced:
            raise TFCheckpointError(
                f"tensor {name!r} in {self._index_path} is a partitioned variable stored as slices; "
                "this reader does not reassemble slices: restore it with TensorFlow and re-save it unpartitioned"
            )
        dtype = self.dtype(name)
        expected_size = math.prod(entry.shape) * dtype.itemsize
        if entry.size != expected_size:
            raise TFCheckpointError(
                f"tensor {name!r} in {self._index_path} is recorded as {entry.size} bytes, but shape "
                f"{list(entry.shape)} of {dtype} needs {expected_size}; the index is corrupt"
            )
        data = self._read_bytes(name, entry)
        if self.verify and masked_crc32c(data) != entry.masked_crc32c:
            raise TFCheckpointError(
                f"tensor {name!r}: bytes [{entry.offset}, {entry.offset + entry.size}) of "
                f"{self._shard_path(entry.shard_id)} fail their crc32c check; the data file is corrupt "
                "or belongs to another checkpoint, download or copy it again"
            )
        if not data:
            return torch.empty(entry.shape, dtype=dtype)
        return torch.frombuffer(data, dtype=dtype).reshape(entry.shape)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, tensor) in name order, reading each tensor only when it is reached."""
        for name in self._entries:
            yield name, self.read(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.prefix)!r}, tensors={len(self)}, shards={self._num_shards})"

    # -- index ---------------------------------------------------------------------------------------

    def _read_index(self) -> tuple[int, dict[str, _BundleEntry]]:
        table = self._read_index_file()
        try:
            return self._parse_index(table)
        except (_CorruptError, UnicodeDecodeError) as error:
            raise TFCheckpointError(
                f"{self._index_path} is not a readable TensorFlow V2 checkpoint index ({error}); "
                "it may be truncated, corrupt or another kind of file"
            ) from None
        except TFCheckpointError as error:
            raise TFCheckpointError(f"{self._index_path}: {error}") from None

    def _read_index_file(self) -> bytes:
        if not self._index_path.is_file():
            hint = (
                "it looks like a V1 checkpoint or a single file, which this reader does not support"
                if self.prefix.is_file()
                else "pass the checkpoint prefix (e.g. dir/model.ckpt-1000, without '.index') "
                "or a directory with a 'checkpoint' state file"
            )
            raise TFCheckpointError(f"checkpoint index {self._index_path} not found: {hint}")
        return self._index_path.read_bytes()

    def _parse_index(self, table: bytes) -> tuple[int, dict[str, _BundleEntry]]:
        num_shards = None
        entries = {}
        for key, value in _table_entries(table):
            if key == b"":
                num_shards = _parse_bundle_header(value)
            elif not key.startswith(b"\0"):  # keys starting with NUL hold the slices of sliced entries
                entries[key.decode("utf-8")] = _parse_bundle_entry(value)
        if num_shards is None:
            raise _CorruptError("no bundle header entry")
        for name, entry in entries.items():
            _check_entry_location(name, entry, num_shards)
        return num_shards, dict(sorted(entries.items()))

    # -- data ----------------------------------------------------------------------------------------

    def _shard_path(self, shard_id: int) -> Path:
        return self.prefix.with_name(f"{self.prefix.name}.data-{shard_id:05d}-of-{self._num_shards:05d}")

    def _check_data_shards(self) -> None:
        """Fail now, not halfway through a conversion, if a shard is missing or too short."""
        shard_sizes = [self._existing_shard_size(shard_id) for shard_id in range(self._num_shards)]
        for name, entry in self._entries.items():
            if entry.offset + entry.size > shard_sizes[entry.shard_id]:
                raise self._truncated_shard_error(name, entry)

    def _existing_shard_size(self, shard_id: int) -> int:
        path = self._shard_path(shard_id)
        if not path.is_file():
            raise TFCheckpointError(
                f"data shard {path} is missing (the index {self._index_path.name} lists "
                f"{self._num_shards} shard(s)); copy every {self.prefix.name}.data-* file next to the index"
            )
        return path.stat().st_size

    def _truncated_shard_error(self, name: str, entry: _BundleEntry) -> TFCheckpointError:
        path = self._shard_path(entry.shard_id)
        return TFCheckpointError(
            f"data shard {path} is truncated: it has {path.stat().st_size} bytes but tensor {name!r} "
            f"ends at byte {entry.offset + entry.size}; the copy or download was incomplete, fetch the file again"
        )

    def _read_bytes(self, name: str, entry: _BundleEntry) -> bytearray:
        # A bytearray gives torch.frombuffer a writable buffer, so the tensor owns ordinary memory.
        data = bytearray(entry.size)
        with self._shard_path(entry.shard_id).open("rb") as shard:
            shard.seek(entry.offset)
            if shard.readinto(data) != entry.size:  # the file shrank after the constructor checked it
                raise self._truncated_shard_error(name, entry)
        return data

    def _entry(self, name: str) -> _BundleEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise self._unknown_tensor_error(name) from None

    def _unknown_tensor_error(self, name: str) -> UnknownTensorError:
        close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.6)
        hint = f"close names: {', '.join(map(repr, close))}" if close else "see .keys() for the names"
        return UnknownTensorError(f"no tensor {name!r} in {self._index_path} ({len(self)} tensors); {hint}")
