"""Pushing a plugin repo to a Hub (the local test server) and loading it back by repo id."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoTokenizer

from bigbird_pegasus_hub.hub import PushError, push_repo
from bigbird_pegasus_hub.plugin import modeling_bigbird_pegasus as ours
from bigbird_pegasus_hub.repo import CODE_FILES, RepoError
from tiny import tiny_repo

DOCUMENT = " ".join(["Snow fell across the valley and the roads were closed for two days."] * 30)


@pytest.fixture(scope="module")
def built_repo(tmp_path_factory, tokenizer_dir):
    return tiny_repo(tmp_path_factory.mktemp("push") / "repo", tokenizer_dir)


def local_outputs(folder):
    model = ours.BigBirdPegasusForConditionalGeneration.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(DOCUMENT, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=6, num_beams=2)
    return ids[0].tolist()


LOAD_BY_REPO_ID = textwrap.dedent("""
    import json, sys, torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, pipeline
    repo_id, commit, document = sys.argv[1:4]
    model = AutoModelForSeq2SeqLM.from_pretrained(repo_id, trust_remote_code=True, revision=commit).eval()
    tokenizer = AutoTokenizer.from_pretrained(repo_id, revision=commit)
    with torch.no_grad():
        ids = model.generate(**tokenizer(document, return_tensors="pt"), max_new_tokens=6, num_beams=2)
    summarizer = pipeline("summarization", model=repo_id, trust_remote_code=True, revision=commit)
    text = summarizer(document, max_new_tokens=6, num_beams=2)[0]["summary_text"]
    print(json.dumps({"module": type(model).__module__, "ids": ids[0].tolist(), "text": text}))
""")


def load_in_fresh_process(repo_id, commit, cache_dir):
    env = dict(os.environ, HF_HUB_CACHE=str(cache_dir), HF_HOME=str(cache_dir / "home"))
    result = subprocess.run([sys.executable, "-c", LOAD_BY_REPO_ID, repo_id, commit, DOCUMENT], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_push_then_load_by_repo_id_in_a_fresh_process(hub, hub_repo_id, built_repo, tmp_path):
    result = push_repo(built_repo, hub_repo_id, private=True, commit_message="First upload")
    assert len(result.commit_id) == 40
    assert f'revision="{result.commit_id}"' in result.loading_snippet()
    assert set(CODE_FILES) | {"model.safetensors", "config.json", "spiece.model"} <= set(
        hub.files(hub_repo_id, result.commit_id))

    loaded = load_in_fresh_process(hub_repo_id, result.commit_id, tmp_path / "empty-cache")
    assert loaded["module"].startswith("transformers_modules.")
    assert loaded["ids"] == local_outputs(built_repo)
    assert isinstance(loaded["text"], str)

    hub.clear_log()
    again = push_repo(built_repo, hub_repo_id)
    assert hub.lfs_uploads() == [] and again.commit_id == result.commit_id  # nothing new to upload


def test_branch_and_pull_request(hub, hub_repo_id, built_repo):
    main = push_repo(built_repo, hub_repo_id)
    branch = push_repo(built_repo, hub_repo_id, branch="experiment", commit_message="On a branch")
    assert "config.json" in hub.files(hub_repo_id, "experiment") and branch.commit_id
    (built_repo / "NOTES.md").write_text("a change for the pull request\n")
    try:
        pr = push_repo(built_repo, hub_repo_id, create_pr=True, commit_message="Proposed change")
    finally:
        (built_repo / "NOTES.md").unlink()
    assert pr.pull_request_url and pr.commit_id != main.commit_id
    assert "NOTES.md" not in hub.files(hub_repo_id, "main")


def test_model_push_to_hub_carries_the_code(hub, hub_repo_id, built_repo):
    model = ours.BigBirdPegasusForConditionalGeneration.from_pretrained(built_repo)
    model.push_to_hub(hub_repo_id)
    files = hub.files(hub_repo_id, "main")
    assert set(CODE_FILES) <= set(files)
    for name in CODE_FILES:
        assert files[name] == (built_repo / name).read_bytes(), name
    config = json.loads(files["config.json"])
    assert config["auto_map"]["AutoModelForSeq2SeqLM"].endswith("BigBirdPegasusForConditionalGeneration")
    assert "summarization" in config["custom_pipelines"]


def test_refused_upload_and_incomplete_folder_give_clear_errors(hub, hub_repo_id, built_repo, tmp_path):
    hub.refuse_uploads = True
    with pytest.raises(PushError, match=hub_repo_id):
        push_repo(built_repo, hub_repo_id)
    hub.refuse_uploads = False
    with pytest.raises(RepoError, match="config.json"):
        push_repo(tmp_path, hub_repo_id)
    with pytest.raises(PushError, match="network"):
        push_repo(built_repo, hub_repo_id, endpoint="http://127.0.0.1:9")  # nothing listens on port 9


def test_loading_a_repo_that_does_not_exist(hub, tmp_path):
    code = "from transformers import AutoConfig; AutoConfig.from_pretrained('nobody/missing', trust_remote_code=True)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, HF_HUB_CACHE=str(tmp_path)))
    assert result.returncode != 0 and "nobody/missing" in result.stderr
