"""The pack in ComfyUI's real frontend, in headless Chromium (tests/browser/workflows.mjs, playwright-core).

Needs COMFYUI_DIR (and COMFYUI_PYTHON, as tests/test_comfyui.py), /usr/bin/chromium (or CHROMIUM) and
node/npm; skipped otherwise. The server is test_comfyui's Server, with its own user folder, so the
settings the frontend test stores do not touch the checkout. Screenshots stay in pytest's tmp folder, or
in ECHODISTILL_SCREENSHOTS."""

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BROWSER = ROOT / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
NODE = shutil.which("node")
NPM = shutil.which("npm")

pytestmark = [
    pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to run against a real ComfyUI"),
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM}"),
    pytest.mark.skipif(not NODE, reason="node is not installed"),
]


def playwright_installed() -> str | None:
    """None when tests/browser/node_modules has playwright-core (installed now if needed), else why not."""
    if (BROWSER / "node_modules" / "playwright-core" / "package.json").is_file():
        return None
    if not NPM:
        return "npm is not installed"
    environment = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}  # the system Chromium is used
    done = subprocess.run([NPM, "ci", "--no-audit", "--no-fund"], cwd=BROWSER, env=environment,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return f"npm ci failed in {BROWSER}: {(done.stdout + done.stderr)[-1500:]}"
    return None


@contextlib.contextmanager
def own_user_directory(user: Path):
    """test_comfyui's Server starts ComfyUI with the checkout's user folder; add --user-directory."""
    original = subprocess.Popen

    def popen(arguments, *args, **kwargs):
        if isinstance(arguments, list) and "main.py" in arguments:
            arguments = [*arguments, "--user-directory", str(user)]
        return original(arguments, *args, **kwargs)

    subprocess.Popen = popen
    try:
        yield
    finally:
        subprocess.Popen = original


def test_workflows_load_convert_and_run_in_the_frontend(tmp_path_factory):
    why_not = playwright_installed()
    if why_not:
        pytest.skip(why_not)
    from test_comfyui import Server, run_while_working

    root = tmp_path_factory.mktemp("comfyui-browser")
    user = root / "user"
    user.mkdir()
    with own_user_directory(user):
        server = Server(root)
    # Kept where ECHODISTILL_SCREENSHOTS says (to look at them, or to make the templates' thumbnails with
    # tools/make_workflows.py --thumbnails), else in pytest's tmp folder.
    kept = os.environ.get("ECHODISTILL_SCREENSHOTS")
    screenshots = Path(kept) if kept else tmp_path_factory.mktemp("browser-screenshots")
    screenshots.mkdir(parents=True, exist_ok=True)
    try:
        done = run_while_working(  # waited for while it or the server works: 3600 CPU seconds at most
            [NODE, "workflows.mjs", f"http://127.0.0.1:{server.port}", str(ROOT / "example_workflows"), str(screenshots)],
            server, 3600, cwd=BROWSER, env={**os.environ, "CHROMIUM": CHROMIUM, "ECHODISTILL_RUN_TIMEOUT": "86400"})
    finally:
        server.stop()
    print(done.stdout[-6000:], done.stderr[-3000:], sep="\n")
    print(f"screenshots in {screenshots}:")
    for path in sorted(screenshots.iterdir()):
        print(f"  {path}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON result line; exit {done.returncode}; server log {server.log}"
    summary = json.loads(lines[-1])
    assert done.returncode == 0 and summary["ok"], "\n".join(summary["failures"]) + f"\nserver log: {server.log}"
    assert summary["run"]["status"] == "success"
    assert {Path(p).name for p in summary["screenshots"]} >= {
        "1_train_node_mid_run.png", "1_train_node_after_run.png", "1_train_node_cancelled.png",
        "1_train_node_resumed.png", "templates.png", "new_train_node_seed.png",
        "2_personalize_sd_turbo_with_sd21_teacher_image_networks.png",
        "2_personalize_sd_turbo_with_sd21_teacher_missing_models.png"}
