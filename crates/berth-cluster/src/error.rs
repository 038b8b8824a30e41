use thiserror::Error;

/// What went wrong talking to the cluster, by what the caller does about it.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// No NATS server answered; berth cannot start (or go on) in cluster mode.
    #[error("cannot reach the NATS cluster at {urls}: {reason}. Check [cluster] nats, the servers and the network")]
    Connect { urls: String, reason: String },
    /// The NATS cluster is weaker than `[cluster] durability` requires; start is refused.
    #[error("the NATS cluster is not durable enough for berth: {0}")]
    Durability(String),
    /// A bucket could not be created or has the wrong shape.
    #[error("JetStream bucket {bucket}: {reason}")]
    Bucket { bucket: String, reason: String },
    /// The write carried a fence from a lease this node no longer holds: another node
    /// owns the shop now. The worker must stop; nothing was written.
    #[error("shop {shop}: this node's claim (revision {revision}) is no longer the shop's lease; the write was refused")]
    Fenced { shop: String, revision: u64 },
    /// A compare-and-set found a key changed since it was read (another node wrote it):
    /// nothing was written; read again, decide again, write again.
    #[error("{0} changed since it was read; nothing was written")]
    Conflict(String),
    /// A request to the cluster failed; it may succeed when retried.
    #[error("NATS: {0}")]
    Nats(String),
}

impl ClusterError {
    pub(crate) fn nats(e: impl std::fmt::Display) -> ClusterError {
        ClusterError::Nats(e.to_string())
    }
}
