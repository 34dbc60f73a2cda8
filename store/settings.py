"""Settings from the environment (prefix MICROSCOPE_) or a .env file."""
from functools import cached_property
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MICROSCOPE_", env_file=".env", extra="ignore")

    data_dir: Path = Path("data")
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("MICROSCOPE_DATABASE_URL", "DATABASE_URL")
    )
    cache_dir: Path | None = None
    editor_token: str | None = None
    page_size: int = 64
    site_name: str = "CLIP Microscope"
    page_cache_mb: int = 64  # rendered pages kept per server process, valid while the store is unchanged; 0 = off
    # neuron pages rendered at once in the thread pool, per server process (capped at its connection pool);
    # 0 = on the event loop, the fastest with a database on the same machine (docs/store.md, "Fresh pages").
    # With the database across a network, 2-4 keep a process busy while a page waits for its round trip.
    page_threads: int = 0
    # zlib level of gzipped responses: 1 (nginx's default) costs half of 6 on a neuron page (0.066 vs 0.114 ms
    # for 12.5 KB) for 8 % more bytes (3.8 vs 3.5 KB)
    gzip_level: int = Field(1, ge=1, le=9)
    public_url: str = ""  # absolute base for share links / OpenGraph; empty = from the request

    @cached_property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'microscope.db').resolve()}"

    @cached_property
    def cache_root(self) -> Path:
        return (self.cache_dir or self.data_dir / "cache").resolve()
