//! Packet I/O as the pipeline sees it: receive a batch, decide, transmit or recycle.
//!
//! The pipeline never knows where frames come from. [`PacketIo::poll`] hands it up to
//! [`MAX_BATCH`] frames (each with [`HEADROOM`] in front) and a verdict slot per frame; the I/O
//! then transmits the frames marked [`Verdict::Tx`] (from their possibly moved start) and
//! recycles the rest. The AF_XDP socket (crate `fwd-afxdp`) is one implementation, [`MemIo`]
//! (tests) and [`ReplayIo`] (benchmarks) are the in-memory ones.

use crate::counters::DropReason;
use crate::frame::{Frame, HEADROOM};
use arrayvec::ArrayVec;
use std::collections::VecDeque;

/// Most frames in one batch.
pub const MAX_BATCH: usize = 64;
/// Buffer size of one frame including headroom: an AF_XDP chunk of 4096 bytes less its metadata
/// would do too; frames larger than `BUF_SIZE - HEADROOM` are not received.
pub const BUF_SIZE: usize = 2048 + HEADROOM;

/// What happens to a frame after the pipeline saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send it out of the same port (rewritten in place).
    Tx,
    /// Not ours: give it to the kernel's stack.
    Pass,
    /// Drop it, counted under the reason.
    Drop(DropReason),
}

/// A batch of frames as handed to the pipeline.
pub type Batch<'a> = ArrayVec<Frame<'a>, MAX_BATCH>;

/// Read-only views of frames received after a batch, in order: see [`PacketIo::poll_ahead`].
pub type Ahead<'a> = ArrayVec<&'a [u8], MAX_BATCH>;

/// A source and sink of frames.
pub trait PacketIo {
    /// Receives up to `max` (at most [`MAX_BATCH`]) frames and calls `process` once with them and
    /// as many verdict slots (initialised to `Drop(Malformed)`, so a forgotten verdict is visible),
    /// then transmits or recycles every frame according to its verdict. Returns the number of
    /// frames received (0: nothing was waiting and `process` was not called).
    fn poll(&mut self, max: usize, process: &mut dyn FnMut(&mut Batch<'_>, &mut [Verdict])) -> usize {
        self.poll_ahead(max, &mut |batch, verdicts, _| process(batch, verdicts))
    }

    /// [`PacketIo::poll`], also showing `process` up to `max` frames already received behind the
    /// batch (possibly none), so that it can start on them while it waits for memory
    /// ([`crate::pipeline::Worker::process_batch_ahead`]).
    ///
    /// The contract that makes this safe to act on: a frame of the next poll's batch that starts
    /// at the same address, with the same length, as the frame in the same position here is that
    /// frame, unchanged. The next batch may hold fewer frames, or other ones.
    fn poll_ahead(
        &mut self,
        max: usize,
        process: &mut dyn FnMut(&mut Batch<'_>, &mut [Verdict], &Ahead<'_>),
    ) -> usize;
}

/// A frame buffer with headroom.
#[derive(Clone, Debug)]
struct Buf {
    bytes: Box<[u8]>,
    start: usize,
    len: usize,
}

impl Buf {
    fn with_frame(frame: &[u8]) -> Option<Buf> {
        if frame.len() > BUF_SIZE - HEADROOM {
            return None;
        }
        let mut bytes = vec![0u8; BUF_SIZE].into_boxed_slice();
        bytes[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        Some(Buf { bytes, start: HEADROOM, len: frame.len() })
    }
}

/// Runs `process` over `bufs` (showing it `ahead`), writing back where each frame now starts and
/// how long it is.
fn run_batch<'a>(
    bufs: &mut [Buf],
    ahead: impl Iterator<Item = &'a Buf>,
    verdicts: &mut [Verdict],
    process: &mut dyn FnMut(&mut Batch<'_>, &mut [Verdict], &Ahead<'_>),
) {
    let mut batch: Batch<'_> = ArrayVec::new();
    for b in bufs.iter_mut() {
        // A Buf always holds a frame that fits (checked when it was filled).
        if let Some(f) = Frame::new(&mut b.bytes, b.start, b.len) {
            batch.push(f);
        }
    }
    let ahead: Ahead<'_> = ahead.take(MAX_BATCH).map(|b| &b.bytes[b.start..b.start + b.len]).collect();
    let n = batch.len();
    process(&mut batch, &mut verdicts[..n], &ahead);
    let spans: ArrayVec<(usize, usize), MAX_BATCH> = batch.iter().map(|f| (f.start(), f.len())).collect();
    drop(batch);
    for (b, (start, len)) in bufs.iter_mut().zip(spans) {
        b.start = start;
        b.len = len;
    }
}

/// In-memory I/O for tests: frames pushed in are received; what the pipeline decided is kept.
#[derive(Debug, Default)]
pub struct MemIo {
    rx: VecDeque<Buf>,
    /// Frames transmitted, as they left.
    pub tx: Vec<Vec<u8>>,
    /// Frames passed to the kernel.
    pub passed: Vec<Vec<u8>>,
    /// Frames dropped, with the reason.
    pub dropped: Vec<(Vec<u8>, DropReason)>,
}

impl MemIo {
    pub fn new() -> Self {
        MemIo::default()
    }

    /// Queues a frame for receiving. `false` if it is larger than a buffer.
    pub fn push_rx(&mut self, frame: &[u8]) -> bool {
        match Buf::with_frame(frame) {
            Some(b) => {
                self.rx.push_back(b);
                true
            }
            None => false,
        }
    }

    pub fn pending_rx(&self) -> usize {
        self.rx.len()
    }
}

impl PacketIo for MemIo {
    /// Shows the next `max` queued frames as the ones ahead: a buffer's bytes stay where they
    /// are while it moves from the queue to the batch.
    fn poll_ahead(
        &mut self,
        max: usize,
        process: &mut dyn FnMut(&mut Batch<'_>, &mut [Verdict], &Ahead<'_>),
    ) -> usize {
        let n = max.min(MAX_BATCH).min(self.rx.len());
        if n == 0 {
            return 0;
        }
        let mut bufs: Vec<Buf> = self.rx.drain(..n).collect();
        let mut verdicts = [Verdict::Drop(DropReason::Malformed); MAX_BATCH];
        run_batch(&mut bufs, self.rx.iter().take(n), &mut verdicts, process);
        for (b, v) in bufs.into_iter().zip(verdicts) {
            let bytes = b.bytes[b.start..b.start + b.len].to_vec();
            match v {
                Verdict::Tx => self.tx.push(bytes),
                Verdict::Pass => self.passed.push(bytes),
                Verdict::Drop(r) => self.dropped.push((bytes, r)),
            }
        }
        n
    }
}

/// The turn-taking of two buffer sets in a replay that writes each batch one poll early, so that
/// [`PacketIo::poll_ahead`] can show it: while one set holds the batch, the other holds the frames
/// ahead of it. Templates are written in order, round and round; a poll of another size than the
/// last rewinds over the frames written ahead and writes its batch afresh.
#[derive(Clone, Copy, Debug)]
pub struct TwoSetRotation {
    templates: usize,
    /// The next template to write.
    next: usize,
    /// The set holding the frames ahead of the last batch, and how many it holds.
    ahead_set: usize,
    ahead_len: usize,
}

impl TwoSetRotation {
    /// `None` if there are no templates.
    pub fn new(templates: usize) -> Option<Self> {
        (templates > 0).then_some(TwoSetRotation { templates, next: 0, ahead_set: 0, ahead_len: 0 })
    }

    /// Starts a poll of `n` frames: `write(set, slot, template)` is called for every buffer that
    /// needs a template written. Returns the set holding the batch; the other (`1 - set`) holds
    /// the `n` frames ahead of it.
    pub fn advance(&mut self, n: usize, mut write: impl FnMut(usize, usize, usize)) -> usize {
        if self.ahead_len != n {
            self.next = (self.next + self.templates - self.ahead_len % self.templates) % self.templates;
            self.fill(self.ahead_set, n, &mut write);
        }
        let batch_set = self.ahead_set;
        self.fill(1 - batch_set, n, &mut write);
        self.ahead_set = 1 - batch_set;
        self.ahead_len = n;
        batch_set
    }

    fn fill(&mut self, set: usize, n: usize, write: &mut impl FnMut(usize, usize, usize)) {
        for slot in 0..n {
            write(set, slot, self.next);
            self.next = if self.next + 1 == self.templates { 0 } else { self.next + 1 };
        }
    }
}

/// Benchmark I/O: replays a fixed set of template frames forever, without allocating. Each poll
/// copies templates into its buffers (as a NIC would have written them) and only counts
/// verdicts. Two sets of [`MAX_BATCH`] buffers take turns: while one holds the batch, the other
/// holds the frames ahead of it (see [`PacketIo::poll_ahead`]), written one poll early.
#[derive(Debug)]
pub struct ReplayIo {
    templates: Vec<Buf>,
    sets: [Vec<Buf>; 2],
    rotation: TwoSetRotation,
    pub tx: u64,
    pub passed: u64,
    pub dropped: u64,
}

impl ReplayIo {
    /// `None` if there are no templates or one does not fit in a buffer.
    pub fn new(templates: &[Vec<u8>]) -> Option<Self> {
        let templates: Vec<Buf> = templates.iter().map(|t| Buf::with_frame(t)).collect::<Option<_>>()?;
        let set = vec![templates.first()?.clone(); MAX_BATCH];
        Some(ReplayIo {
            rotation: TwoSetRotation::new(templates.len())?,
            templates,
            sets: [set.clone(), set],
            tx: 0,
            passed: 0,
            dropped: 0,
        })
    }
}

impl PacketIo for ReplayIo {
    fn poll_ahead(
        &mut self,
        max: usize,
        process: &mut dyn FnMut(&mut Batch<'_>, &mut [Verdict], &Ahead<'_>),
    ) -> usize {
        let n = max.clamp(1, MAX_BATCH);
        let (templates, sets) = (&self.templates, &mut self.sets);
        let batch_set = self.rotation.advance(n, |set, slot, template| {
            let (b, t) = (&mut sets[set][slot], &templates[template]);
            b.bytes[HEADROOM..HEADROOM + t.len].copy_from_slice(&t.bytes[HEADROOM..HEADROOM + t.len]);
            b.start = HEADROOM;
            b.len = t.len;
        });
        let [first, second] = &mut self.sets;
        let (batch, ahead) = if batch_set == 0 { (first, &*second) } else { (second, &*first) };
        let mut verdicts = [Verdict::Drop(DropReason::Malformed); MAX_BATCH];
        run_batch(&mut batch[..n], ahead[..n].iter(), &mut verdicts, process);
        for v in &verdicts[..n] {
            match v {
                Verdict::Tx => self.tx += 1,
                Verdict::Pass => self.passed += 1,
                Verdict::Drop(_) => self.dropped += 1,
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_io_routes_frames_by_verdict_and_keeps_rewrites() {
        let mut io = MemIo::new();
        for i in 0..3u8 {
            assert!(io.push_rx(&[i; 60]));
        }
        assert!(!io.push_rx(&vec![0u8; BUF_SIZE]));
        let n = io.poll(64, &mut |batch, verdicts| {
            assert_eq!(batch.len(), 3);
            batch[0].push_front(4).unwrap()[..4].copy_from_slice(&[9; 4]);
            verdicts[0] = Verdict::Tx;
            verdicts[1] = Verdict::Pass;
            verdicts[2] = Verdict::Drop(DropReason::NoService);
        });
        assert_eq!(n, 3);
        assert_eq!(io.tx, vec![[vec![9u8; 4], vec![0u8; 60]].concat()]);
        assert_eq!(io.passed, vec![vec![1u8; 60]]);
        assert_eq!(io.dropped, vec![(vec![2u8; 60], DropReason::NoService)]);
        assert_eq!(io.poll(64, &mut |_, _| panic!("nothing to receive")), 0);
    }

    #[test]
    fn replay_io_restores_templates_every_poll() {
        let mut io = ReplayIo::new(&[vec![1u8; 64], vec![2u8; 64]]).unwrap();
        for _ in 0..3 {
            io.poll(2, &mut |batch, verdicts| {
                assert_eq!(batch[0].data(), &[1u8; 64][..]);
                assert_eq!(batch[1].data(), &[2u8; 64][..]);
                batch[0].truncate(1);
                verdicts[0] = Verdict::Tx;
                verdicts[1] = Verdict::Drop(DropReason::Malformed);
            });
        }
        assert_eq!((io.tx, io.dropped), (3, 3));
    }

    #[test]
    fn two_set_rotation_replays_templates_in_order_and_shows_the_next_batch() {
        let mut rotation = TwoSetRotation::new(5).unwrap();
        let mut sets = [[usize::MAX; MAX_BATCH]; 2];
        let mut batches: Vec<Vec<usize>> = Vec::new();
        let mut shown: Vec<Vec<usize>> = Vec::new();
        for n in [2, 2, 3, 1, 3, 3, 7, 7] {
            let set = rotation.advance(n, |set, slot, template| sets[set][slot] = template);
            batches.push(sets[set][..n].to_vec());
            shown.push(sets[1 - set][..n].to_vec());
        }
        let replayed: Vec<usize> = batches.concat();
        let expected: Vec<usize> = (0..replayed.len()).map(|i| i % 5).collect();
        assert_eq!(replayed, expected, "every template once, in order, across changes of batch size");
        for i in 0..batches.len() - 1 {
            if batches[i].len() == batches[i + 1].len() {
                assert_eq!(shown[i], batches[i + 1], "what poll {i} showed ahead is the next batch");
            }
        }
        assert!(TwoSetRotation::new(0).is_none());
    }
}
