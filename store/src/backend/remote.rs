//! Remote storage through OpenDAL: S3-compatible object storage and SFTP.
//!
//! OpenDAL was chosen over `object_store` because one library and one API cover both S3
//! and SFTP, with capability flags (conditional put, rename) to ask of each store; see
//! ARCHITECTURE.md. OpenDAL is async; this backend owns a small tokio runtime and blocks
//! on it, so the rest of bakare stays synchronous. Retries are not done here: wrap it in
//! [`super::Retrying`], which needs errors classified as transient or permanent, and that
//! is done here.
//!
//! Atomicity: an S3 PUT makes an object appear whole or not at all, and `put` asks for
//! `If-None-Match: *` where the store claims to honour it (a refusal means the object
//! exists, which is success). SFTP writes go to a `.tmp-` file beside the final name, then
//! a rename (OpenSSH's atomic `posix-rename`) moves it into place. No partial object is ever
//! left under a final name, and correctness does not depend on the store refusing
//! overwrites: names are hashes of the bytes.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opendal::layers::TimeoutLayer;
use opendal::services::{S3, Sftp};
use opendal::{ErrorKind, Operator};

use super::{Backend, BackendError, ObjectStat};

/// Where a remote repository is, from `--repo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteUrl {
    /// `s3://bucket/prefix`: endpoint, region and credentials come from the usual AWS
    /// environment variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, ...)
    /// and files (`~/.aws/config`, `~/.aws/credentials`, `AWS_PROFILE`).
    S3 { bucket: String, prefix: String },
    /// `sftp://[user@]host[:port]/path`: keys from ssh-agent or `~/.ssh`, as `ssh` finds
    /// them (OpenDAL runs the system `ssh`).
    Sftp { user: Option<String>, host: String, port: Option<u16>, path: String },
}

impl RemoteUrl {
    /// `None` when `s` is not a remote URL (a local folder); an error for a remote URL that
    /// does not parse.
    pub fn parse(s: &str) -> Option<Result<Self, String>> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Some(Err(format!("{s:?}: no bucket (use s3://bucket/prefix)")));
            }
            return Some(Ok(Self::S3 { bucket: bucket.to_string(), prefix: prefix.trim_matches('/').to_string() }));
        }
        let rest = s.strip_prefix("sftp://")?;
        let Some((authority, path)) = rest.split_once('/') else {
            return Some(Err(format!("{s:?}: no path (use sftp://user@host/path/to/repo)")));
        };
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, authority),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => match p.parse::<u16>() {
                Ok(p) => (h, Some(p)),
                Err(_) => return Some(Err(format!("{s:?}: {p:?} is not a port"))),
            },
            None => (hostport, None),
        };
        if host.is_empty() || path.trim_matches('/').is_empty() {
            return Some(Err(format!("{s:?}: use sftp://user@host[:port]/path/to/repo")));
        }
        Some(Ok(Self::Sftp { user, host: host.to_string(), port, path: format!("/{}", path.trim_matches('/')) }))
    }
}

impl std::fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Self::Sftp { user, host, port, path } => {
                write!(f, "sftp://")?;
                if let Some(u) = user {
                    write!(f, "{u}@")?;
                }
                write!(f, "{host}")?;
                if let Some(p) = port {
                    write!(f, ":{p}")?;
                }
                write!(f, "{path}")
            }
        }
    }
}

/// How a remote backend talks to its store.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// A request that moves no bytes for this long fails (as transient); other requests
    /// (stat, list, delete) get this long in all.
    pub stall_timeout: Duration,
    /// Packs are spooled here (a local folder) while they are filled, then uploaded from
    /// the file; `None` builds them in memory.
    pub spool: Option<PathBuf>,
    /// Packs uploaded at once.
    pub parallel_writes: usize,
    /// SFTP host key checking: `strict` (the default: the host must be in known_hosts),
    /// `add` (add unknown hosts) or `accept` (any key: for tests only).
    pub known_hosts: String,
    /// SFTP private key file; `None` lets ssh use the agent and `~/.ssh`.
    pub ssh_key: Option<PathBuf>,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        Self {
            stall_timeout: Duration::from_secs(60),
            spool: None,
            parallel_writes: 4,
            known_hosts: "strict".into(),
            ssh_key: None,
        }
    }
}

/// A repository on S3-compatible storage or SFTP (see the module documentation).
pub struct RemoteBackend {
    /// One operator per stall timeout: [`RemoteOptions::stall_timeout`] times 1, 2, 4, 8,
    /// all on the same connections. Requests use `ops[slow]`.
    ops: Vec<Operator>,
    /// Which timeout requests get now: one step longer after each request that timed out,
    /// one step shorter after [`CALM_STEP`] successes in a row. A link whose stalls outlast
    /// the timeout (TCP's retransmission backoff under heavy loss, an ssh login taking
    /// several round trips) would otherwise see every retry cut off the same way.
    slow: AtomicU32,
    /// Successes in a row since `slow` last changed.
    calm: AtomicU32,
    rt: tokio::runtime::Runtime,
    url: RemoteUrl,
    options: RemoteOptions,
    /// Writes go to a temporary name, then a rename (SFTP); else straight to the name (S3).
    via_rename: bool,
    /// The store claims `If-None-Match: *` on writes.
    conditional_put: bool,
    /// ssh logins that failed with the server reachable, since the last success.
    login_failures: AtomicU32,
    /// The mean time of recent answered stats and listings, in microseconds (a moving
    /// average: 7/8 the old one, 1/8 the new), for the hedge delay; 0 before the first.
    read_us: AtomicU64,
    /// The throughput of recent answered uploads of content-named objects, in bytes/s (a
    /// moving average as `read_us`), for the hedge delay of uploads; 0 before the first.
    write_bps: AtomicU64,
}

/// ssh logins that may fail (a connection reset during the key exchange) before a failure
/// to log in with the server reachable counts as permanent (a key or host key refused).
const LOGIN_TRIES: u32 = 3;

/// Stall timeouts a backend steps through (the option's, times 1, 2, 4, 8).
const TIMEOUT_STEPS: u32 = 4;

/// Successes in a row after which requests get the next shorter stall timeout again.
const CALM_STEP: u32 = 32;

/// A read (a stat, a listing, an object) that has not answered after [`HEDGE_FACTOR`] times the usual time of
/// one (the mean of recent ones, at least [`HEDGE_MIN`], at most [`HEDGE_MAX`]) is sent once
/// more, on another connection, and the first answer wins (the other request is dropped).
/// Under packet loss a request whose connection lost its SYN (TCP tries again after 1 s,
/// then 3, 7, 15) or sits in retransmission backoff waits seconds for nothing, and a
/// commit's checks run one after another: at 30 % loss single HEAD requests took up to 16 s.
/// Reads are hedged (object and range reads too, allowing for their transfer: see
/// [`HEDGE_SLOW_RATE`]), and uploads of content-named objects to S3 (allowing for the
/// recent upload throughput), whose second copy can only hold the same bytes. Other writes
/// never are: a write sent twice could land after a later write of the name, e.g. a session
/// record brought back after its delete.
pub const HEDGE_MAX: Duration = Duration::from_secs(1);
pub const HEDGE_MIN: Duration = Duration::from_millis(200);
pub const HEDGE_FACTOR: u32 = 4;
/// The rate (bytes/s) a hedged read of known length is allowed before it is sent again:
/// 1 MiB/s, so a 512 KiB piece waits half a second more than a stat.
pub const HEDGE_SLOW_RATE: u64 = 1 << 20;
/// Uploads at least this long teach the upload throughput the hedge of uploads expects.
const HEDGE_MIN_WRITE: u64 = 64 << 10;
/// Copies of one request in flight at most: under heavy loss the second may sit in TCP's
/// SYN backoff too (1 s, then 3, 7).
pub const HEDGE_COPIES: u32 = 3;

impl RemoteBackend {
    pub fn new(url: RemoteUrl, options: RemoteOptions) -> Result<Self, BackendError> {
        let location = url.to_string();
        let config = |e: opendal::Error| BackendError::Permanent { path: location.clone(), message: e.to_string() };
        let op = match &url {
            RemoteUrl::S3 { bucket, prefix } => {
                let mut b = S3::default().bucket(bucket).root(&format!("/{prefix}"));
                if std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
                    b = b.disable_ec2_metadata();
                }
                Operator::new(b).map_err(config)?
            }
            RemoteUrl::Sftp { user, host, port, path } => {
                let mut endpoint = String::from("ssh://");
                if let Some(u) = user {
                    endpoint.push_str(u);
                    endpoint.push('@');
                }
                endpoint.push_str(host);
                if let Some(p) = port {
                    endpoint.push_str(&format!(":{p}"));
                }
                let mut b = Sftp::default().endpoint(&endpoint).root(path).known_hosts_strategy(&options.known_hosts);
                if let Some(u) = user {
                    b = b.user(u);
                }
                if let Some(k) = &options.ssh_key {
                    b = b.key(&k.to_string_lossy());
                }
                Operator::new(b).map_err(config)?
            }
        };
        let ops = (0..TIMEOUT_STEPS)
            .map(|k| {
                let t = options.stall_timeout.saturating_mul(1 << k);
                op.clone().layer(TimeoutLayer::new().with_timeout(t).with_io_timeout(t))
            })
            .collect::<Vec<_>>();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bakare-net")
            .enable_all()
            .build()
            .map_err(|e| BackendError::Permanent {
                path: location.clone(),
                message: format!("starting the network runtime: {e}"),
            })?;
        let cap = op.info().capability();
        let via_rename = matches!(url, RemoteUrl::Sftp { .. }) && cap.rename;
        let conditional_put = cap.write_with_if_not_exists && !via_rename;
        Ok(Self {
            ops,
            slow: AtomicU32::new(0),
            calm: AtomicU32::new(0),
            rt,
            url,
            options,
            via_rename,
            conditional_put,
            login_failures: AtomicU32::new(0),
            read_us: AtomicU64::new(0),
            write_bps: AtomicU64::new(0),
        })
    }

    /// The operator with the stall timeout in force now.
    fn op(&self) -> &Operator {
        let k = self.slow.load(Ordering::Relaxed) as usize;
        &self.ops[k.min(self.ops.len() - 1)]
    }

    /// The stall timeout requests get now.
    pub fn stall_timeout_now(&self) -> std::time::Duration {
        self.options.stall_timeout.saturating_mul(1 << self.slow.load(Ordering::Relaxed).min(TIMEOUT_STEPS - 1))
    }

    /// After a request: a timeout lengthens the next requests' stall timeout one step, a
    /// run of successes shortens it one step.
    fn note_outcome(&self, timed_out: bool) {
        if timed_out {
            self.calm.store(0, Ordering::Relaxed);
            let _ = self
                .slow
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| (k + 1 < TIMEOUT_STEPS).then_some(k + 1));
        } else if self.calm.fetch_add(1, Ordering::Relaxed) + 1 >= CALM_STEP {
            self.calm.store(0, Ordering::Relaxed);
            let _ = self.slow.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| k.checked_sub(1));
        }
    }

    fn put_bytes(&self, path: &str, bytes: opendal::Buffer, if_absent: bool) -> Result<(), BackendError> {
        if self.via_rename {
            let tmp = temp_name(path);
            let written = self.call(path, async {
                self.op().write(&tmp, bytes.clone()).await?;
                match self.op().rename(&tmp, path).await {
                    // A prune removed the temporary file (this process slept past the
                    // session expiry): write it once more.
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        self.op().write(&tmp, bytes).await?;
                        self.op().rename(&tmp, path).await
                    }
                    other => other,
                }
            });
            if written.is_err() {
                let _ = self.rt.block_on(self.op().delete(&tmp));
            }
            return written;
        }
        let conditional = if_absent && self.conditional_put;
        let write = || async {
            match self.op().write_with(path, bytes.clone()).if_not_exists(conditional).await {
                Ok(_) => Ok(()),
                // Already there: names are hashes of the bytes, so it holds these bytes.
                Err(e) if conditional && e.kind() == ErrorKind::ConditionNotMatch => Ok(()),
                Err(e) => Err(e),
            }
        };
        if !(if_absent && content_named(path)) {
            return self.call(path, write());
        }
        // A content-named object may be sent twice: both copies hold the same bytes.
        let len = bytes.len() as u64;
        let sent = std::time::Instant::now();
        let r = self.call(path, hedged(self.write_hedge_delay(len), write, opendal::Error::is_temporary));
        if r.is_ok() && len >= HEDGE_MIN_WRITE {
            let bps = (len as f64 / sent.elapsed().as_secs_f64().max(1e-3)) as u64;
            let _ = self.write_bps.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                Some(if m == 0 { bps } else { m - m / 8 + bps / 8 })
            });
        }
        r
    }

    /// How long an upload of `len` bytes runs before it is sent again: the hedge delay of
    /// reads plus [`HEDGE_FACTOR`] times what `len` takes at the recent upload throughput
    /// ([`HEDGE_SLOW_RATE`] / 4 before any), so that on a slow uplink a long upload is not
    /// sent twice, while one stuck in TCP's backoff under loss is.
    fn write_hedge_delay(&self, len: u64) -> Duration {
        let bps = match self.write_bps.load(Ordering::Relaxed) {
            0 => HEDGE_SLOW_RATE / 4,
            b => b,
        };
        self.hedge_delay() + Duration::from_secs_f64(len as f64 / bps.max(1) as f64).saturating_mul(HEDGE_FACTOR)
    }

    /// Runs one request on the runtime, classifying its error.
    fn call<T>(
        &self,
        path: &str,
        fut: impl std::future::Future<Output = opendal::Result<T>>,
    ) -> Result<T, BackendError> {
        match self.rt.block_on(fut) {
            Ok(v) => {
                self.login_failures.store(0, Ordering::Relaxed);
                self.note_outcome(false);
                Ok(v)
            }
            Err(e) => {
                // OpenDAL's timeout layer: "operation timeout reached", "io operation
                // timeout reached".
                self.note_outcome(e.to_string().contains("timeout reached"));
                Err(self.error(path, e))
            }
        }
    }

    /// Reads an object or a range of `len` bytes (`None`: the whole object, its size unknown)
    /// as [`Self::call_hedged`] does, allowing for the transfer: the hedge waits the hedge
    /// delay plus the time `len` takes at [`HEDGE_SLOW_RATE`], so that on a slow link a
    /// read that is only long is not sent twice. Its time does not move the mean (that is
    /// of small answers).
    fn read_hedged<F, Fut>(&self, path: &str, len: Option<u64>, make: F) -> Result<opendal::Buffer, BackendError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = opendal::Result<opendal::Buffer>>,
    {
        let transfer = Duration::from_secs_f64(len.unwrap_or(0) as f64 / HEDGE_SLOW_RATE as f64);
        self.call(path, hedged(self.hedge_delay() + transfer, make, opendal::Error::is_temporary))
    }

    /// Runs a read made by `make` as [`Self::call`] does, sending it a second time if the
    /// first has not answered after the hedge delay (see [`HEDGE_MAX`]); the first answer
    /// wins, unless it is an error that trying again may fix.
    fn call_hedged<T, F, Fut>(&self, path: &str, make: F) -> Result<T, BackendError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = opendal::Result<T>>,
    {
        let sent = std::time::Instant::now();
        let r = self.call(path, hedged(self.hedge_delay(), make, opendal::Error::is_temporary));
        if !matches!(&r, Err(e) if e.is_transient()) {
            let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
            let _ = self.read_us.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                Some(if m == 0 { us } else { m - m / 8 + us / 8 })
            });
        }
        r
    }

    /// How long a read waits before it is sent again: [`HEDGE_FACTOR`] times the mean of
    /// recent ones, within [`HEDGE_MIN`] and [`HEDGE_MAX`] ([`HEDGE_MAX`] before any).
    fn hedge_delay(&self) -> Duration {
        match self.read_us.load(Ordering::Relaxed) {
            0 => HEDGE_MAX,
            us => Duration::from_micros(us).saturating_mul(HEDGE_FACTOR).clamp(HEDGE_MIN, HEDGE_MAX),
        }
    }

    /// Classifies an OpenDAL error: what retrying may fix is [`BackendError::Transient`].
    fn error(&self, path: &str, e: opendal::Error) -> BackendError {
        let message = e.to_string();
        let path = path.to_string();
        if let RemoteUrl::Sftp { user, host, port, .. } = &self.url
            && message.contains("failed to connect to the remote host")
        {
            // ssh says no more than this. With the server reachable, repeated failures are
            // a refused key or host key; unreachable, the network is down, which may pass.
            let reachable = (host.as_str(), port.unwrap_or(22))
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok());
            if reachable && self.login_failures.fetch_add(1, Ordering::Relaxed) + 1 >= LOGIN_TRIES {
                let who = user.as_deref().map(|u| format!(" as {u}")).unwrap_or_default();
                return BackendError::Permanent {
                    path,
                    message: format!(
                        "ssh could not log in to {host}{who}: permission denied or host key refused \
                         (check the key, ssh-agent, and known_hosts; try `ssh -p {} {host}`)",
                        port.unwrap_or(22)
                    ),
                };
            }
            return BackendError::Transient { path, message: first_line(&message).to_string() };
        }
        match e.kind() {
            ErrorKind::NotFound if message.contains("NoSuchBucket") => BackendError::Permanent {
                path,
                message: format!("the bucket of {} does not exist ({})", self.url, first_line(&message)),
            },
            ErrorKind::NotFound => BackendError::NotFound { path },
            ErrorKind::PermissionDenied => BackendError::Permanent {
                path,
                message: format!("permission denied by {} (check the credentials): {}", self.url, first_line(&message)),
            },
            ErrorKind::ConfigInvalid | ErrorKind::Unsupported | ErrorKind::IsADirectory | ErrorKind::NotADirectory => {
                BackendError::Permanent { path, message: first_line(&message).to_string() }
            }
            ErrorKind::RangeNotSatisfied => BackendError::ShortRead { path, offset: 0, wanted: 0, len: 0 },
            // 429, S3's SlowDown and its kin.
            ErrorKind::RateLimited => BackendError::Throttled { path, message: first_line(&message).to_string() },
            // Resets, timeouts, 5xx, 429, truncated bodies, and failures OpenDAL cannot name
            // (an ssh connection that dropped): trying again may pass; the retry budget
            // bounds how long.
            _ => BackendError::Transient { path, message: first_line(&message).to_string() },
        }
    }
}

/// The answer of the future `make` makes or, while none has answered, of more copies it
/// makes: the second after `after`, the third `2 × after` later (at most [`HEDGE_COPIES`]
/// in all). The first answer wins, unless it is an error `again` says may pass: then the
/// others' answers are waited for, and the first error is returned if all fail (at once
/// when no other copy is running: the retry loop above decides what comes next).
async fn hedged<T, E, F, Fut>(after: Duration, make: F, again: fn(&E) -> bool) -> Result<T, E>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    use futures_util::StreamExt as _;
    let mut running = futures_util::stream::FuturesUnordered::new();
    running.push(make());
    let mut sent = 1;
    let mut wait = after;
    let mut next = tokio::time::Instant::now() + wait;
    let mut first_error = None;
    loop {
        tokio::select! {
            r = running.next() => match r {
                Some(Err(e)) if again(&e) => {
                    if running.is_empty() {
                        return Err(first_error.unwrap_or(e));
                    }
                    first_error.get_or_insert(e);
                }
                Some(r) => return r,
                // Never: a copy is running until one answers or the last fails.
                None => {
                    if let Some(e) = first_error.take() {
                        return Err(e);
                    }
                }
            },
            () = tokio::time::sleep_until(next), if sent < HEDGE_COPIES => {
                running.push(make());
                sent += 1;
                wait = wait.saturating_mul(2);
                next += wait;
            }
        }
    }
}

/// Whether an object's name is the BLAKE3 hash of its bytes (its last part is 64 lowercase
/// hex digits: packs, index segments, snapshots, checkpoints, keys, GC records): a second
/// upload of it can only write the same bytes.
fn content_named(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// A temporary name beside `path` (listings skip `.tmp-` names).
fn temp_name(path: &str) -> String {
    let n = getrandom::u64().unwrap_or_else(|_| {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or_default()
    });
    match path.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/.tmp-{name}-{n:016x}"),
        None => format!(".tmp-{path}-{n:016x}"),
    }
}

fn stat_of(path: &str, m: &opendal::Metadata) -> Result<ObjectStat, BackendError> {
    let modified = m.last_modified().ok_or_else(|| BackendError::Permanent {
        path: path.to_string(),
        message: "the storage gave no modification time".into(),
    })?;
    let t = SystemTime::from(modified);
    let ns = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    };
    Ok(ObjectStat { size: m.content_length(), modified_ns: ns })
}

fn folder(prefix: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() { String::new() } else { format!("{p}/") }
}

impl Backend for RemoteBackend {
    fn location(&self) -> String {
        self.url.to_string()
    }

    fn put(&self, path: &str, bytes: &[u8]) -> Result<(), BackendError> {
        self.put_bytes(path, opendal::Buffer::from(bytes.to_vec()), true)
    }

    fn replace(&self, path: &str, bytes: &[u8]) -> Result<(), BackendError> {
        self.put_bytes(path, opendal::Buffer::from(bytes.to_vec()), false)
    }

    fn put_file_keep(&self, path: &str, file: &std::path::Path) -> Result<(), BackendError> {
        let bytes = std::fs::read(file).map_err(|e| BackendError::io(path, e))?;
        self.put_bytes(path, opendal::Buffer::from(bytes), true)
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, BackendError> {
        let buf = self.read_hedged(path, None, || self.op().read(path))?;
        Ok(buf.to_vec())
    }

    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let end = offset.saturating_add(len);
        let got = match self.read_hedged(path, Some(len), || self.op().read_with(path).range(offset..end).into_future())
        {
            Ok(buf) if buf.len() as u64 == len => return Ok(buf.to_vec()),
            Ok(buf) => buf.len() as u64,
            Err(BackendError::ShortRead { .. }) => 0,
            Err(other) => return Err(other),
        };
        // Fewer bytes than asked: a short object is an error of the object, anything else
        // a truncated answer, worth another try.
        let size = self.size(path)?;
        if size < end {
            Err(BackendError::ShortRead { path: path.to_string(), offset, wanted: len, len: size })
        } else {
            Err(BackendError::Transient {
                path: path.to_string(),
                message: format!("truncated answer: {got} of {len} bytes"),
            })
        }
    }

    fn size(&self, path: &str) -> Result<u64, BackendError> {
        Ok(self.stat(path)?.size)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        Ok(self.list_stat_inner(prefix, false)?.into_iter().map(|(p, _)| p).collect())
    }

    fn delete(&self, path: &str) -> Result<(), BackendError> {
        self.call(path, async {
            match self.op().delete(path).await {
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                other => other,
            }
        })
    }

    fn stat(&self, path: &str) -> Result<ObjectStat, BackendError> {
        let m = self.call_hedged(path, || self.op().stat(path))?;
        stat_of(path, &m)
    }

    fn spool_dir(&self) -> Option<PathBuf> {
        let dir = self.options.spool.clone()?;
        std::fs::create_dir_all(&dir).ok()?;
        super::remove_stale_spool_files(&dir);
        Some(dir)
    }

    fn parallel_writes(&self) -> usize {
        self.options.parallel_writes.max(1)
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn sweep_temporaries(&self, before_ns: i64) -> Result<usize, BackendError> {
        if !self.via_rename {
            return Ok(0);
        }
        let entries = self.call("", async {
            match self.op().list_with("").recursive(true).await {
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
                other => other,
            }
        })?;
        let mut removed = 0;
        for entry in entries {
            let path = entry.path().trim_start_matches('/');
            let name = path.rsplit('/').next().unwrap_or(path);
            if !entry.metadata().is_file() || !name.starts_with(".tmp-") {
                continue;
            }
            let stat = match entry.metadata().last_modified() {
                Some(_) => stat_of(path, entry.metadata())?,
                None => self.stat(path)?,
            };
            if stat.modified_ns < before_ns {
                self.delete(path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn list_stat(&self, prefix: &str) -> Result<Vec<(String, ObjectStat)>, BackendError> {
        self.list_stat_inner(prefix, true)
    }
}

impl RemoteBackend {
    /// One recursive listing; with `with_stat`, each object's stat from the listing where
    /// the store gives it (S3 does), else from a stat of its own.
    fn list_stat_inner(&self, prefix: &str, with_stat: bool) -> Result<Vec<(String, ObjectStat)>, BackendError> {
        let dir = folder(prefix);
        let entries = self.call_hedged(&dir, || async {
            match self.op().list_with(&dir).recursive(true).await {
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
                other => other,
            }
        })?;
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let path = entry.path().trim_start_matches('/');
            let name = path.rsplit('/').next().unwrap_or(path);
            if !entry.metadata().is_file() || name.starts_with(".tmp-") || name.is_empty() {
                continue;
            }
            let stat = if !with_stat {
                ObjectStat { size: 0, modified_ns: 0 }
            } else if entry.metadata().last_modified().is_some() {
                stat_of(path, entry.metadata())?
            } else {
                match self.stat(path) {
                    Ok(s) => s,
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e),
                }
            };
            out.push((path.to_string(), stat));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporary(e: &String) -> bool {
        e == "reset"
    }

    #[test]
    fn only_names_that_are_hashes_are_content_named() {
        let hash = "ab".repeat(32);
        assert!(content_named(&format!("packs/ab/{hash}")));
        assert!(content_named(&format!("index/{hash}")));
        assert!(content_named(&hash));
        assert!(!content_named(&format!("sessions/{}", "ab".repeat(16))));
        assert!(!content_named(&format!("packs/ab/{}", "AB".repeat(32))));
        assert!(!content_named(&format!("index/{hash}0")));
        assert!(!content_named("config"));
    }

    #[test]
    fn a_hedge_that_finds_nothing_answers_without_waiting_for_the_stuck_first() {
        // "not found" is an answer: the stuck first request is not waited for.
        let made = std::sync::atomic::AtomicU32::new(0);
        let r: Result<Result<u32, String>, _> = runtime().block_on(async {
            let make = || {
                let n = made.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        std::future::pending::<()>().await;
                    }
                    Err("not found".to_string())
                }
            };
            tokio::time::timeout(Duration::from_secs(5), hedged(Duration::from_millis(50), make, temporary)).await
        });
        assert_eq!(r.expect("answered"), Err("not found".to_string()));
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn a_stuck_read_is_sent_again_and_the_first_answer_wins() {
        // The first request never answers (a connection in retransmission backoff): the
        // second, sent after the hedge delay, answers.
        let made = std::sync::atomic::AtomicU32::new(0);
        let t = std::time::Instant::now();
        let r: Result<u32, String> = runtime()
            .block_on(async {
                let make = || {
                    let n = made.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n == 0 {
                            std::future::pending::<()>().await;
                        }
                        Ok(n)
                    }
                };
                tokio::time::timeout(Duration::from_secs(5), hedged(Duration::from_millis(50), make, temporary)).await
            })
            .expect("the hedge answered");
        assert_eq!(r, Ok(1));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[test]
    fn a_third_copy_goes_when_two_are_stuck_and_no_more() {
        // Under heavy loss the second copy may sit in SYN backoff too.
        let made = std::sync::atomic::AtomicU32::new(0);
        let r: Result<u32, String> = runtime()
            .block_on(async {
                let make = || {
                    let n = made.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n < 2 {
                            std::future::pending::<()>().await;
                        }
                        Ok(n)
                    }
                };
                tokio::time::timeout(Duration::from_secs(5), hedged(Duration::from_millis(20), make, temporary)).await
            })
            .expect("the third copy answered");
        assert_eq!(r, Ok(2));
        // All stuck: three copies, then waiting (the stall timeout above ends it).
        let made = std::sync::atomic::AtomicU32::new(0);
        let stuck = runtime().block_on(async {
            let make = || {
                made.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<Result<u32, String>>()
            };
            tokio::time::timeout(Duration::from_millis(500), hedged(Duration::from_millis(10), make, temporary)).await
        });
        assert!(stuck.is_err());
        assert_eq!(made.load(Ordering::SeqCst), HEDGE_COPIES);
    }

    #[test]
    fn a_prompt_read_is_sent_once_and_a_failed_hedge_waits_for_the_other() {
        let made = std::sync::atomic::AtomicU32::new(0);
        let r: Result<u32, String> = runtime().block_on(hedged(
            Duration::from_secs(5),
            || {
                made.fetch_add(1, Ordering::SeqCst);
                async { Ok(7) }
            },
            temporary,
        ));
        assert_eq!((r, made.load(Ordering::SeqCst)), (Ok(7), 1));
        // The second fails at once; the slow first still answers.
        let made = std::sync::atomic::AtomicU32::new(0);
        let r: Result<u32, String> = runtime().block_on(hedged(
            Duration::from_millis(20),
            || {
                let n = made.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok(0)
                    } else {
                        Err("reset".to_string())
                    }
                }
            },
            temporary,
        ));
        assert_eq!(r, Ok(0));
        // Both fail: the first error.
        let r: Result<u32, String> =
            runtime().block_on(hedged(Duration::from_millis(1), || async { Err("reset".to_string()) }, temporary));
        assert_eq!(r, Err("reset".to_string()));
    }

    #[test]
    fn the_stall_timeout_lengthens_after_timeouts_and_shortens_after_calm() {
        // Made without connecting: SFTP connects on the first request.
        let url = RemoteUrl::parse("sftp://me@127.0.0.1:1/x").unwrap().unwrap();
        let options = RemoteOptions { stall_timeout: Duration::from_secs(2), ..RemoteOptions::default() };
        let b = RemoteBackend::new(url, options).unwrap();
        assert_eq!(b.stall_timeout_now(), Duration::from_secs(2));
        b.note_outcome(true);
        assert_eq!(b.stall_timeout_now(), Duration::from_secs(4), "one timeout: twice as long");
        for _ in 0..5 {
            b.note_outcome(true);
        }
        assert_eq!(b.stall_timeout_now(), Duration::from_secs(16), "at most 8 times the option");
        for _ in 0..CALM_STEP - 1 {
            b.note_outcome(false);
        }
        assert_eq!(b.stall_timeout_now(), Duration::from_secs(16), "not before a full run of successes");
        b.note_outcome(false);
        assert_eq!(b.stall_timeout_now(), Duration::from_secs(8), "one step shorter after a calm run");
        b.note_outcome(true);
        assert_eq!(b.stall_timeout_now(), Duration::from_secs(16), "a timeout ends the calm run");
    }

    #[test]
    fn urls_parse() {
        assert_eq!(RemoteUrl::parse("/srv/repo"), None);
        assert_eq!(RemoteUrl::parse("repo"), None);
        assert_eq!(
            RemoteUrl::parse("s3://bucket/some/prefix/"),
            Some(Ok(RemoteUrl::S3 { bucket: "bucket".into(), prefix: "some/prefix".into() }))
        );
        assert_eq!(
            RemoteUrl::parse("s3://bucket"),
            Some(Ok(RemoteUrl::S3 { bucket: "bucket".into(), prefix: String::new() }))
        );
        assert!(matches!(RemoteUrl::parse("s3:///x"), Some(Err(_))));
        assert_eq!(
            RemoteUrl::parse("sftp://me@nas.local:2222/srv/bakare"),
            Some(Ok(RemoteUrl::Sftp {
                user: Some("me".into()),
                host: "nas.local".into(),
                port: Some(2222),
                path: "/srv/bakare".into()
            }))
        );
        assert_eq!(
            RemoteUrl::parse("sftp://nas/backups/"),
            Some(Ok(RemoteUrl::Sftp { user: None, host: "nas".into(), port: None, path: "/backups".into() }))
        );
        assert!(matches!(RemoteUrl::parse("sftp://nas"), Some(Err(_))));
        assert!(matches!(RemoteUrl::parse("sftp://nas:x/p"), Some(Err(_))));
        for s in ["s3://b/p", "sftp://u@h:22/a/b", "sftp://h/a"] {
            let Some(Ok(u)) = RemoteUrl::parse(s) else { panic!("{s}") };
            assert_eq!(u.to_string(), s);
        }
    }

    #[test]
    fn temporary_names_sit_beside_the_final_one() {
        let t = temp_name("packs/ab/abcdef");
        assert!(t.starts_with("packs/ab/.tmp-abcdef-"), "{t}");
        assert_ne!(temp_name("config"), temp_name("config"));
    }
}
