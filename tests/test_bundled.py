"""The committed demo repo `hub_repo/`: rebuilt from its own weights it comes out the same, and its model writes the
exact lead of the example document and of documents it never saw in training."""

import json
from pathlib import Path

import pytest
from transformers import GenerationConfig

from bigbird_pegasus_hub.bundled import (
    EXAMPLE_DOCUMENT,
    HELD_OUT_TITLES,
    build_bundled_repo,
    example_document_lead,
    lead,
    read_articles,
)
from bigbird_pegasus_hub.plugin.configuration_bigbird_pegasus import BigBirdPegasusConfig
from bigbird_pegasus_hub.repo_files import CODE_FILES, TOKENIZER_FILES, WEIGHTS_FILE
from bigbird_pegasus_hub.summarize import load_summarizer

ROOT = Path(__file__).resolve().parents[1]
HUB_REPO = ROOT / "hub_repo"
PLUGIN_DIR = ROOT / "plugin"
REBUILD_HINT = "hub_repo/ is out of date: refresh it with `python -m bigbird_pegasus_hub.bundled hub_repo`"

# Written by whichever transformers saves the file, so they differ between 4.57 and 5.x.
VERSION_DEPENDENT_KEYS = {"transformers_version", "dtype", "torch_dtype"}
# 4.57 leaves out settings at their default value, 5.x writes some of them (tie_word_embeddings, ...).
DEFAULTS = {"config.json": BigBirdPegasusConfig().to_dict(), "generation_config.json": GenerationConfig().to_dict()}


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory) -> Path:
    assert (HUB_REPO / WEIGHTS_FILE).is_file(), (
        "hub_repo/ has no weights: train them with `python -m bigbird_pegasus_hub.bundled hub_repo --retrain`"
    )
    return build_bundled_repo(tmp_path_factory.mktemp("rebuilt") / "hub_repo", weights_from=HUB_REPO)


def file_names(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


def comparable_json(path: Path) -> dict:
    """The settings of a saved config, without those that depend on the transformers version that saved it."""
    content = json.loads(path.read_text(encoding="utf-8"))
    defaults = DEFAULTS[path.name]
    return {key: value for key, value in content.items()
            if key not in VERSION_DEPENDENT_KEYS and not (key in defaults and defaults[key] == value)}


def test_rebuild_writes_the_same_files(rebuilt):
    assert file_names(rebuilt) == file_names(HUB_REPO), REBUILD_HINT


@pytest.mark.parametrize("name", [WEIGHTS_FILE, *TOKENIZER_FILES, *CODE_FILES, "README.md"])
def test_rebuilt_file_is_byte_identical(rebuilt, name):
    assert (rebuilt / name).read_bytes() == (HUB_REPO / name).read_bytes(), f"{name} differs. {REBUILD_HINT}"


@pytest.mark.parametrize("name", ["config.json", "generation_config.json"])
def test_rebuilt_json_matches_apart_from_version_dependent_keys(rebuilt, name):
    assert comparable_json(rebuilt / name) == comparable_json(HUB_REPO / name), REBUILD_HINT


def test_every_python_file_is_checked_byte_for_byte():
    assert {path.name for path in HUB_REPO.glob("*.py")} == set(CODE_FILES)


def test_shipped_code_is_the_plugin_code():
    shipped = {path.name for path in PLUGIN_DIR.glob("*.py")} - {"__init__.py"}
    assert shipped == set(CODE_FILES)
    for name in shipped:
        assert (HUB_REPO / name).read_bytes() == (PLUGIN_DIR / name).read_bytes(), f"{name} differs. {REBUILD_HINT}"


def held_out_documents() -> dict[str, tuple[str, str]]:
    """Documents the demo model never saw in training, and their leads: each held-out article as a titled document of
    several paragraphs (like the example document; block-sparse attention), and each of its paragraphs alone."""
    documents = {}
    for article in read_articles():
        if article.title in HELD_OUT_TITLES:
            text = "\n\n".join((article.title, *article.paragraphs))
            documents[article.title] = (text, lead(article.paragraphs[0], article.title))
            for index, paragraph in enumerate(article.paragraphs):
                documents[f"{article.title} {index + 1}"] = (paragraph, lead(paragraph))
    return documents


HELD_OUT = held_out_documents()


@pytest.fixture(scope="module")
def summarizer():
    return load_summarizer(HUB_REPO)


def test_model_writes_the_lead_of_the_example_document(summarizer):
    (summary,) = summarizer.summarize([EXAMPLE_DOCUMENT.read_text(encoding="utf-8")])
    assert summary.text == example_document_lead()
    assert summary.text.startswith("The Return of the Marsh: How a River Valley Brought Back Its Wetlands\n"
                                   "For most of the twentieth century, the lower valley of the Alder River")


@pytest.mark.parametrize("name", sorted(HELD_OUT))
def test_model_writes_the_lead_of_a_document_it_never_saw(summarizer, name):
    document, expected = HELD_OUT[name]
    (summary,) = summarizer.summarize([document])
    assert summary.text == expected
