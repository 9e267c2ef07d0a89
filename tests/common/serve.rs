//! `lstore serve` as a test peer: started on a store root with port 0, its
//! `listening on IP:PORT` line read, stopped (SIGTERM) or killed on drop.
//! Also a request whose body is cut by a dropped connection (other raw
//! requests go through `registry::http_call`).

use super::lstore::Lstore;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ExitStatus};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long serve may take to say it listens (a bound, not a pause).
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Serve {
    child: Option<Child>,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Serve {
    /// `lstore --root <root> serve --addr 127.0.0.1:0 EXTRA…`.
    pub fn start(store: &Lstore, extra: &[&str]) -> Serve {
        let mut args = vec!["serve", "--addr", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Serve::start_args(store, &args)
    }

    /// `lstore --root <root> ARGS…` (ARGS start with `serve`).
    pub fn start_args(store: &Lstore, args: &[&str]) -> Serve {
        let mut child = store.spawn(args);
        let stdout = child.stdout.take().expect("serve stdout");
        let stderr_pipe = child.stderr.take().expect("serve stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok);
            let _ = tx.send(first);
            // Keep reading so serve never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx.recv_timeout(START_TIMEOUT).ok().flatten();
        let mut serve = Serve {
            child: Some(child),
            addr: String::new(),
            stderr,
        };
        let Some(addr) = line
            .as_deref()
            .and_then(|l| l.strip_prefix("listening on "))
            .map(str::to_string)
        else {
            let status = serve.kill();
            panic!(
                "lstore serve did not say where it listens (first line {line:?}, {status:?}):\n{}",
                serve.stderr()
            );
        };
        serve.addr = addr;
        serve
    }

    /// `IP:PORT` from the `listening on` line.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://IP:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    fn signal(&mut self, signal: i32) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
        child.wait().ok()
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM).expect("serve exit status")
    }

    /// SIGKILL (a crash), then the exit status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.signal(libc::SIGKILL)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends a request head announcing `announced` body bytes, only `sent` of
/// them, then closes its side: a body cut by a dropped connection.
pub fn raw_cut(addr: &str, head: &str, announced: usize, sent: &[u8]) {
    let mut stream = TcpStream::connect(addr).expect("connect to serve");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let request = format!(
        "{}\r\nContent-Length: {announced}\r\nConnection: close\r\n\r\n",
        head.trim_end()
    );
    stream.write_all(request.as_bytes()).expect("send head");
    stream.write_all(sent).expect("send part of the body");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    // Whatever the server answers (or not), the upload is what counts.
    let _ = stream.read_to_end(&mut Vec::new());
}
