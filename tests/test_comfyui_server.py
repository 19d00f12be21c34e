"""Against a real ComfyUI server (COMFYUI_PATH set; skipped otherwise): the pack registers, every
shipped API workflow runs through POST /prompt, an interrupt leaves the server ready, and a bad
prompt gets ComfyUI's validation error instead of a crash."""
import json
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
API_FILES = sorted((ROOT / "workflows" / "api").glob("*.json"))


@pytest.fixture(scope="module")
def server(comfyui_path, tmp_path_factory, pack):
    from comfy_server import ComfyServer

    srv = ComfyServer(comfyui_path, tmp_path_factory.mktemp("comfy_base"))
    yield srv
    srv.close()


def test_object_info_lists_every_node(server, pack):
    info = server.get("/object_info")
    missing = [name for name in pack.NODE_CLASS_MAPPINGS if name not in info]
    assert not missing, missing
    sampler = info["FlowDiTSampler"]
    assert sampler["input"]["required"]["cfg"][1]["tooltip"]
    # The loader lists the model folder, and the pack's web extension is served.
    assert "wan2.1_t2v_1.3B_fp16.safetensors" in info["FlowDiTLoader"]["input"]["required"]["model_name"][0]
    assert any("FlowDiT" in e for e in server.get("/extensions"))


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.stem)
def test_shipped_workflow_runs_through_the_queue(server, path):
    from comfy_server import output_files, shrink

    from core.video_io import read_video

    if path.stem.startswith("flowdit_default"):
        from core.default_model.bundle import is_shipped

        if not is_shipped():
            pytest.skip("the default model's weights are not in core/default_model/ yet")
    prompt = shrink(json.loads(path.read_text()))
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    files = output_files(server.base, entry)
    assert files, "the workflow saved no video"
    frames, _ = read_video(files[0])
    assert frames.shape == (9, 64, 64, 3)


def test_lora_node_patches_through_comfyui(server):
    """The LoRA node inside ComfyUI (patches on a ModelPatcher clone): strength 0 and the plain
    model give the same video, strength 1.5 a different one, and the plain model afterwards is
    unpatched again."""
    from comfy_server import output_files, shrink

    from core.video_io import read_video

    base = shrink(json.loads((ROOT / "workflows" / "api" / "wan2.1_t2v_1.3b_text_to_video.json").read_text()))
    videos = {}
    for strength in (None, 0.0, 1.5, "again"):
        prompt = json.loads(json.dumps(base))
        prompt["10"]["inputs"]["filename_prefix"] = f"lora/{strength}"
        if strength not in (None, "again"):
            prompt["20"] = {"class_type": "FlowDiTLoraLoader",
                            "inputs": {"model": ["1", 0], "lora_name": "test_lora.safetensors", "strength": strength}}
            prompt["8"]["inputs"]["model"] = ["20", 0]
        entry = server.wait(server.queue(prompt))
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
        videos[strength] = read_video(output_files(server.base, entry)[0])[0].astype(float)
    assert abs(videos[0.0] - videos[None]).max() == 0
    assert abs(videos[1.5] - videos[None]).mean() > 1.0
    assert abs(videos["again"] - videos[None]).max() == 0


def test_a14b_run_loads_each_expert_once(server):
    """The 4-step A14B workflow through the queue: ComfyUI's memory manager is asked for each
    expert once per run (the high-noise one, then the low-noise one), as its log shows."""
    from comfy_server import shrink

    prompt = shrink(json.loads((ROOT / "workflows" / "api" / "wan2.2_a14b_image_to_video_4step.json").read_text()))
    prompt["8"]["inputs"]["seed"] = 7  # not the cached run of the shipped-workflow test
    prompt["10"]["inputs"]["filename_prefix"] = "a14b/loads"
    log = server.base / "server.log"
    before = log.read_text().count("Requested to load WanDiT")
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    assert log.read_text().count("Requested to load WanDiT") - before == 2


def test_interrupt_mid_sampling_leaves_the_server_ready(server):
    from comfy_server import shrink

    prompt = shrink(json.loads((ROOT / "workflows" / "api" / "wan2.1_t2v_1.3b_text_to_video.json").read_text()),
                    steps=1000)
    pid = server.queue(prompt)
    deadline = time.time() + 60
    while not server.is_running() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)  # well inside the sampling loop
    assert server.post("/interrupt")[0] == 200
    entry = server.wait(pid, timeout=60)
    assert entry["status"]["status_str"] == "error"
    assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"])
    # The next prompt runs normally.
    ok = server.wait(server.queue(shrink(prompt, steps=2)))
    assert ok["status"]["status_str"] == "success"


def test_bad_prompt_gets_a_validation_error(server):
    from comfy_server import shrink

    prompt = shrink(json.loads((ROOT / "workflows" / "api" / "wan2.1_t2v_1.3b_text_to_video.json").read_text()))
    bad = json.loads(json.dumps(prompt))
    bad["7"]["inputs"]["length"] = 80
    bad["1"]["inputs"]["model_name"] = "../../secrets.safetensors"
    status, body = server.post("/prompt", {"prompt": bad})
    assert status == 400
    errors = json.dumps(body["node_errors"])
    assert "4n+1" in errors and "model folder" in errors
    # The server is still fine.
    assert server.wait(server.queue(prompt))["status"]["status_str"] == "success"


def test_editor_loads_every_workflow_in_a_real_browser(server):
    """Headless Chromium (Debian's `chromium`) with playwright-core from NODE_PATH; screenshots
    are kept in tests/artifacts/ as test artifacts."""
    import os
    import shutil
    import subprocess

    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    node_path = os.environ.get("NODE_PATH", "")
    if not (shutil.which("node") and Path(chromium).exists()):
        pytest.skip("needs node and Debian's chromium")
    if not any((Path(p) / "playwright-core").is_dir() for p in node_path.split(os.pathsep) if p):
        pytest.skip("needs playwright-core on NODE_PATH (npm install playwright-core)")
    # A first-time user gets the template browser over the canvas; mark the tour as done.
    server.post("/settings/Comfy.TutorialCompleted", True)
    shots = ROOT / "tests" / "artifacts"
    shots.mkdir(exist_ok=True)
    files = [str(p) for p in sorted((ROOT / "workflows").glob("*.json"))]
    out = subprocess.run(["node", str(ROOT / "tests" / "browser" / "check_workflows.cjs"), server.url,
                          str(shots), *files], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    for name, wf in report["workflows"].items():
        assert wf["missing"] == [], f"{name}: missing node types {wf['missing']}"
        assert wf["loaded"] == wf["expected"], name
    assert report["widgets"]["length"] == 81 and report["widgets"]["width"] == 832
    assert report["widgets"]["schedulerDraws"]
    assert not [e for e in report["consoleErrors"] if "FlowDiT" in e or "flowdit" in e]


def test_default_model_previews_when_enabled(comfy, pack, monkeypatch):
    """In-process: with a preview method chosen, the sampler's previewer for the default model's
    8-channel latents returns a JPEG preview tuple; with previews off, none is made."""
    from comfy.cli_args import LatentPreviewMethod, args

    monkeypatch.setattr(pack.nodes.host, "HAVE_COMFY", True)
    monkeypatch.setattr(args, "preview_method", LatentPreviewMethod.NoPreviews)
    assert pack.nodes.host.make_previewer(8) is None
    monkeypatch.setattr(args, "preview_method", LatentPreviewMethod.Latent2RGB)
    preview = pack.nodes.host.make_previewer(8)
    kind, image, size = preview(torch.randn(1, 8, 5, 8, 8))
    assert kind == "JPEG" and image.size == (8, 8) and size > 0


def test_a_model_naming_its_own_latent_format_is_previewed_with_its_factors(comfy, pack,
                                                                           monkeypatch):
    """A 16-channel model whose file names its own format (the pack's default model) is previewed
    with that format's factors, not ComfyUI's Wan2.1 ones; a plain 16-channel model with ComfyUI's."""
    import numpy as np
    from comfy.cli_args import LatentPreviewMethod, args

    fmt_module = pack.core.vae.latent_format
    # The pack may have been imported before ComfyUI was on the path (an earlier test of the
    # session): hand its host ComfyUI's memory manager as well as the flag.
    monkeypatch.setattr(pack.nodes.host, "HAVE_COMFY", True)
    monkeypatch.setattr(pack.nodes.host, "_mm", comfy("comfy.model_management"))
    monkeypatch.setattr(args, "preview_method", LatentPreviewMethod.Latent2RGB)
    g = torch.Generator().manual_seed(0)
    own = fmt_module.LatentFormat("own16", fmt_module.WAN21.mean, fmt_module.WAN21.std,
                                  rgb_factors=tuple(tuple(r) for r in
                                                    (0.3 * torch.randn(16, 3, generator=g)).tolist()))
    latent = torch.randn(1, 16, 2, 4, 6, generator=g)
    _, image, _ = pack.nodes.host.make_previewer(16, own)(latent)
    expected = ((own.preview_rgb(latent) + 1.0) * 127.5).round().to(torch.uint8).numpy()
    assert np.array_equal(np.asarray(image), expected)
    _, comfy_image, _ = pack.nodes.host.make_previewer(16, None)(latent)
    assert not np.array_equal(np.asarray(comfy_image.convert("RGB").resize((6, 4))), expected)
