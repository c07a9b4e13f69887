"""PatentLMM training, stage 1 (projector) or stage 2 (LoRA + projector), on DeepSpeed ZeRO.

Launched outside Dagster by the DeepSpeed launcher (or torchrun), one process per GPU, or one
process on a CPU machine (gloo):

    deepspeed --num_gpus 8 -m training.describe.train --config run.json
    torchrun --nproc_per_node 1 -m training.describe.train --config run.json      # CPU

`training.describe.distributed.launch_command` builds these. The script reads top to bottom: config, distributed
init, model (frozen for the stage), data, optimizer and schedule, DeepSpeed engine, resume, loop
(validation at each epoch end, checkpoints every N steps and at epoch end), final HF model.

Resume is automatic: if `out_dir/checkpoints/latest` exists the run continues from it, with the
optimizer, scheduler, RNG states and data-loader position (epoch, micro-batch) restored, so a
killed run loses at most the steps since the last checkpoint and reads the same batches again.

Metrics go, on rank 0, to `out_dir/metrics.jsonl`, to MLflow when `mlflow_run_id` is set
(tracking URI from MLFLOW_TRACKING_URI) and to Dagster Pipes when launched by Dagster.
Errors are raised, never swallowed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from patent_assets.records import replace_path
from training.describe.configs import StageConfig
from training.job import reporting

DS_CONFIGS = Path(__file__).resolve().parent / "ds_configs"
CHECKPOINTS = "checkpoints"
RNG_FILE = "rng_state_rank{rank}.pt"


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class TrainConfig(StageConfig):
    """Everything one training run needs; loaded from a JSON file (`TrainConfig.from_json`).

    How the stage trains is `StageConfig`'s fields, inherited (`training.describe.plans` passes a
    stage's settings through as they are); what it trains on and from are the fields below.
    """

    train_json: str  # llava_json/{brief,detailed}_train.json
    out_dir: str
    val_json: str | None = None
    images_root: str | None = (
        None  # a folder of the entries' "image" files, or a figures.jsonl (None: next to the JSON)
    )
    # Model inputs: stage 1 builds from components; stage 2 starts from stage 1's out_dir/model.
    tokenizer_dir: str | None = None  # has lm/ and ocr/ (training.describe.tokenizer)
    encoder_dir: str | None = None
    lm_dir: str | None = None
    lora_adapter_dir: str | None = None  # e.g. PatentLLaMA, loaded into the LM at build time
    init_model_dir: str | None = None
    model_preset: str | None = None  # random-initialised from training.describe.configs.PRESETS (e.g. "tiny")
    ocr_copy: bool = False  # a model built from components gets the OCR pointer (ModelPreset.ocr_copy)
    ocr_copy_read: bool = False  # and its selective read (ModelPreset.ocr_copy_read)
    ocr_copy_word: bool = False  # and its word gate (ModelPreset.ocr_copy_word)
    ocr_copy_pair: bool = False  # and its read by token pairs (ModelPreset.ocr_copy_pair)
    max_length: int = 512
    # Bookkeeping.
    checkpoint_every_steps: int = 100  # optimizer steps; checkpoints are also written at each epoch end
    keep_checkpoints: int = 2
    log_every_steps: int = 1
    seed: int = 42
    num_workers: int = 0
    # built dataset items kept in memory (per process and loader worker); 0: rebuild every time
    item_cache_mb: int = 512
    mlflow_run_id: str | None = None
    inputs: str = "full"  # an ablation trains on "image_blind" or "no_ocr" inputs (training.describe.data)

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            self.init_model_dir is None
            and (self.encoder_dir is None or self.lm_dir is None)
            and not self.model_preset
        ):
            raise ValueError(
                "give init_model_dir, or encoder_dir and lm_dir (and tokenizer_dir), or model_preset"
            )
        if self.init_model_dir is not None and self.lora_adapter_dir is not None:
            raise ValueError(
                "lora_adapter_dir applies when building from components, not with init_model_dir"
            )
        if self.checkpoint_every_steps < 1:
            raise ValueError("checkpoint_every_steps must be >= 1")

    @classmethod
    def from_json(cls, path: Path) -> TrainConfig:
        raw = json.loads(Path(path).read_text())
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:  # a typo in a key must not silently fall back to a default
            raise ValueError(f"{path}: unknown TrainConfig keys {sorted(unknown)}")
        return cls(**raw)

    def to_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))


# ----------------------------------------------------------------------------------------------
# Distributed helpers
# ----------------------------------------------------------------------------------------------
def init_distributed() -> None:
    """A process group through DeepSpeed: nccl on CUDA, gloo (its CPU accelerator) otherwise."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if "RANK" not in os.environ:  # plain `python -m training.describe.train`: a world of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
    if torch.cuda.is_available():  # before the process group: nccl binds to the current device
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())


def is_main() -> bool:
    return dist.get_rank() == 0


def log(message: str) -> None:
    if is_main():
        print(f"[train] {message}", flush=True)


def bf16_enabled(setting: bool | str) -> bool:
    supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if setting == "auto":
        return supported
    if setting and not supported:
        raise ValueError("bf16=true but this machine has no CUDA device with bf16 support")
    return bool(setting)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------------------------
# Model and data (the only places that know PatentLMM)
# ----------------------------------------------------------------------------------------------
def build_model(cfg: TrainConfig) -> Any:
    """PatentLMM for the stage: from stage 1's output, from component checkpoints, or a random preset."""
    from training.describe import modeling
    from training.describe.configs import PRESETS

    dtype = torch.bfloat16 if bf16_enabled(cfg.bf16) else None  # a 7B model never exists in fp32
    if cfg.init_model_dir is not None:  # stage 2 continues from stage 1's out_dir/model
        model = modeling.PatentLMMForConditionalGeneration.from_pretrained(
            cfg.init_model_dir, local_files_only=True, dtype=dtype
        )
    elif cfg.encoder_dir is not None and cfg.lm_dir is not None:
        model = modeling.PatentLMMForConditionalGeneration.from_components(
            cfg.encoder_dir,
            cfg.lm_dir,
            tokenizer_dir(cfg),
            cfg.lora_adapter_dir,
            dtype=dtype,
            ocr_copy=cfg.ocr_copy,
            ocr_copy_read=cfg.ocr_copy_read,
            ocr_copy_word=cfg.ocr_copy_word,
            ocr_copy_pair=cfg.ocr_copy_pair,
        )
    else:
        model = modeling.build_model(PRESETS[cfg.model_preset], tokenizer_dir(cfg))
    if cfg.stage == 2:  # keeps a LoRA already there (PatentLLaMA) when r and alpha agree
        model = modeling.apply_lora(
            model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules
        )
    modeling.freeze_for_stage(model, cfg.stage)  # stage 1: projector; stage 2: LoRA + projector
    return model


def tokenizer_dir(cfg: TrainConfig) -> Path:
    """`tokenizer_dir`, or the tokenizer that stage 1 copied next to its model."""
    if cfg.tokenizer_dir is not None:
        return Path(cfg.tokenizer_dir)
    if cfg.init_model_dir is not None and (Path(cfg.init_model_dir) / "tokenizer").is_dir():
        return Path(cfg.init_model_dir) / "tokenizer"
    raise ValueError("no tokenizer: set tokenizer_dir (or init_model_dir with a tokenizer/ folder)")


def build_datasets(cfg: TrainConfig, model: Any) -> tuple[Dataset, Dataset | None, Any]:
    """(train, val or None, collator); the OCR length and image placeholders come from the model."""
    from training.describe.data import PatentLMMCollator, PatentLMMDataset, image_paths_from_figures
    from training.describe.tokenizer import load_lm_tokenizer, load_ocr_processor

    tokenizer = load_lm_tokenizer(tokenizer_dir(cfg))
    processor = load_ocr_processor(tokenizer_dir(cfg))
    images: Path | dict[str, Path] | None = None
    if cfg.images_root is not None:
        root = Path(cfg.images_root)
        images = image_paths_from_figures(root) if root.suffix == ".jsonl" else root

    def dataset(path: str, renumber_share: float = 0.0) -> Dataset:
        data = PatentLMMDataset(
            Path(path),
            images,
            processor,
            tokenizer,
            cfg.max_length,
            model.config.ocr_max_tokens,
            cfg.inputs,
            cache_bytes=cfg.item_cache_mb * 2**20,
            renumber_share=renumber_share,
            seed=cfg.seed,
        )
        if data.rejected:
            log(f"{path}: {len(data.rejected)} entries left out, e.g. {data.rejected[0]}")
        if len(data) == 0:
            raise ValueError(f"{path}: no usable entries ({len(data.rejected)} left out)")
        return data

    collator = PatentLMMCollator(
        tokenizer, model.config.num_image_features, cfg.max_length, image_token_id=model.config.image_token_id
    )
    train = dataset(cfg.train_json, cfg.renumber_share)
    return train, dataset(cfg.val_json) if cfg.val_json else None, collator


def param_groups(model: Any, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The projector at projector_lr, the LoRA (stage 2) at lr; named for the lr metrics."""
    from training.describe import modeling

    groups = modeling.param_groups(model, cfg.stage, cfg.lr, cfg.projector_lr, cfg.weight_decay)
    for group, name in zip(groups, ("projector", "lora"), strict=False):
        group["name"] = name
    return groups


def deepspeed_config(cfg: TrainConfig) -> dict[str, Any]:
    """The ZeRO JSON of `ds_configs/`, its "auto" values resolved from the TrainConfig."""
    ds = json.loads((DS_CONFIGS / f"zero{cfg.zero_stage}.json").read_text())
    ds["train_micro_batch_size_per_gpu"] = cfg.per_device_batch
    ds["gradient_accumulation_steps"] = cfg.grad_accum
    ds["bf16"] = {"enabled": bf16_enabled(cfg.bf16)}
    return ds


# ----------------------------------------------------------------------------------------------
# Metrics: metrics.jsonl, MLflow, Dagster Pipes (rank 0 only)
# ----------------------------------------------------------------------------------------------
class MetricsSink:
    """Where rank 0's numbers and events go: `metrics.jsonl` always; the MLflow run through
    `training.tracking` and Dagster Pipes through `training.job`'s reporter when there are any.
    The run's life (started, FINISHED or FAILED) belongs to whoever created it: the asset."""

    def __init__(self, out_dir: Path, mlflow_run_id: str | None, stack: ExitStack) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.run_id = mlflow_run_id  # tracking URI from MLFLOW_TRACKING_URI
        if mlflow_run_id:
            from training import tracking  # MLflow loads only when there is a run to log to

            self.tracking = tracking
        self.report = stack.enter_context(reporting())

    def metrics(self, step: int, values: Mapping[str, float], **extra: Any) -> None:
        record = {"step": step, **values, **extra, "time": time.time()}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.run_id:
            self.tracking.log_metrics(self.run_id, values, step=step)
        if self.report.pipes is not None:
            self.report.log(json.dumps({"step": step, **values}))

    def event(self, message: str, **extra: Any) -> None:
        print(f"[train] {message}", flush=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"event": message, **extra, "time": time.time()}) + "\n")
        if self.report.pipes is not None:
            self.report.log(message)

    def materialization(self, metadata: Mapping[str, Any]) -> None:
        self.report.materialize(metadata)


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------
def latest_tag(ckpt_dir: Path) -> str | None:
    latest = ckpt_dir / "latest"
    return latest.read_text().strip() if latest.is_file() else None


def save_checkpoint(engine: Any, ckpt_dir: Path, position: dict[str, Any], keep: int) -> str:
    """Engine state plus data position; RNG per rank, written before `latest` moves to the tag."""
    tag = f"step{position['global_step']}"
    (ckpt_dir / tag).mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), ckpt_dir / tag / RNG_FILE.format(rank=dist.get_rank()))
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=position)  # collective; `latest` last
    dist.barrier()
    if is_main():
        tags = sorted(
            (p for p in ckpt_dir.glob("step*") if p.is_dir()), key=lambda p: int(p.name.removeprefix("step"))
        )
        for old in tags[:-keep]:
            if old.name != tag:
                shutil.rmtree(old)
    return tag


def load_checkpoint(engine: Any, ckpt_dir: Path) -> dict[str, Any] | None:
    tag = latest_tag(ckpt_dir)
    if tag is None:
        return None
    load_path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if load_path is None:
        raise RuntimeError(f"{ckpt_dir}: `latest` names {tag!r} but DeepSpeed could not load it")
    rng_file = ckpt_dir / tag / RNG_FILE.format(rank=dist.get_rank())
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return {**client_state, "tag": tag}


# ----------------------------------------------------------------------------------------------
# Final model
# ----------------------------------------------------------------------------------------------
@contextmanager
def gathered(engine: Any, zero_stage: int) -> Iterator[None]:
    """Full parameters on every rank for saving (ZeRO-3 partitions them)."""
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
            yield
    else:
        yield


def save_final_model(engine: Any, cfg: TrainConfig, out_dir: Path) -> Path:
    """out_dir/model in HF format with the tokenizer in model/tokenizer, and out_dir/lora_adapter in
    stage 2; each written to a temporary directory, then renamed into place."""
    from training.describe.modeling import save_lora_adapter

    final = out_dir / "model"
    with gathered(engine, cfg.zero_stage):
        if is_main():
            model = engine.module
            tmp = out_dir / f".model.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp)  # LoRA included: config.lora re-injects it on load
            shutil.copytree(tokenizer_dir(cfg), tmp / "tokenizer")
            if model.config.lora:
                adapter_tmp = out_dir / f".lora_adapter.tmp-{os.getpid()}"
                shutil.rmtree(adapter_tmp, ignore_errors=True)
                save_lora_adapter(model, adapter_tmp)
                replace_path(adapter_tmp, out_dir / "lora_adapter")
            replace_path(tmp, final)
    dist.barrier()
    return final


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate(engine: Any, loader: DataLoader) -> float:
    """Token-weighted mean loss over the whole validation set, reduced over ranks."""
    engine.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=engine.device)
    for batch in loader:
        batch = to_device(batch, engine.device)
        loss = engine(**batch).loss
        n_targets = (batch["labels"][:, 1:] != -100).sum()  # the LM predicts token t+1 from t
        totals += torch.stack([loss.double() * n_targets, n_targets.double()])
    dist.all_reduce(totals)
    engine.train()
    return (totals[0] / totals[1].clamp(min=1)).item()


# ----------------------------------------------------------------------------------------------
# Main: setup, the step loop (validation, checkpoints), the final model
# ----------------------------------------------------------------------------------------------
@dataclass
class Data:
    """The training data as the loop walks it: each rank reads its shard, and an epoch is a whole
    number of optimizer steps (a partial accumulation is dropped)."""

    train_set: Dataset
    val_set: Dataset | None
    collate: Any
    sampler: DistributedSampler
    micro_per_epoch: int  # micro-batches per rank and epoch
    steps_per_epoch: int
    total_steps: int  # every epoch's steps, or max_steps when fewer


@dataclass
class Loop:
    """What the step loop reads and moves: the engine, its data and rank 0's sink (None on the
    others); where the last checkpoint resumes (`position`), the optimizer step, the latest losses."""

    cfg: TrainConfig
    engine: Any
    optimizer: torch.optim.Optimizer  # the engine's: its groups' learning rates are logged
    data: Data
    ckpt_dir: Path
    sink: MetricsSink | None
    position: dict[str, int] = field(
        default_factory=lambda: {"epoch": 0, "micro_in_epoch": 0, "global_step": 0}
    )
    global_step: int = 0
    train_loss: float = float("nan")
    val_loss: float | None = None


@dataclass
class Window:
    """The micro-batches since the last logged step: their summed loss, count and tokens, and since when."""

    loss: float = 0.0
    micro: int = 0
    tokens: int = 0
    start: float = field(default_factory=time.perf_counter)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """One stage's run: setup (distributed, model, data, DeepSpeed engine), resume, the step loop
    (validation at each epoch end, checkpoints on the way), the final HF model. Returns the summary."""
    init_distributed()
    out_dir = Path(cfg.out_dir)
    write_config(cfg, out_dir)
    seed_everything(cfg.seed)
    model = build_trainable_model(cfg)
    data = build_data(cfg, model)
    engine, optimizer = build_engine(cfg, model, data.total_steps)

    with ExitStack() as stack:
        sink = MetricsSink(out_dir, cfg.mlflow_run_id, stack) if is_main() else None
        loop = Loop(cfg, engine, optimizer, data, out_dir / CHECKPOINTS, sink)
        resume(loop)
        engine.train()
        while loop.global_step < data.total_steps:
            train_epoch(loop)
        return finish(loop, out_dir)


def write_config(cfg: TrainConfig, out_dir: Path) -> None:
    """Rank 0 creates `out_dir` and records the config in it; every rank waits for that."""
    if is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        cfg.to_json(out_dir / "train_config.json")
    dist.barrier()


def build_trainable_model(cfg: TrainConfig) -> Any:
    """The stage's model, frozen for the stage (`build_model`), gradient checkpointing on when asked."""
    model = build_model(cfg)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    log(f"stage {cfg.stage}: {n_trainable:,} of {n_total:,} parameters trainable")
    return model


def build_data(cfg: TrainConfig, model: Any) -> Data:
    """The datasets and each rank's sampler; the steps of an epoch and of the run."""
    train_set, val_set, collate = build_datasets(cfg, model)
    sampler = train_sampler(train_set, cfg)
    steps_per_epoch = len(sampler) // cfg.per_device_batch // cfg.grad_accum
    if steps_per_epoch == 0:
        raise ValueError(
            f"{cfg.train_json}: {len(train_set)} examples cannot fill one optimizer step of "
            f"{dist.get_world_size()} ranks x {cfg.per_device_batch} x grad_accum {cfg.grad_accum}"
        )
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    micro_per_epoch = steps_per_epoch * cfg.grad_accum  # a partial accumulation is dropped
    return Data(train_set, val_set, collate, sampler, micro_per_epoch, steps_per_epoch, total_steps)


def build_engine(cfg: TrainConfig, model: Any, total_steps: int) -> tuple[Any, torch.optim.Optimizer]:
    """The DeepSpeed engine over AdamW (a torch one: a config-declared one JIT-compiles FusedAdam)
    and a cosine schedule with warmup; returns it and the optimizer."""
    import deepspeed
    from transformers import get_cosine_schedule_with_warmup

    optimizer = torch.optim.AdamW(param_groups(model, cfg), betas=(0.9, 0.999))
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lambda opt: get_cosine_schedule_with_warmup(opt, warmup, total_steps),
        config=deepspeed_config(cfg),
    )
    return engine, optimizer


def resume(loop: Loop) -> None:
    """Continue from the latest checkpoint, if any: engine, optimizer, schedule, RNG states and the
    data position restored."""
    restored = load_checkpoint(loop.engine, loop.ckpt_dir)
    if restored is not None:
        loop.position = {k: restored[k] for k in loop.position}
        if loop.sink:
            loop.sink.event(
                f"resumed from checkpoint {restored['tag']}: epoch {loop.position['epoch']}, "
                f"micro-batch {loop.position['micro_in_epoch']}, step {loop.position['global_step']}",
                **loop.position,
            )
    elif loop.sink:
        loop.sink.event(
            f"starting from scratch: {loop.data.total_steps} steps, {loop.data.steps_per_epoch} per epoch"
        )
    loop.global_step = loop.position["global_step"]


def train_epoch(loop: Loop) -> None:
    """The epoch `loop.position` is in, from where it left it: each micro-batch forward and backward,
    and at each optimizer step its metrics when due, then the epoch's validation and checkpoint, or
    a checkpoint every `checkpoint_every_steps`. Returns at the epoch's end or the run's last step."""
    cfg, data = loop.cfg, loop.data
    epoch, skip = loop.position["epoch"], loop.position["micro_in_epoch"]
    loader = epoch_loader(cfg, data, epoch, skip)
    window = Window()
    for micro, batch in enumerate(loader, start=skip):
        micro_step(loop.engine, batch, window)
        if (micro + 1) % cfg.grad_accum:
            continue
        loop.global_step += 1
        end_of_epoch = micro + 1 == data.micro_per_epoch
        if (
            loop.global_step % cfg.log_every_steps == 0
            or end_of_epoch
            or loop.global_step == data.total_steps
        ):
            log_train_metrics(loop, window, epoch + (micro + 1) / data.micro_per_epoch)
            window = Window()
        if end_of_epoch:
            end_epoch(loop, epoch)
            return
        if loop.global_step % cfg.checkpoint_every_steps == 0 or loop.global_step == data.total_steps:
            checkpoint_at(
                loop, {"epoch": epoch, "micro_in_epoch": micro + 1, "global_step": loop.global_step}
            )
        if loop.global_step >= data.total_steps:
            return


def epoch_loader(cfg: TrainConfig, data: Data, epoch: int, skip: int) -> DataLoader:
    """This rank's micro-batches of `epoch` in the order of an uninterrupted run; on resume the
    first `skip` are skipped by index, without loading them."""
    data.sampler.set_epoch(epoch)
    indices = list(data.sampler)[skip * cfg.per_device_batch : data.micro_per_epoch * cfg.per_device_batch]
    return DataLoader(
        data.train_set,
        batch_size=cfg.per_device_batch,
        sampler=indices,
        collate_fn=data.collate,
        num_workers=cfg.num_workers,
    )


def micro_step(engine: Any, batch: Mapping[str, Any], window: Window) -> None:
    """Forward and backward of one micro-batch, its loss and tokens added to the window."""
    batch = to_device(batch, engine.device)
    loss = engine(**batch).loss
    engine.backward(loss)
    engine.step()  # DeepSpeed steps optimizer and schedule at accumulation boundaries
    window.loss += loss.item()
    window.micro += 1
    window.tokens += int(batch["attention_mask"].sum())


def log_train_metrics(loop: Loop, window: Window, epoch: float) -> None:
    """The window's mean loss over all ranks (every rank takes part), its throughput and the
    learning rates, at the current step."""
    stats = torch.tensor(
        [window.loss, window.micro, window.tokens], dtype=torch.float64, device=loop.engine.device
    )
    dist.all_reduce(stats)  # over ranks: mean loss, total tokens
    loop.train_loss = (stats[0] / stats[1]).item()
    elapsed = time.perf_counter() - window.start
    if loop.sink:
        loop.sink.metrics(
            loop.global_step,
            {
                "train/loss": loop.train_loss,
                **{f"train/lr_{g['name']}": g["lr"] for g in loop.optimizer.param_groups},
                "train/epoch": epoch,
                "train/tokens_per_s": stats[2].item() / max(elapsed, 1e-9),
                "train/samples_per_s": stats[1].item() * loop.cfg.per_device_batch / max(elapsed, 1e-9),
            },
        )


def end_epoch(loop: Loop, epoch: int) -> None:
    """The validation loss over the whole validation set, then a checkpoint at the next epoch's start."""
    if loop.data.val_set is not None:
        loop.val_loss = evaluate(loop.engine, val_loader(loop.data.val_set, loop.data.collate, loop.cfg))
        if loop.sink:
            loop.sink.metrics(loop.global_step, {"val/loss": loop.val_loss}, epoch=epoch + 1)
    position = {"epoch": epoch + 1, "micro_in_epoch": 0, "global_step": loop.global_step}
    checkpoint_at(loop, position, f" (end of epoch {epoch + 1})")


def checkpoint_at(loop: Loop, position: dict[str, int], note: str = "") -> None:
    """A checkpoint of the run at `position`, from where a resumed run continues."""
    loop.position = position
    tag = save_checkpoint(loop.engine, loop.ckpt_dir, position, loop.cfg.keep_checkpoints)
    if loop.sink:
        loop.sink.event(f"checkpoint {tag}{note}", **position)


def finish(loop: Loop, out_dir: Path) -> dict[str, Any]:
    """The final HF model, and the run's summary, reported by rank 0."""
    final = save_final_model(loop.engine, loop.cfg, out_dir)
    summary = {
        "final_train_loss": loop.train_loss,
        "final_val_loss": loop.val_loss,
        "steps": loop.global_step,
        "checkpoint": str(loop.ckpt_dir / (latest_tag(loop.ckpt_dir) or "")),
        "model_dir": str(final),
    }
    if loop.sink:
        loop.sink.event(f"done: model in {final}", **summary)
        loop.sink.materialization({k: v for k, v in summary.items() if v is not None})
    return summary


def train_sampler(train_set: Any, cfg: TrainConfig) -> DistributedSampler:
    """Each rank's share of an epoch: a permutation, or with `patent_balance` draws that give the
    figures of large patents less weight each (a grant of 62 sheets would otherwise set the style)."""
    from training.describe.data import WeightedDistributedSampler, patent_balanced_weights

    if not cfg.patent_balance and not cfg.patent_cap:
        return DistributedSampler(train_set, shuffle=True, seed=cfg.seed, drop_last=True)
    ids = [str(entry.get("id", "")) for entry in train_set.entries]
    weights = patent_balanced_weights(ids, cfg.patent_balance, cfg.patent_cap)
    return WeightedDistributedSampler(train_set, weights, seed=cfg.seed, drop_last=True)


def val_loader(val_set: Dataset, collate: Any, cfg: TrainConfig) -> DataLoader:
    sampler = DistributedSampler(val_set, shuffle=False)  # pads with repeats to equal shards
    return DataLoader(
        val_set,
        batch_size=cfg.per_device_batch,
        sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.num_workers,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="TrainConfig JSON file")
    # The deepspeed launcher appends --local_rank; torchrun sets LOCAL_RANK instead.
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    train(TrainConfig.from_json(args.config))


if __name__ == "__main__":
    main()
