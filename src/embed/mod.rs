//! Embeddings through ONNX Runtime: model bundles, the CLIP tokenizer, preprocessing.
//!
//! - [`bundle`]: a model bundle folder written by `tools/export` (`schema/bundle.md`).
//! - [`runtime`]: finding and loading ONNX Runtime, sessions on CPU or CUDA.
//! - [`tokenizer`]: the CLIP BPE tokenizer, id-for-id identical to OpenCLIP's.
//! - [`preprocess`]: image → CLIP input tensor (resize, centre crop, normalise).
//! - [`encoder`]: [`ImageEncoder`] and [`TextEncoder`], batched, over a bundle.

pub mod bundle;
mod clean;
pub mod encoder;
pub mod preprocess;
pub mod runtime;
#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod text_tables;
pub mod tokenizer;

pub use bundle::{Bundle, Manifest};
pub use encoder::{EncoderOptions, ImageEmbeddings, ImageEncoder, PatchGrid, TextEncoder};
pub use preprocess::{open_image, Preprocessor, Resample};
pub use runtime::{Device, OnnxModel, Provider, Runtime, SessionOptions};
pub use tokenizer::ClipTokenizer;
