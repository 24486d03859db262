"""Train the committed motion models: ``motion_8x64`` (TimeSformer, divided attention, width 192, depth 4, 8 frames of
64 px, 16 px patches) on the clips of a synthetic task.

``python -m models.train_motion [--task motion|motion16] [--out PATH] [--seed 0] [--clips N] [--epochs E]``

Tasks (:data:`calibration.clips.synthetic.TASKS`): ``motion`` (8 classes; ``models/weights/motion_tiny``) and
``motion16`` (8 motions x slow/fast, with a distractor and an occluder; ``models/weights/motion16``).
Each task has its own defaults (:data:`TASK_DEFAULTS`); the checkpoint's metadata records the task
(``synthetic_task``), the command, seeds, clip counts, epochs and the held-out accuracy and confusion.

Training and held-out clips are written as real H.264 files (cached under ``--data``) and read back
through :mod:`calibration.clips.video_reader`, so the model sees the codec's artefacts. Training decodes
each clip once, resizes its short side to 64 as the preprocessing does, and augments with a random
temporal window, a random horizontal crop, a random channel order, and label-aware mirroring and
time reversal (a mirrored "move_left" is a "move_right"; a reversed "grow" is a "shrink"; the task
gives these label maps). The held-out set comes from a different seed and is read clip by clip with
:func:`read_clip` exactly as at test time (centre window, centre crop). AdamW, warm-up then cosine decay, bf16 autocast
on CPU.

Two things make a from-scratch TimeSformer learn these clips in minutes (without them, a run on the
first version of the clips was still at chance after 68 epochs): :func:`init_for_motion`, which starts
temporal attention on the neighbouring frames, and a standardising BatchNorm in front of the head during
training (the order-of-frames signal is a small direction in the class-token features; standardised,
the head and the gradients find it at once). The BatchNorm folds exactly into the final LayerNorm
(:func:`fold_standardisation`), so the saved model is the plain published architecture.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from runtime.cli_args import ArgumentParser
from runtime.preprocess import PreprocessConfig

from runtime.cli_args import user_errors

from .checkpoints import save_checkpoint
from .config import get_preset
from .timesformer import TimeSformer

if TYPE_CHECKING:
    from calibration.clips.synthetic import SyntheticTask

DEFAULT_DATA = "artifacts/motion_data"
PREPROCESS = PreprocessConfig(num_frames=8, sampling_rate=2, sampling="dense", short_side=64, crop_size=64)
#: per task: output, training clips, epochs, held-out clips, --min-accuracy (the command line's defaults)
TASK_DEFAULTS: dict[str, dict] = {
    "motion": {
        "out": "models/weights/motion_tiny.safetensors",
        "clips": 1600,
        "epochs": 16,
        "heldout_clips": 160,
        "min_accuracy": 0.95,
    },
    "motion16": {
        "out": "models/weights/motion16.safetensors",
        "clips": 3200,
        "epochs": 20,
        "heldout_clips": 960,
        "min_accuracy": 0.85,
    },
}
DEFAULT_OUT = TASK_DEFAULTS["motion"]["out"]


def _dataset(root: Path, name: str, n: int, seed: int, progress: bool, task: str = "motion") -> list[tuple[Path, int]]:
    """Clips on disk, generated once and reused (the folder name carries the generator's source hash)."""
    from calibration.clips.synthetic import generate_dataset, read_dataset

    d = _data_dir(root, name, n, seed, task)
    try:
        items = read_dataset(d, task=task)
        if len(items) == n:
            return items
    except (FileNotFoundError, ValueError):
        pass
    for stale in d.glob("decoded_*.npy"):
        stale.unlink()
    return generate_dataset(d, n, seed, progress=progress, task=task)


def _data_dir(root: Path, name: str, n: int, seed: int, task: str = "motion") -> Path:
    from calibration.clips.synthetic import get_task

    version = get_task(task).source_hash()[:8]
    prefix = "" if task == "motion" else f"{task}_"
    return root / f"{prefix}{name}_seed{seed}_n{n}_{version}"


def _load_resized(
    items: list[tuple[Path, int]], short_side: int, progress: bool, cache: Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every clip and resize its short side as the preprocessing does: ``(N, T, 3, S, L)`` uint8.

    With ``cache``, the decoded tensor is kept in ``cache`` (``.npy``) and reused while it fits the clips."""
    from tqdm import tqdm

    from calibration.clips.video_reader import decode_frames

    labels = torch.tensor([label for _, label in items])
    if cache is not None and cache.is_file():
        data = np.load(cache, mmap_mode="r")
        if data.shape[0] == len(items) and data.shape[3] == short_side:
            return torch.from_numpy(np.ascontiguousarray(data)), labels
    clips = []
    for path, _ in tqdm(items, desc="decoding training clips", unit="clip", disable=not progress):
        frames = torch.from_numpy(decode_frames(path)).permute(0, 3, 1, 2).float()
        h, w = frames.shape[-2:]
        size = (short_side, int(w * short_side / h)) if h <= w else (int(h * short_side / w), short_side)
        resized = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=False)
        clips.append(resized.round_().clamp_(0, 255).to(torch.uint8))
    data = torch.stack(clips)
    if cache is not None:
        tmp = cache.with_name(f".{cache.stem}.tmp.npy")
        np.save(tmp, data.numpy())
        os.replace(tmp, cache)
    return data, labels


def _batch(
    data: torch.Tensor,
    labels: torch.Tensor,
    idx: torch.Tensor,
    pre: PreprocessConfig,
    g: torch.Generator,
    task: SyntheticTask,
) -> tuple[torch.Tensor, torch.Tensor]:
    """An augmented, normalised batch ``(B, T, 3, crop, crop)`` and its labels (the task's label maps follow
    the mirroring and time reversal)."""
    n_src, t, crop = data.shape[1], pre.num_frames, pre.crop_size
    window = pre.window()
    xs, ys = [], []
    for i in idx.tolist():
        start = int(torch.randint(0, max(n_src - window, 0) + 1, (1,), generator=g))
        frames = torch.arange(t) * pre.sampling_rate + start
        clip = data[i, frames.clamp_(max=n_src - 1)]
        h, w = clip.shape[-2:]
        top = int(torch.randint(0, h - crop + 1, (1,), generator=g))
        left = int(torch.randint(0, w - crop + 1, (1,), generator=g))
        clip = clip[..., top : top + crop, left : left + crop]
        y = int(labels[i])
        flips = torch.rand(3, generator=g)
        if flips[0] < 0.5:
            clip, y = clip.flip(-1), task.hflip[y]
        if flips[1] < 0.5:
            clip, y = clip.flip(-2), task.vflip[y]
        if flips[2] < 0.5:
            clip, y = clip.flip(0), task.reverse[y]
        clip = clip[:, torch.randperm(3, generator=g)]
        xs.append(clip)
        ys.append(y)
    x = torch.stack(xs).float()
    mean = torch.tensor(pre.mean).view(1, 1, 3, 1, 1) * 255.0
    std = torch.tensor(pre.std).view(1, 1, 3, 1, 1) * 255.0
    return (x - mean) / std, torch.tensor(ys)


@torch.no_grad()
def evaluate(
    model: TimeSformer, items: list[tuple[Path, int]], pre: PreprocessConfig, progress: bool = True, batch: int = 16
) -> tuple[float, np.ndarray]:
    """Top-1 accuracy over files read by :func:`calibration.clips.video_reader.read_clip`, and the confusion matrix."""
    from tqdm import tqdm

    from calibration.clips.video_reader import read_clip

    model.eval()
    k = model.config.num_classes
    confusion = np.zeros((k, k), np.int64)
    for s in tqdm(range(0, len(items), batch), desc="held-out evaluation", unit="batch", disable=not progress):
        chunk = items[s : s + batch]
        x = torch.from_numpy(np.stack([read_clip(p, pre) for p, _ in chunk]))
        pred = model(x).argmax(dim=1).numpy()
        for (_, y), p in zip(chunk, pred):
            confusion[y, p] += 1
    return float(np.trace(confusion) / max(confusion.sum(), 1)), confusion


def init_for_motion(model: TimeSformer, gain: float = 6.0) -> None:
    """Initialise a from-scratch TimeSformer so that temporal attention starts out seeing frame order.

    The official initialisation (zero time embedding, zeroed ``temporal_fc``, values near zero) suits
    fine-tuning an ImageNet-initialised model. From scratch it makes temporal attention a near-uniform,
    time-symmetric average, and "left" and "right" (and every other pair of classes here) differ only
    in the order of the frames. Here the first ``T`` channels of the time embedding are one-hot codes,
    and in every block the three temporal heads start attending to the previous frame, the next frame
    and the frame itself, with values, projection and ``temporal_fc`` at unit gain: each patch token
    then carries a random spatio-temporal filter of its neighbourhood in time. Only the initial values
    change; the architecture is the published one.
    """
    cfg = model.config
    t, d, heads = cfg.num_frames, cfg.embed_dim, cfg.num_heads
    hd = d // heads
    if t > hd:
        raise ValueError(f"init_for_motion: {t} frames need a head width of at least {t}, got {hd}")
    with torch.no_grad():
        model.time_embed.zero_()
        model.time_embed[0, torch.arange(t), torch.arange(t)] = 1.0
        model.patch_embed.proj.weight[:t] = 0.0  # keep the time code's channels free of content at first
        model.patch_embed.proj.bias[:t] = 0.0
        model.pos_embed[0, :, :t] = 0.0
        shifts = (-1, 1, 0)
        for blk in model.blocks:
            w = blk.temporal_attn.qkv.weight
            for h in range(heads):
                q_rows, k_rows = slice(h * hd, (h + 1) * hd), slice(d + h * hd, d + (h + 1) * hd)
                w[q_rows, :t] = 0.0
                w[k_rows, :t] = 0.0
                for f in range(t):
                    src = f + shifts[h % len(shifts)]
                    if 0 <= src < t:
                        w[h * hd + src, f] = gain  # the query of frame f matches the key of frame f + shift
                    w[d + h * hd + f, f] = gain
            torch.nn.init.normal_(w[2 * d :], std=d**-0.5)
            torch.nn.init.normal_(blk.temporal_attn.proj.weight, std=d**-0.5)
            torch.nn.init.normal_(blk.temporal_fc.weight, std=d**-0.5)


def fold_standardisation(model: TimeSformer, cfg) -> TimeSformer:
    """A plain :class:`TimeSformer` equal to ``model`` whose head is ``Sequential(BatchNorm1d, Linear)``.

    The BatchNorm's running statistics fold exactly into the final LayerNorm's scale and shift."""
    bn, head = model.head[0], model.head[1]
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    s = torch.sqrt(bn.running_var + bn.eps)
    state["norm.weight"] = model.norm.weight.detach() / s
    state["norm.bias"] = (model.norm.bias.detach() - bn.running_mean) / s
    state["head.weight"] = head.weight.detach().clone()
    state["head.bias"] = head.bias.detach().clone()
    final = TimeSformer(cfg)
    final.load_state_dict(state)
    return final.eval()


def _training_model(cfg) -> TimeSformer:
    """The model to train: motion-ready temporal attention, and a standardising BatchNorm in front of the head."""
    # the decomposed attention trains about 4x faster on CPU than PyTorch's flash kernel (same arithmetic)
    model = TimeSformer(cfg).set_attention_impl("decomposed")
    init_for_motion(model)
    # Training-only: standardise the head's input (BatchNorm without affine); folded into the final norm below.
    standardise = torch.nn.BatchNorm1d(cfg.embed_dim, affine=False)
    model.head = torch.nn.Sequential(standardise, model.head)
    return model


def _optimizer(
    model: TimeSformer, lr: float, total: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (no weight decay on embeddings, tokens, norms and biases), warm-up then cosine decay over ``total``."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n and "token" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n and "token" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.999)
    )
    warmup = max(1, int(0.06 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))),
    )
    return opt, sched


def _fit(
    model: TimeSformer,
    data: torch.Tensor,
    labels: torch.Tensor,
    pre: PreprocessConfig,
    spec,
    *,
    lr: float,
    epochs: int,
    batch: int,
    seed: int,
    stop_train_acc: float,
    progress: bool,
    t0: float,
) -> int:
    """Train ``model`` in place on the decoded clips; returns how many epochs ran (early stop on train accuracy)."""
    from tqdm import tqdm

    n = len(labels)  # one per clip
    steps_per_epoch = math.ceil(n / batch)
    total = steps_per_epoch * epochs
    opt, sched = _optimizer(model, lr, total)
    g = torch.Generator().manual_seed(seed)
    epochs_run = 0
    bar = tqdm(total=total, desc="training motion_8x64", unit="step", disable=not progress)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        seen = correct = 0
        loss_sum = 0.0
        for s in range(steps_per_epoch):
            x, y = _batch(data, labels, perm[s * batch : (s + 1) * batch], pre, g, spec)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            seen += len(y)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += loss.detach().item() * len(y)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        bar.write(
            f"epoch {epoch + 1}/{epochs}: loss {loss_sum / seen:.4f}  train acc {correct / seen:.4f}  "
            f"{time.time() - t0:.0f} s"
        )
        epochs_run = epoch + 1
        if correct / seen >= stop_train_acc:
            bar.write(f"stopping: train accuracy {correct / seen:.4f} >= {stop_train_acc}")
            break
    bar.close()
    return epochs_run


def _with_task_defaults(
    task: str, out: str | Path | None, clips: int | None, epochs: int | None, heldout_clips: int | None
) -> tuple[str | Path, int, int, int]:
    """``out``, ``clips``, ``epochs`` and ``heldout_clips``, each None replaced by the task's :data:`TASK_DEFAULTS`."""
    defaults = TASK_DEFAULTS[task]
    out = defaults["out"] if out is None else out
    clips = defaults["clips"] if clips is None else clips
    epochs = defaults["epochs"] if epochs is None else epochs
    heldout_clips = defaults["heldout_clips"] if heldout_clips is None else heldout_clips
    return out, clips, epochs, heldout_clips


def _save(
    final: TimeSformer, out: Path, below_min: bool, classes: list[str], metadata: dict[str, Any], dtype: torch.dtype
) -> None:
    """Save ``final`` with ``metadata`` (its ``path`` set) to ``out``, or beside it as ``<stem>.below_min`` when
    the model is ``below_min`` accuracy (a good committed model is kept)."""
    if below_min:  # keep a good committed model: write the weak one beside it
        out = out.with_name(out.stem + ".below_min" + out.suffix)
    metadata["path"] = str(out)
    save_checkpoint(final, out, labels=classes, preprocess=PREPROCESS, metadata=metadata, dtype=dtype)


def _training_data(
    root: Path, clips: int, seed: int, heldout_clips: int, heldout_seed: int, progress: bool, task: str
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]], torch.Tensor, torch.Tensor]:
    """(training items, held-out items, decoded training clips, their labels): the clip files generated (or found)
    under ``root`` and the training clips decoded at the short side (cached beside them)."""
    pre = PREPROCESS
    train_items = _dataset(root, "train", clips, seed, progress, task)
    heldout_items = _dataset(root, "heldout", heldout_clips, heldout_seed, progress, task)
    data, labels = _load_resized(
        train_items,
        pre.short_side,
        progress,
        cache=_data_dir(root, "train", clips, seed, task) / f"decoded_{pre.short_side}.npy",
    )
    return train_items, heldout_items, data, labels


def _round_to_stored(final: TimeSformer, weights_dtype: str) -> torch.dtype:
    """Round ``final``'s weights through ``weights_dtype`` (the type they are stored in), so that the evaluation
    sees exactly the stored weights; returns that torch dtype."""
    dtype: torch.dtype = getattr(torch, weights_dtype)
    with torch.no_grad():  # evaluate exactly the weights that are stored
        for p in final.parameters():
            p.copy_(p.to(dtype).float())
    return dtype


def _task_metadata(task: str, spec: "SyntheticTask", seed: int, heldout_seed: int) -> dict[str, Any]:
    """The metadata naming the synthetic task, its generator's hash and the seeds."""
    module = "calibration.clips.synthetic" if task == "motion" else "calibration.clips.synthetic_hard"
    return {
        "task": f"synthetic {task} clips ({module})",
        "synthetic_task": task,
        "generator_sha256": spec.source_hash(),
        "seed": seed,
        "heldout_seed": heldout_seed,
    }


def train(
    out: str | Path | None = None,
    seed: int = 0,
    clips: int | None = None,
    epochs: int | None = None,
    batch: int = 32,
    lr: float = 5e-4,
    heldout_clips: int | None = None,
    heldout_seed: int | None = None,
    data_dir: str = DEFAULT_DATA,
    threads: int = 2,
    progress: bool = True,
    command: str | None = None,
    min_accuracy: float = 0.0,
    stop_train_acc: float = 1.01,
    weights_dtype: str = "float16",
    task: str = "motion",
) -> dict:
    """Train on the synthetic ``task``, evaluate on held-out files, save ``out`` (+ JSON sidecar); returns the
    metadata written.

    ``out``, ``clips``, ``epochs`` and ``heldout_clips`` default to the task's :data:`TASK_DEFAULTS`. A model
    below ``min_accuracy`` is written as ``<stem>.below_min.safetensors`` instead of ``out``."""
    from calibration.clips.synthetic import get_task

    spec = get_task(task)
    classes = spec.classes
    out, clips, epochs, heldout_clips = _with_task_defaults(task, out, clips, epochs, heldout_clips)

    t0 = time.time()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    heldout_seed = seed + 1 if heldout_seed is None else heldout_seed
    if heldout_seed == seed:
        raise ValueError(f"heldout_seed must differ from the training seed {seed}")
    pre = PREPROCESS
    train_items, heldout_items, data, labels = _training_data(
        Path(data_dir), clips, seed, heldout_clips, heldout_seed, progress, task
    )

    cfg = get_preset("motion_8x64").config.replace(num_classes=len(classes))
    model = _training_model(cfg)
    epochs_run = _fit(
        model,
        data,
        labels,
        pre,
        spec,
        lr=lr,
        epochs=epochs,
        batch=batch,
        seed=seed,
        stop_train_acc=stop_train_acc,
        progress=progress,
        t0=t0,
    )

    final = fold_standardisation(model, cfg)  # the plain TimeSformer, default (sdpa) attention
    dtype = _round_to_stored(final, weights_dtype)
    train_seconds = time.time() - t0
    acc, confusion = evaluate(final, heldout_items, pre, progress)
    metadata = {
        **_task_metadata(task, spec, seed, heldout_seed),
        "heldout_accuracy": round(acc, 4),
        "heldout_clips": len(heldout_items),
        "train_clips": len(train_items),
        "epochs": epochs,
        "epochs_run": epochs_run,
        "batch": batch,
        "lr": lr,
        "seconds": round(time.time() - t0, 1),
        "train_seconds": round(train_seconds, 1),
        "threads": threads,
        "weights_dtype": weights_dtype,
        "confusion": confusion.tolist(),
        "command": command or "python -m models.train_motion",
        "torch": torch.__version__,
    }
    _save(final, Path(out), acc < min_accuracy, list(classes), metadata, dtype)
    return metadata


def _parser() -> ArgumentParser:
    """The command line of ``python -m models.train_motion``."""
    ap = ArgumentParser(prog="python -m models.train_motion", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--task",
        default="motion",
        choices=list(TASK_DEFAULTS),
        help="synthetic task (calibration.clips.synthetic.TASKS); it chooses the defaults marked 'per task'",
    )
    ap.add_argument(
        "--out",
        default=None,
        help="safetensors path (a .json sidecar is written beside it); per task: "
        + ", ".join(f"{k} {v['out']}" for k, v in TASK_DEFAULTS.items()),
    )
    ap.add_argument("--seed", type=int, default=0, help="training clips' seed (held-out clips use seed+1)")
    ap.add_argument(
        "--clips",
        type=int,
        default=None,
        help="training clips; per task: " + ", ".join(f"{k} {v['clips']}" for k, v in TASK_DEFAULTS.items()),
    )
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="per task: " + ", ".join(f"{k} {v['epochs']}" for k, v in TASK_DEFAULTS.items()),
    )
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument(
        "--stop-train-acc",
        type=float,
        default=1.01,
        help="end training after an epoch with at least this (augmented) training accuracy",
    )
    ap.add_argument(
        "--heldout-clips",
        type=int,
        default=None,
        help="per task: " + ", ".join(f"{k} {v['heldout_clips']}" for k, v in TASK_DEFAULTS.items()),
    )
    ap.add_argument("--data", default=DEFAULT_DATA, help="cache folder for the generated clips")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--weights-dtype",
        default="float16",
        choices=["float16", "float32"],
        help="type the weights are stored in (float16: half the size; the model always runs in float32)",
    )
    ap.add_argument(
        "--min-accuracy",
        type=float,
        default=None,
        help="exit 1 when held-out accuracy is below this; "
        "per task: " + ", ".join(f"{k} {v['min_accuracy']}" for k, v in TASK_DEFAULTS.items()),
    )
    return ap


@user_errors("make train-motion")
def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    a = ap.parse_args(argv)
    for key, value in TASK_DEFAULTS[a.task].items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    args = argv if argv is not None else sys.argv[1:]
    command = "python -m models.train_motion " + " ".join(shlex.quote(x) for x in args)
    meta = train(
        Path(a.out),
        a.seed,
        a.clips,
        a.epochs,
        a.batch,
        a.lr,
        a.heldout_clips,
        data_dir=a.data,
        threads=a.threads,
        command=command.strip(),
        min_accuracy=a.min_accuracy,
        stop_train_acc=a.stop_train_acc,
        weights_dtype=a.weights_dtype,
        task=a.task,
    )
    print(
        f"held-out top-1 {meta['heldout_accuracy']:.4f} on {meta['heldout_clips']} clips "
        f"(seed {meta['heldout_seed']}); "
        f"{meta['seconds']:.0f} s; wrote {meta['path']}"
    )
    if meta["heldout_accuracy"] < a.min_accuracy:
        print(
            f"held-out accuracy {meta['heldout_accuracy']:.4f} is below --min-accuracy {a.min_accuracy}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
