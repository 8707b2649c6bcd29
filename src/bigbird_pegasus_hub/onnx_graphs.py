"""The three graphs of an ONNX export, as `torch.onnx.export(..., dynamo=True)` traces them.

Optimum's `ORTModelForSeq2SeqLM` runs an encoder-decoder as three ONNX files, with these input and output names:

    encoder_model.onnx             input_ids, attention_mask -> last_hidden_state
    decoder_model.onnx             input_ids, encoder_attention_mask, encoder_hidden_states
                                   -> logits, present.{i}.decoder.{key,value}, present.{i}.encoder.{key,value}
    decoder_with_past_model.onnx   the same inputs plus past_key_values.{i}.{decoder,encoder}.{key,value}
                                   -> logits, present.{i}.decoder.{key,value}

The first decoder step projects the cross-attention keys and values once; the later steps read them back from
their inputs. Each graph wraps our own PyTorch modules, so the ONNX model computes exactly what `generate` does in
PyTorch, block-sparse attention with the original random blocks included.

Batch, encoder and decoder lengths are dynamic. The block-sparse layout depends on the encoder's padded length:
with the model's `pad_to_multiple_of` on the original code's grid (1024, as `onnx_export` sets it), every padded
length's random blocks are the first rows of one constant table, so one graph serves every length. Otherwise the
encoder is traced with a `padded_length`: it pads every input to that length inside the graph (as Google's original
code padded every input to `max_encoder_length`) and cuts its output back to the input's length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx_ir
import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, EncoderDecoderCache

from .onnx_export import DECODER_FILE, DECODER_WITH_PAST_FILE, ENCODER_FILE, KEY_VALUE, PARTS, cache_names
from .plugin import modeling_bigbird_pegasus as modeling

ENCODER_INPUTS = ("input_ids", "attention_mask")
ENCODER_OUTPUTS = ("last_hidden_state",)
DECODER_INPUTS = ("input_ids", "encoder_attention_mask", "encoder_hidden_states")


class EncoderGraph(nn.Module):
    """input_ids, attention_mask [batch, length] -> last_hidden_state [batch, length, d_model].

    With `padded_length`, every input is padded to that many tokens inside the graph, so that the block-sparse
    layout (a constant of the graph) is that of `padded_length`; the output is cut back to the input's length.
    """

    def __init__(self, model: modeling.BigBirdPegasusForConditionalGeneration, padded_length: int | None):
        super().__init__()
        self.encoder = model.get_encoder()
        self.pad_token_id = model.config.pad_token_id
        self.padded_length = padded_length
        self.eval()

    def forward(self, input_ids, attention_mask):
        length = input_ids.shape[1]
        if self.padded_length is not None:
            missing = self.padded_length - length
            input_ids = F.pad(input_ids, (0, missing), value=self.pad_token_id)
            attention_mask = F.pad(attention_mask, (0, missing), value=0)
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
        return states[:, :length]


class DecoderGraph(nn.Module):
    """One decoding step of the whole model (decoder, vocabulary projection and final_logits_bias), with the key/value
    cache as flat tensors in and out. Without past, the step starts the cache and also returns the cross-attention
    keys and values; with past, they come in and only the grown self-attention cache goes out."""

    def __init__(self, model: modeling.BigBirdPegasusForConditionalGeneration, with_past: bool):
        super().__init__()
        self.model = model
        self.with_past = with_past
        self.num_layers = model.config.decoder_layers
        self.eval()

    def forward(self, input_ids, encoder_attention_mask, encoder_hidden_states, past_key_values=()):
        cache = self.cache_from_tensors(past_key_values) if self.with_past else None
        outputs = self.model(attention_mask=encoder_attention_mask, encoder_outputs=(encoder_hidden_states,),
                             decoder_input_ids=input_ids, cache=cache, use_cache=True, return_dict=True)
        cache = getattr(outputs, modeling.CACHE_FIELD)
        presents = []
        for layer in range(self.num_layers):
            presents += layer_tensors(cache.self_attention_cache, layer)
            if not self.with_past:
                presents += layer_tensors(cache.cross_attention_cache, layer)
        return (outputs.logits, *presents)

    def cache_from_tensors(self, tensors) -> EncoderDecoderCache:
        """Optimum's flat order (per layer: self key, self value, cross key, cross value) -> a transformers cache."""
        layers = [tensors[4 * layer: 4 * layer + 4] for layer in range(self.num_layers)]
        return EncoderDecoderCache(DynamicCache([layer[:2] for layer in layers]),
                                   DynamicCache([layer[2:] for layer in layers]))


def layer_tensors(cache, layer: int) -> list[torch.Tensor]:
    return [cache.layers[layer].keys, cache.layers[layer].values]


@dataclass(frozen=True)
class GraphSpec:
    """What to trace for one ONNX file: the module, example inputs, and the names and dynamic axes of its inputs."""

    file_name: str
    module: nn.Module
    args: tuple
    input_names: list[str]
    output_names: list[str]
    dynamic_shapes: tuple


@dataclass(frozen=True)
class Axes:
    """The dynamic sizes of the graphs, named as Optimum names them. Ranges: the model refuses longer sequences."""

    batch: torch.export.Dim
    encoder_length: torch.export.Dim
    decoder_length: torch.export.Dim
    past_length: torch.export.Dim

    @classmethod
    def of(cls, config, padded_length: int | None) -> "Axes":
        max_positions = config.max_position_embeddings
        return cls(torch.export.Dim("batch_size"),
                   torch.export.Dim("encoder_sequence_length", max=padded_length or max_positions),
                   torch.export.Dim("decoder_sequence_length", max=max_positions),
                   torch.export.Dim("past_decoder_sequence_length", max=max_positions - 1))


def graph_specs(model, padded_length: int | None, dtype: torch.dtype) -> list[GraphSpec]:
    """The encoder and the two decoders of `model`. Example sizes are at least 2 (torch.export specializes 0 and 1)
    and differ from each other, so that no two axes are taken for one."""
    axes = Axes.of(model.config, padded_length)
    generator = torch.Generator().manual_seed(0)
    return [encoder_spec(model, padded_length, axes, generator),
            decoder_spec(model, axes, generator, dtype, with_past=False),
            decoder_spec(model, axes, generator, dtype, with_past=True)]


def encoder_spec(model, padded_length: int | None, axes: Axes, generator) -> GraphSpec:
    length = example_encoder_length(model.config, padded_length)
    input_ids = torch.randint(3, model.config.vocab_size, (2, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, length // 2:] = 0  # one padded row, so the padding path is traced
    shape = {0: axes.batch, 1: axes.encoder_length}
    return GraphSpec(ENCODER_FILE, EncoderGraph(model, padded_length), (input_ids, attention_mask),
                     list(ENCODER_INPUTS), list(ENCODER_OUTPUTS), (shape, shape))


def decoder_spec(model, axes: Axes, generator, dtype, with_past: bool) -> GraphSpec:
    config = model.config
    batch, encoder_length, decoder_length = 2, 5, 1 if with_past else 3
    input_ids = torch.randint(3, config.vocab_size, (batch, decoder_length), generator=generator)
    encoder_mask = torch.ones(batch, encoder_length, dtype=torch.long)
    encoder_states = torch.randn(batch, encoder_length, config.d_model, generator=generator).to(dtype)
    encoder_axes = {0: axes.batch, 1: axes.encoder_length}
    args = (input_ids, encoder_mask, encoder_states)
    shapes = ({0: axes.batch} if with_past else {0: axes.batch, 1: axes.decoder_length}, encoder_axes, encoder_axes)
    input_names = list(DECODER_INPUTS)
    if with_past:  # per layer: self-attention key and value (4 steps so far), cross-attention key and value
        heads = config.decoder_attention_heads
        past, past_shapes = [], []
        for _layer in range(config.decoder_layers):
            for length, axis in ((4, axes.past_length), (encoder_length, axes.encoder_length)):
                for _kind in KEY_VALUE:
                    past.append(torch.randn(batch, heads, length, config.d_model // heads, generator=generator))
                    past_shapes.append({0: axes.batch, 2: axis})
        args += (tuple(tensor.to(dtype) for tensor in past),)
        shapes += (tuple(past_shapes),)
        input_names += cache_names("past_key_values", config.decoder_layers)
    presents = cache_names("present", config.decoder_layers, parts=("decoder",) if with_past else PARTS)
    return GraphSpec(DECODER_WITH_PAST_FILE if with_past else DECODER_FILE, DecoderGraph(model, with_past), args,
                     input_names, ["logits", *presents], shapes)


def example_encoder_length(config, padded_length: int | None) -> int:
    """An input length to trace the encoder with, short of the length it is padded to (`padded_length`, or the
    first multiple of `pad_to_multiple_of`), so that the padding is traced."""
    padded = padded_length or min(config.pad_to_multiple_of or config.block_size, config.max_position_embeddings)
    return max(7, padded - config.block_size - 1)  # not 0 or 1 (torch.export specializes them), not the batch


def export_graph(spec: GraphSpec, folder: Path, opset: int, metadata: dict[str, str]) -> Path:
    """Traces `spec` with torch.export and writes `folder / spec.file_name`, its weights beside it in
    `<file name>_data` (the name Optimum downloads with it; also what lets models over 2 GB load)."""
    with torch.no_grad():
        # Eager first: it fills the block-sparse layout caches with real tensors. Traced first, torch.export would
        # leave its fake tensors there, for every later eager call to read.
        spec.module(*spec.args)
        program = torch.onnx.export(
            spec.module, spec.args, dynamo=True, opset_version=opset, input_names=spec.input_names,
            output_names=spec.output_names, dynamic_shapes=spec.dynamic_shapes, optimize=True, verbose=False,
        )
    check_dynamic_axes(spec, program.model)
    program.model.metadata_props.update(metadata)
    path = folder / spec.file_name
    onnx_ir.save(program.model, path, external_data=f"{spec.file_name}_data")
    return path


def check_dynamic_axes(spec: GraphSpec, model) -> None:
    """torch.onnx retries a failed torch.export with strategies that may fix dynamic sizes to those of the example
    inputs, and then says so only in its log. A graph that does not take every size it claims is a bug: refuse it."""
    axes = [*spec.dynamic_shapes[:-1], *spec.dynamic_shapes[-1]] if isinstance(spec.dynamic_shapes[-1], tuple) \
        else list(spec.dynamic_shapes)
    for graph_input, input_axes in zip(model.graph.inputs, axes):
        fixed = [axis for axis in input_axes if isinstance(graph_input.shape[axis], int)]
        if fixed:
            raise RuntimeError(f"torch.export fixed the size of axes {fixed} of input {graph_input.name} in "
                               f"{spec.file_name}: the model code has a Python branch on that size.")
