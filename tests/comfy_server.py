"""A real ComfyUI server for tests (COMFYUI_PATH), started with --cpu on a free loopback port in a
throw-away base directory, with this pack symlinked into its custom_nodes and tiny random
checkpoints under the file names the shipped workflows use."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PACK_FOLDER = "FlowDiT"

# File names in the shipped workflows -> tiny random stand-ins (core presets).
DIT_FILES = {"wan2.2_ti2v_5B_fp16.safetensors": "tiny-ti2v", "wan2.1_t2v_1.3B_fp16.safetensors": "tiny-t2v"}
VAE_FILES = {"wan2.2_vae.safetensors": "test-2.2", "wan_2.1_vae.safetensors": "test-2.1"}

# umT5-XXL cannot be made tiny (ComfyUI builds its fixed 5.7B config), so the server tests swap
# CLIPLoader + CLIPTextEncode for this stand-in that returns a text-like CONDITIONING.
STAND_IN_NODES = '''
import hashlib
import torch

class FlowDiTTestText:
    CATEGORY = "testing"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True})}}

    def encode(self, text):
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        g = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, 12, 4096, generator=g), {"pooled_output": None}]],)

NODE_CLASS_MAPPINGS = {"FlowDiTTestText": FlowDiTTestText}
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_models(base: Path) -> None:
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT))
    from core.dit.config import dit_metadata, get_preset
    from core.dit.random_weights import random_state_dict as dit_weights
    from core.vae.config import preset as vae_preset
    from core.vae.model import random_state_dict as vae_weights

    for folder in ("diffusion_models", "vae"):
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
    for name, p in DIT_FILES.items():
        save_file(dit_weights(get_preset(p), seed=1), str(base / "models" / "diffusion_models" / name),
                  metadata=dit_metadata(get_preset(p)))  # tiny models: 32-wide heads
    for name, p in VAE_FILES.items():
        save_file(vae_weights(vae_preset(p), seed=2), str(base / "models" / "vae" / name))
    from test_nodes_e2e import write_lora

    write_lora(base / "models" / "loras" / "test_lora.safetensors")
    from a14b_models import write_a14b_files

    write_a14b_files(base / "models")  # the Wan2.2 A14B experts and 4-step LoRAs


def write_inputs(base: Path) -> None:
    from PIL import Image

    from core.video_io import write_video

    (base / "input").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(base / "input" / "example.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(base / "input" / "example_end.png")
    write_video(rng.integers(0, 255, (9, 64, 64, 3), dtype=np.uint8), base / "input" / "input.mp4", fps=8)


class ComfyServer:
    def __init__(self, comfy_path: Path, base: Path, python: str = sys.executable):
        self.comfy_path, self.base = Path(comfy_path), Path(base)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        nodes_dir = self.base / "custom_nodes"
        nodes_dir.mkdir(parents=True, exist_ok=True)
        link = nodes_dir / PACK_FOLDER
        if not link.exists():
            link.symlink_to(ROOT, target_is_directory=True)
        (nodes_dir / "flowdit_test_text.py").write_text(STAND_IN_NODES)
        write_models(self.base)
        write_inputs(self.base)
        self.log = open(self.base / "server.log", "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(self.base), "--disable-auto-launch",
             "--database-url", "sqlite:///:memory:"],
            cwd=self.comfy_path, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited early; see {self.base / 'server.log'}")
            try:
                self.get("/object_info/FlowDiTSampler")
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1.0)
        raise TimeoutError(f"ComfyUI did not start within {timeout:.0f} s; see {self.base / 'server.log'}")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def post(self, path: str, payload: object = None) -> tuple[int, object]:
        data = json.dumps({} if payload is None else payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                body = r.read()
                return r.status, json.loads(body) if body else None
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def queue(self, prompt: dict) -> str:
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": "flowdit-tests"})
        if status != 200:
            raise AssertionError(f"prompt refused ({status}): {json.dumps(body)[:2000]}")
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if history and prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def is_running(self) -> bool:
        return bool(self.get("/queue").get("queue_running"))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def shrink(prompt: dict, *, size: int = 64, length: int = 9, steps: int = 2) -> dict:
    """A shipped API workflow made tiny for a CPU test: small video, few steps, stand-in text.
    With two experts: at least 4 steps, and a step switch moved inside them, so both experts run."""
    experts = [n for n in prompt.values() if n["class_type"] == "FlowDiTExpertPair"]
    if experts:
        steps = max(steps, 4)
    out = {}
    for nid, node in json.loads(json.dumps(prompt)).items():
        inputs = node["inputs"]
        if node["class_type"] == "CLIPLoader":
            continue
        if node["class_type"] == "CLIPTextEncode":
            node = {"class_type": "FlowDiTTestText", "inputs": {"text": inputs["text"]}}
        for key, value in (("width", size), ("height", size), ("length", length), ("steps", steps)):
            if key in inputs:
                inputs[key] = value
        if node["class_type"] == "FlowDiTExpertPair":
            inputs["switch_step"] = min(inputs["switch_step"], steps // 2)
        out[nid] = node
    return out


def output_files(base: Path, entry: dict) -> list[Path]:
    files = []
    for node_out in entry.get("outputs", {}).values():
        for item in node_out.get("images", []):
            files.append(base / "output" / item.get("subfolder", "") / item["filename"])
    return files


def cleanup(base: Path) -> None:
    shutil.rmtree(base, ignore_errors=True)
