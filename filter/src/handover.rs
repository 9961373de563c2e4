//! Identity hand-over in the filter: reading the identity an answer issues, and copying
//! the session's flow to it (`session.handover`; the logic is `engine::handover`).

use crate::host::{self, EnvoyHost, HostResult};
use crate::metrics::Metrics;
use crate::worker::Worker;
use flowguard_engine::endpoint_set::EndpointSet;
use flowguard_engine::handover;
use flowguard_engine::judge::read_slot;
use flowguard_engine::rule::RuleSet;
use flowguard_engine::session::SessionKey;
use flowguard_engine::slot::Slot;
use flowguard_engine::slot_table::Placement;
use flowguard_engine::store::{self, Host, CAS_RETRIES};
use flowguard_engine::telemetry::Event;

/// The session the token in this answer's JSON body hands over to.
pub fn from_body(w: &Worker, body: &[u8]) -> Option<u64> {
    let field = w.settings.session.handover.json_field.as_deref()?;
    handover::from_body(&w.settings.session.sources, body, field).map(|key| fingerprint(w, &key))
}

/// The fingerprint of a session key, as the request phase computes it.
pub fn fingerprint(w: &Worker, key: &SessionKey<'_>) -> u64 {
    w.settings
        .session
        .fingerprinter
        .fingerprint(key.kind, key.value.as_bytes())
}

/// Continues the flow of the session in slot `index` (`fingerprint`, under layout
/// `epoch`) in session `to`'s slot, claiming one for it if it has none.
pub fn hand_over(
    w: &mut Worker,
    index: u32,
    fingerprint: u64,
    epoch: u32,
    to: u64,
) -> HostResult<()> {
    if to == fingerprint {
        return Ok(());
    }
    let (from, _) = read_slot(&mut EnvoyHost, store::slot_key(index))?;
    let Some(from) = from.filter(|s| s.fingerprint == fingerprint && s.model_version == epoch)
    else {
        return Ok(()); // the slot changed hands meanwhile: nothing to continue
    };
    let now = host::now_secs()?;
    let judge = w.judge();
    for _ in 0..CAS_RETRIES {
        let mut located = judge
            .locate(&mut EnvoyHost, to, now)
            .map_err(host::from_store)?;
        if located.slot.model_version != epoch {
            return Ok(()); // another policy's step ids: they would mean other steps
        }
        located.slot.continue_from(&from);
        if EnvoyHost.set(located.key.as_str(), &located.slot.encode(), located.cas)? {
            Metrics::inc(w.metrics.handovers);
            if located.placement != Placement::Own {
                // A new identity from this address: it carries one more customer.
                judge
                    .carry(&mut EnvoyHost, None, to, now)
                    .map_err(host::from_store)?;
            }
            return report_continued(w, &from, to);
        }
    }
    Metrics::inc(w.metrics.slot_conflicts);
    Ok(())
}

/// Tells the fleet which steps the new identity continues from: at the edge a login's new
/// cookie or token may hash to another proxy, which asks the collector about it
/// (`Sessions.Completed`) and must find them. Session-wide steps only: an object's steps
/// are kept by a short key here, and a flow usually reaches its objects after the login.
fn report_continued(w: &mut Worker, from: &Slot, to: u64) -> HostResult<()> {
    let (Some(model), Some(t)) = (w.model.as_ref(), w.telemetry.as_mut()) else {
        return Ok(());
    };
    let steps = EndpointSet(from.completed.0 & model.required().0);
    if steps.is_empty() {
        return Ok(());
    }
    let now_ms = host::now_ms()?;
    for template in steps.iter().filter_map(|e| model.template(e)) {
        let event = Event {
            time_ms: now_ms,
            session: to,
            template: template.to_owned(),
            status: 200,
            outcome: None,
            rules: RuleSet::EMPTY,
            latency_us: 0,
            summary: false,
            ids: None,
            weak_session: false,
            prompt: true,
        };
        t.record(event, &w.metrics);
    }
    Ok(())
}
