"""BigBirdPegasus configuration (remote code: imports only transformers' public API)."""

from transformers import PretrainedConfig
from transformers.activations import ACT2FN

ATTENTION_TYPES = ("original_full", "block_sparse")


class BigBirdPegasusConfig(PretrainedConfig):
    r"""
    Configuration of a BigBirdPegasus encoder-decoder: a Pegasus model whose encoder uses BigBird's block-sparse
    attention (2 global blocks, a 3-block sliding window and `num_random_blocks` random blocks per query block).

    The defaults describe `google/bigbird-pegasus-large-arxiv`. `model_type` equals transformers' built-in
    `bigbird_pegasus`, so a repo written with this configuration also loads without remote code.

    Args:
        vocab_size (`int`, defaults to 96103): size of the token vocabulary.
        d_model (`int`, defaults to 1024): width of every layer.
        encoder_layers / decoder_layers (`int`, defaults to 16): number of layers.
        encoder_attention_heads / decoder_attention_heads (`int`, defaults to 16): heads per attention layer.
        encoder_ffn_dim / decoder_ffn_dim (`int`, defaults to 4096): inner width of the feed-forward blocks.
        activation_function (`str`, defaults to `"gelu_new"`): feed-forward activation (a key of `ACT2FN`).
        dropout (`float`, defaults to 0.1): dropout on embeddings and residual branches.
        attention_dropout (`float`, defaults to 0.0): dropout on full-attention probabilities.
        activation_dropout (`float`, defaults to 0.0): dropout after the decoder's feed-forward activation.
        classifier_dropout (`float`, defaults to 0.0): dropout in the sequence-classification head.
        max_position_embeddings (`int`, defaults to 4096): longest input (learned positions).
        init_std (`float`, defaults to 0.02): standard deviation of the weight initialisation.
        encoder_layerdrop / decoder_layerdrop (`float`, defaults to 0.0): LayerDrop probability in training.
        use_cache (`bool`, defaults to `True`): return the key/value cache for fast generation.
        attention_type (`str`, defaults to `"block_sparse"`): encoder self-attention, `"block_sparse"` or
            `"original_full"`. Block-sparse attention needs more than `(5 + 2 * num_random_blocks) * block_size`
            tokens (704 with the defaults; the global, window and random blocks of one query block): a shorter
            (padded) input uses full attention for that call only, as transformers' built-in model does. Longer
            inputs are padded internally to a multiple of `block_size` (or of `pad_to_multiple_of`).
        use_bias (`bool`, defaults to `False`): biases on the attention projections.
        block_size (`int`, defaults to 64): tokens per attention block.
        num_random_blocks (`int`, defaults to 3): random key blocks per query block.
        pad_to_multiple_of (`int`, *optional*, defaults to `None`): pad every encoder input (internally; outputs keep
            the input's length) to a multiple of this many tokens, a multiple of `block_size`. Block-sparse
            attention's random blocks depend on the padded length, so with `None` (pad to a multiple of
            `block_size` only) a document's output depends on how long the longest document of its batch is. With
            1024, as the original code pads to its `max_encoder_length`: every length up to 4096 is one of the
            original code's grid lengths (1024, 2048, 3072, 4096), whose random blocks are prefixes of one
            4096-token table, so a document's output no longer depends on its batch (up to float rounding), and
            `torch.export` / `torch.onnx.export` with a dynamic sequence length slice that one constant table.
            Such inputs always use block-sparse attention (1024 tokens exceed the full-attention threshold above).
            Above 4096 tokens (`max_position_embeddings` > 4096) the original code draws a table per length: the
            model still runs (eagerly and compiled), but the output depends on the padded length again and a
            dynamic-length export needs a torch operator that ONNX cannot express. Costs the attention over the
            padding (about 1.5x the encoder time for a 1500-token input padded to 2048; see benchmarks/).
        scale_embeddings (`bool`, defaults to `True`): multiply token embeddings by `sqrt(d_model)`.
        layer_norm_eps (`float`, defaults to 1e-5): LayerNorm epsilon (Google's TensorFlow code used 1e-12).
    """

    model_type = "bigbird_pegasus"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    attribute_map = {
        "num_attention_heads": "encoder_attention_heads",
        "hidden_size": "d_model",
        "attention_probs_dropout_prob": "attention_dropout",
    }

    def __init__(
        self,
        vocab_size=96103,
        max_position_embeddings=4096,
        encoder_layers=16,
        encoder_ffn_dim=4096,
        encoder_attention_heads=16,
        decoder_layers=16,
        decoder_ffn_dim=4096,
        decoder_attention_heads=16,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        use_cache=True,
        is_encoder_decoder=True,
        activation_function="gelu_new",
        d_model=1024,
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        init_std=0.02,
        decoder_start_token_id=2,
        classifier_dropout=0.0,
        scale_embedding=True,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
        attention_type="block_sparse",
        use_bias=False,
        block_size=64,
        num_random_blocks=3,
        layer_norm_eps=1e-5,
        tie_word_embeddings=True,
        pad_to_multiple_of=None,
        **kwargs,
    ):
        # transformers' built-in config spells it `scale_embedding`; accept the documented plural too.
        scale_embedding = kwargs.pop("scale_embeddings", scale_embedding)
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.d_model = d_model
        self.encoder_ffn_dim = encoder_ffn_dim
        self.encoder_layers = encoder_layers
        self.encoder_attention_heads = encoder_attention_heads
        self.decoder_ffn_dim = decoder_ffn_dim
        self.decoder_layers = decoder_layers
        self.decoder_attention_heads = decoder_attention_heads
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.activation_function = activation_function
        self.init_std = init_std
        self.encoder_layerdrop = encoder_layerdrop
        self.decoder_layerdrop = decoder_layerdrop
        self.classifier_dropout = classifier_dropout
        self.use_cache = use_cache
        self.num_hidden_layers = encoder_layers
        self.scale_embedding = scale_embedding
        self.attention_type = attention_type
        self.block_size = block_size
        self.num_random_blocks = num_random_blocks
        self.use_bias = use_bias
        self.layer_norm_eps = layer_norm_eps
        self.pad_to_multiple_of = pad_to_multiple_of
        self._validate()
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            is_encoder_decoder=is_encoder_decoder,
            decoder_start_token_id=decoder_start_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def scale_embeddings(self) -> bool:
        return self.scale_embedding

    def _validate(self):
        if self.attention_type not in ATTENTION_TYPES:
            raise ValueError(
                f"attention_type must be one of {ATTENTION_TYPES}, got {self.attention_type!r}. Use 'block_sparse' "
                "for long inputs (linear memory) or 'original_full' for dense attention."
            )
        for name in ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                     "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings",
                     "block_size"):
            value = getattr(self, name)
            if not _is_integer(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not isinstance(self.num_random_blocks, int) or isinstance(self.num_random_blocks, bool) or \
                self.num_random_blocks < 0:
            raise ValueError(f"num_random_blocks must be an integer >= 0, got {self.num_random_blocks!r}.")
        for name in ("use_bias", "scale_embedding"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        for heads_name in ("encoder_attention_heads", "decoder_attention_heads"):
            heads = getattr(self, heads_name)
            if self.d_model % heads != 0:
                raise ValueError(
                    f"d_model ({self.d_model}) must be divisible by {heads_name} ({heads}): each head gets "
                    "d_model / heads channels. Choose a head count that divides d_model."
                )
        for name in ("dropout", "attention_dropout", "activation_dropout", "classifier_dropout",
                     "encoder_layerdrop", "decoder_layerdrop"):
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}.")
        if not isinstance(self.activation_function, str) or self.activation_function not in ACT2FN:
            raise ValueError(
                f"activation_function {self.activation_function!r} is unknown; use one of transformers' activations, "
                f"e.g. 'gelu_new' (the original BigBird gelu), 'relu' or 'gelu'."
            )
        multiple = self.pad_to_multiple_of
        if multiple is not None and (not _is_integer(multiple) or multiple < 1 or multiple % self.block_size):
            raise ValueError(
                f"pad_to_multiple_of must be None or a positive multiple of block_size ({self.block_size}), got "
                f"{multiple!r}. 1024 pads inputs as the original code does (see the docstring)."
            )
        if not _is_real(self.layer_norm_eps) or not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be a number > 0, got {self.layer_norm_eps!r}.")


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


BigBirdPegasusConfig.register_for_auto_class()
