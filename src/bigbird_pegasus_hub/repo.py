"""Build a complete, loadable Hub repo folder for the BigBirdPegasus plugin.

A plugin repo holds config.json (with `auto_map` and `custom_pipelines`), the remote-code files of `plugin/`,
model.safetensors, generation_config.json, the tokenizer files and a model card. `build_repo` writes all of it with
`atomic.atomic_output_folder`, so a failure or a signal leaves nothing half-written.

What a repo may make its users run is exactly this package's code: config.json's `auto_map` lists our classes and
nothing else, whatever the source checkpoint said, and the tokenizer is one of transformers' own classes, loaded
without remote code (a source's tokenizer `auto_map` is dropped, a tokenizer class transformers does not have is
refused). A wrong model is refused too: weights that do not fit the config, non-finite weights, a tokenizer with
more ids than the model's vocabulary.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import GenerationConfig

from .atomic import atomic_output_folder, check_output_path
from .plugin import modeling_bigbird_pegasus as modeling
from .plugin.configuration_bigbird_pegasus import BigBirdPegasusConfig
from .plugin.pipeline_bigbird_pegasus import CUSTOM_PIPELINES
from .repo_files import (
    CODE_FILES,
    CONFIG_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILES,
    RepoError,
    check_repo,
    check_safetensors_file,
    check_tokenizer_folder,
    check_tokenizer_source,
    listed,
    read_model_config,
)

__all__ = ["CODE_FILES", "RepoError", "build_repo", "check_finite", "check_repo", "check_tokenizer_fits",
           "model_from_weights"]

logger = logging.getLogger(__name__)

# The paper's decoding settings for arXiv/PubMed summaries, plus a guard against repeated trigrams.
PAPER_GENERATION = dict(num_beams=5, length_penalty=0.8, max_length=256, no_repeat_ngram_size=3, early_stopping=True)
# Weights that a checkpoint may leave out: the tied copies of the word embeddings, and a zero logits bias.
TIED_WEIGHTS = ("lm_head.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")


def build_repo(
    out_dir: str | os.PathLike,
    *,
    model: modeling.BigBirdPegasusPreTrainedModel | None = None,
    config: BigBirdPegasusConfig | dict | str | os.PathLike | None = None,
    state_dict: dict[str, torch.Tensor] | str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
    generation_config: GenerationConfig | dict | None = None,
    description: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes a plugin Hub repo to `out_dir` and returns its path.

    Args:
        model: a model of this plugin. Or give `config` (object, dict, or the path of a config JSON file) and
            `state_dict` (tensors, or a .safetensors file) of a `BigBirdPegasusForConditionalGeneration`.
        tokenizer: a folder with Pegasus tokenizer files, or a sentencepiece `.model` file.
        generation_config: decoding defaults; the paper's settings when omitted.
        description: what the weights are, for the model card.
        overwrite: replace an existing `out_dir` (only once the new folder is complete).

    Raises:
        RepoError: the inputs do not make a sound repo (weights that do not fit the config or are not finite, a
            tokenizer that does not fit the vocabulary or would need remote code, ...).
        atomic.OutputError: `out_dir` exists (without `overwrite`), or another process is writing it.
    """
    out_dir = check_output_path(out_dir, overwrite=overwrite)  # before the work; checked again under the lock
    if tokenizer is None:
        raise RepoError("A repo needs its tokenizer: pass a folder with Pegasus tokenizer files or a sentencepiece "
                        ".model file (--tokenizer / --spm-model).")
    check_tokenizer_source(tokenizer)
    model = model if model is not None else model_from_weights(config, state_dict)
    if not isinstance(model, modeling.BigBirdPegasusPreTrainedModel):
        raise RepoError(f"Expected a model of this plugin, got {type(model).__name__}: upgrade a built-in model "
                        "with `bigbird-pegasus upgrade` instead.")
    check_tokenizer_fits(tokenizer, model.config.vocab_size)
    check_finite(model)
    with atomic_output_folder(out_dir, overwrite=overwrite) as staging:
        save_model_with_code(model, staging)
        dropped = write_tokenizer(tokenizer, staging)
        if dropped is not None:
            logger.warning("Dropped the auto_map of %s (%s): a plugin repo loads its tokenizer with transformers' own "
                           "tokenizer class, without remote code.", Path(tokenizer) / TOKENIZER_CONFIG_FILE,
                           json.dumps(dropped))
        generation = as_generation_config(generation_config, model.config)
        generation.save_pretrained(staging)
        (staging / "README.md").write_text(model_card(model.config, description), encoding="utf-8")
        check_repo(staging)
    return out_dir


# ----------------------------------------------------------------------------------------------------------------
# The model.


def model_from_weights(config, state_dict) -> modeling.BigBirdPegasusForConditionalGeneration:
    """A summarization model from a config and a state dict, built on the meta device (no random init)."""
    if config is None or state_dict is None:
        raise RepoError("Give either `model`, or both `config` and `state_dict`.")
    config = as_config(config)
    if not isinstance(state_dict, dict):
        state_dict = load_weights(state_dict)
    with torch.device("meta"):
        model = modeling.BigBirdPegasusForConditionalGeneration(config)
    state_dict = dict(state_dict)
    state_dict.setdefault("final_logits_bias", torch.zeros(1, config.vocab_size))
    expected = model.state_dict()
    mismatched = [f"{name} {list(tensor.shape)} (the config needs {list(expected[name].shape)})"
                  for name, tensor in state_dict.items() if name in expected and tensor.shape != expected[name].shape]
    missing = [name for name in expected if name not in state_dict and name not in TIED_WEIGHTS]
    unexpected = [name for name in state_dict if name not in expected]
    problems = [f"{what}: {listed(names)}" for what, names in
                (("shape mismatch", mismatched), ("missing", missing), ("unexpected", unexpected)) if names]
    if problems:
        raise RepoError(f"The weights do not fit the config ({'; '.join(problems)}): give the config the weights "
                        "were trained with.")
    model.load_state_dict(state_dict, strict=False, assign=True)
    model.tie_weights()
    return model.eval()


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    check_safetensors_file(path)
    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise RepoError(f"Cannot read the weights {path} ({error}): save them again with safetensors.") from None


def as_config(config) -> BigBirdPegasusConfig:
    """A config object from itself, a dict, or the path of a config JSON file (or of a folder with config.json)."""
    if isinstance(config, BigBirdPegasusConfig):
        return config
    where = "the config"
    if not isinstance(config, dict):
        path = Path(config)
        path = path / CONFIG_FILE if path.is_dir() else path
        where, config = str(path), read_model_config(path)
    try:
        return BigBirdPegasusConfig.from_dict(config)
    except (ValueError, TypeError) as error:
        raise RepoError(f"{where} is not a valid BigBirdPegasus config: {error}") from None


def check_finite(model: torch.nn.Module) -> None:
    """Refuses weights with NaN or infinite values (a corrupt checkpoint, or training that diverged)."""
    seen, bad = set(), []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if id(tensor) in seen or tensor.is_meta or not tensor.is_floating_point():
            continue
        seen.add(id(tensor))
        if not bool(torch.isfinite(tensor).all()):
            bad.append(name)
    if bad:
        raise RepoError(f"The weights hold NaN or infinite values in {len(bad)} tensor(s): {listed(bad)}. The "
                        "checkpoint is damaged or its training diverged: use another checkpoint.")


def save_model_with_code(model, folder: Path):
    """Lets transformers save weights (safetensors) and code; then sets auto_map and custom_pipelines to exactly
    this plugin's classes, whatever the model's config carried."""
    model.save_pretrained(folder, safe_serialization=True)
    config_path = folder / CONFIG_FILE
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = modeling.auto_map()
    config["custom_pipelines"] = CUSTOM_PIPELINES
    tokenizer_class = config.get("tokenizer_class")
    if tokenizer_class is not None and not is_builtin_tokenizer_class(tokenizer_class):
        logger.warning("Dropped tokenizer_class %r from config.json: it is not a transformers tokenizer, and a plugin "
                       "repo loads its tokenizer without remote code (tokenizer_config.json names the class).",
                       tokenizer_class)
        del config["tokenizer_class"]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# The tokenizer.


def write_tokenizer(tokenizer, folder: Path) -> dict | None:
    """Writes the tokenizer files of a sentencepiece `.model` file or a tokenizer folder into `folder`.

    A plugin repo loads its tokenizer without remote code: a folder's tokenizer_config.json loses its `auto_map`
    (returned, so that the caller can say so), and must name a tokenizer class that transformers has.
    """
    source = Path(tokenizer)
    if source.is_file():
        from .tokenizer import write_pegasus_tokenizer

        write_pegasus_tokenizer(source, folder)
        return None
    tokenizer_config = check_tokenizer_folder(source)
    for name in TOKENIZER_FILES:
        if (source / name).is_file() and name != TOKENIZER_CONFIG_FILE:
            shutil.copyfile(source / name, folder / name)
    tokenizer_class = tokenizer_config.get("tokenizer_class")
    if tokenizer_class is not None and not is_builtin_tokenizer_class(tokenizer_class):
        raise RepoError(f"{source / TOKENIZER_CONFIG_FILE} names the tokenizer class {tokenizer_class!r}, which "
                        "transformers does not have, while a plugin repo loads its tokenizer without remote code: "
                        "use a Pegasus tokenizer (tokenizer_class PegasusTokenizer), or give its sentencepiece .model "
                        "file.")
    if "auto_map" not in tokenizer_config:
        shutil.copyfile(source / TOKENIZER_CONFIG_FILE, folder / TOKENIZER_CONFIG_FILE)
        return None
    cleaned = {key: value for key, value in tokenizer_config.items() if key != "auto_map"}
    (folder / TOKENIZER_CONFIG_FILE).write_text(json.dumps(cleaned, indent=2, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
    return tokenizer_config["auto_map"]


def is_builtin_tokenizer_class(name) -> bool:
    """Whether `name` is a tokenizer class of transformers itself (which loads without remote code)."""
    import transformers

    if not isinstance(name, str) or not name.isidentifier():
        return False
    try:
        candidate = getattr(transformers, name, None)
    except Exception:  # a lazily imported module that fails to import
        return False
    return isinstance(candidate, type) and issubclass(candidate, transformers.PreTrainedTokenizerBase)


def check_tokenizer_fits(tokenizer: str | os.PathLike, vocab_size: int) -> int:
    """Loads a tokenizer (folder or sentencepiece `.model` file) as a consumer of the repo would, without remote
    code, and refuses one with more ids than the model's vocabulary: those ids would have no embedding. Returns the
    tokenizer's size."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="tokenizer-") as folder:
        write_tokenizer(tokenizer, Path(folder))
        # As in the repo: a tokenizer config without tokenizer_class gets the class of the model type.
        (Path(folder) / CONFIG_FILE).write_text(json.dumps({"model_type": BigBirdPegasusConfig.model_type}))
        try:
            size = len(AutoTokenizer.from_pretrained(folder, trust_remote_code=False))
        except Exception as error:  # tokenizers and sentencepiece raise bare Exceptions for damaged files
            first_line = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
            raise RepoError(f"The tokenizer {tokenizer} does not load ({first_line}): give a complete Pegasus "
                            "tokenizer folder or a sentencepiece .model file.") from None
    if size > vocab_size:
        raise RepoError(f"The tokenizer {tokenizer} has {size} ids but the model's vocabulary has only {vocab_size} "
                        "(vocab_size): ids past the vocabulary have no embedding. Give the tokenizer the model was "
                        "trained with.")
    return size


# ----------------------------------------------------------------------------------------------------------------
# Generation config and card.


def as_generation_config(generation_config, model_config) -> GenerationConfig:
    if isinstance(generation_config, GenerationConfig):
        return generation_config
    ids = dict(bos_token_id=model_config.bos_token_id, eos_token_id=model_config.eos_token_id,
               pad_token_id=model_config.pad_token_id, decoder_start_token_id=model_config.decoder_start_token_id)
    return GenerationConfig(**{**ids, **PAPER_GENERATION, **(generation_config or {})})


def model_card(config: BigBirdPegasusConfig, description: str | None) -> str:
    template = (Path(__file__).parent / "data" / "model_card.md").read_text(encoding="utf-8")
    return template.format(
        description=description or "Weights of a BigBirdPegasus model.",
        d_model=config.d_model, encoder_layers=config.encoder_layers, decoder_layers=config.decoder_layers,
        attention_type=config.attention_type, block_size=config.block_size,
        num_random_blocks=config.num_random_blocks, max_position_embeddings=config.max_position_embeddings,
        vocab_size=config.vocab_size,
    )
