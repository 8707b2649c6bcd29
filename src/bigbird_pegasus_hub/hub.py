"""Upload a built plugin repo folder to the Hugging Face Hub (or any Hub-compatible server)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi

from .repo_files import RepoError, check_repo


class PushError(RuntimeError):
    """The upload failed; the message says why and what to do."""


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    commit_id: str
    commit_url: str
    pull_request_url: str | None

    def loading_snippet(self) -> str:
        """Python that loads exactly this commit, code included."""
        pinned = f'"{self.repo_id}", trust_remote_code=True, revision="{self.commit_id}", code_revision="{self.commit_id}"'
        return (
            "from transformers import AutoModelForSeq2SeqLM, pipeline\n"
            f"model = AutoModelForSeq2SeqLM.from_pretrained({pinned})\n"
            f'summarizer = pipeline("summarization", model={pinned})\n'
        )


def push_repo(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    branch: str | None = None,
    commit_message: str = "Upload BigBirdPegasus plugin repo",
    create_pr: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Creates `repo_id` if needed and uploads `folder` in one commit (files the Hub already has are skipped).

    `branch` is created from the default branch when missing; `create_pr` opens a pull request instead of
    committing to the branch.
    """
    folder = Path(folder)
    check_repo(folder)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if branch is not None and not create_pr:
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=folder, revision=branch, commit_message=commit_message, create_pr=create_pr
        )
    except Exception as error:  # HTTP errors and the transport errors of whichever HTTP library the client uses
        raise PushError(f"Uploading {folder} to {repo_id} failed: {first_line(error)}. Check the repo id, that your "
                        "token may write to it (`hf auth login` or HF_TOKEN) and the network.") from error
    return PushResult(repo_id, commit.oid, commit.commit_url, getattr(commit, "pr_url", None))


def first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


__all__ = ["PushError", "PushResult", "RepoError", "push_repo"]
