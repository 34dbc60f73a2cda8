"""Attribution from text to the vision neurons of the penultimate layer (paper, "Understanding Language").

CLIP scores an image against a text by the cosine of their embeddings. Near the top of the image tower
the embedding is (almost) a linear read-out of the penultimate neurons, image_emb ≈ Wᵀ a + const, so the
logit of text t moves with a_u by about W[u] · t: that dot product is the attribution of t to neuron u.

Read-outs, one per image-tower class (units × embed_dim):

- ModifiedResNet: W = (attnpool.c_proj.weight @ attnpool.v_proj.weight)ᵀ over the layer4 channels.
  When a channel rises equally at every position, attention pooling passes the rise through its value
  and output projections unchanged (the attention weights sum to one), so this is exact for a uniform
  rise and a first-order approximation otherwise. Biases and positional terms are constants.
- VisionTransformer: a hidden unit h of the last block's MLP writes ls_2 · mlp.c_proj.weight[:, h] into
  the residual stream of every token; ln_post then centres it, scales it by its gain and by 1/σ of the
  pooled token, and `proj` maps it to the embedding. W = (proj ᵀ · diag(ln_post.weight) · centring ·
  ls_2 · c_proj.weight)ᵀ. Approximations: 1/σ (one positive number per image, the same for every unit)
  and ln_post's bias are dropped, so W ranks units for a text exactly as the linearised model does, but
  its scale is relative. The read-out goes through the pooled token (the class token for 'tok' pooling,
  the mean of the patch tokens for 'avg'); the stored neuron activations are the patch tokens.
"""
import hashlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import select
from torch import nn

from app.db import Artifact, Layer, Model
from app.web import ROOT
from worker.layers import layer_spec
from worker.models import LoadedModel
from worker.store import Store, finish_run, start_run

ARTIFACT_NAME = "readout"


def _resnet_readout(visual: nn.Module) -> torch.Tensor:
    pool = visual.attnpool
    return (pool.c_proj.weight @ pool.v_proj.weight).T


def _vit_readout(visual: nn.Module) -> torch.Tensor:
    if getattr(visual, "attn_pool", None) is not None or visual.proj is None:
        raise ValueError("this ViT pools with attention or has no projection; no linear read-out is defined")
    block = visual.transformer.resblocks[-1]
    write = block.mlp.c_proj.weight  # (width, hidden): what each hidden unit adds to the residual stream
    gamma = getattr(block.ls_2, "gamma", None)
    if gamma is not None:
        write = gamma[:, None] * write
    centred = write - write.mean(dim=0, keepdim=True)
    gain = getattr(visual.ln_post, "weight", None)
    if gain is not None:
        centred = gain[:, None] * centred
    return centred.T @ visual.proj


READOUTS: dict[str, tuple[Callable[[nn.Module], torch.Tensor], str]] = {
    "ModifiedResNet": (_resnet_readout, "(attnpool.c_proj.weight @ attnpool.v_proj.weight).T over layer4"),
    "VisionTransformer": (_vit_readout, "last block mlp.c_proj, centred, ln_post gain, proj (1/sigma dropped)"),
}


def readout_method(loaded: LoadedModel) -> tuple[Callable[[nn.Module], torch.Tensor], str]:
    name = type(loaded.visual).__name__
    if name not in READOUTS:
        raise ValueError(f"no linear read-out for image tower {name}; known: {', '.join(READOUTS)}")
    return READOUTS[name]


def readout_matrix(loaded: LoadedModel) -> np.ndarray:
    """W (penultimate units × embed_dim, float32): how much each neuron moves the image embedding."""
    fn, _ = readout_method(loaded)
    with torch.no_grad():
        return fn(loaded.visual).detach().float().cpu().numpy()


def embed_texts(loaded: LoadedModel, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length text embeddings (texts × embed_dim, float32) from the model's text tower."""
    if not hasattr(loaded.model, "encode_text"):
        raise ValueError(f"{loaded.arch} has no text tower")
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            tokens = loaded.tokenizer(list(texts[i:i + batch_size])).to(loaded.device)
            out.append(loaded.model.encode_text(tokens, normalize=True).float().cpu().numpy())
    if not out:
        return np.zeros((0, readout_matrix(loaded).shape[1]), dtype=np.float32)
    return np.concatenate(out)


def text_attribution(loaded: LoadedModel, texts: Sequence[str], readout: np.ndarray | None = None) -> np.ndarray:
    """Attribution of each text to each penultimate neuron (texts × units): W · t for unit-length t."""
    w = readout_matrix(loaded) if readout is None else readout
    return embed_texts(loaded, texts) @ w.T


def portable_path(path: str | Path) -> str:
    """A path inside the repository is stored relative to it, so another checkout finds it too."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def store_readout(store: Store, model_name: str, loaded: LoadedModel,
                  config_dirs: Sequence[str | Path] = ()) -> Artifact:
    """Keep the model's read-out matrix as a cache .npy with an `artifacts` row (name "readout").

    The row's meta holds what the server needs to re-create the text tower: arch, weights, config dirs."""
    if not loaded.weights:
        raise ValueError(f"model {model_name} has no weights (random init): a server could not re-create "
                         "the text tower that goes with its neurons. Pass --weights.")
    spec = layer_spec(loaded)
    w = readout_matrix(loaded)
    _, method = readout_method(loaded)
    meta = {"arch": loaded.arch, "weights": str(loaded.weights), "config_dirs": [portable_path(d) for d in config_dirs],
            "units": int(w.shape[0]), "embed_dim": int(w.shape[1]), "method": method}
    with store.sessions.begin() as session:
        model = session.scalar(select(Model).where(Model.name == model_name))
        layer = model and session.scalar(select(Layer).where(Layer.model_id == model.id, Layer.name == spec.name))
        if layer is None or layer.n_units != w.shape[0]:
            raise ValueError(f"the store has no model {model_name} with a layer {spec.name} of {w.shape[0]} units "
                             f"(the penultimate layer of {loaded.arch}); register the model first")
        run = start_run(session, "attribution", model, meta, layer=spec.name)
        path = write_npy(store, f"artifacts/{model_name}/{spec.name}", w)
        art = session.scalar(select(Artifact).where(Artifact.model_id == model.id, Artifact.layer == spec.name,
                                                    Artifact.name == ARTIFACT_NAME))
        if art is None:
            art = Artifact(model_id=model.id, layer=spec.name, name=ARTIFACT_NAME, path=path)
            session.add(art)
        art.path, art.meta, art.run_id = path, meta, run.id
        finish_run(session, run, {"units": int(w.shape[0]), "path": path})
        session.flush()
        session.expunge(art)
    return art


def write_npy(store: Store, folder: str, array: np.ndarray) -> str:
    """Content-addressed .npy in the cache, so a served URL never changes meaning."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32))
    data = buf.getvalue()
    return store.cache.write(f"{folder}/{ARTIFACT_NAME}-{hashlib.sha256(data).hexdigest()[:16]}.npy", data)


def registered_config_dirs(arch: str) -> list[Path]:
    """The directories registered with open_clip (add_model_config) that hold `arch`'s JSON config;
    empty for a built-in architecture."""
    import open_clip

    builtin = Path(open_clip.__file__).resolve().parent / "model_configs"
    dirs = getattr(open_clip.factory, "_MODEL_CONFIG_PATHS", [])
    return [Path(d) for d in dirs if Path(d).is_dir() and Path(d).resolve() != builtin
            and (Path(d) / f"{arch}.json").is_file()]

