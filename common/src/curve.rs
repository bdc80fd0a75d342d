//! CURVE authentication and encryption for every ZeroMQ socket, set up in one place.
//!
//! A cluster with keys has one CURVE *server*, the router (its API ROUTER and broadcast
//! PUB sockets), and CURVE *clients* (brokers, pipeliners, clients, the dashboard). Every
//! socket constructor takes a [`Security`] and calls [`Security::apply`] before it binds
//! or connects, so a socket cannot forget it. The router checks each client's public key
//! with a ZAP handler ([`ZapHandler`]) against its authorized keys ([`Authorized`]); a
//! refused peer's handshake fails and it gets nothing.
//!
//! Key files (written by `pypelinin keygen PATH`), both UTF-8 text with `#` comments:
//!
//! * the secret file (PATH, mode 0600): `public-key = Z85` and `secret-key = Z85` lines;
//! * the public file (PATH.pub): one bare Z85 key.
//!
//! The two look different on purpose: a public file given where a secret belongs is
//! refused with a message that says so. Keys are 32 bytes, written as 40 Z85 characters.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{error, info, warn};

/// A CURVE key (public or secret): 32 bytes.
pub type Key = [u8; 32];

/// Length of a key in Z85 text.
pub const Z85_KEY_LEN: usize = 40;

/// The endpoint libzmq sends ZAP requests to (fixed by the ZAP specification, 27/ZAP).
pub const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";

/// The first line of a secret key file written by `keygen`.
pub const SECRET_HEADER: &str = "# pypelinin CURVE secret key: keep it private (mode 0600)";
/// The first line of a public key file written by `keygen`.
pub const PUBLIC_HEADER: &str = "# pypelinin CURVE public key";

const Z85_ALPHABET: &[u8] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// Why keys could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum CurveError {
    /// The linked libzmq has no CURVE: asking for keys must never fall back to plaintext.
    #[error("this build's libzmq has no CURVE support, so keys cannot be used; refusing to run unencrypted")]
    Unavailable,
    /// A key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line of a key file is wrong.
    #[error("{path}:{line}: {reason}")]
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A key file is wrong as a whole (a missing line, the wrong kind of file).
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `--router-key` is neither a key nor a readable public key file.
    #[error("router key {given:?}: {reason}")]
    BadRouterKey {
        /// The value given.
        given: String,
        /// What is wrong with it.
        reason: String,
    },
    /// keygen never overwrites a key.
    #[error("{0} already exists: not overwriting a key")]
    Exists(PathBuf),
    /// ZeroMQ refused to set up a socket or the ZAP handler.
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CurveError + '_ {
    move |source| CurveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Fails with [`CurveError::Unavailable`] when libzmq lacks CURVE.
pub fn require_curve() -> Result<(), CurveError> {
    if zmq::has("curve") == Some(true) {
        Ok(())
    } else {
        Err(CurveError::Unavailable)
    }
}

/// Decodes a 40-character Z85 key, saying exactly what is wrong otherwise.
pub fn decode_key(text: &str) -> Result<Key, String> {
    let text = text.trim();
    if text.len() != Z85_KEY_LEN {
        return Err(format!(
            "a CURVE key is {Z85_KEY_LEN} Z85 characters, this one has {}",
            text.chars().count()
        ));
    }
    // Decoded here rather than by libzmq, which turns an out-of-range group into
    // garbage without saying so: each 5 characters are a base-85 number below 2^32,
    // written as 4 bytes, most significant first.
    let mut key = [0u8; 32];
    for (group, out) in text.as_bytes().chunks(5).zip(key.chunks_mut(4)) {
        let mut value: u64 = 0;
        for b in group {
            let Some(digit) = Z85_ALPHABET.iter().position(|a| a == b) else {
                return Err(format!("{:?} is not a Z85 character", *b as char));
            };
            value = value * 85 + digit as u64;
        }
        let value = u32::try_from(value)
            .map_err(|_| "not a valid Z85 key (a group is out of range)".to_string())?;
        out.copy_from_slice(&value.to_be_bytes());
    }
    Ok(key)
}

/// The 40-character Z85 text of a key.
pub fn encode_key(key: &Key) -> String {
    zmq::z85_encode(key).expect("32 bytes is a multiple of 4")
}

/// One process's key pair.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// Shared with peers (the router's goes to every client; a client's to the router's
    /// authorized keys).
    pub public: Key,
    /// Never leaves the process.
    pub secret: Key,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &encode_key(&self.public))
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh random pair.
    pub fn generate() -> Result<KeyPair, CurveError> {
        require_curve()?;
        let pair = zmq::CurveKeyPair::new()?;
        Ok(KeyPair {
            public: pair.public_key,
            secret: pair.secret_key,
        })
    }

    /// Reads a secret key file (see the module docs for the format).
    pub fn load(path: &Path) -> Result<KeyPair, CurveError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let pair = Self::parse(path, &text)?;
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                warn!(
                    path = %path.display(),
                    mode = format!("{mode:o}"),
                    "a secret key file others can read: chmod 600 it"
                );
            }
        }
        Ok(pair)
    }

    fn parse(path: &Path, text: &str) -> Result<KeyPair, CurveError> {
        let (mut public, mut secret) = (None, None);
        let bad = |line: usize, reason: String| CurveError::BadLine {
            path: path.to_path_buf(),
            line,
            reason,
        };
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // Z85 has `=` in its alphabet: a field is recognised by its name.
            let field = |name: &str| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.trim_start().strip_prefix('='))
            };
            if let Some(value) = field("public-key") {
                public = Some(decode_key(value).map_err(|r| bad(n + 1, r))?);
            } else if let Some(value) = field("secret-key") {
                secret = Some(decode_key(value).map_err(|r| bad(n + 1, r))?);
            } else if decode_key(line).is_ok() {
                return Err(bad(
                    n + 1,
                    "a bare key: this is a public key file; pass the secret key file \
                     (the one `pypelinin keygen` wrote without .pub)"
                        .into(),
                ));
            } else {
                return Err(bad(
                    n + 1,
                    "expected `public-key = KEY` or `secret-key = KEY`".into(),
                ));
            }
        }
        let whole = |reason: &str| CurveError::BadFile {
            path: path.to_path_buf(),
            reason: reason.into(),
        };
        let Some(secret) = secret else {
            return Err(whole(if text.contains(PUBLIC_HEADER) {
                "this is a public key file; pass the secret key file (without .pub)"
            } else {
                "no `secret-key = KEY` line (truncated?)"
            }));
        };
        let derived = public_of(&secret)?;
        match public {
            Some(p) if p != derived => Err(whole(
                "its public-key is not the one that belongs to its secret-key (edited?)",
            )),
            _ => Ok(KeyPair {
                public: derived,
                secret,
            }),
        }
    }

    /// The text of this pair's secret key file.
    pub fn secret_file_text(&self) -> String {
        format!(
            "{SECRET_HEADER}\npublic-key = {}\nsecret-key = {}\n",
            encode_key(&self.public),
            encode_key(&self.secret)
        )
    }

    /// The text of this pair's public key file.
    pub fn public_file_text(&self) -> String {
        format!("{PUBLIC_HEADER}\n{}\n", encode_key(&self.public))
    }

    /// Writes the secret file at `path` (mode 0600) and the public one at `path.pub`,
    /// refusing to overwrite either. Returns the public file's path.
    pub fn write(&self, path: &Path) -> Result<PathBuf, CurveError> {
        let public_path = public_path(path);
        for p in [path, public_path.as_path()] {
            if p.exists() {
                return Err(CurveError::Exists(p.to_path_buf()));
            }
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(path).map_err(io_err(path))?;
        f.write_all(self.secret_file_text().as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(io_err(path))?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&public_path)
            .and_then(|mut f| f.write_all(self.public_file_text().as_bytes()))
            .map_err(io_err(&public_path))?;
        Ok(public_path)
    }
}

/// The public key that belongs to `secret` (libzmq's `zmq_curve_public`).
pub fn public_of(secret: &Key) -> Result<Key, CurveError> {
    require_curve()?;
    let secret_text = std::ffi::CString::new(encode_key(secret)).expect("Z85 has no NUL");
    let mut out = [0 as std::ffi::c_char; Z85_KEY_LEN + 1];
    // SAFETY: `out` has room for 40 characters and the NUL libzmq writes; the secret is
    // a NUL-terminated 40-character Z85 string, as the function requires.
    let rc = unsafe { zmq_sys::zmq_curve_public(out.as_mut_ptr(), secret_text.as_ptr()) };
    if rc != 0 {
        return Err(CurveError::Unavailable);
    }
    // SAFETY: libzmq wrote a NUL-terminated string into `out`.
    let text = unsafe { std::ffi::CStr::from_ptr(out.as_ptr()) };
    decode_key(&text.to_string_lossy()).map_err(|reason| CurveError::BadRouterKey {
        given: "derived public key".into(),
        reason,
    })
}

/// `PATH.pub` for a secret key file at `PATH`.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut s = secret.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// Reads a public key file: exactly one key line, comments aside.
pub fn load_public(path: &Path) -> Result<Key, CurveError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let keys = parse_key_lines(path, &text)?;
    match keys.as_slice() {
        [key] => Ok(*key),
        [] => Err(CurveError::BadFile {
            path: path.to_path_buf(),
            reason: "no key in it".into(),
        }),
        _ => Err(CurveError::BadFile {
            path: path.to_path_buf(),
            reason: format!("{} keys; a public key file holds one", keys.len()),
        }),
    }
}

/// Keys one a line; blank lines and `#` comments skipped; any other line is an error
/// naming `path:line`.
fn parse_key_lines(path: &Path, text: &str) -> Result<Vec<Key>, CurveError> {
    let mut keys = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = if line.starts_with("secret-key") || line.starts_with("public-key") {
            Err("this is a secret key file, not a public key".to_string())
        } else {
            decode_key(line)
        };
        keys.push(key.map_err(|reason| CurveError::BadLine {
            path: path.to_path_buf(),
            line: n + 1,
            reason,
        })?);
    }
    Ok(keys)
}

/// `--router-key`'s value: a Z85 key, or the path of a public key file.
pub fn parse_router_key(given: &str) -> Result<Key, CurveError> {
    let path = Path::new(given);
    if path.exists() {
        return load_public(path);
    }
    decode_key(given).map_err(|reason| CurveError::BadRouterKey {
        given: given.to_string(),
        reason: format!("no such file, and not a key: {reason}"),
    })
}

/// Reads authorized keys: a file of keys one a line, or a directory whose `*.pub` files
/// each hold one.
pub fn load_authorized(path: &Path) -> Result<HashSet<Key>, CurveError> {
    if path.is_dir() {
        let mut keys = HashSet::new();
        let entries = std::fs::read_dir(path).map_err(io_err(path))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pub"))
            .collect();
        files.sort();
        for f in files {
            keys.insert(load_public(&f)?);
        }
        Ok(keys)
    } else {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        Ok(parse_key_lines(path, &text)?.into_iter().collect())
    }
}

/// The router's authorized client keys, reloadable, and the keys it already refused.
#[derive(Debug)]
pub struct Authorized {
    source: PathBuf,
    keys: RwLock<HashSet<Key>>,
    refused: Mutex<HashSet<Key>>,
}

impl Authorized {
    /// Loads the keys at `source` (see [`load_authorized`]).
    pub fn load(source: &Path) -> Result<Authorized, CurveError> {
        Ok(Authorized {
            keys: RwLock::new(load_authorized(source)?),
            source: source.to_path_buf(),
            refused: Mutex::new(HashSet::new()),
        })
    }

    /// Number of keys authorized now.
    pub fn len(&self) -> usize {
        self.keys.read().map(|k| k.len()).unwrap_or(0)
    }

    /// Whether no key is authorized.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` may connect.
    pub fn allows(&self, key: &Key) -> bool {
        self.keys.read().map(|k| k.contains(key)).unwrap_or(false)
    }

    /// Reads the source again; on an error the keys in force stay (and the error is
    /// returned for the caller to log).
    pub fn reload(&self) -> Result<usize, CurveError> {
        let fresh = load_authorized(&self.source)?;
        let n = fresh.len();
        if let Ok(mut keys) = self.keys.write() {
            *keys = fresh;
        }
        // A key refused before may be authorized now, or refused again: log it anew.
        if let Ok(mut refused) = self.refused.lock() {
            refused.clear();
        }
        Ok(n)
    }
}

static REFUSED_KEYS: AtomicU64 = AtomicU64::new(0);
static REFUSED_HANDSHAKES: AtomicU64 = AtomicU64::new(0);

/// Refusals by this process's ZAP handler since it started: (distinct keys refused,
/// handshakes refused). Process-wide because libzmq's ZAP endpoint is one per context
/// and a router process runs one router.
pub fn refused_counts() -> (u64, u64) {
    (
        REFUSED_KEYS.load(Ordering::Relaxed),
        REFUSED_HANDSHAKES.load(Ordering::Relaxed),
    )
}

/// How a socket authenticates and encrypts.
#[derive(Clone, Debug, Default)]
pub enum Security {
    /// Plain ZeroMQ, as without keys (anyone who reaches the port is trusted).
    #[default]
    None,
    /// A CURVE client: its own pair and the router's public key.
    Client {
        /// This process's pair.
        keys: KeyPair,
        /// The router's public key.
        server: Key,
    },
    /// The CURVE server (the router): its pair and who may connect.
    Server {
        /// The router's pair.
        keys: KeyPair,
        /// Client keys let in by the ZAP handler.
        authorized: Arc<Authorized>,
    },
}

impl Security {
    /// A client from a secret key file and the router's key (or `.pub` path); `None`
    /// when neither is given. Giving only one of the two is an error.
    pub fn client_from(
        secret: Option<&Path>,
        router_key: Option<&str>,
    ) -> Result<Security, CurveError> {
        match (secret, router_key) {
            (None, None) => Ok(Security::None),
            (Some(secret), Some(router)) => {
                require_curve()?;
                Ok(Security::Client {
                    keys: KeyPair::load(secret)?,
                    server: parse_router_key(router)?,
                })
            }
            (Some(p), None) => Err(CurveError::BadFile {
                path: p.to_path_buf(),
                reason: "--curve-secret needs --router-key (the router's public key)".into(),
            }),
            (None, Some(k)) => Err(CurveError::BadRouterKey {
                given: k.to_string(),
                reason: "--router-key needs --curve-secret (this process's key file)".into(),
            }),
        }
    }

    /// The router's setting from its secret key file and authorized keys; `None` when
    /// neither is given.
    pub fn server_from(
        secret: Option<&Path>,
        authorized: Option<&Path>,
    ) -> Result<Security, CurveError> {
        match (secret, authorized) {
            (None, None) => Ok(Security::None),
            (Some(secret), Some(authorized)) => {
                require_curve()?;
                Ok(Security::Server {
                    keys: KeyPair::load(secret)?,
                    authorized: Arc::new(Authorized::load(authorized)?),
                })
            }
            (Some(p), None) => Err(CurveError::BadFile {
                path: p.to_path_buf(),
                reason: "--curve-secret needs --authorized-keys on the router".into(),
            }),
            (None, Some(p)) => Err(CurveError::BadFile {
                path: p.to_path_buf(),
                reason: "--authorized-keys needs --curve-secret (the router's key file)".into(),
            }),
        }
    }

    /// Whether keys are in use.
    pub fn is_curve(&self) -> bool {
        !matches!(self, Security::None)
    }

    /// What a client inside the router's own process uses (the dashboard): the router's
    /// own pair, which its ZAP handler always lets in. `None` stays `None`.
    pub fn own_client(&self) -> Security {
        match self {
            Security::Server { keys, .. } => Security::Client {
                keys: keys.clone(),
                server: keys.public,
            },
            other => other.clone(),
        }
    }

    /// Sets `socket` up for this mode; call before `bind` or `connect`.
    pub fn apply(&self, socket: &zmq::Socket) -> Result<(), zmq::Error> {
        match self {
            Security::None => Ok(()),
            Security::Client { keys, server } => {
                socket.set_curve_serverkey(server)?;
                socket.set_curve_publickey(&keys.public)?;
                socket.set_curve_secretkey(&keys.secret)
            }
            Security::Server { keys, .. } => {
                socket.set_curve_server(true)?;
                socket.set_curve_secretkey(&keys.secret)?;
                socket.set_zap_domain("pypelinin")
            }
        }
    }
}

/// The router's ZAP handler: a thread answering libzmq's key checks for every CURVE
/// server socket of one context. Stops when dropped.
pub struct ZapHandler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ZapHandler {
    /// Binds [`ZAP_ENDPOINT`] on `ctx` (before any CURVE server socket binds, or libzmq
    /// would let peers in unchecked) and answers from a thread. `own` (the router's
    /// public key) is always allowed, for the dashboard in the router's process. SIGHUP
    /// reloads the authorized keys.
    pub fn start(
        ctx: &zmq::Context,
        authorized: Arc<Authorized>,
        own: Key,
    ) -> Result<ZapHandler, CurveError> {
        let socket = ctx.socket(zmq::REP)?;
        socket.set_linger(0)?;
        socket.bind(ZAP_ENDPOINT)?;
        let stop = Arc::new(AtomicBool::new(false));
        let hup = Arc::new(AtomicBool::new(false));
        #[cfg(unix)]
        if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone()) {
            warn!(error = %e, "no SIGHUP reload of authorized keys");
        }
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("zap".into())
            .spawn(move || serve_zap(socket, &authorized, own, &flag, &hup))
            .map_err(|e| CurveError::Io {
                path: PathBuf::from(ZAP_ENDPOINT),
                source: e,
            })?;
        Ok(ZapHandler {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ZapHandler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const ZAP_POLL: Duration = Duration::from_millis(100);

fn serve_zap(
    socket: zmq::Socket,
    authorized: &Authorized,
    own: Key,
    stop: &AtomicBool,
    hup: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        if hup.swap(false, Ordering::Relaxed) {
            match authorized.reload() {
                Ok(n) => {
                    info!(keys = n, source = %authorized.source.display(), "authorized keys reloaded")
                }
                Err(e) => {
                    error!(error = %e, "authorized keys not reloaded; the previous keys stay")
                }
            }
        }
        let mut items = [socket.as_poll_item(zmq::POLLIN)];
        match crate::transport::poll(&mut items, ZAP_POLL.as_millis() as i64) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) => {
                error!(error = %e, "ZAP handler stopped: every CURVE handshake will now fail");
                return;
            }
        }
        let Ok(request) = socket.recv_multipart(0) else {
            continue;
        };
        let reply = zap_answer(&request, authorized, own);
        if let Err(e) = socket.send_multipart(reply, 0) {
            warn!(error = %e, "ZAP reply not sent");
        }
    }
}

/// The reply to one ZAP request (frames: version, request id, domain, address,
/// identity, mechanism, credentials...).
fn zap_answer(request: &[Vec<u8>], authorized: &Authorized, own: Key) -> Vec<Vec<u8>> {
    let id = request.get(1).cloned().unwrap_or_default();
    let answer = |code: &str, text: &str| {
        vec![
            b"1.0".to_vec(),
            id.clone(),
            code.as_bytes().to_vec(),
            text.as_bytes().to_vec(),
            Vec::new(),
            Vec::new(),
        ]
    };
    if request.len() < 7 || request[0] != b"1.0" {
        return answer("500", "malformed ZAP request");
    }
    if request[5] != b"CURVE" {
        return answer("400", "CURVE only");
    }
    let Ok(key) = <Key>::try_from(request[6].as_slice()) else {
        return answer("400", "bad CURVE credentials");
    };
    if key == own || authorized.allows(&key) {
        return answer("200", "OK");
    }
    REFUSED_HANDSHAKES.fetch_add(1, Ordering::Relaxed);
    let first = authorized
        .refused
        .lock()
        .map(|mut r| r.insert(key))
        .unwrap_or(false);
    if first {
        REFUSED_KEYS.fetch_add(1, Ordering::Relaxed);
        warn!(
            key = %encode_key(&key),
            address = %String::from_utf8_lossy(&request[3]),
            "refused a CURVE key that is not authorized (logged once per key)"
        );
    }
    answer("400", "key not authorized")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> KeyPair {
        KeyPair::generate().unwrap()
    }

    #[test]
    fn secret_file_round_trips_and_public_file_is_refused_as_secret() {
        let dir = tempfile::tempdir().unwrap();
        let p = pair();
        let path = dir.path().join("k");
        let pub_path = p.write(&path).unwrap();
        assert_eq!(pub_path, dir.path().join("k.pub"));
        assert_eq!(KeyPair::load(&path).unwrap(), p);
        assert_eq!(load_public(&pub_path).unwrap(), p.public);
        let e = KeyPair::load(&pub_path).unwrap_err().to_string();
        assert!(e.contains("public key file"), "{e}");
        // A secret file where a public key belongs is refused too.
        let e = load_public(&path).unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("secret key file"), "{e}");
        // Never overwritten.
        assert!(matches!(p.write(&path), Err(CurveError::Exists(_))));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn truncated_secret_file_names_the_line() {
        let p = pair();
        let text = p.secret_file_text();
        let cut = &text[..text.len() - 10];
        let e = KeyPair::parse(Path::new("s"), cut).unwrap_err().to_string();
        assert!(
            e.starts_with("s:3:") && e.contains("40 Z85 characters"),
            "{e}"
        );
        let first_two: String = text.lines().take(2).collect::<Vec<_>>().join("\n");
        let e = KeyPair::parse(Path::new("s"), &first_two)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no `secret-key"), "{e}");
    }

    #[test]
    fn a_public_key_with_an_equals_sign_is_still_a_public_key() {
        let key = "0000=".repeat(8);
        assert!(decode_key(&key).is_ok());
        let text = format!("{PUBLIC_HEADER}\n{key}\n");
        let e = KeyPair::parse(Path::new("p.pub"), &text)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("p.pub:2:") && e.contains("public key file"),
            "{e}"
        );
        // Out-of-range groups are refused, not decoded to garbage.
        assert!(decode_key(&"#####".repeat(8))
            .unwrap_err()
            .contains("out of range"));
    }

    #[test]
    fn the_public_key_is_derived_and_checked() {
        let (p, other) = (pair(), pair());
        assert_eq!(public_of(&p.secret).unwrap(), p.public);
        // Only the secret line: the public key is derived.
        let only = format!("secret-key = {}\n", encode_key(&p.secret));
        assert_eq!(KeyPair::parse(Path::new("s"), &only).unwrap(), p);
        // A public key that belongs to another secret is refused.
        let mixed = format!(
            "public-key = {}\nsecret-key = {}\n",
            encode_key(&other.public),
            encode_key(&p.secret)
        );
        let e = KeyPair::parse(Path::new("s"), &mixed)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not the one that belongs"), "{e}");
    }

    #[test]
    fn keys_decode_strictly() {
        // The Z85 specification's test vector (RFC 32): 8 bytes.
        let mut vector = [0u8; 32];
        vector[..8].copy_from_slice(&[0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B]);
        let text = encode_key(&vector);
        assert!(text.starts_with("HelloWorld"), "{text}");
        assert_eq!(decode_key(&text).unwrap(), vector);
        let p = pair();
        let text = encode_key(&p.public);
        assert_eq!(decode_key(&text).unwrap(), p.public);
        assert!(decode_key(&text[..39]).unwrap_err().contains("has 39"));
        let bad = format!("{}~", &text[..39]);
        assert!(decode_key(&bad).unwrap_err().contains("'~'"));
    }

    #[test]
    fn authorized_file_and_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (pair(), pair());
        let file = dir.path().join("authorized");
        std::fs::write(
            &file,
            format!(
                "# ops\n\n{}\n  {}  \n",
                encode_key(&a.public),
                encode_key(&b.public)
            ),
        )
        .unwrap();
        let keys = load_authorized(&file).unwrap();
        assert!(keys.contains(&a.public) && keys.contains(&b.public) && keys.len() == 2);
        std::fs::write(&file, format!("{}\nnot-a-key\n", encode_key(&a.public))).unwrap();
        let e = load_authorized(&file).unwrap_err().to_string();
        assert!(e.contains("authorized:2:"), "{e}");

        let keys_dir = dir.path().join("keys");
        std::fs::create_dir(&keys_dir).unwrap();
        a.write(&keys_dir.join("a")).unwrap();
        b.write(&keys_dir.join("b")).unwrap();
        let keys = load_authorized(&keys_dir).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&a.public) && keys.contains(&b.public));
    }

    #[test]
    fn reload_replaces_keys_and_keeps_them_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (pair(), pair());
        let file = dir.path().join("authorized");
        std::fs::write(&file, encode_key(&a.public)).unwrap();
        let auth = Authorized::load(&file).unwrap();
        assert!(auth.allows(&a.public) && !auth.allows(&b.public));
        std::fs::write(&file, encode_key(&b.public)).unwrap();
        assert_eq!(auth.reload().unwrap(), 1);
        assert!(!auth.allows(&a.public) && auth.allows(&b.public));
        std::fs::write(&file, "junk").unwrap();
        assert!(auth.reload().is_err());
        assert!(auth.allows(&b.public));
    }

    #[test]
    fn router_key_is_a_key_or_a_pub_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = pair();
        let pub_path = p.write(&dir.path().join("r")).unwrap();
        assert_eq!(parse_router_key(&encode_key(&p.public)).unwrap(), p.public);
        assert_eq!(
            parse_router_key(pub_path.to_str().unwrap()).unwrap(),
            p.public
        );
        let e = parse_router_key("/no/such/router.pub")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such file"), "{e}");
    }

    #[test]
    fn zap_answers() {
        let dir = tempfile::tempdir().unwrap();
        let (own, ok, stranger) = (pair(), pair(), pair());
        let file = dir.path().join("authorized");
        std::fs::write(&file, encode_key(&ok.public)).unwrap();
        let auth = Authorized::load(&file).unwrap();
        let req = |mech: &[u8], cred: &[u8]| {
            vec![
                b"1.0".to_vec(),
                b"7".to_vec(),
                b"pypelinin".to_vec(),
                b"127.0.0.1".to_vec(),
                Vec::new(),
                mech.to_vec(),
                cred.to_vec(),
            ]
        };
        let code = |r: Vec<Vec<u8>>| String::from_utf8(r[2].clone()).unwrap();
        assert_eq!(
            code(zap_answer(&req(b"CURVE", &ok.public), &auth, own.public)),
            "200"
        );
        assert_eq!(
            code(zap_answer(&req(b"CURVE", &own.public), &auth, own.public)),
            "200"
        );
        let before = refused_counts();
        assert_eq!(
            code(zap_answer(
                &req(b"CURVE", &stranger.public),
                &auth,
                own.public
            )),
            "400"
        );
        assert_eq!(
            code(zap_answer(
                &req(b"CURVE", &stranger.public),
                &auth,
                own.public
            )),
            "400"
        );
        let after = refused_counts();
        // Other tests in this binary may refuse keys concurrently: at least ours counted.
        assert!(after.0 > before.0 && after.1 >= before.1 + 2);
        assert_eq!(
            code(zap_answer(&req(b"PLAIN", b"x"), &auth, own.public)),
            "400"
        );
        assert_eq!(
            code(zap_answer(&[b"1.0".to_vec()], &auth, own.public)),
            "500"
        );
        // The request id is echoed.
        assert_eq!(
            zap_answer(&req(b"CURVE", &ok.public), &auth, own.public)[1],
            b"7"
        );
    }
}
