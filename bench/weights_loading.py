"""Loading one model from an OpenAI TorchScript archive vs a state dict (.pt, .safetensors), side by side.

Why it matters: OpenAI's RN50.pt … ViT-L-14.pt are TorchScript archives; `torch.jit.load` deserialises the
traced code as well as the tensors, and the loader then rebuilds open_clip's model from the state dict, so
an archive costs more than a plain state dict of the same weights. This prints the median load time of
each (the whole `worker.compute.models.load_model`: sniff, read, build, check, fill) and the archive / state-dict
ratio, and checks the three load identical weights.

    .venv/bin/python bench/weights_loading.py                  # tiny ViT and ModifiedResNet configs
    .venv/bin/python bench/weights_loading.py --arch RN50 --repeats 3    # a real-size random-init RN50
"""
import statistics
import sys
import tempfile
import time
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIGS = ROOT / "tests" / "model_configs"


def median_load(arch: str, path: Path, repeats: int, quick: bool):
    from worker.compute.load_settings import LoadOverrides
    from worker.compute.models import load_model

    times, loaded = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        loaded = load_model(arch, str(path), config_dirs=(CONFIGS,), overrides=LoadOverrides(quick_gelu=quick))
        times.append(time.perf_counter() - start)
    return statistics.median(times), loaded


def bench(arch: str, repeats: int) -> None:
    import open_clip
    import torch

    from worker.compute.checkpoints import save_openai_archive
    from worker.compute.models import save_checkpoint

    open_clip.add_model_config(CONFIGS)
    model = open_clip.create_model(arch, quick_gelu=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = {"archive": save_openai_archive(model, Path(tmp) / "archive.pt"),
                 "state .pt": save_checkpoint(model, Path(tmp) / "state.pt"),
                 "safetensors": save_checkpoint(model, Path(tmp) / "state.safetensors")}
        results = {name: median_load(arch, path, repeats, True) for name, path in files.items()}
    ref = results["archive"][1].model.state_dict()
    same = all(all(torch.equal(ref[k], r[1].model.state_dict()[k]) for k in ref) for r in results.values())
    mb = sum(v.numel() * 4 for v in ref.values()) / 1e6
    line = ", ".join(f"{name} {t * 1000:.0f} ms" for name, (t, _) in results.items())
    ratio = results["archive"][0] / results["state .pt"][0]
    typer.echo(f"{arch} ({mb:.0f} MB fp32): {line}; archive / state dict = {ratio:.2f}x; identical weights: {same}")


def main(arch: list[str] = typer.Option(["tiny-vit-oa", "tiny-rn-oa"], help="open_clip architectures"),
         repeats: int = typer.Option(5, min=1)):
    for a in arch:
        bench(a, repeats)


if __name__ == "__main__":
    typer.run(main)
