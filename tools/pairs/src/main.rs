//! `graft-pairs`: build and inspect GRAFT pair datasets from a graftdb database.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "graft-pairs", about = "GRAFT satellite-tile / ground-photo pair datasets from a graftdb database")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Choose tiles by the GRAFT rule, cut them, and write WebDataset shards + manifest.json.
    Build {
        /// Database directory.
        db: PathBuf,
        /// Output directory (created).
        out: PathBuf,
        /// Ground sample distance in metres per pixel.
        #[arg(long, default_value_t = 10.0)]
        gsd: f64,
        /// Tile side in pixels.
        #[arg(long, default_value_t = 224)]
        tile_px: u32,
        /// Most photos per tile; the rest are dropped ("over the cap").
        #[arg(long, default_value_t = 25)]
        max_photos: usize,
        /// Fraction of tile blocks put in the test split.
        #[arg(long, default_value_t = 0.1)]
        test_fraction: f64,
        /// Tiles per split block.
        #[arg(long, default_value_t = 1000)]
        block: usize,
        /// Seed of the split.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Photo embedding space written to `<key>.npy`.
        #[arg(long)]
        space: Option<String>,
        /// Samples (tiles) per tar shard.
        #[arg(long, default_value_t = 1000)]
        shard_size: usize,
        /// GeoTIFF/COG to cut tiles from as well as the database's raster tiles (repeatable).
        #[arg(long = "raster", value_name = "FILE")]
        rasters: Vec<PathBuf>,
    },
    /// Counts, photos-per-tile histogram and a GeoJSON coverage map of a built dataset.
    Stats {
        /// Dataset directory (with manifest.json).
        out: PathBuf,
        /// Write the coverage GeoJSON here instead of inside the stdout report.
        #[arg(long)]
        geojson: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Build { db, out, gsd, tile_px, max_photos, test_fraction, block, seed, space, shard_size, rasters } => {
            anyhow::ensure!(gsd > 0.0 && gsd.is_finite(), "--gsd must be a positive number");
            anyhow::ensure!(tile_px >= 2, "--tile-px must be at least 2");
            anyhow::ensure!(max_photos >= 1, "--max-photos must be at least 1");
            anyhow::ensure!((0.0..=1.0).contains(&test_fraction), "--test-fraction must be in [0, 1]");
            anyhow::ensure!(block >= 1 && shard_size >= 1, "--block and --shard-size must be at least 1");
            let opts = graft_pairs::build::BuildOptions {
                gsd,
                tile_px,
                max_photos,
                test_fraction,
                block,
                seed,
                space,
                shard_size,
                rasters,
            };
            let manifest = graft_pairs::build::build(&db, &out, &opts)
                .with_context(|| format!("building pairs from {} into {}", db.display(), out.display()))?;
            eprintln!("{}", serde_json::to_string_pretty(&manifest)?);
            Ok(())
        }
        Cmd::Stats { out, geojson } => {
            let (mut report, coverage) = graft_pairs::stats::stats(&out)?;
            match geojson {
                Some(path) => {
                    std::fs::write(&path, serde_json::to_vec(&coverage)?)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                None => {
                    report["coverage"] = coverage;
                }
            }
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}
