"""Pre-training throughput: CLOUD's training path against the released Hugging Face stack.

    python benchmarks/train_throughput.py [--flavour mini] [--batch-size 32] [--steps 15]
        [--threads 1] [--data ../shared/data] [--limit 1500] [--released-strings N]
        [--no-deepspeed] [--compile] [--json FILE]

    # the protocol of docs/performance.md: base shape, 128 released strings, 16 a batch
    python benchmarks/train_throughput.py --flavour base --released-strings 128 \
        --batch-size 16 --threads 2 --steps 16

Real SCOPE batches: the structures of the shipped corpus sample
(``data/corpus/structures_sample.jsonl.gz``, 2,986 structures; ``--data`` reads
``../shared/data/corpus/structures.jsonl.gz`` with ``--limit``), encoded once (not timed) to
the released ``cloud`` SCOPE strings; or, with ``--released-strings N``, the first N strings
of the released pre-training set (``cloud_reference/pretrain_cloud_10k.csv``), every one used
for training and the held-out figures taken on the next ones. Every stack trains on the same
sequences in the same order, same batch size in sequences, same AdamW hyper-parameters (lr
5e-4, wd 0.01, clip 1.0), same shape (layers, heads, width, MLP) from a ``cloud`` flavour:

- released: ``transformers.BertForMaskedLM`` from a ``BertConfig`` (built offline) with the
  released 30,522-row vocabulary, the released WordPiece tokenizer
  (``../shared/data/cloud_reference/released_tokenizer``; without it our token ids are used,
  which changes nothing in the cost), every batch padded to 64 as the released code does, and
  ``DataCollatorForLanguageModeling`` (15 %) masking;
- ours, padded (the path before packing): ``CloudForMaskedLM`` with the SCOPE tokenizer (443
  ids), batches padded to their longest sequence as ``train.data.CorpusStream`` collates
  them, computed over every position (``compute_padded``), foreach AdamW;
- ours, packed: the same sequences packed without padding (``tokens_per_batch`` batches of
  ``train.data``), computed on real tokens only (``cloud.packed``), fused AdamW; in eager
  PyTorch, ``--compile`` also under ``torch.compile``, and unless ``--no-deepspeed`` through
  the DeepSpeed engine of ``train.distributed`` (ZeRO-0, as ``cloud pretrain`` runs
  single-process).

Both of ours project the MLM head only at masked positions and mask with
``train.masking.MLMMasker``.

The stacks run in interleaved rounds so that a noisy machine slows them alike, and each round
also times a large fp32 matrix multiply (``--gemm 2048``: the machine's practical limit).
Reported: real (unpadded) tokens/s and sequences/s per stack, the speed-up, each stack's
achieved FLOP/s (forward + backward on real tokens, ``cloud.flops_per_token`` per sequence)
as a fraction of the GEMM's, and each stack's mean training loss over its last steps and
masked-token accuracy on held-out batches after the run (losses are over different
vocabularies; accuracy is comparable). On CUDA every stack runs under bf16 autocast (on CPU
with ``--cpu-bf16``, against a bf16 GEMM), and
``--mfu`` adds MFU of base and of the largest flavour that fits.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import itertools
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: the repository's packages
    sys.path.insert(0, str(REPO))

from cloud import CloudForMaskedLM, family, flavours, flops_per_token  # noqa: E402
from tokenizer import ScopeTokenizer  # noqa: E402
from train.common.batching import packed_tensors, padded_tensors, sequence_lengths  # noqa: E402
from train.masking import MLMMasker, make_generator  # noqa: E402
from train.metrics import device_peak_flops  # noqa: E402

SAMPLE = REPO / "data" / "corpus" / "structures_sample.jsonl.gz"
RELEASED_VOCAB = 30_522
RELEASED_PAD_TO = 64
LR = 5e-4


def load_scope_strings(data: Path | None, limit: int | None) -> tuple[list[str], str]:
    """Released-format (``cloud``) SCOPE strings of real structures (symmetry search here)."""
    from pymatgen.core import Structure

    from tokenizer.scope import ScopeError, encode

    path = SAMPLE
    if data is not None and (data / "corpus" / "structures.jsonl.gz").is_file():
        path = data / "corpus" / "structures.jsonl.gz"
    texts = []
    with gzip.open(path, "rt") as handle:
        for line in handle:
            if limit and len(texts) >= limit:
                break
            record = json.loads(line)
            try:
                texts.append(encode(Structure.from_dict(record["structure"]), "cloud"))
            except (ScopeError, ValueError):
                continue
    return texts, str(path)


def load_released_strings(data: Path, count: int) -> tuple[list[str], str]:
    """The first ``count`` strings of the released pre-training set (and as many more for the
    held-out evaluation)."""
    import csv

    path = data / "cloud_reference" / "pretrain_cloud_10k.csv"
    if not path.is_file():
        raise SystemExit(f"--released-strings needs {path} (../shared/data)")
    with path.open(newline="") as handle:
        rows = [row["cloud"] for row in itertools.islice(csv.DictReader(handle), 2 * count)]
    return rows, str(path)


def released_tokenizer(data: Path | None) -> Any | None:
    directory = (data or REPO.parent / "shared" / "data") / "cloud_reference" / "released_tokenizer"
    if not (directory / "vocab.txt").is_file():
        return None
    from transformers import BertTokenizer

    return BertTokenizer.from_pretrained(str(directory))


# ---------------------------------------------------------------------------- stacks


@dataclass
class Stack:
    """One training stack: its batches and a step function returning the loss."""

    name: str
    batches: list[dict[str, torch.Tensor]]
    step: Callable[[dict[str, torch.Tensor], int], float]
    evaluate: Callable[[list[dict[str, torch.Tensor]]], tuple[float, float]]
    eval_batches: list[dict[str, torch.Tensor]]
    seconds: float = 0.0
    tokens: int = 0
    sequences: int = 0
    losses: list[float] = field(default_factory=list)
    model: Any = None
    lengths: list[int] = field(default_factory=list)
    """Real tokens of each sequence trained on in the timed steps."""
    flops: float = 0.0
    flops_of: Callable[[int], float] = lambda n: 0.0
    """Training FLOPs of one sequence of n real tokens (set by ``main``)."""


CPU_BF16 = False
"""``--cpu-bf16``: every stack (and the GEMM probe) under CPU bf16 autocast."""


def bf16_compute(device: torch.device) -> bool:
    """Whether this run computes in bf16: always on CUDA, on CPU with ``--cpu-bf16``."""
    return device.type == "cuda" or CPU_BF16


def autocast(device: torch.device):
    if bf16_compute(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def our_batches(
    ids: list[list[int]], tokenizer: ScopeTokenizer, batch_size: int
) -> list[dict[str, torch.Tensor]]:
    """Batches exactly as CorpusStream collates them: padded to the batch's longest."""
    batches = []
    for start in range(0, len(ids) - batch_size + 1, batch_size):
        batches.append(padded_tensors(tokenizer.pad(ids[start : start + batch_size])))
    return batches


def our_packed_batches(
    ids: list[list[int]], tokenizer: ScopeTokenizer, batch_size: int
) -> list[dict[str, torch.Tensor]]:
    """The same groups of sequences packed one after the other, as ``CorpusStream`` collates
    a ``tokens_per_batch`` batch."""
    batches = []
    for start in range(0, len(ids) - batch_size + 1, batch_size):
        batches.append(packed_tensors(tokenizer.pack(ids[start : start + batch_size])))
    return batches


@dataclass(frozen=True)
class Recipe:
    """One of our stacks: how batches are laid out and which kernels run."""

    name: str
    packed: bool = True
    """Packed batches computed on real tokens; False: padded batches over every position."""
    fused_adamw: bool = True
    """torch's fused AdamW (CPU and CUDA); False: foreach."""
    compile: bool = False
    """torch.compile the model (dynamic shapes)."""
    deepspeed: bool = False
    """Through the DeepSpeed engine (ZeRO-0) as ``cloud pretrain`` runs."""
    attention: str = "auto"
    """``cloud.packed`` attention implementation of the packed stacks."""


PADDED = Recipe("ours, padded (before packing)", packed=False, fused_adamw=False)
PACKED = Recipe("ours, packed")


def mask_ours(
    batches: list[dict[str, torch.Tensor]], masker: MLMMasker, seed: int
) -> list[dict[str, torch.Tensor]]:
    masked = []
    for index, batch in enumerate(batches):
        input_ids, labels = masker(batch["input_ids"], make_generator(seed, index))
        masked.append({**batch, "input_ids": input_ids, "labels": labels})
    return masked


def ours_stack(
    flavour: str,
    texts: list[str],
    batch_size: int,
    device: torch.device,
    eval_texts: list[str],
    recipe: Recipe,
) -> Stack:
    tokenizer = ScopeTokenizer()
    masker = MLMMasker.from_tokenizer(tokenizer)
    collate = our_packed_batches if recipe.packed else our_batches
    ids = [tokenizer.encode(t)[:128] for t in texts]
    batches = mask_ours(collate(ids, tokenizer, batch_size), masker, seed=1)
    eval_ids = [tokenizer.encode(t)[:128] for t in eval_texts]
    eval_batches = mask_ours(collate(eval_ids, tokenizer, batch_size), masker, seed=2)
    torch.manual_seed(0)
    model = CloudForMaskedLM(family(flavour, vocab_size=tokenizer.vocab_size)).to(device)
    model.encoder.compute_padded = not recipe.packed
    model.encoder.attention_impl = recipe.attention
    kernel = {"fused": True} if recipe.fused_adamw else {"foreach": True}
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01, **kernel)
    forward: Any = torch.compile(model, dynamic=True) if recipe.compile else model
    if recipe.deepspeed:
        from train.distributed import build_engine, deepspeed_config, init_distributed

        init_distributed()
        config = deepspeed_config(
            micro_batch_size=batch_size,
            grad_accum_steps=1,
            world_size=1,
            zero_stage=0,
            precision="bf16" if device.type == "cuda" else "fp32",
            grad_clip=1.0,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        engine = build_engine(model, optimizer=optimizer, lr_scheduler=scheduler, config=config)

        def step(batch: dict[str, torch.Tensor], _: int) -> float:
            loss = engine(**model_inputs(batch, device)).loss
            engine.backward(loss)
            engine.step()
            return loss.detach().item()

        forward = engine
    else:

        def step(batch: dict[str, torch.Tensor], _: int) -> float:
            with autocast(device):
                loss = forward(**model_inputs(batch, device)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach().item()

    @torch.no_grad()
    def evaluate(eval_set: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
        model.eval()
        loss_sum = correct = count = 0.0
        for batch in eval_set:
            with autocast(device):
                output = forward(**model_inputs(batch, device))
            n = output.masked_labels.numel()
            loss_sum += float(output.loss) * n
            correct += float((output.logits.argmax(-1) == output.masked_labels).sum())
            count += n
        model.train()
        return loss_sum / count, correct / count

    return Stack(recipe.name, batches, step, evaluate, eval_batches, model=model)


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, Any]:
    """What ``cloud pretrain`` passes the model (``train.pretrain.model_inputs``)."""
    from train.pretrain import model_inputs as pretrain_inputs

    return pretrain_inputs(batch, device)


def released_stack(
    flavour: str,
    texts: list[str],
    batch_size: int,
    device: torch.device,
    eval_texts: list[str],
    hf_tokenizer: Any | None,
) -> Stack:
    from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling

    shape = family(flavour, vocab_size=RELEASED_VOCAB)
    config = BertConfig(
        vocab_size=RELEASED_VOCAB,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=512,
        type_vocab_size=2,
    )
    torch.manual_seed(0)
    model = BertForMaskedLM(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)

    def tokenize(strings: list[str]) -> list[dict[str, torch.Tensor]]:
        if hf_tokenizer is not None:
            encoded = hf_tokenizer(
                strings,
                padding="max_length",
                max_length=RELEASED_PAD_TO,
                truncation=True,
                return_tensors="pt",
            )
            ids, mask = encoded["input_ids"], encoded["attention_mask"]
        else:  # same lengths and cost: the SCOPE tokenizer's ids in the big vocabulary
            ours = ScopeTokenizer()
            encoded = ours.pad([ours.encode(t)[:RELEASED_PAD_TO] for t in strings])
            width = encoded.input_ids.shape[1]
            ids = torch.zeros(len(strings), RELEASED_PAD_TO, dtype=torch.long)
            mask = torch.zeros_like(ids)
            ids[:, :width] = torch.from_numpy(encoded.input_ids)
            mask[:, :width] = torch.from_numpy(encoded.attention_mask)
        return [
            {"input_ids": ids[i : i + batch_size], "attention_mask": mask[i : i + batch_size]}
            for i in range(0, len(strings) - batch_size + 1, batch_size)
        ]

    if hf_tokenizer is not None:
        collator = DataCollatorForLanguageModeling(hf_tokenizer, mlm_probability=0.15)

        def mask(batches: list[dict[str, torch.Tensor]], seed: int) -> list[dict]:
            torch.manual_seed(seed)
            out = []
            for batch in batches:
                input_ids, labels = collator.torch_mask_tokens(batch["input_ids"].clone())
                out.append({**batch, "input_ids": input_ids, "labels": labels})
            return out
    else:
        masker = MLMMasker.from_tokenizer(ScopeTokenizer())

        def mask(batches: list[dict[str, torch.Tensor]], seed: int) -> list[dict]:
            return mask_ours(batches, masker, seed)

    batches = mask(tokenize(texts), 1)
    eval_batches = mask(tokenize(eval_texts), 2)

    def step(batch: dict[str, torch.Tensor], _: int) -> float:
        inputs = {k: v.to(device) for k, v in batch.items()}
        with autocast(device):
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach().item()

    @torch.no_grad()
    def evaluate(eval_set: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
        model.eval()
        loss_sum = correct = count = 0.0
        for batch in eval_set:
            inputs = {k: v.to(device) for k, v in batch.items()}
            with autocast(device):
                output = model(**inputs)
            predicted = inputs["labels"] != -100
            n = int(predicted.sum())
            loss_sum += float(output.loss) * n
            hits = output.logits.argmax(-1)[predicted] == inputs["labels"][predicted]
            correct += float(hits.sum())
            count += n
        model.train()
        return loss_sum / count, correct / count

    name = f"released (HF BertForMaskedLM, {model.config._attn_implementation} attention)"
    return Stack(name, batches, step, evaluate, eval_batches, model=model)


# ------------------------------------------------------------------------------ timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cycle(batches: list[dict[str, torch.Tensor]]) -> Iterator[tuple[int, dict]]:
    index = 0
    while True:
        yield index, batches[index % len(batches)]
        index += 1


def run(
    stacks: list[Stack],
    steps: int,
    warmup: int,
    rounds: int,
    device: torch.device,
    gemm: GemmProbe | None = None,
) -> None:
    """Warm up each stack, then time ``steps`` steps each in interleaved rounds (and the
    GEMM probe once a round)."""
    iterators = {s.name: cycle(s.batches) for s in stacks}
    for stack in stacks:
        for _ in range(warmup):
            index, batch = next(iterators[stack.name])
            stack.step(batch, index)
    per_round = [steps // rounds + (1 if r < steps % rounds else 0) for r in range(rounds)]
    for count in per_round:
        if gemm is not None:
            gemm.measure()
        for stack in stacks:
            sync(device)
            start = time.perf_counter()
            for _ in range(count):
                index, batch = next(iterators[stack.name])
                stack.losses.append(stack.step(batch, index))
                stack.lengths += sequence_lengths(batch).tolist()
            sync(device)
            stack.seconds += time.perf_counter() - start
    for stack in stacks:
        stack.tokens = sum(stack.lengths)
        stack.sequences = len(stack.lengths)
        stack.flops = sum(stack.flops_of(n) for n in stack.lengths)


@dataclass
class GemmProbe:
    """A large square fp32 (bf16 on CUDA or with ``--cpu-bf16``) matrix multiply: the FLOP/s
    this device reaches on the best case of the work a transformer step is made of."""

    size: int
    device: torch.device
    best: float = 0.0

    def measure(self, repeats: int = 5) -> float:
        dtype = torch.bfloat16 if bf16_compute(self.device) else torch.float32
        a = torch.randn(self.size, self.size, device=self.device, dtype=dtype)
        b = torch.randn(self.size, self.size, device=self.device, dtype=dtype)
        a @ b  # warm-up
        sync(self.device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync(self.device)
        rate = 2 * self.size**3 * repeats / (time.perf_counter() - start)
        self.best = max(self.best, rate)
        return rate


def mfu_sweep(texts: list[str], batch_size: int, device: torch.device, steps: int) -> list[dict]:
    """MFU of our eager stack for base and the largest flavour that fits (CUDA)."""
    peak, description = device_peak_flops(device)
    results = []
    names = flavours()
    candidates = ["base", *reversed(names[names.index("base") + 1 :])]
    largest_done = False
    for flavour in candidates:
        if flavour != "base" and largest_done:
            break
        try:
            stack = ours_stack(flavour, texts, batch_size, device, texts[:batch_size], PACKED)
            run([stack], steps, 3, 1, device)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            continue
        tokens_per_s = stack.tokens / stack.seconds
        mean_len = stack.tokens / stack.sequences
        achieved = tokens_per_s * flops_per_token(family(flavour, vocab_size=443), round(mean_len))
        results.append(
            {
                "flavour": flavour,
                "tokens_per_s": tokens_per_s,
                "mfu": achieved / peak,
                "peak": description,
            }
        )
        largest_done = flavour != "base"
        del stack
        torch.cuda.empty_cache()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavour", default="mini", choices=flavours())
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per step")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per stack")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per stack first")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--data", type=Path, default=None, help="../shared/data (optional)")
    parser.add_argument("--limit", type=int, default=1500, help="structures to encode (0: all)")
    parser.add_argument(
        "--released-strings",
        type=int,
        default=0,
        help="train on the first N released SCOPE strings instead of encoded structures",
    )
    parser.add_argument("--no-deepspeed", action="store_true", help="skip the DeepSpeed run")
    parser.add_argument("--compile", action="store_true", help="also ours under torch.compile")
    parser.add_argument(
        "--ablations",
        action="store_true",
        help="also packed with foreach AdamW, and packed with the SDPA attention core",
    )
    parser.add_argument(
        "--cpu-bf16",
        action="store_true",
        help="CPU: every stack and the GEMM under bf16 autocast (pays on AMX / AVX512-BF16 "
        "CPUs; implies --no-deepspeed)",
    )
    parser.add_argument("--gemm", type=int, default=2048, help="GEMM probe size (0: none)")
    parser.add_argument("--mfu", action="store_true", help="CUDA: MFU of base and largest")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    global CPU_BF16
    CPU_BF16 = args.cpu_bf16 and device.type == "cpu"
    if CPU_BF16:
        args.no_deepspeed = True  # the engine's CPU path is fp32 (train.distributed)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    data = args.data or (REPO.parent / "shared" / "data")
    if args.released_strings:
        texts, source = load_released_strings(data, args.released_strings)
        train_texts, eval_texts = texts[: args.released_strings], texts[args.released_strings :]
    else:
        texts, source = load_scope_strings(data if data.is_dir() else None, args.limit)
        random.Random(0).shuffle(texts)
        held_out = max(args.batch_size * 4, len(texts) // 10)
        eval_texts, train_texts = texts[:held_out], texts[held_out:]
    hf_tokenizer = released_tokenizer(data if data.is_dir() else None)

    recipes = [PADDED, PACKED]
    if args.ablations:
        recipes.append(Recipe("ours, packed, foreach AdamW", fused_adamw=False))
        recipes.append(Recipe("ours, packed, SDPA attention core", attention="sdpa"))
    if args.compile:
        recipes.append(Recipe("ours, packed, torch.compile", compile=True))
    if not args.no_deepspeed:
        recipes.append(Recipe("ours, packed, DeepSpeed engine", deepspeed=True))
    stacks = [
        released_stack(
            args.flavour, train_texts, args.batch_size, device, eval_texts, hf_tokenizer
        ),
        *(
            ours_stack(args.flavour, train_texts, args.batch_size, device, eval_texts, recipe)
            for recipe in recipes
        ),
    ]
    shape = family(args.flavour, vocab_size=443)
    for stack in stacks:
        stack.flops_of = lambda n: n * flops_per_token(shape, n)
    gemm = GemmProbe(args.gemm, device) if args.gemm else None
    run(stacks, args.steps, args.warmup, args.rounds, device, gemm)

    print(
        f"train throughput, {date.today().isoformat()}, {platform.processor() or platform.machine()}"
    )
    print(
        f"device {device}"
        + (f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else "")
        + f", torch {torch.__version__}; data: {len(train_texts)} real structures from {source}"
    )
    print(
        f"shape of '{args.flavour}': {shape.num_layers} layers, {shape.num_heads} heads, width "
        f"{shape.hidden_size}, MLP {shape.intermediate_size}; batch {args.batch_size} sequences; "
        f"{args.steps} timed steps each after {args.warmup} warm-up, {args.rounds} rounds"
    )
    tokenizer_note = (
        "released WordPiece"
        if hf_tokenizer is not None
        else "SCOPE ids (no released tokenizer found)"
    )
    print(f"released stack tokenizer: {tokenizer_note}, padded to {RELEASED_PAD_TO}\n")
    results = []
    baseline = stacks[0]
    for stack in stacks:
        val_loss, val_accuracy = stack.evaluate(stack.eval_batches)
        tail = stack.losses[-10:]
        result = {
            "stack": stack.name,
            "tokens_per_s": stack.tokens / stack.seconds,
            "sequences_per_s": stack.sequences / stack.seconds,
            "speedup": (stack.sequences / stack.seconds) / (baseline.sequences / baseline.seconds),
            "train_loss_last10": sum(tail) / len(tail),
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "steps": len(stack.losses),
            "real_tokens_per_sequence": stack.tokens / stack.sequences,
            "achieved_flops": stack.flops / stack.seconds,
            "gemm_fraction": (stack.flops / stack.seconds) / gemm.best if gemm else None,
        }
        results.append(result)
        print(
            f"{stack.name:58s} {result['tokens_per_s']:9,.0f} tok/s {result['sequences_per_s']:7,.1f}"
            f" seq/s  x{result['speedup']:.2f}  loss(last10) {result['train_loss_last10']:.3f}"
            f"  held-out loss {val_loss:.3f} acc {val_accuracy:.3f}"
            f"  {result['achieved_flops'] / 1e9:6.1f} GFLOP/s"
            + (f" ({result['gemm_fraction']:.0%} of GEMM)" if gemm else "")
        )
    if gemm:
        gemm_dtype = "bf16" if bf16_compute(device) else "fp32"
        print(f"\nGEMM probe {args.gemm}² {gemm_dtype}: {gemm.best / 1e9:.1f} GFLOP/s (best round)")
        results.append({"gemm_size": args.gemm, "gemm_flops": gemm.best})
    print(
        f"\ninitial loss ≈ ln(vocab): released ln({RELEASED_VOCAB}) = {math.log(RELEASED_VOCAB):.2f},"
        f" ours ln(443) = {math.log(443):.2f}; accuracy is comparable across vocabularies"
    )
    if args.mfu and device.type == "cuda":
        for row in mfu_sweep(train_texts, args.batch_size, device, max(args.steps // 2, 10)):
            print(
                f"MFU {row['flavour']}: {row['mfu']:.1%} at {row['tokens_per_s']:,.0f} tok/s ({row['peak']})"
            )
            results.append(row)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
