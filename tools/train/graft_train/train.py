"""``fit``: AdamW + warmup/cosine, optional AMP, checkpoints with exact resume, JSONL log.

Batches are a pure function of (seed, step): epoch e uses the permutation
``randperm(n, Generator(seed + e))`` cut into ``n // batch`` batches. A resumed run therefore
sees the same batches as an uninterrupted one, and with deterministic kernels (CPU) it
reaches bit-identical weights.

Run directory layout::

    RUN_DIR/config.json          arguments, model config, where the weights came from
    RUN_DIR/log.jsonl            one JSON object per line: {"step", "loss", ...} or {"step", "eval": {...}}
    RUN_DIR/last.pt              latest checkpoint (atomic replace)
    RUN_DIR/checkpoints/step_XXXXXXXX.pt   the last ``--keep`` periodic checkpoints
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from .data import GraftPairs, collate
from .evaluate import evaluate
from .losses import image_loss, patch_index, pixel_loss
from .model import GraftModel, ModelError, build_model

log = logging.getLogger(__name__)
CKPT_FORMAT = "graft-train/1"


# ------------------------------------------------------------------ setup helpers ----------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda: no CUDA device is available to PyTorch")
    return torch.device(name)


def resolve_amp(amp: str, amp_dtype: str, device: torch.device) -> torch.dtype | None:
    """None (fp32) or the autocast dtype. auto = on for CUDA, off for CPU."""
    on = amp == "on" or (amp == "auto" and device.type == "cuda")
    if not on:
        return None
    if amp_dtype == "fp16":
        return torch.float16
    if amp_dtype == "bf16" or device.type == "cpu":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class StepBatches(torch.utils.data.Sampler):
    """Yields the index lists of steps ``start .. stop-1`` (see module docstring)."""

    def __init__(self, n: int, batch: int, seed: int, start: int, stop: int):
        if n == 0:
            raise ValueError("the train split has no tiles with photos")
        self.n, self.batch, self.seed, self.start, self.stop = n, min(batch, n), seed, start, stop
        self.per_epoch = max(1, n // self.batch)
        self._epoch, self._perm = -1, []

    def batch_for(self, step: int) -> list[int]:
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g).tolist()
        return self._perm[pos * self.batch:(pos + 1) * self.batch]

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield self.batch_for(step)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def param_groups(model: GraftModel, lr: float, wd: float, head_lr_mult: float) -> list[dict]:
    """No weight decay on 1-d tensors (norms, biases) and on the CLS/positional embeddings."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_wd = p.ndim < 2 or name.endswith(("class_embedding", "positional_embedding"))
        head = name.startswith("projector.")
        key = (no_wd, head)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if no_wd else wd,
                           "lr": lr * (head_lr_mult if head else 1.0)}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def lr_factor(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Linear warmup from ~0 to 1 over ``warmup`` steps, then cosine to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def rng_state() -> dict:
    npst = np.random.get_state()
    st = {"torch": torch.get_rng_state(), "python": random.getstate(),
          "numpy": {"name": npst[0], "keys": torch.from_numpy(npst[1].astype(np.int64)),
                    "pos": int(npst[2]), "has_gauss": int(npst[3]), "cached": float(npst[4])}}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in st["python"]))
    n = st["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _append_jsonl(path: Path, rec: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """On resume, drop log lines written after the checkpoint we resume from."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            pass
    path.write_text("".join(k + "\n" for k in keep))


# ------------------------------------------------------------------ the loop --------------

def compute_loss(model: GraftModel, batch: dict, level: str, device: torch.device,
                 amp_dtype: torch.dtype | None, tau: float) -> tuple[torch.Tensor, dict]:
    x = batch["pixels"].to(device, non_blocking=True)
    g = batch["photos"].to(device, non_blocking=True)
    ti = batch["tile_idx"].to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        emb, patches = model(x)
    parts = {}
    total = torch.zeros((), device=device)
    if level in ("image", "both"):
        parts["loss_image"] = image_loss(emb, g, ti, tau)
        total = total + parts["loss_image"]
    if level in ("pixel", "both"):
        pidx = patch_index(batch["offsets"], grid=model.grid).to(device)
        parts["loss_pixel"] = pixel_loss(patches, g, ti, pidx, tau)
        total = total + parts["loss_pixel"]
    return total, parts


def fit(args) -> dict:
    """Train; returns a summary dict (also written as the last log line)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logp = out / "log.jsonl"
    device = resolve_device(args.device)
    amp_dtype = resolve_amp(args.amp, args.amp_dtype, device)
    if args.threads:
        torch.set_num_threads(args.threads)

    train_ds = GraftPairs(args.data, "train", max_photos=args.max_photos)
    test_ds = GraftPairs(args.data, "test", max_photos=args.max_photos)
    dim = train_ds.dim

    resume_ck = None
    if args.resume and (out / "last.pt").exists():
        resume_ck = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        if resume_ck.get("format") != CKPT_FORMAT:
            raise ModelError(f"{out / 'last.pt'}: not a graft_train checkpoint")
        cfg = resume_ck["config"]["model"]
        model = GraftModel(cfg["arch"], cfg["dim"])
        model.load_state_dict(resume_ck["model"])
        base_info = resume_ck["config"].get("base_info", {})
    else:
        if args.resume:
            log.warning("%s: --resume given but no last.pt there; starting fresh", out)
        model, base_info = build_model(args.base, args.base_arch, dim, seed=args.seed)
    if model.dim != dim:
        raise ModelError(f"model dim {model.dim} != data embedding_dim {dim}")
    model.to(device).train()

    opt = torch.optim.AdamW(param_groups(model, args.lr, args.wd, args.head_lr_mult),
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, args.warmup, args.steps, args.min_lr_ratio))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    start = 0
    if resume_ck is not None:
        opt.load_state_dict(resume_ck["optimizer"])
        sched.load_state_dict(resume_ck["scheduler"])
        if resume_ck.get("scaler"):
            scaler.load_state_dict(resume_ck["scaler"])
        set_rng_state(resume_ck["rng"])
        start = int(resume_ck["step"])
        _truncate_log(logp, start)
    else:
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)

    arg_dict = {k: v for k, v in vars(args).items() if not callable(v)}
    config = {"model": model.config(), "args": arg_dict, "base_info": base_info,
              "amp_dtype": str(amp_dtype) if amp_dtype else None, "device": str(device),
              "data": {"train_tiles": len(train_ds), "test_tiles": len(test_ds), "dim": dim,
                       "path": str(args.data),
                       "synthetic": bool(train_ds.manifest.get("synthetic", False))}}
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    _append_jsonl(logp, {"step": start, "event": "resume" if resume_ck else "start",
                         "device": str(device), "amp": config["amp_dtype"],
                         "weights": base_info.get("weights")})

    sampler = StepBatches(len(train_ds), args.batch, args.seed, start, args.steps)
    loader = torch.utils.data.DataLoader(
        train_ds, batch_sampler=sampler, collate_fn=collate, num_workers=args.workers,
        pin_memory=device.type == "cuda", persistent_workers=False)
    (out / "checkpoints").mkdir(exist_ok=True)

    def checkpoint(step: int) -> None:
        ck = {"format": CKPT_FORMAT, "step": step, "model": model.state_dict(),
              "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
              "scaler": scaler.state_dict() if scaler.is_enabled() else None,
              "rng": rng_state(), "config": config}
        p = out / "checkpoints" / f"step_{step:08d}.pt"
        save_atomic(ck, p)
        save_atomic(ck, out / "last.pt")
        old = sorted((out / "checkpoints").glob("step_*.pt"))
        for q in old[:-args.keep] if args.keep > 0 else []:
            q.unlink()

    def run_eval(step: int) -> dict | None:
        if len(test_ds) == 0:
            return None
        r = evaluate(model, test_ds, device, batch=args.eval_batch, amp_dtype=amp_dtype)
        _append_jsonl(logp, {"step": step, "eval": r})
        return r

    first_loss = None
    last = {}
    t0 = time.perf_counter()
    t_win, n_win = t0, 0
    step = start
    if start == 0 and args.eval_every:
        run_eval(0)
    for batch in loader:
        loss, parts = compute_loss(model, batch, args.level, device, amp_dtype, args.tau)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if args.clip_grad:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
        scaler.step(opt)
        scaler.update()
        sched.step()
        step += 1
        n_win += 1
        lv = loss.item()
        if first_loss is None:
            first_loss = lv
        if step % args.log_every == 0 or step == args.steps:
            now = time.perf_counter()
            rate = n_win / max(now - t_win, 1e-9)
            last = {"step": step, "loss": lv, **{k: v.item() for k, v in parts.items()},
                    "lr": sched.get_last_lr()[0], "steps_per_s": rate,
                    "tiles_per_s": rate * batch["pixels"].shape[0],
                    "photos": int(batch["photos"].shape[0])}
            _append_jsonl(logp, last)
            t_win, n_win = now, 0
        if args.save_every and step % args.save_every == 0 and step != args.steps:
            checkpoint(step)
        if args.eval_every and step % args.eval_every == 0 and step != args.steps:
            run_eval(step)
    elapsed = time.perf_counter() - t0
    if step > start or not (out / "last.pt").exists():
        checkpoint(step)
    final_eval = run_eval(step)
    summary = {"step": step, "event": "done", "first_loss": first_loss, "last_loss": last.get("loss"),
               "seconds": elapsed, "steps_per_s": (step - start) / max(elapsed, 1e-9),
               "eval": final_eval}
    _append_jsonl(logp, summary)
    return summary
