"""GRAFT trainer for graftdb: fit a CLIP ViT satellite encoder to frozen ground-photo
embeddings (Mall et al., ICLR 2024), evaluate retrieval, export ONNX bundles."""

__version__ = "0.1.0"
