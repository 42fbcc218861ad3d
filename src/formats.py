"""The formats a ``datasets`` entry can name, and how one row of each becomes a record.

FORMATS holds one entry per format: the fields it reads, how its conversations name their roles
and the keys of a turn, and its converter. Each row becomes a conversation of system/user/assistant
turns, and that a record whose prompt holds every turn before the last assistant reply (earlier
replies included) and whose completion is that reply; training puts the loss on every assistant
turn (src/chat.py). A row that cannot become a record is dropped and counted by reason
(DROP_REASONS); a format that FORMATS does not hold is a PipelineError naming it.

    from src.formats import conversation_of, to_record
    record, cut = to_record(conversation_of("alpaca", row), "support", max_chars=6000)

The params schema (src/config.py) takes its format names from FORMATS, so this module imports
nothing heavy; src/sources.py reads the files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pydantic import ValidationError

from src.errors import PipelineError
from src.records import Record, Turn

TEXT, CONVERSATION = "text", "conversation"


@dataclass(frozen=True)
class Field:
    name: str
    kind: str = TEXT  # TEXT: a string; CONVERSATION: a list of turns (or a JSON string of one)
    required: bool = True


DROP_REASONS = ("wrong_type", "bad_json", "unknown_role", "no_user_turn", "no_assistant_reply", "empty_reply",
                "empty_turn", "turn_order", "too_long", "nul_char", "invalid_unicode")
_SURROGATE = re.compile("[\ud800-\udfff]")


class Drop(Exception):
    """A row that cannot become a record, with the reason it is counted under."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _text(value, missing: str, blank: str) -> str | None:
    """A text field stripped; None (null or absent) raises Drop(missing), blank Drop(blank); a
    non-string Drop('wrong_type'). ``missing``/``blank`` of None make the field optional."""
    if value is None:
        if missing:
            raise Drop(missing)
        return None
    if not isinstance(value, str):
        raise Drop("wrong_type")
    value = value.strip()
    if not value and blank:
        raise Drop(blank)
    return value or None


def _json_cell(text: str, plain: bool):
    """A conversation held as JSON text (a CSV or parquet string cell), parsed: Drop('bad_json')
    when it cannot be (invalid, or nested too deeply). When ``plain`` (prompt_completion), text that
    is not a JSON list of objects with a ``role`` is returned as it is: TRL's standard form."""
    if plain and not text.lstrip().startswith("["):
        return text
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        if plain:
            return text
        raise Drop("bad_json") from None
    if plain and not (isinstance(value, list) and value
                      and all(isinstance(t, dict) and "role" in t for t in value)):
        return text
    return value


@dataclass(frozen=True)
class Format:
    """One format of ``datasets`` entries. ``fields``: what it reads, by their usual column names
    (params' ``columns`` renames them). ``convert``: one row, keyed by field name, to its (role,
    text) turns, or Drop; None for the pipeline's own record lines, read as they are
    (record_of_line). For a format of conversations: ``roles`` maps each of its role names
    (lowercased) to system, user or assistant, ``turn_keys`` names a turn's role and content, and
    ``plain_text`` takes a conversation that is plain text (TRL's standard form) as one turn of
    role ``text``."""

    fields: tuple[Field, ...]
    convert: Callable[[Format, dict], list[tuple[str, str]]] | None
    roles: dict[str, str] | None = None
    turn_keys: tuple[str, str] = ("role", "content")
    plain_text: bool = False

    def conversation(self, row: dict) -> list[tuple[str, str]]:
        """The turns of one row (by the format's own field names); raises Drop."""
        return self.convert(self, row)

    def turns(self, value) -> list[tuple[str, str]]:
        """A conversation field as (role, stripped text) pairs; a JSON string (a CSV cell) is parsed."""
        if value is None:
            return []
        if isinstance(value, str):
            value = _json_cell(value, self.plain_text)
            if isinstance(value, str):
                return [("text", value.strip())]
        if not isinstance(value, (list, tuple)):
            raise Drop("wrong_type")
        role_key, content_key = self.turn_keys
        turns = []
        for turn in value:
            if not isinstance(turn, dict):
                raise Drop("wrong_type")
            role, content = turn.get(role_key), turn.get(content_key)
            if not isinstance(role, str) or not (content is None or isinstance(content, str)):
                raise Drop("wrong_type")
            if role.strip().lower() not in self.roles:
                raise Drop("unknown_role")
            turns.append((self.roles[role.strip().lower()], (content or "").strip()))
        return turns


def _single_turn(system: str | None, user: str, assistant: str) -> list[tuple[str, str]]:
    return ([("system", system)] if system else []) + [("user", user), ("assistant", assistant)]


def _instruction(fmt: Format, row: dict) -> list[tuple[str, str]]:
    """alpaca and platypus: the instruction, then the input (if any) after a blank line, asks."""
    instruction = _text(row.get("instruction"), "no_user_turn", "no_user_turn")
    extra = _text(row.get("input"), "", "")
    output = _text(row.get("output"), "no_assistant_reply", "empty_reply")
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return _single_turn(_text(row.get("system"), "", ""), user, output)


def _orca(fmt: Format, row: dict) -> list[tuple[str, str]]:
    return _single_turn(_text(row.get("system_prompt"), "", ""),
                        _text(row.get("question"), "no_user_turn", "no_user_turn"),
                        _text(row.get("response"), "no_assistant_reply", "empty_reply"))


def _sharegpt(fmt: Format, row: dict) -> list[tuple[str, str]]:
    system = _text(row.get("system"), "", "")
    return ([("system", system)] if system else []) + fmt.turns(row.get("conversations"))


def _messages(fmt: Format, row: dict) -> list[tuple[str, str]]:
    return fmt.turns(row.get("messages"))


def _prompt_completion(fmt: Format, row: dict) -> list[tuple[str, str]]:
    """A plain text prompt is the user's, a plain text completion the assistant's."""
    prompt, completion = fmt.turns(row.get("prompt")), fmt.turns(row.get("completion"))
    prompt = [("user" if r == "text" else r, t) for r, t in prompt]
    completion = [("assistant" if r == "text" else r, t) for r, t in completion]
    if not completion:
        raise Drop("no_assistant_reply")
    if any(r != "assistant" for r, _ in completion):
        raise Drop("turn_order")  # a completion holds the reply only
    return prompt + completion


CHAT_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
# Every format a datasets entry can name (the params schema's list, in this order).
FORMATS: dict[str, Format] = {
    "records": Format((), None),  # the pipeline's own record lines (src/records.py), e.g. generate_identity_data's
    "alpaca": Format((Field("instruction"), Field("input", required=False), Field("output"),
                      Field("system", required=False)), _instruction),
    "sharegpt": Format((Field("conversations", CONVERSATION), Field("system", required=False)), _sharegpt,
                       roles={"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                              "chatgpt": "assistant", "model": "assistant", "system": "system"},
                       turn_keys=("from", "value")),
    "messages": Format((Field("messages", CONVERSATION),), _messages, roles=CHAT_ROLES),
    "prompt_completion": Format((Field("prompt", CONVERSATION), Field("completion", CONVERSATION)),
                                _prompt_completion, roles=CHAT_ROLES, plain_text=True),
    "orca": Format((Field("system_prompt", required=False), Field("question"), Field("response")), _orca),
    "platypus": Format((Field("instruction"), Field("input", required=False), Field("output")), _instruction),
}


# --- preference data (align.datasets): a row gives a prompt and a chosen and/or a rejected answer ---

PREFERENCE_DROP_REASONS = ("prompt_mismatch", "same_answer", "unpaired")


def _conversation_reply(fmt: Format, value) -> tuple[list[tuple[str, str]], str]:
    """A chosen or rejected field: a plain answer, or a conversation ending on the assistant's reply
    (its earlier turns: the prompt, as UltraFeedback-binarized and TRL's implicit-prompt form hold it)."""
    turns = [("assistant" if r == "text" else r, t) for r, t in fmt.turns(value)]
    if not turns:
        raise Drop("no_assistant_reply")
    if turns[-1][0] != "assistant":
        raise Drop("turn_order")
    return turns[:-1], turns[-1][1]


def _preference(fmt: Format, row: dict) -> tuple[list[tuple[str, str]], str | None, str | None]:
    """TRL's preference form: ``prompt`` (optional when both answers hold it), ``chosen``, ``rejected``."""
    prompt = [("user" if r == "text" else r, t) for r, t in fmt.turns(row.get("prompt"))]
    (chosen_head, chosen), (rejected_head, rejected) = (_conversation_reply(fmt, row.get(k))
                                                        for k in ("chosen", "rejected"))
    if chosen_head != rejected_head:
        raise Drop("prompt_mismatch")
    return chosen_head or prompt, chosen, rejected


def _orca_pairs(fmt: Format, row: dict) -> tuple[list[tuple[str, str]], str | None, str | None]:
    system = _text(row.get("system"), "", "")
    prompt = ([("system", system)] if system else []) + [("user", _text(row.get("question"), "no_user_turn",
                                                                          "no_user_turn"))]
    return (prompt, _text(row.get("chosen"), "no_assistant_reply", "empty_reply"),
            _text(row.get("rejected"), "no_assistant_reply", "empty_reply"))


def _unpaired(fmt: Format, row: dict) -> tuple[list[tuple[str, str]], str | None, str | None]:
    """TRL's unpaired form (KTO): ``prompt``, ``completion`` and a boolean ``label`` (desirable or not)."""
    prompt = [("user" if r == "text" else r, t) for r, t in fmt.turns(row.get("prompt"))]
    head, completion = _conversation_reply(fmt, row.get("completion"))
    label = row.get("label")
    if isinstance(label, str) and label.strip().lower() in ("true", "false"):  # a CSV cell
        label = label.strip().lower() == "true"
    if not isinstance(label, bool):
        raise Drop("wrong_type")
    prompt = head or prompt
    return (prompt, completion, None) if label else (prompt, None, completion)


_PAIR_FIELDS = (Field("prompt", CONVERSATION, required=False), Field("chosen", CONVERSATION),
                Field("rejected", CONVERSATION))
# Every format an align.datasets entry can name (the params schema's list): each converts a row to
# (prompt turns, chosen answer or None, rejected answer or None).
PREFERENCE_FORMATS: dict[str, Format] = {
    # TRL's preference form, plain or conversational, the prompt explicit or inside both answers
    "preference": Format(_PAIR_FIELDS, _preference, roles=CHAT_ROLES, plain_text=True),
    # UltraFeedback-binarized: chosen and rejected as message lists, the user's turn in each
    "ultrafeedback": Format(_PAIR_FIELDS, _preference, roles=CHAT_ROLES, plain_text=True),
    "orca_dpo_pairs": Format((Field("system", required=False), Field("question"), Field("chosen"),
                              Field("rejected")), _orca_pairs),  # Intel/orca_dpo_pairs
    "unpaired": Format((Field("prompt", CONVERSATION), Field("completion", CONVERSATION), Field("label")),
                       _unpaired, roles=CHAT_ROLES, plain_text=True),  # KTO's
}


def preference_format_of(name: str) -> Format:
    if name not in PREFERENCE_FORMATS:
        raise PipelineError(f"unknown preference format '{name}' (one of {', '.join(PREFERENCE_FORMATS)})")
    return PREFERENCE_FORMATS[name]


def format_of(name: str) -> Format:
    """The entry of FORMATS for ``name``; a PipelineError for a format it does not hold."""
    if name not in FORMATS:
        raise PipelineError(f"unknown data format '{name}' (one of {', '.join(FORMATS)})")
    return FORMATS[name]


def conversation_of(fmt: str, row: dict) -> list[tuple[str, str]]:
    """The turns of one row (by the format's own field names); raises Drop."""
    return format_of(fmt).conversation(row)


def check_columns(source: str, fmt: str, columns: dict[str, str]) -> None:
    """``columns`` renames only fields ``fmt`` reads (a PipelineError names the others)."""
    fields = [f.name for f in format_of(fmt).fields]
    unknown = sorted(set(columns) - set(fields))
    if unknown:
        raise PipelineError(f"params.yaml: datasets.{source}.columns: {', '.join(unknown)} is not a field of "
                            f"format {fmt} (its fields: {', '.join(fields) or 'none; records are read as they are'})")


def check_chars(texts: Iterable[str]) -> None:
    """Drop('nul_char') for text holding a NUL character (a sign of a binary or UTF-16 file read
    as text), Drop('invalid_unicode') for a lone surrogate (JSON's ``"\\ud800"``, which no UTF-8
    text can hold): the same for every file kind."""
    for text in texts:
        if "\x00" in text:
            raise Drop("nul_char")
        if _SURROGATE.search(text):
            raise Drop("invalid_unicode")


def to_record(turns: list[tuple[str, str]], source: str, max_chars: int) -> tuple[Record, int]:
    """A checked conversation as a record, and how many unanswered user turns were cut from its end.

    A blank system turn is left out; a system turn after the first, two user or two assistant
    turns in a row, or a reply before any question is Drop('turn_order')."""
    check_chars(t for _, t in turns)
    turns = [(r, t) for r, t in turns if r != "system" or t]
    if not any(r == "user" and t for r, t in turns):
        raise Drop("no_user_turn")
    if not any(r == "assistant" for r, _ in turns):
        raise Drop("no_assistant_reply")
    if any(r == "assistant" and not t for r, t in turns):
        raise Drop("empty_reply")
    if any(not t for _, t in turns):
        raise Drop("empty_turn")
    last_reply = max(i for i, (r, _) in enumerate(turns) if r == "assistant")
    trimmed = len(turns) - 1 - last_reply
    turns = turns[:last_reply + 1]
    try:  # the record's own check of the turn order
        record = Record(prompt=[Turn(role=r, content=t) for r, t in turns[:-1]],
                        completion=[Turn(role="assistant", content=turns[-1][1])], source=source)
    except ValidationError:
        raise Drop("turn_order") from None
    if sum(len(t) for _, t in turns) > max_chars:
        raise Drop("too_long")
    return record, trimmed


def record_of_line(row: dict, where: str, path, source: str, max_chars: int) -> Record:
    """A row of format ``records`` as a record of ``source``, dropped as any row is (a NUL, a lone
    surrogate, over ``max_chars``); a row that is no valid record is a PipelineError naming ``path``
    and ``where``."""
    check_chars(_record_texts(row))
    record = _record_line(row, where, path)
    if sum(len(t.content) for t in (*record.prompt, *record.completion)) > max_chars:
        raise Drop("too_long")
    return record.model_copy(update={"source": source})


def _record_texts(row: dict) -> list[str]:
    """The turn contents of a pipeline record line, before it is validated."""
    return [t["content"] for key in ("prompt", "completion") if isinstance(row.get(key), list)
            for t in row[key] if isinstance(t, dict) and isinstance(t.get("content"), str)]


def _record_line(row: dict, where: str, path) -> Record:
    try:
        return Record.model_validate(row)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise PipelineError(f"{path}: {where}: not a valid record ({loc + ': ' if loc else ''}{first['msg']})") from err
