"""Generate the bundled starter suite: AdaptArena-like episodes for ten users.

    python -m adaptkit.arena.generate_suite            # rewrites data/starter_suite.jsonl
    python -m adaptkit.arena.generate_suite --seed 7 --out other.jsonl --users 20

Each user gets a seeded random subset of habits across four domains — maps (travel
mode, home), shopping (favourite brand, sort order), forum (which one) and style
(greeting language, sign-off, answer length) — with values drawn from pools, so users
differ in *which* habits they have as well as their values. History and deployment
requests come from disjoint template pools (the deployment wording never appears in
the history), deployment records carry an ``oracle_intent`` that states the habit,
and string checks with ``|OR|`` alternatives plus ``must_exclude`` for other users'
values of the same habit. Probes are user-free general questions.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

DEFAULT_OUT = Path(__file__).parent / "data" / "starter_suite.jsonl"
DEFAULT_SEED = 5


@dataclass(frozen=True)
class Value:
    """One value of a habit: how answers say it, how the oracle states it, how it is checked."""

    name: str
    says: str  # phrase used in answers ("by bike")
    states: str  # the oracle's explicit statement ("I always travel by bike.")
    check: str  # must_include with |OR| alternatives
    exclude: str | None  # what marks this value in another user's answer (None: too generic)


TRAVEL = [
    Value(
        "bicycle", "by bike", "I always travel by bicycle.", "bicycle |OR| bike |OR| cycl", "bike"
    ),
    Value("car", "by car", "I always drive my car.", "car |OR| driv", None),
    Value("bus", "by bus", "I always take the bus.", "bus", None),
    Value("walk", "on foot", "I always walk everywhere.", "walk |OR| on foot |OR| foot", "on foot"),
    Value("train", "by train", "I always take the train.", "train |OR| rail", "train"),
    Value("scooter", "by scooter", "I always ride my scooter.", "scooter", "scooter"),
]


def _named(names: str, states: str, says: str = "{}") -> list[Value]:
    """Values that are a proper name (a town, a brand; ``names`` space-separated): the
    name itself checks a user's answer and marks another user's."""
    return [Value(n, says.format(n), states.format(n), n, n) for n in names.split()]


HOMES = _named(
    "Lexington Quincy Brookline Somerville Medford Newton Dorchester Arlington Salem Waltham",
    "I live in {}.",
)
BRANDS = _named(
    "Nike Adidas Sony Lego Patagonia Bosch Samsung Canon Asics Logitech", "I only buy {} products."
)
SORTS = [
    Value(
        "cheapest",
        "sorted cheapest first",
        "I always want results sorted by lowest price.",
        "cheap |OR| lowest price |OR| low to high",
        "cheapest",
    ),
    Value(
        "rating",
        "sorted by best rating",
        "I always want results sorted by best rating.",
        "rating |OR| rated |OR| stars",
        "best rating",
    ),
    Value(
        "newest",
        "sorted newest first",
        "I always want results sorted newest first.",
        "newest |OR| latest |OR| most recent",
        "newest",
    ),
]
FORUMS = _named(
    "sourdough chess gardening photography marathons boardgames astronomy woodworking "
    "aquariums birdwatching",
    "The forum I always read is r/{}.",
    says="r/{}",
)
GREETINGS = [
    Value("Spanish", "Hola", "I always greet people in Spanish.", "Hola", "Hola"),
    Value("French", "Bonjour", "I always greet people in French.", "Bonjour", "Bonjour"),
    Value("German", "Hallo", "I always greet people in German.", "Hallo", "Hallo"),
    Value("Italian", "Ciao", "I always greet people in Italian.", "Ciao", "Ciao"),
    Value("Portuguese", "Olá", "I always greet people in Portuguese.", "Olá |OR| Ola", "Olá"),
]
SIGNOFFS = [
    Value(s, s, f"I always sign my messages with '{s}'.", s.split(",")[0], s.split(",")[0])
    for s in (
        "Cheers, Sam",
        "Warm regards, Kim",
        "Peace, Jo",
        "Best wishes, Ana",
        "Take care, Lee",
        "Yours truly, Max",
    )
]
LENGTHS = ["short", "long"]  # shapes history answers only: string rules cannot score length
HABITS = {
    "travel": TRAVEL,
    "home": HOMES,
    "brand": BRANDS,
    "sort": SORTS,
    "forum": FORUMS,
    "greeting": GREETINGS,
    "signoff": SIGNOFFS,
}
DOMAIN_OF = {
    "travel": "maps",
    "home": "maps",
    "brand": "shopping",
    "sort": "shopping",
    "forum": "forum",
    "greeting": "style",
    "signoff": "style",
}

# History wording (what the user asked before) ...
HISTORY_PLACES = [
    "library",
    "dentist",
    "post office",
    "bakery",
    "swimming pool",
    "town hall",
    "bookshop",
    "pharmacy",
]
HISTORY_MAPS = [
    "How long to the {place} from here?",
    "Is the {place} far from me?",
    "Plan my trip to the {place} this afternoon.",
    "Directions to the {place}, please.",
]
HISTORY_PRODUCTS = [
    "desk lamps",
    "water bottles",
    "backpacks",
    "phone chargers",
    "yoga mats",
    "notebooks",
]
HISTORY_SHOPPING = [
    "Show me some {product}.",
    "Search the store for {product}.",
    "I want to buy {product}, what is there?",
]
HISTORY_FORUM = [
    "What's new on the forum today?",
    "Open my forum and show me the top post.",
    "Anything popular on the forum this morning?",
]
HISTORY_TOPICS = [
    ("my landlord", "the broken heater"),
    ("my neighbour", "the noisy party"),
    ("my boss", "taking Friday off"),
    ("my sister", "her birthday dinner"),
]
HISTORY_STYLE = [
    "Write a message to {who} about {what}.",
    "Draft a quick note to {who} about {what}.",
]
# ... and deployment wording, never seen in the history.
DEPLOY_PLACES = ["stadium", "airport", "train station", "museum", "harbour", "zoo", "hospital"]
DEPLOY_STYLE = [  # both style habits show in the same kind of message
    "Compose a text to {who} about {what}.",
    "Help me write to {who} about {what}.",
]
DEPLOY = {
    "travel": [
        "I have to be at the {place} by nine tomorrow. When should I set off?",
        "What's the quickest way for me to reach the {place}?",
        "Estimate my journey to the {place}.",
    ],
    "home": [
        "Which neighbourhood should the taxi drop me at tonight?",
        "Recommend a gym close to where I live.",
        "Where is the nearest farmers market to my place?",
    ],
    "brand": [
        "I need new {gear}. What would you pick for me?",
        "Suggest some {gear} I might like.",
    ],
    "sort": [
        "List a few {gear} for me.",
        "Find me some {gear} to compare.",
    ],
    "forum": [
        "Any interesting discussions I should read tonight?",
        "Where should I post my beginner question?",
        "Catch me up on my online community.",
    ],
    "greeting": DEPLOY_STYLE,
    "signoff": DEPLOY_STYLE,
}
DEPLOY_GEAR = ["headphones", "running shoes", "winter jackets", "umbrellas", "keyboards"]
DEPLOY_TOPICS = [
    ("my coworker", "swapping shifts"),
    ("my friend", "the hiking trip"),
    ("my teacher", "a missed class"),
    ("my roommate", "the electricity bill"),
]

# General questions no user's habit touches. SmolLM2-135M-Instruct answers each one
# correctly through a clear margin (top two logits >= 0.5 nats apart along its answer):
# a probe the base gets right by a near-tie ("What is the capital of France?": "The"
# vs "L'" at 0.08) flips under any change and would measure noise, not forgetting.
PROBES = [
    ("How many days are there in a week?", "7 |OR| seven"),
    ("What is the opposite of hot?", "cold"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of the United Kingdom?", "London"),
    ("What is the chemical symbol for water?", "H2O"),
    ("What is the boiling point of water in Celsius?", "100"),
    ("What is the capital of Russia?", "Moscow"),
    ("What is the capital of China?", "Beijing"),
    ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of Greece?", "Athens"),
    ("What is the capital of Australia?", "Canberra"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("What is the opposite of up?", "down"),
    ("What is the chemical symbol for gold?", "Au"),
    ("What is the tallest mountain in the world?", "Everest"),
    ("In which country is the Eiffel Tower?", "France"),
    ("What is the capital of Ireland?", "Dublin"),
    ("What is the capital of South Korea?", "Seoul"),
    ("What is the opposite of happy?", "sad"),
    ("What is the capital of Sweden?", "Stockholm"),
    ("What is the capital of the Netherlands?", "Amsterdam"),
    ("What is the opposite of day?", "night"),
    ("What is the capital of Thailand?", "Bangkok"),
]


def _maps_answer(habits: dict[str, Value], place: str, minutes: int, length: str) -> str:
    how = f"Go {habits['travel'].says}" if "travel" in habits else "Head out"
    where = f" from your home in {habits['home'].says}" if "home" in habits else ""
    text = f"{how}{where}: the {place} is about {minutes} minutes away."
    if length == "long":
        text += " Leave a little early, the roads are busy around noon."
    return text


def _shopping_answer(habits: dict[str, Value], product: str, length: str) -> str:
    brand = f"{habits['brand'].says} " if "brand" in habits else ""
    order = f", {habits['sort'].says}" if "sort" in habits else ""
    text = f"Here are {brand}{product}{order}: the first one costs $24."
    if length == "long":
        text += " All of them ship within two days."
    return text


def _forum_answer(habits: dict[str, Value], length: str) -> str:
    text = f"On {habits['forum'].says} the top post today is a beginner guide."
    if length == "long":
        text += " It has over 300 comments."
    return text


def _style_answer(habits: dict[str, Value], who: str, what: str, length: str) -> str:
    hello = habits["greeting"].says if "greeting" in habits else "Hi"
    body = f"{hello}! Quick note about {what}."
    if length == "long":
        body += " Let me know what works for you."
    if "signoff" in habits:
        body += f" {habits['signoff'].says}"
    return body


def _user_habits(rng: random.Random, used: dict[str, list[str]]) -> dict[str, Value]:
    """4-5 habits over at least 3 domains, preferring values other users do not have yet."""
    while True:
        kinds = rng.sample(sorted(HABITS), rng.choice([4, 5]))
        if len({DOMAIN_OF[k] for k in kinds}) >= 3:
            break
    habits = {}
    for kind in kinds:
        pool = HABITS[kind]
        fresh = [v for v in pool if v.name not in used.setdefault(kind, [])] or pool
        habits[kind] = rng.choice(fresh)
        used[kind].append(habits[kind].name)
    return habits


def _history(rng: random.Random, habits: dict[str, Value], length: str) -> list[tuple[str, str]]:
    """(request, response) pairs: every habit's domain at least twice, 8-10 in all."""
    domains = sorted({DOMAIN_OF[k] for k in habits})
    plan = [d for d in domains for _ in range(2)]
    while len(plan) < rng.choice([8, 9, 10]):
        plan.append(rng.choice(domains))
    rng.shuffle(plan)
    pairs = []
    for domain in plan:
        if domain == "maps":
            place = rng.choice(HISTORY_PLACES)
            pairs.append(
                (
                    rng.choice(HISTORY_MAPS).format(place=place),
                    _maps_answer(habits, place, rng.randint(6, 40), length),
                )
            )
        elif domain == "shopping":
            product = rng.choice(HISTORY_PRODUCTS)
            pairs.append(
                (
                    rng.choice(HISTORY_SHOPPING).format(product=product),
                    _shopping_answer(habits, product, length),
                )
            )
        elif domain == "forum":
            pairs.append((rng.choice(HISTORY_FORUM), _forum_answer(habits, length)))
        else:
            who, what = rng.choice(HISTORY_TOPICS)
            pairs.append(
                (
                    rng.choice(HISTORY_STYLE).format(who=who, what=what),
                    _style_answer(habits, who, what, length),
                )
            )
    return pairs


def _deployment(
    rng: random.Random, habits: dict[str, Value], everyone: dict[str, set[str]]
) -> list[dict]:
    """5 requests: each habit once, then random habits again, in fresh wordings."""
    kinds = sorted(habits)
    rng.shuffle(kinds)
    while len(kinds) < 5:
        kinds.append(rng.choice(sorted(habits)))
    tasks = []
    for kind in kinds:
        who, what = rng.choice(DEPLOY_TOPICS)
        request = rng.choice(DEPLOY[kind]).format(
            place=rng.choice(DEPLOY_PLACES), gear=rng.choice(DEPLOY_GEAR), who=who, what=what
        )
        value = habits[kind]
        # Another user's value is excluded from the answer, unless the request itself
        # says it ("...the train station" for a bus user): echoing the request is no leak.
        others = sorted(
            v for v in everyone[kind] - {value.exclude} - {None} if v.lower() not in request.lower()
        )
        refs: dict = {"must_include": [value.check]}
        if others:
            refs["must_exclude"] = others
        tasks.append(
            {
                "intent": request,
                "oracle_intent": f"{value.states} {request}",
                "habit": kind,
                "eval": {"eval_types": ["string_match"], "reference_answers": refs},
            }
        )
    return tasks


def generate(seed: int = DEFAULT_SEED, users: int = 10) -> list[dict]:
    rng = random.Random(seed)
    used: dict[str, list[str]] = {}
    names = [f"User{i:02d}" for i in range(1, users + 1)]
    profile = {name: (_user_habits(rng, used), rng.choice(LENGTHS)) for name in names}
    everyone: dict[str, set[str]] = {k: set() for k in HABITS}
    for habits, _ in profile.values():
        for kind, value in habits.items():
            everyone[kind].add(value.exclude)
    records: list[dict] = []
    task_id = 1
    for name in names:
        habits, length = profile[name]
        for order, (request, response) in enumerate(_history(rng, habits, length)):
            records.append(
                {
                    "task_id": task_id,
                    "user_id": name,
                    "split": "history",
                    "order": order,
                    "intent": request,
                    "response": response,
                }
            )
            task_id += 1
        for offset, task in enumerate(_deployment(rng, habits, everyone)):
            records.append(
                {
                    "task_id": task_id,
                    "user_id": name,
                    "split": "deployment",
                    "order": 100 + offset,
                    **task,
                    "intent": f"{name}: {task['intent']}",
                }
            )
            task_id += 1
    for question, answer in PROBES:
        records.append(
            {
                "task_id": task_id,
                "split": "probe",
                "intent": question,
                "eval": {
                    "eval_types": ["string_match"],
                    "reference_answers": {"must_include": [answer]},
                },
            }
        )
        task_id += 1
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    records = generate(args.seed, args.users)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} records to {args.out}")


if __name__ == "__main__":
    main()
