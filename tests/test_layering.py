"""Layering rules of DESIGN.md: core never imports ComfyUI; the pack imports without ComfyUI."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "nodes", "execution",
             "latent_preview", "node_helpers"}


def _imported_roots(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0], 0
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, (node.module or "").split(".")[0], node.level


def test_core_never_imports_comfyui():
    offenders = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        for lineno, root, level in _imported_roots(path):
            if level == 0 and root in FORBIDDEN:
                offenders.append(f"{path.relative_to(ROOT)}:{lineno} imports {root}")
            # A relative import climbing out of core (level > depth) would reach nodes/.
            depth = len(path.relative_to(ROOT / "core").parts)
            if level >= depth + 1:
                offenders.append(f"{path.relative_to(ROOT)}:{lineno} imports outside core")
    assert not offenders, "core/ must stay free of ComfyUI:\n" + "\n".join(offenders)


def test_scanner_catches_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom comfy.model_management import get_torch_device\n")
    assert [r for _, r, _ in _imported_roots(bad) if r in FORBIDDEN] == ["comfy"]


def test_pack_imports_without_comfyui_and_stays_light(tmp_path):
    # A fresh interpreter: the pack must import with no ComfyUI and without importing the core's
    # model code (nothing heavy at import time). It starts in an empty folder: `python -c` puts
    # its working folder on sys.path, where a neighbour named `comfy` (a ComfyUI checkout next to
    # the pack's clone) would be imported as a namespace package.
    code = (
        "import sys, importlib.util;"
        f"spec = importlib.util.spec_from_file_location('somepack', r'{ROOT / '__init__.py'}',"
        f" submodule_search_locations=[r'{ROOT}']);"
        "m = importlib.util.module_from_spec(spec); sys.modules['somepack'] = m;"
        "spec.loader.exec_module(m);"
        "assert isinstance(m.NODE_CLASS_MAPPINGS, dict);"
        "assert m.WEB_DIRECTORY == './web';"
        "assert 'comfy' not in sys.modules;"
        "heavy = [k for k in sys.modules if k.startswith('somepack.core.dit') or k.startswith('somepack.core.vae')];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_core_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "core", "--help"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0 and "python -m core" in out.stdout


def test_root_init_imports_as_a_plain_module():
    """pytest imports the root __init__.py as a plain module, not a package, when the checkout's
    folder name is not a Python identifier (a clone into "ComfyUI-FlowDiT"); that must not fail."""
    import importlib.util

    # Named "__init__" itself, the file is a plain module (importlib's is_package rule), which is
    # what pytest's import of a non-identifier folder amounts to.
    spec = importlib.util.spec_from_file_location("__init__", ROOT / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.WEB_DIRECTORY == "./web" and not hasattr(module, "NODE_CLASS_MAPPINGS")
