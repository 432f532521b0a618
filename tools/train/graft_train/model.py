"""The GRAFT satellite encoder: a CLIP ViT vision tower plus GRAFT's patch projector.

``GraftModel(pixels)`` returns ``(embedding [N, D], patches [N, G*G, D])``, both
L2-normalised:

* ``embedding`` is the CLIP image head: ``ln_post(CLS) @ proj`` (the image-level model);
* ``patches`` is GRAFT's projector, ``Linear(LayerNorm(token))`` (width -> D), applied to the
  raw transformer output tokens (before ``ln_post``), CLS dropped: row-major 14x14 grid for a
  224-px input with 16-px patches. A patch's vector describes its 16x16-px footprint.

Architectures: any OpenCLIP ViT name (``ViT-B-16`` etc., built with ``pretrained=None``;
weights come only from ``--base``) and ``tiny`` (width 64, 2 layers, 4 heads, 16-px patches,
224 px) for CPU tests.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)

TINY = dict(image_size=224, patch_size=16, width=64, layers=2, heads=4, mlp_ratio=4.0)


class ModelError(Exception):
    """A base model or checkpoint that cannot be used: says which file and why."""


def build_visual(arch: str, dim: int) -> nn.Module:
    """An OpenCLIP VisionTransformer with random (seeded by the caller) weights."""
    from open_clip.transformer import VisionTransformer
    if arch == "tiny":
        return VisionTransformer(output_dim=dim, **TINY)
    import open_clip
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ModelError(f"unknown OpenCLIP architecture {arch!r}")
    vcfg = dict(cfg["vision_cfg"])
    if "timm_model_name" in vcfg or not isinstance(vcfg.get("layers"), int):
        raise ModelError(f"{arch}: only OpenCLIP ViT towers are supported")
    if vcfg.get("attentional_pool") or vcfg.get("pool_type", "tok") != "tok":
        raise ModelError(f"{arch}: only CLS-pooled ViTs are supported")
    width = vcfg["width"]
    return VisionTransformer(
        image_size=vcfg.get("image_size", 224), patch_size=vcfg["patch_size"], width=width,
        layers=vcfg["layers"], heads=vcfg.get("heads", width // vcfg.get("head_width", 64)),
        mlp_ratio=vcfg.get("mlp_ratio", 4.0), ls_init_value=vcfg.get("ls_init_value"),
        output_dim=dim, no_ln_pre=vcfg.get("no_ln_pre", False),
        act_layer=nn.GELU if not cfg.get("quick_gelu") else _QuickGELU,
    )


class _QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


def arch_dim(arch: str) -> int | None:
    """The native embedding size of an OpenCLIP architecture (None for ``tiny``)."""
    if arch == "tiny":
        return None
    import open_clip
    cfg = open_clip.get_model_config(arch)
    return None if cfg is None else int(cfg["embed_dim"])


class GraftModel(nn.Module):
    def __init__(self, arch: str, dim: int):
        super().__init__()
        self.arch, self.dim = arch, dim
        self.visual = build_visual(arch, dim)
        width = self.visual.conv1.out_channels
        self.projector = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim))
        self.grid = self.visual.grid_size[0]
        self.image_size = self.visual.image_size[0]

    def config(self) -> dict:
        return {"arch": self.arch, "dim": self.dim, "grid": self.grid, "image_size": self.image_size}

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.visual
        x = v._embeds(pixels)
        x = v.transformer(x)
        pooled, _ = v._pool(x)
        emb = pooled @ v.proj
        patches = self.projector(x[:, 1:])
        return F.normalize(emb, dim=-1), F.normalize(patches, dim=-1)


# ---------------------------------------------------------------- loading --------------

def _unwrap_state_dict(obj) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ModelError("not a state_dict")
    sd = {}
    for k, v in obj.items():
        if not torch.is_tensor(v):
            continue
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        sd[k] = v
    return sd


def _load_torch_file(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:  # noqa: BLE001
        # OpenAI CLIP .pt files are TorchScript archives.
        if zipfile.is_zipfile(path):
            try:
                return torch.jit.load(str(path), map_location="cpu").state_dict()
            except Exception:  # noqa: BLE001
                pass
        raise ModelError(f"{path}: cannot load as a torch checkpoint ({first})") from None


def load_visual_weights(model: GraftModel, sd: dict, source: str, strict_visual: bool = True) -> None:
    """Copy a CLIP vision tower (keys ``visual.*``, or bare tower keys) into ``model``.

    Projector weights (``projector.*``) are loaded when present, otherwise kept at init.
    """
    if any(k.startswith("visual.") for k in sd):
        vis = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    else:
        vis = {k: v for k, v in sd.items() if not k.startswith("projector.")}
    proj = {k[len("projector."):]: v for k, v in sd.items() if k.startswith("projector.")}
    own = model.visual.state_dict()
    missing = [k for k in own if k not in vis]
    bad = [f"{k}: {tuple(vis[k].shape)} vs {tuple(own[k].shape)}" for k in own
           if k in vis and vis[k].shape != own[k].shape]
    if bad:
        raise ModelError(f"{source}: weights do not fit {model.arch} (dim {model.dim}): "
                         + "; ".join(bad[:4]))
    if missing and strict_visual:
        raise ModelError(f"{source}: no weights for {len(missing)} vision-tower tensors "
                         f"(e.g. {missing[:3]}); is --base-arch right?")
    model.visual.load_state_dict({k: v for k, v in vis.items() if k in own}, strict=False)
    if proj:
        model.projector.load_state_dict(proj)


def load_onnx_weights(model: GraftModel, onnx_path: Path) -> int:
    """Best effort: copy ONNX initializers whose names and shapes match our tensors.

    Returns the number of tensors copied. Works for image encoders exported from an
    OpenCLIP ``visual`` (or our own export) with parameter names preserved; exporters that
    rename, fuse or transpose weights give no match.
    """
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(onnx_path), load_external_data=True)
    inits = {i.name: i for i in m.graph.initializer}
    own = model.state_dict()
    found = {}
    for k, t in own.items():
        for cand in (k, k.replace("visual.", "", 1), "model." + k, "visual." + k):
            if cand in inits:
                arr = numpy_helper.to_array(inits[cand])
                if tuple(arr.shape) == tuple(t.shape):
                    found[k] = torch.from_numpy(arr.copy())
                break
    vis_keys = [k for k in own if k.startswith("visual.")]
    if all(k in found for k in vis_keys):
        model.load_state_dict(found, strict=False)
        return len(found)
    return 0


def is_bundle(path: Path) -> bool:
    return path.is_dir() and (path / "bundle.json").exists()


def build_model(base: str | None, base_arch: str | None, dim: int, seed: int = 0) -> tuple[GraftModel, dict]:
    """Build the model for ``fit``: returns (model, info about where weights came from).

    ``base`` may be: None (random init of ``base_arch``); a graftdb bundle directory
    (bundle.json + image.onnx; architecture = ``base_arch`` or bundle.json's ``arch``;
    weights are copied from image.onnx when its initializer names match the OpenCLIP tower,
    as in bundles written by our own ``export``, else random init with a warning); one of our own
    checkpoints (arch taken from it); or an OpenCLIP/OpenAI CLIP state_dict or .pt file
    (``base_arch`` names its architecture, default ViT-B-16).
    """
    torch.manual_seed(seed)
    info: dict = {"base": base}
    if base is None:
        arch = base_arch or "tiny"
        info["weights"] = "random"
        return GraftModel(arch, dim), info
    p = Path(base)
    if is_bundle(p):
        try:
            bj = json.loads((p / "bundle.json").read_text())
        except json.JSONDecodeError as e:
            raise ModelError(f"{p / 'bundle.json'}: not valid JSON ({e})") from None
        if bj.get("dim") is not None and int(bj["dim"]) != dim:
            raise ModelError(f"{p}: bundle dim {bj['dim']} != data embedding_dim {dim}; the "
                             "photos must be embedded by the bundle's CLIP for text search to work")
        arch = base_arch or bj.get("arch") or "ViT-B-16"
        model = GraftModel(arch, dim)
        info["bundle_name"] = bj.get("name")
        onnx_path = p / (bj.get("image_model") or {}).get("file", "image.onnx")
        n = load_onnx_weights(model, onnx_path) if onnx_path.exists() else 0
        if n:
            info["weights"] = f"onnx:{onnx_path} ({n} tensors)"
        else:
            info["weights"] = "random"
            w = bj.get("weights") or {}
            hint = (f" (this bundle was exported from {w['file']}: pass that file as --base)"
                    if isinstance(w, dict) and w.get("file") else "")
            log.warning("%s: image.onnx weights could not be mapped onto OpenCLIP %s; the "
                        "vision tower starts from random init. Pass an OpenCLIP state_dict or "
                        "checkpoint as --base to start from real weights%s", p, arch, hint)
        return model, info
    if not p.exists():
        raise ModelError(f"{p}: no such file or directory")
    obj = _load_torch_file(p)
    if isinstance(obj, dict) and obj.get("format") == "graft-train/1":
        cfg = obj["config"]["model"]
        if cfg["dim"] != dim:
            raise ModelError(f"{p}: checkpoint has dim {cfg['dim']}, data has {dim}")
        model = GraftModel(cfg["arch"], cfg["dim"])
        model.load_state_dict(obj["model"])
        info["weights"] = f"graft checkpoint {p} step {obj.get('step')}"
        return model, info
    arch = base_arch or "ViT-B-16"
    model = GraftModel(arch, dim)
    load_visual_weights(model, _unwrap_state_dict(obj), str(p))
    info["weights"] = f"state_dict {p}"
    return model, info


def load_checkpoint_model(path: str | os.PathLike) -> tuple[GraftModel, dict]:
    """Rebuild the model saved in one of our checkpoints; returns (model, checkpoint dict)."""
    p = Path(path)
    if p.is_dir():
        p = p / "last.pt"
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{p}: no such checkpoint") from None
    if not isinstance(ck, dict) or ck.get("format") != "graft-train/1":
        raise ModelError(f"{p}: not a graft_train checkpoint")
    cfg = ck["config"]["model"]
    model = GraftModel(cfg["arch"], cfg["dim"])
    model.load_state_dict(ck["model"])
    return model, ck
