"""ViT-B/16 image-tower throughput on a GPU: PyTorch against ONNX Runtime's CUDA EP.

Used by tools/bench/gpu_bench.sh for bench-results/embed-gpu.md. Three subcommands:

    python tools/bench/gpu_vit.py export --out DIR        # image.onnx (fp32) + image_fp16.onnx
    python tools/bench/gpu_vit.py torch --batches 64,256  # PyTorch eager
    python tools/bench/gpu_vit.py ort --model DIR/image.onnx --batches 64,256

The model is exactly the bundle's image module (tools/export: OpenCLIP ViT-B-16,
random seed 0, outputs the 512-d embedding and the 196 projected patch vectors), so
PyTorch and ONNX Runtime compute the same graph with the same outputs.

Two ways of timing each (model, batch, precision):
- `host`: a host float32 batch goes in and both outputs come back to host memory each
  run. This is what graftdb's `ImageEncoder::embed_pixels` does through `ort`.
- `device`: input already on the GPU, outputs left there (PyTorch: plain tensors;
  ONNX Runtime: I/O binding). Pure model throughput.

Every timed window is printed as `WINDOW label start end` (unix seconds) so the
nvidia-smi log taken alongside can be cut per run (tools/bench/smi_summary.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def log(msg: str) -> None:
    print(msg, flush=True)


def build_module():
    import torch

    sys.path.insert(0, str(ROOT))
    from tools.export.export_bundle import build_openclip, make_image_module

    torch.backends.mha.set_fastpath_enabled(False)
    args = argparse.Namespace(arch="ViT-B-16", random_seed=0, openclip_checkpoint=None, quick_gelu=False)
    model, _, _ = build_openclip(args)
    return make_image_module(model)


def timed(label: str, fn, n: int, seconds: float, sync) -> tuple[float, float, int]:
    for _ in range(3):
        fn()
    sync()
    runs = 0
    t0 = time.time()
    while runs < 3 or time.time() - t0 < seconds:
        fn()
        runs += 1
    sync()
    t1 = time.time()
    print(f"WINDOW {label} {t0:.3f} {t1:.3f}", flush=True)
    return runs * n / (t1 - t0), (t1 - t0) * 1000 / runs, runs


def row(engine, precision, tf32, mode, n, ips, ms, runs):
    log(f"| {engine} | {precision} | {tf32} | {mode} | {n} | {ips:.1f} | {ms:.2f} | {runs} |")


def header():
    log("| engine | precision | TF32 | mode | batch | images/s | ms/batch | runs |")
    log("|---|---|---|---|---:|---:|---:|---:|")


def cmd_export(a):
    import torch

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    module = build_module()
    kw = dict(input_names=["pixels"], output_names=["embedding", "patches"],
              dynamic_axes={"pixels": {0: "N"}, "embedding": {0: "N"}, "patches": {0: "N"}},
              opset_version=17, do_constant_folding=True, dynamo=False)
    gen = torch.Generator().manual_seed(1234)
    example = torch.randn(2, 3, 224, 224, generator=gen)
    t0 = time.time()
    torch.onnx.export(module, (example,), str(out / "image.onnx"), **kw)
    log(f"export fp32: {time.time() - t0:.1f} s, {(out / 'image.onnx').stat().st_size / 1e6:.1f} MB")
    if a.check:
        # Same weights as data/bundles/vitb16-random? `a.check` holds that bundle's
        # embedding of det_pixels() (tools/bench/gpu_vit.py reference BUNDLE OUT.npy).
        got = module(torch.from_numpy(det_pixels()))[0].numpy()
        log(f"weights check vs data/bundles/vitb16-random: max abs {np.abs(got - np.load(a.check)).max():.3g}")
    if a.fp16:
        half = module.half().cuda()
        t0 = time.time()
        torch.onnx.export(half, (example.half().cuda(),), str(out / "image_fp16.onnx"), **kw)
        log(f"export fp16: {time.time() - t0:.1f} s, {(out / 'image_fp16.onnx').stat().st_size / 1e6:.1f} MB")


def det_pixels() -> np.ndarray:
    """A fixed [2, 3, 224, 224] input, the same on every machine."""
    return (2 * np.sin(np.arange(2 * 3 * 224 * 224, dtype=np.float64) * 0.001)).astype(np.float32).reshape(2, 3, 224, 224)


def cmd_reference(a):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(Path(a.bundle) / "image.onnx"), providers=["CPUExecutionProvider"])
    np.save(a.out, sess.run(["embedding"], {"pixels": det_pixels()})[0])


def cmd_torch(a):
    import torch

    torch.set_grad_enabled(False)
    torch.backends.cudnn.benchmark = True
    module = build_module().cuda().eval()
    dev = torch.device("cuda")
    log(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    header()
    for precision in a.precisions.split(","):
        dtype = torch.float16 if precision == "fp16" else torch.float32
        m = module.to(dtype)
        for tf32 in (a.tf32.split(",") if precision == "fp32" else ["-"]):
            on = tf32 == "on"
            torch.backends.cuda.matmul.allow_tf32 = on
            torch.backends.cudnn.allow_tf32 = on
            for n in [int(b) for b in a.batches.split(",")]:
                host = torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(n))
                dev_in = host.to(dev, dtype)

                def run_device():
                    m(dev_in)

                def run_host():
                    e, p = m(host.to(dev, dtype))
                    e.float().cpu(), p.float().cpu()

                with torch.inference_mode():
                    for mode, fn in (("device", run_device), ("host", run_host)):
                        ips, ms, runs = timed(f"torch-{precision}-tf32{tf32}-{mode}-b{n}", fn, n, a.seconds,
                                              torch.cuda.synchronize)
                        row("PyTorch eager", precision, tf32, mode, n, ips, ms, runs)
                del dev_in
                torch.cuda.empty_cache()


def cmd_ort(a):
    import onnxruntime as ort

    log(f"onnxruntime {ort.__version__} from {ort.__file__}; providers {ort.get_available_providers()}")
    header()
    for model in a.model.split(","):
        fp16 = "fp16" in Path(model).name
        for tf32 in (a.tf32.split(",") if not fp16 else ["-"]):
            so = ort.SessionOptions()
            so.log_severity_level = 3
            cuda_opts = {"device_id": 0}
            if not fp16:
                cuda_opts["use_tf32"] = "1" if tf32 == "on" else "0"
            t0 = time.time()
            sess = ort.InferenceSession(model, so, providers=[("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"])
            log(f"session {Path(model).name} tf32={tf32}: {time.time() - t0:.1f} s, providers {sess.get_providers()}")
            prec = "fp16" if fp16 else "fp32"
            for n in [int(b) for b in a.batches.split(",")]:
                host = np.random.default_rng(n).standard_normal((n, 3, 224, 224)).astype(np.float16 if fp16 else np.float32)

                def run_host():
                    sess.run(["embedding", "patches"], {"pixels": host})

                x = ort.OrtValue.ortvalue_from_numpy(host, "cuda", 0)
                binding = sess.io_binding()
                binding.bind_ortvalue_input("pixels", x)
                binding.bind_output("embedding", "cuda", 0)
                binding.bind_output("patches", "cuda", 0)

                def run_device():
                    sess.run_with_iobinding(binding)

                sync = binding.synchronize_outputs
                for mode, fn in (("device", run_device), ("host", run_host)):
                    ips, ms, runs = timed(f"ort-{prec}-tf32{tf32}-{mode}-b{n}", fn, n, a.seconds, sync)
                    row("ORT CUDA EP (Python)", prec, tf32, mode, n, ips, ms, runs)
            del sess


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--out", required=True)
    e.add_argument("--fp16", action="store_true")
    e.add_argument("--check", help="bundle test/ folder to compare weights against")
    r = sub.add_parser("reference")
    r.add_argument("bundle")
    r.add_argument("out")
    for name in ("torch", "ort"):
        s = sub.add_parser(name)
        s.add_argument("--batches", default="64,256")
        s.add_argument("--seconds", type=float, default=3.0)
        s.add_argument("--tf32", default="off,on")
        if name == "torch":
            s.add_argument("--precisions", default="fp32,fp16")
        else:
            s.add_argument("--model", required=True, help="comma-separated ONNX files")
    a = p.parse_args()
    {"export": cmd_export, "reference": cmd_reference, "torch": cmd_torch, "ort": cmd_ort}[a.cmd](a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
