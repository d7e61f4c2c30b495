//! Raw HTTP over TCP, and a TCP proxy a test can cut.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
pub enum Framing {
    ContentLength,
    Chunked,
}

/// POST over a raw TCP connection, writing the body from another task while the
/// response is read, so an early answer is seen even if the server stops reading.
pub async fn raw_post(
    address: &str,
    path: &str,
    headers: &str,
    body: &[u8],
    framing: Framing,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = address.trim_start_matches("http://").to_owned();
    let stream = TcpStream::connect(&host).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let length = match framing {
        Framing::ContentLength => format!("content-length: {}\r\n", body.len()),
        Framing::Chunked => "transfer-encoding: chunked\r\n".to_owned(),
    };
    let mut request = format!("POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n{length}{headers}\r\n").into_bytes();
    match framing {
        Framing::ContentLength => request.extend_from_slice(body),
        Framing::Chunked => {
            for chunk in body.chunks(10 * 1024) {
                request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                request.extend_from_slice(chunk);
                request.extend_from_slice(b"\r\n");
            }
            request.extend_from_slice(b"0\r\n\r\n");
        }
    }
    // The server may close before the whole body is written: that is the point.
    tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
    });
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&response).into_owned();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let wanted = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .expect("content-length in the response");
            if rest.len() >= wanted {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, serde_json::from_str(&rest[..wanted]).unwrap());
            }
        }
        let n = reader.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before a full response: {text}");
        response.extend_from_slice(&buf[..n]);
    }
}

// A TCP proxy in front of PostgreSQL that a test can cut, to stand for a database outage.

pub struct CuttableProxy {
    pub port: u16,
    cut: CancellationToken,
    /// Accept, then close at once: a pooler or proxy whose database is down.
    refuse: Arc<AtomicBool>,
    /// Ends the proxied connections open when refusing starts.
    open: CancellationToken,
}

impl CuttableProxy {
    pub async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = CancellationToken::new();
        let token = cut.clone();
        let refuse = Arc::new(AtomicBool::new(false));
        let refusing = refuse.clone();
        let open = CancellationToken::new();
        let opened = open.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut inbound, _)) = accepted else {
                    return;
                };
                if refusing.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let token = token.clone();
                let opened = opened.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = opened.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Self {
            port,
            cut,
            refuse,
            open,
        }
    }

    /// From now on, accept each connection and close it at once, and cut the open ones.
    pub fn accept_and_close(&self) {
        self.refuse.store(true, Ordering::SeqCst);
        self.open.cancel();
    }

    /// Close the listener and every proxied connection.
    pub fn cut(&self) {
        self.cut.cancel();
    }
}
