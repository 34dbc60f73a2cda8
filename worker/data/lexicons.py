"""Word lists that tie a neuron's top words to a family (the paper's figure 1 families).

Region and Emotion come from the project's own sources (worker.data.places.geographic_words: countries,
cities, states, continents, demonyms, currencies; the feeling wheel in worker/data/wordlists/feelings.txt);
the short lists below are typed for this project. All lowercase.
"""
from functools import lru_cache

COLOUR = frozenset("""
red orange yellow green blue purple violet pink brown black white gray grey cyan magenta turquoise teal navy
maroon beige crimson scarlet indigo lavender lilac gold golden silver bronze olive colour color colours colors
colourful colorful rainbow
""".split())

COUNTING = frozenset("""
one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen
eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million billion
pair pairs couple couples twin twins trio trios triple triplets double quad quartet dozen dozens many several
few multiple single first second third fourth fifth number numbers count counting
""".split())

TIME = frozenset("""
monday tuesday wednesday thursday friday saturday sunday january february april june july august september
october november december spring summer autumn winter morning afternoon evening night midnight noon today
tomorrow yesterday week weekend weekly month monthly year years yearly annual decade decades century
centuries ancient vintage retro historical history historic era season seasonal calendar clock hour hours
minute minutes daily sunrise sunset dawn dusk
""".split())

HOLIDAY = frozenset("""
christmas xmas halloween easter thanksgiving valentine valentines hanukkah diwali ramadan eid birthday
birthdays holiday holidays santa reindeer pumpkin pumpkins carnival mardi gras patrick new-year festive
""".split())

RELIGION = frozenset("""
god gods jesus christ christian christians christianity church churches bible catholic pope islam islamic
muslim muslims mosque allah quran koran buddha buddhist buddhism hindu hinduism temple jewish judaism
synagogue torah prayer prayers pray praying faith holy saint saints angel angels religion religious spiritual
sacred worship monk nun priest
""".split())


# caption words that say a picture is a picture, not what it shows: left out of labels and caption concepts
STOCK_WORDS = frozenset({"photo", "photos", "image", "images", "picture", "pictures", "stock", "view", "close",
                         "background", "shot", "closeup", "free", "vector", "illustration", "isolated"})


@lru_cache(maxsize=1)
def family_lexicons() -> dict[str, frozenset[str]]:
    """Family name (as seeded in the store) -> the words that point to it."""
    from worker.data.feelings import read_feelings
    from worker.data.places import geographic_words

    feelings = frozenset(f.word.lower() for f in read_feelings())
    geographic, _sources = geographic_words()
    return {"Region": geographic, "Emotion": feelings, "Colour": COLOUR, "Counting": COUNTING, "Time": TIME,
            "Holiday": HOLIDAY, "Religion": RELIGION}
