"""Tiny configurations and models shared by the tests (CPU, milliseconds)."""

import copy
import json

import torch
import transformers

from bigbird_pegasus_hub.plugin import modeling_bigbird_pegasus as ours
from bigbird_pegasus_hub.plugin.configuration_bigbird_pegasus import BigBirdPegasusConfig

TINY = dict(
    vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
    decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=4096,
    block_size=16, num_random_blocks=2, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
)

HEADS = {
    "Model": ("BigBirdPegasusModel", "BigBirdPegasusModel"),
    "ForConditionalGeneration": ("BigBirdPegasusForConditionalGeneration", "BigBirdPegasusForConditionalGeneration"),
    "ForCausalLM": ("BigBirdPegasusForCausalLM", "BigBirdPegasusForCausalLM"),
    "ForSequenceClassification": ("BigBirdPegasusForSequenceClassification", "BigBirdPegasusForSequenceClassification"),
    "ForQuestionAnswering": ("BigBirdPegasusForQuestionAnswering", "BigBirdPegasusForQuestionAnswering"),
}


def tiny_config(**overrides) -> BigBirdPegasusConfig:
    return BigBirdPegasusConfig(**{**TINY, **overrides})


def builtin_config(config: BigBirdPegasusConfig):
    """transformers' built-in config with the same values (it has no layer_norm_eps: keep ours at 1e-5)."""
    values = {k: v for k, v in config.to_dict().items()
              if k not in ("layer_norm_eps", "auto_map", "custom_pipelines", "architectures")}
    return transformers.BigBirdPegasusConfig(**values)


def twin_models(head: str = "ForConditionalGeneration", seed: int = 0, **overrides):
    """(ours, built-in) with identical weights; ours in eval, the built-in in train mode for block_sparse
    (its seeded random blocks; all dropouts are 0), eval otherwise."""
    torch.manual_seed(seed)
    config = tiny_config(**overrides)
    ours_name, builtin_name = HEADS[head]
    builtin = getattr(transformers, builtin_name)(builtin_config(config))
    # Non-zero LayerNorm and bias values so a mapping mistake cannot hide behind init defaults.
    with torch.no_grad():
        for name, param in builtin.named_parameters():
            if "layer_norm" in name or "layernorm" in name or name.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.1)
        # transformers 5's built-in causal LM forgets to tie lm_head to the embeddings (4.x tied it, as we do).
        if hasattr(builtin, "lm_head"):
            builtin.lm_head.weight.copy_(builtin.get_input_embeddings().weight)
        if hasattr(builtin, "final_logits_bias"):
            builtin.final_logits_bias.normal_(0, 0.1)
    model = getattr(ours, ours_name)(copy.deepcopy(config))
    model.load_state_dict(builtin.state_dict(), strict=True)
    model.eval()
    builtin.train(config.attention_type == "block_sparse")
    return model, builtin


def random_inputs(batch=2, length=300, vocab=99, pad_tail=37, seed=1):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    if batch > 1 and pad_tail:
        input_ids[-1, -pad_tail:] = 0
        attention_mask[-1, -pad_tail:] = 0
    return input_ids, attention_mask


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def tiny_tokenizer(folder):
    """The Pegasus tokenizer trained on the package's corpus (deterministic, ~1 s)."""
    from bigbird_pegasus_hub.tokenizer import bundled_corpus_path, train_pegasus_tokenizer

    return train_pegasus_tokenizer(bundled_corpus_path(), folder)


def tiny_repo(folder, tokenizer_dir, seed=0, **overrides):
    """A complete plugin repo of a tiny block-sparse model, written by the project's builder."""
    from bigbird_pegasus_hub.repo import build_repo
    from transformers import AutoTokenizer

    torch.manual_seed(seed)
    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    model = ours.BigBirdPegasusForConditionalGeneration(tiny_config(vocab_size=vocab, **overrides))
    return build_repo(folder, model=model, tokenizer=tokenizer_dir, description="A tiny random test model.")


def word_level_tokenizer(folder, num_ids):
    """A tokenizer of exactly `num_ids` ids (transformers' own PreTrainedTokenizerFast over the words w3, w4, ...),
    for checkpoints whose vocabulary is too small for a Pegasus tokenizer (it reserves 103 ids)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokens = ["<pad>", "</s>", "<unk>", *(f"w{i}" for i in range(3, num_ids))]
    tokenizer = Tokenizer(models.WordLevel({token: i for i, token in enumerate(tokens)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>",
              "unk_token": "<unk>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def enable_checkpointing(model) -> None:
    """transformers 5 renamed gradient checkpointing to activation checkpointing; the old name warns."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})
