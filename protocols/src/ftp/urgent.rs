//! The plain control connection, read past TCP's urgent mark.
//!
//! Python's ftplib (`FTP.abort()`) and other clients send `ABOR\r\n` as urgent data. The
//! socket keeps urgent bytes in the stream (`SO_OOBINLINE`, set in `server.rs`), but a read
//! stops at the urgent mark: it returns `ABOR\r` and leaves the final `\n`, which is already
//! there. tokio takes a read shorter than its buffer for a drained socket and waits for the
//! socket's next readiness, which never comes for bytes that have already arrived: the line
//! never ended, the ABOR was never answered, and the client waited until it timed out. So after
//! every read that returned something, this reads on at once, without waiting, until the
//! socket has nothing more to give (one extra system call per read of a command line).

use std::io::{self, Read};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub(crate) struct ReadPastMark {
    io: TcpStream,
    /// The peer's end of stream was met by a read of our own: the next read reports it.
    eof: bool,
}

impl ReadPastMark {
    pub(crate) fn new(io: TcpStream) -> Self {
        ReadPastMark { io, eof: false }
    }
}

impl AsyncRead for ReadPastMark {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.eof {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        if buf.filled().len() == before {
            return Poll::Ready(Ok(())); // the end of the stream
        }
        let mut more = [0u8; 512];
        while buf.remaining() > 0 {
            let want = buf.remaining().min(more.len());
            let sock = socket2::SockRef::from(&self.io);
            match (&*sock).read(&mut more[..want]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => buf.put_slice(&more[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Nothing more now (the usual case), or an error that the next read through
                // tokio reports.
                Err(_) => break,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ReadPastMark {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
