"""The small demo model that the project's `hub_repo/` ships, and how it is trained and rebuilt.

Random weights would summarize the bundled example document as gibberish, and a released checkpoint is gigabytes,
so `hub_repo/` carries a tiny BigBirdPegasus trained in minutes on CPU to do the simplest useful summary: copy a
document's lead sentence (the first sentence of its first paragraph, skipping a title line; a very short first
sentence brings the second along). Copying is what a small encoder-decoder learns quickly, and it exercises every
part of the model: block-sparse encoder, cross-attention, generation.

Training documents come from the package's small corpus: single paragraphs (full attention) and runs of consecutive
paragraphs of 150-1500 tokens (block-sparse attention). Half of them have their words shuffled within each
sentence and some words replaced by made-up ones, so the model cannot recite memorized sentences and must learn to
copy from its input.

Training is deterministic: fixed seeds and one CPU thread. Bit-exact weights also need the same torch version and
CPU kind, which is why `hub_repo/` is rebuilt from its committed weights (`weights_from`) rather than retrained:

    python -m bigbird_pegasus_hub.bundled hub_repo            # refresh code, tokenizer and card; keep the weights
    python -m bigbird_pegasus_hub.bundled hub_repo --retrain  # train new weights (a few minutes)
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import re
import string
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .plugin.configuration_bigbird_pegasus import BigBirdPegasusConfig
from .plugin import modeling_bigbird_pegasus as modeling
from .plugin.modeling_bigbird_pegasus import BigBirdPegasusForConditionalGeneration
from .repo import WEIGHTS_FILE, build_repo, model_from_weights
from .tokenizer import bundled_corpus_path, encode_newlines, train_pegasus_tokenizer

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
    dropout=0.1,
)

TRAIN_STEPS = 1200
LEARNING_RATE = 2e-3
WARMUP_STEPS = 100
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
POSITION_INIT_SCALE = 0.25  # token embeddings start at 0.02 * sqrt(d_model) = 0.16 per dimension
TOKENS_PER_STEP = 2048  # input tokens per batch (a single paragraph batch is smaller)

# Half the steps train on single paragraphs (below 145 tokens: full attention), half on runs of paragraphs.
LONG_DOCUMENT_SHARE = 0.5
LONG_DOCUMENT_TOKENS = (150, 1500)
PARAGRAPHS_PER_SHORT_BATCH = 16
TITLE_START_SHARE = 0.3  # documents that begin with an article's title line, like the example document
SCRAMBLE_SHARE = 0.5
MADE_UP_WORD_SHARE = 0.15

LEAD_MIN_WORDS = 10  # a shorter first sentence says too little: take the second one too
LEAD_MAX_TOKENS = 64  # longer leads are cut (few corpus sentences are this long)

# Articles kept out of training, to check that the model copies text it has never seen.
HELD_OUT_TITLES = ("Tea", "Lighthouses", "Cities")

# The paper's decoding settings (repo.PAPER_GENERATION) with two changes for a model that copies a lead: stop after
# the longest lead it was trained on, and allow repeated trigrams (a sentence copied verbatim may repeat one).
DEMO_GENERATION = dict(max_length=LEAD_MAX_TOKENS + 2, no_repeat_ngram_size=0)

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


def held_out_paragraphs() -> list[str]:
    """Corpus paragraphs the demo model never saw in training."""
    return [paragraph for article in read_articles() if article.title in HELD_OUT_TITLES
            for paragraph in article.paragraphs]


def split_sentences(paragraph: str) -> list[str]:
    return _SENTENCE_END.split(paragraph.strip())


def lead(paragraph: str) -> str:
    """The summary the demo model learns: the paragraph's first sentence, with the next ones while it is shorter
    than LEAD_MIN_WORDS words."""
    return " ".join(lead_sentences(split_sentences(paragraph)))


def lead_sentences(sentences: list[str]) -> list[str]:
    taken = sentences[:1]
    for sentence in sentences[1:]:
        if len(" ".join(taken).split()) >= LEAD_MIN_WORDS:
            break
        taken.append(sentence)
    return taken


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
        self.rng = rng

    def sample(self, min_tokens: int = 0) -> tuple[str, str]:
        """A document of at least `min_tokens` tokens (roughly: augmentation changes the count a little) that holds
        at least one whole paragraph, and its lead."""
        starts = self.title_starts if self.rng.random() < TITLE_START_SHARE else self.paragraph_starts
        index = self.rng.choice(starts)
        lines, tokens = [], 0
        while tokens < min_tokens or all(line.is_title for line in lines):
            lines.append(self.lines[index % len(self.lines)])
            tokens += self.line_tokens[index % len(self.lines)]
            index += 1
        if self.rng.random() < SCRAMBLE_SHARE:
            lines = [Line(tuple(map(self.scramble, line.sentences)), line.is_title) for line in lines]
        first_paragraph = next(line for line in lines if not line.is_title)
        return "\n".join(line.text for line in lines), " ".join(lead_sentences(list(first_paragraph.sentences)))

    def scramble(self, sentence: str) -> str:
        """Shuffles the words of a sentence (keeping its final punctuation) and swaps some for made-up words: text
        the model cannot have memorized, so it learns to copy."""
        ending = _TRAILING_PUNCTUATION.search(sentence)
        words = sentence[: ending.start()].split() if ending else sentence.split()
        self.rng.shuffle(words)
        words = [self.made_up_word() if self.rng.random() < MADE_UP_WORD_SHARE else word for word in words]
        return " ".join(words) + (ending.group() if ending else "")

    def made_up_word(self) -> str:
        word = "".join(self.rng.choices(string.ascii_lowercase, k=self.rng.randint(2, 10)))
        return word.capitalize() if self.rng.random() < 0.3 else word


def batches(sampler: DocumentSampler, tokenizer: PreTrainedTokenizerBase, rng: random.Random) -> Iterator[dict]:
    """Endless model inputs: a batch of single paragraphs or a batch of long documents, about TOKENS_PER_STEP
    input tokens each."""
    while True:
        if rng.random() < LONG_DOCUMENT_SHARE:
            min_tokens = rng.randint(*LONG_DOCUMENT_TOKENS)
            examples = [sampler.sample(min_tokens) for _ in range(max(1, TOKENS_PER_STEP // min_tokens))]
        else:
            examples = [sampler.sample() for _ in range(PARAGRAPHS_PER_SHORT_BATCH)]
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
    tokenizer: str | Path | None = None,
    log_every: int = 100,
) -> BigBirdPegasusForConditionalGeneration:
    """Trains the demo model (a few minutes on CPU) and returns it in eval mode.

    Args:
        steps: optimizer steps.
        seed: seeds the initialization, dropout and the sampled documents.
        tokenizer: a folder of the bundled tokenizer (`train_pegasus_tokenizer(bundled_corpus_path(), folder)`);
            trained afresh when omitted.
        log_every: log the mean loss every this many steps.

    The same seed, torch version and CPU kind give bit-identical weights: training runs on one CPU thread, whose
    kernels always sum in the same order.
    """
    with _tokenizer_folder(tokenizer) as folder:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    if len(tokenizer) != BUNDLED_CONFIG["vocab_size"]:
        raise ValueError(f"The tokenizer has {len(tokenizer)} ids, but BUNDLED_CONFIG expects "
                         f"{BUNDLED_CONFIG['vocab_size']}: train it with train_pegasus_tokenizer(bundled_corpus_path(), "
                         "folder) and its default vocab_size.")
    with _single_thread(), _quiet(modeling.logger):
        torch.manual_seed(seed)
        model = BigBirdPegasusForConditionalGeneration(BigBirdPegasusConfig(**BUNDLED_CONFIG))
        if POSITION_INIT_SCALE:
            _init_positions_sinusoidal(model, POSITION_INIT_SCALE)
        rng = random.Random(seed)
        sampler = DocumentSampler(training_articles(), tokenizer, rng)
        _optimize(model, batches(sampler, tokenizer, rng), steps, log_every)
    return model.eval()


def _init_positions_sinusoidal(model: BigBirdPegasusForConditionalGeneration, scale: float) -> None:
    """Starts the learned position embeddings of encoder and decoder from Pegasus' sinusoidal table. Relative offsets
    are linear maps of sinusoidal codes, which makes "attend to the next token" quick to learn, and positions that
    no training document reaches still get meaningful codes."""
    for embedding in (model.model.encoder.embed_positions, model.model.decoder.embed_positions):
        positions, dim = embedding.weight.shape
        angles = torch.arange(positions)[:, None] / 10000 ** (torch.arange(0, dim, 2) / dim)
        with torch.no_grad():
            embedding.weight.copy_(scale * torch.cat([angles.sin(), angles.cos()], dim=1))


def _optimize(model, batch_stream: Iterator[dict], steps: int, log_every: int) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _learning_rate_factor(step, steps))
    model.train()
    losses, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        loss = model(**next(batch_stream)).loss
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
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


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
def _tokenizer_folder(tokenizer: str | Path | None):
    if tokenizer is not None:
        yield Path(tokenizer)
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
            model = train_demo_model(steps=steps, seed=seed, tokenizer=tokenizer_dir)
        return build_repo(out_dir, model=model, tokenizer=tokenizer_dir, generation_config=DEMO_GENERATION,
                          description=description(model), overwrite=True)


def description(model: BigBirdPegasusForConditionalGeneration) -> str:
    """The model card's account of these weights. The step count is stored in the config, so that a rebuild from
    the committed weights writes the same card."""
    parameters = sum(parameter.numel() for parameter in model.parameters())
    steps = getattr(model.config, "demo_training_steps", None)
    trained = f"trained for {steps} steps" if steps else "trained"
    return (
        f"**A demo model, not a summarizer for real use.** These are the weights of a {parameters / 1e6:.1f}M-parameter "
        f"BigBirdPegasus {trained} on CPU, on the plugin package's small corpus (about 20,000 tokens), to copy a "
        "document's lead sentence: the first sentence of its first paragraph, skipping a title line. They exist so "
        "that this repo's code, tokenizer and pipeline can be tried end to end in seconds, with readable output; "
        "they know nothing about summarizing. For real summaries convert a released checkpoint (such as "
        "`google/bigbird-pegasus-large-arxiv`) or upgrade an existing Hub repo with the `bigbird-pegasus` command "
        "line. Rebuild or retrain this repo with `python -m bigbird_pegasus_hub.bundled OUT_DIR [--retrain]`."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bigbird_pegasus_hub.bundled",
        description="Build the project's demo Hub repo. Reuses OUT_DIR's weights when it has them, unless --retrain.",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--retrain", action="store_true", help="train new weights (a few minutes on CPU)")
    parser.add_argument("--steps", type=int, default=TRAIN_STEPS, help="training steps with --retrain")
    parser.add_argument("--seed", type=int, default=0, help="training seed with --retrain")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    has_weights = (args.out_dir / WEIGHTS_FILE).is_file()
    weights_from = args.out_dir if has_weights and not args.retrain else None
    logger.info("Reusing the weights of %s", weights_from) if weights_from else logger.info("Training the demo model")
    out_dir = build_bundled_repo(args.out_dir, weights_from=weights_from, steps=args.steps, seed=args.seed)
    logger.info("Wrote %s", out_dir)


if __name__ == "__main__":
    main()
