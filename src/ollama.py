"""Ollama's Modelfile for a GGUF file of the merged model, its TEMPLATE from the chat template.

``modelfile`` writes Ollama's Modelfile: ``TEMPLATE`` is derived from the model's chat template
by rendering it around marker texts, and is checked against it before it is written, so that
Ollama builds byte for byte the prompt that transformers builds.

    from src.ollama import modelfile
    text = modelfile(AutoTokenizer.from_pretrained("models/merged"), "model-q8_0.gguf", system_prompt=None)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from src.errors import PipelineError
from src.lineage import flat

log = logging.getLogger(__name__)


@dataclass
class TurnTemplate:
    """A chat template as text around each message: ``head[role]`` before a first message,
    ``gap[(previous, role)]`` between two messages, ``tail`` after a last user message (the
    generation prompt included). Ollama's Go template and the check both are built from it."""
    head: dict[str, str]
    gap: dict[tuple[str, str], str]
    tail: str

    def render(self, messages: Sequence[dict]) -> str:
        text, previous = "", None
        for m in messages:
            text += self.head[m["role"]] if previous is None else self.gap[(previous, m["role"])]
            text += m["content"]
            previous = m["role"]
        return text + (self.tail if previous == "user" else "")


NOT_A_TURN_TEMPLATE = ("chat template: no Ollama TEMPLATE reproduces it (it alters message contents, or its "
                       "text between messages depends on more than their roles); export.ollama: null skips "
                       "the Modelfile")


def _marker(i: int) -> str:
    """A message content no template alters (private-use characters: no whitespace to strip)."""
    return f"\ue000{i}\ue001"


def _pieces(tokenizer, roles: Sequence[str]) -> list[str]:
    """The text a chat template puts before, between and after messages with these roles (the
    last, when a user's, followed by the generation prompt)."""
    messages = [{"role": r, "content": _marker(i)} for i, r in enumerate(roles)]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=roles[-1] == "user")
    except Exception as err:  # a template may raise on a conversation it does not take (jinja2's raise_exception)
        raise PipelineError(f"chat template: cannot render a {'/'.join(roles)} conversation ({err})") from err
    pieces = []
    for i in range(len(roles)):
        before, found, text = text.partition(_marker(i))
        if not found:
            raise PipelineError(NOT_A_TURN_TEMPLATE)
        pieces.append(before)
    return pieces + [text]


def turn_template(tokenizer) -> TurnTemplate:
    """The tokenizer's chat template as a TurnTemplate, checked on conversations of one, three and
    five turns, with and without a system message: a template that cannot be written so is refused.
    Contents go in as they are: a template that strips them (Llama-2's) matches for messages
    without leading or trailing whitespace."""
    full = _pieces(tokenizer, ["system", "user", "assistant", "user"])
    bare = _pieces(tokenizer, ["user", "assistant", "user"])
    tmpl = TurnTemplate(head={"system": full[0], "user": bare[0]},
                        gap={("system", "user"): full[1], ("user", "assistant"): full[2],
                             ("assistant", "user"): full[3]},
                        tail=full[4])
    samples = ["Hi!", "What is 2 + 2?\nAnswer briefly.", "Four.", "Thanks. And {{ this }}?", "Paris."]
    for system in (None, "Be brief."):
        for turns in (1, 3, 5):
            messages = [{"role": "system", "content": system}] if system else []
            messages += [{"role": ("user", "assistant")[i % 2], "content": samples[i]} for i in range(turns)]
            expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            if tmpl.render(messages) != expected:
                raise PipelineError(NOT_A_TURN_TEMPLATE)
    return tmpl


def ollama_drops(text: str) -> str:
    """The characters of ``text`` that Ollama's Modelfile parser leaves out of a value: all but
    letters, marks, numbers, punctuation, symbols, spaces, tabs and line breaks (it keeps a
    character where Go's strconv.IsPrint holds, as Python's isprintable does), e.g. the
    zero-width joiner inside 👩‍💻 or a right-to-left mark."""
    return "".join(dict.fromkeys(c for c in text if not c.isprintable() and c not in "\t\r\n"))


def _go_char(c: str) -> str:
    """One character in a Go string literal, escaped where Ollama's parser would drop it."""
    if c in '"\\':
        return "\\" + c
    if c.isprintable():
        return c
    return f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}"


def _go_string(text: str) -> str:
    """A Go string literal of ``text`` that Ollama's Modelfile parser keeps whole: emoji, CJK and
    right-to-left letters as they are, line breaks and the characters it drops as escapes."""
    return '"' + "".join(map(_go_char, text)) + '"'


def _go_text(text: str) -> str:
    """Literal text in a Go template; as a quoted action where it would read as one, or where
    the Modelfile could not carry it as it is."""
    if "{{" in text or '"""' in text or ollama_drops(text):
        return "{{ " + _go_string(text) + " }}"
    return text


def go_template(t: TurnTemplate) -> str:
    """Ollama's TEMPLATE (Go text/template over ``.Messages``) for a TurnTemplate."""
    parts = ['{{- $prev := "" }}{{- range $i, $m := .Messages }}']
    branches = [f'if and (eq $i 0) (eq .Role "{r}")' for r in t.head]
    texts = list(t.head.values())
    branches += [f'if and (eq $prev "{a}") (eq .Role "{b}")' for a, b in t.gap]
    texts += list(t.gap.values())
    for k, (branch, text) in enumerate(zip(branches, texts)):
        parts.append("{{ " + ("" if k == 0 else "else ") + branch + " }}" + _go_text(text))
    parts.append("{{ end }}{{ .Content }}{{ $prev = .Role }}{{ end }}")
    parts.append('{{ if eq $prev "user" }}' + _go_text(t.tail) + "{{ end }}")
    return "".join(parts)


def stop_words(tokenizer, t: TurnTemplate) -> list[str]:
    """Where a reply ends: each special token in the text after an assistant turn, the EOS first."""
    after = t.gap[("assistant", "user")]
    specials = [tokenizer.eos_token] + [s for s in tokenizer.all_special_tokens if s != tokenizer.eos_token]
    return [s for s in dict.fromkeys(specials) if s and s in after] or [tokenizer.eos_token]


def _system(t: TurnTemplate, system_prompt: str) -> list[str]:
    """The Modelfile's SYSTEM lines: the prompt as Ollama reads it back, or none where it cannot
    (three double quotes, or a character Ollama's parser drops) and the TEMPLATE puts it first
    itself, as a template made by with_system_prompt does; otherwise refused in one line."""
    if '"""' not in system_prompt and not ollama_drops(system_prompt):
        return [f'SYSTEM """{system_prompt}"""', ""]
    if t.head["user"] == t.head["system"] + system_prompt + t.gap[("system", "user")]:
        log.warning("Modelfile: no SYSTEM (Ollama would not read chat.system_prompt back whole); "
                    "its TEMPLATE puts the prompt first")
        return []
    found = ", ".join(f"U+{ord(c):04X}" for c in ollama_drops(system_prompt)) or '"""'
    raise PipelineError(f"chat.system_prompt: holds {found}, which a Modelfile's SYSTEM cannot carry; "
                        "export.ollama: null skips the Modelfile")


def modelfile(tokenizer, gguf_name: str, system_prompt: str | None, lineage: dict | None = None) -> str:
    """Ollama's Modelfile for the GGUF file ``gguf_name`` beside it, the ``lineage`` record
    (src/lineage.py) first as comments. Each value is written as Ollama's parser reads it: in
    quotes, no escapes (the TEMPLATE's own are Go's)."""
    t = turn_template(tokenizer)
    lines = [f"# lineage {key}: {' '.join(value.split())}" for key, value in flat(lineage or {}).items()]
    lines += [f"FROM ./{gguf_name}", "", f'TEMPLATE """{go_template(t)}"""', ""]
    if system_prompt is not None:
        lines += _system(t, system_prompt)
    lines += [f'PARAMETER stop "{s}"' for s in stop_words(tokenizer, t)]
    return "\n".join(lines) + "\n"
