#!/usr/bin/env python
"""Train the zoo's zero-shot model ``toy-clip`` (an open_clip ``CLIP``) on captioned scenes (CPU, reproducible).

Every batch is fresh data from ``load_dataset("captions", ...)`` (no epochs): ``batch_size`` images, each paired
with its caption (``"a red circle"`` ... ``"a yellow plus"``, 16 captions). The loss is CLIP's symmetric
contrastive loss written for a closed caption set, where many images of a batch share one caption:

* image -> text: cross-entropy of each image over the 16 caption embeddings (``logit_scale * cos``);
* text -> image: for each caption present in the batch, cross-entropy over the batch's rows with every image of
  that caption a positive (the target spreads uniformly over them), averaged over the captions present.

The two directions are averaged. With one image per caption this is exactly open_clip's ``ClipLoss``; with
repeated captions it does not push apart two images of the same caption (``ClipLoss`` would, since it treats
the batch's duplicate captions as negatives).

Neutral rows, as in ``scripts/train_toy_models.py`` (``NEUTRAL_MIX``, built with CAAP's own
``vit_patching.images.baseline_images``): ``neutral_rows`` extra inputs per batch that show no object (the
batch's scenes drawn without objects, their blur and mean colour, the ``zeros`` and ``black`` images), trained
so that their image -> text distribution is UNIFORM over the captions; in the text -> image direction they are
negatives for every caption. So an empty scene's embedding matches no caption.

At the end the weights are measured on fresh images (seeds never used in training) with open_clip itself
(``encode_image``, ``encode_text`` of the captions with the bundled tokenizer, ``logit_scale``) and
``toy-clip.safetensors`` + ``toy-clip.json`` + ``toy-clip.md`` are written to ``--out`` (each to a temporary
name, then renamed).

Usage:
    python scripts/train_toy_clip.py --seed 0 --out vit_patching/zoo/weights          # the shipped run
    python scripts/train_toy_clip.py --seed 0 --out /tmp/clip --steps 100             # quick trial
    python scripts/train_toy_clip.py --out vit_patching/zoo/weights --recard          # re-measure only
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vit_patching.images import baseline_images
from vit_patching.zoo.clip import TOY_CLIP_CONFIG, build_open_clip_model, clip_captions, clip_tokenizer
from vit_patching.zoo.datasets import CHUNK, batch_from_scenes, render_scenes, sample_scenes
from vit_patching.zoo.registry import NORM_MEAN, NORM_STD

from train_toy_models import NEUTRAL_MIX, lr_at  # scripts/: the other zoo models' neutral rows and schedule

logger = logging.getLogger("train_toy_clip")
NAME = "toy-clip"
TASK = "captions"
DATA_CONFIG = {"mean": NORM_MEAN, "std": NORM_STD}  # what ``baseline_images`` needs for ``black``


@dataclass(frozen=True)
class Recipe:
    steps: int = 1800
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_clip: float = 1.0
    pool_size: int = 1024  # images generated at once (a whole number of generator chunks)
    eval_every: int = 200
    eval_n: int = 512
    neutral_rows: int = 8  # 8 next to 32 images: 20% of the rows, as the other zoo models


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, embeddings, the class token and the logit scale (1-d or scalar)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        embedding = name.endswith(("positional_embedding", "class_embedding", "token_embedding.weight"))
        (no_decay if p.ndim <= 1 or embedding else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def neutral_batch(images: torch.Tensor, empty: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` neutral inputs (``NEUTRAL_MIX`` cycled): row ``i`` is built from scene ``i`` of the batch."""
    out = []
    for i in range(n):
        source, kind = NEUTRAL_MIX[i % len(NEUTRAL_MIX)]
        j = i % len(images)
        x = empty[j : j + 1] if source == "empty" else images[j : j + 1]
        out.append(x if kind is None else baseline_images(x, kind, data_config=DATA_CONFIG)[0].expand_as(x))
    return torch.cat(out)


def contrastive_loss(logits: torch.Tensor, labels: torch.Tensor, n_images: int) -> torch.Tensor:
    """Symmetric contrastive loss over a closed caption set (module docstring).

    ``logits``: ``[rows, captions]`` scores, the first ``n_images`` rows images with ``labels``, the rest neutral
    rows (target: uniform over the captions; negatives in the text -> image direction).
    """
    n_captions = logits.shape[1]
    target = torch.full_like(logits, 1 / n_captions)
    target[:n_images] = F.one_hot(labels, n_captions).float()
    image_to_text = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    present = labels.unique()
    positives = torch.zeros(logits.shape[0], len(present))
    positives[:n_images] = (labels.view(-1, 1) == present.view(1, -1)).float()
    positives = positives / positives.sum(0, keepdim=True)
    text_to_image = -(positives * F.log_softmax(logits[:, present], dim=0)).sum(0).mean()
    return (image_to_text + text_to_image) / 2


def train(seed: int, r: Recipe, init: Path | None = None) -> tuple[torch.nn.Module, dict]:
    if r.pool_size % CHUNK or r.pool_size % r.batch_size:
        raise ValueError(f"pool_size: expected a multiple of {CHUNK} and of batch_size, got {r.pool_size}")
    torch.manual_seed(seed)
    model = build_open_clip_model(TOY_CLIP_CONFIG).train()
    if init is not None:  # fine-tune: start from existing weights instead of the seeded initialisation
        model.load_state_dict(load_file(str(init)), strict=True)
    tokens = clip_tokenizer(NAME)(list(clip_captions(NAME)))
    opt = torch.optim.AdamW(param_groups(model, r.weight_decay), lr=r.lr, betas=(0.9, 0.98), eps=1e-6)
    data_seeds = torch.Generator().manual_seed(seed)  # draws the seed of every training pool
    eval_seed = seed + 12_345  # monitoring only; the card uses its own held-out seeds
    monitor = batch_from_scenes(sample_scenes(TASK, r.eval_n, eval_seed))
    steps_per_pool = r.pool_size // r.batch_size
    history, t0, ema = [], time.time(), {}
    pool = empty = None
    for step in range(r.steps):
        k = step % steps_per_pool
        if k == 0:
            scenes = sample_scenes(TASK, r.pool_size, int(torch.randint(0, 2**62, (1,), generator=data_seeds)))
            pool = batch_from_scenes(scenes)
            empty = (render_scenes(scenes, objects="none") - 0.5) / 0.5
        rows = slice(k * r.batch_size, (k + 1) * r.batch_size)
        x, y = pool.images[rows], pool.labels[rows]
        if r.neutral_rows:
            x = torch.cat([x, neutral_batch(pool.images[rows], empty[rows], r.neutral_rows)])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, r)
        image = model.encode_image(x, normalize=True)
        text = model.encode_text(tokens, normalize=True)
        logits = model.logit_scale.exp() * image @ text.T
        loss = contrastive_loss(logits, y, len(y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # CLIP's clamp of the temperature
        stats = {"loss": float(loss.detach()), "acc": float((logits[: len(y)].argmax(1) == y).float().mean()),
                 "neutral_max_p": float(F.softmax(logits[len(y) :].detach(), 1).amax(1).mean()) if r.neutral_rows else 0.0}
        ema = {key: v if key not in ema else 0.98 * ema[key] + 0.02 * v for key, v in stats.items()}
        if (step + 1) % r.eval_every == 0 or step + 1 == r.steps:
            model.eval()
            with torch.no_grad():
                text = model.encode_text(tokens, normalize=True)
                image = torch.cat([model.encode_image(monitor.images[i : i + 256], normalize=True)
                                   for i in range(0, r.eval_n, 256)])
                val = float(((image @ text.T).argmax(1) == monitor.labels).float().mean())
            model.train()
            history.append({"step": step + 1, "train_loss": round(ema["loss"], 4), "train_acc": round(ema["acc"], 4),
                            "neutral_mean_max_p": round(ema["neutral_max_p"], 4), "val_acc": round(val, 4),
                            "logit_scale": round(float(model.logit_scale.exp()), 2),
                            "minutes": round((time.time() - t0) / 60, 2)})
            logger.info("step %d %s", step + 1, history[-1])
    model.eval()
    return model, {"history": history, "train_wall_s": round(time.time() - t0, 1)}


def write_atomic(path: Path, write) -> None:
    """Write through ``write(tmp_path)`` to a temporary name in the same folder, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's steps (quick trials)")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--warmup-steps", type=int, default=None)
    parser.add_argument("--init", type=Path, default=None,
                        help="fine-tune: start from the weights file INIT instead of a fresh initialisation")
    parser.add_argument("--init-label", default=None, help="how the card names the --init weights")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--recard", action="store_true",
                        help="do not train: re-measure the weights in --out and rewrite the card and json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / f"{NAME}.safetensors"
    if args.recard:
        record = json.loads((args.out / f"{NAME}.json").read_text())
        keys = ("seed", "recipe", "init", "history", "train_wall_s", "threads", "machine", "command")
        training = {k: record.get(k) for k in keys}
    else:
        overrides = {k: v for k, v in (("steps", args.steps), ("lr", args.lr), ("warmup_steps", args.warmup_steps))
                     if v is not None}
        recipe = replace(Recipe(), **overrides)
        model, info = train(args.seed, recipe, args.init)
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        write_atomic(weights, lambda p: save_file(state, str(p), metadata={"name": NAME, "seed": str(args.seed)}))
        cmd = [f"--seed {args.seed}", "--out vit_patching/zoo/weights"]
        cmd += [f"--{k.replace('_', '-')} {v}" for k, v in overrides.items()]
        cmd += ([f"--threads {args.threads}"] if args.threads != 1 else [])
        if args.init is not None:
            cmd.append("--init <the weights fine-tuned from>")
        info["init"] = None if args.init is None else args.init_label or str(args.init)
        training = {"seed": args.seed, "recipe": asdict(recipe), **info, "threads": args.threads,
                    "machine": f"{platform.machine()}, {platform.system()}, torch {torch.__version__}",
                    "command": "python scripts/train_toy_clip.py " + " ".join(cmd)}
        # the training record first, so that a failed measurement can be redone with --recard
        record = {"name": NAME, "config": TOY_CLIP_CONFIG, **training}
        write_atomic(args.out / f"{NAME}.json", lambda p: p.write_text(json.dumps(record, indent=2) + "\n"))
    from toy_clip_probes import measure, write_card  # scripts/: the card's measurements

    record = {"name": NAME, "config": TOY_CLIP_CONFIG, **training, **measure(weights)}
    write_atomic(args.out / f"{NAME}.json", lambda p: p.write_text(json.dumps(record, indent=2) + "\n"))
    write_atomic(args.out / f"{NAME}.md", lambda p: p.write_text(write_card(record)))
    logger.info("%s: zero-shot accuracy %.4f", NAME, record["zero_shot_acc"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
