//! Typed errors of the core. Each variant has a stable code string that the napi binding puts on the
//! JS `Error` as `err.code`; callers match on the code, never on the message.

#[derive(Debug, thiserror::Error)]
pub enum MoeError {
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// A positional argument of a public call has the wrong type or lies outside its range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("shape mismatch: {0}")]
    ShapeMismatch(String),
    #[error("non-finite value: {0}")]
    NonFinite(String),
    #[error("token out of range: {0}")]
    TokenOutOfRange(String),
    #[error("corrupt checkpoint: {0}")]
    CheckpointCorrupt(String),
    /// A checkpoint folder or one of its files does not exist.
    #[error("missing checkpoint: {0}")]
    CheckpointMissing(String),
    /// A valid Hugging Face architecture, field or value that this model does not implement.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("i/o error: {0}")]
    Io(String),
    #[error("unknown parameter: {0}")]
    UnknownParameter(String),
    #[error("invalid state: {0}")]
    InvalidState(String),
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    #[error("no GPU: {0}")]
    NoDevice(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl MoeError {
    pub fn code(&self) -> &'static str {
        match self {
            MoeError::InvalidConfig(_) => "INVALID_CONFIG",
            MoeError::InvalidArgument(_) => "INVALID_ARGUMENT",
            MoeError::ShapeMismatch(_) => "SHAPE_MISMATCH",
            MoeError::NonFinite(_) => "NON_FINITE",
            MoeError::TokenOutOfRange(_) => "TOKEN_OUT_OF_RANGE",
            MoeError::CheckpointCorrupt(_) => "CHECKPOINT_CORRUPT",
            MoeError::CheckpointMissing(_) => "CHECKPOINT_MISSING",
            MoeError::Unsupported(_) => "UNSUPPORTED_MODEL",
            MoeError::Io(_) => "IO_ERROR",
            MoeError::UnknownParameter(_) => "UNKNOWN_PARAMETER",
            MoeError::InvalidState(_) => "INVALID_STATE",
            MoeError::DeviceLost(_) => "DEVICE_LOST",
            MoeError::OutOfMemory(_) => "OUT_OF_MEMORY",
            MoeError::NoDevice(_) => "NO_DEVICE",
            MoeError::Internal(_) => "INTERNAL",
        }
    }
}

pub type Result<T> = std::result::Result<T, MoeError>;

/// Fails with `SHAPE_MISMATCH` unless `len == expected`.
pub fn check_len(what: &str, len: usize, expected: usize) -> Result<()> {
    if len != expected {
        return Err(MoeError::ShapeMismatch(format!("{what}: expected {expected} values, got {len}")));
    }
    Ok(())
}

/// Fails with `NON_FINITE` if any value is NaN or infinite.
pub fn check_finite(what: &str, xs: &[f32]) -> Result<()> {
    match xs.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(MoeError::NonFinite(format!("{what}[{i}] = {}", xs[i]))),
        None => Ok(()),
    }
}

/// dst = src after checking that src has dst's length and only finite values: on error dst is
/// untouched.
pub fn set_checked(what: &str, dst: &mut [f32], src: &[f32]) -> Result<()> {
    check_len(what, src.len(), dst.len())?;
    check_finite(what, src)?;
    dst.copy_from_slice(src);
    Ok(())
}


/// Configures the named failpoints of the core (the `fail` crate) from `MOE_FAILPOINTS`, once per
/// process: `name=action;name=action`, actions as in `fail::cfg` (e.g. `layer.forward=panic(boom)`).
/// Tests use it to make a real call fail in a chosen way; unset, every failpoint is off.
pub fn failpoints_from_env() -> Result<()> {
    static CONFIGURED: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    let r = CONFIGURED.get_or_init(|| {
        let spec = std::env::var("MOE_FAILPOINTS").unwrap_or_default();
        for entry in spec.split(';').filter(|e| !e.trim().is_empty()) {
            let (name, action) = entry.split_once('=').ok_or_else(|| format!("MOE_FAILPOINTS: \"{entry}\" is not name=action"))?;
            fail::cfg(name.trim(), action.trim()).map_err(|e| format!("MOE_FAILPOINTS: {name}: {e}"))?;
        }
        Ok(())
    });
    r.clone().map_err(MoeError::InvalidConfig)
}

/// Deserialises a JSON configuration or options object; an error (`INVALID_CONFIG`) names the field
/// it is about (`schedule.warmupSteps: invalid type: floating point 2.5, expected u64`).
pub fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        MoeError::InvalidConfig(if path == "." { inner.to_string() } else { format!("{path}: {inner}") })
    })
}
