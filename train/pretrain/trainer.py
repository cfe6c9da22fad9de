"""The DeepSpeed MLM :class:`Trainer`: setup, optimizer steps, logging, validation and the
training loop (its checkpoints: ``train.pretrain.checkpoints``)."""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cloud import CloudForMaskedLM, count_parameters
from train import checkpoint as ckpt
from train.common.batching import is_packed, sequence_lengths
from train.common.schedule import lr_factor
from train.distributed import (
    DistInfo,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    broadcast_object,
    build_engine,
    deepspeed_config,
    init_distributed,
    resolve_precision,
)
from train.masking import MLMMasker, make_generator, mask_seed
from train.metrics import MetricsWriter, device_peak_flops, mfu, peak_memory_bytes
from train.pretrain.checkpoints import Progress, TrainerCheckpoints
from train.pretrain.config import SUMMARY_FILE, PretrainConfig, build_optimizer, model_config
from train.pretrain.evaluation import (
    evaluate_batches,
    model_inputs,
    sdpa_context,
    validation_batches,
)

logger = logging.getLogger("train.pretrain")


def _finite_or_none(value: float) -> float | None:
    """JSON has no nan: an undefined figure is written as null."""
    return value if math.isfinite(value) else None


def empty_interval() -> dict[str, float]:
    """Per-rank counters of one logging interval, before any step."""
    return {"loss": 0.0, "steps": 0, "tokens": 0, "sequences": 0, "sq": 0.0, "positions": 0}


class Trainer(TrainerCheckpoints):
    """DeepSpeed MLM trainer: small stateful steps, driven by :meth:`fit`."""

    def __init__(self, config: PretrainConfig, *, resume: bool = False) -> None:
        from train.data import read_manifest

        # Before any process group or launcher variable: a run without a corpus is refused
        # as cheaply as a bad config key.
        read_manifest(config.data.corpus)
        self.config = config
        self.resume = resume
        self.dist: DistInfo = init_distributed(
            config.system.dist_backend, config.logging.deepspeed_log_level
        )
        from train.threads import apply_threads

        self.threads = apply_threads(config.system.cpu_threads)
        logger.info("rank %d: %s", self.dist.rank, self.threads.describe())
        if self.dist.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.precision = resolve_precision(config.system.precision, self.dist.device)
        self.progress = Progress()
        self.run_dir = Path(config.run_dir)
        self.checkpoint_dir = config.checkpoint_dir
        self._pending = empty_interval()
        self._pending_loss = torch.zeros((), dtype=torch.float64, device=self.dist.device)
        self._interval_time = 0.0
        self.last_val: dict[str, float] = {}
        self.last_val_se = math.nan
        self.first_val: dict[str, float] = {}
        self.last_train_loss = float("nan")
        self.grad_norm: float | None = None
        self.writer: MetricsWriter | None = None
        self.bar: Any = None

    # ---------------------------------------------------------------- setup

    def setup(self) -> None:
        if not self.resume:
            self.refuse_existing_checkpoints()
        self.build_tokenizer()
        self.build_model()
        self.build_data()
        self.build_engine()
        if self.resume:
            self.load()
        self.setup_logging()

    def refuse_existing_checkpoints(self) -> None:
        """A fresh run must not overwrite another run's checkpoints and history."""
        latest = ckpt.read_latest(self.checkpoint_dir) if self.dist.is_main else None
        latest = broadcast_object(latest)
        if latest is not None:
            raise FileExistsError(
                f"{self.checkpoint_dir} already holds checkpoint {latest}: pass --resume "
                "(resume=True) to continue that run, or choose another run_dir"
            )

    def build_tokenizer(self) -> None:
        from tokenizer import ScopeTokenizer

        self.tokenizer = ScopeTokenizer(max_length=self.config.data.max_length)
        self.masker = MLMMasker.from_tokenizer(self.tokenizer, self.config.masking)

    def build_model(self) -> None:
        seed = self.config.train.seed
        # Same seed on every rank: ZeRO-3 partitions each rank's own replica, so the replicas
        # must be identical from the start.
        self._seed_all(seed)
        self.model_config = model_config(
            self.config, self.tokenizer.vocab_size, self.tokenizer.pad_id
        )
        self.model = CloudForMaskedLM(self.model_config)
        self.model.encoder.compute_padded = self.config.system.padded_compute
        if self.model_config.token_features is not None:
            self.model.set_token_features(self.tokenizer.tokens)
        self.n_params = count_parameters(self.model_config)
        self.n_params_non_embedding = count_parameters(self.model_config, embedding=False)
        # From here on each rank draws its own dropout masks.
        self._seed_all(mask_seed(seed, 0xD0, self.dist.rank))

    @staticmethod
    def _seed_all(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % (1 << 32))
        torch.manual_seed(seed)

    def build_data(self) -> None:
        from train.data import CorpusStream, split_train_val

        data = self.config.data
        train_paths, val_paths = split_train_val(data.corpus, val_shards=data.val_shards)
        self.train_stream = CorpusStream(
            list(train_paths),
            tokenizer=self.tokenizer,
            batch_size=data.micro_batch_size,
            variant=data.variant,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            num_workers=data.num_workers,
            seed=self.config.train.seed,
            shuffle_buffer=data.shuffle_buffer,
            max_length=data.max_length,
            epochs=None,
            drop_last=True,
            tokens_per_batch=data.tokens_per_batch,
        )
        self.val_batches = validation_batches(self.config, self.tokenizer, val_paths)
        self._train_iter: Iterator[dict[str, torch.Tensor]] | None = None

    def build_engine(self) -> None:
        cfg = self.config
        self.model.to(self.dist.device)
        optimizer = build_optimizer(self.model, cfg.optim, self.dist.device)
        schedule = lambda step: lr_factor(  # noqa: E731
            step,
            warmup_steps=cfg.optim.warmup_steps,
            max_steps=cfg.train.max_steps,
            min_ratio=cfg.optim.min_lr_ratio,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        ds_config = deepspeed_config(
            micro_batch_size=cfg.data.micro_batch_size,
            grad_accum_steps=cfg.train.grad_accum_steps,
            world_size=self.dist.world_size,
            zero_stage=cfg.system.zero_stage,
            precision=self.precision,
            grad_clip=cfg.optim.grad_clip,
            extra=cfg.system.deepspeed,
        )
        self.engine = build_engine(
            self.model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=ds_config,
            compile_model=cfg.system.compile,
        )
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.peak_flops, self.peak_description = device_peak_flops(self.dist.device)

    def setup_logging(self) -> None:
        main = self.dist.is_main
        purge = self.progress.step + 1 if self.progress.step else None
        self.writer = MetricsWriter(
            self.run_dir,
            enabled=main,
            tensorboard=self.config.logging.tensorboard,
            purge_step=purge,
        )
        if main:
            self.writer.log_text("config", json.dumps(self.config.to_dict(), indent=1))
            self.writer.log_text("peak_flops", self.peak_description)
        show = self.config.logging.progress
        if show is None:
            show = sys.stderr.isatty()
        self.bar = None
        if main and show:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=self.config.train.max_steps,
                initial=self.progress.step,
                desc="pretrain",
                unit="step",
                dynamic_ncols=True,
            )

    # ---------------------------------------------------------------- steps

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self._train_iter is None:
            self._train_iter = iter(self.train_stream)
        return next(self._train_iter)

    def train_step(self, measure: bool = True) -> None:
        """One optimizer step: grad_accum_steps micro-batches through the engine.

        ``measure``: read the gradient norm (a device sync on GPUs; only on logged steps).
        """
        cfg = self.config
        step = self.progress.step + 1
        self.engine.train()
        start = time.perf_counter()
        loss = torch.zeros((), dtype=torch.float64, device=self.dist.device)
        for micro in range(cfg.train.grad_accum_steps):
            batch = self.next_batch()
            generator = make_generator(cfg.train.seed, step, self.dist.rank, micro)
            masked, labels = self.masker(batch["input_ids"], generator)
            inputs = model_inputs(
                {**batch, "input_ids": masked, "labels": labels}, self.dist.device
            )
            with sdpa_context(cfg.system.attention_backend):
                output = self.engine(**inputs)
            self.engine.backward(output.loss)
            if micro == cfg.train.grad_accum_steps - 1:
                self.lr = self.optimizer.param_groups[0]["lr"]
                if measure:
                    self._measure_grad_norm_before_step()
            self.engine.step()
            loss += output.loss.detach().double()
            lengths = sequence_lengths(batch)
            self._pending["tokens"] += int(lengths.sum())
            self._pending["sequences"] += len(lengths)
            self._pending["sq"] += float((lengths.double() ** 2).sum())
            padded = cfg.system.padded_compute and not is_packed(batch)
            self._pending["positions"] += (
                batch["input_ids"].numel() if padded else int(lengths.sum())
            )
        self._pending_loss += loss / cfg.train.grad_accum_steps
        self._pending["steps"] += 1
        norm = self.engine.get_global_grad_norm() if measure else None
        if norm is not None:
            self.grad_norm = float(norm)
        self.progress.step = step
        self._interval_time += time.perf_counter() - start

    def _measure_grad_norm_before_step(self) -> None:
        # Stage-0 fp32 DeepSpeed clips without reporting the norm; the gradients are already
        # all-reduced at this point (boundary backward), so the local norm is the global one.
        if self.config.system.zero_stage == 0 and self.precision == "fp32":
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if grads:
                self.grad_norm = float(torch.nn.utils.get_total_norm(grads))

    def sync_progress(self) -> dict[str, float]:
        """Fold this interval's per-rank counters into the global Progress (collective)."""
        pending = self._pending
        loss_sum, tokens, sequences, sq, positions = all_reduce_sum(
            [
                float(self._pending_loss),
                float(pending["tokens"]),
                float(pending["sequences"]),
                pending["sq"],
                float(pending["positions"]),
            ],
            self.dist.device,
        )
        (interval_time,) = all_reduce_max([self._interval_time], self.dist.device)
        steps = pending["steps"]
        cfg = self.model_config
        # Exact attention FLOPs: flops_per_token is linear in the length, so summing len²
        # over sequences gives sum over tokens of flops_per_token(own sequence length).
        attention_per_token_len = 12 * cfg.num_layers * cfg.hidden_size
        flops = 6 * self.n_params_non_embedding * tokens + attention_per_token_len * sq
        self.progress.tokens += int(tokens)
        self.progress.sequences += int(sequences)
        self.progress.positions += int(positions)
        self.progress.flops += flops
        self.progress.train_time_s += interval_time
        self._pending = empty_interval()
        self._pending_loss.zero_()
        self._interval_time = 0.0
        world = self.dist.world_size
        return {
            "loss": loss_sum / world / steps if steps else float("nan"),
            "tokens": tokens,
            "flops": flops,
            "time": interval_time,
        }

    def log_train(self) -> dict[str, float]:
        stats = self.sync_progress()
        (peak_mem,) = all_reduce_max([float(peak_memory_bytes(self.dist.device))], self.dist.device)
        seconds = max(stats["time"], 1e-9)
        tokens_per_s = stats["tokens"] / seconds
        self.last_train_loss = stats["loss"]
        record = {
            "train/loss": stats["loss"],
            "train/lr": self.lr,
            "train/grad_norm": self.grad_norm,
            "train/tokens": self.progress.tokens,
            "perf/tokens_per_s": tokens_per_s,
            "perf/mfu": mfu(
                tokens_per_s,
                stats["flops"] / max(stats["tokens"], 1),
                self.peak_flops * self.dist.world_size,
            ),
            "perf/peak_memory_gb": peak_mem / 2**30,
            "perf/step_time_s": seconds / max(self.config.train.log_interval, 1),
        }
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{stats['loss']:.3f}", tok_s=f"{tokens_per_s:,.0f}")
        elif self.dist.is_main:
            logger.info(
                "step %d loss %.4f lr %.2e tokens/s %.0f",
                self.progress.step,
                stats["loss"],
                self.lr,
                tokens_per_s,
            )
        return record

    def evaluate(self) -> dict[str, float]:
        """Validation loss and masked-token accuracy on the fixed validation batches."""
        self.engine.eval()
        with sdpa_context(self.config.system.attention_backend):
            result = evaluate_batches(
                self.engine,
                self.val_batches,
                self.dist.device,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
            )
        self.engine.train()
        self.last_val = {"val/loss": result.loss, "val/accuracy": result.accuracy}
        self.last_val_se = result.loss_se
        if not self.first_val:
            self.first_val = dict(self.last_val)
        if self.dist.is_main:
            msg = (
                f"step {self.progress.step}: val loss {result.loss:.4f} "
                f"± {result.loss_se:.4f}, accuracy {result.accuracy:.4f}"
            )
            if self.bar is not None:
                self.bar.write(msg)
            else:
                logger.info("%s (%d masked tokens)", msg, result.count)
        return dict(self.last_val)

    # ---------------------------------------------------------------- loop

    def fit(self) -> dict[str, Any]:
        """Train to ``max_steps`` (or ``stop_at_step``); returns the run summary."""
        cfg = self.config
        ckpt.clean_staging(self.checkpoint_dir, self.dist.rank)
        if cfg.train.eval_at_start and self.progress.step == 0:
            self.writer.log(0, self.evaluate())
        last = cfg.train.max_steps
        if cfg.train.stop_at_step is not None:
            last = min(last, cfg.train.stop_at_step)
        wall_start = time.perf_counter()
        while self.progress.step < last:
            step = self.progress.step + 1
            final = step == last
            self.train_step(measure=step % cfg.train.log_interval == 0 or final)
            record: dict[str, float | None] = {}
            if step % cfg.train.log_interval == 0 or final:
                record.update(self.log_train())
            if (cfg.train.eval_interval and step % cfg.train.eval_interval == 0) or final:
                record.update(self.evaluate())
            if record:
                self.writer.log(step, record)
            if (cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0) or (
                final and cfg.checkpoint.save_final
            ):
                self.save()
            if self.bar is not None:
                self.bar.update(1)
        if self._pending["steps"]:
            self.sync_progress()
        if not self.last_val:
            # Resumed from the final checkpoint: nothing ran, but the summary needs the loss.
            self.writer.log(self.progress.step, self.evaluate())
        summary = self.summary(time.perf_counter() - wall_start)
        self.close(summary)
        return summary

    def summary(self, wall_time_s: float) -> dict[str, Any]:
        """The run's result; keys match ``train.scaling.RESULTS_COLUMNS`` where they overlap."""
        device = (
            torch.cuda.get_device_name(self.dist.device)
            if self.dist.device.type == "cuda"
            else "cpu"
        )
        progress = self.progress
        return {
            "flavour": self.config.model.flavour,
            "n_params_non_embedding": self.n_params_non_embedding,
            "n_params_total": self.n_params,
            "tokens": progress.tokens,
            "sequences": progress.sequences,
            "flops": progress.flops,
            "val_loss": self.last_val.get("val/loss"),
            "val_loss_se": _finite_or_none(self.last_val_se),
            "val_accuracy": self.last_val.get("val/accuracy"),
            "initial_val_loss": self.first_val.get("val/loss"),
            "train_loss": self.last_train_loss,
            "steps": progress.step,
            "wall_time_s": wall_time_s,
            "train_time_s": progress.train_time_s,
            "tokens_per_s": progress.tokens / max(progress.train_time_s, 1e-9),
            # Old checkpoints did not count positions: their share is unknown (null).
            "padding_fraction": (
                1 - progress.tokens / progress.positions
                if progress.positions >= progress.tokens > 0
                else None
            ),
            "device": device,
            "world_size": self.dist.world_size,
            "zero_stage": self.config.system.zero_stage,
            "precision": self.precision,
            "run_dir": str(self.run_dir),
            "checkpoint_dir": str(self.checkpoint_dir),
        }

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Write the summary (rank 0), close the writers, wait for every rank."""
        if self.dist.is_main and summary is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=1))
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
        barrier()

    def release(self) -> None:
        """Drop the engine (ZeRO-3 hooks included) and the model, so memory is freed."""
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        engine = getattr(self, "engine", None)
        if engine is not None and hasattr(engine, "destroy"):
            engine.destroy()
        self.engine = self.model = self.optimizer = self.scheduler = None
        self.train_stream = None
        self._train_iter = None
