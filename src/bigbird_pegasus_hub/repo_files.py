"""What a plugin Hub repo folder holds, and the check that one is complete (no torch import: cheap to use)."""

from __future__ import annotations

import json
from pathlib import Path

CODE_FILES = ("configuration_bigbird_pegasus.py", "modeling_bigbird_pegasus.py", "block_sparse_layout.py",
              "pipeline_bigbird_pegasus.py")
TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
WEIGHTS_FILE = "model.safetensors"


class RepoError(ValueError):
    """A repo cannot be built or is incomplete; the message says what is missing and what to do."""


def check_repo(folder: Path):
    """Refuses a folder that would not load: config without auto_map, missing code, weights or tokenizer."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise RepoError(f"{folder} has no config.json: it is not a model repo. Build one with `bigbird-pegasus build`.")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if "auto_map" not in config:
        raise RepoError(f"{config_path} has no auto_map, so transformers would not find the plugin code: rebuild the "
                        "repo with `bigbird-pegasus build` or upgrade it with `bigbird-pegasus upgrade`.")
    missing = [name for name in CODE_FILES if not (folder / name).is_file()]
    if not (folder / WEIGHTS_FILE).is_file() and not (folder / f"{WEIGHTS_FILE}.index.json").is_file():
        missing.append(WEIGHTS_FILE)
    if not (folder / "tokenizer_config.json").is_file():
        missing.append("tokenizer_config.json (the tokenizer)")
    if missing:
        raise RepoError(f"{folder} is incomplete, missing: {', '.join(missing)}. Rebuild it with "
                        "`bigbird-pegasus build`.")
