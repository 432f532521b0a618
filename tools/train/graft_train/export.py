"""``export``: write a trained model as a graftdb bundle's image encoder.

The ONNX graph takes ``pixels`` float32 [N, 3, S, S] (RGB, CLIP mean/std normalised, S = 224
for the shipped architectures) and returns ``embedding`` [N, D] and ``patches`` [N, G*G, D]
(G = 14), both L2-normalised; N is dynamic. Traced with a batch of 2 (a batch of 1 would
freeze N), fast-path attention off, weights inside the one file (no ``.onnx.data``).
The dynamo exporter is used when ``onnxscript`` is installed, else the classic one.

Text encoder, tokenizer vocabulary and bundle.json come from ``--text-from`` (a base bundle);
bundle.json's name/licence/source are updated and a ``graft`` block is added. Without
``--text-from`` the bundle holds only the image encoder and a minimal bundle.json.
The export is checked against PyTorch in ONNX Runtime (max abs difference <= ``tol``).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from .model import GraftModel, ModelError, load_checkpoint_model

TEXT_SKIP = {"image.onnx", "image.onnx.data", "bundle.json"}


class ExportError(Exception):
    pass


class _Wrapper(torch.nn.Module):
    def __init__(self, model: GraftModel):
        super().__init__()
        self.model = model

    def forward(self, pixels):
        emb, patches = self.model(pixels)
        return emb, patches


def export_onnx(model: GraftModel, path: Path, exporter: str = "auto", opset: int = 18) -> str:
    """Export; returns the exporter used: "dynamo" (needs onnxscript; graph left unoptimised
    so initializers keep their PyTorch names and ``fit --base BUNDLE`` can load them back;
    ONNX Runtime folds the graph itself at load) or "torchscript" (the classic exporter)."""
    torch.backends.mha.set_fastpath_enabled(False)
    model = model.float().eval()
    w = _Wrapper(model).eval()
    ex = torch.randn(2, 3, model.image_size, model.image_size)
    if exporter == "auto":
        try:
            import onnxscript  # noqa: F401
            exporter = "dynamo"
        except ImportError:
            exporter = "torchscript"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            from torch.export import Dim
            torch.onnx.export(w, (ex,), str(path), dynamo=True, external_data=False, optimize=False,
                              input_names=["pixels"], output_names=["embedding", "patches"],
                              dynamic_shapes={"pixels": {0: Dim("N")}}, opset_version=opset,
                              verbose=False)
        elif exporter == "torchscript":
            torch.onnx.export(w, (ex,), str(path), dynamo=False, input_names=["pixels"],
                              output_names=["embedding", "patches"], opset_version=opset,
                              dynamic_axes={"pixels": {0: "N"}, "embedding": {0: "N"},
                                            "patches": {0: "N"}})
        else:
            raise ExportError(f"unknown exporter {exporter!r}")
    return exporter


def verify_onnx(model: GraftModel, path: Path, batch: int = 3, seed: int = 0) -> float:
    """Max abs difference between ONNX Runtime (CPU) and PyTorch fp32 on a random batch of
    ``batch`` (deliberately not the traced batch of 2)."""
    import onnxruntime as ort
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, model.image_size, model.image_size, generator=g)
    with torch.no_grad():
        emb, patches = model.float().eval()(x)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    o_emb, o_patches = sess.run(["embedding", "patches"], {"pixels": x.numpy()})
    if o_emb.shape != tuple(emb.shape) or o_patches.shape != tuple(patches.shape):
        raise ExportError(f"{path}: ONNX output shapes {o_emb.shape}, {o_patches.shape} "
                          f"!= torch {tuple(emb.shape)}, {tuple(patches.shape)}")
    return float(max(np.abs(o_emb - emb.numpy()).max(), np.abs(o_patches - patches.numpy()).max()))


def export(ckpt: str, to: str, text_from: str | None = None, name: str | None = None,
           licence: str | None = None, tol: float = 1e-4, overwrite: bool = False,
           exporter: str = "auto") -> dict:
    model, ck = load_checkpoint_model(ckpt)
    dst = Path(to)
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise ExportError(f"{dst}: exists and is not empty (pass --overwrite)")
    dst.mkdir(parents=True, exist_ok=True)
    base_bundle: dict = {}
    if text_from:
        src = Path(text_from)
        if not (src / "bundle.json").exists():
            raise ExportError(f"{src}: not a bundle (no bundle.json)")
        base_bundle = json.loads((src / "bundle.json").read_text())
        for f in src.iterdir():
            if f.name in TEXT_SKIP:
                continue
            if f.is_file():
                shutil.copy2(f, dst / f.name)
            elif f.is_dir():
                shutil.copytree(f, dst / f.name, dirs_exist_ok=True)
    image_path = dst / "image.onnx"
    exporter = export_onnx(model, image_path, exporter)
    diff = verify_onnx(model, image_path)
    if not diff <= tol:
        raise ExportError(f"{image_path}: ONNX differs from PyTorch by {diff:.3g} (> {tol})")

    cfg = ck["config"]
    base_name = base_bundle.get("name") or cfg.get("base_info", {}).get("bundle_name") or cfg["model"]["arch"]
    lic_key = "license" if "license" in base_bundle and "licence" not in base_bundle else "licence"
    base_lic = base_bundle.get("licence", base_bundle.get("license"))
    bundle = dict(base_bundle)
    bundle["name"] = name or f"{base_name}-graft-{cfg['args'].get('level', 'both')}"
    bundle[lic_key] = licence or base_lic or "unknown (set --licence)"
    bundle["source"] = (f"graft_train fine-tune of {base_bundle.get('source') or base_name} "
                        f"(weights: {cfg.get('base_info', {}).get('weights')}), step {ck['step']}")
    if not base_bundle:
        bundle.update({"image": "image.onnx", "text": None,
                       "embedding_dim": cfg["model"]["dim"], "image_size": cfg["model"]["image_size"]})
    bundle["graft"] = {"level": cfg["args"].get("level"), "arch": cfg["model"]["arch"],
                       "step": ck["step"], "tau": cfg["args"].get("tau"),
                       "outputs": {"embedding": ["N", cfg["model"]["dim"]],
                                   "patches": ["N", cfg["model"]["grid"] ** 2, cfg["model"]["dim"]]},
                       "patch_px": cfg["model"]["image_size"] // cfg["model"]["grid"],
                       "normalised": True, "onnx_max_abs_diff": diff, "exporter": exporter}
    (dst / "bundle.json").write_text(json.dumps(bundle, indent=2))
    return {"bundle": str(dst), "image_onnx": str(image_path), "max_abs_diff": diff,
            "exporter": exporter, "bytes": image_path.stat().st_size}
