//! Early write-back of extracted file data.
//!
//! A layer is made durable by one `syncfs` before it is renamed into place
//! (see `layers.rs`). Left alone, the kernel starts writing dirty pages
//! back only after `dirty_expire_centisecs` (30 s) or past the dirty
//! thresholds (10 % of memory), so that `syncfs` finds the whole layer
//! still in memory and waits for all of it. Starting write-back while
//! extraction goes on lets the disk work meanwhile; the final `syncfs` is
//! unchanged and is still what makes the layer durable.
//!
//! Two ways, by file size:
//! - big files: `sync_file_range(SYNC_FILE_RANGE_WRITE)` every `STEP`
//!   bytes, from the extracting thread (it only queues the I/O);
//! - everything else: a `syncfs` on a helper thread every `FLUSH_EVERY`
//!   bytes of extracted data. Per-file `sync_file_range` on small files
//!   costs more CPU than it saves (block allocation and I/O submission per
//!   file, measured twice as slow on 100k small files), while one `syncfs`
//!   writes many files' blocks and metadata in one journal commit, on a
//!   thread that only waits.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

/// Write-back is started every this many bytes of one big file, so a
/// multi-GiB file is not all dirty at once.
pub(crate) const STEP: u64 = 8 << 20;

/// Extracted bytes between two background `syncfs` calls.
pub(crate) const FLUSH_EVERY: u64 = 64 << 20;

/// Starts (does not wait for) write-back of `len` bytes at `offset` of the
/// file; `len == 0` means to the end of the file.
///
/// A failure is ignored: this is only a hint to start early, and an I/O
/// error on the data is reported by the next `syncfs`.
pub(crate) fn start(fd: BorrowedFd<'_>, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range only reads its integer arguments; the fd is
    // borrowed, so it stays open for the call.
    unsafe {
        libc::sync_file_range(fd.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// The extracting side of the background flusher: counts extracted bytes
/// and asks for a `syncfs` every `FLUSH_EVERY` of them.
pub(crate) struct Flusher {
    requests: SyncSender<()>,
    pending: u64,
}

impl Flusher {
    /// Notes `bytes` more extracted (file data plus a little per entry).
    pub(crate) fn extracted(&mut self, bytes: u64) {
        self.pending += bytes;
        if self.pending >= FLUSH_EVERY {
            // Full: a flush is already queued and will cover these bytes.
            match self.requests.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => self.pending = 0,
                Err(TrySendError::Disconnected(())) => {}
            }
        }
    }
}

/// The flushing side: runs until the `Flusher` is dropped. `fd` is any fd
/// on the layer's filesystem, opened before extraction began, so its
/// `syncfs` reports every write-back error since. Returns the first one.
pub(crate) fn flush_loop(fd: OwnedFd, requests: Receiver<()>) -> std::io::Result<()> {
    let mut result = Ok(());
    for () in requests {
        if let Err(e) = rustix::fs::syncfs(fd.as_fd()) {
            if result.is_ok() {
                result = Err(e.into());
            }
        }
    }
    result
}

/// A connected pair.
pub(crate) fn flusher() -> (Flusher, Receiver<()>) {
    let (requests, receiver) = mpsc::sync_channel(1);
    (
        Flusher {
            requests,
            pending: 0,
        },
        receiver,
    )
}
