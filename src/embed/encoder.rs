//! Image and text encoders over a model bundle.
//!
//! ```no_run
//! use graftdb::embed::{Bundle, EncoderOptions, ImageEncoder, TextEncoder};
//! # fn main() -> graftdb::Result<()> {
//! let bundle = Bundle::open("data/bundles/vitb16-random")?;
//! let images = ImageEncoder::open(&bundle, &EncoderOptions::default())?;
//! let photo = image::open("photo.jpg").map_err(|e| graftdb::Error::invalid("photo.jpg", e.to_string()))?;
//! let out = images.embed(&[photo])?;
//! assert_eq!(out.embeddings[0].len(), bundle.manifest().dim);
//! let texts = TextEncoder::open(&bundle, &EncoderOptions::default())?;
//! let q = texts.embed(&["a satellite photo of a farmland"])?;
//! # Ok(()) }
//! ```

use image::DynamicImage;
use ndarray::{ArrayView2, ArrayView4};

use super::bundle::Bundle;
use super::preprocess::{Preprocessor, Resample};
use super::runtime::{OnnxModel, Provider, SessionOptions};
use super::tokenizer::{ClipTokenizer, CONTEXT_LENGTH};
use crate::{Error, Result};

/// Options shared by [`ImageEncoder`] and [`TextEncoder`].
#[derive(Debug, Clone)]
pub struct EncoderOptions {
    /// Device and threads for the ONNX Runtime session.
    pub session: SessionOptions,
    /// Inputs per ONNX Runtime run (at least 1). Larger batches use more memory; on CPU
    /// 8 is already at full speed for ViT-B/16.
    pub batch_size: usize,
    /// L2-normalise every embedding and patch vector (what search wants). Off gives the
    /// model's raw outputs, as PyTorch's `encode_image(normalize=False)` does.
    pub normalize: bool,
    /// Return patch embeddings from [`ImageEncoder::embed`] (when the bundle has them).
    pub patches: bool,
    /// Resampler for resizing images (PIL-identical by default).
    pub resample: Resample,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        Self { session: SessionOptions::default(), batch_size: 8, normalize: true, patches: true, resample: Resample::Pil }
    }
}

/// Patch embeddings of one image: a `rows` × `cols` grid of `dim`-vectors, row-major
/// (the patch at row `r`, column `c` covers pixels `r*16..r*16+16` × `c*16..c*16+16` of
/// the cropped model input for a 16-px patch model).
#[derive(Debug, Clone, PartialEq)]
pub struct PatchGrid {
    /// Grid rows.
    pub rows: usize,
    /// Grid columns.
    pub cols: usize,
    /// Vector length.
    pub dim: usize,
    /// `rows * cols * dim` values.
    pub data: Vec<f32>,
}

impl PatchGrid {
    /// The vector of the patch at (`row`, `col`), or `None` outside the grid.
    #[must_use]
    pub fn get(&self, row: usize, col: usize) -> Option<&[f32]> {
        if row >= self.rows || col >= self.cols {
            return None;
        }
        let start = (row * self.cols + col) * self.dim;
        self.data.get(start..start + self.dim)
    }
}

/// The result of [`ImageEncoder::embed`].
#[derive(Debug, Clone, PartialEq)]
pub struct ImageEmbeddings {
    /// One `dim`-vector per image, in input order.
    pub embeddings: Vec<Vec<f32>>,
    /// One grid per image, when requested and the bundle has patch outputs.
    pub patches: Option<Vec<PatchGrid>>,
}

impl ImageEmbeddings {
    /// Replaces the contents with `n` images' flat model outputs: `embedding` holds
    /// `[n, dim]` values, `patches` (when given) `[n, grid[0] * grid[1], dim]`. Every
    /// value is copied once into the existing vectors (grown only when too small), and
    /// L2-normalised per `dim`-vector in the same pass when `normalize` is set. Without
    /// `patches`, `self.patches` becomes `None`.
    ///
    /// This is the output handling of [`ImageEncoder::embed_pixels`], public so that its
    /// cost can be measured without a model (`examples/embed_throughput.rs`).
    ///
    /// # Panics
    /// When a slice is shorter than its shape says.
    #[doc(hidden)]
    pub fn fill_from_outputs(&mut self, embedding: &[f32], patches: Option<&[f32]>, n: usize, dim: usize, grid: [usize; 2], normalize: bool) {
        let per_grid = grid[0] * grid[1] * dim;
        assert!(embedding.len() >= n * dim, "embedding output too short");
        self.embeddings.truncate(n);
        for (i, src) in embedding.chunks_exact(dim.max(1)).take(n).enumerate() {
            match self.embeddings.get_mut(i) {
                Some(dst) => copy_rows(dst, src, dim, normalize),
                None => {
                    let mut dst = Vec::new();
                    copy_rows(&mut dst, src, dim, normalize);
                    self.embeddings.push(dst);
                }
            }
        }
        let Some(pdata) = patches else {
            self.patches = None;
            return;
        };
        assert!(pdata.len() >= n * per_grid, "patches output too short");
        let grids = self.patches.get_or_insert_with(Vec::new);
        grids.truncate(n);
        grids.resize_with(n, || PatchGrid { rows: grid[0], cols: grid[1], dim, data: Vec::new() });
        let fill = |grids: &mut [PatchGrid], src: &[f32]| {
            for (dst, src) in grids.iter_mut().zip(src.chunks_exact(per_grid.max(1))) {
                (dst.rows, dst.cols, dst.dim) = (grid[0], grid[1], dim);
                copy_rows(&mut dst.data, src, dim, normalize);
            }
        };
        // Large outputs (ViT-B/16: 392 KiB per image) are filled by several threads: the
        // time goes into first-touch page faults on fresh memory and into memory
        // bandwidth, both of which scale with cores. The model's run is over by now, so
        // the cores are free.
        let threads = fill_threads(n * per_grid * std::mem::size_of::<f32>()).min(n);
        if threads <= 1 {
            fill(grids, pdata);
        } else {
            let per = n.div_ceil(threads);
            std::thread::scope(|scope| {
                for (g, src) in grids.chunks_mut(per).zip(pdata.chunks(per * per_grid)) {
                    scope.spawn(move || fill(g, src));
                }
            });
        }
    }
}

/// Threads for filling `bytes` of output: one per 4 MiB, at most 8 and at most the
/// cores available.
fn fill_threads(bytes: usize) -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get));
    (bytes / (4 << 20)).clamp(1, 8).min(cores)
}

/// Sets `dst` to `src`, L2-normalising each `dim`-vector on the way when `normalize`
/// (one read of `src` from memory, the second from cache; one write of `dst`).
fn copy_rows(dst: &mut Vec<f32>, src: &[f32], dim: usize, normalize: bool) {
    dst.clear();
    if !normalize || dim == 0 {
        dst.extend_from_slice(src);
        return;
    }
    dst.reserve_exact(src.len());
    for v in src.chunks_exact(dim) {
        let norm = sum_squares(v).sqrt();
        if norm > 0.0 && norm.is_finite() {
            let inv = 1.0 / norm;
            dst.extend(v.iter().map(|x| x * inv));
        } else {
            dst.extend_from_slice(v);
        }
    }
}

/// `Σ x²` over 16 independent lanes, so that it compiles to SIMD (a single running
/// sum is a chain of dependent adds, several times slower on 512-vectors).
fn sum_squares(v: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0_f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x * x;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|x| x * x).sum::<f32>()
}

/// Embeds images (and their patches) with a bundle's image tower.
///
/// Cost: one ONNX Runtime run per `batch_size` images. ViT-B/16 on 2 CPU cores embeds
/// about 5 images/s; the tiny test model hundreds. Preprocessing (decode excluded) is a
/// few ms per image. Thread-safe; runs are serialised.
#[derive(Debug)]
pub struct ImageEncoder {
    model: OnnxModel,
    pre: Preprocessor,
    input: String,
    embedding: String,
    patches: Option<String>,
    dim: usize,
    grid: [usize; 2],
    options: EncoderOptions,
}

impl ImageEncoder {
    /// Loads the bundle's image model and checks it against the manifest.
    ///
    /// # Errors
    /// Loading errors from [`OnnxModel::load`]; `InvalidInput` when the model does not
    /// match `bundle.json` or `batch_size` is 0.
    pub fn open(bundle: &Bundle, options: &EncoderOptions) -> Result<Self> {
        if options.batch_size == 0 {
            return Err(Error::invalid("batch_size", "must be at least 1"));
        }
        let m = bundle.manifest();
        let model = OnnxModel::load(bundle.image_model_path(), &options.session)?;
        bundle.check_image_model(&model)?;
        Ok(Self {
            model,
            pre: Preprocessor::new(m.image_size, m.mean, m.std)?.with_resample(options.resample),
            input: m.image_model.input.clone(),
            embedding: m.image_model.embedding.clone(),
            patches: m.image_model.patches.clone(),
            dim: m.dim,
            grid: m.patch_grid,
            options: options.clone(),
        })
    }

    /// The execution provider the model runs on.
    #[must_use]
    pub fn provider(&self) -> Provider {
        self.model.provider()
    }

    /// The preprocessor (resize, crop, normalise) this encoder applies.
    #[must_use]
    pub fn preprocessor(&self) -> &Preprocessor {
        &self.pre
    }

    /// Embeds `images` in batches of `batch_size`: one embedding per image and, when
    /// the options ask for them, one patch grid per image.
    ///
    /// # Errors
    /// `InvalidInput` for an empty image or an ONNX Runtime failure.
    pub fn embed(&self, images: &[DynamicImage]) -> Result<ImageEmbeddings> {
        let s = self.pre.size() as usize;
        let per = 3 * s * s;
        let mut out = ImageEmbeddings {
            embeddings: Vec::with_capacity(images.len()),
            patches: (self.options.patches && self.patches.is_some()).then(|| Vec::with_capacity(images.len())),
        };
        for chunk in images.chunks(self.options.batch_size) {
            let mut pixels = Vec::with_capacity(chunk.len() * per);
            for img in chunk {
                pixels.extend(self.pre.tensor(img)?);
            }
            let view = ArrayView4::from_shape((chunk.len(), 3, s, s), &pixels)
                .map_err(|e| Error::invalid("images", format!("internal: batch shape: {e}")))?;
            let part = self.embed_pixels(view)?;
            out.embeddings.extend(part.embeddings);
            if let (Some(all), Some(p)) = (out.patches.as_mut(), part.patches) {
                all.extend(p);
            }
        }
        Ok(out)
    }

    /// Embeds already preprocessed pixels, f32 `[N, 3, S, S]` (one ONNX Runtime run,
    /// whatever `N`).
    ///
    /// Each output value is copied once, from ONNX Runtime's output buffer straight into
    /// the returned vectors, and normalised in the same pass.
    ///
    /// # Errors
    /// `InvalidInput` when the shape is wrong or ONNX Runtime fails.
    pub fn embed_pixels(&self, pixels: ArrayView4<'_, f32>) -> Result<ImageEmbeddings> {
        let mut out = ImageEmbeddings { embeddings: Vec::new(), patches: None };
        self.embed_pixels_into(pixels, &mut out)?;
        Ok(out)
    }

    /// [`embed_pixels`](Self::embed_pixels) into `out`, replacing its contents but
    /// reusing its vectors' memory: a caller that embeds batch after batch of the same
    /// size into one `ImageEmbeddings` allocates nothing after the first.
    ///
    /// # Errors
    /// As [`embed_pixels`](Self::embed_pixels); `out` is unspecified after an error.
    pub fn embed_pixels_into(&self, pixels: ArrayView4<'_, f32>, out: &mut ImageEmbeddings) -> Result<()> {
        let s = self.pre.size() as usize;
        let n = pixels.shape().first().copied().unwrap_or(0);
        if pixels.shape() != [n, 3, s, s] {
            return Err(Error::invalid("pixels", format!("shape {:?}, expected [N, 3, {s}, {s}]", pixels.shape())));
        }
        if n == 0 {
            out.embeddings.clear();
            out.patches = self.wants_patches().then(Vec::new);
            return Ok(());
        }
        let mut names = vec![self.embedding.as_str()];
        if let (true, Some(p)) = (self.options.patches, self.patches.as_deref()) {
            names.push(p);
        }
        let at = || self.model.path().display().to_string();
        self.model.run_with(&self.input, pixels.into_dyn(), &names, |outputs| {
            let e = outputs.first().ok_or_else(|| Error::invalid(at(), "no embedding output"))?;
            if e.shape != [n, self.dim] {
                return Err(Error::invalid(at(), format!("embedding output shape {:?}, expected [{n}, {}]", e.shape, self.dim)));
            }
            let g = self.grid[0] * self.grid[1];
            let p = match outputs.get(1) {
                Some(p) if p.shape != [n, g, self.dim] => {
                    return Err(Error::invalid(at(), format!("patches output shape {:?}, expected [{n}, {g}, {}]", p.shape, self.dim)));
                }
                p => p.map(|p| p.data),
            };
            out.fill_from_outputs(e.data, p, n, self.dim, self.grid, self.options.normalize);
            Ok(())
        })
    }

    fn wants_patches(&self) -> bool {
        self.options.patches && self.patches.is_some()
    }
}

/// Embeds text with a bundle's text tower and the CLIP tokenizer.
///
/// Cost: tokenising is microseconds; one ONNX Runtime run per `batch_size` texts.
#[derive(Debug)]
pub struct TextEncoder {
    model: OnnxModel,
    tokenizer: ClipTokenizer,
    input: String,
    embedding: String,
    dim: usize,
    options: EncoderOptions,
}

impl TextEncoder {
    /// Loads the bundle's text model and tokenizer and checks them against the manifest.
    ///
    /// # Errors
    /// `InvalidInput` when the bundle has no text model or it does not match
    /// `bundle.json`; loading errors from [`OnnxModel::load`] and the tokenizer.
    pub fn open(bundle: &Bundle, options: &EncoderOptions) -> Result<Self> {
        if options.batch_size == 0 {
            return Err(Error::invalid("batch_size", "must be at least 1"));
        }
        let m = bundle.manifest();
        let (Some(spec), Some(path)) = (m.text_model.as_ref(), bundle.text_model_path()) else {
            return Err(Error::invalid(bundle.dir().join("bundle.json").display().to_string(), "bundle has no text_model"));
        };
        let model = OnnxModel::load(path, &options.session)?;
        bundle.check_text_model(&model)?;
        let tokenizer = ClipTokenizer::from_file(bundle.vocab_path())?;
        Ok(Self {
            model,
            tokenizer,
            input: spec.input.clone(),
            embedding: spec.embedding.clone(),
            dim: m.dim,
            options: options.clone(),
        })
    }

    /// The execution provider the model runs on.
    #[must_use]
    pub fn provider(&self) -> Provider {
        self.model.provider()
    }

    /// The tokenizer.
    #[must_use]
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// One embedding per text, in input order.
    ///
    /// # Errors
    /// `InvalidInput` when ONNX Runtime fails.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let tokens = self.tokenizer.encode_batch(texts);
        self.embed_tokens(&tokens)
    }

    /// One embedding per already tokenised text.
    ///
    /// # Errors
    /// `InvalidInput` when ONNX Runtime fails.
    pub fn embed_tokens(&self, tokens: &[[i64; CONTEXT_LENGTH]]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(tokens.len());
        let at = || self.model.path().display().to_string();
        for chunk in tokens.chunks(self.options.batch_size) {
            let flat: Vec<i64> = chunk.iter().flatten().copied().collect();
            let view = ArrayView2::from_shape((chunk.len(), CONTEXT_LENGTH), &flat)
                .map_err(|e| Error::invalid("tokens", format!("internal: batch shape: {e}")))?;
            self.model.run_with(&self.input, view.into_dyn(), &[self.embedding.as_str()], |outputs| {
                let e = outputs.first().ok_or_else(|| Error::invalid(at(), "no embedding output"))?;
                if e.shape != [chunk.len(), self.dim] {
                    return Err(Error::invalid(
                        at(),
                        format!("embedding output shape {:?}, expected [{}, {}]", e.shape, chunk.len(), self.dim),
                    ));
                }
                for v in e.data.chunks_exact(self.dim) {
                    let mut dst = Vec::new();
                    copy_rows(&mut dst, v, self.dim, self.options.normalize);
                    out.push(dst);
                }
                Ok(())
            })?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_grid_indexing_is_row_major_and_bounded() {
        let g = PatchGrid { rows: 2, cols: 3, dim: 2, data: (0..12).map(|x| x as f32).collect() };
        assert_eq!(g.get(1, 2), Some(&[10.0, 11.0][..]));
        assert_eq!(g.get(0, 1), Some(&[2.0, 3.0][..]));
        assert_eq!(g.get(2, 0), None);
        assert_eq!(g.get(0, 3), None);
    }

    #[test]
    fn copy_rows_normalises_per_vector_and_leaves_zero_vectors_alone() {
        let mut v = vec![9.0; 7];
        copy_rows(&mut v, &[3.0, 4.0, 0.0, 0.0, 0.0, -2.0], 2, true);
        assert_eq!(v.len(), 6);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert_eq!(&v[2..], &[0.0, 0.0, 0.0, -1.0]);
        copy_rows(&mut v, &[3.0, 4.0], 2, false);
        assert_eq!(v, vec![3.0, 4.0]);
    }

    #[test]
    fn fill_from_outputs_reuses_memory_and_matches_a_fresh_fill() {
        let (n, dim, grid) = (3, 4, [2, 3]);
        let emb: Vec<f32> = (0..n * dim).map(|i| (i as f32 * 0.37).sin()).collect();
        let pat: Vec<f32> = (0..n * 6 * dim).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut fresh = ImageEmbeddings { embeddings: Vec::new(), patches: None };
        fresh.fill_from_outputs(&emb, Some(&pat), n, dim, grid, true);
        let grids = fresh.patches.as_ref().unwrap();
        assert_eq!(grids.len(), n);
        assert_eq!((grids[2].rows, grids[2].cols, grids[2].dim, grids[2].data.len()), (2, 3, 4, 24));
        let v = grids[1].get(1, 2).unwrap();
        let src = &pat[(6 + 5) * dim..(6 + 6) * dim];
        let norm = src.iter().map(|x| x * x).sum::<f32>().sqrt();
        for (a, b) in v.iter().zip(src) {
            assert!((a - b / norm).abs() < 1e-6);
        }
        // Refill a larger result in place: same values, no reallocation of the kept grids.
        let mut reused = ImageEmbeddings { embeddings: vec![vec![0.0; 99]; 5], patches: None };
        reused.fill_from_outputs(&emb, Some(&pat), n, dim, grid, true);
        let before = reused.patches.as_ref().unwrap()[0].data.as_ptr();
        reused.fill_from_outputs(&emb, Some(&pat), n, dim, grid, true);
        assert_eq!(reused, fresh);
        assert_eq!(reused.patches.as_ref().unwrap()[0].data.as_ptr(), before);
        reused.fill_from_outputs(&emb[..dim], None, 1, dim, grid, false);
        assert_eq!(reused.embeddings, vec![emb[..dim].to_vec()]);
        assert_eq!(reused.patches, None);
    }
}
