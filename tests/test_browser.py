"""The workflows in a real ComfyUI frontend, in headless Chromium (playwright-core, no browser download):
every workflow loads with no missing node and converts to a valid prompt; workflow 1 runs from the UI
and the live loss view draws. Skipped without COMFYUI_DIR, Chromium or Node.js."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from test_comfyui import Server

ROOT = Path(__file__).resolve().parents[1]
BROWSER_TEST = ROOT / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not os.environ.get("COMFYUI_DIR") or not Path(CHROMIUM).exists() or not shutil.which("node"),
    reason="needs COMFYUI_DIR, Chromium and Node.js")


def test_workflows_load_and_run_in_the_frontend(tmp_path):
    if not (BROWSER_TEST / "node_modules" / "playwright-core").is_dir():
        installed = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BROWSER_TEST, capture_output=True,
                                   text=True)
        if installed.returncode != 0:
            pytest.skip(f"npm ci failed: {installed.stderr[-500:]}")
    (tmp_path / "comfyui").mkdir()
    server = Server(tmp_path / "comfyui")
    try:
        screenshots = tmp_path / "screenshots"
        result = subprocess.run(["node", "workflows.mjs", f"http://127.0.0.1:{server.port}", str(ROOT / "workflows"),
                                 str(screenshots)], cwd=BROWSER_TEST, capture_output=True, text=True, timeout=1500,
                                env={**os.environ, "CHROMIUM": CHROMIUM})
    finally:
        server.stop()
    print(result.stdout[-4000:])
    print("screenshots:", sorted(str(p) for p in screenshots.glob("*.png")))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert not summary["failures"] and len(summary["workflows"]) == 3
