"""Write the local benchmark task the CPU default scores the base and the fine-tuned model on
(the benchmark stages, docs/training.md): general-knowledge multiple choice, four choices a
question, every question and every wrong choice built here from the tables below (nothing is
copied from a published test set).

  src/benchmarks/general_knowledge.jsonl    question, choices, answer (the index of the right choice), kind

Run:  python dev/make_benchmark.py [--seed N (default: 0)] [--keep FILE]

With ``--keep FILE`` (a JSON list of questions, as ``python -m src.benchmarking --right-of MODEL``
prints them), only those questions are written: the shipped set holds the questions the
default base model answers right, so that a drop after fine-tuning is a loss, not noise on
questions it never knew.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "benchmarks" / "general_knowledge.jsonl"

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens",
    "the United Kingdom": "London", "Ireland": "Dublin", "Austria": "Vienna", "Norway": "Oslo",
    "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw",
    "Hungary": "Budapest", "the Czech Republic": "Prague", "the Netherlands": "Amsterdam",
    "Belgium": "Brussels", "Thailand": "Bangkok", "South Korea": "Seoul", "India": "New Delhi",
    "Kenya": "Nairobi", "Argentina": "Buenos Aires", "Peru": "Lima", "Chile": "Santiago",
    "Mexico": "Mexico City", "Canada": "Ottawa", "Australia": "Canberra", "Turkey": "Ankara",
    "Iran": "Tehran", "Iraq": "Baghdad", "Cuba": "Havana", "Colombia": "Bogota", "Venezuela": "Caracas",
    "the Philippines": "Manila", "Indonesia": "Jakarta", "Vietnam": "Hanoi", "Ukraine": "Kyiv",
    "Romania": "Bucharest", "Iceland": "Reykjavik", "Saudi Arabia": "Riyadh", "Ethiopia": "Addis Ababa",
    "Morocco": "Rabat", "Nigeria": "Abuja", "Pakistan": "Islamabad", "Bangladesh": "Dhaka",
}
CONTINENTS = {
    "France": "Europe", "Germany": "Europe", "Italy": "Europe", "Spain": "Europe", "Norway": "Europe",
    "Poland": "Europe", "Greece": "Europe", "Sweden": "Europe", "Japan": "Asia", "China": "Asia",
    "India": "Asia", "Thailand": "Asia", "Vietnam": "Asia", "South Korea": "Asia", "Pakistan": "Asia",
    "Egypt": "Africa", "Kenya": "Africa", "Nigeria": "Africa", "Ethiopia": "Africa", "Morocco": "Africa",
    "Ghana": "Africa", "South Africa": "Africa", "Brazil": "South America", "Argentina": "South America",
    "Peru": "South America", "Chile": "South America", "Colombia": "South America",
    "Venezuela": "South America", "Canada": "North America", "Mexico": "North America",
    "the United States": "North America", "Cuba": "North America", "Australia": "Oceania",
    "New Zealand": "Oceania", "Fiji": "Oceania",
}
LANGUAGES = {
    "Brazil": "Portuguese", "Portugal": "Portuguese", "Mexico": "Spanish", "Spain": "Spanish",
    "Argentina": "Spanish", "France": "French", "Germany": "German", "Austria": "German",
    "Italy": "Italian", "Japan": "Japanese", "China": "Chinese", "Russia": "Russian",
    "Greece": "Greek", "the Netherlands": "Dutch", "Sweden": "Swedish", "Poland": "Polish",
    "Turkey": "Turkish", "South Korea": "Korean", "Egypt": "Arabic", "Saudi Arabia": "Arabic",
    "Thailand": "Thai", "Vietnam": "Vietnamese", "Finland": "Finnish", "Hungary": "Hungarian",
}
SYMBOLS = {
    "hydrogen": "H", "helium": "He", "carbon": "C", "nitrogen": "N", "oxygen": "O", "sodium": "Na",
    "iron": "Fe", "gold": "Au", "silver": "Ag", "copper": "Cu", "lead": "Pb", "potassium": "K",
    "calcium": "Ca", "chlorine": "Cl", "zinc": "Zn", "mercury": "Hg", "tin": "Sn", "sulfur": "S",
    "neon": "Ne", "magnesium": "Mg", "aluminium": "Al", "uranium": "U", "phosphorus": "P",
    "silicon": "Si", "lithium": "Li",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "tall": "short", "fast": "slow", "happy": "sad", "light": "dark",
    "up": "down", "open": "closed", "full": "empty", "early": "late", "rich": "poor", "strong": "weak",
    "young": "old", "wet": "dry", "hard": "soft", "loud": "quiet", "thick": "thin",
    "win": "lose", "push": "pull", "buy": "sell", "day": "night", "north": "south", "east": "west",
    "inside": "outside", "above": "below", "begin": "end", "true": "false", "friend": "enemy",
    "clean": "dirty", "cheap": "expensive", "deep": "shallow", "wide": "narrow", "sweet": "sour",
    "first": "last", "remember": "forget", "accept": "refuse", "increase": "decrease",
    "arrive": "leave", "question": "answer", "always": "never", "before": "after",
    "asleep": "awake", "safe": "dangerous", "visible": "invisible", "possible": "impossible",
}
YOUNG = {
    "dog": "puppy", "cat": "kitten", "cow": "calf", "horse": "foal", "sheep": "lamb", "goat": "kid",
    "frog": "tadpole", "duck": "duckling", "goose": "gosling", "bear": "cub", "lion": "cub",
    "kangaroo": "joey", "pig": "piglet", "deer": "fawn", "swan": "cygnet", "owl": "owlet",
    "hen": "chick", "butterfly": "caterpillar",
}
PLURALS = {
    "child": "children", "mouse": "mice", "man": "men", "woman": "women", "tooth": "teeth",
    "foot": "feet", "goose": "geese", "person": "people", "ox": "oxen", "cactus": "cacti",
    "knife": "knives", "leaf": "leaves", "wolf": "wolves", "box": "boxes", "city": "cities",
    "baby": "babies", "potato": "potatoes", "half": "halves", "life": "lives", "wife": "wives",
}
PLURAL_DISTRACTORS = {
    "child": ["childs", "childes", "childrens"], "mouse": ["mouses", "mousen", "meese"],
    "man": ["mans", "mens", "manes"], "woman": ["womans", "womens", "womanes"],
    "tooth": ["tooths", "teeths", "toothes"], "foot": ["foots", "feets", "footes"],
    "goose": ["gooses", "geeses", "goosen"], "person": ["persones", "peoplez", "personen"],
    "ox": ["oxes", "oxs", "oxxen"], "cactus": ["cactuss", "cactis", "cactae"],
    "knife": ["knifes", "knifs", "knive"], "leaf": ["leafs", "leafes", "leavs"],
    "wolf": ["wolfs", "wolfes", "wolvs"], "box": ["boxs", "boxen", "boxies"],
    "city": ["citys", "cityes", "citis"], "baby": ["babys", "babyes", "babis"],
    "potato": ["potatos", "potatoe", "potatoies"], "half": ["halfs", "halfes", "halvs"],
    "life": ["lifes", "lifs", "lifees"], "wife": ["wifes", "wifs", "wivs"],
}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve"]
# Written here, each with three wrong choices.
FACTS = [
    ("How many days are in a week?", "7", ["5", "10", "12"]),
    ("How many months are in a year?", "12", ["10", "7", "24"]),
    ("How many hours are in a day?", "24", ["12", "60", "48"]),
    ("How many minutes are in an hour?", "60", ["24", "100", "30"]),
    ("How many seconds are in a minute?", "60", ["100", "12", "24"]),
    ("How many legs does a spider have?", "8", ["6", "4", "10"]),
    ("How many legs does an insect have?", "6", ["8", "4", "10"]),
    ("How many sides does a triangle have?", "3", ["4", "5", "6"]),
    ("How many sides does a square have?", "4", ["3", "5", "8"]),
    ("How many sides does a hexagon have?", "6", ["5", "8", "4"]),
    ("How many continents are there on Earth?", "7", ["5", "9", "12"]),
    ("How many planets are in our solar system?", "8", ["7", "10", "12"]),
    ("How many centimeters are in a meter?", "100", ["10", "1000", "12"]),
    ("How many grams are in a kilogram?", "1000", ["100", "10", "60"]),
    ("How many years are in a century?", "100", ["10", "1000", "50"]),
    ("How many years are in a decade?", "10", ["100", "12", "5"]),
    ("Which planet is closest to the Sun?", "Mercury", ["Mars", "Jupiter", "Neptune"]),
    ("Which planet is known as the Red Planet?", "Mars", ["Venus", "Saturn", "Uranus"]),
    ("Which is the largest planet in our solar system?", "Jupiter", ["Mercury", "Mars", "Venus"]),
    ("Which planet has the most famous rings?", "Saturn", ["Mercury", "Mars", "Earth"]),
    ("What is the largest ocean on Earth?", "the Pacific Ocean", ["the Indian Ocean", "the Arctic Ocean",
                                                                   "the Southern Ocean"]),
    ("What is the longest river in Africa?", "the Nile", ["the Thames", "the Seine", "the Danube"]),
    ("What is the tallest mountain on Earth?", "Mount Everest", ["Mont Blanc", "Mount Fuji", "Ben Nevis"]),
    ("What is the largest desert in Africa?", "the Sahara", ["the Gobi", "the Atacama", "the Mojave"]),
    ("What do bees make?", "honey", ["milk", "silk", "wool"]),
    ("What do caterpillars turn into?", "butterflies", ["spiders", "beetles", "worms"]),
    ("What is the largest animal on Earth?", "the blue whale", ["the elephant", "the giraffe", "the horse"]),
    ("What is the fastest land animal?", "the cheetah", ["the turtle", "the cow", "the sloth"]),
    ("What is the tallest animal?", "the giraffe", ["the mouse", "the rabbit", "the penguin"]),
    ("Which animal is known as the king of the jungle?", "the lion", ["the mouse", "the frog", "the owl"]),
    ("What color is the sky on a clear day?", "blue", ["green", "red", "purple"]),
    ("What color are ripe bananas?", "yellow", ["blue", "purple", "black"]),
    ("What color is grass?", "green", ["red", "blue", "orange"]),
    ("What color is snow?", "white", ["black", "green", "red"]),
    ("What color do you get by mixing blue and yellow?", "green", ["red", "pink", "brown"]),
    ("What color do you get by mixing red and white?", "pink", ["green", "blue", "black"]),
    ("What is frozen water called?", "ice", ["steam", "sand", "salt"]),
    ("What gas do humans need to breathe?", "oxygen", ["helium", "neon", "argon"]),
    ("What gas do plants take in from the air?", "carbon dioxide", ["helium", "neon", "argon"]),
    ("At what temperature in degrees Celsius does water freeze?", "0", ["100", "50", "37"]),
    ("At what temperature in degrees Celsius does water boil at sea level?", "100", ["0", "50", "200"]),
    ("What is the chemical formula of water?", "H2O", ["CO2", "NaCl", "O3"]),
    ("What is the hardest natural substance?", "diamond", ["gold", "chalk", "wood"]),
    ("What organ pumps blood through the body?", "the heart", ["the liver", "the lungs", "the stomach"]),
    ("What organ do humans use to breathe?", "the lungs", ["the heart", "the liver", "the kidneys"]),
    ("What organ do humans think with?", "the brain", ["the heart", "the liver", "the stomach"]),
    ("How many bones are in the adult human body?", "206", ["100", "52", "365"]),
    ("What is the closest star to Earth?", "the Sun", ["Sirius", "Polaris", "Vega"]),
    ("What natural satellite orbits Earth?", "the Moon", ["Mars", "the Sun", "Venus"]),
    ("Who wrote Romeo and Juliet?", "William Shakespeare", ["Charles Dickens", "Mark Twain", "Jane Austen"]),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci", ["Pablo Picasso", "Vincent van Gogh", "Claude Monet"]),
    ("Who developed the theory of relativity?", "Albert Einstein", ["Isaac Newton", "Charles Darwin",
                                                                    "Galileo Galilei"]),
    ("Who proposed the theory of evolution by natural selection?", "Charles Darwin",
     ["Albert Einstein", "Isaac Newton", "Nikola Tesla"]),
    ("Who was the first person to walk on the Moon?", "Neil Armstrong", ["Yuri Gagarin", "Buzz Lightyear",
                                                                         "Isaac Newton"]),
    ("Who was the first President of the United States?", "George Washington",
     ["Abraham Lincoln", "Thomas Edison", "Benjamin Franklin"]),
    ("Who composed the Fifth Symphony that begins with four famous notes?", "Ludwig van Beethoven",
     ["Elvis Presley", "John Lennon", "Bob Dylan"]),
    ("Who wrote Pride and Prejudice?", "Jane Austen", ["Charles Dickens", "Mark Twain", "Leo Tolstoy"]),
    ("Which is the largest country by area?", "Russia", ["Belgium", "Cuba", "Portugal"]),
    ("Which country has the largest population?", "India", ["Iceland", "Fiji", "Norway"]),
    ("In which country are the pyramids of Giza?", "Egypt", ["Mexico", "Peru", "Greece"]),
    ("In which city is the Eiffel Tower?", "Paris", ["London", "Rome", "Berlin"]),
    ("In which city is the Colosseum?", "Rome", ["Paris", "Madrid", "Vienna"]),
    ("In which country is the Great Wall?", "China", ["India", "Egypt", "Brazil"]),
    ("In which country is the Taj Mahal?", "India", ["China", "Egypt", "Mexico"]),
    ("What is the currency of Japan?", "the yen", ["the euro", "the dollar", "the pound"]),
    ("What is the currency of the United Kingdom?", "the pound", ["the yen", "the peso", "the rupee"]),
    ("What is the main ingredient of guacamole?", "avocado", ["potato", "carrot", "apple"]),
    ("What is the main ingredient of bread?", "flour", ["sugar", "rice", "milk"]),
    ("What instrument has 88 keys?", "the piano", ["the violin", "the flute", "the drum"]),
    ("What is the opposite of north?", "south", ["east", "west", "up"]),
    ("What shape has no corners?", "a circle", ["a square", "a triangle", "a rectangle"]),
    ("What is the square root of 81?", "9", ["8", "7", "18"]),
    ("What is the square root of 64?", "8", ["6", "32", "16"]),
    ("What is half of 100?", "50", ["25", "20", "200"]),
    ("What is a quarter of 100?", "25", ["50", "40", "4"]),
    ("What is the largest mammal that can fly?", "the bat", ["the eagle", "the penguin", "the whale"]),
    ("Which bird cannot fly and lives in Antarctica?", "the penguin", ["the eagle", "the sparrow", "the parrot"]),
    ("What language has the most native speakers?", "Mandarin Chinese", ["Icelandic", "Welsh", "Latin"]),
    ("What is the boiling point of water in degrees Fahrenheit?", "212", ["100", "32", "180"]),
    ("What is the freezing point of water in degrees Fahrenheit?", "32", ["0", "212", "100"]),
    ("What programming language is named after a snake?", "Python", ["Java", "Ruby", "Rust"]),
    ("What does CPU stand for?", "central processing unit", ["computer power unit", "central print unit",
                                                             "core program unit"]),
    ("What does HTML stand for?", "HyperText Markup Language", ["High Text Machine Language",
                                                                "Home Tool Markup Language",
                                                                "Hyper Transfer Mail Language"]),
    ("How many bits are in a byte?", "8", ["4", "10", "16"]),
]


def choices_from(right: str, pool: list[str], rng: random.Random, k: int = 3) -> list[str]:
    wrong = rng.sample(sorted({p for p in pool if p != right}), k)
    return [right, *wrong]


def questions(rng: random.Random) -> list[dict]:
    out = []

    def add(kind: str, question: str, right: str, wrong: list[str]) -> None:
        choices = [right, *wrong]
        rng.shuffle(choices)
        out.append({"kind": kind, "question": question, "choices": choices, "answer": choices.index(right)})

    capitals = sorted(set(CAPITALS.values()))
    for country, capital in CAPITALS.items():
        add("capitals", f"What is the capital of {country}?", capital, choices_from(capital, capitals, rng)[1:])
    continents = sorted(set(CONTINENTS.values()))
    for country, continent in CONTINENTS.items():
        add("continents", f"On which continent is {country}?", continent,
            choices_from(continent, continents, rng)[1:])
    languages = sorted(set(LANGUAGES.values()))
    for country, language in LANGUAGES.items():
        add("languages", f"What is the main language spoken in {country}?", language,
            choices_from(language, languages, rng)[1:])
    symbols = sorted(set(SYMBOLS.values()))
    for element, symbol in SYMBOLS.items():
        add("chemistry", f"What is the chemical symbol for {element}?", symbol, choices_from(symbol, symbols, rng)[1:])
    words = sorted(set(OPPOSITES) | set(OPPOSITES.values()))
    for word, opposite in OPPOSITES.items():
        pool = [w for w in words if w not in (word, opposite)]
        add("opposites", f"What is the opposite of '{word}'?", opposite, rng.sample(pool, 3))
    young = sorted(set(YOUNG.values()))
    for animal, baby in YOUNG.items():
        add("animals", f"What is a baby {animal} called?", baby, choices_from(baby, young, rng)[1:])
    for word, plural in PLURALS.items():
        add("language", f"What is the plural of '{word}'?", plural, PLURAL_DISTRACTORS[word])
    for i, month in enumerate(MONTHS):
        add("calendar", f"Which month comes after {month}?", MONTHS[(i + 1) % 12],
            rng.sample([m for j, m in enumerate(MONTHS) if j != (i + 1) % 12 and j != i], 3))
    for i, day in enumerate(DAYS):
        add("calendar", f"Which day of the week comes after {day}?", DAYS[(i + 1) % 7],
            rng.sample([d for j, d in enumerate(DAYS) if j != (i + 1) % 7 and j != i], 3))
    for question, right, wrong in FACTS:
        add("facts", question, right, list(wrong))
    seen = set()
    while len([q for q in out if q["kind"] == "arithmetic"]) < 120:
        a, b, op = rng.randint(2, 20), rng.randint(2, 12), rng.choice("+-x")
        if (a, b, op) in seen or (op == "-" and b >= a):
            continue
        seen.add((a, b, op))
        value = a + b if op == "+" else a - b if op == "-" else a * b
        wrong = set()
        while len(wrong) < 3:
            w = value + rng.choice([-10, -2, -1, 1, 2, 10])
            if w >= 0 and w != value:
                wrong.add(w)
        add("arithmetic", f"What is {a} {'times' if op == 'x' else op} {b}?", str(value),
            [str(w) for w in sorted(wrong)])
    for n in range(2, 11):
        add("numbers", f"What is the number {NUMBER_WORDS[n]} written in digits?", str(n),
            [str(m) for m in rng.sample([m for m in range(1, 13) if m != n], 3)])
        add("numbers", f"What number comes after {NUMBER_WORDS[n]}?", NUMBER_WORDS[n + 1],
            rng.sample([w for j, w in enumerate(NUMBER_WORDS) if j not in (n, n + 1)], 3))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="a JSON list of the questions to keep")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = questions(random.Random(args.seed))
    if args.keep:
        keep = set(json.loads(args.keep.read_text()))
        rows = [row for row in rows if row["question"] in keep]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} questions to {args.out}")


if __name__ == "__main__":
    main()
