"""ONNX export: outputs match PyTorch in ONNX Runtime, dynamic batch, bundle files."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from graft_train.cli import main
from graft_train.model import build_model, load_checkpoint_model

try:
    import onnxscript  # noqa: F401
    HAVE_DYNAMO = True
except ImportError:
    HAVE_DYNAMO = False


@pytest.fixture(scope="module")
def ckpt(synth_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    assert main(["fit", "--data", str(synth_data), "--out", str(run), "--base-arch", "tiny",
                 "--steps", "3", "--batch", "4", "--lr", "1e-3", "--warmup", "1",
                 "--eval-every", "0", "--device", "cpu", "--threads", "1"]) == 0
    return run / "last.pt"


def write_base_bundle(b, dim=32, arch="tiny"):
    """A bundle.json shaped like tools/export's (schema/bundle.md), with stand-in model files."""
    b.mkdir()
    (b / "test").mkdir()
    (b / "bundle.json").write_text(json.dumps({
        "format": "graftdb.model-bundle", "format_version": 1, "name": "clip-test", "family": "openclip",
        "arch": arch, "weights": {"kind": "random", "seed": 0}, "random_weights": False,
        "licence": "MIT", "dim": dim, "normalized": False, "image_size": 224, "patch_size": 16,
        "patch_grid": [14, 14], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
        "resize": "shortest", "interpolation": "bicubic", "crop": "center",
        "image_model": {"file": "image.onnx", "input": "pixels", "embedding": "embedding", "patches": "patches"},
        "text_model": {"file": "text.onnx", "input": "tokens", "embedding": "embedding"},
        "context_length": 77,
        "tokenizer": {"kind": "clip-bpe", "vocab": "bpe_simple_vocab_16e6.txt.gz", "start_id": 49406,
                      "end_id": 49407, "context_length": 77},
        "test": {"image": "test/image.png", "pixels": "test/pixels.npy", "embedding": "test/embedding.npy",
                 "patches": "test/patches.npy", "texts": "test/texts.json"}}))
    (b / "text.onnx").write_bytes(b"text-model-bytes")
    (b / "bpe_simple_vocab_16e6.txt.gz").write_bytes(b"vocab-bytes")
    (b / "image.onnx").write_bytes(b"old-image-model")
    (b / "test" / "image.png").write_bytes(b"png")
    (b / "test" / "texts.json").write_text("[]")
    np.save(b / "test" / "pixels.npy", np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32))
    np.save(b / "test" / "embedding.npy", np.zeros((1, dim), np.float32))
    return b


@pytest.fixture()
def base_bundle(tmp_path):
    return write_base_bundle(tmp_path / "base")


@pytest.fixture(scope="module")
def auto_bundle(ckpt, tmp_path_factory):
    """One export with the default exporter (dynamo when onnxscript is installed)."""
    tmp = tmp_path_factory.mktemp("auto")
    base = write_base_bundle(tmp / "base")
    assert main(["export", "--ckpt", str(ckpt), "--to", str(tmp / "bundle"), "--text-from", str(base)]) == 0
    return tmp / "bundle"


def _ort_vs_torch(model, path, batch):
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        emb, patches = model.eval()(x)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    o_emb, o_patches = sess.run(["embedding", "patches"], {"pixels": x.numpy()})
    assert o_emb.shape == (batch, 32) and o_patches.shape == (batch, 196, 32)
    return max(np.abs(o_emb - emb.numpy()).max(), np.abs(o_patches - patches.numpy()).max())


@pytest.mark.parametrize("exporter", ["auto", "torchscript"])
def test_export_matches_torch_in_onnxruntime_and_writes_a_bundle(ckpt, auto_bundle, base_bundle, tmp_path,
                                                                  exporter):
    if exporter == "auto":
        dst = auto_bundle
    else:
        dst = tmp_path / "bundle"
        assert main(["export", "--ckpt", str(ckpt), "--to", str(dst), "--text-from", str(base_bundle),
                     "--exporter", exporter]) == 0
    model, ck = load_checkpoint_model(ckpt)
    for batch in (1, 5):  # traced with 2: the batch must be dynamic
        assert _ort_vs_torch(model, dst / "image.onnx", batch) <= 1e-4
    g = onnx.load(str(dst / "image.onnx")).graph
    assert [i.name for i in g.input] == ["pixels"]
    assert [o.name for o in g.output] == ["embedding", "patches"]
    assert g.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic N
    assert not list(dst.glob("*.data"))
    assert (dst / "text.onnx").read_bytes() == b"text-model-bytes"
    assert (dst / "bpe_simple_vocab_16e6.txt.gz").read_bytes() == b"vocab-bytes"
    bj = json.loads((dst / "bundle.json").read_text())
    assert bj["name"] == "clip-test-graft-both" and bj["family"] == "graft"
    assert bj["licence"] == "MIT" and "clip-test" in bj["source"] and "3 steps" in bj["source"]
    assert bj["random_weights"] is True  # trained on synthetic data
    assert bj["normalized"] is True and bj["dim"] == 32 and bj["patch_grid"] == [14, 14]
    assert bj["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert bj["tokenizer"]["vocab"] == "bpe_simple_vocab_16e6.txt.gz"
    assert bj["text_model"]["file"] == "text.onnx" and bj["context_length"] == 77
    assert bj["image_model"] == {"file": "image.onnx", "input": "pixels", "embedding": "embedding",
                                 "patches": "patches"}
    assert bj["verification"]["passed"]
    # the test image's reference outputs are the trained model's, not the base's
    px = np.load(dst / "test" / "pixels.npy")
    with torch.no_grad():
        e, p = model(torch.from_numpy(px))
    assert np.allclose(np.load(dst / "test" / "embedding.npy"), e.numpy())
    assert np.allclose(np.load(dst / "test" / "patches.npy"), p.numpy())
    assert (dst / "test" / "texts.json").exists()


def test_export_without_a_base_bundle_writes_an_image_only_bundle(ckpt, tmp_path):
    dst = tmp_path / "b"
    assert main(["export", "--ckpt", str(ckpt), "--to", str(dst), "--exporter", "torchscript",
                 "--licence", "CC0"]) == 0
    bj = json.loads((dst / "bundle.json").read_text())
    assert bj["text_model"] is None and bj["licence"] == "CC0"
    assert (dst / bj["tokenizer"]["vocab"]).stat().st_size > 1_000_000  # OpenCLIP's real vocabulary
    for rel in bj["test"].values():
        assert (dst / rel).exists()


def test_export_refuses_a_base_bundle_of_another_dim(ckpt, tmp_path):
    base = write_base_bundle(tmp_path / "b64", dim=64)
    assert main(["export", "--ckpt", str(ckpt), "--to", str(tmp_path / "x"), "--text-from", str(base)]) == 1


def test_export_refuses_a_non_empty_target(ckpt, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("1")
    assert main(["export", "--ckpt", str(ckpt), "--to", str(tmp_path / "x")]) == 1


@pytest.mark.skipif(not HAVE_DYNAMO, reason="onnxscript not installed: classic exporter renames weights")
def test_fit_from_an_exported_bundle_starts_from_its_weights(ckpt, auto_bundle):
    model, info = build_model(str(auto_bundle), "tiny", 32, seed=123)
    assert info["weights"].startswith("onnx:")
    want, _ = load_checkpoint_model(ckpt)
    for k, v in want.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_bundle_whose_weights_do_not_map_falls_back_to_random_init(base_bundle, caplog):
    (base_bundle / "image.onnx").unlink()
    model, info = build_model(str(base_bundle), "tiny", 32)
    assert info["weights"] == "random"
    assert "random init" in caplog.text


REPO_TINY = __import__("pathlib").Path(__file__).resolve().parents[3] / "data" / "bundles" / "tiny"


@pytest.mark.skipif(not (REPO_TINY / "bundle.json").exists(),
                    reason="data/bundles/tiny not exported (tools/setup.sh makes it)")
def test_round_trip_through_the_bundle_tools_export_writes(tmp_path):
    """fit --base data/bundles/tiny, then export: the text tower, vocabulary and test texts
    are carried over unchanged and the manifest keeps the fields src/embed/bundle.rs checks."""
    from graft_train.synth import make_synthetic
    base = json.loads((REPO_TINY / "bundle.json").read_text())
    data = make_synthetic(tmp_path / "d", n_train=8, n_test=4, dim=base["dim"])
    run, dst = tmp_path / "run", tmp_path / "bundle"
    assert main(["fit", "--data", str(data), "--base", str(REPO_TINY), "--out", str(run), "--steps", "2",
                 "--batch", "4", "--eval-every", "0", "--device", "cpu", "--threads", "1"]) == 0
    assert main(["export", "--ckpt", str(run), "--to", str(dst), "--exporter", "torchscript"]) == 0
    bj = json.loads((dst / "bundle.json").read_text())
    assert (dst / "text.onnx").read_bytes() == (REPO_TINY / "text.onnx").read_bytes()
    for key in ("format", "format_version", "context_length", "tokenizer", "text_model", "resize",
                "interpolation", "crop"):
        assert bj[key] == base[key], key
    assert bj["arch"] == base["arch"] and bj["dim"] == base["dim"] and bj["family"] == "graft"
    for rel in [bj["image_model"]["file"], bj["tokenizer"]["vocab"], *bj["test"].values()]:
        assert (dst / rel).exists(), rel
