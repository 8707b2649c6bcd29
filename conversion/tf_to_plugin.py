"""Convert Google's original TensorFlow BigBird-Pegasus checkpoints into a plugin repo, without TensorFlow.

Example::

    from bigbird_pegasus_hub.conversion.tf_to_plugin import convert_tf_checkpoint

    convert_tf_checkpoint("gs-copy/arxiv/model.ckpt-300000", "bigbird-pegasus-large-arxiv",
                          preset="bigbird-pegasus-large-arxiv", spm_model="bigbird/vocab/pegasus.model")

The hyperparameters use the original code's names (``params`` of google-research/bigbird: a preset, the run's
params JSON and/or overrides). Everything that can go wrong with the checkpoint (names, shapes, hyperparameters
read from the shapes) is checked from the index alone and reported together, before any tensor is read; the
weights are then read one tensor at a time, so memory stays near one copy of the model. The repo is written by
``bigbird_pegasus_hub.repo.build_repo``, atomically.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from string import Formatter

import torch
from tqdm import tqdm
from transformers import GenerationConfig

from bigbird_pegasus_hub.plugin.configuration_bigbird_pegasus import BigBirdPegasusConfig
from bigbird_pegasus_hub.plugin.modeling_bigbird_pegasus import BigBirdPegasusForConditionalGeneration
from bigbird_pegasus_hub.atomic import check_output_path
from bigbird_pegasus_hub.repo import RepoError, build_repo, check_tokenizer_fits

from .params import (
    _ACTIVATIONS,
    _CONFIG_FIELDS,
    _LAYER_NORM_EPS,
    _TOKEN_IDS,
    ConversionError,
    _bullets,
    checked_params,
    resolve_params,
)
from .tf_checkpoint import TFCheckpoint

__all__ = [
    "ConversionError",
    "add_tied_word_embeddings",
    "config_from_params",
    "convert_tf_checkpoint",
    "expected_state_dict_shapes",
    "generation_config_from_params",
    "is_optimizer_state",
    "original_names",
    "plan_conversion",
    "resolve_params",
    "tf_checkpoint_to_state_dict",
]

DEFAULT_SCOPE = "pegasus"


def config_from_params(
    params=None, *, preset: str | None = None, overrides: Mapping | None = None
) -> BigBirdPegasusConfig:
    """Our config for the original hyperparameters (arguments as for :func:`resolve_params`)."""
    values = checked_params(params, preset=preset, overrides=overrides)
    fields = {field: values[name] for name, names in _CONFIG_FIELDS.items() for field in names}
    try:
        return BigBirdPegasusConfig(
            **fields, activation_function=_ACTIVATIONS[values["hidden_act"]], layer_norm_eps=_LAYER_NORM_EPS,
            **_TOKEN_IDS,
        )
    except ValueError as error:
        raise ConversionError(f"the hyperparameters give an invalid model: {error}") from None


def generation_config_from_params(params: Mapping) -> GenerationConfig:
    """Decoding as the original run did it: its token ids, beam size and length limit.

    The original's ``alpha`` normalises beam scores by length; transformers' ``length_penalty`` is its counterpart
    (the released models' configs set length_penalty = alpha = 0.8).
    """
    values = dict(_TOKEN_IDS)
    if "max_decoder_length" in params:
        values["max_length"] = params["max_decoder_length"] + 1  # transformers counts the start token too
    num_beams = params.get("beam_size", 1)
    if num_beams > 1:
        values.update(num_beams=num_beams, length_penalty=params.get("alpha", 1.0))
    return GenerationConfig(**values)


# --------------------------------------------------------------------------------------------------------------
# Variable names: the original scopes -> our state-dict names.

# Each row: an original variable (under the top scope, e.g. "pegasus/") and our name(s) for it. The placeholders
# take the values of _PLACEHOLDER_VALUES ({i}: the layer indices), spelled in our names as in _OUR_SPELLING.
# Kernels are stored [in, out] and transposed to nn.Linear's [out, in].
_NAME_TABLE = (
    ("embeddings/word_embeddings", "model.shared.weight"),
    # One position table serves both stacks in the original; ours has one per stack.
    ("embeddings/position_embeddings",
     ("model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight")),
    ("{stack}/LayerNorm/{norm}", "model.{stack}.layernorm_embedding.{norm}"),
    ("{stack}/layer_{i}/attention/self/LayerNorm/{norm}", "model.{stack}.layers.{i}.self_attn_layer_norm.{norm}"),
    ("{stack}/layer_{i}/intermediate/LayerNorm/{norm}", "model.{stack}.layers.{i}.final_layer_norm.{norm}"),
    ("{stack}/layer_{i}/intermediate/dense/{dense}", "model.{stack}.layers.{i}.fc1.{dense}"),
    ("{stack}/layer_{i}/output/dense/{dense}", "model.{stack}.layers.{i}.fc2.{dense}"),
    ("encoder/layer_{i}/attention/self/{qkv}/{dense}", "model.encoder.layers.{i}.self_attn.self.{qkv}.{dense}"),
    ("encoder/layer_{i}/attention/output/dense/{dense}", "model.encoder.layers.{i}.self_attn.output.{dense}"),
    ("decoder/layer_{i}/attention/self/{proj}/{dense}", "model.decoder.layers.{i}.self_attn.{proj}.{dense}"),
    ("decoder/layer_{i}/attention/output/dense/{dense}", "model.decoder.layers.{i}.self_attn.out_proj.{dense}"),
    ("decoder/layer_{i}/attention/encdec/LayerNorm/{norm}", "model.decoder.layers.{i}.encoder_attn_layer_norm.{norm}"),
    ("decoder/layer_{i}/attention/encdec/{proj}/{dense}", "model.decoder.layers.{i}.encoder_attn.{proj}.{dense}"),
    ("decoder/layer_{i}/attention/encdec_output/dense/{dense}",
     "model.decoder.layers.{i}.encoder_attn.out_proj.{dense}"),
)
_PLACEHOLDER_VALUES = {
    "stack": ("encoder", "decoder"),
    "qkv": ("query", "key", "value"),  # names we keep (the encoder's self_attn.self.query)
    "proj": ("query", "key", "value"),  # names we respell (the decoder's q_proj)
    "dense": ("kernel", "bias"),
    "norm": ("gamma", "beta"),
}
_OUR_SPELLING = {
    "proj": {"query": "q_proj", "key": "k_proj", "value": "v_proj"},
    "dense": {"kernel": "weight", "bias": "bias"},
    "norm": {"gamma": "weight", "beta": "bias"},
}

# Model weights with no variable of their own: the tied copies of the word embeddings, and a logits bias that the
# original does not have (zeros).
TIED_TO_WORD_EMBEDDINGS = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight")
WORD_EMBEDDINGS = "model.shared.weight"
LOGITS_BIAS = "final_logits_bias"

# Optimizer state that training checkpoints carry: per-variable slots of Adam, Adafactor (tensor2tensor; also
# "_vr"/"_vc" style suffixes), Momentum and the original AdamWeightDecayOptimizer, plus top-level counters.
_OPTIMIZER_SLOT = re.compile(r"/(Adam|Adafactor|AdamWeightDecayOptimizer|Momentum)(_\w+)?$")
_TRAINING_COUNTERS = frozenset({"global_step", "beta1_power", "beta2_power"})


def is_optimizer_state(name: str) -> bool:
    """Whether a checkpoint variable is training state rather than a model weight."""
    return name in _TRAINING_COUNTERS or _OPTIMIZER_SLOT.search(name) is not None


def _expand(source: str, targets: str | tuple[str, ...], num_layers: int) -> Iterator[tuple[str, tuple[str, ...]]]:
    """Every (original name, our names) a table row stands for."""
    targets = (targets,) if isinstance(targets, str) else targets
    fields = [field for _, field, _, _ in Formatter().parse(source) if field]
    domains = [range(num_layers) if field == "i" else _PLACEHOLDER_VALUES[field] for field in fields]
    for values in itertools.product(*domains):
        original = dict(zip(fields, map(str, values)))
        ours = {field: _OUR_SPELLING.get(field, {}).get(value, value) for field, value in original.items()}
        yield source.format(**original), tuple(target.format(**ours) for target in targets)


def original_names(config: BigBirdPegasusConfig, scope: str = DEFAULT_SCOPE) -> dict[str, tuple[str, ...]]:
    """The original variables a checkpoint for ``config`` holds (optimizer state aside) -> our names for each."""
    model_names = expected_state_dict_shapes(config)
    num_layers = max(config.encoder_layers, config.decoder_layers)
    return {
        f"{scope}/{name}": ours
        for row in _NAME_TABLE
        for name, ours in _expand(*row, num_layers)
        if all(target in model_names for target in ours)  # e.g. no attention biases when use_bias is False
    }


def expected_state_dict_shapes(config: BigBirdPegasusConfig) -> dict[str, torch.Size]:
    """Every state-dict entry of our summarization model and its shape (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = BigBirdPegasusForConditionalGeneration(config)
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def add_tied_word_embeddings(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the tied copies of the word embeddings that a state dict leaves out (the same tensor, no copy)."""
    for name in TIED_TO_WORD_EMBEDDINGS:
        state_dict.setdefault(name, state_dict[WORD_EMBEDDINGS])
    return state_dict


# --------------------------------------------------------------------------------------------------------------
# Checking a checkpoint against the config, from its index alone.

# (hyperparameter, our config field, variable under the scope, axis of its shape that holds the value)
_SIZES_IN_SHAPES = (
    ("vocab_size", "vocab_size", "embeddings/word_embeddings", 0),
    ("hidden_size", "d_model", "embeddings/word_embeddings", 1),
    ("max_position_embeddings", "max_position_embeddings", "embeddings/position_embeddings", 0),
    ("intermediate_size", "encoder_ffn_dim", "encoder/layer_0/intermediate/dense/kernel", 1),
    ("intermediate_size", "decoder_ffn_dim", "decoder/layer_0/intermediate/dense/kernel", 1),
)
_LAYER = re.compile(r"/(?P<stack>encoder|decoder)/layer_(?P<index>\d+)/")
_ATTENTION_BIAS = re.compile(r"/attention/.+/bias$")


def _facts_from_shapes(shapes: Mapping[str, tuple[int, ...]], scope: str) -> Iterator[tuple[str, str, object, str]]:
    """What the checkpoint itself says: (hyperparameter, config field, value, evidence)."""
    for param, field, variable, axis in _SIZES_IN_SHAPES:
        shape = shapes.get(f"{scope}/{variable}")
        if shape is not None and len(shape) > axis:
            yield param, field, shape[axis], f"{scope}/{variable} has shape {list(shape)}"
    model_variables = [name for name in shapes if name.startswith(f"{scope}/") and not is_optimizer_state(name)]
    layers = [match for name in model_variables if (match := _LAYER.search(name))]
    for stack in ("encoder", "decoder"):
        indices = {int(match["index"]) for match in layers if match["stack"] == stack}
        if indices:
            last = max(indices)
            yield "num_hidden_layers", f"{stack}_layers", last + 1, f"it has {stack} layers up to layer_{last}"
    biases = sorted(name for name in model_variables if _ATTENTION_BIAS.search(name))
    evidence = f"it has attention biases such as {biases[0]}" if biases else "it has no attention biases"
    yield "use_bias", "use_bias", bool(biases), evidence


def _check_scope(shapes: Mapping[str, tuple[int, ...]], scope: str) -> None:
    if not any(name.startswith(f"{scope}/") for name in shapes):
        scopes = sorted({name.split("/", 1)[0] for name in shapes if "/" in name})
        raise ConversionError(
            f"the checkpoint has no variable under the scope {scope!r}; its top-level scopes are "
            f"{', '.join(scopes) or 'none'}: pass the model's scope (scope= / --scope)"
        )


def _check_hyperparameters(shapes: Mapping[str, tuple[int, ...]], config: BigBirdPegasusConfig, scope: str) -> None:
    # One line per contradicted hyperparameter, with all its evidence (encoder and decoder often both tell).
    evidence_of: dict[tuple[str, object, object], list[str]] = {}
    for param, field, value, evidence in _facts_from_shapes(shapes, scope):
        if getattr(config, field) != value:
            evidence_of.setdefault((param, getattr(config, field), value), []).append(evidence)
    contradictions = [
        f"{param} is {given!r} in the given hyperparameters but {value!r} in the checkpoint ({'; '.join(evidence)})"
        for (param, given, value), evidence in evidence_of.items()
    ]
    if contradictions:
        raise ConversionError(
            "the hyperparameters contradict the checkpoint:" + _bullets(contradictions)
            + "\nCorrect the params or overrides, or choose the preset of this checkpoint."
        )


def _expected_shape(model_shape: torch.Size, name: str) -> tuple[int, ...]:
    return tuple(reversed(model_shape)) if name.endswith("/kernel") else tuple(model_shape)


def plan_conversion(
    shapes: Mapping[str, tuple[int, ...]], config: BigBirdPegasusConfig, scope: str = DEFAULT_SCOPE
) -> dict[str, tuple[str, ...]]:
    """Check a checkpoint's variables (name -> shape) against ``config``; return original name -> our names.

    Raises:
        ConversionError: naming every unknown variable, missing variable and shape mismatch at once.
    """
    _check_scope(shapes, scope)
    _check_hyperparameters(shapes, config, scope)
    model_shapes = expected_state_dict_shapes(config)
    needed = original_names(config, scope)
    unknown = [
        f"{name} {list(shape)}" for name, shape in shapes.items() if name not in needed and not is_optimizer_state(name)
    ]
    missing = [f"{name} (for {', '.join(ours)})" for name, ours in needed.items() if name not in shapes]
    mismatched = [
        f"{name} has shape {list(shapes[name])}, {ours[0]} needs {list(expected)}"
        for name, ours in needed.items()
        if name in shapes and tuple(shapes[name]) != (expected := _expected_shape(model_shapes[ours[0]], name))
    ]
    filled = {target for ours in needed.values() for target in ours} | {*TIED_TO_WORD_EMBEDDINGS, LOGITS_BIAS}
    unfilled = sorted(set(model_shapes) - filled)
    problems = [
        *(f"unknown variable (neither a model weight nor optimizer state): {line}" for line in unknown),
        *(f"missing variable: {line}" for line in missing),
        *(f"shape mismatch: {line}" for line in mismatched),
        *(f"model weight without a source in the name table: {name}" for name in unfilled),
    ]
    if problems:
        raise ConversionError(
            f"the checkpoint does not fit a BigBirdPegasus model with these hyperparameters ({len(problems)} "
            "problem(s)):" + _bullets(problems)
        )
    return needed


def tf_checkpoint_to_state_dict(
    ckpt: TFCheckpoint | str | os.PathLike, config: BigBirdPegasusConfig, scope: str = DEFAULT_SCOPE
) -> dict[str, torch.Tensor]:
    """Our complete state dict (tied entries included) from an original checkpoint, read tensor by tensor."""
    ckpt = ckpt if isinstance(ckpt, TFCheckpoint) else TFCheckpoint(ckpt)
    plan = plan_conversion({name: ckpt.shape(name) for name in ckpt.keys()}, config, scope)
    state_dict = {}
    for name, (first, *others) in tqdm(plan.items(), desc="Converting", unit="variable", file=sys.stderr):
        tensor = ckpt.read(name)
        if name.endswith("/kernel"):
            tensor = tensor.t().contiguous()  # [in, out] -> nn.Linear's [out, in]
        state_dict[first] = tensor
        for other in others:
            state_dict[other] = tensor.clone()  # separate parameters in our model (they may diverge in fine-tuning)
    state_dict[LOGITS_BIAS] = torch.zeros(1, config.vocab_size)
    return add_tied_word_embeddings(state_dict)


# --------------------------------------------------------------------------------------------------------------
# The whole conversion.


def convert_tf_checkpoint(
    checkpoint_prefix: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    params=None,
    preset: str | None = None,
    overrides: Mapping | None = None,
    spm_model: str | os.PathLike | None = None,
    scope: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a complete plugin repo for an original TensorFlow checkpoint and return its path.

    Args:
        checkpoint_prefix: ``dir/model.ckpt-300000`` (or one of its files, or a training directory).
        out_dir: the repo folder to create.
        params, preset, overrides: the original hyperparameters, see :func:`resolve_params`.
        spm_model: the sentencepiece ``.model`` the checkpoint was trained with, or a tokenizer folder.
        scope: the top variable scope; defaults to the params' ``scope``, else ``"pegasus"``.
        overwrite: replace an existing ``out_dir``.

    Raises:
        ConversionError, TFCheckpointError: before anything is written.
    """
    hyperparameters = resolve_params(params, preset=preset, overrides=overrides)
    config = config_from_params(hyperparameters)
    scope = scope or hyperparameters.get("scope", DEFAULT_SCOPE)
    _check_outputs(spm_model, Path(out_dir), overwrite)
    try:
        check_tokenizer_fits(spm_model, config.vocab_size)
    except RepoError as error:
        raise ConversionError(str(error)) from None
    ckpt = TFCheckpoint(checkpoint_prefix)
    state_dict = tf_checkpoint_to_state_dict(ckpt, config, scope)
    return build_repo(
        out_dir, config=config, state_dict=state_dict, tokenizer=spm_model,
        generation_config=generation_config_from_params(hyperparameters),
        description=_description(ckpt, preset), overwrite=overwrite,
    )


def _description(ckpt: TFCheckpoint, preset: str | None) -> str:
    origin = f"Converted from Google's original TensorFlow checkpoint `{ckpt.prefix.name}` (google-research/bigbird)"
    return origin + (f" with the hyperparameters of {preset}." if preset else ".")


def _check_outputs(spm_model, out_dir: Path, overwrite: bool) -> None:
    """Fail before the (long) weight conversion on what the repo builder would refuse after it."""
    if spm_model is None:
        raise ConversionError(
            "a repo needs the checkpoint's tokenizer: pass spm_model= (--spm-model), e.g. the original "
            "bigbird/vocab/pegasus.model, or a folder with Pegasus tokenizer files"
        )
    if not Path(spm_model).exists():
        raise ConversionError(f"the tokenizer {spm_model} does not exist")
    if out_dir.exists() and not overwrite:
        raise ConversionError(f"{out_dir} already exists: choose another folder or pass overwrite=True (--overwrite)")
    check_output_path(out_dir, overwrite=overwrite)
