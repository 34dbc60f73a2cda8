"""Image-tower families: what a neuron is in each, where it is read, and what the embedding sees of it.

This table (FAMILIES) is the one place that knows tower classes. `worker.compute.layers` (capture), the
examples, probes, feature vis, read-outs, `microscope worker layers` and docs/families.md read it.

Every neuron layer has three taps (a module's output, or the first input of a module):
- `write`: what the rest of the tower reads (a rise here is what the read-outs differentiate);
- `value`: the unit's signal, pooled the way the embedding pools (examples' top-K and statistics, the
  image probe, feature vis objectives, words, facets);
- `negative`: a pre-activation signal for the most-negative examples (GELU's output is bounded below
  at −0.17, so "most negative" post-GELU values say little).
Pooling turns a layer's tokens or map into one number per unit: `mean` over positions (conv maps),
`cls` (the class token: `tok` pooling), `patches` (mean over patch tokens: `avg`), `attention` (the
attention pool's weights of its first query, averaged over heads, held fixed).
"""
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

POOLINGS = {
    "mean": "averaged over the map's positions",
    "cls": "at the class token (`tok` pooling)",
    "patches": "averaged over the patch tokens (`avg` pooling)",
    "attention": "weighted over the tokens as the attention pool weights them (its first query, heads averaged)",
}


class Unsupported(ValueError):
    """This image tower (or its pooling) is not in the catalogue: one line says which and what is."""


@dataclass(frozen=True)
class Tap:
    path: str  # module path under `visual`
    where: str = "output"  # "output": forward hook on the output; "input": pre-hook on the first input


@dataclass(frozen=True)
class NeuronLayer:
    name: str
    n_units: int
    write: Tap
    value: Tap
    negative: Tap


@dataclass(frozen=True)
class Family:
    """One kind of image tower. `layers` enumerates its neuron layers; `pooling` says what its embedding
    reads of a layer; `prefix` counts the tokens before the patch grid; `attention` is the module whose
    weights `attention` pooling uses."""

    name: str
    kind: str  # conv | mlp
    neuron: str  # what a neuron is, one line (printed by `worker layers`, tabled in docs/families.md)
    value: str  # which value ranks examples, one line (shown on the neuron page)
    matches: Callable[[nn.Module], bool]
    layers: Callable[[nn.Module], list[NeuronLayer]]
    pooling: Callable[[nn.Module], str]
    prefix: Callable[[nn.Module], int] = lambda _v: 0
    attention: Callable[[nn.Module], str | None] = lambda _v: None
    batch_first: Callable[[nn.Module], bool] = lambda _v: True


def _trunk(visual: nn.Module) -> nn.Module | None:
    return getattr(visual, "trunk", None)


def _timm_is(name: str) -> Callable[[nn.Module], bool]:
    return lambda visual: type(visual).__name__ == "TimmModel" and type(_trunk(visual)).__name__ == name


# -- ModifiedResNet (open_clip): bottleneck stages, channels read before the final ReLU -----------------

def _resnet_layers(visual: nn.Module) -> list[NeuronLayer]:
    out = []
    for i in range(1, 5):
        if hasattr(visual, f"layer{i}"):
            stage = getattr(visual, f"layer{i}")
            pre = Tap(f"layer{i}.{len(stage) - 1}.act3", "input")
            out.append(NeuronLayer(f"layer{i}", stage[-1].conv3.out_channels, Tap(f"layer{i}"), pre, pre))
    return out


# -- open_clip VisionTransformer (CLIP ViTs; CoCa's tower with its attentional pooler) -----------------

def _openclip_vit_layers(visual: nn.Module) -> list[NeuronLayer]:
    out = []
    for i, block in enumerate(visual.transformer.resblocks):
        gelu = Tap(f"transformer.resblocks.{i}.mlp.gelu")
        out.append(NeuronLayer(f"resblocks.{i}.mlp", block.mlp.c_fc.out_features, gelu, gelu,
                               Tap(f"transformer.resblocks.{i}.mlp.c_fc")))
    return out


def _openclip_vit_pooling(visual: nn.Module) -> str:
    if getattr(visual, "attn_pool", None) is not None:
        return "attention"
    pools = {"tok": "cls", "avg": "patches"}
    if visual.pool_type not in pools:
        raise Unsupported(f"ViT pool_type {visual.pool_type!r} passes every token on: no pooled value per unit")
    return pools[visual.pool_type]


def _openclip_vit_attention(visual: nn.Module) -> str | None:
    if getattr(visual, "attn_pool_contrastive", None) is not None:
        return "attn_pool_contrastive"
    return "attn_pool" if getattr(visual, "attn_pool", None) is not None else None


# -- timm towers behind open_clip's TimmModel ----------------------------------------------------------

def _timm_mlp_layers(visual: nn.Module) -> list[NeuronLayer]:
    """timm ViT / EVA blocks: a neuron is an input unit of `mlp.fc2`. With a plain Mlp (fc1 → act → fc2)
    the pre-activation is fc1's output; a gated MLP (SwiGLU, GluMlp) is already signed, so fc2's input."""
    out = []
    for i, block in enumerate(visual.trunk.blocks):
        mlp = block.mlp
        write = Tap(f"trunk.blocks.{i}.mlp.fc2", "input")
        plain = type(mlp).__name__ == "Mlp" and getattr(mlp.fc1, "out_features", 0) == mlp.fc2.in_features
        negative = Tap(f"trunk.blocks.{i}.mlp.fc1") if plain else write
        out.append(NeuronLayer(f"blocks.{i}.mlp", mlp.fc2.in_features, write, write, negative))
    return out


def _timm_vit_pooling(visual: nn.Module) -> str:
    pools = {"token": "cls", "avg": "patches", "map": "attention"}
    pool = visual.trunk.global_pool
    if pool not in pools:
        raise Unsupported(f"timm {type(visual.trunk).__name__} global_pool {pool!r} is not tok/avg/map pooling; "
                          "no pooled value per unit is defined")
    return pools[pool]


def _convnext_layers(visual: nn.Module) -> list[NeuronLayer]:
    stages = visual.trunk.stages
    out = []
    for i in range(len(stages)):
        tap = Tap(f"trunk.stages.{i}")
        out.append(NeuronLayer(f"stages.{i}", visual.trunk.feature_info[i]["num_chs"], tap, tap, tap))
    return out


def _convnext_pooling(visual: nn.Module) -> str:
    pool = getattr(getattr(visual.trunk.head, "global_pool", None), "pool_type", "avg")
    if pool != "avg":
        raise Unsupported(f"timm ConvNeXt global pool {pool!r}: only average pooling is catalogued")
    return "mean"


FAMILIES: list[Family] = [
    Family("ModifiedResNet", "conv",
           "a channel of a bottleneck stage's output (layer1…layer4), read before the stage's final ReLU",
           "the mean over positions of the channel before the final ReLU (the ReLU clips it for the pool)",
           lambda v: type(v).__name__ == "ModifiedResNet", _resnet_layers, lambda _v: "mean"),
    Family("VisionTransformer", "mlp",
           "a hidden unit of a block's MLP (GELU output, resblocks.N.mlp); pre-activation = c_fc output",
           "the GELU output {pooling}; most negative: the same before the GELU (c_fc output)",
           lambda v: type(v).__name__ == "VisionTransformer", _openclip_vit_layers, _openclip_vit_pooling,
           lambda _v: 1, _openclip_vit_attention,
           lambda v: getattr(v.transformer, "batch_first", True)),
    Family("timm VisionTransformer", "mlp",
           "a hidden unit of a block's MLP (input of mlp.fc2, blocks.N.mlp); pre-activation = fc1 output",
           "the MLP hidden value {pooling}; most negative: the same before the activation (fc1 output)",
           _timm_is("VisionTransformer"), _timm_mlp_layers, _timm_vit_pooling,
           lambda v: v.trunk.num_prefix_tokens, lambda v: "trunk.attn_pool" if v.trunk.global_pool == "map" else None),
    Family("timm Eva", "mlp",
           "a hidden unit of a block's (SwiGLU) MLP: the input of mlp.fc2, signed (gate × value, normed)",
           "the MLP hidden value {pooling}; signed, so most negative is the same value",
           _timm_is("Eva"), _timm_mlp_layers, _timm_vit_pooling, lambda v: v.trunk.num_prefix_tokens),
    Family("timm ConvNeXt", "conv",
           "a channel of a stage's output (stages.0…stages.3: the residual stream, signed)",
           "the mean over positions of the stage's output channel (what the head's average pool reads)",
           _timm_is("ConvNeXt"), _convnext_layers, _convnext_pooling),
]


def tower_name(visual: nn.Module) -> str:
    trunk = _trunk(visual)
    return f"TimmModel({type(trunk).__name__})" if trunk is not None else type(visual).__name__


def family_of_visual(visual: nn.Module) -> Family:
    for family in FAMILIES:
        if family.matches(visual):
            return family
    raise Unsupported(f"no layer catalogue for image tower {tower_name(visual)}; catalogued: "
                      + ", ".join(f.name for f in FAMILIES))


def value_description(visual: nn.Module) -> str:
    """The line a neuron page shows: which value ranks this tower's examples."""
    family = family_of_visual(visual)
    return family.value.format(pooling=POOLINGS[family.pooling(visual)])
