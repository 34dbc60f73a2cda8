"""Feature visualization: ours against Lucent on the same random-init RN50, in one run.

Same model (open_clip RN50, random init with bn3 revived as GUIDE.md advises, CLIP normalisation, 224 px),
same objective (channel = spatial mean of a layer4 unit), same FFT + decorrelated-colour parameterization,
same Lucid transforms (pad 12, jitter 8, scale 0.9-1.1, rotate ±10°, jitter 4, back to 224), same Adam
lr 0.05 and number of steps, same neurons. Three ways, timed per neuron:

  ours            B neurons per optimisation, batch norm folded into the convolutions, channels-last
                  weights, no weight gradients, forward stopped at layer4
  lucent single   Lucent's usual use: one render_vis call per neuron
  lucent batched  one render_vis call with a batch of B images, objective Σ channel(layer4, u_i, batch=i)

"Objective reached" is the same evaluation for all: each final image, untransformed, through the model,
mean activation of its unit. Then an on-paper GPU estimate for all 2560 RN50x4 layer4 neurons at 512 steps
from the FLOPs of one of our steps on RN50x4 at 288 px, counted with torch.utils.flop_counter.

Lucent lives OUTSIDE the project's venv (it pins kornia 0.4.1); its site-packages are appended to sys.path
after ours, so every shared package (torch, numpy, …) is the project's:

    python3 -m venv /tmp/lucent-venv
    /tmp/lucent-venv/bin/pip install --no-deps torch-lucent==0.1.8 kornia==0.4.1 decorator
    /tmp/lucent-venv/bin/pip install ipython            # lucent.misc.io imports IPython.display
    .venv/bin/python bench/featurevis.py --steps 16 --neurons 8 --batch 8
"""
import os
import sys
import time
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_LUCENT = "/tmp/lucent-venv/lib/python3.11/site-packages"


def load_rn50(arch: str = "RN50"):
    import torch

    from worker.compute.models import load_model, revive_random_resnet

    torch.manual_seed(0)
    loaded = load_model(arch)
    revive_random_resnet(loaded.model)
    return loaded


def import_lucent(site: str):
    if not Path(site, "lucent").is_dir():
        raise SystemExit(f"Lucent not found in {site}; see this script's docstring to install it apart from .venv")
    sys.path.append(site)  # after the project's packages: only lucent, kornia, decorator, IPython come from there
    import kornia
    from lucent.optvis import objectives, param, render, transform

    return render, param, transform, objectives, kornia.__version__


class Clock:
    """Wall and CPU seconds of this process (the machine is shared: CPU time is the steadier measure)."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c


def ours(fast, units: list[int], steps: int):
    from worker.analyses.featurevis import image_seed
    from worker.compute.featurevis import objectives as O
    from worker.compute.featurevis.render import RenderSettings, render

    out = render(fast, O.channel("layer4", units), [image_seed(0, u, "plain") for u in units],
                 RenderSettings(steps=steps))
    return out.images


class _NoNewHooks:
    """Lucent's render_vis hooks every module on each call and never removes them; drop them afterwards so
    each Lucent call starts from a clean model (kinder to Lucent than letting them pile up)."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.before = {m: set(m._forward_hooks) for m in self.model.modules()}

    def __exit__(self, *exc):
        for m in self.model.modules():
            for key in set(m._forward_hooks) - self.before.get(m, set()):
                del m._forward_hooks[key]


def lucent_render(lucent, loaded, units: list[int], steps: int):
    """One Lucent render_vis call for len(units) images, image i maximising channel(layer4, units[i])."""
    import numpy as np
    import torch

    render, param, transform, objectives, _ = lucent
    size = loaded.image_size
    mean = torch.tensor(loaded.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.std).view(1, 3, 1, 1)
    transforms = list(transform.standard_transforms) + [lambda x: (x - mean) / std]  # CLIP's own normalisation
    objective = sum((objectives.channel("layer4", u, batch=i) for i, u in enumerate(units[1:], 1)),
                    objectives.channel("layer4", units[0], batch=0))
    with _NoNewHooks(loaded.visual):
        out = render.render_vis(loaded.visual, objective, lambda: param.image(size, batch=len(units)),
                                transforms=transforms, thresholds=(steps,), preprocess=False, progress=False,
                                show_image=False, fixed_image_size=size)
    return torch.from_numpy(np.ascontiguousarray(out[-1])).permute(0, 3, 1, 2)


def compare(loaded, lucent, units: list[int], steps: int, batch: int, single: bool) -> dict:
    """Each chunk of `batch` neurons by every method back to back (in alternating order), so load from other
    processes hits all of them alike. Returns {method: (Clock, final images)}."""
    import torch

    from worker.compute.featurevis.speed import fast_model

    fast = fast_model(loaded)
    methods = {"ours": lambda chunk: ours(fast, chunk, steps),
               "lucent batched": lambda chunk: lucent_render(lucent, loaded, chunk, steps)}
    if single:
        methods["lucent single"] = lambda chunk: torch.cat([lucent_render(lucent, loaded, [u], steps) for u in chunk])
    ours(fast, units[:1], 1)  # warm-up, not timed: first-call kernel set-up
    lucent_render(lucent, loaded, units[:1], 1)
    clocks = {name: Clock() for name in methods}
    images: dict[str, list] = {name: [] for name in methods}
    for k, i in enumerate(range(0, len(units), batch)):
        order = list(methods) if k % 2 == 0 else list(methods)[::-1]  # alternate, so a load trend hits all alike
        for name in order:
            with clocks[name]:
                images[name].append(methods[name](units[i:i + batch]))
    return {name: (clocks[name], torch.cat(images[name])) for name in methods}


def reached(loaded, units: list[int], images):
    from worker.compute.featurevis import objectives as O
    from worker.compute.featurevis.render import evaluate

    return evaluate(loaded, O.channel("layer4", units), images)


def flops_per_image_step(arch: str, batch: int = 1) -> tuple[float, int]:
    """FLOPs of one of our optimisation steps (forward to layer4, backward to the image) per image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from worker.compute.featurevis import objectives as O
    from worker.compute.featurevis.render import RenderSettings, render

    loaded = load_rn50(arch)
    with FlopCounterMode(display=False) as counter:
        render(loaded, O.channel("layer4", list(range(batch))), list(range(batch)), RenderSettings(steps=1))
    # render ran 1 step plus the final forward-only evaluation; subtract that forward
    with FlopCounterMode(display=False) as forward_only, torch.no_grad():
        from worker.compute.layers import activations

        activations(loaded, torch.rand(batch, 3, loaded.image_size, loaded.image_size), ["layer4"])
    return (counter.get_total_flops() - forward_only.get_total_flops()) / batch, loaded.image_size


def main(steps: int = typer.Option(16, help="Adam steps per image (the same for both)"),
         neurons: int = typer.Option(8, help="layer4 units rendered (0..n-1)"),
         batch: int = typer.Option(8, help="neurons per optimisation (ours, and Lucent batched)"),
         lucent_site: str = typer.Option(os.environ.get("LUCENT_SITE", DEFAULT_LUCENT)),
         gpu_tflops: float = typer.Option(494.0, help="assumed GPU peak, TFLOP/s: H100 SXM dense TF32, what fp32 "
                                                      "convolutions run as on cuDNN by PyTorch's default"),
         utilisation: float = typer.Option(0.35, help="assumed fraction of peak reached"),
         single: bool = typer.Option(True, "--single/--no-single", help="also time Lucent one neuron per call")):
    import torch

    lucent = import_lucent(lucent_site)
    typer.echo(f"torch {torch.__version__}, {torch.get_num_threads()} threads, kornia {lucent[-1]} (Lucent's); "
               f"load average {os.getloadavg()[0]:.1f}")
    loaded = load_rn50()
    units = list(range(neurons))
    typer.echo(f"RN50 random init (bn3 revived), {loaded.image_size} px, {steps} steps, {neurons} neurons, "
               f"batch {batch}")
    results = compare(loaded, lucent, units, steps, batch, single)
    reached_by = {name: reached(loaded, units, images) for name, (_, images) in results.items()}
    mine = reached_by["ours"]
    typer.echo(f"\n{'':16}{'wall s/neuron':>14}{'CPU s/neuron':>14}{'objective (mean)':>18}{'ours >= it':>12}")
    for name, (clock, _) in results.items():
        wins = "" if name == "ours" else f"{int((mine >= reached_by[name]).sum())}/{len(units)}"
        typer.echo(f"{name:16}{clock.wall / neurons:14.2f}{clock.cpu / neurons:14.2f}"
                   f"{reached_by[name].mean().item():18.5f}{wins:>12}")
    ours_clock = results["ours"][0]
    for name, (clock, _) in results.items():
        if name != "ours":
            typer.echo(f"ours vs {name}: {clock.wall / ours_clock.wall:.2f}x faster per neuron by wall time, "
                       f"{clock.cpu / ours_clock.cpu:.2f}x by CPU time (target >= 2); objective ours / it "
                       f"{mine.mean().item() / reached_by[name].mean().item():.3f} (target >= 1)")
    typer.echo(f"load average now {os.getloadavg()[0]:.1f}")
    gpu_estimate(gpu_tflops, utilisation)


def gpu_estimate(peak_tflops: float, utilisation: float, neurons: int = 2560, steps: int = 512) -> None:
    flops, size = flops_per_image_step("RN50x4")
    total = flops * steps * neurons
    rate = peak_tflops * 1e12 * utilisation
    typer.echo(f"\nGPU estimate on paper: RN50x4 at {size} px, one step (forward to layer4 + backward to the image) "
               f"= {flops / 1e9:.1f} GFLOP per image (measured by FlopCounterMode);\n"
               f"{neurons} neurons x {steps} steps = {total / 1e15:.1f} PFLOP; at an assumed {peak_tflops:.0f} TFLOP/s "
               f"peak x {utilisation:.0%} = {rate / 1e12:.0f} TFLOP/s sustained: {total / rate / 60:.1f} minutes "
               f"(one image per neuron; a diversity strip of N or F facets multiplies it by N or F+1)")


if __name__ == "__main__":
    typer.run(main)
