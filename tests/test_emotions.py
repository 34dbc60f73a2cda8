"""Emotion composition on a tiny real open_clip model: word list, sparse codes, atlas, stage, pages."""
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from store.schema import Artifact
from store.writes import register_model
from worker.analyses import emotions as E
from worker.compute.layers import catalogue
from worker.compute.readout import embed_texts, readout_matrix, text_attribution

SMALL = """# a few words
[happy]
happy
proud
let down
[sad]
sad
lonely
jealous
[angry]
angry
mad
bored
"""


@pytest.fixture(scope="module")
def composed(tiny_rn):
    feelings = E.read_feelings()
    return feelings, E.compose(tiny_rn, feelings, "lasso", neurons=4, factors=5)


def test_feeling_wheel_is_about_130_unique_words_in_7_groups():
    feelings = E.read_feelings()
    assert 120 <= len(feelings) <= 140
    assert len({f.word.lower() for f in feelings}) == len(feelings)
    assert {f.group for f in feelings} == {"happy", "sad", "disgusted", "angry", "fearful", "bad", "surprised"}
    assert E.Feeling("jealous", "angry") in feelings and E.Feeling("let down", "angry") in feelings


@pytest.mark.parametrize("text, message", [("happy\n[sad]\nsad\n", "before the first"),
                                           ("[a]\nsad\n[b]\nSad\n", "listed twice")])
def test_malformed_feeling_file_says_where(tmp_path, text, message):
    path = tmp_path / "f.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        E.read_feelings(path)


def test_vectors_are_the_attribution_of_i_feel_prompts(tiny_rn, composed):
    feelings, result = composed
    direct = text_attribution(tiny_rn, [f"I feel {feelings[5].word}", f"I feel {feelings[40].word}"])
    np.testing.assert_allclose(result["vectors"][[5, 40]], direct, rtol=1e-4, atol=1e-6)


def test_lasso_code_is_sparse_and_rebuilds_its_target_better_than_zero(tiny_rn, composed):
    feelings, result = composed
    codes, r2 = result["codes"], result["quality"]
    assert (np.count_nonzero(codes, axis=1) <= 4).all() and (np.count_nonzero(codes, axis=1) >= 1).all()
    emb = embed_texts(tiny_rn, [E.PROMPT.format(f.word) for f in feelings])
    target = emb - emb.mean(0)
    rebuilt = codes @ readout_matrix(tiny_rn)
    err, zero = ((target - rebuilt) ** 2).sum(1), (target ** 2).sum(1)
    assert (err < zero).all()
    np.testing.assert_allclose(r2, 1 - err / zero, rtol=1e-4, atol=1e-6)


def test_one_neuron_code_is_the_top_centred_attribution(tiny_rn, composed):
    feelings, result = composed
    emb = embed_texts(tiny_rn, [E.PROMPT.format(f.word) for f in feelings])
    readout = readout_matrix(tiny_rn)
    codes, _ = E.lasso_codes(emb - emb.mean(0), readout, neurons=1)
    centred = result["vectors"] - result["vectors"].mean(0)
    for i in (0, 17, 99):
        (unit,) = np.flatnonzero(codes[i])
        assert unit == np.argmax(np.abs(centred[i]))
        assert np.sign(codes[i, unit]) == np.sign(centred[i, unit])


def test_logistic_codes_score_their_own_prompts_above_others(tiny_rn, tmp_path):
    path = tmp_path / "f.txt"
    path.write_text(SMALL)
    feelings = E.read_feelings(path)
    result = E.compose(tiny_rn, feelings, "logistic", neurons=4, factors=3, c=0.5)
    assert result["quality"].mean() > 0.7  # share of other words' prompts scored below its own
    assert (np.count_nonzero(result["codes"], axis=1) < result["codes"].shape[1] / 4).all()


def test_unknown_method_is_refused(tiny_rn, tmp_path):
    path = tmp_path / "f.txt"
    path.write_text(SMALL)
    with pytest.raises(ValueError, match="lasso, logistic"):
        E.compose(tiny_rn, E.read_feelings(path), "ridge")


def test_atlas_gives_each_word_its_own_cell_and_factor_shares(composed):
    feelings, result = composed
    at = result["atlas"]
    cells = [tuple(c) for c in at["cells"]]
    assert len(set(cells)) == len(feelings)
    assert all(0 <= c < at["side"] and 0 <= r < at["side"] for c, r in cells)
    np.testing.assert_allclose(at["share"].sum(1), 1, atol=1e-6)
    assert len(at["factors"]) == 5


def test_grid_snaps_to_the_nearest_free_cell():
    cells = E.grid_cells(np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]), side=3)
    assert cells[0] == (0, 0) and cells[1] in {(0, 1), (1, 0)} and cells[2] == (2, 2)
    with pytest.raises(ValueError):
        E.grid_cells(np.zeros((5, 2)), side=2)


@pytest.fixture
def emotions_site(store, client, tiny_rn, tmp_path):
    with store.sessions.begin() as s:
        register_model(s, "tiny", "tiny-rn", None, tiny_rn.image_size, catalogue(tiny_rn))
    path = tmp_path / "f.txt"
    path.write_text(SMALL)
    data = E.emotions_stage(store, "tiny", tiny_rn, path, neurons=3, factors=3)
    return store, client, data


def test_stage_keeps_artifacts_and_pages_show_them(emotions_site):
    store, client, data = emotions_site
    with store.sessions() as s:
        names = {a.name: a for a in s.scalars(select(Artifact))}
    assert set(names) == {"emotions", "emotions-atlas", "emotions-vectors"}
    assert names["emotions"].layer == "layer4" and names["emotions"].meta["words"] == 9
    assert np.load(store.cache.resolve(names["emotions-vectors"].path)).shape == (9, 512)

    page = client.get("/models/tiny/emotions")
    assert page.status_code == 200 and "jealous" in page.text and 'alt="Atlas of 9 feeling words' in page.text
    js = client.get("/models/tiny/emotions.json").json()
    assert js["words"] == ["happy", "proud", "let down", "sad", "lonely", "jealous", "angry", "mad", "bored"]
    assert [g["group"] for g in js["groups"]] == ["happy", "sad", "angry"]
    atlas = client.get(js["atlas"])
    assert atlas.status_code == 200 and atlas.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_word_page_lists_its_neurons_with_weights(emotions_site):
    _, client, data = emotions_site
    word = next(w for w in data["words"] if w["word"] == "jealous")
    js = client.get("/models/tiny/emotions/jealous.json").json()
    assert js["prompt"] == "I feel jealous" and js["group"] == "sad"
    assert [(c["unit"], c["weight"]) for c in js["code"]] == [(c["unit"], c["weight"]) for c in word["code"]]
    assert all(c["url"] == f"/models/tiny/layer4/{c['unit']}" for c in js["code"])
    assert 1 <= len(js["code"]) <= 3
    html = client.get("/models/tiny/emotions/jealous").text
    assert "I feel jealous" in html and f"/models/tiny/layer4/{js['code'][0]['unit']}" in html
    spaced = client.get("/models/tiny/emotions/let%20down.json")
    assert spaced.status_code == 200 and spaced.json()["word"] == "let down"


def test_unknown_word_and_model_are_404_naming_what_exists(emotions_site):
    _, client, _ = emotions_site
    miss = client.get("/models/tiny/emotions/euphoric.json")
    assert miss.status_code == 404 and "jealous" in miss.json()["error"] and "let down" in miss.json()["error"]
    model = client.get("/models/nope/emotions")
    assert model.status_code == 404 and "tiny" in model.text
    assert client.get("/models/nope/emotions/sad.json").status_code == 404


def test_model_without_composition_says_which_command_fills_it(toy_model, client):
    page = client.get("/models/toy/emotions.json")
    assert page.status_code == 200 and "microscope worker emotions toy" in page.json()["empty"]
    word = client.get("/models/toy/emotions/sad.json")
    assert word.status_code == 404 and "microscope worker emotions toy" in word.json()["error"]


def test_worker_command(settings, store, tmp_path):
    from typer.testing import CliRunner

    from app.liveserver import settings_env
    CONFIG_DIR = Path(__file__).parent / "model_configs"
    from worker.cli.stages import worker_cli

    path = tmp_path / "f.txt"
    path.write_text(SMALL)
    args = ["emotions", "tiny-rn", "--config-dir", str(CONFIG_DIR), "--name", "tiny", "--device", "cpu",
            "--feelings", str(path), "--neurons", "2", "--factors", "2"]
    result = CliRunner().invoke(worker_cli, args, env=settings_env(settings))
    assert result.exit_code == 0, result.output
    assert "tiny: 9 words, mean r2" in result.output
    bad = CliRunner().invoke(worker_cli, [*args, "--method", "ridge"], env=settings_env(settings))
    assert bad.exit_code == 2 and "lasso, logistic" in bad.output


def test_raising_a_codes_top_neuron_on_a_blank_image_raises_its_words_logit(tiny_rn, composed):
    """The paper's footnote 39 check, on the sparse codes: more than the other words' logits on average."""
    import torch
    from PIL import Image as PILImage

    feelings, result = composed
    words = [f.word for f in feelings]
    text = torch.tensor(embed_texts(tiny_rn, [E.PROMPT.format(w) for w in words]))
    blank = tiny_rn.preprocess(PILImage.new("RGB", (64, 64), (128, 128, 128))).unsqueeze(0)

    def logits(unit=None, delta=0.0):
        def raise_unit(_module, _inputs, out):
            out = out.clone()
            out[:, unit] += delta
            return out

        handle = tiny_rn.visual.layer4.register_forward_hook(raise_unit) if unit is not None else None
        with torch.no_grad():
            emb = tiny_rn.model.encode_image(blank, normalize=True)[0]
        if handle:
            handle.remove()
        return text @ emb

    base = logits()
    for i in range(0, len(words), 13):
        code = result["codes"][i]
        unit = int(np.argmax(np.abs(code)))
        rise = logits(unit, float(np.sign(code[unit])) * 2.0) - base
        assert rise[i] > rise.mean(), words[i]
