"""Turning records into model input: the one place conversations meet the chat template.

Training, evaluation and generation all build conversations with :func:`conversation`
and tokenize them only through the tokenizer's own chat template, so a prompt is
the same token sequence whether the model is learning from it or answering it.

    from src.chat import conversation, generation_inputs
    batch = generation_inputs(tokenizer, [conversation(record.prompt, system_prompt)])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from src.records import Record

Message = dict[str, str]

# The first line of a chat template that puts the pipeline's system prompt first (see with_system_prompt).
SYSTEM_PROMPT_MARK = "{#- pipeline: chat.system_prompt when a conversation has none -#}"


def conversation(prompt: Iterable, system_prompt: str | None) -> list[Message]:
    """Prompt turns as chat messages, with ``system_prompt`` first when the prompt has no system turn.

    ``system_prompt=None`` leaves a missing system turn to the chat template (some
    templates then insert their own default, e.g. SmolLM2's "named SmolLM").
    """
    messages = [t if isinstance(t, dict) else t.model_dump() for t in prompt]
    if system_prompt is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def training_example(record: Record, system_prompt: str | None) -> dict[str, list[Message]]:
    """TRL's conversational prompt/completion form (a multi-turn record's earlier replies are in
    its prompt); ``supervised_ids`` turns it into tokens with every assistant turn supervised."""
    return {"prompt": conversation(record.prompt, system_prompt),
            "completion": [t.model_dump() for t in record.completion]}


def prompt_ids(tokenizer, messages: Sequence[Message]) -> list[int]:
    """Token ids of a prompt ready for the assistant's answer (the generation prompt)."""
    return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                         return_dict=True)["input_ids"]


def conversation_ids(tokenizer, messages: Sequence[Message]) -> list[int]:
    """Token ids of a whole conversation (replies included) as the chat template renders it."""
    return tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=True)["input_ids"]


def supervised_ids(tokenizer, example: dict) -> dict[str, list[int]]:
    """A whole example (prompt turns then its reply) as the chat template renders it: ``input_ids``,
    and ``assistant_masks`` that are 1 on every assistant turn, its end-of-turn token included.

    Each assistant turn starts where the conversation rendered up to it, with the generation
    prompt, stops matching the whole; it ends where the conversation rendered through it stops
    matching. A single-turn example gets exactly TRL's completion mask for the same turns."""
    from trl.data_utils import common_prefix_length  # how TRL finds where a completion starts

    messages = example["prompt"] + example["completion"]
    ids = conversation_ids(tokenizer, messages)
    mask = [0] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            start = common_prefix_length(prompt_ids(tokenizer, messages[:i]), ids)
            end = len(ids) if i == len(messages) - 1 else \
                common_prefix_length(conversation_ids(tokenizer, messages[:i + 1]), ids)
            mask[start:end] = [1] * (end - start)
    return {"input_ids": ids, "assistant_masks": mask}


def generation_inputs(tokenizer, conversations: Sequence[Sequence[Message]]):
    """A left-padded batch of generation prompts, as tensors."""
    tokenizer.padding_side = "left"
    return tokenizer.apply_chat_template([list(c) for c in conversations], add_generation_prompt=True,
                                         tokenize=True, padding=True, return_dict=True,
                                         return_tensors="pt")


def with_system_prompt(template: str, system_prompt: str | None) -> str:
    """``template`` made to put ``system_prompt`` first in every conversation that has no system
    turn, so that any client of a saved model folder (transformers, llama.cpp, vLLM) sends the
    prompt the model was trained with instead of the template's own default (SmolLM2's "named
    SmolLM"). A template made so before is remade with the new prompt; ``None`` leaves it as is."""
    if template.startswith(SYSTEM_PROMPT_MARK):
        template = template.split("\n", 2)[2]
    if system_prompt is None:
        return template
    return (f"{SYSTEM_PROMPT_MARK}\n"
            f"{{%- if not messages or messages[0]['role'] != 'system' %}}{{%- set messages = "
            f"[{{'role': 'system', 'content': {jinja_string(system_prompt)}}}] + messages %}}{{%- endif -%}}\n"
            f"{template}")


# Escaped in a Jinja string literal: its quote, the escape character, and the line breaks a saved
# template file would lose (a file read in text mode turns "\r" into "\n").
_JINJA_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def jinja_string(text: str) -> str:
    """``text`` as a Jinja string literal that renders exactly ``text`` in Jinja2 (transformers,
    llama-cpp-python) and in llama.cpp's template engine: every character but the quote, the
    backslash and the line breaks as itself, so emoji, CJK and right-to-left text stay readable
    in the saved template. (``json.dumps`` writes a character outside the BMP as two ``\\u``
    surrogate escapes, which Jinja reads as two lone halves that no tokenizer takes.)"""
    return '"' + text.translate(_JINJA_ESCAPES) + '"'
