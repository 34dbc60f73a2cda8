"""The GPU path's bugs, each reproduced on the CPU: a resume with loader workers, non-finite
activations (fp16 overflow), the pinned batch handed to the device copy, precision in the job's
fingerprint, and JPEG decoding through torchvision (the GPU decoder's code path, run with device="cpu")."""
import dataclasses
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import select
from test_examples import CONFIG_DIR, make_corpus, pattern, same, settings_at, snapshot, stored_examples, stored_stats
from typer.testing import CliRunner

from store.schema import Run
from store.writes import open_store
from worker.analyses import examples
from worker.analyses.examples import ExampleOptions, run_examples
from worker.cli.stages import worker_cli
from worker.compute import partials
from worker.compute.corpus import MAX_PIXELS, CorpusBatches, content_hash, decode, device_decodable
from worker.compute.device_decode import DeviceDecoder
from worker.compute.precision import PrecisionMismatch


class Interrupted(Exception):
    """Stands in for a kill right after a checkpoint."""


def interrupt_after_checkpoints(monkeypatch, n: int) -> None:
    """Let the run save `n` checkpoints, then stop it (the checkpoint stays, as after a SIGKILL)."""
    real, saved = examples.save_checkpoint, []

    def save_then_stop(path, progress):
        real(path, progress)
        saved.append(progress.cursor)
        if len(saved) == n:
            raise Interrupted

    monkeypatch.setattr(examples, "save_checkpoint", save_then_stop)


def test_a_run_resumed_with_two_loader_workers_gives_the_uninterrupted_store(tmp_path, tiny_rn, monkeypatch):
    corpus = make_corpus(tmp_path / "corpus", n=20, bad=False)
    opts = ExampleOptions(k=3, batch_size=4, samples=6, workers=0, progress=False, checkpoint_seconds=0)
    resumed = open_store(settings_at(tmp_path / "resumed"))
    with monkeypatch.context() as m:
        interrupt_after_checkpoints(m, 1)  # cursor 1: the resumed run starts at batch 1, not 0
        with pytest.raises(Interrupted):
            run_examples(resumed, tiny_rn, "tiny", corpus, ["layer1"], opts)
    two = ExampleOptions(**{**vars(opts), "workers": 2})
    report = run_examples(resumed, tiny_rn, "tiny", corpus, ["layer1"], two)
    assert report["images"] == 20
    reference = open_store(settings_at(tmp_path / "reference"))
    run_examples(reference, tiny_rn, "tiny", corpus, ["layer1"], opts)
    same(snapshot(resumed, runs=False), snapshot(reference, runs=False))


def poison_first_image(monkeypatch, layer: str) -> None:
    """The corpus's first image gets +inf at one position of unit 0 (an fp16 overflow) and 1e6
    everywhere in unit 1 (finite, but beyond float16's 65504)."""
    real, done = examples.readings, []

    def poisoned(loaded, x, names):
        got = real(loaded, x, names)
        if x.shape[0] > 1 and not done:  # not the one-image probe of the grid
            r = got[layer]  # a ResNet: value and negative are the same signal, pooled by the mean
            for heat, pooled in ((r.heat, r.value), (r.heat_negative, r.negative)):
                heat[0, 0, 0, 0], pooled[0, 0] = float("inf"), float("inf")
                heat[0, 1], pooled[0, 1] = 1e6, 1e6
            done.append(True)
        return got

    monkeypatch.setattr(examples, "readings", poisoned)


def test_an_inf_activation_is_dropped_and_counted_and_a_huge_heatmap_stays_finite(store, tiny_rn, tmp_path,
                                                                                   monkeypatch):
    corpus = make_corpus(tmp_path / "corpus", n=12, bad=False)
    first = content_hash((corpus / "000.jpg").read_bytes())[0]
    poison_first_image(monkeypatch, "layer1")
    opts = ExampleOptions(k=3, batch_size=5, samples=6, workers=0, progress=False)
    report = run_examples(store, tiny_rn, "tiny", corpus, ["layer1"], opts)
    stats = stored_stats(store, "tiny", "layer1")
    assert (stats[0].n, stats[1].n, stats[2].n) == (11, 12, 12)
    assert math.isfinite(stats[0].max) and stats[0].max < 1e3 and math.isfinite(stats[0].std)
    got = stored_examples(store, "tiny", "layer1")
    assert first not in [sha for sha, _, _ in got[(0, "top")] + got[(0, "bottom")]]
    sha, activation, heat = got[(1, "top")][0]
    assert sha == first and activation == pytest.approx(1e6)
    assert np.allclose(heat, 1e6, rtol=1e-3)  # float16 alone would have stored inf
    assert report["non_finite"] == {"layer1": 1} and report["images"] == 12


def test_the_device_copy_is_handed_the_loaders_own_batch_tensor(store, tiny_rn, tmp_path, monkeypatch):
    """With pin_memory the loader pins each batch's pixel tensor; a copy made before the transfer (an
    index) would be pageable and the non-blocking copy synchronous. (Pinning itself needs a CUDA driver.)"""
    corpus = make_corpus(tmp_path / "corpus", n=10)  # holds a duplicate: not every image is fresh
    loaded, handed = set(), []
    real_load, real_to = CorpusBatches.load, torch.Tensor.to

    def load(self, number, chunk):
        batch = real_load(self, number, chunk)
        loaded.add(batch.pixels.data_ptr())
        return batch

    def to(self, *args, **kwargs):
        if kwargs.get("non_blocking") and self.dim() == 4:
            handed.append(self.data_ptr())
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(CorpusBatches, "load", load)
    monkeypatch.setattr(torch.Tensor, "to", to)
    report = run_examples(store, tiny_rn, "tiny", corpus, ["layer1"],
                          ExampleOptions(k=2, batch_size=4, samples=0, workers=0, progress=False))
    assert report["duplicates"] == 1
    assert len(handed) == 3 and set(handed) <= loaded  # the last batch holds only bad files


def top_sets(store, layer: str) -> dict[tuple[int, str], set[str]]:
    return {key: {sha for sha, _, _ in rows} for key, rows in stored_examples(store, "tiny", layer).items()}


def test_bf16_is_in_the_fingerprint_and_its_top_k_agrees_with_fp32(tiny_rn, tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=24, bad=False)
    stores, reports = {}, {}
    for precision in ("fp32", "bf16"):
        stores[precision] = open_store(settings_at(tmp_path / precision))
        opts = ExampleOptions(k=8, batch_size=8, samples=0, workers=0, progress=False, precision=precision)
        reports[precision] = run_examples(stores[precision], tiny_rn, "tiny", corpus, ["layer4"], opts)
    runs = {p: s.sessions().scalars(select(Run)).one() for p, s in stores.items()}
    assert [runs[p].settings["precision"] for p in runs] == ["fp32", "bf16"]
    assert [r["precision"] for r in reports.values()] == ["fp32", "bf16"]
    assert runs["fp32"].settings["fingerprint"] != runs["bf16"].settings["fingerprint"]
    full, half = top_sets(stores["fp32"], "layer4"), top_sets(stores["bf16"], "layer4")
    overlap = np.mean([len(full[key] & half[key]) / 8 for key in full])
    assert 0.8 < overlap < 1.0  # bf16 computes something else, close to fp32


def test_a_checkpoint_at_another_precision_is_one_clear_line_and_stays(tmp_path, tiny_rn, monkeypatch):
    corpus = make_corpus(tmp_path / "corpus", n=12, bad=False)
    settings = settings_at(tmp_path / "store")
    opts = ExampleOptions(k=3, batch_size=4, samples=0, workers=0, progress=False, checkpoint_seconds=0)
    with monkeypatch.context() as m:
        interrupt_after_checkpoints(m, 1)
        with pytest.raises(Interrupted):
            run_examples(open_store(settings), tiny_rn, "tiny-rn", corpus, ["layer1"], opts)
    saved = list((settings.data_dir / "checkpoints").iterdir())
    with pytest.raises(PrecisionMismatch, match="at --precision fp32 exists.*resume it with --precision fp32"):
        run_examples(open_store(settings), tiny_rn, "tiny-rn", corpus, ["layer1"],
                     dataclasses.replace(opts, precision="bf16"))
    assert list((settings.data_dir / "checkpoints").iterdir()) == saved
    with pytest.raises(PrecisionMismatch, match="at --jpeg-decode workers exists"):
        run_examples(open_store(settings), tiny_rn, "tiny-rn", corpus, ["layer1"],
                     dataclasses.replace(opts, jpeg_decode="device"))
    monkeypatch.setenv("MICROSCOPE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("MICROSCOPE_DATABASE_URL", settings.db_url)
    bad = CliRunner().invoke(worker_cli, ["examples", "tiny-rn", "--config-dir", str(CONFIG_DIR), "--corpus",
                                          str(corpus), "--device", "cpu", "--precision", "fp64"])
    assert bad.exit_code == 2 and "--precision must be one of fp32, bf16, fp16, auto" in bad.stderr


def stage_context(store, loaded, corpus, **options):
    from worker.pipeline.contract import BuildContext

    examples = {"k": 2, "batch_size": 4, "samples": 0, "workers": 0, "range_entries": 4, **options}
    return BuildContext(store, loaded, "tiny", corpus, ("layer1",), {"examples": examples}, (CONFIG_DIR,),
                        progress=False)


def test_range_partials_at_another_precision_or_decoder_never_mix(store, tiny_rn, tmp_path, monkeypatch):
    """A killed fp32 build left range 0's partial: a bf16 (or device-decoded) build computes every range
    in a folder of its own, and the fp32 partial stays for an fp32 rerun to resume."""
    from worker.analyses import example_parts
    from worker.pipeline.runner import run_pipeline
    from worker.stages.examples import Examples

    corpus = make_corpus(tmp_path / "corpus", n=10, bad=False)
    fp32 = stage_context(store, tiny_rn, corpus)
    first = Examples().items(fp32)[0]
    Examples().compute(fp32, first)
    kept = partials.path_of(fp32.data_dir, first.payload[0], first.key)
    computed, compute_range = [], example_parts.compute_range
    monkeypatch.setattr(example_parts, "compute_range",
                        lambda loaded, layers, piece, *a: computed.append(piece.start) or compute_range(loaded, layers,
                                                                                                      piece, *a))
    for other in (stage_context(store, dataclasses.replace(tiny_rn, precision="bf16"), corpus),
                  stage_context(store, tiny_rn, corpus, jpeg_decode="device")):
        assert Examples().items(other)[0].payload[0] != first.payload[0]  # another fingerprint: another folder
        computed.clear()
        (got,) = run_pipeline(other, stages=[Examples()], echo=lambda _: None)
        assert got.status == "done" and computed == [0, 4, 8], (got, computed)
        assert kept.is_file()
    computed.clear()
    (got,) = run_pipeline(fp32, stages=[Examples()], echo=lambda _: None)
    assert got.status == "done" and computed == [4, 8]  # range 0 resumed from its partial


def test_feature_vis_renders_in_bf16_under_its_own_settings_hash(tiny_rn):
    from worker.analyses.featurevis import FeatureVisSettings, variants
    from worker.compute.featurevis.render import RenderSettings, render

    fp32, bf16 = RenderSettings(steps=3), RenderSettings(steps=3, precision="bf16")
    assert "precision" not in fp32.as_dict()  # images stored before precision was a setting stay valid
    hashes = [variants(FeatureVisSettings(r), "tiny-rn", None, "layer4")[0].settings_hash for r in (fp32, bf16)]
    assert hashes[0] != hashes[1]
    full, half = (render(tiny_rn, "layer4:3", [7], r) for r in (fp32, bf16))
    assert torch.isfinite(half.images).all() and not torch.equal(full.images, half.images)
    assert half.objective.dtype == torch.float32
    assert torch.allclose(full.history[0], half.history[0], rtol=0.05, atol=0.05)  # same start, bf16 noise
    with pytest.raises(ValueError, match="--precision must be one of"):
        RenderSettings(precision="fp8")


def jpeg_bytes(img: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **options)
    return buf.getvalue()


def test_jpegs_decoded_by_torchvision_match_the_pil_path_within_one_level(tiny_rn):
    """The device decoder's code path, run with device="cpu": decode_jpeg, then the model's own
    Resize/CenterCrop on tensors, against PIL + open_clip's preprocess (no draft: small images). Rotated
    (EXIF) and CMYK JPEGs stay with PIL: nvJPEG ignores the orientation."""
    rotated = Image.Exif()
    rotated[0x0112] = 6  # EXIF orientation: rotate 90°
    assert not device_decodable(jpeg_bytes(pattern(8).resize((120, 70)), exif=rotated))
    assert not device_decodable(jpeg_bytes(pattern(8).convert("CMYK")))
    assert not device_decodable(jpeg_bytes(pattern(8))[:-300])  # truncated
    cases = [jpeg_bytes(pattern(3).resize((150, 110))), jpeg_bytes(pattern(4).resize((40, 30))),
             jpeg_bytes(pattern(5).convert("L").resize((90, 90))),
             jpeg_bytes(pattern(6).resize((128, 100)), progressive=True),
             jpeg_bytes(pattern(7).resize((100, 80)), quality=95, subsampling=0),
             jpeg_bytes(pattern(7).resize((100, 80)))]  # two of one size: transformed as one stack
    assert all(device_decodable(c) for c in cases)
    decoder = DeviceDecoder(tiny_rn.preprocess, torch.device("cpu"), MAX_PIXELS)
    std = torch.tensor(tiny_rn.std).view(3, 1, 1)
    for got, data in zip(decoder.decode(cases), cases, strict=True):
        levels = ((got - tiny_rn.preprocess(decode(data))) * std * 255).abs()  # in 1/255 steps
        assert levels.max() <= 1.01 and levels.mean() < 0.3


def test_a_run_with_jpegs_decoded_on_the_device_matches_the_pil_run(tiny_rn, tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=16)  # half JPEG, half PNG, and bad files
    (corpus / "sub" / "garbled.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9")
    (corpus / "sub" / "cut.jpg").write_bytes((corpus / "002.jpg").read_bytes()[:400])
    rotated = Image.Exif()
    rotated[0x0112] = 8
    (corpus / "sub" / "rotated.jpg").write_bytes(jpeg_bytes(pattern(40), exif=rotated))  # left to PIL
    stores, reports = {}, {}
    for mode in ("workers", "device"):
        stores[mode] = open_store(settings_at(tmp_path / mode))
        opts = ExampleOptions(k=4, batch_size=6, samples=0, workers=0, progress=False, jpeg_decode=mode)
        reports[mode] = run_examples(stores[mode], tiny_rn, "tiny", corpus, ["layer4"], opts)
    for key in ("images", "duplicates", "skipped", "entries"):
        assert reports["device"][key] == reports["workers"][key], key
    assert reports["device"]["skipped"]["truncated"] == 2  # cut.jpg left to PIL, like truncated.png
    pil, device = top_sets(stores["workers"], "layer4"), top_sets(stores["device"], "layer4")
    assert np.mean([len(pil[key] & device[key]) / 4 for key in pil]) > 0.9
    with stores["device"].sessions() as s:
        assert s.scalars(select(Run)).one().settings["jpeg_decode"] == "device"


def test_words_and_maps_read_the_model_at_its_precision_under_their_own_hash(store, tiny_rn):
    from worker.analyses.maps import layer_maps
    from worker.analyses.words import run_words
    from worker.compute.render_text import RenderPlan
    from worker.compute.text_scores import layer_reader

    half = dataclasses.replace(tiny_rn, precision="bf16")
    words, plan = ["king", "queen", "paris", "dog", "music", "red"], RenderPlan(tiny_rn.image_size, scales=(0.3,))
    full_words = run_words(store, tiny_rn, "tiny", "layer2", words=words, plan=plan, batch_size=8)
    half_words = run_words(store, half, "tiny", "layer2", words=words, plan=plan, batch_size=8)
    assert "skipped" not in half_words and half_words["hash"] != full_words["hash"]
    assert run_words(store, half, "tiny", "layer2", words=words, plan=plan)["skipped"] == "up to date"
    x = torch.rand(3, 3, tiny_rn.image_size, tiny_rn.image_size)
    with torch.inference_mode():
        for reader in (layer_reader, layer_maps):
            full, low = reader(tiny_rn, "layer2")(x), reader(half, "layer2")(x)
            for a, b in zip(*(r if isinstance(r, tuple) else (r,) for r in (full, low)), strict=True):
                assert b.dtype == torch.float32 and not torch.equal(a, b)
                assert torch.allclose(a, b, rtol=0.05, atol=0.05 * float(a.abs().max()))


def test_listing_ranges_decode_jpegs_on_the_device_when_asked(tiny_rn, tmp_path, monkeypatch):
    """The examples stage (the pipeline's and Ray's path) with jpeg_decode "device" hands its JPEGs to
    DeviceDecoder (run here with device="cpu") and stores what the single stream stores in that mode."""
    from worker.pipeline.runner import run_pipeline
    from worker.stages.examples import Examples

    corpus = make_corpus(tmp_path / "corpus", n=12, bad=False)  # JPEGs and PNGs
    decoded, finish = [], DeviceDecoder.finish
    monkeypatch.setattr(DeviceDecoder, "finish", lambda self, batch: decoded.append(len(batch.jpegs)) or
                        finish(self, batch))
    ranged = open_store(settings_at(tmp_path / "ranged"))
    ctx = stage_context(ranged, tiny_rn, corpus, jpeg_decode="device", range_entries=6, batch_size=6, k=4)
    (got,) = run_pipeline(ctx, stages=[Examples()], echo=lambda _: None)
    assert got.status == "done" and sum(decoded) == 6  # the six JPEGs came to the device decoder as bytes
    stream = open_store(settings_at(tmp_path / "stream"))
    run_examples(stream, tiny_rn, "tiny", corpus, ["layer1"],
                 ExampleOptions(k=4, batch_size=6, samples=0, workers=0, progress=False, jpeg_decode="device"))
    same(snapshot(ranged, runs=False), snapshot(stream, runs=False))
    with ranged.sessions() as s:
        assert s.scalars(select(Run)).one().settings["jpeg_decode"] == "device"


class FakeRay:
    def __init__(self, resources: dict):
        self._resources = resources

    def resources(self) -> dict:
        return self._resources


def test_jpeg_decode_auto_picks_the_device_where_the_images_are_computed(tiny_rn):
    """auto: PIL workers on a CPU; the device decoder where the stage's tasks get GPUs (the driver of a
    --ray build sits on a CPU, its workers on GPUs); an explicit choice stands, a bad one is one line."""
    import typer

    from worker.cli.stages import jpeg_mode

    gpus, cpus = FakeRay({"num_gpus": 1, "num_cpus": 4}), FakeRay({"num_cpus": 1})
    assert jpeg_mode("auto", tiny_rn) == "workers"
    assert jpeg_mode("auto", tiny_rn, cpus) == "workers"
    assert jpeg_mode("auto", tiny_rn, gpus) == "device"
    assert jpeg_mode("workers", tiny_rn, gpus) == "workers" and jpeg_mode("device", tiny_rn) == "device"
    with pytest.raises(typer.Exit):
        jpeg_mode("nvjpeg", tiny_rn)


def test_precision_auto_is_bf16_where_a_ray_build_computes_on_gpus():
    """The driver of a --ray build sits on a CPU, where auto is fp32; the images are computed on the
    workers' GPUs, so auto resolves for them (the issue's default: bf16 on GPUs that have it). An explicit
    choice stands."""
    from worker.cli.options import open_model
    from worker.compute.load_settings import ModelSource

    source = ModelSource("tiny-rn", None, (str(CONFIG_DIR),))
    gpus, cpus = FakeRay({"num_gpus": 1, "num_cpus": 4}), FakeRay({"num_cpus": 1})
    assert open_model(source, "cpu", "auto").precision == "fp32"
    assert open_model(source, "cpu", "auto", cpus).precision == "fp32"
    assert open_model(source, "cpu", "auto", gpus).precision == "bf16"
    assert open_model(source, "cpu", "fp32", gpus).precision == "fp32"
