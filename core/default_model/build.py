"""Build the default model from nothing with one resumable command.

    python -m core.default_model.build --work runs/default_model [--resume] [--stage S[,S]]
        [--seed 0] [--recipe x4t] [--workers 2] [--toy]

Stages, in order (each writes `<work>/state/<stage>.json` when done and is skipped after that):

    data      check that the procedural data is what this build expects (checksums of clips)
    vae       train the VAE end to end on 17-frame clips (crops around the object, then, if
              the recipe asks, whole frames), then fold the latent statistics into it
              -> vae_encoder.safetensors
    latents   encode the training clips once (in `--workers` processes) -> latents.pt
    dit       DiT + text encoder through the pack's training loop (core.train), in
              `dit_processes` DDP processes (gloo; each takes a slice of every batch)
    dit2      a second DiT phase: a warm restart from `dit`'s final EMA weights (0 steps: none)
    dit3      a third one, from the last phase before it that has steps
    decoder   tune the decoder, encoder frozen: single frames (the TI2V first frame), then only
              the weights the first frame never reaches (later frames); runs in a second process
              beside `dit` when --workers >= 2 (the latents do not change)
    export    the three shipped files -> <work>/export/{diffusion_models,vae,text_encoders}/
    evaluate  held-out scores (core.scorer, issue 11's bars) -> eval.json, eval.md

Everything is a pure function of the seed and the configuration (step budgets, per-step random
generators); checkpoints are written atomically every few minutes, so a killed run continues with
`--resume` where it stopped. `<work>/config.json` records the configuration; resuming with other
options is refused. `<work>/timings.jsonl` records the wall time of every stage run. Nothing is
copied into core/default_model: install the exported files by hand once their scores beat the
shipped model's (see MODEL_CARD.md).

Reuses the stage code of `train_vae`, `export_vae`, `tune_decoder`, `train_dit` and `evaluate`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..dit.config import DiTConfig
from ..text.encoder import TextEncoderConfig
from ..vae.config import VAEConfig
from .bundle import SHAPES_DIT, SHAPES_TEXT
from .settings import FRAMES

STAGES = ("data", "vae", "latents", "dit", "dit2", "dit3", "decoder", "export", "evaluate")
NEEDS = {"data": (), "vae": ("data",), "latents": ("vae",), "dit": ("latents",),
         "dit2": ("dit",), "dit3": ("dit2",), "decoder": ("vae",),
         "export": ("dit3", "decoder"), "evaluate": ("export",)}
DIT_PHASES = ("dit", "dit2", "dit3")     # each later one a warm restart from the one before

# The DiT of this recipe: Wan layout, the shipped DiT's width and depth (dim 128, 4 blocks, 4 heads
# of 32, FFN 512; 1.25 M parameters, 5 MB) on 2x2 patches of the VAE's 16x16 latent grid: 8x8
# tokens per latent frame, each 8x8 pixels, fine enough for a shape's outline. 4x4 patches (the
# previous recipe: 80 tokens of 16x16 pixels, dim 256, 3 blocks) left the whole outline to one
# linear layer per token; on the same latents and batches the 2x2 model's loss was a third lower
# at equal steps (0.335 against 0.504 at step 400; MODEL_CARD.md). The head count is recorded in
# the file's metadata (`num_heads`): narrow Wan layouts cannot be told apart by their keys.
BUILD_DIT = SHAPES_DIT   # what ships (bundle.py)
# The VAE: the shipped width, 16 latent channels and x4 spatial compression (two down-sampling
# stages, both also x2 in time). Measured on this CPU, each from scratch on the same 2,000-step
# crop schedule, held-out round trip (video PSNR; shape right per the issue 11 scorer):
#   x8, z 8 (the shipped layout)   23.8 dB            x8, z 16   25.3 dB, shape 36%
#   x4, z 8                        27.6 dB, shape 63% x4, z 16   27.9 dB, shape 63% (this one)
# at the same cost per step. Raw latents are folded onto the Wan2.1 statistics
# (export_vae.fold_to_format), the format every loader picks for 16 channels.
BUILD_VAE = VAEConfig(dim=16, dec_dim=16, z_dim=16, dim_mult=(1, 2, 4), num_res_blocks=1,
                      temporal_downsample=(True, True))


@dataclass(frozen=True)
class BuildConfig:
    """Everything that determines the built model (the seed included)."""
    seed: int = 0
    vae: VAEConfig = BUILD_VAE
    vae_steps: int = 10_000          # end-to-end VAE steps on 17-frame clips, 32x32 crops around
    vae_batch: int = 2               # the object (4x cheaper than whole frames)...
    vae_crop: int = 32
    vae_lr: float = 5e-4
    vae_whole_steps: int = 0         # ...then optionally on whole 64x64 clips (0: none). The x8
    vae_whole_batch: int = 1         # VAE needed them (crops only: shape right in 36% of its
    vae_whole_lr: float = 2e-4       # round trips); this x4 one is at 32.2 dB, shape 95% after
                                     # the crops, and 125 whole-clip steps cost it 0.9 dB
    stat_clips: int = 32             # clips for the latent statistics folded into the VAE
    latent_clips: int = 2000         # training clips encoded for the DiT
    dit: DiTConfig = BUILD_DIT
    text: TextEncoderConfig = SHAPES_TEXT
    dit_steps: int = 7_000
    dit_batch: int = 32
    dit_lr: float = 1e-3
    dit_warmup: int = 200
    dit_ema: float = 0.999
    dit_logit_mean: float = 2.0      # training sigmas sigmoid(N(mean, std²)), median sigma 0.88.
    dit_logit_std: float = 1.5       # Where the prompted direction is decided: between the
                                     # latents of one clip moving in two directions, ||dz||² is
                                     # ~16,000 for this VAE against ~1,100 for the issue 6 x8 z8
                                     # one, so x_sigma shows the direction (d' = 2) up to sigma
                                     # 0.985 instead of 0.944 (MODEL_CARD.md; measured by
                                     # tests/benchmarks/diag_caption_use.py).
                                     # N(log 3, 1) put 0.1% of the samples above logit 4.15, this
                                     # 7.6% (and still 9% below sigma 1/2)
    dit_checkpoint_every: int = 250
    dit_processes: int = 2           # DDP ranks (gloo), each a slice of every batch of dit_batch;
                                     # part of the recipe: each rank draws its own noise
    dit2_steps: int = 5_000          # a second DiT phase (0 = none): a warm restart from the dit
    dit2_lr: float = 4e-4            # stage's final EMA weights with a fresh AdamW and EMA, this
    dit2_warmup: int = 100           # warm-up and cosine to 0, other batches and noises (seed + 1),
                                     # the same training sigmas. At the dit stage's end the loss
                                     # was still falling (0.145 -> 0.1415 over the last 1,000
                                     # steps at lr -> 0) and shapes were still improving
    dit3_steps: int = 6_000          # a third phase, the same kind of warm restart from dit2's
    dit3_lr: float = 3e-4            # final EMA weights (seed + 2). At dit2's end the loss was
    dit3_warmup: int = 100           # still falling (0.130) and 1,200 more steps at lr 2e-4 made
                                     # the object's area steadier (area steady 39% against 31%,
                                     # 84 held-out cases, raw weights)
    tune_clips: int = 400            # cached clips (and 8 frames of each) for the decoder tuning
    tune_image_steps: int = 1500     # phase 1: whole single frames (TI2V first frame)
    tune_video_steps: int = 750      # phase 2: later frames only (the first frame is kept)
    tune_crop: int = 8               # phase 2 crops, in latent cells (8 x the x4 stride: 32 px)
    tune_heldout: tuple[int, int] = (48, 6)   # held-out images and clips scored per checkpoint
    eval_seeds: int = 2              # held-out prompts x this many seeds (42 prompts per seed)
    eval_limit: int | None = None    # score only the first cases (toy builds)
    eval_settings: tuple[tuple[str, str, int], ...] = (
        ("T2V", "unipc", 20), ("TI2V", "unipc", 20), ("T2V", "euler", 10), ("T2V", "euler", 20),
        ("T2V", "dpmpp_2m", 10), ("T2V", "dpmpp_2m", 20), ("T2V", "unipc", 10))
    checkpoint_seconds: float = 300.0

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, data: dict) -> BuildConfig:
        """The inverse of `to_json` (JSON lists back to tuples, nested configs rebuilt)."""
        def tuples(value):
            return tuple(tuples(v) for v in value) if isinstance(value, list) else value

        nested = {"vae": VAEConfig, "dit": DiTConfig, "text": TextEncoderConfig}
        return cls(**{k: nested[k](**{n: tuples(v) for n, v in value.items()}) if k in nested
                      else tuples(value) for k, value in data.items()})


# Recipes (`--recipe`). "x4t" made the shipped weights. "x2t" differs only in the VAE's time
# stride: its second down-sampling stage halves time, its first does not (x2 in time, 9 latent
# frames for 17, 576 DiT tokens: ~1.8x the DiT's step time). Measured with
# tests/benchmarks/diag_vae_variants.py, 3,000 steps of this `vae` stage recipe each, held-out
# round trip: x4 in time IoU 0.778, 29.5 dB, area steady 65.5%; x2 in time 0.799, 30.7 dB, 91.7%
# (wider, 32 channels or an edge loss: 0.773-0.788). It also tunes the decoder's later frames
# for 3,750 steps instead of 750 (about 12 more minutes of one core, beside the DiT): 3,000 more
# such steps on the shipped decoder gave 32.35 -> 32.76 dB, VAE IoU 0.843 -> 0.846 and T2V IoU
# +0.002 (MODEL_CARD.md). The DiT recipe is unchanged.
RECIPES = {
    "x4t": BuildConfig(),
    "x2t": BuildConfig(vae=dataclasses.replace(BUILD_VAE, temporal_downsample=(False, True)),
                       tune_video_steps=3_750),
}
DEFAULT_RECIPE = "x4t"


def toy(cfg: BuildConfig = RECIPES[DEFAULT_RECIPE]) -> BuildConfig:
    """Seconds-sized models and budgets with `cfg`'s VAE time stride: the whole pipeline in a
    test."""
    return dataclasses.replace(
        TOY, vae=dataclasses.replace(TOY.vae, temporal_downsample=cfg.vae.temporal_downsample))


# Seconds-sized: the whole pipeline in a test.
TOY = BuildConfig(
    vae=VAEConfig(dim=4, dec_dim=4, z_dim=16, dim_mult=(1, 2, 4), num_res_blocks=1,
                  temporal_downsample=(True, True)),
    vae_steps=2, vae_batch=1, vae_whole_steps=1, stat_clips=2, latent_clips=4,
    dit=DiTConfig("t2v", in_dim=16, out_dim=16, dim=128, ffn_dim=128, text_dim=32, num_heads=1,
                  num_layers=1, patch_size=(1, 4, 4)),
    text=TextEncoderConfig(vocab_size=SHAPES_TEXT.vocab_size, dim=32, num_layers=1, num_heads=1,
                           max_len=16),
    dit_steps=2, dit2_steps=2, dit2_warmup=1, dit3_steps=2, dit3_warmup=1, dit_batch=2,
    dit_warmup=1, dit_checkpoint_every=1, dit_processes=2, tune_clips=2,
    tune_image_steps=2, tune_video_steps=2, tune_heldout=(1, 1), eval_seeds=1, eval_limit=2,
    eval_settings=(("T2V", "euler", 2), ("TI2V", "euler", 2)))


@dataclass
class Work:
    """Paths inside the work folder."""
    root: Path
    files: dict[str, Path] = field(init=False)

    def __post_init__(self) -> None:
        r = self.root
        self.files = {
            "config": r / "config.json", "run_config": r / "state" / "run_config.json",
            "timings": r / "timings.jsonl", "data": r / "data.json",
            "vae_run": r / "vae", "vae_crops": r / "vae_crops.safetensors",
            "vae_whole_run": r / "vae_whole", "vae": r / "vae_encoder.safetensors",
            "latents": r / "latents.pt", "dit_run": r / "dit", "dit2_run": r / "dit2",
            "dit3_run": r / "dit3",
            "decoder1": r / "decoder_images", "decoder1_out": r / "decoder_images.safetensors",
            "decoder2": r / "decoder_video", "decoder2_out": r / "decoder_video.safetensors",
            "export": r / "export", "eval_json": r / "eval.json", "eval_md": r / "eval.md",
        }

    def __getitem__(self, key: str) -> Path:
        return self.files[key]

    def exported(self) -> tuple[Path, Path, Path]:
        """(DiT, VAE, text encoder) paths of the exported model."""
        from .bundle import DIT_PATH, TEXT_PATH, VAE_PATH

        e = self["export"]
        return (e / "diffusion_models" / DIT_PATH.name, e / "vae" / VAE_PATH.name,
                e / "text_encoders" / TEXT_PATH.name)

    def done_marker(self, stage: str) -> Path:
        return self.root / "state" / f"{stage}.json"

    def is_done(self, stage: str) -> bool:
        return self.done_marker(stage).is_file()


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)                  # atomic: a killed run never leaves half a file


def _log(msg: str) -> None:
    print(f"[build {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----- stages ------------------------------------------------------------------------------------

def stage_data(work: Work, cfg: BuildConfig) -> dict:
    """Checksums of a few clips of each split: a changed generator would silently change the data
    a resumed build trains on, so it is checked on every run (see `check_data`)."""
    from ..synthetic.shapes import combinations, make_clip

    digest = {}
    for split in ("train", "heldout"):
        h = hashlib.sha256()
        for seed in range(8):
            clip = make_clip(seed, split)
            h.update(clip.caption.encode())
            h.update(clip.frames.tobytes())
        digest[split] = h.hexdigest()
    info = {"checksums": digest, "train_combinations": len(combinations("train")),
            "heldout_combinations": len(combinations("heldout"))}
    _write_json(work["data"], info)
    return info


def check_data(work: Work, cfg: BuildConfig) -> None:
    if not work["data"].is_file():
        return
    recorded = json.loads(work["data"].read_text())
    now = stage_data(Work(work.root / "state" / "check"), cfg)
    if recorded["checksums"] != now["checksums"]:
        raise RuntimeError(f"the procedural data differs from the one this build started with "
                           f"({work['data']}); core/synthetic/shapes.py changed. Start a new "
                           f"work folder, or restore the generator")


def stage_vae(work: Work, cfg: BuildConfig) -> dict:
    from .export_vae import export
    from .train_vae import VAETrainConfig, train

    common = dict(minutes=1e9, seed=cfg.seed, every_s=cfg.checkpoint_seconds,
                  heldout_clips=cfg.tune_heldout[1])
    train(work["vae_run"], VAETrainConfig(steps=cfg.vae_steps, lr=cfg.vae_lr, batch=cfg.vae_batch,
                                          crop=cfg.vae_crop, **common),
          resume=True, vae_config=cfg.vae)
    if not work["vae_crops"].is_file():
        export(work["vae_run"] / "last.pt", work["vae_crops"], check_clips=2, do_fold=False,
               vae_config=cfg.vae)
    last = work["vae_run"] / "last.pt"
    if cfg.vae_whole_steps > 0:
        train(work["vae_whole_run"],
              VAETrainConfig(steps=cfg.vae_whole_steps, lr=cfg.vae_whole_lr,
                             batch=cfg.vae_whole_batch, crop=64, **common),
              resume=True, init=work["vae_crops"], vae_config=cfg.vae)
        last = work["vae_whole_run"] / "last.pt"
    numbers = export(last, work["vae"], check_clips=2,
                     do_fold=True, vae_config=cfg.vae, stat_clips=cfg.stat_clips)
    return {**numbers, "round_trip": _vae_round_trip(work["vae"], cfg)}


def _vae_round_trip(path: Path, cfg: BuildConfig) -> dict:
    """Issue 11 scores of the VAE's round trip of the held-out clips (the best the decoder can
    draw), logged as a table row."""
    from ..vae.loader import load_vae
    from .evaluate import heldout_cases, table_row, vae_round_trip

    result = vae_round_trip(load_vae(path), heldout_cases(cfg.eval_seeds)[:cfg.eval_limit])
    _log(table_row("VAE", f"round trip ({result['video_psnr']:.1f} dB)", result))
    return result


def stage_latents(work: Work, cfg: BuildConfig, workers: int, argv_base: list[str]) -> dict:
    from .train_dit import cache_latents, merge_shards

    n = max(1, workers)
    parts = [work.root / f"latents_shard{k}of{n}.pt" for k in range(n)]
    if n == 1:
        cache_latents(work["vae"], cfg.latent_clips, parts[0], shard=(0, 1))
    else:
        procs = [_spawn(argv_base + ["--stage", "latents", "--shard", str(k)],
                        work.root / f"latents_shard{k}.log")
                 for k in range(n) if not parts[k].exists()]
        _wait(procs)
    merge_shards(parts, work["latents"])
    return {"clips": cfg.latent_clips, "shards": n}


def run_latent_shard(work: Work, cfg: BuildConfig, shard: int, workers: int) -> None:
    from .train_dit import cache_latents

    cache_latents(work["vae"], cfg.latent_clips,
                  work.root / f"latents_shard{shard}of{workers}.pt", shard=(shard, workers))


def _phase_options(cfg: BuildConfig, phase: str) -> tuple[int, float, int, int]:
    """(steps, lr, warm-up steps, seed) of one of DIT_PHASES."""
    return (getattr(cfg, f"{phase}_steps"), getattr(cfg, f"{phase}_lr"),
            getattr(cfg, f"{phase}_warmup"), cfg.seed + DIT_PHASES.index(phase))


def _last_phase(cfg: BuildConfig, before: str | None = None) -> str:
    """The last DiT phase with steps (of those before `before`): the one a later phase starts
    from, or (with no `before`) the one that is exported."""
    phases = DIT_PHASES[:DIT_PHASES.index(before)] if before else DIT_PHASES
    return [p for p in phases if p == "dit" or _phase_options(cfg, p)[0] > 0][-1]


def stage_dit(work: Work, cfg: BuildConfig, argv_base: list[str], phase: str = "dit") -> dict:
    """Train one of DIT_PHASES in `cfg.dit_processes` DDP processes (this process waits for
    them). A later phase with 0 steps is skipped."""
    steps = _phase_options(cfg, phase)[0]
    if phase != "dit" and steps == 0:
        return {"skipped": True}
    trained = _checkpoint_step(work[f"{phase}_run"] / "checkpoints")
    if trained >= steps:        # trained to the end before (its done marker removed or lost)
        return {"step": trained, "loss": None, "processes": cfg.dit_processes}
    if cfg.dit_processes == 1:
        return run_dit_rank(work, cfg, phase)
    result = work.root / f"{phase}_result.json"
    result.unlink(missing_ok=True)
    for attempt in (1, 2):
        try:
            _run_ranks(work, cfg, argv_base, phase)
            break
        except RuntimeError as exc:
            # A rank can fail for a reason outside the recipe (the port chosen for the ranks'
            # rendezvous taken by another process before rank 0 bound it). The phase resumes
            # from its last checkpoint, so one more start on another port costs little; a
            # failure of the recipe itself fails again. The rank logs are appended to.
            if attempt == 2:
                raise
            _log(f"{phase}: {exc}; starting the ranks once more")
    return json.loads(result.read_text())


def _run_ranks(work: Work, cfg: BuildConfig, argv_base: list[str], phase: str) -> None:
    port = _free_port()
    procs = []
    for rank in range(cfg.dit_processes):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(cfg.dit_processes)}
        procs.append(_spawn(argv_base + ["--stage", phase, "--dit-rank", str(rank)],
                            work.root / f"{phase}_rank{rank}.log", env=env))
    try:
        _wait(procs)
    finally:
        for p in procs:                   # one rank failed: do not leave the others waiting
            if p.poll() is None:
                p.kill()


def _checkpoint_step(folder: Path) -> int:
    """The step of the newest checkpoint in `folder` (0 when none), from its metadata."""
    from safetensors import safe_open

    from ..train.checkpointing import WEIGHTS_FILE, latest_checkpoint

    latest = latest_checkpoint(folder)
    if latest is None:
        return 0
    with safe_open(str(latest / WEIGHTS_FILE), "pt") as f:
        return int(f.metadata()["step"])


def run_dit_rank(work: Work, cfg: BuildConfig, phase: str = "dit") -> dict:
    """One process's part of a DiT phase (all of it when WORLD_SIZE is unset); rank 0
    writes `<phase>_result.json` for the process that started the ranks. A phase after the
    first starts from the final EMA weights of the phase before it."""
    from ..train import TrainConfig
    from ..train.checkpointing import latest_checkpoint
    from .train_dit import train_shapes

    steps, lr, warmup, seed = _phase_options(cfg, phase)
    config = TrainConfig(steps=steps, batch_size=cfg.dit_batch, lr=lr, warmup_steps=warmup,
                         lr_schedule="cosine", weight_decay=0.01,
                         grad_clip=1.0, ema_decay=cfg.dit_ema,
                         checkpoint_every=cfg.dit_checkpoint_every, log_every=10,
                         seed=seed, mixed_precision="no", device="cpu",
                         output_dir=str(work[f"{phase}_run"]), progress=False)
    init = None
    if phase != "dit":
        source = _last_phase(cfg, before=phase)
        init = latest_checkpoint(work[f"{source}_run"] / "checkpoints")
        if init is None:
            raise RuntimeError(f"{phase} starts from the {source} stage's checkpoints, and "
                               f"{work[f'{source}_run'] / 'checkpoints'} has none")
    result = train_shapes(work["latents"], config, cfg.dit, cfg.text, resume=True,
                          logit_mean=cfg.dit_logit_mean, logit_std=cfg.dit_logit_std, init=init)
    info = {"step": result.step, "loss": result.loss, "processes": cfg.dit_processes}
    if int(os.environ.get("RANK", "0")) == 0:
        _write_json(work.root / f"{phase}_result.json", info)
    return info


def stage_decoder(work: Work, cfg: BuildConfig) -> dict:
    from .export_vae import export
    from .tune_decoder import TuneConfig, tune

    images, clips = cfg.tune_heldout
    common = dict(minutes=1e9, heldout_images=images, heldout_clips=clips, seed=cfg.seed,
                  every_s=cfg.checkpoint_seconds)
    tune(work["decoder1"], work["vae"], TuneConfig(steps=cfg.tune_image_steps, clips=0, **common),
         resume=True, n_clips=cfg.tune_clips, vae_config=cfg.vae)
    first = export(work["decoder1"] / "last.pt", work["decoder1_out"], check_clips=2,
                   do_fold=False, vae_config=cfg.vae)
    tune(work["decoder2"], work["decoder1_out"],
         TuneConfig(steps=cfg.tune_video_steps, images=0, clips=2,
                    latent_frames=(FRAMES - 1) // cfg.vae.temporal_stride + 1, lr=2e-4,
                    crop=cfg.tune_crop, keep_first_frame=True, **common),
         resume=True, n_clips=cfg.tune_clips, vae_config=cfg.vae)
    second = export(work["decoder2"] / "last.pt", work["decoder2_out"], check_clips=2,
                    do_fold=False, vae_config=cfg.vae)
    return {"images_phase": first, "video_phase": second}


def stage_export(work: Work, cfg: BuildConfig) -> dict:
    import shutil

    from ..vae.loader import load_vae
    from .train_dit import export

    dit_path, vae_path, text_path = work.exported()
    # The DiT file names the latent format its VAE names (the same previews in both places).
    fmt = load_vae(work["decoder2_out"]).latent_format
    run = work[f"{_last_phase(cfg)}_run"]
    export(run, dit_path, text_path, dit_config=cfg.dit, text_config=cfg.text,
           latent_format=fmt)
    vae_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work["decoder2_out"], vae_path.with_name(vae_path.name + ".tmp"))
    os.replace(vae_path.with_name(vae_path.name + ".tmp"), vae_path)
    sizes = {p.name: p.stat().st_size for p in (dit_path, vae_path, text_path)}
    return {"bytes": sizes, "total_mb": sum(sizes.values()) / 2**20}


def load_built(work: Work, cfg: BuildConfig):
    """The exported model, loaded through the generic loaders (the DiT's head count from the
    build configuration, which its file also records in the metadata)."""
    from ..checkpoint import read_state_dict
    from ..dit.model import WanDiT
    from ..text.encoder import load_text_encoder
    from ..vae.loader import load_vae
    from .bundle import DefaultModel

    dit_path, vae_path, text_path = work.exported()
    dit = WanDiT(cfg.dit)
    dit.load_state_dict(read_state_dict(dit_path))
    return DefaultModel(dit=dit.eval(), vae=load_vae(vae_path), text=load_text_encoder(text_path))


def stage_evaluate(work: Work, cfg: BuildConfig) -> dict:
    from . import evaluate as ev

    model = load_built(work, cfg)
    lines = [ev.TABLE_HEADER]
    trip = _vae_round_trip(work.exported()[1], cfg)
    lines.append(ev.table_row("VAE", f"round trip ({trip['video_psnr']:.1f} dB)", trip))
    rows = ev.evaluate(model, list(cfg.eval_settings), seeds=cfg.eval_seeds,
                       limit=cfg.eval_limit, log=lambda row: (lines.append(row), _log(row)))
    _write_json(work["eval_json"], rows + [{"mode": "VAE round trip", **trip}])
    tmp = work["eval_md"].with_name("eval.md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, work["eval_md"])
    return {"settings": len(rows)}


# ----- orchestration -----------------------------------------------------------------------------

def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        return subprocess.Popen([sys.executable, "-m", "core.default_model.build", *args],
                                stdout=f, stderr=subprocess.STDOUT, env=env,
                                cwd=str(Path(__file__).resolve().parents[2]))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(procs: list[subprocess.Popen]) -> None:
    failed = [p.args for p in procs if p.wait() != 0]
    if failed:
        raise RuntimeError(f"a worker process failed (see its log in the work folder): {failed}")


def _run_stage(work: Work, cfg: BuildConfig, stage: str, workers: int,
               argv_base: list[str]) -> None:
    if work.is_done(stage):
        _log(f"{stage}: done already, skipped")
        return
    _log(f"{stage}: start")
    t0 = time.time()
    if stage == "data":
        info = stage_data(work, cfg)
    elif stage == "vae":
        info = stage_vae(work, cfg)
    elif stage == "latents":
        info = stage_latents(work, cfg, workers, argv_base)
    elif stage in DIT_PHASES:
        info = stage_dit(work, cfg, argv_base, stage)
    elif stage == "decoder":
        info = stage_decoder(work, cfg)
    elif stage == "export":
        info = stage_export(work, cfg)
    else:
        info = stage_evaluate(work, cfg)
    seconds = time.time() - t0
    with open(work["timings"], "a") as f:
        f.write(json.dumps({"stage": stage, "seconds": round(seconds, 1), "completed": True,
                            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
                + "\n")
    _write_json(work.done_marker(stage), {"seconds": seconds, "info": info})
    _log(f"{stage}: done in {seconds / 60:.1f} min")
    # Whatever was made from this stage's earlier output is stale now (e.g. an export finished
    # before a stage added to the recipe ran): those stages run again.
    for later in _after(stage):
        if work.is_done(later):
            work.done_marker(later).unlink()
            _log(f"{later}: made before {stage} ran, will run again")


def _after(stage: str) -> list[str]:
    """Every stage that needs `stage`, directly or through others."""
    found: list[str] = []
    for s in STAGES:
        if any(n == stage or n in found for n in NEEDS[s]):
            found.append(s)
    return found


def _changed_options(before: dict, now: dict, prefix: str = "") -> list[str]:
    """Names of the options recorded in `before` whose value differs in `now`, looking inside
    nested sections; options that `before` does not record are new and ignored."""
    changed = []
    for key, old in before.items():
        if key not in now:
            continue
        new = now[key]
        if isinstance(old, dict) and isinstance(new, dict):
            changed += _changed_options(old, new, f"{prefix}{key}.")
        elif old != new:
            changed.append(prefix + key)
    return sorted(changed)


@contextlib.contextmanager
def _only_build_in(folder: Path):
    """Hold an exclusive lock on `folder` for one build: a second build started in the same work
    folder (the command run twice) would train into the same checkpoints. The lock goes with the
    process, however it ends. Where the OS has no `fcntl` (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "build.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ValueError(f"another build is running in {folder} (it holds "
                             f"{folder / 'build.lock'}); wait for it, or stop it and resume "
                             f"with --resume") from None
        yield


def build(work_dir: Path, cfg: BuildConfig, *, resume: bool = False,
          stages: tuple[str, ...] = STAGES, workers: int = 2, toy: bool = False) -> Work:
    """Run `stages` (in STAGES order; each needs the ones before it done)."""
    with _only_build_in(Path(work_dir)):
        return _build(Path(work_dir), cfg, resume, stages, workers, toy)


def _build(work_dir: Path, cfg: BuildConfig, resume: bool, stages: tuple[str, ...],
           workers: int, toy: bool) -> Work:
    work = Work(work_dir)
    recorded = work["config"]
    if recorded.is_file():
        if not resume:
            raise ValueError(f"{work.root} already holds a build; pass --resume to continue it, "
                             f"or choose another --work folder")
        # Options added to BuildConfig (or to the model configs inside it) after a build started
        # are not in its record; every option the record has must match.
        changed = _changed_options(json.loads(recorded.read_text()), cfg.to_json())
        if changed:
            raise ValueError(f"{work.root} was started with another configuration "
                             f"({', '.join(changed)} differ; see {recorded}); resume with the "
                             f"same options (--seed, --recipe, --toy), or use another --work "
                             f"folder")
    else:
        _write_json(recorded, cfg.to_json())
    # The whole configuration of this run (the record above may predate some options), for the
    # processes this one starts: they read it instead of rebuilding it from their arguments.
    _write_json(work["run_config"], cfg.to_json())
    check_data(work, cfg)
    argv_base = ["--work", str(work.root), "--resume", "--seed", str(cfg.seed),
                 "--workers", str(workers)] + (["--toy"] if toy else [])
    order = [s for s in STAGES if s in stages]
    for stage in order:
        missing = [s for s in NEEDS[stage] if not work.is_done(s) and s not in order]
        if missing:
            raise ValueError(f"stage {stage} needs {', '.join(missing)} first")
    helper = None
    for stage in order:
        if stage == "dit" and "decoder" in order and workers >= 2 and not work.is_done("decoder"):
            # The decoder tuning keeps the encoder (the DiT's latent space): run it beside the DiT.
            helper = _spawn(argv_base + ["--helper-stage", "decoder"], work.root / "decoder.log")
            _log(f"decoder: started in process {helper.pid} (log {work.root / 'decoder.log'})")
        if stage == "decoder" and helper is not None:
            _wait([helper])
            helper = None
            _log("decoder: helper process finished")
            continue
        _run_stage(work, cfg, stage, workers, argv_base)
    return work


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="work folder, e.g. runs/default_model")
    parser.add_argument("--resume", action="store_true", help="continue a build in --work")
    parser.add_argument("--stage", default=",".join(STAGES),
                        help=f"comma-separated stages to run (of {', '.join(STAGES)})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default=DEFAULT_RECIPE,
                        help=f"which recipe (default {DEFAULT_RECIPE}: the shipped weights')")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes for parallel stages (latents, decoder beside dit)")
    parser.add_argument("--toy", action="store_true", help="seconds-sized models (tests)")
    parser.add_argument("--shard", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dit-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--helper-stage", choices=("decoder",), default=None,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    stages = tuple(s.strip() for s in args.stage.split(",") if s.strip())
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; use {', '.join(STAGES)}")
    # One thread per process: on the shared 2-core machine a second OpenMP thread mostly waits.
    torch.set_num_threads(1)
    recipe = RECIPES[args.recipe]
    cfg = dataclasses.replace(toy(recipe) if args.toy else recipe, seed=args.seed)
    try:
        if args.shard is not None or args.dit_rank is not None or args.helper_stage:
            # Started by a build process, which holds the work folder's lock (so these do not
            # take it) and wrote the run's configuration for them.
            work = Work(Path(args.work))
            cfg = BuildConfig.from_json(json.loads(work["run_config"].read_text()))
            if args.shard is not None:
                run_latent_shard(work, cfg, args.shard, args.workers)
            elif args.dit_rank is not None:
                run_dit_rank(work, cfg, stages[0])
            else:
                _run_stage(work, cfg, args.helper_stage, args.workers, [])
            return 0
        build(Path(args.work), cfg, resume=args.resume, stages=stages, workers=args.workers,
              toy=args.toy)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
