//! Real remote stores on loopback for the remote tests, and a TCP proxy that breaks the
//! connections through it.
//!
//! - [`Moto`]: moto's S3 server (`moto_server`, Python), one per test, with a bucket.
//! - [`Sshd`]: Debian's OpenSSH server on a loopback port, with a generated host key and a
//!   generated client key, serving SFTP.
//! - [`FaultProxy`]: forwards a loopback port to a server, injecting resets, stalls,
//!   truncated answers, dropped connections and black-hole windows, each chosen per
//!   connection by a seeded generator.
//!
//! `.ci/run` installs moto and openssh-server and sets `BAKARE_REMOTE_TESTS=require`, so that
//! a missing server fails the run; elsewhere a test without its server says so and passes.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::Rng;

/// Whether a missing server fails the test (`BAKARE_REMOTE_TESTS=require`, set by CI).
pub fn required() -> bool {
    std::env::var("BAKARE_REMOTE_TESTS").is_ok_and(|v| v == "require")
}

/// A free loopback port (bound, then released: a race with other processes is possible but
/// harmless here).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits (bounded) until `port` accepts; false if the server exited first (its port was
/// taken, say).
fn wait_for_port(port: u16, child: &mut Child, what: &str) -> bool {
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!("{what} exited at start: {status}");
            return false;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{what} did not listen on {port} within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// The file `name` in a folder of PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// Says why a remote test cannot run; fails instead when CI requires the servers.
pub fn skip(why: &str) {
    assert!(!required(), "BAKARE_REMOTE_TESTS=require, but {why}");
    eprintln!("skipping: {why}");
}

/// moto's S3 server on a loopback port, killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
    pub bucket: String,
}

impl Moto {
    /// Starts `moto_server` (from `BAKARE_MOTO` or PATH) and creates bucket `bakare`;
    /// `None` if moto is not installed.
    pub fn start() -> Option<Self> {
        let bin = std::env::var_os("BAKARE_MOTO").map(PathBuf::from).or_else(|| on_path("moto_server"))?;
        // A port released by `free_port` may be taken again by a parallel test before moto
        // binds it: then the bucket is not made, and another port is tried.
        let mut last = 0;
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                // Objects stay in moto's memory (24 GiB here) instead of spilling to temporary
                // files past 5 MiB: the tests' disk use is their own trees, not the server's.
                .env("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", (512u64 << 20).to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            if !wait_for_port(port, &mut child, "moto_server") {
                continue;
            }
            let mut moto = Self { child, port, bucket: "bakare".into() };
            // The port may listen a moment before the application answers.
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(20) {
                if moto.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                last = http_status(port, &format!("PUT /{} HTTP/1.1", moto.bucket));
                if last == 200 {
                    return Some(moto);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            drop(moto);
        }
        panic!("moto_server did not create a bucket (last status {last})");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a bakare command needs to reach `endpoint` (this server, or a proxy
    /// in front of it).
    pub fn env(endpoint: &str) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            // No profile files of the machine running the tests.
            ("AWS_CONFIG_FILE", "/nonexistent"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status code of one bodiless HTTP request line sent to a loopback port.
fn http_status(port: u16, request_line: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return 0 };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let sent = write!(s, "{request_line}\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    if sent.is_err() {
        return 0;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// OpenSSH's sshd on a loopback port serving SFTP to a generated key, killed on drop.
pub struct Sshd {
    child: Child,
    pub port: u16,
    /// The client's private key file.
    pub key: PathBuf,
    /// A folder for repositories (`sftp://root@127.0.0.1:port/<root>/...`).
    pub root: PathBuf,
}

impl Sshd {
    /// Starts `/usr/sbin/sshd` with keys made in `dir`; `None` if sshd is not installed.
    pub fn start(dir: &Path) -> Option<Self> {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"].into_iter().map(PathBuf::from).find(|p| p.is_file())?;
        std::fs::create_dir_all(dir).unwrap();
        // sshd insists on its privilege-separation folder.
        let _ = std::fs::create_dir_all("/run/sshd");
        for key in ["host", "client"] {
            let _ = std::fs::remove_file(dir.join(key));
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key))
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ssh-keygen failed");
        }
        std::fs::copy(dir.join("client.pub"), dir.join("authorized_keys")).unwrap();
        let port = free_port();
        let d = dir.display();
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 Subsystem sftp internal-sftp\nMaxStartups 128\n"
            ),
        )
        .unwrap();
        let mut child = Command::new(sshd)
            .arg("-D")
            .arg("-f")
            .arg(dir.join("sshd_config"))
            .arg("-E")
            .arg(dir.join("sshd.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        assert!(wait_for_port(port, &mut child, "sshd"), "sshd did not start: see {}", dir.join("sshd.log").display());
        let root = dir.join("srv");
        std::fs::create_dir_all(&root).unwrap();
        Some(Self { child, port, key: dir.join("client"), root })
    }

    /// The environment a bakare command needs: the key, and any host key accepted (the
    /// host key is new each run).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("BAKARE_SFTP_KEY".to_string(), self.key.to_string_lossy().into_owned()),
            ("BAKARE_SFTP_KNOWN_HOSTS".to_string(), "accept".to_string()),
        ]
    }

    /// A repository URL under the served folder, reached at `port` (this server's, or a
    /// proxy's).
    pub fn url(&self, port: u16, name: &str) -> String {
        format!("sftp://root@127.0.0.1:{port}{}/{name}", self.root.display())
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A bakare killed with -9 leaves its ssh ControlMaster (`ControlPersist=yes`, started
        // by OpenDAL's openssh) running; they name this run's key file.
        let _ = Command::new("pkill").arg("-f").arg(&self.key).stderr(Stdio::null()).status();
    }
}

/// What a [`FaultProxy`] does to the connections through it: each new connection gets at
/// most one fault, with these chances (in percent), at a random point of its traffic.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Closed with a TCP reset after some bytes.
    pub reset: u32,
    /// Forwarding pauses for [`Faults::stall`] after some bytes.
    pub stall_pct: u32,
    pub stall: Duration,
    /// The server's answer is cut after some bytes (a clean close: a truncated body).
    pub truncate: u32,
    /// Closed at once, before any byte.
    pub drop: u32,
    /// Answered by the proxy with this HTTP status instead of the server (S3 only): 503
    /// and 429 are the store's "slow down", 403 a refusal.
    pub status_pct: u32,
    pub status: u16,
    /// Faults strike within this many bytes of a connection's traffic.
    pub within: u64,
    /// Every byte reaches the other side this much later, each way (the round trip grows by
    /// twice this), without limiting the throughput: a long link's latency, which `tc netem`
    /// would give where the kernel has it.
    pub delay: Duration,
}

/// What a [`FaultProxy`] did.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub connections: AtomicU64,
    pub resets: AtomicU64,
    pub stalls: AtomicU64,
    pub truncations: AtomicU64,
    pub drops: AtomicU64,
    pub statuses: AtomicU64,
    pub bytes: AtomicU64,
}

impl ProxyStats {
    pub fn faults(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
            + self.stalls.load(Ordering::Relaxed)
            + self.truncations.load(Ordering::Relaxed)
            + self.drops.load(Ordering::Relaxed)
            + self.statuses.load(Ordering::Relaxed)
    }

    pub fn summary(&self) -> String {
        format!(
            "{} connections, {} MiB, {} resets, {} stalls, {} truncations, {} drops, {} error answers",
            self.connections.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed) >> 20,
            self.resets.load(Ordering::Relaxed),
            self.stalls.load(Ordering::Relaxed),
            self.truncations.load(Ordering::Relaxed),
            self.drops.load(Ordering::Relaxed),
            self.statuses.load(Ordering::Relaxed)
        )
    }
}

struct Shared {
    target: SocketAddr,
    faults: Mutex<Faults>,
    /// Accepts connections and forwards nothing (100 % loss).
    blackhole: AtomicBool,
    stop: AtomicBool,
    stats: ProxyStats,
    rng: Mutex<Rng>,
}

/// A TCP proxy on a loopback port that injects [`Faults`]; stops on drop. Every loop in it
/// polls the stop flag, so nothing outlives the test.
pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<std::thread::JoinHandle<()>>,
}

/// How a connection's faults play out.
#[derive(Clone, Copy, Debug)]
enum Plan {
    Clean,
    Reset(u64),
    Stall(u64, Duration),
    Truncate(u64),
    Status(u16),
}

impl FaultProxy {
    pub fn start(target_port: u16, faults: Faults, seed: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            target: SocketAddr::from(([127, 0, 0, 1], target_port)),
            faults: Mutex::new(faults),
            blackhole: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            stats: ProxyStats::default(),
            rng: Mutex::new(Rng::new(seed)),
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let s = s.clone();
                        std::thread::spawn(move || serve(&s, client));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { port, shared, accept: Some(accept) }
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap() = faults;
    }

    /// While on, every connection (new and open) forwards nothing: a 100 % loss window.
    pub fn set_blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::Relaxed);
    }

    pub fn stats(&self) -> &ProxyStats {
        &self.shared.stats
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn serve(s: &Arc<Shared>, client: TcpStream) {
    s.stats.connections.fetch_add(1, Ordering::Relaxed);
    let _ = client.set_nonblocking(false);
    let plan = {
        let f = *s.faults.lock().unwrap();
        let mut rng = s.rng.lock().unwrap();
        let roll = rng.below(100) as u32;
        let at = if f.within == 0 { 0 } else { rng.next_u64() % f.within };
        if roll < f.drop {
            None
        } else if roll < f.drop + f.reset {
            Some(Plan::Reset(at))
        } else if roll < f.drop + f.reset + f.stall_pct {
            Some(Plan::Stall(at, f.stall))
        } else if roll < f.drop + f.reset + f.stall_pct + f.truncate {
            Some(Plan::Truncate(at))
        } else if roll < f.drop + f.reset + f.stall_pct + f.truncate + f.status_pct {
            Some(Plan::Status(f.status))
        } else {
            Some(Plan::Clean)
        }
    };
    let Some(plan) = plan else {
        s.stats.drops.fetch_add(1, Ordering::Relaxed);
        reset(&client);
        return;
    };
    if let Plan::Status(code) = plan {
        s.stats.statuses.fetch_add(1, Ordering::Relaxed);
        answer_status(client, code);
        return;
    }
    let Ok(server) = TcpStream::connect_timeout(&s.target, Duration::from_secs(5)) else {
        reset(&client);
        return;
    };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { return };
    // Bytes through both directions of this connection, for the fault's trigger point.
    let moved = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let up = {
        let (s, moved, done) = (s.clone(), moved.clone(), done.clone());
        std::thread::spawn(move || pump(&s, c2, s2, plan, &moved, &done, false))
    };
    pump(s, server, client, plan, &moved, &done, true);
    let _ = up.join();
}

/// Copies `from` to `to` until either closes, the proxy stops or the plan strikes.
fn pump(
    s: &Shared,
    mut from: TcpStream,
    mut to: TcpStream,
    plan: Plan,
    moved: &AtomicU64,
    done: &AtomicBool,
    answers: bool,
) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 64 << 10];
    let mut stalled = false;
    // With a delay, a writer thread hands each piece on `delay` after it was read: bytes in
    // flight pile up in the channel as they would on a long wire.
    let delay = s.faults.lock().unwrap().delay;
    let (late, writer) = match (delay.is_zero(), to.try_clone()) {
        (false, Ok(mut out)) => {
            let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
            let h = std::thread::spawn(move || {
                for (read_at, piece) in rx {
                    std::thread::sleep((read_at + delay).saturating_duration_since(Instant::now()));
                    if out.write_all(&piece).is_err() {
                        break;
                    }
                }
            });
            (Some(tx), Some(h))
        }
        _ => (None, None),
    };
    loop {
        if s.stop.load(Ordering::Relaxed) || done.load(Ordering::Relaxed) {
            // The other direction ended (or reset) the connection: closing is its part.
            return;
        }
        if s.blackhole.load(Ordering::Relaxed) {
            // Swallow what arrives and forward nothing.
            let _ = from.read(&mut buf);
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        let before = moved.fetch_add(n as u64, Ordering::Relaxed);
        let after = before + n as u64;
        s.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
        match plan {
            Plan::Reset(at) if after > at => {
                if !done.swap(true, Ordering::Relaxed) {
                    s.stats.resets.fetch_add(1, Ordering::Relaxed);
                }
                reset(&from);
                reset(&to);
                return;
            }
            Plan::Truncate(at) if answers && after > at => {
                let keep = usize::try_from(at.saturating_sub(before)).unwrap_or(n).min(n);
                let _ = to.write_all(&buf[..keep]);
                if !done.swap(true, Ordering::Relaxed) {
                    s.stats.truncations.fetch_add(1, Ordering::Relaxed);
                }
                let _ = to.shutdown(Shutdown::Both);
                let _ = from.shutdown(Shutdown::Both);
                return;
            }
            Plan::Stall(at, pause) if !stalled && after > at => {
                stalled = true;
                s.stats.stalls.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                while t.elapsed() < pause && !s.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            _ => {}
        }
        let delivered = match &late {
            Some(tx) => tx.send((Instant::now(), buf[..n].to_vec())).is_ok(),
            None => to.write_all(&buf[..n]).is_ok(),
        };
        if !delivered {
            break;
        }
    }
    // What is still on its way arrives before the close.
    drop(late);
    if let Some(h) = writer {
        let _ = h.join();
    }
    done.store(true, Ordering::Relaxed);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// Closes with a TCP reset (SO_LINGER 0), as a dropped NAT entry or a crashed peer does.
/// Reads a request's head and answers it with `code` in S3's XML error form, then closes.
fn answer_status(mut client: TcpStream, code: u16) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let (reason, s3_code) = match code {
        403 => ("Forbidden", "AccessDenied"),
        429 => ("Too Many Requests", "SlowDown"),
        _ => ("Service Unavailable", "SlowDown"),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{s3_code}</Code><Message>injected</Message></Error>"
    );
    let _ = write!(
        client,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.shutdown(Shutdown::Both);
}

/// The reset is sent when the socket's last handle is dropped, soon after.
fn reset(stream: &TcpStream) {
    let _ = rustix::net::sockopt::set_socket_linger(stream, Some(Duration::ZERO));
}

/// A network namespace of its own whose loopback drops packets at random, in the kernel:
/// an `iptables` rule with the `statistic` match on the namespace's `lo` (both directions
/// of every connection cross it, so a rate of p drops p of the packets each way), and
/// optionally a `tc tbf` bandwidth limit. Servers and bakare run inside it through
/// [`LossyNet::inside`]; the namespace is deleted on drop.
///
/// Needs root, `ip` (iproute2) and `iptables` with the `statistic` match; [`LossyNet::new`]
/// says which is missing instead.
pub struct LossyNet {
    name: String,
}

static NAMESPACES: AtomicU64 = AtomicU64::new(0);

impl LossyNet {
    /// A namespace with its loopback up and no loss yet; `Err` says why one cannot be made.
    /// Namespaces left by a test process that is gone (killed before its drop ran) are
    /// deleted first.
    pub fn new() -> Result<Self, String> {
        Self::clean_stale();
        let name = format!("bakare-loss-{}-{}", std::process::id(), NAMESPACES.fetch_add(1, Ordering::Relaxed));
        run_quiet(&["ip", "netns", "add", &name]).map_err(|e| format!("cannot create a network namespace: {e}"))?;
        let net = Self { name };
        net.exec(&["ip", "link", "set", "lo", "up"])?;
        // The rule once, at rate 0, to learn that iptables and its statistic match work.
        net.set_loss(0.0).map_err(|e| format!("iptables cannot drop at random here: {e}"))?;
        Ok(net)
    }

    /// A namespace for a loss test, or the reason to skip it (a failure instead where CI
    /// requires the remote tests: `.ci/run` installs iptables).
    pub fn for_test() -> Option<Self> {
        match Self::new() {
            Ok(net) => Some(net),
            Err(why) => {
                skip(&why);
                None
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the `bakare-loss-PID-N` namespaces whose PID no longer runs, ending what
    /// still runs inside them (servers `ip netns exec` handed over to).
    pub fn clean_stale() {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).stdin(Stdio::null()).output() else { return };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else { continue };
            let Some(pid) = name.strip_prefix("bakare-loss-").and_then(|r| r.split('-').next()) else { continue };
            if pid.parse::<u32>().is_err() || Path::new("/proc").join(pid).exists() {
                continue;
            }
            if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
                for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                    let _ = run_quiet(&["kill", "-9", p]);
                }
            }
            let _ = run_quiet(&["ip", "netns", "del", name]);
        }
    }

    /// Drops each packet on the namespace's loopback with probability `p` (0 to 1) from now
    /// on, replacing the rate before.
    pub fn set_loss(&self, p: f64) -> Result<(), String> {
        self.exec(&["iptables", "-F", "INPUT"])?;
        self.exec(&[
            "iptables",
            "-A",
            "INPUT",
            "-i",
            "lo",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &format!("{p:.4}"),
            "-j",
            "DROP",
        ])
    }

    /// Limits the loopback to `mbit` Mbit/s with a `tc tbf` queue (`Err` where tc or tbf
    /// is missing).
    pub fn set_rate(&self, mbit: u32) -> Result<(), String> {
        let _ = self.exec(&["tc", "qdisc", "del", "dev", "lo", "root"]);
        self.exec(&[
            "tc",
            "qdisc",
            "add",
            "dev",
            "lo",
            "root",
            "tbf",
            "rate",
            &format!("{mbit}mbit"),
            "burst",
            "256kb",
            "latency",
            "100ms",
        ])
    }

    /// Packets the loss rule dropped so far.
    pub fn dropped(&self) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "iptables", "-L", "INPUT", "-v", "-n", "-x"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.lines()
            .filter(|l| l.contains("DROP"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// Bytes sent on the namespace's loopback so far (every byte between the client and
    /// the server, both ways, retransmissions included).
    pub fn bytes_sent(&self) -> u64 {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "cat", "/sys/class/net/lo/statistics/tx_bytes"])
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(0)
    }

    /// Runs `f` on a thread moved into the namespace: sockets it opens, and processes it
    /// starts (they inherit the thread's namespace), are inside. Servers started in `f`
    /// keep running in the namespace after it returns.
    pub fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&fd),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap_or_else(|e| panic!("entering {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run_quiet(&all)
    }
}

impl Drop for LossyNet {
    fn drop(&mut self) {
        let _ = run_quiet(&["ip", "netns", "del", &self.name]);
    }
}

/// Runs a command; `Err` with its error output when it cannot start or fails.
fn run_quiet(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`{}`: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}
