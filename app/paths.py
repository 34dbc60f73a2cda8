"""Where the repo's own files are (migrations, static, templates), for the web app and the worker alike."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
