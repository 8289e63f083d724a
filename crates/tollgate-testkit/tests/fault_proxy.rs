//! The fault-injecting proxy cuts, slows and restores a real TCP link.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_testkit::fault_proxy::FaultProxy;

/// An echo server: every byte read is written back.
async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buffer).await {
                    if n == 0 || stream.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn round_trip(stream: &mut TcpStream, text: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(text).await?;
    let mut back = vec![0u8; text.len()];
    tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut back))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    Ok(back)
}

#[tokio::test]
async fn the_link_is_cut_slowed_and_restored() {
    let proxy = FaultProxy::start(echo_server().await).await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut stream, b"hello").await.unwrap(), b"hello");
    assert_eq!(proxy.accepted(), 1);

    // Cut: the open connection ends, new ones are closed at once.
    proxy.cut();
    let mut buffer = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buffer))
        .await
        .expect("the cut ends the connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(round_trip(&mut refused, b"x").await.is_err());

    // Restored: through again.
    proxy.restore();
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut stream, b"again").await.unwrap(), b"again");

    // Slowed: each direction waits.
    proxy.slow(Duration::from_millis(150));
    let started = Instant::now();
    assert_eq!(round_trip(&mut stream, b"slow").await.unwrap(), b"slow");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}
