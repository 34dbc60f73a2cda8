"""Real checkpoint files: OpenAI-format TorchScript archives, state dicts, the Hugging Face and ~/.cache/clip
layouts, load settings recorded in the store and rebuilt by the server's probe, and one-line errors."""
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import huggingface_hub.constants
import open_clip
import pytest
import torch
from open_clip.pretrained import _pcfg
from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner

from app.probe import _load, spec_for
from store.schema import Model
from worker.cli.stages import worker_cli
from worker.compute.checkpoints import looks_like, save_openai_archive
from worker.compute.layers import activations, catalogue
from worker.compute.load_settings import LoadOverrides
from worker.compute.models import load_model, resolve_weights, save_checkpoint

CONFIG_DIR = Path(__file__).parent / "model_configs"
ROOT = Path(__file__).parent.parent


def openai_archive(arch: str, path: Path, seed: int = 0) -> torch.nn.Module:
    """A tiny random-init CLIP with QuickGELU saved in OpenAI's TorchScript format; returns the (fp16-cast)
    model whose state dict the archive holds."""
    open_clip.add_model_config(CONFIG_DIR)
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, quick_gelu=True)
    save_openai_archive(model, path)
    return model


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    folder = tmp_path_factory.mktemp("archives")
    return {arch: (folder / f"{arch}.pt", openai_archive(arch, folder / f"{arch}.pt"))
            for arch in ("tiny-rn-oa", "tiny-vit-oa")}


@pytest.fixture
def empty_caches(monkeypatch, tmp_path):
    """No Hugging Face or ~/.cache/clip weights, whatever this machine has cached."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("MICROSCOPE_WEIGHTS_CACHE", raising=False)
    return tmp_path


def layer_reads(loaded, x) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return activations(loaded, x, [s.name for s in catalogue(loaded)])


def uses_quick_gelu(model) -> bool:
    return any(isinstance(m, open_clip.transformer.QuickGELU) for m in model.modules())


@pytest.mark.parametrize("arch", ["tiny-rn-oa", "tiny-vit-oa"])
def test_archive_and_state_dict_of_the_same_model_read_identically(archives, tmp_path, arch):
    path, model = archives[arch]
    state = save_checkpoint(model, tmp_path / "state.pt")
    from_archive = load_model(arch, str(path), config_dirs=(CONFIG_DIR,))
    from_state = load_model(arch, str(state), config_dirs=(CONFIG_DIR,), overrides=LoadOverrides(quick_gelu=True))
    assert from_archive.settings.quick_gelu and uses_quick_gelu(from_archive.model)  # OpenAI's format: QuickGELU
    size = from_archive.image_size
    x = torch.rand(3, 3, size, size)
    a, b = layer_reads(from_archive, x), layer_reads(from_state, x)
    assert a.keys() == b.keys() and len(a) >= 2
    assert all(torch.equal(a[k], b[k]) for k in a)
    # … and both are the model open_clip's own OpenAI loader builds from the archive
    reference = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
    with torch.inference_mode():
        assert torch.equal(from_archive.model.encode_image(x), reference.encode_image(x))
        tokens = from_archive.tokenizer(["a photo of a cat"])
        assert torch.equal(from_archive.model.encode_text(tokens), reference.encode_text(tokens))


def test_the_state_dict_without_quickgelu_is_another_model(archives, tmp_path):
    path, model = archives["tiny-vit-oa"]
    gelu = load_model("tiny-vit-oa", str(save_checkpoint(model, tmp_path / "s.safetensors")), config_dirs=(CONFIG_DIR,))
    quick = load_model("tiny-vit-oa", str(path), config_dirs=(CONFIG_DIR,))
    assert not gelu.settings.quick_gelu and not uses_quick_gelu(gelu.model)
    x = torch.rand(2, 3, 32, 32)
    a, b = layer_reads(gelu, x), layer_reads(quick, x)
    assert a.keys() == b.keys() and not any(torch.allclose(a[k], b[k]) for k in a)


def test_the_file_kind_is_read_from_its_bytes_and_wrappers_are_undone(archives, tmp_path):
    path, model = archives["tiny-rn-oa"]
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(path.read_bytes())
    archive = load_model("tiny-rn-oa", str(renamed), config_dirs=(CONFIG_DIR,))
    assert archive.settings.quick_gelu  # a TorchScript archive, whatever its name
    legacy = tmp_path / "train.ckpt"  # the pre-zip torch.save format, DataParallel keys, a training wrapper
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, legacy,
               _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:1] == b"\x80"
    wrapped = load_model("tiny-rn-oa", str(legacy), config_dirs=(CONFIG_DIR,), overrides=LoadOverrides(quick_gelu=True))
    a, b = archive.model.state_dict(), wrapped.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def tiny_tag(monkeypatch, empty_caches):
    """Give tiny-vit-oa an open_clip tag (as the registry's real ones are: hf_hub repo, OpenAI-style url,
    non-default preprocessing), so files placed in the caches are found by tag."""
    cfg = _pcfg(url="https://example.invalid/clip/tiny-vit-oa.pt", hf_hub="timm/tiny_vit_oa.test/",
                mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize_mode="squash", interpolation="bilinear",
                quick_gelu=True)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tiny-vit-oa", {"test": cfg})
    return empty_caches


def test_a_tag_is_found_offline_in_the_hugging_face_layout_with_its_settings(archives, tiny_tag, tmp_path):
    path, model = archives["tiny-vit-oa"]
    snapshot = tiny_tag / "hub" / "models--timm--tiny_vit_oa.test" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    save_checkpoint(model, snapshot / "open_clip_pytorch_model.bin")
    loaded = load_model("tiny-vit-oa", "test", config_dirs=(CONFIG_DIR,))
    s = loaded.settings
    assert (s.quick_gelu, s.mean, s.std, s.interpolation, s.resize_mode) == (True, (0.5,) * 3, (0.5,) * 3,
                                                                             "bilinear", "squash")
    by_path = load_model("tiny-vit-oa", str(snapshot / "open_clip_pytorch_model.bin"), config_dirs=(CONFIG_DIR,))
    assert by_path.settings == s and by_path.tag == "test"  # the resolved path keeps the tag's set-up
    x = torch.rand(2, 3, 32, 32)
    reference = load_model("tiny-vit-oa", str(path), config_dirs=(CONFIG_DIR,))
    a, b = layer_reads(loaded, x), layer_reads(reference, x)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_tag_is_found_in_the_openai_cache_and_a_given_cache_dir(archives, tiny_tag, monkeypatch):
    path, _ = archives["tiny-vit-oa"]
    clip = tiny_tag / ".cache" / "clip"
    clip.mkdir(parents=True)
    (clip / "tiny-vit-oa.pt").write_bytes(path.read_bytes())
    loaded = load_model("tiny-vit-oa", "test", config_dirs=(CONFIG_DIR,))
    assert loaded.settings.resize_mode == "squash" and uses_quick_gelu(loaded.model)
    other = tiny_tag / "elsewhere"
    other.mkdir()
    (clip / "tiny-vit-oa.pt").rename(other / "tiny-vit-oa.pt")
    monkeypatch.setenv("MICROSCOPE_WEIGHTS_CACHE", str(other))  # the CLI's --cache-dir reads this variable
    result = CliRunner().invoke(worker_cli, ["layers", "tiny-vit-oa", "--weights", "test", "--config-dir",
                                             str(CONFIG_DIR)])
    assert result.exit_code == 0, result.output
    assert "QuickGELU on, mean 0.5, 0.5, 0.5, std 0.5, 0.5, 0.5, bilinear, squash" in result.stdout


def test_real_tags_resolve_to_the_names_openai_and_hugging_face_use(empty_caches):
    clip = empty_caches / ".cache" / "clip"
    clip.mkdir(parents=True)
    for name in ("RN50.pt", "RN50x4.pt", "ViT-B-32.pt", "ViT-L-14.pt", "ViT-L-14-336px.pt"):
        (clip / name).write_bytes(b"")
    assert resolve_weights("RN50x4", "openai") == str(clip / "RN50x4.pt")
    assert resolve_weights("ViT-L-14-336-quickgelu", "openai") == str(clip / "ViT-L-14-336px.pt")
    hub = empty_caches / "hub" / "models--laion--CLIP-ViT-L-14-laion2B-s32B-b82K" / "snapshots" / "r1"
    hub.mkdir(parents=True)
    (hub / "open_clip_model.safetensors").write_bytes(b"")
    assert resolve_weights("ViT-L-14", "laion2b_s32b_b82k") == str(hub / "open_clip_model.safetensors")


def test_the_store_records_the_settings_and_the_probe_rebuilds_the_same_model(archives, settings, store,
                                                                              monkeypatch):
    path, _ = archives["tiny-vit-oa"]
    monkeypatch.setenv("MICROSCOPE_DATABASE_URL", settings.db_url)
    monkeypatch.setenv("MICROSCOPE_DATA_DIR", str(settings.data_dir))
    args = ["register", "tiny-vit-oa", "--weights", str(path), "--config-dir", str(CONFIG_DIR), "--name", "oa",
            "--mean", "0.5,0.4,0.3", "--std", "0.2 0.25 0.3", "--interpolation", "bilinear",
            "--resize-mode", "longest", "--image-size", "48"]
    result = CliRunner().invoke(worker_cli, args)
    assert result.exit_code == 0, result.output
    with store.sessions() as session:
        model = session.scalar(select(Model).where(Model.name == "oa"))
        assert model.image_size == 48
        assert model.load == {"quick_gelu": True, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3],
                              "interpolation": "bilinear", "resize_mode": "longest", "image_size": 48,
                              "config_dirs": ["tests/model_configs"], "tag": None}
        spec = spec_for(session, model)
    with ThreadPoolExecutor(1) as probe_thread:  # what the server's probe thread loads (it turns grad off there)
        served = probe_thread.submit(_load, spec, 0).result()
    worker = load_model("tiny-vit-oa", str(path), config_dirs=(CONFIG_DIR,), overrides=LoadOverrides(
        True, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bilinear", "longest", 48))
    assert served.settings == worker.settings
    image = Image.fromarray((torch.rand(50, 120, 3) * 255).byte().numpy())
    x = served.preprocess(image).unsqueeze(0)
    assert x.shape == (1, 3, 48, 48) and torch.equal(x, worker.preprocess(image).unsqueeze(0))
    a, b = layer_reads(served, x), layer_reads(worker, x)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    plain = load_model("tiny-vit-oa", str(path), config_dirs=(CONFIG_DIR,), overrides=LoadOverrides(image_size=48))
    assert not torch.equal(plain.preprocess(image), x[0])  # the recorded transform is not the default one


# -- one line, no traceback ----------------------------------------------------------------------------
def _non_clip_archive(path: Path) -> Path:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    net(torch.rand(1, 3, 8, 8))
    torch.jit.save(torch.jit.trace(net, torch.rand(1, 3, 8, 8)), str(path))
    return path


def _unregistered_vit(path: Path) -> Path:
    """A ViT CLIP of sizes no registered config has (built without the registry)."""
    model = open_clip.model.CLIP(64, {"image_size": 32, "layers": 1, "width": 96, "patch_size": 8, "head_width": 48},
                                 {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1})
    return save_checkpoint(model, path)


def _truncated(source: Path, path: Path) -> Path:
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return path


BAD = {
    "wrong architecture": (lambda a, t: a["tiny-vit-oa"][0], "tiny-rn-oa", [],
                           ["does not fit tiny-rn-oa", "missing keys (visual.bn1.weight", "unexpected keys",
                            "looks like ViT (width 64, layers 2, patch_size 8, image_size 32, embed_dim 64, "
                            "text_width 64, text_layers 1) = tiny-vit / tiny-vit-oa", "; pass that architecture"]),
    "wrong input size": (lambda a, t: a["tiny-rn-oa"][0], "tiny-rn-oa", ["--image-size", "96"],
                         ["1 tensor of another shape (e.g. visual.attnpool.positional_embedding is [5, 512] in the "
                          "file, [10, 512] here)", "ModifiedResNet (width 16, layers [1, 1, 1, 1], image_size 64",
                          "which is tiny-rn-oa's config: an option (--image-size?)"]),
    "non-CLIP archive": (lambda a, t: _non_clip_archive(t / "net.pt"), "tiny-rn-oa", [],
                         ["missing keys", "not an open_clip CLIP (no visual.* tower; keys like 0.weight"]),
    "no config matches": (lambda a, t: _unregistered_vit(t / "wide.safetensors"), "tiny-vit-oa", [],
                          ["looks like ViT (width 96, layers 1, patch_size 8, image_size 32, embed_dim 64, "
                           "text_width 64, text_layers 1), which no open_clip config matches; write one "
                           "(--config-dir)"]),
    "truncated archive": (lambda a, t: _truncated(a["tiny-rn-oa"][0], t / "half.pt"), "tiny-rn-oa", [],
                          ["half.pt is truncated or corrupt"]),
    "truncated safetensors": (lambda a, t: _truncated(save_checkpoint(a["tiny-rn-oa"][1], t / "w.safetensors"),
                                                      t / "cut.safetensors"), "tiny-rn-oa", [],
                              ["cut.safetensors (safetensors file) cannot be read, it is truncated or corrupt"]),
    "not a checkpoint": (lambda a, t: (t / "notes.pt").write_text("hello") and t / "notes.pt", "tiny-rn-oa", [],
                         ["notes.pt is not a checkpoint", "b'hello'"]),
    "pickled objects": (lambda a, t: torch.save({"state_dict": {}, "args": Path("x")}, t / "obj.pt") or t / "obj.pt",
                        "tiny-rn-oa", [], ["holds Python objects besides tensors", "Unsupported global: GLOBAL "
                                           "pathlib.PosixPath", "save its model.state_dict()"]),
    "bad --mean": (lambda a, t: a["tiny-rn-oa"][0], "tiny-rn-oa", ["--mean", "0.5,0.5"],
                   ["--mean takes three numbers"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_checkpoint_is_one_line_through_the_cli(archives, tmp_path, empty_caches, case):
    make, arch, extra, needles = BAD[case]
    path = make(archives, tmp_path)
    result = CliRunner().invoke(worker_cli, ["layers", arch, "--weights", str(path), "--config-dir",
                                             str(CONFIG_DIR), *extra])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0]


def test_a_real_process_prints_only_the_one_line(archives):
    """Through the installed CLI in a fresh interpreter: no warning or log line besides the error."""
    cli = str(Path(sys.executable).parent / "microscope")
    wrong = subprocess.run([cli, "worker", "layers", "tiny-rn-oa", "--weights", str(archives["tiny-vit-oa"][0]),
                            "--config-dir", str(CONFIG_DIR)], capture_output=True, text=True, cwd=ROOT)
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    assert "looks like ViT" in wrong.stderr and "Traceback" not in wrong.stderr


def test_every_command_that_loads_a_model_takes_the_same_loading_options():
    import typer.main

    commands = typer.main.get_command(worker_cli).commands
    options = {name: {p.name for p in cmd.params} for name, cmd in commands.items()}
    shared = {"arch", "weights", "config_dir", "quickgelu", "mean", "std", "interpolation", "resize_mode",
              "image_size", "cache_dir"}
    loaders = {name for name, params in options.items() if "weights" in params}
    assert loaders >= {"layers", "register", "examples", "featurevis", "words", "maps", "attribution", "emotions",
                       "typographic", "stroop"}
    assert all(shared <= options[name] for name in loaders)


@pytest.mark.parametrize("arch, like", [
    ("RN50x4", "ModifiedResNet (width 80, layers [4, 6, 10, 6], image_size 288, embed_dim 640, text_width 640, "
               "text_layers 12) = RN50x4 / "),
    ("ViT-B-32", "ViT (width 768, layers 12, patch_size 32, image_size 224, embed_dim 512, text_width 512, "
                 "text_layers 12) = ViT-B-32 / ViT-B-32-quickgelu"),
    ("ViT-L-14-336", "ViT (width 1024, layers 24, patch_size 14, image_size 336, embed_dim 768, text_width 768, "
                     "text_layers 12) = ViT-L-14-336 / "),
])
def test_a_real_size_checkpoint_is_named_by_the_open_clip_configs_it_matches(arch, like):
    """Shapes of the real architectures (on the meta device: no memory), matched against every config."""
    with torch.device("meta"):
        state = open_clip.create_model(arch, device="meta").state_dict()
    assert like in looks_like(state, "RN50")
