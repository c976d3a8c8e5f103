//! The relay of a plain (not TLS) download inside the kernel: splice(2) moves the bytes from
//! libunftp's loopback data connection into a pipe and from the pipe into the client's, so they
//! are not copied into the gateway and out again. On a 1 GiB FTP get that saved the gateway
//! 4–11% of its CPU (`bench/README.md`, "FTP downloads spliced in the kernel").
//!
//! Written here rather than taken from a crate: the crates that splice between tokio sockets
//! (tokio-splice, tokio-splice2) copy both directions as one call and end them their own way,
//! while the relay needs one direction alone, with its own end of file, its shutdown, the
//! `sent` signal once the client has everything, and the first error of either direction
//! ending both (see `data::splice_plain`). The system calls go through `nix`'s safe wrappers;
//! nothing here is `unsafe`.

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use std::io;
use std::os::fd::OwnedFd;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// A new pipe's capacity on Linux (16 pages); a pipe smaller than this (the user's pipes are
/// over `fs.pipe-user-pages-soft`, where the kernel gives new pipes 2 pages) is not used: the
/// relay copies instead, as fast as before.
const FIRST: usize = 64 * 1024;
/// What a pipe grows to once a splice has filled it: on a 1 GiB FTP get, 64 KiB steps cost the
/// gateway 8% more CPU than the copying relay, 256 KiB steps 10% less (1 MiB no better).
/// Only the direction that carries the transfer grows.
const GROWN: usize = 256 * 1024;

/// One direction's pipe. Creating one can fail (no file descriptor left, a small pipe): the
/// caller then relays with copies instead.
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
    /// The kernel refused to grow it once: not asked again.
    refused: bool,
}

impl Pipe {
    pub(crate) fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let size = fcntl(&write, FcntlArg::F_GETPIPE_SZ)? as usize;
        if size < FIRST {
            return Err(io::Error::other(format!("a pipe of {size} bytes")));
        }
        Ok(Pipe {
            read,
            write,
            size,
            refused: false,
        })
    }

    /// Grows an empty pipe that a splice filled, once; a refusal (the user's pipe pages are
    /// over `fs.pipe-user-pages-soft`) leaves it as it is.
    fn grow(&mut self) {
        if self.size < GROWN && !self.refused {
            match fcntl(&self.write, FcntlArg::F_SETPIPE_SZ(GROWN as i32)) {
                Ok(n) => self.size = n as usize,
                Err(_) => self.refused = true,
            }
        }
    }
}

/// Moves everything `from` sends to `to` until `from` ends (its FIN), through `pipe`; the
/// number of bytes moved. An error of either socket ends it. The pipe is empty whenever this
/// returns normally; what a cancelled call left in it is lost with the transfer it belonged to.
pub(crate) async fn copy(from: &TcpStream, to: &TcpStream, pipe: &mut Pipe) -> io::Result<u64> {
    // Non-blocking on the pipe's side; the sockets are non-blocking already (tokio's).
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        // The pipe is empty here, so "would block" can only mean that `from` has nothing.
        from.readable().await?;
        let got = from.try_io(Interest::READABLE, || {
            splice(from, None, &pipe.write, None, pipe.size, flags).map_err(io::Error::from)
        });
        let mut left = match got {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        // Half the pipe taken at once counts as full: a page's worth per slot is the least a
        // slot holds, so a busy direction takes about the whole pipe.
        let filled = left * 2 >= pipe.size;
        // Everything taken goes out before more is taken: the pipe is empty before each fill,
        // and an end of file is seen only once all before it was delivered.
        while left > 0 {
            to.writable().await?;
            let sent = to.try_io(Interest::WRITABLE, || {
                splice(&pipe.read, None, to, None, left, flags).map_err(io::Error::from)
            });
            match sent {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    left -= n;
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if filled {
            pipe.grow();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// Every byte arrives, in order, through a receiver slower than the sender (the pipe and
    /// the sockets fill and drain many times), and the copy ends at the sender's end of file.
    #[tokio::test]
    async fn moves_every_byte_and_ends_at_the_end_of_file() {
        let (mut src, from) = pair().await;
        let (to, mut dst) = pair().await;
        let data: Vec<u8> = (0..5 * 1024 * 1024 + 321).map(|_| rand::random()).collect();
        let send = {
            let data = data.clone();
            tokio::spawn(async move {
                src.write_all(&data).await.unwrap();
                src.shutdown().await.unwrap();
            })
        };
        let recv = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 7000];
            loop {
                let n = dst.read(&mut buf).await.unwrap();
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&buf[..n]);
                tokio::task::yield_now().await;
            }
        });
        let mut pipe = Pipe::new().unwrap();
        let n = copy(&from, &to, &mut pipe).await.unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(pipe.size, GROWN, "the busy direction's pipe grew");
        send.await.unwrap();
        // The receiver sees the end only once the relay passes it on.
        socket2::SockRef::from(&to)
            .shutdown(std::net::Shutdown::Write)
            .unwrap();
        let got = recv.await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the bytes differ");
    }

    /// A sender that resets its connection fails the copy: never an end of file, which would
    /// commit a truncated upload.
    #[tokio::test]
    async fn a_reset_is_an_error_not_an_end_of_file() {
        let (src, from) = pair().await;
        let (to, _dst) = pair().await;
        let mut s = src;
        s.write_all(&[7u8; 100_000]).await.unwrap();
        s.set_zero_linger().unwrap();
        drop(s);
        let mut pipe = Pipe::new().unwrap();
        let r = copy(&from, &to, &mut pipe).await;
        assert!(r.is_err(), "a reset was taken for an end of file: {r:?}");
    }

    /// A receiver that has gone fails the copy rather than spinning or waiting forever.
    #[tokio::test]
    async fn a_receiver_that_is_gone_is_an_error() {
        let (mut src, from) = pair().await;
        let (to, dst) = pair().await;
        dst.set_zero_linger().unwrap();
        drop(dst);
        let writer = tokio::spawn(async move {
            let chunk = vec![1u8; 64 * 1024];
            for _ in 0..64 {
                if src.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            src
        });
        let mut pipe = Pipe::new().unwrap();
        let r = copy(&from, &to, &mut pipe).await;
        assert!(r.is_err(), "{r:?}");
        // Closed, so that the writer's next write fails: while `from` stayed open, a writer with
        // more left than the loopback buffers take waited forever (the suite hung here once).
        drop(from);
        drop(writer.await.unwrap());
    }
}
