//! Bounds on connections, so that sockets nobody uses cannot starve the
//! ones that are used: at most `max_connections` open at once (more wait in
//! the kernel's backlog until one closes), a connection that sends nothing
//! within `first_byte` is closed, and one on which no byte moves either way
//! for `idle` is closed too, and a request head must arrive whole within
//! `header` (a client trickling header bytes cannot hold a slot).

use axum::serve::Listener;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Connection limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time a new connection has to send its first byte.
    pub first_byte: Duration,
    /// Time without a byte read or written before a connection is closed.
    pub idle: Duration,
    /// Time a request's head (request line and headers) has to arrive, and
    /// the longest wait for the next request on a kept-alive connection.
    pub header: Duration,
}

/// Serves `app` on `listener` until `stop` changes (or its sender goes),
/// then stops accepting, asks every open connection to finish its current
/// request, and returns once all have closed.
pub async fn serve<L: Listener>(
    mut listener: Bounded<L>,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let header = listener.limits.header;
    let mut connections = tokio::task::JoinSet::new();
    while !*stop.borrow() {
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => break,
        };
        let service = TowerToHyperService::new(app.clone());
        connections.spawn(serve_connection(io, service, header, stop.clone()));
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// One HTTP/1.1 connection, shut down gracefully once `stop` changes.
async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: Timed<S>,
    service: TowerToHyperService<axum::Router>,
    header: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = stop.changed() => connection.as_mut().graceful_shutdown(),
    }
    // Errors here are a client's broken connection: nothing to report.
    let _ = connection.await;
}

/// A listener that hands out [`Timed`] connections under [`Limits`].
pub struct Bounded<L> {
    inner: L,
    limits: Limits,
    slots: Arc<Semaphore>,
}

impl<L> Bounded<L> {
    /// Wraps `inner`; `slots` may be shared by several listeners.
    pub fn new(inner: L, limits: Limits, slots: Arc<Semaphore>) -> Bounded<L> {
        Bounded { inner, limits, slots }
    }
}

impl<L: Listener> Listener for Bounded<L> {
    type Io = Timed<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed, so acquiring only waits.
        let permit = loop {
            if let Ok(permit) = self.slots.clone().acquire_owned().await {
                break permit;
            }
        };
        let (io, addr) = self.inner.accept().await;
        (Timed::new(io, self.limits, permit), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that fails with `TimedOut` once its deadline passes with no
/// traffic; it holds its listener slot until dropped.
pub struct Timed<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl<S> Timed<S> {
    fn new(inner: S, limits: Limits, slot: OwnedSemaphorePermit) -> Timed<S> {
        let deadline = Box::pin(tokio::time::sleep(limits.first_byte));
        Timed { inner, idle: limits.idle, deadline, _slot: slot }
    }

    fn moved(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// A write's outcome: bytes written restart the idle clock; a write
    /// that cannot proceed fails once the deadline passes.
    fn after_write(&mut self, written: Poll<io::Result<usize>>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.expired(cx).map(Err),
        }
    }

    /// `Pending` while the deadline has not passed, else the timeout error.
    fn expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long")),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Timed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.expired(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Timed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, data);
        self.after_write(written, cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(written, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
