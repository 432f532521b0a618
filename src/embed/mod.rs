//! Embeddings through ONNX Runtime: model bundles, the CLIP tokenizer, preprocessing.

mod clean;
#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod text_tables;
pub mod tokenizer;

pub use tokenizer::ClipTokenizer;
