"""Deterministic synthetic data with the shapes of the SGLang paper's datasets.

No dataset can be downloaded here, so every item (an MMLU-style question, a HellaSwag-style
context with endings, a word problem, a city page, a chat turn, a document collection) is made
from small word lists by a seeded `random.Random`: the same seed gives the same text, so every
system and every run sees identical prompts. The text is plain pseudo-English: what matters for
the benchmarks is its length and how prompts share prefixes, not what it says.

Knows nothing of lmnb, models or tokenizers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NOUNS = ("river", "engine", "garden", "market", "teacher", "signal", "village", "circuit",
         "forest", "doctor", "bridge", "planet", "harbor", "library", "farmer", "crystal",
         "window", "soldier", "island", "theory", "kitchen", "mountain", "painter", "battery",
         "desert", "student", "machine", "castle", "protein", "orchestra", "volcano", "merchant")
ADJECTIVES = ("quiet", "bright", "ancient", "narrow", "heavy", "gentle", "rapid", "hidden",
              "golden", "frozen", "modern", "silent", "broad", "distant", "fragile", "curious")
VERBS = ("carries", "measures", "protects", "follows", "builds", "changes", "explains",
         "reaches", "divides", "collects", "supports", "crosses", "repairs", "describes")
PLACES = ("near the coast", "in the valley", "after the storm", "before dawn", "across town",
          "under the old tower", "along the road", "inside the hall", "during winter")
SUBJECTS = ("astronomy", "biology", "economics", "geography", "history", "physics",
            "chemistry", "philosophy")
COUNTRIES = ("Norland", "Estavia", "Merovia", "Caldera", "Ostrava", "Velmar", "Tiberia")
DIMENSIONS = ("accuracy", "relevance", "clarity", "depth", "helpfulness", "safety",
              "creativity", "concision")
LETTERS = ("A", "B", "C", "D")


def sentence(rng: random.Random) -> str:
    return (f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the "
            f"{rng.choice(NOUNS)} {rng.choice(PLACES)}.")


def paragraph(rng: random.Random, num_sentences: int) -> str:
    return " ".join(sentence(rng) for _ in range(num_sentences))


def phrase(rng: random.Random, num_words: int = 3) -> str:
    words = [rng.choice(ADJECTIVES), *(rng.choice(NOUNS) for _ in range(num_words - 1))]
    return " ".join(words)


# ---- few-shot multiple choice ---------------------------------------------------------------


@dataclass(frozen=True)
class ChoiceItem:
    """A multiple-choice item: a stem, its options and the index of the right one."""

    stem: str
    options: tuple[str, ...]
    answer: int


def mmlu_item(rng: random.Random, subject: str) -> ChoiceItem:
    stem = (f"In {subject}, which of the following best describes how the "
            f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the "
            f"{rng.choice(NOUNS)}?")
    options = tuple(phrase(rng, 3) for _ in LETTERS)
    return ChoiceItem(stem, options, rng.randrange(len(LETTERS)))


def mmlu_text(item: ChoiceItem, with_answer: bool) -> str:
    lines = [item.stem] + [f"{letter}. {opt}" for letter, opt in zip(LETTERS, item.options)]
    answer = f" {LETTERS[item.answer]}\n\n" if with_answer else ""
    return "\n".join(lines) + "\nAnswer:" + answer


def hellaswag_item(rng: random.Random, ending_sentences: int = 1) -> ChoiceItem:
    context = f"{sentence(rng)} Then the {rng.choice(NOUNS)}"
    endings = tuple(" " + rng.choice(VERBS) + " " + paragraph(rng, ending_sentences)[4:]
                    for _ in LETTERS)
    return ChoiceItem(context, endings, rng.randrange(len(LETTERS)))


# ---- reasoning, agents and documents --------------------------------------------------------


def word_problem(rng: random.Random) -> tuple[str, int]:
    """A GSM8K-shaped problem and its answer."""
    a, b, c = rng.randint(3, 40), rng.randint(2, 9), rng.randint(1, 30)
    noun = rng.choice(NOUNS)
    text = (f"A {rng.choice(ADJECTIVES)} {noun} holds {a} boxes. Each box has {b} "
            f"{rng.choice(NOUNS)}s inside, and {c} of them are taken away "
            f"{rng.choice(PLACES)}. {paragraph(rng, 2)} How many are left in the {noun}?")
    return text, a * b - c


def city_page(rng: random.Random) -> dict[str, object]:
    """A Wikipedia-shaped paragraph about a made-up city, with the facts it states."""
    name = rng.choice(("Port ", "New ", "Saint ", "")) + rng.choice(NOUNS).capitalize() + "ton"
    facts = {"name": name, "country": rng.choice(COUNTRIES),
             "population": rng.randint(20_000, 4_000_000), "founded": rng.randint(900, 1950),
             "coastal": rng.random() < 0.5}
    coast = "on the coast" if facts["coastal"] else "far inland"
    facts["text"] = (f"{name} is a city in {facts['country']}, {coast}. It was founded in "
                     f"{facts['founded']} and has a population of {facts['population']:,}. "
                     f"{paragraph(rng, 3)}")
    return facts


def documents(rng: random.Random, num_docs: int, num_sentences: int) -> list[str]:
    """A small corpus: each document is about one noun and names it several times."""
    docs = []
    for i in range(num_docs):
        topic = NOUNS[i % len(NOUNS)]
        docs.append(f"About the {topic}: " + " ".join(
            f"The {topic} {rng.choice(VERBS)} the {rng.choice(NOUNS)} {rng.choice(PLACES)}."
            for _ in range(num_sentences)))
    return docs


def rag_question(rng: random.Random) -> str:
    a, b = rng.sample(NOUNS, 2)
    return f"What does the {a} do, and how is it related to the {b}?"


def chat_message(rng: random.Random, num_sentences: int) -> str:
    """A user message: a request and some pasted text."""
    asks = ("Summarize this in one sentence", "What is the main point here",
            "Rewrite this more simply", "Which detail matters most here")
    return f"{rng.choice(asks)}: {paragraph(rng, num_sentences)}"
