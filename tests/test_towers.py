"""Every image-tower family in the catalogue (worker/compute/towers.py) runs through every stage on a tiny
random-init open_clip model: ModifiedResNet, CLIP ViT with tok and avg pooling, CoCa, timm towers
(SigLIP-style attention-pool ViT, ConvNeXt, EVA). A tower outside it is refused with one line."""
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import func, select
from typer.testing import CliRunner

from store.schema import Artifact, DatasetExample, Run, WordScore
from tests.test_examples import make_corpus
from worker.cli.stages import worker_cli
from worker.compute.layers import catalogue, layer_spec, readings
from worker.compute.models import load_model, revive_random_resnet, save_checkpoint
from worker.compute.towers import FAMILIES

CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY = {"tiny-rn": "ModifiedResNet", "tiny-vit": "VisionTransformer", "tiny-vit-avg": "VisionTransformer",
        "tiny-coca": "VisionTransformer", "tiny-timm-map": "timm VisionTransformer",
        "tiny-convnext": "timm ConvNeXt", "tiny-eva": "timm Eva"}
POOLING = {"tiny-rn": "mean", "tiny-vit": "cls", "tiny-vit-avg": "patches", "tiny-coca": "attention",
           "tiny-timm-map": "attention", "tiny-convnext": "mean", "tiny-eva": "cls"}


def loaded_from_checkpoint(arch: str, tmp_path: Path):
    """The tiny model saved as a real checkpoint and loaded back (the probes re-create it from the store)."""
    torch.manual_seed(0)
    random = load_model(arch, config_dirs=(CONFIG_DIR,))
    revive_random_resnet(random.model)
    path = save_checkpoint(random.model, tmp_path / f"{arch}.pt")
    return load_model(arch, str(path), config_dirs=(CONFIG_DIR,))


def test_every_family_of_the_catalogue_has_a_tiny_test_model():
    assert set(TINY.values()) == {f.name for f in FAMILIES}


@pytest.mark.parametrize("arch", list(TINY))
def test_attention_pooling_weights_are_a_distribution_over_tokens(arch):
    """Where the tower pools by attention, the weights per image are ≥ 0 and sum to one; elsewhere the
    pooled value is the class token, the patch mean or the map mean as the pooling name says."""
    from worker.compute.layers import capture, forward_visual

    torch.manual_seed(0)
    loaded = load_model(arch, config_dirs=(CONFIG_DIR,))
    name = layer_spec(loaded).name
    x = torch.randn(2, 3, loaded.image_size, loaded.image_size)
    with torch.no_grad(), capture(loaded, [name], ("value",), pooled=True) as got:
        forward_visual(loaded, x)
    assert got.pooling == POOLING[arch]
    raw, value = got.raw[(name, "value")], got.pooled(name)
    if got.pooling == "attention":
        assert (got.alpha >= 0).all() and torch.allclose(got.alpha.sum(1), torch.ones(2), atol=1e-5)
    elif got.pooling == "cls":
        assert torch.allclose(value, raw[:, 0])
    elif got.pooling == "patches":
        assert torch.allclose(value, raw[:, got.prefix:].mean(1))
    else:
        assert torch.allclose(value, raw.mean(dim=(2, 3)))


@pytest.fixture
def sqlite_store(tmp_path, sqlite_url):
    """Store and app on a SQLite file only: the stages' store code is covered on both backends elsewhere."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from store.migrate import upgrade
    from store.writes import open_store
    from tests.conftest import make_settings

    upgrade(sqlite_url)
    settings = make_settings(tmp_path, sqlite_url)
    app = create_app(settings)
    with TestClient(app) as client:
        yield open_store(settings), client
    app.state.engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(TINY))
def test_every_family_runs_every_stage(arch, sqlite_store, tmp_path):
    """examples, feature vis, words, maps, read-out, text and image probes, emotions, typographic attacks."""
    from tests.test_probe_image import picture, png_bytes
    from worker.analyses.attribution import store_readout
    from worker.analyses.emotions import emotions_stage
    from worker.analyses.examples import ExampleOptions, run_examples
    from worker.analyses.maps import run_maps
    from worker.analyses.typographic import Attack, attack_stage
    from worker.analyses.words import run_words
    from worker.compute.featurevis.render import RenderSettings, render

    store, client = sqlite_store
    loaded = loaded_from_checkpoint(arch, tmp_path)
    layer = layer_spec(loaded).name
    corpus = make_corpus(tmp_path / "corpus", n=4, bad=False)
    run_examples(store, loaded, "m", corpus, None, ExampleOptions(k=2, batch_size=4, workers=0, progress=False,
                                                                   samples=2))
    rendered = render(loaded, f"{layer}:1", [0], RenderSettings(steps=2))
    assert torch.isfinite(rendered.images).all()
    run_words(store, loaded, "m", None, ["cat", "dog", "red", "blue"], batch_size=16)
    run_maps(store, loaded, "m", None, n_crops=4, n_cities=4, units=[0, 1])
    store_readout(store, "m", loaded, [CONFIG_DIR])
    feelings = tmp_path / "feelings.txt"
    feelings.write_text("[happy]\nhappy\ncontent\njoyful\n[sad]\nsad\nlonely\ngrief\n[angry]\nangry\nmad\n")
    emotions_stage(store, "m", loaded, feelings, neurons=2, factors=2)
    for label in ("cat", "dog"):
        (tmp_path / "set" / label).mkdir(parents=True)
        picture().save(tmp_path / "set" / label / "1.png")
    attack_stage(store, "m", loaded, tmp_path / "set", [Attack("cat", "cat")], "a photo of a {}")
    units = catalogue(loaded)[-1].n_units
    with store.sessions() as s:
        assert s.scalar(select(func.count()).select_from(DatasetExample)) == units * 2 * 2
        assert s.scalar(select(func.count()).select_from(WordScore)) > 0
        assert {r.stage for r in s.scalars(select(Run))} >= {"examples", "words", "maps", "attribution", "emotions",
                                                              "typographic"}
        assert s.scalar(select(Artifact).where(Artifact.name == "readout")).meta["units"] == units
    text = client.get("/probe.json", params={"model": "m", "q": "a red car", "k": 3})
    assert text.status_code == 200, text.text
    assert len(text.json()["positive"]) == 3
    image = client.post("/probe/image", files={"file": ("p.png", png_bytes(picture()), "image/png")},
                        data={"model": "m", "k": "3"}, headers={"accept": "application/json"})
    assert image.status_code == 200, image.text
    assert len(image.json()["result"]["units"]) == 3
    page = client.get(f"/models/m/{layer}/1")
    assert page.status_code == 200 and "Value shown:" in page.text


def test_layers_command_prints_what_a_neuron_is_for_every_family():
    for arch, family in TINY.items():
        result = CliRunner().invoke(worker_cli, ["layers", arch, "--config-dir", str(CONFIG_DIR)])
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert f"family {family}" in lines[0] and lines[1].startswith("  neuron: ")
        assert lines[2].startswith("  value shown: ") and any(line.startswith("* ") for line in lines)


def test_a_tower_outside_the_catalogue_is_refused_in_one_line():
    result = CliRunner().invoke(worker_cli, ["layers", "tiny-timm-resnet", "--config-dir", str(CONFIG_DIR)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: no layer catalogue for image tower TimmModel(ResNet); catalogued: "
        + ", ".join(f.name for f in FAMILIES)]
    assert "Traceback" not in result.output


def test_readings_of_a_vit_split_value_and_pre_activation(tiny_vit):
    """tok pooling: the value is the class token after the GELU, the negative signal the same token before."""
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        r = readings(tiny_vit, x, ["resblocks.1.mlp"])["resblocks.1.mlp"]
    assert float(r.value.min()) >= -0.1701 and float(r.negative.min()) < -0.5
    gelu = torch.nn.functional.gelu(r.negative)
    assert np.allclose(gelu.numpy(), r.value.numpy(), atol=1e-5)
