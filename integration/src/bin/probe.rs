//! `probe`: a container health check for images without a shell or curl.
//! `probe http://127.0.0.1:9901/ready` succeeds on HTTP 200; `probe tcp:127.0.0.1:50051`
//! succeeds when the port accepts a connection.
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let Some(target) = std::env::args().nth(1) else {
        eprintln!("usage: probe http://HOST:PORT/PATH | tcp:HOST:PORT");
        return ExitCode::from(2);
    };
    let ok = if let Some(addr) = target.strip_prefix("tcp:") {
        addr.to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
    } else {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        agent.get(&target).call().is_ok_and(|r| r.status() == 200)
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
