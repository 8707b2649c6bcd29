"""The original hyperparameters of Google's BigBird-Pegasus runs: merging a preset, a params JSON and overrides,
and checking them, before anything heavy is imported (no torch, no transformers: the command line runs these checks
first, so a mistake is reported at once).
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping
from pathlib import Path

from .presets import PRESET_NAMES, PRESETS

__all__ = ["ConversionError", "checked_params", "resolve_params"]


class ConversionError(ValueError):
    """The inputs of a conversion are wrong or do not fit together; the message says what, and what to do."""


def _bullets(lines) -> str:
    return "".join(f"\n  - {line}" for line in lines)


# The original shares one set of sizes between its encoder and decoder.
_CONFIG_FIELDS = {
    "vocab_size": ("vocab_size",),
    "hidden_size": ("d_model",),
    "num_hidden_layers": ("encoder_layers", "decoder_layers"),
    "num_attention_heads": ("encoder_attention_heads", "decoder_attention_heads"),
    "intermediate_size": ("encoder_ffn_dim", "decoder_ffn_dim"),
    "max_position_embeddings": ("max_position_embeddings",),
    "attention_type": ("attention_type",),
    "block_size": ("block_size",),
    "num_rand_blocks": ("num_random_blocks",),
    "use_bias": ("use_bias",),
    "rescale_embedding": ("scale_embedding",),
    "hidden_dropout_prob": ("dropout",),
    "attention_probs_dropout_prob": ("attention_dropout",),
    "initializer_range": ("init_std",),
}
# Training-only values, defaulted as bigbird/core/flags.py does when a params dict omits them.
_TRAINING_DEFAULTS = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02}
# bigbird/core/utils.py's gelu is the tanh approximation, transformers' "gelu_new".
_ACTIVATIONS = {"gelu": "gelu_new", "relu": "relu"}
# The only layout our model implements: Pegasus style, LayerNorm before each block, separate encoder and decoder.
_SUPPORTED_LAYOUT = {"norm_type": "prenorm", "couple_encoder_decoder": False}
_REQUIRED = tuple(
    name for name in (*_CONFIG_FIELDS, "hidden_act", *_SUPPORTED_LAYOUT) if name not in _TRAINING_DEFAULTS
)
# Read for decoding (generation_config_from_params), the variable scope and a length check.
_DECODING_PARAMS = ("beam_size", "alpha", "max_decoder_length")
_KNOWN_PARAMS = frozenset({*_REQUIRED, *_TRAINING_DEFAULTS, *_DECODING_PARAMS, "scope", "max_encoder_length"})
# Token ids fixed by the original code (bigbird/core/modeling.py: start id 2, end id 1, padding is id 0).
_TOKEN_IDS = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2, decoder_start_token_id=2)
# The original NormLayer's variance epsilon (bigbird/core/utils.py).
_LAYER_NORM_EPS = 1e-12


def resolve_params(params=None, *, preset: str | None = None, overrides: Mapping | None = None) -> dict:
    """Merge the original hyperparameters: a preset, then ``params`` (a dict or a JSON file), then ``overrides``.

    ``params`` may hold the whole flag dump of a run (training and TPU flags are ignored); ``overrides`` may only
    name hyperparameters the conversion reads, so that a typo cannot pass silently.
    """
    merged = _preset(preset) if preset is not None else {}
    merged.update(_load_params(params) if params is not None else {})
    unknown = sorted(set(overrides or {}) - _KNOWN_PARAMS)
    if unknown:
        raise ConversionError(
            f"unknown hyperparameter override(s) {', '.join(unknown)}; the conversion reads "
            f"{', '.join(sorted(_KNOWN_PARAMS))}"
        )
    merged.update(overrides or {})
    return merged


def _preset(name: str) -> dict:
    """A preset by its short name (`arxiv`, as `--preset` takes it) or model name (`[google/]bigbird-pegasus-...`)."""
    key = name.removeprefix("google/")
    key = PRESET_NAMES.get(key, key)
    if key not in PRESETS:
        raise ConversionError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    return dict(PRESETS[key])


def _load_params(params) -> dict:
    if isinstance(params, Mapping):
        return dict(params)
    path = Path(params)
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConversionError(f"cannot read the params file {path}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise ConversionError(f"the params file {path} is not valid JSON ({error})") from None
    if not isinstance(loaded, dict):
        raise ConversionError(f"the params file {path} must hold a JSON object of hyperparameters")
    if not _KNOWN_PARAMS & loaded.keys():
        nested = [key for key, value in loaded.items() if isinstance(value, dict) and _KNOWN_PARAMS & value.keys()]
        where = f"; they are under {nested[0]!r}: pass that object by itself" if nested else ""
        raise ConversionError(
            f"the params file {path} has none of the original hyperparameters at its top level (such as "
            f"hidden_size, num_hidden_layers){where}"
        )
    return loaded


# What each hyperparameter the conversion reads must be: (test, what to say).
_KINDS = {
    "whole >= 1": (lambda value: _is_whole(value) and value >= 1, "a whole number >= 1"),
    "whole >= 0": (lambda value: _is_whole(value) and value >= 0, "a whole number >= 0"),
    "bool": (lambda value: isinstance(value, bool), "true or false"),
    "probability": (lambda value: _is_real(value) and 0 <= value <= 1, "a number from 0 to 1"),
    "number > 0": (lambda value: _is_real(value) and value > 0, "a number > 0"),
    "number >= 0": (lambda value: _is_real(value) and value >= 0, "a number >= 0"),
    "name": (lambda value: isinstance(value, str) and bool(value), "a non-empty string"),
}
_PARAM_KINDS = {
    **dict.fromkeys(("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "block_size", "max_encoder_length", "max_decoder_length",
                     "beam_size"), "whole >= 1"),
    "num_rand_blocks": "whole >= 0",
    **dict.fromkeys(("use_bias", "rescale_embedding", "couple_encoder_decoder"), "bool"),
    **dict.fromkeys(("hidden_dropout_prob", "attention_probs_dropout_prob"), "probability"),
    "initializer_range": "number > 0",
    "alpha": "number >= 0",
    **dict.fromkeys(("attention_type", "hidden_act", "norm_type", "scope"), "name"),
}


def _is_whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def checked_params(params=None, *, preset: str | None = None, overrides: Mapping | None = None) -> dict:
    """The merged hyperparameters (see :func:`resolve_params`) with the training-only defaults, checked: every one
    the conversion needs is there, of the right type and range, and describes a layout the model implements.

    Raises:
        ConversionError: naming every problem at once.
    """
    values = {**_TRAINING_DEFAULTS, **resolve_params(params, preset=preset, overrides=overrides)}
    _check_params(values)
    return values


def _check_params(values: Mapping) -> None:
    missing = [name for name in _REQUIRED if name not in values]
    if missing:
        raise ConversionError(
            f"the hyperparameters lack {', '.join(missing)}: pass the params JSON of the original run "
            f"(params= / --params), a preset ({', '.join(PRESET_NAMES)}) or overrides"
        )
    wrong_types = [
        f"{name}={values[name]!r} must be {_KINDS[kind][1]}"
        for name, kind in _PARAM_KINDS.items()
        if name in values and not _KINDS[kind][0](values[name])
    ]
    if wrong_types:
        raise ConversionError("invalid hyperparameters (fix the params JSON or the --set override):"
                              + _bullets(wrong_types))
    problems = [
        f"{name}={values[name]!r} is not supported, only {name}={supported!r} (Pegasus layout)"
        for name, supported in _SUPPORTED_LAYOUT.items()
        if values[name] != supported
    ]
    if values["hidden_act"] not in _ACTIVATIONS:
        problems.append(f"hidden_act={values['hidden_act']!r} is not supported; use one of {', '.join(_ACTIVATIONS)}")
    max_encoder_length, max_positions = values.get("max_encoder_length"), values["max_position_embeddings"]
    if max_encoder_length is not None and max_encoder_length > max_positions:
        problems.append(f"max_encoder_length={max_encoder_length} exceeds max_position_embeddings={max_positions}")
    if problems:
        raise ConversionError("unsupported hyperparameters:" + _bullets(problems))
