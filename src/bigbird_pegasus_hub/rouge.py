"""ROUGE as Google's Pegasus and BigBird evaluations compute it: rouge_score's ROUGE-1, ROUGE-2 and ROUGE-Lsum F1
with Porter stemming, where ROUGE-Lsum splits summaries into sentences at line breaks (Pegasus writes a line break
as its `<n>` token, which becomes one here).

Shared by `bigbird-pegasus evaluate` and the evaluation of `bigbird-pegasus finetune`. Needs the `rouge_score`
package (the `train` and `corpus` extras).
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
