"""The Pegasus tokenizer we train ourselves: layout, loading on transformers 4.57 and 5.x, determinism."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
from transformers import AutoTokenizer

from bigbird_pegasus_hub.tokenizer import (
    DEFAULT_VOCAB_SIZE,
    PEGASUS_OFFSET,
    bundled_corpus_path,
    encode_newlines,
    pegasus_reserved_tokens,
    train_pegasus_tokenizer,
)

TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
REPO_ROOT = Path(__file__).resolve().parents[1]

SAMPLE_TEXTS = [
    "The river carried mud to the delta, and the birds came back every spring.",
    "Bees dance to tell the hive where flowers are.<n>The queen lays all the eggs.",
    "In 1980 smallpox was declared eradicated: the first disease wiped out by vaccination!",
    "Lightning heats the air to about 30,000 degrees in a fraction of a second.",
]

# Run by the other transformers line's interpreter: prints the ids of each text as JSON.
_PRINT_IDS_SCRIPT = """
import json, sys
import transformers
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
texts = json.loads(sys.argv[2])
print(json.dumps({"version": transformers.__version__, "ids": [tokenizer(text)["input_ids"] for text in texts]}))
"""


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_writes_the_pegasus_tokenizer_files(tokenizer_dir):
    assert sorted(path.name for path in tokenizer_dir.iterdir()) == sorted(TOKENIZER_FILES)
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PegasusTokenizer"
    assert config["offset"] == PEGASUS_OFFSET
    assert (config["mask_token"], config["mask_token_sent"]) == ("<mask_2>", "<mask_1>")
    assert config["additional_special_tokens"] == ["<mask_1>"] + [f"<unk_{i}>" for i in range(2, 103)]


def test_training_is_deterministic(tokenizer_dir, tmp_path):
    retrained = train_pegasus_tokenizer(bundled_corpus_path(), tmp_path / "again")
    for name in TOKENIZER_FILES:
        assert (retrained / name).read_bytes() == (tokenizer_dir / name).read_bytes(), name


def test_auto_tokenizer_loads_pegasus_tokenizer(tokenizer):
    expected_class = "PegasusTokenizer" if TRANSFORMERS_MAJOR >= 5 else "PegasusTokenizerFast"
    assert type(tokenizer).__name__ == expected_class
    assert len(tokenizer) == DEFAULT_VOCAB_SIZE + PEGASUS_OFFSET


def test_special_token_ids_follow_pegasus_layout(tokenizer):
    assert tokenizer.pad_token_id == 0
    assert tokenizer.eos_token_id == 1
    assert tokenizer.convert_tokens_to_ids("<mask_1>") == 2
    assert tokenizer.mask_token == "<mask_2>" and tokenizer.mask_token_id == 3
    assert tokenizer.convert_tokens_to_ids(pegasus_reserved_tokens()) == list(range(PEGASUS_OFFSET + 2))
    assert tokenizer.unk_token_id == PEGASUS_OFFSET + 2
    assert tokenizer.convert_tokens_to_ids("<n>") == PEGASUS_OFFSET + 3


def test_newline_token_is_a_single_id(tokenizer):
    ids = tokenizer("First line.<n>Second line.", add_special_tokens=False)["input_ids"]
    newline_id = tokenizer.convert_tokens_to_ids("<n>")
    assert ids.count(newline_id) == 1
    assert tokenizer.convert_ids_to_tokens(ids).count("<n>") == 1


def test_encode_newlines_writes_one_token_per_line_break():
    assert encode_newlines("  First line. \n\n  Second line.\nThird.\n") == "First line.<n>Second line.<n>Third."


@pytest.mark.parametrize("text", SAMPLE_TEXTS)
def test_decode_round_trips_text(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_same_ids_on_the_other_transformers_line(tokenizer_dir, tokenizer):
    other_python = _other_transformers_python()
    if other_python is None:
        pytest.skip("no interpreter with the other transformers major version (set BIGBIRD_PEGASUS_OTHER_PYTHON)")
    completed = subprocess.run(
        [other_python, "-c", _PRINT_IDS_SCRIPT, str(tokenizer_dir), json.dumps(SAMPLE_TEXTS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    other = json.loads(completed.stdout.strip().splitlines()[-1])
    if int(other["version"].split(".")[0]) == TRANSFORMERS_MAJOR:
        pytest.skip(f"{other_python} has transformers {other['version']}, the same major version as this one")
    assert other["ids"] == [tokenizer(text)["input_ids"] for text in SAMPLE_TEXTS]


def test_remote_code_loading_gives_the_same_ids(tokenizer_dir, tokenizer):
    # `pipeline(..., trust_remote_code=True)` loads the tokenizer this way: 5.x then reads tokenizer.json as-is
    # instead of rebuilding the pipeline around its vocabulary.
    remote_code_tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=True)
    for text in SAMPLE_TEXTS:
        assert remote_code_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]


@pytest.mark.skipif(TRANSFORMERS_MAJOR >= 5, reason="transformers 5 has no sentencepiece-backed Pegasus tokenizer")
def test_slow_sentencepiece_tokenizer_agrees_with_fast(tokenizer_dir, tokenizer):
    slow = AutoTokenizer.from_pretrained(tokenizer_dir, use_fast=False)
    assert type(slow).__name__ == "PegasusTokenizer"
    for text in SAMPLE_TEXTS:
        assert slow(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_trains_on_a_list_of_documents(tmp_path):
    documents = bundled_corpus_path().read_text(encoding="utf-8").split("\n\n")
    out_dir = train_pegasus_tokenizer(documents, tmp_path, vocab_size=300, model_max_length=512)
    trained = AutoTokenizer.from_pretrained(out_dir)
    assert len(trained) == 300 + PEGASUS_OFFSET
    assert trained.model_max_length == 512


def test_rejects_a_missing_corpus_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a file"):
        train_pegasus_tokenizer("The sky is blue.", tmp_path)


def test_rejects_a_blank_corpus(tmp_path):
    with pytest.raises(ValueError, match="No training text"):
        train_pegasus_tokenizer(["", "  \n "], tmp_path)


def _other_transformers_python():
    """The interpreter of the other transformers line: $BIGBIRD_PEGASUS_OTHER_PYTHON, else the repo's other venv."""
    if os.environ.get("BIGBIRD_PEGASUS_OTHER_PYTHON"):
        return os.environ["BIGBIRD_PEGASUS_OTHER_PYTHON"]
    venv = REPO_ROOT / (".venv457" if TRANSFORMERS_MAJOR >= 5 else ".venv")
    python = venv / "bin" / "python"
    # Venv interpreters are symlinks to one base Python: tell venvs apart by their prefix.
    if not python.exists() or venv.resolve() == Path(sys.prefix).resolve():
        return None
    return str(python)
