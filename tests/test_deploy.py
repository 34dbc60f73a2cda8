"""docker-compose.yml is valid (no engine runs here, but the compose file is checked for real)."""
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_file_is_valid_and_reserves_a_gpu_for_the_worker():
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose (Debian package) is installed by scripts/system-deps"
    out = subprocess.run([exe, "config"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    config = yaml.safe_load(out)
    assert {"postgres", "app", "worker"} <= set(config["services"])
    devices = config["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "postgresql://" in config["services"]["app"]["environment"]["DATABASE_URL"]
