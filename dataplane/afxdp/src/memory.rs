//! Memory advice for the workers' large tables.
//!
//! A connection table of a million flows spans about 120 MB. In 4 KiB pages every lookup misses
//! the TLB and walks the page tables, and the CPU walks only a couple of tables at a time, so the
//! batch's table loads queue behind each other; in 2 MiB pages the whole table fits the TLB.
//! The kernel backs an anonymous range with transparent huge pages where `madvise(MADV_HUGEPAGE)`
//! asked for them (the default `madvise` mode of `/sys/kernel/mm/transparent_hugepage/enabled`),
//! if the advice comes before the pages are first touched: fwd's global allocator
//! ([`crate::HugePageAlloc`], also the pipeline benchmark's) gives it for every large block.

use std::io;

const PAGE: usize = 4096;

/// Asks the kernel to back `len` bytes at address `addr` (an allocation of the caller's that is
/// not touched yet) with transparent huge pages. The range is shrunk to whole pages. Advice
/// only: an error (e.g. THP disabled, `never`) changes nothing but speed.
pub fn advise_huge_pages(addr: usize, len: usize) -> io::Result<()> {
    let (Some(start), Some(end)) = (addr.div_ceil(PAGE).checked_mul(PAGE), addr.checked_add(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    let end = end / PAGE * PAGE;
    if end <= start {
        return Ok(());
    }
    // SAFETY: MADV_HUGEPAGE changes how the kernel backs the range, never its contents or whether
    // it is mapped, so no Rust reference into it is affected. The range lies within the caller's
    // allocation (rounded inwards to page boundaries); the kernel validates it anyway and reports
    // an unmapped range as ENOMEM.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Anonymous memory of this process backed by huge pages, in bytes (`AnonHugePages` of
/// `/proc/self/smaps_rollup`); `None` if the kernel does not say.
pub fn anon_huge_page_bytes() -> Option<u64> {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let line = rollup.lines().find(|l| l.starts_with("AnonHugePages:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advised_allocation_is_backed_by_huge_pages() {
        // 64 MiB, not touched before the advice: the kernel has room for many 2 MiB pages.
        const LEN: usize = 64 << 20;
        let before = anon_huge_page_bytes().expect("smaps_rollup reports AnonHugePages");
        let mut v: Vec<u8> = Vec::with_capacity(LEN);
        advise_huge_pages(v.as_ptr() as usize, LEN).expect("madvise(MADV_HUGEPAGE)");
        v.resize(LEN, 1);
        let after = anon_huge_page_bytes().expect("smaps_rollup reports AnonHugePages");
        assert!(
            after >= before + (LEN as u64) / 2,
            "huge pages before {before} after {after}: THP mode is {:?}",
            std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        );
        assert_eq!(v[LEN - 1], 1);
    }

    #[test]
    fn ranges_within_one_page_or_past_the_address_space() {
        // Nothing whole to advise: no call at all.
        advise_huge_pages(4095, 2).unwrap();
        assert_eq!(advise_huge_pages(usize::MAX - 10, 100).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
