"""`bigbird-pegasus evaluate` through the console script, checked against rouge_score called directly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rouge_score import rouge_scorer, scoring
from test_cli import Run, assert_fails_clearly, assert_succeeds, run_side_by_side

from bigbird_pegasus_hub.rouge import ROUGE_TYPES, bootstrap_intervals, document_scores, mean_scores

# A hand-made example: stemming (cats/cat, barked/barks), Pegasus' <n> as a sentence break, an empty prediction.
PREDICTIONS = {
    "a": "The cats were sitting on mats. <n> They slept all day.",
    "b": "A dog barked loudly at the mailman.",
    "c": "Rain fell over the northern hills.\nRivers rose.",
    "d": "",
}
REFERENCES = {
    "a": "The cat sat on the mat.\nIt slept.",
    "b": "The dog barks at the postman every morning.",
    "c": "Heavy rain fell in the hills, and the rivers rose quickly.",
    "d": "Nothing was predicted for this one.",
}


def rouge_score_directly(prediction: str, reference: str) -> dict[str, float]:
    """rouge_score as Google's evaluation calls it, with the line breaks written out by hand."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    prediction = prediction.replace(" <n> ", "\n")
    return {name: score.fmeasure for name, score in scorer.score(reference, prediction).items()}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("evaluate")
    predictions = [{"id": id_, "summary": text} for id_, text in PREDICTIONS.items()]
    references = [{"id": id_, "abstract": text} for id_, text in reversed(REFERENCES.items())]  # another order
    both = [{"summary": PREDICTIONS[id_], "abstract": REFERENCES[id_]} for id_ in PREDICTIONS]  # ids: row numbers
    other_ids = [{"id": id_ if id_ != "d" else "e", "abstract": text} for id_, text in REFERENCES.items()]
    repeated = predictions + [{"id": "b", "summary": "Another summary of b."}]
    broken = folder / "broken.parquet"
    broken.write_bytes(b"PAR1" + b"\0" * 100)  # a Parquet header and nothing of the rest
    existing = folder / "existing.json"
    existing.write_text("{}\n", encoding="utf-8")
    return {
        "repeated": write_jsonl(folder / "repeated.jsonl", repeated),
        "broken": broken,
        "existing": existing,
        "predictions": write_jsonl(folder / "predictions.jsonl", predictions),
        "references": write_jsonl(folder / "references.jsonl", references),
        "both": write_jsonl(folder / "both.jsonl", both),
        "other_ids": write_jsonl(folder / "other_ids.jsonl", other_ids),
        "folder": folder,
    }


@pytest.fixture(scope="module")
def evaluations(files) -> dict:
    folder = files["folder"]
    common = ("--reference-column", "abstract", "--samples", "300", "--seed", "7")
    return run_side_by_side({
        "pair": Run(("evaluate", "--predictions", files["predictions"], "--references", files["references"], *common,
                     "--output", folder / "scores.json", "--per-document")),
        "one_file": Run(("evaluate", "--predictions", files["both"], *common, "--output", folder / "one.json")),
        "other_ids": Run(("evaluate", "--predictions", files["predictions"], "--references", files["other_ids"],
                          *common, "--output", folder / "never.json")),
        "missing_column": Run(("evaluate", "--predictions", files["predictions"], "--references",
                               files["references"])),
        "per_document_without_output": Run(("evaluate", "--predictions", files["both"], "--reference-column",
                                            "abstract", "--per-document")),
        "repeated_ids": Run(("evaluate", "--predictions", files["repeated"], "--references", files["references"],
                             *common, "--output", folder / "never.json")),
        "unreadable": Run(("evaluate", "--predictions", files["broken"], "--references", files["references"],
                           *common, "--output", folder / "never.json")),
        "existing_output": Run(("evaluate", "--predictions", files["both"], *common, "--output", files["existing"])),
    })


def test_scores_equal_rouge_score_called_directly(evaluations, files):
    result = evaluations["pair"]
    assert_succeeds(result)
    scores = json.loads((files["folder"] / "scores.json").read_text())
    expected = {id_: rouge_score_directly(PREDICTIONS[id_], REFERENCES[id_]) for id_ in PREDICTIONS}
    assert scores["documents"] == 4
    assert {row["id"]: {name: row[name] for name in ROUGE_TYPES} for row in scores["per_document"]} == expected
    for name in ROUGE_TYPES:
        mean = sum(document[name] for document in expected.values()) / 4
        assert scores["rouge"][name]["f1"] == pytest.approx(mean, abs=1e-12)
        assert scores["rouge"][name]["low"] <= mean <= scores["rouge"][name]["high"]
    assert 0 < expected["a"]["rouge1"] < 1 and expected["d"]["rouge1"] == 0  # stemming helps; empty scores 0
    assert scores["settings"]["bootstrap"] == {"samples": 300, "confidence": 0.95, "seed": 7}
    table = result.stdout.splitlines()
    assert table[0].startswith("ROUGE F1 x 100 over 4 document(s)") and table[2].split()[0] == "rouge1"
    assert float(table[2].split()[1]) == pytest.approx(100 * scores["rouge"]["rouge1"]["f1"], abs=0.006)


def test_one_file_with_both_columns_pairs_by_row(evaluations, files):
    assert_succeeds(evaluations["one_file"])
    one = json.loads((files["folder"] / "one.json").read_text())
    pair = json.loads((files["folder"] / "scores.json").read_text())
    assert one["rouge"] == pair["rouge"]  # same documents, same seed: same scores and intervals
    assert "per_document" not in one


def test_different_ids_are_one_clear_line(evaluations, files):
    line = assert_fails_clearly(evaluations["other_ids"], "bigbird-pegasus evaluate: error:",
                                "different ids", "1 only in predictions.jsonl (e.g. 'd')",
                                "1 only in other_ids.jsonl (e.g. 'e')")
    assert line and not (files["folder"] / "never.json").exists()


def test_missing_reference_column_lists_the_columns(evaluations):
    assert_fails_clearly(evaluations["missing_column"], "has no column 'reference' (--reference-column)",
                         "'id', 'abstract'")


def test_repeated_ids_are_one_clear_line(evaluations, files):
    assert_fails_clearly(evaluations["repeated_ids"], "repeated.jsonl repeats 1 id(s) in column 'id' (e.g. 'b')")
    assert not (files["folder"] / "never.json").exists()


def test_an_unreadable_parquet_file_is_one_clear_line(evaluations, files):
    assert_fails_clearly(evaluations["unreadable"], "broken.parquet cannot be read as PARQUET")
    assert not (files["folder"] / "never.json").exists()


def test_an_existing_output_is_kept_without_overwrite(evaluations, files):
    assert_fails_clearly(evaluations["existing_output"], "existing.json already exists", "--overwrite")
    assert files["existing"].read_text(encoding="utf-8") == "{}\n"
    assert sorted(path.name for path in files["folder"].iterdir() if path.name.startswith(".")) == []


def test_per_document_scores_need_an_output_file(evaluations):
    assert_fails_clearly(evaluations["per_document_without_output"], "--per-document", "--output")


# ----------------------------------------------------------------------------------------------------------------
# The bootstrap.


@pytest.fixture(scope="module")
def many_scores() -> list[dict[str, float]]:
    generator = np.random.default_rng(0)
    return [{name: float(value) for name, value in zip(ROUGE_TYPES, generator.beta(4, 6, size=3))} for _ in range(60)]


def test_bootstrap_interval_holds_the_mean_and_repeats_with_its_seed(many_scores):
    intervals = bootstrap_intervals(many_scores, samples=500, seed=3)
    means = mean_scores(many_scores)
    for name in ROUGE_TYPES:
        low, high = intervals[name]
        assert low < means[name] < high
        assert high - low < 0.2
    assert bootstrap_intervals(many_scores, samples=500, seed=3) == intervals
    assert bootstrap_intervals(many_scores, samples=500, seed=4) != intervals


def test_bootstrap_leaves_numpy_global_generator_alone(many_scores):
    np.random.seed(123)
    state = np.random.get_state()
    bootstrap_intervals(many_scores, samples=50, seed=0)
    after = np.random.get_state()
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b for a, b in zip(state, after))


def test_bootstrap_agrees_with_rouge_score_aggregator(many_scores):
    """rouge_score's BootstrapAggregator (global generator, seeded here) resamples the same way: the intervals of
    2000 resamples agree to sampling noise."""
    aggregator = scoring.BootstrapAggregator(confidence_interval=0.95, n_samples=2000)
    for score in many_scores:
        aggregator.add_scores({name: scoring.Score(0.0, 0.0, score[name]) for name in ROUGE_TYPES})
    np.random.seed(0)
    theirs = aggregator.aggregate()
    ours = bootstrap_intervals(many_scores, samples=2000, seed=0)
    for name in ROUGE_TYPES:
        assert ours[name][0] == pytest.approx(theirs[name].low.fmeasure, abs=0.006)
        assert ours[name][1] == pytest.approx(theirs[name].high.fmeasure, abs=0.006)


def test_document_scores_pair_up_by_position():
    scores = document_scores(["a b c", "x"], ["a b c", "y"])
    assert scores[0]["rouge1"] == 1.0 and scores[1]["rouge1"] == 0.0
