//! The embedding benchmark, on CPU: preprocessing images/s, image embedding images/s and
//! text embedding texts/s for the bundles in `data/bundles/` (issue 3, "Benchmark").
//!
//! Run: `cargo bench --bench embed` (needs `tools/setup.sh` and `tools/fetch-data.sh`: the
//! ONNX Runtime library, `data/bundles/{tiny,vitb16-random}`, the Landsat scene and the EXIF
//! photos; a missing input skips its rows). `GRAFTDB_BENCH_SECS` sets the seconds per
//! measurement (default 3; every measurement runs at least twice after one warm-up).
//! CI only compiles this (`cargo bench --no-run`). The GPU comparison with PyTorch is
//! `tools/bench/gpu_bench.sh` (results in `bench-results/embed-gpu.md`).
//!
//! It prints one markdown report:
//! - **Preprocessing** (`Preprocessor::tensor`: resize the short side to 224, centre crop,
//!   normalise to f32 planes; decoding and GDAL reads excluded), one thread, for the two
//!   resamplers: `Pil` (byte-identical to PIL, the default) and `Fast` (fast_image_resize).
//!   Inputs: Landsat-8 windows read with `graftdb::ingest::raster::WindowReader` (224 px, the
//!   ingest default tile, and 512 px), the whole 2041×1860 Landsat stack, and the 180×135
//!   EXIF JPEGs.
//! - **Image embedding** (`ImageEncoder::embed`: preprocessing + ONNX Runtime run + patch
//!   grids + L2 normalisation), all cores, at batch 1 and 8, on 224-px Landsat tiles.
//! - **Text**: tokenising alone (`ClipTokenizer::encode`) and `TextEncoder::embed` at
//!   batch 1 and 8.

use std::path::Path;
use std::time::Instant;

use graftdb::embed::runtime::{find_library, Device, SessionOptions};
use graftdb::embed::{Bundle, ClipTokenizer, EncoderOptions, ImageEncoder, Preprocessor, Resample, TextEncoder};
use graftdb::ingest::raster::WindowReader;
use image::DynamicImage;

const LANDSAT: &str = "data/landsat/LC08_L1TP_224078_20200518_20200518_01_RT.TIF";
const PHOTOS: [&str; 3] = ["data/exif/test1.jpg", "data/exif/test2.jpg", "data/exif/test3.jpg"];
const BUNDLES: [&str; 2] = ["data/bundles/tiny", "data/bundles/vitb16-random"];
const TEXTS: [&str; 8] = [
    "a satellite photo of a farmland",
    "an aerial image of an airport with many planes",
    "a river crossing a city, seen from above",
    "There are 15 aircrafts in the middle of the picture.",
    "Foz do Iguaçu, Itaipu dam & the Paraná river",
    "a dense tropical forest next to a reservoir",
    "東京の港 🚢",
    "a photo of a harbour with container ships",
];

fn secs() -> f64 {
    std::env::var("GRAFTDB_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0)
}

/// Runs `f` (which handles `per_call` items) once to warm up, then for at least `secs()`
/// and twice; returns (items/s, ms per call, calls).
fn measure(per_call: usize, mut f: impl FnMut()) -> (f64, f64, u32) {
    f();
    let budget = secs();
    let t0 = Instant::now();
    let mut calls = 0_u32;
    while calls < 2 || t0.elapsed().as_secs_f64() < budget {
        f();
        calls += 1;
    }
    let dt = t0.elapsed().as_secs_f64();
    (f64::from(calls) * per_call as f64 / dt, dt * 1000.0 / f64::from(calls), calls)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.trim_start_matches("MemTotal:").trim().to_string()))
        .unwrap_or_default();
    format!("{model}, {cores} cores available, {mem} RAM")
}

/// Landsat windows of `px` pixels along the diagonal of the scene (inside its valid area).
fn landsat_tiles(px: u32, n: u32) -> Option<Vec<DynamicImage>> {
    let mut reader = WindowReader::open(Path::new(LANDSAT)).ok()?;
    let mut out = Vec::new();
    for i in 0..n {
        let off = 300 + i * 60;
        out.push(DynamicImage::ImageRgb8(reader.read([off, off, px, px]).ok()?));
    }
    Some(out)
}

fn photos() -> Option<Vec<DynamicImage>> {
    PHOTOS.iter().map(|p| image::open(p).ok()).collect()
}

fn main() {
    println!("# graftdb embedding benchmark (CPU)\n");
    println!("- machine: {}", machine());
    match find_library() {
        Ok(lib) => println!("- ONNX Runtime: {}", lib.display()),
        Err(e) => println!("- ONNX Runtime: not found ({e}); embedding rows are skipped"),
    }
    println!("- seconds per measurement: {} (GRAFTDB_BENCH_SECS), after one warm-up call", secs());
    println!("- build: `cargo bench --bench embed` (release profile)\n");

    // ----------------------------------------------------------------------- preprocessing
    println!("## Preprocessing (one thread, decode/read excluded)\n");
    println!("| input | size | resampler | images/s | ms/image |");
    println!("|---|---|---|---:|---:|");
    let mut sets: Vec<(String, Vec<DynamicImage>)> = Vec::new();
    if let Some(t) = landsat_tiles(224, 16) {
        sets.push(("Landsat-8 window (ingest default tile)".into(), t));
    }
    if let Some(t) = landsat_tiles(512, 16) {
        sets.push(("Landsat-8 window".into(), t));
    }
    if let Ok(mut r) = WindowReader::open(Path::new(LANDSAT)) {
        if let Ok(img) = r.read([0, 0, 2041, 1860]) {
            sets.push(("Landsat-8 whole 3-band stack".into(), vec![DynamicImage::ImageRgb8(img)]));
        }
    }
    if let Some(p) = photos() {
        sets.push(("EXIF phone photo (JPEG)".into(), p));
    }
    if sets.is_empty() {
        println!("| (no images: run tools/fetch-data.sh) | | | | |");
    }
    // OpenAI CLIP mean/std, as in the bundles.
    #[allow(clippy::excessive_precision)]
    let mean = [0.481_454_66, 0.457_827_5, 0.408_210_73];
    #[allow(clippy::excessive_precision)]
    let std = [0.268_629_54, 0.261_302_58, 0.275_777_11];
    for (label, images) in &sets {
        let size = format!("{}×{}", images[0].width(), images[0].height());
        for resample in [Resample::Pil, Resample::Fast] {
            let pre = Preprocessor::new(224, mean, std).expect("preprocessor").with_resample(resample);
            let (ips, ms, _) = measure(images.len(), || {
                for img in images {
                    std::hint::black_box(pre.tensor(img).expect("preprocess"));
                }
            });
            println!("| {label} | {size} | {resample:?} | {ips:.1} | {:.3} |", ms / images.len() as f64);
        }
    }

    // ----------------------------------------------------------------------- image embedding
    println!("\n## Image embedding (CPU, all cores; preprocessing + ONNX Runtime + patch grids + L2)\n");
    println!("| bundle | arch | batch | images/s | ms/batch | calls | provider |");
    println!("|---|---|---:|---:|---:|---:|---|");
    let tiles = landsat_tiles(224, 8);
    for dir in BUNDLES {
        let Ok(bundle) = Bundle::open(dir) else {
            println!("| {dir} | (missing: tools/setup.sh) | | | | | |");
            continue;
        };
        let Some(tiles) = tiles.as_ref() else {
            println!("| {dir} | (no Landsat tiles) | | | | | |");
            continue;
        };
        for batch in [1_usize, 8] {
            let opts = EncoderOptions {
                session: SessionOptions { device: Device::Cpu, threads: None, ..SessionOptions::default() },
                batch_size: batch,
                ..EncoderOptions::default()
            };
            let enc = match ImageEncoder::open(&bundle, &opts) {
                Ok(e) => e,
                Err(e) => {
                    println!("| {dir} | error: {e} | | | | | |");
                    break;
                }
            };
            let input = &tiles[..batch];
            let (ips, ms, calls) = measure(batch, || {
                std::hint::black_box(enc.embed(input).expect("embed"));
            });
            let m = bundle.manifest();
            println!("| {} | {} | {batch} | {ips:.1} | {ms:.1} | {calls} | {} |", m.name, m.arch, enc.provider());
        }
    }

    // ----------------------------------------------------------------------- text
    println!("\n## Text (CPU, all cores)\n");
    println!("| bundle | what | batch | texts/s | ms/batch | calls |");
    println!("|---|---|---:|---:|---:|---:|");
    let mut tokenised = false;
    for dir in BUNDLES {
        let Ok(bundle) = Bundle::open(dir) else {
            continue;
        };
        let name = bundle.manifest().name.clone();
        if !std::mem::replace(&mut tokenised, true) {
            if let Ok(tok) = ClipTokenizer::from_file(bundle.vocab_path()) {
                let (tps, ms, calls) = measure(TEXTS.len(), || {
                    for t in TEXTS {
                        std::hint::black_box(tok.encode(t));
                    }
                });
                println!("| (any) | tokenise (CLIP BPE, one thread) | 1 | {tps:.0} | {:.4} | {calls} |", ms / TEXTS.len() as f64);
            }
        }
        for batch in [1_usize, 8] {
            let opts = EncoderOptions {
                session: SessionOptions { device: Device::Cpu, threads: None, ..SessionOptions::default() },
                batch_size: batch,
                ..EncoderOptions::default()
            };
            let enc = match TextEncoder::open(&bundle, &opts) {
                Ok(e) => e,
                Err(e) => {
                    println!("| {name} | error: {e} | | | | |");
                    break;
                }
            };
            let input = &TEXTS[..batch];
            let (tps, ms, calls) = measure(batch, || {
                std::hint::black_box(enc.embed(input).expect("embed text"));
            });
            println!("| {name} | tokenise + text tower + L2 | {batch} | {tps:.1} | {ms:.2} | {calls} |");
        }
    }
}
