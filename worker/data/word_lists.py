"""The word lists the rendered-words stage can draw: a choice, recorded in the stage's settings.

- ``clean`` (the default): the common words below, minus every word on the profanity and slur list that
  `better-profanity` ships (exact, whole-word matches; that list is maintained upstream, not here). The list
  is broad: besides obscenities and slurs it holds words such as "kill", "drunk" or "god", which the
  default therefore leaves out too.
- ``common``: the paper's list, wordfreq's 10,000 most common English words (tokens with digits or without a
  letter dropped, see `worker.compute.text_scores.common_words`).
"""
from functools import cache
from pathlib import Path

DEFAULT = "clean"


@cache
def blocked_words() -> frozenset[str]:
    """better-profanity's shipped word list, lower-cased, one entry (a word or a phrase) per line."""
    import better_profanity

    text = (Path(better_profanity.__file__).parent / "profanity_wordlist.txt").read_text(encoding="utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip())


def clean_words(n: int) -> list[str]:
    from worker.compute.text_scores import common_words

    blocked = blocked_words()
    return [w for w in common_words(n) if w.lower() not in blocked]


def paper_words(n: int) -> list[str]:
    from worker.compute.text_scores import common_words

    return common_words(n)


WORD_LISTS = {"clean": clean_words, "common": paper_words}


def word_list(name: str = DEFAULT, n: int = 10_000) -> list[str]:
    """The list `name` drawn from the n most common words; a name not in WORD_LISTS is a ValueError."""
    if name not in WORD_LISTS:
        raise ValueError(f"unknown word list {name!r}; lists: {', '.join(WORD_LISTS)}")
    return WORD_LISTS[name](n)
