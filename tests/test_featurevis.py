"""The feature visualization library on tiny random-init open_clip models (ResNet and ViT)."""
import copy

import pytest
import torch

from worker.compute.featurevis import objectives as O
from worker.compute.featurevis import param
from worker.compute.featurevis import transform as T
from worker.compute.featurevis.render import RenderSettings, evaluate, model_input, objective_values, render
from worker.compute.featurevis.speed import fast_model
from worker.compute.layers import activations

FEW = RenderSettings(steps=6)


def start_images(loaded, seeds):
    return param.image(seeds, loaded.image_size).image().detach()


def live_units(loaded, layer: str, n: int, seeds=(1, 2, 3)) -> list[int]:
    """The units most active on the starting images (a dead ReLU unit has no gradient to climb)."""
    with torch.no_grad():
        x = model_input(loaded)(start_images(loaded, list(seeds)), T.Draws([]))
        acts = activations(loaded, x, [layer])[layer].mean(dim=(0, 2, 3))
    return torch.argsort(acts, descending=True)[:n].tolist()


@pytest.mark.parametrize("arch,layer", [("rn", "layer4"), ("vit", "resblocks.1.mlp")])
def test_objective_rises_within_a_few_steps(tiny_rn, tiny_vit, arch, layer):
    loaded = tiny_rn if arch == "rn" else tiny_vit
    units = live_units(loaded, layer, 3)
    obj = O.channel(layer, units)
    start = evaluate(loaded, obj, start_images(loaded, [1, 2, 3]))
    out = render(loaded, obj, seeds=[1, 2, 3], settings=FEW)
    assert out.images.shape == (3, 3, loaded.image_size, loaded.image_size)
    assert float(out.images.min()) >= 0 and float(out.images.max()) <= 1
    assert (out.objective > start).all(), (start, out.objective)
    assert out.objective.mean() > 1.1 * start.mean()


def test_batch_of_b_equals_b_single_runs(tiny_rn):
    units = live_units(tiny_rn, "layer4", 2)
    seeds = [11, 12]
    batched = render(tiny_rn, O.channel("layer4", units), seeds, FEW)
    singles = [render(tiny_rn, O.channel("layer4", [u]), [s], FEW) for u, s in zip(units, seeds, strict=True)]
    single_obj = torch.cat([r.objective for r in singles])
    single_img = torch.cat([r.images for r in singles])
    assert torch.allclose(batched.objective, single_obj, rtol=1e-3, atol=1e-6 * float(single_obj.abs().max()))
    # Adam turns rounding noise in near-zero gradients into whole steps, so compare images on average
    assert (batched.images - single_img).abs().mean() < 4e-3
    # and a different neuron in a slot gives a different image: the comparison above has teeth
    other = render(tiny_rn, O.channel("layer4", units[::-1]), seeds, FEW)
    assert (other.images[0] - batched.images[0]).abs().mean() > 2e-2


def test_same_seed_is_bit_identical_and_another_seed_differs(tiny_rn):
    obj = O.channel("layer4", [0, 1])
    a = render(tiny_rn, obj, [5, 6], RenderSettings(steps=3))
    b = render(tiny_rn, obj, [5, 6], RenderSettings(steps=3))
    c = render(tiny_rn, obj, [5, 7], RenderSettings(steps=3))
    assert torch.equal(a.images, b.images) and torch.equal(a.objective, b.objective)
    assert torch.equal(a.images[0], c.images[0])  # image 0 keeps its seed, whatever its neighbour does
    assert not torch.equal(a.images[1], c.images[1])


def test_pixel_parameterization_and_plain_colours_render(tiny_rn):
    out = render(tiny_rn, "layer4:0", [3], RenderSettings(steps=2, fft=False, decorrelate=False, transforms=False,
                                                          size=48))
    assert out.images.shape == (1, 3, 48, 48)


def test_facet_gradient_matches_finite_differences(tiny_vit):
    """d/dx of f(g(x)) + wᵀ(g(x) ⊙ ∇f(g(x))) including the second-order term through ∇f (GELU, softmax
    and LayerNorm make it non-zero), checked in float64 against central differences."""
    loaded = copy.copy(tiny_vit)
    loaded.model = copy.deepcopy(tiny_vit.model).double()
    torch.manual_seed(0)
    w = torch.randn(256, dtype=torch.float64)
    obj = O.facet(O.channel("resblocks.1.mlp", [3, 7]), "resblocks.0.mlp", w)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    direction = torch.randn_like(x)

    def value(inp):
        return objective_values(loaded, obj, inp).sum()

    (grad,) = torch.autograd.grad(value(x), x)
    eps = 1e-5
    with torch.enable_grad():
        numeric = (value(x.detach() + eps * direction) - value(x.detach() - eps * direction)) / (2 * eps)
    analytic = (grad * direction).sum()
    assert torch.isclose(analytic, numeric, rtol=1e-5), (analytic, numeric)

    # treating ∇f as a constant (no create_graph) gives a different gradient: the check has teeth
    def detached_facet(ctx):
        g, f = ctx.acts["resblocks.0.mlp"], O.channel("resblocks.1.mlp", [3, 7])(ctx)
        (gf,) = torch.autograd.grad(f.sum(), g, retain_graph=True)
        return f + (w.view(1, -1, 1, 1) * g * gf).sum(dim=(1, 2, 3))

    wrong = O.Objective(detached_facet, obj.layers)
    (grad_wrong,) = torch.autograd.grad(objective_values(loaded, wrong, x).sum(), x)
    assert not torch.isclose((grad_wrong * direction).sum(), numeric, rtol=1e-3)


def test_facet_on_a_layer_above_the_objective_is_a_clear_error(tiny_rn):
    obj = O.facet("layer3:0", "layer4", torch.ones(512))
    with pytest.raises(ValueError, match="does not feed"):
        evaluate(tiny_rn, obj, torch.rand(1, 3, 64, 64))


def test_objectives_parse_combine_and_refuse_bad_units():
    acts = {"layer4": torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)}
    ctx = O.Context(acts, torch.full((2, 3, 4, 4), 0.5))
    a = acts["layer4"]
    assert torch.equal(O.channel("layer4:1")(ctx), a[:, 1].mean(dim=(1, 2)))
    assert torch.equal(O.channel("layer4", [2, 0])(ctx), torch.stack([a[0, 2].mean(), a[1, 0].mean()]))
    assert torch.equal(O.neuron("layer4:1")(ctx), a[:, 1, 1, 1])
    combo = 2 * O.channel("layer4:1") - O.channel("layer4:0") / 4 + 1
    assert torch.allclose(combo(ctx), 2 * a[:, 1].mean((1, 2)) - a[:, 0].mean((1, 2)) / 4 + 1)
    assert combo.layers == {"layer4"}
    towards = O.direction("layer4", torch.tensor([1.0, 0, -1]))(ctx)
    assert torch.allclose(towards, a[:, 0].mean((1, 2)) - a[:, 2].mean((1, 2)))
    assert torch.equal(O.l2()(ctx), torch.full((2,), 1e-3))
    assert torch.equal(O.total_variation()(ctx), torch.zeros(2))
    assert O.channel("resblocks.11.mlp:5").layers == {"resblocks.11.mlp"}
    with pytest.raises(ValueError, match="units 0..2"):
        O.channel("layer4:3")(ctx)
    with pytest.raises(ValueError, match="3 units for a batch of 2"):
        O.channel("layer4", [0, 1, 2])(ctx)
    with pytest.raises(ValueError, match="whole number"):
        O.channel("layer4:x")


def test_gram_similarity_both_ways_agree_and_identical_images_score_highest():
    torch.manual_seed(0)
    wide = torch.randn(4, 16, 3, 3)  # positions < units: the kernel trick
    tall = torch.randn(4, 4, 6, 6)  # positions > units: explicit Gram matrices
    for acts in (wide, tall):
        f = acts.reshape(4, acts.shape[1], -1)
        grams = f @ f.transpose(1, 2)
        flat = grams.reshape(4, -1)
        cos = torch.nn.functional.cosine_similarity(flat[:, None], flat[None], dim=-1)
        expected = torch.stack([(cos[i, :2].sum() - cos[i, i]) / 2 for i in range(2)]
                               + [(cos[i, 2:].sum() - cos[i, i]) / 2 for i in range(2, 4)])
        assert torch.allclose(O.gram_similarity(acts, 2), expected, atol=1e-5)
    same = torch.randn(1, 16, 3, 3).repeat(3, 1, 1, 1)
    assert torch.allclose(O.gram_similarity(same, 3), torch.full((3,), 2 / 3))


def test_diversity_pushes_a_neurons_images_apart(tiny_rn):
    unit = live_units(tiny_rn, "layer4", 1)[0]
    settings = RenderSettings(steps=5)
    div = O.diversity("layer4", 3)
    plain = render(tiny_rn, O.channel("layer4", unit), [1, 2, 3], settings)
    diverse = render(tiny_rn, O.channel("layer4", unit) - 1e2 * div, [1, 2, 3], settings)
    assert evaluate(tiny_rn, div, diverse.images).mean() < evaluate(tiny_rn, div, plain.images).mean()


def test_transforms_draw_per_image_and_keep_shapes():
    x = torch.rand(3, 3, 224, 224)
    out = T.standard()(x, T.Draws([1, 2, 3]))
    assert out.shape == (3, 3, 224 + 24 - 8 - 4, 236)  # Lucid's amounts at 224 px
    alone = T.standard()(x[2:], T.Draws([3]))
    assert torch.allclose(out[2:], alone, atol=1e-6)  # image 3's transform ignores its batch-mates
    assert not torch.allclose(out[1], T.standard()(x[1:2], T.Draws([9]))[0])
    assert T.standard(64)(x[:, :, :64, :64], T.Draws([1, 2, 3])).shape[-1] == 64 + 6 - 2 - 1  # in proportion
    assert T.resize(32)(x, T.Draws([])).shape == (3, 3, 32, 32)


def test_fft_parameterization_is_per_seed_and_valid():
    p = param.image([4, 5], 33)
    img = p.image().detach()
    assert img.shape == (2, 3, 33, 33) and 0 < img.min().item() and img.max().item() < 1
    q = param.image([5], 33)
    assert torch.equal(img[1], q.image()[0])
    assert param.rfft_frequencies(4, 6).shape == (4, 4)
    with pytest.raises(ValueError):
        param.image([1], 1)


def test_fast_model_computes_the_same_and_leaves_the_original_alone(tiny_rn):
    # tiny_rn is session-wide and other stages may have made it channels_last: compare with before
    layout_before = tiny_rn.visual.conv1.weight.is_contiguous()
    fast = fast_model(tiny_rn)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = activations(tiny_rn, x, ["layer2", "layer4"])
        got = activations(fast, x, ["layer2", "layer4"])
    for layer in want:
        assert torch.allclose(got[layer], want[layer], rtol=1e-4, atol=1e-6 * float(want[layer].abs().max()))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.visual.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in tiny_rn.visual.modules()) == 3 + 4 * 3 + 4
    assert fast.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert tiny_rn.visual.conv1.weight.is_contiguous() == layout_before


@pytest.mark.parametrize("arch", ["tiny-rn", "tiny-vit", "tiny-coca", "tiny-timm-map", "tiny-eva"])
def test_channel_objective_is_the_value_examples_and_probe_rank_by(arch):
    """One signal per unit: feature vis climbs the number the dataset examples and the image probe show
    (ResNet: the mean before the final ReLU; ViTs: the class token / attention-pool weighting)."""
    from tests.conftest import CONFIG_DIR
    from worker.compute.layers import layer_spec, unit_values
    from worker.compute.models import load_model

    torch.manual_seed(0)
    loaded = load_model(arch, config_dirs=(CONFIG_DIR,))
    layer = layer_spec(loaded).name
    x = torch.randn(3, 3, loaded.image_size, loaded.image_size)
    with torch.no_grad():
        got = objective_values(loaded, O.channel(f"{layer}:5"), x)
        values, maps = unit_values(loaded, x, layer)
    assert torch.allclose(got, values[:, 5], atol=1e-5)
    if arch in ("tiny-vit", "tiny-eva"):  # the class token's value, not the spatial mean of the patch map
        assert not torch.allclose(values[:, 5], maps[:, 5].mean(dim=(1, 2)), atol=1e-3)
