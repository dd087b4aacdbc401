//! An in-process ONNX Runtime backend for `/upscale`: 2x super-resolution.
//!
//! [`OnnxUpscaler`] runs an ONNX graph that maps an RGB image `input` float32 `[1, 3, H, W]` to
//! `output` float32 `[1, 3, sH, sW]`, both with pixel values in `[0, 255]` (the output is
//! clipped and rounded here). `assets/upscale/convert.py` builds such a graph, 2x, from the
//! MIT-licensed UpscalerJS default model.
//!
//! ONNX Runtime itself is loaded at run time from a shared library: [`OnnxConfig::dylib_path`],
//! else the `ORT_DYLIB_PATH` environment variable; [`find_onnxruntime`] finds the one inside a
//! Python environment that has the `onnxruntime` package (1.22 or newer). Nothing is downloaded
//! or linked at build time. A missing or unusable library is a [`RunnerError::Unavailable`]
//! from [`OnnxUpscaler::load`], never a panic. The library is process-wide: the first one loaded
//! serves every upscaler in the process.
//!
//! Uploads are PNG, JPEG or WebP (alpha is dropped) of at most [`OnnxConfig::max_input_side`]
//! pixels a side; anything else is [`RunnerError::Rejected`] (415 for what cannot be decoded,
//! 413 for what is too large). Large images are upscaled in overlapping tiles, so memory stays
//! bounded and the result is the same as in one piece. Inference runs on tokio's blocking pool.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use image::{ImageFormat, ImageReader, Limits, RgbImage};
use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider as _};
use ort::session::builder::{AutoDevicePolicy, GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::value::TensorRef;
use weir_protocol::ai::AiRequest;

use crate::{BoxFuture, Health, ModelRunner, OutputMedia, RunnerError, RunnerInput, RunnerOutput};

/// The default for [`OnnxConfig::max_input_side`]: 2048 pixels (a 4096x4096 result).
pub const DEFAULT_MAX_INPUT_SIDE: u32 = 2048;
/// The default for [`OnnxConfig::tile`]: 256 input pixels a side.
pub const DEFAULT_TILE: u32 = 256;
/// Input pixels of context around each tile. The bundled RDN sees 10 pixels around each output
/// pixel, so with 16 the tiles join without seams.
const TILE_CONTEXT: u32 = 16;
/// The side of the warm-up image [`OnnxUpscaler::load`] runs to find the scale factor.
const PROBE_SIDE: u32 = 16;

/// Where the model and ONNX Runtime are, and how to run them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnnxConfig {
    /// The `.onnx` model file.
    pub model_path: PathBuf,
    /// The ONNX Runtime shared library (`libonnxruntime.so.1.x`); `None` reads `ORT_DYLIB_PATH`.
    pub dylib_path: Option<PathBuf>,
    /// Use the CUDA execution provider when this ONNX Runtime build has it and it starts;
    /// otherwise CPU, with a warning saying why.
    pub cuda: bool,
    /// Threads per inference (ONNX Runtime's intra-op pool); `None` uses one per core.
    pub threads: Option<usize>,
    /// The largest accepted width and height, in input pixels.
    pub max_input_side: u32,
    /// Upscale in tiles of this many input pixels a side (plus context); 0 runs whole images.
    pub tile: u32,
}

impl OnnxConfig {
    /// A CPU configuration for `model_path` with the library from `ORT_DYLIB_PATH` and the
    /// default limits.
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        OnnxConfig {
            model_path: model_path.into(),
            dylib_path: None,
            cuda: false,
            threads: None,
            max_input_side: DEFAULT_MAX_INPUT_SIDE,
            tile: DEFAULT_TILE,
        }
    }
}

/// Which ONNX Runtime execution provider a session runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// The CPU provider.
    Cpu,
    /// The CUDA provider (nodes it lacks still run on CPU).
    Cuda,
}

impl Provider {
    /// ONNX Runtime's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Cpu => "CPUExecutionProvider",
            Provider::Cuda => "CUDAExecutionProvider",
        }
    }
}

/// The ONNX Runtime library inside a Python environment (a venv or prefix) that has the
/// `onnxruntime` package: `<venv>/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*`
/// (`.dylib` on macOS, `Lib/site-packages/.../onnxruntime.dll` on Windows). With several, the
/// highest Python version wins.
pub fn find_onnxruntime(venv: &Path) -> Option<PathBuf> {
    let mut site_packages = vec![venv.join("Lib").join("site-packages")];
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(venv.join("lib"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path())
        .collect();
    pythons.sort_by_key(|p| python_minor(p));
    site_packages.extend(pythons.into_iter().rev().map(|p| p.join("site-packages")));
    site_packages.iter().find_map(|sp| {
        let capi = sp.join("onnxruntime").join("capi");
        let mut libs: Vec<PathBuf> = std::fs::read_dir(&capi)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && is_onnxruntime_library(p))
            .collect();
        libs.sort();
        libs.pop()
    })
}

fn python_minor(dir: &Path) -> u32 {
    dir.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("python3."))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn is_onnxruntime_library(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.starts_with("libonnxruntime.so")
        || (name.starts_with("libonnxruntime.") && name.ends_with(".dylib"))
        || name == "onnxruntime.dll"
}

/// The library to load: the configured one, else `ORT_DYLIB_PATH`.
fn dylib_path(config: &OnnxConfig) -> Result<PathBuf, RunnerError> {
    let path = match &config.dylib_path {
        Some(path) => path.clone(),
        None => match std::env::var_os("ORT_DYLIB_PATH") {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => {
                return Err(RunnerError::Unavailable(
                    "no onnxruntime library configured; set ORT_DYLIB_PATH or the runner's \
                     dylib path to libonnxruntime from the `onnxruntime` Python package \
                     (onnxruntime/capi/libonnxruntime.so.1.x, 1.22 or newer)"
                        .to_owned(),
                ))
            }
        },
    };
    if !path.is_file() {
        return Err(RunnerError::Unavailable(format!(
            "onnxruntime library not found at {}; set ORT_DYLIB_PATH or the runner's dylib path \
             to libonnxruntime from the `onnxruntime` Python package (1.22 or newer)",
            path.display()
        )));
    }
    Ok(std::path::absolute(&path).unwrap_or(path))
}

/// The process-wide ONNX Runtime environment and the library it came from.
static ENVIRONMENT: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f`, turning a panic inside ONNX Runtime's bindings into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, RunnerError>) -> Result<T, RunnerError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("panic");
        Err(RunnerError::Unavailable(format!("{what}: {why}")))
    })
}

fn environment(dylib: &Path) -> Result<Environment, RunnerError> {
    let mut current = lock(&ENVIRONMENT);
    if let Some((loaded, env)) = current.as_ref() {
        if loaded != dylib {
            tracing::warn!(
                loaded = %loaded.display(),
                requested = %dylib.display(),
                "onnxruntime is already loaded in this process; using the loaded library"
            );
        }
        return Ok(env.clone());
    }
    let env = guarded("loading onnxruntime", || {
        let builder = ort::init_from(dylib).map_err(|e| {
            RunnerError::Unavailable(format!(
                "cannot load onnxruntime from {}: {e}",
                dylib.display()
            ))
        })?;
        builder
            .with_name("weir")
            .build()
            .map_err(|e| RunnerError::Unavailable(format!("cannot start onnxruntime: {e}")))
    })?;
    tracing::info!(library = %dylib.display(), "onnxruntime loaded");
    *current = Some((dylib.to_path_buf(), env.clone()));
    Ok(env)
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> RunnerError {
    RunnerError::Unavailable(format!("{what}: {e}"))
}

fn session_builder(
    env: &Environment,
    config: &OnnxConfig,
    provider: Provider,
) -> Result<SessionBuilder, RunnerError> {
    let what = "configuring the onnxruntime session";
    let mut builder = Session::builder(env)
        .map_err(|e| unavailable(what, e))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| unavailable(what, e))?;
    if let Some(threads) = config.threads {
        builder = builder
            .with_intra_threads(threads)
            .map_err(|e| unavailable(what, e))?;
    }
    builder = match provider {
        Provider::Cpu => builder.with_auto_device(AutoDevicePolicy::PreferCPU),
        Provider::Cuda => {
            builder.with_execution_providers([ep::CUDA::default().build().error_on_failure()])
        }
    }
    .map_err(|e| unavailable(&format!("enabling {}", provider.name()), e))?;
    Ok(builder)
}

/// The model's loaded session and what is known about it.
struct Model {
    session: Mutex<Session>,
    input: String,
    output: String,
    scale: u32,
    provider: Provider,
    max_input_side: u32,
    tile: u32,
}

impl Model {
    fn open(
        env: &Environment,
        config: &OnnxConfig,
        provider: Provider,
    ) -> Result<Self, RunnerError> {
        let session = session_builder(env, config, provider)?
            .commit_from_file(&config.model_path)
            .map_err(|e| {
                unavailable(
                    &format!("cannot load the model {}", config.model_path.display()),
                    e,
                )
            })?;
        let (Some(input), Some(output)) = (session.inputs().first(), session.outputs().first())
        else {
            return Err(RunnerError::Unavailable(format!(
                "the model {} has no input or no output",
                config.model_path.display()
            )));
        };
        let mut model = Model {
            input: input.name().to_owned(),
            output: output.name().to_owned(),
            session: Mutex::new(session),
            scale: 1,
            provider,
            max_input_side: config.max_input_side,
            tile: config.tile,
        };
        // Run once: this finds the scale factor and surfaces a provider that cannot run.
        let probe = RgbImage::new(PROBE_SIDE, PROBE_SIDE);
        let (w, h, _) = model.infer(&probe).map_err(|e| {
            RunnerError::Unavailable(format!(
                "the model {} does not run on {}: {e}",
                config.model_path.display(),
                provider.name()
            ))
        })?;
        if w != h || w % PROBE_SIDE != 0 || w == 0 {
            return Err(RunnerError::Unavailable(format!(
                "the model {} maps {PROBE_SIDE}x{PROBE_SIDE} to {w}x{h}, not a whole-number upscale",
                config.model_path.display()
            )));
        }
        model.scale = w / PROBE_SIDE;
        Ok(model)
    }

    /// One forward pass: RGB in, (width, height, CHW floats in [0, 255]) out.
    fn infer(&self, img: &RgbImage) -> Result<(u32, u32, Vec<f32>), RunnerError> {
        let (w, h) = img.dimensions();
        let plane = (w as usize) * (h as usize);
        let mut chw = vec![0f32; plane * 3];
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                chw[c * plane + i] = f32::from(px[c]);
            }
        }
        let failed = |e: &dyn std::fmt::Display| RunnerError::Failed {
            status: 500,
            message: format!("inference failed: {e}"),
        };
        let tensor = TensorRef::from_array_view(([1usize, 3, h as usize, w as usize], &chw[..]))
            .map_err(|e| failed(&e))?;
        let mut session = lock(&self.session);
        let outputs = session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(|e| failed(&e))?;
        let Some(value) = outputs.get(self.output.as_str()) else {
            return Err(failed(&"the model returned no output"));
        };
        let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| failed(&e))?;
        match shape[..] {
            [1, 3, oh, ow]
                if oh > 0 && ow > 0 && data.len() == 3 * (oh as usize) * (ow as usize) =>
            {
                Ok((ow as u32, oh as u32, data.to_vec()))
            }
            _ => Err(failed(&format!("unexpected output shape {:?}", &shape[..]))),
        }
    }

    /// Upscale `img` by `self.scale`, tile by tile.
    fn upscale(&self, img: &RgbImage) -> Result<RgbImage, RunnerError> {
        let (w, h) = img.dimensions();
        let s = self.scale;
        let tile = if self.tile == 0 { w.max(h) } else { self.tile };
        let ctx = if tile >= w.max(h) { 0 } else { TILE_CONTEXT };
        let mut out = RgbImage::new(w * s, h * s);
        for y0 in (0..h).step_by(tile as usize) {
            for x0 in (0..w).step_by(tile as usize) {
                let (x1, y1) = ((x0 + tile).min(w), (y0 + tile).min(h));
                let (cx0, cy0) = (x0.saturating_sub(ctx), y0.saturating_sub(ctx));
                let (cx1, cy1) = ((x1 + ctx).min(w), (y1 + ctx).min(h));
                let crop =
                    image::imageops::crop_imm(img, cx0, cy0, cx1 - cx0, cy1 - cy0).to_image();
                let (ow, oh, chw) = self.infer(&crop)?;
                if (ow, oh) != (crop.width() * s, crop.height() * s) {
                    return Err(RunnerError::Failed {
                        status: 500,
                        message: format!(
                            "the model mapped {}x{} to {ow}x{oh}, expected a {s}x upscale",
                            crop.width(),
                            crop.height()
                        ),
                    });
                }
                let plane = (ow as usize) * (oh as usize);
                for y in (y0 * s)..(y1 * s) {
                    let ty = (y - cy0 * s) as usize;
                    for x in (x0 * s)..(x1 * s) {
                        let i = ty * ow as usize + (x - cx0 * s) as usize;
                        let px = [0, 1, 2].map(|c| to_u8(chw[c * plane + i]));
                        out.put_pixel(x, y, image::Rgb(px));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Decode, check, upscale and encode one upload.
    fn process(&self, data: &[u8]) -> Result<Vec<u8>, RunnerError> {
        let img = decode(data, self.max_input_side)?;
        let out = self.upscale(&img)?;
        let mut png = Vec::new();
        out.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .map_err(|e| RunnerError::Failed {
                status: 500,
                message: format!("encoding the PNG failed: {e}"),
            })?;
        Ok(png)
    }
}

/// Clip to [0, 255] and round.
fn to_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

fn unsupported_media(message: String) -> RunnerError {
    RunnerError::Rejected {
        status: 415,
        message,
    }
}

/// Decode a PNG, JPEG or WebP upload to RGB (alpha dropped), refusing images over `max_side`.
fn decode(data: &[u8], max_side: u32) -> Result<RgbImage, RunnerError> {
    let reader = || {
        ImageReader::new(Cursor::new(data))
            .with_guessed_format()
            .map_err(|e| unsupported_media(format!("cannot read the image: {e}")))
    };
    match reader()?.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP) => {}
        Some(other) => {
            return Err(unsupported_media(format!(
                "{} images are not supported; send PNG, JPEG or WebP",
                other.extensions_str().first().copied().unwrap_or("these")
            )))
        }
        None => {
            return Err(unsupported_media(
                "the upload is not a recognised image; send PNG, JPEG or WebP".to_owned(),
            ))
        }
    }
    let (w, h) = reader()?
        .into_dimensions()
        .map_err(|e| unsupported_media(format!("cannot decode the image: {e}")))?;
    if w > max_side || h > max_side {
        return Err(RunnerError::Rejected {
            status: 413,
            message: format!("the image is {w}x{h}; the largest accepted is {max_side}x{max_side}"),
        });
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    let mut reader = reader()?;
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| unsupported_media(format!("cannot decode the image: {e}")))?;
    Ok(img.to_rgb8())
}

/// The ONNX super-resolution runner for `/upscale`.
///
/// Cheap to clone; clones share one session. Inference on one session is serialized (each pass
/// already uses [`OnnxConfig::threads`] cores); bound concurrent jobs with [`crate::capacity`].
#[derive(Clone)]
pub struct OnnxUpscaler {
    model: Arc<Model>,
}

impl std::fmt::Debug for OnnxUpscaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxUpscaler")
            .field("scale", &self.model.scale)
            .field("provider", &self.model.provider)
            .finish_non_exhaustive()
    }
}

impl OnnxUpscaler {
    /// Load ONNX Runtime and the model, and run it once.
    ///
    /// With [`OnnxConfig::cuda`], a CUDA provider that this ONNX Runtime lacks or that fails to
    /// start falls back to CPU with a warning; [`OnnxUpscaler::provider`] says which one runs.
    pub fn load(config: OnnxConfig) -> Result<Self, RunnerError> {
        if !config.model_path.is_file() {
            return Err(RunnerError::Unavailable(format!(
                "ONNX model not found at {}",
                config.model_path.display()
            )));
        }
        let dylib = dylib_path(&config)?;
        let env = environment(&dylib)?;
        let model = guarded("starting the onnxruntime session", || {
            if config.cuda {
                match ep::CUDA::is_available() {
                    Ok(true) => match Model::open(&env, &config, Provider::Cuda) {
                        Ok(model) => return Ok(model),
                        Err(e) => {
                            tracing::warn!(error = %e, "CUDA requested but it cannot run; using CPU")
                        }
                    },
                    Ok(false) => tracing::warn!(
                        library = %dylib.display(),
                        "CUDA requested but this onnxruntime build has no CUDA execution provider; using CPU"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot list onnxruntime's execution providers; using CPU")
                    }
                }
            }
            Model::open(&env, &config, Provider::Cpu)
        })?;
        tracing::info!(
            model = %config.model_path.display(),
            provider = model.provider.name(),
            scale = model.scale,
            "ONNX upscaler ready"
        );
        Ok(OnnxUpscaler {
            model: Arc::new(model),
        })
    }

    /// The execution provider the session runs on.
    pub fn provider(&self) -> Provider {
        self.model.provider
    }

    /// The upscale factor (2 for the bundled model).
    pub fn scale(&self) -> u32 {
        self.model.scale
    }

    /// Upscale an RGB image in the calling thread (no size limit; it blocks for the whole
    /// inference). [`ModelRunner::run`] is the checked, non-blocking way in.
    pub fn upscale_rgb(&self, img: &RgbImage) -> Result<RgbImage, RunnerError> {
        if img.width() == 0 || img.height() == 0 {
            return Err(RunnerError::Rejected {
                status: 400,
                message: "the image is empty".to_owned(),
            });
        }
        self.model.upscale(img)
    }
}

impl ModelRunner for OnnxUpscaler {
    fn run(&self, input: RunnerInput) -> BoxFuture<'_, Result<RunnerOutput, RunnerError>> {
        let model = Arc::clone(&self.model);
        Box::pin(async move {
            let seed = match &input.request {
                AiRequest::Upscale(r) => r.seed.unwrap_or(0),
                other => {
                    return Err(RunnerError::Unsupported(format!(
                        "the ONNX upscaler serves only upscale, not {}",
                        other.capability()
                    )))
                }
            };
            let Some(file) = input.files.into_iter().find(|f| f.field == "image") else {
                return Err(RunnerError::Rejected {
                    status: 400,
                    message: "the `image` file is missing".to_owned(),
                });
            };
            let png = tokio::task::spawn_blocking(move || model.process(&file.data))
                .await
                .map_err(|e| RunnerError::Failed {
                    status: 500,
                    message: format!("the upscale task failed: {e}"),
                })??;
            Ok(RunnerOutput::Media(vec![OutputMedia {
                content_type: "image/png".to_owned(),
                data: png,
                seed,
                nsfw: false,
            }]))
        })
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async { Health::Ready })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_library_in_a_venv() {
        let dir = std::env::temp_dir().join(format!("weir-onnx-find-{}", std::process::id()));
        let capi = dir.join("lib/python3.12/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        std::fs::write(capi.join("libonnxruntime_providers_shared.so"), b"").unwrap();
        assert_eq!(find_onnxruntime(&dir), None);
        std::fs::write(capi.join("libonnxruntime.so.1.31.1"), b"").unwrap();
        assert_eq!(
            find_onnxruntime(&dir),
            Some(capi.join("libonnxruntime.so.1.31.1"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(find_onnxruntime(&dir), None);
    }

    #[test]
    fn a_missing_library_is_unavailable_not_a_panic() {
        let mut config = OnnxConfig::new(std::env::current_exe().unwrap());
        config.dylib_path = Some("/nonexistent/libonnxruntime.so.1.31.1".into());
        let err = OnnxUpscaler::load(config).unwrap_err();
        let RunnerError::Unavailable(message) = err else {
            panic!("expected Unavailable, got {err:?}")
        };
        assert!(message.contains("not found at /nonexistent/"), "{message}");
        assert!(message.contains("ORT_DYLIB_PATH"), "{message}");
    }

    #[test]
    fn a_file_that_is_not_onnxruntime_is_unavailable() {
        let fake = std::env::temp_dir().join(format!("weir-onnx-fake-{}.so", std::process::id()));
        std::fs::write(&fake, b"not a shared library").unwrap();
        let mut config = OnnxConfig::new(std::env::current_exe().unwrap());
        config.dylib_path = Some(fake.clone());
        let err = OnnxUpscaler::load(config).unwrap_err();
        std::fs::remove_file(&fake).unwrap();
        assert!(
            matches!(&err, RunnerError::Unavailable(m) if m.contains("cannot load onnxruntime")),
            "{err:?}"
        );
    }

    #[test]
    fn a_missing_model_is_unavailable() {
        let err = OnnxUpscaler::load(OnnxConfig::new("/nonexistent/model.onnx")).unwrap_err();
        assert!(
            matches!(err, RunnerError::Unavailable(m) if m.contains("/nonexistent/model.onnx"))
        );
    }

    #[test]
    fn uploads_are_checked_before_inference() {
        let err = decode(b"GIF89a\x01\x00\x01\x00", 64).unwrap_err();
        assert!(
            matches!(err, RunnerError::Rejected { status: 415, ref message } if message.contains("gif")),
            "{err:?}"
        );
        let err = decode(b"not an image", 64).unwrap_err();
        assert!(
            matches!(err, RunnerError::Rejected { status: 415, .. }),
            "{err:?}"
        );
        let mut png = Vec::new();
        RgbImage::new(65, 10)
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        let err = decode(&png, 64).unwrap_err();
        assert!(
            matches!(err, RunnerError::Rejected { status: 413, ref message } if message.contains("65x10")),
            "{err:?}"
        );
        assert_eq!(decode(&png, 65).unwrap().dimensions(), (65, 10));
        let truncated = &png[..png.len() / 2];
        assert!(matches!(
            decode(truncated, 65),
            Err(RunnerError::Rejected { status: 415, .. })
        ));
    }

    #[test]
    fn output_is_clipped_and_rounded() {
        assert_eq!(
            [-3.0, 0.4, 0.5, 254.6, 300.0, f32::NAN].map(to_u8),
            [0, 0, 1, 255, 255, 0]
        );
    }
}
