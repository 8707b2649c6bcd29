"""The Python API behind `bigbird-pegasus summarize`: what it accepts, and the wrong models it refuses."""

from __future__ import annotations

import logging
import shutil
import time

import pytest
import torch
from tiny import tiny_config

from bigbird_pegasus_hub import cli
from bigbird_pegasus_hub.plugin.modeling_bigbird_pegasus import BigBirdPegasusForConditionalGeneration
from bigbird_pegasus_hub.repo import build_repo
from bigbird_pegasus_hub.summarize import SummarizeError, Summarizer, Summary, load_summarizer
from bigbird_pegasus_hub.text import decode_newlines, encode_newlines

DOCUMENT = "Bees dance to tell the hive where flowers are.\nThe queen lays all the eggs."
FAST = dict(max_new_tokens=4, num_beams=1)
MEGABYTE_OF_SPACES = " " * (1 << 20)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tokenizer_dir, tokenizer_size):
    torch.manual_seed(0)
    model = BigBirdPegasusForConditionalGeneration(tiny_config(vocab_size=tokenizer_size, max_position_embeddings=256))
    return build_repo(tmp_path_factory.mktemp("api") / "repo", model=model, tokenizer=tokenizer_dir)


@pytest.fixture(scope="module")
def summarizer(repo) -> Summarizer:
    return load_summarizer(repo, device="cpu")


def test_a_single_string_is_one_document(summarizer):
    summaries = list(summarizer.summarize(DOCUMENT, **FAST))
    assert len(summaries) == 1 and isinstance(summaries[0], Summary)
    (as_list,) = summarizer.summarize([DOCUMENT], **FAST)
    assert (summaries[0].text, summaries[0].input_tokens) == (as_list.text, as_list.input_tokens)


def test_no_documents_give_no_summaries(summarizer):
    assert list(summarizer.summarize([], **FAST)) == []
    assert list(summarizer.summarize([], chunk=True, **FAST)) == []
    assert list(summarizer.summarize(iter(()), batch_size=4, **FAST)) == []


def test_a_document_that_is_not_a_string_is_a_type_error(summarizer):
    with pytest.raises(TypeError, match="must be strings, got bytes"):
        list(summarizer.summarize([b"bytes"], **FAST))


def test_chunk_overlap_without_chunk_is_an_error(summarizer):
    with pytest.raises(SummarizeError, match="chunk_overlap only applies with chunk=True"):
        list(summarizer.summarize([DOCUMENT], chunk_overlap=10, **FAST))


def test_an_empty_summary_is_a_warning(summarizer, monkeypatch, caplog):
    end = torch.tensor([[summarizer.model.config.decoder_start_token_id, summarizer.tokenizer.eos_token_id]])
    monkeypatch.setattr(summarizer.model, "generate", lambda **kwargs: end)
    with caplog.at_level(logging.WARNING, logger="bigbird_pegasus_hub.summarize"):
        (summary,) = summarizer.summarize(DOCUMENT)
    assert summary.text == "" and "generated an empty summary" in caplog.text


def test_a_tokenizer_bigger_than_the_vocabulary_is_refused(summarizer):
    small = BigBirdPegasusForConditionalGeneration(tiny_config(vocab_size=500))
    with pytest.raises(SummarizeError, match=r"tokenizer has 1103 ids but the model's vocabulary has only 500"):
        Summarizer(small, summarizer.tokenizer)


def test_out_of_range_ids_name_the_id_and_the_vocabulary(summarizer):
    with pytest.raises(ValueError, match=r"Token id 5000 is outside the model's vocabulary of 1103 ids"):
        summarizer.model(input_ids=torch.tensor([[5, 5000]]), decoder_input_ids=torch.tensor([[2]]))


def test_the_command_line_text_path_is_linear_in_whitespace(summarizer):
    """A megabyte of spaces, around a line break and around `<n>`, through what the command line does to a document
    before tokenizing it and to a summary after decoding (timed alone, without the tokenizer and the model)."""
    documents = [f"One.{MEGABYTE_OF_SPACES}Two.", f"One.{MEGABYTE_OF_SPACES}\n{MEGABYTE_OF_SPACES}Two.",
                 f"One.{MEGABYTE_OF_SPACES}<n>{MEGABYTE_OF_SPACES}Two."]
    for document in documents:
        start = time.perf_counter()
        text = encode_newlines(cli.decode_text(document.encode(), "standard input"))
        summary = decode_newlines(text)
        elapsed = time.perf_counter() - start
        assert elapsed < 1.0, f"{elapsed:.2f} s"
        assert summary in (f"One.{MEGABYTE_OF_SPACES}Two.", "One.\nTwo.")
    assert len(summarizer._tokens(documents[1])) < 10


def damaged_copy(repo, tmp_path, edit):
    copy = shutil.copytree(repo, tmp_path / "repo")
    edit(copy)
    return copy


def test_missing_and_unexpected_weights_are_refused_naming_them(repo, tmp_path):
    from safetensors.torch import load_file, save_file

    def edit(folder):
        weights = load_file(folder / "model.safetensors")
        del weights["model.encoder.layers.1.fc2.weight"]
        weights["model.encoder.layers.7.fc2.weight"] = torch.zeros(1)
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})

    with pytest.raises(SummarizeError, match=r"do not fit its config.json \(missing: model.encoder.layers.1.fc2.weight; "
                                             r"unexpected: model.encoder.layers.7.fc2.weight\)"):
        load_summarizer(damaged_copy(repo, tmp_path, edit), device="cpu")


def test_tokenizer_files_of_a_folder_are_checked_before_loading(repo, tmp_path):
    def edit(folder):
        (folder / "spiece.model").unlink()
        (folder / "tokenizer.json").unlink()

    # Not "install sentencepiece": the files are simply missing.
    with pytest.raises(SummarizeError, match=r"has tokenizer_config.json but no vocabulary"):
        load_summarizer(damaged_copy(repo, tmp_path, edit), device="cpu")
