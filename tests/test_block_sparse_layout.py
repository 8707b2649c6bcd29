"""The random key blocks equal those of Google's original code, without touching any global RNG."""

import types
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from bigbird_pegasus_hub.plugin import block_sparse_layout as layout_module
from bigbird_pegasus_hub.plugin.block_sparse_layout import (
    LegacyNumpyRandom,
    block_sparse_layout,
    original_random_blocks,
    random_block_rows,
)

TF_REFERENCE = Path(__file__).parent / "fixtures" / "tf_reference"


@pytest.mark.parametrize("seed", [0, 1, 7, 2**32 - 1])
def test_legacy_random_equals_numpy_randomstate(seed):
    ours, numpy_rng = LegacyNumpyRandom(seed), np.random.RandomState(seed)
    for size in [0, 1, 2, 5, 17, 64, 255, 1000]:
        assert ours.permutation(range(size)) == numpy_rng.permutation(np.arange(size)).tolist()


@pytest.mark.parametrize("variant, length", [("block_sparse_1024_relu", 1024), ("block_sparse_640_relu", 640),
                                             ("block_sparse_1024_gelu", 1024)])
def test_tables_equal_the_tensorflow_reference(variant, length):
    reference = np.load(TF_REFERENCE / f"ref_{variant}.npz")
    for layer in range(2):
        expected = reference[f"rand_attn_layer_{layer}"]
        actual = original_random_blocks(layer, length, num_heads=4, block_size=16, num_random=2)
        assert actual.shape == expected.shape
        assert np.array_equal(actual.numpy(), expected)


def builtin_numpy_tables(seed, length, heads, block_size, num_random):
    """The original functions as transformers' built-in copies them, on numpy's global RNG (restored after)."""
    config = transformers.BigBirdPegasusConfig(d_model=heads * 8, encoder_attention_heads=heads,
                                               max_position_embeddings=4096, block_size=block_size)
    attention = transformers.models.bigbird_pegasus.modeling_bigbird_pegasus.BigBirdPegasusBlockSparseAttention(
        config).train()
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        if length in (1024, 2048, 3072, 4096):
            rows = [attention._bigbird_block_rand_mask(4096, 4096, block_size, block_size, num_random, last_idx=1024)
                    [: length // block_size - 2] for _ in range(heads)]
        else:
            plan = attention._get_rand_attn_plan(length, block_size, num_random)
            rows = attention._bigbird_block_rand_mask_with_head(length, length, block_size, block_size, heads, *plan)
    finally:
        np.random.set_state(saved)
    return np.stack(rows)


@pytest.mark.parametrize("length, block_size, num_random", [(2048, 64, 3), (3072, 64, 3), (4096, 32, 2),
                                                            (1216, 64, 3), (5120, 64, 3), (896, 64, 1)])
def test_tables_equal_the_original_functions(length, block_size, num_random):
    # 2048 is one of the paper's lengths: the built-in model forgets it in eval and train alike, we do not.
    for seed in (0, 3):
        expected = builtin_numpy_tables(seed, length, 4, block_size, num_random)
        actual = original_random_blocks(seed, length, 4, block_size, num_random)
        assert np.array_equal(actual.numpy(), expected)


def test_layout_rows_window_globals_and_duplicate_slots():
    layout = block_sparse_layout(0, 1024, 4, 16, 2)
    assert layout.key_blocks.shape == (4, 62, 7)
    row = layout.key_blocks[2, 9]  # query block 10
    assert row[:5].tolist() == [9, 10, 11, 0, 63]
    assert layout.slot_allowed[0].tolist() == [True, True, True, False, True, True, True]  # block 0 in window
    assert layout.slot_allowed[-1].tolist() == [True, True, True, True, False, True, True]  # last in window
    assert layout.slot_allowed[1:-1].all()


def test_zero_random_blocks():
    layout = block_sparse_layout(0, 512, 2, 16, 0)
    assert layout.key_blocks.shape == (2, 30, 5)


def test_no_global_rng_is_touched():
    np.random.seed(123)
    torch.manual_seed(123)
    numpy_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    random_block_rows.cache_clear()
    original_random_blocks(5, 1536, 4, 16, 3)
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


def import_layout_file(module_name, source):
    """block_sparse_layout.py executed as a new module, as transformers imports remote code of a Hub repo."""
    module = types.ModuleType(module_name)
    exec(compile(source, f"{module_name}.py", "exec"), module.__dict__)
    return module


def test_each_implementation_registers_its_own_random_blocks_operator():
    source = Path(layout_module.__file__).read_text()
    again = import_layout_file("transformers_modules.repo.rev.block_sparse_layout", source)
    assert again.random_blocks_op is layout_module.random_blocks_op  # the same code: one operator
    changed = import_layout_file("transformers_modules.other.block_sparse_layout",
                                 source.replace("ORIGINAL_GRID_LAST_INDEX = 1024", "ORIGINAL_GRID_LAST_INDEX = 2048"))
    assert changed.random_blocks_op is not layout_module.random_blocks_op  # never the other file's kernel
    cpu = torch.device("cpu")
    for module in (again, changed):
        expected = module.original_random_blocks(1, 2048, 4, 16, 2)
        assert torch.equal(module.random_blocks_op(1, 2048, 4, 16, 2, cpu), expected)
    assert not torch.equal(changed.original_random_blocks(1, 2048, 4, 16, 2),
                           original_random_blocks(1, 2048, 4, 16, 2))


def test_traced_layouts_equal_the_cached_ones():
    """What a graph computes (the operator's table, the grid's first rows) is the eager layout."""
    for length in (640, 2048):
        eager = block_sparse_layout(1, length, 4, 16, 2)
        tables = [layout_module.random_blocks_op(1, length, 4, 16, 2, torch.device("cpu"))]
        if length in layout_module.PAPER_LENGTHS:
            tables.append(layout_module.paper_grid_table(1, 4, 16, 2)[:, : length // 16 - 2])
        for table in tables:
            traced = layout_module.layout_from_random_blocks(table, length // 16, 16)
            for name in ("key_blocks", "slot_allowed", "head_key_blocks", "key_allowed"):
                assert torch.equal(getattr(traced, name), getattr(eager, name)), name


@pytest.mark.parametrize("multiple, max_length, on_grid", [(None, 4096, False), (1024, 4096, True), (2048, 4096, True),
                                                           (1024, 3000, True), (512, 4096, False),
                                                           (1024, 8192, False), (3072, 4096, False)])
def test_lengths_on_the_original_grid(multiple, max_length, on_grid):
    assert layout_module.lengths_on_original_grid(multiple, max_length) == on_grid
