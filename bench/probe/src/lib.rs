//! A filter that makes one kind of host call `n` times per request, configured as
//! `"<op> <n>"`. Against the empty filter in the same run it prices each host call inside
//! Envoy's V8: (1/throughput − 1/empty throughput) / n. Benchmark code: a failed host call
//! is simply ignored.
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::rc::Rc;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    None,
    /// `proxy_get_current_time_nanoseconds`.
    Time,
    /// The whole request header map.
    HeaderMap,
    /// One request header by name.
    Header,
    /// Set one request header.
    SetHeader,
    /// Remove one (absent) request header.
    RemoveHeader,
    /// One shared-data read.
    SharedGet,
    /// One shared-data read and compare-and-swap write.
    SharedCas,
    /// The client address property.
    Property,
    /// One response header (`:status`), in the response phase.
    ResponseHeader,
    /// What any flow-aware filter must ask per request, once each: the clock, the
    /// request's header map, its session's state (read + compare-and-swap write), one
    /// header for the upstream, and the answer's status.
    Floor,
}

struct Probe {
    op: Op,
    n: u32,
}

impl Context for Probe {}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        for i in 0..self.n {
            match self.op {
                Op::Time => {
                    let _ = self.get_current_time();
                }
                Op::HeaderMap => {
                    let _ = self.get_http_request_headers_bytes();
                }
                Op::Header => {
                    let _ = self.get_http_request_header_bytes(":path");
                }
                Op::SetHeader => self.set_http_request_header("x-probe", Some("v")),
                Op::RemoveHeader => self.set_http_request_header("x-probe-absent", None),
                Op::SharedGet => {
                    let _ = self.get_shared_data(&format!("probe/{}", i % 4));
                }
                Op::SharedCas => {
                    let key = format!("probe/{}", i % 4);
                    let (_, cas) = self.get_shared_data(&key);
                    let _ = self.set_shared_data(&key, Some(&[0u8; 212]), cas);
                }
                Op::Property => {
                    let _ = self.get_property(vec!["source", "address"]);
                }
                Op::Floor => {
                    let _ = self.get_current_time();
                    let _ = self.get_http_request_headers_bytes();
                    let (_, cas) = self.get_shared_data("probe/floor");
                    let _ = self.set_shared_data("probe/floor", Some(&[0u8; 212]), cas);
                    self.set_http_request_header("x-probe", Some("v"));
                }
                Op::ResponseHeader | Op::None => {}
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if matches!(self.op, Op::ResponseHeader | Op::Floor) {
            for _ in 0..self.n {
                let _ = self.get_http_response_header_bytes(":status");
            }
        }
        Action::Continue
    }
}

struct Root {
    config: Rc<(Op, u32)>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let text = self
            .get_plugin_configuration()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let mut parts = text.split_whitespace();
        let op = match parts.next().unwrap_or("") {
            "time" => Op::Time,
            "header_map" => Op::HeaderMap,
            "header" => Op::Header,
            "set_header" => Op::SetHeader,
            "remove_header" => Op::RemoveHeader,
            "shared_get" => Op::SharedGet,
            "shared_cas" => Op::SharedCas,
            "property" => Op::Property,
            "response_header" => Op::ResponseHeader,
            "floor" => Op::Floor,
            _ => Op::None,
        };
        let n = parts.next().and_then(|n| n.parse().ok()).unwrap_or(1);
        self.config = Rc::new((op, n));
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe {
            op: self.config.0,
            n: self.config.1,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { config: Rc::new((Op::None, 0)) })
    });
}}
