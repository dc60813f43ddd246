//! Request bodies that are uploads (an image tar, a build context, a file):
//! read by a blocking consumer, and read to their end whatever the consumer
//! did with them.
//!
//! A handler may answer before it has read the whole body: the image is
//! refused on its first bytes because the disk is full, the token is wrong,
//! the tar ends before its padding. HTTP/1 servers then close the connection,
//! and a client still sending sees a broken pipe instead of the answer. So
//! the rest of the body is read and thrown away before the answer goes out,
//! up to [`DRAIN_BYTES`] bytes and [`DRAIN_TIME`]: a client sending more, or
//! slower, than that gets the closed connection after all.

use std::io;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::io::{StreamReader, SyncIoBridge};

/// The most bytes read and discarded after the consumer is done.
pub(super) const DRAIN_BYTES: u64 = 1 << 30;
/// The longest wait for the rest of a body after the consumer is done.
pub(super) const DRAIN_TIME: Duration = Duration::from_secs(20);

/// The part of an upload that outlives its reader: the task reading the
/// body, which discards what the reader did not take.
pub(super) struct Upload {
    tail: JoinHandle<()>,
}

/// `body` as a blocking reader (for a `spawn_blocking` consumer), and the
/// [`Upload`] to [`finish`](Upload::finish) once the reader is dropped.
/// Must be called inside the runtime.
pub(super) fn open(body: Body) -> (impl io::Read + Send + 'static, Upload) {
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let tail = tokio::spawn(async move {
        let mut chunks = body.into_data_stream();
        let mut consumer = Some(tx);
        let mut discarded = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(io::Error::other);
            if let Some(to) = &consumer {
                let failed = chunk.is_err();
                if to.send(chunk).await.is_ok() && !failed {
                    continue;
                }
                if failed {
                    return;
                }
                // The reader is gone: the rest is discarded.
                consumer = None;
                continue;
            }
            match chunk {
                Ok(bytes) => {
                    discarded += bytes.len() as u64;
                    if discarded > DRAIN_BYTES {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let reader = SyncIoBridge::new(StreamReader::new(stream));
    (reader, Upload { tail })
}

impl Upload {
    /// Waits (bounded) until the body has been read to its end. Call it
    /// after the reader is dropped, before answering, on success and on
    /// error alike.
    pub(super) async fn finish(mut self) {
        if tokio::time::timeout(DRAIN_TIME, &mut self.tail)
            .await
            .is_err()
        {
            self.tail.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn body_of(
        chunks: Vec<io::Result<&'static [u8]>>,
    ) -> (Body, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let pulled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = pulled.clone();
        let stream = futures::stream::iter(chunks).map(move |c| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            c.map(Bytes::from_static)
        });
        (Body::from_stream(stream), pulled)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_reader_gets_the_body_and_errors_pass_through() {
        let (body, _) = body_of(vec![Ok(b"hello "), Ok(b"world")]);
        let (mut reader, upload) = open(body);
        let text = tokio::task::spawn_blocking(move || {
            let mut s = String::new();
            reader.read_to_string(&mut s).map(|_| s)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(text, "hello world");
        upload.finish().await;

        let (body, _) = body_of(vec![Ok(b"a"), Err(io::Error::other("cut off"))]);
        let (mut reader, upload) = open(body);
        let err = tokio::task::spawn_blocking(move || {
            let mut s = Vec::new();
            reader.read_to_end(&mut s)
        })
        .await
        .unwrap()
        .unwrap_err();
        assert!(err.to_string().contains("cut off"), "{err}");
        upload.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_the_reader_leaves_is_read_before_finish_returns() {
        let chunks: Vec<io::Result<&'static [u8]>> =
            (0..64).map(|_| Ok(&b"0123456789"[..])).collect();
        let (body, pulled) = body_of(chunks);
        let (mut reader, upload) = open(body);
        tokio::task::spawn_blocking(move || {
            let mut first = [0u8; 10];
            reader.read_exact(&mut first).unwrap();
            assert_eq!(&first, b"0123456789");
            drop(reader);
        })
        .await
        .unwrap();
        upload.finish().await;
        assert_eq!(pulled.load(std::sync::atomic::Ordering::SeqCst), 64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_dropped_unread_still_drains() {
        let chunks: Vec<io::Result<&'static [u8]>> = (0..16).map(|_| Ok(&b"x"[..])).collect();
        let (body, pulled) = body_of(chunks);
        let (reader, upload) = open(body);
        drop(reader);
        upload.finish().await;
        assert_eq!(pulled.load(std::sync::atomic::Ordering::SeqCst), 16);
    }
}
