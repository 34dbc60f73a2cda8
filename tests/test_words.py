"""Rendered words: deterministic rasters, scores equal to a direct computation, resumable, stored on both backends."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from sqlalchemy import select

from store.schema import Artifact, Unit, UnitText, Word, WordScore
from worker.analyses.resumable import Checkpoints, score_resumable
from worker.analyses.words import run_words
from worker.compute.render_text import RenderPlan, available_fonts, reduce_variants, render, render_all
from worker.compute.text_scores import common_words, layer_reader
from worker.pipeline.contract import settings_hash

WORDS = ["king", "queen", "man", "woman", "paris", "france", "running", "eating", "singing", "walking",
         "telecommunications", "the", "of", "red", "blue", "dog", "cat", "london", "japan", "music"]


def test_two_renders_are_byte_identical_and_variants_differ():
    plan = RenderPlan(64)
    a, b = render_all(["hello", "telecommunications"], plan), render_all(["hello", "telecommunications"], plan)
    assert a.dtype == np.uint8 and a.shape == (2, 4, 64, 64, 3)
    assert np.array_equal(a, b)
    flat = a[0].reshape(4, -1)
    assert len({row.tobytes() for row in flat}) == 4  # two sizes x two positions, each its own image
    assert {v.font for v in plan.variants()} == set(plan.fonts)  # more than one font is used


def test_text_stays_inside_the_canvas_even_when_long():
    plan = RenderPlan(64, scales=(0.4,))
    for v in plan.variants():
        ink = np.asarray(render("telecommunications", v, plan).convert("L")) < 128
        rows, cols = np.nonzero(ink)
        assert ink.sum() > 20
        assert cols.min() >= 1 and cols.max() <= 62 and rows.min() >= 1 and rows.max() <= 62


def test_positions_move_the_text():
    plan = RenderPlan(64, fonts=("dejavu-sans",), scales=(0.25,), positions=((0.3, 0.3), (0.7, 0.7)))
    centres = []
    for v in plan.variants():
        rows, cols = np.nonzero(np.asarray(render("dog", v, plan).convert("L")) < 128)
        centres.append((cols.mean(), rows.mean()))
    assert centres[0][0] < 32 < centres[1][0] and centres[0][1] < 32 < centres[1][1]


def test_the_guaranteed_fonts_are_installed():
    assert {"dejavu-sans", "liberation-serif"} <= set(available_fonts())


def test_common_words_are_ten_thousand_minus_digit_and_symbol_tokens():
    words = common_words()
    assert 9_900 < len(words) <= 10_000 and words[:3] == ["the", "to", "and"]
    assert not any(c.isdigit() for w in words for c in w)
    assert all(any(c.isalpha() for c in w) for w in words) and "u.s" in words and "😂" not in words


def test_reduction_is_mean_over_sizes_of_max_over_positions():
    plan = RenderPlan(64, scales=(0.2, 0.3, 0.4), positions=((0.4, 0.4), (0.6, 0.6)))
    values = np.array([[5.0, 1, 2, 7, 0, 3]])  # (word, variant) in (size, position) order
    assert reduce_variants(values, plan)[0] == pytest.approx(np.mean([5, 7, 3]))


def direct_scores(loaded, layer: str, words: list[str], plan: RenderPlan) -> tuple[np.ndarray, np.ndarray]:
    """Every rendered image through the model's own preprocess and a plain full forward, read by hooks."""
    seen = {}
    block = loaded.visual.get_submodule(layer)
    hooks = [block.register_forward_hook(lambda m, i, o: seen.__setitem__("post", o.clone())),
             block[-1].act3.register_forward_pre_hook(lambda m, i: seen.__setitem__("pre", i[0].clone()))]
    images = torch.stack([loaded.preprocess(render(w, v, plan)) for w in words for v in plan.variants()])
    try:
        with torch.no_grad():
            loaded.visual(images)
    finally:
        for h in hooks:
            h.remove()
    pre, post = (seen[k].mean((2, 3)).numpy().reshape(len(words), plan.n_variants, -1) for k in ("pre", "post"))
    return reduce_variants(pre, plan), reduce_variants(post, plan)


def test_stored_word_scores_equal_a_direct_computation(store, tiny_rn):
    plan = RenderPlan(tiny_rn.image_size)
    report = run_words(store, tiny_rn, "tiny", "layer2", words=WORDS, plan=plan, chunk_size=7, batch_size=16)
    assert report["words"] == len(WORDS) and report["units"] == 128 and report["chunks"] == 3
    pre, post = direct_scores(tiny_rn, "layer2", WORDS, plan)
    with store.sessions() as s:
        meta = s.scalar(select(Artifact).where(Artifact.name == "words")).meta
        rows = s.execute(select(Unit.index, Word.text, WordScore.sign, WordScore.rank, WordScore.score)
                         .join(Unit, Unit.id == WordScore.unit_id).join(Word, Word.id == WordScore.word_id)).all()
        doc = s.scalar(select(UnitText.document).join(Unit).where(Unit.index == int(post[0].argmax())))
    matrix = np.load(store.cache.resolve(meta["paths"]["post"]))
    assert matrix.shape == (len(WORDS), 128)
    np.testing.assert_allclose(matrix, post, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.load(store.cache.resolve(meta["paths"]["pre"])), pre, rtol=1e-4, atol=1e-5)
    index = {w: i for i, w in enumerate(WORDS)}
    for unit, word, sign, _rank, score in rows:
        expected = post if sign == "top" else pre
        assert score == pytest.approx(expected[index[word], unit], rel=1e-4, abs=1e-5)
    live = [u for u in range(128) if np.ptp(post[:, u]) > 0]
    unit = live[0]
    tops = sorted((r for r in rows if r[0] == unit and r[2] == "top"), key=lambda r: r[3])
    assert [r[1] for r in tops] == [WORDS[i] for i in np.argsort(-post[:, unit], kind="stable")][:len(tops)]
    bottoms = [r for r in rows if r[0] == unit and r[2] == "bottom"]
    assert bottoms and min(r[4] for r in bottoms) == pytest.approx(pre[:, unit].min(), rel=1e-4)
    assert WORDS[int(post[:, int(post[0].argmax())].argmax())] in doc  # top words reach the search document
    assert run_words(store, tiny_rn, "tiny", "layer2", words=WORDS, plan=plan)["skipped"] == "up to date"


class Killed(Exception):
    pass


def test_a_killed_run_resumes_from_its_chunks_and_matches(store, tiny_rn):
    plan = RenderPlan(tiny_rn.image_size)
    read = layer_reader(tiny_rn, "layer2")
    calls = {"n": 0}

    def dies_on_third_batch(images):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed
        return read(images)

    job = "words/test/" + settings_hash({"x": 1})
    with pytest.raises(Killed):
        score_resumable(store, job, dies_on_third_batch, WORDS, plan, tiny_rn.mean, tiny_rn.std,
                        chunk_size=5, batch_size=20)
    assert Checkpoints(store, f"work/{job}").load(1) is not None and Checkpoints(store, f"work/{job}").load(2) is None
    pre, post, report = score_resumable(store, job, read, WORDS, plan, tiny_rn.mean, tiny_rn.std, chunk_size=5,
                                        batch_size=20)
    assert report["chunks_resumed"] == 2 and report["chunks"] == 4
    _, post_once, _ = score_resumable(store, job + "-fresh", read, WORDS, plan, tiny_rn.mean, tiny_rn.std,
                                      chunk_size=20, batch_size=80)
    np.testing.assert_allclose(post, post_once, rtol=1e-4, atol=1e-5)


def test_worker_commands_words_and_regions(settings, store):
    from pathlib import Path

    from typer.testing import CliRunner

    from app.liveserver import settings_env
    from worker.cli.stages import worker_cli

    config = str(Path(__file__).parent / "model_configs")
    env = settings_env(settings)
    args = ["words", "tiny-rn", "--config-dir", config, "--name", "tiny", "--device", "cpu", "--layer", "layer1",
            "--words", "40"]
    result = CliRunner().invoke(worker_cli, args, env=env)
    assert result.exit_code == 0, result.output
    assert "'words': 40" in result.output and "'units': 64" in result.output
    regions = CliRunner().invoke(worker_cli, ["regions", "tiny", "--layer", "layer1"], env=env)
    assert regions.exit_code == 0 and "units_scored" in regions.output, regions.output
    bad = CliRunner().invoke(worker_cli, [*args, "--fonts", "no-such-font"], env=env)
    assert bad.exit_code == 2 and "unknown font 'no-such-font'" in bad.output
    missing = CliRunner().invoke(worker_cli, ["regions", "nomodel"], env=env)
    assert missing.exit_code == 2 and "no model 'nomodel'" in missing.output


def test_text_scoring_and_the_demo_evaluation_import_without_the_store():
    """They run on machines without the web/store stack (a lent GPU box): no SQLAlchemy, pydantic or FastAPI."""
    code = ("import sys, worker.compute.text_scores, worker.compute.layers, worker.demo.evaluate, worker.demo.train; "
            "assert not {'sqlalchemy', 'pydantic', 'fastapi', 'store.writes'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_layer_wide_word_scores_give_the_same_search_documents_as_one_unit_at_a_time(store):
    """write_word_scores refreshes a batch's search documents in four queries (app.unit_text.refresh_unit_texts):
    labels, families and top words come out as unit_document builds them one unit at a time."""
    from app.labelling import save_label
    from app.unit_text import unit_document
    from tests.synthetic import populate
    from worker.analyses.words import write_word_scores

    populate(store, "synth", {"layer4": 6}, filled=3)  # units 3-5 have no search document yet
    rng = np.random.default_rng(0)
    pre = rng.standard_normal((len(WORDS), 6)).astype(np.float32)
    with store.sessions() as s:
        uid = s.scalars(select(Unit.id).order_by(Unit.id)).all()
        save_label(s, uid[1], "cats and kings", "ann", None)
        save_label(s, uid[4], "dogs", "ann", None, source="auto")
    write_word_scores(store, "synth", "layer4", WORDS, pre, np.maximum(pre, 0), None, top=5, bottom=3,
                      units_per_commit=4)
    with store.sessions() as s:
        stored = dict(s.execute(select(UnitText.unit_id, UnitText.document)).all())
        assert stored == {u: unit_document(s, u) for u in uid}
    assert stored[uid[1]].startswith("cats and kings\n") and stored[uid[4]].startswith("dogs\n")
    assert all(len(doc.split("\n")[-1].split()) == 5 for doc in stored.values())
