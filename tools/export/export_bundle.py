"""Export a CLIP-family model to a graftdb model bundle (format: schema/bundle.md).

    python -m tools.export --arch ViT-B-16 --random-seed 0 --out data/bundles/vitb16-random
    python -m tools.export --arch tiny --random-seed 0 --out data/bundles/tiny
    python -m tools.export --arch ViT-B-32 --openclip-checkpoint RemoteCLIP-ViT-B-32.pt \\
        --licence "Apache-2.0 (RemoteCLIP)" --out data/bundles/remoteclip-b32
    python -m tools.export --arch ViT-B-16 --hf-vision graft-naip/ --patch-projector proj.pt \\
        --openclip-checkpoint openai-vitb16.pt --out data/bundles/graft-naip

A bundle is a folder: bundle.json, image.onnx, text.onnx, the CLIP BPE vocabulary and a
test/ folder of reference inputs and PyTorch outputs the Rust side checks itself against.
Every export is verified: ONNX Runtime must match PyTorch within --tolerance (max abs,
fp32) on a random batch and on a fixed test image, or the export fails.

Nothing is downloaded. No CLIP weights are reachable offline; --random-seed builds the
real architecture with seeded random weights and says so in bundle.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

BUNDLE_FORMAT = "graftdb.model-bundle"
BUNDLE_VERSION = 1
CONTEXT_LENGTH = 77
OPSET = 17
TEST_TEXTS = [
    "a satellite photo of a farmland",
    "an aerial image of an airport with many planes",
    "There are 15 aircrafts in the middle of the picture.",
    "Foz do Iguaçu, Itaipu dam & the Paraná river",
    "東京の港 🚢",
]


def log(msg: str) -> None:
    print(f"export: {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True,
                   help="open_clip model name (ViT-B-16, ViT-B-32, ViT-B-16-quickgelu, ...) or 'tiny'")
    src = p.add_argument_group("weights (pick one; none is an error)")
    src.add_argument("--openclip-checkpoint", type=Path,
                     help="OpenCLIP state_dict / checkpoint file (OpenAI CLIP, RemoteCLIP, ...); "
                          "with --hf-vision it provides the text tower only")
    src.add_argument("--hf-vision", type=Path,
                     help="GRAFT: folder of a Hugging Face CLIPVisionModelWithProjection (config.json + weights)")
    src.add_argument("--patch-projector", type=Path,
                     help="GRAFT: state_dict of the patch projector (LayerNorm(768) then Linear(768->512))")
    src.add_argument("--random-seed", type=int, help="seeded random weights (tests and demos only)")
    p.add_argument("--quick-gelu", action="store_true", help="use QuickGELU (OpenAI-trained weights)")
    p.add_argument("--name", help="bundle name (default: the output folder's name)")
    p.add_argument("--licence", help="licence of the weights, recorded in bundle.json")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs ONNX vs PyTorch difference")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write (replaced)")
    args = p.parse_args(argv)
    if args.hf_vision is None and args.patch_projector is not None:
        p.error("--patch-projector needs --hf-vision")
    if args.hf_vision is not None and args.patch_projector is None:
        p.error("--hf-vision needs --patch-projector (the GRAFT pixel-level projector)")
    given = [args.openclip_checkpoint is not None or args.hf_vision is not None, args.random_seed is not None]
    if sum(given) != 1:
        p.error("give exactly one weight source: --openclip-checkpoint, --hf-vision + --patch-projector, "
                "or --random-seed")
    if args.arch == "tiny" and args.random_seed is None:
        p.error("--arch tiny exists only with --random-seed")
    return args


# ------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------

def build_openclip(args):
    import open_clip
    import torch
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    if args.random_seed is not None:
        torch.manual_seed(args.random_seed)
    if args.arch == "tiny":
        model = CLIP(
            embed_dim=64,
            vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=16, image_size=224),
            text_cfg=CLIPTextCfg(context_length=CONTEXT_LENGTH, vocab_size=49408, width=64, heads=2, layers=2),
            quick_gelu=args.quick_gelu,
        )
        mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    else:
        pretrained = str(args.openclip_checkpoint) if args.openclip_checkpoint else None
        if pretrained and not Path(pretrained).is_file():
            raise SystemExit(f"export: {pretrained}: no such checkpoint file")
        model = open_clip.create_model(args.arch, pretrained=pretrained, force_quick_gelu=args.quick_gelu)
        mean = model.visual.preprocess_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = model.visual.preprocess_cfg.get("std", open_clip.OPENAI_DATASET_STD)
    model.eval()
    return model, tuple(float(x) for x in mean), tuple(float(x) for x in std)




def make_image_module(model):
    import torch

    visual = model.visual
    visual.output_tokens = True

    class Image(torch.nn.Module):
        """pixels [N,3,H,W] -> embedding [N,D] (CLS after ln_post, times proj) and
        patches [N,G*G,D] (patch tokens after ln_post, times proj)."""

        def __init__(self):
            super().__init__()
            self.visual = visual

        def forward(self, pixels):
            pooled, tokens = self.visual(pixels)
            return pooled, tokens @ self.visual.proj

    return Image().eval()


def make_text_module(model):
    import torch

    class Text(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, tokens):
            return self.model.encode_text(tokens)

    return Text().eval()


def make_graft_image_module(args):
    """GRAFT pixel-level model: HF CLIP vision tower + LayerNorm/Linear projector on every
    raw (pre-post_layernorm) token; the embedding is the tower's own image_embeds."""
    import torch
    try:
        from transformers import CLIPVisionModelWithProjection
    except ImportError as e:
        raise SystemExit("export: --hf-vision needs the `transformers` package in this venv "
                         "(.venv-torch/bin/pip install transformers)") from e
    tower = CLIPVisionModelWithProjection.from_pretrained(str(args.hf_vision), local_files_only=True)
    width = tower.config.hidden_size
    state = torch.load(args.patch_projector, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    # Accept "0.weight"/"1.weight" (nn.Sequential) or any prefix ending in those.
    ln_w = [k for k in state if k.endswith("weight") and state[k].ndim == 1]
    lin_w = [k for k in state if k.endswith("weight") and state[k].ndim == 2]
    if len(ln_w) != 1 or len(lin_w) != 1:
        raise SystemExit(f"export: {args.patch_projector}: expected one LayerNorm and one Linear, "
                         f"found keys {sorted(state)}")
    out_dim = state[lin_w[0]].shape[0]
    projector = torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, out_dim))
    projector[0].weight.data = state[ln_w[0]]
    projector[0].bias.data = state[ln_w[0][:-len("weight")] + "bias"]
    projector[1].weight.data = state[lin_w[0]]
    projector[1].bias.data = state[lin_w[0][:-len("weight")] + "bias"]

    class Graft(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tower = tower
            self.projector = projector

        def forward(self, pixels):
            out = self.tower(pixel_values=pixels)
            return out.image_embeds, self.projector(out.last_hidden_state[:, 1:, :])

    cfg = tower.config
    return Graft().eval(), cfg.image_size, cfg.patch_size, out_dim


# ------------------------------------------------------------------------------------------
# Export and verification
# ------------------------------------------------------------------------------------------

def onnx_export(module, example, path: Path, input_name: str, output_names: list[str]) -> float:
    import torch

    t0 = time.time()
    dyn = {input_name: {0: "N"}}
    dyn.update({n: {0: "N"} for n in output_names})
    kwargs = dict(input_names=[input_name], output_names=output_names, dynamic_axes=dyn,
                  opset_version=OPSET, do_constant_folding=True)
    try:
        torch.onnx.export(module, (example,), str(path), dynamo=False, **kwargs)
    except TypeError:  # torch without the dynamo switch
        torch.onnx.export(module, (example,), str(path), **kwargs)
    import onnx
    onnx.checker.check_model(str(path))
    return time.time() - t0


def ort_session(path: Path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def test_image():
    """A fixed 334x250 RGB picture (gradients, shapes, seeded noise). The odd width makes
    the centre crop land on a .5 that Python rounds to even."""
    from PIL import Image
    w, h = 334, 250
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * (x / w)
    g = 255 * (y / h)
    b = 127.5 + 127.5 * np.sin(x / 9.0) * np.cos(y / 13.0)
    img = np.stack([r, g, b], axis=-1)
    img[(x - 200) ** 2 + (y - 120) ** 2 < 50 ** 2] = [250, 240, 30]
    img[40:90, 30:150] = [20, 30, 200]
    img[::7, :] *= 0.6
    noise = np.random.default_rng(7).normal(0, 12, size=img.shape)
    img = np.clip(np.round(img + noise), 0, 255).astype(np.uint8)
    return Image.fromarray(img, mode="RGB")


RESIZE_CASES = [(100, 80), (224, 500), (1000, 700), (225, 224), (31, 17), (640, 427), (257, 256)]


def write_resize_cases(folder: Path, size: int) -> list[str]:
    """Random-content images of awkward sizes with PIL's resize + centre crop (uint8,
    before normalisation), so the Rust resampler can prove it is byte-identical."""
    from PIL import Image
    import torchvision.transforms as T
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(99)
    names = []
    for w, h in RESIZE_CASES:
        base = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        # Mix smooth and sharp content: blur half the image with a box filter.
        smooth = base.astype(np.float64)
        for _ in range(3):
            smooth = (smooth + np.roll(smooth, 1, 0) + np.roll(smooth, 1, 1)) / 3
        img = np.where((np.arange(w)[None, :, None] < w // 2), smooth.round().astype(np.uint8), base)
        pil = Image.fromarray(img, mode="RGB")
        t = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)])
        name = f"{w}x{h}"
        pil.save(folder / f"{name}.png")
        np.save(folder / f"{name}.npy", np.asarray(t(pil), dtype=np.uint8))
        names.append(name)
    return names


def preprocess_like_openclip(image, size: int, mean, std):
    """open_clip's image_transform for eval: Resize(shortest side, bicubic, antialias),
    CenterCrop, ToTensor, Normalize."""
    import open_clip
    t = open_clip.image_transform(size, is_train=False, mean=mean, std=std,
                                  resize_mode="shortest", interpolation="bicubic")
    return t(image).unsqueeze(0).numpy().astype(np.float32)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import open_clip
    import torch
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    # The classic exporter cannot export the fused attention fast path.
    torch.backends.mha.set_fastpath_enabled(False)
    # The exporter warns about aten::index with negative indices (the text tower's
    # argmax pooling uses non-negative ones) and its own deprecation: noise here.
    import warnings
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_grad_enabled(False)
    t_start = time.time()

    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    (out / "test").mkdir(parents=True)
    name = args.name or out.resolve().name

    text_module = None
    if args.hf_vision is not None:
        image_module, image_size, patch_size, dim = make_graft_image_module(args)
        from transformers import CLIPImageProcessor  # noqa: F401  (transformers present)
        mean = tuple(open_clip.OPENAI_DATASET_MEAN)
        std = tuple(open_clip.OPENAI_DATASET_STD)
        family = "graft"
        if args.openclip_checkpoint is not None:
            clip_model, _, _ = build_openclip(args)
            text_module = make_text_module(clip_model)
    else:
        clip_model, mean, std = build_openclip(args)
        image_module = make_image_module(clip_model)
        text_module = make_text_module(clip_model)
        image_size = clip_model.visual.image_size
        image_size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
        patch_size = clip_model.visual.patch_size
        patch_size = patch_size[0] if isinstance(patch_size, (tuple, list)) else int(patch_size)
        dim = int(clip_model.visual.output_dim)
        family = "openclip"
    grid = image_size // patch_size
    log(f"{name}: {family} {args.arch}, image {image_size}px, patch {patch_size}, grid {grid}x{grid}, dim {dim}")

    # --- image tower ---------------------------------------------------------------------
    gen = torch.Generator().manual_seed(1234)
    example = torch.randn(2, 3, image_size, image_size, generator=gen)  # batch >= 2: see OFFLINE.md
    t_img = onnx_export(image_module, example, out / "image.onnx", "pixels", ["embedding", "patches"])
    log(f"image.onnx exported in {t_img:.1f}s ({(out / 'image.onnx').stat().st_size / 1e6:.1f} MB)")
    sess = ort_session(out / "image.onnx")
    verification = {}

    batch = torch.randn(3, 3, image_size, image_size, generator=gen)
    ref_emb, ref_patch = image_module(batch)
    got_emb, got_patch = sess.run(["embedding", "patches"], {"pixels": batch.numpy()})
    verification["random_batch_n"] = 3
    verification["random_batch_embedding_max_abs"] = max_abs(ref_emb, got_emb)
    verification["random_batch_patches_max_abs"] = max_abs(ref_patch, got_patch)

    img = test_image()
    img.save(out / "test" / "image.png")
    pixels = preprocess_like_openclip(img, image_size, mean, std)
    ref_emb1, ref_patch1 = image_module(torch.from_numpy(pixels))
    got_emb1, got_patch1 = sess.run(["embedding", "patches"], {"pixels": pixels})
    verification["test_image_embedding_max_abs"] = max_abs(ref_emb1, got_emb1)
    verification["test_image_patches_max_abs"] = max_abs(ref_patch1, got_patch1)
    np.save(out / "test" / "pixels.npy", pixels)
    resize_cases = write_resize_cases(out / "test" / "resize", image_size)
    np.save(out / "test" / "embedding.npy", ref_emb1.numpy().astype(np.float32))
    np.save(out / "test" / "patches.npy", ref_patch1.numpy().astype(np.float32))
    if tuple(ref_patch1.shape) != (1, grid * grid, dim) or tuple(ref_emb1.shape) != (1, dim):
        raise SystemExit(f"export: unexpected output shapes {tuple(ref_emb1.shape)} {tuple(ref_patch1.shape)}")

    # --- text tower ----------------------------------------------------------------------
    shutil.copyfile(default_bpe(), out / "bpe_simple_vocab_16e6.txt.gz")
    text_entry = None
    if text_module is not None:
        tok = SimpleTokenizer(bpe_path=default_bpe(), context_length=CONTEXT_LENGTH)
        tokens = tok(TEST_TEXTS)
        t_txt = onnx_export(text_module, tokens[:2], out / "text.onnx", "tokens", ["embedding"])
        log(f"text.onnx exported in {t_txt:.1f}s ({(out / 'text.onnx').stat().st_size / 1e6:.1f} MB)")
        tsess = ort_session(out / "text.onnx")
        ref_txt = text_module(tokens)
        (got_txt,) = tsess.run(["embedding"], {"tokens": tokens.numpy()})
        verification["text_embedding_max_abs"] = max_abs(ref_txt, got_txt)
        np.save(out / "test" / "tokens.npy", tokens.numpy().astype(np.int64))
        np.save(out / "test" / "text_embedding.npy", ref_txt.numpy().astype(np.float32))
        (out / "test" / "texts.json").write_text(json.dumps(TEST_TEXTS, ensure_ascii=False, indent=1) + "\n",
                                                 encoding="utf-8")
        text_entry = {"file": "text.onnx", "input": "tokens", "embedding": "embedding"}

    worst = max(v for k, v in verification.items() if k.endswith("max_abs"))
    verification["tolerance"] = args.tolerance
    verification["passed"] = worst <= args.tolerance
    for k, v in verification.items():
        log(f"  {k}: {v}")
    if worst > args.tolerance:
        raise SystemExit(f"export: ONNX differs from PyTorch by {worst:.3g} > {args.tolerance}")

    # --- bundle.json ---------------------------------------------------------------------
    if args.random_seed is not None:
        weights = {"kind": "random", "seed": args.random_seed,
                   "note": "seeded random weights: the architecture is real, the embeddings mean nothing"}
        licence = args.licence or "weights: none (random); architecture code: OpenCLIP (MIT)"
    elif args.hf_vision is not None:
        weights = {"kind": "graft", "hf_vision": args.hf_vision.name, "patch_projector": args.patch_projector.name,
                   "text": args.openclip_checkpoint.name if args.openclip_checkpoint else None}
        licence = args.licence or "unknown: pass --licence"
    else:
        weights = {"kind": "openclip-checkpoint", "file": args.openclip_checkpoint.name,
                   "sha256": sha256(args.openclip_checkpoint)}
        licence = args.licence or "unknown: pass --licence"
    bundle = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "name": name,
        "family": family,
        "arch": args.arch,
        "weights": weights,
        "random_weights": args.random_seed is not None,
        "licence": licence,
        "dim": dim,
        "normalized": False,
        "image_size": image_size,
        "patch_size": patch_size,
        "patch_grid": [grid, grid],
        "mean": list(mean),
        "std": list(std),
        "resize": "shortest",
        "interpolation": "bicubic",
        "crop": "center",
        "image_model": {"file": "image.onnx", "input": "pixels", "embedding": "embedding", "patches": "patches"},
        "text_model": text_entry,
        "context_length": CONTEXT_LENGTH,
        "tokenizer": {
            "kind": "clip-bpe",
            "vocab": "bpe_simple_vocab_16e6.txt.gz",
            "vocab_sha256": sha256(out / "bpe_simple_vocab_16e6.txt.gz"),
            "start_id": 49406,
            "end_id": 49407,
            "context_length": CONTEXT_LENGTH,
            "clean": "lower",
            "licence": "MIT (OpenAI CLIP)",
        },
        "test": {
            "image": "test/image.png",
            "pixels": "test/pixels.npy",
            "embedding": "test/embedding.npy",
            "patches": "test/patches.npy",
            "texts": "test/texts.json" if text_entry else None,
            "tokens": "test/tokens.npy" if text_entry else None,
            "text_embedding": "test/text_embedding.npy" if text_entry else None,
            "resize_cases": [f"test/resize/{n}" for n in resize_cases],
        },
        "verification": verification,
        "exporter": {
            "tool": "tools/export/export_bundle.py",
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "onnx_opset": OPSET,
            "seconds": round(time.time() - t_start, 1),
        },
    }
    (out / "bundle.json").write_text(json.dumps(bundle, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {out} in {time.time() - t_start:.1f}s")
    return 0


if __name__ == "__main__":
    # Also runnable as a plain script: tools/export/export_bundle.py ...
    sys.exit(main())
