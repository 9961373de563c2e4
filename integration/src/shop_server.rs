//! Runs the demo shop in-process on a free loopback port, for tests and the demo.

use std::net::SocketAddr;

/// A running shop; stops when dropped.
pub struct ShopServer {
    pub addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl ShopServer {
    pub fn start() -> std::io::Result<ShopServer> {
        ShopServer::serve(crate::shop::router())
    }

    /// The second demo API (a lending library) instead of the shop.
    pub fn library() -> std::io::Result<ShopServer> {
        ShopServer::serve(crate::library::router())
    }

    fn serve(router: axum::Router) -> std::io::Result<ShopServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        runtime.spawn(async move { axum::serve(listener, router).await });
        Ok(ShopServer {
            addr,
            _runtime: runtime,
        })
    }
}
