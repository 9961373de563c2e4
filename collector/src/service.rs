//! The gRPC services: telemetry in (acknowledged only once stored), policy out, and what
//! a session completed across the fleet.

use crate::backend::Backend;
use flowguard_proto::v1::policies_server::Policies;
use flowguard_proto::v1::sessions_server::Sessions;
use flowguard_proto::v1::telemetry_server::Telemetry;
use flowguard_proto::v1::{
    CompletedRequest, CompletedResponse, GetPolicyRequest, GetPolicyResponse, ReportRequest,
    ReportResponse,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tonic::{Request, Response, Status};

/// The current policy as served: version and JSON.
pub type Current = Arc<RwLock<Option<(u64, String)>>>;

pub struct Collector {
    pub backend: Backend,
    pub current: Current,
    /// Required `authorization: Bearer <token>` metadata, when configured.
    pub token: Option<String>,
    /// The shared store could not be read at the last poll (its error is logged once).
    pub refresh_failing: AtomicBool,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Collector {
    fn authorise<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if given.and_then(|v| v.strip_prefix("Bearer ")) == Some(token.as_str()) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "flowguard collector: missing or wrong token",
            ))
        }
    }
}

#[tonic::async_trait]
impl Telemetry for Collector {
    async fn report(
        &self,
        req: Request<ReportRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        self.authorise(&req)?;
        let stored = self
            .backend
            .insert_batch(req.into_inner(), now_ms())
            .await
            .map_err(|e| Status::unavailable(format!("not stored: {e}")))?;
        Ok(Response::new(ReportResponse { stored }))
    }
}

#[tonic::async_trait]
impl Policies for Collector {
    async fn get_policy(
        &self,
        req: Request<GetPolicyRequest>,
    ) -> Result<Response<GetPolicyResponse>, Status> {
        self.authorise(&req)?;
        let known = req.get_ref().known_version;
        if self.backend.is_shared() {
            // Replicas share the database: each serves its newest version, whichever
            // replica learned it. Unreachable, the last one read is served (logged once
            // per outage, not per poll).
            let served = self
                .current
                .read()
                .ok()
                .and_then(|c| c.as_ref().map(|(v, _)| *v))
                .unwrap_or(0);
            match self.backend.newer_row(served).await {
                Ok(newer) => {
                    self.refresh_failing.store(false, Ordering::Relaxed);
                    if let (Some(row), Ok(mut c)) = (newer, self.current.write()) {
                        *c = Some(row);
                    }
                }
                Err(e) => {
                    if !self.refresh_failing.swap(true, Ordering::Relaxed) {
                        eprintln!("flowguard collector: policy not refreshed: {e}");
                    }
                }
            }
        }
        let current = self
            .current
            .read()
            .map_err(|_| Status::internal("lock poisoned"))?;
        Ok(Response::new(match current.as_ref() {
            Some((version, _)) if *version == known => GetPolicyResponse {
                unchanged: true,
                ..Default::default()
            },
            Some((version, json)) => GetPolicyResponse {
                unchanged: false,
                version: *version,
                policy_json: json.clone(),
            },
            None => GetPolicyResponse {
                unchanged: true,
                ..Default::default()
            },
        }))
    }
}

#[tonic::async_trait]
impl Sessions for Collector {
    async fn completed(
        &self,
        req: Request<CompletedRequest>,
    ) -> Result<Response<CompletedResponse>, Status> {
        self.authorise(&req)?;
        let q = req.into_inner();
        if q.templates.len() > crate::sessions::MAX_TEMPLATES {
            return Err(Status::invalid_argument(format!(
                "at most {} templates per question",
                crate::sessions::MAX_TEMPLATES
            )));
        }
        let rows = self
            .backend
            .session_events(q.session, crate::sessions::since_ms(&q, now_ms()))
            .await
            .map_err(|e| Status::unavailable(format!("not read: {e}")))?;
        Ok(Response::new(crate::sessions::answer(&q, &rows)))
    }
}
