//! The request path's decision in one call: find the session's slot, judge the request
//! against it, write the slot back with compare-and-swap, and say what to do. The
//! address-level state a judgement needs (the learning share, mid-flow joins,
//! authentication failures) is read and written here too, all through [`Host`].
//!
//! It is the one writer of session slots: the request ([`Judge::request`]), the answer
//! ([`Judge::record_response`]) and the hand-over to a new identity
//! ([`Judge::hand_over`]). The exchange (`crate::exchange`) calls it; a unit test or the
//! fuzzer does the same on a [`crate::store::MemoryHost`].

use crate::address::AddressSlot;
use crate::config::Settings;
use crate::decision::Decision;
use crate::endpoint_set::EndpointId;
use crate::fleet_join::{self, Fleet};
use crate::model::Model;
use crate::session::address_host;
use crate::slot::{Slot, Visit};
use crate::slot_table::{self, Placement};
use crate::store::{self, Host, Key, StoreError, CAS_RETRIES};
use crate::verdict::{self, Outcome, Request, Verdict};

/// Fingerprint kind of client addresses in the address table.
pub const ADDRESS_KIND: u8 = 4;

/// What one worker knows when it judges a request.
#[derive(Clone, Copy)]
pub struct Judge<'a> {
    pub settings: &'a Settings,
    /// The installed model; `None` while learning.
    pub model: Option<&'a Model>,
    /// The layout slots are written under (the first model version with these endpoint
    /// ids; 0 while learning).
    pub layout: u32,
    /// Learning-registry id to model id, for slots recorded while learning.
    pub registry_map: &'a [Option<EndpointId>],
    /// When this proxy handled its first request (seconds): a restarted proxy lets new
    /// sessions join mid-flow for `session.midflow.window_s` from then.
    pub started: u32,
    /// Whether learning goes on with a model installed.
    pub relearns: bool,
}

/// The slot a request landed in.
#[derive(Clone, Copy, Debug)]
pub struct Located {
    pub index: u32,
    /// Its shared-data key, for the compare-and-swap write.
    pub key: Key,
    pub slot: Slot,
    pub cas: u32,
    pub placement: Placement,
}

/// A judged request: its slot is written back.
#[derive(Clone, Copy, Debug)]
pub struct Judged {
    pub verdict: Verdict,
    pub decision: Decision,
    pub visit: Visit,
    /// The slot as written.
    pub located: Located,
    /// Learning counts this request (no rule fired on it, and learning is on).
    pub learns: bool,
}

impl Judge<'_> {
    /// Judges `request` of session `fingerprint` and writes its slot back. `address` is
    /// the client address if the caller has read it (else it is read when needed).
    /// `Ok(None)`: every compare-and-swap attempt lost its race, nothing was written.
    pub fn request<H: Host>(
        &self,
        host: &mut H,
        request: &mut Request,
        fingerprint: u64,
        address: Option<&[u8]>,
        now: u32,
    ) -> Result<Option<Judged>, StoreError<H::Error>> {
        let learning = self.model.is_none();
        let mut share = None;
        let mut midflow = None;
        if request.weak_session || request.checks_address {
            self.address_facts(host, address, request, now)?;
        }
        for _ in 0..CAS_RETRIES {
            let mut located = self.locate(host, fingerprint, now)?;
            if learning
                && located.placement != Placement::Own
                && self.settings.learning.counts_addresses()
            {
                let (bit, unlearned) = match share {
                    Some(s) => s,
                    None => *share.insert(self.learning_share(host, address)?),
                };
                located.slot.address_bit = bit;
                located.slot.unlearned = unlearned;
            }
            // The slot before this request, for the paths below that judge it again: only
            // a new session's first request (or a resumed one) takes them.
            let fresh = (!located.slot.seen || matches!(request.fleet, Fleet::Answered(_)))
                .then_some(located.slot);
            let (mut visit, mut verdict) =
                verdict::evaluate(self.model, self.settings, &mut located.slot, request);
            // A new session whose first request here misses a step may have taken it at
            // another proxy (or before a restart). With a collector, the fleet says
            // whether it did (`fleet_join`): the slot waits unwritten while the filter
            // asks, and the answer's steps count as done. Without one, or without an
            // answer in time, within its address's budget it joins mid-flow and its
            // order rules flag.
            let order_block = verdict.order_blocks;
            match request.fleet {
                _ if !order_block => {}
                Fleet::Answered(seed) => {
                    located.slot = fresh.unwrap_or(located.slot);
                    seed.apply(&mut located.slot, request.id);
                    (visit, verdict) =
                        verdict::evaluate(self.model, self.settings, &mut located.slot, request);
                }
                Fleet::Unasked if visit.new_session && fleet_join::asks(self.settings) => {
                    request.fleet = Fleet::Asking;
                    return Ok(Some(Judged {
                        decision: Decision::of(self.settings.mode, !learning, &verdict),
                        verdict,
                        visit,
                        // Nothing written: counted as a new session when judged again.
                        located: Located {
                            slot: fresh.unwrap_or(located.slot),
                            placement: Placement::Own,
                            ..located
                        },
                        learns: false,
                    }));
                }
                _ if visit.new_session && self.settings.session.midflow_open(self.started, now) => {
                    let granted = match midflow {
                        Some(g) => g,
                        None => *midflow.insert(self.may_join_midflow(host, address, now)?),
                    };
                    if granted {
                        located.slot = fresh.unwrap_or(located.slot);
                        request.midflow_ok = true;
                        (visit, verdict) = verdict::evaluate(
                            self.model,
                            self.settings,
                            &mut located.slot,
                            request,
                        );
                    }
                }
                _ => {}
            }
            // Learning after the model counts only sessions no rule ever fired on.
            let learns = (learning || self.relearns) && verdict.teaches();
            if !learning && !verdict.teaches() {
                located.slot.unlearned = true;
            }
            if !host.set_key(located.key, &located.slot.encode(), located.cas)? {
                continue;
            }
            // A refused request earns its address no share of anonymous requests.
            if located.placement != Placement::Own
                && !request.weak_session
                && !matches!(verdict.outcome, Outcome::Block { .. })
            {
                self.carry(host, address, fingerprint, now)?;
            }
            return Ok(Some(Judged {
                decision: Decision::of(self.settings.mode, !learning, &verdict),
                verdict,
                visit,
                located,
                learns,
            }));
        }
        Ok(None)
    }

    /// A request no session source matched, from client `address`: only the per-address
    /// rule applies, so a stuffing bot that sends no session cookie is still refused.
    pub fn sessionless<H: Host>(
        &self,
        host: &mut H,
        address: &[u8],
        now: u32,
    ) -> Result<Option<(Verdict, Decision)>, StoreError<H::Error>> {
        let failures = self.address_failures(host, Some(address), now)?;
        let Some(model) = self.model else {
            return Ok(None);
        };
        let verdict = verdict::address_only(model, failures);
        Ok(Some((
            verdict,
            Decision::of(self.settings.mode, true, &verdict),
        )))
    }

    /// Finds the session's slot (its own, a free one, or one to evict) and reads it.
    pub fn locate<H: Host>(
        &self,
        host: &mut H,
        fingerprint: u64,
        now: u32,
    ) -> Result<Located, StoreError<H::Error>> {
        let capacity = self.settings.session.capacity;
        let idle = self.settings.session.idle_timeout_s;
        let [a, b] = slot_table::candidates(fingerprint, capacity);
        let key_a = store::slot_key(a);
        let (slot_a, cas_a) = read_slot(host, key_a)?;
        if slot_a.is_some_and(|s| s.fingerprint == fingerprint) || a == b {
            let (_, placement) =
                slot_table::choose(fingerprint, [slot_a.as_ref(), slot_a.as_ref()], now, idle);
            return Ok(self.claim((a, key_a), slot_a, cas_a, placement, fingerprint, now));
        }
        let key_b = store::slot_key(b);
        let (slot_b, cas_b) = read_slot(host, key_b)?;
        let (i, placement) =
            slot_table::choose(fingerprint, [slot_a.as_ref(), slot_b.as_ref()], now, idle);
        Ok(if i == 0 {
            self.claim((a, key_a), slot_a, cas_a, placement, fingerprint, now)
        } else {
            self.claim((b, key_b), slot_b, cas_b, placement, fingerprint, now)
        })
    }

    fn claim(
        &self,
        (index, key): (u32, Key),
        held: Option<Slot>,
        cas: u32,
        placement: Placement,
        fp: u64,
        now: u32,
    ) -> Located {
        let slot = match (placement, held) {
            (Placement::Own, Some(mut s)) => {
                self.bring_to_layout(&mut s);
                s
            }
            _ => Slot::new(fp, now, self.layout),
        };
        Located {
            index,
            key,
            slot,
            cas,
            placement,
        }
    }

    /// Rewrites a slot recorded under another endpoint layout into the current one.
    fn bring_to_layout(&self, slot: &mut Slot) {
        if slot.layout == self.layout {
            return;
        }
        if slot.layout == 0 {
            slot.remap_steps(|id| self.registry_map.get(usize::from(id)).copied().flatten());
        } else {
            // Another policy's indices mean nothing here: keep the session, forget its steps.
            slot.forget_steps();
        }
        slot.layout = self.layout;
    }

    /// The fingerprint of a client address (its host part: the port changes per
    /// connection).
    pub fn address_fingerprint(&self, address: &[u8]) -> Option<u64> {
        let host_part = address_host(std::str::from_utf8(address).ok()?);
        Some(
            self.settings
                .session
                .fingerprinter
                .fingerprint(ADDRESS_KIND, host_part.as_bytes()),
        )
    }

    /// The fingerprint of the client address the caller read, or of the one read now.
    fn address_fp<H: Host>(
        &self,
        host: &mut H,
        address: Option<&[u8]>,
    ) -> Result<Option<u64>, H::Error> {
        Ok(match address {
            Some(a) => self.address_fingerprint(a),
            None => host
                .client_address()?
                .and_then(|a| self.address_fingerprint(&a)),
        })
    }

    /// Read-modify-write of client address `fp`'s slot; `f` says whether it changed it.
    pub fn update_address<H: Host>(
        &self,
        host: &mut H,
        fp: u64,
        mut f: impl FnMut(&mut AddressSlot) -> bool,
    ) -> Result<bool, StoreError<H::Error>> {
        let key = store::address_key(AddressSlot::index(fp, self.settings.session.capacity));
        store::update(host, key, |bytes| {
            let mut slot = bytes.map(AddressSlot::decode).unwrap_or_default();
            f(&mut slot).then(|| slot.encode())
        })
    }

    /// What the request needs from its client address's slot, in one read: for a weak
    /// session the identified sessions the address carries (its anonymous limits) and
    /// whether the slot holds another address's live credit (a collision: this address's
    /// own count is unknown); with `checks_address`, its recent 401/403 answers.
    fn address_facts<H: Host>(
        &self,
        host: &mut H,
        address: Option<&[u8]>,
        request: &mut Request,
        now: u32,
    ) -> Result<(), StoreError<H::Error>> {
        let Some(fp) = self.address_fp(host, address)? else {
            return Ok(());
        };
        let slot = self.read_address(host, fp)?;
        if request.weak_session {
            request.carried = slot.carried(fp, now);
            request.address_shared = slot.fingerprint != fp && slot.carries_anyone(now);
        }
        if request.checks_address {
            let window = self.settings.limits.auth_window_s;
            request.address_failures = slot.current(fp, now, window);
        }
        Ok(())
    }

    /// Client address `fp`'s slot as stored (empty when absent or another's record).
    fn read_address<H: Host>(&self, host: &mut H, fp: u64) -> Result<AddressSlot, H::Error> {
        let key = store::address_key(AddressSlot::index(fp, self.settings.session.capacity));
        host.read_key(key, |bytes, _| {
            bytes.map(AddressSlot::decode).unwrap_or_default()
        })
    }

    /// Notes that identified session `session`, new here, came from the client address:
    /// the address's anonymous limits grow with the customers it carries. A lost race
    /// only leaves the count a little low.
    pub fn carry<H: Host>(
        &self,
        host: &mut H,
        address: Option<&[u8]>,
        session: u64,
        now: u32,
    ) -> Result<(), StoreError<H::Error>> {
        let Some(fp) = self.address_fp(host, address)? else {
            return Ok(());
        };
        match self.update_address(host, fp, |slot| slot.carry(fp, session, now)) {
            Ok(_) | Err(StoreError::Contended) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A new learning session's address sketch bit, and whether its address has already
    /// contributed `learning.max_sessions_per_address` sessions (then it is not learned
    /// from).
    fn learning_share<H: Host>(
        &self,
        host: &mut H,
        address: Option<&[u8]>,
    ) -> Result<(Option<u8>, bool), StoreError<H::Error>> {
        let Some(fp) = self.address_fp(host, address)? else {
            return Ok((None, false));
        };
        let cap = self.settings.learning.max_sessions_per_address;
        let mut started = 0;
        if cap > 0 {
            let counted = self.update_address(host, fp, |slot| {
                started = slot.start_session(fp);
                true
            });
            match counted {
                Ok(_) | Err(StoreError::Contended) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((Some(crate::support::bit_of(fp)), cap > 0 && started > cap))
    }

    /// Whether a new session of this request's client address may join mid-flow; counted
    /// if so. Without an address there is nothing to bound joins by: no join.
    fn may_join_midflow<H: Host>(
        &self,
        host: &mut H,
        address: Option<&[u8]>,
        now: u32,
    ) -> Result<bool, StoreError<H::Error>> {
        let Some(fp) = self.address_fp(host, address)? else {
            return Ok(false);
        };
        let (budget, window) = (
            self.settings.session.midflow_budget,
            self.settings.session.midflow_window_s,
        );
        self.update_address(host, fp, |slot| {
            slot.let_in_midflow(fp, now, window, budget)
        })
    }

    /// 401/403 answers to client `address` in the current auth window.
    pub fn address_failures<H: Host>(
        &self,
        host: &mut H,
        address: Option<&[u8]>,
        now: u32,
    ) -> Result<u16, StoreError<H::Error>> {
        let Some(fp) = address.and_then(|a| self.address_fingerprint(a)) else {
            return Ok(0);
        };
        Ok(self
            .read_address(host, fp)?
            .current(fp, now, self.settings.limits.auth_window_s))
    }

    /// Counts a 401/403 answer against the client address (over all its sessions, and
    /// requests without one). Returns the address's new peak, if this set one.
    pub fn record_address_failure<H: Host>(
        &self,
        host: &mut H,
        now: u32,
    ) -> Result<Option<u16>, StoreError<H::Error>> {
        let Some(fp) = self.address_fp(host, None)? else {
            return Ok(None);
        };
        let window = self.settings.limits.auth_window_s;
        let mut peak = None;
        self.update_address(host, fp, |slot| {
            peak = slot.add(fp, now, window);
            true
        })?;
        Ok(peak)
    }
}

/// What recording an answer found in its session's slot.
#[derive(Clone, Copy, Debug)]
pub struct Recorded {
    /// The session's new auth-failure peak, if this answer set one.
    pub peak: Option<u16>,
    /// The session is not learned from.
    pub unlearned: bool,
}

impl Judge<'_> {
    /// Records an answer in the slot of session `(index, fingerprint, layout)`: a
    /// completed step, or a 401/403. Returns the session's new auth-failure peak (if this
    /// set one) and whether it is unlearned, or `None` when the slot changed hands
    /// meanwhile (nothing written).
    pub fn record_response<H: Host>(
        &self,
        host: &mut H,
        (index, fingerprint, layout): (u32, u64, u32),
        endpoint: EndpointId,
        object: Option<u64>,
        status: u16,
        now_ms: u64,
    ) -> Result<Option<Recorded>, StoreError<H::Error>> {
        let auth_window_ms = self.settings.limits.auth_window_s.saturating_mul(1000);
        let mut recorded = None;
        store::update(host, store::slot_key(index), |bytes| {
            let mut slot = Slot::decode(bytes?).ok()?;
            if slot.fingerprint != fingerprint || slot.layout != layout {
                recorded = None;
                return None; // the slot changed hands meanwhile
            }
            let peak = slot.record_response(endpoint, object, status, now_ms, auth_window_ms);
            recorded = Some(Recorded {
                peak,
                unlearned: slot.unlearned,
            });
            Some(slot.encode())
        })?;
        Ok(recorded)
    }

    /// Continues the flow of session `(index, fingerprint, layout)` in session `to`'s
    /// slot, claiming one for it if it has none (a new identity from this address: it
    /// carries one more customer). `Some(Some(from))`: handed over, from this slot;
    /// `Some(None)`: nothing to continue; `None`: every compare-and-swap attempt lost.
    pub fn hand_over<H: Host>(
        &self,
        host: &mut H,
        index: u32,
        fingerprint: u64,
        layout: u32,
        to: u64,
        now: u32,
    ) -> Result<Option<Option<Slot>>, StoreError<H::Error>> {
        if to == fingerprint {
            return Ok(Some(None));
        }
        let (from, _) = read_slot(host, store::slot_key(index))?;
        let Some(from) = from.filter(|s| s.fingerprint == fingerprint && s.layout == layout) else {
            return Ok(Some(None)); // the slot changed hands meanwhile
        };
        for _ in 0..CAS_RETRIES {
            let mut located = self.locate(host, to, now)?;
            if located.slot.layout != layout {
                return Ok(Some(None)); // another policy's step ids
            }
            located.slot.continue_from(&from);
            if host.set_key(located.key, &located.slot.encode(), located.cas)? {
                if located.placement != Placement::Own {
                    self.carry(host, None, to, now)?;
                }
                return Ok(Some(Some(from)));
            }
        }
        Ok(None)
    }
}

/// A slot and its token; an absent or undecodable record reads as `None` (free).
pub fn read_slot<H: Host>(host: &mut H, key: Key) -> Result<(Option<Slot>, u32), H::Error> {
    host.read_key(key, |bytes, cas| {
        (bytes.and_then(|b| Slot::decode(b).ok()), cas)
    })
}

#[cfg(test)]
mod tests;
