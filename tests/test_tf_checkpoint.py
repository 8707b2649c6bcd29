"""Tests of the TensorFlow-free V2 checkpoint reader, on the real tiny BigBird-Pegasus checkpoints in
fixtures/tf_reference and on bundles written by tf_bundle_writer (valid, odd and broken ones)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from bigbird_pegasus_hub.conversion.tf_checkpoint import (
    TFCheckpoint,
    TFCheckpointError,
    UnknownTensorError,
    crc32c,
    masked_crc32c,
)
from tf_bundle_writer import (
    BIG_ENDIAN,
    COMPRESSION_SNAPPY,
    DT_STRING,
    TF_DTYPES,
    bundle_entry,
    write_bundle,
)

FIXTURES = Path(__file__).parent / "fixtures" / "tf_reference"
MODEL_PREFIX = FIXTURES / "model.ckpt-0"
TRAIN_STEP_PREFIX = FIXTURES / "train_step_ckpt" / "model.ckpt-1"
BOTH_FIXTURES = pytest.mark.parametrize("prefix", [MODEL_PREFIX, TRAIN_STEP_PREFIX], ids=["model", "train_step"])


def listed_variables(variables_txt: Path) -> dict[str, tuple[int, ...]]:
    """Parse tf.train.list_variables() output saved as 'name<TAB>[d0, d1]' lines."""
    rows = (line.split("\t") for line in variables_txt.read_text().splitlines() if line)
    return {name: tuple(json.loads(shape)) for name, shape in rows}


def copy_checkpoint(prefix: Path, destination: Path) -> Path:
    for path in prefix.parent.glob(f"{prefix.name}.*"):
        shutil.copy(path, destination / path.name)
    return destination / prefix.name


def data_shard(prefix: Path) -> Path:
    return prefix.with_name(f"{prefix.name}.data-00000-of-00001")


# -- the real fixture checkpoints --------------------------------------------------------------------


@BOTH_FIXTURES
def test_index_lists_exactly_the_variables_of_variables_txt(prefix: Path) -> None:
    checkpoint = TFCheckpoint(prefix)
    expected = listed_variables(prefix.parent / "variables.txt")

    assert checkpoint.keys() == sorted(expected)
    assert {name: checkpoint.shape(name) for name in checkpoint.keys()} == expected
    assert len(checkpoint) == len(expected)
    assert checkpoint.num_shards == 1


@pytest.mark.parametrize(("prefix", "step"), [(MODEL_PREFIX, 0), (TRAIN_STEP_PREFIX, 1)])
def test_global_step_is_an_int64_scalar(prefix: Path, step: int) -> None:
    checkpoint = TFCheckpoint(prefix)

    global_step = checkpoint.read("global_step")

    assert checkpoint.dtype("global_step") == torch.int64
    assert checkpoint.shape("global_step") == ()
    assert global_step.dtype == torch.int64 and global_step.shape == ()
    assert global_step.item() == step


@BOTH_FIXTURES
def test_every_tensor_reads_with_its_declared_shape_and_dtype(prefix: Path) -> None:
    checkpoint = TFCheckpoint(prefix)  # verify=True: every stored crc32c is checked

    for name, tensor in checkpoint.items():
        assert tensor.shape == checkpoint.shape(name), name
        assert tensor.dtype == checkpoint.dtype(name), name
        assert tensor.dtype == (torch.int64 if name == "global_step" else torch.float32), name
        assert torch.isfinite(tensor.double()).all(), name


@pytest.mark.parametrize(
    ("suffix", "mean", "std"),
    [
        # The fixture README: every variable overwritten with these RandomState(1234) draws.
        ("/gamma", 1.0, 0.2),
        ("/beta", 0.0, 0.1),
        ("/bias", 0.0, 0.1),
        ("/kernel", 0.0, 0.15),
        ("/word_embeddings", 0.0, 0.05),
        ("/position_embeddings", 0.0, 0.5),
    ],
)
def test_values_follow_the_documented_initialisation(suffix: str, mean: float, std: float) -> None:
    checkpoint = TFCheckpoint(MODEL_PREFIX)
    values = torch.cat([checkpoint.read(name).flatten() for name in checkpoint.keys() if name.endswith(suffix)])

    assert values.numel() >= 500
    standard_error = std / values.numel() ** 0.5
    assert values.mean().item() == pytest.approx(mean, abs=4 * standard_error)
    assert values.std().item() == pytest.approx(std, rel=0.1)


def test_read_returns_a_fresh_tensor_each_time() -> None:
    checkpoint = TFCheckpoint(MODEL_PREFIX)
    name = "pegasus/encoder/LayerNorm/gamma"

    first, second = checkpoint.read(name), checkpoint.read(name)
    assert torch.equal(first, second)

    first.add_(1.0)  # the tensors own writable memory, not a shared buffer
    assert torch.equal(second, checkpoint.read(name))


@BOTH_FIXTURES
def test_directory_resolves_through_its_checkpoint_state_file(prefix: Path) -> None:
    checkpoint = TFCheckpoint(prefix.parent)

    assert checkpoint.prefix == prefix
    assert "global_step" in checkpoint


@pytest.mark.parametrize("suffix", [".index", ".data-00000-of-00001"])
def test_a_file_of_the_checkpoint_resolves_to_its_prefix(suffix: str) -> None:
    assert TFCheckpoint(f"{MODEL_PREFIX}{suffix}").prefix == MODEL_PREFIX


def test_a_file_of_another_kind_is_reported(tmp_path: Path) -> None:
    (tmp_path / "model.ckpt").write_bytes(b"V1 checkpoint")

    with pytest.raises(TFCheckpointError, match=r"model\.ckpt\.index not found: .*V1 checkpoint"):
        TFCheckpoint(tmp_path / "model.ckpt")


def test_directory_without_state_file_suggests_a_prefix(tmp_path: Path) -> None:
    copy_checkpoint(MODEL_PREFIX, tmp_path)

    with pytest.raises(TFCheckpointError, match=r"without a 'checkpoint' state file.*model\.ckpt-0"):
        TFCheckpoint(tmp_path)


def test_unknown_name_is_a_key_error_naming_close_matches() -> None:
    checkpoint = TFCheckpoint(MODEL_PREFIX)

    with pytest.raises(UnknownTensorError, match="pegasus/encoder/LayerNorm/gamma") as raised:
        checkpoint.read("pegasus/encoder/LayerNorm/gama")

    assert isinstance(raised.value, KeyError) and isinstance(raised.value, ValueError)
    assert "model.ckpt-0.index" in str(raised.value)
    assert "pegasus/encoder/LayerNorm/gama" not in checkpoint


def test_crc32c_matches_published_check_values() -> None:
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720, B.4
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert masked_crc32c(b"") == 0xA282EAD8


def test_matches_tensorflow_for_every_variable() -> None:
    tf = pytest.importorskip("tensorflow")
    for prefix in (MODEL_PREFIX, TRAIN_STEP_PREFIX):
        checkpoint = TFCheckpoint(prefix)
        assert sorted(name for name, _ in tf.train.list_variables(str(prefix))) == checkpoint.keys()
        for name, tensor in checkpoint.items():
            expected = tf.train.load_variable(str(prefix), name)
            assert torch.equal(tensor, torch.tensor(expected)), name


# -- broken copies of the fixture --------------------------------------------------------------------


def test_missing_index_is_reported(tmp_path: Path) -> None:
    prefix = copy_checkpoint(MODEL_PREFIX, tmp_path)
    prefix.with_name("model.ckpt-0.index").unlink()

    with pytest.raises(TFCheckpointError, match=r"index .*model\.ckpt-0\.index not found"):
        TFCheckpoint(prefix)


@pytest.mark.parametrize(
    ("index_bytes", "problem"),
    [
        (b"not a checkpoint", "shorter than a table footer"),
        (bytes(range(256)) * 16, "no SSTable magic number"),
    ],
    ids=["too_short", "garbage"],
)
def test_index_that_is_not_a_checkpoint_is_reported(tmp_path: Path, index_bytes: bytes, problem: str) -> None:
    prefix = copy_checkpoint(MODEL_PREFIX, tmp_path)
    prefix.with_name("model.ckpt-0.index").write_bytes(index_bytes)

    with pytest.raises(TFCheckpointError, match=rf"model\.ckpt-0\.index is not a readable .*{problem}"):
        TFCheckpoint(prefix)


def test_corrupted_index_block_fails_its_crc(tmp_path: Path) -> None:
    prefix = copy_checkpoint(MODEL_PREFIX, tmp_path)
    index = bytearray(prefix.with_name("model.ckpt-0.index").read_bytes())
    index[len(index) // 2] ^= 0xFF
    prefix.with_name("model.ckpt-0.index").write_bytes(index)

    with pytest.raises(TFCheckpointError, match=r"model\.ckpt-0\.index .*crc32c"):
        TFCheckpoint(prefix)


def test_missing_data_shard_is_reported(tmp_path: Path) -> None:
    prefix = copy_checkpoint(MODEL_PREFIX, tmp_path)
    data_shard(prefix).unlink()

    with pytest.raises(TFCheckpointError, match=r"data shard .*data-00000-of-00001 is missing"):
        TFCheckpoint(prefix)


def test_truncated_data_shard_is_reported(tmp_path: Path) -> None:
    prefix = copy_checkpoint(MODEL_PREFIX, tmp_path)
    shard = data_shard(prefix)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])

    with pytest.raises(TFCheckpointError, match=r"data-00000-of-00001 is truncated: .*tensor 'pegasus/"):
        TFCheckpoint(prefix)


def test_corrupted_tensor_bytes_fail_the_crc_check_unless_verification_is_off(tmp_path: Path) -> None:
    prefix = copy_checkpoint(MODEL_PREFIX, tmp_path)
    shard = data_shard(prefix)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(data)

    with pytest.raises(TFCheckpointError, match=r"tensor 'pegasus/.*fail their crc32c check"):
        dict(TFCheckpoint(prefix).items())

    original = dict(TFCheckpoint(MODEL_PREFIX).items())
    unverified = dict(TFCheckpoint(prefix, verify=False).items())
    changed = [name for name in original if not torch.equal(original[name], unverified[name])]
    assert len(changed) == 1


# -- bundles from the test writer --------------------------------------------------------------------


def assorted_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    floats = torch.randn(3, 5, generator=generator)
    return {
        "bfloat16": floats.to(torch.bfloat16),
        "bool": floats > 0,
        "complex128": torch.complex(floats.double(), -floats.double()),
        "complex64": torch.complex(floats, floats.flip(0)),
        "empty": torch.zeros(0, 4),
        "float16": floats.to(torch.float16),
        "float32/scalar": torch.tensor(2.5),
        "float64": floats.double(),
        "int16": torch.arange(-6, 6, dtype=torch.int16),
        "int32": torch.arange(-12, 12, dtype=torch.int32).reshape(2, 3, 4),
        "int64": torch.tensor([-(2**40), 0, 2**62]),
        "int8": torch.arange(-5, 5, dtype=torch.int8),
        "uint8": torch.arange(250, 256, dtype=torch.uint8),
    }


def test_multi_block_two_shard_bundle_round_trips_every_dtype(tmp_path: Path) -> None:
    tensors = assorted_tensors()
    assert {tensor.dtype for tensor in tensors.values()} == set(TF_DTYPES)

    data_blocks = write_bundle(tmp_path / "model.ckpt-7", tensors, num_shards=2, entries_per_block=2)
    checkpoint = TFCheckpoint(tmp_path / "model.ckpt-7")

    assert data_blocks == 7
    assert checkpoint.num_shards == 2
    assert checkpoint.keys() == sorted(tensors)
    for name, tensor in checkpoint.items():
        assert checkpoint.dtype(name) == tensor.dtype == tensors[name].dtype, name
        assert torch.equal(tensor, tensors[name]), name


def test_partitioned_variable_is_listed_but_refused(tmp_path: Path) -> None:
    sliced = bundle_entry(TF_DTYPES[torch.float32], (4, 2), sliced=True)
    slice_key = b"\x00\x01partitioned\x00\x01"  # slice keys start with NUL and are not tensor names
    write_bundle(
        tmp_path / "ckpt",
        {"whole": torch.ones(2)},
        raw_entries={b"partitioned": sliced, slice_key: bundle_entry(1, (2, 2))},
    )
    checkpoint = TFCheckpoint(tmp_path / "ckpt")

    assert checkpoint.keys() == ["partitioned", "whole"]
    assert checkpoint.shape("partitioned") == (4, 2)
    with pytest.raises(TFCheckpointError, match="'partitioned' .*partitioned variable stored as slices"):
        checkpoint.read("partitioned")
    assert torch.equal(checkpoint.read("whole"), torch.ones(2))


def test_string_tensor_is_refused_but_the_others_stay_readable(tmp_path: Path) -> None:
    write_bundle(tmp_path / "ckpt", {"weights": torch.ones(3)}, raw_entries={b"names": bundle_entry(DT_STRING, (2,))})
    checkpoint = TFCheckpoint(tmp_path / "ckpt")

    with pytest.raises(TFCheckpointError, match=r"'names' .*TensorFlow DataType 7 \(string\)"):
        checkpoint.read("names")
    assert torch.equal(checkpoint.read("weights"), torch.ones(3))


def test_snappy_compressed_block_is_refused(tmp_path: Path) -> None:
    write_bundle(tmp_path / "ckpt", {"weights": torch.ones(3)}, compression=COMPRESSION_SNAPPY)

    with pytest.raises(TFCheckpointError, match=r"ckpt\.index: snappy-compressed block"):
        TFCheckpoint(tmp_path / "ckpt")


def test_big_endian_bundle_is_refused(tmp_path: Path) -> None:
    write_bundle(tmp_path / "ckpt", {"weights": torch.ones(3)}, endianness=BIG_ENDIAN)

    with pytest.raises(TFCheckpointError, match=r"ckpt\.index: .*big-endian"):
        TFCheckpoint(tmp_path / "ckpt")


def test_entry_whose_byte_size_disagrees_with_its_shape_is_refused(tmp_path: Path) -> None:
    write_bundle(tmp_path / "ckpt", {}, raw_entries={b"odd": bundle_entry(TF_DTYPES[torch.float32], (3,), size=8)})
    Path(f"{tmp_path / 'ckpt'}.data-00000-of-00001").write_bytes(bytes(8))

    with pytest.raises(TFCheckpointError, match=r"'odd' .*recorded as 8 bytes.*needs 12"):
        TFCheckpoint(tmp_path / "ckpt").read("odd")


@pytest.mark.parametrize(
    ("location", "problem"),
    [({"shard_id": 3}, "is in shard 3 of 1"), ({"offset": -4, "size": 4}, "has offset -4 and size 4")],
    ids=["shard", "offset"],
)
def test_entry_pointing_outside_the_data_is_refused(tmp_path: Path, location: dict[str, int], problem: str) -> None:
    lost = bundle_entry(TF_DTYPES[torch.float32], (1,), **location)
    write_bundle(tmp_path / "ckpt", {}, raw_entries={b"lost": lost})

    with pytest.raises(TFCheckpointError, match=rf"ckpt\.index is not a readable .*'lost' {problem}"):
        TFCheckpoint(tmp_path / "ckpt")
