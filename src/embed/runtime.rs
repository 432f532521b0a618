//! ONNX Runtime: finding and loading the shared library once per process, and
//! sessions on a chosen device.
//!
//! graftdb links ONNX Runtime dynamically (`ort`'s `load-dynamic`), so nothing is
//! downloaded at build time. The library is found, in order, at `GRAFTDB_ORT_LIB`, at
//! `ORT_DYLIB_PATH`, or inside a Python virtual environment named `.venv*` (the
//! `onnxruntime` or `onnxruntime-gpu` wheel that `tools/setup.sh` installs) in the
//! current directory, the executable's directory, or any of their ancestors.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::ep::ExecutionProvider as _;
use ort::session::Session;

use crate::{Error, Result};

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// CUDA when the loaded library has it and a GPU accepts the session, else CPU.
    #[default]
    Auto,
    /// CPU only.
    Cpu,
    /// CUDA or an error: needs the `onnxruntime-gpu` wheel and the CUDA libraries.
    Cuda,
}

/// The execution provider a session actually runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// `CPUExecutionProvider`.
    Cpu,
    /// `CUDAExecutionProvider` (nodes CUDA lacks still fall back to CPU inside ORT).
    Cuda,
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::Cpu => "CPUExecutionProvider",
            Provider::Cuda => "CUDAExecutionProvider",
        })
    }
}

/// How to open a model.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Where to run.
    pub device: Device,
    /// Threads for one operator (`intra_op`); `None` lets ONNX Runtime use every core.
    pub threads: Option<usize>,
    /// TF32 tensor-core maths for `f32` matrix products on the CUDA execution provider
    /// (`use_tf32`); ignored on CPU. `None` keeps ONNX Runtime's default, which is **on**
    /// in 1.31 (measured on an H100: a ViT-B/16 session with no setting runs at the speed
    /// of `Some(true)`, 2.4× faster than `Some(false)`; `bench-results/embed-gpu.md`).
    /// TF32 keeps `f32` range with a 10-bit mantissa in the products; `Some(false)` gives
    /// exact `f32` results at a fraction of the speed.
    pub tf32: Option<bool>,
}

/// The process-wide ONNX Runtime: which library was loaded. Created on first use by
/// [`Runtime::global`]; ONNX Runtime allows one per process.
pub struct Runtime {
    library: PathBuf,
    env: ort::environment::Environment,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime").field("library", &self.library).finish_non_exhaustive()
    }
}

const HOW_TO_FIX: &str = "run tools/setup.sh (it installs the onnxruntime==1.31.1 wheel into .venv) \
                          or set GRAFTDB_ORT_LIB to a libonnxruntime.so.1.31 or newer";

/// Finds the ONNX Runtime shared library without loading it (see the module docs for the
/// search order).
///
/// # Errors
/// `InvalidInput` naming the setting or the places searched, with how to fix it.
pub fn find_library() -> Result<PathBuf> {
    for var in ["GRAFTDB_ORT_LIB", "ORT_DYLIB_PATH"] {
        if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            let path = PathBuf::from(value);
            if path.is_file() {
                return Ok(path);
            }
            return Err(Error::invalid(var, format!("{} is not a file; {HOW_TO_FIX}", path.display())));
        }
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        roots.extend(dir.ancestors().map(Path::to_path_buf));
    }
    let mut seen = Vec::new();
    for root in roots {
        if seen.contains(&root) {
            continue;
        }
        if let Some(lib) = library_in_venvs(&root) {
            return Ok(lib);
        }
        seen.push(root);
    }
    Err(Error::invalid(
        "ONNX Runtime",
        format!("libonnxruntime not found in a .venv*/lib/python3*/site-packages/onnxruntime/capi/ under the current directory, the executable's directory or their parents; {HOW_TO_FIX}"),
    ))
}

fn sorted_dir(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    entries
}

/// `ROOT/.venv*/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*`,
/// `.venv` before `.venv-torch` and so on (sorted by name).
fn library_in_venvs(root: &Path) -> Option<PathBuf> {
    for venv in sorted_dir(root) {
        let is_venv = venv.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".venv"));
        if !is_venv {
            continue;
        }
        for py in sorted_dir(&venv.join("lib")) {
            let capi = py.join("site-packages/onnxruntime/capi");
            for file in sorted_dir(&capi) {
                let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let lib = name.starts_with("libonnxruntime.so.")
                    || (name.starts_with("libonnxruntime.") && name.ends_with(".dylib"))
                    || name == "onnxruntime.dll";
                if lib && file.is_file() {
                    return Some(file);
                }
            }
        }
    }
    None
}

static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();

impl Runtime {
    /// Loads ONNX Runtime on first call and returns it; later calls return the same one
    /// (or the same error). Never panics when the library is missing or too old.
    ///
    /// # Errors
    /// `InvalidInput` when the library cannot be found or loaded, saying how to fix it.
    pub fn global() -> Result<&'static Runtime> {
        RUNTIME
            .get_or_init(|| {
                let found = find_library().map_err(|e| e.to_string())?;
                let library = found.canonicalize().unwrap_or(found);
                let builder = ort::init_from(&library)
                    .map_err(|e| format!("loading {}: {e}; {HOW_TO_FIX}", library.display()))?;
                let env = builder
                    .with_name("graftdb")
                    .build()
                    .map_err(|e| format!("starting ONNX Runtime from {}: {e}", library.display()))?;
                Ok(Runtime { library, env })
            })
            .as_ref()
            .map_err(|detail| Error::invalid("ONNX Runtime", detail.clone()))
    }

    /// Path of the loaded `libonnxruntime`.
    #[must_use]
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// Whether the loaded library has the CUDA execution provider (a GPU may still be
    /// absent; [`OnnxModel::provider`] tells what a session really got).
    #[must_use]
    pub fn cuda_available(&self) -> bool {
        ort::ep::CUDA::is_available().unwrap_or(false)
    }
}

/// Declared name, element type and shape of a model input or output; `-1` marks a
/// dimension the model leaves open (the batch, usually).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Input or output name.
    pub name: String,
    /// Element type as ONNX Runtime names it (`Float32`, `Int64`, ...), or `non-tensor`.
    pub dtype: String,
    /// Dimensions; `-1` for dynamic ones. Empty for non-tensors.
    pub shape: Vec<i64>,
}

/// One ONNX model loaded into an ONNX Runtime session.
///
/// Runs are serialised through a mutex (ONNX Runtime itself uses every core for one
/// run); share the model between threads freely.
pub struct OnnxModel {
    path: PathBuf,
    session: Mutex<Session>,
    provider: Provider,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
}

impl fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path)
            .field("provider", &self.provider)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish_non_exhaustive()
    }
}

fn outlet_info(o: &ort::value::Outlet) -> TensorInfo {
    let dtype = o.dtype();
    TensorInfo {
        name: o.name().to_string(),
        dtype: dtype.tensor_type().map_or_else(|| "non-tensor".to_string(), |t| format!("{t:?}")),
        shape: dtype.tensor_shape().map(|s| s.iter().copied().collect()).unwrap_or_default(),
    }
}

impl OnnxModel {
    /// Opens `path` on the device `options` asks for.
    ///
    /// # Errors
    /// `Io` when the file is missing; `InvalidInput` naming the file when ONNX Runtime
    /// rejects it or the device is unavailable (with [`Device::Cuda`]).
    pub fn load(path: impl AsRef<Path>, options: &SessionOptions) -> Result<Self> {
        let path = path.as_ref();
        if let Err(e) = std::fs::metadata(path) {
            return Err(Error::io(path, e));
        }
        let rt = Runtime::global()?;
        let at = path.display().to_string();
        let ort_err = |what: &str, e: &dyn fmt::Display| Error::invalid(&at, format!("ONNX Runtime {what}: {e}"));

        let want_cuda = match options.device {
            Device::Cpu => false,
            Device::Cuda => {
                if !rt.cuda_available() {
                    return Err(Error::invalid(
                        &at,
                        format!(
                            "CUDA requested but {} has no CUDA execution provider; install the onnxruntime-gpu==1.31.1 wheel \
                             (and CUDA 13 libraries on LD_LIBRARY_PATH) or use Device::Cpu",
                            rt.library.display()
                        ),
                    ));
                }
                true
            }
            Device::Auto => rt.cuda_available(),
        };

        let new_builder = || -> Result<ort::session::builder::SessionBuilder> {
            let mut b = Session::builder(&rt.env).map_err(|e| ort_err("session builder", &e))?;
            if let Some(n) = options.threads {
                b = b.with_intra_threads(n).map_err(|e| ort_err("threads", &e))?;
            }
            Ok(b)
        };

        let mut provider = Provider::Cpu;
        let mut builder = new_builder()?;
        if want_cuda {
            let mut cuda = ort::ep::CUDA::default();
            if let Some(on) = options.tf32 {
                cuda = cuda.with_tf32(on);
            }
            let cuda = cuda.build().error_on_failure();
            match builder.with_execution_providers([cuda]) {
                Ok(b) => {
                    builder = b;
                    provider = Provider::Cuda;
                }
                Err(e) if options.device == Device::Cuda => return Err(ort_err("CUDA", &e)),
                Err(_) => builder = new_builder()?,
            }
        }
        let session = match builder.commit_from_file(path) {
            Ok(s) => s,
            Err(e) if provider == Provider::Cuda && options.device == Device::Auto => {
                // CUDA registered but the session could not be placed (no GPU, driver):
                // fall back to CPU as `Auto` promises.
                let _ = e;
                provider = Provider::Cpu;
                new_builder()?.commit_from_file(path).map_err(|e| ort_err("load", &e))?
            }
            Err(e) => return Err(ort_err("load", &e)),
        };
        let inputs = session.inputs().iter().map(outlet_info).collect();
        let outputs = session.outputs().iter().map(outlet_info).collect();
        Ok(Self { path: path.to_path_buf(), session: Mutex::new(session), provider, inputs, outputs })
    }

    /// The model file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The execution provider the session was created on.
    #[must_use]
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Declared inputs.
    #[must_use]
    pub fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }

    /// Declared outputs.
    #[must_use]
    pub fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }

    /// Runs the model on one input tensor and hands the named outputs, in order, to
    /// `read` as views of ONNX Runtime's own output buffers (no copy); whatever `read`
    /// returns is the result. The session stays locked while `read` runs.
    ///
    /// # Errors
    /// `InvalidInput` naming the model file when ONNX Runtime fails or an output is
    /// missing or not `f32`; errors from `read`.
    pub(crate) fn run_with<T, R>(
        &self,
        input: &str,
        tensor: ndarray::ArrayViewD<'_, T>,
        outputs: &[&str],
        read: impl FnOnce(&[OutputView<'_>]) -> Result<R>,
    ) -> Result<R>
    where
        T: ort::value::PrimitiveTensorElementType + fmt::Debug + Clone + 'static,
    {
        let at = || self.path.display().to_string();
        let value = ort::value::TensorRef::from_array_view(tensor)
            .map_err(|e| Error::invalid(at(), format!("input tensor: {e}")))?;
        let mut session = self.session.lock().map_err(|_| Error::invalid(at(), "session poisoned by an earlier panic"))?;
        let result = session
            .run(ort::inputs![input => value])
            .map_err(|e| Error::invalid(at(), format!("ONNX Runtime run: {e}")))?;
        let mut views = Vec::with_capacity(outputs.len());
        for &name in outputs {
            let v = result
                .get(name)
                .ok_or_else(|| Error::invalid(at(), format!("model has no output '{name}'")))?;
            let (shape, data) = v
                .try_extract_tensor::<f32>()
                .map_err(|e| Error::invalid(at(), format!("output '{name}': {e}")))?;
            let shape = shape.iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect();
            views.push(OutputView { shape, data });
        }
        read(&views)
    }
}

/// One `f32` output of a run, borrowed from ONNX Runtime's buffer (see
/// [`OnnxModel::run_with`]).
#[derive(Debug)]
pub(crate) struct OutputView<'a> {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub data: &'a [f32],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn venv_search_finds_a_library_in_a_fake_venv() {
        let dir = tempfile::tempdir().unwrap();
        let capi = dir.path().join(".venv/lib/python3.11/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        assert_eq!(library_in_venvs(dir.path()), None);
        std::fs::write(capi.join("libonnxruntime.so.1.31.1"), b"").unwrap();
        assert_eq!(library_in_venvs(dir.path()), Some(capi.join("libonnxruntime.so.1.31.1")));
    }
}
