"""Load any open_clip model: architecture by name (built-in or a registered config directory),
weights by open_clip tag (found offline in the local caches) or by a local checkpoint file.

Nothing here touches the network: a tag whose weights are not on disk fails at once with a message
that says how to supply them, instead of open_clip's ~47 s DNS retry loop.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # must precede any huggingface_hub import

from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import open_clip  # noqa: E402
import torch  # noqa: E402
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME  # noqa: E402
from open_clip.pretrained import get_pretrained_cfg  # noqa: E402

from worker.quiet import quiet_loading  # noqa: E402

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class WeightsMissing(RuntimeError):
    """The weights asked for are not on this machine (and nothing will be downloaded)."""


class UnknownModel(ValueError):
    """No open_clip architecture or registered config of that name."""


@dataclass
class LoadedModel:
    arch: str
    weights: str | None  # what the user asked for (tag or path); None = random init
    model: torch.nn.Module
    preprocess: Callable  # PIL image -> normalised tensor at the native resolution
    tokenizer: Callable
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    precision: str = "fp32"  # of the forward in stages that read it (words, maps): worker.precision

    @property
    def visual(self) -> torch.nn.Module:
        return self.model.visual


def register_config_dir(path: str | Path) -> None:
    """Make the JSON model configs in `path` loadable by name (open_clip.add_model_config)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model config directory {path} does not exist")
    open_clip.add_model_config(path)


def is_checkpoint_path(weights: str) -> bool:
    return os.sep in weights or weights.endswith(CHECKPOINT_SUFFIXES) or Path(weights).exists()


def resolve_arch(arch: str, weights: str | None) -> str:
    """OpenAI weights need QuickGELU: `RN50` + `openai` becomes `RN50-quickgelu`."""
    if arch not in open_clip.list_models():
        raise UnknownModel(
            f"unknown open_clip model {arch!r}. Built-in names include RN50, RN50x4, RN101, ViT-B-32; "
            f"register your own JSON config with --config-dir. ({len(open_clip.list_models())} known)"
        )
    quick = f"{arch}-quickgelu"
    if weights == "openai" and not arch.endswith("-quickgelu") and quick in open_clip.list_models():
        return quick
    return arch


def resolve_weights(arch: str, weights: str | None) -> str | None:
    """A local file for `weights` (a path or a tag), or None for random init. Never downloads."""
    if weights is None:
        return None
    if is_checkpoint_path(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsMissing(f"checkpoint file {path} not found. Pass an existing .pt/.safetensors file.")
        return str(path)
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if weights not in tags:
        raise WeightsMissing(
            f"{arch} has no open_clip weights tag {weights!r}; known tags: {', '.join(tags) or 'none'}. "
            "Or pass a local checkpoint path."
        )
    found = cached_weights(get_pretrained_cfg(arch, weights))
    if found is None:
        raise WeightsMissing(missing_weights_message(arch, weights))
    return found


def cached_weights(cfg: dict) -> str | None:
    """The tag's weights if a previous download left them in the Hugging Face or OpenAI cache."""
    if cfg.get("file"):
        return cfg["file"] if Path(cfg["file"]).is_file() else None
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        for name in [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]:
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str) and Path(hit).is_file():
                return hit
    url = cfg.get("url", "")
    if url:
        local = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if local.is_file():
            return str(local)
    return None


def missing_weights_message(arch: str, tag: str) -> str:
    cfg = get_pretrained_cfg(arch, tag)
    where = []
    if cfg.get("hf_hub"):
        repo = cfg["hf_hub"].rstrip("/")
        where.append(f"the Hugging Face cache layout for repo {repo} (file {HF_WEIGHTS_NAME} or "
                     f"{HF_SAFE_WEIGHTS_NAME}) under $HF_HOME, used with HF_HUB_OFFLINE=1")
    if cfg.get("url"):
        where.append(f"~/.cache/clip/{os.path.basename(cfg['url'])}")
    return (f"weights {arch}/{tag} are not on this machine and nothing is downloaded here. "
            f"Pass a local checkpoint (--weights /path/to/{arch}.pt or .safetensors), or place them at "
            + " or ".join(where) + ".")


def load_model(arch: str, weights: str | None = None, device: str = "cpu",
               config_dirs: tuple[str | Path, ...] = ()) -> LoadedModel:
    """Load an open_clip model for inference. Fails fast (< 1 s) when weights are missing."""
    for d in config_dirs:
        register_config_dir(d)
    resolved_arch = resolve_arch(arch, weights)
    path = resolve_weights(resolved_arch, weights)
    with quiet_loading():
        model, _, preprocess = open_clip.create_model_and_transforms(resolved_arch, pretrained=path,
                                                                     device=device)
    model.eval()
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else int(size)
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    return LoadedModel(arch=resolved_arch, weights=weights, model=model, preprocess=preprocess,
                       tokenizer=open_clip.get_tokenizer(resolved_arch), image_size=size,
                       mean=mean, std=std, device=torch.device(device))


def save_checkpoint(model: torch.nn.Module, path: str | Path) -> Path:
    """Save a state dict that `load_model(arch, weights=path)` loads back (.safetensors or .pt)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def revive_random_resnet(model: torch.nn.Module, value: float = 1.0) -> torch.nn.Module:
    """open_clip zero-initialises every bottleneck's bn3.weight, leaving a random-init ModifiedResNet's
    deep layers nearly dead; tests and benchmarks on random weights set them to `value` first."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("bn3") and isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(value)
    return model
