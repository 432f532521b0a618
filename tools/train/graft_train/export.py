"""``export``: write a trained model as a graftdb bundle's image encoder.

The ONNX graph takes ``pixels`` float32 [N, 3, S, S] (RGB, CLIP mean/std normalised, S = 224
for the shipped architectures) and returns ``embedding`` [N, D] and ``patches`` [N, G*G, D]
(G = 14), both L2-normalised; N is dynamic. Traced with a batch of 2 (a batch of 1 would
freeze N), fast-path attention off, weights inside the one file (no ``.onnx.data``).
The dynamo exporter is used when ``onnxscript`` is installed, else the classic one.

The bundle follows schema/bundle.md (the format tools/export writes and src/embed/bundle.rs
reads). Text encoder, tokenizer vocabulary and the test image come from ``--text-from`` (a
base bundle); bundle.json is the base's with name, family, weights, licence, source,
normalized and the image tower's fields replaced. Without a base bundle the result is an
image-only bundle (``text_model`` null) with OpenCLIP's vocabulary.
The export is checked against PyTorch in ONNX Runtime (max abs difference <= ``tol``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from .data import CLIP_MEAN, CLIP_STD
from .model import GraftModel, load_checkpoint_model

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


BUNDLE_FORMAT = "graftdb.model-bundle"
BUNDLE_VERSION = 1
VOCAB = "bpe_simple_vocab_16e6.txt.gz"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _openclip_vocab() -> Path:
    import open_clip
    p = Path(open_clip.__file__).parent / VOCAB
    if not p.exists():
        raise ExportError(f"{p}: the CLIP vocabulary is not in this open_clip install")
    return p


def export(ckpt: str, to: str, text_from: str | None = None, name: str | None = None,
           licence: str | None = None, tol: float = 1e-4, overwrite: bool = False,
           exporter: str = "auto") -> dict:
    """Write a graftdb model bundle (schema/bundle.md) holding the trained image tower.

    ``text_from`` (default: the bundle the run started from, if ``fit --base`` was one and
    it still exists) supplies text.onnx, the vocabulary, the tokenizer block and the test
    image; its ``dim`` must equal the model's. The test image's reference outputs
    (test/embedding.npy, test/patches.npy) are recomputed with the trained model.
    """
    model, ck = load_checkpoint_model(ckpt)
    model = model.float().eval()
    cfg = ck["config"]
    base_info = cfg.get("base_info", {})
    if text_from is None and base_info.get("base") and (Path(base_info["base"]) / "bundle.json").exists():
        text_from = base_info["base"]
    dst = Path(to)
    if dst.exists() and any(dst.iterdir()):
        if not overwrite:
            raise ExportError(f"{dst}: exists and is not empty (pass --overwrite)")
        shutil.rmtree(dst)
    dst.mkdir(parents=True, exist_ok=True)

    base: dict = {}
    src = None
    if text_from:
        src = Path(text_from)
        try:
            base = json.loads((src / "bundle.json").read_text())
        except FileNotFoundError:
            raise ExportError(f"{src}: not a bundle (no bundle.json)") from None
        if base.get("dim") is not None and int(base["dim"]) != model.dim:
            raise ExportError(f"{src}: bundle dim {base['dim']} != model dim {model.dim}; the "
                              "text tower must embed into the space the photos came from")
        for f in src.iterdir():
            if f.name in TEXT_SKIP or f.name == "test":
                continue
            if f.is_file():
                shutil.copy2(f, dst / f.name)
            elif f.is_dir():
                shutil.copytree(f, dst / f.name, dirs_exist_ok=True)
    tok = dict(base["tokenizer"]) if isinstance(base.get("tokenizer"), dict) else {}
    if not tok:
        shutil.copy2(_openclip_vocab(), dst / VOCAB)
        tok = {"kind": "clip-bpe", "vocab": VOCAB, "vocab_sha256": _sha256(dst / VOCAB),
               "start_id": 49406, "end_id": 49407, "context_length": 77, "clean": "lower",
               "licence": "MIT (OpenAI CLIP)"}

    image_path = dst / "image.onnx"
    exporter = export_onnx(model, image_path, exporter)
    verification = {"random_batch_n": 3, "tolerance": tol}
    worst = verify_onnx(model, image_path)
    verification["random_batch_max_abs"] = worst

    # Test image: keep the base bundle's input, recompute the reference outputs.
    test: dict = {}
    (dst / "test").mkdir(exist_ok=True)
    btest = base.get("test") or {}
    if src is not None and btest.get("pixels") and (src / btest["pixels"]).exists():
        pixels = np.load(src / btest["pixels"]).astype(np.float32)
        for key in ("image", "pixels", "texts", "tokens", "text_embedding"):
            if btest.get(key) and (src / btest[key]).exists():
                (dst / btest[key]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / btest[key], dst / btest[key])
                test[key] = btest[key]
    else:
        g = torch.Generator().manual_seed(0)
        pixels = torch.randn(1, 3, model.image_size, model.image_size, generator=g).numpy()
        np.save(dst / "test" / "pixels.npy", pixels)
        test["pixels"] = "test/pixels.npy"
    with torch.no_grad():
        ref_emb, ref_patches = model(torch.from_numpy(pixels))
    np.save(dst / "test" / "embedding.npy", ref_emb.numpy().astype(np.float32))
    np.save(dst / "test" / "patches.npy", ref_patches.numpy().astype(np.float32))
    test["embedding"], test["patches"] = "test/embedding.npy", "test/patches.npy"
    import onnxruntime as ort
    sess = ort.InferenceSession(str(image_path), providers=["CPUExecutionProvider"])
    o_emb, o_patches = sess.run(["embedding", "patches"], {"pixels": pixels})
    verification["test_image_embedding_max_abs"] = float(np.abs(o_emb - ref_emb.numpy()).max())
    verification["test_image_patches_max_abs"] = float(np.abs(o_patches - ref_patches.numpy()).max())
    worst = max(worst, verification["test_image_embedding_max_abs"],
                verification["test_image_patches_max_abs"])
    verification["passed"] = worst <= tol
    if not worst <= tol:
        raise ExportError(f"{image_path}: ONNX differs from PyTorch by {worst:.3g} (> {tol})")

    mcfg, args = cfg["model"], cfg["args"]
    level = args.get("level", "both")
    base_name = base.get("name") or base_info.get("bundle_name") or mcfg["arch"]
    base_random = bool(base.get("random_weights", False))
    synthetic = bool(cfg.get("data", {}).get("synthetic", False))
    weights_src = base_info.get("weights")
    bundle = dict(base)
    bundle.update({
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "name": name or f"{base_name}-graft-{level}",
        "family": "graft",
        "arch": mcfg["arch"],
        "weights": {"kind": "graft-train", "checkpoint": Path(ckpt).name, "step": ck["step"],
                    "level": level, "initial_image_weights": weights_src,
                    "text_weights": (base.get("weights") if base else None)},
        # Meaningless embeddings: trained on synthetic data, or the text tower is random.
        "random_weights": base_random or synthetic,
        "licence": licence or base.get("licence") or "unknown: pass --licence",
        "source": (f"graft_train fine-tune (GRAFT {level}-level loss, tau {args.get('tau')}) of "
                   f"{base_name} image tower (start: {weights_src}), {ck['step']} steps"
                   + (f"; text tower and tokenizer from {base_name}" if base else "")),
        "dim": mcfg["dim"],
        "normalized": True,
        "image_size": mcfg["image_size"],
        "patch_size": mcfg["image_size"] // mcfg["grid"],
        "patch_grid": [mcfg["grid"], mcfg["grid"]],
        "mean": list(CLIP_MEAN),
        "std": list(CLIP_STD),
        "resize": "shortest", "interpolation": "bicubic", "crop": "center",
        "image_model": {"file": "image.onnx", "input": "pixels", "embedding": "embedding",
                        "patches": "patches"},
        "text_model": base.get("text_model"),
        "context_length": base.get("context_length", 77),
        "tokenizer": tok,
        "test": test,
        "verification": verification,
        "exporter": {"tool": "tools/train (python -m graft_train export)", "onnx_exporter": exporter,
                     "torch": torch.__version__},
    })
    (dst / "bundle.json").write_text(json.dumps(bundle, ensure_ascii=False, indent=2) + "\n")
    return {"bundle": str(dst), "image_onnx": str(image_path), "max_abs_diff": worst,
            "exporter": exporter, "bytes": image_path.stat().st_size}
