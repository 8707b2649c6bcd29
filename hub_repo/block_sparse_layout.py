"""Which key blocks each query block sees in BigBird's ITC block-sparse attention.

BigBird splits a sequence into blocks of `block_size` tokens. The first and the last query block are global
(they attend to every key). Every other query block `q` attends to its window `q-1, q, q+1`, to the two global
blocks and to `num_random_blocks` random blocks. This file builds that pattern once per (layer, length) as a
table of key-block indices, so the attention itself is a gather plus batched SDPA calls.

The random blocks are exactly those of Google's original TensorFlow code (google-research/bigbird,
`bigbird/core/attention.py`): each encoder layer `i` seeds numpy's legacy RNG with `i` and draws its blocks with
`np.random.permutation`, on a 4096-token grid for the paper's lengths and with a per-head plan for any other
length. We replay that stream on a private generator: numpy's legacy RandomState is the MT19937 generator that
Python's `random.Random` also implements, so we seed one the way numpy does and draw bounded integers the way
numpy's `shuffle` does. Neither numpy nor any global RNG is touched.
"""

import hashlib
import random
import types
from dataclasses import dataclass
from functools import lru_cache

import torch

# The original code draws the paper's lengths on a fixed 4096-token grid, picking random blocks among the first
# 1024 tokens, whatever the model's max_position_embeddings (MAX_SEQ_LEN and last_idx=1024 there).
ORIGINAL_GRID_LENGTH = 4096
ORIGINAL_GRID_LAST_INDEX = 1024
PAPER_LENGTHS = (1024, 2048, 3072, 4096)

# Slots of a row of the key-block table: the window, the two global blocks, then the random blocks.
WINDOW_SLOTS = 3
FIRST_GLOBAL_SLOT = 3
LAST_GLOBAL_SLOT = 4
FIXED_SLOTS = 5


class LegacyNumpyRandom:
    """`numpy.random.RandomState(seed).permutation` for integer seeds, on a private MT19937 stream."""

    _STATE_WORDS = 624

    def __init__(self, seed: int):
        # numpy's legacy `seed(int)` is MT19937's `init_genrand`.
        words = [seed & 0xFFFFFFFF]
        for index in range(1, self._STATE_WORDS):
            previous = words[-1]
            words.append((1812433253 * (previous ^ (previous >> 30)) + index) & 0xFFFFFFFF)
        self._generator = random.Random()
        self._generator.setstate((3, (*words, self._STATE_WORDS), None))

    def _integer_up_to(self, high: int) -> int:
        """Uniform integer in [0, high], by numpy's masked rejection sampling on 32-bit draws."""
        if high == 0:
            return 0
        mask = (1 << high.bit_length()) - 1
        while True:
            value = self._generator.getrandbits(32) & mask
            if value <= high:
                return value

    def permutation(self, values) -> list[int]:
        shuffled = list(values)
        # numpy's Fisher-Yates runs from the end of the array.
        for i in range(len(shuffled) - 1, 0, -1):
            j = self._integer_up_to(i)
            shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
        return shuffled


def _paper_random_rows(rng: LegacyNumpyRandom, block_size: int, num_random: int) -> list[list[int]]:
    """One head's rows of the original `bigbird_block_rand_mask` on the 4096-token grid."""
    num_blocks = ORIGINAL_GRID_LENGTH // block_size
    middle = list(range(1, num_blocks - 1))
    last = num_blocks - 1
    if ORIGINAL_GRID_LAST_INDEX > 2 * block_size:
        last = ORIGINAL_GRID_LAST_INDEX // block_size - 1
    rows = []
    for i in range(1, num_blocks - 1):
        start, end = i - 2, i
        if i == 1:
            candidates = middle[2:last]
        elif i == 2:
            candidates = middle[3:last]
        elif i >= num_blocks - 3 or start > last:
            # The original's own shortcuts: these rows may draw from their window.
            candidates = middle[:last]
        elif end + 1 == last:
            candidates = middle[:start]
        else:
            candidates = middle[:start] + middle[end + 1 : last]
        rows.append(_take(rng.permutation(candidates), num_random, row=i))
    return rows


def _take(permuted: list[int], count: int, row: int) -> list[int]:
    if len(permuted) < count:
        raise ValueError(
            f"BigBird's random-block plan has only {len(permuted)} candidate blocks for query block {row} but needs "
            f"{count}: use a smaller block_size or fewer num_random_blocks for this sequence length."
        )
    return permuted[:count]


def _random_plan(seq_length: int, block_size: int, num_random: int) -> tuple[list[int], list[int]]:
    """The original `get_rand_attn_plan`: up to which length how many random blocks are drawn."""
    num_blocks = seq_length // block_size
    if 2 * num_random + 5 < num_blocks:
        return [(2 * num_random + 5) * block_size, seq_length], [num_random, 0]
    if num_random + 5 < num_blocks:
        half = num_random // 2
        return [(num_random + 5) * block_size, seq_length], [half, num_random - half]
    return [seq_length], [num_random]


def _single_row(rng, block_id, to_start, to_end, count) -> list[int]:
    """The original `get_single_block_row_attention` with windows and globals of one block."""
    permuted = rng.permutation(range(to_start, to_end))
    illegal = {block_id - 1, block_id, block_id + 1, 0, to_end - 1}
    if block_id == 1:
        illegal.add(to_end - 2)
    if block_id == to_end - 2:
        illegal.add(1)
    return [block for block in permuted if block not in illegal][:count]


def _assign(row: list[int], start: int, stop: int, chosen: list[int]):
    # numpy broadcasting in the original: a single chosen block fills every slot of the range.
    if len(chosen) == 1:
        chosen = chosen * (stop - start)
    if len(chosen) != stop - start:
        raise ValueError(
            f"BigBird's random-block plan found {len(chosen)} legal blocks where {stop - start} are needed: the "
            "sequence is too short for this block_size and num_random_blocks."
        )
    row[start:stop] = chosen


def _planned_random_rows(rng, seq_length, block_size, num_heads, num_random) -> list[list[list[int]]]:
    """The original `bigbird_block_rand_mask_with_head` (one global block on each side): per head, per row."""
    plan_lengths, plan_counts = _random_plan(seq_length, block_size, num_random)
    plan_blocks = [length // block_size for length in plan_lengths]
    num_blocks = seq_length // block_size
    last_plan = plan_lengths.index(seq_length)
    columns = sum(plan_counts[: last_plan + 1])
    tables = [[[0] * columns for _ in range(num_blocks)] for _ in range(num_heads)]

    def fill(rows, first_column, segment_start, segment_end, count):
        # Row-major, then head: the order in which the original consumes the random stream.
        for row in rows:
            for head in range(num_heads):
                chosen = _single_row(rng, row, segment_start, segment_end, count)
                _assign(tables[head][row], first_column, first_column + count, chosen)

    for plan_idx in range(last_plan + 1):
        if plan_idx > 0:
            previous_end = plan_blocks[plan_idx - 1]
            if plan_counts[plan_idx] > 0:
                fill(range(1, previous_end), sum(plan_counts[:plan_idx]), previous_end, plan_blocks[plan_idx],
                     plan_counts[plan_idx])
            for earlier in range(plan_idx):
                if plan_counts[earlier] == 0:
                    continue
                segment_start = plan_blocks[earlier - 1] if earlier > 0 else 0
                fill(range(previous_end, plan_blocks[plan_idx]), sum(plan_counts[:earlier]), segment_start,
                     plan_blocks[earlier], plan_counts[earlier])
        if plan_counts[plan_idx] == 0:
            continue
        row_start = plan_blocks[plan_idx - 1] if plan_idx > 0 else 1
        segment_start = plan_blocks[plan_idx - 1] if plan_idx > 0 else 0
        fill(range(row_start, plan_blocks[plan_idx]), sum(plan_counts[:plan_idx]), segment_start,
             plan_blocks[plan_idx], plan_counts[plan_idx])
    return [table[1 : num_blocks - 1] for table in tables]


def lengths_on_original_grid(pad_to_multiple_of: int | None, max_length: int) -> bool:
    """True when padding every input of up to `max_length` tokens to a multiple of `pad_to_multiple_of` makes
    every length one of PAPER_LENGTHS: the original code then draws every table on its 4096-token grid, and the
    table of each length is a prefix of the 4096-token one."""
    if not pad_to_multiple_of:
        return False
    longest = -(-max_length // pad_to_multiple_of) * pad_to_multiple_of
    return all(length in PAPER_LENGTHS for length in range(pad_to_multiple_of, longest + 1, pad_to_multiple_of))


# Only Python data is cached here, never tensors: a tensor made while a graph is traced (torch.export) is a
# stand-in of that trace and must not outlive it.


@lru_cache(maxsize=None)
def _paper_grid_rows(seed: int, num_heads: int, block_size: int, num_random: int) -> tuple:
    """The original code's table on its 4096-token grid, as nested tuples [num_heads][rows][num_random]."""
    rng = LegacyNumpyRandom(seed)
    return tuple(tuple(map(tuple, _paper_random_rows(rng, block_size, num_random))) for _ in range(num_heads))


@lru_cache(maxsize=64)
def random_block_rows(seed: int, seq_length: int, num_heads: int, block_size: int, num_random: int) -> tuple:
    """The random key blocks of the original code as nested tuples [num_heads][num_blocks - 2][num_random]."""
    num_blocks = seq_length // block_size
    if num_random == 0:
        return tuple(((),) * (num_blocks - 2) for _ in range(num_heads))
    if seq_length in PAPER_LENGTHS:
        return tuple(head[: num_blocks - 2] for head in _paper_grid_rows(seed, num_heads, block_size, num_random))
    rng = LegacyNumpyRandom(seed)
    rows = _planned_random_rows(rng, seq_length, block_size, num_heads, num_random)
    return tuple(tuple(map(tuple, head)) for head in rows)


def original_random_blocks(seed: int, seq_length: int, num_heads: int, block_size: int, num_random: int,
                           device=None) -> torch.Tensor:
    """The random key blocks of the original code: a new [num_heads, num_blocks - 2, num_random] long tensor.

    `seed` is the encoder layer index. Row `q - 1` holds the random blocks of query block `q`.
    """
    rows = random_block_rows(seed, seq_length, num_heads, block_size, num_random)
    return torch.tensor(rows, dtype=torch.long, device=device).view(num_heads, seq_length // block_size - 2, num_random)


def paper_grid_table(seed: int, num_heads: int, block_size: int, num_random: int, device=None) -> torch.Tensor:
    """The original code's [num_heads, 4096 // block_size - 2, num_random] table on its 4096-token grid: the table
    of every length of PAPER_LENGTHS is its first rows."""
    rows = _paper_grid_rows(seed, num_heads, block_size, num_random)
    return torch.tensor(rows, dtype=torch.long, device=device).view(num_heads, -1, num_random)


@dataclass(frozen=True)
class BlockSparseLayout:
    """The key blocks of every non-global query block, for one layer and one padded length.

    key_blocks: [num_heads, num_blocks - 2, 5 + num_random] block indices: window (q-1, q, q+1), first block,
        last block, random blocks.
    slot_allowed: [num_blocks - 2, 5 + num_random] bool. The window of the second and the second-to-last query
        block already holds a global block; its second copy is switched off so it is not counted twice.
        (Random blocks that repeat another block ARE counted twice, exactly as in the original.)
    head_key_blocks: [num_heads, num_blocks - 2, 5 + num_random] long, `key_blocks` offset by `head * num_blocks`:
        indices into one input's keys viewed as [num_heads * num_blocks, block_size * head_dim], so one
        `index_select` gathers the key blocks of any range of rows for every head.
    key_allowed: [num_blocks - 2, (5 + num_random) * block_size] bool, `slot_allowed` per key token.
    """

    key_blocks: torch.Tensor
    slot_allowed: torch.Tensor
    head_key_blocks: torch.Tensor
    key_allowed: torch.Tensor

    @property
    def num_blocks(self) -> int:
        return self.key_blocks.shape[1] + 2

    @property
    def keys_per_row(self) -> int:
        """Key tokens each middle query block sees: (5 + num_random) * block_size."""
        return self.key_allowed.shape[1]

    @property
    def block_size(self) -> int:
        return self.keys_per_row // self.slot_allowed.shape[1]

    def to(self, device) -> "BlockSparseLayout":
        return BlockSparseLayout(*(tensor.to(device) for tensor in
                                   (self.key_blocks, self.slot_allowed, self.head_key_blocks, self.key_allowed)))


def layout_from_random_blocks(random_blocks: torch.Tensor, num_blocks: int, block_size: int) -> BlockSparseLayout:
    """The layout around a [num_heads, num_blocks - 2, num_random] table of random blocks.

    Only tensor operations (no in-place writes, no Python loops over blocks), so a symbolic `num_blocks` traces."""
    num_heads, _, num_random = random_blocks.shape
    device = random_blocks.device
    query_blocks = torch.arange(1, num_blocks - 1, device=device)
    fixed = torch.stack([query_blocks - 1, query_blocks, query_blocks + 1, query_blocks * 0,
                         query_blocks * 0 + (num_blocks - 1)], dim=-1)
    key_blocks = torch.cat([fixed.expand(num_heads, -1, -1), random_blocks], dim=-1).contiguous()
    rows = torch.arange(num_blocks - 2, device=device)[:, None]
    slots = torch.arange(FIXED_SLOTS + num_random, device=device)[None, :]
    duplicate_global = ((rows == 0) & (slots == FIRST_GLOBAL_SLOT)) | \
        ((rows == num_blocks - 3) & (slots == LAST_GLOBAL_SLOT))
    slot_allowed = ~duplicate_global
    head_key_blocks = key_blocks + torch.arange(num_heads, device=device)[:, None, None] * num_blocks
    key_allowed = slot_allowed.repeat_interleave(block_size, dim=-1)
    return BlockSparseLayout(key_blocks, slot_allowed, head_key_blocks, key_allowed)


def block_sparse_layout(seed: int, seq_length: int, num_heads: int, block_size: int, num_random: int,
                        device: torch.device | None = None, lengths_on_grid: bool = False) -> BlockSparseLayout:
    """The layout of encoder layer `seed` for a padded length `seq_length`, on `device` (CPU if None).

    Run eagerly, it is built once per (layer, length, device) and cached, so attention never rebuilds it nor copies
    it to the accelerator again. Inside `torch.compile` or `torch.export` it is built by graph operations from
    `traced_random_blocks`, so no Python random-number code is ever traced. `lengths_on_grid` promises that every
    length this model sees is one of the original code's grid lengths (see `traced_random_blocks`)."""
    if not torch.compiler.is_compiling():
        return _cached_layout(seed, seq_length, num_heads, block_size, num_random, device)
    random_blocks = traced_random_blocks(seed, seq_length, num_heads, block_size, num_random, device,
                                         lengths_on_grid)
    return layout_from_random_blocks(random_blocks, seq_length // block_size, block_size)


@lru_cache(maxsize=256)
def _cached_layout(seed, seq_length, num_heads, block_size, num_random, device) -> BlockSparseLayout:
    if device is not None:
        return _cached_layout(seed, seq_length, num_heads, block_size, num_random, None).to(device)
    random_blocks = original_random_blocks(seed, seq_length, num_heads, block_size, num_random)
    return layout_from_random_blocks(random_blocks, seq_length // block_size, block_size)


def traced_random_blocks(seed, seq_length, num_heads, block_size, num_random, device, lengths_on_grid=False):
    """The random-block table inside a traced graph (`torch.compile`, `torch.export`, `torch.onnx.export`).

    - Dynamo (`torch.compile`, strict export) cannot run the pure-Python Mersenne Twister replay: the table comes
      from the opaque operator `random_blocks_op`, whose eager kernel is the cached replay.
    - A non-strict export at a fixed length runs the replay in Python: the table is a constant of the graph.
    - A non-strict export with a symbolic length slices ONE constant table, the original 4096-token grid table,
      when `lengths_on_grid` (every length is one of PAPER_LENGTHS: the grid tables of those lengths are its
      prefixes). Any other symbolic length needs the operator (torch.export keeps it; ONNX cannot express it).
    """
    if not torch.compiler.is_dynamo_compiling():
        if isinstance(seq_length, int):
            return original_random_blocks(seed, seq_length, num_heads, block_size, num_random, device)
        if lengths_on_grid:  # a gather rather than a slice: its shape never depends on whether it is all rows
            grid = paper_grid_table(seed, num_heads, block_size, num_random, device)
            return grid.index_select(1, torch.arange(seq_length // block_size - 2, device=device))
    if random_blocks_op is None:
        raise RuntimeError("Compiling or exporting block-sparse attention needs torch >= 2.4 (torch.library.custom_op).")
    return random_blocks_op(seed, seq_length, num_heads, block_size, num_random, device)


# ----------------------------------------------------------------------------------------------------------------
# The random-block table as a torch operator, for graphs with a length that is not known while tracing.
# ----------------------------------------------------------------------------------------------------------------


def _random_blocks_kernel(seed: int, seq_length: int, num_heads: int, block_size: int, num_random: int,
                          device: torch.device) -> torch.Tensor:
    return original_random_blocks(seed, seq_length, num_heads, block_size, num_random, device)


def _random_blocks_shape(seed, seq_length, num_heads, block_size, num_random, device):
    return torch.empty(num_heads, seq_length // block_size - 2, num_random, dtype=torch.long, device=device)


def _implementation_digest() -> str:
    """A hash of this file's code and constants (not of its path or module name).

    This file can be imported several times in one process: as `bigbird_pegasus_hub.plugin.block_sparse_layout`
    and as remote code of any number of Hub repos and revisions. Each import registers the operator under a name
    derived from this hash: equal code shares one operator, different code never runs another's kernel."""
    digest = hashlib.sha256()
    for name in sorted(name for name in globals() if not name.startswith("__")):  # no path, no module name
        value = globals()[name]
        value = getattr(value, "__wrapped__", value)  # lru_cache
        if isinstance(value, (int, str, tuple)):
            digest.update(f"{name}={value!r}".encode())
        elif getattr(value, "__module__", None) == __name__:
            members = vars(value).values() if isinstance(value, type) else [value]
            for member in members:
                if isinstance(member, types.FunctionType):
                    _hash_code(digest, member.__code__)
    return digest.hexdigest()[:16]


def _hash_code(digest, code: types.CodeType):
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            _hash_code(digest, constant)
        else:
            digest.update(repr(constant).encode())


def _register_random_blocks_op():
    if not hasattr(torch.library, "custom_op"):
        return None
    namespace, name = "bigbird_pegasus", f"random_blocks_{_implementation_digest()}"
    if not hasattr(getattr(torch.ops, namespace), name):  # else: this same code, imported under another name
        operator = torch.library.custom_op(f"{namespace}::{name}", mutates_args=())(_random_blocks_kernel)
        operator.register_fake(_random_blocks_shape)
    return getattr(getattr(torch.ops, namespace), name).default


random_blocks_op = _register_random_blocks_op()
