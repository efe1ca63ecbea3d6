//! The answers hyper writes by itself, given the JSON body of SPEC §2.
//!
//! A request that cannot be parsed (a broken request line, duplicate or
//! overflowing `Content-Length`, `Transfer-Encoding` with `Content-Length`,
//! a head over the size limit) never reaches the router: hyper answers it
//! on its own with an empty body and closes the connection, and it has no
//! hook to change that answer. So the connection's writes pass through
//! [`JsonErrors`], which recognises such an answer and sends the same
//! status with the JSON body instead. It tells them apart from the
//! router's answers by `x-ferry-protocol`, which the router's middleware
//! puts on every answer it makes and hyper never does.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use ferry_proto::{headers, BadRequest, Reply};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection's stream whose error answers written by hyper itself are
/// replaced by JSON ones (see the module doc).
pub struct JsonErrors<T> {
    inner: T,
    /// A replacement answer still being written, and how much of it is.
    pending: Vec<u8>,
    written: usize,
}

impl<T> JsonErrors<T> {
    pub fn new(inner: T) -> Self {
        JsonErrors {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    /// Writes what is left of a replacement answer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` as written: either replaced by a JSON answer (queued,
    /// and written as far as the socket takes it now) or not at all.
    fn replace(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Option<Poll<io::Result<usize>>> {
        let replacement = rewrite(buf)?;
        self.pending = replacement;
        self.written = 0;
        Some(match self.poll_drain(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // What is not written yet goes out before anything else.
            _ => Poll::Ready(Ok(buf.len())),
        })
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        if let Some(done) = this.replace(cx, buf) {
            return done;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        // hyper queues a response head as one buffer of its own.
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if let Some(done) = this.replace(cx, first) {
                return done;
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The JSON answer that replaces `buf`, when `buf` is the head of an error
/// answer (4xx or 5xx) that the router did not make.
fn rewrite(buf: &[u8]) -> Option<Vec<u8>> {
    let rest = buf
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| buf.strip_prefix(b"HTTP/1.0 "))?;
    let code: u16 = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
    if !(400..600).contains(&code) {
        return None;
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let marker = format!("\r\n{}:", headers::PROTOCOL);
    if buf[..end]
        .to_ascii_lowercase()
        .windows(marker.len())
        .any(|w| w == marker.as_bytes())
    {
        return None;
    }
    let reason = std::str::from_utf8(&rest[3..])
        .ok()
        .and_then(|r| r.split("\r\n").next())
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or("error");
    let reply = if code < 500 {
        Reply::BadRequest {
            error: BadRequest::Invalid,
            detail: format!(
                "malformed HTTP request ({reason}): the request line, a header or the message framing could not be accepted"
            ),
        }
    } else {
        Reply::Internal {
            detail: format!("the connection failed ({reason})"),
        }
    };
    let body = serde_json::to_vec(&reply).ok()?;
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{}: {}\r\n\r\n",
        body.len(),
        headers::PROTOCOL,
        headers::PROTOCOL_VERSION
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_heads_hyper_wrote_and_nothing_else() {
        let ours = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n{}: {}\r\n\r\n{{}}",
            headers::PROTOCOL,
            headers::PROTOCOL_VERSION
        );
        assert!(
            rewrite(ours.as_bytes()).is_none(),
            "the router's own answer"
        );
        assert!(rewrite(b"HTTP/1.1 201 Created\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 100 Continue\r\n\r\n").is_none());
        assert!(
            rewrite(b"{\"status\":\"HTTP/1.1 400\"}").is_none(),
            "a body"
        );
        let out =
            rewrite(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{out}"
        );
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], "bad-request");
        assert_eq!(v["error"], "invalid");
        assert!(v["detail"].as_str().unwrap().contains("Too Large"));
    }
}
