"""How answers are scored: identity answers strictly, answers that leak the name, retention
probes; and the held-out identity questions and retention probes read from their YAML files
(``evaluate.identity_questions``, ``evaluate.retention_probes``).

Strict identity scoring: a question that names another assistant or maker counts only when the
answer denies it and gives the true name; any other counts only when the answer names what is
asked (the name, the creator; for a validation record, what its reference answer names); no
answer may name an assistant or maker the question did not mention. An answer leaks when it
names the assistant or its creator though the question did not ask about them. A probe is
answered right when the answer matches any of its patterns.

The evaluate stage scores with these, and so does any check that asks the same questions of
another runtime (bench/export_gguf.py: the GGUF files in llama.cpp).

    from src.scoring import identity_checks, identity_correct, other_terms
    checks = identity_checks("src/prompts/identity.yaml", cfg.generate_identity_data)
    identity_correct(checks[0], "I'm Juniper.", other_terms(cfg.generate_identity_data))
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from src.config import IdentityParams
from src.errors import PipelineError
from src.files import read_yaml
from src.records import Record

DENIAL = re.compile(r"\b(no|not|never|nope)\b|n't\b", re.IGNORECASE)


class IdentityQuestion(BaseModel):
    """A held-out identity question: what it asks (``name``, ``creator``) or denies (``deny``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["name", "creator", "deny"]
    question: Annotated[str, Field(min_length=1)]


class IdentityCheck(NamedTuple):
    """One identity question as scored: the terms a right answer names, and whether it must deny."""

    question: str
    expect: tuple[str, ...]
    deny: bool


class Probe(BaseModel):
    """A retention probe: a question and the patterns (any one) a right answer matches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["facts", "attribution", "arithmetic", "units", "language", "code", "geography", "science", "animals",
                  "calendar"]
    question: Annotated[str, Field(min_length=1)]
    answers: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]

    @cached_property
    def patterns(self) -> list[re.Pattern]:
        return [re.compile(a, re.IGNORECASE) for a in self.answers]

    def right(self, answer: str) -> bool:
        return any(p.search(answer) for p in self.patterns)


def load_entries(path: str | Path, model: type[BaseModel], what: str) -> list:
    """A shipped YAML list of ``model`` entries; a bad entry names the file and the entry."""
    entries = read_yaml(path)
    if not isinstance(entries, list) or not entries:
        raise PipelineError(f"{path}: expected a non-empty list of {what}s")
    loaded = []
    for i, entry in enumerate(entries):
        try:
            loaded.append(model.model_validate(entry))
        except ValidationError as err:
            first = err.errors()[0]
            raise PipelineError(f"{path}: {what} {i} ({'.'.join(map(str, first['loc']))}): {first['msg']}") from err
    return loaded


def load_probes(path: str | Path) -> list[Probe]:
    """The probe file, every pattern compiled: a bad one names the file and the probe."""
    probes = load_entries(path, Probe, "probe")
    for i, probe in enumerate(probes):
        try:
            probe.patterns  # noqa: B018  (compiles them)
        except re.error as err:
            raise PipelineError(f"{path}: probe {i}: bad pattern ({err})") from err
    return probes


def other_terms(p: IdentityParams) -> list[str]:
    """The names and makers of the assistants the model is not."""
    return [t for o in p.others for t in (o.name, o.creator)]


def identity_checks(path: str | Path, p: IdentityParams) -> list[IdentityCheck]:
    """The held-out identity questions of ``path``, ``{other}``/``{other_creator}`` filled round
    ``p.others``, as checks."""
    checks, filled = [], 0
    for i, q in enumerate(load_entries(path, IdentityQuestion, "question")):
        question = q.question
        if "{" in question:
            other = p.others[filled % len(p.others)]
            filled += 1
            try:
                question = question.format(other=other.name, other_creator=other.creator)
            except (KeyError, IndexError, ValueError) as err:
                raise PipelineError(f"{path}: question {i}: only {{other}} and {{other_creator}} can be "
                                    f"filled ({err!r})") from err
        checks.append(IdentityCheck(question, (p.creator,) if q.kind == "creator" else (p.name,), q.kind == "deny"))
    return checks


def record_check(record: Record, p: IdentityParams) -> IdentityCheck:
    """A validation identity record as a check: a question naming another assistant or maker
    must be denied; any other must name what the reference answer names."""
    question, reference = record.prompt[-1].content, record.completion[-1].content
    if any(mentions(question, o) for o in other_terms(p)):  # "Are you ChatGPT?", "Did Google make you?"
        return IdentityCheck(question, (p.name,), True)
    return IdentityCheck(question, tuple(t for t in (p.name, p.creator) if mentions(reference, t)), False)


def mentions(text: str, term: str) -> bool:
    """``term`` occurs in ``text`` as whole words, case folded."""
    return re.search(rf"(?<!\w){re.escape(term.casefold())}(?!\w)", text.casefold()) is not None


def identity_correct(check: IdentityCheck, answer: str, others: list[str]) -> bool:
    """Strict identity scoring (see the module docstring)."""
    if any(mentions(answer, o) and not mentions(check.question, o) for o in others):
        return False
    if check.deny and DENIAL.search(answer) is None:
        return False
    return all(mentions(answer, term) for term in check.expect)


def leaks(question: str, answer: str, name: str, creator: str) -> bool:
    """The answer names the assistant or its creator though the question did not ask about them."""
    return any(mentions(answer, term) and not mentions(question, term) for term in (name, creator))


def share(flags: list[bool]) -> float:
    """The share of true flags, to four places (0.0 of none)."""
    return round(sum(flags) / len(flags), 4) if flags else 0.0
