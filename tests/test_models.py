"""Model loading: local checkpoints round-trip, missing weights fail fast with instructions, clean CLI errors."""
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from typer.testing import CliRunner

from worker.cli.stages import worker_cli
from worker.compute.models import UnknownModel, WeightsMissing, load_model, save_checkpoint, tag_settings

CONFIG_DIR = Path(__file__).parent / "model_configs"


@pytest.fixture
def empty_caches(monkeypatch, tmp_path):
    """No Hugging Face or ~/.cache/clip weights, whatever this machine has cached."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_checkpoint_round_trips_through_the_loader(tiny_rn, tmp_path, suffix):
    path = save_checkpoint(tiny_rn.model, tmp_path / f"tiny{suffix}")
    torch.manual_seed(123)
    other = load_model("tiny-rn", config_dirs=(CONFIG_DIR,))  # a different random init
    again = load_model("tiny-rn", str(path), config_dirs=(CONFIG_DIR,))
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        want = tiny_rn.model.encode_image(x)
        assert not torch.allclose(other.model.encode_image(x), want)
        assert torch.allclose(again.model.encode_image(x), want, atol=1e-6)
    saved, loaded = tiny_rn.model.state_dict(), again.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert again.weights == str(path)


def test_missing_tag_fails_in_under_a_second_saying_how_to_supply_it(empty_caches):
    start = time.monotonic()
    with pytest.raises(WeightsMissing) as err:
        load_model("RN50", "openai")
    assert time.monotonic() - start < 1.0
    message = str(err.value)
    assert "--weights" in message and ".safetensors" in message  # a local checkpoint …
    assert "HF_HUB_OFFLINE=1" in message and "Hugging Face cache" in message  # … or the HF cache layout


def test_missing_checkpoint_file_and_unknown_tag_fail_fast(tmp_path):
    start = time.monotonic()
    with pytest.raises(WeightsMissing, match="not found"):
        load_model("RN50", str(tmp_path / "nope.pt"))
    with pytest.raises(WeightsMissing, match="known tags: .*openai"):
        load_model("RN50", "no-such-tag")
    assert time.monotonic() - start < 1.0


def test_unknown_model_and_quickgelu_for_openai_weights():
    with pytest.raises(UnknownModel, match="--config-dir"):
        load_model("RN51")
    assert tag_settings("RN50", "openai").quick_gelu and tag_settings("ViT-B-32", "openai").quick_gelu
    assert tag_settings("RN50", "yfcc15m").quick_gelu  # not only openai: the tag's pretrained config says so
    assert not tag_settings("RN50", None).quick_gelu and tag_settings("RN50-quickgelu", None).quick_gelu


@pytest.mark.parametrize("args, needle", [
    (["layers", "RN50", "--weights", "openai"], "not on this machine"),
    (["layers", "RN51"], "unknown open_clip model"),
    (["examples", "RN50", "--weights", "/nope/rn50.pt", "--corpus", "."], "not found"),
    (["layers", "tiny-rn", "--config-dir", "/no/such/dir"], "does not exist"),
])
def test_cli_prints_one_clean_line_and_exits_2(empty_caches, args, needle):
    start = time.monotonic()
    result = CliRunner().invoke(worker_cli, args)
    assert result.exit_code == 2, result.output
    assert time.monotonic() - start < 5.0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in result.output
