"""Summarization pipeline for BigBirdPegasus (remote code: imports only torch and transformers' public API).

transformers 5 dropped its built-in `summarization` pipeline, so a Hub repo registers this one in its config.json
(`"custom_pipelines": CUSTOM_PIPELINES`, below), and `pipeline("summarization", model=repo, trust_remote_code=True)`
then loads it, on transformers 4.57 and 5.x alike.
"""

import torch
from transformers import Pipeline, logging

logger = logging.get_logger(__name__)

# What a Hub repo's config.json holds under "custom_pipelines" to serve this pipeline.
CUSTOM_PIPELINES = {
    "summarization": {
        "impl": "pipeline_bigbird_pegasus.BigBirdPegasusSummarizationPipeline",
        "pt": ["AutoModelForSeq2SeqLM"],
        "tf": [],
        "type": "text",
    }
}

# Pegasus writes line breaks as this token, in its inputs and in its summaries.
NEWLINE_TOKEN = "<n>"

# Tokenizers that set no `model_max_length` report a huge placeholder (int(1e30)): this large means "no limit".
_UNSET_MODEL_MAX_LENGTH = int(1e20)


class BigBirdPegasusSummarizationPipeline(Pipeline):
    """
    Summarizes documents with an encoder-decoder model such as BigBirdPegasus.

    Example:

    ```python
    >>> from transformers import pipeline

    >>> summarizer = pipeline("summarization", model="path/or/repo", trust_remote_code=True)
    >>> summarizer("A long article ...", max_new_tokens=64, num_beams=4)
    [{'summary_text': '...'}]
    ```

    Documents longer than the model reads (the smaller of `model.config.max_position_embeddings` and
    `tokenizer.model_max_length`) are cut, with a warning that says how many tokens were dropped; `truncation=False`
    makes that an error instead.

    Generation follows the model's `generation_config`, under the call's keyword arguments (any `generate()`
    argument: `min_length`, `max_length`, `max_new_tokens`, `num_beams`, ...). Where neither sets them, the pipeline
    uses `max_new_tokens=256` and `num_beams=4`, as transformers' former `SummarizationPipeline` did.
    """

    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    # Used when neither the call nor the model's generation config sets them (or a `max_length`, for the first).
    default_generate_kwargs = {"max_new_tokens": 256, "num_beams": 4}

    def __call__(self, documents, **kwargs):
        r"""
        Summarizes the document(s) given as inputs.

        Args:
            documents (`str` or `list[str]`):
                One document, or several to summarize in batches of `batch_size`.
            truncation (`bool`, *optional*, defaults to `True`):
                Cut documents longer than the model reads (with a warning); if `False`, raise a `ValueError`.
            return_text (`bool`, *optional*, defaults to `True` unless `return_tensors=True`):
                Include the decoded summary, with `<n>` turned back into line breaks.
            return_tensors (`bool`, *optional*, defaults to `False`):
                Include the summary's token ids.
            clean_up_tokenization_spaces (`bool`, *optional*, defaults to `False`):
                Remove the spaces that decoding leaves before punctuation.
            generate_kwargs:
                Passed to the model's `generate()` method, over the model's generation config.

        Return:
            One `dict` per document (a list of them per document with `num_return_sequences > 1`), with:

            - **summary_text** (`str`, present when `return_text=True`) -- the summary.
            - **summary_token_ids** (`torch.Tensor`, present when `return_tensors=True`) -- the generated token ids
              (decoder start token first), without the padding that batching adds after the end-of-sequence token.
        """
        if isinstance(documents, tuple):
            documents = list(documents)
        if isinstance(documents, list):
            if not documents:
                return []
            # Fail before summarizing any document, rather than after the ones that precede a bad one.
            for document in documents:
                _check_document(document)
        results = super().__call__(documents, **kwargs)
        # A single string already comes back as a list; unwrap the one-summary lists of a list input likewise.
        if isinstance(documents, list) and all(len(summaries) == 1 for summaries in results):
            return [summaries[0] for summaries in results]
        return results

    def _sanitize_parameters(
        self,
        truncation=None,
        return_text=None,
        return_tensors=None,
        clean_up_tokenization_spaces=None,
        **generate_kwargs,
    ):
        preprocess_params = {}
        if truncation is not None:
            preprocess_params["truncation"] = truncation

        postprocess_params = {}
        if return_tensors is not None:
            postprocess_params["return_tensors"] = return_tensors
            if return_text is None:
                return_text = not return_tensors
        if return_text is not None:
            postprocess_params["return_text"] = return_text
        if clean_up_tokenization_spaces is not None:
            postprocess_params["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        if postprocess_params.get("return_text") is False and not postprocess_params.get("return_tensors"):
            raise ValueError("Nothing to return: set `return_text=True` or `return_tensors=True`.")

        _warn_if_min_length_exceeds_max_length(generate_kwargs)
        return preprocess_params, generate_kwargs, postprocess_params

    def preprocess(self, document, truncation=True):
        text = self._model_text(document)
        # `verbose=False`: the tokenizer's own too-long warning would precede (and contradict) ours.
        model_inputs = self.tokenizer(text, return_tensors="pt", verbose=False)
        input_length = model_inputs["input_ids"].shape[-1]
        max_input_length = self.max_input_length
        if max_input_length is None or input_length <= max_input_length:
            return model_inputs

        excess = input_length - max_input_length
        if not truncation:
            raise ValueError(
                f"The document is {input_length} tokens long, {excess} more than the {max_input_length} this model "
                "reads. Shorten it, or pass `truncation=True` to cut it."
            )
        logger.warning(
            f"The document is {input_length} tokens long but this model reads at most {max_input_length}: "
            f"its last {excess} tokens were cut. Pass `truncation=False` to raise an error instead."
        )
        return self.tokenizer(text, return_tensors="pt", truncation=True, max_length=max_input_length)

    def _forward(self, model_inputs, **generate_kwargs):
        input_batch_size = model_inputs["input_ids"].shape[0]
        output_ids = self.model.generate(**model_inputs, **self._complete_generate_kwargs(generate_kwargs))
        # Group the `num_return_sequences` summaries of each document, so that un-batching keeps them together.
        output_ids = output_ids.reshape(input_batch_size, -1, output_ids.shape[-1])
        return {"output_ids": output_ids}

    def postprocess(self, model_outputs, return_text=True, return_tensors=False, clean_up_tokenization_spaces=False):
        summaries = []
        for output_ids in model_outputs["output_ids"][0]:
            summary = {}
            if return_tensors:
                summary["summary_token_ids"] = self._strip_padding(output_ids)
            if return_text:
                summary["summary_text"] = self.decode_summary(output_ids, clean_up_tokenization_spaces)
            summaries.append(summary)
        return summaries

    @property
    def max_input_length(self):
        """The longest input the model reads: the smaller of its position embeddings and the tokenizer's limit."""
        limits = [
            getattr(self.model.config, "max_position_embeddings", None),
            self.tokenizer.model_max_length if self.tokenizer.model_max_length < _UNSET_MODEL_MAX_LENGTH else None,
        ]
        limits = [limit for limit in limits if limit is not None]
        return min(limits) if limits else None

    def decode_summary(self, token_ids, clean_up_tokenization_spaces=False):
        """Decodes generated ids to text, turning Pegasus' `<n>` tokens back into line breaks."""
        text = self.tokenizer.decode(
            token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=clean_up_tokenization_spaces
        )
        return decode_newlines(text)

    def _model_text(self, document):
        """The document as the model was trained to read it: stripped, with line breaks as `<n>` if it knows them."""
        _check_document(document)
        return encode_newlines(document) if self._knows_newline_token() else document.strip()

    def _knows_newline_token(self):
        return self.tokenizer.convert_tokens_to_ids(NEWLINE_TOKEN) not in (None, self.tokenizer.unk_token_id)

    def _complete_generate_kwargs(self, call_kwargs):
        """The call's generate kwargs, plus the pipeline defaults for what neither the call nor the model sets."""
        if "generation_config" in call_kwargs:
            return call_kwargs  # the caller took over generation entirely
        generate_kwargs = dict(call_kwargs)
        model_settings = self.model.generation_config.to_diff_dict()
        already_set = generate_kwargs.keys() | model_settings.keys()
        for name, value in self.default_generate_kwargs.items():
            # A `max_new_tokens` default would override a `max_length` the caller or the model chose.
            if name in already_set or (name == "max_new_tokens" and "max_length" in already_set):
                continue
            generate_kwargs[name] = value
        # A length limit of the call replaces the model's other one: `generate()` would warn that both are set, and
        # a `max_new_tokens` of the model would win over the caller's `max_length`.
        for chosen, other in (("max_new_tokens", "max_length"), ("max_length", "max_new_tokens")):
            if call_kwargs.get(chosen) is not None and other not in call_kwargs and other in model_settings:
                generate_kwargs[other] = None
        # Batches are padded with the tokenizer's pad token: tell `generate()` if the model does not know it.
        if "pad_token_id" not in already_set and self.tokenizer.pad_token_id is not None:
            generate_kwargs["pad_token_id"] = self.tokenizer.pad_token_id
        return generate_kwargs

    def _strip_padding(self, token_ids):
        """
        Cuts what follows the first end-of-sequence token: `generate()` pads the summaries that end early to the
        length of the longest in their batch, so without this a summary's ids would depend on its batch.
        """
        eos_token_ids = self._eos_token_ids()
        if not eos_token_ids:
            return token_ids
        # Position 0 holds the decoder start token, which some models share with end-of-sequence.
        is_eos = torch.isin(token_ids[1:], torch.tensor(eos_token_ids, device=token_ids.device))
        eos_positions = torch.nonzero(is_eos)
        if len(eos_positions) == 0:
            return token_ids
        return token_ids[: int(eos_positions[0]) + 2]

    def _eos_token_ids(self):
        eos_token_ids = self.model.generation_config.eos_token_id
        if eos_token_ids is None:
            eos_token_ids = []
        elif isinstance(eos_token_ids, int):
            eos_token_ids = [eos_token_ids]
        if self.tokenizer.eos_token_id is not None:
            eos_token_ids = [*eos_token_ids, self.tokenizer.eos_token_id]
        return sorted(set(eos_token_ids))


# Line breaks <-> `<n>`, linear in the text's length (a regex like `\s*\n\s*` is quadratic on a long run of spaces).
def encode_newlines(text):
    """The text stripped, with each run of whitespace that holds line breaks written as one `<n>`."""
    lines = (line.strip() for line in text.split("\n"))
    return NEWLINE_TOKEN.join(line for line in lines if line)


def decode_newlines(text):
    """The text stripped, with each `<n>` (and the whitespace around it) turned back into a line break."""
    return "\n".join(part.strip() for part in text.split(NEWLINE_TOKEN)).strip()


def _check_document(document):
    if not isinstance(document, str):
        raise TypeError(f"Documents to summarize must be strings, got {type(document).__name__}.")
    if not document.strip():
        raise ValueError("Cannot summarize an empty document (the input is empty or only whitespace).")


def _warn_if_min_length_exceeds_max_length(generate_kwargs):
    min_length, max_length = generate_kwargs.get("min_length"), generate_kwargs.get("max_length")
    if min_length is not None and max_length is not None and min_length > max_length:
        logger.warning(f"min_length={min_length} is larger than max_length={max_length}: summaries stop at max_length.")
