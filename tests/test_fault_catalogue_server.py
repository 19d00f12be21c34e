"""The fault catalogue against a real ComfyUI server (COMFYUI_PATH set; skipped otherwise): many
prompts back to back without the server growing, an interrupt that leaves it ready and loses no
earlier output, and bad API values (which the editor's limits do not stop: POST /prompt skips the
editor) refused as validation errors (HTTP 400) with our message, the server still running."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_API = ROOT / "workflows" / "api" / "flowdit_default_text_to_video.json"
WAN_API = ROOT / "workflows" / "api" / "wan2.1_t2v_1.3b_text_to_video.json"
PROMPTS = 20
# RSS after the last prompt may exceed RSS after the second by this factor plus this many bytes:
# generous on purpose (allocator caches, ComfyUI's own history); a leak of one decoded video or
# one model copy per prompt over 18 prompts is far above it. tests/benchmarks/bench_server_rss.py
# prints the series.
RSS_FACTOR, RSS_SLACK = 1.25, 128 * 2 ** 20


@pytest.fixture(scope="module")
def server(comfyui_path, tmp_path_factory, pack):
    from comfy_server import ComfyServer

    srv = ComfyServer(comfyui_path, tmp_path_factory.mktemp("comfy_faults"))
    yield srv
    srv.close()


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc (not Linux?)")


def default_prompt(seed: int, prefix: str, steps: int = 4) -> dict:
    from comfy_server import shrink

    prompt = shrink(json.loads(DEFAULT_API.read_text()), size=64, length=17, steps=steps)
    prompt["8"]["inputs"]["seed"] = seed  # a new seed: ComfyUI's cache cannot skip the work
    prompt["10"]["inputs"]["filename_prefix"] = prefix
    return prompt


def run_series(server, count: int, prefix: str = "series/run") -> tuple[list[int], list[Path]]:
    """Queue `count` default prompts back to back; RSS of the server after each, and the files."""
    from comfy_server import output_files

    series, files = [], []
    for i in range(count):
        entry = server.wait(server.queue(default_prompt(1000 + i, f"{prefix}{i:02d}")))
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
        files += output_files(server.base, entry)
        series.append(rss_bytes(server.proc.pid))
    return series, files


def _skip_without_default_model():
    from core.default_model.bundle import is_shipped

    if not is_shipped():
        pytest.skip("the default model's weights are not in core/default_model/")


@pytest.mark.slow
def test_twenty_prompts_back_to_back_all_saved_and_memory_flat(server):
    _skip_without_default_model()
    from core.video_io import read_video

    series, files = run_series(server, PROMPTS)
    assert len(files) == PROMPTS and len(set(files)) == PROMPTS
    for f in files:
        assert f.is_file() and read_video(f)[0].shape == (17, 64, 64, 3)
    assert series[-1] <= RSS_FACTOR * series[1] + RSS_SLACK, [s // 2 ** 20 for s in series]


def test_interrupt_mid_prompt_then_the_next_prompt_runs_and_nothing_is_lost(server):
    _skip_without_default_model()
    import time

    from comfy_server import output_files

    first = server.wait(server.queue(default_prompt(1, "interrupt/before")))
    kept = output_files(server.base, first)
    before = {p: p.read_bytes() for p in kept}
    pid = server.queue(default_prompt(2, "interrupt/cancelled", steps=1000))
    deadline = time.time() + 60
    while not server.is_running() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)  # inside the sampling loop
    assert server.post("/interrupt")[0] == 200
    entry = server.wait(pid, timeout=120)
    assert entry["status"]["status_str"] == "error"
    assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"])
    assert not list((server.base / "output" / "interrupt").glob("cancelled*"))  # no half file
    assert {p: p.read_bytes() for p in kept} == before                            # nothing lost
    after = server.wait(server.queue(default_prompt(3, "interrupt/after")))
    assert after["status"]["status_str"] == "success"


def _wan_prompt() -> dict:
    from comfy_server import shrink

    return shrink(json.loads(WAN_API.read_text()))


# case id -> (node id, input, value, the text the 400 response must contain)
BAD_VALUES = [
    pytest.param("7", "length", 80, "4n+1", id="length-80"),
    pytest.param("7", "width", 100, "multiple of 16", id="width-100"),
    pytest.param("7", "width", "wide", "whole number", id="width-a-string"),
    pytest.param("7", "batch_size", "two", "batch_size", id="batch-a-string"),
    pytest.param("7", "width", 8192, "largest that fits", id="too-large"),
    pytest.param("1", "model_name", "../../etc/passwd", "no '..'", id="dotdot-model-name"),
    pytest.param("1", "model_name", "/etc/passwd", "no absolute paths", id="absolute-model-name"),
    pytest.param("1", "model_name", "missing.safetensors", "not in the 'diffusion_models' model folder",
                 id="missing-model-file"),
    pytest.param("2", "vae_name", "../vae.safetensors", "no '..'", id="dotdot-vae-name"),
    pytest.param("6", "steps", 0, "smaller than min", id="steps-0"),
    pytest.param("6", "steps", 10 ** 9, "bigger than max", id="steps-a-billion"),
    pytest.param("6", "denoise", 0.0, "smaller than min", id="denoise-0"),
    pytest.param("6", "shift", -5.0, "smaller than min", id="negative-shift"),
    pytest.param("8", "cfg", -5.0, "smaller than min", id="negative-cfg"),
]


@pytest.mark.parametrize("node, name, value, message", BAD_VALUES)
def test_bad_api_value_is_a_validation_error_and_the_server_keeps_running(server, node, name,
                                                                          value, message):
    prompt = _wan_prompt()
    prompt[node]["inputs"][name] = value
    if name == "width" and value == 8192:
        prompt[node]["inputs"].update(height=8192, length=1001)
    status, body = server.post("/prompt", {"prompt": prompt})
    assert status == 400, body
    errors = json.dumps(body.get("node_errors", body))
    assert message in errors, errors[:3000]
    assert server.proc.poll() is None


def test_nan_cfg_through_the_api_is_refused_with_our_message(server):
    """NaN passes ComfyUI's min/max check (every comparison with NaN is false): it must then be
    refused when the sampler runs, with our message, not run into a traceback."""
    prompt = _wan_prompt()
    prompt["8"]["inputs"]["cfg"] = math.nan
    status, body = server.post("/prompt", {"prompt": prompt})
    if status == 400:
        assert "cfg" in json.dumps(body)
        return
    entry = server.wait(body["prompt_id"])
    assert entry["status"]["status_str"] == "error"
    assert "cfg must be a finite number" in json.dumps(entry["status"]["messages"])


def test_server_still_runs_a_good_prompt_after_the_bad_ones(server):
    entry = server.wait(server.queue(_wan_prompt()))
    assert entry["status"]["status_str"] == "success"
