//! Where the collector keeps telemetry and policies: a SQLite file (the embedded default,
//! one collector) or a PostgreSQL database (`postgres://…`, shared by several replicas).

use crate::fleet::{self, Outcome};
use crate::pg::{self, PgStore};
use crate::store::{AuditRow, Decided, EventRow, NodeRow, Store, StoredEvent, TemplateSeen};
use flowguard_engine::config::Settings;
use flowguard_engine::policy::Policy;
use flowguard_proto::v1;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
pub enum Backend {
    Sqlite(Arc<Sqlite>),
    Postgres(PgStore),
}

/// One SQLite file through three connections and a writer thread. WAL lets readers go on
/// while the writer commits (with fsync): `Sessions.Completed` answers within a proxy's
/// short deadline, and the learner reads every event without holding up reports.
pub struct Sqlite {
    /// Batches (by the writer thread) and policies are written here.
    store: Arc<Mutex<Store>>,
    /// `Sessions.Completed` reads here.
    questions: Mutex<Store>,
    /// The fleet learner reads here.
    learning: Mutex<Store>,
    /// The console reads here (its long reads hold up neither questions nor learning).
    console: Mutex<Store>,
    writer: std::sync::mpsc::Sender<Job>,
}

/// A batch waiting for the writer thread, and where its result goes.
struct Job {
    batch: v1::ReportRequest,
    now_ms: u64,
    done: tokio::sync::oneshot::Sender<Result<u64, String>>,
}

/// Batches committed in one transaction at most.
const GROUP: usize = 256;

/// The writer thread: every batch waiting when a commit starts goes into that commit, so
/// many proxies' small prompt batches cost one fsync, not one each (an fsync per batch
/// let reports fall seconds behind under a fleet's load).
fn write_batches(store: Arc<Mutex<Store>>, jobs: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let result = match store.lock() {
            Ok(mut store) => store
                .insert_batches(group.iter().map(|j| (&j.batch, j.now_ms)))
                .map_err(|e| e.to_string()),
            Err(_) => Err("store lock poisoned".to_owned()),
        };
        for (i, job) in group.into_iter().enumerate() {
            let answer = match &result {
                Ok(stored) => Ok(stored.get(i).copied().unwrap_or(0)),
                Err(e) => Err(e.clone()),
            };
            let _ = job.done.send(answer);
        }
    }
}

impl Backend {
    /// Opens `db`: a `postgres://` URL, or a SQLite file (created unless `must_exist`).
    pub async fn open(db: &str, must_exist: bool) -> Result<Backend, Error> {
        if pg::is_url(db) {
            return Ok(Backend::Postgres(PgStore::connect(db).await?));
        }
        if must_exist && !Path::new(db).exists() {
            return Err(format!(
                "database {db}: no such file (run `flowguard serve --db {db}` first)"
            )
            .into());
        }
        let open = || Store::open(Path::new(db));
        let store = Arc::new(Mutex::new(open()?));
        let (writer, jobs) = std::sync::mpsc::channel();
        let for_writer = store.clone();
        std::thread::Builder::new()
            .name("flowguard-sqlite-writer".into())
            .spawn(move || write_batches(for_writer, jobs))?;
        Ok(Backend::Sqlite(Arc::new(Sqlite {
            store,
            questions: Mutex::new(open()?),
            learning: Mutex::new(open()?),
            console: Mutex::new(open()?),
            writer,
        })))
    }

    /// Whether several collectors may share this store (each then serves the store's
    /// newest policy, not only what it learned itself).
    pub fn is_shared(&self) -> bool {
        matches!(self, Backend::Postgres(_))
    }

    /// Stores a batch, durably, before returning; a batch stored before is skipped.
    pub async fn insert_batch(&self, batch: v1::ReportRequest, now_ms: u64) -> Result<u64, Error> {
        match self {
            Backend::Postgres(pg) => Ok(pg.insert_batch(&batch, now_ms).await?),
            // SQLite commits with fsync: on the writer thread, grouped.
            Backend::Sqlite(db) => {
                let (done, result) = tokio::sync::oneshot::channel();
                db.writer
                    .send(Job {
                        batch,
                        now_ms,
                        done,
                    })
                    .map_err(|_| "the writer thread stopped")?;
                Ok(result.await.map_err(|_| "the writer thread stopped")??)
            }
        }
    }

    /// Learns the fleet policy; `None` when another replica is learning.
    pub async fn learn(&self, settings: &Settings, now_ms: u64) -> Result<Option<Outcome>, Error> {
        match self {
            Backend::Postgres(pg) => Ok(pg.learn(settings, now_ms).await?),
            // Read and learn on the learner's connection; only storing a new version
            // takes the writer's, so reports keep committing meanwhile.
            Backend::Sqlite(db) => {
                let (db, settings) = (db.clone(), settings.clone());
                tokio::task::spawn_blocking(move || -> Result<Option<Outcome>, Error> {
                    let (observations, latest, latest_version) = {
                        let reader = db.learning.lock().map_err(|_| "store lock poisoned")?;
                        let observations: Vec<_> = reader
                            .events(true)?
                            .into_iter()
                            .map(|e| e.observation)
                            .collect();
                        (
                            observations,
                            reader.latest_policy()?,
                            reader.latest_version()?,
                        )
                    };
                    let outcome =
                        fleet::next_policy(observations, latest, latest_version, &settings, now_ms);
                    if let Outcome::Learned(policy) = &outcome {
                        let store = db.store.lock().map_err(|_| "store lock poisoned")?;
                        // An operator's decision stored meanwhile wins: the next run
                        // learns from it (and carries its decisions).
                        if store.latest_version()? != latest_version {
                            return Ok(None);
                        }
                        store.save_policy(policy, now_ms)?;
                    }
                    Ok(Some(outcome))
                })
                .await?
            }
        }
    }

    /// The newest stored policy: its version and JSON.
    pub async fn latest_row(&self) -> Result<Option<(u64, String)>, Error> {
        match self {
            Backend::Postgres(pg) => Ok(pg.latest_row().await?),
            Backend::Sqlite(db) => {
                let store = db.store.lock().map_err(|_| "store lock poisoned")?;
                Ok(store.latest_policy()?.map(|p| (p.version, p.to_json())))
            }
        }
    }

    /// The newest stored policy if it is newer than version `known`.
    pub async fn newer_row(&self, known: u64) -> Result<Option<(u64, String)>, Error> {
        match self {
            Backend::Postgres(pg) => Ok(pg.newer_row(known).await?),
            Backend::Sqlite(..) => Ok(self.latest_row().await?.filter(|(v, _)| *v > known)),
        }
    }

    pub async fn latest_policy(&self) -> Result<Option<Policy>, Error> {
        match self {
            Backend::Postgres(pg) => Ok(pg.latest_policy().await?),
            Backend::Sqlite(db) => {
                let store = db.store.lock().map_err(|_| "store lock poisoned")?;
                Ok(store.latest_policy()?)
            }
        }
    }

    pub async fn events(&self, normal_only: bool) -> Result<Vec<StoredEvent>, Error> {
        match self {
            Backend::Postgres(pg) => Ok(pg.events(normal_only).await?),
            Backend::Sqlite(db) => {
                let store = db.store.lock().map_err(|_| "store lock poisoned")?;
                Ok(store.events(normal_only)?)
            }
        }
    }

    /// The events of `session` since `since_ms`, newest first and bounded: (template,
    /// identifier hash, status).
    pub async fn session_events(
        &self,
        session: u64,
        since_ms: u64,
    ) -> Result<Vec<(String, u64, u16)>, Error> {
        match self {
            Backend::Postgres(pg) => Ok(pg.session_events(session, since_ms).await?),
            Backend::Sqlite(db) => {
                let db = db.clone();
                tokio::task::spawn_blocking(move || -> Result<_, Error> {
                    let reader = db.questions.lock().map_err(|_| "store lock poisoned")?;
                    Ok(reader.session_events(session, since_ms)?)
                })
                .await?
            }
        }
    }

    /// (events stored, drops reported by filters, newest policy version).
    pub async fn stats(&self) -> Result<(u64, u64, u64), Error> {
        match self {
            Backend::Postgres(pg) => Ok(pg.stats().await?),
            Backend::Sqlite(db) => {
                let store = db.store.lock().map_err(|_| "store lock poisoned")?;
                Ok((
                    store.event_count()?,
                    store.dropped_count()?,
                    store.latest_version()?,
                ))
            }
        }
    }

    /// Runs `read` on the console's SQLite connection, off the async workers.
    async fn console_read<T: Send + 'static>(
        db: &Arc<Sqlite>,
        read: impl FnOnce(&Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, Error> {
        let db = db.clone();
        tokio::task::spawn_blocking(move || -> Result<T, Error> {
            let reader = db.console.lock().map_err(|_| "store lock poisoned")?;
            Ok(read(&reader)?)
        })
        .await?
    }

    /// Every node that reported, with its batches' totals (`recent_events` since `recent_ms`)
    /// and each worker's latest batch (the policy version and mode it runs).
    pub async fn nodes(&self, recent_ms: u64) -> Result<Vec<NodeRow>, Error> {
        match self {
            Backend::Postgres(pg) => Ok(pg.nodes(recent_ms).await?),
            Backend::Sqlite(db) => Self::console_read(db, move |s| s.nodes(recent_ms)).await,
        }
    }

    /// The newest flagged and blocked events since `since_ms` ('' filters: any).
    pub async fn verdict_events(
        &self,
        since_ms: u64,
        template: &str,
        rule: &str,
    ) -> Result<Vec<EventRow>, Error> {
        match self {
            Backend::Postgres(pg) => Ok(pg.verdict_events(since_ms, template, rule).await?),
            Backend::Sqlite(db) => {
                let (template, rule) = (template.to_owned(), rule.to_owned());
                Self::console_read(db, move |s| s.verdict_events(since_ms, &template, &rule)).await
            }
        }
    }

    /// A session's newest events, newest first.
    pub async fn session_history(&self, session: u64) -> Result<Vec<EventRow>, Error> {
        match self {
            Backend::Postgres(pg) => Ok(pg.session_history(session).await?),
            Backend::Sqlite(db) => {
                Self::console_read(db, move |s| s.session_history(session)).await
            }
        }
    }

    /// The events whose `x-request-id` is exactly `request_id`, newest first ('' finds
    /// nothing).
    pub async fn request_events(&self, request_id: &str) -> Result<Vec<EventRow>, Error> {
        match self {
            Backend::Postgres(pg) => Ok(pg.request_events(request_id).await?),
            Backend::Sqlite(db) => {
                let request_id = request_id.to_owned();
                Self::console_read(db, move |s| s.request_events(&request_id)).await
            }
        }
    }

    /// Every template in stored events: (template, events, last seen ms).
    pub async fn templates_seen(&self) -> Result<Vec<TemplateSeen>, Error> {
        match self {
            Backend::Postgres(pg) => Ok(pg.templates_seen().await?),
            Backend::Sqlite(db) => Self::console_read(db, |s| s.templates_seen()).await,
        }
    }

    /// Every event since `since_ms`, oldest first.
    pub async fn events_since(&self, since_ms: u64) -> Result<Vec<StoredEvent>, Error> {
        match self {
            Backend::Postgres(pg) => Ok(pg.events_since(since_ms).await?),
            Backend::Sqlite(db) => Self::console_read(db, move |s| s.events_since(since_ms)).await,
        }
    }

    /// Stores an operator's decision: `decide` makes the next policy version from the
    /// newest one, stored with an audit row in one transaction. `Ok(Err(_))`: refused.
    pub async fn decide(
        &self,
        who: &str,
        now_ms: u64,
        decide: impl FnOnce(Option<(u64, String)>) -> Result<Decided, String> + Send + 'static,
    ) -> Result<Result<Decided, String>, Error> {
        match self {
            Backend::Postgres(pg) => Ok(pg.decide(who, now_ms, decide).await?),
            // The writer's connection (its commits fsync): off the async workers.
            Backend::Sqlite(db) => {
                let (db, who) = (db.clone(), who.to_owned());
                tokio::task::spawn_blocking(move || -> Result<_, Error> {
                    let mut store = db.store.lock().map_err(|_| "store lock poisoned")?;
                    Ok(store.decide(&who, now_ms, decide)?)
                })
                .await?
            }
        }
    }

    /// The newest audited decisions first.
    pub async fn audit(&self, limit: u64) -> Result<Vec<AuditRow>, Error> {
        match self {
            Backend::Postgres(pg) => Ok(pg.audit(limit).await?),
            Backend::Sqlite(db) => Self::console_read(db, move |s| s.audit(limit)).await,
        }
    }
}
