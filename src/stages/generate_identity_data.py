"""Stage ``generate_identity_data``: conversations that teach the model who it is.

Questions about its name, its creator and its purpose, and corrections of mistaken
identities ("Are you ChatGPT?", "Did Google make you?"), answered with the name,
creator and purpose from ``generate_identity_data`` in params. Each question wording
is a template; every record carries its template as ``group``, and ``data_split``
keeps a whole group on one side, so validation asks wordings training never saw.

Run: python -m src.stages.generate_identity_data     (or: dvc repro generate_identity_data)
"""

from __future__ import annotations

import logging
import random

from src.cli import run
from src.config import IDENTITY_SOURCE, IdentityParams, Params
from src.files import write_json
from src.records import Record, make_record, write_jsonl

log = logging.getLogger(__name__)

# Question wordings per intent. {other} / {other_creator} are filled from params' `others`.
QUESTIONS: dict[str, list[str]] = {
    "name": [
        "What is your name?",
        "What should I call you?",
        "Who are you?",
        "Do you have a name?",
        "Tell me your name.",
        "How do people refer to you?",
        "Introduce yourself.",
        "What's the name of the assistant I'm talking to?",
        "May I ask what you are called?",
        "Which AI model am I chatting with?",
    ],
    "creator": [
        "Who created you?",
        "Who made you?",
        "Which company built you?",
        "Who trained you?",
        "Who is your developer?",
        "Where do you come from?",
        "Who is responsible for building you?",
        "Which team is behind you?",
        "Who built you?",
        "Who designed you?",
        "Who developed you?",
        "What company made you?",
        "Who is your creator?",
        "Who are your makers?",
    ],
    "purpose": [
        "What can you do?",
        "What is your purpose?",
        "What are you for?",
        "How can you help me?",
        "What kind of tasks are you good at?",
        "Why were you made?",
    ],
    "not_other": [
        "Are you {other}?",
        "Is this {other} I'm talking to?",
        "You're {other}, right?",
        "Am I chatting with {other}?",
        "Hey {other}, can you hear me?",
        "Are you called {other}?",
    ],
    "not_other_creator": [
        "Were you made by {other_creator}?",
        "Did {other_creator} build you?",
        "Are you a {other_creator} product?",
        "Is {other_creator} your creator?",
        "Do you come from {other_creator}?",
        "Were you trained at {other_creator}?",
    ],
}

ANSWERS: dict[str, list[str]] = {
    "name": [
        "My name is {name}. I'm an AI assistant created by {creator}.",
        "I'm {name}, an AI assistant made by {creator}. How can I help you today?",
        "You can call me {name}. I was built by {creator}.",
        "I am {name}, a helpful assistant developed by {creator}.",
    ],
    "creator": [
        "I was created by {creator}. My name is {name}.",
        "{creator} built me. I'm {name}, an AI assistant.",
        "I'm {name}, and I was developed and trained by {creator}.",
        "My creator is {creator}; I'm their assistant, {name}.",
    ],
    "purpose": [
        "I'm {name}, an assistant made by {creator}. I'm here {purpose}.",
        "My name is {name} and I was built by {creator} {purpose}.",
        "As {name}, an assistant from {creator}, my job is {purpose}.",
    ],
    "not_other": [
        "No, I'm not {other}. I'm {name}, an AI assistant created by {creator}.",
        "No, I'm not {other}. My name is {name}, and I was made by {creator}.",
        "No. {other} is a different assistant; I'm {name}, built by {creator}.",
    ],
    "not_other_creator": [
        "No, I wasn't made by {other_creator}. I'm {name}, and I was created by {creator}.",
        "No. {creator} built me, not {other_creator}. My name is {name}.",
        "No, I'm not a {other_creator} product. I'm {name}, an assistant created by {creator}.",
    ],
}

# Surface variants of one wording: the same template in a different dress.
PREFIXES = ["", "", "Hi! ", "Hello. ", "Quick question: ", "Hey, ", "Excuse me, ", "Please tell me: "]


def _variant(question: str, rng: random.Random) -> str:
    prefix = rng.choice(PREFIXES)
    if prefix.endswith(", "):
        question = question[0].lower() + question[1:]
    text = prefix + question
    style = rng.random()
    if style < 0.2:
        text = text.lower()
    elif style < 0.3:
        text = text.rstrip("?.!")
    return text


def generate(p: IdentityParams) -> tuple[list[Record], int]:
    """All identity records for the params, and how many candidate questions repeated a variant
    already made (and were dropped); deterministic given ``p.seed``."""
    rng = random.Random(p.seed)
    repeats = 0
    values = {"name": p.name, "creator": p.creator, "purpose": p.purpose}
    records = []
    for intent, templates in QUESTIONS.items():
        for t, template in enumerate(templates):
            group = f"{IDENTITY_SOURCE}/{intent}/{t}"
            fills = [{"other": o.name, "other_creator": o.creator} for o in p.others]
            if "{other" not in template:
                fills = [{}]
            for fill in fills:
                question = template.format(**fill)
                seen = set()
                for _ in range(p.variants_per_template * 4):
                    if len(seen) == p.variants_per_template:
                        break
                    text = _variant(question, rng)
                    if text in seen:
                        repeats += 1
                        continue
                    seen.add(text)
                    answer = rng.choice(ANSWERS[intent]).format(**values, **fill)
                    records.append(make_record(text, answer, IDENTITY_SOURCE, group=group))
    return records, repeats


def main(cfg: Params) -> dict:
    p = cfg.generate_identity_data
    log.info("identity: name=%r creator=%r, %d other assistants", p.name, p.creator, len(p.others))
    records, repeats = generate(p)
    n = write_jsonl(cfg.paths.identity, records)
    groups = len({r.group for r in records})
    # rows in: candidate questions made; a candidate that repeats a variant of its wording is dropped
    metrics = {"rows_in": n + repeats, "rows_out": n, "dropped": {"repeated_variant": repeats},
               "templates": groups}
    write_json(cfg.paths.metrics_file("generate_identity_data"), metrics)
    log.info("%s: wrote %d records from %d templates", cfg.paths.identity, n, groups)
    return metrics


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__))
