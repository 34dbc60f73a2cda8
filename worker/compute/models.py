"""Load any open_clip model: architecture by name (built-in or a registered config directory),
weights by open_clip tag (found offline in the local caches) or by a local checkpoint file.

Nothing here touches the network: a tag whose weights are not on disk fails at once with a message
that says where to put them, instead of open_clip's ~47 s DNS retry loop. The model is built the way its
weights were trained: QuickGELU and the image transform (mean, std, interpolation, resize mode) come from
open_clip's pretrained config of the tag, also when the weights are a file that is a known tag's (found in
the Hugging Face cache layout or named like OpenAI's archives); OpenAI's TorchScript archives get QuickGELU;
anything can be overridden (`LoadOverrides`), and `LoadedModel.record()` is what the store keeps so the
server's probes rebuild exactly the same model.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # must precede any huggingface_hub import

import logging  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import open_clip  # noqa: E402
import torch  # noqa: E402
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME  # noqa: E402
from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model  # noqa: E402
from open_clip.transform import PreprocessCfg, image_transform_v2  # noqa: E402

from worker.compute.checkpoints import (  # noqa: E402
    NUMPY,
    TORCHSCRIPT,
    CheckpointError,
    checkpoint_format,
    looks_like,
    misfit,
    read_state_dict,
)
from worker.compute.load_settings import LoadOverrides, LoadSettings  # noqa: E402
from worker.compute.quiet import quiet_loading  # noqa: E402

__all__ = ["CheckpointError", "LoadedModel", "UnknownModel", "WeightsMissing", "load_model"]

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
    settings: LoadSettings | None = None  # how it was built (None only for hand-made instances)
    config_dirs: tuple[str, ...] = ()
    cache_dir: str | None = None
    tag: str | None = None  # the open_clip tag the weights are (also when given as a file)
    precision: str = "fp32"  # of the forward in stages that read it (words, maps): worker.compute.precision

    @property
    def visual(self) -> torch.nn.Module:
        return self.model.visual

    def record(self) -> dict:
        """What the store keeps (models.load) so the server rebuilds this model exactly."""
        extra = {"config_dirs": list(self.config_dirs), "tag": self.tag}
        if self.cache_dir:
            extra["cache_dir"] = self.cache_dir
        return {**(self.settings.record() if self.settings else {}), **extra}


def register_config_dir(path: str | Path) -> None:
    """Make the JSON model configs in `path` loadable by name (open_clip.add_model_config)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model config directory {path} does not exist")
    open_clip.add_model_config(path)


def is_checkpoint_path(weights: str) -> bool:
    return os.sep in weights or weights.endswith(CHECKPOINT_SUFFIXES) or Path(weights).exists()


def check_arch(arch: str) -> dict:
    """The architecture's open_clip model config, or UnknownModel naming how to add one."""
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise UnknownModel(
            f"unknown open_clip model {arch!r}. Built-in names include RN50, RN50x4, RN101, ViT-B-32; "
            f"register your own JSON config with --config-dir. ({len(open_clip.list_models())} known)"
        )
    return cfg


# -- which settings: the tag's pretrained config, the checkpoint's kind, the user's overrides ---------------
def tag_settings(arch: str, tag: str | None) -> LoadSettings:
    """What open_clip's pretrained config of (arch, tag) says the weights were trained with.

    open_clip itself only warns when a tag's quick_gelu differs from the model config's; the tag is how the
    weights were trained, so it wins (RN50 + yfcc15m is built as RN50-quickgelu)."""
    model_cfg = check_arch(arch)
    pretrained = get_pretrained_cfg(arch, tag) if tag else {}
    base = {**asdict(PreprocessCfg()), **{k: v for k, v in pretrained.items() if k in asdict(PreprocessCfg())}}
    return LoadSettings(quick_gelu=bool(pretrained.get("quick_gelu", model_cfg.get("quick_gelu", False))),
                        mean=tuple(base["mean"]), std=tuple(base["std"]), interpolation=base["interpolation"],
                        resize_mode=base["resize_mode"], image_size=native_size(model_cfg))


def native_size(model_cfg: dict) -> int:
    """The config's input side (open_clip's CLIPVisionCfg default when a config leaves it out)."""
    return model_cfg.get("vision_cfg", {}).get("image_size", 224)


def resolve_settings(arch: str, tag: str | None, kind: str | None, overrides: LoadOverrides) -> LoadSettings:
    """The tag's settings, QuickGELU for a TorchScript archive (OpenAI's format), then the user's overrides."""
    settings = tag_settings(arch, tag)
    if kind == TORCHSCRIPT and tag is None:
        settings = LoadOverrides(quick_gelu=True).apply(settings)
    return overrides.apply(settings)


def tag_of(arch: str, weights: str | None, path: str | None) -> str | None:
    """The open_clip tag the weights are: the one asked for, or the one the given file belongs to."""
    if path is None:
        return None
    return tag_of_file(arch, path) if is_checkpoint_path(weights) else weights


def tag_of_file(arch: str, path: str | Path) -> str | None:
    """The tag whose weights `path` is: a file in tag's Hugging Face repo folder, or named as its URL's file."""
    path = Path(path)
    repo = next((p[len("models--"):].replace("--", "/") for p in path.parts if p.startswith("models--")), None)
    for tag in list_pretrained_tags_by_model(arch):
        cfg = get_pretrained_cfg(arch, tag)
        if repo and hub_file(cfg)[0] == repo:
            return tag
        if cfg.get("url") and os.path.basename(cfg["url"]) == path.name:
            return tag
    return None


# -- where a tag's weights are: the Hugging Face cache layout, OpenAI's ~/.cache/clip ----------------------
def hub_file(cfg: dict) -> tuple[str, list[str]]:
    """(repo, file names to try) for a pretrained config's hf_hub field, as open_clip downloads it."""
    hub = cfg.get("hf_hub", "")
    if not hub:
        return "", []
    repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
    if not filename:
        return repo, [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    safe = [filename.rsplit(".", 1)[0] + ".safetensors"] if filename.endswith((".bin", ".pth")) else []
    return repo, [*safe, filename]


def hub_cache(cache_dir: str | None) -> Path:
    import huggingface_hub.constants

    return Path(cache_dir or huggingface_hub.constants.HF_HUB_CACHE).expanduser()


def clip_cache(cache_dir: str | None) -> Path:
    """OpenAI's download folder (~/.cache/clip, as clip.load and open_clip use), or the cache dir given."""
    return Path(cache_dir or "~/.cache/clip").expanduser()


def cached_weights(cfg: dict, cache_dir: str | None = None) -> str | None:
    """The tag's weights if a download (or a copy by hand) left them in the Hugging Face or OpenAI cache."""
    if cfg.get("file"):
        return cfg["file"] if Path(cfg["file"]).is_file() else None
    repo, names = hub_file(cfg)
    for name in names:
        hits = sorted((hub_cache(cache_dir) / f"models--{repo.replace('/', '--')}" / "snapshots").glob(f"*/{name}"),
                      key=lambda p: p.stat().st_mtime, reverse=True)
        if hits and hits[0].is_file():
            return str(hits[0])
    if cfg.get("url"):
        local = clip_cache(cache_dir) / os.path.basename(cfg["url"])
        if local.is_file():
            return str(local)
    return None


def missing_weights_message(arch: str, tag: str, cache_dir: str | None = None) -> str:
    cfg = get_pretrained_cfg(arch, tag)
    where = []
    repo, names = hub_file(cfg)
    if repo:
        where.append(f"the Hugging Face cache layout {hub_cache(cache_dir)}/models--{repo.replace('/', '--')}"
                     f"/snapshots/<rev>/{' or '.join(names)} (read with HF_HUB_OFFLINE=1)")
    if cfg.get("url"):
        where.append(str(clip_cache(cache_dir) / os.path.basename(cfg["url"])))
    return (f"weights {arch}/{tag} are not on this machine and nothing is downloaded here. Place them at "
            + " or ".join(where) + f", or pass a local checkpoint: --weights /path/to/{arch}.pt or .safetensors.")


def resolve_weights(arch: str, weights: str | None, cache_dir: str | None = None) -> str | None:
    """A local file for `weights` (a path or a tag), or None for random init. Never downloads."""
    if weights is None:
        return None
    if is_checkpoint_path(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsMissing(f"checkpoint file {path} not found. Pass an existing .pt/.safetensors file.")
        return str(path)
    tags = list_pretrained_tags_by_model(arch)
    if weights not in tags:
        raise WeightsMissing(
            f"{arch} has no open_clip weights tag {weights!r}; known tags: {', '.join(tags) or 'none'}. "
            "Or pass a local checkpoint path."
        )
    found = cached_weights(get_pretrained_cfg(arch, weights), cache_dir)
    if found is None:
        raise WeightsMissing(missing_weights_message(arch, weights, cache_dir))
    return found


# -- building and filling the model -----------------------------------------------------------------------
def build_model(arch: str, settings: LoadSettings, device: str) -> torch.nn.Module:
    """A random-init open_clip model built with `settings` (no weights: those are loaded and checked here)."""
    native = native_size(check_arch(arch))
    with quiet_logging(), quiet_loading():  # open_clip logs "initialized randomly": noise before a one-line error
        return open_clip.create_model(
            arch, pretrained=None, device=device, pretrained_text=False, quick_gelu=settings.quick_gelu,
            force_image_size=None if settings.image_size == native else settings.image_size,
            force_preprocess_cfg=settings.preprocess_overlay())


@contextmanager
def quiet_logging() -> Iterator[None]:
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(before)


def fill_weights(model: torch.nn.Module, path: str, kind: str, arch: str) -> None:
    """Load the checkpoint strictly, or CheckpointError in one line: what differs, what it looks like."""
    if kind == NUMPY:  # big_vision SigLIP weights: open_clip's own converter
        open_clip.load_checkpoint(model, path)
        return
    state = prepared_state(model, read_state_dict(path, kind))
    problem = misfit(model, state)
    if problem:
        raise CheckpointError(f"{path} does not fit {arch}: {problem}. {looks_like(state, arch)}")
    model.load_state_dict(state, strict=True)


def prepared_state(model: torch.nn.Module, state: dict) -> dict:
    """open_clip's `load_checkpoint` fixes, applied to a state dict read here (that reads from a path)."""
    from open_clip.factory import convert_state_dict, convert_to_custom_text_state_dict
    from open_clip.model import resize_pos_embed, resize_text_pos_embed

    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        have = getattr(model, key, None)
        if key in state and have is not None and have.ndim != state[key].ndim:
            state[key] = state[key].reshape(have.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None and "logit_scale" in state:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    state.pop("text.transformer.embeddings.position_ids", None)
    kept = model.state_dict()
    for name, _ in model.named_buffers():  # non-persistent ones (attn_mask): TorchScript saves them anyway
        if name not in kept:
            state.pop(name, None)
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    return state


def load_model(arch: str, weights: str | None = None, device: str = "cpu",
               config_dirs: tuple[str | Path, ...] = (), overrides: LoadOverrides | None = None) -> LoadedModel:
    """Load an open_clip model for inference. Fails fast (< 1 s) with one line when weights are missing or
    do not fit; `overrides` fix QuickGELU and preprocessing by hand (a stored record fixes all of them)."""
    overrides = overrides or LoadOverrides()
    for d in config_dirs:
        register_config_dir(d)
    check_arch(arch)
    path = resolve_weights(arch, weights, overrides.cache_dir)
    kind = checkpoint_format(path) if path else None
    tag = tag_of(arch, weights, path)
    settings = resolve_settings(arch, tag, kind, overrides)
    model = build_model(arch, settings, device)
    if path:
        fill_weights(model, path, kind, arch)
    model.eval()
    pp = PreprocessCfg(**model.visual.preprocess_cfg)
    return LoadedModel(arch=arch, weights=weights, model=model, preprocess=preprocess_for(model),
                       tokenizer=open_clip.get_tokenizer(arch), image_size=settings.image_size,
                       mean=tuple(pp.mean), std=tuple(pp.std), device=torch.device(device), settings=settings,
                       config_dirs=tuple(portable(d) for d in config_dirs), cache_dir=overrides.cache_dir, tag=tag)


def preprocess_for(model: torch.nn.Module) -> Callable:
    """The inference transform open_clip's create_model_and_transforms gives for the model as built."""
    return image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)


def portable(path: str | Path) -> str:
    """A config dir as the store keeps it: relative to the repository when inside it (the server's copy may
    live elsewhere), else absolute."""
    from store.paths import ROOT

    path = Path(path).expanduser().resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


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
