"""A package of a checkpoint's shape with every encoder weight re-initialised: the
no-pretraining twin run on its own (what ``baselines=[random_init]`` fits beside the model).

    python docs/results/random_init_package.py CHECKPOINT OUT [--seed 0]

The encoder is re-initialised as the ``random_init`` baseline does
(``train.finetune.trainer.randomly_initialised``: ``encoder.init_weights()``; the fixed
token-feature table stays), so ``cloud finetune --checkpoint OUT ... 'baselines=[]'`` is that
baseline up to its seeds, at the cost of one run instead of two in the same process.
"""

from __future__ import annotations

import argparse

import torch

from cloud import load_pretrained
from cloud.export import save_pretrained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a pretrained or fine-tuned package")
    parser.add_argument("out", help="the package to write")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the re-initialisation")
    args = parser.parse_args()
    package = load_pretrained(args.checkpoint)
    torch.manual_seed(args.seed)
    package.model.encoder.init_weights()
    note = (
        f"{args.checkpoint}'s encoder re-initialised (encoder.init_weights, torch seed "
        f"{args.seed}): a no-pretraining twin, not a trained model"
    )
    out = save_pretrained(
        package.model,
        package.tokenizer,
        args.out,
        metadata={"note": note},
        variant=package.config["tokenizer"]["variant"],
        overwrite=True,
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
