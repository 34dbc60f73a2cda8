"""`microscope build`: every stage on a tiny model and corpus, skipped when up to date, rerun when a setting
changes (with its dependents only), failures isolated, resumable after a kill; the stage contract's rules."""
import ast
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select
from typer.testing import CliRunner

from store.schema import Artifact, FeatureVis, MapActivation, Run, WordScore
from store.writes import open_store
from worker.pipeline.contract import BuildContext, Item, Stage
from worker.pipeline.runner import SerialExecutor, UnknownStage, check_order, run_pipeline, select_stages, summary
from worker.stages import STAGE_NAMES, STAGES

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = Path(__file__).parent / "model_configs"
FEELINGS = "[happy]\nhappy\nproud\n[sad]\nsad\nlonely\n"


def tiny_corpus(root: Path) -> Path:
    """Two class folders of small real PNGs: images for the examples, labels for the typographic attacks."""
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(8):  # enough for the self-labels' held-out split
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


def options(tmp_path: Path, words: int = 40) -> dict:
    """Each stage at its smallest: a few words, crops and cities, one optimisation step, four feelings."""
    feelings = tmp_path / "feelings.txt"
    feelings.write_text(FEELINGS)
    return {"words": {"list": "common", "n": words}, "maps": {"crops": 0, "cities": 8, "batch_size": 128},
            "featurevis": {"steps": 1, "batch": 64}, "emotions": {"feelings_path": feelings},
            "examples": {"k": 2, "batch_size": 8, "workers": 0, "samples": 4}}


@pytest.fixture(scope="module")
def checkpoint(tiny_rn, tmp_path_factory):
    """tiny-rn saved as a real checkpoint (the attribution stage needs weights a server can reload)."""
    from worker.compute.models import load_model, save_checkpoint

    path = save_checkpoint(tiny_rn.model, tmp_path_factory.mktemp("weights") / "tiny-rn.pt")
    return load_model("tiny-rn", str(path), config_dirs=(CONFIG_DIR,))


def context(settings, loaded, tmp_path, **kw) -> BuildContext:
    corpus = tmp_path / "corpus"
    if not corpus.exists():
        tiny_corpus(corpus)
    return BuildContext(open_store(settings), loaded, "tiny", corpus, ("layer1",), options(tmp_path, **kw),
                        (CONFIG_DIR,), progress=False)


def by_stage(outcomes) -> dict:
    return {o.stage: o for o in outcomes}


def test_build_runs_every_stage_then_skips_them_all_then_reruns_what_a_setting_changes(settings, checkpoint,
                                                                                       tmp_path):
    ctx = context(settings, checkpoint, tmp_path)
    first = by_stage(run_pipeline(ctx, echo=lambda _: None))
    assert list(first) == list(STAGE_NAMES)
    assert {n: o.status for n, o in first.items()} == dict.fromkeys(STAGE_NAMES, "done"), summary(first.values())
    assert first["words"].units == 64 and first["maps"].units == 64 and first["attribution"].units == 512
    with ctx.store.sessions() as s:
        assert s.scalar(select(func.count()).select_from(WordScore)) > 0
        assert s.scalar(select(func.count()).select_from(MapActivation)) == 64
        assert s.scalar(select(func.count()).select_from(FeatureVis)) == 64
        names = set(s.scalars(select(Artifact.name)))
        assert {"words", "places", "map", "regions", "readout", "emotions"} <= names
        runs = s.scalars(select(Run).where(Run.stage.in_(STAGE_NAMES))).all()
    assert sorted(r.stage for r in runs) == sorted(STAGE_NAMES)  # one row per stage run, nothing beside it
    assert all(r.status == "done" and r.settings["build"]["fingerprint"] for r in runs)

    lines: list[str] = []
    second = run_pipeline(ctx, echo=lines.append)
    assert [(o.status, o.reason) for o in second] == [("skipped", "up to date")] * len(STAGE_NAMES)
    table = summary(second)
    assert table.splitlines()[0].split() == ["stage", "units", "seconds", "outcome"]
    assert all("skipped: up to date" in line for line in table.splitlines()[1:])
    # the stages that read only the store, run on the stored model with none loaded (`worker regions tiny`),
    # make the build's fingerprints; a stage that reads the model does not run so
    by_name = replace(ctx, loaded=None)
    alone = run_pipeline(by_name, only=["regions", "suggest"], echo=lambda _: None)
    assert [(o.status, o.reason) for o in alone] == [("skipped", "up to date")] * 2
    (words,) = run_pipeline(by_name, only=["words"], echo=lambda _: None)
    assert (words.status, words.reason) == ("skipped", "needs the model loaded")

    ctx.options["words"]["n"] = 30  # another word list: words, and the stages that read its scores, rerun
    third = by_stage(run_pipeline(ctx, echo=lambda _: None))
    rerun = {n for n, o in third.items() if o.status == "done"}
    assert rerun == {"words", "regions", "suggest"}
    assert all(third[n].reason == "up to date" for n in set(STAGE_NAMES) - rerun)


class Boom(Stage):
    """A stage that fails, and two that need it or not (the pipeline is the same for any stage)."""

    name = "boom"

    def compute(self, ctx, item):
        raise RuntimeError("the disk is full\nsecond line of detail")


class Note(Stage):
    """Writes a file under the data folder and reports one unit."""

    name = "note"

    def compute(self, ctx, item):
        return item.key

    def write(self, ctx, merged, run_id):
        (ctx.data_dir / f"{self.name}.txt").write_text(merged)
        return {"units": 1}


class NeedsBoom(Note):
    name = "needs-boom"
    needs = ("boom",)


class UnreadableSettings(Note):
    """Its settings read a file that is gone: the stage fails before it starts, the others go on."""

    name = "unreadable"

    def settings(self, ctx):
        return {"text": Path("/no/such/feelings.txt").read_text()}


def toy_context(settings, tiny_rn) -> BuildContext:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return BuildContext(open_store(settings), tiny_rn, "toy", progress=False)


def test_a_failing_stage_does_not_stop_the_stages_that_do_not_need_it(settings, tiny_rn):
    ctx = toy_context(settings, tiny_rn)
    got = by_stage(run_pipeline(ctx, [Boom(), NeedsBoom(), UnreadableSettings(), Note()], echo=lambda _: None))
    assert got["boom"].status == "failed" and got["boom"].reason == "RuntimeError: the disk is full"
    assert got["unreadable"].status == "failed" and "FileNotFoundError" in got["unreadable"].reason
    assert (got["needs-boom"].status, got["needs-boom"].reason) == ("skipped", "needs boom, which failed")
    assert got["note"].status == "done" and (settings.data_dir / "note.txt").read_text() == "all"
    with ctx.store.sessions() as s:
        failed = s.scalar(select(Run).where(Run.stage == "boom"))
    assert failed.status == "failed" and "the disk is full" in failed.report["error"]
    again = by_stage(run_pipeline(ctx, [Boom(), NeedsBoom(), Note()], echo=lambda _: None))
    assert again["boom"].status == "failed" and again["note"].reason == "up to date"  # a failure is not done


def test_a_stage_listed_before_what_it_needs_is_refused():
    with pytest.raises(ValueError, match="needs-boom is listed before boom"):
        check_order([NeedsBoom(), Boom()])
    check_order(STAGES)


def test_a_mistyped_stage_name_fails_with_one_line_naming_the_stages():
    with pytest.raises(UnknownStage, match="no stage 'wrds'; stages: examples, featurevis, words"):
        select_stages(STAGES, only=["wrds"])
    from worker.cli.root import cli

    result = CliRunner().invoke(cli, ["build", "tiny-rn", "--config-dir", str(CONFIG_DIR), "--only", "words,mapz"])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: no stage 'mapz'; stages: {', '.join(STAGE_NAMES)}"
    demo = CliRunner().invoke(cli, ["demo", "build", "--skip", "emotion"])
    assert demo.exit_code == 2 and "no stage 'emotion'" in demo.output


class Interrupted(Exception):
    pass


def test_words_interrupted_after_a_chunk_resumes_from_it(settings, tiny_rn, tmp_path, monkeypatch):
    """Ctrl-C in the middle of the words stage: the next build scores only the chunks it had not finished."""
    from worker.stages import words as words_stage

    monkeypatch.setattr(words_stage, "CHUNK", 16)
    ctx = context(settings, replace(tiny_rn, weights=None), tmp_path, words=40)  # 3 chunks
    calls = []
    original = words_stage.Words.compute

    def compute(self, ctx, item):
        calls.append(item.key)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, ctx, item)

    monkeypatch.setattr(words_stage.Words, "compute", compute)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(ctx, only=["words"], echo=lambda _: None)
    with ctx.store.sessions() as s:
        assert s.scalars(select(Run.status).where(Run.stage == "words")).all() == ["failed"]
    monkeypatch.setattr(words_stage.Words, "compute", original)
    (got,) = run_pipeline(ctx, only=["words"], echo=lambda _: None)
    with ctx.store.sessions() as s:
        run = s.scalars(select(Run).where(Run.stage == "words", Run.status == "done")).one()
    assert got.status == "done" and run.report["chunks"] == 3 and run.report["chunks_resumed"] == 1


def test_a_killed_build_takes_its_run_over_and_resumes(settings, checkpoint, tmp_path):
    """SIGKILL in the middle of the words stage of `microscope build`; the rerun skips the finished stage,
    takes over the killed run's row and resumes from its checkpointed chunks."""
    tiny_corpus(tmp_path / "corpus")
    env = {**os.environ, "MICROSCOPE_DATABASE_URL": settings.db_url, "MICROSCOPE_DATA_DIR": str(settings.data_dir),
           "MICROSCOPE_CACHE_DIR": str(settings.cache_root), "PYTHONPATH": str(ROOT)}
    args = ["build", "tiny-rn", "--weights", str(checkpoint.weights), "--config-dir", str(CONFIG_DIR),
            "--corpus", str(tmp_path / "corpus"), "--layers", "layer1", "--only", "examples,words",
            "--word-list", "common", "--words", "1100", "--no-progress", "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-c", "from worker.cli.root import main; main()", *args], env=env,
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = settings.cache_root / "work" / "words"
    deadline = time.monotonic() + 240
    while not list(work.rglob("chunk-*.npz")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(work.rglob("chunk-*.npz")), "the build did not reach the words stage"
    store = open_store(settings)
    with store.sessions() as s:
        assert s.scalars(select(Run.status).where(Run.stage == "words")).all() == ["running"]
    from worker.cli.root import cli

    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert "skipped: up to date" in rows["examples"] and "done" in rows["words"]
    with store.sessions() as s:
        runs = s.scalars(select(Run).where(Run.stage == "words")).all()
    assert len(runs) == 1 and runs[0].status == "done" and runs[0].report["chunks_resumed"] >= 1


def test_the_serial_executor_runs_items_then_merge_then_write(settings, tiny_rn):
    class Squares(Stage):
        name = "squares"

        def items(self, ctx):
            return [Item(str(i), i) for i in range(4)]

        def compute(self, ctx, item):
            return item.payload ** 2

        def merge(self, ctx, parts):
            return sum(parts)

        def write(self, ctx, merged, run_id):
            return {"total": merged, "units": 4}

    assert SerialExecutor().run(Squares(), toy_context(settings, tiny_rn), 0) == {"total": 14, "units": 4}


# -- the import rules -------------------------------------------------------------------------------------

STAGE_MODULES = {"worker.analyses.examples", "worker.analyses.featurevis", "worker.analyses.words",
                 "worker.analyses.maps", "worker.analyses.regions", "worker.analyses.emotions",
                 "worker.analyses.typographic", "worker.analyses.stroop", "worker.analyses.suggest",
                 "worker.analyses.modality", "worker.analyses.selflabels"}
DATA_MODULES = {"worker.data.lexicons", "worker.data.places", "worker.data.feelings", "worker.data.word_lists"}


def imports(module: str) -> set[str]:
    """Every worker module `module` imports, at the top or inside a function."""
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("worker")}


def adapters() -> set[str]:
    return {f"worker.stages.{p.stem}" for p in (ROOT / "worker" / "stages").glob("*.py") if p.stem != "__init__"}


def test_stages_import_the_contract_and_shared_compute_never_each_other():
    assert len(adapters()) == len(STAGES)
    for module in adapters():
        stem = module.rsplit(".", 1)[1]
        own = {f"worker.analyses.{stem}"}
        assert not imports(module) & (adapters() | STAGE_MODULES) - own - {module}, module
    for module in STAGE_MODULES:
        assert not imports(module) & (STAGE_MODULES - {module}), module
    # the demo depends on the stages, not back
    for module in STAGE_MODULES | DATA_MODULES | {"worker.pipeline.contract"}:
        wrong = {m for m in imports(module) if m.startswith(("worker.stages", "worker.demo"))}
        assert not wrong, (module, wrong)
    for module in DATA_MODULES:
        assert not imports(module) & STAGE_MODULES, module


def test_loading_the_demo_model_prints_no_library_noise(tmp_path):
    code = ("from pathlib import Path; from worker.demo import model; "
            f"m = model.load(Path({str(tmp_path)!r})); print('loaded', m.arch)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert text.strip() == "loaded demo-clip"  # no LOAD REPORT table, no WARNING:root, no progress bar


def test_help_lists_the_commands_in_pipeline_order():
    from worker.cli.root import cli

    def listed(*args) -> list[str]:
        """The command names in the order --help shows them."""
        out = CliRunner().invoke(cli, [*args, "--help"], terminal_width=200).output
        return [line.split()[1] for line in out.split("Commands")[1].splitlines()
                if line.startswith("│ ") and line[2].isalpha()]  # a wrapped description line starts with spaces

    assert listed() == ["build", "demo", "serve", "export", "worker", "db"]  # export: after serve (app/cli.py)
    assert listed("worker") == ["layers", "register", *STAGE_NAMES]
    assert listed("demo") == ["build", "train", "evaluate", "corpus"]

def skips_then_reruns(settings, args: list[str], stage: str, model: str, change=None) -> str:
    """`microscope worker ARGS` twice: the second is up to date and prints the first's results (one
    mechanism, the `runs` table); then `change()` (a setting or an input changed: it returns the arguments to
    run) and `--force` each rerun the stage. Each run that was not skipped is one done `runs` row.
    Returns the first run's output."""
    from app.liveserver import settings_env
    from worker.cli.stages import worker_cli

    def output(arguments: list[str]) -> str:
        result = CliRunner().invoke(worker_cli, arguments, env=settings_env(settings))
        assert result.exit_code == 0, result.output
        return result.output

    first, again = output(args), output(args)
    assert "up to date" not in first and f"{model}: {stage} is up to date" in again, first + again
    assert first.splitlines()[-1] == again.splitlines()[-1]  # the same results, read back
    reruns = ([change()] if change else []) + [[*args, "--force"]]
    for arguments in reruns:
        assert "up to date" not in output(arguments)
    with open_store(settings).sessions() as s:
        assert s.scalars(select(Run.status).where(Run.stage == stage)).all() == ["done"] * (1 + len(reruns))
    return first


def test_a_worker_command_skips_its_stage_like_the_build(settings, checkpoint):
    """`microscope worker stroop` twice: the second run is up to date (one mechanism), --force reruns it.
    (A random-init model is another model at every load, so its stages always rerun: weights here.)"""
    skips_then_reruns(settings, ["stroop", "tiny-rn", "--weights", checkpoint.weights, "--config-dir",
                                 str(CONFIG_DIR), "--name", "tiny", "--device", "cpu"], "stroop", "tiny")


def test_the_concept_commands_skip_their_stages_like_the_build(settings, checkpoint, tmp_path):
    """`microscope worker modality` and `selflabels` run their stages through the pipeline: after the
    examples (the activation matrix), each is up to date the second time, reruns after a setting changes and
    with --force."""
    from app.liveserver import settings_env
    from worker.cli.stages import worker_cli

    model = ["tiny-rn", "--weights", checkpoint.weights, "--config-dir", str(CONFIG_DIR), "--name", "tiny",
             "--device", "cpu"]
    corpus = tiny_corpus(tmp_path / "corpus")
    examples = CliRunner().invoke(worker_cli, ["examples", *model, "--corpus", str(corpus), "--layer", "layer4",
                                               "--k", "4", "--samples", "0", "--workers", "0", "--no-progress"],
                                  env=settings_env(settings))
    assert examples.exit_code == 0, examples.output
    modality = ["modality", *model, "--concepts", "folders", "--min-images", "2", "--permutations", "3"]
    first = skips_then_reruns(settings, modality, "modality", "tiny",
                              lambda: [*modality[:-1], "4"])  # another permutation count
    assert "over 2 concepts" in first
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("cat\ndog\nbird\n")
    selflabels = ["selflabels", *model, "--vocabulary", str(vocab)]
    first = skips_then_reruns(settings, selflabels, "selflabels", "tiny",
                              lambda: [*selflabels, "--template", "a photo of a {}"])
    assert "512 units labelled" in first
