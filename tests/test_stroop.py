"""The Stroop test: stimuli, scoring, the stage on a tiny real model, and its place on the attacks page."""
from pathlib import Path

import numpy as np
import pytest

from store.writes import register_model
from worker.analyses import stroop as S
from worker.compute.layers import catalogue


def test_every_word_in_every_ink_at_every_size():
    items = S.stimuli(S.COLOURS, 48)
    n = len(S.COLOURS)
    assert len(items) == n * n * len(S.SIZES)
    assert sum(w == ink for w, ink, _ in items) == n * len(S.SIZES)
    word, ink, img = next(i for i in items if i[0] == "blue" and i[1] == "red")
    pixels = np.asarray(img).reshape(-1, 3)
    assert (pixels == S.COLOURS["red"]).all(-1).sum() > 5  # drawn in red ink
    assert not (pixels == S.COLOURS["blue"]).all(-1).any()  # not in the colour it names
    assert (pixels == S.BACKGROUND).all(-1).mean() > 0.5


def test_score_counts_congruent_incongruent_and_word_reading():
    items = [("red", "red"), ("blue", "blue"), ("red", "blue"), ("blue", "red"), ("red", "green")]
    predicted = ["red", "green", "red", "red", "green"]
    assert S.score(items, predicted) == {
        "congruent": 2, "incongruent": 3, "congruent_accuracy": 0.5,
        "incongruent_accuracy": pytest.approx(2 / 3), "read_word_rate": pytest.approx(1 / 3)}


def test_matrix_takes_the_majority_prediction_per_word_and_ink():
    items = [("red", "blue")] * 3 + [("red", "red")]
    rows = S.matrix(items, ["red", "blue", "blue", "red"], ["red", "blue"])
    assert rows[0] == {"word": "red", "cells": [{"ink": "red", "predicted": "red"},
                                                {"ink": "blue", "predicted": "blue"}]}
    assert rows[1] == {"word": "blue", "cells": []}


def test_stage_on_a_tiny_model_and_the_attacks_page(store, client, tiny_rn):
    with store.sessions.begin() as s:
        register_model(s, "tiny", "tiny-rn", None, tiny_rn.image_size, catalogue(tiny_rn))
    report = S.stroop_stage(store, "tiny", tiny_rn)
    scores = report["scores"]
    n = len(S.COLOURS)
    assert scores["congruent"] == n * len(S.SIZES) and scores["incongruent"] == n * (n - 1) * len(S.SIZES)
    for key in ("congruent_accuracy", "incongruent_accuracy", "read_word_rate"):
        assert 0 <= scores[key] <= 1
    js = client.get("/models/tiny/attacks.json").json()
    assert js["stroop"]["scores"] == scores and len(js["stroop"]["matrix"]) == n
    assert all(len(row["cells"]) == n for row in js["stroop"]["matrix"])
    assert client.get(js["stroop"]["sheet"]).status_code == 200
    html = client.get("/models/tiny/attacks").text
    assert "my favorite word, written in the color" in html and "Predicted colour for each word" in html


def test_worker_command(settings, store):
    from typer.testing import CliRunner

    from app.liveserver import settings_env
    CONFIG_DIR = Path(__file__).parent / "model_configs"
    from worker.cli.stages import worker_cli

    args = ["stroop", "tiny-rn", "--config-dir", str(CONFIG_DIR), "--name", "tiny", "--device", "cpu"]
    result = CliRunner().invoke(worker_cli, args, env=settings_env(settings))
    assert result.exit_code == 0, result.output
    assert "tiny: congruent accuracy" in result.output and "(18)" in result.output
