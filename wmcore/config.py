"""Typed configuration: `params.yaml` validated into pydantic models.

This module is the only place YAML configuration is parsed. Every group of
`params.yaml` has one model here; every field carries a one-line description
(meaning, unit). Unknown keys and bad values raise `ConfigError` whose message
names the dotted key, the bad value and what is allowed.
"""

from __future__ import annotations

import copy
import logging
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationError, model_validator

from wmcore.schema import ConfigError, Group, format_error

DEFAULT_PARAMS = Path("params.yaml")




# --------------------------------------------------------------------------- groups


class BaseParams(Group):
    seed: int = Field(42, ge=0, description="Global random seed (data generation, init, sampling).")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Compute device; auto = cuda when available, else cpu."
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Default autocast dtype where a step enables mixed precision."
    )
    threads: int = Field(
        0, ge=0, le=512, description="Torch intra-op threads; 0 = the cores really free (affinity, cgroup quota)."
    )
    cudnn_benchmark: bool = Field(
        True, description="CUDA only: let cuDNN time its convolution algorithms per input shape and keep the fastest."
    )


class PathsParams(Group):
    prepared: str = Field("data/prepared", description="Prepared dataset folder (DVC output of `prepare`).")
    train_dir: str = Field("results/train", description="Training outputs: checkpoints, history, plots.")
    evaluate_dir: str = Field("results/evaluate", description="Evaluation outputs: metrics.json, curves, PNGs.")
    predict_dir: str = Field("results/predict", description="Batch inference outputs of the sample inbox.")
    inbox: str = Field("data/inbox", description="Folder of images screened by the predict step.")
    corpus: str = Field(
        "data/corpus", description="Real-photo corpus built by `wm corpus` (train backgrounds; val/test real clean photos)."
    )
    corpus_native: str = Field(
        "data/corpus-native",
        description="Native views of the corpus's larger val/test photos, at their packages' own resolution "
        "(`python -m wmcore.data.native_views`): scored with them as real_val / real_test, so the real-photo "
        "figures and calibration see native refinement as a user's large photo gets it; missing = none.",
    )
    corpus_native_train: str = Field(
        "data/corpus-native-train",
        description="Native views of the corpus's larger train photos (`python -m wmcore.data.native_views --splits "
        "train`): photo backgrounds at camera detail (prepare.native_share) and `wm mine`'s ground through native "
        "detail (mine.native_views); missing = none.",
    )
    hard_negatives: str = Field(
        "data/hard_negatives.jsonl",
        description="Hard negatives `wm mine` found in the corpus's train photos (regions a model marked wrongly).",
    )
    cache_dir: str = Field(".cache/wmdetect", description="Local cache: decoded images, tuned batch sizes.")
    pretrained: str | None = Field(
        None,
        description="Shipped pretrained weights (`wm export-weights`; JSON provenance beside); null = none. "
        "params.yaml names models/wmdetect.pt.",
    )


WatermarkStyle = Literal[
    "centered", "corner", "corner_label", "tiled", "grid", "logo", "hollow", "stamp", "badge", "emboss", "multiline",
    "credit",
]
SceneTextKind = Literal["sign", "subtitle", "label", "document"]  # wmcore.data.compose.SCENE_TEXT_KINDS

DEFAULT_STYLE_WEIGHTS: dict[str, float] = {
    "centered": 1.5, "corner": 1.5, "corner_label": 1.0, "tiled": 1.2, "grid": 0.6, "logo": 1.0,
    "hollow": 0.6, "stamp": 0.7, "badge": 0.7, "emboss": 0.6, "multiline": 0.8, "credit": 0.0,
}


class PrepareParams(Group):
    n_train: int = Field(480, ge=1, description="Number of generated training samples.")
    n_val: int = Field(64, ge=1, description="Number of generated validation samples.")
    n_test: int = Field(96, ge=1, description="Number of generated test samples.")
    min_side: int = Field(256, ge=32, le=4096, description="Smallest long side of a generated sample, px.")
    max_side: int = Field(640, ge=32, le=4096, description="Largest long side of a generated sample, px.")
    max_background_side: int = Field(
        2048, ge=64, le=8192, description="Backgrounds larger than this are downscaled once at load, px."
    )
    background_sources: list[
        Literal["skimage", "matplotlib", "sklearn", "system", "corpus", "procedural", "user"]
    ] = Field(
        default_factory=lambda: ["skimage", "matplotlib", "sklearn", "system", "corpus", "procedural", "user"],
        description="Background sources; missing optional ones are skipped and counted in stats.json. "
        "corpus = the train split of data/corpus (real photos built by `wm corpus`; val/test never).",
    )
    user_backgrounds: str | None = Field(None, description="Folder of the user's own background photos (recursive).")
    procedural_share: float = Field(
        0.25, ge=0.0, le=1.0, description="Share of samples drawn on procedural backgrounds (gradients, pages)."
    )
    clean_share: float = Field(0.2, ge=0.0, le=1.0, description="Share of samples with no watermark at all.")
    scene_text_share: float = Field(
        0.35, ge=0.0, le=1.0, description="Share of samples that also carry opaque scene text (mask 0)."
    )
    scene_text_kinds: list[SceneTextKind] = Field(
        default_factory=lambda: ["document", "label", "sign", "subtitle"],
        min_length=1,
        description="What scene text may be: sign (a plate with words), subtitle (outlined words or a caption bar "
        "along the bottom), label (a price tag or product card), document (a block of page text).",
    )
    opacity_min: float = Field(0.1, ge=0.0, le=1.0, description="Lowest watermark opacity.")
    opacity_max: float = Field(0.9, ge=0.0, le=1.0, description="Highest watermark opacity.")
    mask_alpha_threshold: float = Field(
        0.05, gt=0.0, lt=1.0, description="Binary mask = rendered watermark alpha above this (0..1)."
    )
    jpeg_quality_min: int = Field(55, ge=1, le=100, description="Lowest JPEG quality of the re-compression.")
    jpeg_quality_max: int = Field(95, ge=1, le=100, description="Highest JPEG quality of the re-compression.")
    jpeg_share: float = Field(0.7, ge=0.0, le=1.0, description="Share of samples JPEG re-compressed after compositing.")
    heldout_style_share: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Share of fonts, phrase kinds, styles and backgrounds kept out of train/val/test for test_heldout.",
    )
    n_test_heldout: int = Field(
        64, ge=0, le=100000, description="Samples of the style-held-out split test_heldout; 0 = no such split."
    )
    heldout_from: str | None = Field(
        None,
        description="A prepared dataset (its folder) whose held-out names (stats.json \"heldout\": fonts, phrase "
        "kinds, styles, backgrounds) this one keeps out too, instead of drawing its own plan from base.seed. A "
        "fine-tune that draws its samples on another seed names the dataset it is evaluated on, or it trains on "
        "what that dataset's test_heldout holds out. null = the plan of base.seed.",
    )
    import_dir: str | None = Field(
        None, description="Existing dataset with images/ + masks/ (CLWD/LVW layout) imported into train/val/test."
    )
    import_val_share: float = Field(0.1, ge=0.0, lt=1.0, description="Share of imported pairs sent to val.")
    import_test_share: float = Field(0.1, ge=0.0, lt=1.0, description="Share of imported pairs sent to test.")
    workers: int = Field(0, ge=0, le=64, description="Generator processes; 0 = in process (deterministic either way).")
    hard_negative_share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of photo backgrounds cropped around a hard negative of paths.hard_negatives (a region of "
        "a corpus train photo a model marked wrongly, found by `wm mine`); 0 = none, or no such file.",
    )
    native_share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Of the draws of a corpus train photo that has a native view (paths.corpus_native_train), the "
        "share cut from the view, at the detail a camera gives, instead of the stored copy (downscaled to 768 px); "
        "hard negatives inside the view likewise (those mined on a view always use it). 0 = stored copies only.",
    )
    min_background_side: int = Field(
        128, ge=16, le=4096, description="Background photos with a shorter side are skipped as too small, px."
    )
    style_weights: dict[WatermarkStyle, float] = Field(
        default_factory=lambda: dict(DEFAULT_STYLE_WEIGHTS),
        description="Relative frequency of each watermark style (missing or 0 = never drawn); see wmcore/data/render.py.",
    )
    multi_mark_share: float = Field(
        0.2, ge=0.0, le=1.0, description="Share of watermarked samples that also get a second, small mark."
    )
    blur_share: float = Field(0.2, ge=0.0, le=1.0, description="Share of marks slightly Gaussian-blurred.")
    min_contrast: float = Field(
        0.04,
        ge=0.0,
        le=1.0,
        description="Least mean colour change a mark makes on its mask pixels (0..1); fainter marks are strengthened.",
    )
    png_compress_level: int = Field(
        1, ge=0, le=9, description="zlib level of the stored PNGs; 1 measured ~5x faster to write than 6, ~10% larger."
    )

    @model_validator(mode="after")
    def _ranges(self) -> PrepareParams:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) must be <= max_side ({self.max_side})")
        if self.opacity_min > self.opacity_max:
            raise ValueError(f"opacity_min ({self.opacity_min}) must be <= opacity_max ({self.opacity_max})")
        if self.jpeg_quality_min > self.jpeg_quality_max:
            raise ValueError("jpeg_quality_min must be <= jpeg_quality_max")
        if any(w < 0 for w in self.style_weights.values()) or not any(w > 0 for w in self.style_weights.values()):
            raise ValueError(f"style_weights must be >= 0 with at least one > 0, got {self.style_weights}")
        return self


class ModelParams(Group):
    arch: Literal["unet", "text_unet"] = Field(
        "unet",
        description="unet = the classic UNet trained from scratch; text_unet = PP-OCRv4's text-detector encoder "
        "and FPN (trained on real text) with a GroupNorm watermark decoder (wmcore/model/text_unet.py).",
    )
    depth: int = Field(4, ge=1, le=7, description="unet: number of down-sampling stages.")
    base_width: int = Field(16, ge=4, le=256, description="unet: channels of the first stage; doubles per stage.")
    width: int = Field(64, ge=8, le=512, description="text_unet: decoder channels at 1/4 resolution (1/2 gets half).")
    edge: int = Field(
        0, ge=0, le=64, description="text_unet: channels of the full-resolution edge head, a residual on the logits "
        "that places stroke edges from the RGB pixels (model.text_unet.EdgeHead); 0 = none. It starts at zero, so "
        "a checkpoint without it warm-starts exactly (train.train_only: [edge] trains the head alone). Measured on the "
        "shipped weights: no F1 gain at +27% time per pass (bench/results/edge_head/), so 0.",
    )
    in_channels: int = Field(3, ge=1, le=4, description="Input channels (RGB; text_unet takes 3 only).")


class LoaderParams(Group):
    workers: int = Field(
        0, ge=0, le=64, description="DataLoader worker processes; 0 = load in the main process (on the 2-core CPU "
        "loading was never the bottleneck)."
    )
    prefetch_factor: int = Field(2, ge=1, le=64, description="Batches prefetched per worker (workers > 0 only).")
    pin_memory: bool = Field(False, description="Page-locked host batches for faster, async host-to-GPU copies.")
    persistent_workers: bool = Field(False, description="Keep workers alive between epochs (workers > 0 only).")
    cache: Literal["none", "ram", "mmap"] = Field(
        "ram", description="Decoded-image cache: none, in-process RAM, or a memory-mapped file shared by workers."
    )
    uint8_batches: bool = Field(
        False, description="Batches leave the loader as uint8 (image 0-255, mask 0/1) and become float32 on the "
        "training device: 4x fewer bytes through worker shared memory, pinned buffers and the host-to-GPU copy "
        "(same values: tested). Off on the 2-core CPU, where the main process then converts alone: 1.02-1.06x with no "
        "workers, 0.65-0.97x with 2 (bench/results/loader-cpu); on in params-gpu.yaml."
    )
    multiscale_resize: Literal["pil", "torch"] = Field(
        "pil", description="Resize of a multiscale training view (train.multiscale_share): PIL's antialiased "
        "bilinear, or torch's uint8 kernel of the same filter (within 2 grey levels of PIL's: tested; the same random "
        "draws). The training data path on the 2-core CPU, half the views multiscale: 1.14-1.20x with no workers, "
        "0.99-1.18x with 2 (bench/results/loader-resize); torch in params-gpu.yaml, where loader workers feed a GPU."
    )


class ProgressiveStage(Group):
    until_epoch: int = Field(..., ge=1, description="This stage is used for epochs < until_epoch (last stage: rest).")
    crop: int = Field(..., ge=32, le=4096, description="Training crop side in this stage, px.")
    batch_size: int = Field(..., ge=1, le=4096, description="Micro-batch size in this stage.")


class OptimizerParams(Group):
    lr: float = Field(
        2e-3, gt=0.0, le=1.0, description="AdamW peak learning rate (2e-3 trained the shipped model from scratch; "
        "params.yaml's fine-tune of it uses 3e-4)."
    )
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0, description="AdamW decoupled weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas (each in [0, 1)).")
    eps: float = Field(1e-8, gt=0.0, le=1e-2, description="AdamW epsilon.")
    encoder_lr_scale: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Learning-rate factor of the pretrained text-detector part of text_unet (its encoder, FPN "
        "and DB head); the decoder trains at the full rate. 1 = one rate for all.",
    )

    @model_validator(mode="after")
    def _betas(self) -> OptimizerParams:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must each be in [0, 1), got {list(self.betas)}")
        return self


class SchedulerParams(Group):
    kind: Literal["cosine", "onecycle", "constant"] = Field(
        "cosine", description="LR schedule after warm-up: cosine decay, one-cycle, or constant."
    )
    warmup_fraction: float = Field(0.05, ge=0.0, le=0.9, description="Share of optimizer steps in linear warm-up.")
    min_lr_ratio: float = Field(0.02, ge=0.0, le=1.0, description="Final LR as a fraction of the peak LR.")


class LossParams(Group):
    bce_weight: float = Field(1.0, ge=0.0, description="Weight of BCE-with-logits.")
    dice_weight: float = Field(1.0, ge=0.0, description="Weight of soft Dice loss (imbalance-robust).")
    pos_weight: float = Field(3.0, gt=0.0, le=1000.0, description="BCE weight of watermark pixels (they are rare).")
    dice_smooth: float = Field(
        1.0, gt=0.0, le=1000.0, description="Soft Dice smoothing, px; keeps clean images (empty masks) well defined."
    )
    image_weight: float = Field(
        0.0, ge=0.0, description="Weight of the image-level term: BCE of each crop's has-watermark score (the mean of "
        "its top 0.1% probabilities, the score wm predict gates masks with) against whether the crop holds a mark. "
        "0 = off (measured: README, phase 10)."
    )
    lovasz_weight: float = Field(
        0.0, ge=0.0, description="Weight of the per-image Lovasz hinge, a surrogate of 1 - IoU that weighs the pixels "
        "costing an image's IoU most (its stroke edges) above the rest. 0 = off (measured: README, phase 11)."
    )


class TrainParams(Group):
    epochs: int = Field(12, ge=1, description="Maximum number of epochs.")
    max_minutes: float = Field(
        0.0, ge=0.0, description="Wall-clock budget for training, min; 0 = no budget. Schedule is sized to it."
    )
    steps_per_epoch: int = Field(0, ge=0, description="Optimizer steps per epoch; 0 = one pass over the train split.")
    batch_size: int = Field(
        4, ge=1, le=4096, description="Micro-batch size when no progressive stage applies (256 px crops on the "
        "2-core CPU: 2-4 measured fastest per image)."
    )
    crop: int = Field(256, ge=32, le=4096, description="Training crop side when no progressive stage applies, px.")
    progressive: list[ProgressiveStage] = Field(
        default_factory=list,
        description="Crop-size schedule, small crops first; empty = fixed crop/batch. params.yaml's 128 px x 8 then "
        "256 px x 4 made 2x the steps of 128 x 16 then 256 x 8 at equal images/s, val loss 1.29 vs 1.36 and 13% "
        "lower peak RSS (same-contention A/B, 4 minutes each).",
    )
    multiscale_share: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of crops taken from a randomly downscaled view of the image."
    )
    multiscale_min_scale: float = Field(
        0.5, gt=0.0, le=1.0, description="Smallest downscale factor of a multiscale view (1 = full resolution)."
    )
    grad_accum_steps: int = Field(1, ge=1, le=1024, description="Micro-batches accumulated per optimizer step.")
    grad_clip: float = Field(1.0, ge=0.0, description="Max global gradient norm; 0 = no clipping.")
    amp: bool = Field(
        False, description="Mixed precision autocast (dtype from base.precision; bf16 measured slower than fp32 on "
        "the 2-core CPU)."
    )
    channels_last: bool = Field(True, description="NHWC memory format (measured ~1.35x on CPU).")
    compile: bool = Field(False, description="torch.compile the model (measured 1.54x for long runs; costs start-up).")
    optimizer: OptimizerParams = Field(default_factory=OptimizerParams)
    scheduler: SchedulerParams = Field(default_factory=SchedulerParams)
    loss: LossParams = Field(default_factory=LossParams)
    val_every: int = Field(1, ge=1, description="Validate every N epochs.")
    val_batch_size: int = Field(8, ge=1, le=4096, description="Validation batch size (no gradients: can be larger).")
    val_subset: int = Field(64, ge=0, description="Fixed number of validation images used; 0 = all.")
    val_crop: int = Field(256, ge=32, le=4096, description="Centre crop side of validation images, px.")
    patience: int = Field(0, ge=0, description="Early stop after N validations without F1 gain; 0 = off.")
    warm_start: str | None = Field(
        None, description="Checkpoint or weights file to initialise the model from (one without the text_unet edge "
        "head loads into a model with one: the head starts at zero)."
    )
    train_only: list[str] = Field(
        default_factory=list,
        description="Train only the parameters whose names start with one of these prefixes (e.g. [edge]: the "
        "text_unet edge head on a warm-started model); the rest stay frozen and get no gradients. Empty = all.",
    )
    init_encoder: Literal["ppocrv4"] | None = Field(
        "ppocrv4",
        description="text_unet without warm_start/resume: load PP-OCRv4's text-detector weights into the encoder "
        "(fetched once from the pinned rapidocr-onnxruntime wheel, sha256-checked); null = random init.",
    )
    max_nonfinite_steps: int = Field(5, ge=1, description="Stop after this many consecutive non-finite losses.")
    log_every: int = Field(10, ge=1, description="Log step metrics every N optimizer steps.")
    memory_cleanup_threshold: float = Field(
        0.9, gt=0.0, le=1.0, description="Collect garbage / empty the CUDA cache only above this memory-use fraction."
    )
    naive: bool = Field(False, description="Turn every optimization off (benchmark baseline), same code path.")
    nproc: int = Field(
        1,
        ge=1,
        le=1024,
        description="Processes `wm train` starts on this machine through torchrun (DDP); 1 = one plain process. "
        "Under torchrun its own world size wins.",
    )
    sync_batchnorm: bool = Field(
        True,
        description="With several processes, BatchNorm uses the statistics of the micro-batches of all ranks "
        "together (one process's view of the global batch); off = each rank's own.",
    )
    bn_momentum_per_step: bool = Field(
        True,
        description="With gradient accumulation, divide BatchNorm's running-statistics momentum by "
        "grad_accum_steps, so the running statistics average as many images as one big batch would.",
    )

    @model_validator(mode="after")
    def _stages(self) -> TrainParams:
        ends = [s.until_epoch for s in self.progressive]
        if any(b <= a for a, b in zip(ends, ends[1:], strict=False)):
            raise ValueError(f"progressive: until_epoch must increase from stage to stage, got {ends}")
        return self


class EvaluateParams(Group):
    threshold_grid: int = Field(49, ge=3, le=999, description="Number of pixel thresholds tried on validation.")
    batch_size: int = Field(4, ge=1, le=1024, description="Evaluation batch size.")
    crop: int = Field(0, ge=0, le=8192, description="Centre crop for evaluation, px; 0 = whole image (tiled).")
    n_overlay: int = Field(12, ge=0, le=256, description="Test predictions shown in the overlay grid.")
    backend: Literal["torch", "onnx", "onnx-int8"] = Field("torch", description="Inference backend evaluated.")
    image_objective: Literal["pixel_f1", "balanced_accuracy", "f1"] = Field(
        "pixel_f1",
        description="How the has-watermark threshold is chosen on validation: pixel_f1 = jointly with the pixel "
        "threshold, for the best pixel F1 of the gated masks (predict.gate_masks) within the real-photo budgets "
        "below; balanced_accuracy / f1 = on its own, for that image-level score.",
    )
    max_real_fp_area: float = Field(
        0.0015,
        ge=0.0,
        le=1.0,
        description="Calibration budget: share of the corpus's real clean val photos' pixels the gated masks may "
        "mark (image_objective pixel_f1; ignored without a corpus).",
    )
    max_real_flagged: float = Field(
        0.08,
        ge=0.0,
        le=1.0,
        description="Calibration budget: share of the corpus's real clean val photos that may get a non-empty mask.",
    )
    f1_tolerance: float = Field(
        0.001,
        ge=0.0,
        le=0.1,
        description="Calibration: threshold pairs whose val pixel F1 is within this of the best count as tied "
        "(far below the noise of a few hundred val images); ties go to the least real clean val "
        "false-positive area, then the fewest flagged photos. 0 = the best F1 alone.",
    )
    overlay_side: int = Field(160, ge=32, le=1024, description="Long side of each picture in overlays.png, px.")
    fusion_min_gain: float = Field(
        0.005,
        ge=0.0,
        le=1.0,
        description="Validation pixel F1 another fusion rule must gain over refine to replace it (noise margin).",
    )
    compare_pretrained: bool = Field(
        True,
        description="Also score paths.pretrained on test; export it instead when the new model does not beat it.",
    )
    fusion_rules: list[Literal["tiles", "global", "refine", "refine_mean", "max", "mean"]] = Field(
        default_factory=lambda: ["global", "refine"],
        min_length=1,
        description="Rules `wm evaluate` may choose for predict.fusion auto; tiles/max/mean run native tiles over "
        "the whole image (cost grows with the megapixels), refine/refine_mean only where the working view fires; "
        "refine_mean is measured and left out (README: its val threshold does not carry to test).",
    )


class PredictParams(Group):
    backend: Literal["torch", "onnx", "onnx-int8"] = Field("torch", description="Inference backend.")
    batch_size: int = Field(4, ge=1, le=4096, description="Starting tile batch size.")
    auto_batch: bool = Field(True, description="Adapt the batch size to memory (grow, halve on OOM).")
    min_batch_size: int = Field(1, ge=1, le=4096, description="Never shrink below this batch size.")
    max_batch_size: int = Field(
        4, ge=1, le=4096, description="Never grow above this batch size (eager batches > 4 measured slower on the "
        "2-core CPU)."
    )
    memory_threshold: float = Field(
        0.85, gt=0.0, le=1.0, description="Grow the batch only while memory use stays under this fraction."
    )
    host_memory_budget_mb: int = Field(
        0, ge=0, description="CPU: a batch whose estimated memory exceeds this counts as OOM; 0 = no budget."
    )
    amp: bool = Field(False, description="Mixed precision inference (CUDA fp16/bf16; off on CPU: measured slower).")
    channels_last: bool = Field(True, description="NHWC memory format for inference.")
    non_blocking: bool = Field(True, description="Pinned host batches and non_blocking copies on CUDA.")
    tile_size: int = Field(
        512,
        ge=32,
        le=8192,
        description="Largest input run whole, px: larger inputs get the fewest tiles, sized evenly. 512 (a "
        "1024 px working view in a few overlapping tiles) measured the same speed as one 1024 px pass with half "
        "the peak memory (1024x768 photos: 414 vs 852 MB) and test F1 0.701 vs 0.707 (text_unet).",
    )
    tile_overlap: int = Field(64, ge=0, le=4096, description="Least overlap between neighbouring tiles, px.")
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Pixel threshold when no calibrated one is stored.")
    loader_workers: int = Field(0, ge=0, le=64, description="Image-decoding worker processes.")
    save_probability: bool = Field(
        False,
        description="Also write <name>.prob.png (probability x 255) per image. Off by default: encoding it cost "
        "~25% of a 1024x768 photo's time on the 2-core CPU (49 ms of PNG deflate at level 6; written at level 1 "
        "when on, ~24 ms); the mask, score and boxes are always written.",
    )
    save_overlay: bool | Literal["auto"] = Field(
        "auto",
        description="Also write <name>.overlay.jpg per image: the mask tinted red, region boxes and the score; "
        "auto = only when a `wm predict` run has fewer than overlay_auto_images images (screening: never).",
    )
    overlay_auto_images: int = Field(
        100, ge=0, le=1_000_000, description="save_overlay auto: runs of fewer images than this get overlays."
    )
    model: str | None = Field(None, description="Checkpoint path or MLflow models:/ URI; None = training output.")
    max_image_megapixels: float = Field(
        200.0, gt=0.0, le=2000.0, description="Decompression-bomb cap: larger images are skipped, megapixels."
    )
    min_region_pixels: int = Field(16, ge=1, description="Mask regions smaller than this are not reported, px.")
    max_regions: int = Field(50, ge=0, le=100000, description="Most region boxes reported per image (largest first).")
    calibration_images: int = Field(16, ge=1, le=1024, description="Images used to calibrate onnx-int8 ranges.")
    queue_size: int = Field(8, ge=1, le=1024, description="Decoded images waiting for the model (bounds memory).")
    global_side: int = Field(
        1024,
        ge=0,
        le=8192,
        description="Working side: images with a longer side are run as a view downscaled to it, px (>= 32); "
        "0 = native tiles only.",
    )
    enlarge_below: int = Field(
        0,
        ge=0,
        le=8192,
        description="Images whose short side is under this run enlarged (bicubic) until it reaches it, never past "
        "global_side on their long side (4x this with global_side 0); their maps come back to the image's size by "
        "area average, px; 0 = off. "
        "Models trained on 512-1024 px samples miss marks on smaller photos (bench/results/tool_marks). The "
        "thresholds `wm evaluate` calibrates hold for the value it ran with (model meta enlarge_below).",
    )
    fusion: Literal["tiles", "global", "refine", "refine_mean", "max", "mean", "auto"] = Field(
        "auto",
        description="How the working view and native resolution combine: global = working view only; refine = "
        "plus native tiles where it fires, fused by max; refine_mean = the same tiles averaged with the working view "
        "(both scales must agree); tiles = native tiles only; max/mean = both everywhere; "
        "auto = the rule calibrated by `wm evaluate` (model meta), else refine.",
    )
    refine_threshold: float = Field(
        0.3, gt=0.0, lt=1.0, description="Rules refine/refine_mean: native tiles run where the working map reaches this probability."
    )
    refine_max_tiles: int = Field(
        8, ge=0, le=4096, description="Rules refine/refine_mean: most native tiles per image (highest working probability first)."
    )
    refine_min_scale: float = Field(
        1.0,
        ge=1.0,
        le=64.0,
        description="Rules refine/refine_mean: only images at least this many times the working side are refined; "
        "a photo shrunk by less keeps its marks' detail in the working view (1 = every larger image).",
    )
    refine_corners: bool = Field(
        False,
        description="Rules refine/refine_mean: the four corner tiles of every refined image run at native "
        "resolution too, whether or not the working map fires there, ahead of the others (credits and AI-generator "
        "labels sit in corners, small enough for the working view to lose). Up to 4 more native tiles per image.",
    )
    draft_decode: bool = Field(
        True,
        description="JPEGs at least twice global_side are decoded reduced (libjpeg DCT scaling) for their working "
        "view; full pixels only where native refinement or an overlay needs them.",
    )
    gate_masks: bool = Field(
        True,
        description="Empty the binary mask (and its regions) of an image whose has-watermark score is below the "
        "calibrated image threshold, so an image called clean gets no mask.",
    )
    tta_flip: bool = Field(False, description="Average every pass with its horizontally flipped pass (2x the cost).")
    max_batch_megapixels: float = Field(
        0.0,
        ge=0.0,
        le=4096.0,
        description="Most model-input megapixels in one batch (tiles or whole images): bounds activation "
        "memory whatever the tile shape; 0 = only the batch size bounds it. params.yaml's 0.3: a 1024 px image "
        "took 3.4 s instead of 4.3 s uncapped, and 8000 px images run one tile per batch.",
    )
    malloc_mmap_threshold_kb: int = Field(
        0,
        ge=0,
        le=32768,
        description="glibc: tensors of at least this many KiB get their own mapping, returned when freed; 0 = "
        "glibc's dynamic default. 1024 = low-memory mode (steady, lower peak RSS; costs page faults); 32768 with a "
        "large trim threshold = fast mode (activations reuse heap pages: no page faults per pass; params.yaml). "
        "Low-memory mode measured 495-536 MB peak from 1024 px to 8000x6000 px, 27% below glibc's default, for "
        "15-52% more time (bench/results/infer-sizes-lowmem).",
    )
    malloc_trim_threshold_kb: int = Field(
        0,
        ge=0,
        le=1 << 22,
        description="glibc: free heap kept before it is returned to the system, KiB; 0 = twice malloc_mmap_threshold_kb.",
    )
    stream_megapixels: float = Field(
        12.0,
        ge=0.0,
        le=2000.0,
        description="Images over this many megapixels are decoded and written strip by strip (libvips), "
        "so memory does not grow with the image; 0 = always decode whole.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> PredictParams:
        if self.min_batch_size > self.max_batch_size:
            raise ValueError("min_batch_size must be <= max_batch_size")
        if 0 < self.global_side < 32:
            raise ValueError(f"global_side ({self.global_side}) must be 0 (off) or >= 32 px")
        if self.global_side == 0 and self.fusion in ("global", "refine", "refine_mean", "max", "mean"):
            raise ValueError(f"fusion {self.fusion!r} needs a global view: set global_side > 0, or fusion tiles/auto")
        if self.tile_overlap * 2 >= self.tile_size:
            raise ValueError(f"tile_overlap ({self.tile_overlap}) must be < tile_size/2 ({self.tile_size // 2})")
        return self


class MineParams(Group):
    threshold: float = Field(
        0.3, gt=0.0, lt=1.0, description="Probability at which a region of a real clean train photo counts as mined."
    )
    min_pixels: int = Field(16, ge=1, description="Smallest mined region, px (at the photo's stored size).")
    max_per_photo: int = Field(5, ge=1, le=1000, description="Most regions kept per photo, largest first.")
    native_views: bool = Field(
        False,
        description="Also mine the native views of the train photos (paths.corpus_native_train): what the model marks "
        "at the detail of a user's large photo, where native refinement looks; regions are written in the stored "
        "photo's coordinates with view 'native'.",
    )


class TrackingParams(Group):
    enabled: bool = Field(True, description="Log runs to MLflow.")
    uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI (env MLFLOW_TRACKING_URI wins).")
    experiment: str = Field("wmdetect", description="MLflow experiment name.")
    registered_model: str = Field("wmdetect", description="Registered model name in the MLflow registry.")
    system_metrics: bool = Field(True, description="Log CPU/memory (and GPU where present) system metrics.")
    probe_timeout_s: int = Field(
        3, ge=1, le=120, description="Timeout of the one reachability probe of an HTTP tracking server, s (no retries)."
    )
    log_model: bool = Field(True, description="Log the evaluated model to MLflow and register it (champion alias).")
    defer_predict: bool = Field(
        True,
        description="`wm predict` records its run locally and a background process (lowest priority) sends it to "
        "MLflow, so a short screening run does not wait for MLflow's ~2-3 s import; inside a pipeline run, or "
        "where MLflow is already loaded, runs are logged inline. Records wait in <paths.cache_dir>/tracking-spool "
        "while the store is unreachable.",
    )


class ScheduleParams(Group):
    retrain_cron: str = Field("0 2 * * *", description="Cron of the nightly retrain deployment (server time zone).")
    screening_cron: str = Field("*/15 * * * *", description="Cron of the periodic inbox screening deployment.")
    screening_model: str = Field(
        "models:/wmdetect@champion", description="Model the screening uses: MLflow URI or checkpoint path."
    )
    screening_out: str = Field("results/screening", description="Output folder of the inbox screening.")
    screening_chunk: int = Field(64, ge=1, le=100000, description="Images per screening task (a unit of work).")
    work_pool: str = Field(
        "wmdetect",
        min_length=1,
        description="Prefect work pool (type process) of the prefect.yaml deployments: `prefect worker start "
        "--pool wmdetect` runs them.",
    )

    @model_validator(mode="after")
    def _crons(self) -> ScheduleParams:
        for name in ("retrain_cron", "screening_cron"):
            if len(getattr(self, name).split()) != 5:
                raise ValueError(f"{name} must be a 5-field cron expression, got {getattr(self, name)!r}")
        return self


class DistributedParams(Group):
    runner: Literal["local", "dask"] = Field(
        "local", description="Task runner of the screening flow: local (threads in this process) or dask."
    )
    dask_address: str | None = Field(
        None, description="Dask scheduler to connect to (tcp://HOST:PORT); None = start a LocalCluster."
    )
    dask_workers: int = Field(2, ge=1, le=256, description="Worker processes of the LocalCluster (no dask_address).")
    threads_per_worker: int = Field(
        0, ge=0, le=512, description="Torch threads per Dask worker process; 0 = host cores / its worker processes."
    )
    connect_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0, description="How long to try reaching dask_address before giving up, s."
    )

    @model_validator(mode="after")
    def _address(self) -> DistributedParams:
        addr = self.dask_address
        if addr is not None and (not addr.strip() or any(c.isspace() for c in addr) or ":" not in addr):
            raise ValueError(f"dask_address must look like tcp://HOST:PORT (or null for a LocalCluster), got {addr!r}")
        return self


TuneKnob = Literal[
    "threads", "precision", "train_channels_last", "train_micro_batch", "train_compile", "loader",
    "predict_backend", "predict_batch",
]  # fmt: skip
TUNE_KNOBS: tuple[str, ...] = typing.get_args(TuneKnob)


class TuneParams(Group):
    apply: bool = Field(
        False, description="Merge the tuned params file (tune.output) after params.yaml when it exists (an explicit "
        "opt-in: -S tune.apply=true, or name the file with --params-extra); false = ignore it.",
    )  # fmt: skip
    output: str = Field(
        "params-tuned.yaml", description="Tuned params file `wm tune` writes; relative to the params file's folder."
    )
    knobs: list[TuneKnob] = Field(
        default_factory=lambda: list(TUNE_KNOBS), description="Settings `wm tune` measures and chooses."
    )
    seconds_per_candidate: float = Field(
        3.0, ge=0.5, le=120.0, description="Measuring time of one candidate setting after its warm-up, s."
    )
    max_f1_delta: float = Field(
        0.01, ge=0.0, le=1.0, description="Largest F1 change vs fp32 torch a chosen setting may cause (0..1)."
    )
    min_gain: float = Field(
        0.05, ge=0.0, le=1.0, description="A candidate replaces the current setting only if this much faster (0.05 = 5%)."
    )
    image_side: int = Field(256, ge=32, le=4096, description="Side of the images inference candidates run on, px.")
    images: int = Field(8, ge=1, le=1024, description="Images per inference measurement (and per quality check).")


class Params(Group):
    base: BaseParams = Field(default_factory=BaseParams)
    paths: PathsParams = Field(default_factory=PathsParams)
    prepare: PrepareParams = Field(default_factory=PrepareParams)
    model: ModelParams = Field(default_factory=ModelParams)
    loader: LoaderParams = Field(default_factory=LoaderParams)
    train: TrainParams = Field(default_factory=TrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    mine: MineParams = Field(default_factory=MineParams)
    predict: PredictParams = Field(default_factory=PredictParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)
    schedule: ScheduleParams = Field(default_factory=ScheduleParams)
    distributed: DistributedParams = Field(default_factory=DistributedParams)
    tune: TuneParams = Field(default_factory=TuneParams)
    _sources: list[str] = PrivateAttr(default_factory=list)  # set by load_params

    @property
    def merged_files(self) -> list[str]:
        """The params files merged into these values, in order ("overrides" for -S), as load_params found them."""
        return list(self._sources)

    def flat(self) -> dict[str, Any]:
        """All parameters as a flat {"group.key": value} dict (for MLflow)."""
        return flatten(self.model_dump(mode="json"))


# --------------------------------------------------------------------------- loading


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted}: {part} is not a group")
        node = nxt
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse `group.key=value` (value as YAML, like `dvc exp run -S`)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected group.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    return key, yaml.safe_load(raw) if raw.strip() else None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of groups")
    return data


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_params(
    path: str | Path = DEFAULT_PARAMS,
    overrides: list[str] | dict[str, Any] | None = None,
    extra_files: list[str | Path] | None = None,
    tuned: bool = True,
) -> Params:
    """Load and validate `path`, the tuned file, extra params files, then `key=value` overrides (in that order).

    The tuned file (`tune.output`, written by `wm tune`, relative to `path`'s folder) is merged
    only when it exists, `tuned` is true and `tune.apply` is true (as the other layers set it).
    """
    path = Path(path)
    layers = [(str(path), _read_yaml(path))] + [(str(e), _read_yaml(Path(e))) for e in extra_files or []]
    items = list(overrides.items()) if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    tuned_file = tuned_params_path(path, _layered(layers, items)) if tuned else None
    tuned_tree = _read_tuned(tuned_file) if tuned_file is not None else {}
    if tuned_tree:  # an empty (placeholder) file is no layer: errors need not name it
        layers.insert(1, (str(tuned_file), tuned_tree))
    sources = [name for name, _ in layers] + (["overrides"] if items else [])
    params = validate(_layered(layers, items), " + ".join(sources))
    params._sources = sources
    return params


def _layered(layers: list[tuple[str, dict[str, Any]]], items: list[tuple[str, Any]]) -> dict[str, Any]:
    """The params files merged in order, then the dotted overrides set."""
    tree: dict[str, Any] = {}
    for _name, layer in layers:
        tree = merge(tree, layer)
    for key, value in items:
        _set_dotted(tree, key, value)
    return tree


def tuned_params_path(params_path: str | Path, tree: dict[str, Any]) -> Path | None:
    """The tuned params file that applies to `tree` (raw merged params), or None (absent or tune.apply false)."""
    tune = tree.get("tune") if isinstance(tree.get("tune"), dict) else {}
    if not tune.get("apply", TuneParams.model_fields["apply"].default):
        return None
    name = tune.get("output") or TuneParams.model_fields["output"].default
    candidate = Path(params_path).parent / str(name)
    return candidate if candidate.is_file() else None


def _read_tuned(path: Path) -> dict[str, Any]:
    tree = _read_yaml(path)
    if "tune" in tree:  # tune.apply inside the file it switches on would be circular
        raise ConfigError(f"{path}: the tuned params file must not set the tune group; set it in params.yaml")
    if tree:
        _log_tuned_once(path, tree)
    return tree


_tuned_logged: set[str] = set()


def _log_tuned_once(path: Path, tree: dict[str, Any]) -> None:
    """Say once per process which keys the tuned file overrides (a silent override would surprise)."""
    if str(path) in _tuned_logged:
        return
    _tuned_logged.add(str(path))
    keys = ", ".join(sorted(flatten(tree)))
    logging.getLogger("wmdetect").info("%s applied (tune.apply: true): %s", path, keys)


def validate(tree: dict[str, Any], source: str = "params") -> Params:
    try:
        return Params.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_error(err, source, Params)) from None
