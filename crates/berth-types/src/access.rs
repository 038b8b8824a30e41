//! API roles and what a call needs of them.

use serde::Deserialize;

/// What a token may do (see `Role::grants`): `erp` is the ERP's integration; `viewer`,
/// `operator`, `deployer` and `admin` are people, each including the one before it.
#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read status, health, alerts, connectors, platforms, the dashboard and metrics.
    Viewer,
    /// The ERP: read the order feed, lease, ack, nack and extend orders, submit stock
    /// and read its push results; and read what a viewer reads.
    Erp,
    /// A viewer who also replays and purges dead letters, pauses and resumes
    /// connectors and shops, releases quota holds and works a degraded shop.
    Operator,
    /// Also deploys, activates, rolls back, canaries and shadows versions.
    Deployer,
    /// Everything, the audit log, onboarding shops by OAuth and fault drills included.
    Admin,
}

/// What a call needs of its caller's role.
#[derive(Clone, Copy, Debug, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Status and health reads.
    Read,
    /// The ERP's order and stock calls.
    Erp,
    /// Dead letters, pauses, holds, degraded shops.
    Operate,
    /// Versions: deploy, activate, roll back, canary, shadow.
    Deploy,
    /// The audit log.
    Audit,
    /// Onboarding a shop by OAuth (a new shop, and the platform's consent for it).
    Onboard,
    /// Injecting a failure on purpose (a fault drill).
    Drill,
}

impl Role {
    /// Whether a token of this role may make a call needing `need`.
    pub fn grants(self, need: Access) -> bool {
        match self {
            Role::Admin => true,
            Role::Viewer => need == Access::Read,
            Role::Erp => matches!(need, Access::Read | Access::Erp),
            Role::Operator => matches!(need, Access::Read | Access::Operate),
            Role::Deployer => matches!(need, Access::Read | Access::Operate | Access::Deploy),
        }
    }

    /// The roles that may make a call needing `need`, for error messages.
    pub fn granting(need: Access) -> Vec<Role> {
        [Role::Viewer, Role::Erp, Role::Operator, Role::Deployer, Role::Admin].into_iter().filter(|r| r.grants(need)).collect()
    }
}

