import pytest
import transformers

from bigbird_pegasus_hub.plugin.configuration_bigbird_pegasus import BigBirdPegasusConfig

DOCUMENTED_DEFAULTS = dict(
    vocab_size=96103, d_model=1024, encoder_layers=16, decoder_layers=16, encoder_attention_heads=16,
    decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096, activation_function="gelu_new",
    dropout=0.1, attention_dropout=0.0, activation_dropout=0.0, classifier_dropout=0.0,
    max_position_embeddings=4096, init_std=0.02, encoder_layerdrop=0.0, decoder_layerdrop=0.0, use_cache=True,
    attention_type="block_sparse", use_bias=False, block_size=64, num_random_blocks=3, scale_embeddings=True,
    pad_token_id=0, eos_token_id=1, bos_token_id=2, decoder_start_token_id=2, layer_norm_eps=1e-5,
)


def test_documented_defaults():
    config = BigBirdPegasusConfig()
    for name, value in DOCUMENTED_DEFAULTS.items():
        assert getattr(config, name) == value, name
    assert config.model_type == transformers.BigBirdPegasusConfig.model_type == "bigbird_pegasus"


def test_scale_embeddings_alias_and_round_trip(tmp_path):
    config = BigBirdPegasusConfig(scale_embeddings=False, layer_norm_eps=1e-12, d_model=64)
    assert config.scale_embedding is False and config.scale_embeddings is False
    config.save_pretrained(tmp_path)
    again = BigBirdPegasusConfig.from_pretrained(tmp_path)
    assert again.scale_embeddings is False and again.layer_norm_eps == 1e-12 and again.d_model == 64
    # The built-in class reads the same file (same model_type and field names).
    builtin = transformers.BigBirdPegasusConfig.from_pretrained(tmp_path)
    assert builtin.scale_embedding is False and builtin.d_model == 64


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(attention_type="sparse"), "attention_type"),
        (dict(d_model=30, encoder_attention_heads=4), "encoder_attention_heads"),
        (dict(d_model=32, encoder_attention_heads=4, decoder_attention_heads=5), "decoder_attention_heads"),
        (dict(block_size=0), "block_size"),
        (dict(num_random_blocks=-1), "num_random_blocks"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(encoder_layers=-2), "encoder_layers"),
        (dict(dropout=1.5), "dropout"),
        (dict(layer_norm_eps=0.0), "layer_norm_eps"),
        (dict(activation_function="swishy"), "activation_function"),
        (dict(num_random_blocks=True), "num_random_blocks"),
        (dict(block_size=True), "block_size"),
        (dict(use_bias="no"), "use_bias"),
        (dict(scale_embedding="yes"), "scale_embedding"),
        (dict(dropout="0.1"), "dropout"),
        (dict(attention_dropout=True), "attention_dropout"),
        (dict(layer_norm_eps="tiny"), "layer_norm_eps"),
        (dict(activation_function=["relu"]), "activation_function"),
    ],
)
def test_invalid_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        BigBirdPegasusConfig(**overrides)


def test_num_random_blocks_zero_is_valid():
    assert BigBirdPegasusConfig(num_random_blocks=0).num_random_blocks == 0
