//! A PostgreSQL server of a test's own, for the tests that restart it: the installed server
//! (`initdb`, `pg_ctl`) with its own data directory and port, run as the `postgres` user,
//! stopped and removed when dropped. Restarting the machine's shared server would break every
//! other test running beside.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

/// A private PostgreSQL server, trust auth, user `postgres`.
#[derive(Debug)]
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
}

/// Where Debian puts the server's programs; the newest installed version.
fn bin(program: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| dir.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    let version = versions
        .pop()
        .expect("PostgreSQL's server is installed under /usr/lib/postgresql (scripts/test.sh)");
    version.join("bin").join(program)
}

/// Runs `program args` as the `postgres` user (the server refuses to run as root).
fn as_postgres(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin(program))
        .args(args)
        .output()
        .map_err(|err| format!("runuser {program}: {err}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

impl PrivatePostgres {
    /// Initializes a data directory and starts the server on a free port. Panics, saying what
    /// failed.
    pub fn start() -> PrivatePostgres {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let dir = std::env::temp_dir().join(format!("pipelines-postgres-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let owned = Command::new("chown")
            .args(["postgres:postgres", dir.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(owned.success(), "chown postgres {}", dir.display());
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("a free port");
        let server = PrivatePostgres { port, dir };
        as_postgres(
            "initdb",
            &[
                "-D",
                &server.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        )
        .unwrap_or_else(|err| panic!("{err}"));
        server.pg_ctl("start");
        server
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn pg_ctl(&self, action: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let (data, log) = (
            self.data(),
            self.dir.join("server.log").display().to_string(),
        );
        let mut args = vec!["-D", &data, "-w", "-t", "60", "-l", &log];
        match action {
            "start" => args.extend(["-o", &options, "start"]),
            _ => args.extend(["-m", "fast", "stop"]),
        }
        as_postgres("pg_ctl", &args).unwrap_or_else(|err| panic!("{err}"));
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`: where test databases are made.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The processes serving the idle connections whose last statement matches `like` (SQL
    /// `LIKE`), in any database of the server.
    pub fn idle_backends(&self, like: &str) -> Vec<u32> {
        let query = format!(
            "SELECT pid FROM pg_stat_activity WHERE state = 'idle' AND query LIKE '{}'",
            like.replace('\'', "''")
        );
        let (port, socket) = (self.port.to_string(), self.dir.display().to_string());
        as_postgres(
            "psql",
            &[
                "-h", &socket, "-p", &port, "-U", "postgres", "-d", "postgres", "-At", "-c", &query,
            ],
        )
        .unwrap_or_else(|err| panic!("{err}"))
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
    }

    /// Freezes (`STOP`) or thaws (`CONT`) one process of the server: its connection stays open
    /// and answers nothing, while others do.
    pub fn signal_backend(&self, pid: u32, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .is_ok_and(|status| status.success());
        assert!(sent, "kill -{signal} {pid}: no such server process");
    }

    /// Freezes (`STOP`) or thaws (`CONT`) every process of the server: connections stay open
    /// and nothing answers, as in a partition that sends no reset.
    pub fn signal_all(&self, signal: &str) {
        let pid_file = self.dir.join("data/postmaster.pid");
        let text = std::fs::read_to_string(&pid_file).unwrap_or_default();
        let Some(postmaster) = text.lines().next().map(str::trim).filter(|p| !p.is_empty()) else {
            return;
        };
        // Children first, so that none is started by a postmaster that is still running.
        let _ = Command::new("pkill")
            .args([&format!("-{signal}"), "-P", postmaster])
            .status();
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), postmaster])
            .status();
    }

    /// Stops the server (fast: connections are closed) and starts it again.
    pub fn restart(&self) {
        self.pg_ctl("stop");
        self.pg_ctl("start");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // A frozen server would not stop.
        self.signal_all("CONT");
        let _ = as_postgres(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
