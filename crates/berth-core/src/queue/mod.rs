//! Durable lease queues: the storage core's (`berth_storage::queue`), re-exported so the
//! host names them in one place. [`StoreQueues`] is the embedded backend; a NATS
//! JetStream backend can plug in behind [`LeaseQueue`].

pub use berth_storage::queue::*;
