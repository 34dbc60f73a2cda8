"""Automatic suggestions: family guesses from top words, short labels from words and captions, stored
as "auto" beside (never over) what editors wrote."""
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from app.families import add_member, get_family
from app.labelling import save_label
from app.lookup import unit_by_key
from store.keys import UnitKey
from store.schema import DatasetExample, Image, Label, Run, UnitFamily, UnitText, Word, WordScore
from worker.analyses.suggest import SuggestOptions, affix_share, guess_families, run_suggest, short_label

WORDS = {
    0: ["kenya", "nairobi", "ethiopia", "uganda", "somalia"],
    1: ["red", "crimson", "scarlet", "tomato", "ruby"],
    2: ["happy", "joyful", "proud", "excited", "table"],
    3: ["three", "four", "2", "pair", "trio"],
    4: ["running", "swimming", "walking", "reading", "singing"],
    5: ["table", "chair", "window", "paper", "music"],
    7: ["yellow", "banana", "lemon", "gold", "mustard"],
}
CAPTIONS = {
    6: ["a ripe banana on a plate", "bananas in a bowl", "stock photo of a banana split"],
    7: ["yellow bananas on a table", "a lemon and a banana", "yellow flowers in a field"],
}


def uid(session, unit):
    return unit_by_key(session, UnitKey("toy", "layer4", unit)).id


def put_words(store, words=WORDS, captions=CAPTIONS):
    with store.sessions.begin() as s:
        ids = {}
        for unit, ws in words.items():
            for rank, w in enumerate(ws):
                if w not in ids:
                    ids[w] = s.scalar(select(Word.id).where(Word.text == w)) or _new_word(s, w)
                s.add(WordScore(unit_id=uid(s, unit), word_id=ids[w], score=1.0 - rank / 10, sign="top", rank=rank))
        for unit, caps in captions.items():
            for rank, caption in enumerate(caps):
                image = Image(sha256=f"{unit:02d}{rank:062d}", caption=caption, path=f"images/x/{unit}-{rank}.webp")
                s.add(image)
                s.flush()
                s.add(DatasetExample(unit_id=uid(s, unit), sign="top", rank=rank, activation=5.0 - rank,
                                     image_id=image.id))


def _new_word(s, text):
    w = Word(text=text)
    s.add(w)
    s.flush()
    return w.id


def auto_families(store):
    with store.sessions() as s:
        rows = s.execute(select(UnitFamily.unit_id, UnitFamily.source, UnitFamily.score, UnitFamily.family_id)
                         ).all()
        names = {f.id: f.name for f in [get_family(s, n) for n in ("Region", "Colour", "Emotion", "Counting",
                                                                    "Typographic")]}
        by_unit = {uid(s, u): u for u in range(10)}
    return {(by_unit[u], names.get(f, f), src): score for u, src, score, f in rows}


def labels(store, source):
    with store.sessions() as s:
        by_unit = {uid(s, u): u for u in range(10)}
        rows = s.scalars(select(Label).where(Label.source == source).order_by(Label.unit_id, Label.version))
        return [(by_unit[r.unit_id], r.version, r.text) for r in rows]


def test_family_guess_rules():
    lex = {"Colour": frozenset({"red", "crimson", "scarlet"}), "Counting": frozenset({"three", "pair"})}
    assert guess_families(["red", "crimson", "scarlet", "tomato", "ruby"], lex, 0.6) == {"Colour": 0.6}
    assert guess_families(["red", "crimson", "table", "tomato", "ruby"], lex, 0.6) == {}
    assert guess_families(["three", "4", "pair", "12", "dog"], lex, 0.6) == {"Counting": 0.8}  # digits count
    assert guess_families(["unhappy", "undo", "unfair", "cat", "dog"], lex, 0.6) == {"Typographic": 0.6}
    assert affix_share(["running", "singing", "walking", "reading", "table"]) == 0.8
    assert guess_families([], lex, 0.6) == {}


def test_short_label_prefers_terms_in_both_words_and_captions():
    label = short_label(["yellow", "banana", "lemon", "gold"], ["yellow bananas", "a banana", "banana bread"], 3)
    assert label.split(" / ")[0] == "banana" and "yellow" in label
    assert short_label([], ["a banana on a plate", "banana split", "stock photo"], 2) == "banana"
    assert short_label([], [], 3) is None


def test_suggest_stage_writes_auto_only(toy_model, client):
    put_words(toy_model)
    with toy_model.sessions() as s:
        save_label(s, uid(s, 0), "East Africa", "ann", None)
        add_member(s, uid(s, 0), get_family(s, "Region"), "ann")
    report = run_suggest(toy_model, "toy")
    assert report["units"] == 10 and report["no_data"] == 2  # units 8 and 9 have neither words nor captions
    fams = auto_families(toy_model)
    assert fams[(0, "Region", "auto")] == 1.0 and (0, "Region", "human") in fams
    assert fams[(1, "Colour", "auto")] == 0.6
    assert fams[(2, "Emotion", "auto")] == 0.8
    assert fams[(3, "Counting", "auto")] == 1.0
    assert fams[(4, "Typographic", "auto")] == 1.0
    assert not [k for k in fams if k[0] in (5, 6, 7)]
    assert labels(toy_model, "human") == [(0, 1, "East Africa")]  # the editor's label is untouched
    auto = {u: t for u, _, t in labels(toy_model, "auto")}
    assert auto[0].startswith("kenya") and auto[6] == "banana" and auto[7].startswith("yellow / banana")
    with toy_model.sessions() as s:
        doc = s.get(UnitText, uid(s, 1)).document
        assert "Colour" in doc and "crimson" in doc
        run = s.scalar(select(Run).where(Run.stage == "suggest"))
        assert run.status == "done" and run.report["families"]["Colour"] == 1
    card = client.get("/models/toy/layer4/0.json").json()["sections"]["labels"]
    assert card["human"]["text"] == "East Africa" and card["auto"]["text"].startswith("kenya")
    assert {(f["name"], f["source"]) for f in card["families"]} == {("Region", "human"), ("Region", "auto")}
    colour = client.get("/families/Colour.json").json()
    assert [m["key"] for m in colour["suggested"]] == ["toy/layer4/1"] and colour["members"] == []


def test_rerun_is_idempotent_and_follows_new_words(toy_model):
    put_words(toy_model)
    run_suggest(toy_model, "toy")
    before = labels(toy_model, "auto")
    again = run_suggest(toy_model, "toy")
    assert again["labels_changed"] == 0 and labels(toy_model, "auto") == before
    with toy_model.sessions.begin() as s:
        s.query(WordScore).filter(WordScore.unit_id == uid(s, 1)).delete()
    put_words(toy_model, {1: ["monday", "friday", "weekend", "morning", "table"]}, captions={})
    run_suggest(toy_model, "toy")
    fams = auto_families(toy_model)
    assert not [k for k in fams if k[0] == 1 and k[1] == "Colour"]
    assert [v for u, v, _ in labels(toy_model, "auto") if u == 1] == [1, 2]  # history kept


def test_cli(toy_model, settings, monkeypatch):
    from worker.cli.stages import worker_cli

    put_words(toy_model)
    monkeypatch.setenv("MICROSCOPE_DATABASE_URL", settings.db_url)
    monkeypatch.setenv("MICROSCOPE_CACHE_DIR", str(settings.cache_root))
    result = CliRunner().invoke(worker_cli, ["suggest", "toy", "--threshold", "0.8"])
    assert result.exit_code == 0, result.output
    assert "10 units" in result.output and "Region 1" in result.output and "Colour" not in result.output
    bad = CliRunner().invoke(worker_cli, ["suggest", "nope"])
    assert bad.exit_code == 2 and "no model 'nope'" in bad.output
    bad_layer = CliRunner().invoke(worker_cli, ["suggest", "toy", "--layer", "layer9"])
    assert bad_layer.exit_code == 2 and "layer4" in bad_layer.output


def test_cli_skips_until_a_setting_changes(toy_model, settings):
    """`worker suggest` runs its stage through the pipeline: up to date the second time, rerun with another
    --threshold and with --force; no model is loaded (the stored one, a toy that no open_clip model matches)."""
    from tests.test_pipeline import skips_then_reruns

    put_words(toy_model)
    first = skips_then_reruns(settings, ["suggest", "toy", "--threshold", "0.8"], "suggest", "toy",
                              lambda: ["suggest", "toy", "--threshold", "0.6"])
    assert "10 units" in first and "Colour" not in first
    with toy_model.sessions() as s:
        reports = s.scalars(select(Run.report).where(Run.stage == "suggest").order_by(Run.id)).all()
    assert ["Colour" in r["layers"]["layer4"]["families"] for r in reports] == [False, True, False]


def test_options_are_checked():
    with pytest.raises(ValueError):
        SuggestOptions(threshold=0).check()
