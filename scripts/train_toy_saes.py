#!/usr/bin/env python
"""Train the shipped SAEs: one top-k SAE per zoo model at the middle block's residual stream, with its card.

For each model (``toy-shapes``, ``toy-conjunction``, ``toy-relation``, ``toy-clip``) this trains
``vit_patching.sae.train_sae`` at ``blocks.{L // 2}.hook_resid_pre`` (the input of the middle block) over every
token (CLS, registers and patches), on freshly generated images of the model's own zoo data set, evaluates it on a
few dozen other images (the card's evaluation set, which ``tests/sae/test_zoo_saes.py`` re-measures), and writes
``OUT/<model>/`` = SAELens folder (``cfg.json``, ``sae_weights.safetensors``) + ``metrics.json`` + ``training.json``
+ ``README.md`` (the card); with ``--docs docs/sae.md`` it then rewrites the table of ``docs/sae.md``'s "Shipped SAEs"
section from every model's ``metrics.json`` and ``training.json`` in ``OUT``. Run it on one thread, one model at a
time (the machine is shared).

Usage:
    OMP_NUM_THREADS=1 python scripts/train_toy_saes.py --model all --out vit_patching/zoo/saes --docs docs/sae.md
    OMP_NUM_THREADS=1 python scripts/train_toy_saes.py --model toy-shapes --out /tmp/saes --n-images 512  # trial
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import time
from pathlib import Path

import torch

import vit_patching as vp
from vit_patching.hook_names import get_act_name
from vit_patching.sae.train import TrainSettings, train_sae
from vit_patching.zoo.saes import SAE_DATASETS, SAE_EVAL_N, SAE_EVAL_SEED

TRAIN_SEED = 1000  # zoo data seed of the training images (the zoo models never saw small seeds)
SETTINGS = TrainSettings(architecture="topk", k=16, positions="all", epochs=2, batch_size=1024, lr=1e-3,
                         resample_every=100, chunk_images=256, forward_batch=64, seed=0, checkpoint_every=100)
# With SETTINGS these two kept about half (conjunction) and a quarter (relation) of their latents silent on the card's
# evaluation tokens, mostly latents too rare to fire there; at 512 latents no resampling / AuxK setting tried brought
# conjunction below about 0.38. Their data sets have fewer features than 512 latents split stably: with 256 latents
# resampled five times as often few stay silent and the explained variance is higher. AuxK (aux_k=64, dead after
# 10 000 tokens) on top of that gave 0.0859 / 0.9897 (conjunction) and 0.0117 / 0.9846 (relation) instead of
# 0.0469 / 0.9912 and 0.0234 / 0.9847, so it is left out (docs/sae.md, "Shipped SAEs"). toy-shapes and toy-clip keep
# their settings.
OVERRIDES = {name: dict(d_sae=256, resample_every=20) for name in ("toy-conjunction", "toy-relation")}


def model_settings(name: str, d_model: int) -> TrainSettings:
    """The settings ``name``'s shipped SAE is trained with."""
    return TrainSettings(**{**SETTINGS.__dict__, "d_sae": 4 * d_model, **OVERRIDES.get(name, {})})


def auxk_text(settings: TrainSettings) -> str:
    """The card's words for AuxK (empty when the run did not use it)."""
    if settings.aux_k is None:
        return ""
    s = settings
    return (f", plus the AuxK auxiliary loss\n  (Gao et al. 2024: the {s.aux_k} largest pre-activations among the "
            f"latents that fired on none of the last\n  {s.dead_tokens_threshold} training tokens reconstruct the "
            f"residual error, weight {s.aux_coefficient:g})")


def card(name: str, hook: str, settings: TrainSettings, n_images: int, metrics: dict, minutes: float,
         d_model: int) -> str:
    """The card's markdown (every number from ``metrics.json``, rounded as printed)."""
    data = SAE_DATASETS[name]
    ref = "the labels" if metrics["reference"] == "labels" else "the clean model's prediction"
    return f"""# SAE for {name}

A top-k sparse autoencoder (SAELens format) on `{name}`'s residual stream at `{hook}` (the input of the middle
block), over every token (CLS{", registers" if name == "toy-conjunction" else ""} and patches).
Load it with `vit_patching.zoo.load_sae("{name}")`; splice it with `model.add_sae(sae)` or `model.saes([sae])`.

- **SAE**: `topk`, d_in = {d_model}, d_sae = {settings.d_sae or 4 * d_model} ({(settings.d_sae or 4 * d_model) // d_model}x), k = {settings.k}, positions `{settings.positions}`,
  no input normalisation, `apply_b_dec_to_input`.
- **Training data**: `load_dataset("{data}", {n_images}, seed={TRAIN_SEED})` (`vit_patching.zoo`), {settings.epochs} epochs,
  activations streamed in chunks of {settings.chunk_images} images, shuffled within each chunk.
- **Settings**: Adam (lr {settings.lr}), batches of {settings.batch_size} tokens, unit decoder rows, `b_dec`
  initialised at the first chunk's mean token, dead latents resampled every {settings.resample_every} steps
  (Anthropic-style, encoder scale {settings.resample_scale}){auxk_text(settings)}, seed {settings.seed}; all of them in `training.json`.
- **Command**: `OMP_NUM_THREADS=1 python scripts/train_toy_saes.py --model {name} --out vit_patching/zoo/saes`
- **Training time**: {minutes:.1f} min with 1 torch thread ({platform.machine()}, torch {torch.__version__}; the
  machine was shared with other jobs, so this is an upper bound), evaluation included.

## Metrics

On the evaluation images `load_dataset("{data}", {SAE_EVAL_N}, seed={SAE_EVAL_SEED})` ({metrics["n_tokens"]} tokens),
with the SAE spliced without the error term (`vit_patching.sae.evaluate_sae`; full precision in `metrics.json`):

| metric | value |
| --- | ---: |
| explained variance | {metrics["explained_variance"]:.4f} |
| L0 (mean non-zero latents per token) | {metrics["l0"]:.4f} |
| dead latents (fire on no token) | {metrics["dead_fraction"]:.4f} |
| dense latents (fire on > {metrics["dense_threshold"]} of the tokens) | {metrics["dense_fraction"]:.4f} |
| accuracy, clean model (against {ref}) | {metrics["accuracy_clean"]:.4f} |
| accuracy, SAE spliced | {metrics["accuracy_spliced"]:.4f} |
| accuracy change | {metrics["accuracy_change"]:+.4f} |
| prediction agreement, spliced vs clean | {metrics["agreement"]:.4f} |
| KL(clean readout, spliced readout), nats per image | {metrics["kl"]:.6f} |

"Dead" counts the latents that fired on none of these {metrics["n_tokens"]} tokens: a latent that fires on fewer
than about one token in a few thousand is counted dead here, so the fraction is an upper bound of the latents
dead on the whole data distribution.
"""


def docs_table(out: Path) -> str:
    """The rows of docs/sae.md's table of shipped SAEs, from each model's metrics.json and training.json."""
    rows = []
    for name in SAE_DATASETS:
        m = json.loads((out / name / "metrics.json").read_text())
        t = json.loads((out / name / "training.json").read_text())
        rows.append(f"| `{name}` | `{t['data']['hook']}` | {m['explained_variance']:.4f} | {m['l0']:.1f} | "
                    f"{m['dead_fraction']:.4f} | {m['accuracy_clean']:.4f} → {m['accuracy_spliced']:.4f} | "
                    f"{m['agreement']:.4f} | {m['kl']:.6f} | {t['wall_minutes_1_thread']} |")
    return "\n".join(rows) + "\n"


def write_docs(docs: Path, out: Path) -> None:
    """Replace the table rows after the header of the "Shipped SAEs" table in ``docs``."""
    text = docs.read_text(encoding="utf-8")
    pattern = re.compile(r"(\| model \| hook \| explained variance \|[^\n]*\n\|[^\n]*\n)((?:\| `[^\n]*\n)+)")
    new, n = pattern.subn(lambda match: match.group(1) + docs_table(out), text)
    if n != 1:
        raise SystemExit(f"--docs: expected one table of shipped SAEs in {docs}, found {n}")
    docs.write_text(new, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="all", choices=["all", *SAE_DATASETS])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n-images", type=int, default=4096)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--docs", type=Path, help="rewrite this docs/sae.md's table of shipped SAEs at the end")
    parser.add_argument("--recard", action="store_true",
                        help="rewrite README.md from metrics.json and training.json (no training)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    for name in SAE_DATASETS if args.model == "all" else [args.model]:
        model = vp.load_model(name)
        hook = get_act_name("resid_pre", model.cfg.n_layers // 2)
        settings = model_settings(name, model.cfg.d_model)
        out = args.out / name
        if args.recard:
            record = json.loads((out / "training.json").read_text())
            metrics = json.loads((out / "metrics.json").read_text())
            (out / "README.md").write_text(card(name, hook, settings, record["data"]["n_images"], metrics,
                                                record["wall_minutes_1_thread"], model.cfg.d_model))
            continue
        start = time.perf_counter()
        res = train_sae(model, hook, SAE_DATASETS[name], settings, n_images=args.n_images, data_seed=TRAIN_SEED,
                        out_dir=out, eval_data=SAE_DATASETS[name], eval_n_images=SAE_EVAL_N,
                        eval_data_seed=SAE_EVAL_SEED, progress=args.progress)
        minutes = round((time.perf_counter() - start) / 60, 1)  # as the card and docs/sae.md state it
        record = json.loads((out / "training.json").read_text())
        record["wall_minutes_1_thread"] = minutes
        (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
        (out / "README.md").write_text(card(name, hook, settings, args.n_images, res.metrics, minutes,
                                            model.cfg.d_model))
        logging.info("%s: %.1f min, %s", name, minutes, json.dumps(res.metrics))
    if args.docs is not None:
        write_docs(args.docs, args.out)


if __name__ == "__main__":
    main()
