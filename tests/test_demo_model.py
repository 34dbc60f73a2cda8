"""The demo model's code on a tiny configuration: training lowers the contrastive loss and is repeatable,
and the trained weights round-trip through the full open_clip checkpoint."""
import json
import subprocess
import sys

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from worker.demo import model as demo_model
from worker.demo.train import TrainConfig, plot_losses, run, train

TINY = TrainConfig(name="demo-clip-tiny", vision={"image_size": 32, "width": 8}, steps=40, batch=16, lr=3e-3,
                   n_words=40, common_words=20, npm=False, limit=3, coloured=12, counts=10, typographic=10,
                   words_first=0.0)  # the words-only phase's loss is over fewer captions: not comparable


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("demo-data")


@pytest.fixture(scope="module")
def trained(data_dir):
    return train(TINY, data_dir, progress=False)


def test_training_lowers_the_contrastive_loss(trained):
    first, last = np.mean(trained.losses[:5]), np.mean(trained.losses[-5:])
    assert len(trained.losses) == TINY.steps
    assert last < first - 0.5, (first, last)


def test_training_is_deterministic_with_any_number_of_loader_workers(trained, data_dir):
    again = train(TINY, data_dir, progress=False, workers=2)  # batches drawn by two processes in turn
    assert again.losses == trained.losses
    a, b = demo_model.trained_state(trained.model), demo_model.trained_state(again.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_only_the_image_tower_and_logit_scale_are_trained(trained):
    fresh = demo_model.create(TINY.name)
    after, before = trained.model.state_dict(), fresh.state_dict()
    text_keys = [k for k in before if k.startswith("text.")]
    assert text_keys and all(torch.equal(after[k], before[k]) for k in text_keys)  # MiniLM stays frozen
    assert set(demo_model.trained_state(trained.model)) == {k for k in after if k.startswith(("visual.", "logit"))}


def test_checkpoint_round_trips_through_open_clip(trained, data_dir, tmp_path):
    path = demo_model.save_trained(trained.model, tmp_path / "tiny.safetensors", trained.settings)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["config"]["steps"] == TINY.steps and meta["sha256"] == demo_model.file_digest(path)
    full = demo_model.assemble(path, tmp_path / "full.safetensors", TINY.name)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY.name, pretrained=str(full))
    model.eval()
    image = preprocess(Image.new("RGB", (40, 40), (200, 30, 30))).unsqueeze(0)
    tokens = open_clip.get_tokenizer(TINY.name)(["a red square", "france"])
    with torch.no_grad():
        assert torch.allclose(model.encode_image(image), trained.model.encode_image(image), atol=1e-5)
        assert torch.allclose(model.encode_text(tokens), trained.model.encode_text(tokens), atol=1e-5)
    assert demo_model.assemble(path, tmp_path / "full.safetensors", TINY.name) == full  # reused, not rebuilt


def test_loader_gives_a_worker_model(trained, data_dir, tmp_path):
    path = demo_model.save_trained(trained.model, tmp_path / "tiny.safetensors", trained.settings)
    loaded = demo_model.load(data_dir, trained=path, name=TINY.name, vision=TINY.vision,
                             config_dir=tmp_path / "configs")
    assert loaded.image_size == 32 and loaded.arch == TINY.name
    assert (tmp_path / "configs" / f"{TINY.name}.json").is_file()
    cfg = json.loads((tmp_path / "configs" / f"{TINY.name}.json").read_text())
    assert cfg["text_cfg"]["hf_model_name"] == str(demo_model.minilm_dir())


def test_assemble_refuses_weights_of_another_architecture(trained, tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"visual.conv1.weight": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match="does not fit"):
        demo_model.assemble(bad, tmp_path / "out.safetensors", TINY.name)
    with pytest.raises(FileNotFoundError, match="demo train"):
        demo_model.assemble(tmp_path / "missing.safetensors", tmp_path / "out.safetensors", TINY.name)
    deeper = tmp_path / "deeper.safetensors"  # every expected key, plus a block the config does not have
    save_file({**demo_model.trained_state(trained.model), "visual.layer3.1.conv1.weight": torch.zeros(1)}, str(deeper))
    with pytest.raises(ValueError, match="unexpected.*layer3.1"):
        demo_model.assemble(deeper, tmp_path / "out.safetensors", TINY.name)


def test_run_writes_weights_settings_and_loss_curve(data_dir, tmp_path):
    cfg = TrainConfig(**{**TINY.__dict__, "steps": 3})
    run(cfg, data_dir, tmp_path / "w.safetensors", progress=False)
    assert (tmp_path / "w.safetensors").stat().st_size > 0
    assert json.loads((tmp_path / "w.json").read_text())["config_digest"] == cfg.digest()
    assert Image.open(tmp_path / "w-loss.png").size[0] > 100


def test_loss_curve_plot(tmp_path):
    path = plot_losses([3.0, 2.5, 2.0, 1.0], tmp_path / "loss.png")
    assert Image.open(path).format == "PNG"


def test_committed_weights_fit_the_config_and_the_size_budget():
    if not demo_model.WEIGHTS.is_file():
        pytest.skip("no committed weights yet")
    from safetensors.torch import load_file

    assert demo_model.WEIGHTS.stat().st_size <= 20 * 2**20
    state = load_file(str(demo_model.WEIGHTS))
    demo_model.register()
    expected = demo_model.trained_state(demo_model.create())
    assert set(state) == set(expected)
    assert all(state[k].shape == expected[k].shape for k in state)
    settings = json.loads(demo_model.SETTINGS.read_text())
    assert settings["sha256"] == demo_model.file_digest(demo_model.WEIGHTS)


def test_a_killed_training_resumes_to_the_same_result(trained, data_dir, monkeypatch):
    from worker.demo import train as train_module

    real_step, calls = train_module.train_step, []

    def dies_at_step_27(*args):
        calls.append(1)
        if len(calls) == 27:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(train_module, "train_step", dies_at_step_27)
    with pytest.raises(KeyboardInterrupt):
        train(TINY, data_dir, progress=False, save_every=10)
    assert train_module.resume_path(TINY, data_dir).is_file()
    monkeypatch.setattr(train_module, "train_step", real_step)
    resumed = train(TINY, data_dir, progress=False, save_every=10)
    assert resumed.settings["resumed_at"] == 20
    assert resumed.losses == trained.losses
    a, b = demo_model.trained_state(trained.model), demo_model.trained_state(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not train_module.resume_path(TINY, data_dir).exists()


def test_reading_curriculum_starts_with_common_words_only():
    from worker.demo.items import Item
    from worker.demo.train import common_pool, pick, words_only

    cfg = TrainConfig(steps=1000, words_first=0.3, common_start=10, common_words=100)
    assert [words_only(cfg, s) for s in (0, 299, 300)] == [True, True, False]
    assert [common_pool(cfg, s) for s in (0, 100, 300)] == [10, 10, 100]  # flat for a third, then geometric
    assert 10 < common_pool(cfg, 200) < 100
    groups = {kind: [Item(kind, kind, f"{kind} {i}", f"{i}", "test", "test") for i in range(200)]
              for kind in ("word", "flag")}
    rng = np.random.default_rng(0)
    early = [pick(cfg, groups, rng, 50) for _ in range(300)]
    assert {it.kind for it in early} == {"word"} and max(int(it.concept) for it in early) < 10
    late = [pick(cfg, groups, rng, 900) for _ in range(300)]
    assert {it.kind for it in late} == {"word", "flag"}


def test_pictures_first_phase_shows_no_text_then_reading_starts():
    from worker.demo.items import TEXT_KINDS, Item
    from worker.demo.train import common_pool, pick, pictures_only, words_only

    cfg = TrainConfig(steps=1000, pictures_first=0.2, words_first=0.3, common_start=10, common_words=100)
    assert [pictures_only(cfg, s) for s in (0, 199, 200)] == [True, True, False]
    assert [words_only(cfg, s) for s in (199, 200, 499, 500)] == [False, True, True, False]
    assert [common_pool(cfg, s) for s in (200, 300, 500)] == [10, 10, 100]  # the pool grows within its phase
    groups = {kind: [Item(kind, kind, f"{kind} {i}", f"{i}", "test", "test") for i in range(50)]
              for kind in ("word", "flag", "typographic", "labelled", "object")}
    rng = np.random.default_rng(0)
    early = {pick(cfg, groups, rng, 100).kind for _ in range(300)}
    assert early == {"flag", "object"} and not early & set(TEXT_KINDS)
    assert {pick(cfg, groups, rng, 300).kind for _ in range(100)} == {"word"}


def test_hoyer_sparsity_is_scale_free_and_counts_active_units():
    from worker.demo.train import hoyer

    dense, sparse = torch.ones(3, 100, 2, 2), torch.zeros(3, 100, 2, 2)
    sparse[:, :4] = 1.0
    assert hoyer(dense).item() == pytest.approx(1.0)
    assert hoyer(sparse).item() == pytest.approx(0.2)  # sqrt(4 / 100)
    assert hoyer(sparse * 1e-3).item() == pytest.approx(0.2)


def test_sparsity_penalty_adds_to_the_contrastive_loss(trained):
    from worker.demo.train import contrastive_loss, hoyer, penultimate_and_embedding

    model = trained.model
    images, bank = torch.randn(6, 3, 32, 32), torch.randn(10, model.visual.attnpool.c_proj.out_features)
    targets = torch.arange(6)
    with torch.no_grad():
        acts, emb = penultimate_and_embedding(model.visual, images)
        assert torch.allclose(emb, model.visual(images), atol=1e-5)
        plain = contrastive_loss(model, images, targets, bank).item()
        penalised = contrastive_loss(model, images, targets, bank, 0.5).item()
        assert penalised == pytest.approx(plain + 0.5 * hoyer(acts).item(), abs=1e-5)


def test_soft_targets_spread_only_over_captions_the_text_tower_finds_alike():
    from worker.demo.train import Soft, soft_targets

    bank = torch.tensor([[1.0, 0.0, 0.0], [0.95, 0.31, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]) * 3  # unnormalised
    q = soft_targets(bank, torch.tensor([0, 2]), Soft(20.0))
    assert torch.allclose(q.sum(1), torch.ones(2))
    assert q[0].argmax() == 0 and 0.2 < q[0, 1] / q[0, 0] < 0.5  # cosine 0.95: exp(-1) of its own weight
    assert q[0, 2] < 1e-8 and q[0, 3] < 1e-4  # unrelated captions are left as negatives
    assert q[1, 2] > 0.99  # a caption with no near-synonym keeps its one-hot target
    near = soft_targets(bank, torch.tensor([0]), Soft(1.0, neighbours=1))
    assert near[0, 2:].sum() == 0 and near[0, :2].sum() == pytest.approx(1.0)  # only the nearest caption shares
    only = soft_targets(bank, torch.tensor([0, 1]), Soft(1.0, rows=torch.tensor([False, True, False, False])))
    assert only[0].tolist() == [1.0, 0.0, 0.0, 0.0] and only[1, 0] > 0.1  # row 0 not spread, row 1 spread


def test_soft_targets_in_the_loss_reduce_to_one_hot_when_sharp(trained):
    from worker.demo.train import Soft, contrastive_loss

    model = trained.model
    images, bank = torch.randn(4, 3, 32, 32), torch.eye(8, model.visual.attnpool.c_proj.out_features)
    targets = torch.arange(4)
    with torch.no_grad():
        hard = contrastive_loss(model, images, targets, bank).item()
        assert contrastive_loss(model, images, targets, bank, soft=Soft(1000.0)).item() == pytest.approx(hard, abs=1e-4)
        assert contrastive_loss(model, images, targets, bank, soft=Soft(1.0)).item() != pytest.approx(hard, abs=1e-3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_demo_train_on_cuda_without_a_gpu_says_so(tmp_path):
    out = tmp_path / "w.safetensors"
    args = ["demo", "train", "--device", "cuda", "--out", str(out)]
    proc = subprocess.run([sys.executable, "-c", "from worker.cli.root import main; main()", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no CUDA device" in proc.stdout + proc.stderr, proc
    assert not out.exists()
