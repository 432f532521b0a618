//! A minimal HTTP/1.1 client over `std::net` for the `graftdb serve` tests and load bench:
//! raw bytes in, status and body out, so malformed requests can be sent as they are.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A response: status code, lower-cased headers and body bytes.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("status {}: body is not JSON ({e}): {}", self.status, String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send one request on a fresh connection (`Connection: close`) and read the whole answer.
/// The body is written from a second thread so a server that answers early (413) and stops
/// reading cannot deadlock us; a write that fails because the server closed is not an error.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    let mut w = s.try_clone()?;
    let payload = [head.as_bytes(), body].concat();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&payload);
    });
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    let _ = writer.join();
    if raw.is_empty() {
        read?;
    }
    parse(&raw)
}

fn parse(raw: &[u8]) -> std::io::Result<Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).ok_or_else(|| bad("no status"))?;
    let headers: Vec<(String, String)> = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    let mut body = raw[end + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(Response { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).ok()?.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(nl + 2..nl + 2 + n)?);
        b = b.get(nl + 4 + n..)?;
    }
}

/// POST a JSON value to `path`.
pub fn post_json(addr: SocketAddr, path: &str, v: &serde_json::Value) -> Response {
    request(addr, "POST", path, v.to_string().as_bytes()).unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// GET `path`.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, b"").unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// A running `graftdb serve` child process, killed on drop.
pub struct Server {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl Server {
    /// Start `graftdb serve DB --addr 127.0.0.1:0 EXTRA...` and wait for its "listening on" line.
    pub fn start(bin: &str, db: &std::path::Path, extra: &[&str]) -> Server {
        use std::io::BufRead;
        let mut child = std::process::Command::new(bin)
            .arg("serve")
            .arg(db)
            .args(["--addr", "127.0.0.1:0"])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start graftdb serve");
        let out = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line).expect("read the listening line");
        let url = line.trim().rsplit(' ').next().unwrap_or_default().trim_start_matches("http://").trim_end_matches('/').to_string();
        let addr: SocketAddr = url.parse().unwrap_or_else(|_| {
            let status = child.try_wait();
            panic!("graftdb serve did not say where it listens (got {line:?}; exit {status:?})")
        });
        Server { child, addr }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
