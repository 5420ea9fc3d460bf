//! The engine as the gateway sees it: one shared `stoker_client::Client`
//! (it keeps its own bounded pool of control connections) whose blocking
//! calls run on the runtime's blocking threads (bounded by
//! `GatewayConfig::blocking_threads`), never on the async workers.

use s3s::{s3_error, S3Error};
use std::sync::Arc;
use stoker_client::Client;

#[derive(Clone)]
pub struct Engine {
    client: Arc<Client>,
}

impl Engine {
    pub fn new(client: Client) -> Engine {
        Engine { client: Arc::new(client) }
    }

    /// Run `f` on the client off the async threads.
    pub async fn call<T, F>(&self, f: F) -> Result<stoker_client::Result<T>, S3Error>
    where
        T: Send + 'static,
        F: FnOnce(&Client) -> stoker_client::Result<T> + Send + 'static,
    {
        let c = self.client.clone();
        tokio::task::spawn_blocking(move || f(&c)).await.map_err(|e| s3_error!(InternalError, "engine call failed: {e}"))
    }
}
