"""What transformers' own model and generation tests expect of a BigBirdPegasus, checked on ours: resizing, the
beam-search cache, method signatures, the `cache` argument, static caches and compiled decoding, logits_to_keep,
4D decoder masks, quantized heads, complete saves and loading the causal LM from a seq2seq checkpoint."""

import inspect
import json
import warnings

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, CompileConfig, PreTrainedModel, pipeline
from transformers.modeling_outputs import BaseModelOutput

from bigbird_pegasus_hub.plugin import modeling_bigbird_pegasus as ours
from bigbird_pegasus_hub.plugin.pipeline_bigbird_pegasus import CUSTOM_PIPELINES
from tiny import max_abs_diff, random_inputs, tiny_config

V5 = ours.TRANSFORMERS_V5
only_v5 = pytest.mark.skipif(not V5, reason="transformers 5 behaviour")


def generating_model(**overrides):
    """A tiny block-sparse model whose greedy and beam outputs vary (wide weights), with a padded input batch."""
    torch.manual_seed(0)
    return ours.BigBirdPegasusForConditionalGeneration(tiny_config(init_std=1.0, **overrides)).eval()


@pytest.fixture(scope="module")
def model():
    return generating_model()


@pytest.fixture(scope="module")
def inputs():
    return random_inputs(length=300)  # block-sparse (> 144 tokens), second row padded


def cache_of(output):
    return getattr(output, ours.CACHE_FIELD)


def generate(model, inputs, **kwargs):
    input_ids, attention_mask = inputs
    settings = dict(attention_mask=attention_mask, max_new_tokens=6, eos_token_id=None, do_sample=False)
    with torch.no_grad():
        return model.generate(input_ids, **{**settings, **kwargs})


# ----------------------------------------------------------------------------------------------------------------
# resize_token_embeddings resizes final_logits_bias too
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [True, False])
def test_resizing_embeddings_resizes_the_logits_bias_and_survives_saving(tmp_path, tied, inputs):
    model = generating_model(tie_word_embeddings=tied)
    with torch.no_grad():
        model.final_logits_bias.normal_()
    original_bias = model.final_logits_bias.clone()
    input_ids, attention_mask = inputs
    for vocab in (109, 90):  # grow, then shrink below the original 99
        model.resize_token_embeddings(vocab)
        assert model.final_logits_bias.shape == (1, vocab) and model.lm_head.weight.shape == (vocab, 32)
        kept = min(vocab, 99)
        assert torch.equal(model.final_logits_bias[:, :kept], original_bias[:, :kept])
        assert not model.final_logits_bias[:, 99:].any()  # new tokens start without a bias
        with torch.no_grad():
            logits = model(input_ids.clamp(max=vocab - 1), attention_mask=attention_mask,
                           decoder_input_ids=input_ids[:, :4].clamp(max=vocab - 1)).logits
        assert logits.shape == (2, 4, vocab)
    assert (model.lm_head.weight is model.model.shared.weight) == tied
    model.save_pretrained(tmp_path)
    again = ours.BigBirdPegasusForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert again.config.vocab_size == 90
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


# ----------------------------------------------------------------------------------------------------------------
# Beam search: a standard cache contract, with cross-attention keys and values stored once per input
# ----------------------------------------------------------------------------------------------------------------


def test_beam_search_returns_a_cache_with_one_row_per_beam_stored_once_per_input(model, inputs):
    out = generate(model, inputs, num_beams=3, return_dict_in_generate=True)
    cache = cache_of(out)
    assert isinstance(cache, transformers.EncoderDecoderCache)
    for layer in cache.self_attention_cache.layers + cache.cross_attention_cache.layers:
        assert layer.keys.shape[0] == layer.values.shape[0] == 2 * 3
    for layer in cache.cross_attention_cache.layers:
        assert isinstance(layer, ours.SharedCrossAttentionLayer) and layer.grouped
        assert layer.input_keys.shape[0] == 2  # stored once per input: never copied per beam
        assert torch.equal(layer.keys, layer.input_keys.repeat_interleave(3, dim=0))
    # Reordering follows beam_idx in every layer, also across inputs.
    beam_idx = torch.tensor([5, 0, 3, 3, 1, 2])
    before = [(layer.keys.clone(), layer.values.clone())
              for layer in cache.self_attention_cache.layers + cache.cross_attention_cache.layers]
    cache.reorder_cache(beam_idx)
    after = cache.self_attention_cache.layers + cache.cross_attention_cache.layers
    for (keys, values), layer in zip(before, after):
        assert torch.equal(layer.keys, keys[beam_idx]) and torch.equal(layer.values, values[beam_idx])


def decode_with_cache_then_without(model, inputs, rearrange):
    """Runs 3 decoder tokens for 3 beams per input with a cache, rearranges the cache's rows with `rearrange`,
    runs one more token; returns its logits and those of the same rows computed without any cache."""
    input_ids, attention_mask = inputs
    beams = 3
    with torch.no_grad():
        encoder_states = model.get_encoder()(input_ids, attention_mask).last_hidden_state
        prefix = torch.randint(3, 99, (2 * beams, 3), generator=torch.Generator().manual_seed(0))
        step = model(encoder_outputs=(encoder_states,), attention_mask=attention_mask, decoder_input_ids=prefix,
                     use_cache=True)
        cache = cache_of(step)
        rows = rearrange(cache)
        new_tokens = torch.randint(3, 99, (rows.shape[0], 1), generator=torch.Generator().manual_seed(1))
        cached = model(encoder_outputs=(encoder_states,), attention_mask=attention_mask, decoder_input_ids=new_tokens,
                       cache=cache, use_cache=True).logits
        # The reference: every row with its own copy of its input's encoder output, no cache.
        row_inputs = torch.arange(2 * beams)[rows] // beams
        full = model(encoder_outputs=(encoder_states[row_inputs],), attention_mask=attention_mask[row_inputs],
                     decoder_input_ids=torch.cat([prefix[rows], new_tokens], dim=1), use_cache=False).logits
    return cached[:, -1], full[:, -1], cache


@pytest.mark.parametrize("rearrange_name", ["within_inputs", "across_inputs", "select", "repeat_interleave"])
def test_rearranged_cache_rows_decode_like_an_uncached_model(model, inputs, rearrange_name):
    def rearrange(cache):
        if rearrange_name == "within_inputs":  # what beam search does: rows stay grouped by input
            rows = torch.tensor([2, 2, 0, 4, 3, 3])
            cache.reorder_cache(rows)
        elif rearrange_name == "across_inputs":
            rows = torch.tensor([5, 0, 4, 1, 3, 2])
            cache.reorder_cache(rows)
        elif rearrange_name == "select":  # contrastive search keeps some rows
            rows = torch.tensor([2, 1])  # both of the first input
            cache.batch_select_indices(rows)
        else:
            rows = torch.arange(6).repeat_interleave(2)
            cache.batch_repeat_interleave(2)
        return rows

    cached, full, cache = decode_with_cache_then_without(model, inputs, rearrange)
    assert max_abs_diff(cached, full) < 1e-4
    for layer in cache.cross_attention_cache.layers:
        assert layer.input_keys.shape[0] == 2
        assert layer.grouped == (rearrange_name in ("within_inputs", "repeat_interleave"))


def test_beam_search_equals_beams_over_per_row_encoder_copies(model, inputs, monkeypatch):
    """The shared cross-attention cache changes nothing: same beams as with one encoder copy per beam."""
    input_ids, attention_mask = inputs
    with torch.no_grad():
        encoder_states = model.get_encoder()(input_ids, attention_mask).last_hidden_state
    shared = generate(model, inputs, num_beams=3, output_scores=True, return_dict_in_generate=True)
    # transformers' own expansion (a staticmethod in 4.x): every beam gets its own copy of the encoder output.
    expand = inspect.getattr_static(transformers.GenerationMixin, "_expand_inputs_for_generation")
    monkeypatch.setattr(ours.BigBirdPegasusForConditionalGeneration, "_expand_inputs_for_generation", expand)
    copied = generate(model, inputs, num_beams=3, output_scores=True, return_dict_in_generate=True,
                      encoder_outputs=BaseModelOutput(last_hidden_state=encoder_states))
    assert torch.equal(shared.sequences, copied.sequences)
    for a, b in zip(shared.scores, copied.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    copied_layer = cache_of(copied).cross_attention_cache.layers[0]
    assert type(copied_layer) is not ours.SharedCrossAttentionLayer and copied_layer.keys.shape[0] == 2 * 3


# ----------------------------------------------------------------------------------------------------------------
# Signatures and arguments of transformers' base classes
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["get_encoder", "get_decoder", "resize_token_embeddings"])
def test_overridden_methods_keep_the_base_signature(name):
    base = getattr(PreTrainedModel, name, None)
    if base is None:  # transformers 4 has no base get_encoder: ours takes the same arguments as 5's
        assert name == "get_encoder" and not V5
        base = lambda self, modality=None: None  # noqa: E731
    for head in (ours.BigBirdPegasusForConditionalGeneration, ours.BigBirdPegasusModel, ours.BigBirdPegasusForCausalLM):
        assert list(inspect.signature(getattr(head, name)).parameters) == list(inspect.signature(base).parameters)


def test_get_encoder_by_modality(model):
    assert model.get_encoder() is model.get_encoder(modality=None) is model.model.encoder
    assert model.get_encoder(modality="image") is model  # transformers' answer for "no such encoder"
    assert model.get_decoder() is model.model.decoder
    with pytest.raises(ValueError, match="modality"):
        model.get_encoder(modality="smell")
    if V5:  # transformers' own exporters look for modal encoders like this
        from transformers.exporters.utils import is_multimodal

        assert is_multimodal(model) is False


def test_past_key_values_argument_follows_the_transformers_version(model, inputs):
    input_ids, attention_mask = inputs
    with torch.no_grad():
        first = model(input_ids, attention_mask=attention_mask, decoder_input_ids=input_ids[:, :2], use_cache=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step = model(encoder_outputs=(first.encoder_last_hidden_state,), attention_mask=attention_mask,
                         decoder_input_ids=input_ids[:, 2:3], past_key_values=cache_of(first), use_cache=True)
    deprecations = [w for w in caught if "past_key_values" in str(w.message)]
    assert len(deprecations) == (1 if V5 else 0)
    assert cache_of(step).get_seq_length() == 3


# ----------------------------------------------------------------------------------------------------------------
# Static cache, compiled decoding, logits_to_keep, 4D masks
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_beams", [1, 3])
def test_static_cache_gives_the_ids_of_the_dynamic_cache(model, inputs, num_beams):
    dynamic = generate(model, inputs, num_beams=num_beams)
    assert len(set(dynamic[0].tolist())) > 2  # the tiny model says something
    assert torch.equal(generate(model, inputs, num_beams=num_beams, cache_implementation="static"), dynamic)


def counting_backend(graphs: list):
    """A torch.compile backend that runs each graph as traced and appends it to `graphs` (recompiles included).
    A function, not an object: transformers deep-copies its CompileConfig, which would copy an object's count."""

    def backend(graph_module, example_inputs, **options):
        graphs.append(graph_module)
        return graph_module.forward

    return backend


@only_v5
def test_compiled_static_decoding_gives_the_same_ids_with_one_graph(model, inputs):
    graphs = []
    compile_config = CompileConfig(backend=counting_backend(graphs), fullgraph=True)
    compile_config._compile_all_devices = True  # transformers compiles on accelerators only, by default
    dynamic = generate(model, inputs, max_new_tokens=8)
    compiled = generate(model, inputs, max_new_tokens=8, cache_implementation="static", compile_config=compile_config)
    assert torch.equal(compiled, dynamic)
    assert len(graphs) == 1  # one graph for all 7 compiled steps: no recompiles


@only_v5
def test_decoding_step_has_no_graph_breaks(model, inputs):
    input_ids, attention_mask = inputs
    config = model.config
    cache = transformers.EncoderDecoderCache(transformers.StaticCache(config, max_cache_len=16),
                                             transformers.StaticCache(config, max_cache_len=input_ids.shape[1]))
    with torch.no_grad():
        encoder_states = model.get_encoder()(input_ids, attention_mask).last_hidden_state
        step = dict(encoder_outputs=(encoder_states,), attention_mask=attention_mask, cache=cache, use_cache=True,
                    decoder_input_ids=torch.full((2, 1), config.decoder_start_token_id))
        model(**step)
        explanation = torch._dynamo.explain(model.forward)(**step)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons


@pytest.mark.parametrize("head", ["ForConditionalGeneration", "ForCausalLM"])
def test_logits_to_keep(inputs, head):
    model = generating_model() if head == "ForConditionalGeneration" else \
        ours.BigBirdPegasusForCausalLM(tiny_config(init_std=1.0)).eval()
    input_ids, attention_mask = inputs
    decoder = {"decoder_input_ids": input_ids[:, :5]} if head == "ForConditionalGeneration" else {}
    with torch.no_grad():
        run = lambda **kwargs: model(input_ids if decoder else input_ids[:, :5], **decoder, **kwargs).logits  # noqa
        everything = run()
        assert torch.equal(run(logits_to_keep=0), everything)
        torch.testing.assert_close(run(logits_to_keep=1), everything[:, -1:])
        torch.testing.assert_close(run(logits_to_keep=torch.tensor([0, 3])), everything[:, [0, 3]])
    assert model._supports_logits_to_keep()  # generate asks for the last position only


def packed_with_shared_prefix():
    """transformers' 4D-mask contract: three sequences [p, a], [p, b], [p, c] sharing a 3-token prefix p, packed as
    one row [p, a, b, c] with a mask that lets a, b and c see p and themselves only, and their own positions."""
    prefix, ends = [11, 12, 13], [21, 22, 23]
    separate = torch.tensor([prefix + [end] for end in ends])
    packed = torch.tensor([prefix + ends])
    allowed = torch.tril(torch.ones(6, 6, dtype=torch.bool))
    allowed[4:, 3:6] = torch.eye(3, dtype=torch.bool)[1:]  # b and c do not see a (nor c b)
    positions = torch.tensor([[0, 1, 2, 3, 3, 3]])
    return separate, packed, allowed[None, None], positions


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_custom_4d_decoder_mask_packs_sequences(mask_dtype):
    model = ours.BigBirdPegasusForCausalLM(tiny_config(init_std=1.0)).eval()
    separate, packed, allowed, positions = packed_with_shared_prefix()
    mask = allowed if mask_dtype == torch.bool else ours.additive_mask(allowed, torch.float32)
    with torch.no_grad():
        expected = model(separate).logits[:, -1]
        actual = model(packed, attention_mask=mask, position_ids=positions).logits[0, 3:]
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_custom_4d_mask_in_the_encoder_decoder(model, inputs):
    separate, packed, allowed, positions = packed_with_shared_prefix()
    input_ids, attention_mask = inputs
    encoder = dict(input_ids=input_ids[:1].expand(3, -1), attention_mask=attention_mask[:1].expand(3, -1))
    with torch.no_grad():
        expected = model(**encoder, decoder_input_ids=separate).logits[:, -1]
        actual = model(input_ids[:1], attention_mask=attention_mask[:1], decoder_input_ids=packed,
                       decoder_attention_mask=allowed, decoder_position_ids=positions).logits[0, 3:]
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_wrong_decoder_masks_say_what_is_expected(model, inputs):
    input_ids, attention_mask = inputs
    for mask, message in ((torch.ones(2, 1, 4, 5, dtype=torch.bool), r"shape \[batch, 1, 4"),
                          (torch.ones(2, 4, 4), "2D .* or 4D")):
        with pytest.raises(ValueError, match=message):
            model(input_ids, attention_mask=attention_mask, decoder_input_ids=input_ids[:, :4],
                  decoder_attention_mask=mask)


# ----------------------------------------------------------------------------------------------------------------
# Quantized heads, saving, loading the causal LM from a seq2seq checkpoint
# ----------------------------------------------------------------------------------------------------------------


# torch deprecates its eager quantization in favour of torchao; it is still what users run, and what the issue names.
@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor, torch.quantize_per_channel:UserWarning")
@pytest.mark.parametrize("num_beams", [1, 3])
def test_int8_dynamic_quantization_generates(model, inputs, num_beams):
    quantized = torch.ao.quantization.quantize_dynamic(
        generating_model(), {torch.nn.Linear}, dtype=torch.qint8)
    ids = generate(quantized, inputs, num_beams=num_beams)
    assert ids.shape == (2, 7)
    assert not ours.takes_decoding_shortcut(quantized.lm_head, torch.zeros(1, 1, 32))


def test_decoding_shortcut_is_never_traced(model):
    """An exported decoder step must not bake the example's row count into its vocabulary projection."""
    hidden = torch.randn(1, 2, 32)

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm_head = model.lm_head

        def forward(self, states):
            return ours.vocabulary_logits(self.lm_head, states)

    rows = torch.export.Dim("rows", min=1, max=64)
    exported = torch.export.export(Head(), (hidden,), dynamic_shapes=({1: rows},)).module()
    for length in (1, 5, 12):
        states = torch.randn(1, length, 32)
        torch.testing.assert_close(exported(states), model.lm_head(states))
    assert ours.takes_decoding_shortcut(model.lm_head, hidden)  # but eagerly, it is taken


@pytest.mark.parametrize("head", ["Model", "ForConditionalGeneration", "ForCausalLM", "ForSequenceClassification",
                                  "ForQuestionAnswering"])
def test_every_head_saves_a_complete_plugin_config(tmp_path, head):
    model = getattr(ours, f"BigBirdPegasus{head}")(tiny_config())
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == ours.auto_map()
    assert config["custom_pipelines"] == CUSTOM_PIPELINES
    assert (tmp_path / "pipeline_bigbird_pegasus.py").is_file()


def test_a_saved_bare_model_serves_the_summarization_pipeline(tmp_path, tokenizer_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    ours.BigBirdPegasusForConditionalGeneration(tiny_config(vocab_size=len(tokenizer))).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    summarizer = pipeline("summarization", model=str(tmp_path), trust_remote_code=True, device="cpu")
    [summary] = summarizer("The river carried mud to the delta.", max_new_tokens=4)
    assert isinstance(summary["summary_text"], str)


@pytest.mark.parametrize("saved_head", ["ForConditionalGeneration", "Model"])
def test_causal_lm_loads_the_decoder_of_a_seq2seq_checkpoint(tmp_path, saved_head):
    torch.manual_seed(0)
    seq2seq = getattr(ours, f"BigBirdPegasus{saved_head}")(tiny_config(init_std=1.0))
    seq2seq.save_pretrained(tmp_path)
    causal, report = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True,
                                                          output_loading_info=True)
    assert not report["missing_keys"] and not report["unexpected_keys"] and not report["mismatched_keys"]
    base = getattr(seq2seq, "model", seq2seq)
    assert torch.equal(causal.model.decoder.embed_tokens.weight, base.shared.weight)
    assert causal.lm_head.weight.data_ptr() == causal.model.decoder.embed_tokens.weight.data_ptr()
    expected = base.decoder.state_dict()
    for name, tensor in causal.model.decoder.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
