//! `traffic`: plays normal shop sessions and attacks against a flowguard-protected URL.
use clap::Parser;
use flowguard_integration::traffic::{self, Client, Session};

#[derive(Parser)]
#[command(about = "Plays normal sessions and attacks against the demo shop behind Envoy")]
struct Args {
    /// Base URL of the proxy, e.g. http://127.0.0.1:10000
    #[arg(long)]
    target: String,
    /// Normal sessions to play first.
    #[arg(long, default_value_t = 100)]
    normal: usize,
    /// Attack sessions of each kind to play after.
    #[arg(long, default_value_t = 3)]
    attacks: usize,
}

fn main() {
    let args = Args::parse();
    let client = Client::new(&args.target);
    traffic::play_normal(&client, args.normal);
    println!("played {} normal sessions", args.normal);
    let mut blocked = 0;
    for _ in 0..args.attacks {
        let mut s = Session::new(&client);
        blocked += usize::from(traffic::skip_payment(&mut s).status == 403);
        let mut s = Session::new(&client);
        blocked += usize::from(traffic::confirm_after_failed_payment(&mut s).status == 403);
    }
    println!("attacks blocked: {blocked} of {}", 2 * args.attacks);
}
