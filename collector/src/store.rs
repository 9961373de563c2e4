//! The collector's SQLite store: telemetry events and versioned policies.
//!
//! WAL mode with `synchronous = FULL`: a batch is acknowledged only after its
//! transaction has committed to disk, so a crash loses nothing acknowledged.

use flowguard_engine::learn::Observation;
use flowguard_engine::policy::Policy;
use flowguard_proto::v1;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored policy is invalid: {0}")]
    Policy(String),
}

pub struct Store {
    conn: Connection,
}

/// Events of one session read at most to answer `Sessions.Completed` (newest first): a
/// session's recent history is far shorter; a flood of one session's events costs no more.
pub const COMPLETED_ROWS: usize = 4096;

/// A stored event with what replay and reports need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub node: String,
    pub observation: Observation,
    pub verdict: i32,
    pub rules: String,
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS batches (
                node TEXT NOT NULL, worker INTEGER NOT NULL, batch_id INTEGER NOT NULL,
                received_ms INTEGER NOT NULL, events INTEGER NOT NULL, dropped INTEGER NOT NULL,
                policy_version INTEGER NOT NULL DEFAULT 0, mode TEXT NOT NULL DEFAULT '',
                PRIMARY KEY (node, worker, batch_id));
             CREATE TABLE IF NOT EXISTS events (
                id INTEGER PRIMARY KEY, node TEXT NOT NULL, time_ms INTEGER NOT NULL,
                session INTEGER NOT NULL, template TEXT NOT NULL, status INTEGER NOT NULL,
                verdict INTEGER NOT NULL, rules TEXT NOT NULL, latency_us INTEGER NOT NULL,
                summary INTEGER NOT NULL, ids INTEGER NOT NULL,
                weak INTEGER NOT NULL DEFAULT 0, request_id TEXT NOT NULL DEFAULT '');
             CREATE INDEX IF NOT EXISTS events_session ON events (session, time_ms);
             CREATE TABLE IF NOT EXISTS policies (
                version INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL, json TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS decisions (
                id INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, who TEXT NOT NULL,
                version INTEGER NOT NULL, summary TEXT NOT NULL,
                before TEXT NOT NULL, after TEXT NOT NULL);",
        )
        .map_err(open_err)?;
        // Stores from before a column was added gain it, with its default: `weak` (0),
        // then a batch's `policy_version` (0) and `mode` ('') and an event's `request_id`
        // (''), what the console's fleet page and request search read.
        for (table, column, decl) in [
            ("events", "weak", "INTEGER NOT NULL DEFAULT 0"),
            ("events", "request_id", "TEXT NOT NULL DEFAULT ''"),
            ("batches", "policy_version", "INTEGER NOT NULL DEFAULT 0"),
            ("batches", "mode", "TEXT NOT NULL DEFAULT ''"),
        ] {
            let has: bool = conn
                .query_row(
                    "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
                    params![table, column],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(open_err)?
                > 0;
            if !has {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))
                    .map_err(open_err)?;
            }
        }
        // Only rule events carry a request id: the index holds those alone.
        conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS events_request ON events (request_id) WHERE request_id != ''",
        )
        .map_err(open_err)?;
        Ok(Store { conn })
    }

    /// Stores a batch in one transaction; a batch already stored (same node, worker and
    /// batch id) is skipped. Returns the events stored.
    pub fn insert_batch(
        &mut self,
        batch: &v1::ReportRequest,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let stored = self.insert_batches(std::iter::once((batch, now_ms)))?;
        Ok(stored.first().copied().unwrap_or(0))
    }

    /// Stores batches (each with when it arrived) in one transaction, one commit for all;
    /// a batch already stored is skipped. Returns the events stored per batch.
    pub fn insert_batches<'a>(
        &mut self,
        batches: impl IntoIterator<Item = (&'a v1::ReportRequest, u64)>,
    ) -> Result<Vec<u64>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut stored = Vec::new();
        {
            let mut claim = tx.prepare_cached(
                "INSERT OR IGNORE INTO batches (node, worker, batch_id, received_ms, events, dropped,
                                                policy_version, mode)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (node, time_ms, session, template, status, verdict, rules, latency_us, summary, ids, weak, request_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            for (batch, now_ms) in batches {
                let fresh = claim.execute(params![
                    batch.node,
                    batch.worker,
                    batch.batch_id as i64,
                    now_ms as i64,
                    batch.events.len() as i64,
                    batch.dropped as i64,
                    batch.policy_version as i64,
                    batch.mode
                ])?;
                if fresh == 0 {
                    stored.push(0);
                    continue;
                }
                for e in &batch.events {
                    insert.execute(params![
                        batch.node,
                        e.time_ms as i64,
                        e.session as i64,
                        e.template,
                        e.status,
                        e.verdict,
                        e.rules.join(","),
                        e.latency_us,
                        e.summary,
                        e.ids as i64,
                        e.weak_session,
                        e.request_id,
                    ])?;
                }
                stored.push(batch.events.len() as u64);
            }
        }
        tx.commit()?;
        Ok(stored)
    }

    pub fn event_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    /// Events dropped by filters, as they reported.
    pub fn dropped_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(SUM(dropped), 0) FROM batches", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }

    /// Every stored event, oldest first. `normal_only` keeps what learning may use:
    /// sampled summaries the filter did not block.
    pub fn events(&self, normal_only: bool) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = if normal_only {
            "SELECT node, time_ms, session, template, status, verdict, rules, ids, weak FROM events
             WHERE summary = 1 AND verdict != 4 ORDER BY time_ms"
        } else {
            "SELECT node, time_ms, session, template, status, verdict, rules, ids, weak FROM events ORDER BY time_ms"
        };
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| {
            let ids: i64 = r.get(7)?;
            Ok(StoredEvent {
                node: r.get(0)?,
                observation: Observation {
                    time_ms: r.get::<_, i64>(1)? as u64,
                    session: r.get::<_, i64>(2)? as u64,
                    template: r.get(3)?,
                    status: r.get::<_, u32>(4)?.try_into().unwrap_or(0),
                    ids: (ids != 0).then_some(ids as u64),
                    weak: r.get(8)?,
                },
                verdict: r.get(5)?,
                rules: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Keeps a policy (versions are never overwritten).
    pub fn save_policy(&self, policy: &Policy, now_ms: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO policies (version, created_ms, json) VALUES (?1, ?2, ?3)",
            params![policy.version as i64, now_ms as i64, policy.to_json()],
        )?;
        Ok(())
    }

    /// The newest policy, if any.
    pub fn latest_policy(&self) -> Result<Option<Policy>, StoreError> {
        let json: Option<String> = self
            .conn
            .query_row(
                "SELECT json FROM policies ORDER BY version DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        json.map(|j| Policy::from_json(j.as_bytes()).map_err(|e| StoreError::Policy(e.to_string())))
            .transpose()
    }

    /// The events of `session` since `since_ms`, newest first, at most
    /// [`COMPLETED_ROWS`]: (template, identifier hash, status), for `Sessions.Completed`.
    /// Read through the `(session, time_ms)` index.
    pub fn session_events(
        &self,
        session: u64,
        since_ms: u64,
    ) -> Result<Vec<(String, u64, u16)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT template, ids, status FROM events WHERE session = ?1 AND time_ms >= ?2
             ORDER BY time_ms DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![session as i64, since_ms as i64, COMPLETED_ROWS as i64],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    u16::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                ))
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn latest_version(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(version), 0) FROM policies", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }
}

/// One proxy (node) as its batches show it, for the console's fleet page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeRow {
    pub node: String,
    pub workers: u64,
    pub batches: u64,
    pub first_ms: u64,
    pub last_ms: u64,
    pub events: u64,
    /// Events in batches received since the `recent_ms` asked for.
    pub recent_events: u64,
    pub dropped: u64,
    /// Each worker as its latest batch shows it, by worker number.
    pub latest: Vec<WorkerRow>,
}

impl NodeRow {
    /// The node's latest batch (of any worker): the version and mode it runs now.
    pub fn newest(&self) -> Option<&WorkerRow> {
        self.latest
            .iter()
            .max_by_key(|w| (w.last_ms, std::cmp::Reverse(w.worker)))
    }
}

/// One worker of a node as its latest batch shows it: what the fleet page says it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerRow {
    pub worker: u64,
    /// When its latest batch arrived.
    pub last_ms: u64,
    /// The policy version its model ran when it sent that batch (0: still learning).
    pub policy_version: u64,
    /// Its mode then (`learn`, `monitor`, `enforce`; '' from a proxy too old to say).
    pub mode: String,
}

/// Attaches each worker's latest batch (`(node, worker row)`, in any order) to its node.
pub fn attach_workers(nodes: &mut [NodeRow], workers: Vec<(String, WorkerRow)>) {
    for (node, w) in workers {
        if let Some(n) = nodes.iter_mut().find(|n| n.node == node) {
            n.latest.push(w);
        }
    }
    for n in nodes {
        n.latest.sort_by_key(|w| w.worker);
    }
}

/// A stored event as the console lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventRow {
    pub node: String,
    pub time_ms: u64,
    pub session: u64,
    pub template: String,
    pub status: u16,
    pub verdict: i32,
    pub rules: String,
    pub ids: u64,
    /// The request's `x-request-id` ('' when it had none, or for an event no rule fired on).
    pub request_id: String,
}

/// The columns [`EventRow`] is read from, in its order (both stores).
pub const EVENT_COLUMNS: &str =
    "node, time_ms, session, template, status, verdict, rules, ids, request_id";

/// A template seen in stored events: (template, events, last seen ms).
pub type TemplateSeen = (String, u64, u64);

/// An operator's decision as audited: who, when, the version it made, before and after.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditRow {
    pub id: u64,
    pub time_ms: u64,
    pub who: String,
    pub version: u64,
    pub summary: String,
    pub before: String,
    pub after: String,
}

/// What a decision stores: the new policy JSON and its version, and the audit's words.
pub struct Decided {
    pub version: u64,
    pub json: String,
    pub summary: String,
}

/// Events the console lists at most per page.
pub const LIST_ROWS: u64 = 500;

/// Each worker's latest batch (ties: the higher batch id), SQL both stores run.
pub const LATEST_BATCHES: &str = "SELECT node, worker, received_ms, policy_version, mode FROM (
        SELECT node, worker, received_ms, policy_version, mode,
               ROW_NUMBER() OVER (PARTITION BY node, worker
                                  ORDER BY received_ms DESC, batch_id DESC) AS latest
        FROM batches) AS b
     WHERE latest = 1";

/// `?2` a template or '' (any), `?3` a rule id or '' (any): the filter of the console's
/// list of blocks and flags, the same SQL in both stores.
pub const FILTERED: &str =
    "(?2 = '' OR template = ?2) AND (?3 = '' OR (',' || rules || ',') LIKE ('%,' || ?3 || ',%'))";

impl Store {
    /// Every node that reported, with its batches' totals (`recent_ms`: since when
    /// `recent_events` counts).
    pub fn nodes(&self, recent_ms: u64) -> Result<Vec<NodeRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT node, COUNT(DISTINCT worker), COUNT(*), MIN(received_ms), MAX(received_ms),
                    SUM(events), SUM(CASE WHEN received_ms >= ?1 THEN events ELSE 0 END), SUM(dropped)
             FROM batches GROUP BY node ORDER BY node",
        )?;
        let rows = stmt.query_map(params![recent_ms as i64], |r| {
            let n = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
            Ok(NodeRow {
                node: r.get(0)?,
                workers: n(1)?,
                batches: n(2)?,
                first_ms: n(3)?,
                last_ms: n(4)?,
                events: n(5)?,
                recent_events: n(6)?,
                dropped: n(7)?,
                latest: Vec::new(),
            })
        })?;
        let mut nodes: Vec<NodeRow> = rows.collect::<Result<_, _>>()?;
        let mut stmt = self.conn.prepare(LATEST_BATCHES)?;
        let workers = stmt.query_map([], |r| {
            let n = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
            Ok((
                r.get::<_, String>(0)?,
                WorkerRow {
                    worker: n(1)?,
                    last_ms: n(2)?,
                    policy_version: n(3)?,
                    mode: r.get(4)?,
                },
            ))
        })?;
        attach_workers(&mut nodes, workers.collect::<Result<_, _>>()?);
        Ok(nodes)
    }

    /// The newest flagged and blocked events since `since_ms`, filtered by template and
    /// rule ('' for any), at most [`LIST_ROWS`].
    pub fn verdict_events(
        &self,
        since_ms: u64,
        template: &str,
        rule: &str,
    ) -> Result<Vec<EventRow>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE time_ms >= ?1 AND verdict IN (3, 4) AND {FILTERED}
             ORDER BY time_ms DESC, id DESC LIMIT {LIST_ROWS}"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params![since_ms as i64, template, rule], event_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A session's newest events, newest first, at most [`LIST_ROWS`].
    pub fn session_history(&self, session: u64) -> Result<Vec<EventRow>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE session = ?1 ORDER BY time_ms DESC, id DESC LIMIT {LIST_ROWS}"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params![session as i64], event_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The events whose `x-request-id` is exactly `request_id` (not ''), newest first, at
    /// most [`LIST_ROWS`]: read through the `events_request` index.
    pub fn request_events(&self, request_id: &str) -> Result<Vec<EventRow>, StoreError> {
        if request_id.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE request_id = ?1 AND request_id != '' ORDER BY time_ms DESC, id DESC LIMIT {LIST_ROWS}"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params![request_id], event_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every template in stored events: how often and when last.
    pub fn templates_seen(&self) -> Result<Vec<TemplateSeen>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT template, COUNT(*), MAX(time_ms) FROM events GROUP BY template ORDER BY template",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?.max(0) as u64,
                r.get::<_, i64>(2)?.max(0) as u64,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every event since `since_ms`, oldest first (the what-if replay's traffic).
    pub fn events_since(&self, since_ms: u64) -> Result<Vec<StoredEvent>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT node, time_ms, session, template, status, verdict, rules, ids, weak FROM events
             WHERE time_ms >= ?1 ORDER BY time_ms",
        )?;
        let rows = stmt.query_map(params![since_ms as i64], stored_event)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores an operator's decision in one transaction: `decide` turns the newest
    /// policy row (version, JSON) into the next version, stored with its audit row.
    pub fn decide(
        &mut self,
        who: &str,
        now_ms: u64,
        decide: impl FnOnce(Option<(u64, String)>) -> Result<Decided, String>,
    ) -> Result<Result<Decided, String>, StoreError> {
        let tx = self.conn.transaction()?;
        let latest: Option<(i64, String)> = tx
            .query_row(
                "SELECT version, json FROM policies ORDER BY version DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let before = latest.as_ref().map(|(_, j)| j.clone()).unwrap_or_default();
        let decided = match decide(latest.map(|(v, j)| (v.max(0) as u64, j))) {
            Ok(d) => d,
            Err(refused) => return Ok(Err(refused)),
        };
        tx.execute(
            "INSERT INTO policies (version, created_ms, json) VALUES (?1, ?2, ?3)",
            params![decided.version as i64, now_ms as i64, decided.json],
        )?;
        tx.execute(
            "INSERT INTO decisions (time_ms, who, version, summary, before, after)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                now_ms as i64,
                who,
                decided.version as i64,
                decided.summary,
                before,
                decided.json
            ],
        )?;
        tx.commit()?;
        Ok(Ok(decided))
    }

    /// The newest audited decisions first, at most `limit`.
    pub fn audit(&self, limit: u64) -> Result<Vec<AuditRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, time_ms, who, version, summary, before, after FROM decisions
             ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64], |r| {
            Ok(AuditRow {
                id: r.get::<_, i64>(0)?.max(0) as u64,
                time_ms: r.get::<_, i64>(1)?.max(0) as u64,
                who: r.get(2)?,
                version: r.get::<_, i64>(3)?.max(0) as u64,
                summary: r.get(4)?,
                before: r.get(5)?,
                after: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        node: r.get(0)?,
        time_ms: r.get::<_, i64>(1)? as u64,
        session: r.get::<_, i64>(2)? as u64,
        template: r.get(3)?,
        status: u16::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
        verdict: r.get(5)?,
        rules: r.get(6)?,
        ids: r.get::<_, i64>(7)? as u64,
        request_id: r.get(8)?,
    })
}

fn stored_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    let ids: i64 = r.get(7)?;
    Ok(StoredEvent {
        node: r.get(0)?,
        observation: Observation {
            time_ms: r.get::<_, i64>(1)? as u64,
            session: r.get::<_, i64>(2)? as u64,
            template: r.get(3)?,
            status: r.get::<_, u32>(4)?.try_into().unwrap_or(0),
            ids: (ids != 0).then_some(ids as u64),
            weak: r.get(8)?,
        },
        verdict: r.get(5)?,
        rules: r.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(id: u64, n: usize) -> v1::ReportRequest {
        v1::ReportRequest {
            node: "edge".into(),
            batch_id: id,
            worker: 1,
            policy_version: 0,
            mode: String::new(),
            dropped: 2,
            events: (0..n)
                .map(|i| v1::Event {
                    time_ms: i as u64,
                    session: 9,
                    template: "GET /a".into(),
                    status: 200,
                    verdict: v1::Verdict::Allow.into(),
                    rules: vec![],
                    latency_us: 5,
                    summary: true,
                    ids: 0,
                    weak_session: i % 2 == 1,
                    request_id: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn batches_are_stored_once_and_read_back() {
        let dir = std::env::temp_dir().join(format!("fg-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Store::open(&dir.join("t.db")).unwrap();
        assert_eq!(s.insert_batch(&batch(1, 3), 0).unwrap(), 3);
        assert_eq!(
            s.insert_batch(&batch(1, 3), 0).unwrap(),
            0,
            "a duplicate batch is skipped"
        );
        assert_eq!(s.insert_batch(&batch(2, 2), 0).unwrap(), 2);
        assert_eq!(
            (s.event_count().unwrap(), s.dropped_count().unwrap()),
            (5, 4)
        );
        let events = s.events(true).unwrap();
        assert_eq!(events.len(), 5);
        let weak: Vec<bool> = events.iter().map(|e| e.observation.weak).collect();
        assert_eq!(weak.iter().filter(|w| **w).count(), 2, "{weak:?}");
        assert!(s.latest_policy().unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn batches_committed_together_are_each_stored_once() {
        let dir = std::env::temp_dir().join(format!("fg-store-group-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Store::open(&dir.join("t.db")).unwrap();
        let (a, b, c) = (batch(1, 3), batch(2, 2), batch(1, 3));
        assert_eq!(
            s.insert_batches([(&a, 0), (&b, 0), (&c, 0)]).unwrap(),
            [3, 2, 0],
            "the repeated batch in the same commit is skipped"
        );
        assert_eq!(s.insert_batch(&b, 0).unwrap(), 0);
        assert_eq!(s.event_count().unwrap(), 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_sessions_recent_events_are_read_newest_first_and_bounded() {
        let dir = std::env::temp_dir().join(format!("fg-store-sessions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Store::open(&dir.join("t.db")).unwrap();
        let mut b = batch(1, 3); // session 9 at 0, 1, 2 ms
        b.events[2].template = "POST /pay".into();
        b.events[2].ids = 77;
        b.events[1].session = 10;
        s.insert_batch(&b, 0).unwrap();
        let many = v1::ReportRequest {
            batch_id: 2,
            events: (0..COMPLETED_ROWS + 10)
                .map(|i| v1::Event {
                    time_ms: 100 + i as u64,
                    session: 11,
                    ..b.events[0].clone()
                })
                .collect(),
            ..b.clone()
        };
        s.insert_batch(&many, 0).unwrap();
        // A second connection reads what the first committed (the collector's reader).
        let reader = Store::open(&dir.join("t.db")).unwrap();
        assert_eq!(
            reader.session_events(9, 0).unwrap(),
            [
                ("POST /pay".to_owned(), 77, 200),
                ("GET /a".to_owned(), 0, 200)
            ]
        );
        assert_eq!(reader.session_events(9, 2).unwrap().len(), 1, "the horizon");
        assert!(reader.session_events(12, 0).unwrap().is_empty());
        assert_eq!(reader.session_events(11, 0).unwrap().len(), COMPLETED_ROWS);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_store_from_before_weak_sessions_request_ids_and_versions_gains_the_columns() {
        let dir = std::env::temp_dir().join(format!("fg-store-old-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("old.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE batches (node TEXT NOT NULL, worker INTEGER NOT NULL,
                 batch_id INTEGER NOT NULL, received_ms INTEGER NOT NULL, events INTEGER NOT NULL,
                 dropped INTEGER NOT NULL, PRIMARY KEY (node, worker, batch_id));
                 CREATE TABLE events (id INTEGER PRIMARY KEY, node TEXT NOT NULL, time_ms INTEGER NOT NULL,
                 session INTEGER NOT NULL, template TEXT NOT NULL, status INTEGER NOT NULL,
                 verdict INTEGER NOT NULL, rules TEXT NOT NULL, latency_us INTEGER NOT NULL,
                 summary INTEGER NOT NULL, ids INTEGER NOT NULL);
                 INSERT INTO batches VALUES ('edge', 1, 1, 40, 1, 0);
                 INSERT INTO events VALUES (1, 'edge', 5, 9, 'GET /a', 4, 4, 'rate.session', 3, 1, 0);",
            )
            .unwrap();
        let mut s = Store::open(&path).unwrap();
        let events = s.events(false).unwrap();
        assert_eq!(events.len(), 1);
        assert!(!events[0].observation.weak);
        // The old rows read with the defaults: no request id, version 0, no mode.
        let old = s.verdict_events(0, "", "").unwrap();
        assert_eq!((old.len(), old[0].request_id.as_str()), (1, ""));
        assert!(s.request_events("").unwrap().is_empty());
        let nodes = s.nodes(0).unwrap();
        assert_eq!(
            nodes[0].latest,
            [WorkerRow {
                worker: 1,
                last_ms: 40,
                policy_version: 0,
                mode: String::new()
            }]
        );
        // New batches go into the migrated tables with what they carry.
        let mut b = batch(2, 1);
        b.policy_version = 6;
        b.mode = "monitor".into();
        b.events[0].verdict = v1::Verdict::Flag.into();
        b.events[0].request_id = "req-after".into();
        assert_eq!(s.insert_batch(&b, 50).unwrap(), 1);
        drop(s);
        // Opening again changes nothing (the columns are there now).
        let s = Store::open(&path).unwrap();
        assert_eq!(s.request_events("req-after").unwrap().len(), 1);
        let newest = s.nodes(0).unwrap()[0].newest().cloned().unwrap();
        assert_eq!(
            (newest.policy_version, newest.mode.as_str(), newest.last_ms),
            (6, "monitor", 50)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn request_ids_versions_and_modes_are_stored_and_read_back() {
        let dir = std::env::temp_dir().join(format!("fg-store-fresh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Store::open(&dir.join("t.db")).unwrap();
        // Worker 1 learning, then enforcing version 3, then 4; worker 2 monitoring 3.
        let mut learning = batch(1, 1);
        learning.mode = "learn".into();
        let mut v3 = batch(2, 2);
        (v3.policy_version, v3.mode) = (3, "enforce".into());
        v3.events[1].verdict = v1::Verdict::Block.into();
        v3.events[1].rules = vec!["order.missing_prerequisite".into()];
        v3.events[1].request_id = "abc-123_X".into();
        let mut other = batch(1, 1);
        (other.worker, other.policy_version, other.mode) = (2, 3, "monitor".into());
        let mut v4 = batch(3, 1);
        (v4.policy_version, v4.mode) = (4, "enforce".into());
        v4.events[0].verdict = v1::Verdict::Flag.into();
        v4.events[0].request_id = "abc-1234".into();
        v4.events[0].time_ms = 50;
        s.insert_batches([(&learning, 10), (&v3, 20), (&other, 25), (&v4, 30)])
            .unwrap();
        let nodes = s.nodes(0).unwrap();
        assert_eq!(nodes.len(), 1);
        let worker = |w: u64, last_ms: u64, policy_version: u64, mode: &str| WorkerRow {
            worker: w,
            last_ms,
            policy_version,
            mode: mode.into(),
        };
        assert_eq!(
            nodes[0].latest,
            [worker(1, 30, 4, "enforce"), worker(2, 25, 3, "monitor")]
        );
        assert_eq!(nodes[0].newest(), Some(&worker(1, 30, 4, "enforce")));
        // Exact match only: no prefix, no other case.
        let found = s.request_events("abc-123_X").unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            (
                found[0].template.as_str(),
                found[0].verdict,
                found[0].session
            ),
            ("GET /a", 4, 9)
        );
        assert!(s.request_events("abc-123").unwrap().is_empty());
        assert!(s.request_events("ABC-123_X").unwrap().is_empty());
        let listed: Vec<String> = s
            .verdict_events(0, "", "")
            .unwrap()
            .into_iter()
            .map(|e| e.request_id)
            .collect();
        assert_eq!(listed, ["abc-1234", "abc-123_X"]);
        let history = s.session_history(9).unwrap();
        assert_eq!(history.len(), 5);
        assert_eq!(history[0].request_id, "abc-1234");
        assert_eq!(
            history.iter().filter(|e| e.request_id.is_empty()).count(),
            3,
            "events no rule fired on carry none"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_path_is_a_clear_error() {
        let e = Store::open(Path::new("/nonexistent/dir/x.db"))
            .err()
            .unwrap();
        assert!(
            e.to_string().starts_with("database /nonexistent/dir/x.db:"),
            "{e}"
        );
    }
}
