//! A TCP proxy that delays every chunk by a fixed time in each direction: a network
//! between the service and its database (Neon is a round trip away), on one machine, for
//! `bench/compare`. Order is kept; bandwidth is not limited; each direction of each
//! connection is a reader that stamps chunks and a writer that sends each one when its
//! time comes, so a delay adds latency, never serialises the connection.
//!
//! Readers and writers are OS threads sleeping with the system's timer: tokio's timer
//! counts whole milliseconds, and with it a round trip "1 ms each way" measured 4.3 ms
//! (`SELECT 1` under pgbench), 5 ms each way 12.5 ms.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

/// Forward every connection to `listener` to `upstream`, each chunk `delay` late. Returns
/// only if accepting fails; connections run on threads of their own.
pub async fn run(
    listener: TcpListener,
    upstream: SocketAddr,
    delay: Duration,
) -> std::io::Result<()> {
    let listener = listener.into_std()?;
    listener.set_nonblocking(false)?;
    let (failed, failure) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let error = loop {
            let client = match listener.accept() {
                Ok((client, _)) => client,
                Err(e) => break e,
            };
            std::thread::spawn(move || connect(client, upstream, delay));
        };
        let _ = failed.send(error);
    });
    Err(failure
        .await
        .unwrap_or_else(|_| std::io::Error::other("the proxy's accept thread panicked")))
}

/// Relay `client` to a new connection to `upstream`, both ways, until either side closes.
fn connect(client: TcpStream, upstream: SocketAddr, delay: Duration) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(client_write), Ok(server_write)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || pipe(client, server_write, delay));
    pipe(server, client_write, delay);
    let _ = up.join();
}

/// One direction: chunks read now are written at now + `delay`.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        for (due, chunk) in rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Bytes arrive intact and in order, each way at least `delay` late.
    #[tokio::test]
    async fn bytes_arrive_intact_and_late() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n]).await.unwrap();
            }
        });
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        let delay = Duration::from_millis(20);
        tokio::spawn(run(proxy, echo_addr, delay));

        let mut c = TcpStream::connect(proxy_addr).await.unwrap();
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let started = std::time::Instant::now();
        let (mut r, mut w) = c.split();
        let (_, received) = tokio::join!(
            async {
                w.write_all(&sent).await.unwrap();
            },
            async {
                let mut got = vec![0u8; sent.len()];
                r.read_exact(&mut got).await.unwrap();
                got
            }
        );
        assert_eq!(received, sent);
        assert!(started.elapsed() >= 2 * delay, "{:?}", started.elapsed());
    }
}
