"""Writes the shipped workflows (workflows/*.json): each graph once, as the UI-format file for
dragging into the editor and the API-format twin for POST /prompt. Run from the repository root:

    python tests/tools/build_workflows.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from workflow_graph import NATIVE_SPECS, VIRTUAL_NODES, spec_from_class  # noqa: E402

WAN_NEGATIVE = ("static, blurry, low quality, worst quality, jpeg artifacts, deformed, distorted, "
                "extra limbs, watermark, subtitles, still picture, overexposed")
UMT5 = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"


# Room for what a node draws besides its widgets: the Note's text, the scheduler's sigma curve.
EXTRA_HEIGHT = {"Note": 220, "FlowDiTScheduler": 110}


def node(nid, type_, widgets=None, links=None, title=None):
    return {"id": nid, "type": type_, "widgets": widgets or {}, "links": links or {}, "title": title}


def text_nodes(first_id, clip_id, positive, negative=WAN_NEGATIVE):
    return [node(first_id, "CLIPTextEncode", {"text": positive}, {"clip": (clip_id, 0)}, "Positive prompt"),
            node(first_id + 1, "CLIPTextEncode", {"text": negative}, {"clip": (clip_id, 0)}, "Negative prompt")]


def wan_common(dit_file, vae_file, positive, steps, shift, cfg, fps, solver="unipc"):
    """Loader, text, scheduler, decode and save nodes shared by the Wan workflows (ids 1-9)."""
    return [
        node(1, "FlowDiTLoader", {"model_name": dit_file, "weight_dtype": "default", "attention": "sdpa",
                                  "compile": False}),
        node(2, "FlowDiTVAELoader", {"vae_name": vae_file}),
        node(3, "CLIPLoader", {"clip_name": UMT5, "type": "wan", "device": "default"}),
        *text_nodes(4, 3, positive),
        node(6, "FlowDiTScheduler", {"steps": steps, "shift": shift, "denoise": 1.0}),
        node(8, "FlowDiTSampler", {"solver": solver, "cfg": cfg, "seed": 42, "cfg_until": 0.0},
             {"model": (1, 0), "positive": (4, 0), "negative": (5, 0), "latent": (7, 0), "sigmas": (6, 0)}),
        node(9, "FlowDiTVAEDecode", {"tiling": "off", "tile_size": 256, "tile_overlap": 64},
             {"vae": (2, 0), "latent": (8, 0)}),
        node(10, "FlowDiTSaveVideo", {"fps": fps, "filename_prefix": "FlowDiT/video", "format": "mp4"},
             {"images": (9, 0)}),
    ]


def note(nid, text):
    return node(nid, "Note", {"text": text}, title="Model files")


DEFAULT_PROMPT = "a yellow square moving up on a gray background"

# Wan2.2 A14B: two experts (ComfyUI's template file names) and their 4-step distill LoRAs.
A14B = {
    "i2v": ("wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
            "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors",
            "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors"),
    "t2v": ("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
            "wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors",
            "wan2.2_t2v_lightx2v_4steps_lora_v1.1_low_noise.safetensors"),
}
WAN21_VAE = "wan_2.1_vae.safetensors"


def a14b(kind, positive, *, steps, shift, cfg, solver, switch, size, lora, cfg_high=0.0, cfg_low=0.0,
         end_image=False, intro=""):
    """A Wan2.2 A14B graph: two loaders (-> two LoRAs) -> Experts -> the one sampler.

    Ids: 1/13 loaders, 14/15 LoRAs, 16 experts, 2 VAE, 3-5 text, 6 scheduler, 7 latent or I2V
    conditioning, 8 sampler, 9 decode, 10 save, 11 note, 12/17 start/end image."""
    high, low, lora_high, lora_low = A14B[kind]
    width, height, length = size
    mode, value = switch
    nodes = [
        node(1, "FlowDiTLoader", {"model_name": high, "weight_dtype": "default", "attention": "sdpa",
                                  "compile": False},
             title="High-noise expert"),
        node(13, "FlowDiTLoader", {"model_name": low, "weight_dtype": "default", "attention": "sdpa",
                                  "compile": False},
             title="Low-noise expert"),
        node(2, "FlowDiTVAELoader", {"vae_name": WAN21_VAE}),
        node(3, "CLIPLoader", {"clip_name": UMT5, "type": "wan", "device": "default"}),
        *text_nodes(4, 3, positive),
        node(6, "FlowDiTScheduler", {"steps": steps, "shift": shift, "denoise": 1.0}),
        node(9, "FlowDiTVAEDecode", {"tiling": "off", "tile_size": 256, "tile_overlap": 64},
             {"vae": (2, 0), "latent": (8, 0)}),
        node(10, "FlowDiTSaveVideo", {"fps": 16.0, "filename_prefix": "FlowDiT/video", "format": "mp4"},
             {"images": (9, 0)}),
    ]
    experts = {"high_noise_model": (1, 0), "low_noise_model": (13, 0)}
    if lora:
        nodes += [node(14, "FlowDiTLoraLoader", {"lora_name": lora_high, "strength": 1.0}, {"model": (1, 0)},
                       title="4-step LoRA (high noise)"),
                  node(15, "FlowDiTLoraLoader", {"lora_name": lora_low, "strength": 1.0}, {"model": (13, 0)},
                       title="4-step LoRA (low noise)")]
        experts = {"high_noise_model": (14, 0), "low_noise_model": (15, 0)}
    nodes.append(node(16, "FlowDiTExpertPair",
                      {"switch": mode, "boundary": value if mode == "boundary" else 0.0,
                       "switch_step": value if mode == "step" else 2, "cfg_high": cfg_high, "cfg_low": cfg_low},
                      experts))
    sizes = {"width": width, "height": height, "length": length, "batch_size": 1}
    if kind == "t2v":
        nodes.append(node(7, "FlowDiTEmptyVideoLatent", sizes, {"vae": (2, 0)}))
        sampler_links = {"positive": (4, 0), "negative": (5, 0), "latent": (7, 0)}
    else:
        images = {"start_image": (12, 0)}
        nodes.append(node(12, "LoadImage", {"image": "example.png"}, title="Start image"))
        if end_image:
            nodes.append(node(17, "LoadImage", {"image": "example_end.png"}, title="End image"))
            images["end_image"] = (17, 0)
        nodes.append(node(7, "FlowDiTI2VConditioning", sizes,
                          {"positive": (4, 0), "negative": (5, 0), "vae": (2, 0), **images}))
        sampler_links = {"positive": (7, 0), "negative": (7, 1), "latent": (7, 2)}
    nodes.append(node(8, "FlowDiTSampler", {"solver": solver, "cfg": cfg, "seed": 42, "cfg_until": 0.0},
                      {"model": (16, 0), "sigmas": (6, 0), **sampler_links}))
    files = [f"- ComfyUI/models/diffusion_models/{high}", f"- ComfyUI/models/diffusion_models/{low}"]
    if lora:
        files += [f"- ComfyUI/models/loras/{lora_high}", f"- ComfyUI/models/loras/{lora_low}"]
    files += [f"- ComfyUI/models/vae/{WAN21_VAE}", f"- ComfyUI/models/text_encoders/{UMT5}"]
    if kind == "i2v":
        files.append("- your start and end images in ComfyUI/input (pick them in the two Load Image nodes)"
                     if end_image else "- your start image in ComfyUI/input (pick it in Load Image)")
    switch_text = (f"the low-noise expert takes over after step {value} of {steps}" if mode == "step" else
                   "the low-noise expert takes over below the official noise level (boundary 0 = "
                   f"{'0.900 for I2V' if kind == 'i2v' else '0.875 for T2V'})")
    nodes.append(note(11, f"{intro}\n\nOne sampler runs both experts: {switch_text}; only one expert is "
                          "in memory at a time.\n\nPut the files here:\n" + "\n".join(files) +
                          f"\n\nSizes: multiples of 16; length 4n+1; 16 fps."))
    return nodes


WORKFLOWS = {
    "flowdit_default_text_to_video": [
        node(1, "FlowDiTLoader", {"model_name": "flowdit_shapes_dit.safetensors", "weight_dtype": "default",
                                  "attention": "sdpa", "compile": False}),
        node(2, "FlowDiTVAELoader", {"vae_name": "flowdit_shapes_vae.safetensors"}),
        node(3, "FlowDiTTextEncoderLoader", {"text_encoder_name": "flowdit_shapes_text.safetensors"}),
        node(4, "FlowDiTTextEncode", {"text": DEFAULT_PROMPT}, {"text_encoder": (3, 0)}, "Positive prompt"),
        node(5, "FlowDiTTextEncode", {"text": ""}, {"text_encoder": (3, 0)}, "Negative prompt (empty)"),
        node(6, "FlowDiTScheduler", {"steps": 20, "shift": 2.0, "denoise": 1.0}),
        node(7, "FlowDiTEmptyVideoLatent", {"width": 64, "height": 64, "length": 17, "batch_size": 1},
             {"vae": (2, 0)}),
        node(8, "FlowDiTSampler", {"solver": "unipc", "cfg": 5.0, "seed": 0, "cfg_until": 0.7},
             {"model": (1, 0), "positive": (4, 0), "negative": (5, 0), "latent": (7, 0), "sigmas": (6, 0)}),
        node(9, "FlowDiTVAEDecode", {"tiling": "off", "tile_size": 256, "tile_overlap": 64},
             {"vae": (2, 0), "latent": (8, 0)}),
        node(10, "FlowDiTSaveVideo", {"fps": 16.0, "filename_prefix": "FlowDiT/shapes", "format": "mp4"},
             {"images": (9, 0)}),
        note(11, "FlowDiT's own small default model: runs offline on a CPU in seconds, no download.\n\n"
                 "Its three files ship inside the pack (core/default_model/) and appear in the loaders "
                 "next to your own models. It draws one shape (circle, square, triangle) of one colour "
                 "moving left/right/up/down on a plain background, 64x64, 17 frames. Prompts look like: "
                 f"'{DEFAULT_PROMPT}'."),
    ],
    "wan2.2_ti2v_5b_text_to_video": [
        *wan_common("wan2.2_ti2v_5B_fp16.safetensors", "wan2.2_vae.safetensors",
                    "a red fox running through fresh snow in a pine forest, morning light, cinematic",
                    steps=30, shift=5.0, cfg=5.0, fps=24.0),
        node(7, "FlowDiTEmptyVideoLatent", {"width": 1280, "height": 704, "length": 121, "batch_size": 1},
             {"vae": (2, 0)}),
        note(11, "Wan2.2 TI2V-5B text-to-video.\n\nPut the files here:\n"
                 "- ComfyUI/models/diffusion_models/wan2.2_ti2v_5B_fp16.safetensors\n"
                 "- ComfyUI/models/vae/wan2.2_vae.safetensors\n"
                 f"- ComfyUI/models/text_encoders/{UMT5}\n\n"
                 "Sizes must be multiples of 32 (VAE x16, patch 2); length 4n+1; 24 fps."),
    ],
    "wan2.2_ti2v_5b_image_to_video": [
        *wan_common("wan2.2_ti2v_5B_fp16.safetensors", "wan2.2_vae.safetensors",
                    "the scene comes alive, gentle camera push-in, natural motion",
                    steps=30, shift=5.0, cfg=5.0, fps=24.0),
        node(12, "LoadImage", {"image": "example.png"}, title="Start image"),
        node(7, "FlowDiTTI2VFirstFrame", {"width": 1280, "height": 704, "length": 121, "batch_size": 1},
             {"vae": (2, 0), "start_image": (12, 0)}),
        note(11, "Wan2.2 TI2V-5B image-to-video: the start image becomes the first frame, kept clean "
                 "while the rest is generated.\n\nPut the files here:\n"
                 "- ComfyUI/models/diffusion_models/wan2.2_ti2v_5B_fp16.safetensors\n"
                 "- ComfyUI/models/vae/wan2.2_vae.safetensors\n"
                 f"- ComfyUI/models/text_encoders/{UMT5}\n"
                 "- your start image in ComfyUI/input (pick it in Load Image)"),
    ],
    "wan2.1_t2v_1.3b_text_to_video": [
        *wan_common("wan2.1_t2v_1.3B_fp16.safetensors", "wan_2.1_vae.safetensors",
                    "a small sailboat on a calm blue lake at sunset, gentle waves",
                    steps=30, shift=5.0, cfg=5.0, fps=16.0),
        node(7, "FlowDiTEmptyVideoLatent", {"width": 832, "height": 480, "length": 81, "batch_size": 1},
             {"vae": (2, 0)}),
        note(11, "Wan2.1 T2V-1.3B text-to-video (480p).\n\nPut the files here:\n"
                 "- ComfyUI/models/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors\n"
                 "- ComfyUI/models/vae/wan_2.1_vae.safetensors\n"
                 f"- ComfyUI/models/text_encoders/{UMT5}\n\n"
                 "Sizes must be multiples of 16; length 4n+1; 16 fps."),
    ],
    "wan2.1_t2v_1.3b_video_to_video": [
        *[n for n in wan_common("wan2.1_t2v_1.3B_fp16.safetensors", "wan_2.1_vae.safetensors",
                                "the same scene as a watercolor painting, soft brush strokes",
                                steps=30, shift=5.0, cfg=5.0, fps=16.0) if n["id"] != 6],
        node(6, "FlowDiTScheduler", {"steps": 30, "shift": 5.0, "denoise": 0.7}),
        node(12, "FlowDiTLoadVideo", {"video": "input.mp4", "width": 832, "height": 480, "length": 81},
             title="Source video"),
        node(7, "FlowDiTVAEEncode", {"tiling": "off", "tile_size": 256, "tile_overlap": 64},
             {"vae": (2, 0), "images": (12, 0)}),
        note(11, "Wan2.1 T2V-1.3B video-to-video: the source video is encoded, noised to `denoise` "
                 "(0.7 keeps the layout and motion, 1.0 ignores the source) and re-generated.\n\n"
                 "Put the files here:\n"
                 "- ComfyUI/models/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors\n"
                 "- ComfyUI/models/vae/wan_2.1_vae.safetensors\n"
                 f"- ComfyUI/models/text_encoders/{UMT5}\n"
                 "- the source video in ComfyUI/input (pick it in Load Video)"),
    ],
    "wan2.2_a14b_image_to_video_4step": a14b(
        "i2v", "the scene comes alive, gentle camera push-in, natural motion", steps=4, shift=5.0, cfg=1.0,
        solver="euler", switch=("step", 2), size=(640, 640, 81), lora=True,
        intro="Wan2.2 I2V-A14B image-to-video in 4 steps with the LightX2V distill LoRAs (one per expert): "
              "euler, shift 5, cfg 1, two steps on each expert, as ComfyUI's Wan2.2 14B image-to-video "
              "template."),
    "wan2.2_a14b_image_to_video": a14b(
        "i2v", "the scene comes alive, gentle camera push-in, natural motion", steps=20, shift=5.0, cfg=3.5,
        solver="unipc", switch=("boundary", 0.0), size=(832, 480, 81), lora=False,
        intro="Wan2.2 I2V-A14B image-to-video without LoRAs: 20 steps, cfg 3.5, shift 5, UniPC (its "
              "history carries across the expert switch)."),
    "wan2.2_a14b_text_to_video_4step": a14b(
        "t2v", "a red fox running through fresh snow in a pine forest, morning light, cinematic", steps=4,
        shift=5.0, cfg=1.0, solver="euler", switch=("step", 2), size=(832, 480, 81), lora=True,
        intro="Wan2.2 T2V-A14B text-to-video in 4 steps with the LightX2V distill LoRAs: euler, shift 5, "
              "cfg 1, two steps on each expert."),
    "wan2.2_a14b_text_to_video": a14b(
        "t2v", "a red fox running through fresh snow in a pine forest, morning light, cinematic", steps=40,
        shift=12.0, cfg=4.0, solver="unipc", switch=("boundary", 0.0), size=(832, 480, 81), lora=False,
        cfg_high=4.0, cfg_low=3.0,
        intro="Wan2.2 T2V-A14B text-to-video, the official recipe: 40 steps, shift 12, boundary 0.875, "
              "cfg 4.0 on the high-noise expert and 3.0 on the low-noise one, UniPC. For speed use "
              "wan2.2_a14b_text_to_video_4step."),
    "wan2.2_a14b_first_last_frame": a14b(
        "i2v", "a smooth natural transition from the first image to the last", steps=20, shift=5.0, cfg=3.5,
        solver="euler", switch=("step", 10), size=(640, 640, 81), lora=False, end_image=True,
        intro="Wan2.2 I2V-A14B first-last-frame: the start image becomes the first frame and the end image "
              "the last (I2V / First-Last-Frame Conditioning with its end_image input). 20 steps, cfg "
              "3.5, shift 5, euler, ten steps on each expert."),
}


def specs():
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import import_pack

    pack = import_pack()
    out = dict(NATIVE_SPECS)
    out.update({name: spec_from_class(cls) for name, cls in pack.NODE_CLASS_MAPPINGS.items()})
    return out


def _depths(nodes):
    by_id = {n["id"]: n for n in nodes}
    depth = {}

    def d(nid):
        if nid not in depth:
            srcs = [src for src, _ in by_id[nid]["links"].values()]
            depth[nid] = 1 + max((d(s) for s in srcs), default=-1)
        return depth[nid]

    for n in nodes:
        d(n["id"])
    return depth


def to_ui(nodes, spec_of):
    depth = _depths(nodes)
    column_fill = {}
    links, ui_nodes, link_id = [], [], 0
    out_links = {}  # (src, slot) -> [link ids]
    in_link = {}    # (dst, name) -> link id
    for n in sorted(nodes, key=lambda n: n["id"]):
        for name, (src, slot) in n["links"].items():
            link_id += 1
            spec = spec_of[nodes_by_id(nodes)[src]["type"]]
            links.append([link_id, src, slot, n["id"], _socket_index(spec_of[n["type"]], name),
                          spec.outputs[slot][1]])
            out_links.setdefault((src, slot), []).append(link_id)
            in_link[(n["id"], name)] = link_id
    order = sorted(nodes, key=lambda n: (depth[n["id"]], n["id"]))
    for index, n in enumerate(order):
        spec = spec_of[n["type"]]
        col = depth[n["id"]] if n["type"] not in VIRTUAL_NODES else 0
        row = column_fill.get(col, 0)
        height = 60 + 26 * (len(spec.widgets) + len(spec.sockets)) + EXTRA_HEIGHT.get(n["type"], 0)
        column_fill[col] = row + height + 40
        values = []
        for w in spec.widgets:
            values.append(n["widgets"][w])
            if w in spec.control_after:
                values.append("fixed")
        if n["type"] == "LoadImage":
            values.append("image")
        entry = {
            "id": n["id"], "type": n["type"], "pos": [40 + 360 * col, 40 + row],
            "size": [320 if n["type"] != "Note" else 400, height], "flags": {}, "order": index, "mode": 0,
            "inputs": [{"name": name, "type": typ, "link": in_link.get((n["id"], name))}
                       for name, typ in spec.sockets],
            "outputs": [{"name": name, "type": typ, "links": out_links.get((n["id"], i), []),
                         "slot_index": i} for i, (name, typ) in enumerate(spec.outputs)],
            "properties": {"Node name for S&R": n["type"]},
            "widgets_values": values,
        }
        if n["title"]:
            entry["title"] = n["title"]
        ui_nodes.append(entry)
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": link_id,
            "nodes": ui_nodes, "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.75, "offset": [40, 60]}}, "version": 0.4}


def to_api(nodes):
    prompt = {}
    for n in sorted(nodes, key=lambda n: n["id"]):
        if n["type"] in VIRTUAL_NODES:
            continue
        inputs = dict(n["widgets"])
        inputs.update({name: [str(src), slot] for name, (src, slot) in n["links"].items()})
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs,
                                "_meta": {"title": n["title"] or n["type"]}}
    return prompt


def nodes_by_id(nodes):
    return {n["id"]: n for n in nodes}


def _socket_index(spec, name):
    return [s for s, _ in spec.sockets].index(name)


def main():
    spec_of = specs()
    out_dir = ROOT / "workflows"
    out_dir.mkdir(exist_ok=True)
    for name, nodes in WORKFLOWS.items():
        (out_dir / f"{name}.json").write_text(json.dumps(to_ui(nodes, spec_of), indent=1) + "\n")
        (out_dir / "api").mkdir(exist_ok=True)
        (out_dir / "api" / f"{name}.json").write_text(json.dumps(to_api(nodes), indent=1) + "\n")
        print("wrote", name)


if __name__ == "__main__":
    main()
