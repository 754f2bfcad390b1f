//! One bucket of an `s3` connection: streaming uploads (one `PutObject` below the part size, a
//! multipart upload above it, aborted on any failure), downloads as streams, presigned links,
//! deletes and listings.
//!
//! The client is made on first use: with static keys it is ready at once; without them it
//! reads the standard AWS credential chain (environment, profile, web identity, container and
//! instance metadata), which may take a network round trip. Messages name the connection, the
//! bucket and the key, never a credential.
//!
//! Requests to the bucket obey the outbound network policy (`wrapper::net`): the SDK's HTTP
//! client is [`net::sdk_http_client`], whose resolver drops private addresses unless the
//! connection sets `allow_private_network: true`, so an endpoint (or a virtual-hosted bucket
//! name) that resolves only to such addresses is refused ([`S3Error::refused`]) and not
//! retried. IP-literal endpoints skip the resolver; the S3 wrapper and the files bucket check
//! them first. The credential chain keeps the SDK's own client: it must reach instance
//! metadata.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::{OnceCell, mpsc};
use tokio::task::JoinSet;
use url::Url;

use crate::metadata::config::{S3Checksums, ServerSideEncryption};
use crate::metadata::model::{Auth, Connection, Protocol};
use crate::metadata::values::{Secret, SecretRef};
use crate::wrapper::net;

/// Parts of one multipart upload sent at once.
const PARTS_IN_FLIGHT: usize = 2;

/// Keys listed at most by one [`S3Bucket::list`].
pub const MAX_LISTED: usize = 10_000;

/// One bucket, and the client that reaches it.
pub struct S3Bucket {
    pub connection: String,
    pub bucket: String,
    settings: Settings,
    client: OnceCell<Client>,
}

/// What the client is made from.
struct Settings {
    endpoint: Option<Url>,
    region: String,
    path_style: bool,
    checksums: S3Checksums,
    keys: Option<(Secret, Secret, Option<Secret>)>,
    anonymous: bool,
    connect_timeout: Duration,
    timeout: Duration,
    sse: Option<ServerSideEncryption>,
    kms_key_id: Option<String>,
    allow_private: bool,
}

/// How an upload is bounded.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    /// Most bytes taken; more fails with [`UploadError::TooLarge`].
    pub max_size: u64,
    /// Bytes per part; a body of at least this many goes up as a multipart upload.
    pub part_size: u64,
}

/// What was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
}

/// Why an upload failed. Nothing stays behind: a multipart upload is aborted.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the file is larger than the limit of {max} bytes")]
    TooLarge { max: u64 },
    /// The body being uploaded failed (a client that went away, an upstream that broke off).
    #[error("the body could not be read: {0}")]
    Body(String),
    #[error("{0}")]
    Storage(S3Error),
}

/// A failure of the storage service, with a message that names the connection and bucket.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct S3Error {
    pub message: String,
    /// The service's error code (`NoSuchKey`, `AccessDenied`, ...), when it sent one.
    pub code: Option<String>,
    /// Whether trying again later may work (no answer, a 5xx, throttling).
    pub transient: bool,
    /// The network policy refused the endpoint: its name resolves only to private addresses
    /// and the connection does not set `allow_private_network: true`.
    pub refused: bool,
}

/// An object being read.
pub struct Download {
    pub size: u64,
    pub content_type: Option<String>,
    pub body: ByteStream,
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// RFC 3339, when the service said.
    pub last_modified: Option<String>,
}

impl S3Bucket {
    /// The bucket of `connection` (an `s3` connection), with its secrets read by `secret`.
    ///
    /// # Errors
    /// Not an `s3` connection, or a secret that cannot be read (named, never shown).
    pub fn new(
        connection: &Connection,
        secret: &dyn Fn(&SecretRef) -> Result<Secret, String>,
    ) -> Result<S3Bucket, String> {
        let name = &connection.name;
        let Protocol::S3 {
            bucket,
            region,
            path_style,
            server_side_encryption,
            kms_key_id,
            checksums,
            ..
        } = &connection.protocol
        else {
            return Err(format!("connection `{name}` is not an s3 connection"));
        };
        let (keys, anonymous) = match &connection.auth {
            Auth::Aws { keys: Some(keys) } => {
                let read =
                    |r: &SecretRef| secret(r).map_err(|why| format!("connection `{name}`: {why}"));
                let token = keys.session_token.as_ref().map(read).transpose()?;
                (
                    Some((
                        read(&keys.access_key_id)?,
                        read(&keys.secret_access_key)?,
                        token,
                    )),
                    false,
                )
            }
            Auth::Aws { keys: None } => (None, false),
            _ => (None, true),
        };
        Ok(S3Bucket {
            connection: name.clone(),
            bucket: bucket.clone(),
            settings: Settings {
                endpoint: connection.endpoint.clone(),
                region: region.clone(),
                path_style: *path_style,
                checksums: *checksums,
                keys,
                anonymous,
                connect_timeout: connection.limits.connect_timeout,
                timeout: connection.limits.timeout,
                sse: *server_side_encryption,
                kms_key_id: kms_key_id.clone(),
                allow_private: connection.allow_private_network,
            },
            client: OnceCell::new(),
        })
    }

    /// The client, made on first use.
    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let s = &self.settings;
                let mut builder = if s.keys.is_none() && !s.anonymous {
                    let shared = aws_config::defaults(BehaviorVersion::latest())
                        .region(Region::new(s.region.clone()))
                        .load()
                        .await;
                    aws_sdk_s3::config::Builder::from(&shared)
                } else {
                    aws_sdk_s3::config::Builder::new().behavior_version(BehaviorVersion::latest())
                };
                // After `from(&shared)`: the credential chain keeps the SDK's client, the
                // bucket's requests get the guarded one.
                builder = builder
                    .http_client(net::sdk_http_client(s.allow_private))
                    .region(Region::new(s.region.clone()))
                    .force_path_style(s.path_style)
                    .retry_config(RetryConfig::standard().with_max_attempts(3))
                    .retry_classifier(net::RefusedIsFinal)
                    .timeout_config(
                        TimeoutConfig::builder()
                            .connect_timeout(s.connect_timeout)
                            .operation_attempt_timeout(s.timeout)
                            .build(),
                    );
                if let Some((id, key, token)) = &s.keys {
                    builder = builder.credentials_provider(Credentials::new(
                        id.expose(),
                        key.expose(),
                        token.as_ref().map(|t| t.expose().to_string()),
                        None,
                        "switchboard-metadata",
                    ));
                }
                if let Some(endpoint) = &s.endpoint {
                    builder = builder.endpoint_url(endpoint.as_str().trim_end_matches('/'));
                }
                if s.checksums == S3Checksums::WhenRequired {
                    builder = builder
                        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
                }
                Client::from_conf(builder.build())
            })
            .await
    }

    /// A storage failure of `what` on `key`, as a message that names the bucket.
    fn failed<E>(&self, what: &str, key: &str, err: &aws_sdk_s3::error::SdkError<E>) -> S3Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        use aws_sdk_s3::error::SdkError;
        if let Some(refused) = net::find_refused(err) {
            return S3Error {
                message: format!(
                    "{what} `{key}` in bucket `{}` of `{}` failed: {}",
                    self.bucket,
                    self.connection,
                    refused.message()
                ),
                code: None,
                transient: false,
                refused: true,
            };
        }
        let (code, transient, cause) = match err {
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                let code = service.err().code().map(str::to_string);
                let detail = service
                    .err()
                    .message()
                    .map(str::to_string)
                    .or_else(|| code.clone())
                    .unwrap_or_else(|| format!("status {status}"));
                let transient = status >= 500
                    || status == 429
                    || code.as_deref() == Some("SlowDown")
                    || code.as_deref() == Some("RequestTimeout");
                (code, transient, detail)
            }
            other => (None, true, DisplayErrorContext(other).to_string()),
        };
        S3Error {
            message: format!(
                "{what} `{key}` in bucket `{}` of `{}` failed: {cause}",
                self.bucket, self.connection
            ),
            code,
            transient,
            refused: false,
        }
    }

    /// Stores `body` at `key`, hashing it on the way; each chunk is also handed to `tap` (a
    /// virus scanner reading alongside), whose closing does not stop the upload. A body of at
    /// least `part_size` bytes goes up as a multipart upload, [`PARTS_IN_FLIGHT`] parts at a
    /// time, so at most `(PARTS_IN_FLIGHT + 1) × part_size` bytes are held.
    ///
    /// # Errors
    /// The body is over `max_size`, it failed, or the service refused; a multipart upload
    /// begun is aborted, so no object and no parts stay behind.
    pub async fn upload<S, E>(
        &self,
        key: &str,
        content_type: &str,
        metadata: &[(String, String)],
        mut body: S,
        limits: UploadLimits,
        tap: Option<mpsc::Sender<Bytes>>,
    ) -> Result<Uploaded, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let part_size = usize::try_from(limits.part_size).unwrap_or(usize::MAX);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buffer = BytesMut::new();
        let mut tap = tap;
        let mut multipart: Option<Multipart> = None;
        let result = async {
            loop {
                let next = body.next().await;
                let chunk = match next {
                    Some(Ok(chunk)) => chunk,
                    Some(Err(err)) => return Err(UploadError::Body(err.to_string())),
                    None => break,
                };
                size += chunk.len() as u64;
                if size > limits.max_size {
                    return Err(UploadError::TooLarge {
                        max: limits.max_size,
                    });
                }
                hasher.update(&chunk);
                if let Some(sender) = &tap
                    && sender.send(chunk.clone()).await.is_err()
                {
                    tap = None;
                }
                // Filled to exactly `part_size`, in buffers that are used again once their
                // part was sent: the allocator sees no churn of large blocks, so the process
                // does not keep what a stream of uploads once needed.
                let mut rest = &chunk[..];
                while !rest.is_empty() {
                    if buffer.capacity() == 0 {
                        buffer = multipart
                            .as_mut()
                            .and_then(|upload| upload.spare.pop())
                            .unwrap_or_else(|| BytesMut::with_capacity(part_size));
                    }
                    let take = (part_size - buffer.len()).min(rest.len());
                    buffer.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if buffer.len() == part_size {
                        let part = std::mem::take(&mut buffer).freeze();
                        let upload = match &mut multipart {
                            Some(upload) => upload,
                            None => {
                                multipart.insert(self.begin(key, content_type, metadata).await?)
                            }
                        };
                        upload.send(self, part).await?;
                    }
                }
            }
            // The end of the file for the scanner, which may finish while the rest goes up.
            tap = None;
            let sha256 = hex::encode(hasher.finalize_reset());
            match multipart.take() {
                None => {
                    self.put(key, content_type, metadata, buffer.split().freeze())
                        .await?;
                }
                Some(mut upload) => {
                    if !buffer.is_empty() {
                        upload.send(self, buffer.split().freeze()).await?;
                    }
                    let done = upload.complete(self).await;
                    if let Err(err) = done {
                        return Err(UploadError::Storage(err));
                    }
                }
            }
            Ok(Uploaded { size, sha256 })
        }
        .await;
        if result.is_err()
            && let Some(upload) = multipart
        {
            upload.abort(self).await;
        }
        drop(tap);
        result
    }

    /// One `PutObject` of a body held whole (under the part size).
    async fn put(
        &self,
        key: &str,
        content_type: &str,
        metadata: &[(String, String)],
        bytes: Bytes,
    ) -> Result<(), UploadError> {
        let mut request = self
            .client()
            .await
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .content_length(bytes.len() as i64)
            .body(ByteStream::from(bytes));
        for (name, value) in metadata {
            request = request.metadata(name, value);
        }
        if let Some(sse) = self.settings.sse {
            request = request.server_side_encryption(sse_of(sse));
        }
        if let Some(id) = &self.settings.kms_key_id {
            request = request.ssekms_key_id(id);
        }
        request
            .send()
            .await
            .map(drop)
            .map_err(|err| UploadError::Storage(self.failed("storing", key, &err)))
    }

    /// Starts a multipart upload.
    async fn begin(
        &self,
        key: &str,
        content_type: &str,
        metadata: &[(String, String)],
    ) -> Result<Multipart, UploadError> {
        let mut request = self
            .client()
            .await
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type);
        for (name, value) in metadata {
            request = request.metadata(name, value);
        }
        if let Some(sse) = self.settings.sse {
            request = request.server_side_encryption(sse_of(sse));
        }
        if let Some(id) = &self.settings.kms_key_id {
            request = request.ssekms_key_id(id);
        }
        let created = request.send().await.map_err(|err| {
            UploadError::Storage(self.failed("starting the upload of", key, &err))
        })?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        if upload_id.is_empty() {
            return Err(UploadError::Storage(S3Error {
                message: format!(
                    "starting the upload of `{key}` in bucket `{}` of `{}` failed: the service gave no upload id",
                    self.bucket, self.connection
                ),
                code: None,
                transient: true,
                refused: false,
            }));
        }
        Ok(Multipart {
            key: key.to_string(),
            upload_id,
            next_part: 1,
            sending: JoinSet::new(),
            done: Vec::new(),
            spare: Vec::new(),
            pending: Some((
                self.client().await.clone(),
                self.bucket.clone(),
                self.connection.clone(),
            )),
        })
    }

    /// Reads the object at `key`.
    ///
    /// # Errors
    /// The service refused (`code` `NoSuchKey` for a missing object) or was not reached.
    pub async fn open(&self, key: &str) -> Result<Download, S3Error> {
        let got = self
            .client()
            .await
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|err| self.failed("reading", key, &err))?;
        Ok(Download {
            size: got.content_length().map_or(0, |n| n.max(0) as u64),
            content_type: got.content_type().map(str::to_string),
            body: got.body,
        })
    }

    /// A link that downloads the object at `key` without credentials until `ttl` has passed;
    /// with `download_name`, browsers save it under that name.
    ///
    /// # Errors
    /// `ttl` over 7 days, or the link cannot be signed.
    pub async fn presign_get(
        &self,
        key: &str,
        ttl: Duration,
        download_name: Option<&str>,
    ) -> Result<String, S3Error> {
        let config = PresigningConfig::expires_in(ttl).map_err(|err| S3Error {
            message: format!("cannot sign a link to `{key}` for {ttl:?}: {err}"),
            code: None,
            transient: false,
            refused: false,
        })?;
        let mut request = self
            .client()
            .await
            .get_object()
            .bucket(&self.bucket)
            .key(key);
        if let Some(name) = download_name {
            request = request.response_content_disposition(content_disposition(name));
        }
        let signed = request
            .presigned(config)
            .await
            .map_err(|err| self.failed("signing a link to", key, &err))?;
        Ok(signed.uri().to_string())
    }

    /// Deletes the object at `key` (a missing object is no error, as in S3).
    ///
    /// # Errors
    /// The service refused or was not reached.
    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        self.client()
            .await
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(drop)
            .map_err(|err| self.failed("deleting", key, &err))
    }

    /// Objects whose keys start with `prefix`, in key order, at most `max` (and at most
    /// [`MAX_LISTED`]); the flag says whether more were left out.
    ///
    /// # Errors
    /// The service refused or was not reached.
    pub async fn list(&self, prefix: &str, max: usize) -> Result<(Vec<Listed>, bool), S3Error> {
        let max = max.min(MAX_LISTED);
        let mut listed = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client()
                .await
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .max_keys(i32::try_from((max - listed.len()).clamp(1, 1000)).unwrap_or(1000))
                .send()
                .await
                .map_err(|err| self.failed("listing", prefix, &err))?;
            for object in page.contents() {
                if listed.len() == max {
                    return Ok((listed, true));
                }
                listed.push(Listed {
                    key: object.key().unwrap_or_default().to_string(),
                    size: object.size().map_or(0, |n| n.max(0) as u64),
                    last_modified: object
                        .last_modified()
                        .and_then(|t| t.fmt(aws_sdk_s3::primitives::DateTimeFormat::DateTime).ok()),
                });
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => {
                    if listed.len() == max {
                        return Ok((listed, true));
                    }
                    token = Some(next.to_string());
                }
                _ => return Ok((listed, false)),
            }
        }
    }
}

/// A multipart upload under way. Dropped before it completed or was aborted (its upload
/// cancelled, say by a deadline), it aborts itself in a task of its own, so the service drops
/// the parts sent so far.
struct Multipart {
    key: String,
    upload_id: String,
    next_part: i32,
    sending: JoinSet<Result<(CompletedPart, Bytes), S3Error>>,
    done: Vec<CompletedPart>,
    /// Buffers of parts sent, to fill again.
    spare: Vec<BytesMut>,
    /// What an abort from `Drop` needs; `None` once completed or aborted.
    pending: Option<(Client, String, String)>,
}

impl Drop for Multipart {
    fn drop(&mut self) {
        let Some((client, bucket, connection)) = self.pending.take() else {
            return;
        };
        self.sending.abort_all();
        let (key, upload_id) = (self.key.clone(), self.upload_id.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                connection,
                key,
                "a cancelled multipart upload could not be aborted: no runtime; its parts stay until the bucket's lifecycle removes them"
            );
            return;
        };
        runtime.spawn(async move {
            let aborted = client
                .abort_multipart_upload()
                .bucket(&bucket)
                .key(&key)
                .upload_id(&upload_id)
                .send()
                .await;
            if let Err(err) = aborted {
                tracing::warn!(connection, key, error = %DisplayErrorContext(&err), "a cancelled multipart upload could not be aborted; its parts stay until the bucket's lifecycle removes them");
            }
        });
    }
}

impl Multipart {
    /// Sends the next part, first waiting for one in flight when [`PARTS_IN_FLIGHT`] are.
    async fn send(&mut self, bucket: &S3Bucket, part: Bytes) -> Result<(), UploadError> {
        while self.sending.len() >= PARTS_IN_FLIGHT {
            self.collect_one().await?;
        }
        let number = self.next_part;
        self.next_part += 1;
        let client = bucket.client().await.clone();
        let (name, key, upload_id) = (
            bucket.bucket.clone(),
            self.key.clone(),
            self.upload_id.clone(),
        );
        let failed = FailContext {
            connection: bucket.connection.clone(),
            bucket: bucket.bucket.clone(),
        };
        self.sending.spawn(async move {
            let sent = client
                .upload_part()
                .bucket(name)
                .key(&key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(part.len() as i64)
                .body(ByteStream::from(part.clone()))
                .send()
                .await
                .map_err(|err| failed.of(&format!("storing part {number} of"), &key, &err))?;
            let done = CompletedPart::builder()
                .part_number(number)
                .set_e_tag(sent.e_tag().map(str::to_string))
                .build();
            Ok((done, part))
        });
        Ok(())
    }

    /// Waits for one part in flight.
    async fn collect_one(&mut self) -> Result<(), UploadError> {
        match self.sending.join_next().await {
            Some(Ok(Ok((part, bytes)))) => {
                self.done.push(part);
                // Ours alone once the request is gone; if the client still holds it, a new
                // buffer is made instead.
                if let Ok(mut buffer) = bytes.try_into_mut() {
                    buffer.clear();
                    self.spare.push(buffer);
                }
                Ok(())
            }
            Some(Ok(Err(err))) => Err(UploadError::Storage(err)),
            Some(Err(join)) => Err(UploadError::Storage(S3Error {
                message: format!("storing a part of `{}` failed: {join}", self.key),
                code: None,
                transient: true,
                refused: false,
            })),
            None => Ok(()),
        }
    }

    /// Waits for every part, then completes the upload.
    async fn complete(&mut self, bucket: &S3Bucket) -> Result<(), S3Error> {
        while !self.sending.is_empty() {
            if let Err(err) = self.collect_one().await {
                return Err(match err {
                    UploadError::Storage(err) => err,
                    other => S3Error {
                        message: other.to_string(),
                        code: None,
                        transient: true,
                        refused: false,
                    },
                });
            }
        }
        self.done.sort_by_key(|p| p.part_number());
        bucket
            .client()
            .await
            .complete_multipart_upload()
            .bucket(&bucket.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(std::mem::take(&mut self.done)))
                    .build(),
            )
            .send()
            .await
            .map_err(|err| bucket.failed("completing the upload of", &self.key, &err))?;
        self.pending = None;
        Ok(())
    }

    /// Stops the parts in flight and aborts the upload, so the service drops its parts. A
    /// failed abort is logged: the bucket's lifecycle rule for incomplete uploads is the
    /// backstop.
    async fn abort(mut self, bucket: &S3Bucket) {
        // `pending` stays until the abort was answered: cancelled before, the drop aborts.
        self.sending.abort_all();
        while self.sending.join_next().await.is_some() {}
        let aborted = bucket
            .client()
            .await
            .abort_multipart_upload()
            .bucket(&bucket.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await;
        self.pending = None;
        if let Err(err) = aborted {
            tracing::warn!(
                connection = %bucket.connection,
                key = %self.key,
                error = %bucket.failed("aborting the upload of", &self.key, &err),
                "a multipart upload could not be aborted; its parts stay until the bucket's lifecycle removes them"
            );
        }
    }
}

/// What a failure message of a spawned part needs.
struct FailContext {
    connection: String,
    bucket: String,
}

impl FailContext {
    fn of<E>(&self, what: &str, key: &str, err: &aws_sdk_s3::error::SdkError<E>) -> S3Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let refused = net::find_refused(err);
        let cause = match (refused, err) {
            (Some(refused), _) => refused.message().to_string(),
            (None, aws_sdk_s3::error::SdkError::ServiceError(service)) => service
                .err()
                .message()
                .or(service.err().code())
                .map_or_else(
                    || format!("status {}", service.raw().status().as_u16()),
                    str::to_string,
                ),
            (None, other) => DisplayErrorContext(other).to_string(),
        };
        S3Error {
            message: format!(
                "{what} `{key}` in bucket `{}` of `{}` failed: {cause}",
                self.bucket, self.connection
            ),
            code: err.code().map(str::to_string),
            transient: refused.is_none(),
            refused: refused.is_some(),
        }
    }
}

fn sse_of(sse: ServerSideEncryption) -> aws_sdk_s3::types::ServerSideEncryption {
    match sse {
        ServerSideEncryption::Aes256 => aws_sdk_s3::types::ServerSideEncryption::Aes256,
        ServerSideEncryption::AwsKms => aws_sdk_s3::types::ServerSideEncryption::AwsKms,
    }
}

/// `attachment` with the name in both the plain (ASCII, quotes and backslashes dropped) and
/// the RFC 5987 (UTF-8, percent-encoded) forms.
pub fn content_disposition(name: &str) -> String {
    let plain: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .filter(|c| *c != '"' && *c != '\\')
        .collect();
    let encoded =
        percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string();
    format!("attachment; filename=\"{plain}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_content_disposition_keeps_quotes_and_non_ascii_out_of_the_plain_name() {
        assert_eq!(
            content_disposition("a\"b\\c.pdf"),
            "attachment; filename=\"abc.pdf\"; filename*=UTF-8''a%22b%5Cc%2Epdf"
        );
        assert_eq!(
            content_disposition("счёт.pdf"),
            "attachment; filename=\"____.pdf\"; filename*=UTF-8''%D1%81%D1%87%D1%91%D1%82%2Epdf"
        );
    }
}
