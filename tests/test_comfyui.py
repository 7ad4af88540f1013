"""Against a real ComfyUI: set COMFYUI_DIR to a checkout (and COMFYUI_PYTHON to the interpreter of its
environment, default this one); skipped otherwise (failed instead where ECHODISTILL_REAL_HOST=required, see
conftest.py). The server runs headless on the CPU, on loopback, with the pack loaded from a temporary
custom_nodes folder and temporary input/output folders.

Waits are measured in the CPU time the server spends, not in wall seconds: on a slow or shared machine
the same work takes longer and is waited for, while a server that stops working (no CPU used for
STALL_SECONDS) fails at once."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to run against a real ComfyUI")
sys.path.insert(0, str(ROOT / "tools"))
STALL_SECONDS = 600  # wall seconds in which a server with work to do uses no CPU at all: it hangs


def cpu_seconds(pids: list[int]) -> float | None:
    """CPU time used so far by the processes `pids` and all their live descendants (Linux /proc; None elsewhere)."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        parents, used = {}, {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as file:
                    fields = file.read().rsplit(")", 1)[1].split()
            except OSError:  # it ended meanwhile
                continue
            parents[int(entry)] = int(fields[1])
            used[int(entry)] = sum(int(value) for value in fields[11:15]) / ticks  # utime stime cutime cstime
    except (OSError, ValueError):
        return None
    tree, todo = set(), [pid for pid in pids if pid in used]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += [child for child, parent in parents.items() if parent == pid and child not in tree]
    return sum(used[pid] for pid in tree)


def work_until(done, cpu_budget: float, pids: list[int], what: str, check=lambda: None):
    """Poll `done()` until true while `pids` work; give up after `cpu_budget` CPU seconds of their work, or when
    they use no CPU for STALL_SECONDS. `check()` may raise to stop early. Without /proc, wall seconds count."""
    start = time.monotonic()
    first = cpu_seconds(pids)
    used, progress_at = first, start
    while True:
        result = done()
        if result:
            return result
        check()
        now = time.monotonic()
        cpu = cpu_seconds(pids)
        spent = (cpu - first) if cpu is not None and first is not None else now - start
        if cpu is not None and used is not None and cpu > used:
            used, progress_at = cpu, now
        if spent > cpu_budget:
            raise TimeoutError(f"{what}: not done after {spent:.0f} CPU seconds of work ({now - start:.0f} s)")
        if now - progress_at > STALL_SECONDS:
            raise TimeoutError(f"{what}: no CPU used for {STALL_SECONDS} s, so it hangs")
        time.sleep(1)


class Server:
    def __init__(self, root: Path, other_packs: tuple[Path, ...] = ()):
        """`other_packs`: custom node folders loaded beside the pack (the memory probe)."""
        self.root = root
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        packs = root / "custom_nodes"
        packs.mkdir()
        (root / "input").mkdir()
        (packs / "comfyui-echodistill").symlink_to(ROOT)
        for pack in other_packs:
            (packs / pack.name).symlink_to(pack)
        config = root / "extra_model_paths.yaml"
        config.write_text(  # is_default: saved files land here, not in the checkout's own models folder
            f"tests:\n  base_path: {root}\n  is_default: true\n  custom_nodes: {packs}\n"
            "  loras: models/loras\n  embeddings: models/embeddings\n  echodistill: models/echodistill\n"
            "  checkpoints: models/checkpoints\n  diffusers: models/diffusers\n  clip_vision: models/clip_vision\n"
            "  ipadapter: models/ipadapter\n  dino: models/dino\n")
        support = root / "support"
        support.mkdir()
        # PyPI's torchvision is a CUDA build that fails to import beside a CPU torch (comfyui.md).
        (support / "sitecustomize.py").write_text(
            "import sys, types\n"
            "for name in ('torchvision._meta_registrations', 'torchvision._autograd_registrations'):\n"
            "    sys.modules.setdefault(name, types.ModuleType(name))\n")
        self.log = root / "server.log"
        environment = {**os.environ, "PYTHONPATH": str(support), "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(
            [os.environ.get("COMFYUI_PYTHON", sys.executable), "main.py", "--cpu", "--listen", "127.0.0.1",
             "--port", str(self.port), "--disable-auto-launch", "--extra-model-paths-config", str(config),
             "--output-directory", str(root / "output"), "--input-directory", str(root / "input")],
            cwd=COMFYUI_DIR, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env=environment)
        def answers():
            try:
                return self.get("/system_stats") is not None
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        def alive():
            assert self.process.poll() is None, self.log.read_text()[-3000:]

        started, cpu_before = time.monotonic(), self.cpu_seconds()
        try:  # about 30 CPU seconds on an idle machine
            work_until(answers, 600, [self.process.pid], "ComfyUI's start", check=alive)
        except TimeoutError as error:
            self.stop()
            raise TimeoutError(f"{error}\n{self.log.read_text()[-3000:]}") from None
        # How many times slower than an unshared machine: the start is mostly one thread's work, so its wall
        # time over its CPU time (1 to 1.5 on an idle machine). Given to clients with fixed waits of their own.
        cpu_after = self.cpu_seconds()
        cpu = cpu_after - cpu_before if cpu_after is not None and cpu_before is not None else 0
        self.slowness = max(1.0, (time.monotonic() - started) / cpu) if cpu > 0 else 1.0

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=300) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict):
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            text = response.read()
            return json.loads(text) if text else None

    def queue(self, prompt: dict) -> str:
        try:
            return self.post("/prompt", {"prompt": prompt})["prompt_id"]
        except urllib.error.HTTPError as error:
            raise AssertionError(error.read().decode()) from error

    def cpu_seconds(self) -> float | None:
        return cpu_seconds([self.process.pid])

    def finished(self, prompt_id: str) -> dict | None:
        """The prompt's /history entry once it has succeeded or failed, else None."""
        try:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
        except (TimeoutError, urllib.error.URLError):  # a busy CPU-only server answers late
            return None
        if entry and entry["status"].get("status_str") in ("success", "error"):
            return entry
        return None

    def wait(self, prompt_id: str, cpu_budget: float = 1200) -> dict:
        """The prompt's finished /history entry, waiting while the server works on it: at most `cpu_budget` CPU
        seconds of its work (two cores give about twice the wall seconds of an unshared machine)."""
        def alive():
            assert self.process.poll() is None, self.log.read_text()[-3000:]

        return work_until(lambda: self.finished(prompt_id), cpu_budget, [self.process.pid], f"prompt {prompt_id}",
                          check=alive)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


def run_while_working(arguments: list[str], server: Server, cpu_budget: float, **options) -> subprocess.CompletedProcess:
    """subprocess.run for a client of `server` (the browser test), waited for while the client or the server works
    (work_until, over both process trees); the client's own fixed waits learn the machine's slowness from
    ECHODISTILL_TIME_SCALE. Output is captured as text."""
    environment = {**options.pop("env", os.environ), "ECHODISTILL_TIME_SCALE": f"{2 * server.slowness:.1f}"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(arguments, stdout=out, stderr=err, text=True, env=environment,
                                   start_new_session=True, **options)
        try:
            work_until(lambda: process.poll() is not None, cpu_budget, [server.process.pid, process.pid],
                       " ".join(map(str, arguments))[:200])
        finally:
            if process.poll() is None:  # stopped by work_until: end it and everything it started
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(arguments, process.returncode, out.read(), err.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("comfyui"))
    yield running
    running.stop()


def api_prompt(workflow: dict) -> dict:
    """A UI-format workflow as the API-format prompt the frontend would queue."""
    import make_workflows

    pack = make_workflows.pack_nodes()
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in make_workflows.NOTES:  # the frontend's own, never queued
            continue
        _, widgets, _ = make_workflows.signature(node["type"], pack)
        inputs = {name: value for name, value in zip(widgets, node["widgets_values"])
                  if name not in ("control_after_generate", "upload")}
        for socket_input in node["inputs"]:
            if socket_input["link"] is not None:
                link = next(l for l in workflow["links"] if l[0] == socket_input["link"])
                inputs[socket_input["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def tiny_workflow(steps: int, name: str) -> dict:
    prompt = api_prompt(json.loads((ROOT / "example_workflows" / "1_personalize_tiny_models.json").read_text()))
    prompt["5"]["inputs"].update(steps=steps, preview_every=2)
    prompt["6"]["inputs"]["batch_size"] = prompt["8"]["inputs"]["batch_size"] = 1
    prompt["8"]["inputs"]["steps"] = 5
    prompt["11"]["inputs"]["name"] = name
    return prompt


def test_the_pack_loads_without_import_errors(server):
    lines = server.log.read_text().splitlines()
    loaded = [line for line in lines if line.strip().endswith("custom_nodes/comfyui-echodistill")]
    assert loaded and "IMPORT FAILED" not in loaded[0]
    assert not [line for line in lines if "IMPORT FAILED" in line and "echodistill" in line]
    info = server.get("/object_info/EchoDistillTrain")["EchoDistillTrain"]
    assert info["category"] == "EchoDistill" and "teacher" in info["input"]["required"]
    import make_workflows

    registered = {key for key in server.get("/object_info") if key.startswith("EchoDistill")}
    assert registered == set(make_workflows.pack_nodes())  # every node of the pack, and no other
    templates = server.get("/workflow_templates")
    assert any("1_personalize_tiny_models" in str(v) for v in templates.values())


def test_comfyuis_own_parser_reads_the_registry_metadata():
    """ComfyUI's comfy_config (the registry's pyproject.toml rules) reads the pack's metadata as intended."""
    script = ("import json, sys; sys.path.insert(0, '.'); from comfy_config import config_parser; "
              "print(json.dumps(config_parser.extract_node_configuration(sys.argv[1]).model_dump()))")
    done = subprocess.run([os.environ.get("COMFYUI_PYTHON", sys.executable), "-c", script, str(ROOT)], cwd=COMFYUI_DIR,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads(done.stdout.strip().splitlines()[-1])
    project, comfy = config["project"], config["tool_comfy"]
    assert project["name"] == "echodistill" and project["supported_os"] == ["OS Independent"]
    assert project["supported_accelerators"] == ["GPU :: NVIDIA CUDA"]
    assert project["supported_comfyui_version"].startswith(">=")
    requirements = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    assert project["dependencies"] == requirements
    assert comfy["publisher_id"] and comfy["icon"].endswith("docs/icon.svg") and (ROOT / "docs" / "icon.svg").is_file()


def test_workflow_one_runs_to_success(server):
    entry = server.wait(server.queue(tiny_workflow(steps=6, name="wf1")))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-2000:]
    images = [image for output in entry["outputs"].values() for image in output.get("images", [])]
    assert len(images) == 3  # student sample, teacher sample, loss plot
    loras = server.root / "models" / "loras"
    assert (loras / "wf1.safetensors").is_file()
    assert (server.root / "models" / "embeddings" / "wf1.safetensors").is_file()


def test_invalid_widgets_are_refused_when_queued_with_what_to_do(server):
    prompt = tiny_workflow(steps=2, name="refused")
    prompt["5"]["inputs"].update(steps=0, resolution=100)  # steps 0 is the preset's; 100 px no size at all
    prompt["4"]["inputs"].update(token="my toy")
    prompt["11"]["inputs"]["name"] = "../escape"
    with pytest.raises(AssertionError) as refused:
        server.queue(prompt)
    errors = json.loads(str(refused.value))["node_errors"]
    train = {error["details"] for error in errors["5"]["errors"]}
    assert any("resolution must be 0 (the student's size) or a multiple of 8" in details and "steps" not in details
               and details.endswith("queue again.") for details in train), train
    assert any("must be one word without spaces" in error["details"] for error in errors["4"]["errors"])
    assert any("plain file name" in error["details"] for error in errors["11"]["errors"])


def cached_nodes(entry: dict) -> set[str]:
    """The nodes ComfyUI did not run for a prompt, reusing their outputs, by its /history entry."""
    return {node for event, data in entry["status"]["messages"] if event == "execution_cached" for node in data["nodes"]}


def test_train_runs_again_only_when_what_it_learns_changes(server):
    """A graph queued again unchanged reuses Train's outputs; with only what a run shows changed (previews,
    autosaves) Train keeps its finished result (its V3 fingerprint and the node's memory of its last run); a new
    seed, step count or concept trains."""
    def runs():
        return server.log.read_text().count("EchoDistill run:")

    def queued(prompt) -> dict:
        entry = server.wait(server.queue(prompt))
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-2000:]
        return entry

    prompt = tiny_workflow(steps=2, name="fingerprint")
    prompt["5"]["inputs"]["seed"] = 7  # a run of this test's own
    queued(prompt)
    trained = runs()
    assert "5" in cached_nodes(queued(prompt)) and runs() == trained  # queued again: not even run
    prompt["5"]["inputs"].update(preview_every=1, preview_prompts="a <heart> toy\na ring", save_every=1)
    log_before = len(server.log.read_text())
    assert "5" not in cached_nodes(queued(prompt)) and runs() == trained  # run, but not trained
    assert "the finished run's result stands" in server.log.read_text()[log_before:]
    for node, changes in (("5", dict(seed=8)), ("5", dict(steps=3)), ("4", dict(class_word="doll"))):
        prompt[node]["inputs"].update(changes)
        queued(prompt)
        assert runs() == trained + 1, changes
        trained += 1


def test_other_workflows_validate_given_their_models(server):
    """Workflows 2 and 3 name real models. Without them ComfyUI refuses only those choices; with files of
    those names in place (empty stand-ins here) the graphs pass validation and are queued."""
    names = ("2_personalize_sd_turbo_with_sd21_teacher.json", "3_use_saved_result_with_stock_nodes.json")
    prompts = [api_prompt(json.loads((ROOT / "example_workflows" / name).read_text())) for name in names]
    for prompt in prompts:
        with pytest.raises(AssertionError) as refused:
            server.queue(prompt)
        for node_id, node_errors in json.loads(str(refused.value))["node_errors"].items():
            for error in node_errors["errors"]:
                if prompt[node_id]["class_type"] == "EchoDistillLoadImageNetworks":  # the node checks its files
                    assert "is not in ComfyUI's models/" in error["details"], error
                else:
                    assert error["extra_info"]["input_name"] in ("model", "ckpt_name", "lora_name", "image"), error
    models = server.root / "models"
    for file in ("checkpoints/v2-1_768-ema-pruned.safetensors", "checkpoints/sd_turbo.safetensors",
                 "loras/my_dog.safetensors", "clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
                 "ipadapter/ip-adapter_sd15.safetensors", "dino/dino-vits16.safetensors",
                 "dino/dinov2-large.safetensors"):
        (models / file).parent.mkdir(parents=True, exist_ok=True)
        (models / file).write_bytes(b"")
    from PIL import Image
    Image.new("RGB", (64, 64)).save(server.root / "input" / "my_dog.png")
    for prompt in prompts:
        entry = server.wait(server.queue(prompt))  # accepted: no validation error
        assert entry["status"]["status_str"] == "error"  # the stand-ins are not models


def with_image_networks(prompt: dict, **widgets) -> dict:
    """`prompt` with a Load Image Networks node ("12", its defaults changed by `widgets`) feeding Train ("5")."""
    defaults = dict(discriminators="teacher", feature_network="teacher", clip_vision="none", ip_adapter="none",
                    dino="none", dinov2="none", precision="auto")
    prompt["12"] = {"class_type": "EchoDistillLoadImageNetworks", "inputs": {**defaults, **widgets}}
    prompt["5"]["inputs"]["image_networks"] = ["12", 0]
    return prompt


def test_load_image_networks_lists_the_users_files_refuses_a_lacking_choice_and_feeds_train(server):
    dino = server.root / "models" / "dino"
    (dino / "dinov2-folder").mkdir(parents=True)
    for file in ("dinov2-folder/config.json", "dinov2-folder/model.safetensors", "dino-file.safetensors", "notes.txt"):
        (dino / file).write_text("{}")
    (server.root / "models" / "ipadapter").mkdir(parents=True, exist_ok=True)
    (server.root / "models" / "ipadapter" / "ip-adapter-file.safetensors").write_bytes(b"")
    info = server.get("/object_info/EchoDistillLoadImageNetworks")["EchoDistillLoadImageNetworks"]
    widgets = info["input"]["required"]
    assert info["output"] == ["ECHODISTILL_IMAGE_NETWORKS"] and widgets["discriminators"][1]["default"] == "teacher"
    for name in ("dino", "dinov2"):
        assert widgets[name][0] == "COMBO"  # a V3 combo: its choices are its options
        assert {"none", "dinov2-folder", "dino-file.safetensors"} <= set(widgets[name][1]["options"])
        assert not {"dinov2-folder/model.safetensors", "notes.txt"} & set(widgets[name][1]["options"])
    assert "ip-adapter-file.safetensors" in widgets["ip_adapter"][1]["options"]

    with pytest.raises(AssertionError) as refused:  # the paper's set without its files: refused when queued
        server.queue(with_image_networks(tiny_workflow(steps=2, name="refused"), discriminators="paper"))
    errors = json.loads(str(refused.value))["node_errors"]["12"]["errors"]
    assert all("the paper discriminator set needs the dino and dinov2 and clip_vision files" in error["details"]
               for error in errors), errors

    log_before = len(server.log.read_text())
    entry = server.wait(server.queue(with_image_networks(tiny_workflow(steps=2, name="networks"))))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-2000:]
    log = server.log.read_text()[log_before:]
    assert "discriminators: the base teacher's features" in log and "feature x1 on the base teacher's features" in log


def test_a_dino_folder_joins_the_teachers_discriminator(server):
    """A DINO ViT-S/16 transformers folder in models/dino (random weights, the published shapes) read by Load
    Image Networks; two training steps on the tiny models with both discriminators."""
    from transformers import ViTModel

    from echodistill_core.image_networks import bundled_config

    ViTModel(bundled_config("dino-vits16"), add_pooling_layer=False).save_pretrained(
        server.root / "models" / "dino" / "dino-vits16-random")
    prompt = with_image_networks(tiny_workflow(steps=2, name="dino"), discriminators="teacher + image networks",
                                 dino="dino-vits16-random")
    log_before = len(server.log.read_text())
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-2000:]
    log = server.log.read_text()[log_before:]
    assert "discriminators: the base teacher's features, DINO ViT-S/16 at 224 px (dino-vits16-random)" in log, log[-3000:]


def test_cancel_then_resume_matches_an_uninterrupted_run(server):
    before = server.cpu_seconds()
    straight = server.wait(server.queue(tiny_workflow(steps=40, name="straight")))
    assert straight["status"]["status_str"] == "success"
    straight_work = server.cpu_seconds() - before if before is not None else None
    interrupted = tiny_workflow(steps=40, name="resumed")
    interrupted["5"]["inputs"]["seed"] = 42  # same settings as the straight run
    interrupted["1"]["inputs"]["precision"] = "fp32"  # a new graph signature, so ComfyUI does not reuse the cache
    states = server.root / "output" / "echodistill_states"
    earlier = set(states.glob("*.safetensors"))  # the server is shared: other tests' runs keep states too
    start = server.cpu_seconds()
    prompt_id = server.queue(interrupted)
    if straight_work is None:  # no /proc: wall seconds
        time.sleep(8)
    else:  # about half way through the run, however slow the machine: by the server's own work (a run that
        # ends sooner must end the wait too: an idle server's CPU ticks would keep it from ever stalling)
        work_until(lambda: server.cpu_seconds() - start > straight_work / 2 or server.finished(prompt_id),
                   straight_work, [server.process.pid], "half the run")
    server.post("/interrupt", {})
    entry = server.wait(prompt_id)
    assert entry["status"]["status_str"] == "error", "the run ended before Cancel reached it; nothing was cancelled"
    saved = sorted(set(states.glob("*.safetensors")) - earlier)
    assert len(saved) == 1, f"cancel must keep exactly one resumable state, not {[path.name for path in saved]}"
    interrupted["5"]["inputs"]["resume_state"] = saved[0].name
    resumed = server.wait(server.queue(interrupted))
    assert resumed["status"]["status_str"] == "success", json.dumps(resumed["status"])[-2000:]
    loras = server.root / "models" / "loras"
    first, second = load_file(str(loras / "straight.safetensors")), load_file(str(loras / "resumed.safetensors"))
    assert first.keys() == second.keys()
    for key in first:
        assert (first[key].float() - second[key].float()).abs().max() < 1e-3, key


def sd2_layout_folder(folder: Path) -> None:
    """A diffusers folder in SD 2.1-base's exact layout and shapes, with random fp16 weights."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from echodistill_core.clip_tokenizer import build_clip_tokenizer

    def random(module):
        generator = torch.Generator().manual_seed(0)
        for parameter in module.parameters():
            parameter.data = (torch.randn(parameter.shape, generator=generator) * 0.02).half()
        return module

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=64, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True, block_out_channels=(320, 640, 1280, 1280))
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=512)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
            projection_dim=512, hidden_act="gelu", vocab_size=49408))
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        random(module.to_empty(device="cpu")).save_pretrained(folder / name)
    # Published SD 2.x folders were written by transformers 4, with a "text_model." prefix that
    # ComfyUI uses to recognise OpenCLIP-H; transformers 5 writes the keys without it.
    weights = folder / "text_encoder" / "model.safetensors"
    save_file({f"text_model.{key}": value for key, value in load_file(str(weights)).items()}, str(weights))
    build_clip_tokenizer(pad_token="!").save_pretrained(folder / "tokenizer")
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  prediction_type="epsilon").save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))


def test_stock_nodes_apply_the_saved_lora_and_embedding_with_no_unloaded_keys(server):
    """SD 2.x layout (random weights): DiffusersLoader -> LoraLoader -> CLIPTextEncode("embedding:...")."""
    import torch

    from echodistill_core.config import EchoDistillConfig
    from echodistill_core.export import save_embedding, save_student_lora
    from echodistill_core.loading import load_diffusers_folder
    from echodistill_core.personalization import Personalization

    folder = server.root / "models" / "diffusers" / "sd2-layout-random"
    sd2_layout_folder(folder)
    model, text = load_diffusers_folder(folder, dtype=torch.float16)
    for parameterisation in ("custom_diffusion", "lora"):
        config = EchoDistillConfig(token="<edtest>", class_word="dog", parameterisation=parameterisation)
        personalization = Personalization.create(config, model, model, text)
        for parameter in personalization.student_adapters.parameters():
            parameter.data += 0.01 * torch.randn_like(parameter)
        name = f"sd2_{parameterisation}"
        save_student_lora(server.root / "models" / "loras" / f"{name}.safetensors", personalization, model.unet, name)
        save_embedding(server.root / "models" / "embeddings" / f"{name}.safetensors", personalization)
        prompt = {
            "1": {"class_type": "DiffusersLoader", "inputs": {"model_path": "sd2-layout-random"}},
            "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name":
                  f"{name}.safetensors", "strength_model": 1.0, "strength_clip": 1.0}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": f"a photo of embedding:{name} dog"}},
            "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": ""}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "6": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "positive": ["3", 0], "negative": ["4", 0],
                  "latent_image": ["5", 0], "seed": 0, "steps": 1, "cfg": 1.0, "sampler_name": "euler_ancestral",
                  "scheduler": "sgm_uniform", "denoise": 1.0}},
            "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
            "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
        }
        log_before = len(server.log.read_text())
        entry = server.wait(server.queue(prompt), cpu_budget=1800)
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-2000:]
        log = server.log.read_text()[log_before:]
        assert "lora key not loaded" not in log, log[-3000:]
        assert f"embedding:{name} does not exist" not in log, log[-3000:]  # the embedding was found


# A full-size SD-Turbo checkpoint, as Stability publishes it, with random weights.

APPLY_LORA = """
import json, sys
sys.path.insert(0, ".")
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.sd, comfy.utils
checkpoint, lora_file, keys = json.loads(sys.stdin.read())
model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=False)
base = {key: model.model.state_dict()[key].float().clone() for key in keys}
patched_model, _ = comfy.sd.load_lora_for_models(model, clip, comfy.utils.load_torch_file(lora_file), 1.0, 1.0)
patched_model.patch_model()
state = patched_model.model.state_dict()
print(json.dumps({key: (state[key].float() - base[key]).flatten()[:4096].tolist() for key in keys}))
"""


def sd_turbo_checkpoint(path: Path, teacher: Path | None = None) -> None:
    """Random full-size SD-Turbo weights in Stability's single-file layout (fp16, about 2.6 GB); with `teacher`,
    an SD 2.1-base teacher there too: another UNet with the same text encoder and VAE, as the real pair shares."""
    import torch
    from ldm_layout import build_family_models, family_configs_from_folder, write_single_file

    from echodistill_core.families import FAMILIES

    configs = family_configs_from_folder(FAMILIES["sd-turbo"].config)
    unet, vae, text_encoders = build_family_models(configs)[:3]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_single_file(path, "sgm_sd2", unet, vae, text_encoders, dtype=torch.float16)
    if teacher is not None:
        del unet
        write_single_file(teacher, "sd2", build_family_models(configs, seed=1)[0], vae, text_encoders,
                          dtype=torch.float16)


@pytest.mark.slow
def test_sd_turbo_checkpoint_trains_in_comfyui_and_stock_nodes_apply_the_result(server):
    """Our loaders read the checkpoint files (an SD 2.1-base teacher sharing SD-Turbo's text encoder); one training step
    at 64 px; Save Personalized; then CheckpointLoaderSimple -> LoraLoader -> CLIPTextEncode("embedding:...")
    -> KSampler in one step, with no unloaded LoRA key, and the UNet weights moved by exactly the saved deltas."""
    import torch

    checkpoints = server.root / "models" / "checkpoints"
    sd_turbo_checkpoint(checkpoints / "sd_turbo_random.safetensors", teacher=checkpoints / "sd21_base_random.safetensors")
    model = "checkpoints/sd_turbo_random.safetensors"
    train = {
        "1": {"class_type": "EchoDistillLoadTeacher", "inputs": {"model": "checkpoints/sd21_base_random.safetensors",
                                                                  "family": "SD 2.x 512 (epsilon)",
                                                                  "precision": "bf16"}},
        "2": {"class_type": "EchoDistillLoadStudent", "inputs": {"model": model, "family": "auto-detect",
                                                                  "precision": "bf16"}},
        "3": {"class_type": "EchoDistillDemoConceptImages", "inputs": {"size": 64}},
        "6": {"class_type": "EchoDistillConceptImages", "inputs": {"images": ["3", 0], "token": "<turbo-dog>",
                                                                    "class_word": "dog", "initializer_word": ""}},
        "4": {"class_type": "EchoDistillTrain", "inputs": {
            "teacher": ["1", 0], "student": ["2", 0], "concept": ["6", 0], "steps": 1, "resolution": 64,
            "parameterisation": "custom_diffusion", "echo": True, "seed": 0, "preview_every": 0, "preset": "paper",
            "teacher_lr": 1e-3, "student_lr": 1e-3, "resume_state": "none (start fresh)", "memory": "8 GB"}},
        "5": {"class_type": "EchoDistillSavePersonalized", "inputs": {"model": ["4", 0], "name": "turbo_dog"}},
    }
    entry = server.wait(server.queue(train), cpu_budget=7200)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-3000:]

    stock = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_turbo_random.safetensors"}},
        "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name":
              "turbo_dog.safetensors", "strength_model": 1.0, "strength_clip": 1.0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "a photo of embedding:turbo_dog"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": ""}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "positive": ["3", 0], "negative": ["4", 0],
              "latent_image": ["5", 0], "seed": 0, "steps": 1, "cfg": 1.0, "sampler_name": "euler_ancestral",
              "scheduler": "sgm_uniform", "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
    }
    log_before = len(server.log.read_text())
    entry = server.wait(server.queue(stock), cpu_budget=3600)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-3000:]
    log = server.log.read_text()[log_before:]
    assert "lora key not loaded" not in log, log[-3000:]
    assert "embedding:turbo_dog does not exist" not in log, log[-3000:]

    lora_file = server.root / "models" / "loras" / "turbo_dog.safetensors"
    lora = load_file(str(lora_file))

    def delta(stem):  # the weight difference the file's factors stand for
        up, down = lora[f"{stem}.lora_up.weight"].float(), lora[f"{stem}.lora_down.weight"].float()
        return up @ down * (lora[f"{stem}.alpha"].float() / down.shape[0])

    deltas = {  # ComfyUI's UNet key -> the saved weight difference
        "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
            delta("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"),
        "diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_v.weight":
            delta("lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_v"),
    }
    payload = json.dumps([str(server.root / "models" / "checkpoints" / "sd_turbo_random.safetensors"),
                          str(lora_file), list(deltas)])
    result = subprocess.run([os.environ.get("COMFYUI_PYTHON", sys.executable), "-c", APPLY_LORA], input=payload,
                            capture_output=True, text=True, cwd=COMFYUI_DIR, timeout=1800,
                            env={**os.environ, "PYTHONPATH": str(server.root / "support")})
    assert result.returncode == 0, result.stderr[-3000:]
    moved = json.loads(result.stdout.strip().splitlines()[-1])
    for key, delta in deltas.items():
        expected = delta.float().flatten()[:4096]
        assert expected.abs().max() > 0, key
        assert (torch.tensor(moved[key]) - expected).abs().max() <= 0.01 * expected.abs().max(), key


@pytest.mark.slow
def test_a_checkpoint_saved_by_comfyui_loads_as_the_same_model(server):
    """ComfyUI's CheckpointSave re-writes SD-Turbo under SD 2's prefixes; our loader reads it back, as the
    student, to the weights of the original file."""
    import torch

    from echodistill_core.checkpoints import load_single_file

    original = server.root / "models" / "checkpoints" / "sd_turbo_random.safetensors"
    if not original.exists():
        sd_turbo_checkpoint(original)
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": original.name}},
        "2": {"class_type": "CheckpointSave", "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2],
                                                         "filename_prefix": "checkpoints/resaved"}},
    }
    entry = server.wait(server.queue(prompt), cpu_budget=3600)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-3000:]
    resaved = next((server.root / "output" / "checkpoints").glob("resaved*.safetensors"))

    def sample_weights(path):
        model, text, family = load_single_file(path, role="student")
        unet, encoder = model.unet.state_dict(), text.text_encoder.state_dict()
        picked = {key: unet[key].float().clone() for key in list(unet)[::40]}
        picked.update({f"text.{key}": encoder[key].float().clone() for key in list(encoder)[::10]})
        return family.name, picked

    family, expected = sample_weights(original)
    resaved_family, loaded = sample_weights(resaved)
    assert family == resaved_family == "sd-turbo"
    for key, value in expected.items():
        assert torch.allclose(loaded[key], value, atol=1e-3), key


def test_comfyuis_model_manager_holds_the_packs_networks_and_training_frees_the_others_first():
    """bench/comfyui_memory.py in its own server: the pack's networks are among ComfyUI's loaded models while
    a node uses them and after (the student's own text encoder never: training reads the teacher's), ComfyUI
    evicts them with its own, and a stock generation's models are unloaded before training loads its
    networks, so the run accounts no more after a stock generation than alone."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "comfyui_memory.py"), "--steps", "2"],
                          capture_output=True, text=True, timeout=3600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    for run in ("pack_models_loaded", "pack_models_loaded_after_stock"):
        assert {"teacher unet", "teacher text encoder", "student unet"} <= set(figures[run]), figures
        assert "student text encoder" not in figures[run], figures
    assert figures["stock_loaded_after_generation_mb"] > 100 and figures["stock_models"], figures
    assert figures["loaded_when_training_loaded"] == [], figures  # the stock models left before training loaded
    assert 0 < figures["peak_after_stock_mb"] <= figures["peak_alone_mb"], figures
    assert figures["pack_loaded_after_run_mb"] > 0, figures  # held between uses, as ComfyUI's own models are
    assert figures["loaded_after_unload_mb"] == figures["loaded_after_unload_alone_mb"] == 0, figures
    assert figures["pack_models_after_unload"] == [], figures
