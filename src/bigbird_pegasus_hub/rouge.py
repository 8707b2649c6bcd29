"""ROUGE as Google's Pegasus and BigBird evaluations compute it: rouge_score's ROUGE-1, ROUGE-2 and ROUGE-Lsum F1
with Porter stemming, where ROUGE-Lsum splits summaries into sentences at line breaks (Pegasus writes a line break
as its `<n>` token, which becomes one here).

Shared by `bigbird-pegasus evaluate` and the evaluation of `bigbird-pegasus finetune`; `bootstrap_intervals` adds
confidence intervals. Needs the `rouge_score` package (the `train` and `corpus` extras).
"""

from __future__ import annotations

from collections.abc import Sequence

ROUGE_TYPES = ("rouge1", "rouge2", "rougeLsum")
NEWLINE_TOKEN = "<n>"


def sentence_lines(summary: str) -> str:
    """The summary with one sentence group per line, as ROUGE-Lsum reads it: `<n>` and line breaks become one
    line break each (linear in the text's length)."""
    lines = (line.strip() for line in summary.replace(NEWLINE_TOKEN, "\n").splitlines())
    return "\n".join(line for line in lines if line)


def document_scores(predictions: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    """Per document, the F1 of each of ROUGE_TYPES (between 0 and 1), prediction i against reference i."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references: they must pair up.")
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    return [
        {name: score.fmeasure for name, score in scorer.score(sentence_lines(reference),
                                                              sentence_lines(prediction)).items()}
        for prediction, reference in zip(predictions, references)
    ]


def mean_scores(scores: Sequence[dict[str, float]]) -> dict[str, float]:
    """The corpus score of each ROUGE type: the mean of the documents' F1, as rouge_score's aggregators take it."""
    if not scores:
        raise ValueError("No documents to score.")
    return {name: sum(score[name] for score in scores) / len(scores) for name in ROUGE_TYPES}


# Resampled documents processed at once: bounds the bootstrap's memory (samples x documents x ROUGE types floats).
_BOOTSTRAP_CHUNK_ELEMENTS = 2**22


def bootstrap_intervals(
    scores: Sequence[dict[str, float]], *, samples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence interval of each ROUGE type's corpus score (the mean of the documents' F1).

    Draws `samples` resamples of the documents with replacement and takes the (1 - confidence) / 2 and
    (1 + confidence) / 2 percentiles of their means, as rouge_score's BootstrapAggregator does; but from a private
    generator seeded with `seed` (numpy.random.default_rng), not from numpy's global one, so the interval is
    reproducible and other code's random numbers are left alone.
    """
    import numpy as np

    if not scores:
        raise ValueError("No documents to score.")
    if samples < 1 or not 0 < confidence < 1:
        raise ValueError(f"Need samples >= 1 and 0 < confidence < 1, got samples={samples}, confidence={confidence}.")
    matrix = np.array([[score[name] for name in ROUGE_TYPES] for score in scores], dtype=np.float64)
    generator = np.random.default_rng(seed)
    means = np.empty((samples, len(ROUGE_TYPES)))
    step = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // (len(matrix) * len(ROUGE_TYPES)))
    for first in range(0, samples, step):
        count = min(step, samples - first)
        resampled = generator.integers(0, len(matrix), size=(count, len(matrix)))
        means[first : first + count] = matrix[resampled].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail], axis=0)
    return {name: (float(low[i]), float(high[i])) for i, name in enumerate(ROUGE_TYPES)}
