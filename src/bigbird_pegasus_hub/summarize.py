"""Summarize documents with a BigBirdPegasus model: loading, truncation accounting, chunking and batching.

The small API behind `bigbird-pegasus summarize`::

    from bigbird_pegasus_hub.summarize import load_summarizer

    summarizer = load_summarizer("path/to/repo")  # a local folder, or a Hub repo id
    for summary in summarizer.summarize(["A long article ..."], num_beams=4, max_length=128):
        print(summary.text, summary.input_tokens, summary.truncated_tokens, summary.seconds)

Which code runs: a local folder is always loaded with this package's own model classes, so no Python file of the
folder runs. A Hub repo that ships Python code (an `auto_map` in its config.json) is loaded with that code, which
transformers imports and runs, so it needs `trust_remote_code=True`; a Hub repo without code is loaded with our
classes. The Hub repo is pinned to the commit that was checked, so the code that runs is the code that was asked for.

Documents longer than the model reads are cut (`Summary.truncated_tokens` says by how much), or, with
`chunk=True`, split into overlapping token windows that are summarized one by one, after which the joined window
summaries are summarized again: a document of k windows costs k + 1 `generate` calls instead of one.

torch and transformers are imported inside the functions that need them: the command line checks its arguments and
inputs, and fails fast on a bad one, without paying seconds for those imports.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .repo_files import RepoError, check_model_folder, first_line, foreign_references, listed, read_json_object
from .text import NEWLINE_TOKEN, decode_newlines, encode_newlines

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_MODEL_DIR",
    "DEVICES",
    "SINGLE_THREAD_MAX_WIDTH",
    "DTYPES",
    "EncodedDocument",
    "ModelSource",
    "SummarizeError",
    "Summarizer",
    "Summary",
    "batches",
    "available_cores",
    "cpu_threads",
    "load_summarizer",
    "padded_length",
    "resolve_model",
    "set_cpu_threads",
    "token_windows",
]



def _demo_repo_dir() -> Path:
    """The bundled demo model: the package's data folder `demo_repo/` (pyproject.toml installs the checkout's
    `hub_repo/` there), or, for a source checkout (an editable install, where the package is `src/...`), the checkout's
    own `hub_repo/`. Only the package's own folders count: an installed package never looks beside itself."""
    package = Path(__file__).resolve().parent
    if package.parent.name == "src" and not (package / "demo_repo").exists():
        return package.parents[1] / "hub_repo"
    return package / "demo_repo"


DEFAULT_MODEL_DIR = _demo_repo_dir()
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "float16", "bfloat16")
MODEL_TYPE = "bigbird_pegasus"

# Models at most this wide generate on one CPU thread (see `cpu_threads`).
SINGLE_THREAD_MAX_WIDTH = 256
# Used when neither the caller nor the model's generation config sets them, as the plugin's summarization pipeline.
FALLBACK_GENERATION = {"max_new_tokens": 256, "num_beams": 4}
# Windows overlap by this share of their length, so that no sentence is only seen cut in two.
DEFAULT_OVERLAP_SHARE = 1 / 8

# Weights a checkpoint may leave out: the model fills them in (a zero logits bias; tied copies of the embeddings).
OPTIONAL_WEIGHTS = frozenset({"final_logits_bias"})
# "name" or "owner/name": anything else (./x, /x, a/b/c, ~/x) can only be a local path.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
# Tokenizers that set no `model_max_length` report this huge placeholder.
_UNSET_MODEL_MAX_LENGTH = int(1e20)

logger = logging.getLogger(__name__)


class SummarizeError(ValueError):
    """A model or a document cannot be used; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a local folder, or a Hub repo id at one commit."""

    location: str
    revision: str | None = None
    remote_code: bool = False  # load the repo's own Python code (a Hub repo with `auto_map`, trusted)


@dataclass(frozen=True)
class Summary:
    """One document's summary and what it cost.

    Attributes:
        text: the summary, with the model's `<n>` tokens turned back into line breaks.
        input_tokens: the document's length in tokens, as the model would read it whole (end-of-sequence included).
        truncated_tokens: tokens that were cut because the model reads at most `Summarizer.max_input_tokens`: of
            the document, or with `chunk=True` of the joined window summaries. 0 when nothing was cut.
        windows: model inputs the document was split into (`chunk=True`); k > 1 windows cost k + 1 generate calls.
        seconds: wall time; documents summarized in one batch share its time equally.
    """

    text: str
    input_tokens: int
    truncated_tokens: int = 0
    windows: int = 1
    seconds: float = 0.0

    @property
    def truncated(self) -> bool:
        return self.truncated_tokens > 0

    def fields(self) -> dict[str, Any]:
        """What JSON outputs record of a summary (`summarize --format jsonl`, `summarize --input`)."""
        return {"summary": self.text, "input_tokens": self.input_tokens, "truncated": self.truncated,
                "truncated_tokens": self.truncated_tokens, "windows": self.windows, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class EncodedDocument:
    """A document as the model reads it (`Summarizer.encode`), so that callers can group documents by length.

    Attributes:
        model_input: the token ids the model reads, special tokens included, cut to `Summarizer.max_input_tokens`.
        input_tokens: the whole document's length in tokens, special tokens included.
        truncated_tokens: tokens that were cut.
    """

    model_input: list[int]
    input_tokens: int
    truncated_tokens: int


# ----------------------------------------------------------------------------------------------------------------
# Finding the model: cheap checks (files, one or two Hub requests) before anything heavy is imported or loaded.


def resolve_model(
    model: str | Path | None = None, *, revision: str | None = None, trust_remote_code: bool = False
) -> ModelSource:
    """Checks that `model` (a folder, a Hub repo id, or None for the bundled demo model) can be loaded.

    Raises:
        SummarizeError: no such folder, a folder without config.json, a repo that cannot be reached or found, or a
            repo with its own code while `trust_remote_code` is False.
    """
    if model is None:
        return _local_source(DEFAULT_MODEL_DIR, bundled=True, revision=revision)
    path = Path(model).expanduser()
    if path.exists() or not _REPO_ID.match(str(model)):
        return _local_source(path, revision=revision)
    return _hub_source(str(model), revision, trust_remote_code)


def _local_source(path: Path, *, bundled: bool = False, revision: str | None = None) -> ModelSource:
    if revision is not None:
        raise SummarizeError(f"--revision only applies to Hub repo ids, but {path} is a local folder: drop it.")
    if not (path / "config.json").is_file():
        raise SummarizeError(_missing_config_message(path, bundled))
    try:
        check_model_folder(path)  # config.json, weights (complete safetensors files), tokenizer files
    except RepoError as error:
        raise SummarizeError(str(error)) from None
    return ModelSource(str(path))


def _missing_config_message(path: Path, bundled: bool) -> str:
    if bundled:
        return (f"The bundled demo model is missing ({path} has no config.json): reinstall the package, or pass a "
                "model folder or a Hub repo id with --model.")
    if not path.exists():
        return f"Model folder {path} does not exist: pass a model folder or a Hub repo id (owner/name) to --model."
    return (f"{path} has no config.json, so it is not a model folder: pass a folder made by `bigbird-pegasus build` "
            "(or `convert-tf`, `upgrade`), or a Hub repo id.")


def _hub_source(repo_id: str, revision: str | None, trust_remote_code: bool) -> ModelSource:
    commit = _resolve_commit(repo_id, revision)
    config = read_json(download_config(repo_id, commit))
    _check_model_type(config, repo_id)
    if "auto_map" not in config:
        return ModelSource(repo_id, revision=commit)  # no code in the repo: our classes load it
    foreign = foreign_references(config)
    if foreign:
        raise SummarizeError(
            f"Hub repo {repo_id} makes transformers import another repo's code ({'; '.join(foreign)}), which its "
            "revision does not pin: refusing to run it. Use a repo that carries its own code (made by "
            "`bigbird-pegasus push`)."
        )
    if not trust_remote_code:
        pin = "" if revision else " with --revision COMMIT"
        raise SummarizeError(
            f"Hub repo {repo_id} ships its own Python code (auto_map in its config.json), which transformers would "
            f"import and run on this machine: review that code, then pass --trust-remote-code{pin} to pin the "
            "reviewed commit (trust_remote_code=True, revision= in Python)."
        )
    return ModelSource(repo_id, revision=commit, remote_code=True)


def _resolve_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit sha that `revision` names now; one quick request, which also tells whether the Hub answers."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    if constants.HF_HUB_OFFLINE:
        return revision  # the cache decides (hf_hub_download fails clearly if the files are not there)
    try:
        return HfApi().model_info(repo_id, revision=revision).sha
    except RevisionNotFoundError:
        raise SummarizeError(f"Hub repo {repo_id} has no revision {revision!r}: pass one of its branches, tags or "
                             "commits to --revision.") from None
    except RepositoryNotFoundError:
        raise SummarizeError(
            f"Hub repo {repo_id} was not found at {constants.ENDPOINT}, and there is no local folder of that name: "
            "check the name, and log in (`hf auth login` or HF_TOKEN) if the repo is private or gated."
        ) from None
    except HfHubHTTPError as error:
        raise SummarizeError(f"The Hub at {constants.ENDPOINT} refused to describe {repo_id}: {first_line(error)}.") \
            from error
    except Exception as error:  # refused connection, DNS, timeout: the HTTP client's errors share no useful base
        raise SummarizeError(_unreachable_message(repo_id, error)) from error


def download_config(repo_id: str, commit: str | None) -> Path:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, "config.json", revision=commit))
    except LocalEntryNotFoundError as error:  # before EntryNotFoundError: it is one
        if constants.HF_HUB_OFFLINE:
            raise SummarizeError(f"Hub repo {repo_id} is not in the local cache and HF_HUB_OFFLINE is set: unset it "
                                 "to download the model, or pass a local folder to --model.") from error
        raise SummarizeError(_unreachable_message(repo_id, error)) from error
    except EntryNotFoundError:
        raise SummarizeError(f"Hub repo {repo_id} has no config.json, so it is not a model repo: pass a repo made "
                             "with `bigbird-pegasus push`.") from None


def _unreachable_message(repo_id: str, error: Exception) -> str:
    from huggingface_hub import constants

    return (f"Cannot reach the Hub at {constants.ENDPOINT} to load {repo_id} ({first_line(error)}): check the network "
            "and HF_ENDPOINT, or pass a local model folder to --model.")


def read_json(path: Path) -> dict:
    try:
        return read_json_object(path)
    except RepoError as error:
        raise SummarizeError(str(error)) from None


def _check_model_type(config: dict, where: str) -> None:
    if config.get("model_type") != MODEL_TYPE:
        raise SummarizeError(f"{where} holds a {config.get('model_type')!r} model, not BigBirdPegasus "
                             f"(model_type {MODEL_TYPE!r}): pass a BigBirdPegasus model.")


# ----------------------------------------------------------------------------------------------------------------
# Loading.


def load_summarizer(
    model: str | Path | ModelSource | None = None,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    max_input_tokens: int | None = None,
) -> Summarizer:
    """Loads a model and its tokenizer for summarizing.

    Args:
        model: a local model folder, a Hub repo id, None for the bundled demo model (`DEFAULT_MODEL_DIR`), or a
            `ModelSource` from `resolve_model` (then `revision` and `trust_remote_code` are unused).
        revision: branch, tag or commit of a Hub repo; it is resolved to a commit once, and everything (weights,
            tokenizer, code) is read at that commit.
        trust_remote_code: allow a Hub repo's own Python code to run (needed when its config.json has `auto_map`).
        device: "cpu", "cuda", or "auto" (transformers' `device_map="auto"`: GPUs first, spread if needed).
        dtype: "float32", "float16", "bfloat16", or "auto" (the dtype the weights were saved in).
        max_input_tokens: read at most this many tokens of a document (default: all the model can read).
    """
    _check_choice("device", device, DEVICES)
    _check_choice("dtype", dtype, DTYPES)
    if isinstance(model, ModelSource):
        source = model
    else:
        source = resolve_model(model, revision=revision, trust_remote_code=trust_remote_code)
    _check_device(device)
    return Summarizer(*load_model_and_tokenizer(source, device, dtype), max_input_tokens=max_input_tokens)


def cpu_threads(model: PreTrainedModel, processes: int = 1) -> int | None:
    """The CPU threads that suit generating with `model` in one of `processes` processes sharing this machine: 1
    for a model on the CPU at most SINGLE_THREAD_MAX_WIDTH wide (such as the bundled demo model); the cores shared
    out, `available_cores() // processes` (at least 1), for a wider one when several processes share the machine;
    else None (torch's default, one per core). A model on a GPU: None.

    A decoding step of a narrow model is a few small matrix products (the demo model's: 5 beams x 64 x 64). Split
    over threads, each costs more than it computes: the other threads must be woken and waited for, and on a busy
    machine that means waiting for the scheduler. On this project's shared 2-core machine the demo model's main job
    took 20-30x longer with 2 threads than with one; one thread is never slower for it. Processes that each take
    every core oversubscribe the machine in the same way (torchrun and accelerate launch set OMP_NUM_THREADS=1
    instead, which leaves cores idle when there are fewer processes than cores).
    """
    if model.device.type != "cpu" or getattr(model.config, "d_model", None) is None:
        return None
    if model.config.d_model <= SINGLE_THREAD_MAX_WIDTH:
        return 1
    return max(1, available_cores() // processes) if processes > 1 else None


def set_cpu_threads(model: PreTrainedModel, requested: int | None = None, processes: int = 1) -> int:
    """Sets torch's intra-op threads to `requested` (--threads), else to `cpu_threads(model, processes)` when that
    says a number; returns the threads in use."""
    import torch

    threads = requested or cpu_threads(model, processes)
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, at most the physical cores (as accelerate shares them)."""
    import os

    import psutil

    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(allowed, psutil.cpu_count(logical=False) or allowed))


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise SummarizeError(f"Unknown {name} {value!r}: choose one of {', '.join(choices)}.")


def _check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        raise SummarizeError(f"--device cuda, but torch ({torch.__version__}, {build}) sees no CUDA GPU here: "
                             "use --device cpu (or auto).")


def load_model_and_tokenizer(source: ModelSource, device: str | None, dtype: str):
    return load_checked_model(source, device, dtype), _load_tokenizer(source)


def load_checked_model(source: ModelSource, device: str | None, dtype: str, **config_overrides):
    """The model, refused if its weights do not fit its config: missing weights would be random, unexpected ones
    dropped, and either way the summaries quietly wrong. config_overrides: config attributes to set."""
    import torch
    from safetensors import SafetensorError

    options = {
        "device_map": device, "dtype": dtype if dtype == "auto" else getattr(torch, dtype),
        # Misshapen weights are then reported with the others, rather than by a bare RuntimeError.
        "output_loading_info": True, "ignore_mismatched_sizes": True,
        **({"revision": source.revision} if source.revision else {}), **config_overrides,
    }
    if source.remote_code:
        from transformers import AutoModelForSeq2SeqLM

        # Explicitly: the auto_map's code is read at the checked commit too.
        load, options = AutoModelForSeq2SeqLM.from_pretrained, {**options, "trust_remote_code": True,
                                                                "code_revision": source.revision}
    else:
        from .plugin.modeling_bigbird_pegasus import BigBirdPegasusForConditionalGeneration

        load = BigBirdPegasusForConditionalGeneration.from_pretrained
    try:
        model, loading_info = load(source.location, **options)
    except SafetensorError as error:
        raise SummarizeError(f"The weights of {source.location} cannot be read ({error}): the file is damaged or "
                             "incomplete; download or build the model again.") from None
    _check_loading_info(model, loading_info, source.location)
    return model.eval()


def _check_loading_info(model, loading_info: dict, where: str) -> None:
    loaded_aliases = _names_sharing_a_tensor(model)
    missing = loading_info.get("missing_keys") or ()
    problems = {
        # A tied weight (the decoder's embeddings, lm_head) is filled in from the one it shares a tensor with.
        "missing": [name for name in missing if name not in OPTIONAL_WEIGHTS
                    and not any(alias not in missing for alias in loaded_aliases.get(name, ()))],
        "unexpected": list(loading_info.get("unexpected_keys") or ()),
        # transformers 5 lists (name, saved shape, model shape), 4.57 the names.
        "of the wrong shape": [item if isinstance(item, str) else f"{item[0]} {list(item[1])} (the config needs "
                               f"{list(item[2])})" for item in loading_info.get("mismatched_keys") or ()],
    }
    found = [f"{what}: {listed(sorted(names))}" for what, names in problems.items() if names]
    if found:
        raise SummarizeError(
            f"The weights of {where} do not fit its config.json ({'; '.join(found)}): the model would summarize "
            "wrongly. Rebuild the repo from the weights and the config they were trained with."
        )


def _names_sharing_a_tensor(model) -> dict[str, list[str]]:
    """For each parameter name, the other names of the same tensor (tied weights)."""
    names_of = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(parameter), []).append(name)
    return {name: [other for other in names if other != name] for names in names_of.values() for name in names}


def _load_tokenizer(source: ModelSource):
    """The tokenizer, never with remote code: a plugin repo's tokenizer is one of transformers' own classes."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.location, trust_remote_code=False,
                                             **({"revision": source.revision} if source.revision else {}))
    except Exception as error:  # tokenizers and sentencepiece raise bare Exceptions for damaged files
        raise SummarizeError(f"The tokenizer of {source.location} does not load ({first_line(error)}): it must be "
                             "one of transformers' tokenizers (a Pegasus tokenizer), loadable without remote code; "
                             "rebuild the repo with `bigbird-pegasus build`.") from None


# ----------------------------------------------------------------------------------------------------------------
# Summarizing.


class Summarizer:
    """Summarizes documents with a loaded encoder-decoder model and its tokenizer, calling `generate` directly."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_input_tokens: int | None = None):
        vocab_size = model.config.vocab_size
        if len(tokenizer) > vocab_size:
            raise SummarizeError(f"The tokenizer has {len(tokenizer)} ids but the model's vocabulary has only "
                                 f"{vocab_size} (vocab_size): they do not belong together. Load the tokenizer the model "
                                 "was trained with.")
        self.model = model
        self.tokenizer = tokenizer
        self.max_input_tokens = input_token_limit(model.config, tokenizer, max_input_tokens)
        # What the tokenizer puts around every input (Pegasus: end-of-sequence after it).
        self._prefix, self._suffix = special_tokens_around(tokenizer)
        self._special_tokens = len(self._prefix) + len(self._suffix)
        self._content_limit = self.max_input_tokens - self._special_tokens
        if self._content_limit < 1:
            raise SummarizeError(f"A maximum input length of {self.max_input_tokens} tokens leaves no room for text "
                                 f"next to the tokenizer's {self._special_tokens} special token(s).")
        newline_id = tokenizer.convert_tokens_to_ids(NEWLINE_TOKEN)
        self._writes_newlines = newline_id not in (None, tokenizer.unk_token_id)

    def summarize(
        self,
        documents: str | Iterable[str],
        *,
        batch_size: int = 1,
        chunk: bool = False,
        chunk_overlap: int | None = None,
        **generate_kwargs: Any,
    ) -> Iterator[Summary]:
        """Yields one `Summary` per document, in order, as soon as its batch is done.

        Args:
            documents: the texts to summarize. A single string is one document (as in transformers' pipelines): it
                gives one `Summary`. No documents give no summaries.
            batch_size: documents per `generate` call; with `chunk=True`, windows of one document per call.
            chunk: split documents longer than `max_input_tokens` into overlapping windows instead of cutting them.
            chunk_overlap: tokens that consecutive windows share (default: an eighth of a window).
            generate_kwargs: `generate()` arguments such as `num_beams` or `max_length` (None values are ignored),
                over the model's generation config.
        """
        if isinstance(documents, str):
            documents = [documents]
        if batch_size < 1:
            raise SummarizeError(f"batch_size must be at least 1, got {batch_size}.")
        if chunk_overlap is not None and not chunk:
            raise SummarizeError("chunk_overlap only applies with chunk=True (--chunk): drop it, or chunk.")
        overlap = self._overlap(chunk_overlap) if chunk else 0
        generate_kwargs = self._generate_kwargs(generate_kwargs)
        if chunk:
            summaries = (self._summarize_in_windows(document, batch_size, overlap, generate_kwargs)
                         for document in documents)
        else:
            summaries = (summary for batch in batches(documents, batch_size)
                         for summary in self._summarize_batch(batch, generate_kwargs))
        for summary in summaries:
            if not summary.text:
                logger.warning("The model generated an empty summary: its weights may be damaged (NaN), or it is "
                               "untrained.")
            yield summary

    def encode(self, document: str) -> EncodedDocument:
        """The document as the model reads it; raises SummarizeError if it is empty or only whitespace."""
        tokens = self._tokens(document)
        return EncodedDocument(self._model_input(tokens), len(tokens) + self._special_tokens, self._excess(tokens))

    def summarize_encoded(
        self, documents: Sequence[EncodedDocument], *, pad_to_multiple_of: int = 1, **generate_kwargs: Any
    ) -> list[Summary]:
        """Summarizes encoded documents in one `generate` call, their inputs right-padded to the longest one rounded
        up to a multiple of `pad_to_multiple_of` tokens.

        Block-sparse attention lays out its blocks over the padded length, so padding changes a summary: to get
        the same summary whatever the batch, batch only documents whose padded lengths are equal.
        """
        return self._summarize_encoded(documents, self._generate_kwargs(generate_kwargs), pad_to_multiple_of)

    def _summarize_batch(self, documents: list[str], generate_kwargs: dict) -> list[Summary]:
        return self._summarize_encoded([self.encode(document) for document in documents], generate_kwargs)

    def _summarize_encoded(self, documents: Sequence[EncodedDocument], generate_kwargs: dict,
                           pad_to_multiple_of: int = 1) -> list[Summary]:
        start = time.perf_counter()
        texts = self._generate([document.model_input for document in documents], generate_kwargs, pad_to_multiple_of)
        seconds = (time.perf_counter() - start) / len(documents)
        return [Summary(text, document.input_tokens, document.truncated_tokens, seconds=seconds)
                for text, document in zip(texts, documents)]

    def _summarize_in_windows(self, document: str, batch_size: int, overlap: int, generate_kwargs: dict) -> Summary:
        start = time.perf_counter()
        tokens = self._tokens(document)
        windows = token_windows(tokens, self._content_limit, overlap)
        if len(windows) == 1:
            text = self._generate([self._model_input(tokens)], generate_kwargs)[0]
            return Summary(text, len(tokens) + self._special_tokens, seconds=time.perf_counter() - start)
        window_summaries = []
        for batch in batches(windows, batch_size):
            window_summaries += self._generate([self._model_input(window) for window in batch], generate_kwargs)
        joined_text = "\n".join(summary for summary in window_summaries if summary)
        joined = self._tokens(joined_text) if joined_text else []
        text = self._generate([self._model_input(joined)], generate_kwargs)[0] if joined else ""
        return Summary(text, len(tokens) + self._special_tokens, self._excess(joined), windows=len(windows),
                       seconds=time.perf_counter() - start)

    def _tokens(self, document: str) -> list[int]:
        """The document's token ids, without special tokens, with line breaks as `<n>` if the model knows it."""
        if not isinstance(document, str):
            raise TypeError(f"Documents to summarize must be strings, got {type(document).__name__}.")
        text = encode_newlines(document) if self._writes_newlines else document.strip()
        if not text:
            raise SummarizeError("Cannot summarize an empty document (it is empty or only whitespace).")
        # verbose=False: the tokenizer's own too-long warning would precede (and contradict) our accounting.
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def _model_input(self, tokens: list[int]) -> list[int]:
        return [*self._prefix, *tokens[: self._content_limit], *self._suffix]

    def _excess(self, tokens: list[int]) -> int:
        return max(0, len(tokens) - self._content_limit)

    def _overlap(self, chunk_overlap: int | None) -> int:
        if chunk_overlap is None:
            return int(self._content_limit * DEFAULT_OVERLAP_SHARE)
        if not 0 <= chunk_overlap < self._content_limit:
            raise SummarizeError(f"The chunk overlap must be at least 0 and below the window of {self._content_limit} "
                                 f"tokens, got {chunk_overlap}.")
        return chunk_overlap

    def _generate(self, inputs: list[list[int]], generate_kwargs: dict, pad_to_multiple_of: int = 1) -> list[str]:
        import torch

        input_ids, attention_mask = _pad(inputs, self.tokenizer.pad_token_id or 0, pad_to_multiple_of)
        with torch.inference_mode():
            output_ids = self.model.generate(input_ids=input_ids.to(self.model.device),
                                             attention_mask=attention_mask.to(self.model.device), **generate_kwargs)
        return [self._decode(ids) for ids in output_ids]

    def _decode(self, token_ids) -> str:
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return decode_newlines(text)

    def _generate_kwargs(self, call_kwargs: dict) -> dict:
        """The caller's settings, then the fallbacks for what neither the caller nor the model's config sets."""
        chosen = {name: value for name, value in call_kwargs.items() if value is not None}
        model_settings = self.model.generation_config.to_diff_dict()
        if "max_length" in chosen and "max_new_tokens" in model_settings:
            chosen["max_new_tokens"] = None  # it would win over the caller's max_length
        already_set = chosen.keys() | model_settings.keys()
        for name, value in FALLBACK_GENERATION.items():
            if name not in already_set and not (name == "max_new_tokens" and "max_length" in already_set):
                chosen[name] = value
        if model_settings.get("pad_token_id") is None and "pad_token_id" not in chosen:
            chosen["pad_token_id"] = self.tokenizer.pad_token_id
        return chosen


def token_windows(tokens: Sequence[int], size: int, overlap: int) -> list[Sequence[int]]:
    """Splits `tokens` into windows of `size` tokens; each starts `size - overlap` tokens after the previous one,
    except the last, which ends with the tokens (so it is full length, and may overlap more).

    A sequence of n > size tokens gives ceil((n - size) / (size - overlap)) + 1 windows; a shorter one gives itself.
    """
    if not 0 <= overlap < size:
        raise ValueError(f"Need 0 <= overlap < size, got overlap={overlap}, size={size}.")
    if len(tokens) <= size:
        return [tokens]
    windows, start = [], 0
    while True:
        windows.append(tokens[start : start + size])
        if start + size >= len(tokens):
            return windows
        start = min(start + size - overlap, len(tokens) - size)


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer adds before and after a text (transformers 5 tokenizers have no
    `build_inputs_with_special_tokens`, so they are read off one encoding)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    raise SummarizeError(f"The tokenizer {type(tokenizer).__name__} changes a text when it adds its special tokens: "
                         "it cannot be used to summarize.")


def input_token_limit(model_config, tokenizer, requested: int | None = None) -> int:
    """The longest input the model reads: the smaller of its position embeddings and the tokenizer's limit, or the
    `requested` length if that is shorter."""
    limits = [getattr(model_config, "max_position_embeddings", None)]
    if tokenizer.model_max_length < _UNSET_MODEL_MAX_LENGTH:
        limits.append(tokenizer.model_max_length)
    limits = [limit for limit in limits if limit]
    if not limits:
        raise SummarizeError("Neither the model config (max_position_embeddings) nor the tokenizer "
                             "(model_max_length) says how long an input may be: set one of them.")
    if requested is not None and requested > min(limits):
        raise SummarizeError(f"The model reads at most {min(limits)} tokens: a maximum input length of {requested} "
                             "is too long.")
    return min(limits) if requested is None else requested


def batches(items: Iterable, size: int) -> Iterator[list]:
    """Lists of `size` consecutive items (the last one may be shorter)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _pad(sequences: list[list[int]], pad_id: int, multiple: int = 1):
    """Right-padded input ids and their attention mask, as wide as the longest sequence rounded up to `multiple`."""
    import torch

    width = padded_length(max(len(ids) for ids in sequences), multiple)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def padded_length(length: int, multiple: int) -> int:
    """`length` rounded up to a multiple of `multiple`."""
    return -(-length // multiple) * multiple
