"""ROUGE as Google's evaluation computes it, checked against rouge_score called directly."""

import pytest
from rouge_score import rouge_scorer

from bigbird_pegasus_hub.rouge import ROUGE_TYPES, document_scores, mean_scores, sentence_lines


def test_newline_tokens_become_sentence_lines():
    assert sentence_lines("The cat sat. <n>  On the mat.\n\n  It slept. ") == "The cat sat.\nOn the mat.\nIt slept."


def test_scores_equal_rouge_score_with_stemming_and_newline_sentences():
    predictions = ["The cats were sitting. <n> They slept on mats.", "A dog barked loudly."]
    references = ["The cat sat on the mat.\nIt slept.", "The dog barks."]
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    expected = [
        {name: score.fmeasure for name, score in scorer.score(reference, prediction).items()}
        for prediction, reference in zip(
            ["The cats were sitting.\nThey slept on mats.", "A dog barked loudly."], references)
    ]
    scores = document_scores(predictions, references)
    assert scores == expected
    assert 0 < scores[0]["rougeLsum"] < 1  # stemming matched "cats"/"cat", "slept"; not everything
    assert mean_scores(scores)["rouge1"] == pytest.approx((expected[0]["rouge1"] + expected[1]["rouge1"]) / 2)


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="1 predictions but 2 references"):
        document_scores(["a"], ["a", "b"])


def test_sentence_lines_is_linear_on_a_megabyte_of_spaces():
    # A quadratic regex would take hours on this; linear code takes milliseconds (generous bound, no timing test).
    text = " " * 1_000_000 + "end"
    assert sentence_lines(text) == "end"
