//! Image-embedding throughput of a bundle through graftdb's own ONNX Runtime path
//! (`ImageEncoder::embed_pixels`: host pixels in, host embeddings and patch vectors out),
//! on CPU or CUDA. Used for the GPU comparison in `bench-results/embed-gpu.md`
//! (`tools/bench/gpu_bench.sh`); `benches/embed.rs` covers the CPU numbers.
//!
//! ```text
//! GRAFTDB_ORT_LIB=/path/libonnxruntime.so.1.31.1 \
//!   cargo run --release --example embed_throughput -- data/bundles/vitb16-random cuda 64,256 10
//! ```
//!
//! Arguments: bundle folder, device (`cpu`, `cuda`, `auto`), batch sizes (comma-separated),
//! seconds per batch size (after 3 warm-up runs). Pixels are seeded noise in the model's
//! input range, already preprocessed: this measures the model run, the host↔device
//! copies ONNX Runtime makes, and graftdb's output handling (copy-out, L2 normalisation).
//! Prints one markdown row per batch size.
//!
//! A fifth argument picks a variant, to find where time goes:
//! - `full` (default): normalised embedding + patch grids, as `embed` returns them;
//! - `full-reuse`: the same through `embed_pixels_into`, refilling one `ImageEmbeddings`
//!   (no allocation after the first run);
//! - `full-notf32`: `full` with `SessionOptions::tf32 = Some(false)` (exact f32 products);
//! - `raw-patches`: the same outputs, not normalised (`normalize: false`);
//! - `embedding-only`: `patches: false` (the patch output is neither copied nor normalised);
//! - `ort-default`, `ort-tf32`, `ort-notf32`: `ort` alone, no graftdb code: one session with
//!   the CUDA EP (ORT's default TF32 setting, on, off), host input, both outputs read in place;
//! - `host-only`: no model and no ONNX Runtime: the output handling alone on a synthetic
//!   `[N, 196, 512]` + `[N, 512]` output, before (graftdb up to a999d8f: copy the whole
//!   output, copy each image's grid, normalise in a third pass) and after (one normalising
//!   copy, `ImageEmbeddings::fill_from_outputs`; fresh and reused). The device and bundle
//!   arguments are ignored.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use graftdb::embed::runtime::{find_library, Device, SessionOptions};
use graftdb::embed::{Bundle, EncoderOptions, ImageEmbeddings, ImageEncoder, PatchGrid};
use ndarray::Array4;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bundle_dir = args.first().map_or("data/bundles/vitb16-random", String::as_str);
    let device = match args.get(1).map_or("auto", String::as_str) {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda,
        "auto" => Device::Auto,
        other => return Err(format!("device {other}: expected cpu, cuda or auto").into()),
    };
    let batches: Vec<usize> = args.get(2).map_or("1,8", String::as_str).split(',').map(str::parse).collect::<Result<_, _>>()?;
    let seconds: f64 = args.get(3).map_or(Ok(5.0), |s| s.parse())?;
    let variant = args.get(4).map_or("full", String::as_str);
    if variant.starts_with("ort-") {
        return raw_ort(bundle_dir, variant, &batches, seconds);
    }
    if variant == "host-only" {
        host_only(&batches, seconds);
        return Ok(());
    }

    let bundle = Bundle::open(bundle_dir)?;
    let m = bundle.manifest();
    let s = m.image_size as usize;
    let max_batch = batches.iter().copied().max().unwrap_or(1);
    let opened = Instant::now();
    let options = EncoderOptions {
        session: SessionOptions { device, threads: None, tf32: (variant == "full-notf32").then_some(false) },
        batch_size: max_batch,
        normalize: variant != "raw-patches",
        patches: variant != "embedding-only",
        ..EncoderOptions::default()
    };
    let encoder = ImageEncoder::open(&bundle, &options)?;
    let open_s = opened.elapsed().as_secs_f64();
    println!("library: {}", find_library()?.display());
    println!("bundle: {} ({}), provider: {}, session opened in {open_s:.1} s", m.name, m.arch, encoder.provider());
    println!();
    println!("| bundle | provider | batch | outputs | images/s | ms/batch | runs |");
    println!("|---|---|---:|---|---:|---:|---:|");

    // Seeded noise in roughly the normalised range (xorshift, no extra dependency).
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
    };
    for &n in &batches {
        let pixels = Array4::from_shape_simple_fn((n, 3, s, s), &mut next);
        let reuse = variant == "full-reuse";
        let mut kept = ImageEmbeddings { embeddings: Vec::new(), patches: None };
        let mut once = || -> graftdb::Result<usize> {
            if reuse {
                encoder.embed_pixels_into(pixels.view(), &mut kept)?;
                Ok(kept.embeddings.len())
            } else {
                let out = encoder.embed_pixels(pixels.view())?;
                assert!(out.patches.as_ref().is_none_or(|p| p.len() == n));
                Ok(out.embeddings.len())
            }
        };
        let started = Instant::now();
        let warm_runs = 3;
        for _ in 0..warm_runs {
            assert_eq!(once()?, n);
        }
        let warm_s = started.elapsed().as_secs_f64();
        let budget = Duration::from_secs_f64(seconds);
        let t0 = Instant::now();
        let wall0 = unix_now();
        let mut runs = 0_u32;
        while runs < 3 || t0.elapsed() < budget {
            assert_eq!(once()?, n);
            runs += 1;
        }
        let dt = t0.elapsed().as_secs_f64();
        // For cutting an nvidia-smi log per run (tools/bench/smi_summary.py).
        eprintln!("WINDOW rust-{variant}-b{n} {wall0:.3} {:.3}", unix_now());
        println!(
            "| {} | {} | {n} | graftdb `{variant}` | {:.1} | {:.2} | {runs} |",
            m.name,
            encoder.provider(),
            f64::from(runs) * n as f64 / dt,
            dt * 1000.0 / f64::from(runs)
        );
        eprintln!("batch {n}: {warm_runs} warm-up runs took {warm_s:.2} s");
    }
    Ok(())
}

/// `ort` alone: what the runtime costs without graftdb's output handling.
fn raw_ort(bundle_dir: &str, variant: &str, batches: &[usize], seconds: f64) -> Result<(), Box<dyn std::error::Error>> {
    let lib = find_library()?;
    let env = ort::init_from(&lib)?.with_name("raw").build()?;
    let mut cuda = ort::ep::CUDA::default();
    match variant {
        "ort-tf32" => cuda = cuda.with_tf32(true),
        "ort-notf32" => cuda = cuda.with_tf32(false),
        _ => {}
    }
    let mut session = ort::session::Session::builder(&env)?
        .with_execution_providers([cuda.build().error_on_failure()])?
        .commit_from_file(std::path::Path::new(bundle_dir).join("image.onnx"))?;
    println!("library: {}, ort alone, variant {variant}", lib.display());
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for &n in batches {
        let pixels = Array4::from_shape_fn((n, 3, 224, 224), |_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        });
        let mut once = || -> Result<f32, Box<dyn std::error::Error>> {
            let input = ort::value::TensorRef::from_array_view(pixels.view().into_dyn())?;
            let out = session.run(ort::inputs!["pixels" => input])?;
            let (_, e) = out["embedding"].try_extract_tensor::<f32>()?;
            let (_, p) = out["patches"].try_extract_tensor::<f32>()?;
            Ok(e[0] + p[p.len() - 1])
        };
        for _ in 0..3 {
            once()?;
        }
        let t0 = Instant::now();
        let wall0 = unix_now();
        let mut runs = 0_u32;
        while runs < 3 || t0.elapsed().as_secs_f64() < seconds {
            once()?;
            runs += 1;
        }
        let dt = t0.elapsed().as_secs_f64();
        eprintln!("WINDOW rust-{variant}-b{n} {wall0:.3} {:.3}", unix_now());
        println!(
            "| ort alone | CUDA EP | {n} | `{variant}`, outputs read in place | {:.1} | {:.2} | {runs} |",
            f64::from(runs) * n as f64 / dt,
            dt * 1000.0 / f64::from(runs)
        );
    }
    Ok(())
}

/// Output handling alone, on a synthetic output standing in for ONNX Runtime's buffers.
fn host_only(batches: &[usize], seconds: f64) {
    const DIM: usize = 512;
    const GRID: [usize; 2] = [14, 14];
    let g = GRID[0] * GRID[1];
    println!("| batch | output handling | ms/batch | runs |");
    println!("|---:|---|---:|---:|");
    for &n in batches {
        let emb: Vec<f32> = (0..n * DIM).map(|i| ((i % 977) as f32 * 0.013).sin()).collect();
        let pat: Vec<f32> = (0..n * g * DIM).map(|i| ((i % 1931) as f32 * 0.007).cos()).collect();
        let time = |label: &str, f: &mut dyn FnMut() -> f32| {
            let mut sink = 0.0;
            for _ in 0..3 {
                sink += f();
            }
            let t0 = Instant::now();
            let mut runs = 0_u32;
            while runs < 5 || t0.elapsed().as_secs_f64() < seconds {
                sink += f();
                runs += 1;
            }
            let ms = t0.elapsed().as_secs_f64() * 1000.0 / f64::from(runs);
            println!("| {n} | {label} | {ms:.2} | {runs} |");
            std::hint::black_box(sink);
        };
        time("before: 2 copies + normalise pass (a999d8f)", &mut || {
            let (edata, pdata) = (emb.to_vec(), pat.to_vec());
            let mut e: Vec<Vec<f32>> = edata.chunks_exact(DIM).map(<[f32]>::to_vec).collect();
            e.iter_mut().for_each(|v| l2_normalize(v));
            let mut grids: Vec<PatchGrid> = pdata
                .chunks_exact(g * DIM)
                .map(|d| PatchGrid { rows: GRID[0], cols: GRID[1], dim: DIM, data: d.to_vec() })
                .collect();
            for grid in &mut grids {
                grid.data.chunks_exact_mut(DIM).for_each(l2_normalize);
            }
            e[0][0] + grids[n - 1].data[g * DIM - 1]
        });
        time("after: 1 normalising copy, fresh (`embed_pixels`)", &mut || {
            let mut out = ImageEmbeddings { embeddings: Vec::new(), patches: None };
            out.fill_from_outputs(&emb, Some(&pat), n, DIM, GRID, true);
            out.embeddings[0][0] + out.patches.as_ref().map_or(0.0, |p| p[n - 1].data[g * DIM - 1])
        });
        let mut kept = ImageEmbeddings { embeddings: Vec::new(), patches: None };
        time("after: 1 normalising copy, reused (`embed_pixels_into`)", &mut || {
            kept.fill_from_outputs(&emb, Some(&pat), n, DIM, GRID, true);
            kept.embeddings[0][0] + kept.patches.as_ref().map_or(0.0, |p| p[n - 1].data[g * DIM - 1])
        });
    }
}

fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
