//! The real collector (`flowguard serve`) as a child process on a loopback port, with a
//! real SQLite file; killable, restartable on the same port and database.

use crate::envoy::{repo_root, EnvoyConfig};
use crate::patience::eventually;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The `flowguard` binary built by `make test` (or `cargo build -p flowguard-collector`).
pub fn collector_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("FLOWGUARD_BIN") {
        return Ok(PathBuf::from(p));
    }
    for profile in ["debug", "release"] {
        let p = repo_root().join("target").join(profile).join("flowguard");
        if p.exists() {
            return Ok(p);
        }
    }
    Err("no flowguard binary: run `cargo build -p flowguard-collector` first".into())
}

/// Runs the `flowguard` command with `args`: its exit code, standard output and error.
pub fn run_flowguard(args: &[&str]) -> (i32, String, String) {
    let out = collector_bin()
        .and_then(|bin| {
            std::process::Command::new(bin)
                .args(args)
                .output()
                .map_err(|e| e.to_string())
        })
        .unwrap_or_else(|e| panic!("flowguard {args:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh database path under `target/collector-runs` for test `name`.
pub fn scratch_db(name: &str) -> Result<PathBuf, String> {
    let dir = repo_root().join("target/collector-runs");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let db = dir.join(format!("{name}-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    Ok(db)
}

/// A filter's `collector` member reporting every session (sample 1.0) as `node` and
/// flushing often; `extra` adds members (`,"token":"…"`). For the native module the
/// harness adds `address` ([`crate::native_envoy::with_address`]).
pub fn reporting_section(node: &str, extra: &str) -> String {
    format!(
        r#""collector":{{"cluster":"flowguard_collector","node":"{node}","sample_rate":1.0,
            "flush_interval_ms":100,"timeout_ms":1000,"policy_interval_ms":300{extra}}}"#
    )
}

pub struct Collector {
    child: Child,
    pub addr: SocketAddr,
    pub db: PathBuf,
    args: Vec<String>,
}

impl Collector {
    /// Starts `flowguard serve` on a free port with `db` and extra `args`.
    pub fn start(db: &Path, args: &[&str]) -> Result<Collector, String> {
        Collector::start_on(
            "127.0.0.1:0",
            db,
            args.iter().map(|s| s.to_string()).collect(),
        )
    }

    fn start_on(listen: &str, db: &Path, args: Vec<String>) -> Result<Collector, String> {
        let mut child = Command::new(collector_bin()?)
            .args(["serve", "--listen", listen, "--db"])
            .arg(db)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the collector: {e}"))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("flowguard collector listening on ") {
                    let _ = tx.send(Ok(rest.split(' ').next().unwrap_or("").to_owned()));
                }
                eprintln!("[collector] {line}");
            }
            let _ = tx.send(Err("the collector exited".to_owned()));
        });
        let addr = eventually("the collector to listen", || rx.try_recv().ok())??;
        let addr = addr
            .parse()
            .map_err(|e| format!("collector address {addr:?}: {e}"))?;
        Ok(Collector {
            child,
            addr,
            db: db.to_owned(),
            args,
        })
    }

    /// An Envoy with filter `json` in front of `upstream`, reporting here.
    pub fn envoy_config(&self, json: &str, upstream: SocketAddr) -> EnvoyConfig {
        let mut cfg = EnvoyConfig::new(json, upstream);
        cfg.collector = Some(self.addr);
        cfg
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process at once (SIGKILL): nothing is flushed or closed cleanly.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the process (SIGSTOP) without closing anything: its port still accepts
    /// connections and nothing answers, as a collector stalled by its disk or a pause.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen process run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let sent = Command::new("kill")
            .args([which, &self.child.id().to_string()])
            .status();
        assert!(
            sent.is_ok_and(|s| s.success()),
            "kill {which} the collector"
        );
    }

    /// Starts again on the same port and database.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let again = eventually("the port to be free again", || {
            Collector::start_on(&self.addr.to_string(), &self.db, self.args.clone()).ok()
        })?;
        let old = std::mem::replace(self, again);
        std::mem::forget(old); // its child is already reaped
        Ok(())
    }

    /// `flowguard stats`: (events stored, drops reported by filters, policy version).
    pub fn stats(&self) -> Result<(u64, u64, u64), String> {
        let out = Command::new(collector_bin()?)
            .args(["stats", "--db"])
            .arg(&self.db)
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout);
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok((
            get("events"),
            get("dropped_by_filters"),
            get("policy_version"),
        ))
    }

    /// Runs another `flowguard` subcommand on this database; its standard output.
    pub fn tool(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(collector_bin()?)
            .args(args)
            .arg("--db")
            .arg(&self.db)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}
