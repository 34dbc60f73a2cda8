"""The feeling wheel (worker/data/wordlists/feelings.txt): the words emotion composition codes and the Emotion
family's lexicon."""
from dataclasses import dataclass
from pathlib import Path

FEELINGS = Path(__file__).parent / "wordlists" / "feelings.txt"


@dataclass(frozen=True)
class Feeling:
    word: str
    group: str  # the core feeling it sits under on the wheel


def read_feelings(path: Path = FEELINGS) -> list[Feeling]:
    """The feeling wheel: `[core]` headers, one word per line, `#` comments."""
    out, group, seen = [], None, set()
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1].strip()
            continue
        if group is None:
            raise ValueError(f"{path}:{n}: word {line!r} before the first [core] header")
        if line.lower() in seen:
            raise ValueError(f"{path}:{n}: {line!r} is listed twice")
        seen.add(line.lower())
        out.append(Feeling(line, group))
    return out
