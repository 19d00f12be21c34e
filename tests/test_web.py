"""Runs the frontend extension's logic tests with node's built-in test runner."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_frontend_logic_with_node_test_runner():
    out = subprocess.run(["node", "--test", str(ROOT / "tests" / "web")], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "# fail 0" in out.stdout and "# pass 0" not in out.stdout
