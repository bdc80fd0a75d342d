//! Real endpoints for notification tests: a small HTTP server and a small SMTP server,
//! each on a thread of the test process, listening on 127.0.0.1 and recording what
//! they are sent. They speak just enough of their protocol for a real client (the
//! router's ureq and lettre) to talk to them over a real TCP connection.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One HTTP request as received.
#[derive(Clone, Debug)]
pub struct HttpRequest {
    /// `POST`, ...
    pub method: String,
    /// The request target.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: BTreeMap<String, String>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// An HTTP server answering every request `200 OK` and keeping it.
pub struct HttpServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    requests: Arc<Mutex<Vec<HttpRequest>>>,
}

impl HttpServer {
    /// Listens on a free port.
    pub fn start() -> HttpServer {
        HttpServer::on(TcpListener::bind("127.0.0.1:0").expect("bind"))
    }

    /// Listens on `port` (one found free earlier: the endpoint "comes up").
    pub fn start_on(port: u16) -> HttpServer {
        HttpServer::on(TcpListener::bind(("127.0.0.1", port)).expect("bind the port again"))
    }

    fn on(listener: TcpListener) -> HttpServer {
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let kept = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || serve_http(conn, kept));
            }
        });
        HttpServer { port, requests }
    }

    /// `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<HttpRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for a request matching `pred`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&HttpRequest) -> bool,
    ) -> Option<HttpRequest> {
        wait(timeout, || self.requests().into_iter().find(|r| pred(r)))
    }
}

fn serve_http(conn: TcpStream, kept: Arc<Mutex<Vec<HttpRequest>>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut out = match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    };
    let mut r = BufReader::new(conn);
    loop {
        // As a real server does, answer what is not HTTP (a TLS hello) with a 400.
        match r.fill_buf() {
            Ok(b) if b.first().is_some_and(|c| c.is_ascii_uppercase()) => {}
            Ok([]) => return,
            _ => {
                let _ = out.write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                return;
            }
        }
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = match (parts.next(), parts.next()) {
            (Some(m), Some(p)) => (m.to_string(), p.to_string()),
            _ => return,
        };
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        kept.lock().unwrap().push(HttpRequest {
            method,
            path,
            headers,
            body,
        });
        if out
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

/// One e-mail as received.
#[derive(Clone, Debug)]
pub struct Mail {
    /// `MAIL FROM` address.
    pub from: String,
    /// `RCPT TO` addresses accepted.
    pub to: Vec<String>,
    /// The message (headers and body), dot-unstuffed.
    pub data: String,
}

/// An SMTP server that takes every message, but refuses the recipients it is told to
/// with `550`.
pub struct SmtpServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    mails: Arc<Mutex<Vec<Mail>>>,
}

impl SmtpServer {
    /// Listens on a free port; `refuse` are recipients answered `550`.
    pub fn start(refuse: &[&str]) -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let kept = mails.clone();
        let refuse: Arc<BTreeSet<String>> =
            Arc::new(refuse.iter().map(|s| s.to_string()).collect());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (kept, refuse) = (kept.clone(), refuse.clone());
                std::thread::spawn(move || {
                    let _ = serve_smtp(conn, &kept, &refuse);
                });
            }
        });
        SmtpServer { port, mails }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every message so far.
    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for a message matching `pred`.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Mail) -> bool) -> Option<Mail> {
        wait(timeout, || self.mails().into_iter().find(|m| pred(m)))
    }
}

fn address(arg: &str) -> String {
    let a = arg.split_once(':').map_or(arg, |(_, a)| a).trim();
    a.trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or("")
        .to_string()
}

fn serve_smtp(
    conn: TcpStream,
    kept: &Mutex<Vec<Mail>>,
    refuse: &BTreeSet<String>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut out = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    out.write_all(b"220 test-smtp ready\r\n")?;
    let (mut from, mut to) = (String::new(), Vec::new());
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end();
        let verb = cmd
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply: String = match verb.as_str() {
            "EHLO" | "HELO" => "250 test-smtp\r\n".into(),
            "MAIL" => {
                from = address(cmd);
                to.clear();
                "250 ok\r\n".into()
            }
            "RCPT" => {
                let a = address(cmd);
                if refuse.contains(&a) {
                    format!("550 5.1.1 <{a}>: mailbox unavailable\r\n")
                } else {
                    to.push(a);
                    "250 ok\r\n".into()
                }
            }
            "DATA" => {
                out.write_all(b"354 end with <CRLF>.<CRLF>\r\n")?;
                let mut data = String::new();
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l)? == 0 {
                        return Ok(());
                    }
                    if l.trim_end_matches(['\r', '\n']) == "." {
                        break;
                    }
                    data.push_str(l.strip_prefix('.').unwrap_or(&l));
                }
                kept.lock().unwrap().push(Mail {
                    from: from.clone(),
                    to: std::mem::take(&mut to),
                    data,
                });
                "250 queued\r\n".into()
            }
            "RSET" | "NOOP" => "250 ok\r\n".into(),
            "QUIT" => {
                out.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => "502 not implemented\r\n".into(),
        };
        out.write_all(reply.as_bytes())?;
    }
}

/// A TCP listener that accepts connections and never answers on them: an endpoint
/// that hangs. Returns its port; it lives as long as the test process.
pub fn hanging_listener() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    port
}

/// A port on 127.0.0.1 that nothing listens on (it was free a moment ago).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
