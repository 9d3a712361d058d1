//! Layer compression, told by the stream's magic bytes rather than by media types (docker
//! and OCI name them differently, and some tools get them wrong).

use std::io::{self, BufRead, Read};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The OCI layer media type for a tar in this compression.
    pub fn layer_media_type(self) -> oci_spec::image::MediaType {
        use oci_spec::image::MediaType;
        match self {
            Compression::None => MediaType::ImageLayer,
            Compression::Gzip => MediaType::ImageLayerGzip,
            Compression::Zstd => MediaType::ImageLayerZstd,
        }
    }
}

/// Looks at the first bytes without consuming them.
pub fn sniff(reader: &mut impl BufRead) -> io::Result<Compression> {
    let head = reader.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Compression::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Compression::Zstd)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) || head.starts_with(b"BZh") {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "compressed with xz or bzip2, which peapod does not read: recompress it with gzip or zstd",
        ))
    } else {
        Ok(Compression::None)
    }
}

/// The decompressed stream. Gzip may have several members (as `cat a.gz b.gz` does).
pub fn decompress<'a>(
    reader: impl BufRead + 'a,
    compression: Compression,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sniffs_and_decompresses() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"hello").unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&b"hello"[..], 1).unwrap();
        for (bytes, want) in [
            (gz, Compression::Gzip),
            (zst, Compression::Zstd),
            (b"hello".to_vec(), Compression::None),
        ] {
            let mut r = &bytes[..];
            assert_eq!(sniff(&mut r).unwrap(), want);
            let mut out = String::new();
            decompress(r, want)
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            assert_eq!(out, "hello");
        }
        assert!(sniff(&mut &b"BZh91AY"[..]).is_err());
    }
}
