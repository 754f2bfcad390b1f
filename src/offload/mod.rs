//! The claim check: files and large bodies kept in S3-compatible storage, with a reference in
//! the store.
//!
//! The files bucket is the one `s3` connection whose metadata has a `files:` block. [`Files`]
//! takes a stream (an upload to `POST /v1/files`, or a callout's answer over its connection's
//! offload threshold), stores it under a generated key while hashing it, optionally has it
//! scanned on the way, and records a [`FileRecord`]. A reference is handed out only when the
//! object is complete, scanned and recorded; every failure before that deletes what was
//! stored. References expire after the bucket's retention: [`Files::sweep`] deletes their
//! objects, then the references.

pub mod names;
pub mod s3;
pub mod scan;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use serde_json::{Value, json};

pub use self::names::{content_type_allowed, normalise_content_type, sanitise_name};
pub use self::s3::{Download, S3Bucket, S3Error, UploadError, UploadLimits, Uploaded};
pub use self::scan::{ScanHook, ScanRejection, Scanner};
use crate::metadata::Metadata;
use crate::metadata::model::{FilesPolicy, Protocol};
use crate::queue::{FileRecord, Millis, Store, StoreError};

/// Expired references handled by one [`Files::sweep`] round.
const SWEEP_BATCH: u32 = 200;

/// The files bucket of one metadata version.
pub struct Files {
    pub bucket: Arc<S3Bucket>,
    pub policy: FilesPolicy,
    store: Arc<dyn Store>,
    scanner: Option<Arc<Scanner>>,
}

/// What is known of a file before its bytes arrive.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The name the sender gave (sanitised here; never part of the key).
    pub name: Option<String>,
    pub content_type: String,
    /// `upload`, or `callout:<id>`.
    pub origin: String,
    /// Check the content type against the allow-list and have the file scanned (uploads);
    /// off for bodies the engine offloads itself.
    pub untrusted: bool,
}

/// Why a file was not stored. Nothing stays behind in the bucket.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("content type {0:?} is not allowed; expected one of: {1}")]
    ContentType(String, String),
    #[error("the file is larger than the limit of {max} bytes")]
    TooLarge { max: u64 },
    #[error("the file was rejected by the scan: {0}")]
    Rejected(ScanRejection),
    #[error("the file could not be read: {0}")]
    Body(String),
    #[error("the file storage failed: {0}")]
    Storage(S3Error),
    #[error(transparent)]
    Store(StoreError),
}

impl From<UploadError> for FileError {
    fn from(err: UploadError) -> FileError {
        match err {
            UploadError::TooLarge { max } => FileError::TooLarge { max },
            UploadError::Body(why) => FileError::Body(why),
            UploadError::Storage(err) => FileError::Storage(err),
        }
    }
}

impl Files {
    /// The files bucket of `metadata`, if one of its connections has a `files:` block; `env`
    /// reads its secret references.
    ///
    /// # Errors
    /// Its client cannot be made (a secret that cannot be read).
    pub fn of(
        metadata: &Metadata,
        env: &dyn Fn(&str) -> Option<String>,
        store: Arc<dyn Store>,
        scanner: Option<Arc<Scanner>>,
    ) -> Option<Result<Files, String>> {
        let (connection, policy) =
            metadata
                .connections
                .values()
                .find_map(|c| match &c.protocol {
                    Protocol::S3 {
                        files: Some(policy),
                        ..
                    } => Some((c, policy.clone())),
                    _ => None,
                })?;
        // The same network policy as every other connection: a private address needs
        // `allow_private_network`. An address written out skips the resolver, so it is checked
        // here; a host name meets the bucket client's guarded resolver on every request.
        if let Some(endpoint) = &connection.endpoint
            && let Err(refused) =
                crate::wrapper::net::check_url(endpoint, connection.allow_private_network)
        {
            return Some(Err(format!("connection `{}`: {refused}", connection.name)));
        }
        let secret = crate::wrapper::registry::secret_reader(connection, env);
        Some(S3Bucket::new(connection, &secret).map(|bucket| Files {
            bucket: Arc::new(bucket),
            policy,
            store,
            scanner,
        }))
    }

    /// The name of the connection holding the bucket.
    pub fn connection(&self) -> &str {
        &self.bucket.connection
    }

    /// Stores `body` and records its reference. An upload's content type is checked first,
    /// and it is scanned on the way when a scanner is set; the reference is recorded only
    /// after the scan passed.
    ///
    /// # Errors
    /// See [`FileError`]; on every one, the object (if any was stored) is deleted again.
    pub async fn store<S, E>(&self, incoming: Incoming, body: S) -> Result<FileRecord, FileError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let content_type = normalise_content_type(&incoming.content_type)
            .unwrap_or_else(|| "application/octet-stream".to_string());
        if incoming.untrusted && !content_type_allowed(&content_type, &self.policy.content_types) {
            return Err(FileError::ContentType(
                content_type,
                self.policy.content_types.join(", "),
            ));
        }
        let name = incoming.name.as_deref().and_then(sanitise_name);
        let now = crate::engine::now_millis();
        let id = format!("f{}", uuid::Uuid::now_v7().simple());
        let key = format!("{}{}{id}", self.policy.key_prefix, date_path(now));
        let mut metadata = vec![("origin".to_string(), incoming.origin.clone())];
        if let Some(name) = &name {
            metadata.push(("name".to_string(), names::ascii_safe(name)));
        }
        let scan = match (&self.scanner, incoming.untrusted) {
            (Some(scanner), true) => Some(scanner.start()),
            _ => None,
        };
        let (tap, verdict) = match scan {
            Some((tap, verdict)) => (Some(tap), Some(verdict)),
            None => (None, None),
        };
        let limits = UploadLimits {
            max_size: self.policy.max_size,
            part_size: self.policy.part_size,
        };
        // Until the reference is recorded, a cancelled store (a caller that went away, a
        // deadline) leaves an object nothing points to: the guard deletes it.
        let mut orphan = Orphan {
            bucket: Some(self.bucket.clone()),
            key: key.clone(),
        };
        let uploaded = self
            .bucket
            .upload(&key, &content_type, &metadata, body, limits, tap)
            .await;
        let uploaded = match uploaded {
            Ok(uploaded) => uploaded,
            Err(err) => {
                if let Some(verdict) = verdict {
                    verdict.cancel();
                }
                // A storage request that failed may still have stored the object (a timeout
                // after the server finished): delete it all the same.
                if matches!(err, UploadError::Storage(_)) {
                    self.forget_object(&key).await;
                }
                orphan.disarm();
                return Err(err.into());
            }
        };
        if let Some(verdict) = verdict
            && let Err(rejection) = verdict.verdict().await
        {
            self.forget_object(&key).await;
            orphan.disarm();
            return Err(FileError::Rejected(rejection));
        }
        // Retention counts from when the file is complete.
        let now = crate::engine::now_millis();
        let record = FileRecord {
            id,
            connection: self.bucket.connection.clone(),
            bucket: self.bucket.bucket.clone(),
            key: key.clone(),
            size: uploaded.size,
            sha256: uploaded.sha256,
            content_type,
            name,
            origin: incoming.origin,
            created_at: now,
            expires_at: now.saturating_add(millis(self.policy.retention)),
        };
        if let Err(err) = self.store.insert_file(&record).await {
            self.forget_object(&key).await;
            orphan.disarm();
            return Err(FileError::Store(err));
        }
        orphan.disarm();
        Ok(record)
    }

    /// Deletes an object that will get no reference; a failure is logged (the sweep cannot
    /// find it: it has no reference).
    async fn forget_object(&self, key: &str) {
        if let Err(err) = self.bucket.delete(key).await {
            tracing::warn!(connection = %self.bucket.connection, key, error = %err, "an object without a reference could not be deleted");
        }
    }

    /// Deletes a file stored for nothing (its reference was never handed out): its object,
    /// then its reference. A failure is logged; an object that cannot be deleted keeps its
    /// reference, so that the sweep deletes both at expiry.
    pub async fn discard(&self, record: &FileRecord) {
        if let Err(err) = self.bucket.delete(&record.key).await {
            tracing::warn!(file = %record.id, error = %err, "a discarded file's object could not be deleted; the sweep deletes it at expiry");
            return;
        }
        if let Err(err) = self.store.delete_file(&record.id).await {
            tracing::warn!(file = %record.id, error = %err, "a discarded file's reference could not be deleted; it expires with its retention");
        }
    }

    /// A file's reference, if it exists, has not expired at `now` and is in this bucket.
    ///
    /// # Errors
    /// The store failed.
    pub async fn find(&self, id: &str, now: Millis) -> Result<Option<FileRecord>, StoreError> {
        Ok(self
            .store
            .file(id)
            .await?
            .filter(|record| record.expires_at > now && self.holds(record)))
    }

    /// Whether the file is in this files bucket (not in one an earlier metadata named).
    fn holds(&self, record: &FileRecord) -> bool {
        record.bucket == self.bucket.bucket && record.connection == self.bucket.connection
    }

    /// A fresh presigned link to the file, living the bucket's `link_ttl` (never beyond the
    /// reference's expiry), and when it stops working.
    ///
    /// # Errors
    /// The link cannot be signed.
    pub async fn link(
        &self,
        record: &FileRecord,
        now: Millis,
    ) -> Result<(String, Millis), S3Error> {
        let left = Duration::from_millis(record.expires_at.saturating_sub(now).max(1000) as u64);
        let ttl = self.policy.link_ttl.min(left);
        let url = self
            .bucket
            .presign_get(&record.key, ttl, record.name.as_deref())
            .await?;
        Ok((url, now.saturating_add(millis(ttl))))
    }

    /// The reference as callers see it: the record and a fresh link.
    ///
    /// # Errors
    /// The link cannot be signed.
    pub async fn reference(&self, record: &FileRecord, now: Millis) -> Result<Value, S3Error> {
        let (url, url_expires_at) = self.link(record, now).await?;
        Ok(reference_json(record, &url, url_expires_at))
    }

    /// Reads a file's bytes.
    ///
    /// # Errors
    /// The storage failed or the object is gone.
    pub async fn open(&self, record: &FileRecord) -> Result<Download, S3Error> {
        self.bucket.open(&record.key).await
    }

    /// Deletes the objects of references expired at `now`, then the references; returns how
    /// many were removed. An object that cannot be deleted keeps its reference for the next
    /// round.
    ///
    /// # Errors
    /// The store failed.
    pub async fn sweep(&self, now: Millis) -> Result<u64, StoreError> {
        let mut removed = 0;
        loop {
            let expired = self.store.expired_files(now, SWEEP_BATCH).await?;
            let batch = expired.len();
            let mut progress = false;
            for record in expired {
                if !self.holds(&record) {
                    // Stored in a bucket that is no longer the files bucket (the metadata moved
                    // `files:`): that bucket is not ours to clean any more, but the expired
                    // reference goes, so that the sweep moves on.
                    tracing::warn!(file = %record.id, connection = %record.connection, bucket = %record.bucket, key = %record.key, "an expired file is in a bucket that is no longer the files bucket; its reference is removed and its object left to that bucket's own lifecycle");
                    if self.store.delete_file(&record.id).await? {
                        removed += 1;
                    }
                    progress = true;
                    continue;
                }
                match self.bucket.delete(&record.key).await {
                    Ok(()) => {
                        if self.store.delete_file(&record.id).await? {
                            removed += 1;
                        }
                        progress = true;
                    }
                    Err(err) => {
                        tracing::warn!(file = %record.id, error = %err, "an expired file's object could not be deleted; trying again later");
                    }
                }
            }
            if batch < SWEEP_BATCH as usize || !progress {
                return Ok(removed);
            }
        }
    }
}

/// Deletes, when dropped armed, an object whose reference was not recorded (in a task of its
/// own: the store that made it was cancelled).
struct Orphan {
    bucket: Option<Arc<S3Bucket>>,
    key: String,
}

impl Orphan {
    fn disarm(&mut self) {
        self.bucket = None;
    }
}

impl Drop for Orphan {
    fn drop(&mut self) {
        let Some(bucket) = self.bucket.take() else {
            return;
        };
        let key = std::mem::take(&mut self.key);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(connection = %bucket.connection, key, "a cancelled upload's object could not be deleted: no runtime");
            return;
        };
        runtime.spawn(async move {
            if let Err(err) = bucket.delete(&key).await {
                tracing::warn!(connection = %bucket.connection, key, error = %err, "a cancelled upload's object could not be deleted");
            }
        });
    }
}

/// The JSON of a reference with its link.
pub fn reference_json(record: &FileRecord, url: &str, url_expires_at: Millis) -> Value {
    json!({
        "id": record.id,
        "bucket": record.bucket,
        "key": record.key,
        "size": record.size,
        "sha256": record.sha256,
        "content_type": record.content_type,
        "name": record.name,
        "url": url,
        "url_expires_at": crate::controller::rfc3339(url_expires_at),
        "created_at": crate::controller::rfc3339(record.created_at),
        "expires_at": crate::controller::rfc3339(record.expires_at),
    })
}

fn millis(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

/// `yyyy/mm/dd/` of `now` (UTC), so that a bucket's keys group by day.
fn date_path(now: Millis) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(now / 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .date();
    format!(
        "{:04}/{:02}/{:02}/",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_group_by_utc_day() {
        assert_eq!(date_path(0), "1970/01/01/");
        // 2026-11-27T01:55:53Z
        assert_eq!(date_path(1_795_744_553_000), "2026/11/27/");
    }
}
