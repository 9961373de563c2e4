//! The collector as a target and as a failure: only filters holding the fleet's client
//! certificate get in (mutual TLS through Envoy's transport socket), and a collector that
//! is slow, whose disk fills up or turns read-only, never touches the request path and
//! never acknowledges what it did not store.

use flowguard_integration::collector::{scratch_db, Collector};
use flowguard_integration::envoy::{repo_root, CollectorTls, Envoy, EnvoyConfig};
use flowguard_integration::patience::eventually;
use flowguard_integration::pki::Pki;
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::{Client, Session};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Reports every request, flushes every 100 ms, gives up on a callout after one second;
/// never learns by itself.
const REPORTING: &str = r#"{"mode":"monitor","learning":{"min_sessions":1000000,"min_requests":1000000,"tick_ms":100},
    "collector":{"cluster":"flowguard_collector","node":"edge","sample_rate":1.0,
                 "flush_interval_ms":100,"timeout_ms":1000,"policy_interval_ms":300}}"#;

fn envoy(shop: &ShopServer, collector: &Collector, tls: Option<CollectorTls>) -> Envoy {
    let mut cfg = EnvoyConfig::new(REPORTING, shop.addr);
    cfg.collector = Some(collector.addr);
    cfg.collector_tls = tls;
    Envoy::start(&cfg).unwrap_or_else(|e| panic!("Envoy starts: {e}"))
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = repo_root()
        .join("target/collector-runs")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// `n` single requests; their statuses and the median time of one.
fn timed(client: &Client, n: usize) -> (Vec<u16>, Duration) {
    let mut s = Session::new(client);
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        s.menu();
        times.push(started.elapsed());
    }
    times.sort();
    (s.statuses(), times[n / 2])
}

fn acknowledged(envoy: &Envoy) -> u64 {
    envoy.counter("flowguard.telemetry.sent")
}

fn lost(envoy: &Envoy) -> u64 {
    envoy.counter("flowguard.telemetry.failed") + envoy.counter("flowguard.telemetry.dropped")
}

#[test]
fn only_filters_with_the_fleet_certificate_reach_the_collector() {
    let dir = scratch_dir("pki");
    let fleet = Pki::generate(&dir.join("fleet"), "flowguard fleet CA").expect("fleet PKI");
    let rogue = Pki::generate(&dir.join("rogue"), "rogue CA").expect("rogue PKI");
    let path = |p: &Path| p.display().to_string();
    let collector = Collector::start(
        &scratch_db("tls").expect("db"),
        &[
            "--learn-interval-s",
            "0",
            "--tls-cert",
            &path(&fleet.server_cert),
            "--tls-key",
            &path(&fleet.server_key),
            "--tls-client-ca",
            &path(&fleet.ca),
        ],
    )
    .expect("collector with mutual TLS");
    let shop = ShopServer::start().expect("shop");
    let tls = |ca: &Path, client: Option<(&Path, &Path)>| {
        Some(CollectorTls {
            ca: ca.to_owned(),
            client: client.map(|(c, k)| (c.to_owned(), k.to_owned())),
        })
    };

    let intruders = [
        ("plaintext", envoy(&shop, &collector, None)),
        (
            "TLS without a client certificate",
            envoy(&shop, &collector, tls(&fleet.ca, None)),
        ),
        (
            "a certificate from another CA",
            envoy(
                &shop,
                &collector,
                tls(&fleet.ca, Some((&rogue.client_cert, &rogue.client_key))),
            ),
        ),
        (
            "a filter that does not trust the collector's CA",
            envoy(
                &shop,
                &collector,
                tls(&rogue.ca, Some((&fleet.client_cert, &fleet.client_key))),
            ),
        ),
    ];
    for (what, intruder) in &intruders {
        let (statuses, _) = timed(&Client::new(&intruder.url), 20);
        assert!(statuses.iter().all(|s| *s == 200), "{what}: {statuses:?}");
        eventually(&format!("{what}: batches refused and counted"), || {
            (intruder.counter("flowguard.telemetry.failed") > 0).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", intruder.log()));
        assert_eq!(acknowledged(intruder), 0, "{what}");
    }
    assert_eq!(collector.stats().expect("stats").0, 0, "nothing stored");

    let member = envoy(
        &shop,
        &collector,
        tls(&fleet.ca, Some((&fleet.client_cert, &fleet.client_key))),
    );
    timed(&Client::new(&member.url), 20);
    let stored = eventually("the member's events stored", || {
        let stored = collector.stats().ok()?.0;
        (stored >= 20).then_some(stored)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", member.log()));
    assert_eq!(stored, 20, "only the member's requests");
    assert_eq!(acknowledged(&member), 20);
}

#[test]
fn a_slow_collector_costs_requests_nothing_and_loses_nothing_it_acknowledged() {
    let db = scratch_db("slow").expect("db");
    let collector = Collector::start(&db, &["--learn-interval-s", "0"]).expect("collector");
    let shop = ShopServer::start().expect("shop");
    let envoy = envoy(&shop, &collector, None);
    let client = Client::new(&envoy.url);
    let (_, before) = timed(&client, 100);
    eventually("reporting", || (acknowledged(&envoy) > 0).then_some(())).expect("reporting");

    // Another writer holds SQLite's write lock for three seconds: every insert of the
    // collector waits (its busy timeout is five), so each of its answers takes seconds.
    let lock = rusqlite::Connection::open(&db).expect("open the collector's database");
    lock.execute_batch("BEGIN EXCLUSIVE").expect("write lock");
    let held = Instant::now();
    let (statuses, during) = timed(&client, 300);
    while held.elapsed() < Duration::from_secs(3) {
        timed(&client, 10);
    }
    let lost_while_slow = eventually("timed-out callouts counted", || {
        let n = lost(&envoy);
        (n > 0).then_some(n)
    })
    .expect("slow answers counted as failed");
    lock.execute_batch("COMMIT").expect("release");

    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        during <= before * 2 + Duration::from_millis(2),
        "median request {during:?} while the collector is slow, {before:?} before"
    );
    let sent_before = acknowledged(&envoy);
    timed(&client, 20);
    eventually("reporting to resume", || {
        (acknowledged(&envoy) > sent_before).then_some(())
    })
    .expect("resumed");
    let acked = acknowledged(&envoy);
    let stored = collector.stats().expect("stats").0;
    assert!(stored >= acked, "{acked} acknowledged, {stored} stored");
    eprintln!(
        "slow collector: median {before:?} -> {during:?}; {lost_while_slow} events counted lost"
    );
}

/// A small tmpfs the test can fill, grow and turn read-only: a real full or read-only disk
/// under the collector's SQLite file. Needs CAP_SYS_ADMIN (CI runs as root, as dockerd does).
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(dir: PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&dir).expect("mount point");
        mount(
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
            &dir,
        );
        SmallDisk { dir }
    }

    fn remount(&self, options: &str) {
        mount(&["-o", &format!("remount,{options}")], &self.dir);
    }
}

fn mount(args: &[&str], dir: &Path) {
    let out = Command::new("mount")
        .args(args)
        .arg(dir)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mount {args:?} {}: {} (this test needs root with CAP_SYS_ADMIN)",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

#[test]
fn a_full_or_read_only_disk_costs_requests_nothing_and_loses_nothing_it_acknowledged() {
    let disk = SmallDisk::mount(scratch_dir("small-disk").join("mnt"), "256k");
    let mut collector =
        Collector::start(&disk.dir.join("flowguard.db"), &["--learn-interval-s", "0"])
            .expect("collector");
    let shop = ShopServer::start().expect("shop");
    let envoy = envoy(&shop, &collector, None);
    let client = Client::new(&envoy.url);
    let check = |phase: &str, envoy: &Envoy, collector: &Collector| {
        let acked = acknowledged(envoy);
        let stored = collector.stats().expect("stats").0;
        assert!(
            stored >= acked,
            "{phase}: {acked} acknowledged, {stored} stored"
        );
        eprintln!(
            "{phase}: {acked} acknowledged, {stored} stored, {} lost",
            lost(envoy)
        );
    };

    // Fill the disk: every request is an event of about a hundred bytes.
    let full = eventually("the disk to fill", || {
        let (statuses, _) = timed(&client, 200);
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        (lost(&envoy) > 0).then_some(())
    });
    full.unwrap_or_else(|e| panic!("{e}: {} acknowledged", acknowledged(&envoy)));
    assert!(collector.is_running(), "the collector survives a full disk");
    let (statuses, _) = timed(&client, 100);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    check("disk full", &envoy, &collector);

    disk.remount("size=16m");
    let acked = acknowledged(&envoy);
    timed(&client, 50);
    eventually("reporting to resume on a grown disk", || {
        (acknowledged(&envoy) > acked).then_some(())
    })
    .expect("resumed after space was freed");
    check("disk grown", &envoy, &collector);

    // A file system cannot turn read-only under an open writer (remount says busy), so
    // the read-only disk is met the way it is in practice: the collector restarts on it.
    collector.kill();
    disk.remount("ro");
    collector
        .restart()
        .expect("the collector starts on a read-only disk (it still serves policy)");
    let (acked, lost_before) = (acknowledged(&envoy), lost(&envoy));
    let (statuses, _) = timed(&client, 100);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    eventually("read-only failures counted", || {
        (lost(&envoy) > lost_before).then_some(())
    })
    .expect("failures counted while read-only");
    assert!(
        collector.is_running(),
        "the collector survives a read-only disk"
    );
    assert_eq!(
        acknowledged(&envoy),
        acked,
        "nothing acknowledged while read-only"
    );

    collector.kill();
    disk.remount("rw");
    collector.restart().expect("collector restarts read-write");
    timed(&client, 50);
    eventually("reporting to resume", || {
        (acknowledged(&envoy) > acked).then_some(())
    })
    .expect("resumed");
    check("read-write again", &envoy, &collector);
}
