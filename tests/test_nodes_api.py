"""The node classes follow ComfyUI's classic dict API: well-formed INPUT_TYPES, tooltips, and
VALIDATE_INPUTS that name exactly the inputs they check and reject the bad cases."""
import inspect

import pytest

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def _nodes(pack):
    return sorted(pack.NODE_CLASS_MAPPINGS.items())


def test_every_node_is_registered_with_a_display_name(pack):
    assert len(pack.NODE_CLASS_MAPPINGS) >= 11
    for name in pack.NODE_CLASS_MAPPINGS:
        assert name.startswith("FlowDiT"), name
        assert pack.NODE_DISPLAY_NAME_MAPPINGS.get(name), name


def test_input_types_are_well_formed(pack):
    for name, cls in _nodes(pack):
        types = cls.INPUT_TYPES()
        assert set(types) <= {"required", "optional", "hidden"}, name
        for section in ("required", "optional"):
            for inp, entry in types.get(section, {}).items():
                assert isinstance(entry, tuple) and 1 <= len(entry) <= 2, (name, inp)
                kind = entry[0]
                opts = entry[1] if len(entry) == 2 else {}
                assert isinstance(kind, (list, str)), (name, inp)
                assert opts.get("tooltip"), f"{name}.{inp} has no tooltip"
                if kind in ("INT", "FLOAT"):
                    assert opts["min"] <= opts["default"] <= opts["max"], (name, inp)
                if isinstance(kind, list) and "default" in opts:
                    assert opts["default"] in kind, (name, inp)
        fn = getattr(cls, cls.FUNCTION)
        params = inspect.signature(fn).parameters
        every = {**types.get("required", {}), **types.get("optional", {})}
        assert set(every) <= set(params), f"{name}.{cls.FUNCTION} does not take {set(every) - set(params)}"
        assert isinstance(cls.RETURN_TYPES, tuple) and cls.CATEGORY.startswith("FlowDiT")
        assert cls.DESCRIPTION


def test_validate_inputs_names_exactly_what_it_checks(pack):
    for name, cls in _nodes(pack):
        if not hasattr(cls, "VALIDATE_INPUTS"):
            continue
        params = inspect.signature(cls.VALIDATE_INPUTS).parameters
        assert not any(p.kind == p.VAR_KEYWORD for p in params.values()), (
            f"{name}.VALIDATE_INPUTS takes **kwargs, which switches off ComfyUI's own checks")
        every = {**cls.INPUT_TYPES()["required"], **cls.INPUT_TYPES().get("optional", {})}
        assert set(params) <= set(every), name
        assert all(p.default is None for p in params.values()), f"{name}: linked inputs arrive unset"


@pytest.mark.parametrize("node", ["FlowDiTEmptyVideoLatent", "FlowDiTTI2VFirstFrame",
                                  "FlowDiTI2VConditioning", "FlowDiTLoadVideo"])
def test_validation_rejects_impossible_sizes(pack, node):
    cls = pack.NODE_CLASS_MAPPINGS[node]
    assert cls.VALIDATE_INPUTS(width=832, height=480, length=81) is True
    assert cls.VALIDATE_INPUTS() is True  # linked inputs: nothing to check yet
    bad_length = cls.VALIDATE_INPUTS(width=832, height=480, length=80)
    assert isinstance(bad_length, str) and "4n+1" in bad_length and "77" in bad_length and "81" in bad_length
    bad_width = cls.VALIDATE_INPUTS(width=830, height=480, length=81)
    assert isinstance(bad_width, str) and "width" in bad_width and "816" in bad_width
    # Named inputs skip ComfyUI's own min/max checks, so the ranges are checked too.
    assert isinstance(cls.VALIDATE_INPUTS(width=832, height=0, length=81), str)
    assert isinstance(cls.VALIDATE_INPUTS(width=832, height=480, length=-3), str)


@pytest.mark.parametrize("node,arg", [("FlowDiTLoader", "model_name"), ("FlowDiTVAELoader", "vae_name")])
def test_loaders_refuse_paths_outside_the_model_folder(pack, node, arg):
    cls = pack.NODE_CLASS_MAPPINGS[node]
    for bad in ("../../etc/passwd", "/etc/passwd", "sub/../../x.safetensors"):
        reason = cls.VALIDATE_INPUTS(**{arg: bad})
        assert isinstance(reason, str) and "model folder" in reason, bad
    missing = cls.VALIDATE_INPUTS(**{arg: "sub/model.safetensors"})
    assert isinstance(missing, str) and "not in" in missing


def test_loader_offers_only_installed_attention_backends(pack):
    import importlib.util

    choices = pack.NODE_CLASS_MAPPINGS["FlowDiTLoader"].INPUT_TYPES()["required"]["attention"][0]
    assert choices[0] == "sdpa"
    for optional in ("flash_attn", "sageattention"):
        assert (optional in choices) == (importlib.util.find_spec(optional) is not None)
