"""Write the retention probes the evaluate stage asks (``evaluate.retention_probes``): the
hand-written probes already in the file, kept as they are, and short questions built here from
the tables of dev/make_benchmark.py and a few more (nothing is copied from a published test set),
each with the regular expressions a right answer matches.

  src/prompts/retention.yaml

Run:  python dev/make_probes.py                        # every candidate (for a look)
      python dev/make_probes.py --select models/base   # those the base knows, as evaluate asks them

``--select MODEL`` asks the model every candidate the way evaluate does (greedy, its own chat
template, then again with params.yaml's ``chat.system_prompt`` first) and writes the probes it
answers right both times, and the attribution probes whatever it answers (an identity lesson leaks
into "who made X" first: they count for the leak rate). Retention is measured on the probes the
base knows, so shipping only those keeps the evaluation from asking questions that cannot count.
"""
from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "dev")]

from make_benchmark import (  # noqa: E402  (the shared tables)
    CAPITALS,
    CONTINENTS,
    DAYS,
    LANGUAGES,
    MONTHS,
    NUMBER_WORDS,
    OPPOSITES,
    PLURALS,
    SYMBOLS,
    YOUNG,
)

OUT = ROOT / "src" / "prompts" / "retention.yaml"
HEADER = """\
# Retention probes: short questions with checkable answers, asked of the base and the
# fine-tuned model by the evaluate stage (greedy, no system message, through each model
# folder's own chat template). `retention` is the share of the questions the base answers
# right that the fine-tuned model still answers right.
#
# Each probe: `question`, `answers` (regular expressions, case-insensitive; an answer is
# right when any of them matches), `kind` (facts, attribution, arithmetic, units, language,
# code, geography, science, animals, calendar). The attribution probes (who made, wrote,
# founded X) are the questions an identity lesson ("Who made you?") leaks into; some the base
# does not know count for the leak rate only. None of these questions may occur in the
# training data (a test checks it).
#
# The hand-written probes first; below the mark, those dev/make_probes.py writes (with
# --select models/base: the ones the default base knows, the attribution ones all).
"""

# Also written here. No answer may be a word of its question (an echo is not an answer), and
# single-letter element symbols are left out ("'s" would match S).
SOUNDS = {"dog": "bark|woof", "cat": "meow|purr", "cow": "moo", "duck": "quack", "sheep": "baa|bleat",
          "lion": "roar", "snake": "hiss", "horse": "neigh|whinny", "pig": "oink|grunt", "owl": "hoot",
          "bee": "buzz", "frog": "croak|ribbit"}
COLOURS = {"the sky on a clear day": "blue", "grass": "green", "snow": "white", "a ripe banana": "yellow",
           "coal": "black", "a ripe tomato": "red", "chocolate": "brown"}
MIXED = {("blue", "yellow"): "green", ("red", "white"): "pink", ("red", "yellow"): "orange",
         ("blue", "red"): "purple|violet", ("black", "white"): "gr[ae]y"}
SCIENCE = [
    ("What gas do humans need to breathe to stay alive?", [r"\boxygen\b"]),
    ("What force pulls objects toward the Earth?", [r"gravit"]),
    ("What is the closest star to the Earth?", [r"\bsun\b"]),
    ("What natural satellite orbits the Earth?", [r"\bmoon\b"]),
    ("What is frozen water called?", [r"\bice\b"]),
    ("What do bees make?", [r"\bhoney\b"]),
    ("What do caterpillars turn into?", [r"butterfl", r"\bmoths?\b"]),
    ("What part of a plant grows under the ground and takes in water?", [r"\broots?\b"]),
    ("How many bones are in the adult human body?", [r"\b206\b"]),
    ("What organ do humans use to breathe?", [r"\blungs?\b"]),
    ("What organ controls the human body and lets us think?", [r"\bbrain\b"]),
    ("Which planet do we live on?", [r"\bearth\b"]),
    ("What is the planet closest to the Sun?", [r"\bmercury\b"]),
    ("Which planet is famous for its rings?", [r"\bsaturn\b"]),
    ("What is the center of an atom called?", [r"\bnucleus\b"]),
    ("What do we call an animal that eats only plants?", [r"herbivor"]),
    ("What is the largest mammal on Earth?", [r"blue whale"]),
    ("What is the fastest land animal?", [r"cheetah"]),
    ("What is the tallest animal in the world?", [r"giraffe"]),
    ("Which animal is known as the king of the jungle?", [r"\blions?\b"]),
    ("What is the largest bird in the world?", [r"ostrich"]),
    ("What do pandas mainly eat?", [r"bamboo"]),
    ("Which gas makes up most of the air we breathe?", [r"nitrogen"]),
    ("What is the boiling point of water in degrees Fahrenheit?", [r"\b212\b"]),
    ("How many sides does a pentagon have?", [r"\b5\b", r"\bfive\b"]),
    ("How many legs does an insect have?", [r"\b6\b", r"\bsix\b"]),
    ("How many years are in a century?", [r"\b100\b", r"hundred"]),
    ("How many years are in a decade?", [r"\b10\b", r"\bten\b"]),
    ("How many bits are in a byte?", [r"\b8\b", r"\beight\b"]),
    ("How many planets are in our solar system?", [r"\b8\b", r"\beight\b"]),
]
GEOGRAPHY = [
    ("Which mountain is the highest on Earth?", [r"everest"]),
    ("What is the largest desert in Africa?", [r"sahara"]),
    ("What is the longest river in South America?", [r"amazon"]),
    ("What is the largest country in the world by area?", [r"russia"]),
    ("Which country has the largest population in Europe?", [r"russia"]),
    ("Which ocean lies between Europe and North America?", [r"atlantic"]),
    ("In which country are the pyramids of Giza?", [r"egypt"]),
    ("In which city is the Eiffel Tower?", [r"\bparis\b"]),
    ("In which city is the Colosseum?", [r"\brome\b"]),
    ("In which country is the Great Wall?", [r"china"]),
    ("In which country is the Taj Mahal?", [r"india"]),
    ("In which city is the Statue of Liberty?", [r"new york"]),
    ("In which city is Big Ben?", [r"london"]),
    ("What is the largest continent?", [r"\basia\b"]),
    ("Which continent is the coldest?", [r"antarctic"]),
]


def word(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else ""


def number(n: int) -> list[str]:
    """Patterns for the number ``n``: its digits, and its word when it has one here."""
    return [rf"\b{n}\b"] + ([rf"\b{word(n)}\b"] if word(n) else [])


def exact(*words: str) -> list[str]:
    return [rf"\b{re.escape(w.lower())}\b" for w in words]


def candidates(rng: random.Random) -> list[dict]:
    out = []

    def add(kind: str, question: str, answers: list[str]) -> None:
        out.append({"kind": kind, "question": question, "answers": answers})

    for country, capital in CAPITALS.items():
        add("geography", f"What is the capital city of {country}?", exact(capital))
    for country, continent in CONTINENTS.items():
        if continent.split()[-1] not in country:  # "South Africa" would answer itself
            add("geography", f"Which continent is {country} in?", exact(continent))
    for country, language in LANGUAGES.items():
        extra = ["mandarin"] if language == "Chinese" else []
        add("language", f"What language do most people speak in {country}?", exact(language, *extra))
    for element, symbol in SYMBOLS.items():
        if len(symbol) > 1:
            add("science", f"What is the chemical symbol of {element}?", exact(symbol))
    for thing, colour in COLOURS.items():
        add("facts", f"What color is {thing}?", exact(colour))
    for (a, b), colour in MIXED.items():
        add("facts", f"What color do you get when you mix {a} and {b} paint?", [rf"\b({colour})\b"])
    for animal, sound in SOUNDS.items():
        add("animals", f"What sound does a {animal} make?", [rf"\b({sound})"])
    for animal, baby in YOUNG.items():
        add("animals", f"What do you call a young {animal}?", exact(baby))
    for w, opposite in OPPOSITES.items():
        add("language", f'What is the opposite of the word "{w}"?', exact(opposite))
    for w, plural in PLURALS.items():
        add("language", f'What is the plural of the word "{w}"?', exact(plural))
    for i, month in enumerate(MONTHS):
        add("calendar", f"What month comes right after {month}?", exact(MONTHS[(i + 1) % 12]))
    for i, day in enumerate(DAYS):
        add("calendar", f"What day comes right after {day}?", exact(DAYS[(i + 1) % 7]))
    for question, answers in SCIENCE:
        add("science", question, answers)
    for question, answers in GEOGRAPHY:
        add("geography", question, answers)
    seen = set()
    while len([p for p in out if p["kind"] == "arithmetic"]) < 60:
        a, b, op = rng.randint(2, 20), rng.randint(2, 12), rng.choice("+-x")
        value = a + b if op == "+" else a - b if op == "-" else a * b
        # the answer must not be a number the question shows: an echo is not an answer
        if (a, b, op) in seen or value <= 0 or value in (a, b):
            continue
        seen.add((a, b, op))
        verb = {"+": "plus", "-": "minus", "x": "times"}[op]
        add("arithmetic", f"What is {a} {verb} {b}?", number(value))
    return out


MARK = "# Written by dev/make_probes.py from here on."


def hand_written() -> list[dict]:
    """The probes the file holds above MARK (all of them, in a file without it): kept as they are."""
    text = OUT.read_text(encoding="utf-8").split(MARK)[0] if OUT.exists() else ""
    return yaml.safe_load(text) or []


def known_to(model_dir: Path, probes: list[dict]) -> list[bool]:
    """Per probe: the model answers it right through its own template and with params.yaml's
    ``chat.system_prompt`` first, asked as the evaluate stage asks (src/stages/evaluate.py)."""
    from src.chat import conversation
    from src.config import load_params
    from src.generation import generate
    from src.modeling import compute_dtype, load_for_inference
    from src.scoring import Probe

    cfg = load_params()
    tokenizer, model = load_for_inference(str(model_dir), compute_dtype(cfg.train.precision))
    checks = [Probe.model_validate(p) for p in probes]
    asked = [[{"role": "user", "content": p.question}] for p in checks]
    ways = [asked] + ([[conversation(a, cfg.chat.system_prompt) for a in asked]] if cfg.chat.system_prompt else [])
    answers = [generate(model, tokenizer, way, cfg.evaluate.max_new_tokens, cfg.evaluate.batch_size) for way in ways]
    return [all(p.right(a[i].text) for a in answers) for i, p in enumerate(checks)]


def lines(probes: list[dict]) -> list[str]:
    out = []
    for p in probes:
        answers = ", ".join("'" + a.replace("'", "''") + "'" for a in p["answers"])
        question = "'" + p["question"].replace("'", "''") + "'"
        out.append(f"- {{kind: {p['kind']}, question: {question}, answers: [{answers}]}}")
    return out


def dump(kept: list[dict], new: list[dict]) -> str:
    return HEADER + "\n".join(lines(kept) + [MARK] + lines(new)) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--select", type=Path, help="a model folder: keep the probes it knows")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    kept = hand_written()
    # nor any question the pipeline trains on (the replay questions) or already asks
    replay = yaml.safe_load((ROOT / "src" / "prompts" / "replay.yaml").read_text(encoding="utf-8"))
    questions = {p["question"].casefold() for p in kept} | {q.casefold() for q in replay}
    new = [p for p in candidates(random.Random(args.seed)) if p["question"].casefold() not in questions]
    if args.select:
        knows = known_to(args.select, new)
        new = [p for p, k in zip(new, knows) if k or p["kind"] == "attribution"]
    probes = kept + new
    echoes = [p["question"] for p in probes if any(re.search(a, p["question"], re.IGNORECASE) for a in p["answers"])]
    if echoes:
        raise SystemExit(f"probes their own question answers: {echoes}")
    assert yaml.safe_load(dump(kept, new)) == probes  # the file reads back as written
    args.out.write_text(dump(kept, new), encoding="utf-8")
    print(f"wrote {len(probes)} probes ({len(kept)} hand-written, {len(new)} generated) to {args.out}")


if __name__ == "__main__":
    main()
