"""The model wraps OpenCLIP's ViT faithfully and loads the state_dict shapes users bring."""

import pytest
import torch
import torch.nn.functional as F

from graft_train.model import GraftModel, ModelError, build_model, load_visual_weights


def test_vit_b16_embedding_equals_openclip_visual_with_the_same_weights():
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    model = GraftModel("ViT-B-16", 512).eval()
    load_visual_weights(model, {f"module.visual.{k}"[len("module."):]: v
                                for k, v in clip.visual.state_dict().items()}, "test")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        emb, patches = model(x)
        want = F.normalize(clip.visual(x), dim=-1)
    assert patches.shape == (2, 196, 512)
    assert torch.allclose(emb, want, atol=1e-5)


def test_state_dict_files_in_common_wrappings_load(tmp_path):
    src = GraftModel("tiny", 32)
    sd = {f"module.visual.{k}": v for k, v in src.visual.state_dict().items()}
    sd["module.logit_scale"] = torch.tensor(1.0)
    sd["module.text_projection"] = torch.zeros(3, 3)
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ck.pt")
    model, info = build_model(str(tmp_path / "ck.pt"), "tiny", 32, seed=99)
    assert info["weights"].startswith("state_dict")
    for k, v in src.visual.state_dict().items():
        assert torch.equal(model.visual.state_dict()[k], v)


def test_state_dict_of_another_architecture_is_refused_with_the_mismatch(tmp_path):
    torch.save(GraftModel("tiny", 32).visual.state_dict(), tmp_path / "ck.pt")
    with pytest.raises(ModelError, match="do not fit"):
        build_model(str(tmp_path / "ck.pt"), "tiny", 16)
