"""Train variants of the demo model side by side on a GPU box and evaluate each, in one call.

Made for a lent GPU machine that has torch but neither the MiniLM weights (90 MB) nor this repo's data:
`pack` (here, after `microscope demo corpus`) writes everything the runs need into one 45 MB folder (with
the 14 MB repo and the three wheels, inside the 64 MiB a device call carries): the drawn assets, the
caption bank (MiniLM features, int8 per row), the evaluation images and text features, the fonts.
`run` (there) trains each variant with `worker.demo.train.fit` (image tower, logit scale; the text tower is
frozen, so no MiniLM is needed) and evaluates it with `worker.demo.evaluate`'s own functions, writing
OUT/<name>.json (+ the weights when under 15 MB).

    .venv/bin/python scripts/demo_sweep.py pack .sweep          # here; .sweep is git-ignored
    python3 scripts/demo_sweep.py run .sweep "$OUT" base wide64  # there (open_clip, ftfy, wcwidth as wheels)

Evaluating the committed weights this way gives the same figures as `microscope demo evaluate`
(94.7 %, 71.9 %, 1 multimodal unit; checked 2026-11-30).
"""
import io
import json
import lzma
import math
import os
import pickle
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VARIANTS = {  # TrainConfig overrides, vision overrides, loader workers
    "base": ({}, {}, 2),
    "long2x": ({"steps": 6000}, {}, 3),
    "wide64": ({"steps": 6000}, {"width": 64}, 3),
    "w48deep": ({"steps": 6000}, {"width": 48, "layers": [2, 2, 2, 2]}, 3),
}


# -- pack (here) -------------------------------------------------------------------------------------------
def pack(folder: Path, data: Path = Path("data")) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from worker.compute import render_text
    from worker.compute.text_scores import common_words
    from worker.demo import model as demo_model
    from worker.demo import sources
    from worker.demo.corpus import read_manifest
    from worker.demo.evaluate import NON_TEXT_EXCLUDED, embed_texts, heldout
    from worker.demo.items import captions, load_pools, training_items
    from worker.demo.train import caption_bank, committed_config

    cfg = committed_config()
    pools = load_pools(data, 64, cfg.n_words, cfg.npm, cfg.limit)
    groups = training_items(pools, cfg.seed, cfg.coloured, cfg.counts, cfg.typographic)
    texts = captions(groups.values())
    loaded = demo_model.load(data)
    bank = caption_bank(loaded.model, loaded.tokenizer, texts, data / "demo" / "text")
    scale = bank.abs().amax(1, keepdim=True) / 127
    pools.images = {k: np.asarray(v) for k, v in pools.images.items()}
    pools.photos = {k: _jpeg(v) for k, v in pools.photos.items()}
    rows = read_manifest(data / "demo" / "corpus")
    evals = {"reading": heldout(rows, "text"), "flags": heldout(rows, "flags"),
             "pictures": [r for r in rows if r["kind"] not in NON_TEXT_EXCLUDED]}
    paths = sorted({r["path"] for rs in evals.values() for r in rs})
    pixels = np.stack([np.asarray(Image.open(data / "demo" / "corpus" / p).convert("RGB")) for p in paths])
    text = {}
    for name, prompt in (("reading", "{}"), ("flags", "the flag of {}")):
        labels = sorted({r["concept"] for r in evals[name]})
        text[name] = (labels, embed_texts(loaded, [prompt.format(c) for c in labels]))
    bundle = {"cfg": cfg, "pools": pools, "groups": groups, "texts": texts, "bank": ((bank / scale).round().to(
        torch.int8), scale), "evals": evals, "paths": paths, "pixels": pixels, "text": text,
        "words": common_words(10_000)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bundle.pkl.xz").write_bytes(lzma.compress(pickle.dumps(bundle, protocol=5)))
    fonts = {f.path for f in sources.FONTS.values()} | {render_text.font_path(n) for n in render_text.DEFAULT_FONTS}
    for f in fonts:
        dst = folder / "fonts" / Path(f).relative_to(sources.FONT_ROOT)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dst)
    print(f"packed {sum(f.stat().st_size for f in folder.rglob('*') if f.is_file()) / 1e6:.1f} MB into {folder}")


def _jpeg(img) -> bytes:  # backgrounds and crops only: lossy keeps the transfer small
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


# -- run (there) -------------------------------------------------------------------------------------------
def unpack(folder: Path) -> dict:
    import torch.nn.functional as F
    from PIL import Image

    from worker.compute import render_text
    from worker.demo import sources

    sources.FONT_ROOT = render_text.FONT_ROOT = folder / "fonts"
    b = pickle.loads(lzma.decompress((folder / "bundle.pkl.xz").read_bytes()))
    pools = b["pools"]
    pools.images = {k: Image.fromarray(v) for k, v in pools.images.items()}
    pools.photos = {k: Image.open(io.BytesIO(v)).convert("RGB") for k, v in pools.photos.items()}
    q, scale = b["bank"]
    b["bank"] = F.normalize(q.float() * scale, dim=-1)  # the text projection is the identity: normalise once
    images = Path(os.environ.get("TMPDIR", "/tmp")) / "sweep-images"
    for path, px in zip(b["paths"], b["pixels"], strict=True):
        dst = images / path
        if not dst.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(px).save(dst)
    for rows in b["evals"].values():
        for r in rows:
            r["file"] = str(images / r["path"])
    return b


def image_model(vision: dict, init_scale: float):
    """The demo model without its frozen text tower: what training changes, with the same parameter names."""
    import torch
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip.modified_resnet import ModifiedResNet

    from worker.compute.models import revive_random_resnet

    class ImageSide(torch.nn.Module):
        def __init__(self):
            super().__init__()
            v = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 24, **vision}
            self.visual = ModifiedResNet(layers=v["layers"], output_dim=384, heads=v["width"] * 32 // 64,
                                         image_size=v["image_size"], width=v["width"])
            self.visual.preprocess_cfg = {"mean": OPENAI_DATASET_MEAN, "std": OPENAI_DATASET_STD}
            self.text = torch.nn.Module()
            self.text.proj = torch.nn.Identity()
            self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(init_scale)))

        def encode_image(self, images):
            return self.visual(images)

    model = ImageSide()
    revive_random_resnet(model.visual)
    return model


def evaluate(model, b: dict, device: str, limit: int | None = None) -> dict:
    import torch
    from open_clip.transform import image_transform

    from worker.compute.layers import layer_spec
    from worker.compute.models import LoadedModel
    from worker.demo.evaluate import MIN_SHARED, multimodal_units, top1, unit_activations, word_scores

    mean, std, size = model.visual.preprocess_cfg["mean"], model.visual.preprocess_cfg["std"], model.visual.image_size
    loaded = LoadedModel("sweep", None, model.to(device).eval(), image_transform(size, False, mean=mean, std=std),
                         None, size, tuple(mean), tuple(std), torch.device(device))
    out = {}
    for name in ("reading", "flags"):
        out[name] = round(top1(loaded, b["evals"][name], *b["text"][name]), 4)
    layer = layer_spec(loaded, None).name
    pictures, words = b["evals"]["pictures"][:limit], b["words"][:limit]
    units = multimodal_units(unit_activations(loaded, [r["file"] for r in pictures], layer), pictures,
                             word_scores(loaded, words, layer), words)
    out.update(layer=layer, units=len(units), multimodal=sum(u.shared >= MIN_SHARED for u in units),
               by_shared=dict(sorted(Counter(u.shared for u in units).items())),
               best=[{"unit": u.unit, "shared": u.shared, "words": u.words,
                      "captions": [im["caption"] for im in u.images if im["shared"]][:5]} for u in units[:12]])
    return out


def run_one(folder: Path, out: Path, name: str, smoke: bool) -> None:
    import torch
    from safetensors.torch import save_file

    from worker.demo.model import trained_state
    from worker.demo.train import TrainConfig, fit

    overrides, vision, workers = VARIANTS[name]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(1)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    b = unpack(folder)
    cfg = TrainConfig(**{**b["cfg"].__dict__, **overrides, **({"steps": 12, "batch": 16} if smoke else {})})
    torch.manual_seed(cfg.seed)
    model = image_model(vision, cfg.init_scale)
    report = {"name": name, "cfg": overrides, "vision": vision, "device": device,
              "params": sum(p.numel() for p in model.visual.parameters())}
    trained = fit(cfg, model, b["pools"], b["groups"], b["texts"], b["bank"], device=device, workers=workers)
    report.update(steps=cfg.steps, train_s=round(trained.seconds, 1), final_loss=trained.settings["final_loss"])
    _write(out, report)
    state = trained_state(trained.model)
    if sum(v.numel() for v in state.values()) * 4 < 15e6:
        save_file(state, str(out / f"{name}.safetensors"))
    t = time.perf_counter()
    report.update(evaluate(trained.model, b, device, 300 if smoke else None), eval_s=round(time.perf_counter() - t))
    _write(out, report)
    print(json.dumps({k: report[k] for k in ("name", "reading", "flags", "multimodal", "by_shared", "train_s")}))


def _write(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{report['name']}.json").write_text(json.dumps(report, indent=1))


def run(folder: Path, out: Path, names: list[str], deadline: float) -> None:
    """Each variant in its own process (they share the GPU), killed at the deadline; logs to out/log.txt."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TQDM_MININTERVAL": "30", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    logs = {n: open(out / f".{n}.log", "w") for n in names}
    procs = {n: subprocess.Popen([sys.executable, __file__, "one", str(folder), str(out), n], env=env,
                                 stdout=logs[n], stderr=subprocess.STDOUT) for n in names}
    start = time.time()
    while any(p.poll() is None for p in procs.values()) and time.time() - start < deadline:
        time.sleep(5)
    with open(out / "log.txt", "w") as log:
        for n, p in procs.items():
            if p.poll() is None:
                p.kill()
            lines = [ln for ln in (out / f".{n}.log").read_text().replace("\r", "\n").splitlines() if ln.strip()]
            (out / f".{n}.log").unlink()
            log.write(f"== {n} rc={p.wait()}\n" + "\n".join(lines[-40:]) + "\n")
            print(f"== {n} rc={p.returncode}\n" + "\n".join(lines[-6:]))
    print(f"sweep done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    verb, *args = sys.argv[1:]
    if verb == "pack":
        pack(Path(args[0]))
    elif verb == "one":
        run_one(Path(args[0]), Path(args[1]), args[2], os.environ.get("SWEEP_SMOKE") == "1")
    else:
        run(Path(args[0]), Path(args[1]), args[2:] or list(VARIANTS), float(os.environ.get("SWEEP_DEADLINE", 480)))
