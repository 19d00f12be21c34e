"""Training: the flow-matching loss, the training loop (AdamW, EMA, DDP, exact resume), LoRA
adapters in ComfyUI's Wan LoRA layout, and cached video datasets.

    loss, info = flow_matching_loss(dit, x0, context, generator=g)        # one batch's SFT loss
    result = train(model, loss_fn, dataset, TrainConfig(steps=..., output_dir=...))
    add_lora(dit, LoRAConfig(rank=16)); train(...); save_lora(dit, "my_lora.safetensors")
    load_lora(dit, "my_lora.safetensors", strength=0.8)
    dataset = cache_latents("clips/", vae, "cache/", DataConfig(width=..., height=..., frames=...))

`python -m core train --config run.json` runs all of it from a JSON file (see core/train/cli.py).
"""
from .data import DataConfig, LatentDataset, SkippedClip, cache_latents, find_clips
from .lora import (DEFAULT_TARGETS, LoRAConfig, LoRAReport, add_lora, load_lora, lora_state_dict,
                   remove_lora, save_lora, set_lora_strength)
from .loop import (BatchSource, DatasetBatches, TrainConfig, TrainResult, default_collate,
                   gradient_checkpointing, load_trained, mix_seed, train)
from .loss import drop_condition, flow_matching_loss, sample_sigmas

__all__ = [
    "DataConfig", "LatentDataset", "SkippedClip", "cache_latents", "find_clips",
    "DEFAULT_TARGETS", "LoRAConfig", "LoRAReport", "add_lora", "load_lora", "lora_state_dict",
    "remove_lora", "save_lora", "set_lora_strength",
    "BatchSource", "DatasetBatches", "TrainConfig", "TrainResult", "default_collate",
    "gradient_checkpointing", "load_trained", "mix_seed", "train",
    "drop_condition", "flow_matching_loss", "sample_sigmas",
]
