"""Export a BigBirdPegasus model folder to ONNX, in the folder layout of Optimum's `ORTModelForSeq2SeqLM`.

    from bigbird_pegasus_hub.onnx_export import export_onnx

    export_onnx("my-repo", "my-repo-onnx")  # encoder_model.onnx, decoder_model.onnx, decoder_with_past_model.onnx

The output folder holds the three graphs (see `onnx_graphs`), each with its weights in `<file>_data`, plus
config.json, generation_config.json and the tokenizer; no Python code. It loads with
`optimum.onnxruntime.ORTModelForSeq2SeqLM` (transformers 4.x) and with this package's
`onnx_model.OnnxBigBirdPegasusForConditionalGeneration` (transformers 4.57 and 5.x).

The graphs are traced from this package's own modeling code with `torch.onnx.export(..., dynamo=True)`, so they keep
the block-sparse attention and its original random blocks. Nothing here imports torch until the cheap checks of the
request have passed: a bad request fails at once, and nothing is written.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

DTYPES = ("fp32", "fp16")
# torch.onnx's dynamo exporter writes opset 18 and later. From opset 23 it writes attention as ONNX's Attention
# operator, whose ONNX Runtime (1.32) CPU kernel rejects our broadcast [batch, 1, 1, keys] masks.
MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 18, 22, 20
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
INSTALL_HINT = 'pip install "bigbird-pegasus-hub[onnx]"'
MODEL_TYPE = "bigbird_pegasus"
# The file names Optimum's ORTModelForSeq2SeqLM looks for, and its names of the flat key/value cache tensors.
ENCODER_FILE, DECODER_FILE, DECODER_WITH_PAST_FILE = (
    "encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx")
PARTS = ("decoder", "encoder")  # the self-attention and the cross-attention cache
KEY_VALUE = ("key", "value")
# ONNX metadata of the encoder: the longest input it reads, and (fixed-length exports only) the length that every
# input is padded to inside the graph.
MAX_LENGTH_KEY = "bigbird_pegasus.encoder_max_length"
PADDED_LENGTH_KEY = "bigbird_pegasus.encoder_padded_length"
# The padding of a dynamic-length encoder: the original code's grid (see the config's `pad_to_multiple_of`).
GRID_MULTIPLE = 1024
# Entries of a plugin repo's config.json that name Python code; an ONNX folder has none.
CODE_CONFIG_KEYS = ("auto_map", "custom_pipelines")

__all__ = ["DEFAULT_OPSET", "DTYPES", "MAX_OPSET", "MIN_OPSET", "OnnxExportError", "check_onnx_packages",
           "export_onnx"]


def cache_names(prefix: str, num_layers: int, parts=PARTS) -> list[str]:
    """Names of the flat cache tensors ("past_key_values" in, "present" out), layer by layer: self-attention key and
    value, then cross-attention key and value."""
    return [f"{prefix}.{layer}.{part}.{kind}" for layer in range(num_layers) for part in parts for kind in KEY_VALUE]


class OnnxExportError(ValueError):
    """An export cannot be done as asked; the message says what is wrong and what to do."""


def export_onnx(model_dir: str | os.PathLike, out_dir: str | os.PathLike, *, dtype: str = "fp32",
                opset: int = DEFAULT_OPSET, padded_length: int | None = None, overwrite: bool = False) -> Path:
    """Exports the model folder `model_dir` (a plugin repo made by `build`, `convert-tf` or `upgrade`) to ONNX in
    `out_dir`, written into a temporary folder and renamed into place once complete.

    Args:
        dtype: "fp32" or "fp16" (weights and activations of the graphs; fp16 is for GPUs: ONNX Runtime's CPU
            provider lacks fp16 kernels for several of its operators).
        opset: ONNX opset, MIN_OPSET to MAX_OPSET.
        padded_length: export an encoder that pads every input to this many tokens inside the graph. By default
            (None) the encoder takes every length up to max_position_embeddings in one graph: block-sparse models
            then pad their inputs to a multiple of 1024 tokens, the original code's grid (`pad_to_multiple_of`,
            written to the exported config.json); models whose lengths cannot all lie on that grid (more than 4096
            positions, or at most 1024) pad every input to max_position_embeddings. Longer inputs are refused.
        overwrite: replace an existing `out_dir`.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = check_export_request(model_dir, out_dir, dtype=dtype, opset=opset, overwrite=overwrite)
    padded_length = check_padded_length(padded_length, config)
    from .onnx_graphs import export_graph, graph_specs

    if padded_length is None:
        config, padded_length = dynamic_length_config(config)
    model = load_model(model_dir, "float16" if dtype == "fp16" else "float32",
                       pad_to_multiple_of=config.get("pad_to_multiple_of"))
    metadata = {MAX_LENGTH_KEY: str(config.get("max_position_embeddings", 4096))}
    if padded_length is not None:
        metadata[PADDED_LENGTH_KEY] = str(padded_length)
    with output_folder(out_dir, overwrite) as staging:
        for spec in graph_specs(model, padded_length, model.dtype):
            export_graph(spec, staging, opset, metadata)
        write_config(config, staging)
        write_generation_config(model_dir, model.config, staging)
        from .repo import write_tokenizer

        write_tokenizer(model_dir, staging)
    return out_dir


def check_export_request(model_dir: Path, out_dir: Path, *, dtype: str, opset: int, overwrite: bool) -> dict:
    """The checks that need no torch: options, folders, packages. Returns the model's config.json."""
    if dtype not in DTYPES:
        raise OnnxExportError(f"Unsupported dtype {dtype!r}: choose one of {', '.join(DTYPES)}.")
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise OnnxExportError(f"Unsupported ONNX opset {opset}: choose {MIN_OPSET} to {MAX_OPSET} (torch.onnx's "
                              f"dynamo exporter starts at {MIN_OPSET}; default {DEFAULT_OPSET}).")
    check_out_dir(out_dir, overwrite)
    config = read_model_config(model_dir)
    check_onnx_packages()
    return config


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """`atomic.check_output_path`, and --overwrite replaces only an earlier export or an empty folder."""
    from .atomic import check_output_path

    check_output_path(out_dir, overwrite=overwrite)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / ENCODER_FILE).is_file():
        raise OnnxExportError(f"{out_dir} is not an ONNX export (it has no {ENCODER_FILE}): --overwrite only "
                              "replaces an earlier export or an empty folder; choose another folder.")


def read_model_config(model_dir: Path) -> dict:
    if not model_dir.is_dir():
        raise OnnxExportError(f"Model folder {model_dir} does not exist: pass a folder made by `bigbird-pegasus "
                              "build` (or convert-tf, upgrade).")
    from .repo_files import read_json_object

    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise OnnxExportError(f"{model_dir} has no config.json, so it is not a model folder: pass a folder made by "
                              "`bigbird-pegasus build` (or convert-tf, upgrade).")
    config = read_json_object(config_path)  # unreadable or not a JSON object: one line that names the file
    if config.get("model_type") != MODEL_TYPE:
        raise OnnxExportError(f"{config_path} describes a {config.get('model_type')!r} model, not BigBirdPegasus "
                              f"(model_type {MODEL_TYPE!r}): pass a BigBirdPegasus model folder.")
    if not (model_dir / "tokenizer_config.json").is_file():
        raise OnnxExportError(f"{model_dir} has no tokenizer (tokenizer_config.json), which the ONNX folder needs: "
                              "rebuild the model folder with `bigbird-pegasus build --tokenizer ...`.")
    return config


def check_onnx_packages() -> None:
    """Imports the exporter's packages (an import that fails counts as missing)."""
    missing = []
    for name in ONNX_PACKAGES:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise OnnxExportError(f"ONNX export needs the packages {', '.join(ONNX_PACKAGES)} ({', '.join(missing)} "
                              f"missing): {INSTALL_HINT}")


def check_padded_length(padded_length: int | None, config: dict) -> int | None:
    max_positions = config.get("max_position_embeddings", 4096)
    if padded_length is None:
        return None
    if not 1 <= padded_length <= max_positions:
        raise OnnxExportError(f"padded_length must be between 1 and the model's max_position_embeddings "
                              f"({max_positions}), got {padded_length}.")
    return padded_length


def dynamic_length_config(config: dict) -> tuple[dict, int | None]:
    """(config to export, padded length) for an encoder graph that takes every length. Block-sparse attention's
    random blocks depend on the padded length; on the original code's grid (inputs padded to a multiple of 1024
    tokens, up to 4096) every length's blocks are the first rows of one table, a constant of the graph. A model that
    does not fit the grid, or has a single grid step (at most 1024 positions: one padded length, which torch.export
    cannot keep symbolic), pads every input to max_position_embeddings instead (padded length returned)."""
    from .plugin.block_sparse_layout import lengths_on_original_grid

    if config.get("attention_type", "block_sparse") != "block_sparse":
        return config, None  # full attention: nothing depends on the length
    max_positions = config.get("max_position_embeddings", 4096)
    multiple = config.get("pad_to_multiple_of") or GRID_MULTIPLE
    if multiple % config.get("block_size", 64) or max_positions <= multiple or \
            not lengths_on_original_grid(multiple, max_positions):
        return config, max_positions
    return {**config, "pad_to_multiple_of": multiple}, None


def load_model(model_dir: Path, dtype: str, pad_to_multiple_of: int | None = None):
    """The folder's weights in this package's own class (never the folder's Python files), in eval mode; refused,
    as by `summarize`, when they do not fit the config (a graph of random or dropped weights would be wrong)."""
    from .summarize import ModelSource, SummarizeError, load_checked_model

    try:
        return load_checked_model(ModelSource(str(model_dir)), device=None, dtype=dtype,
                                  pad_to_multiple_of=pad_to_multiple_of)
    except SummarizeError as error:
        raise OnnxExportError(str(error)) from None


def output_folder(out_dir: Path, overwrite: bool):
    """A temporary folder beside `out_dir`, renamed to `out_dir` when the block completes, removed if it fails."""
    from .atomic import atomic_output_folder

    return atomic_output_folder(out_dir, overwrite=overwrite)


def write_config(config: dict, folder: Path) -> None:
    """The model's config.json without the entries that point at Python code (the ONNX folder ships none)."""
    config = {key: value for key, value in config.items() if key not in CODE_CONFIG_KEYS}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_generation_config(model_dir: Path, model_config, folder: Path) -> None:
    """The model folder's decoding defaults, or those its config implies when it has none."""
    from transformers import GenerationConfig

    if (model_dir / "generation_config.json").is_file():
        generation_config = GenerationConfig.from_pretrained(model_dir)
    else:
        generation_config = GenerationConfig.from_model_config(model_config)
    generation_config.save_pretrained(folder)


@contextmanager
def quiet_exporter(debug: bool = False):
    """Hides the warnings and log lines of torch.onnx (its notes on every export, none of them about the model)."""
    if debug:
        yield
        return
    disabled = logging.root.manager.disable
    logging.disable(logging.WARNING)  # torch's exporter loggers set their own levels: silence them all, for now
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)
