"""``lang``: a generated English-like corpus whose sentences depend on known factors.

Every sentence is drawn from four latent factors, kept with it like ``shapes`` keeps its
factors:

- ``topic`` (the label): sport, food, weather, music, travel -- each with its own people,
  verbs and things;
- ``sentiment``: positive or negative, carried by adverbs, adjectives and verdicts, and
  sometimes by a negated opposite ("was not terrible" is positive);
- ``tense``: past, present or future, carried by the verb's form ("played", "plays",
  "will play") and an optional time phrase;
- ``number``: a singular or plural subject, with agreement ("the coach plays", "the
  coaches play", "was" / "were").

Several sentence shapes, optional time phrases, people of no topic in half the
sentences and, in 30% of them, a second clause about another topic ("... while the
chefs cooked the soup badly") keep a bag of words from being trivially perfect: which topic
a sentence is about is that of its *first* clause, and word counts do not say which
clause came first.  The corpus is a pure function of ``(seed, split, size)`` and is
cached as JSON lines.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from selfsup.data import DATASETS, Dataset, check_path, default_cache_dir
from selfsup.data.text import RawText, TextOptions, text_dataset
from selfsup.files import atomic_write_text

VERSION = 4
DEFAULT_NUM_TRAIN, DEFAULT_NUM_TEST = 8000, 2000
FACTORS = ["topic", "sentiment", "tense", "number"]
TENSES = ["past", "present", "future"]

# topic -> people (singular, plural), verbs (base, third person, past, participle), things
TOPICS = {
    "sport": (
        [("player", "players"), ("coach", "coaches"), ("runner", "runners"), ("referee", "referees"),
         ("goalkeeper", "goalkeepers"), ("captain", "captains"), ("swimmer", "swimmers")],
        [("play", "plays", "played", "played"), ("win", "wins", "won", "won"), ("lose", "loses", "lost", "lost"),
         ("train for", "trains for", "trained for", "trained for"), ("referee", "referees", "refereed", "refereed"),
         ("score in", "scores in", "scored in", "scored in")],
        ["match", "final", "race", "tournament", "league game", "penalty shootout", "season opener", "relay"],
    ),
    "food": (
        [("chef", "chefs"), ("baker", "bakers"), ("waiter", "waiters"), ("cook", "cooks"), ("diner", "diners"),
         ("butcher", "butchers"), ("critic", "critics")],
        [("cook", "cooks", "cooked", "cooked"), ("bake", "bakes", "baked", "baked"),
         ("taste", "tastes", "tasted", "tasted"), ("serve", "serves", "served", "served"),
         ("eat", "eats", "ate", "eaten"), ("season", "seasons", "seasoned", "seasoned")],
        ["soup", "bread", "curry", "pasta", "salad", "roast chicken", "lemon pie", "noodles"],
    ),
    "weather": (
        [("forecaster", "forecasters"), ("farmer", "farmers"), ("sailor", "sailors"), ("pilot", "pilots"),
         ("hiker", "hikers"), ("gardener", "gardeners"), ("meteorologist", "meteorologists")],
        [("predict", "predicts", "predicted", "predicted"), ("forecast", "forecasts", "forecast", "forecast"),
         ("measure", "measures", "measured", "measured"), ("shelter from", "shelters from", "sheltered from",
                                                           "sheltered from"),
         ("endure", "endures", "endured", "endured"), ("track", "tracks", "tracked", "tracked")],
        ["storm", "rain", "heatwave", "fog", "snowfall", "thunder", "frost", "wind"],
    ),
    "music": (
        [("singer", "singers"), ("drummer", "drummers"), ("pianist", "pianists"), ("violinist", "violinists"),
         ("composer", "composers"), ("conductor", "conductors"), ("guitarist", "guitarists")],
        [("perform", "performs", "performed", "performed"), ("record", "records", "recorded", "recorded"),
         ("rehearse", "rehearses", "rehearsed", "rehearsed"), ("compose", "composes", "composed", "composed"),
         ("sing", "sings", "sang", "sung"), ("conduct", "conducts", "conducted", "conducted")],
        ["song", "concert", "symphony", "album", "ballad", "melody", "opera", "chorus"],
    ),
    "travel": (
        [("tourist", "tourists"), ("driver", "drivers"), ("traveller", "travellers"), ("guide", "guides"),
         ("passenger", "passengers"), ("backpacker", "backpackers"), ("cyclist", "cyclists")],
        [("visit", "visits", "visited", "visited"), ("book", "books", "booked", "booked"),
         ("explore", "explores", "explored", "explored"), ("reach", "reaches", "reached", "reached"),
         ("tour", "tours", "toured", "toured"), ("fly to", "flies to", "flew to", "flown to")],
        ["flight", "hotel", "museum", "train station", "old town", "island", "harbour", "mountain pass"],
    ),
}
# people with no topic of their own: the topic must come from the verb and the thing
ANYONE = [("friend", "friends"), ("neighbour", "neighbours"), ("student", "students"), ("visitor", "visitors"),
          ("family", "families"), ("colleague", "colleagues")]
GOOD = {"adv": ["wonderfully", "brilliantly", "beautifully", "happily", "superbly", "calmly"],
        "adj": ["great", "wonderful", "excellent", "lovely", "delightful", "superb"]}
BAD = {"adv": ["badly", "poorly", "terribly", "sadly", "clumsily", "miserably"],
       "adj": ["terrible", "awful", "dreadful", "disappointing", "miserable", "poor"]}
TIME = {"past": ["yesterday", "last week", "two days ago", "last summer"],
        "present": ["today", "every morning", "this week", "right now"],
        "future": ["tomorrow", "next week", "next month", "in the spring"]}
NEUTRAL_DET = ["the", "our", "a local", "the new", "every", "that"]
LINKS = ["while", "just as", "and meanwhile", "whereas"]  # join a second clause about another topic


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _be(tense: str, plural: bool) -> str:
    return {"past": "were" if plural else "was", "present": "are" if plural else "is", "future": "will be"}[tense]


def _verb(forms: tuple[str, str, str, str], tense: str, plural: bool) -> str:
    base, third, past, _ = forms
    return {"past": past, "present": base if plural else third, "future": f"will {base}"}[tense]


def clause(rng: np.random.Generator, topic: int, sentiment: int, tense: str, plural: int) -> str:
    """One clause about ``topic`` in one of four shapes, its sentiment carried by an
    adverb, an adjective or a (possibly negated) verdict."""
    people, verbs, things = TOPICS[list(TOPICS)[topic]]
    person = _pick(rng, people if rng.random() < 0.5 else ANYONE)[plural]
    det = _pick(rng, NEUTRAL_DET)
    if plural:
        det = {"every": "all the", "a local": "the local", "that": "those"}.get(det, det)
    subject = f"{det} {person}"
    verb = _verb(_pick(rng, verbs), tense, bool(plural))
    thing = _pick(rng, things)
    mood = GOOD if sentiment else BAD
    negated = rng.random() < 0.25  # say the opposite, negated: "was not terrible"
    verdict_adj = _pick(rng, (BAD if sentiment else GOOD)["adj"]) if negated else _pick(rng, mood["adj"])
    verdict = f"{_be(tense, False)} {'not ' if negated else ''}{verdict_adj}".replace("will be not", "will not be")
    shape = int(rng.integers(4))
    if shape == 0:
        return f"{subject} {verb} the {thing} {_pick(rng, mood['adv'])}"
    if shape == 1:
        return f"{subject} {verb} the {thing} and it {verdict}"
    if shape == 2:
        return f"the {thing} that {subject} {verb} {verdict}"
    return f"{subject} {_be(tense, bool(plural))} {_pick(rng, mood['adj'])} and {verb} the {thing}"


def sentence(rng: np.random.Generator) -> tuple[str, list[int]]:
    """One sentence and its factors ``[topic, sentiment, tense, number]`` (indices), all
    of its first clause; 30% of sentences add a second clause, drawn the same way, about
    another topic (with its own sentiment and number)."""
    n = len(TOPICS)
    topic, sentiment, tense, plural = (int(rng.integers(n)), int(rng.integers(2)), int(rng.integers(3)),
                                       int(rng.integers(2)))
    t = TENSES[tense]
    s = clause(rng, topic, sentiment, t, plural)
    if rng.random() < 0.3:
        other = (topic + 1 + int(rng.integers(n - 1))) % n
        s += f" {_pick(rng, LINKS)} {clause(rng, other, int(rng.integers(2)), t, int(rng.integers(2)))}"
    if rng.random() < 0.6:
        when = _pick(rng, TIME[t])
        s = f"{when} {s}" if rng.random() < 0.5 else f"{s} {when}"
    return s[0].upper() + s[1:] + ".", [topic, sentiment, tense, plural]


def generate(n: int, seed: int, split: str) -> tuple[list[str], np.ndarray]:
    """``n`` sentences of ``split`` and their factors (n, 4); deterministic."""
    rng = np.random.default_rng([seed, {"train": 0, "test": 1}[split]])
    rows = [sentence(rng) for _ in range(n)]
    return [r[0] for r in rows], np.array([r[1] for r in rows], dtype=np.int64).reshape(n, len(FACTORS))


def _cached(cache_dir: Path, n: int, seed: int, split: str) -> tuple[list[str], np.ndarray]:
    file = cache_dir / f"lang-v{VERSION}-{split}-seed{seed}-n{n}.jsonl"
    if file.is_file():
        try:
            rows = [json.loads(line) for line in file.read_text().splitlines()]
            if len(rows) == n:
                return [r["text"] for r in rows], np.array([r["factors"] for r in rows], dtype=np.int64).reshape(n, -1)
        except (OSError, ValueError, KeyError) as err:
            warnings.warn(f"cache file {file} is unreadable ({err}); regenerating it", stacklevel=2)
    texts, factors = generate(n, seed, split)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(file, "".join(json.dumps({"text": t, "factors": f.tolist()}) + "\n"
                                        for t, f in zip(texts, factors)))
    except OSError as err:
        warnings.warn(f"could not write cache file {file} ({err}); not caching", stacklevel=2)
    return texts, factors


@DATASETS.register("lang", modality="text", help="generated sentences: 5 topics (labels) x sentiment x tense x number (built in)")
def build(path: str | None = None, *, cache_dir: str | Path | None = None, seed: int = 0,
          num_train: int | None = None, num_test: int | None = None, text: TextOptions | None = None,
          **_ignored) -> Dataset:
    check_path("lang", path, required=False)
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    splits = {}
    for split, n in (("train", num_train or DEFAULT_NUM_TRAIN), ("test", num_test or DEFAULT_NUM_TEST)):
        texts, factors = _cached(folder, n, seed, split)
        splits[split] = RawText(texts, factors[:, 0].copy(), np.array([f"lang/{split}/{i:06d}" for i in range(n)],
                                                                     dtype=object),
                                list(TOPICS), factors.astype(np.float32), list(FACTORS))
    return text_dataset("lang", splits["train"], splits["test"], text, cache_dir=folder)
