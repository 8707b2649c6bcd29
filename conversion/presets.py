"""Hyperparameters of Google's released BigBird-Pegasus checkpoints, in the original code's names.

The values are those of the run that produced the checkpoints, spelled like the ``params`` dict of
google-research/bigbird (``bigbird/core/flags.py`` + ``bigbird/summarization/run_summarization.py``), so a preset
and a user's own params JSON go through the same conversion. Sources, cited per value below:

* [sh]    google-research/bigbird ``bigbird/summarization/pegasus_large.sh`` (the BigBird-Pegasus fine-tuning flags)
* [flags] google-research/bigbird ``bigbird/core/flags.py`` defaults, for the flags pegasus_large.sh leaves unset
* [run]   google-research/bigbird ``bigbird/summarization/run_summarization.py`` flag defaults
* [hf]    the ``config.json`` of huggingface.co/google/bigbird-pegasus-large-{arxiv,pubmed,bigpatent}
"""

from __future__ import annotations

from types import MappingProxyType

_BIGBIRD_PEGASUS_LARGE = MappingProxyType(
    {
        "scope": "pegasus",  # [sh] --scope=pegasus
        "norm_type": "prenorm",  # [sh] --norm_type=prenorm
        "couple_encoder_decoder": False,  # [sh] --couple_encoder_decoder=False
        "attention_type": "block_sparse",  # [sh] --attention_type=block_sparse; [hf] attention_type
        "hidden_size": 1024,  # [sh] --hidden_size=1024; [hf] d_model
        "num_hidden_layers": 16,  # [sh] --num_hidden_layers=16 (encoder and decoder); [hf] encoder/decoder_layers
        "num_attention_heads": 16,  # [sh] --num_attention_heads=16; [hf] *_attention_heads
        "intermediate_size": 4096,  # [sh] --intermediate_size=4096; [hf] *_ffn_dim
        "block_size": 64,  # [sh] --block_size=64; [hf] block_size
        "num_rand_blocks": 3,  # [flags] default 3 (not set by [sh]); [hf] num_random_blocks 3
        "max_position_embeddings": 4096,  # [flags] default 4096 (not set by [sh]); [hf] max_position_embeddings
        "use_bias": False,  # [sh] --use_bias=False; [hf] use_bias false
        "rescale_embedding": True,  # [sh] --rescale_embedding=True; [hf] scale_embedding true
        "vocab_size": 96103,  # [sh] --vocab_model_file=pegasus (flags.py counts its pieces); [hf] vocab_size
        # [sh] passes --hidden_act=relu, but every [hf] config, under which the released weights were converted and
        # evaluated (the ROUGE scores of their model cards), uses the tanh GELU: "gelu_fast" in the first
        # revisions, "gelu_new" now, i.e. the original code's "gelu" (bigbird/core/utils.py gelu is the tanh form).
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,  # [flags] default; [hf] dropout 0.1
        "attention_probs_dropout_prob": 0.1,  # [flags] default ([hf] says attention_dropout 0.0; training only)
        "initializer_range": 0.02,  # [flags] default; [hf] init_std 0.02
        "max_decoder_length": 256,  # [sh] --max_decoder_length=256
        "beam_size": 5,  # [run] default; [hf] num_beams 5
        "alpha": 0.8,  # [run] default (beam-search length normalisation); [hf] length_penalty 0.8
    }
)

# The three fine-tuned models share the architecture and the decoding setup; only the data (arXiv, PubMed,
# BigPatent) differs.
PRESETS: MappingProxyType[str, MappingProxyType] = MappingProxyType(
    {
        "bigbird-pegasus-large-arxiv": _BIGBIRD_PEGASUS_LARGE,
        "bigbird-pegasus-large-pubmed": _BIGBIRD_PEGASUS_LARGE,
        "bigbird-pegasus-large-bigpatent": _BIGBIRD_PEGASUS_LARGE,
    }
)

# The short names that `bigbird-pegasus convert-tf --preset` takes.
PRESET_NAMES: MappingProxyType[str, str] = MappingProxyType(
    {name.removeprefix("bigbird-pegasus-large-"): name for name in PRESETS}
)
