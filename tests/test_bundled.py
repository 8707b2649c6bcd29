"""The committed demo repo `hub_repo/`: rebuilt from its own weights it comes out the same, and its model is trained."""

import json
from pathlib import Path

import pytest
from transformers import GenerationConfig, pipeline

from bigbird_pegasus_hub.bundled import build_bundled_repo, held_out_paragraphs, split_sentences
from bigbird_pegasus_hub.plugin.configuration_bigbird_pegasus import BigBirdPegasusConfig
from bigbird_pegasus_hub.repo_files import CODE_FILES, TOKENIZER_FILES, WEIGHTS_FILE

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


def test_model_copies_the_lead_of_an_unseen_paragraph():
    paragraph = held_out_paragraphs()[0]
    summarizer = pipeline("summarization", model=str(HUB_REPO), trust_remote_code=True)
    summary = summarizer(paragraph)[0]["summary_text"]
    first_sentence = split_sentences(paragraph)[0]
    assert summary.split()[:4] == first_sentence.split()[:4], f"{summary!r} does not start like {first_sentence!r}"
