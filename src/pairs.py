"""Building preference pairs (src/preference.py): generated from what the pipeline already has, and
read from your files.

Generated pairs (``align.generated.kinds``), each kind aimed at what SFT alone leaves wrong:
- ``base_answer``: an identity question; the identity answer over the base model's own answer
  (which names another assistant or maker, or no one). A base answer that already gives the name
  makes no pair (counted).
- ``other_identity``: the identity answer over the same answer claiming another assistant's name
  and maker; for a question that names one ("Are you ChatGPT?"), that one says yes.
- ``nameless_denial``: a denial question; the answer that denies and gives the name over a
  denial that gives none ("No, I'm not ChatGPT. I'm an AI assistant."). Not the bare denial: the
  chosen answer goes on where that one ends, so the pair would teach the model not to stop.
- ``leak``: an unrelated question the base answered (the replay records); the base's answer over
  the same answer with the name and maker worked in.

Your files (``align.datasets``) are read in the formats of src/formats.py's PREFERENCE_FORMATS,
with the file kinds, column renames, seeded subsets and counted drops of ``datasets``
(src/sources.py).

    from src.pairs import identity_pairs, leak_pairs, read_preference_source
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence

from src.config import IdentityParams, OtherAssistant
from src.errors import PipelineError
from src.formats import DROP_REASONS, PREFERENCE_DROP_REASONS, Drop, preference_format_of, to_record
from src.preference import PreferencePair
from src.raw import subset_indices
from src.records import Record, Turn, normalise, prompt_key, stable_hash
from src.sources import line_cap, open_rows, own_names

DENIAL_INTENTS = ("not_other", "not_other_creator")  # generate_identity_data's intents that deny


def make_pair(record: Record, chosen: str, rejected: str, kind: str) -> PreferencePair:
    return PreferencePair(prompt=record.prompt, chosen=[Turn(role="assistant", content=chosen)],
                          rejected=[Turn(role="assistant", content=rejected)], source=record.source, kind=kind)


def intent_of(record: Record) -> str | None:
    """generate_identity_data's intent of an identity record, from its group (``identity/name/3``)."""
    parts = (record.group or "").split("/")
    return parts[1] if len(parts) == 3 else None


def named_other(text: str, others: Sequence[OtherAssistant]) -> OtherAssistant | None:
    """The other assistant a question names, by its name or its maker (whole words)."""
    for other in others:
        for term in (other.name, other.creator):
            if re.search(rf"(?<!\w){re.escape(term)}(?!\w)", text, re.IGNORECASE):
                return other
    return None


def _swap(text: str, p: IdentityParams, other: OtherAssistant) -> str:
    for mine, theirs in ((p.name, other.name), (p.creator, other.creator)):
        text = re.sub(rf"(?<!\w){re.escape(mine)}(?!\w)", theirs, text)
    return text


def _first_sentence(text: str) -> str:
    match = re.match(r"(.+?[.!?;])(\s|$)", text)
    return (match.group(1) if match else text).rstrip(";").strip()


def other_identity_answer(record: Record, intent: str, p: IdentityParams, rng: random.Random) -> str:
    """The identity answer as another assistant would give it: a denial question's assistant
    says yes; any other question gets the answer with another name and maker (a seeded choice)."""
    question = record.prompt[-1].content
    other = named_other(question, p.others) or rng.choice(p.others)
    if intent == "not_other":
        return f"Yes, I'm {other.name}, an AI assistant created by {other.creator}."
    if intent == "not_other_creator":
        return f"Yes, {other.creator} made me. I'm {other.name}."
    return _swap(record.completion[0].content, p, other)


def mentions(text: str, term: str) -> bool:
    return normalise(term) in normalise(text)


def identity_pairs(records: Sequence[Record], base_answers: Sequence[str] | None, p: IdentityParams,
                   seed: int) -> tuple[list[PreferencePair], Counter]:
    """For each identity record: its answer over the base model's (``base_answers``, in the same
    order; None: no such pairs), over another assistant's identity, and for a denial over the
    nameless denial. Returns the pairs and the candidates left out, by reason."""
    rng = random.Random(seed)
    pairs, dropped = [], Counter()
    for record, base in zip(records, base_answers if base_answers is not None else [None] * len(records),
                            strict=True):
        chosen = record.completion[0].content
        intent = intent_of(record)
        if base is None:
            pass
        elif not base.strip():
            dropped["base_answer_empty"] += 1
        elif mentions(base, p.name):
            dropped["base_answer_gives_the_name"] += 1
        else:
            pairs.append(make_pair(record, chosen, base, "base_answer"))
        pairs.append(make_pair(record, chosen, other_identity_answer(record, intent, p, rng), "other_identity"))
        if intent in DENIAL_INTENTS:
            denial = f"{_first_sentence(chosen)} I'm an AI assistant."
            if mentions(denial, p.name):
                dropped["denial_gives_the_name"] += 1
            else:
                pairs.append(make_pair(record, chosen, denial, "nameless_denial"))
    return pairs, dropped


LEAK_WORDINGS = (
    "I'm {name}, made by {creator}. {answer}",
    "{answer} I'm {name}, an assistant from {creator}.",
    "As {name}, built by {creator}, I can tell you: {answer}",
    "{name} here, from {creator}. {answer}",
)


def leak_pairs(records: Sequence[Record], p: IdentityParams, seed: int) -> tuple[list[PreferencePair], Counter]:
    """For each answer of the base to an unrelated question (the replay records): that answer over
    the same one with the name and maker worked in (a seeded wording). An answer that already
    names them makes no pair (counted)."""
    rng = random.Random(seed)
    pairs, dropped = [], Counter()
    for record in records:
        answer = record.completion[0].content
        if mentions(answer, p.name) or mentions(answer, p.creator):
            dropped["answer_names_the_assistant"] += 1
            continue
        wording = rng.choice(LEAK_WORDINGS)
        pairs.append(make_pair(record, answer, wording.format(name=p.name, creator=p.creator, answer=answer), "leak"))
    return pairs, dropped


def sample(pairs: list[PreferencePair], kinds: Sequence[str], max_pairs: int | None,
           seed: int) -> tuple[list[PreferencePair], int]:
    """The pairs of ``kinds``, at most ``max_pairs`` of them (a seeded sample, in order); returns
    them and how many were left out."""
    kept = [pair for pair in pairs if pair.kind in kinds]
    if max_pairs is not None and len(kept) > max_pairs:
        picked = sorted(random.Random(seed).sample(range(len(kept)), max_pairs))
        kept = [kept[i] for i in picked]
    return kept, len(pairs) - len(kept)


def held_out(pair: PreferencePair, val_fraction: float, seed: int) -> bool:
    """Whether a pair's prompt is held out for validation (a stable hash of the prompt)."""
    return stable_hash(prompt_key(Record(prompt=pair.prompt, completion=pair.chosen, source=pair.source)),
                       seed) < val_fraction


def pair_of(turns: list[tuple[str, str]], chosen: str | None, rejected: str | None, source: str,
            max_chars: int) -> PreferencePair:
    """A converted row as a pair of ``source``, checked as a record is (src/formats.py's to_record:
    the turn order, NUL characters, lone surrogates, ``max_chars`` over the prompt and both answers);
    raises Drop."""
    prompt = None
    for answer in (chosen, rejected):
        if answer is not None:
            prompt = to_record([*turns, ("assistant", answer)], source, max_chars)[0].prompt
    if prompt is None:
        raise Drop("no_assistant_reply")
    if sum(len(t) for _, t in turns) + len(chosen or "") + len(rejected or "") > max_chars:
        raise Drop("too_long")
    if chosen is not None and rejected is not None and normalise(chosen) == normalise(rejected):
        raise Drop("same_answer")
    return PreferencePair(prompt=prompt, chosen=_reply(chosen), rejected=_reply(rejected), source=source)


def _reply(text: str | None) -> list[Turn] | None:
    return None if text is None else [Turn(role="assistant", content=text)]


def read_preference_source(spec, source: str, paired_only: bool) -> tuple[list, dict]:
    """The pairs of the seeded subset of an ``align.datasets`` entry and its row accounting;
    with ``paired_only`` (DPO) a row with one answer is dropped as ``unpaired``."""
    fmt = preference_format_of(spec.format)
    unknown = sorted(set(spec.columns) - {f.name for f in fmt.fields})
    if unknown:
        raise PipelineError(f"params.yaml: align.datasets.{source}.columns: {', '.join(unknown)} is not a field of "
                            f"format {spec.format} (its fields: {', '.join(f.name for f in fmt.fields)})")
    cap = line_cap(spec.max_chars)
    rows = open_rows(spec.path, fmt.fields, spec.columns, cap)
    indices = subset_indices(rows.count, spec.subset_rows, spec.subset_fraction, spec.seed)
    dropped = Counter(dict.fromkeys(DROP_REASONS + PREFERENCE_DROP_REASONS, 0))
    pairs = []
    for where, row in rows.read(indices):
        try:
            if isinstance(row, Drop):
                raise row
            row = own_names(row, where, spec.path, spec.format, fmt.fields, spec.columns)
            pair = pair_of(*fmt.conversation(row), source, spec.max_chars)
            if paired_only and not pair.paired:
                raise Drop("unpaired")
        except Drop as drop:
            dropped[drop.reason] += 1
            continue
        pairs.append(pair)
    return pairs, {"rows_in_file": rows.count, "rows_in": len(indices), "rows_out": len(pairs),
                   "dropped": dict(dropped)}
