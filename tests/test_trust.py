"""No foreign code rides along: a hostile checkpoint, upgraded and pushed, loads without running anyone's code but ours.

The hostile source is a "built-in" BigBirdPegasus checkpoint on the test Hub whose tokenizer_config.json (variant
"tokenizer") or config.json (variant "config") points `auto_map` at another Hub repo's module, which writes a marker
file when it is imported. Loading the source itself with `trust_remote_code=True` runs that module (the attack is
real); the plugin repo that `bigbird-pegasus upgrade` + `push` make of it references our code only, and loading it
by repo id (Auto classes and pipeline, `trust_remote_code=True`) never writes the marker.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import transformers
from huggingface_hub import HfApi
from test_cli import installed_script
from tiny import builtin_config, tiny_config

from bigbird_pegasus_hub.repo import RepoError, build_repo, check_repo
from bigbird_pegasus_hub.summarize import SummarizeError, load_summarizer, resolve_model

COMMIT_SHA = re.compile(r"\bcommit: ([0-9a-f]{40})\b")
DOCUMENT = "Bees dance to tell the hive where flowers are. The queen lays all the eggs."


def evil_module(marker: Path) -> str:
    """Python that writes `marker` as soon as it is imported, then offers classes for any Auto class."""
    return textwrap.dedent(f"""
        from pathlib import Path

        Path({str(marker)!r}).write_text("foreign code ran")

        from transformers import PreTrainedTokenizerFast, PretrainedConfig

        class EvilTokenizer(PreTrainedTokenizerFast):
            pass

        class EvilConfig(PretrainedConfig):
            model_type = "bigbird_pegasus"
    """)


@pytest.fixture
def evil_repo(hub, tmp_path) -> tuple[str, Path]:
    """A Hub repo whose `evil.py` writes a marker file when imported: (repo id, marker path)."""
    repo_id = "evil-user/evil-code"
    marker = tmp_path / "foreign-code-ran"
    HfApi().create_repo(repo_id)
    HfApi().upload_file(path_or_fileobj=evil_module(marker).encode(), path_in_repo="evil.py", repo_id=repo_id)
    return repo_id, marker


def hostile_source(folder: Path, tokenizer_dir: Path, vocab_size: int, evil: str, variant: str) -> Path:
    """A built-in checkpoint folder whose configs point at `evil`'s code."""
    config = builtin_config(tiny_config(vocab_size=vocab_size, max_position_embeddings=256))
    transformers.BigBirdPegasusForConditionalGeneration(config).save_pretrained(folder)
    for name in ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).write_bytes((tokenizer_dir / name).read_bytes())
    foreign_tokenizer = {"AutoTokenizer": [f"{evil}--evil.EvilTokenizer", None]}
    if variant == "tokenizer":
        edit_json(folder / "tokenizer_config.json", auto_map=foreign_tokenizer)  # its class stays PegasusTokenizer
    else:
        edit_json(folder / "config.json", tokenizer_class="EvilTokenizer", auto_map={
            "AutoConfig": f"{evil}--evil.EvilConfig", "AutoModelForSeq2SeqLM": f"{evil}--evil.EvilModel",
            **foreign_tokenizer,
        }, custom_pipelines={"summarization": {"impl": f"{evil}--evil.EvilPipeline", "pt": ["AutoModelForSeq2SeqLM"],
                                               "tf": [], "type": "text"}})
    return folder


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def fresh_cache(folder: Path) -> dict:
    """A Hub and module cache of its own: nothing a previous process downloaded or imported is reused."""
    return {"HF_HOME": str(folder), "HF_HUB_CACHE": str(folder / "hub"), "HF_MODULES_CACHE": str(folder / "modules")}


LOAD_SOURCE = textwrap.dedent("""
    import sys
    from transformers import AutoConfig, AutoTokenizer
    repo_id = sys.argv[1]
    for auto_class in (AutoTokenizer, AutoConfig):
        try:
            auto_class.from_pretrained(repo_id, trust_remote_code=True)
        except Exception:
            pass  # the foreign classes need not work: importing them is the attack
""")

LOAD_PLUGIN_REPO = textwrap.dedent("""
    import json, sys
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, pipeline
    repo_id, commit, document = sys.argv[1:4]
    model = AutoModelForSeq2SeqLM.from_pretrained(repo_id, trust_remote_code=True, revision=commit)
    tokenizer = AutoTokenizer.from_pretrained(repo_id, trust_remote_code=True, revision=commit)
    summarizer = pipeline("summarization", model=repo_id, trust_remote_code=True, revision=commit)
    summary = summarizer(document, max_new_tokens=4, num_beams=1)[0]["summary_text"]
    print(json.dumps({"model": type(model).__module__, "tokenizer": type(tokenizer).__module__,
                      "pipeline": type(summarizer).__module__, "summary": summary}))
""")


@pytest.mark.parametrize("variant", ["tokenizer", "config"])
def test_hostile_source_upgraded_and_pushed_runs_no_foreign_code(variant, evil_repo, hub, hub_repo_id, tmp_path,
                                                                 tokenizer_dir, tokenizer_size):
    evil, marker = evil_repo
    source = hostile_source(tmp_path / "source", tokenizer_dir, tokenizer_size, evil, variant)
    source_id = f"{hub_repo_id}-source"
    HfApi().create_repo(source_id)
    HfApi().upload_folder(repo_id=source_id, folder_path=source)

    # The attack is real: loading the source as it is imports the other repo's module.
    run(sys.executable, "-c", LOAD_SOURCE, source_id, env=fresh_cache(tmp_path / "attack-cache"))
    assert marker.exists()
    marker.unlink()

    upgraded = run(installed_script(), "upgrade", source_id, str(tmp_path / "plugin"))
    assert "Dropped" in upgraded.stderr  # said, not silent
    pushed = run(installed_script(), "push", str(tmp_path / "plugin"), hub_repo_id)
    (commit,) = COMMIT_SHA.findall(pushed.stdout)

    files = hub.files(hub_repo_id, revision=commit)
    for name, content in files.items():
        if name.endswith(".json"):
            assert evil not in content.decode() and "--" not in json.dumps(json.loads(content).get("auto_map", {})), name
    config = json.loads(files["config.json"])
    assert set(config["auto_map"].values()) <= {f"{Path(name).stem}.{cls}" for name in files if name.endswith(".py")
                                                for cls in re.findall(r"^class (\w+)", files[name].decode(), re.M)}
    assert "auto_map" not in json.loads(files["tokenizer_config.json"])
    assert "tokenizer_class" not in config or config["tokenizer_class"] == "PegasusTokenizer"

    loaded = json.loads(run(sys.executable, "-c", LOAD_PLUGIN_REPO, hub_repo_id, commit, DOCUMENT,
                            env=fresh_cache(tmp_path / "consumer-cache")).stdout.splitlines()[-1])
    assert loaded["model"].startswith("transformers_modules.") and "modeling_bigbird_pegasus" in loaded["model"]
    assert loaded["pipeline"].startswith("transformers_modules.") and "pipeline_bigbird_pegasus" in loaded["pipeline"]
    assert loaded["tokenizer"].startswith("transformers.")  # transformers' own tokenizer class
    assert not marker.exists(), "the other repo's code ran"


# ----------------------------------------------------------------------------------------------------------------
# check_repo, push and summarize refuse foreign references.


@pytest.fixture(scope="module")
def plugin_repo(tmp_path_factory, tokenizer_dir, tokenizer_size) -> Path:
    from bigbird_pegasus_hub.plugin.modeling_bigbird_pegasus import BigBirdPegasusForConditionalGeneration

    model = BigBirdPegasusForConditionalGeneration(tiny_config(vocab_size=tokenizer_size, max_position_embeddings=256))
    return build_repo(tmp_path_factory.mktemp("plugin") / "repo", model=model, tokenizer=tokenizer_dir)


@pytest.mark.parametrize(
    "file, changes, culprit",
    [
        ("config.json", {"auto_map": {"AutoConfig": "other/repo--configuration.Config"}}, "other/repo--configuration"),
        ("config.json", {"auto_map": {"AutoModel": "missing_module.Model"}}, "missing_module.Model"),
        ("config.json", {"auto_map": {"AutoModel": "../outside.Model"}}, "../outside.Model"),
        ("config.json", {"custom_pipelines": {"summarization": {"impl": "other/repo--pipe.Pipe"}}}, "other/repo--pipe"),
        ("tokenizer_config.json", {"auto_map": {"AutoTokenizer": [None, "other/repo--tok.Fast"]}}, "other/repo--tok"),
        ("preprocessor_config.json", {"auto_map": {"AutoProcessor": "other/repo--proc.P"}}, "other/repo--proc"),
    ],
)
def test_check_repo_refuses_references_to_code_outside_the_repo(plugin_repo, tmp_path, file, changes, culprit):
    import shutil

    repo = shutil.copytree(plugin_repo, tmp_path / "repo")
    path = repo / file
    content = json.loads(path.read_text()) if path.exists() else {}
    if file == "config.json" and "auto_map" in changes:
        changes = {"auto_map": {**content["auto_map"], **changes["auto_map"]}}
    path.write_text(json.dumps({**content, **changes}))
    with pytest.raises(RepoError, match=rf"{file} references code outside the repo .*{re.escape(culprit)}"):
        check_repo(repo)


def test_built_repo_references_exactly_our_code(plugin_repo):
    check_repo(plugin_repo)
    from bigbird_pegasus_hub.plugin import modeling_bigbird_pegasus as modeling

    assert json.loads((plugin_repo / "config.json").read_text())["auto_map"] == modeling.auto_map()
    assert "auto_map" not in json.loads((plugin_repo / "tokenizer_config.json").read_text())


def test_hub_repo_pointing_at_another_repos_code_is_refused_even_when_trusted(hub, hub_repo_id):
    HfApi().create_repo(hub_repo_id)
    config = {"model_type": "bigbird_pegasus", "auto_map": {"AutoConfig": "configuration_bigbird_pegasus.C",
                                                          "AutoModelForSeq2SeqLM": "evil/repo--evil.Model"}}
    HfApi().upload_file(path_or_fileobj=json.dumps(config).encode(), path_in_repo="config.json", repo_id=hub_repo_id)
    with pytest.raises(SummarizeError, match=r"another repo's code \(auto_map.AutoModelForSeq2SeqLM -> evil/repo--"):
        resolve_model(hub_repo_id, trust_remote_code=True)


def test_summarizer_loads_a_repos_tokenizer_without_remote_code(evil_repo, hub, hub_repo_id, plugin_repo, tmp_path):
    """A plugin repo whose tokenizer config was tampered with (uploaded around `push`) still gets transformers' own
    tokenizer class from `load_summarizer`, and the tampering's code never runs."""
    import shutil

    evil, marker = evil_repo
    repo = shutil.copytree(plugin_repo, tmp_path / "repo")
    edit_json(repo / "tokenizer_config.json", auto_map={"AutoTokenizer": [f"{evil}--evil.EvilTokenizer", None]})
    HfApi().create_repo(hub_repo_id)
    commit = HfApi().upload_folder(repo_id=hub_repo_id, folder_path=repo).oid
    summarizer = load_summarizer(hub_repo_id, revision=commit, trust_remote_code=True, device="cpu")
    assert type(summarizer.tokenizer).__module__.startswith("transformers.models.")
    (summary,) = summarizer.summarize(DOCUMENT, max_new_tokens=3, num_beams=1)
    assert isinstance(summary.text, str)
    assert not marker.exists()
