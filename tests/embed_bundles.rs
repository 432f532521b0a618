//! The Rust embedding path must reproduce PyTorch on real exported bundles.
//!
//! `tools/setup.sh` exports two bundles with seeded random weights: `data/bundles/tiny`
//! (a small CLIP-shaped model) and `data/bundles/vitb16-random` (a real OpenCLIP ViT-B/16).
//! Each holds, in `test/`, OpenCLIP's preprocessing of a fixed test image and PyTorch's
//! outputs for it. Through ONNX Runtime and the Rust tokenizer we must match those outputs
//! within 1e-4 (max abs, fp32). The Rust preprocessing (fast_image_resize bicubic) is
//! compared with PIL's separately: its difference is measured and bounded.
//! The tests fail, not skip, when setup was not run.

use std::path::{Path, PathBuf};

use graftdb::embed::preprocess::Resample;
use graftdb::embed::runtime::Runtime;
use graftdb::embed::{Bundle, Device, EncoderOptions, ImageEncoder, SessionOptions, TextEncoder};
use ndarray::{Array4, ArrayView4};

const TOL: f32 = 1e-4;

fn bundle_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/bundles").join(name);
    assert!(
        dir.join("bundle.json").is_file(),
        "{} is missing: run tools/setup.sh (it exports the test bundles)",
        dir.display()
    );
    dir
}

fn npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(std::io::BufReader::new(f)).unwrap();
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    (shape, npy.into_vec::<f32>().unwrap())
}

fn npy_i64(path: &Path) -> (Vec<usize>, Vec<i64>) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(std::io::BufReader::new(f)).unwrap();
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    (shape, npy.into_vec::<i64>().unwrap())
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn raw_cpu() -> EncoderOptions {
    EncoderOptions {
        session: SessionOptions { device: Device::Cpu, threads: None, ..SessionOptions::default() },
        batch_size: 4,
        normalize: false,
        patches: true,
        resample: Resample::Pil,
    }
}

/// Runs every check on one bundle and returns a one-line report.
fn check_bundle(name: &str) -> String {
    let dir = bundle_dir(name);
    let bundle = Bundle::open(&dir).unwrap();
    let m = bundle.manifest().clone();
    let test = dir.join("test");
    let opts = raw_cpu();

    // Image tower on the reference (PIL-preprocessed) pixels.
    let images = ImageEncoder::open(&bundle, &opts).unwrap();
    assert_eq!(images.provider().to_string(), "CPUExecutionProvider");
    let (pshape, pixels) = npy_f32(&test.join("pixels.npy"));
    let s = m.image_size as usize;
    assert_eq!(pshape, vec![1, 3, s, s]);
    let view = ArrayView4::from_shape((1, 3, s, s), &pixels).unwrap();
    let out = images.embed_pixels(view).unwrap();
    let (_, want_emb) = npy_f32(&test.join("embedding.npy"));
    let (wshape, want_patches) = npy_f32(&test.join("patches.npy"));
    assert_eq!(wshape, vec![1, m.patch_grid[0] * m.patch_grid[1], m.dim]);
    let d_emb = max_abs(&out.embeddings[0], &want_emb);
    let got_patches = &out.patches.as_ref().unwrap()[0];
    assert_eq!((got_patches.rows, got_patches.cols, got_patches.dim), (m.patch_grid[0], m.patch_grid[1], m.dim));
    let d_patch = max_abs(&got_patches.data, &want_patches);
    assert!(d_emb <= TOL, "{name}: image embedding differs from PyTorch by {d_emb}");
    assert!(d_patch <= TOL, "{name}: patch embeddings differ from PyTorch by {d_patch}");

    // Dynamic batch: the same image three times in one run gives the same rows.
    let mut batch = Array4::<f32>::zeros((3, 3, s, s));
    for mut slot in batch.outer_iter_mut() {
        slot.assign(&view.index_axis(ndarray::Axis(0), 0));
    }
    let out3 = images.embed_pixels(batch.view()).unwrap();
    assert_eq!(out3.embeddings.len(), 3);
    for e in &out3.embeddings {
        assert!(max_abs(e, &want_emb) <= TOL);
    }

    // Rust preprocessing of the test image against PIL's: the default resampler is
    // byte-identical; fast_image_resize is a few 8-bit levels off.
    let img = image::open(test.join("image.png")).unwrap();
    let rust_pixels = images.preprocessor().tensor(&img).unwrap();
    let d_pix = max_abs(&rust_pixels, &pixels);
    assert!(d_pix <= 1e-6, "{name}: PIL-exact preprocessing differs from PIL by {d_pix}");
    let via_rust = images.embed(std::slice::from_ref(&img)).unwrap();
    let d_via_rust = max_abs(&via_rust.embeddings[0], &want_emb);
    assert!(d_via_rust <= TOL, "{name}: image file -> embedding differs from PyTorch by {d_via_rust}");
    let fast = images.preprocessor().clone().with_resample(Resample::Fast);
    let fast_pixels = fast.tensor(&img).unwrap();
    let d_fast = max_abs(&fast_pixels, &pixels);
    // In 8-bit levels: normalised difference times 255 * std.
    let levels = d_fast * 255.0 * m.std.iter().copied().fold(f32::MAX, f32::min);
    let differing = fast_pixels.iter().zip(&pixels).filter(|(a, b)| (*a - *b).abs() > 1e-5).count();
    assert!(levels <= 8.5, "{name}: fast resize differs from PIL by {levels:.2} levels");
    let fast_view = ArrayView4::from_shape((1, 3, s, s), &fast_pixels).unwrap();
    let fast_emb = images.embed_pixels(fast_view).unwrap();
    let cos_fast = cosine(&fast_emb.embeddings[0], &want_emb);
    let d_fast_emb = max_abs(&fast_emb.embeddings[0], &want_emb);
    assert!(cos_fast > 0.999, "{name}: fast-resized embedding has cosine {cos_fast} to PyTorch's");

    // Text tower: Rust tokens must equal OpenCLIP's, embeddings within TOL.
    let texts: Vec<String> = serde_json::from_str(&std::fs::read_to_string(test.join("texts.json")).unwrap()).unwrap();
    let (tshape, want_tokens) = npy_i64(&test.join("tokens.npy"));
    assert_eq!(tshape, vec![texts.len(), 77]);
    let text_enc = TextEncoder::open(&bundle, &opts).unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ours = text_enc.tokenizer().encode_batch(&refs);
    let ours_flat: Vec<i64> = ours.iter().flatten().copied().collect();
    assert_eq!(ours_flat, want_tokens, "{name}: tokens differ from OpenCLIP's");
    let got_text = text_enc.embed(&refs).unwrap();
    let (_, want_text) = npy_f32(&test.join("text_embedding.npy"));
    let got_text_flat: Vec<f32> = got_text.iter().flatten().copied().collect();
    let d_text = max_abs(&got_text_flat, &want_text);
    assert!(d_text <= TOL, "{name}: text embeddings differ from PyTorch by {d_text}");

    format!(
        "{name}: ort vs torch max abs: embedding {d_emb:.2e}, patches {d_patch:.2e}, text {d_text:.2e}; \
         file->embedding {d_via_rust:.2e}; fast_image_resize vs PIL: {levels:.1} 8-bit levels max, {differing} of {} \
         values differ, embedding max abs {d_fast_emb:.2e}, cosine {cos_fast:.6}",
        pixels.len()
    )
}

#[test]
fn tiny_bundle_matches_pytorch() {
    eprintln!("{}", check_bundle("tiny"));
}

#[test]
fn vitb16_random_bundle_matches_pytorch() {
    eprintln!("{}", check_bundle("vitb16-random"));
}

#[test]
fn pil_resampler_is_byte_identical_on_awkward_sizes() {
    let bundle = Bundle::open(bundle_dir("tiny")).unwrap();
    let m = bundle.manifest();
    let cases = m.test.as_ref().map(|t| t.resize_cases.clone()).unwrap_or_default();
    assert!(cases.len() >= 5, "bundle has no resize cases: re-run tools/setup.sh");
    let pre = graftdb::embed::Preprocessor::new(m.image_size, m.mean, m.std).unwrap();
    let fast = pre.clone().with_resample(Resample::Fast);
    for stem in cases {
        let img = image::open(bundle.path(&format!("{stem}.png"))).unwrap();
        let f = std::fs::File::open(bundle.path(&format!("{stem}.npy"))).unwrap();
        let want = npyz::NpyFile::new(std::io::BufReader::new(f)).unwrap().into_vec::<u8>().unwrap();
        let got = pre.resize_crop(&img).unwrap().into_raw();
        let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(got.len(), want.len(), "{stem}");
        assert_eq!(diff, 0, "{stem}: {diff} bytes differ from PIL");
        let got_fast = fast.resize_crop(&img).unwrap().into_raw();
        let max_fast = got_fast.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
        let n_fast = got_fast.iter().zip(&want).filter(|(a, b)| a != b).count();
        eprintln!("{stem}: PIL port identical; fast_image_resize: {n_fast} of {} bytes differ, max {max_fast} levels", want.len());
    }
}

#[test]
fn normalized_output_has_unit_length() {
    let bundle = Bundle::open(bundle_dir("tiny")).unwrap();
    let opts = EncoderOptions { normalize: true, ..raw_cpu() };
    let images = ImageEncoder::open(&bundle, &opts).unwrap();
    let img = image::open(bundle.dir().join("test/image.png")).unwrap();
    let out = images.embed(&[img.clone(), img]).unwrap();
    for e in &out.embeddings {
        let n: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-5);
    }
    let p = out.patches.unwrap();
    let v = p[1].get(13, 13).unwrap();
    assert!((v.iter().map(|x| x * x).sum::<f32>().sqrt() - 1.0).abs() < 1e-5);
    let texts = TextEncoder::open(&bundle, &opts).unwrap().embed(&["a", "b c"]).unwrap();
    assert_eq!(texts.len(), 2);
}

#[test]
fn runtime_reports_the_loaded_library() {
    let rt = Runtime::global().unwrap();
    assert!(rt.library().to_string_lossy().contains("libonnxruntime"), "{}", rt.library().display());
}

fn copy_bundle(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    }
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("bundle.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn bad_bundles_are_refused_with_the_file_named() {
    let src = bundle_dir("tiny");
    let tmp = tempfile::tempdir().unwrap();

    // No bundle at all.
    let err = Bundle::open(tmp.path().join("nope")).unwrap_err().to_string();
    assert!(err.contains("bundle.json") && err.contains("tools/setup.sh"), "{err}");

    // A text model file that is not there.
    let a = tmp.path().join("missing-file");
    copy_bundle(&src, &a);
    std::fs::remove_file(a.join("text.onnx")).unwrap();
    let err = Bundle::open(&a).unwrap_err().to_string();
    assert!(err.contains("text.onnx") && err.contains("missing"), "{err}");

    // A grid that does not follow from image_size / patch_size.
    let b = tmp.path().join("bad-grid");
    copy_bundle(&src, &b);
    edit_manifest(&b, |v| v["patch_grid"] = serde_json::json!([7, 7]));
    let err = Bundle::open(&b).unwrap_err().to_string();
    assert!(err.contains("bundle.json") && err.contains("patch_grid"), "{err}");

    // A manifest whose dim disagrees with the ONNX model's declared outputs.
    let c = tmp.path().join("bad-dim");
    copy_bundle(&src, &c);
    edit_manifest(&c, |v| v["dim"] = serde_json::json!(512));
    let bundle = Bundle::open(&c).unwrap();
    let err = ImageEncoder::open(&bundle, &raw_cpu()).unwrap_err().to_string();
    assert!(err.contains("image.onnx") && err.contains("embedding"), "{err}");
    let err = TextEncoder::open(&bundle, &raw_cpu()).unwrap_err().to_string();
    assert!(err.contains("text.onnx"), "{err}");

    // An input name the model does not have.
    let d = tmp.path().join("bad-name");
    copy_bundle(&src, &d);
    edit_manifest(&d, |v| v["image_model"]["input"] = serde_json::json!("images"));
    let err = ImageEncoder::open(&Bundle::open(&d).unwrap(), &raw_cpu()).unwrap_err().to_string();
    assert!(err.contains("image.onnx") && err.contains("'images'") && err.contains("pixels"), "{err}");

    // A newer format.
    let e = tmp.path().join("too-new");
    copy_bundle(&src, &e);
    edit_manifest(&e, |v| v["format_version"] = serde_json::json!(99));
    let err = Bundle::open(&e).unwrap_err().to_string();
    assert!(err.contains("format_version 99"), "{err}");
}

#[test]
fn cuda_request_on_a_cpu_library_is_a_clear_error_or_runs_on_cuda() {
    let bundle = Bundle::open(bundle_dir("tiny")).unwrap();
    let opts = EncoderOptions { session: SessionOptions { device: Device::Cuda, threads: None, ..SessionOptions::default() }, ..raw_cpu() };
    match ImageEncoder::open(&bundle, &opts) {
        Ok(enc) => assert_eq!(enc.provider().to_string(), "CUDAExecutionProvider"),
        Err(e) => assert!(e.to_string().contains("CUDA"), "{e}"),
    }
    // Auto always works and says where it ran.
    let auto = EncoderOptions { session: SessionOptions::default(), ..raw_cpu() };
    let enc = ImageEncoder::open(&bundle, &auto).unwrap();
    eprintln!("Device::Auto ran on {}", enc.provider());
}

/// `Device::Auto` picks CUDA when the loaded ONNX Runtime has it (the onnxruntime-gpu
/// wheel) and a GPU is present, else CPU; either way the outputs must match PyTorch's
/// CPU fp32 reference. CUDA may use TF32 matmuls, hence the looser bound there.
#[test]
fn auto_device_matches_pytorch_and_reports_its_provider() {
    let dir = bundle_dir("tiny");
    let bundle = Bundle::open(&dir).unwrap();
    let opts = EncoderOptions { session: SessionOptions::default(), ..raw_cpu() };
    let images = ImageEncoder::open(&bundle, &opts).unwrap();
    let texts = TextEncoder::open(&bundle, &opts).unwrap();
    let s = bundle.manifest().image_size as usize;
    let (_, pixels) = npy_f32(&dir.join("test/pixels.npy"));
    let out = images.embed_pixels(ArrayView4::from_shape((1, 3, s, s), &pixels).unwrap()).unwrap();
    let (_, want) = npy_f32(&dir.join("test/embedding.npy"));
    let (_, want_p) = npy_f32(&dir.join("test/patches.npy"));
    let d = max_abs(&out.embeddings[0], &want);
    let dp = max_abs(&out.patches.as_ref().unwrap()[0].data, &want_p);
    let tol = if images.provider() == graftdb::embed::Provider::Cuda { 1e-2 } else { TOL };
    eprintln!(
        "Device::Auto: image on {}, text on {}, CUDA in library: {}; max abs vs torch: embedding {d:.2e}, patches {dp:.2e}",
        images.provider(),
        texts.provider(),
        Runtime::global().unwrap().cuda_available()
    );
    assert!(d <= tol && dp <= tol, "{d} {dp} > {tol}");
}

/// Throughput, printed only: `cargo test --release --test embed_bundles -- --ignored --nocapture`.
#[test]
#[ignore = "timing report, not a check"]
fn throughput_report() {
    for name in ["tiny", "vitb16-random"] {
        let bundle = Bundle::open(bundle_dir(name)).unwrap();
        let opts = EncoderOptions { batch_size: 8, ..raw_cpu() };
        let enc = ImageEncoder::open(&bundle, &opts).unwrap();
        let img = image::open(bundle.dir().join("test/image.png")).unwrap();
        let imgs = vec![img; 16];
        enc.embed(&imgs[..2]).unwrap(); // warm-up
        let t = std::time::Instant::now();
        enc.embed(&imgs).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let t2 = std::time::Instant::now();
        for i in &imgs {
            enc.preprocessor().tensor(i).unwrap();
        }
        let pre = t2.elapsed().as_secs_f64();
        let text = TextEncoder::open(&bundle, &opts).unwrap();
        let qs: Vec<String> = (0..32).map(|i| format!("a satellite photo of field number {i}")).collect();
        let refs: Vec<&str> = qs.iter().map(String::as_str).collect();
        let t3 = std::time::Instant::now();
        text.embed(&refs).unwrap();
        let tsecs = t3.elapsed().as_secs_f64();
        eprintln!(
            "{name}: {:.1} images/s (batch 8, incl. preprocessing {:.1} ms/image), {:.1} texts/s on {}",
            imgs.len() as f64 / secs,
            1000.0 * pre / imgs.len() as f64,
            qs.len() as f64 / tsecs,
            enc.provider()
        );
    }
}
