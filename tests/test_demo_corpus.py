"""The demo's probe corpus (a small plan, without the npm packages) and the evaluation's criteria."""
import hashlib
import json

import numpy as np
import pytest

from worker.compute.corpus import iter_entries
from worker.demo import sources
from worker.demo.corpus import Plan, build_corpus, is_built, read_manifest
from worker.demo.evaluate import NON_TEXT_EXCLUDED, concepts, multimodal_units
from worker.demo.items import load_pools, pick_font, training_items, word_item

SMALL = Plan(train_words=12, heldout_words=6, emoji=0, photo_crops=2, coloured=5, counts=4, typographic=3, scenes=3)


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    return load_pools(tmp_path_factory.mktemp("pools"), 32, n_words=40, npm=False, limit=3)


@pytest.fixture(scope="module")
def corpus(pools, tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("data"), 32, SMALL, npm=False, pools=pools)


def digest(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


def test_manifest_records_source_licence_and_split_of_every_image(corpus):
    rows = read_manifest(corpus)
    assert len(rows) == len(digest(corpus)) > 30
    for row in rows:
        assert row["caption"] and row["source"] and row["licence"] and row["split"] in ("train", "heldout")
        assert (corpus / row["path"]).is_file() and row["path"].split("/")[0] == row["facet"]
    facets = {r["facet"] for r in rows}
    assert {"text", "clipart", "photos", "colours", "counts", "typographic", "scenes"} <= facets
    assert any(r["source"].startswith("deb:tuxpaint-stamps-default") for r in rows)
    assert all(r["source"].startswith("pypi:") for r in rows if r["facet"] == "photos")


def test_heldout_words_use_the_font_training_never_draws(corpus, pools):
    rows = read_manifest(corpus)
    held = [r for r in rows if r["split"] == "heldout"]
    assert len(held) == SMALL.heldout_words and all(r["facet"] == "text" for r in held)
    assert all(f"font {sources.HELDOUT_FONT}:" in r["source"] for r in held)
    assert not any(f"font {sources.HELDOUT_FONT}:" in r["source"] for r in rows if r["split"] == "train")
    held_path = str(sources.FONTS[sources.HELDOUT_FONT].path)
    rng = np.random.default_rng(0)
    assert sources.HELDOUT_FONT not in sources.TRAIN_FONTS
    assert all(pick_font(word_item("cat"), rng) != held_path for _ in range(500))
    assert all(not it.font for it in training_items(pools)["word"])


def test_corpus_is_deterministic_and_reused(corpus, pools, tmp_path):
    again = build_corpus(tmp_path, 32, SMALL, npm=False, pools=pools)
    assert digest(again) == digest(corpus)
    assert (again / "manifest.jsonl").read_bytes() == (corpus / "manifest.jsonl").read_bytes()
    stamp = (again / "build.json").stat().st_mtime_ns
    assert build_corpus(tmp_path, 32, SMALL, npm=False, pools=pools) == again
    assert (again / "build.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert not is_built(again, 64)  # another image size needs its own corpus


def test_manifest_is_an_ordinary_worker_corpus(corpus):
    entries = list(iter_entries(corpus / "manifest.jsonl"))
    rows = read_manifest(corpus)
    assert [e.caption for e in entries] == [r["caption"] for r in rows]
    assert all(not e.error for e in entries)


def test_build_report_counts_by_facet_and_source(corpus):
    info = json.loads((corpus / "build.json").read_text())
    assert info["images"] == sum(info["by_facet"].values()) == sum(info["by_source"].values())
    assert info["by_split"]["heldout"] == SMALL.heldout_words


def test_words_are_common_and_alphabetic():
    words = sources.words(200)
    assert len(words) == 200 and words[0] == "the" and all(w.isalpha() for w in words)


def test_concepts_fold_plurals_and_drop_stop_and_template_words():
    assert concepts("the flag of France") == {"france"}
    assert concepts("three red apples") == {"three", "red", "apple"}
    assert concepts('grinning face labeled "cities"') == {"grinning", "face", "city"}
    assert concepts("a photo of a cat") == {"cat"}


def test_multimodal_criterion_counts_shared_concepts_among_top_images():
    words = ["france", "red", "dog", "the", "blue", "paris", "of", "and", "to", "in"]
    rows = [{"path": f"p{i}", "caption": c} for i, c in enumerate(
        ["the flag of France", "the flag of France", "the flag of France", "a red circle", "a dog", "a cat"])]
    acts = np.array([[5, 0], [4, 0], [3, 0], [2, 9], [1, 8], [0, 7]], dtype=np.float32)
    scores = np.array([[9, 0], [0, 9], [0, 8], [8, 6], [0, 7], [7, 0], [0, 5], [1, 0], [1, 0], [0, 0]],
                      dtype=np.float32)  # unit 0 reads France, unit 1 red, dog, blue
    units = multimodal_units(acts, rows, scores, words)
    by_unit = {u.unit: u for u in units}
    assert by_unit[0].words[:3] == ["france", "the", "paris"]
    assert by_unit[0].shared == 3  # the three flags of France
    assert by_unit[1].shared == 2  # "a red circle" and "a dog", but not "a cat"
    assert units[0].unit == 0 and units[0].images[0]["shared"] == ["france"]


def test_logos_and_text_images_are_not_counted_as_pictures():
    assert {"word", "typographic", "logo"} <= set(NON_TEXT_EXCLUDED)


def test_labelled_things_carry_their_own_name_and_the_plain_caption(pools):
    groups = training_items(pools)
    labelled, plain = groups["labelled"], {it.asset: it for it in groups["object"] + groups["flag"]}
    assert labelled and all(it.kind == "labelled" and it.word for it in labelled)
    for it in labelled:
        assert it.caption == plain[it.asset].caption  # the word adds nothing the picture does not say
        assert it.word == pools.assets[it.asset].name
    assert "labelled" in NON_TEXT_EXCLUDED


def test_named_words_follow_how_often_picture_captions_use_them(pools):
    from dataclasses import replace

    from worker.demo.items import named_words

    base = word_item("x")
    pictures = [replace(base, kind="colour", caption=c) for c in
                ["the color red", "a red circle", "a red dog", "the flag of Red", "a blue circle", "a zzzq dog"]]
    pools = replace(pools, words=["red", "blue", "circle", "dog", "the", "of", "flag", "color", "a"])
    counts = {}
    for it in named_words(pools, pictures, cap=3):
        assert it.kind == "word" and it.caption == it.word
        counts[it.word] = counts.get(it.word, 0) + 1
    assert counts == {"red": 3, "blue": 1, "circle": 2, "dog": 2}  # capped; function, template, unknown words out
