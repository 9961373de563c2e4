//! Where the collector keeps telemetry and policies: a SQLite file (the embedded default,
//! one collector) or a PostgreSQL database (`postgres://…`, shared by several replicas).

use crate::fleet::{self, Outcome};
use crate::pg::{self, PgStore};
use crate::store::{Store, StoredEvent};
use flowguard_engine::config::Settings;
use flowguard_engine::policy::Policy;
use flowguard_proto::v1;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
pub enum Backend {
    /// The store, and a second connection to it for `Sessions.Completed`: WAL lets it read
    /// while a batch commits (with fsync) on the first, so a proxy's short deadline is not
    /// spent waiting for another's commit.
    Sqlite(Arc<Mutex<Store>>, Arc<Mutex<Store>>),
    Postgres(PgStore),
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
        let store = Store::open(Path::new(db))?;
        let reader = Store::open(Path::new(db))?;
        Ok(Backend::Sqlite(
            Arc::new(Mutex::new(store)),
            Arc::new(Mutex::new(reader)),
        ))
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
            // SQLite commits with fsync: off the async workers.
            Backend::Sqlite(store, _) => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || -> Result<u64, Error> {
                    let mut store = store.lock().map_err(|_| "store lock poisoned")?;
                    Ok(store.insert_batch(&batch, now_ms)?)
                })
                .await?
            }
        }
    }

    /// Learns the fleet policy; `None` when another replica is learning.
    pub async fn learn(&self, settings: &Settings, now_ms: u64) -> Result<Option<Outcome>, Error> {
        match self {
            Backend::Postgres(pg) => Ok(pg.learn(settings, now_ms).await?),
            Backend::Sqlite(store, _) => {
                let (store, settings) = (store.clone(), settings.clone());
                tokio::task::spawn_blocking(move || -> Result<Option<Outcome>, Error> {
                    let store = store.lock().map_err(|_| "store lock poisoned")?;
                    Ok(Some(fleet::learn_and_store(&store, &settings, now_ms)?))
                })
                .await?
            }
        }
    }

    /// The newest stored policy: its version and JSON.
    pub async fn latest_row(&self) -> Result<Option<(u64, String)>, Error> {
        match self {
            Backend::Postgres(pg) => Ok(pg.latest_row().await?),
            Backend::Sqlite(store, _) => {
                let store = store.lock().map_err(|_| "store lock poisoned")?;
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
            Backend::Sqlite(store, _) => {
                let store = store.lock().map_err(|_| "store lock poisoned")?;
                Ok(store.latest_policy()?)
            }
        }
    }

    pub async fn events(&self, normal_only: bool) -> Result<Vec<StoredEvent>, Error> {
        match self {
            Backend::Postgres(pg) => Ok(pg.events(normal_only).await?),
            Backend::Sqlite(store, _) => {
                let store = store.lock().map_err(|_| "store lock poisoned")?;
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
            Backend::Sqlite(_, reader) => {
                let reader = reader.clone();
                tokio::task::spawn_blocking(move || -> Result<_, Error> {
                    let reader = reader.lock().map_err(|_| "store lock poisoned")?;
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
            Backend::Sqlite(store, _) => {
                let store = store.lock().map_err(|_| "store lock poisoned")?;
                Ok((
                    store.event_count()?,
                    store.dropped_count()?,
                    store.latest_version()?,
                ))
            }
        }
    }
}
