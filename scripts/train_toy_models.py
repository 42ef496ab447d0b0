#!/usr/bin/env python
"""Train the vit_patching zoo models from scratch on freshly generated toy data (CPU, reproducible from a seed).

Every training batch is new data drawn from the generator (no epochs, no overfitting). AdamW with linear
warmup and cosine decay. At the end the model is evaluated on a fresh held-out sample (a seed never used for
training) and ``<name>.safetensors`` + ``<name>.md`` (model card) are written to ``--out``.

Usage:
    python scripts/train_toy_models.py --model all --seed 0 --out vit_patching/zoo/weights
    python scripts/train_toy_models.py --model toy-shapes --seed 0 --out /tmp/zoo --steps 300   # quick trial
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from vit_patching.zoo.datasets import CHUNK, batch_from_scenes, generate, sample_scenes
from vit_patching.zoo.registry import MODEL_SPECS, build_timm_model, get_spec

logger = logging.getLogger("train_toy_models")

#: Seed of the held-out sample reported in the model cards (never a training seed: those are 62-bit draws).
HELDOUT_SEED = 1_000_000_007
HELDOUT_N = 4096


@dataclass(frozen=True)
class Recipe:
    steps: int
    batch_size: int = 32  # small batches: more updates per generated image, which is what limits a CPU run
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_clip: float = 1.0
    pool_size: int = 1024  # images generated at once (a whole number of generator chunks)
    eval_every: int = 250
    eval_n: int = 1024


# Trials (1 CPU thread, shared machine): shapes reached 99.7% held-out after 4k images, conjunction (avg pooling,
# registers) 98% after 37k images; the recipes leave a wide margin.
RECIPES: dict[str, Recipe] = {
    "toy-shapes": Recipe(steps=1500),  # 48k images
    "toy-conjunction": Recipe(steps=2500),  # 80k images
}


# What the cue probes in the card mean for users of each model.
NOTES: dict[str, str] = {
    "toy-shapes": (
        "Each class has its own colour and its own shape, and the probes show the model reads the colour only: "
        "reshaping the evidence keeps the prediction, drawing it grey drops it to chance. Its evidence is the "
        "class-coloured object, among grey objects of every shape and vivid objects in non-class hues."
    ),
    "toy-conjunction": (
        "One part alone carries no information about the class, and the probes confirm the model needs both: "
        "removing either part drops it to chance. The decision is formed by combining two distant patches."
    ),
}


def lr_at(step: int, r: Recipe) -> float:
    """Linear warmup, then cosine decay from ``lr`` to ``min_lr``."""
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    t = (step - r.warmup_steps) / max(1, r.steps - r.warmup_steps)
    return r.min_lr + 0.5 * (r.lr - r.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, position embeddings and prefix tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim <= 1 or name in ("pos_embed", "cls_token", "reg_token"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def accuracy(model: torch.nn.Module, task: str, n: int, seed: int, batch_size: int = 512) -> float:
    model.eval()
    data = generate(task, n, seed)
    correct = 0
    for i in range(0, n, batch_size):
        logits = model(data.images[i : i + batch_size])
        correct += int((logits.argmax(-1) == data.labels[i : i + batch_size]).sum())
    model.train()
    return correct / n


def train(name: str, seed: int, recipe: Recipe, progress: bool = True) -> tuple[torch.nn.Module, dict]:
    spec = get_spec(name)
    task = spec.dataset
    r = recipe
    if r.pool_size % CHUNK or r.pool_size % r.batch_size:
        raise ValueError(f"pool_size: expected a multiple of {CHUNK} and of batch_size, got {r.pool_size}")
    torch.manual_seed(seed)
    model = build_timm_model(name)
    model.train()
    opt = torch.optim.AdamW(param_groups(model, r.weight_decay), lr=r.lr, betas=(0.9, 0.999))
    data_seeds = torch.Generator().manual_seed(seed)  # draws the seed of every training pool
    eval_seed = seed + 12_345  # periodic monitoring only; the card uses HELDOUT_SEED
    steps_per_pool = r.pool_size // r.batch_size
    history = []
    t0 = time.time()
    bar = tqdm(range(r.steps), desc=name, disable=not progress, dynamic_ncols=True)
    pool = None
    ema_loss, ema_acc = None, None
    for step in bar:
        k = step % steps_per_pool
        if k == 0:
            pool_seed = int(torch.randint(0, 2**62, (1,), generator=data_seeds))
            pool = generate(task, r.pool_size, pool_seed)
        x = pool.images[k * r.batch_size : (k + 1) * r.batch_size]
        y = pool.labels[k * r.batch_size : (k + 1) * r.batch_size]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, r)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
        opt.step()
        acc = float((logits.argmax(-1) == y).float().mean())
        loss_v = float(loss.detach())
        ema_loss = loss_v if ema_loss is None else 0.98 * ema_loss + 0.02 * loss_v
        ema_acc = acc if ema_acc is None else 0.98 * ema_acc + 0.02 * acc
        bar.set_postfix(loss=f"{ema_loss:.3f}", acc=f"{ema_acc:.3f}", lr=f"{lr_at(step, r):.1e}")
        if (step + 1) % r.eval_every == 0 or step + 1 == r.steps:
            val = accuracy(model, task, r.eval_n, eval_seed)
            history.append({"step": step + 1, "train_loss": round(ema_loss, 4), "val_acc": round(val, 4),
                            "minutes": round((time.time() - t0) / 60, 2)})
            logger.info("%s step %d loss %.3f train-acc %.3f val-acc %.4f (%.1f min)", name, step + 1, ema_loss,
                        ema_acc, val, (time.time() - t0) / 60)
    wall = time.time() - t0
    model.eval()
    return model, {"history": history, "train_wall_s": wall}


@torch.no_grad()
def cue_probes(model: torch.nn.Module, name: str, n: int = 2048) -> list[tuple[str, float]]:
    """What the trained model relies on: predictions on edited copies of fresh scenes (counterfactuals)."""
    spec = get_spec(name)
    scenes = sample_scenes(spec.dataset, n, HELDOUT_SEED + 1)
    gen = torch.Generator().manual_seed(HELDOUT_SEED + 2)

    def predict(edited) -> torch.Tensor:
        images = batch_from_scenes(edited).images
        return torch.cat([model(images[i : i + 512]).argmax(-1) for i in range(0, n, 512)])

    k = scenes.labels
    rows = [("unedited: accuracy", float((predict(scenes) == k).float().mean()))]
    if spec.dataset == "shapes":
        other = (k + torch.randint(1, 4, (n,), generator=gen)) % 4
        shape = scenes.shape.clone()
        shape[:, 0] = other
        pred = predict(replace(scenes, shape=shape))
        rows.append(("evidence reshaped to another class's shape, colour kept: prediction = colour's class",
                     float((pred == k).float().mean())))
        rows.append(("same edit: prediction = shape's class", float((pred == other).float().mean())))
        colour = scenes.colour.clone()
        colour[:, 0] = 0.5
        pred = predict(replace(scenes, colour=colour))
        rows.append(("evidence drawn grey, shape kept: prediction = shape's class", float((pred == k).float().mean())))
    else:
        for j in (0, 1):
            present = scenes.present.clone()
            present[:, j] = False
            pred = predict(replace(scenes, present=present))
            rows.append((f"part {j + 1} of 2 removed: accuracy w.r.t. the original pair (chance 1/3)",
                         float((pred == k).float().mean())))
    return rows


def write_card(path: Path, name: str, seed: int, recipe: Recipe, info: dict, command: str) -> None:
    spec = get_spec(name)
    kw = ", ".join(f"{k}={v!r}" for k, v in spec.timm_kwargs.items())
    n_params = info["n_params"]
    classes = "\n".join(f"  {i}. `{c}`" for i, c in enumerate(spec.class_names))
    probes = "\n".join(f"| {what} | {value:.3f} |" for what, value in info["probes"])
    hist = "\n".join(f"| {h['step']} | {h['train_loss']} | {h['val_acc']:.4f} | {h['minutes']} |" for h in info["history"])
    text = f"""# {name}

{spec.description}.

- **Task**: `load_dataset("{spec.dataset}", n, seed)` (see `vit_patching/zoo/datasets.py`). Classes:
{classes}
- **Architecture**: `timm.models.vision_transformer.VisionTransformer({kw})`, {n_params:,} parameters.
  Input: 64x64 RGB, normalised as `(pixels - 0.5) / 0.5` (`pretrained_cfg` mean = std = 0.5).
- **Held-out accuracy**: **{info['heldout_acc']:.4f}** on {HELDOUT_N} fresh images
  (`load_dataset("{spec.dataset}", {HELDOUT_N}, seed={HELDOUT_SEED})`, a seed never used in training),
  measured with the shipped weights.
- **Training**: seed {seed}; {recipe.steps} steps x batch {recipe.batch_size} of freshly generated images
  ({recipe.steps * recipe.batch_size:,} images, no repeats); AdamW (lr {recipe.lr}, weight decay {recipe.weight_decay},
  no decay on biases/norms/embeddings/prefix tokens), {recipe.warmup_steps} warmup steps then cosine to {recipe.min_lr},
  gradient clipping {recipe.grad_clip}.
- **Command**: `{command}`
- **Wall time**: {info['train_wall_s'] / 60:.1f} min training with {info['threads']} torch thread(s) ({info['machine']},
  torch {torch.__version__}); the machine was shared with other jobs, so this is an upper bound.
- **Weights**: `{name}.safetensors` (float32, {info['weights_bytes'] / 1e6:.2f} MB), load with
  `vit_patching.zoo.load_timm_model("{name}")` or `load_model("{name}")`.

## Cue probes (counterfactual edits of 2048 fresh scenes, seed {HELDOUT_SEED + 1})

{NOTES.get(name, "")}

| edit | fraction |
|---|---:|
{probes}

## Training log (monitoring sample of {recipe.eval_n} images, seed {seed + 12_345})

| step | train loss (EMA) | val acc | minutes |
|---:|---:|---:|---:|
{hist}
"""
    path.write_text(text)


def measure_and_document(name: str, out: Path, seed: int, recipe: Recipe, info: dict, command: str) -> None:
    """Measure the weights in ``out`` (held-out accuracy, cue probes) and write the card and its json."""
    from safetensors.torch import load_file

    weights = out / f"{name}.safetensors"
    model = build_timm_model(name)
    model.load_state_dict(load_file(str(weights)), strict=True)  # exactly what ships
    model.eval()
    info["heldout_acc"] = accuracy(model, get_spec(name).dataset, HELDOUT_N, HELDOUT_SEED)
    info["probes"] = cue_probes(model, name)
    info["n_params"] = sum(p.numel() for p in model.parameters())
    info["weights_bytes"] = weights.stat().st_size
    write_card(out / f"{name}.md", name, seed, recipe, info, command)
    record = {
        "name": name,
        "seed": seed,
        "recipe": asdict(recipe),
        "heldout_seed": HELDOUT_SEED,
        "heldout_n": HELDOUT_N,
        "heldout_acc": info["heldout_acc"],
        "probes": info["probes"],
        "train_wall_s": round(info["train_wall_s"], 1),
        "threads": info["threads"],
        "machine": info["machine"],
        "history": info["history"],
        "command": command,
    }
    (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    logger.info("%s: held-out accuracy %.4f, %.1f min, %s", name, info["heldout_acc"], info["train_wall_s"] / 60,
                weights)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all", choices=[*MODEL_SPECS, "all"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's steps (quick trials)")
    parser.add_argument("--lr", type=float, default=None, help="override the recipe's peak learning rate")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--warmup-steps", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--recard",
        action="store_true",
        help="do not train: re-measure the weights already in --out and rewrite their cards (keeps the training "
        "record of the existing <name>.json)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    names = list(MODEL_SPECS) if args.model == "all" else [args.model]
    machine = f"{platform.machine()}, {platform.processor() or platform.system()}"
    for name in names:
        if args.recard:
            old = json.loads((args.out / f"{name}.json").read_text())
            threads = old.get("threads", args.threads)
            command = old["command"]
            if threads != 2 and "--threads" not in command:
                command += f" --threads {threads}"
            info = {"history": old["history"], "train_wall_s": old["train_wall_s"], "threads": threads,
                    "machine": old.get("machine", machine)}
            measure_and_document(name, args.out, old["seed"], Recipe(**old["recipe"]), info, command)
            continue
        recipe = RECIPES[name]
        overrides = {
            k: v
            for k, v in (
                ("steps", args.steps),
                ("lr", args.lr),
                ("batch_size", args.batch_size),
                ("warmup_steps", args.warmup_steps),
                ("eval_every", args.eval_every),
            )
            if v
        }
        recipe = replace(recipe, **overrides)
        if "warmup_steps" not in overrides and recipe.warmup_steps > recipe.steps // 5:
            recipe = replace(recipe, warmup_steps=max(1, recipe.steps // 10))
        model, info = train(name, args.seed, recipe, progress=not args.no_progress)
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(args.out / f"{name}.safetensors"), metadata={"name": name, "seed": str(args.seed)})
        cmd_args = [f"--model {name}", f"--seed {args.seed}", "--out vit_patching/zoo/weights"]
        cmd_args += [f"--{k.replace('_', '-')} {v}" for k, v in overrides.items()]
        if args.threads != 2:
            cmd_args.append(f"--threads {args.threads}")
        info.update(threads=args.threads, machine=machine)
        command = "python scripts/train_toy_models.py " + " ".join(cmd_args)
        measure_and_document(name, args.out, args.seed, recipe, info, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
