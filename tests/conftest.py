"""Shared fixtures. The repository root is on sys.path (pyproject's pythonpath), so `import core`
works; the node pack itself is imported as a package by `pack`, as ComfyUI does."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "flowdit_pack_under_test"


def import_pack():
    """Import the repository as a package (as ComfyUI does with a custom_nodes folder)."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


def use_models_dir(pack, root: Path, monkeypatch) -> None:
    """Run the pack's nodes on the plain-torch host with their model files under `root/<folder>/`
    (FLOWDIT_MODELS_DIR), also when an earlier test of the session imported the pack with ComfyUI
    in the process (COMFYUI_PATH runs): the tests that use this are about the nodes themselves,
    and the ones about ComfyUI's host set it up explicitly."""
    monkeypatch.setenv("FLOWDIT_MODELS_DIR", str(root))
    monkeypatch.setattr(pack.nodes.host, "HAVE_COMFY", False)


@pytest.fixture(scope="session")
def pack():
    return import_pack()


@pytest.fixture(scope="session")
def comfyui_path():
    """Path of a real ComfyUI checkout, or skip (CI has none)."""
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        pytest.skip("COMFYUI_PATH is not set: no real ComfyUI to compare against")
    if not (Path(path) / "comfy").is_dir():
        pytest.skip(f"COMFYUI_PATH={path} does not look like a ComfyUI checkout")
    return Path(path)


@pytest.fixture(scope="session")
def comfy(comfyui_path):
    """ComfyUI's modules imported in-process for CPU and plain SDPA (so both sides run the same
    attention math): returns importlib.import_module. Skips where ComfyUI does not import (run
    these tests with that ComfyUI's Python)."""
    import importlib

    if str(comfyui_path) not in sys.path:
        # Appended, so the pack's own top-level names (core, nodes) keep precedence.
        sys.path.append(str(comfyui_path))
    try:
        cli_args = importlib.import_module("comfy.cli_args")
    except ImportError as err:
        pytest.skip(f"ComfyUI at {comfyui_path} does not import here ({err}); use its Python")
    # Must be set before comfy.model_management is imported.
    cli_args.args.cpu = True
    cli_args.args.use_pytorch_cross_attention = True
    importlib.import_module("comfy.model_management")
    return importlib.import_module


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
