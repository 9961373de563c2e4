//! The root context: configuration at load, periodic work on tick, one HTTP context per
//! request.

use crate::host::{self, EnvoyHost};
use crate::http::Http;
use crate::tick;
use crate::worker::{SharedWorker, Worker};
use flowguard_engine::config::Settings;
use flowguard_engine::model::Model;
use flowguard_engine::node::Node;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};
use std::time::Duration;

#[derive(Default)]
pub struct Root {
    worker: SharedWorker,
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        // Leave no callout pending: Envoy would deliver its answer to a dead VM.
        if let Ok(mut guard) = self.worker.try_borrow_mut() {
            if let Some(w) = guard.as_mut() {
                if let Some(t) = w.telemetry.as_mut() {
                    t.cancel_all(&w.metrics);
                }
            }
        }
        true
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if let Ok(mut guard) = self.worker.try_borrow_mut() {
            if let Some(w) = guard.as_mut() {
                if let Some(t) = w.telemetry.as_mut() {
                    t.on_response(
                        token_id,
                        status_code,
                        response_size,
                        &w.settings,
                        &w.metrics,
                    );
                }
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = match host::buffer(BufferType::PluginConfiguration, 0, size) {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => {
                host::log(
                    LogLevel::Critical,
                    &format!("flowguard: cannot read plugin configuration: {e:?}"),
                );
                return false;
            }
        };
        let settings = match Settings::from_json(&bytes) {
            Ok(s) => s,
            Err(e) => {
                host::log(
                    LogLevel::Critical,
                    &format!("flowguard: invalid plugin configuration: {e}"),
                );
                return false;
            }
        };
        if settings
            .collector
            .as_ref()
            .is_some_and(|c| c.cluster.is_empty())
        {
            // `collector.address` alone is the native module's way to the collector.
            host::log(
                LogLevel::Critical,
                "flowguard: invalid plugin configuration: collector.cluster: the Wasm filter \
                 reaches the collector through an Envoy cluster: name it",
            );
            return false;
        }
        let mut worker = Worker::new(settings);
        if let Some(policy) = &worker.settings.policy {
            match Model::compile(policy, &worker.settings) {
                Ok(model) => worker.install(model),
                Err(e) => {
                    host::log(
                        LogLevel::Critical,
                        &format!("flowguard: invalid plugin configuration: policy.{e}"),
                    );
                    return false;
                }
            }
        } else if let Ok((0, _)) = Node::published_version(&mut EnvoyHost) {
            // Create the probe key, so publishing a model later is a real compare-and-swap.
            let _ = Node::create_version_key(&mut EnvoyHost);
        } else if let Err(e) = crate::tick::adopt_published(&mut worker) {
            host::log(
                LogLevel::Warn,
                &format!("flowguard: published model not read ({e:?}): next tick"),
            );
        }
        let period = Duration::from_millis(tick::period_ms(&worker).into());
        if let Err(e) = host::set_tick_period(period) {
            host::log(
                LogLevel::Warn,
                &format!("flowguard: no tick ({e:?}): learning will not merge"),
            );
        }
        let mode = worker.settings.mode;
        match self.worker.try_borrow_mut() {
            Ok(mut slot) => *slot = Some(worker),
            Err(_) => return false,
        }
        host::log(
            LogLevel::Info,
            &format!("flowguard: configured, mode {mode:?}"),
        );
        true
    }

    fn on_tick(&mut self) {
        if let Ok(mut guard) = self.worker.try_borrow_mut() {
            if let Some(worker) = guard.as_mut() {
                tick::run(worker);
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http::new(self.worker.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
