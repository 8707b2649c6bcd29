"""`bigbird-pegasus evaluate`: ROUGE of predicted summaries against reference summaries, as Google's evaluation of
Pegasus and BigBird computes it (`rouge.py`: rouge_score's ROUGE-1/2/Lsum F1, Porter stemming, `<n>` as a sentence
break), with percentile bootstrap 95% confidence intervals from a seeded private generator.

Predictions and references are JSONL, CSV or Parquet files (the output of `summarize --input` is one), paired by
their id column; a file without that column is paired by row number, which is the id `summarize` writes for a
corpus without ids. One file holding both columns serves as both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_output_file
from .corpus import EXAMPLES, CorpusError, check_input_path, read_columns, require_corpus_extra
from .rouge import ROUGE_TYPES, bootstrap_intervals, document_scores, mean_scores

__all__ = ["Evaluation", "evaluate_files", "read_pairs"]


@dataclass(frozen=True)
class Evaluation:
    """Corpus ROUGE F1 with its confidence interval, and optionally every document's scores."""

    documents: int
    scores: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    samples: int
    confidence: float
    seed: int
    per_document: list[dict] | None = None

    def to_json(self) -> dict:
        result = {
            "documents": self.documents,
            "rouge": {name: {"f1": self.scores[name], "low": self.intervals[name][0], "high": self.intervals[name][1]}
                      for name in ROUGE_TYPES},
            "settings": {"rouge_types": list(ROUGE_TYPES), "f1": True, "stemming": True,
                         "rougeLsum_sentences": "line breaks (Pegasus' <n> becomes one)",
                         "bootstrap": {"samples": self.samples, "confidence": self.confidence, "seed": self.seed}},
        }
        if self.per_document is not None:
            result["per_document"] = self.per_document
        return result

    def table(self) -> str:
        lines = [(f"ROUGE F1 x 100 over {self.documents} document(s), stemmed; {self.confidence:.0%} bootstrap "
                  f"interval ({self.samples} samples, seed {self.seed})"),
                 f"{'metric':<10} {'F1':>6} {'low':>6} {'high':>6}"]
        for name in ROUGE_TYPES:
            low, high = self.intervals[name]
            lines.append(f"{name:<10} {100 * self.scores[name]:6.2f} {100 * low:6.2f} {100 * high:6.2f}")
        return "\n".join(lines)


def evaluate_files(
    predictions: Path,
    references: Path | None = None,
    *,
    prediction_column: str = "summary",
    reference_column: str = "reference",
    id_column: str = "id",
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    per_document: bool = False,
) -> Evaluation:
    """Scores the predictions of `predictions` against the references of `references` (default: the same file)."""
    ids, predicted, reference = read_pairs(predictions, references, prediction_column=prediction_column,
                                           reference_column=reference_column, id_column=id_column)
    scores = document_scores(predicted, reference)
    rows = None
    if per_document:
        rows = [{"id": id_, **score} for id_, score in zip(ids, scores)]
    return Evaluation(len(scores), mean_scores(scores),
                      bootstrap_intervals(scores, samples=samples, confidence=confidence, seed=seed),
                      samples, confidence, seed, rows)


def read_pairs(
    predictions: Path, references: Path | None, *, prediction_column: str, reference_column: str, id_column: str
) -> tuple[list, list[str], list[str]]:
    """(ids, predictions, references), paired by id, in the order of the predictions.

    Raises:
        CorpusError: a file or column is missing, ids repeat, a text is missing, or the two files hold different ids.
    """
    require_corpus_extra("rouge_score")
    check_input_path(predictions)
    if references is None or Path(references) == Path(predictions):
        table = read_columns(predictions, {"--prediction-column": prediction_column,
                                           "--reference-column": reference_column}, optional=(id_column,))
        ids = _ids(table, id_column, predictions, len(table[prediction_column]))
        return ids, _texts(table[prediction_column], ids, "prediction"), _texts(table[reference_column], ids,
                                                                              "reference")
    check_input_path(references)
    predicted = _keyed(predictions, "--prediction-column", prediction_column, id_column, "prediction")
    referenced = _keyed(references, "--reference-column", reference_column, id_column, "reference")
    _check_same_ids(predicted, referenced, predictions, references)
    return list(predicted), list(predicted.values()), [referenced[id_] for id_ in predicted]


def _keyed(path: Path, option: str, column: str, id_column: str, what: str) -> dict:
    table = read_columns(path, {option: column}, optional=(id_column,))
    ids = _ids(table, id_column, path, len(table[column]))
    return dict(zip(ids, _texts(table[column], ids, what)))


def _ids(table: dict, id_column: str, path: Path, rows: int) -> list:
    ids = table.get(id_column, range(rows))
    seen, repeated = set(), []
    for id_ in ids:
        if id_ is None:
            raise CorpusError(f"{path.name}: a row has no id in column {id_column!r}: every row needs one.")
        if id_ in seen:
            repeated.append(id_)
        seen.add(id_)
    if repeated:
        raise CorpusError(f"{path.name} repeats {len(repeated)} id(s) in column {id_column!r} (e.g. {repeated[0]!r}): "
                          "every summary must name one document.")
    return list(ids)


def _texts(texts: list, ids: list, what: str) -> list[str]:
    for id_, text in zip(ids, texts):
        if not isinstance(text, str):
            raise CorpusError(f"Document {id_!r} has no {what} text (found {text!r}).")
    return texts


def _check_same_ids(predicted: dict, referenced: dict, predictions: Path, references: Path) -> None:
    only_predicted = [id_ for id_ in predicted if id_ not in referenced]
    only_referenced = [id_ for id_ in referenced if id_ not in predicted]
    if not only_predicted and not only_referenced:
        return
    problems = [f"{len(ids)} only in {path.name} (e.g. {', '.join(map(repr, ids[:EXAMPLES]))})"
                for ids, path in ((only_predicted, predictions), (only_referenced, references)) if ids]
    raise CorpusError(f"The predictions and the references have different ids: {'; '.join(problems)}. Score the "
                      "same documents (and give --id-column if the ids are in another column).")


def write_json(evaluation: Evaluation, path: Path, *, overwrite: bool = False) -> None:
    """Writes the evaluation as JSON, atomically (`atomic.atomic_output_file`)."""
    text = json.dumps(evaluation.to_json(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    with atomic_output_file(path, overwrite=overwrite) as temporary:
        temporary.write_text(text, encoding="utf-8")
