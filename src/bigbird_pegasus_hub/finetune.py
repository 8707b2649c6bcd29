"""Fine-tune BigBirdPegasus on your own documents: the engine of `bigbird-pegasus finetune`.

    from bigbird_pegasus_hub.finetune import FinetuneOptions, finetune

    result = finetune(FinetuneOptions("hub_repo", "my-model", "train.jsonl", validation_file="val.jsonl",
                                      lora=True, max_steps=1000))
    print(result.losses[0], result.losses[-1], result.metrics)

A corpus is a JSON Lines, CSV or Parquet file with a document column and a summary column, read with `datasets`.
Training is transformers' `Seq2SeqTrainer` (so `accelerate launch` spreads it over several GPUs or processes), with
gradient checkpointing, optional bf16 autocast and optional PEFT LoRA on the attention projections. Evaluation
generates summaries and scores them with ROUGE as Google's evaluation does (`rouge.py`).

Where things go: Trainer checkpoints into `<OUT_DIR>-checkpoints` (for `resume`; removed after success unless
`keep_checkpoints`); the result into OUT_DIR, written only once training is done and atomically (temporary folder,
then rename): a plugin repo made by the repo builder, with tokenizer and generation config, LoRA merged in; or with
`save_adapter` the LoRA adapter and the tokenizer alone.

Which code runs follows `summarize.resolve_model`: a local folder is trained with this package's model classes; a Hub
repo that ships code runs that code only with `trust_remote_code`. Whatever was trained, the result is a repo of this
package's code.

Mistakes are found before anything is written and before torch is imported where possible (`check_options`): a
missing or unreadable corpus, a missing column, an empty row, a folder that exists, a package that is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import check_output_path
from .corpus import INPUT_FORMATS
from .repo_files import TOKENIZER_FILES
from .summarize import ModelSource, resolve_model

__all__ = [
    "DEFAULT_SUMMARY_COLUMN",
    "DEFAULT_TEXT_COLUMN",
    "LORA_TARGET_MODULES",
    "FinetuneError",
    "FinetuneOptions",
    "FinetuneResult",
    "check_options",
    "finetune",
    "lora_config",
]

DEFAULT_TEXT_COLUMN = "document"
DEFAULT_SUMMARY_COLUMN = "summary"
# File suffix -> the `datasets` builder that reads it.
TEXT_FORMATS = (".jsonl", ".json", ".csv")  # Parquet stores its strings as UTF-8 by definition
DEFAULT_LEARNING_RATE = 5e-5
DEFAULT_LORA_LEARNING_RATE = 2e-4
# The attention projections: the encoder's block-sparse self-attention, the decoder's self- and cross-attention.
LORA_TARGET_MODULES = ("query", "key", "value", "output", "q_proj", "k_proj", "v_proj", "out_proj")
LORA_DROPOUT = 0.05
INSTALL_TRAIN = 'pip install "bigbird-pegasus-hub[train]"'
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # the Trainer's checkpoint folders
TRAINER_STATE = "trainer_state.json"
CHECKPOINTS_KEPT = 2
READ_CHUNK = 1 << 20


class FinetuneError(ValueError):
    """Fine-tuning cannot start or finish; the message says what is wrong and what to do."""


@dataclass
class FinetuneOptions:
    """What `bigbird-pegasus finetune` does; the field names are its options' names."""

    model: str  # a plugin repo folder or a Hub repo id
    out_dir: Path
    train_file: Path
    validation_file: Path | None = None
    text_column: str = DEFAULT_TEXT_COLUMN
    summary_column: str = DEFAULT_SUMMARY_COLUMN
    revision: str | None = None
    trust_remote_code: bool = False
    checkpoint_dir: Path | None = None  # default: <out_dir>-checkpoints
    max_source_length: int | None = None  # default: as many tokens as the model reads
    max_target_length: int = 256
    learning_rate: float | None = None  # default: DEFAULT_LEARNING_RATE, or DEFAULT_LORA_LEARNING_RATE with LoRA
    epochs: float = 3.0
    max_steps: int | None = None  # wins over epochs
    batch_size: int = 1
    gradient_accumulation: int = 1
    gradient_checkpointing: bool = True
    bf16: bool = False
    lora: bool = False
    lora_rank: int = 16
    save_adapter: bool = False
    num_beams: int | None = None  # of the validation summaries; default: the model's generation config
    logging_steps: int = 25
    save_steps: int = 500
    eval_steps: int | None = None  # default: save_steps
    seed: int = 42
    resume: bool = False
    overwrite: bool = False
    keep_checkpoints: bool = False

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        self.train_file = Path(self.train_file)
        self.validation_file = None if self.validation_file is None else Path(self.validation_file)
        if self.checkpoint_dir is None:
            self.checkpoint_dir = Path(f"{self.out_dir}-checkpoints")
        self.checkpoint_dir = Path(self.checkpoint_dir)
        if self.learning_rate is None:
            self.learning_rate = DEFAULT_LORA_LEARNING_RATE if self.lora else DEFAULT_LEARNING_RATE


@dataclass
class FinetuneResult:
    out_dir: Path
    steps: int
    train_documents: int
    losses: list[tuple[int, float]]  # (step, training loss) as logged
    metrics: dict[str, float] = field(default_factory=dict)  # last validation: loss, rouge1, rouge2, rougeLsum (%)
    validation_documents: int = 0
    resumed_from: Path | None = None
    processes: int = 1  # of a multi-process run (accelerate launch, torchrun)
    main_process: bool = True  # False in the other processes of a multi-process run: they write nothing

    def report(self) -> str:
        """Trained 40 steps on 32 documents: training loss 6.99 (step 1) -> 3.73 (step 40), and the validation."""
        (first_step, first_loss), (last_step, last_loss) = self.losses[0], self.losses[-1]
        processes = f" in {self.processes} processes" if self.processes > 1 else ""
        resumed = f", resumed from {self.resumed_from.name}" if self.resumed_from else ""
        lines = [f"Trained {self.steps} steps on {self.train_documents} documents{processes}{resumed}: training loss "
                 f"{first_loss:.4f} (step {first_step}) -> {last_loss:.4f} (step {last_step})"]
        if self.metrics:
            lines.append(f"Validation ({self.validation_documents} documents): {validation_summary(self.metrics)}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Cheap checks: files, folders, packages (no torch, no transformers, no datasets).


def check_options(options: FinetuneOptions) -> None:
    """Everything that can be checked without reading the corpus or loading the model; raises FinetuneError."""
    check_corpus_path(options.train_file, "--train")
    if options.validation_file is not None:
        check_corpus_path(options.validation_file, "--validation")
    check_numbers(options)
    if options.text_column == options.summary_column:
        raise FinetuneError(f"--text-column and --summary-column are both {options.text_column!r}: the documents "
                            "and their summaries need a column each.")
    if options.save_adapter and not options.lora:
        raise FinetuneError("--save-adapter saves the LoRA adapter of a --lora run: add --lora, or drop "
                            "--save-adapter to save the whole model.")
    check_folders(options)
    check_packages(options)


def check_corpus_path(path: Path, option: str) -> None:
    if not path.exists():
        raise FinetuneError(f"{option} {path} does not exist: check the path.")
    if not path.is_file():
        raise FinetuneError(f"{option} {path} is not a file: give a .jsonl, .csv or .parquet file.")
    if path.suffix.lower() not in INPUT_FORMATS:
        raise FinetuneError(f"{option} {path}: unknown format {path.suffix or '(no suffix)'!r}; give JSON Lines "
                            "(.jsonl), CSV (.csv) or Parquet (.parquet).")


def check_numbers(options: FinetuneOptions) -> None:
    """The checks the command line's argument types make, for callers of the Python API."""
    at_least_one = ("max_target_length", "batch_size", "gradient_accumulation", "lora_rank", "logging_steps",
                    "save_steps")
    optional_at_least_one = ("max_source_length", "max_steps", "num_beams", "eval_steps")
    for name in at_least_one + optional_at_least_one:
        value = getattr(options, name)
        if value is not None and value < 1:
            raise FinetuneError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")
    for name in ("learning_rate", "epochs"):
        if not getattr(options, name) > 0:
            raise FinetuneError(f"--{name.replace('_', '-')} must be above 0, got {getattr(options, name)}.")


def check_folders(options: FinetuneOptions) -> None:
    out_dir, checkpoints = options.out_dir.resolve(), options.checkpoint_dir.resolve()
    check_output_path(options.out_dir, overwrite=options.overwrite)
    if checkpoints == out_dir or out_dir in checkpoints.parents or checkpoints in out_dir.parents:
        raise FinetuneError(f"--checkpoint-dir {options.checkpoint_dir} and OUT_DIR {options.out_dir} must be "
                            "separate folders: OUT_DIR holds only the finished model.")
    if options.resume:
        if last_checkpoint(options.checkpoint_dir) is None:
            raise FinetuneError(f"--resume, but {options.checkpoint_dir} holds no checkpoint (a run saves one every "
                                "--save-steps steps): start without --resume, or give --checkpoint-dir.")
    elif last_checkpoint(options.checkpoint_dir) is not None and not options.overwrite:
        raise FinetuneError(f"{options.checkpoint_dir} holds the checkpoints of an earlier run: pass --resume to "
                            "continue it, or --overwrite to start over.")


def check_packages(options: FinetuneOptions) -> None:
    needed = {"datasets": "reading the corpus"}
    if options.lora:
        needed["peft"] = "--lora"
    if options.validation_file is not None:
        needed["rouge_score"] = "the ROUGE of --validation"
    for package, purpose in needed.items():
        if importlib.util.find_spec(package) is None:
            raise FinetuneError(f"{purpose} needs the {package} package, which is not installed: {INSTALL_TRAIN}")


def last_checkpoint(folder: Path) -> Path | None:
    """The Trainer checkpoint of the highest step that was saved completely: the Trainer writes its state file
    last, so a run killed while saving leaves a folder without it, or with a cut one."""
    if not folder.is_dir():
        return None
    steps = {int(match[1]): path for path in folder.iterdir()
             if (match := CHECKPOINT.match(path.name)) and is_json_file(path / TRAINER_STATE)}
    return steps[max(steps)] if steps else None


def is_json_file(path: Path) -> bool:
    try:
        json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return True


# ----------------------------------------------------------------------------------------------------------------
# Fine-tuning.


def finetune(
    options: FinetuneOptions, *, progress: bool = True, notify: Callable[[str], None] | None = None
) -> FinetuneResult:
    """Fine-tunes `options.model` on `options.train_file` and writes the result to `options.out_dir`.

    Args:
        progress: draw a progress bar and one line per log step (loss, validation ROUGE) on stderr.
        notify: receives warnings such as "12 documents were cut to the model's length" (default: stderr).

    Raises:
        FinetuneError: bad options, corpus or model; nothing is written then.
    """
    notify = notify or (lambda line: print(line, file=sys.stderr))
    check_options(options)
    source = resolve_model(options.model, revision=options.revision, trust_remote_code=options.trust_remote_code)
    check_source_length(options, source)
    # The corpus' Arrow files (tokenized, they can take GBs) go to a folder of this run beside the checkpoints rather
    # than to the user's datasets cache or a small /tmp; it is removed at the end, whatever happens.
    beside = options.checkpoint_dir.parent if options.checkpoint_dir.parent.is_dir() else None
    with tempfile.TemporaryDirectory(prefix=".bigbird-pegasus-finetune-", dir=beside) as cache:
        corpora = {split: read_corpus(path, options, cache) for split, path in corpus_files(options).items()}
        model, tokenizer = load_model(source)
        arguments = training_arguments(options, model.config, evaluate="validation" in corpora)
        if arguments.process_index != 0:
            notify = lambda line: None  # noqa: E731 (one report per run, not one per process)
        encoder = CorpusEncoder(tokenizer, source_length(options, model, tokenizer), options.max_target_length)
        encoded = {split: encoder.encode(rows, options, split, notify) for split, rows in corpora.items()}
        use_cache = model.config.use_cache  # the Trainer turns it off for training; the saved model needs it back
        if options.lora:
            model = with_lora(model, options.lora_rank)
        references = corpora["validation"][options.summary_column] if "validation" in corpora else None
        trainer = make_trainer(model, tokenizer, arguments, encoded, references, progress)
        result = FinetuneResult(options.out_dir, 0, len(corpora["training"]), [],
                                validation_documents=len(corpora.get("validation", ())))
        train(trainer, options, result)
        if result.main_process:
            trainer.model.config.use_cache = use_cache
            save(trainer.model, options, source, result)
            if not options.keep_checkpoints:
                remove_checkpoints(options.checkpoint_dir)
        trainer.accelerator.wait_for_everyone()
        return result


def corpus_files(options: FinetuneOptions) -> dict[str, Path]:
    files = {"training": options.train_file}
    if options.validation_file is not None:
        files["validation"] = options.validation_file
    return files


# ----------------------------------------------------------------------------------------------------------------
# Reading and checking a corpus.


def read_corpus(path: Path, options: FinetuneOptions, cache_dir: str):
    """The file's document and summary columns as a `datasets.Dataset`, every row checked."""
    if path.suffix.lower() in TEXT_FORMATS:
        check_text_file(path)
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its parse errors come back as exceptions
    try:
        rows = datasets.load_dataset(INPUT_FORMATS[path.suffix.lower()], data_files=str(path), split="train",
                                     cache_dir=cache_dir)
    except Exception as error:  # the parser's error (pyarrow, pandas, json), wrapped in DatasetGenerationError
        problem = json_lines_problem(path) if path.suffix.lower() == ".jsonl" else None
        raise FinetuneError(f"{path} cannot be read as {format_name(path)}: {problem or root_cause(error)}.") \
            from error
    columns = (options.text_column, options.summary_column)
    missing = [name for name in columns if name not in rows.column_names]
    if missing:
        found = ", ".join(map(repr, rows.column_names)) or "none"
        raise FinetuneError(f"{path} has no column {missing[0]!r} (columns found: {found}): name its document and "
                            "summary columns with --text-column and --summary-column.")
    if len(rows) == 0:
        raise FinetuneError(f"{path} holds no rows: there is nothing to train on.")
    rows = rows.select_columns(list(columns))
    check_rows(rows, path, options)
    return rows


def check_text_file(path: Path) -> None:
    """UTF-8 and not empty, read in chunks (constant memory, linear time)."""
    import codecs

    decoder, offset, blank = codecs.getincrementaldecoder("utf-8")(), 0, True
    with path.open("rb") as file:
        while chunk := file.read(READ_CHUNK):
            pending = decoder.getstate()[0]  # the start of a character that the last chunk cut in two
            try:
                blank = not decoder.decode(chunk).strip() and blank
            except UnicodeDecodeError as error:
                data = pending + chunk
                raise FinetuneError(
                    f"{path} is not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
                    f"{offset - len(pending) + error.start}): convert it first, e.g. with `iconv -f latin1 -t utf-8`."
                ) from None
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise FinetuneError(f"{path} is not UTF-8 text (it ends inside a character): is the file complete?") from None
    if blank:
        raise FinetuneError(f"{path} is empty: there is nothing to train on.")


def check_rows(rows, path: Path, options: FinetuneOptions) -> None:
    """Every document and summary is text with something in it; rows are counted from 1, in file order."""
    names = {options.text_column: "document", options.summary_column: "summary"}
    row = 0
    for batch in rows.iter(batch_size=1000):
        for values in zip(*(batch[column] for column in names)):
            row += 1
            for (column, what), value in zip(names.items(), values):
                if value is None or (isinstance(value, str) and not value.strip()):
                    raise FinetuneError(f"{path}: row {row} has an empty {what} (column {column!r}): fill it in "
                                        "or remove the row.")
                if not isinstance(value, str):
                    raise FinetuneError(f"{path}: row {row}: the {what} (column {column!r}) is not text but "
                                        f"{type(value).__name__}: is {column!r} the right column?")


def json_lines_problem(path: Path) -> str | None:
    """The first line that is not a JSON object, said the way an editor finds it (pyarrow names no line)."""
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as error:
                return f"line {number} is not valid JSON ({error.msg}, column {error.colno})"
            if not isinstance(value, dict):
                return f"line {number} is not a JSON object (one document and its summary per line)"
    return None


def format_name(path: Path) -> str:
    return {".jsonl": "JSON Lines", ".json": "JSON", ".csv": "CSV", ".parquet": "Parquet"}[path.suffix.lower()]


def root_cause(error: BaseException) -> str:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return " ".join(str(error).split()) or type(error).__name__


# ----------------------------------------------------------------------------------------------------------------
# The model and the tokenized corpus.


def load_model(source: ModelSource):
    """The model (float32 weights on the CPU, for the Trainer to place) and its tokenizer, by the code that
    `resolve_model` allowed."""
    from .summarize import load_model_and_tokenizer

    # No device map: the Trainer (or accelerate) moves the model. Weights in float32: --bf16 autocasts compute only.
    with without_weight_loading_bar():
        return load_model_and_tokenizer(source, device=None, dtype="float32")


@contextmanager
def without_weight_loading_bar() -> Iterator[None]:
    """transformers 5 draws a bar while it reads weights from disk: noise before the training bar. Downloads from
    the Hub keep theirs."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    bars, download_bars = transformers_logging.is_progress_bar_enabled(), not are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()  # also turns off the Hub's
    if download_bars:
        enable_progress_bars()
    try:
        yield
    finally:
        if bars:
            transformers_logging.enable_progress_bar()


def check_source_length(options: FinetuneOptions, source: ModelSource) -> None:
    """--max-source-length against the model's positions, read from its config.json before the model loads."""
    if options.max_source_length is None:
        return
    from .summarize import download_config, read_json

    config = Path(source.location) / "config.json" if is_local(source) else download_config(source.location,
                                                                                             source.revision)
    check_longest(options, read_json(config).get("max_position_embeddings"))


def source_length(options: FinetuneOptions, model, tokenizer) -> int:
    """The document length to train on: --max-source-length, or all the model reads (positions and tokenizer)."""
    from .summarize import input_token_limit

    longest = input_token_limit(model.config, tokenizer)
    check_longest(options, longest)
    return options.max_source_length or longest


def check_longest(options: FinetuneOptions, longest: int | None) -> None:
    if longest and options.max_source_length and options.max_source_length > longest:
        raise FinetuneError(f"--max-source-length {options.max_source_length} is more than the {longest} tokens the "
                            f"model reads: give at most {longest}.")


class CorpusEncoder:
    """Token ids of documents and summaries as the summarizer feeds the model: line breaks as Pegasus' `<n>` (when
    the tokenizer has it), cut to the length limits with the special tokens kept."""

    def __init__(self, tokenizer, max_source_length: int, max_target_length: int):
        from .summarize import NEWLINE_TOKEN, special_tokens_around

        self.tokenizer = tokenizer
        self.limits = {"input_ids": max_source_length, "labels": max_target_length}
        self.prefix, self.suffix = special_tokens_around(tokenizer)
        self.writes_newlines = tokenizer.convert_tokens_to_ids(NEWLINE_TOKEN) not in (None, tokenizer.unk_token_id)

    def encode(self, rows, options: FinetuneOptions, split: str, notify: Callable[[str], None]):
        """The tokenized dataset (input_ids, attention_mask, labels); tells `notify` how many texts were cut."""
        columns = {"input_ids": options.text_column, "labels": options.summary_column}
        encoded = rows.map(lambda batch: self.encode_batch(batch, columns), batched=True,
                           remove_columns=rows.column_names)
        for name, what, option in (("input_ids", "documents", "--max-source-length"),
                                   ("labels", "summaries", "--max-target-length")):
            cut = sum(encoded[f"{name}_cut"])
            if cut:
                notify(f"warning: {cut} of {len(encoded)} {split} {what} are longer than {self.limits[name]} tokens "
                       f"({option}): their ends are cut.")
        return encoded.remove_columns(["input_ids_cut", "labels_cut"])

    def encode_batch(self, batch: dict[str, list], columns: dict[str, str]) -> dict[str, list]:
        encoded = {}
        for name, column in columns.items():
            texts = [self.prepare(text) for text in batch[column]]
            # verbose=False: the tokenizer's too-long warning would precede (and contradict) our accounting.
            ids = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
            content = self.limits[name] - len(self.prefix) - len(self.suffix)
            encoded[name] = [[*self.prefix, *row[:content], *self.suffix] for row in ids]
            encoded[f"{name}_cut"] = [len(row) > content for row in ids]
        encoded["attention_mask"] = [[1] * len(row) for row in encoded["input_ids"]]
        return encoded

    def prepare(self, text: str) -> str:
        if self.writes_newlines:
            from .tokenizer import encode_newlines

            return encode_newlines(text)
        return text.strip()


def lora_config(rank: int, dropout: float = LORA_DROPOUT):
    """PEFT LoRA on every attention projection, alpha = 2 * rank."""
    from peft import LoraConfig, TaskType

    return LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=dropout, target_modules=list(LORA_TARGET_MODULES),
                      task_type=TaskType.SEQ_2_SEQ_LM)


def with_lora(model, rank: int, dropout: float = LORA_DROPOUT):
    from peft import get_peft_model

    with warnings.catch_warnings():
        # peft (0.21) still reads transformers 5's deprecated `is_gradient_checkpointing`: not the user's to fix.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, lora_config(rank, dropout))


# ----------------------------------------------------------------------------------------------------------------
# Training.


def make_trainer(model, tokenizer, arguments, encoded: dict, references: list[str] | None, progress: bool):
    from transformers import DataCollatorForSeq2Seq, ProgressCallback, Seq2SeqTrainer

    trainer = Seq2SeqTrainer(
        model=model, args=arguments, train_dataset=encoded["training"], eval_dataset=encoded.get("validation"),
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100), processing_class=tokenizer,
        compute_metrics=None if references is None else RougeMetrics(tokenizer, references),
    )
    trainer.remove_callback(ProgressCallback)
    for callback in training_callbacks(progress):
        trainer.add_callback(callback)
    return trainer


def training_arguments(options: FinetuneOptions, model_config, evaluate: bool):
    import dataclasses

    import torch
    from transformers import Seq2SeqTrainingArguments

    # transformers 5 renamed gradient checkpointing to activation checkpointing (the old names warn).
    names = {field.name for field in dataclasses.fields(Seq2SeqTrainingArguments)}
    accelerated = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return Seq2SeqTrainingArguments(
        output_dir=str(options.checkpoint_dir),
        learning_rate=options.learning_rate,
        num_train_epochs=options.epochs,
        max_steps=options.max_steps or -1,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size,
        gradient_accumulation_steps=options.gradient_accumulation,
        bf16=options.bf16,
        seed=options.seed,
        logging_steps=options.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=options.save_steps,
        save_total_limit=CHECKPOINTS_KEPT,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=options.eval_steps or options.save_steps,
        predict_with_generate=True,
        generation_max_length=options.max_target_length,
        generation_num_beams=options.num_beams,
        report_to="none",
        # Without a GPU: gloo between the processes of a multi-process launch (else each would train alone), and
        # no pinned memory (it needs a GPU, and warns without one).
        use_cpu=not accelerated,
        # DDP need not search for unused parameters (slow, and it warns) unless layers are dropped at random.
        ddp_find_unused_parameters=bool(model_config.encoder_layerdrop or model_config.decoder_layerdrop),
        dataloader_pin_memory=accelerated,
        disable_tqdm=False,  # our progress callback replaces the Trainer's; TRANSFORMERS_VERBOSITY would turn it off
        **{checkpointing: options.gradient_checkpointing,
           f"{checkpointing}_kwargs": {"use_reentrant": False}},  # reentrant checkpointing drops LoRA's gradients
    )


def training_callbacks(progress: bool) -> list:
    """The last step's loss is logged too (the run's report ends with it); with `progress`, the Trainer's progress
    bar with readable log lines on stderr instead of printed dicts on stdout."""
    from tqdm import tqdm
    from transformers import ProgressCallback, TrainerCallback

    class LogLastStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_log = True

    class ProgressLines(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            line = log_line(logs or {}, state.global_step, state.max_steps)
            if state.is_world_process_zero and line:
                tqdm.write(line, file=sys.stderr)

    return [LogLastStep(), ProgressLines()] if progress else [LogLastStep()]


def log_line(logs: dict[str, Any], step: int, max_steps: int) -> str | None:
    if "loss" in logs:
        return f"step {step}/{max_steps}: loss {logs['loss']:.4f}, learning rate {logs.get('learning_rate', 0):.3g}"
    if "eval_loss" in logs:
        return f"step {step}/{max_steps}: {validation_summary(strip_prefix(logs))}"
    return None


def strip_prefix(logs: dict[str, Any], prefix: str = "eval_") -> dict[str, Any]:
    return {name.removeprefix(prefix): value for name, value in logs.items() if name.startswith(prefix)}


def validation_summary(metrics: dict[str, float]) -> str:
    """validation loss 1.2345, ROUGE-1 40.12, ROUGE-2 18.30, ROUGE-Lsum 36.77"""
    scores = "".join(f", ROUGE-{name.removeprefix('rouge')} {metrics[name]:.2f}"
                     for name in ("rouge1", "rouge2", "rougeLsum") if name in metrics)
    return f"validation loss {metrics['loss']:.4f}{scores}"


class RougeMetrics:
    """`compute_metrics` of the Trainer: ROUGE (in %) of the generated summaries against the reference texts, in
    the validation file's order (the Trainer evaluates in order, also over several processes)."""

    def __init__(self, tokenizer, references: list[str]):
        self.tokenizer = tokenizer
        self.references = references

    def __call__(self, prediction) -> dict[str, float]:
        import numpy as np

        from .rouge import document_scores, mean_scores

        ids = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        ids = np.where(ids < 0, self.tokenizer.pad_token_id, ids)  # the Trainer pads batches with -100
        summaries = self.tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        scores = mean_scores(document_scores(summaries, self.references))
        return {name: 100 * value for name, value in scores.items()}


def train(trainer, options: FinetuneOptions, result: FinetuneResult) -> None:
    """Trains (from the last checkpoint with --resume), evaluates after the last step, and fills in `result`."""
    result.main_process = trainer.is_world_process_zero()
    result.processes = trainer.args.world_size
    result.resumed_from = last_checkpoint(options.checkpoint_dir) if options.resume else None
    if result.main_process and options.overwrite and not options.resume:
        remove_checkpoints(options.checkpoint_dir)  # an earlier run's; we start over
    trainer.accelerator.wait_for_everyone()
    with warnings.catch_warnings():
        # transformers 4.57 orders checkpoints saved within one second by number, correctly, and warns that
        # the file system's mtime "may not be reliable": a fast run's noise, not the user's to fix.
        warnings.filterwarnings("ignore", message="mtime may not be reliable", category=UserWarning)
        trainer.train(resume_from_checkpoint=None if result.resumed_from is None else str(result.resumed_from))
    if result.validation_documents and last_logged(trainer, "eval_loss")[0] != trainer.state.global_step:
        trainer.evaluate()  # transformers 4.x evaluates after the last step only where it falls on --eval-steps
    result.steps = trainer.state.global_step
    result.losses = [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    result.metrics = strip_prefix(last_logged(trainer, "eval_loss")[1])


def last_logged(trainer, key: str) -> tuple[int | None, dict]:
    for entry in reversed(trainer.state.log_history):
        if key in entry:
            return entry["step"], entry
    return None, {}


def remove_checkpoints(folder: Path) -> None:
    """Removes the Trainer's checkpoint folders, and `folder` if nothing else is in it."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_dir() and CHECKPOINT.match(path.name):
            shutil.rmtree(path)
    if not any(folder.iterdir()):
        folder.rmdir()


# ----------------------------------------------------------------------------------------------------------------
# Saving.


def save(model, options: FinetuneOptions, source: ModelSource, result: FinetuneResult) -> None:
    tokenizer = tokenizer_folder(source)
    if options.save_adapter:
        save_adapter(model, options, source, tokenizer)
        return
    from .repo import build_repo

    if options.lora:
        model = model.merge_and_unload()
    build_repo(options.out_dir, model=plugin_model(model), tokenizer=tokenizer,
               generation_config=model.generation_config, description=model_card_text(options, result),
               overwrite=options.overwrite)


def is_local(source: ModelSource) -> bool:
    return source.revision is None and not source.remote_code and Path(source.location).is_dir()


def tokenizer_folder(source: ModelSource) -> Path:
    """The model's tokenizer files, as they came: the local folder, or the Hub repo's (already in the cache)."""
    if is_local(source):
        return Path(source.location)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source.location, revision=source.revision, allow_patterns=list(TOKENIZER_FILES)))


def plugin_model(model):
    """This package's model class with `model`'s weights (a Hub repo's own code may have trained them)."""
    from .plugin.modeling_bigbird_pegasus import BigBirdPegasusPreTrainedModel
    from .repo import model_from_weights

    if isinstance(model, BigBirdPegasusPreTrainedModel):
        return model
    config = {key: value for key, value in model.config.to_dict().items() if key not in ("auto_map", "model_type")}
    return model_from_weights(config, model.state_dict())


def save_adapter(model, options: FinetuneOptions, source: ModelSource, tokenizer: Path) -> None:
    """The LoRA adapter (adapter_config.json, adapter_model.safetensors) and the tokenizer, written atomically.
    The adapter names its base model: the folder (as an absolute path) or the Hub repo at the trained commit."""
    from .atomic import atomic_output_folder
    from .repo import write_tokenizer

    config = model.peft_config["default"]
    config.base_model_name_or_path = str(Path(source.location).resolve()) if is_local(source) else source.location
    config.revision = source.revision
    with atomic_output_folder(options.out_dir, overwrite=options.overwrite) as staging:
        model.save_pretrained(staging)
        write_tokenizer(tokenizer, staging)


def model_card_text(options: FinetuneOptions, result: FinetuneResult) -> str:
    how = f" with LoRA (rank {options.lora_rank}, merged)" if options.lora else ""
    text = (f"Fine-tuned from `{options.model}`{how} with `bigbird-pegasus finetune` on {options.train_file.name} "
            f"({result.train_documents} documents, {result.steps} steps).")
    if result.metrics:
        text += (f" On {options.validation_file.name} ({result.validation_documents} documents): "
                 f"{validation_summary(result.metrics)}.")
    return text
