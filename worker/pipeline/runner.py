"""The pipeline: run the stages that apply to a model, in dependency order, each skipped while its
fingerprint (`worker.pipeline.contract.fingerprint`) matches a finished run in the store's `runs` table.

One mechanism for every stage: before a stage runs, its fingerprint is made from its settings, its inputs
(the model's weights, the corpus, the fingerprints of the stages it reads) and its code version. A `runs`
row of that stage, status "done", with the same fingerprint means there is nothing to do. Otherwise a row is
opened (or a killed run's row with the same fingerprint taken over), the executor runs items -> merge ->
write, and the row is marked done with the stage's report. A stage that raises is marked failed with its
reason; the stages that need it are skipped ("needs X, which failed"), the others still run. Resuming after
a kill is the stages' own checkpoints (word chunks, the examples stream, rendered units) under the same
fingerprint.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from tqdm import tqdm

from store.paths import code_version
from store.schema import Model, Run, now
from store.writes import joined_run
from worker.pipeline.contract import BuildContext, Stage, fingerprint

Echo = Callable[[str], None]


class UnknownStage(ValueError):
    """A stage name in --only/--skip that is not a stage."""


@dataclass
class Outcome:
    stage: str
    status: str  # done | skipped | failed
    reason: str = ""
    seconds: float = 0.0
    units: int | None = None
    fingerprint: str | None = None


class SerialExecutor:
    """Runs a stage in this process: every item's compute in turn, then merge, then write. A distributed
    executor keeps the shape: compute per item on workers, merge and write where the store is."""

    def run(self, stage: Stage, ctx: BuildContext, run_id: int) -> dict:
        items = stage.items(ctx)
        bar = tqdm(items, desc=stage.name, unit="item", leave=False, disable=not ctx.progress or len(items) < 2)
        parts = [stage.compute(ctx, item) for item in bar]
        return stage.write(ctx, stage.merge(ctx, parts), run_id)


def select_stages(stages: Sequence[Stage], only: Sequence[str] = (), skip: Sequence[str] = ()) -> list[Stage]:
    """The stages to run, in pipeline order; a name that is no stage is an UnknownStage naming them all."""
    names = [s.name for s in stages]
    unknown = [n for n in (*only, *skip) if n not in names]
    if unknown:
        raise UnknownStage(f"no stage {', '.join(map(repr, unknown))}; stages: {', '.join(names)}")
    return [s for s in stages if (not only or s.name in only) and s.name not in skip]


def check_order(stages: Sequence[Stage]) -> None:
    """Every stage comes after the stages it needs or uses (the list is the dependency order)."""
    seen: set[str] = set()
    for s in stages:
        missing = [n for n in (*s.needs, *s.after) if n not in seen]
        if missing:
            raise ValueError(f"stage {s.name} is listed before {', '.join(missing)}, which it reads")
        seen.add(s.name)


# -- the runs table ---------------------------------------------------------------------------------------

def model_id(session, ctx: BuildContext) -> int:
    return session.scalar(select(Model.id).where(Model.name == ctx.model_name))


def runs_of(ctx: BuildContext, stage: str, status: str) -> list[Run]:
    with ctx.store.sessions() as session:
        return list(session.scalars(select(Run).where(Run.model_id == model_id(session, ctx), Run.stage == stage,
                                                      Run.status == status).order_by(Run.id.desc())))


def build_fingerprint(run: Run) -> str | None:
    return ((run.settings or {}).get("build") or {}).get("fingerprint")


def last_done(ctx: BuildContext, stage: str) -> Run | None:
    done = runs_of(ctx, stage, "done")
    return done[0] if done else None


def last_fingerprint(ctx: BuildContext, stage: str) -> str | None:
    """The fingerprint of the stage's last finished run (a run outside the pipeline counts by its id)."""
    run = last_done(ctx, stage)
    return (build_fingerprint(run) or f"run {run.id}") if run else None


def open_run(ctx: BuildContext, stage: Stage, fp: str, record: dict) -> int:
    """The stage's row: a killed run with the same fingerprint is taken over, else a new one."""
    settings = {**record["settings"], "build": {"fingerprint": fp, **record}}
    with ctx.store.sessions.begin() as session:
        model = session.get(Model, model_id(session, ctx))
        for run in session.scalars(select(Run).where(Run.model_id == model.id, Run.stage == stage.name,
                                                     Run.status == "running")):
            if build_fingerprint(run) == fp:
                return run.id
        layers = ctx.layer_names()
        run = Run(stage=stage.name, model_id=model.id, layer=layers[0] if len(layers) == 1 else None,
                  weights=model.weights, settings=settings, code_version=code_version())
        session.add(run)
        session.flush()
        return run.id


def close_run(ctx: BuildContext, run_id: int, status: str, report: dict) -> None:
    with ctx.store.sessions.begin() as session:
        run = session.get(Run, run_id)
        run.status, run.report, run.finished_at = status, report, now()


# -- running ----------------------------------------------------------------------------------------------

def blocked(stage: Stage, outcomes: dict[str, Outcome]) -> str | None:
    """Why a stage cannot run: a stage it needs failed or was skipped without results."""
    for need in stage.needs:
        got = outcomes.get(need)
        if got is not None and got.status == "failed":
            return f"needs {need}, which failed"
        if got is not None and got.status == "skipped" and got.fingerprint is None:
            return f"needs {need}, which was skipped ({got.reason})"
    return None


def unloaded(stage: Stage, ctx: BuildContext) -> str | None:
    """Why a stage that reads the model cannot run in a context without one."""
    return "needs the model loaded" if stage.reads_model and ctx.loaded is None else None


def upstream(ctx: BuildContext, stage: Stage, outcomes: dict[str, Outcome]) -> dict[str, str]:
    """The fingerprints of the stages it reads: from this build, else from the store."""
    out = {}
    for name in (*stage.needs, *stage.after):
        got = outcomes.get(name)
        fp = got.fingerprint if got is not None else last_fingerprint(ctx, name)
        if fp is not None:
            out[name] = fp
    return out


def run_stage(ctx: BuildContext, stage: Stage, outcomes: dict[str, Outcome], executor, force: bool) -> Outcome:
    t0 = time.perf_counter()
    try:
        reason = blocked(stage, outcomes) or unloaded(stage, ctx) or stage.applies(ctx)
        if reason:
            return Outcome(stage.name, "skipped", reason)
        fp, record = fingerprint(stage, ctx, upstream(ctx, stage, outcomes))
    except Exception as e:  # a setting it cannot read (a missing file): this stage fails, the others go on
        return Outcome(stage.name, "failed", first_line(e), time.perf_counter() - t0)
    done = last_done(ctx, stage.name)
    if not force and done is not None and build_fingerprint(done) == fp:
        return Outcome(stage.name, "skipped", "up to date", units=(done.report or {}).get("units"), fingerprint=fp)
    run_id = open_run(ctx, stage, fp, record)
    try:
        with joined_run(run_id, stage.name):
            report = executor.run(stage, ctx, run_id)
    except KeyboardInterrupt:
        close_run(ctx, run_id, "failed", {"error": "interrupted"})
        raise
    except Exception as e:  # the reason goes to the summary; the stages that do not need this one go on
        close_run(ctx, run_id, "failed", {"error": f"{type(e).__name__}: {e}"})
        return Outcome(stage.name, "failed", first_line(e), time.perf_counter() - t0)
    close_run(ctx, run_id, "done", report)
    return Outcome(stage.name, "done", "", time.perf_counter() - t0, report.get("units"), fp)


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_pipeline(ctx: BuildContext, stages: Sequence[Stage] | None = None, only: Sequence[str] = (),
                 skip: Sequence[str] = (), force: Sequence[str] = (), executor=None,
                 echo: Echo = tqdm.write) -> list[Outcome]:
    """Run the selected stages in order (see the module docstring); returns one Outcome per stage."""
    from worker.stages import STAGES

    chosen = select_stages(STAGES if stages is None else stages, only, skip)
    check_order(STAGES if stages is None else stages)
    register(ctx)
    executor = executor or SerialExecutor()
    outcomes: dict[str, Outcome] = {}
    with tqdm(chosen, desc="build", unit="stage", disable=not ctx.progress, dynamic_ncols=True) as bar:
        for stage in bar:
            bar.set_description(f"build: {stage.name}")
            outcomes[stage.name] = got = run_stage(ctx, stage, outcomes, executor, stage.name in force)
            echo(f"{got.stage}: {got.status}" + (f" ({got.reason})" if got.reason else ""))
    return list(outcomes.values())


def register(ctx: BuildContext) -> None:
    """The model, its layers and unit rows in the store (created or updated), before any stage runs."""
    from store.writes import register_model
    from worker.compute.layers import catalogue

    loaded = ctx.loaded
    if loaded is None:  # a store-only run: the model is the stored one
        return
    with ctx.store.sessions.begin() as session:
        register_model(session, ctx.model_name, loaded.arch, loaded.weights, loaded.image_size, catalogue(loaded),
                       load=loaded.record())


def summary(outcomes: Sequence[Outcome]) -> str:
    """The table printed at the end of a build: stage, units, seconds, outcome with its reason."""
    rows = [("stage", "units", "seconds", "outcome")]
    rows += [(o.stage, "" if o.units is None else str(o.units), f"{o.seconds:.1f}",
              o.status + (f": {o.reason}" if o.reason else "")) for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows)
