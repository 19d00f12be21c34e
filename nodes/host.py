"""The one place the pack touches ComfyUI: devices, the memory manager, progress bars, previews,
interrupts and model folders. Without ComfyUI (tests, scripts) every function falls back to plain
torch behaviour, so the nodes run anywhere.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

try:  # ComfyUI present: use its machinery.
    import comfy.model_management as _mm
    import comfy.model_patcher as _patcher
    import comfy.utils as _utils
    import folder_paths as _folder_paths
    HAVE_COMFY = True
except ImportError:  # Plain torch fallback.
    _mm = _patcher = _utils = _folder_paths = None
    HAVE_COMFY = False

# The pack's own shipped weights (the small default model) live in core/default_model/<folder>/.
PACK_MODELS_DIR = Path(__file__).resolve().parent.parent / "core" / "default_model"
# Outside ComfyUI, model folders are looked up under this directory (or the env var).
FALLBACK_MODELS_ENV = "FLOWDIT_MODELS_DIR"
MODEL_SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".ckpt")


# ---------------------------------------------------------------------------------------- devices

def torch_device() -> torch.device:
    if HAVE_COMFY:
        return _mm.get_torch_device()
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def offload_device() -> torch.device:
    return _mm.unet_offload_device() if HAVE_COMFY else torch.device("cpu")


def intermediate_device() -> torch.device:
    """Where tensors passed between nodes live (ComfyUI keeps them on the CPU)."""
    return _mm.intermediate_device() if HAVE_COMFY else torch.device("cpu")


def check_interrupt() -> None:
    """Raise if the user pressed cancel in the UI (ComfyUI's own exception, so the executor
    reports it as an interrupt and stays ready for the next prompt)."""
    if HAVE_COMFY:
        _mm.throw_exception_if_processing_interrupted()


# ------------------------------------------------------------------------------------ memory

class HostedModel:
    """A torch module handed to ComfyUI's memory manager (a ModelPatcher), or kept as is.

    `prepare()` loads the weights onto the compute device through `load_models_gpu`, which frees
    VRAM held by other models first, and lets ComfyUI offload this one later when something else
    needs the memory. The module is never copied: ComfyUI moves the same parameters.
    """

    def __init__(self, module: torch.nn.Module, patcher=None):
        self.module = module
        self.patcher = patcher
        if patcher is None and HAVE_COMFY:
            self.patcher = _patcher.ModelPatcher(module, load_device=torch_device(),
                                                 offload_device=offload_device())

    def with_lora(self, path: Path, strength: float) -> "HostedModel":
        """A model with a LoRA applied at `strength`; this one is left unchanged.

        Inside ComfyUI: ComfyUI's own LoRA patches on a clone of the ModelPatcher (weights are
        patched when loaded and restored after, no copy of the model; fp8_scaled layers take part
        through their convert_weight / set_weight hooks, see core/dit/scaled_fp8.py). Without
        ComfyUI: a copy that shares every base tensor, with run-time adapters attached.
        Either way a LoRA none of whose keys fit this model is an error naming some of its keys,
        and keys that fit nothing are logged.
        """
        from ..core.checkpoint import read_state_dict
        from ..core.train.lora import load_lora, parse_lora

        try:
            lora = read_state_dict(path)
            if self.patcher is None:
                shared = share_parameters(self.module)
                load_lora(shared, lora, strength=strength, mode="runtime")
                return HostedModel(shared)
            _, ignored = parse_lora(lora, self.module)  # our check: nothing matched / what is ignored
        except ValueError as err:
            raise ValueError(f"{path.name}: {err}") from err
        import comfy.lora

        if ignored:
            logging.warning("%s: %d of %d LoRA keys match nothing in this model and are ignored "
                            "(e.g. %s)", path.name, len(ignored), len(lora), ", ".join(ignored[:4]))
        patches = comfy.lora.load_lora(lora, lora_key_map(self.module), log_missing=False)
        if not patches:
            raise ValueError(f"{path.name}: no LoRA weights match this model's layers; is it "
                             f"a LoRA for this model family?")
        clone = self.patcher.clone()
        clone.add_patches(patches, strength)
        return HostedModel(self.module, patcher=clone)

    def prepare(self, memory_required: int = 0) -> torch.device:
        """Make the weights usable on the compute device and return that device."""
        if self.patcher is not None:
            _mm.load_models_gpu([self.patcher], memory_required=memory_required)
            return self.patcher.load_device
        device = torch_device()
        self.module.to(device)
        return device

    @property
    def device(self) -> torch.device:
        """The compute device `prepare()` loads the weights onto."""
        return self.patcher.load_device if self.patcher is not None else torch_device()

    def offload(self) -> None:
        """Take the weights off the compute device now (ComfyUI: unload this model from the memory
        manager, restoring any LoRA-patched weights), e.g. before another expert is loaded."""
        if self.patcher is not None:
            for i, loaded in enumerate(_mm.current_loaded_models):
                if loaded.model is self.patcher:
                    loaded.model_unload()
                    _mm.current_loaded_models.pop(i)
                    break
            return
        self.module.to(offload_device())


def lora_key_map(module: torch.nn.Module) -> dict[str, str]:
    """LoRA key prefixes -> parameter keys, for ComfyUI's `comfy.lora.load_lora`: the layouts
    ComfyUI's own Wan LoRA loader accepts (comfy/lora.py `model_lora_keys_unet`): for a weight,
    `diffusion_model.<module>`, kohya `lora_unet_<module_with_underscores>` and the bare module
    name (low-rank pairs, `.diff` and `.diff_b` for its bias); for any other parameter (e.g. a
    block's `modulation`), its own name with and without `diffusion_model.`."""
    out = {}
    for key in module.state_dict():
        if key.endswith(".weight"):
            name = key[: -len(".weight")]
            for alias in (f"diffusion_model.{name}", f"lora_unet_{name.replace('.', '_')}", name):
                out[alias] = key
        elif not key.endswith((".bias", ".weight_scale", ".input_scale")):
            out[f"diffusion_model.{key}"] = key
            out[key] = key
    return out


def share_parameters(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of `module` whose parameters and buffers are the very same tensors (no weight
    memory is copied): adapters attached to the copy leave the original untouched."""
    import copy

    memo = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    return copy.deepcopy(module, memo)


# ------------------------------------------------------------------------------------ progress

class Progress:
    """A progress bar on the node (ComfyUI) or nothing (fallback)."""

    def __init__(self, total: int):
        self.total = max(int(total), 1)
        self._bar = _utils.ProgressBar(self.total) if HAVE_COMFY else None

    def update(self, done: int, total: int | None = None, preview=None) -> None:
        if total is not None:
            self.total = max(int(total), 1)
        if self._bar is not None:
            self._bar.update_absolute(done, self.total, preview)

    def chunk_callback(self):
        """A `(done, total)` callback for chunked core work: checks for cancel, moves the bar."""
        def callback(done: int, total: int) -> None:
            check_interrupt()
            self.update(done, total)
        return callback


def make_previewer(latent_channels: int, latent_format=None):
    """A function normalised latent -> preview tuple for ComfyUI's progress bar, or None.

    A model whose file names its own latent format with preview factors (`latent_format`, the
    pack's own models) is previewed with those. Otherwise the Wan formats (16 / 48 channels) use
    ComfyUI's own previewer (its latent->RGB factors, or whatever preview method the user chose);
    other formats use the core's `preview_rgb` factors where the format has them. Outside ComfyUI
    there are no previews.
    """
    if not HAVE_COMFY:
        return None
    try:
        import comfy.latent_formats as formats
        import latent_preview
    except ImportError:
        return None
    own = latent_format is not None and latent_format.rgb_factors is not None
    fmt = {16: getattr(formats, "Wan21", None), 48: getattr(formats, "Wan22", None)}.get(latent_channels)
    if fmt is not None and not own:
        previewer = latent_preview.get_previewer(torch_device(), fmt())
        return None if previewer is None else (
            lambda x0: previewer.decode_latent_to_preview_image("JPEG", x0))
    from ..core.vae.latent_format import latent_format_for

    core_format = latent_format if own else latent_format_for(latent_channels)
    if core_format.rgb_factors is None or latent_preview.args.preview_method == _no_previews():
        return None

    def preview(x0: torch.Tensor):
        from PIL import Image

        rgb = core_format.preview_rgb(x0.float())
        pixels = ((rgb + 1.0) * 127.5).round().to(torch.uint8).cpu().numpy()
        return ("JPEG", Image.fromarray(pixels), latent_preview.MAX_PREVIEW_RESOLUTION)

    return preview


def _no_previews():
    from comfy.cli_args import LatentPreviewMethod

    return LatentPreviewMethod.NoPreviews


# ------------------------------------------------------------------------------------ folders

def model_names(folder: str) -> list[str]:
    """Model files a loader node offers: ComfyUI's folder (e.g. 'diffusion_models', 'vae') plus
    the pack's own shipped weights."""
    names = []
    if HAVE_COMFY:
        names = list(_folder_paths.get_filename_list(folder))
    else:
        names = _walk_models(_fallback_dir(folder))
    shipped = PACK_MODELS_DIR / folder
    if shipped.is_dir():
        names += sorted(p.name for p in shipped.iterdir() if p.suffix in MODEL_SUFFIXES and p.name not in names)
    return names


def _walk_models(base: Path) -> list[str]:
    """Model files under `base`, as names relative to it. Symbolic links are followed, into
    folders too, wherever they point (ComfyUI's rule: a link in a model folder is the user's own
    arrangement); only names given by the user are kept inside the folder."""
    if not base.is_dir():
        return []
    names = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        dirnames.sort()
        for f in filenames:
            full = Path(dirpath) / f
            if full.suffix in MODEL_SUFFIXES and full.is_file():
                names.append(full.relative_to(base).as_posix())
    return sorted(names)


def check_model_name(name: str) -> str | None:
    """A reason why `name` is not an acceptable model file name, or None. Names are relative to a
    model folder: absolute paths and `..` components are refused."""
    if not isinstance(name, str) or not name.strip():
        return "no model file chosen"
    parts = Path(name.replace("\\", "/")).parts
    if os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts:
        return (f"model name {name!r} must be a file inside the model folder (no absolute paths, "
                f"no '..'); put the file into the folder and pick it from the list")
    return None


def validate_model_choice(folder: str, name: str | None):
    """VALIDATE_INPUTS helper for a loader's file widget: True, or the reason it is unusable.
    Naming the input there skips ComfyUI's own "value not in list" check, so the listing is
    checked here too. `None` (a linked input, unknown at validation) passes."""
    if name is None:
        return True
    problem = check_model_name(name)
    if problem is not None:
        return problem
    if name not in model_names(folder):
        return f"{name!r} is not in the '{folder}' model folder; put the file into ComfyUI/models/{folder}/"
    return True


def model_path(folder: str, name: str) -> Path:
    """Full path of a model file chosen in a loader node; clear errors for bad or missing names."""
    problem = check_model_name(name)
    if problem:
        raise ValueError(problem)
    full = None
    if HAVE_COMFY:
        full = _folder_paths.get_full_path(folder, name)
    else:
        candidate = _fallback_dir(folder) / name
        full = candidate if candidate.is_file() else None
        if full is None and candidate.is_symlink():
            raise ValueError(f"model file {name!r} in the '{folder}' folder is a link to "
                             f"{os.readlink(candidate)}, which does not exist; fix or remove the link")
    if full is None and (PACK_MODELS_DIR / folder / name).is_file():
        full = PACK_MODELS_DIR / folder / name
    if full is None:
        raise ValueError(f"model file {name!r} not found in the '{folder}' model folder; "
                         f"put it into ComfyUI/models/{folder}/ and refresh the node list")
    return Path(full)


def _fallback_dir(folder: str) -> Path:
    root = os.environ.get(FALLBACK_MODELS_ENV)
    return Path(root) / folder if root else PACK_MODELS_DIR / folder


def output_directory() -> Path:
    if HAVE_COMFY:
        return Path(_folder_paths.get_output_directory())
    return Path(os.environ.get("FLOWDIT_OUTPUT_DIR", "outputs"))


def input_directory() -> Path:
    if HAVE_COMFY:
        return Path(_folder_paths.get_input_directory())
    return Path(os.environ.get("FLOWDIT_INPUT_DIR", "inputs"))


def input_files(suffixes: tuple[str, ...]) -> list[str]:
    """Files in ComfyUI's input folder with one of `suffixes` (what a load node offers)."""
    base = input_directory()
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def input_path(name: str) -> Path:
    problem = check_model_name(name)
    if problem:
        raise ValueError(f"file {name!r} must be inside ComfyUI's input folder (no absolute paths, no '..')")
    path = input_directory() / name
    if not path.is_file():
        raise ValueError(f"input file {name!r} not found in {input_directory()}; upload it first")
    return path
