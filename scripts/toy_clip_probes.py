"""Measurements of the zero-shot model ``toy-clip`` for its card: zero-shot accuracy, cue probes, neutral contexts.

Everything is computed with open_clip itself: ``encode_image`` of the images, ``encode_text`` of the 16
captions tokenised with the bundled CLIP tokenizer, both normalised, times ``logit_scale.exp()``
(``vit_patching.zoo.clip.zero_shot_logits``). Used by ``scripts/train_toy_clip.py`` (training and ``--recard``).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vit_patching.images import baseline_images
from vit_patching.zoo.clip import TOY_CLIP_CONFIG, build_open_clip_model, caption_embeddings, clip_captions
from vit_patching.zoo.datasets import CLASS_HUES, ToyScenes, batch_from_scenes, generate, sample_scenes
from vit_patching.zoo.registry import NORM_MEAN, NORM_STD

from toy_model_probes import (  # the other cards' seeds, sizes and neutrals, so the numbers compare
    HELDOUT_N, HELDOUT_SEED, MEASURED_NEUTRALS, NEUTRAL_N, NEUTRAL_SEED, empty_scene_images,
)

TASK = "captions"
PROBE_N = 2048
DATA_CONFIG = {"mean": NORM_MEAN, "std": NORM_STD}


class ZeroShot(torch.nn.Module):
    """open_clip's zero-shot scores over the captions: ``logit_scale.exp() * cos(image, caption)``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        with torch.no_grad():
            self.text = caption_embeddings(model, clip_captions())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image = self.model.encode_image(images, normalize=True)
        return self.model.logit_scale.exp() * image @ self.text.T


@torch.no_grad()
def scores(zs: ZeroShot, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([zs(images[i : i + 512]) for i in range(0, len(images), 512)])


@torch.no_grad()
def cue_probes(zs: ZeroShot) -> list[tuple[str, float]]:
    """Counterfactual edits of fresh scenes: does the caption's colour follow the object's hue, its shape the shape?"""
    scenes = sample_scenes(TASK, PROBE_N, HELDOUT_SEED + 1)
    gen = torch.Generator().manual_seed(HELDOUT_SEED + 2)
    n, hue, shape = PROBE_N, scenes.part_type[:, 0], scenes.shape[:, 0]

    def predict(edited: ToyScenes) -> torch.Tensor:
        return scores(zs, batch_from_scenes(edited).images).argmax(1)

    rows = [("unedited: zero-shot accuracy", float((predict(scenes) == scenes.labels).float().mean()))]
    # recolour: another class hue, the object's own jitter kept
    class_rgb = torch.tensor(list(CLASS_HUES.values()))
    new_hue = (hue + torch.randint(1, 4, (n,), generator=gen)) % 4
    colour = scenes.colour.clone()
    colour[:, 0] = (class_rgb[new_hue] + scenes.colour[:, 0] - class_rgb[hue]).clamp(0.0, 1.0)
    pred = predict(replace(scenes, colour=colour))
    rows.append(("object recoloured (another class hue, shape kept): caption = the new colour + the shape",
                 float((pred == 4 * new_hue + shape).float().mean())))
    rows.append(("same edit: caption's colour = the new colour", float((pred // 4 == new_hue).float().mean())))
    new_shape = (shape + torch.randint(1, 4, (n,), generator=gen)) % 4
    shapes = scenes.shape.clone()
    shapes[:, 0] = new_shape
    pred = predict(replace(scenes, shape=shapes))
    rows.append(("object reshaped (another evidence shape, hue kept): caption = the colour + the new shape",
                 float((pred == 4 * hue + new_shape).float().mean())))
    rows.append(("same edit: caption's shape = the new shape", float((pred % 4 == new_shape).float().mean())))
    colour = scenes.colour.clone()
    colour[:, 0] = 0.5
    pred = predict(replace(scenes, colour=colour))
    rows.append(("object drawn grey (shape kept): caption's shape = the shape (chance 0.25)",
                 float((pred % 4 == shape).float().mean())))
    return rows


@torch.no_grad()
def neutral_predictions(zs: ZeroShot) -> list[dict]:
    """Zero-shot distribution on CAAP's neutrals of empty scenes and on the empty scenes themselves (``none``)."""
    captions = clip_captions()
    scenes, empty = empty_scene_images(TASK, NEUTRAL_N, NEUTRAL_SEED)
    real = batch_from_scenes(scenes)
    cases = [("empty scene", "none", empty)] + [("empty scene", k, None) for k in MEASURED_NEUTRALS]
    cases += [("ordinary scene", k, None) for k in ("image_mean", "blur")]
    rows = []
    for source, kind, x in cases:
        src = empty if source == "empty scene" else real.images
        if x is None:
            x = baseline_images(src, kind, data_config=DATA_CONFIG)[0]
        probs = F.softmax(scores(zs, x), 1)
        mean = probs.mean(0)
        row = {"source": source, "neutral": kind, "caption": captions[int(mean.argmax())], "p": float(mean.max()),
               "mean_max_p": float(probs.amax(1).mean()), "max_max_p": float(probs.amax(1).max()), "n": len(x)}
        if source == "ordinary scene":
            row["label_rate"] = float((probs.argmax(1) == real.labels).float().mean())
        rows.append(row)
    return rows


@torch.no_grad()
def measure(weights: Path) -> dict:
    """Every number of the card, measured on the weights file ``weights`` (exactly what ships)."""
    model = build_open_clip_model(TOY_CLIP_CONFIG)
    model.load_state_dict(load_file(str(weights)), strict=True)
    zs = ZeroShot(model.eval())
    data = generate(TASK, HELDOUT_N, HELDOUT_SEED)
    pred = scores(zs, data.images).argmax(1)
    return {
        "heldout_seed": HELDOUT_SEED,
        "heldout_n": HELDOUT_N,
        "zero_shot_acc": float((pred == data.labels).float().mean()),
        "colour_acc": float((pred // 4 == data.labels // 4).float().mean()),
        "shape_acc": float((pred % 4 == data.labels % 4).float().mean()),
        "logit_scale": float(model.logit_scale.exp()),
        "probe_seed": HELDOUT_SEED + 1,
        "probes": cue_probes(zs),
        "neutral_seed": NEUTRAL_SEED,
        "neutrals": neutral_predictions(zs),
        "n_params": {"visual": sum(p.numel() for p in model.visual.parameters()),
                     "total": sum(p.numel() for p in model.parameters())},
        "weights_bytes": weights.stat().st_size,
    }



def write_card(record: dict) -> str:
    """The model card (markdown) of ``record`` (the json written beside the weights)."""
    cfg, r = record["config"], record["recipe"]
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    heads = v["width"] // v["head_width"]
    captions = clip_captions()
    caption_list = ", ".join(f"{i} `{c}`" for i, c in enumerate(captions))
    probes = "\n".join(f"| {what} | {value:.3f} |" for what, value in record["probes"])
    neutrals = "\n".join(
        f"| {n['source']} | {n['neutral']} | {n['caption']}, {n['p']:.4f} | {n['mean_max_p']:.3f} | {n['max_max_p']:.3f} |"
        for n in record["neutrals"]
    )
    label_rates = ", ".join(f"`{n['neutral']}` {n['label_rate']:.3f}" for n in record["neutrals"] if "label_rate" in n)
    hist = "\n".join(
        f"| {h['step']} | {h['train_loss']:.4f} | {h['train_acc']:.3f} | {h['neutral_mean_max_p']:.3f} | "
        f"{h['val_acc']:.4f} | {h['logit_scale']:.2f} | {h['minutes']:.2f} |"
        for h in record["history"]
    )
    worst_empty = max(n["max_max_p"] for n in record["neutrals"] if n["source"] == "empty scene")
    n_cap = len(captions)
    return f"""# toy-clip

A small CLIP-style image-text pair (open_clip `CLIP`) trained by this project on the zoo's synthetic scenes with
short captions, so that zero-shot patching, CAAP and circuits run offline on a foundation-model-shaped model.
Its image tower is open_clip's own ViT (CLS pooling, then the `proj` projection into the shared embedding space);
its classes are not a head but the {n_cap} caption embeddings of the text tower.

- **Data**: `load_dataset("captions", n, seed)` (see `vit_patching/zoo/datasets.py`): one object in a class hue
  (red, green, blue, yellow) and an evidence shape (circle, square, triangle, plus), hue and shape uniform and
  independent, 16-24 px, among 2-4 distractors (grey-ish objects of every shape, vivid objects in magenta, cyan,
  orange); the mask marks the object. Its caption `"a <colour> <shape>"` is the class, label `4 * colour + shape`:
  {caption_list}.
- **Architecture**: `open_clip.model.CLIP(**config)` with `config` = `TOY_CLIP_CONFIG`
  (`vit_patching/zoo/clip.py`, recorded in `toy-clip.json`):
  image tower {v['layers']} layers, width {v['width']}, {heads} heads, MLP ratio {v['mlp_ratio']}, patch {v['patch_size']} on
  {v['image_size']}x{v['image_size']} images (an 8x8 grid), CLS pooling (`pool_type='tok'`), `ln_pre`, exact GELU, no
  attentional pooler, no patch dropout, `final_ln_after_pool=False`, projection `proj` to {cfg['embed_dim']} dimensions (no bias);
  text tower {t['layers']} layers, width {t['width']}, {t['heads']} heads, context {t['context_length']}, vocabulary {t['vocab_size']}
  (open_clip's bundled CLIP BPE tokenizer, `open_clip.get_tokenizer("ViT-B-32")`, offline), causal mask, end-token
  pooling. {record['n_params']['total']:,} parameters, {record['n_params']['visual']:,} of them in the image tower
  (most of the rest is the text tower's token embedding table, kept at the full CLIP vocabulary so the standard
  tokenizer works). Input: `(pixels - 0.5) / 0.5` (`model.visual.preprocess_cfg` mean = std = 0.5), as
  `ToyBatch.images`. Plain forward of the image tower: `encode_image(x)`, the unnormalised 64-d embedding.
- **Zero-shot accuracy**: **{record['zero_shot_acc']:.4f}** on {record['heldout_n']} fresh images
  (`load_dataset("captions", {record['heldout_n']}, seed={record['heldout_seed']})`, a seed never used in training),
  computed with open_clip itself: `encode_image(images, normalize=True)`, `encode_text` of the {n_cap} captions tokenised
  with the bundled tokenizer (normalised), scores `logit_scale.exp() * cos`, prediction = the best caption;
  learnt `logit_scale.exp()` = {record['logit_scale']:.2f}. Colour of the predicted caption right: {record['colour_acc']:.4f};
  shape right: {record['shape_acc']:.4f}.
- **Neutral contexts**: the largest zero-shot probability of any caption on an empty scene or CAAP's neutrals of
  it is **{worst_empty:.3f}** (1/{n_cap} = {1 / n_cap:.4f} is undecided; table below).
- **Training**: {'fine-tuned from ' + record['init'] + '; ' if record.get('init') else ''}seed {record['seed']}; {r['steps']} steps x batch {r['batch_size']} of freshly generated images
  ({r['steps'] * r['batch_size']:,} images, no repeats) with their captions; symmetric contrastive loss over the closed
  caption set (image -> the {n_cap} captions; each caption present -> the batch's images, every image of that caption
  a positive; `scripts/train_toy_clip.py`), learnt temperature (CLIP's init 1/0.07, clamped at 100);
  AdamW (lr {r['lr']}, betas (0.9, 0.98), eps 1e-6, weight decay {r['weight_decay']}, none on biases, norms, embeddings and
  the temperature), {r['warmup_steps']} warmup steps then cosine to {r['min_lr']}, gradient clipping {r['grad_clip']}.
  Plus {r['neutral_rows']} **neutral rows** per batch ({r['neutral_rows']}/{r['batch_size'] + r['neutral_rows']} of the rows: the
  `NEUTRAL_MIX` of `scripts/train_toy_models.py`, built with `vit_patching.images.baseline_images`, i.e. empty
  scenes, their blur and mean colour, the `zeros` and `black` images), trained towards the uniform distribution
  over the captions and used as negatives for every caption.
- **Command**: `{record['command']}`
- **Wall time**: {record['train_wall_s'] / 60:.1f} min training with {record['threads']} torch thread(s) ({record['machine']});
  the machine was shared with other jobs, so this is an upper bound.
- **Weights**: `toy-clip.safetensors` (float32, {record['weights_bytes'] / 1e6:.2f} MB, the open_clip state dict), load with
  `vit_patching.zoo.clip.load_open_clip_model("toy-clip")` (an open_clip `CLIP`, eval mode; needs the
  `foundation` extra).

## Cue probes (counterfactual edits of {PROBE_N} fresh scenes, seed {record['probe_seed']})

The object is edited and the scene re-rendered (`batch_from_scenes`); the fraction of images whose best caption
is the stated one. The caption follows the object: recolouring it moves the caption's colour and keeps its shape,
reshaping it moves the caption's shape and keeps its colour. Drawn grey, the object's shape is read at about
chance: the model finds the object by its class hue (grey objects of every shape are distractors).

| edit | fraction |
|---|---:|
{probes}

## Neutral contexts ({NEUTRAL_N} fresh scenes, seed {record['neutral_seed']}, drawn without objects and as they are)

Zero-shot distribution over the {n_cap} captions on CAAP's image neutrals (`vit_patching.images.baseline_images`)
and on the empty scenes themselves (`none`). "caption, p": the caption of the mean distribution and its
probability; "mean / worst max p": the mean and the largest max caption probability over the images (1/{n_cap} =
{1 / n_cap:.4f} is undecided). `zeros` (the dataset-mean colour, CAAP's default) and `black` are one image.

| input | neutral | caption, p | mean max p | worst max p |
|---|---|---|---:|---:|
{neutrals}

On ordinary scenes, the fraction of neutrals whose best caption is still the scene's own: {label_rates}
(a blur keeps a blurred copy of the object, so some of it is expected).

## Training log (monitoring sample of {r['eval_n']} images, seed {record['seed'] + 12_345})

"train loss / acc / neutral max p": EMAs over the training batches (neutral max p: mean max caption probability
of the neutral rows); "val acc": zero-shot accuracy on the monitoring sample.

| step | train loss | train acc | neutral max p | val acc | logit scale | minutes |
|---:|---:|---:|---:|---:|---:|---:|
{hist}
"""
