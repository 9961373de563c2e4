//! Fixed-layout little-endian records (slots, rate entries, address slots), written and
//! read field by field without a panic: a short buffer reads as zeros.

/// Appends fields to a fixed buffer; bytes past its end are dropped.
pub struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut [u8]) -> Writer<'a> {
        Writer { buf, at: 0 }
    }

    pub fn put(&mut self, bytes: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.at..self.at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        self.at += bytes.len();
    }
}

/// Takes fields from a buffer in order; fields past its end read as zeros.
pub struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, at: 0 }
    }

    pub fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.buf.get(self.at..self.at + N) {
            out.copy_from_slice(src);
        }
        self.at += N;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_short_buffers_read_zeros() {
        let mut buf = [0u8; 6];
        let mut w = Writer::new(&mut buf);
        w.put(&7u32.to_le_bytes());
        w.put(&9u32.to_le_bytes()); // only half fits
        let mut r = Reader::new(&buf);
        assert_eq!(u32::from_le_bytes(r.take()), 7);
        assert_eq!(
            u32::from_le_bytes(r.take()),
            0,
            "a truncated field reads as zero, not 9's half"
        );
        assert_eq!(u16::from_le_bytes(Reader::new(&[]).take()), 0);
    }
}
