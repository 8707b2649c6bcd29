"""Run an exported BigBirdPegasus (`bigbird-pegasus export-onnx`) with ONNX Runtime, `generate` included.

    from transformers import AutoTokenizer
    from bigbird_pegasus_hub.onnx_model import OnnxBigBirdPegasusForConditionalGeneration

    model = OnnxBigBirdPegasusForConditionalGeneration.from_pretrained("my-repo-onnx")
    tokenizer = AutoTokenizer.from_pretrained("my-repo-onnx")
    ids = model.generate(**tokenizer(["A long document ..."], return_tensors="pt"), num_beams=4)

Why a runner of our own: Optimum's `ORTModelForSeq2SeqLM` loads the same folder, but its only release with ONNX
Runtime classes (optimum-onnx 0.1.0) requires transformers < 4.58. This class works on transformers 4.57 and 5.x:
it is transformers' `GenerationMixin` over three ONNX Runtime sessions, so greedy, beam search, sampling and the
logits processors behave as for the PyTorch model. The key/value cache is a standard `EncoderDecoderCache`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import nn
from transformers import DynamicCache, EncoderDecoderCache, GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from .onnx_export import DECODER_FILE, DECODER_WITH_PAST_FILE, ENCODER_FILE, MAX_LENGTH_KEY, PARTS, cache_names
from .plugin.configuration_bigbird_pegasus import BigBirdPegasusConfig

__all__ = ["OnnxBigBirdPegasusForConditionalGeneration"]


class OnnxSession:
    """An ONNX Runtime session called with and returning torch tensors (CPU; no copies where numpy allows)."""

    def __init__(self, path: Path, providers=None, session_options=None):
        self.session = onnxruntime.InferenceSession(str(path), sess_options=session_options,
                                                    providers=providers or ["CPUExecutionProvider"])
        self.input_types = {node.name: node.type for node in self.session.get_inputs()}
        self.output_names = [node.name for node in self.session.get_outputs()]

    @property
    def metadata(self) -> dict[str, str]:
        return self.session.get_modelmeta().custom_metadata_map

    def float_type(self) -> torch.dtype:
        return torch.float16 if "tensor(float16)" in self.input_types.values() else torch.float32

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        feed = {name: as_numpy(inputs[name], self.input_types[name]) for name in self.input_types}
        outputs = self.session.run(self.output_names, feed)
        return {name: torch.from_numpy(value) for name, value in zip(self.output_names, outputs)}


NUMPY_TYPES = {"tensor(int64)": np.int64, "tensor(float)": np.float32, "tensor(float16)": np.float16}


def as_numpy(tensor: torch.Tensor, onnx_type: str) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(NUMPY_TYPES[onnx_type], copy=False)


class OnnxEncoder(nn.Module):
    """The encoder session as transformers' generate expects an encoder: (input_ids, attention_mask) -> output."""

    main_input_name = "input_ids"

    def __init__(self, session: OnnxSession):
        super().__init__()
        self.session = session
        max_length = session.metadata.get(MAX_LENGTH_KEY)
        self.max_length = int(max_length) if max_length else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> BaseModelOutput:
        if self.max_length is not None and input_ids.shape[1] > self.max_length:
            raise ValueError(f"The input has {input_ids.shape[1]} tokens but this ONNX encoder reads at most "
                             f"{self.max_length}: truncate it, e.g. tokenizer(..., truncation=True).")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        outputs = self.session(input_ids=input_ids, attention_mask=attention_mask)
        return BaseModelOutput(last_hidden_state=outputs["last_hidden_state"])


class OnnxBigBirdPegasusForConditionalGeneration(PreTrainedModel, GenerationMixin):
    """An exported BigBirdPegasus summarization model on ONNX Runtime, with transformers' `generate`."""

    config_class = BigBirdPegasusConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _supports_cache_class = True  # transformers 4.x: generate hands us a Cache, not tuples

    def __init__(self, config: BigBirdPegasusConfig, encoder: OnnxSession, decoder: OnnxSession,
                 decoder_with_past: OnnxSession, generation_config: GenerationConfig | None = None):
        super().__init__(config)
        self.encoder = OnnxEncoder(encoder)
        self.first_step_session = decoder
        self.step_with_past_session = decoder_with_past
        self.num_layers = config.decoder_layers
        self._float_type = decoder.float_type()
        if generation_config is not None:
            self.generation_config = generation_config

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, providers=None, session_options=None,
                        threads: int | None = None):
        """Loads a folder written by `bigbird-pegasus export-onnx` (or `onnx_export.export_onnx`).

        Args:
            providers: ONNX Runtime execution providers, e.g. ["CUDAExecutionProvider"]; default: the CPU.
            session_options: an `onnxruntime.SessionOptions` for all three sessions (threads, optimizations).
                Default: ONNX Runtime's, except that the decoders' threads do not spin between runs.
            threads: threads per session (ONNX Runtime's default: one per physical core), with the default options.
        """
        if session_options is not None and threads is not None:
            raise ValueError("Give threads or session_options, not both: set session_options.intra_op_num_threads.")
        folder = Path(folder)
        missing = [name for name in ("config.json", ENCODER_FILE, DECODER_FILE, DECODER_WITH_PAST_FILE)
                   if not (folder / name).is_file()]
        if missing:
            raise OSError(f"{folder} is not an ONNX export of BigBirdPegasus (missing {', '.join(missing)}): make "
                          "one with `bigbird-pegasus export-onnx MODEL OUT_DIR`.")
        config = BigBirdPegasusConfig.from_pretrained(folder)
        generation_config = None
        if (folder / "generation_config.json").is_file():
            generation_config = GenerationConfig.from_pretrained(folder)
        sessions = [OnnxSession(folder / name, providers, session_options or default_session_options(name, threads))
                    for name in (ENCODER_FILE, DECODER_FILE, DECODER_WITH_PAST_FILE)]
        model = cls(config, *sessions, generation_config=generation_config)
        model.name_or_path = str(folder)
        return model

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # where inputs and outputs live; the providers decide where graphs run

    @property
    def dtype(self) -> torch.dtype:
        return self._float_type

    def get_encoder(self, modality=None):
        return self.encoder

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, encoder_outputs=None,
                cache=None, past_key_values=None, use_cache=None, return_dict=None, **kwargs):
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids, attention_mask)
        encoder_states = encoder_outputs[0]
        if attention_mask is None:
            attention_mask = torch.ones(encoder_states.shape[:2], dtype=torch.long)
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        inputs = {"input_ids": decoder_input_ids, "encoder_attention_mask": attention_mask,
                  "encoder_hidden_states": encoder_states}
        if cache is not None and cache.get_seq_length() > 0:
            logits = self.step_with_past(inputs, cache)
        else:
            if use_cache and cache is None:
                cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            logits = self.first_step(inputs, cache if use_cache else None)
        output = Seq2SeqLMOutput(logits=logits, encoder_last_hidden_state=encoder_states,
                                 **{CACHE_FIELD: cache if use_cache else None})
        return output if return_dict is not False else output.to_tuple()

    def _reorder_cache(self, cache: EncoderDecoderCache, beam_idx: torch.Tensor) -> EncoderDecoderCache:
        """generate() hook of beam search: the self-attention cache follows the surviving beams. The cross-attention
        cache holds the same encoder keys and values for every beam of an input, so it stays (copying it costs more
        than a decoding step at 4096 tokens)."""
        cache.self_attention_cache.reorder_cache(beam_idx)
        return cache

    def first_step(self, inputs: dict, cache: EncoderDecoderCache | None) -> torch.Tensor:
        # generate() repeats every input for its beams (or returned sequences): the graph runs once per input, whose
        # cross-attention keys and values cost more than the rest of the step (4 beams at 4096 tokens: 0.54 s -> 0.12 s).
        repeats = repeated_rows(*inputs.values())
        outputs = self.first_step_session(**{name: tensor[::repeats] for name, tensor in inputs.items()})
        if repeats > 1:
            outputs = {name: tensor.repeat_interleave(repeats, dim=0) for name, tensor in outputs.items()}
        if cache is not None:
            presents = [outputs[name] for name in cache_names("present", self.num_layers)]
            for layer in range(self.num_layers):
                self_key, self_value, cross_key, cross_value = presents[4 * layer: 4 * layer + 4]
                cache.self_attention_cache.update(self_key, self_value, layer)
                store_as_they_are(cache.cross_attention_cache, layer, cross_key, cross_value)
                cache.is_updated[layer] = True
        return outputs["logits"]

    def step_with_past(self, inputs: dict, cache: EncoderDecoderCache) -> torch.Tensor:
        past_length = cache.get_seq_length()
        past = [tensor for layer in range(self.num_layers)
                for part in (cache.self_attention_cache, cache.cross_attention_cache)
                for tensor in (part.layers[layer].keys, part.layers[layer].values)]
        outputs = self.step_with_past_session(**inputs, **dict(zip(cache_names("past_key_values", self.num_layers),
                                                                   past)))
        presents = [outputs[name] for name in cache_names("present", self.num_layers, parts=PARTS[:1])]
        for layer in range(self.num_layers):
            # The graph returns the whole grown self-attention cache; the Cache API takes the new positions.
            key, value = (tensor[:, :, past_length:] for tensor in presents[2 * layer: 2 * layer + 2])
            cache.self_attention_cache.update(key, value, layer)
        return outputs["logits"]


def default_session_options(file_name: str, threads: int | None = None) -> onnxruntime.SessionOptions:
    """ONNX Runtime's options with `threads` per session, except for spinning. ONNX Runtime's threads spin for a
    while after a run, waiting for the next one. A decoding step's run is short and generate()'s own torch operations
    come between two, which the spinning threads then slow down (2 cores, 4096 tokens: greedy 30.9 -> 24.7 ms per
    step, 4 beams 63.2 -> 55.2 ms without spinning). The encoder's one long run keeps spinning (5% faster with it)."""
    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    if file_name != ENCODER_FILE:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def repeated_rows(*tensors: torch.Tensor) -> int:
    """The largest k such that the rows of all `tensors` come in consecutive groups of k equal rows (generate()
    repeats each input for its beams or returned sequences): the greatest common divisor of the runs' lengths."""
    rows = tensors[0].shape[0]
    if rows < 2:
        return 1
    same_as_previous = torch.stack([(tensor[1:] == tensor[:-1]).flatten(1).all(1) for tensor in tensors]).all(0)
    run_ends = [*(torch.nonzero(~same_as_previous).flatten() + 1).tolist(), rows]
    return math.gcd(*(end - start for start, end in zip([0, *run_ends], run_ends)))


def store_as_they_are(cache: DynamicCache, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
    """Puts the encoder's keys and values into `cache` without the copy that `update` makes (it concatenates them
    to an empty tensor: 8 MB per layer, head set and row at 4096 tokens, i.e. 268 MB for 4 beams of this benchmark's
    model). An update with no positions creates the layer as `update` would."""
    cache.update(key[..., :0, :], value[..., :0, :], layer)
    cache.layers[layer].keys, cache.layers[layer].values = key, value


# transformers 5 names the cache of model outputs `cache`, 4.x `past_key_values`.
CACHE_FIELD = "cache" if "cache" in Seq2SeqLMOutput.__dataclass_fields__ else "past_key_values"
