"""Every shipped workflow loads: registered node types, the right number of widget values, links
that connect existing slots of matching types, and an API twin with the same graph."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "tools"))
from workflow_graph import NATIVE_SPECS, VIRTUAL_NODES, spec_from_class, ui_widget_count  # noqa: E402

UI_FILES = sorted((ROOT / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def spec_of(pack):
    out = dict(NATIVE_SPECS)
    out.update({name: spec_from_class(cls) for name, cls in pack.NODE_CLASS_MAPPINGS.items()})
    return out


def test_workflows_are_shipped():
    names = {p.stem for p in UI_FILES}
    assert {"flowdit_default_text_to_video", "wan2.2_ti2v_5b_text_to_video", "wan2.2_ti2v_5b_image_to_video",
            "wan2.1_t2v_1.3b_text_to_video", "wan2.1_t2v_1.3b_video_to_video",
            "wan2.2_a14b_image_to_video_4step", "wan2.2_a14b_image_to_video",
            "wan2.2_a14b_text_to_video_4step", "wan2.2_a14b_text_to_video",
            "wan2.2_a14b_first_last_frame"} <= names
    for p in UI_FILES:
        assert (ROOT / "workflows" / "api" / p.name).is_file(), f"{p.name} has no API twin"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflow_is_consistent(path, spec_of):
    wf = json.loads(path.read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]), "duplicate node ids"
    assert wf["last_node_id"] >= max(nodes)
    assert any(n["type"] == "Note" for n in nodes.values()), "a Note must say which files go where"
    for n in nodes.values():
        assert n["type"] in spec_of, f"node {n['id']}: unknown type {n['type']}"
        spec = spec_of[n["type"]]
        assert len(n["widgets_values"]) == ui_widget_count(spec), (
            f"node {n['id']} ({n['type']}): {len(n['widgets_values'])} widget values, expected "
            f"{ui_widget_count(spec)}")
        assert [i["name"] for i in n["inputs"]] == [s for s, _ in spec.sockets]
        for i, (name, typ) in zip(n["inputs"], spec.sockets):
            if name in spec.required:  # optional sockets (e.g. an end image) may stay open
                assert i["link"] is not None, f"node {n['id']} input {name} is not connected"
    link_ids = set()
    for link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        link_ids.add(link_id)
        assert src in nodes and dst in nodes, f"link {link_id} joins missing nodes"
        out_name, out_type = spec_of[nodes[src]["type"]].outputs[src_slot]
        in_name, in_type = spec_of[nodes[dst]["type"]].sockets[dst_slot]
        assert out_type == in_type == typ, f"link {link_id}: {out_type} -> {in_type} ({typ})"
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
    assert len(link_ids) == len(wf["links"]) and wf["last_link_id"] >= max(link_ids)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_api_twin_matches_ui(path, spec_of):
    ui = json.loads(path.read_text())
    api = json.loads((ROOT / "workflows" / "api" / path.name).read_text())
    real = {n["id"]: n for n in ui["nodes"] if n["type"] not in VIRTUAL_NODES}
    assert set(api) == {str(i) for i in real}
    links = {lid: (src, slot) for lid, src, slot, *_ in ui["links"]}
    for nid, entry in api.items():
        n = real[int(nid)]
        assert entry["class_type"] == n["type"]
        spec = spec_of[n["type"]]
        missing = [name for name in spec.required if name not in entry["inputs"]]
        assert not missing, f"API node {nid} lacks required inputs {missing}"
        for socket in n["inputs"]:
            if socket["link"] is None:  # an open optional socket
                assert socket["name"] not in entry["inputs"]
                continue
            src, slot = links[socket["link"]]
            assert entry["inputs"][socket["name"]] == [str(src), slot]
        widget_values = [v for v in n["widgets_values"] if v not in ("fixed", "image")]
        api_values = [entry["inputs"][w] for w in spec.widgets]
        assert api_values == widget_values[:len(api_values)]


# Official shifts that are not Wan's usual 5: Wan2.2 T2V-A14B samples with shift 12.
OFFICIAL_SHIFT = {"wan2.2_a14b_text_to_video": 12.0}


def test_scheduler_shift_matches_wan_default():
    # Wan's reference samples with shift 5 (t2v, ti2v, i2v-a14b); the shipped Wan workflows follow it.
    for path in UI_FILES:
        if not path.stem.startswith("wan"):
            continue
        wf = json.loads(path.read_text())
        for n in wf["nodes"]:
            if n["type"] == "FlowDiTScheduler":
                assert n["widgets_values"][1] == OFFICIAL_SHIFT.get(path.stem, 5.0), path.stem


A14B_WORKFLOWS = {
    # name: (steps, solver, sampler cfg, switch, switch value, LoRAs, end image)
    "wan2.2_a14b_image_to_video_4step": (4, "euler", 1.0, "step", 2, True, False),
    "wan2.2_a14b_image_to_video": (20, "unipc", 3.5, "boundary", 0.0, False, False),
    "wan2.2_a14b_text_to_video_4step": (4, "euler", 1.0, "step", 2, True, False),
    "wan2.2_a14b_text_to_video": (40, "unipc", 4.0, "boundary", 0.0, False, False),
    "wan2.2_a14b_first_last_frame": (20, "euler", 3.5, "step", 10, False, True),
}


@pytest.mark.parametrize("name", sorted(A14B_WORKFLOWS))
def test_a14b_workflows_wire_two_experts_into_one_sampler(name):
    steps, solver, cfg, switch, value, lora, end = A14B_WORKFLOWS[name]
    api = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
    by_type = {}
    for nid, entry in api.items():
        by_type.setdefault(entry["class_type"], []).append((nid, entry))
    assert len(by_type["FlowDiTSampler"]) == 1 and len(by_type["FlowDiTExpertPair"]) == 1
    (sampler_id, sampler), = by_type["FlowDiTSampler"]
    (pair_id, pair), = by_type["FlowDiTExpertPair"]
    assert sampler["inputs"]["model"] == [pair_id, 0]
    assert (sampler["inputs"]["solver"], sampler["inputs"]["cfg"]) == (solver, cfg)
    assert pair["inputs"]["switch"] == switch
    assert pair["inputs"]["switch_step" if switch == "step" else "boundary"] == value
    (_, sched), = by_type["FlowDiTScheduler"]
    assert sched["inputs"]["steps"] == steps
    kind = "i2v" if "image" in name or "frame" in name else "t2v"
    files = []
    for side in ("high", "low"):
        src = pair["inputs"][f"{side}_noise_model"][0]
        if lora:
            assert api[src]["class_type"] == "FlowDiTLoraLoader"
            assert api[src]["inputs"]["lora_name"].startswith(f"wan2.2_{kind}_lightx2v_4steps_lora")
            assert api[src]["inputs"]["lora_name"].endswith(f"_{side}_noise.safetensors")
            src = api[src]["inputs"]["model"][0]
        files.append(api[src]["inputs"]["model_name"])
    assert files == [f"wan2.2_{kind}_{side}_noise_14B_fp8_scaled.safetensors" for side in ("high", "low")]
    if kind == "i2v":
        (_, cond), = by_type["FlowDiTI2VConditioning"]
        assert ("end_image" in cond["inputs"]) == end
    note = next(n for n in json.loads((ROOT / "workflows" / f"{name}.json").read_text())["nodes"]
                if n["type"] == "Note")["widgets_values"][0]
    assert all(f in note for f in files) and "wan_2.1_vae.safetensors" in note


def test_default_workflow_samples_at_the_command_lines_default_settings():
    """The default workflow and `python -m core generate` draw with the same settings (the model
    card's tables are measured at them)."""
    from core.default_model import settings

    api = json.loads((ROOT / "workflows" / "api" / "flowdit_default_text_to_video.json").read_text())
    by_type = {entry["class_type"]: entry["inputs"] for entry in api.values()}
    sampler, scheduler = by_type["FlowDiTSampler"], by_type["FlowDiTScheduler"]
    assert (sampler["solver"], sampler["cfg"], sampler["cfg_until"]) == (
        settings.DEFAULT_SOLVER, settings.DEFAULT_CFG, settings.DEFAULT_CFG_UNTIL)
    assert (scheduler["steps"], scheduler["shift"]) == (settings.DEFAULT_STEPS,
                                                        settings.DEFAULT_SHIFT)
    assert by_type["FlowDiTSaveVideo"]["fps"] == settings.FPS
