"""Build a complete, loadable Hub repo folder for the BigBirdPegasus plugin.

A plugin repo holds config.json (with `auto_map` and `custom_pipelines`), the remote-code files of `plugin/`,
model.safetensors, generation_config.json, the tokenizer files and a model card. `build_repo` writes all of it into
a temporary folder beside the destination and renames it into place, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import GenerationConfig

from .plugin import modeling_bigbird_pegasus as modeling
from .plugin.configuration_bigbird_pegasus import BigBirdPegasusConfig
from .plugin.pipeline_bigbird_pegasus import CUSTOM_PIPELINES
from .repo_files import CODE_FILES, TOKENIZER_FILES, RepoError, check_repo

__all__ = ["CODE_FILES", "RepoError", "build_repo", "check_repo", "model_from_weights"]


# The paper's decoding settings for arXiv/PubMed summaries, plus a guard against repeated trigrams.
PAPER_GENERATION = dict(num_beams=5, length_penalty=0.8, max_length=256, no_repeat_ngram_size=3, early_stopping=True)


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
        model: a model of this plugin. Or give `config` (object, dict or config.json path) and `state_dict`
            (tensors, or a .safetensors file) of a `BigBirdPegasusForConditionalGeneration`.
        tokenizer: a folder with Pegasus tokenizer files, or a sentencepiece `.model` file.
        generation_config: decoding defaults; the paper's settings when omitted.
        description: what the weights are, for the model card.
        overwrite: replace an existing `out_dir` (only once the new folder is complete).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise RepoError(f"{out_dir} already exists: choose another folder or pass overwrite=True (--overwrite).")
    model = model if model is not None else model_from_weights(config, state_dict)
    with staging_folder(out_dir) as staging:
        save_model_with_code(model, staging)
        write_tokenizer(tokenizer, staging)
        generation = as_generation_config(generation_config, model.config)
        generation.save_pretrained(staging)
        (staging / "README.md").write_text(model_card(model.config, description), encoding="utf-8")
        check_repo(staging)
        replace_folder(staging, out_dir)
    return out_dir


def model_from_weights(config, state_dict) -> modeling.BigBirdPegasusForConditionalGeneration:
    """A summarization model from a config and a state dict, built on the meta device (no random init)."""
    if config is None or state_dict is None:
        raise RepoError("Give either `model`, or both `config` and `state_dict`.")
    config = as_config(config)
    if not isinstance(state_dict, dict):
        state_dict = load_file(str(state_dict))
    with torch.device("meta"):
        model = modeling.BigBirdPegasusForConditionalGeneration(config)
    state_dict = dict(state_dict)
    state_dict.setdefault("final_logits_bias", torch.zeros(1, config.vocab_size))
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    except RuntimeError as error:  # shape mismatches
        raise RepoError(f"The weights do not fit the config: {error}") from error
    tied = {"lm_head.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"}
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise RepoError(f"The weights do not fit the config: missing {missing}, unexpected {unexpected}.")
    model.tie_weights()
    return model.eval()


def as_config(config) -> BigBirdPegasusConfig:
    if isinstance(config, BigBirdPegasusConfig):
        return config
    if isinstance(config, dict):
        return BigBirdPegasusConfig(**config)
    path = Path(config)
    return BigBirdPegasusConfig.from_pretrained(path.parent if path.is_file() else path)


@contextmanager
def staging_folder(out_dir: Path):
    """A fresh folder next to `out_dir` (same filesystem, so the final rename is atomic), removed on failure."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the repo folder should not be
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_folder(staging: Path, out_dir: Path):
    """Renames `staging` to `out_dir`; an old `out_dir` is moved aside first and deleted only afterwards."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    try:
        staging.rename(out_dir)
    except BaseException:
        if old is not None:
            old.rename(out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_model_with_code(model, folder: Path):
    """Lets transformers save weights (safetensors) and code; then completes auto_map and custom_pipelines."""
    if not isinstance(model, modeling.BigBirdPegasusPreTrainedModel):
        raise RepoError(f"Expected a model of this plugin, got {type(model).__name__}: upgrade a built-in model "
                        "with `bigbird-pegasus upgrade` instead.")
    model.save_pretrained(folder, safe_serialization=True)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = {**modeling.auto_map(), **config.get("auto_map", {})}
    config["custom_pipelines"] = CUSTOM_PIPELINES
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_tokenizer(tokenizer, folder: Path):
    if tokenizer is None:
        raise RepoError("A repo needs its tokenizer: pass a folder with Pegasus tokenizer files or a sentencepiece "
                        ".model file (--tokenizer / --spm-model).")
    source = Path(tokenizer)
    if source.is_file() and source.suffix == ".model":
        from .tokenizer import write_pegasus_tokenizer

        write_pegasus_tokenizer(source, folder)
        return
    if not (source / "tokenizer_config.json").is_file():
        raise RepoError(f"{source} holds no tokenizer_config.json: give a tokenizer folder or a sentencepiece "
                        ".model file.")
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)


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
