//! Model bundles: a folder with `bundle.json`, `image.onnx`, `text.onnx` and the CLIP
//! vocabulary, written by `tools/export` (format: `schema/bundle.md`).
//!
//! [`Bundle::open`] reads and checks the manifest and that every file it names exists;
//! [`Bundle::check_image_model`] and [`Bundle::check_text_model`] check the ONNX
//! sessions' declared inputs and outputs against it. Every error names the file at fault.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::runtime::{OnnxModel, TensorInfo};
use super::tokenizer::{CONTEXT_LENGTH, END_ID, START_ID};
use crate::{Error, Result};

/// The `format` value of a bundle manifest.
pub const BUNDLE_FORMAT: &str = "graftdb.model-bundle";
/// The newest bundle format version this build reads.
pub const BUNDLE_VERSION: u32 = 1;
/// Name of the manifest inside a bundle folder.
pub const MANIFEST: &str = "bundle.json";

/// The image tower entry of `bundle.json`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ImageModelSpec {
    /// ONNX file, relative to the bundle.
    pub file: String,
    /// Input name: f32 `[N, 3, image_size, image_size]`.
    pub input: String,
    /// Output name: f32 `[N, dim]`.
    pub embedding: String,
    /// Output name: f32 `[N, grid_rows * grid_cols, dim]`, or absent for a model
    /// without patch embeddings.
    pub patches: Option<String>,
}

/// The text tower entry of `bundle.json`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct TextModelSpec {
    /// ONNX file, relative to the bundle.
    pub file: String,
    /// Input name: i64 `[N, context_length]`.
    pub input: String,
    /// Output name: f32 `[N, dim]`.
    pub embedding: String,
}

/// The tokenizer entry of `bundle.json`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct TokenizerSpec {
    /// Only `clip-bpe` exists.
    pub kind: String,
    /// Vocabulary file, relative to the bundle (`bpe_simple_vocab_16e6.txt.gz`).
    pub vocab: String,
    /// Id of `<start_of_text>` (49406).
    pub start_id: i64,
    /// Id of `<end_of_text>` (49407).
    pub end_id: i64,
    /// Tokens per text (77).
    pub context_length: usize,
}

/// Reference inputs and PyTorch outputs stored in the bundle's `test/` folder.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
pub struct TestSpec {
    /// A PNG test image.
    pub image: Option<String>,
    /// `.npy` f32 `[1, 3, S, S]`: the image after OpenCLIP's own (PIL) preprocessing.
    pub pixels: Option<String>,
    /// `.npy` f32 `[1, dim]`: PyTorch's embedding of `pixels`.
    pub embedding: Option<String>,
    /// `.npy` f32 `[1, G*G, dim]`: PyTorch's patch embeddings of `pixels`.
    pub patches: Option<String>,
    /// JSON list of test strings.
    pub texts: Option<String>,
    /// `.npy` i64 `[T, 77]`: OpenCLIP's tokens for `texts`.
    pub tokens: Option<String>,
    /// `.npy` f32 `[T, dim]`: PyTorch's text embeddings of `tokens`.
    pub text_embedding: Option<String>,
    /// Stems of `.png` images with `.npy` u8 `[S, S, 3]`: PIL's resize + centre crop.
    #[serde(default)]
    pub resize_cases: Vec<String>,
}

/// `bundle.json`, as written by `tools/export` (see `schema/bundle.md`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Manifest {
    /// Must be [`BUNDLE_FORMAT`].
    pub format: String,
    /// Format version; this build reads up to [`BUNDLE_VERSION`].
    pub format_version: u32,
    /// Bundle name (also the default embedding space name).
    pub name: String,
    /// `openclip` or `graft`.
    pub family: String,
    /// Architecture (`ViT-B-16`, `tiny`, ...).
    pub arch: String,
    /// True when the weights are seeded random ones: embeddings mean nothing.
    #[serde(default)]
    pub random_weights: bool,
    /// Licence of the weights.
    #[serde(default)]
    pub licence: String,
    /// Embedding dimension (image, patch and text).
    pub dim: usize,
    /// Whether the ONNX outputs are already L2-normalised.
    #[serde(default)]
    pub normalized: bool,
    /// Square input side in pixels.
    pub image_size: u32,
    /// Patch side in pixels.
    pub patch_size: u32,
    /// Patch grid `[rows, cols]`.
    pub patch_grid: [usize; 2],
    /// Per-channel RGB mean.
    pub mean: [f32; 3],
    /// Per-channel RGB standard deviation.
    pub std: [f32; 3],
    /// `shortest`: the shortest side is resized to `image_size`.
    pub resize: String,
    /// `bicubic`.
    pub interpolation: String,
    /// `center`.
    pub crop: String,
    /// The image tower.
    pub image_model: ImageModelSpec,
    /// The text tower, if the bundle has one.
    pub text_model: Option<TextModelSpec>,
    /// Tokens per text.
    pub context_length: usize,
    /// The tokenizer.
    pub tokenizer: TokenizerSpec,
    /// Reference data for self-checks.
    #[serde(default)]
    pub test: Option<TestSpec>,
}

/// An opened, checked model bundle folder.
#[derive(Debug, Clone)]
pub struct Bundle {
    dir: PathBuf,
    manifest: Manifest,
}

impl Bundle {
    /// Reads `DIR/bundle.json`, checks its values and that the files it names exist.
    /// Cheap: no model is loaded.
    ///
    /// # Errors
    /// `Io` when the manifest cannot be read; `InvalidInput` naming `bundle.json` or the
    /// missing file otherwise.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let manifest_path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                "; a model bundle is written by tools/export (tools/setup.sh exports data/bundles/tiny and data/bundles/vitb16-random)"
            } else {
                ""
            };
            Error::io(&manifest_path, std::io::Error::new(e.kind(), format!("{e}{hint}")))
        })?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(manifest_path.display().to_string(), format!("not a bundle manifest: {e}")))?;
        let bundle = Self { dir, manifest };
        bundle.validate()?;
        Ok(bundle)
    }

    fn validate(&self) -> Result<()> {
        let m = &self.manifest;
        let at = self.dir.join(MANIFEST).display().to_string();
        let bad = |detail: String| Err(Error::invalid(&at, detail));
        if m.format != BUNDLE_FORMAT {
            return bad(format!("format is '{}', expected '{BUNDLE_FORMAT}'", m.format));
        }
        if m.format_version == 0 || m.format_version > BUNDLE_VERSION {
            return bad(format!(
                "format_version {} is not supported (this graftdb reads 1..={BUNDLE_VERSION}); upgrade graftdb",
                m.format_version
            ));
        }
        if m.dim == 0 {
            return bad("dim must be positive".into());
        }
        if m.image_size == 0 || m.patch_size == 0 || !m.image_size.is_multiple_of(m.patch_size) {
            return bad(format!("image_size {} is not a multiple of patch_size {}", m.image_size, m.patch_size));
        }
        let g = (m.image_size / m.patch_size) as usize;
        if m.patch_grid != [g, g] {
            return bad(format!("patch_grid {:?} does not match image_size/patch_size = {g}", m.patch_grid));
        }
        if m.std.iter().any(|s| !s.is_finite() || *s <= 0.0) || m.mean.iter().any(|v| !v.is_finite()) {
            return bad(format!("mean {:?} / std {:?}: need finite values and std > 0", m.mean, m.std));
        }
        if (m.resize.as_str(), m.interpolation.as_str(), m.crop.as_str()) != ("shortest", "bicubic", "center") {
            return bad(format!(
                "preprocessing resize={} interpolation={} crop={} is not supported (only shortest/bicubic/center)",
                m.resize, m.interpolation, m.crop
            ));
        }
        if m.context_length != CONTEXT_LENGTH || m.tokenizer.context_length != CONTEXT_LENGTH {
            return bad(format!("context_length {} (tokenizer {}) must be {CONTEXT_LENGTH}", m.context_length, m.tokenizer.context_length));
        }
        if m.tokenizer.kind != "clip-bpe" || m.tokenizer.start_id != START_ID || m.tokenizer.end_id != END_ID {
            return bad(format!(
                "tokenizer {} with start/end {}/{} is not CLIP BPE ({START_ID}/{END_ID})",
                m.tokenizer.kind, m.tokenizer.start_id, m.tokenizer.end_id
            ));
        }
        let mut files = vec![("image_model.file", &m.image_model.file), ("tokenizer.vocab", &m.tokenizer.vocab)];
        if let Some(t) = &m.text_model {
            files.push(("text_model.file", &t.file));
        }
        for (key, rel) in files {
            let rel_path = Path::new(rel);
            if rel_path.is_absolute() || rel_path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return bad(format!("{key} '{rel}' must be a path inside the bundle"));
            }
            let p = self.dir.join(rel_path);
            if !p.is_file() {
                return bad(format!("{key}: {} is missing", p.display()));
            }
        }
        Ok(())
    }

    /// The bundle folder.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parsed manifest.
    #[must_use]
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Absolute-or-relative path of a file named in the manifest.
    #[must_use]
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Path of the image tower's ONNX file.
    #[must_use]
    pub fn image_model_path(&self) -> PathBuf {
        self.path(&self.manifest.image_model.file)
    }

    /// Path of the text tower's ONNX file, if the bundle has one.
    #[must_use]
    pub fn text_model_path(&self) -> Option<PathBuf> {
        self.manifest.text_model.as_ref().map(|t| self.path(&t.file))
    }

    /// Path of the tokenizer vocabulary.
    #[must_use]
    pub fn vocab_path(&self) -> PathBuf {
        self.path(&self.manifest.tokenizer.vocab)
    }

    /// Checks that the loaded image model declares the input and outputs the manifest
    /// promises: `input` f32 `[N, 3, S, S]`, `embedding` `[N, dim]`, `patches`
    /// `[N, rows*cols, dim]` (dynamic dimensions accepted where fixed ones are promised).
    ///
    /// # Errors
    /// `InvalidInput` naming the ONNX file and the mismatch.
    pub fn check_image_model(&self, model: &OnnxModel) -> Result<()> {
        let m = &self.manifest;
        let s = i64::from(m.image_size);
        let d = i64::try_from(m.dim).unwrap_or(-1);
        let n_patches = m.patch_grid[0].checked_mul(m.patch_grid[1]).and_then(|v| i64::try_from(v).ok()).unwrap_or(-1);
        check_tensor(model, true, &m.image_model.input, "Float32", &[-1, 3, s, s])?;
        check_tensor(model, false, &m.image_model.embedding, "Float32", &[-1, d])?;
        if let Some(p) = &m.image_model.patches {
            check_tensor(model, false, p, "Float32", &[-1, n_patches, d])?;
        }
        Ok(())
    }

    /// Checks the loaded text model: `input` i64 `[N, 77]`, `embedding` f32 `[N, dim]`.
    ///
    /// # Errors
    /// `InvalidInput` naming the ONNX file and the mismatch, or when the bundle has no
    /// text model.
    pub fn check_text_model(&self, model: &OnnxModel) -> Result<()> {
        let m = &self.manifest;
        let Some(t) = &m.text_model else {
            return Err(Error::invalid(self.dir.join(MANIFEST).display().to_string(), "bundle has no text_model"));
        };
        let ctx = i64::try_from(m.context_length).unwrap_or(-1);
        let d = i64::try_from(m.dim).unwrap_or(-1);
        check_tensor(model, true, &t.input, "Int64", &[-1, ctx])?;
        check_tensor(model, false, &t.embedding, "Float32", &[-1, d])
    }
}

/// `want` uses -1 for "any"; a declared -1 (dynamic) matches any wanted size.
fn check_tensor(model: &OnnxModel, input: bool, name: &str, dtype: &str, want: &[i64]) -> Result<()> {
    let at = model.path().display().to_string();
    let (kind, list): (&str, &[TensorInfo]) = if input { ("input", model.inputs()) } else { ("output", model.outputs()) };
    let Some(info) = list.iter().find(|i| i.name == name) else {
        let names: Vec<&str> = list.iter().map(|i| i.name.as_str()).collect();
        return Err(Error::invalid(at, format!("no {kind} named '{name}' (the model has {names:?}); bundle.json and the ONNX file disagree")));
    };
    let shape_ok = info.shape.len() == want.len()
        && info.shape.iter().zip(want).all(|(&have, &w)| w < 0 || have < 0 || have == w);
    if info.dtype != dtype || !shape_ok {
        return Err(Error::invalid(
            at,
            format!("{kind} '{name}' is {} {:?}, bundle.json implies {dtype} {want:?} (-1 = any)", info.dtype, info.shape),
        ));
    }
    Ok(())
}
