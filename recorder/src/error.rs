//! Recorder errors. Every one is on our side (the recorder's disk or configuration): peers
//! never reach the recorder except through records the data plane builds.

use std::path::PathBuf;

/// What went wrong in the recorder, and on which file.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("invalid recorder setting `{key}`: {why}")]
    Config {
        key: &'static str,
        why: &'static str,
    },
    #[error("recorder i/o on `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("recorder arrow encoding for `{path}`: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("recorder parquet encoding for `{path}`: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error(transparent)]
    Schema(#[from] SchemaMismatch),
    #[error("recorder thread could not start: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("recorder thread panicked")]
    ThreadPanicked,
}

impl RecorderError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| RecorderError::Io { path, source }
    }

    pub(crate) fn arrow(path: impl Into<PathBuf>) -> impl FnOnce(arrow::error::ArrowError) -> Self {
        let path = path.into();
        move |source| RecorderError::Arrow { path, source }
    }

    pub(crate) fn parquet(
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(parquet::errors::ParquetError) -> Self {
        let path = path.into();
        move |source| RecorderError::Parquet { path, source }
    }
}

/// A recording file whose columns do not match the schema this build reads.
#[derive(Debug, thiserror::Error)]
#[error("recording `{path}` does not match schema version {version}: {why}", version = crate::SCHEMA_VERSION)]
pub struct SchemaMismatch {
    pub path: PathBuf,
    pub why: String,
}
