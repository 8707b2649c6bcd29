"""The small demo model that the project's `hub_repo/` ships, and how it is trained and rebuilt.

Random weights would summarize the bundled example document as gibberish, and a released checkpoint is gigabytes,
so `hub_repo/` carries a tiny BigBirdPegasus trained in minutes on CPU to write the simplest useful summary: a copy
of the document's lead, that is its title line (if it has one) and the first sentence of its first paragraph (with
the second when the first is very short). Copying is what a small encoder-decoder learns quickly, and it exercises
every part of the model: block-sparse encoder, cross-attention, generation. The title is copied rather than skipped
because a lead that always starts at the first token is copied by position, which a small model learns within its
budget; finding where the first paragraph starts behind a title of any length is a much later skill.

Training documents come from the package's small corpus: single paragraphs (full attention) and runs of consecutive
paragraphs of 150-4000 tokens (block-sparse attention, up to the length of the example document). Half of them have
their words shuffled within each sentence and some words replaced by made-up ones, built from random pieces of the
vocabulary, so the model cannot recite memorized sentences and must learn to copy from its input, every piece of
the vocabulary included (a piece that no lead of the corpus holds would otherwise be learned never to be written). A
few articles are held out (`HELD_OUT_TITLES`) to check that it copies text it never saw.

Training takes about ten minutes of one CPU core (3000 steps, 0.19 s each; 47 minutes on this project's shared
2-core machine under a load of ~12). It is deterministic (fixed seeds, one CPU thread), but bit-exact
weights also need the same torch version and CPU kind, which is why `hub_repo/` is rebuilt from its committed weights
(`weights_from`) rather than retrained:

    python -m bigbird_pegasus_hub.bundled hub_repo            # refresh code, tokenizer and card; keep the weights
    python -m bigbird_pegasus_hub.bundled hub_repo --retrain  # train new weights
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .plugin import modeling_bigbird_pegasus as modeling
from .plugin.configuration_bigbird_pegasus import BigBirdPegasusConfig
from .plugin.modeling_bigbird_pegasus import BigBirdPegasusForConditionalGeneration
from .repo import build_repo, model_from_weights
from .repo_files import WEIGHTS_FILE
from .tokenizer import NEWLINE_TOKEN, bundled_corpus_path, encode_newlines, train_pegasus_tokenizer

logger = logging.getLogger(__name__)

BUNDLED_CONFIG = dict(
    vocab_size=1103,  # the size of the tokenizer `train_pegasus_tokenizer` makes from the bundled corpus
    d_model=64,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=256,
    decoder_ffn_dim=256,
    # The full 4096: inputs as long as the paper's use block-sparse attention on the original 4096-token grid.
    max_position_embeddings=4096,
    attention_type="block_sparse",
    # Small blocks, so block-sparse attention already applies from (5 + 2 * 2) * 16 + 1 = 145 tokens.
    block_size=16,
    num_random_blocks=2,
    # No dropout: scrambled documents and made-up words already keep the model from memorizing, and with dropout 0.1
    # it learned to copy several times slower (training loss 1.35 against 0.19 after 600 steps).
    dropout=0.0,
    # transformers' 0.02 suits a width of 1024; at 64 it leaves attention scores so flat that the model takes
    # thousands of steps to start copying. 0.1 is about 1 / sqrt(d_model).
    init_std=0.1,
)

TRAIN_STEPS = 3000
LEARNING_RATE = 3e-3
WARMUP_STEPS = 50
DECAY_START = 0.6  # the learning rate stays at its peak for this share of the steps, then decays linearly
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
TOKENS_PER_STEP = 2048  # input tokens of a batch of long documents
PARAGRAPHS_PER_BATCH = 16  # documents of a batch of single paragraphs
LONG_DOCUMENT_TOKENS = (150, 4000)  # block-sparse attention from 145 tokens, up to the 4096 the model reads
MADE_UP_WORD_SHARE = 0.15  # of the words of a scrambled document
MADE_UP_WORD_PIECES = (1, 3)  # vocabulary pieces per made-up word
WORD_START = "\u2581"  # sentencepiece's mark of a piece that starts a word
COMPOUND_TITLE_SHARE = 0.5  # of the titles


@dataclass(frozen=True)
class Mix:
    """What the training documents are like."""

    long_documents: float  # share of batches of runs of paragraphs; the others hold single paragraphs
    titles: float  # share of documents that begin with an article's title line, like the example document
    scrambled: float  # share of documents whose words are shuffled and partly made up (see DocumentSampler.scramble)


# The model starts copying soonest from short inputs whose lead starts at the first token; titles (a longer lead) and
# long documents (block-sparse attention) come after.
COPY_WARMUP_STEPS = 300
COPY_WARMUP_MIX = Mix(long_documents=0.0, titles=0.0, scrambled=0.5)
FULL_MIX = Mix(long_documents=0.3, titles=0.5, scrambled=0.5)

LEAD_MIN_WORDS = 10  # a shorter first sentence says too little: take the second one too
LEAD_MAX_TOKENS = 96  # longer leads are cut (few titles and sentences are this long)

# Articles kept out of training, to check that the model copies text it has never seen.
HELD_OUT_TITLES = ("Tea", "Lighthouses", "Cities")

# The paper's decoding settings (repo.PAPER_GENERATION) with two changes for a model that copies a lead: stop after
# the longest lead it was trained on, and allow repeated trigrams (a sentence copied verbatim may repeat one).
DEMO_GENERATION = dict(max_length=LEAD_MAX_TOKENS + 2, no_repeat_ngram_size=0)

EXAMPLE_DOCUMENT = Path(__file__).parent / "data" / "example_document.txt"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_TRAILING_PUNCTUATION = re.compile(r"[.!?]+$")


# ----------------------------------------------------------------------------------------------------------------
# The corpus: articles of a title line and paragraph lines, separated by blank lines.
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Article:
    title: str
    paragraphs: tuple[str, ...]


def read_articles(path: str | Path | None = None) -> list[Article]:
    text = Path(path or bundled_corpus_path()).read_text(encoding="utf-8")
    articles = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.strip().splitlines() if line.strip()]
        if len(lines) >= 2:
            articles.append(Article(lines[0], tuple(lines[1:])))
    return articles


def training_articles() -> list[Article]:
    return [article for article in read_articles() if article.title not in HELD_OUT_TITLES]


def example_document_lead() -> str:
    """What the demo model writes for the package's example document (`data/example_document.txt`, the README's main
    job): its title line and the lead of its first paragraph."""
    title, first_paragraph = [line for line in EXAMPLE_DOCUMENT.read_text(encoding="utf-8").splitlines()
                              if line.strip()][:2]
    return lead(first_paragraph, title.strip())


def split_sentences(paragraph: str) -> list[str]:
    return _SENTENCE_END.split(paragraph.strip())


def lead(paragraph: str, title: str | None = None) -> str:
    """The summary the demo model learns to write for a document that starts with `title` (if any) and `paragraph`:
    the title line, then the paragraph's first sentence, with the next ones while it is shorter than LEAD_MIN_WORDS
    words."""
    return _lead(title, split_sentences(paragraph))


def _lead(title: str | None, sentences: list[str] | tuple[str, ...]) -> str:
    taken = list(sentences[:1])
    for sentence in sentences[1:]:
        if len(" ".join(taken).split()) >= LEAD_MIN_WORDS:
            break
        taken.append(sentence)
    body = " ".join(taken)
    return f"{title}\n{body}" if title else body


# ----------------------------------------------------------------------------------------------------------------
# Training examples: (document, lead) pairs.
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    sentences: tuple[str, ...]  # a title is one "sentence"
    is_title: bool

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


class DocumentSampler:
    """Draws training documents from the corpus read as one stream of lines (titles and paragraphs), which
    wraps around, so a long document may run across articles, titles included, like a real web page."""

    def __init__(self, articles: list[Article], tokenizer: PreTrainedTokenizerBase, rng: random.Random):
        self.lines = []
        for article in articles:
            self.lines.append(Line((article.title,), is_title=True))
            self.lines += [Line(tuple(split_sentences(text)), is_title=False) for text in article.paragraphs]
        self.line_tokens = [len(tokenizer(line.text, add_special_tokens=False).input_ids) for line in self.lines]
        self.title_starts = [index for index, line in enumerate(self.lines) if line.is_title]
        self.paragraph_starts = [index for index, line in enumerate(self.lines) if not line.is_title]
        self.pieces = vocabulary_pieces(tokenizer)
        self.rng = rng

    def sample(self, mix: Mix, min_tokens: int = 0) -> tuple[str, str]:
        """A document of at least `min_tokens` tokens (roughly: scrambling changes the count a little) that holds at
        least one whole paragraph, and its lead."""
        starts = self.title_starts if self.rng.random() < mix.titles else self.paragraph_starts
        index = self.rng.choice(starts)
        lines, tokens = [], 0
        while tokens < min_tokens or all(line.is_title for line in lines):
            lines.append(self.lines[index % len(self.lines)])
            tokens += self.line_tokens[index % len(self.lines)]
            index += 1
        if lines[0].is_title and self.rng.random() < COMPOUND_TITLE_SHARE:
            lines[0] = self.compound_title(lines[0])
        if self.rng.random() < mix.scrambled:
            lines = [Line(tuple(map(self.scramble, line.sentences)), line.is_title) for line in lines]
        title = lines[0].text if lines[0].is_title else None
        first_paragraph = next(line for line in lines if not line.is_title)
        return "\n".join(line.text for line in lines), _lead(title, first_paragraph.sentences)

    def compound_title(self, title: Line) -> Line:
        """A "Title: Subtitle" line made of two corpus titles: the bundled example document has such a title, longer
        than any corpus title."""
        other = self.lines[self.rng.choice(self.title_starts)]
        return Line((f"{title.text}: {other.text}",), is_title=True)

    def scramble(self, sentence: str) -> str:
        """Shuffles the words of a sentence (keeping its final punctuation) and swaps some for made-up words: text
        the model cannot have memorized, so it learns to copy."""
        ending = _TRAILING_PUNCTUATION.search(sentence)
        words = sentence[: ending.start()].split() if ending else sentence.split()
        self.rng.shuffle(words)
        words = [self.made_up_word() if self.rng.random() < MADE_UP_WORD_SHARE else word for word in words]
        return " ".join(words) + (ending.group() if ending else "")

    def made_up_word(self) -> str:
        """One to three random pieces of the vocabulary: every piece gets to be copied, also those that the corpus'
        leads never hold (a piece that is never a target is learned never to be written)."""
        word = "".join(self.rng.choices(self.pieces, k=self.rng.randint(*MADE_UP_WORD_PIECES)))
        return word.capitalize() if self.rng.random() < 0.3 else word


def vocabulary_pieces(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The texts of the tokenizer's sentencepiece pieces, without the word-start marker, in id order."""
    special = set(tokenizer.all_special_ids) | {tokenizer.unk_token_id, tokenizer.convert_tokens_to_ids(NEWLINE_TOKEN)}
    pieces = tokenizer.convert_ids_to_tokens([index for index in range(len(tokenizer)) if index not in special])
    return [text for text in (piece.replace(WORD_START, "") for piece in pieces) if text and not text.startswith("<")]


def batches(sampler: DocumentSampler, tokenizer: PreTrainedTokenizerBase, steps: int) -> Iterator[dict]:
    """The model inputs of each step: COPY_WARMUP_MIX first, then FULL_MIX."""
    for step in range(steps):
        mix = COPY_WARMUP_MIX if step < COPY_WARMUP_STEPS else FULL_MIX
        if sampler.rng.random() < mix.long_documents:
            # Documents of one length per batch, about TOKENS_PER_STEP tokens in all: little padding.
            min_tokens = sampler.rng.randint(*LONG_DOCUMENT_TOKENS)
            examples = [sampler.sample(mix, min_tokens) for _ in range(max(1, TOKENS_PER_STEP // min_tokens))]
        else:
            examples = [sampler.sample(mix) for _ in range(PARAGRAPHS_PER_BATCH)]
        documents, leads = zip(*examples)
        yield encode_batch(tokenizer, documents, leads)


def encode_batch(tokenizer: PreTrainedTokenizerBase, documents, leads) -> dict:
    """Documents as the summarization pipeline feeds them (line breaks as `<n>`); leads as labels ending in `</s>`,
    padded with -100 so that padding adds no loss."""
    max_input_tokens = BUNDLED_CONFIG["max_position_embeddings"]
    inputs = tokenizer([encode_newlines(document) for document in documents], padding=True, truncation=True,
                       max_length=max_input_tokens, return_tensors="pt")
    labels = tokenizer([encode_newlines(text) for text in leads], padding=True, truncation=True,
                       max_length=LEAD_MAX_TOKENS + 1, return_tensors="pt")
    inputs["labels"] = labels.input_ids.masked_fill(labels.attention_mask == 0, -100)
    return inputs


# ----------------------------------------------------------------------------------------------------------------
# Training.
# ----------------------------------------------------------------------------------------------------------------


def train_demo_model(
    steps: int = TRAIN_STEPS,
    seed: int = 0,
    tokenizer_dir: str | Path | None = None,
    log_every: int = 100,
) -> BigBirdPegasusForConditionalGeneration:
    """Trains the demo model (about ten minutes of one CPU core) and returns it in eval mode.

    Args:
        steps: optimizer steps.
        seed: seeds the initialization, dropout and the sampled documents.
        tokenizer_dir: a folder of the bundled tokenizer (`train_pegasus_tokenizer(bundled_corpus_path(), folder)`);
            trained afresh when omitted.
        log_every: log the mean loss every this many steps.

    The same seed, torch version and CPU kind give bit-identical weights: training runs on one CPU thread, whose
    kernels always sum in the same order.
    """
    with _tokenizer_folder(tokenizer_dir) as folder:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    if len(tokenizer) != BUNDLED_CONFIG["vocab_size"]:
        raise ValueError(f"The tokenizer has {len(tokenizer)} ids, but BUNDLED_CONFIG expects "
                         f"{BUNDLED_CONFIG['vocab_size']}: train it with "
                         "train_pegasus_tokenizer(bundled_corpus_path(), folder) and its default vocab_size.")
    with _single_thread(), _quiet(modeling.logger):
        torch.manual_seed(seed)
        model = BigBirdPegasusForConditionalGeneration(BigBirdPegasusConfig(**BUNDLED_CONFIG))
        _init_positions_sinusoidal(model)
        sampler = DocumentSampler(training_articles(), tokenizer, random.Random(seed))
        _optimize(model, batches(sampler, tokenizer, steps), steps, log_every)
    # Saved in config.json, so that a rebuild from the saved weights writes the same model card.
    model.config.demo_training = {"steps": steps, "seed": seed}
    return model.eval()


def _init_positions_sinusoidal(model: BigBirdPegasusForConditionalGeneration) -> None:
    """Starts the learned position embeddings of encoder and decoder from Pegasus' sinusoidal table. Relative offsets
    are linear maps of sinusoidal codes, which makes "attend to the next token" quick to learn, and positions that
    no training document reaches still get meaningful codes."""
    for embedding in (model.model.encoder.embed_positions, model.model.decoder.embed_positions):
        positions, dim = embedding.weight.shape
        angles = torch.arange(positions)[:, None] / 10000 ** (torch.arange(0, dim, 2) / dim)
        with torch.no_grad():
            embedding.weight.copy_(torch.cat([angles.sin(), angles.cos()], dim=1))


def _optimize(model, batch_stream: Iterator[dict], steps: int, log_every: int) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _learning_rate_factor(step, steps))
    model.train()
    losses, start = [], time.perf_counter()
    for step, batch in enumerate(batch_stream, start=1):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % log_every == 0 or step == steps:
            recent = losses[-log_every:]
            logger.info("step %d/%d  loss %.4f  (%.0f s)", step, steps, sum(recent) / len(recent),
                        time.perf_counter() - start)


def _learning_rate_factor(step: int, steps: int) -> float:
    """Linear warmup, the peak until DECAY_START of the steps, then linear decay to a tenth of the peak."""
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    decay_start = DECAY_START * steps
    progress = max(0.0, step - decay_start) / max(1.0, steps - decay_start)
    return 1.0 - 0.9 * min(1.0, progress)


@contextmanager
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def _quiet(module_logger):
    """Silences the model's notice that short inputs use full attention: training mixes short and long inputs."""
    level = module_logger.level
    module_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        module_logger.setLevel(level)


@contextmanager
def _tokenizer_folder(tokenizer_dir: str | Path | None):
    if tokenizer_dir is not None:
        yield Path(tokenizer_dir)
        return
    with tempfile.TemporaryDirectory(prefix="bundled-tokenizer-") as folder:
        yield train_pegasus_tokenizer(bundled_corpus_path(), folder)


# ----------------------------------------------------------------------------------------------------------------
# The repo.
# ----------------------------------------------------------------------------------------------------------------


def build_bundled_repo(
    out_dir: str | Path,
    weights_from: str | Path | None = None,
    steps: int = TRAIN_STEPS,
    seed: int = 0,
) -> Path:
    """Writes the project's demo Hub repo to `out_dir` (replacing it) and returns its path.

    Args:
        weights_from: a folder built by this function (such as the committed `hub_repo/`): reuse its config.json and
            model.safetensors instead of training, so that code, tokenizer and model card are refreshed while the
            weights stay byte-identical. Without it, a model is trained for `steps` steps with `seed`.
    """
    with tempfile.TemporaryDirectory(prefix="bundled-tokenizer-") as tokenizer_dir:
        train_pegasus_tokenizer(bundled_corpus_path(), tokenizer_dir)
        if weights_from is not None:
            model = model_from_weights(Path(weights_from) / "config.json", Path(weights_from) / WEIGHTS_FILE)
        else:
            model = train_demo_model(steps=steps, seed=seed, tokenizer_dir=tokenizer_dir)
        return build_repo(out_dir, model=model, tokenizer=tokenizer_dir, generation_config=DEMO_GENERATION,
                          description=description(model), overwrite=True)


def description(model: BigBirdPegasusForConditionalGeneration) -> str:
    """The model card's account of the weights, from the model alone (so a rebuild writes the same card)."""
    parameters = sum(parameter.numel() for parameter in model.parameters())
    training = getattr(model.config, "demo_training", None) or {}
    how_long = f" for {training['steps']} steps (seed {training['seed']})" if training else ""
    return (
        f"**A demo model, not a summarizer.** These are the weights of a {parameters / 1e6:.1f}M-parameter "
        f"BigBirdPegasus trained on CPU{how_long} on the plugin package's small corpus (about 20,000 tokens) to "
        "copy a document's lead: its title line, if it has one, and the first sentence of its first paragraph. "
        "They let you try this repo's code, tokenizer and summarization pipeline end to end in seconds, with "
        "readable output: they copy the lead of documents they never saw, but they have learned nothing about "
        "summarizing. For real summaries, convert or upgrade a released checkpoint such as "
        "`google/bigbird-pegasus-large-arxiv` with the `bigbird-pegasus` command line. This repo is rebuilt with "
        "`python -m bigbird_pegasus_hub.bundled OUT_DIR [--retrain]`."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bigbird_pegasus_hub.bundled",
        description="Build the project's demo Hub repo. Reuses OUT_DIR's weights when it has them, unless --retrain.",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--retrain", action="store_true", help="train new weights (about ten minutes on CPU)")
    parser.add_argument("--steps", type=int, default=TRAIN_STEPS, help="training steps with --retrain")
    parser.add_argument("--seed", type=int, default=0, help="training seed with --retrain")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    weights_from = None
    if (args.out_dir / WEIGHTS_FILE).is_file() and not args.retrain:
        weights_from = args.out_dir
        logger.info("Reusing the weights of %s (pass --retrain to train new ones)", weights_from)
    else:
        logger.info("Training the demo model for %d steps", args.steps)
    out_dir = build_bundled_repo(args.out_dir, weights_from=weights_from, steps=args.steps, seed=args.seed)
    logger.info("Wrote %s", out_dir)


if __name__ == "__main__":
    main()
