"""What a model is loaded from and how it is built, as plain values: no torch, no open_clip here, so the CLI
options (worker/cli/options.py) and the server (app/probe.py) can hold them without importing either.

`LoadSettings` is the resolved recipe the store records (models.load) so that the server's probes rebuild
exactly the model and the image transform the worker used; `LoadOverrides` is what the user asked for on
the command line (None = take it from the weights tag, the checkpoint's kind, or open_clip's defaults).
"""
from dataclasses import asdict, dataclass, field, fields, replace

INTERPOLATIONS = ("bicubic", "bilinear")  # what open_clip's inference transform distinguishes
RESIZE_MODES = ("shortest", "longest", "squash")


@dataclass(frozen=True)
class LoadSettings:
    """The settings a model was built with: QuickGELU, input size and the image transform's parameters."""

    quick_gelu: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    resize_mode: str
    image_size: int

    def record(self) -> dict:
        """JSON for the store (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def preprocess_overlay(self) -> dict:
        """open_clip's `force_preprocess_cfg` keys."""
        return {"mean": self.mean, "std": self.std, "interpolation": self.interpolation,
                "resize_mode": self.resize_mode}


@dataclass(frozen=True)
class LoadOverrides:
    """Settings the user fixed by hand; each None is resolved from the tag or checkpoint instead."""

    quick_gelu: bool | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    resize_mode: str | None = None
    image_size: int | None = None
    cache_dir: str | None = None  # where tags' weights are looked for (open_clip's cache_dir meaning)

    def __post_init__(self):
        for name, value in (("mean", self.mean), ("std", self.std)):
            if value is not None and (len(value) != 3 or (name == "std" and min(value) <= 0)):
                raise ValueError(f"--{name} takes three numbers (one per RGB channel)"
                                 + (", all above 0" if name == "std" else "") + f", got {value}")
        if self.interpolation not in (None, *INTERPOLATIONS):
            raise ValueError(f"--interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.resize_mode not in (None, *RESIZE_MODES):
            raise ValueError(f"--resize-mode must be one of {', '.join(RESIZE_MODES)}, got {self.resize_mode!r}")
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"--image-size must be at least 8 pixels, got {self.image_size}")

    def apply(self, settings: LoadSettings) -> LoadSettings:
        """`settings` with every value given here put in its place."""
        given = {f.name: getattr(self, f.name) for f in fields(LoadSettings) if getattr(self, f.name) is not None}
        return replace(settings, **given)

    @classmethod
    def from_record(cls, record: dict | None) -> "LoadOverrides":
        """Every setting a stored `LoadSettings.record()` holds, fixed (unknown keys are ignored)."""
        record = record or {}
        known = {f.name for f in fields(LoadSettings)} | {"cache_dir"}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k in known}
        return cls(**values)


@dataclass(frozen=True)
class ModelSource:
    """Everything every `microscope worker …` command is told about the model it loads (one shared object)."""

    arch: str
    weights: str | None = None
    config_dirs: tuple[str, ...] = ()
    overrides: LoadOverrides = field(default_factory=LoadOverrides)
