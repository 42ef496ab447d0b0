"""Train an SAE on a HookedViT's activations: streamed in chunks, resumable bit for bit, sharded over processes.

:func:`train_sae` streams the activations at ``hook`` chunk by chunk (:mod:`vit_patching.sae.activations`), fits
one of four architectures (:mod:`vit_patching.sae.objectives`) with Adam, resamples dead latents (and, for top-k and
BatchTopK with ``aux_k``, trains them with the AuxK loss, the dead-token clock kept in the checkpoint), evaluates the
result (:func:`vit_patching.sae.metrics.evaluate_sae`) and writes a SAELens folder with ``metrics.json`` and
``training.json``. :func:`fit_sae` is the loop itself, over any activation source (a tensor of activations too).

The token stream is a pure function of the settings: epoch ``e``'s chunk ``c`` is shuffled by a generator seeded
from ``(seed, e, c)`` and cut into batches of ``batch_size`` tokens (the last one smaller), and every other random
draw (initialisation, resampling) is seeded from the settings and the step. A checkpoint therefore needs only the
weights, Adam's state, the dead-latent counters and the position in the stream; it is one safetensors file (the
JSON state in its header) written to a temporary name and renamed, every ``checkpoint_every`` steps. A rerun in the
same folder resumes from it and ends with the same weights bit for bit as an uninterrupted run.

Sharded runs (``torchrun``: ``RANK`` / ``WORLD_SIZE``, or an initialised ``torch.distributed`` group, gloo on CPU)
split each chunk's forward passes over the ranks and broadcast them, so every rank holds the same batch; rank ``r``
takes its slice of each batch (``torch.tensor_split``), the gradients of the batch-mean loss are summed with
``all_reduce`` and every rank takes the same Adam step. The result equals one process's to float rounding (the
batch gradient is summed in two parts); rank 0 writes the files, under the run folder's lock.

Example:
    >>> result = train_sae(model, "blocks.2.hook_resid_pre", "shapes", n_images=256, k=8, out_dir="sae_run")
    >>> result.metrics["explained_variance"], result.sae.cfg.hook_name
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor
from tqdm.auto import tqdm

from vit_patching.checks import check_choice, check_positive_int, check_positive_number, check_seed, is_int
from vit_patching.files import PathLike, atomic_write_bytes, atomic_write_text
from vit_patching.runs.lock import check_rank, run_lock
from vit_patching.runs.sharding import digest, dist_rank_world, model_digest
from vit_patching.sae.activations import ModelActivations, TensorActivations, check_hook, image_set
from vit_patching.sae.objectives import MIN_THRESHOLD, OBJECTIVES, AuxK
from vit_patching.sae.saelens_format import save_saelens
from vit_patching.sae.saes import POSITIONS, SAE, SAEConfig, make_sae

if TYPE_CHECKING:
    from vit_patching.model import HookedViT

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_FILE", "TRAIN_ARCHITECTURES", "TrainResult", "TrainSettings", "fit_sae", "train_sae"]

TRAIN_ARCHITECTURES = ("topk", "batchtopk", "relu", "jumprelu")
# The SAELens class each trained architecture is saved as (BatchTopK: JumpReLU with the calibrated threshold).
SAVED_AS = {"topk": "topk", "batchtopk": "jumprelu", "relu": "standard", "jumprelu": "jumprelu"}
CHECKPOINT_FILE = "checkpoint.safetensors"


@dataclass
class TrainSettings:
    """Everything that decides a trained SAE (written to ``training.json``).

    Attributes:
        architecture: ``"topk"``, ``"batchtopk"``, ``"relu"`` (L1 penalty) or ``"jumprelu"`` (L0 penalty).
        d_sae: Latents (default ``4 * d_in``).
        k: Latents per token (top-k; BatchTopK: on average over the batch).
        positions: Tokens trained on: ``"all"``, ``"patches"`` or ``"cls"`` (the splice's option, saved in cfg).
        epochs: Passes over the data.
        batch_size: Tokens per optimiser step.
        lr: Adam's learning rate.
        l1_coefficient: ReLU's L1 weight.
        l0_coefficient: JumpReLU's L0 weight.
        bandwidth: JumpReLU's straight-through kernel width.
        init_threshold: JumpReLU's initial threshold.
        b_dec_init: ``"mean"`` (the first chunk's mean token) or ``"zeros"`` (SAELens's two simple choices).
        resample_every: Steps per dead-latent window: at the end of each window, latents that fired on none of its
            tokens are resampled (``None``: never).
        resample_scale: Resampled encoder columns get this times the mean live encoder norm.
        aux_k: Top-k / BatchTopK only: the AuxK auxiliary loss (Gao et al. 2024) with this many dead latents per
            token reconstructing the error (``None``: off; Gao et al. use 512, EleutherAI's and SAELens's
            implementations ``d_in // 2``).
        aux_coefficient: The AuxK term's weight (Gao et al.: 1/32).
        dead_tokens_threshold: AuxK counts a latent dead once it has fired on none of this many training tokens.
        chunk_images: Images per activation chunk (the memory bound; also the shuffling unit).
        forward_batch: Images per forward pass.
        seed: Seeds the initialisation, the shuffling and the resampling.
        checkpoint_every: Steps between checkpoints.
    """

    architecture: str = "topk"
    d_sae: int | None = None
    k: int = 8
    positions: str = "all"
    epochs: int = 1
    batch_size: int = 1024
    lr: float = 1e-3
    l1_coefficient: float = 1e-3
    l0_coefficient: float = 1e-3
    bandwidth: float = 1e-3
    init_threshold: float = 1e-3
    b_dec_init: str = "mean"
    resample_every: int | None = None
    resample_scale: float = 0.2
    aux_k: int | None = None
    aux_coefficient: float = 1 / 32
    dead_tokens_threshold: int = 100_000
    chunk_images: int = 64
    forward_batch: int = 32
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        check_choice(self.architecture, TRAIN_ARCHITECTURES, "architecture")
        if self.d_sae is not None:
            check_positive_int(self.d_sae, "d_sae")
        check_positive_int(self.k, "k")
        check_choice(self.positions, POSITIONS, "positions")
        check_choice(self.b_dec_init, ("mean", "zeros"), "b_dec_init")
        for name in ("epochs", "batch_size", "chunk_images", "forward_batch", "checkpoint_every"):
            check_positive_int(getattr(self, name), name)
        for name in ("lr", "bandwidth", "init_threshold", "resample_scale"):
            check_positive_number(getattr(self, name), name)
        for name in ("l1_coefficient", "l0_coefficient"):
            check_positive_number(getattr(self, name), name, allow_zero=True)
        if self.resample_every is not None:
            check_positive_int(self.resample_every, "resample_every")
        if self.aux_k is not None:
            check_positive_int(self.aux_k, "aux_k")
            if self.architecture not in ("topk", "batchtopk"):
                raise ValueError(f"aux_k: expected None for architecture {self.architecture!r} (AuxK trains top-k and "
                                 f"BatchTopK SAEs), got {self.aux_k!r}")
        check_positive_number(self.aux_coefficient, "aux_coefficient", allow_zero=True)
        check_positive_int(self.dead_tokens_threshold, "dead_tokens_threshold")
        check_seed(self.seed, "seed")


@dataclass
class TrainResult:
    """A trained SAE, its metrics (``None`` when not evaluated), the loss history and the output folder."""

    sae: SAE
    metrics: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path | None = None


def _generator(*parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(int(digest(*parts)[:15], 16))


def _new_sae(settings: TrainSettings, d_in: int, hook_name: str | None, init: SAE | None = None) -> SAE:
    arch = "jumprelu" if settings.architecture == "batchtopk" else SAVED_AS[settings.architecture]
    cfg = SAEConfig(arch, d_in, settings.d_sae or 4 * d_in, hook_name=hook_name, positions=settings.positions,
                    k=settings.k if arch == "topk" else None)
    if init is not None:
        if not isinstance(init, SAE) or init.cfg.architecture != arch or (init.d_in, init.d_sae) != (cfg.d_in, cfg.d_sae):
            got = (f"{init.cfg.architecture!r} with d_in={init.d_in}, d_sae={init.d_sae}" if isinstance(init, SAE)
                   else type(init).__name__)
            raise ValueError(f"init: expected an {arch!r} SAE with d_in={cfg.d_in}, d_sae={cfg.d_sae}, got {got}")
    with torch.random.fork_rng(devices=[]):  # SAELens's initialisation, seeded, without touching the global RNG
        torch.manual_seed(settings.seed)
        sae = make_sae(cfg)
    with torch.no_grad():
        if init is not None:  # start from given weights (continued training; tests plant dead latents)
            for name, p in sae.named_parameters():
                p.copy_(getattr(init, name))
            return sae
        sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))  # unit decoder rows, encoder = decoder transposed
        sae.W_enc.copy_(sae.W_dec.T)
        if settings.architecture == "jumprelu":
            sae.threshold.fill_(settings.init_threshold)
    return sae


class _Trainer:
    """The state a checkpoint holds, and one optimiser step."""

    def __init__(self, sae: SAE, settings: TrainSettings, rank: int, world_size: int):
        self.sae, self.s, self.rank, self.world = sae, settings, rank, world_size
        if settings.architecture == "batchtopk":
            sae.threshold.requires_grad_(False)  # set from the running threshold at the end
        self.names = [n for n, p in sae.named_parameters() if p.requires_grad]
        self.params = [dict(sae.named_parameters())[n] for n in self.names]
        self.opt = torch.optim.Adam(self.params, lr=settings.lr)
        self.window_fired = torch.zeros(sae.d_sae, dtype=torch.long)
        self.tokens_since_fired = torch.zeros(sae.d_sae, dtype=torch.long)  # AuxK's dead-latent clock
        self.batchtopk = {"threshold": torch.tensor(float("nan"))}
        self.pos = {"step": 0, "epoch": 0, "chunk": 0, "batch": 0}
        self.history: list[dict[str, Any]] = []
        self.resampled = 0

    # ---------------------------------------------------------------- one step
    def step(self, x: Tensor) -> None:
        s, sae = self.s, self.sae
        mine = torch.tensor_split(x, self.world)[self.rank]
        kwargs = {"k": s.k, "state": self.batchtopk, "l1_coefficient": s.l1_coefficient,
                  "l0_coefficient": s.l0_coefficient, "bandwidth": s.bandwidth}
        if s.aux_k is not None:
            reduce = _all_reduce if self.world > 1 else (lambda t: t)
            kwargs["aux"] = AuxK(self.tokens_since_fired >= s.dead_tokens_threshold, s.aux_k, s.aux_coefficient,
                                 x.shape[0], reduce)
        loss_sum, latents = OBJECTIVES[s.architecture](sae, mine, x, **kwargs)
        (loss_sum / x.shape[0]).backward()
        fired = (latents.detach() > 0).sum(0)
        stats = torch.stack([loss_sum.detach(), (latents.detach() > 0).sum().to(loss_sum.dtype)])
        if self.world > 1:  # the batch-mean gradient, summed over the ranks' slices
            for p in self.params:
                dist.all_reduce(p.grad)
            dist.all_reduce(fired)
            dist.all_reduce(stats)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            if s.architecture in ("topk", "batchtopk"):  # unit decoder rows: sparsity cannot hide in the norms
                sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
            if s.architecture == "jumprelu":
                sae.threshold.clamp_(min=MIN_THRESHOLD)
        self.window_fired += fired
        self.tokens_since_fired += x.shape[0]
        self.tokens_since_fired[fired > 0] = 0
        self.pos["step"] += 1
        step = self.pos["step"]
        self.history.append({"step": step, "loss": float(stats[0]) / x.shape[0], "l0": float(stats[1]) / x.shape[0]})
        if s.resample_every is not None and step % s.resample_every == 0:
            self.resample(x, step)

    def resample(self, x: Tensor, step: int) -> None:
        """Latents that fired on no token of the window get the direction of a batch token drawn with probability
        proportional to its squared reconstruction error (Anthropic, "Towards monosemanticity", 2023)."""
        sae, dead = self.sae, (self.window_fired == 0).nonzero().flatten()
        self.window_fired.zero_()
        if not dead.numel():
            return
        with torch.no_grad():
            err = (sae(x) - x).pow(2).sum(-1)
            if not float(err.sum()) > 0:
                return
            # distinct tokens where the batch has enough: copies of one token would decode it several times over
            distinct = int((err > 0).sum()) >= dead.numel()
            pick = torch.multinomial(err, dead.numel(), replacement=not distinct,
                                     generator=_generator(self.s.seed, "resample", step))
            dirs = sae.process_input(x[pick])
            dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            alive = torch.ones(sae.d_sae, dtype=torch.bool)
            alive[dead] = False
            enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
            scale = self.s.resample_scale
            sae.W_dec[dead] = dirs
            sae.W_enc[:, dead] = dirs.T * enc_norm * scale
            sae.b_enc[dead] = 0.0
            self.tokens_since_fired[dead] = 0  # a new direction starts AuxK's clock afresh
            if self.s.architecture == "jumprelu":
                sae.threshold[dead] = self.s.init_threshold
            for name, p in zip(self.names, self.params):  # Adam's moments of the new weights start afresh
                state = self.opt.state.get(p, {})
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        if name == "W_enc":
                            state[key][:, dead] = 0.0
                        elif name != "b_dec":
                            state[key][dead] = 0.0
        self.resampled += int(dead.numel())
        logger.info("step %d: resampled %d dead latents", step, dead.numel())

    # ---------------------------------------------------------------- checkpoints
    def save(self, path: Path, run_digest: str) -> None:
        tensors = {f"sae.{n}": p.detach().clone().contiguous() for n, p in self.sae.named_parameters()}
        opt = self.opt.state_dict()
        for i, st in opt["state"].items():
            for key, value in st.items():
                tensors[f"opt.{i}.{key}"] = value.detach().clone().reshape(value.shape).contiguous()
        tensors["window_fired"] = self.window_fired.clone()
        tensors["tokens_since_fired"] = self.tokens_since_fired.clone()
        tensors["batchtopk_threshold"] = self.batchtopk["threshold"].clone().reshape(1)
        state = {"digest": run_digest, "pos": self.pos, "param_groups": opt["param_groups"],
                 "history": self.history, "resampled": self.resampled}
        atomic_write_bytes(path, save(tensors, metadata={"state": json.dumps(state)}))

    def load(self, path: Path, run_digest: str) -> None:
        try:
            with safe_open(str(path), framework="pt") as f:
                state = json.loads((f.metadata() or {})["state"])
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except (OSError, SafetensorError, KeyError, ValueError) as err:
            raise ValueError(f"out_dir: expected a readable checkpoint at {str(path)!r}, got {type(err).__name__}: "
                             f"{err}; remove it to start afresh") from None
        if state.get("digest") != run_digest:
            raise ValueError(f"out_dir: {str(path)!r} is a checkpoint of other settings, model or data; choose "
                             f"another folder or remove it")
        with torch.no_grad():
            for n, p in self.sae.named_parameters():
                p.copy_(tensors[f"sae.{n}"])
        opt_state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, i, name = key.split(".", 2)
                opt_state.setdefault(int(i), {})[name] = value
        self.opt.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
        self.window_fired = tensors["window_fired"].clone()
        self.tokens_since_fired = tensors["tokens_since_fired"].clone()
        self.batchtopk["threshold"] = tensors["batchtopk_threshold"].reshape(())
        self.pos, self.history, self.resampled = state["pos"], state["history"], state["resampled"]


def _all_reduce(t: Tensor) -> Tensor:
    t = t.clone()
    dist.all_reduce(t)
    return t


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None and world_size is None:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        rank, world_size = dist_rank_world()
    check_rank(rank, world_size)
    if world_size > 1:  # type: ignore[operator]
        if not dist.is_initialized():
            dist.init_process_group("gloo")  # torchrun's env:// rendezvous
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise ValueError(f"rank, world_size: expected the torch.distributed group's ({dist.get_rank()}, "
                             f"{dist.get_world_size()}), got ({rank}, {world_size})")
    return rank, world_size  # type: ignore[return-value]


def final_sae(sae: SAE, settings: TrainSettings, batchtopk_threshold: Tensor) -> SAE:
    """The SAE to save: BatchTopK becomes a JumpReLU SAE whose threshold is the running threshold."""
    out = sae
    if settings.architecture == "batchtopk":
        with torch.no_grad():
            theta = batchtopk_threshold if not torch.isnan(batchtopk_threshold) else torch.tensor(0.0)
            sae.threshold.fill_(float(theta))
        sae.threshold.requires_grad_(True)
    out.cfg.metadata = {**out.cfg.metadata, "trained_architecture": settings.architecture,
                        **({"batchtopk_k": settings.k} if settings.architecture == "batchtopk" else {})}
    return out.eval()


def fit_sae(source: ModelActivations | TensorActivations, settings: TrainSettings, *, hook_name: str | None = None,
            out_dir: PathLike | None = None, run_digest: str = "", rank: int = 0, world_size: int = 1,
            progress: bool = True, stop_after: int | None = None,
            init: SAE | None = None) -> tuple[SAE, list[dict[str, Any]]]:
    """The training loop over an activation source (see the module docstring); resumes from ``out_dir``.

    Args:
        source: Chunks of activations ``[tokens, d_in]``.
        settings: The training settings.
        hook_name: The hook the SAE is for (stored in its config).
        out_dir: Where checkpoints go (``None``: none written).
        run_digest: What a checkpoint must match to be resumed (settings, model, data).
        rank, world_size: This process's rank and the number of ranks.
        progress: Show a tqdm bar (chunks).
        stop_after: Raise ``KeyboardInterrupt`` after this many steps of this call (tests simulate a kill).
        init: Start from this SAE's weights (the trained architecture's class and widths) instead of a fresh
            initialisation; ``b_dec`` is then kept.

    Returns:
        The trained SAE (eval mode) and the per-step history (``loss``: batch-mean loss, ``l0``).

    Example:
        >>> sae, history = fit_sae(TensorActivations(torch.randn(4096, 16)), TrainSettings(k=2, d_sae=32))
    """
    if not isinstance(source, (ModelActivations, TensorActivations)):
        raise TypeError(f"source: expected a ModelActivations or TensorActivations, got {type(source).__name__}")
    if not isinstance(settings, TrainSettings):
        raise TypeError(f"settings: expected a TrainSettings, got {type(settings).__name__}")
    sae = _new_sae(settings, source.d_in, hook_name, init)
    trainer = _Trainer(sae, settings, rank, world_size)
    ckpt = None if out_dir is None else Path(out_dir) / CHECKPOINT_FILE
    if ckpt is not None and ckpt.is_file():
        trainer.load(ckpt, run_digest)
        logger.info("resumed from %s at step %d", ckpt, trainer.pos["step"])
    done = 0
    start = (trainer.pos["epoch"], trainer.pos["chunk"], trainer.pos["batch"])
    bar = tqdm(total=settings.epochs * source.n_chunks, desc="train_sae", unit="chunk", disable=not progress)
    with bar:
        for epoch in range(settings.epochs):
            for c in range(source.n_chunks):
                bar.update(1)
                if (epoch, c) < start[:2]:
                    continue
                x_chunk = source.chunk(c, rank, world_size)
                if trainer.pos["step"] == 0 and init is None and settings.b_dec_init == "mean":
                    with torch.no_grad():
                        sae.b_dec.copy_(x_chunk.mean(0))
                order = torch.randperm(x_chunk.shape[0], generator=_generator(settings.seed, epoch, c))
                batches = order.split(settings.batch_size)
                for b, idx in enumerate(batches):
                    if (epoch, c, b) < start:
                        continue
                    trainer.step(x_chunk[idx])
                    nxt = (epoch, c, b + 1) if b + 1 < len(batches) else (epoch, c + 1, 0)
                    trainer.pos.update(epoch=nxt[0], chunk=nxt[1], batch=nxt[2])
                    done += 1
                    if ckpt is not None and rank == 0 and trainer.pos["step"] % settings.checkpoint_every == 0:
                        trainer.save(ckpt, run_digest)
                    if stop_after is not None and done >= stop_after:
                        raise KeyboardInterrupt(f"stop_after={stop_after} steps (simulated kill)")
    logger.info("trained %d steps (%d resampled latents)", trainer.pos["step"], trainer.resampled)
    return final_sae(sae, settings, trainer.batchtopk["threshold"]), trainer.history


def train_sae(model: "HookedViT", hook: str, data: Any, settings: TrainSettings | None = None, *,
              n_images: int | None = None, data_seed: int = 0, out_dir: PathLike | None = None,
              eval_data: Any = None, eval_n_images: int | None = None, eval_data_seed: int = 0,
              rank: int | None = None, world_size: int | None = None, progress: bool = True,
              stop_after: int | None = None, **overrides: Any) -> TrainResult:
    """Train an SAE on ``model``'s activations at ``hook`` over the images of ``data``.

    Args:
        model: The HookedViT (left unchanged).
        hook: The hook point read, e.g. ``"blocks.2.hook_resid_pre"`` (``get_act_name("resid_pre", 2)``).
        data: A zoo data set name (with ``n_images``, ``data_seed``), an image folder, a tensor of normalised
            images or a :class:`vit_patching.runs.dataset.ImageSet`.
        settings: The training settings; ``**overrides`` set single fields (``k=16``, ``architecture="relu"``).
        n_images, data_seed: How many images of ``data`` (all of a folder or tensor by default) and the zoo seed.
        out_dir: The output folder: checkpoints while training (a rerun resumes), then ``cfg.json`` +
            ``sae_weights.safetensors`` (SAELens), ``metrics.json`` and ``training.json``. ``None``: nothing written.
        eval_data, eval_n_images, eval_data_seed: The images :func:`~vit_patching.sae.metrics.evaluate_sae` scores
            the SAE on (default: the training images).
        rank, world_size: This process's share of a sharded run (default: from ``torch.distributed`` or the
            ``RANK`` / ``WORLD_SIZE`` environment; ``(0, 1)`` alone).
        progress: tqdm bars.
        stop_after: Stop (``KeyboardInterrupt``) after this many steps, as a kill would (tests).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError / TypeError: a bad argument, naming it, before any activation is computed.

    Example:
        >>> model = vp.load_model("toy-shapes")
        >>> res = train_sae(model, "blocks.2.hook_resid_pre", "shapes", n_images=64, k=4, d_sae=256,
        ...                 batch_size=512, progress=False)
        >>> res.sae.cfg.architecture, res.sae.d_sae
        ('topk', 256)
    """
    from vit_patching.sae.metrics import evaluate_sae

    fields_ = {f.name for f in fields(TrainSettings)}
    unknown = sorted(set(overrides) - fields_)
    if unknown:
        raise TypeError(f"{unknown[0]}: not a training setting (expected one of {sorted(fields_)})")
    if settings is not None and not isinstance(settings, TrainSettings):
        raise TypeError(f"settings: expected a TrainSettings or None, got {type(settings).__name__}")
    settings = TrainSettings(**{**(asdict(settings) if settings else {}), **overrides})
    check_hook(model, hook, settings.positions)
    images = image_set(data, n_images, data_seed)
    eval_images = images if eval_data is None else image_set(eval_data, eval_n_images, eval_data_seed)
    if stop_after is not None and (not is_int(stop_after) or stop_after < 1):
        raise ValueError(f"stop_after: expected a positive int or None, got {stop_after!r}")
    rank, world_size = _rank_world(rank, world_size)
    source = ModelActivations(model, hook, images, settings.positions, settings.chunk_images, settings.forward_batch)
    run_digest = digest(asdict(settings), source.describe(), model_digest(model))
    lock = run_lock(out_dir, run_digest, world_size) if out_dir is not None else contextlib.nullcontext()
    with lock:
        sae, history = fit_sae(source, settings, hook_name=hook, out_dir=out_dir, run_digest=run_digest,
                               rank=rank, world_size=world_size, progress=progress, stop_after=stop_after)
        metrics = evaluate_sae(model, sae, eval_images, positions=settings.positions,
                               batch_size=settings.forward_batch, progress=progress)
        metrics["final_loss"] = history[-1]["loss"] if history else None
        if out_dir is not None and rank == 0:
            out = Path(out_dir)
            save_saelens(sae, out)
            record = {"settings": asdict(settings), "data": source.describe(), "eval_data": dict(eval_images.source),
                      "world_size": world_size, "steps": len(history), "saved_as": SAVED_AS[settings.architecture]}
            atomic_write_text(out / "training.json", json.dumps(record, indent=2) + "\n")
            atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
            (out / CHECKPOINT_FILE).unlink(missing_ok=True)
    return TrainResult(sae, metrics, history, None if out_dir is None else Path(out_dir))
