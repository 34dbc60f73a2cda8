"""Train the demo model: the image tower learns to meet the frozen MiniLM's caption embeddings (LiT-style).

Because the text tower is frozen, every training caption is embedded once (cached under the data folder)
and the loss is InfoNCE of each image against the whole caption bank: the image's own caption is the
positive, every other caption a negative. Only the image tower, the text projection (a linear map on top
of MiniLM, started at the identity) and the logit scale learn.

Reading first: the first `words_first` of the steps show rendered words only, from a pool of the most
common words that grows from `common_start` to `common_words`, with the pool's words as the only negatives
(a small classification). Without this head start a tower this small never learnt to read (0.6 % on the
held-out font after 2,400 mixed steps); with it, 96 % (see README, "The embedded default model").

Knobs tried for multimodal neurons and left off by default (each measured in the README's table; none
helped): `labelled` items and `named` words in the mix, a `pictures_first` phase before reading, a
`sparsity` penalty, `soft_targets` (whole bank or nearest captions, every caption or words only).

Determinism: batch i is drawn from a generator seeded with (seed, i) and torch runs on a fixed number of
threads, so a run with the same settings gives the same weights. Images are drawn by DataLoader workers
(`workers`, taking the batches in turn) while the main process trains, on the CPU or a GPU (`device`; the
same settings on another device give nearly, not bit-for-bit, the same weights).
"""
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from worker.demo import model as demo_model
from worker.demo.items import TEXT_KINDS, Item, Pools, captions, draw, load_pools, training_items

MIX = {"word": 0.32, "object": 0.17, "photo": 0.03, "flag": 0.22, "logo": 0.04, "colour": 0.08,
       "count": 0.04, "typographic": 0.10, "labelled": 0.0, "named": 0.0}


@dataclass
class TrainConfig:
    """Everything that decides the trained weights (recorded beside them)."""

    name: str = demo_model.ARCH
    vision: dict = field(default_factory=dict)  # overrides of the config's vision_cfg (tests)
    steps: int = 3000
    batch: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.05  # fraction of steps
    seed: int = 0
    n_words: int = 10_000
    pictures_first: float = 0.0  # this fraction of the steps shows pictures only (no text), then ...
    words_first: float = 0.4  # this fraction of the steps shows words only (reading needs a head start) ...
    common_start: int = 100  # ... drawn from the most common words, a pool of this many for the first third
    # of that phase, then growing geometrically ...
    common_words: int = 1000  # ... to this many by the end of that phase; afterwards this pool gets ...
    common_share: float = 0.7  # ... this share of the word draws, the other words the rest
    mix: dict = field(default_factory=lambda: dict(MIX))
    init_scale: float = 30.0
    sparsity: float = 0.0  # weight of the penultimate layer's L1/L2 (Hoyer) sparsity penalty
    soft_targets: float = 0.0  # > 0: each image's target is spread over captions the text tower finds alike
    # (softmax of this sharpness times cosine); 0: its own caption only
    soft_neighbours: int = 0  # spread over this many nearest captions only (0: the whole bank)
    soft_words_only: bool = False  # spread only the targets of rendered words (reading for meaning)
    threads: int = 1
    coloured: int = 1200  # coloured-object captions
    counts: int = 1500  # counting captions
    typographic: int = 2000  # object-with-a-word captions
    npm: bool = True  # False: no emoji, flags, logos (tests)
    limit: int | None = None  # assets per kind (tests)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def committed_config() -> TrainConfig:
    """The settings the committed weights were trained with (the defaults when there are none)."""
    if not demo_model.SETTINGS.is_file():
        return TrainConfig()
    saved = json.loads(demo_model.SETTINGS.read_text()).get("config", {})
    return TrainConfig(**{f.name: saved[f.name] for f in fields(TrainConfig) if f.name in saved})


# -- the caption bank --------------------------------------------------------------------------------------
@torch.no_grad()
def pooled_text(model, tokenizer, texts: list[str], batch: int = 512) -> torch.Tensor:
    """MiniLM's mean-pooled output (before the trainable projection) for each text."""
    text = model.text
    out = torch.empty(len(texts), text.transformer.config.hidden_size)
    tokens = tokenizer(texts)
    lengths = (tokens != text.config.pad_token_id).sum(1)
    order = torch.argsort(lengths, descending=True)
    for i in range(0, len(texts), batch):
        idx = order[i:i + batch]
        x = tokens[idx, :int(lengths[idx].max())]  # pad columns change nothing under the attention mask
        mask = (x != text.config.pad_token_id).long()
        out[idx] = text.pooler(text.transformer(input_ids=x, attention_mask=mask), mask)
    return out


def caption_bank(model, tokenizer, texts: list[str], cache: Path | None) -> torch.Tensor:
    """Pooled MiniLM features of `texts`, cached by content."""
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = Path(cache) / f"captions-{key}.pt" if cache else None
    if path and path.is_file():
        return torch.load(path)
    t = time.perf_counter()
    feats = pooled_text(model.eval(), tokenizer, texts)
    tqdm.write(f"embedded {len(texts)} captions with MiniLM in {time.perf_counter() - t:.0f} s")
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(feats, path)
    return feats


# -- the image stream --------------------------------------------------------------------------------------
def pictures_only(cfg: TrainConfig, step: int) -> bool:
    return step < cfg.pictures_first * cfg.steps


def words_only(cfg: TrainConfig, step: int) -> bool:
    return not pictures_only(cfg, step) and step < (cfg.pictures_first + cfg.words_first) * cfg.steps


def common_pool(cfg: TrainConfig, step: int) -> int:
    """How many of the most common words the words-only phase draws from at `step` (a reading curriculum)."""
    phase = max(1.0, cfg.words_first * cfg.steps)
    step -= cfg.pictures_first * cfg.steps
    grown = min(1.0, max(0.0, (step - phase / 3) / (phase * 2 / 3)))
    start = min(cfg.common_start, cfg.common_words)
    return int(round(start * (cfg.common_words / start) ** grown))


def pick(cfg: TrainConfig, groups: dict[str, list[Item]], rng: np.random.Generator, step: int) -> Item:
    """One training item: words only at first (from a growing pool of common words), then the mix."""
    if words_only(cfg, step):
        return groups["word"][int(rng.integers(min(common_pool(cfg, step), len(groups["word"]))))]
    kinds = [k for k in cfg.mix if groups.get(k) and cfg.mix[k] > 0
             and not (pictures_only(cfg, step) and groups[k][0].kind in TEXT_KINDS)]
    p = np.array([cfg.mix[k] for k in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
    group = groups[kind]
    if kind == "word" and rng.random() < cfg.common_share:
        return group[int(rng.integers(min(cfg.common_words, len(group))))]
    return group[int(rng.integers(len(group)))]


class Batches(IterableDataset):
    """Batch i: uint8 images (B, H, W, 3) and caption indices, drawn from a generator seeded (seed, i).
    With several loader workers, worker k draws batches start + k, start + k + n, ...; the DataLoader takes
    them from its workers in turn, so the order is the same as with one."""

    def __init__(self, cfg: TrainConfig, pools: Pools, groups: dict[str, list[Item]], index: dict[str, int],
                 start: int = 0):
        self.cfg, self.pools, self.groups, self.index, self.start = cfg, pools, groups, index, start

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.cfg.seed, i])
        items = [pick(self.cfg, self.groups, rng, i) for _ in range(self.cfg.batch)]
        pixels = np.stack([np.asarray(draw(it, rng, self.pools)) for it in items])
        return torch.from_numpy(pixels), torch.tensor([self.index[it.caption] for it in items])

    def __iter__(self):
        info = get_worker_info()
        k, n = (info.id, info.num_workers) if info else (0, 1)
        for i in range(self.start + k, self.cfg.steps, n):
            yield self.batch(i)


def to_input(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    x = pixels.permute(0, 3, 1, 2).float().div_(255)
    m, s = (torch.tensor(v, device=pixels.device).view(1, 3, 1, 1) for v in (mean, std))
    x = (x - m) / s
    return x.contiguous(memory_format=torch.channels_last)


# -- the loop ----------------------------------------------------------------------------------------------
def lr_at(cfg: TrainConfig, step: int) -> float:
    warm = max(1, int(cfg.warmup * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))


def penultimate_and_embedding(visual, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """open_clip's own forward of the image tower, keeping layer4's output (B, U, H, W) on the way."""
    kept = []
    handle = visual.layer4.register_forward_hook(lambda _m, _i, out: kept.append(out))
    try:
        emb = visual(images)
    finally:
        handle.remove()
    return kept[0], emb


def hoyer(acts: torch.Tensor) -> torch.Tensor:
    """Mean over images of L1/L2 of each image's spatially pooled units, divided by sqrt(units): 1 when all
    units are equally active, sqrt(k/U) when k are. Scale-free, so shrinking activations cannot game it."""
    pooled = acts.mean((2, 3))
    return (pooled.abs().sum(1) / pooled.norm(dim=1).clamp_min(1e-6)).mean() / pooled.shape[1] ** 0.5


@dataclass(frozen=True)
class Soft:
    """How targets are spread (see `soft_targets`)."""

    sharpness: float
    neighbours: int = 0  # the nearest captions that share the target (0: all)
    rows: torch.Tensor | None = None  # bool over the bank: captions whose targets are spread (None: all)


def soft_targets(bank: torch.Tensor, targets: torch.Tensor, soft: Soft) -> torch.Tensor:
    """(B, bank) target distributions: caption j gets weight exp(sharpness * (cos(own, j) - 1)), normalised, by
    the frozen text features. Near-synonyms ("blue", "the color blue": cosine 0.89) stop being negatives that
    push a rendered word away from the picture it names; unrelated captions (cosine < 0.5) keep ~0 weight."""
    feats = F.normalize(bank, dim=-1)
    logits = soft.sharpness * (feats[targets] @ feats.T - 1)
    if soft.neighbours:
        kept = logits.topk(min(soft.neighbours + 1, logits.shape[1]), dim=1).indices
        logits = torch.full_like(logits, -torch.inf).scatter(1, kept, logits.gather(1, kept))
    q = F.softmax(logits, dim=-1)
    if soft.rows is not None:
        q = torch.where(soft.rows[targets][:, None], q, F.one_hot(targets, q.shape[1]).to(q.dtype))
    return q


def contrastive_loss(model, images: torch.Tensor, targets: torch.Tensor, bank: torch.Tensor,
                     sparsity: float = 0.0, soft: Soft | None = None) -> torch.Tensor:
    """InfoNCE of each image against every caption of the bank (through the text projection, normalised),
    plus `sparsity` times the penultimate layer's Hoyer measure (few units per image: each unit's read-out
    direction must then itself point at the meaning, for words and pictures alike)."""
    acts, emb = penultimate_and_embedding(model.visual, images)
    img = F.normalize(emb, dim=-1)
    proj = model.text.proj
    txt = bank if isinstance(proj, torch.nn.Identity) else F.normalize(proj(bank), dim=-1)
    logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
    loss = F.cross_entropy(logits, soft_targets(bank, targets, soft) if soft else targets)
    return loss + sparsity * hoyer(acts) if sparsity else loss


@dataclass
class Trained:
    model: torch.nn.Module
    losses: list[float]
    seconds: float
    settings: dict


def prepare(cfg: TrainConfig, data_dir: Path):
    """The fresh model, the asset pools, the item groups and the caption bank."""
    demo_model.register(cfg.name, cfg.vision, demo_model.CONFIG_DIR if not cfg.vision else
                        Path(data_dir) / "demo" / "model_configs")
    import open_clip

    torch.manual_seed(cfg.seed)
    model = demo_model.create(cfg.name)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(cfg.init_scale))
    size = model.visual.image_size
    pools = load_pools(Path(data_dir), size if isinstance(size, int) else size[0], cfg.n_words, cfg.npm, cfg.limit)
    groups = training_items(pools, cfg.seed, cfg.coloured, cfg.counts, cfg.typographic)
    texts = captions(groups.values())
    bank = caption_bank(model, open_clip.get_tokenizer(cfg.name), texts, Path(data_dir) / "demo" / "text")
    if isinstance(model.text.proj, torch.nn.Identity):  # a frozen text tower: normalise once
        bank = F.normalize(bank, dim=-1)
    return model, pools, groups, texts, bank


def optimiser(model, cfg: TrainConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=cfg.lr)


def resume_path(cfg: TrainConfig, data_dir: Path) -> Path:
    return Path(data_dir) / "demo" / "checkpoints" / f"train-{cfg.digest()}.pt"


def save_resume(path: Path, model, opt, losses: list[float], seconds: float, cpu: float) -> None:
    """The trained parameters, optimiser state and loss history so far (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": demo_model.trained_state(model), "opt": opt.state_dict(), "losses": losses,
                "seconds": seconds, "cpu": cpu}, tmp)
    tmp.replace(path)


def load_resume(path: Path, model, opt, device: str = "cpu") -> tuple[list[float], float, float]:
    """Continue a killed run with the same settings: every batch depends only on (seed, step), so the
    result is the same as an uninterrupted run."""
    if not path.is_file():
        return [], 0.0, 0.0
    state = torch.load(path, weights_only=False, map_location=device)
    model.load_state_dict(state["model"], strict=False)
    opt.load_state_dict(state["opt"])
    return state["losses"], state["seconds"], state["cpu"]


def train(cfg: TrainConfig, data_dir: Path, progress: bool = True, save_every: int = 200, device: str = "cpu",
          workers: int = 1) -> Trained:
    """Train from scratch (or resume the same settings' killed run); returns the model, the loss of every
    step and the wall time of the loop."""
    torch.set_num_threads(cfg.threads)
    model, pools, groups, texts, bank = prepare(cfg, data_dir)
    return fit(cfg, model, pools, groups, texts, bank, resume_path(cfg, data_dir), progress, save_every, device,
               workers)


def fit(cfg: TrainConfig, model, pools: Pools, groups: dict[str, list[Item]], texts: list[str], bank: torch.Tensor,
        resume: Path | None = None, progress: bool = True, save_every: int = 200, device: str = "cpu",
        workers: int = 1) -> Trained:
    """The training loop on `device`, with `workers` processes drawing batches (the batches, and so the
    result on one device, do not depend on how many)."""
    index = {t: i for i, t in enumerate(texts)}
    mean, std = model.visual.preprocess_cfg["mean"], model.visual.preprocess_cfg["std"]
    model.to(device)
    bank = bank.to(device)
    opt = optimiser(model, cfg)
    losses, seconds, cpu = load_resume(resume, model, opt, device) if resume else ([], 0.0, 0.0)
    start = len(losses)
    loader = DataLoader(Batches(cfg, pools, groups, index, start), batch_size=None, num_workers=workers,
                        prefetch_factor=4, worker_init_fn=_one_thread)
    model.visual.to(memory_format=torch.channels_last)
    model.train()
    model.text.eval()
    t0, cpu0 = time.perf_counter() - seconds, time.process_time() - cpu
    bar = tqdm(loader, initial=start, total=cfg.steps, desc="training", unit="step", disable=not progress)
    word_rows = torch.tensor([index[w.caption] for w in groups.get("word", [])[:cfg.common_words]], dtype=torch.long)
    rank = torch.full((len(texts),), -1, dtype=torch.long)
    rank[word_rows] = torch.arange(len(word_rows))
    is_word = torch.zeros(len(texts), dtype=torch.bool)
    is_word[[index[w.caption] for w in groups.get("word", [])]] = True
    is_word = is_word.to(device)
    for step, (pixels, targets) in enumerate(bar, start):
        negatives, soft = bank, spread(cfg, is_word)
        if words_only(cfg, step):  # the words in play are the negatives, as in a small classification
            negatives, targets = bank[word_rows[:common_pool(cfg, step)].to(device)], rank[targets]
            soft = spread(cfg, None)
        images = to_input(pixels.to(device, non_blocking=True), mean, std)
        losses.append(train_step(model, opt, lr_at(cfg, step), images, targets.to(device), negatives,
                                 cfg.sparsity, soft))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
        if resume and save_every and (step + 1) % save_every == 0 and step + 1 < cfg.steps:
            save_resume(resume, model, opt, losses, time.perf_counter() - t0, time.process_time() - cpu0)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    model.visual.to(memory_format=torch.contiguous_format)
    model.to("cpu").eval()
    if resume:
        resume.unlink(missing_ok=True)
    settings = {"config": asdict(cfg), "config_digest": cfg.digest(), "n_captions": len(texts),
                "n_items": {k: len(v) for k, v in groups.items()},
                "train_seconds": round(seconds, 1), "train_cpu_seconds": round(cpu, 1),
                "load_average": [round(x, 1) for x in os.getloadavg()], "resumed_at": start or None,
                "final_loss": round(float(np.mean(losses[-50:])), 4), "first_loss": round(losses[0], 4),
                "torch": torch.__version__, "cpu_count": os.cpu_count(), "device": str(device)}
    return Trained(model, losses, seconds, settings)


def spread(cfg: TrainConfig, is_word: torch.Tensor | None) -> Soft | None:
    if not cfg.soft_targets:
        return None
    return Soft(cfg.soft_targets, cfg.soft_neighbours, is_word if cfg.soft_words_only else None)


def train_step(model, opt, lr: float, images: torch.Tensor, targets: torch.Tensor, bank: torch.Tensor,
               sparsity: float = 0.0, soft: Soft | None = None) -> float:
    for g in opt.param_groups:
        g["lr"] = lr
    loss = contrastive_loss(model, images, targets, bank, sparsity, soft)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return loss.item()


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)


def plot_losses(losses: list[float], path: Path, title: str = "demo-clip training", phase_end: int = 0) -> Path:
    """The loss curve (raw and smoothed) as a PNG; `phase_end` marks the end of the words-only phase (its
    loss is over the words in play, afterwards over the whole caption bank)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(losses, lw=0.6, alpha=0.4, label="step")
    k = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
    ax.plot(np.arange(len(smooth)) + k - 1, smooth, lw=1.5, label=f"mean of {k}")
    if phase_end:
        ax.axvline(phase_end, color="grey", ls="--", lw=1)
        ax.annotate("words only | all kinds", (phase_end, max(losses)), ha="center", va="top", fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss (InfoNCE over the caption bank)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def run(cfg: TrainConfig, data_dir: Path, out: Path = demo_model.WEIGHTS, progress: bool = True,
        device: str = "cpu", workers: int = 1) -> Trained:
    """Train, save the trained parameters with their settings, and the loss curve beside them."""
    trained = train(cfg, data_dir, progress, device=device, workers=workers)
    demo_model.save_trained(trained.model, out, trained.settings)
    plot_losses(trained.losses, Path(out).with_name(Path(out).stem + "-loss.png"),
                phase_end=int((cfg.pictures_first + cfg.words_first) * cfg.steps))
    return trained
