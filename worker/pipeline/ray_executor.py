"""`microscope build --ray`: the pipeline's stages across the GPUs (or CPUs) of a Ray cluster.

`RayExecutor` keeps `worker.pipeline.runner.SerialExecutor`'s shape, items -> compute -> merge -> write, and runs
the same stage code: each item's `compute` is a Ray task, the merge runs in the driver, and a stage whose
write comes in pieces (`write_items` / `write_item` / `finish`: the examples stage's unit ranges) has each
piece written by a task too, one transaction per batch of whole units. Only stages marked `distributed`
(their cost grows with images or units: examples, featurevis, words, maps) leave the driver; the others
are small and run there, as in a serial build.

A worker rebuilds the build context once per process from a `Recipe`: the store's settings (resolved to
absolute paths: the database and the data folder must be shared storage), the model (its weights file, or
for a random-init model the driver's weights through the object store), corpus, layers and options. Tasks
are retried by Ray (`max_retries`) when their worker process dies; a stage's items resume from what they
left (the examples partial files, the word chunks' checkpoints, the rendered units), so a killed driver's
rerun computes only what is missing.

Ray is imported here only: the default build and the web app never load it.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from worker.pipeline.contract import BuildContext, Item, Stage
from worker.pipeline.runner import SerialExecutor

_CONTEXTS: dict[str, BuildContext] = {}  # per worker process: the context a recipe built


@dataclass(frozen=True)
class Recipe:
    """What a worker needs to rebuild the driver's build context."""

    key: str
    settings: dict
    arch: str
    weights: str | None
    config_dirs: tuple[str, ...]
    model_name: str
    corpus: str | None
    layers: tuple[str, ...]
    options: dict
    state: Any = None  # ObjectRef of the model's state dict, for weights a worker cannot load from a file
    loader_workers: int | None = None  # DataLoader decoders per GPU task (a node's CPUs over its GPUs)
    precision: str = "fp32"  # the driver's, as resolved for the command (worker.compute.precision)


def recipe_of(ctx: BuildContext, ray, loader_workers: int | None) -> Recipe:
    settings = ctx.store.settings
    shared = {"data_dir": str(Path(settings.data_dir).resolve()), "database_url": settings.db_url,
              "cache_dir": str(settings.cache_root)}
    weights = ctx.loaded.weights
    state = None
    if not weights or not Path(weights).expanduser().is_file():  # random init (or a tag): ship the weights
        state = ray.put({k: v.detach().cpu() for k, v in ctx.loaded.model.state_dict().items()})
    return Recipe(uuid.uuid4().hex, shared, ctx.loaded.arch, weights, tuple(map(str, ctx.config_dirs)),
                  ctx.model_name, None if ctx.corpus is None else str(Path(ctx.corpus).resolve()),
                  tuple(ctx.layers), ctx.options, state, loader_workers, ctx.loaded.precision)


def context(recipe: Recipe) -> BuildContext:
    """The worker process's build context for `recipe` (built on first use)."""
    if recipe.key not in _CONTEXTS:
        for old in _CONTEXTS.values():  # one build at a time per worker: free the previous model and engine
            old.store.sessions.kw["bind"].dispose()
        _CONTEXTS.clear()
        _CONTEXTS[recipe.key] = build_context(recipe)
    return _CONTEXTS[recipe.key]


def build_context(recipe: Recipe) -> BuildContext:
    import ray

    from store.settings import Settings
    from store.writes import open_store
    from worker.compute.models import load_model
    from worker.compute.precision import resolve_precision

    device = "cuda" if ray.get_gpu_ids() else "cpu"
    loaded = load_model(recipe.arch, recipe.weights if recipe.state is None else None, device, recipe.config_dirs)
    if recipe.state is not None:
        loaded.model.load_state_dict(ray.get(recipe.state))
        loaded = replace(loaded, weights=recipe.weights)
    loaded.precision = resolve_precision(recipe.precision, device)  # bf16 on a GPU without it: one line
    options = dict(recipe.options)
    if device == "cuda" and recipe.loader_workers is not None:
        options["examples"] = {"workers": recipe.loader_workers, **options.get("examples", {})}
    return BuildContext(open_store(Settings(**recipe.settings)), loaded, recipe.model_name,
                        None if recipe.corpus is None else Path(recipe.corpus), recipe.layers, options,
                        tuple(Path(d) for d in recipe.config_dirs), progress=False)


def compute_task(recipe: Recipe, stage: Stage, item: Item, run_id: int):
    from store.writes import joined_run

    with joined_run(run_id, stage.name):
        return stage.compute(context(recipe), item)


def write_task(recipe: Recipe, stage: Stage, merged, item: Item, run_id: int) -> dict:
    from store.writes import joined_run

    with joined_run(run_id, stage.name):
        return stage.write_item(context(recipe), merged, item, run_id)


def init(address: str = "auto", **kwargs) -> None:
    """Join the cluster at `address`, or with "auto" the one this machine runs (`ray start`, RAY_ADDRESS),
    else start one on this machine over its GPUs and CPUs."""
    import ray

    if not ray.is_initialized():
        ray.init(address=None if address == "auto" else address, **kwargs)


class RayExecutor:
    """Runs the distributed stages' items and write pieces as Ray tasks (see the module docstring)."""

    def __init__(self, address: str = "auto", max_retries: int = 3, **init_kwargs):
        import ray

        init(address, **init_kwargs)
        self.ray, self.max_retries = ray, max_retries
        self.recipes: dict[int, Recipe] = {}

    def resources(self) -> dict:
        """One GPU per task where the cluster has GPUs (and its share of the CPUs), else one CPU."""
        total = self.ray.cluster_resources()
        gpus, cpus = total.get("GPU", 0), total.get("CPU", 1)
        if gpus:
            return {"num_gpus": 1, "num_cpus": max(1, int(cpus // gpus))}
        return {"num_cpus": 1}

    def recipe(self, ctx: BuildContext) -> Recipe:
        if id(ctx) not in self.recipes:
            res = self.resources()
            decoders = max(1, res["num_cpus"] - 1) if "num_gpus" in res else None
            self.recipes[id(ctx)] = recipe_of(ctx, self.ray, decoders)
        return self.recipes[id(ctx)]

    def run(self, stage: Stage, ctx: BuildContext, run_id: int) -> dict:
        if not getattr(stage, "distributed", False):
            return SerialExecutor().run(stage, ctx, run_id)
        ray, recipe = self.ray, self.recipe(ctx)
        options = {"max_retries": self.max_retries, **self.resources()}
        compute = ray.remote(compute_task).options(**options)
        parts = ray.get([compute.remote(recipe, stage, item, run_id) for item in stage.items(ctx)])
        merged = stage.merge(ctx, parts)
        if not hasattr(stage, "write_items"):
            return stage.write(ctx, merged, run_id)
        shared = ray.put(merged)
        write = ray.remote(write_task).options(**options)
        pieces = ray.get([write.remote(recipe, stage, shared, item, run_id)
                          for item in stage.write_items(ctx, merged)])
        return stage.finish(ctx, merged, pieces, run_id)
