//! What the commands print, through [`out!`] and [`outln!`] on standard output and [`errln!`]
//! on standard error: a reader that stops early (`pipelines status | head -1`, or
//! `pipelines run … 2>&1 | head`) ends what is printed, not the command.
//!
//! `print!` panics when standard output fails, and a pipe whose reader has gone fails with
//! `EPIPE` (Rust ignores `SIGPIPE`, so nothing else ends the process). A command panicking
//! there would skip what it had left to do (closing the broker connection after a submit,
//! say) and exit with 101, which reads as a crash. Here the output is dropped instead and the
//! exit code stays the command's own: `pipelines policy test … | head -1` still exits 1 on a
//! deny. Any other failure (`/dev/full`, a disk that filled) is said once on stderr, and the
//! command exits 2 when it would have succeeded: its output is lost, and a script must know.

use std::io::{self, Write};
use std::sync::Mutex;

/// Where standard output stands.
enum State {
    Open,
    /// Its reader has gone: nothing more is written, and that is no failure.
    Closed,
    /// A write failed otherwise: nothing more is written, and the command fails.
    Failed(io::Error),
}

static STATE: Mutex<State> = Mutex::new(State::Open);

/// Writes `text` to standard output and flushes it, so that a failure is seen here rather than
/// lost at exit.
pub(crate) fn write(text: std::fmt::Arguments<'_>) {
    let mut state = STATE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !matches!(*state, State::Open) {
        return;
    }
    let mut stdout = io::stdout().lock();
    if let Err(err) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        *state = if err.kind() == io::ErrorKind::BrokenPipe {
            State::Closed
        } else {
            State::Failed(err)
        };
    }
}

/// The error a write to standard output met, other than its reader going away.
pub(crate) fn failure() -> Option<String> {
    match &*STATE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        State::Failed(err) => Some(format!("cannot write to standard output: {err}")),
        State::Open | State::Closed => None,
    }
}

/// `print!` to standard output, through [`write`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*)) };
}

/// `println!` to standard output, through [`write`].
macro_rules! outln {
    ($($arg:tt)*) => { $crate::output::write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `eprintln!` that cannot panic: standard error is where failures are said, so one of its
/// own has nowhere to go, and the command goes on.
pub(crate) fn write_err(text: std::fmt::Arguments<'_>) {
    let _ = io::stderr().lock().write_fmt(text);
}

/// `eprintln!` to standard error, through [`write_err`].
macro_rules! errln {
    ($($arg:tt)*) => { $crate::output::write_err(format_args!("{}\n", format_args!($($arg)*))) };
}

pub(crate) use {errln, out, outln};
