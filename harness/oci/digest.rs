//! sha256 digests: hashing readers/writers and `sha256:<hex>` parsing.

use sha2::{Digest as _, Sha256};
use std::io::{self, Read, Write};

/// Formats a finished hasher as `sha256:<hex>`.
pub(crate) fn format(h: Sha256) -> String {
    let bytes = h.finalize();
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `sha256:<hex>` of `data`.
pub(crate) fn of(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    format(h)
}

/// Checks that `digest` is `sha256:` followed by 64 lowercase hex digits and
/// returns the hex part. This also guarantees the hex is safe to use as a file
/// name (`blobs/sha256/<hex>`).
pub(crate) fn parse_sha256(digest: &str) -> Result<&str, String> {
    let Some((alg, hex)) = digest.split_once(':') else {
        return Err(format!(
            "`{digest}` is not a digest of the form algorithm:hex"
        ));
    };
    if alg != "sha256" {
        return Err(format!(
            "digest algorithm `{alg}` (only sha256 is supported)"
        ));
    }
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "`{digest}` is not a valid sha256 digest (64 lowercase hex digits)"
        ));
    }
    Ok(hex)
}

/// A reader that hashes and counts everything read through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads the rest of the stream (so the digest covers all of it) and
    /// returns `(sha256:<hex>, byte count)`.
    pub(crate) fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((format(self.hasher), self.count))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts everything written through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Returns the inner writer, `sha256:<hex>` and the byte count.
    pub(crate) fn finish(self) -> (W, String, u64) {
        (self.inner, format(self.hasher), self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        assert_eq!(
            of(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn reader_drains_and_counts() {
        let data = vec![7u8; 100_000];
        let mut r = HashingReader::new(&data[..]);
        let mut first = [0u8; 10];
        r.read_exact(&mut first).unwrap();
        let (d, n) = r.finish().unwrap();
        assert_eq!(n, 100_000);
        assert_eq!(d, of(&data));
    }

    #[test]
    fn writer_hashes() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"ab").unwrap();
        w.write_all(b"c").unwrap();
        let (v, d, n) = w.finish();
        assert_eq!((v.as_slice(), n), (&b"abc"[..], 3));
        assert_eq!(d, of(b"abc"));
    }

    #[test]
    fn parses_only_sane_sha256() {
        let hex = "a".repeat(64);
        assert_eq!(parse_sha256(&format!("sha256:{hex}")).unwrap(), hex);
        assert!(parse_sha256("sha512:abc").unwrap_err().contains("sha512"));
        assert!(parse_sha256(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(parse_sha256("sha256:../../../etc/passwd").is_err());
        assert!(parse_sha256(&format!("sha256:{}", "a".repeat(63))).is_err());
        assert!(parse_sha256("nocolon").is_err());
    }
}
