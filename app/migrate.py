"""Run Alembic migrations programmatically (used by the CLI, the worker and the tests)."""
from pathlib import Path

from alembic import command
from alembic.config import Config

from app.paths import ROOT


def alembic_config(url: str, cache_root: Path | None = None) -> Config:
    """`cache_root` is the image cache a data migration may rewrite (0005 deletes the old overlay PNGs);
    without it a migration uses Settings().cache_root."""
    cfg = Config()
    cfg.attributes["cache_root"] = cache_root
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head", cache_root: Path | None = None) -> None:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url, cache_root), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)
