"""Command line: ``python -m graft_train {fit,eval,export,synth} ...``.

Exit codes: 0 success, 1 failure (a clear one-line message on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from . import __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m graft_train",
                                description="Train, evaluate and export GRAFT satellite encoders.")
    p.add_argument("--version", action="version", version=__version__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    f = sub.add_parser("fit", help="train on a graft-pairs dataset")
    f.add_argument("--data", required=True, help="dataset directory (manifest.json + shards)")
    f.add_argument("--base", default=None,
                   help="bundle dir (bundle.json + image.onnx), graft_train checkpoint, or "
                        "OpenCLIP/OpenAI CLIP state_dict; omitted = random init")
    f.add_argument("--base-arch", default=None,
                   help="architecture for a bundle/state_dict base or random init: an OpenCLIP "
                        "ViT name (ViT-B-16, ViT-B-16-quickgelu for OpenAI weights, ...) or tiny")
    f.add_argument("--level", choices=["image", "pixel", "both"], default="both")
    f.add_argument("--out", required=True, help="run directory")
    f.add_argument("--steps", type=int, default=10000)
    f.add_argument("--batch", type=int, default=64, help="tiles per batch")
    f.add_argument("--lr", type=float, default=1e-5)
    f.add_argument("--head-lr-mult", type=float, default=10.0,
                   help="learning-rate multiplier for the new projector")
    f.add_argument("--wd", type=float, default=0.1)
    f.add_argument("--warmup", type=int, default=500)
    f.add_argument("--min-lr-ratio", type=float, default=0.0)
    f.add_argument("--clip-grad", type=float, default=1.0, help="0 = off")
    f.add_argument("--tau", type=float, default=0.07, help="fixed temperature (GRAFT: 0.07)")
    f.add_argument("--max-photos", type=int, default=25, help="photos kept per tile")
    f.add_argument("--amp", choices=["auto", "on", "off"], default="auto")
    f.add_argument("--amp-dtype", choices=["auto", "bf16", "fp16"], default="auto")
    f.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    f.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    f.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--save-every", type=int, default=1000)
    f.add_argument("--keep", type=int, default=3, help="periodic checkpoints kept")
    f.add_argument("--eval-every", type=int, default=1000, help="0 = only at the end")
    f.add_argument("--eval-batch", type=int, default=64)
    f.add_argument("--log-every", type=int, default=10)
    f.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")

    e = sub.add_parser("eval", help="held-out satellite -> photo retrieval recall@1/5/10")
    e.add_argument("--data", required=True)
    e.add_argument("--ckpt", required=True, help="checkpoint file or run directory")
    e.add_argument("--split", default="test")
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    e.add_argument("--amp", choices=["auto", "on", "off"], default="off")
    e.add_argument("--amp-dtype", choices=["auto", "bf16", "fp16"], default="auto")
    e.add_argument("--batch", type=int, default=64)
    e.add_argument("--max-photos", type=int, default=25)

    x = sub.add_parser("export", help="write the image encoder as ONNX into a bundle")
    x.add_argument("--ckpt", required=True, help="checkpoint file or run directory")
    x.add_argument("--to", required=True, help="bundle directory to write")
    x.add_argument("--text-from", default=None,
                   help="base bundle to copy text.onnx, tokenizer and bundle.json from")
    x.add_argument("--name", default=None)
    x.add_argument("--licence", default=None)
    x.add_argument("--tol", type=float, default=1e-4)
    x.add_argument("--overwrite", action="store_true")
    x.add_argument("--exporter", choices=["auto", "dynamo", "torchscript"], default="auto",
                   help="auto = dynamo when onnxscript is installed, else torchscript")

    s = sub.add_parser("synth", help="write a synthetic graft-pairs dataset (for tests/demos)")
    s.add_argument("--out", required=True)
    s.add_argument("--train", type=int, default=256)
    s.add_argument("--test", type=int, default=64)
    s.add_argument("--dim", type=int, default=32)
    s.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(message)s")
    from .data import DataError
    from .export import ExportError
    from .model import ModelError
    try:
        if args.cmd == "fit":
            from .train import fit
            res = fit(args)
        elif args.cmd == "eval":
            import torch
            from .data import GraftPairs
            from .evaluate import evaluate
            from .model import load_checkpoint_model
            from .train import resolve_amp, resolve_device
            device = resolve_device(args.device)
            model, ck = load_checkpoint_model(args.ckpt)
            ds = GraftPairs(args.data, args.split, image_size=model.image_size,
                            max_photos=args.max_photos)
            if ds.dim != model.dim:
                raise ModelError(f"checkpoint dim {model.dim} != data embedding_dim {ds.dim}")
            with torch.no_grad():
                res = evaluate(model.to(device), ds, device, args.batch,
                               resolve_amp(args.amp, args.amp_dtype, device))
            res["step"] = ck["step"]
        elif args.cmd == "export":
            from .export import export
            res = export(args.ckpt, args.to, args.text_from, args.name, args.licence,
                         args.tol, args.overwrite, args.exporter)
        else:
            from .synth import make_synthetic
            make_synthetic(args.out, args.train, args.test, args.dim, args.seed)
            res = {"out": args.out}
    except (DataError, ModelError, ExportError, ValueError, OSError) as e:
        print(f"graft_train {args.cmd}: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    print(json.dumps(res, indent=2, default=str))
    return 0
