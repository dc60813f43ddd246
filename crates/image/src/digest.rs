//! Digest strings and a hashing, counting reader.

use std::io::{self, BufReader, Read};

use sha2::{Digest as _, Sha256};

use crate::ImageError;

/// Returns the hex part of a `sha256:<64 lowercase hex>` digest, or an error saying what is wrong.
pub(crate) fn sha256_hex(digest: &str) -> Result<&str, ImageError> {
    let bad = |detail: &str| ImageError::InvalidDigest {
        digest: digest.to_owned(),
        detail: detail.to_owned(),
    };
    let Some((alg, hex)) = digest.split_once(':') else {
        return Err(bad("expected the form sha256:<64 hex digits>"));
    };
    if alg != "sha256" {
        return Err(bad("only sha256 digests are supported"));
    }
    if !is_sha256_hex(hex) {
        return Err(bad("expected 64 lowercase hex digits after sha256:"));
    }
    Ok(hex)
}

pub(crate) fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `sha256:<hex>` of some bytes.
pub(crate) fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A short form for messages: `sha256:0123456789ab…`.
pub(crate) fn short(digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, hex)) if hex.len() > 12 => format!("{alg}:{}…", &hex[..12]),
        _ => digest.to_owned(),
    }
}

/// Reads through to `inner`, hashing and counting every byte, and reporting progress.
pub(crate) struct HashReader<'a, R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    reported: u64,
    on_progress: Option<&'a mut dyn FnMut(u64)>,
}

/// Report progress at most once per this many bytes.
const PROGRESS_STEP: u64 = 1 << 20;

impl<'a, R: Read> HashReader<'a, R> {
    pub(crate) fn new(inner: R) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
            reported: 0,
            on_progress: None,
        }
    }

    pub(crate) fn with_progress(inner: R, on_progress: &'a mut dyn FnMut(u64)) -> Self {
        HashReader {
            on_progress: Some(on_progress),
            ..HashReader::new(inner)
        }
    }

    /// Bytes read so far.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// Reads the rest of the stream, then returns (`sha256:<hex>`, byte count, inner reader).
    pub(crate) fn finish(mut self) -> io::Result<(String, u64, R)> {
        io::copy(&mut self, &mut io::sink())?;
        if let Some(cb) = self.on_progress.as_mut()
            && self.reported != self.count
        {
            cb(self.count);
        }
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        Ok((digest, self.count, self.inner))
    }
}

impl<R: Read> Read for HashReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        if let Some(cb) = self.on_progress.as_mut()
            && self.count - self.reported >= PROGRESS_STEP
        {
            self.reported = self.count;
            cb(self.count);
        }
        Ok(n)
    }
}

/// Compression of a layer or archive, detected from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Compression {
    pub(crate) fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// The reader a [`Decoder`] decodes from: the peeked head, then the rest of the source.
type Peeked<R> = BufReader<io::Chain<io::Cursor<Vec<u8>>, R>>;

/// A decompressing reader over a source that gives the source back when done.
// One decoder exists per layer being read; boxing the gzip state would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Decoder<R: Read> {
    Gzip(flate2::bufread::MultiGzDecoder<Peeked<R>>),
    Zstd(zstd::stream::read::Decoder<'static, Peeked<R>>),
    Plain(Peeked<R>),
}

impl<R: Read> Decoder<R> {
    /// Peeks at the first bytes of `inner` and wraps it in the matching decompressor.
    pub(crate) fn new(mut inner: R) -> io::Result<Decoder<R>> {
        let mut head = Vec::with_capacity(4);
        while head.len() < 4 {
            let mut byte = [0u8; 4];
            let want = 4 - head.len();
            match inner.read(&mut byte[..want]) {
                Ok(0) => break,
                Ok(n) => head.extend_from_slice(&byte[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let compression = Compression::detect(&head);
        let buffered = BufReader::with_capacity(256 * 1024, io::Cursor::new(head).chain(inner));
        Ok(match compression {
            Compression::Gzip => Decoder::Gzip(flate2::bufread::MultiGzDecoder::new(buffered)),
            Compression::Zstd => Decoder::Zstd(zstd::stream::read::Decoder::with_buffer(buffered)?),
            Compression::None => Decoder::Plain(buffered),
        })
    }

    pub(crate) fn compression(&self) -> Compression {
        match self {
            Decoder::Gzip(_) => Compression::Gzip,
            Decoder::Zstd(_) => Compression::Zstd,
            Decoder::Plain(_) => Compression::None,
        }
    }

    /// Gives back the underlying reader (bytes buffered but not yet decoded are dropped; they
    /// were already read from it).
    pub(crate) fn into_inner(self) -> R {
        let buffered = match self {
            Decoder::Gzip(d) => d.into_inner(),
            Decoder::Zstd(d) => d.finish(),
            Decoder::Plain(b) => b,
        };
        buffered.into_inner().into_inner().1
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
            Decoder::Plain(b) => b.read(buf),
        }
    }
}

/// Passes a tar stream through, and if it ends without padding its last entry to a 512-byte
/// block or without the end-of-archive blocks, supplies the missing zeros. Some real image
/// builders (umoci, for one) write layers that way; their content is still verified by the
/// diff id, which is computed below this reader over the real bytes only.
pub(crate) struct EofPad<R> {
    inner: R,
    pos: u64,
    pad_left: Option<u64>,
}

impl<R: Read> EofPad<R> {
    pub(crate) fn new(inner: R) -> Self {
        EofPad {
            inner,
            pos: 0,
            pad_left: None,
        }
    }

    pub(crate) fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for EofPad<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pad_left.is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 {
                self.pos += n as u64;
                return Ok(n);
            }
            self.pad_left = Some((512 - self.pos % 512) % 512 + 1024);
        }
        let left = self.pad_left.as_mut().expect("set above");
        let n = (*left).min(buf.len() as u64) as usize;
        buf[..n].fill(0);
        *left -= n as u64;
        Ok(n)
    }
}
