"""Write the sample raw files the default pipeline runs on (no pipeline stage runs this script):

  data/raw/orca_sample.parquet       300 rows in the Open-Orca 1M-GPT4-Augmented layout
  data/raw/platypus_sample.parquet   250 rows in the Open-Platypus layout

Run:  python dev/make_samples.py [--out-dir DIR (default: data/raw)] [--seed N (default: 0)]

Every row is an authored template filled in by a seeded RNG (nothing is copied from the real datasets). Planted among
them: empty system prompts, empty responses and outputs, whitespace-only questions, exact duplicates and answers over
6,000 characters. The tables and the order of the RNG calls fix every row after them, and figures measured elsewhere
depend on the committed files: tests/test_sample_data.py checks that this still writes exactly their rows.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import random
import re
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

RAW = Path(__file__).resolve().parents[1] / "data" / "raw"
ORCA_COLUMNS = ["id", "system_prompt", "question", "response"]
PLATYPUS_COLUMNS = ["instruction", "input", "output", "data_source"]


def _list(text: str, sep: str = "\n") -> list[str]:
    return [item.strip() for item in text.strip().split(sep)]


def _table(text: str, sep: str = "\n") -> list[tuple[str, ...]]:
    """Records split by `sep` (default: one a line; a line ending in a backslash goes on), fields split by "|"."""
    return [tuple(record.split("|")) for record in _list(text, sep)]


# ---------------------------------------- tables (authored for this project, as is every template below)
# Reordering, adding or removing an entry changes which rows the RNG picks, so it changes the sample files.
SYSTEM_PROMPTS = _list("""
You are a helpful assistant. Answer clearly and concisely.
You are an AI assistant. Work through the task step by step and explain your reasoning before the final answer.
You are a friendly tutor. Explain the answer so that a beginner can follow it.
You are a careful assistant who double-checks every calculation.
You are an assistant that follows instructions exactly. Keep your answer short.
You are a knowledgeable assistant. Give accurate, well-organized answers.
You are a patient teacher. Break the problem into small steps and justify each one.
You are an AI assistant that helps people find information. Give a direct answer first, then a brief explanation.
""")
# name, subject pronoun, possessive
PEOPLE = _table("""
Maria|she|her; Tom|he|his; Aisha|she|her; Lucas|he|his; Mei|she|her; Omar|he|his; Sofia|she|her; Daniel|he|his;
Priya|she|her; Jonas|he|his; Elena|she|her; Kwame|he|his
""", ";")
# country, capital, continent, currency
COUNTRIES = _table("""
France|Paris|Europe|euro; Germany|Berlin|Europe|euro; Italy|Rome|Europe|euro; Spain|Madrid|Europe|euro;
Portugal|Lisbon|Europe|euro; Greece|Athens|Europe|euro; Ireland|Dublin|Europe|euro; Austria|Vienna|Europe|euro;
Finland|Helsinki|Europe|euro; Norway|Oslo|Europe|Norwegian krone; Sweden|Stockholm|Europe|Swedish krona;
Denmark|Copenhagen|Europe|Danish krone; Poland|Warsaw|Europe|Polish złoty; Hungary|Budapest|Europe|Hungarian forint;
Switzerland|Bern|Europe|Swiss franc; the United Kingdom|London|Europe|pound sterling; Japan|Tokyo|Asia|Japanese yen;
South Korea|Seoul|Asia|South Korean won; India|New Delhi|Asia|Indian rupee; China|Beijing|Asia|renminbi (yuan);
Thailand|Bangkok|Asia|Thai baht; Vietnam|Hanoi|Asia|Vietnamese dong; Egypt|Cairo|Africa|Egyptian pound;
Kenya|Nairobi|Africa|Kenyan shilling; Nigeria|Abuja|Africa|Nigerian naira; Ghana|Accra|Africa|Ghanaian cedi;
Morocco|Rabat|Africa|Moroccan dirham; Canada|Ottawa|North America|Canadian dollar;
Mexico|Mexico City|North America|Mexican peso; the United States|Washington, D.C.|North America|US dollar;
Brazil|Brasília|South America|Brazilian real; Argentina|Buenos Aires|South America|Argentine peso;
Chile|Santiago|South America|Chilean peso; Peru|Lima|South America|Peruvian sol;
Colombia|Bogotá|South America|Colombian peso; Australia|Canberra|Oceania|Australian dollar;
New Zealand|Wellington|Oceania|New Zealand dollar
""", ";")
ELEMENTS = _table("""
gold|Au; silver|Ag; iron|Fe; sodium|Na; potassium|K; copper|Cu; lead|Pb; helium|He; carbon|C; oxygen|O; nitrogen|N;
hydrogen|H; calcium|Ca; tin|Sn; mercury|Hg
""", ";")
# question, answer
FACTS = _table("""
How many planets are in our solar system?|There are eight planets in our solar system: Mercury, Venus, Earth, Mars, \
Jupiter, Saturn, Uranus and Neptune.
What is the largest planet in the solar system?|Jupiter is the largest planet in the solar system. It is a gas giant \
about 11 times wider than Earth.
At what temperature does water boil at sea level?|At sea level, pure water boils at 100 °C, which is 212 °F.
At what temperature does pure water freeze?|Pure water freezes at 0 °C (32 °F) at normal atmospheric pressure.
Which planet is known as the Red Planet?|Mars is called the Red Planet because iron oxide (rust) in its soil gives it \
a reddish color.
What is the largest ocean on Earth?|The Pacific Ocean is the largest ocean on Earth.
How many continents are there?|There are seven continents: Africa, Antarctica, Asia, Australia (Oceania), Europe, \
North America and South America.
How many days are in a leap year?|A leap year has 366 days. The extra day is February 29.
Who wrote Romeo and Juliet?|Romeo and Juliet was written by William Shakespeare.
Which gas do plants take in from the air for photosynthesis?|Plants take in carbon dioxide (CO2) from the air and use \
it, together with water and sunlight, to make sugar.
What is the chemical formula of water?|The chemical formula of water is H2O: two hydrogen atoms bonded to one oxygen \
atom.
How many sides does a hexagon have?|A hexagon has six sides.
What is the tallest mountain in the world above sea level?|Mount Everest is the tallest mountain above sea level, at \
about 8,849 metres (29,032 feet).
How many bones are in the adult human body?|An adult human body usually has 206 bones.
What is the closest star to Earth?|The Sun is the closest star to Earth. The next closest is Proxima Centauri, about \
4.2 light-years away.
How many minutes are in a day?|There are 24 × 60 = 1440 minutes in a day.
What is the hardest natural substance?|Diamond is the hardest naturally occurring substance.
Which organ pumps blood through the human body?|The heart pumps blood through the human body.
How many legs does a spider have?|A spider has eight legs.
How many sides does a triangle have?|A triangle has three sides.
""")
# English -> (French, Spanish, German), as are WORDS
PHRASES = {en: tuple(tr) for en, *tr in _table("""
Good morning.|Bonjour.|Buenos días.|Guten Morgen.
Good night.|Bonne nuit.|Buenas noches.|Gute Nacht.
Thank you very much.|Merci beaucoup.|Muchas gracias.|Vielen Dank.
Where is the train station?|Où est la gare ?|¿Dónde está la estación de tren?|Wo ist der Bahnhof?
I am hungry.|J'ai faim.|Tengo hambre.|Ich habe Hunger.
I am thirsty.|J'ai soif.|Tengo sed.|Ich habe Durst.
How are you?|Comment vas-tu ?|¿Cómo estás?|Wie geht es dir?
My name is Anna.|Je m'appelle Anna.|Me llamo Anna.|Ich heiße Anna.
The weather is nice today.|Il fait beau aujourd'hui.|Hoy hace buen tiempo.|Das Wetter ist heute schön.
I like to read books.|J'aime lire des livres.|Me gusta leer libros.|Ich lese gern Bücher.
Where is the bathroom?|Où sont les toilettes ?|¿Dónde está el baño?|Wo ist die Toilette?
How much does this cost?|Combien ça coûte ?|¿Cuánto cuesta esto?|Wie viel kostet das?
I don't understand.|Je ne comprends pas.|No entiendo.|Ich verstehe nicht.
Can you help me?|Pouvez-vous m'aider ?|¿Puede ayudarme?|Können Sie mir helfen?
See you tomorrow.|À demain.|Hasta mañana.|Bis morgen.
The cat is sleeping.|Le chat dort.|El gato está durmiendo.|Die Katze schläft.
I live in a small house.|J'habite dans une petite maison.|Vivo en una casa pequeña.|Ich wohne in einem kleinen Haus.
The water is cold.|L'eau est froide.|El agua está fría.|Das Wasser ist kalt.
I have two brothers.|J'ai deux frères.|Tengo dos hermanos.|Ich habe zwei Brüder.
Happy birthday!|Joyeux anniversaire !|¡Feliz cumpleaños!|Alles Gute zum Geburtstag!
Please speak more slowly.|Parlez plus lentement, s'il vous plaît.|Hable más despacio, por favor.|Bitte sprechen Sie \
langsamer.
I would like a coffee.|Je voudrais un café.|Quisiera un café.|Ich hätte gern einen Kaffee.
The book is on the table.|Le livre est sur la table.|El libro está sobre la mesa.|Das Buch liegt auf dem Tisch.
We are going to the beach.|Nous allons à la plage.|Vamos a la playa.|Wir gehen an den Strand.
It is raining.|Il pleut.|Está lloviendo.|Es regnet.
What time is it?|Quelle heure est-il ?|¿Qué hora es?|Wie spät ist es?
The children are playing in the garden.|Les enfants jouent dans le jardin.|Los niños juegan en el jardín.|Die Kinder \
spielen im Garten.
Good luck!|Bonne chance !|¡Buena suerte!|Viel Glück!
The door is open.|La porte est ouverte.|La puerta está abierta.|Die Tür ist offen.
My sister is a doctor.|Ma sœur est médecin.|Mi hermana es médica.|Meine Schwester ist Ärztin.
Welcome!|Bienvenue !|¡Bienvenido!|Willkommen!
I love you.|Je t'aime.|Te quiero.|Ich liebe dich.
Excuse me.|Excusez-moi.|Disculpe.|Entschuldigung.
The train leaves at eight o'clock.|Le train part à huit heures.|El tren sale a las ocho.|Der Zug fährt um acht Uhr ab.
Where do you live?|Où habites-tu ?|¿Dónde vives?|Wo wohnst du?
The soup is hot.|La soupe est chaude.|La sopa está caliente.|Die Suppe ist heiß.
I need a doctor.|J'ai besoin d'un médecin.|Necesito un médico.|Ich brauche einen Arzt.
Open the window, please.|Ouvre la fenêtre, s'il te plaît.|Abre la ventana, por favor.|Mach bitte das Fenster auf.
""")}
WORDS = {en: tuple(tr) for en, *tr in _table("""
one|un|uno|eins; two|deux|dos|zwei; three|trois|tres|drei; four|quatre|cuatro|vier; five|cinq|cinco|fünf;
six|six|seis|sechs; seven|sept|siete|sieben; eight|huit|ocho|acht; nine|neuf|nueve|neun; ten|dix|diez|zehn;
red|rouge|rojo|rot; blue|bleu|azul|blau; green|vert|verde|grün; yellow|jaune|amarillo|gelb; black|noir|negro|schwarz;
white|blanc|blanco|weiß; Monday|lundi|lunes|Montag; Tuesday|mardi|martes|Dienstag;
Wednesday|mercredi|miércoles|Mittwoch; Thursday|jeudi|jueves|Donnerstag; Friday|vendredi|viernes|Freitag;
Saturday|samedi|sábado|Samstag; Sunday|dimanche|domingo|Sonntag; dog|chien|perro|Hund; house|maison|casa|Haus;
water|eau|agua|Wasser; bread|pain|pan|Brot; friend|ami|amigo|Freund
""", ";")}
# word, part of speech, definition, example sentence
DEFINITIONS = _table("""
umbrella|noun|a folding frame covered with fabric that you hold over your head to keep off rain or sun|She opened her \
umbrella as soon as the rain started.
library|noun|a place where books, magazines and other materials are kept for people to read or borrow|I borrowed three \
novels from the library.
recipe|noun|a set of instructions that explains how to prepare a dish, including the ingredients|My grandmother's soup \
recipe uses fresh thyme.
bridge|noun|a structure built over a river, road or valley so that people or vehicles can cross it|We walked across \
the old stone bridge.
volcano|noun|a mountain or opening in the Earth's crust through which melted rock, ash and gas can erupt|The volcano \
has not erupted for two hundred years.
honest|adjective|truthful and sincere; not lying, cheating or stealing|He gave an honest answer even though it was \
difficult.
generous|adjective|willing to give money, time or help to others freely|Our generous neighbor lent us his ladder.
habit|noun|something a person does regularly, often without thinking about it|Reading before bed is a good habit.
harvest|noun|the time or act of gathering ripe crops from the fields|The apple harvest was larger than usual this year.
journey|noun|an act of travelling from one place to another, especially over a long distance|The journey from the \
coast took six hours.
orbit|noun|the curved path that a planet, moon or satellite follows around another object in space|The Moon completes \
an orbit around Earth in about 27 days.
fragile|adjective|easily broken or damaged|Pack the glasses carefully because they are fragile.
ancient|adjective|belonging to the very distant past|The museum displays ancient coins.
curious|adjective|eager to learn or know about something|The curious child asked how rainbows form.
recycle|verb|to process used materials so that they can be made into new products|We recycle glass bottles and paper \
every week.
neighbor|noun|a person who lives next door to or near another person|Our neighbor waters our plants when we travel.
thermometer|noun|an instrument used to measure temperature|The thermometer showed 25 degrees this afternoon.
democracy|noun|a system of government in which citizens choose their leaders by voting|Free elections are an important \
part of a democracy.
photosynthesis|noun|the process by which green plants use sunlight, water and carbon dioxide to make food and release \
oxygen|Leaves are where most photosynthesis happens.
vocabulary|noun|all the words that a person knows or that are used in a language|Reading every day helps you build \
your vocabulary.
deadline|noun|the latest time or date by which something must be finished|The deadline for the report is Friday at noon.
patient|adjective|able to wait calmly without becoming annoyed|The teacher was patient with the nervous students.
""")
# incorrect sentence, corrected sentence, reason
GRAMMAR = _table("""
She don't like apples.|She doesn't like apples.|With a singular subject such as "she", use "doesn't" instead of "don't".
Me and him went to the store.|He and I went to the store.|The pronouns are the subject of the sentence, so the subject \
forms "he" and "I" are needed.
Their going to the park later.|They're going to the park later.|"They're" is short for "they are"; "their" shows \
possession.
I have went there before.|I have gone there before.|The present perfect uses the past participle "gone", not the past \
tense "went".
The dog wagged it's tail.|The dog wagged its tail.|"Its" is the possessive form; "it's" means "it is".
There is many books on the shelf.|There are many books on the shelf.|"Books" is plural, so the verb must be "are".
Everyone have finished the test.|Everyone has finished the test.|"Everyone" is grammatically singular and takes "has".
I seen that movie yesterday.|I saw that movie yesterday.|The simple past of "see" is "saw"; "seen" needs a helping \
verb such as "have".
Your the best friend I have.|You're the best friend I have.|"You're" means "you are"; "your" shows possession.
She is more taller than her sister.|She is taller than her sister.|"Taller" is already a comparative, so "more" is not \
needed.
We was late for the meeting.|We were late for the meeting.|With "we", the past tense of "be" is "were".
Between you and I, the plan is risky.|Between you and me, the plan is risky.|After a preposition such as "between", \
use the object pronoun "me".
He didn't say nothing.|He didn't say anything.|Two negatives ("didn't" and "nothing") should not be combined in \
standard English.
The childrens are playing outside.|The children are playing outside.|"Children" is already plural; "childrens" is not \
a word.
I could of helped you.|I could have helped you.|"Could of" is a mishearing of "could've", which is short for "could \
have".
Less people came than we expected.|Fewer people came than we expected.|Use "fewer" with things you can count, such as \
people.
She writed a letter to her grandmother.|She wrote a letter to her grandmother.|"Write" is irregular; its past tense is \
"wrote".
Each of the students have a book.|Each of the students has a book.|"Each" is singular, so the verb is "has".
The informations are on the website.|The information is on the website.|"Information" is uncountable: it has no plural \
and takes a singular verb.
He go to school by bus every day.|He goes to school by bus every day.|In the present simple, a third-person singular \
subject takes "goes".
""")
PRODUCTS = _list("""
blender; backpack; desk lamp; phone case; coffee maker; office chair; water bottle; tent; keyboard; rice cooker;
pair of headphones; winter jacket
""", ";")
POSITIVE = _list("""
works perfectly and arrived two days early; is comfortable, sturdy and worth every penny;
exceeded my expectations in every way; was easy to set up and has been reliable ever since;
looks great and the quality is excellent; made my morning routine so much easier; is the best one I have ever owned;
is light, well made and surprisingly cheap
""", ";")
NEGATIVE = _list("""
fell apart after three days; feels cheap and is already showing wear; was much smaller than the photos suggested;
arrived scratched and customer service never replied; is so uncomfortable that I gave up using it;
broke the first time I used it; is a complete waste of money; came with instructions that are impossible to follow
""", ";")
LANGUAGES = ["French", "Spanish", "German"]
UNCOUNTABLE = {"photosynthesis", "vocabulary"}
POSITIVE_TAIL = ["I would definitely buy it again.", "Highly recommended!", "My whole family loves it.", ""]
NEGATIVE_TAIL = ["I am sending it back.", "I would not recommend it to anyone.", "Very disappointed.", ""]
SENTENCES = list(PHRASES) + [
    "The quick brown fox jumps over the lazy dog.", "Our team finished the project two weeks early.",
    "Fresh bread smells wonderful in the morning.", "My brother plays the guitar every evening.",
    "The museum is closed on Mondays.", "Please remember to water the plants.",
]
LETTER_WORDS = ("strawberry banana mississippi committee bookkeeper elephant pineapple necessary occurrence assessment "
                "balloon coffee parallel tomorrow programming referee success address millennium possession").split()
WORD_LIST = "pear apple mango kiwi cherry grape lemon plum peach melon orange banana fig apricot lime papaya".split()
ITEMS = _list("notebooks; pens; apples; sandwiches; movie tickets; candles; mugs; books; muffins", ";")
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
# question, answer
SYLLOGISMS = _table("""
All whales are mammals. All mammals breathe air. Do whales breathe air?|Yes. Whales are mammals, and every mammal \
breathes air, so whales must breathe air.
All roses are flowers. Some flowers fade quickly. Can we conclude that some roses fade quickly?|No. The flowers that \
fade quickly might not include any roses, so the conclusion does not follow.
Every student in the class passed the exam. Lena is a student in the class. Did Lena pass the exam?|Yes. Every student \
in the class passed, and Lena is one of them, so she passed.
No reptiles have fur. A lizard is a reptile. Does a lizard have fur?|No. No reptile has fur, and a lizard is a \
reptile, so a lizard has no fur.
If it rains, the match is cancelled. The match was not cancelled. Did it rain?|No. If it had rained, the match would \
have been cancelled. Since it was not cancelled, it did not rain.
If it rains, the street gets wet. The street is wet. Must it have rained?|No. Rain is one way the street gets wet, but \
something else (such as a street cleaner) could have made it wet.
All squares are rectangles. This shape is a rectangle. Must it be a square?|No. Every square is a rectangle, but not \
every rectangle is a square, so the shape need not be a square.
Some birds cannot fly. Penguins are birds. Can we conclude that penguins cannot fly?|No, not from these statements \
alone. They say only that some birds cannot fly, not which ones. (In reality penguins cannot fly, but that fact is not \
given here.)
""")


class Task(NamedTuple):
    """One example: `question` stands alone; Platypus rows with an input show `instruction` + `context`."""

    question: str
    response: str
    instruction: str
    context: str


def _task(question: str, response: str, instruction: str = "", context: str = "") -> Task:
    return Task(question, response, instruction or question, context)


def _num(x: float, nd: int = 2) -> str:
    s = f"{x:.{nd}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s == "-0" else s


def _join(items: list) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _money(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:.2f}"


def _code(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


# ---------------------------------------- arithmetic and math
def arithmetic(rng: random.Random) -> Task:
    op = rng.choice("+-*/")
    if op == "+":
        a, b = rng.randint(12, 9999), rng.randint(12, 9999)
        q = rng.choice([f"What is {a} + {b}?", f"Calculate {a} plus {b}.", f"Add {a} and {b}."])
        return _task(q, rng.choice([f"{a} + {b} = {a + b}.",
                                    f"Adding the two numbers gives {a} + {b} = {a + b}. The answer is {a + b}."]))
    if op == "-":
        a, b = rng.randint(100, 9999), rng.randint(10, 5000)
        q = rng.choice([f"What is {a} - {b}?", f"Subtract {b} from {a}.", f"Compute {a} minus {b}."])
        note = " The result is negative because the second number is larger." if b > a else ""
        return _task(q, f"{a} - {b} = {a - b}.{note}")
    if op == "*":
        a, b = rng.randint(12, 99), rng.randint(12, 99)
        tens, ones = b // 10 * 10, b % 10
        q = rng.choice([f"What is {a} × {b}?", f"Multiply {a} by {b}.", f"Calculate {a} times {b}."])
        steps = (f"Split {b} into {tens} + {ones}.\n{a} × {tens} = {a * tens}\n{a} × {ones} = {a * ones}\n"
                 f"{a * tens} + {a * ones} = {a * b}\n\nSo {a} × {b} = {a * b}.")
        return _task(q, steps if rng.random() < 0.6 else f"{a} × {b} = {a * b}.")
    b, quot = rng.randint(2, 25), rng.randint(2, 300)
    rem = rng.randint(1, b - 1) if rng.random() < 0.4 else 0
    a = b * quot + rem
    q = rng.choice([f"What is {a} divided by {b}?", f"Divide {a} by {b}.", f"Calculate {a} ÷ {b}."])
    if rem:
        return _task(q, f"{b} × {quot} = {b * quot}, which leaves {a} - {b * quot} = {rem}. "
                        f"So {a} ÷ {b} = {quot} remainder {rem} (as a decimal, about {_num(a / b, 3)}).")
    return _task(q, f"{a} ÷ {b} = {quot}, because {b} × {quot} = {a}.")


def percent(rng: random.Random) -> Task:
    p = rng.choice([5, 10, 12, 15, 20, 25, 30, 40, 50, 75])
    n = rng.randint(2, 80) * 10
    kind, f, part = rng.randrange(3), _num(p / 100), p * n / 100
    if kind == 0:
        return _task(f"What is {p}% of {n}?",
                     f"{p}% means {p}/100 = {f}. Multiply: {n} × {f} = {_num(part)}. So {p}% of {n} is {_num(part)}.")
    if kind == 1:
        return _task(f"A jacket costs ${n}. It is on sale for {p}% off. What is the sale price?",
                     f"The discount is {p}% of ${n} = {n} × {f} = ${_money(part)}.\n"
                     f"Sale price = ${n} - ${_money(part)} = ${_money(n - part)}.")
    return _task(f"What percentage of {n} is {_num(part)}?", f"Divide the part by the whole and multiply by 100: "
                 f"{_num(part)} ÷ {n} × 100 = {p}%. So {_num(part)} is {p}% of {n}.")


def word_problem(rng: random.Random) -> Task:
    name, subj, poss = rng.choice(PEOPLE)
    kind = rng.randrange(7)
    if kind == 0:
        i1, i2 = rng.sample(ITEMS, 2)
        a, pa_, b, pb = rng.randint(2, 6), rng.randint(2, 12), rng.randint(2, 4), rng.randint(1, 6)
        total = a * pa_ + b * pb
        bill = next(x for x in (20, 50, 100) if x > total)
        return _task(f"{name} buys {a} {i1} at ${pa_} each and {b} {i2} at ${pb} each. {subj.capitalize()} pays with "
                     f"a ${bill} bill. How much change does {subj} get?",
                     f"Step 1: Cost of the {i1}: {a} × ${pa_} = ${a * pa_}.\nStep 2: Cost of the {i2}: {b} × ${pb} = "
                     f"${b * pb}.\nStep 3: Total cost: ${a * pa_} + ${b * pb} = ${total}.\nStep 4: Change: ${bill} - "
                     f"${total} = ${bill - total}.\n\n{name} gets ${bill - total} in change.")
    if kind == 1:
        v1, t1, v2, t2 = rng.randrange(40, 95, 5), rng.randint(1, 4), rng.randrange(30, 95, 5), rng.randint(1, 3)
        d1, d2 = v1 * t1, v2 * t2
        d, t = d1 + d2, t1 + t2
        return _task(f"A car drives at {v1} km/h for {t1} hours and then at {v2} km/h for {t2} hours. How far does it "
                     "travel in total, and what is its average speed?",
                     f"Distance = speed × time.\nFirst part: {v1} × {t1} = {d1} km.\nSecond part: {v2} × {t2} = "
                     f"{d2} km.\nTotal distance: {d1} + {d2} = {d} km.\nTotal time: {t1} + {t2} = {t} hours.\n"
                     f"Average speed: {d} ÷ {t} = {_num(d / t)} km/h.")
    if kind == 2:
        m, k, e = rng.randint(2, 8), rng.randint(2, 9), rng.randint(1, 10)
        baked = m * k + e
        return _task(f"{name} baked {baked} cookies, ate {e} of them, and shared the rest equally among {m} friends. "
                     "How many cookies did each friend get?",
                     f"Cookies left after eating: {baked} - {e} = {baked - e}.\nShared among {m} friends: "
                     f"{baked - e} ÷ {m} = {k}.\n\nEach friend got {k} cookies.")
    if kind == 3:
        ln, w, c = rng.randint(4, 30), rng.randint(3, 20), rng.randint(3, 15)
        per = 2 * (ln + w)
        return _task(f"A rectangular garden is {ln} m long and {w} m wide. What is its area? Fencing costs ${c} per "
                     "metre; how much does it cost to fence the whole garden?",
                     f"Area = length × width = {ln} × {w} = {ln * w} m².\nPerimeter = 2 × ({ln} + {w}) = {per} m.\n"
                     f"Fencing cost = {per} × ${c} = ${per * c}.")
    if kind == 4:
        s, have = rng.randrange(5, 45, 5), rng.randint(0, 60)
        price = have + s * rng.randint(3, 20) - rng.randint(0, s - 1)
        weeks, exact = math.ceil((price - have) / s), (price - have) / s
        up = "." if exact == weeks else f", so {subj} must round up to {weeks} whole weeks."
        return _task(f"{name} wants a bike that costs ${price}. {subj.capitalize()} already has ${have} and saves ${s} "
                     f"every week. How many weeks until {subj} can afford it?",
                     f"Amount still needed: ${price} - ${have} = ${price - have}.\nWeeks: {price - have} ÷ {s} = "
                     f"{_num(exact)}{up}\n\n{name} can afford the bike after {weeks} weeks.")
    if kind == 5:
        age, mult, yrs = rng.randint(6, 12), rng.randint(3, 5), rng.randint(2, 10)
        aunt = age * mult
        return _task(f"{name} is {age} years old. {poss.capitalize()} aunt is {mult} times as old. How old will the "
                     f"aunt be in {yrs} years, and what will their ages add up to then?",
                     f"The aunt is now {age} × {mult} = {aunt} years old.\nIn {yrs} years she will be {aunt} + {yrs} = "
                     f"{aunt + yrs}.\n{name} will be {age} + {yrs} = {age + yrs}.\nSum of their ages then: "
                     f"{aunt + yrs} + {age + yrs} = {aunt + age + 2 * yrs}.")
    per_day, days = rng.randint(10, 40), rng.randint(2, 6)
    read = per_day * days
    pages = rng.randint(read + per_day, read + 400)
    left, more = pages - read, math.ceil((pages - read) / per_day)
    up = "" if left % per_day == 0 else f", rounded up to {more}"
    return _task(f"A book has {pages} pages. {name} reads {per_day} pages a day. After {days} days, how many pages are "
                 f"left, and how many more days will {subj} need to finish?",
                 f"Pages read: {per_day} × {days} = {read}.\nPages left: {pages} - {read} = {left}.\n"
                 f"Days needed: {left} ÷ {per_day} = {_num(left / per_day)}{up}.\n\n{left} pages are left, and {name} "
                 f"needs {more} more days.")


# (draw the value, question, answer) for each kind of unit conversion
CONVERSIONS = [
    (lambda r: r.randint(2, 500), lambda km: f"Convert {km} kilometres to miles.",
     lambda km: f"1 mile = 1.609344 km, so divide by 1.609344: {km} ÷ 1.609344 ≈ {_num(km / 1.609344)}. "
                f"{km} km is about {_num(km / 1.609344)} miles."),
    (lambda r: r.randint(1, 300), lambda mi: f"How many kilometres are in {mi} miles?",
     lambda mi: f"Multiply by 1.609344: {mi} × 1.609344 ≈ {_num(mi * 1.609344)} km."),
    (lambda r: r.randint(1, 150), lambda kg: f"How many pounds is {kg} kg?",
     lambda kg: f"1 kg ≈ 2.20462 lb. {kg} × 2.20462 ≈ {_num(kg * 2.20462)} lb."),
    (lambda r: r.randint(-30, 120), lambda c: f"Convert {c} °C to Fahrenheit.",
     lambda c: f"Use F = C × 9/5 + 32.\n{c} × 9/5 = {_num(c * 9 / 5, 1)}\n{_num(c * 9 / 5, 1)} + 32 = "
               f"{_num(c * 9 / 5 + 32, 1)}\n\nSo {c} °C = {_num(c * 9 / 5 + 32, 1)} °F."),
    (lambda r: r.randint(-20, 220), lambda f: f"What is {f} °F in Celsius?",
     lambda f: f"Use C = (F - 32) × 5/9.\n{f} - 32 = {f - 32}\n{f - 32} × 5/9 ≈ {_num((f - 32) * 5 / 9, 1)}\n\n"
               f"So {f} °F ≈ {_num((f - 32) * 5 / 9, 1)} °C."),
    (lambda r: r.randint(1, 500) / r.choice([1, 10]), lambda m: f"How many centimetres are in {_num(m)} metres?",
     lambda m: f"There are 100 cm in a metre, so {_num(m)} × 100 = {_num(m * 100)} cm."),
    (lambda r: r.randint(61, 1000), lambda mins: f"How many hours and minutes is {mins} minutes?",
     lambda mins: f"{mins} ÷ 60 = {mins // 60} with a remainder of {mins % 60}, so {mins} minutes is {mins // 60} "
                  f"hours and {mins % 60} minutes."),
    (lambda r: r.randint(1, 90) / r.choice([1, 4, 10]), lambda l_: f"Convert {_num(l_)} litres to millilitres.",
     lambda l_: f"1 litre = 1000 mL, so {_num(l_)} × 1000 = {_num(l_ * 1000)} mL."),
    (lambda r: r.randint(1, 40), lambda ft: f"How many inches are in {ft} feet?",
     lambda ft: f"There are 12 inches in a foot: {ft} × 12 = {ft * 12} inches."),
    (lambda r: r.randint(1, 80), lambda inch: f"Convert {inch} inches to centimetres.",
     lambda inch: f"1 inch = 2.54 cm exactly, so {inch} × 2.54 = {_num(inch * 2.54)} cm."),
]


def conversion(rng: random.Random) -> Task:
    draw, question, answer = CONVERSIONS[rng.randrange(len(CONVERSIONS))]
    x = draw(rng)
    return _task(question(x), answer(x))


def number_props(rng: random.Random) -> Task:
    kind = rng.randrange(3)
    if kind == 0:
        n = rng.randint(11, 600)
        f = next((d for d in range(2, math.isqrt(n) + 1) if n % d == 0), None)
        q = rng.choice([f"Is {n} a prime number?", f"Determine whether {n} is prime."])
        if f is None:
            return _task(q, f"Yes, {n} is prime. √{n} ≈ {_num(math.sqrt(n), 1)}, and no whole number from 2 to "
                            f"{math.isqrt(n)} divides {n} evenly.")
        return _task(q, f"No, {n} is not prime. It is divisible by {f}: {n} = {f} × {n // f}.")
    if kind == 1:
        g = rng.randint(2, 15)
        a, b = g * rng.randint(2, 30), g * rng.randint(2, 30)
        if a == b:
            return _task(f"Find the greatest common divisor of {a} and {a}.",
                         f"The two numbers are equal, so the GCD is {a}.")
        steps, x, y = [], max(a, b), min(a, b)
        while y:
            steps.append(f"{x} = {x // y} × {y} + {x % y}")
            x, y = y, x % y
        return _task(f"Find the greatest common divisor and least common multiple of {a} and {b}.",
                     "Use the Euclidean algorithm:\n" + "\n".join(steps) + f"\nThe last non-zero remainder is {x}, so "
                     f"GCD({a}, {b}) = {x}.\nLCM = {a} × {b} ÷ {x} = {a * b // x}.")
    r = rng.randint(4, 40)
    return _task(f"What is the square root of {r * r}?",
                 f"The square root of {r * r} is {r}, because {r} × {r} = {r * r}.")


def logic(rng: random.Random) -> Task:
    kind = rng.randrange(3)
    if kind == 0:
        return _task(*rng.choice(SYLLOGISMS))
    if kind == 1:
        names = rng.sample([p[0] for p in PEOPLE], rng.randint(3, 4))  # tallest first
        shown = [f"{names[i]} is taller than {names[i + 1]}." for i in range(len(names) - 1)]
        rng.shuffle(shown)
        which = rng.choice(["tallest", "shortest"])
        ans = names[0] if which == "tallest" else names[-1]
        return _task(" ".join(shown) + f" Who is the {which}?", "Putting the statements in order from tallest to "
                     f"shortest: {' > '.join(names)}. So {ans} is the {which}.")
    today, k = rng.randrange(7), rng.randint(2, 60)
    return _task(f"If today is {DAYS[today]}, what day of the week will it be in {k} days?",
                 f"A week has 7 days, so only the remainder matters: {k} ÷ 7 = {k // 7} remainder {k % 7}. "
                 f"Counting {k % 7} days forward from {DAYS[today]} gives {DAYS[(today + k) % 7]}.")


# ---------------------------------------- knowledge and language
def facts(rng: random.Random) -> Task:
    kind = rng.randrange(5)
    country, capital, continent, currency = rng.choice(COUNTRIES)
    if kind == 0:
        q = rng.choice([f"What is the capital of {country}?", f"Which city is the capital of {country}?",
                        f"Name the capital city of {country}."])
        return _task(q, rng.choice([f"The capital of {country} is {capital}.",
                                    f"{capital} is the capital of {country}."]))
    if kind == 1:
        return _task(f"{capital} is the capital of which country?",
                     f"{capital} is the capital of {country}, which is in {continent}.")
    if kind == 2:
        return _task(f"What currency is used in {country}, and on which continent is it?",
                     f"{country[0].upper() + country[1:]} uses the {currency}. It is in {continent}.")
    if kind == 3:
        el, sym = rng.choice(ELEMENTS)
        if rng.random() < 0.5:
            return _task(f"What is the chemical symbol for {el}?", f"The chemical symbol for {el} is {sym}.")
        return _task(f"Which chemical element has the symbol {sym}?", f"{sym} is the symbol for {el}.")
    return _task(*rng.choice(FACTS))


def translation(rng: random.Random) -> Task:
    li = rng.randrange(3)
    lang = LANGUAGES[li]
    if rng.random() < 0.25:
        en, tr = rng.choice(list(WORDS.items()))
        return _task(f'How do you say "{en}" in {lang}?', f'In {lang}, "{en}" is "{tr[li]}".',
                     f"Translate this English word into {lang}.", en)
    en, tr = rng.choice(list(PHRASES.items()))
    q = rng.choice([f'Translate "{en}" into {lang}.', f'How would you say "{en}" in {lang}?',
                    f"Translate to {lang}: {en}"])
    r = rng.choice([tr[li], f"{lang}: {tr[li]}", f'In {lang}, "{en}" is "{tr[li]}"'])
    return _task(q, r, f"Translate the following sentence from English into {lang}.", en)


def definition(rng: random.Random) -> Task:
    word, pos, meaning, example = rng.choice(DEFINITIONS)
    kind = rng.randrange(3)
    if kind == 0:
        return _task(f'What does the word "{word}" mean?', f'"{word.capitalize()}" ({pos}) means {meaning}.')
    if kind == 1:
        article = "An" if word[0] in "aeiou" else "A"
        if pos == "noun":
            lead = f"{word.capitalize()} is" if word in UNCOUNTABLE else f"{article} {word} is"
        else:
            lead = f"To {word} is" if pos == "verb" else f'"{word.capitalize()}" means'
        return _task(f"Define {word}.", f"{lead} {meaning}.")
    return _task(f'Give a short definition of "{word}" and use it in a sentence.',
                 f"Definition ({pos}): {meaning}.\nExample: {example}")


def sentiment(rng: random.Random) -> Task:
    product, pos = rng.choice(PRODUCTS), rng.random() < 0.5
    phrase = rng.choice(POSITIVE if pos else NEGATIVE)
    tail = rng.choice(POSITIVE_TAIL if pos else NEGATIVE_TAIL)
    review = f"The {product} {phrase}." + (f" {tail}" if tail else "")
    label = "Positive" if pos else "Negative"
    instr = rng.choice(["Classify the sentiment of this review as positive or negative.",
                        "Is the following product review positive or negative?",
                        "Decide whether the customer is satisfied. Answer Positive or Negative."])
    feeling = "satisfaction" if pos else "dissatisfaction"
    r = rng.choice([label, f'{label}. Phrases such as "{phrase}" express {feeling}.'])
    return _task(f"{instr}\n\nReview: {review}", r, instr, review)


def grammar(rng: random.Random) -> Task:
    wrong, right, why = rng.choice(GRAMMAR)
    instr = rng.choice(["Correct the grammar in this sentence.", "Fix the grammatical error in the sentence below.",
                        "Rewrite the sentence so that it is grammatically correct."])
    return _task(f"{instr}\n\n{wrong}", rng.choice([right, f"{right}\n\nExplanation: {why}"]), instr, wrong)


def text_transform(rng: random.Random) -> Task:
    s = rng.choice(SENTENCES)
    kind = rng.randrange(4)
    if kind == 0:
        instr, r = "Convert the following sentence to uppercase.", s.upper()
    elif kind == 1:
        instr, r = "Reverse the order of the words in this sentence.", " ".join(reversed(s.split()))
    elif kind == 2:
        words = [w.strip(".,!?") for w in s.split()]
        instr = "How many words are in this sentence?"
        r = f"The sentence has {len(words)} words: " + ", ".join(f'"{w}"' for w in words) + "."
    else:
        w = rng.choice(LETTER_WORDS)
        letter = rng.choice(sorted(set(w)))
        at = [str(i + 1) for i, ch in enumerate(w) if ch == letter]
        plural = "s" if len(at) > 1 else ""
        return _task(f'How many times does the letter "{letter}" appear in the word "{w}"?',
                     f'The letter "{letter}" appears {len(at)} time{plural} in "{w}" (position{plural} {_join(at)}).',
                     f'Count how many times the letter "{letter}" appears in the given word.', w)
    return _task(f"{instr}\n\n{s}", r, instr, s)


def sorting(rng: random.Random) -> Task:
    if rng.random() < 0.7:
        nums = rng.sample(range(-20, 200), rng.randint(4, 10))
        desc = rng.random() < 0.35
        order = "descending" if desc else "ascending"
        out, ctx = ", ".join(map(str, sorted(nums, reverse=desc))), ", ".join(map(str, nums))
        r = rng.choice([out, f"In {order} order: {out}."])
        return _task(f"Sort the following numbers in {order} order: {ctx}", r, f"Sort these numbers in {order} order.",
                     ctx)
    words = rng.sample(WORD_LIST, rng.randint(4, 8))
    ctx = ", ".join(words)
    return _task(f"Put these words in alphabetical order: {ctx}", ", ".join(sorted(words)),
                 "Arrange the words below in alphabetical order.", ctx)


# ---------------------------------------- code
def _run(code: str) -> tuple[str, dict]:
    """Run a program an answer shows: what it prints is the output the answer states. Returns that and its globals."""
    out, env = io.StringIO(), {"__name__": "__main__"}
    with contextlib.redirect_stdout(out):
        exec(code, env)
    return out.getvalue().rstrip("\n"), env


def _lit(x: object) -> str:
    return f'"{x}"' if isinstance(x, str) else str(x)


# question, code defining a function, explanation, draw the arguments of the example some answers add
CODE_TASKS = [
    ("Write a Python function that reverses a string.", "def reverse_string(s: str) -> str:\n    return s[::-1]",
     "The slice [::-1] walks through the string from the end to the start.", lambda r: [r.choice(LETTER_WORDS)]),
    ("Write a Python function that computes the factorial of n.",
     "def factorial(n: int) -> int:\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n"
     "    return result", "It multiplies every whole number from 2 up to n; factorial(0) and factorial(1) return 1.",
     lambda r: [r.randint(3, 12)]),
    ("Write a Python function is_prime(n) that checks whether a number is prime.",
     "def is_prime(n: int) -> bool:\n    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n"
     "        if n % i == 0:\n            return False\n        i += 1\n    return True",
     "A divisor larger than the square root would pair with one smaller than it, so checking up to √n is enough.",
     lambda r: [r.randint(10, 200)]),
    ("Write a Python function that counts the vowels in a string.",
     'def count_vowels(text: str) -> int:\n    return sum(1 for ch in text.lower() if ch in "aeiou")',
     "It lowercases the text and counts the characters that are one of a, e, i, o, u.",
     lambda r: [r.choice(LETTER_WORDS)]),
    ("Write a Python function that returns the largest number in a list without using max().",
     "def find_max(numbers: list[int]) -> int:\n    largest = numbers[0]\n    for x in numbers[1:]:\n"
     "        if x > largest:\n            largest = x\n    return largest",
     "It keeps the largest value seen so far and updates it whenever a bigger number appears.",
     lambda r: [r.sample(range(1, 100), 5)]),
    ("Write a Python function that checks whether a word is a palindrome.",
     "def is_palindrome(word: str) -> bool:\n    w = word.lower()\n    return w == w[::-1]",
     "A palindrome reads the same forwards and backwards, so we compare the word with its reverse.",
     lambda r: [r.choice(["level", "radar", "kayak", "python", "noon", "table"])]),
    ("Write a Python function that returns the first n Fibonacci numbers.",
     "def fibonacci(n: int) -> list[int]:\n    seq = []\n    a, b = 0, 1\n    for _ in range(n):\n"
     "        seq.append(a)\n        a, b = b, a + b\n    return seq",
     "Each new number is the sum of the previous two, starting from 0 and 1.", lambda r: [r.randint(5, 12)]),
    ("Write a Python function that removes duplicates from a list while keeping the original order.",
     "def remove_duplicates(items: list) -> list:\n    seen = set()\n    result = []\n    for x in items:\n"
     "        if x not in seen:\n            seen.add(x)\n            result.append(x)\n    return result",
     "The set remembers what has been seen, and the list keeps the first occurrence of each item in order.",
     lambda r: [[r.randint(1, 6) for _ in range(8)]]),
    ("Write a Python function that computes the greatest common divisor of two numbers.",
     "def gcd(a: int, b: int) -> int:\n    while b:\n        a, b = b, a % b\n    return a",
     "This is the Euclidean algorithm: replace (a, b) with (b, a mod b) until b becomes 0.",
     lambda r: [r.randint(10, 200), r.randint(10, 200)]),
    ("Write a Python function that converts Celsius to Fahrenheit.",
     "def celsius_to_fahrenheit(c: float) -> float:\n    return c * 9 / 5 + 32",
     "It applies the formula F = C × 9/5 + 32.", lambda r: [r.randrange(-40, 105, 5)]),
    ("Write a Python function that counts the words in a sentence.",
     "def count_words(sentence: str) -> int:\n    return len(sentence.split())",
     "split() with no arguments breaks the text on any whitespace, so its length is the number of words.",
     lambda r: [r.choice(SENTENCES[-6:])]),
]


def coding(rng: random.Random) -> Task:
    kind = rng.randrange(4)
    if kind == 0:
        n = rng.randint(15, 30)
        code = (f'for i in range(1, {n + 1}):\n    if i % 15 == 0:\n        print("FizzBuzz")\n    elif i % 3 == 0:\n'
                '        print("Fizz")\n    elif i % 5 == 0:\n        print("Buzz")\n    else:\n        print(i)')
        r = f"{_code(code)}\n\nMultiples of both 3 and 5 are checked first so they print FizzBuzz."
        if rng.random() < 0.5:
            r += " The output is: " + _run(code)[0].replace("\n", ", ") + "."
        return _task(f"Write a FizzBuzz program in Python for the numbers 1 to {n}.", r)
    if kind == 1:
        a, b, k, w = rng.randint(1, 10), rng.randint(11, 30), rng.randint(2, 5), rng.choice(LETTER_WORDS)
        code, why = rng.choice([
            (f"print(sum(range({a}, {b})))", f"range({a}, {b}) covers {a} to {b - 1}, and their sum is "
                                             f"{sum(range(a, b))}."),
            (f"x = {a}\ny = {b}\nprint(x * y - x)", f"x * y = {a * b}, minus x gives {a * b - a}."),
            (f'print(len("{w}"))', f'"{w}" has {len(w)} characters.'),
            (f"print([n * {k} for n in range({a % 6 + 2})])",
             f"Each number from 0 to {a % 6 + 1} is multiplied by {k}."),
            (f'print("{w}".upper())', "upper() returns the string in capital letters."),
            (f"print({b} // {k}, {b} % {k})",
             f"// is integer division ({b} // {k} = {b // k}) and % is the remainder ({b} % {k} = {b % k})."),
        ])
        instr = "What does this Python code print?"
        return _task(f"{instr}\n\n{_code(code)}", f"It prints:\n\n```\n{_run(code)[0]}\n```\n\n{why}", instr,
                     _code(code))
    q, code, why, draw = rng.choice(CODE_TASKS)
    r = f"{_code(code)}\n\n{why}"
    if rng.random() < 0.6:
        args = draw(rng)
        fn = _run(code)[1][re.match(r"def (\w+)", code)[1]]
        r += f" For example, {fn.__name__}({', '.join(map(_lit, args))}) returns {_lit(fn(*args))}."
    return _task(q, r)


CODE_FIXES = [  # fixed code, the fix, the bug it replaces, explanation
    ("def factorial(n):\n    result = 1\n    for i in range(1, n + 1):\n        result *= i\n    return result",
     "n + 1)", "n)",
     "range(1, n) stops before n, so n itself was never multiplied in. Using range(1, n + 1) includes it."),
    ("def total(numbers):\n    s = 0\n    for x in numbers:\n        s += x\n    return s", "+=", "=",
     "s = x overwrote the running total on every step; s += x adds each number to it."),
    ("def is_even(n):\n    return n % 2 == 0", "0", "1",
     "A number is even when the remainder after dividing by 2 is 0, not 1."),
    ('def greet(name):\n    return "Hello, " + name', ":", "", "A function definition line must end with a colon."),
    ('age = 30\nprint(f"You are {age} years old")', 'f"You are {age} years old"', '"You are " + age + " years old"',
     "You cannot add a string and an integer; an f-string (or str(age)) converts the number to text."),
    ("items = [4, 8, 15]\nlast = items[-1]", "-1", "len(items)",
     "Indexes go from 0 to len(items) - 1, so items[len(items)] raises IndexError. items[-1] is the last element."),
    ('x = 5\nif x == 5:\n    print("five")', "==", "=", "= assigns a value; comparisons need ==."),
]


def code_fix(rng: random.Random) -> Task:
    good, fix, bug, why = rng.choice(CODE_FIXES)
    bad = _code(good.replace(fix, bug, 1))
    instr = rng.choice(["Fix the bug in this Python code.",
                        "The following Python code does not work correctly. Find and fix the problem.",
                        "Debug this code."])
    return _task(f"{instr}\n\n{bad}", f"{_code(good)}\n\n{why}", instr, bad)


def summarise(rng: random.Random) -> Task:
    name, subj, _ = rng.choice(PEOPLE)
    town = rng.choice(["Millbrook", "Eastport", "Green Hollow", "Riverton", "Oakfield", "Stonebridge"])
    kind = rng.randrange(3)
    if kind == 0:
        shop, offer = rng.choice([("bakery", "fresh bread before 7 a.m."),
                                  ("bookshop", "weekly reading clubs for children"),
                                  ("café", "free refills for students"), ("bike repair shop", "same-day repairs")])
        year, months, hires = rng.randint(2005, 2022), rng.randint(3, 18), rng.randint(2, 9)
        text = (f"{name} opened a small {shop} in {town} in {year}. At first, only a handful of customers came in "
                f"each day, and {subj} worried that the business would fail. Then {subj} started offering {offer}. "
                f"Word spread quickly, and within {months} months the {shop} had become one of the busiest in town. "
                f"To keep up with demand, {name} hired {hires} new employees.")
        summ = (f"{name}'s {shop} in {town}, opened in {year}, struggled at first but became one of the busiest in "
                f"town within {months} months after it began offering {offer}, and {name} hired {hires} new staff.")
    elif kind == 1:
        vols, beds, kg = rng.randint(8, 60), rng.randint(6, 40), rng.randint(50, 900)
        text = (f"Last spring, residents of {town} turned an empty parking lot into a community garden. {vols} "
                f"volunteers built {beds} raised beds and planted tomatoes, beans and herbs. By the end of the summer "
                f"the garden had produced about {kg} kg of vegetables, most of which were donated to the local food "
                "bank. The town council has since agreed to support the project for another year.")
        summ = (f"{vols} volunteers in {town} turned an empty parking lot into a community garden with {beds} raised "
                f"beds; it produced about {kg} kg of vegetables, mostly donated to the food bank, and the council "
                "will support it for another year.")
    else:
        sport = rng.choice(["basketball", "football", "volleyball", "hockey"])
        lost, won = rng.randint(4, 9), rng.randint(6, 12)
        text = (f"The {town} High School {sport} team lost its first {lost} games of the season. Their coach, "
                f"{name}, changed the training schedule so that the players practised in the early morning and spent "
                f"more time on teamwork. The team then won {won} games in a row and reached the regional final for "
                "the first time in its history.")
        summ = (f"After losing its first {lost} games, the {town} High School {sport} team changed its training "
                f"under coach {name}, won {won} straight games and reached its first regional final.")
    instr = rng.choice(["Summarize the following paragraph in one sentence.",
                        "Write a one-sentence summary of this text."])
    return _task(f"{instr}\n\n{text}", summ, instr, text)


# ---------------------------------------- long answers (about 1,000-3,000 characters)
def long_several(rng: random.Random) -> Task:
    parts = [rng.choice([arithmetic, percent, word_problem, conversion])(rng) for _ in range(rng.randint(4, 7))]
    return _task("Solve each of the following problems and show your work.\n\n"
                 + "\n".join(f"{i + 1}. {p.question}" for i, p in enumerate(parts)),
                 "\n\n".join(f"Problem {i + 1}:\n{p.response}" for i, p in enumerate(parts))
                 + "\n\nAll problems are solved above.")


def long_bubble(rng: random.Random) -> Task:
    xs = rng.sample(range(1, 99), rng.randint(6, 8))
    lines, arr = [], xs[:]
    for p in range(len(arr) - 1):
        swapped = False
        lines.append(f"Pass {p + 1}:")
        for i in range(len(arr) - 1 - p):
            if arr[i] > arr[i + 1]:
                arr[i], arr[i + 1] = arr[i + 1], arr[i]
                swapped = True
                lines.append(f"  {arr[i + 1]} > {arr[i]}, swap -> {arr}")
            else:
                lines.append(f"  {arr[i]} <= {arr[i + 1]}, keep")
        if not swapped:
            lines.append("  No swaps in this pass, so the list is sorted.")
            break
    instr, ctx = "Sort this list with bubble sort and show every comparison.", ", ".join(map(str, xs))
    return _task(f"{instr}\n\n{ctx}", "Bubble sort repeatedly compares neighbouring numbers and swaps them when they "
                 "are in the wrong order. After each pass, the largest remaining number has moved to the end.\n\n"
                 + "\n".join(lines) + f"\n\nSorted list: {arr}", instr, ctx)


def long_countries(rng: random.Random) -> Task:
    chosen = rng.sample(COUNTRIES, rng.randint(8, 14))
    body = []
    for country, capital, continent, currency in chosen:
        cc = country[0].upper() + country[1:]
        body.append(f"- {cc}: {cc} is a country in {continent}. Its capital city is {capital}, and the currency used "
                    f"there is the {currency}.")
    summary = "; ".join(f"{v} in {k}" for k, v in sorted(Counter(c[2] for c in chosen).items()))
    return _task("Write a short fact sheet with the capital, continent and currency of each of these countries: "
                 f"{_join([c[0] for c in chosen])}.", "Here is a fact sheet for the countries you listed:\n\n"
                 + "\n".join(body) + f"\n\nIn total: {summary}.")


def long_phrasebook(rng: random.Random) -> Task:
    chosen = rng.sample(list(PHRASES.items()), rng.randint(6, 11))
    lines = [f'"{en}"\n  French: {fr}\n  Spanish: {es}\n  German: {de}' for en, (fr, es, de) in chosen]
    ctx = "\n".join(en for en, _ in chosen)
    instr = "Translate each of these English phrases into French, Spanish and German."
    return _task(f"{instr}\n\n{ctx}", "\n\n".join(lines) + "\n\nNote that Spanish questions and exclamations start "
                 "with an inverted mark (¿ or ¡), and French puts a space before ? and !.", instr, ctx)


def long_table(rng: random.Random) -> Task:
    n = rng.randint(40, 90)
    rows = [f"{k} km = {_num(k / 1.609344)} miles" for k in range(1, n + 1)]
    return _task(f"Make a conversion table from kilometres to miles for 1 to {n} km.", "1 mile = 1.609344 km, so "
                 "each distance in kilometres is divided by 1.609344 (values rounded to two decimals).\n\n"
                 + "\n".join(rows))


def long_program(rng: random.Random) -> Task:
    kind = rng.randrange(3)
    if kind == 0:
        text = " ".join(rng.sample(SENTENCES, 4))
        code = ('import re\nfrom collections import Counter\n\n\n'
                'def word_frequencies(text: str, top: int = 3) -> list[tuple[str, int]]:\n'
                '    """Return the `top` most common words, ignoring case and punctuation."""\n'
                '    words = re.findall(r"[a-z\']+", text.lower())\n    return Counter(words).most_common(top)\n\n\n'
                f'if __name__ == "__main__":\n    sample = {text!r}\n    for word, count in word_frequencies(sample):\n'
                '        print(f"{word}: {count}")')
        out = _run(code)[0]
        q = ("Write a Python program that prints the three most common words in a text, ignoring case and "
             "punctuation. Explain how it works and show its output.")
        expl = ("How it works:\n1. text.lower() makes the count case-insensitive.\n2. The regular expression [a-z']+ "
                "keeps only runs of letters (and apostrophes), so punctuation is dropped.\n3. Counter counts each "
                "word, and most_common(top) returns the most frequent ones, keeping first-seen order for ties.\n"
                "4. The main block runs the function on a sample text and prints one line per word.")
    elif kind == 1:
        tests = rng.sample(["(a[b]{c})", "([)]", "{[()()]}", "((x)", "[]{}()", "(()", "{a(b)c}[d]"], 4)
        code = ('class Stack:\n    def __init__(self):\n        self._items = []\n\n    def push(self, item):\n'
                '        self._items.append(item)\n\n    def pop(self):\n        if not self._items:\n'
                '            raise IndexError("pop from empty stack")\n        return self._items.pop()\n\n'
                '    def is_empty(self) -> bool:\n        return not self._items\n\n\n'
                'PAIRS = {")": "(", "]": "[", "}": "{"}\n\n\ndef balanced(text: str) -> bool:\n    stack = Stack()\n'
                '    for ch in text:\n        if ch in "([{":\n            stack.push(ch)\n        elif ch in PAIRS:\n'
                '            if stack.is_empty() or stack.pop() != PAIRS[ch]:\n                return False\n'
                f'    return stack.is_empty()\n\n\nfor t in {tests!r}:\n    print(t, balanced(t))')
        out = _run(code)[0]
        q = ("Implement a Stack class in Python and use it to check whether brackets in a string are balanced. "
             "Explain the code and show the output.")
        expl = ("How it works:\n1. Stack wraps a list: push appends to the end and pop removes from the end (last "
                "in, first out).\n2. balanced() pushes every opening bracket.\n3. For a closing bracket, the top of "
                "the stack must be the matching opening bracket; otherwise the string is unbalanced.\n4. At the end "
                "the stack must be empty, or some bracket was never closed.\nOther characters are ignored.")
    else:
        start = rng.randrange(50, 500, 10)
        ops = [(rng.choice(["deposit", "withdraw"]), rng.randrange(10, 300, 5)) for _ in range(5)]
        code = ('class BankAccount:\n    def __init__(self, balance: int = 0):\n        self.balance = balance\n\n'
                '    def deposit(self, amount: int) -> None:\n        self.balance += amount\n'
                '        print(f"Deposited {amount}. Balance: {self.balance}")\n\n'
                '    def withdraw(self, amount: int) -> None:\n        if amount > self.balance:\n'
                '            raise ValueError(f"insufficient funds to withdraw {amount}")\n'
                '        self.balance -= amount\n        print(f"Withdrew {amount}. Balance: {self.balance}")\n\n\n'
                f"account = BankAccount({start})\nfor op, amount in {ops!r}:\n    try:\n"
                '        getattr(account, op)(amount)\n    except ValueError as err:\n        print(f"Error: {err}")')
        out, env = _run(code)
        bal = env["account"].balance
        q = ("Write a simple BankAccount class in Python with deposit and withdraw methods that refuses to overdraw. "
             "Run a few operations and explain the result.")
        expl = (f"How it works:\n1. The account starts with a balance of {start}.\n2. deposit() adds the amount and "
                "prints the new balance.\n3. withdraw() raises ValueError if the amount is larger than the balance, "
                "so the balance can never go negative.\n4. The loop applies each operation in order and prints an "
                f"error instead of crashing when a withdrawal is refused. The final balance is {bal}.")
    return _task(q, f"{_code(code)}\n\nOutput:\n\n```\n{out}\n```\n\n{expl}")


# ---------------------------------------- very long answers (question + response over 6,000 characters)
def huge_times_tables(rng: random.Random) -> Task:
    hi = rng.randint(30, 33)
    return _task(f"Write out the multiplication tables from 2 to {hi}, each from 1 to 12.",
                 "\n\n".join(f"Table of {t}:\n" + "\n".join(f"{t} times {k} is {t * k}." for k in range(1, 13))
                              for t in range(2, hi + 1)))


def huge_squares(rng: random.Random) -> Task:
    hi = rng.randint(150, 170)
    return _task(f"List the square and the cube of every whole number from 1 to {hi}.",
                 "\n".join(f"The square of {k} is {k * k} and its cube is {k ** 3}." for k in range(1, hi + 1)))


def huge_celsius(rng: random.Random) -> Task:
    lo = rng.choice([-50, -40])
    return _task(f"Create a table converting every whole Celsius temperature from {lo} to 400 into Fahrenheit.",
                 "Each value uses F = C × 9/5 + 32.\n\n"
                 + "\n".join(f"{c} °C = {_num(c * 9 / 5 + 32, 1)} °F" for c in range(lo, 401)))


# ---------------------------------------- row assembly
def _families(*specs: tuple) -> list[tuple]:
    """(family, weight, "orca id prefixes", "platypus data_source values") -> the strings split into tuples."""
    return [(fam, weight, tuple(pre.split()), tuple(src.split())) for fam, weight, pre, src in specs]


FAMILIES = _families(
    (arithmetic, 10, "cot t0", "MATH/PRM-800K"), (percent, 5, "cot", "MATH/PRM-800K theoremqa"),
    (word_problem, 12, "cot", "MATH/PRM-800K"), (conversion, 8, "flan t0", "theoremqa scienceqa"),
    (number_props, 6, "cot flan", "MATH/PRM-800K theoremqa"), (logic, 5, "cot t0", "reclor"),
    (facts, 10, "flan t0", "scienceqa guanaco"), (translation, 10, "niv flan", "guanaco airoboros"),
    (definition, 6, "flan t0", "airoboros guanaco"), (sentiment, 6, "niv flan", "airoboros reclor"),
    (grammar, 6, "niv t0", "airoboros"), (text_transform, 5, "niv t0", "airoboros guanaco"),
    (sorting, 5, "niv t0", "airoboros leetcode_ne"), (coding, 10, "t0 flan", "leetcode_ne"),
    (code_fix, 4, "t0", "leetcode_ne"), (summarise, 4, "niv flan", "airoboros"),
)
# families whose tasks always carry separate material (a Platypus `input`)
WITH_CONTEXT = [f for f in FAMILIES
                if f[0] in (translation, sentiment, grammar, text_transform, sorting, code_fix, summarise)]
LONG_FAMILIES = _families((long_several, 3, "cot", "MATH/PRM-800K"), (long_bubble, 2, "t0", "leetcode_ne"),
                          (long_countries, 2, "flan", "guanaco"), (long_phrasebook, 2, "niv", "guanaco"),
                          (long_table, 1, "t0", "theoremqa"), (long_program, 3, "t0", "leetcode_ne"))
LONG_SHARE = 0.08  # of the draws without context


def _draw(rng: random.Random, seen: set[str], with_context: bool = False) -> tuple[Task, tuple, tuple]:
    """A task whose question was not produced before (so the only duplicates are the planted ones), with the orca id
    prefixes and platypus data sources of its family."""
    for _ in range(200):
        pool = WITH_CONTEXT if with_context else LONG_FAMILIES if rng.random() < LONG_SHARE else FAMILIES
        fam, _, pre, src = rng.choices(pool, weights=[f[1] for f in pool])[0]
        task = fam(rng)
        keys = ("Q" + task.question, "I" + task.instruction + "\n" + task.context)  # both ways a row can be shown
        if not any(k in seen for k in keys):
            seen.update(keys)
            return task, pre, src
    raise RuntimeError("could not draw a fresh task")


def _plant(rng: random.Random, rows: list[dict], extra: list[dict], duplicates: int, ok, copy) -> None:
    """Insert the `extra` rows at random places, then copies of `duplicates` rows that pass `ok`, each after its
    original."""
    for r in extra:
        rows.insert(rng.randint(0, len(rows)), r)
    for _ in range(duplicates):
        src = rng.choice([i for i, r in enumerate(rows[:-1]) if ok(r)])
        rows.insert(rng.randint(src + 1, len(rows)), copy(rows[src]))


def orca_rows(seed: int = 0) -> list[dict]:
    """300 rows in the Open-Orca layout: 290 drawn, 2 over 6,000 characters, 3 empty responses, 2 whitespace-only
    questions and 3 exact duplicates (under new ids). About 30% have an empty system prompt."""
    rng = random.Random(seed)
    used_ids: set[str] = set()
    seen: set[str] = set()

    def new_id(prefixes: tuple[str, ...]) -> str:
        while True:
            id_ = f"{rng.choice(prefixes)}.{rng.randint(1, 999_999)}"
            if id_ not in used_ids:
                used_ids.add(id_)
                return id_

    def row(question: str, response: str, prefixes: tuple[str, ...]) -> dict:
        return {"id": new_id(prefixes), "system_prompt": "" if rng.random() < 0.3 else rng.choice(SYSTEM_PROMPTS),
                "question": question, "response": response}

    def task_row(task: Task, pre: tuple[str, ...]) -> dict:
        q = task.question
        if task.context and rng.random() < 0.3:
            q, pre = f"Definition: {task.instruction}\n\nInput: {task.context}\n\nOutput:", ("niv",)
        elif not task.context and rng.random() < 0.12:
            q = rng.choice(["Answer the following question.\n\n", "Please answer this: ", "Q: "]) + q
        return row(q, task.response, pre)

    def drawn(**override: str) -> dict:
        task, pre, _ = _draw(rng, seen)
        return {**task_row(task, pre), **override}

    rows = [drawn() for _ in range(290)]
    extra = [task_row(huge_times_tables(rng), ("t0",)), task_row(huge_squares(rng), ("cot",)),
             *(drawn(response="") for _ in range(3)),
             row("   ", "It looks like your message came through empty. What would you like help with?", ("flan",)),
             row("\n\t \n", "I did not receive a question. Please type what you would like to know and I will do my "
                 "best to help.", ("t0",))]
    _plant(rng, rows, extra, 3, lambda r: bool(r["question"].strip() and r["response"]) and len(r["response"]) < 3000,
           lambda r: {**r, "id": new_id((r["id"].split(".")[0],))})
    return rows


def platypus_rows(seed: int = 0) -> list[dict]:
    """250 rows in the Open-Platypus layout: 245 drawn (49 of them with an `input`), 1 over 6,000 characters,
    2 empty outputs and 2 exact duplicates."""
    rng = random.Random(seed)
    seen: set[str] = set()
    flags = [i < 49 for i in range(245)]  # which drawn rows have an input (20%)
    rng.shuffle(flags)

    def row(task: Task, src: tuple[str, ...], with_input: bool) -> dict:
        return {"instruction": task.instruction if with_input else task.question,
                "input": task.context if with_input else "", "output": task.response, "data_source": rng.choice(src)}

    def drawn(with_input: bool, **override: str) -> dict:
        task, _, src = _draw(rng, seen, with_input)
        return {**row(task, src, with_input), **override}

    rows = [drawn(flag) for flag in flags]
    extra = [row(huge_celsius(rng), ("theoremqa",), False), drawn(False, output=""), drawn(True, output="")]
    _plant(rng, rows, extra, 2, lambda r: bool(r["output"]) and len(r["output"]) < 3000, dict)
    return rows


def write_samples(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for source, rows, columns in (("orca", orca_rows(seed), ORCA_COLUMNS),
                                  ("platypus", platypus_rows(seed), PLATYPUS_COLUMNS)):
        schema = pa.schema([(c, pa.string()) for c in columns])
        written[source] = out_dir / f"{source}_sample.parquet"
        # several row groups, so downstream readers stream group by group
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), written[source], compression="zstd",
                       row_group_size=100)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the sample raw parquet files.")
    parser.add_argument("--out-dir", type=Path, default=RAW, help="output folder (default: data/raw)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    for source, path in write_samples(args.out_dir, seed=args.seed).items():
        meta = pq.ParquetFile(path).metadata
        print(f"wrote {source}: {path} ({meta.num_rows} rows, {meta.num_row_groups} row groups)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
