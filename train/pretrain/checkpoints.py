"""The trainer's checkpoints: the counters they hold (:class:`Progress`) and the
:class:`Trainer`'s saving and resuming, on the same or on another world size."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from train import checkpoint as ckpt
from train.distributed import broadcast_object
from train.elastic import gather_elastic_state, read_elastic_state, restore_elastic_state
from train.pretrain.evaluation import model_inputs

logger = logging.getLogger("train.pretrain")


@dataclass
class Progress:
    """Counters saved in checkpoints (global over ranks)."""

    step: int = 0
    tokens: int = 0
    sequences: int = 0
    flops: float = 0.0
    train_time_s: float = 0.0
    positions: int = 0
    """Token positions the projections and MLPs computed: the real tokens, plus the padding
    when padded batches are computed padded (``system.padded_compute``)."""


class TrainerCheckpoints:
    """The checkpoint methods of :class:`train.pretrain.Trainer` (a base class of it): they
    use its attributes (``config``, ``dist``, ``engine``, ``optimizer``, ``progress``,
    ``train_stream``, ...), set by its constructor and ``setup``."""

    def metadata_files(self) -> dict[str, str]:
        tokenizer_json = json.dumps(self.tokenizer.to_dict(), indent=1)
        return {
            "config.json": json.dumps(self.model_config.to_dict(), indent=1),
            "tokenizer.json": tokenizer_json,
            "pretrain_config.json": json.dumps(self.config.to_dict(), indent=1),
        }

    def save(self) -> Path:
        if any(self._pending[k] for k in ("steps", "tokens")):
            self.sync_progress()
        client_state = {
            **dataclasses.asdict(self.progress),
            "first_val_loss": self.first_val.get("val/loss"),
            "first_val_accuracy": self.first_val.get("val/accuracy"),
        }
        rank_state = {
            "rank": self.dist.rank,
            "world_size": self.dist.world_size,
            "data": self.train_stream.state_dict(),
            "rng": ckpt.rng_state(),
        }
        elastic = gather_elastic_state(self.engine) if self.config.checkpoint.elastic else None
        return ckpt.save_checkpoint(
            self.engine,
            self.checkpoint_dir,
            self.progress.step,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            client_state=client_state,
            rank_state=rank_state,
            metadata=self.metadata_files(),
            keep_last=self.config.checkpoint.keep_last or None,
            elastic_state=elastic,
        )

    def load(self) -> None:
        ckpt.clean_staging(self.checkpoint_dir, self.dist.rank)
        tag = broadcast_object(ckpt.read_latest(self.checkpoint_dir) if self.dist.is_main else None)
        if tag is None:
            if self.dist.is_main:
                logger.warning(
                    "--resume: no checkpoint in %s, starting afresh", self.checkpoint_dir
                )
            return
        tag_dir = Path(self.checkpoint_dir) / tag
        self._check_resumable(tag_dir)
        saved_world = ckpt.read_trainer_state(tag_dir)["world_size"]
        if saved_world != self.dist.world_size:
            self.load_elastic(tag_dir, saved_world)
            return
        tag, client_state, rank_state = ckpt.load_checkpoint(
            self.engine,
            self.checkpoint_dir,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            tag=tag,
        )
        self._restore_counters(client_state)
        self.train_stream.load_state_dict(rank_state["data"])
        self._train_iter = None
        ckpt.set_rng_state(rank_state["rng"])
        if self.dist.is_main:
            logger.info("resumed from %s at step %d", tag, self.progress.step)

    def load_elastic(self, tag_dir: Path, saved_world: int) -> None:
        """Resume a checkpoint saved by ``saved_world`` processes on this world size: model
        and optimizer from the whole tensors of ``train.elastic`` (ZeRO 1-3) or DeepSpeed's
        own whole state (ZeRO-0), the data stream re-dealt from every old rank's position."""
        client_state = ckpt.read_trainer_state(tag_dir)
        if self.config.system.zero_stage == 0:
            ckpt.load_engine_states(self.engine, self.checkpoint_dir, tag_dir.name)
        else:
            restore_elastic_state(
                self.engine,
                read_elastic_state(tag_dir),
                step=int(client_state["step"]),
                zero_lr_step=self._zero_lr_step,
            )
        self._restore_counters(client_state)
        old_states = [ckpt.read_rank_state(tag_dir, rank) for rank in range(saved_world)]
        self.train_stream.load_resharded_states([state["data"] for state in old_states])
        self._train_iter = None
        if self.dist.rank < saved_world:
            ckpt.set_rng_state(old_states[self.dist.rank]["rng"])
        if self.dist.is_main:
            logger.info(
                "resumed from %s at step %d on %d process(es) (saved by %d): model and optimizer "
                "re-sharded, the rest of the epoch dealt anew",
                tag_dir.name,
                self.progress.step,
                self.dist.world_size,
                saved_world,
            )

    def _restore_counters(self, client_state: Mapping[str, Any]) -> None:
        fields = {f.name for f in dataclasses.fields(Progress)}
        self.progress = Progress(**{k: v for k, v in client_state.items() if k in fields})
        if client_state.get("first_val_loss") is not None:
            self.first_val = {
                "val/loss": client_state["first_val_loss"],
                "val/accuracy": client_state["first_val_accuracy"],
            }

    def _zero_lr_step(self) -> None:
        """One optimizer step at learning rate 0 on zero gradients (creates AdamW's state
        tensors without moving a weight; ``train.elastic`` then overwrites them)."""
        groups = self.optimizer.param_groups
        rates = [group["lr"] for group in groups]
        for group in groups:
            group["lr"] = 0.0
        self.engine.eval()
        output = self.engine(**model_inputs(self.val_batches[0], self.dist.device))
        self.engine.backward(output.loss * 0.0)
        self.engine.step()
        self.engine.train()
        for group, rate in zip(groups, rates, strict=True):
            group["lr"] = rate

    def _check_resumable(self, tag_dir: Path) -> None:
        saved = json.loads((tag_dir / "config.json").read_text())
        if saved != self.model_config.to_dict():
            raise ValueError(
                f"{tag_dir} holds a different model ({saved}) than the config asks for "
                f"({self.model_config.to_dict()}); resume with the run's own config"
            )
