"""Read a checkpoint file whatever its format, and say in one line why it does not fit a model.

Formats: a `torch.save` state dict (zip or legacy pickle; bare, `module.`-prefixed, or wrapped in
{"state_dict": …} / {"model": …}), a .safetensors file, and a TorchScript archive such as OpenAI's own
RN50.pt … ViT-L-14.pt (read as open_clip's `load_openai_model` does: `torch.jit.load(…).state_dict()`).
Every failure is a `CheckpointError` whose message is one line naming the file and what is wrong.
"""
import pickle
import warnings
import zipfile
from pathlib import Path

import open_clip
import torch

TORCHSCRIPT, TORCH, SAFETENSORS, NUMPY = "TorchScript archive", "torch.save file", "safetensors file", "numpy file"
OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")  # ints OpenAI's archives keep as tensors
LEGACY_PICKLE = b"\x80"  # torch.save's pre-zip format starts with a pickle protocol opcode
SHOWN = 3  # key names quoted in a message


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the architecture asked for (one-line message)."""


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def checkpoint_format(path: str | Path) -> str:
    """Which reader a file needs, from its first bytes (never from its name alone)."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return _zip_format(path)
    if head[:6] == b"\x93NUMPY":
        return NUMPY
    if len(head) == 9 and head[8:9] == b"{":
        return SAFETENSORS
    if head[:1] == LEGACY_PICKLE:
        return TORCH
    raise CheckpointError(f"{path} is not a checkpoint: expected a torch.save .pt/.pth/.bin, a TorchScript archive "
                          f"or a .safetensors file, but it starts with {head[:8]!r}")


def _zip_format(path: Path) -> str:
    try:
        names = zipfile.ZipFile(path).namelist()
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"{path} is truncated or corrupt: it starts like a zip archive (a .pt checkpoint or "
                              f"TorchScript archive) but its directory cannot be read ({e})") from None
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return TORCHSCRIPT
    if any(n.endswith("data.pkl") for n in names):
        return TORCH
    if names and all(n.endswith(".npy") for n in names):
        return NUMPY
    raise CheckpointError(f"{path} is a zip archive but not a PyTorch checkpoint (no data.pkl inside; holds "
                          f"{', '.join(names[:SHOWN]) or 'nothing'})")


def read_state_dict(path: str | Path, kind: str) -> dict[str, torch.Tensor]:
    """The file's tensors by name, unwrapped to the model's own keys."""
    try:
        raw = _read(Path(path), kind)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 — each reader has its own exceptions; all mean "unreadable"
        raise CheckpointError(f"{path} ({kind}) cannot be read, it is truncated or corrupt: {first_line(e)}") from None
    return unwrap(raw, path)


def _read(path: Path, kind: str):
    if kind == TORCHSCRIPT:
        with warnings.catch_warnings():  # torch 2.x calls torch.jit deprecated: noise on a one-line CLI
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu").state_dict()
    if kind == SAFETENSORS:
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = next((line.strip() for line in str(e).splitlines() if "Unsupported global" in line), first_line(e))
        raise CheckpointError(f"{path} holds Python objects besides tensors, which safe loading refuses "
                              f"({why}); save its model.state_dict() instead") from None


def unwrap(raw, path) -> dict[str, torch.Tensor]:
    """The tensors of {"state_dict": …} / {"model": …} wrappers, without a DataParallel `module.` prefix."""
    for key in ("state_dict", "model"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
    if not isinstance(raw, dict) or not raw:
        raise CheckpointError(f"{path} holds a {type(raw).__name__}{' that is empty' if not raw else ''}, "
                              "not a state dict of named tensors")
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor) and k not in OPENAI_EXTRAS}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors (keys: {', '.join(map(str, list(raw)[:SHOWN]))}…)")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def misfit(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """What keeps `state` from loading strictly into `model`, or None when it fits."""
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [k for k in want if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    parts = [_keys(len(missing), "missing", missing), _keys(len(unexpected), "unexpected", unexpected)]
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} {'tensor' if len(shapes) == 1 else 'tensors'} of another shape (e.g. {k} "
                     f"is {list(state[k].shape)} in the file, {list(want[k].shape)} here)")
    parts = [p for p in parts if p]
    return "; ".join(parts) if parts else None


def _keys(n: int, what: str, keys: list[str]) -> str:
    if not n:
        return ""
    return f"{n} {what} keys ({', '.join(keys[:SHOWN])}{', …' if n > SHOWN else ''})"


def looks_like(state: dict[str, torch.Tensor], arch: str) -> str:
    """The architecture the keys and shapes describe, the open_clip configs that match it, and what to do."""
    shape = describe(state)
    if shape is None:
        return (f"The file is not an open_clip CLIP (no visual.* tower; keys like {', '.join(list(state)[:SHOWN])})"
                "; pass a CLIP checkpoint")
    decoder = any(k.startswith("text_decoder.") for k in state)  # CoCa
    names = [n for n in open_clip.list_models() if _matches(open_clip.get_model_config(n) or {}, shape, decoder)]
    names.sort(key=len)  # the plain name (ViT-L-14) before its variants (ViT-L-14-quickgelu)
    sizes = ", ".join(f"{k} {v}" for k, v in shape.items() if k != "tower")
    text = f"The file looks like {shape['tower']}" + (f" ({sizes})" if sizes else "")
    if shape["tower"] == "timm tower":
        return f"{text}; pass the open_clip architecture it was trained as (a timm trunk's keys name no sizes here)"
    if arch in names:
        return f"{text}, which is {arch}'s config: an option (--image-size?) built another model"
    if names:
        return f"{text} = {' / '.join(names[:SHOWN])}; pass that architecture"
    return f"{text}, which no open_clip config matches; write one (--config-dir)"


def describe(state: dict[str, torch.Tensor]) -> dict | None:
    """The vision tower's family and sizes, as OpenAI's `build_model` reads them from the keys."""
    embed, text = state.get("text_projection"), state.get("ln_final.weight")
    base = {"embed_dim": int(embed.shape[1])} if embed is not None and embed.ndim == 2 else {}
    if text is not None:
        base["text_width"] = int(text.shape[0])
        base["text_layers"] = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
    if "visual.conv1.weight" in state and "visual.positional_embedding" in state:
        conv = state["visual.conv1.weight"]
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        layers = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
        return {"tower": "ViT", "width": int(conv.shape[0]), "layers": layers, "patch_size": int(conv.shape[-1]),
                "image_size": int(conv.shape[-1]) * grid, **base}
    if "visual.layer1.0.conv1.weight" in state and "visual.attnpool.positional_embedding" in state:
        counts = [len({k.split(".")[2] for k in state if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4)]
        side = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        return {"tower": "ModifiedResNet", "width": int(state["visual.layer1.0.conv1.weight"].shape[0]),
                "layers": counts, "image_size": side * 32, **base}
    if any(k.startswith("visual.trunk.") for k in state):
        return {"tower": "timm tower", **base}
    return None


def _matches(cfg: dict, shape: dict, decoder: bool) -> bool:
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if shape["tower"] == "timm tower" or "timm_model_name" in vision or ("multimodal_cfg" in cfg) != decoder:
        return False
    if "text_width" in shape and "hf_model_name" in text:  # the file's text tower is open_clip's own
        return False
    layers = vision.get("layers")
    layers = list(layers) if isinstance(layers, list | tuple) else layers
    want = {"width": vision.get("width"), "layers": layers, "image_size": vision.get("image_size"),
            "embed_dim": cfg.get("embed_dim"), "text_width": text.get("width", 512),  # CLIPTextCfg's defaults
            "text_layers": text.get("layers", 12)}
    if shape["tower"] == "ViT":
        want["patch_size"] = vision.get("patch_size")
    elif not isinstance(layers, list):
        return False
    return all(shape.get(k) == v for k, v in want.items() if k in shape)


def save_openai_archive(model: torch.nn.Module, path: str | Path) -> Path:
    """Save `model` as OpenAI saved RN50.pt … ViT-L-14.pt, for tests and benchmarks (no real archive exists
    here): weights cast to fp16 as OpenAI's `convert_weights` did (the model is cast in place), an
    `input_resolution` tensor, the text mask a constant of the trace (not a tensor in the state dict), and
    `torch.jit.trace` of forward / encode_text / encode_image. open_clip's `load_openai_model` reads it."""
    from open_clip.model import convert_weights_to_lp

    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else int(size)
    image, text = torch.rand(2, 3, size, size), torch.zeros(2, model.context_length, dtype=torch.int)
    mask = model._buffers.pop("attn_mask")
    model.attn_mask = mask
    model.register_buffer("input_resolution", torch.tensor(size))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings and torch.jit's deprecation notices
            traced = torch.jit.trace_module(model.eval(), {"forward": (image, text), "encode_text": (text,),
                                                           "encode_image": (image,)}, check_trace=False)
            convert_weights_to_lp(model)  # the trace shares these parameters: the archive holds fp16 too
            torch.jit.save(traced, str(path))
    finally:
        del model.input_resolution, model.attn_mask
        model.register_buffer("attn_mask", mask, persistent=False)
    return Path(path)
