//! A few threads that create small regular files while the extraction
//! thread goes on parsing the tar.
//!
//! Creating a file is kernel work (inode and directory entry allocation,
//! journalling) that takes one thread most of a layer's time when the layer
//! holds many small files. ext4 does it in parallel: two GNU tars each
//! extracting half of a 100k-file layer into an ext4 image took 2.5 s
//! (halves in different directories) or 2.9–3.1 s (the same directories)
//! where one tar took 4.8–5.3 s on a 2-core machine.
//!
//! The extraction thread decides what may go to the pool (a small file at a
//! path that does not exist yet, see `apply`), and waits for the pool to
//! empty (`drain`) before any entry that could touch a file still being
//! written. A job carries everything it needs: the parent directory's fd,
//! the entry and its data.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::apply::{create_file, file_metadata, note_written, Ctx, FilePolicy, WrittenLog};
use super::tar_reader::Entry;
use super::UnpackError;
use crate::share::identity::{FileIdentity, StagedStat, WrittenFile};
use crate::share::prelink::{Cursor, Linked};
use crate::share::Prelinker;

/// Largest file handed to the pool: its data is held in memory until a
/// worker writes it. Bigger files are streamed by the extraction thread.
pub(crate) const MAX_FILE: u64 = 256 << 10;
/// Files are handed over in batches of this many (one wake-up per batch
/// rather than per file: a futex round trip costs as much as a small file)
/// or of `BATCH_BYTES` of memory (`FileJob::cost`), whichever comes first.
const BATCH_FILES: usize = 32;
const BATCH_BYTES: usize = 256 << 10;
/// Memory queued per worker at most. Enough for a directory of a thousand
/// small files, so that the next directory can go to another worker.
const MAX_QUEUED_BYTES: usize = 4 << 20;
/// Batches queued per worker at most. A batch holds one directory's files
/// and keeps that directory open: a layer of many directories of one small
/// file each (`/usr/share/doc/*/copyright`) would otherwise hold thousands
/// of fds while the workers lag, and a process may have only 1024.
const MAX_QUEUED_BATCHES: usize = 16;

/// One file to create: `name` in `parent`, as `entry` says, with `data`.
pub(crate) struct FileJob {
    pub parent: Arc<OwnedFd>,
    pub name: Vec<u8>,
    pub entry: Entry,
    pub data: Vec<u8>,
    pub policy: FilePolicy,
    /// Where to note the file for sharing, and its path in the layer.
    pub noted: Option<(WrittenLog, Vec<u8>)>,
    /// The metadata hash the file will have, when another layer's equal
    /// file may be linked instead of writing it (`share::prelink`).
    pub predicted: Option<[u8; 16]>,
}

impl FileJob {
    /// Memory the job holds until it is written: its data, names and
    /// xattrs, and the job itself (so that empty files count too).
    fn cost(&self) -> usize {
        let entry = &self.entry;
        let xattrs: usize = entry
            .xattrs
            .iter()
            .map(|(name, value)| {
                std::mem::size_of::<(Vec<u8>, Vec<u8>)>() + name.len() + value.len()
            })
            .sum();
        std::mem::size_of::<FileJob>()
            + self.data.len()
            + self.name.len()
            + entry.name.len()
            + entry.link.len()
            + xattrs
    }
}

/// A worker's queue.
#[derive(Default)]
struct Queue {
    /// Batches, each with its memory (`FileJob::cost` of its jobs).
    batches: VecDeque<(Vec<FileJob>, usize)>,
    /// Memory of the batches queued or being written.
    bytes: usize,
    /// Batches queued or being written.
    outstanding: usize,
    /// The first error this worker met; later jobs are dropped unwritten.
    error: Option<UnpackError>,
    closed: bool,
    /// Workers take no batch (tests fill the queues this way).
    #[cfg(test)]
    held: bool,
}

impl Queue {
    /// Whether a worker may take a batch.
    fn taking(&self) -> bool {
        #[cfg(test)]
        return !self.held;
        #[cfg(not(test))]
        true
    }
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// A batch was queued, or the pool is closing.
    work: Condvar,
    /// A batch was taken or finished.
    progress: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A worker never panics while holding the lock; if one did, the
        // queue is still consistent (every change is a single assignment).
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait_progress<'a>(&self, queue: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        self.progress.wait(queue).unwrap_or_else(|p| p.into_inner())
    }
}

struct Worker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// The pool. Each worker has its own queue, and the files of one directory
/// go to one worker while the next directory goes to another: ext4 creates
/// files in different directories in parallel without contention, whereas
/// two threads in one directory spin on its lock (measured: 30 % more
/// system time and no gain). Dropping the pool discards queued jobs and
/// joins the threads, so no file is written after the extraction returned
/// (the caller may be about to remove the layer directory).
pub(crate) struct FilePool {
    workers: Vec<Worker>,
    /// The worker taking the current directory's files.
    current: usize,
    /// Jobs not handed over yet, and their memory (`FileJob::cost`).
    batch: Vec<FileJob>,
    batch_bytes: usize,
}

impl FilePool {
    /// Starts `workers` threads (at least one), each linking files to
    /// equal ones of other layers through `prelink` when given.
    pub(crate) fn new(
        workers: usize,
        prelink: Option<Arc<Prelinker>>,
    ) -> std::io::Result<FilePool> {
        let mut pool = FilePool {
            workers: Vec::new(),
            current: 0,
            batch: Vec::with_capacity(BATCH_FILES),
            batch_bytes: 0,
        };
        for _ in 0..workers.max(1) {
            let shared = Arc::new(Shared::default());
            let for_thread = shared.clone();
            let prelink = prelink.clone();
            let thread = std::thread::Builder::new()
                .name("lstore-files".into())
                .spawn(move || work(&for_thread, prelink.as_deref()))?;
            pool.workers.push(Worker {
                shared,
                thread: Some(thread),
            });
        }
        Ok(pool)
    }

    /// The files that follow are in another directory: they go to the
    /// worker with the least queued.
    pub(crate) fn next_directory(&mut self) -> Result<(), UnpackError> {
        self.hand_over()?;
        let least = (0..self.workers.len()).min_by_key(|&i| {
            let queue = self.workers[i].shared.lock();
            (queue.bytes, queue.outstanding)
        });
        self.current = least.unwrap_or(0);
        Ok(())
    }

    /// Queues a job (in the current batch, handed over when full). Fails
    /// with the first error a worker met.
    pub(crate) fn submit(&mut self, job: FileJob) -> Result<(), UnpackError> {
        self.batch_bytes += job.cost();
        self.batch.push(job);
        if self.batch.len() >= BATCH_FILES || self.batch_bytes >= BATCH_BYTES {
            self.hand_over()?;
        }
        Ok(())
    }

    /// Queues the current batch on the current worker, waiting while its
    /// queue is full (unless another worker has nothing to do: a directory
    /// too big for one queue is then shared). Full is `MAX_QUEUED_BATCHES`
    /// batches, or `MAX_QUEUED_BYTES` unless the queue is empty (one batch
    /// always fits).
    fn hand_over(&mut self) -> Result<(), UnpackError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_FILES));
        let bytes = std::mem::take(&mut self.batch_bytes);
        loop {
            let shared = &self.workers[self.current].shared;
            let mut queue = shared.lock();
            if let Some(e) = queue.error.take() {
                return Err(e);
            }
            let room = queue.batches.len() < MAX_QUEUED_BATCHES
                && (queue.bytes == 0 || queue.bytes + bytes <= MAX_QUEUED_BYTES);
            if room {
                queue.batches.push_back((batch, bytes));
                queue.bytes += bytes;
                queue.outstanding += 1;
                drop(queue);
                shared.work.notify_one();
                return Ok(());
            }
            let idle = (0..self.workers.len())
                .find(|&i| i != self.current && self.workers[i].shared.lock().outstanding == 0);
            match idle {
                Some(i) => self.current = i,
                None => drop(shared.wait_progress(queue)),
            }
        }
    }

    /// Waits until every queued file is written. Fails with the first error
    /// a worker met.
    pub(crate) fn drain(&mut self) -> Result<(), UnpackError> {
        self.hand_over()?;
        let mut first_error = None;
        for worker in &self.workers {
            let mut queue = worker.shared.lock();
            while queue.outstanding > 0 {
                queue = worker.shared.wait_progress(queue);
            }
            if let Some(e) = queue.error.take() {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Holds a pool's workers idle, to see what it queues meanwhile.
#[cfg(test)]
pub(crate) struct Gate(Vec<Arc<Shared>>);

#[cfg(test)]
impl FilePool {
    /// Stops the workers taking batches until the gate opens.
    pub(crate) fn hold(&self) -> Gate {
        let shared: Vec<Arc<Shared>> = self.workers.iter().map(|w| w.shared.clone()).collect();
        for worker in &shared {
            worker.lock().held = true;
        }
        Gate(shared)
    }
}

#[cfg(test)]
impl Gate {
    /// Batches and jobs queued, and the bytes of their data, names and
    /// xattrs.
    pub(crate) fn queued(&self) -> (usize, usize, usize) {
        let (mut batches, mut jobs, mut bytes) = (0, 0, 0);
        for worker in &self.0 {
            let queue = worker.lock();
            batches += queue.batches.len();
            for job in queue.batches.iter().flat_map(|(batch, _)| batch) {
                jobs += 1;
                bytes += job.data.len() + job.name.len() + job.entry.name.len();
                bytes += job
                    .entry
                    .xattrs
                    .iter()
                    .map(|(n, v)| n.len() + v.len())
                    .sum::<usize>();
            }
        }
        (batches, jobs, bytes)
    }

    /// Lets the workers go.
    pub(crate) fn open(&self) {
        for worker in &self.0 {
            worker.lock().held = false;
            worker.work.notify_all();
        }
    }
}

impl Drop for FilePool {
    fn drop(&mut self) {
        for worker in &self.workers {
            let mut queue = worker.shared.lock();
            queue.closed = true;
            let discarded = queue.batches.len();
            queue.batches.clear();
            queue.bytes = 0;
            queue.outstanding -= discarded;
            drop(queue);
            worker.shared.work.notify_all();
        }
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

fn work(shared: &Shared, prelink: Option<&Prelinker>) {
    let mut cursor = prelink.map(Prelinker::cursor);
    loop {
        let ((batch, bytes), failed_before) = {
            let mut queue = shared.lock();
            loop {
                if queue.taking() {
                    if let Some(batch) = queue.batches.pop_front() {
                        break (batch, queue.error.is_some());
                    }
                }
                if queue.closed {
                    return;
                }
                queue = shared.work.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
        };
        let result = if failed_before {
            Ok(())
        } else {
            // A panic must not leave the extraction waiting for this batch.
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                batch
                    .iter()
                    .try_for_each(|job| write_job(job, cursor.as_mut()))
            }))
            .unwrap_or_else(|_| {
                Err(UnpackError::Io(io::Error::other(
                    "a file writer thread failed unexpectedly",
                )))
            })
        };
        drop(batch);
        let mut queue = shared.lock();
        queue.outstanding -= 1;
        queue.bytes = queue.bytes.saturating_sub(bytes);
        if let Err(e) = result {
            queue.error.get_or_insert(e);
        }
        drop(queue);
        shared.progress.notify_all();
    }
}

/// Creates the file, writes its data and sets its metadata, as the
/// extraction thread would (`apply`'s `Op::file`), except that the name
/// cannot exist yet: a name that does is an error here. A file another
/// layer holds (found through `cursor`) is linked to instead.
pub(crate) fn write_job(job: &FileJob, cursor: Option<&mut Cursor<'_>>) -> Result<(), UnpackError> {
    let ctx = Ctx { entry: &job.entry };
    let mut content = None;
    let mut looked_up = None;
    if let (Some(cursor), Some(meta), Some((log, path))) = (cursor, job.predicted, &job.noted) {
        let hash = *blake3::hash(&job.data).as_bytes();
        content = Some(hash);
        let id = FileIdentity {
            content: hash,
            meta,
        };
        let size = job.data.len() as u64;
        let linked = cursor
            .link(job.parent.as_fd(), &job.name, path, size, id)
            .map_err(|e| ctx.fs("taking back a link to an equal file", e))?;
        match linked {
            Linked::Yes(p) => {
                let file = WrittenFile {
                    path: path.clone(),
                    ino: p.st.st_ino,
                    stat: StagedStat::of(&p.st),
                    size,
                    id: p.id,
                    holder: Some(p.holder),
                    looked_up: None,
                };
                log.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .files
                    .push(file);
                return Ok(());
            }
            Linked::NotFound(true) => looked_up = Some(meta),
            Linked::NotFound(false) => {}
        }
    }
    let fd = create_file(job.parent.as_fd(), &job.name, &job.entry)
        .map_err(|e| ctx.fs("creating the file", e))?;
    let mut file = File::from(fd);
    file.write_all(&job.data)
        .map_err(|e| ctx.fs("writing the file", e))?;
    file_metadata(file.as_fd(), &job.entry, job.policy, &ctx)?;
    if let Some((log, path)) = &job.noted {
        let content = content.unwrap_or_else(|| *blake3::hash(&job.data).as_bytes());
        note_written(log, file.as_fd(), path, content, looked_up, &ctx)?;
    }
    Ok(())
}
