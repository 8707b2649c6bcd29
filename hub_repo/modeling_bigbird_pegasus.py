"""PyTorch BigBirdPegasus: a Pegasus encoder-decoder whose encoder uses BigBird's block-sparse attention.

Remote code: imports only torch, transformers' public API and its sibling files. Parameter names equal those of
transformers' built-in `bigbird_pegasus`, so its checkpoints load unchanged.
"""

import copy
import math

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import Cache, DynamicCache, EncoderDecoderCache, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
    Seq2SeqQuestionAnsweringModelOutput,
    Seq2SeqSequenceClassifierOutput,
)
from transformers.utils import logging
from transformers.utils.deprecation import deprecate_kwarg

from .block_sparse_layout import BlockSparseLayout, block_sparse_layout, lengths_on_original_grid
from .configuration_bigbird_pegasus import BigBirdPegasusConfig

logger = logging.get_logger(__name__)

# Activations computed by one fused kernel instead of a chain of elementwise ops, same function: `gelu_new` is
# GELU's tanh approximation (the chain costs a fifth of the encoder's time on CPU).
FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}

# transformers 5 renamed the generation cache from `past_key_values` to `cache`, in model outputs too.
TRANSFORMERS_V5 = int(transformers.__version__.split(".")[0]) >= 5
CACHE_FIELD = "cache" if "cache" in Seq2SeqLMOutput.__dataclass_fields__ else "past_key_values"


def accepts_past_key_values(forward):
    """transformers 5 deprecates the `past_key_values` argument: it becomes `cache`, with transformers' own warning.
    transformers 4 passes `past_key_values` itself, so there it is accepted silently."""
    if not TRANSFORMERS_V5:
        return forward
    return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")(forward)


def shift_tokens_right(input_ids: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: the labels shifted one step right, -100 replaced by padding."""
    shifted = input_ids.new_zeros(input_ids.shape)
    shifted[:, 1:] = input_ids[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where attention is allowed, the dtype's most negative value elsewhere (never NaN, unlike -inf)."""
    return torch.zeros((), dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def attend(query, key, value, bias=None, dropout=0.0, need_weights=False):
    """Scaled dot-product attention over the last two dims; returns (context, probabilities or None)."""
    if not need_weights:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout), None
    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(query.shape[-1])
    if bias is not None:
        scores = scores + bias
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    context = torch.matmul(F.dropout(probs, p=dropout), value)
    return context, probs


def split_heads(states: torch.Tensor, num_heads: int) -> torch.Tensor:
    batch, length, width = states.shape
    return states.view(batch, length, num_heads, width // num_heads).transpose(1, 2)


def merge_heads(states: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_dim = states.shape
    return states.transpose(1, 2).reshape(batch, length, heads * head_dim)


def apply_head_mask(context, probs, head_mask):
    """Masking heads scales each head's probabilities, hence its context: (p * m) @ v == m * (p @ v)."""
    if head_mask is None:
        return context, probs
    per_head = head_mask.view(1, -1, *([1] * (context.dim() - 2))).to(context.dtype)
    return context * per_head, None if probs is None else probs * per_head


class BigBirdPegasusLearnedPositionalEmbedding(nn.Embedding):
    """Learned absolute positions: `positions` is a [length] or [batch, length] tensor of position indices."""

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return super().forward(positions.to(self.weight.device))


class BigBirdPegasusScaledWordEmbedding(nn.Embedding):
    """Token embeddings multiplied by sqrt(d_model) when the config scales embeddings (as Pegasus does)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int, embed_scale: float = 1.0):
        super().__init__(num_embeddings, embedding_dim, padding_idx)
        self.embed_scale = embed_scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids) * self.embed_scale


# ----------------------------------------------------------------------------------------------------------------
# Encoder self-attention: BigBird block-sparse, or full attention for short inputs and `original_full`.
# ----------------------------------------------------------------------------------------------------------------


class BigBirdPegasusSelfAttention(nn.Module):
    """Query/key/value projections of the encoder (named `self` inside `self_attn`, as in the built-in model)."""

    def __init__(self, config: BigBirdPegasusConfig, layer_idx: int):
        super().__init__()
        self.num_heads = config.encoder_attention_heads
        self.block_size = config.block_size
        self.num_random_blocks = config.num_random_blocks
        self.dropout = config.attention_dropout
        self.layer_idx = layer_idx  # also the seed of this layer's random blocks, as in the original code
        # Every padded length is one of the original grid lengths: a traced graph slices one constant table.
        self.lengths_on_grid = lengths_on_original_grid(config.pad_to_multiple_of, config.max_position_embeddings)
        self.query = nn.Linear(config.d_model, config.d_model, bias=config.use_bias)
        self.key = nn.Linear(config.d_model, config.d_model, bias=config.use_bias)
        self.value = nn.Linear(config.d_model, config.d_model, bias=config.use_bias)

    def forward(self, hidden_states, attention_mask, use_block_sparse, output_attentions=False, head_mask=None):
        """attention_mask: [batch, seq] with 1 for tokens, 0 for padding, or None when nothing is padded (seq is
        a multiple of block_size when `use_block_sparse`). Returns the context [batch, seq, d_model] and, if
        asked, dense probabilities."""
        query = split_heads(self.query(hidden_states), self.num_heads)
        key = split_heads(self.key(hidden_states), self.num_heads)
        value = split_heads(self.value(hidden_states), self.num_heads)
        token_mask = None if attention_mask is None else attention_mask.bool()
        if use_block_sparse:
            layout = self.layout(hidden_states.shape[1], hidden_states.device)
            context, probs = block_sparse_attention(query, key, value, layout, token_mask, output_attentions)
        else:
            bias = None if token_mask is None else additive_mask(token_mask[:, None, None, :], query.dtype)
            dropout = self.dropout if self.training else 0.0
            context, probs = attend(query, key, value, bias, dropout, output_attentions)
        context, probs = apply_head_mask(context, probs, head_mask)
        return merge_heads(context), probs

    def layout(self, seq_length: int, device) -> BlockSparseLayout:
        return block_sparse_layout(self.layer_idx, seq_length, self.num_heads, self.block_size,
                                   self.num_random_blocks, device, self.lengths_on_grid)


def block_sparse_attention(query, key, value, layout: BlockSparseLayout, token_mask=None, need_weights=False):
    """BigBird ITC attention: global first/last query blocks, and for every other query block its window, the
    two global blocks and its random blocks, gathered through `layout` and attended by batched SDPA calls.

    query/key/value: [batch, heads, seq, head_dim]; token_mask: [batch, seq] bool, or None without padding.
    With gradients, `BlockSparseAttentionFunction` runs the same forward and a backward that recomputes the
    gathered blocks instead of storing them.
    """
    # One head-major copy of the queries, and one of the keys and values side by side: a single gather per tile
    # fetches both, and SDPA reads them as strided views.
    query, key_value = query.contiguous(), torch.cat([key, value], dim=-1)
    global_bias = None if token_mask is None else additive_mask(token_mask[:, None, None, :], query.dtype)
    middle_bias = middle_block_bias(layout, token_mask, query.dtype)
    operands = (query, key_value, layout.head_key_blocks, global_bias, middle_bias)
    compiling = torch.compiler.is_compiling()  # a graph is differentiated by its compiler: plain autograd, one tile
    probs = None
    if need_weights:
        context, probs = block_sparse_context_and_probs(*operands, layout)
    elif torch.is_grad_enabled() and (query.requires_grad or key_value.requires_grad) and not compiling:
        context = BlockSparseAttentionFunction.apply(*operands)
    else:
        context = block_sparse_context(*operands)
    if token_mask is not None:
        # Padded queries get a zero context, as in the original.
        query_mask = token_mask[:, None, :, None]
        context = context * query_mask.to(context.dtype)
        probs = None if probs is None else probs * query_mask.to(probs.dtype)
    return context, probs


def block_sparse_context(query, key_value, head_key_blocks, global_bias, middle_bias):
    """The attention output [batch, heads, seq, head_dim]: one SDPA call for the two global query blocks, one per
    tile of the others, joined by one concatenation per group of inputs."""
    block_size = block_size_of(head_key_blocks, middle_bias)
    global_context, _ = attend_global_blocks(query, key_value, global_bias, block_size)
    tiles = middle_tiles(key_value, head_key_blocks)
    pieces = [attend(*operands)[0].flatten(1, 2)
              for operands in middle_tile_operands(query, key_value, head_key_blocks, middle_bias, tiles)]
    return join_tiles(pieces, tiles, query.shape[1], first_and_last(global_context, block_size))


def block_sparse_context_and_probs(query, key_value, head_key_blocks, global_bias, middle_bias, layout):
    """`block_sparse_context` and the probabilities as a dense [batch, heads, seq, seq] matrix (only for
    output_attentions; plain autograd differentiates it, so every tile gets its own gathered blocks)."""
    block_size, heads = layout.block_size, query.shape[1]
    global_context, global_probs = attend_global_blocks(query, key_value, global_bias, block_size, need_weights=True)
    tiles = middle_tiles(key_value, head_key_blocks)
    operands = middle_tile_operands(query, key_value, head_key_blocks, middle_bias, tiles,
                                    TileScratch(query, reuse=False))
    pieces, tile_probs = zip(*(attend(*tile_operands, need_weights=True) for tile_operands in operands))
    context = join_tiles([piece.flatten(1, 2) for piece in pieces], tiles, heads,
                         first_and_last(global_context, block_size))
    middle_probs = join_tiles(tile_probs, tiles, heads)  # [batch, heads, rows, block_size, keys]
    return context, dense_block_sparse_probs(global_probs, middle_probs, layout, block_size, query.shape[2])


def block_size_of(head_key_blocks, middle_bias) -> int:
    """A Python int even where the length is symbolic (exports): a row's keys are its slots' blocks."""
    return middle_bias.shape[-1] // head_key_blocks.shape[-1]


def split_key_value(key_value):
    """Keys and values side by side [..., 2 * head_dim] -> (keys, values). Slices, not `chunk`: exports then
    need no split node (ONNX's SplitToSequence)."""
    head_dim = key_value.shape[-1] // 2
    return key_value[..., :head_dim], key_value[..., head_dim:]


def first_and_last(states, block_size):
    """The two global query blocks' rows [batch, heads, 2 * block_size, ...] -> (first block, last block)."""
    return states[:, :, :block_size], states[:, :, block_size:]


def attend_global_blocks(query, key_value, bias, block_size, need_weights=False):
    """The first and the last query block see every key: [batch, heads, 2 * block_size, head_dim]."""
    key, value = split_key_value(key_value)
    return attend(global_rows(query, block_size), key, value, bias, need_weights=need_weights)


def global_rows(states, block_size):
    """The first and the last block of `states` [batch, heads, seq, dim] -> [batch, heads, 2 * block_size, dim]."""
    return torch.cat([states[:, :, :block_size], states[:, :, -block_size:]], dim=2)


def middle_rows(states, block_size):
    """states [batch, heads, seq, dim] -> the blocks of the middle query blocks, [batch, heads, rows, block, dim]."""
    return states.unflatten(2, (-1, block_size))[:, :, 1:-1]


def middle_tile_operands(query, key_value, head_key_blocks, bias, tiles, scratch=None):
    """For each of `tiles`: (queries, keys, values, bias), queries [tile inputs * heads, rows, block_size,
    head_dim] and keys/values [tile inputs * heads, rows, keys, head_dim] (views of one gather into `scratch`).
    In SDPA the batch is (input, head) and the "heads" are the rows, so it stays 4D (the fused kernels need that)."""
    scratch = TileScratch(query) if scratch is None else scratch
    middle_query = middle_rows(query, block_size_of(head_key_blocks, bias))
    for inputs, rows in tiles:
        scratch.next_tile()
        tile_key_value = gather_key_blocks(key_value, head_key_blocks, inputs, rows, scratch)
        # The bias has batch 1 without padding: expanded (a view), every tile indexes it alike, traced or not.
        tile_bias = bias.expand(*query.shape[:2], *bias.shape[2:])[inputs, :, rows].flatten(0, 1)
        yield middle_query[inputs, :, rows].flatten(0, 1), *split_key_value(tile_key_value), tile_bias


def join_tiles(pieces, tiles, heads, ends=None):
    """Tile results [tile inputs * heads, tile rows, ...] -> [batch, heads, rows, ...], each input's tiles in row
    order, between ends[0] and ends[1] ([batch, heads, ...]) if given."""
    groups = []  # (inputs, their tiles); compared only when there are several tiles (a traced graph has one)
    for (inputs, _), piece in zip(tiles, pieces):
        if not groups or groups[-1][0] != inputs:
            groups.append((inputs, []))
        groups[-1][1].append(piece.unflatten(0, (-1, heads)))
    if ends is not None:
        groups = [(inputs, [ends[0][inputs], *parts, ends[1][inputs]]) for inputs, parts in groups]
    joined = [torch.cat(parts, dim=2) for _, parts in groups]
    return joined[0] if len(joined) == 1 else torch.cat(joined)


class TileScratch:
    """Temporaries that every tile reuses: the n-th tensor a tile takes is carved from the n-th buffer. On CPU a
    fresh large temporary per tile costs page faults (glibc hands big freed blocks back to the kernel), which
    took longer than the tile's matrix products. Without `reuse` (autograd saves the tiles' tensors) and under
    torch.compile (which plans memory itself), every tensor is fresh."""

    def __init__(self, like: torch.Tensor, reuse: bool = True):
        self.like = like
        self.reuse = reuse and not torch.compiler.is_compiling()
        self.buffers, self.taken = [], 0

    def next_tile(self):
        self.taken = 0

    def take(self, *shape) -> torch.Tensor | None:
        """A contiguous tensor of `shape` for an operation's `out` (values undefined), or None: let it allocate
        (autograd does not record operations with `out`)."""
        if not self.reuse:
            return None
        size = math.prod(shape)
        if self.taken == len(self.buffers):
            self.buffers.append(self.like.new_empty(size))
        elif self.buffers[self.taken].numel() < size:
            self.buffers[self.taken] = self.like.new_empty(size)
        self.taken += 1
        return self.buffers[self.taken - 1][:size].view(shape)


# On CPU the gathered key/value blocks are attended tile by tile while they are still in cache: gathering all of
# them first (130 MB per layer at 8192 tokens) and reading them back takes longer than the attention itself.
CPU_TILE_BYTES = 4 * 2**20
# With several threads every operation of a tile is a parallel region that needs all its threads: when other
# processes share the cores, each region waits for a descheduled thread (milliseconds), so there are at most
# this many tiles per input (4096 tokens, d_model 512: 8 tiles of 16 MB instead of 31 of 4 MB).
CPU_MAX_TILES = 8


def cpu_ranges(count: int, item_bytes: int, device) -> list[slice]:
    """Ranges of `count` items to process at once: all of them off CPU (one launch); on CPU about CPU_TILE_BYTES
    of items each, but at most CPU_MAX_TILES ranges when several threads run."""
    # Compiled or exported: one range. A graph unrolls the tiles (at 4096 tokens, d512: 31 per input and layer), and
    # Inductor then compiles for minutes; an exported graph keeps batch and length symbolic.
    if device.type != "cpu" or torch.compiler.is_compiling():
        return [slice(0, count)]
    per_range = max(1, CPU_TILE_BYTES // item_bytes)
    if torch.get_num_threads() > 1:
        per_range = max(per_range, -(-count // CPU_MAX_TILES))
    return [slice(first, min(first + per_range, count)) for first in range(0, count, per_range)]


def middle_tiles(key_value, head_key_blocks) -> list[tuple[slice, slice]]:
    """(inputs, rows) ranges of middle query blocks to attend at once (see `cpu_ranges`), sized by their gathered
    keys and values (key_value: [batch, heads, seq, 2 * head_dim]): row ranges of one input, or whole inputs."""
    batch, heads, seq, width = key_value.shape
    rows, slots = head_key_blocks.shape[1:]
    row_bytes = heads * slots * (seq // (rows + 2)) * width * key_value.element_size()
    row_ranges = cpu_ranges(rows, row_bytes, key_value.device)
    if len(row_ranges) > 1:
        return [(slice(index, index + 1), row_range) for index in range(batch) for row_range in row_ranges]
    return [(inputs, row_ranges[0]) for inputs in cpu_ranges(batch, rows * row_bytes, key_value.device)]


def gather_key_blocks(states, head_key_blocks, inputs: slice, rows: slice, scratch: TileScratch) -> torch.Tensor:
    """states [batch, heads, seq, dim] (contiguous) -> [tile inputs * heads, tile rows, keys, dim]: each row's key
    blocks laid end to end, by one index_select over the blocks of every (input, head)."""
    blocks, index = key_block_index(states, head_key_blocks, inputs, rows)  # index: [tile inputs, heads, rows, slots]
    out = scratch.take(index.numel(), blocks.shape[1])
    if out is None:
        # An embedding lookup is the same index_select, but its result keeps the index's shape: a graph traced with
        # a symbolic length needs no view that splits one symbolic size into several (it could not prove it exact).
        gathered = F.embedding(index, blocks)
    else:
        gathered = torch.index_select(blocks, 0, index.flatten(), out=out)
    keys = head_key_blocks.shape[2] * blocks.shape[1] // states.shape[-1]
    return gathered.view(index.shape[0] * index.shape[1], index.shape[2], keys, states.shape[-1])


def add_key_block_gradients(grad_states, tile_grads, head_key_blocks, inputs: slice, rows: slice):
    """The adjoint of `gather_key_blocks`: adds tile_grads [tile inputs * heads, tile rows, keys, dim] to the
    blocks of grad_states [batch, heads, seq, dim] they were gathered from, by one index_add_ (a block that several
    rows see, or one row twice, gets all their gradients)."""
    blocks, index = key_block_index(grad_states, head_key_blocks, inputs, rows)
    blocks.index_add_(0, index.flatten(), tile_grads.reshape(index.numel(), -1))


def key_block_index(states, head_key_blocks, inputs: slice, rows: slice):
    """states [batch, heads, seq, dim] as one row per block, and the block of every (input, head, row, slot) of
    the tile, [tile inputs, heads, tile rows, slots]."""
    batch, heads, seq, dim = states.shape
    num_blocks = head_key_blocks.shape[1] + 2
    first_blocks = torch.arange(batch, device=states.device)[inputs] * (heads * num_blocks)
    index = first_blocks[:, None, None, None] + head_key_blocks[:, rows]
    return states.view(batch * heads * num_blocks, (seq // num_blocks) * dim), index


class BlockSparseAttentionFunction(torch.autograd.Function):
    """`block_sparse_context` for training. The forward keeps its inputs and output; the backward recomputes each
    tile's probabilities while its gathered blocks are in cache and adds their gradients straight to the key and
    value blocks they came from (`add_key_block_gradients`): no gathered blocks are stored, and no gradient of
    the full key/value size is made per tile."""

    @staticmethod
    def forward(ctx, query, key_value, head_key_blocks, global_bias, middle_bias):
        context = block_sparse_context(query, key_value, head_key_blocks, global_bias, middle_bias)
        ctx.save_for_backward(query, key_value, context, head_key_blocks, global_bias, middle_bias)
        return context

    @staticmethod
    def backward(ctx, grad_context):
        grad_query, grad_key_value = block_sparse_gradients(grad_context.contiguous(), *ctx.saved_tensors)
        return grad_query, grad_key_value, None, None, None


def block_sparse_gradients(grad_context, query, key_value, context, head_key_blocks, global_bias, middle_bias):
    """Gradients of `block_sparse_context` with respect to query and key_value."""
    heads, scale = query.shape[1], query.shape[-1] ** -0.5
    block_size = block_size_of(head_key_blocks, middle_bias)
    # sum(grad_context * context) over head_dim: the softmax backward's row term, for all queries at once.
    grad_dot_context = (grad_context * context).sum(-1, keepdim=True)
    scaled_query = query * scale
    grad_query, grad_key_value = torch.empty_like(query), torch.empty_like(key_value)
    key, value, scratch = *split_key_value(key_value), TileScratch(query)
    # The global query blocks see every key: a few heads at a time keep their scores small.
    score_bytes = query.shape[0] * 2 * block_size * key.shape[2] * query.element_size()
    for chunk in cpu_ranges(heads, score_bytes, query.device):
        scratch.next_tile()
        chunk_query, chunk_grad_context, chunk_grad_dot = (
            global_rows(states[:, chunk], block_size) for states in (scaled_query, grad_context, grad_dot_context))
        global_grad_query, grad_key_value[:, chunk] = attention_gradients(
            chunk_query, key[:, chunk], value[:, chunk], global_bias, chunk_grad_context, chunk_grad_dot, scratch)
        grad_query[:, chunk, :block_size], grad_query[:, chunk, -block_size:] = first_and_last(global_grad_query,
                                                                                               block_size)
    # The middle query blocks, tile by tile; their key/value gradients are added to the global blocks' ones.
    middle_grad_query, middle_grad_context, middle_grad_dot = (
        middle_rows(states, block_size) for states in (grad_query, grad_context, grad_dot_context))
    tiles = middle_tiles(key_value, head_key_blocks)
    operands = middle_tile_operands(scaled_query, key_value, head_key_blocks, middle_bias, tiles, scratch)
    for (inputs, rows), tile_operands in zip(tiles, operands):
        tile_grad_query, tile_grad_key_value = attention_gradients(
            *tile_operands, middle_grad_context[inputs, :, rows].flatten(0, 1),
            middle_grad_dot[inputs, :, rows].flatten(0, 1), scratch)
        middle_grad_query[inputs, :, rows] = tile_grad_query.unflatten(0, (-1, heads))
        add_key_block_gradients(grad_key_value, tile_grad_key_value, head_key_blocks, inputs, rows)
    return grad_query.mul_(scale), grad_key_value


def attention_gradients(scaled_query, key, value, bias, grad_context, grad_dot_context, scratch: TileScratch):
    """Gradients of softmax(scaled_query key^T + bias) value with respect to scaled_query and to key and value
    (side by side in one tensor), from probabilities recomputed here. grad_dot_context: sum(grad_context *
    context, -1). Temporaries come from `scratch`."""
    *batch, queries, head_dim = scaled_query.shape
    keys = key.shape[-2]
    scores = torch.matmul(scaled_query, key.transpose(-1, -2), out=scratch.take(*batch, queries, keys))
    if bias is not None:
        scores += bias
    probs = torch.softmax(scores, dim=-1, out=scratch.take(*batch, queries, keys))
    grad_value = torch.matmul(probs.transpose(-1, -2), grad_context, out=scratch.take(*batch, keys, head_dim))
    grad_scores = torch.matmul(grad_context, value.transpose(-1, -2), out=scores)
    grad_scores.sub_(grad_dot_context).mul_(probs)  # softmax backward
    grad_key = torch.matmul(grad_scores.transpose(-1, -2), scaled_query, out=scratch.take(*batch, keys, head_dim))
    grad_query = torch.matmul(grad_scores, key, out=scratch.take(*batch, queries, head_dim))
    # Products into contiguous results, then one concatenation: with several threads a batched product into a
    # strided view runs one parallel region per matrix, which stalls on cores shared with other processes.
    grad_key_value = torch.cat([grad_key, grad_value], dim=-1, out=scratch.take(*batch, keys, 2 * head_dim))
    return grad_query, grad_key_value


def middle_block_bias(layout: BlockSparseLayout, token_mask, dtype) -> torch.Tensor:
    """Additive bias of the gathered keys, [1 or batch, 1 or heads, rows, 1, keys]: the duplicate global slots
    of the second and second-to-last row and, only when there is padding, the padded keys."""
    allowed = layout.key_allowed[None, None, :, None, :]
    if token_mask is not None:
        token_blocks = token_mask.unflatten(1, (layout.num_blocks, -1))  # [batch, blocks, block_size]
        key_tokens = token_blocks[:, layout.key_blocks].flatten(-2)  # [batch, heads, rows, keys]
        allowed = allowed & key_tokens[:, :, :, None, :]
    return additive_mask(allowed, dtype)


def dense_block_sparse_probs(global_probs, middle_probs, layout, block_size, seq_length):
    """The block-sparse probabilities as a dense [batch, heads, seq, seq] matrix (only for output_attentions)."""
    batch, heads = global_probs.shape[:2]
    dense = global_probs.new_zeros(batch, heads, seq_length, seq_length)
    dense[:, :, :block_size] = global_probs[:, :, :block_size]
    dense[:, :, -block_size:] = global_probs[:, :, block_size:]
    key_tokens = (layout.key_blocks[..., None] * block_size + torch.arange(block_size, device=dense.device))
    key_tokens = key_tokens.flatten(-2)  # [heads, rows, slots * block_size]
    rows = layout.key_blocks.shape[1]
    index = key_tokens[None, :, :, None, :].expand(batch, heads, rows, block_size, -1)
    middle = dense[:, :, block_size:-block_size].view(batch, heads, rows, block_size, seq_length)
    # scatter_add: a random block that repeats another block is counted twice, as in the softmax.
    middle.scatter_add_(-1, index, middle_probs)
    return dense


class BigBirdPegasusEncoderAttention(nn.Module):
    def __init__(self, config: BigBirdPegasusConfig, layer_idx: int):
        super().__init__()
        self.self = BigBirdPegasusSelfAttention(config, layer_idx)
        self.output = nn.Linear(config.d_model, config.d_model, bias=config.use_bias)

    def forward(self, hidden_states, attention_mask, use_block_sparse, output_attentions=False, head_mask=None):
        context, probs = self.self(hidden_states, attention_mask, use_block_sparse, output_attentions, head_mask)
        return self.output(context), probs


# ----------------------------------------------------------------------------------------------------------------
# Decoder attention: causal self-attention and cross-attention, with a transformers Cache.
# ----------------------------------------------------------------------------------------------------------------


class BigBirdPegasusDecoderAttention(nn.Module):
    """Multi-head attention of the decoder; with `is_cross_attention` its keys/values come from the encoder."""

    def __init__(self, config: BigBirdPegasusConfig, layer_idx: int, is_cross_attention: bool):
        super().__init__()
        self.num_heads = config.decoder_attention_heads
        self.dropout = config.attention_dropout
        self.layer_idx = layer_idx
        self.is_cross_attention = is_cross_attention
        self.q_proj = nn.Linear(config.d_model, config.d_model, bias=config.use_bias)
        self.k_proj = nn.Linear(config.d_model, config.d_model, bias=config.use_bias)
        self.v_proj = nn.Linear(config.d_model, config.d_model, bias=config.use_bias)
        self.out_proj = nn.Linear(config.d_model, config.d_model, bias=config.use_bias)

    def forward(self, hidden_states, key_value_states=None, mask=None, cache=None, output_attentions=False,
                head_mask=None, cache_position=None):
        """mask: the encoder's additive bias (cross-attention) or a `DecoderSelfAttentionMask` (self-attention)."""
        batch, length, width = hidden_states.shape
        if self.is_cross_attention:
            key, value, bias = self.cross_key_value(key_value_states, cache, batch, mask)
        else:
            key, value = self.self_key_value(hidden_states, cache, cache_position)
            bias = None if mask is None else mask.bias(key.shape[2])
        # In generation all beams of one input share one encoder output (see `SharedCrossAttentionLayer`): their
        # queries attend to it together, as one longer query per input.
        query = split_heads(self.q_proj(hidden_states).reshape(key.shape[0], -1, width), self.num_heads)
        dropout = self.dropout if self.training else 0.0
        context, probs = attend(query, key, value, bias, dropout, output_attentions)
        context, probs = apply_head_mask(context, probs, head_mask)
        output = self.out_proj(merge_heads(context)).view(batch, length, width)
        return output, ungroup_queries(probs, batch)

    def self_key_value(self, hidden_states, cache, cache_position):
        key = split_heads(self.k_proj(hidden_states), self.num_heads)
        value = split_heads(self.v_proj(hidden_states), self.num_heads)
        if cache is not None:
            self_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
            # transformers 4's static cache writes at `cache_position`; every other layer ignores it.
            key, value = self_cache.update(key, value, self.layer_idx, {"cache_position": cache_position})
        return key, value

    def cross_key_value(self, encoder_states, cache, rows, encoder_bias):
        """Keys and values of the encoder output and its bias, for `rows` decoder rows. The encoder output does not
        change during generation: it is projected once, then read from the cache."""
        cross_cache = cache.cross_attention_cache if isinstance(cache, EncoderDecoderCache) else None
        if cross_cache is not None and cache.is_updated.get(self.layer_idx):
            layer = cross_cache.layers[self.layer_idx]
        else:
            key = split_heads(self.k_proj(encoder_states), self.num_heads)
            value = split_heads(self.v_proj(encoder_states), self.num_heads)
            if cross_cache is None:
                return key, value, encoder_bias
            layer = cross_attention_layer(cross_cache, self.layer_idx, rows // key.shape[0])
            layer.update(key, value, {"cache_position": torch.arange(key.shape[2], device=key.device)})
            cache.is_updated[self.layer_idx] = True
        if isinstance(layer, SharedCrossAttentionLayer) and layer.grouped:
            return layer.input_keys, layer.input_values, encoder_bias
        if isinstance(layer, SharedCrossAttentionLayer) and encoder_bias is not None:
            encoder_bias = encoder_bias.index_select(0, layer.row_inputs)  # one bias row per decoder row
        return layer.keys, layer.values, encoder_bias


def cross_attention_layer(cross_cache: Cache, layer_idx: int, rows_per_input: int):
    """The cache layer that stores the cross-attention keys and values of `layer_idx`. When several decoder rows
    read each encoder output (beams, returned sequences), an empty layer is swapped for a `SharedCrossAttentionLayer`
    so that they are stored once per input."""
    layers = cross_cache.layers
    while len(layers) <= layer_idx:  # caches that add their layers lazily
        layers.append((cross_cache.layer_class_to_replicate or DynamicLayer)())
    if rows_per_input > 1 and not layers[layer_idx].is_initialized:
        layers[layer_idx] = SharedCrossAttentionLayer(rows_per_input)
    return layers[layer_idx]


class SharedCrossAttentionLayer(DynamicLayer):
    """A cross-attention cache layer that stores the keys and values once per input while it serves
    `rows_per_input` decoder rows of each (beams or returned sequences): beam search never copies them.

    To everything outside the attention it is a standard cache layer with one row per decoder row: `keys` and
    `values` have batch `inputs * rows_per_input` (built on access), and `reorder_cache`, `batch_select_indices` and
    `batch_repeat_interleave` move rows, by remapping which input each row reads (`row_inputs`). While every input's
    rows are still consecutive and equally many (`grouped`, which beam search preserves), the attention reads the
    per-input `input_keys` and `input_values` directly."""

    def __init__(self, rows_per_input: int = 1):
        super().__init__()
        self.rows_per_input = rows_per_input
        self.input_keys = self.input_values = self.row_inputs = None
        self.grouped = False

    def lazy_initialization(self, key_states, value_states=None):
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        """Stores the encoder's keys and values, [inputs, heads, length, head_dim], for `rows_per_input`
        consecutive decoder rows per input."""
        if self.is_initialized:
            raise ValueError("The cross-attention cache holds the encoder output already: reset() it first.")
        self.lazy_initialization(key_states)
        self.input_keys, self.input_values = key_states, value_states
        rows = key_states.shape[0] * self.rows_per_input
        self.row_inputs = torch.arange(rows, device=key_states.device) // self.rows_per_input
        self.grouped = True
        return key_states, value_states

    def assign_rows(self, row_inputs: torch.Tensor):
        """Row `i` reads input `row_inputs[i]`."""
        self.row_inputs = row_inputs.to(self.input_keys.device)
        inputs, rows = self.input_keys.shape[0], self.row_inputs.shape[0]
        per_input = torch.arange(rows, device=self.row_inputs.device) // max(rows // inputs, 1)
        self.grouped = rows % inputs == 0 and bool(torch.equal(self.row_inputs, per_input))

    @property
    def keys(self):
        return self._rows(self.input_keys)

    @keys.setter
    def keys(self, keys):  # a standard per-row write (the base class's own methods): rows become inputs
        self._store_rows(keys, "input_keys")

    @property
    def values(self):
        return self._rows(self.input_values)

    @values.setter
    def values(self, values):
        self._store_rows(values, "input_values")

    def _rows(self, per_input):
        if per_input is None or self.row_inputs is None:
            return per_input
        return per_input.index_select(0, self.row_inputs)

    def _store_rows(self, tensor, name):
        if getattr(self, "row_inputs", None) is not None:  # materialize both before one of them changes
            self.input_keys, self.input_values, self.row_inputs = self.keys, self.values, None
        setattr(self, name, tensor)
        self.grouped = False

    def get_seq_length(self) -> int:
        return 0 if self.input_keys is None else self.input_keys.shape[-2]

    def reorder_cache(self, beam_idx: torch.LongTensor):
        if self.input_keys is not None:
            self.assign_rows(self.row_inputs.index_select(0, beam_idx.to(self.row_inputs.device)))

    def batch_select_indices(self, indices: torch.Tensor):
        if self.input_keys is not None:
            self.assign_rows(self.row_inputs[indices])

    def batch_repeat_interleave(self, repeats: int):
        if self.input_keys is not None:
            self.assign_rows(self.row_inputs.repeat_interleave(repeats))

    def offload(self):
        self._move("cpu")

    def prefetch(self):
        self._move(self.device)

    def _move(self, device):
        if self.input_keys is not None:
            self.input_keys = self.input_keys.to(device, non_blocking=True)
            self.input_values = self.input_values.to(device, non_blocking=True)
            self.row_inputs = self.row_inputs.to(device, non_blocking=True)

    def reset(self):
        self.input_keys = self.input_values = self.row_inputs = None
        self.grouped = self.is_initialized = False


class DecoderSelfAttentionMask:
    """What every new decoder token may attend to, as an additive bias for a given number of keys: past and new
    tokens with a dynamic cache, the capacity of a static one (whose unwritten slots lie after the new tokens).

    attention_mask: None (causal); 2D [batch, keys] with 1 for tokens and 0 for padding, covering the past and new
    tokens or only the new ones (causal too); or a complete 4D [batch, 1, queries, keys] mask, used as given:
    bool or integer (True / 1 attends) or floating (added to the scores, 0 attends). query_slots: [queries] cache
    slot of each new token (past length + 0, 1, ...; a tensor when a static cache counts its length).
    """

    def __init__(self, attention_mask, past_length, query_slots, dtype):
        if attention_mask is not None and attention_mask.dim() not in (2, 4):
            raise ValueError("The decoder attention_mask must be 2D [batch, length] (1 for tokens, 0 for padding) or "
                             f"4D [batch, 1, queries, keys], got shape {tuple(attention_mask.shape)}.")
        self.attention_mask, self.past_length, self.query_slots, self.dtype = (
            attention_mask, past_length, query_slots, dtype)
        self._biases = {}

    def bias(self, key_length: int):
        if not isinstance(key_length, int):  # a symbolic length (export): the compiler shares the work itself
            return self._build(key_length)
        if key_length not in self._biases:
            self._biases[key_length] = self._build(key_length)
        return self._biases[key_length]

    def _build(self, key_length):
        mask, queries = self.attention_mask, self.query_slots.shape[0]
        if mask is not None and mask.dim() == 4:
            return four_dimensional_bias(mask, queries, key_length, self.dtype)
        # A single new token sees every cached one: no bias at all without padding (every dynamic-cache step).
        if mask is None and queries == 1 and isinstance(self.past_length, int) and key_length == self.past_length + 1:
            return None
        device = self.query_slots.device
        allowed = (torch.arange(key_length, device=device)[None, :] <= self.query_slots[:, None])[None, None]
        if mask is not None:
            allowed = allowed & key_padding(mask, self.past_length, queries, key_length).to(device)[:, None, None, :]
        return additive_mask(allowed, self.dtype)


def key_padding(attention_mask, past_length, queries, key_length):
    """A 2D padding mask as [batch, key_length] bool, aligned with the cache slots."""
    if attention_mask.shape[1] == queries and isinstance(past_length, int) and past_length:
        attention_mask = F.pad(attention_mask, (past_length, 0), value=1)  # mask of the new tokens only
    if attention_mask.shape[1] < key_length:  # a static cache's unwritten slots: causality masks them
        attention_mask = F.pad(attention_mask, (0, key_length - attention_mask.shape[1]), value=1)
    return attention_mask[:, -key_length:].bool()


def four_dimensional_bias(mask, queries, key_length, dtype):
    if mask.shape[1] != 1 or mask.shape[2] != queries or mask.shape[3] != key_length:
        raise ValueError(
            f"A 4D decoder attention_mask must have shape [batch, 1, {queries} (new tokens), {key_length} (cached and "
            f"new tokens)] here, got {tuple(mask.shape)}."
        )
    return mask.to(dtype) if mask.is_floating_point() else additive_mask(mask.bool(), dtype)


def ungroup_queries(probs, batch):
    """[inputs, heads, beams * length, keys] probabilities of grouped queries -> [batch, heads, length, keys]."""
    if probs is None or probs.shape[0] == batch:
        return probs
    inputs, heads, _, keys = probs.shape
    return probs.view(inputs, heads, batch // inputs, -1, keys).transpose(1, 2).reshape(batch, heads, -1, keys)


# ----------------------------------------------------------------------------------------------------------------
# Layers: pre-norm residual blocks.
# ----------------------------------------------------------------------------------------------------------------


class FeedForwardMixin:
    """The position-wise feed-forward block shared by encoder and decoder layers (fc1/fc2 names kept flat)."""

    def feed_forward(self, hidden_states):
        hidden_states = self.activation_fn(self.fc1(hidden_states))
        hidden_states = F.dropout(hidden_states, p=self.activation_dropout, training=self.training)
        return F.dropout(self.fc2(hidden_states), p=self.dropout, training=self.training)

    def residual(self, hidden_states, sublayer_output):
        return hidden_states + F.dropout(sublayer_output, p=self.dropout, training=self.training)

    def init_feed_forward(self, config: BigBirdPegasusConfig, ffn_dim: int):
        self.dropout = config.dropout
        self.activation_dropout = config.activation_dropout
        self.activation_fn = ACT2FN[FUSED_ACTIVATIONS.get(config.activation_function, config.activation_function)]
        self.fc1 = nn.Linear(config.d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, config.d_model)
        self.final_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)


class BigBirdPegasusEncoderLayer(FeedForwardMixin, GradientCheckpointingLayer):
    def __init__(self, config: BigBirdPegasusConfig, layer_idx: int):
        super().__init__()
        self.self_attn = BigBirdPegasusEncoderAttention(config, layer_idx)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.init_feed_forward(config, config.encoder_ffn_dim)

    def forward(self, hidden_states, attention_mask, use_block_sparse, output_attentions=False, head_mask=None):
        attended, probs = self.self_attn(self.self_attn_layer_norm(hidden_states), attention_mask,
                                         use_block_sparse, output_attentions, head_mask)
        hidden_states = self.residual(hidden_states, attended)
        hidden_states = hidden_states + self.feed_forward(self.final_layer_norm(hidden_states))
        return clamp_fp16_overflow(hidden_states), probs


class BigBirdPegasusDecoderLayer(FeedForwardMixin, GradientCheckpointingLayer):
    def __init__(self, config: BigBirdPegasusConfig, layer_idx: int):
        super().__init__()
        self.self_attn = BigBirdPegasusDecoderAttention(config, layer_idx, is_cross_attention=False)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.encoder_attn = BigBirdPegasusDecoderAttention(config, layer_idx, is_cross_attention=True)
        self.encoder_attn_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.init_feed_forward(config, config.decoder_ffn_dim)

    def forward(self, hidden_states, self_attention_mask=None, encoder_hidden_states=None,
                encoder_attention_bias=None, cache=None, output_attentions=False, head_mask=None,
                cross_attn_head_mask=None, cache_position=None):
        attended, self_probs = self.self_attn(self.self_attn_layer_norm(hidden_states), None, self_attention_mask,
                                              cache, output_attentions, head_mask, cache_position)
        hidden_states = self.residual(hidden_states, attended)
        cross_probs = None
        if encoder_hidden_states is not None:
            attended, cross_probs = self.encoder_attn(self.encoder_attn_layer_norm(hidden_states),
                                                      encoder_hidden_states, encoder_attention_bias, cache,
                                                      output_attentions, cross_attn_head_mask)
            hidden_states = self.residual(hidden_states, attended)
        hidden_states = hidden_states + self.feed_forward(self.final_layer_norm(hidden_states))
        return hidden_states, self_probs, cross_probs


def clamp_fp16_overflow(hidden_states):
    # fp16 activations of long inputs can overflow to inf; clamp them as the built-in model does.
    if hidden_states.dtype != torch.float16:
        return hidden_states
    limit = torch.finfo(hidden_states.dtype).max - 1000
    if torch.compiler.is_compiling():  # compiled or exported: the same choice in the graph, no branch on data
        return torch.where(torch.isfinite(hidden_states).all(), hidden_states, hidden_states.clamp(-limit, limit))
    if not torch.isfinite(hidden_states).all():
        hidden_states = hidden_states.clamp(min=-limit, max=limit)
    return hidden_states


# ----------------------------------------------------------------------------------------------------------------
# Pretrained-model plumbing.
# ----------------------------------------------------------------------------------------------------------------


class BigBirdPegasusPreTrainedModel(PreTrainedModel):
    config_class = BigBirdPegasusConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BigBirdPegasusEncoderLayer", "BigBirdPegasusDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True
    _supports_cache_class = True
    # generate(cache_implementation="static") and compiled decoding steps (one graph, no recompiles per step).
    _supports_static_cache = True
    _can_compile_fullgraph = True

    def get_encoder(self, modality: str | None = None):
        """The text encoder. This model has no image, video or audio encoder: for those it answers itself, as
        transformers 5's `PreTrainedModel.get_encoder` does when a model has no such encoder."""
        if modality not in (None, "image", "video", "audio"):
            raise ValueError(f'modality must be None, "image", "video" or "audio", got {modality!r}.')
        encoder = getattr(self.base_model, "encoder", None)
        return encoder if modality is None and encoder is not None else self

    def get_decoder(self):
        return getattr(self.base_model, "decoder", self)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Saves as transformers does, with the config.json of a complete plugin repo whichever head is saved:
        every head's `auto_map` entry and the summarization pipeline (`custom_pipelines`)."""
        from .pipeline_bigbird_pegasus import CUSTOM_PIPELINES  # also makes transformers copy that file along

        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **auto_map()}
        self.config.custom_pipelines = CUSTOM_PIPELINES
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module):
        # nn.init.* is looked up at call time: transformers 5 wraps it to skip weights loaded from a checkpoint.
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, BigBirdPegasusForConditionalGeneration):
            nn.init.zeros_(module.final_logits_bias)

    if not TRANSFORMERS_V5:

        @classmethod
        def _load_pretrained_model(cls, model, *args, **kwargs):
            # transformers 4 sends a top-level tensor that the device_map puts on "disk" (final_logits_bias) to
            # the offload index, but accelerate only hooks modules: it would silently keep its initial zeros.
            result = super()._load_pretrained_model(model, *args, **kwargs)
            if "disk" in (kwargs.get("device_map") or {}).values():
                load_offloaded_top_level_tensors(model, result[4], kwargs.get("disk_offload_folder"))
            return result

    @property
    def dummy_inputs(self):
        pad = self.config.pad_token_id
        input_ids = torch.tensor([[0, 6, 10, 4, 2], [0, 8, 12, 2, pad]], device=self.device)
        return {"attention_mask": input_ids.ne(pad), "input_ids": input_ids}


def load_offloaded_top_level_tensors(model, offload_index, offload_folder):
    """Loads onto the CPU the disk-offloaded tensors that belong to the model itself, not to a submodule.

    `offload_index` points into safetensors checkpoints; without it (other checkpoints) the weights and their
    index were written to `offload_folder`.
    """
    try:  # transformers' remote-code import check skips try blocks: only device_map users need accelerate
        from accelerate.utils import OffloadedWeightsLoader, set_module_tensor_to_device
    except ImportError as error:  # unreachable: device_map needs accelerate
        raise ImportError("Offloading to disk needs accelerate: pip install accelerate") from error
    weights = OffloadedWeightsLoader(save_folder=offload_folder, index=offload_index)
    for name in weights.all_keys:
        if "." not in name:
            set_module_tensor_to_device(model, name, "cpu", value=weights[name])


def scaled_word_embedding(config: BigBirdPegasusConfig) -> BigBirdPegasusScaledWordEmbedding:
    scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
    return BigBirdPegasusScaledWordEmbedding(config.vocab_size, config.d_model, config.pad_token_id, scale)


class BigBirdPegasusStack(BigBirdPegasusPreTrainedModel):
    """Token and position embeddings, a stack of layers and a final LayerNorm (named `layernorm_embedding`, as in
    the built-in model): what the encoder and the decoder share."""

    def __init__(self, config: BigBirdPegasusConfig, layer_class, num_layers: int):
        super().__init__(config)
        self.embed_tokens = scaled_word_embedding(config)
        self.embed_positions = BigBirdPegasusLearnedPositionalEmbedding(config.max_position_embeddings, config.d_model)
        self.layers = nn.ModuleList(layer_class(config, i) for i in range(num_layers))
        self.layernorm_embedding = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value


class BigBirdPegasusEncoder(BigBirdPegasusStack):
    """`encoder_layers` block-sparse layers."""

    def __init__(self, config: BigBirdPegasusConfig):
        super().__init__(config, BigBirdPegasusEncoderLayer, config.encoder_layers)

    def forward(self, input_ids=None, attention_mask=None, head_mask=None, inputs_embeds=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        output_attentions, output_hidden_states, return_dict = resolve_output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        inputs_embeds = embed_inputs(self.embed_tokens, input_ids, inputs_embeds)
        batch, seq_length = inputs_embeds.shape[:2]
        check_length(seq_length, self.config.max_position_embeddings, "input")
        # A device_map may put embed_positions on another device than embed_tokens.
        positions = self.embed_positions(torch.arange(seq_length, device=inputs_embeds.device))
        hidden_states = inputs_embeds + positions.to(inputs_embeds.device, inputs_embeds.dtype)
        hidden_states = F.dropout(hidden_states, p=self.config.dropout, training=self.training)
        if attention_mask is None:
            attention_mask = torch.ones(batch, seq_length, dtype=torch.long, device=hidden_states.device)
        check_head_mask(head_mask, len(self.layers), "head_mask")

        padded_length = self.padded_length(seq_length)
        use_block_sparse = self.uses_block_sparse(padded_length)
        padding = padded_length - seq_length if use_block_sparse else 0
        hidden_states = F.pad(hidden_states, (0, 0, 0, padding))
        attention_mask = F.pad(attention_mask, (0, padding), value=0)
        attention_mask = None if is_unpadded(attention_mask) else attention_mask

        all_hidden_states, all_attentions = [], []
        for idx, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden_states.append(hidden_states[:, :seq_length])
            if skip_layer(self.training, self.config.encoder_layerdrop):
                all_attentions.append(None)
                continue
            hidden_states, probs = layer(hidden_states, attention_mask, use_block_sparse, output_attentions,
                                         None if head_mask is None else head_mask[idx])
            all_attentions.append(None if probs is None else probs[..., :seq_length, :seq_length])
        hidden_states = first_positions(self.layernorm_embedding(hidden_states), seq_length)
        if output_hidden_states:
            all_hidden_states.append(hidden_states)

        output = BaseModelOutput(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
        )
        return output if return_dict else output.to_tuple()

    def padded_length(self, seq_length: int) -> int:
        """The length block-sparse attention runs at: the next multiple of `config.pad_to_multiple_of` if set,
        else of `block_size`. Padding tokens are masked and cut from the output."""
        multiple = self.config.pad_to_multiple_of or self.config.block_size
        return (seq_length + multiple - 1) // multiple * multiple

    def uses_block_sparse(self, padded_length: int) -> bool:
        """Block-sparse needs more tokens than the global, window and random blocks together; shorter inputs
        use full attention for this call only (the same rule as the built-in model)."""
        if self.config.attention_type != "block_sparse":
            return False
        min_tokens = (5 + 2 * self.config.num_random_blocks) * self.config.block_size
        if padded_length <= min_tokens:
            if not torch.compiler.is_compiling():
                logger.warning_once(
                    f"Input of {padded_length} tokens (padded) is too short for block-sparse attention (needs more "
                    f"than {min_tokens} = (5 + 2 * num_random_blocks) * block_size): using full attention for such "
                    "inputs."
                )
            return False
        return True


class BigBirdPegasusDecoder(BigBirdPegasusStack):
    """`decoder_layers` causal layers with cross-attention."""

    def __init__(self, config: BigBirdPegasusConfig):
        super().__init__(config, BigBirdPegasusDecoderLayer, config.decoder_layers)

    @accepts_past_key_values
    def forward(self, input_ids=None, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                head_mask=None, cross_attn_head_mask=None, past_key_values=None, inputs_embeds=None,
                use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None,
                cache=None, position_ids=None, **kwargs):
        """attention_mask: None, 2D padding or a complete 4D mask (see `DecoderSelfAttentionMask`). position_ids:
        [batch or 1, length] positions of the new tokens (default: after the cached ones)."""
        output_attentions, output_hidden_states, return_dict = resolve_output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        cache = cache if cache is not None else past_key_values
        if self.gradient_checkpointing and self.training and use_cache:
            logger.warning_once("use_cache=True is incompatible with gradient checkpointing: not caching.")
            use_cache = False
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache()) if encoder_hidden_states is not None \
                else DynamicCache()
        if not use_cache:
            cache = None
        if cache is not None and not isinstance(cache, Cache):
            raise TypeError("past_key_values/cache must be a transformers Cache (e.g. EncoderDecoderCache).")
        check_head_mask(head_mask, len(self.layers), "head_mask")
        check_head_mask(cross_attn_head_mask, len(self.layers), "cross_attn_head_mask")

        inputs_embeds = embed_inputs(self.embed_tokens, input_ids, inputs_embeds)
        batch, seq_length = inputs_embeds.shape[:2]
        # An int, or a 0-d tensor for a static cache (a compiled decoding step must not read it on the host).
        past_length = cache.get_seq_length() if cache is not None else 0
        if isinstance(past_length, int):
            check_length(past_length + seq_length, self.config.max_position_embeddings, "decoder input")
        cache_position = kwargs.get("cache_position")  # transformers 4 passes it; 5 does not
        if cache_position is None:
            cache_position = torch.arange(seq_length, device=inputs_embeds.device) + past_length
        positions = self.embed_positions(cache_position if position_ids is None else position_ids)
        hidden_states = inputs_embeds + positions.to(inputs_embeds.device, inputs_embeds.dtype)
        hidden_states = F.dropout(hidden_states, p=self.config.dropout, training=self.training)

        self_mask = DecoderSelfAttentionMask(attention_mask, past_length, cache_position, hidden_states.dtype)
        cross_bias = None
        if encoder_hidden_states is not None:
            check_encoder_batch(batch, encoder_hidden_states.shape[0])
        if encoder_hidden_states is not None and encoder_attention_mask is not None:
            cross_bias = additive_mask(encoder_attention_mask.bool()[:, None, None, :], hidden_states.dtype)

        all_hidden_states, all_self, all_cross = [], [], []
        for idx, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            if skip_layer(self.training, self.config.decoder_layerdrop):
                continue
            hidden_states, self_probs, cross_probs = layer(
                hidden_states, self_mask, encoder_hidden_states, cross_bias, cache, output_attentions,
                None if head_mask is None else head_mask[idx],
                None if cross_attn_head_mask is None else cross_attn_head_mask[idx], cache_position,
            )
            all_self.append(self_probs)
            all_cross.append(cross_probs)
        hidden_states = self.layernorm_embedding(hidden_states)
        if output_hidden_states:
            all_hidden_states.append(hidden_states)

        output = BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(all_self) if output_attentions else None,
            cross_attentions=tuple(all_cross) if output_attentions and encoder_hidden_states is not None else None,
            **{CACHE_FIELD: cache},
        )
        return output if return_dict else output.to_tuple()


def resolve_output_flags(config, output_attentions, output_hidden_states, return_dict):
    return (
        config.output_attentions if output_attentions is None else output_attentions,
        config.output_hidden_states if output_hidden_states is None else output_hidden_states,
        config.return_dict if return_dict is None else return_dict,
    )


def embed_inputs(embed_tokens, input_ids, inputs_embeds):
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
    if inputs_embeds is not None:
        return inputs_embeds
    # torch's own error for an id outside the vocabulary is a bare "index out of range". One min/max pass and one
    # sync name the id; compiled and exported graphs skip the check (no data-dependent branch in them).
    if input_ids.numel() and not (torch.compiler.is_compiling() or torch.jit.is_tracing() or input_ids.is_meta):
        low, high = torch.stack(torch.aminmax(input_ids)).tolist()
        if low < 0 or high >= embed_tokens.num_embeddings:
            raise ValueError(
                f"Token id {low if low < 0 else high} is outside the model's vocabulary of {embed_tokens.num_embeddings}"
                f" ids (0 to {embed_tokens.num_embeddings - 1}): the inputs come from another tokenizer than the "
                "model's, or hold padding such as -100 that must be replaced by the pad token id."
            )
    return embed_tokens(input_ids)


def check_length(length: int, max_positions: int, what: str):
    if length > max_positions:
        raise ValueError(
            f"The {what} has {length} tokens but the model has only {max_positions} positions "
            "(config.max_position_embeddings): truncate it, e.g. tokenizer(..., truncation=True)."
        )


def check_head_mask(head_mask, num_layers: int, name: str):
    if head_mask is not None and head_mask.shape[0] != num_layers:
        raise ValueError(f"{name} must have one row per layer ({num_layers}), got shape {tuple(head_mask.shape)}.")


def check_encoder_batch(batch: int, encoder_batch: int):
    # Rows of one input may share its encoder output (beam search does): `batch` is a multiple of its batch.
    if batch % encoder_batch != 0:
        raise ValueError(
            f"The decoder input has {batch} rows but encoder_hidden_states has {encoder_batch}: pass one encoder "
            "output per decoder row, or one per input shared by consecutive rows (e.g. beams)."
        )


def first_positions(states: torch.Tensor, length) -> torch.Tensor:
    """states[:, :length]. While tracing a gather: the strides of a slice make symbolic shapes ask whether anything
    was cut, which an export with a dynamic length cannot answer once for all lengths."""
    if torch.compiler.is_compiling():
        return states.index_select(1, torch.arange(length, device=states.device))
    return states[:, :length]


def is_unpadded(attention_mask: torch.Tensor) -> bool:
    """True when the mask has no padding, so attention can skip its key-padding bias. One check per forward;
    under torch.compile we keep the mask rather than break the graph on a data-dependent branch."""
    if getattr(torch.compiler, "is_compiling", lambda: False)():  # torch >= 2.3
        return False
    return bool(attention_mask.all())


def skip_layer(training: bool, layerdrop: float) -> bool:
    # LayerDrop (https://huggingface.co/papers/1909.11556), in training only.
    return training and layerdrop > 0.0 and bool(torch.rand([]) < layerdrop)


# ----------------------------------------------------------------------------------------------------------------
# Models.
# ----------------------------------------------------------------------------------------------------------------


class BigBirdPegasusModel(BigBirdPegasusPreTrainedModel):
    """The bare encoder-decoder, returning the decoder's last hidden state."""

    _tied_weights_keys = (
        {"encoder.embed_tokens.weight": "shared.weight", "decoder.embed_tokens.weight": "shared.weight"}
        if TRANSFORMERS_V5
        else ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
    )

    def __init__(self, config: BigBirdPegasusConfig):
        super().__init__(config)
        self.shared = scaled_word_embedding(config)
        self.encoder = BigBirdPegasusEncoder(config)
        self.decoder = BigBirdPegasusDecoder(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.shared

    def set_input_embeddings(self, value):
        self.shared = value
        self.encoder.embed_tokens = value
        self.decoder.embed_tokens = value

    # The encoder and decoder read the shared embeddings, as in Pegasus: that is the architecture, not an option.
    # `tie_word_embeddings` only says whether lm_head is tied to them too.
    def _tie_weights(self):  # transformers 4.x ties through this hook
        self.encoder.embed_tokens.weight = self.shared.weight
        self.decoder.embed_tokens.weight = self.shared.weight

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        """transformers 5 ties through this mapping, and drops all of it when `tie_word_embeddings` is off."""
        if all_submodels:
            return super().get_expanded_tied_weights_keys(all_submodels=True)
        return dict(self._tied_weights_keys)

    @accepts_past_key_values
    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                head_mask=None, decoder_head_mask=None, cross_attn_head_mask=None, encoder_outputs=None,
                past_key_values=None, inputs_embeds=None, decoder_inputs_embeds=None, use_cache=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, cache=None,
                decoder_position_ids=None, **kwargs):
        output_attentions, output_hidden_states, return_dict = resolve_output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            if input_ids is None:
                raise ValueError("Pass decoder_input_ids or decoder_inputs_embeds, or input_ids to shift right.")
            decoder_input_ids = shift_tokens_right(input_ids, self.config.pad_token_id,
                                                   self.config.decoder_start_token_id)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask, head_mask=head_mask,
                                           inputs_embeds=inputs_embeds, output_attentions=output_attentions,
                                           output_hidden_states=output_hidden_states, return_dict=True)
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids, attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state, encoder_attention_mask=attention_mask,
            head_mask=decoder_head_mask, cross_attn_head_mask=cross_attn_head_mask,
            cache=cache if cache is not None else past_key_values, inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=True, position_ids=decoder_position_ids, **cache_position_argument(kwargs),
        )
        output = Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            **{CACHE_FIELD: getattr(decoder_outputs, CACHE_FIELD)},
        )
        return output if return_dict else output.to_tuple()


def head_output(output_class, loss, outputs: Seq2SeqModelOutput, **fields):
    """A head's output: its loss and `fields`, plus everything the encoder-decoder returned except its last state."""
    return output_class(
        loss=loss,
        decoder_hidden_states=outputs.decoder_hidden_states,
        decoder_attentions=outputs.decoder_attentions,
        cross_attentions=outputs.cross_attentions,
        encoder_last_hidden_state=outputs.encoder_last_hidden_state,
        encoder_hidden_states=outputs.encoder_hidden_states,
        encoder_attentions=outputs.encoder_attentions,
        **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        **fields,
    )


class BigBirdPegasusForConditionalGeneration(BigBirdPegasusPreTrainedModel, GenerationMixin):
    """The encoder-decoder with a language-modeling head tied to the shared embeddings: summarization."""

    _tied_weights_keys = (
        {"lm_head.weight": "model.shared.weight"}
        if TRANSFORMERS_V5
        else ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"]
    )
    _keys_to_ignore_on_load_missing = ["final_logits_bias"]

    def __init__(self, config: BigBirdPegasusConfig):
        super().__init__(config)
        self.model = BigBirdPegasusModel(config)
        self.register_buffer("final_logits_bias", torch.zeros((1, config.vocab_size)))
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def _tie_weights(self):
        if self.config.tie_word_embeddings:
            self.model._tie_weights()
            self.lm_head.weight = self.model.shared.weight

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """Resizes the shared embeddings (and an untied lm_head) as transformers does, and `final_logits_bias` with
        them: kept values for kept tokens, 0 for new ones."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.resize_final_logits_bias(embeddings.weight.shape[0])
        return embeddings

    def resize_final_logits_bias(self, vocab_size: int):
        bias = self.final_logits_bias
        if vocab_size <= bias.shape[-1]:
            self.final_logits_bias = bias[:, :vocab_size].clone()
        else:
            self.final_logits_bias = F.pad(bias, (0, vocab_size - bias.shape[-1]))

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor):
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        """generate() hook: copies inputs once per beam (or returned sequence). The encoder output and its mask
        stay one per input instead: the cross-attention keys and values are projected, stored and read once per
        input (`SharedCrossAttentionLayer`), whatever the number of beams."""
        shared = {name: model_kwargs.pop(name) for name in ("encoder_outputs", "attention_mask")
                  if name in model_kwargs}
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=False, input_ids=input_ids, **model_kwargs)
        return input_ids, {**model_kwargs, **shared}

    @accepts_past_key_values
    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                head_mask=None, decoder_head_mask=None, cross_attn_head_mask=None, encoder_outputs=None,
                past_key_values=None, inputs_embeds=None, decoder_inputs_embeds=None, labels=None, use_cache=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, cache=None,
                decoder_position_ids=None, logits_to_keep=0, **kwargs):
        """logits_to_keep: compute the logits of the last `logits_to_keep` positions only (0: all), or of the
        positions in a 1D index tensor (generation asks for the last one)."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs = self.model(
            input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask, head_mask=head_mask, decoder_head_mask=decoder_head_mask,
            cross_attn_head_mask=cross_attn_head_mask, encoder_outputs=encoder_outputs,
            cache=cache if cache is not None else past_key_values, inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True, decoder_position_ids=decoder_position_ids,
            **cache_position_argument(kwargs),
        )
        logits = vocabulary_logits(self.lm_head, kept_positions(outputs.last_hidden_state, logits_to_keep))
        logits = logits + self.final_logits_bias.to(logits.device)
        loss = None if labels is None else language_modeling_loss(logits, labels)
        output = head_output(Seq2SeqLMOutput, loss, outputs, logits=logits)
        return output if return_dict else output.to_tuple()


def cache_position_argument(kwargs) -> dict:
    """transformers 4's generate passes `cache_position` (where a static cache writes): hand it to the decoder."""
    return {"cache_position": kwargs["cache_position"]} if kwargs.get("cache_position") is not None else {}


def kept_positions(hidden_states, logits_to_keep):
    """The positions whose logits are wanted: the last `logits_to_keep` (0: all), or those of an index tensor."""
    if isinstance(logits_to_keep, int):
        return hidden_states[:, -logits_to_keep:] if logits_to_keep else hidden_states
    return hidden_states[:, logits_to_keep]


# A decoding step multiplies a few rows by the whole output embedding. CPU BLAS runs that far below memory speed
# (one row takes the GEMV path, 2..8 rows a poor GEMM path), but weight @ rows^T with at least two rows reads the
# weight once at full speed: 96k x 512 head on the project's CPU, 1 row 31 -> 18 ms, 4 rows 82 -> 19 ms.
DECODING_ROWS = 8


def vocabulary_logits(lm_head: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """lm_head(hidden_states), computed the fast way for the few rows of an eager CPU decoding step."""
    if not takes_decoding_shortcut(lm_head, hidden_states):
        return lm_head(hidden_states)
    weight, rows = lm_head.weight, hidden_states.shape[:-1].numel()
    flat = hidden_states.reshape(rows, -1)
    logits = (weight @ (flat.repeat(2, 1) if rows == 1 else flat).t()).t()[:rows].contiguous()
    if lm_head.bias is not None:
        logits = logits + lm_head.bias
    return logits.reshape(*hidden_states.shape[:-1], -1)


def takes_decoding_shortcut(lm_head: nn.Module, hidden_states: torch.Tensor) -> bool:
    """Only for a plain fp32 `nn.Linear` on the CPU (not a quantized or otherwise replaced head), and never while a
    graph is exported or traced for other shapes (torch.export, torch.onnx.export, torch.jit.trace): the row count
    is decided here in Python and would be baked into the graph. torch.compile may take it: Dynamo guards the row
    count, so other row counts get their own graph."""
    exported = torch.compiler.is_exporting() or torch.jit.is_tracing()
    if type(lm_head) is not nn.Linear or exported or torch.compiler.is_compiling() != is_dynamo_compiling():
        return False
    weight = lm_head.weight
    return (hidden_states.shape[:-1].numel() <= DECODING_ROWS and weight.device.type == "cpu"
            and hidden_states.device == weight.device and weight.dtype == hidden_states.dtype == torch.float32)


def is_dynamo_compiling() -> bool:
    return getattr(torch.compiler, "is_dynamo_compiling", lambda: False)()


def language_modeling_loss(logits, labels):
    labels = labels.to(logits.device)
    return CrossEntropyLoss()(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))


def last_eos_states(hidden_states, input_ids, eos_token_id):
    """The decoder state at each row's last EOS: the sentence representation of Bart-style classifiers."""
    eos_mask = input_ids.eq(eos_token_id).to(hidden_states.device)
    counts = eos_mask.sum(1)
    if (counts == 0).any() or not (counts == counts[0]).all():
        raise ValueError("Every input must end with the same number of </s> (eos) tokens for classification.")
    return hidden_states[eos_mask, :].view(hidden_states.shape[0], -1, hidden_states.shape[-1])[:, -1, :]


class BigBirdPegasusClassificationHead(nn.Module):
    """dense -> tanh -> out_proj on the sentence representation (names as in the built-in model)."""

    def __init__(self, input_dim: int, inner_dim: int, num_classes: int, pooler_dropout: float):
        super().__init__()
        self.dense = nn.Linear(input_dim, inner_dim)
        self.dropout = nn.Dropout(p=pooler_dropout)
        self.out_proj = nn.Linear(inner_dim, num_classes)

    def forward(self, hidden_states):
        hidden_states = torch.tanh(self.dense(self.dropout(hidden_states)))
        return self.out_proj(self.dropout(hidden_states))


def classification_loss(config, logits, labels, num_labels):
    """Regression, single-label or multi-label loss, chosen as transformers' classifiers choose it."""
    labels = labels.to(logits.device)
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return MSELoss()(logits.squeeze(), labels.squeeze()) if num_labels == 1 else MSELoss()(logits, labels)
    if config.problem_type == "single_label_classification":
        return CrossEntropyLoss()(logits.view(-1, num_labels), labels.view(-1))
    return BCEWithLogitsLoss()(logits, labels)


class EncoderDecoderHeadMixin:
    """Shared plumbing of the heads that run the whole encoder-decoder once and read its output."""

    def run_model(self, input_ids, decoder_input_ids, kwargs):
        return self.model(input_ids, decoder_input_ids=decoder_input_ids, return_dict=True, **kwargs)



class BigBirdPegasusForSequenceClassification(EncoderDecoderHeadMixin, BigBirdPegasusPreTrainedModel):
    """Sequence classification or regression from the decoder state at the last </s> token."""

    # transformers 5 finds the embedding ties inside `model`; 4.x matches these names as patterns.
    _tied_weights_keys = None if TRANSFORMERS_V5 else ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]

    def __init__(self, config: BigBirdPegasusConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.model = BigBirdPegasusModel(config)
        self.classification_head = BigBirdPegasusClassificationHead(
            config.d_model, config.d_model, config.num_labels, config.classifier_dropout)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, labels=None, return_dict=None,
                **kwargs):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if input_ids is None and kwargs.get("inputs_embeds") is not None:
            raise NotImplementedError("Sequence classification needs input_ids to find the </s> token.")
        outputs = self.run_model(input_ids, decoder_input_ids, dict(kwargs, attention_mask=attention_mask))
        sentence = last_eos_states(outputs.last_hidden_state, input_ids, self.config.eos_token_id)
        logits = self.classification_head(sentence)
        loss = None if labels is None else classification_loss(self.config, logits, labels, self.config.num_labels)
        output = head_output(Seq2SeqSequenceClassifierOutput, loss, outputs, logits=logits)
        return output if return_dict else output.to_tuple()


class BigBirdPegasusForQuestionAnswering(EncoderDecoderHeadMixin, BigBirdPegasusPreTrainedModel):
    """Extractive question answering: start/end logits over the decoder states."""

    _tied_weights_keys = BigBirdPegasusForSequenceClassification._tied_weights_keys

    def __init__(self, config: BigBirdPegasusConfig):
        super().__init__(config)
        config.num_labels = 2
        self.num_labels = config.num_labels
        self.model = BigBirdPegasusModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, start_positions=None,
                end_positions=None, return_dict=None, **kwargs):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.run_model(input_ids, decoder_input_ids, dict(kwargs, attention_mask=attention_mask))
        start_logits, end_logits = self.qa_outputs(outputs.last_hidden_state).split(1, dim=-1)
        start_logits, end_logits = start_logits.squeeze(-1).contiguous(), end_logits.squeeze(-1).contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = span_loss(start_logits, end_logits, start_positions, end_positions)
        output = head_output(Seq2SeqQuestionAnsweringModelOutput, loss, outputs,
                                  start_logits=start_logits, end_logits=end_logits)
        return output if return_dict else output.to_tuple()


def span_loss(start_logits, end_logits, start_positions, end_positions):
    """Mean of start and end cross-entropies; positions outside the sequence are ignored."""
    length = start_logits.shape[1]
    loss_fct = CrossEntropyLoss(ignore_index=length)
    start = start_positions.view(-1).to(start_logits.device).clamp(0, length)
    end = end_positions.view(-1).to(end_logits.device).clamp(0, length)
    return (loss_fct(start_logits, start) + loss_fct(end_logits, end)) / 2


class BigBirdPegasusDecoderWrapper(BigBirdPegasusPreTrainedModel):
    """Holds the decoder under `model.decoder` so causal-LM weights keep the encoder-decoder's names."""

    def __init__(self, config: BigBirdPegasusConfig):
        super().__init__(config)
        self.decoder = BigBirdPegasusDecoder(config)
        self.post_init()

    def forward(self, *args, **kwargs):
        return self.decoder(*args, **kwargs)


# Checkpoint keys of a seq2seq model -> keys of the causal LM.
SEQ2SEQ_DECODER_KEYS = {
    r"^model\.shared\.weight$": "model.decoder.embed_tokens.weight",  # BigBirdPegasusForConditionalGeneration
    r"^shared\.weight$": "decoder.embed_tokens.weight",  # BigBirdPegasusModel
}


class BigBirdPegasusForCausalLM(BigBirdPegasusPreTrainedModel, GenerationMixin):
    """The decoder alone as a causal language model (optionally cross-attending to given encoder states)."""

    _tied_weights_keys = {"lm_head.weight": "model.decoder.embed_tokens.weight"} if TRANSFORMERS_V5 else ["lm_head.weight"]
    # A seq2seq checkpoint holds the decoder too: its encoder and final_logits_bias are simply not used.
    _keys_to_ignore_on_load_unexpected = [r"^(model\.)?encoder\.", r"^final_logits_bias$"]

    def __init__(self, config: BigBirdPegasusConfig):
        config = copy.deepcopy(config)
        config.is_decoder, config.is_encoder_decoder = True, False
        super().__init__(config)
        self.model = BigBirdPegasusDecoderWrapper(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.decoder.embed_tokens

    def set_input_embeddings(self, value):
        self.model.decoder.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def _tie_weights(self):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.decoder.embed_tokens.weight

    @classmethod
    def from_pretrained(cls, *args, key_mapping=None, **kwargs):
        """Also loads the decoder of a seq2seq checkpoint, which stores the decoder's token embeddings as the
        shared ones (`model.shared.weight`, or `shared.weight` in a bare `BigBirdPegasusModel`)."""
        key_mapping = {**SEQ2SEQ_DECODER_KEYS, **(key_mapping or {})}
        return super().from_pretrained(*args, key_mapping=key_mapping, **kwargs)

    @accepts_past_key_values
    def forward(self, input_ids=None, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                head_mask=None, cross_attn_head_mask=None, past_key_values=None, inputs_embeds=None, labels=None,
                use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None, cache=None,
                position_ids=None, logits_to_keep=0, **kwargs):
        """See `BigBirdPegasusDecoder.forward` for attention_mask and position_ids and
        `BigBirdPegasusForConditionalGeneration.forward` for logits_to_keep."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.model.decoder(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, head_mask=head_mask,
            cross_attn_head_mask=cross_attn_head_mask, cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True, position_ids=position_ids,
            **cache_position_argument(kwargs),
        )
        logits = vocabulary_logits(self.lm_head, kept_positions(outputs.last_hidden_state, logits_to_keep))
        # As in the built-in model, labels are aligned with the logits (not shifted inside).
        loss = None if labels is None else language_modeling_loss(logits, labels)
        output = CausalLMOutputWithCrossAttentions(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            cross_attentions=outputs.cross_attentions, **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        )
        return output if return_dict else output.to_tuple()


AUTO_CLASSES = {
    "AutoModel": BigBirdPegasusModel,
    "AutoModelForSeq2SeqLM": BigBirdPegasusForConditionalGeneration,
    "AutoModelForCausalLM": BigBirdPegasusForCausalLM,
    "AutoModelForSequenceClassification": BigBirdPegasusForSequenceClassification,
    "AutoModelForQuestionAnswering": BigBirdPegasusForQuestionAnswering,
}
for _auto_class, _model_class in AUTO_CLASSES.items():
    _model_class.register_for_auto_class(_auto_class)


def auto_map() -> dict[str, str]:
    """`auto_map` entries for the config and every head, spelled as transformers writes a registered class."""
    entries = {"AutoConfig": BigBirdPegasusConfig, **AUTO_CLASSES}
    return {auto: f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}" for auto, cls in entries.items()}


def summarization_pipeline_class():
    """The summarization pipeline shipped with this model (transformers 5 has none built in).

    The relative import also makes transformers carry pipeline_bigbird_pegasus.py along whenever it saves
    (`save_pretrained`, `push_to_hub`) or downloads this file: it follows relative imports.
    """
    from .pipeline_bigbird_pegasus import BigBirdPegasusSummarizationPipeline

    return BigBirdPegasusSummarizationPipeline


__all__ = [
    "BigBirdPegasusForCausalLM",
    "BigBirdPegasusForConditionalGeneration",
    "BigBirdPegasusForQuestionAnswering",
    "BigBirdPegasusForSequenceClassification",
    "BigBirdPegasusModel",
    "BigBirdPegasusPreTrainedModel",
]
