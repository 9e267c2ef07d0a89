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
//!
//! When anything was written back early, extraction ends with one more
//! `syncfs` on an fd opened before it began, so no write-back error of the
//! layer goes unreported (the kernel reports one only to fds already open
//! when it happened).

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
    /// Some data was sent to disk early (a flush asked for, or a file big
    /// enough for `sync_file_range`).
    started: bool,
}

impl Flusher {
    /// Notes an entry of `bytes` extracted (file data plus a little per
    /// entry).
    pub(crate) fn extracted(&mut self, bytes: u64) {
        self.started |= bytes >= STEP;
        self.pending += bytes;
        if self.pending >= FLUSH_EVERY {
            self.request();
        }
    }

    fn request(&mut self) {
        // Full: a flush is already queued and will cover these bytes.
        match self.requests.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) => {
                self.pending = 0;
                self.started = true;
            }
            Err(TrySendError::Disconnected(())) => {}
        }
    }

    /// Extraction is complete. When write-back was started early, one last
    /// `syncfs` on the fd opened before extraction: write-back errors are
    /// reported to the fds open when they happen, so an fd opened later
    /// (the store's own `syncfs`) might not hear of them.
    pub(crate) fn finish(self) {
        if self.started {
            // After the last request, so it covers everything.
            let _ = self.requests.send(());
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
            started: false,
        },
        receiver,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_are_asked_for_every_flush_every_bytes_and_once_at_the_end() {
        let (mut flusher, requests) = flusher();
        flusher.extracted(FLUSH_EVERY - 1);
        assert!(requests.try_recv().is_err(), "too early");
        flusher.extracted(1);
        assert!(requests.try_recv().is_ok());
        flusher.extracted(FLUSH_EVERY / 2);
        flusher.finish();
        assert!(requests.try_recv().is_ok(), "the last one");
        assert!(requests.try_recv().is_err());
    }

    #[test]
    fn nothing_is_flushed_when_nothing_was_written_back_early() {
        let (mut flusher, requests) = flusher();
        flusher.extracted(STEP - 1);
        flusher.finish();
        assert!(requests.try_recv().is_err());
    }

    #[test]
    fn a_big_file_alone_asks_for_the_last_flush() {
        let (mut flusher, requests) = flusher();
        flusher.extracted(STEP);
        flusher.finish();
        assert!(requests.try_recv().is_ok());
    }

    #[test]
    fn the_flush_loop_syncs_until_the_flusher_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let fd = OwnedFd::from(std::fs::File::open(dir.path()).unwrap());
        let (mut flusher, requests) = flusher();
        let thread = std::thread::spawn(move || flush_loop(fd, requests));
        flusher.extracted(FLUSH_EVERY);
        flusher.finish();
        thread.join().unwrap().unwrap();
    }
}
