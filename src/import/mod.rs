//! Importers: connection metadata generated from a service's own description.
//!
//! [`wsdl`] turns a WSDL 1.1 document into one SOAP connection file. The conversion is pure
//! (text in, YAML text out); [`import_wsdl`] adds the file I/O around it: it reads the WSDL,
//! refuses to overwrite an existing file unless asked to, and writes `NAME.yaml`.

pub mod wsdl;

use std::path::{Path, PathBuf};

pub use wsdl::{WsdlError, WsdlOptions};

/// Why an import could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: cannot read: {source}")]
    ReadWsdl {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}", line = .error.line, message = .error.message)]
    ConvertWsdl { path: PathBuf, error: WsdlError },
    #[error("{path} already exists; pass --force to overwrite it")]
    TargetExists { path: PathBuf },
    #[error("{path}: cannot write: {source}")]
    WriteMetadata {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ImportError {
    /// Whether the WSDL itself is the problem (as opposed to files and arguments).
    pub fn is_conversion(&self) -> bool {
        matches!(self, ImportError::ConvertWsdl { .. })
    }
}

/// Reads the WSDL at `file`, converts it and writes `<out>/<connection>.yaml`; returns that
/// path. An existing file is replaced only with `force`.
///
/// # Errors
/// The WSDL cannot be read or converted, the target exists (without `force`), or it cannot be
/// written.
pub fn import_wsdl(
    file: &Path,
    out: &Path,
    force: bool,
    options: &WsdlOptions,
) -> Result<PathBuf, ImportError> {
    let bytes = std::fs::read(file).map_err(|source| ImportError::ReadWsdl {
        path: file.to_path_buf(),
        source,
    })?;
    let source_name = file.file_name().map_or_else(
        || file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let yaml =
        wsdl::convert(&bytes, &source_name, options).map_err(|error| ImportError::ConvertWsdl {
            path: file.to_path_buf(),
            error,
        })?;
    let target = out.join(format!("{}.yaml", options.connection));
    // `create_new` rather than a look first: a file that appears meanwhile is not replaced.
    let mut open = std::fs::OpenOptions::new();
    open.write(true);
    if force {
        open.create(true).truncate(true);
    } else {
        open.create_new(true);
    }
    let written = open
        .open(&target)
        .and_then(|mut file| std::io::Write::write_all(&mut file, yaml.as_bytes()));
    match written {
        Ok(()) => Ok(target),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(ImportError::TargetExists { path: target })
        }
        Err(source) => Err(ImportError::WriteMetadata {
            path: target,
            source,
        }),
    }
}
