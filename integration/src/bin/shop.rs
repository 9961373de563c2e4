//! `shop`: runs the demo shop API on the given address.
use clap::Parser;

#[derive(Parser)]
#[command(about = "flowguard's demo shop API")]
struct Args {
    /// Address to listen on (loopback only in tests and the demo).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("shop listening on {}", listener.local_addr()?);
    flowguard_integration::shop::serve(listener).await
}
