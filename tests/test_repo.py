"""Plugin repos: the builder, Auto-class loading, the summarization pipeline, and the bundled hub_repo."""

import filecmp
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, pipeline

from bigbird_pegasus_hub.atomic import OutputError
from bigbird_pegasus_hub.plugin import modeling_bigbird_pegasus as ours
from bigbird_pegasus_hub.repo import CODE_FILES, RepoError, build_repo, check_repo
from tiny import random_inputs, tiny_config, tiny_repo

ROOT = Path(__file__).resolve().parents[1]
AUTO_CLASSES = {
    "AutoModel": "BigBirdPegasusModel",
    "AutoModelForSeq2SeqLM": "BigBirdPegasusForConditionalGeneration",
    "AutoModelForCausalLM": "BigBirdPegasusForCausalLM",
    "AutoModelForSequenceClassification": "BigBirdPegasusForSequenceClassification",
    "AutoModelForQuestionAnswering": "BigBirdPegasusForQuestionAnswering",
}
LONG_TEXT = " ".join(["The river rose slowly through the night while the town slept."] * 40)


@pytest.fixture(scope="module")
def built_repo(tmp_path_factory, tokenizer_dir):
    return tiny_repo(tmp_path_factory.mktemp("built") / "repo", tokenizer_dir)


def repos_under_test(built_repo):
    repos = [built_repo]
    if (ROOT / "hub_repo" / "config.json").exists():
        repos.append(ROOT / "hub_repo")
    return repos


def test_built_repo_has_every_file_and_the_plugin_code_verbatim(built_repo):
    check_repo(built_repo)
    for name in CODE_FILES:
        assert filecmp.cmp(built_repo / name, ROOT / "plugin" / name, shallow=False), name
    config = json.loads((built_repo / "config.json").read_text())
    assert config["model_type"] == "bigbird_pegasus"
    assert config["auto_map"]["AutoConfig"] == "configuration_bigbird_pegasus.BigBirdPegasusConfig"
    for auto_class, name in AUTO_CLASSES.items():
        assert config["auto_map"][auto_class] == f"modeling_bigbird_pegasus.{name}"
    assert config["custom_pipelines"]["summarization"]["impl"].startswith("pipeline_bigbird_pegasus.")
    generation = json.loads((built_repo / "generation_config.json").read_text())
    assert (generation["num_beams"], generation["length_penalty"], generation["max_length"]) == (5, 0.8, 256)
    card = (built_repo / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: summarization" in card and "code_revision=" in card
    assert not (built_repo / "pytorch_model.bin").exists()


@pytest.mark.parametrize("auto_class", sorted(AUTO_CLASSES))
def test_every_auto_class_loads_our_code(built_repo, auto_class):
    for repo in repos_under_test(built_repo):
        model = getattr(transformers, auto_class).from_pretrained(repo, trust_remote_code=True)
        assert type(model).__name__ == AUTO_CLASSES[auto_class]
        assert type(model).__module__.startswith("transformers_modules.")  # the repo's code, not the built-in
    assert type(AutoConfig.from_pretrained(built_repo, trust_remote_code=True)).__module__.startswith(
        "transformers_modules.")


def test_weights_survive_a_save_load_round_trip(built_repo, tmp_path):
    model = AutoModelForSeq2SeqLM.from_pretrained(built_repo, trust_remote_code=True)
    model.save_pretrained(tmp_path / "again")
    again = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "again", trust_remote_code=True)
    reference = ours.BigBirdPegasusForConditionalGeneration.from_pretrained(built_repo)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    # save_pretrained carries the code, the pipeline included (it follows the modeling file's relative imports).
    for name in CODE_FILES:
        assert (tmp_path / "again" / name).is_file(), name


def test_summarization_pipeline_from_the_repo(built_repo):
    for repo in repos_under_test(built_repo):
        summarizer = pipeline("summarization", model=str(repo), trust_remote_code=True)
        result = summarizer(LONG_TEXT, max_new_tokens=8, num_beams=2)
        assert isinstance(result[0]["summary_text"], str)


def test_without_remote_code_the_builtin_class_loads_the_same_weights(built_repo):
    builtin = AutoModelForSeq2SeqLM.from_pretrained(built_repo)
    assert type(builtin) is transformers.BigBirdPegasusForConditionalGeneration
    model = ours.BigBirdPegasusForConditionalGeneration.from_pretrained(built_repo)
    for name, tensor in model.state_dict().items():
        assert torch.equal(builtin.state_dict()[name], tensor), name
    # Outputs agree where the implementations do (full attention on short inputs).
    input_ids, attention_mask = random_inputs(length=100, vocab=1000)
    with torch.no_grad():
        expected = builtin.eval()(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=input_ids[:, :5])
        actual = model.eval()(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=input_ids[:, :5])
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-5, rtol=0)


def test_builder_from_config_and_safetensors(built_repo, tokenizer_dir, tmp_path):
    rebuilt = build_repo(tmp_path / "rebuilt", config=built_repo / "config.json",
                         state_dict=built_repo / "model.safetensors", tokenizer=tokenizer_dir)
    assert filecmp.cmp(rebuilt / "model.safetensors", built_repo / "model.safetensors", shallow=False)
    assert AutoTokenizer.from_pretrained(rebuilt)("Hello world").input_ids == \
        AutoTokenizer.from_pretrained(built_repo)("Hello world").input_ids


def leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder))


def test_builder_errors_leave_nothing_behind(built_repo, tokenizer_dir, tmp_path):
    model = ours.BigBirdPegasusForConditionalGeneration.from_pretrained(built_repo)
    with pytest.raises(RepoError, match="tokenizer"):
        build_repo(tmp_path / "a", model=model, tokenizer=None)
    with pytest.raises(RepoError, match="tokenizer_config.json"):
        build_repo(tmp_path / "b", model=model, tokenizer=tmp_path)
    with pytest.raises(OutputError, match="already exists"):
        build_repo(tmp_path, model=model, tokenizer=tokenizer_dir)
    with pytest.raises(RepoError, match="do not fit"):
        build_repo(tmp_path / "c", config=built_repo / "config.json", state_dict={"x": torch.zeros(1)},
                   tokenizer=tokenizer_dir)
    assert leftovers(tmp_path) == []


def test_overwrite_replaces_only_when_complete(built_repo, tokenizer_dir, tmp_path):
    target = tmp_path / "repo"
    target.mkdir()
    (target / "old.txt").write_text("old")
    model = ours.BigBirdPegasusForConditionalGeneration.from_pretrained(built_repo)
    with pytest.raises(RepoError):
        build_repo(target, model=model, tokenizer=None, overwrite=True)
    assert leftovers(tmp_path) == ["repo"] and (target / "old.txt").exists()
    build_repo(target, model=model, tokenizer=tokenizer_dir, overwrite=True)
    assert not (target / "old.txt").exists() and leftovers(tmp_path) == ["repo"]


def test_check_repo_names_what_is_missing(built_repo, tmp_path):
    with pytest.raises(RepoError, match="no config.json"):
        check_repo(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bigbird_pegasus"}))
    with pytest.raises(RepoError, match="no auto_map"):
        check_repo(tmp_path)
    (tmp_path / "config.json").write_text((built_repo / "config.json").read_text())
    with pytest.raises(RepoError, match="modeling_bigbird_pegasus.py"):
        check_repo(tmp_path)


def test_builder_accepts_a_sentencepiece_model(built_repo, tokenizer_dir, tmp_path):
    model = ours.BigBirdPegasusForConditionalGeneration.from_pretrained(built_repo)
    repo = build_repo(tmp_path / "from-spm", model=model, tokenizer=tokenizer_dir / "spiece.model")
    for name in ("spiece.model", "tokenizer.json", "tokenizer_config.json"):
        assert filecmp.cmp(repo / name, tokenizer_dir / name, shallow=False), name


# ----------------------------------------------------------------------------------------------------------------
# A wrong model is refused; the repo references our code only.


def test_config_file_given_is_the_one_read(built_repo, tokenizer_dir, tmp_path):
    """`build --config FILE` reads FILE, not config.json beside it (nor a default config when there is none)."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bigbird_pegasus", "d_model": 1024}))
    (tmp_path / "my-config.json").write_text((built_repo / "config.json").read_text())
    repo = build_repo(tmp_path / "repo", config=tmp_path / "my-config.json", state_dict=built_repo / "model.safetensors",
                      tokenizer=tokenizer_dir)
    assert json.loads((repo / "config.json").read_text())["d_model"] == 32


def test_non_finite_weights_are_refused_naming_them(built_repo, tokenizer_dir, tmp_path):
    model = ours.BigBirdPegasusForConditionalGeneration.from_pretrained(built_repo)
    with torch.no_grad():
        model.model.decoder.layers[1].fc2.bias[3] = float("inf")
        model.model.encoder.layers[0].self_attn.self.query.weight[0, 0] = float("nan")
    with pytest.raises(RepoError, match=r"NaN or infinite values in 2 tensor\(s\): "
                                        r"model.encoder.layers.0.self_attn.self.query.weight, "
                                        r"model.decoder.layers.1.fc2.bias"):
        build_repo(tmp_path / "repo", model=model, tokenizer=tokenizer_dir)
    assert leftovers(tmp_path) == []


def test_a_tokenizer_bigger_than_the_vocabulary_is_refused(tokenizer_dir, tmp_path):
    model = ours.BigBirdPegasusForConditionalGeneration(tiny_config(vocab_size=500))
    with pytest.raises(RepoError, match=r"has 1103 ids but the model's vocabulary has only 500"):
        build_repo(tmp_path / "repo", model=model, tokenizer=tokenizer_dir / "spiece.model")
    assert leftovers(tmp_path) == []


def test_a_tokenizer_auto_map_is_dropped_and_a_foreign_class_refused(built_repo, tokenizer_dir, tmp_path, caplog):
    model = ours.BigBirdPegasusForConditionalGeneration.from_pretrained(built_repo)
    source = Path(shutil.copytree(tokenizer_dir, tmp_path / "tokenizer"))
    config = json.loads((source / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["other/repo--tok.Slow", "other/repo--tok.Fast"]}
    (source / "tokenizer_config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="bigbird_pegasus_hub.repo"):
        repo = build_repo(tmp_path / "repo", model=model, tokenizer=source)
    assert "Dropped the auto_map" in caplog.text and "other/repo--tok" in caplog.text
    written = json.loads((repo / "tokenizer_config.json").read_text())
    assert written == {key: value for key, value in config.items() if key != "auto_map"}
    assert json.loads((repo / "config.json").read_text())["auto_map"] == ours.auto_map()

    (source / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "OtherTokenizer"}))
    with pytest.raises(RepoError, match=r"names the tokenizer class 'OtherTokenizer', which transformers does not "
                                        r"have"):
        build_repo(tmp_path / "again", model=model, tokenizer=source)


def test_a_source_config_auto_map_is_replaced_by_ours(built_repo, tokenizer_dir, tmp_path):
    config = json.loads((built_repo / "config.json").read_text())
    config["auto_map"] = {**config["auto_map"], "AutoModel": "other/repo--modeling.Evil", "AutoTokenizer": ["x--y.Z"]}
    config["tokenizer_class"] = "OtherTokenizer"
    repo = build_repo(tmp_path / "repo", config=config, state_dict=built_repo / "model.safetensors",
                      tokenizer=tokenizer_dir)
    written = json.loads((repo / "config.json").read_text())
    assert written["auto_map"] == ours.auto_map() and "tokenizer_class" not in written
