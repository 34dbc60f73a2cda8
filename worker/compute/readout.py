"""Attribution from text to the vision neurons of the penultimate layer (paper, "Understanding Language").

CLIP scores an image against a text by the cosine of their embeddings. A read-out W (units × embed_dim)
says how the raw image embedding moves when a neuron rises: W[u] ≈ ∂ image_embedding / ∂δ_u, where δ_u
raises unit u equally at every position (token) of the tensor the rest of the tower reads (the layer's
`write` tap, `worker.compute.towers`). The attribution of a unit-length text t to u is then W[u] · t.

Two read-outs:

- **autograd** (every family): the Jacobian itself, by backpropagation through the whole tower, with the
  layer's activation replaced by its mean over a corpus sample (per unit and position) plus δ. For a
  ResNet the rest of the tower reads only that activation, so this is the tower's derivative at the
  corpus-mean activation. For a transformer the residual stream the MLP adds to still comes from each
  sample image, and W is the mean of the per-image Jacobians. Exact to first order at that point;
  nothing else is approximated.
- **linear** (where a closed form exists), the same derivative with parts of the tower held fixed:
  - ModifiedResNet: W = (attnpool.c_proj.weight @ attnpool.v_proj.weight)ᵀ over the layer4 channels.
    A uniform rise moves every token (the mean-token query too) by the same vector; through values and
    output projection it passes unchanged because the attention weights sum to one, so this is exact
    **with the attention weights held fixed**. It drops how the weights move (the query is the mean
    token, which rises too; the keys' common shift cancels in the softmax). On the tiny random ResNet of
    the tests that term is 0.1 % of the derivative (its attention is near uniform); on trained weights
    `microscope worker attribution` prints the agreement for the model at hand.
  - VisionTransformer (open_clip, `tok` or `avg` pooling, no attention pool): a hidden unit h of the last
    block's MLP writes ls_2 · mlp.c_proj.weight[:, h] into the residual stream; ln_post centres it,
    scales it by its gain and by 1/σ of the pooled token, and `proj` maps it to the embedding.
    W = (proj ᵀ · diag(ln_post.weight) · centring · ls_2 · c_proj.weight)ᵀ. This is the derivative
    **with ln_post's statistics held fixed**, times σ: it drops 1/σ (one positive number per image,
    the same for every unit, so rankings for a text are unchanged) and the term of ln_post's Jacobian
    along the normalised token itself (−x̂ x̂ᵀ/d). With `avg` pooling each patch token has its own σ;
    they are all dropped alike.
  - timm ConvNeXt: the head averages the last stage over positions, LayerNorms the pooled vector and
    projects it: W = (head.proj.weight · diag(head.norm.weight) · centring)ᵀ, with the same two ln terms
    dropped as for the ViT.
  Earlier layers, attention pools (CoCa, SigLIP's map head) and other timm towers have no linear read-out.
"""
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from worker.compute.layers import family_of, layer_spec, neuron_layers
from worker.compute.models import LoadedModel


def _resnet_readout(visual: nn.Module) -> torch.Tensor:
    pool = visual.attnpool
    return (pool.c_proj.weight @ pool.v_proj.weight).T


def _vit_readout(visual: nn.Module) -> torch.Tensor:
    if getattr(visual, "attn_pool", None) is not None or visual.proj is None:
        raise NoLinearReadout("this ViT pools with attention or has no projection; no linear read-out is defined")
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


def _convnext_readout(visual: nn.Module) -> torch.Tensor:
    head, proj = visual.trunk.head, getattr(visual.head, "proj", None)
    if proj is None or not isinstance(getattr(head, "fc", None), nn.Identity):
        raise NoLinearReadout("this ConvNeXt head has no single linear projection; no linear read-out is defined")
    width = proj.in_features
    centring = torch.eye(width, device=proj.weight.device) - 1.0 / width  # row u: e_u - 1/C
    gain = getattr(head.norm, "weight", None)
    return (centring * gain[None, :] if gain is not None else centring) @ proj.weight.T


class NoLinearReadout(ValueError):
    """The tower has no closed-form read-out (the autograd one still exists)."""


LINEAR: dict[str, tuple[Callable[[nn.Module], torch.Tensor], str]] = {
    "ModifiedResNet": (_resnet_readout, "(attnpool.c_proj.weight @ attnpool.v_proj.weight).T over layer4 "
                                        "(attention weights held fixed)"),
    "VisionTransformer": (_vit_readout, "last block mlp.c_proj, centred, ln_post gain, proj "
                                        "(ln_post statistics held fixed, 1/sigma dropped)"),
    "timm ConvNeXt": (_convnext_readout, "head.proj, head.norm gain, centred, over the last stage "
                                         "(norm statistics held fixed, 1/sigma dropped)"),
}


def readout_method(loaded: LoadedModel) -> tuple[Callable[[nn.Module], torch.Tensor], str]:
    """The family's linear read-out (NoLinearReadout, one line, where there is none)."""
    name = family_of(loaded).name
    if name not in LINEAR:
        raise NoLinearReadout(f"no linear read-out for {name} towers (the autograd read-out works for any tower); "
                              f"linear ones: {', '.join(LINEAR)}")
    fn, method = LINEAR[name]
    try:
        fn(loaded.visual)
    except (AttributeError, TypeError) as e:
        raise NoLinearReadout(f"{name}: no linear read-out for this configuration ({e})") from None
    return fn, method


def linear_readout(loaded: LoadedModel) -> np.ndarray:
    """The closed-form W (units × embed_dim, float32); NoLinearReadout where the family has none."""
    fn, _ = readout_method(loaded)
    with torch.no_grad():
        return fn(loaded.visual).detach().float().cpu().numpy()


def readout_matrix(loaded: LoadedModel, images: torch.Tensor | None = None) -> np.ndarray:
    """W (penultimate units × embed_dim, float32): the linear read-out where it exists, else the autograd
    one at `images`' mean activation (default: the dataset-mean grey image)."""
    try:
        return linear_readout(loaded)
    except NoLinearReadout:
        return autograd_readout(loaded, images)


# -- the autograd read-out ---------------------------------------------------------------------------

def blank_images(loaded: LoadedModel, n: int = 1) -> torch.Tensor:
    """The dataset-mean grey image (all zeros once normalised): the point used when no corpus is given."""
    return torch.zeros(n, 3, loaded.image_size, loaded.image_size, device=loaded.device)


def mean_activation(loaded: LoadedModel, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """The penultimate layer's write tap averaged over `images` (per unit and position, batch dim dropped)."""
    from worker.compute.layers import capture, forward_visual

    name, total = layer_spec(loaded).name, None
    with torch.no_grad():
        for i in range(0, len(images), batch):
            with capture(loaded, [name], ("write",), stop_early=True) as got:
                forward_visual(loaded, images[i:i + batch].to(loaded.device))
            x = got.raw[(name, "write")].float()
            x = x if x.dim() == 4 or got.batch_first else x.transpose(0, 1)
            total = x.sum(0) if total is None else total + x.sum(0)
    return total / len(images)


def autograd_readout(loaded: LoadedModel, images: torch.Tensor | None = None, carriers: int = 8) -> np.ndarray:
    """W[u] = ∂ image_embedding / ∂δ_u (units × embed_dim, float32) by backpropagation through the tower.

    The penultimate layer's write tap is replaced by its mean over `images` (default: the dataset-mean
    grey image) plus δ at every position; the rest of the tower runs on the first `carriers` images (for a
    ResNet they do not matter; for a transformer they carry the residual stream) and W is their mean."""
    images = blank_images(loaded) if images is None else images
    mean = mean_activation(loaded, images)
    tap = neuron_layers(loaded)[-1].write
    carry = images[:carriers].to(loaded.device)
    delta = torch.zeros(mean.shape[0] if mean.dim() == 3 else mean.shape[-1], device=loaded.device,
                        requires_grad=True)
    first = family_of(loaded).batch_first(loaded.visual)

    def replaced(value: torch.Tensor) -> torch.Tensor:
        rise = delta[None, :, None, None] if value.dim() == 4 else delta[None, None, :]
        held = mean[None].expand(len(carry), *mean.shape)
        held = held if value.dim() == 4 or first else held.transpose(0, 1)
        return (held + rise).to(value.dtype)

    module = loaded.visual.get_submodule(tap.path)
    handle = (module.register_forward_pre_hook(lambda _m, inp: (replaced(inp[0]), *inp[1:])) if tap.where == "input"
              else module.register_forward_hook(lambda _m, _i, out: replaced(out)))
    try:
        with torch.enable_grad():
            emb = loaded.model.encode_image(carry, normalize=False).float().mean(0)
            rows = jacobian_rows(emb, delta)
    finally:
        handle.remove()
    return torch.stack(rows, dim=1).detach().cpu().numpy().astype(np.float32)


def jacobian_rows(out: torch.Tensor, wrt: torch.Tensor) -> list[torch.Tensor]:
    """∂out[k]/∂wrt for every k: one batched (vmapped) backward where the ops allow it, else one each."""
    try:
        (grads,) = torch.autograd.grad(out, wrt, torch.eye(len(out), device=out.device), retain_graph=True,
                                       is_grads_batched=True)
        return list(grads)
    except RuntimeError:  # an op without a batching rule
        return [torch.autograd.grad(out[k], wrt, retain_graph=True)[0] for k in range(len(out))]


def agreement(linear: np.ndarray, auto: np.ndarray) -> dict:
    """How far the linear read-out is from the autograd one: per-unit cosine of their rows (quantiles),
    the relative error of the linear rows rescaled by one best factor, and the cosine of the whole matrices."""
    norms = np.linalg.norm(linear, axis=1) * np.linalg.norm(auto, axis=1)
    cos = (linear * auto).sum(1) / np.maximum(norms, 1e-30)
    scale = float((linear * auto).sum() / max(float((linear * linear).sum()), 1e-30))
    rel = np.linalg.norm(scale * linear - auto, axis=1) / np.maximum(np.linalg.norm(auto, axis=1), 1e-30)
    q = (0.05, 0.25, 0.5, 0.75, 0.95)
    return {"cosine_quantiles": {str(k): float(v) for k, v in zip(q, np.quantile(cos, q), strict=True)},
            "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "matrix_cosine": float((linear * auto).sum() / max(np.linalg.norm(linear) * np.linalg.norm(auto), 1e-30)),
            "scale": scale, "relative_error_median": float(np.median(rel))}


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
        with torch.inference_mode():
            dim = loaded.model.encode_text(loaded.tokenizer([""]).to(loaded.device)).shape[1]
        return np.zeros((0, dim), dtype=np.float32)
    return np.concatenate(out)


def text_attribution(loaded: LoadedModel, texts: Sequence[str], readout: np.ndarray | None = None) -> np.ndarray:
    """Attribution of each text to each penultimate neuron (texts × units): W · t for unit-length t."""
    w = readout_matrix(loaded) if readout is None else readout
    return embed_texts(loaded, texts) @ w.T


def readout_with_agreement(loaded: LoadedModel, images: torch.Tensor | None = None,
                           kind: str = "auto") -> tuple[np.ndarray, dict]:
    """(W, meta): the read-out to keep ("auto": the linear one where it exists, else autograd) and what was
    computed: method, and the linear-vs-autograd agreement where both exist."""
    if kind not in READOUT_KINDS:
        raise ValueError(f"--readout must be one of {', '.join(READOUT_KINDS)}, got {kind!r}")
    auto = autograd_readout(loaded, images)
    try:
        linear, (_, method) = linear_readout(loaded), readout_method(loaded)
    except NoLinearReadout as e:
        if kind == "linear":
            raise
        return auto, {"readout": "autograd", "method": AUTOGRAD_METHOD, "linear": str(e), "agreement": None}
    keep = auto if kind == "autograd" else linear
    return keep, {"readout": "autograd" if kind == "autograd" else "linear",
                  "method": AUTOGRAD_METHOD if kind == "autograd" else method,
                  "linear_method": method, "agreement": agreement(linear, auto)}


READOUT_KINDS = ("auto", "linear", "autograd")
AUTOGRAD_METHOD = "autograd: d(image embedding)/d(uniform rise), layer held at the corpus-mean activation"
