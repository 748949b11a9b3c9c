//! A global allocator that asks for transparent huge pages behind large blocks.
//!
//! A worker's connection table is one large block (64 bytes per flow asked for: 64 MiB for a
//! million flows) read at a random place for every packet. With 4 KiB pages nearly every lookup also
//! misses the TLB, and under a hypervisor a TLB miss is a two-dimensional page walk; with 2 MiB
//! pages the whole table fits in the TLB. Most kernels ship transparent huge pages as `madvise`
//! (only for regions that ask), so this allocator asks: every block of at least
//! [`HUGE_THRESHOLD`] bytes gets `MADV_HUGEPAGE` ([`crate::advise_huge_pages`]) before the caller
//! first touches it. Everything else is the system allocator's, unchanged.
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: fwd_afxdp::HugePageAlloc = fwd_afxdp::HugePageAlloc;
//! fn main() {}
//! ```

use std::alloc::{GlobalAlloc, Layout, System};

/// The huge page size this asks for (x86-64 and arm64 with 4 KiB base pages).
pub const HUGE_PAGE: usize = 2 << 20;
/// Blocks at least this large are advised (two huge pages: at least one aligned one inside).
pub const HUGE_THRESHOLD: usize = 2 * HUGE_PAGE;

/// The system allocator, plus `MADV_HUGEPAGE` on large blocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct HugePageAlloc;

/// `ptr`, after advising its block if it is a large one; failures (no THP, old kernel) change
/// nothing but the page size.
fn advised(ptr: *mut u8, size: usize) -> *mut u8 {
    if !ptr.is_null() && size >= HUGE_THRESHOLD {
        let _ = crate::memory::advise_huge_pages(ptr as usize, size);
    }
    ptr
}

// SAFETY: every call is forwarded to `System` with the caller's own arguments, so `System`'s
// guarantees hold; the only addition is a madvise over memory inside the returned block.
unsafe impl GlobalAlloc for HugePageAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract, which `System.alloc` shares.
        advised(unsafe { System.alloc(layout) }, layout.size())
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        advised(unsafe { System.alloc_zeroed(layout) }, layout.size())
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds the rest.
        advised(unsafe { System.realloc(ptr, layout, new_size) }, new_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon_huge_kib() -> u64 {
        crate::memory::anon_huge_page_bytes().unwrap_or(0) / 1024
    }

    #[test]
    fn large_blocks_are_advised_and_small_ones_left_alone() {
        let a = HugePageAlloc;
        let small = Layout::from_size_align(4096, 8).unwrap();
        let large = Layout::from_size_align(16 * HUGE_PAGE, 64).unwrap();
        // SAFETY: non-zero sizes; every block is written within its length and freed once with
        // its own layout.
        unsafe {
            let s = a.alloc(small);
            assert!(!s.is_null());
            s.write_bytes(1, small.size());
            let before = anon_huge_kib();
            let l = a.alloc(large);
            assert!(!l.is_null());
            l.write_bytes(7, large.size());
            assert_eq!(*l.add(large.size() - 1), 7);
            // The kernel may fail to find free huge pages; one of fifteen is enough to show that
            // the advice was given. A kernel with THP `never` fails here, as it should: fwd's
            // million-flow figures assume huge pages.
            assert!(anon_huge_kib() > before, "no huge page behind a {} MiB block", large.size() >> 20);
            let l = a.realloc(l, large, large.size() * 2);
            assert!(!l.is_null());
            assert_eq!(*l.add(large.size() - 1), 7);
            a.dealloc(l, Layout::from_size_align(large.size() * 2, 64).unwrap());
            a.dealloc(s, small);
        }
    }
}
