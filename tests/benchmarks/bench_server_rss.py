"""The ComfyUI server's memory over many prompts of the default workflow, queued back to back.

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy/python tests/benchmarks/bench_server_rss.py [--prompts 20]

Starts a throw-away ComfyUI server (tests/comfy_server.py), queues the default workflow (64x64,
17 frames, a new seed each time so nothing is served from ComfyUI's cache) and prints the server's
resident memory after every prompt, and the growth from prompt 2 to the last (issue 14 asks for
within 5%; the test in test_fault_catalogue_server.py checks a generous bound).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    comfy = os.environ.get("COMFYUI_PATH")
    if not comfy:
        print("set COMFYUI_PATH to a ComfyUI checkout", file=sys.stderr)
        return 2
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from comfy_server import ComfyServer, cleanup
    from test_fault_catalogue_server import default_prompt, rss_bytes

    base = Path(tempfile.mkdtemp(prefix="flowdit_rss_"))
    server = ComfyServer(Path(comfy), base)
    try:
        print(f"server pid {server.proc.pid}, RSS at start {rss_bytes(server.proc.pid) / 2 ** 20:.0f} MiB")
        print("prompt  seconds  RSS MiB")
        series = []
        for i in range(args.prompts):
            t0 = time.perf_counter()
            entry = server.wait(server.queue(default_prompt(5000 + i, f"bench/rss{i:03d}", args.steps)))
            status = entry["status"]["status_str"]
            series.append(rss_bytes(server.proc.pid))
            print(f"{i + 1:6d}  {time.perf_counter() - t0:7.2f}  {series[-1] / 2 ** 20:7.0f}  {status}")
        if len(series) >= 2:
            growth = (series[-1] - series[1]) / series[1]
            print(f"growth from prompt 2 to prompt {len(series)}: {100 * growth:+.1f}% "
                  f"({(series[-1] - series[1]) / 2 ** 20:+.0f} MiB)")
    finally:
        server.close()
        cleanup(base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
