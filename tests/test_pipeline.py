"""The summarization pipeline, loaded as remote code from a model folder, on a tiny built-in BigBirdPegasus."""

import json
import logging
import random
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoTokenizer, pipeline

from bigbird_pegasus_hub.plugin.pipeline_bigbird_pegasus import CUSTOM_PIPELINES
from bigbird_pegasus_hub.tokenizer import bundled_corpus_path, train_pegasus_tokenizer

PIPELINE_FILE = Path(__file__).resolve().parents[1] / "plugin" / "pipeline_bigbird_pegasus.py"
MAX_POSITION_EMBEDDINGS = 256

DOCUMENTS = [
    "The river carried mud to the delta, and the birds came back every spring.",
    "Bees dance to tell the hive where flowers are. The queen lays all the eggs, and the workers gather nectar.",
    "Snow is mostly air.",
]
LONG_DOCUMENT = " ".join(["Lightning heats the air around it, and the air expands with a crack of thunder."] * 30)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A folder like our Hub repo: tiny model, our tokenizer, and the pipeline file registered as custom pipeline."""
    folder = tmp_path_factory.mktemp("tiny_summarizer")
    train_pegasus_tokenizer(bundled_corpus_path(), folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)

    torch.manual_seed(0)
    config = transformers.BigBirdPegasusConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        attention_type="original_full",
    )
    model = transformers.BigBirdPegasusForConditionalGeneration(config)
    with torch.no_grad():
        # Wide random weights, so that summaries vary with their input instead of repeating one token.
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.5)
    model.save_pretrained(folder)

    config_file = folder / "config.json"
    config_json = json.loads(config_file.read_text())
    config_json["custom_pipelines"] = CUSTOM_PIPELINES
    config_file.write_text(json.dumps(config_json, indent=2))
    shutil.copy(PIPELINE_FILE, folder)
    return folder


@pytest.fixture(scope="module")
def summarizer(model_dir):
    return pipeline("summarization", model=str(model_dir), trust_remote_code=True, device="cpu")


@pytest.fixture
def generate_calls(summarizer, monkeypatch):
    """Replaces `model.generate` by a recorder that returns a fixed summary: `<n>`-separated two sentences."""
    calls = []
    summary_ids = _summary_ids(summarizer.tokenizer, "First line.<n>Second line.")

    def fake_generate(input_ids, attention_mask=None, **kwargs):
        calls.append({"input_ids": input_ids, **kwargs})
        copies = input_ids.shape[0] * kwargs.get("num_return_sequences", 1)
        return summary_ids.repeat(copies, 1)

    monkeypatch.setattr(summarizer.model, "generate", fake_generate)
    return calls


def _summary_ids(tokenizer, text):
    """What `generate()` returns for `text`: the decoder start token, the text's ids, end-of-sequence."""
    return torch.tensor([[2] + tokenizer(text)["input_ids"]])


def test_loads_as_remote_code(summarizer):
    assert type(summarizer).__name__ == "BigBirdPegasusSummarizationPipeline"
    assert type(summarizer).__module__.startswith("transformers_modules.")


def test_single_document_gives_a_list_of_one_summary(summarizer):
    result = summarizer(DOCUMENTS[0], max_new_tokens=8, num_beams=1)
    assert isinstance(result, list) and len(result) == 1
    assert list(result[0]) == ["summary_text"]
    assert isinstance(result[0]["summary_text"], str) and result[0]["summary_text"]


def test_batches_give_the_same_summaries_as_one_by_one(summarizer):
    kwargs = dict(max_new_tokens=8, num_beams=1, return_text=True, return_tensors=True)
    one_by_one = [summarizer(document, **kwargs)[0] for document in DOCUMENTS]
    batched = summarizer(DOCUMENTS, batch_size=2, **kwargs)
    assert len(batched) == len(DOCUMENTS)
    for single, in_batch in zip(one_by_one, batched):
        assert in_batch["summary_text"] == single["summary_text"]
        assert torch.equal(in_batch["summary_token_ids"], single["summary_token_ids"])


def test_tuple_input_is_a_list(summarizer):
    assert summarizer(tuple(DOCUMENTS[:2]), max_new_tokens=4) == summarizer(DOCUMENTS[:2], max_new_tokens=4)


def test_empty_list_gives_no_summaries(summarizer):
    assert summarizer([]) == []


def test_max_input_length_is_the_smaller_limit(summarizer, monkeypatch):
    assert summarizer.tokenizer.model_max_length > MAX_POSITION_EMBEDDINGS
    assert summarizer.max_input_length == MAX_POSITION_EMBEDDINGS
    monkeypatch.setattr(summarizer.tokenizer, "model_max_length", 64)
    assert summarizer.max_input_length == 64


def test_too_long_document_is_cut_with_a_warning(summarizer, generate_calls, caplog):
    input_length = len(summarizer.tokenizer(LONG_DOCUMENT)["input_ids"])
    assert input_length > MAX_POSITION_EMBEDDINGS

    with caplog.at_level(logging.WARNING):
        summarizer(LONG_DOCUMENT)

    assert f"its last {input_length - MAX_POSITION_EMBEDDINGS} tokens were cut" in caplog.text
    input_ids = generate_calls[0]["input_ids"][0]
    assert len(input_ids) == MAX_POSITION_EMBEDDINGS
    assert input_ids[-1] == summarizer.tokenizer.eos_token_id


def test_too_long_document_without_truncation_raises(summarizer):
    with pytest.raises(ValueError, match="pass `truncation=True`"):
        summarizer(LONG_DOCUMENT, truncation=False)


def test_max_new_tokens_bounds_the_summary(summarizer):
    result = summarizer(DOCUMENTS[1], max_new_tokens=5, min_new_tokens=5, num_beams=2, return_tensors=True)
    # The decoder start token, then exactly the 5 new tokens.
    assert len(result[0]["summary_token_ids"]) == 1 + 5


def test_num_return_sequences_gives_several_summaries_per_document(summarizer):
    single = summarizer(DOCUMENTS[0], max_new_tokens=4, num_beams=3, num_return_sequences=3)
    assert len(single) == 3 and all("summary_text" in summary for summary in single)
    batched = summarizer(DOCUMENTS[:2], max_new_tokens=4, num_beams=3, num_return_sequences=3)
    assert [len(summaries) for summaries in batched] == [3, 3]


def test_generate_kwargs_pass_through(summarizer, generate_calls):
    summarizer(DOCUMENTS[0], min_length=3, max_length=20, num_beams=2, no_repeat_ngram_size=2, length_penalty=0.5)
    call = generate_calls[0]
    assert (call["min_length"], call["max_length"], call["num_beams"]) == (3, 20, 2)
    assert (call["no_repeat_ngram_size"], call["length_penalty"]) == (2, 0.5)
    # A max_length the caller chose must not be overridden by the pipeline's max_new_tokens default.
    assert "max_new_tokens" not in call


def test_pipeline_defaults_fill_what_nobody_set(summarizer, generate_calls):
    summarizer(DOCUMENTS[0])
    assert generate_calls[0]["max_new_tokens"] == 256
    assert generate_calls[0]["num_beams"] == 4


def test_model_generation_config_overrides_pipeline_defaults(summarizer, generate_calls, monkeypatch):
    monkeypatch.setattr(summarizer.model.generation_config, "max_length", 40)
    monkeypatch.setattr(summarizer.model.generation_config, "num_beams", 2)
    summarizer(DOCUMENTS[0])
    assert "max_new_tokens" not in generate_calls[0] and "num_beams" not in generate_calls[0]


@pytest.mark.parametrize(
    ("chosen", "model_setting"), [("max_new_tokens", "max_length"), ("max_length", "max_new_tokens")]
)
def test_a_length_limit_of_the_call_replaces_the_models_other_one(
    summarizer, generate_calls, monkeypatch, chosen, model_setting
):
    # Left in place, generate() would warn that both are set, and a model's max_new_tokens would win.
    monkeypatch.setattr(summarizer.model.generation_config, model_setting, 40)
    summarizer(DOCUMENTS[0], **{chosen: 5})
    assert generate_calls[0][chosen] == 5 and generate_calls[0][model_setting] is None


def test_generation_kwargs_given_at_construction_apply_to_every_call(model_dir):
    summarizer = pipeline("summarization", model=str(model_dir), trust_remote_code=True, max_new_tokens=3)
    result = summarizer(DOCUMENTS[0], min_new_tokens=3, num_beams=1, return_tensors=True)
    assert len(result[0]["summary_token_ids"]) == 1 + 3


def test_return_tensors_alone_gives_token_ids(summarizer, generate_calls):
    result = summarizer(DOCUMENTS[0], return_tensors=True)
    assert list(result[0]) == ["summary_token_ids"]
    expected = _summary_ids(summarizer.tokenizer, "First line.<n>Second line.")[0]
    assert torch.equal(result[0]["summary_token_ids"], expected)


def test_return_text_and_tensors_together(summarizer, generate_calls):
    result = summarizer(DOCUMENTS[0], return_text=True, return_tensors=True)
    assert sorted(result[0]) == ["summary_text", "summary_token_ids"]


def test_returning_nothing_is_an_error(summarizer):
    with pytest.raises(ValueError, match="Nothing to return"):
        summarizer(DOCUMENTS[0], return_text=False)


def test_newline_token_becomes_a_line_break(summarizer, generate_calls):
    assert summarizer(DOCUMENTS[0]) == [{"summary_text": "First line.\nSecond line."}]


def test_decode_summary_handles_hand_made_ids(summarizer):
    tokenizer = summarizer.tokenizer
    newline_id = tokenizer.convert_tokens_to_ids("<n>")
    first, second = (tokenizer(text, add_special_tokens=False)["input_ids"] for text in ("Rain fell.", "Then snow."))
    ids = [2, *first, newline_id, newline_id, *second, tokenizer.eos_token_id, tokenizer.pad_token_id]
    # One line break per `<n>`; special tokens (decoder start, end of sequence, padding) are dropped.
    assert summarizer.decode_summary(ids) == "Rain fell.\n\nThen snow."


def test_clean_up_tokenization_spaces_is_passed_to_decoding(summarizer, monkeypatch):
    summary_ids = _summary_ids(summarizer.tokenizer, "Rain , snow and hail .")
    monkeypatch.setattr(summarizer.model, "generate", lambda input_ids, **kwargs: summary_ids)
    assert summarizer(DOCUMENTS[0])[0]["summary_text"] == "Rain , snow and hail ."
    cleaned = summarizer(DOCUMENTS[0], clean_up_tokenization_spaces=True)
    assert cleaned[0]["summary_text"] == "Rain, snow and hail."


def test_line_breaks_in_the_document_become_newline_tokens(summarizer, generate_calls):
    summarizer("First paragraph.\n\nSecond paragraph.\n")
    input_ids = generate_calls[0]["input_ids"][0].tolist()
    expected = summarizer.tokenizer("First paragraph.<n>Second paragraph.")["input_ids"]
    assert input_ids == expected
    assert input_ids.count(summarizer.tokenizer.convert_tokens_to_ids("<n>")) == 1


@pytest.mark.parametrize("document", ["", "   ", " \n\t \n"])
def test_empty_document_is_an_error(summarizer, generate_calls, document):
    with pytest.raises(ValueError, match="empty"):
        summarizer(document)
    with pytest.raises(ValueError, match="empty"):
        summarizer([DOCUMENTS[0], document])
    assert generate_calls == []  # a bad document in a list fails the call before any summary is generated


def test_non_string_document_is_an_error(summarizer, generate_calls):
    with pytest.raises(TypeError, match="must be strings"):
        summarizer(42)
    with pytest.raises(TypeError, match="must be strings"):
        summarizer([DOCUMENTS[0], 42])
    assert generate_calls == []


def test_min_length_above_max_length_warns(summarizer, generate_calls, caplog):
    with caplog.at_level(logging.WARNING):
        summarizer(DOCUMENTS[0], min_length=30, max_length=10)
    assert "min_length=30 is larger than max_length=10" in caplog.text


# ----------------------------------------------------------------------------------------------------------------
# Text handling is linear: the pipeline's preprocessing of a megabyte of whitespace takes well under a second (the
# former regex `\s*\n\s*` took about an hour on it). Timed alone: the text transform, not the tokenizer (a linear
# Rust normalizer, about 1 s per megabyte of spaces on a busy CPU) nor the model; the bound is ~100x what the
# linear code needs.

MEGABYTE_OF_SPACES = " " * (1 << 20)
LINEAR_BOUND_SECONDS = 1.0


def pipeline_module(summarizer):
    return sys.modules[type(summarizer).__module__]


@pytest.mark.parametrize(
    "document, expected",
    [(f"Start.{MEGABYTE_OF_SPACES}End.", f"Start.{MEGABYTE_OF_SPACES}End."),
     (f"Start.{MEGABYTE_OF_SPACES}\n{MEGABYTE_OF_SPACES}End.", "Start.<n>End."),
     (f"Start.{MEGABYTE_OF_SPACES}<n>{MEGABYTE_OF_SPACES}End.", f"Start.{MEGABYTE_OF_SPACES}<n>{MEGABYTE_OF_SPACES}End."),
     (f"{MEGABYTE_OF_SPACES}\t" * 2 + "x", "x")],
    ids=["spaces", "spaces-around-a-line-break", "spaces-around-<n>", "spaces-and-tabs"],
)
def test_preprocessing_a_megabyte_of_whitespace_is_fast(summarizer, document, expected):
    start = time.perf_counter()
    text = summarizer._model_text(document)
    elapsed = time.perf_counter() - start
    assert elapsed < LINEAR_BOUND_SECONDS, f"the text preprocessing took {elapsed:.2f} s"
    assert text == expected
    assert summarizer.preprocess(document)["input_ids"].shape[-1] < 20  # the tokenizer collapses the spaces


def encode_newlines_by_regex(text):
    """What the pipeline did before (quadratic on long runs of whitespace without a line break)."""
    return re.sub(r"\s*\n\s*", "<n>", text.strip())


@pytest.mark.parametrize("text", [f"One.{MEGABYTE_OF_SPACES}<n>{MEGABYTE_OF_SPACES}Two.", f"One.{MEGABYTE_OF_SPACES}x"])
def test_decoding_newline_tokens_in_a_megabyte_of_whitespace_is_fast(summarizer, text):
    start = time.perf_counter()
    decoded = pipeline_module(summarizer).decode_newlines(text)
    assert time.perf_counter() - start < LINEAR_BOUND_SECONDS
    assert decoded in ("One.\nTwo.", f"One.{MEGABYTE_OF_SPACES}x")


def random_texts(count=2000, seed=0):
    pieces = [" ", "  ", "\n", "\t", "\r\n", "<n>", "a", "bc", ".", "\u00a0", "\u2028"]
    generator = random.Random(seed)
    return ["".join(generator.choices(pieces, k=generator.randrange(12))) for _ in range(count)]


def test_newline_helpers_do_what_the_former_regexes_did(summarizer):
    """The linear helpers (the pipeline's, and the package's copy) give what `\\s*\\n\\s*` -> `<n>` and
    `\\s*<n>\\s*` -> line break gave, on random mixes of text, spaces, line breaks and `<n>`."""
    from bigbird_pegasus_hub import text

    for helpers in (pipeline_module(summarizer), text):
        for sample in random_texts():
            assert helpers.encode_newlines(sample) == encode_newlines_by_regex(sample), repr(sample)
            assert helpers.decode_newlines(sample) == re.sub(r"\s*<n>\s*", "\n", sample).strip(), repr(sample)
