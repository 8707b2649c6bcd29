"""Upgrade a checkpoint of transformers' built-in ``bigbird_pegasus`` into a plugin repo.

Our parameter and config names equal the built-in model's, so upgrading copies the weights (safetensors or a
``.bin``, sharded or not), the config, the generation config and the tokenizer files into a repo written by
``bigbird_pegasus_hub.repo.build_repo``, which adds the plugin code and ``auto_map``. Example::

    upgrade_builtin("google/bigbird-pegasus-large-arxiv", "bigbird-pegasus-large-arxiv-plugin")
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import GenerationConfig

from bigbird_pegasus_hub.plugin.configuration_bigbird_pegasus import BigBirdPegasusConfig
from bigbird_pegasus_hub.repo import build_repo, check_tokenizer_fits
from bigbird_pegasus_hub.repo_files import (
    BIN_FILES,
    CODE_REFERENCE_KEYS,
    SAFETENSORS_FILES,
    RepoError,
    check_builtin_folder,
    check_weight_files,
)

from .tf_to_plugin import ConversionError, _bullets, add_tied_word_embeddings, expected_state_dict_shapes

__all__ = ["load_builtin_weights", "upgrade_builtin"]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# (single file, index of a sharded checkpoint), safetensors first.
WEIGHT_FILES = (SAFETENSORS_FILES, BIN_FILES)
# What a download needs; the .bin weights are fetched only when a repo has no safetensors.
_SAFETENSORS_SNAPSHOT = ["*.json", "*.model", "model*.safetensors"]
_BIN_SNAPSHOT = ["pytorch_model*.bin"]
# Shared by model and generation configs; every other generation setting moves out of an old config.json.
_MODEL_CONFIG_KEYS = frozenset({
    "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "use_cache", "output_attentions",
    "output_hidden_states", "transformers_version",
})


def upgrade_builtin(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    revision: str | None = None,
    tokenizer: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a plugin repo for a built-in bigbird_pegasus checkpoint and return its path.

    Args:
        src: a local folder, or a Hub repo id (downloaded with ``snapshot_download``).
        out_dir: the repo folder to create.
        revision: branch, tag or commit of a Hub repo.
        tokenizer: a Pegasus tokenizer folder or sentencepiece `.model` file, for a source without tokenizer files
            (default: the source's own tokenizer).
        overwrite: replace an existing ``out_dir``.

    Raises:
        ConversionError: before anything is written (the source does not make a sound repo).
        bigbird_pegasus_hub.atomic.OutputError: ``out_dir`` cannot be written.
    """
    if Path(out_dir).exists() and not overwrite:
        raise ConversionError(f"{out_dir} already exists: choose another folder or pass overwrite=True (--overwrite)")
    if tokenizer is not None and not Path(tokenizer).exists():
        raise ConversionError(f"the tokenizer {tokenizer} does not exist")
    folder = _source_folder(src, revision)
    try:
        return _upgrade_folder(folder, src, out_dir, tokenizer, overwrite)
    except RepoError as error:
        raise ConversionError(str(error)) from None


def _upgrade_folder(folder: Path, src, out_dir, tokenizer, overwrite: bool) -> Path:
    check_builtin_folder(folder, tokenizer_given=tokenizer is not None)
    tokenizer = folder if tokenizer is None else tokenizer
    raw_config = _read_builtin_config(folder)
    try:
        config = BigBirdPegasusConfig.from_dict(_without_generation_settings(raw_config))
    except (ValueError, TypeError) as error:
        raise ConversionError(f"{folder / CONFIG_FILE} is not a valid BigBirdPegasus config: {error}") from None
    check_tokenizer_fits(tokenizer, config.vocab_size)  # before the weights, which take long to read
    expected = expected_state_dict_shapes(config)
    state_dict = _completed(load_builtin_weights(folder), expected)
    _check_weights(state_dict, expected)
    return build_repo(
        out_dir, config=config, state_dict=state_dict, tokenizer=tokenizer,
        generation_config=_generation_config(folder, raw_config),
        description=f"Upgraded from the transformers built-in bigbird_pegasus checkpoint `{src}`.", overwrite=overwrite,
    )


def _source_folder(src, revision: str | None) -> Path:
    path = Path(src)
    if path.is_dir():
        if revision is not None:
            raise ConversionError(f"{src} is a local folder: revision= only applies to Hub repo ids")
        return path
    try:
        folder = Path(snapshot_download(str(src), revision=revision, allow_patterns=_SAFETENSORS_SNAPSHOT))
        if not any((folder / name).is_file() for name in SAFETENSORS_FILES):
            folder = Path(snapshot_download(str(src), revision=revision, allow_patterns=_BIN_SNAPSHOT))
    except HFValidationError:
        raise ConversionError(f"{src} is neither a local folder nor a Hub repo id") from None
    except RepositoryNotFoundError:
        raise ConversionError(
            f"{src} is not a local folder, and the Hub has no such repo (or it is private: log in)"
        ) from None
    except RevisionNotFoundError:
        raise ConversionError(f"the Hub repo {src} has no revision {revision!r}") from None
    return folder


def _read_builtin_config(folder: Path) -> dict:
    """The source's config.json, without references to code: a plugin repo runs this package's code only."""
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))  # checked by check_builtin_folder
    dropped = {key: config.pop(key) for key in CODE_REFERENCE_KEYS if key in config}
    if dropped:
        logger.warning("Dropped %s from %s: a plugin repo references this package's code only.",
                       json.dumps(dropped), folder / CONFIG_FILE)
    return config


def _generation_settings(raw_config: dict) -> dict:
    defaults = GenerationConfig().to_dict()
    return {key: value for key, value in raw_config.items() if key in defaults and key not in _MODEL_CONFIG_KEYS}


def _without_generation_settings(raw_config: dict) -> dict:
    # transformers 4.x warns about (and will refuse) decoding settings saved in a model config.
    moved = _generation_settings(raw_config)
    return {key: value for key, value in raw_config.items() if key not in moved}


def _generation_config(folder: Path, raw_config: dict) -> GenerationConfig:
    if (folder / GENERATION_CONFIG_FILE).is_file():
        return GenerationConfig.from_pretrained(folder)
    # Older repos (google/bigbird-pegasus-large-*) keep their decoding settings in config.json.
    token_ids = {key: raw_config[key] for key in _MODEL_CONFIG_KEYS if key.endswith("_token_id") and key in raw_config}
    defaults = GenerationConfig().to_dict()
    changed = {key: value for key, value in _generation_settings(raw_config).items() if value != defaults[key]}
    return GenerationConfig(**token_ids, **changed)


# --------------------------------------------------------------------------------------------------------------
# Weights.


def load_builtin_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict saved in ``folder``: model.safetensors or pytorch_model.bin, possibly sharded."""
    try:
        files = check_weight_files(folder, WEIGHT_FILES)
    except RepoError as error:
        raise ConversionError(str(error)) from None
    state_dict = {}
    for path in files:
        state_dict.update(_load_weights_file(path))
    return state_dict


def _load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except SafetensorError as error:
            raise ConversionError(f"{path} is not a readable safetensors file ({error})") from None
    try:
        # weights_only: a .bin is a pickle, and only plain tensors may come out of it.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(
            f"{path} cannot be loaded as plain tensors ({first_line}); re-save it as safetensors where you trust it"
        ) from None
    return _state_dict_of(loaded, path)


def _state_dict_of(loaded, path: Path) -> dict[str, torch.Tensor]:
    """What a .bin holds, if it is a state dict: names -> tensors."""
    if not isinstance(loaded, dict):
        raise ConversionError(f"{path} holds a {type(loaded).__name__}, not a state dict (names -> tensors): save "
                              "the model's state_dict(), or better, save it with safetensors")
    not_tensors = [f"{name!r} ({type(value).__name__})" for name, value in loaded.items()
                   if not (isinstance(name, str) and isinstance(value, torch.Tensor))]
    if not_tensors:
        raise ConversionError(f"{path} is not a state dict of tensors: {', '.join(not_tensors[:5])}"
                              f"{' ...' if len(not_tensors) > 5 else ''}; save the model's state_dict(), or better, "
                              "save it with safetensors")
    return loaded


def _completed(state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Fill in what transformers leaves out when saving: the tied embeddings, and a zero logits bias."""
    if "model.shared.weight" in state_dict:
        add_tied_word_embeddings(state_dict)
    state_dict.setdefault("final_logits_bias", torch.zeros(expected["final_logits_bias"]))
    return state_dict


def _check_weights(state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Size]) -> None:
    problems = [
        *(f"missing weight: {name}" for name in expected if name not in state_dict),
        *(f"unexpected weight: {name}" for name in state_dict if name not in expected),
        *(
            f"shape mismatch: {name} has {list(tensor.shape)}, the config needs {list(expected[name])}"
            for name, tensor in state_dict.items()
            if name in expected and tensor.shape != expected[name]
        ),
    ]
    if problems:
        raise ConversionError(
            f"the weights do not fit their {CONFIG_FILE} ({len(problems)} problem(s)):" + _bullets(problems)
        )
