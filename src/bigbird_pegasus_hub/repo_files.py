"""What a model folder holds, and the checks of its files that need no torch (cheap: run them before the imports).

Plugin repos: `check_repo` refuses a folder that would not load, or that references Python code outside its own
files. Model folders in general (plugin repos, transformers' built-in checkpoints): their JSON files, weights
(safetensors headers, shard indexes) and tokenizer files are checked with one clear error per problem, naming
the file.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

CODE_FILES = ("configuration_bigbird_pegasus.py", "modeling_bigbird_pegasus.py", "block_sparse_layout.py",
              "pipeline_bigbird_pegasus.py")
TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# The files that hold the vocabulary itself; a tokenizer folder needs at least one of them.
VOCABULARY_FILES = ("spiece.model", "tokenizer.json")
CONFIG_FILE = "config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_TYPE = "bigbird_pegasus"
# (single file, index of a sharded checkpoint) of each weights format, safetensors first.
SAFETENSORS_FILES = (WEIGHTS_FILE, f"{WEIGHTS_FILE}.index.json")
BIN_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# Where a transformers config can name Python code for the Auto classes and pipelines to import.
CODE_REFERENCE_KEYS = ("auto_map", "custom_pipelines")
# safetensors refuses headers above 100 MB; so do we, before reading one.
_MAX_SAFETENSORS_HEADER = 100_000_000
# How many names an error lists before it says "and N more".
NAMES_SHOWN = 5


class RepoError(ValueError):
    """A repo cannot be built or is incomplete; the message says what is missing and what to do."""


def check_repo(folder: str | Path) -> None:
    """Refuses a folder that would not load (config without auto_map, missing code, weights or tokenizer), or that
    references Python code outside its own files."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise RepoError(f"{folder} has no config.json: it is not a model repo. Build one with `bigbird-pegasus build`.")
    config = read_json_object(config_path)
    if "auto_map" not in config:
        raise RepoError(f"{config_path} has no auto_map, so transformers would not find the plugin code: rebuild the "
                        "repo with `bigbird-pegasus build` or upgrade it with `bigbird-pegasus upgrade`.")
    missing = [name for name in CODE_FILES if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in SAFETENSORS_FILES):
        missing.append(WEIGHTS_FILE)
    if not (folder / TOKENIZER_CONFIG_FILE).is_file():
        missing.append("tokenizer_config.json (the tokenizer)")
    if missing:
        raise RepoError(f"{folder} is incomplete, missing: {', '.join(missing)}. Rebuild it with "
                        "`bigbird-pegasus build`.")
    check_code_references(folder)


def listed(names) -> str:
    """Names for an error message: the first few, and how many more."""
    names = list(names)
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def first_line(error: Exception) -> str:
    """A library's error message for one line of ours: its first non-empty line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


# ----------------------------------------------------------------------------------------------------------------
# Code references: what transformers would import from where.


def code_references(config: dict) -> Iterator[tuple[str, str]]:
    """(key, reference) for every class reference in a config or tokenizer config: `auto_map` entries (a tokenizer's
    entry is a [slow, fast] pair) and the `impl` of `custom_pipelines`."""
    auto_map = config.get("auto_map") or {}
    if not isinstance(auto_map, dict):
        yield "auto_map", repr(auto_map)
        return
    for auto_class, value in auto_map.items():
        for reference in value if isinstance(value, (list, tuple)) else [value]:
            if reference is not None:
                yield f"auto_map.{auto_class}", reference
    pipelines = config.get("custom_pipelines") or {}
    for task, spec in pipelines.items() if isinstance(pipelines, dict) else [("", pipelines)]:
        yield f"custom_pipelines.{task}", spec.get("impl") if isinstance(spec, dict) else repr(spec)


def local_module(reference) -> str | None:
    """The module a reference `module.Class` names in its own repo; None for anything else, such as another repo's
    code (`owner/repo--module.Class`), a path or a malformed value."""
    if not isinstance(reference, str) or "--" in reference:
        return None
    module, dot, name = reference.partition(".")
    if not (dot and module.isidentifier() and name.isidentifier()):
        return None
    return module


def foreign_references(config: dict, own_modules: set[str] | None = None) -> list[str]:
    """The references of `config` that point outside the repo (`own_modules`: the modules it carries; None when
    unknown, as for a Hub repo's config read on its own)."""
    return [
        f"{key} -> {reference}"
        for key, reference in code_references(config)
        if (module := local_module(reference)) is None or (own_modules is not None and module not in own_modules)
    ]


def check_code_references(folder: Path) -> None:
    """Refuses a folder whose config, tokenizer config (or any other top-level JSON config) makes transformers import
    code it does not carry: another repo's, which a consumer's pinned revision would not pin, or a module it lacks."""
    own_modules = {path.stem for path in folder.glob("*.py")}
    # Every JSON file at the top: configs of processors and feature extractors can hold an auto_map too.
    # tokenizer.json (the vocabulary, megabytes) and checkpoint indexes cannot.
    for path in sorted(folder.glob("*.json")):
        if path.name == "tokenizer.json" or path.name.endswith(".index.json"):
            continue
        foreign = foreign_references(read_json_object(path), own_modules)
        if foreign:
            raise RepoError(
                f"{path} references code outside the repo ({'; '.join(foreign)}): a plugin repo may only reference "
                "its own Python files. Rebuild it with `bigbird-pegasus build` or `bigbird-pegasus upgrade`, which "
                "write references to this package's code only."
            )


# ----------------------------------------------------------------------------------------------------------------
# JSON files.


def read_json_object(path: str | Path, what: str = "") -> dict:
    """The JSON object in `path`; a missing, unreadable or invalid file is a RepoError that names it."""
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RepoError(f"{label} does not exist: check the path.") from None
    except IsADirectoryError:
        raise RepoError(f"{label} is a folder, not a JSON file: give the file.") from None
    except UnicodeDecodeError as error:
        raise RepoError(f"{label} is not UTF-8 text (byte {error.start}), so not a JSON file: give the right "
                        "file.") from None
    except json.JSONDecodeError as error:
        raise RepoError(f"{label} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}): "
                        "fix or replace the file.") from None
    except OSError as error:
        raise RepoError(f"Cannot read {label}: {error.strerror or error}.") from None
    if not isinstance(content, dict):
        raise RepoError(f"{label} holds a JSON {type(content).__name__}, not an object: give the right file.")
    return content


def read_model_config(path: str | Path, what: str = "") -> dict:
    """A config.json of a BigBirdPegasus model (this plugin's or transformers' built-in one)."""
    config = read_json_object(path, what)
    if config.get("model_type", MODEL_TYPE) != MODEL_TYPE:
        raise RepoError(f"{what + ' ' if what else ''}{path} describes a {config.get('model_type')!r} model, not "
                        f"{MODEL_TYPE}: give the config of a BigBirdPegasus model.")
    return config


# ----------------------------------------------------------------------------------------------------------------
# Weights.


def weight_files(folder: str | Path, formats: tuple[tuple[str, str], ...] = (SAFETENSORS_FILES,)) -> list[Path]:
    """The weight files of the first of `formats` ((single file, shard index) pairs) that `folder` holds; [] if
    none. Shards must be plain file names inside `folder` and must all be there."""
    folder = Path(folder)
    for single, index in formats:
        if (folder / index).is_file():
            return [folder / name for name in shard_names(folder / index)]
        if (folder / single).is_file():
            return [folder / single]
    return []


def shard_names(index: Path) -> list[str]:
    """The shard files a checkpoint index lists, refusing any that is not a plain file name beside the index (a
    path such as ../x or /x would read files outside the model folder)."""
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise RepoError(f"{index} is not a checkpoint index (it has no weight_map): re-save the model.")
    names = sorted({str(name) for name in weight_map.values()})
    outside = [name for name in names if not _is_plain_file_name(name)]
    if outside:
        raise RepoError(f"{index} lists shard(s) outside its folder: {', '.join(map(repr, outside))}: a shard must be "
                        "a plain file name beside the index. Re-save the model.")
    missing = [name for name in names if not (index.parent / name).is_file()]
    if missing:
        raise RepoError(f"shard(s) {', '.join(missing)} listed in {index.name} are missing from {index.parent}.")
    return names


def _is_plain_file_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and Path(name).name == name and "\\" not in name and \
        "/" not in name and "\0" not in name


def check_safetensors_file(path: str | Path) -> dict:
    """The header of a safetensors file ({name: {dtype, shape, data_offsets}}), after checking that the file is
    complete: an empty, truncated or foreign file is a RepoError that names it. Reads only the header."""
    path = Path(path)
    advice = "the file is damaged or incomplete (an interrupted download or copy?): download or save it again."
    try:
        with path.open("rb") as file:
            size = path.stat().st_size
            if size < 8:
                raise RepoError(f"{path} is {'empty' if size == 0 else 'truncated'} ({size} bytes), not safetensors "
                                f"weights: {advice}")
            (header_size,) = struct.unpack("<Q", file.read(8))
            if header_size > min(_MAX_SAFETENSORS_HEADER, size - 8):
                raise RepoError(f"{path} is not a complete safetensors file (its header claims {header_size} bytes of "
                                f"a {size}-byte file): {advice}")
            header = json.loads(file.read(header_size))
    except OSError as error:
        raise RepoError(f"Cannot read {path}: {error.strerror or error}.") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RepoError(f"{path} is not a safetensors file (its header is not JSON): {advice}") from None
    if not isinstance(header, dict):
        raise RepoError(f"{path} is not a safetensors file (its header is not a JSON object): {advice}")
    header.pop("__metadata__", None)
    data_size = size - 8 - header_size
    try:
        end = max((int(entry["data_offsets"][1]) for entry in header.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise RepoError(f"{path} is not a safetensors file (its header has no valid data_offsets): {advice}") from None
    if end != data_size:
        state = "truncated" if end > data_size else "longer than its header says"
        raise RepoError(f"{path} is {state}: its header describes {end} bytes of tensors, the file holds {data_size}: "
                        f"{advice}")
    return header


def check_weight_files(folder: str | Path, formats: tuple[tuple[str, str], ...] = (SAFETENSORS_FILES,)) -> list[Path]:
    """`weight_files`, each safetensors file checked to be complete; a folder without weights is a RepoError."""
    files = weight_files(folder, formats)
    if not files:
        names = ", ".join(name for pair in formats for name in pair)
        raise RepoError(f"{folder} has no weights: expected one of {names}.")
    for path in files:
        if path.suffix == ".safetensors":
            check_safetensors_file(path)
    return files


# ----------------------------------------------------------------------------------------------------------------
# Tokenizers.


def check_tokenizer_source(source: str | Path) -> None:
    """A sentencepiece `.model` file, or a folder of tokenizer files: tokenizer_config.json (valid JSON) and the
    vocabulary (spiece.model or tokenizer.json); a RepoError names what is wrong."""
    source = Path(source)
    if source.is_file():
        if source.suffix != ".model":
            raise RepoError(f"{source} is neither a sentencepiece .model file nor a tokenizer folder: give one of "
                            "them.")
        return
    if not source.is_dir():
        raise RepoError(f"The tokenizer {source} does not exist: check the path.")
    check_tokenizer_folder(source)


def check_tokenizer_folder(folder: Path) -> dict:
    """Returns the folder's tokenizer config after checking its files (see `check_tokenizer_source`)."""
    config_path = folder / TOKENIZER_CONFIG_FILE
    if not config_path.is_file():
        raise RepoError(f"{folder} holds no {TOKENIZER_CONFIG_FILE}, so no tokenizer: give a tokenizer folder (such as "
                        "a model repo) or a sentencepiece .model file.")
    config = read_json_object(config_path)
    if not any((folder / name).is_file() for name in VOCABULARY_FILES):
        raise RepoError(f"{folder} has {TOKENIZER_CONFIG_FILE} but no vocabulary ({' or '.join(VOCABULARY_FILES)}): "
                        "copy the tokenizer's files into it, or give its sentencepiece .model file.")
    for name in ("tokenizer.json", "special_tokens_map.json"):
        if (folder / name).is_file():
            read_json_object(folder / name)
    return config


def check_model_folder(folder: str | Path, *, formats: tuple[tuple[str, str], ...] = (SAFETENSORS_FILES,),
                       with_tokenizer: bool = True) -> dict:
    """The cheap checks of a whole model folder: its config.json, weight files and (`with_tokenizer`) tokenizer.
    Returns the config."""
    folder = Path(folder)
    config = read_model_config(folder / CONFIG_FILE)
    check_weight_files(folder, formats)
    if with_tokenizer:
        check_tokenizer_folder(folder)
    return config


def check_builtin_folder(folder: str | Path, *, tokenizer_given: bool = False) -> dict:
    """The cheap checks of a transformers checkpoint folder that `bigbird-pegasus upgrade` reads (no tensor is read):
    config.json, weights in either format (shard paths, safetensors headers) and, unless the tokenizer comes from
    elsewhere (`tokenizer_given`), tokenizer files. Returns the config."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise RepoError(f"{folder} has no {CONFIG_FILE}: it is not a transformers model folder")
    if not tokenizer_given and not (folder / TOKENIZER_CONFIG_FILE).is_file():
        raise RepoError(f"{folder} has no tokenizer ({TOKENIZER_CONFIG_FILE}), and a plugin repo needs one: pass the "
                        "model's tokenizer with --tokenizer (tokenizer=), a Pegasus tokenizer folder or a "
                        "sentencepiece .model file")
    return check_model_folder(folder, formats=(SAFETENSORS_FILES, BIN_FILES), with_tokenizer=not tokenizer_given)
