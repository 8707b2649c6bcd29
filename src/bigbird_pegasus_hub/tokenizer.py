"""Train a small Pegasus tokenizer and write it in the layout transformers' `PegasusTokenizer` loads.

Pegasus reserves the first `offset` (103) ids of its vocabulary for pretraining tokens:

    id 0 <pad> | 1 </s> | 2 <mask_1> | 3 <mask_2> | 4..104 <unk_2>..<unk_102> | 105 + k: sentencepiece piece 2 + k

so the sentencepiece model we train has `<pad>`, `</s>` and `<unk>` as its pieces 0, 1 and 2: transformers drops
pieces 0 and 1 (they already sit at ids 0 and 1) and shifts every other piece by the offset, which puts `<unk>` at
105 and our newline piece `<n>` (the first user-defined symbol) at 106.

Besides `spiece.model` we write `tokenizer.json`, because both transformers lines read a bare `spiece.model`
differently: 5.x swaps `<mask_1>`/`<mask_2>` (ids 3/2) and 4.57's converter turns `<n>` into an added token that
starts a new word. `tokenizer.json` fixes the vocabulary order, and its pipeline is exactly the one 5.x's
`PegasusTokenizer` rebuilds around that vocabulary, so 4.57 (which loads the file as-is) and 5.x give the same ids.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram

from .text import NEWLINE_TOKEN, encode_newlines

PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
MASK_TOKEN = "<mask_2>"  # masks single words (MLM)
MASK_TOKEN_SENT = "<mask_1>"  # masks whole sentences (gap-sentence generation)
PEGASUS_OFFSET = 103
DEFAULT_VOCAB_SIZE = 1000
DEFAULT_MODEL_MAX_LENGTH = 4096

SPIECE_MODEL_FILE = "spiece.model"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

__all__ = [
    "DEFAULT_VOCAB_SIZE",
    "NEWLINE_TOKEN",
    "PEGASUS_OFFSET",
    "bundled_corpus_path",
    "encode_newlines",
    "pegasus_reserved_tokens",
    "train_pegasus_tokenizer",
    "write_pegasus_tokenizer",
]


def bundled_corpus_path() -> Path:
    """The small English corpus shipped with the package, enough to train about 1000 pieces."""
    return Path(__file__).parent / "data" / "corpus.txt"


def pegasus_reserved_tokens(offset: int = PEGASUS_OFFSET) -> list[str]:
    """The tokens of ids 0 .. offset + 1, in id order."""
    return [PAD_TOKEN, EOS_TOKEN, MASK_TOKEN_SENT, MASK_TOKEN] + _unused_pretraining_tokens(offset)


def _unused_pretraining_tokens(offset: int) -> list[str]:
    return [f"<unk_{i}>" for i in range(2, offset)]


def train_pegasus_tokenizer(
    texts_or_file: str | os.PathLike | Iterable[str],
    out_dir: str | os.PathLike,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
) -> Path:
    """
    Trains a sentencepiece unigram model and writes a Pegasus tokenizer that `AutoTokenizer.from_pretrained(out_dir)`
    loads on transformers 4.57 and 5.x alike, with the same ids.

    Args:
        texts_or_file: a UTF-8 text file whose documents are separated by blank lines, or an iterable of
            documents. Line breaks inside a document become `<n>`.
        out_dir: folder to write `spiece.model`, `tokenizer.json`, `tokenizer_config.json` and
            `special_tokens_map.json` into (created if missing).
        vocab_size: number of sentencepiece pieces, `<pad>`, `</s>`, `<unk>` and `<n>` included. The tokenizer then
            has `vocab_size + 103` ids (the Pegasus offset tokens).
        model_max_length: the longest input, in tokens, the tokenizer announces.

    Training is deterministic (one thread, every sentence used): the same text gives byte-identical files.

    Returns:
        The output folder.
    """
    documents = _read_documents(texts_or_file)
    if not documents:
        raise ValueError("No training text: the corpus holds no non-blank document.")
    return _write_tokenizer_files(_train_sentencepiece(documents, vocab_size), out_dir, model_max_length)


def write_pegasus_tokenizer(
    spiece_model: str | os.PathLike, out_dir: str | os.PathLike, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH
) -> Path:
    """Writes the tokenizer files of an existing Pegasus sentencepiece model (pieces 0, 1, 2 = `<pad>`, `</s>`,
    `<unk>`, as in Google's released Pegasus and BigBird vocabularies) into `out_dir`."""
    model = Path(spiece_model).read_bytes()
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(model)
    except Exception as error:  # protobuf raises its own DecodeError
        raise ValueError(f"{spiece_model} is not a sentencepiece model file: {error}") from error
    if [piece.piece for piece in proto.pieces[:2]] != [PAD_TOKEN, EOS_TOKEN]:
        raise ValueError(f"{spiece_model} does not have Pegasus' layout (<pad> and </s> as pieces 0 and 1).")
    return _write_tokenizer_files(model, out_dir, model_max_length)


def _write_tokenizer_files(spiece_model: bytes, out_dir: str | os.PathLike, model_max_length: int) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SPIECE_MODEL_FILE).write_bytes(spiece_model)
    (out_dir / TOKENIZER_FILE).write_text(_build_backend_tokenizer(spiece_model).to_str(pretty=True), encoding="utf-8")
    _write_json(out_dir / TOKENIZER_CONFIG_FILE, _tokenizer_config(model_max_length))
    _write_json(out_dir / SPECIAL_TOKENS_MAP_FILE, _special_tokens_map())
    return out_dir


def _read_documents(texts_or_file: str | os.PathLike | Iterable[str]) -> list[str]:
    if isinstance(texts_or_file, (str, os.PathLike)):
        path = Path(texts_or_file)
        if not path.is_file():
            # A bare string is read as a path: training on a one-line "corpus" by mistake would go unnoticed.
            raise FileNotFoundError(f"Training corpus {str(path)!r} is not a file; pass a list to train on texts.")
        texts = re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))
    else:
        texts = list(texts_or_file)
    documents = (encode_newlines(text) for text in texts)
    return [document for document in documents if document]


def _train_sentencepiece(documents: list[str], vocab_size: int) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(documents),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        # Pegasus' layout: transformers replaces pieces 0 and 1 and shifts the rest by the offset.
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece=PAD_TOKEN,
        eos_piece=EOS_TOKEN,
        unk_piece=UNK_TOKEN,
        user_defined_symbols=[NEWLINE_TOKEN],
        character_coverage=1.0,
        # Documents are whole articles; sentencepiece would silently skip those over its 4192-byte default.
        max_sentence_length=max(len(document.encode("utf-8")) for document in documents),
        # Determinism: one thread and no sentence sampling.
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return model.getvalue()


def _build_backend_tokenizer(spiece_model: bytes) -> Tokenizer:
    """The `tokenizers` pipeline of transformers 5.x's `PegasusTokenizer`, over the 4.57 vocabulary order."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(spiece_model)

    reserved = pegasus_reserved_tokens()
    vocab = [(token, 0.0) for token in reserved[:4]] + [(token, -100.0) for token in reserved[4:]]
    vocab += [(piece.piece, piece.score) for piece in proto.pieces[2:]]
    unk_id = PEGASUS_OFFSET + proto.trainer_spec.unk_id

    tokenizer = Tokenizer(Unigram(vocab, unk_id=unk_id))
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap),
            normalizers.Replace(Regex(r" {2,}"), " "),
        ]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}",
        pair=f"$A $B {EOS_TOKEN}",
        special_tokens=[(EOS_TOKEN, reserved.index(EOS_TOKEN))],
    )
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in reserved])
    return tokenizer


def _tokenizer_config(model_max_length: int) -> dict:
    return {
        "tokenizer_class": "PegasusTokenizer",
        "model_max_length": model_max_length,
        "offset": PEGASUS_OFFSET,
        **_special_tokens_map(),
        "mask_token_sent": MASK_TOKEN_SENT,
        # Metaspace decoding already places spaces; 4.57 and 5.x default this flag differently.
        "clean_up_tokenization_spaces": False,
    }


def _special_tokens_map() -> dict:
    return {
        "pad_token": PAD_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": UNK_TOKEN,
        "mask_token": MASK_TOKEN,
        "additional_special_tokens": [MASK_TOKEN_SENT] + _unused_pretraining_tokens(PEGASUS_OFFSET),
    }


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
