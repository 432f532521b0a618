"""End-to-end tiny CPU training on synthetic data, and exact checkpoint/resume."""

import json
import shutil

import torch

from graft_train.cli import main

FIT = ["--base-arch", "tiny", "--device", "cpu", "--threads", "1", "--lr", "1e-3", "--wd", "0.01",
       "--head-lr-mult", "1", "--clip-grad", "1.0"]


def _log(run):
    return [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]


def test_tiny_model_learns_synthetic_tile_to_photo_mapping(synth_data, tmp_path):
    """Ground-photo embeddings are a function of the tile's colours (see synth.py), so a
    model that learns must (a) cut the loss and (b) retrieve held-out tiles' photos far
    above chance. Margins: the mean loss of the last 5 logged steps is below 0.6x the mean
    of the first logged steps, and recall@10 beats chance by >= 0.35 (image) and >= 0.25
    (pixel). Measured on the 2-core machine: loss 15.2 -> 6.2, image R@10 0.98 vs chance
    0.15, pixel R@10 0.99 vs 0.07 (a 60-step run already reaches 0.95 / 0.85)."""
    run = tmp_path / "run"
    assert main(["fit", "--data", str(synth_data), "--out", str(run), "--level", "both",
                 "--steps", "300", "--batch", "16", "--warmup", "20", "--log-every", "5",
                 "--eval-every", "0", "--save-every", "0", *FIT]) == 0
    log = _log(run)
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 60
    first, last = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    ev = [r["eval"] for r in log if "eval" in r and r.get("event") is None][-1]
    assert ev["image_r@10"] >= ev["image_chance@10"] + 0.35, ev
    assert ev["pixel_r@10"] >= ev["pixel_chance@10"] + 0.25, ev
    done = log[-1]
    assert done["event"] == "done" and done["step"] == 300
    print(f"\nloss {first:.2f} -> {last:.2f}; image R@10 {ev['image_r@10']:.3f} "
          f"(chance {ev['image_chance@10']:.3f}); pixel R@10 {ev['pixel_r@10']:.3f} "
          f"(chance {ev['pixel_chance@10']:.3f}); {done['steps_per_s']:.2f} steps/s")


def _states_equal(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_states_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_states_equal(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a):
        return torch.equal(a, b)
    return a == b


def test_resume_from_a_checkpoint_reaches_the_same_state(synth_data, tmp_path):
    """20 steps straight vs 10 steps, stop, resume from the step-10 checkpoint to 20:
    model, optimizer, scheduler and step must be identical (CPU kernels are deterministic)."""
    common = ["--data", str(synth_data), "--level", "both", "--steps", "20", "--batch", "8",
              "--warmup", "5", "--log-every", "5", "--eval-every", "0", "--save-every", "10", *FIT]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["fit", "--out", str(a), *common]) == 0
    b.mkdir()
    shutil.copy(a / "checkpoints" / "step_00000010.pt", b / "last.pt")
    assert main(["fit", "--out", str(b), "--resume", *common]) == 0
    ca = torch.load(a / "last.pt", weights_only=True)
    cb = torch.load(b / "last.pt", weights_only=True)
    assert ca["step"] == cb["step"] == 20
    for key in ("model", "optimizer", "scheduler"):
        assert _states_equal(ca[key], cb[key]), key
    la = [r["loss"] for r in _log(a) if "loss" in r and r["step"] > 10]
    lb = [r["loss"] for r in _log(b) if "loss" in r and r["step"] > 10]
    assert la == lb and len(la) == 2
    # resuming a finished run is a no-op that keeps the state
    assert main(["fit", "--out", str(b), "--resume", *common]) == 0
    assert _states_equal(torch.load(b / "last.pt", weights_only=True)["model"], cb["model"])
