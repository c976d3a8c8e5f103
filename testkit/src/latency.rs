//! A TCP proxy on loopback that delays each direction by a fixed time without capping
//! bandwidth: what a WAN's round trip adds, for the benchmarks (issue 18 item 1).
//!
//! Every piece read from one side is written to the other `one_way` after it arrived, in
//! order, so a request and its answer cost one round trip (`2 × one_way`) more and a stream
//! keeps its rate. Connection set-up is not delayed (the connection to the target is opened
//! when the client's arrives). The kernel's socket buffers still apply back-pressure: a side
//! that stops reading stops the other after what the queue and the buffers hold.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Bytes in flight per direction at most (the queue between reading and the delayed write):
/// enough for 1 GB/s at 10 ms one way.
const IN_FLIGHT: usize = 16 * 1024 * 1024;

/// A running proxy; stops when dropped.
pub struct LatencyProxy {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LatencyProxy {
    /// Listens on `listen` (a loopback address; port 0 picks one) and forwards every connection
    /// to `target`, each direction `one_way` late.
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        one_way: Duration,
    ) -> std::io::Result<LatencyProxy> {
        assert!(
            listen.ip().is_loopback() && target.ip().is_loopback(),
            "loopback only"
        );
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(delayed(cr, sw, one_way), delayed(sr, cw, one_way));
                });
            }
        });
        Ok(LatencyProxy { addr, task })
    }
}

/// Copies `from` to `to`, each piece `delay` after it was read; the end of `from` reaches `to`
/// as a shutdown, just as late.
async fn delayed(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    // Pieces with the time each is due; the channel carries the byte count back, so reading
    // stops while IN_FLIGHT bytes wait.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Option<Vec<u8>>)>();
    let (room_tx, mut room_rx) = mpsc::unbounded_channel::<usize>();
    let writer = async move {
        while let Some((due, piece)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            let Some(piece) = piece else { break };
            if to.write_all(&piece).await.is_err() {
                return;
            }
            let _ = room_tx.send(piece.len());
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut waiting = 0usize;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            while let Ok(n) = room_rx.try_recv() {
                waiting -= n;
            }
            if waiting >= IN_FLIGHT {
                match room_rx.recv().await {
                    Some(n) => {
                        waiting -= n;
                        continue;
                    }
                    None => return,
                }
            }
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            waiting += n;
            if tx
                .send((Instant::now() + delay, Some(buf[..n].to_vec())))
                .is_err()
            {
                return;
            }
        }
        let _ = tx.send((Instant::now() + delay, None));
    };
    tokio::join!(writer, reader);
}
