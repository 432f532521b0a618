//! Tile pixels as PNG for `GET /tiles/{id}.png`. Raster windows are read through one open
//! [`WindowReader`] per file, kept for the most recently used [`OPEN_FILES`] files, so a
//! file is opened and its colour stretch computed once, not once per tile (the map's
//! basemap asks for hundreds of tiles of the same scene).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::ingest::raster::WindowReader;
use crate::{Error, Result};

/// Raster files kept open.
pub const OPEN_FILES: usize = 16;

type Reader = Arc<Mutex<WindowReader>>;

/// Open raster readers, most recently used last.
#[derive(Default)]
pub struct Pixels {
    open: Mutex<Vec<(PathBuf, Reader)>>,
}

impl Pixels {
    fn reader(&self, path: &Path) -> Result<Reader> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = open.iter().position(|(p, _)| p == path) {
            let entry = open.remove(i);
            let r = entry.1.clone();
            open.push(entry);
            return Ok(r);
        }
        drop(open);
        // Opening reads no pixels; do it outside the lock.
        let r = Arc::new(Mutex::new(WindowReader::open(path)?));
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.len() >= OPEN_FILES {
            open.remove(0);
        }
        open.push((path.to_path_buf(), r.clone()));
        Ok(r)
    }

    /// The window `[x, y, w, h]` of the raster at `path` as PNG bytes (RGB, stretched as
    /// [`crate::ingest::raster::read_window_rgb`] does).
    pub fn window_png(&self, path: &Path, window: [u32; 4]) -> Result<Vec<u8>> {
        let reader = self.reader(path)?;
        let img = reader.lock().unwrap_or_else(PoisonError::into_inner).read(window)?;
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).map_err(|e| Error::invalid(path.display().to_string(), format!("PNG encoding: {e}")))?;
        Ok(out.into_inner())
    }
}
