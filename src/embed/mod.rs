//! Embeddings through ONNX Runtime: model bundles, the CLIP tokenizer, preprocessing.
