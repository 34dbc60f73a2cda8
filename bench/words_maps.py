"""Rendered words and maps on a demo-sized model: the whole 10k-word stage and the maps stage, timed, beside the
bare model forward and the bare text rendering measured in the same run.

    .venv/bin/python bench/words_maps.py                 # the demo's image tower: 64 px, width 24
    .venv/bin/python bench/words_maps.py --size 96 --width 32

Prints seconds per part and the stage's images/s as a ratio of the bare forward's images/s.
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch


def tiny_model(size: int, width: int, folder: Path):
    from worker.compute.models import load_model, revive_random_resnet

    cfg = {"embed_dim": 64, "vision_cfg": {"image_size": size, "layers": [1, 1, 1, 1], "width": width,
                                           "patch_size": None},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    name = f"bench-rn-{size}-{width}"
    (folder / f"{name}.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    loaded = load_model(name, config_dirs=(folder,))
    revive_random_resnet(loaded.model)
    return loaded


def bare_forward(loaded, n: int, batch: int) -> float:
    from worker.compute.layers import activations

    loaded.visual.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, loaded.image_size, loaded.image_size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        activations(loaded, x[:8], ["layer4"])
        start = time.perf_counter()
        for _ in range(max(1, n // batch)):
            activations(loaded, x, ["layer4"])
    loaded.visual.to(memory_format=torch.contiguous_format)
    return max(1, n // batch) * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=int, default=24)
    ap.add_argument("--words", type=int, default=10_000)
    ap.add_argument("--skip-maps", action="store_true")
    args = ap.parse_args()

    from store.settings import Settings
    from store.writes import open_store
    from worker.analyses.maps import run_maps
    from worker.analyses.words import run_words
    from worker.compute.render_text import render_all
    from worker.compute.text_scores import common_words, default_plan

    tmp = Path(tempfile.mkdtemp(prefix="bench-words-"))
    loaded = tiny_model(args.size, args.width, tmp)
    words = common_words(args.words)
    plan = default_plan(loaded)
    print(f"model {loaded.arch}: {args.size} px, width {args.width}; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.1f}")

    fwd = bare_forward(loaded, 2048, 256)
    start = time.perf_counter()
    render_all(words[:1000], plan)
    render_rate = 1000 * plan.n_variants / (time.perf_counter() - start)

    store = open_store(Settings(data_dir=tmp, database_url=f"sqlite:///{tmp / 'bench.db'}"))
    start = time.perf_counter()
    report = run_words(store, loaded, "bench", words=words, plan=plan)
    words_s = time.perf_counter() - start
    images = len(words) * plan.n_variants
    print(f"bare forward          {fwd:8.0f} img/s")
    print(f"bare rendering        {render_rate:8.0f} img/s")
    print(f"words stage           {words_s:8.1f} s for {len(words)} words x {plan.n_variants} images "
          f"({images / words_s:.0f} img/s end to end, {images / words_s / fwd:.2f} x bare forward; "
          f"{report['rows']} WordScore rows)")
    if not args.skip_maps:
        start = time.perf_counter()
        maps = run_maps(store, loaded, "bench", plan=plan)
        print(f"maps stage            {time.perf_counter() - start:8.1f} s ({maps['crops']} crops, "
              f"{maps['places']} place names, {maps['units_written']} units drawn)")
    print(f"load average after    {os.getloadavg()[0]:8.1f}")


if __name__ == "__main__":
    main()
