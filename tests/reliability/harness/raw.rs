//! A raw HTTP/1.1 upstream on `127.0.0.1:0` that misbehaves on purpose, below what a well-formed
//! server (axum) can be made to do: it never answers, answers garbage, streams a body of any
//! size generated as it goes (never held), sends a gzip bomb, or closes the connection in the
//! middle of a body.
//!
//! Every connection reads the request's head (up to 64 KiB), then acts out its
//! [`Misbehaviour`]. The upstream counts connections accepted, connections open now and the
//! body bytes it managed to write.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the upstream does with each request.
#[derive(Debug, Clone)]
pub enum Misbehaviour {
    /// Reads the request and never answers; holds the connection until the client closes it.
    Silent,
    /// Answers `200` with this content type and these bytes, then closes.
    Garbage {
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// Answers `200` with a body of `size` bytes, generated as it is written (64 KiB at a
    /// time), with `Content-Length` when `declared`, else chunked; stops when the client goes.
    Endless { size: u64, declared: bool },
    /// Answers `200` with `Content-Encoding: gzip`, chunked: a gzip stream of zeros (see
    /// [`gzip_bomb_head`]) of up to `size` bytes on the wire, each of which inflates to 1,032
    /// bytes; stops when the client goes.
    GzipBomb { size: u64 },
    /// Declares `Content-Length: declared`, sends `sent` bytes (fewer) and closes.
    CutShort { declared: u64, sent: u64 },
}

#[derive(Default)]
struct Counters {
    accepted: AtomicUsize,
    open: AtomicUsize,
    sent: AtomicU64,
}

/// A running misbehaving upstream; stopped when dropped.
pub struct RawUpstream {
    pub addr: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl RawUpstream {
    /// Starts an upstream that answers every request with `misbehaviour`.
    pub async fn start(misbehaviour: Misbehaviour) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let counters = Arc::new(Counters::default());
        let shared = counters.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((socket, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let counters = shared.clone();
                let misbehaviour = misbehaviour.clone();
                connections.spawn(async move {
                    counters.open.fetch_add(1, Ordering::SeqCst);
                    serve(socket, &misbehaviour, &counters).await;
                    counters.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        RawUpstream {
            addr,
            counters,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }

    /// Body bytes written so far, over every connection.
    pub fn sent(&self) -> u64 {
        self.counters.sent.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        // Aborting the accept loop drops its `JoinSet`, which aborts every connection.
        self.task.abort();
    }
}

/// Reads the request head; `false` when the client went away first.
async fn read_head(socket: &mut TcpStream) -> bool {
    let mut buf = vec![0u8; 8192];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        if seen.len() > 64 * 1024 {
            return false;
        }
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    true
}

async fn serve(mut socket: TcpStream, misbehaviour: &Misbehaviour, counters: &Counters) {
    if !read_head(&mut socket).await {
        return;
    }
    match misbehaviour {
        Misbehaviour::Silent => {
            // Whatever the client sends next is read and ignored, until it closes.
            let mut buf = vec![0u8; 1024];
            while let Ok(n) = socket.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }
        Misbehaviour::Garbage { content_type, body } => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if socket.write_all(head.as_bytes()).await.is_ok()
                && socket.write_all(body).await.is_ok()
            {
                counters.sent.fetch_add(body.len() as u64, Ordering::SeqCst);
            }
        }
        Misbehaviour::Endless { size, declared } => {
            let framing = match declared {
                true => format!("Content-Length: {size}"),
                false => "Transfer-Encoding: chunked".to_string(),
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n{framing}\r\n\r\n"
            );
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let block: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
            stream(&mut socket, &[], &block, *size, !declared, counters).await;
        }
        Misbehaviour::GzipBomb { size } => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n";
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let zeros = vec![0u8; 64 * 1024];
            stream(
                &mut socket,
                &gzip_bomb_head(),
                &zeros,
                *size,
                true,
                counters,
            )
            .await;
        }
        Misbehaviour::CutShort { declared, sent } => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
            );
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let block = vec![b' '; 64 * 1024];
            stream(&mut socket, &[], &block, *sent, false, counters).await;
            // Dropping the socket closes the connection mid-body.
        }
    }
}

/// Writes `first`, then `block` again and again, `size` bytes in all (chunked when asked, with
/// the last chunk only when all were sent), counting what was written; stops at the first
/// failed write (the client went away).
async fn stream(
    socket: &mut TcpStream,
    first: &[u8],
    block: &[u8],
    size: u64,
    chunked: bool,
    counters: &Counters,
) {
    let mut left = size;
    let mut next: &[u8] = first;
    while left > 0 {
        if next.is_empty() {
            next = block;
        }
        let n = (next.len() as u64).min(left) as usize;
        let piece = &next[..n];
        let written = match chunked {
            true => {
                let mut framed = format!("{n:x}\r\n").into_bytes();
                framed.extend_from_slice(piece);
                framed.extend_from_slice(b"\r\n");
                socket.write_all(&framed).await
            }
            false => socket.write_all(piece).await,
        };
        if written.is_err() {
            return;
        }
        counters.sent.fetch_add(n as u64, Ordering::SeqCst);
        left -= n as u64;
        next = &next[n..];
    }
    if chunked {
        let _ = socket.write_all(b"0\r\n\r\n").await;
    }
}

/// Deflate's bits, least significant first.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u32,
    len: u32,
}

impl Bits {
    /// `n` bits of `value`, least significant first (header fields, extra bits).
    fn put(&mut self, value: u32, n: u32) {
        for i in 0..n {
            self.acc |= ((value >> i) & 1) << self.len;
            self.len += 1;
            if self.len == 8 {
                self.out.push(self.acc as u8);
                self.acc = 0;
                self.len = 0;
            }
        }
    }

    /// A Huffman code of `n` bits, most significant first (RFC 1951 §3.1.1).
    fn code(&mut self, code: u32, n: u32) {
        for i in (0..n).rev() {
            self.put((code >> i) & 1, 1);
        }
    }
}

/// The start of a gzip bomb: the gzip header and a dynamic-Huffman deflate block (RFC 1951
/// §3.2.7) whose literal/length code gives length 258 one bit (`0`) and whose distance code
/// gives distance 1 one bit (`0`), after one literal zero byte. Every zero byte that follows
/// is therefore four copies of 258 zeros: 1,032 bytes inflated per byte sent, the most deflate
/// allows. The block never ends, so a decoder inflates until the sender stops.
pub fn gzip_bomb_head() -> Vec<u8> {
    // Gzip header: magic, deflate, no flags, no time, no extra flags, unknown OS.
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut bits = Bits::default();
    bits.put(0, 1); // BFINAL: not the last block
    bits.put(2, 2); // BTYPE: dynamic Huffman
    bits.put(286 - 257, 5); // HLIT: literal/length codes 0..=285
    bits.put(2 - 1, 5); // HDIST: distance codes 0 and 1
    // Code-length code: symbol 18 (a run of zeros) one bit, symbols 1 and 2 two bits each.
    // Lengths are sent in this order, up to the last one used (symbol 1, the 18th).
    let order = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1];
    bits.put(order.len() as u32 - 4, 4); // HCLEN
    for symbol in order {
        let length = match symbol {
            18 => 1,
            1 | 2 => 2,
            _ => 0,
        };
        bits.put(length, 3);
    }
    // Canonical codes of the code-length code: 18 → `0`, 1 → `10`, 2 → `11`.
    let length = |bits: &mut Bits, l: u32| match l {
        1 => bits.code(0b10, 2),
        2 => bits.code(0b11, 2),
        _ => unreachable!("only lengths 1 and 2 are used"),
    };
    let zeros = |bits: &mut Bits, n: u32| {
        bits.code(0, 1);
        bits.put(n - 11, 7);
    };
    // Literal/length code lengths: 0 → 2, 1..=255 → none, 256 (end) → 2, 257..=284 → none,
    // 285 (length 258) → 1; then distance code lengths: 0 → 1, 1 → 1.
    length(&mut bits, 2);
    zeros(&mut bits, 138);
    zeros(&mut bits, 117);
    length(&mut bits, 2);
    zeros(&mut bits, 28);
    for _ in 0..3 {
        length(&mut bits, 1);
    }
    // Canonical literal/length codes: 285 → `0`, 0 → `10`, 256 → `11`; distances 0 → `0`.
    bits.code(0b10, 2); // the literal zero byte
    // Then length 258 (`0`), distance 1 (`0`), over and over: zero bits. Pad the partial byte
    // with them too.
    while bits.len != 0 {
        bits.put(0, 1);
    }
    out.extend_from_slice(&bits.out);
    out
}
