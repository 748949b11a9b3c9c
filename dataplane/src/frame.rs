//! A frame in a buffer with headroom, the unit every rewrite works on.
//!
//! AF_XDP gives each frame headroom in its UMEM chunk (and the in-memory I/O does the same), so
//! encapsulation grows the frame towards the front instead of moving the payload.

/// Headroom fwd reserves in front of every received frame. Covers the largest encapsulation
/// (Ethernet + 802.1Q + IPv6 + UDP + GUE) and an ICMP error built in front of the original.
pub const HEADROOM: usize = 256;

/// `buf[start..start + len]` is the frame; `buf[..start]` is headroom, the rest tailroom.
#[derive(Debug)]
pub struct Frame<'a> {
    buf: &'a mut [u8],
    start: usize,
    len: usize,
}

impl<'a> Frame<'a> {
    /// `None` if `start + len` does not fit in `buf`.
    pub fn new(buf: &'a mut [u8], start: usize, len: usize) -> Option<Self> {
        (start.checked_add(len)? <= buf.len()).then_some(Frame { buf, start, len })
    }

    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn start(&self) -> usize {
        self.start
    }

    #[inline]
    pub fn headroom(&self) -> usize {
        self.start
    }

    /// The headroom's last byte, in the cache line an encapsulation's outer headers are written
    /// to (they are shorter than a line): what the pipeline prefetches before encapsulating.
    /// `None` without headroom.
    #[inline]
    pub fn last_headroom_byte(&self) -> Option<&u8> {
        self.buf.get(self.start.checked_sub(1)?)
    }

    #[inline]
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.start - self.len
    }

    /// Grows the frame by `n` bytes at the front (into the headroom) and returns the whole frame.
    /// `None`, with the frame unchanged, if the headroom is too small.
    #[inline]
    pub fn push_front(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.start {
            return None;
        }
        self.start -= n;
        self.len += n;
        Some(self.data_mut())
    }

    /// Removes `n` bytes from the front. `false`, with the frame unchanged, if it is shorter.
    #[inline]
    pub fn pull_front(&mut self, n: usize) -> bool {
        if n > self.len {
            return false;
        }
        self.start += n;
        self.len -= n;
        true
    }

    /// Shortens the frame to `len` bytes; no effect if it is already shorter.
    #[inline]
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_and_pull_respect_bounds() {
        let mut buf = [0u8; 64];
        let mut f = Frame::new(&mut buf, 16, 32).unwrap();
        assert!(f.push_front(17).is_none());
        assert_eq!(f.len(), 32);
        assert_eq!(f.push_front(16).unwrap().len(), 48);
        assert_eq!(f.headroom(), 0);
        assert!(!f.pull_front(49));
        assert!(f.pull_front(48));
        assert!(f.is_empty());
        assert!(Frame::new(&mut buf, 60, 5).is_none());
        assert!(Frame::new(&mut buf, usize::MAX, 5).is_none());
    }

    #[test]
    fn the_last_headroom_byte_is_the_one_before_the_start() {
        let mut buf: Vec<u8> = (0..=255).collect();
        let f = Frame::new(&mut buf, 16, 32).unwrap();
        assert_eq!(f.last_headroom_byte(), Some(&15));
        let mut f = Frame::new(&mut buf, 16, 32).unwrap();
        f.push_front(16).unwrap();
        assert_eq!(f.last_headroom_byte(), None);
    }
}
