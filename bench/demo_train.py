"""Demo model training speed: the real training step (the committed configuration, real drawn batches) timed
with 1 and 2 torch threads in one run, each extrapolated to the configured number of steps and set
against the issue's 30-minute budget for `microscope demo train` on a 2-core machine.

Wall time depends on what else the machine runs; CPU time of the training process is what the step
costs on an idle core, so both are printed, with the load average seen.

    .venv/bin/python bench/demo_train.py --steps 20
"""
import os
import sys
import time
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BUDGET_MIN = 30.0


def measure(threads: int, steps: int, data_dir: Path) -> dict:
    import torch

    from worker.demo.train import Batches, TrainConfig, contrastive_loss, lr_at, optimiser, prepare, to_input

    cfg = TrainConfig(threads=threads)
    torch.set_num_threads(threads)
    model, pools, groups, texts, bank = prepare(cfg, data_dir)
    index = {t: i for i, t in enumerate(texts)}
    mean, std = model.visual.preprocess_cfg["mean"], model.visual.preprocess_cfg["std"]
    batches = Batches(cfg, pools, groups, index)
    drawn = [batches.batch(int(cfg.words_first * cfg.steps) + i) for i in range(steps + 2)]  # the mixed phase
    opt = optimiser(model, cfg)
    model.visual.to(memory_format=torch.channels_last).train()
    for i, (pixels, targets) in enumerate(drawn):
        if i == 2:  # two warm-up steps
            wall, cpu = time.perf_counter(), time.process_time()
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, i)
        loss = contrastive_loss(model, to_input(pixels, mean, std), targets, bank)
        opt.zero_grad()
        loss.backward()
        opt.step()
    wall, cpu = (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps
    draw_start = time.process_time()
    batches.batch(0)
    draw = time.process_time() - draw_start
    return {"threads": threads, "wall": wall, "cpu": cpu, "draw": draw, "steps": cfg.steps}


def main(steps: int = typer.Option(20, min=2, help="timed steps per setting"),
         data_dir: Path = typer.Option(Path(os.environ.get("MICROSCOPE_DATA_DIR", "data")))):
    rows = [measure(t, steps, data_dir) for t in (1, 2)]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; batch drawing "
          f"{rows[0]['draw']:.2f} CPU-s per step (in a DataLoader worker, overlapped)")
    print(f"{'threads':>7} {'wall s/step':>12} {'CPU s/step':>11} {'full run, wall':>15} {'on idle cores':>14} "
          f"{'/ 30 min':>9}")
    for r in rows:
        full_wall, full_idle = r["wall"] * r["steps"] / 60, r["cpu"] / r["threads"] * r["steps"] / 60
        print(f"{r['threads']:>7} {r['wall']:>12.3f} {r['cpu']:>11.3f} {full_wall:>13.1f} m {full_idle:>12.1f} m "
              f"{full_wall / BUDGET_MIN:>9.2f}")
    print(f"2 threads / 1 thread, wall: {rows[1]['wall'] / rows[0]['wall']:.2f}")


if __name__ == "__main__":
    typer.run(main)
