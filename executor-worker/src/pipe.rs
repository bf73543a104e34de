//! A tool's output pipe, read by the async runtime and handed on to a blocking reader, so that
//! the worker can stop listening to it.
//!
//! End-of-file on a pipe comes only when every process holding its write end has closed it. A
//! tool's steps are waited for until they exit, but a process a pull request's code left behind
//! (a daemon a provider forked off, which kept or reopened the tool's output through
//! `/proc/<pid>/fd/1`) can hold the pipe for ever. A thread blocked on the pipe would wait with
//! it, and the job, its clean-up and the worker with them. So the pipe is read here, where
//! reading can be given up: [`Feeding::drained`] waits [`OUTPUT_DRAIN`] for the end after the
//! tool ended, then closes the worker's read end (the holder's next write fails).

use std::io::Read;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How long a step's output may stay open after its tool ended. A well-behaved tool's output
/// ends when it exits; anything still holding it after this long was left behind.
pub(crate) const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// Bytes in flight between the pipe and the blocking reader: a few reads' worth.
const CHUNKS_IN_FLIGHT: usize = 8;
/// Reads of what is left in the pipe once it was given up: a pipe holds 64 KiB by default,
/// and a holder that keeps writing must not keep the worker reading.
const LAST_READS: usize = 4;

/// Starts reading `pipe` on the runtime: what it reads comes out of the returned [`Fed`].
/// Must be called within a tokio runtime.
pub(crate) fn feed(pipe: std::io::PipeReader) -> std::io::Result<(Fed, Feeding)> {
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe.into())?;
    let (chunks, received) = mpsc::channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    let (give_up, mut given_up) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut buffer = vec![0_u8; 64 * 1024];
        loop {
            let read = tokio::select! {
                read = pipe.read(&mut buffer) => read,
                _ = &mut given_up => break,
            };
            let chunk = match read {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer[..n].to_vec(),
            };
            // Never cancelled: a slow reader must not cost the tool's last bytes.
            if chunks.send(chunk).await.is_err() {
                return;
            }
        }
        // Given up: what the tool wrote before it ended may still sit in the pipe behind the
        // reader. Take what is there now, at most a pipe's buffer, then stop.
        for _ in 0..LAST_READS {
            match pipe.try_read(&mut buffer) {
                Ok(n) if n > 0 => {
                    if chunks.send(buffer[..n].to_vec()).await.is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    });
    let fed = Fed {
        received,
        pending: Vec::new(),
        at: 0,
    };
    Ok((
        fed,
        Feeding {
            task,
            give_up: Some(give_up),
        },
    ))
}

/// The blocking side: reads what the pipe gave, and ends when the pipe ended or was given up.
/// For a thread of its own (`spawn_blocking`), never the runtime's.
pub(crate) struct Fed {
    received: mpsc::Receiver<Vec<u8>>,
    pending: Vec<u8>,
    at: usize,
}

impl Read for Fed {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.at == self.pending.len() {
            match self.received.blocking_recv() {
                Some(chunk) => {
                    self.pending = chunk;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.pending.len() - self.at);
        out[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The runtime's side. Dropped (a step abandoned), it stops reading at once.
pub(crate) struct Feeding {
    task: JoinHandle<()>,
    give_up: Option<oneshot::Sender<()>>,
}

impl Feeding {
    /// Waits up to [`OUTPUT_DRAIN`] for the pipe's end, once the tool ended: `true` if it came,
    /// `false` if something still held the pipe and the worker stopped listening.
    pub(crate) async fn drained(mut self) -> bool {
        if tokio::time::timeout(OUTPUT_DRAIN, &mut self.task)
            .await
            .is_ok()
        {
            return true;
        }
        if let Some(give_up) = self.give_up.take() {
            let _ = give_up.send(());
        }
        let _ = (&mut self.task).await;
        false
    }
}

impl Drop for Feeding {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The line a job's output gets when its tool's output was given up.
pub(crate) fn given_up_note(program: &str) -> String {
    format!(
        "(a process {program} left behind still held its output {} s after {program} ended: the worker stopped reading it, and the rest is not kept)\n",
        OUTPUT_DRAIN.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct KillGroup(rustix::process::Pid);

    impl Drop for KillGroup {
        fn drop(&mut self) {
            let _ = rustix::process::kill_process_group(self.0, rustix::process::Signal::KILL);
        }
    }

    /// A child that leaves a process holding its output behind: the output written before it
    /// ended is kept, and listening stops after the drain instead of waiting for the holder.
    #[tokio::test]
    async fn output_held_by_a_process_left_behind_is_given_up_after_the_drain() {
        let (reader, writer) = std::io::pipe().unwrap();
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "echo before; sleep 600 & echo after"])
            .stdout(writer)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // The sleep is killed with its group however the test ends.
        let _group = KillGroup(rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap());
        let (mut fed, feeding) = feed(reader).unwrap();
        let reading = tokio::task::spawn_blocking(move || {
            let mut text = String::new();
            fed.read_to_string(&mut text).map(|_| text)
        });
        assert!(child.wait().await.unwrap().success());
        assert!(!feeding.drained().await, "the sleep still holds the pipe");
        let text = reading.await.unwrap().unwrap();
        assert_eq!(text, "before\nafter\n");
    }

    /// A pipe whose writers all closed ends at once, with every byte.
    #[tokio::test]
    async fn a_pipe_that_ends_is_drained_whole() {
        let (reader, writer) = std::io::pipe().unwrap();
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "head -c 300000 /dev/zero"])
            .stdout(writer)
            .spawn()
            .unwrap();
        let (mut fed, feeding) = feed(reader).unwrap();
        let reading = tokio::task::spawn_blocking(move || {
            let mut bytes = Vec::new();
            fed.read_to_end(&mut bytes).map(|_| bytes.len())
        });
        assert!(child.wait().await.unwrap().success());
        assert!(feeding.drained().await);
        assert_eq!(reading.await.unwrap().unwrap(), 300_000);
    }
}
