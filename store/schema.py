"""The store: SQLAlchemy tables, engine and sessions. SQLite (WAL) by default, PostgreSQL in production.

Only the worker writes the compute tables; the web app writes only the curated ones
(labels, families, studies). A neuron is identified by (model.name, layer.name, unit.index).
"""
import json
import time
from datetime import UTC, datetime

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    exc,
    inspect,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker


def now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSON, list: JSON}


class Model(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)  # URL slug
    arch: Mapped[str] = mapped_column(String(128))  # open_clip architecture name
    weights: Mapped[str | None] = mapped_column(String(512))  # open_clip tag or checkpoint path
    image_size: Mapped[int] = mapped_column(Integer, default=224)
    # how the worker built it (worker.compute.load_settings.LoadSettings.record() + config dirs): QuickGELU, mean, std,
    # interpolation, resize mode, image size; the server's probes rebuild the model from exactly this.
    # JSONB on Postgres: plain json has no equality, and pages SELECT DISTINCT models.
    load: Mapped[dict] = mapped_column(JSON().with_variant(JSONB(), "postgresql"), default=dict)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    layers: Mapped[list["Layer"]] = relationship(
        back_populates="model", order_by="Layer.position", cascade="all, delete-orphan", passive_deletes=True
    )


class Layer(Base):
    __tablename__ = "layers"
    __table_args__ = (UniqueConstraint("model_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))  # e.g. layer4, resblocks.11.mlp
    module: Mapped[str] = mapped_column(String(256))  # dotted path inside the open_clip model
    n_units: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32), default="conv")  # conv | mlp
    position: Mapped[int] = mapped_column(Integer, default=0)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    model: Mapped[Model] = relationship(back_populates="layers")


class Unit(Base):
    __tablename__ = "units"
    __table_args__ = (UniqueConstraint("layer_id", "index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    layer_id: Mapped[int] = mapped_column(ForeignKey("layers.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    layer: Mapped[Layer] = relationship()


class Run(Base):
    """One worker run: what was computed, with which model, weights, settings and code version."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    stage: Mapped[str] = mapped_column(String(64), index=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    layer: Mapped[str | None] = mapped_column(String(128))
    weights: Mapped[str | None] = mapped_column(String(512))
    settings: Mapped[dict] = mapped_column(default=dict)
    code_version: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | done | failed
    report: Mapped[dict] = mapped_column(default=dict)  # counts: images seen, skipped by reason …
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class UnitStats(Base):
    __tablename__ = "unit_stats"
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"), primary_key=True)
    n: Mapped[int] = mapped_column(Integer)
    mean: Mapped[float] = mapped_column(Float)
    std: Mapped[float] = mapped_column(Float)
    min: Mapped[float] = mapped_column(Float)
    max: Mapped[float] = mapped_column(Float)
    quantiles: Mapped[dict] = mapped_column(default=dict)  # {"0.01": v, "0.5": v, ...}
    histogram: Mapped[dict] = mapped_column(default=dict)  # {"edges": [...], "counts": [...]}
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))


class Image(Base):
    __tablename__ = "images"
    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    source: Mapped[str] = mapped_column(String(512), default="")  # path / manifest entry / package
    caption: Mapped[str] = mapped_column(Text, default="")
    width: Mapped[int] = mapped_column(Integer, default=0)
    height: Mapped[int] = mapped_column(Integer, default=0)
    path: Mapped[str] = mapped_column(String(256))  # cache-relative, content-addressed
    thumb: Mapped[str | None] = mapped_column(String(256))


class DatasetExample(Base):
    __tablename__ = "dataset_examples"
    __table_args__ = (UniqueConstraint("unit_id", "sign", "rank"),)  # its index serves lookups by unit too
    id: Mapped[int] = mapped_column(primary_key=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"))
    sign: Mapped[str] = mapped_column(String(8))  # top | bottom
    rank: Mapped[int] = mapped_column(Integer)
    activation: Mapped[float] = mapped_column(Float)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    image: Mapped[Image] = relationship()


class UnitHeatmaps(Base):
    """All of a unit's dataset-example maps in one row, quantized to uint8 (layout: app/heatmaps.py)."""

    __tablename__ = "unit_heatmaps"
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"), primary_key=True)
    n_top: Mapped[int] = mapped_column(Integer)  # rows 0..n_top-1: top by rank; then bottom by rank
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    maps: Mapped[bytes] = mapped_column(LargeBinary)  # uint8 (N, height, width), C order
    lo: Mapped[bytes] = mapped_column(LargeBinary)  # float32 little-endian (N,): the value of 0
    hi: Mapped[bytes] = mapped_column(LargeBinary)  # float32 little-endian (N,): the value of 255
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))


class Word(Base):
    __tablename__ = "words"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(128), unique=True)
    rank: Mapped[int] = mapped_column(Integer, default=0)  # frequency rank


class WordScore(Base):
    __tablename__ = "word_scores"
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"), primary_key=True)
    word_id: Mapped[int] = mapped_column(ForeignKey("words.id", ondelete="CASCADE"), primary_key=True)
    score: Mapped[float] = mapped_column(Float)
    sign: Mapped[str] = mapped_column(String(8))  # top | bottom
    rank: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    word: Mapped[Word] = relationship()


class FeatureVis(Base):
    __tablename__ = "featurevis"
    __table_args__ = (UniqueConstraint("unit_id", "kind", "settings_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(64))  # plain | diversity-0.. | facet:<name>
    image: Mapped[str] = mapped_column(String(256))
    thumb: Mapped[str | None] = mapped_column(String(256))
    objective: Mapped[float] = mapped_column(Float)
    steps: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    settings_hash: Mapped[str] = mapped_column(String(64), default="")
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))


class FacetProbe(Base):
    __tablename__ = "facet_probes"
    __table_args__ = (UniqueConstraint("model_id", "facet", "layer"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    facet: Mapped[str] = mapped_column(String(64))
    layer: Mapped[str] = mapped_column(String(128))
    weights: Mapped[str] = mapped_column(String(256))  # cache path of the .npy probe vector
    accuracy: Mapped[float] = mapped_column(Float)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))


class MapActivation(Base):
    __tablename__ = "map_activations"
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"), primary_key=True)
    rows: Mapped[int] = mapped_column(Integer)  # the grid over the map: rows x cols cells
    cols: Mapped[int] = mapped_column(Integer)
    heat: Mapped[bytes] = mapped_column(LargeBinary)  # uint8 rows x cols, row-major (app/heatmaps.py)
    lo: Mapped[float] = mapped_column(Float)  # the activation of 0
    hi: Mapped[float] = mapped_column(Float)  # the activation of 255
    choropleth: Mapped[str | None] = mapped_column(String(256))  # cache path of the country/city plot
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))


class PlaceScore(Base):
    __tablename__ = "place_scores"
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # country | city
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    code: Mapped[str] = mapped_column(String(16), default="")
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))


class Family(Base):
    __tablename__ = "families"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    position: Mapped[int] = mapped_column(Integer, default=0)  # display order (the paper's figure 1 order)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class UnitFamily(Base):
    """Membership of a neuron in a family; source human or auto, never mixed."""

    __tablename__ = "unit_families"
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"), primary_key=True)
    family_id: Mapped[int] = mapped_column(ForeignKey("families.id", ondelete="CASCADE"), primary_key=True)
    source: Mapped[str] = mapped_column(String(8), primary_key=True)  # human | auto
    author: Mapped[str] = mapped_column(String(128), default="")
    score: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    family: Mapped[Family] = relationship()


class Label(Base):
    """Append-only label history: the newest version per (unit, source) is the current label."""

    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("unit_id", "source", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(String(8))  # human | auto
    version: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(String(200))
    author: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class UnitText(Base):
    """One searchable document per neuron (labels, families, top words), kept by whoever writes them.

    Full-text indexes live outside this model (migration 0003, queried by app/search.py): on SQLite the FTS5
    table `unit_text_fts`, kept in step by triggers (so write with INSERT/UPDATE, never INSERT OR REPLACE);
    on Postgres a GIN index over to_tsvector('english', document)."""

    __tablename__ = "unit_text"
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"), primary_key=True)
    document: Mapped[str] = mapped_column(Text, default="")


class CurationEvent(Base):
    """Who changed a family or a neuron's membership, and when (label changes live in `labels`)."""

    __tablename__ = "curation_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    unit_id: Mapped[int | None] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"), index=True)
    family: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(32))  # family-add | family-remove | family-create | family-edit
    detail: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Artifact(Base):
    """A named per-model or per-layer file in the cache (word matrix .npy, attribution matrix, atlas …)."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("model_id", "layer", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    layer: Mapped[str] = mapped_column(String(128), default="")
    name: Mapped[str] = mapped_column(String(128))
    path: Mapped[str] = mapped_column(String(256))
    meta: Mapped[dict] = mapped_column(default=dict)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))


class Study(Base):
    """A conditional-probability study of one neuron: stimuli sampled per activation bucket."""

    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    categories: Mapped[list] = mapped_column(default=list)
    n_buckets: Mapped[int] = mapped_column(Integer)
    per_bucket: Mapped[int] = mapped_column(Integer)
    act_min: Mapped[float | None] = mapped_column(Float)  # bucket range: min..max of the samples
    act_max: Mapped[float | None] = mapped_column(Float)
    std: Mapped[float | None] = mapped_column(Float)  # UnitStats.std when created (x axis in σ)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    author: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class StudyItem(Base):
    __tablename__ = "study_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    activation: Mapped[float] = mapped_column(Float)
    bucket: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)  # shuffled display order
    image: Mapped[Image] = relationship()


class StudyLabel(Base):
    __tablename__ = "study_labels"
    item_id: Mapped[int] = mapped_column(ForeignKey("study_items.id", ondelete="CASCADE"), primary_key=True)
    labeller: Mapped[str] = mapped_column(String(128), primary_key=True)
    category: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Direction(Base):
    """A saved concept direction (curated): a text or expression whose read-out defines a direction in a
    layer (app/directions.py); the worker renders its feature visualization (worker/analyses/directions.py)."""

    __tablename__ = "directions"
    __table_args__ = (UniqueConstraint("model_id", "layer", "query"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    layer: Mapped[str] = mapped_column(String(128))
    query: Mapped[str] = mapped_column(String(500))  # canonical expression: "king - man + woman"
    name: Mapped[str] = mapped_column(String(200))
    author: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class LabelScore(Base):
    """How faithful a label is to its unit (worker/analyses/selflabels.py: AUC on held-out images), for human and
    automatic labels alike; written by the worker, keyed by the label version it scored."""

    __tablename__ = "label_scores"
    label_id: Mapped[int] = mapped_column(ForeignKey("labels.id", ondelete="CASCADE"), primary_key=True)
    method: Mapped[str] = mapped_column(String(64))
    score: Mapped[float | None] = mapped_column(Float)  # None: no held-out image of the concept to score on
    detail: Mapped[dict] = mapped_column(default=dict)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))


class ActivationSample(Base):
    """A compact sample of (image, activation) per unit, for bucketed studies and plots."""

    __tablename__ = "activation_samples"
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    activation: Mapped[float] = mapped_column(Float)


class StoreVersion(Base):
    """One counter that every committed writing transaction bumps (see `track_writes`): a page rendered
    at version n is still right while the counter reads n, which is what app.pagecache relies on."""

    __tablename__ = "store_version"
    id: Mapped[int] = mapped_column(primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)


READ_STATEMENTS = frozenset({"SELECT", "PRAGMA", "BEGIN", "SAVEPOINT", "RELEASE", "ROLLBACK", "SHOW", "SET",
                             "EXPLAIN", "VALUES"})
BUMP_VERSION = "UPDATE store_version SET n = n + 1 WHERE id = 1"


def _note_write(conn, _cursor, statement, _params, _context, _many) -> None:
    first = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SELECT"
    if first not in READ_STATEMENTS:
        conn.info["store_wrote"] = True


def _bump_on_commit(conn) -> None:
    if conn.info.pop("store_wrote", False):
        cursor = conn.connection.dbapi_connection.cursor()  # raw: inside this transaction, before COMMIT
        try:
            cursor.execute(BUMP_VERSION)
        finally:
            cursor.close()


def _forget_write(conn) -> None:
    if not conn.invalidated:  # a lost connection: its info goes with it (reading it would try to reconnect)
        conn.info.pop("store_wrote", None)


def track_writes(engine: Engine) -> None:
    """Bump store_version.n in every transaction that wrote anything, as its last statement before
    COMMIT. Installed by make_sessionmaker on migrated stores (every app and worker session)."""
    if event.contains(engine, "before_cursor_execute", _note_write) or not inspect(engine).has_table("store_version"):
        return
    event.listen(engine, "before_cursor_execute", _note_write)
    event.listen(engine, "commit", _bump_on_commit)
    event.listen(engine, "rollback", _forget_write)


def store_version(engine: Engine) -> int | None:
    """The store's current version (None on a store without the counter)."""
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT n FROM store_version WHERE id = 1").scalar()
    except exc.DBAPIError:
        return None


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


PING_AFTER_IDLE_S = 10.0


def make_engine(url: str, ping_after_idle_s: float = PING_AFTER_IDLE_S, **kw) -> Engine:
    """An engine for the store: SQLite gets WAL and a busy timeout, Postgres a connection pool whose connections
    are checked after `ping_after_idle_s` idle (ping_when_idle)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               json_deserializer=json_loads, **kw)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    kw.setdefault("pool_size", 10)
    kw.setdefault("max_overflow", 20)
    engine = create_engine(url, json_deserializer=json_loads, **kw)
    ping_when_idle(engine, ping_after_idle_s)
    return engine


def json_loads(text: str | bytes):
    """JSON columns as Python values: orjson (several times the standard library's speed on a neuron page's
    aggregated rows), and the standard library for what orjson refuses (NaN, Infinity)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def ping_when_idle(engine: Engine, after_s: float) -> None:
    """Check a pooled connection before use only when it has sat idle for `after_s` seconds, the case in which
    Postgres restarts, idle timeouts and proxies drop them. SQLAlchemy's `pool_pre_ping` pings at every
    checkout: a round trip (and a backend's work) for every page under load, where connections are seconds
    old at most. A failed ping makes the pool connect afresh (DisconnectionError), as pre-ping does."""

    @event.listens_for(engine, "checkin")
    def checked_in(_dbapi_conn, record):
        record.info["checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def checked_out(dbapi_conn, record, _proxy):
        checked_in_at = record.info.get("checked_in")
        if checked_in_at is None or time.monotonic() - checked_in_at < after_s:
            return  # a new connection, or one in recent use
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as e:  # any failure: the pool discards it and connects anew (or raises the connect error)
            raise exc.DisconnectionError(f"idle connection failed its ping: {e}") from e


def make_sessionmaker(engine: Engine) -> sessionmaker:
    track_writes(engine)
    return sessionmaker(engine, expire_on_commit=False)
