//! berth-capabilities: what the host gives a connector beyond the sandbox, behind the
//! runtime's `HostImports` trait ([`services::HostServices`] implements it).
//!
//! Owns: the outbound HTTP gateway ([`http`]: allowlist enforcement, the address guard
//! against private and metadata ranges, ports, size caps), the platforms' rate limits,
//! quota keys, holds and call-limit pacing ([`ratelimit`]), quotas of points the platforms
//! report ([`points`]), how much of each quota is in use ([`usage`]), allowed hours ([`windows`]),
//! hot-standby channels ([`standby`]), faults injected for drills ([`drills`]), retry policies per platform ([`retry`]), connector
//! state per shop over the store ([`kv`]; in cluster mode in the cluster, [`kv_cluster`]),
//! their metrics, and their config sections
//! (`[http]`, `[platforms.X]`: [`config`]).
//!
//! Depends on berth-types, berth-storage (kv), berth-cluster (kv in cluster mode) and
//! berth-runtime (the trait it
//! implements, the call context and allowlist). Must not know: shops' workers, queues,
//! the registry, the API, or anything of berth-core and above — a stock update waiting on
//! a throttled platform waits here, in `ratelimit::RateLimits::acquire`, whoever sent it.

pub mod config;
pub mod drills;
pub mod http;
pub mod kv;
pub mod kv_cluster;
pub mod metrics;
pub mod points;
pub mod ratelimit;
pub mod retry;
pub mod services;
pub mod standby;
pub mod usage;
pub mod windows;
