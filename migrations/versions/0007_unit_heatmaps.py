"""unit_heatmaps: every example map of a unit quantized into one row; map grids quantized too; the overlay
PNG files (128 a neuron for its examples, one for its world map) go

Revision ID: 5e1f0c2a9b47
Revises: 0005_concepts (0006_directions_label_scores.py)

Upgrade converts each unit's dataset_examples.heatmap (the raw map as JSON floats, 4 significant digits)
into one quantized row (app/heatmaps.py). Where an example has no JSON map but its overlay PNG is still in
the cache, the map is read back from the PNG's opacity: only the shape of the sign's part relative to its
peak survives (peak 1, the other sign's part 0). It then drops dataset_examples.heatmap and heatmap_image
and deletes the overlay files (after the schema change, so a failed migration deletes nothing). The
index on dataset_examples.unit_id goes too: the (unit_id, sign, rank) unique index serves those lookups.
map_activations.grid (JSON) becomes rows, cols, heat (uint8), lo, hi the same way, and its overlay
file is deleted (the app draws it from the grid). Downgrade writes the maps back as JSON; the overlay files
are not redrawn (heatmap_image and overlay stay NULL).
"""
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from alembic import context, op
from PIL import Image as PILImage

from app.heatmaps import grid_values, quantize, quantize_grid, recover_from_overlay, unpack

revision = "5e1f0c2a9b47"
down_revision = "0005_concepts"
branch_labels = None
depends_on = None

UNITS_PER_STEP = 500


def cache_root() -> Path:
    root = context.config.attributes.get("cache_root")
    if root is None:
        from app.settings import Settings

        root = Settings().cache_root
    return Path(root)


def upgrade() -> None:
    op.create_table(
        "unit_heatmaps",
        sa.Column("unit_id", sa.Integer(), sa.ForeignKey("units.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("n_top", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("maps", sa.LargeBinary(), nullable=False),
        sa.Column("lo", sa.LargeBinary(), nullable=False),
        sa.Column("hi", sa.LargeBinary(), nullable=False),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="SET NULL"), nullable=True),
    )
    root = cache_root()
    files = convert(op.get_bind(), root)
    op.drop_index("ix_dataset_examples_unit_id", table_name="dataset_examples")  # the unique key's index leads
    with op.batch_alter_table("dataset_examples") as batch:
        batch.drop_column("heatmap")
        batch.drop_column("heatmap_image")
    files += convert_map_grids()
    for rel in files:
        path = (root / rel).resolve()
        if path.is_relative_to(root.resolve()):
            path.unlink(missing_ok=True)


def convert(conn, root: Path) -> list[str]:
    """Insert the unit_heatmaps rows; returns the overlay files to delete."""
    examples = sa.table("dataset_examples", sa.column("unit_id"), sa.column("sign"), sa.column("rank"),
                        sa.column("heatmap", sa.JSON()), sa.column("heatmap_image"), sa.column("run_id"))
    heatmaps = sa.table("unit_heatmaps", *(sa.column(c) for c in
                                           ("unit_id", "n_top", "height", "width", "maps", "lo", "hi", "run_id")))
    unit_ids = conn.execute(sa.select(examples.c.unit_id).distinct().order_by(examples.c.unit_id)).scalars().all()
    files: list[str] = []
    for start in range(0, len(unit_ids), UNITS_PER_STEP):
        chunk = unit_ids[start:start + UNITS_PER_STEP]
        rows = conn.execute(sa.select(examples).where(examples.c.unit_id.in_(chunk))
                            .order_by(examples.c.unit_id, examples.c.sign.desc(), examples.c.rank)).all()
        by_unit: dict[int, list] = {}
        for r in rows:
            by_unit.setdefault(r.unit_id, []).append(r)
            files += [r.heatmap_image] if r.heatmap_image else []
        out = [row for uid, ex in by_unit.items() if (row := unit_row(uid, ex, root)) is not None]
        if out:
            conn.execute(sa.insert(heatmaps), out)
    return files


def unit_row(unit_id: int, examples: list, root: Path) -> dict | None:
    """One unit's row, or None when none of its examples has a map."""
    maps = [example_map(e, root) for e in examples]
    shape = next((m.shape for m in maps if m is not None and m.ndim == 2 and m.size), None)
    if shape is None:
        return None
    dense = np.stack([m if m is not None and m.shape == shape else np.zeros(shape, np.float32) for m in maps])
    n_top = sum(e.sign == "top" for e in examples)
    return quantize(dense, n_top) | {"unit_id": unit_id, "run_id": examples[0].run_id}


def example_map(example, root: Path) -> np.ndarray | None:
    if example.heatmap:
        try:
            return np.asarray(example.heatmap, dtype=np.float32)
        except ValueError:  # ragged lists: not a map
            return None
    path = root / example.heatmap_image if example.heatmap_image else None
    if path is None or not path.is_file():
        return None
    with PILImage.open(path) as img:
        return recover_from_overlay(img, example.sign)


MAP_COLUMNS = {"rows": sa.Integer(), "cols": sa.Integer(), "heat": sa.LargeBinary(), "lo": sa.Float(),
               "hi": sa.Float()}


def convert_map_grids() -> list[str]:
    """map_activations: JSON grid -> quantized columns; returns the overlay files to delete."""
    with op.batch_alter_table("map_activations") as batch:
        for name, kind in MAP_COLUMNS.items():
            batch.add_column(sa.Column(name, kind, nullable=True))
    conn = op.get_bind()
    maps = sa.table("map_activations", sa.column("unit_id"), sa.column("grid", sa.JSON()), sa.column("overlay"),
                    *(sa.column(n) for n in MAP_COLUMNS))
    files = []
    for row in conn.execute(sa.select(maps.c.unit_id, maps.c.grid, maps.c.overlay)).all():
        grid = np.asarray(row.grid or [], dtype=np.float32)
        values = quantize_grid(grid) if grid.ndim == 2 and grid.size else {"rows": 0, "cols": 0, "heat": b"",
                                                                            "lo": 0.0, "hi": 0.0}
        conn.execute(sa.update(maps).where(maps.c.unit_id == row.unit_id).values(**values))
        files += [row.overlay] if row.overlay else []
    with op.batch_alter_table("map_activations") as batch:
        for name in MAP_COLUMNS:
            batch.alter_column(name, existing_type=MAP_COLUMNS[name], nullable=False)
        batch.drop_column("grid")
        batch.drop_column("overlay")
    return files


def downgrade_map_grids() -> None:
    with op.batch_alter_table("map_activations") as batch:
        batch.add_column(sa.Column("grid", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("overlay", sa.String(length=256), nullable=True))
    conn = op.get_bind()
    maps = sa.table("map_activations", sa.column("unit_id"), sa.column("grid", sa.JSON()),
                    *(sa.column(n) for n in MAP_COLUMNS))
    for row in conn.execute(sa.select(maps)).all():
        grid = grid_values(row).tolist() if row.rows else []
        conn.execute(sa.update(maps).where(maps.c.unit_id == row.unit_id)
                     .values(grid=[[float(f"{v:.4g}") for v in line] for line in grid]))
    with op.batch_alter_table("map_activations") as batch:
        for name in MAP_COLUMNS:
            batch.drop_column(name)


def downgrade() -> None:
    downgrade_map_grids()
    op.create_index("ix_dataset_examples_unit_id", "dataset_examples", ["unit_id"])
    with op.batch_alter_table("dataset_examples") as batch:
        batch.add_column(sa.Column("heatmap", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("heatmap_image", sa.String(length=256), nullable=True))
    conn = op.get_bind()
    examples = sa.table("dataset_examples", sa.column("id"), sa.column("unit_id"), sa.column("sign"),
                        sa.column("rank"), sa.column("heatmap", sa.JSON()))
    stored = sa.table("unit_heatmaps", *(sa.column(c) for c in ("unit_id", "n_top", "height", "width", "maps",
                                                               "lo", "hi")))
    for row in conn.execute(sa.select(stored)).mappings().all():
        heat = unpack(dict(row))
        for ex in conn.execute(sa.select(examples).where(examples.c.unit_id == row["unit_id"])).all():
            i = heat.row(ex.sign, ex.rank)
            if i is not None:
                values = [[float(f"{v:.4g}") for v in line] for line in heat.values(i).tolist()]
                conn.execute(sa.update(examples).where(examples.c.id == ex.id).values(heatmap=values))
    op.drop_table("unit_heatmaps")
