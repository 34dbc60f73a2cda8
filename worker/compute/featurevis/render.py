"""The optimisation loop: Adam on an image parameterization, through random transforms, into the
model at its native resolution and normalisation, maximising an objective for every image at once."""
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from worker.compute.featurevis import param as param_mod
from worker.compute.featurevis import transform as T
from worker.compute.featurevis.hooks import capture_graph, forward
from worker.compute.featurevis.objectives import Context, Objective, as_objective
from worker.compute.featurevis.speed import match_layout
from worker.compute.models import LoadedModel
from worker.compute.precision import DTYPES, autocast


@dataclass(frozen=True)
class RenderSettings:
    """Everything that shapes an image besides the objective and the seeds."""

    steps: int = 512
    size: int | None = None  # side of the optimised image; None = the model's native resolution
    lr: float = 0.05
    fft: bool = True
    decorrelate: bool = True
    transforms: bool = True  # Lucid's standard transforms; False = none
    sd: float = 0.01
    precision: str = "fp32"  # the model's forward: fp32 | bf16 | fp16 autocast (worker.compute.precision)

    def __post_init__(self):
        if self.precision not in DTYPES:
            raise ValueError(f"--precision must be one of {', '.join(DTYPES)}, got {self.precision!r}")

    def as_dict(self) -> dict:
        """What shapes the image (settings hashes are made of it). fp32 is left out, so the hashes of
        images rendered before precision was a setting still match and they are not rendered again."""
        out = asdict(self)
        if out["precision"] == "fp32":
            del out["precision"]
        return out


@dataclass
class Rendered:
    images: torch.Tensor  # (B, 3, size, size) in [0, 1], on the CPU
    objective: torch.Tensor  # (B,) the objective on the final, untransformed images
    history: list[torch.Tensor]  # per step, (B,) the objective on that step's transformed images


def model_input(loaded: LoadedModel, transform: T.Transform | None = None) -> T.Transform:
    """Transforms, then resampling to the native resolution and the model's own normalisation."""
    tail = T.compose(T.resize(loaded.image_size), T.normalize(loaded.mean, loaded.std))
    return tail if transform is None else T.compose(transform, tail)


@contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """No weight gradients while rendering: the backward pass then only runs towards the image."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def objective_values(loaded: LoadedModel, objective: Objective, x: torch.Tensor,
                     image: torch.Tensor | None = None, precision: str = "fp32") -> torch.Tensor:
    """The objective (B,) for a batch of model inputs `x`, with its graph (for gradients). The model
    runs at `precision`; under autocast the objective is computed in float32, except a second-order
    one, which differentiates with respect to the captured tensors themselves."""
    ctx_image = x if image is None else image
    if not objective.layers:
        return objective(Context({}, ctx_image))
    # fused attention kernels have no double backward; a second-order objective runs the plain one
    kernels = sdpa_kernel(SDPBackend.MATH) if objective.second_order else nullcontext()
    with kernels, autocast(loaded.device, precision), capture_graph(loaded, sorted(objective.layers)) as (maps, values):
        forward(loaded, match_layout(loaded, x))
    if precision != "fp32" and not objective.second_order:
        maps = {name: a.float() for name, a in maps.items()}
        values = {name: v.float() for name, v in values.items()}
    return objective(Context(maps, ctx_image, values))


def evaluate(loaded: LoadedModel, objective: Objective | str, images: torch.Tensor,
             precision: str = "fp32") -> torch.Tensor:
    """The objective (B,) of finished images ((B, 3, H, W) in [0, 1]) without transforms."""
    objective = as_objective(objective)
    images = images.to(loaded.device).detach().requires_grad_(True)  # facet objectives need a graph
    with torch.enable_grad():
        x = model_input(loaded)(images, T.Draws([]))
        return objective_values(loaded, objective, x, images, precision).detach().cpu()


def render(loaded: LoadedModel, objective: Objective | str, seeds: Sequence[int],
           settings: RenderSettings = RenderSettings(),
           on_step: Callable[[int, torch.Tensor], None] | None = None) -> Rendered:
    """Optimise one image per seed for `settings.steps` Adam steps, maximising `objective` per image.

    Image i's initial noise and its per-step transforms come only from seeds[i]: with the same seeds,
    settings and weights the result is bit-identical on the CPU, and batching does not change it beyond
    float rounding. The model's weights get no gradients (only the image is differentiated)."""
    objective = as_objective(objective)
    size = settings.size or loaded.image_size
    p = param_mod.image(seeds, size, fft=settings.fft, decorrelate=settings.decorrelate, sd=settings.sd,
                        device=loaded.device)
    to_input = model_input(loaded, T.standard(size) if settings.transforms else None)
    draws = T.Draws([s + 1 for s in seeds])  # a stream apart from the one that drew the initial noise
    optimizer = torch.optim.Adam(p.params, lr=settings.lr)
    history = []
    with frozen(loaded.visual):
        for step in range(settings.steps):
            image = p.image()
            values = objective_values(loaded, objective, to_input(image, draws), image, settings.precision)
            grads = torch.autograd.grad(-values.sum(), p.params)
            for t, g in zip(p.params, grads, strict=True):
                t.grad = g
            optimizer.step()
            history.append(values.detach().cpu())
            if on_step is not None:
                on_step(step, history[-1])
        final = p.image().detach()
        reached = evaluate(loaded, objective, final, settings.precision)
    return Rendered(final.cpu(), reached, history)
