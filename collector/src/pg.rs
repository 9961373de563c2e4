//! The collector's PostgreSQL store: several `flowguard serve` replicas share one database.
//!
//! The same tables as the SQLite store. What replicas need from each other, PostgreSQL
//! gives: a batch's row in `batches` is its claim (primary key node, worker, batch id), so
//! a batch sent through two replicas is stored once, whichever commits first; a batch is
//! acknowledged only after its transaction commits; and the fleet policy is learned under
//! a transaction-scoped advisory lock, so one replica learns at a time while the others
//! serve whatever version the database holds.

use crate::fleet::{self, Outcome};
use crate::store::{
    attach_workers, AuditRow, Decided, EventRow, NodeRow, StoredEvent, TemplateSeen, WorkerRow,
    EVENT_COLUMNS, LATEST_BATCHES, LIST_ROWS,
};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use flowguard_engine::config::Settings;
use flowguard_engine::learn::Observation;
use flowguard_engine::policy::Policy;
use flowguard_proto::v1;
use tokio_postgres::{GenericClient, NoTls};

/// Advisory lock keys (arbitrary, fixed): creating the schema, learning the fleet policy.
const SCHEMA_LOCK: i64 = 0x666c_6f77_0001;
const LEARNER_LOCK: i64 = 0x666c_6f77_0002;

/// Connections per replica: requests wait for one rather than open more.
const POOL_SIZE: usize = 8;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS batches (
    node TEXT NOT NULL, worker BIGINT NOT NULL, batch_id BIGINT NOT NULL,
    received_ms BIGINT NOT NULL, events BIGINT NOT NULL, dropped BIGINT NOT NULL,
    policy_version BIGINT NOT NULL DEFAULT 0, mode TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (node, worker, batch_id));
CREATE TABLE IF NOT EXISTS events (
    id BIGSERIAL PRIMARY KEY, node TEXT NOT NULL, time_ms BIGINT NOT NULL,
    session BIGINT NOT NULL, template TEXT NOT NULL, status BIGINT NOT NULL,
    verdict INTEGER NOT NULL, rules TEXT NOT NULL, latency_us BIGINT NOT NULL,
    summary BOOLEAN NOT NULL, ids BIGINT NOT NULL, weak BOOLEAN NOT NULL,
    request_id TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS events_session ON events (session, time_ms);
CREATE TABLE IF NOT EXISTS policies (
    version BIGINT PRIMARY KEY, created_ms BIGINT NOT NULL, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    id BIGSERIAL PRIMARY KEY, time_ms BIGINT NOT NULL, who TEXT NOT NULL,
    version BIGINT NOT NULL, summary TEXT NOT NULL, before TEXT NOT NULL, after TEXT NOT NULL);";

/// Columns added after their tables: a database from before gains them (with their
/// defaults) when a replica connects.
const ADDED: [(&str, &str, &str); 3] = [
    ("batches", "policy_version", "BIGINT NOT NULL DEFAULT 0"),
    ("batches", "mode", "TEXT NOT NULL DEFAULT ''"),
    ("events", "request_id", "TEXT NOT NULL DEFAULT ''"),
];

/// Indexes on added columns, made once the columns are there. Only rule events carry a
/// request id: the index holds those alone.
const ADDED_INDEXES: &str =
    "CREATE INDEX IF NOT EXISTS events_request ON events (request_id) WHERE request_id <> ''";

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("database {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("database: {0}")]
    Sql(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("stored policy is invalid: {0}")]
    Policy(String),
    #[error("learning: {0}")]
    Task(String),
}

#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
}

/// Whether `db` names a PostgreSQL database rather than a SQLite file.
pub fn is_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// The URL without its credentials, for messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl PgStore {
    /// Connects (a pool of `POOL_SIZE`) and creates the tables if needed; replicas
    /// starting together take turns at it.
    pub async fn connect(url: &str) -> Result<PgStore, PgError> {
        let target = redacted(url);
        let fail = |reason: String| PgError::Connect {
            target: target.clone(),
            reason,
        };
        let config: tokio_postgres::Config = url.parse().map_err(|e| fail(format!("{e}")))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let mut client = pool.get().await.map_err(|e| fail(e.to_string()))?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await?;
        tx.batch_execute(SCHEMA).await?;
        // ALTER TABLE takes the table's exclusive lock even when the column exists, and
        // would queue every replica's inserts behind a long read: only when it is missing.
        for (table, column, declared) in ADDED {
            let present: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                     WHERE table_schema = current_schema() AND table_name = $1
                       AND column_name = $2)",
                    &[&table, &column],
                )
                .await?
                .get(0);
            if !present {
                tx.batch_execute(&format!(
                    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {declared}"
                ))
                .await?;
            }
        }
        tx.batch_execute(ADDED_INDEXES).await?;
        tx.commit().await?;
        Ok(PgStore { pool })
    }

    /// Stores a batch in one transaction, committed before this returns; a batch already
    /// stored (by this replica or another) is skipped. Returns the events stored.
    pub async fn insert_batch(
        &self,
        batch: &v1::ReportRequest,
        now_ms: u64,
    ) -> Result<u64, PgError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Another replica storing the same batch holds its key until it commits or rolls
        // back: this insert waits for that, then claims the batch or finds it stored.
        let claimed = tx
            .execute(
                "INSERT INTO batches (node, worker, batch_id, received_ms, events, dropped,
                                      policy_version, mode)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                &[
                    &batch.node,
                    &i64::from(batch.worker),
                    &(batch.batch_id as i64),
                    &(now_ms as i64),
                    &(batch.events.len() as i64),
                    &(batch.dropped as i64),
                    &(batch.policy_version as i64),
                    &batch.mode,
                ],
            )
            .await?;
        if claimed == 0 {
            return Ok(0);
        }
        // One statement for the whole batch: columns as arrays, unnested into rows.
        let e = &batch.events;
        let time: Vec<i64> = e.iter().map(|e| e.time_ms as i64).collect();
        let session: Vec<i64> = e.iter().map(|e| e.session as i64).collect();
        let template: Vec<&str> = e.iter().map(|e| e.template.as_str()).collect();
        let status: Vec<i64> = e.iter().map(|e| i64::from(e.status)).collect();
        let verdict: Vec<i32> = e.iter().map(|e| e.verdict).collect();
        let rules: Vec<String> = e.iter().map(|e| e.rules.join(",")).collect();
        let latency: Vec<i64> = e.iter().map(|e| i64::from(e.latency_us)).collect();
        let summary: Vec<bool> = e.iter().map(|e| e.summary).collect();
        let ids: Vec<i64> = e.iter().map(|e| e.ids as i64).collect();
        let weak: Vec<bool> = e.iter().map(|e| e.weak_session).collect();
        let request_id: Vec<&str> = e.iter().map(|e| e.request_id.as_str()).collect();
        tx.execute(
            "INSERT INTO events (node, time_ms, session, template, status, verdict, rules,
                                 latency_us, summary, ids, weak, request_id)
             SELECT $1, * FROM UNNEST($2::bigint[], $3::bigint[], $4::text[], $5::bigint[],
                                      $6::int[], $7::text[], $8::bigint[], $9::bool[],
                                      $10::bigint[], $11::bool[], $12::text[])",
            &[
                &batch.node,
                &time,
                &session,
                &template,
                &status,
                &verdict,
                &rules,
                &latency,
                &summary,
                &ids,
                &weak,
                &request_id,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(e.len() as u64)
    }

    /// (events stored, drops reported by filters, newest policy version).
    pub async fn stats(&self) -> Result<(u64, u64, u64), PgError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT (SELECT COUNT(*) FROM events),
                        (SELECT COALESCE(SUM(dropped), 0)::bigint FROM batches),
                        (SELECT COALESCE(MAX(version), 0) FROM policies)",
                &[],
            )
            .await?;
        let n = |i: usize| row.get::<_, i64>(i) as u64;
        Ok((n(0), n(1), n(2)))
    }

    /// Every stored event, oldest first (`normal_only`: what learning may use).
    pub async fn events(&self, normal_only: bool) -> Result<Vec<StoredEvent>, PgError> {
        let client = self.pool.get().await?;
        events(&**client, normal_only).await
    }

    /// The newest policy as stored: its version and JSON.
    pub async fn latest_row(&self) -> Result<Option<(u64, String)>, PgError> {
        let client = self.pool.get().await?;
        latest_row(&**client).await
    }

    /// The newest policy if its version is above `known`: a poll that finds nothing new
    /// reads no policy JSON.
    pub async fn newer_row(&self, known: u64) -> Result<Option<(u64, String)>, PgError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT version, json FROM policies WHERE version > $1
                 ORDER BY version DESC LIMIT 1",
                &[&(known as i64)],
            )
            .await?;
        Ok(row.map(|r| (r.get::<_, i64>(0) as u64, r.get(1))))
    }

    pub async fn latest_policy(&self) -> Result<Option<Policy>, PgError> {
        self.latest_row()
            .await?
            .map(|(_, json)| parse(&json))
            .transpose()
    }

    /// The events of `session` since `since_ms`, newest first (see
    /// [`crate::store::Store::session_events`]).
    pub async fn session_events(
        &self,
        session: u64,
        since_ms: u64,
    ) -> Result<Vec<(String, u64, u16)>, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT template, ids, status FROM events WHERE session = $1 AND time_ms >= $2
                 ORDER BY time_ms DESC LIMIT $3",
                &[
                    &(session as i64),
                    &(since_ms as i64),
                    &(crate::store::COMPLETED_ROWS as i64),
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1) as u64,
                    u16::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                )
            })
            .collect())
    }

    /// Learns the fleet policy and stores a new version if its rules changed, unless
    /// another replica is learning right now (`None`): it will store what it learns, and
    /// every replica serves the database's newest version.
    pub async fn learn(
        &self,
        settings: &Settings,
        now_ms: u64,
    ) -> Result<Option<Outcome>, PgError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mine: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&LEARNER_LOCK])
            .await?
            .get(0);
        if !mine {
            return Ok(None);
        }
        let observations: Vec<Observation> = events(&*tx, true)
            .await?
            .into_iter()
            .map(|e| e.observation)
            .collect();
        let latest = latest_row(&*tx).await?;
        let latest_version = latest.as_ref().map_or(0, |(v, _)| *v);
        let latest = latest.map(|(_, json)| parse(&json)).transpose()?;
        let settings = settings.clone();
        // Learning is CPU work: off the async workers.
        let outcome = tokio::task::spawn_blocking(move || {
            fleet::next_policy(observations, latest, latest_version, &settings, now_ms)
        })
        .await
        .map_err(|e| PgError::Task(e.to_string()))?;
        if let Outcome::Learned(policy) = &outcome {
            save_policy(&*tx, policy, now_ms).await?;
        }
        tx.commit().await?;
        Ok(Some(outcome))
    }
}

impl PgStore {
    /// Every node that reported (see [`crate::store::Store::nodes`]).
    pub async fn nodes(&self, recent_ms: u64) -> Result<Vec<NodeRow>, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT node, COUNT(DISTINCT worker), COUNT(*), MIN(received_ms), MAX(received_ms),
                        SUM(events)::bigint,
                        SUM(CASE WHEN received_ms >= $1 THEN events ELSE 0 END)::bigint,
                        SUM(dropped)::bigint
                 FROM batches GROUP BY node ORDER BY node",
                &[&(recent_ms as i64)],
            )
            .await?;
        let mut nodes = rows
            .iter()
            .map(|r| {
                let n = |i: usize| r.get::<_, i64>(i).max(0) as u64;
                NodeRow {
                    node: r.get(0),
                    workers: n(1),
                    batches: n(2),
                    first_ms: n(3),
                    last_ms: n(4),
                    events: n(5),
                    recent_events: n(6),
                    dropped: n(7),
                    latest: Vec::new(),
                }
            })
            .collect::<Vec<_>>();
        let workers = client
            .query(LATEST_BATCHES, &[])
            .await?
            .iter()
            .map(|r| {
                let n = |i: usize| r.get::<_, i64>(i).max(0) as u64;
                (
                    r.get::<_, String>(0),
                    WorkerRow {
                        worker: n(1),
                        last_ms: n(2),
                        policy_version: n(3),
                        mode: r.get(4),
                    },
                )
            })
            .collect();
        attach_workers(&mut nodes, workers);
        Ok(nodes)
    }

    /// The newest flagged and blocked events (see [`crate::store::Store::verdict_events`]).
    pub async fn verdict_events(
        &self,
        since_ms: u64,
        template: &str,
        rule: &str,
    ) -> Result<Vec<EventRow>, PgError> {
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE time_ms >= $1 AND verdict IN (3, 4)
               AND ($2::text = '' OR template = $2::text)
               AND ($3::text = '' OR (',' || rules || ',') LIKE ('%,' || $3::text || ',%'))
             ORDER BY time_ms DESC, id DESC LIMIT {LIST_ROWS}"
        );
        let rows = client
            .query(&sql, &[&(since_ms as i64), &template, &rule])
            .await?;
        Ok(rows.iter().map(event_row).collect())
    }

    /// A session's newest events (see [`crate::store::Store::session_history`]).
    pub async fn session_history(&self, session: u64) -> Result<Vec<EventRow>, PgError> {
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE session = $1 ORDER BY time_ms DESC, id DESC LIMIT {LIST_ROWS}"
        );
        let rows = client.query(&sql, &[&(session as i64)]).await?;
        Ok(rows.iter().map(event_row).collect())
    }

    /// The events with exactly this `x-request-id` (see
    /// [`crate::store::Store::request_events`]).
    pub async fn request_events(&self, request_id: &str) -> Result<Vec<EventRow>, PgError> {
        if request_id.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE request_id = $1 AND request_id <> '' ORDER BY time_ms DESC, id DESC LIMIT {LIST_ROWS}"
        );
        let rows = client.query(&sql, &[&request_id]).await?;
        Ok(rows.iter().map(event_row).collect())
    }

    /// Every template in stored events: how often and when last.
    pub async fn templates_seen(&self) -> Result<Vec<TemplateSeen>, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT template, COUNT(*), MAX(time_ms) FROM events GROUP BY template ORDER BY template",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1).max(0) as u64,
                    r.get::<_, i64>(2).max(0) as u64,
                )
            })
            .collect())
    }

    /// Every event since `since_ms`, oldest first.
    pub async fn events_since(&self, since_ms: u64) -> Result<Vec<StoredEvent>, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT node, time_ms, session, template, status, verdict, rules, ids, weak FROM events
                 WHERE time_ms >= $1 ORDER BY time_ms, id",
                &[&(since_ms as i64)],
            )
            .await?;
        Ok(rows.iter().map(stored_event).collect())
    }

    /// Stores an operator's decision (see [`crate::store::Store::decide`]) under the
    /// learner's lock, waiting for it: no replica learns from an older version meanwhile.
    pub async fn decide(
        &self,
        who: &str,
        now_ms: u64,
        decide: impl FnOnce(Option<(u64, String)>) -> Result<Decided, String>,
    ) -> Result<Result<Decided, String>, PgError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LEARNER_LOCK])
            .await?;
        let latest = latest_row(&*tx).await?;
        let before = latest.as_ref().map(|(_, j)| j.clone()).unwrap_or_default();
        let decided = match decide(latest) {
            Ok(d) => d,
            Err(refused) => return Ok(Err(refused)),
        };
        tx.execute(
            "INSERT INTO policies (version, created_ms, json) VALUES ($1, $2, $3)",
            &[&(decided.version as i64), &(now_ms as i64), &decided.json],
        )
        .await?;
        tx.execute(
            "INSERT INTO decisions (time_ms, who, version, summary, before, after)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &(now_ms as i64),
                &who,
                &(decided.version as i64),
                &decided.summary,
                &before,
                &decided.json,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(decided))
    }

    /// The newest audited decisions first, at most `limit`.
    pub async fn audit(&self, limit: u64) -> Result<Vec<AuditRow>, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, time_ms, who, version, summary, before, after FROM decisions
                 ORDER BY id DESC LIMIT $1",
                &[&(limit as i64)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| AuditRow {
                id: r.get::<_, i64>(0).max(0) as u64,
                time_ms: r.get::<_, i64>(1).max(0) as u64,
                who: r.get(2),
                version: r.get::<_, i64>(3).max(0) as u64,
                summary: r.get(4),
                before: r.get(5),
                after: r.get(6),
            })
            .collect())
    }
}

fn event_row(r: &tokio_postgres::Row) -> EventRow {
    EventRow {
        node: r.get(0),
        time_ms: r.get::<_, i64>(1) as u64,
        session: r.get::<_, i64>(2) as u64,
        template: r.get(3),
        status: u16::try_from(r.get::<_, i64>(4)).unwrap_or(0),
        verdict: r.get(5),
        rules: r.get(6),
        ids: r.get::<_, i64>(7) as u64,
        request_id: r.get(8),
    }
}

fn stored_event(r: &tokio_postgres::Row) -> StoredEvent {
    let ids: i64 = r.get(7);
    StoredEvent {
        node: r.get(0),
        observation: Observation {
            time_ms: r.get::<_, i64>(1) as u64,
            session: r.get::<_, i64>(2) as u64,
            template: r.get(3),
            status: u16::try_from(r.get::<_, i64>(4)).unwrap_or(0),
            ids: (ids != 0).then_some(ids as u64),
            weak: r.get(8),
        },
        verdict: r.get(5),
        rules: r.get(6),
    }
}

fn parse(json: &str) -> Result<Policy, PgError> {
    Policy::from_json(json.as_bytes()).map_err(|e| PgError::Policy(e.to_string()))
}

async fn events<C: GenericClient>(c: &C, normal_only: bool) -> Result<Vec<StoredEvent>, PgError> {
    let sql = if normal_only {
        "SELECT node, time_ms, session, template, status, verdict, rules, ids, weak FROM events
         WHERE summary AND verdict != 4 ORDER BY time_ms, id"
    } else {
        "SELECT node, time_ms, session, template, status, verdict, rules, ids, weak FROM events
         ORDER BY time_ms, id"
    };
    let rows = c.query(sql, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let ids: i64 = r.get(7);
            StoredEvent {
                node: r.get(0),
                observation: Observation {
                    time_ms: r.get::<_, i64>(1) as u64,
                    session: r.get::<_, i64>(2) as u64,
                    template: r.get(3),
                    status: u16::try_from(r.get::<_, i64>(4)).unwrap_or(0),
                    ids: (ids != 0).then_some(ids as u64),
                    weak: r.get(8),
                },
                verdict: r.get(5),
                rules: r.get(6),
            }
        })
        .collect())
}

async fn latest_row<C: GenericClient>(c: &C) -> Result<Option<(u64, String)>, PgError> {
    let row = c
        .query_opt(
            "SELECT version, json FROM policies ORDER BY version DESC LIMIT 1",
            &[],
        )
        .await?;
    Ok(row.map(|r| (r.get::<_, i64>(0) as u64, r.get(1))))
}

async fn save_policy<C: GenericClient>(c: &C, policy: &Policy, now_ms: u64) -> Result<(), PgError> {
    c.execute(
        "INSERT INTO policies (version, created_ms, json) VALUES ($1, $2, $3)",
        &[
            &(policy.version as i64),
            &(now_ms as i64),
            &policy.to_json(),
        ],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_files_and_shown_without_credentials() {
        assert!(is_url("postgres://u:p@127.0.0.1:5432/fg"));
        assert!(is_url("postgresql:///fg?host=/tmp"));
        assert!(!is_url("flowguard.db"));
        assert_eq!(
            redacted("postgres://u:secret@127.0.0.1:5432/fg"),
            "postgres://…@127.0.0.1:5432/fg"
        );
        assert_eq!(redacted("postgresql:///fg"), "postgresql:///fg");
    }
}
