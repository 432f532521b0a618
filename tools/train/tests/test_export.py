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


@pytest.fixture()
def base_bundle(tmp_path):
    b = tmp_path / "base"
    b.mkdir()
    (b / "bundle.json").write_text(json.dumps({
        "name": "clip-b16-test", "licence": "MIT", "source": "test base", "image": "image.onnx",
        "text": "text.onnx", "tokenizer": "bpe_simple_vocab_16e6.txt.gz", "context_length": 77}))
    (b / "text.onnx").write_bytes(b"text-model-bytes")
    (b / "bpe_simple_vocab_16e6.txt.gz").write_bytes(b"vocab-bytes")
    (b / "image.onnx").write_bytes(b"old-image-model")
    return b


def _ort_vs_torch(model, path, batch):
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        emb, patches = model.eval()(x)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    o_emb, o_patches = sess.run(["embedding", "patches"], {"pixels": x.numpy()})
    assert o_emb.shape == (batch, 32) and o_patches.shape == (batch, 196, 32)
    return max(np.abs(o_emb - emb.numpy()).max(), np.abs(o_patches - patches.numpy()).max())


@pytest.mark.parametrize("exporter", ["auto", "torchscript"])
def test_export_matches_torch_in_onnxruntime_and_writes_a_bundle(ckpt, base_bundle, tmp_path, exporter):
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
    assert bj["name"] == "clip-b16-test-graft-both"
    assert bj["licence"] == "MIT" and "test base" in bj["source"] and "step 3" in bj["source"]
    assert bj["tokenizer"] == "bpe_simple_vocab_16e6.txt.gz" and bj["context_length"] == 77
    assert bj["graft"]["outputs"]["patches"] == ["N", 196, 32]
    assert bj["graft"]["onnx_max_abs_diff"] <= 1e-4


def test_export_refuses_a_non_empty_target(ckpt, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("1")
    assert main(["export", "--ckpt", str(ckpt), "--to", str(tmp_path / "x")]) == 1


@pytest.mark.skipif(not HAVE_DYNAMO, reason="onnxscript not installed: classic exporter renames weights")
def test_fit_from_an_exported_bundle_starts_from_its_weights(ckpt, base_bundle, tmp_path):
    dst = tmp_path / "bundle"
    assert main(["export", "--ckpt", str(ckpt), "--to", str(dst), "--text-from", str(base_bundle),
                 "--exporter", "dynamo"]) == 0
    model, info = build_model(str(dst), "tiny", 32, seed=123)
    assert info["weights"].startswith("onnx:")
    want, _ = load_checkpoint_model(ckpt)
    for k, v in want.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_bundle_whose_weights_do_not_map_falls_back_to_random_init(base_bundle, caplog):
    (base_bundle / "image.onnx").unlink()
    model, info = build_model(str(base_bundle), "tiny", 32)
    assert info["weights"] == "random"
    assert "random init" in caplog.text
