//! `flowguard`: the collector and its tools. It stores what every filter reports, learns
//! the fleet's policy with the engine's own learner, serves it back over gRPC, and lets an
//! operator read, draw and dry-run a policy before enforcing it.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use flowguard_collector::backend::Backend;
use flowguard_collector::{access_log, fleet, graph, replay, service};
use flowguard_engine::config::Settings;
use flowguard_engine::model::Model;
use flowguard_engine::policy::Policy;
use flowguard_proto::v1::policies_server::PoliciesServer;
use flowguard_proto::v1::sessions_server::SessionsServer;
use flowguard_proto::v1::telemetry_server::TelemetryServer;
use service::{now_ms, Collector};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "flowguard",
    version,
    about = "flowguard's collector: telemetry in, fleet policy out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC telemetry and policy services on a SQLite store.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// A SQLite file, or a PostgreSQL URL (`postgres://user@host/db`) that several
        /// collectors may share.
        #[arg(long, default_value = "flowguard.db")]
        db: String,
        /// The filter's plugin configuration (JSON): learning thresholds and limits.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Learn the fleet policy every this many seconds (0: only with `flowguard learn`).
        #[arg(long, default_value_t = 30)]
        learn_interval_s: u64,
        /// Require `authorization: Bearer <token>` from filters.
        #[arg(long, env = "FLOWGUARD_TOKEN")]
        token: Option<String>,
        #[command(flatten)]
        tls: TlsArgs,
        /// Serve the operator's console (HTML) on this address (off unless given). On a
        /// loopback address it may be read without credentials; decisions always need
        /// the console token.
        #[arg(long)]
        console: Option<SocketAddr>,
        /// The console's login token: needed to read a console listening beyond loopback,
        /// and to make decisions (without it decisions are refused).
        #[arg(long, env = "FLOWGUARD_CONSOLE_TOKEN", hide_env_values = true)]
        console_token: Option<String>,
    },
    /// Learn a policy now, from the store or from Envoy JSON access logs.
    Learn {
        /// A SQLite file, or a PostgreSQL URL (`postgres://user@host/db`) that several
        /// collectors may share.
        #[arg(long, default_value = "flowguard.db")]
        db: String,
        /// Learn from this Envoy JSON access log instead of stored telemetry.
        #[arg(long)]
        envoy_log: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also write the policy JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show or draw a policy.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Dry-run a policy over stored traffic: what it would flag and block.
    Replay {
        /// A SQLite file, or a PostgreSQL URL (`postgres://user@host/db`) that several
        /// collectors may share.
        #[arg(long, default_value = "flowguard.db")]
        db: String,
        /// A policy JSON file (default: the newest stored policy).
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Count stored events and reported drops.
    Stats {
        /// A SQLite file, or a PostgreSQL URL (`postgres://user@host/db`) that several
        /// collectors may share.
        #[arg(long, default_value = "flowguard.db")]
        db: String,
    },
    /// Print the endpoint templates an OpenAPI 3.0/3.1 spec (JSON or YAML) declares, as
    /// the plugin configuration's `endpoints`, or merged into a configuration.
    Openapi {
        /// The spec file.
        spec: PathBuf,
        /// A plugin configuration (JSON) to merge the templates into; the merged
        /// configuration is validated and printed.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The path prefix the proxy sees, instead of the spec's `servers` URL path.
        #[arg(long)]
        base_path: Option<String>,
    },
}

/// TLS for `serve`: a certificate and key make it TLS-only; a client CA makes it mutual
/// TLS (only filters holding a certificate that CA signed can connect).
#[derive(clap::Args)]
struct TlsArgs {
    /// PEM certificate chain the collector presents.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA that must have signed every client's certificate (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

impl TlsArgs {
    fn config(&self) -> Result<Option<tonic::transport::ServerTlsConfig>, Error> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
        if let Some(ca) = &self.tls_client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(Some(tls))
    }
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Print the newest stored policy (or a file) readably, or as JSON.
    Show {
        /// A SQLite file, or a PostgreSQL URL (`postgres://user@host/db`) that several
        /// collectors may share.
        #[arg(long, default_value = "flowguard.db")]
        db: String,
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Render the learned call graph as SVG.
    Graph {
        /// A SQLite file, or a PostgreSQL URL (`postgres://user@host/db`) that several
        /// collectors may share.
        #[arg(long, default_value = "flowguard.db")]
        db: String,
        #[arg(long)]
        file: Option<PathBuf>,
        /// Where to write the SVG (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowguard: {e}");
            ExitCode::FAILURE
        }
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn settings(config: Option<&Path>) -> Result<Settings, Error> {
    let bytes = match config {
        Some(p) => std::fs::read(p).map_err(|e| format!("config {}: {e}", p.display()))?,
        None => Vec::new(),
    };
    Ok(Settings::from_json(&bytes).map_err(|e| format!("config: {e}"))?)
}

/// Runs a command's work on a current-thread runtime (the stores' clients are async).
fn block_on<T>(work: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

async fn load_policy(db: &str, file: Option<&Path>) -> Result<Policy, Error> {
    match file {
        Some(f) => {
            let bytes = std::fs::read(f).map_err(|e| format!("policy {}: {e}", f.display()))?;
            Ok(Policy::from_json(&bytes).map_err(|e| format!("policy {}: {e}", f.display()))?)
        }
        None => Backend::open(db, true)
            .await?
            .latest_policy()
            .await?
            .ok_or_else(|| {
                format!("database {db}: no policy learned yet (run `flowguard learn`)").into()
            }),
    }
}

/// `flowguard openapi`: the spec's templates, alone or merged into a configuration.
fn openapi(spec: &Path, config: Option<&Path>, base_path: Option<&str>) -> Result<(), Error> {
    let text =
        std::fs::read_to_string(spec).map_err(|e| format!("spec {}: {e}", spec.display()))?;
    let doc = flowguard_collector::openapi::parse(&text)
        .map_err(|e| format!("spec {}: {e}", spec.display()))?;
    let imported = flowguard_collector::openapi::import(&doc, base_path)
        .map_err(|e| format!("spec {}: {e}", spec.display()))?;
    let mut out = match config {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| format!("config {}: {e}", p.display()))?;
            serde_json::from_slice(&bytes).map_err(|e| format!("config {}: {e}", p.display()))?
        }
        None => serde_json::json!({}),
    };
    flowguard_collector::openapi::merge_into(&mut out, &imported)?;
    let json = serde_json::to_string_pretty(&out)?;
    Settings::from_json(json.as_bytes()).map_err(|e| format!("the merged configuration: {e}"))?;
    println!("{json}");
    eprintln!(
        "flowguard: {} templates ({} deprecated) from {}",
        imported.templates.len(),
        imported.deprecated.len(),
        spec.display()
    );
    Ok(())
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Openapi {
            spec,
            config,
            base_path,
        } => openapi(&spec, config.as_deref(), base_path.as_deref()),
        Command::Serve {
            listen,
            db,
            config,
            learn_interval_s,
            token,
            tls,
            console,
            console_token,
        } => serve(
            Listen {
                grpc: listen,
                console,
                console_token,
            },
            &db,
            config.as_deref(),
            learn_interval_s,
            token,
            tls.config()?,
        ),
        Command::Learn {
            db,
            envoy_log,
            config,
            out,
        } => {
            let settings = settings(config.as_deref())?;
            let policy = match envoy_log {
                Some(log) => {
                    let text = std::fs::read_to_string(&log)
                        .map_err(|e| format!("log {}: {e}", log.display()))?;
                    let (mut obs, skipped) = access_log::parse(&text);
                    eprintln!(
                        "read {} requests from {} ({} lines skipped)",
                        obs.len(),
                        log.display(),
                        skipped
                    );
                    fleet::learn_policy(&mut obs, &settings, now_ms() / 1000).map_err(
                        |(s, r)| format!("not enough traffic: {s} sessions, {r} requests"),
                    )?
                }
                None => block_on(async {
                    let backend = Backend::open(&db, true).await?;
                    match backend.learn(&settings, now_ms()).await? {
                        Some(fleet::Outcome::Learned(p)) => Ok(*p),
                        Some(fleet::Outcome::Unchanged(v)) => {
                            eprintln!("learned the same rules as the stored version {v}");
                            load_policy(&db, None).await
                        }
                        Some(fleet::Outcome::NotReady { sessions, requests }) => Err(format!(
                            "not enough traffic: {sessions} sessions, {requests} requests"
                        )
                        .into()),
                        None => Err(
                            "another collector is learning the fleet policy now: try again".into(),
                        ),
                    }
                })?,
            };
            if let Some(out) = out {
                std::fs::write(&out, policy.to_json_pretty())
                    .map_err(|e| format!("{}: {e}", out.display()))?;
            }
            print!("{}", show(&policy));
            Ok(())
        }
        Command::Policy {
            action: PolicyAction::Show { db, file, json },
        } => {
            let policy = block_on(load_policy(&db, file.as_deref()))?;
            if json {
                println!("{}", policy.to_json_pretty());
            } else {
                print!("{}", show(&policy));
            }
            Ok(())
        }
        Command::Policy {
            action: PolicyAction::Graph { db, file, out },
        } => {
            let svg = graph::render(&block_on(load_policy(&db, file.as_deref()))?);
            match out {
                Some(out) => {
                    std::fs::write(&out, svg).map_err(|e| format!("{}: {e}", out.display()))?
                }
                None => print!("{svg}"),
            }
            Ok(())
        }
        Command::Replay { db, policy, config } => {
            let settings = settings(config.as_deref())?;
            let (policy, events) = block_on(async {
                let policy = load_policy(&db, policy.as_deref()).await?;
                let events = Backend::open(&db, true).await?.events(false).await?;
                Ok((policy, events))
            })?;
            let model = Model::compile(&policy, &settings)?;
            let mut obs: Vec<_> = events.into_iter().map(|e| e.observation).collect();
            print!(
                "policy version {}: {}",
                policy.version,
                replay::replay(&model, &settings, &mut obs).render()
            );
            Ok(())
        }
        Command::Stats { db } => {
            let (events, dropped, version) =
                block_on(async { Backend::open(&db, true).await?.stats().await })?;
            println!("events {events}\ndropped_by_filters {dropped}\npolicy_version {version}");
            Ok(())
        }
    }
}

/// A policy, readably: endpoints with limits and prerequisites.
fn show(p: &Policy) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "policy version {}: {} endpoints, learned from {} sessions and {} requests (window {} s)",
        p.version,
        p.endpoints.len(),
        p.learned_from.sessions,
        p.learned_from.requests,
        p.window_s
    );
    for e in &p.endpoints {
        let per = |l: Option<flowguard_engine::policy::Limit>, units: &str| {
            l.map_or("-".to_owned(), |l| {
                format!(
                    "{} (p50 {} p90 {} p99 {}; bound {} from {} {units})",
                    l.limit, l.p50, l.p90, l.p99, l.bound, l.units
                )
            })
        };
        let lim = |l| per(l, "sessions");
        let _ = writeln!(
            out,
            "  {}{}",
            e.template,
            if e.entry { "   [entry]" } else { "" }
        );
        let _ = writeln!(
            out,
            "      rate/window {}   distinct ids/window {}",
            lim(e.rate),
            lim(e.distinct_ids)
        );
        if e.address_rate.is_some() || e.address_distinct_ids.is_some() {
            let _ = writeln!(
                out,
                "      per address and carried session: rate/window {}   distinct ids/window {}",
                per(e.address_rate, "addresses"),
                per(e.address_distinct_ids, "addresses")
            );
        }
        if let Some(rules) = e.order_rules() {
            let _ = writeln!(out, "      requires {rules}   [blocks]");
        }
        if let Some(rules) = e.flag_rules() {
            let _ = writeln!(
                out,
                "      requires {rules}   [flags: evidence below the blocking bound]"
            );
        }
        if let Some(ev) = &e.evidence {
            let _ = writeln!(out, "      {}", ev.describe());
        }
    }
    if let Some(a) = p.auth_failures {
        let _ = writeln!(
            out,
            "  auth failures per session: limit {} (p99 {})",
            a.limit, a.p99
        );
    }
    out
}

/// Where `serve` listens: gRPC, and the console if asked.
struct Listen {
    grpc: SocketAddr,
    console: Option<SocketAddr>,
    console_token: Option<String>,
}

fn serve(
    listen: Listen,
    db: &str,
    config: Option<&Path>,
    learn_interval_s: u64,
    token: Option<String>,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Result<(), Error> {
    let settings = settings(config)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let backend = Backend::open(db, false).await?;
        let current = Arc::new(RwLock::new(backend.latest_row().await?));
        if let Some(addr) = listen.console {
            let console = flowguard_collector::console::Console {
                backend: backend.clone(),
                current: current.clone(),
                settings: settings.clone(),
                access: flowguard_collector::console::access::Access::new(
                    listen.console_token.clone(),
                    addr.ip().is_loopback(),
                ),
            };
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("console {addr}: {e}"))?;
            eprintln!(
                "flowguard console on http://{}/ ({}; decisions {})",
                listener.local_addr()?,
                match (addr.ip().is_loopback(), console.access.token_configured()) {
                    (true, _) => "loopback: read-only without credentials",
                    (false, true) => "beyond loopback: the console token is needed to read it",
                    (false, false) =>
                        "beyond loopback without a console token: nothing can be read there",
                },
                if console.access.token_configured() {
                    "need a login with the console token"
                } else {
                    "refused: no console token configured"
                }
            );
            let app = flowguard_collector::console::router(Arc::new(console));
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    eprintln!("flowguard console stopped: {e}");
                }
            });
        }
        if learn_interval_s > 0 {
            let (backend, current) = (backend.clone(), current.clone());
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(learn_interval_s));
                loop {
                    every.tick().await;
                    learn_once(&backend, &current, &settings).await;
                }
            });
        }
        let collector = Collector {
            backend: backend.clone(),
            current: current.clone(),
            token: token.clone(),
            refresh_failing: AtomicBool::new(false),
        };
        let sessions = Collector {
            backend: backend.clone(),
            current: current.clone(),
            token: token.clone(),
            refresh_failing: AtomicBool::new(false),
        };
        let policies = Collector {
            backend,
            current,
            token,
            refresh_failing: AtomicBool::new(false),
        };
        let listener = tokio::net::TcpListener::bind(listen.grpc).await?;
        eprintln!(
            "flowguard collector listening on {} (db {}{})",
            listener.local_addr()?,
            flowguard_collector::pg::redacted(db),
            match &tls {
                Some(_) => ", TLS",
                None => "",
            }
        );
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls)?;
        }
        server
            .add_service(TelemetryServer::new(collector))
            .add_service(PoliciesServer::new(policies).max_decoding_message_size(1 << 20))
            .add_service(SessionsServer::new(sessions).max_decoding_message_size(64 << 10))
            .serve_with_incoming_shutdown(tokio_stream_listener(listener), async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}

async fn learn_once(backend: &Backend, current: &service::Current, settings: &Settings) {
    match backend.learn(settings, now_ms()).await {
        Ok(Some(fleet::Outcome::Learned(p))) => {
            eprintln!(
                "learned fleet policy version {} from {} sessions",
                p.version, p.learned_from.sessions
            );
            if let Ok(mut c) = current.write() {
                *c = Some((p.version, p.to_json()));
            }
        }
        Ok(_) => {}
        Err(e) => eprintln!("fleet learning failed: {e}"),
    }
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
}
