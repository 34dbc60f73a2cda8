"""The layer catalogue (data per image tower) and activation capture with early stop and pre-ReLU."""
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from worker.cli.stages import worker_cli
from worker.compute.layers import UnknownLayer, activations, catalogue, layer_spec

CONFIG_DIR = Path(__file__).parent / "model_configs"


def test_resnet_catalogue_is_layer1_to_4_with_layer4_default(tiny_rn):
    specs = catalogue(tiny_rn)
    assert [(s.name, s.n_units, s.kind) for s in specs] == [
        ("layer1", 64, "conv"), ("layer2", 128, "conv"), ("layer3", 256, "conv"), ("layer4", 512, "conv")]
    assert [s.name for s in specs if s.is_default] == ["layer4"]
    assert layer_spec(tiny_rn).name == "layer4"


def test_vit_catalogue_is_the_mlp_hidden_units_of_each_block(tiny_vit):
    specs = catalogue(tiny_vit)
    assert [(s.name, s.n_units, s.kind, s.is_default) for s in specs] == [
        ("resblocks.0.mlp", 256, "mlp", False), ("resblocks.1.mlp", 256, "mlp", True)]


def test_capture_matches_a_full_forward_and_stops_early(tiny_rn):
    x = torch.randn(3, 3, 64, 64)
    seen = {}
    hooks = [tiny_rn.visual.layer2.register_forward_hook(lambda m, i, o: seen.setdefault("layer2", o.clone())),
             tiny_rn.visual.attnpool.register_forward_hook(lambda m, i, o: seen.setdefault("pool", True))]
    try:
        with torch.inference_mode():
            early = activations(tiny_rn, x, ["layer2"], tap="write")  # the stage output
            assert "pool" not in seen  # the tower stopped after layer2
            tiny_rn.visual(x)
    finally:
        for h in hooks:
            h.remove()
    assert early["layer2"].shape == (3, 128, 8, 8)
    assert torch.allclose(early["layer2"], seen["layer2"])


def test_resnet_values_are_read_before_the_final_relu_that_clips_them(tiny_rn):
    x = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        post = activations(tiny_rn, x, ["layer3", "layer4"], tap="write")
        pre = activations(tiny_rn, x, ["layer3", "layer4"])
    for name in ("layer3", "layer4"):
        assert (pre[name] < 0).any() and (post[name] >= 0).all()
        assert torch.allclose(pre[name].clamp_min(0), post[name])


def test_vit_mlp_units_come_as_a_grid_of_patch_tokens(tiny_vit):
    x = torch.randn(2, 3, 32, 32)
    tokens = {}
    gelu = tiny_vit.visual.transformer.resblocks[1].mlp.gelu
    handle = gelu.register_forward_hook(lambda m, i, o: tokens.setdefault("t", o.clone()))
    try:
        with torch.inference_mode():
            grid = activations(tiny_vit, x, ["resblocks.1.mlp"])["resblocks.1.mlp"]
            tiny_vit.visual(x)
    finally:
        handle.remove()
    t = tokens["t"]  # (B, 1 + 16 patches, 256), class token first
    assert grid.shape == (2, 256, 4, 4)
    assert torch.allclose(grid[:, :, 1, 2], t[:, 1 + 1 * 4 + 2, :])


def test_unknown_layer_names_the_layers_that_exist(tiny_rn):
    with pytest.raises(UnknownLayer, match="layer1, layer2, layer3, layer4"):
        layer_spec(tiny_rn, "layer5")


def test_layers_command_lists_layers_with_unit_counts():
    result = CliRunner().invoke(worker_cli, ["layers", "tiny-vit", "--config-dir", str(CONFIG_DIR)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tiny-vit")
    assert any(line.startswith("* resblocks.1.mlp") and " 256 units" in line for line in lines)
    assert any(line.startswith("  resblocks.0.mlp") for line in lines)


def test_register_command_creates_the_model_its_layers_and_units(monkeypatch, tmp_path):
    from sqlalchemy import func, select

    from store.schema import Layer, Model, Unit
    from store.settings import Settings
    from store.writes import open_store

    monkeypatch.setenv("MICROSCOPE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MICROSCOPE_DATABASE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    result = CliRunner().invoke(worker_cli, ["register", "tiny-rn", "--config-dir", str(CONFIG_DIR),
                                             "--name", "small-rn", "--description", "a tiny one"])
    assert result.exit_code == 0, result.output
    assert "registered small-rn (tiny-rn, weights random): 4 layers, 960 units" in result.stdout
    store = open_store(Settings())
    with store.sessions() as s:
        model = s.scalar(select(Model).where(Model.name == "small-rn"))
        assert (model.arch, model.weights, model.image_size, model.description) == ("tiny-rn", None, 64, "a tiny one")
        assert [(la.name, la.n_units, la.is_default) for la in model.layers][-1] == ("layer4", 512, True)
        assert s.scalar(select(func.count()).select_from(Unit).join(Layer).where(Layer.model_id == model.id)) == 960
